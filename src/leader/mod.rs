//! Leader election, active/passive: of several replicas, only the holder of a Kubernetes
//! Lease (coordination.k8s.io/v1) exports; the others stand by without watching or
//! probing (see the daemon). When the holder dies another replica takes over within the
//! lease duration, and when it stops it releases the Lease so that another takes over at
//! once. A holder that loses the Lease while it runs leaves the election for good: the
//! daemon then stops and exits non-zero, and Kubernetes restarts it as a fresh standby
//! (as controller-runtime's leader election does).
//!
//! The Lease itself is handled by kube-lease-manager: it locks a free Lease with a
//! server-side apply (two replicas racing for it get a 409 conflict for all but one),
//! renews it `grace` before it would expire, and frees an expired one. Around it, this
//! module
//! - publishes leadership as a `watch::Receiver<bool>` that turns true only while this
//!   replica's hold on the Lease is confirmed: a holder that cannot renew (API server
//!   unreachable, requests hanging) stops leading half of `grace` before the Lease
//!   expires, by its own clock, so two replicas never lead at once unless the clocks of
//!   their nodes are more than `grace / 2` apart;
//! - reads the Lease every `retry_period` (one GET): the holder sees its renewals there,
//!   and that another replica took the Lease; a standby sees a released Lease and takes it
//!   at once instead of sleeping until the old holder's term would have ended
//!   (kube-lease-manager alone would);
//! - after leading, on losing the Lease (not renewed in time, or held by another replica)
//!   publishes false and ends: it never competes again, so a replica that lost the Lease
//!   cannot take it back while it is shutting down;
//! - retries every failed Lease request with backoff (`retry_period`, doubling up to
//!   `lease_duration`; the holder keeps retrying every `retry_period`), counts it in
//!   `selfheal_lease_errors_total`, and never panics;
//! - on shutdown stops publishing leadership first, then releases the Lease if it holds
//!   it (bounded by [`RELEASE_TIMEOUT`], inside the daemon's shutdown budget).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseManagerError, LeaseParams};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use thiserror::Error;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub mod config;
mod state;

use config::LeaderElectionConfig;
use state::{Hold, Loss, State, Transition};

/// A failed request for the Lease; each is counted and retried.
#[derive(Debug, Error)]
pub enum LeaseError {
    #[error("grace must be at least 1 s and below the lease duration")]
    Timing,
    #[error("{0}")]
    Manager(#[from] LeaseManagerError),
    #[error("{0}")]
    Api(#[from] kube::Error),
    #[error("no answer in time")]
    Timeout,
}

/// How long shutdown waits for the Lease to be released.
pub const RELEASE_TIMEOUT: Duration = Duration::from_secs(2);

/// The resolved `[leader_election]` settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderSettings {
    pub lease_name: String,
    pub namespace: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub grace: Duration,
    pub retry_period: Duration,
}

impl LeaderSettings {
    /// The settings of an enabled, resolved configuration (see `Settings::load`); `None`
    /// when leader election is off.
    pub fn from_config(config: &LeaderElectionConfig) -> Option<LeaderSettings> {
        if !config.enabled {
            return None;
        }
        Some(LeaderSettings {
            lease_name: config.lease_name.clone(),
            namespace: config.namespace.clone()?,
            identity: config.identity.clone()?,
            lease_duration: config.lease_duration,
            grace: config.grace,
            retry_period: config.retry_period,
        })
    }

    /// kube-lease-manager's parameters (whole seconds; it panics on grace >= duration,
    /// which configuration validation rules out, and which is checked again here).
    fn lease_params(&self) -> Option<LeaseParams> {
        let duration = self.lease_duration.as_secs();
        let grace = self.grace.as_secs();
        (grace >= 1 && grace < duration)
            .then(|| LeaseParams::new(self.identity.clone(), duration, grace))
    }

