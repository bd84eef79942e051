//! What the tests against the real cluster (`lab/tests/real_*.rs`) share: the cluster
//! itself as a guard ([`TestCluster`]: one at a time on this host, brought down when
//! dropped, also when the test panics), `kubectl` against it, and the daemon run on the
//! host against its API server ([`HostExporter`]: started with a config, read through
//! `/metrics`, killed when dropped), and kube-state-metrics' binary ([`ksm_bin`]).
//!
//! These are test assertions: every method panics with what went wrong (the command,
//! its stderr, the component's log) instead of returning an error, as the test would.
//!
//! The binaries are parameters: `env!("CARGO_BIN_EXE_selfheal-lab")` exists only when
//! compiling this crate's tests, not its library.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::cluster::{build_script, layout};

/// The state dir of the test cluster (separate from `cluster up`'s default).
pub const STATE_DIR: &str = "/var/lib/selfheal-lab/test-cluster";
/// Its run dir.
pub const RUN_DIR: &str = "/run/selfheal-lab-test";
/// The lock every test cluster holds: one cluster runs on a host at a time (fixed ports,
/// one bridge, one `kubepods` cgroup), so a second test binary waits for the first.
/// Wrap manual `selfheal-lab cluster` sessions in `flock` on the same file; never a
/// `cargo test` (the test would wait for its own wrapper).
pub const LOCK_FILE: &str = "/run/selfheal-lab-cluster.lock";

/// The bin dir of the upstream build cache, or a failure naming the build script.
pub fn upstream_bin() -> PathBuf {
    let script = build_script();
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

/// The `kube-state-metrics` binary of the upstream build cache (`build.sh --check-ksm`),
/// or a failure naming the build command.
pub fn ksm_bin() -> PathBuf {
    super::ksm::ksm_binary().unwrap_or_else(|error| panic!("{error:#}"))
}

/// Fails the test unless it runs as root (cgroups, mounts, the bridge).
pub fn assert_root() {
    // SAFETY: geteuid(2) has no preconditions.
    #[allow(unsafe_code)]
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the real cluster needs root (cgroups, mounts, bridge)"
    );
}

/// An exclusive `flock` on [`LOCK_FILE`], held while the file is open.
struct HostLock {
    _file: std::fs::File,
}

impl HostLock {
    fn take() -> HostLock {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK_FILE)
            .unwrap_or_else(|error| panic!("opening {LOCK_FILE}: {error}"));
        let started = Instant::now();
        // SAFETY: flock(2) on a file descriptor this value owns; blocks until granted.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_EX) };
        assert_eq!(
            rc,
            0,
            "flock {LOCK_FILE}: {}",
            std::io::Error::last_os_error()
        );
        if started.elapsed() > Duration::from_secs(1) {
            eprintln!(
                "waited {:.0} s for another real-cluster test ({LOCK_FILE})",
                started.elapsed().as_secs_f64()
            );
        }
        HostLock { _file: file }
    }
}

/// The real one-node cluster of a test; brought down when dropped.
pub struct TestCluster {
    lab: PathBuf,
    bin: PathBuf,
    kubeconfig: PathBuf,
    // Dropped after the fields above, i.e. after `Drop::drop` brought the cluster down.
    _lock: HostLock,
}

impl TestCluster {
    fn cluster_cmd(lab: &Path, bin: &Path, action: &str) -> Command {
        let mut c = Command::new(lab);
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

    /// `selfheal-lab cluster up` with the upstream binaries in `bin`, `lab` being the
    /// `selfheal-lab` binary; waits for any other test's cluster to be down first.
    pub fn up(lab: &Path, bin: PathBuf) -> TestCluster {
        let lock = HostLock::take();
        let out = Self::cluster_cmd(lab, &bin, "up")
            .stderr(Stdio::inherit())
            .output()
            .expect("running selfheal-lab cluster up");
        // From here on a (partly) started cluster exists: the guard owns it.
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let cluster = TestCluster {
            lab: lab.to_path_buf(),
            kubeconfig: PathBuf::from(stdout.lines().last().unwrap_or_default().trim()),
            bin,
            _lock: lock,
        };
        assert!(out.status.success(), "cluster up failed: {stdout}");
        cluster
    }

    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The upstream bin dir (kubectl, ctr, …).
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// `kubectl` as cluster admin; its stdout, or a failure with its stderr.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.try_kubectl(args, stdin);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl` as cluster admin, its output whatever its exit status.
    pub fn try_kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
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
        child.wait_with_output().expect("kubectl output")
    }

