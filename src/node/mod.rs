//! The node agent (`selfheal-exporter node`, one per node as a DaemonSet): OOM kills
//! that no pod status shows, from the kernel's own counters in each container's memory
//! cgroup, reconciled with what the kubelet reports.
//!
//! The kubelet only learns of an OOM kill that ends a container. In a multi-process
//! container the kernel kills one process and the container lives on (cgroup v1, or v2
//! with `singleProcessOOMKill`); an OOM kill during start is `StartError`; a lost runtime
//! event makes it `Error`/137. The agent watches the pods of its own node with the
//! ordinary observer (all the cluster-wide series, for this node's pods) and, read-only:
//!
//! - [`cgroup_path`]: where each container's memory cgroup is (kubelet and runtime
//!   layouts, v1/v2 × cgroupfs/systemd);
//! - [`counters`]: the kernel's files parsed into a snapshot;
//! - [`reconcile`]: the pure state machine that turns counter moves and the kubelet's
//!   deaths into process OOM kills and reclassified deaths, each kill counted once;
//! - [`reader`]: the I/O (periodic re-read, inotify on v2 `memory.events`);
//! - [`kmsg`]: optional, the victims' names from the kernel log (`CAP_SYSLOG`);
//! - [`pods`]: what a pod object tells the agent; [`agent`]: the glue;
//!   [`metrics`]: the series only the agent exports; [`config`]: `[node]`.

pub mod agent;
pub mod cgroup_path;
pub mod config;
pub mod counters;
pub mod kmsg;
pub mod metrics;
pub mod pods;
pub mod reader;
pub mod reconcile;

#[cfg(test)]
mod fixtures;
