//! Scalability benchmark of the whole daemon: 10,000 and 100,000 pods, the daemon's own
//! event-processing capacity, `/metrics` with 100,000+ series, and memory under pod churn.
//!
//! Like `observer_load`, the release `selfheal-exporter` binary runs as a separate process
//! against an in-process lab API server (`selfheal-lab`) holding realistic pods
//! (Deployment replicas, StatefulSets, bare pods; one or two containers with memory
//! limits; a `last-applied-configuration` annotation and `managedFields`, 7–12 KB of
//! JSON each). The phases, each on a fresh lab and a fresh daemon, selected with
//! `BENCH_SCALE_PHASES` (comma-separated, default all of them):
//!
//! - `sync10k`, `sync100k` — memory and initial sync at scale. Loads `BENCH_SMALL_PODS`
//!   (10,000) or `BENCH_LARGE_PODS` (100,000) pods, starts the daemon and waits for
//!   `/readyz` (the initial list is synced): wall time, CPU (utime + stime) and RSS of the
//!   daemon. Then every pod goes through one kubelet-style OOMKill cycle
//!   (`BENCH_UPDATES_PER_POD` status updates each, default 4: ready → OOMKilled →
//!   CrashLoopBackOff → restarted → ready) while a Prometheus-like scraper reads
//!   `/metrics` every `BENCH_SCRAPE_SECS`; peak RSS (sampled every 100 ms, and `VmHWM`)
//!   against the goals of 48 MiB at 10,000 pods and 128 MiB at 100,000 pods. The counts
//!   of OOMKills and restarts exported must match what was injected.
//! - `scrape` — runs inside `sync100k` (which it implies): while the updates stream, as
//!   soon as `/metrics` has `BENCH_SCRAPE_SERIES` (100,000) series, the updates pause, the
//!   daemon is let go idle and five `GET /metrics` are timed (goal: under 250 ms); the
//!   same is done again at the end, with every series the run creates. (With 100,000
//!   pods the initial sync creates about 35,000 series; the OOMKill cycles add the
//!   crashloop gauges and the time-to-recover histograms, so the 100,000 mark comes about
//!   a third of the way through the updates.)
//! - `drain` — the daemon's own event throughput, unconstrained by the lab. The lab is
//!   slower than the daemon on both ends: its writer takes about 5,000 writes/s, and its
//!   watch encodes each event from a `serde_json::Value` on a single task (about
//!   45,000 events/s here). So the daemon talks to the lab through an in-process TCP proxy
//!   that buffers whatever the lab sends, without limit. `BENCH_DRAIN_PODS` (10,000) pods
//!   are synced and warmed up (one update each); the daemon is frozen with SIGSTOP;
//!   `BENCH_DRAIN_UPDATES` (100,000) status updates are written into the lab (whose
//!   history is sized to keep them, so the frozen watch resumes without `410 Expired`);
//!   the lab's watch encodes them all into the proxy's buffer; then SIGCONT, and the
//!   daemon reads the stream at memory speed. Its CPU time is polled every 5 ms: the
//!   drain ends at its last CPU tick once `selfheal_watch_events_total{resource="pods",
//!   type="apply"}` has counted every update (checked by a single scrape once the daemon
//!   is idle, so polling does not slow the drain). Meanwhile the bench keeps each update's
//!   watch line exactly as the lab sends it (`{"type":"MODIFIED","object":{…}}`,
//!   serialized from the same `Value` by the same serializer); afterwards, with the
//!   daemon and the lab idle, one thread decodes those lines with `serde_json` alone into
//!   `selfheal_exporter::k8s::types::SlimPod` inside a `WatchEvent { type, object }`,
//!   best of three passes (with the daemon's allocator, mimalloc, as this process's, so
//!   that both sides allocate alike). The frozen-daemon drain is likewise repeated
//!   `BENCH_DRAIN_ROUNDS` (3) times and the best kept, every round's rate printed: on
//!   this machine a single drain varies by ±10 % from run to run. Goal: drain rate ≥ 2/3 of that. A second round repeats the
//!   drain with the proxy holding back (so the lab's watch blocks, as on a direct
//!   connection) to show the rate when the lab's encoder feeds the daemon live.
//! - `churn` — memory under pod churn. `BENCH_CHURN_PODS` (10,000) pods; the daemon runs
//!   with a config file setting `[metrics] retention = BENCH_CHURN_RETENTION` (default
//!   `"30s"` instead of the built-in 1 h, so a deleted bare pod's workload series expire
//!   within the run and a steady state is reachable); every pod first goes through one
//!   OOMKill cycle (so every workload already has its full set of series); then for
//!   `BENCH_CHURN_SECS` (300) a writer deletes random pods and creates replacements at
//!   `BENCH_CHURN_PER_MIN` (1,000 a minute each way; a Deployment's pod is replaced by a
//!   new pod of the same Deployment, a StatefulSet's by the same name, a bare pod by a new
//!   bare pod, i.e. a new workload; every fourth new pod goes through an OOMKill cycle).
//!   The daemon's RSS is sampled every `BENCH_CHURN_SAMPLE_SECS` (5) and printed as a
//!   curve with the series count; the goal is a flat curve after the warm-up (the first
//!   40 % of the run, at least four retention periods).
//!
//! - `ksm10k`, `ksm100k` (`ksm` for both; not part of the default `all`) —
//!   kube-state-metrics v2.18.0 (`--resources=pods`, its `/metrics` and self-metrics on
//!   loopback ports, everything else its default) beside the daemon, both against one
//!   lab loaded with `BENCH_SMALL_PODS` or `BENCH_LARGE_PODS` pods, in the same run so
//!   the machine's load is the same for both: both sync, then every pod goes through
//!   `BENCH_UPDATES_PER_POD` updates (one OOMKill cycle) that both watch; each is caught
//!   up when idle and its `/metrics` shows every update (the daemon's watch applies,
//!   KSM's `kube_pod_container_status_restarts_total` summing to the restarts
//!   injected). Peak RSS of both, CPU per 10,000 events (catch-up scrapes left out), one
//!   timed idle `GET /metrics` each (series, bytes, ms), and the ratios. No periodic
//!   scrapes for either. KSM's binary comes from `lab/upstream/build.sh --check-ksm`:
//!   when it is not built the bench fails at once, naming the build command.
//!
//! At the end a table lists each goal as met / NOT MET with the numbers.
//!
//! Run it (Linux only: it reads `/proc/<pid>/{status,stat}`; all traffic stays on
//! 127.0.0.1; every daemon is stopped by a drop guard however the bench ends, Ctrl-C
//! included):
//!
//! ```text
//! cargo bench --bench scale                                           # everything, ~17 min
//! BENCH_SCALE_PHASES=drain cargo bench --bench scale                  # one phase
//! BENCH_SCALE_PHASES=sync100k,scrape BENCH_LARGE_PODS=50000 cargo bench --bench scale
//! BENCH_SCALE_PHASES=churn BENCH_CHURN_SECS=600 cargo bench --bench scale
//! BENCH_SCALE_PHASES=ksm cargo bench --bench scale                    # vs kube-state-metrics
//! ```
//!
//! Other knobs: `BENCH_HISTORY` (changes the lab keeps for watch resumption in the
//! `sync*` and `churn` phases, default 50,000: each stored pod version costs the bench
//! about 57 KB, as the lab keeps objects as `serde_json::Value`; at 100,000 pods the bench
//! process peaks at about 15 GB; the drain phase sizes its own history, about 6 GB),
//! `BENCH_TIMEOUT_SECS` (default 300: the longest wait for the daemon to sync or catch
//! up), `BENCH_DUMP_LINES` (a file the drain phase writes its watch lines to, one per
//! line, for decoder experiments), `BENCH_DAEMON_WRAPPER` (a command the daemon runs under, for profiling: e.g.
//! `heaptrack -o /tmp/daemon`, `taskset -c 1`, `env MALLOC_ARENA_MAX=1`; /proc figures
//! and signals still go to the daemon itself). Without `--bench` (e.g. under
//! `cargo test --benches`) it runs every phase at smoke-test sizes unless the variables
//! say otherwise.
//!
//! Files: `main.rs` (signals, the phases in order), `settings` (`BENCH_*`), `goals` (the
//! goals and the final table), `rig` (the lab and the fleet's updates), `daemon` (the
//! daemon process, waiting for it to catch up), `scrape` (timed and periodic `/metrics`
//! reads), one file per phase (`sync`, `drain` with its `proxy`, `churn`, `ksm`).

