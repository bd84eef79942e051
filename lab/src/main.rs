//! `selfheal-lab` command line: one subcommand per lab component.
//! `apiserver` runs the in-memory Kubernetes API server until SIGINT/SIGTERM.
//! `grade-api` runs the experiment's memory-hungry grade API (on a
//! single-threaded runtime, to stay small inside a memory cgroup).
//! `load` runs virtual users against a grade URL and reports the outage windows.
//! `services` keeps EndpointSlices and proxies NodePorts on 127.0.0.1 to ready pods.
//! `kubelet` runs the emulated kubelet (pods as processes) until SIGINT/SIGTERM.
//! `demo` runs the whole grade-submission experiment with the daemon watching it.
//! `cluster up|down|status` runs a real one-node Kubernetes cluster from upstream binaries.

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
    /// Run the grade API (`POST/GET /grade`, `GET /healthz`), whose memory grows with every grade.
    GradeApi(GradeApiArgs),
    /// Run virtual users against a grade URL and report the outage windows they saw.
    Load(LoadArgs),
    /// Keep EndpointSlices for Services and proxy NodePorts on 127.0.0.1 to ready pods.
    Services(ServicesArgs),
    /// Run the emulated kubelet: pods become real processes under memory cgroups.
    Kubelet(KubeletArgs),
    /// The grade-submission experiment, for real: lab, kubelet, Service, daemon and load.
    Demo(DemoArgs),
    /// A real one-node Kubernetes cluster from upstream binaries (root; see lab/upstream).
    Cluster(ClusterArgs),
}

#[derive(Args)]
struct ClusterArgs {
    #[command(subcommand)]
    action: ClusterAction,
    /// Directory of the upstream binaries [default: what lab/upstream/build.sh prints, or
    /// for down/status the one the last `up` used].
    #[arg(long, global = true, env = "SELFHEAL_UPSTREAM_BIN")]
    bin_dir: Option<PathBuf>,
    /// Persistent state (certificates, etcd, containerd root, kubelet root, logs).
    #[arg(long, global = true, default_value = selfheal_lab::cluster::layout::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Runtime state (PID files, containerd state and socket, netns).
    #[arg(long, global = true, default_value = selfheal_lab::cluster::layout::DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
}

#[derive(Subcommand)]
enum ClusterAction {
    /// Start everything (cleaning a stale earlier run first); returns once the node is Ready.
    Up {
        /// The selfheal-exporter binary packed as the exporter's image
        /// (`selfheal-exporter:<version>`, what deploy/ runs) [default: the one next to
        /// this program, if there is one; without it no exporter image is imported].
        #[arg(long)]
        exporter_binary: Option<PathBuf>,
    },
    /// Stop everything and remove the cluster's state, mounts, cgroups, bridge; restore sysctls.
    Down,
    /// Say which components run and whether the node is Ready.
    Status,
    /// Stop one component (SIGTERM; with --kill SIGKILL, as a crash), e.g. kube-apiserver.
    Stop {
        component: String,
        #[arg(long)]
        kill: bool,
    },
    /// Start a stopped component again as `up` did, and wait until it serves.
    Start { component: String },
    /// Compact etcd at its current revision: watches resumed from older resource
    /// versions get 410 Gone and relist. Prints the revision.
    Compact,
}

