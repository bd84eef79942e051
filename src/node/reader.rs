//! The I/O edge of the node agent: finding each container's memory cgroup under the
//! read-only cgroup mount and reading its files into a [`Reading`], plus the kernel's
//! change notifications where a read-only mount allows them.
//!
//! - **cgroup v2**: the kernel notifies a change of `memory.events` as a file
//!   modification, so each container's `memory.events` gets an inotify watch
//!   (`IN_MODIFY`) and an OOM kill is read within milliseconds, before the runtime
//!   removes the cgroup of a container that died of it. The periodic re-read stays as the
//!   safety net (a full inotify queue, a watch added after the kill).
//! - **cgroup v1**: the only OOM notification is an eventfd registered by *writing*
//!   `<eventfd> <fd of memory.oom_control>` to `cgroup.event_control`, which a read-only
//!   mount forbids (and which would need write access to every container's cgroup). The
//!   agent polls instead, at `node.reread_interval`. A process OOM kill in a living
//!   container stays visible in the counter, so polling loses none of those; only the
//!   kill of a container's init process can be missed when the runtime removes the
//!   cgroup within one interval of the kill (the kubelet's `OOMKilled` still counts it;
//!   an `Error`/137 from a lost runtime event then cannot be reclassified).
//!
//! Every failure is a value: a cgroup that vanished is [`Reading::Vanished`], a file
//! that cannot be read or parsed is a [`ReadError`] the caller counts.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::inotify;
use thiserror::Error;

use super::cgroup_path::{self, CgroupVersion, ContainerId, KubeletRoot, QosClass};
use super::counters::{self, CounterError, Snapshot};
use super::reconcile::Reading;

/// The container instance whose cgroup is wanted.
#[derive(Clone, Debug)]
pub struct Target {
    /// The full `containerID` (`containerd://…`), the instance's key.
    pub key: Arc<str>,
    pub id: ContainerId,
    pub pod_uid: Arc<str>,
    pub qos: Option<QosClass>,
}

/// A cgroup that exists but cannot be read.
#[derive(Debug, Error)]
pub enum ReadError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {source}")]
    Malformed {
        path: PathBuf,
        #[source]
        source: CounterError,
    },
    #[error("{0}")]
    Path(#[from] cgroup_path::PathError),
}

impl ReadError {
    /// The `kind` label of `selfheal_node_cgroup_read_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            ReadError::Io { .. } => "io",
            ReadError::Malformed { .. } => "malformed",
            ReadError::Path(_) => "bad_id",
        }
    }
}

/// Where the memory hierarchy is, and which version it is.
#[derive(Debug, Error)]
pub enum DetectError {
    #[error(
        "{0}: neither a cgroup v2 mount (cgroup.controllers) nor a cgroup v1 memory \
         controller (memory/memory.limit_in_bytes) is there; mount the host's /sys/fs/cgroup \
         there read-only, or set node.cgroup_root"
    )]
    NoMemoryController(PathBuf),
}

/// The version of the hierarchy mounted at `cgroup_root`: v2 when it is a unified mount
/// (`cgroup.controllers` at its top), else v1 when the `memory` controller is mounted
/// below it. A hybrid host (v2 at `unified/`, memory on v1) is v1.
pub fn detect_version(cgroup_root: &Path) -> Result<CgroupVersion, DetectError> {
    if cgroup_root.join("cgroup.controllers").is_file() {
        Ok(CgroupVersion::V2)
    } else if cgroup_root.join("memory/memory.limit_in_bytes").is_file() {
        Ok(CgroupVersion::V1)
    } else {
        Err(DetectError::NoMemoryController(cgroup_root.to_path_buf()))
    }
}

#[derive(Debug)]
struct Located {
    dir: PathBuf,
    watch: Option<i32>,
}

/// Reads the memory cgroups of the node's containers.
#[derive(Debug)]
pub struct CgroupReader {
    hierarchy: PathBuf,
    version: CgroupVersion,
    kubelet_root: KubeletRoot,
    inotify: Option<OwnedFd>,
    located: foldhash::HashMap<Arc<str>, Located>,
    watches: foldhash::HashMap<i32, Arc<str>>,
}

