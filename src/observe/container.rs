//! One container's history as the kubelet reports it: deaths, restarts, recovery.
//!
//! The kubelet shows one death in up to three successive status updates (terminated,
//! waiting with lastState, running with lastState), and watch reconnects deliver the same
//! status again. A tracker therefore remembers the deaths it has already counted, keyed
//! by the dead instance's container ID and finish time, and the last restartCount, and
//! turns each status into only what is new.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};

use super::cause::{Cause, RESTARTING_ALL, VANISHED};
use super::recovery::{self, RecoveryPhases};
use super::{Anomaly, DeathId, DeathRecord, IncidentUpdate, Observation, PodContext, Sink};
use crate::k8s::types::{ContainerStatus, RestartRule, StateTerminated, rule_action};

/// How many keys of deaths that left the ring of two are remembered besides.
const EARLIER: usize = 6;

/// Readiness seen later than this after the kubelet's Ready transition was seen late.
const LATE: SignedDuration = SignedDuration::from_secs(3);

/// A death the tracker has counted (or taken as baseline).
#[derive(Debug)]
struct Death {
    key: u64,
    finished_at: Option<Timestamp>,
    cause: Cause,
    /// While set, a kubelet `Killing` Event may still turn `cause` into a probe kill;
    /// restarts and recoveries caused by this death wait until then.
    undecided_until: Option<Timestamp>,
    held_restarts: u64,
    /// A recovery (seconds, phases) held back while the cause is undecided.
    held_recovery: Option<(f64, Option<RecoveryPhases>)>,
    /// The back-off the kubelet stated while the container waited after this death.
    backoff: Option<SignedDuration>,
    /// `ContainerStatusUnknown` in an evicted pod: part of the eviction, not counted.
    evicted: bool,
}

impl Death {
    /// A death with its cause decided and nothing held.
    fn decided(key: u64, finished_at: Option<Timestamp>, cause: Cause) -> Self {
        Death {
            key,
            finished_at,
            cause,
            undecided_until: None,
            held_restarts: 0,
            held_recovery: None,
            backoff: None,
            evicted: false,
        }
    }
}

#[derive(Debug)]
pub struct ContainerTracker {
    pub name: Arc<str>,
    /// resources.limits.memory in force, in bytes.
    pub memory_limit: Option<u64>,
    /// The container's `restartPolicyRules` (empty for nearly every container).
    pub restart_rules: Vec<RestartRule>,
    restart_count: i64,
    /// The two most recent deaths: the kubelet shows at most two (state and lastState).
    /// A Vec, empty and unallocated for the many containers that never die.
    deaths: Vec<Death>,
    /// The keys of the deaths before those two (at most [`EARLIER`]): the kubelet never
    /// shows an older death again, but a status out of order must not count one twice.
    earlier: Vec<u64>,
    /// A death or restart was counted and the container has not been ready since.
    awaiting_recovery: bool,
    crashlooping: Option<bool>,
}

impl ContainerTracker {
    pub fn new(name: Arc<str>, memory_limit: Option<u64>) -> Self {
        ContainerTracker {
            name,
            memory_limit,
            restart_rules: Vec::new(),
            restart_count: 0,
            deaths: Vec::new(),
            earlier: Vec::new(),
            awaiting_recovery: false,
            crashlooping: None,
        }
    }

    /// Folds one container status into the tracker. With `ctx.news` false the status is
    /// the baseline: remembered, but nothing is counted.
    pub fn observe(&mut self, status: &ContainerStatus, ctx: &PodContext, sink: &mut Sink) {
        // Older death first, so the ring ends with the most recent one.
        if let Some(previous) = &status.last_state.terminated {
            self.see_death(previous, ctx, sink);
        }
        if let Some(current) = &status.state.terminated {
            self.see_death(current, ctx, sink);
        }
        self.see_restart_count(status, ctx, sink);
        self.see_crashloop(status, ctx, sink);
        if self.awaiting_recovery && status.ready && status.state.running.is_some() {
            self.awaiting_recovery = false;
            self.see_recovery(status, ctx, sink);
        }
    }