fn run_cluster(args: ClusterArgs) -> anyhow::Result<()> {
    use selfheal_lab::cluster;
    let bin = match (&args.bin_dir, &args.action) {
        (Some(b), _) => b.clone(),
        (None, ClusterAction::Up { .. }) => cluster::build_upstream()?,
        (None, _) => cluster::recorded_bin_dir(&args.run_dir).unwrap_or_default(),
    };
    let layout = cluster::Layout::new(&args.state_dir, &args.run_dir, bin);
    match args.action {
        ClusterAction::Up { exporter_binary } => {
            let exe = std::env::current_exe().context("locating this program")?;
            let exporter = match exporter_binary {
                Some(path) if path.is_file() => Some(path),
                Some(path) => {
                    eprintln!("error: --exporter-binary {}: no such file", path.display());
                    std::process::exit(2);
                }
                None => Some(exe.with_file_name("selfheal-exporter")).filter(|p| p.is_file()),
            };
            if exporter.is_none() {
                eprintln!(
                    "cluster: no selfheal-exporter next to {}: no exporter image imported \
                     (build the workspace or pass --exporter-binary)",
                    exe.display()
                );
            }
            let report = cluster::up(&layout, &exe, exporter.as_deref()).context(
                "cluster up failed; what started is still running for inspection \
                 (logs in the state dir's logs/): `selfheal-lab cluster down` removes it",
            )?;
            if !report.cleaned.stopped.is_empty() || report.cleaned.killed > 0 {
                eprintln!(
                    "cluster: cleaned a stale run first: stopped {:?}, killed {}",
                    report.cleaned.stopped, report.cleaned.killed
                );
            }
            eprintln!("cluster: images {:?}", report.images);
            eprintln!("cluster: node {} Ready", cluster::layout::NODE_NAME);
            println!("{}", report.admin_kubeconfig.display());
        }
        ClusterAction::Down => {
            let r = cluster::down(&layout)?;
            println!(
                "cluster: stopped {:?}; killed {} pod/shim processes; {} unmounts; {} cgroups removed",
                r.stopped, r.killed, r.unmounted, r.cgroups_removed
            );
            for line in &r.restored {
                println!("cluster: restored {line}");
            }
            for line in &r.leftovers {
                println!("cluster: LEFT BEHIND {line}");
            }
        }
        ClusterAction::Stop { component, kill } => {
            let ran = cluster::control::stop(&layout, &component, kill)?;
            println!(
                "cluster: {component} {}",
                if ran { "stopped" } else { "was not running" }
            );
        }
        ClusterAction::Start { component } => {
            cluster::control::start(&layout, &component)?;
            println!("cluster: {component} started");
        }
        ClusterAction::Compact => {
            let revision = cluster::control::compact_etcd()?;
            println!("{revision}");
        }
        ClusterAction::Status => {
            let s = cluster::status(&layout);
            for c in &s.components {
                match c.pid {
                    Some(pid) => println!("{:<24} running (pid {pid})", c.name),
                    None => println!("{:<24} not running", c.name),
                }
            }
            println!(
                "{:<24} {}",
                "node Ready",
                s.node_ready.as_deref().unwrap_or("unknown")
            );
            println!(
                "{:<24} {}",
                "net.ipv4.ip_forward",
                s.ip_forward.as_deref().unwrap_or("?")
            );
            println!(
                "{:<24} {}",
                "admin kubeconfig",
                s.admin_kubeconfig.display()
            );
        }
    }
    Ok(())
}

#[derive(Args)]
struct DemoArgs {
    /// Virtual users (the experiment's OOM took 80).
    #[arg(long, default_value_t = 80)]
    users: usize,
    /// How long the users run, e.g. 90s or 3m [default: 90s on the embedded lab, 180s on
    /// the real cluster, where the kubelet enforces the pod's 128m CPU limit and the API
    /// stores grades about 3 times slower, so its OOM kills come later].
    #[arg(long, value_parser = selfheal_lab::load::parse_duration)]
    duration: Option<Duration>,
    /// Memory limit of the grade API (the experiment lowered 64Mi to 48Mi).
    #[arg(long, default_value = "48Mi")]
    memory_limit: String,
    /// Pause of each user between iterations, like Postman's runner delay; without it
    /// this fast API and load generator OOM-kill the 48Mi API within a second or two.
    #[arg(long, default_value = "100ms", value_parser = selfheal_lab::load::parse_duration)]
    think: Duration,
    /// Where the daemon serves /metrics.
    #[arg(long, default_value = "0.0.0.0:9964")]
    metrics_listen: SocketAddr,
    /// Where it runs: `embedded` (the lab's API server and emulated kubelet in this
    /// process, quick) or `real` (the upstream cluster of `selfheal-lab cluster`, root,
    /// brought up for the demo and down at its end).
    #[arg(long, value_enum, default_value_t = DemoClusterKind::Embedded)]
    cluster: DemoClusterKind,
    /// Where the lab API server listens [embedded only; default: 127.0.0.1:6443].
    #[arg(long)]
    api_listen: Option<SocketAddr>,
    /// The emulated kubelet's first restart back-off [embedded only; default: 10s, the
    /// real kubelet's].
    #[arg(long, value_parser = selfheal_lab::kubelet::parse_duration)]
    backoff_base: Option<Duration>,
    /// Directory of the upstream binaries [real only; default: what
    /// lab/upstream/build.sh prints, building them if needed].
    #[arg(long, env = "SELFHEAL_UPSTREAM_BIN")]
    bin_dir: Option<PathBuf>,
    /// The selfheal-exporter binary [default: next to this program].
    #[arg(long)]
    exporter: Option<PathBuf>,
    /// Where the kubeconfig, the daemon's config and its log go.
    #[arg(long, default_value_os_t = std::env::temp_dir().join("selfheal-demo"))]
    work_dir: PathBuf,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum DemoClusterKind {
    Embedded,
    Real,
}

async fn run_demo(args: DemoArgs) -> anyhow::Result<()> {
    use selfheal_lab::demo::DemoCluster;
    let cluster = match args.cluster {
        DemoClusterKind::Embedded => {
            if args.bin_dir.is_some() {
                eprintln!("error: --bin-dir applies to --cluster real only");
                std::process::exit(2);
            }
            DemoCluster::Embedded {
                api_listen: args
                    .api_listen
                    .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 6443))),
                backoff_base: args.backoff_base.unwrap_or(Duration::from_secs(10)),
            }
        }
        DemoClusterKind::Real => {
            for (flag, given) in [
                ("--api-listen", args.api_listen.is_some()),
                ("--backoff-base", args.backoff_base.is_some()),
            ] {
                if given {
                    eprintln!(
                        "error: {flag} applies to --cluster embedded only (the real cluster's \
                         API server and kubelet are upstream's)"
                    );
                    std::process::exit(2);
                }
            }
            DemoCluster::Real {
                bin_dir: args.bin_dir,
            }
        }
    };
    selfheal_lab::demo::run(selfheal_lab::demo::DemoConfig {
        users: args.users,
        duration: args.duration.unwrap_or(match args.cluster {
            DemoClusterKind::Embedded => Duration::from_secs(90),
            DemoClusterKind::Real => Duration::from_secs(180),
        }),
        memory_limit: args.memory_limit,
        think: args.think,
        metrics_listen: args.metrics_listen,
        cluster,
        exporter: args.exporter,
        work_dir: args.work_dir,
    })
    .await
}

