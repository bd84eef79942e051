//! Workload identity: which Deployment, StatefulSet, DaemonSet, CronJob, … a pod belongs to.
//!
//! Counters are kept per workload so that they survive pod replacement. The identity is
//! derived from the pod alone (its controller ownerReference and labels), without extra
//! API calls: a ReplicaSet named `<deployment>-<pod-template-hash>` belongs to that
//! Deployment, and a Job named `<cronjob>-<scheduled minute>` to that CronJob.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// The workload a pod belongs to, as exported in the `namespace`, `workload_kind` and
/// `workload` labels.
///
/// Every metric update hashes and compares the workload (as part of its label set), so
/// the three names' hash is computed once, here, and equality checks it first.
#[derive(Clone, Debug)]
pub struct Workload {
    namespace: Arc<str>,
    kind: Arc<str>,
    name: Arc<str>,
    fingerprint: u64,
}

impl Workload {
    pub fn new(
        namespace: impl Into<Arc<str>>,
        kind: impl Into<Arc<str>>,
        name: impl Into<Arc<str>>,
    ) -> Self {
        let (namespace, kind, name) = (namespace.into(), kind.into(), name.into());
        let fingerprint =
            foldhash::fast::FixedState::with_seed(0).hash_one((&*namespace, &*kind, &*name));
        Workload {
            namespace,
            kind,
            name,
            fingerprint,
        }
    }

    pub fn namespace(&self) -> &Arc<str> {
        &self.namespace
    }

    /// The controller's kind: `Deployment`, `StatefulSet`, …, or `Pod` for a bare pod.
    pub fn kind(&self) -> &Arc<str> {
        &self.kind
    }

    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// A hash of the three names, the same in every process (a fixed seed).
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }
}

impl PartialEq for Workload {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint
            && self.name == other.name
            && self.kind == other.kind
            && self.namespace == other.namespace
    }
}

impl Eq for Workload {}

impl Hash for Workload {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.fingerprint);
    }
}

impl Ord for Workload {
    fn cmp(&self, other: &Self) -> Ordering {
        (&self.namespace, &self.kind, &self.name).cmp(&(&other.namespace, &other.kind, &other.name))
    }
}

impl PartialOrd for Workload {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.kind, self.name)
    }
}

/// Derives the workload of a pod from its metadata. `pod_name` is the pod's name,
/// used for bare pods.
pub fn workload_of(namespace: &str, pod_name: &str, meta: &ObjectMeta) -> Workload {
    let controller = meta
        .owner_references
        .iter()
        .flatten()
        .find(|owner| owner.controller == Some(true) && !owner.name.is_empty());
    let (kind, name): (&str, &str) = match controller {
        None => ("Pod", pod_name),
        Some(owner) => match owner.kind.as_str() {
            "ReplicaSet" => {
                let hash = meta
                    .labels
                    .as_ref()
                    .and_then(|labels| labels.get("pod-template-hash"));
                match hash.and_then(|hash| strip_suffix(&owner.name, hash)) {
                    Some(deployment) => ("Deployment", deployment),
                    None => ("ReplicaSet", &owner.name),
                }
            }
            "Job" => match cronjob_of(&owner.name) {
                Some(cronjob) => ("CronJob", cronjob),
                None => ("Job", &owner.name),
            },
            other => (other, &owner.name),
        },
    };
    Workload::new(namespace, kind, name)
}

/// `name` without its `-<suffix>`, when it has one and something is left.
fn strip_suffix<'a>(name: &'a str, suffix: &str) -> Option<&'a str> {
    let base = name.strip_suffix(suffix)?.strip_suffix('-')?;
    (!base.is_empty()).then_some(base)
}

/// The CronJob controller names its Jobs `<cronjob>-<minutes since the epoch>`; a
/// minute count has at least 8 digits for any date after 1970-03.
fn cronjob_of(job_name: &str) -> Option<&str> {
    let (base, suffix) = job_name.rsplit_once('-')?;
    let is_schedule = suffix.len() >= 8 && suffix.bytes().all(|b| b.is_ascii_digit());
    (is_schedule && !base.is_empty()).then_some(base)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn meta(owner: Option<(&str, &str)>, hash: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            owner_references: owner.map(|(kind, name)| {
                vec![OwnerReference {
                    kind: kind.into(),
                    name: name.into(),
                    controller: Some(true),
                    ..OwnerReference::default()
                }]
            }),
            labels: hash.map(|h| [("pod-template-hash".to_owned(), h.to_owned())].into()),
            ..ObjectMeta::default()
        }
    }

    fn identity(owner: Option<(&str, &str)>, hash: Option<&str>) -> (String, String) {
        let w = workload_of("ns", "pod-1", &meta(owner, hash));
        (w.kind().to_string(), w.name().to_string())
    }

    #[test]
    fn bare_pod_is_its_own_workload() {
        assert_eq!(identity(None, None), ("Pod".into(), "pod-1".into()));
    }

    #[test]
    fn replicaset_with_template_hash_is_a_deployment() {
        assert_eq!(
            identity(Some(("ReplicaSet", "web-7d4b9c8f6")), Some("7d4b9c8f6")),
            ("Deployment".into(), "web".into())
        );
        // Without the hash label (or a name that does not end in it) the ReplicaSet stands alone.
        assert_eq!(
            identity(Some(("ReplicaSet", "web-abc")), None),
            ("ReplicaSet".into(), "web-abc".into())
        );
        assert_eq!(
            identity(Some(("ReplicaSet", "web-abc")), Some("zzz")),
            ("ReplicaSet".into(), "web-abc".into())
        );
    }

    #[test]
    fn scheduled_job_is_its_cronjob() {
        assert_eq!(
            identity(Some(("Job", "backup-29123456")), None),
            ("CronJob".into(), "backup".into())
        );
        assert_eq!(
            identity(Some(("Job", "migrate-1")), None),
            ("Job".into(), "migrate-1".into())
        );
    }

    #[test]
    fn other_controllers_keep_their_kind() {
        assert_eq!(
            identity(Some(("StatefulSet", "db")), None),
            ("StatefulSet".into(), "db".into())
        );
        assert_eq!(
            identity(Some(("DaemonSet", "agent")), None),
            ("DaemonSet".into(), "agent".into())
        );
    }

    #[test]
    fn non_controller_owners_are_ignored() {
        let mut m = meta(Some(("ReplicaSet", "x-1")), Some("1"));
        if let Some(owners) = m.owner_references.as_mut() {
            owners[0].controller = None;
        }
        let w = workload_of("ns", "pod-1", &m);
        assert_eq!((&**w.kind(), &**w.name()), ("Pod", "pod-1"));
    }
}
