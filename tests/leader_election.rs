//! Leader-elected probing (`[probes.leader_election]`): of several replicas only the
//! holder of the Lease probes; killing it moves probing to another within the lease
//! duration, stopping it (SIGTERM) hands over at once through the Lease's release, and the
//! gap shows as a gap, never as downtime. Plus the start-up errors of a bad setup.
//!
//! Timing bounds here are generous on purpose (several lease durations): the measured
//! hand-over times are printed, not asserted tightly.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use selfheal_lab::apiserver::{LEASES, Patch};
use serde_json::{Value, json};

const LEASE: &str = "selfheal-exporter-prober";
/// The lease duration of replicas A and C.
const SHORT_LEASE: Duration = Duration::from_secs(3);

/// A replica's config: one static target probed every 100 ms, leader election with
/// `lease` (namespace and identity from POD_NAMESPACE / POD_NAME).
fn config(target_port: u16, lease: &str) -> String {
    format!(
        "[probes]\ndiscovery = false\n\
         [probes.leader_election]\nenabled = true\n{lease}\n\
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
    scrape.get("selfheal_prober_leader", &[])
}

fn successes(scrape: &Scrape) -> f64 {
    scrape.sum(
        "selfheal_probe_requests_total",
        &[("target", "api"), ("result", "success")],
    )
}

fn probes_anything(scrape: &Scrape) -> bool {
    scrape.has("selfheal_probe_requests_total", &[("target", "api")])
        || scrape.has("selfheal_probe_up", &[("target", "api")])
}

fn lease(cluster: &Cluster) -> Value {
    cluster
        .lab
        .store()
        .get(&LEASES, NS, LEASE)
        .expect("the Lease exists")
}

fn holder(cluster: &Cluster) -> Option<String> {
    lease(cluster)["spec"]["holderIdentity"]
        .as_str()
        .map(str::to_owned)
}

/// Scrapes `daemon` until it probes as the leader (gauge 1, successful probes), returning
/// the time that took.
async fn wait_until_leading(daemon: &Daemon, what: &str, bound: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let scrape = daemon.scrape().await;
        if leader(&scrape) == Some(1.0) && successes(&scrape) > 0.0 {
            return started.elapsed();
        }
        if started.elapsed() > bound {
            panic!(
                "{what}: not probing as the leader within {bound:?}; last scrape:\n{}\nlog:\n{}",
                scrape.text,
                daemon.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Over `window`, the leader's successful probes advance and the standby has no probe
/// series at all.
async fn exactly_one_probes(leading: &Daemon, standby: &Daemon, window: Duration) {
    let before = successes(&leading.scrape().await);
    tokio::time::sleep(window).await;
    let (lead, stand) = (leading.scrape().await, standby.scrape().await);
    assert_eq!(leader(&lead), Some(1.0), "{}", lead.text);
    assert_eq!(leader(&stand), Some(0.0), "{}", stand.text);
    assert!(
        successes(&lead) > before,
        "the leader keeps probing: {before} then {}",
        successes(&lead)
    );
    assert!(
        !probes_anything(&stand),
        "the standby probes nothing:\n{}",
        stand.text
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
async fn one_replica_probes_and_probing_moves_when_it_dies_or_stops() {
    let cluster = Cluster::start().await;
    let target = Flaky::start().await;

    // A starts first and takes the Lease; B is its standby.
    let mut a =
        Daemon::start_with_env(&cluster, &config(target.port, SHORT), &pod("replica-a")).await;
    wait_until_leading(&a, "A, alone", Duration::from_secs(30)).await;
    let mut b =
        Daemon::start_with_env(&cluster, &config(target.port, LONG), &pod("replica-b")).await;
    exactly_one_probes(&a, &b, Duration::from_millis(1500)).await;
    assert_eq!(holder(&cluster).as_deref(), Some("replica-a"));
    let managed = &lease(&cluster)["metadata"]["managedFields"];
    assert!(
        managed.as_array().is_some_and(|m| m
            .iter()
            .any(|e| e["manager"] == "kube-lease-manager-replica-a")),
        "the Lease was locked by server-side apply: {managed}"
    );

    // SIGKILL A: it releases nothing; B takes over once A's lease has expired.
    a.kill();
    let killed_handover = wait_until_leading(&b, "B after A's SIGKILL", 3 * SHORT_LEASE).await;
    eprintln!(
        "hand-over after SIGKILL of the holder: {:.2} s (lease duration {:?})",
        killed_handover.as_secs_f64(),
        SHORT_LEASE
    );
    assert_eq!(holder(&cluster).as_deref(), Some("replica-b"));
    no_downtime(&b.scrape().await, "B after taking over");

    // Someone else takes the Lease: B stops probing and drops its probe series at once;
    // when the Lease is free again B takes it back and starts over with fresh series.
    let store = cluster.lab.store();
    store
        .patch(
            &LEASES,
            NS,
            LEASE,
            &Patch::Merge(json!({"spec": {"holderIdentity": "intruder",
                "renewTime": micro_time_now(), "leaseDurationSeconds": 60}})),
        )
        .expect("steal the Lease");
    let lost = b
        .wait_for("B to step down", |s| {
            leader(s) == Some(0.0) && !probes_anything(s)
        })
        .await;
    assert_eq!(
        lost.get(
            "selfheal_prober_leader_transitions_total",
            &[("transition", "lost")]
        ),
        Some(1.0),
        "{}",
        lost.text
    );
    store
        .patch(
            &LEASES,
            NS,
            LEASE,
            &Patch::Merge(json!({"spec": {"holderIdentity": null, "renewTime": null,
                "acquireTime": null, "leaseDurationSeconds": null}})),
        )
        .expect("free the Lease");
    wait_until_leading(&b, "B once the Lease is free", 3 * SHORT_LEASE).await;
    let again = b.scrape().await;
    no_downtime(&again, "B after taking the Lease back");
    assert_eq!(
        again.get(
            "selfheal_prober_leader_transitions_total",
            &[("transition", "acquired")]
        ),
        Some(2.0)
    );

    // C joins as B's standby; SIGTERM B: it releases the Lease and C takes over at once,
    // long before B's 20 s lease (renewed 5 s before its end) could have expired.
    let c = Daemon::start_with_env(&cluster, &config(target.port, SHORT), &pod("replica-c")).await;
    exactly_one_probes(&b, &c, Duration::from_millis(1500)).await;
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
        b.log().contains("released the probe Lease"),
        "B released the Lease:\n{}",
        b.log()
    );
    let from_exit = wait_until_leading(&c, "C after B's SIGTERM", 3 * SHORT_LEASE).await;
    let released_handover = stopping.elapsed();
    eprintln!(
        "hand-over after SIGTERM of the holder: {:.2} s from the signal ({:.2} s after B exited in {:.2} s)",
        released_handover.as_secs_f64(),
        from_exit.as_secs_f64(),
        exit_after.as_secs_f64()
    );
    assert!(
        released_hand_over_is_a_release(released_handover),
        "C took over {released_handover:?} after B's SIGTERM: B's lease, renewed 5 s before \
         its end, cannot have expired that soon, so it was released"
    );
    assert_eq!(holder(&cluster).as_deref(), Some("replica-c"));
    no_downtime(&c.scrape().await, "C after the hand-over");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_that_cannot_renew_stops_probing_before_its_lease_expires() {
    let cluster = Cluster::start().await;
    let target = Flaky::start().await;
    let daemon =
        Daemon::start_with_env(&cluster, &config(target.port, SHORT), &pod("replica-a")).await;
    wait_until_leading(&daemon, "the only replica", Duration::from_secs(30)).await;

    // The API server fails every request: no renewal gets through. The holder stops
    // probing (and drops its probe series) before its lease could have passed to
    // another replica, counts the failures, and keeps retrying.
    cluster.lab.faults().fail_next(u64::MAX, 500);
    let failing = Instant::now();
    let stopped = daemon
        .wait_for("the holder to stop probing", |s| {
            leader(s) == Some(0.0) && !probes_anything(s)
        })
        .await;
    eprintln!(
        "stopped probing {:.2} s after the API server began failing (lease duration {SHORT_LEASE:?})",
        failing.elapsed().as_secs_f64()
    );
    assert!(
        failing.elapsed() < 3 * SHORT_LEASE,
        "{:?}",
        failing.elapsed()
    );
    assert!(
        stopped.sum("selfheal_prober_lease_errors_total", &[]) >= 1.0,
        "{}",
        stopped.text
    );

    // The API server is back: it takes the Lease again and probes.
    cluster.lab.faults().clear();
    wait_until_leading(&daemon, "the replica, API server back", 3 * SHORT_LEASE).await;
    no_downtime(&daemon.scrape().await, "after the API server outage");
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
    let enabled = "[probes.leader_election]\nenabled = true\n";
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [&'a str]);
    let cases: [Case; 3] = [
        (
            enabled,
            &[("POD_NAME", "p")],
            &["probes.leader_election.namespace", "POD_NAMESPACE"],
        ),
        (
            enabled,
            &[("POD_NAMESPACE", "ns")],
            &["probes.leader_election.identity", "POD_NAME"],
        ),
        (
            "[sharding]\ntotal_shards = 2\n[probes.leader_election]\nenabled = true\nnamespace = \"ns\"\nidentity = \"p\"\n",
            &[],
            &["probes.leader_election.enabled", "sharding.total_shards"],
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
