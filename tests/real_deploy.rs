//! Deploy for real: on the real cluster (`selfheal-lab cluster up`: upstream API server
//! with RBAC and the PodSecurity admission plugin, kubelet, containerd, kube-proxy),
//! `kubectl apply -k deploy/kustomize/base`, unchanged, runs the exporter's image (built
//! by `cluster up` from the `selfheal-exporter` binary this test was built with, under the
//! base's image name `selfheal-exporter:<version>`):
//! - its namespace enforces Pod Security `restricted` (the real admission plugin refuses
//!   a privileged pod there) and the exporter's pod was admitted under it;
//! - it reaches the API server through the `kubernetes` Service (kube-proxy's rules)
//!   with its service-account token (in-cluster config) and turns ready;
//! - its RBAC is read-only: the real authorizer refuses its service account a write;
//! - it counts the restarts of a crashing pod in another namespace as the kubelet's
//!   `restartCount`, and the OOM kills of a pod killed by the kernel under its 48Mi limit;
//! - Debian's Prometheus, scraping the pod on its IP with the shipped rules
//!   (`deploy/rules/selfheal-rules.yaml`, unchanged), fires `SelfhealRepeatedOOMKills`
//!   at the third real kernel OOM kill.
//!
//! Then the Helm chart, leader-elected with two replicas, in a restricted namespace of its
//! own: one Lease holder exports, the standby is ready with no workload series, and
//! deleting the holder's pod hands the Lease over (SIGTERM releases it); the new leader
//! counts the restarts of a pod created after it took over. Then the leader-elected
//! kustomize overlay: two replicas in the restricted namespace, one Lease holder exporting.
//!
//! Needs root, the upstream binaries (`lab/upstream/build.sh`) and the workspace's
//! binaries (`cargo test --workspace` builds `selfheal-lab` beside this crate's).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::prometheus::Prometheus;
use common::{read, repo};
use selfheal_lab::testkit::real_cluster::{
    TestCluster, assert_root, get, sum_samples, upstream_bin,
};
use selfheal_lab::testkit::tools::{HELM, PROMETHEUS};

const NAMESPACE: &str = "selfheal-system";
const SERVICE_ACCOUNT: &str = "system:serviceaccount:selfheal-system:selfheal-exporter";

/// The lab binary next to the daemon's (its `cluster up` packs that daemon as the image).
fn lab() -> PathBuf {
    let lab = Path::new(env!("CARGO_BIN_EXE_selfheal-exporter")).with_file_name("selfheal-lab");
    assert!(
        lab.is_file(),
        "{} is missing: build the workspace first (cargo test --workspace builds it)",
        lab.display()
    );
    lab
}

/// Restarts by exit (exit code 3 after 2 s) and OOM kills under 48Mi, in a namespace
/// of their own.
const WORKLOADS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: workloads}
---
apiVersion: v1
kind: Pod
metadata: {name: crasher, namespace: workloads}
spec:
  containers:
  - name: crasher
    image: selfheal-lab/busybox:1
    imagePullPolicy: Never
    command: ["sh", "-c", "sleep 2; exit 3"]
---
apiVersion: v1
kind: Pod
metadata: {name: hog, namespace: workloads}
spec:
  containers:
  - name: eater
    image: selfheal-lab/busybox:1
    imagePullPolicy: Never
    command: ["sh", "-c", "sleep 1; tail /dev/zero"]
    resources:
      requests: {memory: 48Mi}
      limits: {memory: 48Mi}
"#;

/// A crashing pod created after the Lease changed hands.
const AFTER_HANDOVER: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: after-handover, namespace: workloads}
spec:
  containers:
  - name: after
    image: selfheal-lab/busybox:1
    imagePullPolicy: Never
    command: ["sh", "-c", "sleep 2; exit 3"]
"#;

/// A pod the restricted profile refuses (privileged).
const PRIVILEGED_POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: privileged, namespace: selfheal-system}
spec:
  containers:
  - name: shell
    image: selfheal-lab/busybox:1
    imagePullPolicy: Never
    command: ["sleep", "3600"]
    securityContext: {privileged: true}
