//! The web configuration file (`--web.config.file`): the Prometheus exporter-toolkit's
//! YAML format (`tls_server_config`, `http_server_config`, `basic_auth_users`,
//! `rate_limit`), parsed and checked into [`WebConfig`]. Nothing here reads a certificate
//! or a key: [`super::tls`] does, with the same error type.
//!
//! Differences from exporter-toolkit, each an error at start-up rather than a silent
//! change: TLS 1.0 and 1.1, CurveP521 and the Go cipher suites that rustls does not
//! implement (CBC, RSA key exchange, 3DES, RC4) are refused; `cert` and `cert_file` (or
//! `key` and `key_file`, `client_ca` and `client_ca_file`) together are refused; a
//! verifying `client_auth_type` needs a client CA (Go would fall back to the system's).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue};
use rustls::SupportedCipherSuite;
use rustls::crypto::SupportedKxGroup;
use rustls::crypto::ring::{cipher_suite, kx_group};
use serde_json::{Map, Value};

/// A problem with the web configuration file, naming the file, the key and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebConfigError {
    /// The web configuration file.
    pub path: PathBuf,
    /// The offending key, dotted (`tls_server_config.key_file`); `None` for the file.
    pub key: Option<String>,
    /// The offending value as written (never a secret).
    pub value: Option<String>,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for WebConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "web config {}: ", self.path.display())?;
        if let Some(key) = &self.key {
            f.write_str(key)?;
            if let Some(value) = &self.value {
                write!(f, " = {value}")?;
            }
            f.write_str(": ")?;
        }
        f.write_str(&self.reason)
    }
}

impl std::error::Error for WebConfigError {}

/// The checked web configuration.
#[derive(Clone, Debug)]
pub struct WebConfig {
    /// The file it was read from (relative paths inside it are resolved against its
    /// directory).
    pub path: PathBuf,
    /// `tls_server_config`, when it configures TLS (a certificate, a key, a client CA
    /// or a client auth type is set; exporter-toolkit's rule). `None`: plain HTTP.
    pub tls: Option<TlsSettings>,
    /// `http_server_config.http2`: accepted; the server speaks HTTP/1.1 either way.
    pub http2: bool,
    /// `http_server_config.headers`, blank values left out: set on every response.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// `basic_auth_users`: user → bcrypt hash (checked to be one). Empty: no basic auth.
    pub users: BTreeMap<String, String>,
    /// `rate_limit`, when its interval is not zero.
    pub rate_limit: Option<RateLimit>,
}

/// `rate_limit`: a token bucket, one token per `interval`, `burst` at most.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Time between two tokens.
    pub interval: Duration,
    /// Bucket size (at least 1).
    pub burst: u32,
}

/// Where a PEM document comes from: a file (re-read on change) or inline text.
#[derive(Clone, PartialEq, Eq)]
pub enum PemSource {
    /// `*_file`, resolved against the web config file's directory.
    File(PathBuf),
    /// Inline PEM (`cert`, `key`, `client_ca`).
    Inline(String),
}

impl fmt::Debug for PemSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PemSource::File(path) => write!(f, "File({})", path.display()),
            // An inline key is a secret.
            PemSource::Inline(_) => f.write_str("Inline(..)"),
        }
    }
}

/// `tls_server_config.client_auth_type`, Go's `tls.ClientAuthType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// `NoClientCert` (the default): no certificate asked for.
    NoClientCert,
    /// `RequestClientCert`: asked for, neither required nor verified.
    RequestClientCert,
    /// `RequireAnyClientCert` (or the old `RequireClientCert`): required, not verified.
    RequireAnyClientCert,
    /// `VerifyClientCertIfGiven`: verified against the client CA when given.
    VerifyClientCertIfGiven,
    /// `RequireAndVerifyClientCert`: required and verified against the client CA.
    RequireAndVerifyClientCert,
}

