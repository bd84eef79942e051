//! 1. Rendering: the Kustomize base and overlays render exactly the expected objects.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::copies::{DASHBOARDS_SOURCE, source_dashboards};
use crate::render::{BASE, LEADER_ELECTED, OPERATOR, Render, SHARDED, kustomization};
use crate::sharding::unsharded_pod_template;
use crate::yaml::{first_difference, id, kind, name, namespace, str_of};

fn kinds(render: &Render) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for object in &render.objects {
        *counts.entry(kind(object).to_owned()).or_insert(0) += 1;
    }
    counts
}

/// An overlay keeps the base's namespace (for namespaced objects) and common label.
fn assert_base_namespace_and_label(render: &Render) {
    for object in &render.objects {
        if kind(object) != "Namespace" && !kind(object).starts_with("ClusterRole") {
            assert_eq!(namespace(object), "selfheal-system", "{}", id(object));
        }
        assert_eq!(
            str_of(object, "/metadata/labels/app.kubernetes.io~1part-of"),
            "selfheal-exporter",
            "{}: the base's common label",
            id(object)
        );
    }
}

#[test]
fn kustomize_base_and_operator_overlay_render() {
    let (Some(base), Some(operator)) = (kustomization(BASE), kustomization(OPERATOR)) else {
        return;
    };
    let expected: BTreeMap<String, usize> = [
        ("Namespace", 1),
        ("ServiceAccount", 1),
        ("ClusterRole", 1),
        ("ClusterRoleBinding", 1),
        ("ConfigMap", 1),
        ("Service", 1),
        ("Deployment", 1),
    ]
    .into_iter()
    .map(|(kind, count)| (kind.to_owned(), count))
    .collect();
    assert_eq!(kinds(base), expected, "{}", base.text);
    for object in &base.objects {
        if kind(object) != "Namespace" && !kind(object).starts_with("ClusterRole") {
            assert_eq!(namespace(object), "selfheal-system", "{}", id(object));
        }
    }

    let mut expected = expected;
    *expected.get_mut("ConfigMap").expect("ConfigMap") += source_dashboards().len();
    expected.insert("ServiceMonitor".into(), 1);
    expected.insert("PrometheusRule".into(), 1);
    assert_eq!(
        kinds(operator),
        expected,
        "the overlay ships the base, a ServiceMonitor, the PrometheusRule and one ConfigMap \
         per dashboard of {DASHBOARDS_SOURCE}/ (a new dashboard needs an entry in the \
         overlay's configMapGenerator)"
    );
    // The overlay scrapes through the ServiceMonitor only.
    let service = operator.metrics_service();
    assert_eq!(
        str_of(service, "/metadata/annotations/prometheus.io~1scrape"),
        "false"
    );
    assert_eq!(
        str_of(
            base.one("Service"),
            "/metadata/annotations/prometheus.io~1scrape"
        ),
        "true"
    );
}

#[test]
fn kustomize_sharded_overlay_renders() {
    let (Some(base), Some(sharded)) = (kustomization(BASE), kustomization(SHARDED)) else {
        return;
    };
    // The base's objects, with a StatefulSet instead of the Deployment, and its headless
    // Service.
    let mut expected = kinds(base);
    expected.remove("Deployment");
    expected.insert("StatefulSet".into(), 1);
    *expected.get_mut("Service").expect("Service") += 1;
    assert_eq!(kinds(sharded), expected, "{}", sharded.text);
    assert_base_namespace_and_label(sharded);
    let statefulset = sharded.workload();
    assert_eq!(name(statefulset), "selfheal-exporter");
    assert_eq!(
        statefulset["spec"]["replicas"], 2,
        "the overlay runs 2 shards"
    );
    // Same selector and the same pod template as the base's Deployment, apart from the
    // shard flags and POD_NAME: hardening, probes, resources and volumes stay identical.
    let deployment = base.workload();
    assert_eq!(
        statefulset["spec"]["selector"], deployment["spec"]["selector"],
        "the StatefulSet selects the base's pods"
    );
    let ours = unsharded_pod_template(statefulset);
    let theirs = unsharded_pod_template(deployment);
    if let Some(difference) = first_difference(&ours, &theirs, "template") {
        panic!(
            "{SHARDED}/statefulset.yaml's pod template must equal {BASE}/deployment.yaml's \
             apart from --shard/--total-shards and POD_NAME (StatefulSet vs Deployment \
             {difference})"
        );
    }
    // The base's scrape annotations stay on the metrics Service.
    assert_eq!(
        str_of(
            sharded.metrics_service(),
            "/metadata/annotations/prometheus.io~1scrape"
        ),
        "true"
    );
}

