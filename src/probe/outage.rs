//! Client-seen outages of one probe target: a pure state machine from probe results to
//! outage transitions and downtime.
//!
//! An outage starts at the first failed probe of a run of `failure_threshold`
//! consecutive failures and ends at the first success after it. Failures before the
//! target has ever answered are not an outage: a Service that is still starting, or was
//! never up, has not gone down. Downtime is accumulated
//! at probe time resolution while the outage lasts (so the counter grows during a long
//! outage, not only when it ends), and the measured length of an outage is within one
//! probe interval of the true one.
//!
//! Probes run concurrently, so their results may complete out of order (a probe that
//! times out finishes after a later, quick one). Results are ordered by the time each
//! probe *started*: a result older than the newest applied one cannot change the state
//! and is reported as stale.

use std::time::Duration;

/// What a probe found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Up,
    Down,
}

/// A change worth exporting.
#[derive(Clone, Debug, PartialEq)]
pub enum OutageEvent {
    /// The target went down at `at` (the first failed probe of the run).
    Started { at: Duration },
    /// More downtime, as of the probe at `at`.
    Downtime { seconds: f64 },
    /// The target answers again: the outage lasted from `start` to `end`.
    Ended {
        start: Duration,
        end: Duration,
        failed_probes: u64,
    },
}

#[derive(Debug)]
pub struct OutageTracker {
    failure_threshold: u32,
    consecutive_failures: u32,
    /// Start of the current run of failures.
    first_failure: Option<Duration>,
    /// Set while an outage is open: its start, and up to when downtime was exported.
    open: Option<OpenOutage>,
    newest: Option<Duration>,
    /// The target has answered at least once.
    ever_up: bool,
}

#[derive(Debug)]
struct OpenOutage {
    start: Duration,
    accounted_until: Duration,
    failed_probes: u64,
}

impl OutageTracker {
    pub fn new(failure_threshold: u32) -> Self {
        OutageTracker {
            failure_threshold: failure_threshold.max(1),
            consecutive_failures: 0,
            first_failure: None,
            open: None,
            newest: None,
            ever_up: false,
        }
    }

    pub fn is_down(&self) -> bool {
        self.open.is_some()
    }

    /// The target has answered at least once.
    pub fn has_answered(&self) -> bool {
        self.ever_up
    }

    /// Applies the result of a probe started at `started` (monotonic time). Returns
    /// `None` when the result is stale (an newer probe's result was applied already).
    pub fn observe(&mut self, started: Duration, verdict: Verdict) -> Option<Vec<OutageEvent>> {
        if self.newest.is_some_and(|newest| started < newest) {
            return None;
        }
        self.newest = Some(started);
        let mut events = Vec::new();
        match verdict {
            Verdict::Down if !self.ever_up => {}
            Verdict::Down => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                let first = *self.first_failure.get_or_insert(started);
                match &mut self.open {
                    Some(open) => {
                        open.failed_probes += 1;
                        push_downtime(open, started, &mut events);
                    }
                    None if self.consecutive_failures >= self.failure_threshold => {
                        events.push(OutageEvent::Started { at: first });
                        let mut open = OpenOutage {
                            start: first,
                            accounted_until: first,
                            failed_probes: u64::from(self.consecutive_failures),
                        };
                        push_downtime(&mut open, started, &mut events);
                        self.open = Some(open);
                    }
                    None => {}
                }
            }
            Verdict::Up => {
                self.ever_up = true;
                self.consecutive_failures = 0;
                self.first_failure = None;
                if let Some(mut open) = self.open.take() {
                    push_downtime(&mut open, started, &mut events);
                    events.push(OutageEvent::Ended {
                        start: open.start,
                        end: started,
                        failed_probes: open.failed_probes,
                    });
                }
            }
        }
        Some(events)
    }
}

