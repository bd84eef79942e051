//! `[metrics]`: series retention, histogram buckets, the probe-kill attribution wait and
//! the cardinality guard's limit.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[metrics]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// How long a workload's series stay after its last pod is gone.
    #[serde(with = "jiff::fmt::serde::unsigned_duration::friendly::compact::required")]
    pub retention: Duration,
    /// Upper bounds (seconds) of the time-to-recover histogram buckets.
    pub time_to_recover_buckets: Vec<f64>,
    /// How long a restart reported as Error/Completed waits for the kubelet's Killing
    /// Event that would make it a liveness or startup probe kill.
    #[serde(with = "jiff::fmt::serde::unsigned_duration::friendly::compact::required")]
    pub attribution_wait: Duration,
    /// Cardinality guard: beyond this many series in one metric family, new series are
    /// dropped and counted in selfheal_series_dropped_total{family}.
    pub max_series_per_family: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            retention: Duration::from_secs(3600),
            time_to_recover_buckets: vec![
                1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
            ],
            attribution_wait: Duration::from_secs(5),
            max_series_per_family: 250_000,
        }
    }
}
