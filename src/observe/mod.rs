//! The observer: a pure, synchronous state machine from pod and Event objects to
//! observations (deaths, restarts, recoveries, downtime) for the metrics layer.
//!
//! It owns what the daemon knows about every watched pod and follows the kubelet's
//! reporting rules (see `shared/grade-submission-experiment.md`):
//! - the first list after start-up is the baseline: remembered, never counted;
//! - a pod first seen later is news from its creation: everything it shows counts;
//! - a pod seen again (reconnect, relist, duplicate event) counts only what changed.
//!
//! It has no I/O and no clock of its own: every call takes `now`, so tests replay any
//! timeline exactly. It is fed by [`crate::k8s::watch`] in the order kube-rs's watcher
//! delivers: `begin_relist`, `apply_pod`…, `end_relist` for a (re)list; `apply_pod`
//! and `delete_pod` for watch events; `apply_event` for kubelet Events; `tick` once a
//! second.

mod attribution;
mod cause;
mod container;
mod names;
mod recovery;
mod workloads;

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};

pub use cause::{Cause, Disruption, ProbeKill};
pub use recovery::RecoveryPhases;

use crate::k8s::quantity;
use crate::k8s::sharding::Sharding;
use crate::k8s::types::{SlimEvent, SlimPod};
use crate::k8s::workload::{Workload, workload_of};
use attribution::KillLedger;
use container::{ContainerTracker, Decision};
use names::Names;
use workloads::WorkloadBook;

/// What the observer concluded from one input; the metrics layer turns each into
/// counter, gauge and histogram updates.
#[derive(Clone, Debug, PartialEq)]
pub enum Observation {
    /// A container is known (first sight, or its memory limit changed).
    ContainerSeen {
        workload: Arc<Workload>,
        container: Arc<str>,
        memory_limit_bytes: Option<u64>,
    },
    /// A container instance died (counted once per death).
    Died {
        workload: Arc<Workload>,
        container: Arc<str>,
        cause: Cause,
        exit_code: i32,
    },
    /// The baseline shows this exit code for the container's last death.
    LastExitCode {
        workload: Arc<Workload>,
        container: Arc<str>,
        exit_code: i32,
    },
    Restarted {
        workload: Arc<Workload>,
        container: Arc<str>,
        cause: Cause,
        count: u64,
    },
    /// A restarted container is ready again, `seconds` after its death; `phases` split
    /// the seconds when the kubelet's times allow it.
    Recovered {
        workload: Arc<Workload>,
        container: Arc<str>,
        cause: Cause,
        seconds: f64,
        phases: Option<RecoveryPhases>,
    },
    CrashLooping {
        workload: Arc<Workload>,
        pod: Arc<str>,
        container: Arc<str>,
        active: bool,
    },
    /// A pod is gone: its per-pod series go with it.
    PodForgotten {
        workload: Arc<Workload>,
        pod: Arc<str>,
        containers: Vec<Arc<str>>,
    },
    Evicted {
        workload: Arc<Workload>,
    },
    /// The pod got a `DisruptionTarget` condition: Kubernetes is taking it away on
    /// purpose (once per pod).
    Disrupted {
        workload: Arc<Workload>,
        reason: Disruption,
    },
    /// The workload had no ready pod for `seconds` more.
    Unavailable {
        workload: Arc<Workload>,
        seconds: f64,
    },
    /// The workload's last pod disappeared longer ago than the retention: drop its series.
    WorkloadExpired {
        workload: Arc<Workload>,
    },
    /// Input that had to be repaired or ignored.
    Anomaly(Anomaly),
    /// Material for the incident log (not for metrics).
    Incident(IncidentUpdate),
}

/// Identifies one container death across observations.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DeathId {
    pub pod_uid: Arc<str>,
    pub container: Arc<str>,
    pub key: u64,
}

