//! Probe targets: the static ones from the config file, validated into the form the
//! prober runs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use regex::Regex;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, Url};
use serde::{Deserialize, Serialize};

use crate::correlate::incidents::Fronts;
use crate::k8s::workload::Workload;

/// A target as written in the config file (`[[probes.targets]]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticTarget {
    /// Unique name; the `target` label.
    pub name: String,
    pub url: String,
    #[serde(default = "default_method")]
    pub method: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Accepted statuses: `2xx`, `200`, `200-399`, or a comma-separated mix.
    #[serde(default = "default_expect_status")]
    pub expect_status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_regex: Option<String>,
    #[serde(
        default = "default_timeout",
        with = "jiff::fmt::serde::unsigned_duration::friendly::compact::required"
    )]
    pub timeout: Duration,
    #[serde(
        default = "default_interval",
        with = "jiff::fmt::serde::unsigned_duration::friendly::compact::required"
    )]
    pub interval: Duration,
    #[serde(default = "default_failure_threshold")]
    pub failure_threshold: u32,
    /// Keep connections open between probes. Off by default, so that a dead backend
    /// behind a proxy is seen at once rather than through a stale pooled connection.
    #[serde(default)]
    pub reuse_connections: bool,
    /// The workload this target fronts, for correlating outages with its restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<WorkloadRef>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadRef {
    pub namespace: String,
    pub kind: String,
    pub name: String,
}

fn default_method() -> String {
    "GET".into()
}
fn default_expect_status() -> String {
    "2xx".into()
}
fn default_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_failure_threshold() -> u32 {
    1
}

pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// A target ready to probe.
#[derive(Clone, Debug)]
pub struct ProbeSpec {
    pub name: Arc<str>,
    /// For discovered targets: the Service's namespace and name.
    pub namespace: Option<Arc<str>>,
    pub service: Option<Arc<str>>,
    /// For discovered targets: the Service's UID (an outage's Event regards the Service).
    pub service_uid: Option<Arc<str>>,
    pub url: Url,
    pub method: Method,
    pub body: Option<String>,
    pub headers: HeaderMap,
    pub expect_status: StatusSet,
    pub body_regex: Option<Regex>,
    pub timeout: Duration,
    pub interval: Duration,
    pub failure_threshold: u32,
    pub reuse_connections: bool,
    /// The pods the target's traffic goes to, for finding the restart behind an outage.
    pub fronts: Option<Fronts>,
}

impl ProbeSpec {
    /// Whether `other` probes the same way (a rediscovered Service with unchanged
    /// settings keeps its target, its tracker and its open outage).
    pub fn same_probe_as(&self, other: &ProbeSpec) -> bool {
        self.name == other.name
            && self.namespace == other.namespace
            && self.service == other.service
            && self.url == other.url
            && self.method == other.method
            && self.body == other.body
            && self.headers == other.headers
            && self.expect_status == other.expect_status
            && self.body_regex.as_ref().map(Regex::as_str)
                == other.body_regex.as_ref().map(Regex::as_str)
            && self.timeout == other.timeout
            && self.interval == other.interval
            && self.failure_threshold == other.failure_threshold
            && self.reuse_connections == other.reuse_connections
            && self.fronts == other.fronts
    }
}

/// A field of a target that is invalid, and why.
#[derive(Debug, PartialEq)]
pub struct InvalidField {
    pub field: &'static str,
    pub value: String,
    pub reason: String,
}

