//! figment's sources: the config file in the format its extension names, the
//! environment without Kubernetes' service links, and figment's errors as one line.

use std::path::Path;

use figment::Figment;
use figment::providers::{Format, Toml};
use serde_saphyr::figment::Yaml;

use super::{ConfigError, ENV_PREFIX};

/// Adds the config file to `figment`, in the format its extension names.
pub(super) fn merge_file(figment: Figment, path: &Path) -> Result<Figment, ConfigError> {
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
pub(super) fn one_line(error: &figment::Error, figment: &Figment) -> String {
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
pub(super) fn is_service_link(key: &str) -> bool {
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
