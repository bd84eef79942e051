//! Container processes: spawning one (its own process group, its cgroup joined before
//! `exec`, the container's environment), waiting for its exit, decoding the exit status
//! (killed by signal N → exit code 128+N), and signalling the whole group.

use std::os::unix::process::ExitStatusExt as _;
use std::process::{ExitStatus, Stdio};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

use super::cgroup::{self, Cgroup};

/// Sends `sig` to process `pid` (ignored for pids ≤ 1).
pub fn signal_pid(pid: i32, sig: i32) {
    if pid > 1 {
        // SAFETY: kill(2) has no memory-safety preconditions.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// Sends `sig` to process group `pgid`; false if no such group (ignored for ≤ 1).
pub fn signal_group(pgid: i32, sig: i32) -> bool {
    if pgid <= 1 {
        return false;
    }
    // SAFETY: killpg(2) has no memory-safety preconditions.
    #[allow(unsafe_code)]
    let sent = unsafe { libc::killpg(pgid, sig) == 0 };
    sent
}

/// Exit code as a container runtime reports it: the code, or 128 + signal.
pub fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(255)
}

/// Kills the process group when dropped, unless disarmed (the leader was reaped and the
/// group cleaned): no container outlives its kubelet, even on a panic or an abort.
#[derive(Debug)]
pub struct GroupGuard {
    pgid: i32,
    armed: bool,
}

impl GroupGuard {
    /// The group id (= the container process's pid).
    pub fn pgid(&self) -> i32 {
        self.pgid
    }

    /// Kills what is left of the group and disarms the guard.
    pub fn finish(&mut self) {
        if self.armed {
            signal_group(self.pgid, libc::SIGKILL);
            self.armed = false;
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.finish();
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    /// Program (looked up in `PATH`).
    pub program: String,
    /// Arguments.
    pub args: Vec<String>,
    /// Extra environment (on top of the kubelet's own).
    pub env: Vec<(String, String)>,
    /// Log prefix for the container's output (`ns/pod/container`).
    pub log_name: String,
}

/// Starts the process in a new process group, inside `cgroup` if given. The exit status
/// is sent on `exits` (tagged with `tag`) when the process is reaped.
pub fn spawn<T: Send + 'static>(
    spec: &ProcessSpec,
    cgroup: Option<&Cgroup>,
    tag: T,
    exits: mpsc::UnboundedSender<(T, ExitStatus)>,
) -> std::io::Result<GroupGuard> {
    let mut cmd = tokio::process::Command::new(&spec.program);
    cmd.args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    let procs = cgroup.map(Cgroup::procs_file).transpose()?;
    if let Some(procs) = procs {
        // SAFETY: the closure only calls write(2) on an already open file (no allocation,
        // no locks), which is async-signal-safe between fork and exec.
        #[allow(unsafe_code)]
        unsafe {
            cmd.pre_exec(move || cgroup::join_self(&procs));
        }
    }
    let mut child = cmd.spawn()?;
    let pid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
    let guard = GroupGuard {
        pgid: pid,
        armed: true,
    };
    for (stream, label) in [
        (
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            "stdout",
        ),
        (
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            "stderr",
        ),
    ] {
        if let Some(stream) = stream {
            let name = spec.log_name.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::debug!(target: "selfheal_lab::kubelet::container", container = %name, stream = label, "{line}");
                }
            });
        }
    }
    tokio::spawn(async move {
        let status = child.wait().await;
        let status = status.unwrap_or_else(|_| ExitStatus::from_raw(255 << 8));
        let _ = exits.send((tag, status));
    });
    Ok(guard)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn exit_codes_and_groups() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let spec = |script: &str| ProcessSpec {
            program: "sh".into(),
            args: vec!["-c".into(), script.into()],
            env: vec![("X".into(), "3".into())],
            log_name: "t".into(),
        };
        let _g = spawn(&spec("exit $X"), None, 1, tx.clone()).unwrap();
        let (tag, st) = rx.recv().await.unwrap();
        assert_eq!((tag, exit_code(st)), (1, 3));
        let g = spawn(&spec("sleep 30 & sleep 30; exit 0"), None, 2, tx.clone()).unwrap();
        assert!(signal_group(g.pgid(), libc::SIGTERM));
        let (_, st) = rx.recv().await.unwrap();
        assert_eq!(exit_code(st), 143);
        drop(g);
        assert!(!signal_group(i32::MAX, 0));
    }
}
