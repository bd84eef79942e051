//! Server-side printing: `meta.k8s.io/v1` `Table` responses for kubectl's
//! `get` (it asks with `Accept: application/json;as=Table;...`).
//!
//! Pods get kubectl's familiar columns (NAME, READY, STATUS, RESTARTS, AGE,
//! IP, NODE) with STATUS and RESTARTS computed like the real pod printer
//! (`OOMKilled`, `CrashLoopBackOff`, `1 (5s ago)`); namespaces get STATUS,
//! services TYPE/CLUSTER-IP/PORT(S); everything else NAME and AGE. Rows carry
//! the object's metadata as `PartialObjectMetadata` (kubectl needs it for the
//! NAMESPACE column of `-A`).

use std::sync::Arc;

use serde_json::{Value, json};

use super::resources::ResourceType;

/// kubectl's `HumanDuration` for a number of seconds.
pub fn human_duration(secs: i64) -> String {
    let secs = secs.max(0);
    let minutes = secs / 60;
    let hours = minutes / 60;
    if secs < 120 {
        format!("{secs}s")
    } else if minutes < 10 {
        if secs % 60 == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{}s", secs % 60)
        }
    } else if minutes < 180 {
        format!("{minutes}m")
    } else if hours < 8 {
        if minutes % 60 == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{}m", minutes % 60)
        }
    } else if hours < 48 {
        format!("{hours}h")
    } else if hours < 24 * 8 {
        if hours % 24 == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{}h", hours / 24, hours % 24)
        }
    } else if hours < 24 * 365 * 2 {
        format!("{}d", hours / 24)
    } else if hours < 24 * 365 * 8 {
        let days = hours / 24;
        if days % 365 == 0 {
            format!("{}y", days / 365)
        } else {
            format!("{}y{}d", days / 365, days % 365)
        }
    } else {
        format!("{}y", hours / 24 / 365)
    }
}

fn age(ts: Option<&str>) -> String {
    let Some(ts) = ts else {
        return "<unknown>".into();
    };
    match ts.parse::<jiff::Timestamp>() {
        Ok(t) => human_duration(jiff::Timestamp::now().as_second() - t.as_second()),
        Err(_) => "<invalid>".into(),
    }
}

fn s<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

fn col(name: &str, priority: u8, description: &str) -> Value {
    let format = if name == "Name" { "name" } else { "" };
    json!({"name": name, "type": "string", "format": format, "description": description, "priority": priority})
}

/// STATUS, READY, RESTARTS columns of a pod, like kubectl's pod printer.
pub fn pod_summary(pod: &Value) -> (String, String, String) {
    let statuses: Vec<&Value> = pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let total = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map_or(statuses.len(), Vec::len);
    let mut reason = s(pod, "/status/reason")
        .or_else(|| s(pod, "/status/phase"))
        .unwrap_or("Unknown")
        .to_string();
    let mut ready = 0;
    let mut restarts = 0;
    let mut last_death: Option<i64> = None;
    let mut has_running = false;
    for c in statuses.iter().rev() {
        restarts += c.get("restartCount").and_then(Value::as_i64).unwrap_or(0);
        if let Some(t) =
            s(c, "/lastState/terminated/finishedAt").and_then(|t| t.parse::<jiff::Timestamp>().ok())
        {
            last_death = Some(last_death.map_or(t.as_second(), |l| l.max(t.as_second())));
        }
        if let Some(w) = s(c, "/state/waiting/reason").filter(|r| !r.is_empty()) {
            reason = w.to_string();
        } else if let Some(term) = c.pointer("/state/terminated") {
            reason = match s(term, "/reason").filter(|r| !r.is_empty()) {
                Some(r) => r.to_string(),
                None => match term
                    .get("signal")
                    .and_then(Value::as_i64)
                    .filter(|x| *x != 0)
                {
                    Some(sig) => format!("Signal:{sig}"),
                    None => format!(
                        "ExitCode:{}",
                        term.get("exitCode").and_then(Value::as_i64).unwrap_or(0)
                    ),
                },
            };
        } else if c.pointer("/state/running").is_some()
            && c.get("ready") == Some(&Value::Bool(true))
        {
            has_running = true;
            ready += 1;
        }
    }
    if reason == "Completed" && has_running {
        reason = "Running".into();
    }
    if pod
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|d| !d.is_null())
    {
        reason = "Terminating".into();
    }
    let restarts = match last_death {
        Some(t) if restarts > 0 => format!(
            "{restarts} ({} ago)",
            human_duration(jiff::Timestamp::now().as_second() - t)
        ),
        _ => restarts.to_string(),
    };
    (format!("{ready}/{total}"), reason, restarts)
}

