//! core/v1 Events, written through the API like the kubelet's event recorder.
//!
//! Events are queued to one background task, so writing them never blocks a pod worker
//! and they reach the API server in the order they happened. Aggregation follows the
//! kubelet's event correlator for identical events: an Event with the same involved
//! object, `fieldPath`, type, reason and message as an earlier one is not created
//! again; the earlier one gets `count`+1 and a new `lastTimestamp` (merge patch). If that
//! Event is gone (deleted), a new one is created.

use std::collections::HashMap;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Event;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::machine::rfc3339;

/// The pod an Event is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
}

/// `Normal` or `Warning`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// Normal.
    Normal,
    /// Warning.
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

#[derive(Debug)]
enum Msg {
    Record(Record),
    /// The pod is gone: drop its aggregation entries.
    Forget(String),
}

#[derive(Debug)]
struct Record {
    pod: PodRef,
    container: Option<String>,
    kind: EventType,
    reason: String,
    message: String,
    component: &'static str,
    at: Timestamp,
}

/// Sends Events to the recorder task (cheap to clone).
#[derive(Debug, Clone)]
pub struct Recorder {
    tx: mpsc::UnboundedSender<Msg>,
}

impl Recorder {
    /// Starts the recorder task writing with `client` as node `node`.
    pub fn start(client: kube::Client, node: String) -> (Recorder, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(client, node, rx));
        (Recorder { tx }, task)
    }

    /// Records an Event from the kubelet about `pod` (and `container`, if any).
    pub fn record(
        &self,
        pod: &PodRef,
        container: Option<&str>,
        kind: EventType,
        reason: &str,
        message: impl Into<String>,
    ) {
        self.send(pod, container, kind, reason, message.into(), "kubelet");
    }

    /// Records an Event from another component (`default-scheduler` for `Scheduled`).
    pub fn record_as(
        &self,
        component: &'static str,
        pod: &PodRef,
        kind: EventType,
        reason: &str,
        message: impl Into<String>,
    ) {
        self.send(pod, None, kind, reason, message.into(), component);
    }

    fn send(
        &self,
        pod: &PodRef,
        container: Option<&str>,
        kind: EventType,
        reason: &str,
        message: String,
        component: &'static str,
    ) {
        tracing::debug!(pod = %pod.name, reason, %message, "event");
        let _ = self.tx.send(Msg::Record(Record {
            pod: pod.clone(),
            container: container.map(str::to_string),
            kind,
            reason: reason.into(),
            message,
            component,
            at: Timestamp::now(),
        }));
    }

    /// Forgets the aggregation state of a deleted pod (by uid).
    pub fn forget(&self, uid: &str) {
        let _ = self.tx.send(Msg::Forget(uid.to_string()));
    }
}

type Key = (PodRef, Option<String>, EventType, String, String);

async fn run(client: kube::Client, node: String, mut rx: mpsc::UnboundedReceiver<Msg>) {
    let mut seen: HashMap<Key, (String, i32)> = HashMap::new();
    let mut serial: u32 = 0;
    while let Some(msg) = rx.recv().await {
        let r = match msg {
            Msg::Record(r) => r,
            Msg::Forget(uid) => {
                seen.retain(|k, _| k.0.uid != uid);
                continue;
            }
        };
        let api: Api<Event> = Api::namespaced(client.clone(), &r.pod.namespace);
        let key: Key = (
            r.pod.clone(),
            r.container.clone(),
            r.kind,
            r.reason.clone(),
            r.message.clone(),
        );
        if let Some((name, count)) = seen.get_mut(&key) {
            let patch = json!({"count": *count + 1, "lastTimestamp": rfc3339(r.at)});
            let res = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)),
            )
            .await;
            if matches!(res, Ok(Ok(_))) {
                *count += 1;
                continue;
            }
        }
        serial = serial.wrapping_add(1);
        let nanos = r.at.as_nanosecond() as u128 + u128::from(serial);
        let name = format!("{}.{:x}", r.pod.name, nanos);
        let mut involved = json!({
            "kind": "Pod",
            "namespace": r.pod.namespace,
            "name": r.pod.name,
            "uid": r.pod.uid,
            "apiVersion": "v1",
        });
        if let Some(c) = &r.container {
            involved["fieldPath"] = json!(format!("spec.containers{{{c}}}"));
        }
        let ev = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": r.pod.namespace},
            "involvedObject": involved,
            "reason": r.reason,
            "message": r.message,
            "source": if r.component == "kubelet" {
                json!({"component": "kubelet", "host": node})
            } else {
                json!({"component": r.component})
            },
            "firstTimestamp": rfc3339(r.at),
            "lastTimestamp": rfc3339(r.at),
            "count": 1,
            "type": r.kind.as_str(),
            "reportingComponent": r.component,
            "reportingInstance": if r.component == "kubelet" { node.as_str() } else { "" },
        });
        let ev: Event = match serde_json::from_value(ev) {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!(error = %e, "cannot build Event");
                continue;
            }
        };
        match tokio::time::timeout(
            std::time::Duration::from_secs(5),
            api.create(&PostParams::default(), &ev),
        )
        .await
        {
            Ok(Ok(_)) => {
                seen.insert(key, (name, 1));
            }
            Ok(Err(e)) => tracing::warn!(error = %e, reason = %r.reason, "cannot create Event"),
            Err(_) => tracing::warn!(reason = %r.reason, "creating Event timed out"),
        }
    }
}
