//! The kernel's OOM-kill counters of each container instance, reconciled with the
//! deaths the kubelet reports: a pure state machine (time is an input, no I/O).
//!
//! One container instance (one `containerID`) has one memory cgroup, so one `oom_kill`
//! counter starting at 0. Its increases are *pending* kills until one of two things
//! settles them:
//!
//! - **The instance dies** (the kubelet reports `state`/`lastState.terminated` for its
//!   ID). If it ended by SIGKILL (exit code 137, or a `StartError`/128 during start) and
//!   kills are pending, the kernel's OOM killer ended it: one pending kill is the
//!   container's own death, the others (if any) were processes killed before it. When
//!   the kubelet said `OOMKilled`, it agrees ([`NodeEvent::ContainerOomKill`]); when it
//!   said anything else (`Error`/137 after a lost runtime event, `StartError`), the death
//!   is [`NodeEvent::Reclassified`] as an OOM kill. A group kill (`oom_group_kill` moved:
//!   `memory.oom.group`, every process of the cgroup killed together) is the death
//!   alone, however many processes `oom_kill` counted. Any other death leaves all its
//!   pending kills as process kills.
//! - **The instance lives on**: a reading taken at least `settle` after the first pending
//!   kill shows the cgroup still has processes, and no death was reported: the kills
//!   ended processes, not the container ([`NodeEvent::ProcessOomKills`]). A cgroup
//!   that emptied or vanished waits for the kubelet's report of the death instead.
//!
//! So a kill is counted exactly once: as a process kill or as (part of) the container's
//! death, never both. The first reading of an instance that existed when the agent
//! started is its baseline (old kills are not news); an instance that appeared later
//! counts from 0. A counter that goes down means the cgroup was recreated under the
//! same path: it is counted from 0 again ([`NodeEvent::CounterReset`]).

use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};

use super::counters::Snapshot;
use crate::observe::Cause;

/// What a reading of an instance's cgroup gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reading {
    Counters(Snapshot),
    /// The cgroup directory is gone (the container ended, or never had one here).
    Vanished,
}

/// The death of an instance as the kubelet reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReportedDeath {
    /// The cause the observer gives the kubelet's reason.
    pub cause: Cause,
    pub exit_code: i32,
}

impl ReportedDeath {
    /// Ended by SIGKILL: what an OOM kill of the container's init process looks like
    /// (runc reports one during container start as `StartError`/128, which the observer
    /// already calls `OOMKilled` when the message says so).
    fn by_sigkill(self) -> bool {
        self.exit_code == 137
            || (self.exit_code == 128 && matches!(self.cause, Cause::StartError | Cause::OOMKilled))
    }
}

/// Memory at the kill, for the incident record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    pub peak_bytes: Option<u64>,
    pub limit_bytes: Option<u64>,
}

/// Which container an event is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceRef {
    pub pod_uid: Arc<str>,
    pub container: Arc<str>,
    pub container_id: Arc<str>,
}

/// What the reconciliation concluded.
#[derive(Clone, Debug, PartialEq)]
pub enum NodeEvent {
    /// Kernel OOM kills in the container that did not end it.
    ProcessOomKills {
        instance: InstanceRef,
        count: u64,
        memory: Memory,
    },
    /// The kubelet's `OOMKilled` death, confirmed by the kernel's counter.
    ContainerOomKill {
        instance: InstanceRef,
        memory: Memory,
    },
    /// A death the kubelet reported as `reported` (e.g. `Error`/137) that the kernel's
    /// counter shows to be an OOM kill.
    Reclassified {
        instance: InstanceRef,
        reported: Cause,
        exit_code: i32,
        memory: Memory,
    },
    /// The instance's counter went down: its cgroup was recreated.
    CounterReset { instance: InstanceRef },
}

#[derive(Debug)]
struct Instance {
    reference: InstanceRef,
    /// Count kills from 0 (appeared after start-up) rather than from the first reading.
    news: bool,
    /// `oom_kill` and `oom_group_kill` at the last reading; `None` before the first.
    last: Option<(u64, u64)>,
    pending: u64,
    pending_group: u64,
    pending_since: Option<Timestamp>,
    /// The last reading: when, and whether the cgroup still had processes.
    read_at: Option<Timestamp>,
    populated: bool,
    memory: Memory,
    died: bool,
}

/// All instances of the node's containers, by `containerID`.
#[derive(Debug)]
pub struct Reconciler {
    settle: SignedDuration,
    // foldhash: looked up on every reading.
    instances: foldhash::HashMap<Arc<str>, Instance>,
}

