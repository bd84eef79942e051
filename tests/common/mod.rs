//! Test harness: a lab API server, the real daemon binary against it, and helpers that
//! write objects and pod status through the Kubernetes API the way the kubelet does and
//! read `/metrics` over HTTP.

#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod kubelet;
pub mod prometheus;

use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use selfheal_lab::apiserver::{ApiServer, ApiServerConfig};
use selfheal_lab::testkit::daemon;
use selfheal_lab::testkit::exposition::Exposition;
use serde_json::{Value, json};

pub const NS: &str = "grade-submission";

/// A lab API server with the experiment's namespace, and a client of it. Tests write
/// objects and pod status through the Kubernetes API, as a kubelet or a user would (never
/// into the lab's store), so what they prove holds for any API server.
pub struct Cluster {
    pub lab: ApiServer,
    pub client: kube::Client,
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
}

/// The kinds the tests write.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Pod,
    Service,
    Event,
    Lease,
}

impl Kind {
    fn resource(self) -> ApiResource {
        match self {
            Kind::Pod => ApiResource::erase::<k8s_openapi::api::core::v1::Pod>(&()),
            Kind::Service => ApiResource::erase::<k8s_openapi::api::core::v1::Service>(&()),
            Kind::Event => ApiResource::erase::<k8s_openapi::api::core::v1::Event>(&()),
            Kind::Lease => ApiResource::erase::<k8s_openapi::api::coordination::v1::Lease>(&()),
        }
    }
}

impl Cluster {
    pub async fn start() -> Cluster {
        let lab = ApiServer::start(ApiServerConfig::default())
            .await
            .expect("lab API server starts");
        let dir = tempfile::tempdir().expect("tempdir");
        let kubeconfig = dir.path().join("kubeconfig");
        lab.write_kubeconfig(&kubeconfig)
            .expect("kubeconfig written");
        let url = lab.url().parse().expect("the lab's URL");
        let client = kube::Client::try_from(kube::Config::new(url)).expect("client");
        let cluster = Cluster {
            lab,
            client,
            dir,
            kubeconfig,
        };
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> =
            Api::all(cluster.client.clone());
        let namespace =
            serde_json::from_value(json!({"metadata": {"name": NS}})).expect("namespace");
        namespaces
            .create(&PostParams::default(), &namespace)
            .await
            .expect("namespace created");
        cluster
    }

