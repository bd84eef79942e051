//! The lab's emulated kubelet: it watches pods on an API server through its API (kube-rs,
//! like a real kubelet) and runs each container as a real child process, with real
//! memory limits (a memory cgroup per container instance, `OOMKilled` from the kernel's
//! OOM counter), the kubelet's restart back-off, probes, pod status written through the
//! status subresource, and Events.
//!
//! ```no_run
//! use selfheal_lab::apiserver::{ApiServer, ApiServerConfig};
//! use selfheal_lab::kubelet::{Kubelet, KubeletConfig};
//!
//! # async fn demo() -> anyhow::Result<()> {
//! let lab = ApiServer::start(ApiServerConfig::default()).await?;
//! let kubelet = Kubelet::start(KubeletConfig::for_url(&lab.url())?).await?;
//! println!("{:?}", kubelet.status().cgroups);
//! // … create pods (image `selfheal-lab/shell` runs `command` + `args`) …
//! kubelet.shutdown().await; // stops every container, removes every cgroup
//! # Ok(())
//! # }
//! ```
//!
//! Module map: `spec` (reading pods), `images` (image → command), `machine` (the pure
//! per-container state machine), `backoff`, `status` (phase, conditions), `probes`,
//! `runtime` (processes, signals), `cgroup`, `ip` (pod IPs), `events`, `pod` (the pod
//! worker: the I/O layer around the machines).
//!
//! Pods handled: those with `spec.nodeName` equal to the node name, or empty (the lab has
//! no scheduler; a `Scheduled` Event is recorded and `nodeName` left empty). Pods first
//! seen in phase `Succeeded`/`Failed` are left alone.

pub mod backoff;
pub mod cgroup;
pub mod events;
pub mod images;
pub mod ip;
pub mod machine;
mod pod;
pub mod probes;
pub mod runtime;
pub mod spec;
pub mod status;

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::{WatchStreamExt as _, watcher};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub use backoff::BackoffConfig;
pub use cgroup::CgroupVersion;
pub use pod::new_container_id;

use cgroup::CgroupRoot;
use events::Recorder;
use pod::{PodMsg, Shared};
use spec::PodSpec;

/// How to run a [`Kubelet`].
#[derive(Clone)]
pub struct KubeletConfig {
    /// How to reach the API server.
    pub kube: kube::Config,
    /// Node name (default `selfheal-lab-node`).
    pub node_name: String,
    /// The `selfheal-lab` binary, run for the grade API image (default: this executable).
    pub lab_binary: PathBuf,
    /// Restart back-off (default 10 s doubling to 5 min, reset after 10 min).
    pub backoff: BackoffConfig,
    /// First pod IP (default 127.0.1.1).
    pub pod_ip_start: Ipv4Addr,
    /// `hostIP` (default 127.0.0.1).
    pub host_ip: String,
    /// Longest grace period on kubelet shutdown (default 10 s); pod deletion uses the
    /// pod's own `terminationGracePeriodSeconds`.
    pub max_stop_grace: Duration,
    /// Use memory cgroups when available (default true). False: no memory limits, no
    /// `OOMKilled`, as when the machine has no usable cgroup.
    pub use_cgroups: bool,
}

impl std::fmt::Debug for KubeletConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeletConfig")
            .field("cluster_url", &self.kube.cluster_url)
            .field("node_name", &self.node_name)
            .field("lab_binary", &self.lab_binary)
            .field("backoff", &self.backoff)
            .field("pod_ip_start", &self.pod_ip_start)
            .field("max_stop_grace", &self.max_stop_grace)
            .field("use_cgroups", &self.use_cgroups)
            .finish()
    }
}

impl KubeletConfig {
    /// Defaults, talking to the API server as `kube` says.
    pub fn new(kube: kube::Config) -> Self {
        KubeletConfig {
            kube,
            node_name: "selfheal-lab-node".into(),
            lab_binary: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("selfheal-lab")),
            backoff: BackoffConfig::default(),
            pod_ip_start: ip::DEFAULT_START,
            host_ip: "127.0.0.1".into(),
            max_stop_grace: Duration::from_secs(10),
            use_cgroups: true,
        }
    }

    /// Defaults for a plain-HTTP API server at `url` (e.g. the lab's `http://127.0.0.1:PORT`).
    pub fn for_url(url: &str) -> anyhow::Result<Self> {
        let uri = url
            .parse()
            .map_err(|e| anyhow::anyhow!("bad API server URL {url:?}: {e}"))?;
        let mut kube = kube::Config::new(uri);
        kube.default_namespace = "default".into();
        Ok(Self::new(kube))
    }
}

