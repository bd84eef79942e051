//! Checks of the merged configuration that serde cannot express: ranges, orderings,
//! Kubernetes names, the probe targets (compiled here) and the leader election
//! (resolved against the environment here). Each failure names its key and value.

use std::time::Duration;

use super::{Config, ConfigError};
use crate::k8s::names::{check_label_selector, is_dns_label, is_dns_subdomain};
use crate::k8s::sharding::Sharding;
use crate::leader::config::{LeaderElectionConfig, MAX_IDENTITY};
use crate::probe::target::ProbeSpec;

/// Checks every section that has no serde-level check of its own.
pub(super) fn check(config: &Config) -> Result<(), ConfigError> {
    let buckets = &config.metrics.time_to_recover_buckets;
    let value = || format!("{buckets:?}");
    if buckets.is_empty() {
        return Err(ConfigError::Value {
            key: "metrics.time_to_recover_buckets".into(),
            value: value(),
            reason: "needs at least one bucket".into(),
        });
    }
    if buckets.iter().any(|b| !b.is_finite() || *b <= 0.0) {
        return Err(ConfigError::Value {
            key: "metrics.time_to_recover_buckets".into(),
            value: value(),
            reason: "bucket bounds must be positive finite seconds".into(),
        });
    }
    if buckets.windows(2).any(|pair| pair[0] >= pair[1]) {
        return Err(ConfigError::Value {
            key: "metrics.time_to_recover_buckets".into(),
            value: value(),
            reason: "bucket bounds must be strictly increasing".into(),
        });
    }
    if config.metrics.retention.is_zero() {
        return Err(ConfigError::Value {
            key: "metrics.retention".into(),
            value: "0s".into(),
            reason: "must be longer than zero".into(),
        });
    }
    for (key, namespaces) in [
        ("watch.namespaces", &config.watch.namespaces),
        ("watch.exclude_namespaces", &config.watch.exclude_namespaces),
    ] {
        if let Some(bad) = namespaces.iter().find(|ns| !is_dns_label(ns)) {
            return Err(ConfigError::Value {
                key: key.into(),
                value: format!("{bad:?}"),
                reason: "not a valid namespace name (RFC 1123 label)".into(),
            });
        }
    }
    let watch = &config.watch;
    if !watch.namespaces.is_empty()
        && watch
            .namespaces
            .iter()
            .all(|ns| watch.exclude_namespaces.contains(ns))
    {
        return Err(ConfigError::Value {
            key: "watch.exclude_namespaces".into(),
            value: format!("{:?}", watch.exclude_namespaces),
            reason:
                "excludes every namespace listed in watch.namespaces: nothing would be observed"
                    .into(),
        });
    }
    if let Err(reason) = check_label_selector(&config.watch.label_selector) {
        return Err(ConfigError::Value {
            key: "watch.label_selector".into(),
            value: format!("{:?}", config.watch.label_selector),
            reason: reason.into(),
        });
    }
    let sharding = &config.sharding;
    if sharding.total_shards == 0 || sharding.shard >= sharding.total_shards {
        return Err(ConfigError::Value {
            key: "sharding.shard".into(),
            value: format!(
                "{} of total_shards {}",
                sharding.shard, sharding.total_shards
            ),
            reason: "must be below sharding.total_shards (shards count from 0)".into(),
        });
    }
    if config.metrics.max_series_per_family == 0 {
        return Err(ConfigError::Value {
            key: "metrics.max_series_per_family".into(),
            value: "0".into(),
            reason: "must be at least 1".into(),
        });
    }
    let node = &config.node;
    if node.reread_interval < Duration::from_millis(100)
        || node.reread_interval > Duration::from_secs(60)
    {
        return Err(ConfigError::Value {
            key: "node.reread_interval".into(),
            value: format!("{:?}", node.reread_interval),
            reason: "must be between 100ms and 60s".into(),
        });
    }
    if node.settle < node.reread_interval * 2 {
        return Err(ConfigError::Value {
            key: "node.settle".into(),
            value: format!("{:?}", node.settle),
            reason: format!(
                "must be at least twice node.reread_interval ({:?}): a kill needs a reading after it",
                node.reread_interval
            ),
        });
    }
    if !node.cgroup_root.is_absolute() {
        return Err(ConfigError::Value {
            key: "node.cgroup_root".into(),
            value: format!("{:?}", node.cgroup_root.display()),
            reason: "must be an absolute path".into(),
        });
    }
    if config.incidents.capacity == 0 || config.incidents.capacity > 100_000 {
        return Err(ConfigError::Value {
            key: "incidents.capacity".into(),
            value: config.incidents.capacity.to_string(),
            reason: "must be between 1 and 100000".into(),
        });
    }
    let per_minute = config.events.max_per_object_per_minute;
    if !(1..=60).contains(&per_minute) {
        return Err(ConfigError::Value {
            key: "events.max_per_object_per_minute".into(),
            value: per_minute.to_string(),
            reason: "must be between 1 and 60".into(),
        });
    }
    Ok(())
}

