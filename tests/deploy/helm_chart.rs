//! 3. The Helm chart: lint, render with every values file, guards, and its consistency
//!    with the Kustomize base.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::command::{copy_tree, path, read};
use crate::copies::{RULES_SOURCE, refresh_copies_if_asked};
use crate::pod::UID;
use crate::render::{
    CHART, HELM_SHARDED, HELM_VALUES, KUBERNETES_VERSIONS, chart, helm, helm_in, helm_installed,
    render_from,
};
use crate::yaml::yaml;

#[test]
fn helm_chart_lints_and_renders_with_every_values_file() {
    refresh_copies_if_asked();
    if !helm_installed() {
        return;
    }
    for values in HELM_VALUES {
        let mut args = vec![
            "lint",
            ".",
            "--strict",
            "--kube-version",
            KUBERNETES_VERSIONS[0],
        ];
        if let Some(values) = values {
            args.extend(["--values", values]);
        }
        let ran = helm(&args);
        assert!(
            ran.status.success(),
            "helm {}:\n{}",
            args.join(" "),
            ran.said()
        );
        // helm lint reports a template's `fail` as [INFO] and passes: render too.
        let render = chart(values).expect("helm is installed");
        render.workload();
    }
    // NOTES.txt renders (helm template leaves it out: render it as a template of a copy).
    let copy = tempfile::tempdir().expect("tempdir");
    copy_tree(&path(CHART), copy.path());
    let notes =
        std::fs::read_to_string(copy.path().join("templates/NOTES.txt")).expect("NOTES.txt");
    std::fs::write(
        copy.path().join("templates/zz-notes.yaml"),
        format!(
            "{{{{- define \"zz-notes\" }}}}{notes}{{{{- end }}}}\nnotes: {{{{ include \"zz-notes\" . | toJson }}}}\n"
        ),
    )
    .expect("write");
    for values in HELM_VALUES {
        let mut args = vec!["template", "selfheal-exporter", "."];
        args.extend(["--show-only", "templates/zz-notes.yaml"]);
        let values_file = values.map(|v| path(&format!("{CHART}/{v}")));
        if let Some(file) = &values_file {
            args.extend(["--values", file.to_str().expect("utf-8")]);
        }
        let render = render_from(
            format!("NOTES.txt (values: {values:?})"),
            helm_in(copy.path(), &args),
        );
        let text = render.objects[0]["notes"].as_str().expect("notes");
        let workload = if values == HELM_SHARDED {
            "statefulset"
        } else {
            "deployment"
        };
        assert!(
            text.contains(&format!(
                "kubectl -n default rollout status {workload}/selfheal-exporter"
            )) && !text.contains("<no value>"),
            "NOTES.txt (values: {values:?}):\n{text}"
        );
        let elected = values.is_some_and(|v| v.contains("leader-elected"));
        assert_eq!(
            text.contains("kubectl -n default get lease selfheal-exporter-prober"),
            elected,
            "NOTES.txt (values: {values:?}) names the probe Lease with leader election:\n{text}"
        );
    }
    // The chart refuses what would break the daemon or the pod.
    for (set, expected) in [
        ("image.tag=latest", "must not be \"latest\""),
        ("config.listen=0.0.0.0:1", "config.listen"),
        ("rbac.namespaced=true", "needs the namespaces"),
        // Unsharded replicas would each export every counter (sums double-count) and
        // probe every target.
        ("replicas=2", "replicas=2 needs sharding.enabled=true"),
        // Sharded pods probe their own shard's targets; the daemon refuses both at once.
        (
            "leaderElection.enabled=true,sharding.enabled=true",
            "cannot be combined",
        ),
        // Leader election comes from leaderElection.* (with its RBAC and environment).
        (
            "leaderElection.enabled=true,config.probes.leader_election.enabled=true",
            "set leaderElection.* instead",
        ),
        ("replicas=0,sharding.enabled=true", "at least one"),
        // Sharding comes from replicas/sharding.enabled (the flags), not the config.
        (
            "config.sharding.total_shards=2",
            "set sharding.enabled and replicas",
        ),
        (
            "prometheusRule.enabled=true,prometheusRule.thresholds.no_such=1",
            "no_such",
        ),
    ] {
        if set.starts_with("prometheusRule") && !path(RULES_SOURCE).exists() {
            continue;
        }
        let ran = helm(&["template", "x", ".", "--set", set]);
        assert!(
            !ran.status.success() && ran.said().contains(expected),
            "helm template --set {set} should fail naming {expected:?}:\n{}",
            ran.said()
        );
    }
}

