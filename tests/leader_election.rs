//! Leader election (`[leader_election]`), active/passive: of several replicas only
//! the holder of the Lease watches, probes and exports workload and probe series; the
//! others stand by, live and ready, with nothing but self-metrics. Killing the holder
//! moves the whole exporter to a standby within the lease duration (its first pod list is
//! a baseline; it counts what happens after); stopping it (SIGTERM) hands over at once
//! through the Lease's release; a holder that loses the Lease (taken from it, or not
//! renewed in time) stops and exits non-zero, as Kubernetes would then restart it as a
//! standby. Plus the start-up errors of a bad setup.
//!
//! Timing bounds here are generous on purpose (several lease durations): the measured
//! hand-over times are printed, not asserted tightly.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

const LEASE: &str = "selfheal-exporter-prober";
/// The lease duration of replicas A and C.
const SHORT_LEASE: Duration = Duration::from_secs(3);
/// Bound on a hand-over or an exit (the measured times are printed).
const GENEROUS: Duration = Duration::from_secs(30);
/// The observed pod; its only container is `api`.
const POD: &str = "api-0";

/// A replica's config: one static target probed every 100 ms, leader election with
/// `lease` (namespace and identity from POD_NAMESPACE / POD_NAME).
fn config(target_port: u16, lease: &str) -> String {
    format!(
        "[probes]\ndiscovery = false\n\
         [leader_election]\nenabled = true\n{lease}\n\
         [[probes.targets]]\nname = \"api\"\nurl = \"http://127.0.0.1:{target_port}/\"\ninterval = \"100ms\"\n"
    )
}

const SHORT: &str = "lease_duration = \"3s\"\ngrace = \"1s\"\nretry_period = \"200ms\"";
/// B holds its lease for 20 s and renews 5 s before the end: a replica taking over from
/// B before 5 s have passed can only have been handed the Lease (released), not waited
/// for it to expire.
const LONG: &str = "lease_duration = \"20s\"\ngrace = \"5s\"\nretry_period = \"1s\"";

fn pod(name: &'static str) -> [(&'static str, &'static str); 2] {
    [("POD_NAMESPACE", NS), ("POD_NAME", name)]
}

fn leader(scrape: &Scrape) -> Option<f64> {
    scrape.get("selfheal_leader", &[])
}

fn successes(scrape: &Scrape) -> f64 {
    scrape.sum(
        "selfheal_probe_requests_total",
        &[("target", "api"), ("result", "success")],
    )
}

fn restarts(scrape: &Scrape, reason: &str) -> Option<f64> {
    scrape.get(
        "selfheal_container_restarts_total",
        &[("workload", POD), ("container", "api"), ("reason", reason)],
    )
}

fn oom_kills(scrape: &Scrape) -> Option<f64> {
    scrape.get(
        "selfheal_container_oom_kills_total",
        &[("workload", POD), ("container", "api")],
    )
}

/// Samples of workload or probe series: every such series names a workload or a target.
fn exported_series(scrape: &Scrape) -> Vec<&str> {
    scrape
        .text
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| line.contains("workload=\"") || line.contains("target=\""))
        .collect()
}

/// The kubelet's report of the `n`th restart of the pod's container: it died with
/// `reason`/`exit_code` just now and runs, ready, again.
async fn restart(cluster: &Cluster, n: u32, reason: &str, exit_code: i32) {
    let died = death(reason, exit_code, &format!("api-{n}"), now_s());
    cluster.set_status(POD, running(n, true, Some(died))).await;
}

async fn lease(cluster: &Cluster) -> Value {
    cluster.get(Kind::Lease, LEASE).await
}

async fn holder(cluster: &Cluster) -> Option<String> {
    lease(cluster).await["spec"]["holderIdentity"]
        .as_str()
        .map(str::to_owned)
}

