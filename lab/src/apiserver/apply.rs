//! Server-side apply and field ownership (`metadata.managedFields`).
//!
//! A `PATCH` with `Content-Type: application/apply-patch+yaml` (body JSON or YAML) and a
//! `fieldManager` applies a configuration: the object is created if absent, else the
//! configuration's fields are merged into it. Every manager's fields are recorded in
//! `metadata.managedFields` in the real server's shape (`manager`, `operation` `Apply` or
//! `Update`, `apiVersion`, `time`, `fieldsType: FieldsV1`, `fieldsV1` in the `f:` format,
//! `subresource` for status writes). An apply that would change the value of a field
//! another manager owns fails with `409 Conflict` (reason `Conflict`, a message naming
//! each field and manager as the real server does, one `FieldManagerConflict` cause per
//! field) unless `force=true`, which moves those fields to the applier. Applying the same
//! value another manager set is no conflict: the field is then owned by both. Fields a
//! manager applied before and leaves out now are removed, unless another manager owns
//! them too. Writes that are not applies (POST, PUT, merge / strategic / JSON patch) with
//! a `fieldManager` are `Update` operations: the manager takes ownership of every field
//! it adds or changes, away from the others (never a conflict), and fields it removes are
//! owned by no one any more.
//!
//! Deviations from the real server, on purpose:
//! - lists are atomic: an applied list replaces the whole list and is owned as one field
//!   (the real server merges associative lists such as `containers` item by item, by key);
//! - `null` values in an applied configuration are ignored (not applied, not owned);
//! - a write without `fieldManager` to an object nobody has applied or updated with a
//!   `fieldManager` is not tracked (the real server records every write, naming the
//!   manager after the User-Agent): so the lab's pods and Events, written by the kubelet
//!   and the tests thousands of times, carry no `managedFields`. Once an object has
//!   `managedFields`, every write is tracked, the manager then being the User-Agent's
//!   product name (`kubectl`, `kube-rs`…) or `unknown`;
//! - ownership is compared per leaf field only: the real server's type-aware schema
//!   (which knows, e.g., that `metadata.labels` is a map owned key by key) is replaced by
//!   "a JSON object is a map, anything else a leaf";
//! - defaulted fields are owned by no one (as in the real server), and `dryRun` is not
//!   supported.
//!
//! A client-sent `metadata.managedFields` is honoured as the real server does: absent or
//! `[]` keeps the current entries, `[{}]` clears them, anything else replaces them.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use super::error::{ApiError, ApiResult};

/// A field: the keys from the object's root, e.g. `["spec", "holderIdentity"]`.
pub(crate) type FieldPath = Vec<String>;

/// Metadata fields the server owns; never applied, never tracked.
const SYSTEM_METADATA: [&str; 10] = [
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
    "managedFields",
];

/// `.spec.holderIdentity`, as the real server prints a field path.
pub(crate) fn display_path(path: &[String]) -> String {
    path.iter().map(|p| format!(".{p}")).collect()
}

/// The object without what ownership never covers: `apiVersion`, `kind`, the system
/// metadata, and (for types with a status subresource, when `drop_status`) `status`.
fn trackable(object: &Value, drop_status: bool) -> Value {
    let mut out = object.clone();
    if let Some(map) = out.as_object_mut() {
        map.remove("apiVersion");
        map.remove("kind");
        if drop_status {
            map.remove("status");
        }
        if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            for field in SYSTEM_METADATA {
                meta.remove(field);
            }
            if meta.is_empty() {
                map.remove("metadata");
            }
        }
    }
    out
}

/// Every leaf field of `value` with its value. Objects are maps (recursed; an empty one is
/// a leaf); everything else, lists included, is a leaf.
fn leaves(value: &Value) -> BTreeMap<FieldPath, &Value> {
    fn walk<'a>(value: &'a Value, path: &mut FieldPath, out: &mut BTreeMap<FieldPath, &'a Value>) {
        match value {
            Value::Object(map) if !map.is_empty() => {
                for (key, child) in map {
                    path.push(key.clone());
                    walk(child, path, out);
                    path.pop();
                }
            }
            _ if !path.is_empty() => {
                out.insert(path.clone(), value);
            }
            _ => {}
        }
    }
    let mut out = BTreeMap::new();
    walk(value, &mut Vec::new(), &mut out);
    out
}

