//! The experiment (`shared/grade-submission-experiment.md`) on the real cluster: the bare
//! pod `grade-submission-api` of `lab/manifests/grade-submission.yaml` under its 48Mi
//! limit, behind its NodePort Service 31000 (the real kube-proxy, on the node IP), loaded
//! by 80 virtual users until the kernel OOM-kills it inside containerd. The real kubelet
//! reports OOMKilled/137; the daemon on the host counts the OOM kills 1, then 2, its
//! OOMKilled restarts equal `restartCount`, it observes the time to recover, and the
//! outage its probe sees through the NodePort is attributed to OOMKilled.
//!
//! One deviation from the manifest, so that the test takes one minute instead of five:
//! the grade API keeps 16 KiB per stored grade instead of 2 KiB (its
//! `GRADE_API_BYTES_PER_GRADE`), because the real kubelet enforces the pod's 128m CPU
//! limit and the API stores only ~160 grades a second under it. `selfheal-lab demo
//! --cluster real` runs the manifest unchanged.
//!
//! Needs root and the binaries of `lab/upstream/build.sh`; fails (never skips) without
//! them; tears the cluster down even when it fails.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use selfheal_lab::cluster::pki::NODE_IP;
use selfheal_lab::load::{LoadConfig, run_load};
use selfheal_lab::testkit::real_cluster::{
    HostExporter, TestCluster, assert_root, get, upstream_bin,
};

fn lab() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_selfheal-lab"))
}

/// The experiment's manifests with more ballast per grade (see the module doc).
fn manifests() -> String {
    let mut documents: Vec<Value> =
        serde_saphyr::from_multiple(selfheal_lab::demo::MANIFESTS).expect("the manifests parse");
    for document in &mut documents {
        if document["kind"] == "Pod" {
            document["spec"]["containers"][0]["env"] = serde_json::json!([
                {"name": "GRADE_API_BYTES_PER_GRADE", "value": "16384"}
            ]);
        }
    }
    serde_json::json!({"apiVersion": "v1", "kind": "List", "items": documents}).to_string()
}

#[test]
fn the_experiment_on_the_real_cluster() {
    assert_root();
    let cluster = TestCluster::up(lab(), upstream_bin());
    cluster.kubectl(&["apply", "-f", "-"], Some(&manifests()));
    let exporter = HostExporter::start(
        lab(),
        cluster.kubeconfig(),
        "experiment-exporter",
        None,
        &format!(
            "[watch]\nnamespaces = [\"grade-submission\"]\n[probes]\n\
             service_address = \"node_port\"\nnode_address = \"{NODE_IP}\"\n\
             [metrics]\nattribution_wait = \"2s\"\n"
        ),
    );
    let node_port: SocketAddr = format!("{NODE_IP}:31000").parse().expect("NodePort");
    let deadline = Instant::now() + Duration::from_secs(120);
    while get(node_port, "/healthz").map(|(status, _)| status) != Some(200) {
        assert!(
            Instant::now() < deadline,
            "the grade API does not answer through kube-proxy's NodePort {node_port}: {:#}",
            cluster.pod("grade-submission", "grade-submission-api")["status"]
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // 80 users as in the experiment, until the kubelet has restarted the API twice.
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let mut load = LoadConfig::new(
        format!("http://{node_port}/grade"),
        80,
        Duration::from_secs(90),
    );
    load.think = Duration::from_millis(100);
    let report = runtime
        .block_on(run_load(load, |_| {}))
        .expect("the load runs");
    let container = r#"container="grade-submission-api""#;
    let status = || {
        cluster.pod("grade-submission", "grade-submission-api")["status"]["containerStatuses"][0]
            .clone()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let (restarts, oom_restarts, oom_kills) = loop {
        let restarts = status()["restartCount"].as_f64().unwrap_or(0.0);
        let oom_restarts = exporter.sum(
            "selfheal_container_restarts_total",
            &[container, r#"reason="OOMKilled""#],
        );
        let all = exporter.sum("selfheal_container_restarts_total", &[container]);
        let oom_kills = exporter.sum("selfheal_container_oom_kills_total", &[container]);
        if restarts >= 2.0 && oom_restarts == restarts && all == restarts && oom_kills >= restarts {
            break (restarts, oom_restarts, oom_kills);
        }
        assert!(
            Instant::now() < deadline,
            "kubelet restartCount {restarts}; the daemon: {oom_restarts} OOMKilled restarts of \
             {all}, {oom_kills} OOM kills; the users: {} requests, {} failed; status {:#}\n\
             the daemon's log:\n{}",
            report.requests,
            report.failures,
            status(),
            exporter.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let last = &status()["lastState"]["terminated"];
    assert_eq!(last["reason"], "OOMKilled", "{last:#}");
    assert_eq!(last["exitCode"], 137, "{last:#}");

    // Time to recover observed; the client-visible outage attributed to the OOM kill.
    let recoveries = exporter.sum(
        "selfheal_container_time_to_recover_seconds_count",
        &[container],
    );
    let recovery_sum = exporter.sum(
        "selfheal_container_time_to_recover_seconds_sum",
        &[container],
    );
    assert!(recoveries >= 1.0, "no time to recover observed");
    let outages_oom = exporter.sum(
        "selfheal_probe_outages_total",
        &[r#"service="grade-submission-api""#, r#"cause="OOMKilled""#],
    );
    let outages = exporter.sum(
        "selfheal_probe_outages_total",
        &[r#"service="grade-submission-api""#],
    );
    let probe_downtime = exporter.sum(
        "selfheal_probe_downtime_seconds_total",
        &[r#"service="grade-submission-api""#],
    );
    eprintln!(
        "kubelet: restartCount {restarts}, last OOMKilled/137; the daemon: {oom_restarts} \
         OOMKilled restarts, {oom_kills} OOM kills, {recoveries} recoveries (mean {:.1} s), \
         {outages_oom} of {outages} probe outages attributed to OOMKilled, {probe_downtime:.2} s \
         probe downtime; the users: {} requests, {} failed, {:.2} s in {} failure windows",
        recovery_sum / recoveries,
        report.requests,
        report.failures,
        report.downtime().as_secs_f64(),
        report.outage_windows.len()
    );
    assert!(
        outages_oom >= 1.0,
        "no probe outage attributed to OOMKilled; the daemon's log:\n{}",
        exporter.log()
    );
    assert!(
        !report.outage_windows.is_empty(),
        "the users saw no failure: the OOM kills did not take the API down?"
    );
    drop(exporter);
    cluster.down_and_check();
}
