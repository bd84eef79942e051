//! Phase churn: memory under pod churn.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use selfheal_lab::apiserver::Store;
use selfheal_lab::testkit::exposition::{Exposition, count_series};
use selfheal_lab::testkit::fleet::Fleet;
use selfheal_lab::testkit::procfs::read_status;

use crate::STOP;
use crate::daemon::{spawn_daemon, wait_applied};
use crate::goals::Goals;
use crate::rig::{Rig, mark, mib, stream};
use crate::scrape::{pod_applies, print_watch_health};
use crate::settings::Settings;

struct ChurnRow {
    pub(crate) secs: f64,
    pub(crate) rss: u64,
    pub(crate) series: Option<usize>,
    pub(crate) lab_pods: usize,
}

#[derive(Default)]
struct ChurnStats {
    pub(crate) replaced: usize,
    pub(crate) new_workloads: usize,
    pub(crate) crashed: usize,
}

pub(crate) async fn churn_phase(
    settings: &Settings,
    clk_tck: u64,
    goals: &mut Goals,
) -> Result<()> {
    let phase = "churn";
    let rig = Rig::start(settings.history).await?;
    let fleet = rig.load(settings.churn_pods, phase).await?;
    let store = rig.lab.store().clone();
    let config = rig.dir.path().join("selfheal.toml");
    std::fs::write(
        &config,
        format!("[metrics]\nretention = \"{}\"\n", settings.churn_retention),
    )
    .context("daemon config file")?;
    let mut daemon = spawn_daemon(&rig.kubeconfig, rig.dir.path(), Some(&config))?;
    eprintln!("scale[{phase}]: daemon started (pid {})", daemon.pid());
    daemon.wait_ready(settings.timeout).await?;
    let pid = daemon.pid();
    println!(
        "[{phase}] daemon config: [metrics] retention = \"{}\" (built-in default 1h), so deleted bare pods' workload series expire within the run",
        settings.churn_retention
    );
    // Warm-up: every pod through one OOMKill cycle, so that every workload already has
    // its full set of series and growth during the churn is the churn's.
    let applies_synced = pod_applies(&daemon.get("/metrics").await?.1);
    let warm_up_updates = fleet.pods().len() * settings.updates_per_pod;
    eprintln!("scale[{phase}]: warm-up: {warm_up_updates} updates…");
    let (fleet, _) = stream(fleet, &store, warm_up_updates, false).await?;
    let warm_body = wait_applied(
        &daemon,
        applies_synced + warm_up_updates as f64,
        settings.timeout,
        clk_tck,
    )
    .await?;
    let applies_synced = pod_applies(&warm_body);
    println!(
        "[{phase}] warm-up: {warm_up_updates} status updates (one OOMKill cycle per pod): /metrics {} series, daemon RSS {:.1} MiB",
        count_series(&warm_body),
        mib(read_status(pid)?.rss_bytes)
    );

    let duration = Duration::from_secs(settings.churn_secs);
    let per_second = settings.churn_per_min as f64 / 60.0;
    let stop = Arc::new(AtomicBool::new(false));
    let pods_now = Arc::new(AtomicU64::new(fleet.pods().len() as u64));
    let writer = {
        let store = store.clone();
        let stop = stop.clone();
        let pods_now = pods_now.clone();
        tokio::task::spawn_blocking(move || {
            churn_writer(fleet, &store, per_second, duration, &stop, &pods_now)
        })
    };
    eprintln!(
        "scale[{phase}]: churning {} pods a minute for {} s; RSS every {} s…",
        settings.churn_per_min,
        settings.churn_secs,
        settings.churn_sample.as_secs()
    );
    let scrape_every = settings
        .scrape_every
        .unwrap_or(Duration::from_secs(15))
        .max(settings.churn_sample);
    let started = Instant::now();
    let mut rows = Vec::new();
    let mut next_sample = started;
    let mut next_scrape = started;
    let writer_result = loop {
        let now = Instant::now();
        let scrape = now >= next_scrape;
        let series = if scrape {
            next_scrape += scrape_every;
            let (_, body) = daemon.get("/metrics").await?;
            Some(count_series(&body))
        } else {
            None
        };
        rows.push(ChurnRow {
            secs: now.duration_since(started).as_secs_f64(),
            rss: read_status(pid)?.rss_bytes,
            series,
            lab_pods: pods_now.load(Ordering::Relaxed) as usize,
        });
        if writer.is_finished() || started.elapsed() >= duration + Duration::from_millis(50) {
            stop.store(true, Ordering::SeqCst);
            break writer.await.context("churn writer thread")?;
        }
        next_sample += settings.churn_sample;
        tokio::time::sleep_until(tokio::time::Instant::from_std(next_sample)).await;
    };
    let (fleet, stats) = writer_result?;
    let churn_wall = started.elapsed();
    let churn_time = churn_wall.min(duration).as_secs_f64().max(1e-3);

    // Let the daemon catch up; its container count must match the lab's.
    let deadline = Instant::now() + settings.timeout;
    let (final_body, observed) = loop {
        daemon
            .wait_idle(Duration::from_millis(300), Duration::from_secs(5), clk_tck)
            .await?;
        let (_, body) = daemon.get("/metrics").await?;
        let observed = Exposition::parse(&body).sum("selfheal_observed_containers", &[]);
        if observed == fleet.container_count() as f64 || Instant::now() > deadline {
            break (body, observed);
        }
    };
    let containers_ok = observed == fleet.container_count() as f64;
    let last = Exposition::parse(&final_body);
    let applies = pod_applies(&final_body) - applies_synced;
    let status = read_status(pid)?;

    println!(
        "[{phase}] {} pods replaced (deleted + created) in {:.0} s = {:.0}/min; {} of them bare pods (new workloads), {} went through an OOMKill cycle; daemon applied {} watch events",
        stats.replaced,
        churn_time,
        stats.replaced as f64 * 60.0 / churn_time,
        stats.new_workloads,
        stats.crashed,
        applies
    );
    println!("[{phase}] daemon RSS curve (t = seconds since churn start):");
    println!("    t(s)   RSS(MiB)   series   lab pods");
    for row in &rows {
        println!(
            "  {:>6.0}   {:>8.1}   {:>6}   {:>8}",
            row.secs,
            mib(row.rss),
            row.series.map_or_else(|| "".to_owned(), |n| n.to_string()),
            row.lab_pods
        );
    }
    let retention = parse_duration(&settings.churn_retention).unwrap_or(Duration::ZERO);
    let warm_up = (churn_wall.as_secs_f64() * 0.4).max(retention.as_secs_f64() * 4.0);
    let steady: Vec<&ChurnRow> = rows.iter().filter(|row| row.secs >= warm_up).collect();
    let flat = if steady.len() >= 4 {
        let xs: Vec<f64> = steady.iter().map(|row| row.secs / 60.0).collect();
        let ys: Vec<f64> = steady.iter().map(|row| mib(row.rss)).collect();
        let slope = slope(&xs, &ys); // MiB per minute
        let window_min = xs[xs.len() - 1] - xs[0];
        let head = ys[..3].iter().sum::<f64>() / 3.0;
        let tail = ys[ys.len() - 3..].iter().sum::<f64>() / 3.0;
        let (low, high) = ys
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), y| (lo.min(*y), hi.max(*y)));
        let allowance = (head * 0.03).max(1.0);
        let churned_per_min = stats.replaced as f64 * 60.0 / churn_time;
        let per_thousand_kib = if churned_per_min > 0.0 {
            slope * 1024.0 * 1000.0 / churned_per_min
        } else {
            0.0
        };
        let met = tail - head <= allowance && slope * window_min <= allowance;
        println!(
            "[{phase}] after the {warm_up:.0} s warm-up: RSS {low:.1}–{high:.1} MiB, first three samples {head:.1} MiB, last three {tail:.1} MiB; trend {slope:+.2} MiB/min ({per_thousand_kib:+.0} KiB per 1,000 pods churned) → {}",
            if met { "flat" } else { "GROWING" }
        );
        Some((met, head, tail, slope, low, high))
    } else {
        println!("[{phase}] too few samples after the warm-up to judge the curve");
        None
    };
    println!(
        "[{phase}] end: daemon RSS {:.1} MiB (VmHWM {:.1} MiB); observed containers {} of {}{}; /metrics {} series",
        mib(status.rss_bytes),
        mib(status.hwm_bytes),
        observed,
        fleet.container_count(),
        mark(containers_ok),
        count_series(&final_body)
    );
    print_watch_health(phase, &last);
    goals.add(
        &format!(
            "5. RSS flat under churn ({} pods/min on {} pods, {} s, retention {})",
            settings.churn_per_min, settings.churn_pods, settings.churn_secs, settings.churn_retention
        ),
        "flat after warm-up (Δ ≤ max(1 MiB, 3 %))",
        match flat {
            Some((_, head, tail, slope, low, high)) => format!(
                "{head:.1} → {tail:.1} MiB after {warm_up:.0} s warm-up (range {low:.1}–{high:.1}, trend {slope:+.2} MiB/min); HWM {:.1} MiB",
                mib(status.hwm_bytes)
            ),
            None => "too few samples".to_owned(),
        },
        flat.map(|(met, ..)| met),
    );
    goals.correct &= containers_ok;
    daemon.terminate();
    drop(daemon);
    rig.shutdown().await;
    Ok(())
}

