//! Fault-injection suite: does the daemon count every restart exactly once while the API
//! server misbehaves, and what do its memory and readiness do meanwhile?
//!
//! For each scenario the bench starts a fresh in-process lab API server (`selfheal-lab`)
//! and the release `selfheal-exporter` binary as a separate process, creates 50 pods
//! (30 owned by three Deployments through their ReplicaSets, 20 bare), waits for
//! `/readyz`, and then, for `FAULTS_SECS` seconds, plays the kubelet: at a steady pace
//! (`FAULTS_RATE` restarts per second, round robin over the pods) a container dies
//! (`OOMKilled`/137 and `Error`/1 alternately) and is reported the way the kubelet does,
//! in four status writes about 150 ms apart: `terminated` (previous death in `lastState`)
//! → `waiting: CrashLoopBackOff` with the death in `lastState` → `running` with
//! `restartCount`+1, not ready → ready (pod `Ready` condition with its
//! `lastTransitionTime`). Every instance has a fresh container ID and every death its
//! own `finishedAt`. The fault is active during the whole injection window. Then the
//! bench waits for the daemon to settle and compares:
//!
//! - restarts injected vs `sum(selfheal_container_restarts_total)` and OOMKills injected
//!   vs `sum(selfheal_container_oom_kills_total)`: they must be equal (a `MISMATCH` line
//!   is printed and the bench exits non-zero at the end otherwise);
//! - the daemon's peak RSS (`/proc/<pid>/status` sampled every 100 ms, and `VmHWM`);
//! - `/readyz` sampled every 100 ms from the start of the injection to the end of the
//!   settling: the fraction answered 200, and whether it is 200 at the end;
//! - `selfheal_watch_errors_total` and the relists
//!   (`selfheal_watch_events_total{resource="pods",type="init"}`, 1 = the start-up list).
//!
//! Scenarios:
//!
//! 1. `baseline`: no fault.
//! 2. `apiserver-restart`: a real outage of the API endpoint. The daemon reaches the lab
//!    through a loopback TCP proxy owned by the bench; a "restart" closes the proxy's
//!    listener and cuts every open connection (watches included), so the daemon gets
//!    `connection refused` for 3 s, then rebinds the same port in front of the same
//!    `Store`. Like a restarted kube-apiserver, whose watch cache starts at the current
//!    revision, the lab's watch history is compacted at the restart, so resumes get `410`.
//!    (The lab itself cannot stop and rebind its listener with the same store: that
//!    is why the proxy exists.) Three restarts, 7 s apart.
//! 3. `watch-drops`: `drop_watches()` every 3 s.
//! 4. `410-storm`: `compact()` + `drop_watches()` every 2 s: every reconnect relists.
//! 5. `500-bursts` / `429-bursts`: `fail_next(20, 500 | 429)` + `drop_watches()` every 4 s;
//!    whatever of a burst the daemon has not consumed after 1 s is cleared, so a burst is
//!    bounded in time as a real one is (`fail_next` alone is bounded in requests only, and a
//!    client backing off towards 30 s takes a minute to consume 20 failures across its
//!    watches: an outage, not a burst). The failures actually served are reported. kube-rs
//!    retries 429 (and 503) inside its client, so 429s may not show as watch errors.
//! 6. `hanging-probe`: the daemon probes two static targets (interval 250 ms, timeout
//!    1 s): one TCP server that accepts and never answers, and one that answers 200. The
//!    normal target's probes must keep flowing at the configured rate (≥ 80 % of
//!    window/interval successes) and the hanging one must be classified `timeout` only.
//! 8. `fast-redeaths`: restarts faster than the attribution wait. The daemon runs with
//!    `metrics.attribution_wait = "30s"`, so every pod (dying every ~8 s at the default
//!    rate) dies twice more while its previous `Error` death still waits for a
//!    probe-kill Event: the two-death ring must decide and release the oldest, never
//!    drop it (issue 12; before the fix, Error restarts were lost).
//! 9. `new-causes`: the restart paths of a 1.35+ kubelet, in turn: `OOMKilled`/137,
//!    `Error`/1, an exit its container's `restartPolicyRules` restart on (`Error`/42:
//!    `RestartRule`), an OOM kill during container start (`StartError`/128 "container init
//!    was OOM-killed (memory limit too low?)": an `OOMKilled` restart and an OOM kill), and
//!    an exit a rule answers with `RestartAllContainers` (`Error`/43, the pod condition
//!    `AllContainersRestarting`, then the kubelet's `RestartingAllContainers`/137 filler
//!    without ID or times in `lastState`). Restarts are compared by `reason` too: injected
//!    = counted for each.
//! 7. `clock-jump`: node clock skew. The kubelet's timestamps (`startedAt`, `finishedAt`,
//!    the Ready condition's `lastTransitionTime`) are true time for the first third of
//!    the window, 1 h in the future for the second, 1 h in the past for the last. Counts
//!    must still be exact; `selfheal_input_anomalies_total{kind="ClockSkew"}` is reported
//!    and the time-to-recover histogram's sum must not be negative.
//!
//! Run it (Linux only: it reads `/proc/<pid>/status`; about 4–5 minutes):
//!
//! ```text
//! cargo bench --bench faults
//! FAULTS_ONLY=baseline,410-storm FAULTS_SECS=10 cargo bench --bench faults
//! ```
//!
//! Knobs: `FAULTS_SECS` (injection window per scenario, default 20; 5 without `--bench`,
//! e.g. under `cargo test --benches`), `FAULTS_RATE` (restarts per second, default 6),
//! `FAULTS_ONLY` (comma-separated scenario names), `FAULTS_RUST_LOG` (the daemon's
//! `RUST_LOG`, default `info`; its log is kept in the temporary directory as
//! `selfheal-faults-<scenario>.log` when the counts disagree). All traffic stays on 127.0.0.1; the
//! daemon is stopped with SIGTERM at the end of each scenario, and killed by a drop
//! guard however the bench ends.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use jiff::{SignedDuration, Timestamp};
use selfheal_lab::apiserver::{ApiServer, ApiServerConfig, NAMESPACES, PODS, Store, kubeconfig};
use selfheal_lab::testkit::daemon::{Daemon, Launch};
use selfheal_lab::testkit::exposition::Exposition;
use selfheal_lab::testkit::procfs::{RssSampler, read_status};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

