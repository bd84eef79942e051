//! The `selfheal-exporter` binary: parses the command line and hands over to the daemon.

mod cli;
mod daemon;

use std::process::ExitCode;

fn main() -> ExitCode {
    // Two TLS providers in one process make kube panic: choose ring before anything else.
    let _ = rustls::crypto::ring::default_provider().install_default();
    cli::main()
}
