//! Configuration: built-in defaults < config file (TOML or YAML) < `SELFHEAL_*`
//! environment < command-line flags, merged by figment and validated in one place.
//!
//! Every problem is reported once, naming the offending key and value; unknown keys
//! are errors, so a typo never passes silently as a default.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use serde_saphyr::figment::Yaml;

use crate::k8s::sharding::Sharding;
pub use crate::k8s::watch::WatchConfig;
use crate::probe::discovery::ServiceAddress;
use crate::probe::target::{ProbeSpec, StaticTarget};
use thiserror::Error;

/// Prefix of the environment variables that set configuration keys. Nested keys use
/// `__`: `SELFHEAL_WATCH__LABEL_SELECTOR`.
pub const ENV_PREFIX: &str = "SELFHEAL_";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the HTTP server for /metrics, /healthz and /readyz.
    pub listen: SocketAddr,
    pub log_format: LogFormat,
    pub watch: WatchConfig,
    pub metrics: MetricsConfig,
    pub probes: ProbesConfig,
    pub incidents: IncidentsConfig,
    /// Several replicas splitting the cluster (flags --shard, --total-shards).
    pub sharding: Sharding,
}

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
    /// Active/passive replicas: only the one holding a Kubernetes Lease watches, probes
    /// and exports (here for history: it covers the whole exporter, not only probing).
    pub leader_election: LeaderElectionConfig,
}

impl Default for ProbesConfig {
    fn default() -> Self {
        ProbesConfig {
            discovery: true,
            service_address: ServiceAddress::Dns,
            node_address: IpAddr::from([127, 0, 0, 1]),
            correlation_slack: Duration::from_secs(2),
            targets: Vec::new(),
            leader_election: LeaderElectionConfig::default(),
        }
    }
}

/// `[probes.leader_election]`: of all replicas, only the holder of the Lease
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
const MAX_IDENTITY: usize = 128 - "kube-lease-manager-".len();