const MIB: f64 = 1024.0 * 1024.0;
const NS: &str = "faults";
const BARE_PODS: usize = 20;
const DEPLOYMENTS: [(&str, &str); 3] = [
    ("web", "7d4f8b9c6"),
    ("worker", "5c9d7f6b8"),
    ("gateway", "6b8c9d5f4"),
];
const REPLICAS: usize = 10;
const STEP: Duration = Duration::from_millis(150);
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// How long one GET from the daemon may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
const SETTLE_TIMEOUT: Duration = Duration::from_secs(20);
/// After the counts match, wait this long and count again: exact, not "at least".
const CONFIRM: Duration = Duration::from_secs(2);
const PROBE_INTERVAL: f64 = 0.25;
/// Requests failed per 500/429 burst, and how long a burst may stay pending.
const BURST: u64 = 20;
const BURST_LENGTH: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Scenario {
    Baseline,
    ApiServerRestart,
    WatchDrops,
    GoneStorm,
    Bursts500,
    Bursts429,
    HangingProbe,
    ClockJump,
    FastRedeaths,
    NewCauses,
}

impl Scenario {
    const ALL: [Scenario; 10] = [
        Scenario::Baseline,
        Scenario::ApiServerRestart,
        Scenario::WatchDrops,
        Scenario::GoneStorm,
        Scenario::Bursts500,
        Scenario::Bursts429,
        Scenario::HangingProbe,
        Scenario::ClockJump,
        Scenario::FastRedeaths,
        Scenario::NewCauses,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::Baseline => "baseline",
            Scenario::ApiServerRestart => "apiserver-restart",
            Scenario::WatchDrops => "watch-drops",
            Scenario::GoneStorm => "410-storm",
            Scenario::Bursts500 => "500-bursts",
            Scenario::Bursts429 => "429-bursts",
            Scenario::HangingProbe => "hanging-probe",
            Scenario::ClockJump => "clock-jump",
            Scenario::FastRedeaths => "fast-redeaths",
            Scenario::NewCauses => "new-causes",
        }
    }
}

struct Settings {
    window: Duration,
    rate: f64,
    scenarios: Vec<Scenario>,
}

impl Settings {
    fn from_env(bench_mode: bool) -> Result<Settings> {
        let secs: f64 = env_parse("FAULTS_SECS", if bench_mode { 20.0 } else { 5.0 })?;
        let rate: f64 = env_parse("FAULTS_RATE", 6.0)?;
        ensure!(
            (1.0..=600.0).contains(&secs),
            "FAULTS_SECS must be 1 to 600"
        );
        ensure!(
            (0.1..=50.0).contains(&rate),
            "FAULTS_RATE must be 0.1 to 50"
        );
        let scenarios = match std::env::var("FAULTS_ONLY") {
            Ok(list) if !list.trim().is_empty() => list
                .split(',')
                .map(|name| {
                    let name = name.trim();
                    Scenario::ALL
                        .into_iter()
                        .find(|s| s.name() == name)
                        .with_context(|| {
                            format!(
                                "FAULTS_ONLY: unknown scenario {name:?} (known: {})",
                                Scenario::ALL.map(Scenario::name).join(", ")
                            )
                        })
                })
                .collect::<Result<Vec<_>>>()?,
            _ => Scenario::ALL.to_vec(),
        };
        Ok(Settings {
            window: Duration::from_secs_f64(secs),
            rate,
            scenarios,
        })
    }
}

fn env_parse<T: std::str::FromStr>(name: &str, default: T) -> Result<T> {
    match std::env::var(name) {
        Ok(text) => text
            .trim()
            .parse()
            .ok()
            .with_context(|| format!("{name}={text:?} is not a number")),
        Err(_) => Ok(default),
    }
}

