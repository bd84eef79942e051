//! PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and a
//! strategic-merge-patch subset.
//!
//! Strategic merge patch is a simplification of the real one: it behaves as a
//! merge patch, except that the well-known lists the Kubernetes Go types mark
//! `patchStrategy: merge` (containers, env, ports, volumes, volumeMounts,
//! conditions, ownerReferences, finalizers, ...) are merged by their merge key,
//! and the directives `$patch` (`replace`/`delete`/`merge`), `$retainKeys`,
//! `$deleteFromPrimitiveList/<field>` and `$setElementOrder/<field>` (ignored:
//! element order is not enforced) are understood. Merge keys are looked up by
//! field name alone, not by the full Go type path, which is exact for the lab's
//! resources. Server-side apply (`application/apply-patch+yaml`) is not a
//! [`Patch`]: it needs ownership, see `apply.rs` and `Store::apply`.

use serde_json::{Map, Value};

use super::error::{ApiError, ApiResult};

/// A patch to apply to a stored object.
#[derive(Debug, Clone, PartialEq)]
pub enum Patch {
    /// `application/merge-patch+json` (RFC 7386).
    Merge(Value),
    /// `application/json-patch+json` (RFC 6902): an array of operations.
    Json(Value),
    /// `application/strategic-merge-patch+json` (subset, see module docs).
    Strategic(Value),
}

impl Patch {
    /// Builds a patch from a request `Content-Type` and JSON body.
    pub fn from_content_type(content_type: &str, body: Value) -> ApiResult<Self> {
        let mime = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        match mime.as_str() {
            "application/merge-patch+json" => Ok(Patch::Merge(body)),
            "application/json-patch+json" => Ok(Patch::Json(body)),
            "application/strategic-merge-patch+json" => Ok(Patch::Strategic(body)),
            _ => Err(ApiError::unsupported_media_type(content_type)),
        }
    }

    /// Applies the patch to `target` in place.
    pub fn apply(&self, target: &mut Value) -> ApiResult<()> {
        match self {
            Patch::Merge(p) => {
                if !p.is_object() {
                    return Err(ApiError::bad_request(
                        "merge patch body must be a JSON object",
                    ));
                }
                merge_patch(target, p);
                Ok(())
            }
            Patch::Strategic(p) => {
                if !p.is_object() {
                    return Err(ApiError::bad_request(
                        "strategic merge patch body must be a JSON object",
                    ));
                }
                strategic_merge(target, p)
            }
            Patch::Json(p) => {
                let ops: json_patch::Patch = serde_json::from_value(p.clone())
                    .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
                json_patch::patch(target, &ops).map_err(|e| {
                    ApiError::new(
                        422,
                        "Invalid",
                        format!("the JSON patch could not be applied: {e}"),
                    )
                })
            }
        }
    }
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// Merge key of lists Kubernetes merges element-wise, by field name.
/// `None` inside `Some` means "merge primitive values as a set".
fn merge_key(field: &str, sample: Option<&Value>) -> Option<Option<&'static str>> {
    Some(Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "resourceClaims" => "name",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "conditions" => "type",
        "ownerReferences" => "uid",
        "hostAliases" | "podIPs" | "hostIPs" => "ip",
        "ports" => {
            if sample.is_some_and(|s| s.get("containerPort").is_some()) {
                "containerPort"
            } else {
                "port"
            }
        }
        "finalizers" => return Some(None),
        _ => return None,
    }))
}

fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

/// Strategic merge patch (subset; see module docs).
pub fn strategic_merge(target: &mut Value, patch: &Value) -> ApiResult<()> {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return Ok(());
    };
    match p.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            *target = strip_directives(patch);
            return Ok(());
        }
        Some("delete") => {
            *target = Value::Object(Map::new());
            return Ok(());
        }
        Some("merge") | None => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "unknown patch directive $patch: {other}"
            )));
        }
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else {
        return Ok(());
    };
    if let Some(retain) = p.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = retain.iter().filter_map(Value::as_str).collect();
        t.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (k, v) in p {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(cur)), Some(del)) = (t.get_mut(field), v.as_array()) {
                cur.retain(|x| !del.contains(x));
            }
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        match (t.get_mut(k), v) {
            (Some(cur @ Value::Object(_)), Value::Object(_)) => strategic_merge(cur, v)?,
            (Some(Value::Array(cur)), Value::Array(items)) => match merge_key(k, items.first()) {
                Some(key) => merge_list(cur, items, key)?,
                None => {
                    *cur = items.iter().map(strip_directives).collect();
                }
            },
            _ => {
                t.insert(k.clone(), strip_directives(v));
            }
        }
    }
    Ok(())
}

