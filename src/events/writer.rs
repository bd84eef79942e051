//! The Event writer task: incident updates and outages from the queue through the
//! [`EventPlanner`], then one API call per intent: a create for a new Event, a merge
//! patch of its `series` for the next occurrence (falling back to the other call when
//! the Event turns out to exist already, or to be gone: expired by the API server's event
//! TTL, or deleted). Nothing else of an events.k8s.io/v1 Event may change: the real API
//! server answers 422 "field is immutable" to a changed note.
//!
//! kube-rs's `runtime::events::Recorder` was not used: it creates the Event at once
//! (ours waits for the time to recover, which its note carries), reads the clock itself,
//! and has no rate limit.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, Error};
use tokio::sync::{mpsc, watch};

use super::planner::{EventIntent, EventPlanner};
use super::{EventInput, EventMetrics};

/// The Events' `reportingController`.
pub const REPORTING_CONTROLLER: &str = "selfheal-exporter";

/// One API call may take this long; the shutdown budget is 4.5 s.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// Field manager of the patches.
const FIELD_MANAGER: &str = "selfheal-exporter";

/// The writer task's state.
pub struct EventWriter {
    pub client: Client,
    pub planner: EventPlanner,
    pub metrics: EventMetrics,
    pub inputs: mpsc::Receiver<EventInput>,
    /// The Events' `reportingInstance`: this replica.
    pub instance: String,
}

impl EventWriter {
    /// This replica's name for `reportingInstance`: the environment variable POD_NAME,
    /// else HOSTNAME, else the controller's name (at most 128 characters, the API's limit).
    pub fn instance_from_env() -> String {
        let name = std::env::var("POD_NAME")
            .or_else(|_| std::env::var("HOSTNAME"))
            .ok()
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| REPORTING_CONTROLLER.to_owned());
        name.chars().take(128).collect()
    }

    /// Runs until `stopped` turns true (or the queue's sending end is gone).
    pub async fn run(mut self, mut stopped: watch::Receiver<bool>) {
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut out = Vec::new();
        loop {
            tokio::select! {
                biased;
                _ = stopped.wait_for(|stop| *stop) => break,
                input = self.inputs.recv() => match input {
                    Some(EventInput::Incident(update)) => {
                        self.planner.apply(&update, Timestamp::now(), &mut out);
                    }
                    Some(EventInput::Outage { outage, service_uid }) => {
                        self.planner.outage(&outage, &service_uid, Timestamp::now(), &mut out);
                    }
                    None => break,
                },
                _ = ticker.tick() => self.planner.tick(Timestamp::now(), &mut out),
            }
            self.metrics
                .rate_limited
                .inc_by(self.planner.take_deferred());
            for intent in out.drain(..) {
                match tokio::time::timeout(CALL_TIMEOUT, self.write(&intent)).await {
                    Ok(Ok(())) => {
                        self.metrics.written.inc();
                    }
                    Ok(Err(error)) => {
                        self.metrics.write_errors.inc();
                        tracing::warn!(
                            event = %intent.name,
                            namespace = %intent.regarding.namespace,
                            kind = intent.regarding.kind,
                            regarding = %intent.regarding.name,
                            reason = intent.reason,
                            "cannot write the Kubernetes Event: {error}"
                        );
                    }
                    Err(_) => {
                        self.metrics.write_errors.inc();
                        tracing::warn!(
                            event = %intent.name,
                            namespace = %intent.regarding.namespace,
                            "cannot write the Kubernetes Event: no answer in 3 s"
                        );
                    }
                }
            }
        }
        tracing::debug!("Event writer stopped");
    }

    async fn write(&self, intent: &EventIntent) -> Result<(), Error> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), &intent.regarding.namespace);
        if intent.create {
            match events
                .create(&PostParams::default(), &self.event(intent))
                .await
            {
                Err(error) if status(&error) == Some(409) => self.patch(&events, intent).await,
                result => result.map(drop),
            }
        } else {
            match self.patch(&events, intent).await {
                Err(error) if status(&error) == Some(404) => events
                    .create(&PostParams::default(), &self.event(intent))
                    .await
                    .map(drop),
                result => result,
            }
        }
    }

    /// The next occurrence of an existing Event: its `series` only.
    async fn patch(&self, events: &Api<Event>, intent: &EventIntent) -> Result<(), Error> {
        let Some(series) = series(intent) else {
            return Ok(()); // a first occurrence that exists already: nothing to add
        };
        let patch = serde_json::json!({
            "series": serde_json::to_value(series).map_err(Error::SerdeError)?,
        });
        events
            .patch(
                &intent.name,
                &PatchParams {
                    field_manager: Some(FIELD_MANAGER.to_owned()),
                    ..PatchParams::default()
                },
                &Patch::Merge(&patch),
            )
            .await
            .map(drop)
    }

    fn event(&self, intent: &EventIntent) -> Event {
        Event {
            metadata: ObjectMeta {
                name: Some(intent.name.clone()),
                namespace: Some(intent.regarding.namespace.to_string()),
                ..ObjectMeta::default()
            },
            action: Some(intent.action.to_owned()),
            reason: Some(intent.reason.to_owned()),
            note: Some(intent.note.clone()),
            type_: Some(intent.type_.as_str().to_owned()),
            event_time: Some(MicroTime(intent.first_seen)),
            series: series(intent),
            regarding: Some(ObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some(intent.regarding.kind.to_owned()),
                name: Some(intent.regarding.name.to_string()),
                namespace: Some(intent.regarding.namespace.to_string()),
                uid: Some(intent.regarding.uid.to_string()),
                ..ObjectReference::default()
            }),
            reporting_controller: Some(REPORTING_CONTROLLER.to_owned()),
            reporting_instance: Some(self.instance.clone()),
            ..Event::default()
        }
    }
}

/// The Event's `series`: only from the second occurrence on, as the API requires.
fn series(intent: &EventIntent) -> Option<EventSeries> {
    (intent.count > 1).then(|| EventSeries {
        count: i32::try_from(intent.count).unwrap_or(i32::MAX),
        last_observed_time: MicroTime(intent.last_seen),
    })
}

fn status(error: &Error) -> Option<u16> {
    match error {
        Error::Api(status) => Some(status.code),
        _ => None,
    }
}
