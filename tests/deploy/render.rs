//! The renders under test: `kubectl kustomize` of the base and the overlays, `helm template`
//! with each values file; made once per test binary.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use selfheal_lab::testkit::tools::{HELM, KUBECTL};
use serde_json::Value;

use crate::command::{Ran, path, run};
use crate::copies::refresh_copies_if_asked;
use crate::yaml::{id, kind, name, namespace, yaml_documents};

pub(crate) const BASE: &str = "deploy/kustomize/base";
pub(crate) const OPERATOR: &str = "deploy/kustomize/overlays/prometheus-operator";
pub(crate) const SHARDED: &str = "deploy/kustomize/overlays/sharded";
pub(crate) const LEADER_ELECTED: &str = "deploy/kustomize/overlays/leader-elected";
pub(crate) const TLS: &str = "deploy/kustomize/overlays/tls";
pub(crate) const EVENTS: &str = "deploy/kustomize/overlays/events";
pub(crate) const CHART: &str = "deploy/helm/selfheal-exporter";

/// The Kubernetes versions every rendered manifest is validated against: the oldest the
/// chart supports (Chart.yaml kubeVersion) and the kubectl of CI.
pub(crate) const KUBERNETES_VERSIONS: [&str; 2] = ["1.25.0", "1.32.0"];

pub(crate) struct Render {
    pub(crate) what: String,
    pub(crate) text: String,
    pub(crate) objects: Vec<Value>,
}

impl Render {
    pub(crate) fn of_kind(&self, wanted: &str) -> Vec<&Value> {
        self.objects.iter().filter(|o| kind(o) == wanted).collect()
    }

    pub(crate) fn one(&self, wanted: &str) -> &Value {
        let found = self.of_kind(wanted);
        assert_eq!(found.len(), 1, "{}: one {wanted} expected", self.what);
        found[0]
    }

    pub(crate) fn find(&self, wanted: &str, ns: &str, object_name: &str) -> Option<&Value> {
        self.objects
            .iter()
            .find(|o| kind(o) == wanted && namespace(o) == ns && name(o) == object_name)
    }

    /// The object that runs the exporter's pods: the one Deployment, or the one StatefulSet
    /// of the sharded variants; never both.
    pub(crate) fn workload(&self) -> &Value {
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
    pub(crate) fn metrics_service(&self) -> &Value {
        let found: Vec<&Value> = self
            .of_kind("Service")
            .into_iter()
            .filter(|s| s["spec"]["clusterIP"] != "None")
            .collect();
        assert_eq!(found.len(), 1, "{}: one non-headless Service", self.what);
        found[0]
    }
}

pub(crate) fn render_from(what: String, ran: Ran) -> Render {
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
pub(crate) fn helm(args: &[&str]) -> Ran {
    helm_in(&path(CHART), args)
}

pub(crate) fn helm_in(dir: &Path, args: &[&str]) -> Ran {
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
pub(crate) const HELM_VALUES: [Option<&str>; 6] = [
    None,
    Some("ci/all-enabled-values.yaml"),
    Some("ci/namespaced-values.yaml"),
    Some("ci/sharded-values.yaml"),
    Some("ci/leader-elected-values.yaml"),
    Some("ci/tls-values.yaml"),
];
/// The values file that renders the sharded StatefulSet.
pub(crate) const HELM_SHARDED: Option<&str> = HELM_VALUES[3];
/// The values file that serves HTTPS with client certificates and basic auth.
pub(crate) const HELM_TLS: Option<&str> = HELM_VALUES[5];

/// `helm template` of the chart as the release `selfheal-exporter` in `selfheal-system`.
pub(crate) const HELM_TEMPLATE: [&str; 5] = [
    "template",
    "selfheal-exporter",
    ".",
    "--namespace",
    "selfheal-system",
];

fn helm_template(values: Option<&str>) -> Render {
    let mut args = HELM_TEMPLATE.to_vec();
    args.extend(["--kube-version", KUBERNETES_VERSIONS[1]]);
    if let Some(values) = values {
        args.extend(["--values", values]);
    }
    let what = format!(
        "helm template {CHART} (values: {})",
        values.unwrap_or("defaults")
    );
    render_from(what, helm(&args))
}

// The renders, made once per test binary; `None` only when the tool is missing and
// skipping was asked for (`SKIP_MISSING_TOOLS`).

/// The Kustomize directories under test: the base, then each overlay.
pub(crate) const KUSTOMIZATIONS: [&str; 6] = [BASE, OPERATOR, SHARDED, LEADER_ELECTED, TLS, EVENTS];

/// `kubectl kustomize` of one of `KUSTOMIZATIONS`.
pub(crate) fn kustomization(dir: &str) -> Option<&'static Render> {
    static CELLS: [OnceLock<Render>; KUSTOMIZATIONS.len()] =
        [const { OnceLock::new() }; KUSTOMIZATIONS.len()];
    refresh_copies_if_asked();
    KUBECTL
        .require("render the Kustomize manifests")
        .then(|| once(&CELLS, &KUSTOMIZATIONS, dir, kustomize))
}

pub(crate) fn helm_installed() -> bool {
    HELM.require("lint and render the Helm chart")
}

pub(crate) fn chart(values: Option<&str>) -> Option<&'static Render> {
    static CELLS: [OnceLock<Render>; HELM_VALUES.len()] =
        [const { OnceLock::new() }; HELM_VALUES.len()];
    refresh_copies_if_asked();
    helm_installed().then(|| once(&CELLS, &HELM_VALUES, values, helm_template))
}

/// The render of `key`, one of `keys`, made by `make` the first time and kept in `cells`.
fn once<K: PartialEq + Copy + std::fmt::Debug, const N: usize>(
    cells: &'static [OnceLock<Render>; N],
    keys: &[K; N],
    key: K,
    make: fn(K) -> Render,
) -> &'static Render {
    let index = keys
        .iter()
        .position(|k| *k == key)
        .unwrap_or_else(|| panic!("{key:?} is not one of the renders under test {keys:?}"));
    cells[index].get_or_init(|| make(key))
}

/// Every render this machine can make: the Kustomize ones, then the chart's.
pub(crate) fn all_renders() -> Vec<&'static Render> {
    let mut renders: Vec<&'static Render> = KUSTOMIZATIONS
        .into_iter()
        .filter_map(kustomization)
        .collect();
    for values in HELM_VALUES {
        renders.extend(chart(values));
    }
    renders
}