impl ClientAuth {
    fn parse(name: &str) -> Option<ClientAuth> {
        Some(match name {
            "" | "NoClientCert" => ClientAuth::NoClientCert,
            "RequestClientCert" => ClientAuth::RequestClientCert,
            "RequireAnyClientCert" | "RequireClientCert" => ClientAuth::RequireAnyClientCert,
            "VerifyClientCertIfGiven" => ClientAuth::VerifyClientCertIfGiven,
            "RequireAndVerifyClientCert" => ClientAuth::RequireAndVerifyClientCert,
            _ => return None,
        })
    }

    /// Whether a presented certificate is verified against the client CA.
    pub fn verifies(self) -> bool {
        matches!(
            self,
            ClientAuth::VerifyClientCertIfGiven | ClientAuth::RequireAndVerifyClientCert
        )
    }

    /// Whether `/metrics` and `/api/v1/incidents` need a client certificate.
    pub fn requires(self) -> bool {
        matches!(
            self,
            ClientAuth::RequireAnyClientCert | ClientAuth::RequireAndVerifyClientCert
        )
    }
}

/// A TLS protocol version rustls implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    /// `TLS12`.
    Tls12,
    /// `TLS13`.
    Tls13,
}

/// `tls_server_config`, checked.
#[derive(Clone, Debug)]
pub struct TlsSettings {
    /// `cert_file` or `cert`.
    pub cert: PemSource,
    /// `key_file` or `key`.
    pub key: PemSource,
    /// `client_auth_type`.
    pub client_auth: ClientAuth,
    /// `client_ca_file` or `client_ca`.
    pub client_ca: Option<PemSource>,
    /// `client_allowed_sans`: a client certificate must carry one of them (exact match).
    pub client_allowed_sans: Vec<String>,
    /// `min_version` (default TLS12).
    pub min_version: TlsVersion,
    /// `max_version` (default TLS13).
    pub max_version: TlsVersion,
    /// `cipher_suites`: the TLS 1.2 suites, in preference order; empty: rustls' defaults.
    /// (As in Go, TLS 1.3 suites are not configurable: their names are accepted.)
    pub cipher_suites: Vec<SupportedCipherSuite>,
    /// `curve_preferences`, in preference order; empty: rustls' defaults.
    pub curve_preferences: Vec<&'static dyn SupportedKxGroup>,
    /// `prefer_server_cipher_suites` (default true): rustls' `ignore_client_order`.
    pub prefer_server_cipher_suites: bool,
}

const TOP_LEVEL: &[&str] = &[
    "tls_server_config",
    "http_server_config",
    "basic_auth_users",
    "rate_limit",
];
const TLS_KEYS: &[&str] = &[
    "cert",
    "key",
    "client_ca",
    "cert_file",
    "key_file",
    "client_auth_type",
    "client_ca_file",
    "client_allowed_sans",
    "min_version",
    "max_version",
    "cipher_suites",
    "prefer_server_cipher_suites",
    "curve_preferences",
];
const HTTP_KEYS: &[&str] = &["http2", "headers"];
const RATE_LIMIT_KEYS: &[&str] = &["interval", "burst"];

/// The headers exporter-toolkit lets a web config set, with their allowed values (`None`:
/// any value).
const HEADERS: &[(&str, Option<&[&str]>)] = &[
    ("Strict-Transport-Security", None),
    ("X-Content-Type-Options", Some(&["nosniff"])),
    ("X-Frame-Options", Some(&["deny", "sameorigin"])),
    ("X-XSS-Protection", None),
    ("Content-Security-Policy", None),
];

/// Go's names of the TLS 1.2 suites rustls (with ring) implements.
fn tls12_suite(name: &str) -> Option<SupportedCipherSuite> {
    Some(match name {
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256" => {
            cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        }
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384" => {
            cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
        }
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256" => {
            cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        }
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256" => {
            cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        }
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384" => {
            cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
        }
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256" => {
            cipher_suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
        }
        _ => return None,
    })
}

/// Go's TLS 1.3 suite names: accepted and, as in Go, without effect.
const TLS13_SUITES: &[&str] = &[
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
];

/// Go cipher suites rustls does not implement (no CBC, no RSA key exchange).
const GO_ONLY_SUITES: &[&str] = &[
    "TLS_RSA_WITH_RC4_128_SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
];