    fn see_death(&mut self, terminated: &StateTerminated, ctx: &PodContext, sink: &mut Sink) {
        if terminated.reason.as_deref() == Some(RESTARTING_ALL) {
            // Removed by the kubelet for the pod restart another container (or this one)
            // asked for: no death of its own (no incident, no exit code; 137, no ID and no
            // times are the kubelet's filler, the same in every cycle, so it cannot be told
            // apart by key and is not remembered). The restart it brings counts with that
            // cause (see_restart_count).
            return;
        }
        let key = death_key(terminated);
        if self.find_death(key).is_some() || self.earlier.contains(&key) {
            return;
        }
        let finished_at = sink.parse_time(terminated.finished_at.as_deref());
        if ctx.evicted && terminated.reason.as_deref() == Some(VANISHED) {
            // The eviction took the container away: remembered, so that the restart the
            // kubelet adds for it is recognised, and counted as nothing.
            let death = Death {
                evicted: true,
                ..Death::decided(key, finished_at, Cause::Unknown)
            };
            self.remember(death, ctx, sink);
            return;
        }
        if terminated.container_id.is_none() && finished_at.is_none() {
            sink.anomaly(Anomaly::MissingField);
        }
        let mut cause = sink.cause_of(terminated.reason.as_deref(), terminated.message.as_deref());
        if ctx.terminating && cause != Cause::OOMKilled {
            // The pod is being deleted: its containers (native sidecars last, which the
            // kubelet documents may exit non-zero then) stop because they were told to.
            // Not a failure; only the exit code is kept. An OOM kill stays one.
            sink.out.push(Observation::LastExitCode {
                workload: ctx.workload.clone(),
                container: self.name.clone(),
                exit_code: terminated.exit_code,
            });
            self.remember(Death::decided(key, finished_at, cause), ctx, sink);
            return;
        }
        if matches!(cause, Cause::Error | Cause::Completed) {
            match rule_action(&self.restart_rules, terminated.exit_code) {
                Some("Restart") => cause = Cause::RestartRule,
                Some("RestartAllContainers") => cause = Cause::RestartAllContainers,
                _ => {}
            }
        }
        let mut death = Death::decided(key, finished_at, cause);
        if cause.may_be_probe_kill() {
            let finished = finished_at.unwrap_or(ctx.now);
            match sink
                .kills
                .take_match(&ctx.pod_uid, &self.name, finished, ctx.grace)
            {
                Some(kill) => death.cause = kill.cause(),
                None => {
                    let deadline = ctx.now + sink.attribution_wait;
                    death.undecided_until = Some(deadline);
                    sink.deadlines
                        .push_back((deadline, ctx.pod_uid.clone(), self.name.clone()));
                }
            }
        }
        if ctx.news {
            self.awaiting_recovery = true;
            sink.out.push(Observation::Died {
                workload: ctx.workload.clone(),
                container: self.name.clone(),
                cause,
                exit_code: terminated.exit_code,
            });
            sink.out
                .push(Observation::Incident(IncidentUpdate::Death(DeathRecord {
                    id: self.death_id(ctx, key),
                    workload: ctx.workload.clone(),
                    pod: ctx.pod_name.clone(),
                    pod_labels: Arc::new(ctx.labels.cloned().unwrap_or_default()),
                    cause: death.cause,
                    exit_code: terminated.exit_code,
                    killed_at: finished_at,
                    memory_limit_bytes: self.memory_limit,
                })));
        } else {
            sink.out.push(Observation::LastExitCode {
                workload: ctx.workload.clone(),
                container: self.name.clone(),
                exit_code: terminated.exit_code,
            });
        }
        self.remember(death, ctx, sink);
    }

    /// Keeps `death` as the most recent of the two remembered.
    fn remember(&mut self, death: Death, ctx: &PodContext, sink: &mut Sink) {
        if self.deaths.len() == 2 {
            // A death leaving the ring while it still waits for a Killing Event decides
            // its cause now, as the kubelet reported it, and releases what it held: a
            // container that restarts faster than the attribution wait loses nothing.
            let mut oldest = self.deaths.remove(0);
            if oldest.undecided_until.take().is_some() {
                release_held(&mut oldest, &self.name, ctx, sink);
            }
            if self.earlier.len() == EARLIER {
                self.earlier.remove(0);
            }
            self.earlier.push(oldest.key);
        }
        // At most two are kept: do not let the first push reserve room for four.
        self.deaths.reserve_exact(1);
        self.deaths.push(death);
    }

