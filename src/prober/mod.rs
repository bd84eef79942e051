//! The synthetic prober: probes each target over HTTP on its own schedule (down to
//! 100 ms), independently of Prometheus scrapes, and measures downtime as the target's
//! clients see it.
//!
//! Each target has a scheduler task that starts a probe every interval; every probe runs
//! in its own task and is bounded by its timeout, so a slow or hanging target never
//! delays another, nor its own next probe. Results flow to one task that owns the
//! per-target [`OutageTracker`]s and updates the metrics.

pub mod http;
pub mod metrics;
pub mod outage;
pub mod target;

use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use thiserror::Error;

use crate::incidents::{OutageReport, SharedIncidentLog, lock};
use tokio::sync::{mpsc, watch};

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

struct Target {
    spec: Arc<ProbeSpec>,
    client: reqwest::Client,
    labels: TargetLabels,
    tracker: OutageTracker,
}

/// A probe's result on its way to the tracker.
struct Report {
    target: usize,
    started: Instant,
    result: ProbeResult,
    took: Duration,
}

pub struct Prober {
    targets: Vec<Target>,
    metrics: ProbeMetrics,
    incidents: SharedIncidentLog,
}

impl Prober {
    pub fn new(
        specs: Vec<ProbeSpec>,
        metrics: ProbeMetrics,
        incidents: SharedIncidentLog,
    ) -> Result<Prober, ProberError> {
        let targets = specs
            .into_iter()
            .map(|spec| {
                let client = http::client_for(&spec).map_err(|source| ProberError {
                    target: spec.name.clone(),
                    source,
                })?;
                Ok(Target {
                    labels: TargetLabels::of(&spec),
                    tracker: OutageTracker::new(spec.failure_threshold),
                    spec: Arc::new(spec),
                    client,
                })
            })
            .collect::<Result<_, ProberError>>()?;
        Ok(Prober {
            targets,
            metrics,
            incidents,
        })
    }

    /// Probes until `shutdown` turns true.
    pub async fn run(mut self, shutdown: watch::Receiver<bool>) {
        if self.targets.is_empty() {
            return;
        }
        let origin = Clock::now();
        let (reports, mut incoming) = mpsc::channel::<Report>(1024);
        for (index, target) in self.targets.iter().enumerate() {
            tokio::spawn(schedule(
                index,
                target.spec.clone(),
                target.client.clone(),
                reports.clone(),
                shutdown.clone(),
            ));
        }
        drop(reports);
        // Ends when every scheduler (and every probe in flight) has stopped.
        while let Some(report) = incoming.recv().await {
            self.apply(report, origin);
        }
    }

    fn apply(&mut self, report: Report, origin: Clock) {
        let Some(target) = self.targets.get_mut(report.target) else {
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
            .observe(report.started.duration_since(origin.mono), verdict)
        else {
            metrics.stale();
            return;
        };
        metrics.set_up(&target.labels, !target.tracker.is_down());
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
                        start: origin.wall_at(start),
                        end: origin.wall_at(end),
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

/// Starts a probe of one target every interval until shutdown.
async fn schedule(
    index: usize,
    spec: Arc<ProbeSpec>,
    client: reqwest::Client,
    reports: mpsc::Sender<Report>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(spec.interval);
    // After a stall, probe once and carry on rather than firing a burst.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            _ = ticker.tick() => {
                let started = Instant::now();
                let (spec, client, reports) = (spec.clone(), client.clone(), reports.clone());
                tokio::spawn(async move {
                    let (result, took) = http::probe(&client, &spec).await;
                    let _ = reports
                        .send(Report { target: index, started, result, took })
                        .await;
                });
            }
        }
    }
}
