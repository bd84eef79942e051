//! The resource table: every resource type the lab API server serves.
//!
//! Adding a resource is one entry in [`RESOURCES`]: kind, plural, group/version,
//! whether it is namespaced, whether it has a `status` subresource, its short
//! names and the extra field-selector fields the real server supports for it.
//! Everything else (routing, discovery, storage, watch) is generic over this table.

/// Static description of one served resource type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ResourceType {
    /// `Kind`, e.g. `Pod`.
    pub kind: &'static str,
    /// Plural resource name used in URLs, e.g. `pods`.
    pub plural: &'static str,
    /// Singular name for discovery, e.g. `pod`.
    pub singular: &'static str,
    /// API group; empty for the core (legacy) group.
    pub group: &'static str,
    /// API version within the group, e.g. `v1`.
    pub version: &'static str,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// Whether the resource has a `status` subresource (then writes to the main
    /// resource ignore `.status`, and `/status` writes change only `.status`).
    pub has_status: bool,
    /// kubectl short names, e.g. `po`.
    pub short_names: &'static [&'static str],
    /// Field-selector fields beyond `metadata.name` / `metadata.namespace`.
    pub extra_fields: &'static [&'static str],
}

impl ResourceType {
    /// `apiVersion` string: `v1` for core, `group/version` otherwise.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Kind of the list object, e.g. `PodList`.
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// Whether `field` may be used in a field selector for this resource.
    pub fn supports_field(&self, field: &str) -> bool {
        field == "metadata.name"
            || (self.namespaced && field == "metadata.namespace")
            || self.extra_fields.contains(&field)
    }

    /// Index of this type in [`RESOURCES`] (the store keys its maps by it).
    pub(crate) fn index(&self) -> Option<usize> {
        RESOURCES
            .iter()
            .position(|r| r.group == self.group && r.plural == self.plural)
    }
}

/// core/v1 Pod.
pub const PODS: ResourceType = ResourceType {
    kind: "Pod",
    plural: "pods",
    singular: "pod",
    group: "",
    version: "v1",
    namespaced: true,
    has_status: true,
    short_names: &["po"],
    extra_fields: &[
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "spec.hostNetwork",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
    ],
};

/// core/v1 Event.
pub const EVENTS: ResourceType = ResourceType {
    kind: "Event",
    plural: "events",
    singular: "event",
    group: "",
    version: "v1",
    namespaced: true,
    has_status: false,
    short_names: &["ev"],
    extra_fields: &[
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    ],
};

/// core/v1 Service.
pub const SERVICES: ResourceType = ResourceType {
    kind: "Service",
    plural: "services",
    singular: "service",
    group: "",
    version: "v1",
    namespaced: true,
    has_status: true,
    short_names: &["svc"],
    extra_fields: &["spec.clusterIP", "spec.type"],
};

/// core/v1 Namespace (cluster-scoped).
pub const NAMESPACES: ResourceType = ResourceType {
    kind: "Namespace",
    plural: "namespaces",
    singular: "namespace",
    group: "",
    version: "v1",
    namespaced: false,
    has_status: true,
    short_names: &["ns"],
    extra_fields: &["status.phase"],
};

/// discovery.k8s.io/v1 EndpointSlice.
pub const ENDPOINT_SLICES: ResourceType = ResourceType {
    kind: "EndpointSlice",
    plural: "endpointslices",
    singular: "endpointslice",
    group: "discovery.k8s.io",
    version: "v1",
    namespaced: true,
    has_status: false,
    short_names: &[],
    extra_fields: &["addressType"],
};

/// coordination.k8s.io/v1 Lease.
pub const LEASES: ResourceType = ResourceType {
    kind: "Lease",
    plural: "leases",
    singular: "lease",
    group: "coordination.k8s.io",
    version: "v1",
    namespaced: true,
    has_status: false,
    short_names: &[],
    extra_fields: &[],
};

/// events.k8s.io/v1 Event: the newer Events API (`regarding`, `note`, `series`), in the
/// same storage as core Events on a real server; here a table of its own.
pub const EVENTS_V1: ResourceType = ResourceType {
    kind: "Event",
    plural: "events",
    singular: "event",
    group: "events.k8s.io",
    version: "v1",
    namespaced: true,
    has_status: false,
    short_names: &[],
    extra_fields: &[
        "regarding.kind",
        "regarding.namespace",
        "regarding.name",
        "regarding.uid",
        "reason",
        "reportingController",
        "type",
    ],
};

/// Every served resource type. Add a resource here and it is routed,
/// discoverable, stored and watchable.
pub static RESOURCES: &[ResourceType] = &[
    PODS,
    EVENTS,
    SERVICES,
    NAMESPACES,
    ENDPOINT_SLICES,
    LEASES,
    EVENTS_V1,
];

/// Looks a resource type up by group, version and plural (as found in a URL).
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceType> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// Distinct `(group, version)` pairs served under `/apis` (non-core), in table order.
pub fn api_groups() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&'static str, &'static str)> = Vec::new();
    for r in RESOURCES.iter().filter(|r| !r.group.is_empty()) {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_consistent() {
        for (i, r) in RESOURCES.iter().enumerate() {
            assert_eq!(r.index(), Some(i), "duplicate entry for {}", r.plural);
            assert_eq!(find(r.group, r.version, r.plural), Some(r));
        }
        assert_eq!(PODS.api_version(), "v1");
        assert_eq!(LEASES.api_version(), "coordination.k8s.io/v1");
        assert_eq!(EVENTS.list_kind(), "EventList");
        assert_eq!(EVENTS_V1.api_version(), "events.k8s.io/v1");
        assert!(EVENTS_V1.supports_field("regarding.uid"));
        assert!(PODS.supports_field("status.phase"));
        assert!(!NAMESPACES.supports_field("metadata.namespace"));
        assert!(!PODS.supports_field("spec.containers"));
        assert_eq!(
            api_groups(),
            vec![
                ("discovery.k8s.io", "v1"),
                ("coordination.k8s.io", "v1"),
                ("events.k8s.io", "v1")
            ]
        );
    }
}
