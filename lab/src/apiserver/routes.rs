//! HTTP routing: maps Kubernetes REST paths and verbs onto the store, watch
//! streams and discovery, and serves the `/lab/` fault-injection endpoints.
//!
//! Paths: `/api/v1/{plural}`, `/api/v1/namespaces/{ns}/{plural}[/{name}[/status]]`,
//! `/api/v1/{cluster-plural}[/{name}[/status]]` and the same under
//! `/apis/{group}/{version}`. Verbs: GET (get, list, `?watch=true`), POST
//! (create), PUT (update), PATCH (merge / JSON / strategic, and server-side apply
//! with `fieldManager` and `force`), DELETE (one or a collection). Requests and
//! responses are JSON (an apply body may also be YAML); every error is a `Status`.
//! Writes with `fieldManager` record field ownership (see `apply.rs`).
//! Injected failures ([`Faults::fail_next`](super::Faults::fail_next)) are
//! answered here, before routing, for every path outside `/lab/`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::apply;
use super::discovery;
use super::error::{ApiError, ApiResult};
use super::faults::Faults;
use super::patch::Patch;
use super::resources::{self, ResourceType};
use super::selectors::Selector;
use super::store::{ApplyOptions, DeleteOptions, ListOptions, Store, WriteOptions};
use super::table;
use super::watch::{self, WatchHub, WatchRequest};

/// Everything request handlers need.
#[derive(Clone)]
pub struct AppState {
    /// Object store.
    pub store: Arc<Store>,
    /// Watch streams.
    pub hub: Arc<WatchHub>,
    /// Fault injection.
    pub faults: Arc<Faults>,
}

/// The complete router of a lab API server.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/lab/faults/drop-watches", post(lab_drop_watches))
        .route("/lab/faults/fail", post(lab_fail))
        .route("/lab/faults/compact", post(lab_compact))
        .route("/lab/faults/history", post(lab_history))
        .route("/lab/faults/clear", post(lab_clear))
        .route("/lab/state", get(lab_state))
        .fallback(api)
        .with_state(state)
}

