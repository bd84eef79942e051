//! The settings: which phases run, and at what sizes (`BENCH_*`).

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context, Result, ensure};

use crate::goals::SCRAPE_GOAL_SERIES;

pub(crate) const ALL_PHASES: [&str; 5] = ["sync10k", "sync100k", "scrape", "drain", "churn"];
/// kube-state-metrics beside the daemon: asked for by name (or `ksm` for both), never
/// part of `all`, as they need KSM built (`lab/upstream/build.sh`).
pub(crate) const KSM_PHASES: [&str; 2] = ["ksm10k", "ksm100k"];

pub(crate) struct Settings {
    pub(crate) phases: HashSet<String>,
    pub(crate) small_pods: usize,
    pub(crate) large_pods: usize,
    pub(crate) updates_per_pod: usize,
    pub(crate) history: usize,
    pub(crate) scrape_every: Option<Duration>,
    pub(crate) scrape_series: usize,
    pub(crate) drain_pods: usize,
    pub(crate) drain_updates: usize,
    pub(crate) drain_rounds: usize,
    pub(crate) churn_pods: usize,
    pub(crate) churn_per_min: usize,
    pub(crate) churn_secs: u64,
    pub(crate) churn_retention: String,
    pub(crate) churn_sample: Duration,
    pub(crate) timeout: Duration,
}

impl Settings {
    pub(crate) fn from_env(bench_mode: bool) -> Result<Settings> {
        let full = |full: usize, smoke: usize| if bench_mode { full } else { smoke };
        let phases: HashSet<String> = std::env::var("BENCH_SCALE_PHASES")
            .unwrap_or_else(|_| ALL_PHASES.join(","))
            .split(',')
            .map(|phase| phase.trim().to_ascii_lowercase())
            .filter(|phase| !phase.is_empty())
            .collect();
        for phase in &phases {
            ensure!(
                phase == "all"
                    || phase == "ksm"
                    || ALL_PHASES.contains(&phase.as_str())
                    || KSM_PHASES.contains(&phase.as_str()),
                "BENCH_SCALE_PHASES: unknown phase {phase:?} (known: {}, all; {}, ksm)",
                ALL_PHASES.join(", "),
                KSM_PHASES.join(", ")
            );
        }
        let mut phases = phases;
        if phases.remove("all") {
            phases.extend(ALL_PHASES.iter().map(ToString::to_string));
        }
        if phases.remove("ksm") {
            phases.extend(KSM_PHASES.iter().map(ToString::to_string));
        }
        let retention = std::env::var("BENCH_CHURN_RETENTION").unwrap_or_else(|_| "30s".into());
        ensure!(
            !retention.is_empty() && retention.chars().all(|c| c.is_ascii_alphanumeric()),
            "BENCH_CHURN_RETENTION={retention:?} is not a duration like 30s or 2m"
        );
        let settings = Settings {
            phases,
            small_pods: env_number("BENCH_SMALL_PODS", full(10_000, 200))?,
            large_pods: env_number("BENCH_LARGE_PODS", full(100_000, 1_000))?,
            updates_per_pod: env_number("BENCH_UPDATES_PER_POD", 4)?,
            history: env_number("BENCH_HISTORY", 50_000)?,
            scrape_every: match env_number("BENCH_SCRAPE_SECS", 15)? {
                0 => None,
                secs => Some(Duration::from_secs(secs as u64)),
            },
            scrape_series: env_number("BENCH_SCRAPE_SERIES", full(SCRAPE_GOAL_SERIES, 1_000))?,
            drain_pods: env_number("BENCH_DRAIN_PODS", full(10_000, 200))?,
            drain_updates: env_number("BENCH_DRAIN_UPDATES", full(100_000, 2_000))?,
            drain_rounds: env_number("BENCH_DRAIN_ROUNDS", full(3, 1))?.max(1),
            churn_pods: env_number("BENCH_CHURN_PODS", full(10_000, 200))?,
            churn_per_min: env_number("BENCH_CHURN_PER_MIN", 1_000)?,
            churn_secs: env_number("BENCH_CHURN_SECS", full(300, 20))? as u64,
            churn_retention: retention,
            churn_sample: Duration::from_secs(
                env_number("BENCH_CHURN_SAMPLE_SECS", full(5, 2))?.max(1) as u64,
            ),
            timeout: Duration::from_secs(env_number("BENCH_TIMEOUT_SECS", 300)?.max(1) as u64),
        };
        ensure!(
            settings.small_pods > 0 && settings.large_pods > 0,
            "pod counts must be at least 1"
        );
        ensure!(
            settings.drain_pods > 0 && settings.churn_pods > 0,
            "pod counts must be at least 1"
        );
        ensure!(settings.history > 0, "BENCH_HISTORY must be at least 1");
        Ok(settings)
    }

    pub(crate) fn wants(&self, phase: &str) -> bool {
        self.phases.contains(phase)
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
