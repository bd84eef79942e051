//! Secured endpoints: the chart (values `web.*`, ci/tls-values.yaml) and the overlay
//! `tls` serve HTTPS with the certificate of a Secret, pass an exporter-toolkit web
//! configuration file with --web.config.file, probe over HTTPS, and their ServiceMonitor
//! scrapes with `scheme: https`, `tlsConfig` and `basicAuth`. The web configuration they
//! ship passes `selfheal-exporter check-config` (with test certificates in place of the
//! Secret's).

use std::path::Path;
use std::process::Command;

use base64::Engine;
use serde_json::Value;

use crate::render::{HELM_TEMPLATE, HELM_TLS, Render, TLS, chart, helm, kustomization};
use crate::schemas::check_service_monitor;
use crate::sharding::{container_args, flag_value};
use crate::yaml::{kind, name, str_of};

const WEB_CONFIG: &str = "/etc/selfheal-web/web.yml";
const TLS_DIR: &str = "/etc/selfheal-tls";
const TLS_SECRET: &str = "selfheal-exporter-tls";

/// The exporter's pod serves HTTPS from the Secret `TLS_SECRET` with the web config at
/// `WEB_CONFIG` (from a Secret whose name starts with `web_secret`); returns that name.
fn check_pod(render: &Render, web_secret: &str) -> String {
    let what = &render.what;
    let workload = render.workload();
    let args = container_args(workload);
    assert_eq!(
        flag_value(&args, "--web.config.file"),
        Some(WEB_CONFIG),
        "{what}: {args:?}"
    );
    let pod = &workload["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(
            container[probe]["httpGet"]["scheme"], "HTTPS",
            "{what}: {probe} over HTTPS (the kubelet does not verify the certificate)"
        );
    }
    let mounts = container["volumeMounts"].as_array().expect("volumeMounts");
    let mount = |path: &str| -> &Value {
        mounts
            .iter()
            .find(|m| m["mountPath"] == path)
            .unwrap_or_else(|| panic!("{what}: nothing mounted at {path}: {mounts:?}"))
    };
    let tls_mount = mount(TLS_DIR);
    assert!(
        tls_mount.get("subPath").is_none(),
        "{what}: a subPath mount never sees the Secret's updates (no rotation)"
    );
    assert_eq!(tls_mount["readOnly"], true, "{what}");
    let web_mount = mount("/etc/selfheal-web");
    let volumes = pod["volumes"].as_array().expect("volumes");
    let volume = |mount: &Value| -> &Value {
        volumes
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap_or_else(|| panic!("{what}: no volume {}", mount["name"]))
    };
    assert_eq!(
        volume(tls_mount)["secret"]["secretName"],
        TLS_SECRET,
        "{what}"
    );
    let web = str_of(volume(web_mount), "/secret/secretName").to_owned();
    assert!(
        web.starts_with(web_secret),
        "{what}: web config Secret {web}"
    );
    web
}

/// The ServiceMonitor scrapes over HTTPS, checking the certificate, with basic auth.
fn check_monitor(render: &Render, server_name: &str) -> Value {
    let monitor = render.one("ServiceMonitor");
    check_service_monitor(render, monitor);
    let endpoint = &monitor["spec"]["endpoints"][0];
    let what = &render.what;
    assert_eq!(endpoint["scheme"], "https", "{what}");
    let tls = &endpoint["tlsConfig"];
    assert_eq!(tls["ca"]["secret"]["name"], TLS_SECRET, "{what}: {tls}");
    assert_eq!(tls["ca"]["secret"]["key"], "ca.crt", "{what}");
    assert_eq!(tls["serverName"], server_name, "{what}");
    assert!(
        tls.get("insecureSkipVerify").is_none(),
        "{what}: the certificate is checked"
    );
    let auth = &endpoint["basicAuth"];
    assert_eq!(auth["username"]["key"], "username", "{what}: {auth}");
    assert_eq!(auth["password"]["key"], "password", "{what}: {auth}");
    assert!(!str_of(auth, "/password/name").is_empty(), "{what}");
    assert_eq!(
        render.metrics_service()["spec"]["ports"][0]["appProtocol"],
        "https",
        "{what}"
    );
    endpoint.clone()
}

/// `selfheal-exporter check-config --web.config.file` on `web_yml`, its certificate
/// paths moved from the Secret's mount to test files (a certificate, its key and a CA).
fn check_web_config(web_yml: &str, what: &str) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = rcgen::generate_simple_self_signed(vec!["ca".to_owned()]).expect("CA");
    let server =
        rcgen::generate_simple_self_signed(vec!["selfheal-exporter".to_owned()]).expect("cert");
    let write = |name: &str, text: &str| {
        std::fs::write(dir.path().join(name), text).expect("written");
    };
    write("tls.crt", &server.cert.pem());
    write("tls.key", &server.signing_key.serialize_pem());
    write("ca.crt", &ca.cert.pem());
    let moved = web_yml.replace(TLS_DIR, &dir.path().display().to_string());
    assert_ne!(moved, web_yml, "{what}: the web config reads {TLS_DIR}");
    write("web.yml", &moved);
    let output = Command::new(env!("CARGO_BIN_EXE_selfheal-exporter"))
        .args(["check-config", "--web.config.file"])
        .arg(dir.path().join("web.yml"))
        .env_remove("SELFHEAL_CONFIG")
        .output()
        .expect("check-config runs");
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