fn json_response(code: StatusCode, body: Vec<u8>) -> Response {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn ok_json(code: StatusCode, v: &Value) -> Response {
    json_response(code, serde_json::to_vec(v).unwrap_or_default())
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = ok_json(code, &self.to_status());
        if self.code == 429 {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

type Query = HashMap<String, String>;

fn parse_query(q: Option<&str>) -> Query {
    form_urlencoded::parse(q.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

fn flag(q: &Query, key: &str) -> bool {
    q.get(key).is_some_and(|v| v == "true" || v == "1")
}

fn lab_ok(extra: Value) -> Response {
    let mut body = json!({"ok": true});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    ok_json(StatusCode::OK, &body)
}

async fn lab_drop_watches(State(st): State<AppState>) -> Response {
    let open = st.hub.active();
    st.faults.drop_watches();
    lab_ok(json!({"dropped": open}))
}

async fn lab_fail(State(st): State<AppState>, RawQuery(q): RawQuery) -> Response {
    let q = parse_query(q.as_deref());
    let count = match q.get("count").map(|c| c.parse::<u64>()) {
        None => 1,
        Some(Ok(c)) => c,
        Some(Err(_)) => {
            return ApiError::bad_request("count must be a non-negative integer").into_response();
        }
    };
    let status = match q.get("status").map(|c| c.parse::<u16>()) {
        None => 500,
        Some(Ok(s @ (429 | 500 | 503))) => s,
        Some(_) => return ApiError::bad_request("status must be 500, 429 or 503").into_response(),
    };
    st.faults.fail_next(count, status);
    lab_ok(json!({"count": count, "status": status}))
}

async fn lab_compact(State(st): State<AppState>) -> Response {
    st.faults.compact();
    lab_ok(json!({"resourceVersion": st.store.resource_version().to_string()}))
}

async fn lab_history(State(st): State<AppState>, RawQuery(q): RawQuery) -> Response {
    let q = parse_query(q.as_deref());
    match q.get("size").map(|s| s.parse::<usize>()) {
        Some(Ok(n)) => {
            st.faults.set_history_limit(n);
            lab_ok(json!({"size": n}))
        }
        _ => ApiError::bad_request("size must be a non-negative integer").into_response(),
    }
}

async fn lab_clear(State(st): State<AppState>) -> Response {
    st.faults.clear();
    lab_ok(json!({}))
}

async fn lab_state(State(st): State<AppState>) -> Response {
    ok_json(
        StatusCode::OK,
        &json!({
            "resourceVersion": st.store.resource_version().to_string(),
            "historyLen": st.store.history_len(),
            "openWatches": st.hub.active(),
            "pendingFailures": st.faults.pending_failures(),
        }),
    )
}

/// What a resource path names.
#[derive(Debug)]
enum Target {
    /// A collection: all namespaces (or cluster-scoped) when `ns` is None.
    Collection {
        rt: &'static ResourceType,
        ns: Option<String>,
    },
    /// One object (`ns` empty for cluster-scoped), optionally its status.
    Item {
        rt: &'static ResourceType,
        ns: String,
        name: String,
        status: bool,
    },
}

fn resolve(group: &str, version: &str, rest: &[&str], path: &str) -> ApiResult<Target> {
    let find = |plural: &str| {
        resources::find(group, version, plural).ok_or_else(|| ApiError::no_route(path))
    };
    let namespaced_path = rest.first() == Some(&"namespaces")
        && rest.len() >= 3
        && rest[2] != "status"
        && resources::find(group, version, rest[2]).is_some_and(|r| r.namespaced);
    if namespaced_path {
        let ns = rest[1].to_string();
        let rt = find(rest[2])?;
        return match rest.len() {
            3 => Ok(Target::Collection { rt, ns: Some(ns) }),
            4 => Ok(Target::Item {
                rt,
                ns,
                name: rest[3].to_string(),
                status: false,
            }),
            5 if rest[4] == "status" => Ok(Target::Item {
                rt,
                ns,
                name: rest[3].to_string(),
                status: true,
            }),
            _ => Err(ApiError::no_route(path)),
        };
    }
    match rest {
        [plural] => Ok(Target::Collection {
            rt: find(plural)?,
            ns: None,
        }),
        [plural, name] => {
            let rt = find(plural)?;
            if rt.namespaced {
                return Err(ApiError::no_route(path));
            }
            Ok(Target::Item {
                rt,
                ns: String::new(),
                name: name.to_string(),
                status: false,
            })
        }
        [plural, name, "status"] => {
            let rt = find(plural)?;
            if rt.namespaced {
                return Err(ApiError::no_route(path));
            }
            Ok(Target::Item {
                rt,
                ns: String::new(),
                name: name.to_string(),
                status: true,
            })
        }
        _ => Err(ApiError::no_route(path)),
    }
}

/// Fallback handler: every non-`/lab/` request.
async fn api(
    State(st): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    if !path.starts_with("/lab/")
        && let Some(err) = st.faults.take_failure()
    {
        return err.into_response();
    }
    let query = parse_query(uri.query());
    match handle(&st, &method, &path, &query, &headers, &body) {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

fn server_address(headers: &HeaderMap) -> String {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_string()
}

fn handle(
    st: &AppState,
    method: &Method,
    path: &str,
    q: &Query,
    headers: &HeaderMap,
    body: &Bytes,
) -> ApiResult<Response> {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let get_only = |v: Option<Value>| -> ApiResult<Response> {
        if method != Method::GET {
            return Err(ApiError::method_not_allowed(format!(
                "the server does not allow this method on the requested resource ({path})"
            )));
        }
        v.map(|v| ok_json(StatusCode::OK, &v))
            .ok_or_else(|| ApiError::no_route(path))
    };
    match segs.as_slice() {
        ["version"] => get_only(Some(discovery::version())),
        ["healthz" | "livez" | "readyz", ..] => {
            let mut r = Response::new(Body::from("ok"));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            Ok(r)
        }
        ["api"] => get_only(Some(discovery::core_versions(&server_address(headers)))),
        ["api", "v1"] => get_only(discovery::resource_list("", "v1")),
        ["apis"] => get_only(Some(discovery::group_list())),
        ["apis", g] => get_only(discovery::group(g)),
        ["apis", g, v] => get_only(discovery::resource_list(g, v)),
        ["api", "v1", rest @ ..] => {
            let target = resolve("", "v1", rest, path)?;
            dispatch(st, method, target, q, headers, body)
        }
        ["apis", g, v, rest @ ..] => {
            let target = resolve(g, v, rest, path)?;
            dispatch(st, method, target, q, headers, body)
        }
        _ => Err(ApiError::no_route(path)),
    }
}

fn parse_body(body: &Bytes) -> ApiResult<Value> {
    if body.is_empty() {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
}

/// An apply body: JSON, or YAML (`application/apply-patch+yaml` says YAML; kube-rs and
/// kubectl send JSON, which is YAML too).
fn parse_apply_body(body: &Bytes) -> ApiResult<Value> {
    if body.is_empty() {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    if let Ok(value) = serde_json::from_slice(body) {
        return Ok(value);
    }
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::bad_request("the apply body is neither JSON nor UTF-8 YAML"))?;
    serde_saphyr::from_str::<Value>(text)
        .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
}

/// `fieldManager` (validated) and the User-Agent's manager name for tracked objects.
fn write_options(q: &Query, headers: &HeaderMap) -> ApiResult<WriteOptions> {
    if q.contains_key("force") {
        return Err(ApiError::invalid(
            "PatchOptions.meta.k8s.io",
            "",
            "force: Forbidden: may not be specified for non-apply patch",
        ));
    }
    let field_manager = q.get("fieldManager").filter(|m| !m.is_empty()).cloned();
    if let Some(manager) = &field_manager {
        apply::validate_field_manager(manager)?;
    }
    let fallback_manager = headers
        .get(header::USER_AGENT)
        .and_then(|h| h.to_str().ok())
        .and_then(apply::manager_from_user_agent);
    Ok(WriteOptions {
        field_manager,
        fallback_manager,
    })
}

fn content_type(headers: &HeaderMap) -> &str {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("application/json")
}

fn check_json_content(headers: &HeaderMap) -> ApiResult<()> {
    let ct = content_type(headers);
    let mime = ct.split(';').next().unwrap_or_default().trim();
    if mime.is_empty() || mime == "application/json" || mime == "*/*" {
        Ok(())
    } else {
        Err(ApiError::unsupported_media_type(ct))
    }
}

fn list_options(q: &Query) -> ApiResult<ListOptions> {
    let limit = match q.get("limit").filter(|l| !l.is_empty()) {
        Some(l) => Some(
            l.parse::<i64>()
                .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?
                .max(0) as usize,
        ),
        None => None,
    };
    Ok(ListOptions {
        label_selector: q.get("labelSelector").cloned(),
        field_selector: q.get("fieldSelector").cloned(),
        limit,
        continue_token: q.get("continue").cloned(),
        resource_version: q.get("resourceVersion").cloned(),
        resource_version_match: q.get("resourceVersionMatch").cloned(),
    })
}

fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|a| a.contains("as=Table"))
}

fn dispatch(
    st: &AppState,
    method: &Method,
    target: Target,
    q: &Query,
    headers: &HeaderMap,
    body: &Bytes,
) -> ApiResult<Response> {
    let store = &st.store;
    match (target, method.clone()) {
        (Target::Collection { rt, ns }, Method::GET) => {
            if flag(q, "watch") {
                return start_watch(st, rt, ns, q, wants_table(headers));
            }
            let opts = list_options(q)?;
            let selector = Selector::parse(
                opts.label_selector.as_deref(),
                opts.field_selector.as_deref(),
                rt,
            )?;
            let page = store.list_page(rt, ns.as_deref(), &selector, &opts)?;
            if wants_table(headers) {
                return Ok(ok_json(
                    StatusCode::OK,
                    &table::list_table(rt, &page.items, page.rv, page.continue_token.as_deref()),
                ));
            }
            Ok(json_response(
                StatusCode::OK,
                render_list(rt, &page.items, page.rv, page.continue_token.as_deref()),
            ))
        }
        (Target::Collection { rt, ns }, Method::POST) => {
            let ns = match (rt.namespaced, ns) {
                (true, Some(ns)) => ns,
                (false, None) => String::new(),
                _ => {
                    return Err(ApiError::method_not_allowed(format!(
                        "create of {} needs a namespaced path",
                        rt.plural
                    )));
                }
            };
            check_json_content(headers)?;
            let opts = write_options(q, headers)?;
            let obj = store.create_with(rt, &ns, parse_body(body)?, &opts)?;
            Ok(ok_json(StatusCode::CREATED, &obj))
        }
        (Target::Collection { rt, ns }, Method::DELETE) => {
            let opts = list_options(q)?;
            Ok(ok_json(
                StatusCode::OK,
                &store.delete_collection(rt, ns.as_deref(), &opts)?,
            ))
        }
        (
            Target::Item {
                rt,
                ns,
                name,
                status: _,
            },
            Method::GET,
        ) if flag(q, "watch") => {
            let mut q = q.clone();
            let fs = match q.get("fieldSelector").filter(|f| !f.is_empty()) {
                Some(f) => format!("{f},metadata.name={name}"),
                None => format!("metadata.name={name}"),
            };
            q.insert("fieldSelector".into(), fs);
            start_watch(
                st,
                rt,
                rt.namespaced.then_some(ns),
                &q,
                wants_table(headers),
            )
        }
        (Target::Item { rt, ns, name, .. }, Method::GET) => {
            let obj = store.get_arc(rt, &ns, &name)?;
            if wants_table(headers) {
                return Ok(ok_json(
                    StatusCode::OK,
                    &table::list_table(
                        rt,
                        std::slice::from_ref(&obj),
                        store.resource_version(),
                        None,
                    ),
                ));
            }
            Ok(json_response(
                StatusCode::OK,
                serde_json::to_vec(&*obj).unwrap_or_default(),
            ))
        }
        (
            Target::Item {
                rt,
                ns,
                name,
                status,
            },
            Method::PUT,
        ) => {
            check_json_content(headers)?;
            let obj = parse_body(body)?;
            let opts = write_options(q, headers)?;
            let out = if status {
                store.replace_status_with(rt, &ns, &name, obj, &opts)?
            } else {
                store.replace_with(rt, &ns, &name, obj, &opts)?
            };
            Ok(ok_json(StatusCode::OK, &out))
        }
        (
            Target::Item {
                rt,
                ns,
                name,
                status,
            },
            Method::PATCH,
        ) => {
            if apply::is_apply_content_type(content_type(headers)) {
                if status {
                    return Err(ApiError::method_not_allowed(
                        "the lab does not support server-side apply to a status subresource",
                    ));
                }
                if q.get("dryRun").is_some_and(|d| !d.is_empty()) {
                    return Err(ApiError::bad_request("the lab does not support dryRun"));
                }
                let opts = ApplyOptions {
                    field_manager: q.get("fieldManager").cloned().unwrap_or_default(),
                    force: flag(q, "force"),
                };
                let (out, created) = store.apply(rt, &ns, &name, parse_apply_body(body)?, &opts)?;
                let code = if created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                };
                return Ok(ok_json(code, &out));
            }
            let patch = Patch::from_content_type(content_type(headers), parse_body(body)?)?;
            let opts = write_options(q, headers)?;
            let out = if status {
                store.patch_status_with(rt, &ns, &name, &patch, &opts)?
            } else {
                store.patch_with(rt, &ns, &name, &patch, &opts)?
            };
            Ok(ok_json(StatusCode::OK, &out))
        }
        (
            Target::Item {
                rt,
                ns,
                name,
                status: false,
            },
            Method::DELETE,
        ) => {
            let opts = delete_options(body, q)?;
            let out = store.delete_with(rt, &ns, &name, &opts)?;
            Ok(ok_json(StatusCode::OK, &out))
        }
        (_, m) => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({m})"
        ))),
    }
}

fn delete_options(body: &Bytes, q: &Query) -> ApiResult<DeleteOptions> {
    let mut opts = DeleteOptions::default();
    if !body.is_empty() {
        let v: Value = serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!("the DeleteOptions body is not valid JSON: {e}"))
        })?;
        opts.precondition_uid = v
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(String::from);
        opts.precondition_resource_version = v
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(String::from);
        opts.grace_period_seconds = v.get("gracePeriodSeconds").and_then(Value::as_i64);
    }
    if let Some(g) = q.get("gracePeriodSeconds").and_then(|g| g.parse().ok()) {
        opts.grace_period_seconds = Some(g);
    }
    Ok(opts)
}