    fn see_restart_count(&mut self, status: &ContainerStatus, ctx: &PodContext, sink: &mut Sink) {
        let count = status.restart_count;
        if count < 0 {
            sink.anomaly(Anomaly::InvalidRestartCount);
            return;
        }
        let previous = std::mem::replace(&mut self.restart_count, count);
        if !ctx.news || count == previous {
            return;
        }
        if count < previous {
            // restartCount never decreases for one pod UID; trust the new value.
            sink.anomaly(Anomaly::InvalidRestartCount);
            return;
        }
        self.awaiting_recovery = true;
        let mut unexplained = count - previous;
        let last = status.last_state.terminated.as_ref();
        if last.and_then(|death| death.reason.as_deref()) == Some(RESTARTING_ALL) {
            // The kubelet's filler after a RestartAllContainers: that is the cause.
            sink.out.push(Observation::Restarted {
                workload: ctx.workload.clone(),
                container: self.name.clone(),
                cause: Cause::RestartAllContainers,
                count: 1,
            });
            unexplained -= 1;
        }
        let caused_by = status
            .last_state
            .terminated
            .as_ref()
            .map(death_key)
            .and_then(|key| find_death_mut(&mut self.deaths, key));
        if let Some(death) = caused_by {
            unexplained -= 1;
            if death.evicted {
                // The kubelet's +1 for a container the eviction took away: no restart.
            } else if death.undecided_until.is_some() {
                death.held_restarts += 1;
            } else {
                sink.out.push(Observation::Restarted {
                    workload: ctx.workload.clone(),
                    container: self.name.clone(),
                    cause: death.cause,
                    count: 1,
                });
            }
        }
        if unexplained > 0 {
            sink.out.push(Observation::Restarted {
                workload: ctx.workload.clone(),
                container: self.name.clone(),
                cause: Cause::Unknown,
                count: unexplained as u64,
            });
        }
    }

    fn see_crashloop(&mut self, status: &ContainerStatus, ctx: &PodContext, sink: &mut Sink) {
        let waiting = status.state.waiting.as_ref();
        let active =
            waiting.and_then(|waiting| waiting.reason.as_deref()) == Some("CrashLoopBackOff");
        // The back-off belongs to the death it follows, the one in lastState.
        if active
            && let Some(backoff) = waiting
                .and_then(|waiting| waiting.message.as_deref())
                .and_then(recovery::stated_backoff)
            && let Some(death) = status
                .last_state
                .terminated
                .as_ref()
                .map(death_key)
                .and_then(|key| find_death_mut(&mut self.deaths, key))
        {
            death.backoff = Some(backoff);
        }
        // A container that never crashlooped has no series: at 100,000 pods a zero for
        // every container was most of the exposition. Once it has, the series stays
        // (0 or 1) until the pod goes.
        let changed = match self.crashlooping {
            None => active,
            Some(was) => was != active,
        };
        if changed {
            self.crashlooping = Some(active);
            sink.out.push(Observation::CrashLooping {
                workload: ctx.workload.clone(),
                pod: ctx.pod_name.clone(),
                container: self.name.clone(),
                active,
            });
        }
    }

    fn see_recovery(&mut self, status: &ContainerStatus, ctx: &PodContext, sink: &mut Sink) {
        // The death that this ready instance recovers from is the one in lastState.
        let Some(terminated) = &status.last_state.terminated else {
            return;
        };
        let key = death_key(terminated);
        let Some(death) = find_death_mut(&mut self.deaths, key) else {
            return;
        };
        let Some(finished_at) = death.finished_at else {
            return;
        };
        // Normally the daemon sees readiness as it happens, so "now" is the most precise
        // end. When it sees it late (a relist after a watch gap, a pod first seen long
        // after), the kubelet's own record of the Ready transition is the better end; it
        // is on the same clock as finishedAt, so no skew enters either.
        let ready_at = match sink.parse_time(ctx.ready_since) {
            Some(since) if since >= finished_at && ctx.now.duration_since(since) > LATE => since,
            _ => ctx.now,
        };
        let mut seconds = ready_at.duration_since(finished_at).as_secs_f64();
        if seconds < 0.0 {
            // The node's clock is ahead of ours: clamp rather than export a negative.
            sink.anomaly(Anomaly::ClockSkew);
            seconds = 0.0;
        }
        let started_at = status
            .state
            .running
            .as_ref()
            .and_then(|running| sink.parse_time(running.started_at.as_deref()));
        let phases = recovery::split(finished_at, death.backoff, started_at, ready_at);
        sink.out
            .push(Observation::Incident(IncidentUpdate::Recovered {
                id: DeathId {
                    pod_uid: ctx.pod_uid.clone(),
                    container: self.name.clone(),
                    key,
                },
                ready_at,
                seconds,
                phases,
            }));
        if death.undecided_until.is_some() {
            death.held_recovery = Some((seconds, phases));
        } else {
            sink.out.push(Observation::Recovered {
                workload: ctx.workload.clone(),
                container: self.name.clone(),
                cause: death.cause,
                seconds,
                phases,
            });
        }
    }

