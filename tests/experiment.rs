//! End to end: the daemon binary against the lab API server, read over HTTP.
//! The experiment's bare pod `grade-submission-api` is OOMKilled twice.

mod common;

use common::*;
use jiff::SignedDuration;
use selfheal_lab::testkit::tools::PROMTOOL;

const API: &[(&str, &str)] = &[
    ("namespace", NS),
    ("workload_kind", "Pod"),
    ("workload", "grade-submission-api"),
    ("container", "api"),
];

fn with<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut labels = API.to_vec();
    labels.extend_from_slice(extra);
    labels
}

const POD: &str = "grade-submission-api";
const TTR: &str = "selfheal_container_time_to_recover_seconds";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_experiment_timeline_gives_two_oomkills_and_two_recoveries() {
    let cluster = Cluster::start().await;
    cluster.create_pod(
        POD,
        None,
        serde_json::json!({"app.kubernetes.io/name": "grade-submission", "app.kubernetes.io/component": "backend"}),
    ).await;
    cluster.set_status(POD, running(0, true, None)).await;
    let daemon = Daemon::start(&cluster, "").await;
    let scrape = daemon
        .wait_for("the container to be seen", |s| {
            s.has("selfheal_container_oom_kills_total", API)
        })
        .await;
    assert_eq!(
        scrape.get("selfheal_container_oom_kills_total", API),
        Some(0.0)
    );
    assert_eq!(
        scrape.get("selfheal_container_memory_limit_bytes", API),
        Some(48.0 * 1024.0 * 1024.0)
    );

    // First OOMKill: the kernel kills it 3 s before the kubelet restarts it, ready at once.
    let d1_at = now_s() - SignedDuration::from_secs(3);
    let d1 = death("OOMKilled", 137, "first", d1_at);
    cluster
        .set_status(POD, terminated(0, d1.clone(), None))
        .await;
    daemon
        .wait_for("the first OOMKill", |s| {
            s.get("selfheal_container_oom_kills_total", API) == Some(1.0)
        })
        .await;
    cluster
        .set_status(POD, running(1, true, Some(d1.clone())))
        .await;
    let scrape = daemon
        .wait_for("the first recovery", |s| {
            s.get(&format!("{TTR}_count"), &with(&[("reason", "OOMKilled")])) == Some(1.0)
        })
        .await;
    let first = scrape.sum(&format!("{TTR}_sum"), API);
    assert!((3.0..6.0).contains(&first), "first time to recover {first}");

    // Second OOMKill, with a CrashLoopBackOff before the restart.
    let d2_at = now_s() - SignedDuration::from_secs(10);
    let d2 = death("OOMKilled", 137, "second", d2_at);
    cluster
        .set_status(POD, terminated(1, d2.clone(), Some(d1)))
        .await;
    cluster.set_status(POD, crashloop(1, d2.clone())).await;
    let scrape = daemon
        .wait_for("the crashloop", |s| {
            s.get("selfheal_container_crashlooping", &with(&[("pod", POD)])) == Some(1.0)
        })
        .await;
    assert_eq!(
        scrape.get("selfheal_container_oom_kills_total", API),
        Some(2.0)
    );
    cluster
        .set_status(POD, running(2, false, Some(d2.clone())))
        .await;
    cluster.set_status(POD, running(2, true, Some(d2))).await;
    let scrape = daemon
        .wait_for("the second recovery", |s| {
            s.get(&format!("{TTR}_count"), &with(&[("reason", "OOMKilled")])) == Some(2.0)
        })
        .await;
    assert_eq!(
        scrape.get(
            "selfheal_container_restarts_total",
            &with(&[("reason", "OOMKilled")])
        ),
        Some(2.0)
    );
    assert_eq!(scrape.sum("selfheal_container_restarts_total", API), 2.0);
    assert_eq!(
        scrape.get("selfheal_container_oom_kills_total", API),
        Some(2.0)
    );
    assert_eq!(
        scrape.get("selfheal_container_last_termination_exit_code", API),
        Some(137.0)
    );
    assert_eq!(
        scrape.get("selfheal_container_crashlooping", &with(&[("pod", POD)])),
        Some(0.0)
    );
    let second = scrape.sum(&format!("{TTR}_sum"), API) - first;
    assert!(
        (10.0..13.0).contains(&second),
        "second time to recover {second}"
    );
    // Both recoveries are in the 5 s and 20 s buckets respectively.
    let le = |bound: &'static str| with(&[("reason", "OOMKilled"), ("le", bound)]);
    assert_eq!(scrape.get(&format!("{TTR}_bucket"), &le("2")), Some(0.0));
    assert_eq!(scrape.get(&format!("{TTR}_bucket"), &le("10")), Some(1.0));
    assert_eq!(scrape.get(&format!("{TTR}_bucket"), &le("20")), Some(2.0));
    // Downtime as Kubernetes saw it: the pod was unready twice.
    let downtime = scrape.sum("selfheal_workload_unavailable_seconds_total", &API[..3]);
    assert!(downtime > 0.0, "downtime {downtime}");

    check_exposition_formats(&daemon).await;
}