/// Whether memory limits are enforced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupStatus {
    /// One memory cgroup per container instance, beneath `root`.
    Enabled {
        /// v1 or v2.
        version: CgroupVersion,
        /// The kubelet's cgroup directory (removed on shutdown).
        root: PathBuf,
    },
    /// No cgroup could be created: no memory limit is enforced and no `OOMKilled` is
    /// ever reported.
    Unavailable {
        /// Why.
        reason: String,
    },
}

/// What the kubelet says about itself.
#[derive(Debug, Clone)]
pub struct KubeletStatus {
    /// Node name.
    pub node_name: String,
    /// Memory limit enforcement.
    pub cgroups: CgroupStatus,
}

/// The emulated kubelet.
pub struct Kubelet;

/// A running kubelet; [`shutdown`](Self::shutdown) stops it (dropping it aborts it;
/// container process groups are still killed and cgroups removed).
pub struct KubeletHandle {
    status: KubeletStatus,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    pods: Arc<std::sync::atomic::AtomicUsize>,
}

impl Kubelet {
    /// Connects to the API server and starts watching and running pods in the background.
    /// Must be called inside a tokio runtime.
    pub async fn start(config: KubeletConfig) -> anyhow::Result<KubeletHandle> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = kube::Client::try_from(config.kube.clone())
            .map_err(|e| anyhow::anyhow!("cannot build the API client: {e}"))?;
        let (cgroups, cgroup_status) = if config.use_cgroups {
            match CgroupRoot::detect() {
                Ok(root) => {
                    tracing::info!(root = %root.path().display(), version = ?root.version(), "kubelet: memory limits enforced with cgroups");
                    let st = CgroupStatus::Enabled {
                        version: root.version(),
                        root: root.path().to_path_buf(),
                    };
                    (Some(Arc::new(root)), st)
                }
                Err(reason) => {
                    tracing::warn!(%reason, "kubelet: NO MEMORY CGROUP: memory limits are not enforced and OOMKilled is never reported");
                    (None, CgroupStatus::Unavailable { reason })
                }
            }
        } else {
            let reason = "disabled by configuration".to_string();
            tracing::warn!(%reason, "kubelet: NO MEMORY CGROUP: memory limits are not enforced and OOMKilled is never reported");
            (None, CgroupStatus::Unavailable { reason })
        };
        let (recorder, recorder_task) = Recorder::start(client.clone(), config.node_name.clone());
        let status = KubeletStatus {
            node_name: config.node_name.clone(),
            cgroups: cgroup_status,
        };
        let pods = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let shared = Arc::new(Shared {
            client,
            recorder,
            cgroups,
            config,
        });
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(run(shared, stopped, recorder_task, pods.clone()));
        Ok(KubeletHandle {
            status,
            stop: Some(stop),
            task: Some(task),
            pods,
        })
    }
}

impl KubeletHandle {
    /// Node name and whether memory limits are enforced.
    pub fn status(&self) -> &KubeletStatus {
        &self.status
    }

