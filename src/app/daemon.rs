//! The daemon's wiring: client, metrics registry, HTTP server, watch loop and prober
//! (with leader election: started only once this replica holds the Lease), and the
//! shutdown sequence (readiness off, watches stopped, Lease released, server drained, all
//! within 5 s).
//!
//! As the node agent ([`NodeMode`]) the same daemon watches only its node's pods, runs
//! no prober and no leader election, and feeds the pods to the [`NodeAgent`] as well.

use std::net::IpAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use crate::app::shutdown;
use crate::app::supervise::{Ended, Supervisor};
use crate::app::watch_loop::WatchLoop;
use crate::config::Settings;
use crate::correlate::incidents::{IncidentLog, SharedIncidentLog};
use crate::events::planner::EventPlanner;
use crate::events::writer::EventWriter;
use crate::events::{EventMetrics, EventSink, QUEUE_CAPACITY};
use crate::export::admin::{self, AdminState};
use crate::export::cardinality::CardinalityGuard;
use crate::export::exposition;
use crate::export::metrics::{Metrics, register_build_info};
use crate::export::web::listener::{Peer, TlsListener};
use crate::export::web::tls::ReloadingCertificate;
use crate::k8s::client::kube_config;
use crate::k8s::health::Health;
use crate::k8s::watch::{Scope, WatchMetrics};
use crate::leader::{self, LeaderMetrics};
use crate::node::agent::NodeAgent;
use crate::node::metrics::NodeMetrics;
use crate::observe::{Observer, ObserverConfig};
use crate::probe::Prober;
use crate::probe::discovery::ServiceAddress;
use crate::probe::metrics::ProbeMetrics;
use crate::probe::service_watch::ServiceWatch;
use jiff::SignedDuration;
use kube::Client;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// The whole shutdown must finish well inside Kubernetes' default 30 s grace period;
/// we promise 5 s.
const SHUTDOWN_BUDGET: Duration = Duration::from_millis(4500);

/// Where the cluster is: the kubeconfig file(s) and context given on the command line,
/// else the in-cluster config or `~/.kube/config`.
#[derive(Clone, Debug, Default)]
pub struct ClusterAccess {
    pub kubeconfig: Option<String>,
    pub context: Option<String>,
}

/// `selfheal-exporter node`: the node agent of one node.
#[derive(Clone, Debug)]
pub struct NodeMode {
    /// `NODE_NAME`: only this node's pods are watched.
    pub node_name: String,
}

