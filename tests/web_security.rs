//! The daemon binary behind an exporter-toolkit web configuration file: HTTPS with basic
//! auth, client certificates (required for `/metrics`, not for the probes), a rotated
//! certificate served without a restart, bad files refused at start-up with exit code 2,
//! and a real Prometheus (Debian's `prometheus`) scraping over TLS with basic auth and a
//! client certificate.
//!
//! The certificates are made here (rcgen): a test CA, the server's (for `localhost` and
//! 127.0.0.1) and the clients'. The server's files live as cert-manager leaves them in a
//! Secret volume: `server.crt -> ..data/server.crt`, `..data -> ..<version>`, rotated by
//! swapping the `..data` symlink.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use selfheal_lab::testkit::tools::{PROMETHEUS, PROMTOOL};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const USER: &str = "prometheus";
const PASSWORD: &str = "correct horse battery staple";

/// A test CA and what it issues.
struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate with its key, as PEM.
struct Pair {
    cert: String,
    key: String,
}

impl Pair {
    fn der(&self) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(self.cert.as_bytes()).expect("PEM certificate")
    }

    fn identity(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        (
            vec![self.der()],
            PrivateKeyDer::from_pem_slice(self.key.as_bytes()).expect("PEM key"),
        )
    }
}

impl Pki {
    fn new(name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("key");
        Pki {
            ca: CertifiedIssuer::self_signed(params, key).expect("CA"),
        }
    }

    fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    fn issue(&self, sans: &[&str], common_name: &str, serial: u64, client: bool) -> Pair {
        let sans: Vec<String> = sans.iter().map(|&san| san.to_owned()).collect();
        let mut params = CertificateParams::new(sans).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.serial_number = Some(serial.into());
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.ca).expect("signed");
        Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    fn server(&self, serial: u64) -> Pair {
        self.issue(
            &["localhost", "127.0.0.1"],
            &format!("selfheal-exporter #{serial}"),
            serial,
            false,
        )
    }

    fn client(&self, san: &str) -> Pair {
        self.issue(&[san], san, 1000, true)
    }
}

/// The server's certificate files, laid out like a Kubernetes Secret volume.
struct SecretVolume {
    dir: PathBuf,
    version: u32,
}

impl SecretVolume {
    fn new(dir: &Path, pair: &Pair) -> SecretVolume {
        let dir = dir.join("tls");
        std::fs::create_dir_all(&dir).expect("dir");
        let mut volume = SecretVolume { dir, version: 0 };
        volume.swap(pair);
        for name in ["tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(format!("..data/{name}"), volume.dir.join(name))
                .expect("symlink");
        }
        volume
    }

    /// What the kubelet does on a Secret update: a new version directory, then an
    /// atomic rename of the `..data` symlink onto it.
    fn swap(&mut self, pair: &Pair) {
        self.version += 1;
        let version = format!("..v{}", self.version);
        let version_dir = self.dir.join(&version);
        std::fs::create_dir(&version_dir).expect("version dir");
        std::fs::write(version_dir.join("tls.crt"), &pair.cert).expect("written");
        std::fs::write(version_dir.join("tls.key"), &pair.key).expect("written");
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&version, &tmp).expect("symlink");
        std::fs::rename(&tmp, self.dir.join("..data")).expect("swapped");
    }
}

/// One HTTPS exchange's outcome.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: String,
    /// The certificate the server presented.
    served: CertificateDer<'static>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
    }
}

/// How a test client connects: which CA it trusts, which certificate it presents.
#[derive(Clone)]
struct Client {
    /// `None`: plain HTTP.
    config: Option<Arc<rustls::ClientConfig>>,
}

