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
//!
//! With leader election (see `crate::leader`) the daemon runs the prober only on the
//! replica holding the Lease, started when it acquires it, and gives it the leadership
//! ([`Prober::with_leadership`]): it probes only while that is true. Every target starts
//! with a fresh tracker, so the time nobody probed is a gap in the series, never downtime
//! (failures before a target's first success are no outage). When leadership ends (the
//! Lease lost, or released at shutdown) every scheduler stops and every probe series goes
//! at once, before the daemon itself stops.

pub mod config;
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

use crate::correlate::incidents::{Fronts, OutageReport, SharedIncidentLog, lock};
use crate::events::EventSink;
use crate::k8s::sharding::Sharding;
use http::ProbeResult;
use metrics::{ProbeMetrics, TargetLabels};
use outage::{OutageEvent, OutageTracker, Verdict};
use target::ProbeSpec;

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
    /// Distinguishes this incarnation's results from a replaced or stopped one's still in
    /// flight.
    generation: u64,
    /// Stops this target's scheduler; `None` while not probing (not the leader).
    stop: Option<watch::Sender<bool>>,
    client: reqwest::Client,
    causes: HashSet<&'static str>,
}

impl Target {
    /// Starts probing with a fresh tracker, as a new generation.
    fn start(&mut self, generation: u64, reports: &mpsc::Sender<Report>) {
        self.halt();
        self.generation = generation;
        self.tracker = OutageTracker::new(self.spec.failure_threshold);
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(schedule(
            self.spec.clone(),
            generation,
            self.client.clone(),
            reports.clone(),
            stopped,
        ));
        self.stop = Some(stop);
    }

