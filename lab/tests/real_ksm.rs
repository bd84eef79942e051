//! kube-state-metrics and the daemon side by side on the real cluster (`selfheal-lab
//! cluster up`: the upstream kubelet, containerd and runc on this host): a busybox pod
//! OOM-killed over and over under a 48Mi limit, watched by both, run on the host against
//! the real API server through the admin kubeconfig.
//!
//! What each can say once the kubelet has restarted the container three times:
//! kube-state-metrics' `kube_pod_container_status_restarts_total` is the kubelet's
//! `restartCount`, and `kube_pod_container_status_last_terminated_reason` is a 0/1 gauge
//! of the last death's reason only (`OOMKilled` = 1), so how many of the restarts were
//! OOM kills is not in its metrics. The daemon's
//! `selfheal_container_restarts_total{reason="OOMKilled"}` is the same `restartCount`, each
//! restart with its cause, and `selfheal_container_oom_kills_total` counts every kill (at
//! least `restartCount`: the current instance may already be dead again). Both processes'
//! peak RSS (`VmHWM`) and CPU time are printed.
//!
//! Needs root, the cluster's binaries and kube-state-metrics from `lab/upstream/build.sh`;
//! it fails (never skips) without them, naming the build command. The cluster is brought
//! down however the test ends; another real-cluster test waits for it (host-wide lock).

use std::path::Path;
use std::time::{Duration, Instant};

use selfheal_lab::testkit::ksm::{Ksm, pod_watches};
use selfheal_lab::testkit::procfs::{clock_ticks_per_second, cpu_seconds, read_status};
use selfheal_lab::testkit::real_cluster::{
    HostExporter, STATE_DIR, TestCluster, assert_root, get, ksm_bin, sum_samples, upstream_bin,
};

/// This crate's binary (the daemon's is next to it).
fn lab() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_selfheal-lab"))
}

/// The daemon's config: the test's namespace.
const EXPORTER_CONFIG: &str = "[watch]\nnamespaces = [\"default\"]\n";

/// The `oom` pod of `real_cluster.rs` under other names, so that counts stay apart.
const GLUTTON_POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: glutton
  namespace: default
spec:
  containers:
  - name: eater
    image: selfheal-lab/busybox:1
    imagePullPolicy: Never
    command: ["sh", "-c", "echo started; sleep 1; tail /dev/zero"]
    resources:
      requests: {memory: 48Mi}
      limits: {memory: 48Mi}
"#;

/// Restarts the kubelet must have made before the comparison.
const RESTARTS: f64 = 3.0;

/// The kubelet's view of the glutton's container.
fn eater_status(cluster: &TestCluster) -> serde_json::Value {
    cluster.pod("default", "glutton")["status"]["containerStatuses"][0].clone()
}

/// What both exporters show at one moment.
struct Reading {
    restart_count: f64,
    ksm_restarts: f64,
    ksm_last_oom: f64,
    ksm_last_any: f64,
    ksm_series: usize,
    daemon_oom_restarts: f64,
    daemon_restarts: f64,
    daemon_oom_kills: f64,
    daemon_series: usize,
}

fn series(body: &str) -> usize {
    body.lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .count()
}