impl Client {
    fn new(ca_pem: &str, identity: Option<&Pair>) -> Client {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert.expect("CA PEM")).expect("CA added");
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
        let mut config = match identity {
            Some(pair) => {
                let (certs, key) = pair.identity();
                builder.with_client_auth_cert(certs, key).expect("identity")
            }
            None => builder.with_no_client_auth(),
        };
        // A full handshake every time: a resumed session reports the certificate of the
        // session it resumes, not the one served now.
        config.resumption = rustls::client::Resumption::disabled();
        Client {
            config: Some(Arc::new(config)),
        }
    }

    /// A plain-HTTP client.
    fn plain() -> Client {
        Client { config: None }
    }

    /// GET `path` over HTTPS; `Err` when the connection or handshake fails.
    async fn get(
        &self,
        port: u16,
        path: &str,
        auth: Option<(&str, &str)>,
    ) -> Result<Answer, String> {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let Some(config) = &self.config else {
            let (head, body) = exchange(tcp, path, auth).await?;
            return answer(&head, &body, CertificateDer::from(Vec::new()));
        };
        let connector = tokio_rustls::TlsConnector::from(config.clone());
        let name = ServerName::try_from("localhost").expect("name");
        let tls = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
            .await
            .map_err(|_| "handshake timed out".to_owned())?
            .map_err(|e| format!("handshake: {e}"))?;
        let served = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|cert| cert.clone().into_owned())
            .ok_or("no server certificate")?;
        let (head, body) = exchange(tls, path, auth).await?;
        answer(&head, &body, served)
    }
}

/// Writes the request, reads the whole response: its head and body.
async fn exchange(
    mut stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    path: &str,
    auth: Option<(&str, &str)>,
) -> Result<(String, String), String> {
    use base64::Engine;
    let authorization = auth
        .map(|(user, password)| {
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            format!("Authorization: Basic {token}\r\n")
        })
        .unwrap_or_default();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\n{authorization}Connection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut response = Vec::new();
    // TLS 1.3 reports a client certificate refused after the handshake here.
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .map_err(|_| "read timed out".to_owned())?
        .map_err(|e| format!("read: {e}"))?;
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("not HTTP: {response:?}"))?;
    Ok((head.to_owned(), body.to_owned()))
}

fn answer(head: &str, body: &str, served: CertificateDer<'static>) -> Result<Answer, String> {
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|status| status.parse().ok())
        .ok_or_else(|| format!("no status: {head:?}"))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok(Answer {
        status,
        head: head.to_owned(),
        body,
        served,
    })
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// A lab cluster, a PKI, the server's Secret volume and the daemon behind `web_config`
/// (its `cert_file`/`key_file` are the volume's `tls/tls.crt`, `tls/tls.key`, relative
/// to the web config file).
struct Secured {
    daemon: Daemon,
    volume: SecretVolume,
    pki: Pki,
    cluster: Cluster,
}

impl Secured {
    async fn start(web_config: &str, extra_files: &[(&str, &str)]) -> Secured {
        let cluster = Cluster::start().await;
        let pki = Pki::new("selfheal test CA");
        let volume = SecretVolume::new(cluster.dir.path(), &pki.server(1));
        std::fs::write(cluster.dir.path().join("ca.crt"), pki.ca_pem()).expect("written");
        for (name, text) in extra_files {
            std::fs::write(cluster.dir.path().join(name), text).expect("written");
        }
        let web = cluster.dir.path().join("web.yml");
        std::fs::write(&web, web_config).expect("written");
        let config = format!("web_config_file = {:?}\n", web.display().to_string());
        let daemon = Daemon::spawn(&cluster.kubeconfig, cluster.dir.path(), &config);
        let secured = Secured {
            daemon,
            volume,
            pki,
            cluster,
        };
        secured.wait_ready().await;
        secured
    }

    /// A client trusting the test CA, presenting `identity`.
    fn client(&self, identity: Option<&Pair>) -> Client {
        Client::new(&self.pki.ca_pem(), identity)
    }

