//! The node agent's DaemonSet (`deploy/kustomize/overlays/node-agent` and the chart's
//! `nodeAgent.enabled`): `selfheal-exporter node` with NODE_NAME from the downward API,
//! the host's `/sys/fs/cgroup` read-only as its only host access, non-root and locked
//! down otherwise, in a namespace of its own labelled `privileged` (the hostPath needs
//! it), read-only RBAC, and an embedded config that passes `check-config` and points at
//! the mount. The chart renders none of it by default.

use std::process::Command;

use selfheal_lab::testkit::tools::KUBECTL;
use serde_json::Value;

use crate::command::{path, run, write_temp};
use crate::render::{CHART, HELM_TEMPLATE, Render, chart, helm, helm_installed, render_from};
use crate::yaml::{kind, str_of};

const OVERLAY: &str = "deploy/kustomize/overlays/node-agent";

fn overlay() -> Option<Render> {
    KUBECTL.require("render the node agent's overlay").then(|| {
        let mut command = Command::new("kubectl");
        command.arg("kustomize").arg(path(OVERLAY));
        render_from(format!("kubectl kustomize {OVERLAY}"), run(command))
    })
}

fn chart_with_node_agent() -> Option<Render> {
    helm_installed().then(|| {
        let mut args = HELM_TEMPLATE.to_vec();
        args.extend(["--set", "nodeAgent.enabled=true"]);
        render_from(
            format!("helm template {CHART} --set nodeAgent.enabled=true"),
            helm(&args),
        )
    })
}

