//! The lab's grade API: a stand-in for the experiment's `stateful` Node.js
//! service (`rslim087/kubernetes-course-grade-submission-api:stateful`).
//!
//! - `POST /grade` with a JSON object `{"name": "...", "subject": "...", "score": "90"}`
//!   (`score` may also be a number) stores the grade and answers `201 Created`
//!   with the stored object (plus the `id` it was given). A body that is not
//!   valid JSON, or lacks one of the three fields, gets `400` with
//!   `{"error": "..."}` saying what is wrong.
//! - `GET /grade` answers a JSON array of the stored grades, **capped to the
//!   most recent [`LIST_LIMIT`] (100)** so that reading stays cheap however
//!   many grades were stored; the header `X-Total-Count` gives the full count.
//! - `GET /healthz` answers `200 ok`.
//!
//! Like the original, memory grows with every stored grade, and on purpose
//! faster than the grade itself would need: each grade keeps
//! [`GradeApiConfig::bytes_per_grade`] bytes of ballast (default
//! [`DEFAULT_BYTES_PER_GRADE`]) that are written to, so they are resident and
//! charged to the memory cgroup. Under a 48Mi limit the kernel OOM-kills the
//! process after about 20,000 grades, which is the point of the experiment.
//! Measured on 2 cores through the lab's NodePort proxy with 80 users of
//! `selfheal-lab load`: ~1.5 s at full speed, ~25 s with `--think 100ms`,
//! ~65 s with `--think 250ms` (a Postman-like pace).
//!
//! Run it on a single-threaded (`current_thread`) Tokio runtime to keep the
//! idle RSS small (a few MiB); `selfheal-lab grade-api` does.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Default ballast kept per stored grade (2 KiB): with the grade itself about
/// 2.2 KiB resident per grade, so a 48Mi container dies after ~20,000 grades.
pub const DEFAULT_BYTES_PER_GRADE: usize = 2 * 1024;

/// `GET /grade` returns at most this many grades: the most recent ones.
pub const LIST_LIMIT: usize = 100;

/// Response header carrying the number of stored grades.
pub const TOTAL_COUNT_HEADER: &str = "x-total-count";

/// How to run a [`GradeApi`].
#[derive(Debug, Clone)]
pub struct GradeApiConfig {
    /// Address to bind; port 0 picks a free port. Default `127.0.0.1:3000`.
    pub listen: SocketAddr,
    /// Resident ballast kept per stored grade, in bytes. Default [`DEFAULT_BYTES_PER_GRADE`].
    pub bytes_per_grade: usize,
}

impl Default for GradeApiConfig {
    fn default() -> Self {
        GradeApiConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 3000)),
            bytes_per_grade: DEFAULT_BYTES_PER_GRADE,
        }
    }
}

/// A stored grade as answered by the API.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Grade {
    /// Sequence number, from 1.
    pub id: u64,
    /// Student name.
    pub name: String,
    /// Subject.
    pub subject: String,
    /// Score, as submitted (numbers are kept as their decimal text).
    pub score: String,
}

struct Stored {
    grade: Grade,
    /// Never read: it is there to occupy (resident) memory.
    _ballast: Box<[u8]>,
}

/// Shared state of the service: the stored grades.
#[derive(Clone)]
pub struct GradeStore {
    inner: Arc<Mutex<Vec<Stored>>>,
    bytes_per_grade: usize,
}

