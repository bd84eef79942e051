//! The exported metrics of the observer: registration, and the update for each
//! [`Observation`]. Names and labels are a public contract (dashboards and alerts use
//! them); see the metric table in README.md.

use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::{
    EncodeLabel, EncodeLabelSet, EncodeLabelValue, LabelSetEncoder, LabelValueEncoder,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::export::cardinality::{CardinalityGuard, Export, GuardedFamily};
use crate::k8s::workload::Workload;
use crate::observe::{Anomaly, Cause, Disruption, Observation};

// The label sets below hold the interned workload itself rather than copies of its three
// names: hashing one starts from the workload's precomputed fingerprint (see
// `label_set_hash`), and equality starts with a pointer comparison. Their labels are, in
// order: namespace, workload_kind, workload, then the fields' own.

/// `{namespace, workload_kind, workload}`
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct WorkloadLabels {
    pub workload: Arc<Workload>,
}

/// `{namespace, workload_kind, workload, container}`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerLabels {
    pub workload: Arc<Workload>,
    pub container: Arc<str>,
}

/// `{namespace, workload_kind, workload, container, reason}`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReasonLabels {
    pub workload: Arc<Workload>,
    pub container: Arc<str>,
    pub reason: Cause,
}

/// `{namespace, workload_kind, workload, reason}` of a disruption.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DisruptionLabels {
    pub workload: Arc<Workload>,
    pub reason: Disruption,
}

impl Hash for DisruptionLabels {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(label_set_hash(&self.workload, self.reason));
    }
}

impl EncodeLabelSet for DisruptionLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> fmt::Result {
        encode_workload(&self.workload, encoder)?;
        ("reason", self.reason.as_str()).encode(encoder.encode_label())
    }
}

/// A phase of a recovery (see `observe::recovery`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Phase {
    /// The crash-loop back-off the kubelet imposed.
    Backoff,
    /// From the end of the back-off to the new instance's start.
    Start,
    /// From the start to ready.
    Readiness,
}

impl Phase {
    const ALL: [Phase; 3] = [Phase::Backoff, Phase::Start, Phase::Readiness];

    fn as_str(self) -> &'static str {
        match self {
            Phase::Backoff => "backoff",
            Phase::Start => "start",
            Phase::Readiness => "readiness",
        }
    }
}

/// `{namespace, workload_kind, workload, container, reason, phase}`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PhaseLabels {
    pub reason: ReasonLabels,
    pub phase: Phase,
}

impl Hash for PhaseLabels {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(label_set_hash(
            &self.reason.workload,
            (&*self.reason.container, self.reason.reason, self.phase),
        ));
    }
}

impl EncodeLabelSet for PhaseLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> fmt::Result {
        self.reason.encode(encoder)?;
        ("phase", self.phase.as_str()).encode(encoder.encode_label())
    }
}

/// `{namespace, workload_kind, workload, pod, container}`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodContainerLabels {
    pub workload: Arc<Workload>,
    pub pod: Arc<str>,
    pub container: Arc<str>,
}

/// What a label set gives its family's hasher: one `u64`, the workload's fingerprint
/// mixed with a fast hash of the other labels. The families hash with SipHash
/// (prometheus-client's choice), which then reads 8 bytes instead of every label's text.
fn label_set_hash(workload: &Workload, rest: impl Hash) -> u64 {
    foldhash::fast::FixedState::with_seed(workload.fingerprint()).hash_one(rest)
}

impl Hash for ContainerLabels {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(label_set_hash(&self.workload, &*self.container));
    }
}

impl Hash for ReasonLabels {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(label_set_hash(
            &self.workload,
            (&*self.container, self.reason),
        ));
    }
}

impl Hash for PodContainerLabels {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(label_set_hash(
            &self.workload,
            (&*self.pod, &*self.container),
        ));
    }
}

fn encode_workload(workload: &Workload, encoder: &mut LabelSetEncoder) -> fmt::Result {
    ("namespace", &**workload.namespace()).encode(encoder.encode_label())?;
    ("workload_kind", &**workload.kind()).encode(encoder.encode_label())?;
    ("workload", &**workload.name()).encode(encoder.encode_label())
}

impl EncodeLabelSet for WorkloadLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> fmt::Result {
        encode_workload(&self.workload, encoder)
    }
}

impl EncodeLabelSet for ContainerLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> fmt::Result {
        encode_workload(&self.workload, encoder)?;
        ("container", &*self.container).encode(encoder.encode_label())
    }
}