impl CgroupReader {
    /// A reader of the hierarchy under `cgroup_root` (`/sys/fs/cgroup`). On v2 it also
    /// sets up inotify; when that fails it only polls (said in the log).
    pub fn new(cgroup_root: &Path, version: CgroupVersion, kubelet_root: KubeletRoot) -> Self {
        let inotify = match version {
            CgroupVersion::V1 => None,
            CgroupVersion::V2 => {
                match inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)
                {
                    Ok(fd) => Some(fd),
                    Err(error) => {
                        tracing::warn!(%error, "cannot create an inotify instance: polling memory.events only");
                        None
                    }
                }
            }
        };
        CgroupReader {
            hierarchy: version.memory_hierarchy(cgroup_root),
            version,
            kubelet_root,
            inotify,
            located: foldhash::HashMap::default(),
            watches: foldhash::HashMap::default(),
        }
    }

    /// Cgroups found and followed.
    pub fn located(&self) -> usize {
        self.located.len()
    }

    /// The inotify descriptor, to wait on for readability (v2 only).
    pub fn events_fd(&self) -> Option<BorrowedFd<'_>> {
        self.inotify.as_ref().map(AsFd::as_fd)
    }

    /// Reads `target`'s cgroup, finding it first if need be.
    pub fn read(&mut self, target: &Target) -> Result<Reading, ReadError> {
        let dir = match self.located.get(&target.key) {
            Some(located) => located.dir.clone(),
            None => match self.locate(target)? {
                Some(dir) => dir,
                None => return Ok(Reading::Vanished),
            },
        };
        match self.read_dir(&dir) {
            Ok(Some(snapshot)) => Ok(Reading::Counters(snapshot)),
            Ok(None) => {
                // Gone: found again if it comes back.
                self.forget(&target.key);
                Ok(Reading::Vanished)
            }
            Err(error) => Err(error),
        }
    }

    /// Stops following an instance (drops its inotify watch).
    pub fn forget(&mut self, key: &str) {
        if let Some(located) = self.located.remove(key)
            && let Some(wd) = located.watch
        {
            self.watches.remove(&wd);
            if let Some(fd) = &self.inotify {
                // Fails with EINVAL when the kernel already dropped it (cgroup removed).
                let _ = inotify::remove_watch(fd, wd);
            }
        }
    }

    /// Keeps only the instances for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        let gone: Vec<Arc<str>> = self
            .located
            .keys()
            .filter(|key| !keep(key))
            .cloned()
            .collect();
        for key in gone {
            self.forget(&key);
        }
    }

    /// The instances whose `memory.events` changed since the last call (v2): drains the
    /// inotify queue without blocking. A queue overflow returns `None`: re-read all.
    pub fn changed(&mut self) -> Option<Vec<Arc<str>>> {
        let fd = self.inotify.as_ref()?;
        let mut buffer = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
        let mut reader = inotify::Reader::new(fd, &mut buffer);
        let mut changed = Vec::new();
        let mut overflow = false;
        loop {
            match reader.next() {
                Ok(event) => {
                    if event.events().contains(inotify::ReadFlags::QUEUE_OVERFLOW) {
                        overflow = true;
                    }
                    if let Some(key) = self.watches.get(&event.wd())
                        && !changed.contains(key)
                    {
                        changed.push(key.clone());
                    }
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(_) => break,
            }
        }
        (!overflow).then_some(changed)
    }

    fn locate(&mut self, target: &Target) -> Result<Option<PathBuf>, ReadError> {
        let candidates =
            cgroup_path::candidates(&self.kubelet_root, target.qos, &target.pod_uid, &target.id)?;
        let Some(dir) = candidates
            .into_iter()
            .map(|relative| self.hierarchy.join(relative))
            .find(|dir| dir.is_dir())
        else {
            return Ok(None);
        };
        let watch = self.inotify.as_ref().and_then(|fd| {
            inotify::add_watch(
                fd,
                dir.join("memory.events").as_path(),
                inotify::WatchFlags::MODIFY,
            )
            .ok()
        });
        if let Some(wd) = watch {
            self.watches.insert(wd, target.key.clone());
        }
        self.located.insert(
            target.key.clone(),
            Located {
                dir: dir.clone(),
                watch,
            },
        );
        Ok(Some(dir))
    }

    /// The snapshot of the cgroup at `dir`; `None` when it no longer exists.
    fn read_dir(&self, dir: &Path) -> Result<Option<Snapshot>, ReadError> {
        let Some(snapshot) = (match self.version {
            CgroupVersion::V1 => read_v1(dir)?,
            CgroupVersion::V2 => read_v2(dir)?,
        }) else {
            return Ok(None);
        };
        Ok(Some(snapshot))
    }
}

