//! The election's decisions as plain functions of what the elector knows, so that they
//! are tested without an API server or a clock: whether this replica leads, when it has
//! left the election for good, and how long it waits after a failed Lease request.

use std::time::Duration;

/// Where this replica stands in the election.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Competing, not leading: watches, probes and exports nothing.
    Standby,
    /// Holding the Lease with a confirmed renewal: exports.
    Leading,
    /// Led, then lost the Lease: never competes again (the daemon exits and Kubernetes
    /// restarts it as a fresh standby).
    Left,
}

/// Why a leader stopped leading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    /// kube-lease-manager still says we hold the Lease, but no renewal was confirmed in
    /// time (API server unreachable or slow).
    NotRenewed,
    /// The Lease is free or held by another replica.
    NotHolder,
}

/// A change of leadership, counted in `selfheal_leader_transitions_total{transition}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    Acquired,
    Lost(Loss),
    Released,
}

impl Transition {
    /// The `transition` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Transition::Acquired => "acquired",
            Transition::Lost(_) => "lost",
            Transition::Released => "released",
        }
    }

    /// Every label value, so that each series exists from the start.
    pub const LABELS: [&'static str; 3] = ["acquired", "lost", "released"];
}

/// What the elector knows of its hold on the Lease at one instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hold {
    /// kube-lease-manager says we hold the Lease.
    pub holder: bool,
    /// Our last renewal, read back from the Lease, keeps it ours beyond now (with half of
    /// `grace` to spare).
    pub confirmed: bool,
}

/// The next state given the current hold, and the transition it makes, if any. Only a
/// confirmed hold leads; losing it after leading leaves the election for good.
pub fn next(state: State, hold: Hold) -> (State, Option<Transition>) {
    let leads = hold.holder && hold.confirmed;
    match (state, leads) {
        (State::Standby, true) => (State::Leading, Some(Transition::Acquired)),
        (State::Standby, false) => (State::Standby, None),
        (State::Leading, true) => (State::Leading, None),
        (State::Leading, false) => {
            let loss = if hold.holder {
                Loss::NotRenewed
            } else {
                Loss::NotHolder
            };
            (State::Left, Some(Transition::Lost(loss)))
        }
        (State::Left, _) => (State::Left, None),
    }
}

/// How long to wait before the next Lease request after `failures` consecutive failed
/// ones: a holder retries every `retry_period` (it must renew in time), a standby backs
/// off, doubling from `retry_period` up to `lease_duration`.
pub fn retry_delay(
    holder: bool,
    failures: u32,
    retry_period: Duration,
    lease_duration: Duration,
) -> Duration {
    if holder {
        return retry_period;
    }
    let doubled = retry_period.saturating_mul(1 << failures.clamp(1, 16).saturating_sub(1));
    doubled.min(lease_duration.max(retry_period))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELD: Hold = Hold {
        holder: true,
        confirmed: true,
    };
    const UNCONFIRMED: Hold = Hold {
        holder: true,
        confirmed: false,
    };
    const FREE: Hold = Hold {
        holder: false,
        confirmed: false,
    };

    #[test]
    fn a_standby_leads_only_with_a_confirmed_hold() {
        assert_eq!(next(State::Standby, FREE), (State::Standby, None));
        assert_eq!(next(State::Standby, UNCONFIRMED), (State::Standby, None));
        // A stale confirmation without the manager's word is not a hold either.
        let stale = Hold {
            holder: false,
            confirmed: true,
        };
        assert_eq!(next(State::Standby, stale), (State::Standby, None));
        assert_eq!(
            next(State::Standby, HELD),
            (State::Leading, Some(Transition::Acquired))
        );
    }

    #[test]
    fn a_leader_that_loses_its_hold_leaves_for_good_and_says_why() {
        assert_eq!(next(State::Leading, HELD), (State::Leading, None));
        assert_eq!(
            next(State::Leading, UNCONFIRMED),
            (State::Left, Some(Transition::Lost(Loss::NotRenewed)))
        );
        assert_eq!(
            next(State::Leading, FREE),
            (State::Left, Some(Transition::Lost(Loss::NotHolder)))
        );
        for hold in [HELD, UNCONFIRMED, FREE] {
            assert_eq!(next(State::Left, hold), (State::Left, None), "{hold:?}");
        }
    }

    #[test]
    fn a_standby_backs_off_doubling_up_to_the_lease_duration_a_holder_does_not() {
        let retry = Duration::from_secs(1);
        let lease = Duration::from_secs(15);
        let delays: Vec<u64> = (1..=6)
            .map(|failures| retry_delay(false, failures, retry, lease).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 15, 15]);
        assert_eq!(retry_delay(false, u32::MAX, retry, lease), lease);
        assert_eq!(retry_delay(false, 0, retry, lease), retry);
        assert_eq!(retry_delay(true, 9, retry, lease), retry);
    }

    #[test]
    fn transitions_have_one_label_each() {
        let all = [
            Transition::Acquired,
            Transition::Lost(Loss::NotRenewed),
            Transition::Lost(Loss::NotHolder),
            Transition::Released,
        ];
        for transition in all {
            assert!(Transition::LABELS.contains(&transition.as_str()));
        }
    }
}
