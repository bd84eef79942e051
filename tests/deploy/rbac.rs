//! 4. RBAC: read-only, on exactly what the exporter observes; its only writes are the
//!    Lease (with leader election) and Events (with `[events]`), each only when enabled.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::render::{BASE, EVENTS, HELM_VALUES, all_renders, chart, kustomization};
use crate::rendering::{env_var, leader_election_of};
use crate::schemas::assert_keys_within;
use crate::yaml::{id, kind, namespace, str_of};

/// What the exporter may read, cluster-wide: (API group, resource). Verbs: get, list, watch.
const CLUSTER_READ: [(&str, &str); 5] = [
    ("", "pods"),
    ("", "events"),
    ("", "services"),
    ("", "namespaces"),
    ("discovery.k8s.io", "endpointslices"),
];
const READ_VERBS: [&str; 3] = ["get", "list", "watch"];

/// (API group, resource, verb, resource name or "" for any).
type Grant = (String, String, String, String);

fn is_lease_rule(rule: &Value) -> bool {
    rule["apiGroups"] == serde_json::json!(["coordination.k8s.io"])
        && rule["resources"] == serde_json::json!(["leases"])
}

fn grants(role: &Value, what: &str) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_array().expect("rules") {
        // resourceNames only narrow the Lease rule; nonResourceURLs never appear.
        let allowed: &[&str] = if is_lease_rule(rule) {
            &["apiGroups", "resources", "verbs", "resourceNames"]
        } else {
            &["apiGroups", "resources", "verbs"]
        };
        assert_keys_within(
            rule,
            allowed,
            &format!("{what}: no resourceNames (but on the Lease) / nonResourceURLs"),
        );
        let list = |key: &str| -> Vec<String> {
            rule[key]
                .as_array()
                .unwrap_or_else(|| panic!("{what}: rule without {key}"))
                .iter()
                .map(|v| v.as_str().expect("string").to_owned())
                .collect()
        };
        let names = match rule.get("resourceNames") {
            Some(_) => list("resourceNames"),
            None => vec![String::new()],
        };
        for group in list("apiGroups") {
            for resource in list("resources") {
                for verb in list("verbs") {
                    assert!(
                        group != "*" && resource != "*" && verb != "*",
                        "{what}: no wildcards"
                    );
                    for name in &names {
                        out.insert((group.clone(), resource.clone(), verb.clone(), name.clone()));
                    }
                }
            }
        }
    }
    out
}

fn read_grants(resources: &[(&str, &str)]) -> BTreeSet<Grant> {
    resources
        .iter()
        .flat_map(|(group, resource)| {
            READ_VERBS.map(|verb| {
                (
                    group.to_string(),
                    resource.to_string(),
                    verb.to_string(),
                    String::new(),
                )
            })
        })
        .collect()
}

/// What leader election may do with its Lease `name`: create (which cannot be limited to
/// a name), get and patch (lock, renew, release) that one Lease. No update, list, watch
/// or delete.
fn lease_grants(name: &str) -> BTreeSet<Grant> {
    let grant = |verb: &str, name: &str| {
        (
            "coordination.k8s.io".to_owned(),
            "leases".to_owned(),
            verb.to_owned(),
            name.to_owned(),
        )
    };
    [
        grant("create", ""),
        grant("get", name),
        grant("patch", name),
    ]
    .into_iter()
    .collect()
}

/// What `[events]` may do: create an Event, patch it (the next occurrence of its series).
fn event_grants() -> BTreeSet<Grant> {
    ["create", "patch"]
        .map(|verb| {
            (
                "events.k8s.io".to_owned(),
                "events".to_owned(),
                verb.to_owned(),
                String::new(),
            )
        })
        .into_iter()
        .collect()
}

fn grants_events(granted: &BTreeSet<Grant>) -> bool {
    granted
        .iter()
        .any(|(group, _, _, _)| group == "events.k8s.io")
}

/// Whether the workload's container switches `[events]` on.
fn events_enabled(render: &crate::render::Render, workload: &Value) -> bool {
    let Some(enabled) = env_var(workload, "SELFHEAL_EVENTS__ENABLED") else {
        return false;
    };
    assert_eq!(enabled["value"], "true", "{}: {enabled}", render.what);
    true
}

