//! Configuration: built-in defaults < config file (TOML or YAML) < `SELFHEAL_*`
//! environment < command-line flags, merged by figment and checked in one place.
//!
//! Each section's type lives beside the code that uses it (`[watch]` in
//! `k8s::watch`, `[metrics]` in `export::config`, `[probes]` in `probe::config`,
//! `[incidents]` in `correlate::config`, `[events]` in `events::config`, `[node]` in
//! `node::config`, `[leader_election]` in `leader::config`); this
//! module merges the sources ([`sources`]), checks them ([`check`]) and hands out
//! [`Settings`]: the effective configuration with what is compiled from it.
//!
//! Every problem is reported once, naming the offending key and value; unknown keys
//! are errors, so a typo never passes silently as a default.

mod check;
#[cfg(test)]
mod props;
mod sources;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Serialized};
use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use crate::correlate::config::IncidentsConfig;
pub use crate::events::config::EventsConfig;
pub use crate::export::config::MetricsConfig;
use crate::export::web::{WebConfigError, WebSecurity};
use crate::k8s::sharding::Sharding;
pub use crate::k8s::watch::WatchConfig;
use crate::leader::LeaderSettings;
pub use crate::leader::config::LeaderElectionConfig;
pub use crate::node::config::NodeConfig;
pub use crate::probe::config::ProbesConfig;
use crate::probe::target::ProbeSpec;

/// Prefix of the environment variables that set configuration keys. Nested keys use
/// `__`: `SELFHEAL_WATCH__LABEL_SELECTOR`.
pub const ENV_PREFIX: &str = "SELFHEAL_";

/// The leader election's key, and its deprecated place (until one release after 0.1).
const LEADER_ELECTION: &str = "leader_election";
const DEPRECATED_LEADER_ELECTION: &str = "probes.leader_election";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the HTTP server for /metrics, /healthz and /readyz.
    pub listen: SocketAddr,
    /// The exporter-toolkit web configuration file (TLS, basic auth, headers) for the
    /// HTTP server; flag --web.config.file. Unset: plain HTTP, open to all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub web_config_file: Option<PathBuf>,
    pub log_format: LogFormat,
    pub watch: WatchConfig,
    pub metrics: MetricsConfig,
    pub probes: ProbesConfig,
    pub incidents: IncidentsConfig,
    /// Kubernetes Events for classified restarts and probe outages (off by default).
    pub events: EventsConfig,
    /// The node agent (`selfheal-exporter node`): where the cgroups are, how often
    /// they are re-read. Ignored by the cluster-wide exporter.
    pub node: NodeConfig,
    /// Several replicas splitting the cluster (flags --shard, --total-shards).
    pub sharding: Sharding,
    /// Active/passive replicas: only the one holding a Kubernetes Lease watches, probes
    /// and exports. Left out of the defaults, so the loader can tell whether it was
    /// written here or in its deprecated place `[probes.leader_election]`.
    #[serde(skip_serializing_if = "LeaderElectionConfig::is_default")]
    pub leader_election: LeaderElectionConfig,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 9964)),
            web_config_file: None,
            log_format: LogFormat::Text,
            watch: WatchConfig::default(),
            metrics: MetricsConfig::default(),
            probes: ProbesConfig::default(),
            incidents: IncidentsConfig::default(),
            events: EventsConfig::default(),
            node: NodeConfig::default(),
            sharding: Sharding::default(),
            leader_election: LeaderElectionConfig::default(),
        }
    }
}

/// Settings given as command-line flags; they override every other source.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FlagOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub web_config_file: Option<PathBuf>,
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
    /// The web configuration file (`web_config_file`).
    #[error(transparent)]
    Web(#[from] WebConfigError),
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

/// The configuration as loaded and checked, with what is compiled from it: nothing
/// downstream checks or compiles a setting again.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The effective configuration (deprecated keys moved to their new place).
    pub config: Config,
    /// The static probe targets, compiled.
    pub probe_specs: Vec<ProbeSpec>,
    /// The resolved leader election; `None` when it is off.
    pub leader: Option<LeaderSettings>,
    /// One line per deprecated key in use, for the log.
    pub warnings: Vec<String>,
    /// The web configuration file, loaded and checked (certificate and key included);
    /// `None` without `web_config_file`.
    pub web: Option<WebSecurity>,
}

impl Settings {
    /// Loads the configuration from all sources, given the process environment.
    pub fn load(file: Option<&Path>, flags: &FlagOverrides) -> Result<Settings, ConfigError> {
        Self::load_with_env(file, flags, Env::prefixed(ENV_PREFIX))
    }

    fn load_with_env(
        file: Option<&Path>,
        flags: &FlagOverrides,
        env: Env,
    ) -> Result<Settings, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            figment = sources::merge_file(figment, path)?;
        }
        // SELFHEAL_CONFIG names the file itself; it is not a configuration key. Kubernetes
        // injects service links (SELFHEAL_EXPORTER_SERVICE_HOST, …_PORT_9964_TCP, …) for
        // any Service whose name starts with "selfheal-": they are not ours either.
        let env = env
            .ignore(&["CONFIG"])
            .filter(|key| !sources::is_service_link(key.as_str()))
            .split("__");
        let figment = figment.merge(env).merge(Serialized::defaults(flags));
        let mut config: Config = figment
            .extract()
            .map_err(|error| ConfigError::Invalid(sources::one_line(&error, &figment)))?;
        let mut warnings = Vec::new();
        let section = match config.probes.leader_election.take() {
            Some(_) if figment.find_value(LEADER_ELECTION).is_ok() => {
                return Err(ConfigError::Value {
                    key: DEPRECATED_LEADER_ELECTION.into(),
                    value: "(set)".into(),
                    reason: format!(
                        "is the deprecated place of {LEADER_ELECTION}, which is set too: \
                         keep only {LEADER_ELECTION}"
                    ),
                });
            }
            Some(old) => {
                config.leader_election = old;
                warnings.push(format!(
                    "config key {DEPRECATED_LEADER_ELECTION} is deprecated and will be removed: \
                     write it as the top-level {LEADER_ELECTION} (environment \
                     {ENV_PREFIX}LEADER_ELECTION__*)"
                ));
                DEPRECATED_LEADER_ELECTION
            }
            None => LEADER_ELECTION,
        };
        check::check(&config)?;
        let probe_specs = check::probe_specs(&config)?;
        let sharding = config.sharding;
        check::resolve_leader_election(&mut config.leader_election, section, &sharding, |name| {
            std::env::var(name).ok()
        })?;
        let leader = LeaderSettings::from_config(&config.leader_election);
        let web = match &config.web_config_file {
            Some(path) => Some(WebSecurity::load(path)?),
            None => None,
        };
        Ok(Settings {
            config,
            probe_specs,
            leader,
            warnings,
            web,
        })
    }
}

impl Config {
    /// The effective configuration, as a TOML document: every key, `[leader_election]`
    /// included even at its defaults (which serde leaves out, see the field).
    pub fn to_toml(&self) -> String {
        let rendered = toml::Table::try_from(self).and_then(|mut table| {
            if !table.contains_key(LEADER_ELECTION) {
                let election = toml::Value::try_from(&self.leader_election)?;
                table.insert(LEADER_ELECTION.to_owned(), election);
            }
            toml::to_string_pretty(&table)
        });
        rendered.unwrap_or_else(|error| format!("# cannot render: {error}\n"))
    }
}
