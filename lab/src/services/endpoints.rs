//! Pure computation of what a Service should route to: the EndpointSlice the
//! controller keeps, and the ready backends the NodePort proxy forwards to.
//!
//! Like the real EndpointSlice controller: only Services with a non-empty
//! selector get a slice; endpoints are the pods in the Service's namespace
//! whose labels match, that have an IPv4 `status.podIP` and are not finished
//! (`Succeeded`/`Failed`). `conditions.ready` (and `serving`) come from the
//! pod's `Ready` condition; a pod being deleted is `terminating` and not
//! ready. Ports come from the Service's `targetPort` (default: `port`); a
//! named `targetPort` is looked up in each pod's container ports (the slice
//! lists the first resolved number — the lab's slices are one per Service).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ObjectReference, Pod, Service, ServicePort};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Label naming the Service a slice belongs to (as in Kubernetes).
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Label naming the controller that manages a slice (as in Kubernetes).
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// This controller's value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "selfheal-lab-services";

/// Name of the slice kept for Service `service`.
pub fn slice_name(service: &str) -> String {
    format!("{service}-lab")
}

/// One NodePort of a Service and the ready backends behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePortRoute {
    /// The node port (listened on by the proxy).
    pub node_port: u16,
    /// `namespace/service:port` for logs.
    pub service: String,
    /// Ready endpoints, `podIP:targetPort`, in pod-name order.
    pub backends: Vec<SocketAddr>,
}

/// What one Service should have.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceEndpoints {
    /// Namespace of the Service (and slice).
    pub namespace: String,
    /// The desired slice.
    pub slice: EndpointSlice,
    /// Node ports to proxy (empty for ClusterIP Services or without `nodePort`).
    pub routes: Vec<NodePortRoute>,
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pod_ipv4(pod: &Pod) -> Option<Ipv4Addr> {
    pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()
}

fn is_finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

fn selects(selector: &BTreeMap<String, String>, pod: &Pod) -> bool {
    let labels = pod.metadata.labels.as_ref();
    selector
        .iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

/// The port number `port`'s targetPort means for `pod`, if any.
fn target_port(port: &ServicePort, pod: Option<&Pod>) -> Option<u16> {
    match &port.target_port {
        None => u16::try_from(port.port).ok(),
        Some(IntOrString::Int(n)) => u16::try_from(*n).ok().filter(|n| *n > 0),
        Some(IntOrString::String(name)) => {
            if let Ok(n) = name.parse::<u16>() {
                return Some(n);
            }
            let containers = &pod?.spec.as_ref()?.containers;
            containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok())
        }
    }
}