impl WebConfig {
    /// Reads and checks the web configuration file at `path`.
    pub fn load(path: &Path) -> Result<WebConfig, WebConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| WebConfigError {
            path: path.to_owned(),
            key: None,
            value: None,
            reason: format!("cannot read: {error}"),
        })?;
        WebConfig::parse(path, &text)
    }

    /// Checks `text`, the contents of the file at `path`.
    pub fn parse(path: &Path, text: &str) -> Result<WebConfig, WebConfigError> {
        let file = File { path };
        let document: Value = serde_saphyr::from_str(text)
            .map_err(|error| file.error(None, None, format!("not valid YAML: {error}")))?;
        let empty = Map::new();
        let top = match &document {
            Value::Null => &empty,
            Value::Object(map) => map,
            _ => return Err(file.error(None, None, "must be a YAML mapping".into())),
        };
        file.known_keys(top, "", TOP_LEVEL)?;
        let dir = path.parent().unwrap_or(Path::new(""));

        let tls = match file.section(top, "", "tls_server_config")? {
            Some(section) => file.tls(section, dir)?,
            None => None,
        };
        let (http2, headers) = match file.section(top, "", "http_server_config")? {
            Some(section) => file.http(section)?,
            None => (true, Vec::new()),
        };
        let users = match file.section(top, "", "basic_auth_users")? {
            Some(section) => file.users(section)?,
            None => BTreeMap::new(),
        };
        let rate_limit = match file.section(top, "", "rate_limit")? {
            Some(section) => file.rate_limit(section)?,
            None => None,
        };
        Ok(WebConfig {
            path: path.to_owned(),
            tls,
            http2,
            headers,
            users,
            rate_limit,
        })
    }
}

/// The file being checked: builds its errors.
struct File<'a> {
    path: &'a Path,
}

fn dotted(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

fn quoted(value: &Value) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "?".into())
}

