//! kube-state-metrics (KSM), the exporter users run instead of ours, as a child process
//! beside the daemon: its binary from the upstream build cache ([`ksm_binary`], which
//! fails naming the build command when it is not built, never builds and never skips),
//! and the running process ([`Ksm`]: pods only, `/metrics` and its self-metrics on
//! loopback ports, its `/proc` figures, killed when dropped). The scale bench's `ksm*`
//! phases run it against the lab API server, `lab/tests/real_ksm.rs` against the real
//! cluster.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, bail, ensure};

use super::daemon::free_port;
use super::procfs::cpu_seconds;
use crate::cluster::build_script;

/// The binary's name in its bin dir.
pub const BINARY: &str = "kube-state-metrics";

/// The `kube-state-metrics` binary of `lab/upstream/build.sh --check-ksm`, or an error
/// naming the build command.
pub fn ksm_binary() -> Result<PathBuf> {
    let script = build_script();
    let out = Command::new("bash")
        .arg(&script)
        .arg("--check-ksm")
        .output()
        .with_context(|| format!("running {} --check-ksm", script.display()))?;
    if !out.status.success() {
        bail!(
            "kube-state-metrics is not built: run {} first (about 3 min cold on 2 cores; \
             scripts/test --setup-only runs it too)\n{}",
            script.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let binary = Path::new(stdout.lines().last().unwrap_or_default().trim()).join(BINARY);
    ensure!(
        binary.is_file(),
        "{} --check-ksm printed no bin dir holding {BINARY} ({})",
        script.display(),
        binary.display()
    );
    Ok(binary)
}

/// A running kube-state-metrics; killed when dropped (also on panic).
pub struct Ksm {
    child: Child,
    port: u16,
    telemetry_port: u16,
    log: PathBuf,
}

impl Ksm {
    /// Starts `binary --kubeconfig <kubeconfig> --resources=pods` with `/metrics` on
    /// 127.0.0.1:<free port> and its self-metrics on another, its stderr in `log`.
    /// Everything else is KSM's default (all pod metrics, no sharding, no GOMEMLIMIT),
    /// as users deploy it.
    pub fn spawn(binary: &Path, kubeconfig: &Path, log: &Path) -> Result<Ksm> {
        let port = free_port()?;
        let telemetry_port = free_port()?;
        ensure!(port != telemetry_port, "got the same free port twice");
        let child = Command::new(binary)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args([
                "--resources=pods",
                "--host=127.0.0.1",
                "--telemetry-host=127.0.0.1",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--telemetry-port={telemetry_port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).context("kube-state-metrics log file")?)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        Ok(Ksm {
            child,
            port,
            telemetry_port,
            log: log.to_owned(),
        })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The loopback port of its `/metrics`.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The loopback port of its self-metrics (`kube_state_metrics_list_total`, …).
    pub fn telemetry_port(&self) -> u16 {
        self.telemetry_port
    }

    /// `/metrics`' address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The self-metrics' address.
    pub fn telemetry_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.telemetry_port))
    }

    /// User + system CPU seconds so far.
    pub fn cpu(&self, clk_tck: u64) -> Result<f64> {
        cpu_seconds(self.pid(), clk_tck)
    }

    /// Fails, with the last lines of its log, if it has exited.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait().context("kube-state-metrics status")? {
            bail!(
                "kube-state-metrics exited with {status}; its log:\n{}",
                self.log_tail(30)
            );
        }
        Ok(())
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Ksm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `kube_state_metrics_list_total{resource="*v1.Pod",result="success"}` in a
/// self-metrics body: the pod list *requests* KSM completed. client-go's reflector lists in
/// pages of 500, and each page counts, so one list of 10,000 pods is 20.
pub fn pod_list_pages(telemetry: &str) -> f64 {
    pod_counter(telemetry, "kube_state_metrics_list_total{")
}

/// `kube_state_metrics_watch_total{resource="*v1.Pod",result="success"}`: the pod watches
/// KSM started. The reflector starts its watch once the whole list is in its store, so
/// 1 means the initial list is synced; each later one is a re-watch (its watches time out
/// after 5–10 min) or a relist.
pub fn pod_watches(telemetry: &str) -> f64 {
    pod_counter(telemetry, "kube_state_metrics_watch_total{")
}

fn pod_counter(telemetry: &str, prefix: &str) -> f64 {
    telemetry
        .lines()
        .filter(|line| {
            line.starts_with(prefix)
                && line.contains("resource=\"*v1.Pod\"")
                && line.contains("result=\"success\"")
        })
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// What one KSM `/metrics` body says, read line by line without keeping it parsed (at
/// 100,000 pods it holds millions of series).
#[derive(Debug, Default, Clone, Copy)]
pub struct KsmCounts {
    /// Sample lines.
    pub series: usize,
    /// `kube_pod_info` samples: the pods it exports.
    pub pods: usize,
    /// The sum of `kube_pod_container_status_restarts_total`: the kubelet's restartCount
    /// summed over containers.
    pub restarts: f64,
    /// The sum of `kube_pod_container_status_last_terminated_reason{reason="OOMKilled"}`:
    /// containers whose last termination was an OOM kill (a 0/1 gauge each).
    pub last_oom_killed: f64,
}

impl KsmCounts {
    /// Counts a text exposition.
    pub fn of(body: &str) -> KsmCounts {
        let mut counts = KsmCounts::default();
        for line in body.lines() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            counts.series += 1;
            let value = || {
                line.rsplit_once(' ')
                    .and_then(|(_, value)| value.parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            if line.starts_with("kube_pod_info{") {
                counts.pods += 1;
            } else if line.starts_with("kube_pod_container_status_restarts_total{") {
                counts.restarts += value();
            } else if line.starts_with("kube_pod_container_status_last_terminated_reason{")
                && line.contains("reason=\"OOMKilled\"")
            {
                counts.last_oom_killed += value();
            }
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_a_ksm_exposition() {
        let body = "\
# HELP kube_pod_info Information about pod.
# TYPE kube_pod_info gauge
kube_pod_info{namespace=\"a\",pod=\"p\",uid=\"1\"} 1
kube_pod_info{namespace=\"a\",pod=\"q\",uid=\"2\"} 1
kube_pod_container_status_restarts_total{namespace=\"a\",pod=\"p\",container=\"c\"} 3
kube_pod_container_status_restarts_total{namespace=\"a\",pod=\"q\",container=\"c\"} 1
kube_pod_container_status_last_terminated_reason{container=\"c\",pod=\"p\",reason=\"OOMKilled\"} 1
kube_pod_container_status_last_terminated_reason{container=\"c\",pod=\"q\",reason=\"Error\"} 1
";
        let counts = KsmCounts::of(body);
        assert_eq!(counts.series, 6);
        assert_eq!(counts.pods, 2);
        assert_eq!(counts.restarts, 4.0);
        assert_eq!(counts.last_oom_killed, 1.0);
    }

    #[test]
    fn reads_only_successful_pod_lists_and_watches() {
        let telemetry = "\
kube_state_metrics_list_total{resource=\"*v1.Pod\",result=\"success\"} 20
kube_state_metrics_list_total{resource=\"*v1.Pod\",result=\"error\"} 5
kube_state_metrics_list_total{resource=\"*v1.Node\",result=\"success\"} 7
kube_state_metrics_watch_total{resource=\"*v1.Pod\",result=\"success\"} 1
kube_state_metrics_watch_total{resource=\"*v1.Pod\",result=\"error\"} 3
";
        assert_eq!(pod_list_pages(telemetry), 20.0);
        assert_eq!(pod_watches(telemetry), 1.0);
    }
}
