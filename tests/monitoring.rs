//! The monitoring content: alert rules (`deploy/rules/`) and Grafana dashboards
//! (`grafana/dashboards/`), checked with promtool and against a real Prometheus that scrapes
//! the daemon while the experiment's scenario plays on the lab API server.
//!
//! promtool and prometheus (Debian's `prometheus` package, which `scripts/test` installs)
//! are required: a test fails without them, naming the install command, unless
//! `SKIP_MISSING_TOOLS=1` asks it to skip (and be listed).

mod common;

use std::collections::{BTreeSet, HashSet};
use std::process::Command;
use std::time::{Duration, Instant};

use common::prometheus::{Prometheus, vector};
use common::*;
use jiff::SignedDuration;
use selfheal_lab::testkit::tools::{PROMETHEUS, PROMTOOL};
use serde_json::{Value, json};

const POD: &str = "grade-submission-api";
const PORTAL: &str = "grade-submission-portal";
const TARGET: &str = "grade-api";
const RULES: &str = "deploy/rules/selfheal-rules.yaml";
const RULE_TESTS: &str = "deploy/rules/selfheal-rules.test.yaml";
const DASHBOARDS: [(&str, &str); 2] = [
    (
        "grafana/dashboards/selfheal-overview.json",
        "selfheal-overview",
    ),
    (
        "grafana/dashboards/selfheal-workload.json",
        "selfheal-workload",
    ),
];
/// The threshold rule the end-to-end alert test overrides, and the alert that uses it.
const OOM_THRESHOLD: &str = "selfheal:threshold:oom_kills_1h";

// ---------------------------------------------------------------------------------------
// Alert rules with promtool
// ---------------------------------------------------------------------------------------

#[test]
fn alert_rules_pass_promtool_check() {
    let Some(promtool) = PROMTOOL.require_path("check the alert rules") else {
        return;
    };
    let (ok, said) = run(Command::new(promtool)
        .args(["check", "rules"])
        .arg(repo(RULES)));
    assert!(
        ok && said.contains("SUCCESS"),
        "promtool check rules:\n{said}"
    );
    assert!(!said.contains("WARNING"), "promtool check rules:\n{said}");
}

#[test]
fn alert_rules_pass_their_promtool_unit_tests() {
    let Some(promtool) = PROMTOOL.require_path("run the alert rules' unit tests") else {
        return;
    };
    let started = Instant::now();
    let (ok, said) = run(Command::new(promtool)
        .args(["test", "rules"])
        .arg(repo(RULE_TESTS)));
    assert!(ok, "promtool test rules:\n{said}");
    eprintln!(
        "promtool test rules: {} in {:?}",
        said.trim(),
        started.elapsed()
    );
    // Every alert of the rule file has unit tests.
    let tests = read(RULE_TESTS);
    for alert in rules_of(&rule_file(), "alert") {
        if alert != "SelfhealAlertThresholdsMissing" {
            assert!(
                tests.contains(&format!(
                    "alertname: {alert}\n        exp_alerts:\n          -"
                )),
                "no unit test where {alert} fires"
            );
        }
        assert!(
            tests.contains(&format!("alertname: {alert}\n        exp_alerts: []")),
            "no unit test where {alert} is silent"
        );
    }
}

/// The rule file as JSON (JSON is YAML, so a modified copy can be written back as JSON).
fn rule_file() -> Value {
    serde_saphyr::from_str(&read(RULES)).expect("the rule file is YAML")
}

