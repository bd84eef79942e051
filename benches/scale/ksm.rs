//! Phases ksm10k / ksm100k: kube-state-metrics (`--resources=pods`, everything else its
//! default) beside the daemon, both against the same lab API server loaded with the same
//! fleet, in the same run, so that the machine's load (shared, on this project's 2-core
//! machine) is the same for both.
//!
//! Both start at once and sync the same pods; then every pod goes through
//! `BENCH_UPDATES_PER_POD` kubelet-like status updates (one OOMKill cycle), which both
//! watch. Each is caught up when it is idle (no CPU tick for a second) and its `/metrics`
//! shows every update: the daemon's `selfheal_watch_events_total{type="apply"}` counts
//! them all, KSM's `kube_pod_container_status_restarts_total` sums to the restarts
//! injected and `kube_pod_info` lists every pod. No periodic scrapes (for neither); the
//! CPU of the catch-up scrapes is left out of the update CPU. Then, both idle, one timed
//! `GET /metrics` each: series, bytes, wall time. Peak RSS is sampled every 100 ms from
//! the start to the end, scrapes included, and checked against `VmHWM`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use selfheal_lab::testkit::exposition::{count_series, http_get};
use selfheal_lab::testkit::ksm::{Ksm, KsmCounts, pod_list_pages, pod_watches};
use selfheal_lab::testkit::procfs::{RssSampler, cpu_seconds, read_status};

use crate::daemon::spawn_daemon;
use crate::goals::Goals;
use crate::rig::{HTTP_TIMEOUT, MIB, Rig, SAMPLE_EVERY, mark, mib, stream};
use crate::scrape::pod_applies;
use crate::settings::Settings;
use crate::sync::FleetSize;

/// How long a process's CPU time must stand still for it to count as idle.
const QUIET: Duration = Duration::from_secs(1);

/// One of the two exporters, as the phase measures it.
struct Side<'a> {
    name: &'a str,
    pid: u32,
    port: u16,
}

/// What the phase measured of one exporter.
#[derive(Default)]
struct Figures {
    sync_cpu: f64,
    sync_wall: f64,
    update_cpu: f64,
    catch_up_wall: f64,
    scrape_ms: f64,
    scrape_series: usize,
    scrape_bytes: usize,
    scrape_cpu: f64,
    peak: u64,
    hwm: u64,
}