pub async fn run(settings: Settings, access: ClusterAccess, node: Option<NodeMode>) -> ExitCode {
    let Settings {
        config,
        mut probe_specs,
        leader: mut leader_election,
        warnings: _,
        web,
    } = settings;
    if node.is_some() {
        if config.sharding.total_shards > 1 {
            tracing::error!(
                "sharding.total_shards = {}: the node agent watches one node and is not sharded",
                config.sharding.total_shards
            );
            return ExitCode::from(2);
        }
        // One agent per node, each exporting its own node: no Lease, no probes (the
        // cluster-wide exporter probes).
        if leader_election.take().is_some() {
            tracing::warn!("leader_election is ignored by the node agent (one per node)");
        }
        if !probe_specs.is_empty() || config.probes.discovery {
            tracing::warn!(
                "probes are ignored by the node agent: the cluster-wide exporter probes"
            );
            probe_specs.clear();
        }
    }
    let kube = match kube_config(access.kubeconfig.as_deref(), access.context.as_deref()).await {
        Ok(kube) => kube,
        Err(error) => {
            tracing::error!("{error}");
            return ExitCode::from(2);
        }
    };
    let api_url = kube.cluster_url.to_string();
    let client = match Client::try_from(kube.clone()) {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%api_url, "cannot build the Kubernetes client: {error}");
            return ExitCode::from(2);
        }
    };
    let listener = match TcpListener::bind(config.listen).await {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!("listen = {}: cannot listen: {error}", config.listen);
            return ExitCode::from(2);
        }
    };

    let mut registry = Registry::with_prefix("selfheal");
    register_build_info(&mut registry);
    let guard = CardinalityGuard::register(&mut registry, config.metrics.max_series_per_family);
    let metrics = Metrics::register(
        &mut registry,
        &config.metrics.time_to_recover_buckets,
        &guard,
    );
    let watch_metrics = WatchMetrics::register(&mut registry);
    let probe_metrics = ProbeMetrics::register(&mut registry, &guard);
    let leader_metrics = leader_election
        .as_ref()
        .map(|_| LeaderMetrics::register(&mut registry));
    // `[events]`: the writer's settings; it starts with the exporting pipelines. Not in
    // the node agent: the cluster-wide exporter writes the Events (each agent would write
    // its node's again).
    let events = (config.events.enabled && node.is_none()).then(|| EventsSetup {
        metrics: EventMetrics::register(&mut registry),
        max_per_object_per_minute: config.events.max_per_object_per_minute,
        attribution_wait: signed(config.metrics.attribution_wait),
    });
    let incidents =
        IncidentLog::new(config.incidents.capacity, config.probes.correlation_slack).shared();
    let node_agent = match &node {
        Some(_) => {
            let metrics = NodeMetrics::register(&mut registry, &guard);
            match NodeAgent::new(&config.node, metrics, incidents.clone()) {
                Ok(agent) => Some((agent, config.node.reread_interval)),
                Err(error) => {
                    tracing::error!(
                        "node.cgroup_root = {}: {error}",
                        config.node.cgroup_root.display()
                    );
                    return ExitCode::from(2);
                }
            }
        }
        None => None,
    };
    let prober = match Prober::new(
        probe_specs,
        probe_metrics.clone(),
        incidents.clone(),
        config.metrics.retention,
        config.sharding,
    ) {
        Ok(prober) => prober,
        Err(error) => {
            tracing::error!("{error}");
            return ExitCode::from(2);
        }
    };
    let health = Health::default();
    // Unready until the watches below have registered: the HTTP server starts first and
    // must not answer /readyz 200 in between (a replica taken as synced before its first
    // pod list would count later restarts as its baseline; tests/sharding.rs caught it).
    let mut starting = health.register_watch();
    let scope = match &node {
        Some(node) => Scope::from_config(&config.watch).on_node(&node.node_name),
        None => Scope::from_config(&config.watch),
    };
    let observer = Observer::new(
        ObserverConfig {
            attribution_wait: signed(config.metrics.attribution_wait),
            retention: signed(config.metrics.retention),
            sharding: config.sharding,
        },
        scope.namespaces.len(),
    );

    let (stop, stopped) = watch::channel(false);
    let aborted_scrapes = exposition::register_aborted_scrapes(&mut registry);
    let (guard, headers, tls) = match web {
        Some(web) => (web.guard, web.config.headers, web.tls),
        None => (None, Vec::new(), None),
    };
    let handshake_errors = Counter::default();
    if let Some(tls) = &tls {
        register_tls_metrics(&mut registry, &tls.certificate, &handshake_errors);
    }
    let basic_auth = guard.as_ref().is_some_and(|guard| guard.has_users());
    let app = admin::app_with(
        AdminState {
            registry: Arc::new(registry),
            aborted_scrapes,
            health: health.clone(),
            incidents: incidents.clone(),
        },
        guard,
        headers,
    )
    .into_make_service_with_connect_info::<Peer>();
    let mut server_stop = stopped.clone();
    let shutdown = async move {
        let _ = server_stop.wait_for(|stop| *stop).await;
    };
    let https = tls.is_some();
    let mut server = match tls {
        None => tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }),
        Some(tls) => {
            tokio::spawn(tls.certificate.clone().watch(stopped.clone()));
            let listener =
                match TlsListener::new(listener, TlsAcceptor::from(tls.config), handshake_errors) {
                    Ok(listener) => listener,
                    Err(error) => {
                        tracing::error!("listen = {}: cannot listen: {error}", config.listen);
                        return ExitCode::from(2);
                    }
                };
            tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown)
                    .await
            })
        }
    };
    tracing::info!(
        listen = %config.listen,
        https,
        basic_auth,
        %api_url,
        version = env!("CARGO_PKG_VERSION"),
        shard = config.sharding.shard,
        total_shards = config.sharding.total_shards,
        leader_election = config.leader_election.enabled,
        node = node.as_ref().map(|node| node.node_name.as_str()),
        "selfheal-exporter started"
    );
    let standby = leader_election.is_some();
    tokio::spawn(check_api_server(client.clone(), api_url, standby));
    let mut exporter = Some(Exporter {
        client: client.clone(),
        kube_config: kube,
        scope,
        observer,
        metrics,
        watch_metrics,
        probe_metrics,
        health: health.clone(),
        incidents,
        prober,
        events,
        discovery: (config.probes.discovery && node.is_none())
            .then_some((config.probes.service_address, config.probes.node_address)),
        node: node_agent,
    });

    // Without leader election this replica exports from the start. With it, it stands by
    // (no watches, no probes, ready) until it holds the Lease, then starts exactly as a
    // replica without leader election does; on losing the Lease it stops and exits
    // non-zero, so that Kubernetes restarts it as a fresh standby.
    let mut exporting = Supervisor::default();
    let (mut leadership, election) = match (leader_election, leader_metrics) {
        (Some(settings), Some(metrics)) => {
            let (leadership, election) =
                leader::start(client.clone(), settings, metrics, stopped.clone());
            tracing::info!(
                "standing by: watching and probing nothing until this replica holds the Lease"
            );
            (Some(leadership), Some(election))
        }
        _ => {
            if let Some(exporter) = exporter.take() {
                exporter.start(&mut exporting, None, stopped.clone());
            }
            (None, None)
        }
    };
    starting.mark_synced();

    let signal = shutdown::first_signal();
    tokio::pin!(signal);
    let ending = loop {
        tokio::select! {
            signal = &mut signal => break match signal {
                Ok(name) => Ending::Signal(name),
                Err(error) => {
                    tracing::error!("cannot listen for signals: {error}");
                    return ExitCode::FAILURE;
                }
            },
            result = &mut server => {
                tracing::error!("HTTP server stopped unexpectedly: {result:?}");
                return ExitCode::FAILURE;
            }
            ended = exporting.ended(), if !exporting.is_empty() => break Ending::TaskEnded(ended),
            leading = leadership_changed(&mut leadership) => match (leading, exporter.take()) {
                (Some(true), Some(standby)) => {
                    tracing::info!(
                        "holding the Lease: starting the watches and the prober (the first pod \
                         list is the baseline)"
                    );
                    standby.start(&mut exporting, leadership.clone(), stopped.clone());
                }
                (Some(true), None) => {}
                // Still standing by.
                (Some(false), Some(standby)) => exporter = Some(standby),
                // Lost after leading; or the election ended without a shutdown, which it
                // only does after a loss (perhaps too quick for this loop to see it lead).
                (Some(false), None) | (None, _) => break Ending::LostLease,
            },
        }
    };
    match ending {
        Ending::Signal(name) => tracing::info!(signal = name, "shutting down"),
        Ending::LostLease => tracing::error!(
            "lost the Lease (not renewed in time, or another replica holds it): stopping at \
             once without releasing it, then exiting with code 1 so that Kubernetes restarts \
             this container as a standby"
        ),
        Ending::TaskEnded(ref ended) => tracing::error!(
            "{ended} before shutdown: the metrics would freeze; draining, then exiting with \
             code 1 so that Kubernetes restarts this container"
        ),
    }
    health.begin_shutdown();
    let _ = stop.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_BUDGET, async {
        exporting.drain().await;
        if let Some(election) = election {
            let _ = election.await;
        }
        let _ = server.await;
    });
    if drained.await.is_err() {
        tracing::warn!("shutdown budget exceeded; exiting without waiting further");
    }
    tracing::info!("stopped");
    match ending {
        Ending::Signal(_) => ExitCode::SUCCESS,
        Ending::LostLease | Ending::TaskEnded(_) => ExitCode::FAILURE,
    }
}

