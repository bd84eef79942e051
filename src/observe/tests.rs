//! Unit tests of the observer rules, replaying kubelet timelines with `mk_*` helpers.

use super::*;
use crate::k8s::types::{
    ContainerSpec, ContainerState, ContainerStatus, ExitCodes, InvolvedObject, PodCondition,
    RestartRule, StateRunning, StateTerminated, StateWaiting,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + secs).expect("valid time")
}

fn ts(secs: i64) -> Option<String> {
    Some(t(secs).to_string())
}

fn mk_pod(name: &str, uid: &str) -> SlimPod {
    let mut pod = SlimPod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("grade-submission".into()),
            uid: Some(uid.into()),
            ..ObjectMeta::default()
        },
        ..SlimPod::default()
    };
    let mut container = ContainerSpec {
        name: "api".into(),
        ..ContainerSpec::default()
    };
    container.resources.limits.memory = Some("48Mi".into());
    pod.spec.containers.push(container);
    pod
}

fn mk_deployment_pod(name: &str, uid: &str) -> SlimPod {
    let mut pod = mk_pod(name, uid);
    pod.metadata.labels = Some([("pod-template-hash".to_owned(), "5d8f".to_owned())].into());
    pod.metadata.owner_references = Some(vec![OwnerReference {
        kind: "ReplicaSet".into(),
        name: "web-5d8f".into(),
        controller: Some(true),
        ..OwnerReference::default()
    }]);
    pod
}

fn with(mut pod: SlimPod, status: ContainerStatus) -> SlimPod {
    let ready = status.ready;
    pod.status.container_statuses = vec![status];
    pod.status.conditions = vec![PodCondition {
        type_: "Ready".into(),
        status: if ready { "True" } else { "False" }.into(),
        last_transition_time: None,
        reason: None,
    }];
    pod
}

fn death(reason: &str, exit_code: i32, instance: &str, at: i64) -> StateTerminated {
    StateTerminated {
        reason: Some(reason.into()),
        exit_code,
        finished_at: ts(at),
        container_id: Some(format!("containerd://{instance}")),
        message: None,
    }
}

fn running(restarts: i64, ready: bool, last: Option<StateTerminated>) -> ContainerStatus {
    ContainerStatus {
        name: "api".into(),
        ready,
        restart_count: restarts,
        container_id: Some(format!("containerd://run-{restarts}")),
        state: ContainerState {
            running: Some(StateRunning { started_at: None }),
            ..ContainerState::default()
        },
        last_state: ContainerState {
            terminated: last,
            ..ContainerState::default()
        },
        resources: Default::default(),
    }
}

fn terminated(
    restarts: i64,
    now: StateTerminated,
    last: Option<StateTerminated>,
) -> ContainerStatus {
    ContainerStatus {
        name: "api".into(),
        ready: false,
        restart_count: restarts,
        container_id: now.container_id.clone(),
        state: ContainerState {
            terminated: Some(now),
            ..ContainerState::default()
        },
        last_state: ContainerState {
            terminated: last,
            ..ContainerState::default()
        },
        resources: Default::default(),
    }
}

fn crashloop(restarts: i64, last: StateTerminated) -> ContainerStatus {
    ContainerStatus {
        name: "api".into(),
        ready: false,
        restart_count: restarts,
        container_id: None,
        state: ContainerState {
            waiting: Some(StateWaiting {
                reason: Some("CrashLoopBackOff".into()),
                message: None,
            }),
            ..ContainerState::default()
        },
        last_state: ContainerState {
            terminated: Some(last),
            ..ContainerState::default()
        },
        resources: Default::default(),
    }
}

fn liveness_kill(pod_uid: &str, event_uid: &str, count: i64, at: i64) -> SlimEvent {
    SlimEvent {
        metadata: ObjectMeta {
            uid: Some(event_uid.into()),
            name: Some(format!("ev-{event_uid}")),
            ..ObjectMeta::default()
        },
        involved_object: InvolvedObject {
            kind: Some("Pod".into()),
            uid: Some(pod_uid.into()),
            field_path: Some("spec.containers{api}".into()),
            ..InvolvedObject::default()
        },
        reason: Some("Killing".into()),
        message: Some("Container api failed liveness probe, will be restarted".into()),
        count: Some(count),
        last_timestamp: ts(at),
        ..SlimEvent::default()
    }
}

/// An observer with a record of everything it said.
struct Harness {
    observer: Observer,
    out: Vec<Observation>,
}

impl Harness {
    /// An observer whose baseline (initial list) held `pods`.
    fn synced_with(pods: &[SlimPod]) -> Self {
        let mut harness = Harness {
            observer: Observer::new(ObserverConfig::default(), 1),
            out: Vec::new(),
        };
        harness.relist(pods, 0);
        harness
    }

    fn relist(&mut self, pods: &[SlimPod], at: i64) {
        self.observer.begin_relist(0);
        for pod in pods {
            self.observer.apply_pod(0, pod, t(at), &mut self.out);
        }
        self.observer.end_relist(0, t(at), &mut self.out);
    }

    fn apply(&mut self, pod: &SlimPod, at: i64) {
        self.observer.apply_pod(0, pod, t(at), &mut self.out);
    }

    fn event(&mut self, event: &SlimEvent, at: i64) {
        self.observer.apply_event(event, t(at), &mut self.out);
    }

    fn tick(&mut self, at: i64) {
        self.observer.tick(t(at), &mut self.out);
    }

    fn take(&mut self) -> Vec<Observation> {
        std::mem::take(&mut self.out)
    }
}

fn restarts(out: &[Observation]) -> Vec<(Cause, u64)> {
    out.iter()
        .filter_map(|o| match o {
            Observation::Restarted { cause, count, .. } => Some((*cause, *count)),
            _ => None,
        })
        .collect()
}

fn deaths(out: &[Observation]) -> Vec<(Cause, i32)> {
    out.iter()
        .filter_map(|o| match o {
            Observation::Died {
                cause, exit_code, ..
            } => Some((*cause, *exit_code)),
            _ => None,
        })
        .collect()
}

fn recoveries(out: &[Observation]) -> Vec<(Cause, f64)> {
    out.iter()
        .filter_map(|o| match o {
            Observation::Recovered { cause, seconds, .. } => Some((*cause, *seconds)),
            _ => None,
        })
        .collect()
}

