//! TLS for the admin server: the rustls `ServerConfig` built from `tls_server_config`
//! (ring only), the client-certificate verifiers, and the certificate resolver that
//! re-reads `cert_file` and `key_file` when they change (cert-manager's rotation in a
//! Secret volume swaps both at once through a symlink).
//!
//! A new pair that cannot be used (unreadable, not PEM, key not matching) is logged and
//! counted in `selfheal_web_tls_reload_errors_total`; the old pair keeps being served.
//!
//! Client certificates: every `client_auth_type` but `NoClientCert` asks for one at the
//! handshake, and a verifying type rejects a certificate its CA did not sign; but no
//! handshake *requires* one, so the kubelet (which has none) can still reach `/healthz`
//! and `/readyz`. The requirement itself (`Require*ClientCert`, `client_allowed_sans`) is
//! enforced per request by [`super::auth`] on `/metrics` and `/api/v1/incidents`.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};
use tokio::sync::watch;

use super::config::{ClientAuth, PemSource, TlsSettings, TlsVersion, WebConfigError};

/// How often `cert_file` and `key_file` are checked for a change (a `stat` of each).
pub const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The rustls server configuration and the reloading certificate behind it.
#[derive(Clone, Debug)]
pub struct TlsServer {
    /// For the acceptor.
    pub config: Arc<ServerConfig>,
    /// The certificate in use, and its reloading.
    pub certificate: Arc<ReloadingCertificate>,
}

fn pem_error(path: &Path, key: &str, source: &PemSource, reason: String) -> WebConfigError {
    let value = match source {
        PemSource::File(file) => Some(format!("{:?}", file.display().to_string())),
        PemSource::Inline(_) => None,
    };
    WebConfigError {
        path: path.to_owned(),
        key: Some(format!("tls_server_config.{key}")),
        value,
        reason,
    }
}

fn read_pem(source: &PemSource) -> Result<Vec<u8>, String> {
    match source {
        PemSource::File(file) => {
            std::fs::read(file).map_err(|error| format!("cannot read: {error}"))
        }
        PemSource::Inline(text) => Ok(text.as_bytes().to_vec()),
    }
}

/// The certificate chain and key named by `cert` and `key`, checked to belong together.
/// The error names the key (`cert_file`, `key_file`, …) and says what is wrong.
fn load_pair(
    provider: &CryptoProvider,
    cert: &PemSource,
    key: &PemSource,
) -> Result<CertifiedKey, (&'static str, String)> {
    let cert_key = match cert {
        PemSource::File(_) => "cert_file",
        PemSource::Inline(_) => "cert",
    };
    let key_key = match key {
        PemSource::File(_) => "key_file",
        PemSource::Inline(_) => "key",
    };
    let cert_pem = read_pem(cert).map_err(|reason| (cert_key, reason))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| (cert_key, format!("not a PEM certificate: {error}")))?;
    if chain.is_empty() {
        return Err((cert_key, "contains no PEM certificate".into()));
    }
    let key_pem = read_pem(key).map_err(|reason| (key_key, reason))?;
    let private_key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|error| (key_key, format!("not a PEM private key: {error}")))?;
    let signing_key = provider
        .key_provider
        .load_private_key(private_key)
        .map_err(|error| (key_key, format!("unsupported private key: {error}")))?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        // Unknown: rustls could not compare (e.g. an unusual key type); the handshake
        // will tell.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(certified),
        Err(error) => Err((
            key_key,
            format!("does not belong to the certificate in {cert_key}: {error}"),
        )),
    }
}

