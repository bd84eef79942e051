//! # selfheal-lab
//!
//! A lab for `selfheal-exporter`, so it can be developed and tested without a
//! Kubernetes cluster. This part provides [`apiserver`]: an in-memory
//! Kubernetes API server over plain HTTP that kube-rs and kubectl talk to as
//! if it were real (list/watch with resourceVersions, bookmarks and 410
//! Expired, pagination, label/field selectors, status subresources, merge /
//! JSON / strategic-merge patches, server-side apply with field ownership
//! (`managedFields`, 409 conflicts: enough for kube-lease-manager's leader
//! election on Leases), `Status` errors, discovery), plus fault injection
//! (dropped watches, 500/429 answers, history compaction).
//!
//! ```no_run
//! use selfheal_lab::apiserver::{ApiServer, ApiServerConfig, Patch, PODS};
//! use serde_json::json;
//!
//! # async fn demo() -> anyhow::Result<()> {
//! let lab = ApiServer::start(ApiServerConfig::default()).await?; // 127.0.0.1:<free port>
//! let url = lab.url(); // "http://127.0.0.1:PORT" — use as kube::Config::cluster_url
//! lab.write_kubeconfig("/tmp/lab.kubeconfig")?; // for kubectl --kubeconfig
//!
//! // Direct, in-process access: same semantics and watch events as HTTP.
//! let store = lab.store();
//! store.create(&PODS, "default", json!({
//!     "metadata": {"name": "api", "labels": {"app": "grade"}},
//!     "spec": {"containers": [{"name": "api", "image": "img:1"}]},
//! }))?;
//! store.merge_status(&PODS, "default", "api", json!({"phase": "Running"}))?;
//! store.patch_status(&PODS, "default", "api", &Patch::Merge(json!({"status": {"podIP": "10.0.0.7"}})))?;
//! let pod = store.get(&PODS, "default", "api")?;
//! assert_eq!(pod["status"]["phase"], "Running");
//!
//! // Faults.
//! lab.faults().drop_watches();      // cut every open watch
//! lab.faults().fail_next(3, 429);   // next 3 API requests get 429 + Retry-After: 1
//! lab.faults().compact();           // resumes now get 410 Expired → clients relist
//!
//! lab.shutdown().await;
//! # let _ = url;
//! # Ok(())
//! # }
//! ```
//!
//! The same faults are reachable over HTTP: `POST /lab/faults/drop-watches`,
//! `POST /lab/faults/fail?count=N&status=500|429|503`, `POST /lab/faults/compact`,
//! `POST /lab/faults/history?size=N`, `POST /lab/faults/clear`, and
//! `GET /lab/state` reports the revision, history length and open watches.
//!
//! The experiment's other pieces: [`grade_api`] (the memory-hungry grade API a
//! pod runs), [`load`] (virtual users that record the outage windows clients
//! see) and [`services`] (EndpointSlices and a NodePort proxy to ready pods).
//! [`testkit`] is the test kit: what the root crate's benches and tests share, and
//! nothing the lab itself runs on: the `/proc` readers, the RSS sampler, the realistic
//! pod fleet, the Prometheus text parser and the daemon process.

pub mod apiserver;
// The cluster driver and the test kit are tools for this repository's tests and demo,
// not an API anyone links against: their many small records go without per-field docs
// (each module and type says what it owns). The rest of the workspace is documented.
#[allow(missing_docs)]
pub mod cluster;
pub mod demo;
pub mod grade_api;
pub mod http_get;
pub mod kubelet;
pub mod load;
pub mod services;
#[allow(missing_docs)]
pub mod testkit;
