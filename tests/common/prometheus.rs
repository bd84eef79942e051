//! A real Prometheus (Debian's `prometheus`) on 127.0.0.1 in a temporary directory,
//! scraping the daemon, evaluating rule files and, when asked, sending alerts to an
//! Alertmanager; with its HTTP API's queries.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{free_port, http_get};

/// A Prometheus on 127.0.0.1 in a temporary directory, killed on drop.
pub struct Prometheus {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Scrapes the daemon on `scrape_port` every second as job `selfheal-exporter`,
    /// with `rules` (JSON or YAML text) loaded and evaluated every second.
    pub async fn start(binary: &Path, scrape_port: u16, rules: Option<&str>) -> Prometheus {
        Prometheus::start_alerting(binary, scrape_port, rules, None).await
    }

    /// [`start`](Self::start), sending its alerts to the Alertmanager on
    /// `alertmanager_port` when one is given.
    pub async fn start_alerting(
        binary: &Path,
        scrape_port: u16,
        rules: Option<&str>,
        alertmanager_port: Option<u16>,
    ) -> Prometheus {
        let target = format!("127.0.0.1:{scrape_port}");
        Prometheus::start_scraping(binary, &target, rules, alertmanager_port).await
    }

    /// [`start_alerting`](Self::start_alerting) with any scrape target (`host:port`, e.g.
    /// a pod's IP on the real cluster's bridge).
    pub async fn start_scraping(
        binary: &Path,
        target: &str,
        rules: Option<&str>,
        alertmanager_port: Option<u16>,
    ) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let alerting = match alertmanager_port {
            Some(port) => format!(
                "alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['127.0.0.1:{port}']\n"
            ),
            None => String::new(),
        };
        let rule_files = match rules {
            Some(rules) => {
                std::fs::write(dir.path().join("rules.yaml"), rules).expect("rules written");
                "rule_files: [rules.yaml]\n"
            }
            None => "",
        };
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n{rule_files}{alerting}\
             scrape_configs:\n  - job_name: selfheal-exporter\n    honor_labels: true\n    \
             static_configs:\n      - targets: ['{target}']\n"
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).expect("config written");
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
        let child = Command::new(binary)
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus starts");
        let prometheus = Prometheus { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some((200, _)) = http_get(port, "/-/ready", None).await {
                return prometheus;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready in 30 s:\n{}",
                prometheus.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    pub async fn api(&self, path: &str) -> Result<Value, String> {
        let (status, body) = http_get(self.port, path, None)
            .await
            .ok_or_else(|| format!("no answer to {path}"))?;
        let answer: Value =
            serde_json::from_str(&body).map_err(|e| format!("HTTP {status}: {e}: {body}"))?;
        if answer["status"] != "success" {
            return Err(format!(
                "HTTP {status}: {} {}",
                answer["errorType"], answer["error"]
            ));
        }
        Ok(answer["data"].clone())
    }

    /// An instant query now; the `data` of the answer.
    pub async fn query(&self, promql: &str) -> Result<Value, String> {
        self.api(&format!("/api/v1/query?query={}", percent_encode(promql)))
            .await
    }

    /// The samples of a vector result, as (labels, value).
    pub async fn samples(&self, promql: &str) -> Vec<(Value, f64)> {
        match self.query(promql).await {
            Ok(data) => vector(&data),
            Err(error) => panic!("{promql}: {error}"),
        }
    }

    pub async fn wait_for(&self, what: &str, promql: &str, done: impl Fn(&[(Value, f64)]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let samples = self.samples(promql).await;
            if done(&samples) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for Prometheus to see {what}: {promql} = {samples:?}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn alerts(&self) -> Vec<Value> {
        let data = self.api("/api/v1/alerts").await.expect("alerts");
        data["alerts"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn vector(data: &Value) -> Vec<(Value, f64)> {
    let value = |v: &Value| {
        v[1].as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(f64::NAN)
    };
    match data["resultType"].as_str() {
        Some("vector") => data["result"]
            .as_array()
            .expect("result")
            .iter()
            .map(|s| (s["metric"].clone(), value(&s["value"])))
            .collect(),
        Some("scalar") => vec![(json!({}), value(&data["result"]))],
        other => panic!("unexpected result type {other:?}"),
    }
}

pub fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
