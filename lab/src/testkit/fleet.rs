//! The realistic pod fleet the load benches write into the lab: pods as a kubelet would
//! report them, about 7 KB of JSON each (a `last-applied-configuration` annotation and
//! `managedFields`, which the daemon must skip; Deployment replicas with
//! `pod-template-hash`, StatefulSets, bare pods; one or two containers with memory
//! limits), and kubelet-style status updates that take one container of a pod through
//! running (ready) → terminated (OOMKilled, exit 137) → waiting (CrashLoopBackOff) →
//! running (restartCount + 1, not ready) → ready.
//!
//! Everything but the timestamps and the uids the lab assigns is derived from the pod's
//! index by a fixed mix, so two runs with the same pod count write the same pods (the
//! benches' figures stay comparable across runs and commits).

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail, ensure};
use jiff::Timestamp;
use serde_json::{Value, json};

use crate::apiserver::{PODS, Store};

/// The namespaces pods are spread over, in the order they are used (a fleet of `n` pods
/// uses the first `clamp(n / 100, 1, 10)`; create them before [`Fleet::load`]).
pub const NAMESPACE_NAMES: [&str; 10] = [
    "checkout",
    "payments",
    "catalog",
    "search",
    "identity",
    "notifications",
    "analytics",
    "media",
    "ledger",
    "platform",
];
const APP_NAMES: [&str; 12] = [
    "api",
    "web",
    "worker",
    "gateway",
    "cart",
    "pricing",
    "inventory",
    "auth",
    "mailer",
    "indexer",
    "thumbnailer",
    "scheduler",
];
const MEMORY_LIMITS: [(&str, &str); 4] = [
    ("128Mi", "64Mi"),
    ("256Mi", "128Mi"),
    ("512Mi", "256Mi"),
    ("1Gi", "512Mi"),
];
/// Kubernetes' alphabet for generated name suffixes and template hashes.
const SUFFIX_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// Where a pod's dying container is in its restart cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Running and ready (the state every pod is loaded in).
    Ready,
    /// Terminated: OOMKilled, exit code 137.
    Terminated,
    /// Waiting in CrashLoopBackOff, the death in lastState.
    BackOff,
    /// Restarted (restartCount + 1), running but not ready yet.
    Starting,
}

struct SimContainer {
    name: String,
    image: String,
    image_id: String,
    container_id: String,
}

/// One pod of the fleet: what its kubelet knows to write its status.
pub struct SimPod {
    namespace: &'static str,
    name: String,
    uid: String,
    /// What a replacement of this pod is created from (churn).
    app: &'static str,
    workload: usize,
    owner: Owner,
    containers: Vec<SimContainer>,
    /// The container that dies over and over.
    victim: usize,
    stage: Stage,
    restarts: u32,
    instance: u64,
    started_at: String,
    /// When the pod's readiness last changed.
    ready_since: String,
    pod_started: String,
    host_ip: String,
    pod_ip: String,
    /// The `terminated` state shown while in [`Stage::Terminated`].
    dying: Option<Value>,
    /// The most recent death, shown as `lastState`.
    last_death: Option<Value>,
}

/// What the writer injected (what the daemon must export).
#[derive(Debug, Default, Clone, Copy)]
pub struct Injected {
    pub oom_kills: u64,
    pub restarts: u64,
}

/// The simulated pods: planned by [`Fleet::plan`], created by [`Fleet::load`], then
/// updated by [`Fleet::stream_updates`] (and churned by [`Fleet::replace_random`]).
pub struct Fleet {
    pods: Vec<SimPod>,
    /// The pod objects to create (taken by [`Fleet::load`]).
    objects: Vec<Value>,
    /// Workloads planned (Deployments, StatefulSets, groups of bare pods).
    pub workloads: usize,
    /// Total size of the `last-applied-configuration` annotations.
    pub annotation_bytes: usize,
    /// Seed of the next pod planned (pods are never renumbered, so names stay unique).
    next_index: u64,
    /// Updates written so far (where [`Fleet::stream_updates`] continues).
    updates: usize,
    /// What the writer injected so far.
    pub injected: Injected,
    /// JSON size of the created pods: total, smallest, largest.
    pub json_bytes: usize,
    pub json_min: usize,
    pub json_max: usize,
}

