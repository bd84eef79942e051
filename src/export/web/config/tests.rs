//! The web configuration file's format: every key, and each way a file is refused
//! (naming the key).

use super::*;

/// A bcrypt hash of "s3cr3t" (cost 4, quick for tests).
fn hash() -> String {
    bcrypt::hash("s3cr3t", 4).expect("hash")
}

fn parse(text: &str) -> Result<WebConfig, String> {
    WebConfig::parse(Path::new("/etc/selfheal/web.yml"), text).map_err(|e| e.to_string())
}

fn refused(text: &str) -> String {
    match parse(text) {
        Ok(config) => panic!("accepted: {config:?}"),
        Err(error) => error,
    }
}

#[test]
fn an_empty_file_is_plain_http_open_to_all() {
    for text in ["", "{}\n", "tls_server_config:\nhttp_server_config:\n"] {
        let config = parse(text).expect("valid");
        assert!(config.tls.is_none());
        assert!(config.http2);
        assert!(config.headers.is_empty() && config.users.is_empty());
        assert!(config.rate_limit.is_none());
    }
}

#[test]
fn every_key_is_read() {
    let text = format!(
        r#"
tls_server_config:
  cert_file: tls/server.crt
  key_file: /abs/server.key
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: ca.crt
  client_allowed_sans: [prometheus.monitoring.svc, 10.0.0.1]
  min_version: TLS13
  max_version: TLS13
  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_AES_128_GCM_SHA256]
  curve_preferences: [CurveP256, X25519]
  prefer_server_cipher_suites: false
http_server_config:
  http2: false
  headers:
    X-Frame-Options: deny
    X-Content-Type-Options: nosniff
    Strict-Transport-Security: max-age=31536000
    Content-Security-Policy: ""
basic_auth_users:
  alice: {hash}
  bob: {hash}
rate_limit:
  interval: 1m30s
  burst: 5
"#,
        hash = hash()
    );
    let config = parse(&text).expect("valid");
    let tls = config.tls.expect("TLS on");
    // Relative paths: against the web config file's directory.
    assert_eq!(
        tls.cert,
        PemSource::File("/etc/selfheal/tls/server.crt".into())
    );
    assert_eq!(tls.key, PemSource::File("/abs/server.key".into()));
    assert_eq!(
        tls.client_ca,
        Some(PemSource::File("/etc/selfheal/ca.crt".into()))
    );
    assert_eq!(tls.client_auth, ClientAuth::RequireAndVerifyClientCert);
    assert_eq!(
        tls.client_allowed_sans,
        ["prometheus.monitoring.svc", "10.0.0.1"]
    );
    assert_eq!(
        (tls.min_version, tls.max_version),
        (TlsVersion::Tls13, TlsVersion::Tls13)
    );
    assert_eq!(
        tls.cipher_suites,
        [cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]
    );
    let curves: Vec<_> = tls.curve_preferences.iter().map(|g| g.name()).collect();
    assert_eq!(
        curves,
        [rustls::NamedGroup::secp256r1, rustls::NamedGroup::X25519]
    );
    assert!(!tls.prefer_server_cipher_suites);
    assert!(!config.http2);
    // The blank header is left out (the order is the names').
    let headers: Vec<_> = config
        .headers
        .iter()
        .map(|(name, value)| format!("{name}: {}", value.to_str().expect("ascii")))
        .collect();
    assert_eq!(
        headers,
        [
            "strict-transport-security: max-age=31536000",
            "x-content-type-options: nosniff",
            "x-frame-options: deny",
        ]
    );
    assert_eq!(config.users.keys().collect::<Vec<_>>(), ["alice", "bob"]);
    assert_eq!(
        config.rate_limit,
        Some(RateLimit {
            interval: Duration::from_secs(90),
            burst: 5
        })
    );
}

#[test]
fn defaults_follow_exporter_toolkit() {
    let config = parse("tls_server_config:\n  cert: inline\n  key: inline\n").expect("valid");
    let tls = config.tls.expect("TLS on");
    assert_eq!(tls.cert, PemSource::Inline("inline".into()));
    assert_eq!(tls.client_auth, ClientAuth::NoClientCert);
    assert_eq!(
        (tls.min_version, tls.max_version),
        (TlsVersion::Tls12, TlsVersion::Tls13)
    );
    assert!(tls.prefer_server_cipher_suites);
    assert!(tls.cipher_suites.is_empty() && tls.curve_preferences.is_empty());
    // Only TLS settings without a certificate, key, CA or auth type: TLS stays off,
    // as in exporter-toolkit.
    assert!(
        parse("tls_server_config:\n  min_version: TLS13\n")
            .expect("valid")
            .tls
            .is_none()
    );
    // The old name of RequireAnyClientCert.
    let old = parse("tls_server_config:\n  cert_file: c\n  key_file: k\n  client_auth_type: RequireClientCert\n")
        .expect("valid");
    assert_eq!(
        old.tls.expect("on").client_auth,
        ClientAuth::RequireAnyClientCert
    );
}

