//! The HTTP endpoints: `/metrics` (Prometheus text, or OpenMetrics when asked; streamed,
//! see [`crate::export::exposition`]), `/healthz` (the process lives) and `/readyz` (every watch
//! synced, not draining).
//!
//! With a web configuration ([`crate::export::web`]), `/metrics` and `/api/v1/incidents`
//! are behind its guard (client certificate, basic auth, rate limit); `/healthz` and
//! `/readyz` never are, so that the kubelet's probes keep working. Its headers are set
//! on every response.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

use crate::correlate::incidents::{SharedIncidentLog, lock};
use crate::export::exposition::{self, Format};
use crate::export::web::auth::{self, Guard};
use crate::k8s::health::Health;

const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone)]
pub struct AdminState {
    pub registry: Arc<Registry>,
    /// `selfheal_scrapes_aborted_total`, registered in `registry`.
    pub aborted_scrapes: Counter,
    pub health: Health,
    pub incidents: SharedIncidentLog,
}

/// The endpoints, open to everyone (no web configuration).
#[cfg(test)]
pub fn app(state: AdminState) -> Router {
    app_with(state, None, Vec::new())
}

/// The endpoints, `/metrics` and `/api/v1/incidents` behind `guard`, `headers` on every
/// response.
pub fn app_with(
    state: AdminState,
    guard: Option<Arc<Guard>>,
    headers: Vec<(HeaderName, HeaderValue)>,
) -> Router {
    let mut protected = Router::new()
        .route("/metrics", get(metrics))
        .route("/api/v1/incidents", get(incidents));
    if let Some(guard) = guard {
        protected = protected.route_layer(middleware::from_fn_with_state(guard, auth::protect));
    }
    let mut app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .merge(protected)
        .with_state(state);
    if !headers.is_empty() {
        app = app.layer(middleware::from_fn_with_state(
            Arc::new(headers),
            auth::add_headers,
        ));
    }
    app
}

async fn metrics(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    let wants_openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|accept| accept.contains("application/openmetrics-text"));
    let (format, content_type) = if wants_openmetrics {
        (Format::OpenMetrics, OPENMETRICS_CONTENT_TYPE)
    } else {
        (Format::PrometheusText, prometheus_text::CONTENT_TYPE)
    };
    let chunks = exposition::stream(state.registry.clone(), format, state.aborted_scrapes);
    (
        [(header::CONTENT_TYPE, content_type)],
        Body::from_stream(chunks),
    )
        .into_response()
}

#[derive(serde::Deserialize)]
struct IncidentsQuery {
    limit: Option<usize>,
}

/// `GET /api/v1/incidents[?limit=N]`: restarts and outages (and, from the node agent,
/// kernel OOM kills), newest first.
async fn incidents(
    State(state): State<AdminState>,
    Query(query): Query<IncidentsQuery>,
) -> Response {
    let limit = query.limit.unwrap_or(100);
    let incidents = lock(&state.incidents).newest(limit);
    match serde_json::to_string(&serde_json::json!({ "incidents": incidents })) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(error) => {
            tracing::error!(%error, "cannot encode incidents");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot encode incidents\n",
            )
                .into_response()
        }
    }
}