impl EncodeLabelSet for ReasonLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> fmt::Result {
        encode_workload(&self.workload, encoder)?;
        ("container", &*self.container).encode(encoder.encode_label())?;
        ("reason", self.reason).encode(encoder.encode_label())
    }
}

impl EncodeLabelSet for PodContainerLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> fmt::Result {
        encode_workload(&self.workload, encoder)?;
        ("pod", &*self.pod).encode(encoder.encode_label())?;
        ("container", &*self.container).encode(encoder.encode_label())
    }
}

// The observer's enums become label values here, so the pure observer does not depend
// on the metrics library.
impl EncodeLabelValue for Cause {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

impl EncodeLabelValue for Anomaly {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// `selfheal_build_info{version}`: 1, so dashboards can show which version runs.
pub fn register_build_info(registry: &mut Registry) {
    let info: Family<BuildLabels, Gauge> = Family::default();
    info.get_or_create_owned(&BuildLabels {
        version: env!("CARGO_PKG_VERSION"),
    })
    .set(1);
    registry.register(
        "build_info",
        "Version of the running selfheal-exporter",
        info,
    );
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AnomalyLabels {
    kind: Anomaly,
}

/// Builds time-to-recover histograms with the configured buckets.
#[derive(Clone)]
pub struct Buckets(Arc<[f64]>);

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0.iter().copied())
    }
}

/// The label sets a workload has created, so they can all be removed when it expires
/// (prometheus-client removes series only by exact label set).
#[derive(Default)]
struct WorkloadSeries {
    // foldhash: consulted on every update.
    containers: foldhash::HashSet<Arc<str>>,
    reasons: foldhash::HashSet<(Arc<str>, Cause)>,
}

pub struct Metrics {
    restarts: GuardedFamily<ReasonLabels, Counter>,
    oom_kills: GuardedFamily<ContainerLabels, Counter>,
    time_to_recover: GuardedFamily<ReasonLabels, Histogram, Buckets>,
    recovery_phases: GuardedFamily<PhaseLabels, Histogram, Buckets>,
    last_exit_code: GuardedFamily<ContainerLabels, Gauge>,
    memory_limit: GuardedFamily<ContainerLabels, Gauge>,
    crashlooping: GuardedFamily<PodContainerLabels, Gauge>,
    unavailable: GuardedFamily<WorkloadLabels, Counter<f64, AtomicU64>>,
    evictions: GuardedFamily<WorkloadLabels, Counter>,
    disruptions: GuardedFamily<DisruptionLabels, Counter>,
    observed_containers: Gauge,
    anomalies: Family<AnomalyLabels, Counter>,
    series: foldhash::HashMap<Arc<Workload>, WorkloadSeries>,
}

impl Metrics {
    /// Registers the observer's metrics under `registry` (which carries the `selfheal`
    /// prefix). `buckets` are the time-to-recover histogram's upper bounds, in seconds.
    pub fn register(registry: &mut Registry, buckets: &[f64], guard: &CardinalityGuard) -> Self {
        let metrics = Metrics {
            restarts: GuardedFamily::register(
                registry,
                guard,
                Export::new(
                    "container_restarts",
                    "Container restarts (restartCount increases), by cause of the death before each",
                ),
            ),
            oom_kills: GuardedFamily::register(
                registry,
                guard,
                Export::new(
                    "container_oom_kills",
                    "Container deaths with reason OOMKilled, counted when first visible",
                ),
            ),
            time_to_recover: GuardedFamily::register_with_constructor(
                registry,
                guard,
                Export::seconds(
                    "container_time_to_recover",
                    "Time from a container's death to its restarted instance being ready",
                ),
                Buckets(buckets.into()),
            ),
            recovery_phases: GuardedFamily::register_with_constructor(
                registry,
                guard,
                Export::seconds(
                    "container_recovery_phase",
                    "The time to recover split into its phases: the kubelet's crash-loop \
                     back-off, the start of the new instance, its readiness (phase label); \
                     per recovery the three add up to selfheal_container_time_to_recover_seconds",
                ),
                Buckets(buckets.into()),
            ),
            last_exit_code: GuardedFamily::register(
                registry,
                guard,
                Export::new(
                    "container_last_termination_exit_code",
                    "Exit code of the container's most recent death",
                ),
            ),
            memory_limit: GuardedFamily::register(
                registry,
                guard,
                Export::bytes(
                    "container_memory_limit",
                    "Memory limit in force for the container (resources.limits.memory)",
                ),
            ),
            crashlooping: GuardedFamily::register(
                registry,
                guard,
                Export::new(
                    "container_crashlooping",
                    "1 while the pod's container waits in CrashLoopBackOff, else 0",
                ),
            ),
            unavailable: GuardedFamily::register(
                registry,
                guard,
                Export::seconds(
                    "workload_unavailable",
                    "Time during which the workload, after having been ready, had pods but none ready",
                ),
            ),
            evictions: GuardedFamily::register(
                registry,
                guard,
                Export::new(
                    "pod_evictions",
                    "Pods of the workload evicted by the kubelet (status.reason Evicted)",
                ),
            ),
            disruptions: GuardedFamily::register(
                registry,
                guard,
                Export::new(
                    "pod_disruptions",
                    "Pods of the workload that Kubernetes took away on purpose, by the reason of \
                     their DisruptionTarget condition (preemption, taint, Eviction API, pod GC, \
                     kubelet); not crashes",
                ),
            ),
            observed_containers: Gauge::default(),
            anomalies: Family::default(),
            series: foldhash::HashMap::default(),
        };
        registry.register(
            "observed_containers",
            "Containers currently followed by the observer",
            metrics.observed_containers.clone(),
        );
        registry.register(
            "input_anomalies",
            "Objects from the API server that had to be repaired or ignored, by kind of problem",
            metrics.anomalies.clone(),
        );
        metrics
    }