#[test]
fn unknown_keys_are_refused_by_their_full_name() {
    let error = refused("tls_server_config:\n  cert_file: c\n  key_file: k\n  keyfile: k\n");
    assert!(
        error.starts_with(
            "web config /etc/selfheal/web.yml: tls_server_config.keyfile: unknown key"
        ),
        "{error}"
    );
    assert!(refused("tls_config:\n  cert_file: c\n").contains(": tls_config: unknown key"));
    assert!(
        refused("http_server_config:\n  http3: true\n")
            .contains("http_server_config.http3: unknown key")
    );
    assert!(refused("rate_limit:\n  every: 1s\n").contains("rate_limit.every: unknown key"));
    assert!(refused("- a\n- b\n").contains("must be a YAML mapping"));
    assert!(
        refused("tls_server_config: [1]\n").contains("tls_server_config = [1]: must be a mapping")
    );
    assert!(
        refused("tls_server_config: {cert_file: [1]}\n")
            .contains("tls_server_config.cert_file = [1]: must be a string")
    );
}

#[test]
fn a_bad_hash_is_refused_naming_the_user() {
    let error = refused("basic_auth_users:\n  alice: plaintext\n");
    assert!(
        error.starts_with(
            "web config /etc/selfheal/web.yml: basic_auth_users.alice: not a bcrypt hash"
        ),
        "{error}"
    );
    // The value is a secret: not in the message.
    assert!(!error.contains("plaintext"), "{error}");
    assert!(
        refused("basic_auth_users:\n  alice: 12\n")
            .contains("basic_auth_users.alice: must be a bcrypt hash")
    );
    let colon = format!("basic_auth_users:\n  'a:b': {}\n", hash());
    assert!(refused(&colon).contains("cannot contain ':'"));
}

#[test]
fn tls_versions_rustls_lacks_are_refused() {
    let tls = |extra: &str| format!("tls_server_config:\n  cert_file: c\n  key_file: k\n{extra}");
    for (extra, expected) in [
        (
            "  min_version: TLS10\n",
            "tls_server_config.min_version = \"TLS10\": not supported: rustls implements TLS12 and TLS13 only",
        ),
        (
            "  min_version: TLS11\n",
            "tls_server_config.min_version = \"TLS11\": not supported",
        ),
        (
            "  max_version: TLS10\n",
            "tls_server_config.max_version = \"TLS10\": not supported",
        ),
        (
            "  min_version: SSL3\n",
            "tls_server_config.min_version = \"SSL3\": unknown TLS version",
        ),
        (
            "  min_version: TLS13\n  max_version: TLS12\n",
            "tls_server_config.min_version = \"TLS13\": is above max_version",
        ),
    ] {
        let error = refused(&tls(extra));
        assert!(error.contains(expected), "{extra}: {error}");
    }
}

#[test]
fn cipher_suites_and_curves_rustls_lacks_are_refused() {
    let tls = |extra: &str| format!("tls_server_config:\n  cert_file: c\n  key_file: k\n{extra}");
    for (extra, expected) in [
        (
            "  cipher_suites: [TLS_FOO]\n",
            "tls_server_config.cipher_suites = \"TLS_FOO\": unknown cipher suite",
        ),
        (
            "  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA]\n",
            "\"TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA\": a Go cipher suite that rustls does not implement",
        ),
        (
            "  cipher_suites: [TLS_RSA_WITH_AES_128_GCM_SHA256]\n",
            "does not implement",
        ),
        (
            "  cipher_suites: [TLS_AES_128_GCM_SHA256]\n",
            "names no TLS 1.2 suite",
        ),
        (
            "  curve_preferences: [CurveP521]\n",
            "tls_server_config.curve_preferences = \"CurveP521\": not supported by rustls",
        ),
        (
            "  curve_preferences: [CurveP999]\n",
            "\"CurveP999\": unknown curve",
        ),
    ] {
        let error = refused(&tls(extra));
        assert!(error.contains(expected), "{extra}: {error}");
    }
    // Only TLS 1.3 names with min_version TLS13: fine (they are always on).
    let only13 = parse(&tls(
        "  min_version: TLS13\n  cipher_suites: [TLS_AES_128_GCM_SHA256]\n",
    ))
    .expect("valid");
    assert!(only13.tls.expect("on").cipher_suites.is_empty());
}

