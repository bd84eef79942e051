//! Per-workload availability and lifetime.
//!
//! A workload is unavailable while it has pods but none of them is ready, once it has
//! been ready at least once (a workload that never came up is not "down", it is not
//! deployed yet). A workload with no pods at all (scaled to zero, or deleted) is not
//! counted as unavailable: without watching its controller the daemon cannot tell a
//! deliberate scale-down from an outage. When its last pod is gone, its series are kept
//! for the retention period, so a replacement pod continues the same counters.

use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};

use super::{Anomaly, Observation};
use crate::k8s::workload::Workload;

#[derive(Debug, Default)]
struct WorkloadState {
    pods: u32,
    ready_pods: u32,
    ever_ready: bool,
    /// While unavailable: up to when the downtime has been exported.
    unavailable_accounted_until: Option<Timestamp>,
    /// When the last pod disappeared.
    emptied_at: Option<Timestamp>,
}

#[derive(Debug, Default)]
pub struct WorkloadBook {
    workloads: foldhash::HashMap<Arc<Workload>, WorkloadState>,
}

impl WorkloadBook {
    /// The shared handle for `workload`, so that all its pods refer to one allocation.
    pub fn intern(&mut self, workload: Workload) -> Arc<Workload> {
        match self.workloads.get_key_value(&workload) {
            Some((interned, _)) => interned.clone(),
            None => {
                let interned = Arc::new(workload);
                self.workloads
                    .insert(interned.clone(), WorkloadState::default());
                interned
            }
        }
    }

    /// Records a change in the pods of `workload`: `pods_delta` pods appeared (or
    /// disappeared, when negative) and `ready_delta` became ready (or unready).
    pub fn change(
        &mut self,
        workload: &Arc<Workload>,
        pods_delta: i32,
        ready_delta: i32,
        now: Timestamp,
        out: &mut Vec<Observation>,
    ) {
        let state = self.workloads.entry(workload.clone()).or_default();
        state.pods = state.pods.saturating_add_signed(pods_delta);
        state.ready_pods = state.ready_pods.saturating_add_signed(ready_delta);
        let available = state.ready_pods > 0;
        if available {
            state.ever_ready = true;
        }
        let unavailable = !available && state.ever_ready && state.pods > 0;
        match (unavailable, state.unavailable_accounted_until) {
            (true, None) => state.unavailable_accounted_until = Some(now),
            (false, Some(since)) => {
                state.unavailable_accounted_until = None;
                export_downtime(workload, since, now, out);
            }
            _ => {}
        }
        state.emptied_at = (state.pods == 0).then_some(now);
    }

    /// Exports ongoing downtime and forgets workloads whose retention has passed.
    pub fn tick(&mut self, now: Timestamp, retention: SignedDuration, out: &mut Vec<Observation>) {
        self.workloads.retain(|workload, state| {
            if let Some(since) = state.unavailable_accounted_until.as_mut() {
                export_downtime(workload, *since, now, out);
                *since = now.max(*since);
            }
            let expired = state
                .emptied_at
                .is_some_and(|emptied| now.duration_since(emptied) >= retention);
            if expired {
                out.push(Observation::WorkloadExpired {
                    workload: workload.clone(),
                });
            }
            !expired
        });
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.workloads.len()
    }
}

fn export_downtime(
    workload: &Arc<Workload>,
    since: Timestamp,
    now: Timestamp,
    out: &mut Vec<Observation>,
) {
    let seconds = now.duration_since(since).as_secs_f64();
    if seconds < 0.0 {
        // Our own clock stepped back; the downtime in between is unknowable.
        out.push(Observation::Anomaly(Anomaly::ClockSkew));
        return;
    }
    if seconds > 0.0 {
        out.push(Observation::Unavailable {
            workload: workload.clone(),
            seconds,
        });
    }
}