#[test]
fn rbac_grants_read_access_only() {
    for render in all_renders() {
        let what = &render.what;
        let workload = render.workload();
        let account = str_of(workload, "/spec/template/spec/serviceAccountName");
        let home = namespace(workload);
        assert!(
            render.find("ServiceAccount", home, account).is_some(),
            "{what}: the {}'s ServiceAccount {account} is rendered",
            kind(workload)
        );
        let cluster_roles = render.of_kind("ClusterRole");
        let roles = render.of_kind("Role");
        assert!(
            !cluster_roles.is_empty() || !roles.is_empty(),
            "{what}: no RBAC"
        );
        // The Event writes: a role of their own granting exactly create and patch, rendered
        // exactly when [events] is on (cluster-wide, or in each observed namespace).
        let events = events_enabled(render, workload);
        let mut event_roles = Vec::new();
        for role in cluster_roles.iter().chain(&roles) {
            let granted = grants(role, what);
            if grants_events(&granted) {
                assert!(
                    events,
                    "{what}: {} grants Event writes without [events]",
                    id(role)
                );
                assert_eq!(granted, event_grants(), "{what}: {}", id(role));
                event_roles.push(*role);
            }
        }
        let cluster_roles: Vec<&Value> = cluster_roles
            .into_iter()
            .filter(|role| !event_roles.contains(role))
            .collect();
        let roles: Vec<&Value> = roles
            .into_iter()
            .filter(|role| !event_roles.contains(role))
            .collect();
        if events {
            let mut expected: Vec<(&str, &str)> = if cluster_roles.is_empty() {
                roles
                    .iter()
                    .filter(|role| !grants(role, what).iter().any(|g| g.1 == "leases"))
                    .map(|role| (kind(role), namespace(role)))
                    .collect()
            } else {
                vec![("ClusterRole", "")]
            };
            let mut found: Vec<(&str, &str)> = event_roles
                .iter()
                .map(|role| (kind(role), namespace(role)))
                .collect();
            expected.sort_unstable();
            found.sort_unstable();
            assert_eq!(
                found, expected,
                "{what}: Event writes where the exporter reads, once"
            );
        }
        for role in &cluster_roles {
            assert_eq!(
                grants(role, what),
                read_grants(&CLUSTER_READ),
                "{what}: {} grants get/list/watch on exactly pods, events, services, namespaces \
                 and endpointslices",
                id(role)
            );
        }
        // The one exception to read-only: leader election's Lease, in a Role of the
        // exporter's own namespace, exactly when leader election is on.
        let lease = leader_election_of(render, workload);
        let mut lease_roles = 0;
        for role in &roles {
            let granted = grants(role, what);
            if granted.iter().any(|(group, resource, _, _)| {
                group == "coordination.k8s.io" && resource == "leases"
            }) {
                lease_roles += 1;
                assert_eq!(
                    namespace(role),
                    home,
                    "{what}: {}: the Lease Role lives in the exporter's namespace",
                    id(role)
                );
                let name = lease.as_deref().unwrap_or_else(|| {
                    panic!(
                        "{what}: {} grants on leases without leader election",
                        id(role)
                    )
                });
                assert_eq!(granted, lease_grants(name), "{what}: {}", id(role));
                continue;
            }
            let namespaced: Vec<_> = CLUSTER_READ
                .into_iter()
                .filter(|(_, r)| *r != "namespaces")
                .collect();
            assert_eq!(granted, read_grants(&namespaced), "{what}: {}", id(role));
        }
        assert_eq!(
            lease_roles,
            usize::from(lease.is_some()),
            "{what}: one Lease Role with leader election, none without"
        );
        // Every binding binds a rendered role to the workload's ServiceAccount, and
        // every role is bound.
        let mut bound = BTreeSet::new();
        for binding in render
            .of_kind("ClusterRoleBinding")
            .into_iter()
            .chain(render.of_kind("RoleBinding"))
        {
            let role_kind = str_of(binding, "/roleRef/kind");
            let role_ns = if role_kind == "Role" {
                namespace(binding)
            } else {
                ""
            };
            let role = render
                .find(role_kind, role_ns, str_of(binding, "/roleRef/name"))
                .unwrap_or_else(|| {
                    panic!("{what}: {} binds a role that is not rendered", id(binding))
                });
            bound.insert(id(role));
            let subjects = binding["subjects"].as_array().expect("subjects");
            assert_eq!(subjects.len(), 1, "{what}: {}", id(binding));
            assert_eq!(subjects[0]["kind"], "ServiceAccount");
            assert_eq!(subjects[0]["name"], account, "{what}: {}", id(binding));
            assert_eq!(subjects[0]["namespace"], home, "{what}: {}", id(binding));
        }
        for role in cluster_roles.iter().chain(&roles).chain(&event_roles) {
            assert!(bound.contains(&id(role)), "{what}: {} is bound", id(role));
        }
    }
    // [events] is off by default: the base and the default chart grant no write on Events.
    for render in [kustomization(BASE), chart(None)].into_iter().flatten() {
        assert!(
            !events_enabled(render, render.workload()),
            "{}",
            render.what
        );
    }
    for render in [kustomization(EVENTS), chart(HELM_VALUES[1])]
        .into_iter()
        .flatten()
    {
        assert!(events_enabled(render, render.workload()), "{}", render.what);
    }
    // The namespaced chart creates nothing cluster-wide.
    if let Some(namespaced) = chart(HELM_VALUES[2]) {
        assert!(namespaced.of_kind("ClusterRole").is_empty());
        assert!(namespaced.of_kind("ClusterRoleBinding").is_empty());
        // Its read Roles (it also writes Events: a Role "-events" beside each).
        let mut role_namespaces: Vec<_> = namespaced
            .of_kind("Role")
            .into_iter()
            .filter(|role| !crate::yaml::name(role).ends_with("-events"))
            .map(namespace)
            .collect();
        role_namespaces.sort();
        assert_eq!(role_namespaces, ["grade-submission", "team-a"]);
    }
}
