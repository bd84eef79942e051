//! Property tests of what the API server and the user send to the Kubernetes edge: the
//! slim decoders (arbitrary JSON, and real objects cut short or with any field replaced),
//! quantities, names and label selectors. Invariants: no panic; a value is decoded or
//! refused, never half-read; quantities the Kubernetes grammar writes parse to their
//! bytes.

use proptest::prelude::*;
use serde_json::{Value, json};

use super::names::{check_label_selector, is_dns_label, is_dns_subdomain};
use super::quantity::parse_bytes;
use super::types::{SlimEvent, SlimPod, SlimService};

/// A pod as a 1.37 kubelet reports it, with the fields the exporter reads.
fn real_pod() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "api-0", "namespace": "ns", "uid": "u-1",
                     "labels": {"app": "api"}, "resourceVersion": "12",
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet",
                                          "name": "api", "uid": "s-1", "controller": true}]},
        "spec": {"containers": [{"name": "api", "image": "x",
                                 "resources": {"limits": {"memory": "48Mi"}},
                                 "restartPolicyRules": [{"action": "Restart",
                                     "exitCodes": {"operator": "In", "values": [42]}}]}],
                 "initContainers": [{"name": "sidecar", "restartPolicy": "Always"}],
                 "terminationGracePeriodSeconds": 30},
        "status": {"phase": "Running", "reason": null,
                   "conditions": [{"type": "Ready", "status": "True",
                                   "lastTransitionTime": "2026-12-03T06:00:00Z"}],
                   "containerStatuses": [{"name": "api", "ready": true, "restartCount": 2,
                       "containerID": "containerd://b",
                       "state": {"running": {"startedAt": "2026-12-03T06:00:00Z"}},
                       "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137,
                           "finishedAt": "2026-12-03T05:59:58Z", "containerID": "containerd://a"}},
                       "resources": {"limits": {"memory": "64Mi"}}}]}
    })
}

fn real_event() -> Value {
    json!({
        "metadata": {"name": "api-0.1", "namespace": "ns", "uid": "e-1"},
        "involvedObject": {"kind": "Pod", "namespace": "ns", "name": "api-0", "uid": "u-1",
                           "fieldPath": "spec.containers{api}"},
        "reason": "Killing", "type": "Normal", "count": 3,
        "message": "Container api failed liveness probe, will be restarted",
        "firstTimestamp": "2026-12-03T06:00:00Z", "lastTimestamp": "2026-12-03T06:00:09Z",
        "source": {"component": "kubelet"}
    })
}

fn real_service() -> Value {
    json!({
        "metadata": {"name": "api", "namespace": "ns",
                     "annotations": {"selfheal.io/probe": "true", "selfheal.io/probe-path": "/healthz"}},
        "spec": {"type": "NodePort", "clusterIP": "10.96.0.7", "selector": {"app": "api"},
                 "ports": [{"name": "http", "port": 3000, "targetPort": 3000, "nodePort": 31000}]}
    })
}

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,10}", inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// Every path of `value` that leads to a value (objects and arrays walked).
fn paths(value: &Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    out.push(prefix.clone());
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                prefix.push(key.clone());
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(items) => {
            for (index, child) in items.iter().enumerate() {
                prefix.push(index.to_string());
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

/// `value` with the value at `path` replaced by `with`.
fn replaced(mut value: Value, path: &[String], with: Value) -> Value {
    let mut slot = &mut value;
    for key in path {
        slot = match slot {
            Value::Object(map) => match map.get_mut(key) {
                Some(child) => child,
                None => return value,
            },
            Value::Array(items) => match key.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                Some(child) => child,
                None => return value,
            },
            _ => return value,
        };
    }
    *slot = with;
    value
}

fn decode_all(bytes: &[u8]) {
    // Each decoder either reads the object or refuses it: no panic either way.
    let _ = serde_json::from_slice::<SlimPod>(bytes);
    let _ = serde_json::from_slice::<SlimEvent>(bytes);
    let _ = serde_json::from_slice::<SlimService>(bytes);
}

#[test]
fn decoders_survive_real_objects_cut_anywhere() {
    // Every prefix of each object (a connection dropped mid-object).
    for object in [real_pod(), real_event(), real_service()] {
        let text = object.to_string();
        for end in 0..=text.len() {
            decode_all(&text.as_bytes()[..end]);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn decoders_survive_arbitrary_json(value in any_json()) {
        decode_all(value.to_string().as_bytes());
    }

    #[test]
    fn decoders_survive_any_field_of_a_real_object_replaced(
        pick in any::<prop::sample::Index>(),
        with in any_json(),
    ) {
        for object in [real_pod(), real_event(), real_service()] {
            let mut all = Vec::new();
            paths(&object, &mut Vec::new(), &mut all);
            let path = &all[pick.index(all.len())];
            decode_all(replaced(object, path, with.clone()).to_string().as_bytes());
        }
    }

    #[test]
    fn quantities_never_panic(text in ".{0,24}") {
        let _ = parse_bytes(&text);
    }

    #[test]
    fn quantities_in_the_kubernetes_grammar_parse_to_their_bytes(
        whole in 0u64..100_000,
        suffix in prop::sample::select(vec![
            ("", 1u64), ("k", 1_000), ("M", 1_000_000), ("G", 1_000_000_000),
            ("Ki", 1 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30),
        ]),
    ) {
        let text = format!("{whole}{}", suffix.0);
        prop_assert_eq!(parse_bytes(&text), Ok(whole * suffix.1), "{}", text);
    }

    #[test]
    fn names_and_selectors_never_panic(text in ".{0,80}") {
        let label = is_dns_label(&text);
        let subdomain = is_dns_subdomain(&text);
        prop_assert!(!label || subdomain, "a DNS label is a subdomain: {:?}", text);
        let _ = check_label_selector(&text);
    }

    #[test]
    fn well_formed_selectors_pass(
        keys in prop::collection::vec("[a-z][a-z0-9.-]{0,10}/?[a-z0-9]{1,8}", 1..4),
        values in prop::collection::vec("[a-z0-9]{0,8}", 4),
        ops in prop::collection::vec(prop::sample::select(vec!["=", "==", "!="]), 4),
    ) {
        let selector = keys
            .iter()
            .zip(values.iter().zip(&ops))
            .map(|(key, (value, op))| format!("{key}{op}{value}"))
            .collect::<Vec<_>>()
            .join(",");
        prop_assert_eq!(check_label_selector(&selector), Ok(()), "{}", selector);
    }
}
