//! Slim Kubernetes object types: only the fields the observer reads.
//!
//! The daemon never stores whole objects, but every object still passes through
//! serde on its way from the watch stream to the observer. Deserializing only these
//! fields keeps both the decode cost and the transient memory small; unknown fields
//! (annotations, managedFields, volumes, …) are skipped without being allocated.
//! Every field is optional or defaulted, so a malformed or partial object from the
//! API server is still decoded and the observer decides what to do with the gaps.

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::Resource;
use serde::{Deserialize, Deserializer};

/// A Pod, reduced to what the observer needs.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct SlimPod {
    #[serde(default, deserialize_with = "slim_meta")]
    pub metadata: ObjectMeta,
    #[serde(default, deserialize_with = "nullable")]
    pub spec: PodSpec,
    #[serde(default, deserialize_with = "nullable")]
    pub status: PodStatus,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    #[serde(default, deserialize_with = "nullable")]
    pub containers: Vec<ContainerSpec>,
    #[serde(default, deserialize_with = "nullable")]
    pub init_containers: Vec<ContainerSpec>,
    pub restart_policy: Option<String>,
    pub termination_grace_period_seconds: Option<i64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct ContainerSpec {
    #[serde(default)]
    pub name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub resources: Resources,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Resources {
    #[serde(default, deserialize_with = "nullable")]
    pub limits: Limits,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Limits {
    /// A Kubernetes quantity such as `48Mi`, kept as text until the observer parses it.
    pub memory: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    pub phase: Option<String>,
    pub reason: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub conditions: Vec<PodCondition>,
    #[serde(default, deserialize_with = "nullable")]
    pub container_statuses: Vec<ContainerStatus>,
    #[serde(default, deserialize_with = "nullable")]
    pub init_container_statuses: Vec<ContainerStatus>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodCondition {
    #[serde(rename = "type", default)]
    pub type_: String,
    #[serde(default)]
    pub status: String,
    pub last_transition_time: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStatus {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub ready: bool,
    #[serde(default)]
    pub restart_count: i64,
    #[serde(rename = "containerID")]
    pub container_id: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub state: ContainerState,
    #[serde(default, deserialize_with = "nullable")]
    pub last_state: ContainerState,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct ContainerState {
    pub running: Option<StateRunning>,
    pub waiting: Option<StateWaiting>,
    pub terminated: Option<StateTerminated>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateRunning {
    pub started_at: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct StateWaiting {
    pub reason: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateTerminated {
    pub reason: Option<String>,
    #[serde(default)]
    pub exit_code: i32,
    pub finished_at: Option<String>,
    #[serde(rename = "containerID")]
    pub container_id: Option<String>,
}

/// A core/v1 Event, reduced to what restart attribution needs.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SlimEvent {
    #[serde(default, deserialize_with = "slim_meta")]
    pub metadata: ObjectMeta,
    #[serde(default, deserialize_with = "nullable")]
    pub involved_object: InvolvedObject,
    pub reason: Option<String>,
    pub message: Option<String>,
    pub count: Option<i64>,
    pub first_timestamp: Option<String>,
    pub last_timestamp: Option<String>,
    pub event_time: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub series: EventSeries,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InvolvedObject {
    pub kind: Option<String>,
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub uid: Option<String>,
    pub field_path: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventSeries {
    pub count: Option<i64>,
    pub last_observed_time: Option<String>,
}

/// A Service, reduced to what probe discovery needs.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct SlimService {
    #[serde(default, deserialize_with = "annotated_meta")]
    pub metadata: ObjectMeta,
    #[serde(default, deserialize_with = "nullable")]
    pub spec: ServiceSpec,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    #[serde(rename = "type")]
    pub type_: Option<String>,
    #[serde(rename = "clusterIP")]
    pub cluster_ip: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub ports: Vec<ServicePort>,
    #[serde(default, deserialize_with = "nullable")]
    pub selector: std::collections::BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    pub name: Option<String>,
    #[serde(default)]
    pub port: i32,
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
    resource_version: Option<String>,
    creation_timestamp: Option<Time>,
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
        creation_timestamp: slim.creation_timestamp,
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

/// Implements `kube::Resource` for a slim core/v1 type, so kube-rs can list and watch it.
macro_rules! core_v1_resource {
    ($type:ty, $kind:literal, $plural:literal) => {
        impl Resource for $type {
            type DynamicType = ();
            type Scope = k8s_openapi::NamespaceResourceScope;

            fn kind(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($kind)
            }
            fn group(_: &()) -> Cow<'_, str> {
                Cow::Borrowed("")
            }
            fn version(_: &()) -> Cow<'_, str> {
                Cow::Borrowed("v1")
            }
            fn plural(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($plural)
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

core_v1_resource!(SlimPod, "Pod", "pods");
core_v1_resource!(SlimEvent, "Event", "events");
core_v1_resource!(SlimService, "Service", "services");

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