    /// Bound on one Lease request.
    fn request_timeout(&self) -> Duration {
        self.retry_period.max(Duration::from_secs(2))
    }

    /// Until when a Lease renewed at `renewed` (lasting `duration`) is safely ours: half of
    /// `grace` before it expires.
    fn safe_until(&self, renewed: Timestamp, duration: Duration) -> Instant {
        let margin = self.grace / 2;
        let left = duration.saturating_sub(margin);
        let until = renewed
            .checked_add(SignedDuration::try_from(left).unwrap_or(SignedDuration::ZERO))
            .unwrap_or(renewed);
        let remaining = until.duration_since(Timestamp::now());
        let now = Instant::now();
        match Duration::try_from(remaining) {
            Ok(remaining) => now + remaining,
            Err(_) => now, // in the past
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransitionLabels {
    transition: &'static str,
}

/// `selfheal_leader`, `selfheal_leader_transitions_total{transition}` and
/// `selfheal_lease_errors_total`, registered only when leader election is on. For one
/// release they are exported under their old names too (`selfheal_prober_leader`,
/// `selfheal_prober_leader_transitions_total`, `selfheal_prober_lease_errors_total`):
/// the same values, so dashboards and alerts can move at their pace.
#[derive(Clone, Default)]
pub struct LeaderMetrics {
    leader: Gauge,
    transitions: Family<TransitionLabels, Counter>,
    errors: Counter,
}

impl LeaderMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = LeaderMetrics::default();
        for (prefix, note) in [
            ("", ""),
            ("prober_", " (deprecated name of selfheal_leader*)"),
        ] {
            registry.register(
                format!("{prefix}leader"),
                format!(
                    "1 while this replica holds the Lease and exports (watches and probes), \
                     else 0 (a standby){note}"
                ),
                metrics.leader.clone(),
            );
            registry.register(
                format!("{prefix}leader_transitions"),
                format!(
                    "Changes of this replica's leadership: acquired, lost (taken over, or not \
                     renewed in time; the replica then exits), released (at shutdown){note}"
                ),
                metrics.transitions.clone(),
            );
            registry.register(
                format!("{prefix}lease_errors"),
                format!("Failed requests for the Lease; each is retried with backoff{note}"),
                metrics.errors.clone(),
            );
        }
        // Every transition is a series from the start, so increase() sees the first one.
        for transition in Transition::LABELS {
            let _ = metrics
                .transitions
                .get_or_create(&TransitionLabels { transition });
        }
        metrics
    }

    fn transition(&self, transition: Transition) {
        self.transitions
            .get_or_create(&TransitionLabels {
                transition: transition.as_str(),
            })
            .inc();
    }
}

/// Starts competing for the Lease. The receiver is true while this replica leads (should
/// export). The task ends after `shutdown` turns true and the Lease is released, or, with
/// the receiver's last value false, when this replica loses the Lease after leading (it
/// does not compete again: see the module docs).
pub fn start(
    client: Client,
    settings: LeaderSettings,
    metrics: LeaderMetrics,
    shutdown: watch::Receiver<bool>,
) -> (watch::Receiver<bool>, JoinHandle<()>) {
    let (publish, leadership) = watch::channel(false);
    let api = Api::namespaced(client.clone(), &settings.namespace);
    let elector = Elector {
        client,
        api,
        settings,
        metrics,
        publish,
        manager: None,
        changed: None,
        changed_since: Instant::now(),
        holder: false,
        safe_until: None,
        retry_at: None,
        failures: 0,
        state: State::Standby,
    };
    (leadership, tokio::spawn(elector.run(shutdown)))
}

type Changed = Pin<Box<dyn Future<Output = Result<bool, LeaseManagerError>> + Send>>;

struct Elector {
    client: Client,
    api: Api<Lease>,
    settings: LeaderSettings,
    metrics: LeaderMetrics,
    publish: watch::Sender<bool>,
    manager: Option<Arc<LeaseManager>>,
    /// kube-lease-manager's `changed()` in flight: it returns when the manager's view of
    /// who holds the Lease changes, and keeps renewing it meanwhile while we hold it.
    changed: Option<Changed>,
    /// When the `changed()` in flight started.
    changed_since: Instant,
    /// The manager says we hold the Lease.
    holder: bool,
    /// Until when our hold on the Lease is confirmed (from its renewTime).
    safe_until: Option<Instant>,
    /// No manager work before this (backoff after an error).
    retry_at: Option<Instant>,
    /// Consecutive failures, for the backoff.
    failures: u32,
    /// Standby, leading, or left the election for good (see [`state`]).
    state: State,
}

enum Wake {
    Shutdown,
    Changed(Result<bool, LeaseManagerError>),
    Retry,
    Poll,
    Deadline,
}

impl Elector {
    async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        tracing::info!(
            lease = %format!("{}/{}", self.settings.namespace, self.settings.lease_name),
            identity = %self.settings.identity,
            lease_duration = ?self.settings.lease_duration,
            "competing for the Lease: only its holder exports"
        );
        let mut poll = tokio::time::interval(self.settings.retry_period);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if *shutdown.borrow() {
                break;
            }
            let ready = self.retry_at.is_none_or(|at| at <= Instant::now());
            if ready && self.changed.is_none() {
                self.retry_at = None;
                let manager = match &self.manager {
                    Some(manager) => manager.clone(),
                    None => {
                        let built = tokio::select! {
                            _ = shutdown.wait_for(|stop| *stop) => break,
                            built = build(self.client.clone(), self.settings.clone()) => built,
                        };
                        match built {
                            Ok(manager) => {
                                let manager = Arc::new(manager);
                                self.manager = Some(manager.clone());
                                manager
                            }
                            Err(error) => {
                                self.failed("cannot read or create the Lease", &error);
                                continue;
                            }
                        }
                    }
                };
                self.changed = Some(Box::pin(async move { manager.changed().await }));
                self.changed_since = Instant::now();
            }
            let retry_at = self.retry_at;
            let deadline = self.safe_until.filter(|_| self.state == State::Leading);
            let changed = &mut self.changed;
            let wake = tokio::select! {
                biased;
                _ = shutdown.wait_for(|stop| *stop) => Wake::Shutdown,
                result = async { changed.as_mut().expect("guarded").await }, if changed.is_some() => {
                    Wake::Changed(result)
                }
                _ = sleep_until(deadline), if deadline.is_some() => Wake::Deadline,
                _ = sleep_until(retry_at), if retry_at.is_some() => Wake::Retry,
                _ = poll.tick() => Wake::Poll,
            };
            match wake {
                Wake::Shutdown => break,
                Wake::Changed(result) => {
                    self.changed = None;
                    self.on_changed(result).await;
                }
                Wake::Retry => {}
                Wake::Poll => self.observe().await,
                Wake::Deadline => {}
            }
            self.update_leadership();
            if self.state == State::Left {
                break;
            }
        }
        self.release().await;
    }

