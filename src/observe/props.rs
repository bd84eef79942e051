//! Property tests of the observer: one container fed random sequences of statuses (any
//! state, reason, exit code, instance, time, restartCount step, Killing Event, tick), as
//! the watch decodes them from JSON. Invariants: no panic; every restartCount step counted
//! exactly once, none lost, none twice (after the holds are released); a death counted at
//! most once among the last eight shown; only increments and non-negative, finite durations; phases that add up to
//! the time to recover; one container followed.

use jiff::Timestamp;
use proptest::prelude::*;
use serde_json::{Value, json};

use super::{Observation, Observer, ObserverConfig};
use crate::k8s::types::{SlimEvent, SlimPod};

const REASONS: [&str; 8] = [
    "OOMKilled",
    "Error",
    "Completed",
    "StartError",
    "ContainerStatusUnknown",
    "RestartingAllContainers",
    "DeadlineExceeded",
    "SomethingNew",
];

fn at(second: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + second).unwrap_or(Timestamp::UNIX_EPOCH)
}

fn time(second: i64) -> String {
    at(second).to_string()
}

/// A terminated state: reason, exit code, instance, finish time (maybe missing).
#[derive(Clone, Debug)]
struct Death {
    reason: usize,
    exit_code: i32,
    instance: u8,
    finished: Option<i64>,
}

impl Death {
    fn json(&self) -> Value {
        let mut death = json!({
            "reason": REASONS[self.reason],
            "exitCode": self.exit_code,
            "containerID": format!("containerd://c{}", self.instance),
        });
        if let Some(finished) = self.finished {
            death["finishedAt"] = json!(time(finished));
        }
        death
    }

    /// What identifies the death to the observer.
    fn identity(&self) -> (u8, Option<i64>, usize, i32) {
        (self.instance, self.finished, self.reason, self.exit_code)
    }
}

#[derive(Clone, Debug)]
enum State {
    Running { ready: bool, started: Option<i64> },
    Terminated(Death),
    CrashLoop { backoff: Option<u8> },
}

#[derive(Clone, Debug)]
struct Step {
    /// Seconds since the previous step.
    advance: u8,
    /// How restartCount moves: mostly up by 0–2, sometimes down (a bad input).
    restart_step: i8,
    state: State,
    last: Option<Death>,
    /// A liveness Killing Event for the container, this many seconds ago.
    killing: Option<u8>,
    tick: bool,
}

fn death() -> impl Strategy<Value = Death> {
    (
        0..REASONS.len(),
        prop::sample::select(vec![0, 1, 2, 128, 137, 143]),
        0u8..6,
        prop::option::weighted(0.9, 0i64..2_000),
    )
        .prop_map(|(reason, exit_code, instance, finished)| Death {
            reason,
            exit_code,
            instance,
            finished,
        })
}