/// The static probe targets, compiled and checked (names unique).
pub(super) fn probe_specs(config: &Config) -> Result<Vec<ProbeSpec>, ConfigError> {
    let mut specs: Vec<ProbeSpec> = Vec::with_capacity(config.probes.targets.len());
    for (index, target) in config.probes.targets.iter().enumerate() {
        let spec = target.compile().map_err(|invalid| ConfigError::Value {
            key: format!("probes.targets[{index}].{}", invalid.field),
            value: invalid.value,
            reason: invalid.reason,
        })?;
        if specs.iter().any(|other| other.name == spec.name) {
            return Err(ConfigError::Value {
                key: format!("probes.targets[{index}].name"),
                value: format!("{:?}", target.name),
                reason: "another target has the same name".into(),
            });
        }
        specs.push(spec);
    }
    Ok(specs)
}

/// Fills `namespace` and `identity` of the `section` (`leader_election`, or its
/// deprecated place `probes.leader_election`) from the environment (`var`) where the
/// config left them out, and checks every setting. Nothing to do when disabled.
pub(super) fn resolve_leader_election(
    election: &mut LeaderElectionConfig,
    section: &str,
    sharding: &Sharding,
    var: impl Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    if !election.enabled {
        return Ok(());
    }
    let key = |name: &str| format!("{section}.{name}");
    let invalid = |name: &str, value: String, reason: &str| ConfigError::Value {
        key: key(name),
        value,
        reason: reason.into(),
    };
    if sharding.total_shards > 1 {
        return Err(invalid(
            "enabled",
            "true".into(),
            &format!(
                "cannot be combined with sharding.total_shards = {}: sharded replicas \
                 each export their own shard, leader election makes one replica export \
                 everything; use one or the other",
                sharding.total_shards
            ),
        ));
    }
    let var = |name: &str| var(name).filter(|value| !value.trim().is_empty());
    if election.namespace.is_none() {
        election.namespace = var("POD_NAMESPACE");
    }
    let Some(namespace) = &election.namespace else {
        return Err(invalid(
            "namespace",
            "(unset)".into(),
            &format!(
                "needed when {section}.enabled = true: set it, or the environment \
                 variable POD_NAMESPACE (the downward API's metadata.namespace)"
            ),
        ));
    };
    if !is_dns_label(namespace) {
        return Err(invalid(
            "namespace",
            format!("{namespace:?}"),
            "not a valid namespace name (RFC 1123 label)",
        ));
    }
    if election.identity.is_none() {
        election.identity = var("POD_NAME").or_else(|| var("HOSTNAME"));
    }
    let Some(identity) = &election.identity else {
        return Err(invalid(
            "identity",
            "(unset)".into(),
            &format!(
                "needed when {section}.enabled = true: set it, or the environment \
                 variable POD_NAME (the downward API's metadata.name) or HOSTNAME"
            ),
        ));
    };
    if identity.trim().is_empty()
        || identity.chars().count() > MAX_IDENTITY
        || identity.chars().any(char::is_control)
    {
        return Err(invalid(
            "identity",
            format!("{identity:?}"),
            &format!("must be 1 to {MAX_IDENTITY} printable characters"),
        ));
    }
    if !is_dns_subdomain(&election.lease_name) {
        return Err(invalid(
            "lease_name",
            format!("{:?}", election.lease_name),
            "not a valid object name (RFC 1123 subdomain)",
        ));
    }
    let shown = |d: Duration| {
        format!(
            "{:?}",
            jiff::SignedDuration::try_from(d).unwrap_or_default()
        )
    };
    let whole = |d: Duration| d.subsec_nanos() == 0;
    let duration = election.lease_duration;
    if !whole(duration) || duration < Duration::from_secs(2) || duration > Duration::from_secs(3600)
    {
        return Err(invalid(
            "lease_duration",
            shown(duration),
            "must be whole seconds, from 2s to 1h (Leases count in seconds)",
        ));
    }
    let grace = election.grace;
    if !whole(grace) || grace.is_zero() || grace >= duration {
        return Err(invalid(
            "grace",
            shown(grace),
            &format!(
                "must be whole seconds, at least 1s and below {section}.lease_duration ({})",
                shown(duration)
            ),
        ));
    }
    let retry = election.retry_period;
    if retry < Duration::from_millis(100) || retry > grace / 4 {
        return Err(invalid(
            "retry_period",
            shown(retry),
            &format!(
                "must be from 100ms to a quarter of {section}.grace ({}): the \
                 holder confirms each renewal, or retries it, within half of grace",
                shown(grace)
            ),
        ));
    }
    Ok(())
}
