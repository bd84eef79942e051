//! The prober's series: per target up, requests by result, probe latency, client-seen
//! downtime and outages by cause.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::http::ProbeResult;
use super::target::ProbeSpec;
use crate::export::cardinality::{CardinalityGuard, Export, GuardedFamily};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    pub target: Arc<str>,
    /// Discovered targets only (empty, i.e. absent, for static ones).
    pub namespace: Option<Arc<str>>,
    pub service: Option<Arc<str>>,
}

impl TargetLabels {
    pub fn of(spec: &ProbeSpec) -> Self {
        TargetLabels {
            target: spec.name.clone(),
            namespace: spec.namespace.clone(),
            service: spec.service.clone(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    #[prometheus(flatten)]
    target: TargetLabels,
    result: ProbeResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    namespace: String,
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabels {
    #[prometheus(flatten)]
    target: TargetLabels,
    cause: &'static str,
}

const DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const OUTAGE_BUCKETS: [f64; 14] = [
    0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
];

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

fn outage_histogram() -> Histogram {
    Histogram::new(OUTAGE_BUCKETS)
}

#[derive(Clone)]
pub struct ProbeMetrics {
    up: Arc<GuardedFamily<TargetLabels, Gauge>>,
    requests: Arc<GuardedFamily<ResultLabels, Counter>>,
    duration: Arc<GuardedFamily<TargetLabels, Histogram>>,
    downtime: Arc<GuardedFamily<TargetLabels, Counter<f64, AtomicU64>>>,
    outages: Arc<GuardedFamily<CauseLabels, Counter>>,
    outage_duration: Arc<GuardedFamily<CauseLabels, Histogram>>,
    stale_results: Counter,
    config_errors: Family<ServiceLabels, Counter>,
}

impl ProbeMetrics {
    pub fn register(registry: &mut Registry, guard: &CardinalityGuard) -> Self {
        let metrics = ProbeMetrics {
            up: Arc::new(GuardedFamily::register(
                registry,
                guard,
                Export::new(
                    "probe_up",
                    "1 while the target answers its probes as expected, 0 during an outage",
                ),
            )),
            requests: Arc::new(GuardedFamily::register(
                registry,
                guard,
                Export::new(
                    "probe_requests",
                    "Probes sent, by result (success or a failure class)",
                ),
            )),
            duration: Arc::new(GuardedFamily::register_with_constructor(
                registry,
                guard,
                Export::seconds(
                    "probe_duration",
                    "Time each probe took, to the answer or the failure",
                ),
                duration_histogram as fn() -> Histogram,
            )),
            downtime: Arc::new(GuardedFamily::register(
                registry,
                guard,
                Export::seconds(
                    "probe_downtime",
                    "Time the target was down as its clients saw it, at probe resolution",
                ),
            )),
            outages: Arc::new(GuardedFamily::register(
                registry,
                guard,
                Export::new(
                    "probe_outages",
                    "Ended outages, by the restart that caused them (unknown when none)",
                ),
            )),
            outage_duration: Arc::new(GuardedFamily::register_with_constructor(
                registry,
                guard,
                Export::seconds(
                    "probe_outage_duration",
                    "Length of each ended outage: time to recover as clients saw it",
                ),
                outage_histogram as fn() -> Histogram,
            )),
            stale_results: Counter::default(),
            config_errors: Family::default(),
        };
        registry.register(
            "probe_stale_results",
            "Probe results that completed after a newer probe's result (ignored for up/down)",
            metrics.stale_results.clone(),
        );
        registry.register(
            "probe_config_errors",
            "Services whose selfheal.io/probe annotations could not be used (target not probed)",
            metrics.config_errors.clone(),
        );
        metrics
    }

    pub fn config_error(&self, namespace: &str, service: &str) {
        self.config_errors
            .get_or_create_owned(&ServiceLabels {
                namespace: namespace.to_owned(),
                service: service.to_owned(),
            })
            .inc();
    }

    /// Counts one probe and its latency.
    pub fn probed(&self, labels: &TargetLabels, result: ProbeResult, seconds: f64) {
        self.requests
            .get_or_create_owned(&ResultLabels {
                target: labels.clone(),
                result,
            })
            .inc();
        self.duration.get_or_create_owned(labels).observe(seconds);
    }

    pub fn set_up(&self, labels: &TargetLabels, up: bool) {
        self.up.get_or_create_owned(labels).set(i64::from(up));
        // Created at 0 so that rate() over the counter works from the first outage.
        self.downtime.get_or_create_owned(labels);
    }

    pub fn stale(&self) {
        self.stale_results.inc();
    }

    pub fn downtime(&self, labels: &TargetLabels, seconds: f64) {
        self.downtime.get_or_create_owned(labels).inc_by(seconds);
    }

    pub fn outage_ended(&self, labels: &TargetLabels, cause: &'static str, seconds: f64) {
        let labels = CauseLabels {
            target: labels.clone(),
            cause,
        };
        self.outages.get_or_create_owned(&labels).inc();
        self.outage_duration
            .get_or_create_owned(&labels)
            .observe(seconds);
    }

    /// Drops every series of a removed target.
    pub fn remove(&self, labels: &TargetLabels, causes: &[&'static str]) {
        self.up.remove(labels);
        self.duration.remove(labels);
        self.downtime.remove(labels);
        for result in ALL_RESULTS {
            self.requests.remove(&ResultLabels {
                target: labels.clone(),
                result,
            });
        }
        for cause in causes {
            let labels = CauseLabels {
                target: labels.clone(),
                cause,
            };
            self.outages.remove(&labels);
            self.outage_duration.remove(&labels);
        }
    }
}

const ALL_RESULTS: [ProbeResult; 8] = [
    ProbeResult::Success,
    ProbeResult::Timeout,
    ProbeResult::ConnectionRefused,
    ProbeResult::ConnectionReset,
    ProbeResult::Dns,
    ProbeResult::Tls,
    ProbeResult::HttpStatus,
    ProbeResult::BodyMismatch,
];