    fn request_timeout(&self) -> Duration {
        self.settings.request_timeout()
    }

    async fn on_changed(&mut self, result: Result<bool, LeaseManagerError>) {
        match result {
            Ok(holder) => {
                self.failures = 0;
                self.holder = holder;
                if holder {
                    // Whether the Lease is really ours, and until when.
                    self.observe().await;
                } else {
                    self.safe_until = None;
                }
            }
            Err(error) => {
                // Start over with a fresh manager: its first look at the Lease tells
                // whether we still hold it.
                self.manager = None;
                self.failed("Lease request failed", &LeaseError::from(error));
            }
        }
    }

    /// Reads the Lease: confirms our renewals, notices that another replica holds it, or
    /// that it is free (released) so that a standby takes it at once.
    async fn observe(&mut self) {
        let lease = match tokio::time::timeout(
            self.request_timeout(),
            self.api.get_opt(&self.settings.lease_name),
        )
        .await
        {
            Ok(Ok(lease)) => lease,
            Ok(Err(error)) => {
                self.count_error("cannot read the Lease", &LeaseError::from(error));
                return;
            }
            Err(_) => {
                self.count_error("cannot read the Lease", &LeaseError::Timeout);
                return;
            }
        };
        let spec = lease.and_then(|lease| lease.spec).unwrap_or_default();
        let holder = spec.holder_identity.filter(|h| !h.is_empty());
        match holder {
            Some(holder) if holder == self.settings.identity => {
                if let Some(renewed) = spec.renew_time {
                    let duration = spec
                        .lease_duration_seconds
                        .and_then(|s| u64::try_from(s).ok())
                        .map(Duration::from_secs)
                        .unwrap_or(self.settings.lease_duration);
                    self.safe_until = Some(self.settings.safe_until(renewed.0, duration));
                }
            }
            Some(other) => {
                self.safe_until = None;
                if self.holder {
                    tracing::warn!(holder = %other, "another replica holds the Lease now");
                    self.holder = false;
                    self.restart_manager();
                }
            }
            None => {
                self.safe_until = None;
                if self.holder {
                    self.holder = false;
                    self.restart_manager();
                } else if self.changed.is_some()
                    && self.changed_since.elapsed() >= self.settings.retry_period
                {
                    // Released (or never held): try to take it now rather than when the
                    // manager next wakes up (it sleeps until the old holder's term ends).
                    tracing::debug!("the Lease is free: trying to take it");
                    self.restart_manager();
                }
            }
        }
    }

