//! Backoff for the watches: quick to come back after an API server outage, and no wait at
//! all before the relist that a `410 Expired` calls for.
//!
//! kube-rs's default (0.8 s doubling to 30 s, reset only after 2 minutes without errors)
//! keeps growing through an API server restart: the connection errors while it is down,
//! then the `410` of the resume once it is back, each cost a further step, so the daemon
//! stayed blind 10–16 s after a 3 s outage (measured by `cargo bench --bench faults`),
//! long enough to miss deaths. Here the delay doubles from 250 ms to at most 5 s, is reset
//! by any successful event, and is skipped for a `410`, as client-go relists at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kube::runtime::utils::Backoff;
use kube::runtime::watcher::{self, ExponentialBackoff};

pub struct WatchBackoff {
    inner: ExponentialBackoff,
    expired: Arc<AtomicBool>,
}

/// Marks a `410 Expired` as it passes, so that the backoff skips its delay.
#[derive(Clone, Default)]
pub struct ExpiredFlag(Arc<AtomicBool>);

impl ExpiredFlag {
    pub fn observe<K>(&self, event: &Result<K, watcher::Error>) {
        if let Err(error) = event
            && is_expired(error)
        {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}

impl WatchBackoff {
    pub fn new(expired: &ExpiredFlag) -> Self {
        let builder = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(250))
            .with_max_delay(Duration::from_secs(5))
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        WatchBackoff {
            inner: ExponentialBackoff::from(builder),
            expired: expired.0.clone(),
        }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        if self.expired.swap(false, Ordering::SeqCst) {
            return Some(Duration::ZERO);
        }
        self.inner.next()
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.inner.reset();
    }
}

/// A `410 Gone/Expired`: the resourceVersion is too old, the watcher relists next.
fn is_expired(error: &watcher::Error) -> bool {
    match error {
        watcher::Error::WatchError(status) => status.code == 410,
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => status.code == 410,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    #[test]
    fn a_410_is_relisted_at_once_other_errors_back_off_up_to_5_s() {
        let flag = ExpiredFlag::default();
        let mut backoff = WatchBackoff::new(&flag);
        let first = backoff.next().expect("delay");
        assert!(first >= Duration::from_millis(250) && first <= Duration::from_millis(500));
        for _ in 0..20 {
            assert!(backoff.next().expect("delay") <= Duration::from_secs(10));
        }
        let gone: Result<(), watcher::Error> = Err(watcher::Error::WatchError(Box::new(Status {
            code: 410,
            ..Status::default()
        })));
        flag.observe(&gone);
        assert_eq!(backoff.next(), Some(Duration::ZERO));
        assert!(backoff.next().expect("delay") > Duration::ZERO);
        let refused: Result<(), watcher::Error> = Err(watcher::Error::NoResourceVersion);
        flag.observe(&refused);
        assert!(backoff.next().expect("delay") > Duration::ZERO);
    }
}
