//! Where a container's memory cgroup is, from what the pod object says (pod UID, QoS
//! class, `containerID`): pure path arithmetic, no I/O.
//!
//! The layouts are those the kubelet (`pkg/kubelet/cm`: `qos_container_manager_linux.go`
//! names the QoS parents, `pod_container_manager_linux.go` the pod cgroup `pod<uid>`,
//! `cgroup_manager_linux.go` turns a cgroup name into a systemd slice path) and the
//! runtimes (containerd's CRI plugin, CRI-O, cri-dockerd; runc's `libcontainer/cgroups`
//! expands `slice:prefix:id` into `…/prefix-id.scope`) create:
//!
//! ```text
//! cgroupfs: [<kubelet cgroup root>/]kubepods[/burstable|/besteffort]/pod<uid>/<id>
//!           (CRI-O: …/pod<uid>/crio-<id>)
//! systemd:  kubepods.slice[/kubepods-burstable.slice|/kubepods-besteffort.slice]/
//!           kubepods[-burstable|-besteffort]-pod<uid with _ for ->.slice/
//!           cri-containerd-<id>.scope | crio-<id>.scope | docker-<id>.scope
//! ```
//!
//! Guaranteed pods sit directly under `kubepods` (no QoS level). On cgroup v1 the tree is
//! under the `memory` controller's mount (`/sys/fs/cgroup/memory`), on v2 under the
//! unified mount itself. The driver is not configured: both layouts are candidates and
//! the reader keeps the one that exists.
//!
//! Everything here comes from the API server, so the UID and the container ID are
//! checked to be plain names before they become path components: a `containerID` such
//! as `containerd://../../x` resolves to nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;

/// cgroup v1 (legacy hierarchy with a `memory` controller) or v2 (unified).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CgroupVersion {
    V1,
    V2,
}

impl CgroupVersion {
    /// The directory under the cgroup mount root (`/sys/fs/cgroup`) that holds the
    /// memory controller's tree.
    pub fn memory_hierarchy(self, cgroup_root: &Path) -> PathBuf {
        match self {
            CgroupVersion::V1 => cgroup_root.join("memory"),
            CgroupVersion::V2 => cgroup_root.to_path_buf(),
        }
    }

    /// `v1` or `v2`, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            CgroupVersion::V1 => "v1",
            CgroupVersion::V2 => "v2",
        }
    }
}

/// The pod's `status.qosClass`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl QosClass {
    /// All three, for a pod whose status has no QoS class yet.
    pub const ALL: [QosClass; 3] = [
        QosClass::Guaranteed,
        QosClass::Burstable,
        QosClass::BestEffort,
    ];

    /// From `status.qosClass`; `None` for anything else.
    pub fn from_status(text: &str) -> Option<QosClass> {
        match text {
            "Guaranteed" => Some(QosClass::Guaranteed),
            "Burstable" => Some(QosClass::Burstable),
            "BestEffort" => Some(QosClass::BestEffort),
            _ => None,
        }
    }

    /// The QoS level's name in cgroup paths; none for Guaranteed.
    fn level(self) -> Option<&'static str> {
        match self {
            QosClass::Guaranteed => None,
            QosClass::Burstable => Some("burstable"),
            QosClass::BestEffort => Some("besteffort"),
        }
    }
}

/// The container runtime, from the scheme of `containerID`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Runtime {
    /// `containerd://`: scope prefix `cri-containerd`, cgroupfs name the bare ID.
    Containerd,
    /// `cri-o://`: prefix `crio` under both drivers.
    CriO,
    /// `docker://` (cri-dockerd): scope prefix `docker`, cgroupfs name the bare ID.
    Docker,
}

impl Runtime {
    fn scope_prefix(self) -> &'static str {
        match self {
            Runtime::Containerd => "cri-containerd",
            Runtime::CriO => "crio",
            Runtime::Docker => "docker",
        }
    }
}

/// A container instance as the kubelet names it: `<runtime>://<id>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ContainerId {
    pub runtime: Runtime,
    /// The bare ID (64 hex digits for the runtimes above).
    pub id: Arc<str>,
}