impl LeaderElectionConfig {
    /// Fills `namespace` and `identity` from the environment (`var`) where the config left
    /// them out, and checks every setting. Nothing to do when disabled.
    fn resolve(
        &mut self,
        sharding: &Sharding,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        let key = |name: &str| format!("probes.leader_election.{name}");
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
        if self.namespace.is_none() {
            self.namespace = var("POD_NAMESPACE");
        }
        let Some(namespace) = &self.namespace else {
            return Err(invalid(
                "namespace",
                "(unset)".into(),
                "needed when probes.leader_election.enabled = true: set it, or the \
                 environment variable POD_NAMESPACE (the downward API's metadata.namespace)",
            ));
        };
        if !is_dns_label(namespace) {
            return Err(invalid(
                "namespace",
                format!("{namespace:?}"),
                "not a valid namespace name (RFC 1123 label)",
            ));
        }
        if self.identity.is_none() {
            self.identity = var("POD_NAME").or_else(|| var("HOSTNAME"));
        }
        let Some(identity) = &self.identity else {
            return Err(invalid(
                "identity",
                "(unset)".into(),
                "needed when probes.leader_election.enabled = true: set it, or the \
                 environment variable POD_NAME (the downward API's metadata.name) or HOSTNAME",
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
        if !is_dns_subdomain(&self.lease_name) {
            return Err(invalid(
                "lease_name",
                format!("{:?}", self.lease_name),
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
        let duration = self.lease_duration;
        if !whole(duration)
            || duration < Duration::from_secs(2)
            || duration > Duration::from_secs(3600)
        {
            return Err(invalid(
                "lease_duration",
                shown(duration),
                "must be whole seconds, from 2s to 1h (Leases count in seconds)",
            ));
        }
        let grace = self.grace;
        if !whole(grace) || grace.is_zero() || grace >= duration {
            return Err(invalid(
                "grace",
                shown(grace),
                &format!(
                    "must be whole seconds, at least 1s and below probes.leader_election.lease_duration ({})",
                    shown(duration)
                ),
            ));
        }
        let retry = self.retry_period;
        if retry < Duration::from_millis(100) || retry > grace / 4 {
            return Err(invalid(
                "retry_period",
                shown(retry),
                &format!(
                    "must be from 100ms to a quarter of probes.leader_election.grace ({}): the \
                     holder confirms each renewal, or retries it, within half of grace",
                    shown(grace)
                ),
            ));
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IncidentsConfig {
    /// How many restarts, and how many outages, `/api/v1/incidents` remembers.
    pub capacity: usize,
}

impl Default for IncidentsConfig {
    fn default() -> Self {
        IncidentsConfig { capacity: 500 }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// How long a workload's series stay after its last pod is gone.
    #[serde(with = "jiff::fmt::serde::unsigned_duration::friendly::compact::required")]
    pub retention: Duration,
    /// Upper bounds (seconds) of the time-to-recover histogram buckets.
    pub time_to_recover_buckets: Vec<f64>,
    /// How long a restart reported as Error/Completed waits for the kubelet's Killing
    /// Event that would make it a liveness or startup probe kill.
    #[serde(with = "jiff::fmt::serde::unsigned_duration::friendly::compact::required")]
    pub attribution_wait: Duration,
    /// Cardinality guard: beyond this many series in one metric family, new series are
    /// dropped and counted in selfheal_series_dropped_total{family}.
    pub max_series_per_family: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 9964)),
            log_format: LogFormat::Text,
            watch: WatchConfig::default(),
            metrics: MetricsConfig::default(),
            probes: ProbesConfig::default(),
            incidents: IncidentsConfig::default(),
            sharding: Sharding::default(),
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            retention: Duration::from_secs(3600),
            time_to_recover_buckets: vec![
                1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
            ],
            attribution_wait: Duration::from_secs(5),
            max_series_per_family: 250_000,
        }
    }
}

/// Settings given as command-line flags; they override every other source.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FlagOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
    #[serde(skip_serializing_if = "ShardingOverrides::is_empty")]
    pub sharding: ShardingOverrides,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ShardingOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_shards: Option<u32>,
}

impl ShardingOverrides {
    fn is_empty(&self) -> bool {
        self.shard.is_none() && self.total_shards.is_none()
    }
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{0}")]
    Invalid(String),
    #[error("config key {key} = {value}: {reason}")]
    Value {
        key: String,
        value: String,
        reason: String,
    },
}

impl Config {
    /// Loads the configuration from all sources, given the process environment.
    pub fn load(file: Option<&Path>, flags: &FlagOverrides) -> Result<Config, ConfigError> {
        Self::load_with_env(file, flags, Env::prefixed(ENV_PREFIX))
    }

    fn load_with_env(
        file: Option<&Path>,
        flags: &FlagOverrides,
        env: Env,
    ) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            figment = merge_file(figment, path)?;
        }
        // SELFHEAL_CONFIG names the file itself; it is not a configuration key. Kubernetes
        // injects service links (SELFHEAL_EXPORTER_SERVICE_HOST, …_PORT_9964_TCP, …) for
        // any Service whose name starts with "selfheal-": they are not ours either.
        let env = env
            .ignore(&["CONFIG"])
            .filter(|key| !is_service_link(key.as_str()))
            .split("__");
        let figment = figment.merge(env).merge(Serialized::defaults(flags));
        let mut config: Config = figment
            .extract()
            .map_err(|error| ConfigError::Invalid(one_line(&error, &figment)))?;
        config.validate()?;
        let sharding = config.sharding;
        config
            .probes
            .leader_election
            .resolve(&sharding, |name| std::env::var(name).ok())?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let buckets = &self.metrics.time_to_recover_buckets;
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
        if self.metrics.retention.is_zero() {
            return Err(ConfigError::Value {
                key: "metrics.retention".into(),
                value: "0s".into(),
                reason: "must be longer than zero".into(),
            });
        }
        for (key, namespaces) in [
            ("watch.namespaces", &self.watch.namespaces),
            ("watch.exclude_namespaces", &self.watch.exclude_namespaces),
        ] {
            if let Some(bad) = namespaces.iter().find(|ns| !is_dns_label(ns)) {
                return Err(ConfigError::Value {
                    key: key.into(),
                    value: format!("{bad:?}"),
                    reason: "not a valid namespace name (RFC 1123 label)".into(),
                });
            }
        }
        let watch = &self.watch;
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
        if let Err(reason) = check_label_selector(&self.watch.label_selector) {
            return Err(ConfigError::Value {
                key: "watch.label_selector".into(),
                value: format!("{:?}", self.watch.label_selector),
                reason: reason.into(),
            });
        }
        let sharding = &self.sharding;
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
        if self.metrics.max_series_per_family == 0 {
            return Err(ConfigError::Value {
                key: "metrics.max_series_per_family".into(),
                value: "0".into(),
                reason: "must be at least 1".into(),
            });
        }
        if self.incidents.capacity == 0 || self.incidents.capacity > 100_000 {
            return Err(ConfigError::Value {
                key: "incidents.capacity".into(),
                value: self.incidents.capacity.to_string(),
                reason: "must be between 1 and 100000".into(),
            });
        }
        self.probe_specs()?;
        Ok(())
    }

    /// The static probe targets, validated.
    pub fn probe_specs(&self) -> Result<Vec<ProbeSpec>, ConfigError> {
        let mut specs: Vec<ProbeSpec> = Vec::with_capacity(self.probes.targets.len());
        for (index, target) in self.probes.targets.iter().enumerate() {
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

    /// The effective configuration, as a TOML document.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|error| format!("# cannot render: {error}\n"))
    }
}

/// Adds the config file to `figment`, in the format its extension names.
fn merge_file(figment: Figment, path: &Path) -> Result<Figment, ConfigError> {
    let file_error = |reason: String| ConfigError::File {
        path: path.to_owned(),
        reason,
    };
    std::fs::metadata(path).map_err(|error| file_error(error.to_string()))?;
    match path.extension().and_then(|ext| ext.to_str()).unwrap_or("") {
        "toml" => Ok(figment.merge(Toml::file_exact(path))),
        "yaml" | "yml" => Ok(figment.merge(Yaml::file_exact(path))),
        other => Err(file_error(format!(
            "unknown extension {other:?}: use .toml, .yaml or .yml"
        ))),
    }
}

/// One line naming the key, its value and where it came from. figment may chain
/// several errors; the first is reported.
fn one_line(error: &figment::Error, figment: &Figment) -> String {
    let first = error
        .clone()
        .into_iter()
        .next()
        .unwrap_or_else(|| error.clone());
    let key = first
        .path
        .iter()
        .map(|part| part.to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(".");
    let from_env = first
        .metadata
        .as_ref()
        .is_some_and(|meta| meta.name.contains("environment"));
    let source = match &first.metadata {
        _ if from_env => Some(format!(
            "environment variable {ENV_PREFIX}{}",
            first.path.join("__").to_ascii_uppercase()
        )),
        Some(meta) => Some(match &meta.source {
            Some(source) => source.to_string(),
            None => meta.name.to_string(),
        }),
        None => None,
    };
    let value = figment
        .find_value(&key)
        .ok()
        .and_then(|value| serde_json::to_string(&value).ok());
    let kind = first.kind.to_string().replace('\n', " ");
    let mut line = String::from("config key ");
    line.push_str(if key.is_empty() { "(top level)" } else { &key });
    if let Some(value) = value {
        line.push_str(" = ");
        line.push_str(&value);
    }
    line.push_str(": ");
    line.push_str(&kind);
    if let Some(source) = source {
        line.push_str(" (from ");
        line.push_str(&source);
        line.push(')');
    }
    line
}

/// A Kubernetes service-link variable name (without our prefix): `<SVC>_SERVICE_HOST`,
/// `<SVC>_SERVICE_PORT[_<NAME>]`, `<SVC>_PORT`, `<SVC>_PORT_<N>_<PROTO>[_PROTO|_PORT|_ADDR]`.
fn is_service_link(key: &str) -> bool {
    let key = key.to_ascii_uppercase();
    // Our nested keys use "__"; service names cannot produce it.
    if key.contains("__") {
        return false;
    }
    if key.ends_with("_SERVICE_HOST") || key.contains("_SERVICE_PORT") || key.ends_with("_PORT") {
        return true;
    }
    let parts: Vec<&str> = key.split('_').collect();
    parts.windows(3).any(|window| {
        window[0] == "PORT"
            && !window[1].is_empty()
            && window[1].bytes().all(|b| b.is_ascii_digit())
            && matches!(window[2], "TCP" | "UDP" | "SCTP")
    })
}

/// RFC 1123 label: lowercase alphanumerics and '-', 1..=63, alphanumeric at both ends.
fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// RFC 1123 subdomain (most object names): dot-separated labels, at most 253 characters.
fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_dns_label)
}

/// A light syntax check of a label selector, so that a typo fails at start-up rather
/// than as an endless stream of 400s from the API server. The API server remains the
/// judge of the full grammar.
fn check_label_selector(selector: &str) -> Result<(), &'static str> {
    if selector.trim().is_empty() {
        return Ok(());
    }
    let mut depth = 0i32;
    let mut requirement = String::new();
    let mut requirements = Vec::new();
    for c in selector.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                requirements.push(std::mem::take(&mut requirement));
                continue;
            }
            _ => {}
        }
        if depth < 0 {
            return Err("unbalanced parentheses");
        }
        requirement.push(c);
    }
    if depth != 0 {
        return Err("unbalanced parentheses");
    }
    requirements.push(requirement);
    for requirement in requirements {
        let requirement = requirement.trim();
        let key = requirement
            .split(['=', '!', ' '])
            .find(|part| !part.is_empty())
            .unwrap_or("");
        let valid_key = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
        if !valid_key {
            return Err("each requirement needs a valid label key");
        }
    }
    Ok(())
}

