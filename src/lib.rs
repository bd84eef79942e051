//! selfheal-exporter: measures how well Kubernetes workloads heal themselves.
//!
//! Data flows one way: the watch stream ([`watch`]) feeds the pure [`observer`], whose
//! observations update the Prometheus [`metrics`], served by [`admin`].

pub mod admin;
pub mod cardinality;
pub mod client;
pub mod config;
pub mod exposition;
pub mod health;
pub mod incidents;
pub mod kube_types;
pub mod leader;
pub mod metrics;
pub mod observer;
pub mod prober;
pub mod quantity;
pub mod sharding;
pub mod shutdown;
pub mod watch;
pub mod watch_backoff;
pub mod workload;
