//! The pod status the kubelet writes: phase (the kubelet's `getPhase`), the conditions
//! `PodScheduled`, `Initialized`, `ContainersReady`, `Ready` with `lastTransitionTime`
//! kept until the value changes, `podIP`/`podIPs`, `hostIP`/`hostIPs`, `startTime`,
//! `qosClass` and the container statuses. Pure: built from the container machines.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde_json::{Value, json};

use super::machine::{ContainerMachine, State, rfc3339};
use super::spec::RestartPolicy;

/// The pod's phase from its containers, as the kubelet's `getPhase` computes it.
pub fn phase(policy: RestartPolicy, containers: &[&ContainerMachine]) -> &'static str {
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for c in containers {
        match c.state() {
            State::Running { .. } => running += 1,
            State::Terminated(t) => {
                stopped += 1;
                if t.exit_code == 0 {
                    succeeded += 1;
                }
            }
            State::Waiting { .. } => {
                if c.last().is_some() {
                    stopped += 1;
                } else {
                    waiting += 1;
                }
            }
        }
    }
    if waiting > 0 || containers.is_empty() {
        "Pending"
    } else if running > 0 {
        "Running"
    } else if stopped > 0 {
        if policy == RestartPolicy::Always {
            "Running"
        } else if stopped == succeeded {
            "Succeeded"
        } else if policy == RestartPolicy::Never {
            "Failed"
        } else {
            "Running"
        }
    } else {
        "Pending"
    }
}

/// Conditions with their transition times.
#[derive(Debug, Clone, Default)]
pub struct Conditions {
    seen: BTreeMap<&'static str, (bool, Timestamp)>,
}

impl Conditions {
    fn cond(
        &mut self,
        kind: &'static str,
        ok: bool,
        now: Timestamp,
        reason: Option<&str>,
        message: Option<String>,
    ) -> Value {
        let at = match self.seen.get(kind) {
            Some((was, at)) if *was == ok => *at,
            _ => {
                self.seen.insert(kind, (ok, now));
                now
            }
        };
        let mut c = json!({
            "type": kind,
            "status": if ok { "True" } else { "False" },
            "lastProbeTime": null,
            "lastTransitionTime": rfc3339(at),
        });
        if !ok {
            if let Some(r) = reason {
                c["reason"] = json!(r);
            }
            if let Some(m) = message {
                c["message"] = json!(m);
            }
        }
        c
    }

    /// The four conditions for containers `cs` at `now`.
    pub fn render(&mut self, cs: &[&ContainerMachine], now: Timestamp) -> Value {
        let unready: Vec<&str> = cs.iter().filter(|c| !c.ready()).map(|c| c.name()).collect();
        let all_ready = unready.is_empty();
        let msg = (!all_ready)
            .then(|| format!("containers with unready status: [{}]", unready.join(" ")));
        json!([
            self.cond("PodScheduled", true, now, None, None),
            self.cond("Initialized", true, now, None, None),
            self.cond(
                "ContainersReady",
                all_ready,
                now,
                Some("ContainersNotReady"),
                msg.clone()
            ),
            self.cond("Ready", all_ready, now, Some("ContainersNotReady"), msg),
        ])
    }
}

/// Everything besides the containers that goes into the status.
#[derive(Debug, Clone)]
pub struct PodInfo<'a> {
    /// Restart policy.
    pub policy: RestartPolicy,
    /// Pod IP.
    pub pod_ip: &'a str,
    /// Node IP.
    pub host_ip: &'a str,
    /// When the kubelet took the pod.
    pub start_time: Timestamp,
    /// `qosClass` to set if the pod has none.
    pub qos_class: Option<&'a str>,
}

/// The full `status` object.
pub fn pod_status(
    info: &PodInfo<'_>,
    conditions: &mut Conditions,
    containers: &[(&ContainerMachine, &str, &str)],
    now: Timestamp,
) -> Value {
    let machines: Vec<&ContainerMachine> = containers.iter().map(|(m, _, _)| *m).collect();
    let mut s = json!({
        "phase": phase(info.policy, &machines),
        "conditions": conditions.render(&machines, now),
        "hostIP": info.host_ip,
        "hostIPs": [{"ip": info.host_ip}],
        "podIP": info.pod_ip,
        "podIPs": [{"ip": info.pod_ip}],
        "startTime": rfc3339(info.start_time),
        "containerStatuses": containers
            .iter()
            .map(|(m, image, id)| m.status_json(image, id))
            .collect::<Vec<_>>(),
    });
    if let Some(q) = info.qos_class {
        s["qosClass"] = json!(q);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubelet::backoff::BackoffConfig;
    use crate::kubelet::machine::Now;
    use std::time::Duration;

    fn m(policy: RestartPolicy, now: Now) -> ContainerMachine {
        ContainerMachine::new(
            "c",
            "p",
            policy,
            BackoffConfig::default(),
            false,
            false,
            now,
        )
    }

    #[test]
    fn phases() {
        let t = Now::current();
        let mut a = m(RestartPolicy::Never, t);
        assert_eq!(phase(RestartPolicy::Never, &[&a]), "Pending");
        a.on_started(t, "containerd://1");
        assert_eq!(phase(RestartPolicy::Never, &[&a]), "Running");
        a.on_exit(t, "Error", 1, None);
        assert_eq!(phase(RestartPolicy::Never, &[&a]), "Failed");
        let mut b = m(RestartPolicy::Never, t);
        b.on_started(t, "containerd://2");
        b.on_exit(t, "Completed", 0, None);
        assert_eq!(phase(RestartPolicy::Never, &[&b]), "Succeeded");
        let mut c = m(RestartPolicy::Always, t);
        c.on_started(t, "containerd://3");
        c.on_exit(t, "Completed", 0, None);
        assert_eq!(phase(RestartPolicy::Always, &[&c]), "Running");
    }

    #[test]
    fn conditions_keep_transition_times() {
        let t = Now::current();
        let mut a = m(RestartPolicy::Always, t);
        let mut conds = Conditions::default();
        let c1 = conds.render(&[&a], t.wall);
        assert_eq!(c1[2]["status"], "False");
        assert_eq!(c1[2]["message"], "containers with unready status: [c]");
        let later = t.plus(Duration::from_secs(5));
        a.on_started(later, "containerd://1");
        let c2 = conds.render(&[&a], later.wall);
        assert_eq!(c2[3]["status"], "True");
        assert_eq!(c2[3]["lastTransitionTime"], rfc3339(later.wall));
        assert_eq!(c2[0]["lastTransitionTime"], c1[0]["lastTransitionTime"]);
        let info = PodInfo {
            policy: RestartPolicy::Always,
            pod_ip: "127.0.1.1",
            host_ip: "127.0.0.1",
            start_time: t.wall,
            qos_class: Some("BestEffort"),
        };
        let s = pod_status(&info, &mut conds, &[(&a, "img", "id")], later.wall);
        assert_eq!(s["phase"], "Running");
        assert_eq!(s["podIPs"][0]["ip"], "127.0.1.1");
        assert_eq!(s["containerStatuses"][0]["name"], "c");
        assert_eq!(s["qosClass"], "BestEffort");
    }
}