fn web_config_of(render: &Render, secret: &str) -> String {
    let object = render
        .objects
        .iter()
        .find(|o| kind(o) == "Secret" && name(o) == secret)
        .unwrap_or_else(|| panic!("{}: no Secret {secret}", render.what));
    if let Some(text) = object["stringData"]["web.yml"].as_str() {
        return text.to_owned();
    }
    let encoded = str_of(object, "/data/web.yml").replace(['\n', ' '], "");
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .expect("base64");
    String::from_utf8(decoded).expect("UTF-8")
}

#[test]
fn the_chart_serves_https_from_a_secret_and_its_service_monitor_scrapes_it() {
    let Some(render) = chart(HELM_TLS) else {
        return;
    };
    let secret = check_pod(render, "selfheal-exporter-web");
    let endpoint = check_monitor(render, "selfheal-exporter.selfheal-system.svc");
    // Client certificates required: Prometheus presents one.
    assert!(
        endpoint["tlsConfig"].get("cert").is_some()
            && endpoint["tlsConfig"].get("keySecret").is_some(),
        "{}: {endpoint}",
        render.what
    );
    let web = web_config_of(render, &secret);
    for line in [
        "cert_file: /etc/selfheal-tls/tls.crt",
        "key_file: /etc/selfheal-tls/tls.key",
        "client_auth_type: RequireAndVerifyClientCert",
        "client_ca_file: /etc/selfheal-tls/ca.crt",
        "X-Content-Type-Options: nosniff",
        "prometheus: $2b$10$",
    ] {
        assert!(
            web.contains(line),
            "{}: web.yml lacks {line:?}:\n{web}",
            render.what
        );
    }
    let (ok, said) = check_web_config(&web, &render.what);
    assert!(
        ok,
        "{}: check-config refuses the chart's web.yml:\n{said}",
        render.what
    );
    assert!(said.contains("TLS on (Tls12..Tls13, client_auth_type RequireAndVerifyClientCert); basic_auth_users: 1"), "{said}");

    // Without web.*: no web config at all, plain HTTP.
    let Some(plain) = chart(None) else {
        return;
    };
    let workload = plain.workload();
    assert_eq!(
        flag_value(&container_args(workload), "--web.config.file"),
        None
    );
    let container = &workload["spec"]["template"]["spec"]["containers"][0];
    assert!(
        container["livenessProbe"]["httpGet"]
            .get("scheme")
            .is_none()
    );
    assert!(!plain.text.contains("selfheal-tls"));
}

#[test]
fn the_chart_refuses_tls_without_a_secret_and_basic_auth_without_scrape_credentials() {
    if chart(None).is_none() {
        return;
    }
    let template = |sets: &[&str]| {
        let mut args = HELM_TEMPLATE.to_vec();
        for set in sets {
            args.extend(["--set", set]);
        }
        helm(&args)
    };
    let ran = template(&["web.tls.enabled=true"]);
    assert!(!ran.status.success());
    assert!(
        ran.said()
            .contains("web.tls.enabled needs web.tls.secretName"),
        "{}",
        ran.said()
    );
    let ran = template(&[
        "web.basicAuth.users.prometheus=$2b$10$8wWdH10/ZOdGYKzblNk7JO/2NCSJ4ZijFm6T1.Td96YpKqg6PWXu2",
        "serviceMonitor.enabled=true",
    ]);
    assert!(!ran.status.success());
    assert!(
        ran.said().contains("web.basicAuth.scrapeSecretName"),
        "{}",
        ran.said()
    );
    // Basic auth alone (no TLS) is a web config too; the probes stay on HTTP.
    let ran = template(&[
        "web.basicAuth.users.prometheus=$2b$10$8wWdH10/ZOdGYKzblNk7JO/2NCSJ4ZijFm6T1.Td96YpKqg6PWXu2",
    ]);
    assert!(ran.status.success(), "{}", ran.said());
    assert!(ran.stdout.contains("- --web.config.file") && !ran.stdout.contains("scheme: HTTPS"));
}

#[test]
fn the_tls_overlay_serves_https_and_its_web_config_needs_a_real_hash() {
    let Some(render) = kustomization(TLS) else {
        return;
    };
    let secret = check_pod(render, "selfheal-exporter-web-");
    check_monitor(render, "selfheal-exporter.selfheal-system.svc");
    let web = web_config_of(render, &secret);
    // As shipped, the placeholder stops the pod with a message naming the key.
    let (ok, said) = check_web_config(&web, &render.what);
    assert!(
        !ok,
        "{}: the placeholder hash was accepted:\n{said}",
        render.what
    );
    assert!(
        said.contains("basic_auth_users.prometheus: not a bcrypt hash"),
        "{said}"
    );
    // With a hash in its place, the file is good.
    let hashed = web.replace(
        "REPLACE-WITH-A-BCRYPT-HASH",
        "$2b$10$8wWdH10/ZOdGYKzblNk7JO/2NCSJ4ZijFm6T1.Td96YpKqg6PWXu2",
    );
    let (ok, said) = check_web_config(&hashed, &render.what);
    assert!(ok, "{}: {said}", render.what);
    assert!(
        Path::new(&crate::command::path(TLS))
            .join("web.yml")
            .exists()
    );
}
