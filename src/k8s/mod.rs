//! The Kubernetes edge: the API client, the slim decoded types of what we read, the
//! watch streams and their backoff, the readiness of those watches, and the plain
//! Kubernetes concepts the other parts share (workload identity, quantities, shards).

pub(crate) mod client;
pub(crate) mod health;
pub(crate) mod names;
#[cfg(test)]
mod props;
pub(crate) mod quantity;
pub(crate) mod sharding;
pub mod types;
pub(crate) mod watch;
pub(crate) mod watch_backoff;
pub(crate) mod workload;
