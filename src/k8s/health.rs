//! Liveness and readiness state, shared between the watches and the HTTP server.
//!
//! Ready means: every watch has completed its first list, and shutdown has not begun
//! (so a load balancer or Prometheus service discovery stops sending traffic to a
//! draining replica). Live means the process runs. A leader-election standby has no
//! watches, so it is ready: it does what it should (stand by), and a rolling update must
//! be able to count it as available; it registers its watches, and is unready until they
//! have listed, when it acquires the Lease.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

#[derive(Clone, Debug, Default)]
pub struct Health {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Watches registered but not yet synced.
    unsynced: AtomicUsize,
    shutting_down: AtomicBool,
}

/// One watch's part of readiness; `mark_synced` counts once however often called.
#[derive(Debug)]
pub struct WatchReadiness {
    health: Health,
    synced: bool,
}

impl Health {
    pub fn register_watch(&self) -> WatchReadiness {
        self.inner.unsynced.fetch_add(1, Ordering::SeqCst);
        WatchReadiness {
            health: self.clone(),
            synced: false,
        }
    }

    pub fn begin_shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.inner.unsynced.load(Ordering::SeqCst) == 0
            && !self.inner.shutting_down.load(Ordering::SeqCst)
    }

    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::SeqCst)
    }
}

impl WatchReadiness {
    pub fn mark_synced(&mut self) {
        if !self.synced {
            self.synced = true;
            self.health.inner.unsynced.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_all_watches_synced_and_not_shutting_down() {
        let health = Health::default();
        let mut pods = health.register_watch();
        let mut events = health.register_watch();
        assert!(!health.is_ready());
        pods.mark_synced();
        pods.mark_synced();
        assert!(!health.is_ready());
        events.mark_synced();
        assert!(health.is_ready());
        health.begin_shutdown();
        assert!(!health.is_ready());
    }

    #[test]
    fn without_watches_ready_until_shutdown() {
        // A leader-election standby: no watches yet.
        let health = Health::default();
        assert!(health.is_ready());
        let mut pods = health.register_watch();
        assert!(
            !health.is_ready(),
            "a new leader's watches have not listed yet"
        );
        pods.mark_synced();
        assert!(health.is_ready());
    }
}