async fn readyz(State(state): State<AdminState>) -> Response {
    if state.health.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else if state.health.is_shutting_down() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "watches not synced yet\n").into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::to_bytes;
    use axum::http::Request;
    use prometheus_client::metrics::counter::Counter;
    use tower::ServiceExt;

    fn state() -> AdminState {
        let mut registry = Registry::with_prefix("selfheal");
        let counter: Counter = Counter::default();
        counter.inc();
        registry.register("demo", "A demo counter", counter);
        AdminState {
            registry: Arc::new(registry),
            aborted_scrapes: Counter::default(),
            health: Health::default(),
            incidents: crate::correlate::incidents::IncidentLog::new(
                10,
                std::time::Duration::from_secs(2),
            )
            .shared(),
        }
    }

    async fn get(app: Router, uri: &str, accept: Option<&str>) -> (StatusCode, String, String) {
        let mut request = Request::get(uri);
        if let Some(accept) = accept {
            request = request.header(header::ACCEPT, accept);
        }
        let response = app
            .oneshot(request.body(Body::empty()).expect("request"))
            .await
            .expect("response");
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let body = to_bytes(response.into_body(), 1 << 20).await.expect("body");
        (
            status,
            content_type,
            String::from_utf8_lossy(&body).into_owned(),
        )
    }

    #[tokio::test]
    async fn metrics_negotiates_the_format() {
        let (status, content_type, body) = get(app(state()), "/metrics", None).await;
        assert_eq!(status, StatusCode::OK);
        assert!(content_type.starts_with("text/plain; version=0.0.4"));
        assert!(body.contains("selfheal_demo_total 1"));
        assert!(!body.contains("# EOF"));

        let accept = "application/openmetrics-text;version=1.0.0,text/plain;q=0.5";
        let (_, content_type, body) = get(app(state()), "/metrics", Some(accept)).await;
        assert!(content_type.starts_with("application/openmetrics-text"));
        assert!(body.ends_with("# EOF\n"));
    }

    #[tokio::test]
    async fn incidents_are_served_as_json() {
        let (status, content_type, body) =
            get(app(state()), "/api/v1/incidents?limit=5", None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type, "application/json");
        assert_eq!(body, r#"{"incidents":[]}"#);
        let (status, _, _) = get(app(state()), "/api/v1/incidents?limit=many", None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }

    fn secured(web_yml: &str) -> Router {
        let config = crate::export::web::WebConfig::parse(std::path::Path::new("web.yml"), web_yml)
            .expect("valid web config");
        app_with(state(), Guard::new(&config), config.headers)
    }

    async fn get_as(app: Router, uri: &str, authorization: Option<&str>) -> Response {
        let mut request = Request::get(uri);
        if let Some(value) = authorization {
            request = request.header(header::AUTHORIZATION, value);
        }
        app.oneshot(request.body(Body::empty()).expect("request"))
            .await
            .expect("response")
    }

    #[tokio::test]
    async fn basic_auth_guards_the_data_not_the_probes() {
        // htpasswd writes $2y$: the same algorithm as $2b$.
        let hash = bcrypt::hash("s3cr3t", 4)
            .expect("hash")
            .replacen("$2b$", "$2y$", 1);
        let app = secured(&format!(
            "basic_auth_users:\n  alice: {hash}\nhttp_server_config:\n  headers:\n    X-Frame-Options: deny\n"
        ));
        // alice:s3cr3t, alice:wrong, bob:s3cr3t
        let good = "Basic YWxpY2U6czNjcjN0";
        let wrong = "Basic YWxpY2U6d3Jvbmc=";
        let unknown = "Basic Ym9iOnMzY3IzdA==";
        for _ in 0..2 {
            // The second round answers from the cache: the same outcomes.
            let response = get_as(app.clone(), "/metrics", Some(good)).await;
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.headers()["x-frame-options"], "deny");
            for authorization in [Some(wrong), Some(unknown), Some("Bearer x"), None] {
                for uri in ["/metrics", "/api/v1/incidents"] {
                    let response = get_as(app.clone(), uri, authorization).await;
                    assert_eq!(
                        response.status(),
                        StatusCode::UNAUTHORIZED,
                        "{uri} {authorization:?}"
                    );
                    assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Basic");
                    assert_eq!(response.headers()["x-frame-options"], "deny");
                }
            }
        }
        for uri in ["/healthz", "/readyz"] {
            let response = get_as(app.clone(), uri, None).await;
            assert_ne!(response.status(), StatusCode::UNAUTHORIZED, "{uri}");
            assert_eq!(response.headers()["x-frame-options"], "deny");
        }
        // An unknown path is a 404, not a 401.
        let response = get_as(app, "/nothing", None).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn the_rate_limit_applies_to_the_data_only() {
        let app = secured("rate_limit:\n  interval: 1h\n  burst: 2\n");
        for expected in [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS,
        ] {
            let response = get_as(app.clone(), "/api/v1/incidents", None).await;
            assert_eq!(response.status(), expected);
        }
        let response = get_as(app, "/healthz", None).await;
        assert_eq!(response.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn a_required_client_certificate_guards_the_data_not_the_probes() {
        let app = secured(
            "tls_server_config:\n  cert_file: c\n  key_file: k\n  client_auth_type: RequireAnyClientCert\n",
        );
        // No connection info with a certificate: refused.
        let response = get_as(app.clone(), "/metrics", None).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        let response = get_as(app, "/healthz", None).await;
        assert_eq!(response.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn readiness_follows_watches_and_shutdown() {
        let state = state();
        let (status, _, _) = get(app(state.clone()), "/healthz", None).await;
        assert_eq!(status, StatusCode::OK);
        let mut watch = state.health.register_watch();
        let (status, _, _) = get(app(state.clone()), "/readyz", None).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        watch.mark_synced();
        let (status, _, _) = get(app(state.clone()), "/readyz", None).await;
        assert_eq!(status, StatusCode::OK);
        state.health.begin_shutdown();
        let (status, _, body) = get(app(state.clone()), "/readyz", None).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "shutting down\n");
        let (status, _, _) = get(app(state), "/healthz", None).await;
        assert_eq!(status, StatusCode::OK);
    }
}
