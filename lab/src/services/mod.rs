//! Services for the lab, like a cluster's EndpointSlice controller and
//! kube-proxy in NodePort mode, driven through the API server's HTTP API
//! with kube-rs (so it works against the lab API server, or any other).
//!
//! [`ServiceController`] watches Services, Pods and its own EndpointSlices and
//! - keeps, for each Service with a selector, a `discovery.k8s.io/v1`
//!   EndpointSlice named `<service>-lab` (labels `kubernetes.io/service-name`
//!   and `endpointslice.kubernetes.io/managed-by: selfheal-lab-services`,
//!   `addressType: IPv4`, one endpoint per selected pod with its `podIP` and
//!   `ready` from the pod's `Ready` condition, ports from `targetPort`),
//!   deleting the slices of Services that are gone (see [`endpoints`]);
//! - listens on `127.0.0.1:<nodePort>` for each NodePort and forwards each
//!   connection to a ready endpoint, round-robin (see [`proxy`]). With no ready
//!   endpoint connections are closed at once: through the Service a client sees
//!   just the real downtime, the experiment's lesson.
//!
//! The proxy follows the pods directly (not the slices it wrote), so it reacts
//! as soon as the controller sees a pod change. Failed writes and binds are
//! retried every [`ServiceControllerConfig::resync`].
//!
//! ```no_run
//! # async fn demo(client: kube::Client) {
//! use selfheal_lab::services::ServiceController;
//! let services = ServiceController::start(client);
//! // ... http://127.0.0.1:31000/grade reaches the ready grade-submission-api pod ...
//! services.shutdown().await;
//! # }
//! ```

pub mod endpoints;
pub mod proxy;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt as _, StreamExt as _};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use endpoints::{MANAGED_BY, MANAGED_BY_LABEL, NodePortRoute};
use proxy::NodePortProxy;

/// How to run a [`ServiceController`].
#[derive(Debug, Clone)]
pub struct ServiceControllerConfig {
    /// Address node ports listen on. Default `127.0.0.1`.
    pub bind_ip: IpAddr,
    /// Period of the full reconcile that retries failed writes and binds. Default 2 s.
    pub resync: Duration,
}

impl Default for ServiceControllerConfig {
    fn default() -> Self {
        ServiceControllerConfig {
            bind_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            resync: Duration::from_secs(2),
        }
    }
}

/// Running controller and proxy; stop it with [`shutdown`](Self::shutdown)
/// (dropping it stops it too, without waiting).
pub struct ServiceController {
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    ports: Arc<Mutex<Vec<u16>>>,
}

impl ServiceController {
    /// Starts with the default configuration. Must be called inside a Tokio runtime.
    pub fn start(client: kube::Client) -> Self {
        Self::start_with(client, ServiceControllerConfig::default())
    }

    /// Starts with `config`. Must be called inside a Tokio runtime.
    pub fn start_with(client: kube::Client, config: ServiceControllerConfig) -> Self {
        let (stop, stop_rx) = watch::channel(false);
        let ports = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(run(client, config, stop_rx, ports.clone()));
        ServiceController {
            stop,
            task: Some(task),
            ports,
        }
    }

