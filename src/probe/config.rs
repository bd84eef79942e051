//! `[probes]`: how Services are discovered and reached, the static targets, and the
//! correlation slack. Checked, and the targets compiled, by the config loader.

use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::leader::config::LeaderElectionConfig;
use crate::probe::discovery::ServiceAddress;
use crate::probe::target::StaticTarget;

/// `[probes]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbesConfig {
    /// Probe Services annotated `selfheal.io/probe: "true"`.
    pub discovery: bool,
    /// How discovered targets reach their Service: `dns`, `cluster_ip` or `node_port`.
    pub service_address: ServiceAddress,
    /// With `node_port`: the node address to connect to.
    pub node_address: IpAddr,
    /// An outage is explained by a death of a fronted pod that finished within the
    /// outage, widened by one probe interval and this slack.
    #[serde(with = "jiff::fmt::serde::unsigned_duration::friendly::compact::required")]
    pub correlation_slack: Duration,
    /// Targets probed continuously (`[[probes.targets]]`).
    pub targets: Vec<StaticTarget>,
    /// Deprecated place of the top-level `[leader_election]`, still read (with a warning).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader_election: Option<LeaderElectionConfig>,
}

impl Default for ProbesConfig {
    fn default() -> Self {
        ProbesConfig {
            discovery: true,
            service_address: ServiceAddress::Dns,
            node_address: IpAddr::from([127, 0, 0, 1]),
            correlation_slack: Duration::from_secs(2),
            targets: Vec::new(),
            leader_election: None,
        }
    }
}
