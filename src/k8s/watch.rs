//! The watch streams: which pods and kubelet Events to watch ([`Scope`], from the
//! `[watch]` config section defined here), one kube-rs watcher per namespace merged into
//! one stream with its backoff, and the watches' own metrics. What consumes the streams
//! lives in `crate::app::watch_loop`.

use futures::StreamExt;
use futures::stream::BoxStream;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Client};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio_stream::StreamMap;

use crate::k8s::watch_backoff::{ExpiredFlag, WatchBackoff};

/// `[watch]`: which pods the exporter observes. Checked by the config loader.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatchConfig {
    /// Namespaces to watch; empty means all.
    pub namespaces: Vec<String>,
    /// Namespaces never to watch.
    pub exclude_namespaces: Vec<String>,
    /// Only pods matching this Kubernetes label selector are observed.
    pub label_selector: String,
}

/// Which pods and Events to watch.
#[derive(Clone, Debug, PartialEq)]
pub struct Scope {
    /// One stream per namespace; `None` is one stream over all namespaces.
    pub namespaces: Vec<Option<String>>,
    /// Excluded namespaces, as a server-side field selector.
    pub field_selector: Option<String>,
    pub label_selector: Option<String>,
    /// The node agent's node: only pods with this `spec.nodeName` (pods only: Events
    /// have no such field).
    pub node_name: Option<String>,
}

impl Scope {
    pub fn from_config(config: &WatchConfig) -> Scope {
        let included: Vec<Option<String>> = config
            .namespaces
            .iter()
            .filter(|ns| !config.exclude_namespaces.contains(ns))
            .map(|ns| Some(ns.clone()))
            .collect();
        let namespaces = if config.namespaces.is_empty() {
            vec![None]
        } else {
            included
        };
        let field_selector = (!config.exclude_namespaces.is_empty()).then(|| {
            config
                .exclude_namespaces
                .iter()
                .map(|ns| format!("metadata.namespace!={ns}"))
                .collect::<Vec<_>>()
                .join(",")
        });
        let label_selector =
            (!config.label_selector.trim().is_empty()).then(|| config.label_selector.clone());
        Scope {
            namespaces,
            field_selector,
            label_selector,
            node_name: None,
        }
    }

    /// The same scope, restricted to the pods of one node.
    pub fn on_node(self, node_name: &str) -> Scope {
        Scope {
            node_name: Some(node_name.to_owned()),
            ..self
        }
    }

    pub(crate) fn pod_watcher_config(&self) -> watcher::Config {
        // Pages of 100 rather than 500: kube-rs holds a whole page as text and decoded at
        // once, and at 7 KiB a pod that buffer was a fifth of the daemon's memory.
        let mut config = watcher::Config::default().page_size(100);
        if let Some(labels) = &self.label_selector {
            config = config.labels(labels);
        }
        let node = self
            .node_name
            .as_ref()
            .map(|node| format!("spec.nodeName={node}"));
        let fields: Vec<&str> = node
            .iter()
            .chain(&self.field_selector)
            .map(String::as_str)
            .collect();
        if !fields.is_empty() {
            config = config.fields(&fields.join(","));
        }
        config
    }