fn rules_of(file: &Value, kind: &str) -> Vec<String> {
    file["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|group| group["rules"].as_array().expect("rules").iter())
        .filter_map(|rule| rule[kind].as_str().map(str::to_owned))
        .collect()
}

/// The documented override: replace the `expr` of one rule of the `selfheal-thresholds`
/// group; the alert rules stay as they are.
fn with_threshold(mut file: Value, record: &str, expr: &str) -> Value {
    let group = file["groups"]
        .as_array_mut()
        .expect("groups")
        .iter_mut()
        .find(|group| group["name"] == "selfheal-thresholds")
        .expect("a selfheal-thresholds group");
    let rule = group["rules"]
        .as_array_mut()
        .expect("rules")
        .iter_mut()
        .find(|rule| rule["record"] == record)
        .unwrap_or_else(|| panic!("no threshold rule {record}"));
    rule["expr"] = json!(expr);
    file
}

#[test]
fn thresholds_are_overridden_in_one_place_and_their_removal_is_caught() {
    let Some(promtool) = PROMTOOL.require_path("check the threshold overrides") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    // Every numeric threshold of the alerts is a selfheal:threshold:* series.
    let file = rule_file();
    let thresholds = rules_of(&file, "record");
    assert!(
        thresholds
            .iter()
            .all(|r| r.starts_with("selfheal:threshold:"))
    );
    for threshold in &thresholds {
        assert!(
            file["groups"]
                .as_array()
                .expect("groups")
                .iter()
                .filter(|group| group["name"] == "selfheal-alerts")
                .flat_map(|group| group["rules"].as_array().expect("rules"))
                .any(|rule| rule["expr"]
                    .as_str()
                    .unwrap_or("")
                    .contains(threshold.as_str())),
            "{threshold} is used by no alert"
        );
    }

    // Override: with 2 as the threshold, two kills fire; the default 3 stays silent.
    let two = with_threshold(file.clone(), OOM_THRESHOLD, "vector(2)");
    std::fs::write(dir.path().join("two.yaml"), two.to_string()).expect("written");
    std::fs::write(dir.path().join("default.yaml"), file.to_string()).expect("written");
    // Without the thresholds group: the guard fires.
    let mut none = file.clone();
    none["groups"]
        .as_array_mut()
        .expect("groups")
        .retain(|group| group["name"] != "selfheal-thresholds");
    std::fs::write(dir.path().join("none.yaml"), none.to_string()).expect("written");
    let series = "selfheal_container_oom_kills_total{namespace=\"grade-submission\",workload_kind=\"Pod\",workload=\"grade-submission-api\",container=\"api\"}";
    let oom = |fires: bool| {
        let expected = if fires {
            "\n          - exp_labels: {severity: warning, namespace: grade-submission, workload_kind: Pod, workload: grade-submission-api, container: api}\n            \
             exp_annotations:\n              summary: 'grade-submission/grade-submission-api: container api OOM-killed 2 times in 1h'\n              \
             description: \"Container api of Pod grade-submission/grade-submission-api was OOM-killed 2 times in the last hour, at a memory limit of (none set). \
             Kubernetes restarts it each time; raise the limit or find what makes it grow. Each kill (time, exit code, time to recover): the exporter's /api/v1/incidents.\""
        } else {
            " []"
        };
        format!(
            "  - interval: 1m\n    input_series:\n      - series: '{series}'\n        values: '0 1 2+0x10'\n    \
             alert_rule_test:\n      - eval_time: 5m\n        alertname: SelfhealRepeatedOOMKills\n        exp_alerts:{expected}\n"
        )
    };
    let tests = |rules: &str, body: String| format!("rule_files: [{rules}]\ntests:\n{body}");
    std::fs::write(
        dir.path().join("two.test.yaml"),
        tests("two.yaml", oom(true)),
    )
    .expect("written");
    std::fs::write(
        dir.path().join("default.test.yaml"),
        tests("default.yaml", oom(false)),
    )
    .expect("written");
    let guard = none["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|group| group["rules"].as_array().expect("rules"))
        .find(|rule| rule["alert"] == "SelfhealAlertThresholdsMissing")
        .expect("the guard alert");
    let expected = json!([{"alertname": "SelfhealAlertThresholdsMissing", "eval_time": "11m",
        "exp_alerts": [{"exp_labels": {"severity": "warning"}, "exp_annotations": guard["annotations"]}]}]);
    std::fs::write(
        dir.path().join("none.test.yaml"),
        json!({"rule_files": ["none.yaml"], "tests": [{"interval": "1m", "input_series": [],
               "alert_rule_test": expected}]})
        .to_string(),
    )
    .expect("written");
    for name in ["two", "default", "none"] {
        let (ok, said) = run(Command::new(&promtool)
            .args(["test", "rules"])
            .arg(dir.path().join(format!("{name}.test.yaml"))));
        assert!(ok, "{name}: promtool test rules:\n{said}");
    }
}

// ---------------------------------------------------------------------------------------
// Dashboards: structure
// ---------------------------------------------------------------------------------------

fn dashboard(path: &str) -> Value {
    serde_json::from_str(&read(path)).unwrap_or_else(|e| panic!("{path} is not JSON: {e}"))
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        out.push(panel);
        if let Some(nested) = panel["panels"].as_array() {
            out.extend(nested);
        }
    }
    out
}

fn variables(dashboard: &Value) -> &Vec<Value> {
    dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list")
}

/// The PromQL of a query variable (string, or the newer `{query: ...}` object).
fn variable_query(variable: &Value) -> String {
    match &variable["query"] {
        Value::String(query) => query.clone(),
        query => query["query"].as_str().expect("variable query").to_owned(),
    }
}

#[test]
fn dashboards_are_well_formed() {
    let datasource = json!({"type": "prometheus", "uid": "${datasource}"});
    for (path, uid) in DASHBOARDS {
        let dash = dashboard(path);
        assert_eq!(dash["uid"], uid, "{path}: stable uid");
        assert_eq!(dash["schemaVersion"], 39, "{path}");
        assert!(dash["id"].is_null(), "{path}: no instance-specific id");
        let vars = variables(&dash);
        let ds = vars
            .iter()
            .find(|v| v["name"] == "datasource")
            .unwrap_or_else(|| panic!("{path}: no datasource variable"));
        assert_eq!(ds["type"], "datasource", "{path}");
        assert_eq!(ds["query"], "prometheus", "{path}");
        for name in ["namespace", "workload"] {
            let var = vars
                .iter()
                .find(|v| v["name"] == name)
                .unwrap_or_else(|| panic!("{path}: no {name} variable"));
            assert_eq!(var["type"], "query", "{path}: {name}");
            assert!(
                variable_query(var).starts_with("label_values("),
                "{path}: {name}"
            );
        }
        for var in vars.iter().filter(|v| v["type"] == "query") {
            assert_eq!(
                var["datasource"], datasource,
                "{path}: variable {}",
                var["name"]
            );
        }
        // No hard-coded data source anywhere.
        let mut refs = Vec::new();
        collect_datasources(&dash, &mut refs);
        for r in refs {
            assert!(
                r == &datasource || r["uid"] == "-- Grafana --",
                "{path}: hard-coded data source {r}"
            );
        }
        let mut ids = HashSet::new();
        let mut boxes: Vec<(String, [i64; 4])> = Vec::new();
        for panel in panels(&dash) {
            let title = panel["title"].as_str().expect("title");
            assert!(
                ids.insert(panel["id"].as_i64().expect("id")),
                "{path}: duplicate id"
            );
            let g = &panel["gridPos"];
            let rect = ["x", "y", "w", "h"].map(|k| g[k].as_i64().expect("gridPos"));
            assert!(
                rect[0] + rect[2] <= 24,
                "{path}: {title} wider than the grid"
            );
            for (other, o) in &boxes {
                let overlap = rect[0] < o[0] + o[2]
                    && o[0] < rect[0] + rect[2]
                    && rect[1] < o[1] + o[3]
                    && o[1] < rect[1] + rect[3];
                assert!(!overlap, "{path}: {title} overlaps {other}");
            }
            boxes.push((title.to_owned(), rect));
            if panel["type"] == "row" {
                continue;
            }
            assert_eq!(panel["datasource"], datasource, "{path}: {title}");
            let unit = panel["fieldConfig"]["defaults"]["unit"]
                .as_str()
                .unwrap_or("");
            assert!(!unit.is_empty(), "{path}: {title} has no unit");
            assert!(
                !panel["description"].as_str().unwrap_or("").is_empty(),
                "{path}: {title} has no description"
            );
            let targets = panel["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "{path}: {title} has no query");
            let mut refids = HashSet::new();
            for target in targets {
                assert_eq!(target["datasource"], datasource, "{path}: {title}");
                assert!(target["expr"].as_str().is_some_and(|e| !e.is_empty()));
                assert!(refids.insert(target["refId"].as_str().expect("refId")));
            }
        }
    }
}

fn collect_datasources<'a>(value: &'a Value, out: &mut Vec<&'a Value>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                if key == "datasource" && v.is_object() {
                    out.push(v);
                } else {
                    collect_datasources(v, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_datasources(v, out)),
        _ => {}
    }
}

