//! Memory cgroups, one per container instance, as a container runtime creates them.
//!
//! At start the kubelet finds its own memory cgroup (`/proc/self/cgroup` +
//! `/proc/self/mountinfo`; cgroup v1 `memory` controller or the v2 unified hierarchy) and
//! creates `<own>/selfheal-lab-<pid>-<n>` beneath it. Each container instance gets
//! `<root>/kubepods[/burstable|/besteffort]/pod<uid>/<container id>` (the real kubelet's
//! cgroupfs layout with containerd, so that the node agent finds it as on a node, with
//! the lab root as the kubelet's `cgroupRoot`) with `memory.limit_in_bytes` (and
//! `memory.memsw.limit_in_bytes`, so swap cannot hide an OOM) or `memory.max`; the child
//! joins it before `exec` (it writes `0` to a `cgroup.procs` opened by the parent). After
//! the process is reaped the kernel's `oom_kill` counter (`memory.oom_control` /
//! `memory.events`) says whether it was OOM-killed, and the directory is removed.
//!
//! Where no cgroup can be created, [`CgroupRoot::detect`] says why; the kubelet then runs
//! containers without memory limits and never reports `OOMKilled`.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

static ROOTS: AtomicU32 = AtomicU32::new(0);

/// cgroup v1 or v2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// Legacy hierarchy with a `memory` controller mount.
    V1,
    /// Unified hierarchy.
    V2,
}

/// The kubelet's own cgroup directory, under which container cgroups are made.
#[derive(Debug)]
pub struct CgroupRoot {
    path: PathBuf,
    version: CgroupVersion,
}

/// One container instance's cgroup.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
    version: CgroupVersion,
    removed: bool,
}

struct Mount {
    root: String,
    point: PathBuf,
    fstype: String,
    super_opts: String,
}

fn mounts() -> Vec<Mount> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let pre: Vec<&str> = pre.split(' ').collect();
            let post: Vec<&str> = post.split(' ').collect();
            Some(Mount {
                root: (*pre.get(3)?).to_string(),
                point: PathBuf::from((*pre.get(4)?).replace("\\040", " ")),
                fstype: (*post.first()?).to_string(),
                super_opts: post.get(2).copied().unwrap_or_default().to_string(),
            })
        })
        .collect()
}

fn join_rel(m: &Mount, own: &str) -> PathBuf {
    let rel = own
        .strip_prefix(m.root.as_str())
        .filter(|_| m.root != "/")
        .unwrap_or(own);
    m.point.join(rel.trim_start_matches('/'))
}

/// Where this process's memory cgroup is (v1 preferred when both exist).
fn own_memory_cgroup() -> Result<(PathBuf, CgroupVersion), String> {
    let text = fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
    let mounts = mounts();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next(), parts.next());
        let (Some(controllers), Some(path)) = (controllers, path) else {
            continue;
        };
        if controllers.split(',').any(|c| c == "memory")
            && let Some(m) = mounts
                .iter()
                .find(|m| m.fstype == "cgroup" && m.super_opts.split(',').any(|o| o == "memory"))
        {
            return Ok((join_rel(m, path), CgroupVersion::V1));
        }
    }
    for line in text.lines() {
        if let Some(path) = line.strip_prefix("0::")
            && let Some(m) = mounts.iter().find(|m| m.fstype == "cgroup2")
        {
            return Ok((join_rel(m, path), CgroupVersion::V2));
        }
    }
    Err("no cgroup v1 memory controller and no cgroup v2 hierarchy is mounted".into())
}

impl CgroupRoot {
    /// Creates the kubelet's cgroup root beneath its own memory cgroup, or says why not.
    pub fn detect() -> Result<CgroupRoot, String> {
        let (own, version) = own_memory_cgroup()?;
        let n = ROOTS.fetch_add(1, Ordering::Relaxed);
        let path = own.join(format!("selfheal-lab-{}-{n}", std::process::id()));
        fs::create_dir(&path)
            .map_err(|e| format!("cannot create cgroup {}: {e}", path.display()))?;
        let root = CgroupRoot { path, version };
        let check = match version {
            CgroupVersion::V1 => {
                if root.path.join("memory.limit_in_bytes").exists() {
                    Ok(())
                } else {
                    Err("memory.limit_in_bytes missing".to_string())
                }
            }
            CgroupVersion::V2 => root.enable_v2_memory(&own),
        };
        match check {
            Ok(()) => Ok(root),
            Err(e) => {
                let msg = format!("cgroup {} unusable: {e}", root.path.display());
                root.remove();
                Err(msg)
            }
        }
    }

    fn enable_v2_memory(&self, own: &Path) -> Result<(), String> {
        let has_memory = |p: &Path| {
            fs::read_to_string(p.join("cgroup.controllers"))
                .is_ok_and(|c| c.split_whitespace().any(|x| x == "memory"))
        };
        if !has_memory(&self.path) {
            fs::write(own.join("cgroup.subtree_control"), "+memory").map_err(|e| {
                format!(
                    "memory controller not delegated to {} and enabling it failed ({e}); run the lab in a cgroup of its own",
                    own.display()
                )
            })?;
        }
        if !has_memory(&self.path) {
            return Err("memory controller not available".into());
        }
        fs::write(self.path.join("cgroup.subtree_control"), "+memory")
            .map_err(|e| format!("enabling memory for children: {e}"))
    }

