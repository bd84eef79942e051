//! The async edge of discovery: watches Services and turns annotated ones into probe
//! targets for the [`Prober`](super::Prober). Like the pod watch, a relist that no longer
//! shows a Service removes its target.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use futures::StreamExt;
use kube::Client;
use kube::runtime::watcher::{self, Event};
use tokio::sync::{mpsc, watch as signal};

use super::TargetChange;
use super::discovery::{ServiceAddress, target_from_service};
use super::metrics::ProbeMetrics;
use crate::k8s::health::{Health, WatchReadiness};
use crate::k8s::types::SlimService;
use crate::k8s::watch::{Scope, WatchMetrics, watch_all};

const RESOURCE: &str = "services";

pub struct ServiceWatch {
    pub client: Client,
    pub scope: Scope,
    pub address: ServiceAddress,
    pub node_address: IpAddr,
    pub changes: mpsc::Sender<TargetChange>,
    pub probe_metrics: ProbeMetrics,
    pub watch_metrics: WatchMetrics,
    pub health: Health,
}

/// What discovery knows of one target: the stream and relist it was last seen in.
struct Known {
    stream: usize,
    epoch: u64,
}

impl ServiceWatch {
    /// Registers the Service watches for readiness at once (so /readyz waits for their
    /// first list from the moment this is called) and returns the watch, which runs until
    /// `shutdown` turns true.
    pub fn start(self, shutdown: signal::Receiver<bool>) -> impl Future<Output = ()> + Send {
        let readiness: Vec<WatchReadiness> = (0..self.scope.namespaces.len())
            .map(|_| self.health.register_watch())
            .collect();
        self.run(readiness, shutdown)
    }

    async fn run(self, mut readiness: Vec<WatchReadiness>, mut shutdown: signal::Receiver<bool>) {
        let mut config = watcher::Config::default();
        if let Some(fields) = &self.scope.field_selector {
            config = config.fields(fields);
        }
        let mut services = watch_all::<SlimService>(&self.client, &self.scope, &config);
        let streams = self.scope.namespaces.len();
        let mut epochs = vec![0u64; streams];
        let mut known: HashMap<Arc<str>, Known> = HashMap::new();
        loop {
            let (stream, event) = tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => break,
                next = services.next() => match next {
                    Some(next) => next,
                    None => break,
                },
            };
            let epoch = epochs.get(stream).copied().unwrap_or(0);
            match event {
                Ok(Event::Init) => {
                    self.watch_metrics.event(RESOURCE, "init");
                    if let Some(epoch) = epochs.get_mut(stream) {
                        *epoch += 1;
                    }
                }
                Ok(Event::InitApply(service)) => {
                    self.watch_metrics.event(RESOURCE, "init_apply");
                    self.apply(&service, stream, epoch, &mut known).await;
                }
                Ok(Event::Apply(service)) => {
                    self.watch_metrics.event(RESOURCE, "apply");
                    self.apply(&service, stream, epoch, &mut known).await;
                }
                Ok(Event::Delete(service)) => {
                    self.watch_metrics.event(RESOURCE, "delete");
                    if let Some(name) = target_name(&service)
                        && known.remove(&name).is_some()
                    {
                        self.send(TargetChange::Remove(name)).await;
                    }
                }
                Ok(Event::InitDone) => {
                    self.watch_metrics.event(RESOURCE, "init_done");
                    let gone: Vec<Arc<str>> = known
                        .iter()
                        .filter(|(_, k)| k.stream == stream && k.epoch != epoch)
                        .map(|(name, _)| name.clone())
                        .collect();
                    for name in gone {
                        known.remove(&name);
                        self.send(TargetChange::Remove(name)).await;
                    }
                    if let Some(ready) = readiness.get_mut(stream) {
                        ready.mark_synced();
                    }
                }
                Err(error) => self.watch_metrics.error(RESOURCE, &error),
            }
        }
    }

    async fn apply(
        &self,
        service: &SlimService,
        stream: usize,
        epoch: u64,
        known: &mut HashMap<Arc<str>, Known>,
    ) {
        let Some(name) = target_name(service) else {
            return;
        };
        match target_from_service(service, self.address, self.node_address) {
            Ok(Some(spec)) => {
                known.insert(name, Known { stream, epoch });
                self.send(TargetChange::Upsert(Box::new(spec))).await;
            }
            Ok(None) => {
                if known.remove(&name).is_some() {
                    self.send(TargetChange::Remove(name)).await;
                }
            }
            Err(invalid) => {
                let namespace = service.metadata.namespace.as_deref().unwrap_or("");
                let service_name = service.metadata.name.as_deref().unwrap_or("");
                tracing::warn!(target = %name, "not probing Service {namespace}/{service_name}: {invalid}");
                self.probe_metrics.config_error(namespace, service_name);
                if known.remove(&name).is_some() {
                    self.send(TargetChange::Remove(name)).await;
                }
            }
        }
    }

    async fn send(&self, change: TargetChange) {
        // The prober only stops at shutdown; a send failing then is expected.
        let _ = self.changes.send(change).await;
    }
}

/// Discovered targets are named `<namespace>/<service>`.
fn target_name(service: &SlimService) -> Option<Arc<str>> {
    let namespace = service.metadata.namespace.as_deref()?;
    let name = service.metadata.name.as_deref()?;
    Some(format!("{namespace}/{name}").into())
}