/// A counted death, with what an on-call engineer wants to know about it.
#[derive(Clone, Debug, PartialEq)]
pub struct DeathRecord {
    pub id: DeathId,
    pub workload: Arc<Workload>,
    pub pod: Arc<str>,
    pub pod_labels: Arc<BTreeMap<String, String>>,
    /// The cause as far as known: the kubelet's reason, or a probe kill.
    pub cause: Cause,
    pub exit_code: i32,
    /// The kubelet's finishedAt.
    pub killed_at: Option<Timestamp>,
    pub memory_limit_bytes: Option<u64>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum IncidentUpdate {
    Death(DeathRecord),
    /// A kubelet Event showed the death to be a probe kill.
    Attributed {
        id: DeathId,
        cause: Cause,
    },
    Recovered {
        id: DeathId,
        ready_at: Timestamp,
        seconds: f64,
        phases: Option<RecoveryPhases>,
    },
}

/// Kinds of bad or surprising input, counted in `selfheal_input_anomalies_total{kind}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Anomaly {
    MissingField,
    MalformedTimestamp,
    MalformedQuantity,
    UnknownReason,
    InvalidRestartCount,
    ClockSkew,
}

impl Anomaly {
    /// The `kind` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Anomaly::MissingField => "MissingField",
            Anomaly::MalformedTimestamp => "MalformedTimestamp",
            Anomaly::MalformedQuantity => "MalformedQuantity",
            Anomaly::UnknownReason => "UnknownReason",
            Anomaly::InvalidRestartCount => "InvalidRestartCount",
            Anomaly::ClockSkew => "ClockSkew",
        }
    }
}

#[derive(Clone, Debug)]
pub struct ObserverConfig {
    /// How long a restart reported as `Error`/`Completed` waits for the kubelet's
    /// `Killing` Event that would make it a probe kill.
    pub attribution_wait: SignedDuration,
    /// How long a workload's series outlive its last pod.
    pub retention: SignedDuration,
    /// Which workloads this replica observes.
    pub sharding: Sharding,
}

impl Default for ObserverConfig {
    fn default() -> Self {
        ObserverConfig {
            attribution_wait: SignedDuration::from_secs(5),
            retention: SignedDuration::from_hours(1),
            sharding: Sharding::default(),
        }
    }
}

/// What a container tracker needs to know about its pod.
pub struct PodContext<'a> {
    pod_uid: Arc<str>,
    pod_name: Arc<str>,
    workload: Arc<Workload>,
    /// terminationGracePeriodSeconds: how long after a kill the death may come.
    grace: SignedDuration,
    /// When the pod last became Ready, by the kubelet's clock (if it is Ready), as the
    /// API sent it: parsed only by a recovery, which is the only reader, rather than on
    /// every update.
    ready_since: Option<&'a str>,
    /// The pod's labels, when the pod object is at hand (for incident records).
    labels: Option<&'a BTreeMap<String, String>>,
    /// The pod was evicted (phase Failed, reason Evicted): its containers' vanishing is
    /// the eviction, counted once for the pod, not deaths or restarts of their own.
    evicted: bool,
    /// The pod is being deleted (`deletionTimestamp`): its containers stop on purpose.
    terminating: bool,
    now: Timestamp,
    news: bool,
}

/// State shared by all pods: kills awaiting a death, causes awaiting a decision,
/// reasons already reported.
#[derive(Debug, Default)]
struct Shared {
    kills: KillLedger,
    deadlines: VecDeque<(Timestamp, Arc<str>, Arc<str>)>,
    unknown_reasons: HashSet<String>,
    attribution_wait: SignedDuration,
    names: Names,
}

impl Shared {
    fn sink<'a>(&'a mut self, out: &'a mut Vec<Observation>) -> Sink<'a> {
        Sink {
            kills: &mut self.kills,
            deadlines: &mut self.deadlines,
            unknown_reasons: &mut self.unknown_reasons,
            attribution_wait: self.attribution_wait,
            names: &mut self.names,
            out,
        }
    }
}

/// Where trackers put their conclusions, with the shared state they consult.
pub struct Sink<'a> {
    kills: &'a mut KillLedger,
    deadlines: &'a mut VecDeque<(Timestamp, Arc<str>, Arc<str>)>,
    unknown_reasons: &'a mut HashSet<String>,
    attribution_wait: SignedDuration,
    names: &'a mut Names,
    out: &'a mut Vec<Observation>,
}

