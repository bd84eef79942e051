//! The real cluster (`selfheal-lab cluster up`, upstream kubelet + containerd + runc on this
//! host) OOM-kills a busybox pod under a 48Mi limit, and the real kubelet reports it:
//! `lastState.terminated` reason OOMKilled, exit code 137, restartCount ≥ 1.
//!
//! Needs root and the binaries of `lab/upstream/build.sh`; it fails (never skips) without
//! them. It uses its own state and run dirs and tears the cluster down even when it fails.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const STATE_DIR: &str = "/var/lib/selfheal-lab/test-cluster";
const RUN_DIR: &str = "/run/selfheal-lab-test";

fn lab() -> Command {
    Command::new(env!("CARGO_BIN_EXE_selfheal-lab"))
}

/// The bin dir of the upstream build cache, or a failure naming the build script.
fn upstream_bin() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("upstream/build.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("--check")
        .output()
        .expect("running lab/upstream/build.sh --check");
    assert!(
        out.status.success(),
        "the upstream binaries are not built: run {} first (about 18 min cold on 2 cores)\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    PathBuf::from(stdout.lines().last().unwrap_or_default().trim())
}

/// Brings the cluster down when dropped, also when the test panics.
struct Cluster {
    bin: PathBuf,
    kubeconfig: PathBuf,
}

impl Cluster {
    fn cluster_cmd(bin: &Path, action: &str) -> Command {
        let mut c = lab();
        c.args([
            "cluster",
            action,
            "--state-dir",
            STATE_DIR,
            "--run-dir",
            RUN_DIR,
        ])
        .arg("--bin-dir")
        .arg(bin);
        c
    }

    fn up(bin: PathBuf) -> Cluster {
        let out = Self::cluster_cmd(&bin, "up")
            .stderr(Stdio::inherit())
            .output()
            .expect("running selfheal-lab cluster up");
        // From here on a (partly) started cluster exists: the guard owns it.
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let cluster = Cluster {
            kubeconfig: PathBuf::from(stdout.lines().last().unwrap_or_default().trim()),
            bin,
        };
        assert!(out.status.success(), "cluster up failed: {stdout}");
        cluster
    }

    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> String {
        let mut child = Command::new(self.bin.join("kubectl"))
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting kubectl");
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .expect("kubectl stdin")
                .write_all(input.as_bytes())
                .expect("writing to kubectl");
        }
        let out = child.wait_with_output().expect("kubectl output");
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn down(&self) -> std::process::Output {
        Self::cluster_cmd(&self.bin, "down")
            .output()
            .expect("running selfheal-lab cluster down")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let out = self.down();
        if !out.status.success() {
            eprintln!(
                "cluster down failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

const OOM_POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: oom
  namespace: default
spec:
  containers:
  - name: hog
    image: selfheal-lab/busybox:1
    imagePullPolicy: Never
    command: ["sh", "-c", "echo started; sleep 1; tail /dev/zero"]
    resources:
      requests: {memory: 48Mi}
      limits: {memory: 48Mi}
"#;

#[test]
fn real_kubelet_reports_a_kernel_oom_kill() {
    // SAFETY: geteuid(2) has no preconditions.
    #[allow(unsafe_code)]
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the real cluster needs root (cgroups, mounts, bridge)"
    );
    let bin = upstream_bin();
    let forward_before = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
        .expect("reading ip_forward")
        .trim()
        .to_string();
    let cluster = Cluster::up(bin);
    cluster.kubectl(&["apply", "-f", "-"], Some(OOM_POD));

    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        let pod: serde_json::Value = serde_json::from_str(
            &cluster.kubectl(&["get", "pod", "oom", "-n", "default", "-o", "json"], None),
        )
        .expect("pod JSON");
        let cs = pod["status"]["containerStatuses"][0].clone();
        if cs["restartCount"].as_i64().unwrap_or(0) >= 1
            && cs["lastState"]["terminated"]["reason"].is_string()
        {
            break cs;
        }
        assert!(
            Instant::now() < deadline,
            "no restart after 120 s; pod status: {:#}",
            pod["status"]
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    let last = &status["lastState"]["terminated"];
    assert_eq!(last["reason"], "OOMKilled", "container status: {status:#}");
    assert_eq!(last["exitCode"], 137, "container status: {status:#}");
    assert!(status["restartCount"].as_i64().unwrap_or(0) >= 1);
    let forward_now = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
        .expect("reading ip_forward")
        .trim()
        .to_string();
    assert_eq!(forward_now, forward_before, "IP forwarding changed");

    // Tear down explicitly to check it works; the guard's second down is then a no-op.
    let out = cluster.down();
    assert!(
        out.status.success(),
        "cluster down: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(!report.contains("LEFT BEHIND"), "{report}");
    assert!(
        !std::fs::read_to_string("/proc/self/mountinfo")
            .expect("mountinfo")
            .contains(STATE_DIR),
        "mounts left under {STATE_DIR}"
    );
    assert!(
        !Path::new("/sys/fs/cgroup/memory/kubepods").exists(),
        "kubepods cgroup left"
    );
}
