//! End to end on the full lab: real processes under memory cgroups, killed by the Linux
//! kernel, restarted by the emulated kubelet, behind the NodePort proxy; the daemon
//! watches it all through kube-rs like a real cluster.

mod common;

use std::time::Duration;

use common::kubelet::{kubelet, shell_pod};
use common::*;
use selfheal_lab::load::{LoadConfig, run_load};
use selfheal_lab::services::ServiceController;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kernel_oom_kills_and_the_daemon_counts_each_kill() {
    let cluster = Cluster::start().await;
    let Some(kubelet) = kubelet(&cluster, Duration::from_millis(500)).await else {
        return;
    };
    let daemon = Daemon::start(&cluster, "").await;
    let hog = "python3 -c \"a=[]\nwhile True: a.append(' ' * 10**6)\"";
    cluster
        .create(Kind::Pod, shell_pod("hog", hog, "32Mi", json!({})))
        .await;
    let labels = [("workload", "hog"), ("container", "main")];
    daemon
        .wait_for("the first OOMKill", |s| {
            s.get("selfheal_container_oom_kills_total", &labels) >= Some(1.0)
        })
        .await;
    let scrape = daemon
        .wait_for("the second OOMKill", |s| {
            s.get("selfheal_container_oom_kills_total", &labels) >= Some(2.0)
        })
        .await;
    assert_eq!(
        scrape.get("selfheal_container_last_termination_exit_code", &labels),
        Some(137.0)
    );
    assert_eq!(
        scrape.get("selfheal_container_memory_limit_bytes", &labels),
        Some(32.0 * 1024.0 * 1024.0)
    );
    assert!(
        scrape.sum(
            "selfheal_container_restarts_total",
            &[("workload", "hog"), ("reason", "OOMKilled")]
        ) >= 1.0
    );
    let pod = cluster.get(Kind::Pod, "hog").await;
    let status = &pod["status"]["containerStatuses"][0];
    let death = if status["state"]["terminated"].is_object() {
        &status["state"]["terminated"]
    } else {
        &status["lastState"]["terminated"]
    };
    assert_eq!(death["reason"], "OOMKilled", "{status}");
    assert_eq!(death["exitCode"], 137);

    // Each recovery's phases (back-off, start, readiness) add up to its time to recover.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let split = loop {
        let (_, body) = daemon
            .get("/api/v1/incidents", None)
            .await
            .expect("incidents");
        let incidents: serde_json::Value = serde_json::from_str(&body).expect("json");
        let split: Vec<(f64, f64)> = incidents["incidents"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| i["kind"] == "restart" && i["workload"] == "hog")
            .filter_map(|i| {
                let phases = &i["recovery_phases"];
                let sum = ["backoff_seconds", "start_seconds", "readiness_seconds"]
                    .iter()
                    .map(|phase| phases[phase].as_f64())
                    .sum::<Option<f64>>()?;
                Some((i["time_to_recover_seconds"].as_f64()?, sum))
            })
            .collect();
        if !split.is_empty() {
            break split;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no recovery split into phases: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for (whole, sum) in split {
        eprintln!("recovery {whole:.3} s = phases {sum:.3} s");
        assert!((whole - sum).abs() < 1e-6, "{whole} vs {sum}");
    }
    kubelet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_liveness_probe_is_a_liveness_restart() {
    let cluster = Cluster::start().await;
    let Some(kubelet) = kubelet(&cluster, Duration::from_millis(500)).await else {
        return;
    };
    let daemon = Daemon::start(&cluster, "").await;
    let probe = json!({"livenessProbe": {
        "httpGet": {"path": "/healthz", "port": 9},
        "initialDelaySeconds": 1, "periodSeconds": 1, "failureThreshold": 1
    }});
    cluster
        .create(Kind::Pod, shell_pod("stuck", "sleep 600", "64Mi", probe))
        .await;
    let scrape = daemon
        .wait_for("a LivenessProbeFailed restart", |s| {
            s.sum(
                "selfheal_container_restarts_total",
                &[("workload", "stuck"), ("reason", "LivenessProbeFailed")],
            ) >= 1.0
        })
        .await;
    assert_eq!(
        scrape.sum(
            "selfheal_container_restarts_total",
            &[("workload", "stuck"), ("reason", "Error")]
        ),
        0.0,
        "the kubelet reports Error/143, the Killing Event says why"
    );
    kubelet.shutdown().await;
}

/// The experiment: the grade API under 48Mi behind its NodePort Service, loaded until the
/// kernel kills it; the daemon's probe through the Service sees the outage, names the
/// OOMKill behind it, and measures what the load generator's users saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_sees_the_outage_the_users_saw_and_names_the_oomkill() {
    let cluster = Cluster::start().await;
    // A 2 s back-off after the second kill makes an outage long enough to compare.
    let Some(kubelet) = kubelet(&cluster, Duration::from_secs(2)).await else {
        return;
    };
    let services = ServiceController::start(cluster.client.clone());
    let daemon = Daemon::start(&cluster, "[probes]\nservice_address = \"node_port\"\n").await;

    let documents: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(selfheal_lab::demo::MANIFESTS).expect("manifests");
    for mut document in documents {
        match document["kind"].as_str() {
            Some("Pod") => {
                // 256 KiB of ballast per grade instead of 2: the kernel kills it after
                // about 190 grades. With small steps the process sits just under the
                // limit while the kernel reclaims its code pages (a debug build's binary
                // is large): it thrashes, answers nothing and is not killed for long (two
                // CI runs: down from the 4th second, no death reported). Large steps cross
                // that zone in a few requests; the shape is still the experiment's.
                document["spec"]["containers"][0]["args"] = json!(["--bytes-per-grade", "262144"]);
                drop(cluster.create(Kind::Pod, document).await);
            }
            Some("Service") => drop(cluster.create(Kind::Service, document).await),
            _ => {}
        }
    }
    assert!(
        services
            .wait_for_node_port(31000, Duration::from_secs(30))
            .await
    );
    let target = [("target", "grade-submission/grade-submission-api")];
    daemon
        .wait_for("the Service probed and up", |s| {
            s.get("selfheal_probe_up", &target) == Some(1.0)
        })
        .await;

    // Load in short rounds, with a pause after each, until one OOMKill outage the probe
    // saw can be compared with what the users saw in the same round. Short rounds and
    // pauses, because a grade API that dies every few seconds under 80 users soon waits
    // in a long crash-loop back-off (one CI run: down from the 4th second on, no window
    // ever closed); a round ends, the kubelet restarts it, the next round finds it up.
    // Bounded: at most 8 rounds of 8 s.
    let caused = [target[0], ("cause", "OOMKilled")];
    let mut outage_windows = Vec::new();
    let mut rounds = Vec::new();
    let mut compared = Vec::new();
    let mut incidents_seen = String::new();
    for round in 1..=8 {
        let mut load = LoadConfig::new("http://127.0.0.1:31000/grade", 80, Duration::from_secs(8));
        load.think = Duration::from_millis(20);
        let report = run_load(load, |_| {}).await.expect("load runs");
        let round_end = jiff::SignedDuration::try_from(report.elapsed)
            .ok()
            .and_then(|d| report.started_at.checked_add(d).ok())
            .expect("round end");
        eprintln!(
            "load round {round}: {} requests, {} users' outage windows",
            report.requests,
            report.outage_windows.len()
        );
        rounds.push((report.started_at, round_end));
        outage_windows.extend(report.outage_windows);
        // The outage is recorded once the probe sees the target back and the restart
        // behind it is attributed: a pause after the round.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let (_, body) = daemon
            .get("/api/v1/incidents", None)
            .await
            .expect("incidents");
        compared = compare_outages(&body, &outage_windows, &rounds);
        let attributed = body.contains("\"cause\":\"OOMKilled\"") && body.contains("\"outage\"");
        incidents_seen = body;
        // Done once an outage compares, or (attributed) after two more rounds.
        if !compared.is_empty() || (attributed && round >= 3) {
            break;
        }
    }
    let scrape = daemon.scrape().await;
    assert!(
        scrape.get("selfheal_probe_outages_total", &caused) >= Some(1.0),
        "no outage caused by an OOMKill: {incidents_seen}"
    );
    // Each outage the probe saw is one the users saw, of about the same length (the
    // precision, one 250 ms probe interval, is measured by benches/prober_vs_blackbox.rs
    // on known windows; this bound is loose). Only outages whose users' windows all
    // closed inside one round compare; a crash loop whose back-off outlasts the rounds
    // leaves none, and then only the attribution above is checked (said on stderr).
    if compared.is_empty() {
        eprintln!(
            "no OOMKill outage lay inside one round with every users' window closed: \
             attribution checked, length not compared ({} windows, {} rounds)",
            outage_windows.len(),
            rounds.len()
        );
    }
    for (users, probe, outage) in &compared {
        eprintln!("outage: users saw {users:.3} s, the probe {probe:.3} s");
        assert!(
            (probe - users).abs() < 1.0,
            "users {users} vs probe {probe}: outage {outage:#}\nwindows {outage_windows:#?}"
        );
    }
    services.shutdown().await;
    kubelet.shutdown().await;
}

/// The OOMKill outages of the incident log `body` that lie inside one load round, each
/// with what the users saw: (users' downtime, the probe's, the outage). A probe every
/// 250 ms can miss a moment of service between two kills that some users caught, so an
/// outage is compared with the closed users' windows it spans, from the first one's
/// start to the last one's end.
fn compare_outages(
    body: &str,
    windows: &[selfheal_lab::load::OutageWindow],
    rounds: &[(jiff::Timestamp, jiff::Timestamp)],
) -> Vec<(f64, f64, serde_json::Value)> {
    let incidents: serde_json::Value = serde_json::from_str(body).expect("json");
    let mut compared = Vec::new();
    for outage in incidents["incidents"].as_array().into_iter().flatten() {
        if outage["kind"] != "outage" || outage["cause"] != "OOMKilled" {
            continue;
        }
        assert_eq!(outage["restart"]["exit_code"], 137, "{outage:#}");
        assert_eq!(
            outage["restart"]["memory_limit_bytes"],
            48 * 1024 * 1024,
            "{outage:#}"
        );
        let time = |key: &str| -> jiff::Timestamp {
            outage[key]
                .as_str()
                .and_then(|t| t.parse().ok())
                .expect("a time")
        };
        let (start, end) = (time("start"), time("end"));
        // Between two rounds nobody sends requests: an outage across that pause is not
        // comparable with what the users saw.
        if !rounds.iter().any(|&(from, to)| from <= start && end <= to) {
            continue;
        }
        let overlapping: Vec<_> = windows
            .iter()
            .filter(|w| w.start_wall <= end && start <= w.end_wall)
            .collect();
        // A users' window still open at the round's end has no known length.
        if overlapping.iter().any(|w| !w.closed) {
            continue;
        }
        let spanned = overlapping;
        let (Some(first), Some(last)) = (
            spanned.iter().map(|w| w.start_wall).min(),
            spanned.iter().map(|w| w.end_wall).max(),
        ) else {
            continue;
        };
        let probe = outage["downtime_seconds"].as_f64().expect("downtime");
        let users = last.duration_since(first).as_secs_f64();
        compared.push((users, probe, outage.clone()));
    }
    compared
}
