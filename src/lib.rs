//! selfheal-exporter: measures how well Kubernetes workloads heal themselves.
//!
//! The folders follow the data:
//!
//! ```text
//!   k8s ──watch streams──▶ observe ──observations──▶ export (metrics, /metrics)
//!                            │                          ▲
//!                            ▼ deaths                   │
//!                        correlate (incidents) ◀── probe (scheduler → outcomes → outages)
//! ```
//!
//! - [`k8s`]: the API client, slim types, watch streams, workload identity, sharding.
//! - [`observe`]: the pure observer, pod statuses and kubelet Events in, observations
//!   (restarts by cause, OOM kills, recoveries) out; no I/O, no metrics library.
//! - [`probe`]: probe targets, Service discovery, the scheduler and the outage tracker.
//! - [`correlate`]: the incident log joining deaths and outages.
//! - [`events`]: Kubernetes Events (events.k8s.io/v1) for classified restarts and probe
//!   outages, opt-in: the pure planner (series, rate limit, notes) and the writer task.
//! - [`export`]: metric families, exposition, cardinality guard, the admin server.
//! - [`leader`]: active/passive leader election on a Lease.
//! - [`node`]: the node agent: kernel OOM kills from each container's memory cgroup.
//! - [`config`]: loading and checking the configuration.
//! - [`app`]: the command line and the daemon that wires the pipelines together.

pub mod app;
mod config;
mod correlate;
mod events;
mod export;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
// In the unit tests, the fuzz targets' entry points replay the committed seeds and every
// crash found (fuzz/seeds/): the regression tests of fuzzing.
#[cfg(all(test, not(feature = "fuzzing")))]
mod fuzzing;
pub mod k8s;
mod leader;
mod node;
mod observe;
mod probe;
