//! Tearing the cluster down, also after a crash: stop the kubelet, kill what runs in the
//! `kubepods` cgroups and our containerd shims (found by PID), stop the other components by
//! their PID files, remove the kubelet's and kube-proxy's iptables chains, unmount everything under our
//! directories, remove the `kubepods` cgroups, the bridge and containerd's state, and
//! restore the recorded host settings.

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

/// The iptables programs of both families: the kubelet writes its chains into both.
const IPTABLES: &[&str] = &["iptables", "ip6tables"];
/// The tables the kubelet and kube-proxy write.
const TABLES: &[&str] = &["nat", "filter", "mangle"];

/// Splits one line of `iptables -S` into its arguments (double quotes group words, as in
/// `--comment "kubernetes service portals"`).
fn split_rule(rule: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in rule.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    words.push(std::mem::take(&mut word));
                    any = false;
                }
            }
            c => {
                word.push(c);
                any = true;
            }
        }
    }
    if any {
        words.push(word);
    }
    words
}

/// The rules of one table (`iptables -S`), empty if the program or table is missing.
fn rules(program: &str, table: &str) -> Vec<String> {
    exec::run(program, ["-w", "5", "-t", table, "-S"])
        .map(|out| out.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// The `KUBE-` chains of one table.
fn kube_chains(rules: &[String]) -> Vec<String> {
    rules
        .iter()
        .filter_map(|rule| rule.strip_prefix("-N "))
        .filter(|chain| chain.starts_with("KUBE-"))
        .map(str::to_owned)
        .collect()
}

/// Removes the `KUBE-` chains the kubelet (KUBE-FIREWALL, KUBE-KUBELET-CANARY,
/// KUBE-IPTABLES-HINT, in both families) and kube-proxy (its Service chains) wrote, once
/// both are stopped: first the jumps to them from the built-in chains, then their rules,
/// then the chains. Neither removes its own on exit. A chain still there is a leftover.
/// `up` refuses to start beside another cluster, so every `KUBE-` chain here is ours.
fn remove_kube_chains(report: &mut Report) {
    for program in IPTABLES {
        for table in TABLES {
            let all = rules(program, table);
            let chains = kube_chains(&all);
            if chains.is_empty() {
                continue;
            }
            for rule in &all {
                let words = split_rule(rule);
                let jumps_to_ours = words
                    .windows(2)
                    .any(|w| w[0] == "-j" && w[1].starts_with("KUBE-"));
                if words.first().map(String::as_str) == Some("-A")
                    && words
                        .get(1)
                        .is_some_and(|chain| !chain.starts_with("KUBE-"))
                    && jumps_to_ours
                {
                    let mut delete = vec!["-w".to_owned(), "5".into(), "-t".into()];
                    delete.push((*table).to_owned());
                    delete.push("-D".into());
                    delete.extend(words.into_iter().skip(1));
                    let _ = exec::run(program, &delete);
                }
            }
            for action in ["-F", "-X"] {
                for chain in &chains {
                    let _ = exec::run(program, ["-w", "5", "-t", table, action, chain]);
                }
            }
            for chain in kube_chains(&rules(program, table)) {
                report
                    .leftovers
                    .push(format!("{program} -t {table} chain {chain}"));
            }
        }
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
    remove_kube_chains(&mut report);
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

#[cfg(test)]
mod tests {
    use super::{kube_chains, split_rule};

    #[test]
    fn a_rule_with_a_quoted_comment_splits_into_its_arguments() {
        let rule =
            r#"-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES"#;
        assert_eq!(
            split_rule(rule),
            [
                "-A",
                "PREROUTING",
                "-m",
                "comment",
                "--comment",
                "kubernetes service portals",
                "-j",
                "KUBE-SERVICES"
            ]
        );
        assert_eq!(split_rule(r#"--comment """#), ["--comment", ""]);
    }

    #[test]
    fn only_kube_chains_are_ours() {
        let rules = [
            "-P INPUT ACCEPT",
            "-N KUBE-FIREWALL",
            "-N DOCKER",
            "-N KUBE-SVC-X",
        ]
        .map(str::to_owned);
        assert_eq!(kube_chains(&rules), ["KUBE-FIREWALL", "KUBE-SVC-X"]);
    }
}
