//! What `/proc` says about a process: its memory (`VmRSS`, `VmHWM`), its CPU time
//! (utime + stime), the clock tick that CPU time is counted in, the descendant that runs a
//! given binary, and a background sampler of the peak RSS. Linux only, like the benches.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

/// Memory figures from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy)]
pub struct ProcStatus {
    /// `VmRSS`: resident memory now.
    pub rss_bytes: u64,
    /// `VmHWM`: the kernel's own peak of the resident memory.
    pub hwm_bytes: u64,
}

/// Reads `VmRSS` and `VmHWM` of `pid`.
pub fn read_status(pid: u32) -> Result<ProcStatus> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status (is the process still running?)"))?;
    let kib = |field: &str| -> Result<u64> {
        text.lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map(|kib| kib * 1024)
            .with_context(|| format!("no {field} in /proc/{pid}/status"))
    };
    Ok(ProcStatus {
        rss_bytes: kib("VmRSS:")?,
        hwm_bytes: kib("VmHWM:")?,
    })
}

/// User + system CPU seconds of `pid` so far (all its threads).
pub fn cpu_seconds(pid: u32, clk_tck: u64) -> Result<f64> {
    stat_cpu_seconds(&format!("/proc/{pid}/stat"), clk_tck)
}

/// User + system CPU seconds of the calling thread so far.
pub fn thread_cpu_seconds(clk_tck: u64) -> Result<f64> {
    stat_cpu_seconds("/proc/thread-self/stat", clk_tck)
}

/// utime + stime from a `stat` file (of a process or of a thread), in seconds.
fn stat_cpu_seconds(path: &str, clk_tck: u64) -> Result<f64> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let fields: Vec<&str> = text
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of stat(5); index 0 here is field 3 (state).
    let ticks = |index: usize| -> Result<u64> {
        fields
            .get(index)
            .and_then(|field| field.parse().ok())
            .with_context(|| format!("malformed {path}: {text}"))
    };
    Ok((ticks(11)? + ticks(12)?) as f64 / clk_tck as f64)
}

/// Clock ticks per second for the CPU times in `stat`, from `getconf CLK_TCK` (std has no
/// sysconf; ask once and pass the answer around).
pub fn clock_ticks_per_second() -> Result<u64> {
    let output = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .context("running `getconf CLK_TCK` (needed to read CPU times from /proc)")?;
    ensure!(
        output.status.success(),
        "`getconf CLK_TCK` failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    // Zero would turn every CPU time into infinity: refuse it here.
    text.trim()
        .parse::<u64>()
        .ok()
        .filter(|ticks| *ticks > 0)
        .with_context(|| format!("`getconf CLK_TCK` printed {text:?}"))
}

/// The descendant of `root` (or `root` itself) running `binary`, waiting up to `timeout`
/// for it to appear: a process started under a wrapper (a profiler, `taskset`, `env`) is
/// not the child the bench spawned, yet /proc figures and signals must go to it.
pub fn find_descendant(root: u32, binary: &Path, timeout: Duration) -> Result<u32> {
    let binary = binary.canonicalize().context("daemon binary path")?;
    let deadline = Instant::now() + timeout;
    loop {
        let mut queue = vec![root];
        while let Some(pid) = queue.pop() {
            if std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == binary) {
                return Ok(pid);
            }
            // Processes come and go while we walk: a vanished one just has no children.
            let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
                .into_iter()
                .flatten();
            for task in tasks.flatten() {
                let children =
                    std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
                queue.extend(
                    children
                        .split_whitespace()
                        .filter_map(|c| c.parse::<u32>().ok()),
                );
            }
        }
        ensure!(
            Instant::now() < deadline,
            "no process running {} under the wrapper (pid {root})",
            binary.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Samples a process's RSS periodically on a tokio task and keeps the peak: `VmHWM` alone
/// cannot be reset, so it cannot give the peak of one period of a run.
pub struct RssSampler {
    peak: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    /// Starts sampling `pid` every `every` (on the current tokio runtime); sampling ends
    /// by itself when the process is gone.
    pub fn start(pid: u32, every: Duration) -> RssSampler {
        let peak = Arc::new(AtomicU64::new(0));
        let shared = peak.clone();
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every);
            loop {
                ticker.tick().await;
                match read_status(pid) {
                    Ok(status) => {
                        shared.fetch_max(status.rss_bytes, Ordering::Relaxed);
                    }
                    Err(_) => return, // the process is gone
                }
            }
        });
        RssSampler { peak, task }
    }

    /// The peak so far.
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    /// The peak since the last call, and starts a new period.
    pub fn take_peak(&self) -> u64 {
        self.peak.swap(0, Ordering::Relaxed)
    }

    /// Stops sampling; returns the peak (of the current period). Waits for the task to
    /// end, so that no sample taken on another worker thread lands after the answer.
    pub async fn stop(self) -> u64 {
        self.task.abort();
        let _ = self.task.await;
        self.peak.load(Ordering::Relaxed)
    }
}