fn crashloop_states(out: &[Observation]) -> Vec<bool> {
    out.iter()
        .filter_map(|o| match o {
            Observation::CrashLooping { active, .. } => Some(*active),
            _ => None,
        })
        .collect()
}

fn anomalies(out: &[Observation]) -> Vec<Anomaly> {
    out.iter()
        .filter_map(|o| match o {
            Observation::Anomaly(a) => Some(*a),
            _ => None,
        })
        .collect()
}

fn downtime(out: &[Observation]) -> f64 {
    out.iter()
        .filter_map(|o| match o {
            Observation::Unavailable { seconds, .. } => Some(*seconds),
            _ => None,
        })
        .sum()
}

/// The experiment: the bare pod is OOMKilled twice; the second time the kubelet backs off.
#[test]
fn experiment_timeline_counts_two_oomkills_and_two_recoveries() {
    let pod = || mk_pod("grade-submission-api", "uid-1");
    let mut h = Harness::synced_with(&[with(pod(), running(0, true, None))]);
    let baseline = h.take();
    assert!(baseline.contains(&Observation::ContainerSeen {
        workload: Arc::new(Workload::new(
            "grade-submission",
            "Pod",
            "grade-submission-api"
        )),
        container: Arc::from("api"),
        memory_limit_bytes: Some(48 * 1024 * 1024),
    }));
    assert!(deaths(&baseline).is_empty() && restarts(&baseline).is_empty());

    // First OOMKill: terminated, restarted at once (running, restartCount 1), ready.
    let d1 = death("OOMKilled", 137, "c0", 100);
    h.apply(&with(pod(), terminated(0, d1.clone(), None)), 100);
    let out = h.take();
    assert_eq!(deaths(&out), vec![(Cause::OOMKilled, 137)]);
    assert!(restarts(&out).is_empty(), "restartCount has not moved yet");
    h.apply(&with(pod(), running(1, false, Some(d1.clone()))), 101);
    assert_eq!(restarts(&h.take()), vec![(Cause::OOMKilled, 1)]);
    h.apply(&with(pod(), running(1, true, Some(d1.clone()))), 103);
    assert_eq!(recoveries(&h.take()), vec![(Cause::OOMKilled, 3.0)]);

    // Second OOMKill: terminated, CrashLoopBackOff, running, ready.
    let d2 = death("OOMKilled", 137, "c1", 200);
    h.apply(&with(pod(), terminated(1, d2.clone(), Some(d1))), 200);
    assert_eq!(deaths(&h.take()), vec![(Cause::OOMKilled, 137)]);
    h.apply(&with(pod(), crashloop(1, d2.clone())), 201);
    let out = h.take();
    assert_eq!(crashloop_states(&out), vec![true]);
    assert!(deaths(&out).is_empty() && restarts(&out).is_empty());
    h.apply(&with(pod(), running(2, false, Some(d2.clone()))), 210);
    let out = h.take();
    assert_eq!(restarts(&out), vec![(Cause::OOMKilled, 1)]);
    assert_eq!(crashloop_states(&out), vec![false]);
    h.apply(&with(pod(), running(2, true, Some(d2))), 215);
    assert_eq!(recoveries(&h.take()), vec![(Cause::OOMKilled, 15.0)]);
}

/// `running`, started at `started` (the kubelet's `state.running.startedAt`).
fn running_since(
    restarts: i64,
    ready: bool,
    last: Option<StateTerminated>,
    started: i64,
) -> ContainerStatus {
    let mut status = running(restarts, ready, last);
    status.state.running = Some(StateRunning {
        started_at: ts(started),
    });
    status
}

/// `crashloop`, with the kubelet's message stating the back-off.
fn crashloop_stating(restarts: i64, last: StateTerminated, backoff: &str) -> ContainerStatus {
    let mut status = crashloop(restarts, last);
    status.state.waiting = Some(StateWaiting {
        reason: Some("CrashLoopBackOff".into()),
        message: Some(format!(
            "back-off {backoff} restarting failed container=api pod=p_grade-submission(u)"
        )),
    });
    status
}

fn phases(out: &[Observation]) -> Vec<Option<RecoveryPhases>> {
    out.iter()
        .filter_map(|o| match o {
            Observation::Recovered { phases, .. } => Some(*phases),
            _ => None,
        })
        .collect()
}

#[test]
fn a_recovery_splits_into_back_off_start_and_readiness_that_add_up() {
    let pod = || mk_pod("p", "u");
    let mut h = Harness::synced_with(&[with(pod(), running_since(0, true, None, 0))]);
    h.take();
    // First death: restarted at once (no back-off stated), started at 101, ready at 104.
    let d1 = death("OOMKilled", 137, "c0", 100);
    h.apply(&with(pod(), terminated(0, d1.clone(), None)), 100);
    h.apply(
        &with(pod(), running_since(1, false, Some(d1.clone()), 101)),
        101,
    );
    h.apply(
        &with(pod(), running_since(1, true, Some(d1.clone()), 101)),
        104,
    );
    let out = h.take();
    assert_eq!(recoveries(&out), vec![(Cause::OOMKilled, 4.0)]);
    assert_eq!(
        phases(&out),
        vec![Some(RecoveryPhases {
            backoff_seconds: 0.0,
            start_seconds: 1.0,
            readiness_seconds: 3.0,
        })]
    );
    // Second death: the kubelet backs off 10s (its message says so), starts the new
    // instance at 211, which is ready at 215.
    let d2 = death("OOMKilled", 137, "c1", 200);
    h.apply(&with(pod(), terminated(1, d2.clone(), Some(d1))), 200);
    h.apply(&with(pod(), crashloop_stating(1, d2.clone(), "10s")), 201);
    h.apply(
        &with(pod(), running_since(2, false, Some(d2.clone()), 211)),
        211,
    );
    h.apply(
        &with(pod(), running_since(2, true, Some(d2.clone()), 211)),
        215,
    );
    let out = h.take();
    assert_eq!(recoveries(&out), vec![(Cause::OOMKilled, 15.0)]);
    let split = phases(&out)[0].expect("phases");
    assert_eq!(
        split,
        RecoveryPhases {
            backoff_seconds: 10.0,
            start_seconds: 1.0,
            readiness_seconds: 4.0,
        }
    );
    assert_eq!(
        split.backoff_seconds + split.start_seconds + split.readiness_seconds,
        15.0
    );
    // A status without startedAt (or a start before the death): no phases, the whole
    // time to recover still counted.
    let d3 = death("OOMKilled", 137, "c2", 300);
    h.apply(&with(pod(), terminated(2, d3.clone(), Some(d2))), 300);
    h.apply(&with(pod(), running(3, true, Some(d3))), 305);
    let out = h.take();
    assert_eq!(recoveries(&out), vec![(Cause::OOMKilled, 5.0)]);
    assert_eq!(phases(&out), vec![None]);
}

