//! The Kubernetes edge: the API client, the slim decoded types of what we read, the
//! watch streams and their backoff, the readiness of those watches, and the plain
//! Kubernetes concepts the other parts share (workload identity, quantities, shards).

pub mod client;
pub mod health;
pub mod names;
pub mod quantity;
pub mod sharding;
pub mod types;
pub mod watch;
pub mod watch_backoff;
pub mod workload;