/// Scrapes `daemon` until it leads and probes (gauge 1, successful probes), then waits
/// until its watches have listed (ready); returns the time until it probed.
async fn wait_until_leading(daemon: &Daemon, what: &str, bound: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let scrape = daemon.scrape().await;
        if leader(&scrape) == Some(1.0) && successes(&scrape) > 0.0 {
            let took = started.elapsed();
            // The watches registered for readiness before the prober started: ready now
            // means they have listed (the baseline).
            daemon.wait_ready().await;
            return took;
        }
        if started.elapsed() > bound {
            panic!(
                "{what}: not leading within {bound:?}; last scrape:\n{}\nlog:\n{}",
                scrape.text,
                daemon.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Over `window`, the leader keeps probing and exports the pod's series; the standby has
/// no workload, probe or watch series at all, and is live and ready.
async fn exactly_one_exports(leading: &Daemon, standby: &Daemon, window: Duration) {
    let before = successes(&leading.scrape().await);
    tokio::time::sleep(window).await;
    let (lead, stand) = (leading.scrape().await, standby.scrape().await);
    assert_eq!(leader(&lead), Some(1.0), "{}", lead.text);
    assert!(
        successes(&lead) > before,
        "the leader keeps probing: {before} then {}",
        successes(&lead)
    );
    assert!(
        oom_kills(&lead).is_some(),
        "the leader exports the pod's series:\n{}",
        lead.text
    );
    assert_eq!(leader(&stand), Some(0.0), "{}", stand.text);
    assert_eq!(
        exported_series(&stand),
        Vec::<&str>::new(),
        "the standby exports no workload or probe series"
    );
    assert!(
        !stand.has("selfheal_watch_events_total", &[]),
        "the standby watches nothing:\n{}",
        stand.text
    );
    assert_eq!(stand.get("selfheal_build_info", &[]), Some(1.0));
    for path in ["/healthz", "/readyz"] {
        assert_eq!(
            standby.get(path, None).await.map(|(status, _)| status),
            Some(200),
            "the standby answers {path}"
        );
    }
    assert!(
        standby.log().contains("standing by"),
        "the standby says so:\n{}",
        standby.log()
    );
}

/// No outage and no downtime: the time nobody probed is a gap, not downtime.
fn no_downtime(scrape: &Scrape, what: &str) {
    assert_eq!(
        scrape.sum(
            "selfheal_probe_downtime_seconds_total",
            &[("target", "api")]
        ),
        0.0,
        "{what}:\n{}",
        scrape.text
    );
    assert!(
        !scrape.has("selfheal_probe_outages_total", &[("target", "api")]),
        "{what}:\n{}",
        scrape.text
    );
    assert_eq!(
        scrape.get("selfheal_probe_up", &[("target", "api")]),
        Some(1.0),
        "{what}"
    );
}

fn micro_time_now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_exports_and_the_exporter_moves_when_it_dies_stops_or_loses_the_lease() {
    let cluster = Cluster::start().await;
    let target = Flaky::start().await;
    cluster.create_pod(POD, None, json!({})).await;
    cluster.set_status(POD, running(0, true, None)).await;

    // A starts first and takes the Lease; B stands by.
    let mut a =
        Daemon::start_with_env(&cluster, &config(target.port, SHORT), &pod("replica-a")).await;
    wait_until_leading(&a, "A, alone", GENEROUS).await;
    let mut b =
        Daemon::start_with_env(&cluster, &config(target.port, LONG), &pod("replica-b")).await;
    restart(&cluster, 1, "OOMKilled", 137).await;
    a.wait_for("A to count the OOMKill", |s| {
        restarts(s, "OOMKilled") == Some(1.0) && oom_kills(s) == Some(1.0)
    })
    .await;
    exactly_one_exports(&a, &b, Duration::from_millis(1500)).await;
    assert_eq!(holder(&cluster).await.as_deref(), Some("replica-a"));
    let managed = &lease(&cluster).await["metadata"]["managedFields"];
    assert!(
        managed.as_array().is_some_and(|m| m
            .iter()
            .any(|e| e["manager"] == "kube-lease-manager-replica-a")),
        "the Lease was locked by server-side apply: {managed}"
    );

    // SIGKILL A: it releases nothing; B takes over once A's lease has expired, lists the
    // pods (a baseline: the restart A counted is not counted again) and counts from there.
    a.kill();
    let killed_handover = wait_until_leading(&b, "B after A's SIGKILL", GENEROUS).await;
    eprintln!(
        "hand-over after SIGKILL of the holder: {:.2} s until the new leader probed (lease \
         duration {SHORT_LEASE:?})",
        killed_handover.as_secs_f64(),
    );
    assert_eq!(holder(&cluster).await.as_deref(), Some("replica-b"));
    let baseline = b.scrape().await;
    assert_eq!(oom_kills(&baseline), Some(0.0), "{}", baseline.text);
    assert_eq!(restarts(&baseline, "OOMKilled"), None, "{}", baseline.text);
    restart(&cluster, 2, "Error", 1).await;
    b.wait_for("B to count the restart after taking over", |s| {
        restarts(s, "Error") == Some(1.0)
    })
    .await;
    no_downtime(&b.scrape().await, "B after taking over");

    // C joins as B's standby; SIGTERM B: it releases the Lease and C takes over at once,
    // long before B's 20 s lease (renewed 5 s before its end) could have expired.
    let mut c =
        Daemon::start_with_env(&cluster, &config(target.port, SHORT), &pod("replica-c")).await;
    exactly_one_exports(&b, &c, Duration::from_millis(1500)).await;
    let stopping = Instant::now();
    let (status, exit_after) = b.terminate();
    assert!(
        status.success(),
        "B exits 0 on SIGTERM: {status:?}\n{}",
        b.log()
    );
    assert!(
        exit_after < Duration::from_secs(5),
        "B exits within 5 s: {exit_after:?}"
    );
    assert!(
        b.log().contains("released the Lease"),
        "B released the Lease:\n{}",
        b.log()
    );
    let from_exit = wait_until_leading(&c, "C after B's SIGTERM", GENEROUS).await;
    let released_handover = stopping.elapsed();
    eprintln!(
        "hand-over after SIGTERM of the holder: {:.2} s from the signal until the new leader \
         had listed ({:.2} s after B exited in {:.2} s)",
        released_handover.as_secs_f64(),
        from_exit.as_secs_f64(),
        exit_after.as_secs_f64()
    );
    assert!(
        released_hand_over_is_a_release(released_handover),
        "C took over {released_handover:?} after B's SIGTERM: B's lease, renewed 5 s before \
         its end, cannot have expired that soon, so it was released"
    );
    assert_eq!(holder(&cluster).await.as_deref(), Some("replica-c"));
    restart(&cluster, 3, "OOMKilled", 137).await;
    let counted = c
        .wait_for("C to count the OOMKill after taking over", |s| {
            restarts(s, "OOMKilled") == Some(1.0) && oom_kills(s) == Some(1.0)
        })
        .await;
    assert_eq!(restarts(&counted, "Error"), None, "fresh counters");
    no_downtime(&counted, "C after the hand-over");

    // Someone else takes the Lease: C stops at once and exits non-zero (Kubernetes then
    // restarts it as a standby), releasing nothing.
    cluster
        .merge_patch(
            Kind::Lease,
            LEASE,
            json!({"spec": {"holderIdentity": "intruder",
                "renewTime": micro_time_now(), "leaseDurationSeconds": 60}}),
        )
        .await;
    let (status, took) = c
        .wait_exit(GENEROUS)
        .await
        .unwrap_or_else(|| panic!("C still runs after losing the Lease:\n{}", c.log()));
    eprintln!(
        "exit after the Lease was taken from the holder: {:.2} s",
        took.as_secs_f64()
    );
    assert_eq!(status.code(), Some(1), "C exits 1: {status:?}\n{}", c.log());
    let log = c.log();
    assert!(
        log.contains("lost the Lease") && !log.contains("released the Lease"),
        "{log}"
    );
    assert_eq!(holder(&cluster).await.as_deref(), Some("intruder"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_that_cannot_renew_exits_and_comes_back_as_a_standby() {
    let cluster = Cluster::start().await;
    let target = Flaky::start().await;
    let mut daemon =
        Daemon::start_with_env(&cluster, &config(target.port, SHORT), &pod("replica-a")).await;
    wait_until_leading(&daemon, "the only replica", GENEROUS).await;

    // The API server fails every request: no renewal gets through. The holder stops
    // leading half of grace before its lease could have passed to another replica, then
    // stops and exits non-zero.
    cluster.lab.faults().fail_next(u64::MAX, 500);
    let (status, took) = daemon
        .wait_exit(GENEROUS)
        .await
        .unwrap_or_else(|| panic!("still runs:\n{}", daemon.log()));
    eprintln!(
        "exited {:.2} s after the API server began failing (lease duration {SHORT_LEASE:?})",
        took.as_secs_f64()
    );
    assert_eq!(status.code(), Some(1), "{status:?}\n{}", daemon.log());
    let log = daemon.log();
    assert!(
        log.contains("could not be renewed in time") && log.contains("lost the Lease"),
        "{log}"
    );
    assert!(took < 3 * SHORT_LEASE, "{took:?}");

    // The API server is back; restarted (as Kubernetes does), the replica takes the Lease
    // again and exports.
    cluster.lab.faults().clear();
    let again =
        Daemon::start_with_env(&cluster, &config(target.port, SHORT), &pod("replica-a")).await;
    wait_until_leading(&again, "the restarted replica", GENEROUS).await;
    no_downtime(&again.scrape().await, "after the restart");
}

/// B renews its 20 s lease 5 s before the end, so it always has at least 5 s left: a
/// take-over sooner than that went through the release.
fn released_hand_over_is_a_release(took: Duration) -> bool {
    took < Duration::from_secs(5)
}

/// `selfheal-exporter <args…> --config FILE` with exactly `env` of the variables the
/// leader election reads; returns (exit code, stdout, stderr).
fn run_binary(args: &[&str], config: &str, env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.toml");
    std::fs::write(&path, config).expect("config");
    let mut command = Command::new(env!("CARGO_BIN_EXE_selfheal-exporter"));
    command
        .args(args)
        .arg("--config")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, _) in std::env::vars() {
        if key.starts_with("SELFHEAL_")
            || ["POD_NAME", "POD_NAMESPACE", "HOSTNAME"].contains(&key.as_str())
        {
            command.env_remove(key);
        }
    }
    command.envs(env.iter().copied());
    let output = command.output().expect("runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_leader_election_without_namespace_or_identity_or_with_sharding_does_not_start() {
    let enabled = "[leader_election]\nenabled = true\n";
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [&'a str]);
    let cases: [Case; 3] = [
        (
            enabled,
            &[("POD_NAME", "p")],
            &["leader_election.namespace", "POD_NAMESPACE"],
        ),
        (
            enabled,
            &[("POD_NAMESPACE", "ns")],
            &["leader_election.identity", "POD_NAME"],
        ),
        (
            "[sharding]\ntotal_shards = 2\n[leader_election]\nenabled = true\nnamespace = \"ns\"\nidentity = \"p\"\n",
            &[],
            &["leader_election.enabled", "sharding.total_shards"],
        ),
    ];
    for (config, env, expected) in cases {
        for args in [
            &["check-config"][..],
            &["run", "--kubeconfig", "/nonexistent/kubeconfig"][..],
        ] {
            let (code, _, stderr) = run_binary(args, config, env);
            assert_eq!(code, Some(2), "{args:?} with {config:?} {env:?}: {stderr}");
            for word in expected {
                assert!(stderr.contains(word), "{args:?}: {stderr}");
            }
            assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        }
    }
    // The same, set up right: check-config prints what it resolved.
    let (code, effective, stderr) = run_binary(
        &["check-config"],
        enabled,
        &[("POD_NAMESPACE", "ns"), ("HOSTNAME", "host-1")],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        effective.contains("namespace = \"ns\"") && effective.contains("identity = \"host-1\""),
        "{effective}"
    );
}