/// Reported unknown reasons are remembered up to this many, so a flood of distinct
/// garbage cannot grow memory.
const MAX_REMEMBERED_REASONS: usize = 256;

impl Sink<'_> {
    fn anomaly(&mut self, anomaly: Anomaly) {
        self.out.push(Observation::Anomaly(anomaly));
    }

    fn parse_time(&mut self, text: Option<&str>) -> Option<Timestamp> {
        let text = text?;
        match text.parse::<Timestamp>() {
            Ok(time) => Some(time),
            Err(_) => {
                self.anomaly(Anomaly::MalformedTimestamp);
                None
            }
        }
    }

    fn cause_of(&mut self, reason: Option<&str>, message: Option<&str>) -> Cause {
        let reason = reason.unwrap_or("");
        if let Some(cause) = Cause::of_termination(reason, message) {
            return cause;
        }
        self.anomaly(Anomaly::UnknownReason);
        if self.unknown_reasons.len() < MAX_REMEMBERED_REASONS
            && self.unknown_reasons.insert(reason.to_owned())
        {
            tracing::warn!(
                reason,
                "unknown container termination reason, counted as Unknown"
            );
        }
        Cause::Unknown
    }
}

#[derive(Debug)]
struct PodState {
    name: Arc<str>,
    workload: Arc<Workload>,
    ready: bool,
    evicted: bool,
    disrupted: bool,
    grace: SignedDuration,
    /// The watch stream that delivers this pod, and the relist it was last seen in.
    stream: usize,
    epoch: u64,
    containers: Vec<ContainerTracker>,
}

impl PodState {
    fn context(&self, uid: &Arc<str>, now: Timestamp, news: bool) -> PodContext<'static> {
        PodContext {
            pod_uid: uid.clone(),
            pod_name: self.name.clone(),
            workload: self.workload.clone(),
            grace: self.grace,
            ready_since: None,
            labels: None,
            evicted: self.evicted,
            terminating: false,
            now,
            news,
        }
    }

    fn tracker(&mut self, name: &str) -> Option<&mut ContainerTracker> {
        self.containers
            .iter_mut()
            .find(|tracker| &*tracker.name == name)
    }
}

/// Default terminationGracePeriodSeconds.
const DEFAULT_GRACE: SignedDuration = SignedDuration::from_secs(30);

#[derive(Debug)]
pub struct Observer {
    config: ObserverConfig,
    /// By UID. foldhash rather than SipHash: two lookups per watch event.
    pods: foldhash::HashMap<Arc<str>, PodState>,
    workloads: WorkloadBook,
    shared: Shared,
    streams: Vec<StreamState>,
    containers: usize,
}

/// One watch stream (e.g. one namespace) with its own list/watch cycle.
#[derive(Debug, Default, Clone)]
struct StreamState {
    /// Incremented at each relist; pods not seen in the current one are gone.
    epoch: u64,
    /// The stream's first list is complete: what follows is news.
    synced: bool,
}

impl Observer {
    /// An observer fed by `streams` independent watch streams (numbered from 0), each
    /// with its own baseline and relists.
    pub fn new(config: ObserverConfig, streams: usize) -> Self {
        let shared = Shared {
            attribution_wait: config.attribution_wait,
            ..Shared::default()
        };
        Observer {
            config,
            pods: foldhash::HashMap::default(),
            workloads: WorkloadBook::default(),
            shared,
            streams: vec![StreamState::default(); streams.max(1)],
            containers: 0,
        }
    }

    /// True once every stream's first full list has been applied.
    #[cfg(test)]
    pub fn is_synced(&self) -> bool {
        self.streams.iter().all(|stream| stream.synced)
    }

    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    pub fn container_count(&self) -> usize {
        self.containers
    }

    #[cfg(test)]
    pub fn workload_count(&self) -> usize {
        self.workloads.len()
    }

