//! The command lines of the seven daemons (flags after upstream's hack/local-up-cluster.sh,
//! adapted: etcd and the controllers' own ports on 127.0.0.1; the API server and the
//! kubelet on the node IP of the pod bridge, where pods reach the API server through the
//! `kubernetes` Service, which the real kube-proxy maps to it), and the readiness check of
//! each.

use std::ffi::OsString;
use std::time::{Duration, Instant};

use super::error::{ClusterError, Result};
use super::exec;
use super::layout::{Layout, NODE_NAME};
use super::pki::{KUBERNETES_SERVICE_IP, NODE_IP, Pki, SERVICE_CIDR};
use super::processes::{self, Spec};

/// The API server's address: the node IP on our bridge, which only this host and its pods
/// reach (nothing routes the pod subnet). Pods need it there: the `kubernetes` Service's
/// endpoint is the advertise address, and kube-proxy maps 10.96.0.1:443 to it.
pub const API_ADDR: &str = "10.88.0.1:6443";
/// The API server's URL.
pub const API_URL: &str = "https://10.88.0.1:6443";

fn args<I: IntoIterator<Item = String>>(v: I) -> Vec<OsString> {
    v.into_iter().map(OsString::from).collect()
}

pub fn etcd(layout: &Layout) -> Spec {
    Spec {
        name: "etcd",
        program: layout.binary("etcd"),
        args: args([
            "--name=lab".into(),
            format!("--data-dir={}", layout.etcd_data().display()),
            "--listen-client-urls=http://127.0.0.1:2379".into(),
            "--advertise-client-urls=http://127.0.0.1:2379".into(),
            "--listen-peer-urls=http://127.0.0.1:2380".into(),
            "--initial-advertise-peer-urls=http://127.0.0.1:2380".into(),
            "--initial-cluster=lab=http://127.0.0.1:2380".into(),
            "--listen-metrics-urls=http://127.0.0.1:2381".into(),
            // A lab: losing the last writes on a host crash is fine, fsync latency is not.
            "--unsafe-no-fsync".into(),
        ]),
        env: vec![],
    }
}

pub fn apiserver(layout: &Layout, pki: &Pki) -> Spec {
    let p = |f: std::path::PathBuf| f.display().to_string();
    Spec {
        name: "kube-apiserver",
        program: layout.binary("kube-apiserver"),
        args: args([
            "--etcd-servers=http://127.0.0.1:2379".into(),
            format!("--bind-address={NODE_IP}"),
            "--secure-port=6443".into(),
            // Endpoints of the `kubernetes` Service may not be loopback.
            format!("--advertise-address={NODE_IP}"),
            format!("--tls-cert-file={}", p(pki.cert("kube-apiserver"))),
            format!("--tls-private-key-file={}", p(pki.key("kube-apiserver"))),
            format!("--client-ca-file={}", p(pki.ca_cert())),
            format!(
                "--kubelet-client-certificate={}",
                p(pki.cert("apiserver-kubelet-client"))
            ),
            format!(
                "--kubelet-client-key={}",
                p(pki.key("apiserver-kubelet-client"))
            ),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            format!("--service-account-key-file={}", p(pki.sa_pub())),
            format!("--service-account-signing-key-file={}", p(pki.sa_key())),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            "--authorization-mode=Node,RBAC".into(),
            "--enable-admission-plugins=NodeRestriction,PodSecurity".into(),
            "--allow-privileged=true".into(),
            // Dial the kubelet at its node IP (on our bridge), never resolve the node name.
            "--kubelet-preferred-address-types=InternalIP".into(),
            "--profiling=false".into(),
        ]),
        env: vec![],
    }
}

pub fn controller_manager(layout: &Layout, pki: &Pki) -> Spec {
    let kc = layout
        .kubeconfig("kube-controller-manager")
        .display()
        .to_string();
    let p = |f: std::path::PathBuf| f.display().to_string();
    Spec {
        name: "kube-controller-manager",
        program: layout.binary("kube-controller-manager"),
        args: args([
            format!("--kubeconfig={kc}"),
            format!("--authentication-kubeconfig={kc}"),
            format!("--authorization-kubeconfig={kc}"),
            format!("--service-account-private-key-file={}", p(pki.sa_key())),
            format!("--root-ca-file={}", p(pki.ca_cert())),
            format!("--cluster-signing-cert-file={}", p(pki.ca_cert())),
            format!("--cluster-signing-key-file={}", p(pki.ca_key())),
            "--use-service-account-credentials=true".into(),
            "--controllers=*".into(),
            "--leader-elect=false".into(),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            "--bind-address=127.0.0.1".into(),
        ]),
        env: vec![],
    }
}

