//! Slim Kubernetes object types: only the fields the observer reads.
//!
//! The daemon never stores whole objects, but every object still passes through
//! serde on its way from the watch stream to the observer. Deserializing only these
//! fields keeps both the decode cost and the transient memory small; unknown fields
//! (annotations, managedFields, volumes, …) are skipped without being allocated.
//! Every field is optional or defaulted, so a malformed or partial object from the
//! API server is still decoded and the observer decides what to do with the gaps.
//! Field names and meanings are those of the Kubernetes API (core/v1); the docs here
//! say what the exporter reads each for.

use k8s_openapi::api::core::v1::{Event, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::Resource;
use serde::{Deserialize, Deserializer};

/// A Pod, reduced to what the observer needs; kube-rs lists and watches it as a Pod.
#[derive(Clone, Debug, Default, Deserialize, Resource)]
#[resource(inherit = Pod)]
pub struct SlimPod {
    /// Name, namespace, uid, resourceVersion (for kube-rs's watch), labels, owners.
    #[serde(default, deserialize_with = "slim_meta")]
    pub metadata: ObjectMeta,
    /// The containers, their memory limits and the restart policy.
    #[serde(default, deserialize_with = "nullable")]
    pub spec: PodSpec,
    /// The kubelet's view: phase, conditions, container states.
    #[serde(default, deserialize_with = "nullable")]
    pub status: PodStatus,
}

/// `spec` of a Pod.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    /// The app containers.
    #[serde(default, deserialize_with = "nullable")]
    pub containers: Vec<ContainerSpec>,
    /// The init containers (native sidecars among them).
    #[serde(default, deserialize_with = "nullable")]
    pub init_containers: Vec<ContainerSpec>,
    /// `Always`, `OnFailure` or `Never`: whether a death is followed by a restart.
    pub restart_policy: Option<String>,
    /// How long a container may take to stop after SIGTERM.
    pub termination_grace_period_seconds: Option<i64>,
}

/// One container of a Pod's spec.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerSpec {
    /// The container's name, the `container` label.
    #[serde(default)]
    pub name: String,
    /// Its resources; only the memory limit is read.
    #[serde(default, deserialize_with = "nullable")]
    pub resources: Resources,
    /// Container restart rules (KEP-5307, on by default since 1.35): on which exit codes
    /// the kubelet restarts this container whatever the pod's restart policy says.
    #[serde(default, deserialize_with = "nullable")]
    pub restart_policy_rules: Vec<RestartRule>,
}

/// One of a container's `restartPolicyRules`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RestartRule {
    /// `Restart`, or (1.36+, beta) `RestartAllContainers`.
    pub action: Option<String>,
    /// Which exit codes the rule matches.
    #[serde(default, deserialize_with = "nullable")]
    pub exit_codes: ExitCodes,
}

/// `exitCodes` of a restart rule.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct ExitCodes {
    /// `In` or `NotIn`.
    pub operator: Option<String>,
    /// The exit codes.
    #[serde(default, deserialize_with = "nullable")]
    pub values: Vec<i32>,
}

impl RestartRule {
    /// Whether the rule matches `exit_code`; an unknown operator matches nothing.
    pub fn matches(&self, exit_code: i32) -> bool {
        let listed = self.exit_codes.values.contains(&exit_code);
        match self.exit_codes.operator.as_deref() {
            Some("In") => listed,
            Some("NotIn") => !listed,
            _ => false,
        }
    }
}

/// The action of the container's own rules after `exit_code` (`Restart`,
/// `RestartAllContainers`): the first rule that matches decides, as the kubelet evaluates
/// them. `None` when no rule matches.
pub fn rule_action(rules: &[RestartRule], exit_code: i32) -> Option<&str> {
    rules
        .iter()
        .find(|rule| rule.matches(exit_code))
        .and_then(|rule| rule.action.as_deref())
}