fn row(rt: &ResourceType, obj: &Value) -> Vec<Value> {
    let name = json!(s(obj, "/metadata/name").unwrap_or_default());
    let age = json!(age(s(obj, "/metadata/creationTimestamp")));
    let or_none = |v: Option<&str>| json!(v.filter(|x| !x.is_empty()).unwrap_or("<none>"));
    match rt.plural {
        "pods" => {
            let (ready, status, restarts) = pod_summary(obj);
            vec![
                name,
                json!(ready),
                json!(status),
                json!(restarts),
                age,
                or_none(s(obj, "/status/podIP")),
                or_none(s(obj, "/spec/nodeName")),
                or_none(s(obj, "/status/nominatedNodeName")),
                json!("<none>"),
            ]
        }
        "namespaces" => vec![
            name,
            json!(s(obj, "/status/phase").unwrap_or_default()),
            age,
        ],
        "services" => {
            let ports: Vec<String> = obj
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .map(|ps| {
                    ps.iter()
                        .map(|p| {
                            let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
                            let proto = s(p, "/protocol").unwrap_or("TCP");
                            match p.get("nodePort").and_then(Value::as_i64) {
                                Some(np) => format!("{port}:{np}/{proto}"),
                                None => format!("{port}/{proto}"),
                            }
                        })
                        .collect()
                })
                .unwrap_or_default();
            vec![
                name,
                json!(s(obj, "/spec/type").unwrap_or("ClusterIP")),
                or_none(s(obj, "/spec/clusterIP")),
                json!("<none>"),
                json!(if ports.is_empty() {
                    "<none>".to_string()
                } else {
                    ports.join(",")
                }),
                age,
            ]
        }
        _ => vec![name, age],
    }
}

fn columns(rt: &ResourceType) -> Vec<Value> {
    let name = col("Name", 0, "Name must be unique within a namespace.");
    let age = col(
        "Age",
        0,
        "CreationTimestamp is a timestamp representing the server time when this object was created.",
    );
    match rt.plural {
        "pods" => vec![
            name,
            col(
                "Ready",
                0,
                "The aggregate readiness state of this pod for accepting traffic.",
            ),
            col(
                "Status",
                0,
                "The aggregate status of the containers in this pod.",
            ),
            col(
                "Restarts",
                0,
                "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
            ),
            age,
            col("IP", 1, "IP address allocated to the pod."),
            col("Node", 1, "Name of the node this pod is assigned to."),
            col(
                "Nominated Node",
                1,
                "Name of the node this pod is nominated to run on.",
            ),
            col("Readiness Gates", 1, "Readiness gates of the pod."),
        ],
        "namespaces" => vec![name, col("Status", 0, "The status of the namespace"), age],
        "services" => vec![
            name,
            col("Type", 0, "The type of service."),
            col("Cluster-IP", 0, "The cluster IP of the service."),
            col("External-IP", 0, "External IPs of the service."),
            col("Port(s)", 0, "The ports of the service."),
            age,
        ],
        _ => vec![name, age],
    }
}

/// A `Table` for `items`.
pub fn list_table(rt: &ResourceType, items: &[Arc<Value>], rv: u64, cont: Option<&str>) -> Value {
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            json!({
                "cells": row(rt, o),
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": o.get("metadata").cloned().unwrap_or_else(|| json!({})),
                },
            })
        })
        .collect();
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if let Some(c) = cont {
        meta["continue"] = json!(c);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": columns(rt),
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_like_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(88), "88s");
        assert_eq!(human_duration(125), "2m5s");
        assert_eq!(human_duration(6 * 3600 + 53 * 60), "6h53m");
        assert_eq!(human_duration(30 * 3600), "30h");
        assert_eq!(human_duration(3 * 86400), "3d");
    }

    #[test]
    fn pod_status_column() {
        let pod = json!({"spec": {"containers": [{"name": "c"}]}, "status": {"phase": "Running",
            "containerStatuses": [{"name": "c", "ready": false, "restartCount": 1,
                "state": {"terminated": {"reason": "OOMKilled", "exitCode": 137}},
                "lastState": {"terminated": {"reason": "OOMKilled", "finishedAt": "2020-01-01T00:00:00Z"}}}]}});
        let (ready, status, restarts) = pod_summary(&pod);
        assert_eq!((ready.as_str(), status.as_str()), ("0/1", "OOMKilled"));
        assert!(restarts.starts_with("1 ("), "{restarts}");
        let running = json!({"spec": {"containers": [{"name": "c"}]}, "status": {"phase": "Running",
            "containerStatuses": [{"name": "c", "ready": true, "restartCount": 0, "state": {"running": {}}}]}});
        assert_eq!(
            pod_summary(&running),
            ("1/1".into(), "Running".into(), "0".into())
        );
    }
}
