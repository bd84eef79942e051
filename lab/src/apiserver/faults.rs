//! Fault injection: the knobs the daemon's robustness tests turn, as a Rust
//! API ([`Faults`]) and over HTTP under `/lab/faults/` (see `routes.rs`).
//!
//! - [`Faults::drop_watches`]: cut every open watch connection now;
//! - [`Faults::fail_next`]: answer the next N API requests (not `/lab/` ones)
//!   with 500 InternalError, 429 TooManyRequests (with `Retry-After: 1`) or
//!   503 ServiceUnavailable;
//! - [`Faults::compact`]: drop all watch history (resumes get 410 Expired);
//! - [`Faults::set_history_limit`]: change how many changes are retained.

use std::sync::{Arc, Mutex, PoisonError};

use super::error::ApiError;
use super::store::Store;
use super::watch::WatchHub;

/// Fault-injection handle of one API server.
pub struct Faults {
    store: Arc<Store>,
    hub: Arc<WatchHub>,
    /// (remaining count, status code)
    fail: Mutex<(u64, u16)>,
}

impl Faults {
    pub(crate) fn new(store: Arc<Store>, hub: Arc<WatchHub>) -> Self {
        Faults {
            store,
            hub,
            fail: Mutex::new((0, 500)),
        }
    }

    /// Cuts every open watch stream (the client sees the connection end abruptly).
    pub fn drop_watches(&self) {
        self.hub.drop_all();
    }

    /// Answers the next `count` API requests with `status`: 500
    /// (InternalError), 429 (TooManyRequests, `Retry-After: 1`) or 503
    /// (ServiceUnavailable); any other code is sent as 500.
    pub fn fail_next(&self, count: u64, status: u16) {
        let status = if matches!(status, 429 | 503) {
            status
        } else {
            500
        };
        *self.fail.lock().unwrap_or_else(PoisonError::into_inner) = (count, status);
    }

    /// Requests still to be failed.
    pub fn pending_failures(&self) -> u64 {
        self.fail.lock().unwrap_or_else(PoisonError::into_inner).0
    }

    /// Drops all history: the next resume (and open watches at their next
    /// event) get 410 Expired, so clients must relist.
    pub fn compact(&self) {
        self.store.compact();
    }

    /// Sets how many changes are retained for watch resumption.
    pub fn set_history_limit(&self, limit: usize) {
        self.store.set_history_limit(limit);
    }

    /// Cancels pending failures.
    pub fn clear(&self) {
        self.fail_next(0, 500);
    }

    /// Takes one injected failure, if any is pending.
    pub(crate) fn take_failure(&self) -> Option<ApiError> {
        let mut fail = self.fail.lock().unwrap_or_else(PoisonError::into_inner);
        if fail.0 == 0 {
            return None;
        }
        fail.0 -= 1;
        Some(match fail.1 {
            429 => ApiError::too_many_requests(),
            503 => ApiError::new(
                503,
                "ServiceUnavailable",
                "the server is currently unable to handle the request (injected)",
            ),
            _ => ApiError::internal(
                "an error on the server (\"injected by selfheal-lab\") has prevented the request from succeeding",
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn fail_counts_down() {
        let f = Faults::new(
            Arc::new(Store::default()),
            Arc::new(WatchHub::new(Duration::from_secs(1))),
        );
        assert!(f.take_failure().is_none());
        f.fail_next(2, 429);
        assert_eq!(f.take_failure().map(|e| e.code), Some(429));
        assert_eq!(f.pending_failures(), 1);
        assert_eq!(f.take_failure().map(|e| e.reason), Some("TooManyRequests"));
        assert!(f.take_failure().is_none());
        f.fail_next(1, 418);
        assert_eq!(f.take_failure().map(|e| e.code), Some(500));
    }
}