impl StaticTarget {
    pub fn compile(&self) -> Result<ProbeSpec, InvalidField> {
        let invalid = |field: &'static str, value: &str, reason: String| InvalidField {
            field,
            value: format!("{value:?}"),
            reason,
        };
        if self.name.trim().is_empty() {
            return Err(invalid("name", &self.name, "must not be empty".into()));
        }
        let url = Url::parse(&self.url).map_err(|e| invalid("url", &self.url, e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid(
                "url",
                &self.url,
                "only http and https are probed".into(),
            ));
        }
        let method = self
            .method
            .to_ascii_uppercase()
            .parse::<Method>()
            .map_err(|e| invalid("method", &self.method, e.to_string()))?;
        let mut headers = HeaderMap::new();
        for (name, value) in &self.headers {
            let header = HeaderName::try_from(name.as_str())
                .map_err(|e| invalid("headers", name, e.to_string()))?;
            let value = HeaderValue::try_from(value.as_str())
                .map_err(|e| invalid("headers", value, e.to_string()))?;
            headers.insert(header, value);
        }
        let expect_status = StatusSet::parse(&self.expect_status)
            .map_err(|reason| invalid("expect_status", &self.expect_status, reason))?;
        let body_regex = self
            .body_regex
            .as_deref()
            .map(|pattern| {
                Regex::new(pattern).map_err(|e| invalid("body_regex", pattern, e.to_string()))
            })
            .transpose()?;
        let show = |d: Duration| format!("{d:?}");
        if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&self.interval) {
            return Err(invalid(
                "interval",
                &show(self.interval),
                "must be between 100ms and 1h".into(),
            ));
        }
        if self.timeout.is_zero() || self.timeout > MAX_TIMEOUT {
            return Err(invalid(
                "timeout",
                &show(self.timeout),
                "must be longer than zero and at most 60s".into(),
            ));
        }
        if self.failure_threshold == 0 {
            return Err(invalid(
                "failure_threshold",
                "0",
                "must be at least 1".into(),
            ));
        }
        let fronts = self.workload.as_ref().map(|w| {
            Fronts::Workload(Workload::new(
                w.namespace.as_str(),
                w.kind.as_str(),
                w.name.as_str(),
            ))
        });
        Ok(ProbeSpec {
            name: self.name.as_str().into(),
            namespace: None,
            service: None,
            service_uid: None,
            url,
            method,
            body: self.body.clone(),
            headers,
            expect_status,
            body_regex,
            timeout: self.timeout,
            interval: self.interval,
            failure_threshold: self.failure_threshold,
            reuse_connections: self.reuse_connections,
            fronts,
        })
    }
}

/// Accepted HTTP statuses, as inclusive ranges.
#[derive(Clone, Debug, PartialEq)]
pub struct StatusSet(Vec<(u16, u16)>);

impl StatusSet {
    /// `2xx`, `200`, `200-399`, or a comma-separated mix of them.
    pub fn parse(text: &str) -> Result<StatusSet, String> {
        let mut ranges = Vec::new();
        for part in text.split(',').map(str::trim) {
            let range =
                if let Some(class) = part.strip_suffix("xx").or_else(|| part.strip_suffix("XX")) {
                    let digit: u16 = class
                        .parse()
                        .map_err(|_| format!("bad status class {part:?}"))?;
                    (digit * 100, digit * 100 + 99)
                } else if let Some((low, high)) = part.split_once('-') {
                    let low: u16 = low
                        .trim()
                        .parse()
                        .map_err(|_| format!("bad status {low:?}"))?;
                    let high: u16 = high
                        .trim()
                        .parse()
                        .map_err(|_| format!("bad status {high:?}"))?;
                    (low, high)
                } else {
                    let code: u16 = part.parse().map_err(|_| format!("bad status {part:?}"))?;
                    (code, code)
                };
            if !(100..=599).contains(&range.0)
                || !(100..=599).contains(&range.1)
                || range.0 > range.1
            {
                return Err(format!(
                    "{part:?} is not a range of HTTP statuses (100-599)"
                ));
            }
            ranges.push(range);
        }
        Ok(StatusSet(ranges))
    }

    pub fn accepts(&self, status: u16) -> bool {
        self.0
            .iter()
            .any(|(low, high)| (*low..=*high).contains(&status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str) -> StaticTarget {
        StaticTarget {
            name: "api".into(),
            url: url.into(),
            method: default_method(),
            body: None,
            headers: BTreeMap::new(),
            expect_status: default_expect_status(),
            body_regex: None,
            timeout: default_timeout(),
            interval: default_interval(),
            failure_threshold: 1,
            reuse_connections: false,
            workload: None,
        }
    }

    #[test]
    fn status_sets() {
        let set = StatusSet::parse("2xx, 301, 400-404").expect("valid");
        assert!(set.accepts(200) && set.accepts(299) && set.accepts(301) && set.accepts(404));
        assert!(!set.accepts(300) && !set.accepts(500));
        assert!(StatusSet::parse("7xx").is_err());
        assert!(StatusSet::parse("ok").is_err());
        assert!(StatusSet::parse("404-400").is_err());
    }

    #[test]
    fn a_valid_target_compiles_and_bad_fields_are_named() {
        assert!(target("http://127.0.0.1:31000/grade").compile().is_ok());
        assert_eq!(
            target("ftp://x/").compile().expect_err("scheme").field,
            "url"
        );
        assert_eq!(target("not a url").compile().expect_err("url").field, "url");
        let mut fast = target("http://x/");
        fast.interval = Duration::from_millis(10);
        assert_eq!(fast.compile().expect_err("interval").field, "interval");
        let mut regex = target("http://x/");
        regex.body_regex = Some("(".into());
        assert_eq!(regex.compile().expect_err("regex").field, "body_regex");
        let mut method = target("http://x/");
        method.method = "GE T".into();
        assert_eq!(method.compile().expect_err("method").field, "method");
    }
}
