//! Reading a pod from the API as untrusted JSON: the parts of the spec the lab kubelet
//! runs (containers, images, commands, env, ports, memory limits, probes, restart policy,
//! grace period). Nothing here fails as a whole: a bad container field becomes an error
//! string the pod worker reports as the container's waiting reason and a Warning Event.

use std::time::Duration;

use serde_json::Value;

use super::probes::ProbeSpec;

/// `spec.restartPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Restart whatever the exit code (the default).
    Always,
    /// Restart on non-zero exit codes.
    OnFailure,
    /// Never restart.
    Never,
}

impl RestartPolicy {
    /// Parses the field; unknown or missing values mean `Always` (the API default).
    pub fn parse(v: Option<&str>) -> Self {
        match v {
            Some("OnFailure") => RestartPolicy::OnFailure,
            Some("Never") => RestartPolicy::Never,
            _ => RestartPolicy::Always,
        }
    }

    /// Whether a container that exited with `exit_code` is restarted.
    pub fn restarts(self, exit_code: i32) -> bool {
        match self {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => exit_code != 0,
            RestartPolicy::Never => false,
        }
    }
}

/// One `containerPort`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    /// Its `name`, if any.
    pub name: Option<String>,
    /// `containerPort`.
    pub port: u16,
}

/// What the kubelet needs of one container.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    /// `name`.
    pub name: String,
    /// `image` (empty if missing).
    pub image: String,
    /// `command`.
    pub command: Vec<String>,
    /// `args`.
    pub args: Vec<String>,
    /// `env[].name` / `env[].value` (valueFrom is not supported and ignored).
    pub env: Vec<(String, String)>,
    /// `ports`.
    pub ports: Vec<PortSpec>,
    /// `resources.limits.memory` in bytes, or why it could not be read.
    pub memory_limit: Result<Option<u64>, String>,
    /// `readinessProbe`.
    pub readiness: Option<Result<ProbeSpec, String>>,
    /// `livenessProbe`.
    pub liveness: Option<Result<ProbeSpec, String>>,
    /// `startupProbe`.
    pub startup: Option<Result<ProbeSpec, String>>,
}

impl ContainerSpec {
    /// The first configuration error of the container, if any.
    pub fn config_error(&self) -> Option<String> {
        if let Err(e) = &self.memory_limit {
            return Some(e.clone());
        }
        for (what, p) in [
            ("readinessProbe", &self.readiness),
            ("livenessProbe", &self.liveness),
            ("startupProbe", &self.startup),
        ] {
            if let Some(Err(e)) = p {
                return Some(format!("{what}: {e}"));
            }
        }
        None
    }

    /// Resolves a probe's port (number, numeric string, or the name of a container port).
    pub fn resolve_port(&self, port: &Value) -> Result<u16, String> {
        if let Some(n) = port.as_u64() {
            return u16::try_from(n)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("invalid port {n}"));
        }
        if let Some(s) = port.as_str() {
            if let Ok(n) = s.parse::<u16>() {
                return Ok(n);
            }
            return self
                .ports
                .iter()
                .find(|p| p.name.as_deref() == Some(s))
                .map(|p| p.port)
                .ok_or_else(|| format!("couldn't find port {s:?} in container"));
        }
        Err("missing port".into())
    }
}

