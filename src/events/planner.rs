//! From incident updates and outages to event intents: which Event to create or update,
//! with what reason, note and series count. Pure and synchronous, with the time as an
//! input, so that tests replay any timeline; [`super::writer`] does the API calls.
//!
//! - One Event per series: the deaths of one container of one Pod for one cause, or the
//!   outages of one probe target on its Service, while they keep coming within
//!   [`SERIES_IDLE`] of each other. A crash loop is one Event whose `series` (count, last
//!   observed time) is updated, as the events.k8s.io/v1 API intends.
//! - The API server refuses any change of an events.k8s.io/v1 Event but its `series`
//!   (`ValidateEventUpdate`: the note is immutable), so the note is written once, when
//!   the Event is created. A restart's Event waits for its container to be ready again,
//!   [`RECOVERY_WAIT`] at most, so that its note can carry the time to recover.
//! - A death whose cause may still turn out to be a probe kill is held until the
//!   observer attributes it or the attribution wait has passed, so that its Event
//!   names the final cause, never a cause taken back.
//! - At most `max_per_object_per_minute` writes per Pod (or Service): a write that would
//!   exceed it is deferred, and the series' newest state is written once the minute
//!   allows ([`EventPlanner::tick`]), so nothing is lost but intermediate counts.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};

use crate::correlate::incidents::{OutageIncident, RestartIncident};
use crate::observe::{Cause, DeathId, DeathRecord, IncidentUpdate};

/// A series ends when nothing has happened to it for this long (its container has not
/// died of its cause, its target has had no outage); the next occurrence starts a new
/// Event.
pub const SERIES_IDLE: SignedDuration = SignedDuration::from_hours(1);

/// How long a new restart series' Event waits for the container to be ready again, so
/// that its (immutable) note carries the time to recover.
pub const RECOVERY_WAIT: SignedDuration = SignedDuration::from_secs(60);

/// The window of the note's "times in the last hour".
const HOUR: SignedDuration = SignedDuration::from_hours(1);

/// The window of the per-object rate limit.
const MINUTE: SignedDuration = SignedDuration::from_mins(1);

/// The longest object name kept in an Event's name (which must stay below 253
/// characters).
const MAX_NAME_PREFIX: usize = 200;

/// The object an Event is about: a Pod (restarts) or a Service (outages).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Regarding {
    /// `Pod` or `Service` (both core/v1).
    pub kind: &'static str,
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    pub uid: Arc<str>,
}

/// The Event's `type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// One write: create the Event `name`, or update its series.
#[derive(Clone, Debug, PartialEq)]
pub struct EventIntent {
    /// The Event object's name (in the regarding object's namespace), the same for a whole
    /// series.
    pub name: String,
    pub regarding: Regarding,
    /// The cause (`OOMKilled`, `LivenessProbeFailed`, …), or [`OUTAGE_REASON`].
    pub reason: &'static str,
    /// [`RESTART_ACTION`] or [`OUTAGE_ACTION`].
    pub action: &'static str,
    pub type_: EventType,
    /// The note: written at the creation, the same in every later write of the series
    /// (an Event's note cannot change).
    pub note: String,
    /// The series' first occurrence: the Event's `eventTime`.
    pub first_seen: Timestamp,
    /// Occurrences in the series; above 1 the Event carries a `series`.
    pub count: u32,
    /// The newest occurrence: the series' `lastObservedTime`.
    pub last_seen: Timestamp,
    /// The first write of this Event (the writer creates it; otherwise it patches).
    pub create: bool,
}

/// The `action` of a restart's Event: what happened to the regarding Pod.
pub const RESTART_ACTION: &str = "Restart";
/// The `action` of an outage's Event.
pub const OUTAGE_ACTION: &str = "Probe";
/// The `reason` of an outage's Event (the note names the cause).
pub const OUTAGE_REASON: &str = "ProbeOutage";

