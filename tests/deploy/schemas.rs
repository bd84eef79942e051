//! 2. Kubernetes schemas, and the structure of the prometheus-operator objects.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use selfheal_lab::testkit::tools::KUBERNETES_VALIDATE;
use serde_json::Value;

use crate::command::{path, run, write_temp};
use crate::copies::RULES_SOURCE;
use crate::render::{
    HELM_SHARDED, HELM_VALUES, KUBERNETES_VERSIONS, KUSTOMIZATIONS, OPERATOR, Render, chart,
    helm_installed, kustomization,
};
use crate::yaml::{id, name, namespace, str_of};

const CRD_GROUP: &str = "monitoring.coreos.com/v1";

/// Runs kubernetes-validate (strict: unknown fields are errors) on `render` for every
/// version of KUBERNETES_VERSIONS. Objects of monitoring.coreos.com (no schema there) are
/// checked by `check_service_monitor` and `check_prometheus_rule` instead.
pub(crate) fn validate_against_schemas(render: &Render) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write_temp(&dir, "rendered.yaml", &render.text);
    let core = render
        .objects
        .iter()
        .filter(|o| str_of(o, "/apiVersion") != CRD_GROUP)
        .count();
    for version in KUBERNETES_VERSIONS {
        let mut command = Command::new("kubernetes-validate");
        command
            .args(["--strict", "--kubernetes-version", version])
            .arg(&file);
        let ran = run(command);
        let said = ran.said();
        let context = format!(
            "{} against Kubernetes {version} (kubernetes-validate --strict):\n{said}",
            render.what
        );
        assert!(ran.status.success(), "{context}");
        for line in said.lines() {
            assert!(!line.starts_with("ERROR"), "{context}");
            if line.starts_with("WARN") {
                assert!(
                    line.contains(CRD_GROUP),
                    "only the prometheus-operator kinds may lack a schema: {context}"
                );
            }
        }
        let passed = said
            .lines()
            .filter(|l| l.contains(" passed for resource "))
            .count();
        assert_eq!(passed, core, "every core object validated: {context}");
    }
}

#[test]
fn kustomize_manifests_match_the_kubernetes_schemas() {
    let renders: Vec<_> = KUSTOMIZATIONS
        .into_iter()
        .filter_map(kustomization)
        .collect();
    if renders.is_empty() || !KUBERNETES_VALIDATE.require("validate the manifests") {
        return;
    }
    for render in renders {
        validate_against_schemas(render);
    }
}

#[test]
fn helm_manifests_match_the_kubernetes_schemas() {
    if !helm_installed() || !KUBERNETES_VALIDATE.require("validate the manifests") {
        return;
    }
    for values in HELM_VALUES {
        validate_against_schemas(chart(values).expect("helm is installed"));
    }
}

/// A Prometheus duration (`30s`, `1m30s`) in seconds.
fn prometheus_duration(text: &str) -> Option<f64> {
    let unit_re = regex::Regex::new(r"^(?:(\d+)(ms|s|m|h|d|w|y))+$").expect("regex");
    if !unit_re.is_match(text) {
        return None;
    }
    let part = regex::Regex::new(r"(\d+)(ms|s|m|h|d|w|y)").expect("regex");
    Some(
        part.captures_iter(text)
            .map(|c| {
                let n: f64 = c[1].parse().expect("digits");
                n * match &c[2] {
                    "ms" => 0.001,
                    "s" => 1.0,
                    "m" => 60.0,
                    "h" => 3600.0,
                    "d" => 86400.0,
                    "w" => 604800.0,
                    _ => 31536000.0,
                }
            })
            .sum(),
    )
}

pub(crate) fn keys(value: &Value) -> BTreeSet<&str> {
    value
        .as_object()
        .map(|map| map.keys().map(String::as_str).collect())
        .unwrap_or_default()
}

pub(crate) fn assert_keys_within(value: &Value, allowed: &[&str], what: &str) {
    let unknown: Vec<_> = keys(value)
        .into_iter()
        .filter(|key| !allowed.contains(key))
        .collect();
    assert!(unknown.is_empty(), "{what}: unknown fields {unknown:?}");
}

