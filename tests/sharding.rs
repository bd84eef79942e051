//! Several replicas: two daemons with shards 0 and 1 together report exactly what one
//! unsharded daemon reports, each workload and each probe target in exactly one of them.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const WORKLOADS: usize = 12;
const TARGETS: [&str; 4] = ["alpha", "beta", "gamma", "delta"];

fn restart_series(scrape: &Scrape, workload: &str) -> (f64, f64) {
    let labels = [("workload", workload), ("container", "api")];
    (
        scrape.sum("selfheal_container_restarts_total", &labels),
        scrape.sum("selfheal_container_oom_kills_total", &labels),
    )
}

fn probed(scrape: &Scrape, target: &str) -> bool {
    scrape.has("selfheal_probe_requests_total", &[("target", target)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shards_report_exactly_what_one_replica_reports() {
    let cluster = Cluster::start().await;
    let target = Flaky::start().await;
    let mut probes = String::new();
    for name in TARGETS {
        probes.push_str(&format!(
            "[[probes.targets]]\nname = \"{name}\"\nurl = \"http://127.0.0.1:{}/\"\ninterval = \"200ms\"\n",
            target.port
        ));
    }
    for i in 0..WORKLOADS {
        let pod = format!("app-{i}-6c9f8-x");
        let labels = json!({"app": format!("app-{i}"), "pod-template-hash": "6c9f8"});
        cluster
            .create_pod(
                &pod,
                Some(("ReplicaSet", &format!("app-{i}-6c9f8"))),
                labels,
            )
            .await;
        cluster.set_status(&pod, running(0, true, None)).await;
    }
    let whole = Daemon::start(&cluster, &probes).await;
    let mut shards = Vec::new();
    for shard in 0..2 {
        let config = format!("[sharding]\nshard = {shard}\ntotal_shards = 2\n{probes}");
        shards.push(Daemon::start(&cluster, &config).await);
    }

    // Every workload restarts, (i % 3) + 1 times, each an OOMKill.
    for i in 0..WORKLOADS {
        let pod = format!("app-{i}-6c9f8-x");
        for n in 0..=(i % 3) {
            let d = death("OOMKilled", 137, &format!("{pod}-{n}"), now_s());
            cluster
                .set_status(&pod, running(n as u32 + 1, true, Some(d)))
                .await;
        }
    }
    let expected_total: f64 = (0..WORKLOADS).map(|i| (i % 3 + 1) as f64).sum();
    let whole_scrape = whole
        .wait_for(
            "every restart and every target in the unsharded replica",
            |s| {
                s.sum("selfheal_container_restarts_total", &[]) == expected_total
                    && TARGETS.iter().all(|name| probed(s, name))
            },
        )
        .await;
    // Both shards catch up: together they hold every restart and probe every target.
    let deadline = Instant::now() + Duration::from_secs(30);
    let shard_scrapes = loop {
        let mut scrapes = Vec::new();
        for daemon in &shards {
            scrapes.push(daemon.scrape().await);
        }
        let restarts: f64 = scrapes
            .iter()
            .map(|s| s.sum("selfheal_container_restarts_total", &[]))
            .sum();
        let all_probed = TARGETS
            .iter()
            .all(|name| scrapes.iter().any(|s| probed(s, name)));
        if (restarts == expected_total && all_probed) || Instant::now() > deadline {
            break scrapes;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let mut owned = [0usize; 2];
    for i in 0..WORKLOADS {
        let workload = format!("app-{i}");
        let whole_values = restart_series(&whole_scrape, &workload);
        let expected = (i % 3 + 1) as f64;
        assert_eq!(whole_values, (expected, expected), "{workload}");
        let holders: Vec<usize> = (0..2)
            .filter(|&s| {
                shard_scrapes[s].has(
                    "selfheal_container_oom_kills_total",
                    &[("workload", workload.as_str())],
                )
            })
            .collect();
        assert_eq!(
            holders.len(),
            1,
            "{workload} must live in exactly one shard"
        );
        let shard_values = restart_series(&shard_scrapes[holders[0]], &workload);
        if shard_values != whole_values {
            eprintln!("shard {} log:\n{}", holders[0], shards[holders[0]].log());
        }
        assert_eq!(shard_values, whole_values, "{workload}");
        owned[holders[0]] += 1;
    }
    assert!(
        owned.iter().all(|&n| n > 0),
        "both shards own workloads: {owned:?}"
    );

    for name in TARGETS {
        let probing = shard_scrapes.iter().filter(|s| probed(s, name)).count();
        assert_eq!(probing, 1, "target {name} is probed by exactly one shard");
    }
}