#[test]
fn a_held_recovery_keeps_its_phases_until_the_cause_is_decided() {
    let pod = || mk_pod("p", "u");
    let mut h = Harness::synced_with(&[with(pod(), running_since(0, true, None, 0))]);
    h.take();
    // Error/137 waits for a Killing Event (attribution wait, 5 s by default).
    let d1 = death("Error", 137, "c0", 100);
    h.apply(&with(pod(), terminated(0, d1.clone(), None)), 100);
    h.apply(&with(pod(), running_since(1, true, Some(d1), 101)), 102);
    assert!(phases(&h.take()).is_empty(), "held while undecided");
    h.tick(110);
    let out = h.take();
    assert_eq!(recoveries(&out), vec![(Cause::Error, 2.0)]);
    assert_eq!(
        phases(&out),
        vec![Some(RecoveryPhases {
            backoff_seconds: 0.0,
            start_seconds: 1.0,
            readiness_seconds: 1.0,
        })]
    );
}

#[test]
fn the_same_object_again_or_a_relist_changes_nothing() {
    let d1 = death("OOMKilled", 137, "c0", 100);
    let pod = with(mk_pod("p", "u"), running(1, true, Some(d1.clone())));
    let mut h = Harness::synced_with(&[with(mk_pod("p", "u"), running(0, true, None))]);
    h.apply(&with(mk_pod("p", "u"), terminated(0, d1, None)), 100);
    h.apply(&pod, 105);
    let first = h.take();
    assert_eq!(deaths(&first).len(), 1);
    assert_eq!(restarts(&first).len(), 1);
    assert_eq!(recoveries(&first).len(), 1);
    h.apply(&pod, 106);
    h.apply(&pod, 107);
    h.relist(std::slice::from_ref(&pod), 110);
    h.tick(200);
    let again = h.take();
    assert!(deaths(&again).is_empty(), "{again:?}");
    assert!(restarts(&again).is_empty());
    assert!(recoveries(&again).is_empty());
}

#[test]
fn the_initial_list_is_baseline_not_news() {
    let d1 = death("OOMKilled", 137, "c0", 50);
    let mut h = Harness::synced_with(&[with(mk_pod("p", "u"), running(3, true, Some(d1)))]);
    let out = h.take();
    assert!(deaths(&out).is_empty());
    assert!(restarts(&out).is_empty());
    assert!(recoveries(&out).is_empty());
    assert!(out.contains(&Observation::LastExitCode {
        workload: Arc::new(workload_of("grade-submission", "p", &ObjectMeta::default())),
        container: Arc::from("api"),
        exit_code: 137,
    }));
    assert!(h.observer.is_synced());
}

#[test]
fn a_pod_first_seen_later_is_news_from_its_creation() {
    let mut h = Harness::synced_with(&[]);
    let d = death("OOMKilled", 137, "c1", 50);
    h.apply(&with(mk_pod("p", "u"), running(2, true, Some(d))), 60);
    let out = h.take();
    assert_eq!(deaths(&out), vec![(Cause::OOMKilled, 137)]);
    assert_eq!(
        restarts(&out),
        vec![(Cause::OOMKilled, 1), (Cause::Unknown, 1)]
    );
    assert_eq!(recoveries(&out), vec![(Cause::OOMKilled, 10.0)]);
}

#[test]
fn a_pod_first_seen_in_a_later_relist_is_news_and_missing_pods_are_forgotten() {
    let old = with(mk_pod("old", "u-old"), running(0, true, None));
    let mut h = Harness::synced_with(&[old]);
    h.take();
    let d = death("Error", 1, "c1", 50);
    let new = with(mk_pod("new", "u-new"), crashloop(0, d));
    h.relist(&[new], 60);
    let out = h.take();
    assert_eq!(deaths(&out), vec![(Cause::Error, 1)]);
    assert!(out.iter().any(|o| matches!(o,
        Observation::PodForgotten { pod, .. } if &**pod == "old")));
    assert_eq!(h.observer.pod_count(), 1);
}

#[test]
fn a_restart_count_jump_counts_every_restart_and_only_the_last_has_a_cause() {
    let mut h = Harness::synced_with(&[with(mk_pod("p", "u"), running(0, true, None))]);
    h.take();
    let d = death("OOMKilled", 137, "c3", 100);
    h.apply(&with(mk_pod("p", "u"), running(3, true, Some(d))), 110);
    let out = h.take();
    assert_eq!(
        restarts(&out),
        vec![(Cause::OOMKilled, 1), (Cause::Unknown, 2)]
    );
    let total: u64 = restarts(&out).iter().map(|(_, n)| n).sum();
    assert_eq!(total, 3);
}

#[test]
fn an_oomkill_counts_even_when_the_container_never_restarts() {
    let mut pod = mk_pod("job-pod", "u");
    pod.spec.restart_policy = Some("Never".into());
    let mut h = Harness::synced_with(&[with(pod.clone(), running(0, true, None))]);
    h.take();
    h.apply(
        &with(
            pod.clone(),
            terminated(0, death("OOMKilled", 137, "c0", 10), None),
        ),
        10,
    );
    let out = h.take();
    assert_eq!(deaths(&out), vec![(Cause::OOMKilled, 137)]);
    assert!(restarts(&out).is_empty());
}

#[test]
fn a_liveness_kill_is_attributed_when_the_event_comes_first() {
    let mut h = Harness::synced_with(&[with(mk_pod("p", "u"), running(0, true, None))]);
    h.event(&liveness_kill("u", "e1", 1, 100), 100);
    let d = death("Error", 137, "c0", 101);
    h.apply(&with(mk_pod("p", "u"), running(1, true, Some(d))), 102);
    let out = h.take();
    assert_eq!(deaths(&out), vec![(Cause::Error, 137)]);
    assert_eq!(restarts(&out), vec![(Cause::LivenessProbeFailed, 1)]);
    assert_eq!(recoveries(&out), vec![(Cause::LivenessProbeFailed, 1.0)]);
}

