//! Load benchmark of the whole daemon: 10,000 pods, then 100,000 pod status updates.
//!
//! What it measures (the issue's contract): the release `selfheal-exporter` binary runs
//! as a separate process against an in-process lab API server (`selfheal-lab`) holding
//! `BENCH_PODS` realistic pods (Deployment replicas with `pod-template-hash`, a few
//! StatefulSets, bare pods; one or two containers with memory limits; a
//! `last-applied-configuration` annotation and `managedFields`, which the daemon must
//! skip). Once the daemon is ready (`/readyz` 200, i.e. the initial list is synced) the
//! bench streams `BENCH_UPDATES` kubelet-style status updates, each advancing one pod
//! one step through running (ready) → terminated (OOMKilled, exit 137) →
//! waiting (CrashLoopBackOff) → running (restartCount + 1, not ready) → ready, and
//! waits until `selfheal_watch_events_total{resource="pods",type="apply"}` has counted
//! them all. It prints:
//! - the initial sync: wall time, RSS and CPU seconds of the daemon;
//! - the end-to-end update throughput and the daemon's CPU seconds per 10,000 events;
//! - the daemon's peak RSS (sampled every 100 ms, and the kernel's `VmHWM`) against the
//!   goal of 48 MiB at 10,000 pods;
//! - correctness: OOMKills and restarts injected vs exported (the bench exits non-zero
//!   when they differ: a benchmark of a broken daemon is worse than none);
//! - the size and cost of one `/metrics` scrape, and the largest metric families.
//!
//! Run it (Linux only: it reads `/proc/<pid>/{status,stat}`):
//!
//! ```text
//! cargo bench --bench observer_load                              # 10,000 pods, 100,000 updates
//! BENCH_PODS=1000 BENCH_UPDATES=5000 cargo bench --bench observer_load   # quick run
//! ```
//!
//! Knobs: `BENCH_PODS` (default 10000), `BENCH_UPDATES` (default 100000),
//! `BENCH_TIMEOUT_SECS` (default 300: how long the daemon may take to catch up after the
//! last write), `BENCH_SCRAPE_SECS` (default 15: a Prometheus-like scrape of `/metrics`
//! during the updates, since its buffers count towards the peak RSS; 0 disables it;
//! scrape CPU is netted out of the per-event figure), `BENCH_HISTORY` (changes the lab
//! retains; default all of them, see below). Without `--bench` (e.g. under
//! `cargo test --benches`) it does a small smoke run of 200 pods and 2,000 updates unless
//! the variables say otherwise.
//!
//! All traffic stays on 127.0.0.1; the daemon is stopped (SIGTERM, then SIGKILL from a
//! drop guard) however the bench ends. By default the lab keeps every change in its watch
//! history, so the daemon never gets `410 Expired` and every update reaches it as exactly
//! one watch `apply` event, however far behind it falls. The price is the bench process's
//! own memory (the lab keeps every version of every pod as a `serde_json::Value`: several
//! GiB at full size, reported at the end); a smaller `BENCH_HISTORY` saves it, and a
//! relist caused by falling behind is reported.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use selfheal_lab::apiserver::{ApiServer, ApiServerConfig, NAMESPACES};
use selfheal_lab::testkit::daemon::{Daemon, Launch};
use selfheal_lab::testkit::exposition::{Exposition, http_get};
use selfheal_lab::testkit::fleet::{Fleet, NAMESPACE_NAMES};
use selfheal_lab::testkit::procfs::{RssSampler, clock_ticks_per_second, cpu_seconds, read_status};
use serde_json::json;

const MIB: f64 = 1024.0 * 1024.0;
/// The issue's memory goal for the whole daemon at 10,000 pods.
const RSS_GOAL_MIB: f64 = 48.0;
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
const READY_TIMEOUT: Duration = Duration::from_secs(120);
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    let bench_mode = std::env::args().any(|arg| arg == "--bench");
    if !bench_mode {
        eprintln!(
            "observer_load: run without --bench: smoke-test sizes unless BENCH_* say otherwise"
        );
    }
    let settings = match Settings::from_env(bench_mode) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("observer_load: {error:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime starts");
    match runtime.block_on(run(&settings)) {
        Ok(Verdict::Correct) => ExitCode::SUCCESS,
        Ok(Verdict::Wrong) => {
            eprintln!(
                "observer_load: FAILED: the daemon's metrics disagree with what was injected"
            );
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("observer_load: FAILED: {error:#}");
            ExitCode::FAILURE
        }
    }
}

