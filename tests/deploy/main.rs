//! Deployment artifacts: the Kustomize base and prometheus-operator overlay, the Helm
//! chart, the Dockerfile, and the copies of the alert rules and dashboards they ship.
//!
//! Rendering uses `kubectl kustomize` and `helm template`; schema validation uses PyPI's
//! `kubernetes-validate` (offline: it ships the Kubernetes OpenAPI schemas); the rendered
//! PrometheusRules go through `promtool check rules`. `scripts/test` installs them; a
//! test whose tool is missing fails, naming it and its install command, or, with
//! `SKIP_MISSING_TOOLS=1`, skips and is listed (`selfheal_lab::testkit::tools`).
//! Nothing here touches the network: every command works on local files, bounded by a
//! timeout.
//!
//! The chart and the overlay cannot read files outside their own directory, so they ship
//! copies of `deploy/rules/selfheal-rules.yaml` and `grafana/dashboards/*.json`. These
//! tests fail while a copy differs from its source; refresh them all with
//! `SELFHEAL_REFRESH_DEPLOY_COPIES=1 cargo test --test deploy`.
//!
//! One file per concern. Shared: `command` (repository files, bounded commands, tools),
//! `yaml` (documents and accessors), `render` (the renders, made once per test binary).
//! Checks: `rendering` (the objects each kustomization renders), `schemas` (Kubernetes
//! schemas and the prometheus-operator objects), `helm_chart`, `rbac`, `check_config` (the
//! embedded config passes `selfheal-exporter check-config`), `pod` (hardening, sizing,
//! probes, image tag), `sharding`, `node_agent` (the node agent's DaemonSet), `copies`
//! (the rules and dashboards shipped unchanged), `dockerfile`, `readme_snippets`
//! (deploy/README.md's tested snippets), `tls` (HTTPS, basic auth and the ServiceMonitor
//! that scrapes them).

mod check_config;
mod command;
mod copies;
mod dockerfile;
mod helm_chart;
mod node_agent;
mod pod;
mod rbac;
mod readme_snippets;
mod render;
mod rendering;
mod schemas;
mod sharding;
mod tls;
mod yaml;
