//! Test fixtures: cgroup trees in a temporary directory laid out as the kubelet and
//! containerd lay them out (v1/v2 × cgroupfs/systemd), with the files the kernel
//! writes, in the kernel's format.

use std::path::{Path, PathBuf};

use super::cgroup_path::{self, CgroupVersion, ContainerId, KubeletRoot, QosClass};

/// The cgroup driver a fixture tree imitates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    Cgroupfs,
    Systemd,
}

/// A fake `/sys/fs/cgroup`.
pub struct FixtureTree {
    dir: tempfile::TempDir,
    version: CgroupVersion,
    driver: Driver,
    pub pod_uid: String,
}

impl FixtureTree {
    pub fn new(version: CgroupVersion, driver: Driver) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        match version {
            CgroupVersion::V1 => {
                let memory = dir.path().join("memory");
                std::fs::create_dir_all(&memory).expect("mkdir");
                std::fs::write(
                    memory.join("memory.limit_in_bytes"),
                    "9223372036854771712\n",
                )
                .expect("write");
                // A hybrid host's unified mount must not make it v2.
                std::fs::create_dir_all(dir.path().join("unified")).expect("mkdir");
            }
            CgroupVersion::V2 => {
                std::fs::write(
                    dir.path().join("cgroup.controllers"),
                    "cpu io memory pids\n",
                )
                .expect("write");
            }
        }
        FixtureTree {
            dir,
            version,
            driver,
            pod_uid: "0f1e2d3c-4b5a-6978-8a9b-abcdefabcdef".to_owned(),
        }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Creates (or rewrites) container `id`'s cgroup with `oom_kill` kills, populated or
    /// not; returns its directory.
    pub fn container(&self, qos: QosClass, id: &str, oom_kill: u64, populated: bool) -> PathBuf {
        let container = ContainerId::parse(&format!("containerd://{id}")).expect("valid id");
        let relative = match self.driver {
            Driver::Cgroupfs => {
                cgroup_path::cgroupfs(&KubeletRoot::default(), qos, &self.pod_uid, &container)
            }
            Driver::Systemd => cgroup_path::systemd(qos, &self.pod_uid, &container),
        };
        let dir = self.version.memory_hierarchy(self.root()).join(relative);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let write = |file: &str, text: String| std::fs::write(dir.join(file), text).expect("write");
        let limit = 48u64 << 20;
        let peak = 40u64 << 20;
        match self.version {
            CgroupVersion::V1 => {
                write(
                    "memory.oom_control",
                    format!("oom_kill_disable 0\nunder_oom 0\noom_kill {oom_kill}\n"),
                );
                write("memory.max_usage_in_bytes", format!("{peak}\n"));
                write("memory.limit_in_bytes", format!("{limit}\n"));
                write(
                    "cgroup.procs",
                    if populated { "4242\n4243\n" } else { "" }.to_owned(),
                );
            }
            CgroupVersion::V2 => {
                write(
                    "memory.events",
                    format!(
                        "low 0\nhigh 0\nmax 7\noom {oom_kill}\noom_kill {oom_kill}\noom_group_kill 0\n"
                    ),
                );
                write("memory.peak", format!("{peak}\n"));
                write("memory.max", format!("{limit}\n"));
                write(
                    "cgroup.events",
                    format!("populated {}\nfrozen 0\n", u8::from(populated)),
                );
            }
        }
        dir
    }
}
