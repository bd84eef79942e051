//! The object store: every object of every resource type, one global
//! resourceVersion counter, and the change history watches resume from.
//!
//! Like etcd behind the real API server there is a single, strictly increasing
//! revision: every write (create, update, delete) bumps it and stamps the new
//! value into `metadata.resourceVersion` (decimal string). Objects are kept as
//! `Arc<serde_json::Value>` in one `BTreeMap` per resource type, keyed by
//! `(namespace, name)`, so lists come out sorted by namespace then name.
//!
//! Every write is also appended to a bounded history ring (`VecDeque`) that
//! holds the object before and after the change. Watches read that ring (see
//! `watch.rs`), so writers never wait for watchers; a watcher that falls
//! behind the ring gets `410 Expired`. The same ring lets paginated lists stay
//! consistent with the resourceVersion of their first page: later pages are
//! served from the current objects with the newer changes rolled back.
//!
//! Deviations from the real server, on purpose:
//! - deletion is immediate for every type, pods included (no graceful
//!   `deletionTimestamp` phase yet; [`DeleteOptions`] already carries the grace
//!   period so it can be added); deleting a namespace deletes its objects at once;
//! - `compact()` also advances the revision by one (an empty revision), so
//!   every resourceVersion issued before it is too old, while a fresh list
//!   returns a usable one;
//! - a create with `metadata.resourceVersion` set is accepted (the field is ignored);
//! - field ownership (`metadata.managedFields`) is tracked only for server-side apply,
//!   writes that name a `fieldManager`, and objects already tracked: see `apply.rs`.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use base64::Engine as _;
use serde_json::{Map, Value, json};
use tokio::sync::watch;

use super::apply;
use super::defaults;
use super::error::{ApiError, ApiResult};
use super::patch::Patch;
use super::resources::{NAMESPACES, RESOURCES, ResourceType};
use super::selectors::Selector;
use super::update_rules;

/// Default number of retained history entries.
pub const DEFAULT_HISTORY: usize = 10_000;

/// `(namespace, name)`; namespace is empty for cluster-scoped objects.
pub(crate) type Key = (String, String);

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// Created.
    Added,
    /// Updated.
    Modified,
    /// Deleted.
    Deleted,
}

/// One entry of the history ring.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    pub rv: u64,
    pub resource: usize,
    pub kind: ChangeKind,
    pub key: Key,
    /// The object after the change (for deletions: the last state, stamped with the deletion revision).
    pub object: Arc<Value>,
    /// The object before the change (none for creations).
    pub prev: Option<Arc<Value>>,
}

/// Preconditions and options of a delete.
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    /// Fail with 409 unless the object has this UID.
    pub precondition_uid: Option<String>,
    /// Fail with 409 unless the object has this resourceVersion.
    pub precondition_resource_version: Option<String>,
    /// Requested grace period (currently deletion is always immediate).
    pub grace_period_seconds: Option<i64>,
}

/// Who writes: field ownership of create, update and patch (see `apply.rs`).
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    /// `fieldManager`: the writer takes ownership of the fields it adds or changes (an
    /// `Update` in `metadata.managedFields`).
    pub field_manager: Option<String>,
    /// The manager named when an object whose fields are tracked is written without a
    /// `fieldManager` (the real server derives it from the User-Agent); `unknown` if `None`.
    pub fallback_manager: Option<String>,
}

/// Options of a server-side apply (`PATCH` with `application/apply-patch+yaml`).
#[derive(Debug, Clone, Default)]
pub struct ApplyOptions {
    /// `fieldManager` (required).
    pub field_manager: String,
    /// `force=true`: take the conflicting fields over instead of failing with 409.
    pub force: bool,
}

/// Options of a list call, mirroring the query parameters.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// `labelSelector`.
    pub label_selector: Option<String>,
    /// `fieldSelector`.
    pub field_selector: Option<String>,
    /// `limit` (0 or absent: no limit).
    pub limit: Option<usize>,
    /// `continue` token from a previous page.
    pub continue_token: Option<String>,
    /// `resourceVersion` ("" / "0" / "N").
    pub resource_version: Option<String>,
    /// `resourceVersionMatch` (`NotOlderThan` / `Exact`).
    pub resource_version_match: Option<String>,
}

/// One page of a list: items share `Arc`s with the store.
#[derive(Debug, Clone)]
pub(crate) struct ListPage {
    pub rv: u64,
    pub items: Vec<Arc<Value>>,
    pub continue_token: Option<String>,
}

struct Inner {
    rv: u64,
    objects: Vec<BTreeMap<Key, Arc<Value>>>,
    history: VecDeque<Change>,
    history_limit: usize,
    /// Every change with `rv > floor` is in `history`.
    floor: u64,
}

/// The in-memory object store. Cheap to share (`Arc<Store>`); all methods take `&self`.
pub struct Store {
    inner: Mutex<Inner>,
    changed: watch::Sender<u64>,
}

fn resource_index(rt: &ResourceType) -> ApiResult<usize> {
    rt.index()
        .ok_or_else(|| ApiError::not_found("resources", rt.plural))
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn metadata_mut(obj: &mut Value) -> ApiResult<&mut Map<String, Value>> {
    let map = obj
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("the request body must be a JSON object"))?;
    let meta = map.entry("metadata").or_insert_with(|| json!({}));
    if !meta.is_object() {
        return Err(ApiError::bad_request("metadata must be a JSON object"));
    }
    meta.as_object_mut()
        .ok_or_else(|| ApiError::bad_request("metadata must be a JSON object"))
}

/// Checks `kind`/`apiVersion` of a body (if present) and sets them.
fn stamp_type(rt: &ResourceType, obj: &mut Value) -> ApiResult<()> {
    let api_version = rt.api_version();
    let map = obj
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("the request body must be a JSON object"))?;
    if let Some(v) = map
        .get("apiVersion")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        && v != api_version
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({v}) does not match the expected API version ({api_version})"
        )));
    }
    if let Some(k) = map
        .get("kind")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        && k != rt.kind
    {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({k}) does not match the expected kind ({})",
            rt.kind
        )));
    }
    map.insert("apiVersion".into(), json!(api_version));
    map.insert("kind".into(), json!(rt.kind));
    Ok(())
}

