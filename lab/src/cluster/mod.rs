//! `selfheal-lab cluster up | down | status`: a real one-node Kubernetes cluster on this
//! host, from upstream binaries built by `lab/upstream/build.sh`: etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler, containerd (with Debian's runc) and the kubelet,
//! our own certificates, a CNI bridge nothing routes, and images built here.
//!
//! This module owns the orchestration (the order of `up`, what `status` reports); each
//! concern lives in its own file: [`layout`] (paths), [`pki`] (certificates and
//! kubeconfigs), [`config`] (containerd and kubelet config files), [`cni`] (pod network),
//! [`images`] and [`tar`] (OCI archives), [`processes`] (daemons by PID), [`components`]
//! (command lines and readiness), [`host`] (recorded sysctls and mount propagation),
//! [`cleanup`] (teardown, also after a crash) and [`control`] (one component stopped,
//! started or etcd compacted, for fault tests).

pub mod cleanup;
pub mod cni;
pub mod components;
pub mod config;
pub mod control;
pub mod error;
pub mod exec;
pub mod host;
pub mod images;
pub mod layout;
pub mod pki;
pub mod processes;
pub mod tar;

use std::path::{Path, PathBuf};

pub use error::{ClusterError, Result};
pub use layout::Layout;

use components::{API_ADDR, API_URL, kubectl, tcp_open, wait_for};
use pki::{CLIENTS, Pki};

/// The upstream build script, from this crate's checkout.
pub fn build_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("upstream/build.sh")
}

/// The binaries `up` needs in the bin dir.
pub const BINARIES: &[&str] = &[
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kubectl",
    "kube-proxy",
    "containerd",
    "containerd-shim-runc-v2",
    "ctr",
];

/// Runs `lab/upstream/build.sh` (instant when its cache is complete) and returns the bin
/// dir it prints on its last line.
pub fn build_upstream() -> Result<PathBuf> {
    let script = build_script();
    let out = exec::output(
        std::process::Command::new("bash")
            .arg(&script)
            .stderr(std::process::Stdio::inherit()),
    )?;
    let last = out.lines().last().unwrap_or_default().trim();
    if last.is_empty() {
        return Err(ClusterError::Setup(format!(
            "{} printed no bin dir",
            script.display()
        )));
    }
    Ok(PathBuf::from(last))
}

/// Refuses layouts `down` could not safely clear (it removes their contents).
fn check_layout(layout: &Layout) -> Result<()> {
    for d in [&layout.state, &layout.run] {
        if !d.is_absolute() || !d.to_string_lossy().contains("selfheal") {
            return Err(ClusterError::Setup(format!(
                "refusing state/run dir {} (must be absolute and contain \"selfheal\")",
                d.display()
            )));
        }
    }
    Ok(())
}

fn require_root() -> Result<()> {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    #[allow(unsafe_code)]
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Err(ClusterError::Setup(
            "the cluster needs root (cgroups, mounts, bridge)".into(),
        ));
    }
    Ok(())
}

/// What `up` achieved.
#[derive(Debug)]
pub struct UpReport {
    pub admin_kubeconfig: PathBuf,
    pub images: Vec<String>,
    /// What a stale earlier run left and was cleaned first.
    pub cleaned: cleanup::Report,
}