/// A series: one container and cause of a Pod, or one probe target of a Service and the
/// cause of the restarts behind its outages.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct SeriesKey {
    uid: Arc<str>,
    /// The container, or the probe target.
    subject: Arc<str>,
    reason: &'static str,
}

/// What the newest occurrence of a series was.
#[derive(Debug)]
enum Occurrence {
    Restart {
        container: Arc<str>,
        cause: Cause,
        exit_code: i32,
        memory_limit_bytes: Option<u64>,
        /// The death's time to recover, once known.
        recovered_seconds: Option<f64>,
        id: DeathId,
    },
    Outage {
        target: Arc<str>,
        start: Timestamp,
        downtime_seconds: f64,
        failed_probes: u64,
        /// The restart behind it, if one explains it.
        restart: Option<Box<RestartIncident>>,
    },
}

#[derive(Debug)]
struct Series {
    name: String,
    regarding: Regarding,
    reason: &'static str,
    action: &'static str,
    type_: EventType,
    first_seen: Timestamp,
    last_seen: Timestamp,
    count: u32,
    /// Occurrence times within the last hour.
    times: VecDeque<Timestamp>,
    newest: Occurrence,
    /// The note, fixed at the first write.
    note: Option<String>,
    /// Not written yet: a restart series waits for its recovery until then.
    create_by: Option<Timestamp>,
    /// Changed since the last write (a write was deferred by the rate limit, or waits for
    /// the recovery).
    dirty: bool,
}

/// A death whose cause is not settled yet.
#[derive(Debug)]
struct Held {
    record: DeathRecord,
    until: Timestamp,
    recovered_seconds: Option<f64>,
}

/// The planner's state; see the module documentation.
#[derive(Debug)]
pub struct EventPlanner {
    max_per_minute: usize,
    attribution_wait: SignedDuration,
    series: HashMap<SeriesKey, Series>,
    held: Vec<Held>,
    /// Write times within the last minute, per Pod UID.
    writes: HashMap<Arc<str>, VecDeque<Timestamp>>,
    serial: u64,
    deferred: u64,
}

impl EventPlanner {
    /// `attribution_wait`: how long the observer may still attribute a death to a probe
    /// kill (`metrics.attribution_wait`).
    pub fn new(max_per_object_per_minute: u32, attribution_wait: SignedDuration) -> Self {
        EventPlanner {
            max_per_minute: usize::try_from(max_per_object_per_minute.max(1)).unwrap_or(1),
            attribution_wait,
            series: HashMap::new(),
            held: Vec::new(),
            writes: HashMap::new(),
            serial: 0,
            deferred: 0,
        }
    }

    /// Takes in one incident update at `now`; the writes it calls for go to `out`.
    pub fn apply(&mut self, update: &IncidentUpdate, now: Timestamp, out: &mut Vec<EventIntent>) {
        match update {
            IncidentUpdate::Death(record) => {
                if record.cause.may_be_probe_kill() && self.attribution_wait.is_positive() {
                    self.held.push(Held {
                        record: record.clone(),
                        until: now + self.attribution_wait,
                        recovered_seconds: None,
                    });
                } else {
                    self.died(record, None, now, out);
                }
            }
            IncidentUpdate::Attributed { id, cause } => {
                if let Some(index) = self.held.iter().position(|held| &held.record.id == id) {
                    let mut held = self.held.swap_remove(index);
                    held.record.cause = *cause;
                    self.died(&held.record, held.recovered_seconds, now, out);
                }
            }
            IncidentUpdate::Recovered { id, seconds, .. } => {
                if let Some(held) = self.held.iter_mut().find(|held| &held.record.id == id) {
                    held.recovered_seconds = Some(*seconds);
                    return;
                }
                let key = self
                    .series
                    .iter()
                    .find(|(_, series)| {
                        matches!(&series.newest, Occurrence::Restart { id: newest, .. } if newest == id)
                    })
                    .map(|(key, _)| key.clone());
                // Only an Event not created yet can still carry it: a note is immutable.
                if let Some(key) = key
                    && let Some(series) = self.series.get_mut(&key)
                    && series.note.is_none()
                {
                    if let Occurrence::Restart {
                        recovered_seconds, ..
                    } = &mut series.newest
                    {
                        *recovered_seconds = Some(*seconds);
                    }
                    series.create_by = None;
                    if !self.write(&key, now, out) {
                        self.deferred += 1;
                    }
                }
            }
        }
    }

