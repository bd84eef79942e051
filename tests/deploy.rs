//! Deployment artifacts: the Kustomize base and prometheus-operator overlay, the Helm
//! chart, the Dockerfile, and the copies of the alert rules and dashboards they ship.
//!
//! Rendering uses `kubectl kustomize` and `helm template`; schema validation uses PyPI's
//! `kubernetes-validate` (offline: it ships the Kubernetes OpenAPI schemas); the rendered
//! PrometheusRules go through `promtool check rules`. Each tool is required in CI (`CI`
//! set; `.ci/run` installs them) and skipped with a note elsewhere. Nothing here touches
//! the network: every command works on local files, bounded by a timeout.
//!
//! The chart and the overlay cannot read files outside their own directory, so they ship
//! copies of `deploy/rules/selfheal-rules.yaml` and `grafana/dashboards/*.json`. These
//! tests fail while a copy differs from its source; refresh them all with
//! `SELFHEAL_REFRESH_DEPLOY_COPIES=1 cargo test --test deploy`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

const REFRESH_ENV: &str = "SELFHEAL_REFRESH_DEPLOY_COPIES";
const REFRESH_HINT: &str = "refresh the copies with `SELFHEAL_REFRESH_DEPLOY_COPIES=1 cargo test --test deploy` (never edit a copy by hand)";

const BASE: &str = "deploy/kustomize/base";
const OPERATOR: &str = "deploy/kustomize/overlays/prometheus-operator";
const SHARDED: &str = "deploy/kustomize/overlays/sharded";
const LEADER_ELECTED: &str = "deploy/kustomize/overlays/leader-elected";
const CHART: &str = "deploy/helm/selfheal-exporter";
const RULES_SOURCE: &str = "deploy/rules/selfheal-rules.yaml";
const DASHBOARDS_SOURCE: &str = "grafana/dashboards";
const CHART_RULES: &str = "deploy/helm/selfheal-exporter/files/selfheal-rules.yaml";
const CHART_DASHBOARDS: &str = "deploy/helm/selfheal-exporter/files/dashboards";
const OPERATOR_RULE: &str = "deploy/kustomize/overlays/prometheus-operator/prometheusrule.yaml";
const OPERATOR_DASHBOARDS: &str = "deploy/kustomize/overlays/prometheus-operator/dashboards";

/// The Kubernetes versions every rendered manifest is validated against: the oldest the
/// chart supports (Chart.yaml kubeVersion) and the kubectl of CI.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.25.0", "1.32.0"];
/// The fixed non-root UID of the image (distroless "nonroot") and the pod.
const UID: i64 = 65532;
const PORT: i64 = 9964;
/// Bound on every external command.
const TIMEOUT: Duration = Duration::from_secs(120);

/// What the exporter may read, cluster-wide: (API group, resource). Verbs: get, list, watch.
const CLUSTER_READ: [(&str, &str); 5] = [
    ("", "pods"),
    ("", "events"),
    ("", "services"),
    ("", "namespaces"),
    ("discovery.k8s.io", "endpointslices"),
];
const READ_VERBS: [&str; 3] = ["get", "list", "watch"];

// ---------------------------------------------------------------------------------------
// Files, commands, tools
// ---------------------------------------------------------------------------------------

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn path(relative: &str) -> PathBuf {
    root().join(relative)
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(path(relative)).unwrap_or_else(|error| panic!("{relative}: {error}"))
}

fn in_ci() -> bool {
    std::env::var_os("CI").is_some()
}

