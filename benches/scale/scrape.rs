//! Reading `/metrics`: timed scrapes on an idle daemon, a Prometheus-like periodic
//! scraper, and the watch counters.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use selfheal_lab::testkit::daemon::Daemon;
use selfheal_lab::testkit::exposition::{Exposition, count_series, http_get};

use crate::rig::HTTP_TIMEOUT;

/// Timed scrapes per measurement.
pub(crate) const TIMED_SCRAPES: usize = 5;
pub(crate) const APPLY_COUNTER: &str = "selfheal_watch_events_total";

/// A timed series of quiet `/metrics` requests.
pub(crate) struct ScrapeTiming {
    pub(crate) series: usize,
    pub(crate) bytes: usize,
    /// Milliseconds, in request order.
    pub(crate) millis: Vec<f64>,
    pub(crate) cpu_ms_each: f64,
}

impl ScrapeTiming {
    pub(crate) fn sorted(&self) -> Vec<f64> {
        let mut sorted = self.millis.clone();
        sorted.sort_by(f64::total_cmp);
        sorted
    }

    pub(crate) fn median(&self) -> f64 {
        self.sorted()[self.millis.len() / 2]
    }

    pub(crate) fn max(&self) -> f64 {
        self.sorted()[self.millis.len() - 1]
    }

    pub(crate) fn describe(&self) -> String {
        let each: Vec<String> = self.millis.iter().map(|ms| format!("{ms:.0}")).collect();
        format!(
            "{} series, {:.1} MB: {} back-to-back GETs of /metrics took {} ms (median {:.0}), daemon CPU {:.0} ms each",
            self.series,
            self.bytes as f64 / 1e6,
            self.millis.len(),
            each.join(", "),
            self.median(),
            self.cpu_ms_each
        )
    }
}

/// `TIMED_SCRAPES` back-to-back GETs of /metrics on an idle daemon.
pub(crate) async fn timed_scrapes(daemon: &Daemon, clk_tck: u64) -> Result<ScrapeTiming> {
    let mut millis = Vec::new();
    let mut series = 0;
    let mut bytes = 0;
    let cpu_before = daemon.cpu(clk_tck)?;
    for _ in 0..TIMED_SCRAPES {
        let started = Instant::now();
        let (status, body) = daemon.get("/metrics").await?;
        millis.push(started.elapsed().as_secs_f64() * 1000.0);
        ensure!(status == 200, "/metrics answered {status}");
        series = count_series(&body);
        bytes = body.len();
    }
    let cpu_ms_each = (daemon.cpu(clk_tck)? - cpu_before) * 1000.0 / TIMED_SCRAPES as f64;
    Ok(ScrapeTiming {
        series,
        bytes,
        millis,
        cpu_ms_each,
    })
}

/// Relists, watch errors and input anomalies: all should be zero/one in a clean run.
pub(crate) fn print_watch_health(phase: &str, scrape: &Exposition) {
    let inits = scrape.sum(APPLY_COUNTER, &[("resource", "pods"), ("type", "init")]);
    let errors = scrape.sum("selfheal_watch_errors_total", &[]);
    let anomalies = scrape.sum("selfheal_input_anomalies_total", &[]);
    let dropped = scrape.sum("selfheal_series_dropped_total", &[]);
    println!(
        "[{phase}] watch health: pod lists {inits}, watch errors {errors}, input anomalies {anomalies}, series dropped {dropped}"
    );
    if inits > 1.0 {
        println!(
            "[{phase}]   the daemon relisted (it fell behind the lab's history or its watch failed): \
             list items are not `apply` events, so the counts above are off"
        );
    }
}

/// Scrapes `/metrics` periodically in the background, as Prometheus would: the scrape's
/// transient buffers are part of the daemon's real peak memory.
pub(crate) struct Prometheus {
    pub(crate) log: Arc<std::sync::Mutex<ScrapeLog>>,
    pub(crate) task: Option<tokio::task::JoinHandle<()>>,
}

/// What the periodic scrapes saw.
#[derive(Default, Clone, Copy)]
pub(crate) struct ScrapeLog {
    pub(crate) count: u32,
    pub(crate) slowest_ms: f64,
    pub(crate) slowest_series: usize,
}

impl ScrapeLog {
    pub(crate) fn merge(&mut self, other: ScrapeLog) {
        self.count += other.count;
        if other.slowest_ms > self.slowest_ms {
            self.slowest_ms = other.slowest_ms;
            self.slowest_series = other.slowest_series;
        }
    }
}

impl Prometheus {
    pub(crate) fn start(port: u16, every: Option<Duration>) -> Prometheus {
        let log = Arc::new(std::sync::Mutex::new(ScrapeLog::default()));
        let shared = log.clone();
        let task = every.map(|every| {
            tokio::spawn(async move {
                let mut ticker =
                    tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                loop {
                    ticker.tick().await;
                    let started = Instant::now();
                    if let Ok((200, body)) = http_get(port, "/metrics", HTTP_TIMEOUT).await {
                        let millis = started.elapsed().as_secs_f64() * 1000.0;
                        let series = count_series(&body);
                        let mut log = shared
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        log.merge(ScrapeLog {
                            count: 1,
                            slowest_ms: millis,
                            slowest_series: series,
                        });
                    }
                }
            })
        });
        Prometheus { log, task }
    }

    /// Stops scraping; returns what the answered scrapes saw.
    pub(crate) fn stop(self) -> ScrapeLog {
        if let Some(task) = self.task {
            task.abort();
        }
        *self
            .log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// `selfheal_watch_events_total{resource="pods",type="apply"}`, without parsing the rest.
pub(crate) fn pod_applies(body: &str) -> f64 {
    body.lines()
        .filter(|line| {
            line.starts_with("selfheal_watch_events_total{")
                && line.contains("resource=\"pods\"")
                && line.contains("type=\"apply\"")
        })
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}