#[test]
fn a_liveness_kill_is_attributed_when_the_event_comes_second() {
    let mut h = Harness::synced_with(&[with(mk_pod("p", "u"), running(0, true, None))]);
    let d = death("Completed", 0, "c0", 101);
    h.apply(&with(mk_pod("p", "u"), running(1, true, Some(d))), 102);
    let out = h.take();
    assert!(
        restarts(&out).is_empty(),
        "held until the Event or the wait ends"
    );
    h.event(&liveness_kill("u", "e1", 1, 100), 103);
    let out = h.take();
    assert_eq!(restarts(&out), vec![(Cause::LivenessProbeFailed, 1)]);
    assert_eq!(recoveries(&out), vec![(Cause::LivenessProbeFailed, 1.0)]);
    // The redelivered Event (a relist of events) attributes nothing else.
    h.event(&liveness_kill("u", "e1", 1, 100), 104);
    h.tick(200);
    assert!(restarts(&h.take()).is_empty());
}

#[test]
fn without_an_event_the_kubelet_reason_stands_after_the_wait() {
    let mut h = Harness::synced_with(&[with(mk_pod("p", "u"), running(0, true, None))]);
    let d = death("Error", 1, "c0", 100);
    h.apply(&with(mk_pod("p", "u"), running(1, true, Some(d))), 101);
    assert!(restarts(&h.take()).is_empty());
    h.tick(105);
    assert!(restarts(&h.take()).is_empty(), "the wait is 5 s from 101");
    h.tick(106);
    let out = h.take();
    assert_eq!(restarts(&out), vec![(Cause::Error, 1)]);
    assert_eq!(recoveries(&out), vec![(Cause::Error, 1.0)]);
    // An Event arriving after the decision changes nothing.
    h.event(&liveness_kill("u", "e1", 1, 99), 107);
    assert!(restarts(&h.take()).is_empty());
}

#[test]
fn a_deleted_pod_releases_held_restarts() {
    let mut h = Harness::synced_with(&[with(mk_pod("p", "u"), running(0, true, None))]);
    let pod = with(
        mk_pod("p", "u"),
        running(1, true, Some(death("Error", 2, "c0", 100))),
    );
    h.apply(&pod, 101);
    h.take();
    h.observer.delete_pod(&pod, t(102), &mut h.out);
    assert_eq!(restarts(&h.take()), vec![(Cause::Error, 1)]);
}

#[test]
fn a_later_event_occurrence_attributes_the_next_kill() {
    let mut h = Harness::synced_with(&[with(mk_pod("p", "u"), running(0, true, None))]);
    h.event(&liveness_kill("u", "e1", 1, 100), 100);
    let d1 = death("Error", 137, "c0", 100);
    h.apply(
        &with(mk_pod("p", "u"), running(1, true, Some(d1.clone()))),
        101,
    );
    h.event(&liveness_kill("u", "e1", 2, 300), 300);
    let d2 = death("Error", 137, "c1", 301);
    h.apply(&with(mk_pod("p", "u"), running(2, true, Some(d2))), 302);
    let out = h.take();
    assert_eq!(
        restarts(&out),
        vec![
            (Cause::LivenessProbeFailed, 1),
            (Cause::LivenessProbeFailed, 1)
        ]
    );
}

#[test]
fn an_unknown_reason_is_unknown_and_counted() {
    let mut h = Harness::synced_with(&[with(mk_pod("p", "u"), running(0, true, None))]);
    h.take();
    let d = death("PreemptedByTheMoon", 137, "c0", 100);
    h.apply(&with(mk_pod("p", "u"), terminated(0, d, None)), 100);
    let out = h.take();
    assert_eq!(deaths(&out), vec![(Cause::Unknown, 137)]);
    assert_eq!(anomalies(&out), vec![Anomaly::UnknownReason]);
}

#[test]
fn clock_skew_is_clamped_and_counted() {
    let mut h = Harness::synced_with(&[with(mk_pod("p", "u"), running(0, true, None))]);
    h.take();
    // The node's clock is 30 s ahead: finishedAt lies in the daemon's future.
    let d = death("OOMKilled", 137, "c0", 130);
    h.apply(&with(mk_pod("p", "u"), running(1, true, Some(d))), 101);
    let out = h.take();
    assert_eq!(recoveries(&out), vec![(Cause::OOMKilled, 0.0)]);
    assert!(anomalies(&out).contains(&Anomaly::ClockSkew));
}

#[test]
fn malformed_input_is_survived_and_counted() {
    let mut h = Harness::synced_with(&[]);
    let mut nameless = mk_pod("p", "u");
    nameless.metadata.uid = None;
    h.apply(&nameless, 1);
    assert_eq!(anomalies(&h.take()), vec![Anomaly::MissingField]);

    let mut bad = mk_pod("p", "u");
    bad.spec.containers[0].resources.limits.memory = Some("lots".into());
    let mut d = death("OOMKilled", 137, "c0", 5);
    d.finished_at = Some("yesterday".into());
    h.apply(&with(bad, running(1, true, Some(d))), 10);
    let out = h.take();
    assert!(anomalies(&out).contains(&Anomaly::MalformedQuantity));
    assert!(anomalies(&out).contains(&Anomaly::MalformedTimestamp));
    assert_eq!(deaths(&out), vec![(Cause::OOMKilled, 137)]);
    assert!(
        recoveries(&out).is_empty(),
        "no finish time, no recovery time"
    );
}

#[test]
fn crashloop_gauge_appears_at_the_first_crashloop_and_follows_the_waiting_reason() {
    let mut h = Harness::synced_with(&[with(mk_pod("p", "u"), running(0, true, None))]);
    assert_eq!(crashloop_states(&h.take()), Vec::<bool>::new());
    let d = death("Error", 1, "c0", 10);
    h.apply(&with(mk_pod("p", "u"), crashloop(0, d.clone())), 11);
    h.apply(&with(mk_pod("p", "u"), crashloop(0, d.clone())), 12);
    h.apply(&with(mk_pod("p", "u"), running(1, false, Some(d))), 20);
    assert_eq!(crashloop_states(&h.take()), vec![true, false]);
}

