//! The incident log: the most recent restarts and client-seen outages, joined where they
//! belong together, served as JSON at `/api/v1/incidents`. This is what an on-call
//! engineer reads to answer "what happened at 03:12?".
//!
//! Restarts come from the observer (deaths, their attribution, their recovery); outages
//! from the prober, which asks the log for the restart that explains each outage: a
//! death of a pod the target fronts whose finish time falls within the outage (widened
//! by one probe interval plus a slack, since the first failed probe comes after the kill).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

use crate::correlate::UNKNOWN_CAUSE;
use crate::k8s::workload::Workload;
use crate::observe::{DeathId, IncidentUpdate, RecoveryPhases};

/// Which pods a probe target sends its traffic to.
#[derive(Clone, Debug, PartialEq)]
pub enum Fronts {
    /// The pods of one workload (static targets naming it).
    Workload(Workload),
    /// The pods of a namespace matching a Service's selector.
    Selector {
        namespace: Arc<str>,
        selector: BTreeMap<String, String>,
    },
}

#[derive(Clone, Debug, Serialize)]
pub struct RestartIncident {
    pub id: u64,
    pub namespace: Arc<str>,
    pub workload_kind: Arc<str>,
    pub workload: Arc<str>,
    pub pod: Arc<str>,
    pub container: Arc<str>,
    pub cause: &'static str,
    pub exit_code: i32,
    pub memory_limit_bytes: Option<u64>,
    pub killed_at: Option<Timestamp>,
    pub ready_again_at: Option<Timestamp>,
    pub time_to_recover_seconds: Option<f64>,
    /// The time to recover split into back-off, start and readiness, once known (and
    /// when the kubelet's times allow it).
    pub recovery_phases: Option<RecoveryPhases>,
    #[serde(skip)]
    death: DeathId,
    #[serde(skip)]
    pod_labels: Arc<BTreeMap<String, String>>,
}

#[derive(Clone, Debug, Serialize)]
pub struct OutageIncident {
    pub id: u64,
    pub target: Arc<str>,
    pub namespace: Option<Arc<str>>,
    pub service: Option<Arc<str>>,
    pub start: Timestamp,
    pub end: Timestamp,
    pub downtime_seconds: f64,
    pub failed_probes: u64,
    /// The cause of the restart behind the outage, or `unknown`.
    pub cause: &'static str,
    /// The restart behind the outage, if one explains it.
    pub restart: Option<RestartIncident>,
}

/// A kernel OOM kill seen by the node agent in a container's memory cgroup (only
/// `selfheal-exporter node` records these): processes killed inside a living container,
/// or a container death the kubelet reported as something else.
#[derive(Clone, Debug, Serialize)]
pub struct OomKillIncident {
    pub id: u64,
    pub namespace: Arc<str>,
    pub workload_kind: Arc<str>,
    pub workload: Arc<str>,
    pub pod: Arc<str>,
    pub container: Arc<str>,
    pub container_id: Arc<str>,
    /// `process` (the container lived on), `container` (the kubelet's OOMKilled,
    /// confirmed) or `reclassified` (the kubelet said `reported_reason`).
    pub oom_kill: &'static str,
    /// Processes killed (1 for a container death).
    pub count: u64,
    /// The kubelet's reason and exit code, for a reclassified death.
    pub reported_reason: Option<&'static str>,
    pub exit_code: Option<i32>,
    /// The cgroup's peak usage and limit at the last reading after the kill.
    pub memory_peak_bytes: Option<u64>,
    pub memory_limit_bytes: Option<u64>,
    /// When the agent settled the kill (within `node.settle` of the kill itself).
    pub seen_at: Timestamp,
    /// The killed processes, from the kernel log (`node.kmsg`; empty without it).
    pub victims: Vec<OomVictim>,
}

/// A process the kernel's OOM killer killed, as the kernel log names it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct OomVictim {
    pub name: String,
    pub pid: u32,
}