pub fn scheduler(layout: &Layout) -> Spec {
    let kc = layout.kubeconfig("kube-scheduler").display().to_string();
    Spec {
        name: "kube-scheduler",
        program: layout.binary("kube-scheduler"),
        args: args([
            format!("--kubeconfig={kc}"),
            format!("--authentication-kubeconfig={kc}"),
            format!("--authorization-kubeconfig={kc}"),
            "--leader-elect=false".into(),
            "--bind-address=127.0.0.1".into(),
        ]),
        env: vec![],
    }
}

/// kube-proxy in iptables mode (config in `kube-proxy.yaml`, see [`super::config`]).
pub fn kube_proxy(layout: &Layout) -> Spec {
    Spec {
        name: "kube-proxy",
        program: layout.binary("kube-proxy"),
        args: args([format!(
            "--config={}",
            layout.config_dir().join("kube-proxy.yaml").display()
        )]),
        env: vec![("PATH".into(), path_with_bin(layout))],
    }
}

/// PATH for containerd: its shim from our bin dir, runc and the rest from the host.
fn path_with_bin(layout: &Layout) -> OsString {
    let mut path = OsString::from(layout.bin.as_os_str());
    path.push(":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    path
}

pub fn containerd(layout: &Layout) -> Spec {
    Spec {
        name: "containerd",
        program: layout.binary("containerd"),
        args: args([format!(
            "--config={}",
            layout.config_dir().join("containerd.toml").display()
        )]),
        env: vec![("PATH".into(), path_with_bin(layout))],
    }
}

pub fn kubelet(layout: &Layout) -> Spec {
    Spec {
        name: "kubelet",
        program: layout.binary("kubelet"),
        args: args([
            format!(
                "--config={}",
                layout.config_dir().join("kubelet.yaml").display()
            ),
            format!("--kubeconfig={}", layout.kubeconfig("kubelet").display()),
            format!("--hostname-override={NODE_NAME}"),
            format!("--node-ip={NODE_IP}"),
            format!("--root-dir={}", layout.kubelet_root().display()),
            format!("--cert-dir={}", layout.kubelet_root().join("pki").display()),
        ]),
        env: vec![("PATH".into(), path_with_bin(layout))],
    }
}

/// Polls `check` every 500 ms until it returns true; fails if `component` dies or after `secs`.
pub fn wait_for(
    layout: &Layout,
    component: &str,
    what: &str,
    secs: u64,
    mut check: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if check() {
            return Ok(());
        }
        if processes::running(layout, component).is_none() {
            return Err(ClusterError::Setup(format!(
                "{component} exited while waiting for {what}; see {}",
                layout.log(component).display()
            )));
        }
        if Instant::now() > deadline {
            return Err(ClusterError::Timeout {
                what: what.into(),
                secs,
                log: layout.log(component).display().to_string(),
            });
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `kubectl --kubeconfig admin …`.
pub fn kubectl<I, S>(layout: &Layout, a: I) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    exec::output(
        std::process::Command::new(layout.binary("kubectl"))
            .arg("--kubeconfig")
            .arg(layout.admin_kubeconfig())
            .arg("--request-timeout=5s")
            .args(a),
    )
}

/// True if a TCP connection to `addr` succeeds.
pub fn tcp_open(addr: &str) -> bool {
    addr.parse().ok().is_some_and(|a| {
        std::net::TcpStream::connect_timeout(&a, Duration::from_millis(300)).is_ok()
    })
}

/// True once kube-proxy's `KUBE-SERVICES` nat chain maps the `kubernetes` Service.
pub fn kubernetes_service_mapped() -> bool {
    exec::run("iptables", ["-w", "5", "-t", "nat", "-S", "KUBE-SERVICES"])
        .is_ok_and(|rules| rules.contains(&format!("-d {KUBERNETES_SERVICE_IP}/32")))
}

/// The node's Ready condition status (`True`, `False`, `Unknown`), if it is registered.
pub fn node_ready(layout: &Layout) -> Option<String> {
    kubectl(
        layout,
        [
            "get",
            "node",
            NODE_NAME,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ],
    )
    .ok()
    .map(|s| s.trim().to_string())
}
