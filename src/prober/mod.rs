//! The synthetic prober: probes each target over HTTP on its own schedule (down to
//! 100 ms), independently of Prometheus scrapes, and measures downtime as the target's
//! clients see it.
//!
//! Each target has a scheduler task that starts a probe every interval; every probe runs
//! in its own task and is bounded by its timeout, so a slow or hanging target never
//! delays another, nor its own next probe. Results flow to one task that owns the
//! per-target [`OutageTracker`]s and updates the metrics. Targets come and go at run time
//! ([`TargetChange`]: Service discovery); a removed target's series stay for the
//! retention, like a workload's.

pub mod discovery;
pub mod http;
pub mod metrics;
pub mod outage;
pub mod service_watch;
pub mod target;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use thiserror::Error;
use tokio::sync::{mpsc, watch};

use crate::incidents::{Fronts, OutageReport, SharedIncidentLog, lock};
use crate::sharding::Sharding;
use http::ProbeResult;
use metrics::{ProbeMetrics, TargetLabels};
use outage::{OutageEvent, OutageTracker, Verdict};
use target::ProbeSpec;

/// Cause label of an outage no restart explains.
pub const UNKNOWN_CAUSE: &str = "unknown";

#[derive(Debug, Error)]
#[error("probe target {target}: cannot build its HTTP client: {source}")]
pub struct ProberError {
    target: Arc<str>,
    #[source]
    source: reqwest::Error,
}

/// A change in the set of targets.
#[derive(Debug)]
pub enum TargetChange {
    /// Add the target, or replace the one of the same name if its settings changed.
    Upsert(Box<ProbeSpec>),
    Remove(Arc<str>),
}

struct Target {
    spec: Arc<ProbeSpec>,
    labels: TargetLabels,
    tracker: OutageTracker,
    /// Distinguishes this incarnation's results from a replaced one's still in flight.
    generation: u64,
    /// Stops this target's scheduler.
    stop: watch::Sender<bool>,
    causes: HashSet<&'static str>,
}

/// A probe's result on its way to the tracker.
struct Report {
    target: Arc<str>,
    generation: u64,
    started: Instant,
    result: ProbeResult,
    took: Duration,
}

pub struct Prober {
    targets: HashMap<Arc<str>, Target>,
    /// Series of removed targets, deleted once the retention has passed.
    removed: Vec<(TargetLabels, HashSet<&'static str>, Instant)>,
    retention: Duration,
    next_generation: u64,
    metrics: ProbeMetrics,
    incidents: SharedIncidentLog,
    origin: Clock,
    reports: mpsc::Sender<Report>,
    incoming: mpsc::Receiver<Report>,
    sharding: Sharding,
}

impl Prober {
    /// A prober with the static targets `specs`; a bad target is a start-up error.
    pub fn new(
        specs: Vec<ProbeSpec>,
        metrics: ProbeMetrics,
        incidents: SharedIncidentLog,
        retention: Duration,
        sharding: Sharding,
    ) -> Result<Prober, ProberError> {
        let (reports, incoming) = mpsc::channel::<Report>(1024);
        let mut prober = Prober {
            targets: HashMap::new(),
            removed: Vec::new(),
            retention,
            next_generation: 0,
            metrics,
            incidents,
            origin: Clock::now(),
            reports,
            incoming,
            sharding,
        };
        for spec in specs {
            prober.upsert(spec)?;
        }
        Ok(prober)
    }

