//! The HTTP endpoints: `/metrics` (Prometheus text, or OpenMetrics when asked; streamed,
//! see [`crate::export::exposition`]), `/healthz` (the process lives) and `/readyz` (every watch
//! synced, not draining).

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

use crate::correlate::incidents::{SharedIncidentLog, lock};
use crate::export::exposition::{self, Format};
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

pub fn app(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/v1/incidents", get(incidents))
        .with_state(state)
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
