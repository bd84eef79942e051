//! What the real server refuses on an update that the store would otherwise accept:
//! today the immutable fields of an events.k8s.io/v1 Event
//! (`pkg/apis/core/validation/events.go`, `ValidateEventUpdate`: once created, only
//! `series` and metadata may change; the error names the core/v1 field, e.g.
//! `message` for `note`, as the real server's does; kubernetes v1.37.2).

use serde_json::Value;

use super::error::{ApiError, ApiResult};
use super::resources::{EVENTS_V1, ResourceType};

/// events.k8s.io/v1 fields that an update must leave as they are, with the core/v1 name
/// the real server's error uses.
const IMMUTABLE_EVENT_FIELDS: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("reason", "reason"),
    ("note", "message"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
    ("type", "type"),
    ("eventTime", "eventTime"),
    ("action", "action"),
    ("related", "related"),
    ("reportingController", "reportingController"),
    ("reportingInstance", "reportingInstance"),
];

/// Refuses an update of an object of type `rt` from `old` to `new` that the real server
/// would refuse (422 Invalid, naming the field).
pub fn check_update(rt: &ResourceType, name: &str, old: &Value, new: &Value) -> ApiResult<()> {
    if *rt != EVENTS_V1 {
        return Ok(());
    }
    for (field, core_name) in IMMUTABLE_EVENT_FIELDS {
        let (before, after) = (old.get(*field), new.get(*field));
        if before != after {
            let shown = after.map_or_else(|| "null".to_owned(), show);
            return Err(ApiError::invalid(
                rt.kind,
                name,
                format!("{core_name}: Invalid value: {shown}: field is immutable"),
            ));
        }
    }
    Ok(())
}

/// A value as the real server quotes it: strings in quotes, objects as JSON.
fn show(value: &Value) -> String {
    match value {
        Value::String(text) => format!("{text:?}"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::apiserver::resources::PODS;

    #[test]
    fn an_events_v1_note_is_immutable_and_its_series_is_not() {
        let old = json!({"note": "first", "reason": "OOMKilled"});
        let series = json!({"note": "first", "reason": "OOMKilled",
            "series": {"count": 2, "lastObservedTime": "2026-12-03T10:00:00.000000Z"}});
        assert!(check_update(&EVENTS_V1, "e", &old, &series).is_ok());
        let note = json!({"note": "second", "reason": "OOMKilled"});
        let error = check_update(&EVENTS_V1, "e", &old, &note).expect_err("refused");
        assert_eq!(error.code, 422);
        assert!(
            error
                .message
                .contains("message: Invalid value: \"second\": field is immutable"),
            "{}",
            error.message
        );
        assert!(check_update(&PODS, "p", &old, &note).is_ok());
    }
}
