//! The load generator against a real `selfheal-lab grade-api` process that is
//! killed (SIGKILL, like an OOM kill) and restarted about a second later: the
//! report shows exactly that one outage window and no other failure.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use selfheal_lab::load::{LoadConfig, LoadError, run_load};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(addr: SocketAddr) -> Server {
    Server(
        Command::new(env!("CARGO_BIN_EXE_selfheal-lab"))
            .args(["grade-api", "--listen", &addr.to_string()])
            .args(["--bytes-per-grade", "16"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn grade-api"),
    )
}

async fn wait_listening(addr: SocketAddr) {
    for _ in 0..500 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("grade-api not listening on {addr}");
}

fn free_addr(ip: [u8; 4]) -> SocketAddr {
    let l = TcpListener::bind((std::net::Ipv4Addr::from(ip), 0)).expect("bind");
    l.local_addr().expect("addr")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_outage_window_when_the_server_is_down_for_a_second() {
    let addr = free_addr([127, 0, 4, 1]);
    let mut server = spawn(addr);
    wait_listening(addr).await;

    let config = LoadConfig::new(
        format!("http://{addr}/grade"),
        16,
        Duration::from_millis(4500),
    );
    let mut seconds = Vec::new();
    let load = tokio::spawn(async move {
        let report = run_load(config, |s| seconds.push(s.clone())).await;
        (report, seconds)
    });

    tokio::time::sleep(Duration::from_millis(1500)).await;
    // SIGKILL, like the kernel's OOM killer.
    server.0.kill().expect("kill");
    server.0.wait().expect("wait");
    let killed = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let _server = spawn(addr);
    wait_listening(addr).await;
    let down_for = killed.elapsed();

    let (report, seconds) = load.await.expect("load task");
    let report = report.expect("load report");
    eprintln!("{seconds:#?}\n{report:#?}");
    assert!(report.ok > 100, "too few successes: {report:?}");
    assert_eq!(
        report.outage_windows.len(),
        1,
        "expected exactly one outage window: {:#?}",
        report.outage_windows
    );
    let w = &report.outage_windows[0];
    assert!(w.closed);
    let secs = w.duration.as_secs_f64();
    assert!(
        (0.5..=3.0).contains(&secs),
        "window of {secs:.3}s, server down {down_for:?}"
    );
    assert!(
        w.start > Duration::from_millis(1000) && w.start < Duration::from_millis(2500),
        "{w:?}"
    );
    // No failure outside the window.
    assert_eq!(report.failures, w.failures);
    assert!(w.failures >= 1);
    assert_eq!(report.requests, report.ok + report.failures);
    assert!(report.p50.is_some() && report.p99 >= report.p50);
    // Per-second reports add up, and show the failures.
    assert!(seconds.len() >= 4, "{seconds:?}");
    assert_eq!(
        seconds.iter().map(|s| s.requests).sum::<u64>(),
        report.requests
    );
    assert_eq!(
        seconds.iter().map(|s| s.failed).sum::<u64>(),
        report.failures
    );
    assert_eq!(seconds[0].t, 1);
    let wall_ms = w.end_wall.as_millisecond() - w.start_wall.as_millisecond();
    assert!(
        (wall_ms - w.duration.as_millis() as i64).abs() <= 1,
        "{w:?}"
    );
    assert!(w.start_wall > report.started_at);
}

#[tokio::test]
async fn nothing_listening_is_one_unclosed_window() {
    let addr = free_addr([127, 0, 4, 2]);
    let config = LoadConfig::new(
        format!("http://{addr}/grade"),
        2,
        Duration::from_millis(500),
    );
    let report = run_load(config, |_| {}).await.expect("report");
    assert_eq!(report.ok, 0);
    assert!(report.failures > 0);
    assert_eq!(report.outage_windows.len(), 1);
    assert!(!report.outage_windows[0].closed);
    assert_eq!(report.outage_windows[0].failures, report.failures);
}

#[tokio::test]
async fn rejects_non_loopback_and_bad_urls() {
    let c = |url: &str| LoadConfig::new(url, 1, Duration::from_millis(100));
    assert!(matches!(
        run_load(c("http://192.0.2.1:80/grade"), |_| {}).await,
        Err(LoadError::NotLoopback(_))
    ));
    assert!(matches!(
        run_load(c("https://127.0.0.1/grade"), |_| {}).await,
        Err(LoadError::InvalidUrl { .. })
    ));
    assert!(matches!(
        run_load(
            LoadConfig::new("http://127.0.0.1:1/", 0, Duration::ZERO),
            |_| {}
        )
        .await,
        Err(LoadError::NoUsers)
    ));
}