// figment's test Jail returns its large error type by design.
#[cfg(test)]
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    fn load(jail: &Jail, file: Option<&str>, flags: &FlagOverrides) -> Result<Config, String> {
        let path = file.map(|name| jail.directory().join(name));
        Config::load(path.as_deref(), flags).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_valid_and_documented_values() {
        Jail::expect_with(|jail| {
            let config = load(jail, None, &FlagOverrides::default())?;
            assert_eq!(config.listen.to_string(), "0.0.0.0:9964");
            assert_eq!(config.metrics.retention, Duration::from_secs(3600));
            assert_eq!(config.metrics.time_to_recover_buckets.len(), 11);
            Ok(())
        });
    }

    #[test]
    fn file_then_env_then_flags_take_precedence() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "c.toml",
                r#"
                listen = "127.0.0.1:1000"
                [watch]
                namespaces = ["grade-submission"]
                label_selector = "app.kubernetes.io/name=grade-submission"
                [metrics]
                retention = "30m"
                "#,
            )?;
            let config = load(jail, Some("c.toml"), &FlagOverrides::default())?;
            assert_eq!(config.listen.to_string(), "127.0.0.1:1000");
            assert_eq!(config.watch.namespaces, vec!["grade-submission"]);
            assert_eq!(config.metrics.retention, Duration::from_secs(1800));

            jail.set_env("SELFHEAL_LISTEN", "127.0.0.1:2000");
            jail.set_env("SELFHEAL_METRICS__RETENTION", "2h");
            jail.set_env("SELFHEAL_CONFIG", "ignored-here");
            let config = load(jail, Some("c.toml"), &FlagOverrides::default())?;
            assert_eq!(config.listen.to_string(), "127.0.0.1:2000");
            assert_eq!(config.metrics.retention, Duration::from_secs(7200));

            let flags = FlagOverrides {
                listen: Some("127.0.0.1:3000".parse().expect("addr")),
                log_format: Some(LogFormat::Json),
                sharding: ShardingOverrides {
                    shard: Some(1),
                    total_shards: None,
                },
            };
            jail.set_env("SELFHEAL_SHARDING__TOTAL_SHARDS", "3");
            let config = load(jail, Some("c.toml"), &flags)?;
            assert_eq!(config.listen.to_string(), "127.0.0.1:3000");
            assert_eq!(config.log_format, LogFormat::Json);
            assert_eq!(
                (config.sharding.shard, config.sharding.total_shards),
                (1, 3)
            );
            Ok(())
        });
    }

    #[test]
    fn yaml_files_are_read_too() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "c.yaml",
                "watch:\n  exclude_namespaces: [kube-system]\nmetrics:\n  time_to_recover_buckets: [1, 10]\n",
            )?;
            let config = load(jail, Some("c.yaml"), &FlagOverrides::default())?;
            assert_eq!(config.watch.exclude_namespaces, vec!["kube-system"]);
            assert_eq!(config.metrics.time_to_recover_buckets, vec![1.0, 10.0]);
            Ok(())
        });
    }

    #[test]
    fn every_bad_input_names_its_key() {
        Jail::expect_with(|jail| {
            let cases = [
                ("typo.toml", "[watch]\nnamespace = [\"a\"]\n", "namespace"),
                (
                    "buckets.toml",
                    "[metrics]\ntime_to_recover_buckets = [5, 1]\n",
                    "metrics.time_to_recover_buckets",
                ),
                (
                    "negative.toml",
                    "[metrics]\ntime_to_recover_buckets = [-1]\n",
                    "metrics.time_to_recover_buckets",
                ),
                (
                    "ns.toml",
                    "[watch]\nnamespaces = [\"Bad_NS\"]\n",
                    "watch.namespaces",
                ),
                (
                    "duration.toml",
                    "[metrics]\nretention = \"one hour\"\n",
                    "retention",
                ),
                (
                    "zero.toml",
                    "[metrics]\nretention = \"0s\"\n",
                    "metrics.retention",
                ),
                ("listen.toml", "listen = \"nowhere\"\n", "listen"),
                (
                    "selector.toml",
                    "[watch]\nlabel_selector = \"app in (a,b\"\n",
                    "watch.label_selector",
                ),
                ("format.toml", "log_format = \"xml\"\n", "log_format"),
                (
                    "nothing.toml",
                    "[watch]\nnamespaces = [\"a\"]\nexclude_namespaces = [\"a\"]\n",
                    "watch.exclude_namespaces",
                ),
            ];
            for (name, body, key) in cases {
                jail.create_file(name, body)?;
                let error = load(jail, Some(name), &FlagOverrides::default()).expect_err(name);
                assert!(error.contains(key), "{name}: {error}");
                assert!(!error.contains('\n'), "{name}: one line: {error}");
            }
            let missing = load(jail, Some("absent.toml"), &FlagOverrides::default())
                .expect_err("missing file");
            assert!(missing.contains("absent.toml"), "{missing}");
            jail.set_env("SELFHEAL_WATCH__NAMESPACES", "[\"UPPER\"]");
            let env_error = load(jail, None, &FlagOverrides::default()).expect_err("env");
            assert!(env_error.contains("watch.namespaces"), "{env_error}");
            Ok(())
        });
    }

    #[test]
    fn kubernetes_service_links_are_not_config_but_typos_are_errors() {
        Jail::expect_with(|jail| {
            // What Kubernetes injects for a Service named selfheal-exporter.
            jail.set_env("SELFHEAL_EXPORTER_SERVICE_HOST", "10.0.0.1");
            jail.set_env("SELFHEAL_EXPORTER_SERVICE_PORT", "9964");
            jail.set_env("SELFHEAL_EXPORTER_SERVICE_PORT_METRICS", "9964");
            jail.set_env("SELFHEAL_EXPORTER_PORT", "tcp://10.0.0.1:9964");
            jail.set_env("SELFHEAL_EXPORTER_PORT_9964_TCP", "tcp://10.0.0.1:9964");
            jail.set_env("SELFHEAL_EXPORTER_PORT_9964_TCP_ADDR", "10.0.0.1");
            jail.set_env("SELFHEAL_EXPORTER_PORT_9964_TCP_PROTO", "tcp");
            load(jail, None, &FlagOverrides::default())?;
            jail.set_env("SELFHEAL_LISTN", "127.0.0.1:1");
            let typo = load(jail, None, &FlagOverrides::default()).expect_err("typo");
            assert!(typo.contains("SELFHEAL_LISTN"), "{typo}");
            Ok(())
        });
    }

    #[test]
    fn probe_targets_are_read_with_their_defaults() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "p.toml",
                "[[probes.targets]]\nname = \"grade\"\nurl = \"http://127.0.0.1:31000/grade\"\ninterval = \"250ms\"\n",
            )?;
            let config = load(jail, Some("p.toml"), &FlagOverrides::default())?;
            let specs = config.probe_specs().map_err(|e| e.to_string())?;
            assert_eq!(specs.len(), 1);
            assert_eq!(specs[0].interval, Duration::from_millis(250));
            assert_eq!(specs[0].timeout, Duration::from_secs(1));
            assert!(specs[0].expect_status.accepts(204));
            Ok(())
        });
    }

    fn leader_config(toml_text: &str) -> LeaderElectionConfig {
        toml::from_str::<ProbesConfig>(toml_text)
            .expect("probes section")
            .leader_election
    }

    fn resolve(
        config: &mut LeaderElectionConfig,
        total_shards: u32,
        env: &[(&str, &str)],
    ) -> Result<(), String> {
        let sharding = Sharding {
            shard: 0,
            total_shards,
        };
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        config
            .resolve(&sharding, |name| {
                env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
            })
            .map_err(|e| e.to_string())
    }

    #[test]
    fn leader_election_is_off_by_default_and_takes_the_pod_from_the_environment() {
        let mut off = LeaderElectionConfig::default();
        assert!(!off.enabled);
        assert_eq!(off.lease_name, "selfheal-exporter-prober");
        assert_eq!(off.lease_duration, Duration::from_secs(15));
        resolve(&mut off, 3, &[]).expect("disabled: nothing to check");
        assert_eq!(off.namespace, None);

        let mut on = leader_config("[leader_election]\nenabled = true\n");
        resolve(
            &mut on,
            1,
            &[
                ("POD_NAMESPACE", "monitoring"),
                ("POD_NAME", "exp-5f-x"),
                ("HOSTNAME", "h"),
            ],
        )
        .expect("valid");
        assert_eq!(on.namespace.as_deref(), Some("monitoring"));
        assert_eq!(on.identity.as_deref(), Some("exp-5f-x"));
        let mut host = leader_config("[leader_election]\nenabled = true\nnamespace = \"ns\"\n");
        resolve(
            &mut host,
            1,
            &[("POD_NAMESPACE", "other"), ("HOSTNAME", "h")],
        )
        .expect("valid");
        assert_eq!(
            (host.namespace.as_deref(), host.identity.as_deref()),
            (Some("ns"), Some("h")),
            "the config wins over POD_NAMESPACE; HOSTNAME stands in for POD_NAME"
        );
    }

    #[test]
    fn leader_election_errors_name_their_keys() {
        let enabled = "[leader_election]\nenabled = true\n";
        let pod = [("POD_NAMESPACE", "ns"), ("POD_NAME", "p")];
        type Case<'a> = (String, &'a [(&'a str, &'a str)], u32, &'a str);
        let cases: [Case; 9] = [
            (
                enabled.into(),
                &[("POD_NAME", "p")],
                1,
                "probes.leader_election.namespace = (unset)",
            ),
            (
                enabled.into(),
                &[("POD_NAMESPACE", "ns"), ("HOSTNAME", " ")],
                1,
                "probes.leader_election.identity = (unset)",
            ),
            (
                enabled.into(),
                &pod,
                2,
                "probes.leader_election.enabled = true: cannot be combined with sharding.total_shards = 2",
            ),
            (
                format!("{enabled}namespace = \"Bad_NS\"\n"),
                &pod,
                1,
                "probes.leader_election.namespace = \"Bad_NS\"",
            ),
            (
                format!("{enabled}lease_name = \"-x\"\n"),
                &pod,
                1,
                "probes.leader_election.lease_name",
            ),
            (
                format!("{enabled}lease_duration = \"1500ms\"\n"),
                &pod,
                1,
                "probes.leader_election.lease_duration = 1s 500ms",
            ),
            (
                format!("{enabled}grace = \"15s\"\n"),
                &pod,
                1,
                "probes.leader_election.grace = 15s",
            ),
            (
                format!("{enabled}grace = \"0s\"\n"),
                &pod,
                1,
                "probes.leader_election.grace = 0s",
            ),
            (
                format!("{enabled}retry_period = \"3s\"\n"),
                &pod,
                1,
                "probes.leader_election.retry_period = 3s",
            ),
        ];
        for (text, env, total_shards, expected) in cases {
            let mut config = leader_config(&text);
            let error = resolve(&mut config, total_shards, env).expect_err(expected);
            assert!(error.contains(expected), "{text}: {error}");
            assert!(!error.contains('\n'), "one line: {error}");
        }
    }

    #[test]
    fn leader_election_loads_from_the_environment_and_prints_what_it_resolved() {
        Jail::expect_with(|jail| {
            jail.set_env("SELFHEAL_PROBES__LEADER_ELECTION__ENABLED", "true");
            jail.set_env("SELFHEAL_PROBES__LEADER_ELECTION__LEASE_DURATION", "3s");
            jail.set_env("SELFHEAL_PROBES__LEADER_ELECTION__GRACE", "1s");
            jail.set_env("SELFHEAL_PROBES__LEADER_ELECTION__RETRY_PERIOD", "200ms");
            jail.set_env("POD_NAMESPACE", "selfheal-system");
            jail.set_env("POD_NAME", "selfheal-exporter-7d9-abcde");
            let config = load(jail, None, &FlagOverrides::default())?;
            let election = &config.probes.leader_election;
            assert!(election.enabled);
            assert_eq!(election.lease_duration, Duration::from_secs(3));
            assert_eq!(election.namespace.as_deref(), Some("selfheal-system"));
            let printed = config.to_toml();
            assert!(
                printed.contains("identity = \"selfheal-exporter-7d9-abcde\""),
                "{printed}"
            );
            jail.set_env("SELFHEAL_SHARDING__TOTAL_SHARDS", "2");
            let error = load(jail, None, &FlagOverrides::default()).expect_err("with sharding");
            assert!(
                error.contains("probes.leader_election.enabled")
                    && error.contains("sharding.total_shards"),
                "{error}"
            );
            Ok(())
        });
    }

    #[test]
    fn the_effective_config_round_trips_through_toml() {
        Jail::expect_with(|jail| {
            let mut config = Config::default();
            config.probes.targets = toml::from_str::<ProbesConfig>(
                "[[targets]]\nname = \"a\"\nurl = \"http://x/\"\nheaders = { X-Probe = \"1\" }\n",
            )
            .map_err(|e| e.to_string())?
            .targets;
            jail.create_file("out.toml", &config.to_toml())?;
            let again = load(jail, Some("out.toml"), &FlagOverrides::default())?;
            assert_eq!(again, config);
            Ok(())
        });
    }
}
