//! Where the cluster keeps everything: a persistent state directory (certificates, etcd,
//! containerd's root, the kubelet's root, configs, logs) and a runtime directory (PID files,
//! containerd's state and socket, network namespaces). Nothing outside these two, the
//! `selfheal0` bridge, the `kubepods` cgroups and the recorded sysctls is touched.

use std::path::{Path, PathBuf};

/// Default persistent state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/selfheal-lab/cluster";
/// Default runtime directory.
pub const DEFAULT_RUN_DIR: &str = "/run/selfheal-lab";

/// The node's name, as the kubelet registers it.
pub const NODE_NAME: &str = "lab-node";

/// Paths of one cluster.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Persistent state (removed by `down`, except `logs/`).
    pub state: PathBuf,
    /// Runtime state (PID files, containerd state, netns mounts).
    pub run: PathBuf,
    /// Directory of the upstream binaries (`lab/upstream/build.sh` prints it).
    pub bin: PathBuf,
}

impl Layout {
    /// A layout rooted at the given directories.
    pub fn new(
        state: impl Into<PathBuf>,
        run: impl Into<PathBuf>,
        bin: impl Into<PathBuf>,
    ) -> Self {
        Layout {
            state: state.into(),
            run: run.into(),
            bin: bin.into(),
        }
    }
    /// An upstream binary.
    pub fn binary(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }
    pub fn pki(&self) -> PathBuf {
        self.state.join("pki")
    }
    pub fn etcd_data(&self) -> PathBuf {
        self.state.join("etcd")
    }
    pub fn containerd_root(&self) -> PathBuf {
        self.state.join("containerd")
    }
    pub fn containerd_state(&self) -> PathBuf {
        self.run.join("containerd")
    }
    pub fn containerd_socket(&self) -> PathBuf {
        self.containerd_state().join("containerd.sock")
    }
    pub fn kubelet_root(&self) -> PathBuf {
        self.state.join("kubelet")
    }
    pub fn config_dir(&self) -> PathBuf {
        self.state.join("config")
    }
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.state.join("cni/net.d")
    }
    pub fn cni_ipam_dir(&self) -> PathBuf {
        self.state.join("cni/ipam")
    }
    pub fn images_dir(&self) -> PathBuf {
        self.state.join("images")
    }
    pub fn logs(&self) -> PathBuf {
        self.state.join("logs")
    }
    pub fn log(&self, component: &str) -> PathBuf {
        self.logs().join(format!("{component}.log"))
    }
    pub fn pids(&self) -> PathBuf {
        self.run.join("pids")
    }
    pub fn pid_file(&self, component: &str) -> PathBuf {
        self.pids().join(format!("{component}.pid"))
    }
    /// Host settings recorded before the first start (sysctls, mount propagation).
    pub fn host_record(&self) -> PathBuf {
        self.state.join("host-record.json")
    }
    /// A kubeconfig for one client identity (`admin`, `kubelet`, …).
    pub fn kubeconfig(&self, user: &str) -> PathBuf {
        self.state
            .join("kubeconfig")
            .join(format!("{user}.kubeconfig"))
    }
    /// The admin kubeconfig `up` prints.
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.kubeconfig("admin")
    }
    /// True if `path` lies inside one of the cluster's own directories.
    pub fn owns(&self, path: &Path) -> bool {
        path.starts_with(&self.state) || path.starts_with(&self.run)
    }
}