    /// Once a second: settles held deaths whose wait is over, creates the Events whose
    /// recovery wait is over, writes what the rate limit deferred once it allows, and
    /// forgets ended series.
    pub fn tick(&mut self, now: Timestamp, out: &mut Vec<EventIntent>) {
        let mut index = 0;
        while index < self.held.len() {
            if self.held[index].until <= now {
                let held = self.held.swap_remove(index);
                self.died(&held.record, held.recovered_seconds, now, out);
            } else {
                index += 1;
            }
        }
        let dirty: Vec<SeriesKey> = self
            .series
            .iter()
            .filter(|(_, series)| {
                series.dirty && series.create_by.is_none_or(|create_by| create_by <= now)
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in dirty {
            self.write(&key, now, out);
        }
        self.series
            .retain(|_, series| series.dirty || series.last_seen + SERIES_IDLE > now);
        self.writes.retain(|_, times| {
            prune(times, now - MINUTE);
            !times.is_empty()
        });
    }

    /// Writes deferred by the rate limit since the last call.
    pub fn take_deferred(&mut self) -> u64 {
        std::mem::take(&mut self.deferred)
    }

    /// An ended outage of a discovered target, on its Service (UID `service_uid`).
    pub fn outage(
        &mut self,
        outage: &OutageIncident,
        service_uid: &Arc<str>,
        now: Timestamp,
        out: &mut Vec<EventIntent>,
    ) {
        let (Some(namespace), Some(service)) = (&outage.namespace, &outage.service) else {
            return;
        };
        let regarding = Regarding {
            kind: "Service",
            namespace: namespace.clone(),
            name: service.clone(),
            uid: service_uid.clone(),
        };
        let occurrence = Occurrence::Outage {
            target: outage.target.clone(),
            start: outage.start,
            downtime_seconds: outage.downtime_seconds,
            failed_probes: outage.failed_probes,
            restart: outage.restart.clone().map(Box::new),
        };
        self.occurred(regarding, OUTAGE_REASON, occurrence, outage.start, now, out);
    }

    /// A death with its settled cause.
    fn died(
        &mut self,
        record: &DeathRecord,
        recovered_seconds: Option<f64>,
        now: Timestamp,
        out: &mut Vec<EventIntent>,
    ) {
        let regarding = Regarding {
            kind: "Pod",
            namespace: record.workload.namespace().clone(),
            name: record.pod.clone(),
            uid: record.id.pod_uid.clone(),
        };
        let occurrence = Occurrence::Restart {
            container: record.id.container.clone(),
            cause: record.cause,
            exit_code: record.exit_code,
            memory_limit_bytes: record.memory_limit_bytes,
            recovered_seconds,
            id: record.id.clone(),
        };
        let at = record.killed_at.unwrap_or(now);
        self.occurred(regarding, record.cause.as_str(), occurrence, at, now, out);
    }

    /// The next occurrence of a series (a new one if it has ended), `at` its own time.
    fn occurred(
        &mut self,
        regarding: Regarding,
        reason: &'static str,
        occurrence: Occurrence,
        at: Timestamp,
        now: Timestamp,
        out: &mut Vec<EventIntent>,
    ) {
        let (subject, action, type_) = match &occurrence {
            Occurrence::Restart {
                container, cause, ..
            } => (container.clone(), RESTART_ACTION, event_type(*cause)),
            // The note names the restart behind the outage and cannot change: outages
            // explained by another cause (or by none) are another series.
            Occurrence::Outage {
                target, restart, ..
            } => {
                let cause = restart.as_ref().map_or("none", |restart| restart.cause);
                (
                    Arc::from(format!("{target} {cause}")),
                    OUTAGE_ACTION,
                    EventType::Warning,
                )
            }
        };
        let key = SeriesKey {
            uid: regarding.uid.clone(),
            subject,
            reason,
        };
        let ongoing = self
            .series
            .get(&key)
            .is_some_and(|series| series.last_seen + SERIES_IDLE > now);
        let waits_for_recovery = matches!(
            occurrence,
            Occurrence::Restart {
                recovered_seconds: None,
                ..
            }
        );
        if ongoing {
            if let Some(series) = self.series.get_mut(&key) {
                series.newest = occurrence;
                if !waits_for_recovery {
                    // Not created yet, and this one's recovery is known: no need to wait.
                    series.create_by = None;
                }
            }
        } else {
            self.serial += 1;
            let prefix: String = regarding.name.chars().take(MAX_NAME_PREFIX).collect();
            let name = format!(
                "{prefix}.{:x}.{}",
                now.as_nanosecond().unsigned_abs(),
                self.serial
            );
            self.series.insert(
                key.clone(),
                Series {
                    name,
                    regarding,
                    reason,
                    action,
                    type_,
                    first_seen: now,
                    last_seen: now,
                    count: 0,
                    times: VecDeque::new(),
                    newest: occurrence,
                    note: None,
                    create_by: waits_for_recovery.then(|| now + RECOVERY_WAIT),
                    dirty: false,
                },
            );
        }
        let Some(series) = self.series.get_mut(&key) else {
            return;
        };
        series.count = series.count.saturating_add(1);
        series.last_seen = now;
        series.times.push_back(at);
        series.dirty = true;
        if series.create_by.is_some_and(|create_by| create_by > now) {
            return; // created once recovered, or at `create_by`
        }
        if !self.write(&key, now, out) {
            self.deferred += 1;
        }
    }

    /// Emits the series' current state if its object's rate limit allows it at `now`.
    fn write(&mut self, key: &SeriesKey, now: Timestamp, out: &mut Vec<EventIntent>) -> bool {
        let Some(series) = self.series.get_mut(key) else {
            return false;
        };
        let times = self.writes.entry(series.regarding.uid.clone()).or_default();
        prune(times, now - MINUTE);
        if times.len() >= self.max_per_minute {
            return false;
        }
        times.push_back(now);
        prune(&mut series.times, now - HOUR);
        let create = series.note.is_none();
        let since_newest = series.times.back().map(|at| now.duration_since(*at));
        let note = series
            .note
            .get_or_insert_with(|| note(&series.newest, series.times.len(), since_newest))
            .clone();
        out.push(EventIntent {
            name: series.name.clone(),
            regarding: series.regarding.clone(),
            reason: series.reason,
            action: series.action,
            type_: series.type_,
            note,
            first_seen: series.first_seen,
            count: series.count,
            last_seen: series.last_seen,
            create,
        });
        series.create_by = None;
        series.dirty = false;
        true
    }
}

/// Drops the times before `from`.
fn prune(times: &mut VecDeque<Timestamp>, from: Timestamp) {
    while times.front().is_some_and(|time| *time < from) {
        times.pop_front();
    }
}

/// Restarts the workload asked for (its restart rules) are no warning.
fn event_type(cause: Cause) -> EventType {
    match cause {
        Cause::RestartRule | Cause::RestartAllContainers => EventType::Normal,
        _ => EventType::Warning,
    }
}

/// The note of an Event created for `occurrence`, the `times`th of its series in the last
/// hour, `since` after it. E.g. "Container api was OOM-killed (exit code 137, memory limit 48Mi); ready
/// again 4.2 s after the kill", or "Probe target grade/api was down 3.0 s (4 failed
/// probes) from 2027-01-15T08:00:00Z: the OOMKilled restart of container api in pod
/// grade-api-x2 (killed at …)". Later occurrences count in the Event's `series` (kubectl
/// shows "x5 over 3m"); the note says "N times in the last hour" only when there were
/// already more than one at the creation (a deferred or waiting first write).
fn note(occurrence: &Occurrence, times: usize, since: Option<SignedDuration>) -> String {
    match occurrence {
        Occurrence::Restart {
            container,
            cause,
            exit_code,
            memory_limit_bytes,
            recovered_seconds,
            ..
        } => {
            let mut note = match cause {
                Cause::OOMKilled => format!("Container {container} was OOM-killed"),
                Cause::LivenessProbeFailed => {
                    format!("Container {container} was killed by its liveness probe")
                }
                Cause::StartupProbeFailed => {
                    format!("Container {container} was killed by its startup probe")
                }
                cause => format!("Container {container} restarted: {}", cause.as_str()),
            };
            let _ = write!(note, " (exit code {exit_code}, ");
            match memory_limit_bytes {
                Some(bytes) => {
                    let _ = write!(note, "memory limit {})", quantity(*bytes));
                }
                None => note.push_str("no memory limit)"),
            }
            in_the_last_hour(&mut note, times);
            match recovered_seconds {
                Some(seconds) => {
                    let _ = write!(note, "; ready again {seconds:.1} s after the kill");
                }
                None => {
                    let seconds = since.map_or(0, |since| since.as_secs().max(0));
                    let _ = write!(note, "; not ready again {seconds} s after the kill");
                }
            }
            note
        }
        Occurrence::Outage {
            target,
            start,
            downtime_seconds,
            failed_probes,
            restart,
        } => {
            let mut note = format!(
                "Probe target {target} was down {downtime_seconds:.1} s ({failed_probes} failed \
                 probes) from {start}: "
            );
            match restart {
                Some(restart) => {
                    let _ = write!(
                        note,
                        "the {} restart of container {} in pod {}",
                        restart.cause, restart.container, restart.pod
                    );
                    if let Some(killed_at) = restart.killed_at {
                        let _ = write!(note, " (killed at {killed_at})");
                    }
                }
                None => note.push_str("no restart of the pods behind it explains it"),
            }
            in_the_last_hour(&mut note, times);
            note
        }
    }
}

fn in_the_last_hour(note: &mut String, times: usize) {
    if times > 1 {
        let _ = write!(note, "; {times} times in the last hour");
    }
}

/// Bytes as Kubernetes writes them: `48Mi`, `1Gi`, or plain bytes.
fn quantity(bytes: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1 << 40, "Ti"),
        (1 << 30, "Gi"),
        (1 << 20, "Mi"),
        (1 << 10, "Ki"),
    ];
    for (size, unit) in UNITS {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::workload::Workload;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).expect("valid")
    }

    fn id(key: u64) -> DeathId {
        DeathId {
            pod_uid: "uid-1".into(),
            container: "api".into(),
            key,
        }
    }

    fn death(key: u64, cause: Cause, at: i64) -> IncidentUpdate {
        IncidentUpdate::Death(DeathRecord {
            id: id(key),
            workload: Arc::new(Workload::new("grade", "Deployment", "grade-api")),
            pod: "grade-api-7d9f-x2".into(),
            pod_labels: Arc::default(),
            cause,
            exit_code: 137,
            killed_at: Some(t(at)),
            memory_limit_bytes: Some(48 * 1024 * 1024),
        })
    }

    fn planner(max_per_minute: u32) -> EventPlanner {
        EventPlanner::new(max_per_minute, SignedDuration::from_secs(5))
    }

    fn recovered(key: u64, at: i64, seconds: f64) -> IncidentUpdate {
        IncidentUpdate::Recovered {
            id: id(key),
            ready_at: t(at),
            seconds,
            phases: None,
        }
    }

    #[test]
    fn a_crash_loop_is_one_event_with_a_series() {
        let mut planner = planner(6);
        let mut out = Vec::new();
        for kill in 0_i64..10 {
            let at = kill * 30;
            planner.apply(
                &death(kill.unsigned_abs(), Cause::OOMKilled, at),
                t(at),
                &mut out,
            );
            planner.apply(
                &recovered(kill.unsigned_abs(), at + 4, 4.0),
                t(at + 4),
                &mut out,
            );
            planner.tick(t(at + 5), &mut out);
        }
        assert_eq!(out.len(), 10, "every kill written once: {out:#?}");
        assert!(out[0].create);
        assert!(out[1..].iter().all(|intent| !intent.create));
        assert!(out.iter().all(|intent| intent.name == out[0].name));
        assert!(
            out.iter().all(|intent| intent.note == out[0].note),
            "an Event's note cannot change: {out:#?}"
        );
        let last = out.last().expect("written");
        assert_eq!(last.count, 10);
        assert_eq!(last.first_seen, t(0));
        assert_eq!(last.last_seen, t(270));
        assert_eq!(last.reason, "OOMKilled");
        assert_eq!(last.type_, EventType::Warning);
        assert_eq!(last.regarding.name.as_ref(), "grade-api-7d9f-x2");
        assert_eq!(last.regarding.namespace.as_ref(), "grade");
        assert_eq!(
            out[0].note,
            "Container api was OOM-killed (exit code 137, memory limit 48Mi); ready again \
             4.0 s after the kill"
        );
        assert_eq!(planner.take_deferred(), 0);
    }

    #[test]
    fn the_event_waits_for_the_time_to_recover_and_its_note_never_changes() {
        let mut planner = planner(6);
        let mut out = Vec::new();
        planner.apply(&death(1, Cause::OOMKilled, 0), t(0), &mut out);
        planner.tick(t(3), &mut out);
        assert!(out.is_empty(), "waits for the recovery: {out:#?}");
        planner.apply(&recovered(1, 4, 4.25), t(4), &mut out);
        assert_eq!(out.len(), 1);
        assert!(out[0].create);
        assert_eq!(out[0].count, 1);
        assert!(
            out[0]
                .note
                .ends_with("memory limit 48Mi); ready again 4.2 s after the kill"),
            "{}",
            out[0].note
        );
        // 50 minutes later: still the series, its count up, its note as it was.
        planner.apply(&death(2, Cause::OOMKilled, 3000), t(3000), &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].name, out[0].name);
        assert_eq!(out[1].count, 2);
        assert!(!out[1].create);
        assert_eq!(out[1].note, out[0].note);
        // Its recovery writes nothing: the Event exists and its note is immutable.
        planner.apply(&recovered(2, 3004, 4.0), t(3004), &mut out);
        planner.tick(t(3005), &mut out);
        assert_eq!(out.len(), 2, "{out:#?}");
        // Over an hour of quiet: a new Event; no recovery within the wait: said so.
        planner.tick(t(6700), &mut out);
        planner.apply(&death(3, Cause::OOMKilled, 6700), t(6700), &mut out);
        planner.tick(t(6700 + 59), &mut out);
        assert_eq!(out.len(), 2, "still waiting");
        planner.tick(t(6700 + 60), &mut out);
        let last = out.last().expect("written");
        assert_ne!(last.name, out[0].name);
        assert!(last.create);
        assert_eq!(last.count, 1);
        assert!(
            last.note.ends_with("; not ready again 60 s after the kill"),
            "{}",
            last.note
        );
        // A death during the wait: one creation, counting both.
        planner.tick(t(20_000), &mut out);
        let before = out.len();
        planner.apply(&death(4, Cause::OOMKilled, 20_000), t(20_000), &mut out);
        planner.apply(&death(5, Cause::OOMKilled, 20_010), t(20_010), &mut out);
        planner.apply(&recovered(5, 20_013, 3.0), t(20_013), &mut out);
        assert_eq!(out.len(), before + 1);
        let last = out.last().expect("written");
        assert_eq!(last.count, 2);
        assert!(
            last.note
                .ends_with("; 2 times in the last hour; ready again 3.0 s after the kill"),
            "{}",
            last.note
        );
    }

    #[test]
    fn a_waiting_event_is_created_once_a_later_death_brings_its_recovery() {
        let mut planner = planner(6);
        let mut out = Vec::new();
        // Held for the attribution wait (5 s), not recovered: waits for a recovery.
        planner.apply(&death(1, Cause::Error, 0), t(0), &mut out);
        planner.tick(t(5), &mut out);
        assert!(out.is_empty(), "{out:#?}");
        // The next death is settled with its recovery known: written at once.
        planner.apply(&death(2, Cause::Error, 10), t(10), &mut out);
        planner.apply(&recovered(2, 12, 2.0), t(12), &mut out);
        planner.tick(t(15), &mut out);
        assert_eq!(out.len(), 1, "{out:#?}");
        assert!(out[0].create);
        assert_eq!(out[0].count, 2);
        assert!(
            out[0]
                .note
                .ends_with("; 2 times in the last hour; ready again 2.0 s after the kill"),
            "{}",
            out[0].note
        );
    }

    #[test]
    fn the_rate_limit_defers_and_the_count_stays_exact() {
        let mut planner = planner(3);
        let mut out = Vec::new();
        planner.apply(&death(0, Cause::OOMKilled, 0), t(0), &mut out);
        planner.apply(&recovered(0, 0, 0.5), t(0), &mut out);
        for kill in 1_u64..10 {
            planner.apply(
                &death(kill, Cause::OOMKilled, 0),
                t(kill.cast_signed()),
                &mut out,
            );
        }
        assert_eq!(out.len(), 3, "3 writes in the minute: {out:#?}");
        assert_eq!(planner.take_deferred(), 7);
        planner.tick(t(30), &mut out);
        assert_eq!(out.len(), 3, "still within the minute");
        planner.tick(t(61), &mut out);
        assert_eq!(out.len(), 4, "the deferred state, once");
        assert_eq!(out[3].count, 10);
        assert_eq!(out[3].note, out[0].note);
        planner.tick(t(62), &mut out);
        assert_eq!(out.len(), 4, "nothing more to write");
        assert_eq!(planner.take_deferred(), 0);

        // The limit is per Pod: another Pod writes meanwhile.
        let mut other = death(20, Cause::OOMKilled, 0);
        let mut other_recovered = recovered(20, 63, 1.0);
        if let IncidentUpdate::Death(record) = &mut other {
            record.id.pod_uid = "uid-2".into();
            record.pod = "other".into();
        }
        if let IncidentUpdate::Recovered { id, .. } = &mut other_recovered {
            id.pod_uid = "uid-2".into();
        }
        planner.apply(&death(11, Cause::OOMKilled, 0), t(63), &mut out);
        planner.apply(&death(12, Cause::OOMKilled, 0), t(63), &mut out);
        planner.apply(&death(13, Cause::OOMKilled, 0), t(63), &mut out);
        planner.apply(&other, t(63), &mut out);
        planner.apply(&other_recovered, t(63), &mut out);
        assert_eq!(out.len(), 7);
        assert_eq!(out[6].regarding.name.as_ref(), "other");
        assert_eq!(planner.take_deferred(), 1);
    }

    #[test]
    fn a_possible_probe_kill_waits_for_its_cause() {
        let mut planner = planner(6);
        let mut out = Vec::new();
        planner.apply(&death(1, Cause::Error, 0), t(0), &mut out);
        planner.tick(t(2), &mut out);
        assert!(out.is_empty(), "held: the probe kill may still be seen");
        planner.apply(
            &IncidentUpdate::Attributed {
                id: id(1),
                cause: Cause::LivenessProbeFailed,
            },
            t(3),
            &mut out,
        );
        planner.apply(&recovered(1, 4, 4.0), t(4), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].reason, "LivenessProbeFailed");
        assert!(
            out[0]
                .note
                .starts_with("Container api was killed by its liveness probe (exit code 137")
        );

        // Not attributed: written with the kubelet's reason once the wait is over, with
        // the recovery seen meanwhile.
        planner.apply(&death(2, Cause::Error, 10), t(10), &mut out);
        planner.apply(&recovered(2, 12, 2.0), t(12), &mut out);
        planner.tick(t(14), &mut out);
        assert_eq!(out.len(), 1);
        planner.tick(t(15), &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].reason, "Error");
        assert_ne!(out[1].name, out[0].name, "another cause, another Event");
        assert_eq!(
            out[1].note,
            "Container api restarted: Error (exit code 137, memory limit 48Mi); ready again \
             2.0 s after the kill"
        );
    }

    #[test]
    fn an_outage_is_an_event_on_its_service_naming_the_restart_behind_it() {
        use crate::correlate::incidents::{Fronts, IncidentLog, OutageReport};
        let mut log = IncidentLog::new(10, std::time::Duration::from_secs(2));
        log.apply(&death(1, Cause::OOMKilled, 100));
        let report = |start: i64, fronts: Option<Fronts>| OutageReport {
            target: "grade/grade-api".into(),
            namespace: Some("grade".into()),
            service: Some("grade-api".into()),
            start: t(start),
            end: t(start + 3),
            failed_probes: 4,
            probe_interval: std::time::Duration::from_secs(1),
            fronts,
        };
        let fronts = Fronts::Workload(Workload::new("grade", "Deployment", "grade-api"));
        let explained = log.record_outage(report(101, Some(fronts))).clone();
        let unexplained = log.record_outage(report(500, None)).clone();
        let service: Arc<str> = "svc-uid".into();

        let mut planner = planner(6);
        let mut out = Vec::new();
        planner.outage(&explained, &service, t(104), &mut out);
        assert_eq!(out.len(), 1);
        let intent = &out[0];
        assert_eq!(intent.regarding.kind, "Service");
        assert_eq!(intent.regarding.name.as_ref(), "grade-api");
        assert_eq!(intent.regarding.uid.as_ref(), "svc-uid");
        assert_eq!(intent.reason, OUTAGE_REASON);
        assert_eq!(intent.action, OUTAGE_ACTION);
        assert_eq!(intent.type_, EventType::Warning);
        assert_eq!(
            intent.note,
            format!(
                "Probe target grade/grade-api was down 3.0 s (4 failed probes) from {}: the \
                 OOMKilled restart of container api in pod grade-api-7d9f-x2 (killed at {})",
                t(101),
                t(100)
            )
        );
        // The next outage explained the same way updates the same Event.
        let mut again = explained.clone();
        again.start = t(300);
        planner.outage(&again, &service, t(303), &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].name, out[0].name);
        assert_eq!(out[1].count, 2);
        assert_eq!(out[1].note, out[0].note);
        // One nothing explains is another Event: a note cannot change.
        planner.outage(&unexplained, &service, t(503), &mut out);
        assert_eq!(out.len(), 3);
        assert_ne!(out[2].name, out[0].name);
        assert!(
            out[2]
                .note
                .ends_with(": no restart of the pods behind it explains it"),
            "{}",
            out[2].note
        );
        // A target without a Service (static) has no object to write about.
        let mut static_target = explained.clone();
        static_target.service = None;
        planner.outage(&static_target, &service, t(600), &mut out);
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn quantities_read_like_kubernetes() {
        assert_eq!(quantity(50_331_648), "48Mi");
        assert_eq!(quantity(1 << 30), "1Gi");
        assert_eq!(quantity(1000), "1000");
        assert_eq!(quantity(1536), "1536");
    }
}
