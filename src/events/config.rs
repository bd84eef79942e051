//! `[events]`: writing Kubernetes Events (events.k8s.io/v1) for the restarts the daemon
//! classifies, so that `kubectl describe pod` shows what Kubernetes itself does not
//! record (an OOM kill has no Event of its own: kubernetes/kubernetes#69676).

use serde::{Deserialize, Serialize};

/// `[events]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Write one Event per classified restart, regarding the Pod, and one per outage of a
    /// discovered probe target, regarding its Service. Off by default: it
    /// needs `create` and `patch` on `events.k8s.io` events (the chart's
    /// `events.enabled` grants them).
    pub enabled: bool,
    /// At most this many writes (creates or updates) per Pod or Service per minute; what
    /// comes faster is folded into the next allowed write (the Event's series count stays
    /// exact). 1 to 60.
    pub max_per_object_per_minute: u32,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            enabled: false,
            max_per_object_per_minute: 6,
        }
    }
}
