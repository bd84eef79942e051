//! The OOM alert, delivered: the example Alertmanager configuration
//! (`deploy/alertmanager/alertmanager.yml`) checked with amtool, and the whole chain run
//! for real — the kernel OOM-kills containers of the lab's kubelet, the daemon counts the
//! kills, Prometheus evaluates the shipped rule file and sends the alert to Debian's
//! Alertmanager 0.25, which notifies a webhook receiver in this test.
//!
//! prometheus, prometheus-alertmanager and amtool (Debian's `prometheus` and
//! `prometheus-alertmanager` packages, which `scripts/test` installs) are required: a test
//! fails without them, naming the install command, unless `SKIP_MISSING_TOOLS=1` asks it
//! to skip (and be listed).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::routing::post;
use common::kubelet::kubelet;
use common::prometheus::Prometheus;
use common::*;
use selfheal_lab::testkit::tools::{ALERTMANAGER, AMTOOL, PROMETHEUS};
use serde_json::{Value, json};

const EXAMPLE: &str = "deploy/alertmanager/alertmanager.yml";
const RULES: &str = "deploy/rules/selfheal-rules.yaml";
/// The receiver of the example's route for the alerts about workloads.
const WORKLOADS_RECEIVER: &str = "selfheal-workloads";
/// The containers OOM-killed in the end-to-end test, in one pod.
const CONTAINERS: [&str; 2] = ["left", "right"];
const POD: &str = "hog";
/// Kernel OOM kills per container before it stops allocating.
const KILLS: u32 = 3;

