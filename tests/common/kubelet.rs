//! The lab's kubelet for end-to-end tests: real processes in memory cgroups, OOM-killed by
//! the kernel, and the pods that run a shell script under a memory limit.

use std::path::PathBuf;
use std::time::Duration;

use selfheal_lab::kubelet::{CgroupStatus, Kubelet, KubeletConfig, KubeletHandle};
use selfheal_lab::testkit::tools;
use serde_json::json;

use super::Cluster;

/// The lab's binary (it runs the grade API as a pod's container), built next to ours.
pub fn lab_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_selfheal-exporter")).with_file_name("selfheal-lab")
}

pub async fn kubelet(cluster: &Cluster, backoff_base: Duration) -> Option<KubeletHandle> {
    let mut config = KubeletConfig::for_url(&cluster.lab.url()).expect("kubelet config");
    config.backoff.base = backoff_base;
    config.lab_binary = lab_binary();
    let kubelet = Kubelet::start(config).await.expect("kubelet starts");
    if let CgroupStatus::Unavailable { reason } = &kubelet.status().cgroups {
        // Fails here unless skipping was asked for.
        tools::require(
            &format!("a memory cgroup ({reason})"),
            false,
            "let the kernel OOM-kill the grade API",
            tools::MEMORY_CGROUP,
        );
        kubelet.shutdown().await;
        return None;
    }
    Some(kubelet)
}

pub fn shell_pod(
    name: &str,
    script: &str,
    memory: &str,
    extra: serde_json::Value,
) -> serde_json::Value {
    let mut container = json!({
        "name": "main",
        "image": "selfheal-lab/shell",
        "command": ["sh", "-c", script],
        "resources": {"limits": {"memory": memory}}
    });
    if let (Some(container), Some(extra)) = (container.as_object_mut(), extra.as_object()) {
        container.extend(extra.clone());
    }
    json!({
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [container]}
    })
}
