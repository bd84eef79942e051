//! The kubelet's container restart back-off, as `k8s.io/client-go/util/flowcontrol.Backoff`
//! is used by `kubeGenericRuntimeManager.doBackOff`: pure, time passed in.
//!
//! - The first death of a container (no back-off entry, or the entry expired) restarts at
//!   once and creates the entry with the base delay (10 s).
//! - A later death waits until `finishedAt + current delay` (the container shows
//!   `CrashLoopBackOff`, message `back-off 10s restarting failed container=…`); the restart
//!   then doubles the delay, capped (5 min).
//! - The entry expires when a death happens more than `reset` (10 min, twice the cap in the
//!   kubelet) after the last restart: a container that ran that long starts over.

use std::time::{Duration, Instant};

/// Base, cap and reset of the back-off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffConfig {
    /// First delay (kubelet: 10 s).
    pub base: Duration,
    /// Largest delay (kubelet: 5 min).
    pub cap: Duration,
    /// Running time after which the back-off starts over (kubelet: 10 min).
    pub reset: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            base: Duration::from_secs(10),
            cap: Duration::from_secs(300),
            reset: Duration::from_secs(600),
        }
    }
}

/// The back-off entry of one container.
#[derive(Debug, Clone, Default)]
pub struct Backoff {
    entry: Option<(Duration, Instant)>,
}

impl Backoff {
    /// When a container that finished at `finished` may be restarted: `finished` itself
    /// when not in back-off, else `finished + current delay` (and that delay).
    pub fn restart_at(
        &self,
        cfg: &BackoffConfig,
        finished: Instant,
    ) -> (Instant, Option<Duration>) {
        match self.entry {
            Some((delay, last)) if finished.saturating_duration_since(last) <= cfg.reset => {
                (finished + delay, Some(delay))
            }
            _ => (finished, None),
        }
    }

    /// Records a restart at `now` of a container that finished at `finished`
    /// (`flowcontrol.Backoff.Next`).
    pub fn on_restart(&mut self, cfg: &BackoffConfig, finished: Instant, now: Instant) {
        let delay = match self.entry {
            Some((delay, last)) if finished.saturating_duration_since(last) <= cfg.reset => {
                (delay * 2).min(cfg.cap)
            }
            _ => cfg.base.min(cfg.cap),
        };
        self.entry = Some((delay, now));
    }
}

/// A duration the way Go's `time.Duration.String` prints it (`10s`, `1m20s`, `5m0s`, `500ms`).
pub fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (h, rem) = (ms / 3_600_000, ms % 3_600_000);
    let (m, rem) = (rem / 60_000, rem % 60_000);
    let secs = if rem % 1000 == 0 {
        format!("{}s", rem / 1000)
    } else {
        let s = format!("{}.{:03}", rem / 1000, rem % 1000);
        format!("{}s", s.trim_end_matches('0'))
    };
    if h > 0 {
        format!("{h}h{m}m{secs}")
    } else if m > 0 {
        format!("{m}m{secs}")
    } else {
        secs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelet_sequence() {
        let cfg = BackoffConfig::default();
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut b = Backoff::default();
        // first death: at once
        assert_eq!(b.restart_at(&cfg, t0), (t0, None));
        b.on_restart(&cfg, t0, t0);
        // second death 1 s later: 10 s
        let d2 = t0 + s(1);
        assert_eq!(b.restart_at(&cfg, d2), (d2 + s(10), Some(s(10))));
        b.on_restart(&cfg, d2, d2 + s(10));
        let d3 = d2 + s(11);
        assert_eq!(b.restart_at(&cfg, d3).1, Some(s(20)));
        b.on_restart(&cfg, d3, d3 + s(20));
        let mut d = d3 + s(21);
        let mut seen = vec![];
        for _ in 0..6 {
            let (at, delay) = b.restart_at(&cfg, d);
            seen.push(delay.map(|x| x.as_secs()));
            b.on_restart(&cfg, d, at);
            d = at + s(1);
        }
        assert_eq!(
            seen,
            vec![
                Some(40),
                Some(80),
                Some(160),
                Some(300),
                Some(300),
                Some(300)
            ]
        );
        // ran for more than 10 min since the last restart: starts over
        let late = d + s(601);
        assert_eq!(b.restart_at(&cfg, late), (late, None));
        b.on_restart(&cfg, late, late);
        assert_eq!(b.restart_at(&cfg, late + s(1)).1, Some(s(10)));
    }

    #[test]
    fn go_durations() {
        let s = Duration::from_secs;
        assert_eq!(go_duration(s(10)), "10s");
        assert_eq!(go_duration(s(80)), "1m20s");
        assert_eq!(go_duration(s(300)), "5m0s");
        assert_eq!(go_duration(s(3700)), "1h1m40s");
        assert_eq!(go_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::ZERO), "0s");
    }
}
