//! The restart pipeline's loop: the pod and kubelet-Event watch streams
//! ([`crate::k8s::watch`]) fed in order into the pure [`Observer`], whose observations
//! update the [`Metrics`] and the incident log.
//!
//! One task owns the observer and the metrics, so neither needs a lock. Each watched
//! namespace (or the whole cluster) is one pod stream with its own list/watch cycle;
//! kube-rs's `Init`/`InitApply`/`InitDone` become the observer's relist, so pods deleted
//! while the watch was down are forgotten and the first list is the baseline.

use std::os::fd::OwnedFd;
use std::task::Poll;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use kube::Client;
use kube::runtime::watcher::{self, Event};
use tokio::io::Interest;
use tokio::io::unix::{AsyncFd, AsyncFdReadyGuard};
use tokio::sync::watch as signal;

use crate::correlate::incidents::{SharedIncidentLog, lock};
use crate::events::EventSink;
use crate::export::metrics::Metrics;
use crate::k8s::health::{Health, WatchReadiness};
use crate::k8s::types::{SlimEvent, SlimPod};
use crate::k8s::watch::{Scope, WatchMetrics, watch_all};
use crate::node::agent::NodeAgent;
use crate::observe::{Observation, Observer};

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
    /// The node agent (`selfheal-exporter node`), fed the same pods, with its re-read
    /// interval.
    pub node: Option<(NodeAgent, Duration)>,
    /// `[events]`: the Event writer's queue (never waited on).
    pub events: Option<EventSink>,
}

/// Each watch stream's part of readiness.
struct Readiness {
    pods: Vec<WatchReadiness>,
    events: Vec<WatchReadiness>,
}

/// Pod events handled in a row before the loop looks at its other inputs again: what
/// the connection has already buffered is applied without a `select!` round per event.
const POD_EVENT_BATCH: usize = 64;

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
                        // Only a panic drops the sender unsent (the panic itself is on
                        // stderr). Returning hands it to the supervisor, which stops the
                        // daemon with exit code 1.
                        tracing::error!("the watch thread died");
                    }
                }
                // The watches never start; the supervisor stops the daemon.
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
        let reread = self
            .node
            .as_ref()
            .map_or(Duration::from_secs(3600), |(_, every)| *every);
        let mut node_ticker = tokio::time::interval(reread);
        node_ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let notifications = self
            .node
            .as_ref()
            .and_then(|(agent, _)| notifications(agent));
        let mut victims = self
            .node
            .as_mut()
            .and_then(|(agent, _)| agent.take_victims());
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
                _ = node_ticker.tick(), if self.node.is_some() => {
                    if let Some((agent, _)) = &mut self.node {
                        agent.tick(Timestamp::now());
                    }
                }
                Some(victim) = next_victim(victims.as_mut()) => {
                    if let Some((agent, _)) = &mut self.node {
                        agent.on_victim(victim);
                    }
                }
                ready = readable(notifications.as_ref()) => {
                    if let Some(mut guard) = ready {
                        guard.clear_ready();
                    }
                    if let Some((agent, _)) = &mut self.node {
                        agent.on_notified(Timestamp::now());
                    }
                }
            }
            self.record(&mut out);
            self.metrics
                .set_observed_containers(self.observer.container_count());
        }
        tracing::info!("watches stopped");
    }

    /// Hands the observations to the metrics, the incident log and the Event writer.
    fn record(&mut self, out: &mut Vec<Observation>) {
        let mut log = None;
        for observation in out.drain(..) {
            match &observation {
                Observation::Incident(update) => {
                    log.get_or_insert_with(|| lock(&self.incidents))
                        .apply(update);
                    if let Some(events) = &self.events {
                        events.offer(update);
                    }
                }
                _ => {
                    if let Some((agent, _)) = &mut self.node {
                        node_record(agent, &observation);
                    }
                    self.metrics.record(&observation);
                }
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
                if let Some((agent, _)) = &mut self.node {
                    agent.begin_relist();
                }
            }
            Ok(Event::InitApply(pod)) => {
                self.watch_metrics.event(RESOURCE, "init_apply");
                self.observer.apply_pod(stream, &pod, now, out);
                if let Some((agent, _)) = &mut self.node {
                    agent.apply_pod(&pod, now);
                }
            }
            Ok(Event::InitDone) => {
                self.watch_metrics.event(RESOURCE, "init_done");
                self.observer.end_relist(stream, now, out);
                if let Some((agent, _)) = &mut self.node {
                    agent.end_relist(now);
                }
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
                if let Some((agent, _)) = &mut self.node {
                    agent.apply_pod(&pod, now);
                }
            }
            Ok(Event::Delete(pod)) => {
                self.watch_metrics.event(RESOURCE, "delete");
                self.observer.delete_pod(&pod, now, out);
                if let Some((agent, _)) = &mut self.node {
                    agent.delete_pod(&pod, now);
                }
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

/// The node agent's part of an observation: its series appear and expire with the
/// observer's.
fn node_record(agent: &mut NodeAgent, observation: &Observation) {
    match observation {
        Observation::ContainerSeen {
            workload,
            container,
            ..
        } => agent.metrics_mut().container_seen(workload, container),
        Observation::WorkloadExpired { workload } => {
            agent.metrics_mut().workload_expired(workload);
        }
        _ => {}
    }
}

/// The node agent's inotify descriptor, registered with this thread's runtime.
fn notifications(agent: &NodeAgent) -> Option<AsyncFd<OwnedFd>> {
    let fd = agent.events_fd()?.try_clone_to_owned().ok()?;
    // SAFETY: `fd` is an `OwnedFd` (a duplicate of the agent's inotify descriptor) moved
    // into the `AsyncFd`: it stays open, and `as_raw_fd` returns the same descriptor,
    // until the `AsyncFd` drops it.
    #[allow(unsafe_code)]
    let registered = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) };
    match registered {
        Ok(fd) => Some(fd),
        Err(error) => {
            tracing::warn!(%error, "cannot wait on inotify: polling the cgroups only");
            None
        }
    }
}

/// The next OOM victim from the kernel log (`node.kmsg`); never without it, nor after
/// its reader ended.
async fn next_victim(
    victims: Option<&mut tokio::sync::mpsc::UnboundedReceiver<crate::node::kmsg::Victim>>,
) -> Option<crate::node::kmsg::Victim> {
    match victims {
        Some(victims) => match victims.recv().await {
            Some(victim) => Some(victim),
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// Resolves when the kernel has notified a change; never without notifications, nor
/// after an error waiting for them (the periodic re-read still runs).
async fn readable(fd: Option<&AsyncFd<OwnedFd>>) -> Option<AsyncFdReadyGuard<'_, OwnedFd>> {
    if let Some(fd) = fd {
        match fd.readable().await {
            Ok(guard) => return Some(guard),
            Err(error) => {
                tracing::warn!(%error, "waiting on inotify failed: polling the cgroups only");
            }
        }
    }
    std::future::pending().await
}