fn merge_list(cur: &mut Vec<Value>, items: &[Value], key: Option<&str>) -> ApiResult<()> {
    let Some(key) = key else {
        for item in items {
            if !cur.contains(item) {
                cur.push(item.clone());
            }
        }
        return Ok(());
    };
    if items
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        *cur = items
            .iter()
            .filter(|i| i.get("$patch").is_none())
            .map(strip_directives)
            .collect();
        return Ok(());
    }
    for item in items {
        let Some(id) = item.get(key) else {
            return Err(ApiError::bad_request(format!(
                "map: {item} does not contain declared merge key: {key}"
            )));
        };
        let pos = cur.iter().position(|c| c.get(key) == Some(id));
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (pos, delete) {
            (Some(i), true) => {
                cur.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => strategic_merge(&mut cur[i], item)?,
            (None, false) => cur.push(strip_directives(item)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rfc7386_examples() {
        let mut t = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut t, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(t, json!({"a": "z", "c": {"d": "e"}}));
        let mut t = json!({"a": [1, 2]});
        merge_patch(&mut t, &json!({"a": [3]}));
        assert_eq!(t, json!({"a": [3]}));
        let mut t = json!({"a": "x"});
        merge_patch(&mut t, &json!({"a": {"b": null, "c": 1}}));
        assert_eq!(t, json!({"a": {"c": 1}}));
    }

    #[test]
    fn json_patch_ops() {
        let mut t = json!({"metadata": {"labels": {"a/b": "1"}}});
        Patch::Json(json!([
            {"op": "add", "path": "/metadata/labels/c", "value": "2"},
            {"op": "remove", "path": "/metadata/labels/a~1b"},
            {"op": "test", "path": "/metadata/labels/c", "value": "2"}
        ]))
        .apply(&mut t)
        .unwrap();
        assert_eq!(t, json!({"metadata": {"labels": {"c": "2"}}}));
        let err = Patch::Json(json!([{"op": "test", "path": "/metadata/labels/c", "value": "3"}]))
            .apply(&mut t)
            .unwrap_err();
        assert_eq!(err.code, 422);
        assert_eq!(
            Patch::Json(json!({"op": 1}))
                .apply(&mut t)
                .unwrap_err()
                .code,
            400
        );
    }

    #[test]
    fn strategic_merges_by_key() {
        let mut pod = json!({"spec": {"containers": [
            {"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}]},
            {"name": "b", "image": "b:1"}
        ]}, "metadata": {"finalizers": ["f1"]}, "status": {"conditions": [
            {"type": "Ready", "status": "False"}, {"type": "PodScheduled", "status": "True"}
        ]}});
        Patch::Strategic(json!({
            "$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
            "spec": {"containers": [{"name": "a", "image": "a:2", "env": [{"name": "Y", "value": "2"}]},
                                    {"name": "b", "$patch": "delete"}]},
            "metadata": {"finalizers": ["f2"]},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .apply(&mut pod)
        .unwrap();
        assert_eq!(
            pod["spec"]["containers"],
            json!([{"name": "a", "image": "a:2",
            "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]}])
        );
        assert_eq!(pod["metadata"]["finalizers"], json!(["f1", "f2"]));
        assert_eq!(
            pod["status"]["conditions"][0],
            json!({"type": "Ready", "status": "True"})
        );
        assert_eq!(pod["status"]["conditions"][1]["type"], "PodScheduled");
        assert!(pod.get("$setElementOrder/containers").is_none());
    }

    #[test]
    fn content_types() {
        assert!(matches!(
            Patch::from_content_type("application/merge-patch+json; charset=utf-8", json!({})),
            Ok(Patch::Merge(_))
        ));
        assert_eq!(
            Patch::from_content_type("application/apply-patch+yaml", json!({}))
                .unwrap_err()
                .code,
            415
        );
    }
}