struct Settings {
    pods: usize,
    updates: usize,
    /// Changes the lab keeps for watch resumption.
    history: usize,
    catch_up_timeout: Duration,
    /// How often "Prometheus" scrapes `/metrics` while the updates stream (None: never).
    scrape_every: Option<Duration>,
}

impl Settings {
    fn from_env(bench_mode: bool) -> Result<Settings> {
        let (pods, updates) = if bench_mode {
            (10_000, 100_000)
        } else {
            (200, 2_000)
        };
        let pods = env_number("BENCH_PODS", pods)?;
        let updates = env_number("BENCH_UPDATES", updates)?;
        let settings = Settings {
            pods,
            updates,
            // Every change, so the daemon can never fall behind the history.
            history: env_number("BENCH_HISTORY", pods + updates + 1_000)?,
            catch_up_timeout: Duration::from_secs(env_number("BENCH_TIMEOUT_SECS", 300)? as u64),
            scrape_every: match env_number("BENCH_SCRAPE_SECS", 15)? {
                0 => None,
                secs => Some(Duration::from_secs(secs as u64)),
            },
        };
        ensure!(settings.pods > 0, "BENCH_PODS must be at least 1");
        Ok(settings)
    }
}

fn env_number(name: &str, default: usize) -> Result<usize> {
    match std::env::var(name) {
        Ok(text) => text
            .trim()
            .replace('_', "")
            .parse()
            .with_context(|| format!("{name}={text:?} is not a non-negative integer")),
        Err(_) => Ok(default),
    }
}

enum Verdict {
    Correct,
    Wrong,
}