/// Reads `dir/file`; `None` when it does not exist (the cgroup is gone).
fn read_file(dir: &Path, file: &str) -> Result<Option<String>, ReadError> {
    let path = dir.join(file);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text)),
        // ENODEV: the cgroup is being removed while the file is open.
        Err(error)
            if error.kind() == io::ErrorKind::NotFound || error.raw_os_error() == Some(19) =>
        {
            Ok(None)
        }
        Err(source) => Err(ReadError::Io { path, source }),
    }
}

fn malformed(dir: &Path, file: &str) -> impl FnOnce(CounterError) -> ReadError {
    let path = dir.join(file);
    move |source| ReadError::Malformed { path, source }
}

/// An optional value: a file that vanished in between or does not parse gives `None`
/// rather than failing the counters' reading.
fn optional<T>(dir: &Path, file: &'static str, parse: impl FnOnce(&str) -> Option<T>) -> Option<T> {
    read_file(dir, file)
        .ok()
        .flatten()
        .and_then(|text| parse(&text))
}

fn read_v2(dir: &Path) -> Result<Option<Snapshot>, ReadError> {
    const EVENTS: &str = "memory.events";
    let Some(text) = read_file(dir, EVENTS)? else {
        return Ok(None);
    };
    let events = counters::parse_events_v2(&text).map_err(malformed(dir, EVENTS))?;
    Ok(Some(Snapshot {
        oom_kill: events.oom_kill,
        oom_group_kill: events.oom_group_kill,
        oom: Some(events.oom),
        under_oom: None,
        peak_bytes: optional(dir, "memory.peak", |t| {
            counters::parse_bytes("memory.peak", t).ok()
        }),
        limit_bytes: optional(dir, "memory.max", |t| {
            counters::parse_limit("memory.max", t).ok().flatten()
        }),
        populated: optional(dir, "cgroup.events", |t| {
            counters::parse_populated_v2(t).ok()
        }),
    }))
}

