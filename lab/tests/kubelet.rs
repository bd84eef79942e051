//! The emulated kubelet against the lab API server: real processes, real OOM kills in
//! memory cgroups, restart back-off, probes, Events and clean-up. Pod status is read
//! back through the store. Tests that need cgroups run as root on a machine with a memory
//! controller; elsewhere they fail, unless `SKIP_MISSING_TOOLS=1` asks them to
//! skip (and be listed: `selfheal_lab::testkit::tools`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use selfheal_lab::apiserver::{ApiServer, ApiServerConfig, EVENTS, NAMESPACES, PODS, Store};
use selfheal_lab::kubelet::{BackoffConfig, CgroupStatus, Kubelet, KubeletConfig, KubeletHandle};
use selfheal_lab::testkit::tools;
use serde_json::{Value, json};

const TEST_LIMIT: Duration = Duration::from_secs(45);

async fn lab() -> ApiServer {
    ApiServer::start(ApiServerConfig {
        bookmark_interval: Duration::from_millis(200),
        ..Default::default()
    })
    .await
    .expect("start lab")
}

async fn kubelet(lab: &ApiServer) -> KubeletHandle {
    let mut config = KubeletConfig::for_url(&lab.url()).expect("config");
    config.lab_binary = PathBuf::from(env!("CARGO_BIN_EXE_selfheal-lab"));
    config.backoff = BackoffConfig {
        base: Duration::from_secs(1),
        cap: Duration::from_secs(8),
        reset: Duration::from_secs(600),
    };
    config.max_stop_grace = Duration::from_secs(2);
    Kubelet::start(config).await.expect("start kubelet")
}

/// `Some(reason)` when memory cgroups are unavailable and skipping was asked for (the
/// test then skips); fails the test when they are unavailable otherwise.
fn no_cgroups(k: &KubeletHandle, purpose: &str) -> Option<String> {
    match &k.status().cgroups {
        CgroupStatus::Enabled { .. } => None,
        CgroupStatus::Unavailable { reason } => {
            tools::require(
                &format!("a memory cgroup ({reason})"),
                false,
                purpose,
                tools::MEMORY_CGROUP,
            );
            Some(reason.clone())
        }
    }
}

fn namespace(store: &Store, ns: &str) {
    store
        .create(&NAMESPACES, "", json!({"metadata": {"name": ns}}))
        .expect("namespace");
}

fn shell_pod(store: &Store, ns: &str, name: &str, container: Value, extra_spec: Value) {
    let mut c = json!({"name": "c", "image": "selfheal-lab/shell:1"});
    merge(&mut c, container);
    let mut spec = json!({"containers": [c], "terminationGracePeriodSeconds": 1});
    merge(&mut spec, extra_spec);
    store
        .create(&PODS, ns, json!({"metadata": {"name": name}, "spec": spec}))
        .expect("create pod");
}

fn merge(target: &mut Value, patch: Value) {
    if let (Some(t), Value::Object(p)) = (target.as_object_mut(), patch) {
        for (k, v) in p {
            t.insert(k, v);
        }
    }
}

fn cs(pod: &Value) -> &Value {
    &pod["status"]["containerStatuses"][0]
}