/// Why the daemon stops.
enum Ending {
    Signal(&'static str),
    /// Leader election: the Lease was lost while running.
    LostLease,
    /// A long-running task ended (or panicked) before shutdown.
    TaskEnded(Ended),
}

/// The next leadership value; `None` when the election has ended. Never resolves
/// without leader election.
async fn leadership_changed(leadership: &mut Option<watch::Receiver<bool>>) -> Option<bool> {
    match leadership {
        Some(receiver) => match receiver.changed().await {
            Ok(()) => Some(*receiver.borrow_and_update()),
            Err(_) => {
                // Closed: report it once, then stop listening.
                *leadership = None;
                None
            }
        },
        None => std::future::pending().await,
    }
}

/// What observes and probes: the pod and Event watches, Service discovery, the prober and,
/// with `[events]`, the Event writer.
/// Started at once without leader election, on acquiring the Lease with it.
struct Exporter {
    client: Client,
    kube_config: kube::Config,
    scope: Scope,
    observer: Observer,
    metrics: Metrics,
    watch_metrics: WatchMetrics,
    probe_metrics: ProbeMetrics,
    health: Health,
    incidents: SharedIncidentLog,
    prober: Prober,
    /// `[events]` when enabled.
    events: Option<EventsSetup>,
    /// `probes.discovery`: how discovered targets are reached.
    discovery: Option<(ServiceAddress, IpAddr)>,
    /// The node agent and its re-read interval (`selfheal-exporter node`).
    node: Option<(NodeAgent, Duration)>,
}

/// What the Event writer is started with.
struct EventsSetup {
    metrics: EventMetrics,
    max_per_object_per_minute: u32,
    attribution_wait: SignedDuration,
}

impl Exporter {
    /// Starts everything under `supervisor`; the watches register for readiness at once,
    /// so /readyz is 503 until they have listed. With `leadership`, the prober also stops
    /// probing the moment it turns false.
    fn start(
        self,
        supervisor: &mut Supervisor,
        leadership: Option<watch::Receiver<bool>>,
        stopped: watch::Receiver<bool>,
    ) {
        let (target_changes, changes) = tokio::sync::mpsc::channel(256);
        let events = self.events.map(|setup| {
            let (sink, inputs) = EventSink::channel(QUEUE_CAPACITY, &setup.metrics);
            supervisor.spawn(
                "Event writer",
                EventWriter {
                    client: self.client.clone(),
                    planner: EventPlanner::new(
                        setup.max_per_object_per_minute,
                        setup.attribution_wait,
                    ),
                    metrics: setup.metrics,
                    inputs,
                    instance: EventWriter::instance_from_env(),
                }
                .run(stopped.clone()),
            );
            sink
        });
        if let Some((address, node_address)) = self.discovery {
            supervisor.spawn(
                "Service discovery",
                ServiceWatch {
                    client: self.client,
                    scope: self.scope.clone(),
                    address,
                    node_address,
                    changes: target_changes,
                    probe_metrics: self.probe_metrics,
                    watch_metrics: self.watch_metrics.clone(),
                    health: self.health.clone(),
                }
                .start(stopped.clone()),
            );
        } else {
            drop(target_changes);
        }
        let prober = match leadership {
            Some(leadership) => self.prober.with_leadership(leadership),
            None => self.prober,
        };
        let prober = match &events {
            Some(sink) => prober.with_events(sink.clone()),
            None => prober,
        };
        supervisor.spawn("prober", prober.run(changes, stopped.clone()));
        supervisor.spawn(
            "watch loop",
            WatchLoop {
                kube_config: self.kube_config,
                scope: self.scope,
                observer: self.observer,
                metrics: self.metrics,
                watch_metrics: self.watch_metrics,
                health: self.health,
                incidents: self.incidents,
                node: self.node,
                events,
            }
            .start(stopped),
        );
    }
}

/// Says plainly, once, when the API server cannot be reached; the watches (or, on a
/// standby, the election) keep retrying with backoff (their failures are counted in
/// selfheal_watch_errors_total, selfheal_prober_lease_errors_total).
async fn check_api_server(client: Client, api_url: String, standby: bool) {
    let consequence = if standby {
        "retrying; this standby cannot take the Lease meanwhile"
    } else {
        "retrying, /readyz stays 503 until the watches sync"
    };
    match tokio::time::timeout(Duration::from_secs(10), client.apiserver_version()).await {
        Ok(Ok(version)) => {
            tracing::info!(%api_url, version = %version.git_version, "connected to the Kubernetes API server");
        }
        Ok(Err(error)) => tracing::error!(
            "cannot reach the Kubernetes API server at {api_url}: {error}; {consequence}"
        ),
        Err(_) => tracing::error!(
            "cannot reach the Kubernetes API server at {api_url}: no answer in 10 s; {consequence}"
        ),
    }
}

/// `selfheal_web_tls_reloads_total`, `selfheal_web_tls_reload_errors_total`,
/// `selfheal_web_tls_handshake_errors_total`.
fn register_tls_metrics(
    registry: &mut Registry,
    certificate: &ReloadingCertificate,
    handshake_errors: &Counter,
) {
    registry.register(
        "web_tls_handshake_errors",
        "TLS handshakes that failed or timed out (e.g. an untrusted client certificate, plain \
         HTTP on the TLS port)",
        handshake_errors.clone(),
    );
    registry.register(
        "web_tls_reloads",
        "Times the TLS certificate and key were re-read after their files changed",
        certificate.reloads.clone(),
    );
    registry.register(
        "web_tls_reload_errors",
        "Changed TLS certificate or key files that could not be used (the previous \
         certificate is still served)",
        certificate.reload_errors.clone(),
    );
}

fn signed(duration: Duration) -> SignedDuration {
    SignedDuration::try_from(duration).unwrap_or(SignedDuration::MAX)
}