/// The environment variables that switch leader election on, and what it needs from the
/// downward API.
const LEADER_ENV_PREFIX: &str = "SELFHEAL_LEADER_ELECTION__";
const DEFAULT_LEASE: &str = "selfheal-exporter-prober";

/// The container's environment variable `name`, if set.
pub(crate) fn env_var<'a>(workload: &'a Value, wanted: &str) -> Option<&'a Value> {
    workload["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == wanted)
}

/// The workload's leader election: `Some(lease name)` when its container switches
/// [leader_election] on (SELFHEAL_LEADER_ELECTION__ENABLED=true), after
/// checking that POD_NAME and POD_NAMESPACE come from the downward API. `None` otherwise.
pub(crate) fn leader_election_of(render: &Render, workload: &Value) -> Option<String> {
    let enabled = env_var(workload, &format!("{LEADER_ENV_PREFIX}ENABLED"))?;
    assert_eq!(enabled["value"], "true", "{}: {enabled}", render.what);
    for (variable, field) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
    ] {
        assert_eq!(
            env_var(workload, variable),
            Some(&serde_json::json!({
                "name": variable,
                "valueFrom": {"fieldRef": {"fieldPath": field}}
            })),
            "{}: leader election takes {variable} from the pod's {field}",
            render.what
        );
    }
    Some(
        env_var(workload, &format!("{LEADER_ENV_PREFIX}LEASE_NAME"))
            .and_then(|v| v["value"].as_str())
            .unwrap_or(DEFAULT_LEASE)
            .to_owned(),
    )
}

/// A workload's pod template without what leader election adds (its environment
/// variables, POD_NAME, POD_NAMESPACE, and the anti-affinity that spreads the replicas).
fn pod_template_without_leader_election(workload: &Value) -> Value {
    let mut template = workload["spec"]["template"].clone();
    if let Some(env) = template["spec"]["containers"][0]["env"].as_array_mut() {
        env.retain(|v| {
            let name = v["name"].as_str().unwrap_or("");
            !name.starts_with(LEADER_ENV_PREFIX) && name != "POD_NAME" && name != "POD_NAMESPACE"
        });
    }
    if let Some(spec) = template["spec"].as_object_mut() {
        spec.remove("affinity");
    }
    template
}

#[test]
fn kustomize_leader_elected_overlay_renders() {
    let (Some(base), Some(elected)) = (kustomization(BASE), kustomization(LEADER_ELECTED)) else {
        return;
    };
    // The base's objects plus the Lease's Role and RoleBinding.
    let mut expected = kinds(base);
    expected.insert("Role".into(), 1);
    expected.insert("RoleBinding".into(), 1);
    assert_eq!(kinds(elected), expected, "{}", elected.text);
    assert_base_namespace_and_label(elected);
    let deployment = elected.workload();
    assert_eq!(kind(deployment), "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 2, "a leader and a standby");
    assert_eq!(
        leader_election_of(elected, deployment).as_deref(),
        Some(DEFAULT_LEASE)
    );
    // Everything else as in the base: selector, rollout strategy, the pod template apart
    // from leader election's environment and the anti-affinity.
    let original = base.workload();
    for key in ["selector", "strategy", "revisionHistoryLimit"] {
        assert_eq!(deployment["spec"][key], original["spec"][key], "spec.{key}");
    }
    if let Some(difference) = first_difference(
        &pod_template_without_leader_election(deployment),
        &pod_template_without_leader_election(original),
        "template",
    ) {
        panic!(
            "{LEADER_ELECTED}: the pod template must equal the base's apart from leader \
             election's environment and affinity ({difference})"
        );
    }
    // The replicas prefer different nodes: a standby on the leader's node dies with it.
    let term = &deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
        [0]["podAffinityTerm"];
    assert_eq!(term["topologyKey"], "kubernetes.io/hostname");
    assert_eq!(
        term["labelSelector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"]
    );
}
