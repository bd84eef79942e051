//! The one error type of the `cluster` module and small helpers to build it.

use std::path::Path;

/// Why bringing the cluster up, down or inspecting it failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A file or directory operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// An external command (openssl, ip, ctr, kubectl, …) could not run or exited non-zero.
    #[error("`{command}` failed ({status}): {output}")]
    Command {
        command: String,
        status: String,
        output: String,
    },
    /// A component did not become ready in time.
    #[error("{what} not ready after {secs}s (log: {log})")]
    Timeout {
        what: String,
        secs: u64,
        log: String,
    },
    /// A precondition does not hold (not root, binaries missing, bad input).
    #[error("{0}")]
    Setup(String),
}

impl ClusterError {
    /// An [`ClusterError::Io`] about `path`.
    pub fn io(context: impl Into<String>, path: &Path) -> impl FnOnce(std::io::Error) -> Self {
        let context = format!("{} {}", context.into(), path.display());
        move |source| ClusterError::Io { context, source }
    }
}

/// Shorthand for results of this module.
pub type Result<T> = std::result::Result<T, ClusterError>;