impl File<'_> {
    fn error(&self, key: Option<String>, value: Option<String>, reason: String) -> WebConfigError {
        WebConfigError {
            path: self.path.to_owned(),
            key,
            value,
            reason,
        }
    }

    fn at(&self, key: String, value: Option<&Value>, reason: impl Into<String>) -> WebConfigError {
        self.error(Some(key), value.map(quoted), reason.into())
    }

    fn known_keys(
        &self,
        map: &Map<String, Value>,
        prefix: &str,
        known: &[&str],
    ) -> Result<(), WebConfigError> {
        match map.keys().find(|key| !known.contains(&key.as_str())) {
            Some(key) => Err(self.at(
                dotted(prefix, key),
                None,
                format!("unknown key (expected one of: {})", known.join(", ")),
            )),
            None => Ok(()),
        }
    }

    /// A mapping under `key`; absent or null: `None`.
    fn section<'m>(
        &self,
        map: &'m Map<String, Value>,
        prefix: &str,
        key: &str,
    ) -> Result<Option<&'m Map<String, Value>>, WebConfigError> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(section)) => Ok(Some(section)),
            Some(other) => Err(self.at(dotted(prefix, key), Some(other), "must be a mapping")),
        }
    }

    /// A string under `key`; absent, null or empty: `None` (Go's zero value).
    fn string(
        &self,
        map: &Map<String, Value>,
        prefix: &str,
        key: &str,
    ) -> Result<Option<String>, WebConfigError> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) if text.is_empty() => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.clone())),
            Some(other) => Err(self.at(dotted(prefix, key), Some(other), "must be a string")),
        }
    }

    fn strings(
        &self,
        map: &Map<String, Value>,
        prefix: &str,
        key: &str,
    ) -> Result<Vec<String>, WebConfigError> {
        let bad = |value: &Value| {
            self.at(
                dotted(prefix, key),
                Some(value),
                "must be a list of strings",
            )
        };
        match map.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(list @ Value::Array(items)) => items
                .iter()
                .map(|item| item.as_str().map(str::to_owned).ok_or_else(|| bad(list)))
                .collect(),
            Some(other) => Err(bad(other)),
        }
    }

    fn boolean(
        &self,
        map: &Map<String, Value>,
        prefix: &str,
        key: &str,
        default: bool,
    ) -> Result<bool, WebConfigError> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(value)) => Ok(*value),
            Some(other) => Err(self.at(dotted(prefix, key), Some(other), "must be true or false")),
        }
    }

    /// `cert_file` or `cert` (and the like): a file resolved against `dir`, or inline PEM.
    fn pem(
        &self,
        map: &Map<String, Value>,
        file_key: &str,
        inline_key: &str,
        dir: &Path,
    ) -> Result<Option<PemSource>, WebConfigError> {
        let prefix = "tls_server_config";
        let file = self.string(map, prefix, file_key)?;
        let inline = self.string(map, prefix, inline_key)?;
        match (file, inline) {
            (Some(file), Some(_)) => Err(self.at(
                dotted(prefix, file_key),
                Some(&Value::String(file)),
                format!("give {file_key} or {inline_key}, not both"),
            )),
            (Some(file), None) => Ok(Some(PemSource::File(dir.join(file)))),
            (None, Some(inline)) => Ok(Some(PemSource::Inline(inline))),
            (None, None) => Ok(None),
        }
    }

    fn version(
        &self,
        map: &Map<String, Value>,
        key: &str,
        default: TlsVersion,
    ) -> Result<TlsVersion, WebConfigError> {
        let prefix = "tls_server_config";
        let Some(name) = self.string(map, prefix, key)? else {
            return Ok(default);
        };
        let value = Value::String(name.clone());
        match name.as_str() {
            "TLS12" => Ok(TlsVersion::Tls12),
            "TLS13" => Ok(TlsVersion::Tls13),
            "TLS10" | "TLS11" => Err(self.at(
                dotted(prefix, key),
                Some(&value),
                "not supported: rustls implements TLS12 and TLS13 only",
            )),
            _ => Err(self.at(
                dotted(prefix, key),
                Some(&value),
                "unknown TLS version (expected TLS12 or TLS13)",
            )),
        }
    }

    fn tls(
        &self,
        map: &Map<String, Value>,
        dir: &Path,
    ) -> Result<Option<TlsSettings>, WebConfigError> {
        let prefix = "tls_server_config";
        self.known_keys(map, prefix, TLS_KEYS)?;
        let cert = self.pem(map, "cert_file", "cert", dir)?;
        let key = self.pem(map, "key_file", "key", dir)?;
        let client_ca = self.pem(map, "client_ca_file", "client_ca", dir)?;
        let auth_name = self.string(map, prefix, "client_auth_type")?;
        let client_auth = match &auth_name {
            None => ClientAuth::NoClientCert,
            Some(name) => ClientAuth::parse(name).ok_or_else(|| {
                self.at(
                    dotted(prefix, "client_auth_type"),
                    Some(&Value::String(name.clone())),
                    "unknown client auth type (expected NoClientCert, RequestClientCert, \
                     RequireAnyClientCert, VerifyClientCertIfGiven or RequireAndVerifyClientCert)",
                )
            })?,
        };
        let client_allowed_sans = self.strings(map, prefix, "client_allowed_sans")?;
        let min_version = self.version(map, "min_version", TlsVersion::Tls12)?;
        let max_version = self.version(map, "max_version", TlsVersion::Tls13)?;
        let cipher_names = self.strings(map, prefix, "cipher_suites")?;
        let curve_names = self.strings(map, prefix, "curve_preferences")?;
        let prefer_server_cipher_suites =
            self.boolean(map, prefix, "prefer_server_cipher_suites", true)?;

        // exporter-toolkit's rule: TLS is on when any of these is set.
        if cert.is_none() && key.is_none() && client_ca.is_none() && auth_name.is_none() {
            return Ok(None);
        }
        let (Some(cert), Some(key)) = (cert, key) else {
            let missing = if map.contains_key("cert_file") || map.contains_key("cert") {
                "key_file"
            } else {
                "cert_file"
            };
            return Err(self.at(
                dotted(prefix, missing),
                None,
                format!(
                    "missing: TLS needs cert_file (or cert) and key_file (or key); \
                     {missing} is not set"
                ),
            ));
        };
        if client_ca.is_some() && client_auth == ClientAuth::NoClientCert {
            return Err(self.at(
                dotted(prefix, "client_auth_type"),
                auth_name.map(Value::String).as_ref(),
                "a client CA is configured without a client auth type that asks for \
                 certificates (e.g. RequireAndVerifyClientCert)",
            ));
        }
        if client_auth.verifies() && client_ca.is_none() {
            return Err(self.at(
                dotted(prefix, "client_ca_file"),
                None,
                format!("missing: client_auth_type {client_auth:?} verifies client certificates against client_ca_file (or client_ca)"),
            ));
        }
        if !client_allowed_sans.is_empty() && !client_auth.requires() {
            return Err(self.at(
                dotted(prefix, "client_allowed_sans"),
                map.get("client_allowed_sans"),
                "requires client_auth_type RequireAnyClientCert or RequireAndVerifyClientCert",
            ));
        }
        if let Some(san) = client_allowed_sans.iter().find(|san| {
            san.contains('@') || san.contains(':') && san.parse::<std::net::IpAddr>().is_err()
        }) {
            return Err(self.at(
                dotted(prefix, "client_allowed_sans"),
                Some(&Value::String(san.clone())),
                "only DNS names and IP addresses are matched here (not e-mail addresses or URIs)",
            ));
        }
        if min_version > max_version {
            return Err(self.at(
                dotted(prefix, "min_version"),
                map.get("min_version"),
                "is above max_version",
            ));
        }
        let mut cipher_suites = Vec::new();
        for name in &cipher_names {
            let key = dotted(prefix, "cipher_suites");
            let value = Value::String(name.clone());
            if let Some(suite) = tls12_suite(name) {
                cipher_suites.push(suite);
            } else if TLS13_SUITES.contains(&name.as_str()) {
                // Not configurable in Go either: always on with TLS 1.3.
            } else if GO_ONLY_SUITES.contains(&name.as_str()) {
                return Err(self.at(
                    key,
                    Some(&value),
                    "a Go cipher suite that rustls does not implement (rustls has only \
                     ECDHE with AES-GCM or ChaCha20-Poly1305)",
                ));
            } else {
                return Err(self.at(key, Some(&value), "unknown cipher suite"));
            }
        }
        if !cipher_names.is_empty() && cipher_suites.is_empty() && min_version == TlsVersion::Tls12
        {
            return Err(self.at(
                dotted(prefix, "cipher_suites"),
                map.get("cipher_suites"),
                "names no TLS 1.2 suite, so no TLS 1.2 client could connect: add one, or set \
                 min_version: TLS13",
            ));
        }
        let mut curve_preferences: Vec<&'static dyn SupportedKxGroup> = Vec::new();
        for name in &curve_names {
            let key = dotted(prefix, "curve_preferences");
            let value = Value::String(name.clone());
            curve_preferences.push(match name.as_str() {
                "X25519" => kx_group::X25519,
                "CurveP256" => kx_group::SECP256R1,
                "CurveP384" => kx_group::SECP384R1,
                "CurveP521" => {
                    return Err(self.at(
                        key,
                        Some(&value),
                        "not supported by rustls (X25519, CurveP256 and CurveP384 are)",
                    ));
                }
                _ => {
                    return Err(self.at(
                        key,
                        Some(&value),
                        "unknown curve (expected X25519, CurveP256 or CurveP384)",
                    ));
                }
            });
        }
        Ok(Some(TlsSettings {
            cert,
            key,
            client_auth,
            client_ca,
            client_allowed_sans,
            min_version,
            max_version,
            cipher_suites,
            curve_preferences,
            prefer_server_cipher_suites,
        }))
    }

    fn http(
        &self,
        map: &Map<String, Value>,
    ) -> Result<(bool, Vec<(HeaderName, HeaderValue)>), WebConfigError> {
        let prefix = "http_server_config";
        self.known_keys(map, prefix, HTTP_KEYS)?;
        let http2 = self.boolean(map, prefix, "http2", true)?;
        let mut headers = Vec::new();
        if let Some(section) = self.section(map, prefix, "headers")? {
            for (name, value) in section {
                let key = format!("{prefix}.headers.{name}");
                let Some((_, allowed)) = HEADERS.iter().find(|(known, _)| known == name) else {
                    let names: Vec<&str> = HEADERS.iter().map(|(name, _)| *name).collect();
                    return Err(self.at(
                        key,
                        None,
                        format!(
                            "this header cannot be configured (exporter-toolkit allows: {})",
                            names.join(", ")
                        ),
                    ));
                };
                let Value::String(text) = value else {
                    return Err(self.at(key, Some(value), "must be a string"));
                };
                if text.is_empty() {
                    continue;
                }
                if let Some(allowed) = allowed
                    && !allowed.contains(&text.as_str())
                {
                    return Err(self.at(
                        key,
                        Some(value),
                        format!("expected one of: {}", allowed.join(", ")),
                    ));
                }
                let header_value = HeaderValue::from_str(text)
                    .map_err(|_| self.at(key.clone(), Some(value), "not a valid header value"))?;
                let header_name = HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| self.at(key, None, "not a valid header name"))?;
                headers.push((header_name, header_value));
            }
        }
        Ok((http2, headers))
    }

    fn users(&self, map: &Map<String, Value>) -> Result<BTreeMap<String, String>, WebConfigError> {
        let mut users = BTreeMap::new();
        for (user, hash) in map {
            let key = format!("basic_auth_users.{user}");
            let Value::String(hash) = hash else {
                return Err(self.at(key, None, "must be a bcrypt hash (a string)"));
            };
            if user.contains(':') {
                return Err(self.at(
                    key,
                    None,
                    "a user name cannot contain ':' (basic auth splits on it)",
                ));
            }
            if let Err(error) = hash.parse::<bcrypt::HashParts>() {
                return Err(self.at(
                    key,
                    None,
                    format!(
                        "not a bcrypt hash ({error}); make one with `htpasswd -nBC 10 \"\" | tr -d ':\\n'`"
                    ),
                ));
            }
            users.insert(user.clone(), hash.clone());
        }
        Ok(users)
    }

    fn rate_limit(&self, map: &Map<String, Value>) -> Result<Option<RateLimit>, WebConfigError> {
        let prefix = "rate_limit";
        self.known_keys(map, prefix, RATE_LIMIT_KEYS)?;
        let interval = match map.get("interval") {
            None | Some(Value::Null) => Duration::ZERO,
            Some(value @ Value::String(text)) => parse_go_duration(text).ok_or_else(|| {
                self.at(
                    dotted(prefix, "interval"),
                    Some(value),
                    "not a duration (e.g. 100ms, 1s, 1m30s)",
                )
            })?,
            Some(Value::Number(number)) if number.as_u64() == Some(0) => Duration::ZERO,
            Some(value) => {
                return Err(self.at(
                    dotted(prefix, "interval"),
                    Some(value),
                    "not a duration (e.g. 100ms, 1s, 1m30s)",
                ));
            }
        };
        let burst = match map.get("burst") {
            None | Some(Value::Null) => 0,
            Some(value) => value
                .as_u64()
                .and_then(|burst| u32::try_from(burst).ok())
                .ok_or_else(|| {
                    self.at(
                        dotted(prefix, "burst"),
                        Some(value),
                        "must be a whole number",
                    )
                })?,
        };
        if interval.is_zero() {
            return Ok(None);
        }
        if burst == 0 {
            return Err(self.at(
                dotted(prefix, "burst"),
                map.get("burst"),
                "must be at least 1 when rate_limit.interval is set (0 would refuse every request)",
            ));
        }
        Ok(Some(RateLimit { interval, burst }))
    }
}

/// A Go duration (`1h30m`, `1.5s`, `250ms`, `0`), as exporter-toolkit's YAML reads it:
/// jiff's "friendly" duration format reads Go's.
fn parse_go_duration(text: &str) -> Option<Duration> {
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let duration: jiff::SignedDuration = text.parse().ok()?;
    Duration::try_from(duration).ok()
}

#[cfg(test)]
mod tests;