#[derive(Args)]
struct KubeletArgs {
    /// kubeconfig of the API server to watch (e.g. written by `apiserver --kubeconfig-out`).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: PathBuf,
    /// Node name: pods with this `spec.nodeName` or none are run.
    #[arg(long, default_value = "selfheal-lab-node")]
    node_name: String,
    /// First restart back-off delay, e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = selfheal_lab::kubelet::parse_duration)]
    backoff_base: Duration,
    /// Largest restart back-off delay, e.g. 5m.
    #[arg(long, default_value = "5m", value_parser = selfheal_lab::kubelet::parse_duration)]
    backoff_cap: Duration,
    /// Running time after which the back-off starts over, e.g. 10m.
    #[arg(long, default_value = "10m", value_parser = selfheal_lab::kubelet::parse_duration)]
    backoff_reset: Duration,
    /// First pod IP (each pod gets its own loopback address).
    #[arg(long, default_value = "127.0.1.1")]
    pod_ip_start: std::net::Ipv4Addr,
    /// Run without memory cgroups (no limits enforced, no OOMKilled).
    #[arg(long)]
    no_cgroups: bool,
}

#[derive(Args)]
struct ServicesArgs {
    /// kubeconfig of the API server to watch (e.g. written by `apiserver --kubeconfig-out`).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: PathBuf,
    /// Address node ports listen on.
    #[arg(long, default_value = "127.0.0.1")]
    bind: std::net::IpAddr,
}

#[derive(Args)]
struct LoadArgs {
    /// Full URL of the grade endpoint (loopback only), e.g. http://127.0.0.1:31000/grade.
    #[arg(long)]
    url: String,
    /// Concurrent virtual users (each: POST a grade, then GET, in a loop).
    #[arg(long, default_value_t = 25)]
    users: usize,
    /// How long to run, e.g. 30s, 10m.
    #[arg(long, value_parser = selfheal_lab::load::parse_duration)]
    duration: Duration,
    /// Per-request timeout; a request slower than this counts as failed.
    #[arg(long, default_value = "2s", value_parser = selfheal_lab::load::parse_duration)]
    timeout: Duration,
    /// Pause of each user between iterations (Postman's runner delay), e.g. 100ms.
    #[arg(long, default_value = "0s", value_parser = selfheal_lab::load::parse_duration)]
    think: Duration,
}