    /// Number of pods the kubelet runs right now.
    pub fn pods(&self) -> usize {
        self.pods.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops every container (SIGTERM, SIGKILL after the grace period, capped by
    /// `max_stop_grace`), removes every cgroup, and waits for all of it.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for KubeletHandle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

struct WorkerHandle {
    key: (String, String),
    tx: mpsc::UnboundedSender<PodMsg>,
    task: JoinHandle<()>,
}

async fn run(
    shared: Arc<Shared>,
    mut stopped: oneshot::Receiver<()>,
    recorder_task: JoinHandle<()>,
    pods: Arc<std::sync::atomic::AtomicUsize>,
) {
    // Removes the cgroup root even if this task is aborted.
    struct RootGuard(Option<Arc<CgroupRoot>>);
    impl Drop for RootGuard {
        fn drop(&mut self) {
            if let Some(root) = &self.0 {
                root.remove();
            }
        }
    }
    let _root = RootGuard(shared.cgroups.clone());
    // If this task is aborted (handle dropped without `shutdown`), the pod workers are
    // aborted too: their instances' guards kill the process groups and remove cgroups.
    struct AbortAll(Vec<tokio::task::AbortHandle>);
    impl Drop for AbortAll {
        fn drop(&mut self) {
            for h in &self.0 {
                h.abort();
            }
        }
    }
    let mut abort_all = AbortAll(vec![recorder_task.abort_handle()]);
    let ar = ApiResource::erase::<Pod>(&());
    let api: Api<DynamicObject> = Api::all_with(shared.client.clone(), &ar);
    let mut stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut workers: HashMap<String, WorkerHandle> = HashMap::new();
    let mut stopping: Vec<JoinHandle<()>> = vec![];
    let mut listed: Option<HashSet<String>> = None;
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            ev = stream.next() => match ev {
                None => break,
                Some(Err(e)) => tracing::warn!(error = %e, "kubelet: pod watch failed; retrying"),
                Some(Ok(watcher::Event::Init)) => listed = Some(HashSet::new()),
                Some(Ok(watcher::Event::InitApply(obj))) => {
                    if let Some(uid) = obj.metadata.uid.clone() {
                        listed.get_or_insert_with(HashSet::new).insert(uid);
                    }
                    apply(&shared, &mut workers, &mut stopping, &obj, &mut abort_all.0);
                }
                Some(Ok(watcher::Event::InitDone)) => {
                    if let Some(listed) = listed.take() {
                        let gone: Vec<String> = workers.keys().filter(|u| !listed.contains(*u)).cloned().collect();
                        for uid in gone {
                            delete(&mut workers, &mut stopping, &uid);
                        }
                    }
                }
                Some(Ok(watcher::Event::Apply(obj))) => {
                    apply(&shared, &mut workers, &mut stopping, &obj, &mut abort_all.0);
                }
                Some(Ok(watcher::Event::Delete(obj))) => {
                    if let Some(uid) = &obj.metadata.uid {
                        delete(&mut workers, &mut stopping, uid);
                    }
                }
            }
        }
        stopping.retain(|t| !t.is_finished());
        abort_all.0.retain(|h| !h.is_finished());
        pods.store(workers.len(), std::sync::atomic::Ordering::Relaxed);
    }
    tracing::info!(pods = workers.len(), "kubelet: shutting down");
    for w in workers.values() {
        let _ = w.tx.send(PodMsg::Shutdown);
    }
    stopping.extend(workers.into_values().map(|w| w.task));
    let limit = shared.config.max_stop_grace + Duration::from_secs(10);
    for t in stopping {
        let abort = t.abort_handle();
        if tokio::time::timeout(limit, t).await.is_err() {
            abort.abort();
        }
    }
    pods.store(0, std::sync::atomic::Ordering::Relaxed);
    recorder_task.abort();
}

fn apply(
    shared: &Arc<Shared>,
    workers: &mut HashMap<String, WorkerHandle>,
    stopping: &mut Vec<JoinHandle<()>>,
    obj: &DynamicObject,
    aborts: &mut Vec<tokio::task::AbortHandle>,
) {
    let raw = serde_json::to_value(obj).unwrap_or(Value::Null);
    let Some(pod) = PodSpec::parse(&raw) else {
        return;
    };
    if workers.contains_key(&pod.uid) {
        return; // running; spec updates are not applied (containers are immutable)
    }
    if !pod.node_name.is_empty() && pod.node_name != shared.config.node_name {
        return;
    }
    if pod.phase == "Succeeded" || pod.phase == "Failed" {
        return;
    }
    let key = (pod.namespace.clone(), pod.name.clone());
    let replaced: Vec<String> = workers
        .iter()
        .filter(|(_, w)| w.key == key)
        .map(|(u, _)| u.clone())
        .collect();
    for uid in replaced {
        delete(workers, stopping, &uid);
    }
    let uid = pod.uid.clone();
    match pod::spawn(shared.clone(), pod, &raw) {
        Some((tx, task)) => {
            aborts.push(task.abort_handle());
            workers.insert(uid, WorkerHandle { key, tx, task });
        }
        None => tracing::error!(pod = %key.1, "kubelet: no pod IP left"),
    }
}

fn delete(
    workers: &mut HashMap<String, WorkerHandle>,
    stopping: &mut Vec<JoinHandle<()>>,
    uid: &str,
) {
    if let Some(w) = workers.remove(uid) {
        let _ = w.tx.send(PodMsg::Delete);
        stopping.push(w.task);
    }
}

/// Parses `10s`, `5m`, `1m30s`, `500ms`, `2h` or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Ok(Duration::from_secs_f64(secs));
        }
        return Err(format!("invalid duration {s:?}"));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let split = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("invalid duration {s:?}: missing unit"))?;
        let (num, tail) = rest.split_at(split);
        let n: f64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let mult = match unit {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(format!("invalid duration {s:?}: unknown unit {unit:?}")),
        };
        total += Duration::from_secs_f64(n * mult);
        rest = next;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("s").is_err());
    }
}