    /// Node ports the proxy listens on right now.
    pub fn node_ports(&self) -> Vec<u16> {
        self.ports
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Waits (up to `timeout`) until the proxy listens on `port`.
    pub async fn wait_for_node_port(&self, port: u16, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.node_ports().contains(&port) {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// Stops watching, closes every node port and proxied connection, and
    /// waits for that. EndpointSlices are left as they are.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ServiceController {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// What a watch stream says, once the reflector has applied it.
enum Seen {
    Pods(bool),
    Services(bool),
    Slices(bool),
    Error(&'static str, watcher::Error),
}

fn tag<K>(
    ev: Result<watcher::Event<K>, watcher::Error>,
    what: &'static str,
    mk: fn(bool) -> Seen,
) -> Seen {
    match ev {
        Ok(ev) => mk(matches!(ev, watcher::Event::InitDone)),
        Err(e) => Seen::Error(what, e),
    }
}

struct Controller {
    client: kube::Client,
    services: Store<Service>,
    pods: Store<Pod>,
    slices: Store<EndpointSlice>,
    proxy: NodePortProxy,
    /// Slices we wrote, by (namespace, name), with the time of the write:
    /// the slice watch may not show a fresh write yet.
    written: HashMap<(String, String), (EndpointSlice, Instant)>,
    bind_failures: BTreeMap<u16, String>,
}

async fn run(
    client: kube::Client,
    config: ServiceControllerConfig,
    mut stop: watch::Receiver<bool>,
    ports: Arc<Mutex<Vec<u16>>>,
) {
    let (services, svc_writer) = reflector::store::<Service>();
    let (pods, pod_writer) = reflector::store::<Pod>();
    let (slices, slice_writer) = reflector::store::<EndpointSlice>();
    let svc_stream = reflector::reflector(
        svc_writer,
        watcher(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .map(|e| tag(e, "services", Seen::Services));
    let pod_stream = reflector::reflector(
        pod_writer,
        watcher(Api::<Pod>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .map(|e| tag(e, "pods", Seen::Pods));
    let slice_cfg = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
    let slice_stream = reflector::reflector(
        slice_writer,
        watcher(Api::<EndpointSlice>::all(client.clone()), slice_cfg),
    )
    .default_backoff()
    .map(|e| tag(e, "endpointslices", Seen::Slices));
    let mut events =
        futures::stream::select_all([svc_stream.boxed(), pod_stream.boxed(), slice_stream.boxed()]);

    let mut ctl = Controller {
        client,
        services,
        pods,
        slices,
        proxy: NodePortProxy::new(config.bind_ip),
        written: HashMap::new(),
        bind_failures: BTreeMap::new(),
    };
    let (mut pods_synced, mut services_synced, mut slices_synced) = (false, false, false);
    let mut resync = tokio::time::interval(config.resync);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_error_log: Option<Instant> = None;
    loop {
        let mut handle = |seen: Seen| -> bool {
            match seen {
                Seen::Pods(done) => pods_synced |= done,
                Seen::Services(done) => services_synced |= done,
                Seen::Slices(done) => slices_synced |= done,
                Seen::Error(what, e) => {
                    // The stream retries with backoff; say so now and then.
                    if last_error_log.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                        tracing::warn!(resource = what, error = %e, "watch failed; retrying");
                        last_error_log = Some(Instant::now());
                    }
                    return false;
                }
            }
            true
        };
        let mut dirty = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            seen = events.next() => match seen {
                Some(seen) => handle(seen),
                None => break,
            },
            _ = resync.tick() => true,
        };
        // Take whatever else is already there before reconciling once.
        while let Some(Some(seen)) = events.next().now_or_never() {
            dirty |= handle(seen);
        }
        if dirty && pods_synced && services_synced && slices_synced {
            ctl.reconcile().await;
            *ports
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = ctl.proxy.ports();
        }
    }
    ctl.proxy.shutdown();
    ports
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clear();
}

impl Controller {
    async fn reconcile(&mut self) {
        let pods = self.pods.state();
        let mut desired = Vec::new();
        let mut routes: Vec<NodePortRoute> = Vec::new();
        for svc in self.services.state() {
            if let Some(d) = endpoints::desired(&svc, &pods) {
                routes.extend(d.routes.iter().cloned());
                desired.push(d);
            }
        }

        // The proxy first: it is what clients feel.
        let mut seen_ports = BTreeMap::new();
        routes.retain(|r| seen_ports.insert(r.node_port, r.service.clone()).is_none());
        let failures = self.proxy.sync(&routes);
        let mut now_failing = BTreeMap::new();
        for (port, e) in failures {
            if !self.bind_failures.contains_key(&port) {
                tracing::warn!(port, error = %e, "cannot listen on node port; retrying");
            }
            now_failing.insert(port, e.to_string());
        }
        self.bind_failures = now_failing;

        // Then the slices.
        let mut wanted_keys = Vec::new();
        for d in desired {
            let name = d.slice.metadata.name.clone().unwrap_or_default();
            let key = (d.namespace.clone(), name.clone());
            wanted_keys.push(key.clone());
            let observed = self.slices.get(&ObjectRef::new(&name).within(&d.namespace));
            if observed
                .as_ref()
                .is_some_and(|o| endpoints::same_content(o, &d.slice))
            {
                self.written.remove(&key);
                continue;
            }
            // Our last write of exactly this may not have come back through the watch yet.
            if let Some((w, at)) = self.written.get(&key)
                && *w == d.slice
                && at.elapsed() < Duration::from_secs(2)
            {
                continue;
            }
            let api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), &d.namespace);
            let result = if observed.is_some() {
                match api.replace(&name, &PostParams::default(), &d.slice).await {
                    Err(kube::Error::Api(s)) if s.code == 404 => {
                        api.create(&PostParams::default(), &d.slice).await
                    }
                    r => r,
                }
            } else {
                match api.create(&PostParams::default(), &d.slice).await {
                    Err(kube::Error::Api(s)) if s.code == 409 => {
                        api.replace(&name, &PostParams::default(), &d.slice).await
                    }
                    r => r,
                }
            };
            match result {
                Ok(_) => {
                    tracing::debug!(namespace = %d.namespace, %name, "endpointslice written");
                    self.written.insert(key, (d.slice, Instant::now()));
                }
                Err(e) => {
                    tracing::warn!(namespace = %d.namespace, %name, error = %e, "cannot write endpointslice; retrying");
                }
            }
        }

        // Slices of Services that are gone (or lost their selector).
        for slice in self.slices.state() {
            let ns = slice.metadata.namespace.clone().unwrap_or_default();
            let name = slice.metadata.name.clone().unwrap_or_default();
            let key = (ns.clone(), name.clone());
            if wanted_keys.contains(&key) {
                continue;
            }
            let api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), &ns);
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => tracing::debug!(namespace = %ns, %name, "endpointslice deleted"),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    tracing::warn!(namespace = %ns, %name, error = %e, "cannot delete endpointslice; retrying");
                }
            }
            self.written.remove(&key);
        }
        self.written.retain(|k, _| wanted_keys.contains(k));
    }
}
