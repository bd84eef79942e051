//! Sharding: a StatefulSet of one pod per shard.

use std::process::Command;

use serde_json::Value;

use crate::command::run;
use crate::render::{
    HELM_TEMPLATE, Render, SHARDED, all_renders, helm, helm_installed, kustomization, render_from,
};
use crate::schemas::{keys, labels_of};
use crate::yaml::{first_difference, id, kind, namespace, str_of};

/// The exporter container's args.
pub(crate) fn container_args(workload: &Value) -> Vec<String> {
    workload["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .map(|args| {
            args.iter()
                .map(|a| a.as_str().expect("args are strings").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The value of `flag` in `args` (`--flag value` or `--flag=value`).
pub(crate) fn flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let mut found = None;
    for (i, arg) in args.iter().enumerate() {
        let value = if arg == flag {
            args.get(i + 1).map(String::as_str)
        } else {
            arg.strip_prefix(flag)
                .and_then(|rest| rest.strip_prefix('='))
        };
        if value.is_some() {
            assert!(found.is_none(), "{flag} given twice: {args:?}");
            found = value;
        }
    }
    found
}

/// For a StatefulSet: its shard count and the ordinals of its pods, after checking that
/// each pod finds its shard (`--shard auto` with POD_NAME from metadata.name) and that
/// `--total-shards` equals the replicas. `None` for a Deployment.
pub(crate) fn shards_of(render: &Render, workload: &Value) -> Option<(u32, std::ops::Range<u32>)> {
    if kind(workload) != "StatefulSet" {
        return None;
    }
    let what = format!("{}: {}", render.what, id(workload));
    let args = container_args(workload);
    assert_eq!(
        flag_value(&args, "--shard"),
        Some("auto"),
        "{what}: each pod takes its shard from its ordinal (--shard auto): {args:?}"
    );
    let replicas = workload["spec"]["replicas"]
        .as_u64()
        .unwrap_or_else(|| panic!("{what}: spec.replicas is set"));
    let total: u32 = flag_value(&args, "--total-shards")
        .unwrap_or_else(|| panic!("{what}: --total-shards is passed: {args:?}"))
        .parse()
        .unwrap_or_else(|e| panic!("{what}: --total-shards is a number: {e}"));
    assert_eq!(
        u64::from(total),
        replicas,
        "{what}: --total-shards equals spec.replicas (fewer replicas leave shards unobserved, \
         more run a shard twice)"
    );
    let env = workload["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let pod_name: Vec<&Value> = env.iter().filter(|v| v["name"] == "POD_NAME").collect();
    assert_eq!(pod_name.len(), 1, "{what}: one POD_NAME variable");
    assert_eq!(
        pod_name[0],
        &serde_json::json!({
            "name": "POD_NAME",
            "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}
        }),
        "{what}: POD_NAME comes from the pod's metadata.name (the ordinal --shard auto reads)"
    );
    Some((total, 0..total))
}

/// A workload's pod template without what sharding adds (the --shard/--total-shards
/// args and the POD_NAME variable), to compare a StatefulSet with a Deployment.
pub(crate) fn unsharded_pod_template(workload: &Value) -> Value {
    let mut template = workload["spec"]["template"].clone();
    let container = &mut template["spec"]["containers"][0];
    if let Some(args) = container["args"].as_array_mut() {
        let mut kept = Vec::new();
        let mut skip_value = false;
        for arg in args.drain(..) {
            let text = arg.as_str().unwrap_or("");
            if skip_value {
                skip_value = false;
            } else if text == "--shard" || text == "--total-shards" {
                skip_value = true;
            } else if !(text.starts_with("--shard=") || text.starts_with("--total-shards=")) {
                kept.push(arg);
            }
        }
        *args = kept;
    }
    if let Some(env) = container["env"].as_array_mut() {
        env.retain(|v| v["name"] != "POD_NAME");
    }
    template
}

#[test]
fn sharded_statefulsets_run_one_pod_per_shard() {
    let statefulsets: Vec<(&Render, &Value)> = all_renders()
        .into_iter()
        .map(|render| (render, render.workload()))
        .filter(|(_, workload)| kind(workload) == "StatefulSet")
        .collect();
    if kustomization(SHARDED).is_some() {
        assert!(
            statefulsets.iter().any(|(r, _)| r.what.contains(SHARDED)),
            "{SHARDED} renders a StatefulSet"
        );
    }
    if helm_installed() {
        assert!(
            statefulsets
                .iter()
                .any(|(r, _)| r.what.contains("sharded-values")),
            "ci/sharded-values.yaml renders a StatefulSet"
        );
    }
    // The daemon knows every flag the manifests pass.
    let help = {
        let mut command = Command::new(env!("CARGO_BIN_EXE_selfheal-exporter"));
        command.arg("--help");
        let ran = run(command);
        assert!(
            ran.status.success(),
            "selfheal-exporter --help:\n{}",
            ran.said()
        );
        ran.stdout
    };
    for (render, statefulset) in &statefulsets {
        let what = format!("{}: {}", render.what, id(statefulset));
        let (total, _) = shards_of(render, statefulset).expect("a StatefulSet");
        assert!(total >= 1, "{what}: at least one shard");
        for arg in container_args(statefulset) {
            if let Some(flag) = arg.strip_prefix("--") {
                let flag = flag.split('=').next().unwrap_or(flag);
                assert!(
                    help.contains(&format!("--{flag} ")),
                    "{what}: selfheal-exporter has no flag --{flag}"
                );
            }
        }
        let spec = &statefulset["spec"];
        assert_eq!(
            spec["podManagementPolicy"], "Parallel",
            "{what}: shards are independent"
        );
        assert_eq!(spec["updateStrategy"]["type"], "RollingUpdate", "{what}");
        // serviceName: a headless Service, rendered, selecting the pods, not for scraping.
        let service_name = spec["serviceName"].as_str().unwrap_or("");
        let headless = render
            .find("Service", namespace(statefulset), service_name)
            .unwrap_or_else(|| panic!("{what}: serviceName {service_name:?} is not rendered"));
        assert_eq!(
            headless["spec"]["clusterIP"], "None",
            "{what}: {service_name} is headless"
        );
        let selector = labels_of(headless, "/spec/selector");
        let pod_labels = labels_of(statefulset, "/spec/template/metadata/labels");
        assert!(
            !selector.is_empty() && selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)),
            "{what}: {service_name} selects the pods"
        );
        assert!(
            !keys(&headless["metadata"]["annotations"])
                .iter()
                .any(|k| k.starts_with("prometheus.io/")),
            "{what}: {service_name} carries no scrape annotations (the pods would be \
             scraped twice, every sum doubled)"
        );
        assert!(
            str_of(headless, "/metadata/labels/app.kubernetes.io~1name").is_empty(),
            "{what}: {service_name} has no app.kubernetes.io/name label, so a ServiceMonitor \
             selecting the exporter by it does not scrape the pods twice"
        );
        // The metrics Service still selects every shard.
        let metrics = render.metrics_service();
        let selector = labels_of(metrics, "/spec/selector");
        assert!(
            selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)),
            "{what}: the metrics Service selects the shards"
        );
    }
    // The chart's StatefulSet has the Deployment's pod template, apart from sharding.
    if helm_installed() {
        let flat = |set: Option<&str>| {
            let mut args = HELM_TEMPLATE.to_vec();
            if let Some(set) = set {
                args.extend(["--set", set]);
            }
            render_from(format!("helm template --set {set:?}"), helm(&args))
        };
        let unsharded = flat(None);
        let sharded_render = flat(Some("sharding.enabled=true,replicas=4"));
        let statefulset = sharded_render.workload();
        assert_eq!(kind(statefulset), "StatefulSet", "{}", sharded_render.what);
        assert_eq!(
            shards_of(&sharded_render, statefulset).map(|s| s.0),
            Some(4)
        );
        let deployment = unsharded.workload();
        assert_eq!(kind(deployment), "Deployment");
        if let Some(difference) = first_difference(
            &unsharded_pod_template(statefulset),
            &unsharded_pod_template(deployment),
            "template",
        ) {
            panic!(
                "the chart's StatefulSet and Deployment differ in more than sharding \
                 ({difference})"
            );
        }
        // Sharding on, one replica: a StatefulSet of a single shard is allowed.
        let one = flat(Some("sharding.enabled=true"));
        assert_eq!(shards_of(&one, one.workload()).map(|s| s.0), Some(1));
    }
}