/// Computes the desired state for `service` from all known `pods` (any
/// namespace). `None` when the Service has no selector (or no name).
pub fn desired(service: &Service, pods: &[Arc<Pod>]) -> Option<ServiceEndpoints> {
    let name = service.metadata.name.as_deref()?;
    let namespace = service.metadata.namespace.clone().unwrap_or_default();
    let spec = service.spec.as_ref()?;
    let selector = spec.selector.as_ref().filter(|s| !s.is_empty())?;
    let ports: &[ServicePort] = spec.ports.as_deref().unwrap_or_default();

    let mut members: Vec<&Pod> = pods
        .iter()
        .map(AsRef::as_ref)
        .filter(|p| p.metadata.namespace.as_deref().unwrap_or_default() == namespace)
        .filter(|p| selects(selector, p) && !is_finished(p) && pod_ipv4(p).is_some())
        .collect();
    members.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));

    let endpoints: Vec<Endpoint> = members
        .iter()
        .map(|pod| {
            let ready = is_ready(pod);
            let terminating = pod.metadata.deletion_timestamp.is_some();
            Endpoint {
                addresses: vec![pod_ipv4(pod).map(|ip| ip.to_string()).unwrap_or_default()],
                conditions: Some(EndpointConditions {
                    ready: Some(ready && !terminating),
                    serving: Some(ready),
                    terminating: Some(terminating),
                }),
                node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
                target_ref: Some(ObjectReference {
                    kind: Some("Pod".into()),
                    name: pod.metadata.name.clone(),
                    namespace: pod.metadata.namespace.clone(),
                    uid: pod.metadata.uid.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            }
        })
        .collect();

    let slice_ports = ports
        .iter()
        .filter_map(|p| {
            let resolved = members
                .iter()
                .find_map(|pod| target_port(p, Some(pod)))
                .or_else(|| target_port(p, None))?;
            Some(EndpointPort {
                name: Some(p.name.clone().unwrap_or_default()),
                port: Some(i32::from(resolved)),
                protocol: Some(p.protocol.clone().unwrap_or_else(|| "TCP".into())),
                app_protocol: p.app_protocol.clone(),
            })
        })
        .collect();

    let routes = ports
        .iter()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| {
            let node_port = u16::try_from(p.node_port?).ok().filter(|n| *n > 0)?;
            let backends = members
                .iter()
                .filter(|pod| is_ready(pod) && pod.metadata.deletion_timestamp.is_none())
                .filter_map(|pod| {
                    let ip = pod_ipv4(pod)?;
                    let port = target_port(p, Some(pod))?;
                    Some(SocketAddr::new(IpAddr::V4(ip), port))
                })
                .collect();
            Some(NodePortRoute {
                node_port,
                service: format!("{namespace}/{name}:{}", p.port),
                backends,
            })
        })
        .collect();

    let labels = BTreeMap::from([
        (SERVICE_NAME_LABEL.to_string(), name.to_string()),
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
    ]);
    let owner = service.metadata.uid.clone().map(|uid| OwnerReference {
        api_version: "v1".into(),
        kind: "Service".into(),
        name: name.to_string(),
        uid,
        controller: Some(true),
        block_owner_deletion: Some(true),
    });
    let slice = EndpointSlice {
        metadata: ObjectMeta {
            name: Some(slice_name(name)),
            namespace: Some(namespace.clone()),
            labels: Some(labels),
            owner_references: owner.map(|o| vec![o]),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: Some(endpoints),
        ports: Some(slice_ports),
    };
    Some(ServiceEndpoints {
        namespace,
        slice,
        routes,
    })
}

/// Whether the stored slice `observed` already says what `desired` says
/// (address type, endpoints, ports, our labels); server-set metadata is ignored.
pub fn same_content(observed: &EndpointSlice, desired: &EndpointSlice) -> bool {
    let labels_ok = desired
        .metadata
        .labels
        .iter()
        .flatten()
        .all(|(k, v)| observed.metadata.labels.as_ref().and_then(|l| l.get(k)) == Some(v));
    labels_ok
        && observed.address_type == desired.address_type
        && observed.endpoints.as_deref().unwrap_or_default()
            == desired.endpoints.as_deref().unwrap_or_default()
        && observed.ports.as_deref().unwrap_or_default()
            == desired.ports.as_deref().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, ns: &str, ip: Option<&str>, ready: bool, app: &str) -> Arc<Pod> {
        let mut status = json!({
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]
        });
        if let Some(ip) = ip {
            status["podIP"] = json!(ip);
        }
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"), "labels": {"app": app}},
                "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"name": "http", "containerPort": 3000}]}]},
                "status": status,
            }))
            .unwrap(),
        )
    }

    fn service(target: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "api", "namespace": "ns", "uid": "svc-uid"},
            "spec": {"type": "NodePort", "selector": {"app": "grade"},
                     "ports": [{"port": 80, "targetPort": target, "nodePort": 31000}]}
        }))
        .unwrap()
    }

    #[test]
    fn slice_and_routes_follow_readiness() {
        let pods = vec![
            pod("b", "ns", Some("127.0.1.2"), false, "grade"),
            pod("a", "ns", Some("127.0.1.1"), true, "grade"),
            pod("c", "ns", None, true, "grade"), // no IP yet
            pod("d", "other", Some("127.0.1.4"), true, "grade"), // other namespace
            pod("e", "ns", Some("127.0.1.5"), true, "portal"), // not selected
        ];
        let d = desired(&service(json!(3000)), &pods).unwrap();
        assert_eq!(d.namespace, "ns");
        assert_eq!(d.slice.metadata.name.as_deref(), Some("api-lab"));
        assert_eq!(
            d.slice.metadata.labels.as_ref().unwrap()[SERVICE_NAME_LABEL],
            "api"
        );
        let eps: Vec<(String, Option<bool>)> = d
            .slice
            .endpoints
            .iter()
            .flatten()
            .map(|e| (e.addresses[0].clone(), e.conditions.as_ref().unwrap().ready))
            .collect();
        assert_eq!(
            eps,
            vec![
                ("127.0.1.1".into(), Some(true)),
                ("127.0.1.2".into(), Some(false))
            ]
        );
        assert_eq!(d.slice.ports.as_ref().unwrap()[0].port, Some(3000));
        assert_eq!(
            d.routes,
            vec![NodePortRoute {
                node_port: 31000,
                service: "ns/api:80".into(),
                backends: vec!["127.0.1.1:3000".parse().unwrap()],
            }]
        );
        assert!(same_content(&d.slice, &d.slice));
    }

    #[test]
    fn named_and_default_target_ports_and_no_selector() {
        let pods = vec![pod("a", "ns", Some("127.0.1.1"), true, "grade")];
        let d = desired(&service(json!("http")), &pods).unwrap();
        assert_eq!(
            d.routes[0].backends,
            vec!["127.0.1.1:3000".parse().unwrap()]
        );
        let mut svc = service(json!(1));
        svc.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].target_port = None;
        let d = desired(&svc, &pods).unwrap();
        assert_eq!(d.slice.ports.as_ref().unwrap()[0].port, Some(80));
        svc.spec.as_mut().unwrap().selector = None;
        assert!(desired(&svc, &pods).is_none());
    }
}