/// `resources` of a container.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Resources {
    /// `limits`; only `memory` is read.
    #[serde(default, deserialize_with = "nullable")]
    pub limits: Limits,
}

/// `resources.limits` of a container.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Limits {
    /// A Kubernetes quantity such as `48Mi`, kept as text until the observer parses it.
    pub memory: Option<String>,
}

/// `status` of a Pod.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    /// `Pending`, `Running`, `Succeeded`, `Failed`: a finished pod restarts nothing.
    pub phase: Option<String>,
    /// Why the pod is in its phase (`Evicted`, …).
    pub reason: Option<String>,
    /// `Ready` and its transition time decide when a restart has recovered.
    #[serde(default, deserialize_with = "nullable")]
    pub conditions: Vec<PodCondition>,
    /// The app containers' states.
    #[serde(default, deserialize_with = "nullable")]
    pub container_statuses: Vec<ContainerStatus>,
    /// The init containers' states.
    #[serde(default, deserialize_with = "nullable")]
    pub init_container_statuses: Vec<ContainerStatus>,
    /// `Guaranteed`, `Burstable` or `BestEffort`: where the node agent finds the pod's
    /// cgroup.
    #[serde(rename = "qosClass")]
    pub qos_class: Option<String>,
}

/// One of a Pod's `status.conditions`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodCondition {
    /// `Ready`, `ContainersReady`, ….
    #[serde(rename = "type", default)]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    #[serde(default)]
    pub status: String,
    /// When the status last changed (RFC 3339).
    pub last_transition_time: Option<String>,
    /// Why: for `DisruptionTarget`, what is taking the pod away.
    pub reason: Option<String>,
}

/// One container's status, as the kubelet reports it.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStatus {
    /// The container's name.
    #[serde(default)]
    pub name: String,
    /// Its readiness probe passes.
    #[serde(default)]
    pub ready: bool,
    /// How many times the kubelet restarted it; each step is one restart.
    #[serde(default)]
    pub restart_count: i64,
    /// The runtime's id of the current container instance.
    #[serde(rename = "containerID")]
    pub container_id: Option<String>,
    /// What the container is doing now.
    #[serde(default, deserialize_with = "nullable")]
    pub state: ContainerState,
    /// How the previous instance ended.
    #[serde(default, deserialize_with = "nullable")]
    pub last_state: ContainerState,
    /// The resources in force (in-place resize, GA in 1.35): while a resize is pending
    /// or after it, the memory limit the container really runs under, which may differ
    /// from the spec's.
    #[serde(default, deserialize_with = "nullable")]
    pub resources: Resources,
}

/// At most one of running, waiting, terminated.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ContainerState {
    /// The container runs.
    pub running: Option<StateRunning>,
    /// The container waits, e.g. in `CrashLoopBackOff`.
    pub waiting: Option<StateWaiting>,
    /// The container ended: the death the exporter counts.
    pub terminated: Option<StateTerminated>,
}

/// `state.running`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateRunning {
    /// When this instance started (RFC 3339): the end of a recovery's start phase.
    pub started_at: Option<String>,
}

/// `state.waiting`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct StateWaiting {
    /// `CrashLoopBackOff`, `ContainerCreating`, ….
    pub reason: Option<String>,
    /// With `CrashLoopBackOff`: "back-off 40s restarting failed container=…", the
    /// back-off the kubelet imposed.
    pub message: Option<String>,
}

/// `state.terminated` or `lastState.terminated`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateTerminated {
    /// The kubelet's reason: `OOMKilled`, `Error`, `Completed`, ….
    pub reason: Option<String>,
    /// The process's exit code (128 + signal for a signal).
    #[serde(default)]
    pub exit_code: i32,
    /// When it ended (RFC 3339).
    pub finished_at: Option<String>,
    /// The ended instance's id: with `finishedAt`, what makes a death unique.
    #[serde(rename = "containerID")]
    pub container_id: Option<String>,
    /// The runtime's message: tells an OOM kill during start within a `StartError`.
    pub message: Option<String>,
}