/// The alert names of the shipped rule file.
fn shipped_alerts() -> Vec<String> {
    let rules: Value = serde_saphyr::from_str(&read(RULES)).expect("rules YAML");
    rules["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|group| group["rules"].as_array().into_iter().flatten())
        .filter_map(|rule| rule["alert"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn the_example_alertmanager_config_is_valid_and_routes_every_shipped_alert() {
    if !AMTOOL.require("check the example Alertmanager configuration") {
        return;
    }
    let example = repo(EXAMPLE);
    let (ok, said) = run(Command::new("amtool").arg("check-config").arg(&example));
    assert!(ok, "amtool check-config {EXAMPLE}:\n{said}");
    assert!(said.contains("1 inhibit rules"), "{said}");

    // Each shipped alert reaches a named route, not the catch-all: an alert added to the
    // rules without a route here fails this test.
    let alerts = shipped_alerts();
    assert!(alerts.len() >= 8, "{alerts:?}");
    for alert in &alerts {
        let expected = if alert.contains("OOM")
            || alert.contains("CrashLooping")
            || alert.contains("Recovery")
            || alert.contains("Probe")
            || alert.contains("Downtime")
        {
            WORKLOADS_RECEIVER
        } else {
            "selfheal-default"
        };
        // --verify.receivers makes amtool fail unless the alert reaches exactly these.
        let (ok, said) = run(Command::new("amtool")
            .args(["config", "routes", "test"])
            .arg(format!("--config.file={}", example.display()))
            .arg(format!("--verify.receivers={expected}"))
            .arg(format!("alertname={alert}")));
        assert!(ok, "{alert} does not go to {expected} alone:\n{said}");
        assert_eq!(said.lines().next(), Some(expected), "{alert}: {said}");
    }
    // The default route is reached only through its child route for the exporter's
    // own alerts; the tree has the two children.
    let (ok, said) = run(Command::new("amtool")
        .args(["config", "routes", "show"])
        .arg(format!("--config.file={}", example.display())));
    assert!(ok, "{said}");
    assert_eq!(said.matches("receiver: ").count(), 3, "{said}");
}

/// What the webhook receiver was sent: one entry per notification.
type Notifications = Arc<Mutex<Vec<Value>>>;

/// A webhook receiver on 127.0.0.1 recording every notification.
async fn webhook_receiver() -> (u16, Notifications) {
    let notifications: Notifications = Arc::default();
    let app = axum::Router::new()
        .route(
            "/{*path}",
            post(
                |State(seen): State<Notifications>, Json(body): Json<Value>| async move {
                    seen.lock().expect("lock").push(body);
                },
            ),
        )
        .with_state(notifications.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, notifications)
}

/// Debian's Alertmanager on 127.0.0.1 with `config`, killed on drop.
struct Alertmanager {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Alertmanager {
    async fn start(binary: &Path, config: &Value) -> Alertmanager {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("alertmanager.yml");
        std::fs::write(&config_path, config.to_string()).expect("config written");
        let port = free_port();
        let cluster_port = free_port();
        let log = std::fs::File::create(dir.path().join("alertmanager.log")).expect("log");
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            // A single instance: no gossip beyond loopback.
            .arg(format!("--cluster.listen-address=127.0.0.1:{cluster_port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("alertmanager starts");
        let alertmanager = Alertmanager { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some((200, _)) = http_get(port, "/-/ready", None).await {
                return alertmanager;
            }
            assert!(
                Instant::now() < deadline,
                "alertmanager not ready in 30 s:\n{}",
                alertmanager.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("alertmanager.log")).unwrap_or_default()
    }

    /// The alerts it holds (API v2), each with its `status`.
    async fn alerts(&self) -> Vec<Value> {
        let (status, body) = http_get(self.port, "/api/v2/alerts", None)
            .await
            .expect("alertmanager answers");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("alerts JSON")
    }

    /// Posts `alerts` as a client (e.g. another Prometheus) would.
    async fn post(&self, alerts: &Value) {
        // reqwest is built without a TLS provider of its own (the daemon installs ring).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let response = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{}/api/v2/alerts", self.port))
            .header("content-type", "application/json")
            .body(alerts.to_string())
            .send()
            .await
            .expect("alertmanager answers");
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        assert!(status.is_success(), "HTTP {status}: {body}");
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The example configuration with its webhooks pointed at the test's receiver and the
/// timings of a test (seconds, not minutes); route, grouping and inhibition unchanged.
fn example_for_test(receiver_port: u16) -> Value {
    let mut config: Value = serde_saphyr::from_str(&read(EXAMPLE)).expect("example YAML");
    let route = &mut config["route"];
    route["group_wait"] = json!("1s");
    route["group_interval"] = json!("1s");
    route["repeat_interval"] = json!("1h");
    for receiver in config["receivers"].as_array_mut().expect("receivers") {
        let name = receiver["name"].as_str().expect("name").to_owned();
        for webhook in receiver["webhook_configs"]
            .as_array_mut()
            .expect("webhook_configs")
        {
            webhook["url"] = json!(format!("http://127.0.0.1:{receiver_port}/{name}"));
        }
    }
    config
}

/// The shipped rule file with its 1 h OOM window (the lines marked `# window: 1h`)
/// shortened to `window`, so that "the kills stop" resolves the alert within the test;
/// the threshold (3 kills) and the expressions are unchanged.
fn rules_with_window(window: &str) -> String {
    let oom_window = |line: &str| {
        line.contains("# window: 1h") && line.contains("selfheal_container_oom_kills_total")
    };
    let text = read(RULES);
    assert_eq!(
        text.lines().filter(|l| oom_window(l)).count(),
        3,
        "the OOM alert's window appears three times, each marked"
    );
    text.lines()
        .map(|line| {
            if oom_window(line) {
                line.replace("[1h]", &format!("[{window}]"))
                    .replace("offset 1h", &format!("offset {window}"))
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A pod of two containers that each allocate past 32Mi until the kernel has killed them
/// [`KILLS`] times, then sleep: the kills stop while the containers live on. Each keeps
/// its count in a file of `dir` (the lab's containers share the host's filesystem).
fn hog_pod(dir: &Path) -> Value {
    let containers: Vec<Value> = CONTAINERS
        .iter()
        .map(|name| {
            let count = dir.join(name);
            let script = format!(
                "n=$(cat {count} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {count}; \
                 if [ $n -le {KILLS} ]; then \
                 exec python3 -c \"a=[]\nwhile True: a.append(' ' * 10**6)\"; \
                 else exec sleep 600; fi",
                count = count.display()
            );
            json!({"name": name, "image": "selfheal-lab/shell",
                   "command": ["sh", "-c", script],
                   "resources": {"limits": {"memory": "32Mi"}}})
        })
        .collect();
    json!({
        "metadata": {"name": POD, "labels": {"app": POD}},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": containers}
    })
}

/// The `SelfhealRepeatedOOMKills` alerts of a notification, by container.
fn oom_alerts(notification: &Value) -> Vec<&Value> {
    notification["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["labels"]["alertname"] == "SelfhealRepeatedOOMKills")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_oom_kills_page_once_per_container_through_alertmanager_and_resolve() {
    let Some(prometheus_binary) = PROMETHEUS.require_path("evaluate the shipped rules") else {
        return;
    };
    let Some(alertmanager_binary) = ALERTMANAGER.require_path("deliver the alerts to a receiver")
    else {
        return;
    };
    let started = Instant::now();
    let step = |what: &str| eprintln!("[{:>6.2?}] {what}", started.elapsed());
    let cluster = Cluster::start().await;
    let Some(kubelet) = kubelet(&cluster, Duration::from_millis(500)).await else {
        return;
    };
    let (receiver_port, notifications) = webhook_receiver().await;
    let alertmanager =
        Alertmanager::start(&alertmanager_binary, &example_for_test(receiver_port)).await;
    let daemon = Daemon::start(&cluster, "").await;
    let window = "40s";
    let rules = rules_with_window(window);
    let prometheus = Prometheus::start_alerting(
        &prometheus_binary,
        daemon.port,
        Some(&rules),
        Some(alertmanager.port),
    )
    .await;
    step("daemon, Prometheus and Alertmanager up");

    let counts = tempfile::tempdir().expect("tempdir");
    cluster.create(Kind::Pod, hog_pod(counts.path())).await;
    let killed = |scrape: &Scrape, container: &str| {
        scrape
            .get(
                "selfheal_container_oom_kills_total",
                &[("workload", POD), ("container", container)],
            )
            .unwrap_or(0.0)
    };

    // Firing: one notification per container, each after that container's third kill.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut firing: BTreeMap<String, Value> = BTreeMap::new();
    while firing.len() < CONTAINERS.len() {
        let scrape = daemon.scrape().await;
        let received: Vec<Value> = notifications.lock().expect("lock").clone();
        for notification in received.iter().filter(|n| n["status"] == "firing") {
            for alert in oom_alerts(notification) {
                let container = alert["labels"]["container"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned();
                if firing.contains_key(&container) {
                    continue;
                }
                let kills = killed(&scrape, &container);
                step(&format!(
                    "firing notification for {container} after {kills} kills counted"
                ));
                assert!(
                    kills >= f64::from(KILLS),
                    "{container} paged after {kills} kills, before the third: {notification:#}"
                );
                firing.insert(container, notification.clone());
            }
        }
        assert!(
            Instant::now() < deadline,
            "no firing notification per container within 90 s; received {received:#?}\n\
             Prometheus log:\n{}\nAlertmanager log:\n{}",
            prometheus.log(),
            alertmanager.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for (container, notification) in &firing {
        let alerts = oom_alerts(notification);
        assert_eq!(
            alerts.len(),
            1,
            "one container's alert per notification: {notification:#}"
        );
        assert_eq!(notification["receiver"], WORKLOADS_RECEIVER);
        assert_eq!(notification["groupLabels"]["container"], container.as_str());
        let labels = &alerts[0]["labels"];
        assert_eq!(labels["namespace"], NS);
        assert_eq!(labels["workload_kind"], "Pod");
        assert_eq!(labels["workload"], POD);
        assert_eq!(labels["severity"], "warning");
        let description = alerts[0]["annotations"]["description"]
            .as_str()
            .unwrap_or("");
        assert!(
            description.contains(&format!("Container {container} of Pod {NS}/{POD}"))
                && description.contains("memory limit of 32Mi"),
            "{description}"
        );
    }
    let groups: Vec<&Value> = firing.values().map(|n| &n["groupKey"]).collect();
    assert_ne!(groups[0], groups[1], "one group per container");

    // Inhibition: a crash-looping alert about a container whose OOM alert fires is
    // inhibited (posted here as another Prometheus would; the daemon's own needs 10
    // minutes of CrashLoopBackOff).
    let crash_looping = |container: &str| {
        json!({"labels": {"alertname": "SelfhealCrashLooping", "severity": "warning",
                          "namespace": NS, "workload_kind": "Pod", "workload": POD,
                          "container": container}})
    };
    alertmanager
        .post(&json!([crash_looping("left"), crash_looping("elsewhere")]))
        .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let alerts = alertmanager.alerts().await;
        let state = |container: &str| {
            alerts
                .iter()
                .find(|a| {
                    a["labels"]["alertname"] == "SelfhealCrashLooping"
                        && a["labels"]["container"] == container
                })
                .map(|a| a["status"].clone())
        };
        if let (Some(left), Some(elsewhere)) = (state("left"), state("elsewhere"))
            && left["state"] == "suppressed"
        {
            assert!(
                !left["inhibitedBy"].as_array().is_none_or(Vec::is_empty),
                "{left:#}"
            );
            assert_eq!(
                elsewhere["state"], "active",
                "another container is not inhibited: {elsewhere:#}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the crash-looping alert is not inhibited: {alerts:#?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    step("crash-looping alert of the OOM-killed container inhibited");

    // The kills have stopped (each container sleeps after its third); once the window has
    // passed, the alert resolves and the receiver is told so, per container.
    let scrape = daemon.scrape().await;
    for container in CONTAINERS {
        assert_eq!(
            killed(&scrape, container),
            f64::from(KILLS),
            "{container}: exactly the kernel's kills"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut resolved: BTreeMap<String, Value> = BTreeMap::new();
    while resolved.len() < CONTAINERS.len() {
        let received: Vec<Value> = notifications.lock().expect("lock").clone();
        for notification in received.iter().filter(|n| n["status"] == "resolved") {
            for alert in oom_alerts(notification) {
                let container = alert["labels"]["container"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned();
                if resolved
                    .insert(container.clone(), notification.clone())
                    .is_none()
                {
                    step(&format!("resolved notification for {container}"));
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "no resolved notification per container within 120 s; received {received:#?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let scrape = daemon.scrape().await;
    for container in CONTAINERS {
        assert_eq!(
            killed(&scrape, container),
            f64::from(KILLS),
            "{container}: no kill after the third"
        );
    }
    kubelet.shutdown().await;
}
