//! Process signals: the first SIGTERM or SIGINT starts a graceful shutdown; a second
//! one aborts at once (exit code 130), for when draining hangs.

use tokio::signal::unix::{SignalKind, signal};

/// Waits for the first SIGTERM or SIGINT, then arms the abort on a second one.
pub async fn first_signal() -> std::io::Result<&'static str> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        tracing::warn!("second signal: aborting without draining");
        std::process::exit(130);
    });
    Ok(name)
}