/// `value` without its `null` members, recursively (lists are kept as they are).
fn without_nulls(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Merges an applied configuration into `target`: maps key by key, anything else replaced.
fn merge_config(target: &mut Value, config: &Value) {
    match (target, config) {
        (Value::Object(t), Value::Object(c)) => {
            for (key, value) in c {
                match t.get_mut(key) {
                    Some(existing) if existing.is_object() && value.is_object() => {
                        merge_config(existing, value);
                    }
                    _ => {
                        t.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (target, config) => *target = config.clone(),
    }
}

/// Removes the field at `path` (and no parent).
fn remove_path(target: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut node = target;
    for key in parents {
        match node.get_mut(key) {
            Some(child) => node = child,
            None => return,
        }
    }
    if let Some(map) = node.as_object_mut() {
        map.remove(last);
    }
}

/// A set of fields in the `fieldsV1` format: `{"f:spec": {"f:holderIdentity": {}}}`; `"."`
/// marks a map that is itself a member as well as its children.
fn to_fields_v1(fields: &BTreeSet<FieldPath>) -> Value {
    let mut root = Map::new();
    for path in fields {
        let mut node = &mut root;
        for key in path {
            let entry = node
                .entry(format!("f:{key}"))
                .or_insert_with(|| Value::Object(Map::new()));
            let Value::Object(child) = entry else {
                unreachable!("fieldsV1 nodes are objects");
            };
            node = child;
        }
        if !node.is_empty() {
            node.insert(".".into(), json!({}));
        }
    }
    // A leaf that later got children: mark it as a member itself.
    fn mark(node: &mut Map<String, Value>, fields: &BTreeSet<FieldPath>, path: &mut FieldPath) {
        let keys: Vec<String> = node
            .keys()
            .filter(|k| k.starts_with("f:"))
            .cloned()
            .collect();
        for key in keys {
            path.push(key[2..].to_owned());
            if let Some(Value::Object(child)) = node.get_mut(&key) {
                if !child.is_empty() && fields.contains(path) {
                    child.insert(".".into(), json!({}));
                }
                mark(child, fields, path);
            }
            path.pop();
        }
    }
    mark(&mut root, fields, &mut Vec::new());
    Value::Object(root)
}

/// Reads a `fieldsV1` set. `k:`/`v:`/`i:` members (list items, which the lab does not
/// track separately) make their list one atomic field.
fn from_fields_v1(value: &Value) -> BTreeSet<FieldPath> {
    fn walk(node: &Map<String, Value>, path: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
        if node.is_empty() || node.contains_key(".") {
            if !path.is_empty() {
                out.insert(path.clone());
            }
            if node.is_empty() {
                return;
            }
        }
        for (key, child) in node {
            if let Some(name) = key.strip_prefix("f:") {
                path.push(name.to_owned());
                match child {
                    Value::Object(child) => walk(child, path, out),
                    _ => {
                        out.insert(path.clone());
                    }
                }
                path.pop();
            } else if key != "." && !path.is_empty() {
                out.insert(path.clone());
            }
        }
    }
    let mut out = BTreeSet::new();
    if let Value::Object(root) = value {
        walk(root, &mut Vec::new(), &mut out);
    }
    out
}

/// One `managedFields` entry.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    pub subresource: Option<String>,
    pub api_version: String,
    pub time: Option<String>,
    pub fields: BTreeSet<FieldPath>,
}

impl Entry {
    fn same_key(&self, manager: &str, operation: &str, subresource: Option<&str>) -> bool {
        self.manager == manager
            && self.operation == operation
            && self.subresource.as_deref() == subresource
    }

    /// `"kube-lease-manager-a"`, `"x" using v1 at 2024-…` for updates, as the real server
    /// names a manager in a conflict.
    fn describe(&self) -> String {
        let mut out = format!("{:?}", self.manager);
        if let Some(sub) = &self.subresource {
            out.push_str(&format!(" with subresource {sub:?}"));
        }
        if self.operation == "Update" {
            out.push_str(&format!(" using {}", self.api_version));
            if let Some(time) = &self.time {
                out.push_str(&format!(" at {time}"));
            }
        }
        out
    }

    fn to_json(&self) -> Value {
        let mut entry = json!({
            "manager": self.manager,
            "operation": self.operation,
            "apiVersion": self.api_version,
            "fieldsType": "FieldsV1",
            "fieldsV1": to_fields_v1(&self.fields),
        });
        if let Some(time) = &self.time {
            entry["time"] = json!(time);
        }
        if let Some(sub) = &self.subresource {
            entry["subresource"] = json!(sub);
        }
        entry
    }

    fn from_json(value: &Value) -> Option<Entry> {
        let text = |key: &str| value.get(key).and_then(Value::as_str).map(str::to_owned);
        Some(Entry {
            manager: text("manager").unwrap_or_default(),
            operation: text("operation")?,
            subresource: text("subresource").filter(|s| !s.is_empty()),
            api_version: text("apiVersion").unwrap_or_default(),
            time: text("time"),
            fields: value
                .get("fieldsV1")
                .map(from_fields_v1)
                .unwrap_or_default(),
        })
    }
}

/// The entries of an object's `metadata.managedFields`.
pub(crate) fn entries(object: &Value) -> Vec<Entry> {
    object
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|list| list.iter().filter_map(Entry::from_json).collect())
        .unwrap_or_default()
}

/// Whether anybody's fields of `object` are tracked.
pub(crate) fn is_tracked(object: &Value) -> bool {
    object
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .is_some_and(|list| !list.is_empty())
}

fn write_entries(object: &mut Value, entries: &[Entry]) {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        if entries.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert(
                "managedFields".into(),
                Value::Array(entries.iter().map(Entry::to_json).collect()),
            );
        }
    }
}

/// Who owns what, and how the object's type treats `status`.
#[derive(Debug, Clone)]
pub(crate) struct Context {
    /// `apiVersion` recorded in new entries.
    pub api_version: String,
    /// The type has a status subresource (then main-resource writes never touch `status`).
    pub has_status: bool,
    /// RFC 3339 time for changed entries.
    pub now: String,
}

/// The entries an update starts from: those of `old`, unless the client sent its own.
fn base_entries(old: Option<&Value>, new: &Value) -> Vec<Entry> {
    let old_entries = old.map(entries).unwrap_or_default();
    match new.pointer("/metadata/managedFields") {
        None | Some(Value::Null) => old_entries,
        Some(Value::Array(list)) if list.is_empty() => old_entries,
        Some(Value::Array(list)) if list.len() == 1 && list[0] == json!({}) => Vec::new(),
        Some(sent) if old.and_then(|o| o.pointer("/metadata/managedFields")) == Some(sent) => {
            old_entries
        }
        Some(_) => entries(new),
    }
}

/// Records an `Update` by `manager` that turned `old` (`None`: a creation) into `new`:
/// the fields it added or changed become its own (and nobody else's), removed fields
/// nobody's. Writes the result into `new`'s `metadata.managedFields`.
pub(crate) fn track_update(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    subresource: Option<&str>,
    ctx: &Context,
) {
    let mut list = base_entries(old, new);
    let drop_status = ctx.has_status && subresource.is_none();
    let empty = json!({});
    let before = trackable(old.unwrap_or(&empty), drop_status);
    let after = trackable(new, drop_status);
    let (before, after) = (leaves(&before), leaves(&after));
    let changed: BTreeSet<FieldPath> = after
        .iter()
        .filter(|(path, value)| before.get(*path) != Some(*value))
        .map(|(path, _)| path.clone())
        .collect();
    let removed: BTreeSet<FieldPath> = before
        .keys()
        .filter(|path| !after.contains_key(*path))
        .cloned()
        .collect();
    for entry in &mut list {
        entry
            .fields
            .retain(|f| !removed.contains(f) && !changed.contains(f));
    }
    if !changed.is_empty() {
        match list
            .iter_mut()
            .find(|e| e.same_key(manager, "Update", subresource))
        {
            Some(entry) => {
                entry.fields.extend(changed);
                entry.time = Some(ctx.now.clone());
                entry.api_version = ctx.api_version.clone();
            }
            None => list.push(Entry {
                manager: manager.to_owned(),
                operation: "Update".into(),
                subresource: subresource.map(str::to_owned),
                api_version: ctx.api_version.clone(),
                time: Some(ctx.now.clone()),
                fields: changed,
            }),
        }
    }
    list.retain(|e| !e.fields.is_empty());
    write_entries(new, &list);
}

/// The 409 of an apply that would change other managers' fields.
fn conflict_error(conflicts: &[(String, FieldPath)]) -> ApiError {
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|(manager, path)| {
            json!({
                "type": "FieldManagerConflict",
                "message": format!("conflict with {manager}"),
                "field": display_path(path),
            })
        })
        .collect();
    let message = if let [(manager, path)] = conflicts {
        format!(
            "Apply failed with 1 conflict: conflict with {manager}: {}",
            display_path(path)
        )
    } else {
        let mut by_manager: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (manager, path) in conflicts {
            by_manager
                .entry(manager)
                .or_default()
                .push(display_path(path));
        }
        let lines: Vec<String> = by_manager
            .iter()
            .flat_map(|(manager, paths)| {
                std::iter::once(format!("conflicts with {manager}:"))
                    .chain(paths.iter().map(|p| format!("- {p}")))
            })
            .collect();
        format!(
            "Apply failed with {} conflicts: {}",
            conflicts.len(),
            lines.join("\n")
        )
    };
    let mut error = ApiError::new(409, "Conflict", message);
    error.details = Some(json!({ "causes": causes }));
    error
}

