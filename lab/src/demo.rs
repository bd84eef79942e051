//! `selfheal-lab demo`: the grade-submission experiment, for real, in one command.
//!
//! Starts the lab API server, the emulated kubelet and the Service proxy, applies the
//! experiment's manifests (`lab/manifests/grade-submission.yaml`: the bare pod under a
//! 48Mi limit, its NodePort Service on 31000, annotated for probing), starts the
//! selfheal-exporter daemon against the lab, and drives virtual users at
//! `http://127.0.0.1:31000/grade` until the kernel OOM-kills the API. Meanwhile it prints
//! a live account of every restart, recovery and outage as the daemon reports them, and
//! at the end the daemon's numbers next to the load generator's ground truth.
//! Ctrl-C stops everything and leaves no processes or cgroups behind.
//!
//! With `--cluster real` the same experiment runs on the real one-node cluster
//! ([`crate::cluster`]: upstream kube-apiserver, kubelet, containerd, kube-proxy), brought
//! up for the demo in its own state dirs and down at its end: the manifests are applied
//! with the real kubectl, the pod runs in containerd under the kubelet's cgroup limit, the
//! NodePort is kube-proxy's on the node IP, and the daemon watches the real API server.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::apiserver::{ApiServer, ApiServerConfig, NAMESPACES, PODS, SERVICES};
use crate::http_get::{get as http_get, get_from};
use crate::kubelet::{CgroupStatus, Kubelet, KubeletConfig};
use crate::load::{LoadConfig, LoadReport, run_load};
use crate::services::ServiceController;

/// The experiment's manifests, applied by the demo.
pub const MANIFESTS: &str = include_str!("../manifests/grade-submission.yaml");
const NAMESPACE: &str = "grade-submission";
const NODE_PORT: u16 = 31000;

/// Where the experiment runs.
#[derive(Debug, Clone)]
pub enum DemoCluster {
    /// The lab's API server, emulated kubelet and Service proxy in this process (quick).
    Embedded {
        /// Where the lab API server listens.
        api_listen: SocketAddr,
        /// The kubelet's first restart back-off (the real kubelet's is 10 s).
        backoff_base: Duration,
    },
    /// The real cluster (root).
    Real {
        /// The upstream binaries; `None`: what `lab/upstream/build.sh` builds or has
        /// cached.
        bin_dir: Option<PathBuf>,
    },
}

/// The real cluster's dirs for the demo, apart from `cluster up`'s defaults so that the
/// demo never tears down a cluster someone brought up by hand.
const DEMO_STATE_DIR: &str = "/var/lib/selfheal-lab/demo-cluster";
const DEMO_RUN_DIR: &str = "/run/selfheal-lab-demo";

/// The demo's settings, from `selfheal-lab demo`'s flags.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// Virtual users hitting the grade API.
    pub users: usize,
    /// How long they run.
    pub duration: Duration,
    /// resources.limits.memory of the grade API, e.g. `48Mi`.
    pub memory_limit: String,
    /// Pause of each virtual user between iterations.
    pub think: Duration,
    /// Where the daemon serves /metrics.
    pub metrics_listen: SocketAddr,
    /// The embedded lab or the real cluster.
    pub cluster: DemoCluster,
    /// The selfheal-exporter binary; default: next to this program.
    pub exporter: Option<PathBuf>,
    /// Kubeconfig, daemon config and log go here.
    pub work_dir: PathBuf,
}

/// Runs the demo until the load ends or Ctrl-C.
pub async fn run(config: DemoConfig) -> anyhow::Result<()> {
    let exporter = locate_exporter(config.exporter.as_deref())?;
    std::fs::create_dir_all(&config.work_dir)
        .with_context(|| format!("cannot create {}", config.work_dir.display()))?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The demo reads the daemon on this address: another process there would be read
    // instead (a clear error now rather than someone else's numbers).
    std::net::TcpListener::bind(config.metrics_listen).with_context(|| {
        format!(
            "--metrics-listen {} is in use (or not this host's): pick another address",
            config.metrics_listen
        )
    })?;
    match config.cluster.clone() {
        DemoCluster::Embedded {
            api_listen,
            backoff_base,
        } => run_embedded(&config, &exporter, api_listen, backoff_base).await,
        DemoCluster::Real { bin_dir } => run_real(&config, &exporter, bin_dir).await,
    }
}

