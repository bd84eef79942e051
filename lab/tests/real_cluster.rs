//! The real cluster (`selfheal-lab cluster up`, upstream kubelet + containerd + runc on this
//! host) OOM-kills a busybox pod under a 48Mi limit, and the real kubelet reports it:
//! `lastState.terminated` reason OOMKilled, exit code 137, restartCount ≥ 1. The daemon,
//! run on the host against the real API server through the admin kubeconfig, counts
//! what the kubelet reports: its OOMKilled restarts equal the kubelet's `restartCount`.
//! The same for the other restart paths of the 1.37 kubelet (a liveness probe kill, a
//! container restart rule, a native sidecar's OOM kills, RestartAllContainers), with
//! their reasons, one incident per pod restart, and recovery phases that add up.
//!
//! The daemon is the `selfheal-exporter` binary next to this crate's binary in the target
//! directory (`cargo test --workspace` builds both).
//!
//! The node agent (`selfheal-exporter node`, on the host too, reading the real
//! `/sys/fs/cgroup`) runs beside it: it counts the experiment's OOM kills once (the
//! kubelet's OOMKilled, no process OOM kill on top), and one process OOM kill for a pod
//! whose shell starts a child that allocates past the limit: the kernel kills the child,
//! the container lives, the kubelet reports nothing (restartCount 0).
//!
//! Needs root and the binaries of `lab/upstream/build.sh`; it fails (never skips) without
//! them. It uses its own state and run dirs and tears the cluster down even when it fails.

use std::path::Path;
use std::time::{Duration, Instant};

use selfheal_lab::testkit::real_cluster::{
    HostExporter as Exporter, NODE_NAME, TestCluster as Cluster, assert_root, upstream_bin,
};

/// This crate's binary (the daemon's is next to it).
fn lab() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_selfheal-lab"))
}

/// The cluster-wide exporter's config: the test's namespace, findings written back as
/// Events (`kubectl describe pod`).
const EXPORTER_CONFIG: &str = "[watch]\nnamespaces = [\"default\"]\n[events]\nenabled = true\n";
/// The node agent's: it also names the victims from the kernel log (root here).
const AGENT_CONFIG: &str = "[watch]\nnamespaces = [\"default\"]\n[node]\nkmsg = true\n";

const OOM_POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: oom
  namespace: default
spec:
  containers:
  - name: hog
    image: selfheal-lab/busybox:1
    imagePullPolicy: Never
    command: ["sh", "-c", "echo started; sleep 1; tail /dev/zero"]
    resources:
      requests: {memory: 48Mi}
      limits: {memory: 48Mi}
"#;

/// A shell whose child allocates past the limit: the kernel kills the child (the
/// biggest process), the shell goes on sleeping.
const FORKER_POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: forker
  namespace: default
spec:
  containers:
  - name: forker
    image: selfheal-lab/busybox:1
    imagePullPolicy: Never
    command: ["sh", "-c", "echo started; sleep 1; (tail /dev/zero); echo child gone; sleep 3600"]
    resources:
      requests: {memory: 48Mi}
      limits: {memory: 48Mi}
"#;

/// In-place resize (GA in 1.35): the grower waits until its memory cgroup's limit is the
/// resized 64Mi (60 s at most), then allocates past it. Its OOM kill must be reported at the
/// limit in force, 64Mi, not the 48Mi it was created with.
const RESIZED_POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: resized
  namespace: default
spec:
  containers:
  - name: grower
    image: selfheal-lab/busybox:1
    imagePullPolicy: Never
    command: ["sh", "-c", "i=0; until [ \"$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes)\" = 67108864 ] || [ $i -ge 300 ]; do sleep 0.2; i=$((i+1)); done; echo limit $(cat /sys/fs/cgroup/memory/memory.limit_in_bytes); tail /dev/zero"]
    resizePolicy:
    - {resourceName: memory, restartPolicy: NotRequired}
    resources:
      requests: {memory: 48Mi}
      limits: {memory: 48Mi}
"#;

/// The resize of `RESIZED_POD` (the `resize` subresource, a strategic merge by name).
const RESIZE_PATCH: &str = r#"{"spec":{"containers":[{"name":"grower","resources":{"requests":{"memory":"64Mi"},"limits":{"memory":"64Mi"}}}]}}"#;

