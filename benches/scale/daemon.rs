//! The daemon process under test, and waiting for it to catch up.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use selfheal_lab::testkit::daemon::{Daemon, Launch};
use selfheal_lab::testkit::exposition::Exposition;

use crate::rig::HTTP_TIMEOUT;
use crate::scrape::{pod_applies, print_watch_health};

/// The release daemon against the lab, with `config` as its config file and none of the
/// caller's `SELFHEAL_*`; under `BENCH_DAEMON_WRAPPER` if set.
pub(crate) fn spawn_daemon(kubeconfig: &Path, dir: &Path, config: Option<&Path>) -> Result<Daemon> {
    // A profiler to run the daemon under, e.g. `heaptrack -o /tmp/daemon` or
    // `perf record -g -o /tmp/daemon.perf --`.
    let wrapper: Vec<String> = std::env::var("BENCH_DAEMON_WRAPPER")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    Daemon::spawn(&Launch {
        who: "scale",
        binary: Path::new(env!("CARGO_BIN_EXE_selfheal-exporter")),
        wrapper: &wrapper,
        kubeconfig,
        config,
        rust_log: "info",
        dir,
        http_timeout: HTTP_TIMEOUT,
    })
}

/// Waits until `daemon` has counted `target` pod watch `apply` events; returns the
/// /metrics body that showed it. Scrapes only when the daemon looks idle (or every
/// 2 s), so polling costs the daemon little.
pub(crate) async fn wait_applied(
    daemon: &Daemon,
    target: f64,
    timeout: Duration,
    clk_tck: u64,
) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        daemon
            .wait_idle(Duration::from_millis(200), Duration::from_secs(2), clk_tck)
            .await?;
        let (status, body) = daemon.get("/metrics").await?;
        ensure!(status == 200, "/metrics answered {status}");
        let applies = pod_applies(&body);
        if applies >= target {
            return Ok(body);
        }
        if Instant::now() > deadline {
            let scrape = Exposition::parse(&body);
            print_watch_health("timeout", &scrape);
            bail!(
                "the daemon applied {applies} of {target} pod events within {} s",
                timeout.as_secs()
            );
        }
    }
}
