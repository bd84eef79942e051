//! The daemon under test as a child process: its command line ([`command`]: the release
//! binary against a kubeconfig, listening on a loopback port, with none of the caller's
//! `SELFHEAL_*` variables) and a wrapper around the running process ([`Daemon`]: wait for
//! `/readyz`, GET and scrape, CPU time and run state from `/proc`, signals, SIGTERM with a
//! bounded wait, and a drop guard that kills it however the bench ends).
//!
//! The binary's path is a parameter: `env!("CARGO_BIN_EXE_selfheal-exporter")` exists only
//! when compiling the root crate's benches and tests, not this crate.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use super::exposition::{Exposition, http_get};
use super::procfs::{cpu_seconds, find_descendant};

/// How long a SIGTERMed daemon may take to exit before the drop guard kills it.
const TERM_GRACE: Duration = Duration::from_secs(10);
/// The same when a wrapper runs the daemon: a profiler may take minutes to write its data.
const TERM_GRACE_WRAPPED: Duration = Duration::from_secs(300);
/// How long a wrapper may take to start the daemon binary.
const WRAPPER_START: Duration = Duration::from_secs(30);

/// A free TCP port on 127.0.0.1 (free when asked: the caller binds it soon after).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .context("a free port on 127.0.0.1")?
        .port())
}

/// `binary --kubeconfig <kubeconfig> --listen 127.0.0.1:<port> [--config <config>]`, run
/// under `wrapper` (a program and its arguments, e.g. `taskset -c 1`) unless that is empty.
/// The caller's `SELFHEAL_*` variables are removed: the daemon reads its configuration
/// from them, and a run must see only the built-in defaults and the given config file.
/// Variables the caller sets on the returned command afterwards still reach the daemon.
pub fn command(
    binary: &Path,
    wrapper: &[String],
    kubeconfig: &Path,
    port: u16,
    config: Option<&Path>,
) -> Command {
    let mut command = match wrapper.split_first() {
        Some((program, args)) => {
            let mut command = Command::new(program);
            command.args(args).arg(binary);
            command
        }
        None => Command::new(binary),
    };
    command
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"));
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SELFHEAL_") {
            command.env_remove(key);
        }
    }
    command
}

/// How to start a [`Daemon`].
pub struct Launch<'a> {
    /// Prefixes what the wrapper prints itself (the bench's name, e.g. `scale`).
    pub who: &'a str,
    /// The daemon binary.
    pub binary: &'a Path,
    /// A program (and its arguments) to run the daemon under; empty for none.
    pub wrapper: &'a [String],
    pub kubeconfig: &'a Path,
    /// The daemon's config file, if any.
    pub config: Option<&'a Path>,
    /// The daemon's `RUST_LOG`.
    pub rust_log: &'a str,
    /// Where the daemon's stderr goes, as `daemon.log`.
    pub dir: &'a Path,
    /// How long one GET from the daemon may take (a large `/metrics` under load is slow).
    pub http_timeout: Duration,
}

/// The daemon binary running against the lab; killed when dropped (also on panic).
pub struct Daemon {
    /// The daemon, or the wrapper process that runs it.
    child: Child,
    /// The daemon itself (what /proc is read for and signals go to).
    pid: u32,
    port: u16,
    binary: PathBuf,
    log: PathBuf,
    who: String,
    http_timeout: Duration,
}