/// A core/v1 Event, reduced to what restart attribution needs.
#[derive(Clone, Debug, Default, Deserialize, Resource)]
#[resource(inherit = Event)]
#[serde(rename_all = "camelCase")]
pub struct SlimEvent {
    /// Name, namespace, uid and resourceVersion.
    #[serde(default, deserialize_with = "slim_meta")]
    pub metadata: ObjectMeta,
    /// The pod (and container, in `fieldPath`) the Event is about.
    #[serde(default, deserialize_with = "nullable")]
    pub involved_object: InvolvedObject,
    /// `Killing` for the kubelet's probe kills.
    pub reason: Option<String>,
    /// "Container c failed liveness probe, will be restarted", ….
    pub message: Option<String>,
    /// How often it happened (core/v1 aggregation).
    pub count: Option<i64>,
    /// When it first happened.
    pub first_timestamp: Option<String>,
    /// When it last happened.
    pub last_timestamp: Option<String>,
    /// When it happened (events.k8s.io style writers).
    pub event_time: Option<String>,
    /// The series of a repeated Event (events.k8s.io style writers).
    #[serde(default, deserialize_with = "nullable")]
    pub series: EventSeries,
}

/// `involvedObject` of an Event.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InvolvedObject {
    /// `Pod` for the Events the exporter reads.
    pub kind: Option<String>,
    /// The pod's name.
    pub name: Option<String>,
    /// The pod's namespace.
    pub namespace: Option<String>,
    /// The pod's uid.
    pub uid: Option<String>,
    /// `spec.containers{name}`: which container.
    pub field_path: Option<String>,
}

/// `series` of an Event.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventSeries {
    /// How often it happened.
    pub count: Option<i64>,
    /// When it last happened.
    pub last_observed_time: Option<String>,
}

/// A Service, reduced to what probe discovery needs.
#[derive(Clone, Debug, Default, Deserialize, Resource)]
#[resource(inherit = Service)]
pub struct SlimService {
    /// Name, namespace, labels and the `selfheal.io/*` annotations.
    #[serde(default, deserialize_with = "annotated_meta")]
    pub metadata: ObjectMeta,
    /// Type, addresses, ports and selector.
    #[serde(default, deserialize_with = "nullable")]
    pub spec: ServiceSpec,
}

/// `spec` of a Service.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// `ClusterIP`, `NodePort`, `LoadBalancer`, ….
    #[serde(rename = "type")]
    pub type_: Option<String>,
    /// The virtual IP (`None` for a headless Service).
    #[serde(rename = "clusterIP")]
    pub cluster_ip: Option<String>,
    /// The ports.
    #[serde(default, deserialize_with = "nullable")]
    pub ports: Vec<ServicePort>,
    /// Which pods the Service fronts.
    #[serde(default, deserialize_with = "nullable")]
    pub selector: std::collections::BTreeMap<String, String>,
}

/// One port of a Service.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    /// Its name, matched by the `selfheal.io/probe-port` annotation.
    pub name: Option<String>,
    /// The Service port.
    #[serde(default)]
    pub port: i32,
    /// The node port, for `service_address = "node_port"`.
    pub node_port: Option<i32>,
}

/// Treats an explicit JSON `null` like an absent field.
fn nullable<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// The metadata fields the daemon reads; everything else is skipped by serde.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct SlimMeta {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    /// Read by kube-rs's watcher (through `Resource::meta`) to resume the watch.
    resource_version: Option<String>,
    /// Set once the pod is being deleted: its containers' exits are its shutdown.
    deletion_timestamp: Option<Time>,
    #[serde(default, deserialize_with = "nullable")]
    labels: std::collections::BTreeMap<String, String>,
    #[serde(default, deserialize_with = "nullable")]
    owner_references: Vec<SlimOwnerReference>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct SlimOwnerReference {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    uid: String,
    controller: Option<bool>,
}

