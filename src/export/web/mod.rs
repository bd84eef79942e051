//! The admin server's security, configured the Prometheus way: an exporter-toolkit web
//! configuration file (`--web.config.file`) turns on TLS ([`tls`], served through
//! [`listener`]), client-certificate checks, basic auth and a rate limit ([`auth`]) and
//! response headers; its format and checks are [`config`]'s.
//!
//! `/healthz` and `/readyz` stay open (over TLS when TLS is on): the kubelet's probes
//! bring no password and no client certificate.

pub mod auth;
pub mod config;
pub mod listener;
pub mod tls;

use std::path::Path;
use std::sync::Arc;

pub use config::{WebConfig, WebConfigError};

/// The web configuration, loaded and checked, with the TLS server built from it.
#[derive(Clone, Debug)]
pub struct WebSecurity {
    /// The checked file.
    pub config: WebConfig,
    /// The TLS server configuration; `None`: plain HTTP.
    pub tls: Option<tls::TlsServer>,
    /// What the protected endpoints require; `None`: nothing.
    pub guard: Option<Arc<auth::Guard>>,
}

impl WebSecurity {
    /// Reads the file at `path`, its certificate, key and client CA, and checks them all.
    pub fn load(path: &Path) -> Result<WebSecurity, WebConfigError> {
        let config = WebConfig::load(path)?;
        let tls = match &config.tls {
            Some(settings) => Some(tls::TlsServer::build(path, settings)?),
            None => None,
        };
        let guard = auth::Guard::new(&config);
        Ok(WebSecurity { config, tls, guard })
    }

    /// One line on what the file turns on, for check-config and the start-up log.
    pub fn summary(&self) -> String {
        let config = &self.config;
        let tls = match &config.tls {
            Some(tls) => format!(
                "TLS on ({:?}..{:?}, client_auth_type {:?}{})",
                tls.min_version,
                tls.max_version,
                tls.client_auth,
                if tls.client_allowed_sans.is_empty() {
                    ""
                } else {
                    ", client_allowed_sans"
                }
            ),
            None => "TLS off".to_owned(),
        };
        let rate_limit = match config.rate_limit {
            Some(limit) => format!("{:?} per request, burst {}", limit.interval, limit.burst),
            None => "off".to_owned(),
        };
        format!(
            "web config {}: {tls}; basic_auth_users: {}; headers: {}; rate_limit: {rate_limit}; \
             HTTP/1.1{}",
            config.path.display(),
            config.users.len(),
            config.headers.len(),
            if config.http2 {
                " (http2: true is accepted; this server speaks HTTP/1.1 only)"
            } else {
                ""
            }
        )
    }
}
