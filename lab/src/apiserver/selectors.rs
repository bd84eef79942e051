//! Label and field selectors, parsed from query strings and matched against
//! stored JSON objects.
//!
//! Labels: equality (`k=v`, `k==v`, `k!=v`) and set-based (`k in (a,b)`,
//! `k notin (a,b)`, `k`, `!k`) requirements, comma-separated (AND).
//! Fields: `=`, `==`, `!=` on the fields a resource supports (see
//! [`ResourceType::supports_field`]); an unsupported field is a 400, like the
//! real server. A missing field compares as the empty string.

use serde_json::Value;

use super::error::{ApiError, ApiResult};
use super::resources::ResourceType;

#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelOp {
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    reqs: Vec<(String, LabelOp)>,
}

fn valid_label_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-.".contains(c))
    });
    name_ok && prefix_ok
}

fn valid_label_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && v.starts_with(|c: char| c.is_ascii_alphanumeric())
            && v.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

/// Splits on commas that are not inside parentheses.
fn split_top_level(s: &str) -> ApiResult<Vec<&str>> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err(ApiError::bad_request(format!(
                        "unable to parse requirement: unbalanced ')' in {s:?}"
                    )));
                }
            }
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(ApiError::bad_request(format!(
            "unable to parse requirement: unbalanced '(' in {s:?}"
        )));
    }
    out.push(&s[start..]);
    Ok(out)
}

fn parse_err(req: &str, why: &str) -> ApiError {
    ApiError::bad_request(format!("unable to parse requirement: {req:?}: {why}"))
}

fn parse_set(req: &str, rest: &str) -> ApiResult<Vec<String>> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| parse_err(req, "expected '(' values ')'"))?;
    let mut vals = Vec::new();
    for v in inner.split(',') {
        let v = v.trim();
        if !valid_label_value(v) {
            return Err(parse_err(req, "invalid label value"));
        }
        vals.push(v.to_string());
    }
    Ok(vals)
}

impl LabelSelector {
    /// Parses a `labelSelector` query value.
    pub fn parse(s: &str) -> ApiResult<Self> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(LabelSelector { reqs });
        }
        for raw in split_top_level(s)? {
            let req = raw.trim();
            if req.is_empty() {
                return Err(parse_err(s, "empty requirement"));
            }
            let parsed = if let Some(key) = req.strip_prefix('!') {
                let key = key.trim();
                (key.to_string(), LabelOp::DoesNotExist)
            } else if let Some((k, v)) = req.split_once("!=") {
                let v = v.trim();
                if !valid_label_value(v) {
                    return Err(parse_err(req, "invalid label value"));
                }
                (k.trim().to_string(), LabelOp::NotIn(vec![v.to_string()]))
            } else if let Some((k, v)) = req.split_once('=') {
                let v = v.strip_prefix('=').unwrap_or(v).trim();
                if !valid_label_value(v) {
                    return Err(parse_err(req, "invalid label value"));
                }
                (k.trim().to_string(), LabelOp::In(vec![v.to_string()]))
            } else if let Some(idx) = req.find(|c: char| c.is_whitespace() || c == '(') {
                let key = req[..idx].trim();
                let rest = req[idx..].trim_start();
                if let Some(r) = rest.strip_prefix("notin") {
                    (key.to_string(), LabelOp::NotIn(parse_set(req, r)?))
                } else if let Some(r) = rest.strip_prefix("in") {
                    (key.to_string(), LabelOp::In(parse_set(req, r)?))
                } else {
                    return Err(parse_err(
                        req,
                        "expected one of '=', '==', '!=', 'in', 'notin'",
                    ));
                }
            } else {
                (req.to_string(), LabelOp::Exists)
            };
            if !valid_label_key(&parsed.0) {
                return Err(parse_err(req, "invalid label key"));
            }
            reqs.push(parsed);
        }
        Ok(LabelSelector { reqs })
    }

    /// True if the selector has no requirements.
    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    /// Whether `obj`'s `metadata.labels` satisfy every requirement.
    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
        self.reqs.iter().all(|(key, op)| {
            let val = labels.and_then(|l| l.get(key)).and_then(Value::as_str);
            match op {
                LabelOp::In(vals) => val.is_some_and(|v| vals.iter().any(|x| x == v)),
                LabelOp::NotIn(vals) => val.is_none_or(|v| !vals.iter().any(|x| x == v)),
                LabelOp::Exists => val.is_some(),
                LabelOp::DoesNotExist => val.is_none(),
            }
        })
    }
}

/// A parsed field selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    // (field path, expected value, negated)
    reqs: Vec<(String, String, bool)>,
}