    /// The root directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// v1 or v2.
    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// Creates a container cgroup named `name` limited to `limit` bytes (if any).
    pub fn create(&self, name: &str, limit: Option<u64>) -> Result<Cgroup, String> {
        self.create_at(Path::new(name), limit)
    }

    /// Creates a container cgroup at `relative` (its parents as needed, with the memory
    /// controller enabled for their children on v2) limited to `limit` bytes (if any).
    pub fn create_at(&self, relative: &Path, limit: Option<u64>) -> Result<Cgroup, String> {
        let parts: Vec<String> = relative
            .components()
            .map(|part| safe_name(&part.as_os_str().to_string_lossy()))
            .filter(|part| !part.is_empty())
            .collect();
        let Some((leaf, parents)) = parts.split_last() else {
            return Err(format!("empty cgroup path {}", relative.display()));
        };
        let mut path = self.path.clone();
        for parent in parents {
            path.push(parent);
            match fs::create_dir(&path) {
                Ok(()) => {
                    if self.version == CgroupVersion::V2 {
                        fs::write(path.join("cgroup.subtree_control"), "+memory").map_err(|e| {
                            format!("enabling memory for children of {}: {e}", path.display())
                        })?;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(format!("mkdir {}: {e}", path.display())),
            }
        }
        path.push(leaf);
        fs::create_dir(&path).map_err(|e| format!("mkdir {}: {e}", path.display()))?;
        let cg = Cgroup {
            path,
            version: self.version,
            removed: false,
        };
        if let Some(limit) = limit {
            let set = |file: &str| {
                fs::write(cg.path.join(file), limit.to_string())
                    .map_err(|e| format!("setting {file} to {limit}: {e}"))
            };
            match self.version {
                CgroupVersion::V1 => {
                    set("memory.limit_in_bytes")?;
                    if cg.path.join("memory.memsw.limit_in_bytes").exists() {
                        set("memory.memsw.limit_in_bytes")?;
                    }
                }
                CgroupVersion::V2 => {
                    set("memory.max")?;
                    if cg.path.join("memory.swap.max").exists() {
                        fs::write(cg.path.join("memory.swap.max"), "0")
                            .map_err(|e| format!("setting memory.swap.max: {e}"))?;
                    }
                }
            }
        }
        Ok(cg)
    }

    /// Removes the root and anything left beneath it (killing stray processes),
    /// deepest cgroups first.
    pub fn remove(&self) {
        remove_children(&self.path, self.version);
        let _ = rmdir_retry(&self.path);
    }
}

/// Removes every cgroup below `path`, children before their parents.
fn remove_children(path: &Path, version: CgroupVersion) {
    if let Ok(dir) = fs::read_dir(path) {
        for e in dir.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_children(&e.path(), version);
                let mut cg = Cgroup {
                    path: e.path(),
                    version,
                    removed: false,
                };
                cg.remove_blocking();
            }
        }
    }
}

/// A path component made of letters, digits and `-` (anything else becomes `_`).
fn safe_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn rmdir_retry(path: &Path) -> std::io::Result<()> {
    let mut last = Ok(());
    for _ in 0..50 {
        last = fs::remove_dir(path);
        match &last {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    last
}

impl Cgroup {
    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens `cgroup.procs` for the child to write `0` into before `exec`.
    pub fn procs_file(&self) -> std::io::Result<fs::File> {
        fs::OpenOptions::new()
            .write(true)
            .open(self.path.join("cgroup.procs"))
    }

    /// How many processes the kernel OOM-killed in this cgroup.
    pub fn oom_kills(&self) -> u64 {
        let file = match self.version {
            CgroupVersion::V1 => "memory.oom_control",
            CgroupVersion::V2 => "memory.events",
        };
        fs::read_to_string(self.path.join(file))
            .ok()
            .and_then(|t| {
                t.lines().find_map(|l| {
                    l.strip_prefix("oom_kill ")
                        .and_then(|n| n.trim().parse::<u64>().ok())
                })
            })
            .unwrap_or(0)
    }

    /// Pids still in the cgroup.
    pub fn pids(&self) -> Vec<i32> {
        fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Kills whatever is left in the cgroup and removes it (blocks briefly).
    pub fn remove_blocking(&mut self) {
        if self.removed {
            return;
        }
        for _ in 0..50 {
            let pids = self.pids();
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                super::runtime::signal_pid(pid, libc::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Err(e) = rmdir_retry(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove cgroup");
        }
        self.removed = true;
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        self.remove_blocking();
    }
}

/// Writes `0` ("this process") into an open `cgroup.procs`: the child joins the cgroup.
/// Only a `write(2)`, so it is safe between `fork` and `exec`.
pub fn join_self(procs: &fs::File) -> std::io::Result<()> {
    let mut f = procs;
    f.write_all(b"0")
}
