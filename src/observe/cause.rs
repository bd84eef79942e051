//! Why a container died: the closed set of causes exported in the `reason` label.

/// The kubelet's reason for a container that disappeared from the runtime (the pod was
/// evicted or deleted, the node restarted): nobody saw it die.
pub const VANISHED: &str = "ContainerStatusUnknown";

/// The kubelet's reason (1.36+) for the containers it removed because another container
/// of the pod exited with a `RestartAllContainers` rule (KEP-5532): part of that one pod
/// restart, not deaths of their own.
pub const RESTARTING_ALL: &str = "RestartingAllContainers";

/// The cause of a container death or restart. A closed set, so that dashboards and
/// alerts can rely on it: any kubelet reason not listed here maps to `Unknown`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cause {
    OOMKilled,
    LivenessProbeFailed,
    StartupProbeFailed,
    Error,
    Completed,
    ContainerCannotRun,
    StartError,
    DeadlineExceeded,
    /// The container exited with a code its own `restartPolicyRules` restart on: a
    /// restart the workload asked for, not a crash.
    RestartRule,
    /// A container exited with a code whose rule restarts the whole pod in place
    /// (`RestartAllContainers`, KEP-5532), and the restarts of the other containers that
    /// this one pod restart brought: one incident, asked for by the workload.
    RestartAllContainers,
    Unknown,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::OOMKilled => "OOMKilled",
            Cause::LivenessProbeFailed => "LivenessProbeFailed",
            Cause::StartupProbeFailed => "StartupProbeFailed",
            Cause::Error => "Error",
            Cause::Completed => "Completed",
            Cause::ContainerCannotRun => "ContainerCannotRun",
            Cause::StartError => "StartError",
            Cause::DeadlineExceeded => "DeadlineExceeded",
            Cause::RestartRule => "RestartRule",
            Cause::RestartAllContainers => "RestartAllContainers",
            Cause::Unknown => "Unknown",
        }
    }

    /// The cause of a termination, by the kubelet's reason and, for a `StartError`, the
    /// runtime's message: runc reports an OOM kill during container start as
    /// `StartError` with "container init was OOM-killed (memory limit too low?)", and that
    /// is an OOM kill. Never by exit code: `OOMKilled` may come with exit code 0 (the
    /// kernel killed a child, the main process exited cleanly), and an `Error`/137 is any
    /// SIGKILL (an OOM kill whose runtime event was lost cannot be told from another).
    /// `None` means the reason is not one we know; the caller maps it to `Unknown` and
    /// reports it.
    pub fn of_termination(reason: &str, message: Option<&str>) -> Option<Cause> {
        if reason == "StartError"
            && message.is_some_and(|message| message.to_ascii_lowercase().contains("oom-killed"))
        {
            return Some(Cause::OOMKilled);
        }
        Cause::from_kubelet_reason(reason)
    }

    /// Maps a kubelet termination reason. `None` means the reason is not one we know;
    /// the caller maps it to `Unknown` and reports it.
    pub fn from_kubelet_reason(reason: &str) -> Option<Cause> {
        Some(match reason {
            "OOMKilled" => Cause::OOMKilled,
            "Error" => Cause::Error,
            "Completed" => Cause::Completed,
            "ContainerCannotRun" => Cause::ContainerCannotRun,
            "StartError" => Cause::StartError,
            "DeadlineExceeded" => Cause::DeadlineExceeded,
            // The kubelet lost the container (it vanished from the runtime): a known
            // reason, whose cause is not known.
            VANISHED => Cause::Unknown,
            _ => return None,
        })
    }

    /// A probe kill is reported by the kubelet as an ordinary exit (`Error` with the
    /// signal's exit code, or `Completed` when the process handled SIGTERM), so only
    /// these causes may turn out to be probe kills once the kubelet's Event is seen.
    pub fn may_be_probe_kill(self) -> bool {
        matches!(
            self,
            Cause::Error
                | Cause::Completed
                | Cause::Unknown
                | Cause::RestartRule
                | Cause::RestartAllContainers
        )
    }
}

/// Which probe made the kubelet kill a container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeKill {
    Liveness,
    Startup,
}

impl ProbeKill {
    pub fn cause(self) -> Cause {
        match self {
            ProbeKill::Liveness => Cause::LivenessProbeFailed,
            ProbeKill::Startup => Cause::StartupProbeFailed,
        }
    }
}

/// Why Kubernetes took a pod away on purpose, from its `DisruptionTarget` condition
/// (KEP-3329): planned disruptions, counted apart from crashes and OOM kills so that
/// alerts and error budgets can leave them out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Disruption {
    /// `PreemptionByScheduler`: a higher-priority pod needed the room.
    Preemption,
    /// `DeletionByTaintManager`: a NoExecute taint the pod does not tolerate.
    TaintManager,
    /// `EvictionByEvictionAPI`: a drain or another Eviction API client.
    EvictionApi,
    /// `DeletionByPodGC`: the pod's node is gone.
    PodGc,
    /// `TerminationByKubelet`: node-pressure eviction or graceful node shutdown.
    Kubelet,
    /// A reason this version does not know.
    Other,
}

impl Disruption {
    /// Every disruption, for removing a workload's series.
    pub const ALL: [Disruption; 6] = [
        Disruption::Preemption,
        Disruption::TaintManager,
        Disruption::EvictionApi,
        Disruption::PodGc,
        Disruption::Kubelet,
        Disruption::Other,
    ];

    /// From the condition's reason.
    pub fn from_reason(reason: &str) -> Disruption {
        match reason {
            "PreemptionByScheduler" => Disruption::Preemption,
            "DeletionByTaintManager" => Disruption::TaintManager,
            "EvictionByEvictionAPI" => Disruption::EvictionApi,
            "DeletionByPodGC" => Disruption::PodGc,
            "TerminationByKubelet" => Disruption::Kubelet,
            _ => Disruption::Other,
        }
    }

    /// The `reason` label value: the condition's reason as Kubernetes writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Disruption::Preemption => "PreemptionByScheduler",
            Disruption::TaintManager => "DeletionByTaintManager",
            Disruption::EvictionApi => "EvictionByEvictionAPI",
            Disruption::PodGc => "DeletionByPodGC",
            Disruption::Kubelet => "TerminationByKubelet",
            Disruption::Other => "Other",
        }
    }
}