struct Ran {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn said(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs `command` to completion (stdin closed), killing it after `TIMEOUT`.
fn run(mut command: Command) -> Ran {
    let what = format!("{command:?}");
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .unwrap_or_else(|error| panic!("cannot start {what}: {error}"));
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ran {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// Whether `program` is installed (runs with `probe` arguments). Missing: a panic in CI,
/// where `.ci/run` installs it, else `false` and a note (the caller skips).
fn tool(program: &str, probe: &[&str], purpose: &str) -> bool {
    static SEEN: Mutex<BTreeMap<String, bool>> = Mutex::new(BTreeMap::new());
    let installed = *SEEN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .entry(program.to_owned())
        .or_insert_with(|| {
            Command::new(program)
                .args(probe)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success())
        });
    if !installed {
        assert!(
            !in_ci(),
            "{program} must be installed in CI (see .ci/run and deploy/README.md): needed to {purpose}"
        );
        eprintln!("SKIPPED: {program} is not installed here (CI installs it), so not: {purpose}");
    }
    installed
}

// ---------------------------------------------------------------------------------------
// YAML
// ---------------------------------------------------------------------------------------

/// The non-empty documents of a (multi-document) YAML stream.
fn yaml_documents(text: &str, what: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(text)
        .unwrap_or_else(|error| panic!("{what} is not valid YAML: {error}\n{text}"))
        .into_iter()
        .filter(|document| !document.is_null())
        .collect()
}

fn yaml(text: &str, what: &str) -> Value {
    serde_saphyr::from_str::<Value>(text)
        .unwrap_or_else(|error| panic!("{what} is not valid YAML: {error}"))
}

/// `value` with every number as a float, so that `3` and `3.0` (Helm's fromYaml/toYaml
/// turns integers into floats) compare equal.
fn numbers_as_floats(value: &Value) -> Value {
    match value {
        Value::Number(number) => serde_json::json!(number.as_f64()),
        Value::Array(items) => Value::Array(items.iter().map(numbers_as_floats).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, value)| (key.clone(), numbers_as_floats(value)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Where `a` and `b` first differ, as a JSON pointer with both values, for messages.
fn first_difference(a: &Value, b: &Value, at: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|key| {
                let (l, r) = (
                    x.get(key).unwrap_or(&Value::Null),
                    y.get(key).unwrap_or(&Value::Null),
                );
                first_difference(l, r, &format!("{at}/{key}"))
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (l, r))| first_difference(l, r, &format!("{at}/{i}"))),
        _ if a == b => None,
        _ => {
            let short = |v: &Value| {
                let text = v.to_string();
                if text.len() > 300 {
                    format!("{}…", text.chars().take(300).collect::<String>())
                } else {
                    text
                }
            };
            Some(format!("at {at}: {} vs {}", short(a), short(b)))
        }
    }
}

fn str_of<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn kind(object: &Value) -> &str {
    str_of(object, "/kind")
}

fn name(object: &Value) -> &str {
    str_of(object, "/metadata/name")
}

fn namespace(object: &Value) -> &str {
    str_of(object, "/metadata/namespace")
}

fn id(object: &Value) -> String {
    format!("{} {}/{}", kind(object), namespace(object), name(object))
}

// ---------------------------------------------------------------------------------------
// Copies of the rules and dashboards
// ---------------------------------------------------------------------------------------

/// The overlay's PrometheusRule: this header, then the rules file indented under `spec:`
/// (comments included), so that its `groups:` are the PrometheusRule's.
const OPERATOR_RULE_HEADER: &str = "\
# GENERATED by tests/deploy.rs from deploy/rules/selfheal-rules.yaml: do not edit here.
# Edit the source, then: SELFHEAL_REFRESH_DEPLOY_COPIES=1 cargo test --test deploy
#
# The alert rules as a PrometheusRule. A Prometheus loads only the PrometheusRules its
# ruleSelector matches: adjust the `release` label with a patch in your own overlay
# (deploy/README.md), as for the ServiceMonitor.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: selfheal-exporter
  namespace: selfheal-system
  labels:
    app.kubernetes.io/name: selfheal-exporter
    app.kubernetes.io/instance: selfheal-exporter
    app.kubernetes.io/component: exporter
    release: kube-prometheus-stack
spec:
  # deploy/rules/selfheal-rules.yaml follows, indented by two spaces.
";

fn operator_rule_manifest(source: &str) -> Result<String, String> {
    let mut manifest = String::from(OPERATOR_RULE_HEADER);
    for (number, line) in source.lines().enumerate() {
        if line.starts_with("---") || line.starts_with("...") || line.starts_with('%') {
            return Err(format!(
                "{RULES_SOURCE}:{}: {line:?}: a plain rule file has a single YAML document \
                 and no directives; it cannot be embedded in a PrometheusRule",
                number + 1
            ));
        }
        if !line.is_empty() {
            manifest.push_str("  ");
            manifest.push_str(line);
        }
        manifest.push('\n');
    }
    Ok(manifest)
}

/// The source dashboards: file name -> path relative to the repository.
fn source_dashboards() -> BTreeMap<String, String> {
    json_files(DASHBOARDS_SOURCE)
}

fn json_files(dir: &str) -> BTreeMap<String, String> {
    let Ok(entries) = std::fs::read_dir(path(dir)) else {
        return BTreeMap::new();
    };
    entries
        .map(|entry| entry.expect("directory entry").file_name())
        .map(|file| file.to_string_lossy().into_owned())
        .filter(|file| file.ends_with(".json"))
        .map(|file| (file.clone(), format!("{dir}/{file}")))
        .collect()
}

/// Every (copy, expected content) pair, from the sources that exist now, and the copies
/// that have no source any more.
fn expected_copies() -> (Vec<(String, String)>, Vec<String>) {
    let mut copies = Vec::new();
    if path(RULES_SOURCE).exists() {
        let source = read(RULES_SOURCE);
        copies.push((CHART_RULES.to_owned(), source.clone()));
        let manifest = operator_rule_manifest(&source).unwrap_or_else(|error| panic!("{error}"));
        copies.push((OPERATOR_RULE.to_owned(), manifest));
    }
    let sources = source_dashboards();
    for (file, source) in &sources {
        let content = read(source);
        for dir in [CHART_DASHBOARDS, OPERATOR_DASHBOARDS] {
            copies.push((format!("{dir}/{file}"), content.clone()));
        }
    }
    let mut stale = Vec::new();
    for dir in [CHART_DASHBOARDS, OPERATOR_DASHBOARDS] {
        for (file, copy) in json_files(dir) {
            if !sources.contains_key(&file) {
                stale.push(copy);
            }
        }
    }
    (copies, stale)
}

/// With SELFHEAL_REFRESH_DEPLOY_COPIES set, rewrites the copies (once per run) before any
/// test reads them.
fn refresh_copies_if_asked() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        if std::env::var_os(REFRESH_ENV).is_none() {
            return;
        }
        let (copies, stale) = expected_copies();
        for (copy, content) in copies {
            let target = path(&copy);
            if std::fs::read_to_string(&target).ok().as_deref() != Some(content.as_str()) {
                std::fs::create_dir_all(target.parent().expect("parent")).expect("mkdir");
                std::fs::write(&target, content).expect("write copy");
                eprintln!("refreshed {copy}");
            }
        }
        for copy in stale {
            std::fs::remove_file(path(&copy)).expect("remove stale copy");
            eprintln!("removed {copy} (its source is gone)");
        }
    });
}

// ---------------------------------------------------------------------------------------
// Renders
// ---------------------------------------------------------------------------------------

struct Render {
    what: String,
    text: String,
    objects: Vec<Value>,
}

impl Render {
    fn of_kind(&self, wanted: &str) -> Vec<&Value> {
        self.objects.iter().filter(|o| kind(o) == wanted).collect()
    }

    fn one(&self, wanted: &str) -> &Value {
        let found = self.of_kind(wanted);
        assert_eq!(found.len(), 1, "{}: one {wanted} expected", self.what);
        found[0]
    }

    fn find(&self, wanted: &str, ns: &str, object_name: &str) -> Option<&Value> {
        self.objects
            .iter()
            .find(|o| kind(o) == wanted && namespace(o) == ns && name(o) == object_name)
    }

    /// The object that runs the exporter's pods: the one Deployment, or the one StatefulSet
    /// of the sharded variants; never both.
    fn workload(&self) -> &Value {
        let found: Vec<&Value> = self
            .objects
            .iter()
            .filter(|o| ["Deployment", "StatefulSet"].contains(&kind(o)))
            .collect();
        assert_eq!(
            found.len(),
            1,
            "{}: one Deployment or StatefulSet expected, found {:?}",
            self.what,
            found.iter().map(|o| id(o)).collect::<Vec<_>>()
        );
        found[0]
    }

