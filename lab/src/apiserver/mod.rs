//! The lab's Kubernetes API server: an in-memory, plain-HTTP server faithful
//! where kube-rs and kubectl depend on it (see the crate docs for an example).
//!
//! Module map: `resources` (the served types), `store` (objects, revisions,
//! history), `selectors`, `patch`, `defaults` (create-time defaulting),
//! `watch` (watch streams), `routes` (HTTP), `discovery`, `table` (kubectl
//! printing), `faults` (fault injection), `kubeconfig`, `error` (`Status`),
//! `apply` (server-side apply and `managedFields`), `update_rules` (what an
//! update may not change).

mod apply;
mod defaults;
mod discovery;
mod error;
mod faults;
pub mod kubeconfig;
mod patch;
pub mod resources;
mod routes;
mod selectors;
mod store;
mod table;
mod update_rules;
mod watch;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use apply::{is_apply_content_type, manager_from_user_agent};
pub use error::{ApiError, ApiResult};
pub use faults::Faults;
pub use patch::Patch;
pub use resources::{
    ENDPOINT_SLICES, EVENTS, EVENTS_V1, LEASES, NAMESPACES, PODS, RESOURCES, ResourceType, SERVICES,
};
pub use routes::{AppState, router};
pub use selectors::{FieldSelector, LabelSelector, Selector};
pub use store::{
    ApplyOptions, ChangeKind, DEFAULT_HISTORY, DeleteOptions, ListOptions, Store, WriteOptions,
};
pub use table::human_duration;
pub use watch::WatchHub;

/// How to run an [`ApiServer`].
#[derive(Debug, Clone)]
pub struct ApiServerConfig {
    /// Address to bind; port 0 picks a free port. Default `127.0.0.1:0`.
    pub listen: SocketAddr,
    /// Changes retained for watch resumption. Default [`DEFAULT_HISTORY`].
    pub history: usize,
    /// Interval between watch bookmarks (for `allowWatchBookmarks=true`). Default 1 s.
    pub bookmark_interval: Duration,
}

impl Default for ApiServerConfig {
    fn default() -> Self {
        ApiServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            history: DEFAULT_HISTORY,
            bookmark_interval: Duration::from_secs(1),
        }
    }
}

/// A running lab API server. Dropping it stops serving (use
/// [`shutdown`](Self::shutdown) to wait for that).
pub struct ApiServer {
    addr: SocketAddr,
    store: Arc<Store>,
    hub: Arc<WatchHub>,
    faults: Arc<Faults>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl ApiServer {
    /// Binds `config.listen` and starts serving in the background.
    pub async fn start(config: ApiServerConfig) -> std::io::Result<Self> {
        let store = Arc::new(Store::new(config.history));
        let hub = Arc::new(WatchHub::new(config.bookmark_interval));
        let faults = Arc::new(Faults::new(store.clone(), hub.clone()));
        let listener = TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let app = router(AppState {
            store: store.clone(),
            hub: hub.clone(),
            faults: faults.clone(),
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = stopped.await;
            });
            if let Err(e) = serve.await {
                tracing::warn!(error = %e, "lab API server stopped with an error");
            }
        });
        tracing::debug!(%addr, "lab API server listening");
        Ok(ApiServer {
            addr,
            store,
            hub,
            faults,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The object store (direct in-process access, same semantics and watch
    /// events as HTTP).
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Fault injection.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Number of watch streams open right now.
    pub fn open_watches(&self) -> usize {
        self.hub.active()
    }

    /// Waits (up to `timeout`) until at least `n` watch streams are open.
    pub async fn wait_for_watches(&self, n: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.hub.active() < n {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }

    /// kubeconfig YAML for this server (context `selfheal-lab`).
    pub fn kubeconfig(&self) -> String {
        kubeconfig::render(&self.url())
    }

    /// Writes [`kubeconfig`](Self::kubeconfig) to `path`.
    pub fn write_kubeconfig(&self, path: impl AsRef<Path>) -> std::io::Result<()> {
        kubeconfig::write(&self.url(), path.as_ref())
    }

    /// Stops serving: closes watch streams and waits (up to 5 s) for open
    /// requests to finish.
    pub async fn shutdown(mut self) {
        self.hub.drop_all();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.hub.drop_all();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
