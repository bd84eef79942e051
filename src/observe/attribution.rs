//! Probe kills announced by kubelet Events, waiting to be matched with the death they caused.
//!
//! The kubelet reports a container killed by a failing liveness or startup probe as an
//! ordinary exit (`Error`/137, `Completed`/0); only its `Killing` Event says why. The
//! Event and the pod status travel on different watches, so a kill may be recorded
//! here before or after the death it explains; whichever arrives second makes the match.

use std::collections::HashMap;

use jiff::{SignedDuration, Timestamp};

use super::cause::ProbeKill;

/// How long an unmatched kill is remembered (daemon clock).
const KILL_MEMORY: SignedDuration = SignedDuration::from_mins(10);
/// finishedAt has whole-second resolution and may be truncated below the Event's time.
const EARLY_SLACK: SignedDuration = SignedDuration::from_secs(2);
/// After the grace period the kubelet sends SIGKILL; allow for a slow runtime.
const LATE_SLACK: SignedDuration = SignedDuration::from_secs(10);

#[derive(Debug)]
struct Kill {
    container: Box<str>,
    kind: ProbeKill,
    /// When the kubelet killed the container (its clock).
    at: Timestamp,
    /// Identifies the Event occurrence, so a redelivered Event adds nothing.
    occurrence: u64,
    consumed: bool,
    /// When the daemon learnt of it (daemon clock), for expiry.
    seen: Timestamp,
}

/// Kills by pod UID.
#[derive(Debug, Default)]
pub struct KillLedger {
    by_pod: HashMap<Box<str>, Vec<Kill>>,
}

impl KillLedger {
    /// Records a kill. Returns false when this occurrence was already known.
    pub fn record(
        &mut self,
        pod_uid: &str,
        container: &str,
        kind: ProbeKill,
        at: Timestamp,
        occurrence: u64,
        now: Timestamp,
    ) -> bool {
        let kills = self.by_pod.entry(pod_uid.into()).or_default();
        if kills.iter().any(|kill| kill.occurrence == occurrence) {
            return false;
        }
        kills.push(Kill {
            container: container.into(),
            kind,
            at,
            occurrence,
            consumed: false,
            seen: now,
        });
        true
    }

    /// Takes the unconsumed kill of this container that explains a death finished at
    /// `finished_at` (kubelet clock), if any.
    pub fn take_match(
        &mut self,
        pod_uid: &str,
        container: &str,
        finished_at: Timestamp,
        grace: SignedDuration,
    ) -> Option<ProbeKill> {
        let kills = self.by_pod.get_mut(pod_uid)?;
        let kill = kills.iter_mut().find(|kill| {
            !kill.consumed && &*kill.container == container && explains(kill.at, finished_at, grace)
        })?;
        kill.consumed = true;
        Some(kill.kind)
    }

    /// Marks a recorded kill as having explained a death.
    pub fn consume(&mut self, pod_uid: &str, occurrence: u64) {
        let kills = self.by_pod.get_mut(pod_uid).into_iter().flatten();
        for kill in kills.filter(|kill| kill.occurrence == occurrence) {
            kill.consumed = true;
        }
    }

    pub fn forget_pod(&mut self, pod_uid: &str) {
        self.by_pod.remove(pod_uid);
    }

    pub fn expire(&mut self, now: Timestamp) {
        self.by_pod.retain(|_, kills| {
            kills.retain(|kill| now.duration_since(kill.seen) < KILL_MEMORY);
            !kills.is_empty()
        });
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by_pod.values().map(Vec::len).sum()
    }
}

/// A kill at `killed_at` explains a death at `finished_at` when the death came no
/// earlier than the kill and no later than the grace period allows.
pub fn explains(killed_at: Timestamp, finished_at: Timestamp, grace: SignedDuration) -> bool {
    let after_kill = finished_at.duration_since(killed_at);
    after_kill >= -EARLY_SLACK && after_kill <= grace + LATE_SLACK
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).expect("valid")
    }

    const GRACE: SignedDuration = SignedDuration::from_secs(30);

    #[test]
    fn a_kill_explains_a_death_within_the_grace_period_once() {
        let mut ledger = KillLedger::default();
        assert!(ledger.record("u", "c", ProbeKill::Liveness, t(100), 1, t(100)));
        assert_eq!(ledger.take_match("u", "other", t(101), GRACE), None);
        assert_eq!(ledger.take_match("u", "c", t(200), GRACE), None);
        assert_eq!(
            ledger.take_match("u", "c", t(99), GRACE),
            Some(ProbeKill::Liveness)
        );
        assert_eq!(ledger.take_match("u", "c", t(101), GRACE), None);
    }

    #[test]
    fn a_redelivered_event_adds_nothing_and_kills_expire() {
        let mut ledger = KillLedger::default();
        assert!(ledger.record("u", "c", ProbeKill::Startup, t(0), 7, t(0)));
        assert!(!ledger.record("u", "c", ProbeKill::Startup, t(0), 7, t(5)));
        assert_eq!(ledger.len(), 1);
        ledger.expire(t(599));
        assert_eq!(ledger.len(), 1);
        ledger.expire(t(600));
        assert_eq!(ledger.len(), 0);
    }
}