/// Reads a dotted field path (`status.phase`) as the string the real server's
/// field set would hold (booleans and numbers as their text, missing as "").
pub(crate) fn field_value(obj: &Value, path: &str) -> String {
    let mut cur = obj;
    for part in path.split('.') {
        match cur.get(part) {
            Some(v) => cur = v,
            None => return String::new(),
        }
    }
    match cur {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    }
}

impl FieldSelector {
    /// Parses a `fieldSelector` query value, checking fields against `rt`.
    pub fn parse(s: &str, rt: &ResourceType) -> ApiResult<Self> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(FieldSelector { reqs });
        }
        for raw in s.split(',') {
            let req = raw.trim();
            let (field, value, neg) = if let Some((f, v)) = req.split_once("!=") {
                (f, v, true)
            } else if let Some((f, v)) = req.split_once("==") {
                (f, v, false)
            } else if let Some((f, v)) = req.split_once('=') {
                (f, v, false)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{s}'; can't understand '{req}'"
                )));
            };
            let field = field.trim();
            if !rt.supports_field(field) {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {field}"
                )));
            }
            reqs.push((field.to_string(), value.trim().to_string(), neg));
        }
        Ok(FieldSelector { reqs })
    }

    /// True if the selector has no requirements.
    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    /// Whether `obj` satisfies every requirement.
    pub fn matches(&self, obj: &Value) -> bool {
        self.reqs
            .iter()
            .all(|(field, want, neg)| (field_value(obj, field) == *want) != *neg)
    }
}

/// A label and a field selector together (what list and watch filter by).
#[derive(Debug, Clone, Default)]
pub struct Selector {
    /// Label requirements.
    pub labels: LabelSelector,
    /// Field requirements.
    pub fields: FieldSelector,
}

impl Selector {
    /// Parses both selectors (either may be absent).
    pub fn parse(labels: Option<&str>, fields: Option<&str>, rt: &ResourceType) -> ApiResult<Self> {
        Ok(Selector {
            labels: LabelSelector::parse(labels.unwrap_or(""))?,
            fields: FieldSelector::parse(fields.unwrap_or(""), rt)?,
        })
    }

    /// True if both are empty.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }

    /// Whether `obj` matches both.
    pub fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(obj) && self.fields.matches(obj)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::{EVENTS, PODS};
    use serde_json::json;

    fn pod(labels: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "ns", "labels": labels},
               "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}})
    }

    #[test]
    fn label_equality_and_sets() {
        let p = pod(json!({"app": "web", "tier": "fe"}));
        let m = |s: &str| LabelSelector::parse(s).map(|sel| sel.matches(&p));
        assert_eq!(m(""), Ok(true));
        assert_eq!(m("app=web"), Ok(true));
        assert_eq!(m("app==web"), Ok(true));
        assert_eq!(m("app!=web"), Ok(false));
        assert_eq!(m("app=web,tier=fe"), Ok(true));
        assert_eq!(m("app=web,tier=be"), Ok(false));
        assert_eq!(m("app in (web, db)"), Ok(true));
        assert_eq!(m("app in (db)"), Ok(false));
        assert_eq!(m("app notin (db),tier"), Ok(true));
        assert_eq!(m("app notin (web,db)"), Ok(false));
        assert_eq!(m("missing notin (x)"), Ok(true));
        assert_eq!(m("missing!=x"), Ok(true));
        assert_eq!(m("!missing"), Ok(true));
        assert_eq!(m("!app"), Ok(false));
        assert_eq!(m("app"), Ok(true));
        assert_eq!(m("app.kubernetes.io/name in (a,b),app=web"), Ok(false));
        assert!(m("app in web").is_err());
        assert!(m("app=(x").is_err());
        assert!(m("a b c").is_err());
        assert!(m("=x").is_err());
        assert!(m("app=web,").is_err());
    }

    #[test]
    fn field_selectors() {
        let p = pod(json!({}));
        let m = |s: &str| FieldSelector::parse(s, &PODS).map(|sel| sel.matches(&p));
        assert_eq!(m("metadata.name=p"), Ok(true));
        assert_eq!(m("metadata.name==p,metadata.namespace=ns"), Ok(true));
        assert_eq!(m("metadata.name!=p"), Ok(false));
        assert_eq!(m("spec.nodeName=n1,status.phase=Running"), Ok(true));
        assert_eq!(m("spec.nodeName="), Ok(false));
        let err = m("spec.containers=x").unwrap_err();
        assert_eq!(err.code, 400);
        assert!(
            FieldSelector::parse("involvedObject.uid=1,reason=Killing,type=Warning", &EVENTS)
                .is_ok()
        );
        assert!(FieldSelector::parse("nonsense", &PODS).is_err());
    }
}
