//! The node agent's own series, beside the observer's (which it exports unchanged):
//! process OOM kills, reclassified deaths, and the agent's self-monitoring. Only
//! `selfheal-exporter node` registers them.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::export::cardinality::{CardinalityGuard, Export, GuardedFamily};
use crate::export::metrics::{ContainerLabels, ReasonLabels};
use crate::k8s::workload::Workload;
use crate::observe::Cause;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// The series of [`crate::node`].
pub struct NodeMetrics {
    process_oom_kills: GuardedFamily<ContainerLabels, Counter>,
    reclassified: GuardedFamily<ReasonLabels, Counter>,
    cgroups: Gauge,
    read_errors: Family<KindLabels, Counter>,
    counter_resets: Counter,
    unsettled: Counter,
    /// The label sets created per workload, removed when it expires.
    series: foldhash::HashMap<Arc<Workload>, foldhash::HashSet<Series>>,
}

/// One container's series: the process OOM kills (`None`) or a reclassification
/// counter for the kubelet's reported reason.
type Series = (Arc<str>, Option<Cause>);

impl NodeMetrics {
    pub fn register(registry: &mut Registry, guard: &CardinalityGuard) -> Self {
        let metrics = NodeMetrics {
            process_oom_kills: GuardedFamily::register(
                registry,
                guard,
                Export::new(
                    "container_process_oom_kills",
                    "Kernel OOM kills inside the container that did not end it (memory cgroup \
                     oom_kill counter; node agent only)",
                ),
            ),
            reclassified: GuardedFamily::register(
                registry,
                guard,
                Export::new(
                    "container_oom_reclassified",
                    "Container deaths the kubelet reported with `reason` (e.g. Error, exit code \
                     137) that the kernel's OOM-kill counter shows were OOM kills (node agent only)",
                ),
            ),
            cgroups: Gauge::default(),
            read_errors: Family::default(),
            counter_resets: Counter::default(),
            unsettled: Counter::default(),
            series: foldhash::HashMap::default(),
        };
        registry.register(
            "node_cgroups",
            "Container memory cgroups the node agent follows",
            metrics.cgroups.clone(),
        );
        registry.register(
            "node_cgroup_read_errors",
            "Container memory cgroups that exist but could not be read or parsed, by kind \
             (io, malformed, bad_id)",
            metrics.read_errors.clone(),
        );
        registry.register(
            "node_cgroup_counter_resets",
            "OOM-kill counters that went down (the cgroup was recreated): counted from 0 again",
            metrics.counter_resets.clone(),
        );
        registry.register(
            "node_unsettled_oom_kills",
            "Kernel OOM kills dropped unsettled: the pod went away before the kubelet reported \
             whether the container survived them",
            metrics.unsettled.clone(),
        );
        metrics
    }

    /// A container is known: its process OOM kill counter starts at 0 (so that
    /// `increase()` sees the first kill).
    pub fn container_seen(&mut self, workload: &Arc<Workload>, container: &Arc<str>) {
        self.remember(workload, container, None);
        self.process_oom_kills
            .get_or_create_owned(&container_labels(workload, container));
    }

    pub fn process_oom_kills(&mut self, workload: &Arc<Workload>, container: &Arc<str>, n: u64) {
        self.remember(workload, container, None);
        self.process_oom_kills
            .get_or_create_owned(&container_labels(workload, container))
            .inc_by(n);
    }

    pub fn reclassified(
        &mut self,
        workload: &Arc<Workload>,
        container: &Arc<str>,
        reported: Cause,
    ) {
        self.remember(workload, container, Some(reported));
        self.reclassified
            .get_or_create_owned(&ReasonLabels {
                workload: workload.clone(),
                container: container.clone(),
                reason: reported,
            })
            .inc();
    }

    pub fn set_cgroups(&self, count: usize) {
        self.cgroups.set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    pub fn read_error(&self, kind: &'static str) {
        self.read_errors
            .get_or_create_owned(&KindLabels { kind })
            .inc();
    }

    pub fn counter_reset(&self) {
        self.counter_resets.inc();
    }

    pub fn unsettled(&self, n: u64) {
        self.unsettled.inc_by(n);
    }

    /// The workload's series go, with the observer's (after `metrics.retention`).
    pub fn workload_expired(&mut self, workload: &Arc<Workload>) {
        let Some(series) = self.series.remove(workload) else {
            return;
        };
        for (container, reason) in series {
            match reason {
                None => {
                    self.process_oom_kills
                        .remove(&container_labels(workload, &container));
                }
                Some(reason) => {
                    self.reclassified.remove(&ReasonLabels {
                        workload: workload.clone(),
                        container,
                        reason,
                    });
                }
            }
        }
    }

    fn remember(&mut self, workload: &Arc<Workload>, container: &Arc<str>, reason: Option<Cause>) {
        let series = self.series.entry(workload.clone()).or_default();
        if !series.contains(&(container.clone(), reason)) {
            series.insert((container.clone(), reason));
        }
    }
}

fn container_labels(workload: &Arc<Workload>, container: &Arc<str>) -> ContainerLabels {
    ContainerLabels {
        workload: workload.clone(),
        container: container.clone(),
    }
}
