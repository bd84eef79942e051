//! A lab API server loaded with the fleet, and the writer that streams its updates.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use selfheal_lab::apiserver::{ApiServer, ApiServerConfig, NAMESPACES, Store};
use selfheal_lab::testkit::fleet::{Fleet, NAMESPACE_NAMES};
use serde_json::json;

use crate::STOP;

pub(crate) const MIB: f64 = 1024.0 * 1024.0;
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_millis(100);
pub(crate) const HTTP_TIMEOUT: Duration = Duration::from_secs(60);

pub(crate) fn mark(ok: bool) -> &'static str {
    if ok { "" } else { " ← MISMATCH" }
}

pub(crate) fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB
}

/// A lab API server and the daemon's kubeconfig for it.
pub(crate) struct Rig {
    pub(crate) lab: ApiServer,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) kubeconfig: PathBuf,
}

impl Rig {
    pub(crate) async fn start(history: usize) -> Result<Rig> {
        let dir = tempfile::tempdir().context("temporary directory")?;
        let lab = ApiServer::start(ApiServerConfig {
            history,
            ..ApiServerConfig::default()
        })
        .await
        .context("lab API server starts")?;
        let kubeconfig = dir.path().join("kubeconfig");
        lab.write_kubeconfig(&kubeconfig)
            .context("lab kubeconfig written")?;
        Ok(Rig {
            lab,
            dir,
            kubeconfig,
        })
    }

    /// Plans and creates `pods` pods (and their namespaces).
    pub(crate) async fn load(&self, pods: usize, phase: &str) -> Result<Fleet> {
        eprintln!("scale[{phase}]: loading {pods} pods into the lab…");
        let started = Instant::now();
        let fleet = Fleet::plan(pods);
        for namespace in &NAMESPACE_NAMES[..fleet.namespace_count()] {
            self.lab
                .store()
                .create(&NAMESPACES, "", json!({"metadata": {"name": namespace}}))
                .with_context(|| format!("namespace {namespace} created"))?;
        }
        let store = self.lab.store().clone();
        let fleet = tokio::task::spawn_blocking(move || fleet.load(&store))
            .await
            .context("loader thread")??;
        let load_time = started.elapsed();
        println!(
            "[{phase}] pods loaded: {} ({} containers, {} workloads in {} namespaces; JSON avg {:.1} KiB, min {:.1}, max {:.1}; lab load {:.1} s)",
            fleet.pods().len(),
            fleet.container_count(),
            fleet.workloads,
            fleet.namespace_count(),
            fleet.json_bytes as f64 / fleet.pods().len() as f64 / 1024.0,
            fleet.json_min as f64 / 1024.0,
            fleet.json_max as f64 / 1024.0,
            load_time.as_secs_f64()
        );
        Ok(fleet)
    }

    pub(crate) async fn shutdown(self) {
        self.lab.shutdown().await;
        drop(self.dir);
    }
}

/// Streams `count` updates from a blocking thread; returns the fleet (and the event lines
/// when `capture`).
pub(crate) async fn stream(
    fleet: Fleet,
    store: &Arc<Store>,
    count: usize,
    capture: bool,
) -> Result<(Fleet, Vec<Vec<u8>>)> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || fleet.stream_updates(&store, count, capture, Some(&STOP)))
        .await
        .context("writer thread")?
}