/// A deterministic 64-bit mix (splitmix64), for reproducible names, IPs and IDs.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn suffix(seed: u64, len: usize) -> String {
    let mut x = mix(seed);
    (0..len)
        .map(|_| {
            let c = SUFFIX_ALPHABET[(x % SUFFIX_ALPHABET.len() as u64) as usize];
            x /= SUFFIX_ALPHABET.len() as u64;
            if x == 0 {
                x = mix(seed ^ 0xa5a5);
            }
            char::from(c)
        })
        .collect()
}

fn hex64(seed: u64) -> String {
    format!(
        "{:016x}{:016x}{:016x}{:016x}",
        mix(seed),
        mix(seed ^ 1),
        mix(seed ^ 2),
        mix(seed ^ 3)
    )
}

fn ip(seed: u64, prefix: &str) -> String {
    let x = mix(seed);
    format!("{prefix}.{}.{}", (x >> 8) % 250 + 1, x % 250 + 2)
}

/// Whole-second RFC 3339, as the kubelet writes timestamps.
fn rfc3339(at: Timestamp) -> String {
    Timestamp::from_second(at.as_second())
        .expect("whole seconds of a valid timestamp are valid")
        .to_string()
}

/// The kind of workload a pod belongs to.
#[derive(Clone)]
enum Owner {
    Deployment { name: String, hash: String },
    StatefulSet { name: String, ordinal: usize },
    Bare,
}

impl Fleet {
    /// Plans `count` pods: per 20 workloads, 18 Deployments of 10 replicas, one
    /// StatefulSet of 3 and 5 bare pods, spread over up to 10 namespaces.
    pub fn plan(count: usize) -> Fleet {
        Fleet::plan_at(count, Timestamp::now())
    }

    /// [`Fleet::plan`] as of `now` (the pods started 26 hours before it): the same `now`
    /// gives the same pods, byte for byte.
    pub fn plan_at(count: usize, now: Timestamp) -> Fleet {
        let namespaces = (count / 100).clamp(1, NAMESPACE_NAMES.len());
        let started = rfc3339(now - jiff::SignedDuration::from_hours(26));
        let mut fleet = Fleet {
            pods: Vec::with_capacity(count),
            objects: Vec::with_capacity(count),
            workloads: 0,
            annotation_bytes: 0,
            next_index: 0,
            updates: 0,
            injected: Injected::default(),
            json_bytes: 0,
            json_min: usize::MAX,
            json_max: 0,
        };
        let mut workload = 0usize;
        while fleet.pods.len() < count {
            let namespace = NAMESPACE_NAMES[workload % namespaces];
            let app = APP_NAMES[(workload / namespaces) % APP_NAMES.len()];
            let serial = workload / (namespaces * APP_NAMES.len());
            let seed = workload as u64;
            match workload % 20 {
                0..=17 => {
                    let name = format!("{app}-{serial}");
                    let hash = suffix(seed ^ 0xd5, 10);
                    for _ in 0..10 {
                        let owner = Owner::Deployment {
                            name: name.clone(),
                            hash: hash.clone(),
                        };
                        fleet.add(namespace, app, workload, owner, &started);
                    }
                }
                18 => {
                    let name = format!("{app}-db-{serial}");
                    for ordinal in 0..3 {
                        let owner = Owner::StatefulSet {
                            name: name.clone(),
                            ordinal,
                        };
                        fleet.add(namespace, app, workload, owner, &started);
                    }
                }
                _ => {
                    for _ in 0..5 {
                        fleet.add(namespace, app, workload, Owner::Bare, &started);
                    }
                }
            }
            fleet.workloads += 1;
            workload += 1;
        }
        fleet.pods.truncate(count);
        fleet.objects.truncate(count);
        fleet
    }

