//! Time to recover, split into the phases an on-call engineer asks about: the kubelet's
//! crash-loop back-off, the start of the new instance, and its readiness.
//!
//! All three come from what the kubelet writes, so that they add up to the whole
//! (death → ready) exactly:
//! - **back-off**: the wait the kubelet imposed before restarting, as it states it in the
//!   `CrashLoopBackOff` waiting message ("back-off 40s restarting failed container=…").
//!   The kubelet measures the back-off from the dead instance's `finishedAt`, so the wait
//!   is the stated back-off, capped by the time until the new instance started. Without
//!   a `CrashLoopBackOff` status between the death and the restart (the first restart
//!   has none; a watch gap may hide one) the back-off is 0 and the whole gap is start.
//! - **start**: the rest of the time from the death to the new instance's
//!   `state.running.startedAt` — the sync that restarts it, sandbox and image work, the
//!   runtime creating the process.
//! - **readiness**: from `startedAt` to ready (startup and readiness probes, the
//!   application warming up).

use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

/// One recovery split into its phases, in seconds; they sum to the time to recover.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct RecoveryPhases {
    /// The crash-loop back-off the kubelet imposed.
    pub backoff_seconds: f64,
    /// From the end of the back-off to the new instance's start.
    pub start_seconds: f64,
    /// From the new instance's start to ready.
    pub readiness_seconds: f64,
}

/// The back-off the kubelet states in a `CrashLoopBackOff` waiting message, e.g.
/// `back-off 40s restarting failed container=api pod=api-0_ns(uid)` or, with the
/// container capped, `back-off 5m0s restarting …`. `None` for any other message.
pub fn stated_backoff(message: &str) -> Option<SignedDuration> {
    let rest = message.trim_start().strip_prefix("back-off ")?;
    let duration = rest.split_whitespace().next()?;
    // Go's time.Duration format ("40s", "1m20s", "5m0s", "1.5s", "300ms"): jiff's
    // friendly format reads all of these.
    let parsed: SignedDuration = duration.parse().ok()?;
    (!parsed.is_negative()).then_some(parsed)
}

/// Splits the recovery from a death at `finished_at` to ready at `ready_at`, of an
/// instance that started at `started_at`, with the back-off the kubelet stated (if
/// seen). `None` when the times contradict each other (a start before the death or after
/// ready: clock trouble, or a status the watch delivered out of order).
pub fn split(
    finished_at: Timestamp,
    backoff: Option<SignedDuration>,
    started_at: Option<Timestamp>,
    ready_at: Timestamp,
) -> Option<RecoveryPhases> {
    let started_at = started_at?;
    if started_at < finished_at || ready_at < started_at {
        return None;
    }
    let until_start = started_at.duration_since(finished_at);
    let backoff = backoff.unwrap_or(SignedDuration::ZERO).min(until_start);
    Some(RecoveryPhases {
        backoff_seconds: backoff.as_secs_f64(),
        start_seconds: (until_start - backoff).as_secs_f64(),
        readiness_seconds: ready_at.duration_since(started_at).as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + second).expect("valid")
    }

    #[test]
    fn reads_the_kubelets_back_off_messages() {
        let cases = [
            (
                "back-off 10s restarting failed container=api pod=api-0_ns(u)",
                Some(10_000),
            ),
            ("back-off 40s restarting failed container=api", Some(40_000)),
            (
                "back-off 1m20s restarting failed container=api",
                Some(80_000),
            ),
            (
                "back-off 5m0s restarting failed container=api",
                Some(300_000),
            ),
            ("back-off 2.5s restarting failed container=api", Some(2_500)),
            ("back-off 300ms restarting failed container=api", Some(300)),
            ("Back-off pulling image \"x\"", None),
            ("back-off soon restarting", None),
            ("", None),
        ];
        for (message, millis) in cases {
            assert_eq!(
                stated_backoff(message).map(|d| d.as_millis()),
                millis.map(i128::from),
                "{message}"
            );
        }
    }

    #[test]
    fn the_phases_add_up_to_the_whole() {
        // Killed at 0, back-off 40 s, started at 41 s, ready at 45 s.
        let phases = split(
            at(0),
            Some(SignedDuration::from_secs(40)),
            Some(at(41)),
            at(45),
        )
        .expect("phases");
        assert_eq!(
            phases,
            RecoveryPhases {
                backoff_seconds: 40.0,
                start_seconds: 1.0,
                readiness_seconds: 4.0,
            }
        );
        let whole = phases.backoff_seconds + phases.start_seconds + phases.readiness_seconds;
        assert!((whole - 45.0).abs() < 1e-9);
    }

    #[test]
    fn without_a_stated_back_off_the_gap_is_start() {
        let phases = split(at(0), None, Some(at(2)), at(3)).expect("phases");
        assert_eq!(phases.backoff_seconds, 0.0);
        assert_eq!(phases.start_seconds, 2.0);
        assert_eq!(phases.readiness_seconds, 1.0);
    }

    #[test]
    fn a_stated_back_off_longer_than_the_gap_is_capped() {
        // Whole-second timestamps: the restart at 10 s of a stated 10.4 s back-off.
        let backoff = SignedDuration::from_millis(10_400);
        let phases = split(at(0), Some(backoff), Some(at(10)), at(10)).expect("phases");
        assert_eq!(phases.backoff_seconds, 10.0);
        assert_eq!(phases.start_seconds, 0.0);
        assert_eq!(phases.readiness_seconds, 0.0);
    }

    #[test]
    fn contradicting_times_give_no_phases() {
        assert_eq!(split(at(10), None, Some(at(5)), at(20)), None);
        assert_eq!(split(at(0), None, Some(at(30)), at(20)), None);
        assert_eq!(split(at(0), None, None, at(20)), None);
    }
}
