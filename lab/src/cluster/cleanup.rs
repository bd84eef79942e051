//! Tearing the cluster down, also after a crash: stop the kubelet, kill what runs in the
//! `kubepods` cgroups and our containerd shims (found by PID), stop the other components by
//! their PID files, unmount everything under our directories, remove the `kubepods`
//! cgroups, the bridge and containerd's state, and restore the recorded host settings.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::cni;
use super::error::{ClusterError, Result};
use super::exec;
use super::host;
use super::layout::Layout;
use super::processes::{self, COMPONENTS};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// What a teardown did.
#[derive(Debug, Default)]
pub struct Report {
    pub stopped: Vec<String>,
    pub killed: usize,
    pub unmounted: usize,
    pub cgroups_removed: usize,
    pub restored: Vec<String>,
    pub leftovers: Vec<String>,
}

/// Every `kubepods` cgroup directory, one per mounted hierarchy.
fn kubepods_roots() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(CGROUP_ROOT) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path().join("kubepods"))
        .filter(|p| p.is_dir())
        .collect()
}

/// `dir` and its descendant directories, deepest first.
fn subtree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(subtree(&e.path()));
            }
        }
    }
    out.push(dir.to_path_buf());
    out
}

/// PIDs in any `kubepods` cgroup.
fn pod_pids() -> Vec<u32> {
    let mut pids = Vec::new();
    for root in kubepods_roots() {
        for dir in subtree(&root) {
            if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
            }
        }
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// PIDs whose executable is `exe`.
fn pids_of_exe(exe: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let want = exe.to_string_lossy().into_owned();
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| {
                let p = p.to_string_lossy();
                p == want || p.strip_suffix(" (deleted)") == Some(want.as_str())
            })
        })
        .collect()
}

/// SIGKILLs the pods' processes and our shims until none is left (or 10 s passed).
fn kill_workloads(layout: &Layout) -> usize {
    let shim = layout.binary("containerd-shim-runc-v2");
    let mut killed = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut pids = pod_pids();
        pids.extend(pids_of_exe(&shim));
        pids.retain(|p| processes::start_time(*p).is_some());
        if pids.is_empty() || Instant::now() > deadline {
            return killed;
        }
        for pid in &pids {
            processes::signal(*pid, libc::SIGKILL);
        }
        killed += pids.len();
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Unmounts every mount under our directories, deepest first.
fn unmount_all(layout: &Layout, report: &mut Report) -> Result<()> {
    for _round in 0..5 {
        let mut mine: Vec<String> = host::mounts()?
            .into_iter()
            .map(|m| m.mount_point)
            .filter(|mp| layout.owns(Path::new(mp)))
            .collect();
        if mine.is_empty() {
            return Ok(());
        }
        mine.sort_by_key(|m| std::cmp::Reverse(m.len()));
        mine.dedup();
        for mp in &mine {
            if exec::run("umount", [mp.as_str()]).is_err() {
                let _ = exec::run("umount", ["-l", mp.as_str()]);
            }
            report.unmounted += 1;
        }
    }
    let left: Vec<String> = host::mounts()?
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|mp| layout.owns(Path::new(mp)))
        .collect();
    report
        .leftovers
        .extend(left.into_iter().map(|m| format!("mount {m}")));
    Ok(())
}

/// Removes the `kubepods` cgroup trees (they are empty once their processes died).
fn remove_cgroups(report: &mut Report) {
    for root in kubepods_roots() {
        for dir in subtree(&root) {
            let mut ok = false;
            for _ in 0..20 {
                if std::fs::remove_dir(&dir).is_ok() || !dir.exists() {
                    ok = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if ok {
                report.cgroups_removed += 1;
            } else {
                report.leftovers.push(format!("cgroup {}", dir.display()));
            }
        }
    }
}

/// Removes `dir`'s contents except the names in `keep`.
fn clear_dir(dir: &Path, keep: &[&str]) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        if keep.iter().any(|k| e.file_name() == *k) {
            continue;
        }
        let p = e.path();
        let r = if e.file_type().is_ok_and(|t| t.is_dir()) {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        r.map_err(ClusterError::io("removing", &p))?;
    }
    Ok(())
}

/// containerd 2 puts shim sockets under the fixed /run/containerd/s whatever its state dir.
/// No other containerd runs on a lab machine; if the directory holds nothing but that, it is
/// ours and goes (otherwise it is reported and left alone).
fn remove_shim_socket_dir(report: &mut Report) {
    let dir = Path::new("/run/containerd");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if names.iter().all(|n| n == "s") {
        if std::fs::remove_dir_all(dir).is_err() {
            report.leftovers.push(format!("dir {}", dir.display()));
        }
    } else {
        report.leftovers.push(format!(
            "dir {} (holds {names:?}, not ours alone)",
            dir.display()
        ));
    }
}

/// Stops and removes everything the cluster made (idempotent; safe after a crash).
pub fn teardown(layout: &Layout) -> Result<Report> {
    let mut report = Report::default();
    let grace = Duration::from_secs(10);
    // The kubelet first, so it does not restart the containers killed next.
    if processes::stop(layout, "kubelet", grace) {
        report.stopped.push("kubelet".into());
    }
    report.killed = kill_workloads(layout);
    for name in COMPONENTS.iter().rev().filter(|n| **n != "kubelet") {
        if processes::stop(layout, name, grace) {
            report.stopped.push((*name).to_string());
        }
    }
    // Shims that outlived containerd.
    report.killed += kill_workloads(layout);
    unmount_all(layout, &mut report)?;
    remove_cgroups(&mut report);
    cni::teardown()?;
    report.restored = host::restore(layout)?;
    if report.leftovers.iter().any(|l| l.starts_with("mount ")) {
        return Err(ClusterError::Setup(format!(
            "mounts left under our directories, state kept: {:?}",
            report.leftovers
        )));
    }
    remove_shim_socket_dir(&mut report);
    clear_dir(&layout.state, &["logs"])?;
    clear_dir(&layout.run, &[])?;
    Ok(report)
}