/// `/metrics` is valid Prometheus text (promtool is silent on it) and OpenMetrics on request.
async fn check_exposition_formats(daemon: &Daemon) {
    let (_, text) = daemon.get("/metrics", None).await.expect("metrics");
    if PROMTOOL.require("check the exposition with `promtool check metrics`") {
        use std::io::Write;
        let mut child = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("promtool starts");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write to promtool");
        let output = child.wait_with_output().expect("promtool runs");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.status.success() && said.trim().is_empty(),
            "promtool: {said}\n{text}"
        );
    }
    let (status, open) = daemon
        .get(
            "/metrics",
            Some("application/openmetrics-text;version=1.0.0"),
        )
        .await
        .expect("openmetrics");
    assert_eq!(status, 200);
    assert!(open.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    assert!(open.contains("# TYPE selfheal_container_restarts counter"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_first_list_shows_is_baseline_and_a_new_pod_is_news() {
    let cluster = Cluster::start().await;
    cluster.create_pod(POD, None, serde_json::json!({})).await;
    let old_death = death(
        "OOMKilled",
        137,
        "old",
        now_s() - SignedDuration::from_secs(600),
    );
    cluster
        .set_status(POD, running(5, true, Some(old_death)))
        .await;
    let daemon = Daemon::start(&cluster, "").await;
    let scrape = daemon
        .wait_for("the container", |s| {
            s.has("selfheal_container_oom_kills_total", API)
        })
        .await;
    assert_eq!(
        scrape.get("selfheal_container_oom_kills_total", API),
        Some(0.0)
    );
    assert_eq!(scrape.sum("selfheal_container_restarts_total", API), 0.0);
    assert_eq!(
        scrape.get("selfheal_container_last_termination_exit_code", API),
        Some(137.0)
    );

    // A pod created while the daemon runs is news from its creation.
    let labels = [("workload", "late"), ("container", "api")];
    cluster
        .create_pod("late", None, serde_json::json!({}))
        .await;
    let d = death("Error", 1, "late-0", now_s());
    cluster.set_status("late", running(1, true, Some(d))).await;
    let scrape = daemon
        .wait_for("the late pod's restart", |s| {
            s.get(
                "selfheal_container_restarts_total",
                &[labels[0], labels[1], ("reason", "Error")],
            ) == Some(1.0)
        })
        .await;
    assert_eq!(scrape.sum("selfheal_container_restarts_total", API), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_turns_readiness_off_and_exits_zero() {
    let cluster = Cluster::start().await;
    let mut daemon = Daemon::start(&cluster, "").await;
    assert_eq!(daemon.get("/healthz", None).await.map(|r| r.0), Some(200));
    let (status, took) = daemon.terminate();
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        daemon.log()
    );
    eprintln!("daemon exited {took:?} after SIGTERM");
    let log = daemon.log();
    assert!(
        log.contains("shutting down") && log.contains("stopped"),
        "{log}"
    );
}