    /// A (re)list of `stream` starts: its pods not applied before `end_relist` were
    /// deleted meanwhile.
    pub fn begin_relist(&mut self, stream: usize) {
        if let Some(state) = self.streams.get_mut(stream) {
            state.epoch += 1;
        }
    }

    /// The (re)list of `stream` is complete. The first one ends its baseline.
    pub fn end_relist(&mut self, stream: usize, now: Timestamp, out: &mut Vec<Observation>) {
        let Some(state) = self.streams.get_mut(stream) else {
            return;
        };
        state.synced = true;
        let epoch = state.epoch;
        let gone: Vec<Arc<str>> = self
            .pods
            .iter()
            .filter(|(_, pod)| pod.stream == stream && pod.epoch != epoch)
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in gone {
            self.forget(&uid, now, out);
        }
    }

    pub fn apply_pod(
        &mut self,
        stream: usize,
        pod: &SlimPod,
        now: Timestamp,
        out: &mut Vec<Observation>,
    ) {
        let Some(&StreamState { epoch, synced }) = self.streams.get(stream) else {
            return;
        };
        let meta = &pod.metadata;
        let (Some(uid), Some(namespace), Some(name)) = (&meta.uid, &meta.namespace, &meta.name)
        else {
            out.push(Observation::Anomaly(Anomaly::MissingField));
            return;
        };
        let news = synced;
        let ready_condition = pod
            .status
            .conditions
            .iter()
            .find(|condition| condition.type_ == "Ready" && condition.status == "True");
        let ready = ready_condition.is_some();

        let uid: Arc<str> = match self.pods.get_key_value(uid.as_str()) {
            Some((uid, _)) => uid.clone(),
            None => {
                let workload = workload_of(namespace, name, meta);
                if !self.config.sharding.owns_workload(&workload) {
                    // Another replica's: not even remembered.
                    return;
                }
                let workload = self.workloads.intern(workload);
                self.workloads
                    .change(&workload, 1, i32::from(ready), now, out);
                let uid: Arc<str> = Arc::from(uid.as_str());
                self.pods.insert(
                    uid.clone(),
                    PodState {
                        name: Arc::from(name.as_str()),
                        workload,
                        ready,
                        evicted: false,
                        disrupted: false,
                        grace: DEFAULT_GRACE,
                        stream,
                        epoch,
                        containers: Vec::with_capacity(
                            pod.spec.containers.len() + pod.spec.init_containers.len(),
                        ),
                    },
                );
                uid
            }
        };
        let Some(state) = self.pods.get_mut(&uid) else {
            return;
        };
        state.epoch = epoch;
        state.grace = pod
            .spec
            .termination_grace_period_seconds
            .map_or(DEFAULT_GRACE, |secs| SignedDuration::from_secs(secs.max(0)));
        if state.ready != ready {
            state.ready = ready;
            let delta = if ready { 1 } else { -1 };
            self.workloads.change(&state.workload, 0, delta, now, out);
        }

        let mut sink = self.shared.sink(out);
        let specs = pod.spec.init_containers.iter().chain(&pod.spec.containers);
        for spec in specs.filter(|spec| !spec.name.is_empty()) {
            // The limit in force: the status's (in-place resize) when the kubelet reports
            // it, else the spec's.
            let in_force = pod
                .status
                .container_statuses
                .iter()
                .chain(&pod.status.init_container_statuses)
                .find(|status| status.name == spec.name)
                .and_then(|status| status.resources.limits.memory.as_deref())
                .or(spec.resources.limits.memory.as_deref());
            let limit = in_force.and_then(|text| {
                quantity::parse_bytes(text)
                    .map_err(|_| sink.anomaly(Anomaly::MalformedQuantity))
                    .ok()
            });
            self.containers += see_container(state, &spec.name, limit, &mut sink);
            if let Some(tracker) = state.tracker(&spec.name)
                && tracker.restart_rules != spec.restart_policy_rules
            {
                tracker.restart_rules.clone_from(&spec.restart_policy_rules);
            }
        }
        let evicted = pod.status.phase.as_deref() == Some("Failed")
            && pod.status.reason.as_deref() == Some("Evicted");
        if evicted && !state.evicted {
            state.evicted = true;
            if news {
                sink.out.push(Observation::Evicted {
                    workload: state.workload.clone(),
                });
            }
        }
        let disruption =
            pod.status.conditions.iter().find(|condition| {
                condition.type_ == "DisruptionTarget" && condition.status == "True"
            });
        if let Some(condition) = disruption
            && !state.disrupted
        {
            state.disrupted = true;
            if news {
                sink.out.push(Observation::Disrupted {
                    workload: state.workload.clone(),
                    reason: Disruption::from_reason(condition.reason.as_deref().unwrap_or("")),
                });
            }
        }
        let mut ctx = state.context(&uid, now, news);
        ctx.terminating = meta.deletion_timestamp.is_some();
        ctx.labels = meta.labels.as_ref();
        ctx.ready_since =
            ready_condition.and_then(|condition| condition.last_transition_time.as_deref());
        let statuses = pod
            .status
            .init_container_statuses
            .iter()
            .chain(&pod.status.container_statuses);
        for status in statuses {
            if status.name.is_empty() {
                sink.anomaly(Anomaly::MissingField);
                continue;
            }
            if state.tracker(&status.name).is_none() {
                // A status for a container the spec did not list: still follow it.
                self.containers += see_container(state, &status.name, None, &mut sink);
            }
            if let Some(tracker) = state.tracker(&status.name) {
                tracker.observe(status, &ctx, &mut sink);
            }
        }
    }