"#;

/// Polls `check` every 500 ms for `secs`; fails with `what` and `context()`.
fn wait_until(
    what: &str,
    secs: u64,
    mut check: impl FnMut() -> bool,
    context: impl Fn() -> String,
) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check() {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {secs} s\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn restart_count(cluster: &TestCluster, pod: &str) -> f64 {
    cluster.pod("workloads", pod)["status"]["containerStatuses"][0]["restartCount"]
        .as_f64()
        .unwrap_or(0.0)
}

#[test]
fn kustomize_and_helm_installs_run_in_the_real_cluster_under_restricted_pod_security() {
    assert_root();
    let prometheus_binary = PROMETHEUS
        .require_path("Prometheus scraping the in-cluster exporter")
        .expect("prometheus");
    let cluster = TestCluster::up(&lab(), upstream_bin());
    let images = cluster.kubectl(
        &[
            "get",
            "node",
            "-o",
            "jsonpath={.items[0].status.images[*].names}",
        ],
        None,
    );
    let image = format!(
        "docker.io/library/selfheal-exporter:{}",
        env!("CARGO_PKG_VERSION")
    );
    assert!(images.contains(&image), "the node has no {image}: {images}");

    let base = repo("deploy/kustomize/base");
    let base = base.to_string_lossy();
    cluster.kubectl(&["apply", "-k", &base], None);
    cluster.kubectl(&["apply", "-f", "-"], Some(WORKLOADS));
    let rollout = cluster.try_kubectl(
        &[
            "rollout",
            "status",
            "deployment/selfheal-exporter",
            "-n",
            NAMESPACE,
            "--timeout=180s",
        ],
        None,
    );
    let exporter_pod = || -> Value {
        let pods: Value = serde_json::from_str(&cluster.kubectl(
            &[
                "get",
                "pods",
                "-n",
                NAMESPACE,
                "-l",
                "app.kubernetes.io/name=selfheal-exporter",
                "-o",
                "json",
            ],
            None,
        ))
        .expect("pods JSON");
        pods["items"][0].clone()
    };
    assert!(
        rollout.status.success(),
        "the exporter's Deployment did not roll out: {}\n{}\nthe pod:\n{}\nits log:\n{}",
        String::from_utf8_lossy(&rollout.stderr),
        String::from_utf8_lossy(&rollout.stdout),
        String::from_utf8_lossy(
            &cluster
                .try_kubectl(&["describe", "pods", "-n", NAMESPACE], None)
                .stdout
        ),
        String::from_utf8_lossy(
            &cluster
                .try_kubectl(
                    &["logs", "-n", NAMESPACE, "deployment/selfheal-exporter"],
                    None
                )
                .stdout
        )
    );

    // Pod Security: the namespace enforces restricted, the real admission plugin refuses
    // what it forbids there, and admitted the exporter's pod.
    let namespace: Value = serde_json::from_str(
        &cluster.kubectl(&["get", "namespace", NAMESPACE, "-o", "json"], None),
    )
    .expect("namespace JSON");
    assert_eq!(
        namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "restricted",
        "{namespace:#}"
    );
    let refused = cluster.try_kubectl(&["apply", "-f", "-"], Some(PRIVILEGED_POD));
    let refusal = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && refusal.contains("violates PodSecurity \"restricted:latest\""),
        "a privileged pod was not refused in {NAMESPACE}: {refusal}"
    );
    eprintln!("PodSecurity: {}", refusal.trim());
    let pod = exporter_pod();
    assert_eq!(pod["spec"]["serviceAccountName"], "selfheal-exporter");
    assert_eq!(
        pod["spec"]["containers"][0]["image"], "selfheal-exporter:0.1.0",
        "the base's image, unchanged"
    );

    // Ready on its pod IP: it listed the cluster with its service-account token through
    // the `kubernetes` Service.
    let ip = pod["status"]["podIP"].as_str().expect("pod IP").to_owned();
    let addr: SocketAddr = format!("{ip}:9964").parse().expect("pod address");
    assert_eq!(
        get(addr, "/readyz").map(|(status, _)| status),
        Some(200),
        "/readyz of the exporter's pod"
    );

    // RBAC: read-only. The real authorizer refuses the exporter's identity a write.
    let write = cluster.try_kubectl(
        &[
            "create",
            "configmap",
            "written-by-the-exporter",
            "-n",
            "workloads",
            "--as",
            SERVICE_ACCOUNT,
        ],
        None,
    );
    let forbidden = String::from_utf8_lossy(&write.stderr);
    assert!(
        !write.status.success() && forbidden.contains("cannot create resource"),
        "the exporter's service account could write: {forbidden}"
    );
    let can_list = cluster.kubectl(
        &[
            "auth",
            "can-i",
            "list",
            "pods",
            "-A",
            "--as",
            SERVICE_ACCOUNT,
        ],
        None,
    );
    assert_eq!(can_list.trim(), "yes");
    eprintln!("RBAC: {}", forbidden.trim());

    // The restarts of another namespace's pod, as the kubelet counts them.
    let metrics = || {
        get(addr, "/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default()
    };
    let crasher = [r#"namespace="workloads""#, r#"container="crasher""#];
    wait_until(
        "the in-cluster exporter counts the crasher's restarts as the kubelet does",
        180,
        || {
            let restarts = restart_count(&cluster, "crasher");
            restarts >= 2.0
                && sum_samples(&metrics(), "selfheal_container_restarts_total", &crasher)
                    == restarts
        },
        || {
            format!(
                "kubelet restartCount {}; the exporter's metrics:\n{}",
                restart_count(&cluster, "crasher"),
                metrics()
                    .lines()
                    .filter(|line| line.contains("crasher"))
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        },
    );
    let crasher_restarts = restart_count(&cluster, "crasher");
    eprintln!("crasher: kubelet restartCount {crasher_restarts} = the exporter's restarts");

    // Prometheus scrapes the pod with the shipped rules; the OOM alert fires at the third
    // kernel OOM kill.
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let rules = read("deploy/rules/selfheal-rules.yaml");
    let prometheus = runtime.block_on(Prometheus::start_scraping(
        &prometheus_binary,
        &addr.to_string(),
        Some(&rules),
        None,
    ));
    let deadline = Instant::now() + Duration::from_secs(240);
    let firing = loop {
        let alerts = runtime.block_on(prometheus.alerts());
        let firing = alerts.into_iter().find(|alert| {
            alert["labels"]["alertname"] == "SelfhealRepeatedOOMKills"
                && alert["labels"]["workload"] == "hog"
                && alert["state"] == "firing"
        });
        if let Some(alert) = firing {
            break alert;
        }
        assert!(
            Instant::now() < deadline,
            "SelfhealRepeatedOOMKills did not fire in 240 s; hog restartCount {}; the \
             exporter's OOM kills of hog: {}; Prometheus' log:\n{}",
            restart_count(&cluster, "hog"),
            sum_samples(
                &metrics(),
                "selfheal_container_oom_kills_total",
                &[r#"container="eater""#]
            ),
            prometheus.log()
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    let oom_kills = sum_samples(
        &metrics(),
        "selfheal_container_oom_kills_total",
        &[r#"namespace="workloads""#, r#"container="eater""#],
    );
    let hog = cluster.pod("workloads", "hog");
    let hog_status = &hog["status"]["containerStatuses"][0];
    eprintln!(
        "SelfhealRepeatedOOMKills firing: {}; the exporter: {oom_kills} OOM kills; the kubelet: \
         restartCount {}, last {}",
        firing["annotations"]["summary"],
        hog_status["restartCount"],
        hog_status["lastState"]["terminated"]["reason"]
    );
    assert!(oom_kills >= 3.0, "{oom_kills}");
    assert_eq!(hog_status["lastState"]["terminated"]["reason"], "OOMKilled");
    assert!(
        firing["annotations"]["description"]
            .as_str()
            .is_some_and(|text| text.contains("48Mi")),
        "{firing:#}"
    );
    drop(prometheus);

    check_helm_leader_election(&cluster);
    let helm = HELM.require_path("helm uninstall").expect("helm");
    let uninstall = std::process::Command::new(&helm)
        .args([
            "uninstall",
            "ha",
            "--namespace",
            "selfheal-ha",
            "--kubeconfig",
        ])
        .arg(cluster.kubeconfig())
        .output()
        .expect("running helm uninstall");
    assert!(
        uninstall.status.success(),
        "helm uninstall: {}",
        String::from_utf8_lossy(&uninstall.stderr)
    );
    check_leader_elected_overlay(&cluster);
    cluster.down_and_check();
}

/// The pods of a label selector in a namespace, as JSON objects.
fn pods(cluster: &TestCluster, namespace: &str, selector: &str) -> Vec<Value> {
    let list: Value = serde_json::from_str(&cluster.kubectl(
        &["get", "pods", "-n", namespace, "-l", selector, "-o", "json"],
        None,
    ))
    .expect("pods JSON");
    list["items"].as_array().cloned().unwrap_or_default()
}

/// The metrics address of a running pod, if it has an IP.
fn metrics_addr(pod: &Value) -> Option<SocketAddr> {
    format!("{}:9964", pod["status"]["podIP"].as_str()?)
        .parse()
        .ok()
}

/// The holder of a Lease (empty if none).
fn lease_holder(cluster: &TestCluster, namespace: &str, lease: &str) -> String {
    let out = cluster.try_kubectl(
        &[
            "get",
            "lease",
            lease,
            "-n",
            namespace,
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ],
        None,
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Waits until the two replicas of `selector` are ready, one holds `lease` and only that
/// one exports the crasher's series; returns its name.
fn one_exporting_leader(
    cluster: &TestCluster,
    namespace: &str,
    selector: &str,
    lease: &str,
) -> String {
    let exporting = |pod: &Value| {
        metrics_addr(pod)
            .and_then(|addr| get(addr, "/metrics"))
            .is_some_and(|(_, body)| body.contains("container=\"crasher\""))
    };
    let ready = |pod: &Value| {
        metrics_addr(pod)
            .and_then(|addr| get(addr, "/readyz"))
            .map(|(status, _)| status)
            == Some(200)
    };
    let mut holder = String::new();
    wait_until(
        "one Lease holder of two ready replicas, the only one exporting",
        90,
        || {
            let all = pods(cluster, namespace, selector);
            holder = lease_holder(cluster, namespace, lease);
            all.len() == 2
                && all.iter().all(ready)
                && all
                    .iter()
                    .all(|pod| exporting(pod) == (pod["metadata"]["name"] == holder.as_str()))
        },
        || {
            format!(
                "holder {:?}; pods {:#}",
                lease_holder(cluster, namespace, lease),
                Value::from(pods(cluster, namespace, selector))
            )
        },
    );
    holder
}

/// The leader-elected kustomize overlay in the base's namespace (gone with the base,
/// created again by the overlay): two replicas, one Lease holder exporting.
fn check_leader_elected_overlay(cluster: &TestCluster) {
    cluster.kubectl(
        &[
            "wait",
            "--for=delete",
            &format!("namespace/{NAMESPACE}"),
            "--timeout=180s",
        ],
        None,
    );
    let overlay = repo("deploy/kustomize/overlays/leader-elected");
    cluster.kubectl(&["apply", "-k", &overlay.to_string_lossy()], None);
    let holder = one_exporting_leader(
        cluster,
        NAMESPACE,
        "app.kubernetes.io/name=selfheal-exporter",
        "selfheal-exporter-prober",
    );
    eprintln!(
        "overlays/leader-elected: two replicas ready in the restricted {NAMESPACE}, Lease held \
         by {holder}, the standby exports nothing"
    );
}

/// The Helm chart, leader-elected (two replicas), installed into a restricted namespace
/// of its own: exactly the Lease holder exports workload series, the standby is ready
/// with none, and deleting the holder's pod hands the Lease to the standby, which then
/// counts a restart of the crasher.
fn check_helm_leader_election(cluster: &TestCluster) {
    const HA: &str = "selfheal-ha";
    const LEASE: &str = "ha-selfheal-exporter-prober";
    let helm = HELM
        .require_path("installing the chart on the real cluster")
        .expect("helm");
    // The kustomize install goes first: one exporter at a time, and its ClusterRole's name.
    cluster.kubectl(
        &[
            "delete",
            "-k",
            &repo("deploy/kustomize/base").to_string_lossy(),
            "--wait=false",
        ],
        None,
    );
    cluster.kubectl(&["create", "namespace", HA], None);
    cluster.kubectl(
        &[
            "label",
            "namespace",
            HA,
            "pod-security.kubernetes.io/enforce=restricted",
        ],
        None,
    );
    let install = std::process::Command::new(&helm)
        .args(["install", "ha"])
        .arg(repo("deploy/helm/selfheal-exporter"))
        .args(["--namespace", HA, "--kubeconfig"])
        .arg(cluster.kubeconfig())
        .args([
            "--set",
            "replicas=2",
            "--set",
            "leaderElection.enabled=true",
            "--wait",
            "--timeout",
            "180s",
        ])
        .output()
        .expect("running helm install");
    assert!(
        install.status.success(),
        "helm install: {}\n{}",
        String::from_utf8_lossy(&install.stderr),
        String::from_utf8_lossy(
            &cluster
                .try_kubectl(&["describe", "pods", "-n", HA], None)
                .stdout
        )
    );
    let selector = "app.kubernetes.io/instance=ha";
    let first = one_exporting_leader(cluster, HA, selector, LEASE);
    eprintln!("helm: two replicas ready, Lease held by {first}, the standby exports nothing");
    let holder = || lease_holder(cluster, HA, LEASE);

    let deleted = Instant::now();
    cluster.kubectl(&["delete", "pod", &first, "-n", HA, "--wait=false"], None);
    let mut second = String::new();
    wait_until(
        "the standby takes the Lease when the holder's pod is deleted",
        60,
        || {
            second = holder();
            !second.is_empty() && second != first
        },
        || format!("holder {:?}", holder()),
    );
    let handed_over = deleted.elapsed();
    let new_leader = || {
        pods(cluster, HA, selector)
            .into_iter()
            .find(|pod| pod["metadata"]["name"] == second.as_str())
            .unwrap_or(Value::Null)
    };
    // A pod created after the hand-over: the new leader counts its restarts as the
    // kubelet does (the crasher's back-off is minutes long by now).
    cluster.kubectl(&["apply", "-f", "-"], Some(AFTER_HANDOVER));
    let after = [r#"namespace="workloads""#, r#"container="after""#];
    let counted = || {
        metrics_addr(&new_leader())
            .and_then(|addr| get(addr, "/metrics"))
            .map(|(_, body)| sum_samples(&body, "selfheal_container_restarts_total", &after))
            .unwrap_or(0.0)
    };
    wait_until(
        "the new leader counts the restarts of a pod created after it took over",
        120,
        || {
            let restarts = restart_count(cluster, "after-handover");
            restarts >= 1.0 && counted() == restarts
        },
        || {
            format!(
                "kubelet restartCount {}, the new leader counted {}; its log:\n{}",
                restart_count(cluster, "after-handover"),
                counted(),
                String::from_utf8_lossy(
                    &cluster
                        .try_kubectl(&["logs", "-n", HA, &second], None)
                        .stdout
                )
            )
        },
    );
    eprintln!(
        "helm: Lease handed from {first} to {second} {:.1} s after the holder's pod was deleted; \
         the new leader counted the restarts of a pod created after it (restartCount {})",
        handed_over.as_secs_f64(),
        restart_count(cluster, "after-handover")
    );
}
