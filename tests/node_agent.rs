//! End to end on the lab kubelet: real processes in real memory cgroups (laid out as
//! the kubelet's cgroupfs driver with containerd lays them out, under the lab's root),
//! killed by the Linux kernel; `selfheal-exporter node` watches the lab node's pods and
//! reads their cgroups.
//!
//! - A shell starts a child that allocates past the limit: the kernel kills the child,
//!   the shell (the container) lives on, the kubelet reports nothing (restartCount 0):
//!   the agent counts one process OOM kill.
//!   With `node.kmsg` (the test runs as root), the incident names the victim (python3).
//! - A container whose own process is killed: the kubelet's `OOMKilled` restarts are
//!   counted as today, and not a second time as process OOM kills.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use selfheal_lab::apiserver::PODS;
use selfheal_lab::kubelet::{CgroupStatus, CgroupVersion, Kubelet, KubeletConfig};
use selfheal_lab::testkit::tools;
use serde_json::json;

const NODE: &str = "selfheal-lab-node";

fn lab_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_selfheal-exporter")).with_file_name("selfheal-lab")
}

/// `selfheal-exporter node` against the lab, with the lab kubelet's cgroup root as the
/// kubelet's `cgroupRoot`.
fn spawn_agent(cluster: &Cluster, kubelet_cgroup_root: &str) -> Daemon {
    let port = free_port();
    let config = cluster.dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\ncgroup_root = \"/sys/fs/cgroup\"\nkubelet_cgroup_root = \"{kubelet_cgroup_root}\"\n\
             reread_interval = \"500ms\"\nsettle = \"3s\"\nkmsg = true\n"
        ),
    )
    .expect("config written");
    let stderr = cluster.dir.path().join(format!("node-{port}.log"));
    let mut command = Command::new(env!("CARGO_BIN_EXE_selfheal-exporter"));
    command
        .arg("node")
        .arg("--kubeconfig")
        .arg(&cluster.kubeconfig)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--config")
        .arg(&config)
        .env("NODE_NAME", NODE)
        .env("RUST_LOG", "info,selfheal_exporter=debug");
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SELFHEAL_") {
            command.env_remove(key);
        }
    }
    let child = command
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).expect("log file"))
        .spawn()
        .expect("node agent starts");
    Daemon {
        child,
        port,
        stderr,
    }
}

fn pod(name: &str, script: &str) -> serde_json::Value {
    json!({
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "nodeName": NODE,
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "main",
                "image": "selfheal-lab/shell",
                "command": ["sh", "-c", script],
                "resources": {"limits": {"memory": "48Mi"}}
            }]
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_agent_counts_the_kill_of_a_child_and_no_container_kill_twice() {
    let cluster = Cluster::start().await;
    let mut config = KubeletConfig::for_url(&cluster.lab.url()).expect("kubelet config");
    config.backoff.base = Duration::from_millis(500);
    config.lab_binary = lab_binary();
    let kubelet = Kubelet::start(config).await.expect("kubelet starts");
    let (version, root) = match &kubelet.status().cgroups {
        CgroupStatus::Enabled { version, root } => (*version, root.clone()),
        CgroupStatus::Unavailable { reason } => {
            tools::require(
                &format!("a memory cgroup ({reason})"),
                false,
                "let the kernel OOM-kill a container's child process",
                tools::MEMORY_CGROUP,
            );
            kubelet.shutdown().await;
            return;
        }
    };
    let hierarchy = match version {
        CgroupVersion::V1 => Path::new("/sys/fs/cgroup/memory"),
        CgroupVersion::V2 => Path::new("/sys/fs/cgroup"),
    };
    let relative = root
        .strip_prefix(hierarchy)
        .expect("the lab's cgroup root is under the memory hierarchy");
    let agent = spawn_agent(&cluster, &format!("/{}", relative.display()));
    agent.wait_ready().await;

    // The shell's child allocates 200 MB under a 48Mi limit; the shell lives on.
    let child = "python3 -c 'b = bytearray(200 * 1024 * 1024)'; echo child gone; sleep 3600";
    let hog = "exec python3 -c \"a=[]\nwhile True: a.append(' ' * 10**6)\"";
    let store = cluster.lab.store();
    store.create(&PODS, NS, pod("forker", child)).expect("pod");
    store.create(&PODS, NS, pod("hog", hog)).expect("pod");

    let forker = [("workload", "forker"), ("container", "main")];
    let hog_labels = [("workload", "hog"), ("container", "main")];
    agent
        .wait_for("the child's OOM kill", |s| {
            s.get("selfheal_container_process_oom_kills_total", &forker) >= Some(1.0)
        })
        .await;
    agent
        .wait_for("two OOMKilled deaths of the hog", |s| {
            s.get("selfheal_container_oom_kills_total", &hog_labels) >= Some(2.0)
        })
        .await;
    // Longer than the settle time: any double count would show by now.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let scrape = agent.scrape().await;
    assert_eq!(
        scrape.get("selfheal_container_process_oom_kills_total", &forker),
        Some(1.0),
        "one child killed, counted once\n{}",
        agent.log()
    );
    assert_eq!(
        scrape.get("selfheal_container_oom_kills_total", &forker),
        Some(0.0),
        "the kubelet saw no container OOM kill"
    );
    assert_eq!(
        scrape.get("selfheal_container_process_oom_kills_total", &hog_labels),
        Some(0.0),
        "the hog's kills ended the container: counted as OOMKilled deaths only\n{}",
        agent.log()
    );
    assert_eq!(
        scrape.sum("selfheal_container_oom_reclassified_total", &[]),
        0.0,
        "the lab kubelet reports every OOM kill as OOMKilled"
    );
    assert!(scrape.get("selfheal_node_cgroups", &[]) >= Some(1.0));

    let pod = store.get(&PODS, NS, "forker").expect("pod");
    let status = &pod["status"]["containerStatuses"][0];
    assert_eq!(status["restartCount"], 0, "{status}");
    assert!(status["state"]["running"].is_object(), "{status}");

    let (code, incidents) = agent
        .get("/api/v1/incidents", None)
        .await
        .expect("incidents");
    assert_eq!(code, 200);
    assert!(
        incidents.contains("\"kind\":\"oom_kill\"")
            && incidents.contains("\"oom_kill\":\"process\""),
        "{incidents}"
    );
    assert!(
        incidents.contains(&format!("\"memory_limit_bytes\":{}", 48 << 20)),
        "{incidents}"
    );
    // node.kmsg (the test runs as root): the kernel log names the killed child.
    assert!(
        incidents.contains("\"victims\":[{\"name\":\"python3\",\"pid\":"),
        "{incidents}"
    );
    drop(agent);
    kubelet.shutdown().await;
}