    /// The Service Prometheus scrapes: the one that is not headless (the sharded variants
    /// add a headless Service for the StatefulSet, which is not for scraping).
    fn metrics_service(&self) -> &Value {
        let found: Vec<&Value> = self
            .of_kind("Service")
            .into_iter()
            .filter(|s| s["spec"]["clusterIP"] != "None")
            .collect();
        assert_eq!(found.len(), 1, "{}: one non-headless Service", self.what);
        found[0]
    }
}

fn render_from(what: String, ran: Ran) -> Render {
    assert!(ran.status.success(), "{what} failed:\n{}", ran.said());
    assert!(
        !ran.stdout.contains("<no value>"),
        "{what}: a template refers to a value that does not exist:\n{}",
        ran.stdout
    );
    let objects = yaml_documents(&ran.stdout, &what);
    assert!(!objects.is_empty(), "{what} rendered nothing");
    Render {
        what,
        text: ran.stdout,
        objects,
    }
}

fn kustomize(dir: &str) -> Render {
    let mut command = Command::new("kubectl");
    command.arg("kustomize").arg(path(dir));
    render_from(format!("kubectl kustomize {dir}"), run(command))
}

/// Helm in the chart's directory, with its cache, config and data directories in a fresh
/// temporary directory.
fn helm(args: &[&str]) -> Ran {
    helm_in(&path(CHART), args)
}

fn helm_in(dir: &Path, args: &[&str]) -> Ran {
    let home = tempfile::tempdir().expect("tempdir");
    let mut command = Command::new("helm");
    command
        .args(args)
        .current_dir(dir)
        .env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_DATA_HOME", home.path().join("data"));
    run(command)
}

/// The chart's values files under test: the defaults and each ci/*-values.yaml.
const HELM_VALUES: [Option<&str>; 5] = [
    None,
    Some("ci/all-enabled-values.yaml"),
    Some("ci/namespaced-values.yaml"),
    Some("ci/sharded-values.yaml"),
    Some("ci/leader-elected-values.yaml"),
];
/// The values file that renders the sharded StatefulSet.
const HELM_SHARDED: Option<&str> = HELM_VALUES[3];

fn helm_template(values: Option<&str>) -> Render {
    let mut args = vec![
        "template",
        "selfheal-exporter",
        ".",
        "--namespace",
        "selfheal-system",
        "--kube-version",
        KUBERNETES_VERSIONS[1],
    ];
    if let Some(values) = values {
        args.extend(["--values", values]);
    }
    let what = format!(
        "helm template {CHART} (values: {})",
        values.unwrap_or("defaults")
    );
    render_from(what, helm(&args))
}

// The renders, made once per test binary; `None` when the tool is missing outside CI.

fn base() -> Option<&'static Render> {
    static CELL: OnceLock<Render> = OnceLock::new();
    refresh_copies_if_asked();
    tool(
        "kubectl",
        &["version", "--client"],
        "render the Kustomize manifests",
    )
    .then(|| CELL.get_or_init(|| kustomize(BASE)))
}

fn operator() -> Option<&'static Render> {
    static CELL: OnceLock<Render> = OnceLock::new();
    refresh_copies_if_asked();
    tool(
        "kubectl",
        &["version", "--client"],
        "render the Kustomize manifests",
    )
    .then(|| CELL.get_or_init(|| kustomize(OPERATOR)))
}

fn sharded() -> Option<&'static Render> {
    static CELL: OnceLock<Render> = OnceLock::new();
    refresh_copies_if_asked();
    tool(
        "kubectl",
        &["version", "--client"],
        "render the Kustomize manifests",
    )
    .then(|| CELL.get_or_init(|| kustomize(SHARDED)))
}

fn leader_elected() -> Option<&'static Render> {
    static CELL: OnceLock<Render> = OnceLock::new();
    refresh_copies_if_asked();
    tool(
        "kubectl",
        &["version", "--client"],
        "render the Kustomize manifests",
    )
    .then(|| CELL.get_or_init(|| kustomize(LEADER_ELECTED)))
}

fn helm_installed() -> bool {
    tool(
        "helm",
        &["version", "--short"],
        "lint and render the Helm chart",
    )
}

fn chart(values: Option<&str>) -> Option<&'static Render> {
    static CELLS: [OnceLock<Render>; HELM_VALUES.len()] =
        [const { OnceLock::new() }; HELM_VALUES.len()];
    refresh_copies_if_asked();
    let index = HELM_VALUES
        .iter()
        .position(|v| *v == values)
        .expect("a values file of HELM_VALUES");
    helm_installed().then(|| CELLS[index].get_or_init(|| helm_template(values)))
}

/// Every render this machine can make: the Kustomize ones, then the chart's.
fn all_renders() -> Vec<&'static Render> {
    let mut renders: Vec<&'static Render> = base()
        .into_iter()
        .chain(operator())
        .chain(sharded())
        .chain(leader_elected())
        .collect();
    for values in HELM_VALUES {
        renders.extend(chart(values));
    }
    renders
}

fn write_temp(dir: &tempfile::TempDir, file: &str, content: &str) -> PathBuf {
    let target = dir.path().join(file);
    std::fs::write(&target, content).expect("write temp file");
    target
}

/// Copies a file or directory tree, leaving out `target` directories.
fn copy_tree(from: &Path, to: &Path) {
    if from.is_dir() {
        if from.file_name().is_some_and(|n| n == "target") {
            return;
        }
        std::fs::create_dir_all(to).expect("mkdir");
        for entry in std::fs::read_dir(from).expect("read_dir") {
            let entry = entry.expect("entry");
            copy_tree(&entry.path(), &to.join(entry.file_name()));
        }
    } else {
        std::fs::copy(from, to).expect("copy");
    }
}

