//! YAML documents as JSON values, and the accessors the checks use.

use std::collections::BTreeSet;

use serde_json::Value;

/// The non-empty documents of a (multi-document) YAML stream.
pub(crate) fn yaml_documents(text: &str, what: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(text)
        .unwrap_or_else(|error| panic!("{what} is not valid YAML: {error}\n{text}"))
        .into_iter()
        .filter(|document| !document.is_null())
        .collect()
}

pub(crate) fn yaml(text: &str, what: &str) -> Value {
    serde_saphyr::from_str::<Value>(text)
        .unwrap_or_else(|error| panic!("{what} is not valid YAML: {error}"))
}

/// `value` with every number as a float, so that `3` and `3.0` (Helm's fromYaml/toYaml
/// turns integers into floats) compare equal.
pub(crate) fn numbers_as_floats(value: &Value) -> Value {
    match value {
        Value::Number(number) => serde_json::json!(number.as_f64()),
        Value::Array(items) => Value::Array(items.iter().map(numbers_as_floats).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, value)| (key.clone(), numbers_as_floats(value)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Where `a` and `b` first differ, as a JSON pointer with both values, for messages.
pub(crate) fn first_difference(a: &Value, b: &Value, at: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|key| {
                let (l, r) = (
                    x.get(key).unwrap_or(&Value::Null),
                    y.get(key).unwrap_or(&Value::Null),
                );
                first_difference(l, r, &format!("{at}/{key}"))
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (l, r))| first_difference(l, r, &format!("{at}/{i}"))),
        _ if a == b => None,
        _ => {
            let short = |v: &Value| {
                let text = v.to_string();
                if text.len() > 300 {
                    format!("{}…", text.chars().take(300).collect::<String>())
                } else {
                    text
                }
            };
            Some(format!("at {at}: {} vs {}", short(a), short(b)))
        }
    }
}

pub(crate) fn str_of<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

pub(crate) fn kind(object: &Value) -> &str {
    str_of(object, "/kind")
}

pub(crate) fn name(object: &Value) -> &str {
    str_of(object, "/metadata/name")
}

pub(crate) fn namespace(object: &Value) -> &str {
    str_of(object, "/metadata/namespace")
}

pub(crate) fn id(object: &Value) -> String {
    format!("{} {}/{}", kind(object), namespace(object), name(object))
}
