//! End to end: with `[events] enabled = true` an OOM kill becomes an events.k8s.io/v1
//! Event on its Pod (created once the container is ready again, its note carrying the
//! time to recover), and the next kill updates that Event's series instead of creating
//! another; an outage of a discovered Service becomes an Event on the Service naming the
//! restart behind it; with `[events]` off (the default) nothing is written.

mod common;

use std::time::{Duration, Instant};

use common::*;
use jiff::SignedDuration;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use serde_json::json;

/// The Events selfheal-exporter wrote about the object `pod` (a Pod or a Service).
async fn events_about(cluster: &Cluster, pod: &str) -> Vec<Event> {
    let api: Api<Event> = Api::namespaced(cluster.client.clone(), NS);
    api.list(&ListParams::default())
        .await
        .expect("events.k8s.io/v1 events listed")
        .items
        .into_iter()
        .filter(|event| {
            event.reporting_controller.as_deref() == Some("selfheal-exporter")
                && event.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(pod)
        })
        .collect()
}

/// Polls until `done` holds for the Events about `pod` (at most 20 s).
async fn wait_for_events(
    cluster: &Cluster,
    pod: &str,
    what: &str,
    done: impl Fn(&[Event]) -> bool,
) -> Vec<Event> {
    let start = Instant::now();
    loop {
        let events = events_about(cluster, pod).await;
        if done(&events) {
            return events;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{what}: not within 20 s; the Events: {events:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn series_count(event: &Event) -> i32 {
    event.series.as_ref().map_or(1, |series| series.count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oom_kill_is_an_event_on_the_pod_and_the_next_updates_its_series() {
    let cluster = Cluster::start().await;
    let uid = cluster.create_pod("oom", None, json!({})).await;
    cluster.set_status("oom", running(0, true, None)).await;
    let daemon = Daemon::start(&cluster, "[events]\nenabled = true\n").await;

    let killed = now_s();
    let first = death("OOMKilled", 137, "oom-0", killed);
    cluster
        .set_status("oom", running(1, true, Some(first)))
        .await;
    let events = wait_for_events(&cluster, "oom", "the OOM kill's Event", |events| {
        !events.is_empty()
    })
    .await;
    assert_eq!(events.len(), 1, "{events:#?}");
    let event = &events[0];
    assert_eq!(event.reason.as_deref(), Some("OOMKilled"));
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(event.action.as_deref(), Some("Restart"));
    assert!(event.event_time.is_some());
    assert!(event.reporting_instance.is_some());
    let regarding = event.regarding.as_ref().expect("regarding");
    assert_eq!(regarding.kind.as_deref(), Some("Pod"));
    assert_eq!(regarding.api_version.as_deref(), Some("v1"));
    assert_eq!(regarding.namespace.as_deref(), Some(NS));
    assert_eq!(regarding.uid.as_deref(), Some(uid.as_str()));
    let note = event.note.as_deref().unwrap_or_default();
    assert!(
        note.starts_with("Container api was OOM-killed (exit code 137, memory limit 48Mi)"),
        "{note}"
    );
    assert!(note.contains("; ready again "), "{note}");
    let first_note = note.to_owned();
    let name = event.metadata.name.clone().expect("named");

    // The second kill: the same Event, its series counting 2.
    let second = death(
        "OOMKilled",
        137,
        "oom-1",
        killed + SignedDuration::from_secs(2),
    );
    cluster
        .set_status("oom", running(2, true, Some(second)))
        .await;
    let events = wait_for_events(&cluster, "oom", "the series updated", |events| {
        events.iter().any(|event| series_count(event) == 2)
    })
    .await;
    assert_eq!(events.len(), 1, "one Event for the series: {events:#?}");
    let event = &events[0];
    assert_eq!(event.metadata.name.as_ref(), Some(&name));
    let series = event.series.as_ref().expect("series");
    assert_eq!(series.count, 2);
    // The API server refuses any other change of an events.k8s.io/v1 Event (the lab's
    // too, as a real one does): the note is the first kill's.
    assert_eq!(event.note.as_deref(), Some(first_note.as_str()));

    let scrape = daemon
        .wait_for("the writes counted", |s| {
            s.get("selfheal_events_written_total", &[]) >= Some(2.0)
        })
        .await;
    assert_eq!(
        scrape.get("selfheal_event_write_errors_total", &[]),
        Some(0.0)
    );
    assert_eq!(scrape.get("selfheal_events_dropped_total", &[]), Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_an_event_on_the_service_naming_the_restart_behind_it() {
    let cluster = Cluster::start().await;
    cluster
        .create_pod("api-0", None, json!({"app": "api"}))
        .await;
    cluster.set_status("api-0", running(0, true, None)).await;
    let mut target = Flaky::start().await;
    let service = cluster
        .create(
            Kind::Service,
            json!({
                "metadata": {"name": "api", "annotations": {
                    "selfheal.io/probe": "true", "selfheal.io/probe-interval": "100ms"}},
                "spec": {"type": "NodePort", "selector": {"app": "api"},
                         "ports": [{"name": "http", "port": 3000, "targetPort": 3000,
                                    "nodePort": target.port}]}
            }),
        )
        .await;
    let service_uid = service["metadata"]["uid"].as_str().expect("uid").to_owned();
    let config = "[probes]\nservice_address = \"node_port\"\n[events]\nenabled = true\n";
    let daemon = Daemon::start(&cluster, config).await;
    let api = [("target", "grade-submission/api")];
    daemon
        .wait_for("the Service probed and up", |s| {
            s.get("selfheal_probe_up", &api) == Some(1.0)
        })
        .await;

    target.down().await;
    let killed = now_s();
    let d = death("OOMKilled", 137, "api-c0", killed);
    cluster
        .set_status("api-0", terminated(0, d.clone(), None))
        .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    cluster.set_status("api-0", running(1, true, Some(d))).await;
    target.up().await;

    let events = wait_for_events(&cluster, "api", "the outage's Event", |events| {
        !events.is_empty()
    })
    .await;
    assert_eq!(events.len(), 1, "{events:#?}");
    let event = &events[0];
    assert_eq!(event.reason.as_deref(), Some("ProbeOutage"));
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    let regarding = event.regarding.as_ref().expect("regarding");
    assert_eq!(regarding.kind.as_deref(), Some("Service"));
    assert_eq!(regarding.uid.as_deref(), Some(service_uid.as_str()));
    let note = event.note.as_deref().unwrap_or_default();
    assert!(
        note.starts_with("Probe target grade-submission/api was down"),
        "{note}"
    );
    assert!(
        note.contains(&format!(
            "the OOMKilled restart of container api in pod api-0 (killed at {})",
            rfc3339(killed)
        )),
        "{note}"
    );
    // The Pod's own Event is there too.
    let on_pod = events_about(&cluster, "api-0").await;
    assert_eq!(on_pod.len(), 1, "{on_pod:#?}");
    assert_eq!(on_pod[0].reason.as_deref(), Some("OOMKilled"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_leader_election_only_the_leader_writes() {
    let cluster = Cluster::start().await;
    cluster.create_pod("led", None, json!({})).await;
    cluster.set_status("led", running(0, true, None)).await;
    let config = "[probes]\ndiscovery = false\n\
                  [leader_election]\nenabled = true\nlease_duration = \"3s\"\ngrace = \"1s\"\n\
                  retry_period = \"200ms\"\n[events]\nenabled = true\n";
    let a = Daemon::start_with_env(
        &cluster,
        config,
        &[("POD_NAMESPACE", NS), ("POD_NAME", "replica-a")],
    )
    .await;
    let b = Daemon::start_with_env(
        &cluster,
        config,
        &[("POD_NAMESPACE", NS), ("POD_NAME", "replica-b")],
    )
    .await;
    let start = Instant::now();
    let (leader, standby, leader_name) = loop {
        let (sa, sb) = (a.scrape().await, b.scrape().await);
        match (
            sa.get("selfheal_leader", &[]),
            sb.get("selfheal_leader", &[]),
        ) {
            (Some(1.0), _) => break (&a, &b, "replica-a"),
            (_, Some(1.0)) => break (&b, &a, "replica-b"),
            _ => {}
        }
        assert!(start.elapsed() < Duration::from_secs(20), "nobody leads");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Its first pod list is the baseline: kill after it.
    leader
        .wait_for("the leader's pods listed", |s| {
            s.get(
                "selfheal_watch_events_total",
                &[("resource", "pods"), ("type", "init_done")],
            ) >= Some(1.0)
        })
        .await;

    let d = death("OOMKilled", 137, "led-0", now_s());
    cluster.set_status("led", running(1, true, Some(d))).await;
    let events = wait_for_events(&cluster, "led", "the leader's Event", |events| {
        !events.is_empty()
    })
    .await;
    leader
        .wait_for("the leader's writes counted", |s| {
            s.get("selfheal_events_written_total", &[]) >= Some(1.0)
        })
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let events_now = events_about(&cluster, "led").await;
    assert_eq!(
        events_now.len(),
        1,
        "one Event, by one replica: {events_now:#?}"
    );
    assert_eq!(
        events[0].reporting_instance.as_deref(),
        Some(leader_name),
        "written by the leader"
    );
    assert_eq!(
        standby
            .scrape()
            .await
            .get("selfheal_events_written_total", &[]),
        Some(0.0),
        "the standby writes nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_events_enabled_nothing_is_written() {
    let cluster = Cluster::start().await;
    cluster.create_pod("quiet", None, json!({})).await;
    cluster.set_status("quiet", running(0, true, None)).await;
    let daemon = Daemon::start(&cluster, "").await;

    let d = death("OOMKilled", 137, "quiet-0", now_s());
    cluster.set_status("quiet", running(1, true, Some(d))).await;
    let labels = [("workload", "quiet"), ("container", "api")];
    let scrape = daemon
        .wait_for("the OOM kill counted", |s| {
            s.get("selfheal_container_oom_kills_total", &labels) == Some(1.0)
        })
        .await;
    assert!(
        !scrape.has("selfheal_events_written_total", &[]),
        "no Event writer without [events]"
    );
    // Well past the time a write takes when enabled (above: within a second).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let api: Api<Event> = Api::namespaced(cluster.client.clone(), NS);
    let written = api
        .list(&ListParams::default())
        .await
        .expect("listed")
        .items;
    assert!(written.is_empty(), "{written:#?}");
}
