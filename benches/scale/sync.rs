//! Phases sync10k / sync100k (+ scrape): memory and initial sync at scale.

use std::time::{Duration, Instant};

use anyhow::Result;
use selfheal_lab::testkit::exposition::{Exposition, count_series};
use selfheal_lab::testkit::procfs::{RssSampler, read_status};

use crate::daemon::{spawn_daemon, wait_applied};
use crate::goals::{
    Goals, RSS_GOAL_LARGE_MIB, RSS_GOAL_SMALL_MIB, SCRAPE_GOAL_MS, SCRAPE_GOAL_SERIES,
    SYNC_CPU_GOAL_SECS,
};
use crate::rig::{Rig, SAMPLE_EVERY, mark, mib, stream};
use crate::scrape::{
    Prometheus, ScrapeLog, ScrapeTiming, TIMED_SCRAPES, pod_applies, print_watch_health,
    timed_scrapes,
};
use crate::settings::Settings;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum FleetSize {
    Small,
    Large,
}

pub(crate) async fn fleet_phase(
    settings: &Settings,
    size: FleetSize,
    clk_tck: u64,
    goals: &mut Goals,
) -> Result<()> {
    let (phase, pods, goal_mib) = match size {
        FleetSize::Small => ("sync10k", settings.small_pods, RSS_GOAL_SMALL_MIB),
        FleetSize::Large => ("sync100k", settings.large_pods, RSS_GOAL_LARGE_MIB),
    };
    let scrape_goal = size == FleetSize::Large && settings.wants("scrape");
    let rig = Rig::start(settings.history).await?;
    let fleet = rig.load(pods, phase).await?;
    let store = rig.lab.store().clone();

    let daemon_started = Instant::now();
    let mut daemon = spawn_daemon(&rig.kubeconfig, rig.dir.path(), None)?;
    eprintln!(
        "scale[{phase}]: daemon started (pid {}); waiting for /readyz…",
        daemon.pid()
    );
    let sampler = RssSampler::start(daemon.pid(), SAMPLE_EVERY);
    daemon.wait_ready(settings.timeout).await?;
    let sync_wall = daemon_started.elapsed();
    let sync_cpu = daemon.cpu(clk_tck)?;
    let sync_rss = read_status(daemon.pid())?.rss_bytes;
    let sync_peak = sampler.peak().max(sync_rss);
    let (_, baseline_body) = daemon.get("/metrics").await?;
    let baseline = Exposition::parse(&baseline_body);
    let applies_before = pod_applies(&baseline_body);
    let observed = baseline.sum("selfheal_observed_containers", &[]);
    let containers_ok = observed == fleet.container_count() as f64;
    println!(
        "[{phase}] initial sync of {pods} pods: {:.2} s wall, daemon CPU {:.2} s (utime+stime), RSS {:.1} MiB (peak {:.1} MiB); observed containers {} of {}{}; /metrics {} series",
        sync_wall.as_secs_f64(),
        sync_cpu,
        mib(sync_rss),
        mib(sync_peak),
        observed,
        fleet.container_count(),
        mark(containers_ok),
        baseline.samples().len()
    );

    // The updates: one OOMKill cycle per pod by default, in chunks when the scrape goal
    // needs a pause at BENCH_SCRAPE_SERIES series.
    let total = pods * settings.updates_per_pod;
    eprintln!("scale[{phase}]: streaming {total} status updates…");
    let cpu_before_updates = daemon.cpu(clk_tck)?;
    let updates_started = Instant::now();
    let mut prometheus = Prometheus::start(daemon.port(), settings.scrape_every);
    let mut periodic = ScrapeLog::default();
    let mut fleet = fleet;
    let mut written = 0;
    let mut at_target: Option<(usize, ScrapeTiming, u64)> = None;
    let mut paused = Duration::ZERO;
    if scrape_goal {
        let chunk = (pods / 20).clamp(1_000, 10_000);
        let mut series = baseline.samples().len();
        while series < settings.scrape_series && written < total {
            let count = chunk.min(total - written);
            (fleet, _) = stream(fleet, &store, count, false).await?;
            written += count;
            let target = applies_before + written as f64;
            let body = wait_applied(&daemon, target, settings.timeout, clk_tck).await?;
            series = count_series(&body);
        }
        if series >= settings.scrape_series {
            let pause = Instant::now();
            periodic.merge(prometheus.stop());
            let timing = timed_scrapes(&daemon, clk_tck).await?;
            let peak_so_far = sampler.peak().max(read_status(daemon.pid())?.hwm_bytes);
            println!(
                "[scrape] after {written} updates, idle daemon: {}; daemon RSS peak so far {:.1} MiB",
                timing.describe(),
                mib(peak_so_far)
            );
            at_target = Some((written, timing, peak_so_far));
            prometheus = Prometheus::start(daemon.port(), settings.scrape_every);
            paused = pause.elapsed();
        } else {
            println!(
                "[scrape] /metrics reached only {series} series after all {total} updates (target {})",
                settings.scrape_series
            );
        }
    }
    let write_started = Instant::now();
    (fleet, _) = stream(fleet, &store, total - written, false).await?;
    let write_rest = write_started.elapsed();
    eprintln!("scale[{phase}]: all updates written; waiting for the daemon to apply them…");
    let target = applies_before + total as f64;
    let last_body = wait_applied(&daemon, target, settings.timeout, clk_tck).await?;
    let end_to_end = updates_started.elapsed() - paused;
    periodic.merge(prometheus.stop());
    let update_cpu = daemon.cpu(clk_tck)? - cpu_before_updates;
    let final_timing = timed_scrapes(&daemon, clk_tck).await?;
    let status = read_status(daemon.pid())?;
    let peak = sampler.peak().max(status.rss_bytes);
    sampler.stop().await;
    let worst = peak.max(status.hwm_bytes);

    let last = Exposition::parse(&last_body);
    let applies = pod_applies(&last_body) - applies_before;
    let oom_exported = last.sum("selfheal_container_oom_kills_total", &[]);
    let restarts_exported = last.sum("selfheal_container_restarts_total", &[]);
    let oom_ok = oom_exported == fleet.injected.oom_kills as f64;
    let restarts_ok = restarts_exported == fleet.injected.restarts as f64;
    let applies_ok = applies == total as f64;
    println!(
        "[{phase}] updates: {total} in {:.1} s → {:.0} events/s end-to-end (writer-bound: the last {} writes took {:.1} s → {:.0} writes/s); daemon CPU {:.2} s → {:.3} CPU-s per 10,000 events (incl. {} periodic scrapes and the catch-up polls)",
        end_to_end.as_secs_f64(),
        total as f64 / end_to_end.as_secs_f64().max(1e-9),
        total - written,
        write_rest.as_secs_f64(),
        (total - written) as f64 / write_rest.as_secs_f64().max(1e-9),
        update_cpu,
        update_cpu * 10_000.0 / total.max(1) as f64,
        periodic.count
    );
    println!(
        "[{phase}] correctness: oom_kills injected {} / exported {}{}; restarts injected {} / exported {}{}; watch applies {} / {}{}",
        fleet.injected.oom_kills,
        oom_exported,
        mark(oom_ok),
        fleet.injected.restarts,
        restarts_exported,
        mark(restarts_ok),
        applies,
        total,
        mark(applies_ok)
    );
    print_watch_health(phase, &last);
    if periodic.count > 0 {
        println!(
            "[{phase}] periodic scrapes during the updates: {}, slowest {:.0} ms at {} series",
            periodic.count, periodic.slowest_ms, periodic.slowest_series
        );
    }
    println!(
        "[{phase}] /metrics at the end, idle daemon: {}; largest families: {}",
        final_timing.describe(),
        last.largest_families(5)
    );
    println!(
        "[{phase}] daemon RSS: peak {:.1} MiB (sampled every 100 ms; VmHWM {:.1} MiB), after {:.1} MiB   [goal < {goal_mib} MiB at {pods} pods]",
        mib(peak),
        mib(status.hwm_bytes),
        mib(status.rss_bytes)
    );
    if let Ok(bench) = read_status(std::process::id()) {
        println!(
            "[{phase}] bench process (lab + writer): RSS {:.0} MiB (BENCH_HISTORY={})",
            mib(bench.rss_bytes),
            settings.history
        );
    }

    let rss_met = mib(worst) <= goal_mib;
    let early = match &at_target {
        Some((after, timing, peak)) => format!(
            "; {:.1} MiB through sync + {after} updates + scrapes at {} series",
            mib(*peak),
            timing.series
        ),
        None => String::new(),
    };
    goals.add(
        &format!("1. peak RSS at {pods} pods"),
        &format!("≤ {goal_mib} MiB"),
        format!(
            "{:.1} MiB through sync (peak {:.1}), {total} updates (an OOMKill cycle per pod) and scrapes at up to {} series{early}",
            mib(worst),
            mib(sync_peak),
            final_timing.series
        ),
        Some(rss_met),
    );
    if size == FleetSize::Large {
        goals.add(
            &format!("2. initial sync of {pods} pods"),
            &format!("< {SYNC_CPU_GOAL_SECS} s daemon CPU"),
            format!(
                "{sync_cpu:.2} s CPU ({:.2} s wall)",
                sync_wall.as_secs_f64()
            ),
            Some(sync_cpu < SYNC_CPU_GOAL_SECS),
        );
    }
    if scrape_goal {
        match &at_target {
            Some((after, timing, _)) => goals.add(
                "4. /metrics with ≥ 100,000 series",
                &format!("< {SCRAPE_GOAL_MS} ms"),
                format!(
                    "{:.0} ms median of {TIMED_SCRAPES} (max {:.0}) at {} series, {:.1} MB ({pods} pods, after {after} updates); {:.0} ms at {} series at the end",
                    timing.median(),
                    timing.max(),
                    timing.series,
                    timing.bytes as f64 / 1e6,
                    final_timing.median(),
                    final_timing.series
                ),
                (timing.series >= SCRAPE_GOAL_SERIES).then_some(timing.median() < SCRAPE_GOAL_MS),
            ),
            None => goals.add(
                "4. /metrics with ≥ 100,000 series",
                &format!("< {SCRAPE_GOAL_MS} ms"),
                format!(
                    "{:.0} ms at only {} series",
                    final_timing.median(),
                    final_timing.series
                ),
                None,
            ),
        }
    }
    goals.correct &= oom_ok && restarts_ok && applies_ok && containers_ok;
    daemon.terminate();
    drop(daemon);
    rig.shutdown().await;
    Ok(())
}