    /// The pods, in the order they were planned (churn reorders them).
    pub fn pods(&self) -> &[SimPod] {
        &self.pods
    }

    /// How many of [`NAMESPACE_NAMES`] the pods use.
    pub fn namespace_count(&self) -> usize {
        let used: std::collections::HashSet<&str> =
            self.pods.iter().map(|pod| pod.namespace).collect();
        used.len()
    }

    /// Containers over all pods (what the daemon should report observing).
    pub fn container_count(&self) -> usize {
        self.pods.iter().map(|pod| pod.containers.len()).sum()
    }

    fn add(
        &mut self,
        namespace: &'static str,
        app: &'static str,
        workload: usize,
        owner: Owner,
        started: &str,
    ) {
        let index = self.next_index;
        self.next_index += 1;
        let seed = index.wrapping_mul(0x1000_0001) ^ 0x5eed;
        let (limit, request) = MEMORY_LIMITS[workload % MEMORY_LIMITS.len()];
        let version = format!("1.{}.{}", workload % 7, mix(seed) % 20);
        let image = format!("registry.example.com/{namespace}/{app}:{version}");
        let sidecar = matches!(owner, Owner::Deployment { .. }) && workload.is_multiple_of(2);
        let pod_name = match &owner {
            Owner::Deployment { name, hash } => format!("{name}-{hash}-{}", suffix(seed, 5)),
            Owner::StatefulSet { name, ordinal } => format!("{name}-{ordinal}"),
            Owner::Bare => format!("{app}-debug-{}", suffix(seed, 5)),
        };

        let mut labels = json!({
            "app.kubernetes.io/name": app,
            "app.kubernetes.io/instance": format!("{app}-{namespace}"),
            "app.kubernetes.io/version": version,
            "app.kubernetes.io/component": if matches!(owner, Owner::StatefulSet { .. }) { "database" } else { "server" },
            "app.kubernetes.io/part-of": namespace,
            "app.kubernetes.io/managed-by": "Helm",
            "team": format!("team-{namespace}"),
        });
        let mut owner_references = json!([]);
        match &owner {
            Owner::Deployment { name, hash } => {
                labels["pod-template-hash"] = json!(hash);
                owner_references = json!([{
                    "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{name}-{hash}"),
                    "uid": format!("{:08x}-0000-4000-8000-{:012x}", mix(workload as u64) as u32, workload),
                    "controller": true, "blockOwnerDeletion": true
                }]);
            }
            Owner::StatefulSet { name, .. } => {
                labels["controller-revision-hash"] =
                    json!(format!("{name}-{}", suffix(seed ^ 7, 10)));
                labels["statefulset.kubernetes.io/pod-name"] = json!(pod_name);
                owner_references = json!([{
                    "apiVersion": "apps/v1", "kind": "StatefulSet", "name": name,
                    "uid": format!("{:08x}-0000-4000-9000-{:012x}", mix(workload as u64) as u32, workload),
                    "controller": true, "blockOwnerDeletion": true
                }]);
            }
            Owner::Bare => {}
        }

