//! Watch streams: newline-delimited `WatchEvent` JSON over a chunked response.
//!
//! Each watch runs in its own task reading the store's history ring from its
//! own cursor (the resourceVersion it has delivered up to), so writers never
//! wait for watchers. A watch that falls behind the retained history — because
//! its client reads slowly or the history was compacted — receives one `ERROR`
//! event carrying a `410 Expired` Status and ends, exactly what the real
//! server's watch cache does and what kube-rs's watcher answers with a relist.
//!
//! Label and field selectors are applied to both sides of every change: an
//! object that stops matching is sent as `DELETED`, one that starts matching
//! as `ADDED`. Without a resourceVersion (or with `"0"`) the watch starts with
//! synthetic `ADDED` events for every current object; `sendInitialEvents=true`
//! additionally ends them with a bookmark annotated
//! `k8s.io/initial-events-end: "true"` (streaming lists). With
//! `allowWatchBookmarks=true` a `BOOKMARK` carrying the watch's current
//! resourceVersion is sent every [`WatchHub::bookmark_interval`]. Clients
//! asking for Tables (`kubectl get -w`) get each object as a one-row Table.
//! [`WatchHub::drop_all`] aborts every open stream mid-response (the connection
//! is cut without the terminating chunk), like an API server restart.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use super::error::ApiError;
use super::resources::ResourceType;
use super::selectors::Selector;
use super::store::{ChangeKind, Store};
use super::table;

/// Changes read from the history per batch (also the chunk size of initial events).
const BATCH: usize = 1024;

/// Shared state of all watch streams of one server.
#[derive(Debug)]
pub struct WatchHub {
    drop_tx: watch::Sender<u64>,
    active: AtomicUsize,
    bookmark_interval: Duration,
}

impl WatchHub {
    /// A hub sending bookmarks every `bookmark_interval`.
    pub fn new(bookmark_interval: Duration) -> Self {
        let (drop_tx, _) = watch::channel(0);
        WatchHub {
            drop_tx,
            active: AtomicUsize::new(0),
            bookmark_interval,
        }
    }

    /// Aborts every open watch stream now.
    pub fn drop_all(&self) {
        self.drop_tx.send_modify(|epoch| *epoch += 1);
    }

    /// Number of watch streams currently open.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// Interval between bookmarks on watches that allow them.
    pub fn bookmark_interval(&self) -> Duration {
        self.bookmark_interval
    }
}

/// A parsed watch request.
#[derive(Debug, Clone)]
pub struct WatchRequest {
    /// Resource type watched.
    pub rt: &'static ResourceType,
    /// Namespace restriction (None: all namespaces / cluster-scoped).
    pub namespace: Option<String>,
    /// Label and field selector.
    pub selector: Selector,
    /// Resume point; None or Some(0) means "send current state first".
    pub resource_version: Option<u64>,
    /// `sendInitialEvents=true`.
    pub send_initial_events: bool,
    /// `allowWatchBookmarks=true`.
    pub bookmarks: bool,
    /// `timeoutSeconds`.
    pub timeout: Option<Duration>,
    /// Send objects as one-row `meta.k8s.io/v1` Tables (kubectl `get -w`).
    pub table: bool,
}