#[derive(Args)]
struct GradeApiArgs {
    /// Address to listen on.
    #[arg(long, env = "GRADE_API_LISTEN", default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// Resident memory kept per stored grade, in bytes (the leak that gets it OOM-killed).
    #[arg(long, env = "GRADE_API_BYTES_PER_GRADE", default_value_t = selfheal_lab::grade_api::DEFAULT_BYTES_PER_GRADE)]
    bytes_per_grade: usize,
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
    ShutdownSignals::install()?.recv().await;
    Ok(())
}

/// SIGTERM and SIGINT, installed before a component announces itself, so that a signal
/// sent right after the announcement (as a kubelet may) is a graceful stop, not a kill.
struct ShutdownSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(ShutdownSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
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

async fn run_grade_api(args: GradeApiArgs) -> anyhow::Result<()> {
    let mut signals = ShutdownSignals::install()?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    println!("grade-api: http://{}/grade", listener.local_addr()?);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(selfheal_lab::grade_api::serve(
        listener,
        args.bytes_per_grade,
        async move {
            let _ = stop_rx.await;
        },
    ));
    signals.recv().await;
    let _ = stop_tx.send(());
    server.await??;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The cluster commands are synchronous (they drive processes and files).
    if let Command::Cluster(args) = cli.command {
        return run_cluster(args);
    }
    // The demo prints its own account; the components' logs would drown it.
    let default_level = match cli.command {
        Command::Demo(_) => "warn",
        _ => "info",
    };
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_level.into()),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    // The grade API runs as a pod's container under a memory limit: one thread keeps it small.
    let mut runtime = match cli.command {
        Command::GradeApi(_) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    runtime.enable_all().build()?.block_on(run(cli))
}

async fn run_load(args: LoadArgs) -> anyhow::Result<()> {
    use std::io::Write as _;
    let config = selfheal_lab::load::LoadConfig {
        timeout: args.timeout,
        think: args.think,
        ..selfheal_lab::load::LoadConfig::new(args.url, args.users, args.duration)
    };
    let report = selfheal_lab::load::run_load(config, |second| {
        println!("{second}");
        let _ = std::io::stdout().flush();
    })
    .await?;
    selfheal_lab::load::print_summary(&report, &mut std::io::stdout().lock())?;
    Ok(())
}

async fn run_services(args: ServicesArgs) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kubeconfig = kube::config::Kubeconfig::read_from(&args.kubeconfig)
        .with_context(|| format!("reading kubeconfig {}", args.kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .context("loading kubeconfig")?;
    let client = kube::Client::try_from(config).context("building the API client")?;
    let services = selfheal_lab::services::ServiceController::start_with(
        client,
        selfheal_lab::services::ServiceControllerConfig {
            bind_ip: args.bind,
            ..Default::default()
        },
    );
    println!("services: watching; node ports on {}", args.bind);
    shutdown_signal().await?;
    services.shutdown().await;
    Ok(())
}

async fn run_kubelet(args: KubeletArgs) -> anyhow::Result<()> {
    use selfheal_lab::kubelet::{BackoffConfig, CgroupStatus, Kubelet, KubeletConfig};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kubeconfig = kube::config::Kubeconfig::read_from(&args.kubeconfig)
        .with_context(|| format!("reading kubeconfig {}", args.kubeconfig.display()))?;
    let kube_config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .context("loading kubeconfig")?;
    let config = KubeletConfig {
        node_name: args.node_name,
        backoff: BackoffConfig {
            base: args.backoff_base,
            cap: args.backoff_cap,
            reset: args.backoff_reset,
        },
        pod_ip_start: args.pod_ip_start,
        use_cgroups: !args.no_cgroups,
        ..KubeletConfig::new(kube_config)
    };
    let kubelet = Kubelet::start(config).await?;
    match &kubelet.status().cgroups {
        CgroupStatus::Enabled { version, root } => {
            println!(
                "kubelet: memory limits enforced (cgroup {version:?}, {})",
                root.display()
            );
        }
        CgroupStatus::Unavailable { reason } => {
            println!("kubelet: memory limits NOT enforced, OOMKilled never reported: {reason}");
        }
    }
    println!("kubelet: node {}", kubelet.status().node_name);
    shutdown_signal().await?;
    kubelet.shutdown().await;
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Apiserver(args) => run_apiserver(args).await,
        Command::GradeApi(args) => run_grade_api(args).await,
        Command::Load(args) => run_load(args).await,
        Command::Services(args) => run_services(args).await,
        Command::Kubelet(args) => run_kubelet(args).await,
        Command::Demo(args) => run_demo(args).await,
        Command::Cluster(args) => run_cluster(args),
    }
}