/// What the kubelet needs of a pod.
#[derive(Debug, Clone)]
pub struct PodSpec {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.uid`.
    pub uid: String,
    /// `spec.nodeName` (empty: not scheduled).
    pub node_name: String,
    /// `spec.restartPolicy`.
    pub restart_policy: RestartPolicy,
    /// `spec.terminationGracePeriodSeconds` (default 30 s).
    pub grace: Duration,
    /// `spec.containers`.
    pub containers: Vec<ContainerSpec>,
    /// Whether `spec.initContainers` is non-empty (not run by the lab).
    pub has_init_containers: bool,
    /// `status.phase` as found.
    pub phase: String,
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or_default()
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|x| match x {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect()
        })
        .unwrap_or_default()
}

impl PodSpec {
    /// Reads a pod object. `None` if it lacks a name, namespace or uid.
    pub fn parse(pod: &Value) -> Option<PodSpec> {
        let name = str_at(pod, "/metadata/name");
        let namespace = str_at(pod, "/metadata/namespace");
        let uid = str_at(pod, "/metadata/uid");
        if name.is_empty() || uid.is_empty() {
            return None;
        }
        let spec = pod.get("spec").unwrap_or(&Value::Null);
        let grace = spec
            .get("terminationGracePeriodSeconds")
            .and_then(Value::as_f64)
            .filter(|g| g.is_finite() && *g >= 0.0)
            .map(Duration::from_secs_f64)
            .unwrap_or(Duration::from_secs(30));
        let containers = spec
            .get("containers")
            .and_then(Value::as_array)
            .map(|cs| {
                cs.iter()
                    .enumerate()
                    .map(|(i, c)| ContainerSpec::parse(c, i))
                    .collect()
            })
            .unwrap_or_default();
        Some(PodSpec {
            namespace: if namespace.is_empty() {
                "default".into()
            } else {
                namespace.into()
            },
            name: name.into(),
            uid: uid.into(),
            node_name: str_at(spec, "/nodeName").into(),
            restart_policy: RestartPolicy::parse(spec.get("restartPolicy").and_then(Value::as_str)),
            grace,
            containers,
            has_init_containers: spec
                .get("initContainers")
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty()),
            phase: str_at(pod, "/status/phase").into(),
        })
    }

    /// `NAME_NAMESPACE(UID)`, the kubelet's `format.Pod`.
    pub fn format(&self) -> String {
        format!("{}_{}({})", self.name, self.namespace, self.uid)
    }
}

impl ContainerSpec {
    fn parse(c: &Value, index: usize) -> ContainerSpec {
        let name = match str_at(c, "/name") {
            "" => format!("container-{index}"),
            n => n.to_string(),
        };
        let env = c
            .get("env")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|e| {
                        let n = e.get("name")?.as_str()?;
                        let v = e.get("value").and_then(Value::as_str).unwrap_or_default();
                        Some((n.to_string(), v.to_string()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let ports = c
            .get("ports")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|p| {
                        let port = u16::try_from(p.get("containerPort")?.as_u64()?).ok()?;
                        let name = p.get("name").and_then(Value::as_str).map(str::to_string);
                        Some(PortSpec { name, port })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let memory_limit = match c.pointer("/resources/limits/memory") {
            None | Some(Value::Null) => Ok(None),
            Some(q) => parse_quantity(q)
                .map(Some)
                .map_err(|e| format!("resources.limits.memory: {e}")),
        };
        let probe = |key: &str| c.get(key).filter(|v| !v.is_null()).map(ProbeSpec::parse);
        ContainerSpec {
            name,
            image: str_at(c, "/image").into(),
            command: strings(c.get("command")),
            args: strings(c.get("args")),
            env,
            ports,
            memory_limit,
            readiness: probe("readinessProbe"),
            liveness: probe("livenessProbe"),
            startup: probe("startupProbe"),
        }
    }
}

/// Parses a Kubernetes resource quantity (`64Mi`, `48M`, `1Gi`, `1e9`, `128974848`,
/// `0.5Gi`) into bytes, rounding up like the kubelet.
pub fn parse_quantity(q: &Value) -> Result<u64, String> {
    let s = match q {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) => n.to_string(),
        other => return Err(format!("quantity must be a string, got {other}")),
    };
    let bad = || {
        format!(
            "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$': {s:?}"
        )
    };
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let value: f64 = num.parse().map_err(|_| bad())?;
    let mult: f64 = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        "m" => 1e-3,
        e if e.starts_with(['e', 'E']) => {
            let exp: i32 = e[1..].parse().map_err(|_| bad())?;
            10f64.powi(exp)
        }
        _ => return Err(bad()),
    };
    let bytes = (value * mult).ceil();
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn quantities() {
        let q = |s: &str| parse_quantity(&json!(s));
        assert_eq!(q("64Mi"), Ok(64 << 20));
        assert_eq!(q("48M"), Ok(48_000_000));
        assert_eq!(q("1Gi"), Ok(1 << 30));
        assert_eq!(q("0.5Gi"), Ok(1 << 29));
        assert_eq!(q("1e6"), Ok(1_000_000));
        assert_eq!(q("1500m"), Ok(2));
        assert_eq!(parse_quantity(&json!(1024)), Ok(1024));
        assert!(q("lots").is_err());
        assert!(q("12Xi").is_err());
        assert!(parse_quantity(&json!([1])).is_err());
    }

    #[test]
    fn pod_parse_tolerates_garbage() {
        let p = PodSpec::parse(&json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
            "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 2,
              "containers": [
                {"name": "a", "image": "selfheal-lab/shell", "command": ["sh", "-c", "exit 1"],
                 "env": [{"name": "X", "value": "1"}, {"name": "Y"}, {"bad": true}],
                 "ports": [{"containerPort": 8080, "name": "http"}, {"containerPort": "x"}],
                 "resources": {"limits": {"memory": "32Mi"}},
                 "livenessProbe": {"httpGet": {"port": "http", "path": "/"}}},
                {"image": 7, "resources": {"limits": {"memory": "much"}}, "command": "oops"}
              ]}
        }))
        .expect("pod");
        assert_eq!(p.restart_policy, RestartPolicy::Never);
        assert_eq!(p.grace, Duration::from_secs(2));
        assert_eq!(p.format(), "p_ns(u)");
        let a = &p.containers[0];
        assert_eq!(
            a.env,
            vec![("X".into(), "1".into()), ("Y".into(), "".into())]
        );
        assert_eq!(a.ports.len(), 1);
        assert_eq!(a.memory_limit, Ok(Some(32 << 20)));
        assert_eq!(a.resolve_port(&json!("http")), Ok(8080));
        assert!(a.resolve_port(&json!("nope")).is_err());
        assert!(a.config_error().is_none());
        let b = &p.containers[1];
        assert_eq!(b.name, "container-1");
        assert_eq!(b.image, "");
        assert!(b.command.is_empty());
        assert!(b.config_error().is_some());
        assert!(PodSpec::parse(&json!({"metadata": {"name": "x"}})).is_none());
    }
}