/// Key paths of `value`, e.g. "serviceMonitor.additionalLabels".
fn key_paths(value: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    if let Value::Object(map) = value {
        for (key, child) in map {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            out.insert(path.clone());
            key_paths(child, &path, out);
        }
    }
}

/// Whether `values` has the key path `dotted` (or a free-form map above it: an empty map
/// or list, e.g. additionalLabels: {}, or `config`, whose keys the daemon checks).
fn values_have(values: &Value, dotted: &str) -> bool {
    let mut node = values;
    for (depth, part) in dotted.split('.').enumerate() {
        if depth > 0 && dotted.starts_with("config.") {
            return true;
        }
        match node {
            Value::Object(map) if map.is_empty() && depth > 0 => return true,
            Value::Object(map) => match map.get(part) {
                Some(child) => node = child,
                None => return false,
            },
            Value::Array(_) | Value::Null => return depth > 0,
            _ => return false,
        }
    }
    true
}

#[test]
fn helm_chart_is_consistent_without_helm() {
    // What can be checked without rendering, so that the chart is checked even where
    // helm is missing. Chart.yaml and values.yaml are YAML; the chart deploys this crate.
    let chart_yaml = yaml(&read(&format!("{CHART}/Chart.yaml")), "Chart.yaml");
    assert_eq!(chart_yaml["apiVersion"], "v2");
    assert_eq!(chart_yaml["name"], "selfheal-exporter");
    assert_eq!(
        chart_yaml["appVersion"],
        env!("CARGO_PKG_VERSION"),
        "Chart.yaml appVersion (the default image tag) is the crate's version: bump both"
    );
    let semver = regex::Regex::new(r"^\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?$").expect("regex");
    assert!(semver.is_match(chart_yaml["version"].as_str().unwrap_or("")));
    let values = yaml(&read(&format!("{CHART}/values.yaml")), "values.yaml");

    // Every ci/ values key exists in values.yaml: a typo would silently test nothing.
    for file in HELM_VALUES.iter().flatten() {
        let ci = yaml(&read(&format!("{CHART}/{file}")), file);
        let mut paths = BTreeSet::new();
        key_paths(&ci, "", &mut paths);
        for dotted in paths {
            assert!(
                values_have(&values, &dotted),
                "{file}: {dotted} is not in values.yaml"
            );
        }
    }

    let templates_dir = path(&format!("{CHART}/templates"));
    let mut templates = BTreeMap::new();
    for entry in std::fs::read_dir(&templates_dir).expect("templates/") {
        let file = entry.expect("entry").path();
        let name = file
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        templates.insert(name, std::fs::read_to_string(&file).expect("template"));
    }
    let action = regex::Regex::new(r"(?s)\{\{.*?\}\}").expect("regex");
    let values_ref = regex::Regex::new(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)").expect("regex");
    let define = regex::Regex::new(r#"\{\{-?\s*define\s+"([^"]+)""#).expect("regex");
    let include = regex::Regex::new(r#"(?:include|template)\s+"([^"]+)""#).expect("regex");
    let defined: BTreeSet<String> = templates
        .values()
        .flat_map(|text| {
            define
                .captures_iter(text)
                .map(|c| c[1].to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    for (file, text) in &templates {
        // Balanced actions: every {{ closes before the next one opens.
        let mut rest = text.as_str();
        while let Some(open) = rest.find("{{") {
            let after = &rest[open + 2..];
            let close = after
                .find("}}")
                .unwrap_or_else(|| panic!("{file}: unclosed {{{{"));
            assert!(
                !after[..close].contains("{{"),
                "{file}: {{{{ inside an action: {}",
                &after[..close]
            );
            if after.starts_with("/*") || after.starts_with("- /*") {
                assert!(
                    after[..close].trim_end_matches(" -").ends_with("*/"),
                    "{file}: comment not closed"
                );
            }
            rest = &after[close + 2..];
        }
        assert!(!rest.contains("}}"), "{file}: }}}} without {{{{");
        let opens = text.matches("{{").count();
        assert_eq!(
            opens,
            text.matches("}}").count(),
            "{file}: unbalanced {{{{ }}}}"
        );
        // Control blocks balance: if/range/with/define ... end.
        let mut depth = 0i32;
        for found in action.find_iter(text) {
            let inner = found
                .as_str()
                .trim_start_matches("{{")
                .trim_end_matches("}}");
            let inner = inner.trim_start_matches('-').trim_end_matches('-').trim();
            let word = inner.split_whitespace().next().unwrap_or("");
            match word {
                "if" | "range" | "with" | "define" | "block" => depth += 1,
                "end" => depth -= 1,
                _ => {}
            }
            assert!(depth >= 0, "{file}: {{{{ end }}}} without a block");
        }
        assert_eq!(
            depth, 0,
            "{file}: a block is never closed with {{{{ end }}}}"
        );
        // Every value referenced exists in values.yaml.
        for found in values_ref.captures_iter(text) {
            let dotted = &found[1][1..];
            assert!(
                values_have(&values, dotted),
                "{file}: .Values.{dotted} is not in values.yaml"
            );
        }
        for found in include.captures_iter(text) {
            assert!(
                defined.contains(&found[1]),
                "{file}: include of undefined {:?}",
                &found[1]
            );
        }
        // RBAC, textually (the rendered check is in rbac_grants_read_access_only): read
        // only, but for the Lease of leader election and the Event writes of [events].
        let allowed: &[&str] = if file == "leader-election-rbac.yaml" {
            &[r#"verbs: ["create"]"#, r#"verbs: ["get", "patch"]"#]
        } else if file == "events-rbac.yaml" {
            &[r#"verbs: ["create", "patch"]"#]
        } else {
            &[r#"verbs: ["get", "list", "watch"]"#]
        };
        for line in text
            .lines()
            .filter(|l| l.trim_start().starts_with("verbs:"))
        {
            assert!(
                allowed.contains(&line.trim()),
                "{file}: {line}: only {allowed:?}"
            );
        }
    }
    for expected in [
        "_helpers.tpl",
        "NOTES.txt",
        "serviceaccount.yaml",
        "rbac.yaml",
        "leader-election-rbac.yaml",
        "events-rbac.yaml",
        "configmap.yaml",
        "deployment.yaml",
        "service.yaml",
        "servicemonitor.yaml",
        "prometheusrule.yaml",
        "dashboards.yaml",
    ] {
        assert!(
            templates.contains_key(expected),
            "templates/{expected} is missing"
        );
    }
    // Hardening that values cannot switch off.
    let deployment = &templates["deployment.yaml"];
    for fixed in [
        "replicas: 1",
        "enableServiceLinks: false",
        "automountServiceAccountToken: true",
    ] {
        assert!(
            deployment.contains(fixed),
            "templates/deployment.yaml: {fixed}"
        );
    }
    assert_eq!(values["podSecurityContext"]["runAsUser"], UID);
    assert_eq!(values["securityContext"]["readOnlyRootFilesystem"], true);
}
