//! One component at a time, for fault tests and chaos by hand (`selfheal-lab cluster
//! stop | start | compact`): stop a component (SIGTERM, or SIGKILL as a crash), start it
//! again with the command line `up` gave it and wait until it serves, and compact etcd at
//! its current revision so that watches resumed from an older resource version get
//! 410 Gone and relist.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use super::components::{self, kubectl, tcp_open, wait_for};
use super::error::{ClusterError, Result};
use super::layout::Layout;
use super::pki::Pki;
use super::processes::{self, COMPONENTS, Spec};

/// etcd's client address (its gRPC gateway serves JSON there too).
const ETCD: &str = "127.0.0.1:2379";

/// The command line `up` starts `name` with, or an error naming the known components.
fn spec(layout: &Layout, name: &str) -> Result<Spec> {
    let pki = Pki::new(layout.pki());
    Ok(match name {
        "etcd" => components::etcd(layout),
        "kube-apiserver" => components::apiserver(layout, &pki),
        "kube-controller-manager" => components::controller_manager(layout, &pki),
        "kube-scheduler" => components::scheduler(layout),
        "containerd" => components::containerd(layout),
        "kubelet" => components::kubelet(layout),
        "kube-proxy" => components::kube_proxy(layout),
        other => {
            return Err(ClusterError::Setup(format!(
                "no component {other:?}; the components are {COMPONENTS:?}"
            )));
        }
    })
}

/// Stops `name`: SIGKILL at once if `kill` (a crash: nothing is flushed or released),
/// else SIGTERM with 10 s to exit. Returns whether it ran.
pub fn stop(layout: &Layout, name: &str, kill: bool) -> Result<bool> {
    spec(layout, name)?;
    if kill && let Some(pid) = processes::running(layout, name) {
        processes::signal(pid, libc::SIGKILL);
    }
    let grace = if kill {
        Duration::ZERO
    } else {
        Duration::from_secs(10)
    };
    Ok(processes::stop(layout, name, grace))
}

/// Starts `name` again (it must not run) and waits until it serves: etcd its port, the
/// API server `/readyz`, the others a second alive.
pub fn start(layout: &Layout, name: &str) -> Result<()> {
    let spec = spec(layout, name)?;
    if let Some(pid) = processes::running(layout, name) {
        return Err(ClusterError::Setup(format!(
            "{name} already runs (pid {pid}); stop it first"
        )));
    }
    processes::start(layout, &spec)?;
    match name {
        "etcd" => wait_for(layout, name, "etcd on 127.0.0.1:2379", 60, || {
            tcp_open(ETCD)
        }),
        "kube-apiserver" => wait_for(layout, name, "kube-apiserver /readyz", 120, || {
            kubectl(layout, ["get", "--raw", "/readyz"]).is_ok_and(|s| s.trim() == "ok")
        }),
        _ => {
            std::thread::sleep(Duration::from_secs(1));
            match processes::running(layout, name) {
                Some(_) => Ok(()),
                None => Err(ClusterError::Setup(format!(
                    "{name} exited within a second of its start; see {}",
                    layout.log(name).display()
                ))),
            }
        }
    }
}

/// A POST of `body` (JSON) to etcd's gateway; the answer's JSON.
fn etcd_post(path: &str, body: &str) -> Result<serde_json::Value> {
    let failed = |what: String| ClusterError::Setup(format!("etcd {path}: {what}"));
    let mut stream = TcpStream::connect(ETCD).map_err(|e| failed(e.to_string()))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| failed(e.to_string()))?;
    write!(
        stream,
        "POST {path} HTTP/1.0\r\nHost: {ETCD}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| failed(e.to_string()))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| failed(e.to_string()))?;
    let (head, json) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| failed(format!("no HTTP answer: {response:?}")))?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        return Err(failed(format!("{head}: {json}")));
    }
    serde_json::from_str(json).map_err(|e| failed(format!("{e}: {json}")))
}

/// Compacts etcd's history at its current revision (physically: done when this returns)
/// and returns that revision. A watch resumed from an older resource version then gets
/// 410 Gone from the API server ("too old resource version").
pub fn compact_etcd() -> Result<i64> {
    // Any range read answers with the store's current revision; "AA==" is the key "\0".
    let range = etcd_post("/v3/kv/range", r#"{"key": "AA==", "count_only": true}"#)?;
    let revision: i64 = range["header"]["revision"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .ok_or_else(|| ClusterError::Setup(format!("etcd's revision is not in {range}")))?;
    etcd_post(
        "/v3/kv/compaction",
        &format!(r#"{{"revision": "{revision}", "physical": true}}"#),
    )?;
    Ok(revision)
}