/// Least-squares slope of `ys` over `xs`.
fn slope(xs: &[f64], ys: &[f64]) -> f64 {
    let n = xs.len() as f64;
    let mx = xs.iter().sum::<f64>() / n;
    let my = ys.iter().sum::<f64>() / n;
    let (num, den) = xs.iter().zip(ys).fold((0.0, 0.0), |(num, den), (x, y)| {
        (num + (x - mx) * (y - my), den + (x - mx) * (x - mx))
    });
    if den > 0.0 { num / den } else { 0.0 }
}

/// `30s`, `2m`, `1h` (what BENCH_CHURN_RETENTION usually holds).
fn parse_duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let secs = match unit {
        "s" => number,
        "m" => number * 60,
        "h" => number * 3600,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

/// Replaces pods at `per_second` for `duration` (or until `stop`).
fn churn_writer(
    mut fleet: Fleet,
    store: &Store,
    per_second: f64,
    duration: Duration,
    stop: &AtomicBool,
    pods_now: &AtomicU64,
) -> Result<(Fleet, ChurnStats)> {
    let started = Instant::now();
    let mut stats = ChurnStats::default();
    while !stop.load(Ordering::Relaxed) && !STOP.load(Ordering::Relaxed) {
        let elapsed = started.elapsed();
        if elapsed >= duration {
            break;
        }
        let due = (elapsed.as_secs_f64() * per_second) as usize;
        while stats.replaced < due {
            let crash = stats.replaced % 4 == 3;
            let bare = fleet.replace_random(store, stats.replaced as u64, crash)?;
            stats.replaced += 1;
            stats.new_workloads += usize::from(bare);
            stats.crashed += usize::from(crash);
        }
        pods_now.store(fleet.pods().len() as u64, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((fleet, stats))
}
