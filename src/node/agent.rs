//! The node agent's glue: pods in (from the node's pod watch, beside the observer),
//! cgroup readings through the [`CgroupReader`], the [`Reconciler`]'s conclusions out
//! to [`NodeMetrics`] and the incident log.

use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};

use super::cgroup_path::{ContainerId, KubeletRoot, QosClass};
use super::config::NodeConfig;
use super::metrics::NodeMetrics;
use super::pods::{instances_of, qos_of};
use super::reader::{self, CgroupReader, DetectError, Target};
use super::reconcile::{InstanceRef, Memory, NodeEvent, Reconciler};
use std::collections::VecDeque;

use tokio::sync::mpsc;

use super::kmsg::{self, Victim};
use crate::correlate::incidents::{OomKillIncident, OomVictim, SharedIncidentLog, lock};
use crate::k8s::types::SlimPod;
use crate::k8s::workload::{Workload, workload_of};
use crate::observe::Cause;

#[derive(Debug)]
struct PodEntry {
    workload: Arc<Workload>,
    name: Arc<str>,
    qos: Option<QosClass>,
    /// The relist this pod was last seen in.
    epoch: u64,
    /// The `containerID`s its status names.
    instances: Vec<Arc<str>>,
}

/// Everything the node agent owns; driven by the watch loop.
pub struct NodeAgent {
    reader: CgroupReader,
    reconciler: Reconciler,
    pods: foldhash::HashMap<Arc<str>, PodEntry>,
    targets: foldhash::HashMap<Arc<str>, Target>,
    metrics: NodeMetrics,
    incidents: SharedIncidentLog,
    /// The first pod list is complete: instances seen from now on are news.
    synced: bool,
    epoch: u64,
    events: Vec<NodeEvent>,
    /// With `node.kmsg`: the kernel log's victims, until the watch loop takes them.
    kmsg: Option<mpsc::UnboundedReceiver<Victim>>,
    /// Victims not yet in an incident, by instance (a few per instance at most).
    victims: foldhash::HashMap<Arc<str>, VecDeque<OomVictim>>,
}

/// Victims remembered per instance until their kill is settled.
const MAX_VICTIMS: usize = 16;

impl NodeAgent {
    /// Detects the cgroup version under `config.cgroup_root` and sets up the reader.
    pub fn new(
        config: &NodeConfig,
        metrics: NodeMetrics,
        incidents: SharedIncidentLog,
    ) -> Result<NodeAgent, DetectError> {
        let version = reader::detect_version(&config.cgroup_root)?;
        let reader = CgroupReader::new(
            &config.cgroup_root,
            version,
            KubeletRoot::new(&config.kubelet_cgroup_root),
        );
        tracing::info!(
            cgroup_root = %config.cgroup_root.display(),
            version = version.as_str(),
            events = if reader.events_fd().is_some() { "inotify on memory.events" } else { "none (polling)" },
            reread_interval = ?config.reread_interval,
            "node agent reading container memory cgroups"
        );
        let settle = SignedDuration::try_from(config.settle).unwrap_or(SignedDuration::MAX);
        let kmsg = if config.kmsg {
            match kmsg::spawn_reader("/dev/kmsg".into()) {
                Ok(victims) => Some(victims),
                Err(error) => {
                    tracing::warn!(
                        %error,
                        "node.kmsg: cannot read /dev/kmsg (it needs CAP_SYSLOG, and in a container the host's /dev/kmsg and a root user): OOM kills are counted without the victims' names"
                    );
                    None
                }
            }
        } else {
            None
        };
        Ok(NodeAgent {
            reader,
            reconciler: Reconciler::new(settle),
            pods: foldhash::HashMap::default(),
            targets: foldhash::HashMap::default(),
            metrics,
            incidents,
            synced: false,
            epoch: 0,
            events: Vec::new(),
            kmsg,
            victims: foldhash::HashMap::default(),
        })
    }