fn push_downtime(open: &mut OpenOutage, now: Duration, events: &mut Vec<OutageEvent>) {
    if now > open.accounted_until {
        events.push(OutageEvent::Downtime {
            seconds: (now - open.accounted_until).as_secs_f64(),
        });
        open.accounted_until = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    /// Feeds (start ms, up?) results; returns total downtime and the ended outages.
    fn replay(
        threshold: u32,
        results: &[(u64, bool)],
    ) -> (f64, Vec<(Duration, Duration, u64)>, usize) {
        let mut tracker = OutageTracker::new(threshold);
        let mut downtime = 0.0;
        let mut ended = Vec::new();
        let mut stale = 0;
        for &(at, up) in results {
            let verdict = if up { Verdict::Up } else { Verdict::Down };
            let Some(events) = tracker.observe(ms(at), verdict) else {
                stale += 1;
                continue;
            };
            for event in events {
                match event {
                    OutageEvent::Downtime { seconds } => downtime += seconds,
                    OutageEvent::Ended {
                        start,
                        end,
                        failed_probes,
                    } => ended.push((start, end, failed_probes)),
                    OutageEvent::Started { .. } => {}
                }
            }
        }
        (downtime, ended, stale)
    }

    #[test]
    fn an_outage_runs_from_the_first_failure_to_the_first_success() {
        let results = [
            (0, true),
            (250, false),
            (500, false),
            (750, false),
            (1000, true),
            (1250, true),
        ];
        let (downtime, ended, _) = replay(1, &results);
        assert_eq!(ended, vec![(ms(250), ms(1000), 3)]);
        assert!((downtime - 0.75).abs() < 1e-9);
    }

    #[test]
    fn a_target_that_never_answered_has_no_outage_yet() {
        let (downtime, ended, _) = replay(1, &[(0, false), (250, false), (500, true), (750, true)]);
        assert!(ended.is_empty());
        assert_eq!(downtime, 0.0);
    }

    #[test]
    fn downtime_grows_while_the_outage_lasts() {
        let mut tracker = OutageTracker::new(1);
        assert_eq!(tracker.observe(ms(0), Verdict::Up), Some(vec![]));
        assert_eq!(
            tracker.observe(ms(10), Verdict::Down),
            Some(vec![OutageEvent::Started { at: ms(10) }])
        );
        assert_eq!(
            tracker.observe(ms(1010), Verdict::Down),
            Some(vec![OutageEvent::Downtime { seconds: 1.0 }])
        );
        assert!(tracker.is_down());
    }

    #[test]
    fn a_threshold_ignores_short_blips_but_dates_outages_from_their_first_failure() {
        let blip = [(0, true), (100, false), (200, true)];
        let (downtime, ended, _) = replay(2, &blip);
        assert!(ended.is_empty());
        assert_eq!(downtime, 0.0);

        let real = [
            (0, true),
            (100, false),
            (200, false),
            (300, false),
            (400, true),
        ];
        let (downtime, ended, _) = replay(2, &real);
        assert_eq!(ended, vec![(ms(100), ms(400), 3)]);
        assert!((downtime - 0.3).abs() < 1e-9);
    }

    #[test]
    fn reordered_results_are_stale_and_do_not_reopen_an_outage() {
        // The probe started at 500 timed out and reports after the one started at 750.
        let results = [
            (0, true),
            (250, false),
            (750, true),
            (500, false),
            (1000, true),
        ];
        let (downtime, ended, stale) = replay(1, &results);
        assert_eq!(stale, 1);
        assert_eq!(ended, vec![(ms(250), ms(750), 1)]);
        assert!((downtime - 0.5).abs() < 1e-9);
    }

    #[test]
    fn jittered_probe_times_measure_within_one_interval() {
        // True outage 1.000 s → 2.000 s, probed every ~250 ms with ±40 ms jitter.
        let mut results = Vec::new();
        let mut t = 0u64;
        let mut step = 0u64;
        while t < 3000 {
            results.push((t, !(1000..2000).contains(&t)));
            step += 1;
            t = step * 250 + [0, 40, 13, 27][step as usize % 4] - 20;
        }
        let (downtime, ended, _) = replay(1, &results);
        assert_eq!(ended.len(), 1);
        assert!((downtime - 1.0).abs() <= 0.25 + 0.04, "measured {downtime}");
    }
}