/// The experiment on the real cluster: up, apply, daemon on the host, load through
/// kube-proxy's NodePort on the node IP, down.
async fn run_real(
    config: &DemoConfig,
    exporter: &Path,
    bin_dir: Option<PathBuf>,
) -> anyhow::Result<()> {
    use crate::cluster;
    let bin = match bin_dir {
        Some(bin) => bin,
        None => {
            println!("building or checking the upstream binaries (lab/upstream/build.sh)…");
            cluster::build_upstream()?
        }
    };
    let layout = cluster::Layout::new(Path::new(DEMO_STATE_DIR), Path::new(DEMO_RUN_DIR), bin);
    let lab_binary = std::env::current_exe().context("locating this program")?;
    println!("bringing up the real cluster ({DEMO_STATE_DIR})…");
    // Blocking work (processes, kubectl) off the runtime's threads.
    let up = {
        let (layout, exporter) = (layout.clone(), exporter.to_path_buf());
        tokio::task::spawn_blocking(move || cluster::up(&layout, &lab_binary, Some(&exporter)))
            .await?
    };
    let outcome = match up {
        Ok(report) => real_experiment(config, exporter, &layout, &report.admin_kubeconfig).await,
        Err(error) => Err(anyhow::Error::new(error).context("cluster up failed")),
    };
    println!("bringing the real cluster down…");
    let down = {
        let layout = layout.clone();
        tokio::task::spawn_blocking(move || cluster::down(&layout)).await?
    };
    match down {
        Ok(report) if report.leftovers.is_empty() => {
            println!("stopped: the cluster is down, nothing left behind");
        }
        Ok(report) => println!("WARNING: cluster down left {:?}", report.leftovers),
        Err(error) => println!("WARNING: cluster down failed: {error}"),
    }
    outcome
}

async fn real_experiment(
    config: &DemoConfig,
    exporter: &Path,
    layout: &crate::cluster::Layout,
    kubeconfig: &Path,
) -> anyhow::Result<()> {
    let manifests = manifests_with_limit(&config.memory_limit)?;
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": manifests});
    kubectl_apply(&layout.binary("kubectl"), kubeconfig, &list.to_string())?;
    let node_ip: std::net::IpAddr = crate::cluster::pki::NODE_IP.parse()?;
    let mut daemon = Daemon::start(exporter, kubeconfig, config, node_ip)?;
    println!("selfheal-exporter demo: the grade-submission experiment, on the real cluster");
    print_endpoints(config, kubeconfig, &daemon, node_ip);
    let node_port = SocketAddr::new(node_ip, NODE_PORT);
    let outcome = tokio::select! {
        outcome = experiment(config, node_port, &mut daemon) => outcome,
        _ = shutdown_signal() => {
            println!("\ninterrupted: stopping everything");
            Ok(())
        }
    };
    daemon.stop();
    outcome
}

