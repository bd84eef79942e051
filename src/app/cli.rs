//! Command line: `run` (the default), `node` (the node agent, one per node) and
//! `check-config`. Exit codes: 0 success, 1 runtime failure, 2 bad input (flags, config,
//! environment, kubeconfig).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::app::daemon::{self, ClusterAccess, NodeMode};
use crate::config::{FlagOverrides, LogFormat, Settings, ShardingOverrides};

#[derive(Parser, Debug)]
#[command(
    name = "selfheal-exporter",
    version,
    about = "Measures how well Kubernetes workloads heal themselves: restarts by cause, \
             OOMKills and time to recover, exported for Prometheus",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Watch the cluster and serve /metrics (the default).
    Run(RunArgs),
    /// The node agent (a DaemonSet): watch this node's pods and read their containers'
    /// memory cgroups for the OOM kills no pod status shows.
    Node(NodeArgs),
    /// Validate a config file and print the effective configuration.
    CheckConfig(CheckConfigArgs),
}

/// The flags `run` and `node` share: where to listen, how to reach the cluster, the
/// config and the logs.
#[derive(Args, Debug, Clone)]
pub struct DaemonArgs {
    /// Address for /metrics, /healthz and /readyz [default: 0.0.0.0:9964]; `:PORT` is
    /// every interface. --web.listen-address is the same flag (exporter-toolkit's name);
    /// giving both is an error
    #[arg(long, visible_alias = "web.listen-address", value_name = "ADDR", value_parser = listen_address)]
    pub listen: Option<SocketAddr>,
    /// Web configuration file of the Prometheus exporter-toolkit (TLS, client
    /// certificates, basic auth, headers), as node_exporter reads it
    #[arg(long = "web.config.file", value_name = "PATH")]
    pub web_config_file: Option<PathBuf>,
    /// Kubeconfig file(s); without it: in-cluster config in a pod, else ~/.kube/config
    #[arg(long, env = "KUBECONFIG", value_name = "PATH")]
    pub kubeconfig: Option<String>,
    /// Kubeconfig context to use
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
    /// Config file, TOML or YAML by extension
    #[arg(long, env = "SELFHEAL_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Log format; the level comes from RUST_LOG [default: text]
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub daemon: DaemonArgs,
    /// This replica's shard (0-based), or `auto`: the ordinal at the end of the pod name
    /// (POD_NAME, else HOSTNAME), as in a StatefulSet [default: 0]
    #[arg(long, value_name = "I|auto")]
    pub shard: Option<String>,
    /// How many shards split the cluster [default: 1]
    #[arg(long, value_name = "N")]
    pub total_shards: Option<u32>,
}

/// `--listen`, `--web.listen-address`: `HOST:PORT`, or Go's `:PORT` for every interface
/// (as node_exporter's `--web.listen-address=:9100`).
fn listen_address(flag: &str) -> Result<SocketAddr, String> {
    let full = match flag.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => flag.to_owned(),
    };
    full.parse()
        .map_err(|error| format!("{flag:?}: expected HOST:PORT or :PORT ({error})"))
}

/// `--shard`: a number, or `auto` for a StatefulSet pod's ordinal.
fn shard_flag(flag: Option<&str>) -> Result<Option<u32>, String> {
    let Some(flag) = flag else {
        return Ok(None);
    };
    if flag != "auto" {
        return flag
            .parse()
            .map(Some)
            .map_err(|_| format!("--shard {flag:?}: expected a number or `auto`"));
    }
    let pod_name = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .map_err(|_| "--shard auto: neither POD_NAME nor HOSTNAME is set".to_owned())?;
    crate::k8s::sharding::Sharding::ordinal_of(&pod_name)
        .map(Some)
        .ok_or_else(|| {
            format!("--shard auto: pod name {pod_name:?} does not end in a StatefulSet ordinal")
        })
}

#[derive(Args, Debug, Clone)]
pub struct NodeArgs {
    /// This node's name (the downward API's spec.nodeName); only its pods are watched
    #[arg(long, env = "NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

#[derive(Args, Debug)]
struct CheckConfigArgs {
    /// Config file, TOML or YAML by extension
    #[arg(long, env = "SELFHEAL_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    /// Web configuration file to check too (else the config's web_config_file, if set)
    #[arg(long = "web.config.file", value_name = "PATH")]
    web_config_file: Option<PathBuf>,
}

/// Parses the command line and runs the subcommand; the exit code says how it went
/// (see the module docs).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::CheckConfig(args)) => check_config(args),
        Some(Command::Run(args)) => run(args),
        Some(Command::Node(args)) => node(args),
        None => run(cli.run),
    }
}

fn check_config(args: CheckConfigArgs) -> ExitCode {
    let flags = FlagOverrides {
        web_config_file: args.web_config_file,
        ..FlagOverrides::default()
    };
    match Settings::load(args.config.as_deref(), &flags) {
        Ok(settings) => {
            for warning in &settings.warnings {
                eprintln!("warning: {warning}");
            }
            print!("{}", settings.config.to_toml());
            if let Some(web) = &settings.web {
                println!("# {}", web.summary());
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(2)
        }
    }
}

fn run(args: RunArgs) -> ExitCode {
    let shard = match shard_flag(args.shard.as_deref()) {
        Ok(shard) => shard,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    let sharding = ShardingOverrides {
        shard,
        total_shards: args.total_shards,
    };
    start(args.daemon, sharding, None)
}

fn node(args: NodeArgs) -> ExitCode {
    let node_name = match args.node_name.as_deref().map(str::trim) {
        Some(name) if crate::k8s::names::is_dns_subdomain(name) => name.to_owned(),
        Some(name) => {
            eprintln!("error: NODE_NAME / --node-name {name:?} is not a valid node name");
            return ExitCode::from(2);
        }
        None => {
            eprintln!(
                "error: the node agent needs its node's name: set NODE_NAME (in a DaemonSet, \
                 from the downward API: valueFrom.fieldRef.fieldPath spec.nodeName) or \
                 --node-name"
            );
            return ExitCode::from(2);
        }
    };
    start(
        args.daemon,
        ShardingOverrides::default(),
        Some(NodeMode { node_name }),
    )
}

/// Loads the settings, starts logging and runs the daemon (cluster-wide, or the node
/// agent with `node`).
fn start(args: DaemonArgs, sharding: ShardingOverrides, node: Option<NodeMode>) -> ExitCode {
    let flags = FlagOverrides {
        listen: args.listen,
        web_config_file: args.web_config_file,
        log_format: args.log_format,
        sharding,
    };
    let access = ClusterAccess {
        kubeconfig: args.kubeconfig,
        context: args.context,
    };
    let settings = match Settings::load(args.config.as_deref(), &flags) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    if let Err(error) = init_logging(settings.config.log_format) {
        eprintln!("error: {error}");
        return ExitCode::from(2);
    }
    for warning in &settings.warnings {
        tracing::warn!("{warning}");
    }
    if let Some(web) = &settings.web {
        tracing::info!("{}", web.summary());
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(daemon::run(settings, access, node))
}

fn init_logging(format: LogFormat) -> Result<(), String> {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) => EnvFilter::try_new(&directives)
            .map_err(|error| format!("RUST_LOG={directives:?}: {error}"))?,
        Err(_) => EnvFilter::new("info"),
    };
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}
