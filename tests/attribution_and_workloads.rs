//! End to end: liveness kills are attributed whichever watch delivers first, and a
//! Deployment's counters survive the replacement of its pods.

mod common;

use common::*;
use jiff::SignedDuration;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_liveness_kill_is_attributed_in_either_order() {
    let cluster = Cluster::start().await;
    let first_uid = cluster.create_pod("event-first", None, json!({})).await;
    let second_uid = cluster.create_pod("status-first", None, json!({})).await;
    cluster
        .set_status("event-first", running(0, true, None))
        .await;
    cluster
        .set_status("status-first", running(0, true, None))
        .await;
    let daemon = Daemon::start(&cluster, "[metrics]\nattribution_wait = \"30s\"\n").await;

    // Event first, then the status showing Error/137 and the restart.
    let killed = now_s();
    cluster
        .post_liveness_kill("event-first", &first_uid, killed)
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let d = death("Error", 137, "ef-0", killed + SignedDuration::from_secs(1));
    cluster
        .set_status("event-first", running(1, true, Some(d)))
        .await;

    // Status first (held while waiting for the Event), then the Event.
    let killed = now_s();
    let d = death("Completed", 0, "sf-0", killed);
    cluster
        .set_status("status-first", running(1, true, Some(d)))
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    cluster
        .post_liveness_kill("status-first", &second_uid, killed)
        .await;

    let liveness = |pod: &'static str| {
        [
            ("workload", pod),
            ("container", "api"),
            ("reason", "LivenessProbeFailed"),
        ]
    };
    let scrape = daemon
        .wait_for("both liveness restarts", |s| {
            s.get(
                "selfheal_container_restarts_total",
                &liveness("event-first"),
            ) == Some(1.0)
                && s.get(
                    "selfheal_container_restarts_total",
                    &liveness("status-first"),
                ) == Some(1.0)
        })
        .await;
    for pod in ["event-first", "status-first"] {
        let labels = [("workload", pod), ("container", "api")];
        assert_eq!(
            scrape.sum("selfheal_container_restarts_total", &labels),
            1.0,
            "{pod}"
        );
        assert_eq!(
            scrape.get(
                "selfheal_container_time_to_recover_seconds_count",
                &liveness(pod)
            ),
            Some(1.0),
            "{pod}"
        );
        assert_eq!(
            scrape.get("selfheal_container_oom_kills_total", &labels),
            Some(0.0)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_event_the_kubelet_reason_stands() {
    let cluster = Cluster::start().await;
    cluster.create_pod("crasher", None, json!({})).await;
    cluster.set_status("crasher", running(0, true, None)).await;
    let daemon = Daemon::start(&cluster, "[metrics]\nattribution_wait = \"1s\"\n").await;
    let d = death("Error", 1, "c-0", now_s());
    cluster
        .set_status("crasher", running(1, true, Some(d)))
        .await;
    daemon
        .wait_for("the Error restart", |s| {
            s.get(
                "selfheal_container_restarts_total",
                &[("workload", "crasher"), ("reason", "Error")],
            ) == Some(1.0)
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_keeps_its_counters_when_its_pods_are_replaced() {
    let cluster = Cluster::start().await;
    let v1 = json!({"app": "web", "pod-template-hash": "6c9f8"});
    cluster
        .create_pod("web-6c9f8-aaaaa", Some(("ReplicaSet", "web-6c9f8")), v1)
        .await;
    cluster
        .set_status("web-6c9f8-aaaaa", running(0, true, None))
        .await;
    let daemon = Daemon::start(&cluster, "").await;
    let web = [
        ("workload_kind", "Deployment"),
        ("workload", "web"),
        ("container", "api"),
    ];
    let oom = [web[0], web[1], web[2], ("reason", "OOMKilled")];

    // Each pod crashloops once, so that it has a per-pod series.
    let d = death("OOMKilled", 137, "v1-0", now_s());
    cluster
        .set_status("web-6c9f8-aaaaa", crashloop(0, d.clone()))
        .await;
    cluster
        .set_status("web-6c9f8-aaaaa", running(1, true, Some(d)))
        .await;
    daemon
        .wait_for("the v1 restart", |s| {
            s.get("selfheal_container_restarts_total", &oom) == Some(1.0)
                && s.has(
                    "selfheal_container_crashlooping",
                    &[("pod", "web-6c9f8-aaaaa")],
                )
        })
        .await;

    // A rollout: a new ReplicaSet's pod comes up, the old pod goes away.
    let v2 = json!({"app": "web", "pod-template-hash": "7d4b2"});
    cluster
        .create_pod("web-7d4b2-bbbbb", Some(("ReplicaSet", "web-7d4b2")), v2)
        .await;
    cluster
        .set_status("web-7d4b2-bbbbb", running(0, true, None))
        .await;
    cluster.delete_pod("web-6c9f8-aaaaa").await;
    let d = death("OOMKilled", 137, "v2-0", now_s());
    cluster
        .set_status("web-7d4b2-bbbbb", crashloop(0, d.clone()))
        .await;
    cluster
        .set_status("web-7d4b2-bbbbb", running(1, true, Some(d)))
        .await;
    let scrape = daemon
        .wait_for("the v2 restart on the same workload", |s| {
            s.get("selfheal_container_restarts_total", &oom) == Some(2.0)
        })
        .await;
    assert_eq!(
        scrape.get("selfheal_container_oom_kills_total", &web),
        Some(2.0)
    );
    // The old pod's per-pod series went with it; the new pod has its own.
    assert!(!scrape.has(
        "selfheal_container_crashlooping",
        &[("pod", "web-6c9f8-aaaaa")]
    ));
    assert!(scrape.has(
        "selfheal_container_crashlooping",
        &[("pod", "web-7d4b2-bbbbb")]
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_expires_after_the_retention() {
    let cluster = Cluster::start().await;
    cluster.create_pod("brief", None, json!({})).await;
    cluster.set_status("brief", running(0, true, None)).await;
    let daemon = Daemon::start(&cluster, "[metrics]\nretention = \"2s\"\n").await;
    let brief = [("workload", "brief")];
    daemon
        .wait_for("the pod", |s| {
            s.has("selfheal_container_oom_kills_total", &brief)
        })
        .await;
    cluster.delete_pod("brief").await;
    daemon
        .wait_for("the workload's series to expire", |s| {
            !s.has("selfheal_container_oom_kills_total", &brief)
                && !s.has("selfheal_container_memory_limit_bytes", &brief)
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cardinality_guard_caps_series_and_counts_the_dropped() {
    let cluster = Cluster::start().await;
    for i in 0..5 {
        let name = format!("pod-{i}");
        cluster.create_pod(&name, None, json!({})).await;
        cluster.set_status(&name, running(0, true, None)).await;
    }
    let daemon = Daemon::start(&cluster, "[metrics]\nmax_series_per_family = 3\n").await;
    let scrape = daemon
        .wait_for("the drops counted", |s| {
            s.sum(
                "selfheal_series_dropped_total",
                &[("family", "selfheal_container_oom_kills")],
            ) >= 2.0
        })
        .await;
    let series = scrape
        .text
        .lines()
        .filter(|line| line.starts_with("selfheal_container_oom_kills_total{"))
        .count();
    assert_eq!(series, 3, "{}", scrape.text);
    assert!(
        daemon.log().contains("new series are dropped"),
        "warned once"
    );
}
