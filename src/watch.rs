//! The async edge of the observer: kube-rs watchers for pods and kubelet Events, fed in
//! order into the [`Observer`], whose observations update the [`Metrics`].
//!
//! One task owns the observer and the metrics, so neither needs a lock. Each watched
//! namespace (or the whole cluster) is one pod stream with its own list/watch cycle;
//! kube-rs's `Init`/`InitApply`/`InitDone` become the observer's relist, so pods deleted
//! while the watch was down are forgotten and the first list is the baseline.

use std::task::Poll;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use jiff::Timestamp;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Client};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::sync::watch as signal;
use tokio_stream::StreamMap;

use crate::config::WatchConfig;
use crate::health::{Health, WatchReadiness};
use crate::incidents::{SharedIncidentLog, lock};
use crate::kube_types::{SlimEvent, SlimPod};
use crate::metrics::Metrics;
use crate::observer::{Observation, Observer};
use crate::watch_backoff::{ExpiredFlag, WatchBackoff};

/// Which pods and Events to watch.
#[derive(Clone, Debug, PartialEq)]
pub struct Scope {
    /// One stream per namespace; `None` is one stream over all namespaces.
    pub namespaces: Vec<Option<String>>,
    /// Excluded namespaces, as a server-side field selector.
    pub field_selector: Option<String>,
    pub label_selector: Option<String>,
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
        }
    }

    fn pod_watcher_config(&self) -> watcher::Config {
        // Pages of 100 rather than 500: kube-rs holds a whole page as text and decoded at
        // once, and at 7 KiB a pod that buffer was a fifth of the daemon's memory.
        let mut config = watcher::Config::default().page_size(100);
        if let Some(labels) = &self.label_selector {
            config = config.labels(labels);
        }
        if let Some(fields) = &self.field_selector {
            config = config.fields(fields);
        }
        config
    }

    /// Only the kubelet's `Killing` Events about pods matter (they attribute probe
    /// kills); selecting them on the server keeps the Event stream small.
    fn event_watcher_config(&self) -> watcher::Config {
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

/// Everything the watch loop owns.
pub struct WatchLoop {
    /// The watches make their own client from it (see [`WatchLoop::run_here`]).
    pub kube_config: kube::Config,
    pub scope: Scope,
    pub observer: Observer,
    pub metrics: Metrics,
    pub watch_metrics: WatchMetrics,
    pub health: Health,
    pub incidents: SharedIncidentLog,
}

/// Each watch stream's part of readiness.
struct Readiness {
    pods: Vec<WatchReadiness>,
    events: Vec<WatchReadiness>,
}

type WatchStream<K> = BoxStream<'static, Result<Event<K>, watcher::Error>>;

/// Pod events handled in a row before the loop looks at its other inputs again: what
/// the connection has already buffered is applied without a `select!` round per event.
const POD_EVENT_BATCH: usize = 64;

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

impl WatchLoop {
    /// Registers the watches for readiness at once, and returns the loop, which runs until
    /// `shutdown` turns true on a thread of its own (see [`WatchLoop::run_here`]).
    pub fn start(self, shutdown: signal::Receiver<bool>) -> impl Future<Output = ()> + Send {
        let streams = self.scope.namespaces.len();
        let readiness = Readiness {
            pods: (0..streams).map(|_| self.health.register_watch()).collect(),
            events: (0..streams).map(|_| self.health.register_watch()).collect(),
        };
        async move {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    tracing::warn!(%error, "cannot build the watch thread's runtime; watching on the main one");
                    return self.run_here(readiness, shutdown).await;
                }
            };
            let (done, finished) = tokio::sync::oneshot::channel::<()>();
            let spawned = std::thread::Builder::new()
                .name("watch".to_owned())
                .spawn(move || {
                    runtime.block_on(self.run_here(readiness, shutdown));
                    let _ = done.send(());
                });
            match spawned {
                Ok(_) => {
                    if finished.await.is_err() {
                        // Only a panic drops the sender unsent (the panic itself is on stderr).
                        tracing::error!("the watch thread died; restart the exporter");
                    }
                }
                // The watches never start: /readyz stays 503, which says so.
                Err(error) => tracing::error!(%error, "cannot start the watch thread"),
            }
        }
    }

    /// The watch loop proper. `start` gives it a single-threaded runtime on a thread of
    /// its own, with its own API connections: decoding, observing and recording then
    /// happen on one thread, and events flow without a cross-thread wake-up each (on the
    /// multi-threaded runtime those wake-ups cost more CPU than the observing itself).
    async fn run_here(mut self, readiness: Readiness, mut shutdown: signal::Receiver<bool>) {
        let Readiness {
            pods: mut pod_readiness,
            events: mut event_readiness,
        } = readiness;
        // Built here, so that its connections are driven by this runtime.
        let client = match Client::try_from(self.kube_config.clone()) {
            Ok(client) => client,
            Err(error) => {
                tracing::error!(%error, "cannot build the Kubernetes client for the watches");
                return;
            }
        };
        let mut pods = watch_all::<SlimPod>(&client, &self.scope, &self.scope.pod_watcher_config());
        let mut events =
            watch_all::<SlimEvent>(&client, &self.scope, &self.scope.event_watcher_config());
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut out: Vec<Observation> = Vec::new();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                Some((stream, event)) = pods.next() => {
                    self.on_pod_event(stream, event, &mut out, &mut pod_readiness);
                    for _ in 1..POD_EVENT_BATCH {
                        // Polled with this task's waker, so a Pending leaves it registered.
                        let next = std::future::poll_fn(|cx| Poll::Ready(pods.poll_next_unpin(cx)));
                        let Poll::Ready(Some((stream, event))) = next.await else {
                            break;
                        };
                        self.record(&mut out);
                        self.on_pod_event(stream, event, &mut out, &mut pod_readiness);
                    }
                }
                Some((stream, event)) = events.next() => {
                    self.on_kubelet_event(stream, event, &mut out, &mut event_readiness);
                }
                _ = ticker.tick() => {
                    self.observer.tick(Timestamp::now(), &mut out);
                }
            }
            self.record(&mut out);
            self.metrics
                .set_observed_containers(self.observer.container_count());
        }
        tracing::info!("watches stopped");
    }

    /// Hands the observations to the metrics and the incident log.
    fn record(&mut self, out: &mut Vec<Observation>) {
        let mut log = None;
        for observation in out.drain(..) {
            match &observation {
                Observation::Incident(update) => log
                    .get_or_insert_with(|| lock(&self.incidents))
                    .apply(update),
                _ => self.metrics.record(&observation),
            }
        }
    }

    fn on_pod_event(
        &mut self,
        stream: usize,
        event: Result<Event<SlimPod>, watcher::Error>,
        out: &mut Vec<Observation>,
        readiness: &mut [WatchReadiness],
    ) {
        const RESOURCE: &str = "pods";
        let now = Timestamp::now();
        match event {
            Ok(Event::Init) => {
                self.watch_metrics.event(RESOURCE, "init");
                self.observer.begin_relist(stream);
            }
            Ok(Event::InitApply(pod)) => {
                self.watch_metrics.event(RESOURCE, "init_apply");
                self.observer.apply_pod(stream, &pod, now, out);
            }
            Ok(Event::InitDone) => {
                self.watch_metrics.event(RESOURCE, "init_done");
                self.observer.end_relist(stream, now, out);
                if let Some(ready) = readiness.get_mut(stream) {
                    ready.mark_synced();
                }
                tracing::info!(
                    pods = self.observer.pod_count(),
                    containers = self.observer.container_count(),
                    "pod list synced"
                );
            }
            Ok(Event::Apply(pod)) => {
                self.watch_metrics.event(RESOURCE, "apply");
                self.observer.apply_pod(stream, &pod, now, out);
            }
            Ok(Event::Delete(pod)) => {
                self.watch_metrics.event(RESOURCE, "delete");
                self.observer.delete_pod(&pod, now, out);
            }
            Err(error) => self.watch_metrics.error(RESOURCE, &error),
        }
    }

    fn on_kubelet_event(
        &mut self,
        stream: usize,
        event: Result<Event<SlimEvent>, watcher::Error>,
        out: &mut Vec<Observation>,
        readiness: &mut [WatchReadiness],
    ) {
        const RESOURCE: &str = "events";
        let now = Timestamp::now();
        match event {
            Ok(Event::Init) => self.watch_metrics.event(RESOURCE, "init"),
            Ok(Event::InitApply(event)) => {
                self.watch_metrics.event(RESOURCE, "init_apply");
                self.observer.apply_event(&event, now, out);
            }
            Ok(Event::InitDone) => {
                self.watch_metrics.event(RESOURCE, "init_done");
                if let Some(ready) = readiness.get_mut(stream) {
                    ready.mark_synced();
                }
            }
            Ok(Event::Apply(event)) => {
                self.watch_metrics.event(RESOURCE, "apply");
                self.observer.apply_event(&event, now, out);
            }
            // A deleted Event (TTL expiry) takes nothing back: the kill happened.
            Ok(Event::Delete(_)) => self.watch_metrics.event(RESOURCE, "delete"),
            Err(error) => self.watch_metrics.error(RESOURCE, &error),
        }
    }
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
    }
}
