//! The node agent's overhead at 100 containers on the node: `selfheal-exporter node`
//! (the release binary, as a separate process) against the lab API server and the lab
//! kubelet, which runs 100 real containers (a shell sleeping) in 100 real memory cgroups
//! laid out as the kubelet's cgroupfs driver lays them out. Beside it, for comparison,
//! the cluster-wide exporter (`selfheal-exporter run`) watching the same pods: the
//! difference is what reading the cgroups costs.
//!
//! Once the agent follows all 100 cgroups (`selfheal_node_cgroups`), both processes are
//! measured over `NODE_BENCH_SECS` (default 30) seconds of steady state: CPU seconds per
//! second (utime + stime from `/proc/<pid>/stat`), RSS at the end and its peak
//! (`VmHWM`). On cgroup v1 the agent re-reads every cgroup every `reread_interval`
//! (default 1 s; `NODE_BENCH_INTERVAL` to change it); on v2 it also waits on inotify.
//! Prints the numbers; asserts nothing about time.
//!
//! `cargo bench --bench node_agent` (root: it makes memory cgroups).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use selfheal_lab::apiserver::{ApiServer, ApiServerConfig, NAMESPACES, PODS};
use selfheal_lab::kubelet::{CgroupStatus, CgroupVersion, Kubelet, KubeletConfig};
use selfheal_lab::testkit::daemon::free_port;
use selfheal_lab::testkit::exposition::{Exposition, http_get};
use selfheal_lab::testkit::procfs::{clock_ticks_per_second, cpu_seconds, read_status};
use serde_json::json;

const NODE: &str = "selfheal-lab-node";
const NS: &str = "bench";
const CONTAINERS: usize = 100;

struct Process {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    fn spawn(mode: &str, kubeconfig: &Path, config: &Path, dir: &Path) -> Result<Process> {
        let port = free_port()?;
        let log = dir.join(format!("{mode}.log"));
        let mut command = Command::new(env!("CARGO_BIN_EXE_selfheal-exporter"));
        command
            .arg(mode)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--config")
            .arg(config)
            .env("NODE_NAME", NODE)
            .env("RUST_LOG", "warn");
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("SELFHEAL_") {
                command.env_remove(key);
            }
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting selfheal-exporter")?;
        Ok(Process { child, port, log })
    }

    async fn scrape(&self) -> Result<Exposition> {
        let (status, body) = http_get(self.port, "/metrics", Duration::from_secs(10)).await?;
        if status != 200 {
            bail!("/metrics answered {status}");
        }
        Ok(Exposition::parse(&body))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

struct Usage {
    cpu_per_second: f64,
    rss_mib: f64,
    hwm_mib: f64,
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

async fn run() -> Result<()> {
    let secs: u64 = std::env::var("NODE_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let interval = std::env::var("NODE_BENCH_INTERVAL").unwrap_or_else(|_| "1s".to_owned());
    let lab = ApiServer::start(ApiServerConfig::default()).await?;
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    lab.write_kubeconfig(&kubeconfig)?;
    lab.store()
        .create(&NAMESPACES, "", json!({"metadata": {"name": NS}}))
        .map_err(|e| anyhow::anyhow!("namespace: {e:?}"))?;
    let config = KubeletConfig::for_url(&lab.url()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let kubelet = Kubelet::start(config)
        .await
        .map_err(|e| anyhow::anyhow!("kubelet: {e}"))?;
    let (version, root) = match &kubelet.status().cgroups {
        CgroupStatus::Enabled { version, root } => (*version, root.clone()),
        CgroupStatus::Unavailable { reason } => bail!("no memory cgroup: {reason} (run as root)"),
    };
    let hierarchy = match version {
        CgroupVersion::V1 => Path::new("/sys/fs/cgroup/memory"),
        CgroupVersion::V2 => Path::new("/sys/fs/cgroup"),
    };
    let relative = root.strip_prefix(hierarchy)?;
    let config = dir.path().join("selfheal.toml");
    std::fs::write(
        &config,
        format!(
            "[probes]\ndiscovery = false\n[node]\nkubelet_cgroup_root = \"/{}\"\nreread_interval = \"{interval}\"\n",
            relative.display()
        ),
    )?;
    for i in 0..CONTAINERS {
        let pod = json!({
            "metadata": {"name": format!("sleeper-{i}"), "labels": {"app": "sleeper"}},
            "spec": {
                "nodeName": NODE,
                "terminationGracePeriodSeconds": 1,
                "containers": [{
                    "name": "main",
                    "image": "selfheal-lab/shell",
                    "command": ["sh", "-c", "sleep 3600"],
                    "resources": {"limits": {"memory": "32Mi"}}
                }]
            }
        });
        lab.store()
            .create(&PODS, NS, pod)
            .map_err(|e| anyhow::anyhow!("pod: {e:?}"))?;
    }
    let agent = Process::spawn("node", &kubeconfig, &config, dir.path())?;
    let exporter = Process::spawn("run", &kubeconfig, &config, dir.path())?;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let cgroups = match agent.scrape().await {
            Ok(scrape) => scrape.get("selfheal_node_cgroups", &[]).unwrap_or(0.0),
            Err(_) => 0.0,
        };
        if cgroups >= CONTAINERS as f64 {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the agent follows {cgroups} of {CONTAINERS} cgroups after 180 s; log:\n{}",
                agent.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Let start-up settle, then measure both over the same window.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let clk_tck = clock_ticks_per_second()?;
    let pids = [agent.child.id(), exporter.child.id()];
    let before: Vec<f64> = pids
        .iter()
        .map(|pid| cpu_seconds(*pid, clk_tck))
        .collect::<Result<_>>()?;
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let elapsed = started.elapsed().as_secs_f64();
    let mut usage = Vec::new();
    for (pid, before) in pids.iter().zip(before) {
        let cpu = cpu_seconds(*pid, clk_tck)? - before;
        let status = read_status(*pid)?;
        usage.push(Usage {
            cpu_per_second: cpu / elapsed,
            rss_mib: mib(status.rss_bytes),
            hwm_mib: mib(status.hwm_bytes),
        });
    }
    let scrape = agent.scrape().await?;
    let errors = scrape.sum("selfheal_node_cgroup_read_errors_total", &[]);
    println!(
        "node_agent: {CONTAINERS} containers on the node, cgroup {}, reread_interval {interval}, \
         {secs} s measured; read errors {errors}",
        version_name(version)
    );
    for (name, u) in ["selfheal-exporter node", "selfheal-exporter run"]
        .iter()
        .zip(&usage)
    {
        println!(
            "node_agent: {name:<24} CPU {:.4} s/s ({:.2} ms per second), RSS {:.1} MiB, peak RSS (VmHWM) {:.1} MiB",
            u.cpu_per_second,
            u.cpu_per_second * 1000.0,
            u.rss_mib,
            u.hwm_mib
        );
    }
    println!(
        "node_agent: reading {CONTAINERS} cgroups costs {:+.4} CPU s/s and {:+.1} MiB RSS over the exporter",
        usage[0].cpu_per_second - usage[1].cpu_per_second,
        usage[0].rss_mib - usage[1].rss_mib
    );
    drop(agent);
    drop(exporter);
    kubelet.shutdown().await;
    Ok(())
}

fn version_name(version: CgroupVersion) -> &'static str {
    match version {
        CgroupVersion::V1 => "v1 (polling)",
        CgroupVersion::V2 => "v2 (inotify + polling)",
    }
}

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("node_agent: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("node_agent: {error:#}");
            ExitCode::FAILURE
        }
    }
}
