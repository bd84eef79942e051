//! What the server fills in and checks when an object is created: system
//! metadata (uid, creationTimestamp), name validation and `generateName`, and
//! per-type defaulting the real server's registry strategies perform (pods get
//! `restartPolicy: Always` and friends plus a reset `status` with `phase:
//! Pending` and `qosClass`; services and namespaces get a fresh status;
//! namespaces get the `kubernetes.io/metadata.name` label).

use serde_json::{Map, Value, json};

use super::error::{ApiError, ApiResult};
use super::resources::{NAMESPACES, PODS, ResourceType, SERVICES};

/// A random UID in the UUID v4 layout the real server uses.
pub fn new_uid() -> String {
    let hi = fastrand::u64(..);
    let lo = fastrand::u64(..);
    let b = ((hi as u128) << 64) | lo as u128;
    // version 4, variant 10xx
    let b = (b & !(0xf << 76)) | (0x4 << 76);
    let b = (b & !(0x3 << 62)) | (0x2 << 62);
    let h = format!("{b:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Now, RFC 3339 UTC with whole seconds (`2024-05-01T12:00:00Z`), like `metav1.Time`.
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// `generateName` suffix: 5 characters from the real server's alphabet.
pub fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| char::from(ALPHABET[fastrand::usize(..ALPHABET.len())]))
        .collect()
}

/// RFC 1123 DNS subdomain (names of most objects).
pub fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

/// RFC 1123 DNS label (namespace and service names).
pub fn is_dns_label(name: &str) -> bool {
    is_dns_subdomain(name) && name.len() <= 63 && !name.contains('.')
}

/// Validates the name of a new object of type `rt`, returning 422 if invalid.
pub fn validate_name(rt: &ResourceType, name: &str) -> ApiResult<()> {
    let label_only = *rt == NAMESPACES || *rt == SERVICES;
    let ok = if label_only {
        is_dns_label(name)
    } else {
        is_dns_subdomain(name)
    };
    if ok {
        Ok(())
    } else {
        let what = if label_only {
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"
        } else {
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
        };
        Err(ApiError::invalid(
            rt.kind,
            name,
            format!("metadata.name: Invalid value: \"{name}\": {what}"),
        ))
    }
}

fn obj_mut<'a>(v: &'a mut Value, key: &str) -> Option<&'a mut Map<String, Value>> {
    let map = v.as_object_mut()?;
    let entry = map.entry(key.to_string()).or_insert_with(|| json!({}));
    if !entry.is_object() {
        *entry = json!({});
    }
    entry.as_object_mut()
}

fn set_default(map: &mut Map<String, Value>, key: &str, value: Value) {
    if map.get(key).is_none_or(Value::is_null) {
        map.insert(key.to_string(), value);
    }
}