    fn api(&self, kind: Kind) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), NS, &kind.resource())
    }

    /// Runs `call` until the API server takes it, retrying what a kubelet's client
    /// retries (429, 5xx, a dropped connection) for up to 10 s: the fault tests make the
    /// lab's API server fail requests, and those hit the tests' writes too.
    async fn retrying<T, F, Fut>(&self, what: &str, call: F) -> T
    where
        F: Fn() -> Fut,
        Fut: Future<Output = kube::Result<T>>,
    {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match call().await {
                Ok(value) => return value,
                Err(kube::Error::Api(status))
                    if (status.code == 429 || status.code >= 500) && Instant::now() < deadline => {}
                Err(kube::Error::HyperError(_) | kube::Error::Service(_))
                    if Instant::now() < deadline => {}
                Err(error) => panic!("{what}: {error}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Creates `object` (its `apiVersion` and `kind` filled in) in the test namespace;
    /// returns it as the API server stored it.
    pub async fn create(&self, kind: Kind, mut object: Value) -> Value {
        let resource = kind.resource();
        object["apiVersion"] = json!(resource.api_version);
        object["kind"] = json!(resource.kind);
        let object: DynamicObject = serde_json::from_value(object).expect("an object");
        let api = self.api(kind);
        let params = PostParams::default();
        let created = self
            .retrying(&format!("{kind:?} created"), || {
                api.create(&params, &object)
            })
            .await;
        serde_json::to_value(created).expect("JSON")
    }

    pub async fn get(&self, kind: Kind, name: &str) -> Value {
        let api = self.api(kind);
        let object = self
            .retrying(&format!("{kind:?} {name}"), || api.get(name))
            .await;
        serde_json::to_value(object).expect("JSON")
    }

    /// A JSON merge patch (RFC 7386) of `name`.
    pub async fn merge_patch(&self, kind: Kind, name: &str, patch: Value) {
        let api = self.api(kind);
        let patch = Patch::Merge(patch);
        let params = PatchParams::default();
        self.retrying(&format!("{kind:?} {name} patched"), || {
            api.patch(name, &params, &patch)
        })
        .await;
    }

    /// Creates a pod with one container `api` (48Mi limit), optionally owned by a
    /// controller `(kind, name)`, plus `labels`. Returns its UID.
    pub async fn create_pod(
        &self,
        name: &str,
        owner: Option<(&str, &str)>,
        labels: Value,
    ) -> String {
        let owners = owner.map(|(kind, owner_name)| {
            json!([{"apiVersion": "apps/v1", "kind": kind, "name": owner_name,
                    "uid": format!("uid-{owner_name}"), "controller": true}])
        });
        let pod = json!({
            "metadata": {"name": name, "labels": labels, "ownerReferences": owners.unwrap_or(json!([]))},
            "spec": {"containers": [{
                "name": "api",
                "image": "rslim087/kubernetes-course-grade-submission-api:stateful",
                "resources": {"limits": {"memory": "48Mi", "cpu": "128m"}, "requests": {"memory": "48Mi"}}
            }]}
        });
        let created = self.create(Kind::Pod, pod).await;
        created["metadata"]["uid"]
            .as_str()
            .expect("uid assigned")
            .to_owned()
    }

    /// Writes the container status of `api` and the pod's Ready condition, as the kubelet
    /// does: a patch of the pod's `status` subresource.
    pub async fn set_status(&self, pod: &str, container_status: Value) {
        let ready = container_status["ready"].as_bool().unwrap_or(false);
        let condition = if ready { "True" } else { "False" };
        let status = json!({"status": {
            "phase": "Running",
            "conditions": [
                {"type": "Ready", "status": condition},
                {"type": "ContainersReady", "status": condition}
            ],
            "containerStatuses": [container_status]
        }});
        let api = self.api(Kind::Pod);
        let status = Patch::Merge(status);
        let params = PatchParams::default();
        self.retrying(&format!("status of {pod} written"), || {
            api.patch_status(pod, &params, &status)
        })
        .await;
    }

    pub async fn delete(&self, kind: Kind, name: &str) {
        let api = self.api(kind);
        let params = DeleteParams::default();
        self.retrying(&format!("{kind:?} {name} deleted"), || {
            api.delete(name, &params)
        })
        .await;
    }

    pub async fn delete_pod(&self, pod: &str) {
        self.delete(Kind::Pod, pod).await;
    }

    /// Posts the kubelet's Event for a liveness-probe kill of container `api`.
    pub async fn post_liveness_kill(&self, pod: &str, pod_uid: &str, at: Timestamp) {
        let event = json!({
            "metadata": {"name": format!("{pod}.{}", at.as_second())},
            "involvedObject": {"kind": "Pod", "namespace": NS, "name": pod, "uid": pod_uid,
                               "apiVersion": "v1", "fieldPath": "spec.containers{api}"},
            "reason": "Killing",
            "message": "Container api failed liveness probe, will be restarted",
            "type": "Normal",
            "count": 1,
            "firstTimestamp": rfc3339(at),
            "lastTimestamp": rfc3339(at),
            "source": {"component": "kubelet"}
        });
        self.create(Kind::Event, event).await;
    }
}

/// A file of the repository, by its path from the root.
pub fn repo(path: &str) -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The text of a repository file (panics naming it when unreadable).
pub fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Runs a local tool to completion: whether it succeeded, and what it printed.
pub fn run(command: &mut Command) -> (bool, String) {
    let output = command.output().expect("tool runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), said)
}

/// Whole-second RFC 3339, as the kubelet writes timestamps.
pub fn rfc3339(at: Timestamp) -> String {
    Timestamp::from_second(at.as_second())
        .expect("valid")
        .to_string()
}

/// Now, truncated to the second like kubelet timestamps.
pub fn now_s() -> Timestamp {
    Timestamp::from_second(Timestamp::now().as_second()).expect("valid")
}

pub fn death(reason: &str, exit_code: i32, instance: &str, finished: Timestamp) -> Value {
    json!({"terminated": {
        "reason": reason, "exitCode": exit_code,
        "startedAt": rfc3339(finished - jiff::SignedDuration::from_secs(60)),
        "finishedAt": rfc3339(finished),
        "containerID": format!("containerd://{instance}")
    }})
}

pub fn running(restarts: u32, ready: bool, last: Option<Value>) -> Value {
    json!({
        "name": "api", "ready": ready, "started": true, "restartCount": restarts,
        "image": "rslim087/kubernetes-course-grade-submission-api:stateful",
        "containerID": format!("containerd://run-{restarts}"),
        "state": {"running": {"startedAt": rfc3339(Timestamp::now())}},
        "lastState": last.unwrap_or(json!({}))
    })
}

pub fn terminated(restarts: u32, now: Value, last: Option<Value>) -> Value {
    json!({
        "name": "api", "ready": false, "started": false, "restartCount": restarts,
        "containerID": now["terminated"]["containerID"].clone(),
        "state": now,
        "lastState": last.unwrap_or(json!({}))
    })
}

pub fn crashloop(restarts: u32, last: Value) -> Value {
    json!({
        "name": "api", "ready": false, "started": false, "restartCount": restarts,
        "state": {"waiting": {"reason": "CrashLoopBackOff",
                  "message": "back-off 10s restarting failed container=api"}},
        "lastState": last
    })
}

/// The daemon binary, running against a cluster.
pub struct Daemon {
    pub child: Child,
    pub port: u16,
    pub stderr: PathBuf,
}

pub fn free_port() -> u16 {
    daemon::free_port().expect("free port")
}

impl Daemon {
    /// Starts the daemon with `config` (TOML) and waits until it is ready.
    pub async fn start(cluster: &Cluster, config: &str) -> Daemon {
        let daemon = Daemon::spawn(&cluster.kubeconfig, cluster.dir.path(), config);
        daemon.wait_ready().await;
        daemon
    }

    pub fn spawn(kubeconfig: &std::path::Path, dir: &std::path::Path, config: &str) -> Daemon {
        Daemon::spawn_with_env(kubeconfig, dir, config, &[])
    }

    /// [`start`](Self::start) with extra environment variables (e.g. POD_NAME).
    pub async fn start_with_env(cluster: &Cluster, config: &str, env: &[(&str, &str)]) -> Daemon {
        let daemon = Daemon::spawn_with_env(&cluster.kubeconfig, cluster.dir.path(), config, env);
        daemon.wait_ready().await;
        daemon
    }

    pub fn spawn_with_env(
        kubeconfig: &std::path::Path,
        dir: &std::path::Path,
        config: &str,
        env: &[(&str, &str)],
    ) -> Daemon {
        let port = free_port();
        let config_path = dir.join(format!("config-{port}.toml"));
        std::fs::write(&config_path, config).expect("config written");
        let stderr = dir.join(format!("daemon-{port}.log"));
        // Only `config` and `env`: none of the caller's SELFHEAL_* (they would configure
        // the daemon behind the test's back).
        let child = daemon::command(
            std::path::Path::new(env!("CARGO_BIN_EXE_selfheal-exporter")),
            &[],
            kubeconfig,
            port,
            Some(&config_path),
        )
        .env("RUST_LOG", "info,selfheal_exporter=debug")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).expect("log file"))
        .spawn()
        .expect("daemon starts");
        Daemon {
            child,
            port,
            stderr,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub async fn get(&self, path: &str, accept: Option<&str>) -> Option<(u16, String)> {
        http_get(self.port, path, accept).await
    }

    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some((200, _)) = self.get("/readyz", None).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("daemon not ready in 60 s; log:\n{}", self.log());
    }

    pub async fn scrape(&self) -> Scrape {
        let (status, body) = self.get("/metrics", None).await.expect("/metrics answers");
        assert_eq!(status, 200);
        Scrape::parse(&body)
    }

    /// Scrapes until `done` holds (or panics after 30 s with the last scrape).
    pub async fn wait_for(&self, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let scrape = self.scrape().await;
            if done(&scrape) {
                return scrape;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; last scrape:\n{}\nlog:\n{}",
                    scrape.text,
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL: dies at once, releasing nothing.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits (up to `bound`) for the process to exit by itself; `None` if it still runs.
    pub async fn wait_exit(&mut self, bound: Duration) -> Option<(ExitStatus, Duration)> {
        let started = Instant::now();
        while started.elapsed() < bound {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some((status, started.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Sends SIGTERM and waits (up to 30 s) for the exit.
    pub fn terminate(&mut self) -> (ExitStatus, Duration) {
        let started = Instant::now();
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        while started.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(status)) = self.child.try_wait() {
                return (status, started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("daemon did not exit 30 s after SIGTERM");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A GET to the daemon over loopback.
pub async fn http_get(port: u16, path: &str, accept: Option<&str>) -> Option<(u16, String)> {
    selfheal_lab::http_get::get_with(port, path, accept).await
}

/// A parsed Prometheus text exposition, with its text (the parser is the benches').
pub struct Scrape {
    pub text: String,
    exposition: Exposition,
}

impl Scrape {
    pub fn parse(text: &str) -> Scrape {
        Scrape {
            text: text.to_owned(),
            exposition: Exposition::parse(text),
        }
    }

    /// Sum of the samples of `name` whose labels include all of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.exposition.sum(name, labels)
    }

    /// The single sample of `name` matching `labels`, if there is exactly one.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.exposition.get(name, labels)
    }

    pub fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.exposition.matching(name, labels).next().is_some()
    }
}

/// An HTTP server on a fixed port that can be stopped (connections refused) and restarted:
/// a service as its clients reach it. It answers every request `200 []`.
pub struct Flaky {
    pub port: u16,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Flaky {
    pub async fn start() -> Flaky {
        let mut flaky = Flaky {
            port: free_port(),
            task: None,
        };
        flaky.up().await;
        flaky
    }

    /// Listens again on the same port.
    pub async fn up(&mut self) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // The port was ours a moment ago; retry briefly in case the kernel lags.
        let mut attempts = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(listener) => break listener,
                Err(_) if attempts < 50 => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(error) => panic!("bind 127.0.0.1:{}: {error}", self.port),
            }
        };
        self.task = Some(tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = socket.read(&mut buf).await;
                    let _ = socket
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n[]",
                        )
                        .await;
                });
            }
        }));
    }

    /// Stops listening: new connections are refused from when this returns.
    pub async fn down(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            // Wait until the task (and with it the listener) is really gone.
            let _ = task.await;
        }
    }
}

impl Drop for Flaky {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
