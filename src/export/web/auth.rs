//! Who may read `/metrics` and `/api/v1/incidents`: the client certificate the
//! `client_auth_type` requires (and `client_allowed_sans`), the `basic_auth_users`, and
//! `rate_limit`, as axum middleware; plus the `http_server_config.headers` on every
//! response. `/healthz` and `/readyz` are not behind it (the kubelet's probes carry no
//! credentials).
//!
//! Basic auth as exporter-toolkit does it: an unknown user is checked against a dummy
//! hash of the same cost (no user enumeration by timing), one bcrypt comparison runs at
//! a time (they are CPU-heavy by design), and the outcome for a (user, hash, password)
//! is cached, so a scrape every 15 s costs one bcrypt comparison, not one per scrape.
//! The cache keys are SHA-256 digests: no password is kept in memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;

use super::config::{ClientAuth, RateLimit, WebConfig};
use super::listener::Peer;
use super::tls::has_allowed_san;

/// Cached basic-auth outcomes kept at most; beyond it the cache starts over.
const CACHE_LIMIT: usize = 1024;

/// What a request to a protected endpoint must bring.
#[derive(Debug)]
pub struct Guard {
    require_client_cert: bool,
    client_allowed_sans: Vec<String>,
    users: HashMap<String, String>,
    /// A hash of the users' cost, for unknown users.
    dummy_hash: String,
    cache: Mutex<HashMap<[u8; 32], bool>>,
    bcrypt: tokio::sync::Mutex<()>,
    limiter: Option<Mutex<Bucket>>,
}

impl Guard {
    /// The guard for `config`; `None` when it lets everyone in (no client certificate
    /// required, no users, no rate limit).
    pub fn new(config: &WebConfig) -> Option<Arc<Guard>> {
        let (client_auth, client_allowed_sans) = match &config.tls {
            Some(tls) => (tls.client_auth, tls.client_allowed_sans.clone()),
            None => (ClientAuth::NoClientCert, Vec::new()),
        };
        if !client_auth.requires() && config.users.is_empty() && config.rate_limit.is_none() {
            return None;
        }
        let cost = config
            .users
            .values()
            .filter_map(|hash| hash.parse::<bcrypt::HashParts>().ok())
            .map(|parts| parts.get_cost())
            .max()
            .unwrap_or(bcrypt::DEFAULT_COST);
        let dummy_hash = if config.users.is_empty() {
            String::new()
        } else {
            // At start-up, once: as slow as checking one real user.
            bcrypt::hash("not a password of anyone", cost).unwrap_or_default()
        };
        Some(Arc::new(Guard {
            require_client_cert: client_auth.requires(),
            client_allowed_sans,
            users: config.users.clone().into_iter().collect(),
            dummy_hash,
            cache: Mutex::new(HashMap::new()),
            bcrypt: tokio::sync::Mutex::new(()),
            limiter: config
                .rate_limit
                .map(|limit| Mutex::new(Bucket::new(limit))),
        }))
    }

    /// Whether basic auth is on.
    pub fn has_users(&self) -> bool {
        !self.users.is_empty()
    }

    async fn password_ok(&self, user: &str, password: &str) -> bool {
        let known = self.users.get(user);
        let hash = known.unwrap_or(&self.dummy_hash).clone();
        let digest = {
            let mut context = ring::digest::Context::new(&ring::digest::SHA256);
            for part in [user.as_bytes(), hash.as_bytes(), password.as_bytes()] {
                context.update(&(part.len() as u64).to_be_bytes());
                context.update(part);
            }
            let mut key = [0u8; 32];
            key.copy_from_slice(context.finish().as_ref());
            key
        };
        if let Some(ok) = self.cached(&digest) {
            return ok && known.is_some();
        }
        let _one_at_a_time = self.bcrypt.lock().await;
        // Another request may have computed it meanwhile.
        if let Some(ok) = self.cached(&digest) {
            return ok && known.is_some();
        }
        let password = password.to_owned();
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(false);
        {
            let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
            cache.insert(digest, ok);
        }
        ok && known.is_some()
    }

    fn cached(&self, digest: &[u8; 32]) -> Option<bool> {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(digest)
            .copied()
    }
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// The middleware in front of the protected endpoints.
pub async fn protect(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    if let Some(limiter) = &guard.limiter {
        let allowed = limiter
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take(Instant::now());
        if !allowed {
            return (StatusCode::TOO_MANY_REQUESTS, "Too Many Requests\n").into_response();
        }
    }
    let peer = request
        .extensions()
        .get::<axum::extract::ConnectInfo<Peer>>()
        .map(|info| info.0.clone());
    let addr = peer
        .as_ref()
        .map(|peer| peer.addr.to_string())
        .unwrap_or_default();
    if guard.require_client_cert {
        let Some(cert) = peer.and_then(|peer| peer.client_cert) else {
            tracing::debug!(peer = addr, path = %request.uri().path(), "web: no client certificate");
            return (
                StatusCode::FORBIDDEN,
                "a client certificate is required (tls_server_config.client_auth_type)\n",
            )
                .into_response();
        };
        if !guard.client_allowed_sans.is_empty()
            && !has_allowed_san(&cert, &guard.client_allowed_sans)
        {
            return (
                StatusCode::FORBIDDEN,
                "the client certificate has none of tls_server_config.client_allowed_sans\n",
            )
                .into_response();
        }
    }
    if !guard.users.is_empty() {
        let ok = match basic_credentials(request.headers()) {
            Some((user, password)) => guard.password_ok(&user, &password).await,
            None => false,
        };
        if !ok {
            tracing::debug!(peer = addr, path = %request.uri().path(), "web: basic auth failed");
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Basic")],
                "Unauthorized\n",
            )
                .into_response();
        }
    }
    next.run(request).await
}

/// The `http_server_config.headers`, set on every response.
pub async fn add_headers(
    State(headers): State<Arc<Vec<(HeaderName, HeaderValue)>>>,
    request: Request,
    next: Next,
) -> Response {
    let mut response = next.run(request).await;
    for (name, value) in headers.iter() {
        response.headers_mut().insert(name.clone(), value.clone());
    }
    response
}

/// `rate_limit`'s token bucket (Go's `rate.Limiter` with `rate.Every(interval)`).
#[derive(Debug)]
struct Bucket {
    limit: RateLimit,
    tokens: f64,
    at: Option<Instant>,
}

impl Bucket {
    fn new(limit: RateLimit) -> Bucket {
        Bucket {
            limit,
            tokens: f64::from(limit.burst),
            at: None,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        if let Some(at) = self.at {
            let earned =
                now.saturating_duration_since(at).as_secs_f64() / self.limit.interval.as_secs_f64();
            self.tokens = (self.tokens + earned).min(f64::from(self.limit.burst));
        }
        self.at = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_bucket_allows_a_burst_then_one_per_interval() {
        let mut bucket = Bucket::new(RateLimit {
            interval: Duration::from_secs(1),
            burst: 2,
        });
        let start = Instant::now();
        assert!(bucket.take(start));
        assert!(bucket.take(start));
        assert!(!bucket.take(start));
        assert!(!bucket.take(start + Duration::from_millis(500)));
        assert!(bucket.take(start + Duration::from_millis(1000)));
        assert!(!bucket.take(start + Duration::from_millis(1100)));
    }

    #[test]
    fn basic_credentials_are_decoded() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic YWxpY2U6czNjcjN0OmV4dHJh"),
        );
        assert_eq!(
            basic_credentials(&headers),
            Some(("alice".into(), "s3cr3t:extra".into()))
        );
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert_eq!(basic_credentials(&headers), None);
    }
}