#[test]
fn evictions_count_once_and_not_in_the_baseline() {
    let mut evicted = mk_pod("p", "u");
    evicted.status.phase = Some("Failed".into());
    evicted.status.reason = Some("Evicted".into());
    let mut h = Harness::synced_with(std::slice::from_ref(&evicted));
    h.apply(&evicted, 1);
    assert!(
        !h.take()
            .iter()
            .any(|o| matches!(o, Observation::Evicted { .. }))
    );

    let mut later = evicted.clone();
    later.metadata.uid = Some("u2".into());
    h.apply(&mk_pod("p", "u2"), 2);
    h.apply(&later, 3);
    h.apply(&later, 4);
    let count = h
        .take()
        .iter()
        .filter(|o| matches!(o, Observation::Evicted { .. }))
        .count();
    assert_eq!(count, 1);
}

#[test]
fn downtime_counts_while_pods_exist_but_none_is_ready_after_being_ready() {
    let ready = with(mk_pod("p", "u"), running(0, true, None));
    let unready = with(mk_pod("p", "u"), running(0, false, None));
    let mut h = Harness::synced_with(std::slice::from_ref(&ready));
    h.apply(&unready, 10);
    h.tick(11);
    h.tick(15);
    h.apply(&ready, 18);
    h.tick(30);
    assert_eq!(downtime(&h.take()), 8.0);

    // Never ready: not downtime.
    let mut h = Harness::synced_with(std::slice::from_ref(&unready));
    h.tick(100);
    assert_eq!(downtime(&h.take()), 0.0);
}