    /// The reader's inotify descriptor, when the kernel notifies changes (v2).
    pub fn events_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.reader.events_fd()
    }

    /// The kernel log's victims (`node.kmsg`), for the watch loop to wait on; once.
    pub fn take_victims(&mut self) -> Option<mpsc::UnboundedReceiver<Victim>> {
        self.kmsg.take()
    }

    /// A victim from the kernel log: kept for the incident of its container's instance,
    /// found by the container ID at the end of its cgroup path.
    pub fn on_victim(&mut self, victim: Victim) {
        let Some(leaf) = victim.memcg.rsplit('/').next() else {
            return;
        };
        let leaf = leaf.strip_suffix(".scope").unwrap_or(leaf);
        let bare = ["cri-containerd-", "crio-", "docker-"]
            .iter()
            .find_map(|prefix| leaf.strip_prefix(prefix))
            .unwrap_or(leaf);
        let Some(key) = self
            .targets
            .iter()
            .find(|(_, target)| &*target.id.id == bare)
            .map(|(key, _)| key.clone())
        else {
            return;
        };
        let victims = self.victims.entry(key).or_default();
        if victims.len() == MAX_VICTIMS {
            victims.pop_front();
        }
        victims.push_back(OomVictim {
            name: victim.name,
            pid: victim.pid,
        });
    }

    pub fn metrics_mut(&mut self) -> &mut NodeMetrics {
        &mut self.metrics
    }

    /// A relist of the node's pods begins.
    pub fn begin_relist(&mut self) {
        self.epoch += 1;
    }

    /// The relist is complete: pods not in it are gone.
    pub fn end_relist(&mut self, now: Timestamp) {
        self.synced = true;
        let epoch = self.epoch;
        let gone: Vec<Arc<str>> = self
            .pods
            .iter()
            .filter(|(_, pod)| pod.epoch != epoch)
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in gone {
            self.forget_pod(&uid);
        }
        self.flush(now);
    }

    pub fn apply_pod(&mut self, pod: &SlimPod, now: Timestamp) {
        let meta = &pod.metadata;
        let (Some(uid), Some(namespace), Some(name)) = (&meta.uid, &meta.namespace, &meta.name)
        else {
            return;
        };
        let uid: Arc<str> = Arc::from(uid.as_str());
        let qos = qos_of(pod);
        let epoch = self.epoch;
        let entry = self.pods.entry(uid.clone()).or_insert_with(|| PodEntry {
            workload: Arc::new(workload_of(namespace, name, meta)),
            name: Arc::from(name.as_str()),
            qos,
            epoch,
            instances: Vec::new(),
        });
        entry.epoch = epoch;
        if qos.is_some() {
            entry.qos = qos;
        }
        let qos = entry.qos;
        let mut seen = Vec::new();
        for status in instances_of(pod) {
            seen.push(status.container_id.clone());
            if !self.targets.contains_key(&status.container_id) {
                let Ok(id) = ContainerId::parse(&status.container_id) else {
                    self.metrics.read_error("bad_id");
                    continue;
                };
                self.targets.insert(
                    status.container_id.clone(),
                    Target {
                        key: status.container_id.clone(),
                        id,
                        pod_uid: uid.clone(),
                        qos,
                    },
                );
                self.reconciler.track(
                    InstanceRef {
                        pod_uid: uid.clone(),
                        container: status.container.clone(),
                        container_id: status.container_id.clone(),
                    },
                    self.synced,
                );
            }
            if let Some(death) = status.death {
                if self.reconciler.wants_reading(&status.container_id) {
                    // A last look at the counter before the death settles it: the
                    // cgroup may still be there.
                    self.read_one(&status.container_id.clone(), now);
                }
                self.reconciler
                    .died(&status.container_id, death, &mut self.events);
                self.reader.forget(&status.container_id);
            }
        }
        if let Some(entry) = self.pods.get_mut(&uid) {
            entry.instances = seen;
        }
        // Instances the status no longer names (the kubelet shows two per container).
        self.prune();
        self.flush(now);
    }

    pub fn delete_pod(&mut self, pod: &SlimPod, now: Timestamp) {
        if let Some(uid) = pod.metadata.uid.as_deref() {
            self.forget_pod(uid);
        }
        self.flush(now);
    }

    /// The periodic re-read of every living instance, then the settle check.
    pub fn tick(&mut self, now: Timestamp) {
        let keys: Vec<Arc<str>> = self
            .targets
            .keys()
            .filter(|key| self.reconciler.wants_reading(key))
            .cloned()
            .collect();
        for key in keys {
            self.read_one(&key, now);
        }
        self.reconciler.tick(&mut self.events);
        self.metrics.set_cgroups(self.reader.located());
        self.flush(now);
    }

    /// The kernel notified changes (v2 inotify): reads just those cgroups, or all of
    /// them after a queue overflow.
    pub fn on_notified(&mut self, now: Timestamp) {
        match self.reader.changed() {
            Some(keys) => {
                for key in keys {
                    self.read_one(&key, now);
                }
                self.flush(now);
            }
            None => self.tick(now),
        }
    }

    fn read_one(&mut self, key: &Arc<str>, now: Timestamp) {
        let Some(target) = self.targets.get(key) else {
            return;
        };
        match self.reader.read(target) {
            Ok(reading) => self.reconciler.observe(key, reading, now, &mut self.events),
            Err(error) => {
                self.metrics.read_error(error.kind());
                tracing::debug!(%error, "cannot read a container's memory cgroup");
            }
        }
    }

    fn forget_pod(&mut self, uid: &str) {
        if self.pods.remove(uid).is_some() {
            self.prune();
        }
    }

    /// Drops the instances no pod names any more, everywhere.
    fn prune(&mut self) {
        let named: foldhash::HashSet<&Arc<str>> =
            self.pods.values().flat_map(|pod| &pod.instances).collect();
        let unsettled = self
            .reconciler
            .retain(|instance| named.contains(&instance.container_id));
        if unsettled > 0 {
            self.metrics.unsettled(unsettled);
        }
        self.targets.retain(|key, _| named.contains(key));
        self.victims.retain(|key, _| named.contains(key));
        let targets = &self.targets;
        self.reader.retain(|key| targets.contains_key(key));
    }

    /// Hands the reconciler's conclusions to the metrics and the incident log.
    fn flush(&mut self, now: Timestamp) {
        if self.events.is_empty() {
            return;
        }
        let events = std::mem::take(&mut self.events);
        let mut log = lock(&self.incidents);
        for event in events {
            let (instance, kind, count, reported, memory) = match event {
                NodeEvent::CounterReset { .. } => {
                    self.metrics.counter_reset();
                    continue;
                }
                NodeEvent::ProcessOomKills {
                    instance,
                    count,
                    memory,
                } => (instance, "process", count, None, memory),
                NodeEvent::ContainerOomKill { instance, memory } => {
                    (instance, "container", 1, None, memory)
                }
                NodeEvent::Reclassified {
                    instance,
                    reported,
                    exit_code,
                    memory,
                } => (
                    instance,
                    "reclassified",
                    1,
                    Some((reported, exit_code)),
                    memory,
                ),
            };
            let Some(pod) = self.pods.get(&instance.pod_uid) else {
                continue;
            };
            match (kind, reported) {
                ("process", _) => {
                    self.metrics
                        .process_oom_kills(&pod.workload, &instance.container, count);
                }
                (_, Some((cause, _))) => {
                    self.metrics
                        .reclassified(&pod.workload, &instance.container, cause);
                }
                _ => {}
            }
            tracing::info!(
                namespace = %pod.workload.namespace(),
                pod = %pod.name,
                container = %instance.container,
                container_id = %instance.container_id,
                oom_kill = kind,
                count,
                reported = reported.map(|(cause, _)| cause.as_str()),
                memory_peak_bytes = memory.peak_bytes,
                memory_limit_bytes = memory.limit_bytes,
                "kernel OOM kill"
            );
            let victims = self
                .victims
                .get_mut(&instance.container_id)
                .map(|pending| {
                    let take = usize::try_from(count)
                        .unwrap_or(usize::MAX)
                        .min(pending.len());
                    pending.drain(..take).collect()
                })
                .unwrap_or_default();
            let mut record = incident(pod, &instance, kind, count, reported, memory, now);
            record.victims = victims;
            log.record_oom_kill(record);
        }
    }
}