/// Brings the cluster up and returns once the node is Ready. `lab_binary` is this program,
/// packed as the grade API's image; `exporter_binary`, if given, is packed as the
/// exporter's image (see [`images::exporter_spec`]).
pub fn up(layout: &Layout, lab_binary: &Path, exporter_binary: Option<&Path>) -> Result<UpReport> {
    require_root()?;
    check_layout(layout)?;
    let missing: Vec<&str> = BINARIES
        .iter()
        .copied()
        .filter(|b| !layout.binary(b).is_file())
        .collect();
    if !missing.is_empty() {
        return Err(ClusterError::Setup(format!(
            "missing {missing:?} in {}: run {}",
            layout.bin.display(),
            build_script().display()
        )));
    }
    // Ports and the bridge are fixed: a cluster of another state dir must not be torn down.
    // A process of ours that was just killed may hold its port a moment longer (its other
    // threads still exiting), so a busy port must stay busy for 10 s to count. The API
    // server's address is the node IP on our bridge: without the bridge no cluster can
    // listen there, and a connection to it would leave the machine (never try one).
    let api_server = cni::bridge_exists().then_some(("kube-apiserver", API_ADDR));
    for (component, addr) in api_server.into_iter().chain([("etcd", "127.0.0.1:2379")]) {
        let foreign = || processes::running(layout, component).is_none() && tcp_open(addr);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while foreign() {
            if std::time::Instant::now() > deadline {
                return Err(ClusterError::Setup(format!(
                    "{addr} is in use by something that is not this cluster's {component} \
                     (another cluster with other state dirs?); bring that down first"
                )));
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
    }
    // A crashed or still running earlier cluster of this layout: clean it first.
    let cleaned = cleanup::teardown(layout)?;
    std::fs::create_dir_all(&layout.run).map_err(ClusterError::io("creating", &layout.run))?;
    let bin_record = recorded_bin_path(&layout.run);
    std::fs::write(&bin_record, layout.bin.as_os_str().as_encoded_bytes())
        .map_err(ClusterError::io("writing", &bin_record))?;
    let images = start_all(layout, lab_binary, exporter_binary)?;
    Ok(UpReport {
        admin_kubeconfig: layout.admin_kubeconfig(),
        images,
        cleaned,
    })
}

fn recorded_bin_path(run: &Path) -> PathBuf {
    run.join("bin-dir")
}

/// The bin dir the last `up` with this run dir used, if any.
pub fn recorded_bin_dir(run: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(recorded_bin_path(run)).ok()?;
    let t = text.trim();
    (!t.is_empty()).then(|| PathBuf::from(t))
}

fn start_all(
    layout: &Layout,
    lab_binary: &Path,
    exporter_binary: Option<&Path>,
) -> Result<Vec<String>> {
    for d in [&layout.state, &layout.run, &layout.config_dir()] {
        std::fs::create_dir_all(d).map_err(ClusterError::io("creating", d))?;
    }
    host::record(layout)?;
    let pki = Pki::new(layout.pki());
    pki.generate()?;
    for id in CLIENTS {
        pki::write(
            &layout.kubeconfig(id.name),
            &pki::kubeconfig(&pki, id, API_URL),
        )?;
    }
    pki::write(
        &layout.config_dir().join("containerd.toml"),
        &config::containerd_toml(layout),
    )?;
    pki::write(
        &layout.config_dir().join("kubelet.yaml"),
        &config::kubelet_yaml(layout, &pki, pki::NODE_IP),
    )?;
    pki::write(
        &layout.config_dir().join("kube-proxy.yaml"),
        &config::kube_proxy_yaml(layout),
    )?;
    cni::setup(layout)?;

    processes::start(layout, &components::etcd(layout))?;
    wait_for(layout, "etcd", "etcd on 127.0.0.1:2379", 60, || {
        tcp_open("127.0.0.1:2379")
    })?;
    processes::start(layout, &components::apiserver(layout, &pki))?;
    wait_for(
        layout,
        "kube-apiserver",
        "kube-apiserver /readyz",
        120,
        || kubectl(layout, ["get", "--raw", "/readyz"]).is_ok_and(|s| s.trim() == "ok"),
    )?;
    // The API server's kubelet client (logs, exec, port-forward).
    let bound = kubectl(
        layout,
        [
            "get",
            "clusterrolebinding",
            "selfheal-lab-apiserver-kubelet",
        ],
    );
    if bound.is_err() {
        kubectl(
            layout,
            [
                "create",
                "clusterrolebinding",
                "selfheal-lab-apiserver-kubelet",
                "--clusterrole=system:kubelet-api-admin",
                "--user=kube-apiserver",
            ],
        )?;
    }
    processes::start(layout, &components::controller_manager(layout, &pki))?;
    processes::start(layout, &components::scheduler(layout))?;
    processes::start(layout, &components::containerd(layout))?;
    wait_for(layout, "containerd", "containerd's socket", 60, || {
        std::os::unix::net::UnixStream::connect(layout.containerd_socket()).is_ok()
    })?;
    let images = images::import_all(layout, lab_binary, exporter_binary)?;
    processes::start(layout, &components::kubelet(layout))?;
    wait_for(layout, "kubelet", "node lab-node Ready", 180, || {
        components::node_ready(layout).as_deref() == Some("True")
    })?;
    // Pods reach the API server through the `kubernetes` Service once kube-proxy has
    // written its rule.
    processes::start(layout, &components::kube_proxy(layout))?;
    wait_for(
        layout,
        "kube-proxy",
        "kube-proxy's rule for the kubernetes Service",
        60,
        components::kubernetes_service_mapped,
    )?;
    // Pods are refused until the controller-manager made the default ServiceAccount.
    wait_for(
        layout,
        "kube-controller-manager",
        "the default ServiceAccount",
        60,
        || {
            kubectl(
                layout,
                ["get", "serviceaccount", "default", "-n", "default"],
            )
            .is_ok()
        },
    )?;
    Ok(images)
}

/// Stops everything and removes the cluster's state (see [`cleanup`]).
pub fn down(layout: &Layout) -> Result<cleanup::Report> {
    require_root()?;
    check_layout(layout)?;
    cleanup::teardown(layout)
}

/// One line of `status`.
#[derive(Debug)]
pub struct ComponentStatus {
    pub name: String,
    pub pid: Option<u32>,
}

/// Cluster status: which components run, the node's Ready condition, the host's IP forwarding.
#[derive(Debug)]
pub struct Status {
    pub components: Vec<ComponentStatus>,
    pub node_ready: Option<String>,
    pub ip_forward: Option<String>,
    pub admin_kubeconfig: PathBuf,
}

pub fn status(layout: &Layout) -> Status {
    let components = processes::COMPONENTS
        .iter()
        .map(|n| ComponentStatus {
            name: (*n).to_string(),
            pid: processes::running(layout, n),
        })
        .collect::<Vec<_>>();
    let api_up = components
        .iter()
        .any(|c| c.name == "kube-apiserver" && c.pid.is_some());
    // Without the bridge the node IP is not this host's: never ask it.
    let node_ready = if api_up && cni::bridge_exists() && layout.binary("kubectl").is_file() {
        components::node_ready(layout)
    } else {
        None
    };
    Status {
        components,
        node_ready,
        ip_forward: host::read_sysctl("net.ipv4.ip_forward").ok(),
        admin_kubeconfig: layout.admin_kubeconfig(),
    }
}
