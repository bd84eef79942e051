//! Host settings the cluster changes, recorded before the first start and restored by
//! `down`: the sysctls the kubelet sets (it writes vm.overcommit_memory, vm.panic_on_oom,
//! kernel.panic, kernel.panic_on_oops and the root key quotas when protectKernelDefaults is
//! off) and IP forwarding (watched: it must stay off). It also reads the host's mount table
//! for [`super::cleanup`]. Mount propagation is left as it is (`/` stays private here: the
//! kubelet bind-mounts its own root dir rshared, which is enough for these pods).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::{ClusterError, Result};
use super::layout::Layout;

/// The sysctls recorded and restored.
pub const SYSCTLS: &[&str] = &[
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
    "net.ipv4.ip_forward",
];

/// Host paths the kubelet and containerd's CNI library use whatever their configured dirs
/// (the kubelet's device-plugin socket dir, its /var/log/containers symlinks, the CNI result
/// cache). Those that did not exist before `up` are removed by `down`.
pub const FIXED_HOST_PATHS: &[&str] = &[
    "/var/lib/kubelet",
    "/var/log/containers",
    "/var/log/pods",
    "/var/lib/cni",
];

/// What the host looked like before the cluster started.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct HostRecord {
    pub sysctls: BTreeMap<String, String>,
    /// Which of [`FIXED_HOST_PATHS`] did not exist before (and so are ours to remove).
    #[serde(default)]
    pub created_paths: Vec<String>,
}

fn sysctl_path(key: &str) -> PathBuf {
    Path::new("/proc/sys").join(key.replace('.', "/"))
}

/// The current value of a sysctl.
pub fn read_sysctl(key: &str) -> Result<String> {
    let p = sysctl_path(key);
    std::fs::read_to_string(&p)
        .map(|s| s.trim().to_string())
        .map_err(ClusterError::io("reading", &p))
}

fn write_sysctl(key: &str, value: &str) -> Result<()> {
    let p = sysctl_path(key);
    std::fs::write(&p, value).map_err(ClusterError::io("writing", &p))
}

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone)]
pub struct MountInfo {
    pub mount_point: String,
    pub shared: bool,
    pub fs_type: String,
}

/// Undoes mountinfo's octal escapes (`\040` for a space, …).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let escaped = (b[i] == b'\\')
            .then(|| s.get(i + 1..i + 4))
            .flatten()
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        if let Some(v) = escaped {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The host's mounts, in mount order.
pub fn mounts() -> Result<Vec<MountInfo>> {
    let p = Path::new("/proc/self/mountinfo");
    let text = std::fs::read_to_string(p).map_err(ClusterError::io("reading", p))?;
    let mut out = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let (Some(mp), Some(fs_type)) = (fields.get(4), fields.get(sep + 1)) else {
            continue;
        };
        let shared = fields
            .get(6..sep)
            .is_some_and(|opt| opt.iter().any(|o| o.starts_with("shared:")));
        out.push(MountInfo {
            mount_point: unescape(mp),
            shared,
            fs_type: (*fs_type).to_string(),
        });
    }
    Ok(out)
}

/// Records the host's settings (overwriting an earlier record, which `down` consumed).
pub fn record(layout: &Layout) -> Result<HostRecord> {
    let mut rec = HostRecord::default();
    for key in SYSCTLS {
        rec.sysctls.insert((*key).to_string(), read_sysctl(key)?);
    }
    rec.created_paths = FIXED_HOST_PATHS
        .iter()
        .filter(|p| !Path::new(p).exists())
        .map(|p| (*p).to_string())
        .collect();
    let path = layout.host_record();
    let text = serde_json::to_string_pretty(&rec)
        .map_err(|e| ClusterError::Setup(format!("host record: {e}")))?;
    super::pki::write(&path, &text)?;
    Ok(rec)
}

/// Restores what [`record`] saw; returns a line per change. Removes the record.
pub fn restore(layout: &Layout) -> Result<Vec<String>> {
    let path = layout.host_record();
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(Vec::new());
    };
    let rec: HostRecord = serde_json::from_str(&text)
        .map_err(|e| ClusterError::Setup(format!("{}: {e}", path.display())))?;
    let mut changes = Vec::new();
    for (key, old) in &rec.sysctls {
        let now = read_sysctl(key)?;
        if &now != old {
            write_sysctl(key, old)?;
            changes.push(format!("sysctl {key}: {now} -> {old}"));
        }
    }
    for p in &rec.created_paths {
        let dir = Path::new(p);
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(ClusterError::io("removing", dir))?;
            changes.push(format!("{p}: created by the cluster, removed"));
        }
    }
    std::fs::remove_file(&path).map_err(ClusterError::io("removing", &path))?;
    Ok(changes)
}

#[cfg(test)]
mod tests {
    #[test]
    fn unescapes_mountinfo() {
        assert_eq!(super::unescape(r"/a\040b"), "/a b");
        assert_eq!(super::unescape(r"/plain"), "/plain");
        assert_eq!(super::unescape(r"/end\"), "/end\\");
    }
}