#[test]
fn a_replaced_pod_keeps_its_workload_and_workloads_expire_after_retention() {
    let mut h = Harness::synced_with(&[with(
        mk_deployment_pod("web-5d8f-a", "ua"),
        running(0, true, None),
    )]);
    h.take();
    h.observer
        .delete_pod(&mk_deployment_pod("web-5d8f-a", "ua"), t(10), &mut h.out);
    h.apply(
        &with(
            mk_deployment_pod("web-5d8f-b", "ub"),
            running(0, true, None),
        ),
        12,
    );
    let d = death("OOMKilled", 137, "c0", 20);
    h.apply(
        &with(
            mk_deployment_pod("web-5d8f-b", "ub"),
            terminated(0, d, None),
        ),
        20,
    );
    let out = h.take();
    let workloads: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            Observation::Died { workload, .. } => Some(workload.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(workloads, vec!["grade-submission/Deployment/web"]);
    assert_eq!(h.observer.workload_count(), 1);

    h.observer
        .delete_pod(&mk_deployment_pod("web-5d8f-b", "ub"), t(100), &mut h.out);
    h.tick(100 + 3599);
    assert!(
        !h.take()
            .iter()
            .any(|o| matches!(o, Observation::WorkloadExpired { .. }))
    );
    h.tick(100 + 3600);
    assert!(
        h.take()
            .iter()
            .any(|o| matches!(o, Observation::WorkloadExpired { .. }))
    );
    assert_eq!(h.observer.workload_count(), 0);
}

#[test]
fn memory_limit_changes_are_reported() {
    let mut h = Harness::synced_with(&[mk_pod("p", "u")]);
    h.take();
    let mut resized = mk_pod("p", "u");
    resized.spec.containers[0].resources.limits.memory = Some("64Mi".into());
    h.apply(&resized, 5);
    h.apply(&resized, 6);
    let seen: Vec<_> = h
        .take()
        .into_iter()
        .filter_map(|o| match o {
            Observation::ContainerSeen {
                memory_limit_bytes, ..
            } => memory_limit_bytes,
            _ => None,
        })
        .collect();
    assert_eq!(seen, vec![64 * 1024 * 1024]);
    assert_eq!(h.observer.container_count(), 1);
}

#[test]
fn event_parsing_finds_the_container() {
    assert_eq!(container_of_field_path("spec.containers{api}"), Some("api"));
    assert_eq!(
        container_of_field_path("spec.initContainers{init}"),
        Some("init")
    );
    assert_eq!(container_of_field_path("spec"), None);
    assert_eq!(
        container_of_message("Container api failed liveness probe, will be restarted"),
        Some("api")
    );
}

#[test]
fn streams_have_their_own_baseline_and_relists() {
    let mut h = Harness {
        observer: Observer::new(ObserverConfig::default(), 2),
        out: Vec::new(),
    };
    let a = with(
        mk_pod("a", "ua"),
        running(1, true, Some(death("OOMKilled", 137, "c0", 1))),
    );
    h.observer.begin_relist(0);
    h.observer.apply_pod(0, &a, t(5), &mut h.out);
    h.observer.end_relist(0, t(5), &mut h.out);
    assert!(!h.observer.is_synced(), "stream 1 has not listed yet");
    // Stream 1's baseline is not news either, even though stream 0 is synced.
    let b = with(
        mk_pod("b", "ub"),
        running(2, true, Some(death("OOMKilled", 137, "c1", 1))),
    );
    h.observer.begin_relist(1);
    h.observer.apply_pod(1, &b, t(6), &mut h.out);
    h.observer.end_relist(1, t(6), &mut h.out);
    assert!(h.observer.is_synced());
    assert!(deaths(&h.take()).is_empty());
    // A relist of stream 1 does not forget stream 0's pods.
    h.observer.begin_relist(1);
    h.observer.end_relist(1, t(7), &mut h.out);
    assert_eq!(h.observer.pod_count(), 1);
}

#[test]
fn a_recovery_seen_late_is_timed_by_the_kubelets_ready_transition() {
    let mut h = Harness::synced_with(&[]);
    // First seen (e.g. in a relist after a watch gap) 10 minutes after it became ready.
    let mut pod = with(
        mk_pod("p", "u"),
        running(1, true, Some(death("OOMKilled", 137, "c0", 100))),
    );
    pod.status.conditions[0].last_transition_time = ts(104);
    h.apply(&pod, 700);
    assert_eq!(recoveries(&h.take()), vec![(Cause::OOMKilled, 4.0)]);
}

#[test]
fn a_recovery_seen_live_is_timed_by_the_daemons_clock() {
    let mut h = Harness::synced_with(&[with(mk_pod("p", "u"), running(0, true, None))]);
    let mut pod = with(
        mk_pod("p", "u"),
        running(1, true, Some(death("OOMKilled", 137, "c0", 100))),
    );
    pod.status.conditions[0].last_transition_time = ts(103);
    h.apply(&pod, 104);
    assert_eq!(recoveries(&h.take()), vec![(Cause::OOMKilled, 4.0)]);
}

#[test]
fn restarts_faster_than_the_attribution_wait_are_never_lost() {
    // Error, OOMKilled, Error within one attribution wait (5 s): each new death pushes
    // the oldest out of the two-death ring while it still waits for a Killing Event.
    let mut h = Harness::synced_with(&[with(mk_pod("p", "u"), running(0, true, None))]);
    let e1 = death("Error", 1, "c0", 100);
    let oom = death("OOMKilled", 137, "c1", 101);
    let e2 = death("Error", 1, "c2", 102);
    h.apply(
        &with(mk_pod("p", "u"), running(1, true, Some(e1.clone()))),
        100,
    );
    h.apply(&with(mk_pod("p", "u"), running(2, true, Some(oom))), 101);
    h.apply(&with(mk_pod("p", "u"), running(3, true, Some(e2))), 102);
    let mut counted = restarts(&h.take());
    h.tick(200);
    counted.extend(restarts(&h.take()));
    counted.sort_by_key(|(cause, _)| cause.as_str());
    assert_eq!(
        counted,
        vec![(Cause::Error, 1), (Cause::Error, 1), (Cause::OOMKilled, 1)],
        "every restartCount step is counted once, with the kubelet's reason"
    );
    // The recovery held on the first death was released with it.
    h.apply(&with(mk_pod("p", "u"), running(3, true, Some(e1))), 201);
    assert!(
        restarts(&h.take()).is_empty(),
        "an old death seen again is not news"
    );
}

#[test]
fn an_evicted_pod_counts_the_eviction_not_a_restart_and_no_death_twice() {
    // What the kubelet writes for a pod evicted under node memory pressure: the running
    // container vanished, so it shows ContainerStatusUnknown/137 in both state and
    // lastState, with no container ID or times, and restartCount 1 though nothing
    // restarted.
    let mut h = Harness::synced_with(&[with(mk_pod("p", "u"), running(0, true, None))]);
    let unknown = StateTerminated {
        reason: Some("ContainerStatusUnknown".into()),
        exit_code: 137,
        finished_at: None,
        container_id: None,
        message: Some("The container could not be located when the pod was terminated".into()),
    };
    let mut evicted = with(
        mk_pod("p", "u"),
        terminated(1, unknown.clone(), Some(unknown)),
    );
    evicted.status.phase = Some("Failed".into());
    evicted.status.reason = Some("Evicted".into());
    h.apply(&evicted, 10);
    h.apply(&evicted, 11);
    let out = h.take();
    assert_eq!(
        out.iter()
            .filter(|o| matches!(o, Observation::Evicted { .. }))
            .count(),
        1
    );
    assert!(restarts(&out).is_empty(), "{:?}", restarts(&out));
    assert!(deaths(&out).is_empty(), "{:?}", deaths(&out));
}

#[test]
fn an_oom_kill_during_container_start_is_an_oomkill() {
    let mut h = Harness::synced_with(&[with(mk_pod("p", "u"), running(0, true, None))]);
    let mut at_start = death("StartError", 128, "c0", 100);
    at_start.message = Some("container init was OOM-killed (memory limit too low?)".into());
    h.apply(&with(mk_pod("p", "u"), crashloop(1, at_start)), 101);
    let out = h.take();
    assert_eq!(deaths(&out), vec![(Cause::OOMKilled, 128)]);
    assert_eq!(restarts(&out), vec![(Cause::OOMKilled, 1)]);

    // Any other StartError stays one.
    let mut h = Harness::synced_with(&[with(mk_pod("p", "u"), running(0, true, None))]);
    let mut bad_exec = death("StartError", 128, "c0", 100);
    bad_exec.message = Some("exec: \"/app\": permission denied".into());
    h.apply(&with(mk_pod("p", "u"), crashloop(1, bad_exec)), 101);
    assert_eq!(restarts(&h.take()), vec![(Cause::StartError, 1)]);
}

#[test]
fn causes_come_from_the_reason_never_from_the_exit_code() {
    let mut h = Harness::synced_with(&[with(mk_pod("p", "u"), running(0, true, None))]);
    // OOMKilled with exit code 0 (the kernel killed a child, the main process exited 0).
    h.apply(
        &with(
            mk_pod("p", "u"),
            crashloop(1, death("OOMKilled", 0, "c0", 100)),
        ),
        101,
    );
    assert_eq!(deaths(&h.take()), vec![(Cause::OOMKilled, 0)]);
    // Error/137: a SIGKILL the runtime did not report as an OOM kill stays Error.
    h.apply(
        &with(
            mk_pod("p", "u"),
            crashloop(2, death("Error", 137, "c1", 200)),
        ),
        201,
    );
    assert_eq!(deaths(&h.take()), vec![(Cause::Error, 137)]);
}

#[test]
fn an_in_place_resize_reports_the_limit_in_force_and_the_kill_records_it() {
    // The spec asks for 96Mi, the kubelet has not actuated it yet: the container still
    // runs, and dies, under 48Mi (status.containerStatuses[].resources).
    let mut h = Harness::synced_with(&[with(mk_pod("p", "u"), running(0, true, None))]);
    h.take();
    let mut pending = with(
        mk_pod("p", "u"),
        running(1, true, Some(death("OOMKilled", 137, "c0", 100))),
    );
    pending.spec.containers[0].resources.limits.memory = Some("96Mi".into());
    pending.status.container_statuses[0].resources.limits.memory = Some("48Mi".into());
    h.apply(&pending, 101);
    h.apply(&pending, 102);
    let out = h.take();
    let seen: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            Observation::ContainerSeen {
                memory_limit_bytes, ..
            } => *memory_limit_bytes,
            _ => None,
        })
        .collect();
    assert!(seen.is_empty(), "48Mi in force, as before: {seen:?}");
    let recorded: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            Observation::Incident(IncidentUpdate::Death(record)) => record.memory_limit_bytes,
            _ => None,
        })
        .collect();
    assert_eq!(recorded, vec![48 * 1024 * 1024]);

    // Once actuated, the status says 96Mi: that is the new limit.
    pending.status.container_statuses[0].resources.limits.memory = Some("96Mi".into());
    h.apply(&pending, 103);
    let seen: Vec<_> = h
        .take()
        .into_iter()
        .filter_map(|o| match o {
            Observation::ContainerSeen {
                memory_limit_bytes, ..
            } => memory_limit_bytes,
            _ => None,
        })
        .collect();
    assert_eq!(seen, vec![96 * 1024 * 1024]);
}

