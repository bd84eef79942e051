//! The pure per-container state machine: given starts, exits, start failures, probe
//! results and the time, what the container status says and when the next instance
//! starts. No processes, no I/O, no clock of its own: unit-tested directly.
//!
//! Reporting follows the kubelet (shared/grade-submission-experiment.md):
//! - at a death: `state.terminated` of the dead instance, `restartCount` unchanged,
//!   `lastState` still the death before;
//! - restarted at once (first death, or back-off expired): `state.running`,
//!   `restartCount`+1, `lastState.terminated` = the death;
//! - in back-off: `state.waiting` `CrashLoopBackOff` (`back-off 10s restarting failed
//!   container=NAME pod=NAME_NS(UID)`), `lastState.terminated` = the death.

use std::time::{Duration, Instant};

use jiff::Timestamp;
use serde_json::{Value, json};

use super::backoff::{Backoff, BackoffConfig, go_duration};
use super::spec::RestartPolicy;

/// A point in time on both clocks: monotonic for timing, wall for status.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// Monotonic.
    pub mono: Instant,
    /// Wall clock.
    pub wall: Timestamp,
}

impl Now {
    /// The current time.
    pub fn current() -> Self {
        Now {
            mono: Instant::now(),
            wall: Timestamp::now(),
        }
    }

    /// `self` moved forward by `d` on both clocks (for tests).
    pub fn plus(self, d: Duration) -> Self {
        Now {
            mono: self.mono + d,
            wall: self.wall + d,
        }
    }
}

/// RFC 3339, UTC, whole seconds.
pub fn rfc3339(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A dead container instance.
#[derive(Debug, Clone, PartialEq)]
pub struct Termination {
    /// `OOMKilled`, `Error`, `Completed`, `StartError`.
    pub reason: String,
    /// Exit code (128+N when killed by signal N).
    pub exit_code: i32,
    /// Optional message.
    pub message: Option<String>,
    /// When the instance started.
    pub started_at: Timestamp,
    /// When it finished.
    pub finished_at: Timestamp,
    /// `containerd://…` of the instance.
    pub container_id: String,
}

impl Termination {
    fn to_json(&self) -> Value {
        let mut t = json!({
            "reason": self.reason,
            "exitCode": self.exit_code,
            "startedAt": rfc3339(self.started_at),
            "finishedAt": rfc3339(self.finished_at),
            "containerID": self.container_id,
        });
        if let Some(m) = &self.message {
            t["message"] = json!(m);
        }
        t
    }
}

/// `state` of a container status.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// Not running: reason (`ContainerCreating`, `CrashLoopBackOff`, `ErrImagePull`, …).
    Waiting {
        /// Reason.
        reason: String,
        /// Message.
        message: Option<String>,
    },
    /// Running since `started_at`.
    Running {
        /// Start time.
        started_at: Timestamp,
        /// Instance id.
        container_id: String,
    },
    /// Dead.
    Terminated(Termination),
}

/// What happens after a death.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// A new instance starts at once.
    Now,
    /// After this back-off (the container shows `CrashLoopBackOff` meanwhile).
    After(Duration),
    /// Never (restart policy).
    Never,
}

/// One container of a pod.
#[derive(Debug, Clone)]
pub struct ContainerMachine {
    name: String,
    pod: String,
    policy: RestartPolicy,
    cfg: BackoffConfig,
    backoff: Backoff,
    create_backoff: Backoff,
    has_readiness: bool,
    has_startup: bool,
    state: State,
    last: Option<Termination>,
    restart_count: u32,
    ready: bool,
    started: bool,
    ever_ran: bool,
    next_start: Option<Instant>,
    pending_death: Option<(Instant, Termination)>,
    backoff_delay: Option<Duration>,
}

impl ContainerMachine {
    /// A container about to be created. `pod` is `NAME_NS(UID)`.
    pub fn new(
        name: &str,
        pod: &str,
        policy: RestartPolicy,
        cfg: BackoffConfig,
        has_readiness: bool,
        has_startup: bool,
        now: Now,
    ) -> Self {
        ContainerMachine {
            name: name.into(),
            pod: pod.into(),
            policy,
            cfg,
            backoff: Backoff::default(),
            create_backoff: Backoff::default(),
            has_readiness,
            has_startup,
            state: State::Waiting {
                reason: "ContainerCreating".into(),
                message: None,
            },
            last: None,
            restart_count: 0,
            ready: false,
            started: false,
            ever_ran: false,
            next_start: Some(now.mono),
            pending_death: None,
            backoff_delay: None,
        }
    }