/// The restart paths of a 2026 kubelet, each in a pod of its own: a liveness probe
/// kill, a container restart rule (KEP-5307), a native sidecar OOM-killed, and
/// RestartAllContainers (KEP-5532).
const RESTART_PATHS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: liveness, namespace: default}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: stuck
    image: selfheal-lab/busybox:1
    imagePullPolicy: Never
    command: ["sh", "-c", "sleep 3600"]
    livenessProbe:
      exec: {command: ["false"]}
      initialDelaySeconds: 1
      periodSeconds: 1
      failureThreshold: 1
---
apiVersion: v1
kind: Pod
metadata: {name: rule, namespace: default}
spec:
  restartPolicy: Never
  containers:
  - name: worker
    image: selfheal-lab/busybox:1
    imagePullPolicy: Never
    command: ["sh", "-c", "sleep 2; exit 42"]
    restartPolicy: Never
    restartPolicyRules:
    - action: Restart
      exitCodes: {operator: In, values: [42]}
---
apiVersion: v1
kind: Pod
metadata: {name: sidecar, namespace: default}
spec:
  initContainers:
  - name: shipper
    image: selfheal-lab/busybox:1
    imagePullPolicy: Never
    restartPolicy: Always
    command: ["sh", "-c", "sleep 2; tail /dev/zero"]
    resources: {limits: {memory: 32Mi}, requests: {memory: 32Mi}}
  containers:
  - name: main
    image: selfheal-lab/busybox:1
    imagePullPolicy: Never
    command: ["sh", "-c", "sleep 3600"]
---
apiVersion: v1
kind: Pod
metadata: {name: all, namespace: default}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: trigger
    image: selfheal-lab/busybox:1
    imagePullPolicy: Never
    command: ["sh", "-c", "sleep 3; exit 42"]
    restartPolicy: Always
    restartPolicyRules:
    - action: RestartAllContainers
      exitCodes: {operator: In, values: [42]}
  - name: other
    image: selfheal-lab/busybox:1
    imagePullPolicy: Never
    command: ["sh", "-c", "sleep 3600"]
---
apiVersion: v1
kind: Pod
metadata: {name: evictee, namespace: default}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: selfheal-lab/busybox:1
    imagePullPolicy: Never
    command: ["sh", "-c", "sleep 3600"]
"#;

/// An Eviction of the pod `evictee` (what `kubectl drain` posts).
const EVICTION: &str = r#"{"apiVersion": "policy/v1", "kind": "Eviction",
  "metadata": {"name": "evictee", "namespace": "default"}}"#;

/// (pod, container, the reason the daemon must give each of its restarts).
const PATHS: [(&str, &str, &str); 5] = [
    ("liveness", "stuck", "LivenessProbeFailed"),
    ("rule", "worker", "RestartRule"),
    ("sidecar", "shipper", "OOMKilled"),
    ("all", "trigger", "RestartAllContainers"),
    ("all", "other", "RestartAllContainers"),
];

/// The kubelet's restartCount of `container` (regular or init) in `pod`.
fn restart_count(cluster: &Cluster, pod: &str, container: &str) -> f64 {
    let pod: serde_json::Value = serde_json::from_str(
        &cluster.kubectl(&["get", "pod", pod, "-n", "default", "-o", "json"], None),
    )
    .expect("pod JSON");
    ["containerStatuses", "initContainerStatuses"]
        .iter()
        .flat_map(|list| pod["status"][list].as_array().cloned().unwrap_or_default())
        .find(|status| status["name"] == container)
        .and_then(|status| status["restartCount"].as_f64())
        .unwrap_or(0.0)
}

/// Each restart path: once the kubelet restarted the container at least twice, every
/// restart it made (restartCount) is one the daemon counted, all with the path's reason;
/// RestartAllContainers is one incident per pod restart (the trigger's), none for the
/// other container; and every recovery's phases add up to its time to recover.
/// Resizes `RESIZED_POD` in place once its container runs.
fn resize_when_running(cluster: &Cluster) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pod: serde_json::Value = serde_json::from_str(&cluster.kubectl(
            &["get", "pod", "resized", "-n", "default", "-o", "json"],
            None,
        ))
        .expect("pod JSON");
        if pod["status"]["containerStatuses"][0]["state"]["running"].is_object() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the resized pod does not run: {:#}",
            pod["status"]
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    cluster.kubectl(
        &[
            "patch",
            "pod",
            "resized",
            "-n",
            "default",
            "--subresource",
            "resize",
            "-p",
            RESIZE_PATCH,
        ],
        None,
    );
}