    async fn wait_ready(&self) {
        let client = self.client(None);
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = String::new();
        while Instant::now() < deadline {
            match client.get(self.daemon.port, "/readyz", None).await {
                Ok(answer) if answer.status == 200 => return,
                Ok(answer) => last = format!("{answer:?}"),
                Err(error) => last = error,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "daemon not ready over HTTPS in 60 s (last: {last}); log:\n{}",
            self.daemon.log()
        );
    }
}

fn hash(password: &str) -> String {
    bcrypt::hash(password, 4).expect("bcrypt")
}

const TLS: &str = "tls_server_config:\n  cert_file: tls/tls.crt\n  key_file: tls/tls.key\n";

#[tokio::test]
async fn basic_auth_over_https_refuses_a_wrong_password() {
    let web = format!(
        "{TLS}http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n\
         basic_auth_users:\n  {USER}: {}\n",
        hash(PASSWORD)
    );
    let lab = Secured::start(&web, &[]).await;
    let port = lab.daemon.port;
    let client = lab.client(None);

    let ok = client
        .get(port, "/metrics", Some((USER, PASSWORD)))
        .await
        .expect("HTTPS answer");
    assert_eq!(ok.status, 200, "{ok:?}");
    assert!(ok.body.contains("selfheal_build_info"), "{}", ok.body);
    assert!(
        ok.body.contains("selfheal_web_tls_reload_errors_total 0"),
        "{}",
        ok.body
    );
    assert_eq!(
        ok.header("x-content-type-options").as_deref(),
        Some("nosniff")
    );
    // The TLS metrics pass promtool's lint like the rest.
    if let Some(promtool) = PROMTOOL.require_path("lint the exposition served over HTTPS") {
        let mut child = Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool runs");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(ok.body.as_bytes())
            .expect("written");
        let output = child.wait_with_output().expect("promtool ends");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.status.success() && said.trim().is_empty(),
            "promtool check metrics:\n{said}"
        );
    }
    assert_eq!(ok.served, lab.volume_served_first());
    let incidents = client
        .get(port, "/api/v1/incidents", Some((USER, PASSWORD)))
        .await
        .expect("answer");
    assert_eq!(incidents.status, 200);

    for (path, auth) in [
        ("/metrics", Some((USER, "wrong"))),
        ("/metrics", Some(("mallory", PASSWORD))),
        ("/metrics", None),
        ("/api/v1/incidents", Some((USER, "wrong"))),
        ("/api/v1/incidents", None),
    ] {
        let refused = client.get(port, path, auth).await.expect("answer");
        assert_eq!(refused.status, 401, "{path} {auth:?}: {refused:?}");
        assert_eq!(refused.header("www-authenticate").as_deref(), Some("Basic"));
        assert_eq!(
            refused.header("x-content-type-options").as_deref(),
            Some("nosniff")
        );
        assert!(!refused.body.contains("selfheal_"), "{}", refused.body);
    }
    // The kubelet's probes: no credentials, over HTTPS.
    for path in ["/healthz", "/readyz"] {
        let open = client.get(port, path, None).await.expect("answer");
        assert_eq!(open.status, 200, "{path}: {open:?}");
    }
    // Plain HTTP to the TLS port gets no HTTP answer.
    assert_eq!(http_get(port, "/healthz", None).await, None);
    let log = lab.daemon.log();
    assert!(log.contains("TLS on"), "{log}");
    // The TLS server drains like the plain one: SIGTERM, exit 0 within the 5 s budget.
    let mut lab = lab;
    let (status, took) = lab.daemon.terminate();
    assert!(status.success(), "{status:?}; log:\n{}", lab.daemon.log());
    assert!(took < Duration::from_secs(5), "{took:?}");
    drop(lab.cluster);
}

impl Secured {
    /// The certificate of version 1 of the volume, as served.
    fn volume_served_first(&self) -> CertificateDer<'static> {
        let pem = std::fs::read_to_string(self.volume.dir.join("..v1/tls.crt")).expect("v1");
        CertificateDer::from_pem_slice(pem.as_bytes()).expect("PEM")
    }
}

