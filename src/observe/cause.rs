//! Why a container died: the closed set of causes exported in the `reason` label.

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
            Cause::Unknown => "Unknown",
        }
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
            _ => return None,
        })
    }

    /// A probe kill is reported by the kubelet as an ordinary exit (`Error` with the
    /// signal's exit code, or `Completed` when the process handled SIGTERM), so only
    /// these causes may turn out to be probe kills once the kubelet's Event is seen.
    pub fn may_be_probe_kill(self) -> bool {
        matches!(self, Cause::Error | Cause::Completed | Cause::Unknown)
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