        let main = json!({
            "name": app,
            "image": image,
            "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"},
                      {"name": "metrics", "containerPort": 9090, "protocol": "TCP"}],
            "env": [
                {"name": "RUST_LOG", "value": "info"},
                {"name": "DATABASE_URL", "value": format!("postgres://{app}@{app}-db.{namespace}.svc:5432/{app}")},
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}},
                {"name": "GOMEMLIMIT", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "0"}}}
            ],
            "resources": {"limits": {"cpu": "1", "memory": limit},
                          "requests": {"cpu": "100m", "memory": request}},
            "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http", "scheme": "HTTP"},
                              "periodSeconds": 10, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3},
            "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http", "scheme": "HTTP"},
                               "periodSeconds": 5, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3},
            "volumeMounts": [{"name": format!("kube-api-access-{}", suffix(seed ^ 3, 5)),
                              "readOnly": true, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
            "securityContext": {"runAsNonRoot": true, "allowPrivilegeEscalation": false,
                                "capabilities": {"drop": ["ALL"]}, "readOnlyRootFilesystem": true}
        });
        let mut containers = vec![main];
        let mut sim_containers = vec![SimContainer {
            name: app.to_owned(),
            image: image.clone(),
            image_id: format!(
                "registry.example.com/{namespace}/{app}@sha256:{}",
                hex64(seed ^ 11)
            ),
            container_id: format!("containerd://{}", hex64(seed ^ 12)),
        }];
        if sidecar {
            let proxy = "docker.io/istio/proxyv2:1.22.3";
            containers.push(json!({
                "name": "istio-proxy",
                "image": proxy,
                "args": ["proxy", "sidecar", "--domain", "$(POD_NAMESPACE).svc.cluster.local",
                         "--proxyLogLevel=warning", "--log_output_level=default:info"],
                "ports": [{"name": "http-envoy-prom", "containerPort": 15090, "protocol": "TCP"}],
                "resources": {"limits": {"cpu": "2", "memory": "1Gi"},
                              "requests": {"cpu": "10m", "memory": "40Mi"}},
                "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": 15021, "scheme": "HTTP"},
                                   "periodSeconds": 15, "timeoutSeconds": 3, "failureThreshold": 4}
            }));
            sim_containers.push(SimContainer {
                name: "istio-proxy".to_owned(),
                image: proxy.to_owned(),
                image_id: format!("docker.io/istio/proxyv2@sha256:{}", hex64(13)),
                container_id: format!("containerd://{}", hex64(seed ^ 14)),
            });
        }
        let spec = json!({
            "containers": containers,
            "volumes": [{"name": format!("kube-api-access-{}", suffix(seed ^ 3, 5)), "projected": {
                "defaultMode": 420,
                "sources": [{"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}}]
            }}],
            "nodeName": format!("node-{:03}", mix(seed ^ 5) % 120),
            "serviceAccountName": app,
            "serviceAccount": app,
            "securityContext": {"fsGroup": 2000},
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
            ],
            "preemptionPolicy": "PreemptLowerPriority",
            "terminationGracePeriodSeconds": 30
        });
        // What `kubectl apply` leaves behind: the whole applied manifest, about 1 KB.
        let last_applied = serde_json::to_string(&json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"annotations": {}, "labels": labels, "name": pod_name, "namespace": namespace},
            "spec": {"containers": [spec["containers"][0].clone()]}
        }))
        .expect("JSON serializes");
        self.annotation_bytes += last_applied.len();
        let managed_fields = json!([
            {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
             "time": started, "fieldsType": "FieldsV1",
             "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:app.kubernetes.io/name": {}, "f:pod-template-hash": {}},
                          "f:ownerReferences": {".": {}}},
                          "f:spec": {"f:containers": {}, "f:dnsPolicy": {}, "f:enableServiceLinks": {},
                                     "f:restartPolicy": {}, "f:schedulerName": {}, "f:securityContext": {},
                                     "f:terminationGracePeriodSeconds": {}}}},
            {"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "time": started,
             "fieldsType": "FieldsV1", "subresource": "status",
             "fieldsV1": {"f:status": {"f:conditions": {}, "f:containerStatuses": {}, "f:hostIP": {},
                                       "f:hostIPs": {}, "f:phase": {}, "f:podIP": {}, "f:podIPs": {},
                                       "f:startTime": {}}}}
        ]);
        let metadata = json!({
            "name": pod_name,
            "namespace": namespace,
            "labels": labels,
            "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": last_applied,
                "kubectl.kubernetes.io/restartedAt": started,
                "prometheus.io/scrape": "true",
                "prometheus.io/port": "9090",
                "cluster-autoscaler.kubernetes.io/safe-to-evict": "true"
            },
            "ownerReferences": owner_references,
            "managedFields": managed_fields
        });

        let victim = if sim_containers.len() > 1 && index.is_multiple_of(7) {
            1
        } else {
            0
        };
        let pod = SimPod {
            namespace,
            name: pod_name,
            uid: String::new(),
            app,
            workload,
            owner,
            containers: sim_containers,
            victim,
            stage: Stage::Ready,
            restarts: 0,
            instance: 0,
            started_at: started.to_owned(),
            ready_since: started.to_owned(),
            pod_started: started.to_owned(),
            host_ip: ip(seed ^ 21, "10.128"),
            pod_ip: ip(seed ^ 22, "10.244"),
            dying: None,
            last_death: None,
        };
        let status = pod.status();
        self.objects.push(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": metadata, "spec": spec, "status": status
        }));
        self.pods.push(pod);
    }

    /// Creates every planned pod in the lab (and records their JSON sizes).
    pub fn load(mut self, store: &Store) -> Result<Fleet> {
        for (pod, object) in self.pods.iter_mut().zip(std::mem::take(&mut self.objects)) {
            let created = store
                .create_with_status(&PODS, pod.namespace, object)
                .with_context(|| format!("pod {}/{} created", pod.namespace, pod.name))?;
            let bytes = serde_json::to_vec(&created).map_or(0, |json| json.len());
            self.json_bytes += bytes;
            self.json_min = self.json_min.min(bytes);
            self.json_max = self.json_max.max(bytes);
            pod.uid = created["metadata"]["uid"]
                .as_str()
                .context("the lab assigned a uid")?
                .to_owned();
        }
        Ok(self)
    }

    /// Writes `count` status updates, visiting the pods in a fixed scattered order so
    /// that consecutive updates hit different pods, namespaces and workloads (continuing
    /// where the previous call stopped). With `capture`, also returns each update's watch
    /// event line exactly as the lab's watch will send it: `{"type":"MODIFIED","object":`,
    /// the stored object serialized by `serde_json::to_writer`, `}`. With `stop`, fails
    /// once that flag is set (checked every 1,000 updates, so that a bench interrupted by
    /// Ctrl-C does not wait for a long writer).
    pub fn stream_updates(
        mut self,
        store: &Store,
        count: usize,
        capture: bool,
        stop: Option<&AtomicBool>,
    ) -> Result<(Fleet, Vec<Vec<u8>>)> {
        let n = self.pods.len();
        ensure!(count == 0 || n > 0, "no pods to write {count} updates to");
        let stride = (n * 618 / 1000..)
            .find(|s| gcd(*s, n) == 1)
            .expect("some stride is coprime with the pod count");
        let mut lines = Vec::with_capacity(if capture { count } else { 0 });
        for _ in 0..count {
            if self.updates.is_multiple_of(1_000)
                && stop.is_some_and(|stop| stop.load(Ordering::Relaxed))
            {
                bail!("stopped");
            }
            let pod = &mut self.pods[(self.updates * stride) % n];
            self.updates += 1;
            let now = rfc3339(Timestamp::now());
            match pod.advance(&now) {
                Stage::Terminated => self.injected.oom_kills += 1,
                Stage::Starting => self.injected.restarts += 1,
                Stage::BackOff | Stage::Ready => {}
            }
            let stored = store
                .merge_status(&PODS, pod.namespace, &pod.name, pod.status())
                .with_context(|| format!("status of {}/{} written", pod.namespace, pod.name))?;
            if capture {
                let mut line = Vec::with_capacity(12 * 1024);
                line.extend_from_slice(b"{\"type\":\"MODIFIED\",\"object\":");
                serde_json::to_writer(&mut line, &stored).context("event serializes")?;
                line.extend_from_slice(b"}");
                lines.push(line);
            }
        }
        Ok((self, lines))
    }

    /// Churn: deletes a random pod and creates its replacement (same Deployment with a
    /// new name, same StatefulSet name, or a new bare pod); with `crash`, the new pod goes
    /// through one OOMKill cycle. Returns whether the replacement is a bare pod.
    pub fn replace_random(&mut self, store: &Store, serial: u64, crash: bool) -> Result<bool> {
        ensure!(!self.pods.is_empty(), "no pod to replace");
        let index = (mix(serial ^ 0xc4c4) % self.pods.len() as u64) as usize;
        let old = self.pods.swap_remove(index);
        store
            .delete(&PODS, old.namespace, &old.name)
            .with_context(|| format!("pod {}/{} deleted", old.namespace, old.name))?;
        let started = rfc3339(Timestamp::now());
        let bare = matches!(old.owner, Owner::Bare);
        for attempt in 0.. {
            self.add(
                old.namespace,
                old.app,
                old.workload,
                old.owner.clone(),
                &started,
            );
            let object = self.objects.pop().context("planned object")?;
            let mut pod = self.pods.pop().context("planned pod")?;
            let created = match store.create_with_status(&PODS, pod.namespace, object) {
                Ok(created) => created,
                // A generated name taken already: plan another.
                Err(error) if error.code == 409 && attempt < 5 => continue,
                Err(error) => {
                    return Err(error)
                        .with_context(|| format!("pod {}/{} created", pod.namespace, pod.name));
                }
            };
            pod.uid = created["metadata"]["uid"]
                .as_str()
                .context("the lab assigned a uid")?
                .to_owned();
            if crash {
                for _ in 0..4 {
                    let now = rfc3339(Timestamp::now());
                    match pod.advance(&now) {
                        Stage::Terminated => self.injected.oom_kills += 1,
                        Stage::Starting => self.injected.restarts += 1,
                        Stage::BackOff | Stage::Ready => {}
                    }
                    store
                        .merge_status(&PODS, pod.namespace, &pod.name, pod.status())
                        .with_context(|| {
                            format!("status of {}/{} written", pod.namespace, pod.name)
                        })?;
                }
            }
            self.pods.push(pod);
            break;
        }
        Ok(bare)
    }
}

fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl SimPod {
    pub fn namespace(&self) -> &'static str {
        self.namespace
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Moves the victim one step through its cycle at time `now`; returns the new stage.
    fn advance(&mut self, now: &str) -> Stage {
        let was_ready = self.stage == Stage::Ready;
        self.stage = match self.stage {
            Stage::Ready => {
                let container = &self.containers[self.victim];
                self.dying = Some(json!({
                    "exitCode": 137,
                    "reason": "OOMKilled",
                    "startedAt": self.started_at,
                    "finishedAt": now,
                    "containerID": container.container_id,
                }));
                Stage::Terminated
            }
            Stage::Terminated => {
                self.last_death = self.dying.take();
                Stage::BackOff
            }
            Stage::BackOff => {
                self.restarts += 1;
                self.instance += 1;
                let seed = hash_str(&self.uid) ^ (self.instance << 4) ^ self.victim as u64;
                self.containers[self.victim].container_id = format!("containerd://{}", hex64(seed));
                self.started_at = now.to_owned();
                Stage::Starting
            }
            Stage::Starting => Stage::Ready,
        };
        if was_ready != (self.stage == Stage::Ready) {
            self.ready_since = now.to_owned();
        }
        self.stage
    }

    fn status(&self) -> Value {
        let ready = self.stage == Stage::Ready;
        let victim = &self.containers[self.victim].name;
        let readiness = |kind: &str| {
            let mut condition = json!({
                "type": kind, "status": if ready { "True" } else { "False" },
                "lastProbeTime": null, "lastTransitionTime": self.ready_since
            });
            if !ready {
                condition["reason"] = json!("ContainersNotReady");
                condition["message"] = json!(format!("containers with unready status: [{victim}]"));
            }
            condition
        };
        let scheduled = |kind: &str| {
            json!({"type": kind, "status": "True", "lastProbeTime": null,
                   "lastTransitionTime": self.pod_started})
        };
        let statuses: Vec<Value> = self
            .containers
            .iter()
            .enumerate()
            .map(|(index, container)| {
                if index == self.victim {
                    self.victim_status(container)
                } else {
                    json!({
                        "name": container.name, "image": container.image, "imageID": container.image_id,
                        "containerID": container.container_id, "ready": true, "started": true,
                        "restartCount": 0, "state": {"running": {"startedAt": self.pod_started}},
                        "lastState": {}
                    })
                }
            })
            .collect();
        json!({
            "phase": "Running",
            "conditions": [
                scheduled("PodReadyToStartContainers"),
                scheduled("Initialized"),
                readiness("Ready"),
                readiness("ContainersReady"),
                scheduled("PodScheduled"),
            ],
            "hostIP": self.host_ip,
            "hostIPs": [{"ip": self.host_ip}],
            "podIP": self.pod_ip,
            "podIPs": [{"ip": self.pod_ip}],
            "startTime": self.pod_started,
            "containerStatuses": statuses,
            "qosClass": "Burstable"
        })
    }

    fn victim_status(&self, container: &SimContainer) -> Value {
        let last_state = match &self.last_death {
            Some(death) => json!({"terminated": death}),
            None => json!({}),
        };
        let mut status = json!({
            "name": container.name, "image": container.image, "imageID": container.image_id,
            "restartCount": self.restarts, "lastState": last_state
        });
        let (ready, started, state) = match self.stage {
            Stage::Ready => (
                true,
                true,
                json!({"running": {"startedAt": self.started_at}}),
            ),
            Stage::Starting => (
                false,
                true,
                json!({"running": {"startedAt": self.started_at}}),
            ),
            Stage::Terminated => (false, false, json!({"terminated": self.dying})),
            Stage::BackOff => (
                false,
                false,
                json!({"waiting": {
                    "reason": "CrashLoopBackOff",
                    "message": format!(
                        "back-off 10s restarting failed container={} pod={}_{}({})",
                        container.name, self.name, self.namespace, self.uid
                    )
                }}),
            ),
        };
        status["ready"] = json!(ready);
        status["started"] = json!(started);
        status["state"] = state;
        if self.stage != Stage::BackOff {
            status["containerID"] = json!(container.container_id);
        }
        status
    }
}