/// Everything but `metadata`, `status`, `kind`, `apiVersion` equal?
fn same_spec(a: &Value, b: &Value) -> bool {
    const SKIP: [&str; 4] = ["metadata", "status", "kind", "apiVersion"];
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return a == b;
    };
    let a_keys = a.iter().filter(|(k, _)| !SKIP.contains(&k.as_str()));
    let b_count = b.keys().filter(|k| !SKIP.contains(&k.as_str())).count();
    let mut a_count = 0;
    for (k, v) in a_keys {
        a_count += 1;
        if b.get(k) != Some(v) {
            return false;
        }
    }
    a_count == b_count
}

fn track_context(rt: &ResourceType, now: String) -> apply::Context {
    apply::Context {
        api_version: rt.api_version(),
        has_status: rt.has_status,
        now,
    }
}

fn set_rv(obj: &mut Value, rv: u64) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
    }
}

fn parse_rv(s: &str) -> ApiResult<u64> {
    s.parse::<u64>()
        .map_err(|_| ApiError::bad_request(format!("invalid resource version {s:?}")))
}

fn too_old(rv: u64, floor: u64) -> ApiError {
    ApiError::expired(format!("too old resource version: {rv} ({})", floor + 1))
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    v: String,
    rv: u64,
    ns: String,
    name: String,
}

fn encode_continue(rv: u64, key: &Key) -> String {
    let token = ContinueToken {
        v: "meta.k8s.io/v1".into(),
        rv,
        ns: key.0.clone(),
        name: key.1.clone(),
    };
    let json = serde_json::to_vec(&token).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
}

