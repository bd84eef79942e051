//! The pod worker: one task per pod, the I/O layer around the pure container machines.
//! It starts container processes (image → command, cgroup, process group), turns their
//! exits into terminations (OOMKilled from the cgroup's `oom_kill` counter), runs the
//! probes and acts on their results, writes the pod status through the status
//! subresource after every change (so each step of a death is its own update), records
//! Events, and stops everything when the pod is deleted or the kubelet shuts down.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::process::ExitStatus;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::cgroup::{Cgroup, CgroupRoot};
use super::events::{EventType, PodRef, Recorder};
use super::images::{self, Resolved};
use super::machine::{ContainerMachine, Now, Restart};
use super::probes::{self, ProbeKind, ProbeSpec, ProbeTracker};
use super::runtime::{self, GroupGuard, ProcessSpec};
use super::spec::{ContainerSpec, PodSpec};
use super::status::{Conditions, PodInfo, pod_status};
use super::{KubeletConfig, ip};

/// What the kubelet shares with its pod workers.
pub(crate) struct Shared {
    pub client: kube::Client,
    pub recorder: Recorder,
    pub cgroups: Option<Arc<CgroupRoot>>,
    pub config: KubeletConfig,
}

/// Messages from the kubelet to a pod worker.
#[derive(Debug)]
pub(crate) enum PodMsg {
    /// The pod was deleted: stop its containers (with Events).
    Delete,
    /// The kubelet shuts down: stop the containers quietly.
    Shutdown,
}

type Tag = (usize, u64);

struct ProbeMsg {
    idx: usize,
    n: u64,
    kind: ProbeKind,
    result: Result<(), String>,
}

struct Instance {
    n: u64,
    guard: GroupGuard,
    cgroup: Option<Cgroup>,
    probes: Vec<JoinHandle<()>>,
    trackers: HashMap<ProbeKind, ProbeTracker>,
    started: Arc<AtomicBool>,
    kill_at: Option<Instant>,
}