    /// Container name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Current state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// `lastState.terminated`.
    pub fn last(&self) -> Option<&Termination> {
        self.last.as_ref()
    }

    /// `restartCount`.
    pub fn restart_count(&self) -> u32 {
        self.restart_count
    }

    /// `ready`.
    pub fn ready(&self) -> bool {
        self.ready
    }

    /// `started`.
    pub fn started(&self) -> bool {
        self.started
    }

    /// Whether an instance is running.
    pub fn is_running(&self) -> bool {
        matches!(self.state, State::Running { .. })
    }

    /// When the next start is due (`None`: none planned).
    pub fn next_start(&self) -> Option<Instant> {
        self.next_start
    }

    /// Whether a start is due at `now`.
    pub fn start_due(&self, now: Now) -> bool {
        self.next_start.is_some_and(|t| t <= now.mono) && !self.is_running()
    }

    fn begin_instance(&mut self, now: Now) {
        if let Some((finished, death)) = self.pending_death.take() {
            self.backoff.on_restart(&self.cfg, finished, now.mono);
            self.last = Some(death);
        }
        if self.ever_ran {
            self.restart_count += 1;
        }
        self.ever_ran = true;
        self.next_start = None;
        self.backoff_delay = None;
        self.create_backoff = Backoff::default();
    }

    /// A new instance `container_id` started.
    pub fn on_started(&mut self, now: Now, container_id: &str) {
        self.begin_instance(now);
        self.state = State::Running {
            started_at: now.wall,
            container_id: container_id.into(),
        };
        self.started = !self.has_startup;
        self.ready = !self.has_readiness && self.started;
    }

    /// The running instance died (reason `OOMKilled`/`Error`/`Completed`, exit code).
    /// Returns `None` if nothing was running.
    pub fn on_exit(
        &mut self,
        now: Now,
        reason: &str,
        exit_code: i32,
        message: Option<String>,
    ) -> Option<Restart> {
        let State::Running {
            started_at,
            container_id,
        } = &self.state
        else {
            return None;
        };
        let t = Termination {
            reason: reason.into(),
            exit_code,
            message,
            started_at: *started_at,
            finished_at: now.wall,
            container_id: container_id.clone(),
        };
        Some(self.died(now, t))
    }

    /// An instance `container_id` was created but could not start (`StartError`, 128).
    pub fn on_start_error(&mut self, now: Now, container_id: &str, message: &str) -> Restart {
        self.begin_instance(now);
        let t = Termination {
            reason: "StartError".into(),
            exit_code: 128,
            message: Some(message.into()),
            started_at: now.wall,
            finished_at: now.wall,
            container_id: container_id.into(),
        };
        self.died(now, t)
    }

    fn died(&mut self, now: Now, t: Termination) -> Restart {
        self.ready = false;
        self.started = false;
        let restarts = self.policy.restarts(t.exit_code);
        self.state = State::Terminated(t.clone());
        self.pending_death = Some((now.mono, t));
        if !restarts {
            self.next_start = None;
            return Restart::Never;
        }
        let (at, delay) = self.backoff.restart_at(&self.cfg, now.mono);
        self.next_start = Some(at);
        self.backoff_delay = delay;
        match delay {
            Some(d) if at > now.mono => Restart::After(d),
            _ => Restart::Now,
        }
    }

    /// After the terminated state was reported: waits in `CrashLoopBackOff`. Returns the
    /// waiting message, or `None` if no back-off applies.
    pub fn enter_backoff(&mut self) -> Option<String> {
        let delay = self.backoff_delay?;
        if !matches!(self.state, State::Terminated(_)) {
            return None;
        }
        let message = format!(
            "back-off {} restarting failed container={} pod={}",
            go_duration(delay),
            self.name,
            self.pod
        );
        if let Some((_, death)) = &self.pending_death {
            self.last = Some(death.clone());
        }
        self.state = State::Waiting {
            reason: "CrashLoopBackOff".into(),
            message: Some(message.clone()),
        };
        Some(message)
    }