#[test]
fn incomplete_or_contradictory_tls_is_refused() {
    for (text, expected) in [
        (
            "tls_server_config:\n  cert_file: c\n",
            "tls_server_config.key_file: missing",
        ),
        (
            "tls_server_config:\n  key_file: k\n",
            "tls_server_config.cert_file: missing",
        ),
        (
            "tls_server_config:\n  client_auth_type: RequireAndVerifyClientCert\n",
            "tls_server_config.cert_file: missing",
        ),
        (
            "tls_server_config:\n  cert_file: c\n  cert: c\n  key_file: k\n",
            "tls_server_config.cert_file = \"c\": give cert_file or cert, not both",
        ),
        (
            "tls_server_config:\n  cert_file: c\n  key_file: k\n  client_auth_type: Sometimes\n",
            "tls_server_config.client_auth_type = \"Sometimes\": unknown client auth type",
        ),
        (
            "tls_server_config:\n  cert_file: c\n  key_file: k\n  client_ca_file: ca\n",
            "tls_server_config.client_auth_type: a client CA is configured without",
        ),
        (
            "tls_server_config:\n  cert_file: c\n  key_file: k\n  client_auth_type: RequireAndVerifyClientCert\n",
            "tls_server_config.client_ca_file: missing",
        ),
        (
            "tls_server_config:\n  cert_file: c\n  key_file: k\n  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: ca\n  client_allowed_sans: [a]\n",
            "tls_server_config.client_allowed_sans = [\"a\"]: requires client_auth_type RequireAnyClientCert or RequireAndVerifyClientCert",
        ),
        (
            "tls_server_config:\n  cert_file: c\n  key_file: k\n  client_auth_type: RequireAnyClientCert\n  client_allowed_sans: [me@example.com]\n",
            "only DNS names and IP addresses",
        ),
        (
            "tls_server_config:\n  cert_file: c\n  key_file: k\n  prefer_server_cipher_suites: sure\n",
            "tls_server_config.prefer_server_cipher_suites = \"sure\": must be true or false",
        ),
    ] {
        let error = refused(text);
        assert!(error.contains(expected), "{text}: {error}");
    }
}

#[test]
fn headers_are_limited_to_exporter_toolkits_list() {
    for (text, expected) in [
        (
            "http_server_config:\n  headers:\n    Server: x\n",
            "http_server_config.headers.Server: this header cannot be configured",
        ),
        (
            "http_server_config:\n  headers:\n    X-Frame-Options: allow\n",
            "http_server_config.headers.X-Frame-Options = \"allow\": expected one of: deny, sameorigin",
        ),
        (
            "http_server_config:\n  headers:\n    X-Content-Type-Options: sniff\n",
            "expected one of: nosniff",
        ),
        (
            "http_server_config:\n  http2: 1\n",
            "http_server_config.http2 = 1: must be true or false",
        ),
    ] {
        let error = refused(text);
        assert!(error.contains(expected), "{text}: {error}");
    }
}

#[test]
fn rate_limit_reads_go_durations() {
    let limit = |text: &str| parse(text).expect("valid").rate_limit;
    assert_eq!(limit("rate_limit:\n  interval: 0\n  burst: 0\n"), None);
    assert_eq!(limit("rate_limit:\n  interval: 0s\n"), None);
    assert_eq!(
        limit("rate_limit:\n  interval: 250ms\n  burst: 2\n"),
        Some(RateLimit {
            interval: Duration::from_millis(250),
            burst: 2
        })
    );
    assert_eq!(
        limit("rate_limit:\n  interval: 1.5s\n  burst: 1\n").map(|l| l.interval),
        Some(Duration::from_millis(1500))
    );
    assert!(
        refused("rate_limit:\n  interval: soon\n  burst: 1\n")
            .contains("rate_limit.interval = \"soon\": not a duration")
    );
    assert!(
        refused("rate_limit:\n  interval: 1s\n").contains("rate_limit.burst: must be at least 1")
    );
    assert!(
        refused("rate_limit:\n  interval: 1s\n  burst: -1\n")
            .contains("rate_limit.burst = -1: must be a whole number")
    );
}

#[test]
fn an_unreadable_file_is_named() {
    let error = WebConfig::load(Path::new("/nonexistent/web.yml")).expect_err("refused");
    assert!(
        error
            .to_string()
            .starts_with("web config /nonexistent/web.yml: cannot read: "),
        "{error}"
    );
}