impl Daemon {
    /// Starts the daemon on a free loopback port; with a wrapper, waits until the wrapper
    /// has started the binary, so that [`pid`](Self::pid) is the daemon's own.
    pub fn spawn(launch: &Launch<'_>) -> Result<Daemon> {
        let port = free_port()?;
        let log = launch.dir.join("daemon.log");
        let mut command = command(
            launch.binary,
            launch.wrapper,
            launch.kubeconfig,
            port,
            launch.config,
        );
        command
            .env("RUST_LOG", launch.rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).context("daemon log file")?);
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", launch.binary.display()))?;
        let mut daemon = Daemon {
            pid: child.id(),
            child,
            port,
            binary: launch.binary.to_owned(),
            log,
            who: launch.who.to_owned(),
            http_timeout: launch.http_timeout,
        };
        if !launch.wrapper.is_empty() {
            daemon.pid = find_descendant(daemon.pid, launch.binary, WRAPPER_START)?;
        }
        Ok(daemon)
    }

    /// The daemon's process id (not the wrapper's).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The loopback port the daemon listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The binary it runs.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// Its stderr.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The last 30 lines of its log, for error messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Polls `/readyz` until it answers 200; fails (with the log) if the daemon exits or
    /// is not ready within `timeout`.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().context("daemon status")? {
                bail!("the daemon exited with {status}; log:\n{}", self.log_tail());
            }
            if let Ok((200, _)) = http_get(self.port, "/readyz", self.http_timeout).await {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the daemon was not ready within {} s; log:\n{}",
                    timeout.as_secs(),
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// GETs `path` from the daemon: status and body.
    pub async fn get(&self, path: &str) -> Result<(u16, String)> {
        http_get(self.port, path, self.http_timeout)
            .await
            .with_context(|| format!("GET {path} from the daemon; log:\n{}", self.log_tail()))
    }

    /// GETs and parses `/metrics`, which must answer 200.
    pub async fn scrape(&self) -> Result<Exposition> {
        let (status, body) = self.get("/metrics").await?;
        ensure!(
            status == 200,
            "/metrics answered {status}; log:\n{}",
            self.log_tail()
        );
        Ok(Exposition::parse(&body))
    }

    /// The daemon's CPU seconds so far (utime + stime).
    pub fn cpu(&self, clk_tck: u64) -> Result<f64> {
        cpu_seconds(self.pid, clk_tck)
    }

    /// Sends `kill -<name>` (STOP, CONT, TERM) to the daemon.
    pub fn signal(&self, name: &str) -> Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid.to_string())
            .status()
            .context("running kill")?;
        ensure!(status.success(), "kill -{name} {} failed", self.pid);
        Ok(())
    }

    /// Waits until /proc says the daemon is in `state` (e.g. 'T', stopped).
    pub async fn wait_state(&self, state: char, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
                .context("reading the daemon's /proc stat")?;
            let now = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next());
            if now == Some(state) {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "the daemon did not reach state {state} (is {now:?})"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Returns once the daemon's CPU time has not moved for `quiet`, or after `max`.
    pub async fn wait_idle(&self, quiet: Duration, max: Duration, clk_tck: u64) -> Result<()> {
        let started = Instant::now();
        let mut last = self.cpu(clk_tck)?;
        let mut since = Instant::now();
        while started.elapsed() < max {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let cpu = self.cpu(clk_tck)?;
            if cpu > last {
                last = cpu;
                since = Instant::now();
            } else if since.elapsed() >= quiet {
                break;
            }
        }
        Ok(())
    }

    /// SIGTERM, then a bounded wait for a clean exit (the drop guard kills it otherwise);
    /// an unclean exit or a timeout is printed, as the bench still has results to show.
    pub fn terminate(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status();
        let grace = if self.wrapped() {
            TERM_GRACE_WRAPPED
        } else {
            TERM_GRACE
        };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => return,
                Ok(Some(status)) => {
                    eprintln!(
                        "{}: the daemon exited with {status} after SIGTERM",
                        self.who
                    );
                    return;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(_) => return,
            }
        }
        eprintln!(
            "{}: the daemon did not exit within {} s of SIGTERM; killing it",
            self.who,
            grace.as_secs()
        );
    }

    /// Whether a wrapper process runs the daemon (then the daemon is not our child).
    fn wrapped(&self) -> bool {
        self.pid != self.child.id()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if self.wrapped() {
                // The daemon first: it is not our child, and SIGKILL also ends a SIGSTOP.
                let _ = Command::new("kill")
                    .arg("-KILL")
                    .arg(self.pid.to_string())
                    .status();
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