fn state() -> impl Strategy<Value = State> {
    prop_oneof![
        (any::<bool>(), prop::option::of(0i64..2_000))
            .prop_map(|(ready, started)| State::Running { ready, started }),
        death().prop_map(State::Terminated),
        prop::option::of(1u8..120).prop_map(|backoff| State::CrashLoop { backoff }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    (
        0u8..30,
        prop::sample::select(vec![0i8, 0, 0, 1, 1, 2, -1]),
        state(),
        prop::option::of(death()),
        prop::option::weighted(0.2, 0u8..10),
        any::<bool>(),
    )
        .prop_map(|(advance, restart_step, state, last, killing, tick)| Step {
            advance,
            restart_step,
            state,
            last,
            killing,
            tick,
        })
}

fn pod(restarts: i64, state: &State, last: Option<&Death>) -> SlimPod {
    let (state, ready) = match state {
        State::Running { ready, started } => {
            let mut running = json!({});
            if let Some(started) = started {
                running["startedAt"] = json!(time(*started));
            }
            (json!({"running": running}), *ready)
        }
        State::Terminated(death) => (json!({"terminated": death.json()}), false),
        State::CrashLoop { backoff } => {
            let message = backoff.map(|b| format!("back-off {b}s restarting failed container=api"));
            (
                json!({"waiting": {"reason": "CrashLoopBackOff", "message": message}}),
                false,
            )
        }
    };
    let last = last.map_or(json!({}), |death| json!({"terminated": death.json()}));
    let ready_text = if ready { "True" } else { "False" };
    let pod = json!({
        "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
        "spec": {"containers": [{"name": "api", "resources": {"limits": {"memory": "48Mi"}}}]},
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": ready_text}],
            "containerStatuses": [{
                "name": "api", "ready": ready, "restartCount": restarts,
                "state": state, "lastState": last
            }]
        }
    });
    serde_json::from_value(pod).unwrap_or_default()
}

fn killing(second: i64, n: usize) -> SlimEvent {
    let event = json!({
        "metadata": {"name": format!("e{n}"), "uid": format!("e{n}")},
        "involvedObject": {"kind": "Pod", "uid": "u", "fieldPath": "spec.containers{api}"},
        "reason": "Killing",
        "message": "Container api failed liveness probe, will be restarted",
        "count": 1,
        "lastTimestamp": time(second),
    });
    serde_json::from_value(event).unwrap_or_default()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_restart_step_counts_once_and_no_death_twice(
        baseline_restarts in 0i64..5,
        baseline_last in prop::option::of(death()),
        steps in prop::collection::vec(step(), 1..40),
    ) {
        let mut observer = Observer::new(ObserverConfig::default(), 1);
        let mut out = Vec::new();
        let baseline_state = State::Running { ready: true, started: None };
        observer.begin_relist(0);
        observer.apply_pod(0, &pod(baseline_restarts, &baseline_state, baseline_last.as_ref()), at(0), &mut out);
        observer.end_relist(0, at(0), &mut out);
        out.clear();

        let mut now = 0i64;
        let mut restarts = baseline_restarts;
        let mut expected_restarts = 0u64;
        // The observer remembers the 8 most recent distinct deaths it was shown: one
        // shown again within those is never counted again; one older than that (the
        // kubelet never shows one, only input out of order would) may be.
        let mut recent: Vec<(u8, Option<i64>, usize, i32)> =
            baseline_last.iter().map(Death::identity).collect();
        let mut new_deaths = 0usize;
        for (n, step) in steps.iter().enumerate() {
            now += i64::from(step.advance);
            let next = (restarts + i64::from(step.restart_step)).max(0);
            if next > restarts {
                expected_restarts += u64::try_from(next - restarts).unwrap_or(0);
            }
            restarts = next;
            if let Some(ago) = step.killing {
                observer.apply_event(&killing(now - i64::from(ago), n), at(now), &mut out);
            }
            for death in [step.last.as_ref(), match &step.state {
                State::Terminated(death) => Some(death),
                _ => None,
            }].into_iter().flatten() {
                if !recent.contains(&death.identity()) {
                    new_deaths += 1;
                    if recent.len() == 8 {
                        recent.remove(0);
                    }
                    recent.push(death.identity());
                }
            }
            observer.apply_pod(0, &pod(restarts, &step.state, step.last.as_ref()), at(now), &mut out);
            if step.tick {
                observer.tick(at(now), &mut out);
            }
            prop_assert!(observer.container_count() <= 1);
        }
        // Past every attribution wait: all that was held is released.
        observer.tick(at(now + 3_600), &mut out);

        let mut counted_restarts = 0u64;
        let mut deaths = 0usize;
        for observation in &out {
            match observation {
                Observation::Restarted { count, .. } => {
                    prop_assert!(*count > 0, "a restart observation adds");
                    counted_restarts += count;
                }
                Observation::Died { .. } => deaths += 1,
                Observation::Recovered { seconds, phases, .. } => {
                    prop_assert!(seconds.is_finite() && *seconds >= 0.0, "{seconds}");
                    if let Some(phases) = phases {
                        let sum = phases.backoff_seconds + phases.start_seconds + phases.readiness_seconds;
                        prop_assert!(phases.backoff_seconds >= 0.0 && phases.start_seconds >= 0.0 && phases.readiness_seconds >= 0.0, "{phases:?}");
                        prop_assert!((sum - seconds).abs() < 1e-6, "{phases:?} vs {seconds}");
                    }
                }
                Observation::Unavailable { seconds, .. } => {
                    prop_assert!(seconds.is_finite() && *seconds >= 0.0, "{seconds}");
                }
                _ => {}
            }
        }
        prop_assert_eq!(counted_restarts, expected_restarts, "restartCount steps vs restarts counted");
        prop_assert!(deaths <= new_deaths, "{} deaths counted, {} new ones shown", deaths, new_deaths);
    }
}