// ---------------------------------------------------------------------------------------
// 1. Rendering
// ---------------------------------------------------------------------------------------

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
    let (Some(base), Some(operator)) = (base(), operator()) else {
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
    let (Some(base), Some(sharded)) = (base(), sharded()) else {
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
const LEADER_ENV_PREFIX: &str = "SELFHEAL_PROBES__LEADER_ELECTION__";
const DEFAULT_LEASE: &str = "selfheal-exporter-prober";

/// The container's environment variable `name`, if set.
fn env_var<'a>(workload: &'a Value, wanted: &str) -> Option<&'a Value> {
    workload["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == wanted)
}

/// The workload's leader election: `Some(lease name)` when its container switches
/// [probes.leader_election] on (SELFHEAL_PROBES__LEADER_ELECTION__ENABLED=true), after
/// checking that POD_NAME and POD_NAMESPACE come from the downward API. `None` otherwise.
fn leader_election_of(render: &Render, workload: &Value) -> Option<String> {
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
    let (Some(base), Some(elected)) = (base(), leader_elected()) else {
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

// ---------------------------------------------------------------------------------------
// 2. Kubernetes schemas, and the structure of the prometheus-operator objects
// ---------------------------------------------------------------------------------------

const CRD_GROUP: &str = "monitoring.coreos.com/v1";

/// Runs kubernetes-validate (strict: unknown fields are errors) on `render` for every
/// version of KUBERNETES_VERSIONS. Objects of monitoring.coreos.com (no schema there) are
/// checked by `check_service_monitor` and `check_prometheus_rule` instead.
fn validate_against_schemas(render: &Render) {
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
    let renders: Vec<_> = base()
        .into_iter()
        .chain(operator())
        .chain(sharded())
        .chain(leader_elected())
        .collect();
    if renders.is_empty()
        || !tool(
            "kubernetes-validate",
            &["--version"],
            "validate the manifests",
        )
    {
        return;
    }
    for render in renders {
        validate_against_schemas(render);
    }
}

#[test]
fn helm_manifests_match_the_kubernetes_schemas() {
    if !helm_installed()
        || !tool(
            "kubernetes-validate",
            &["--version"],
            "validate the manifests",
        )
    {
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

fn keys(value: &Value) -> BTreeSet<&str> {
    value
        .as_object()
        .map(|map| map.keys().map(String::as_str).collect())
        .unwrap_or_default()
}

fn assert_keys_within(value: &Value, allowed: &[&str], what: &str) {
    let unknown: Vec<_> = keys(value)
        .into_iter()
        .filter(|key| !allowed.contains(key))
        .collect();
    assert!(unknown.is_empty(), "{what}: unknown fields {unknown:?}");
}

fn labels_of(object: &Value, pointer: &str) -> BTreeMap<String, String> {
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
fn check_service_monitor(render: &Render, monitor: &Value) {
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
                assert!(timeout <= interval, "{what}: scrapeTimeout above interval")
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
    let renders: Vec<_> = operator()
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

// ---------------------------------------------------------------------------------------
// 3. The Helm chart
// ---------------------------------------------------------------------------------------

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
        // only, but for the Lease of leader election.
        let allowed: &[&str] = if file == "leader-election-rbac.yaml" {
            &[r#"verbs: ["create"]"#, r#"verbs: ["get", "patch"]"#]
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

// ---------------------------------------------------------------------------------------
// 4. RBAC: read-only, on exactly what the exporter observes
// ---------------------------------------------------------------------------------------

/// (API group, resource, verb, resource name or "" for any).
type Grant = (String, String, String, String);

fn is_lease_rule(rule: &Value) -> bool {
    rule["apiGroups"] == serde_json::json!(["coordination.k8s.io"])
        && rule["resources"] == serde_json::json!(["leases"])
}

fn grants(role: &Value, what: &str) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_array().expect("rules") {
        // resourceNames only narrow the Lease rule; nonResourceURLs never appear.
        let allowed: &[&str] = if is_lease_rule(rule) {
            &["apiGroups", "resources", "verbs", "resourceNames"]
        } else {
            &["apiGroups", "resources", "verbs"]
        };
        assert_keys_within(
            rule,
            allowed,
            &format!("{what}: no resourceNames (but on the Lease) / nonResourceURLs"),
        );
        let list = |key: &str| -> Vec<String> {
            rule[key]
                .as_array()
                .unwrap_or_else(|| panic!("{what}: rule without {key}"))
                .iter()
                .map(|v| v.as_str().expect("string").to_owned())
                .collect()
        };
        let names = match rule.get("resourceNames") {
            Some(_) => list("resourceNames"),
            None => vec![String::new()],
        };
        for group in list("apiGroups") {
            for resource in list("resources") {
                for verb in list("verbs") {
                    assert!(
                        group != "*" && resource != "*" && verb != "*",
                        "{what}: no wildcards"
                    );
                    for name in &names {
                        out.insert((group.clone(), resource.clone(), verb.clone(), name.clone()));
                    }
                }
            }
        }
    }
    out
}

fn read_grants(resources: &[(&str, &str)]) -> BTreeSet<Grant> {
    resources
        .iter()
        .flat_map(|(group, resource)| {
            READ_VERBS.map(|verb| {
                (
                    group.to_string(),
                    resource.to_string(),
                    verb.to_string(),
                    String::new(),
                )
            })
        })
        .collect()
}

/// What leader election may do with its Lease `name`: create (which cannot be limited to
/// a name), get and patch (lock, renew, release) that one Lease. No update, list, watch
/// or delete.
fn lease_grants(name: &str) -> BTreeSet<Grant> {
    let grant = |verb: &str, name: &str| {
        (
            "coordination.k8s.io".to_owned(),
            "leases".to_owned(),
            verb.to_owned(),
            name.to_owned(),
        )
    };
    [
        grant("create", ""),
        grant("get", name),
        grant("patch", name),
    ]
    .into_iter()
    .collect()
}

#[test]
fn rbac_grants_read_access_only() {
    for render in all_renders() {
        let what = &render.what;
        let workload = render.workload();
        let account = str_of(workload, "/spec/template/spec/serviceAccountName");
        let home = namespace(workload);
        assert!(
            render.find("ServiceAccount", home, account).is_some(),
            "{what}: the {}'s ServiceAccount {account} is rendered",
            kind(workload)
        );
        let cluster_roles = render.of_kind("ClusterRole");
        let roles = render.of_kind("Role");
        assert!(
            !cluster_roles.is_empty() || !roles.is_empty(),
            "{what}: no RBAC"
        );
        for role in &cluster_roles {
            assert_eq!(
                grants(role, what),
                read_grants(&CLUSTER_READ),
                "{what}: {} grants get/list/watch on exactly pods, events, services, namespaces \
                 and endpointslices",
                id(role)
            );
        }
        // The one exception to read-only: leader election's Lease, in a Role of the
        // exporter's own namespace, exactly when leader election is on.
        let lease = leader_election_of(render, workload);
        let mut lease_roles = 0;
        for role in &roles {
            let granted = grants(role, what);
            if granted.iter().any(|(group, resource, _, _)| {
                group == "coordination.k8s.io" && resource == "leases"
            }) {
                lease_roles += 1;
                assert_eq!(
                    namespace(role),
                    home,
                    "{what}: {}: the Lease Role lives in the exporter's namespace",
                    id(role)
                );
                let name = lease.as_deref().unwrap_or_else(|| {
                    panic!(
                        "{what}: {} grants on leases without leader election",
                        id(role)
                    )
                });
                assert_eq!(granted, lease_grants(name), "{what}: {}", id(role));
                continue;
            }
            let namespaced: Vec<_> = CLUSTER_READ
                .into_iter()
                .filter(|(_, r)| *r != "namespaces")
                .collect();
            assert_eq!(granted, read_grants(&namespaced), "{what}: {}", id(role));
        }
        assert_eq!(
            lease_roles,
            usize::from(lease.is_some()),
            "{what}: one Lease Role with leader election, none without"
        );
        // Every binding binds a rendered role to the workload's ServiceAccount, and
        // every role is bound.
        let mut bound = BTreeSet::new();
        for binding in render
            .of_kind("ClusterRoleBinding")
            .into_iter()
            .chain(render.of_kind("RoleBinding"))
        {
            let role_kind = str_of(binding, "/roleRef/kind");
            let role_ns = if role_kind == "Role" {
                namespace(binding)
            } else {
                ""
            };
            let role = render
                .find(role_kind, role_ns, str_of(binding, "/roleRef/name"))
                .unwrap_or_else(|| {
                    panic!("{what}: {} binds a role that is not rendered", id(binding))
                });
            bound.insert(id(role));
            let subjects = binding["subjects"].as_array().expect("subjects");
            assert_eq!(subjects.len(), 1, "{what}: {}", id(binding));
            assert_eq!(subjects[0]["kind"], "ServiceAccount");
            assert_eq!(subjects[0]["name"], account, "{what}: {}", id(binding));
            assert_eq!(subjects[0]["namespace"], home, "{what}: {}", id(binding));
        }
        for role in cluster_roles.iter().chain(&roles) {
            assert!(bound.contains(&id(role)), "{what}: {} is bound", id(role));
        }
    }
    // The namespaced chart creates nothing cluster-wide.
    if let Some(namespaced) = chart(HELM_VALUES[2]) {
        assert!(namespaced.of_kind("ClusterRole").is_empty());
        assert!(namespaced.of_kind("ClusterRoleBinding").is_empty());
        let mut role_namespaces: Vec<_> = namespaced
            .of_kind("Role")
            .into_iter()
            .map(namespace)
            .collect();
        role_namespaces.sort();
        assert_eq!(role_namespaces, ["grade-submission", "team-a"]);
    }
}

// ---------------------------------------------------------------------------------------
// 5. The embedded config passes `selfheal-exporter check-config`
// ---------------------------------------------------------------------------------------

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
            .get("probes")
            .and_then(|p| p.get("leader_election"))
            .unwrap_or_else(|| panic!("{what}: no [probes.leader_election] in check-config"));
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

// ---------------------------------------------------------------------------------------
// The pod: hardened, sized, probed, and the image this crate builds
// ---------------------------------------------------------------------------------------

#[test]
fn the_pod_is_hardened_sized_and_probed() {
    for render in all_renders() {
        let what = &render.what;
        let deployment = render.workload();
        // A Deployment: exactly one replica; a StatefulSet: one per shard (checked in
        // sharded_statefulsets_run_one_pod_per_shard).
        match kind(deployment) {
            "Deployment" => {
                // More than one only as standbys for the leader-elected prober.
                if leader_election_of(render, deployment).is_some() {
                    assert!(
                        deployment["spec"]["replicas"]
                            .as_u64()
                            .is_some_and(|r| r >= 1),
                        "{what}: replicas"
                    );
                } else {
                    assert_eq!(deployment["spec"]["replicas"], 1, "{what}: one replica");
                }
                let args = container_args(deployment);
                assert!(
                    flag_value(&args, "--shard").is_none()
                        && flag_value(&args, "--total-shards").is_none(),
                    "{what}: an unsharded Deployment passes no shard flags: {args:?}"
                );
            }
            _ => assert!(shards_of(render, deployment).is_some(), "{what}"),
        }
        let pod = &deployment["spec"]["template"]["spec"];
        assert_eq!(
            pod["automountServiceAccountToken"], true,
            "{what}: it needs the API"
        );
        assert_eq!(
            pod["enableServiceLinks"], false,
            "{what}: service links would inject SELFHEAL_EXPORTER_* variables, which the \
             daemon reads as (unknown, fatal) config keys"
        );
        let grace = pod["terminationGracePeriodSeconds"].as_i64().unwrap_or(30);
        assert!(grace >= 10, "{what}: terminationGracePeriodSeconds {grace}");
        let pod_security = &pod["securityContext"];
        assert_eq!(pod_security["runAsNonRoot"], true, "{what}");
        assert_eq!(pod_security["runAsUser"], UID, "{what}");
        assert_eq!(
            pod_security["seccompProfile"]["type"], "RuntimeDefault",
            "{what}"
        );
        assert_eq!(pod["hostNetwork"], Value::Null, "{what}");
        let containers = pod["containers"].as_array().expect("containers");
        assert_eq!(containers.len(), 1, "{what}");
        let container = &containers[0];
        let security = &container["securityContext"];
        assert_eq!(security["runAsNonRoot"], true, "{what}");
        assert_eq!(security["runAsUser"], UID, "{what}");
        assert_eq!(security["readOnlyRootFilesystem"], true, "{what}");
        assert_eq!(security["allowPrivilegeEscalation"], false, "{what}");
        assert_eq!(
            security["capabilities"]["drop"],
            serde_json::json!(["ALL"]),
            "{what}"
        );
        assert_eq!(security["capabilities"].get("add"), None, "{what}");
        assert_ne!(security["privileged"], true, "{what}");

        // The image: this crate's version, never `latest`.
        let image = container["image"].as_str().expect("image");
        assert!(
            image.ends_with(&format!(":{}", env!("CARGO_PKG_VERSION"))),
            "{what}: image {image} is tagged with the crate version"
        );
        // Probes on the endpoints the daemon serves.
        assert_eq!(
            container["livenessProbe"]["httpGet"]["path"], "/healthz",
            "{what}"
        );
        assert_eq!(
            container["readinessProbe"]["httpGet"]["path"], "/readyz",
            "{what}"
        );
        for probe in ["livenessProbe", "readinessProbe"] {
            assert_eq!(
                container[probe]["httpGet"]["port"], "metrics",
                "{what}: {probe}"
            );
        }
        assert_eq!(container["ports"][0]["containerPort"], PORT, "{what}");
        // Resources from the benchmark: peak RSS 43.6 MiB at 10,000 pods.
        let resources = &container["resources"];
        assert_eq!(resources["requests"]["memory"], "64Mi", "{what}");
        assert_eq!(resources["requests"]["cpu"], "50m", "{what}");
        assert_eq!(resources["limits"]["memory"], "128Mi", "{what}");
        // The Service exposes the port by name.
        let service = render.metrics_service();
        let port = &service["spec"]["ports"][0];
        assert_eq!(port["name"], "metrics", "{what}");
        assert_eq!(port["port"], PORT, "{what}");
        let selector = labels_of(service, "/spec/selector");
        let pod_labels = labels_of(deployment, "/spec/template/metadata/labels");
        assert!(
            selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)),
            "{what}: the Service selects the pod"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Sharding: a StatefulSet of one pod per shard
// ---------------------------------------------------------------------------------------

/// The exporter container's args.
fn container_args(workload: &Value) -> Vec<String> {
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
fn flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
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
fn shards_of(render: &Render, workload: &Value) -> Option<(u32, std::ops::Range<u32>)> {
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
fn unsharded_pod_template(workload: &Value) -> Value {
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
    if sharded().is_some() {
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
            let mut args = vec![
                "template",
                "selfheal-exporter",
                ".",
                "--namespace",
                "selfheal-system",
            ];
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

#[test]
fn the_base_uses_the_crate_version_as_image_tag() {
    // Without kubectl: the kustomization's images entry.
    let kustomization = yaml(
        &read(&format!("{BASE}/kustomization.yaml")),
        "kustomization",
    );
    assert_eq!(kustomization["images"][0]["name"], "selfheal-exporter");
    assert_eq!(
        kustomization["images"][0]["newTag"],
        env!("CARGO_PKG_VERSION"),
        "{BASE}/kustomization.yaml images[0].newTag is the crate's version: bump both"
    );
}

// ---------------------------------------------------------------------------------------
// The rules and dashboards: shipped unchanged
// ---------------------------------------------------------------------------------------

#[test]
fn copies_equal_their_sources() {
    refresh_copies_if_asked();
    let (copies, stale) = expected_copies();
    if copies.is_empty() {
        eprintln!(
            "NOTE: neither {RULES_SOURCE} nor {DASHBOARDS_SOURCE}/*.json exist yet: no copies to check"
        );
    }
    let mut differ = Vec::new();
    for (copy, expected) in &copies {
        if std::fs::read_to_string(path(copy)).ok().as_deref() != Some(expected.as_str()) {
            differ.push(copy.clone());
        }
    }
    assert!(
        differ.is_empty() && stale.is_empty(),
        "copies out of date: {differ:?}; copies whose source is gone: {stale:?}. The chart \
         and the overlay cannot read deploy/rules/ or grafana/dashboards/ themselves: {REFRESH_HINT}"
    );
}

fn source_groups() -> Option<Value> {
    path(RULES_SOURCE).exists().then(|| {
        let rules = yaml(&read(RULES_SOURCE), RULES_SOURCE);
        numbers_as_floats(&rules["groups"])
    })
}

/// `groups` with the expr of the recording rule selfheal:threshold:<name> replaced.
fn with_threshold(groups: &Value, threshold: &str, expr: &str) -> Value {
    let mut groups = groups.clone();
    let record = format!("selfheal:threshold:{threshold}");
    let mut replaced = 0;
    for group in groups.as_array_mut().expect("groups") {
        for rule in group["rules"].as_array_mut().expect("rules") {
            if rule["record"] == record.as_str() {
                rule["expr"] = Value::String(expr.to_owned());
                replaced += 1;
            }
        }
    }
    assert_eq!(replaced, 1, "{RULES_SOURCE}: one recording rule {record}");
    groups
}

/// `promtool check rules` on the groups of a rendered PrometheusRule.
fn promtool_check(groups: &Value, what: &str) {
    if !tool("promtool", &["--version"], "check the rendered alert rules") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // JSON is YAML: the groups exactly as rendered.
    let file = write_temp(
        &dir,
        "rules.yaml",
        &serde_json::json!({ "groups": groups }).to_string(),
    );
    let mut command = Command::new("promtool");
    command.args(["check", "rules"]).arg(&file);
    let ran = run(command);
    assert!(
        ran.status.success(),
        "{what}: promtool check rules:\n{}",
        ran.said()
    );
}

#[test]
fn prometheus_rules_carry_exactly_the_source_groups() {
    refresh_copies_if_asked();
    let Some(source) = source_groups() else {
        eprintln!("NOTE: {RULES_SOURCE} does not exist yet: nothing to compare");
        return;
    };
    let mut expected = vec![(operator(), source.clone())];
    // The chart's thresholds (ci/all-enabled-values.yaml: oom_kills_1h: 5) replace one expr.
    expected.push((
        chart(HELM_VALUES[1]),
        with_threshold(&source, "oom_kills_1h", "vector(5)"),
    ));
    for (render, groups) in expected {
        let Some(render) = render else { continue };
        let rule = render.one("PrometheusRule");
        let shipped = numbers_as_floats(&rule["spec"]["groups"]);
        if let Some(difference) = first_difference(&shipped, &groups, "groups") {
            panic!(
                "{}: the PrometheusRule's groups differ from {RULES_SOURCE} (shipped vs \
                 expected {difference}); {REFRESH_HINT}",
                render.what
            );
        }
        promtool_check(&rule["spec"]["groups"], &render.what);
    }
    // Without overrides, the chart ships the groups verbatim.
    if helm_installed() {
        let ran = helm(&[
            "template",
            "x",
            ".",
            "--set",
            "prometheusRule.enabled=true",
            "--kube-version",
            KUBERNETES_VERSIONS[1],
        ]);
        let render = render_from(
            "helm template --set prometheusRule.enabled=true".into(),
            ran,
        );
        let shipped = numbers_as_floats(&render.one("PrometheusRule")["spec"]["groups"]);
        if let Some(difference) = first_difference(&shipped, &source, "groups") {
            panic!(
                "{}: groups differ from {RULES_SOURCE} ({difference}); {REFRESH_HINT}",
                render.what
            );
        }
    }
}

#[test]
fn dashboards_ship_byte_for_byte() {
    refresh_copies_if_asked();
    let sources = source_dashboards();
    if sources.is_empty() {
        eprintln!("NOTE: {DASHBOARDS_SOURCE}/ has no dashboards yet: nothing to compare");
        return;
    }
    for render in operator().into_iter().chain(chart(HELM_VALUES[1])) {
        for (file, source) in &sources {
            let content = read(source);
            serde_json::from_str::<Value>(&content)
                .unwrap_or_else(|e| panic!("{source} is not JSON: {e}"));
            let shipped: Vec<&Value> = render
                .of_kind("ConfigMap")
                .into_iter()
                .filter(|cm| cm["data"].get(file).is_some())
                .collect();
            assert_eq!(
                shipped.len(),
                1,
                "{}: one ConfigMap carries {file} (the overlay lists each dashboard in its \
                 configMapGenerator)",
                render.what
            );
            let config_map = shipped[0];
            assert_eq!(
                config_map["metadata"]["labels"]["grafana_dashboard"],
                "1",
                "{}: {} is labelled for the Grafana sidecar",
                render.what,
                id(config_map)
            );
            assert!(
                config_map["data"][file].as_str() == Some(content.as_str()),
                "{}: {file} differs from {source}; {REFRESH_HINT}",
                render.what
            );
            // ConfigMaps hold at most 1 MiB.
            assert!(
                content.len() < 1_000_000,
                "{source} is too big for a ConfigMap"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// The Dockerfile (no Docker engine here: checked structurally)
// ---------------------------------------------------------------------------------------

#[test]
fn dockerfile_is_multi_stage_non_root_and_pinned() {
    let dockerfile = read("Dockerfile");
    // Instructions, with continuation lines joined and comments dropped.
    let mut instructions: Vec<String> = Vec::new();
    let mut current = String::new();
    for line in dockerfile.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(start) => {
                current.push_str(start);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                instructions.push(std::mem::take(&mut current));
            }
        }
    }
    let from: Vec<&String> = instructions
        .iter()
        .filter(|i| i.starts_with("FROM "))
        .collect();
    assert!(from.len() >= 2, "multi-stage: {from:?}");
    for line in &from {
        let image = line.split_whitespace().nth(1).expect("FROM image");
        let tag = image.rsplit_once(':').map(|(_, tag)| tag).unwrap_or("");
        assert!(
            image.contains('@') || (!tag.is_empty() && !tag.contains('/')),
            "{line}: every base image has an explicit tag or digest"
        );
        assert!(!tag.starts_with("latest"), "{line}: never latest");
    }
    let build = from[0];
    assert!(
        build.starts_with("FROM rust:"),
        "{build}: the official Rust image"
    );
    // The build image's Rust is at least the crate's rust-version.
    let toml: toml::Table = read("Cargo.toml").parse().expect("Cargo.toml");
    let needed = toml["workspace"]["package"]["rust-version"]
        .as_str()
        .expect("rust-version");
    let minor = |version: &str| -> u32 {
        version
            .split('.')
            .nth(1)
            .and_then(|m| m.split('-').next()?.parse().ok())
            .unwrap_or(0)
    };
    let build_version = build
        .split_whitespace()
        .nth(1)
        .expect("image")
        .trim_start_matches("rust:");
    assert!(
        minor(build_version) >= minor(needed),
        "{build}: the crate needs Rust {needed}"
    );
    assert!(
        instructions
            .iter()
            .any(|i| i.contains("cargo build --release --locked -p selfheal-exporter")),
        "the build stage runs cargo build --release --locked -p selfheal-exporter"
    );
    // The final stage: distroless nonroot (glibc) or scratch, non-root, the binary.
    let last_from = instructions
        .iter()
        .rposition(|i| i.starts_with("FROM "))
        .expect("FROM");
    let final_stage = &instructions[last_from..];
    let final_image = final_stage[0].split_whitespace().nth(1).expect("image");
    assert!(
        final_image.starts_with("gcr.io/distroless/cc-debian12:nonroot")
            || final_image == "scratch",
        "final stage: {final_image}"
    );
    // A binary built against a newer glibc does not start on an older one.
    if final_image != "scratch" {
        let debian = [("bookworm", "debian12"), ("trixie", "debian13")];
        let matched = debian
            .iter()
            .any(|(build_os, run_os)| build.contains(build_os) && final_image.contains(run_os));
        assert!(
            matched,
            "{build} and {final_image}: the same Debian release"
        );
    }
    let user = final_stage
        .iter()
        .rfind(|i| i.starts_with("USER "))
        .expect("the final stage sets USER");
    let uid = user[5..].split(':').next().expect("uid").trim();
    assert_eq!(
        uid,
        UID.to_string(),
        "{user}: numeric, so runAsNonRoot can verify it"
    );
    assert!(
        final_stage.iter().any(|i| i == &format!("EXPOSE {PORT}")),
        "EXPOSE {PORT}"
    );
    let entrypoint = final_stage
        .iter()
        .find(|i| i.starts_with("ENTRYPOINT "))
        .expect("ENTRYPOINT");
    let argv: Vec<String> = serde_json::from_str(&entrypoint["ENTRYPOINT ".len()..])
        .expect("ENTRYPOINT in exec form (a JSON array): no shell in distroless");
    assert!(argv[0].ends_with("/selfheal-exporter"), "{entrypoint}");
    let copied = final_stage
        .iter()
        .find(|i| i.starts_with("COPY --from="))
        .expect("the final stage copies the binary from the build stage");
    assert!(copied.contains(&argv[0]), "{copied}: installs {}", argv[0]);

    // .dockerignore: an allowlist with what the workspace build reads, without target/.
    let dockerignore = read(".dockerignore");
    let ignore: Vec<&str> = dockerignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(
        ignore.first(),
        Some(&"*"),
        ".dockerignore excludes everything first"
    );
    let allowed: BTreeSet<&str> = ignore
        .iter()
        .filter_map(|l| l.strip_prefix('!'))
        .map(|l| l.trim_end_matches('/'))
        .collect();
    let members = toml["workspace"]["members"].as_array().expect("members");
    let mut needed: Vec<String> = vec!["Cargo.toml".into(), "Cargo.lock".into(), "src".into()];
    needed.extend(
        members
            .iter()
            .filter_map(|m| m.as_str())
            .filter(|m| *m != ".")
            .map(String::from),
    );
    if toml.contains_key("bench") {
        needed.push("benches".into());
    }
    for entry in &needed {
        assert!(
            allowed.contains(entry.as_str()),
            ".dockerignore must let {entry} in"
        );
    }
    assert!(!allowed.contains("target"), ".dockerignore lets target/ in");
}

#[test]
fn the_docker_build_context_is_a_complete_workspace() {
    // What `COPY . .` sees (the allowlist of .dockerignore) is a workspace cargo can load:
    // every member and every declared target present, Cargo.lock up to date.
    let context = tempfile::tempdir().expect("tempdir");
    let allowed: Vec<String> = read(".dockerignore")
        .lines()
        .filter_map(|l| l.trim().strip_prefix('!'))
        .map(|l| l.trim_end_matches('/').to_owned())
        .collect();
    for entry in &allowed {
        copy_tree(&path(entry), &context.path().join(entry));
    }
    // `cargo fetch` loads the whole workspace as `cargo build` does (members, declared
    // targets such as benches, Cargo.lock) without compiling; offline, for this platform.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let host = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let mut command = Command::new(cargo);
    command
        .args(["fetch", "--locked", "--offline", "--target", &host])
        .current_dir(context.path());
    let ran = run(command);
    assert!(
        ran.status.success(),
        "cargo cannot load the Docker build context (.dockerignore lets in {allowed:?}):\n{}",
        ran.stderr
    );
}

/// The ```yaml block after `<!-- tested: NAME -->` in deploy/README.md, unindented.
fn readme_snippet(marker_name: &str) -> String {
    let readme = read("deploy/README.md");
    let marker = format!("<!-- tested: {marker_name} -->");
    let at = readme
        .find(&marker)
        .unwrap_or_else(|| panic!("deploy/README.md has the tested snippet {marker}"));
    let rest = &readme[at..];
    let fence = rest
        .find("```yaml")
        .expect("a ```yaml block after the marker");
    let line_start = rest[..fence].rfind('\n').map_or(0, |i| i + 1);
    let indent = fence - line_start;
    let body_start = fence + rest[fence..].find('\n').expect("fence line") + 1;
    let body_end = body_start + rest[body_start..].find("```").expect("closing fence");
    rest[body_start..body_end]
        .lines()
        .map(|line| line.get(indent..).unwrap_or("").trim_end())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Renders a kustomization of deploy/README.md that uses `documented` (a path relative to
/// a checkout next to the user's overlay) as a resource, pointed at `overlay` here.
fn render_readme_kustomization(
    snippet: &str,
    documented: &str,
    overlay: &str,
    what: &str,
) -> Render {
    assert!(
        snippet.contains(documented),
        "the snippet uses {documented}:\n{snippet}"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    // Kustomize wants a relative path to the overlay.
    let ups = dir.path().components().count() - 1;
    let relative = format!(
        "{}{}",
        "../".repeat(ups),
        path(overlay)
            .to_str()
            .expect("utf-8")
            .trim_start_matches('/')
    );
    write_temp(
        &dir,
        "kustomization.yaml",
        &snippet.replace(documented, &relative),
    );
    let mut command = Command::new("kubectl");
    command.arg("kustomize").arg(dir.path());
    render_from(what.into(), run(command))
}

#[test]
fn the_documented_threshold_patch_applies() {
    // deploy/README.md shows how to override an alert threshold in an overlay; that very
    // snippet, pointed at this repository's overlay, must render and change that rule.
    let snippet = readme_snippet("threshold-patch");
    if !path(RULES_SOURCE).exists() {
        return;
    }
    let Some(_) = operator() else { return };
    let render = render_readme_kustomization(
        &snippet,
        "../selfheal-exporter/deploy/kustomize/overlays/prometheus-operator",
        OPERATOR,
        "the threshold patch of deploy/README.md",
    );
    let rule = render.one("PrometheusRule");
    let expected = with_threshold(
        &numbers_as_floats(&yaml(&read(RULES_SOURCE), RULES_SOURCE)["groups"]),
        "oom_kills_1h",
        "vector(5)",
    );
    if let Some(difference) = first_difference(
        &numbers_as_floats(&rule["spec"]["groups"]),
        &expected,
        "groups",
    ) {
        panic!(
            "the README's patch must change exactly selfheal:threshold:oom_kills_1h to \
             vector(5) ({difference}); if the overlay's copy is stale: {REFRESH_HINT}"
        );
    }
}

#[test]
fn the_documented_shard_count_patch_applies() {
    // deploy/README.md shows how to change the shard count of the sharded overlay; that
    // snippet must render, with replicas and --total-shards changed together.
    let snippet = readme_snippet("shard-count-patch");
    let Some(original) = sharded() else { return };
    let render = render_readme_kustomization(
        &snippet,
        "../selfheal-exporter/deploy/kustomize/overlays/sharded",
        SHARDED,
        "the shard-count patch of deploy/README.md",
    );
    let statefulset = render.workload();
    let (total, _) = shards_of(&render, statefulset).expect("a StatefulSet");
    assert_eq!(total, 4, "the README's patch makes 4 shards");
    // Nothing else changes.
    let mut expected = original.workload().clone();
    expected["spec"]["replicas"] = serde_json::json!(4);
    expected["spec"]["template"]["spec"]["containers"][0]["args"][5] = serde_json::json!("4");
    if let Some(difference) = first_difference(statefulset, &expected, "StatefulSet") {
        panic!("the README's shard-count patch changes more than the count: {difference}");
    }
}
