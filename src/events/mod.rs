//! Kubernetes Events for what the daemon knows and Kubernetes does not record: one
//! events.k8s.io/v1 Event per classified restart, regarding the Pod, and one per probe
//! outage of a discovered target, regarding its Service and naming the restart behind it
//! (`[events]`, off by default). Kubernetes writes no Event for an OOM kill
//! (kubernetes/kubernetes#69676), so without this `kubectl describe pod` shows nothing of
//! it.
//!
//! The watch loop hands every incident update, the prober every ended outage, to an
//! [`EventSink`] without waiting (a full queue drops it and counts it); the
//! [`writer::EventWriter`] task, started with the exporting pipelines (so only the
//! leader, or each shard for its own pods, writes), turns them into writes with the pure
//! [`planner::EventPlanner`] (series aggregation, per-object rate limit, the notes) and
//! does the API calls. A failed write is counted and logged; it never holds up counting.

pub mod config;
pub mod planner;
pub mod writer;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;

use std::sync::Arc;

use crate::correlate::incidents::OutageIncident;
use crate::observe::IncidentUpdate;

/// Inputs waiting for the writer; more are dropped (and counted).
pub const QUEUE_CAPACITY: usize = 1024;

/// What the writer is told.
#[derive(Clone, Debug)]
pub enum EventInput {
    /// From the watch loop: a death, its attribution, its recovery.
    Incident(IncidentUpdate),
    /// From the prober: an ended outage of a target on the Service `service_uid`.
    Outage {
        outage: Box<OutageIncident>,
        service_uid: Arc<str>,
    },
}

/// The Event writer's counters.
#[derive(Clone, Debug, Default)]
pub struct EventMetrics {
    pub written: Counter,
    pub write_errors: Counter,
    pub dropped: Counter,
    pub rate_limited: Counter,
}

impl EventMetrics {
    /// `selfheal_events_written_total`, `selfheal_event_write_errors_total`,
    /// `selfheal_events_dropped_total`, `selfheal_events_rate_limited_total`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = EventMetrics::default();
        registry.register(
            "events_written",
            "Kubernetes Events created or updated (events.k8s.io/v1, one per restart or outage \
             series)",
            metrics.written.clone(),
        );
        registry.register(
            "event_write_errors",
            "Kubernetes Event creates or updates that failed (not retried; counting goes on)",
            metrics.write_errors.clone(),
        );
        registry.register(
            "events_dropped",
            "Incident updates and outages not turned into Events because the writer's queue \
             was full",
            metrics.dropped.clone(),
        );
        registry.register(
            "events_rate_limited",
            "Event writes deferred by the per-object rate limit (the next allowed write \
             carries the newest count)",
            metrics.rate_limited.clone(),
        );
        metrics
    }
}

/// The watch loop's and the prober's end of the writer's queue.
#[derive(Clone, Debug)]
pub struct EventSink {
    sender: mpsc::Sender<EventInput>,
    dropped: Counter,
}

impl EventSink {
    /// A queue of `capacity` updates; the receiver is the writer's.
    pub fn channel(
        capacity: usize,
        metrics: &EventMetrics,
    ) -> (EventSink, mpsc::Receiver<EventInput>) {
        let (sender, receiver) = mpsc::channel(capacity.max(1));
        (
            EventSink {
                sender,
                dropped: metrics.dropped.clone(),
            },
            receiver,
        )
    }

    /// Queues the update for the writer without waiting; drops it (counted) when full.
    pub fn offer(&self, update: &IncidentUpdate) {
        self.send(EventInput::Incident(update.clone()));
    }

    /// Queues an ended outage of a target on the Service `service_uid`, likewise.
    pub fn offer_outage(&self, outage: &OutageIncident, service_uid: &Arc<str>) {
        self.send(EventInput::Outage {
            outage: Box::new(outage.clone()),
            service_uid: service_uid.clone(),
        });
    }

    fn send(&self, input: EventInput) {
        if self.sender.try_send(input).is_err() {
            self.dropped.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::DeathId;

    #[test]
    fn a_full_queue_drops_and_counts() {
        let metrics = EventMetrics::default();
        let (sink, mut receiver) = EventSink::channel(2, &metrics);
        let update = IncidentUpdate::Attributed {
            id: DeathId {
                pod_uid: "uid".into(),
                container: "api".into(),
                key: 1,
            },
            cause: crate::observe::Cause::OOMKilled,
        };
        for _ in 0..5 {
            sink.offer(&update);
        }
        assert_eq!(metrics.dropped.get(), 3);
        assert!(matches!(receiver.try_recv(), Ok(EventInput::Incident(_))));
        assert!(matches!(receiver.try_recv(), Ok(EventInput::Incident(_))));
        assert!(receiver.try_recv().is_err());
    }
}
