//! Supervision of the daemon's long-running tasks (the watch loop, the prober, Service
//! discovery): each runs until shutdown, so one that ends before — returned, or panicked
//! — is a failure the daemon must not hide behind a green `/healthz` with frozen metrics.
//! The daemon then drains like at SIGTERM and exits 1, and Kubernetes restarts it.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;

use tokio::task::{Id, JoinSet};

/// The long-running tasks, by name.
#[derive(Default)]
pub struct Supervisor {
    tasks: JoinSet<()>,
    names: HashMap<Id, &'static str>,
}

/// How a supervised task ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It returned.
    Returned,
    /// It panicked, with this message.
    Panicked(String),
    /// It was aborted.
    Cancelled,
}

/// A task that ended, and how.
#[derive(Debug, PartialEq, Eq)]
pub struct Ended {
    pub task: &'static str,
    pub outcome: Outcome,
}

impl fmt::Display for Ended {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.outcome {
            Outcome::Returned => write!(f, "the {} ended", self.task),
            Outcome::Panicked(message) => write!(f, "the {} panicked: {message}", self.task),
            Outcome::Cancelled => write!(f, "the {} was cancelled", self.task),
        }
    }
}

impl Supervisor {
    /// Runs `task` under supervision.
    pub fn spawn<F>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let handle = self.tasks.spawn(task);
        self.names.insert(handle.id(), name);
    }

    /// Whether no task runs (then [`Supervisor::ended`] would never resolve).
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// The next task to end; pending for ever while none runs.
    pub async fn ended(&mut self) -> Ended {
        let Some(joined) = self.tasks.join_next_with_id().await else {
            return std::future::pending().await;
        };
        let (id, outcome) = match joined {
            Ok((id, ())) => (id, Outcome::Returned),
            Err(error) => {
                let id = error.id();
                if error.is_panic() {
                    let payload = error.into_panic();
                    let message = payload
                        .downcast_ref::<&str>()
                        .map(ToString::to_string)
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "(no message)".to_owned());
                    (id, Outcome::Panicked(message))
                } else {
                    (id, Outcome::Cancelled)
                }
            }
        };
        Ended {
            task: self.names.remove(&id).unwrap_or("task"),
            outcome,
        }
    }

    /// Waits for every task to end (at shutdown, after they were told to stop).
    pub async fn drain(&mut self) {
        while self.tasks.join_next().await.is_some() {}
        self.names.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_panics_or_returns_is_reported_by_name() {
        let mut supervisor = Supervisor::default();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        supervisor.spawn("watch loop", async {
            let _ = released.await;
            panic!("decoder bug");
        });
        supervisor.spawn("prober", std::future::pending());
        assert!(!supervisor.is_empty());
        let _ = release.send(());
        assert_eq!(
            supervisor.ended().await,
            Ended {
                task: "watch loop",
                outcome: Outcome::Panicked("decoder bug".into()),
            }
        );
        supervisor.spawn("service discovery", async {});
        let ended = supervisor.ended().await;
        assert_eq!(ended.to_string(), "the service discovery ended");
    }

    #[tokio::test]
    async fn without_tasks_nothing_ends() {
        let mut supervisor = Supervisor::default();
        assert!(supervisor.is_empty());
        let waited =
            tokio::time::timeout(std::time::Duration::from_millis(20), supervisor.ended()).await;
        assert!(waited.is_err(), "pending, not a spurious end");
        supervisor.drain().await;
    }
}