pub(crate) async fn ksm_phase(
    settings: &Settings,
    size: FleetSize,
    binary: &Path,
    clk_tck: u64,
    goals: &mut Goals,
) -> Result<()> {
    let (phase, pods) = match size {
        FleetSize::Small => ("ksm10k", settings.small_pods),
        FleetSize::Large => ("ksm100k", settings.large_pods),
    };
    let rig = Rig::start(settings.history).await?;
    let fleet = rig.load(pods, phase).await?;
    let store = rig.lab.store().clone();

    let started = Instant::now();
    let mut daemon = spawn_daemon(&rig.kubeconfig, rig.dir.path(), None)?;
    let mut ksm = Ksm::spawn(binary, &rig.kubeconfig, &rig.dir.path().join("ksm.log"))?;
    eprintln!(
        "scale[{phase}]: daemon (pid {}) and kube-state-metrics (pid {}, :{} and :{}) started; waiting for both to sync…",
        daemon.pid(),
        ksm.pid(),
        ksm.port(),
        ksm.telemetry_port()
    );
    let daemon_rss = RssSampler::start(daemon.pid(), SAMPLE_EVERY);
    let ksm_rss = RssSampler::start(ksm.pid(), SAMPLE_EVERY);
    let us = Side {
        name: "daemon",
        pid: daemon.pid(),
        port: daemon.port(),
    };
    let them = Side {
        name: "kube-state-metrics",
        pid: ksm.pid(),
        port: ksm.port(),
    };
    let mut ours = Figures::default();
    let mut theirs = Figures::default();

    // The initial sync: the daemon's /readyz; KSM's first pod watch (its reflector
    // watches once the whole list is in its store), then idle.
    daemon.wait_ready(settings.timeout).await?;
    ours.sync_wall = started.elapsed().as_secs_f64();
    ours.sync_cpu = daemon.cpu(clk_tck)?;
    let deadline = Instant::now() + settings.timeout;
    loop {
        ksm.check_running()?;
        if let Ok((200, telemetry)) = http_get(ksm.telemetry_port(), "/metrics", HTTP_TIMEOUT).await
            && pod_watches(&telemetry) >= 1.0
        {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "kube-state-metrics did not list and watch the pods within {} s; its log:\n{}",
                settings.timeout.as_secs(),
                ksm.log_tail(30)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_quiet(&them, clk_tck, settings.timeout).await?;
    theirs.sync_wall = (started.elapsed() - QUIET).as_secs_f64();
    theirs.sync_cpu = cpu_seconds(them.pid, clk_tck)?;
    let (sync_ours, sync_theirs) = (daemon_rss.peak(), ksm_rss.peak());
    println!(
        "[{phase}] initial sync of {pods} pods ({} containers), both at once: daemon {:.2} s CPU ({:.1} s wall to /readyz), peak RSS {:.1} MiB; kube-state-metrics {:.2} s CPU ({:.1} s wall to its pod watch + idle), peak RSS {:.1} MiB",
        fleet.container_count(),
        ours.sync_cpu,
        ours.sync_wall,
        mib(sync_ours),
        theirs.sync_cpu,
        theirs.sync_wall,
        mib(sync_theirs)
    );

    // The updates, watched by both.
    let total = pods * settings.updates_per_pod;
    let (_, baseline) = daemon.get("/metrics").await?;
    let applies_before = pod_applies(&baseline);
    eprintln!("scale[{phase}]: streaming {total} status updates…");
    let cpu_before = (daemon.cpu(clk_tck)?, cpu_seconds(them.pid, clk_tck)?);
    let updates_started = Instant::now();
    let (fleet, _) = stream(fleet, &store, total, false).await?;
    let written = updates_started.elapsed().as_secs_f64();
    eprintln!(
        "scale[{phase}]: all updates written in {written:.1} s; waiting for both to catch up…"
    );
    let target = applies_before + total as f64;
    let daemon_body = caught_up(&us, clk_tck, settings.timeout, &mut ours, |body| {
        pod_applies(body) >= target
    })
    .await?;
    ours.update_cpu -= cpu_before.0;
    ours.catch_up_wall = updates_started.elapsed().as_secs_f64();
    let restarts = fleet.injected.restarts as f64;
    let ksm_body = caught_up(&them, clk_tck, settings.timeout, &mut theirs, |body| {
        let counts = KsmCounts::of(body);
        counts.restarts == restarts && counts.pods == pods
    })
    .await?;
    theirs.update_cpu -= cpu_before.1;
    theirs.catch_up_wall = updates_started.elapsed().as_secs_f64();
    ksm.check_running()?;

    let daemon_applies = pod_applies(&daemon_body) - applies_before;
    let daemon_ooms = sum_of(&daemon_body, "selfheal_container_oom_kills_total");
    let daemon_restarts = sum_of(&daemon_body, "selfheal_container_restarts_total");
    drop(daemon_body);
    let ksm_counts = KsmCounts::of(&ksm_body);
    drop(ksm_body);
    let oom_ok = daemon_ooms == fleet.injected.oom_kills as f64;
    let restarts_ok = daemon_restarts == restarts;
    let applies_ok = daemon_applies == total as f64;
    println!(
        "[{phase}] correctness: injected {} restarts, {} OOM kills; daemon: {daemon_restarts} restarts{}, {daemon_ooms} OOM kills{}, {daemon_applies} of {total} watch applies{}; kube-state-metrics: restarts_total sums to {}{}, {} pods in kube_pod_info, last_terminated_reason OOMKilled on {} containers (a 0/1 gauge of the last death only)",
        fleet.injected.restarts,
        fleet.injected.oom_kills,
        mark(restarts_ok),
        mark(oom_ok),
        mark(applies_ok),
        ksm_counts.restarts,
        mark(ksm_counts.restarts == restarts),
        ksm_counts.pods,
        ksm_counts.last_oom_killed
    );

    // KSM's own view of its lists and watches (a relist, e.g. after falling behind the
    // lab's history, shows as a second round of pages), and its errors and warnings
    // (klog's E and W lines).
    let (_, telemetry) = http_get(ksm.telemetry_port(), "/metrics", HTTP_TIMEOUT).await?;
    let log = std::fs::read_to_string(rig.dir.path().join("ksm.log")).unwrap_or_default();
    let complaints: Vec<&str> = log
        .lines()
        .filter(|line| line.starts_with('E') || line.starts_with('W'))
        .collect();
    println!(
        "[{phase}] kube-state-metrics: {} pod list pages (500 pods a page: {} for one list), {} pod watches started; {} error/warning log lines{}",
        pod_list_pages(&telemetry),
        pods.div_ceil(500),
        pod_watches(&telemetry),
        complaints.len(),
        complaints
            .iter()
            .take(5)
            .map(|line| format!("\n    {line}"))
            .collect::<String>()
    );

    // One timed scrape each, both idle.
    timed_scrape(&us, clk_tck, settings.timeout, &mut ours).await?;
    timed_scrape(&them, clk_tck, settings.timeout, &mut theirs).await?;
    ksm.check_running()?;
    for (side, figures, sampler) in [(&us, &mut ours, daemon_rss), (&them, &mut theirs, ksm_rss)] {
        let status = read_status(side.pid)?;
        figures.peak = sampler.stop().await.max(status.rss_bytes);
        figures.hwm = status.hwm_bytes;
    }

    let per_10k = |cpu: f64| cpu * 10_000.0 / total.max(1) as f64;
    for (side, f) in [(&us, &ours), (&them, &theirs)] {
        println!(
            "[{phase}] {}: peak RSS {:.1} MiB (sampled every 100 ms; VmHWM {:.1} MiB); sync {:.2} s CPU; updates {:.2} s CPU → {:.3} CPU-s per 10,000 events (caught up {:.1} s after the first write); one idle GET /metrics: {} series, {:.1} MB in {:.0} ms ({:.0} ms CPU)",
            side.name,
            mib(f.peak),
            mib(f.hwm),
            f.sync_cpu,
            f.update_cpu,
            per_10k(f.update_cpu),
            f.catch_up_wall,
            f.scrape_series,
            f.scrape_bytes as f64 / 1e6,
            f.scrape_ms,
            f.scrape_cpu * 1000.0
        );
    }
    let ratio = |theirs: f64, ours: f64| theirs / ours.max(1e-9);
    let peak_ours = ours.peak.max(ours.hwm) as f64;
    let peak_theirs = theirs.peak.max(theirs.hwm) as f64;
    println!(
        "[{phase}] kube-state-metrics / daemon: peak RSS {:.1}×, sync CPU {:.1}×, update CPU {:.1}×, series {:.1}×, scrape time {:.1}×",
        ratio(peak_theirs, peak_ours),
        ratio(theirs.sync_cpu, ours.sync_cpu),
        ratio(theirs.update_cpu, ours.update_cpu),
        ratio(theirs.scrape_series as f64, ours.scrape_series as f64),
        ratio(theirs.scrape_ms, ours.scrape_ms)
    );
    goals.add(
        &format!("ksm. peak RSS at {pods} pods, vs kube-state-metrics"),
        "(comparison)",
        format!(
            "daemon {:.1} MiB, kube-state-metrics {:.1} MiB ({:.1}×)",
            peak_ours / MIB,
            peak_theirs / MIB,
            ratio(peak_theirs, peak_ours)
        ),
        None,
    );
    goals.add(
        &format!("ksm. CPU per 10,000 events at {pods} pods, vs kube-state-metrics"),
        "(comparison)",
        format!(
            "daemon {:.3} s, kube-state-metrics {:.3} s ({:.1}×); sync {:.2} s vs {:.2} s",
            per_10k(ours.update_cpu),
            per_10k(theirs.update_cpu),
            ratio(theirs.update_cpu, ours.update_cpu),
            ours.sync_cpu,
            theirs.sync_cpu
        ),
        None,
    );
    goals.add(
        &format!("ksm. one /metrics at {pods} pods, vs kube-state-metrics"),
        "(comparison)",
        format!(
            "daemon {} series in {:.0} ms, kube-state-metrics {} series in {:.0} ms",
            ours.scrape_series, ours.scrape_ms, theirs.scrape_series, theirs.scrape_ms
        ),
        None,
    );
    goals.correct &= oom_ok && restarts_ok && applies_ok && ksm_counts.restarts == restarts;
    daemon.terminate();
    drop(daemon);
    drop(ksm);
    rig.shutdown().await;
    Ok(())
}

/// The sum of every sample of `name` (cheaper than parsing the whole body).
fn sum_of(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Returns once `side`'s CPU time has stood still for [`QUIET`]; fails after `timeout`.
async fn wait_quiet(side: &Side<'_>, clk_tck: u64, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = cpu_seconds(side.pid, clk_tck)?;
    let mut since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let cpu = cpu_seconds(side.pid, clk_tck)?;
        if cpu > last {
            last = cpu;
            since = Instant::now();
        } else if since.elapsed() >= QUIET {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{} was never idle for {} s within {} s",
            side.name,
            QUIET.as_secs(),
            timeout.as_secs()
        );
    }
}

/// `GET /metrics` of `side`, which must answer 200.
async fn metrics(side: &Side<'_>) -> Result<String> {
    let (status, body) = http_get(side.port, "/metrics", HTTP_TIMEOUT).await?;
    ensure!(status == 200, "{}: /metrics answered {status}", side.name);
    Ok(body)
}

/// Waits until `side` is idle and its `/metrics` satisfies `done`; returns that body and
/// sets `figures.update_cpu` to its CPU time at that idle moment less every catch-up
/// scrape's CPU.
async fn caught_up(
    side: &Side<'_>,
    clk_tck: u64,
    timeout: Duration,
    figures: &mut Figures,
    done: impl Fn(&str) -> bool,
) -> Result<String> {
    let deadline = Instant::now() + timeout;
    let mut earlier_scrapes = 0.0;
    loop {
        wait_quiet(side, clk_tck, timeout).await?;
        let before = cpu_seconds(side.pid, clk_tck)?;
        let body = metrics(side).await?;
        if done(&body) {
            figures.update_cpu = before - earlier_scrapes;
            return Ok(body);
        }
        earlier_scrapes += cpu_seconds(side.pid, clk_tck)? - before;
        ensure!(
            Instant::now() < deadline,
            "{} did not catch up within {} s",
            side.name,
            timeout.as_secs()
        );
    }
}

/// One `GET /metrics` of idle `side`, timed.
async fn timed_scrape(
    side: &Side<'_>,
    clk_tck: u64,
    timeout: Duration,
    figures: &mut Figures,
) -> Result<()> {
    wait_quiet(side, clk_tck, timeout).await?;
    let cpu = cpu_seconds(side.pid, clk_tck)?;
    let started = Instant::now();
    let body = metrics(side).await?;
    figures.scrape_ms = started.elapsed().as_secs_f64() * 1000.0;
    figures.scrape_cpu = cpu_seconds(side.pid, clk_tck)? - cpu;
    figures.scrape_series = count_series(&body);
    figures.scrape_bytes = body.len();
    Ok(())
}
