//! What the node agent takes from a pod object: its QoS class and, per container, the
//! instance that runs now and the instances whose death the kubelet reports. Pure.

use std::sync::Arc;

use super::cgroup_path::QosClass;
use super::reconcile::ReportedDeath;
use crate::k8s::types::{ContainerStatus, SlimPod, StateTerminated};
use crate::observe::Cause;

/// One container instance in a pod's status.
#[derive(Clone, Debug, PartialEq)]
pub struct InstanceStatus {
    pub container: Arc<str>,
    /// The full `containerID`.
    pub container_id: Arc<str>,
    /// `Some` when the kubelet reports this instance terminated.
    pub death: Option<ReportedDeath>,
}

/// The pod's `status.qosClass`.
pub fn qos_of(pod: &SlimPod) -> Option<QosClass> {
    pod.status
        .qos_class
        .as_deref()
        .and_then(QosClass::from_status)
}

/// Every instance the pod's status names (init containers too): the current one of each
/// container (running, waiting or terminated) and the one in `lastState`.
pub fn instances_of(pod: &SlimPod) -> Vec<InstanceStatus> {
    let mut instances = Vec::new();
    let statuses = pod
        .status
        .init_container_statuses
        .iter()
        .chain(&pod.status.container_statuses);
    for status in statuses.filter(|status| !status.name.is_empty()) {
        push_status(status, &mut instances);
    }
    instances
}

fn push_status(status: &ContainerStatus, out: &mut Vec<InstanceStatus>) {
    let container: Arc<str> = Arc::from(status.name.as_str());
    if let Some(previous) = &status.last_state.terminated {
        push_death(&container, previous, out);
    }
    match &status.state.terminated {
        Some(current) => push_death(&container, current, out),
        None => {
            if let Some(id) = status.container_id.as_deref().filter(|id| !id.is_empty()) {
                out.push(InstanceStatus {
                    container,
                    container_id: Arc::from(id),
                    death: None,
                });
            }
        }
    }
}

fn push_death(container: &Arc<str>, terminated: &StateTerminated, out: &mut Vec<InstanceStatus>) {
    let Some(id) = terminated
        .container_id
        .as_deref()
        .filter(|id| !id.is_empty())
    else {
        return;
    };
    let cause = Cause::of_termination(
        terminated.reason.as_deref().unwrap_or(""),
        terminated.message.as_deref(),
    )
    .unwrap_or(Cause::Unknown);
    out.push(InstanceStatus {
        container: container.clone(),
        container_id: Arc::from(id),
        death: Some(ReportedDeath {
            cause,
            exit_code: terminated.exit_code,
        }),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(status: serde_json::Value) -> SlimPod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
            "status": status,
        }))
        .expect("pod")
    }

    #[test]
    fn running_and_dead_instances_with_the_kubelets_reasons() {
        let pod = pod(serde_json::json!({
            "qosClass": "Burstable",
            "containerStatuses": [{
                "name": "app",
                "containerID": "containerd://new",
                "restartCount": 1,
                "state": {"running": {}},
                "lastState": {"terminated": {
                    "reason": "Error", "exitCode": 137, "containerID": "containerd://old"
                }}
            }, {
                "name": "side",
                "containerID": "containerd://s1",
                "state": {"terminated": {
                    "reason": "StartError", "exitCode": 128, "containerID": "containerd://s1",
                    "message": "container init was OOM-killed (memory limit too low?)"
                }}
            }, {
                "name": "pending",
                "state": {"waiting": {"reason": "ContainerCreating"}}
            }]
        }));
        assert_eq!(qos_of(&pod), Some(QosClass::Burstable));
        let instances = instances_of(&pod);
        let death = |cause, exit_code| Some(ReportedDeath { cause, exit_code });
        assert_eq!(
            instances,
            vec![
                InstanceStatus {
                    container: Arc::from("app"),
                    container_id: Arc::from("containerd://old"),
                    death: death(Cause::Error, 137),
                },
                InstanceStatus {
                    container: Arc::from("app"),
                    container_id: Arc::from("containerd://new"),
                    death: None,
                },
                InstanceStatus {
                    container: Arc::from("side"),
                    container_id: Arc::from("containerd://s1"),
                    death: death(Cause::OOMKilled, 128),
                },
            ]
        );
    }
}