/// One entry of the API's answer.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Incident {
    Restart(RestartIncident),
    Outage(OutageIncident),
    OomKill(OomKillIncident),
}

impl Incident {
    fn time(&self) -> Option<Timestamp> {
        match self {
            Incident::Restart(restart) => restart.killed_at,
            Incident::Outage(outage) => Some(outage.start),
            Incident::OomKill(kill) => Some(kill.seen_at),
        }
    }
}

/// An outage as the prober reports it.
#[derive(Clone, Debug)]
pub struct OutageReport {
    pub target: Arc<str>,
    pub namespace: Option<Arc<str>>,
    pub service: Option<Arc<str>>,
    pub start: Timestamp,
    pub end: Timestamp,
    pub failed_probes: u64,
    pub probe_interval: Duration,
    pub fronts: Option<Fronts>,
}

#[derive(Debug)]
pub struct IncidentLog {
    capacity: usize,
    slack: SignedDuration,
    next_id: u64,
    restarts: VecDeque<RestartIncident>,
    outages: VecDeque<OutageIncident>,
    oom_kills: VecDeque<OomKillIncident>,
}

/// The log shared by the watch loop, the prober and the HTTP API.
pub type SharedIncidentLog = Arc<Mutex<IncidentLog>>;

/// Locks the log; a panic elsewhere while holding it leaves data that is still usable.
pub fn lock(log: &SharedIncidentLog) -> MutexGuard<'_, IncidentLog> {
    log.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl IncidentLog {
    /// Keeps the last `capacity` restarts and the last `capacity` outages.
    pub fn new(capacity: usize, slack: Duration) -> Self {
        IncidentLog {
            capacity: capacity.max(1),
            slack: SignedDuration::try_from(slack).unwrap_or(SignedDuration::ZERO),
            next_id: 1,
            restarts: VecDeque::new(),
            outages: VecDeque::new(),
            oom_kills: VecDeque::new(),
        }
    }

    pub fn shared(self) -> SharedIncidentLog {
        Arc::new(Mutex::new(self))
    }

    pub fn apply(&mut self, update: &IncidentUpdate) {
        match update {
            IncidentUpdate::Death(death) => {
                let id = self.take_id();
                if self.restarts.len() == self.capacity {
                    self.restarts.pop_front();
                }
                self.restarts.push_back(RestartIncident {
                    id,
                    namespace: death.workload.namespace().clone(),
                    workload_kind: death.workload.kind().clone(),
                    workload: death.workload.name().clone(),
                    pod: death.pod.clone(),
                    container: death.id.container.clone(),
                    cause: death.cause.as_str(),
                    exit_code: death.exit_code,
                    memory_limit_bytes: death.memory_limit_bytes,
                    killed_at: death.killed_at,
                    ready_again_at: None,
                    time_to_recover_seconds: None,
                    recovery_phases: None,
                    death: death.id.clone(),
                    pod_labels: death.pod_labels.clone(),
                });
            }
            IncidentUpdate::Attributed { id, cause } => {
                if let Some(restart) = self.find_mut(id) {
                    restart.cause = cause.as_str();
                }
            }
            IncidentUpdate::Recovered {
                id,
                ready_at,
                seconds,
                phases,
            } => {
                if let Some(restart) = self.find_mut(id) {
                    restart.ready_again_at = Some(*ready_at);
                    restart.time_to_recover_seconds = Some(*seconds);
                    restart.recovery_phases = *phases;
                }
            }
        }
    }

    /// Records an outage, joined with the restart that explains it; returns it as
    /// recorded (its cause is the label for the outage metrics).
    pub fn record_outage(&mut self, report: OutageReport) -> &OutageIncident {
        let restart = report
            .fronts
            .as_ref()
            .and_then(|fronts| self.explaining_restart(fronts, &report))
            .cloned();
        let cause = restart.as_ref().map_or(UNKNOWN_CAUSE, |r| r.cause);
        let id = self.take_id();
        if self.outages.len() == self.capacity {
            self.outages.pop_front();
        }
        self.outages.push_back(OutageIncident {
            id,
            target: report.target,
            namespace: report.namespace,
            service: report.service,
            start: report.start,
            end: report.end,
            downtime_seconds: report
                .end
                .duration_since(report.start)
                .as_secs_f64()
                .max(0.0),
            failed_probes: report.failed_probes,
            cause,
            restart,
        });
        &self.outages[self.outages.len() - 1]
    }

    /// Records a node agent's OOM kill (its `id` is assigned here).
    pub fn record_oom_kill(&mut self, mut kill: OomKillIncident) {
        kill.id = self.take_id();
        if self.oom_kills.len() == self.capacity {
            self.oom_kills.pop_front();
        }
        self.oom_kills.push_back(kill);
    }

    /// The first death of a fronted pod within the outage window.
    fn explaining_restart(
        &self,
        fronts: &Fronts,
        report: &OutageReport,
    ) -> Option<&RestartIncident> {
        let interval =
            SignedDuration::try_from(report.probe_interval).unwrap_or(SignedDuration::ZERO);
        let from = report.start - interval - self.slack;
        let to = report.end + self.slack;
        self.restarts
            .iter()
            .filter(|restart| {
                restart
                    .killed_at
                    .is_some_and(|killed| from <= killed && killed <= to)
            })
            .filter(|restart| fronted(fronts, restart))
            .min_by_key(|restart| restart.killed_at)
    }

    /// The newest `limit` incidents, newest first.
    pub fn newest(&self, limit: usize) -> Vec<Incident> {
        let mut all: Vec<Incident> = self
            .restarts
            .iter()
            .cloned()
            .map(Incident::Restart)
            .chain(self.outages.iter().cloned().map(Incident::Outage))
            .chain(self.oom_kills.iter().cloned().map(Incident::OomKill))
            .collect();
        all.sort_by_key(|incident| std::cmp::Reverse(incident.time()));
        all.truncate(limit);
        all
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn find_mut(&mut self, id: &DeathId) -> Option<&mut RestartIncident> {
        // The key first: a u64 against up to `capacity` entries, where comparing whole
        // ids (pod UIDs first) showed up in the drain bench's profile.
        self.restarts
            .iter_mut()
            .rev()
            .find(|restart| restart.death.key == id.key && &restart.death == id)
    }
}

fn fronted(fronts: &Fronts, restart: &RestartIncident) -> bool {
    match fronts {
        Fronts::Workload(workload) => {
            restart.namespace == *workload.namespace()
                && restart.workload_kind == *workload.kind()
                && restart.workload == *workload.name()
        }
        Fronts::Selector {
            namespace,
            selector,
        } => {
            &restart.namespace == namespace
                && !selector.is_empty()
                && selector
                    .iter()
                    .all(|(key, value)| restart.pod_labels.get(key) == Some(value))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::{Cause, DeathRecord};

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).expect("valid")
    }

    fn workload() -> Workload {
        Workload::new("grade-submission", "Pod", "grade-submission-api")
    }

    fn death(key: u64, cause: Cause, at: i64) -> IncidentUpdate {
        IncidentUpdate::Death(DeathRecord {
            id: DeathId {
                pod_uid: "uid".into(),
                container: "api".into(),
                key,
            },
            workload: Arc::new(workload()),
            pod: "grade-submission-api".into(),
            pod_labels: Arc::new([("app".to_owned(), "grade".to_owned())].into()),
            cause,
            exit_code: 137,
            killed_at: Some(t(at)),
            memory_limit_bytes: Some(50_331_648),
        })
    }

    fn outage(start: i64, end: i64, fronts: Option<Fronts>) -> OutageReport {
        OutageReport {
            target: "grade".into(),
            namespace: None,
            service: None,
            start: t(start),
            end: t(end),
            failed_probes: 4,
            probe_interval: Duration::from_secs(1),
            fronts,
        }
    }

    #[test]
    fn an_outage_is_joined_with_the_death_inside_it() {
        let mut log = IncidentLog::new(10, Duration::from_secs(2));
        log.apply(&death(1, Cause::OOMKilled, 100));
        log.apply(&IncidentUpdate::Recovered {
            id: DeathId {
                pod_uid: "uid".into(),
                container: "api".into(),
                key: 1,
            },
            ready_at: t(104),
            seconds: 4.0,
            phases: Some(RecoveryPhases {
                backoff_seconds: 0.0,
                start_seconds: 1.0,
                readiness_seconds: 3.0,
            }),
        });
        // The first failed probe came 2 s after the kill (1 s interval + 2 s slack).
        let cause = log
            .record_outage(outage(102, 105, Some(Fronts::Workload(workload()))))
            .cause;
        assert_eq!(cause, "OOMKilled");
        let newest = log.newest(10);
        assert_eq!(newest.len(), 2);
        let Incident::Outage(joined) = &newest[0] else {
            panic!("newest is the outage: {newest:?}");
        };
        let restart = joined.restart.as_ref().expect("joined");
        assert_eq!(restart.time_to_recover_seconds, Some(4.0));
        assert_eq!(
            restart.recovery_phases.map(|p| p.readiness_seconds),
            Some(3.0)
        );
        assert_eq!(restart.memory_limit_bytes, Some(50_331_648));

        let json = serde_json::to_value(&newest).expect("serializes");
        assert_eq!(json[0]["kind"], "outage");
        assert_eq!(json[0]["restart"]["cause"], "OOMKilled");
        assert_eq!(json[1]["kind"], "restart");
        assert_eq!(json[1]["killed_at"], t(100).to_string());
    }

    #[test]
    fn unrelated_or_distant_deaths_explain_nothing() {
        let mut log = IncidentLog::new(10, Duration::from_secs(2));
        log.apply(&death(1, Cause::OOMKilled, 100));
        assert_eq!(
            log.record_outage(outage(200, 205, Some(Fronts::Workload(workload()))))
                .cause,
            "unknown"
        );
        let other = Workload::new("grade-submission", "Pod", "other");
        assert_eq!(
            log.record_outage(outage(101, 103, Some(Fronts::Workload(other))))
                .cause,
            "unknown"
        );
        assert_eq!(log.record_outage(outage(101, 103, None)).cause, "unknown");
        let selector = |value: &str| Fronts::Selector {
            namespace: "grade-submission".into(),
            selector: [("app".to_owned(), value.to_owned())].into(),
        };
        assert_eq!(
            log.record_outage(outage(101, 103, Some(selector("web"))))
                .cause,
            "unknown"
        );
        assert_eq!(
            log.record_outage(outage(101, 103, Some(selector("grade"))))
                .cause,
            "OOMKilled"
        );
    }

    #[test]
    fn attribution_updates_the_cause_and_the_log_is_bounded() {
        let mut log = IncidentLog::new(2, Duration::from_secs(2));
        log.apply(&death(1, Cause::Error, 100));
        log.apply(&IncidentUpdate::Attributed {
            id: DeathId {
                pod_uid: "uid".into(),
                container: "api".into(),
                key: 1,
            },
            cause: Cause::LivenessProbeFailed,
        });
        assert_eq!(
            log.record_outage(outage(100, 101, Some(Fronts::Workload(workload()))))
                .cause,
            "LivenessProbeFailed"
        );
        log.apply(&death(2, Cause::OOMKilled, 200));
        log.apply(&death(3, Cause::OOMKilled, 300));
        let restarts = log
            .newest(10)
            .into_iter()
            .filter(|i| matches!(i, Incident::Restart(_)))
            .count();
        assert_eq!(restarts, 2);
        assert_eq!(log.newest(1).len(), 1);
    }
}
