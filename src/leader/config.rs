//! `[leader_election]`: the Lease the replicas compete for and its timings, as written
//! in the config. The loader fills the namespace and identity from the environment and
//! checks it; [`crate::leader::LeaderSettings`] is the resolved form.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[leader_election]`: of all replicas, only the holder of the Lease
/// `namespace/lease_name` watches, probes and exports, the others stand by; one of them
/// takes over within `lease_duration` when the holder dies, at once when it stops (it
/// releases the Lease on SIGTERM). A holder that loses the Lease while running exits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LeaderElectionConfig {
    pub enabled: bool,
    /// Name of the coordination.k8s.io/v1 Lease the replicas compete for.
    pub lease_name: String,
    /// Namespace of the Lease; default: the environment variable POD_NAMESPACE. Required
    /// (from one or the other) when enabled: never a silent default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// This replica's name in the Lease (holderIdentity); unique per replica. Default: the
    /// environment variable POD_NAME, else HOSTNAME.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// How long the Lease stays valid after its holder's last renewal: a replica that dies
    /// without releasing it is replaced within this time. Whole seconds, 2 s to 1 h.
    #[serde(with = "jiff::fmt::serde::unsigned_duration::friendly::compact::required")]
    pub lease_duration: Duration,
    /// The holder renews this long before the Lease would expire; also the clock skew
    /// between nodes that is tolerated. Whole seconds, at least 1 s, below lease_duration.
    #[serde(with = "jiff::fmt::serde::unsigned_duration::friendly::compact::required")]
    pub grace: Duration,
    /// How often a standby looks for a released Lease, the holder confirms its renewals,
    /// and a failed Lease request is retried. 100 ms up to a quarter of grace.
    #[serde(with = "jiff::fmt::serde::unsigned_duration::friendly::compact::required")]
    pub retry_period: Duration,
}

impl Default for LeaderElectionConfig {
    fn default() -> Self {
        LeaderElectionConfig {
            enabled: false,
            lease_name: "selfheal-exporter-prober".into(),
            namespace: None,
            identity: None,
            lease_duration: Duration::from_secs(15),
            grace: Duration::from_secs(5),
            retry_period: Duration::from_secs(1),
        }
    }
}

/// Longest identity: the Lease's field manager, `kube-lease-manager-<identity>`, may
/// have at most 128 characters.
pub const MAX_IDENTITY: usize = 128 - "kube-lease-manager-".len();

impl LeaderElectionConfig {
    /// The defaults are not written out in the effective config (see `Config`).
    pub fn is_default(&self) -> bool {
        *self == LeaderElectionConfig::default()
    }
}