impl Reconciler {
    /// `settle`: how long pending kills wait for the instance's death before a living
    /// cgroup makes them process kills (longer than the kubelet takes to report a death).
    pub fn new(settle: SignedDuration) -> Self {
        Reconciler {
            settle,
            instances: foldhash::HashMap::default(),
        }
    }

    /// Instances followed.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.instances.len()
    }

    /// Whether `container_id` is followed and not yet dead (its cgroup is worth reading).
    pub fn wants_reading(&self, container_id: &str) -> bool {
        self.instances
            .get(container_id)
            .is_some_and(|instance| !instance.died)
    }

    /// Follows an instance (idempotent). `news`: it appeared after the agent's first pod
    /// list, so every kill its counter shows is new.
    pub fn track(&mut self, instance: InstanceRef, news: bool) {
        if self.instances.contains_key(&instance.container_id) {
            return;
        }
        self.instances.insert(
            instance.container_id.clone(),
            Instance {
                reference: instance,
                news,
                last: None,
                pending: 0,
                pending_group: 0,
                pending_since: None,
                read_at: None,
                populated: false,
                memory: Memory::default(),
                died: false,
            },
        );
    }

    /// Applies one reading of `container_id`'s cgroup at `now`.
    pub fn observe(
        &mut self,
        container_id: &str,
        reading: Reading,
        now: Timestamp,
        out: &mut Vec<NodeEvent>,
    ) {
        let Some(instance) = self.instances.get_mut(container_id) else {
            return;
        };
        if instance.died {
            return;
        }
        instance.read_at = Some(now);
        let snapshot = match reading {
            Reading::Counters(snapshot) => snapshot,
            Reading::Vanished => {
                instance.populated = false;
                return;
            }
        };
        // Without cgroup.events/cgroup.procs, a readable counter file means the cgroup
        // exists; take it as populated (the container's death report still wins).
        instance.populated = snapshot.populated.unwrap_or(true);
        let current = (snapshot.oom_kill, snapshot.oom_group_kill);
        let previous = match instance.last {
            Some(previous) => previous,
            None if instance.news => (0, 0),
            // Baseline: kills before the agent started are not news.
            None => current,
        };
        let (kills, groups) = if current.0 < previous.0 || current.1 < previous.1 {
            out.push(NodeEvent::CounterReset {
                instance: instance.reference.clone(),
            });
            current
        } else {
            (current.0 - previous.0, current.1 - previous.1)
        };
        instance.last = Some(current);
        if snapshot.peak_bytes.is_some() {
            instance.memory.peak_bytes = snapshot.peak_bytes;
        }
        if snapshot.limit_bytes.is_some() {
            instance.memory.limit_bytes = snapshot.limit_bytes;
        }
        if kills > 0 || groups > 0 {
            instance.pending += kills;
            instance.pending_group += groups;
            instance.pending_since.get_or_insert(now);
        }
    }

    /// The kubelet reported the death of `container_id` (idempotent: only the first
    /// report counts). Settles its pending kills.
    pub fn died(&mut self, container_id: &str, death: ReportedDeath, out: &mut Vec<NodeEvent>) {
        let Some(instance) = self.instances.get_mut(container_id) else {
            return;
        };
        if instance.died {
            return;
        }
        instance.died = true;
        let pending = std::mem::take(&mut instance.pending);
        let groups = std::mem::take(&mut instance.pending_group);
        instance.pending_since = None;
        let reference = instance.reference.clone();
        let memory = instance.memory;
        let killed_by_oom = death.by_sigkill() && (pending > 0 || groups > 0);
        let process_kills = if !killed_by_oom {
            pending
        } else if groups > 0 {
            0
        } else {
            pending - 1
        };
        if process_kills > 0 {
            out.push(NodeEvent::ProcessOomKills {
                instance: reference.clone(),
                count: process_kills,
                memory,
            });
        }
        if killed_by_oom {
            out.push(if death.cause == Cause::OOMKilled {
                NodeEvent::ContainerOomKill {
                    instance: reference,
                    memory,
                }
            } else {
                NodeEvent::Reclassified {
                    instance: reference,
                    reported: death.cause,
                    exit_code: death.exit_code,
                    memory,
                }
            });
        }
    }

    /// Settles pending kills of instances that lived on: a reading at least `settle`
    /// after the first of them found the cgroup still populated.
    pub fn tick(&mut self, out: &mut Vec<NodeEvent>) {
        for instance in self.instances.values_mut() {
            let Some(since) = instance.pending_since else {
                continue;
            };
            let lived_on = instance.populated
                && !instance.died
                && instance
                    .read_at
                    .is_some_and(|read_at| read_at >= since + self.settle);
            if !lived_on {
                continue;
            }
            instance.pending_since = None;
            instance.pending_group = 0;
            let count = std::mem::take(&mut instance.pending);
            if count > 0 {
                out.push(NodeEvent::ProcessOomKills {
                    instance: instance.reference.clone(),
                    count,
                    memory: instance.memory,
                });
            }
        }
    }

    /// Stops following the instances for which `keep` is false (their pod is gone, or
    /// their death was settled and the kubelet no longer shows them). Returns how many
    /// were dropped with kills still pending: those are never counted.
    pub fn retain(&mut self, mut keep: impl FnMut(&InstanceRef) -> bool) -> u64 {
        let mut unsettled = 0;
        self.instances.retain(|_, instance| {
            let kept = keep(&instance.reference);
            if !kept && instance.pending > 0 {
                unsettled += instance.pending;
            }
            kept
        });
        unsettled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTLE: SignedDuration = SignedDuration::from_secs(10);

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).expect("valid")
    }

    fn instance(id: &str) -> InstanceRef {
        InstanceRef {
            pod_uid: Arc::from("uid-1"),
            container: Arc::from("app"),
            container_id: Arc::from(id),
        }
    }

    fn counters(oom_kill: u64, populated: bool) -> Reading {
        Reading::Counters(Snapshot {
            oom_kill,
            populated: Some(populated),
            peak_bytes: Some(48 << 20),
            limit_bytes: Some(48 << 20),
            ..Snapshot::default()
        })
    }

    fn memory() -> Memory {
        Memory {
            peak_bytes: Some(48 << 20),
            limit_bytes: Some(48 << 20),
        }
    }

    fn sigkill(cause: Cause) -> ReportedDeath {
        ReportedDeath {
            cause,
            exit_code: 137,
        }
    }

    #[test]
    fn a_child_killed_in_a_living_container_is_one_process_kill_after_the_settle_time() {
        let mut r = Reconciler::new(SETTLE);
        let mut out = Vec::new();
        r.track(instance("c1"), true);
        r.observe("c1", counters(0, true), t(0), &mut out);
        r.observe("c1", counters(1, true), t(1), &mut out);
        r.tick(&mut out);
        assert!(out.is_empty(), "pending until settled: {out:?}");
        r.observe("c1", counters(1, true), t(11), &mut out);
        r.tick(&mut out);
        assert_eq!(
            out,
            vec![NodeEvent::ProcessOomKills {
                instance: instance("c1"),
                count: 1,
                memory: memory()
            }]
        );
        out.clear();
        // Counted once: later readings of the same value add nothing.
        r.observe("c1", counters(1, true), t(20), &mut out);
        r.tick(&mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn the_container_oom_kill_the_kubelet_reports_is_not_also_a_process_kill() {
        let mut r = Reconciler::new(SETTLE);
        let mut out = Vec::new();
        r.track(instance("c1"), true);
        r.observe("c1", counters(1, true), t(0), &mut out);
        // The init process was killed: the cgroup empties, then vanishes.
        r.observe("c1", counters(1, false), t(1), &mut out);
        r.observe("c1", Reading::Vanished, t(12), &mut out);
        r.tick(&mut out);
        assert!(out.is_empty(), "an emptied cgroup waits for the death");
        r.died("c1", sigkill(Cause::OOMKilled), &mut out);
        assert_eq!(
            out,
            vec![NodeEvent::ContainerOomKill {
                instance: instance("c1"),
                memory: memory()
            }]
        );
        out.clear();
        r.died("c1", sigkill(Cause::OOMKilled), &mut out);
        r.tick(&mut out);
        assert!(out.is_empty(), "a death is settled once");
    }

    #[test]
    fn an_error_137_with_a_kernel_kill_is_reclassified_and_other_deaths_keep_process_kills() {
        let mut r = Reconciler::new(SETTLE);
        let mut out = Vec::new();
        r.track(instance("c1"), true);
        // A child killed, then the init process: two kills, the runtime lost the event.
        r.observe("c1", counters(2, true), t(0), &mut out);
        r.died("c1", sigkill(Cause::Error), &mut out);
        assert_eq!(
            out,
            vec![
                NodeEvent::ProcessOomKills {
                    instance: instance("c1"),
                    count: 1,
                    memory: memory()
                },
                NodeEvent::Reclassified {
                    instance: instance("c1"),
                    reported: Cause::Error,
                    exit_code: 137,
                    memory: memory()
                }
            ]
        );

        // An Error/137 without any kernel kill (a plain SIGKILL) stays what it was.
        out.clear();
        r.track(instance("c2"), true);
        r.observe("c2", counters(0, true), t(0), &mut out);
        r.died("c2", sigkill(Cause::Error), &mut out);
        assert!(out.is_empty());

        // A worker killed, then the app exits 1 on its own: the kill was a process kill.
        r.track(instance("c3"), true);
        r.observe("c3", counters(1, true), t(0), &mut out);
        r.died(
            "c3",
            ReportedDeath {
                cause: Cause::Error,
                exit_code: 1,
            },
            &mut out,
        );
        assert_eq!(
            out,
            vec![NodeEvent::ProcessOomKills {
                instance: instance("c3"),
                count: 1,
                memory: memory()
            }]
        );

        // An OOM kill during start, reported as StartError/128.
        out.clear();
        r.track(instance("c4"), true);
        r.observe("c4", counters(1, false), t(0), &mut out);
        r.died(
            "c4",
            ReportedDeath {
                cause: Cause::StartError,
                exit_code: 128,
            },
            &mut out,
        );
        assert!(matches!(
            &out[..],
            [NodeEvent::Reclassified {
                reported: Cause::StartError,
                ..
            }]
        ));
    }

    #[test]
    fn a_group_kill_is_the_death_alone() {
        let mut r = Reconciler::new(SETTLE);
        let mut out = Vec::new();
        r.track(instance("c1"), true);
        let group = Reading::Counters(Snapshot {
            oom_kill: 5,
            oom_group_kill: 1,
            populated: Some(false),
            ..Snapshot::default()
        });
        r.observe("c1", group, t(0), &mut out);
        r.died("c1", sigkill(Cause::OOMKilled), &mut out);
        assert!(
            matches!(&out[..], [NodeEvent::ContainerOomKill { .. }]),
            "{out:?}"
        );
    }

    #[test]
    fn the_first_reading_of_an_instance_from_the_baseline_is_not_news() {
        let mut r = Reconciler::new(SETTLE);
        let mut out = Vec::new();
        r.track(instance("old"), false);
        r.observe("old", counters(3, true), t(0), &mut out);
        r.observe("old", counters(3, true), t(20), &mut out);
        r.tick(&mut out);
        assert!(out.is_empty());
        r.observe("old", counters(4, true), t(21), &mut out);
        r.observe("old", counters(4, true), t(31), &mut out);
        r.tick(&mut out);
        assert!(matches!(
            &out[..],
            [NodeEvent::ProcessOomKills { count: 1, .. }]
        ));
    }

    #[test]
    fn a_recreated_cgroup_counts_from_zero_again() {
        let mut r = Reconciler::new(SETTLE);
        let mut out = Vec::new();
        r.track(instance("c1"), true);
        r.observe("c1", counters(2, true), t(0), &mut out);
        r.observe("c1", counters(2, true), t(10), &mut out);
        r.tick(&mut out);
        out.clear();
        // Same path, new directory: the kernel's counter starts over.
        r.observe("c1", counters(1, true), t(11), &mut out);
        r.observe("c1", counters(1, true), t(21), &mut out);
        r.tick(&mut out);
        assert_eq!(
            out,
            vec![
                NodeEvent::CounterReset {
                    instance: instance("c1")
                },
                NodeEvent::ProcessOomKills {
                    instance: instance("c1"),
                    count: 1,
                    memory: memory()
                }
            ]
        );
    }

    #[test]
    fn a_new_instance_of_the_same_container_has_its_own_counter() {
        let mut r = Reconciler::new(SETTLE);
        let mut out = Vec::new();
        r.track(instance("c1"), true);
        r.observe("c1", counters(1, false), t(0), &mut out);
        r.died("c1", sigkill(Cause::OOMKilled), &mut out);
        assert!(!r.wants_reading("c1"));
        // Readings of the dead instance change nothing.
        r.observe("c1", counters(9, true), t(1), &mut out);
        r.track(instance("c2"), true);
        r.observe("c2", counters(0, true), t(2), &mut out);
        r.observe("c2", counters(1, false), t(3), &mut out);
        r.died("c2", sigkill(Cause::OOMKilled), &mut out);
        assert_eq!(
            out.iter()
                .filter(|e| matches!(e, NodeEvent::ContainerOomKill { .. }))
                .count(),
            2
        );
        assert_eq!(out.len(), 2);
        // The pod goes: both instances are dropped, nothing was left pending.
        assert_eq!(r.retain(|_| false), 0);
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn a_vanished_pod_with_pending_kills_reports_them_as_unsettled() {
        let mut r = Reconciler::new(SETTLE);
        let mut out = Vec::new();
        r.track(instance("c1"), true);
        r.observe("c1", counters(2, false), t(0), &mut out);
        assert_eq!(r.retain(|i| &*i.container_id != "c1"), 2);
        assert!(out.is_empty());
        // Unknown IDs are ignored.
        r.observe("nope", counters(1, true), t(0), &mut out);
        r.died("nope", sigkill(Cause::Error), &mut out);
        assert!(out.is_empty());
    }
}