/// Quality-of-service class from container resources, as the real server computes it.
pub fn pod_qos_class(spec: &Value) -> &'static str {
    let containers: Vec<&Value> = ["containers", "initContainers"]
        .iter()
        .filter_map(|k| spec.get(*k).and_then(Value::as_array))
        .flatten()
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in &containers {
        let requests = c.pointer("/resources/requests").and_then(Value::as_object);
        let limits = c.pointer("/resources/limits").and_then(Value::as_object);
        if requests.is_some_and(|r| !r.is_empty()) || limits.is_some_and(|l| !l.is_empty()) {
            any = true;
        }
        for res in ["cpu", "memory"] {
            let limit = limits.and_then(|l| l.get(res));
            // requests default to limits
            let request = requests.and_then(|r| r.get(res)).or(limit);
            if limit.is_none() || request != limit {
                guaranteed = false;
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// Applies type-specific checks and defaults to a new object (already an
/// object with `metadata.name` set). With `keep_status` the body's status is
/// kept (in-process seeding shortcut), otherwise it is reset like the real server.
pub fn on_create(rt: &ResourceType, obj: &mut Value, keep_status: bool) -> ApiResult<()> {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if *rt == PODS {
        let containers_ok = obj
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .is_some_and(|c| !c.is_empty());
        if !containers_ok {
            return Err(ApiError::invalid(
                "Pod",
                &name,
                "spec.containers: Required value",
            ));
        }
        if let Some(spec) = obj_mut(obj, "spec") {
            set_default(spec, "restartPolicy", json!("Always"));
            set_default(spec, "terminationGracePeriodSeconds", json!(30));
            set_default(spec, "dnsPolicy", json!("ClusterFirst"));
            set_default(spec, "schedulerName", json!("default-scheduler"));
            set_default(spec, "enableServiceLinks", json!(true));
            set_default(spec, "priority", json!(0));
            for list in ["containers", "initContainers"] {
                if let Some(cs) = spec.get_mut(list).and_then(Value::as_array_mut) {
                    for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                        if c.get("name")
                            .and_then(Value::as_str)
                            .is_none_or(str::is_empty)
                        {
                            return Err(ApiError::invalid(
                                "Pod",
                                &name,
                                format!("spec.{list}[].name: Required value"),
                            ));
                        }
                        let image = c.get("image").and_then(Value::as_str).unwrap_or_default();
                        let tag = image
                            .rsplit('/')
                            .next()
                            .and_then(|last| last.split_once(':'))
                            .map(|(_, t)| t);
                        let policy = if tag.is_none_or(|t| t == "latest") {
                            "Always"
                        } else {
                            "IfNotPresent"
                        };
                        set_default(c, "imagePullPolicy", json!(policy));
                        set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
                        set_default(c, "terminationMessagePolicy", json!("File"));
                        set_default(c, "resources", json!({}));
                    }
                }
            }
        }
        if !keep_status {
            let qos = pod_qos_class(obj.get("spec").unwrap_or(&Value::Null));
            if let Some(map) = obj.as_object_mut() {
                map.insert(
                    "status".into(),
                    json!({"phase": "Pending", "qosClass": qos}),
                );
            }
        }
    } else if *rt == NAMESPACES {
        if let Some(labels) = obj.get_mut("metadata").and_then(|m| obj_mut(m, "labels")) {
            labels.insert("kubernetes.io/metadata.name".into(), json!(name));
        }
        if let Some(spec) = obj_mut(obj, "spec") {
            set_default(spec, "finalizers", json!(["kubernetes"]));
        }
        if !keep_status && let Some(map) = obj.as_object_mut() {
            map.insert("status".into(), json!({"phase": "Active"}));
        }
    } else if *rt == SERVICES {
        if let Some(spec) = obj_mut(obj, "spec") {
            set_default(spec, "type", json!("ClusterIP"));
            set_default(spec, "sessionAffinity", json!("None"));
        }
        if !keep_status && let Some(map) = obj.as_object_mut() {
            map.insert("status".into(), json!({"loadBalancer": {}}));
        }
    } else if rt.has_status
        && !keep_status
        && let Some(map) = obj.as_object_mut()
    {
        map.remove("status");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_and_time_shapes() {
        let u = new_uid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_ne!(u, new_uid());
        let t = now_rfc3339();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.ends_with('Z'));
        assert_eq!(random_suffix().len(), 5);
    }

    #[test]
    fn names() {
        assert!(is_dns_subdomain("grade-submission-api.v1"));
        assert!(!is_dns_subdomain("Grade"));
        assert!(!is_dns_subdomain("-a"));
        assert!(is_dns_label("kube-system"));
        assert!(!is_dns_label("a.b"));
        assert_eq!(validate_name(&NAMESPACES, "a.b").unwrap_err().code, 422);
    }

    #[test]
    fn pod_defaults_and_qos() {
        let mut p = json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "c", "image": "rslim087/api:stateful",
             "resources": {"requests": {"memory": "64Mi", "cpu": "128m"}, "limits": {"memory": "64Mi"}}}
        ]}, "status": {"phase": "Running"}});
        on_create(&PODS, &mut p, false).unwrap();
        assert_eq!(p["spec"]["restartPolicy"], "Always");
        assert_eq!(
            p["spec"]["containers"][0]["imagePullPolicy"],
            "IfNotPresent"
        );
        assert_eq!(
            p["status"],
            json!({"phase": "Pending", "qosClass": "Burstable"})
        );
        let g = json!({"containers": [{"resources": {"limits": {"memory": "1", "cpu": "1"}}}]});
        assert_eq!(pod_qos_class(&g), "Guaranteed");
        assert_eq!(pod_qos_class(&json!({"containers": [{}]})), "BestEffort");
        let mut bad = json!({"metadata": {"name": "p"}, "spec": {}});
        assert_eq!(on_create(&PODS, &mut bad, false).unwrap_err().code, 422);
    }
}
