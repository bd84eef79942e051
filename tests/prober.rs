//! End to end: the daemon probes a local HTTP target that goes away for a known window.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_of_the_target_is_measured_as_clients_see_it() {
    let cluster = Cluster::start().await;
    let mut target = Flaky::start().await;
    let config = format!(
        "[[probes.targets]]\nname = \"flaky\"\nurl = \"http://127.0.0.1:{}/health\"\ninterval = \"100ms\"\ntimeout = \"500ms\"\n",
        target.port
    );
    let daemon = Daemon::start(&cluster, &config).await;
    let flaky = [("target", "flaky")];
    daemon
        .wait_for("the target up", |s| {
            s.get("selfheal_probe_up", &flaky) == Some(1.0)
        })
        .await;

    target.down().await;
    let went_down = Instant::now();
    daemon
        .wait_for("the target down", |s| {
            s.get("selfheal_probe_up", &flaky) == Some(0.0)
        })
        .await;
    tokio::time::sleep(Duration::from_millis(1000).saturating_sub(went_down.elapsed())).await;
    target.up().await;
    let truth = went_down.elapsed().as_secs_f64();

    let scrape = daemon
        .wait_for("the outage to end", |s| {
            s.get(
                "selfheal_probe_outages_total",
                &[("target", "flaky"), ("cause", "unknown")],
            ) == Some(1.0)
        })
        .await;
    assert_eq!(scrape.get("selfheal_probe_up", &flaky), Some(1.0));
    let downtime = scrape.sum("selfheal_probe_downtime_seconds_total", &flaky);
    let outage = scrape.sum("selfheal_probe_outage_duration_seconds_sum", &flaky);
    eprintln!("true outage {truth:.3} s, measured downtime {downtime:.3} s, outage {outage:.3} s");
    // Loose bounds: the precision (within one 100 ms interval) is measured, not asserted.
    assert!(
        (truth - 0.6..truth + 0.6).contains(&downtime),
        "downtime {downtime} vs {truth}"
    );
    assert!(
        (downtime - outage).abs() < 1e-6,
        "downtime {downtime} vs outage {outage}"
    );
    assert!(
        scrape.sum(
            "selfheal_probe_requests_total",
            &[("target", "flaky"), ("result", "connection_refused")]
        ) >= 1.0
    );
    assert!(
        scrape.sum(
            "selfheal_probe_requests_total",
            &[("target", "flaky"), ("result", "success")]
        ) >= 2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_attributed_to_the_oomkill_behind_it() {
    let cluster = Cluster::start().await;
    cluster
        .create_pod("grade-submission-api", None, serde_json::json!({}))
        .await;
    cluster
        .set_status("grade-submission-api", running(0, true, None))
        .await;
    let mut target = Flaky::start().await;
    let config = format!(
        "[[probes.targets]]\nname = \"grade\"\nurl = \"http://127.0.0.1:{}/grade\"\ninterval = \"100ms\"\n\
         workload = {{ namespace = \"{NS}\", kind = \"Pod\", name = \"grade-submission-api\" }}\n",
        target.port
    );
    let daemon = Daemon::start(&cluster, &config).await;
    let grade = [("target", "grade")];
    daemon
        .wait_for("the target up", |s| {
            s.get("selfheal_probe_up", &grade) == Some(1.0)
        })
        .await;

    // The kernel kills the API: the service stops answering and the kubelet reports it.
    target.down().await;
    let killed = now_s();
    let death = death("OOMKilled", 137, "c0", killed);
    cluster
        .set_status("grade-submission-api", terminated(0, death.clone(), None))
        .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    cluster
        .set_status("grade-submission-api", running(1, true, Some(death)))
        .await;
    target.up().await;

    daemon
        .wait_for("the outage, caused by the OOMKill", |s| {
            s.get(
                "selfheal_probe_outages_total",
                &[("target", "grade"), ("cause", "OOMKilled")],
            ) == Some(1.0)
        })
        .await;
    let (status, body) = daemon
        .get("/api/v1/incidents", None)
        .await
        .expect("incidents");
    assert_eq!(status, 200);
    let incidents: serde_json::Value = serde_json::from_str(&body).expect("json");
    let list = incidents["incidents"].as_array().expect("array");
    let outage = list
        .iter()
        .find(|i| i["kind"] == "outage")
        .expect("an outage");
    assert_eq!(outage["target"], "grade");
    assert_eq!(outage["cause"], "OOMKilled");
    let restart = &outage["restart"];
    assert_eq!(restart["workload"], "grade-submission-api");
    assert_eq!(restart["container"], "api");
    assert_eq!(restart["exit_code"], 137);
    assert_eq!(restart["memory_limit_bytes"], 48 * 1024 * 1024);
    assert!(
        restart["time_to_recover_seconds"].as_f64().is_some(),
        "{body}"
    );
    assert!(list.iter().any(|i| i["kind"] == "restart"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotated_services_are_discovered_and_removed() {
    let cluster = Cluster::start().await;
    let target = Flaky::start().await;
    let service = |name: &str, annotations: serde_json::Value| {
        serde_json::json!({
            "metadata": {"name": name, "annotations": annotations},
            "spec": {"type": "NodePort", "selector": {"app": name},
                     "ports": [{"name": "http", "port": 3000, "targetPort": 3000, "nodePort": target.port}]}
        })
    };
    cluster.create(Kind::Service, service("api", serde_json::json!({"selfheal.io/probe": "true", "selfheal.io/probe-path": "/health", "selfheal.io/probe-interval": "200ms"}))).await;
    cluster.create(Kind::Service, service("typo", serde_json::json!({"selfheal.io/probe": "true", "selfheal.io/probe-interval": "fast"}))).await;
    cluster
        .create(Kind::Service, service("quiet", serde_json::json!({})))
        .await;
    let config = "[metrics]\nretention = \"2s\"\n[probes]\nservice_address = \"node_port\"\n";
    let daemon = Daemon::start(&cluster, config).await;
    let api = [
        ("target", "grade-submission/api"),
        ("namespace", NS),
        ("service", "api"),
    ];
    let scrape = daemon
        .wait_for("the annotated service probed", |s| {
            s.get("selfheal_probe_up", &api) == Some(1.0)
        })
        .await;
    assert!(!scrape.has("selfheal_probe_up", &[("service", "quiet")]));
    assert!(!scrape.has("selfheal_probe_up", &[("service", "typo")]));
    assert_eq!(
        scrape.get(
            "selfheal_probe_config_errors_total",
            &[("namespace", NS), ("service", "typo")]
        ),
        Some(1.0)
    );

    cluster.delete(Kind::Service, "api").await;
    daemon
        .wait_for("the target's series to go after the retention", |s| {
            !s.has("selfheal_probe_up", &api) && !s.has("selfheal_probe_requests_total", &api)
        })
        .await;
}
