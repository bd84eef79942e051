//! The services controller against the lab API server: EndpointSlices follow
//! pod readiness, and the NodePort proxy forwards only to ready pods,
//! round-robin. Pods are simulated: objects in the lab store whose `podIP`
//! (127.0.x.y) has a tiny TCP server bound to it that answers its own name.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use selfheal_lab::apiserver::{
    ApiServer, ApiServerConfig, ENDPOINT_SLICES, NAMESPACES, PODS, SERVICES,
};
use selfheal_lab::services::ServiceController;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(10);
const NS: &str = "grade-submission";

fn client(lab: &ApiServer) -> kube::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = kube::Config::new(lab.url().parse().expect("url"));
    kube::Client::try_from(config).expect("client")
}

async fn lab_and_controller() -> (ApiServer, ServiceController) {
    let lab = ApiServer::start(ApiServerConfig::default())
        .await
        .expect("lab");
    lab.store()
        .create(&NAMESPACES, "", json!({"metadata": {"name": NS}}))
        .expect("namespace");
    let services = ServiceController::start(client(&lab));
    (lab, services)
}

fn free_port(ip: Ipv4Addr) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A pod's "container": answers every connection with `name` and closes.
async fn backend(ip: Ipv4Addr, port: u16, name: &'static str) -> JoinHandle<()> {
    let listener = TcpListener::bind((ip, port)).await.expect("bind backend");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(name.as_bytes()).await;
            });
        }
    })
}

fn create_pod(lab: &ApiServer, name: &str, ip: Ipv4Addr, port: u16) {
    lab.store()
        .create(
            &PODS,
            NS,
            json!({
                "metadata": {"name": name, "labels": {"app.kubernetes.io/instance": "grade-submission-api"}},
                "spec": {"containers": [{"name": "api", "image": "img:1",
                                         "ports": [{"name": "http", "containerPort": port}]}]},
            }),
        )
        .expect("pod");
    lab.store()
        .merge_status(
            &PODS,
            NS,
            name,
            json!({"phase": "Running", "podIP": ip.to_string()}),
        )
        .expect("pod ip");
}

fn set_ready(lab: &ApiServer, name: &str, ready: bool) {
    let status = if ready { "True" } else { "False" };
    lab.store()
        .merge_status(
            &PODS,
            NS,
            name,
            json!({"conditions": [{"type": "Ready", "status": status}]}),
        )
        .expect("ready condition");
}

fn create_service(lab: &ApiServer, node_port: Option<u16>, target_port: serde_json::Value) {
    let mut port = json!({"port": 3000, "targetPort": target_port});
    let mut spec = json!({"type": "ClusterIP", "selector": {"app.kubernetes.io/instance": "grade-submission-api"}});
    if let Some(np) = node_port {
        port["nodePort"] = json!(np);
        spec["type"] = json!("NodePort");
    }
    spec["ports"] = json!([port]);
    lab.store()
        .create(
            &SERVICES,
            NS,
            json!({"metadata": {"name": "grade-submission-api"}, "spec": spec}),
        )
        .expect("service");
}

/// (address, ready) of the slice's endpoints, or None if there is no slice.
fn slice_endpoints(lab: &ApiServer) -> Option<Vec<(String, bool)>> {
    let raw = lab
        .store()
        .get(&ENDPOINT_SLICES, NS, "grade-submission-api-lab")
        .ok()?;
    let slice: EndpointSlice = serde_json::from_value(raw).expect("slice");
    Some(
        slice
            .endpoints
            .unwrap_or_default()
            .iter()
            .map(|e| {
                (
                    e.addresses.join(","),
                    e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false),
                )
            })
            .collect(),
    )
}

async fn eventually<T: std::fmt::Debug>(
    what: &str,
    mut probe: impl AsyncFnMut() -> T,
    ok: impl Fn(&T) -> bool,
) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let v = probe().await;
        if ok(&v) {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out waiting for {what}; last: {v:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Connects to the node port and reads the answer: the backend's name, or
/// None when the proxy closed the connection without one.
async fn ask(node_port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", node_port)).await.ok()?;
    let mut out = String::new();
    match tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut out)).await {
        Ok(Ok(_)) if !out.is_empty() => Some(out),
        _ => None,
    }
}