    fn restart_manager(&mut self) {
        self.changed = None;
        self.manager = None;
    }

    fn failed(&mut self, what: &str, error: &LeaseError) {
        self.count_error(what, error);
        self.changed = None;
        self.failures = self.failures.saturating_add(1);
        let delay = state::retry_delay(
            self.holder,
            self.failures,
            self.settings.retry_period,
            self.settings.lease_duration,
        );
        self.retry_at = Some(Instant::now() + delay);
    }

    fn count_error(&self, what: &str, error: &LeaseError) {
        self.metrics.errors.inc();
        tracing::warn!(
            lease = %format!("{}/{}", self.settings.namespace, self.settings.lease_name),
            "{what}: {error}; retrying"
        );
    }

    /// Leader while the manager says we hold the Lease and our hold is confirmed (see
    /// [`state::next`]). Losing it after leading ends the election.
    fn update_leadership(&mut self) {
        let hold = Hold {
            holder: self.holder,
            confirmed: self.safe_until.is_some_and(|until| until > Instant::now()),
        };
        let (state, transition) = state::next(self.state, hold);
        self.state = state;
        let Some(transition) = transition else {
            return;
        };
        let leading = state == State::Leading;
        self.publish.send_replace(leading);
        self.metrics.leader.set(i64::from(leading));
        self.metrics.transition(transition);
        match transition {
            Transition::Acquired => {
                tracing::info!(identity = %self.settings.identity, "holding the Lease: leading");
            }
            Transition::Lost(Loss::NotRenewed) => tracing::warn!(
                "the Lease could not be renewed in time: no longer leading, leaving the election"
            ),
            Transition::Lost(Loss::NotHolder) => {
                tracing::warn!(
                    "no longer holding the Lease: no longer leading, leaving the election"
                );
            }
            Transition::Released => {}
        }
        if let Transition::Lost(_) = transition {
            // Whether the Lease is still ours in the API server or not, it is not ours to
            // release: its renewal was not confirmed, or another replica holds it.
            self.holder = false;
            self.restart_manager();
        }
    }