/// The metric names of README's table (the contract), with `_bucket`/`_sum`/`_count`
/// for histograms.
fn documented_series() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in read("README.md").lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() > 3 && cells[1].starts_with("`selfheal_") {
            let name = cells[1].trim_matches('`');
            if cells[2] == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            } else {
                names.insert(name.to_owned());
            }
        }
    }
    assert!(names.len() > 20, "README metric table not found");
    names
}

fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("selfheal_") {
        let start = i + at;
        let preceded =
            start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b':');
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(text.len(), |n| start + n);
        if !preceded {
            names.insert(text[start..end].to_owned());
        }
        i = end;
    }
    names
}

#[test]
fn dashboards_and_rules_use_only_documented_metrics_and_panels_are_documented() {
    let documented = documented_series();
    let mut texts = vec![(RULES.to_owned(), read(RULES))];
    for (path, _) in DASHBOARDS {
        let dash = dashboard(path);
        let exprs: Vec<String> = panels(&dash)
            .iter()
            .flat_map(|p| p["targets"].as_array().into_iter().flatten())
            .map(|t| t["expr"].as_str().unwrap_or("").to_owned())
            .chain(
                variables(&dash)
                    .iter()
                    .filter(|v| v["type"] == "query")
                    .map(variable_query),
            )
            .collect();
        texts.push((path.to_owned(), exprs.join("\n")));
    }
    for (path, text) in texts {
        for name in metric_names(&text) {
            assert!(
                documented.contains(&name),
                "{path} uses {name}, not in README's metric table"
            );
        }
    }
    let readme = read("grafana/README.md");
    for (path, uid) in DASHBOARDS {
        assert!(
            readme.contains(uid),
            "grafana/README.md does not name {uid}"
        );
        for panel in panels(&dashboard(path))
            .into_iter()
            .filter(|p| p["type"] != "row")
        {
            let title = panel["title"].as_str().expect("title");
            assert!(
                readme.contains(&format!("| {title} |")),
                "grafana/README.md has no row for the panel {title:?} of {uid}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// A real Prometheus scraping the daemon
// ---------------------------------------------------------------------------------------

fn api_labels(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut labels = vec![
        ("namespace", NS),
        ("workload_kind", "Pod"),
        ("workload", POD),
        ("container", "api"),
    ];
    labels.extend_from_slice(extra);
    labels
}

/// The experiment on the lab: the bare pod `grade-submission-api` (48Mi), a static probe
/// target fronting it, the daemon, and a Prometheus scraping the daemon every second.
struct Lab {
    prometheus: Prometheus,
    daemon: Daemon,
    target: Flaky,
    cluster: Cluster,
    pod_uid: String,
    deaths: Vec<Value>,
    started: Instant,
}

impl Lab {
    /// `None` only when prometheus is missing and skipping was asked for.
    async fn start(rules: Option<&str>) -> Option<Lab> {
        let binary = PROMETHEUS.require_path("scrape the daemon and evaluate the rules")?;
        let started = Instant::now();
        let cluster = Cluster::start().await;
        let labels = json!({"app.kubernetes.io/name": "grade-submission",
                            "app.kubernetes.io/component": "backend",
                            "app.kubernetes.io/instance": POD});
        let pod_uid = cluster.create_pod(POD, None, labels).await;
        cluster.set_status(POD, running(0, true, None)).await;
        cluster
            .create_pod(
                PORTAL,
                None,
                json!({"app.kubernetes.io/name": "grade-submission"}),
            )
            .await;
        cluster.set_status(PORTAL, running(0, true, None)).await;
        // A Service whose probe annotations cannot be used (a probe config error).
        cluster
            .create(
                Kind::Service,
                json!({"metadata": {"name": PORTAL, "annotations": {
                           "selfheal.io/probe": "true", "selfheal.io/probe-interval": "fast"}},
                       "spec": {"type": "NodePort", "selector": {"app.kubernetes.io/name": "grade-submission"},
                                "ports": [{"name": "http", "port": 5001, "targetPort": 5001, "nodePort": 32000}]}}),
            )
            .await;
        let target = Flaky::start().await;
        let config = format!(
            "[[probes.targets]]\nname = \"{TARGET}\"\nurl = \"http://127.0.0.1:{}/grade\"\n\
             interval = \"100ms\"\ntimeout = \"500ms\"\n\
             workload = {{ namespace = \"{NS}\", kind = \"Pod\", name = \"{POD}\" }}\n",
            target.port
        );
        let daemon = Daemon::start(&cluster, &config).await;
        let prometheus = Prometheus::start(&binary, daemon.port, rules).await;
        let lab = Lab {
            prometheus,
            daemon,
            target,
            cluster,
            pod_uid,
            deaths: Vec::new(),
            started,
        };
        // The OOMKill counter's 0 is in Prometheus before the first kill.
        lab.prometheus
            .wait_for(
                "the container at 0 OOMKills",
                &format!("selfheal_container_oom_kills_total{{workload=\"{POD}\"}}"),
                |s| s.len() == 1 && s[0].1 == 0.0,
            )
            .await;
        lab.step("daemon and Prometheus up");
        Some(lab)
    }

    fn step(&self, what: &str) {
        eprintln!("[{:>6.2?}] {what}", self.started.elapsed());
    }

    async fn wait_metric(&self, what: &str, name: &str, labels: &[(&str, &str)], value: f64) {
        self.daemon
            .wait_for(what, |s| s.get(name, labels) == Some(value))
            .await;
    }

    /// The exporter's own trouble: a failed watch call and an unknown kubelet reason.
    async fn exporter_troubles(&self) {
        let faults = self.cluster.lab.faults();
        faults.fail_next(2, 500);
        faults.drop_watches();
        self.daemon
            .wait_for("a watch error", |s| {
                s.sum("selfheal_watch_errors_total", &[]) >= 1.0
            })
            .await;
        let death = death("PreemptedByTheMoon", 137, "portal-0", now_s());
        self.cluster
            .set_status(PORTAL, terminated(0, death.clone(), None))
            .await;
        self.cluster
            .set_status(PORTAL, running(1, true, Some(death)))
            .await;
        self.daemon
            .wait_for("an UnknownReason anomaly", |s| {
                s.sum(
                    "selfheal_input_anomalies_total",
                    &[("kind", "UnknownReason")],
                ) >= 1.0
            })
            .await;
        self.step("watch error and input anomaly");
    }

    /// The kernel kills the API: its clients see an outage; the kubelet restarts it at once.
    async fn first_oomkill(&mut self) {
        self.target.down().await;
        let down = Instant::now();
        let d1 = death("OOMKilled", 137, "first", now_s());
        self.cluster
            .set_status(POD, terminated(0, d1.clone(), None))
            .await;
        self.wait_metric(
            "the first OOMKill",
            "selfheal_container_oom_kills_total",
            &api_labels(&[]),
            1.0,
        )
        .await;
        tokio::time::sleep(Duration::from_millis(800).saturating_sub(down.elapsed())).await;
        self.cluster
            .set_status(POD, running(1, true, Some(d1.clone())))
            .await;
        self.target.up().await;
        self.deaths.push(d1);
        self.daemon
            .wait_for("the outage, caused by the OOMKill", |s| {
                s.get(
                    "selfheal_probe_outages_total",
                    &[("target", TARGET), ("cause", "OOMKilled")],
                ) == Some(1.0)
            })
            .await;
        self.step("first OOMKill, outage and recovery");
    }

    /// Killed again 10 s ago, now waiting in CrashLoopBackOff.
    async fn second_oomkill(&mut self) {
        let d1 = self.deaths[0].clone();
        let d2 = death(
            "OOMKilled",
            137,
            "second",
            now_s() - SignedDuration::from_secs(10),
        );
        self.cluster
            .set_status(POD, terminated(1, d2.clone(), Some(d1)))
            .await;
        self.cluster.set_status(POD, crashloop(1, d2.clone())).await;
        self.deaths.push(d2);
        self.wait_metric(
            "the crashloop",
            "selfheal_container_crashlooping",
            &api_labels(&[("pod", POD)]),
            1.0,
        )
        .await;
        self.wait_metric(
            "the second OOMKill",
            "selfheal_container_oom_kills_total",
            &api_labels(&[]),
            2.0,
        )
        .await;
        self.step("second OOMKill, in CrashLoopBackOff");
    }

    async fn recover_from_second(&self) {
        let d2 = self.deaths[1].clone();
        self.cluster
            .set_status(POD, running(2, false, Some(d2.clone())))
            .await;
        self.cluster
            .set_status(POD, running(2, true, Some(d2)))
            .await;
        self.wait_metric(
            "the second recovery",
            "selfheal_container_time_to_recover_seconds_count",
            &api_labels(&[("reason", "OOMKilled")]),
            2.0,
        )
        .await;
        self.step("second recovery");
    }

    /// A liveness-probe kill and its restart, then a crash that is still in
    /// CrashLoopBackOff when the test looks.
    async fn liveness_kill_then_crashloop(&mut self) {
        let d2 = self.deaths[1].clone();
        let at = now_s();
        self.cluster
            .post_liveness_kill(POD, &self.pod_uid, at)
            .await;
        let d3 = death("Error", 137, "third", at);
        self.cluster
            .set_status(POD, terminated(2, d3.clone(), Some(d2)))
            .await;
        self.cluster
            .set_status(POD, running(3, true, Some(d3.clone())))
            .await;
        self.wait_metric(
            "the liveness kill's restart",
            "selfheal_container_restarts_total",
            &api_labels(&[("reason", "LivenessProbeFailed")]),
            1.0,
        )
        .await;
        let d4 = death("Error", 1, "fourth", now_s());
        self.cluster
            .set_status(POD, terminated(3, d4.clone(), Some(d3)))
            .await;
        self.cluster.set_status(POD, crashloop(3, d4)).await;
        self.wait_metric(
            "the last crashloop",
            "selfheal_container_crashlooping",
            &api_labels(&[("pod", POD)]),
            1.0,
        )
        .await;
        self.step("liveness kill, restart, crash, CrashLoopBackOff");
    }
}

/// Grafana's variables, as the test sets them.
fn grafana_variable(name: &str) -> Option<&'static str> {
    Some(match name {
        "namespace" => NS,
        "workload" => POD,
        "target" => TARGET,
        "__rate_interval" => "1m",
        "__interval" => "15s",
        "__range" => "1h",
        "__range_s" => "3600",
        _ => return None,
    })
}

/// Replaces `$name` and `${name}`; an unknown variable is an error.
fn substitute(expr: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, len) = if let Some(braced) = after.strip_prefix('{') {
            let end = braced.find('}').ok_or("unclosed ${")?;
            (&braced[..end], end + 2)
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        out.push_str(grafana_variable(name).ok_or_else(|| format!("unknown variable ${name}"))?);
        rest = &after[len..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `label_values(metric{...}, label)` is a Grafana function: the underlying query.
fn variable_promql(query: &str) -> (String, String) {
    let inner = query
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
        .unwrap_or_else(|| panic!("unsupported variable query {query}"));
    match inner.rsplit_once(',') {
        Some((selector, label)) => {
            let label = label.trim();
            (
                format!("count by ({label}) ({})", selector.trim()),
                label.to_owned(),
            )
        }
        None => {
            let label = inner.trim();
            (
                format!("count by ({label}) ({{{label}!=\"\"}})"),
                label.to_owned(),
            )
        }
    }
}

/// What some panels must show after the scenario: events in the selected range are counted
/// exactly, the first of each series included (the series are younger than the range).
fn exact_value(uid: &str, what: &str) -> Option<f64> {
    let panel = what.strip_prefix(uid)?.strip_prefix(" / ")?;
    Some(match (uid, panel) {
        // 2 OOMKills and 1 liveness kill restarted; the last crash is still backing off.
        (_, "Restarts / A") => 3.0,
        (_, "OOMKills / A") => 2.0,
        ("selfheal-overview", "Crash-looping now / A") => 1.0,
        ("selfheal-workload", "Crash-looping pods now / A") => 1.0,
        ("selfheal-overview", "Outages by probe target and cause / A") => 1.0,
        ("selfheal-workload", "Outages by cause / A") => 1.0,
        ("selfheal-overview", "Input anomalies / A") => 1.0,
        ("selfheal-workload", "Memory limit / A") => 48.0 * 1024.0 * 1024.0,
        _ => return None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    let Some(mut lab) = Lab::start(None).await else {
        return;
    };
    lab.exporter_troubles().await;
    lab.first_oomkill().await;
    lab.second_oomkill().await;
    lab.recover_from_second().await;
    lab.liveness_kill_then_crashloop().await;
    // Prometheus has scraped the end state.
    let p = &lab.prometheus;
    p.wait_for(
        "the crashloop still on",
        &format!("selfheal_container_crashlooping{{workload=\"{POD}\"}} == 1"),
        |s| s.len() == 1,
    )
    .await;
    p.wait_for(
        "the liveness restart",
        "selfheal_container_restarts_total{reason=\"LivenessProbeFailed\"}",
        |s| s.len() == 1 && s[0].1 == 1.0,
    )
    .await;
    lab.step("Prometheus has the scenario");

    let mut failures = Vec::new();
    let mut report = Vec::new();
    let mut count = 0;
    let mut checked = 0;
    for (path, uid) in DASHBOARDS {
        let dash = dashboard(path);
        for var in variables(&dash).iter().filter(|v| v["type"] == "query") {
            let name = var["name"].as_str().expect("name");
            let (promql, label) = variable_promql(&variable_query(var));
            let what = format!("{uid} variable ${name}");
            count += 1;
            match substitute(&promql) {
                Err(e) => failures.push(format!("{what}: {e}")),
                Ok(promql) => match p.query(&promql).await {
                    Err(e) => failures.push(format!("{what}: {promql}: {e}")),
                    Ok(data) => {
                        let values: Vec<String> = vector(&data)
                            .iter()
                            .filter_map(|(m, _)| m[&label].as_str().map(str::to_owned))
                            .collect();
                        let expected = grafana_variable(name).expect("a test value");
                        if !values.iter().any(|v| v == expected) {
                            failures.push(format!(
                                "{what}: {promql}: options {values:?} lack {expected}"
                            ));
                        }
                        report.push(format!("{what}: {promql} -> {values:?}"));
                    }
                },
            }
        }
        for panel in panels(&dash) {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let what = format!(
                    "{uid} / {} / {}",
                    panel["title"].as_str().unwrap_or(""),
                    target["refId"].as_str().unwrap_or("")
                );
                let expr = target["expr"].as_str().expect("expr");
                count += 1;
                let promql = match substitute(expr) {
                    Ok(promql) => promql,
                    Err(e) => {
                        failures.push(format!("{what}: {e}"));
                        continue;
                    }
                };
                match p.query(&promql).await {
                    Err(e) => failures.push(format!("{what}: {promql}: {e}")),
                    Ok(data) => {
                        let samples = vector(&data);
                        let finite = samples.iter().filter(|(_, v)| v.is_finite()).count();
                        if finite == 0 {
                            failures.push(format!("{what}: {promql}: no data ({samples:?})"));
                        }
                        if let Some(expected) = exact_value(uid, &what) {
                            let total: f64 = samples.iter().map(|(_, v)| v).sum();
                            if total != expected {
                                failures.push(format!("{what}: {promql}: {total}, not {expected}"));
                            }
                            checked += 1;
                        }
                        report.push(format!(
                            "{what}: {} series, {finite} finite, e.g. {:?}",
                            samples.len(),
                            samples.first().map(|(m, v)| (m.to_string(), *v))
                        ));
                    }
                }
            }
        }
    }
    eprintln!("{}", report.join("\n"));
    lab.step(&format!(
        "{count} dashboard queries evaluated, {checked} against the scenario's exact counts"
    ));
    assert_eq!(checked, 10, "every exact count was checked");
    assert!(
        failures.is_empty(),
        "{} of {count} dashboard queries failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn active<'a>(alerts: &'a [Value], name: &str) -> Vec<&'a Value> {
    alerts
        .iter()
        .filter(|a| a["labels"]["alertname"] == name)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_oomkills_alert_in_a_real_prometheus_with_an_overridden_threshold() {
    // The documented override: the threshold rule's expr, the alert rules unchanged.
    let rules = with_threshold(rule_file(), OOM_THRESHOLD, "vector(2)").to_string();
    let Some(mut lab) = Lab::start(Some(&rules)).await else {
        return;
    };
    let p = &lab.prometheus;
    p.wait_for("the threshold", OOM_THRESHOLD, |s| {
        s.len() == 1 && s[0].1 == 2.0
    })
    .await;

    lab.first_oomkill().await;
    let p = &lab.prometheus;
    p.wait_for(
        "the first OOMKill",
        &format!("selfheal_container_oom_kills_total{{workload=\"{POD}\"}}"),
        |s| s.len() == 1 && s[0].1 == 1.0,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await; // two rule evaluations
    let alerts = p.alerts().await;
    assert!(
        active(&alerts, "SelfhealRepeatedOOMKills").is_empty(),
        "one OOMKill is below the threshold of 2: {alerts:#?}"
    );

    lab.second_oomkill().await;
    let killed = Instant::now();
    let p = &lab.prometheus;
    let deadline = Instant::now() + Duration::from_secs(30);
    let alert = loop {
        let alerts = p.alerts().await;
        if let Some(alert) = active(&alerts, "SelfhealRepeatedOOMKills")
            .into_iter()
            .find(|a| a["labels"]["workload"] == POD)
        {
            break alert.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no SelfhealRepeatedOOMKills: {alerts:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    lab.step(&format!(
        "SelfhealRepeatedOOMKills {} {:?} after the second kill",
        alert["state"],
        killed.elapsed()
    ));
    assert!(
        alert["state"] == "pending" || alert["state"] == "firing",
        "{alert:#}"
    );
    let labels = &alert["labels"];
    assert_eq!(labels["namespace"], NS);
    assert_eq!(labels["workload_kind"], "Pod");
    assert_eq!(labels["container"], "api");
    assert_eq!(labels["severity"], "warning");
    let description = alert["annotations"]["description"].as_str().unwrap_or("");
    assert!(
        description.contains(
            "Container api of Pod grade-submission/grade-submission-api was OOM-killed 2 times"
        ) && description.contains("memory limit of 48Mi"),
        "{description}"
    );

    // Every rule evaluates without error in a real Prometheus, and the exporter is up.
    let groups = p.api("/api/v1/rules").await.expect("rules")["groups"].clone();
    let mut evaluated = 0;
    for group in groups.as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            assert_ne!(rule["health"], "err", "{rule:#}");
            evaluated += 1;
        }
    }
    assert_eq!(
        evaluated,
        rules_of(&rule_file(), "alert").len() + rules_of(&rule_file(), "record").len()
    );
    let alerts = p.alerts().await;
    for quiet in [
        "SelfhealExporterDown",
        "SelfhealAlertThresholdsMissing",
        "SelfhealWatchErrors",
    ] {
        assert!(active(&alerts, quiet).is_empty(), "{quiet}: {alerts:#?}");
    }
}