/// Applies `config` as `manager` to `live` (an empty object for a creation). Returns the
/// new object (with its `managedFields`), or 409 on conflicts unless `force`.
/// `config` must already be checked (`apiVersion`/`kind`, name, namespace).
pub(crate) fn apply(
    live: &Value,
    config: &Value,
    manager: &str,
    force: bool,
    ctx: &Context,
) -> ApiResult<Value> {
    let config = trackable(&without_nulls(config), ctx.has_status);
    let applied = leaves(&config);
    let live_fields = trackable(live, ctx.has_status);
    let current = leaves(&live_fields);
    let mut list = entries(live);
    let mine = |e: &Entry| e.same_key(manager, "Apply", None);

    // Other managers' fields this configuration would give a different value.
    let mut conflicts: Vec<(String, FieldPath)> = Vec::new();
    let mut conflicting: Vec<(usize, FieldPath)> = Vec::new();
    for (index, entry) in list.iter().enumerate().filter(|(_, e)| !mine(e)) {
        for owned in &entry.fields {
            let changes = applied
                .iter()
                .any(|(path, value)| owned.starts_with(path) && current.get(path) != Some(value));
            if changes {
                conflicts.push((entry.describe(), owned.clone()));
                conflicting.push((index, owned.clone()));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflict_error(&conflicts));
    }

    let mut object = live.clone();
    merge_config(&mut object, &config);
    // Fields this manager applied before and no longer applies go, unless someone else
    // owns them too.
    let previous: BTreeSet<FieldPath> = list
        .iter()
        .find(|e| mine(e))
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    for path in previous.iter().filter(|p| !applied.contains_key(*p)) {
        let shared = list
            .iter()
            .any(|e| !mine(e) && e.fields.iter().any(|f| f.starts_with(path)));
        if !shared {
            remove_path(&mut object, path);
        }
    }
    // Forced: the conflicting fields change hands.
    for (index, path) in conflicting {
        list[index].fields.remove(&path);
    }
    let fields: BTreeSet<FieldPath> = applied.keys().cloned().collect();
    match list.iter_mut().find(|e| mine(e)) {
        Some(entry) => {
            if entry.fields != fields || current != leaves(&trackable(&object, ctx.has_status)) {
                entry.time = Some(ctx.now.clone());
            }
            entry.fields = fields;
            entry.api_version = ctx.api_version.clone();
        }
        None => list.push(Entry {
            manager: manager.to_owned(),
            operation: "Apply".into(),
            subresource: None,
            api_version: ctx.api_version.clone(),
            time: Some(ctx.now.clone()),
            fields,
        }),
    }
    list.retain(|e| !e.fields.is_empty());
    if object.get("metadata").is_none()
        && let Some(map) = object.as_object_mut()
    {
        map.insert("metadata".into(), json!({}));
    }
    write_entries(&mut object, &list);
    Ok(object)
}

/// Whether a `Content-Type` is server-side apply's.
pub fn is_apply_content_type(content_type: &str) -> bool {
    content_type.split(';').next().is_some_and(|mime| {
        mime.trim()
            .eq_ignore_ascii_case("application/apply-patch+yaml")
    })
}

/// The manager name the real server derives from a User-Agent: its product, before `/`.
pub fn manager_from_user_agent(user_agent: &str) -> Option<String> {
    let product = user_agent.split('/').next().unwrap_or("").trim();
    (!product.is_empty()).then(|| product.chars().take(128).collect())
}

/// Checks a `fieldManager` like the real server (at most 128 printable characters).
pub fn validate_field_manager(manager: &str) -> ApiResult<()> {
    if manager.chars().count() > 128 {
        return Err(ApiError::invalid(
            "PatchOptions.meta.k8s.io",
            "",
            format!(
                "fieldManager: Too long: may not be longer than 128 (got {})",
                manager.chars().count()
            ),
        ));
    }
    if manager.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "PatchOptions.meta.k8s.io",
            "",
            format!("fieldManager: Invalid value: {manager:?}: must be printable"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "2025-01-01T00:00:00Z";

    fn ctx() -> Context {
        Context {
            api_version: "coordination.k8s.io/v1".into(),
            has_status: false,
            now: NOW.into(),
        }
    }

    fn path(dotted: &str) -> FieldPath {
        dotted.split('.').map(str::to_owned).collect()
    }

    fn owners(object: &Value) -> Vec<(String, String, Vec<String>)> {
        entries(object)
            .into_iter()
            .map(|e| {
                (
                    e.manager,
                    e.operation,
                    e.fields.iter().map(|p| display_path(p)).collect(),
                )
            })
            .collect()
    }

    fn lease(spec: Value) -> Value {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "metadata": {"name": "l", "namespace": "default"}, "spec": spec})
    }

    #[test]
    fn fields_v1_round_trips_and_reads_the_real_format() {
        let fields: BTreeSet<FieldPath> = [
            path("spec.holderIdentity"),
            path("spec.renewTime"),
            path("metadata.labels"),
            path("metadata.labels.app"),
        ]
        .into_iter()
        .collect();
        let v1 = to_fields_v1(&fields);
        assert_eq!(
            v1,
            json!({"f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                   "f:spec": {"f:holderIdentity": {}, "f:renewTime": {}}})
        );
        assert_eq!(from_fields_v1(&v1), fields);
        // As the real server writes a Deployment's: list items make the list one field.
        let real = json!({"f:spec": {"f:template": {"f:spec": {"f:containers": {
            "k:{\"name\":\"api\"}": {".": {}, "f:image": {}}}}}}});
        assert_eq!(
            from_fields_v1(&real),
            [path("spec.template.spec.containers")]
                .into_iter()
                .collect()
        );
    }

    #[test]
    fn apply_creates_owns_and_reapplies_idempotently() {
        let config = lease(json!({"holderIdentity": "a", "leaseDurationSeconds": 15}));
        let created = apply(&json!({}), &config, "m-a", false, &ctx()).unwrap();
        assert_eq!(created["spec"]["holderIdentity"], "a");
        assert_eq!(
            owners(&created),
            [(
                "m-a".into(),
                "Apply".into(),
                vec![
                    ".spec.holderIdentity".into(),
                    ".spec.leaseDurationSeconds".into()
                ]
            )]
        );
        let entry = &created["metadata"]["managedFields"][0];
        assert_eq!(entry["fieldsType"], "FieldsV1");
        assert_eq!(entry["apiVersion"], "coordination.k8s.io/v1");
        assert_eq!(entry["time"], NOW);
        let again = apply(&created, &config, "m-a", false, &ctx()).unwrap();
        assert_eq!(again, created);
    }

    #[test]
    fn a_different_value_of_a_field_another_manager_owns_conflicts() {
        let live = apply(
            &json!({}),
            &lease(json!({"holderIdentity": "a", "leaseDurationSeconds": 15})),
            "kube-lease-manager-a",
            false,
            &ctx(),
        )
        .unwrap();
        let takeover = lease(json!({"holderIdentity": "b", "leaseDurationSeconds": 15}));
        let error = apply(&live, &takeover, "kube-lease-manager-b", false, &ctx()).unwrap_err();
        assert_eq!((error.code, error.reason), (409, "Conflict"));
        assert_eq!(
            error.message,
            "Apply failed with 1 conflict: conflict with \"kube-lease-manager-a\": .spec.holderIdentity"
        );
        let causes = &error.details.as_ref().unwrap()["causes"];
        assert_eq!(causes[0]["type"], "FieldManagerConflict");
        assert_eq!(causes[0]["field"], ".spec.holderIdentity");
        // The same value is shared ownership, not a conflict.
        let shared = apply(
            &live,
            &lease(json!({"leaseDurationSeconds": 15})),
            "kube-lease-manager-b",
            false,
            &ctx(),
        )
        .unwrap();
        assert_eq!(owners(&shared).len(), 2);
        // Forced: the field changes hands.
        let forced = apply(&live, &takeover, "kube-lease-manager-b", true, &ctx()).unwrap();
        assert_eq!(forced["spec"]["holderIdentity"], "b");
        assert_eq!(
            owners(&forced),
            [
                (
                    "kube-lease-manager-a".into(),
                    "Apply".into(),
                    vec![".spec.leaseDurationSeconds".into()]
                ),
                (
                    "kube-lease-manager-b".into(),
                    "Apply".into(),
                    vec![
                        ".spec.holderIdentity".into(),
                        ".spec.leaseDurationSeconds".into()
                    ]
                ),
            ]
        );
    }

    #[test]
    fn several_conflicts_are_listed_by_manager() {
        let live = apply(
            &json!({}),
            &lease(json!({"holderIdentity": "a", "renewTime": "t1"})),
            "a",
            false,
            &ctx(),
        )
        .unwrap();
        let error = apply(
            &live,
            &lease(json!({"holderIdentity": "b", "renewTime": "t2"})),
            "b",
            false,
            &ctx(),
        )
        .unwrap_err();
        assert_eq!(
            error.message,
            "Apply failed with 2 conflicts: conflicts with \"a\":\n- .spec.holderIdentity\n- .spec.renewTime"
        );
    }

    #[test]
    fn updates_take_fields_over_and_removals_free_them() {
        let live = apply(
            &json!({}),
            &lease(json!({"holderIdentity": "a", "renewTime": "t1", "leaseDurationSeconds": 15})),
            "a",
            false,
            &ctx(),
        )
        .unwrap();
        // A renewal by strategic merge patch: an Update by the same manager name.
        let mut renewed = live.clone();
        renewed["spec"]["renewTime"] = json!("t2");
        track_update(Some(&live), &mut renewed, "a", None, &ctx());
        assert_eq!(
            owners(&renewed),
            [
                (
                    "a".into(),
                    "Apply".into(),
                    vec![
                        ".spec.holderIdentity".into(),
                        ".spec.leaseDurationSeconds".into()
                    ]
                ),
                ("a".into(), "Update".into(), vec![".spec.renewTime".into()]),
            ]
        );
        let update = &renewed["metadata"]["managedFields"][1];
        assert_eq!(update["operation"], "Update");
        // A release by another manager: the fields it removes are nobody's any more, so
        // a later apply of them by anyone is no conflict.
        let mut released = renewed.clone();
        let spec = released["spec"].as_object_mut().unwrap();
        spec.remove("holderIdentity");
        spec.remove("renewTime");
        track_update(Some(&renewed), &mut released, "b", None, &ctx());
        assert_eq!(
            owners(&released),
            [(
                "a".into(),
                "Apply".into(),
                vec![".spec.leaseDurationSeconds".into()]
            )]
        );
        let taken = apply(
            &released,
            &lease(json!({"holderIdentity": "b", "renewTime": "t3", "leaseDurationSeconds": 15})),
            "b",
            false,
            &ctx(),
        )
        .unwrap();
        assert_eq!(taken["spec"]["holderIdentity"], "b");
        // The conflict message names an Update manager with its version and time.
        let error = apply(
            &renewed,
            &lease(json!({"renewTime": "t9"})),
            "c",
            false,
            &ctx(),
        )
        .unwrap_err();
        assert_eq!(
            error.message,
            format!(
                "Apply failed with 1 conflict: conflict with \"a\" using coordination.k8s.io/v1 at {NOW}: .spec.renewTime"
            )
        );
    }

    #[test]
    fn fields_left_out_of_a_new_apply_are_removed_unless_shared() {
        let live = apply(
            &json!({}),
            &lease(json!({"holderIdentity": "a", "renewTime": "t1"})),
            "a",
            false,
            &ctx(),
        )
        .unwrap();
        let shared = apply(
            &live,
            &lease(json!({"renewTime": "t1"})),
            "b",
            false,
            &ctx(),
        )
        .unwrap();
        let nothing = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                             "metadata": {"name": "l"}});
        let pruned = apply(&shared, &nothing, "a", false, &ctx()).unwrap();
        assert!(pruned["spec"].get("holderIdentity").is_none());
        assert_eq!(pruned["spec"]["renewTime"], "t1", "b owns it too");
        assert_eq!(
            owners(&pruned),
            [("b".into(), "Apply".into(), vec![".spec.renewTime".into()])]
        );
    }

    #[test]
    fn client_sent_managed_fields_and_status() {
        let live = apply(
            &json!({}),
            &lease(json!({"holderIdentity": "a"})),
            "a",
            false,
            &ctx(),
        )
        .unwrap();
        // A PUT without managedFields keeps them; [{}] clears them.
        let mut put = lease(json!({"holderIdentity": "a", "leaseTransitions": 1}));
        track_update(Some(&live), &mut put, "kubectl", None, &ctx());
        assert_eq!(owners(&put).len(), 2);
        let mut reset = lease(json!({"holderIdentity": "a"}));
        reset["metadata"]["managedFields"] = json!([{}]);
        track_update(Some(&live), &mut reset, "kubectl", None, &ctx());
        assert!(reset["metadata"].get("managedFields").is_none());
        // Status writes of a type with a status subresource are owned per subresource.
        let status_ctx = Context {
            has_status: true,
            ..ctx()
        };
        let pod =
            json!({"metadata": {"name": "p"}, "spec": {"x": 1}, "status": {"phase": "Pending"}});
        let mut running = pod.clone();
        running["status"]["phase"] = json!("Running");
        track_update(
            Some(&pod),
            &mut running,
            "kubelet",
            Some("status"),
            &status_ctx,
        );
        let entry = &running["metadata"]["managedFields"][0];
        assert_eq!(entry["subresource"], "status");
        assert_eq!(entry["fieldsV1"], json!({"f:status": {"f:phase": {}}}));
    }

    #[test]
    fn helpers() {
        assert!(is_apply_content_type(
            "application/apply-patch+yaml; charset=utf-8"
        ));
        assert!(!is_apply_content_type("application/merge-patch+json"));
        assert_eq!(
            manager_from_user_agent("kubectl/v1.32.0 (linux/amd64)").as_deref(),
            Some("kubectl")
        );
        assert_eq!(manager_from_user_agent(""), None);
        assert!(validate_field_manager(&"x".repeat(129)).is_err());
        assert!(validate_field_manager("kube-lease-manager-a").is_ok());
    }
}