fn slim_meta<'de, D: Deserializer<'de>>(deserializer: D) -> Result<ObjectMeta, D::Error> {
    Ok(into_object_meta(nullable(deserializer)?))
}

fn into_object_meta(slim: SlimMeta) -> ObjectMeta {
    ObjectMeta {
        name: slim.name,
        namespace: slim.namespace,
        uid: slim.uid,
        resource_version: slim.resource_version,
        deletion_timestamp: slim.deletion_timestamp,
        labels: (!slim.labels.is_empty()).then_some(slim.labels),
        owner_references: (!slim.owner_references.is_empty()).then(|| {
            slim.owner_references
                .into_iter()
                .map(|owner| OwnerReference {
                    api_version: owner.api_version,
                    kind: owner.kind,
                    name: owner.name,
                    uid: owner.uid,
                    controller: owner.controller,
                    block_owner_deletion: None,
                })
                .collect()
        }),
        ..ObjectMeta::default()
    }
}

/// Metadata with annotations: Services carry their probe settings there. (Pods' big
/// annotations are never decoded.)
fn annotated_meta<'de, D: Deserializer<'de>>(deserializer: D) -> Result<ObjectMeta, D::Error> {
    #[derive(Deserialize, Default)]
    struct Annotated {
        #[serde(flatten)]
        meta: SlimMeta,
        #[serde(default, deserialize_with = "nullable")]
        annotations: std::collections::BTreeMap<String, String>,
    }
    let annotated: Annotated = nullable(deserializer)?;
    let mut meta = into_object_meta(annotated.meta);
    meta.annotations = (!annotated.annotations.is_empty()).then_some(annotated.annotations);
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_only_needed_fields_and_survives_nulls() {
        let pod: SlimPod = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "api", "namespace": "ns", "uid": "u1",
                "annotations": {"big": "x"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "o", "controller": true}]
            },
            "spec": {"containers": [{"name": "c", "image": "i", "resources": {"limits": {"memory": "48Mi"}}}], "initContainers": null},
            "status": {"containerStatuses": [{"name": "c", "restartCount": 2, "ready": true,
                "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}},
                "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137, "finishedAt": "2026-01-01T00:00:00Z", "containerID": "containerd://a"}}}]}
        }))
        .expect("pod decodes");
        assert_eq!(pod.metadata.name.as_deref(), Some("api"));
        assert!(pod.metadata.annotations.is_none());
        let owner = &pod.metadata.owner_references.as_ref().expect("owners")[0];
        assert_eq!(owner.kind, "ReplicaSet");
        assert_eq!(
            pod.spec.containers[0].resources.limits.memory.as_deref(),
            Some("48Mi")
        );
        assert!(pod.spec.init_containers.is_empty());
        let status = &pod.status.container_statuses[0];
        assert_eq!(status.restart_count, 2);
        let terminated = status.last_state.terminated.as_ref().expect("terminated");
        assert_eq!(terminated.exit_code, 137);

        let service: SlimService = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "api", "namespace": "ns", "annotations": {"selfheal.io/probe": "true"}},
            "spec": {"type": "NodePort", "clusterIP": "10.0.0.1", "selector": {"app": "api"},
                     "ports": [{"name": "http", "port": 3000, "targetPort": 3000, "nodePort": 31000}]}
        }))
        .expect("service decodes");
        let annotations = service.metadata.annotations.as_ref().expect("annotations");
        assert_eq!(annotations["selfheal.io/probe"], "true");
        assert_eq!(service.spec.ports[0].node_port, Some(31000));

        let empty: SlimPod =
            serde_json::from_value(serde_json::json!({"metadata": null, "status": null}))
                .expect("nulls decode");
        assert!(empty.metadata.name.is_none());
    }
}