mod churn;
mod daemon;
mod drain;
mod goals;
mod ksm;
mod proxy;
mod rig;
mod scrape;
mod settings;
mod sync;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use selfheal_lab::testkit::ksm::ksm_binary;
use selfheal_lab::testkit::procfs::{clock_ticks_per_second, read_status};

use crate::churn::churn_phase;
use crate::drain::drain_phase;
use crate::goals::Goals;
use crate::ksm::ksm_phase;
use crate::rig::MIB;
use crate::settings::{ALL_PHASES, KSM_PHASES, Settings};
use crate::sync::{FleetSize, fleet_phase};

/// The daemon's allocator, so that the `serde_json`-alone baseline of the drain phase
/// decodes (and allocates) under the same conditions as the daemon.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Set on Ctrl-C / SIGTERM: writer threads stop at their next check.
pub(crate) static STOP: AtomicBool = AtomicBool::new(false);

fn main() -> ExitCode {
    let bench_mode = std::env::args().any(|arg| arg == "--bench");
    if !bench_mode {
        eprintln!("scale: run without --bench: smoke-test sizes unless BENCH_* say otherwise");
    }
    let settings = match Settings::from_env(bench_mode) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("scale: {error:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime starts");
    let outcome = runtime.block_on(async {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .context("SIGTERM handler")?;
        // Dropping `run` on a signal drops its daemons' guards, which kill them.
        tokio::select! {
            outcome = run(&settings) => outcome,
            _ = tokio::signal::ctrl_c() => {
                STOP.store(true, Ordering::SeqCst);
                bail!("interrupted")
            }
            _ = terminate.recv() => {
                STOP.store(true, Ordering::SeqCst);
                bail!("terminated")
            }
        }
    });
    STOP.store(true, Ordering::SeqCst);
    // Writer threads check STOP; do not wait for them forever.
    runtime.shutdown_timeout(Duration::from_secs(5));
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("scale: FAILED: the daemon's metrics disagree with what was injected");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("scale: FAILED: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(settings: &Settings) -> Result<bool> {
    let clk_tck = clock_ticks_per_second()?;
    let mut goals = Goals {
        correct: true,
        ..Goals::default()
    };
    // Before any phase: a missing kube-state-metrics fails the run at once.
    let ksm = if KSM_PHASES.iter().any(|phase| settings.wants(phase)) {
        Some(ksm_binary()?)
    } else {
        None
    };
    println!(
        "scale: phases {}; daemon {}; {} CPUs",
        ALL_PHASES
            .iter()
            .chain(KSM_PHASES.iter())
            .filter(|phase| settings.wants(phase)
                || (**phase == "sync100k" && settings.wants("scrape")))
            .copied()
            .collect::<Vec<_>>()
            .join(","),
        env!("CARGO_BIN_EXE_selfheal-exporter"),
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get)
    );
    if settings.wants("sync10k") {
        fleet_phase(settings, FleetSize::Small, clk_tck, &mut goals).await?;
    }
    if settings.wants("sync100k") || settings.wants("scrape") {
        fleet_phase(settings, FleetSize::Large, clk_tck, &mut goals).await?;
    }
    if settings.wants("drain") {
        drain_phase(settings, clk_tck, &mut goals).await?;
    }
    if settings.wants("churn") {
        churn_phase(settings, clk_tck, &mut goals).await?;
    }
    if let Some(binary) = &ksm {
        println!("scale: kube-state-metrics {}", binary.display());
        if settings.wants("ksm10k") {
            ksm_phase(settings, FleetSize::Small, binary, clk_tck, &mut goals).await?;
        }
        if settings.wants("ksm100k") {
            ksm_phase(settings, FleetSize::Large, binary, clk_tck, &mut goals).await?;
        }
    }
    goals.print();
    if let Ok(status) = read_status(std::process::id()) {
        println!(
            "bench process (lab + writers): VmHWM {:.0} MiB",
            status.hwm_bytes as f64 / MIB
        );
    }
    Ok(goals.correct)
}
