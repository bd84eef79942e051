//! Probe targets discovered from Services annotated `selfheal.io/probe: "true"`.
//!
//! The probe goes through the Service, because that is what clients use: its cluster DNS
//! name (default), its ClusterIP, or a node port (what clients outside the cluster use for
//! a NodePort Service; the lab reaches its Services that way too). A target may
//! only point at the Service itself: the annotations choose a path and a port of it,
//! never a host. A bad annotation disables that one target, with a logged and counted
//! error; nothing else is affected.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use reqwest::Url;
use serde::{Deserialize, Serialize};

use super::target::{MAX_INTERVAL, MAX_TIMEOUT, MIN_INTERVAL, ProbeSpec, StatusSet};
use crate::correlate::incidents::Fronts;
use crate::k8s::types::SlimService;

pub const PROBE: &str = "selfheal.io/probe";
pub const PATH: &str = "selfheal.io/probe-path";
pub const PORT: &str = "selfheal.io/probe-port";
pub const INTERVAL: &str = "selfheal.io/probe-interval";
pub const TIMEOUT: &str = "selfheal.io/probe-timeout";
pub const EXPECT_STATUS: &str = "selfheal.io/probe-expect-status";

/// How a discovered target reaches its Service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceAddress {
    /// `http://<service>.<namespace>.svc:<port>`: what in-cluster clients use.
    #[default]
    Dns,
    /// `http://<clusterIP>:<port>`.
    ClusterIp,
    /// `http://<node address>:<nodePort>`: for NodePort services seen from a node.
    NodePort,
}

/// An annotation that cannot be used, and why.
#[derive(Debug, PartialEq)]
pub struct InvalidAnnotation {
    pub annotation: &'static str,
    pub value: String,
    pub reason: String,
}

impl std::fmt::Display for InvalidAnnotation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "annotation {} = {:?}: {}",
            self.annotation, self.value, self.reason
        )
    }
}

/// The probe target a Service asks for: `Ok(None)` when it does not ask.
pub fn target_from_service(
    service: &SlimService,
    address: ServiceAddress,
    node_address: IpAddr,
) -> Result<Option<ProbeSpec>, InvalidAnnotation> {
    let empty = BTreeMap::new();
    let annotations = service.metadata.annotations.as_ref().unwrap_or(&empty);
    if annotations.get(PROBE).map(|v| v.trim()) != Some("true") {
        return Ok(None);
    }
    let (Some(namespace), Some(name)) = (&service.metadata.namespace, &service.metadata.name)
    else {
        return Ok(None);
    };
    let invalid = |annotation: &'static str, value: &str, reason: &str| InvalidAnnotation {
        annotation,
        value: value.to_owned(),
        reason: reason.to_owned(),
    };

    let path = annotations.get(PATH).map_or("/", String::as_str);
    if !path.starts_with('/') || path.starts_with("//") || path.contains(['@', '\\', ' ']) {
        return Err(invalid(
            PATH,
            path,
            "must be an absolute path such as /healthz",
        ));
    }
    let port = match annotations.get(PORT) {
        None => service.spec.ports.first(),
        Some(wanted) => service.spec.ports.iter().find(|port| {
            port.name.as_deref() == Some(wanted.as_str()) || port.port.to_string() == *wanted
        }),
    }
    .ok_or_else(|| {
        invalid(
            PORT,
            annotations.get(PORT).map_or("", String::as_str),
            "the Service has no such port",
        )
    })?;
    let duration = |annotation: &'static str, default: Duration, range: (Duration, Duration)| {
        let Some(text) = annotations.get(annotation) else {
            return Ok(default);
        };
        let value: jiff::SignedDuration = text
            .parse()
            .map_err(|_| invalid(annotation, text, "not a duration such as 500ms or 2s"))?;
        let value = Duration::try_from(value)
            .map_err(|_| invalid(annotation, text, "must not be negative"))?;
        if value < range.0 || value > range.1 {
            return Err(invalid(annotation, text, "out of range"));
        }
        Ok(value)
    };
    let interval = duration(
        INTERVAL,
        Duration::from_secs(1),
        (MIN_INTERVAL, MAX_INTERVAL),
    )?;
    let timeout = duration(
        TIMEOUT,
        Duration::from_secs(1),
        (Duration::from_millis(1), MAX_TIMEOUT),
    )?;
    let expect = annotations.get(EXPECT_STATUS).map_or("2xx", String::as_str);
    let expect_status =
        StatusSet::parse(expect).map_err(|reason| invalid(EXPECT_STATUS, expect, &reason))?;

    let authority = match address {
        ServiceAddress::Dns => format!("{name}.{namespace}.svc:{}", port.port),
        ServiceAddress::ClusterIp => {
            let cluster_ip = service.spec.cluster_ip.as_deref().unwrap_or("");
            match cluster_ip.parse::<IpAddr>() {
                Ok(ip) => host_port(ip, port.port),
                Err(_) => {
                    return Err(invalid(
                        PROBE,
                        cluster_ip,
                        "the Service has no ClusterIP to probe (headless?)",
                    ));
                }
            }
        }
        ServiceAddress::NodePort => match port.node_port {
            Some(node_port) if node_port > 0 => host_port(node_address, node_port),
            _ => {
                return Err(invalid(
                    PROBE,
                    "true",
                    "the Service has no nodePort to probe",
                ));
            }
        },
    };
    let base = Url::parse(&format!("http://{authority}/"))
        .map_err(|error| invalid(PROBE, "true", &error.to_string()))?;
    let url = base
        .join(path)
        .map_err(|error| invalid(PATH, path, &error.to_string()))?;
    // The URL must still name the Service: a crafted path cannot move the host.
    if url.host() != base.host() || url.port() != base.port() {
        return Err(invalid(PATH, path, "must not change the host"));
    }
    let fronts = (!service.spec.selector.is_empty()).then(|| Fronts::Selector {
        namespace: namespace.as_str().into(),
        selector: service.spec.selector.clone(),
    });
    Ok(Some(ProbeSpec {
        name: format!("{namespace}/{name}").into(),
        namespace: Some(namespace.as_str().into()),
        service: Some(name.as_str().into()),
        service_uid: service.metadata.uid.as_deref().map(Into::into),
        url,
        method: reqwest::Method::GET,
        body: None,
        headers: reqwest::header::HeaderMap::new(),
        expect_status,
        body_regex: None,
        timeout,
        interval,
        failure_threshold: 1,
        reuse_connections: false,
        fronts,
    }))
}