fn main() -> ExitCode {
    let bench_mode = std::env::args().any(|arg| arg == "--bench");
    let settings = match Settings::from_env(bench_mode) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("faults: {error:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime starts");
    let started = Instant::now();
    let mut outcomes = Vec::new();
    let mut failed = false;
    for &scenario in &settings.scenarios {
        eprintln!("faults: running {}…", scenario.name());
        match runtime.block_on(run_scenario(scenario, &settings)) {
            Ok(outcome) => {
                failed |= !outcome.problems.is_empty();
                outcomes.push(outcome);
            }
            Err(error) => {
                eprintln!("faults: {}: FAILED: {error:#}", scenario.name());
                failed = true;
            }
        }
    }
    print_report(&outcomes, &settings, started.elapsed());
    if failed {
        eprintln!("faults: FAILED (see MISMATCH / CHECK FAILED above)");
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// What one scenario measured.
struct Outcome {
    scenario: Scenario,
    injected_restarts: u64,
    injected_ooms: u64,
    counted_restarts: f64,
    counted_ooms: f64,
    peak_rss: u64,
    hwm: u64,
    ready_fraction: f64,
    ready_samples: u64,
    ready_at_end: bool,
    watch_errors: f64,
    relists_pods: f64,
    relists_events: f64,
    ttr_count: f64,
    ttr_sum: f64,
    clock_skew: f64,
    settle_secs: f64,
    fault_note: String,
    extra: Vec<String>,
    problems: Vec<String>,
}

async fn run_scenario(scenario: Scenario, settings: &Settings) -> Result<Outcome> {
    let dir = tempfile::tempdir().context("temporary directory")?;
    let lab = Arc::new(
        ApiServer::start(ApiServerConfig::default())
            .await
            .context("lab API server starts")?,
    );
    let proxy = Arc::new(Proxy::start(lab.addr()).await?);
    let kubeconfig = dir.path().join("kubeconfig");
    kubeconfig::write(&format!("http://127.0.0.1:{}", proxy.port), &kubeconfig)
        .context("kubeconfig written")?;
    lab.store()
        .create(&NAMESPACES, "", json!({"metadata": {"name": NS}}))
        .context("namespace created")?;
    let kubelet = Arc::new(Kubelet::create_pods(lab.store().clone())?);

    // Probe targets (hanging-probe only).
    let mut servers = JoinSet::new();
    let mut config = String::new();
    if scenario == Scenario::HangingProbe {
        let hang = TcpListener::bind("127.0.0.1:0").await?;
        let ok = TcpListener::bind("127.0.0.1:0").await?;
        config = format!(
            "[[probes.targets]]\nname = \"hang\"\nurl = \"http://{}/\"\ninterval = \"250ms\"\ntimeout = \"1s\"\n\n\
             [[probes.targets]]\nname = \"normal\"\nurl = \"http://{}/\"\ninterval = \"250ms\"\ntimeout = \"1s\"\n",
            hang.local_addr()?,
            ok.local_addr()?
        );
        servers.spawn(serve_hanging(hang));
        servers.spawn(serve_ok(ok));
    }
    if scenario == Scenario::FastRedeaths {
        config.push_str("[metrics]\nattribution_wait = \"30s\"\n");
    }

    let mut daemon = spawn_daemon(&kubeconfig, dir.path(), &config)?;
    let rss = RssSampler::start(daemon.pid(), SAMPLE_EVERY);
    daemon.wait_ready(Duration::from_secs(60)).await?;
    let before = daemon.scrape().await?;
    let observed = before.sum("selfheal_observed_containers", &[]);
    let mut problems = Vec::new();
    if observed != kubelet.pods.len() as f64 {
        problems.push(format!(
            "CHECK FAILED: {observed} containers observed after the start-up list, {} expected",
            kubelet.pods.len()
        ));
    }

    // Injection window: fault, kubelet and readiness sampling run together.
    let readiness = ReadySampler::start(daemon.port());
    let window_start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let fault = tokio::spawn(run_fault(
        scenario,
        lab.clone(),
        proxy.clone(),
        stop.clone(),
        window_start,
    ));
    let skew = (scenario == Scenario::ClockJump).then(|| {
        let kubelet = kubelet.clone();
        let window = settings.window;
        tokio::spawn(async move {
            tokio::time::sleep(window / 3).await;
            kubelet.skew_secs.store(3600, Ordering::Relaxed);
            tokio::time::sleep(window / 3).await;
            kubelet.skew_secs.store(-3600, Ordering::Relaxed);
        })
    });
    let probe_start = (scenario == Scenario::HangingProbe).then(|| ProbeCounts::of(&before));
    kubelet
        .clone()
        .inject(
            settings.rate,
            window_start + settings.window,
            scenario == Scenario::NewCauses,
        )
        .await;
    stop.store(true, Ordering::Relaxed);
    let fault_note = fault.await.context("fault task")?;
    if let Some(skew) = skew {
        let _ = skew.await;
    }
    let window_secs = window_start.elapsed().as_secs_f64();
    let window_scrape = daemon.scrape().await?;

    // Settle: until the counts match (or time runs out), then confirm after a pause.
    let injected_restarts = kubelet.injected_restarts.load(Ordering::Relaxed);
    let injected_ooms = kubelet.injected_ooms.load(Ordering::Relaxed);
    let settle_start = Instant::now();
    loop {
        let scrape = daemon.scrape().await.ok();
        let matched = scrape.as_ref().is_some_and(|s| {
            s.sum("selfheal_container_restarts_total", &[]) == injected_restarts as f64
                && s.sum("selfheal_container_oom_kills_total", &[]) == injected_ooms as f64
        });
        // fast-redeaths holds the last Error restarts for its 30 s attribution wait.
        let settle_timeout = if scenario == Scenario::FastRedeaths {
            SETTLE_TIMEOUT + Duration::from_secs(30)
        } else {
            SETTLE_TIMEOUT
        };
        if matched || settle_start.elapsed() > settle_timeout {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let settle_secs = settle_start.elapsed().as_secs_f64();
    tokio::time::sleep(CONFIRM).await;
    let last = daemon.scrape().await?;
    let (ready_samples, ready_ok) = readiness.stop().await;
    let ready_at_end = matches!(daemon.get("/readyz").await, Ok((200, _)));
    let status = read_status(daemon.pid())?;
    let peak_rss = rss.stop().await.max(status.rss_bytes);
    daemon.terminate();

    let counted_restarts = last.sum("selfheal_container_restarts_total", &[]);
    let counted_ooms = last.sum("selfheal_container_oom_kills_total", &[]);
    let mut extra = Vec::new();
    let by_reason = lock(&kubelet.injected_by_reason).clone();
    let mut reasons = Vec::new();
    for (reason, injected) in &by_reason {
        let counted = last.sum("selfheal_container_restarts_total", &[("reason", reason)]);
        reasons.push(format!("{reason} {injected}/{counted}"));
        if counted != *injected as f64 {
            problems.push(format!(
                "MISMATCH: {injected} {reason} restarts injected, {counted} counted"
            ));
        }
    }
    extra.push(format!(
        "restarts by reason, injected/counted: {}",
        reasons.join(", ")
    ));
    if counted_restarts != injected_restarts as f64 || counted_ooms != injected_ooms as f64 {
        problems.push(format!(
            "MISMATCH: injected {injected_restarts} restarts / {injected_ooms} OOMKills, \
             counted {counted_restarts} / {counted_ooms} (by reason: {})",
            last.breakdown("selfheal_container_restarts_total", "reason", &[])
        ));
        let kept = std::env::temp_dir().join(format!("selfheal-faults-{}.log", scenario.name()));
        if std::fs::copy(daemon.log(), &kept).is_ok() {
            problems.push(format!("daemon log kept at {}", kept.display()));
        }
    }
    let ttr_sum = last.sum("selfheal_container_time_to_recover_seconds_sum", &[]);
    let ttr_count = last.sum("selfheal_container_time_to_recover_seconds_count", &[]);
    if ttr_sum < 0.0 {
        problems.push(format!(
            "CHECK FAILED: time-to-recover histogram sum is negative ({ttr_sum})"
        ));
    }

    if let Some(start) = probe_start {
        let end = ProbeCounts::of(&window_scrape);
        let expected = window_secs / PROBE_INTERVAL;
        let normal_ok = end.normal_success - start.normal_success;
        let normal_other =
            end.normal_total - end.normal_success - (start.normal_total - start.normal_success);
        let hang_timeouts = end.hang_timeout - start.hang_timeout;
        let hang_other =
            end.hang_total - end.hang_timeout - (start.hang_total - start.hang_timeout);
        extra.push(format!(
            "normal target: {normal_ok} successes in {window_secs:.1} s = {:.2}/s (expected {:.2}/s at 250 ms), \
             {normal_other} failures; hanging target: {hang_timeouts} timeouts = {:.2}/s, {hang_other} other results; \
             results by class: normal [{}], hang [{}]",
            normal_ok / window_secs,
            1.0 / PROBE_INTERVAL,
            hang_timeouts / window_secs,
            last.breakdown("selfheal_probe_requests_total", "result", &[("target", "normal")]),
            last.breakdown("selfheal_probe_requests_total", "result", &[("target", "hang")]),
        ));
        if normal_ok < 0.8 * expected || normal_other > 0.0 {
            problems.push(format!(
                "CHECK FAILED: normal target got {normal_ok} successes and {normal_other} failures \
                 in {window_secs:.1} s (expected about {expected:.0} successes)"
            ));
        }
        if hang_timeouts < 0.5 * expected || hang_other > 0.0 {
            problems.push(format!(
                "CHECK FAILED: hanging target got {hang_timeouts} timeouts and {hang_other} other results"
            ));
        }
        extra.push(format!(
            "probe up: normal {:?}, hang {:?}",
            last.get("selfheal_probe_up", &[("target", "normal")]),
            last.get("selfheal_probe_up", &[("target", "hang")]),
        ));
    }
    servers.abort_all();
    let clock_skew = last.sum("selfheal_input_anomalies_total", &[("kind", "ClockSkew")]);
    let anomalies = last.breakdown("selfheal_input_anomalies_total", "kind", &[]);
    if !anomalies.is_empty() {
        extra.push(format!("input anomalies: {anomalies}"));
    }
    let stale = last.sum("selfheal_probe_stale_results_total", &[]);
    if stale > 0.0 {
        extra.push(format!("stale probe results: {stale}"));
    }

    proxy.stop().await;
    drop(lab);
    Ok(Outcome {
        scenario,
        injected_restarts,
        injected_ooms,
        counted_restarts,
        counted_ooms,
        peak_rss,
        hwm: status.hwm_bytes,
        ready_fraction: if ready_samples == 0 {
            0.0
        } else {
            ready_ok as f64 / ready_samples as f64
        },
        ready_samples,
        ready_at_end,
        watch_errors: last.sum("selfheal_watch_errors_total", &[]),
        relists_pods: last.sum(
            "selfheal_watch_events_total",
            &[("resource", "pods"), ("type", "init")],
        ),
        relists_events: last.sum(
            "selfheal_watch_events_total",
            &[("resource", "events"), ("type", "init")],
        ),
        ttr_count,
        ttr_sum,
        clock_skew,
        settle_secs,
        fault_note,
        extra,
        problems,
    })
}

fn print_report(outcomes: &[Outcome], settings: &Settings, total: Duration) {
    println!();
    println!(
        "faults: {} pods ({} Deployment-owned, {} bare), {:.0} s injection window per scenario at {} restarts/s, \
         daemon {} (total {:.0} s)",
        DEPLOYMENTS.len() * REPLICAS + BARE_PODS,
        DEPLOYMENTS.len() * REPLICAS,
        BARE_PODS,
        settings.window.as_secs_f64(),
        settings.rate,
        env!("CARGO_BIN_EXE_selfheal-exporter"),
        total.as_secs_f64()
    );
    println!();
    println!(
        "{:<20}{:<25}{:<10}{:<10}{:<8}{:<12}{:<14}relists",
        "scenario",
        "injected(restarts/ooms)",
        "counted",
        "peak RSS",
        "ready%",
        "ready@end",
        "watch errors"
    );
    for o in outcomes {
        let equal = o.counted_restarts == o.injected_restarts as f64
            && o.counted_ooms == o.injected_ooms as f64;
        println!(
            "{:<20}{:<25}{:<10}{:<10}{:<8}{:<12}{:<14}{}",
            o.scenario.name(),
            format!("{}/{}", o.injected_restarts, o.injected_ooms),
            format!(
                "{}/{}{}",
                o.counted_restarts,
                o.counted_ooms,
                if equal { "" } else { " ≠" }
            ),
            format!("{:.1} MiB", o.peak_rss as f64 / MIB),
            format!("{:.0}%", o.ready_fraction * 100.0),
            if o.ready_at_end { "yes" } else { "NO" },
            o.watch_errors,
            o.relists_pods
        );
    }
    println!();
    for o in outcomes {
        println!(
            "{}: fault: {}; VmHWM {:.1} MiB; /readyz {} samples; events relists {}; \
             time to recover: {} observations, sum {:.1} s; ClockSkew {}; counts matched after {:.1} s of settling",
            o.scenario.name(),
            o.fault_note,
            o.hwm as f64 / MIB,
            o.ready_samples,
            o.relists_events,
            o.ttr_count,
            o.ttr_sum,
            o.clock_skew,
            o.settle_secs
        );
        for line in &o.extra {
            println!("    {line}");
        }
        for line in &o.problems {
            println!("    {line}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Faults.
// ---------------------------------------------------------------------------------------

/// Runs the scenario's fault until `stop`; returns a one-line description of what it did.
async fn run_fault(
    scenario: Scenario,
    lab: Arc<ApiServer>,
    proxy: Arc<Proxy>,
    stop: Arc<AtomicBool>,
    start: Instant,
) -> String {
    let (first, period) = match scenario {
        Scenario::ApiServerRestart => (2.0, 7.0),
        Scenario::WatchDrops => (3.0, 3.0),
        Scenario::GoneStorm => (2.0, 2.0),
        Scenario::Bursts500 | Scenario::Bursts429 => (2.0, 4.0),
        Scenario::Baseline => return "none".into(),
        Scenario::HangingProbe => return "a probe target that accepts and never answers".into(),
        Scenario::ClockJump => {
            return "kubelet clock +0 h, then +1 h, then -1 h (thirds of the window)".into();
        }
        Scenario::FastRedeaths => {
            return "metrics.attribution_wait 30 s: each pod dies again while its Error death waits"
                .into();
        }
        Scenario::NewCauses => {
            return "no API fault: OOMKilled, Error, rule Restart (42), StartError OOM, rule \
                    RestartAllContainers (43) in turn"
                .into();
        }
    };
    let mut count = 0u32;
    let mut outage = Duration::ZERO;
    // apiserver-restart: the longest wait for the daemon's first reconnect after a restart.
    // bursts: the injected failures actually served.
    let mut reconnect = Duration::ZERO;
    let mut served = 0u64;
    let mut next = start + Duration::from_secs_f64(first);
    loop {
        while Instant::now() < next {
            if stop.load(Ordering::Relaxed) {
                return describe(scenario, count, outage, reconnect, served);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        count += 1;
        let faults = lab.faults();
        match scenario {
            Scenario::ApiServerRestart => {
                let down = Instant::now();
                proxy.down().await;
                tokio::time::sleep(Duration::from_secs(3)).await;
                faults.compact();
                let accepted = proxy.accepted.load(Ordering::Relaxed);
                if let Err(error) = proxy.up().await {
                    eprintln!("faults: the proxy could not rebind its port: {error:#}");
                }
                let up = Instant::now();
                outage += down.elapsed();
                while proxy.accepted.load(Ordering::Relaxed) == accepted
                    && up.elapsed() < Duration::from_secs(30)
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                reconnect = reconnect.max(up.elapsed());
            }
            Scenario::WatchDrops => faults.drop_watches(),
            Scenario::GoneStorm => {
                faults.compact();
                faults.drop_watches();
            }
            Scenario::Bursts500 | Scenario::Bursts429 => {
                // A burst lasts at most 1 s: a client that backs off must not keep a
                // count-bounded fault pending (and the API down) for a minute.
                let code = if scenario == Scenario::Bursts500 {
                    500
                } else {
                    429
                };
                faults.fail_next(BURST, code);
                faults.drop_watches();
                tokio::time::sleep(BURST_LENGTH).await;
                served += BURST - faults.pending_failures();
                faults.clear();
            }
            Scenario::Baseline
            | Scenario::HangingProbe
            | Scenario::ClockJump
            | Scenario::FastRedeaths
            | Scenario::NewCauses => {}
        }
        next += Duration::from_secs_f64(period);
    }
}

fn describe(
    scenario: Scenario,
    count: u32,
    outage: Duration,
    reconnect: Duration,
    served: u64,
) -> String {
    match scenario {
        Scenario::ApiServerRestart => format!(
            "{count} API server restarts (endpoint down, connections cut, history compacted), {:.1} s down in total; \
             the daemon's first reconnect came up to {:.1} s after the API was back",
            outage.as_secs_f64(),
            reconnect.as_secs_f64()
        ),
        Scenario::WatchDrops => format!("{count} × drop_watches() every 3 s"),
        Scenario::GoneStorm => format!("{count} × compact()+drop_watches() every 2 s"),
        Scenario::Bursts500 | Scenario::Bursts429 => format!(
            "{count} × fail_next({BURST}, {})+drop_watches() every 4 s, each cleared after {} ms; \
             {served} injected failures served",
            if scenario == Scenario::Bursts500 {
                500
            } else {
                429
            },
            BURST_LENGTH.as_millis()
        ),
        _ => String::new(),
    }
}

/// A loopback TCP proxy in front of the lab API server that can go down (listener
/// closed, every connection cut) and come back on the same port: an API server restart
/// as clients see it, with the same state behind it.
struct Proxy {
    port: u16,
    upstream: SocketAddr,
    /// Connections accepted so far.
    accepted: Arc<AtomicU64>,
    task: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let proxy = Proxy {
            port,
            upstream,
            accepted: Arc::new(AtomicU64::new(0)),
            task: tokio::sync::Mutex::new(None),
        };
        *proxy.task.lock().await = Some(tokio::spawn(proxy_loop(
            listener,
            upstream,
            proxy.accepted.clone(),
        )));
        Ok(proxy)
    }

    /// Stops listening and cuts every proxied connection.
    async fn down(&self) {
        if let Some(task) = self.task.lock().await.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens again on the same port.
    async fn up(&self) -> Result<()> {
        let mut attempts = 0;
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(listener) => break listener,
                Err(_) if attempts < 100 => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(error) => bail!("bind 127.0.0.1:{}: {error}", self.port),
            }
        };
        *self.task.lock().await = Some(tokio::spawn(proxy_loop(
            listener,
            self.upstream,
            self.accepted.clone(),
        )));
        Ok(())
    }

    async fn stop(&self) {
        self.down().await;
    }
}

/// Accepts and forwards; dropping (aborting) this task drops the `JoinSet`, which aborts
/// every connection task and closes its sockets.
async fn proxy_loop(listener: TcpListener, upstream: SocketAddr, count: Arc<AtomicU64>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((mut client, _)) = accepted else { continue };
                count.fetch_add(1, Ordering::Relaxed);
                connections.spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Accepts connections, reads what comes, never answers.
async fn serve_hanging(listener: TcpListener) {
    let mut held = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((mut socket, _)) = accepted else { continue };
                held.spawn(async move {
                    let mut buf = [0u8; 1024];
                    while matches!(socket.read(&mut buf).await, Ok(n) if n > 0) {}
                });
            }
            Some(_) = held.join_next(), if !held.is_empty() => {}
        }
    }
}

/// Answers every request `200 ok`.
async fn serve_ok(listener: TcpListener) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((mut socket, _)) = accepted else { continue };
                conns.spawn(async move {
                    let mut buf = [0u8; 2048];
                    let _ = socket.read(&mut buf).await;
                    let _ = socket
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                        .await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

// ---------------------------------------------------------------------------------------
// The kubelet.
// ---------------------------------------------------------------------------------------

/// How a container dies, and the restart `reason` the daemon must count it under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Death {
    Oom,
    Error,
    /// `Error`/42: the container's rule restarts it.
    RuleRestart,
    /// `StartError`/128, runc's OOM kill during container start.
    StartOom,
    /// `Error`/43: the container's rule restarts every container of the pod.
    RestartAll,
}

impl Death {
    const NEW_CAUSES: [Death; 5] = [
        Death::Oom,
        Death::Error,
        Death::RuleRestart,
        Death::StartOom,
        Death::RestartAll,
    ];

    /// The kubelet's termination reason and exit code, and the runtime's message.
    fn termination(self) -> (&'static str, i32, Option<&'static str>) {
        match self {
            Death::Oom => ("OOMKilled", 137, None),
            Death::Error => ("Error", 1, None),
            Death::RuleRestart => ("Error", RULE_RESTART_EXIT, None),
            Death::StartOom => (
                "StartError",
                128,
                Some(
                    "failed to create containerd task: failed to create shim task: OCI runtime \
                     create failed: runc create failed: unable to start container process: \
                     container init was OOM-killed (memory limit too low?)",
                ),
            ),
            Death::RestartAll => ("Error", RULE_RESTART_ALL_EXIT, None),
        }
    }

    fn is_oom_kill(self) -> bool {
        matches!(self, Death::Oom | Death::StartOom)
    }

    /// The `reason` label the daemon counts the restart under.
    fn counted_reason(self) -> &'static str {
        match self {
            Death::Oom | Death::StartOom => "OOMKilled",
            Death::Error => "Error",
            Death::RuleRestart => "RestartRule",
            Death::RestartAll => "RestartAllContainers",
        }
    }
}

/// The exit codes the pods' `restartPolicyRules` answer with `Restart` and with
/// `RestartAllContainers` (KEP-5307, KEP-5532).
const RULE_RESTART_EXIT: i32 = 42;
const RULE_RESTART_ALL_EXIT: i32 = 43;

/// What the kubelet leaves in `lastState` when RestartAllContainers removed a container.
const RESTARTING_ALL: &str = "RestartingAllContainers";
const RESTARTING_ALL_MESSAGE: &str =
    "The container is removed because RestartAllContainers in place";

struct PodSim {
    name: String,
    restarts: u32,
    /// Container ID of the running instance (becomes the death's ID when it dies).
    instance: String,
    instances: u32,
    started_at: String,
    last: Option<Value>,
    ready: bool,
    ready_since: String,
    busy: bool,
    /// The pod condition `AllContainersRestarting` is True (RestartAllContainers under way).
    restarting_all: bool,
}

/// Writes pod status as the kubelet does, straight into the lab's store.
struct Kubelet {
    store: Arc<Store>,
    pods: Vec<Mutex<PodSim>>,
    /// Node clock minus true time, seconds.
    skew_secs: AtomicI64,
    injected_restarts: AtomicU64,
    injected_ooms: AtomicU64,
    /// Restarts injected, by the `reason` the daemon must count them under.
    injected_by_reason: Mutex<std::collections::BTreeMap<&'static str, u64>>,
}

impl Kubelet {
    fn create_pods(store: Arc<Store>) -> Result<Kubelet> {
        let mut pods = Vec::new();
        for (deployment, hash) in DEPLOYMENTS {
            for replica in 0..REPLICAS {
                let name = format!("{deployment}-{hash}-{}", suffix(replica));
                let replica_set = format!("{deployment}-{hash}");
                let pod = pod_manifest(
                    &name,
                    json!({"app": deployment, "pod-template-hash": hash}),
                    json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": replica_set,
                            "uid": format!("uid-{replica_set}"), "controller": true,
                            "blockOwnerDeletion": true}]),
                );
                store.create(&PODS, NS, pod).context("pod created")?;
                pods.push(name);
            }
        }
        for i in 0..BARE_PODS {
            let name = format!("bare-{i}");
            store
                .create(
                    &PODS,
                    NS,
                    pod_manifest(&name, json!({"app": "bare"}), json!([])),
                )
                .context("pod created")?;
            pods.push(name);
        }
        let kubelet = Kubelet {
            store,
            pods: pods
                .into_iter()
                .map(|name| {
                    Mutex::new(PodSim {
                        instance: format!("containerd://{name}-0"),
                        name,
                        restarts: 0,
                        instances: 0,
                        started_at: String::new(),
                        last: None,
                        ready: false,
                        ready_since: String::new(),
                        busy: false,
                        restarting_all: false,
                    })
                })
                .collect(),
            skew_secs: AtomicI64::new(0),
            injected_restarts: AtomicU64::new(0),
            injected_ooms: AtomicU64::new(0),
            injected_by_reason: Mutex::default(),
        };
        let ten_minutes_ago = kubelet.node_now() - SignedDuration::from_mins(10);
        for pod in &kubelet.pods {
            let mut pod = lock(pod);
            pod.started_at = ts(ten_minutes_ago);
            let status = kubelet.running_status(&pod, true);
            kubelet.write(&mut pod, status, true)?;
        }
        Ok(kubelet)
    }

    /// The node's clock, whole seconds.
    fn node_now(&self) -> Timestamp {
        let now =
            Timestamp::now() + SignedDuration::from_secs(self.skew_secs.load(Ordering::Relaxed));
        Timestamp::from_second(now.as_second()).expect("valid timestamp")
    }

    fn running_status(&self, pod: &PodSim, ready: bool) -> Value {
        json!({
            "name": "api", "ready": ready, "started": true, "restartCount": pod.restarts,
            "image": IMAGE, "imageID": format!("docker.io/{IMAGE}@sha256:0b5f"),
            "containerID": pod.instance,
            "state": {"running": {"startedAt": pod.started_at}},
            "lastState": pod.last.clone().unwrap_or(json!({}))
        })
    }

    /// Writes the container status and the pod's Ready/ContainersReady conditions (their
    /// `lastTransitionTime` moves only when readiness changes).
    fn write(&self, pod: &mut PodSim, container: Value, ready: bool) -> Result<()> {
        if ready != pod.ready || pod.ready_since.is_empty() {
            pod.ready = ready;
            pod.ready_since = ts(self.node_now());
        }
        let condition = if ready { "True" } else { "False" };
        let since = pod.ready_since.clone();
        let all_restarting = if pod.restarting_all { "True" } else { "False" };
        self.store
            .merge_status(
                &PODS,
                NS,
                &pod.name,
                json!({
                    "phase": "Running",
                    "conditions": [
                        {"type": "Initialized", "status": "True", "lastTransitionTime": since},
                        {"type": "Ready", "status": condition, "lastTransitionTime": since},
                        {"type": "ContainersReady", "status": condition, "lastTransitionTime": since},
                        {"type": "PodScheduled", "status": "True", "lastTransitionTime": since},
                        {"type": "AllContainersRestarting", "status": all_restarting,
                         "lastTransitionTime": since}
                    ],
                    "hostIP": "10.0.0.1",
                    "podIP": "10.244.0.10",
                    "containerStatuses": [container]
                }),
            )
            .with_context(|| format!("status of {} written", pod.name))?;
        Ok(())
    }

    /// One death and restart of pod `index`, in the kubelet's four steps.
    async fn restart(&self, index: usize, kind: Death) -> Result<()> {
        let (reason, exit_code, message) = kind.termination();
        // 1. terminated; lastState still shows the previous death.
        let death = {
            let mut pod = lock(&self.pods[index]);
            // A container that never started has the zero time as its start (runc failed
            // in `create`).
            let started_at = if kind == Death::StartOom {
                "1970-01-01T00:00:00Z".to_owned()
            } else {
                pod.started_at.clone()
            };
            let mut death = json!({"terminated": {
                "reason": reason, "exitCode": exit_code,
                "startedAt": started_at,
                "finishedAt": ts(self.node_now()),
                "containerID": pod.instance
            }});
            if let Some(message) = message {
                death["terminated"]["message"] = json!(message);
            }
            pod.restarting_all = kind == Death::RestartAll;
            let status = json!({
                "name": "api", "ready": false, "started": false, "restartCount": pod.restarts,
                "image": IMAGE, "imageID": format!("docker.io/{IMAGE}@sha256:0b5f"),
                "containerID": pod.instance,
                "state": death,
                "lastState": pod.last.clone().unwrap_or(json!({}))
            });
            self.write(&mut pod, status, false)?;
            if kind.is_oom_kill() {
                self.injected_ooms.fetch_add(1, Ordering::Relaxed);
            }
            death
        };
        // RestartAllContainers: the kubelet removes the container; from then on its
        // status shows a filler without ID or times (pkg/kubelet/kubelet_pods.go).
        let death = if kind == Death::RestartAll {
            json!({"terminated": {"reason": RESTARTING_ALL, "exitCode": 137,
                                  "message": RESTARTING_ALL_MESSAGE}})
        } else {
            death
        };
        tokio::time::sleep(STEP).await;
        // 2. waiting (in CrashLoopBackOff, or while all containers restart), the death in
        // lastState.
        {
            let mut pod = lock(&self.pods[index]);
            let waiting = if kind == Death::RestartAll {
                json!({"reason": RESTARTING_ALL, "message": RESTARTING_ALL_MESSAGE})
            } else {
                json!({"reason": "CrashLoopBackOff",
                       "message": format!("back-off 10s restarting failed container=api pod={}_{NS}", pod.name)})
            };
            let status = json!({
                "name": "api", "ready": false, "started": false, "restartCount": pod.restarts,
                "image": IMAGE, "imageID": format!("docker.io/{IMAGE}@sha256:0b5f"),
                "state": {"waiting": waiting},
                "lastState": death
            });
            self.write(&mut pod, status, false)?;
        }
        tokio::time::sleep(STEP).await;
        // 3. a new instance runs: restartCount + 1, not ready yet.
        {
            let mut pod = lock(&self.pods[index]);
            pod.restarts += 1;
            pod.instances += 1;
            pod.instance = format!("containerd://{}-{}", pod.name, pod.instances);
            pod.started_at = ts(self.node_now());
            pod.last = Some(death);
            pod.restarting_all = false;
            let status = self.running_status(&pod, false);
            self.write(&mut pod, status, false)?;
            self.injected_restarts.fetch_add(1, Ordering::Relaxed);
            *lock(&self.injected_by_reason)
                .entry(kind.counted_reason())
                .or_default() += 1;
        }
        tokio::time::sleep(STEP).await;
        // 4. ready.
        let mut pod = lock(&self.pods[index]);
        let status = self.running_status(&pod, true);
        self.write(&mut pod, status, true)?;
        pod.busy = false;
        Ok(())
    }

    /// Starts one restart every 1/`rate` s, round robin over idle pods, until `until`;
    /// returns when every started restart has reached ready.
    /// `new_causes`: every restart path in turn ([`Death::NEW_CAUSES`]), else OOMKilled
    /// and Error alternately.
    async fn inject(self: Arc<Self>, rate: f64, until: Instant, new_causes: bool) {
        let mut running = JoinSet::new();
        let every = Duration::from_secs_f64(1.0 / rate);
        let mut next_at = Instant::now();
        let mut cursor = 0usize;
        let mut started = 0u64;
        while next_at < until {
            tokio::time::sleep_until(next_at.into()).await;
            next_at += every;
            let Some(index) = (0..self.pods.len())
                .map(|offset| (cursor + offset) % self.pods.len())
                .find(|&i| !lock(&self.pods[i]).busy)
            else {
                continue;
            };
            lock(&self.pods[index]).busy = true;
            cursor = index + 1;
            let kind = if new_causes {
                let turn = usize::try_from(started).unwrap_or(0) % Death::NEW_CAUSES.len();
                Death::NEW_CAUSES[turn]
            } else if started.is_multiple_of(2) {
                Death::Oom
            } else {
                Death::Error
            };
            started += 1;
            let kubelet = self.clone();
            running.spawn(async move {
                if let Err(error) = kubelet.restart(index, kind).await {
                    eprintln!("faults: kubelet: {error:#}");
                }
            });
        }
        while running.join_next().await.is_some() {}
    }
}

const IMAGE: &str = "rslim087/kubernetes-course-grade-submission-api:stateful";

fn pod_manifest(name: &str, labels: Value, owners: Value) -> Value {
    json!({
        "metadata": {"name": name, "labels": labels, "ownerReferences": owners},
        "spec": {
            "nodeName": "lab-node",
            "containers": [{
                "name": "api",
                "image": IMAGE,
                "restartPolicyRules": [
                    {"action": "Restart",
                     "exitCodes": {"operator": "In", "values": [RULE_RESTART_EXIT]}},
                    {"action": "RestartAllContainers",
                     "exitCodes": {"operator": "In", "values": [RULE_RESTART_ALL_EXIT]}}
                ],
                "resources": {"limits": {"memory": "48Mi", "cpu": "128m"}, "requests": {"memory": "48Mi"}}
            }]
        }
    })
}

/// A Kubernetes-like 5-character pod name suffix.
fn suffix(n: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|i| ALPHABET[(n * 7 + i * 13 + n / 3) % ALPHABET.len()] as char)
        .collect()
}

fn ts(at: Timestamp) -> String {
    Timestamp::from_second(at.as_second())
        .expect("valid timestamp")
        .to_string()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------------------
// The daemon process, its memory and readiness.
// ---------------------------------------------------------------------------------------

/// The release daemon against the lab (through the proxy), with `config` (TOML) as its
/// config file and none of the caller's `SELFHEAL_*`.
fn spawn_daemon(kubeconfig: &Path, dir: &Path, config: &str) -> Result<Daemon> {
    let config_path = dir.join("config.toml");
    std::fs::write(&config_path, config).context("config written")?;
    let rust_log = std::env::var("FAULTS_RUST_LOG").unwrap_or_else(|_| "info".into());
    Daemon::spawn(&Launch {
        who: "faults",
        binary: Path::new(env!("CARGO_BIN_EXE_selfheal-exporter")),
        wrapper: &[],
        kubeconfig,
        config: Some(&config_path),
        rust_log: &rust_log,
        dir,
        http_timeout: HTTP_TIMEOUT,
    })
}

/// GETs `/readyz` every 100 ms; counts samples and 200s.
struct ReadySampler {
    samples: Arc<AtomicU64>,
    ok: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl ReadySampler {
    fn start(port: u16) -> ReadySampler {
        let samples = Arc::new(AtomicU64::new(0));
        let ok = Arc::new(AtomicU64::new(0));
        let (s, o) = (samples.clone(), ok.clone());
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(SAMPLE_EVERY);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let status = tokio::time::timeout(
                    Duration::from_secs(1),
                    selfheal_lab::http_get::get(port, "/readyz"),
                )
                .await
                .ok()
                .flatten();
                s.fetch_add(1, Ordering::Relaxed);
                if matches!(status, Some((200, _))) {
                    o.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        ReadySampler { samples, ok, task }
    }

    async fn stop(self) -> (u64, u64) {
        self.task.abort();
        let _ = self.task.await;
        (
            self.samples.load(Ordering::Relaxed),
            self.ok.load(Ordering::Relaxed),
        )
    }
}

// ---------------------------------------------------------------------------------------
// What the hanging-probe scenario compares between two scrapes.
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy)]
struct ProbeCounts {
    normal_success: f64,
    normal_total: f64,
    hang_timeout: f64,
    hang_total: f64,
}

impl ProbeCounts {
    fn of(scrape: &Exposition) -> ProbeCounts {
        let requests = "selfheal_probe_requests_total";
        ProbeCounts {
            normal_success: scrape.sum(requests, &[("target", "normal"), ("result", "success")]),
            normal_total: scrape.sum(requests, &[("target", "normal")]),
            hang_timeout: scrape.sum(requests, &[("target", "hang"), ("result", "timeout")]),
            hang_total: scrape.sum(requests, &[("target", "hang")]),
        }
    }
}