struct ActiveGuard(Arc<WatchHub>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

fn push_event(buf: &mut Vec<u8>, kind: &str, object: &Value) {
    buf.extend_from_slice(b"{\"type\":\"");
    buf.extend_from_slice(kind.as_bytes());
    buf.extend_from_slice(b"\",\"object\":");
    if serde_json::to_writer(&mut *buf, object).is_err() {
        buf.extend_from_slice(b"{}");
    }
    buf.extend_from_slice(b"}\n");
}

fn bookmark(rt: &ResourceType, rv: u64, initial_end: bool) -> Value {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({"kind": rt.kind, "apiVersion": rt.api_version(), "metadata": meta})
}

/// Starts a watch task and returns the streaming response body.
pub fn start(store: Arc<Store>, hub: Arc<WatchHub>, req: WatchRequest) -> Body {
    let (tx, rx) = mpsc::channel::<Result<Bytes, io::Error>>(16);
    hub.active.fetch_add(1, Ordering::SeqCst);
    let guard = ActiveGuard(hub.clone());
    let dropped = hub.drop_tx.subscribe();
    tokio::spawn(async move {
        let _guard = guard;
        let mut w = Watcher {
            store,
            req,
            tx,
            dropped,
            interval: hub.bookmark_interval,
        };
        w.run().await;
    });
    Body::from_stream(ReceiverStream::new(rx))
}

struct Watcher {
    store: Arc<Store>,
    req: WatchRequest,
    tx: mpsc::Sender<Result<Bytes, io::Error>>,
    dropped: watch::Receiver<u64>,
    interval: Duration,
}

enum Sent {
    Ok,
    Stop,
}

impl Watcher {
    /// Sends one chunk; `Stop` if the client went away or watches were dropped.
    async fn send(&mut self, buf: Vec<u8>) -> Sent {
        tokio::select! {
            r = self.tx.send(Ok(Bytes::from(buf))) => if r.is_ok() { Sent::Ok } else { Sent::Stop },
            _ = self.dropped.changed() => {
                self.abort().await;
                Sent::Stop
            }
        }
    }

    async fn abort(&mut self) {
        let _ = self.tx.try_send(Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "watch dropped by the lab",
        )));
    }

    async fn send_error(&mut self, err: &ApiError) {
        let mut buf = Vec::new();
        push_event(&mut buf, "ERROR", &err.to_status());
        let _ = self.send(buf).await;
    }

    /// Appends one ADDED/MODIFIED/DELETED event, as a Table row if asked for.
    fn push(&self, buf: &mut Vec<u8>, kind: &str, object: &Arc<Value>) {
        if self.req.table {
            let rv = object
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .and_then(|r| r.parse().ok())
                .unwrap_or(0);
            let t = table::list_table(self.req.rt, std::slice::from_ref(object), rv, None);
            push_event(buf, kind, &t);
        } else {
            push_event(buf, kind, object);
        }
    }

    fn matches(&self, key_ns: &str, obj: &Value) -> bool {
        self.req.namespace.as_deref().is_none_or(|n| n == key_ns) && self.req.selector.matches(obj)
    }

    async fn run(&mut self) {
        self.dropped.borrow_and_update();
        let mut changed = self.store.subscribe();
        changed.borrow_and_update();
        let deadline = self.req.timeout.map(|t| Instant::now() + t);
        let Some(idx) = self.req.rt.index() else {
            return;
        };
        let rt = self.req.rt;

        let mut cursor = match self.req.resource_version.filter(|rv| *rv != 0) {
            Some(rv) if !self.req.send_initial_events => {
                if let Err(e) = self.store.check_resumable(rv) {
                    self.send_error(&e).await;
                    return;
                }
                rv
            }
            _ => {
                let (rv, objs) =
                    self.store
                        .snapshot(idx, self.req.namespace.as_deref(), &self.req.selector);
                for chunk in objs.chunks(BATCH) {
                    let mut buf = Vec::with_capacity(chunk.len() * 1024);
                    for o in chunk {
                        self.push(&mut buf, "ADDED", o);
                    }
                    if let Sent::Stop = self.send(buf).await {
                        return;
                    }
                }
                if self.req.send_initial_events {
                    let mut buf = Vec::new();
                    push_event(&mut buf, "BOOKMARK", &bookmark(rt, rv, true));
                    if let Sent::Stop = self.send(buf).await {
                        return;
                    }
                }
                rv
            }
        };

        let mut ticker = tokio::time::interval_at(Instant::now() + self.interval, self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            changed.borrow_and_update();
            let (changes, latest) = match self.store.changes_since(cursor, BATCH) {
                Ok(c) => c,
                Err(e) => {
                    self.send_error(&e).await;
                    return;
                }
            };
            let full = changes.len() == BATCH;
            if !changes.is_empty() {
                let mut buf = Vec::new();
                for c in &changes {
                    cursor = c.rv;
                    if c.resource != idx {
                        continue;
                    }
                    let now = self.matches(&c.key.0, &c.object);
                    let before = c.prev.as_ref().is_some_and(|p| self.matches(&c.key.0, p));
                    let kind = match (c.kind, before, now) {
                        (ChangeKind::Added, _, true) => "ADDED",
                        (ChangeKind::Deleted, true, _) => "DELETED",
                        (ChangeKind::Modified, true, true) => "MODIFIED",
                        (ChangeKind::Modified, false, true) => "ADDED",
                        (ChangeKind::Modified, true, false) => "DELETED",
                        _ => continue,
                    };
                    self.push(&mut buf, kind, &c.object);
                }
                if !buf.is_empty()
                    && let Sent::Stop = self.send(buf).await
                {
                    return;
                }
            }
            if full {
                continue;
            }
            cursor = cursor.max(latest);
            tokio::select! {
                r = changed.changed() => if r.is_err() { return },
                _ = self.dropped.changed() => {
                    self.abort().await;
                    return;
                }
                _ = ticker.tick(), if self.req.bookmarks => {
                    // a bookmark must not claim revisions we could no longer resume from
                    if let Err(e) = self.store.check_resumable(cursor) {
                        self.send_error(&e).await;
                        return;
                    }
                    let mut buf = Vec::new();
                    push_event(&mut buf, "BOOKMARK", &bookmark(rt, cursor, false));
                    if let Sent::Stop = self.send(buf).await {
                        return;
                    }
                }
                _ = async { if let Some(d) = deadline { tokio::time::sleep_until(d).await } else { std::future::pending::<()>().await } } => return,
                _ = self.tx.closed() => return,
            }
        }
    }
}