/// Polls the pod every 20 ms until `pred` holds; panics with the last status after `within`.
async fn wait_for(
    store: &Store,
    ns: &str,
    name: &str,
    within: Duration,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let pod = store.get(&PODS, ns, name).unwrap_or(Value::Null);
        if pred(&pod) {
            return pod;
        }
        if Instant::now() > deadline {
            panic!(
                "timed out waiting for {what}; status: {:#}",
                pod.get("status").unwrap_or(&Value::Null)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn events(store: &Store, ns: &str) -> Vec<Value> {
    store.items(&EVENTS, Some(ns))
}

async fn wait_event(store: &Store, ns: &str, reason: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        if let Some(e) = events(store, ns)
            .into_iter()
            .find(|e| e["reason"] == reason)
        {
            return e;
        }
        if Instant::now() > deadline {
            let all: Vec<String> = events(store, ns)
                .iter()
                .map(|e| format!("{} {}", e["reason"], e["message"]))
                .collect();
            panic!("no {reason} Event; events: {all:#?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Pids of processes whose environment has `POD_NAMESPACE=<ns>` (containers and
/// anything they started).
fn processes_of(ns: &str) -> Vec<u32> {
    let needle = format!("POD_NAMESPACE={ns}");
    let mut pids = vec![];
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(env) = std::fs::read(e.path().join("environ")) else {
            continue;
        };
        if env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()) {
            // zombies (already dead, not yet reaped) do not count as running
            let state = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let zombie = state
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z'));
            if !zombie {
                pids.push(pid);
            }
        }
    }
    pids
}

/// Direct children of this process that are not zombies.
/// Cgroup directories under `dir` that have none below them (the containers' cgroups).
fn leaf_cgroups(dir: &std::path::Path) -> usize {
    let subdirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    subdirs.iter().map(|sub| leaf_cgroups(sub).max(1)).sum()
}

fn own_children() -> Vec<u32> {
    let me = std::process::id().to_string();
    let mut out = vec![];
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        if let Some((_, rest)) = stat.rsplit_once(") ") {
            let f: Vec<&str> = rest.split(' ').collect();
            if f.get(1) == Some(&me.as_str()) && f.first() != Some(&"Z") {
                out.push(pid);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_kill_is_reported_and_restarted() {
    let lab = lab().await;
    let k = kubelet(&lab).await;
    if no_cgroups(&k, "let the kernel OOM-kill a container").is_some() {
        k.shutdown().await;
        return;
    }
    tokio::time::timeout(TEST_LIMIT, async {
        let store = lab.store();
        namespace(store, "oom");
        let created = Instant::now();
        shell_pod(
            store,
            "oom",
            "hog",
            json!({
                "command": ["python3", "-c", "a=[]\nwhile True: a.append(' '*10**6)"],
                "resources": {"limits": {"memory": "32Mi"}},
            }),
            json!({}),
        );
        let dead = wait_for(
            store,
            "oom",
            "hog",
            Duration::from_secs(15),
            "first OOM kill",
            |p| {
                cs(p)["state"]["terminated"]["reason"] == "OOMKilled"
                    || cs(p)["lastState"]["terminated"]["reason"] == "OOMKilled"
            },
        )
        .await;
        eprintln!(
            "pod created → first OOMKilled visible: {:?}",
            created.elapsed()
        );
        let c = cs(&dead);
        if c["state"]["terminated"].is_object() {
            // right after the death: terminated, restartCount unchanged
            assert_eq!(c["restartCount"], 0, "{c:#}");
            assert_eq!(c["state"]["terminated"]["exitCode"], 137);
            assert!(
                c["state"]["terminated"]["containerID"]
                    .as_str()
                    .is_some_and(|id| id.starts_with("containerd://") && id.len() == 13 + 64)
            );
        }
        let one = wait_for(
            store,
            "oom",
            "hog",
            Duration::from_secs(10),
            "restartCount 1",
            |p| cs(p)["restartCount"] == 1,
        )
        .await;
        let last = &cs(&one)["lastState"]["terminated"];
        assert_eq!(last["reason"], "OOMKilled", "{:#}", cs(&one));
        assert_eq!(last["exitCode"], 137);
        let two = wait_for(
            store,
            "oom",
            "hog",
            Duration::from_secs(15),
            "restartCount 2",
            |p| cs(p)["restartCount"] == 2,
        )
        .await;
        let last2 = &cs(&two)["lastState"]["terminated"];
        assert_eq!(last2["reason"], "OOMKilled");
        assert_eq!(last2["exitCode"], 137);
        assert_ne!(last2["containerID"], last["containerID"]);
        assert_eq!(two["status"]["phase"], "Running");
        assert_eq!(two["status"]["qosClass"], "Burstable");
        eprintln!("pod created → restartCount 2: {:?}", created.elapsed());
        // the second death was followed by CrashLoopBackOff
        let backoff = wait_event(store, "oom", "BackOff", Duration::from_secs(5)).await;
        assert_eq!(backoff["type"], "Warning");
        assert_eq!(backoff["involvedObject"]["fieldPath"], "spec.containers{c}");
        assert_eq!(backoff["source"]["component"], "kubelet");
    })
    .await
    .expect("test timed out");
    k.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_exit_and_backoff_timing() {
    let lab = lab().await;
    let k = kubelet(&lab).await;
    tokio::time::timeout(TEST_LIMIT, async {
        let store = lab.store();
        namespace(store, "crash");
        shell_pod(
            store,
            "crash",
            "crasher",
            json!({"command": ["sh", "-c", "exit 1"]}),
            json!({}),
        );
        // Poll and timestamp every change of restartCount; note CrashLoopBackOff messages.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen_at: Vec<Instant> = vec![];
        let mut messages: Vec<String> = vec![];
        let mut last_count = -1i64;
        while Instant::now() < deadline {
            let pod = store.get(&PODS, "crash", "crasher").expect("pod");
            let c = cs(&pod);
            let count = c["restartCount"].as_i64().unwrap_or(-1);
            if count > last_count && count >= 0 {
                for _ in last_count.max(-1)..count {
                    seen_at.push(Instant::now());
                }
                last_count = count;
            }
            if c["state"]["waiting"]["reason"] == "CrashLoopBackOff" {
                let m = c["state"]["waiting"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                assert_eq!(c["lastState"]["terminated"]["reason"], "Error", "{c:#}");
                assert_eq!(c["lastState"]["terminated"]["exitCode"], 1);
                if !messages.contains(&m) {
                    messages.push(m);
                }
            }
            if count >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(last_count >= 3, "restartCount only reached {last_count}");
        // seen_at[i] = when restartCount became i (index 0 = first start)
        let gap = |i: usize| seen_at[i] - seen_at[i - 1];
        eprintln!("restart gaps: {:?} {:?} {:?}", gap(1), gap(2), gap(3));
        assert!(
            gap(1) < Duration::from_millis(900),
            "first restart is immediate: {:?}",
            gap(1)
        );
        assert!(
            gap(2) >= Duration::from_millis(900) && gap(2) < Duration::from_millis(2500),
            "second restart after 1 s back-off: {:?}",
            gap(2)
        );
        assert!(
            gap(3) >= Duration::from_millis(1900) && gap(3) < Duration::from_millis(3500),
            "third restart after 2 s back-off: {:?}",
            gap(3)
        );
        let uid = store.get(&PODS, "crash", "crasher").expect("pod")["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            messages.contains(&format!(
                "back-off 1s restarting failed container=c pod=crasher_crash({uid})"
            )),
            "{messages:?}"
        );
        assert!(
            messages.iter().any(|m| m.starts_with("back-off 2s ")),
            "{messages:?}"
        );
        let ev = wait_event(store, "crash", "BackOff", Duration::from_secs(2)).await;
        assert_eq!(
            ev["message"],
            format!("Back-off restarting failed container c in pod crasher_crash({uid})")
        );
        assert!(ev["count"].as_i64().unwrap_or(0) >= 2, "aggregated: {ev:#}");
        for reason in ["Scheduled", "Pulled", "Created", "Started"] {
            wait_event(store, "crash", reason, Duration::from_secs(2)).await;
        }
    })
    .await
    .expect("test timed out");
    k.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_liveness_probe_kills_and_restarts() {
    let lab = lab().await;
    let k = kubelet(&lab).await;
    tokio::time::timeout(TEST_LIMIT, async {
        let store = lab.store();
        namespace(store, "live");
        // Ignores SIGTERM: the kubelet must escalate to SIGKILL after the 1 s grace period.
        shell_pod(
            store,
            "live",
            "stubborn",
            json!({
                "command": ["sh", "-c", "trap '' TERM; while true; do sleep 0.1; done"],
                "livenessProbe": {"httpGet": {"path": "/healthz", "port": 1},
                                  "initialDelaySeconds": 1, "periodSeconds": 1,
                                  "failureThreshold": 1},
            }),
            json!({"terminationGracePeriodSeconds": 1}),
        );
        let killing = wait_event(store, "live", "Killing", Duration::from_secs(10)).await;
        let killed_at = Instant::now();
        assert_eq!(
            killing["message"],
            "Container c failed liveness probe, will be restarted"
        );
        assert_eq!(killing["involvedObject"]["fieldPath"], "spec.containers{c}");
        let unhealthy = wait_event(store, "live", "Unhealthy", Duration::from_secs(1)).await;
        let msg = unhealthy["message"].as_str().unwrap_or_default();
        assert!(
            msg.starts_with("Liveness probe failed: Get \"http://127.")
                && msg.contains("connection refused"),
            "{msg}"
        );
        let pod = wait_for(
            store,
            "live",
            "stubborn",
            Duration::from_secs(10),
            "restart",
            |p| cs(p)["restartCount"].as_i64().unwrap_or(0) >= 1,
        )
        .await;
        let grace_seen = killed_at.elapsed();
        let last = &cs(&pod)["lastState"]["terminated"];
        assert_eq!(last["reason"], "Error");
        assert_eq!(last["exitCode"], 137, "SIGKILL after the grace period");
        eprintln!("Killing Event → restarted: {grace_seen:?}");
        assert!(grace_seen >= Duration::from_millis(500), "{grace_seen:?}");
    })
    .await
    .expect("test timed out");
    k.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_probe() {
    let lab = lab().await;
    let k = kubelet(&lab).await;
    tokio::time::timeout(TEST_LIMIT, async {
        let store = lab.store();
        namespace(store, "ready");
        // Both pods listen on port 8080, each on its own pod IP.
        for (name, path) in [("good", "/"), ("bad", "/no-such-page")] {
            shell_pod(
                store,
                "ready",
                name,
                json!({
                    "command": ["sh", "-c", "exec python3 -m http.server 8080 --bind $POD_IP"],
                    "ports": [{"containerPort": 8080, "name": "http"}],
                    "readinessProbe": {"httpGet": {"path": path, "port": "http"}, "periodSeconds": 1},
                }),
                json!({}),
            );
        }
        let good = wait_for(store, "ready", "good", Duration::from_secs(15), "ready", |p| {
            cs(p)["ready"] == true
        })
        .await;
        let conds = good["status"]["conditions"].as_array().cloned().unwrap_or_default();
        for t in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
            let c = conds.iter().find(|c| c["type"] == t).unwrap_or(&Value::Null);
            assert_eq!(c["status"], "True", "{t}: {conds:#?}");
            assert!(c["lastTransitionTime"].as_str().is_some_and(|s| s.len() == 20));
        }
        let ip = good["status"]["podIP"].as_str().unwrap_or_default().to_string();
        assert!(ip.starts_with("127.") && ip != "127.0.0.1", "{ip}");
        assert_eq!(good["status"]["podIPs"][0]["ip"], ip.as_str());
        assert_eq!(good["status"]["phase"], "Running");
        assert_eq!(cs(&good)["started"], true);
        // the bad one runs but stays unready
        let bad = wait_for(store, "ready", "bad", Duration::from_secs(10), "running", |p| {
            cs(p)["state"]["running"].is_object()
        })
        .await;
        assert_ne!(bad["status"]["podIP"], good["status"]["podIP"]);
        // (until the server listens the probe fails with "connection refused")
        let deadline = Instant::now() + Duration::from_secs(10);
        while !events(store, "ready").iter().any(|e| {
            e["reason"] == "Unhealthy"
                && e["involvedObject"]["name"] == "bad"
                && e["message"] == "Readiness probe failed: HTTP probe failed with statuscode: 404"
        }) {
            assert!(Instant::now() < deadline, "no 404 Unhealthy Event: {:#?}", events(store, "ready"));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let bad = store.get(&PODS, "ready", "bad").expect("pod");
        assert_eq!(cs(&bad)["ready"], false);
        assert_eq!(cs(&bad)["restartCount"], 0);
        let ready = bad["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready").cloned())
            .unwrap_or(Value::Null);
        assert_eq!(ready["status"], "False");
        assert_eq!(ready["reason"], "ContainersNotReady");
    })
    .await
    .expect("test timed out");
    k.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_image_and_bad_specs_become_status() {
    let lab = lab().await;
    let k = kubelet(&lab).await;
    tokio::time::timeout(TEST_LIMIT, async {
        let store = lab.store();
        namespace(store, "bad");
        store
            .create(
                &PODS,
                "bad",
                json!({"metadata": {"name": "nginx"},
                "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}),
            )
            .expect("pod");
        shell_pod(
            store,
            "bad",
            "limit",
            json!({"command": ["true"],
            "resources": {"limits": {"memory": "lots"}}}),
            json!({}),
        );
        shell_pod(
            store,
            "bad",
            "noexec",
            json!({"command": ["/no/such/binary"]}),
            json!({}),
        );
        let p = wait_for(
            store,
            "bad",
            "nginx",
            Duration::from_secs(5),
            "ImagePullBackOff",
            |p| cs(p)["state"]["waiting"]["reason"] == "ImagePullBackOff",
        )
        .await;
        assert_eq!(p["status"]["phase"], "Pending");
        assert_eq!(cs(&p)["restartCount"], 0);
        // Events are posted on their own path, so the Failed event may trail the status.
        let pulled_failed = |e: &Value| {
            e["reason"] == "Failed"
                && e["involvedObject"]["name"] == "nginx"
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("Failed to pull image \"nginx:1.27\""))
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !events(store, "bad").iter().any(pulled_failed) {
            assert!(
                Instant::now() < deadline,
                "no Failed event: {:#?}",
                events(store, "bad")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        wait_for(
            store,
            "bad",
            "limit",
            Duration::from_secs(5),
            "config error",
            |p| cs(p)["state"]["waiting"]["reason"] == "CreateContainerConfigError",
        )
        .await;
        let p = wait_for(
            store,
            "bad",
            "noexec",
            Duration::from_secs(5),
            "StartError",
            |p| {
                cs(p)["lastState"]["terminated"]["reason"] == "StartError"
                    || cs(p)["state"]["terminated"]["reason"] == "StartError"
            },
        )
        .await;
        assert_eq!(p["status"]["phase"], "Running", "restartPolicy Always");
    })
    .await
    .expect("test timed out");
    k.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grade_api_image_runs_the_lab_grade_api() {
    let lab = lab().await;
    let k = kubelet(&lab).await;
    tokio::time::timeout(TEST_LIMIT, async {
        let store = lab.store();
        namespace(store, "grade-submission");
        store
            .create(
                &PODS,
                "grade-submission",
                json!({
                    "metadata": {"name": "grade-submission-api"},
                    "spec": {"containers": [{
                        "name": "grade-submission-api",
                        "image": "rslim087/kubernetes-course-grade-submission-api:stateful",
                        "ports": [{"containerPort": 3000}],
                        "resources": {"limits": {"memory": "64Mi"}},
                        "readinessProbe": {"tcpSocket": {"port": 3000}, "periodSeconds": 1},
                    }]}
                }),
            )
            .expect("pod");
        let p = wait_for(
            store,
            "grade-submission",
            "grade-submission-api",
            Duration::from_secs(15),
            "grade API ready",
            |p| cs(p)["ready"] == true,
        )
        .await;
        assert_eq!(cs(&p)["restartCount"], 0, "{:#}", cs(&p));
        let ip = p["status"]["podIP"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let conn = tokio::net::TcpStream::connect((ip.as_str(), 3000)).await;
        assert!(conn.is_ok(), "grade API listens on {ip}:3000");
    })
    .await
    .expect("test timed out");
    k.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_and_shutdown_leave_nothing_behind() {
    let lab = lab().await;
    let k = kubelet(&lab).await;
    let root = match &k.status().cgroups {
        CgroupStatus::Enabled { root, .. } => Some(root.clone()),
        // The cgroup checks only; the rest of the test runs without.
        CgroupStatus::Unavailable { .. } => {
            no_cgroups(&k, "check that pod cgroups are removed");
            None
        }
    };
    let children = tokio::time::timeout(TEST_LIMIT, async {
        let store = lab.store();
        namespace(store, "cleanup");
        // a container with a background grandchild, and one that ignores SIGTERM
        shell_pod(
            store,
            "cleanup",
            "forker",
            json!({
            "command": ["sh", "-c", "sleep 300 & sleep 300"],
            "resources": {"limits": {"memory": "64Mi"}}}),
            json!({}),
        );
        shell_pod(
            store,
            "cleanup",
            "stubborn",
            json!({
            "command": ["sh", "-c", "trap '' TERM; while true; do sleep 0.1; done"]}),
            json!({}),
        );
        shell_pod(
            store,
            "cleanup",
            "deleted",
            json!({"command": ["sleep", "300"]}),
            json!({}),
        );
        for name in ["forker", "stubborn", "deleted"] {
            wait_for(
                store,
                "cleanup",
                name,
                Duration::from_secs(10),
                "running",
                |p| cs(p)["state"]["running"].is_object(),
            )
            .await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            processes_of("cleanup").len() >= 4,
            "{:?}",
            processes_of("cleanup")
        );
        if let Some(root) = &root {
            // kubepods[/<qos>]/pod<uid>/<container id>: the leaves are the containers.
            assert_eq!(
                leaf_cgroups(root),
                3,
                "one cgroup per container under {}",
                root.display()
            );
        }
        // deleting a pod stops its processes
        let before = processes_of("cleanup").len();
        store.delete(&PODS, "cleanup", "deleted").expect("delete");
        let deadline = Instant::now() + Duration::from_secs(5);
        while processes_of("cleanup").len() >= before && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(processes_of("cleanup").len(), before - 1);
        let stop = wait_event(store, "cleanup", "Killing", Duration::from_secs(2)).await;
        assert_eq!(stop["message"], "Stopping container c");
        // the container processes are children of this (the kubelet's) process
        let children: Vec<u32> = own_children()
            .into_iter()
            .filter(|p| processes_of("cleanup").contains(p))
            .collect();
        assert_eq!(children.len(), 2, "{children:?}");
        children
    })
    .await
    .expect("test timed out");
    let t = Instant::now();
    k.shutdown().await;
    eprintln!("shutdown took {:?}", t.elapsed());
    assert!(
        processes_of("cleanup").is_empty(),
        "left behind: {:?}",
        processes_of("cleanup")
    );
    let alive: Vec<&u32> = children
        .iter()
        .filter(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
        .collect();
    assert!(
        alive.is_empty(),
        "children of the kubelet still exist: {alive:?}"
    );
    if let Some(root) = root {
        assert!(!root.exists(), "{} still exists", root.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_cgroups_the_kubelet_says_so() {
    let lab = lab().await;
    let mut config = KubeletConfig::for_url(&lab.url()).expect("config");
    config.use_cgroups = false;
    let k = Kubelet::start(config).await.expect("start");
    assert!(
        matches!(&k.status().cgroups, CgroupStatus::Unavailable { reason } if !reason.is_empty())
    );
    k.shutdown().await;
}
