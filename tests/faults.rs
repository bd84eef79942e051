//! End to end under API server faults: dropped watches, 410 relists and 500s in the
//! middle of the experiment's timeline neither lose nor double-count a restart; bad
//! input and an unreachable API server give clear errors.

mod common;

use std::time::Duration;

use common::*;
use jiff::SignedDuration;
use serde_json::json;

const POD: &str = "grade-submission-api";

fn labels(workload: &str) -> [(&str, &str); 2] {
    [("workload", workload), ("container", "api")]
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(400)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_faults_neither_lose_nor_double_count() {
    let cluster = Cluster::start().await;
    cluster.create_pod(POD, None, json!({})).await;
    cluster.set_status(POD, running(0, true, None)).await;
    // A crashlooping pod, so that it has a per-pod series to lose when it is deleted.
    cluster.create_pod("doomed", None, json!({})).await;
    let doomed_death = death("Error", 1, "d0", now_s() - SignedDuration::from_secs(5));
    cluster
        .set_status("doomed", crashloop(0, doomed_death))
        .await;
    let daemon = Daemon::start(&cluster, "[metrics]\nattribution_wait = \"1s\"\n").await;
    daemon
        .wait_for("the doomed pod's crashloop", |s| {
            s.get("selfheal_container_crashlooping", &[("pod", "doomed")]) == Some(1.0)
        })
        .await;
    let faults = cluster.lab.faults();

    // A dropped watch between the death and the restart: resumed from the last version.
    let d1 = death(
        "OOMKilled",
        137,
        "c0",
        now_s() - SignedDuration::from_secs(2),
    );
    faults.drop_watches();
    cluster
        .set_status(POD, terminated(0, d1.clone(), None))
        .await;
    settle().await;
    faults.drop_watches();
    cluster
        .set_status(POD, running(1, true, Some(d1.clone())))
        .await;
    settle().await;

    // History compacted while disconnected: the resume gets 410 and the daemon relists,
    // seeing the same pod again (nothing new) plus what changed.
    let d2 = death("OOMKilled", 137, "c1", now_s());
    faults.compact();
    faults.drop_watches();
    cluster
        .set_status(POD, terminated(1, d2.clone(), Some(d1)))
        .await;
    // During the gap: a pod is deleted, and a new one is created and dies.
    cluster.delete_pod("doomed").await;
    cluster.create_pod("newcomer", None, json!({})).await;
    let dn = death("OOMKilled", 137, "n0", now_s());
    cluster
        .set_status("newcomer", running(1, true, Some(dn)))
        .await;
    settle().await;

    // A burst of 500s while the watch restarts.
    faults.fail_next(4, 500);
    faults.drop_watches();
    cluster.set_status(POD, crashloop(1, d2.clone())).await;
    cluster
        .set_status(POD, running(2, true, Some(d2.clone())))
        .await;
    settle().await;
    faults.compact();
    faults.drop_watches();

    let api = labels(POD);
    let scrape = daemon
        .wait_for("all restarts", |s| {
            s.sum("selfheal_container_restarts_total", &api) >= 2.0
                && s.sum("selfheal_container_restarts_total", &labels("newcomer")) >= 1.0
                && !s.has("selfheal_container_crashlooping", &[("pod", "doomed")])
        })
        .await;
    assert!(
        scrape.sum("selfheal_watch_errors_total", &[]) > 0.0,
        "the faults must have hit the daemon:\n{}",
        scrape.text
    );
    assert!(
        scrape.get(
            "selfheal_watch_events_total",
            &[("resource", "pods"), ("type", "init")]
        ) >= Some(2.0),
        "a relist must have happened"
    );
    // Let every retry and relist play out, then count again: exact, not at least.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let scrape = daemon.scrape().await;
    let oom = |w| {
        [
            ("workload", w),
            ("container", "api"),
            ("reason", "OOMKilled"),
        ]
    };
    assert_eq!(
        scrape.get("selfheal_container_restarts_total", &oom(POD)),
        Some(2.0),
        "{}",
        scrape.text
    );
    assert_eq!(scrape.sum("selfheal_container_restarts_total", &api), 2.0);
    assert_eq!(
        scrape.get("selfheal_container_oom_kills_total", &api),
        Some(2.0)
    );
    assert_eq!(
        scrape.get("selfheal_container_restarts_total", &oom("newcomer")),
        Some(1.0)
    );
    assert_eq!(
        scrape.get("selfheal_container_oom_kills_total", &labels("newcomer")),
        Some(1.0)
    );
    assert_eq!(
        scrape.get(
            "selfheal_container_time_to_recover_seconds_count",
            &oom(POD)
        ),
        Some(2.0)
    );
    assert_eq!(
        scrape.get("selfheal_container_oom_kills_total", &labels("doomed")),
        Some(0.0)
    );
    assert_eq!(daemon.get("/readyz", None).await.map(|r| r.0), Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_api_server_is_said_plainly_and_keeps_readiness_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port(); // nothing listens there
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: gone\n  cluster: {{server: \"http://127.0.0.1:{port}\"}}\n\
             users:\n- name: u\n  user: {{}}\ncontexts:\n- name: gone\n  context: {{cluster: gone, user: u}}\ncurrent-context: gone\n"
        ),
    )
    .expect("kubeconfig");
    let mut daemon = Daemon::spawn(&kubeconfig, dir.path(), "");
    let wanted = format!("cannot reach the Kubernetes API server at http://127.0.0.1:{port}/");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !daemon.log().contains(&wanted) {
        assert!(
            std::time::Instant::now() < deadline,
            "no clear error; log:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(daemon.get("/healthz", None).await.map(|r| r.0), Some(200));
    assert_eq!(daemon.get("/readyz", None).await.map(|r| r.0), Some(503));
    // The message and the counter come from different tasks: wait for the counter.
    daemon
        .wait_for("a counted watch error", |s| {
            s.sum("selfheal_watch_errors_total", &[("resource", "pods")]) >= 1.0
        })
        .await;
    let (status, _) = daemon.terminate();
    assert!(status.success());
}

fn run_binary(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_selfheal-exporter"));
    command
        .args(args)
        .env_remove("SELFHEAL_CONFIG")
        .env_remove("KUBECONFIG");
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().expect("binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.code().unwrap_or(-1), stderr)
}

#[test]
fn bad_input_exits_2_with_one_line_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[metrics]\ntime_to_recover_buckets = [10, 5]\n").expect("write");
    let bad = bad.to_str().expect("utf-8");

    let (code, stderr) = run_binary(&["check-config", "--config", bad], &[]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("metrics.time_to_recover_buckets") && stderr.lines().count() == 1,
        "{stderr}"
    );

    let (code, stderr) = run_binary(&["run", "--config", bad], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("metrics.time_to_recover_buckets"),
        "{stderr}"
    );

    let (code, stderr) = run_binary(
        &["check-config"],
        &[("SELFHEAL_METRICS__RETENTION", "soon")],
    );
    assert_eq!(code, 2);
    assert!(stderr.contains("retention"), "{stderr}");

    let (code, stderr) = run_binary(&["--listen", "everywhere"], &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--listen"), "{stderr}");

    let (code, stderr) = run_binary(
        &[
            "--kubeconfig",
            "/nonexistent/kubeconfig",
            "--listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    assert_eq!(code, 2);
    assert!(stderr.contains("/nonexistent/kubeconfig"), "{stderr}");

    let (code, stderr) = run_binary(&["check-config"], &[("RUST_LOG", "x=notalevel")]);
    assert_eq!(code, 0, "check-config does not log: {stderr}");
    let (code, stderr) = run_binary(&["--listen", "127.0.0.1:0"], &[("RUST_LOG", "x=notalevel")]);
    assert_eq!(code, 2);
    assert!(stderr.contains("RUST_LOG"), "{stderr}");

    let (code, stderr) = run_binary(&["--shard", "first", "--listen", "127.0.0.1:0"], &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--shard"), "{stderr}");
    let (code, stderr) = run_binary(
        &[
            "--shard",
            "auto",
            "--total-shards",
            "2",
            "--listen",
            "127.0.0.1:0",
        ],
        &[("POD_NAME", "selfheal-exporter")],
    );
    assert_eq!(code, 2);
    assert!(stderr.contains("StatefulSet ordinal"), "{stderr}");
    let (code, stderr) = run_binary(
        &[
            "--shard",
            "2",
            "--total-shards",
            "2",
            "--listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    assert_eq!(code, 2);
    assert!(stderr.contains("sharding.shard"), "{stderr}");

    let good = dir.path().join("good.yaml");
    std::fs::write(&good, "watch:\n  namespaces: [grade-submission]\n").expect("write");
    let (code, stderr) = run_binary(
        &["check-config", "--config", good.to_str().expect("utf-8")],
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
}
