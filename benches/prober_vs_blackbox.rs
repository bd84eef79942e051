//! Downtime as measured by selfheal-exporter's prober against blackbox_exporter behind a
//! real Prometheus, on the same target, for the same known outages.
//!
//! What it measures (the issue's contract): an in-process HTTP target on 127.0.0.1 is
//! switched off (its listener closed, so connections are refused) for known windows of
//! 0.3 s, 1 s, 5 s and 30 s, separated by 25 s of service (longer than the 15 s scrape
//! interval, so the windows never share a scrape). The true windows are taken with
//! `Instant` (length) and `SystemTime` (to match Prometheus' sample timestamps).
//!
//! - **selfheal**: the release `selfheal-exporter` binary, against an in-process lab API
//!   server (`selfheal-lab`; the daemon needs one to start), probes the target every
//!   250 ms (timeout 1 s). Per window: the increase of
//!   `selfheal_probe_downtime_seconds_total{target="flaky"}` and of
//!   `selfheal_probe_outages_total` between a `/metrics` scrape right before the window and
//!   one after it (once the outage has ended, at most 3 s later).
//! - **blackbox**: Debian's `prometheus-blackbox-exporter` (module `http_2xx`, timeout 1 s)
//!   probed through two real Prometheus servers (Debian's `prometheus`), one scraping
//!   `/probe` every 15 s and one every 5 s. After the run, each Prometheus' raw
//!   `probe_success` samples are read over its HTTP API (`/api/v1/query` of a range
//!   selector); each failed sample is attributed to the window containing its timestamp,
//!   and the downtime a Prometheus user would compute is failed samples × scrape interval
//!   (what `count_over_time((probe_success == 0)[..])` × interval gives). A window without
//!   a failed sample is *missed*; failed samples outside every window are reported.
//! - **CPU per 1,000 probes**: utime + stime from `/proc/<pid>/stat` between the start
//!   and the end of the schedule, divided by the probes sent in that span
//!   (`selfheal_probe_requests_total` for the daemon; blackbox_exporter's
//!   `net_conntrack_dialer_conn_attempted_total{dialer_name="http_probe"}`, one connection
//!   per probe, cross-checked against the scrapes stored by the two Prometheus servers).
//!   Both are whole-process figures: the daemon also watches the (idle) lab API server and
//!   answers the bench's `/metrics` scrapes; blackbox_exporter, probing only every few
//!   seconds, is dominated by its idle cost. So marginal figures are printed too: for the
//!   daemon, minus the CPU of a second, identical daemon without targets over the same
//!   span; for blackbox_exporter, 1,000 back-to-back `/probe` requests after the
//!   schedule. The Prometheus servers' own CPU, which the blackbox route also pays, is
//!   printed but not counted.
//!
//! Run it (Linux only: it reads `/proc/<pid>/stat`; about 2.5 minutes):
//!
//! ```text
//! apt-get install prometheus prometheus-blackbox-exporter   # once
//! cargo bench --bench prober_vs_blackbox
//! BENCH_QUICK=1 cargo bench --bench prober_vs_blackbox      # smoke run: 0.3 s and 1 s, ~40 s
//! ```
//!
//! Without `/usr/bin/prometheus` or `prometheus-blackbox-exporter` it says so and exits
//! successfully, so `cargo bench` never fails for lack of them. Without `--bench` (e.g.
//! `cargo test --benches`) it does the quick run. Everything listens on 127.0.0.1 only;
//! the child processes are killed by drop guards however the bench ends.
//!
//! One run, not an average: whether blackbox sees a window shorter than its scrape
//! interval is a matter of phase (probability window / interval), so its short-window
//! cells differ between runs; the selfheal cells differ by at most one probe interval.
//! Both measure a failed probe or scrape as one whole interval of downtime, so a window
//! that is a whole number of intervals long (1 s, 5 s and 30 s at 250 ms; 30 s at 5 s and
//! 15 s) comes out at its true length whatever the phase.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use selfheal_lab::apiserver::{ApiServer, ApiServerConfig};
use selfheal_lab::testkit::daemon::{self, free_port};
use selfheal_lab::testkit::exposition::{Exposition, http_get};
use selfheal_lab::testkit::procfs::{clock_ticks_per_second, cpu_seconds};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Longest wait for one answer from the daemon or Prometheus.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
const PROMETHEUS: &str = "/usr/bin/prometheus";
const BLACKBOX: &str = "prometheus-blackbox-exporter";
/// The daemon's probe interval and the (shared) probe timeout.
const PROBE_INTERVAL: Duration = Duration::from_millis(250);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// The daemon's name for the target (its `target` label).
const TARGET: &str = "flaky";
/// The label filter that picks the daemon's samples for that target.
const OF_TARGET: &[(&str, &str)] = &[("target", TARGET)];
/// Scrape intervals of the two Prometheus servers, in seconds.
const SCRAPE_INTERVALS: [u64; 2] = [15, 5];
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long after a window the daemon may take to report the outage ended.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(3);
/// A failed scrape this close to a window (seconds) belongs to it.
const ATTRIBUTION_SLACK: f64 = 1.0;