    pub fn set_observed_containers(&self, count: usize) {
        self.observed_containers
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    pub fn record(&mut self, observation: &Observation) {
        match observation {
            Observation::ContainerSeen {
                workload,
                container,
                memory_limit_bytes,
            } => {
                let labels = self.container_labels(workload, container);
                // Created at 0 so that increase() sees the very first OOMKill.
                self.oom_kills.get_or_create_owned(&labels);
                if let Some(bytes) = memory_limit_bytes {
                    let bytes = i64::try_from(*bytes).unwrap_or(i64::MAX);
                    self.memory_limit.get_or_create_owned(&labels).set(bytes);
                }
            }
            Observation::Died {
                workload,
                container,
                cause,
                exit_code,
            } => {
                let labels = self.container_labels(workload, container);
                if *cause == Cause::OOMKilled {
                    self.oom_kills.get_or_create_owned(&labels).inc();
                }
                self.last_exit_code
                    .get_or_create_owned(&labels)
                    .set(i64::from(*exit_code));
            }
            Observation::LastExitCode {
                workload,
                container,
                exit_code,
            } => {
                let labels = self.container_labels(workload, container);
                self.last_exit_code
                    .get_or_create_owned(&labels)
                    .set(i64::from(*exit_code));
            }
            Observation::Restarted {
                workload,
                container,
                cause,
                count,
            } => {
                let labels = self.reason_labels(workload, container, *cause);
                self.restarts.get_or_create_owned(&labels).inc_by(*count);
            }
            Observation::Recovered {
                workload,
                container,
                cause,
                seconds,
                phases,
            } => {
                let labels = self.reason_labels(workload, container, *cause);
                self.time_to_recover
                    .get_or_create_owned(&labels)
                    .observe(*seconds);
                if let Some(phases) = phases {
                    for (phase, seconds) in [
                        (Phase::Backoff, phases.backoff_seconds),
                        (Phase::Start, phases.start_seconds),
                        (Phase::Readiness, phases.readiness_seconds),
                    ] {
                        let labels = PhaseLabels {
                            reason: labels.clone(),
                            phase,
                        };
                        self.recovery_phases
                            .get_or_create_owned(&labels)
                            .observe(seconds);
                    }
                }
            }
            Observation::CrashLooping {
                workload,
                pod,
                container,
                active,
            } => {
                let labels = pod_container_labels(workload, pod, container);
                self.crashlooping
                    .get_or_create_owned(&labels)
                    .set(i64::from(*active));
            }
            Observation::PodForgotten {
                workload,
                pod,
                containers,
            } => {
                for container in containers {
                    self.crashlooping
                        .remove(&pod_container_labels(workload, pod, container));
                }
            }
            Observation::Evicted { workload } => {
                let labels = self.workload_labels(workload);
                self.evictions.get_or_create_owned(&labels).inc();
            }
            Observation::Disrupted { workload, reason } => {
                self.series.entry(workload.clone()).or_default();
                let labels = DisruptionLabels {
                    workload: workload.clone(),
                    reason: *reason,
                };
                self.disruptions.get_or_create_owned(&labels).inc();
            }
            Observation::Unavailable { workload, seconds } => {
                let labels = self.workload_labels(workload);
                self.unavailable
                    .get_or_create_owned(&labels)
                    .inc_by(*seconds);
            }
            Observation::WorkloadExpired { workload } => self.remove_workload(workload),
            Observation::Incident(_) => {}
            Observation::Anomaly(kind) => {
                self.anomalies
                    .get_or_create_owned(&AnomalyLabels { kind: *kind })
                    .inc();
            }
        }
    }

    fn workload_labels(&mut self, workload: &Arc<Workload>) -> WorkloadLabels {
        self.series.entry(workload.clone()).or_default();
        workload_labels(workload)
    }

    fn container_labels(
        &mut self,
        workload: &Arc<Workload>,
        container: &Arc<str>,
    ) -> ContainerLabels {
        let series = self.series.entry(workload.clone()).or_default();
        if !series.containers.contains(container) {
            series.containers.insert(container.clone());
        }
        container_labels(workload, container)
    }

    fn reason_labels(
        &mut self,
        workload: &Arc<Workload>,
        container: &Arc<str>,
        cause: Cause,
    ) -> ReasonLabels {
        let series = self.series.entry(workload.clone()).or_default();
        series.reasons.insert((container.clone(), cause));
        ReasonLabels {
            workload: workload.clone(),
            container: container.clone(),
            reason: cause,
        }
    }

    fn remove_workload(&mut self, workload: &Arc<Workload>) {
        let Some(series) = self.series.remove(workload) else {
            return;
        };
        for container in &series.containers {
            let labels = container_labels(workload, container);
            self.oom_kills.remove(&labels);
            self.last_exit_code.remove(&labels);
            self.memory_limit.remove(&labels);
        }
        for (container, cause) in series.reasons {
            let labels = ReasonLabels {
                workload: workload.clone(),
                container,
                reason: cause,
            };
            self.restarts.remove(&labels);
            self.time_to_recover.remove(&labels);
            for phase in Phase::ALL {
                self.recovery_phases.remove(&PhaseLabels {
                    reason: labels.clone(),
                    phase,
                });
            }
        }
        let labels = workload_labels(workload);
        self.unavailable.remove(&labels);
        self.evictions.remove(&labels);
        for reason in Disruption::ALL {
            self.disruptions.remove(&DisruptionLabels {
                workload: workload.clone(),
                reason,
            });
        }
    }
}

fn workload_labels(workload: &Arc<Workload>) -> WorkloadLabels {
    WorkloadLabels {
        workload: workload.clone(),
    }
}

fn container_labels(workload: &Arc<Workload>, container: &Arc<str>) -> ContainerLabels {
    ContainerLabels {
        workload: workload.clone(),
        container: container.clone(),
    }
}

fn pod_container_labels(
    workload: &Arc<Workload>,
    pod: &Arc<str>,
    container: &Arc<str>,
) -> PodContainerLabels {
    PodContainerLabels {
        workload: workload.clone(),
        pod: pod.clone(),
        container: container.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::prometheus_text::encode;

    fn workload() -> Arc<Workload> {
        Arc::new(Workload::new(
            "grade-submission",
            "Pod",
            "grade-submission-api",
        ))
    }

    fn render(registry: &Registry) -> String {
        let mut text = String::new();
        encode(&mut text, registry).expect("encodes");
        text
    }

    #[test]
    fn observations_become_the_contracted_series_and_expire_with_the_workload() {
        let mut registry = Registry::with_prefix("selfheal");
        let guard = CardinalityGuard::register(&mut registry, 1000);
        let mut metrics = Metrics::register(&mut registry, &[1.0, 5.0], &guard);
        let container: Arc<str> = Arc::from("api");
        let w = workload();
        metrics.record(&Observation::ContainerSeen {
            workload: w.clone(),
            container: container.clone(),
            memory_limit_bytes: Some(50_331_648),
        });
        let text = render(&registry);
        let labels = r#"namespace="grade-submission",workload_kind="Pod",workload="grade-submission-api",container="api""#;
        assert!(
            text.contains(&format!("selfheal_container_oom_kills_total{{{labels}}} 0")),
            "{text}"
        );
        assert!(text.contains(&format!(
            "selfheal_container_memory_limit_bytes{{{labels}}} 50331648"
        )));

        metrics.record(&Observation::Died {
            workload: w.clone(),
            container: container.clone(),
            cause: Cause::OOMKilled,
            exit_code: 137,
        });
        metrics.record(&Observation::Restarted {
            workload: w.clone(),
            container: container.clone(),
            cause: Cause::OOMKilled,
            count: 2,
        });
        metrics.record(&Observation::Recovered {
            workload: w.clone(),
            container: container.clone(),
            cause: Cause::OOMKilled,
            seconds: 3.0,
            phases: Some(crate::observe::RecoveryPhases {
                backoff_seconds: 0.5,
                start_seconds: 0.5,
                readiness_seconds: 2.0,
            }),
        });
        metrics.record(&Observation::Unavailable {
            workload: w.clone(),
            seconds: 2.5,
        });
        metrics.record(&Observation::Disrupted {
            workload: w.clone(),
            reason: Disruption::EvictionApi,
        });
        let text = render(&registry);
        assert!(text.contains(
            r#"selfheal_pod_disruptions_total{namespace="grade-submission",workload_kind="Pod",workload="grade-submission-api",reason="EvictionByEvictionAPI"} 1"#
        ), "{text}");
        assert!(text.contains(&format!("selfheal_container_oom_kills_total{{{labels}}} 1")));
        assert!(text.contains(&format!(
            "selfheal_container_last_termination_exit_code{{{labels}}} 137"
        )));
        assert!(text.contains(&format!(
            "selfheal_container_restarts_total{{{labels},reason=\"OOMKilled\"}} 2"
        )));
        assert!(text.contains(&format!(
            "selfheal_container_time_to_recover_seconds_bucket{{{labels},reason=\"OOMKilled\",le=\"5\"}} 1"
        )), "{text}");
        for (phase, in_first_bucket) in [("backoff", 1), ("start", 1), ("readiness", 0)] {
            assert!(text.contains(&format!(
                "selfheal_container_recovery_phase_seconds_bucket{{{labels},reason=\"OOMKilled\",phase=\"{phase}\",le=\"1\"}} {in_first_bucket}"
            )), "{phase}: {text}");
        }
        assert!(text.contains(
            r#"selfheal_workload_unavailable_seconds_total{namespace="grade-submission",workload_kind="Pod",workload="grade-submission-api"} 2.5"#
        ));

        metrics.record(&Observation::WorkloadExpired { workload: w });
        let text = render(&registry);
        assert!(!text.contains("grade-submission-api"), "{text}");
    }

    #[test]
    fn label_sets_of_equal_workloads_are_the_same_series() {
        use std::hash::BuildHasher;
        let labels = |workload: Arc<Workload>, container: &str, reason| ReasonLabels {
            workload,
            container: Arc::from(container),
            reason,
        };
        // Two workloads built apart (not the same Arc) with the same names.
        let a = labels(workload(), "api", Cause::OOMKilled);
        let b = labels(workload(), "api", Cause::OOMKilled);
        assert!(!Arc::ptr_eq(&a.workload, &b.workload));
        assert_eq!(a, b);
        let state = std::hash::RandomState::new();
        assert_eq!(state.hash_one(&a), state.hash_one(&b));
        assert_ne!(a, labels(workload(), "api", Cause::Error));
        assert_ne!(a, labels(workload(), "sidecar", Cause::OOMKilled));
        let other = Arc::new(Workload::new(
            "grade-submission",
            "Deployment",
            "grade-submission-api",
        ));
        assert_ne!(a, labels(other, "api", Cause::OOMKilled));
    }

    #[test]
    fn forgotten_pods_lose_their_crashloop_series() {
        let mut registry = Registry::with_prefix("selfheal");
        let guard = CardinalityGuard::register(&mut registry, 1000);
        let mut metrics = Metrics::register(&mut registry, &[1.0], &guard);
        let pod: Arc<str> = Arc::from("p-1");
        let container: Arc<str> = Arc::from("api");
        metrics.record(&Observation::CrashLooping {
            workload: workload(),
            pod: pod.clone(),
            container: container.clone(),
            active: true,
        });
        assert!(render(&registry).contains("selfheal_container_crashlooping{"));
        metrics.record(&Observation::PodForgotten {
            workload: workload(),
            pod,
            containers: vec![container],
        });
        assert!(!render(&registry).contains("selfheal_container_crashlooping{"));
    }
}