#[test]
fn a_disruption_target_condition_counts_one_disruption_by_reason_and_no_crash() {
    let mut h = Harness::synced_with(&[with(mk_pod("p", "u"), running(0, true, None))]);
    h.take();
    let mut preempted = with(mk_pod("p", "u"), running(0, true, None));
    preempted.status.conditions.push(PodCondition {
        type_: "DisruptionTarget".into(),
        status: "True".into(),
        last_transition_time: ts(10),
        reason: Some("PreemptionByScheduler".into()),
    });
    h.apply(&preempted, 10);
    // The container ends as the pod is taken away; nothing restarts.
    preempted.status.container_statuses[0] = terminated(0, death("Error", 143, "c0", 11), None);
    h.apply(&preempted, 11);
    let out = h.take();
    let disrupted: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            Observation::Disrupted { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect();
    assert_eq!(disrupted, vec![Disruption::Preemption]);
    assert!(restarts(&out).is_empty());

    // In the baseline, a condition already there is not news.
    let mut h = Harness::synced_with(&[preempted]);
    assert!(
        !h.take()
            .iter()
            .any(|o| matches!(o, Observation::Disrupted { .. }))
    );
    assert_eq!(Disruption::from_reason("SomethingNew"), Disruption::Other);
    for disruption in Disruption::ALL {
        if disruption != Disruption::Other {
            assert_eq!(Disruption::from_reason(disruption.as_str()), disruption);
        }
    }
}

#[test]
fn a_restart_its_own_rules_asked_for_is_not_a_crash() {
    // restartPolicy Never, but restart the container when it exits 42 (KEP-5307).
    let mut pod = mk_pod("p", "u");
    pod.spec.restart_policy = Some("Never".into());
    pod.spec.containers[0].restart_policy_rules = vec![RestartRule {
        action: Some("Restart".into()),
        exit_codes: ExitCodes {
            operator: Some("In".into()),
            values: vec![42],
        },
    }];
    let mut h = Harness::synced_with(&[with(pod.clone(), running(0, true, None))]);
    h.apply(
        &with(
            pod.clone(),
            running(1, true, Some(death("Error", 42, "c0", 100))),
        ),
        101,
    );
    h.tick(200);
    assert_eq!(restarts(&h.take()), vec![(Cause::RestartRule, 1)]);
    // Another exit code is a crash as usual.
    h.apply(
        &with(
            pod.clone(),
            running(2, true, Some(death("Error", 1, "c1", 300))),
        ),
        301,
    );
    h.tick(400);
    assert_eq!(restarts(&h.take()), vec![(Cause::Error, 1)]);
    // A liveness kill stays a liveness kill even where a rule would restart.
    pod.spec.containers[0].restart_policy_rules[0].exit_codes = ExitCodes {
        operator: Some("NotIn".into()),
        values: vec![0],
    };
    h.apply(
        &with(
            pod.clone(),
            running(2, true, Some(death("Error", 1, "c1", 300))),
        ),
        401,
    );
    h.event(&liveness_kill("u", "e1", 1, 499), 500);
    h.apply(
        &with(pod, running(3, true, Some(death("Error", 137, "c2", 500)))),
        501,
    );
    h.tick(600);
    assert_eq!(restarts(&h.take()), vec![(Cause::LivenessProbeFailed, 1)]);
}

/// KEP-5532 as the 1.37 kubelet writes it (seen on the real cluster, and in
/// `pkg/kubelet/kubelet_pods.go`): `trigger` exits 42, which its rule answers with
/// `RestartAllContainers`; its status shows that exit (terminated Error/42) until the
/// kubelet removes every container of the pod. Then both containers show a
/// `RestartingAllContainers`/137 lastState (no ID, no times) and restartCount + 1, and
/// the pod condition `AllContainersRestarting` is True while it happens.
#[test]
fn restart_all_containers_is_one_incident_for_the_pod_not_a_crash_per_container() {
    let mut pod = mk_pod("p", "u");
    pod.spec.containers[0].name = "trigger".into();
    pod.spec.containers[0].restart_policy_rules = vec![RestartRule {
        action: Some("RestartAllContainers".into()),
        exit_codes: ExitCodes {
            operator: Some("In".into()),
            values: vec![42],
        },
    }];
    pod.spec.containers.push(ContainerSpec {
        name: "other".into(),
        ..ContainerSpec::default()
    });
    let named = |name: &str, mut status: ContainerStatus| {
        status.name = name.into();
        status
    };
    let both = |trigger: ContainerStatus, other: ContainerStatus| {
        let mut p = with(pod.clone(), named("trigger", trigger));
        p.status.container_statuses.push(named("other", other));
        p
    };
    let removed = StateTerminated {
        reason: Some("RestartingAllContainers".into()),
        exit_code: 137,
        finished_at: None,
        container_id: None,
        message: Some("The container is removed because RestartAllContainers in place".into()),
    };
    let mut h = Harness::synced_with(&[both(running(0, true, None), running(0, true, None))]);
    h.take();
    // The trigger's exit, seen before the kubelet removes the containers.
    let mut exited = both(
        terminated(0, death("Error", 42, "c0", 100), None),
        running(0, true, None),
    );
    exited.status.conditions.push(PodCondition {
        type_: "AllContainersRestarting".into(),
        status: "True".into(),
        last_transition_time: ts(100),
        reason: Some("RestartAllContainersStarted".into()),
    });
    h.apply(&exited, 100);
    // Both removed, then both running again.
    let mut waiting = crashloop(1, removed.clone());
    waiting.state.waiting = Some(StateWaiting {
        reason: Some("RestartingAllContainers".into()),
        message: Some("The container is removed because RestartAllContainers in place".into()),
    });
    h.apply(&both(waiting.clone(), waiting), 101);
    h.apply(
        &both(
            running(1, true, Some(removed.clone())),
            running(1, true, Some(removed.clone())),
        ),
        103,
    );
    h.tick(200);
    let out = h.take();
    assert_eq!(
        deaths(&out),
        vec![(Cause::RestartAllContainers, 42)],
        "one death: the container whose exit asked for it"
    );
    let records = out
        .iter()
        .filter(|o| matches!(o, Observation::Incident(IncidentUpdate::Death(_))))
        .count();
    assert_eq!(records, 1, "one incident for the pod: {out:?}");
    assert_eq!(
        restarts(&out),
        vec![
            (Cause::RestartAllContainers, 1),
            (Cause::RestartAllContainers, 1)
        ],
        "both containers restarted, for that one reason"
    );
    assert!(anomalies(&out).is_empty(), "{out:?}");
    // The kubelet's filler has no times: no time to recover can be measured.
    assert!(recoveries(&out).is_empty(), "{out:?}");

    // Cycle after cycle the filler is the same (no ID, no times): every restart still
    // counts with its cause, none as Unknown (the real kubelet, 23 cycles in CI).
    for cycle in 2..=12 {
        let at = 100 * cycle;
        let exit = death("Error", 42, &format!("c{cycle}"), at);
        h.apply(
            &both(
                terminated(cycle - 1, exit, Some(removed.clone())),
                running(cycle - 1, true, Some(removed.clone())),
            ),
            at,
        );
        h.apply(
            &both(
                running(cycle, true, Some(removed.clone())),
                running(cycle, true, Some(removed.clone())),
            ),
            at + 3,
        );
    }
    h.tick(2_000);
    let out = h.take();
    let counted = restarts(&out);
    assert_eq!(counted.len(), 22, "{counted:?}");
    assert!(
        counted
            .iter()
            .all(|r| *r == (Cause::RestartAllContainers, 1)),
        "{counted:?}"
    );
    assert_eq!(deaths(&out).len(), 11, "one death per pod restart");
}

#[test]
fn a_merged_or_missing_probe_kill_event_never_makes_a_wrong_cause() {
    // The Event correlator merged the kubelet's Killing Events: the message carries its
    // prefix, and fieldPath may be gone; the kill is still attributed.
    let mut h = Harness::synced_with(&[with(mk_pod("p", "u"), running(0, true, None))]);
    let mut merged = liveness_kill("u", "e1", 1, 99);
    merged.involved_object.field_path = None;
    merged.message = Some(
        "(combined from similar events): Container api failed liveness probe, will be restarted"
            .into(),
    );
    h.event(&merged, 99);
    h.apply(
        &with(
            mk_pod("p", "u"),
            running(1, true, Some(death("Error", 137, "c0", 100))),
        ),
        101,
    );
    h.tick(200);
    assert_eq!(restarts(&h.take()), vec![(Cause::LivenessProbeFailed, 1)]);
    // A rate-limited (dropped) Event: the kubelet's reason stands after the wait, never a
    // guessed probe kill.
    h.apply(
        &with(
            mk_pod("p", "u"),
            running(2, true, Some(death("Error", 137, "c1", 300))),
        ),
        301,
    );
    h.tick(400);
    assert_eq!(restarts(&h.take()), vec![(Cause::Error, 1)]);
}

#[test]
fn kill_messages_name_their_container_for_sidecars_and_merged_events_too() {
    for (message, container) in [
        (
            "Container api failed liveness probe, will be restarted",
            Some("api"),
        ),
        (
            "Init container shipper failed liveness probe",
            Some("shipper"),
        ),
        (
            "(combined from similar events): Init container shipper failed liveness probe",
            Some("shipper"),
        ),
        ("Stopping container api", None),
        ("Container  failed liveness probe", None),
    ] {
        assert_eq!(container_of_message(message), container, "{message}");
    }
}

#[test]
fn a_merged_event_is_read_by_its_message_not_its_stale_field_path() {
    // The real 1.37 kubelet's merged Killing Event after its second occurrence: the
    // correlator patched count, lastTimestamp and message, so fieldPath still names the
    // container of the first merged kill (c00) while the message names the one killed now.
    let mut h = Harness::synced_with(&[with(mk_pod("p", "u"), running(0, true, None))]);
    let mut merged = liveness_kill("u", "e1", 2, 99);
    merged.involved_object.field_path = Some("spec.containers{c00}".into());
    merged.message = Some(
        "(combined from similar events): Container api failed liveness probe, will be restarted"
            .into(),
    );
    h.event(&merged, 99);
    h.apply(
        &with(
            mk_pod("p", "u"),
            running(1, true, Some(death("Error", 137, "c0", 100))),
        ),
        101,
    );
    h.tick(200);
    assert_eq!(restarts(&h.take()), vec![(Cause::LivenessProbeFailed, 1)]);
}

#[test]
fn exits_while_the_pod_is_deleted_are_its_shutdown_not_failures() {
    // A pod with a native sidecar (an init container with restartPolicy Always) being
    // deleted: the app exits 143 on SIGTERM, then the sidecar exits 1, as the kubelet
    // documents it may. Neither is a death to record; an OOM kill meanwhile still is.
    let mut pod = mk_pod("p", "u");
    pod.spec.init_containers.push(ContainerSpec {
        name: "proxy".into(),
        ..ContainerSpec::default()
    });
    let mut sidecar = running(0, true, None);
    sidecar.name = "proxy".into();
    let mut live = with(pod.clone(), running(0, true, None));
    live.status.init_container_statuses = vec![sidecar.clone()];
    let mut h = Harness::synced_with(&[live.clone()]);
    h.take();
    let mut deleting = live.clone();
    deleting.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(t(10)));
    deleting.status.container_statuses[0] = terminated(0, death("Error", 143, "c0", 11), None);
    let mut sidecar_done = terminated(0, death("Error", 1, "s0", 12), None);
    sidecar_done.name = "proxy".into();
    deleting.status.init_container_statuses = vec![sidecar_done];
    h.apply(&deleting, 12);
    let out = h.take();
    assert!(deaths(&out).is_empty(), "{:?}", deaths(&out));
    assert!(
        !out.iter()
            .any(|o| matches!(o, Observation::Incident(IncidentUpdate::Death(_)))),
        "no incident for a shutdown"
    );
    let mut oom = deleting.clone();
    oom.status.init_container_statuses[0] = terminated(0, death("OOMKilled", 137, "s1", 13), None);
    oom.status.init_container_statuses[0].name = "proxy".into();
    h.apply(&oom, 13);
    assert_eq!(deaths(&h.take()), vec![(Cause::OOMKilled, 137)]);
}