/// Serializes a list response straight from the store's `Arc`s.
fn render_list(rt: &ResourceType, items: &[Arc<Value>], rv: u64, cont: Option<&str>) -> Vec<u8> {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if let Some(c) = cont {
        meta["continue"] = json!(c);
    }
    let head = json!({"kind": rt.list_kind(), "apiVersion": rt.api_version(), "metadata": meta});
    let mut buf = serde_json::to_vec(&head).unwrap_or_else(|_| b"{}".to_vec());
    buf.pop(); // closing brace
    buf.extend_from_slice(b",\"items\":[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        if serde_json::to_writer(&mut buf, &**item).is_err() {
            buf.extend_from_slice(b"{}");
        }
    }
    buf.extend_from_slice(b"]}");
    buf
}

fn start_watch(
    st: &AppState,
    rt: &'static ResourceType,
    ns: Option<String>,
    q: &Query,
    as_table: bool,
) -> ApiResult<Response> {
    let selector = Selector::parse(
        q.get("labelSelector").map(String::as_str),
        q.get("fieldSelector").map(String::as_str),
        rt,
    )?;
    let resource_version = match q.get("resourceVersion").filter(|s| !s.is_empty()) {
        Some(s) => Some(
            s.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version {s:?}")))?,
        ),
        None => None,
    };
    let timeout = match q.get("timeoutSeconds").filter(|s| !s.is_empty()) {
        Some(s) => Some(Duration::from_secs(s.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!("invalid timeoutSeconds {s:?}"))
        })?)),
        None => None,
    };
    let send_initial_events = flag(q, "sendInitialEvents");
    let bookmarks = flag(q, "allowWatchBookmarks");
    if send_initial_events && !bookmarks {
        return Err(ApiError::invalid(
            "ListOptions",
            "",
            "allowWatchBookmarks: Required value: allowWatchBookmarks must be set to true when sendInitialEvents is specified",
        ));
    }
    let ns = if rt.namespaced { ns } else { None };
    let body = watch::start(
        st.store.clone(),
        st.hub.clone(),
        WatchRequest {
            rt,
            namespace: ns,
            selector,
            resource_version,
            send_initial_events,
            bookmarks,
            timeout,
            table: as_table,
        },
    );
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(path: &str) -> ApiResult<Target> {
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        match segs.as_slice() {
            ["api", "v1", rest @ ..] => resolve("", "v1", rest, path),
            ["apis", g, v, rest @ ..] => resolve(g, v, rest, path),
            _ => Err(ApiError::no_route(path)),
        }
    }

    #[test]
    fn path_resolution() {
        assert!(matches!(
            t("/api/v1/pods"),
            Ok(Target::Collection { ns: None, .. })
        ));
        assert!(matches!(
            t("/api/v1/namespaces"),
            Ok(Target::Collection { ns: None, .. })
        ));
        assert!(matches!(
            t("/api/v1/namespaces/default"),
            Ok(Target::Item { status: false, .. })
        ));
        assert!(matches!(
            t("/api/v1/namespaces/default/status"),
            Ok(Target::Item { status: true, .. })
        ));
        assert!(matches!(
            t("/api/v1/namespaces/default/pods"),
            Ok(Target::Collection { ns: Some(_), .. })
        ));
        assert!(matches!(
            t("/api/v1/namespaces/d/pods/p/status"),
            Ok(Target::Item { status: true, .. })
        ));
        assert!(matches!(
            t("/apis/coordination.k8s.io/v1/namespaces/d/leases/l"),
            Ok(Target::Item { .. })
        ));
        assert!(matches!(
            t("/apis/discovery.k8s.io/v1/endpointslices"),
            Ok(Target::Collection { .. })
        ));
        assert!(t("/api/v1/pods/p").is_err());
        assert!(t("/api/v1/namespaces/d/widgets").is_err());
        assert!(t("/api/v1/namespaces/d/pods/p/log").is_err());
        assert!(t("/apis/apps/v1/deployments").is_err());
    }
}
