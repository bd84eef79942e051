//! The daemon's wiring: client, metrics registry, HTTP server, watch loop, and the
//! shutdown sequence (readiness off, watches stopped, server drained, all within 5 s).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use jiff::SignedDuration;
use kube::Client;
use prometheus_client::registry::Registry;
use selfheal_exporter::admin::{self, AdminState};
use selfheal_exporter::cardinality::CardinalityGuard;
use selfheal_exporter::client::kube_config;
use selfheal_exporter::config::Config;
use selfheal_exporter::exposition;
use selfheal_exporter::health::Health;
use selfheal_exporter::incidents::IncidentLog;
use selfheal_exporter::leader::{self, LeaderMetrics, LeaderSettings};
use selfheal_exporter::metrics::{Metrics, register_build_info};
use selfheal_exporter::observer::{Observer, ObserverConfig};
use selfheal_exporter::prober::Prober;
use selfheal_exporter::prober::metrics::ProbeMetrics;
use selfheal_exporter::prober::service_watch::ServiceWatch;
use selfheal_exporter::shutdown;
use selfheal_exporter::watch::{Scope, WatchLoop, WatchMetrics};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::cli::RunArgs;

/// The whole shutdown must finish well inside Kubernetes' default 30 s grace period;
/// we promise 5 s.
const SHUTDOWN_BUDGET: Duration = Duration::from_millis(4500);

pub async fn run(config: Config, args: RunArgs) -> ExitCode {
    let kube = match kube_config(args.kubeconfig.as_deref(), args.context.as_deref()).await {
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
    let leader_election = LeaderSettings::from_config(&config.probes.leader_election);
    let leader_metrics = leader_election
        .as_ref()
        .map(|_| LeaderMetrics::register(&mut registry));
    let incidents =
        IncidentLog::new(config.incidents.capacity, config.probes.correlation_slack).shared();
    let prober = match config
        .probe_specs()
        .map_err(|error| error.to_string())
        .and_then(|specs| {
            Prober::new(
                specs,
                probe_metrics.clone(),
                incidents.clone(),
                config.metrics.retention,
                config.sharding,
            )
            .map_err(|error| error.to_string())
        }) {
        Ok(prober) => prober,
        Err(error) => {
            tracing::error!("{error}");
            return ExitCode::from(2);
        }
    };
    let health = Health::default();
    let scope = Scope::from_config(&config.watch);
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
    let app = admin::app(AdminState {
        registry: Arc::new(registry),
        aborted_scrapes,
        health: health.clone(),
        incidents: incidents.clone(),
    });
    let mut server_stop = stopped.clone();
    let mut server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = server_stop.wait_for(|stop| *stop).await;
            })
            .await
    });
    tracing::info!(
        listen = %config.listen,
        %api_url,
        version = env!("CARGO_PKG_VERSION"),
        shard = config.sharding.shard,
        total_shards = config.sharding.total_shards,
        leader_election = config.probes.leader_election.enabled,
        "selfheal-exporter started"
    );
    tokio::spawn(check_api_server(client.clone(), api_url));
    let (target_changes, changes) = tokio::sync::mpsc::channel(256);
    if config.probes.discovery {
        tokio::spawn(
            ServiceWatch {
                client: client.clone(),
                scope: scope.clone(),
                address: config.probes.service_address,
                node_address: config.probes.node_address,
                changes: target_changes,
                probe_metrics,
                watch_metrics: watch_metrics.clone(),
                health: health.clone(),
            }
            .run(stopped.clone()),
        );
    } else {
        drop(target_changes);
    }
    // With leader election, the prober probes only while this replica holds the Lease;
    // on shutdown the election stops publishing leadership, then releases the Lease.
    let (prober, election) = match (leader_election, leader_metrics) {
        (Some(settings), Some(metrics)) => {
            let (leadership, election) =
                leader::start(client.clone(), settings, metrics, stopped.clone());
            (prober.with_leadership(leadership), Some(election))
        }
        _ => (prober, None),
    };
    let probes = tokio::spawn(prober.run(changes, stopped.clone()));
    let watches = tokio::spawn(
        WatchLoop {
            kube_config: kube,
            scope,
            observer,
            metrics,
            watch_metrics,
            health: health.clone(),
            incidents,
        }
        .start(stopped),
    );

    let signal = tokio::select! {
        signal = shutdown::first_signal() => signal,
        result = &mut server => {
            tracing::error!("HTTP server stopped unexpectedly: {result:?}");
            return ExitCode::FAILURE;
        }
    };
    match signal {
        Ok(name) => tracing::info!(signal = name, "shutting down"),
        Err(error) => {
            tracing::error!("cannot listen for signals: {error}");
            return ExitCode::FAILURE;
        }
    }
    health.begin_shutdown();
    let _ = stop.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_BUDGET, async {
        let _ = watches.await;
        let _ = probes.await;
        if let Some(election) = election {
            let _ = election.await;
        }
        let _ = server.await;
    });
    if drained.await.is_err() {
        tracing::warn!("shutdown budget exceeded; exiting without waiting further");
    }
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// Says plainly, once, when the API server cannot be reached; the watches keep retrying
/// with backoff (their failures are counted in selfheal_watch_errors_total).
async fn check_api_server(client: Client, api_url: String) {
    match tokio::time::timeout(Duration::from_secs(10), client.apiserver_version()).await {
        Ok(Ok(version)) => {
            tracing::info!(%api_url, version = %version.git_version, "connected to the Kubernetes API server");
        }
        Ok(Err(error)) => tracing::error!(
            "cannot reach the Kubernetes API server at {api_url}: {error}; retrying, /readyz stays 503 until the watches sync"
        ),
        Err(_) => tracing::error!(
            "cannot reach the Kubernetes API server at {api_url}: no answer in 10 s; retrying, /readyz stays 503 until the watches sync"
        ),
    }
}

fn signed(duration: Duration) -> SignedDuration {
    SignedDuration::try_from(duration).unwrap_or(SignedDuration::MAX)
}
