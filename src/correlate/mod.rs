//! Where the two pipelines meet: the incident log that joins container deaths seen by
//! the observer with outages seen by the prober, and the causes they share.

pub mod config;
pub mod incidents;

/// Cause label of an outage no restart explains.
pub const UNKNOWN_CAUSE: &str = "unknown";
