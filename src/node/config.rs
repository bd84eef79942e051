//! `[node]`: the node agent's settings (`selfheal-exporter node`); the cluster-wide
//! exporter ignores this section.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[node]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Where the host's cgroup hierarchy is mounted (read-only) in the agent's container.
    pub cgroup_root: PathBuf,
    /// The kubelet's `cgroupRoot` (`--cgroup-root`) with the cgroupfs driver: where
    /// `kubepods` is, relative to the hierarchy's top. `/` is the kubelet's default.
    pub kubelet_cgroup_root: String,
    /// How often every container's cgroup is re-read: the only way to see OOM kills on
    /// cgroup v1 (read-only mount, no eventfd), the safety net under inotify on v2.
    #[serde(with = "jiff::fmt::serde::unsigned_duration::friendly::compact::required")]
    pub reread_interval: Duration,
    /// How long a kernel OOM kill waits for the kubelet to report the container's death
    /// before a container still running makes it a process OOM kill.
    #[serde(with = "jiff::fmt::serde::unsigned_duration::friendly::compact::required")]
    pub settle: Duration,
    /// Read the kernel log (`/dev/kmsg`) for each OOM victim's name and PID, recorded
    /// in the incident. Needs `CAP_SYSLOG` (and, in a container, the host's `/dev/kmsg`
    /// and a root user); off by default.
    pub kmsg: bool,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            kubelet_cgroup_root: "/".to_owned(),
            reread_interval: Duration::from_secs(1),
            settle: Duration::from_secs(10),
            kmsg: false,
        }
    }
}