    /// Settles the cause of undecided deaths: as the probe kill `kill` says, or, when
    /// `kill` is None, as the kubelet reported it if the wait is over at `now`.
    /// Emits what was held back.
    pub fn decide(&mut self, decision: Decision, ctx: &PodContext, sink: &mut Sink) -> bool {
        let mut decided = false;
        let name = self.name.clone();
        for death in &mut self.deaths {
            let Some(deadline) = death.undecided_until else {
                continue;
            };
            match decision {
                Decision::ProbeKill { kill, killed_at } => {
                    let finished = death.finished_at.unwrap_or(ctx.now);
                    if decided || !super::attribution::explains(killed_at, finished, ctx.grace) {
                        continue;
                    }
                    death.cause = kill.cause();
                    sink.out
                        .push(Observation::Incident(IncidentUpdate::Attributed {
                            id: DeathId {
                                pod_uid: ctx.pod_uid.clone(),
                                container: name.clone(),
                                key: death.key,
                            },
                            cause: death.cause,
                        }));
                }
                Decision::Timeout => {
                    if deadline > ctx.now {
                        continue;
                    }
                }
                Decision::Flush => {}
            }
            decided = true;
            death.undecided_until = None;
            release_held(death, &name, ctx, sink);
        }
        decided
    }

    fn death_id(&self, ctx: &PodContext, key: u64) -> DeathId {
        DeathId {
            pod_uid: ctx.pod_uid.clone(),
            container: self.name.clone(),
            key,
        }
    }

    fn find_death(&self, key: u64) -> Option<&Death> {
        self.deaths.iter().find(|death| death.key == key)
    }
}

/// Emits the restarts and the recovery a decided death held back, with its cause.
fn release_held(death: &mut Death, container: &Arc<str>, ctx: &PodContext, sink: &mut Sink) {
    if death.held_restarts > 0 {
        sink.out.push(Observation::Restarted {
            workload: ctx.workload.clone(),
            container: container.clone(),
            cause: death.cause,
            count: std::mem::take(&mut death.held_restarts),
        });
    }
    if let Some((seconds, phases)) = death.held_recovery.take() {
        sink.out.push(Observation::Recovered {
            workload: ctx.workload.clone(),
            container: container.clone(),
            cause: death.cause,
            seconds,
            phases,
        });
    }
}

fn find_death_mut(deaths: &mut [Death], key: u64) -> Option<&mut Death> {
    deaths.iter_mut().find(|death| death.key == key)
}

/// How `ContainerTracker::decide` settles undecided causes.
#[derive(Clone, Copy, Debug)]
pub enum Decision {
    /// A kubelet Event says the container was killed by a probe at `killed_at`.
    ProbeKill {
        kill: super::cause::ProbeKill,
        killed_at: Timestamp,
    },
    /// No Event came in time: causes whose wait is over stay as the kubelet reported them.
    Timeout,
    /// The pod is gone: emit everything held, as reported.
    Flush,
}

/// Identifies one death: the dead instance's container ID and its finish time (plus
/// reason and exit code, so that a death without either still gets a stable key).
fn death_key(terminated: &StateTerminated) -> u64 {
    let mut hasher = DefaultHasher::new();
    terminated.container_id.hash(&mut hasher);
    terminated.finished_at.hash(&mut hasher);
    terminated.reason.hash(&mut hasher);
    terminated.exit_code.hash(&mut hasher);
    hasher.finish()
}