fn read_v1(dir: &Path) -> Result<Option<Snapshot>, ReadError> {
    const CONTROL: &str = "memory.oom_control";
    let Some(text) = read_file(dir, CONTROL)? else {
        return Ok(None);
    };
    let control = counters::parse_oom_control_v1(&text).map_err(malformed(dir, CONTROL))?;
    Ok(Some(Snapshot {
        oom_kill: control.oom_kill,
        oom_group_kill: 0,
        oom: None,
        under_oom: Some(control.under_oom),
        peak_bytes: optional(dir, "memory.max_usage_in_bytes", |t| {
            counters::parse_bytes("memory.max_usage_in_bytes", t).ok()
        }),
        limit_bytes: optional(dir, "memory.limit_in_bytes", |t| {
            counters::parse_limit("memory.limit_in_bytes", t)
                .ok()
                .flatten()
        }),
        populated: optional(dir, "cgroup.procs", |t| {
            Some(counters::parse_populated_v1(t))
        }),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::fixtures::{Driver, FixtureTree};

    fn target(tree: &FixtureTree, id: &str, qos: Option<QosClass>) -> Target {
        let key: Arc<str> = Arc::from(format!("containerd://{id}"));
        Target {
            id: ContainerId::parse(&key).expect("valid"),
            key,
            pod_uid: Arc::from(tree.pod_uid.as_str()),
            qos,
        }
    }

    #[test]
    fn each_layout_is_found_and_read() {
        for version in [CgroupVersion::V1, CgroupVersion::V2] {
            for driver in [Driver::Cgroupfs, Driver::Systemd] {
                for qos in QosClass::ALL {
                    let tree = FixtureTree::new(version, driver);
                    let dir = tree.container(qos, "abc1", 3, true);
                    assert_eq!(
                        detect_version(tree.root()).expect("detected"),
                        version,
                        "{dir:?}"
                    );
                    let mut reader =
                        CgroupReader::new(tree.root(), version, KubeletRoot::default());
                    // Known and unknown QoS class alike.
                    for known in [Some(qos), None] {
                        let reading = reader.read(&target(&tree, "abc1", known));
                        let Ok(Reading::Counters(snapshot)) = reading else {
                            panic!("{version:?} {driver:?} {qos:?}: {reading:?} at {dir:?}");
                        };
                        assert_eq!(snapshot.oom_kill, 3);
                        assert_eq!(snapshot.populated, Some(true));
                        assert_eq!(snapshot.limit_bytes, Some(48 << 20));
                        assert_eq!(snapshot.peak_bytes, Some(40 << 20));
                        reader.forget(&target(&tree, "abc1", known).key);
                    }
                }
            }
        }
    }

    #[test]
    fn vanishing_and_reappearing_cgroups_and_malformed_files() {
        let tree = FixtureTree::new(CgroupVersion::V1, Driver::Cgroupfs);
        let mut reader = CgroupReader::new(tree.root(), CgroupVersion::V1, KubeletRoot::default());
        let t = target(&tree, "abc2", Some(QosClass::Burstable));
        // Not there yet.
        assert!(matches!(reader.read(&t), Ok(Reading::Vanished)));
        let dir = tree.container(QosClass::Burstable, "abc2", 1, true);
        assert!(matches!(reader.read(&t), Ok(Reading::Counters(s)) if s.oom_kill == 1));
        assert_eq!(reader.located(), 1);
        std::fs::remove_dir_all(&dir).expect("removed");
        assert!(matches!(reader.read(&t), Ok(Reading::Vanished)));
        assert_eq!(reader.located(), 0);
        // Recreated: found again, its counter from 0.
        tree.container(QosClass::Burstable, "abc2", 0, false);
        assert!(
            matches!(reader.read(&t), Ok(Reading::Counters(s)) if s.oom_kill == 0 && s.populated == Some(false))
        );
        std::fs::write(dir.join("memory.oom_control"), "oom_kill many\n").expect("written");
        let error = reader.read(&t).expect_err("malformed");
        assert_eq!(error.kind(), "malformed");
        assert!(error.to_string().contains("memory.oom_control"), "{error}");
    }

    #[test]
    fn a_change_of_memory_events_is_notified_on_v2() {
        let tree = FixtureTree::new(CgroupVersion::V2, Driver::Systemd);
        let dir = tree.container(QosClass::Guaranteed, "abc3", 0, true);
        let mut reader = CgroupReader::new(tree.root(), CgroupVersion::V2, KubeletRoot::default());
        assert!(reader.events_fd().is_some());
        let t = target(&tree, "abc3", Some(QosClass::Guaranteed));
        assert!(matches!(reader.read(&t), Ok(Reading::Counters(_))));
        assert_eq!(reader.changed(), Some(vec![]));
        std::fs::write(
            dir.join("memory.events"),
            "oom 1\noom_kill 1\noom_group_kill 0\n",
        )
        .expect("written");
        assert_eq!(reader.changed(), Some(vec![t.key.clone()]));
        reader.retain(|_| false);
        assert_eq!(reader.located(), 0);
    }

    #[test]
    fn no_memory_controller_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let error = detect_version(dir.path()).expect_err("nothing mounted");
        assert!(error.to_string().contains("node.cgroup_root"), "{error}");
    }
}