fn hash_str(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FNV-1a of every planned object and of the statuses one cycle writes for the first
    /// pods: the generator moved here from the benches, and the benches' figures are only
    /// comparable across commits while it writes the same bytes.
    #[test]
    fn generates_the_same_pods_as_before() {
        let now: Timestamp = "2024-06-01T12:34:56.789Z".parse().expect("valid timestamp");
        let mut fleet = Fleet::plan_at(250, now);
        let planned: String = fleet
            .objects
            .iter()
            .map(|object| serde_json::to_string(object).expect("JSON serializes"))
            .collect();
        let mut statuses = String::new();
        for (index, pod) in fleet.pods.iter_mut().take(20).enumerate() {
            // The lab assigns uids; the restarted container's id is derived from it.
            pod.uid = format!("00000000-0000-4000-8000-{index:012}");
            for step in 0..5 {
                pod.advance(&format!("2024-06-02T00:00:0{step}Z"));
                statuses.push_str(&pod.status().to_string());
            }
        }
        assert_eq!(
            (
                fleet.workloads,
                fleet.namespace_count(),
                fleet.container_count()
            ),
            (27, 2, 372)
        );
        assert_eq!(
            (planned.len(), hash_str(&planned), fleet.annotation_bytes),
            (1_728_657, 12_683_803_258_158_498_750, 419_916)
        );
        assert_eq!(
            (statuses.len(), hash_str(&statuses)),
            (172_949, 12_031_250_219_398_973_731)
        );
    }
}