/// Everything the agent's pod must (and must not) be.
fn check_daemonset(render: &Render) {
    let what = &render.what;
    let daemonset = render.one("DaemonSet");
    let ns = str_of(daemonset, "/metadata/namespace");
    let namespace = render
        .of_kind("Namespace")
        .into_iter()
        .find(|n| str_of(n, "/metadata/name") == ns)
        .unwrap_or_else(|| panic!("{what}: the DaemonSet's namespace {ns} is not rendered"));
    assert_eq!(
        namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "privileged",
        "{what}: the hostPath needs the privileged Pod Security level"
    );
    let pod = &daemonset["spec"]["template"]["spec"];
    for host in ["hostNetwork", "hostPID", "hostIPC"] {
        assert!(pod[host].is_null() || pod[host] == false, "{what}: {host}");
    }
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{what}");
    let volumes = pod["volumes"].as_array().expect("volumes");
    let host_paths: Vec<&Value> = volumes
        .iter()
        .filter(|v| v["hostPath"].is_object())
        .collect();
    assert_eq!(
        host_paths.len(),
        1,
        "{what}: one hostPath, the cgroup hierarchy"
    );
    assert_eq!(
        host_paths[0]["hostPath"]["path"], "/sys/fs/cgroup",
        "{what}"
    );
    let cgroup_volume = str_of(host_paths[0], "/name");
    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "{what}");
    let container = &containers[0];
    assert_eq!(container["args"][0], "node", "{what}: the node subcommand");
    let node_name = container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["name"] == "NODE_NAME")
        .unwrap_or_else(|| panic!("{what}: no NODE_NAME"));
    assert_eq!(
        node_name["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName",
        "{what}"
    );
    let security = &container["securityContext"];
    assert_eq!(security["privileged"], false, "{what}");
    assert_eq!(security["allowPrivilegeEscalation"], false, "{what}");
    assert_eq!(security["readOnlyRootFilesystem"], true, "{what}");
    assert_eq!(security["runAsNonRoot"], true, "{what}");
    assert_eq!(
        security["capabilities"]["drop"],
        serde_json::json!(["ALL"]),
        "{what}"
    );
    assert!(
        security["capabilities"]["add"].is_null(),
        "{what}: no capability added"
    );
    let mount = container["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["name"] == cgroup_volume)
        .unwrap_or_else(|| panic!("{what}: the cgroup volume is not mounted"));
    assert_eq!(mount["readOnly"], true, "{what}: read-only");
    let mount_path = str_of(mount, "/mountPath");
    assert_ne!(
        mount_path, "/sys/fs/cgroup",
        "{what}: beside the container's own cgroup mount"
    );

    // Read-only RBAC on pods and events only.
    for role in render
        .of_kind("ClusterRole")
        .into_iter()
        .filter(|r| str_of(r, "/metadata/name").contains("node-agent"))
    {
        for rule in role["rules"].as_array().expect("rules") {
            for verb in rule["verbs"].as_array().expect("verbs") {
                assert!(
                    ["get", "list", "watch"].contains(&verb.as_str().unwrap_or("")),
                    "{what}: {verb} in {rule}"
                );
            }
            for resource in rule["resources"].as_array().expect("resources") {
                assert!(
                    ["pods", "events"].contains(&resource.as_str().unwrap_or("")),
                    "{what}: {resource}"
                );
            }
        }
    }

    // The embedded config: accepted, and reading the mount.
    let config_name = volumes
        .iter()
        .find_map(|v| v["configMap"]["name"].as_str())
        .expect("a config volume");
    let config_map = render
        .of_kind("ConfigMap")
        .into_iter()
        .find(|c| str_of(c, "/metadata/name") == config_name)
        .unwrap_or_else(|| panic!("{what}: no ConfigMap {config_name}"));
    let toml_text = str_of(config_map, "/data/selfheal.toml");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write_temp(&dir, "selfheal.toml", toml_text);
    let mut command = Command::new(env!("CARGO_BIN_EXE_selfheal-exporter"));
    command.arg("check-config").arg("--config").arg(&file);
    for (key, _) in std::env::vars() {
        if key.starts_with("SELFHEAL_") {
            command.env_remove(key);
        }
    }
    let ran = run(command);
    assert!(ran.status.success(), "{what}: check-config: {}", ran.said());
    let effective: toml::Table = ran.stdout.parse().expect("TOML");
    assert_eq!(
        effective["node"]["cgroup_root"].as_str(),
        Some(mount_path),
        "{what}: node.cgroup_root is where the host's hierarchy is mounted"
    );
}

#[test]
fn the_node_agent_overlay_is_a_locked_down_daemonset_in_a_privileged_namespace() {
    let Some(render) = overlay() else {
        return;
    };
    check_daemonset(&render);
    let kinds: Vec<&str> = render.objects.iter().map(kind).collect();
    assert!(
        !kinds.contains(&"Deployment") && !kinds.contains(&"Service"),
        "the overlay is only the agent: {kinds:?}"
    );
}

#[test]
fn the_chart_renders_the_node_agent_only_when_enabled() {
    let Some(render) = chart_with_node_agent() else {
        return;
    };
    check_daemonset(&render);
    // The exporter itself is still there, unchanged in kind.
    assert_eq!(render.of_kind("Deployment").len(), 1);
    let Some(defaults) = chart(None) else {
        return;
    };
    assert!(defaults.of_kind("DaemonSet").is_empty(), "off by default");
}

#[test]
fn the_charts_kmsg_option_adds_only_syslog_and_the_kernel_log_read_only() {
    if !helm_installed() {
        return;
    }
    let mut args = HELM_TEMPLATE.to_vec();
    args.extend(["--set", "nodeAgent.enabled=true,nodeAgent.kmsg=true"]);
    let render = render_from(
        format!("helm template {CHART} --set nodeAgent.enabled=true,nodeAgent.kmsg=true"),
        helm(&args),
    );
    let what = &render.what;
    let pod = &render.one("DaemonSet")["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let security = &container["securityContext"];
    assert_eq!(
        security["capabilities"]["add"],
        serde_json::json!(["SYSLOG"]),
        "{what}"
    );
    assert_eq!(
        security["capabilities"]["drop"],
        serde_json::json!(["ALL"]),
        "{what}"
    );
    assert_eq!(security["privileged"], false, "{what}");
    assert_eq!(security["readOnlyRootFilesystem"], true, "{what}");
    let host_paths: Vec<&str> = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .filter_map(|v| v["hostPath"]["path"].as_str())
        .collect();
    assert_eq!(host_paths, ["/sys/fs/cgroup", "/dev/kmsg"], "{what}");
    for mount in container["volumeMounts"].as_array().expect("mounts") {
        assert_eq!(mount["readOnly"], true, "{what}: {mount}");
    }
    let config = render
        .of_kind("ConfigMap")
        .into_iter()
        .find(|c| str_of(c, "/metadata/name").ends_with("node-agent-config"))
        .expect("the agent's config");
    assert!(
        str_of(config, "/data/selfheal.toml").contains("kmsg = true"),
        "{what}"
    );
}