/// Both exporters' counts between two reads of the kubelet's `restartCount`; `None`
/// when the count moved meanwhile (no steady moment to compare).
fn read(cluster: &TestCluster, exporter: &HostExporter, ksm: &Ksm) -> Option<Reading> {
    let before = eater_status(cluster)["restartCount"].as_f64()?;
    let (_, ksm_body) = get(ksm.addr(), "/metrics")?;
    let (_, daemon_body) = exporter.get("/metrics")?;
    let after = eater_status(cluster)["restartCount"].as_f64()?;
    if before != after {
        return None;
    }
    let ksm_labels = [r#"pod="glutton""#, r#"container="eater""#];
    let oom = [ksm_labels[0], ksm_labels[1], r#"reason="OOMKilled""#];
    let ours = [r#"container="eater""#];
    let ours_oom = [ours[0], r#"reason="OOMKilled""#];
    Some(Reading {
        restart_count: after,
        // + 0.0: the sum of no sample is -0.0.
        ksm_restarts: sum_samples(
            &ksm_body,
            "kube_pod_container_status_restarts_total",
            &ksm_labels,
        ) + 0.0,
        ksm_last_oom: sum_samples(
            &ksm_body,
            "kube_pod_container_status_last_terminated_reason",
            &oom,
        ) + 0.0,
        ksm_last_any: sum_samples(
            &ksm_body,
            "kube_pod_container_status_last_terminated_reason",
            &ksm_labels,
        ) + 0.0,
        ksm_series: series(&ksm_body),
        daemon_oom_restarts: sum_samples(
            &daemon_body,
            "selfheal_container_restarts_total",
            &ours_oom,
        ) + 0.0,
        daemon_restarts: sum_samples(&daemon_body, "selfheal_container_restarts_total", &ours)
            + 0.0,
        daemon_oom_kills: sum_samples(&daemon_body, "selfheal_container_oom_kills_total", &ours)
            + 0.0,
        daemon_series: series(&daemon_body),
    })
}

#[test]
fn kube_state_metrics_shows_the_last_reason_the_daemon_counts_every_oom_kill() {
    assert_root();
    let bin = upstream_bin();
    // Before the cluster comes up: a missing KSM fails here, naming build.sh.
    let ksm_binary = ksm_bin();
    let clk_tck = clock_ticks_per_second().expect("clock ticks per second");
    let cluster = TestCluster::up(lab(), bin);
    let exporter = HostExporter::start(
        lab(),
        cluster.kubeconfig(),
        "ksm-exporter",
        None,
        EXPORTER_CONFIG,
    );
    let ksm_dir = Path::new(STATE_DIR).join("kube-state-metrics");
    std::fs::create_dir_all(&ksm_dir).expect("kube-state-metrics dir");
    let mut ksm = Ksm::spawn(&ksm_binary, cluster.kubeconfig(), &ksm_dir.join("ksm.log"))
        .unwrap_or_else(|error| panic!("{error:#}"));
    // KSM is ready to compare once its reflector has listed the pods and watches them.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        ksm.check_running()
            .unwrap_or_else(|error| panic!("{error:#}"));
        let watches = get(ksm.telemetry_addr(), "/metrics")
            .map_or(0.0, |(_, telemetry)| pod_watches(&telemetry));
        if watches >= 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "kube-state-metrics does not watch the pods after 60 s; its log:\n{}",
            ksm.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    cluster.kubectl(&["apply", "-f", "-"], Some(GLUTTON_POD));

    // The kubelet's back-off (10 s, 20 s, 40 s) puts the third restart about 75 s in.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let status = eater_status(&cluster);
        if status["restartCount"].as_f64().unwrap_or(0.0) >= RESTARTS {
            let last = &status["lastState"]["terminated"];
            assert_eq!(last["reason"], "OOMKilled", "container status: {status:#}");
            assert_eq!(last["exitCode"], 137, "container status: {status:#}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "restartCount {} after 300 s; the pod:\n{}\nthe kubelet's log:\n{}",
            status["restartCount"],
            cluster.kubectl(&["describe", "pod", "glutton", "-n", "default"], None),
            TestCluster::log_tail("kubelet", 60)
        );
        std::thread::sleep(Duration::from_secs(1));
    }

    // A steady moment at which both have caught up with the kubelet.
    let deadline = Instant::now() + Duration::from_secs(60);
    let reading = loop {
        if let Some(reading) = read(&cluster, &exporter, &ksm)
            && reading.ksm_restarts == reading.restart_count
            && reading.daemon_oom_restarts == reading.restart_count
            && reading.daemon_oom_kills >= reading.restart_count
            && reading.ksm_last_oom == 1.0
        {
            break reading;
        }
        if Instant::now() > deadline {
            let last = read(&cluster, &exporter, &ksm);
            panic!(
                "no steady moment in 60 s at which both match the kubelet: restartCount {:?}, \
                 kube-state-metrics restarts {:?} (last reason OOMKilled {:?}), the daemon's \
                 OOMKilled restarts {:?}, OOM kills {:?}\nkube-state-metrics' log:\n{}\nthe \
                 daemon's log:\n{}",
                last.as_ref().map(|r| r.restart_count),
                last.as_ref().map(|r| r.ksm_restarts),
                last.as_ref().map(|r| r.ksm_last_oom),
                last.as_ref().map(|r| r.daemon_oom_restarts),
                last.as_ref().map(|r| r.daemon_oom_kills),
                ksm.log_tail(30),
                exporter.log()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    ksm.check_running()
        .unwrap_or_else(|error| panic!("{error:#}"));

    // What is true of both.
    assert!(reading.restart_count >= RESTARTS);
    assert_eq!(reading.ksm_restarts, reading.restart_count);
    assert_eq!(reading.daemon_oom_restarts, reading.restart_count);
    assert_eq!(
        reading.daemon_restarts, reading.daemon_oom_restarts,
        "every restart of the eater is an OOM kill"
    );
    assert!(reading.daemon_oom_kills >= RESTARTS);
    // KSM holds one last-reason series per container, 1 for the last death's reason:
    // however many OOM kills there were, it shows one.
    assert_eq!(reading.ksm_last_oom, 1.0);
    assert_eq!(
        reading.ksm_last_any, 1.0,
        "one last-terminated reason at a time"
    );

    let ksm_status = read_status(ksm.pid()).expect("kube-state-metrics' /proc status");
    let daemon_status = read_status(exporter.pid()).expect("the daemon's /proc status");
    let ksm_cpu = cpu_seconds(ksm.pid(), clk_tck).expect("kube-state-metrics' CPU");
    let daemon_cpu = cpu_seconds(exporter.pid(), clk_tck).expect("the daemon's CPU");
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    eprintln!(
        "kubelet: restartCount {}, last terminated OOMKilled/137",
        reading.restart_count
    );
    eprintln!(
        "kube-state-metrics: kube_pod_container_status_restarts_total {}, \
         last_terminated_reason{{reason=\"OOMKilled\"}} {} (the last death only); \
         /metrics {} series; VmHWM {:.1} MiB, CPU {:.2} s",
        reading.ksm_restarts,
        reading.ksm_last_oom,
        reading.ksm_series,
        mib(ksm_status.hwm_bytes),
        ksm_cpu
    );
    eprintln!(
        "daemon: selfheal_container_restarts_total{{reason=\"OOMKilled\"}} {}, \
         selfheal_container_oom_kills_total {}; /metrics {} series; VmHWM {:.1} MiB, CPU {:.2} s",
        reading.daemon_oom_restarts,
        reading.daemon_oom_kills,
        reading.daemon_series,
        mib(daemon_status.hwm_bytes),
        daemon_cpu
    );
    drop(ksm);
    drop(exporter);
    cluster.down_and_check();
}
