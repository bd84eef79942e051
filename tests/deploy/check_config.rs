//! 5. The embedded config passes `selfheal-exporter check-config`.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::command::{path, run, write_temp};
use crate::render::{BASE, all_renders};
use crate::rendering::leader_election_of;
use crate::sharding::shards_of;
use crate::yaml::{kind, name, namespace, str_of};

/// Runs `selfheal-exporter check-config --config FILE` with exactly `env` of the
/// SELFHEAL_* variables; returns the effective configuration (TOML).
fn check_config(file: &Path, env: &[(String, String)], what: &str) -> toml::Table {
    let mut command = Command::new(env!("CARGO_BIN_EXE_selfheal-exporter"));
    command.arg("check-config").arg("--config").arg(file);
    for (key, _) in std::env::vars() {
        if key.starts_with("SELFHEAL_")
            || ["POD_NAME", "POD_NAMESPACE", "HOSTNAME"].contains(&key.as_str())
        {
            command.env_remove(key);
        }
    }
    command.envs(env.iter().map(|(k, v)| (k, v)));
    let ran = run(command);
    assert!(
        ran.status.success(),
        "{what}: `selfheal-exporter check-config` rejects the config (exit {:?}):\n{}\n--- {}:\n{}",
        ran.status.code(),
        ran.said(),
        file.display(),
        std::fs::read_to_string(file).unwrap_or_default()
    );
    ran.stdout
        .parse::<toml::Table>()
        .unwrap_or_else(|e| panic!("{what}: check-config printed no TOML: {e}"))
}

#[test]
fn the_base_config_file_passes_check_config() {
    // Without any tool: the file the base's configMapGenerator embeds.
    let source = path(&format!("{BASE}/selfheal.toml"));
    let effective = check_config(&source, &[], "deploy/kustomize/base/selfheal.toml");
    assert_eq!(effective["listen"].as_str(), Some("0.0.0.0:9964"));
}

#[test]
fn the_deployed_config_passes_check_config() {
    for render in all_renders() {
        let what = &render.what;
        let deployment = render.workload();
        let pod = &deployment["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        // The file given with --config ...
        let args: Vec<&str> = container["args"]
            .as_array()
            .expect("args")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let at = args
            .iter()
            .position(|a| *a == "--config")
            .expect("--config");
        let config_path = Path::new(args[at + 1]);
        let (dir, file) = (
            config_path.parent().expect("dir").to_str().expect("utf-8"),
            config_path
                .file_name()
                .expect("file")
                .to_str()
                .expect("utf-8"),
        );
        // ... is mounted from a ConfigMap volume ...
        let mount = container["volumeMounts"]
            .as_array()
            .expect("volumeMounts")
            .iter()
            .find(|m| m["mountPath"] == dir)
            .unwrap_or_else(|| panic!("{what}: nothing mounted at {dir}"));
        let volume = pod["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find(|v| v["name"] == mount["name"])
            .expect("the mounted volume");
        let config_map_name = str_of(volume, "/configMap/name");
        let config_map = render
            .find("ConfigMap", namespace(deployment), config_map_name)
            .unwrap_or_else(|| panic!("{what}: ConfigMap {config_map_name} is not rendered"));
        // ... which holds that file, valid for the daemon with the container's environment.
        let content = config_map["data"][file]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: ConfigMap {config_map_name} has no key {file}"));
        // The pod's name as the kubelet would fill POD_NAME in through the downward API.
        let pod_name = match kind(deployment) {
            "StatefulSet" => format!("{}-0", name(deployment)),
            _ => format!("{}-5d8f7c9b4-x7k2p", name(deployment)),
        };
        let env: Vec<(String, String)> = container["env"]
            .as_array()
            .map(|vars| {
                vars.iter()
                    .filter_map(|v| {
                        let variable = v["name"].as_str()?.to_owned();
                        if let Some(value) = v["value"].as_str() {
                            return Some((variable, value.to_owned()));
                        }
                        let value = match v.pointer("/valueFrom/fieldRef/fieldPath")?.as_str()? {
                            "metadata.name" => pod_name.clone(),
                            "metadata.namespace" => namespace(deployment).to_owned(),
                            _ => return None,
                        };
                        Some((variable, value))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let dir = tempfile::tempdir().expect("tempdir");
        let written = write_temp(&dir, file, content);
        let effective = check_config(&written, &env, what);
        // Leader election as the manifests mean it: on exactly when the environment says
        // so, with the Lease the RBAC grants, in the pod's namespace, as the pod.
        let election = effective
            .get("leader_election")
            .unwrap_or_else(|| panic!("{what}: no [leader_election] in check-config"));
        match leader_election_of(render, deployment) {
            Some(lease) => {
                assert_eq!(election["enabled"].as_bool(), Some(true), "{what}");
                assert_eq!(
                    election["lease_name"].as_str(),
                    Some(lease.as_str()),
                    "{what}"
                );
                assert_eq!(
                    election["namespace"].as_str(),
                    Some(namespace(deployment)),
                    "{what}"
                );
                assert_eq!(
                    election["identity"].as_str(),
                    Some(pod_name.as_str()),
                    "{what}"
                );
            }
            None => assert_eq!(election["enabled"].as_bool(), Some(false), "{what}"),
        }
        // A StatefulSet's pods: the config with each pod's shard flags (--shard auto is the
        // pod's ordinal) passes too. check-config takes no flags; the SELFHEAL_SHARDING__*
        // variables stand in for them (flags win over the file and the environment alike).
        if let Some((total, ordinals)) = shards_of(render, deployment) {
            for ordinal in ordinals {
                let mut env = env.clone();
                env.push(("SELFHEAL_SHARDING__SHARD".into(), ordinal.to_string()));
                env.push(("SELFHEAL_SHARDING__TOTAL_SHARDS".into(), total.to_string()));
                let pod_what = format!("{what}, pod {}-{ordinal}", name(deployment));
                let effective = check_config(&written, &env, &pod_what);
                let sharding = effective
                    .get("sharding")
                    .and_then(toml::Value::as_table)
                    .unwrap_or_else(|| panic!("{pod_what}: no [sharding] in check-config"));
                assert_eq!(
                    (
                        sharding["shard"].as_integer(),
                        sharding["total_shards"].as_integer()
                    ),
                    (Some(i64::from(ordinal)), Some(i64::from(total))),
                    "{pod_what}: the effective sharding"
                );
            }
        }
        // It listens on the port the probes and the Service use.
        let listen = effective["listen"].as_str().expect("listen");
        let port = &container["ports"][0];
        assert_eq!(port["name"], "metrics");
        assert!(
            listen.ends_with(&format!(":{}", port["containerPort"])),
            "{what}: listen {listen} vs containerPort {}",
            port["containerPort"]
        );
    }
}