fn host_port(ip: IpAddr, port: i32) -> String {
    match ip {
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
        IpAddr::V4(v4) => format!("{v4}:{port}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(annotations: serde_json::Value) -> SlimService {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "grade-submission-api", "namespace": "grade-submission",
                         "annotations": annotations},
            "spec": {"type": "NodePort", "clusterIP": "10.96.0.7",
                     "selector": {"app.kubernetes.io/instance": "grade-submission-api"},
                     "ports": [{"name": "http", "port": 3000, "nodePort": 31000},
                               {"name": "admin", "port": 9000, "nodePort": 31001}]}
        }))
        .expect("service")
    }

    fn target(
        annotations: serde_json::Value,
        address: ServiceAddress,
    ) -> Result<Option<ProbeSpec>, InvalidAnnotation> {
        target_from_service(
            &service(annotations),
            address,
            "127.0.0.1".parse().expect("ip"),
        )
    }

    fn url(annotations: serde_json::Value, address: ServiceAddress) -> String {
        target(annotations, address)
            .expect("valid")
            .expect("a target")
            .url
            .to_string()
    }

    #[test]
    fn only_annotated_services_are_targets() {
        assert!(
            target(serde_json::json!({}), ServiceAddress::Dns)
                .expect("ok")
                .is_none()
        );
        assert!(
            target(serde_json::json!({PROBE: "false"}), ServiceAddress::Dns)
                .expect("ok")
                .is_none()
        );
    }

    #[test]
    fn the_probe_goes_through_the_service() {
        let on = serde_json::json!({PROBE: "true"});
        assert_eq!(
            url(on.clone(), ServiceAddress::Dns),
            "http://grade-submission-api.grade-submission.svc:3000/"
        );
        assert_eq!(
            url(on.clone(), ServiceAddress::ClusterIp),
            "http://10.96.0.7:3000/"
        );
        assert_eq!(url(on, ServiceAddress::NodePort), "http://127.0.0.1:31000/");
        let custom = serde_json::json!({PROBE: "true", PATH: "/grade", PORT: "admin", INTERVAL: "250ms", TIMEOUT: "2s", EXPECT_STATUS: "200-399"});
        let spec = target(custom, ServiceAddress::NodePort)
            .expect("valid")
            .expect("target");
        assert_eq!(spec.url.as_str(), "http://127.0.0.1:31001/grade");
        assert_eq!(spec.interval, Duration::from_millis(250));
        assert_eq!(spec.timeout, Duration::from_secs(2));
        assert!(spec.expect_status.accepts(302));
        assert_eq!(&*spec.name, "grade-submission/grade-submission-api");
        assert!(matches!(spec.fronts, Some(Fronts::Selector { .. })));
        let by_number = serde_json::json!({PROBE: "true", PORT: "9000"});
        assert_eq!(
            url(by_number, ServiceAddress::Dns),
            "http://grade-submission-api.grade-submission.svc:9000/"
        );
    }

    #[test]
    fn bad_annotations_are_named_and_cannot_escape_the_service() {
        let bad = |key: &'static str, value: &str| {
            target(
                serde_json::json!({PROBE: "true", key: value}),
                ServiceAddress::Dns,
            )
            .expect_err(value)
            .annotation
        };
        assert_eq!(bad(PATH, "grade"), PATH);
        assert_eq!(bad(PATH, "//evil.example/x"), PATH);
        assert_eq!(bad(PATH, "/@evil.example"), PATH);
        assert_eq!(bad(PORT, "nope"), PORT);
        assert_eq!(bad(INTERVAL, "often"), INTERVAL);
        assert_eq!(bad(INTERVAL, "10ms"), INTERVAL);
        assert_eq!(bad(TIMEOUT, "-1s"), TIMEOUT);
        assert_eq!(bad(EXPECT_STATUS, "fine"), EXPECT_STATUS);
    }
}