/// `kubectl apply -f -` of `document` (JSON or YAML) with the given kubeconfig.
fn kubectl_apply(kubectl: &Path, kubeconfig: &Path, document: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut child = Command::new(kubectl)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", kubectl.display()))?;
    child
        .stdin
        .take()
        .context("kubectl's stdin")?
        .write_all(document.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "kubectl apply failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn print_endpoints(
    config: &DemoConfig,
    kubeconfig: &Path,
    daemon: &Daemon,
    node_ip: std::net::IpAddr,
) {
    println!("  metrics:  http://{}/metrics", config.metrics_listen);
    println!(
        "  incidents: http://{}/api/v1/incidents",
        config.metrics_listen
    );
    println!(
        "  kubectl:  kubectl --kubeconfig {} get pods -n {NAMESPACE}",
        kubeconfig.display()
    );
    println!("  daemon log: {}", daemon.log.display());
    println!(
        "  load:     {} users for {}s at http://{node_ip}:{NODE_PORT}/grade, limit {}",
        config.users,
        config.duration.as_secs(),
        config.memory_limit
    );
}

/// The experiment on the embedded lab.
async fn run_embedded(
    config: &DemoConfig,
    exporter: &Path,
    api_listen: SocketAddr,
    backoff_base: Duration,
) -> anyhow::Result<()> {
    let lab = ApiServer::start(ApiServerConfig {
        listen: api_listen,
        ..ApiServerConfig::default()
    })
    .await
    .with_context(|| format!("cannot start the lab API server on {api_listen}"))?;
    let kubeconfig = config.work_dir.join("kubeconfig");
    lab.write_kubeconfig(&kubeconfig)?;
    let mut kubelet_config = KubeletConfig::for_url(&lab.url())?;
    kubelet_config.backoff.base = backoff_base;
    let client = kube::Client::try_from(kubelet_config.kube.clone())?;
    let services = ServiceController::start(client);
    let kubelet = Kubelet::start(kubelet_config).await?;
    if let CgroupStatus::Unavailable { reason } = &kubelet.status().cgroups {
        println!(
            "WARNING: no memory cgroup ({reason}): memory limits are not enforced, the kernel \
             will not OOM-kill the API and the demo will show no OOMKills."
        );
    }
    apply_manifests(&lab, &config.memory_limit)?;

    let loopback = std::net::IpAddr::from([127, 0, 0, 1]);
    let mut daemon = Daemon::start(exporter, &kubeconfig, config, loopback)?;
    println!("selfheal-exporter demo: the grade-submission experiment, for real");
    print_endpoints(config, &kubeconfig, &daemon, loopback);

    let outcome = tokio::select! {
        outcome = async {
            if !services
                .wait_for_node_port(NODE_PORT, Duration::from_secs(30))
                .await
            {
                bail!("the Service's NodePort {NODE_PORT} did not open");
            }
            experiment(config, SocketAddr::new(loopback, NODE_PORT), &mut daemon).await
        } => outcome,
        _ = shutdown_signal() => {
            println!("\ninterrupted: stopping everything");
            Ok(())
        }
    };
    daemon.stop();
    kubelet.shutdown().await;
    services.shutdown().await;
    lab.shutdown().await;
    println!("stopped: no processes or cgroups left behind");
    outcome
}

/// Waits for the daemon and the grade API behind `node_port`, drives the load, and
/// prints the daemon's account next to the load generator's.
async fn experiment(
    config: &DemoConfig,
    node_port: SocketAddr,
    daemon: &mut Daemon,
) -> anyhow::Result<()> {
    println!("\nwaiting for the pod, the Service and the daemon…");
    let port = config.metrics_listen.port();
    wait_until(Duration::from_secs(60), || async {
        matches!(http_get(port, "/readyz").await, Some((200, _)))
    })
    .await
    .with_context(|| {
        format!(
            "the daemon did not become ready; see {}",
            daemon.log.display()
        )
    })?;
    // What answered must be our daemon, not another process on the port: one that cannot
    // listen exits at once.
    tokio::time::sleep(Duration::from_secs(1)).await;
    daemon.ensure_running()?;
    // The real kubelet starts the pod within seconds; the first image unpack takes longer.
    wait_until(Duration::from_secs(120), || async {
        matches!(
            get_from(node_port, "/healthz", None, Duration::from_secs(2)).await,
            Some((200, _))
        )
    })
    .await
    .context("the grade API did not answer through its Service")?;
    println!("ready: load starts\n");

    let reporter = tokio::spawn(report_incidents(port));
    let mut load = LoadConfig::new(
        format!("http://{node_port}/grade"),
        config.users,
        config.duration,
    );
    load.think = config.think;
    let report = run_load(load, |second| println!("  load {second}")).await?;
    // The users have stopped; if the API is down (in back-off), let it come back so the
    // summary includes its recovery.
    let probe_up = || async {
        let metrics = http_get(port, "/metrics")
            .await
            .map(|(_, body)| body)
            .unwrap_or_default();
        metric_sum(
            &metrics,
            "selfheal_probe_up",
            &[("service", "grade-submission-api")],
        ) >= 1.0
    };
    if !probe_up().await {
        println!("\nthe load has stopped; waiting for the API to come back from its back-off…");
        if wait_until(Duration::from_secs(330), probe_up)
            .await
            .is_err()
        {
            println!("the API did not come back within the kubelet's longest back-off");
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    reporter.abort();
    summary(port, &report).await;
    daemon.check_alive();
    Ok(())
}

/// Prints each restart, recovery and outage once, as the daemon reports them.
async fn report_incidents(port: u16) {
    let mut seen: HashSet<(String, u64, bool)> = HashSet::new();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Some((200, body)) = http_get(port, "/api/v1/incidents?limit=50").await else {
            continue;
        };
        let Ok(json) = serde_json::from_str::<Value>(&body) else {
            continue;
        };
        let mut incidents: Vec<&Value> =
            json["incidents"].as_array().into_iter().flatten().collect();
        incidents.reverse();
        for incident in incidents {
            let kind = incident["kind"].as_str().unwrap_or("").to_owned();
            let id = incident["id"].as_u64().unwrap_or(0);
            let recovered = !incident["time_to_recover_seconds"].is_null();
            if !seen.insert((kind.clone(), id, recovered)) {
                continue;
            }
            println!("  >>> {}", describe(incident));
        }
    }
}

fn describe(incident: &Value) -> String {
    let text = |key: &str| incident[key].as_str().unwrap_or("?").to_owned();
    match incident["kind"].as_str() {
        Some("restart") => {
            let limit = incident["memory_limit_bytes"]
                .as_u64()
                .map(|bytes| format!(" at memory limit {}Mi", bytes / (1024 * 1024)))
                .unwrap_or_default();
            let recovery = match incident["time_to_recover_seconds"].as_f64() {
                Some(seconds) => format!(", ready again {seconds:.1} s after the kill"),
                None => ", restarting…".to_owned(),
            };
            format!(
                "RESTART {}/{}: {} (exit {}){limit}, killed at {}{recovery}",
                text("pod"),
                text("container"),
                text("cause"),
                incident["exit_code"],
                text("killed_at"),
            )
        }
        Some("outage") => format!(
            "OUTAGE {}: clients saw {:.2} s of downtime ({} failed probes), cause: {}",
            text("target"),
            incident["downtime_seconds"].as_f64().unwrap_or(0.0),
            incident["failed_probes"],
            text("cause"),
        ),
        _ => incident.to_string(),
    }
}

async fn summary(port: u16, load: &LoadReport) {
    let metrics = http_get(port, "/metrics")
        .await
        .map(|(_, body)| body)
        .unwrap_or_default();
    let sum = |name: &str, filter: &[(&str, &str)]| -> f64 { metric_sum(&metrics, name, filter) };
    println!("\n== What selfheal-exporter measured ==");
    for cause in [
        "OOMKilled",
        "LivenessProbeFailed",
        "StartupProbeFailed",
        "Error",
        "Completed",
        "Unknown",
    ] {
        let restarts = sum("selfheal_container_restarts_total", &[("reason", cause)]);
        if restarts > 0.0 {
            println!("restarts, {cause:<20} {restarts}");
        }
    }
    println!(
        "OOMKills                        {}",
        sum("selfheal_container_oom_kills_total", &[])
    );
    let ttr_count = sum("selfheal_container_time_to_recover_seconds_count", &[]);
    if ttr_count > 0.0 {
        println!(
            "time to recover (kill → ready)  {} recoveries, mean {:.1} s",
            ttr_count,
            sum("selfheal_container_time_to_recover_seconds_sum", &[]) / ttr_count
        );
    }
    println!(
        "downtime, Kubernetes view       {:.2} s (no ready pod)",
        sum("selfheal_workload_unavailable_seconds_total", &[])
    );
    println!(
        "downtime, client view (probe)   {:.2} s in {} outages",
        sum("selfheal_probe_downtime_seconds_total", &[]),
        sum("selfheal_probe_outages_total", &[])
    );
    println!("\n== The load generator's ground truth ==");
    println!(
        "requests {} ok {} failed {}",
        load.requests, load.ok, load.failures
    );
    for window in &load.outage_windows {
        println!("failure window {window}");
    }
    println!(
        "downtime seen by the users      {:.2} s in {} windows",
        load.downtime().as_secs_f64(),
        load.outage_windows.len()
    );
}

/// Sum of the samples of `name` whose labels contain every `filter` pair.
fn metric_sum(text: &str, name: &str, filter: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, labels) = series.split_once('{').unwrap_or((series, ""));
            let wanted = metric == name
                && filter
                    .iter()
                    .all(|(key, value)| labels.contains(&format!("{key}=\"{value}\"")));
            wanted.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// The experiment's manifests, with `memory_limit` as the pod's request and limit.
fn manifests_with_limit(memory_limit: &str) -> anyhow::Result<Vec<Value>> {
    let mut documents: Vec<Value> =
        serde_saphyr::from_multiple(MANIFESTS).context("the embedded manifests do not parse")?;
    for document in &mut documents {
        if document["kind"] == "Pod" {
            for container in document["spec"]["containers"]
                .as_array_mut()
                .into_iter()
                .flatten()
            {
                container["resources"]["limits"]["memory"] = Value::from(memory_limit);
                container["resources"]["requests"]["memory"] = Value::from(memory_limit);
            }
        }
    }
    Ok(documents)
}

/// Creates the namespace, the pod (with `memory_limit`) and the Service.
fn apply_manifests(lab: &ApiServer, memory_limit: &str) -> anyhow::Result<()> {
    let store = lab.store();
    for document in manifests_with_limit(memory_limit)? {
        let kind = document["kind"].as_str().unwrap_or("").to_owned();
        let namespace = document["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        let result = match kind.as_str() {
            "Namespace" => store.create(&NAMESPACES, "", document),
            "Pod" => store.create(&PODS, &namespace, document),
            "Service" => store.create(&SERVICES, &namespace, document),
            other => bail!("the demo does not know how to apply a {other}"),
        };
        result.map_err(|error| anyhow::anyhow!("cannot create the {kind}: {}", error.message))?;
    }
    Ok(())
}

/// The selfheal-exporter binary: `--exporter`, else next to this program.
fn locate_exporter(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    let path = match explicit {
        Some(path) => path.to_owned(),
        None => std::env::current_exe()?
            .parent()
            .map(|dir| dir.join("selfheal-exporter"))
            .context("cannot locate this program's directory")?,
    };
    if !path.is_file() {
        bail!(
            "the selfheal-exporter binary is not at {}: build it first (cargo build --release --workspace) \
             or pass --exporter PATH",
            path.display()
        );
    }
    Ok(path)
}

/// The daemon as a child process, killed on drop.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    /// The daemon against `kubeconfig`, probing discovered Services through their
    /// NodePort on `node_address` (the lab's loopback, or the real cluster's node IP).
    fn start(
        exporter: &Path,
        kubeconfig: &Path,
        config: &DemoConfig,
        node_address: std::net::IpAddr,
    ) -> anyhow::Result<Daemon> {
        let config_path = config.work_dir.join("selfheal.toml");
        std::fs::write(
            &config_path,
            format!(
                "[probes]\nservice_address = \"node_port\"\nnode_address = \"{node_address}\"\n\
                 [metrics]\nattribution_wait = \"2s\"\n"
            ),
        )?;
        let log = config.work_dir.join("selfheal-exporter.log");
        let child = Command::new(exporter)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--listen")
            .arg(config.metrics_listen.to_string())
            .arg("--config")
            .arg(&config_path)
            .env_remove("SELFHEAL_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("cannot start {}", exporter.display()))?;
        Ok(Daemon { child, log })
    }

    /// An error with the end of its log if the daemon has exited.
    fn ensure_running(&mut self) -> anyhow::Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            bail!(
                "the daemon exited ({status}); the end of {}:\n{}",
                self.log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        Ok(())
    }

    fn check_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            println!(
                "WARNING: the daemon exited during the demo ({status}); see {}",
                self.log.display()
            );
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within 5 s.
    fn stop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own child's pid has no memory-safety implications.
            #[allow(unsafe_code)]
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn wait_until<F, Fut>(timeout: Duration, mut ready: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if ready().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("timed out after {}s", timeout.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifests_parse_and_sum_filters_labels() {
        let documents: Vec<Value> = serde_saphyr::from_multiple(MANIFESTS).expect("parse");
        let kinds: Vec<&str> = documents
            .iter()
            .filter_map(|d| d["kind"].as_str())
            .collect();
        assert_eq!(kinds, vec!["Namespace", "Pod", "Service"]);
        let text =
            "# HELP x\nx_total{reason=\"OOMKilled\",a=\"b\"} 2\nx_total{reason=\"Error\"} 1\n";
        assert_eq!(metric_sum(text, "x_total", &[]), 3.0);
        assert_eq!(metric_sum(text, "x_total", &[("reason", "OOMKilled")]), 2.0);
    }
}