fn main() -> ExitCode {
    let bench_mode = std::env::args().any(|arg| arg == "--bench");
    let quick = std::env::var("BENCH_QUICK").is_ok_and(|v| v == "1") || !bench_mode;
    let blackbox = match find_in_path(BLACKBOX) {
        Some(path) if Path::new(PROMETHEUS).exists() => path,
        _ => {
            println!(
                "prober_vs_blackbox: skipped: needs {PROMETHEUS} and {BLACKBOX} \
                 (Debian: apt-get install prometheus prometheus-blackbox-exporter)"
            );
            return ExitCode::SUCCESS;
        }
    };
    let plan = if quick { Plan::quick() } else { Plan::full() };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime starts");
    match runtime.block_on(run(&plan, &blackbox)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("prober_vs_blackbox: FAILED: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The schedule.
struct Plan {
    windows: Vec<Duration>,
    /// Service before the first window, once every prober has seen the target up.
    lead_in: Duration,
    /// Service between the end of a window and the start of the next.
    gap: Duration,
    /// Service after the last window: long enough for a successful 15 s scrape.
    tail: Duration,
    /// Back-to-back `/probe` requests for blackbox_exporter's marginal CPU cost.
    burst: u32,
    quick: bool,
}

impl Plan {
    fn full() -> Plan {
        Plan {
            windows: [300, 1_000, 5_000, 30_000]
                .into_iter()
                .map(Duration::from_millis)
                .collect(),
            lead_in: Duration::from_secs(5),
            gap: Duration::from_secs(25),
            tail: Duration::from_secs(17),
            burst: 1_000,
            quick: false,
        }
    }

    fn quick() -> Plan {
        Plan {
            windows: [300, 1_000]
                .into_iter()
                .map(Duration::from_millis)
                .collect(),
            lead_in: Duration::from_secs(2),
            gap: Duration::from_secs(8),
            tail: Duration::from_secs(17),
            burst: 200,
            quick: true,
        }
    }
}

/// One down window: the truth and what the daemon measured.
struct Window {
    nominal: Duration,
    /// Measured length (monotonic), seconds.
    truth: f64,
    /// Wall-clock bounds, Unix seconds (Prometheus' sample timestamps).
    down_wall: f64,
    up_wall: f64,
    selfheal_downtime: f64,
    selfheal_outages: f64,
    selfheal_failed_probes: f64,
}

/// What one Prometheus saw.
struct Blackbox {
    interval: u64,
    /// Failed `probe_success` samples per window.
    failed: Vec<usize>,
    /// Timestamps of failed samples outside every window.
    spurious: Vec<f64>,
    /// Scrapes of `/probe` during the schedule (`up` samples) and how many failed (`up` 0).
    scrapes: usize,
    scrape_errors: usize,
}

async fn run(plan: &Plan, blackbox_binary: &Path) -> Result<()> {
    let started = Instant::now();
    let clk_tck = clock_ticks_per_second()?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .context("HTTP client")?;
    let dir = tempfile::tempdir().context("temporary directory")?;
    let versions = format!(
        "{}; {}",
        version_of(Path::new(PROMETHEUS)),
        version_of(blackbox_binary)
    );

    // The target, the lab and the daemon.
    let mut target = Flaky::start().await?;
    let lab = ApiServer::start(ApiServerConfig::default())
        .await
        .context("lab API server starts")?;
    let kubeconfig = dir.path().join("kubeconfig");
    lab.write_kubeconfig(&kubeconfig)
        .context("kubeconfig written")?;
    let mut daemon = Daemon::spawn(&kubeconfig, dir.path(), Some(&target.url()))?;
    wait_http_ok(&http, &mut daemon.process, daemon.port, "/readyz").await?;
    // The same daemon without targets, for its idle cost over the same span.
    let mut idle = Daemon::spawn(&kubeconfig, dir.path(), None)?;
    wait_http_ok(&http, &mut idle.process, idle.port, "/readyz").await?;

    // blackbox_exporter and the two Prometheus servers.
    let blackbox_port = free_port()?;
    let blackbox_config = dir.path().join("blackbox.yml");
    std::fs::write(
        &blackbox_config,
        format!(
            "modules:\n  http_2xx:\n    prober: http\n    timeout: {}s\n",
            PROBE_TIMEOUT.as_secs()
        ),
    )
    .context("blackbox config written")?;
    let mut command = Command::new(blackbox_binary);
    command
        .arg(format!("--config.file={}", blackbox_config.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{blackbox_port}"));
    let mut blackbox = Process::spawn("blackbox_exporter", command, dir.path())?;
    wait_http_ok(&http, &mut blackbox, blackbox_port, "/metrics").await?;

    let mut prometheus = Vec::new();
    for interval in SCRAPE_INTERVALS {
        let port = free_port()?;
        let config = dir.path().join(format!("prometheus-{interval}s.yml"));
        std::fs::write(
            &config,
            prometheus_config(interval, blackbox_port, &target.url()),
        )
        .context("prometheus config written")?;
        let data = dir.path().join(format!("tsdb-{interval}s"));
        let mut command = Command::new(PROMETHEUS);
        command
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"));
        let process = Process::spawn(&format!("prometheus@{interval}s"), command, dir.path())?;
        prometheus.push((interval, port, process));
    }
    for (_, port, process) in &mut prometheus {
        wait_http_ok(&http, process, *port, "/-/ready").await?;
    }

    // Every prober sees the target up before the clock starts.
    eprintln!("prober_vs_blackbox: waiting for the first scrapes ({versions})");
    let target_up = |s: &Exposition| s.get("selfheal_probe_up", OF_TARGET) == Some(1.0);
    let first = daemon.wait_until(STARTUP_TIMEOUT, target_up).await?;
    ensure!(
        target_up(&first),
        "the daemon never saw the target up; log:\n{}",
        daemon.process.log_tail()
    );
    for (interval, port, process) in &mut prometheus {
        let deadline = Instant::now() + Duration::from_secs(*interval + 30);
        loop {
            process.ensure_running()?;
            let result = prom_query(&http, *port, "probe_success", unix_now()).await;
            if let Ok(result) = result
                && result[0]["value"][1] == "1"
            {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "prometheus@{interval}s stored no successful probe within {} s; log:\n{}",
                *interval + 30,
                process.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    // The schedule.
    let start_wall = unix_now();
    let schedule_started = Instant::now();
    let daemon_cpu_0 = cpu_seconds(daemon.process.pid(), clk_tck)?;
    let idle_cpu_0 = cpu_seconds(idle.process.pid(), clk_tck)?;
    let blackbox_cpu_0 = cpu_seconds(blackbox.pid(), clk_tck)?;
    let prometheus_cpu_0 = prometheus
        .iter()
        .map(|(_, _, p)| cpu_seconds(p.pid(), clk_tck))
        .collect::<Result<Vec<_>>>()?;
    let daemon_probes_0 = daemon
        .scrape()
        .await?
        .sum("selfheal_probe_requests_total", OF_TARGET);
    let blackbox_probes_0 = blackbox_probes(&http, blackbox_port).await?;
    tokio::time::sleep(plan.lead_in).await;

    let mut windows = Vec::new();
    for (index, &nominal) in plan.windows.iter().enumerate() {
        let before = daemon.scrape().await?;
        target.down().await;
        let down_at = Instant::now();
        let down_wall = unix_now();
        tokio::time::sleep_until((down_at + nominal).into()).await;
        target.up().await?;
        let up_at = Instant::now();
        let up_wall = unix_now();
        let truth = (up_at - down_at).as_secs_f64();

        let outages_before = before.sum("selfheal_probe_outages_total", OF_TARGET);
        let after = daemon
            .wait_until(SETTLE_TIMEOUT, |s| {
                s.sum("selfheal_probe_outages_total", OF_TARGET) > outages_before
                    && s.get("selfheal_probe_up", OF_TARGET) == Some(1.0)
            })
            .await?;
        let delta = |name: &str| after.sum(name, OF_TARGET) - before.sum(name, OF_TARGET);
        let window = Window {
            nominal,
            truth,
            down_wall,
            up_wall,
            selfheal_downtime: delta("selfheal_probe_downtime_seconds_total"),
            selfheal_outages: delta("selfheal_probe_outages_total"),
            selfheal_failed_probes: failed_probes(&after) - failed_probes(&before),
        };
        eprintln!(
            "prober_vs_blackbox: window {}/{}: down {:.3} s; selfheal measured {:.3} s",
            index + 1,
            plan.windows.len(),
            window.truth,
            window.selfheal_downtime
        );
        windows.push(window);
        let service = if index + 1 == plan.windows.len() {
            plan.tail
        } else {
            plan.gap
        };
        tokio::time::sleep_until((up_at + service).into()).await;
        daemon.process.ensure_running()?;
        idle.process.ensure_running()?;
        blackbox.ensure_running()?;
    }

    let end_wall = unix_now();
    let schedule_seconds = schedule_started.elapsed().as_secs_f64();
    let daemon_cpu = cpu_seconds(daemon.process.pid(), clk_tck)? - daemon_cpu_0;
    let idle_cpu = cpu_seconds(idle.process.pid(), clk_tck)? - idle_cpu_0;
    let blackbox_cpu = cpu_seconds(blackbox.pid(), clk_tck)? - blackbox_cpu_0;
    let prometheus_cpu = prometheus
        .iter()
        .zip(&prometheus_cpu_0)
        .map(|((_, _, p), before)| Ok(cpu_seconds(p.pid(), clk_tck)? - before))
        .collect::<Result<Vec<_>>>()?;
    let daemon_probes = daemon
        .scrape()
        .await?
        .sum("selfheal_probe_requests_total", OF_TARGET)
        - daemon_probes_0;
    let blackbox_run_probes = blackbox_probes(&http, blackbox_port).await? - blackbox_probes_0;

    // What Prometheus stored.
    let mut seen = Vec::new();
    for (interval, port, _) in &prometheus {
        seen.push(
            read_prometheus(&http, *interval, *port, start_wall, end_wall, &windows)
                .await
                .with_context(|| format!("reading prometheus@{interval}s"))?,
        );
    }

    // blackbox_exporter's marginal cost: probes back to back, the target up.
    let probe_url = reqwest::Url::parse_with_params(
        &format!("http://127.0.0.1:{blackbox_port}/probe"),
        &[("target", target.url().as_str()), ("module", "http_2xx")],
    )
    .context("probe URL")?;
    let burst_probes_0 = blackbox_probes(&http, blackbox_port).await?;
    let burst_cpu_0 = cpu_seconds(blackbox.pid(), clk_tck)?;
    let burst_started = Instant::now();
    let mut burst_failures = 0u32;
    for _ in 0..plan.burst {
        let (status, body) = get(&http, probe_url.clone()).await?;
        if status != 200 || !body.lines().any(|line| line == "probe_success 1") {
            burst_failures += 1;
        }
    }
    let burst_seconds = burst_started.elapsed().as_secs_f64();
    let burst_cpu = cpu_seconds(blackbox.pid(), clk_tck)? - burst_cpu_0;
    let burst_probes = blackbox_probes(&http, blackbox_port).await? - burst_probes_0;

    // Report.
    println!();
    println!(
        "prober_vs_blackbox{}: target {} refusing connections for known windows",
        if plan.quick { " (quick run)" } else { "" },
        target.url()
    );
    println!(
        "  selfheal-exporter probes every {} ms (timeout {} s); blackbox_exporter (http_2xx, \
         timeout {} s) is probed by Prometheus every {} s and every {} s",
        PROBE_INTERVAL.as_millis(),
        PROBE_TIMEOUT.as_secs(),
        PROBE_TIMEOUT.as_secs(),
        SCRAPE_INTERVALS[0],
        SCRAPE_INTERVALS[1]
    );
    println!("  {versions}");
    println!();
    println!("Measured downtime (seconds) vs truth:");
    let header = vec![
        "window".to_owned(),
        "truth".to_owned(),
        format!("selfheal({}ms)", PROBE_INTERVAL.as_millis()),
        format!("blackbox@{}s", seen[0].interval),
        format!("blackbox@{}s", seen[1].interval),
    ];
    let mut rows = vec![header];
    for (index, window) in windows.iter().enumerate() {
        rows.push(vec![
            format!("{} s", window.nominal.as_secs_f64()),
            format!("{:.3}", window.truth),
            selfheal_cell(window.selfheal_downtime, window.selfheal_outages),
            blackbox_cell(seen[0].failed[index], seen[0].interval),
            blackbox_cell(seen[1].failed[index], seen[1].interval),
        ]);
    }
    let total = |f: &dyn Fn(&Window) -> f64| windows.iter().map(f).sum::<f64>();
    let total_failed = |b: &Blackbox| b.failed.iter().sum::<usize>();
    rows.push(vec![
        "total".to_owned(),
        format!("{:.3}", total(&|w| w.truth)),
        format!("{:.2}", total(&|w| w.selfheal_downtime)),
        format!("{}", total_failed(&seen[0]) as u64 * seen[0].interval),
        format!("{}", total_failed(&seen[1]) as u64 * seen[1].interval),
    ]);
    print_table(&rows);
    println!(
        "  selfheal: increase of selfheal_probe_downtime_seconds_total (ended outages); \
         failed probes per window: {}",
        windows
            .iter()
            .map(|w| format!("{}", w.selfheal_failed_probes))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  blackbox: failed probe_success samples x scrape interval; a window of w seconds \
         is seen with probability min(1, w / interval)"
    );
    for b in &seen {
        let spurious = if b.spurious.is_empty() {
            "none".to_owned()
        } else {
            b.spurious
                .iter()
                .map(|ts| format!("{:+.1} s", ts - start_wall))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "  blackbox@{}s: scrapes of /probe during the schedule: {}, of which failed \
             (up 0): {}; failed probe_success samples outside the windows: {}",
            b.interval, b.scrapes, b.scrape_errors, spurious
        );
    }

    println!();
    println!("CPU per 1,000 probes (utime + stime from /proc, CLK_TCK {clk_tck}):");
    println!(
        "  selfheal-exporter  {:>7.3} s CPU / {:>5} probes in {:.1} s -> {:.3} s per 1,000 probes \
         (whole process: also watches the idle lab API server, answered {} /metrics scrapes)",
        daemon_cpu,
        daemon_probes,
        schedule_seconds,
        per_thousand(daemon_cpu, daemon_probes),
        daemon.scrapes
    );
    println!(
        "  selfheal-exporter  {:>7.3} s CPU / {:>5} probes -> {:.3} s per 1,000 probes (marginal: \
         minus {:.3} s of an identical daemon without targets over the same span)",
        daemon_cpu - idle_cpu,
        daemon_probes,
        per_thousand(daemon_cpu - idle_cpu, daemon_probes),
        idle_cpu
    );
    let stored_scrapes: usize = seen.iter().map(|b| b.scrapes).sum();
    println!(
        "  blackbox_exporter  {:>7.3} s CPU / {:>5} probes in {:.1} s -> {:.3} s per 1,000 probes \
         (whole process, mostly idle; Prometheus stored {} scrapes of /probe)",
        blackbox_cpu,
        blackbox_run_probes,
        schedule_seconds,
        per_thousand(blackbox_cpu, blackbox_run_probes),
        stored_scrapes
    );
    println!(
        "  blackbox_exporter  {:>7.3} s CPU / {:>5} probes back to back in {:.1} s -> {:.3} s per \
         1,000 probes (marginal; {} not successful)",
        burst_cpu,
        burst_probes,
        burst_seconds,
        per_thousand(burst_cpu, burst_probes),
        burst_failures
    );
    println!(
        "  not counted: the Prometheus servers used {} CPU during the schedule",
        seen.iter()
            .zip(&prometheus_cpu)
            .map(|(b, cpu)| format!("{cpu:.2} s (@{}s)", b.interval))
            .collect::<Vec<_>>()
            .join(" and ")
    );
    println!();
    println!(
        "Run time: {:.1} s in total, of which the schedule {:.1} s.",
        started.elapsed().as_secs_f64(),
        schedule_seconds
    );

    drop(prometheus);
    drop(blackbox);
    drop(idle);
    drop(daemon);
    drop(lab);
    Ok(())
}

fn selfheal_cell(downtime: f64, outages: f64) -> String {
    if outages == 0.0 && downtime == 0.0 {
        return "0 (missed)".to_owned();
    }
    let plural = if outages == 1.0 { "" } else { "s" };
    format!("{downtime:.2} ({outages} outage{plural})")
}

fn blackbox_cell(failed: usize, interval: u64) -> String {
    match failed {
        0 => "0 (missed)".to_owned(),
        1 => format!("{interval} (1 failed scrape)"),
        n => format!("{} ({n} failed scrapes)", n as u64 * interval),
    }
}

fn per_thousand(cpu: f64, probes: f64) -> f64 {
    if probes > 0.0 {
        cpu / probes * 1000.0
    } else {
        f64::NAN
    }
}

fn print_table(rows: &[Vec<String>]) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, String::len))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("  {}", line.join("   ").trim_end());
    }
}

// ---------------------------------------------------------------------------------------
// The flaky target.
// ---------------------------------------------------------------------------------------

/// An HTTP server on a fixed port of 127.0.0.1 that can stop listening (connections are
/// refused) and listen again.
struct Flaky {
    port: u16,
    server: Option<JoinHandle<()>>,
}

impl Flaky {
    async fn start() -> Result<Flaky> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the target")?;
        let port = listener.local_addr().context("target address")?.port();
        Ok(Flaky {
            port,
            server: Some(tokio::spawn(serve(listener))),
        })
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/health", self.port)
    }

    /// Closes the listener: once this returns, connections are refused.
    async fn down(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
            // Resolves once the task, and with it the listener, is dropped.
            let _ = server.await;
        }
    }

    /// Listens again: once this returns, connections are accepted.
    async fn up(&mut self) -> Result<()> {
        let listener = TcpListener::bind(("127.0.0.1", self.port))
            .await
            .with_context(|| format!("binding the target's port {} again", self.port))?;
        self.server = Some(tokio::spawn(serve(listener)));
        Ok(())
    }
}

async fn serve(listener: TcpListener) {
    while let Ok((socket, _)) = listener.accept().await {
        tokio::spawn(answer(socket));
    }
}

async fn answer(mut socket: TcpStream) {
    // Read the whole request head first: closing with unread data would reset the connection.
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let _ = socket
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
        .await;
    let _ = socket.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Child processes.
// ---------------------------------------------------------------------------------------

/// A child process, killed when dropped (also on error or panic).
struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    fn spawn(name: &str, mut command: Command, dir: &Path) -> Result<Process> {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).context("log file")?;
        command
            .stdin(Stdio::null())
            .stdout(file.try_clone().context("log file")?)
            .stderr(file);
        // Nothing here may go through a proxy: all traffic stays on 127.0.0.1.
        for key in ["http_proxy", "https_proxy", "all_proxy", "no_proxy"] {
            command.env_remove(key).env_remove(key.to_uppercase());
        }
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        Ok(Process {
            name: name.to_owned(),
            child,
            log,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn ensure_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait().context("child status")? {
            bail!(
                "{} exited with {status}; log:\n{}",
                self.name,
                self.log_tail()
            );
        }
        Ok(())
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The daemon binary, probing the target.
struct Daemon {
    process: Process,
    port: u16,
    /// `/metrics` scrapes by the bench (they cost the daemon CPU too).
    scrapes: u32,
}

impl Daemon {
    /// A daemon probing `url`, or (`None`) probing nothing: the idle baseline.
    fn spawn(kubeconfig: &Path, dir: &Path, url: Option<&str>) -> Result<Daemon> {
        let port = free_port()?;
        let (name, targets) = match url {
            Some(url) => (
                "selfheal-exporter",
                format!(
                    "[[probes.targets]]\nname = \"{TARGET}\"\nurl = \"{url}\"\n\
                     interval = \"{}ms\"\ntimeout = \"{}s\"\n",
                    PROBE_INTERVAL.as_millis(),
                    PROBE_TIMEOUT.as_secs()
                ),
            ),
            None => ("selfheal-exporter-idle", String::new()),
        };
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, targets).context("daemon config written")?;
        // Only this config: nothing from the caller's environment.
        let mut command = daemon::command(
            Path::new(env!("CARGO_BIN_EXE_selfheal-exporter")),
            &[],
            kubeconfig,
            port,
            Some(config.as_path()),
        );
        command.env("RUST_LOG", "info");
        Ok(Daemon {
            process: Process::spawn(name, command, dir)?,
            port,
            scrapes: 0,
        })
    }

    async fn scrape(&mut self) -> Result<Exposition> {
        self.scrapes += 1;
        let (status, body) = http_get(self.port, "/metrics", HTTP_TIMEOUT)
            .await
            .with_context(|| format!("daemon /metrics; log:\n{}", self.process.log_tail()))?;
        ensure!(status == 200, "daemon /metrics answered {status}");
        Ok(Exposition::parse(&body))
    }

    /// Scrapes until `done` holds or `timeout` has passed; returns the last scrape.
    async fn wait_until(
        &mut self,
        timeout: Duration,
        done: impl Fn(&Exposition) -> bool,
    ) -> Result<Exposition> {
        let deadline = Instant::now() + timeout;
        loop {
            let scrape = self.scrape().await?;
            if done(&scrape) || Instant::now() >= deadline {
                return Ok(scrape);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn wait_http_ok(
    http: &reqwest::Client,
    process: &mut Process,
    port: u16,
    path: &str,
) -> Result<()> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    let url = reqwest::Url::parse(&format!("http://127.0.0.1:{port}{path}")).context("URL")?;
    loop {
        process.ensure_running()?;
        if let Ok((200, _)) = get(http, url.clone()).await {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{} did not answer {path} within {} s; log:\n{}",
            process.name,
            STARTUP_TIMEOUT.as_secs(),
            process.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn prometheus_config(interval: u64, blackbox_port: u16, target: &str) -> String {
    format!(
        "global:\n  scrape_interval: {interval}s\n  scrape_timeout: {timeout}s\n\
         scrape_configs:\n\
         \x20 - job_name: blackbox\n\
         \x20   metrics_path: /probe\n\
         \x20   params:\n\
         \x20     module: [http_2xx]\n\
         \x20   static_configs:\n\
         \x20     - targets: ['{target}']\n\
         \x20   relabel_configs:\n\
         \x20     - source_labels: [__address__]\n\
         \x20       target_label: __param_target\n\
         \x20     - source_labels: [__param_target]\n\
         \x20       target_label: instance\n\
         \x20     - target_label: __address__\n\
         \x20       replacement: 127.0.0.1:{blackbox_port}\n",
        timeout = (interval - 1).min(10),
    )
}

// ---------------------------------------------------------------------------------------
// Reading Prometheus and blackbox_exporter.
// ---------------------------------------------------------------------------------------

async fn get(http: &reqwest::Client, url: reqwest::Url) -> Result<(u16, String)> {
    let response = http
        .get(url.clone())
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = response.status().as_u16();
    let body = response
        .text()
        .await
        .with_context(|| format!("body of {url}"))?;
    Ok((status, body))
}

/// An instant query; returns `data.result`.
async fn prom_query(http: &reqwest::Client, port: u16, query: &str, time: f64) -> Result<Value> {
    let url = reqwest::Url::parse_with_params(
        &format!("http://127.0.0.1:{port}/api/v1/query"),
        &[("query", query), ("time", &format!("{time:.3}"))],
    )
    .context("query URL")?;
    let (status, body) = get(http, url).await?;
    ensure!(status == 200, "query {query:?} answered {status}: {body}");
    let mut answer: Value = serde_json::from_str(&body).context("query answer is JSON")?;
    ensure!(answer["status"] == "success", "query {query:?}: {body}");
    Ok(answer["data"]["result"].take())
}

/// Raw samples `(timestamp, value)` of a one-series range-vector query.
fn raw_samples(result: &Value) -> Result<Vec<(f64, f64)>> {
    let series = result.as_array().context("a matrix")?;
    ensure!(series.len() <= 1, "expected one series, got {result}");
    let Some(series) = series.first() else {
        return Ok(Vec::new());
    };
    series["values"]
        .as_array()
        .context("sample values")?
        .iter()
        .map(|pair| {
            let ts = pair[0].as_f64().context("sample timestamp")?;
            let value = pair[1]
                .as_str()
                .and_then(|v| v.parse().ok())
                .context("sample value")?;
            Ok((ts, value))
        })
        .collect()
}

async fn read_prometheus(
    http: &reqwest::Client,
    interval: u64,
    port: u16,
    start: f64,
    end: f64,
    windows: &[Window],
) -> Result<Blackbox> {
    let range = (end - start).ceil() as u64 + 1;
    let in_schedule = |(ts, _): &(f64, f64)| (start..=end).contains(ts);
    let success: Vec<(f64, f64)> =
        raw_samples(&prom_query(http, port, &format!("probe_success[{range}s]"), end).await?)?
            .into_iter()
            .filter(in_schedule)
            .collect();
    let up: Vec<(f64, f64)> = raw_samples(
        &prom_query(
            http,
            port,
            &format!("up{{job=\"blackbox\"}}[{range}s]"),
            end,
        )
        .await?,
    )?
    .into_iter()
    .filter(in_schedule)
    .collect();
    let mut failed = vec![0; windows.len()];
    let mut spurious = Vec::new();
    for &(ts, value) in &success {
        if value != 0.0 {
            continue;
        }
        let window = windows.iter().position(|w| {
            (w.down_wall - ATTRIBUTION_SLACK..=w.up_wall + ATTRIBUTION_SLACK).contains(&ts)
        });
        match window {
            Some(index) => failed[index] += 1,
            None => spurious.push(ts),
        }
    }
    Ok(Blackbox {
        interval,
        failed,
        spurious,
        scrapes: up.len(),
        scrape_errors: up.iter().filter(|(_, v)| *v == 0.0).count(),
    })
}

/// Probes blackbox_exporter has sent: one connection attempt each (no redirects here).
async fn blackbox_probes(http: &reqwest::Client, port: u16) -> Result<f64> {
    let url = reqwest::Url::parse(&format!("http://127.0.0.1:{port}/metrics")).context("URL")?;
    let (status, body) = get(http, url).await?;
    ensure!(status == 200, "blackbox /metrics answered {status}");
    Exposition::parse(&body)
        .matching(
            "net_conntrack_dialer_conn_attempted_total",
            &[("dialer_name", "http_probe")],
        )
        .next()
        .map(|sample| sample.value)
        .context("no net_conntrack_dialer_conn_attempted_total{dialer_name=\"http_probe\"}")
}

/// `selfheal_probe_requests_total` of the daemon's target whose result is not a success.
fn failed_probes(scrape: &Exposition) -> f64 {
    scrape
        .matching("selfheal_probe_requests_total", OF_TARGET)
        .filter(|sample| sample.label("result").is_some_and(|r| r != "success"))
        .map(|sample| sample.value)
        .sum()
}

// ---------------------------------------------------------------------------------------
// Small helpers.
// ---------------------------------------------------------------------------------------

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The first line of `<binary> --version` (Go programs print it on stdout or stderr).
fn version_of(binary: &Path) -> String {
    let name = binary
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Command::new(binary)
        .arg("--version")
        .output()
        .ok()
        .and_then(|out| {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            text.lines().next().map(|line| line.trim().to_owned())
        })
        .unwrap_or(name)
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
