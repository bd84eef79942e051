//! Container probes: their spec (`httpGet`, `tcpSocket`, `exec`; delays, period, timeout,
//! thresholds), the pure threshold logic ([`ProbeTracker`]), and running one probe
//! (a raw HTTP/1.0 GET over a tokio `TcpStream`, a TCP connect, or a command), with the
//! kubelet's messages (`HTTP probe failed with statuscode: 404`, `dial tcp …: connect:
//! connection refused`).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Readiness, liveness or startup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    /// `readinessProbe`.
    Readiness,
    /// `livenessProbe`.
    Liveness,
    /// `startupProbe`.
    Startup,
}

impl ProbeKind {
    /// `Readiness`, `Liveness`, `Startup` (as in `"Liveness probe failed: …"`).
    pub fn label(self) -> &'static str {
        match self {
            ProbeKind::Readiness => "Readiness",
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Startup => "Startup",
        }
    }
}

/// How to probe.
#[derive(Debug, Clone, PartialEq)]
pub enum ProbeAction {
    /// `httpGet`: host (empty: pod IP), port (number or name), path.
    Http {
        /// `host`.
        host: String,
        /// `port`.
        port: Value,
        /// `path`.
        path: String,
    },
    /// `tcpSocket`.
    Tcp {
        /// `host`.
        host: String,
        /// `port`.
        port: Value,
    },
    /// `exec.command`.
    Exec(Vec<String>),
}

/// One probe of a container.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeSpec {
    /// What to do.
    pub action: ProbeAction,
    /// `initialDelaySeconds` (0).
    pub initial_delay: Duration,
    /// `periodSeconds` (10).
    pub period: Duration,
    /// `timeoutSeconds` (1).
    pub timeout: Duration,
    /// `successThreshold` (1).
    pub success_threshold: u32,
    /// `failureThreshold` (3).
    pub failure_threshold: u32,
}

fn secs(p: &Value, key: &str, default: f64, min: f64) -> Duration {
    let v = p
        .get(key)
        .and_then(Value::as_f64)
        .filter(|v| v.is_finite())
        .unwrap_or(default);
    Duration::from_secs_f64(v.max(min))
}

fn count(p: &Value, key: &str, default: u32) -> u32 {
    p.get(key)
        .and_then(Value::as_u64)
        .map(|v| u32::try_from(v).unwrap_or(u32::MAX))
        .filter(|v| *v > 0)
        .unwrap_or(default)
}

impl ProbeSpec {
    /// Reads a probe object; an error names what is wrong.
    pub fn parse(p: &Value) -> Result<ProbeSpec, String> {
        let host = |v: &Value| {
            v.get("host")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let action = if let Some(h) = p.get("httpGet").filter(|v| v.is_object()) {
            if h.get("scheme")
                .and_then(Value::as_str)
                .is_some_and(|s| s != "HTTP")
            {
                return Err("httpGet: only scheme HTTP is supported by the lab".into());
            }
            let path = h.get("path").and_then(Value::as_str).unwrap_or("/");
            ProbeAction::Http {
                host: host(h),
                port: h.get("port").cloned().unwrap_or(Value::Null),
                path: if path.starts_with('/') {
                    path.to_string()
                } else {
                    format!("/{path}")
                },
            }
        } else if let Some(t) = p.get("tcpSocket").filter(|v| v.is_object()) {
            ProbeAction::Tcp {
                host: host(t),
                port: t.get("port").cloned().unwrap_or(Value::Null),
            }
        } else if let Some(cmd) = p.pointer("/exec/command").and_then(Value::as_array) {
            let cmd: Vec<String> = cmd
                .iter()
                .filter_map(|c| c.as_str().map(str::to_string))
                .collect();
            if cmd.is_empty() {
                return Err("exec.command: Required value".into());
            }
            ProbeAction::Exec(cmd)
        } else {
            return Err("must specify a handler type (httpGet, tcpSocket or exec)".into());
        };
        Ok(ProbeSpec {
            action,
            initial_delay: secs(p, "initialDelaySeconds", 0.0, 0.0),
            period: secs(p, "periodSeconds", 10.0, 0.1),
            timeout: secs(p, "timeoutSeconds", 1.0, 0.1),
            success_threshold: count(p, "successThreshold", 1),
            failure_threshold: count(p, "failureThreshold", 3),
        })
    }
}

/// The result in force for one probe, from consecutive results and thresholds
/// (`prober.worker`). Readiness and startup start as failure, liveness as success.
#[derive(Debug, Clone)]
pub struct ProbeTracker {
    success_threshold: u32,
    failure_threshold: u32,
    last: Option<bool>,
    run: u32,
    result: bool,
}

impl ProbeTracker {
    /// A tracker for `spec` of `kind`.
    pub fn new(kind: ProbeKind, spec: &ProbeSpec) -> Self {
        ProbeTracker {
            success_threshold: spec.success_threshold,
            failure_threshold: spec.failure_threshold,
            last: None,
            run: 0,
            result: kind == ProbeKind::Liveness,
        }
    }