    /// The container could not be created (`ErrImagePull`, `CreateContainerConfigError`,
    /// `CreateContainerError`); shows `reason`, retried with back-off. Returns the delay.
    pub fn on_create_failed(&mut self, now: Now, reason: &str, message: &str) -> Duration {
        self.create_backoff
            .on_restart(&self.cfg, now.mono, now.mono);
        let (at, delay) = self.create_backoff.restart_at(&self.cfg, now.mono);
        self.next_start = Some(at);
        if let Some((_, death)) = &self.pending_death {
            self.last = Some(death.clone());
        }
        self.state = State::Waiting {
            reason: reason.into(),
            message: Some(message.into()),
        };
        delay.unwrap_or(self.cfg.base)
    }

    /// After `ErrImagePull` was reported: `ImagePullBackOff` with `message`.
    pub fn enter_image_backoff(&mut self, message: &str) {
        if matches!(&self.state, State::Waiting { reason, .. } if reason == "ErrImagePull") {
            self.state = State::Waiting {
                reason: "ImagePullBackOff".into(),
                message: Some(message.into()),
            };
        }
    }

    /// The readiness result in force changed.
    pub fn set_ready(&mut self, ready: bool) {
        self.ready = ready && self.is_running() && self.started;
    }

    /// The startup probe succeeded.
    pub fn set_started(&mut self) {
        if self.is_running() {
            self.started = true;
            if !self.has_readiness {
                self.ready = true;
            }
        }
    }