/// The resized grower's OOM kills are reported at the limit in force after the resize.
fn check_resized_limit(cluster: &Cluster, exporter: &Exporter) {
    const RESIZED: u64 = 64 * 1024 * 1024;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, body) = exporter
            .get("/api/v1/incidents?limit=1000")
            .unwrap_or_default();
        let incidents: serde_json::Value =
            serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
        let limits: Vec<Option<u64>> = incidents["incidents"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|incident| incident["kind"] == "restart" && incident["pod"] == "resized")
            .map(|incident| incident["memory_limit_bytes"].as_u64())
            .collect();
        if !limits.is_empty() {
            let pod: serde_json::Value = serde_json::from_str(&cluster.kubectl(
                &["get", "pod", "resized", "-n", "default", "-o", "json"],
                None,
            ))
            .expect("pod JSON");
            let status = &pod["status"]["containerStatuses"][0];
            assert!(
                limits.iter().all(|limit| *limit == Some(RESIZED)),
                "OOM kills after the resize to 64Mi reported at {limits:?}; the container \
                 status: {status:#}"
            );
            eprintln!(
                "resized/grower: {} OOM kill(s) at the resized limit 64Mi; status resources {}",
                limits.len(),
                status["resources"]
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no OOM kill of the resized grower reported; its pod:\n{}",
            cluster.kubectl(&["describe", "pod", "resized", "-n", "default"], None)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn check_restart_paths(cluster: &Cluster, exporter: &Exporter) {
    for (pod, container, reason) in PATHS {
        let labels = [
            format!("workload=\"{pod}\""),
            format!("container=\"{container}\""),
        ];
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        let with_reason = format!("reason=\"{reason}\"");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let before = restart_count(cluster, pod, container);
            let all = exporter.sum("selfheal_container_restarts_total", &labels);
            let mut labelled = labels.clone();
            labelled.push(&with_reason);
            let counted = exporter.sum("selfheal_container_restarts_total", &labelled);
            let after = restart_count(cluster, pod, container);
            // A steady moment (restartCount unchanged around the scrape) to compare.
            if before == after && after >= 2.0 && counted == after && all == counted {
                eprintln!("{pod}/{container}: restartCount {after} = {counted} {reason} restarts");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{pod}/{container}: the daemon counted {counted} {reason} restarts of {all};                  the kubelet's restartCount is {after}; its log:\n{}",
                exporter.log()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    let (_, body) = exporter
        .get("/api/v1/incidents?limit=1000")
        .unwrap_or_default();
    let incidents: serde_json::Value = serde_json::from_str(&body).expect("incidents JSON");
    let restarts: Vec<&serde_json::Value> = incidents["incidents"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|incident| incident["kind"] == "restart")
        .collect();
    let of = |container: &str| {
        restarts
            .iter()
            .filter(|incident| incident["container"] == container)
            .count()
    };
    assert!(of("trigger") >= 2, "{body}");
    assert_eq!(
        of("other"),
        0,
        "the pod restart is the trigger's incident: {body}"
    );
    let mut split = 0;
    for incident in &restarts {
        let phases = &incident["recovery_phases"];
        let (Some(whole), Some(backoff), Some(start), Some(readiness)) = (
            incident["time_to_recover_seconds"].as_f64(),
            phases["backoff_seconds"].as_f64(),
            phases["start_seconds"].as_f64(),
            phases["readiness_seconds"].as_f64(),
        ) else {
            continue;
        };
        assert!(
            (backoff + start + readiness - whole).abs() < 1e-6,
            "phases do not add up: {incident:#}"
        );
        split += 1;
    }
    eprintln!("{split} recoveries split into phases that add up to the whole");
    assert!(split >= 4, "{body}");

    // A disruption through the Eviction API: the real API server marks the pod with the
    // DisruptionTarget condition (EvictionByEvictionAPI) and deletes it; counted as that
    // disruption, and its container's exit during the deletion is no restart or death.
    cluster.kubectl(
        &[
            "create",
            "--raw",
            "/api/v1/namespaces/default/pods/evictee/eviction",
            "-f",
            "-",
        ],
        Some(EVICTION),
    );
    let evicted = [r#"workload="evictee""#, r#"reason="EvictionByEvictionAPI""#];
    let deadline = Instant::now() + Duration::from_secs(60);
    while exporter.sum("selfheal_pod_disruptions_total", &evicted) < 1.0 {
        assert!(
            Instant::now() < deadline,
            "no EvictionByEvictionAPI disruption counted in 60 s; its log:\n{}",
            exporter.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Until the pod is gone: its container's stop must not show as a restart or death.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cluster
        .kubectl(&["get", "pods", "-n", "default", "-o", "name"], None)
        .lines()
        .all(|pod| pod != "pod/evictee")
    {
        assert!(Instant::now() < deadline, "the evicted pod is still there");
        std::thread::sleep(Duration::from_millis(500));
    }
    let app = [r#"workload="evictee""#];
    assert_eq!(
        exporter.sum("selfheal_container_restarts_total", &app) + 0.0,
        0.0,
        "an eviction is no restart"
    );
    assert_eq!(
        exporter.sum("selfheal_pod_disruptions_total", &evicted),
        1.0,
        "one disruption per pod"
    );
    let (_, body) = exporter
        .get("/api/v1/incidents?limit=1000")
        .unwrap_or_default();
    assert!(
        !body.contains("\"workload\":\"evictee\""),
        "an eviction makes no restart incident: {body}"
    );
    eprintln!("evictee: 1 EvictionByEvictionAPI disruption, no restart, no incident");
}

fn pod_status(cluster: &Cluster, name: &str) -> serde_json::Value {
    let pod: serde_json::Value = serde_json::from_str(
        &cluster.kubectl(&["get", "pod", name, "-n", "default", "-o", "json"], None),
    )
    .expect("pod JSON");
    pod["status"]["containerStatuses"][0].clone()
}

#[test]
fn real_kubelet_reports_a_kernel_oom_kill() {
    assert_root();
    let bin = upstream_bin();
    let forward_before = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
        .expect("reading ip_forward")
        .trim()
        .to_string();
    let cluster = Cluster::up(lab(), bin);
    let exporter = Exporter::start(
        lab(),
        cluster.kubeconfig(),
        "exporter",
        None,
        EXPORTER_CONFIG,
    );
    let agent = Exporter::start(
        lab(),
        cluster.kubeconfig(),
        "node-agent",
        Some(NODE_NAME),
        AGENT_CONFIG,
    );
    cluster.kubectl(&["apply", "-f", "-"], Some(OOM_POD));
    cluster.kubectl(&["apply", "-f", "-"], Some(FORKER_POD));
    cluster.kubectl(&["apply", "-f", "-"], Some(RESTART_PATHS));
    cluster.kubectl(&["apply", "-f", "-"], Some(RESIZED_POD));
    resize_when_running(&cluster);

    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        let pod: serde_json::Value = serde_json::from_str(
            &cluster.kubectl(&["get", "pod", "oom", "-n", "default", "-o", "json"], None),
        )
        .expect("pod JSON");
        let cs = pod["status"]["containerStatuses"][0].clone();
        if cs["restartCount"].as_i64().unwrap_or(0) >= 1
            && cs["lastState"]["terminated"]["reason"].is_string()
        {
            break cs;
        }
        assert!(
            Instant::now() < deadline,
            "no restart after 120 s; pod status: {:#}",
            pod["status"]
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    let last = &status["lastState"]["terminated"];
    assert_eq!(last["reason"], "OOMKilled", "container status: {status:#}");
    assert_eq!(last["exitCode"], 137, "container status: {status:#}");
    assert!(status["restartCount"].as_i64().unwrap_or(0) >= 1);
    let forward_now = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
        .expect("reading ip_forward")
        .trim()
        .to_string();
    assert_eq!(forward_now, forward_before, "IP forwarding changed");

    // The daemon's count is the kubelet's: every restart the kubelet made (restartCount)
    // is an OOMKilled restart in the daemon, and as many OOM kills at least (the current
    // instance may already be dead again); checked once the kubelet has restarted the
    // container twice, as in the experiment (OOM kills 1, then 2).
    let container = r#"container="hog""#;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let pod: serde_json::Value = serde_json::from_str(
            &cluster.kubectl(&["get", "pod", "oom", "-n", "default", "-o", "json"], None),
        )
        .expect("pod JSON");
        let restarts = pod["status"]["containerStatuses"][0]["restartCount"]
            .as_f64()
            .unwrap_or(0.0);
        let counted = exporter.sum(
            "selfheal_container_restarts_total",
            &[container, r#"reason="OOMKilled""#],
        );
        let oom_kills = exporter.sum("selfheal_container_oom_kills_total", &[container]);
        let other = exporter.sum("selfheal_container_restarts_total", &[container]) - counted;
        if restarts >= 2.0 && counted == restarts && oom_kills >= restarts && other == 0.0 {
            eprintln!(
                "kubelet restartCount {restarts}; the daemon: {counted} OOMKilled restarts, \
                 {oom_kills} OOM kills"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon counted {counted} OOMKilled restarts ({other} others) and {oom_kills} OOM \
             kills; the kubelet's restartCount is {restarts}; the pod:\n{}\nthe kubelet's log:\n{}\n\
             the daemon's log:\n{}",
            cluster.kubectl(&["describe", "pod", "oom", "-n", "default"], None),
            Cluster::log_tail("kubelet", 80),
            exporter.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    check_restart_paths(&cluster, &exporter);
    check_resized_limit(&cluster, &exporter);

    // The OOM kills written back: `kubectl describe pod` shows the exporter's Event
    // (events.k8s.io/v1, from selfheal-exporter) with the cause, the container and the
    // limit, which Kubernetes itself never records.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let described = cluster.kubectl(&["describe", "pod", "oom", "-n", "default"], None);
        let line = described
            .lines()
            .find(|line| line.contains("OOMKilled") && line.contains("selfheal-exporter"));
        if let Some(line) = line {
            eprintln!("kubectl describe pod oom: {}", line.trim());
            assert!(line.contains("Warning"), "{described}");
            assert!(line.contains("hog") && line.contains("48Mi"), "{described}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no OOMKilled Event from selfheal-exporter in kubectl describe:\n{described}\n\
             its log:\n{}",
            exporter.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Every write accepted by the real API server (which refuses a changed note).
    let written = exporter.sum("selfheal_events_written_total", &[]);
    assert!(written >= 1.0, "no Event written: {written}");
    let write_errors = exporter.sum("selfheal_event_write_errors_total", &[]);
    assert_eq!(
        write_errors,
        0.0,
        "Event writes refused; the daemon's log:\n{}",
        exporter.log()
    );
    drop(exporter);

    // The node agent: the forker's child is one process OOM kill, its container alive
    // and never restarted; the hog's OOM kills are its OOMKilled deaths, not process
    // kills as well.
    let forker = r#"container="forker""#;
    let deadline = Instant::now() + Duration::from_secs(60);
    while agent.sum("selfheal_container_process_oom_kills_total", &[forker]) < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the node agent counted no process OOM kill of the forker in 60 s; forker: {:#}; \
             its log:\n{}",
            pod_status(&cluster, "forker"),
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Past the agent's settle time (10 s): a kill counted twice would show by now.
    std::thread::sleep(Duration::from_secs(12));
    let status = pod_status(&cluster, "forker");
    assert_eq!(status["restartCount"], 0, "forker: {status:#}");
    assert!(status["state"]["running"].is_object(), "forker: {status:#}");
    let process_kills = agent.sum("selfheal_container_process_oom_kills_total", &[forker]);
    let hog_process_kills = agent.sum("selfheal_container_process_oom_kills_total", &[container]);
    let hog_oom_kills = agent.sum("selfheal_container_oom_kills_total", &[container]);
    let forker_oom_kills = agent.sum("selfheal_container_oom_kills_total", &[forker]);
    // + 0.0: the sum of no sample is -0.0.
    let reclassified = agent.sum("selfheal_container_oom_reclassified_total", &[]) + 0.0;
    eprintln!(
        "node agent: forker {process_kills} process OOM kills, {forker_oom_kills} container OOM \
         kills; hog {hog_process_kills} process OOM kills, {hog_oom_kills} container OOM kills; \
         {reclassified} reclassified"
    );
    assert_eq!(process_kills, 1.0, "the agent's log:\n{}", agent.log());
    assert_eq!(forker_oom_kills, 0.0);
    assert_eq!(hog_process_kills, 0.0, "the agent's log:\n{}", agent.log());
    assert!(hog_oom_kills >= 2.0, "the agent's log:\n{}", agent.log());
    // The incident of the forker's kill: a process kill, its victim from the kernel
    // log busybox's tail, the cgroup's limit.
    let (_, incidents) = agent.get("/api/v1/incidents").unwrap_or_default();
    let incidents: serde_json::Value = serde_json::from_str(&incidents).expect("incidents JSON");
    let forker_kill = incidents["incidents"]
        .as_array()
        .or_else(|| incidents.as_array())
        .into_iter()
        .flatten()
        .find(|incident| incident["kind"] == "oom_kill" && incident["container"] == "forker")
        .unwrap_or_else(|| panic!("no oom_kill incident of the forker: {incidents:#}"));
    assert_eq!(forker_kill["oom_kill"], "process", "{forker_kill:#}");
    assert_eq!(forker_kill["victims"][0]["name"], "tail", "{forker_kill:#}");
    assert_eq!(
        forker_kill["memory_limit_bytes"],
        48 << 20,
        "{forker_kill:#}"
    );
    drop(agent);

    // Tear down explicitly to check it works; the guard's second down is then a no-op.
    cluster.down_and_check();
}