    /// The result in force.
    pub fn result(&self) -> bool {
        self.result
    }

    /// Whether the last `failureThreshold` (or more) outcomes were all failures.
    pub fn failed_past_threshold(&self) -> bool {
        self.last == Some(false) && self.run >= self.failure_threshold
    }

    /// Feeds one probe outcome; returns `Some(new result)` when the result in force changes.
    pub fn observe(&mut self, ok: bool) -> Option<bool> {
        if self.last == Some(ok) {
            self.run = self.run.saturating_add(1);
        } else {
            self.last = Some(ok);
            self.run = 1;
        }
        let threshold = if ok {
            self.success_threshold
        } else {
            self.failure_threshold
        };
        if self.run >= threshold && self.result != ok {
            self.result = ok;
            return Some(ok);
        }
        None
    }
}

/// Runs one probe against `pod_ip`; `Err` carries the kubelet-style failure message.
pub async fn run_probe(
    action: &ProbeAction,
    port: Option<u16>,
    pod_ip: IpAddr,
    timeout: Duration,
    env: &[(String, String)],
) -> Result<(), String> {
    let host_ip = |host: &str| -> Result<IpAddr, String> {
        if host.is_empty() {
            Ok(pod_ip)
        } else {
            host.parse()
                .map_err(|_| format!("dial tcp: lookup {host}: no such host"))
        }
    };
    match action {
        ProbeAction::Http { host, path, .. } => {
            let port = port.ok_or("missing port")?;
            let addr = SocketAddr::new(host_ip(host)?, port);
            let url = format!("http://{addr}{path}");
            match tokio::time::timeout(timeout, http_get(addr, path)).await {
                Err(_) => Err(format!(
                    "Get \"{url}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
                )),
                Ok(Err(e)) => Err(format!("Get \"{url}\": {e}")),
                Ok(Ok(code)) if (200..400).contains(&code) => Ok(()),
                Ok(Ok(code)) => Err(format!("HTTP probe failed with statuscode: {code}")),
            }
        }
        ProbeAction::Tcp { host, .. } => {
            let port = port.ok_or("missing port")?;
            let addr = SocketAddr::new(host_ip(host)?, port);
            match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
                Err(_) => Err(format!("dial tcp {addr}: i/o timeout")),
                Ok(Err(e)) => Err(format!("dial tcp {addr}: connect: {}", io_msg(&e))),
                Ok(Ok(_)) => Ok(()),
            }
        }
        ProbeAction::Exec(cmd) => {
            let Some((prog, args)) = cmd.split_first() else {
                return Err("exec.command: Required value".into());
            };
            let mut c = tokio::process::Command::new(prog);
            c.args(args)
                .envs(env.iter().map(|(k, v)| (k, v)))
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true);
            let child = c.spawn().map_err(|e| format!("exec failed: {e}"))?;
            match tokio::time::timeout(timeout, child.wait_with_output()).await {
                Err(_) => Err(format!("command {cmd:?} timed out",)),
                Ok(Err(e)) => Err(format!("exec failed: {e}")),
                Ok(Ok(out)) if out.status.success() => Ok(()),
                Ok(Ok(out)) => Err(format!(
                    "command {cmd:?} exited with {}",
                    out.status.code().unwrap_or(-1)
                )),
            }
        }
    }
}