    /// The `containerStatuses[]` entry.
    pub fn status_json(&self, image: &str, image_id: &str) -> Value {
        let state = match &self.state {
            State::Waiting { reason, message } => {
                let mut w = json!({"reason": reason});
                if let Some(m) = message {
                    w["message"] = json!(m);
                }
                json!({"waiting": w})
            }
            State::Running { started_at, .. } => {
                json!({"running": {"startedAt": rfc3339(*started_at)}})
            }
            State::Terminated(t) => json!({"terminated": t.to_json()}),
        };
        let last = match &self.last {
            Some(t) => json!({"terminated": t.to_json()}),
            None => json!({}),
        };
        let container_id = match &self.state {
            State::Running { container_id, .. } => Some(container_id.clone()),
            State::Terminated(t) => Some(t.container_id.clone()),
            State::Waiting { .. } => self.last.as_ref().map(|t| t.container_id.clone()),
        };
        let mut s = json!({
            "name": self.name,
            "image": image,
            "imageID": if self.ever_ran { image_id } else { "" },
            "ready": self.ready,
            "started": self.started,
            "restartCount": self.restart_count,
            "state": state,
            "lastState": last,
        });
        if let Some(id) = container_id {
            s["containerID"] = json!(id);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BackoffConfig {
        BackoffConfig {
            base: Duration::from_secs(10),
            cap: Duration::from_secs(300),
            reset: Duration::from_secs(600),
        }
    }

    fn machine(policy: RestartPolicy, readiness: bool, t0: Now) -> ContainerMachine {
        ContainerMachine::new("api", "p_ns(u)", policy, cfg(), readiness, false, t0)
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn death_restart_sequence_as_the_kubelet_reports_it() {
        let t0 = Now::current();
        let mut m = machine(RestartPolicy::Always, false, t0);
        assert!(m.start_due(t0));
        assert_eq!(
            m.status_json("i", "x")["state"]["waiting"]["reason"],
            "ContainerCreating"
        );
        m.on_started(t0, "containerd://a");
        let s = m.status_json("i", "x");
        assert_eq!(s["ready"], true);
        assert_eq!(s["restartCount"], 0);
        assert_eq!(s["lastState"], json!({}));

        // first death (OOMKilled): terminated, restartCount unchanged, restart at once
        let t1 = t0.plus(S(5));
        assert_eq!(m.on_exit(t1, "OOMKilled", 137, None), Some(Restart::Now));
        let s = m.status_json("i", "x");
        assert_eq!(s["state"]["terminated"]["reason"], "OOMKilled");
        assert_eq!(s["state"]["terminated"]["exitCode"], 137);
        assert_eq!(s["containerID"], "containerd://a");
        assert_eq!(s["restartCount"], 0);
        assert_eq!(s["ready"], false);
        assert!(m.start_due(t1));
        assert_eq!(m.enter_backoff(), None);
        m.on_started(t1, "containerd://b");
        let s = m.status_json("i", "x");
        assert_eq!(s["restartCount"], 1);
        assert!(s["state"]["running"].is_object());
        assert_eq!(
            s["lastState"]["terminated"]["containerID"],
            "containerd://a"
        );
        assert_eq!(s["containerID"], "containerd://b");

        // second death: back-off 10s
        let t2 = t1.plus(S(1));
        assert_eq!(m.on_exit(t2, "Error", 1, None), Some(Restart::After(S(10))));
        assert_eq!(
            m.status_json("i", "x")["lastState"]["terminated"]["containerID"],
            "containerd://a"
        );
        let msg = m.enter_backoff().unwrap();
        assert_eq!(
            msg,
            "back-off 10s restarting failed container=api pod=p_ns(u)"
        );
        let s = m.status_json("i", "x");
        assert_eq!(s["state"]["waiting"]["reason"], "CrashLoopBackOff");
        assert_eq!(s["lastState"]["terminated"]["exitCode"], 1);
        assert_eq!(s["restartCount"], 1);
        assert_eq!(s["containerID"], "containerd://b");
        assert!(!m.start_due(t2.plus(S(9))));
        assert!(m.start_due(t2.plus(S(10))));
        m.on_started(t2.plus(S(10)), "containerd://c");
        assert_eq!(m.restart_count(), 2);
        // third death: 20s
        let t3 = t2.plus(S(11));
        assert_eq!(m.on_exit(t3, "Error", 2, None), Some(Restart::After(S(20))));
        assert_eq!(m.next_start(), Some(t3.mono + S(20)));
        // nothing running: exit ignored
        assert_eq!(m.on_exit(t3, "Error", 2, None), None);
    }

    #[test]
    fn restart_policies() {
        let t0 = Now::current();
        let mut never = machine(RestartPolicy::Never, false, t0);
        never.on_started(t0, "containerd://a");
        assert_eq!(never.on_exit(t0, "Error", 1, None), Some(Restart::Never));
        assert!(!never.start_due(t0.plus(S(100))));
        let mut on_failure = machine(RestartPolicy::OnFailure, false, t0);
        on_failure.on_started(t0, "containerd://a");
        assert_eq!(
            on_failure.on_exit(t0, "Completed", 0, None),
            Some(Restart::Never)
        );
        let mut on_failure = machine(RestartPolicy::OnFailure, false, t0);
        on_failure.on_started(t0, "containerd://a");
        assert_eq!(on_failure.on_exit(t0, "Error", 2, None), Some(Restart::Now));
    }

    #[test]
    fn readiness_and_startup() {
        let t0 = Now::current();
        let mut m = machine(RestartPolicy::Always, true, t0);
        m.set_ready(true);
        assert!(!m.ready(), "not running yet");
        m.on_started(t0, "containerd://a");
        assert!(!m.ready());
        assert!(m.started());
        m.set_ready(true);
        assert!(m.ready());
        m.on_exit(t0, "Error", 143, None);
        assert!(!m.ready());
        let mut s = ContainerMachine::new("a", "p", RestartPolicy::Always, cfg(), false, true, t0);
        s.on_started(t0, "containerd://a");
        assert!(!s.started() && !s.ready());
        s.set_started();
        assert!(s.started() && s.ready());
    }

    #[test]
    fn create_failures_and_start_errors() {
        let t0 = Now::current();
        let mut m = machine(RestartPolicy::Always, false, t0);
        let d = m.on_create_failed(t0, "ErrImagePull", "not found");
        assert_eq!(d, S(10));
        assert_eq!(
            m.status_json("i", "x")["state"]["waiting"]["reason"],
            "ErrImagePull"
        );
        assert_eq!(m.status_json("i", "x")["imageID"], "");
        m.enter_image_backoff("Back-off pulling image \"i\"");
        assert_eq!(
            m.status_json("i", "x")["state"]["waiting"]["reason"],
            "ImagePullBackOff"
        );
        assert!(!m.start_due(t0.plus(S(9))));
        assert_eq!(
            m.on_create_failed(t0.plus(S(10)), "ErrImagePull", "x"),
            S(20)
        );
        assert_eq!(m.restart_count(), 0);

        let mut m = machine(RestartPolicy::Always, false, t0);
        assert_eq!(
            m.on_start_error(t0, "containerd://a", "exec: not found"),
            Restart::Now
        );
        assert_eq!(
            m.status_json("i", "x")["state"]["terminated"]["exitCode"],
            128
        );
        assert_eq!(
            m.on_start_error(t0, "containerd://b", "exec: not found"),
            Restart::After(S(10))
        );
        assert_eq!(m.restart_count(), 1);
    }
}