/// Whether an HTTP request through the node port gets an HTTP response.
async fn http_answers(node_port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", node_port)).await else {
        return false;
    };
    let request = b"GET /grade HTTP/1.1\r\nhost: lab\r\nconnection: close\r\n\r\n";
    if s.write_all(request).await.is_err() {
        return false;
    }
    let mut out = String::new();
    match tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut out)).await {
        Ok(Ok(_)) => out.starts_with("HTTP/1.1 "),
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpointslice_follows_pod_readiness() {
    let (lab, services) = lab_and_controller().await;
    create_service(&lab, None, json!("http"));
    create_pod(&lab, "api-a", Ipv4Addr::new(127, 0, 5, 1), 3000);
    create_pod(&lab, "api-b", Ipv4Addr::new(127, 0, 5, 2), 3000);
    set_ready(&lab, "api-a", true);
    set_ready(&lab, "api-b", false);
    // A pod of another app is not selected.
    lab.store()
        .create(
            &PODS,
            NS,
            json!({"metadata": {"name": "portal", "labels": {"app": "portal"}},
                                   "spec": {"containers": [{"name": "p", "image": "i"}]}}),
        )
        .expect("portal");
    lab.store()
        .merge_status(
            &PODS,
            NS,
            "portal",
            json!({"podIP": "127.0.5.9", "conditions": [{"type": "Ready", "status": "True"}]}),
        )
        .expect("portal status");

    let want = |a: bool, b: bool| {
        Some(vec![
            ("127.0.5.1".to_string(), a),
            ("127.0.5.2".to_string(), b),
        ])
    };
    eventually(
        "a ready, b not",
        async || slice_endpoints(&lab),
        |e| *e == want(true, false),
    )
    .await;

    let raw = lab
        .store()
        .get(&ENDPOINT_SLICES, NS, "grade-submission-api-lab")
        .expect("slice");
    assert_eq!(raw["addressType"], "IPv4");
    assert_eq!(
        raw["metadata"]["labels"]["kubernetes.io/service-name"],
        "grade-submission-api"
    );
    assert_eq!(
        raw["ports"],
        json!([{"name": "", "port": 3000, "protocol": "TCP"}])
    );
    assert_eq!(raw["endpoints"][0]["targetRef"]["name"], "api-a");

    set_ready(&lab, "api-a", false);
    set_ready(&lab, "api-b", true);
    eventually(
        "b ready, a not",
        async || slice_endpoints(&lab),
        |e| *e == want(false, true),
    )
    .await;

    lab.store().delete(&PODS, NS, "api-a").expect("delete pod");
    eventually(
        "a gone",
        async || slice_endpoints(&lab),
        |e| *e == Some(vec![("127.0.5.2".to_string(), true)]),
    )
    .await;

    // Someone else deletes the slice: it is put back.
    lab.store()
        .delete(&ENDPOINT_SLICES, NS, "grade-submission-api-lab")
        .expect("delete slice");
    eventually(
        "slice recreated",
        async || slice_endpoints(&lab),
        Option::is_some,
    )
    .await;

    lab.store()
        .delete(&SERVICES, NS, "grade-submission-api")
        .expect("delete service");
    eventually(
        "slice deleted",
        async || slice_endpoints(&lab),
        Option::is_none,
    )
    .await;

    services.shutdown().await;
    lab.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_port_forwards_only_to_ready_pods() {
    let ip = Ipv4Addr::new(127, 0, 6, 1);
    let port = free_port(ip);
    let node_port = free_port(Ipv4Addr::LOCALHOST);
    let (lab, services) = lab_and_controller().await;
    let _backend = backend(ip, port, "api-a").await;
    create_pod(&lab, "api-a", ip, port);
    set_ready(&lab, "api-a", true);
    create_service(&lab, Some(node_port), json!(port));

    assert!(
        services.wait_for_node_port(node_port, WAIT).await,
        "node port not listening"
    );
    assert_eq!(services.node_ports(), vec![node_port]);
    eventually(
        "forwarded to a",
        async || ask(node_port).await,
        |a| a.as_deref() == Some("api-a"),
    )
    .await;

    // Unready: every new connection is closed at once, without an answer.
    set_ready(&lab, "api-a", false);
    eventually(
        "refused while unready",
        async || ask(node_port).await,
        Option::is_none,
    )
    .await;
    for _ in 0..5 {
        assert_eq!(ask(node_port).await, None, "traffic sent to an unready pod");
    }

    // Ready again: traffic comes back by itself.
    set_ready(&lab, "api-a", true);
    eventually(
        "forwarded again",
        async || ask(node_port).await,
        |a| a.as_deref() == Some("api-a"),
    )
    .await;

    // The Service goes away: so does the node port.
    lab.store()
        .delete(&SERVICES, NS, "grade-submission-api")
        .expect("delete service");
    eventually(
        "node port closed",
        async || services.node_ports(),
        Vec::is_empty,
    )
    .await;
    assert!(TcpStream::connect(("127.0.0.1", node_port)).await.is_err());

    services.shutdown().await;
    lab.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_backend_fails_fast() {
    let ip = Ipv4Addr::new(127, 0, 7, 1);
    let port = free_port(ip);
    let node_port = free_port(Ipv4Addr::LOCALHOST);
    let (lab, services) = lab_and_controller().await;
    let server = backend(ip, port, "api-a").await;
    create_pod(&lab, "api-a", ip, port);
    set_ready(&lab, "api-a", true);
    create_service(&lab, Some(node_port), json!(port));
    eventually(
        "forwarded",
        async || ask(node_port).await,
        |a| a.as_deref() == Some("api-a"),
    )
    .await;

    // The container dies but the pod still says ready: connections fail fast.
    server.abort();
    let _ = server.await;
    eventually(
        "backend gone",
        async || {
            TcpStream::connect(SocketAddr::from((ip, port)))
                .await
                .is_err()
        },
        |gone| *gone,
    )
    .await;
    let started = tokio::time::Instant::now();
    assert_eq!(ask(node_port).await, None);
    assert!(started.elapsed() < Duration::from_secs(1));

    services.shutdown().await;
    lab.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_over_two_ready_pods() {
    let ip_a = Ipv4Addr::new(127, 0, 8, 1);
    let ip_b = Ipv4Addr::new(127, 0, 8, 2);
    let port = free_port(ip_a);
    let node_port = free_port(Ipv4Addr::LOCALHOST);
    let (lab, services) = lab_and_controller().await;
    let _a = backend(ip_a, port, "rr-a").await;
    let _b = backend(ip_b, port, "rr-b").await;
    create_pod(&lab, "api-a", ip_a, port);
    create_pod(&lab, "api-b", ip_b, port);
    set_ready(&lab, "api-a", true);
    set_ready(&lab, "api-b", true);
    create_service(&lab, Some(node_port), json!("http"));
    eventually(
        "two ready endpoints",
        async || slice_endpoints(&lab),
        |e| {
            e.as_ref()
                .is_some_and(|e| e.iter().filter(|(_, r)| *r).count() == 2)
        },
    )
    .await;
    assert!(services.wait_for_node_port(node_port, WAIT).await);
    // The proxy may lag the slice by a moment: wait until both answer.
    eventually(
        "both pods answer",
        async || [ask(node_port).await, ask(node_port).await],
        |[x, y]| x.is_some() && y.is_some() && x != y,
    )
    .await;

    let mut answers = Vec::new();
    for _ in 0..8 {
        answers.push(ask(node_port).await.expect("answer"));
    }
    let a = answers.iter().filter(|n| *n == "rr-a").count();
    assert_eq!(a, 4, "not round-robin: {answers:?}");
    for pair in answers.windows(2) {
        assert_ne!(pair[0], pair[1], "not alternating: {answers:?}");
    }

    services.shutdown().await;
    // The proxy is gone. (Not "nothing listens": the tests of this file run in parallel and
    // pick free ports, so another test may bind this one right after the shutdown; that
    // listener does not lead to this test's pods.)
    let after = ask(node_port).await;
    assert!(
        !matches!(after.as_deref(), Some("rr-a" | "rr-b")),
        "still proxying to the pods after shutdown: {after:?}"
    );
    lab.shutdown().await;
}

struct GradeApiProcess(std::process::Child);

impl Drop for GradeApiProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_grade_api(addr: SocketAddr) -> GradeApiProcess {
    GradeApiProcess(
        std::process::Command::new(env!("CARGO_BIN_EXE_selfheal-lab"))
            .args(["grade-api", "--listen", &addr.to_string()])
            .args(["--bytes-per-grade", "16"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn grade-api"),
    )
}

/// The experiment's lesson end to end: load through the NodePort while the
/// container is killed and restarted; the load generator sees exactly the
/// downtime, and recovers by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_through_node_port_sees_only_the_real_downtime() {
    let ip = Ipv4Addr::new(127, 0, 10, 1);
    let addr = SocketAddr::from((ip, free_port(ip)));
    let node_port = free_port(Ipv4Addr::LOCALHOST);
    let (lab, services) = lab_and_controller().await;
    let mut container = spawn_grade_api(addr);
    eventually(
        "grade-api listening",
        async || TcpStream::connect(addr).await.is_ok(),
        |up| *up,
    )
    .await;
    create_pod(&lab, "grade-submission-api", ip, addr.port());
    set_ready(&lab, "grade-submission-api", true);
    create_service(&lab, Some(node_port), json!(addr.port()));
    assert!(services.wait_for_node_port(node_port, WAIT).await);
    // An HTTP answer through the node port, not just a listening port: the proxy may
    // listen a moment before it knows the ready endpoint, and the load must not start
    // in that moment (it would count it as an outage).
    eventually(
        "node port serves the pod",
        async || http_answers(node_port).await,
        |up| *up,
    )
    .await;

    let config = selfheal_lab::load::LoadConfig::new(
        format!("http://127.0.0.1:{node_port}/grade"),
        16,
        Duration::from_millis(4500),
    );
    let load = tokio::spawn(selfheal_lab::load::run_load(config, |_| {}));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // What the kubelet does on an OOM kill: the process dies, the pod turns unready,
    // the container is started again and the pod turns ready.
    container.0.kill().expect("kill");
    container.0.wait().expect("reap");
    set_ready(&lab, "grade-submission-api", false);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let _container = spawn_grade_api(addr);
    eventually(
        "grade-api back",
        async || TcpStream::connect(addr).await.is_ok(),
        |up| *up,
    )
    .await;
    set_ready(&lab, "grade-submission-api", true);

    let report = load.await.expect("load task").expect("report");
    assert!(report.ok > 100, "{report:?}");
    assert_eq!(
        report.outage_windows.len(),
        1,
        "{:#?}",
        report.outage_windows
    );
    let w = &report.outage_windows[0];
    assert!(w.closed, "{w:?}");
    let secs = w.duration.as_secs_f64();
    assert!((0.5..=3.0).contains(&secs), "window {secs:.3}s");
    assert_eq!(report.failures, w.failures);

    services.shutdown().await;
    lab.shutdown().await;
}
