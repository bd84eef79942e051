//! The cluster's daemons as host processes: started detached (own process group, output
//! to a log file), recorded by PID and kernel start time in a PID file, and stopped by that
//! PID only — never by name — with SIGTERM, then SIGKILL after a grace period.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::error::{ClusterError, Result};
use super::layout::Layout;

/// The components in start order; `down` stops them in reverse.
pub const COMPONENTS: &[&str] = &[
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "containerd",
    "kubelet",
    "kube-proxy",
];

/// How to start one component.
pub struct Spec {
    pub name: &'static str,
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub env: Vec<(String, OsString)>,
}

/// A process recorded in a PID file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    pub pid: u32,
    /// Field 22 of /proc/<pid>/stat: guards against PID reuse.
    pub start_time: u64,
}

/// Kernel start time of `pid`, if it exists and is not a zombie.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: parse after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); field 22 is index 19.
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Starts `spec` detached and records it.
pub fn start(layout: &Layout, spec: &Spec) -> Result<Recorded> {
    let log_path = layout.log(spec.name);
    std::fs::create_dir_all(layout.logs()).map_err(ClusterError::io("creating", &layout.logs()))?;
    std::fs::create_dir_all(layout.pids()).map_err(ClusterError::io("creating", &layout.pids()))?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(ClusterError::io("opening", &log_path))?;
    let log2 = log
        .try_clone()
        .map_err(ClusterError::io("duplicating", &log_path))?;
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .process_group(0);
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().map_err(|e| ClusterError::Command {
        command: super::exec::describe(&cmd),
        status: "not started".into(),
        output: e.to_string(),
    })?;
    let pid = child.id();
    // The child outlives us (reparented when `up` exits); it is tracked by PID from here on.
    drop(child);
    let start_time = start_time(pid).unwrap_or(0);
    let rec = Recorded { pid, start_time };
    let pid_file = layout.pid_file(spec.name);
    std::fs::write(&pid_file, format!("{pid} {start_time}\n"))
        .map_err(ClusterError::io("writing", &pid_file))?;
    Ok(rec)
}

/// The recorded process of `name`, if its PID file exists.
pub fn recorded(layout: &Layout, name: &str) -> Option<Recorded> {
    let text = std::fs::read_to_string(layout.pid_file(name)).ok()?;
    let mut it = text.split_whitespace();
    let pid = it.next()?.parse().ok()?;
    let start_time = it.next()?.parse().ok()?;
    Some(Recorded { pid, start_time })
}

/// True if the recorded process still runs (same PID, same start time).
pub fn alive(rec: Recorded) -> bool {
    start_time(rec.pid) == Some(rec.start_time)
}

/// The running process of `name`, if any.
pub fn running(layout: &Layout, name: &str) -> Option<u32> {
    recorded(layout, name).filter(|r| alive(*r)).map(|r| r.pid)
}

/// Sends `signal` to `pid`.
pub fn signal(pid: u32, signal: i32) {
    let Ok(pid) = i32::try_from(pid) else { return };
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Stops a recorded process: SIGTERM, wait up to `grace`, then SIGKILL. Returns whether it ran.
pub fn stop_recorded(rec: Recorded, grace: Duration) -> bool {
    if !alive(rec) {
        return false;
    }
    signal(rec.pid, libc::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if !alive(rec) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    signal(rec.pid, libc::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(rec) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// Stops component `name` if it runs and removes its PID file.
pub fn stop(layout: &Layout, name: &str, grace: Duration) -> bool {
    let was = recorded(layout, name).is_some_and(|r| stop_recorded(r, grace));
    let _ = std::fs::remove_file(layout.pid_file(name));
    was
}