    pub fn delete_pod(&mut self, pod: &SlimPod, now: Timestamp, out: &mut Vec<Observation>) {
        match pod.metadata.uid.as_deref() {
            Some(uid) => self.forget(uid, now, out),
            None => out.push(Observation::Anomaly(Anomaly::MissingField)),
        }
    }

    fn forget(&mut self, uid: &str, now: Timestamp, out: &mut Vec<Observation>) {
        let Some((uid, mut state)) = self.pods.remove_entry(uid) else {
            return;
        };
        let ctx = state.context(&uid, now, true);
        let mut sink = self.shared.sink(out);
        for tracker in &mut state.containers {
            tracker.decide(Decision::Flush, &ctx, &mut sink);
        }
        self.shared.kills.forget_pod(&uid);
        self.containers -= state.containers.len();
        out.push(Observation::PodForgotten {
            workload: state.workload.clone(),
            pod: state.name.clone(),
            containers: state.containers.into_iter().map(|t| t.name).collect(),
        });
        let ready_delta = if state.ready { -1 } else { 0 };
        self.workloads
            .change(&state.workload, -1, ready_delta, now, out);
    }

    /// Feeds a kubelet Event. Only probe kills (`Killing` … "failed liveness probe" /
    /// "failed startup probe") matter: they decide the cause of the death they caused.
    pub fn apply_event(&mut self, event: &SlimEvent, now: Timestamp, out: &mut Vec<Observation>) {
        if event.reason.as_deref() != Some("Killing") {
            return;
        }
        let message = event.message.as_deref().unwrap_or("");
        let kind = if message.contains("failed liveness probe") {
            ProbeKill::Liveness
        } else if message.contains("failed startup probe") {
            ProbeKill::Startup
        } else {
            return;
        };
        let involved = &event.involved_object;
        // The message first: when the correlator merges Killing Events it patches only
        // count, lastTimestamp and message of the merged Event, so its fieldPath keeps
        // naming the container of the first merged kill (seen on the real 1.37 kubelet:
        // fieldPath spec.containers{c00}, message "(combined from similar events):
        // Container c06 failed liveness probe…").
        let container = container_of_message(message).or_else(|| {
            involved
                .field_path
                .as_deref()
                .and_then(container_of_field_path)
        });
        let (Some(pod_uid), Some(container)) = (involved.uid.as_deref(), container) else {
            out.push(Observation::Anomaly(Anomaly::MissingField));
            return;
        };
        let mut sink = self.shared.sink(out);
        let killed_at = [
            event.series.last_observed_time.as_deref(),
            event.last_timestamp.as_deref(),
            event.event_time.as_deref(),
            event.first_timestamp.as_deref(),
        ]
        .into_iter()
        .flatten()
        .find_map(|text| sink.parse_time(Some(text)))
        .unwrap_or(now);
        let occurrence = {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            (&event.metadata.uid, &event.metadata.name).hash(&mut hasher);
            (event.count, event.series.count, killed_at).hash(&mut hasher);
            hasher.finish()
        };
        if !sink
            .kills
            .record(pod_uid, container, kind, killed_at, occurrence, now)
        {
            return;
        }
        let Some((uid, _)) = self.pods.get_key_value(pod_uid) else {
            return;
        };
        let uid = uid.clone();
        let Some(state) = self.pods.get_mut(&uid) else {
            return;
        };
        let ctx = state.context(&uid, now, true);
        if let Some(tracker) = state.tracker(container) {
            let decision = Decision::ProbeKill {
                kill: kind,
                killed_at,
            };
            if tracker.decide(decision, &ctx, &mut sink) {
                sink.kills.consume(&uid, occurrence);
            }
        }
    }