impl Instance {
    fn stop_probes(&mut self) {
        for p in self.probes.drain(..) {
            p.abort();
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.stop_probes();
    }
}

struct Slot {
    spec: ContainerSpec,
    machine: ContainerMachine,
    image_id: String,
    inst: Option<Instance>,
}

struct Worker {
    shared: Arc<Shared>,
    pod: PodSpec,
    pod_ref: PodRef,
    ip: Ipv4Addr,
    start_time: jiff::Timestamp,
    qos: Option<String>,
    /// The QoS level of the pod's cgroup path (`kubepods/<level>/pod<uid>`; empty for
    /// Guaranteed), as the real kubelet's cgroupfs driver lays it out.
    qos_level: &'static str,
    conditions: Conditions,
    slots: Vec<Slot>,
    seq: u64,
    exits_tx: mpsc::UnboundedSender<(Tag, ExitStatus)>,
    exits_rx: mpsc::UnboundedReceiver<(Tag, ExitStatus)>,
    probes_tx: mpsc::UnboundedSender<ProbeMsg>,
    probes_rx: mpsc::UnboundedReceiver<ProbeMsg>,
    dirty: bool,
}

/// A random `containerd://<64 hex>` container ID.
pub fn new_container_id() -> String {
    let hex: String = (0..4)
        .map(|_| format!("{:016x}", fastrand::u64(..)))
        .collect();
    format!("containerd://{hex}")
}

/// Starts the worker for `pod` (`raw` is the object as read). `None` if no pod IP is left.
pub(crate) fn spawn(
    shared: Arc<Shared>,
    pod: PodSpec,
    raw: &Value,
) -> Option<(mpsc::UnboundedSender<PodMsg>, JoinHandle<()>)> {
    let ip = ip::allocate(shared.config.pod_ip_start)?;
    let (tx, rx) = mpsc::unbounded_channel();
    let (exits_tx, exits_rx) = mpsc::unbounded_channel();
    let (probes_tx, probes_rx) = mpsc::unbounded_channel();
    let now = Now::current();
    let pod_fmt = pod.format();
    let slots = pod
        .containers
        .iter()
        .map(|c| Slot {
            machine: ContainerMachine::new(
                &c.name,
                &pod_fmt,
                pod.restart_policy,
                shared.config.backoff,
                c.readiness.is_some(),
                c.startup.is_some(),
                now,
            ),
            image_id: images::image_id(&c.image),
            spec: c.clone(),
            inst: None,
        })
        .collect();
    let qos = raw
        .pointer("/status/qosClass")
        .and_then(Value::as_str)
        .is_none()
        .then(|| qos_class(raw.get("spec").unwrap_or(&Value::Null)).to_string());
    let qos_level = match raw
        .pointer("/status/qosClass")
        .and_then(Value::as_str)
        .unwrap_or_else(|| qos_class(raw.get("spec").unwrap_or(&Value::Null)))
    {
        "Burstable" => "burstable",
        "BestEffort" => "besteffort",
        _ => "",
    };
    let worker = Worker {
        pod_ref: PodRef {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            uid: pod.uid.clone(),
        },
        shared,
        pod,
        ip,
        start_time: now.wall,
        qos,
        qos_level,
        conditions: Conditions::default(),
        slots,
        seq: 0,
        exits_tx,
        exits_rx,
        probes_tx,
        probes_rx,
        dirty: true,
    };
    let task = tokio::spawn(worker.run(rx));
    Some((tx, task))
}

/// `qosClass` from container resources (only used when the server did not set it).
fn qos_class(spec: &Value) -> &'static str {
    let cs: Vec<&Value> = spec
        .get("containers")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let mut any = false;
    let mut guaranteed = true;
    for c in cs {
        let limits = c.pointer("/resources/limits");
        let requests = c.pointer("/resources/requests");
        if limits
            .and_then(Value::as_object)
            .is_some_and(|m| !m.is_empty())
            || requests
                .and_then(Value::as_object)
                .is_some_and(|m| !m.is_empty())
        {
            any = true;
        }
        for r in ["cpu", "memory"] {
            let l = limits.and_then(|l| l.get(r));
            let q = requests.and_then(|q| q.get(r)).or(l);
            if l.is_none() || q != l {
                guaranteed = false;
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

impl Worker {
    fn event(&self, container: Option<&str>, kind: EventType, reason: &str, message: String) {
        self.shared
            .recorder
            .record(&self.pod_ref, container, kind, reason, message);
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<PodMsg>) {
        tracing::info!(pod = %self.pod.format(), ip = %self.ip, "kubelet: running pod");
        if self.pod.node_name.is_empty() {
            self.shared.recorder.record_as(
                "default-scheduler",
                &self.pod_ref,
                EventType::Normal,
                "Scheduled",
                format!(
                    "Successfully assigned {}/{} to {}",
                    self.pod.namespace, self.pod.name, self.shared.config.node_name
                ),
            );
        }
        if self.pod.has_init_containers {
            tracing::warn!(pod = %self.pod.format(), "init containers are not run by the lab kubelet");
        }
        self.write_status().await;
        let quiet = loop {
            self.sync().await;
            let wake = self.next_wake();
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(PodMsg::Delete) => break false,
                    Some(PodMsg::Shutdown) | None => break true,
                },
                Some((tag, status)) = self.exits_rx.recv() => self.on_exit(tag, status).await,
                Some(p) = self.probes_rx.recv() => self.on_probe(p).await,
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {}
            }
        };
        self.stop_all(quiet).await;
        self.shared.recorder.forget(&self.pod.uid);
        ip::release(self.ip);
        tracing::info!(pod = %self.pod.format(), "kubelet: pod stopped");
    }

    fn next_wake(&self) -> Instant {
        let far = Instant::now() + Duration::from_secs(3600);
        let mut wake = far;
        for s in &self.slots {
            match &s.inst {
                Some(i) => {
                    if let Some(k) = i.kill_at {
                        wake = wake.min(k);
                    }
                }
                None => {
                    if let Some(t) = s.machine.next_start() {
                        wake = wake.min(t);
                    }
                }
            }
        }
        if self.dirty {
            wake = wake.min(Instant::now() + Duration::from_millis(500));
        }
        wake
    }

    /// Starts what is due, escalates overdue kills, retries a failed status write.
    async fn sync(&mut self) {
        for idx in 0..self.slots.len() {
            let now = Now::current();
            let slot = &mut self.slots[idx];
            if let Some(inst) = &mut slot.inst {
                if inst.kill_at.is_some_and(|k| k <= now.mono) {
                    runtime::signal_group(inst.guard.pgid(), libc::SIGKILL);
                    inst.kill_at = None;
                }
                continue;
            }
            if slot.machine.start_due(now) {
                self.start(idx).await;
            }
        }
        if self.dirty {
            self.write_status().await;
        }
    }

    async fn write_status(&mut self) {
        let now = Now::current();
        let pod_ip = self.ip.to_string();
        let info = PodInfo {
            policy: self.pod.restart_policy,
            pod_ip: &pod_ip,
            host_ip: &self.shared.config.host_ip,
            start_time: self.start_time,
            qos_class: self.qos.as_deref(),
        };
        let cs: Vec<(&ContainerMachine, &str, &str)> = self
            .slots
            .iter()
            .map(|s| (&s.machine, s.spec.image.as_str(), s.image_id.as_str()))
            .collect();
        let status = pod_status(&info, &mut self.conditions, &cs, now.wall);
        let ar = ApiResource::erase::<Pod>(&());
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.shared.client.clone(), &self.pod.namespace, &ar);
        let patch = json!({"status": status});
        let res = tokio::time::timeout(
            Duration::from_secs(5),
            api.patch_status(
                &self.pod.name,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            ),
        )
        .await;
        match res {
            Ok(Ok(_)) => self.dirty = false,
            Ok(Err(kube::Error::Api(e))) if e.code == 404 => self.dirty = false,
            Ok(Err(e)) => {
                tracing::warn!(pod = %self.pod.format(), error = %e, "status write failed; retrying");
                self.dirty = true;
            }
            Err(_) => {
                tracing::warn!(pod = %self.pod.format(), "status write timed out; retrying");
                self.dirty = true;
            }
        }
    }

    async fn start(&mut self, idx: usize) {
        let now = Now::current();
        let name = self.slots[idx].spec.name.clone();
        let image = self.slots[idx].spec.image.clone();
        let c = Some(name.as_str());
        if let Some(err) = self.slots[idx].spec.config_error() {
            self.slots[idx]
                .machine
                .on_create_failed(now, "CreateContainerConfigError", &err);
            self.event(c, EventType::Warning, "Failed", format!("Error: {err}"));
            self.write_status().await;
            return;
        }
        let resolved = images::resolve(
            &self.slots[idx].spec,
            &self.shared.config.lab_binary,
            IpAddr::V4(self.ip),
        );
        let (program, args) = match resolved {
            Resolved::Run { program, args } => (program, args),
            Resolved::NotFound(msg) => {
                self.event(
                    c,
                    EventType::Normal,
                    "Pulling",
                    format!("Pulling image \"{image}\""),
                );
                self.slots[idx]
                    .machine
                    .on_create_failed(now, "ErrImagePull", &msg);
                self.event(
                    c,
                    EventType::Warning,
                    "Failed",
                    format!("Failed to pull image \"{image}\": {msg}"),
                );
                self.event(
                    c,
                    EventType::Warning,
                    "Failed",
                    "Error: ErrImagePull".into(),
                );
                self.write_status().await;
                let back = format!("Back-off pulling image \"{image}\"");
                self.slots[idx].machine.enter_image_backoff(&back);
                self.event(c, EventType::Normal, "BackOff", back);
                self.write_status().await;
                return;
            }
            Resolved::Invalid(msg) => {
                self.slots[idx]
                    .machine
                    .on_create_failed(now, "CreateContainerError", &msg);
                self.event(c, EventType::Warning, "Failed", format!("Error: {msg}"));
                self.write_status().await;
                return;
            }
        };
        self.event(
            c,
            EventType::Normal,
            "Pulled",
            format!("Container image \"{image}\" already present on machine"),
        );
        self.seq += 1;
        let n = self.seq;
        let container_id = new_container_id();
        let limit = self.slots[idx].spec.memory_limit.clone().unwrap_or(None);
        let cgroup = match &self.shared.cgroups {
            Some(root) => {
                // The real kubelet's cgroupfs layout with containerd:
                // kubepods[/<qos>]/pod<uid>/<container id>.
                let bare_id = container_id.trim_start_matches("containerd://");
                let cg_path = [
                    "kubepods",
                    self.qos_level,
                    &format!("pod{}", self.pod.uid),
                    bare_id,
                ]
                .iter()
                .filter(|part| !part.is_empty())
                .collect::<std::path::PathBuf>();
                match root.create_at(&cg_path, limit) {
                    Ok(cg) => Some(cg),
                    Err(e) => {
                        let msg = format!("failed to create containerd task: cgroup: {e}");
                        self.start_failed(idx, &container_id, &msg).await;
                        return;
                    }
                }
            }
            None => None,
        };
        let mut env = self.slots[idx].spec.env.clone();
        env.extend([
            ("POD_IP".to_string(), self.ip.to_string()),
            ("POD_NAME".to_string(), self.pod.name.clone()),
            ("POD_NAMESPACE".to_string(), self.pod.namespace.clone()),
            ("HOSTNAME".to_string(), self.pod.name.clone()),
        ]);
        let proc_spec = ProcessSpec {
            program: program.clone(),
            args,
            env: env.clone(),
            log_name: format!("{}/{}/{}", self.pod.namespace, self.pod.name, name),
        };
        self.event(
            c,
            EventType::Normal,
            "Created",
            format!("Created container {name}"),
        );
        match runtime::spawn(&proc_spec, cgroup.as_ref(), (idx, n), self.exits_tx.clone()) {
            Ok(guard) => {
                tracing::debug!(pod = %self.pod.format(), container = %name, pid = guard.pgid(), "started");
                self.slots[idx].machine.on_started(now, &container_id);
                let started = Arc::new(AtomicBool::new(self.slots[idx].spec.startup.is_none()));
                let mut inst = Instance {
                    n,
                    guard,
                    cgroup,
                    probes: vec![],
                    trackers: HashMap::new(),
                    started: started.clone(),
                    kill_at: None,
                };
                let spec = &self.slots[idx].spec;
                for (kind, p) in [
                    (ProbeKind::Startup, &spec.startup),
                    (ProbeKind::Readiness, &spec.readiness),
                    (ProbeKind::Liveness, &spec.liveness),
                ] {
                    let Some(Ok(p)) = p else { continue };
                    inst.trackers.insert(kind, ProbeTracker::new(kind, p));
                    let port = match &p.action {
                        probes::ProbeAction::Http { port, .. }
                        | probes::ProbeAction::Tcp { port, .. } => Some(spec.resolve_port(port)),
                        probes::ProbeAction::Exec(_) => None,
                    };
                    inst.probes.push(tokio::spawn(probe_loop(
                        ProbeJob {
                            idx,
                            n,
                            kind,
                            spec: p.clone(),
                            port,
                            ip: IpAddr::V4(self.ip),
                            env: env.clone(),
                            started: started.clone(),
                        },
                        self.probes_tx.clone(),
                    )));
                }
                self.slots[idx].inst = Some(inst);
                self.event(
                    c,
                    EventType::Normal,
                    "Started",
                    format!("Started container {name}"),
                );
                self.write_status().await;
            }
            Err(e) => {
                drop(cgroup);
                let msg = format!(
                    "failed to create containerd task: failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: exec: \"{program}\": {e}"
                );
                self.start_failed(idx, &container_id, &msg).await;
            }
        }
    }

    async fn start_failed(&mut self, idx: usize, container_id: &str, msg: &str) {
        let now = Now::current();
        let name = self.slots[idx].spec.name.clone();
        let outcome = self.slots[idx]
            .machine
            .on_start_error(now, container_id, msg);
        self.event(
            Some(&name),
            EventType::Warning,
            "Failed",
            format!("Error: {msg}"),
        );
        self.write_status().await;
        self.after_death(idx, outcome).await;
    }

    async fn after_death(&mut self, idx: usize, outcome: Restart) {
        if let Restart::After(_) = outcome
            && self.slots[idx].machine.enter_backoff().is_some()
        {
            let name = self.slots[idx].spec.name.clone();
            self.event(
                Some(&name),
                EventType::Warning,
                "BackOff",
                format!(
                    "Back-off restarting failed container {name} in pod {}",
                    self.pod.format()
                ),
            );
            self.write_status().await;
        }
    }

    /// Reaps an instance: kills what is left of its group, reads the OOM counter,
    /// removes the cgroup.
    fn reap(inst: &mut Instance) -> bool {
        inst.stop_probes();
        inst.guard.finish();
        let oom = inst.cgroup.as_ref().is_some_and(|c| c.oom_kills() > 0);
        if let Some(mut cg) = inst.cgroup.take() {
            cg.remove_blocking();
        }
        oom
    }

    async fn on_exit(&mut self, (idx, n): Tag, status: ExitStatus) {
        let now = Now::current();
        let Some(slot) = self.slots.get_mut(idx) else {
            return;
        };
        let Some(mut inst) = slot.inst.take_if(|i| i.n == n) else {
            return;
        };
        let oom = Self::reap(&mut inst);
        drop(inst);
        let code = runtime::exit_code(status);
        let reason = if oom {
            "OOMKilled"
        } else if code == 0 {
            "Completed"
        } else {
            "Error"
        };
        tracing::info!(pod = %self.pod.format(), container = %slot.spec.name, reason, code, "container died");
        let Some(outcome) = slot.machine.on_exit(now, reason, code, None) else {
            return;
        };
        self.write_status().await;
        self.after_death(idx, outcome).await;
    }

    async fn on_probe(&mut self, p: ProbeMsg) {
        let Some(slot) = self.slots.get_mut(p.idx) else {
            return;
        };
        let name = slot.spec.name.clone();
        let Some(inst) = slot
            .inst
            .as_mut()
            .filter(|i| i.n == p.n && i.kill_at.is_none())
        else {
            return;
        };
        let ok = p.result.is_ok();
        let Some(tracker) = inst.trackers.get_mut(&p.kind) else {
            return;
        };
        let change = tracker.observe(ok);
        let failed_out = tracker.failed_past_threshold();
        if let Err(msg) = &p.result {
            self.event(
                Some(&name),
                EventType::Warning,
                "Unhealthy",
                format!("{} probe failed: {msg}", p.kind.label()),
            );
        }
        let slot = &mut self.slots[p.idx];
        match p.kind {
            ProbeKind::Readiness => {
                if let Some(ready) = change {
                    slot.machine.set_ready(ready);
                    self.write_status().await;
                }
            }
            ProbeKind::Startup => {
                if change == Some(true) {
                    if let Some(inst) = &slot.inst {
                        inst.started.store(true, Ordering::SeqCst);
                    }
                    slot.machine.set_started();
                    self.write_status().await;
                } else if failed_out {
                    self.kill(
                        p.idx,
                        format!("Container {name} failed startup probe, will be restarted"),
                    );
                }
            }
            ProbeKind::Liveness => {
                if change == Some(false) {
                    self.kill(
                        p.idx,
                        format!("Container {name} failed liveness probe, will be restarted"),
                    );
                }
            }
        }
    }

    /// Stops an instance because of a probe: `Killing` Event, SIGTERM, SIGKILL after the
    /// grace period (escalated in `sync`); the exit then takes the normal death path.
    fn kill(&mut self, idx: usize, message: String) {
        let grace = self.pod.grace;
        let name = self.slots[idx].spec.name.clone();
        let Some(inst) = self.slots[idx].inst.as_mut() else {
            return;
        };
        if inst.kill_at.is_some() {
            return;
        }
        inst.stop_probes();
        inst.kill_at = Some(Instant::now() + grace);
        runtime::signal_group(inst.guard.pgid(), libc::SIGTERM);
        self.event(Some(&name), EventType::Normal, "Killing", message);
    }

    /// Stops every running instance: SIGTERM, SIGKILL after the grace period (capped by
    /// `max_stop_grace` on shutdown), reaps them and removes their cgroups.
    async fn stop_all(&mut self, quiet: bool) {
        let grace = if quiet {
            self.pod.grace.min(self.shared.config.max_stop_grace)
        } else {
            self.pod.grace
        };
        let mut running = 0;
        for slot in &mut self.slots {
            if let Some(inst) = slot.inst.as_mut() {
                inst.stop_probes();
                runtime::signal_group(inst.guard.pgid(), libc::SIGTERM);
                running += 1;
                if !quiet {
                    self.shared.recorder.record(
                        &self.pod_ref,
                        Some(&slot.spec.name),
                        EventType::Normal,
                        "Killing",
                        format!("Stopping container {}", slot.spec.name),
                    );
                }
            }
        }
        let deadline = tokio::time::Instant::now() + grace;
        let mut killed = false;
        while running > 0 {
            let until = if killed {
                deadline + Duration::from_secs(5)
            } else {
                deadline
            };
            match tokio::time::timeout_at(until, self.exits_rx.recv()).await {
                Ok(Some(((idx, n), _))) => {
                    if let Some(mut inst) = self
                        .slots
                        .get_mut(idx)
                        .and_then(|s| s.inst.take_if(|i| i.n == n))
                    {
                        Self::reap(&mut inst);
                        running -= 1;
                    }
                }
                Ok(None) => break,
                Err(_) if !killed => {
                    for slot in &self.slots {
                        if let Some(inst) = &slot.inst {
                            runtime::signal_group(inst.guard.pgid(), libc::SIGKILL);
                        }
                    }
                    killed = true;
                }
                Err(_) => break,
            }
        }
        for slot in &mut self.slots {
            if let Some(mut inst) = slot.inst.take() {
                Self::reap(&mut inst);
            }
        }
    }
}

struct ProbeJob {
    idx: usize,
    n: u64,
    kind: ProbeKind,
    spec: ProbeSpec,
    port: Option<Result<u16, String>>,
    ip: IpAddr,
    env: Vec<(String, String)>,
    started: Arc<AtomicBool>,
}

/// Probes one instance every period (after the initial delay) and reports each result.
async fn probe_loop(job: ProbeJob, tx: mpsc::UnboundedSender<ProbeMsg>) {
    tokio::time::sleep(job.spec.initial_delay).await;
    let mut tick = tokio::time::interval(job.spec.period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if job.kind != ProbeKind::Startup && !job.started.load(Ordering::SeqCst) {
            continue;
        }
        let result = match &job.port {
            Some(Err(e)) => Err(e.clone()),
            port => {
                let port = port.as_ref().and_then(|p| p.as_ref().ok().copied());
                probes::run_probe(&job.spec.action, port, job.ip, job.spec.timeout, &job.env).await
            }
        };
        let done = job.kind == ProbeKind::Startup && result.is_ok();
        if tx
            .send(ProbeMsg {
                idx: job.idx,
                n: job.n,
                kind: job.kind,
                result,
            })
            .is_err()
            || done
        {
            return;
        }
    }
}