fn incident(
    pod: &PodEntry,
    instance: &InstanceRef,
    kind: &'static str,
    count: u64,
    reported: Option<(Cause, i32)>,
    memory: Memory,
    now: Timestamp,
) -> OomKillIncident {
    OomKillIncident {
        id: 0,
        namespace: pod.workload.namespace().clone(),
        workload_kind: pod.workload.kind().clone(),
        workload: pod.workload.name().clone(),
        pod: pod.name.clone(),
        container: instance.container.clone(),
        container_id: instance.container_id.clone(),
        oom_kill: kind,
        count,
        reported_reason: reported.map(|(cause, _)| cause.as_str()),
        exit_code: reported.map(|(_, code)| code),
        memory_peak_bytes: memory.peak_bytes,
        memory_limit_bytes: memory.limit_bytes,
        seen_at: now,
        victims: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::correlate::incidents::{Incident, IncidentLog};
    use crate::export::cardinality::CardinalityGuard;
    use crate::node::cgroup_path::CgroupVersion;
    use crate::node::fixtures::{Driver, FixtureTree};
    use prometheus_client::encoding::text::encode;
    use prometheus_client::registry::Registry;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).expect("valid")
    }

    fn pod(tree: &FixtureTree, running: &str, last: Option<(&str, &str, i32)>) -> SlimPod {
        let last_state = match last {
            Some((id, reason, code)) => serde_json::json!({"terminated": {
                "reason": reason, "exitCode": code, "containerID": format!("containerd://{id}")
            }}),
            None => serde_json::json!({}),
        };
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "api-0", "namespace": "shop", "uid": tree.pod_uid},
            "status": {
                "qosClass": "Burstable",
                "containerStatuses": [{
                    "name": "gunicorn",
                    "containerID": format!("containerd://{running}"),
                    "state": {"running": {}},
                    "lastState": last_state,
                }]
            }
        }))
        .expect("pod")
    }

    struct Rig {
        tree: FixtureTree,
        agent: NodeAgent,
        registry: Registry,
        incidents: SharedIncidentLog,
    }

    impl Rig {
        fn new(version: CgroupVersion, driver: Driver) -> Rig {
            let tree = FixtureTree::new(version, driver);
            let mut registry = Registry::with_prefix("selfheal");
            let guard = CardinalityGuard::register(&mut registry, 1000);
            let metrics = NodeMetrics::register(&mut registry, &guard);
            let incidents = IncidentLog::new(10, std::time::Duration::ZERO).shared();
            let config = NodeConfig {
                cgroup_root: tree.root().to_path_buf(),
                ..NodeConfig::default()
            };
            let agent = NodeAgent::new(&config, metrics, incidents.clone()).expect("agent");
            Rig {
                tree,
                agent,
                registry,
                incidents,
            }
        }

        fn value(&self, series: &str) -> Option<f64> {
            let mut text = String::new();
            encode(&mut text, &self.registry).expect("encoded");
            text.lines()
                .find(|line| line.starts_with(series))
                .and_then(|line| line.rsplit_once(' ')?.1.parse().ok())
        }

        fn kills(&self) -> Vec<(&'static str, u64)> {
            lock(&self.incidents)
                .newest(10)
                .into_iter()
                .filter_map(|incident| match incident {
                    Incident::OomKill(kill) => Some((kill.oom_kill, kill.count)),
                    _ => None,
                })
                .collect()
        }
    }

    const PROCESS: &str = "selfheal_container_process_oom_kills_total{namespace=\"shop\"";

    #[test]
    fn containers_appear_restart_and_vanish_with_their_pods_on_every_layout() {
        for version in [CgroupVersion::V1, CgroupVersion::V2] {
            for driver in [Driver::Cgroupfs, Driver::Systemd] {
                let mut rig = Rig::new(version, driver);
                let what = format!("{version:?} {driver:?}");
                // The baseline: an old kill in a container running at start-up.
                rig.tree.container(QosClass::Burstable, "c1", 2, true);
                rig.agent.begin_relist();
                rig.agent.apply_pod(&pod(&rig.tree, "c1", None), t(0));
                rig.agent.end_relist(t(0));
                rig.agent.tick(t(1));
                assert_eq!(
                    rig.value(PROCESS),
                    None, // (in the daemon the observer's ContainerSeen makes it 0)
                    "{what}: the baseline is not news"
                );
                assert_eq!(rig.value("selfheal_node_cgroups"), Some(1.0), "{what}");
                // A worker killed; the container lives on past the settle time.
                rig.tree.container(QosClass::Burstable, "c1", 3, true);
                rig.agent.on_notified(t(2));
                rig.agent.tick(t(2));
                rig.agent.tick(t(13));
                assert_eq!(rig.value(PROCESS), Some(1.0), "{what}");
                // The init process killed: the cgroup empties and goes; the kubelet
                // reports OOMKilled and a new instance c2 starts.
                rig.tree.container(QosClass::Burstable, "c1", 4, false);
                rig.agent.tick(t(14));
                let old = rig.tree.container(QosClass::Burstable, "c1", 4, false);
                std::fs::remove_dir_all(old).expect("removed");
                rig.tree.container(QosClass::Burstable, "c2", 0, true);
                rig.agent
                    .apply_pod(&pod(&rig.tree, "c2", Some(("c1", "OOMKilled", 137))), t(15));
                rig.agent.tick(t(30));
                assert_eq!(
                    rig.value(PROCESS),
                    Some(1.0),
                    "{what}: the death is no process kill"
                );
                assert_eq!(
                    rig.kills(),
                    vec![("container", 1), ("process", 1)],
                    "{what}"
                );
                // c2 counts from 0: its first kill is news. Then the runtime loses the
                // event of its death: Error/137, reclassified.
                rig.tree.container(QosClass::Burstable, "c2", 1, false);
                rig.agent.tick(t(31));
                rig.tree.container(QosClass::Burstable, "c3", 0, true);
                rig.agent
                    .apply_pod(&pod(&rig.tree, "c3", Some(("c2", "Error", 137))), t(32));
                assert_eq!(
                    rig.value("selfheal_container_oom_reclassified_total{namespace=\"shop\""),
                    Some(1.0),
                    "{what}"
                );
                // The pod goes: nothing followed any more.
                rig.agent.delete_pod(&pod(&rig.tree, "c3", None), t(33));
                rig.agent.tick(t(34));
                assert_eq!(rig.value("selfheal_node_cgroups"), Some(0.0), "{what}");
                assert_eq!(rig.agent.targets.len(), 0, "{what}");
            }
        }
    }
}