impl GradeStore {
    /// An empty store keeping `bytes_per_grade` bytes of ballast per grade.
    pub fn new(bytes_per_grade: usize) -> Self {
        GradeStore {
            inner: Arc::new(Mutex::new(Vec::new())),
            bytes_per_grade,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Stored>> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Number of stored grades.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no grade is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stores a grade and returns it with its id.
    pub fn insert(&self, name: String, subject: String, score: String) -> Grade {
        // Allocate and write the ballast outside the lock: writing every page
        // makes it resident (a zeroed allocation could stay virtual).
        let mut ballast = vec![0u8; self.bytes_per_grade].into_boxed_slice();
        for (i, b) in ballast.iter_mut().enumerate() {
            *b = (i as u8) | 1;
        }
        let mut grades = self.lock();
        let grade = Grade {
            id: grades.len() as u64 + 1,
            name,
            subject,
            score,
        };
        grades.push(Stored {
            grade: grade.clone(),
            _ballast: ballast,
        });
        grade
    }

    /// The most recent `limit` grades (oldest first) and the total count.
    pub fn recent(&self, limit: usize) -> (Vec<Grade>, usize) {
        let grades = self.lock();
        let from = grades.len().saturating_sub(limit);
        (
            grades[from..].iter().map(|s| s.grade.clone()).collect(),
            grades.len(),
        )
    }
}

/// The HTTP routes over `store`.
pub fn router(store: GradeStore) -> Router {
    Router::new()
        .route("/grade", get(list_grades).post(post_grade))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(store)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = serde_json::json!({ "error": message.into() });
    (status, axum::Json(body)).into_response()
}

/// Parses a submitted grade: a JSON object with string `name` and `subject`
/// and a string or number `score`.
pub fn parse_grade(body: &[u8]) -> Result<(String, String, String), String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("request body is not valid JSON: {e}"))?;
    let Some(obj) = value.as_object() else {
        return Err("request body must be a JSON object with name, subject and score".into());
    };
    let text = |field: &str, allow_number: bool| -> Result<String, String> {
        match obj.get(field) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(Value::Number(n)) if allow_number => Ok(n.to_string()),
            Some(_) => Err(format!(
                "field {field:?} must be a string{}",
                if allow_number { " or a number" } else { "" }
            )),
            None => Err(format!("missing field {field:?}")),
        }
    };
    Ok((
        text("name", false)?,
        text("subject", false)?,
        text("score", true)?,
    ))
}

async fn post_grade(State(store): State<GradeStore>, body: Bytes) -> Response {
    match parse_grade(&body) {
        Ok((name, subject, score)) => {
            let grade = store.insert(name, subject, score);
            (StatusCode::CREATED, axum::Json(grade)).into_response()
        }
        Err(message) => error(StatusCode::BAD_REQUEST, message),
    }
}

async fn list_grades(State(store): State<GradeStore>) -> Response {
    let (grades, total) = store.recent(LIST_LIMIT);
    let body = match serde_json::to_vec(&grades) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (
                HeaderName::from_static(TOTAL_COUNT_HEADER),
                HeaderValue::from(total),
            ),
        ],
        body,
    )
        .into_response()
}

/// Serves the grade API on `listener` until `shutdown` completes, then stops
/// accepting and closes idle connections (open requests get up to 1 s).
pub async fn serve(
    listener: TcpListener,
    bytes_per_grade: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(GradeStore::new(bytes_per_grade));
    let (stopped_tx, stopped_rx) = oneshot::channel::<()>();
    let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        let _ = stopped_tx.send(());
    });
    let deadline = async move {
        if stopped_rx.await.is_ok() {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        r = serve => r,
        () = deadline => Ok(()),
    }
}

/// A grade API running in the background of the current runtime (for tests
/// and demos; the CLI runs it as its own process).
pub struct GradeApi {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl GradeApi {
    /// Binds `config.listen` and starts serving.
    pub async fn start(config: GradeApiConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, config.bytes_per_grade, async move {
            let _ = stopped.await;
        }));
        Ok(GradeApi {
            addr,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR/grade`.
    pub fn grade_url(&self) -> String {
        format!("http://{}/grade", self.addr)
    }

    /// Stops serving and waits (about 1 s at most) until the socket is closed.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for GradeApi {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        assert_eq!(
            parse_grade(br#"{"name":"Harry","subject":"Potions","score":"90"}"#),
            Ok(("Harry".into(), "Potions".into(), "90".into()))
        );
        assert_eq!(
            parse_grade(br#"{"name":"Harry","subject":"Potions","score":90}"#),
            Ok(("Harry".into(), "Potions".into(), "90".into()))
        );
        let e = parse_grade(b"{not json").unwrap_err();
        assert!(e.contains("not valid JSON"), "{e}");
        let e = parse_grade(br#"{"name":"Harry","score":"1"}"#).unwrap_err();
        assert!(e.contains("subject"), "{e}");
        assert!(parse_grade(b"[1]").is_err());
        assert!(parse_grade(br#"{"name":1,"subject":"a","score":"1"}"#).is_err());
    }

    #[test]
    fn recent_is_capped_and_ballast_is_kept() {
        let store = GradeStore::new(16);
        for i in 0..150 {
            store.insert(format!("n{i}"), "s".into(), i.to_string());
        }
        let (recent, total) = store.recent(LIST_LIMIT);
        assert_eq!(total, 150);
        assert_eq!(recent.len(), LIST_LIMIT);
        assert_eq!(recent[0].id, 51);
        assert_eq!(recent[99].name, "n149");
        assert_eq!(store.lock()[0]._ballast.len(), 16);
    }
}