    /// Probes until `shutdown` turns true, applying `changes` as they come.
    pub async fn run(
        mut self,
        mut changes: mpsc::Receiver<TargetChange>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut changes_open = true;
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => break,
                change = changes.recv(), if changes_open => match change {
                    Some(change) => self.change(change),
                    None => changes_open = false,
                },
                Some(report) = self.incoming.recv() => self.apply(report),
                _ = ticker.tick() => self.expire(Instant::now()),
            }
        }
        for target in self.targets.values() {
            let _ = target.stop.send(true);
        }
    }

    fn change(&mut self, change: TargetChange) {
        match change {
            TargetChange::Upsert(spec) => {
                let name = spec.name.clone();
                if let Err(error) = self.upsert(*spec) {
                    tracing::warn!(target = %name, %error, "cannot probe target");
                }
            }
            TargetChange::Remove(name) => {
                if let Some(target) = self.targets.remove(&name) {
                    let _ = target.stop.send(true);
                    tracing::info!(target = %name, "probe target removed");
                    self.removed
                        .push((target.labels, target.causes, Instant::now()));
                }
            }
        }
    }

    fn upsert(&mut self, spec: ProbeSpec) -> Result<(), ProberError> {
        if !self.owns(&spec) {
            tracing::debug!(target = %spec.name, "probe target belongs to another shard");
            return Ok(());
        }
        if let Some(existing) = self.targets.get(&spec.name)
            && existing.spec.same_probe_as(&spec)
        {
            return Ok(());
        }
        let client = http::client_for(&spec).map_err(|source| ProberError {
            target: spec.name.clone(),
            source,
        })?;
        let labels = TargetLabels::of(&spec);
        self.removed.retain(|(removed, _, _)| removed != &labels);
        let mut causes = HashSet::new();
        if let Some(old) = self.targets.remove(&spec.name) {
            let _ = old.stop.send(true);
            causes = old.causes;
        }
        self.next_generation += 1;
        let generation = self.next_generation;
        let spec = Arc::new(spec);
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(schedule(
            spec.clone(),
            generation,
            client,
            self.reports.clone(),
            stopped,
        ));
        tracing::info!(target = %spec.name, url = %spec.url, interval = ?spec.interval, "probing");
        self.targets.insert(
            spec.name.clone(),
            Target {
                labels,
                tracker: OutageTracker::new(spec.failure_threshold),
                generation,
                stop,
                causes,
                spec,
            },
        );
        Ok(())
    }

    /// With sharding, a target is probed by the replica that owns the workload it fronts
    /// (so correlation finds its restarts there), else by the owner of its name.
    fn owns(&self, spec: &ProbeSpec) -> bool {
        match &spec.fronts {
            Some(Fronts::Workload(workload)) => self.sharding.owns_workload(workload),
            _ => self.sharding.owns_name(&spec.name),
        }
    }

    fn expire(&mut self, now: Instant) {
        let retention = self.retention;
        let metrics = &self.metrics;
        self.removed.retain(|(labels, causes, at)| {
            let expired = now.duration_since(*at) >= retention;
            if expired {
                let causes: Vec<&'static str> = causes.iter().copied().collect();
                metrics.remove(labels, &causes);
            }
            !expired
        });
    }

    fn apply(&mut self, report: Report) {
        let Some(target) = self
            .targets
            .get_mut(&report.target)
            .filter(|target| target.generation == report.generation)
        else {
            return;
        };
        let metrics = &self.metrics;
        metrics.probed(&target.labels, report.result, report.took.as_secs_f64());
        let verdict = if report.result.is_success() {
            Verdict::Up
        } else {
            Verdict::Down
        };
        let Some(events) = target
            .tracker
            .observe(report.started.duration_since(self.origin.mono), verdict)
        else {
            metrics.stale();
            return;
        };
        // Up unless an outage is open; a target that has never answered is not up either.
        let up = target.tracker.has_answered() && !target.tracker.is_down();
        metrics.set_up(&target.labels, up);
        for event in events {
            match event {
                OutageEvent::Started { .. } => tracing::warn!(
                    target = %target.spec.name,
                    result = report.result.as_str(),
                    "probe target down"
                ),
                OutageEvent::Downtime { seconds } => metrics.downtime(&target.labels, seconds),
                OutageEvent::Ended {
                    start,
                    end,
                    failed_probes,
                } => {
                    let seconds = (end - start).as_secs_f64();
                    let cause = lock(&self.incidents).record_outage(OutageReport {
                        target: target.spec.name.clone(),
                        namespace: target.spec.namespace.clone(),
                        service: target.spec.service.clone(),
                        start: self.origin.wall_at(start),
                        end: self.origin.wall_at(end),
                        failed_probes,
                        probe_interval: target.spec.interval,
                        fronts: target.spec.fronts.clone(),
                    });
                    tracing::info!(
                        target = %target.spec.name,
                        seconds,
                        failed_probes,
                        cause,
                        "probe target up again"
                    );
                    target.causes.insert(cause);
                    metrics.outage_ended(&target.labels, cause, seconds);
                }
            }
        }
    }
}

/// The prober's time origin: monotonic for measuring, wall-clock for reporting.
#[derive(Clone, Copy)]
struct Clock {
    mono: Instant,
    wall: Timestamp,
}

impl Clock {
    fn now() -> Clock {
        Clock {
            mono: Instant::now(),
            wall: Timestamp::now(),
        }
    }

    /// The wall-clock time of a monotonic offset from the origin.
    fn wall_at(&self, offset: Duration) -> Timestamp {
        let offset = SignedDuration::try_from(offset).unwrap_or(SignedDuration::ZERO);
        self.wall.checked_add(offset).unwrap_or(self.wall)
    }
}

/// Starts a probe of one target every interval until stopped.
async fn schedule(
    spec: Arc<ProbeSpec>,
    generation: u64,
    client: reqwest::Client,
    reports: mpsc::Sender<Report>,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(spec.interval);
    // After a stall, probe once and carry on rather than firing a burst.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            // Also ends when the target is dropped (sender gone).
            _ = stop.wait_for(|stop| *stop) => break,
            _ = ticker.tick() => {
                let started = Instant::now();
                let (spec, client, reports) = (spec.clone(), client.clone(), reports.clone());
                tokio::spawn(async move {
                    let (result, took) = http::probe(&client, &spec).await;
                    let report = Report { target: spec.name.clone(), generation, started, result, took };
                    let _ = reports.send(report).await;
                });
            }
        }
    }
}