fn decode_continue(token: &str) -> ApiResult<(u64, Key)> {
    let bad = || {
        ApiError::bad_request("continue key is not valid: incorrect encoded start resourceVersion")
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let t: ContinueToken = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    if t.v != "meta.k8s.io/v1" {
        return Err(bad());
    }
    Ok((t.rv, (t.ns, t.name)))
}

impl Inner {
    fn record(&mut self, change: Change) {
        self.history.push_back(change);
        while self.history.len() > self.history_limit {
            if let Some(old) = self.history.pop_front() {
                self.floor = old.rv;
            }
        }
        if self.history_limit == 0 {
            self.floor = self.rv;
        }
    }

    fn namespace_exists(&self, ns: &str) -> bool {
        NAMESPACES
            .index()
            .is_some_and(|i| self.objects[i].contains_key(&(String::new(), ns.to_string())))
    }

    fn remove(&mut self, idx: usize, key: &Key) -> Option<Arc<Value>> {
        let old = self.objects[idx].remove(key)?;
        self.rv += 1;
        let mut last = (*old).clone();
        set_rv(&mut last, self.rv);
        let change = Change {
            rv: self.rv,
            resource: idx,
            kind: ChangeKind::Deleted,
            key: key.clone(),
            object: Arc::new(last),
            prev: Some(old),
        };
        let obj = change.object.clone();
        self.record(change);
        Some(obj)
    }
}

impl Default for Store {
    fn default() -> Self {
        Self::new(DEFAULT_HISTORY)
    }
}

impl Store {
    /// An empty store (no namespaces) retaining `history_limit` changes.
    pub fn empty(history_limit: usize) -> Self {
        let (changed, _) = watch::channel(0);
        Store {
            inner: Mutex::new(Inner {
                rv: 0,
                objects: RESOURCES.iter().map(|_| BTreeMap::new()).collect(),
                history: VecDeque::new(),
                history_limit,
                floor: 0,
            }),
            changed,
        }
    }

    /// A store with the namespaces every cluster starts with:
    /// `default`, `kube-system`, `kube-public`, `kube-node-lease`.
    pub fn new(history_limit: usize) -> Self {
        let store = Self::empty(history_limit);
        for ns in ["default", "kube-node-lease", "kube-public", "kube-system"] {
            // cannot fail on an empty store with valid names
            let _ = store.create(&NAMESPACES, "", json!({"metadata": {"name": ns}}));
        }
        store
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn notify(&self, rv: u64) {
        self.changed.send_replace(rv);
    }

    /// Current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    /// Number of changes currently retained.
    pub fn history_len(&self) -> usize {
        self.lock().history.len()
    }

    /// Changes the number of retained history entries (trims at once).
    pub fn set_history_limit(&self, limit: usize) {
        let mut inner = self.lock();
        inner.history_limit = limit;
        while inner.history.len() > limit {
            if let Some(old) = inner.history.pop_front() {
                inner.floor = old.rv;
            }
        }
        if limit == 0 {
            inner.floor = inner.rv;
        }
    }

    /// Drops all history and advances the revision by one, so every
    /// resourceVersion issued so far is too old to resume from (410 Expired),
    /// including for watches open right now (they get the error at their next
    /// event or bookmark).
    pub fn compact(&self) {
        let rv = {
            let mut inner = self.lock();
            inner.history.clear();
            inner.rv += 1;
            inner.floor = inner.rv;
            inner.rv
        };
        self.notify(rv);
    }

    /// Creates an object (POST semantics). `namespace` is ignored for
    /// cluster-scoped types. Returns the stored object.
    pub fn create(&self, rt: &ResourceType, namespace: &str, obj: Value) -> ApiResult<Value> {
        self.create_inner(rt, namespace, obj, false, None)
    }

    /// [`create`](Self::create) as `opts.field_manager`, who then owns every field of the
    /// new object (an `Update` in `metadata.managedFields`).
    pub fn create_with(
        &self,
        rt: &ResourceType,
        namespace: &str,
        obj: Value,
        opts: &WriteOptions,
    ) -> ApiResult<Value> {
        self.create_inner(rt, namespace, obj, false, opts.field_manager.as_deref())
    }

    /// Lab shortcut: like [`create`](Self::create) but keeps the body's
    /// `status` (one ADDED event), where the real server would reset it and need
    /// a second status write. Handy for seeding thousands of running pods.
    pub fn create_with_status(
        &self,
        rt: &ResourceType,
        namespace: &str,
        obj: Value,
    ) -> ApiResult<Value> {
        self.create_inner(rt, namespace, obj, true, None)
    }

    fn create_inner(
        &self,
        rt: &ResourceType,
        namespace: &str,
        mut obj: Value,
        keep_status: bool,
        field_manager: Option<&str>,
    ) -> ApiResult<Value> {
        let idx = resource_index(rt)?;
        stamp_type(rt, &mut obj)?;
        let meta = metadata_mut(&mut obj)?;
        let body_ns = meta
            .get("namespace")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let ns = if rt.namespaced {
            if namespace.is_empty() {
                return Err(ApiError::bad_request(
                    "the namespace of the object must be given for a namespaced resource",
                ));
            }
            if !body_ns.is_empty() && body_ns != namespace {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            meta.insert("namespace".into(), json!(namespace));
            namespace.to_string()
        } else {
            meta.remove("namespace");
            String::new()
        };
        let mut name = meta
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if name.is_empty() {
            let generate = meta
                .get("generateName")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if generate.is_empty() {
                return Err(ApiError::invalid(
                    rt.kind,
                    "",
                    "metadata.name: Required value: name or generateName is required",
                ));
            }
            name = format!("{generate}{}", defaults::random_suffix());
            meta.insert("name".into(), json!(name));
        }
        defaults::validate_name(rt, &name)?;
        for system in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            meta.remove(system);
        }
        meta.insert("uid".into(), json!(defaults::new_uid()));
        let now = defaults::now_rfc3339();
        meta.insert("creationTimestamp".into(), json!(now.clone()));
        meta.insert("generation".into(), json!(1));
        defaults::on_create(rt, &mut obj, keep_status)?;
        if let Some(manager) = field_manager {
            apply::track_update(None, &mut obj, manager, None, &track_context(rt, now));
        }

        let key = (ns, name);
        let rv = {
            let mut inner = self.lock();
            if rt.namespaced && !inner.namespace_exists(&key.0) {
                return Err(ApiError::not_found("namespaces", &key.0));
            }
            if inner.objects[idx].contains_key(&key) {
                return Err(ApiError::already_exists(rt.plural, &key.1));
            }
            inner.rv += 1;
            let rv = inner.rv;
            set_rv(&mut obj, rv);
            let stored = Arc::new(obj);
            inner.objects[idx].insert(key.clone(), stored.clone());
            inner.record(Change {
                rv,
                resource: idx,
                kind: ChangeKind::Added,
                key,
                object: stored.clone(),
                prev: None,
            });
            obj = (*stored).clone();
            rv
        };
        self.notify(rv);
        Ok(obj)
    }

    fn key(rt: &ResourceType, namespace: &str, name: &str) -> Key {
        let ns = if rt.namespaced { namespace } else { "" };
        (ns.to_string(), name.to_string())
    }

    /// Gets one object.
    pub fn get(&self, rt: &ResourceType, namespace: &str, name: &str) -> ApiResult<Value> {
        self.get_arc(rt, namespace, name).map(|o| (*o).clone())
    }

    pub(crate) fn get_arc(
        &self,
        rt: &ResourceType,
        namespace: &str,
        name: &str,
    ) -> ApiResult<Arc<Value>> {
        let idx = resource_index(rt)?;
        let key = Self::key(rt, namespace, name);
        self.lock().objects[idx]
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt.plural, name))
    }

    /// Replaces an object (PUT). A non-empty `metadata.resourceVersion` in the
    /// body must equal the stored one (else 409 Conflict); without it the update
    /// is unconditional. For types with a status subresource `.status` is ignored.
    pub fn replace(
        &self,
        rt: &ResourceType,
        namespace: &str,
        name: &str,
        obj: Value,
    ) -> ApiResult<Value> {
        self.replace_with(rt, namespace, name, obj, &WriteOptions::default())
    }

    /// [`replace`](Self::replace) as a field manager (see [`WriteOptions`]).
    pub fn replace_with(
        &self,
        rt: &ResourceType,
        namespace: &str,
        name: &str,
        obj: Value,
        opts: &WriteOptions,
    ) -> ApiResult<Value> {
        self.update(rt, namespace, name, false, Some(opts), move |_| Ok(obj))
    }

    /// Replaces only `.status` (PUT on `/status`); everything else in the body is ignored.
    pub fn replace_status(
        &self,
        rt: &ResourceType,
        namespace: &str,
        name: &str,
        obj: Value,
    ) -> ApiResult<Value> {
        self.replace_status_with(rt, namespace, name, obj, &WriteOptions::default())
    }

    /// [`replace_status`](Self::replace_status) as a field manager.
    pub fn replace_status_with(
        &self,
        rt: &ResourceType,
        namespace: &str,
        name: &str,
        obj: Value,
        opts: &WriteOptions,
    ) -> ApiResult<Value> {
        self.status_subresource(rt)?;
        self.update(rt, namespace, name, true, Some(opts), move |_| Ok(obj))
    }

    /// Patches an object (PATCH). `.status` changes are ignored for types with a status subresource.
    pub fn patch(
        &self,
        rt: &ResourceType,
        namespace: &str,
        name: &str,
        patch: &Patch,
    ) -> ApiResult<Value> {
        self.patch_with(rt, namespace, name, patch, &WriteOptions::default())
    }

    /// [`patch`](Self::patch) as a field manager (see [`WriteOptions`]).
    pub fn patch_with(
        &self,
        rt: &ResourceType,
        namespace: &str,
        name: &str,
        patch: &Patch,
        opts: &WriteOptions,
    ) -> ApiResult<Value> {
        self.update(rt, namespace, name, false, Some(opts), |old| {
            let mut new = old.clone();
            patch.apply(&mut new)?;
            Ok(new)
        })
    }

    /// Patches only `.status` (PATCH on `/status`).
    pub fn patch_status(
        &self,
        rt: &ResourceType,
        namespace: &str,
        name: &str,
        patch: &Patch,
    ) -> ApiResult<Value> {
        self.patch_status_with(rt, namespace, name, patch, &WriteOptions::default())
    }

    /// [`patch_status`](Self::patch_status) as a field manager.
    pub fn patch_status_with(
        &self,
        rt: &ResourceType,
        namespace: &str,
        name: &str,
        patch: &Patch,
        opts: &WriteOptions,
    ) -> ApiResult<Value> {
        self.status_subresource(rt)?;
        self.update(rt, namespace, name, true, Some(opts), |old| {
            let mut new = old.clone();
            patch.apply(&mut new)?;
            Ok(new)
        })
    }

    /// Server-side apply of `config` (see `apply.rs`): creates the object if absent, else
    /// merges the configuration in, with field ownership and conflicts (409) unless
    /// `opts.force`. Returns the object and whether it was created.
    pub fn apply(
        &self,
        rt: &ResourceType,
        namespace: &str,
        name: &str,
        config: Value,
        opts: &ApplyOptions,
    ) -> ApiResult<(Value, bool)> {
        apply::validate_field_manager(&opts.field_manager)?;
        if opts.field_manager.is_empty() {
            return Err(ApiError::invalid(
                "PatchOptions.meta.k8s.io",
                "",
                "fieldManager: Required value: is required for apply patch",
            ));
        }
        let mut config = config;
        if !config.is_object() {
            return Err(ApiError::bad_request(
                "the applied configuration must be an object",
            ));
        }
        for key in ["apiVersion", "kind"] {
            if str_at(&config, &format!("/{key}")).is_none() {
                return Err(ApiError::bad_request(format!(
                    "the applied configuration must set {key}"
                )));
            }
        }
        stamp_type(rt, &mut config)?;
        for (field, expected) in [("name", name), ("namespace", namespace)] {
            if field == "namespace" && !rt.namespaced {
                continue;
            }
            if let Some(given) = str_at(&config, &format!("/metadata/{field}"))
                && given != expected
            {
                return Err(ApiError::bad_request(format!(
                    "the {field} of the object ({given}) does not match the {field} on the URL ({expected})"
                )));
            }
        }
        let precondition = str_at(&config, "/metadata/resourceVersion").map(str::to_owned);
        let ctx = track_context(rt, defaults::now_rfc3339());
        let update = || {
            self.update(rt, namespace, name, false, None, |old| {
                if let Some(want) = &precondition
                    && Some(want.as_str()) != str_at(old, "/metadata/resourceVersion")
                {
                    return Err(ApiError::conflict(
                        rt.plural,
                        name,
                        "the object has been modified; please apply your changes to the latest version and try again",
                    ));
                }
                apply::apply(old, &config, &opts.field_manager, opts.force, &ctx)
            })
        };
        match update() {
            Err(e) if e.code == 404 && e.reason == "NotFound" && precondition.is_none() => {
                let mut obj = apply::apply(&json!({}), &config, &opts.field_manager, false, &ctx)?;
                if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.insert("name".into(), json!(name));
                }
                match self.create_inner(rt, namespace, obj, false, None) {
                    Ok(created) => Ok((created, true)),
                    // Created meanwhile: apply to it.
                    Err(e) if e.reason == "AlreadyExists" => update().map(|o| (o, false)),
                    Err(e) => Err(e),
                }
            }
            other => other.map(|o| (o, false)),
        }
    }

    /// Convenience: merge-patches `.status` with `{"status": status}`.
    pub fn merge_status(
        &self,
        rt: &ResourceType,
        namespace: &str,
        name: &str,
        status: Value,
    ) -> ApiResult<Value> {
        self.patch_status(
            rt,
            namespace,
            name,
            &Patch::Merge(json!({ "status": status })),
        )
    }

    fn status_subresource(&self, rt: &ResourceType) -> ApiResult<()> {
        if rt.has_status {
            Ok(())
        } else {
            Err(ApiError::not_found(&format!("{}/status", rt.plural), ""))
        }
    }

    fn update(
        &self,
        rt: &ResourceType,
        namespace: &str,
        name: &str,
        status_only: bool,
        tracking: Option<&WriteOptions>,
        make: impl FnOnce(&Value) -> ApiResult<Value>,
    ) -> ApiResult<Value> {
        let idx = resource_index(rt)?;
        let key = Self::key(rt, namespace, name);
        let (rv, out) = {
            let mut inner = self.lock();
            let old = inner.objects[idx]
                .get(&key)
                .cloned()
                .ok_or_else(|| ApiError::not_found(rt.plural, name))?;
            let mut new = make(&old)?;
            stamp_type(rt, &mut new)?;
            let meta = metadata_mut(&mut new)?;
            if let Some(n) = meta
                .get("name")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                && n != name
            {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
            if rt.namespaced
                && let Some(n) = meta
                    .get("namespace")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                && n != key.0
            {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            let old_rv = str_at(&old, "/metadata/resourceVersion").unwrap_or_default();
            if let Some(want) = meta
                .get("resourceVersion")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                && want != old_rv
            {
                return Err(ApiError::conflict(
                    rt.plural,
                    name,
                    "the object has been modified; please apply your changes to the latest version and try again",
                ));
            }
            if status_only {
                let status = new.get("status").cloned();
                new = (*old).clone();
                if let Some(map) = new.as_object_mut() {
                    match status {
                        Some(s) => map.insert("status".into(), s),
                        None => map.remove("status"),
                    };
                }
            } else {
                // system fields are owned by the server
                let old_meta = old.get("metadata").and_then(Value::as_object);
                for field in [
                    "name",
                    "namespace",
                    "uid",
                    "creationTimestamp",
                    "generation",
                    "deletionTimestamp",
                    "deletionGracePeriodSeconds",
                    "resourceVersion",
                ] {
                    match old_meta.and_then(|m| m.get(field)) {
                        Some(v) => meta.insert(field.into(), v.clone()),
                        None => meta.remove(field),
                    };
                }
                if rt.has_status
                    && let Some(map) = new.as_object_mut()
                {
                    match old.get("status") {
                        Some(s) => map.insert("status".into(), s.clone()),
                        None => map.remove("status"),
                    };
                }
            }
            update_rules::check_update(rt, name, &old, &new)?;
            set_rv(&mut new, old_rv.parse().unwrap_or(0));
            if let Some(opts) = tracking {
                let manager = opts.field_manager.clone().or_else(|| {
                    apply::is_tracked(&old).then(|| {
                        opts.fallback_manager
                            .clone()
                            .unwrap_or_else(|| "unknown".into())
                    })
                });
                if let Some(manager) = manager {
                    let subresource = status_only.then_some("status");
                    apply::track_update(
                        Some(&old),
                        &mut new,
                        &manager,
                        subresource,
                        &track_context(rt, defaults::now_rfc3339()),
                    );
                }
            }
            if new == *old {
                // no-op writes do not bump the revision, like the real server
                return Ok(new);
            }
            if !status_only && !same_spec(&new, &old) {
                let generation = old
                    .pointer("/metadata/generation")
                    .and_then(Value::as_i64)
                    .unwrap_or(0)
                    + 1;
                if let Some(meta) = new.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.insert("generation".into(), json!(generation));
                }
            }
            inner.rv += 1;
            let rv = inner.rv;
            set_rv(&mut new, rv);
            let stored = Arc::new(new);
            inner.objects[idx].insert(key.clone(), stored.clone());
            inner.record(Change {
                rv,
                resource: idx,
                kind: ChangeKind::Modified,
                key,
                object: stored.clone(),
                prev: Some(old),
            });
            (rv, stored)
        };
        self.notify(rv);
        Ok((*out).clone())
    }

    /// Deletes an object immediately and returns its last state.
    pub fn delete(&self, rt: &ResourceType, namespace: &str, name: &str) -> ApiResult<Value> {
        self.delete_with(rt, namespace, name, &DeleteOptions::default())
    }

    /// Deletes with preconditions. Deleting a namespace deletes everything in it first.
    pub fn delete_with(
        &self,
        rt: &ResourceType,
        namespace: &str,
        name: &str,
        opts: &DeleteOptions,
    ) -> ApiResult<Value> {
        let idx = resource_index(rt)?;
        let key = Self::key(rt, namespace, name);
        let (rv, out) = {
            let mut inner = self.lock();
            let current = inner.objects[idx]
                .get(&key)
                .ok_or_else(|| ApiError::not_found(rt.plural, name))?;
            if let Some(uid) = &opts.precondition_uid {
                let have = str_at(current, "/metadata/uid").unwrap_or_default();
                if uid != have {
                    return Err(ApiError::conflict(
                        rt.plural,
                        name,
                        &format!(
                            "Precondition failed: UID in precondition: {uid}, UID in object meta: {have}"
                        ),
                    ));
                }
            }
            if let Some(want) = &opts.precondition_resource_version {
                let have = str_at(current, "/metadata/resourceVersion").unwrap_or_default();
                if want != have {
                    return Err(ApiError::conflict(
                        rt.plural,
                        name,
                        &format!(
                            "Precondition failed: ResourceVersion in precondition: {want}, ResourceVersion in object meta: {have}"
                        ),
                    ));
                }
            }
            if *rt == NAMESPACES {
                for (i, r) in RESOURCES.iter().enumerate() {
                    if !r.namespaced {
                        continue;
                    }
                    let keys: Vec<Key> = inner.objects[i]
                        .range((name.to_string(), String::new())..)
                        .take_while(|(k, _)| k.0 == name)
                        .map(|(k, _)| k.clone())
                        .collect();
                    for k in keys {
                        inner.remove(i, &k);
                    }
                }
            }
            let out = inner
                .remove(idx, &key)
                .ok_or_else(|| ApiError::not_found(rt.plural, name))?;
            (inner.rv, out)
        };
        self.notify(rv);
        Ok((*out).clone())
    }

    /// Lists objects (`namespace: None` = all namespaces) as a `…List` object.
    pub fn list(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        opts: &ListOptions,
    ) -> ApiResult<Value> {
        let selector = Selector::parse(
            opts.label_selector.as_deref(),
            opts.field_selector.as_deref(),
            rt,
        )?;
        let page = self.list_page(rt, namespace, &selector, opts)?;
        let mut meta = json!({"resourceVersion": page.rv.to_string()});
        if let Some(c) = &page.continue_token {
            meta["continue"] = json!(c);
        }
        Ok(json!({
            "kind": rt.list_kind(),
            "apiVersion": rt.api_version(),
            "metadata": meta,
            "items": page.items.iter().map(|i| (**i).clone()).collect::<Vec<_>>(),
        }))
    }

    /// Convenience: all objects of a type in a namespace (or everywhere), unpaginated.
    pub fn items(&self, rt: &ResourceType, namespace: Option<&str>) -> Vec<Value> {
        let Ok(idx) = resource_index(rt) else {
            return Vec::new();
        };
        let inner = self.lock();
        inner.objects[idx]
            .iter()
            .filter(|(k, _)| namespace.is_none_or(|n| k.0 == n))
            .map(|(_, v)| (**v).clone())
            .collect()
    }

    pub(crate) fn list_page(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        selector: &Selector,
        opts: &ListOptions,
    ) -> ApiResult<ListPage> {
        let idx = resource_index(rt)?;
        let limit = opts.limit.filter(|l| *l > 0);
        let continue_from = opts
            .continue_token
            .as_deref()
            .filter(|c| !c.is_empty())
            .map(decode_continue)
            .transpose()?;
        let requested_rv = opts
            .resource_version
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(parse_rv)
            .transpose()?;
        let exact = opts.resource_version_match.as_deref() == Some("Exact");
        if let Some(m) = opts.resource_version_match.as_deref()
            && !m.is_empty()
            && m != "Exact"
            && m != "NotOlderThan"
        {
            return Err(ApiError::bad_request(format!(
                "resourceVersionMatch: Unsupported value: {m:?}"
            )));
        }
        if opts
            .resource_version_match
            .as_deref()
            .is_some_and(|m| !m.is_empty())
            && requested_rv.is_none()
        {
            return Err(ApiError::bad_request(
                "resourceVersionMatch is forbidden unless resourceVersion is provided",
            ));
        }
        let in_namespace = |k: &Key| namespace.is_none_or(|n| k.0 == n);

        let inner = self.lock();
        let current = inner.rv;
        let target = match (&continue_from, requested_rv) {
            (Some((rv, _)), _) => {
                if *rv != current && *rv < inner.floor {
                    return Err(ApiError::expired(
                        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                    ));
                }
                *rv
            }
            (None, Some(rv)) if exact => {
                if rv > current {
                    return Err(ApiError::new(
                        504,
                        "Timeout",
                        format!("Too large resource version: {rv}, current: {current}"),
                    ));
                }
                if rv != current && rv < inner.floor {
                    return Err(too_old(rv, inner.floor));
                }
                rv
            }
            (None, Some(rv)) if rv > current => {
                return Err(ApiError::new(
                    504,
                    "Timeout",
                    format!("Too large resource version: {rv}, current: {current}"),
                ));
            }
            _ => current,
        };
        let lower = match &continue_from {
            Some((_, k)) => Bound::Excluded(k.clone()),
            None => match namespace {
                Some(n) => Bound::Included((n.to_string(), String::new())),
                None => Bound::Unbounded,
            },
        };
        let mut items = Vec::new();
        let mut last_key: Option<Key> = None;
        let mut more = false;
        let mut visit = |k: &Key, v: &Arc<Value>| -> bool {
            if let Some(n) = namespace
                && k.0.as_str() > n
            {
                return false;
            }
            if !in_namespace(k) || !selector.matches(v) {
                return true;
            }
            if limit.is_some_and(|l| items.len() >= l) {
                more = true;
                return false;
            }
            items.push(v.clone());
            last_key = Some(k.clone());
            true
        };
        if target == current {
            for (k, v) in inner.objects[idx].range((lower, Bound::Unbounded)) {
                if !visit(k, v) {
                    break;
                }
            }
        } else {
            // roll back the changes newer than `target`
            let start = inner.history.partition_point(|c| c.rv <= target);
            let mut overlay: BTreeMap<&Key, Option<&Arc<Value>>> = BTreeMap::new();
            for c in inner.history.range(start..).filter(|c| c.resource == idx) {
                overlay.entry(&c.key).or_insert(c.prev.as_ref());
            }
            let mut merged: Vec<(&Key, &Arc<Value>)> = inner.objects[idx]
                .range((lower.clone(), Bound::Unbounded))
                .filter(|(k, _)| !overlay.contains_key(k))
                .collect();
            merged.extend(overlay.iter().filter_map(|(k, v)| {
                let after_lower = match &lower {
                    Bound::Excluded(l) => *k > l,
                    Bound::Included(l) => *k >= l,
                    Bound::Unbounded => true,
                };
                v.filter(|_| after_lower).map(|v| (*k, v))
            }));
            merged.sort_by(|a, b| a.0.cmp(b.0));
            for (k, v) in merged {
                if !visit(k, v) {
                    break;
                }
            }
        }
        drop(inner);
        let continue_token = match (more, last_key) {
            (true, Some(k)) => Some(encode_continue(target, &k)),
            _ => None,
        };
        Ok(ListPage {
            rv: target,
            items,
            continue_token,
        })
    }

    /// Deletes every matching object of a type in a namespace (or everywhere);
    /// returns the deleted objects as a list.
    pub fn delete_collection(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        opts: &ListOptions,
    ) -> ApiResult<Value> {
        let selector = Selector::parse(
            opts.label_selector.as_deref(),
            opts.field_selector.as_deref(),
            rt,
        )?;
        let page = self.list_page(rt, namespace, &selector, &ListOptions::default())?;
        let mut deleted = Vec::new();
        for item in page.items {
            let ns = str_at(&item, "/metadata/namespace").unwrap_or_default();
            let name = str_at(&item, "/metadata/name").unwrap_or_default();
            match self.delete(rt, ns, name) {
                Ok(obj) => deleted.push(obj),
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(json!({
            "kind": rt.list_kind(),
            "apiVersion": rt.api_version(),
            "metadata": {"resourceVersion": self.resource_version().to_string()},
            "items": deleted,
        }))
    }

    /// Receiver that changes whenever the store is written (carries the new revision).
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Current objects of a type matching `namespace` and `selector`, with the
    /// revision they are consistent with (for watches starting without a RV).
    pub(crate) fn snapshot(
        &self,
        idx: usize,
        namespace: Option<&str>,
        selector: &Selector,
    ) -> (u64, Vec<Arc<Value>>) {
        let inner = self.lock();
        let items = inner.objects[idx]
            .iter()
            .filter(|(k, v)| namespace.is_none_or(|n| k.0 == n) && selector.matches(v))
            .map(|(_, v)| v.clone())
            .collect();
        (inner.rv, items)
    }

    /// Up to `max` changes with `rv > cursor`, and the current revision.
    /// `Err` (410) if some of those changes are no longer retained.
    pub(crate) fn changes_since(&self, cursor: u64, max: usize) -> ApiResult<(Vec<Change>, u64)> {
        let inner = self.lock();
        if cursor < inner.floor {
            return Err(too_old(cursor, inner.floor));
        }
        let start = inner.history.partition_point(|c| c.rv <= cursor);
        let out = inner.history.range(start..).take(max).cloned().collect();
        Ok((out, inner.rv))
    }

    /// Whether resuming from `rv` is possible (410 otherwise).
    pub(crate) fn check_resumable(&self, rv: u64) -> ApiResult<()> {
        let inner = self.lock();
        if rv < inner.floor {
            Err(too_old(rv, inner.floor))
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::{EVENTS, PODS, SERVICES};

    fn pod(name: &str) -> Value {
        json!({"metadata": {"name": name, "labels": {"app": "x"}},
               "spec": {"containers": [{"name": "c", "image": "img:1"}]}})
    }

    #[test]
    fn create_get_conflicts() {
        let s = Store::default();
        let rv0 = s.resource_version();
        let p = s.create(&PODS, "default", pod("a")).unwrap();
        assert_eq!(p["metadata"]["resourceVersion"], (rv0 + 1).to_string());
        assert_eq!(p["metadata"]["generation"], 1);
        assert_eq!(p["kind"], "Pod");
        assert_eq!(p["metadata"]["namespace"], "default");
        assert_eq!(
            s.create(&PODS, "default", pod("a")).unwrap_err().reason,
            "AlreadyExists"
        );
        assert_eq!(s.create(&PODS, "nope", pod("a")).unwrap_err().code, 404);
        assert_eq!(
            s.create(
                &PODS,
                "default",
                json!({"metadata": {}, "spec": {"containers": [{"name": "c"}]}})
            )
            .unwrap_err()
            .code,
            422
        );
        let mut other_ns = pod("b");
        other_ns["metadata"]["namespace"] = json!("kube-system");
        assert_eq!(s.create(&PODS, "default", other_ns).unwrap_err().code, 400);
        let mut g = pod("");
        g["metadata"]["generateName"] = json!("web-");
        let g = s.create(&PODS, "default", g).unwrap();
        assert!(g["metadata"]["name"].as_str().unwrap().starts_with("web-"));
        assert_eq!(s.get(&PODS, "default", "a").unwrap(), p);
        assert_eq!(s.get(&PODS, "default", "zz").unwrap_err().code, 404);
    }

    #[test]
    fn update_semantics() {
        let s = Store::default();
        let p = s.create(&PODS, "default", pod("a")).unwrap();
        // stale RV
        let mut stale = p.clone();
        stale["metadata"]["resourceVersion"] = json!("1");
        stale["metadata"]["labels"]["y"] = json!("1");
        assert_eq!(
            s.replace(&PODS, "default", "a", stale).unwrap_err().reason,
            "Conflict"
        );
        // status is ignored on main resource
        let mut upd = p.clone();
        upd["status"] = json!({"phase": "Running"});
        upd["metadata"]["labels"]["y"] = json!("1");
        let u = s.replace(&PODS, "default", "a", upd).unwrap();
        assert_eq!(u["status"]["phase"], "Pending");
        assert_eq!(u["metadata"]["labels"]["y"], "1");
        assert_eq!(u["metadata"]["generation"], 1);
        // status subresource changes only status
        let mut st = u.clone();
        st["status"] = json!({"phase": "Running"});
        st["metadata"]["labels"]["z"] = json!("1");
        st["metadata"]["resourceVersion"] = json!("");
        let st = s.replace_status(&PODS, "default", "a", st).unwrap();
        assert_eq!(st["status"]["phase"], "Running");
        assert!(st["metadata"]["labels"].get("z").is_none());
        // no-op update keeps RV
        let rv = s.resource_version();
        let same = s
            .merge_status(&PODS, "default", "a", json!({"phase": "Running"}))
            .unwrap();
        assert_eq!(s.resource_version(), rv);
        assert_eq!(same["metadata"]["resourceVersion"], rv.to_string());
        // spec change bumps generation
        let g = s
            .patch(
                &PODS,
                "default",
                "a",
                &Patch::Merge(json!({"spec": {"activeDeadlineSeconds": 5}})),
            )
            .unwrap();
        assert_eq!(g["metadata"]["generation"], 2);
        // events have no status subresource
        assert_eq!(
            s.merge_status(&EVENTS, "default", "a", json!({}))
                .unwrap_err()
                .code,
            404
        );
        let svc = s
            .create(
                &SERVICES,
                "default",
                json!({"metadata": {"name": "s"}, "spec": {}}),
            )
            .unwrap();
        assert_eq!(svc["spec"]["type"], "ClusterIP");
    }

    #[test]
    fn pagination_is_consistent() {
        let s = Store::default();
        for n in ["a", "b", "c", "d", "e"] {
            s.create(&PODS, "default", pod(n)).unwrap();
        }
        let sel = Selector::default();
        let opts = ListOptions {
            limit: Some(2),
            ..Default::default()
        };
        let p1 = s.list_page(&PODS, Some("default"), &sel, &opts).unwrap();
        assert_eq!(p1.items.len(), 2);
        // changes after the first page must not show in later pages
        s.delete(&PODS, "default", "d").unwrap();
        s.create(&PODS, "default", pod("bb")).unwrap();
        s.merge_status(&PODS, "default", "c", json!({"phase": "Running"}))
            .unwrap();
        let mut names = Vec::new();
        let mut page = p1;
        loop {
            for i in &page.items {
                names.push(i["metadata"]["name"].as_str().unwrap().to_string());
                if i["metadata"]["name"] == "c" {
                    assert_eq!(i["status"]["phase"], "Pending");
                }
            }
            let Some(c) = page.continue_token.clone() else {
                break;
            };
            page = s
                .list_page(
                    &PODS,
                    Some("default"),
                    &sel,
                    &ListOptions {
                        limit: Some(2),
                        continue_token: Some(c),
                        ..Default::default()
                    },
                )
                .unwrap();
        }
        assert_eq!(names, ["a", "b", "c", "d", "e"]);
        // after compaction the token is expired
        let p = s.list_page(&PODS, None, &sel, &opts).unwrap();
        s.create(&PODS, "default", pod("zz")).unwrap();
        s.compact();
        let err = s
            .list_page(
                &PODS,
                None,
                &sel,
                &ListOptions {
                    limit: Some(2),
                    continue_token: p.continue_token,
                    ..Default::default()
                },
            )
            .unwrap_err();
        assert_eq!(err.code, 410);
    }

    #[test]
    fn namespace_delete_cascades_and_history_bounds() {
        let s = Store::new(3);
        s.create(&NAMESPACES, "", json!({"metadata": {"name": "ns1"}}))
            .unwrap();
        s.create(&PODS, "ns1", pod("a")).unwrap();
        s.create(&PODS, "ns1", pod("b")).unwrap();
        s.create(&PODS, "default", pod("c")).unwrap();
        s.delete(&NAMESPACES, "", "ns1").unwrap();
        assert_eq!(s.items(&PODS, None).len(), 1);
        assert_eq!(s.history_len(), 3);
        let rv = s.resource_version();
        assert!(s.changes_since(rv - 3, 10).is_ok());
        assert_eq!(s.changes_since(rv - 4, 10).unwrap_err().code, 410);
        s.compact();
        assert_eq!(s.changes_since(rv, 10).unwrap_err().code, 410);
        assert!(
            s.changes_since(s.resource_version(), 10)
                .unwrap()
                .0
                .is_empty()
        );
    }

    #[test]
    fn server_side_apply_and_tracked_writes() {
        use crate::apiserver::resources::LEASES;
        let s = Store::default();
        let opts = |manager: &str, force: bool| ApplyOptions {
            field_manager: manager.into(),
            force,
        };
        let config = |holder: &str| {
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                   "metadata": {"name": "l"}, "spec": {"holderIdentity": holder}})
        };
        let (created, new) = s
            .apply(&LEASES, "default", "l", config("a"), &opts("a", false))
            .unwrap();
        assert!(new);
        assert_eq!(created["metadata"]["namespace"], "default");
        assert!(created["metadata"]["uid"].is_string());
        let rv = s.resource_version();
        // Re-applying the same is a no-op: no new revision.
        let (again, new) = s
            .apply(&LEASES, "default", "l", config("a"), &opts("a", false))
            .unwrap();
        assert!(!new);
        assert_eq!(s.resource_version(), rv);
        assert_eq!(again, created);
        assert_eq!(
            s.apply(&LEASES, "default", "l", config("b"), &opts("b", false))
                .unwrap_err()
                .reason,
            "Conflict"
        );
        // A stale resourceVersion in the configuration is a precondition.
        let mut stale = config("a");
        stale["metadata"]["resourceVersion"] = json!("1");
        assert_eq!(
            s.apply(&LEASES, "default", "l", stale, &opts("a", false))
                .unwrap_err()
                .code,
            409
        );
        // Bad requests.
        let mut kindless = config("a");
        kindless.as_object_mut().unwrap().remove("kind");
        assert_eq!(
            s.apply(&LEASES, "default", "l", kindless, &opts("a", false))
                .unwrap_err()
                .code,
            400
        );
        assert_eq!(
            s.apply(&LEASES, "default", "other", config("a"), &opts("a", false))
                .unwrap_err()
                .code,
            400
        );
        assert_eq!(
            s.apply(&LEASES, "default", "l", config("a"), &opts("", false))
                .unwrap_err()
                .code,
            422
        );
        // Once tracked, a write without fieldManager is owned by the fallback manager.
        let written = s
            .patch_with(
                &LEASES,
                "default",
                "l",
                &Patch::Merge(json!({"spec": {"holderIdentity": "k"}})),
                &WriteOptions {
                    field_manager: None,
                    fallback_manager: Some("kubectl".into()),
                },
            )
            .unwrap();
        let managers: Vec<&str> = written["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["manager"].as_str().unwrap())
            .collect();
        assert_eq!(managers, ["kubectl"], "the holder moved to kubectl");
        // Untracked objects stay untracked without a fieldManager...
        let pod = s.create(&PODS, "default", pod("p")).unwrap();
        assert!(pod["metadata"].get("managedFields").is_none());
        let patched = s
            .patch(
                &PODS,
                "default",
                "p",
                &Patch::Merge(json!({"metadata": {"labels": {"y": "1"}}})),
            )
            .unwrap();
        assert!(patched["metadata"].get("managedFields").is_none());
        // ... and are tracked with one, status writes per subresource.
        let status = s
            .patch_status_with(
                &PODS,
                "default",
                "p",
                &Patch::Merge(json!({"status": {"phase": "Running"}})),
                &WriteOptions {
                    field_manager: Some("kubelet".into()),
                    fallback_manager: None,
                },
            )
            .unwrap();
        assert_eq!(
            status["metadata"]["managedFields"][0]["subresource"],
            "status"
        );
        assert_eq!(
            status["metadata"]["managedFields"][0]["fieldsV1"],
            json!({"f:status": {"f:phase": {}}})
        );
    }

    #[test]
    fn delete_preconditions() {
        let s = Store::default();
        s.create(&PODS, "default", pod("a")).unwrap();
        let opts = DeleteOptions {
            precondition_uid: Some("x".into()),
            ..Default::default()
        };
        assert_eq!(
            s.delete_with(&PODS, "default", "a", &opts)
                .unwrap_err()
                .code,
            409
        );
        let d = s.delete(&PODS, "default", "a").unwrap();
        assert_eq!(
            d["metadata"]["resourceVersion"],
            s.resource_version().to_string()
        );
        assert_eq!(s.delete(&PODS, "default", "a").unwrap_err().code, 404);
    }
}