    /// Periodic work: causes whose wait is over, ongoing downtime, expired workloads.
    pub fn tick(&mut self, now: Timestamp, out: &mut Vec<Observation>) {
        while let Some((deadline, _, _)) = self.shared.deadlines.front() {
            if *deadline > now {
                break;
            }
            let Some((_, uid, container)) = self.shared.deadlines.pop_front() else {
                break;
            };
            let Some(state) = self.pods.get_mut(&uid) else {
                continue;
            };
            let ctx = state.context(&uid, now, true);
            let mut sink = self.shared.sink(out);
            if let Some(tracker) = state.tracker(&container) {
                tracker.decide(Decision::Timeout, &ctx, &mut sink);
            }
        }
        self.workloads.tick(now, self.config.retention, out);
        self.shared.kills.expire(now);
        self.shared.names.prune();
    }
}

/// Adds a tracker for `name` unless there is one; reports a changed memory limit.
/// Returns the number of trackers added (0 or 1).
fn see_container(state: &mut PodState, name: &str, limit: Option<u64>, sink: &mut Sink) -> usize {
    if let Some(tracker) = state
        .containers
        .iter_mut()
        .find(|tracker| &*tracker.name == name)
    {
        if limit.is_some() && tracker.memory_limit != limit {
            tracker.memory_limit = limit;
            sink.out.push(Observation::ContainerSeen {
                workload: state.workload.clone(),
                container: tracker.name.clone(),
                memory_limit_bytes: limit,
            });
        }
        return 0;
    }
    let name = sink.names.get(name);
    sink.out.push(Observation::ContainerSeen {
        workload: state.workload.clone(),
        container: name.clone(),
        memory_limit_bytes: limit,
    });
    state.containers.push(ContainerTracker::new(name, limit));
    1
}

/// `spec.containers{name}` → `name` (also initContainers and ephemeralContainers).
fn container_of_field_path(field_path: &str) -> Option<&str> {
    let (_, rest) = field_path.split_once('{')?;
    let name = rest.strip_suffix('}')?;
    (!name.is_empty()).then_some(name)
}

/// "Container NAME failed liveness probe, will be restarted" → `NAME`, also for a native
/// sidecar ("Init container NAME failed liveness probe", kuberuntime_container.go) and
/// behind the prefix the Event correlator writes when it merges similar Events
/// ("(combined from similar events): Container NAME …").
fn container_of_message(message: &str) -> Option<&str> {
    let message = message
        .strip_prefix("(combined from similar events): ")
        .unwrap_or(message);
    let rest = message
        .strip_prefix("Container ")
        .or_else(|| message.strip_prefix("Init container "))?;
    let (name, _) = rest.split_once(' ')?;
    (!name.is_empty()).then_some(name)
}