/// Why no cgroup path can be made from a pod's fields.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PathError {
    #[error("containerID {0:?} has no known runtime scheme (containerd://, cri-o://, docker://)")]
    UnknownRuntime(String),
    #[error("containerID {0:?}: the ID is not a plain name")]
    BadContainerId(String),
    #[error("pod UID {0:?} is not a plain name")]
    BadPodUid(String),
}

impl ContainerId {
    /// Parses `status.containerStatuses[].containerID`.
    pub fn parse(text: &str) -> Result<ContainerId, PathError> {
        let (scheme, id) = text
            .split_once("://")
            .ok_or_else(|| PathError::UnknownRuntime(text.to_owned()))?;
        let runtime = match scheme {
            "containerd" => Runtime::Containerd,
            "cri-o" => Runtime::CriO,
            "docker" => Runtime::Docker,
            _ => return Err(PathError::UnknownRuntime(text.to_owned())),
        };
        if !plain(id) {
            return Err(PathError::BadContainerId(text.to_owned()));
        }
        Ok(ContainerId {
            runtime,
            id: Arc::from(id),
        })
    }
}

/// Letters, digits, `-` and `_` only, 1 to 128 of them: safe as one path component.
fn plain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Where the kubelet's cgroups start: `cgroupRoot` of the kubelet config (`--cgroup-root`),
/// which only the cgroupfs driver prefixes to `kubepods` here (with the systemd driver the
/// kubelet's default `/` is assumed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KubeletRoot(String);

impl KubeletRoot {
    /// From the config value: `/` or empty is the top of the hierarchy.
    pub fn new(path: &str) -> KubeletRoot {
        KubeletRoot(path.trim_matches('/').to_owned())
    }
}

/// The candidate directories of one container's memory cgroup, relative to the memory
/// hierarchy ([`CgroupVersion::memory_hierarchy`]), most likely first: cgroupfs, then
/// systemd, for the pod's QoS class or, when it is not known, all three.
pub fn candidates(
    root: &KubeletRoot,
    qos: Option<QosClass>,
    pod_uid: &str,
    container: &ContainerId,
) -> Result<Vec<PathBuf>, PathError> {
    if !plain(pod_uid) {
        return Err(PathError::BadPodUid(pod_uid.to_owned()));
    }
    let classes: &[QosClass] = match &qos {
        Some(class) => std::slice::from_ref(class),
        None => &QosClass::ALL,
    };
    let mut paths = Vec::with_capacity(classes.len() * 2);
    for &class in classes {
        paths.push(cgroupfs(root, class, pod_uid, container));
    }
    for &class in classes {
        paths.push(systemd(class, pod_uid, container));
    }
    Ok(paths)
}

/// The cgroupfs driver's path.
pub fn cgroupfs(
    root: &KubeletRoot,
    qos: QosClass,
    pod_uid: &str,
    container: &ContainerId,
) -> PathBuf {
    let mut path = PathBuf::new();
    if !root.0.is_empty() {
        path.push(&root.0);
    }
    path.push("kubepods");
    if let Some(level) = qos.level() {
        path.push(level);
    }
    path.push(format!("pod{pod_uid}"));
    match container.runtime {
        Runtime::CriO => path.push(format!("crio-{}", container.id)),
        Runtime::Containerd | Runtime::Docker => path.push(&*container.id),
    }
    path
}

