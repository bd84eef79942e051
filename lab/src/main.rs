//! `selfheal-lab` command line: one subcommand per lab component.
//! `apiserver` runs the in-memory Kubernetes API server until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use selfheal_lab::apiserver::{ApiServer, ApiServerConfig, DEFAULT_HISTORY};

#[derive(Parser)]
#[command(
    name = "selfheal-lab",
    version,
    about = "Test and demo lab for selfheal-exporter"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the in-memory Kubernetes API server.
    Apiserver(ApiserverArgs),
}

#[derive(Args)]
struct ApiserverArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Write a kubeconfig for the server here.
    #[arg(long)]
    kubeconfig_out: Option<PathBuf>,
    /// Number of changes retained for watch resumption.
    #[arg(long, default_value_t = DEFAULT_HISTORY)]
    history: usize,
    /// Milliseconds between watch bookmarks.
    #[arg(long, default_value_t = 1000)]
    bookmark_interval_ms: u64,
}

async fn shutdown_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}

async fn run_apiserver(args: ApiserverArgs) -> anyhow::Result<()> {
    let lab = ApiServer::start(ApiServerConfig {
        listen: args.listen,
        history: args.history,
        bookmark_interval: Duration::from_millis(args.bookmark_interval_ms),
    })
    .await
    .with_context(|| format!("binding {}", args.listen))?;
    println!("apiserver: {}", lab.url());
    if let Some(path) = &args.kubeconfig_out {
        lab.write_kubeconfig(path)
            .with_context(|| format!("writing kubeconfig {}", path.display()))?;
        println!("kubeconfig: {}", path.display());
    }
    shutdown_signal().await?;
    lab.shutdown().await;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Apiserver(args) => run_apiserver(args).await,
    }
}