async fn run(settings: &Settings) -> Result<Verdict> {
    let clk_tck = clock_ticks_per_second()?;
    let dir = tempfile::tempdir().context("temporary directory")?;

    // 1. The lab.
    let lab = ApiServer::start(ApiServerConfig {
        history: settings.history,
        ..ApiServerConfig::default()
    })
    .await
    .context("lab API server starts")?;
    let kubeconfig = dir.path().join("kubeconfig");
    lab.write_kubeconfig(&kubeconfig)
        .context("lab kubeconfig written")?;

    eprintln!(
        "observer_load: loading {} pods into the lab…",
        settings.pods
    );
    let load_started = Instant::now();
    let fleet = Fleet::plan(settings.pods);
    let namespaces = fleet.namespace_count();
    for namespace in &NAMESPACE_NAMES[..namespaces] {
        lab.store()
            .create(&NAMESPACES, "", json!({"metadata": {"name": namespace}}))
            .with_context(|| format!("namespace {namespace} created"))?;
    }
    let store = lab.store().clone();
    let fleet = tokio::task::spawn_blocking(move || fleet.load(&store))
        .await
        .context("loader thread")??;
    let load_time = load_started.elapsed();

    // 2. The daemon.
    let daemon_started = Instant::now();
    let mut daemon = spawn_daemon(&kubeconfig, dir.path())?;
    eprintln!(
        "observer_load: daemon started (pid {}); waiting for /readyz…",
        daemon.pid()
    );
    let sampler = RssSampler::start(daemon.pid(), SAMPLE_EVERY);
    daemon.wait_ready(READY_TIMEOUT).await?;
    let sync_wall = daemon_started.elapsed();
    let sync_cpu = cpu_seconds(daemon.pid(), clk_tck)?;
    let sync_rss = read_status(daemon.pid())?.rss_bytes;
    let sync_peak = sampler.take_peak().max(sync_rss);

    let baseline = daemon.scrape().await?;
    let applies_before = baseline.sum(
        "selfheal_watch_events_total",
        &[("resource", "pods"), ("type", "apply")],
    );
    let observed_containers = baseline.sum("selfheal_observed_containers", &[]);

    // 3. The updates, written from a blocking thread as fast as the lab takes them.
    eprintln!(
        "observer_load: streaming {} status updates…",
        settings.updates
    );
    let cpu_before_updates = cpu_seconds(daemon.pid(), clk_tck)?;
    let updates_started = Instant::now();
    let prometheus = Prometheus::start(daemon.port(), settings.scrape_every);
    let store = lab.store().clone();
    let updates = settings.updates;
    let (fleet, _) =
        tokio::task::spawn_blocking(move || fleet.stream_updates(&store, updates, false, None))
            .await
            .context("writer thread")??;
    let injected = fleet.injected;
    let write_time = updates_started.elapsed();

    // 4. Wait until the daemon has applied every update.
    eprintln!("observer_load: all updates written; waiting for the daemon to apply them…");
    let target = applies_before + settings.updates as f64;
    let deadline = Instant::now() + settings.catch_up_timeout;
    let mut catch_up_scrapes = 0u32;
    let last = loop {
        let scrape = daemon.scrape().await?;
        catch_up_scrapes += 1;
        let applies = scrape.sum(
            "selfheal_watch_events_total",
            &[("resource", "pods"), ("type", "apply")],
        );
        if applies >= target {
            break scrape;
        }
        if Instant::now() > deadline {
            println!(
                "TIMEOUT: after {:.0} s the daemon had applied {} of {} updates",
                updates_started.elapsed().as_secs_f64(),
                applies - applies_before,
                settings.updates
            );
            print_watch_health(&scrape);
            bail!(
                "the daemon did not catch up within {} s of the last write",
                settings.catch_up_timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let end_to_end = updates_started.elapsed();
    let periodic_scrapes = prometheus.stop();
    let cpu_after_updates = cpu_seconds(daemon.pid(), clk_tck)?;
    let update_peak = sampler.take_peak();
    let status_after = read_status(daemon.pid())?;

    // 5. One measured scrape, and the CPU cost of scraping (to net out the polling).
    let scrape_cpu_before = cpu_seconds(daemon.pid(), clk_tck)?;
    let scrape_started = Instant::now();
    let (status, body) = daemon.get("/metrics").await?;
    let scrape_time = scrape_started.elapsed();
    ensure!(status == 200, "/metrics answered {status}");
    for _ in 0..4 {
        daemon.get("/metrics").await?;
    }
    let cpu_per_scrape = (cpu_seconds(daemon.pid(), clk_tck)? - scrape_cpu_before) / 5.0;
    let final_scrape = Exposition::parse(&body);
    let series = final_scrape.samples().len();
    let final_rss = read_status(daemon.pid())?;
    sampler.stop().await;

    // 6. Report.
    let update_cpu = cpu_after_updates - cpu_before_updates;
    let scrapes = catch_up_scrapes + periodic_scrapes;
    let scraping_cpu = cpu_per_scrape * f64::from(scrapes);
    let per_10k = |seconds: f64| seconds * 10_000.0 / settings.updates.max(1) as f64;
    let applies = last.sum(
        "selfheal_watch_events_total",
        &[("resource", "pods"), ("type", "apply")],
    ) - applies_before;
    let oom_exported = last.sum("selfheal_container_oom_kills_total", &[]);
    let restarts_exported = last.sum("selfheal_container_restarts_total", &[]);
    let peak = sync_peak.max(update_peak).max(final_rss.rss_bytes);
    let hwm = final_rss.hwm_bytes;
    let goal = match (
        settings.pods >= 10_000,
        (hwm.max(peak) as f64) / MIB < RSS_GOAL_MIB,
    ) {
        (false, _) => "not applicable below 10,000 pods",
        (true, true) => "met",
        (true, false) => "NOT MET",
    };

    let containers_ok = observed_containers == fleet.container_count() as f64;
    println!();
    println!(
        "observer_load: {} pods ({} containers, {} workloads in {} namespaces), {} updates, daemon {}",
        fleet.pods().len(),
        fleet.container_count(),
        fleet.workloads,
        namespaces,
        settings.updates,
        daemon.binary().display()
    );
    println!(
        "pods loaded: {} (lab load time {:.2} s, avg pod {:.1} KiB as JSON incl. {:.1} KiB last-applied annotation)",
        fleet.pods().len(),
        load_time.as_secs_f64(),
        fleet.json_bytes as f64 / fleet.pods().len() as f64 / 1024.0,
        fleet.annotation_bytes as f64 / fleet.pods().len() as f64 / 1024.0
    );
    println!(
        "initial sync: {:.2} s wall, RSS {:.1} MiB (peak {:.1} MiB), CPU {:.2} s; observed containers {} of {}{}",
        sync_wall.as_secs_f64(),
        sync_rss as f64 / MIB,
        sync_peak as f64 / MIB,
        sync_cpu,
        observed_containers,
        fleet.container_count(),
        mark(containers_ok)
    );
    println!(
        "updates: {} in {:.2} s wall → {:.0} events/s end-to-end (lab writes took {:.2} s → {:.0} writes/s)",
        settings.updates,
        end_to_end.as_secs_f64(),
        settings.updates as f64 / end_to_end.as_secs_f64(),
        write_time.as_secs_f64(),
        settings.updates as f64 / write_time.as_secs_f64()
    );
    println!(
        "daemon CPU: {:.2} s total for updates → {:.3} CPU-seconds per 10,000 events \
         ({:.3} net of {} scrapes at {:.1} ms CPU each: {} periodic, {} catch-up polls)",
        update_cpu,
        per_10k(update_cpu),
        per_10k((update_cpu - scraping_cpu).max(0.0)),
        scrapes,
        cpu_per_scrape * 1000.0,
        periodic_scrapes,
        catch_up_scrapes
    );
    println!(
        "daemon RSS: peak {:.1} MiB (VmHWM {:.1} MiB), after {:.1} MiB   [goal: < {RSS_GOAL_MIB} MiB at 10,000 pods: {goal}]",
        peak as f64 / MIB,
        hwm as f64 / MIB,
        status_after.rss_bytes as f64 / MIB
    );
    let oom_ok = oom_exported == injected.oom_kills as f64;
    let restarts_ok = restarts_exported == injected.restarts as f64;
    let applies_ok = applies == settings.updates as f64;
    println!(
        "correctness: oom_kills injected {} / exported {}{}; restarts injected {} / exported {}{}; \
         watch applies {} / {}{}",
        injected.oom_kills,
        oom_exported,
        mark(oom_ok),
        injected.restarts,
        restarts_exported,
        mark(restarts_ok),
        applies,
        settings.updates,
        mark(applies_ok)
    );
    println!(
        "/metrics: {} series, {} bytes, scrape took {:.1} ms; largest families: {}",
        series,
        body.len(),
        scrape_time.as_secs_f64() * 1000.0,
        final_scrape.largest_families(4)
    );
    print_watch_health(&last);
    if let Ok(lab_process) = read_status(std::process::id()) {
        println!(
            "bench process (lab + writer): VmHWM {:.0} MiB (BENCH_HISTORY={} retained changes)",
            lab_process.hwm_bytes as f64 / MIB,
            settings.history
        );
    }

    daemon.terminate();
    lab.shutdown().await;
    Ok(if oom_ok && restarts_ok && applies_ok && containers_ok {
        Verdict::Correct
    } else {
        Verdict::Wrong
    })
}

fn mark(ok: bool) -> &'static str {
    if ok { "" } else { " ← MISMATCH" }
}

/// Relists, watch errors and input anomalies: all should be zero/one in a clean run.
fn print_watch_health(scrape: &Exposition) {
    let inits = scrape.sum(
        "selfheal_watch_events_total",
        &[("resource", "pods"), ("type", "init")],
    );
    let errors = scrape.sum("selfheal_watch_errors_total", &[]);
    let anomalies = scrape.sum("selfheal_input_anomalies_total", &[]);
    println!("watch health: pod lists {inits}, watch errors {errors}, input anomalies {anomalies}");
    if inits > 1.0 {
        println!(
            "  the daemon relisted: it fell behind the lab's watch history (410 Expired) or \
             its watch failed; list items are not `apply` events, so the counts above are off \
             (raise BENCH_HISTORY if it was lowered)"
        );
    }
}

// ---------------------------------------------------------------------------------------
// The daemon process and what /proc says about it.
// ---------------------------------------------------------------------------------------

/// The release daemon against the lab, with only the built-in defaults (no config file,
/// no `SELFHEAL_*` from the caller's environment).
fn spawn_daemon(kubeconfig: &Path, dir: &Path) -> Result<Daemon> {
    Daemon::spawn(&Launch {
        who: "observer_load",
        binary: Path::new(env!("CARGO_BIN_EXE_selfheal-exporter")),
        wrapper: &[],
        kubeconfig,
        config: None,
        rust_log: "info",
        dir,
        http_timeout: HTTP_TIMEOUT,
    })
}

/// Scrapes `/metrics` periodically in the background, as Prometheus would: the scrape's
/// transient buffers are part of the daemon's real peak memory.
struct Prometheus {
    scrapes: Arc<AtomicU32>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Prometheus {
    fn start(port: u16, every: Option<Duration>) -> Prometheus {
        let scrapes = Arc::new(AtomicU32::new(0));
        let counted = scrapes.clone();
        let task = every.map(|every| {
            tokio::spawn(async move {
                let mut ticker =
                    tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                loop {
                    ticker.tick().await;
                    if let Ok((200, _)) = http_get(port, "/metrics", HTTP_TIMEOUT).await {
                        counted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        });
        Prometheus { scrapes, task }
    }

    /// Stops scraping; returns how many scrapes were answered.
    fn stop(self) -> u32 {
        if let Some(task) = self.task {
            task.abort();
        }
        self.scrapes.load(Ordering::Relaxed)
    }
}