    /// Shutdown: stop leading, then free the Lease for another replica (if it holds it).
    async fn release(mut self) {
        let was_leader = self.state == State::Leading;
        self.publish.send_replace(false);
        self.metrics.leader.set(0);
        self.changed = None;
        if !(was_leader || self.holder) {
            return;
        }
        let release = async {
            let manager = match self.manager.take() {
                Some(manager) => manager,
                None => Arc::new(build(self.client.clone(), self.settings.clone()).await?),
            };
            manager.release().await.map_err(LeaseError::from)
        };
        match tokio::time::timeout(RELEASE_TIMEOUT, release).await {
            Ok(Ok(())) => {
                if was_leader {
                    self.metrics.transition(Transition::Released);
                }
                tracing::info!("released the Lease");
            }
            Ok(Err(error)) => self.count_error("cannot release the Lease", &error),
            Err(_) => self.count_error("cannot release the Lease", &LeaseError::Timeout),
        }
    }
}

/// A lease manager for the Lease (created if absent: one GET, maybe a POST).
async fn build(client: Client, settings: LeaderSettings) -> Result<LeaseManager, LeaseError> {
    let params = settings.lease_params().ok_or(LeaseError::Timing)?;
    let build = LeaseManagerBuilder::new(client, &settings.lease_name)
        .with_namespace(&settings.namespace)
        .with_parameters(params)
        .build();
    match tokio::time::timeout(settings.request_timeout(), build).await {
        Ok(Ok(manager)) => Ok(manager),
        Ok(Err(error)) => Err(error.into()),
        Err(_) => Err(LeaseError::Timeout),
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> LeaderSettings {
        LeaderSettings {
            lease_name: "l".into(),
            namespace: "ns".into(),
            identity: "me".into(),
            lease_duration: Duration::from_secs(15),
            grace: Duration::from_secs(5),
            retry_period: Duration::from_secs(1),
        }
    }

    #[test]
    fn a_hold_is_safe_until_half_of_grace_before_the_lease_expires() {
        let settings = settings();
        let now = Timestamp::now();
        let until = settings.safe_until(now, Duration::from_secs(15));
        let left = until.duration_since(Instant::now());
        assert!(
            left > Duration::from_millis(12_000) && left <= Duration::from_millis(12_500),
            "{left:?}"
        );
        let expired =
            settings.safe_until(now - SignedDuration::from_secs(20), Duration::from_secs(15));
        assert!(expired <= Instant::now());
    }

    #[test]
    fn settings_come_from_an_enabled_resolved_config_only() {
        let mut config = LeaderElectionConfig::default();
        assert_eq!(LeaderSettings::from_config(&config), None);
        config.enabled = true;
        assert_eq!(LeaderSettings::from_config(&config), None, "unresolved");
        config.namespace = Some("ns".into());
        config.identity = Some("me".into());
        let settings = LeaderSettings::from_config(&config).expect("settings");
        assert_eq!(settings.lease_name, "selfheal-exporter-prober");
        assert!(settings.lease_params().is_some());
        let bad = LeaderSettings {
            grace: Duration::from_secs(15),
            ..settings
        };
        assert!(
            bad.lease_params().is_none(),
            "never a panic in LeaseParams::new"
        );
    }

    #[test]
    fn metrics_start_at_zero_under_the_new_and_the_deprecated_names() {
        let mut registry = Registry::with_prefix("selfheal");
        let metrics = LeaderMetrics::register(&mut registry);
        metrics.transition(Transition::Acquired);
        metrics.leader.set(1);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        for prefix in ["selfheal_", "selfheal_prober_"] {
            assert!(text.contains(&format!("\n{prefix}leader 1\n")), "{text}");
            for (transition, count) in [("acquired", 1), ("lost", 0), ("released", 0)] {
                let line = format!(
                    "{prefix}leader_transitions_total{{transition=\"{transition}\"}} {count}"
                );
                assert!(text.contains(&line), "{line}: {text}");
            }
            assert!(
                text.contains(&format!("{prefix}lease_errors_total 0")),
                "{text}"
            );
        }
    }
}