    /// `kubectl get pod NAME -n NAMESPACE -o json`, parsed.
    pub fn pod(&self, namespace: &str, name: &str) -> serde_json::Value {
        serde_json::from_str(
            &self.kubectl(&["get", "pod", name, "-n", namespace, "-o", "json"], None),
        )
        .expect("pod JSON")
    }

    /// The last `lines` lines of a component's log (`kubelet`, `containerd`, …), for a
    /// failure's message.
    pub fn log_tail(component: &str, lines: usize) -> String {
        let path = Path::new(STATE_DIR)
            .join("logs")
            .join(format!("{component}.log"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|error| format!("{error}"));
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// `selfheal-lab cluster <args…>` against this cluster (`stop kube-apiserver --kill`,
    /// `start kube-apiserver`, `compact`); its stdout, or a failure with its stderr.
    pub fn control(&self, args: &[&str]) -> String {
        let action = args.first().copied().unwrap_or("status");
        let out = Self::cluster_cmd(&self.lab, &self.bin, action)
            .args(&args[1.min(args.len())..])
            .output()
            .expect("running selfheal-lab cluster");
        assert!(
            out.status.success(),
            "selfheal-lab cluster {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `selfheal-lab cluster down`; the guard's own down after it is a no-op.
    pub fn down(&self) -> Output {
        Self::cluster_cmd(&self.lab, &self.bin, "down")
            .output()
            .expect("running selfheal-lab cluster down")
    }

    /// Brings the cluster down and checks it left nothing behind: no component, mount
    /// or `kubepods` cgroup.
    pub fn down_and_check(&self) {
        let out = self.down();
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
}

impl Drop for TestCluster {
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

/// The daemon on the host, watching the real cluster; killed when dropped.
pub struct HostExporter {
    child: Child,
    listen: SocketAddr,
    log: PathBuf,
}

impl HostExporter {
    /// Starts `selfheal-exporter` (the binary next to `lab`) against `kubeconfig`, as the
    /// node agent of `node` if given, with `config` (TOML) after its `listen` line, and
    /// waits for `/readyz`. `name` names its dir under the state dir (config and log).
    pub fn start(
        lab: &Path,
        kubeconfig: &Path,
        name: &str,
        node: Option<&str>,
        config: &str,
    ) -> HostExporter {
        let binary = lab.with_file_name("selfheal-exporter");
        assert!(
            binary.exists(),
            "{} is missing: build the workspace first (cargo test --workspace builds it)",
            binary.display()
        );
        let listen: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port");
        let dir = Path::new(STATE_DIR).join(name);
        std::fs::create_dir_all(&dir).expect("exporter dir");
        let config_file = dir.join("selfheal.toml");
        std::fs::write(&config_file, format!("listen = \"{listen}\"\n{config}"))
            .expect("exporter config");
        let log = dir.join("exporter.log");
        let mut command = Command::new(&binary);
        if let Some(node) = node {
            command.arg("node").env("NODE_NAME", node);
        }
        let child = command
            .arg("--config")
            .arg(&config_file)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .env_remove("SELFHEAL_CONFIG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("exporter log"))
            .spawn()
            .expect("starting selfheal-exporter");
        let exporter = HostExporter { child, listen, log };
        let deadline = Instant::now() + Duration::from_secs(60);
        while exporter.get("/readyz").map(|(status, _)| status) != Some(200) {
            assert!(
                Instant::now() < deadline,
                "the exporter is not ready after 60 s; its log:\n{}",
                exporter.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        exporter
    }

    /// Its process id (for `/proc/PID/status` and `stat`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A GET over HTTP/1.0, so the body ends with the connection (no chunking).
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        get(self.listen, path)
    }

    /// The sum of the samples of `name` whose labels include every one of `labels`
    /// (`container="hog"`); `-0.0` if none.
    pub fn sum(&self, name: &str, labels: &[&str]) -> f64 {
        let (_, body) = self.get("/metrics").unwrap_or_default();
        sum_samples(&body, name, labels)
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for HostExporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A GET over HTTP/1.0 to `addr` (a host exporter, a pod IP), so the body ends with the
/// connection; `None` if it cannot be had.
pub fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// The sum of the samples of `name` in a text exposition whose labels include every one
/// of `labels`.
pub fn sum_samples(body: &str, name: &str, labels: &[&str]) -> f64 {
    body.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|line| labels.iter().all(|label| line.contains(label)))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// The node the test cluster registers.
pub const NODE_NAME: &str = layout::NODE_NAME;