#[tokio::test]
async fn client_certificates_are_required_for_metrics_but_not_for_the_probes() {
    let web = format!(
        "{TLS}  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n  \
         client_allowed_sans: [prometheus.monitoring.svc]\n"
    );
    let lab = Secured::start(&web, &[]).await;
    let port = lab.daemon.port;

    let scraper = lab.pki.client("prometheus.monitoring.svc");
    let answer = lab
        .client(Some(&scraper))
        .get(port, "/metrics", None)
        .await
        .expect("answer");
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(answer.body.contains("selfheal_build_info"));

    // No client certificate: the probes answer, the data does not.
    let anonymous = lab.client(None);
    for path in ["/healthz", "/readyz"] {
        let open = anonymous.get(port, path, None).await.expect("answer");
        assert_eq!(open.status, 200, "{path}: {open:?}");
    }
    for path in ["/metrics", "/api/v1/incidents"] {
        let refused = anonymous.get(port, path, None).await.expect("answer");
        assert_eq!(refused.status, 403, "{path}: {refused:?}");
        assert!(
            refused.body.contains("client certificate is required"),
            "{}",
            refused.body
        );
    }

    // Signed by the CA but with a SAN not in client_allowed_sans.
    let intruder = lab.pki.client("intruder.example");
    let refused = lab
        .client(Some(&intruder))
        .get(port, "/metrics", None)
        .await
        .expect("answer");
    assert_eq!(refused.status, 403, "{refused:?}");
    assert!(
        refused.body.contains("client_allowed_sans"),
        "{}",
        refused.body
    );

    // Signed by another CA: refused at the handshake.
    let stranger = Pki::new("another CA").client("prometheus.monitoring.svc");
    let outcome = lab
        .client(Some(&stranger))
        .get(port, "/healthz", None)
        .await;
    assert!(
        outcome.is_err(),
        "an unknown CA's certificate was accepted: {outcome:?}"
    );
    // Counted (the server's side of the handshake may end a moment later).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let metrics = lab
            .client(Some(&scraper))
            .get(port, "/metrics", None)
            .await
            .expect("answer");
        if metrics
            .body
            .contains("selfheal_web_tls_handshake_errors_total 1")
        {
            break;
        }
        assert!(Instant::now() < deadline, "not counted:\n{}", metrics.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_rotated_certificate_is_served_without_a_restart() {
    let lab = Secured::start(TLS, &[]).await;
    let mut lab = lab;
    let port = lab.daemon.port;
    let pid = lab.daemon.child.id();
    let client = lab.client(None);
    let first = client.get(port, "/healthz", None).await.expect("answer");
    assert_eq!(first.served, lab.volume_served_first());

    let second = lab.pki.server(2);
    lab.volume.swap(&second);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = client.get(port, "/healthz", None).await.expect("answer");
        if answer.served == second.der() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still the old certificate 10 s after the swap; log:\n{}",
            lab.daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A broken pair (the key of another certificate): the second one stays, counted.
    let broken = Pair {
        cert: lab.pki.server(3).cert,
        key: lab.pki.server(4).key,
    };
    lab.volume.swap(&broken);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = client.get(port, "/metrics", None).await.expect("answer");
        assert_eq!(metrics.served, second.der(), "a broken pair was served");
        if metrics
            .body
            .contains("selfheal_web_tls_reload_errors_total 1")
        {
            assert!(
                metrics.body.contains("selfheal_web_tls_reloads_total 1"),
                "{}",
                metrics.body
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the broken pair was not counted; log:\n{}",
            lab.daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        lab.daemon
            .log()
            .contains("cannot reload tls_server_config.key_file")
    );
    // Fixed again: served.
    let third = lab.pki.server(5);
    lab.volume.swap(&third);
    let deadline = Instant::now() + Duration::from_secs(10);
    while client
        .get(port, "/healthz", None)
        .await
        .expect("answer")
        .served
        != third.der()
    {
        assert!(Instant::now() < deadline, "the fixed pair was not served");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        lab.daemon.child.try_wait().expect("status"),
        None,
        "restarted?"
    );
    assert_eq!(lab.daemon.child.id(), pid);
}

#[tokio::test]
async fn basic_auth_works_without_tls_too() {
    let web = format!(
        "http_server_config:\n  headers:\n    X-Frame-Options: deny\n\
         basic_auth_users:\n  {USER}: {}\n",
        hash(PASSWORD)
    );
    let cluster = Cluster::start().await;
    let path = cluster.dir.path().join("web.yml");
    std::fs::write(&path, web).expect("written");
    let config = format!("web_config_file = {:?}\n", path.display().to_string());
    let daemon = Daemon::start(&cluster, &config).await; // waits for /readyz over plain HTTP
    let client = Client::plain();
    let ok = client
        .get(daemon.port, "/metrics", Some((USER, PASSWORD)))
        .await
        .expect("answer");
    assert_eq!(ok.status, 200, "{ok:?}");
    assert!(ok.body.contains("selfheal_build_info"));
    assert!(
        !ok.body.contains("selfheal_web_tls"),
        "no TLS, no TLS metrics"
    );
    assert_eq!(ok.header("x-frame-options").as_deref(), Some("deny"));
    let refused = client
        .get(daemon.port, "/metrics", Some((USER, "nope")))
        .await
        .expect("answer");
    assert_eq!(refused.status, 401);
    assert_eq!(refused.header("www-authenticate").as_deref(), Some("Basic"));
    let health = client
        .get(daemon.port, "/healthz", None)
        .await
        .expect("answer");
    assert_eq!(health.status, 200);
    assert_eq!(health.header("x-frame-options").as_deref(), Some("deny"));
}

/// Runs the binary with `args` (no cluster needed: it must stop before connecting).
fn run_binary(args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_selfheal-exporter"))
        .args(args)
        .env_remove("SELFHEAL_CONFIG")
        .env("KUBECONFIG", "/nonexistent")
        .stdin(Stdio::null())
        .output()
        .expect("runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn bad_web_config_files_stop_the_start_with_exit_code_2_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new("ca");
    let server = pki.server(1);
    std::fs::write(dir.path().join("tls.crt"), &server.cert).expect("written");
    std::fs::write(dir.path().join("tls.key"), &server.key).expect("written");
    let cases = [
        (
            "tls_server_config:\n  cert_file: tls.crt\n  key_file: /nope\n",
            "tls_server_config.key_file = \"/nope\": cannot read: No such file",
        ),
        (
            "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n  min_version: TLS10\n",
            "tls_server_config.min_version = \"TLS10\": not supported",
        ),
        (
            "basic_auth_users:\n  alice: not-a-hash\n",
            "basic_auth_users.alice: not a bcrypt hash",
        ),
        (
            "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n  cipher_suite: [x]\n",
            "tls_server_config.cipher_suite: unknown key",
        ),
    ];
    for (text, expected) in cases {
        let web = dir.path().join("web.yml");
        std::fs::write(&web, text).expect("written");
        let web = web.display().to_string();
        let expected = format!("error: web config {web}: {expected}");
        for args in [
            vec!["--web.config.file", web.as_str()],
            vec!["check-config", "--web.config.file", web.as_str()],
        ] {
            let (code, stderr) = run_binary(&args);
            assert_eq!(code, Some(2), "{args:?}: {stderr}");
            assert!(
                stderr.starts_with(&expected),
                "{args:?}:\n{stderr}\nexpected: {expected}"
            );
            assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        }
    }
    // A good one passes check-config, which says what it turns on.
    let web = dir.path().join("good.yml");
    std::fs::write(
        &web,
        format!("tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\nbasic_auth_users:\n  a: {}\n", hash("x")),
    )
    .expect("written");
    let output = Command::new(env!("CARGO_BIN_EXE_selfheal-exporter"))
        .args(["check-config", "--web.config.file"])
        .arg(&web)
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("web_config_file = "), "{stdout}");
    assert!(
        stdout
            .contains("TLS on (Tls12..Tls13, client_auth_type NoClientCert); basic_auth_users: 1"),
        "{stdout}"
    );

    // Both listen flags: one is the other's alias.
    let (code, stderr) = run_binary(&["--listen", "127.0.0.1:1", "--web.listen-address", ":2"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("cannot be used multiple times"), "{stderr}");
    let (code, stderr) = run_binary(&["--web.listen-address", "nowhere"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("expected HOST:PORT or :PORT"), "{stderr}");
}

// ---------------------------------------------------------------------------------------
// A real Prometheus
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_real_prometheus_scrapes_over_tls_with_basic_auth_and_a_client_certificate() {
    let Some(binary) = PROMETHEUS.require_path("scrape the daemon over HTTPS") else {
        return;
    };
    let web = format!(
        "{TLS}  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n\
         basic_auth_users:\n  {USER}: {}\n",
        hash(PASSWORD)
    );
    let lab = Secured::start(&web, &[]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let scraper = lab.pki.client("prometheus.monitoring.svc");
    std::fs::write(dir.path().join("ca.crt"), lab.pki.ca_pem()).expect("written");
    std::fs::write(dir.path().join("client.crt"), &scraper.cert).expect("written");
    std::fs::write(dir.path().join("client.key"), &scraper.key).expect("written");
    std::fs::write(dir.path().join("password"), PASSWORD).expect("written");
    let target = format!("127.0.0.1:{}", lab.daemon.port);
    let job = |name: &str, password_file: &str, client_cert: bool| {
        let cert = if client_cert {
            "      cert_file: client.crt\n      key_file: client.key\n"
        } else {
            ""
        };
        format!(
            "  - job_name: {name}\n    scheme: https\n    tls_config:\n      ca_file: ca.crt\n      \
             server_name: localhost\n{cert}    basic_auth:\n      username: {USER}\n      \
             password_file: {password_file}\n    static_configs:\n      - targets: ['{target}']\n"
        )
    };
    std::fs::write(dir.path().join("wrong"), "wrong").expect("written");
    let config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n{}{}{}",
        job("secured", "password", true),
        job("wrong-password", "wrong", true),
        job("no-client-cert", "password", false),
    );
    std::fs::write(dir.path().join("prometheus.yml"), config).expect("written");
    let port = free_port();
    let log = dir.path().join("prometheus.log");
    let child = Command::new(binary)
        .arg("--config.file=prometheus.yml")
        .arg("--storage.tsdb.path=data")
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--log.level=warn")
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("prometheus starts");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _prometheus = Kill(child);

    let up = |job: &'static str| async move {
        let path = format!("/api/v1/query?query=up%7Bjob%3D%22{job}%22%7D");
        let (_, body) = http_get(port, &path, None).await?;
        let answer: Value = serde_json::from_str(&body).ok()?;
        answer["data"]["result"][0]["value"][1]
            .as_str()
            .map(str::to_owned)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let states = (
            up("secured").await,
            up("wrong-password").await,
            up("no-client-cert").await,
        );
        if states
            == (
                Some("1".to_owned()),
                Some("0".to_owned()),
                Some("0".to_owned()),
            )
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "up by job (secured, wrong-password, no-client-cert) = {states:?} after 60 s; \
             prometheus log:\n{}\ndaemon log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default(),
            lab.daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // And the samples are the daemon's.
    let (_, body) = http_get(port, "/api/v1/query?query=selfheal_build_info", None)
        .await
        .expect("answer");
    assert!(body.contains("\"job\":\"secured\""), "{body}");
}