fn client_roots(path: &Path, source: &PemSource) -> Result<Arc<RootCertStore>, WebConfigError> {
    let key = match source {
        PemSource::File(_) => "client_ca_file",
        PemSource::Inline(_) => "client_ca",
    };
    let error = |reason: String| pem_error(path, key, source, reason);
    let pem = read_pem(source).map_err(error)?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| error(format!("not a PEM certificate: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| error(format!("not a usable CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(error("contains no PEM certificate".into()));
    }
    Ok(Arc::new(roots))
}

impl TlsServer {
    /// Loads the certificate, key and client CA and builds the server configuration.
    /// `path` is the web config file, for the errors.
    pub fn build(path: &Path, settings: &TlsSettings) -> Result<TlsServer, WebConfigError> {
        let mut provider = rustls::crypto::ring::default_provider();
        if !settings.cipher_suites.is_empty() {
            let mut suites: Vec<_> = provider
                .cipher_suites
                .iter()
                .copied()
                .filter(|suite| suite.version() == &rustls::version::TLS13)
                .collect();
            suites.extend(settings.cipher_suites.iter().copied());
            provider.cipher_suites = suites;
        }
        if !settings.curve_preferences.is_empty() {
            provider.kx_groups.clone_from(&settings.curve_preferences);
        }
        let provider = Arc::new(provider);
        let certified =
            load_pair(&provider, &settings.cert, &settings.key).map_err(|(key, reason)| {
                let source = if key.starts_with("cert") {
                    &settings.cert
                } else {
                    &settings.key
                };
                pem_error(path, key, source, reason)
            })?;
        let versions: Vec<&'static rustls::SupportedProtocolVersion> = [
            (TlsVersion::Tls12, &rustls::version::TLS12),
            (TlsVersion::Tls13, &rustls::version::TLS13),
        ]
        .into_iter()
        .filter(|(version, _)| settings.min_version <= *version && *version <= settings.max_version)
        .map(|(_, version)| version)
        .collect();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)
            .map_err(|error| WebConfigError {
                path: path.to_owned(),
                key: Some("tls_server_config".into()),
                value: None,
                reason: format!("no usable TLS configuration: {error}"),
            })?;
        let builder = match settings.client_auth {
            ClientAuth::NoClientCert => builder.with_no_client_auth(),
            ClientAuth::RequestClientCert | ClientAuth::RequireAnyClientCert => builder
                .with_client_cert_verifier(Arc::new(AnyClientCert {
                    algorithms: provider.signature_verification_algorithms,
                })),
            ClientAuth::VerifyClientCertIfGiven | ClientAuth::RequireAndVerifyClientCert => {
                let Some(ca) = &settings.client_ca else {
                    return Err(WebConfigError {
                        path: path.to_owned(),
                        key: Some("tls_server_config.client_ca_file".into()),
                        value: None,
                        reason: "missing".into(),
                    });
                };
                let roots = client_roots(path, ca)?;
                let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
                    // Required per request, not per connection: see the module docs.
                    .allow_unauthenticated()
                    .build()
                    .map_err(|error| pem_error(path, "client_ca_file", ca, error.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let certificate = Arc::new(ReloadingCertificate::new(
            provider,
            settings.cert.clone(),
            settings.key.clone(),
            certified,
        ));
        let mut config = builder.with_cert_resolver(certificate.clone());
        config.ignore_client_order = settings.prefer_server_cipher_suites;
        // HTTP/1.1 only (see http_server_config.http2 in the README).
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsServer {
            config: Arc::new(config),
            certificate,
        })
    }
}

/// What identifies a file's version without reading it: device, inode, size, mtime
/// (of the symlink's target: a Secret volume's swap changes all of them).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp(Option<(u64, u64, u64, Option<SystemTime>)>);

fn stamp(source: &PemSource) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    match source {
        PemSource::File(file) => Stamp(
            std::fs::metadata(file)
                .ok()
                .map(|meta| (meta.dev(), meta.ino(), meta.len(), meta.modified().ok())),
        ),
        PemSource::Inline(_) => Stamp(None),
    }
}

/// The served certificate: resolved on every handshake, replaced when its files change.
#[derive(Debug)]
pub struct ReloadingCertificate {
    provider: Arc<CryptoProvider>,
    cert: PemSource,
    key: PemSource,
    current: RwLock<Arc<CertifiedKey>>,
    /// The files' stamps when last read (successfully or not).
    seen: Mutex<(Stamp, Stamp)>,
    /// `selfheal_web_tls_reloads_total`.
    pub reloads: Counter,
    /// `selfheal_web_tls_reload_errors_total`.
    pub reload_errors: Counter,
}

impl ReloadingCertificate {
    fn new(
        provider: Arc<CryptoProvider>,
        cert: PemSource,
        key: PemSource,
        certified: CertifiedKey,
    ) -> ReloadingCertificate {
        let seen = (stamp(&cert), stamp(&key));
        ReloadingCertificate {
            provider,
            cert,
            key,
            current: RwLock::new(Arc::new(certified)),
            seen: Mutex::new(seen),
            reloads: Counter::default(),
            reload_errors: Counter::default(),
        }
    }

    /// Whether the certificate comes from files (and so can be reloaded).
    pub fn is_reloadable(&self) -> bool {
        matches!(self.cert, PemSource::File(_)) || matches!(self.key, PemSource::File(_))
    }

    /// Re-reads the pair if either file changed since last read. A pair that cannot be
    /// used is logged and counted, and the current one stays.
    pub fn check(&self) {
        let now = (stamp(&self.cert), stamp(&self.key));
        {
            let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
            if *seen == now {
                return;
            }
            *seen = now;
        }
        match load_pair(&self.provider, &self.cert, &self.key) {
            Ok(certified) => {
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(certified);
                self.reloads.inc();
                tracing::info!("web TLS: certificate and key reloaded");
            }
            Err((key, reason)) => {
                self.reload_errors.inc();
                tracing::warn!(
                    "web TLS: cannot reload tls_server_config.{key} ({reason}); still serving \
                     the previous certificate (counted in selfheal_web_tls_reload_errors_total)"
                );
            }
        }
    }

    /// Checks the files every [`RELOAD_CHECK_INTERVAL`] until `stop`.
    pub async fn watch(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        if !self.is_reloadable() {
            return;
        }
        let mut ticks = tokio::time::interval(RELOAD_CHECK_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {
                    let this = self.clone();
                    // File reads: off the async threads.
                    let _ = tokio::task::spawn_blocking(move || this.check()).await;
                }
                _ = async { stop.wait_for(|stop| *stop).await.is_ok() } => return,
            }
        }
    }
}