pub(crate) fn labels_of(object: &Value, pointer: &str) -> BTreeMap<String, String> {
    object
        .pointer(pointer)
        .and_then(Value::as_object)
        .map(|map| {
            map.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// The ServiceMonitor is well-formed and selects the exporter's Service and its port.
pub(crate) fn check_service_monitor(render: &Render, monitor: &Value) {
    let what = format!("{}: {}", render.what, id(monitor));
    assert_eq!(str_of(monitor, "/apiVersion"), CRD_GROUP, "{what}");
    assert!(
        !name(monitor).is_empty() && !namespace(monitor).is_empty(),
        "{what}"
    );
    let spec = &monitor["spec"];
    assert_keys_within(
        spec,
        &[
            "jobLabel",
            "selector",
            "namespaceSelector",
            "endpoints",
            "targetLabels",
            "podTargetLabels",
            "sampleLimit",
        ],
        &what,
    );
    assert_eq!(
        spec["jobLabel"], "app.kubernetes.io/name",
        "{what}: job=\"selfheal-exporter\""
    );
    let selector = labels_of(spec, "/selector/matchLabels");
    assert!(!selector.is_empty(), "{what}: spec.selector.matchLabels");
    let namespaces: Vec<&str> = match spec.pointer("/namespaceSelector/matchNames") {
        Some(Value::Array(names)) => names.iter().filter_map(Value::as_str).collect(),
        _ => vec![namespace(monitor)],
    };
    let services: Vec<&Value> = render
        .of_kind("Service")
        .into_iter()
        .filter(|s| namespaces.contains(&namespace(s)))
        .filter(|s| {
            let labels = labels_of(s, "/metadata/labels");
            selector.iter().all(|(k, v)| labels.get(k) == Some(v))
        })
        .collect();
    assert_eq!(
        services.len(),
        1,
        "{what}: selects exactly the exporter's Service"
    );
    let service = services[0];
    let service_labels = labels_of(service, "/metadata/labels");
    assert_eq!(
        service_labels
            .get("app.kubernetes.io/name")
            .map(String::as_str),
        Some("selfheal-exporter"),
        "{what}: the jobLabel's value"
    );
    let endpoints = spec["endpoints"].as_array().expect("spec.endpoints");
    assert!(!endpoints.is_empty(), "{what}: spec.endpoints");
    for endpoint in endpoints {
        assert_keys_within(
            endpoint,
            &[
                "port",
                "path",
                "scheme",
                "interval",
                "scrapeTimeout",
                "honorLabels",
                "honorTimestamps",
                "relabelings",
                "metricRelabelings",
                "params",
                "tlsConfig",
                "basicAuth",
            ],
            &what,
        );
        let port = endpoint["port"].as_str().expect("endpoint port name");
        let ports = service["spec"]["ports"].as_array().expect("Service ports");
        assert!(
            ports.iter().any(|p| p["name"] == port),
            "{what}: the Service has no port named {port}"
        );
        assert_eq!(endpoint["path"], "/metrics", "{what}");
        assert_eq!(
            endpoint["honorLabels"], true,
            "{what}: the series' namespace/pod/container/service labels name the observed \
             workloads and must win over the target's"
        );
        let interval = prometheus_duration(endpoint["interval"].as_str().unwrap_or(""));
        let timeout = prometheus_duration(endpoint["scrapeTimeout"].as_str().unwrap_or(""));
        match (interval, timeout) {
            (Some(interval), Some(timeout)) => {
                assert!(timeout <= interval, "{what}: scrapeTimeout above interval");
            }
            other => panic!("{what}: interval/scrapeTimeout are not durations: {other:?}"),
        }
        for relabeling in ["relabelings", "metricRelabelings"] {
            let Some(rules) = endpoint.get(relabeling) else {
                continue;
            };
            for rule in rules.as_array().expect("a list of relabelings") {
                assert_keys_within(
                    rule,
                    &[
                        "sourceLabels",
                        "separator",
                        "targetLabel",
                        "regex",
                        "modulus",
                        "replacement",
                        "action",
                    ],
                    &what,
                );
                let action = rule["action"].as_str().unwrap_or("replace");
                assert!(
                    [
                        "replace",
                        "keep",
                        "drop",
                        "keepequal",
                        "dropequal",
                        "hashmod",
                        "labelmap",
                        "labeldrop",
                        "labelkeep",
                        "lowercase",
                        "uppercase",
                    ]
                    .contains(&action.to_ascii_lowercase().as_str()),
                    "{what}: relabeling action {action}"
                );
                if let Some(regex) = rule.get("regex").and_then(Value::as_str) {
                    regex::Regex::new(&format!("^(?:{regex})$"))
                        .unwrap_or_else(|e| panic!("{what}: regex {regex}: {e}"));
                }
            }
        }
        // The target's own namespace/pod/container/service labels do not reach the series.
        let relabelings = endpoint["relabelings"].to_string();
        assert!(
            relabelings.contains("labeldrop") && relabelings.contains("exporter_namespace"),
            "{what}: target labels namespace/pod moved to exporter_*, container/service dropped"
        );
    }
}

/// The PrometheusRule is well-formed: groups of rules, each an alert or a record.
fn check_prometheus_rule(render: &Render, rule: &Value) {
    let what = format!("{}: {}", render.what, id(rule));
    assert_eq!(str_of(rule, "/apiVersion"), CRD_GROUP, "{what}");
    assert!(
        !name(rule).is_empty() && !namespace(rule).is_empty(),
        "{what}"
    );
    assert_keys_within(&rule["spec"], &["groups"], &what);
    let groups = rule["spec"]["groups"].as_array().expect("spec.groups");
    assert!(!groups.is_empty(), "{what}: spec.groups is empty");
    let mut group_names = BTreeSet::new();
    for group in groups {
        assert_keys_within(
            group,
            &[
                "name",
                "interval",
                "rules",
                "limit",
                "labels",
                "query_offset",
                "partial_response_strategy",
            ],
            &what,
        );
        let group_name = group["name"].as_str().expect("group name");
        assert!(
            group_names.insert(group_name),
            "{what}: group {group_name} twice"
        );
        let rules = group["rules"].as_array().expect("group rules");
        assert!(!rules.is_empty(), "{what}: group {group_name} has no rules");
        for rule in rules {
            assert_keys_within(
                rule,
                &[
                    "alert",
                    "record",
                    "expr",
                    "for",
                    "keep_firing_for",
                    "labels",
                    "annotations",
                ],
                &format!("{what}: group {group_name}"),
            );
            assert!(
                rule.get("alert").is_some() != rule.get("record").is_some(),
                "{what}: group {group_name}: each rule is an alert or a record: {rule}"
            );
            assert!(
                rule["expr"].as_str().is_some_and(|e| !e.trim().is_empty()),
                "{what}: group {group_name}: expr: {rule}"
            );
            for map in ["labels", "annotations"] {
                if let Some(entries) = rule.get(map) {
                    let entries = entries.as_object().expect("a map");
                    assert!(
                        entries.values().all(Value::is_string),
                        "{what}: {map} values are strings: {rule}"
                    );
                }
            }
        }
    }
}

#[test]
fn prometheus_operator_objects_are_well_formed() {
    // ci/sharded-values.yaml too: its ServiceMonitor must select the metrics Service
    // only, not the StatefulSet's headless Service as well (each pod scraped twice).
    let renders: Vec<_> = kustomization(OPERATOR)
        .into_iter()
        .chain(chart(HELM_VALUES[1]))
        .chain(chart(HELM_SHARDED))
        .collect();
    for render in renders {
        let monitors = render.of_kind("ServiceMonitor");
        assert_eq!(monitors.len(), 1, "{}: one ServiceMonitor", render.what);
        check_service_monitor(render, monitors[0]);
        let rules = render.of_kind("PrometheusRule");
        if path(RULES_SOURCE).exists() {
            assert_eq!(rules.len(), 1, "{}: one PrometheusRule", render.what);
        }
        for rule in rules {
            check_prometheus_rule(render, rule);
        }
    }
    // Switched off by default in the chart.
    if let Some(default) = chart(None) {
        for kind in ["ServiceMonitor", "PrometheusRule"] {
            assert!(
                default.of_kind(kind).is_empty(),
                "chart defaults render a {kind}"
            );
        }
        assert!(
            default.of_kind("ConfigMap").len() == 1,
            "chart defaults render no dashboards"
        );
    }
}
