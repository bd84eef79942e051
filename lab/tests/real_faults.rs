//! Watch faults on the real control plane: the daemon, on the host against the real API
//! server, keeps exact counts while kube-apiserver is SIGKILLed mid-timeline and started
//! again, with etcd compacted meanwhile, so that the daemon's resumed watch is refused
//! with 410 Gone and it relists. The kubelet goes on restarting containers while the API
//! server is away; once it is back, the daemon's restarts of each container equal the
//! kubelet's `restartCount` (nothing lost, nothing doubled) and its OOM kills are at least
//! as many, with the relist and the failed calls in its own metrics.
//!
//! Needs root and the binaries of `lab/upstream/build.sh`; fails (never skips) without
//! them; tears the cluster down even when it fails.

use std::path::Path;
use std::time::{Duration, Instant};

use selfheal_lab::testkit::real_cluster::{HostExporter, TestCluster, assert_root, upstream_bin};

fn lab() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_selfheal-lab"))
}

const NAMESPACE: &str = "faults";

/// A container that exits 3 after 2 s, and one OOM-killed under 48Mi.
const PODS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: faults}
---
apiVersion: v1
kind: Pod
metadata: {name: crasher, namespace: faults}
spec:
  containers:
  - name: exits
    image: selfheal-lab/busybox:1
    imagePullPolicy: Never
    command: ["sh", "-c", "sleep 2; exit 3"]
---
apiVersion: v1
kind: Pod
metadata: {name: hog, namespace: faults}
spec:
  containers:
  - name: allocates
    image: selfheal-lab/busybox:1
    imagePullPolicy: Never
    command: ["sh", "-c", "sleep 1; tail /dev/zero"]
    resources:
      requests: {memory: 48Mi}
      limits: {memory: 48Mi}
"#;

fn restart_count(cluster: &TestCluster, pod: &str) -> f64 {
    cluster.pod(NAMESPACE, pod)["status"]["containerStatuses"][0]["restartCount"]
        .as_f64()
        .unwrap_or(0.0)
}

/// The daemon's restarts of `container` (all reasons) and of reason `reason`.
fn counted(exporter: &HostExporter, container: &str, reason: &str) -> (f64, f64) {
    let container = format!(r#"container="{container}""#);
    let reason = format!(r#"reason="{reason}""#);
    (
        exporter.sum("selfheal_container_restarts_total", &[&container]),
        exporter.sum("selfheal_container_restarts_total", &[&container, &reason]),
    )
}

/// Waits until the kubelet has restarted the crasher at least `min_crasher` times and the
/// hog `min_hog` times, and the daemon's restarts of both equal the kubelet's counts, all
/// of the expected reason. Returns the kubelet's counts.
fn wait_for_exact_counts(
    cluster: &TestCluster,
    exporter: &HostExporter,
    (min_crasher, min_hog): (f64, f64),
    secs: u64,
) -> (f64, f64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let crasher = restart_count(cluster, "crasher");
        let hog = restart_count(cluster, "hog");
        let (exits_all, exits_error) = counted(exporter, "exits", "Error");
        let (hog_all, hog_oom) = counted(exporter, "allocates", "OOMKilled");
        let oom_kills = exporter.sum(
            "selfheal_container_oom_kills_total",
            &[r#"container="allocates""#],
        );
        if crasher >= min_crasher
            && hog >= min_hog
            && exits_all == crasher
            && exits_error == crasher
            && hog_all == hog
            && hog_oom == hog
            && oom_kills >= hog
        {
            eprintln!(
                "kubelet restartCount: crasher {crasher}, hog {hog}; the daemon: {exits_error} \
                 Error restarts, {hog_oom} OOMKilled restarts, {oom_kills} OOM kills"
            );
            return (crasher, hog);
        }
        assert!(
            Instant::now() < deadline,
            "kubelet restartCount: crasher {crasher}, hog {hog}; the daemon: crasher \
             {exits_all} ({exits_error} Error), hog {hog_all} ({hog_oom} OOMKilled), \
             {oom_kills} OOM kills\nthe daemon's log:\n{}",
            exporter.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn counts_stay_exact_across_an_api_server_crash_and_an_etcd_compaction() {
    assert_root();
    let cluster = TestCluster::up(lab(), upstream_bin());
    cluster.kubectl(&["apply", "-f", "-"], Some(PODS));
    let exporter = HostExporter::start(
        lab(),
        cluster.kubeconfig(),
        "faults-exporter",
        None,
        "[watch]\nnamespaces = [\"faults\"]\n",
    );
    let (crasher_before, hog_before) = wait_for_exact_counts(&cluster, &exporter, (1.0, 1.0), 120);
    let relists = |exporter: &HostExporter| {
        exporter.sum(
            "selfheal_watch_events_total",
            &[r#"resource="pods""#, r#"type="init_done""#],
        )
    };
    let relists_before = relists(&exporter);
    let errors_before = exporter.sum("selfheal_watch_errors_total", &[]) + 0.0;

    // The API server crashes; the kubelet keeps restarting containers, unable to report.
    cluster.control(&["stop", "kube-apiserver", "--kill"]);
    let down = Instant::now();
    std::thread::sleep(Duration::from_secs(20));
    let revision = cluster.control(&["compact"]);
    cluster.control(&["start", "kube-apiserver"]);
    eprintln!(
        "kube-apiserver SIGKILLed, etcd compacted at revision {}, started again after {:.1} s",
        revision.trim(),
        down.elapsed().as_secs_f64()
    );

    // Back: every restart the kubelet made meanwhile is counted once, with its reason.
    // The crasher restarts every back-off (at most 40 s by now), so it has restarted
    // again by the end of the wait.
    let (crasher_after, hog_after) =
        wait_for_exact_counts(&cluster, &exporter, (crasher_before + 1.0, hog_before), 180);
    let relists_after = relists(&exporter);
    let errors_after = exporter.sum("selfheal_watch_errors_total", &[]) + 0.0;
    let log = exporter.log();
    let gone: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("410") || line.contains("too old resource version"))
        .collect();
    if let Some(line) = gone.first() {
        eprintln!("the daemon's log: {line}");
    }
    let gone = gone.len();
    eprintln!(
        "restartCount crasher {crasher_before} -> {crasher_after}, hog {hog_before} -> \
         {hog_after}; pod relists: \
         {relists_before} -> {relists_after}; watch errors {errors_before} -> {errors_after}; \
         {gone} log lines of 410/too old"
    );
    assert!(
        gone >= 1,
        "the resumed watch was never refused with 410 Gone (compaction had no effect); the \
         daemon's log:\n{log}"
    );
    assert!(
        relists_after > relists_before,
        "the daemon did not relist pods after the API server came back; its log:\n{log}"
    );
    assert!(
        errors_after > errors_before,
        "no failed watch call counted while the API server was down; its log:\n{log}"
    );
    drop(exporter);
    cluster.down_and_check();
}