/// The systemd driver's path: every level a slice named after all the levels above it
/// (systemd's `-` is the hierarchy separator, so the kubelet writes the UID's `-` as `_`),
/// the container a scope.
pub fn systemd(qos: QosClass, pod_uid: &str, container: &ContainerId) -> PathBuf {
    let mut path = PathBuf::from("kubepods.slice");
    let mut prefix = String::from("kubepods");
    if let Some(level) = qos.level() {
        prefix.push('-');
        prefix.push_str(level);
        path.push(format!("{prefix}.slice"));
    }
    path.push(format!("{prefix}-pod{}.slice", pod_uid.replace('-', "_")));
    path.push(format!(
        "{}-{}.scope",
        container.runtime.scope_prefix(),
        container.id
    ));
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "4a3b2c1d-0000-4e5f-8a9b-0123456789ab";
    const ID: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn containerd() -> ContainerId {
        ContainerId::parse(&format!("containerd://{ID}")).expect("valid")
    }

    #[test]
    fn container_ids_name_their_runtime_and_must_be_plain() {
        assert_eq!(containerd().runtime, Runtime::Containerd);
        assert_eq!(
            ContainerId::parse("cri-o://abc").map(|c| c.runtime),
            Ok(Runtime::CriO)
        );
        assert_eq!(
            ContainerId::parse("docker://abc").map(|c| c.runtime),
            Ok(Runtime::Docker)
        );
        assert!(matches!(
            ContainerId::parse("rkt://abc"),
            Err(PathError::UnknownRuntime(_))
        ));
        assert!(matches!(
            ContainerId::parse("abc"),
            Err(PathError::UnknownRuntime(_))
        ));
        for bad in ["containerd://", "containerd://../x", "containerd://a/b"] {
            assert!(
                matches!(ContainerId::parse(bad), Err(PathError::BadContainerId(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            candidates(&KubeletRoot::default(), None, "../etc", &containerd()),
            Err(PathError::BadPodUid(_))
        ));
    }

    #[test]
    fn cgroupfs_paths_follow_the_qos_levels() {
        let root = KubeletRoot::new("/");
        let path = |qos| cgroupfs(&root, qos, UID, &containerd());
        assert_eq!(
            path(QosClass::Guaranteed),
            PathBuf::from(format!("kubepods/pod{UID}/{ID}"))
        );
        assert_eq!(
            path(QosClass::Burstable),
            PathBuf::from(format!("kubepods/burstable/pod{UID}/{ID}"))
        );
        assert_eq!(
            path(QosClass::BestEffort),
            PathBuf::from(format!("kubepods/besteffort/pod{UID}/{ID}"))
        );
        let crio = ContainerId::parse("cri-o://abc").expect("valid");
        assert_eq!(
            cgroupfs(
                &KubeletRoot::new("/custom/"),
                QosClass::Burstable,
                UID,
                &crio
            ),
            PathBuf::from(format!("custom/kubepods/burstable/pod{UID}/crio-abc"))
        );
    }

    #[test]
    fn systemd_paths_are_nested_slices_and_a_runtime_scope() {
        let uid_ = UID.replace('-', "_");
        assert_eq!(
            systemd(QosClass::Burstable, UID, &containerd()),
            PathBuf::from(format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{ID}.scope"
            ))
        );
        assert_eq!(
            systemd(QosClass::Guaranteed, UID, &containerd()),
            PathBuf::from(format!(
                "kubepods.slice/kubepods-pod{uid_}.slice/cri-containerd-{ID}.scope"
            ))
        );
        let crio = ContainerId::parse("cri-o://abc").expect("valid");
        assert_eq!(
            systemd(QosClass::BestEffort, UID, &crio),
            PathBuf::from(format!(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/crio-abc.scope"
            ))
        );
        let docker = ContainerId::parse("docker://abc").expect("valid");
        assert!(
            systemd(QosClass::Guaranteed, UID, &docker).ends_with("docker-abc.scope"),
            "docker scope"
        );
    }

    #[test]
    fn an_unknown_qos_class_tries_all_three_under_both_drivers() {
        let all = candidates(&KubeletRoot::default(), None, UID, &containerd()).expect("valid");
        assert_eq!(all.len(), 6);
        let one = candidates(
            &KubeletRoot::default(),
            Some(QosClass::Burstable),
            UID,
            &containerd(),
        )
        .expect("valid");
        assert_eq!(one.len(), 2);
        assert!(one[0].starts_with("kubepods/burstable"));
        assert!(one[1].starts_with("kubepods.slice"));
    }

    #[test]
    fn the_memory_hierarchy_is_the_controller_mount_on_v1_and_the_root_on_v2() {
        let root = Path::new("/sys/fs/cgroup");
        assert_eq!(
            CgroupVersion::V1.memory_hierarchy(root),
            PathBuf::from("/sys/fs/cgroup/memory")
        );
        assert_eq!(CgroupVersion::V2.memory_hierarchy(root), root);
    }
}
