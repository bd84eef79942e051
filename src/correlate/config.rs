//! `[incidents]`: how much the incident log remembers.

use serde::{Deserialize, Serialize};

/// `[incidents]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IncidentsConfig {
    /// How many restarts, and how many outages, `/api/v1/incidents` remembers.
    pub capacity: usize,
}

impl Default for IncidentsConfig {
    fn default() -> Self {
        IncidentsConfig { capacity: 500 }
    }
}