impl ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

/// `RequestClientCert`, `RequireAnyClientCert`: any certificate is taken, unverified
/// (Go's semantics), but the client must prove it holds its key (the handshake
/// signature is checked).
#[derive(Debug)]
struct AnyClientCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Whether the client certificate `der` carries one of `allowed` as a DNS or IP
/// subject alternative name (exact match, as exporter-toolkit).
pub fn has_allowed_san(der: &CertificateDer<'_>, allowed: &[String]) -> bool {
    let Ok(cert) = webpki::EndEntityCert::try_from(der) else {
        return false;
    };
    let dns: Vec<&str> = cert.valid_dns_names().collect();
    allowed.iter().any(|san| {
        if dns.iter().any(|name| name == san) {
            return true;
        }
        match san.parse::<std::net::IpAddr>() {
            Ok(ip) => cert
                .verify_is_valid_for_subject_name(&rustls::pki_types::ServerName::IpAddress(
                    ip.into(),
                ))
                .is_ok(),
            Err(_) => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::export::web::config::WebConfig;

    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn new() -> Files {
            Files {
                dir: tempfile::tempdir().expect("tempdir"),
            }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        /// A fresh self-signed pair for `name` in server.crt and server.key.
        fn write_pair(&self, name: &str) {
            let pair = rcgen::generate_simple_self_signed(vec![name.to_owned()]).expect("cert");
            std::fs::write(self.path("server.crt"), pair.cert.pem()).expect("written");
            std::fs::write(self.path("server.key"), pair.signing_key.serialize_pem())
                .expect("written");
        }

        fn build(&self, extra: &str) -> Result<TlsServer, String> {
            let path = self.path("web.yml");
            std::fs::write(
                &path,
                format!(
                    "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n{extra}"
                ),
            )
            .expect("written");
            let config = WebConfig::load(&path).map_err(|e| e.to_string())?;
            let tls = config.tls.expect("TLS on");
            TlsServer::build(&path, &tls).map_err(|e| e.to_string())
        }
    }

    fn served(server: &TlsServer) -> Vec<u8> {
        server.certificate.current.read().expect("lock").cert[0].to_vec()
    }

    #[test]
    fn a_good_pair_builds_and_bad_files_name_their_key() {
        let files = Files::new();
        files.write_pair("localhost");
        let server = files.build("").expect("builds");
        assert_eq!(server.config.alpn_protocols, [b"http/1.1".to_vec()]);
        assert!(server.config.ignore_client_order);

        std::fs::remove_file(files.path("server.key")).expect("removed");
        let error = files.build("").expect_err("no key");
        let expected = format!(
            "web config {}: tls_server_config.key_file = {:?}: cannot read: No such file",
            files.path("web.yml").display(),
            files.path("server.key").display().to_string()
        );
        assert!(error.starts_with(&expected), "{error}");

        std::fs::write(files.path("server.key"), "not a key").expect("written");
        assert!(
            files
                .build("")
                .expect_err("bad")
                .contains("tls_server_config.key_file")
        );

        // A key of another certificate.
        let other = rcgen::generate_simple_self_signed(vec!["other".to_owned()]).expect("cert");
        std::fs::write(files.path("server.key"), other.signing_key.serialize_pem())
            .expect("written");
        let error = files.build("").expect_err("mismatch");
        assert!(
            error.contains("key_file") && error.contains("does not belong"),
            "{error}"
        );

        files.write_pair("localhost");
        std::fs::write(files.path("server.crt"), "garbage").expect("written");
        let error = files.build("").expect_err("no cert");
        assert!(
            error.contains("tls_server_config.cert_file") && error.contains("no PEM certificate"),
            "{error}"
        );
    }

    #[test]
    fn client_cas_are_loaded_and_checked() {
        let files = Files::new();
        files.write_pair("localhost");
        let ca = rcgen::generate_simple_self_signed(vec!["ca".to_owned()]).expect("cert");
        std::fs::write(files.path("ca.crt"), ca.cert.pem()).expect("written");
        let verify = "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n";
        files.build(verify).expect("builds");
        std::fs::write(files.path("ca.crt"), "").expect("written");
        let error = files.build(verify).expect_err("empty CA");
        assert!(
            error.contains("tls_server_config.client_ca_file")
                && error.contains("no PEM certificate"),
            "{error}"
        );
        files
            .build("  client_auth_type: RequireAnyClientCert\n")
            .expect("no CA needed");
    }

    #[test]
    fn a_changed_pair_is_served_and_a_bad_one_keeps_the_old() {
        let files = Files::new();
        files.write_pair("first");
        let server = files.build("").expect("builds");
        let first = served(&server);
        server.certificate.check();
        assert_eq!(served(&server), first, "unchanged files: nothing reloaded");
        assert_eq!(server.certificate.reloads.get(), 0);

        files.write_pair("second");
        server.certificate.check();
        let second = served(&server);
        assert_ne!(second, first);
        assert_eq!(server.certificate.reloads.get(), 1);

        std::fs::write(files.path("server.key"), "truncated").expect("written");
        server.certificate.check();
        assert_eq!(served(&server), second, "the old pair stays");
        assert_eq!(server.certificate.reload_errors.get(), 1);
        // Counted once per change, not once per check.
        server.certificate.check();
        assert_eq!(server.certificate.reload_errors.get(), 1);
    }

    #[test]
    fn allowed_sans_match_dns_names_and_ip_addresses_exactly() {
        let cert = rcgen::generate_simple_self_signed(vec![
            "prometheus.monitoring.svc".to_owned(),
            "10.0.0.7".to_owned(),
        ])
        .expect("cert");
        let der = cert.cert.der();
        let allowed = |sans: &[&str]| {
            let sans: Vec<String> = sans.iter().map(|&san| san.to_owned()).collect();
            has_allowed_san(der, &sans)
        };
        assert!(allowed(&["prometheus.monitoring.svc"]));
        assert!(allowed(&["other", "10.0.0.7"]));
        assert!(!allowed(&["monitoring.svc"]), "no suffix match");
        assert!(!allowed(&["*.monitoring.svc"]), "no wildcard match");
        assert!(!allowed(&["10.0.0.8", "prometheus"]));
        assert!(!allowed(&[]));
    }
}