    /// Only the kubelet's `Killing` Events about pods matter (they attribute probe
    /// kills); selecting them on the server keeps the Event stream small.
    pub(crate) fn event_watcher_config(&self) -> watcher::Config {
        let mut fields = String::from("involvedObject.kind=Pod,reason=Killing");
        if let Some(excluded) = &self.field_selector {
            fields.push(',');
            fields.push_str(excluded);
        }
        watcher::Config::default().fields(&fields)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WatchEventLabels {
    resource: &'static str,
    r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabels {
    resource: &'static str,
}

/// Self-monitoring of the watches.
#[derive(Clone)]
pub struct WatchMetrics {
    events: Family<WatchEventLabels, Counter>,
    errors: Family<ResourceLabels, Counter>,
}

impl WatchMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = WatchMetrics {
            events: Family::default(),
            errors: Family::default(),
        };
        registry.register(
            "watch_events",
            "Events received from the Kubernetes watches, by resource and kube-rs event type",
            metrics.events.clone(),
        );
        registry.register(
            "watch_errors",
            "Failed list or watch calls (each is retried with backoff), by resource",
            metrics.errors.clone(),
        );
        metrics
    }

    pub(crate) fn event(&self, resource: &'static str, r#type: &'static str) {
        self.events
            .get_or_create_owned(&WatchEventLabels { resource, r#type })
            .inc();
    }

    pub(crate) fn error(&self, resource: &'static str, error: &watcher::Error) {
        self.errors
            .get_or_create_owned(&ResourceLabels { resource })
            .inc();
        tracing::warn!(resource, %error, "watch failed; retrying with backoff");
    }
}

pub(crate) type WatchStream<K> = BoxStream<'static, Result<Event<K>, watcher::Error>>;

/// One watcher per namespace of `scope`, merged; items carry their stream's index (its
/// namespace's position in `scope`).
///
/// A `StreamMap` rather than `select_all`: the latter re-queues its stream as a new task
/// (an allocation) for every item, which showed in the watch thread's profile.
pub(crate) fn watch_all<K>(
    client: &Client,
    scope: &Scope,
    config: &watcher::Config,
) -> StreamMap<usize, WatchStream<K>>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    StreamMap::from_iter(
        scope
            .namespaces
            .iter()
            .enumerate()
            .map(|(index, namespace)| {
                let api: Api<K> = match namespace {
                    Some(ns) => Api::namespaced(client.clone(), ns),
                    None => Api::all(client.clone()),
                };
                let expired = ExpiredFlag::default();
                let backoff = WatchBackoff::new(&expired);
                let stream = watcher(api, config.clone())
                    .inspect(move |event| expired.observe(event))
                    .backoff(backoff)
                    .boxed();
                (index, stream)
            }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_turns_config_into_streams_and_selectors() {
        let all = Scope::from_config(&WatchConfig::default());
        assert_eq!(all.namespaces, vec![None]);
        assert_eq!(all.field_selector, None);

        let config = WatchConfig {
            namespaces: vec!["a".into(), "b".into()],
            exclude_namespaces: vec!["b".into(), "kube-system".into()],
            label_selector: "app=x".into(),
        };
        let scope = Scope::from_config(&config);
        assert_eq!(scope.namespaces, vec![Some("a".to_owned())]);
        assert_eq!(
            scope.field_selector.as_deref(),
            Some("metadata.namespace!=b,metadata.namespace!=kube-system")
        );
        assert_eq!(
            scope.event_watcher_config().field_selector.as_deref(),
            Some(
                "involvedObject.kind=Pod,reason=Killing,metadata.namespace!=b,metadata.namespace!=kube-system"
            )
        );
        assert_eq!(
            scope.pod_watcher_config().label_selector.as_deref(),
            Some("app=x")
        );
        assert_eq!(
            scope.pod_watcher_config().field_selector.as_deref(),
            Some("metadata.namespace!=b,metadata.namespace!=kube-system")
        );
        let node = scope.on_node("node-1");
        assert_eq!(
            node.pod_watcher_config().field_selector.as_deref(),
            Some("spec.nodeName=node-1,metadata.namespace!=b,metadata.namespace!=kube-system")
        );
        assert!(
            !node
                .event_watcher_config()
                .field_selector
                .as_deref()
                .unwrap_or_default()
                .contains("nodeName"),
            "Events have no spec.nodeName"
        );
        assert_eq!(
            Scope::from_config(&WatchConfig::default())
                .on_node("n")
                .pod_watcher_config()
                .field_selector
                .as_deref(),
            Some("spec.nodeName=n")
        );
    }
}