fn io_msg(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        _ => e.to_string(),
    }
}

/// GET `path` on `addr` with HTTP/1.0; the status code.
async fn http_get(addr: SocketAddr, path: &str) -> Result<u16, String> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("dial tcp {addr}: connect: {}", io_msg(&e)))?;
    let req = format!(
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.34\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    // Only the status line is needed.
    while !buf.contains(&b'\n') && buf.len() < 4096 {
        let n = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    let code = line
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok());
    code.ok_or_else(|| "malformed HTTP response".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parse_and_defaults() {
        let p = ProbeSpec::parse(&json!({"httpGet": {"port": 80, "path": "healthz"}})).unwrap();
        assert_eq!(p.period, Duration::from_secs(10));
        assert_eq!(p.failure_threshold, 3);
        assert_eq!(
            p.action,
            ProbeAction::Http {
                host: "".into(),
                port: json!(80),
                path: "/healthz".into()
            }
        );
        assert!(ProbeSpec::parse(&json!({"periodSeconds": 1})).is_err());
        assert!(ProbeSpec::parse(&json!({"httpGet": {"port": 1, "scheme": "HTTPS"}})).is_err());
        let t = ProbeSpec::parse(&json!({"tcpSocket": {"port": "http"}, "failureThreshold": 0}))
            .unwrap();
        assert_eq!(t.failure_threshold, 3);
    }

    #[test]
    fn thresholds() {
        let spec = ProbeSpec {
            action: ProbeAction::Exec(vec!["true".into()]),
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            success_threshold: 2,
            failure_threshold: 3,
        };
        let mut r = ProbeTracker::new(ProbeKind::Readiness, &spec);
        assert!(!r.result());
        assert_eq!(r.observe(true), None);
        assert_eq!(r.observe(true), Some(true));
        assert_eq!(r.observe(false), None);
        assert_eq!(r.observe(true), None);
        assert_eq!(r.observe(false), None);
        assert_eq!(r.observe(false), None);
        assert_eq!(r.observe(false), Some(false));
        let mut l = ProbeTracker::new(ProbeKind::Liveness, &spec);
        assert!(l.result());
        assert_eq!(l.observe(false), None);
        assert_eq!(l.observe(false), None);
        assert_eq!(l.observe(false), Some(false));
    }

    #[tokio::test]
    async fn refused_and_http() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut b = [0u8; 512];
                let n = s.read(&mut b).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&b[..n]).to_string();
                let code = if req.starts_with("GET /ok ") {
                    200
                } else {
                    404
                };
                let _ = s
                    .write_all(format!("HTTP/1.0 {code} X\r\n\r\n").as_bytes())
                    .await;
            }
        });
        let http = |path: &str| ProbeAction::Http {
            host: String::new(),
            port: json!(port),
            path: path.into(),
        };
        let t = Duration::from_secs(2);
        assert_eq!(
            run_probe(&http("/ok"), Some(port), ip, t, &[]).await,
            Ok(())
        );
        assert_eq!(
            run_probe(&http("/no"), Some(port), ip, t, &[]).await,
            Err("HTTP probe failed with statuscode: 404".into())
        );
        // a port nothing listens on
        let free = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let e = run_probe(&http("/"), Some(free), ip, t, &[])
            .await
            .unwrap_err();
        assert!(e.contains("connection refused"), "{e}");
        let tcp = ProbeAction::Tcp {
            host: String::new(),
            port: json!(port),
        };
        assert_eq!(run_probe(&tcp, Some(port), ip, t, &[]).await, Ok(()));
        let exec = ProbeAction::Exec(vec!["sh".into(), "-c".into(), "exit 3".into()]);
        assert!(run_probe(&exec, None, ip, t, &[]).await.is_err());
    }
}