    /// Stops the scheduler (results still in flight are ignored: their generation is old
    /// once the target starts again or is replaced).
    fn halt(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
    }
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
    /// Leader election: probe only while this is true (`None`: always probe).
    leadership: Option<watch::Receiver<bool>>,
    /// `[events]`: ended outages of discovered targets go to the Event writer.
    events: Option<EventSink>,
    /// The schedulers run.
    probing: bool,
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
            leadership: None,
            events: None,
            // Schedulers start in run().
            probing: false,
        };
        for spec in specs {
            prober.upsert(spec)?;
        }
        Ok(prober)
    }

    /// Probes only while `leadership` is true (this replica holds the Lease).
    pub fn with_leadership(mut self, leadership: watch::Receiver<bool>) -> Prober {
        self.leadership = Some(leadership);
        self
    }

    /// Hands every ended outage of a discovered target (one with a Service) to `events`.
    pub fn with_events(mut self, events: EventSink) -> Prober {
        self.events = Some(events);
        self
    }

    /// Starts or stops every scheduler (see the module docs).
    fn set_probing(&mut self, probing: bool) {
        if probing == self.probing {
            return;
        }
        self.probing = probing;
        if probing {
            for target in self.targets.values_mut() {
                self.next_generation += 1;
                target.start(self.next_generation, &self.reports);
                let spec = &target.spec;
                tracing::info!(target = %spec.name, url = %spec.url, interval = ?spec.interval, "probing");
            }
            if self.leadership.is_some() {
                tracing::info!(targets = self.targets.len(), "leading: probing");
            }
            return;
        }
        for target in self.targets.values_mut() {
            target.halt();
            // Results still in flight belong to the stopped incarnation.
            self.next_generation += 1;
            target.generation = self.next_generation;
            let causes: Vec<&'static str> = target.causes.drain().collect();
            self.metrics.remove(&target.labels, &causes);
        }
        for (labels, causes, _) in self.removed.drain(..) {
            let causes: Vec<&'static str> = causes.into_iter().collect();
            self.metrics.remove(&labels, &causes);
        }
        tracing::info!(
            targets = self.targets.len(),
            "not leading: probing stopped, probe series removed"
        );
    }

    /// Probes until `shutdown` turns true, applying `changes` as they come.
    pub async fn run(
        mut self,
        mut changes: mpsc::Receiver<TargetChange>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        // Start probing: at once without leader election, else when leading.
        let leading = match &mut self.leadership {
            Some(leadership) => *leadership.borrow_and_update(),
            None => true,
        };
        self.set_probing(leading);
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
                leader = leadership_changed(&mut self.leadership) => match leader {
                    Some(leader) => self.set_probing(leader),
                    None => {
                        // The election ended (shutdown): stop probing for good.
                        self.leadership = None;
                        self.set_probing(false);
                    }
                },
            }
        }
        for target in self.targets.values_mut() {
            target.halt();
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
                if let Some(mut target) = self.targets.remove(&name) {
                    target.halt();
                    tracing::info!(target = %name, "probe target removed");
                    // Without probing there are no series to keep.
                    if self.probing {
                        self.removed
                            .push((target.labels, target.causes, Instant::now()));
                    }
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
        if let Some(mut old) = self.targets.remove(&spec.name) {
            old.halt();
            causes = old.causes;
        }
        let spec = Arc::new(spec);
        let mut target = Target {
            labels,
            tracker: OutageTracker::new(spec.failure_threshold),
            generation: 0,
            stop: None,
            client,
            causes,
            spec: spec.clone(),
        };
        if self.probing {
            self.next_generation += 1;
            target.start(self.next_generation, &self.reports);
            tracing::info!(target = %spec.name, url = %spec.url, interval = ?spec.interval, "probing");
        } else {
            tracing::debug!(target = %spec.name, url = %spec.url, "probe target known; not probing yet");
        }
        self.targets.insert(spec.name.clone(), target);
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
                    let mut log = lock(&self.incidents);
                    let outage = log.record_outage(OutageReport {
                        target: target.spec.name.clone(),
                        namespace: target.spec.namespace.clone(),
                        service: target.spec.service.clone(),
                        start: self.origin.wall_at(start),
                        end: self.origin.wall_at(end),
                        failed_probes,
                        probe_interval: target.spec.interval,
                        fronts: target.spec.fronts.clone(),
                    });
                    let cause = outage.cause;
                    if let (Some(events), Some(uid)) = (&self.events, &target.spec.service_uid) {
                        events.offer_outage(outage, uid);
                    }
                    drop(log);
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

/// The next leadership value; `None` when the election has ended. Never resolves
/// without leader election.
async fn leadership_changed(leadership: &mut Option<watch::Receiver<bool>>) -> Option<bool> {
    match leadership {
        Some(receiver) => match receiver.changed().await {
            Ok(()) => Some(*receiver.borrow_and_update()),
            Err(_) => None,
        },
        None => std::future::pending().await,
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

#[cfg(test)]
mod props;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::correlate::incidents::IncidentLog;
    use crate::export::cardinality::CardinalityGuard;
    use prometheus_client::registry::Registry;
    use target::StaticTarget;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A local HTTP server answering every request `200 ok`.
    async fn serve_ok() -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = socket.read(&mut buf).await;
                    let _ = socket
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                        )
                        .await;
                });
            }
        });
        port
    }

    fn exposition(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).expect("encode");
        text
    }

    /// The value of `selfheal_probe_up` for the target `api`, if exported.
    fn up(text: &str) -> Option<&str> {
        text.lines()
            .find(|line| line.starts_with("selfheal_probe_up{target=\"api\""))
            .and_then(|line| line.rsplit(' ').next())
    }

    async fn wait_until(registry: &Registry, what: &str, done: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = exposition(registry);
            if done(&text) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn probes_only_while_leading_and_drops_its_series_when_not() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let port = serve_ok().await;
        let spec = toml::from_str::<StaticTarget>(&format!(
            "name = \"api\"\nurl = \"http://127.0.0.1:{port}/\"\ninterval = \"100ms\"\n"
        ))
        .expect("target")
        .compile()
        .expect("valid");
        let mut registry = Registry::with_prefix("selfheal");
        let guard = CardinalityGuard::register(&mut registry, 1000);
        let metrics = ProbeMetrics::register(&mut registry, &guard);
        let incidents = IncidentLog::new(10, Duration::from_secs(2)).shared();
        let (lead, leadership) = watch::channel(false);
        let prober = Prober::new(
            vec![spec],
            metrics,
            incidents,
            Duration::from_secs(3600),
            Sharding::default(),
        )
        .expect("prober")
        .with_leadership(leadership);
        let (_changes_tx, changes) = mpsc::channel(1);
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(prober.run(changes, stopped));
        let probed = |text: &str| text.contains("selfheal_probe_requests_total{target=\"api\"");

        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(!probed(&exposition(&registry)), "a standby probes nothing");

        lead.send_replace(true);
        wait_until(&registry, "probes as the leader", |text| {
            up(text) == Some("1")
        })
        .await;

        lead.send_replace(false);
        wait_until(&registry, "series gone with the leadership", |text| {
            !probed(text) && up(text).is_none()
        })
        .await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(
            !probed(&exposition(&registry)),
            "results still in flight do not bring the series back"
        );

        // Leading again: fresh series, from zero.
        lead.send_replace(true);
        wait_until(&registry, "probes again", |text| up(text) == Some("1")).await;
        let _ = stop.send(true);
        task.await.expect("prober ends");
    }
}
