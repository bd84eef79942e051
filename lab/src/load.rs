//! Load generator: the experiment's Postman collection runner, plus a
//! stopwatch that records the ground truth of the downtime clients saw.
//!
//! `users` virtual users each loop until the duration is over: `POST` a
//! random-ish grade to the URL, then `GET` the URL. Each user keeps one
//! HTTP/1.1 keep-alive connection and opens a new one after any failure. A
//! request fails when connecting, writing or reading fails (refused, reset,
//! closed early), when it takes longer than the timeout, or when the status is
//! not 2xx. After a failure the user pauses [`LoadConfig::failure_pause`]
//! (10 ms) so that a dead target is not hammered in a tight loop. An optional
//! think time ([`LoadConfig::think`], Postman's "delay") paces each user
//! between iterations.
//!
//! **Outage windows.** Requests are put in time order — a success at the
//! moment its answer arrived, a failure at the moment it failed, except a
//! timeout, which counts from the moment the request was sent (the target was
//! already not answering then). A window opens at the first failure while no
//! window is open (so failures before any success open one too) and closes at
//! the next success; a window still open when the run ends is reported with
//! `closed: false` and ends with the run. Windows are reported relative to the
//! start and as wall-clock time. Times are taken when a user task handles its
//! answer, which can lag by scheduling delays (milliseconds on a busy machine),
//! so a success just before a crash may be stamped after the first failure;
//! windows separated by less than [`LoadConfig::merge_gap`] (50 ms) are
//! therefore merged into one.
//!
//! **Per-second reports** count the requests that finished during that second;
//! latency quantiles are over successful requests (log-bucketed, ~1.5 %
//! precision).
//!
//! The client is deliberately minimal (plain `http://` over `tokio`'s
//! `TcpStream`, `Content-Length` and chunked bodies), and only loopback
//! targets are accepted: this is a lab tool.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Full URL of the grade endpoint, e.g. `http://127.0.0.1:31000/grade`.
    pub url: String,
    /// Concurrent virtual users.
    pub users: usize,
    /// How long users start new requests; the run ends when the last
    /// in-flight request has finished (at most `timeout` later).
    pub duration: Duration,
    /// Per-request timeout (connect + send + full answer). Default 2 s.
    pub timeout: Duration,
    /// Pause of a user after a failed request. Default 10 ms.
    pub failure_pause: Duration,
    /// Outage windows separated by less than this are reported as one.
    /// Default 50 ms (see the module docs).
    pub merge_gap: Duration,
    /// Pause of each user between iterations (Postman's runner "delay").
    /// Default 0: as fast as the target answers.
    pub think: Duration,
}

impl LoadConfig {
    /// `users` users for `duration` against `url`, with the default timeout and pause.
    pub fn new(url: impl Into<String>, users: usize, duration: Duration) -> Self {
        LoadConfig {
            url: url.into(),
            users,
            duration,
            timeout: Duration::from_secs(2),
            failure_pause: Duration::from_millis(10),
            think: Duration::ZERO,
            merge_gap: Duration::from_millis(50),
        }
    }
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The URL is not `http://host[:port][/path]`.
    #[error("invalid URL {url:?}: {why}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// The host does not resolve to loopback addresses only.
    #[error(
        "{0} is not an address of this host: the lab load generator only targets loopback \
         (127.0.0.0/8, ::1) or this host's own addresses (e.g. the real cluster's node IP on \
         its bridge), never another machine"
    )]
    NotLoopback(String),
    /// The host could not be resolved.
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        /// Host name.
        host: String,
        /// Resolver error.
        source: std::io::Error,
    },
    /// `users` is 0.
    #[error("at least one user is needed")]
    NoUsers,
}

/// Statistics of one second of the run (requests that finished in it).
#[derive(Debug, Clone, PartialEq)]
pub struct SecondReport {
    /// Seconds since the start, at the end of this interval (1, 2, ...).
    pub t: u64,
    /// Requests finished in this interval.
    pub requests: u64,
    /// Of which successful.
    pub ok: u64,
    /// Of which failed.
    pub failed: u64,
    /// Median latency of the successful ones.
    pub p50: Option<Duration>,
    /// 99th percentile latency of the successful ones.
    pub p99: Option<Duration>,
}

impl fmt::Display for SecondReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "t={}s requests={} ok={} failed={} p50={} p99={}",
            self.t,
            self.requests,
            self.ok,
            self.failed,
            fmt_ms(self.p50),
            fmt_ms(self.p99)
        )
    }
}

fn fmt_ms(d: Option<Duration>) -> String {
    match d {
        Some(d) => format!("{:.1}ms", d.as_secs_f64() * 1000.0),
        None => "-".into(),
    }
}

/// A period during which requests failed (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct OutageWindow {
    /// First failure, since the start of the run.
    pub start: Duration,
    /// Next success (or the end of the run if `!closed`), since the start.
    pub end: Duration,
    /// `end - start`.
    pub duration: Duration,
    /// `start` as wall-clock time.
    pub start_wall: Timestamp,
    /// `end` as wall-clock time.
    pub end_wall: Timestamp,
    /// Failed requests in the window.
    pub failures: u64,
    /// False when the run ended while requests were still failing.
    pub closed: bool,
}

impl fmt::Display for OutageWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "start=+{:.3}s ({:.3}) end=+{:.3}s ({:.3}) length={:.3}s failures={}{}",
            self.start.as_secs_f64(),
            self.start_wall,
            self.end.as_secs_f64(),
            self.end_wall,
            self.duration.as_secs_f64(),
            self.failures,
            if self.closed {
                ""
            } else {
                " (still failing at the end)"
            }
        )
    }
}

/// The result of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadReport {
    /// Requests made.
    pub requests: u64,
    /// Successful (2xx) requests.
    pub ok: u64,
    /// Failed requests.
    pub failures: u64,
    /// Every window during which requests failed, in time order.
    pub outage_windows: Vec<OutageWindow>,
    /// Median latency of successful requests.
    pub p50: Option<Duration>,
    /// 99th percentile latency of successful requests.
    pub p99: Option<Duration>,
    /// Wall-clock start of the run.
    pub started_at: Timestamp,
    /// Length of the run.
    pub elapsed: Duration,
}

impl LoadReport {
    /// Sum of the outage windows' lengths.
    pub fn downtime(&self) -> Duration {
        self.outage_windows.iter().map(|w| w.duration).sum()
    }

    /// Successful requests per second over the run.
    pub fn ok_rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Parsed `http://host:port/path` with the resolved loopback address.
#[derive(Debug, Clone)]
struct Target {
    addr: SocketAddr,
    host_header: String,
    path: String,
}

async fn parse_target(url: &str) -> Result<Target, LoadError> {
    let invalid = |why: &str| LoadError::InvalidUrl {
        url: url.to_string(),
        why: why.to_string(),
    };
    let rest = match url.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case("http://") => &url[7..],
        _ => return Err(invalid("only http:// URLs are supported")),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(invalid("expected http://host[:port][/path]"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(|| invalid("unclosed ["))?;
        match after {
            "" => (h, 80),
            p => (
                h,
                p.strip_prefix(':')
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(|| invalid("bad port"))?,
            ),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().map_err(|_| invalid("bad port"))?),
            None => (authority, 80),
        }
    };
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|source| LoadError::Resolve {
            host: host.to_string(),
            source,
        })?
        .collect();
    if addrs.is_empty() || addrs.iter().any(|a| !is_this_hosts(a.ip())) {
        return Err(LoadError::NotLoopback(host.to_string()));
    }
    Ok(Target {
        addr: addrs[0],
        host_header: authority.to_string(),
        path: path.to_string(),
    })
}

/// True for loopback and for the addresses of this host's interfaces (the kernel lets a
/// socket bind only to those), where traffic never leaves the machine.
fn is_this_hosts(ip: std::net::IpAddr) -> bool {
    ip.is_loopback()
        || (!ip.is_unspecified()
            && !ip.is_multicast()
            && std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok())
}

/// Log-linear latency histogram in microseconds: exact below 128 µs, then
/// 64 buckets per power of two.
#[derive(Clone)]
struct Histogram {
    counts: Vec<u64>,
    total: u64,
}

impl Histogram {
    const BUCKETS: usize = 128 + 64 * 64;

    fn new() -> Self {
        Histogram {
            counts: vec![0; Self::BUCKETS],
            total: 0,
        }
    }

    fn index(us: u64) -> usize {
        if us < 128 {
            return us as usize;
        }
        let e = 63 - u64::from(us.leading_zeros()); // >= 7
        let shift = e - 6;
        let idx = 128 + (shift - 1) * 64 + ((us >> shift) - 64);
        (idx as usize).min(Self::BUCKETS - 1)
    }

    /// Midpoint of a bucket, in µs.
    fn value(idx: usize) -> u64 {
        if idx < 128 {
            return idx as u64;
        }
        let shift = (idx as u64 - 128) / 64 + 1;
        let mantissa = (idx as u64 - 128) % 64 + 64;
        (mantissa << shift) + (1 << shift) / 2
    }

    fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.counts[Self::index(us)] += 1;
        self.total += 1;
    }

    fn quantile(&self, q: f64) -> Option<Duration> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Duration::from_micros(Self::value(i)));
            }
        }
        None
    }

    fn clear(&mut self) {
        self.counts.iter_mut().for_each(|c| *c = 0);
        self.total = 0;
    }
}

/// One finished request, as reported by a user to the aggregator.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// When it counts for outage windows (see module docs), since start.
    at: Duration,
    latency: Duration,
    ok: bool,
}

/// Builds outage windows from samples, which may arrive out of order by up
/// to the request timeout: they wait in a heap until older than a horizon.
struct Windows {
    merge_gap: Duration,
    pending: BinaryHeap<Reverse<(Duration, bool)>>,
    open: Option<(Duration, u64)>,
    done: Vec<(Duration, Duration, u64, bool)>,
}

impl Windows {
    fn new(merge_gap: Duration) -> Self {
        Windows {
            merge_gap,
            pending: BinaryHeap::new(),
            open: None,
            done: Vec::new(),
        }
    }

    fn push(&mut self, at: Duration, ok: bool) {
        self.pending.push(Reverse((at, ok)));
    }

    /// Processes, in time order, every sample at or before `until`.
    fn advance(&mut self, until: Duration) {
        while let Some(Reverse((at, ok))) = self.pending.peek().copied() {
            if at > until {
                break;
            }
            self.pending.pop();
            match (&mut self.open, ok) {
                (None, false) => {
                    // A success measured a little late must not split one outage in two.
                    match self.done.last() {
                        Some(&(start, end, n, _)) if at.saturating_sub(end) < self.merge_gap => {
                            self.done.pop();
                            self.open = Some((start, n + 1));
                        }
                        _ => self.open = Some((at, 1)),
                    }
                }
                (Some((_, n)), false) => *n += 1,
                (Some((start, n)), true) => {
                    self.done.push((*start, at, *n, true));
                    self.open = None;
                }
                (None, true) => {}
            }
        }
    }

    fn finish(mut self, end: Duration) -> Vec<(Duration, Duration, u64, bool)> {
        self.advance(Duration::MAX);
        if let Some((start, n)) = self.open.take() {
            self.done.push((start, end.max(start), n, false));
        }
        self.done
    }
}

const NAMES: &[&str] = &[
    "Harry", "Hermione", "Ron", "Luna", "Neville", "Ginny", "Draco", "Cho",
];
const SUBJECTS: &[&str] = &[
    "Potions",
    "Charms",
    "Transfiguration",
    "Herbology",
    "Astronomy",
    "Defence",
];

fn random_grade(rng: &mut fastrand::Rng) -> String {
    format!(
        r#"{{"name":"{}","subject":"{}","score":"{}"}}"#,
        NAMES[rng.usize(..NAMES.len())],
        SUBJECTS[rng.usize(..SUBJECTS.len())],
        rng.u8(0..=100)
    )
}

/// A minimal HTTP/1.1 client connection.
struct Conn {
    stream: BufReader<TcpStream>,
    line: Vec<u8>,
}

#[derive(Clone, Copy)]
enum Method {
    Get,
    Post,
}

fn bad_data(msg: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_string())
}

impl Conn {
    async fn connect(addr: SocketAddr) -> std::io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream: BufReader::with_capacity(16 * 1024, stream),
            line: Vec::with_capacity(256),
        })
    }

    /// Sends one request and reads the whole answer. Returns the status and
    /// whether the connection may be reused.
    async fn request(
        &mut self,
        target: &Target,
        method: Method,
        body: &str,
    ) -> std::io::Result<(u16, bool)> {
        let head = match method {
            Method::Get => format!(
                "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: selfheal-lab-load\r\nAccept: application/json\r\n\r\n",
                target.path, target.host_header
            ),
            Method::Post => format!(
                "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: selfheal-lab-load\r\nAccept: application/json\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
                target.path,
                target.host_header,
                body.len(),
                body
            ),
        };
        self.stream.get_mut().write_all(head.as_bytes()).await?;
        self.read_response().await
    }

    async fn read_line(&mut self) -> std::io::Result<&[u8]> {
        self.line.clear();
        let n = (&mut self.stream)
            .take(16 * 1024)
            .read_until(b'\n', &mut self.line)
            .await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if self.line.last() != Some(&b'\n') {
            return Err(bad_data("header line too long or truncated"));
        }
        Ok(self.line.trim_ascii_end())
    }

    async fn discard(&mut self, n: u64) -> std::io::Result<()> {
        let copied =
            tokio::io::copy(&mut (&mut self.stream).take(n), &mut tokio::io::sink()).await?;
        if copied < n {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }

    async fn read_response(&mut self) -> std::io::Result<(u16, bool)> {
        let status_line = self.read_line().await?;
        let text = std::str::from_utf8(status_line).map_err(|_| bad_data("bad status line"))?;
        let mut parts = text.splitn(3, ' ');
        let version = parts.next().unwrap_or_default();
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad_data("bad status line"))?;
        if !version.starts_with("HTTP/1.") {
            return Err(bad_data("not an HTTP/1.x answer"));
        }
        let mut keep_alive = version == "HTTP/1.1";
        let mut length: Option<u64> = None;
        let mut chunked = false;
        for _ in 0..200 {
            let line = self.read_line().await?;
            if line.is_empty() {
                let no_body = status < 200 || status == 204 || status == 304;
                if no_body {
                } else if chunked {
                    self.read_chunked().await?;
                } else if let Some(n) = length {
                    self.discard(n).await?;
                } else {
                    self.discard(u64::MAX).await.ok();
                    keep_alive = false;
                }
                return Ok((status, keep_alive));
            }
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                return Err(bad_data("bad header line"));
            };
            let name = &line[..colon];
            let value = std::str::from_utf8(&line[colon + 1..])
                .map_err(|_| bad_data("bad header value"))?
                .trim();
            if name.eq_ignore_ascii_case(b"content-length") {
                length = Some(value.parse().map_err(|_| bad_data("bad content-length"))?);
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                chunked = value.to_ascii_lowercase().contains("chunked");
            } else if name.eq_ignore_ascii_case(b"connection") {
                let v = value.to_ascii_lowercase();
                if v.contains("close") {
                    keep_alive = false;
                } else if v.contains("keep-alive") {
                    keep_alive = true;
                }
            }
        }
        Err(bad_data("too many headers"))
    }

    async fn read_chunked(&mut self) -> std::io::Result<()> {
        loop {
            let line = self.read_line().await?;
            let size_text = std::str::from_utf8(line)
                .map_err(|_| bad_data("bad chunk size"))?
                .split(';')
                .next()
                .unwrap_or_default()
                .trim();
            let size =
                u64::from_str_radix(size_text, 16).map_err(|_| bad_data("bad chunk size"))?;
            if size == 0 {
                // Trailers, up to the empty line.
                while !self.read_line().await?.is_empty() {}
                return Ok(());
            }
            self.discard(size + 2).await?;
        }
    }
}

async fn virtual_user(
    target: std::sync::Arc<Target>,
    config: std::sync::Arc<LoadConfig>,
    start: Instant,
    deadline: Instant,
    seed: u64,
    tx: mpsc::UnboundedSender<Sample>,
) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut conn: Option<Conn> = None;
    'run: loop {
        for method in [Method::Post, Method::Get] {
            let sent = Instant::now();
            if sent >= deadline {
                break 'run;
            }
            let body = match method {
                Method::Post => random_grade(&mut rng),
                Method::Get => String::new(),
            };
            let attempt = async {
                if conn.is_none() {
                    conn = Some(Conn::connect(target.addr).await?);
                }
                match conn.as_mut() {
                    Some(c) => c.request(&target, method, &body).await,
                    None => Err(std::io::ErrorKind::NotConnected.into()),
                }
            };
            let outcome = tokio::time::timeout(config.timeout, attempt).await;
            let finished = Instant::now();
            let (ok, at) = match outcome {
                Ok(Ok((status, keep_alive))) => {
                    if !keep_alive {
                        conn = None;
                    }
                    ((200..300).contains(&status), finished)
                }
                Ok(Err(_)) => (false, finished),
                Err(_elapsed) => (false, sent),
            };
            let sample = Sample {
                at: at.duration_since(start),
                latency: finished.duration_since(sent),
                ok,
            };
            if tx.send(sample).is_err() {
                break 'run;
            }
            if !ok {
                conn = None;
                tokio::time::sleep(config.failure_pause).await;
            }
        }
        if !config.think.is_zero() {
            tokio::time::sleep(config.think).await;
        }
    }
}

/// Runs the load as configured; calls `progress` once per second (and once
/// for the last, partial second) from the calling task. Returns when every
/// user has finished, at most `timeout` after `duration`.
pub async fn run_load(
    config: LoadConfig,
    mut progress: impl FnMut(&SecondReport),
) -> Result<LoadReport, LoadError> {
    if config.users == 0 {
        return Err(LoadError::NoUsers);
    }
    let target = std::sync::Arc::new(parse_target(&config.url).await?);
    let config = std::sync::Arc::new(config);
    let started_at = Timestamp::now();
    let start = Instant::now();
    let deadline = start + config.duration;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut users = tokio::task::JoinSet::new();
    let base_seed = fastrand::u64(..);
    for i in 0..config.users {
        users.spawn(virtual_user(
            target.clone(),
            config.clone(),
            start,
            deadline,
            base_seed.wrapping_add(i as u64),
            tx.clone(),
        ));
    }
    drop(tx);

    // Samples can arrive late by up to the timeout (timeouts count from their send time).
    let horizon = config.timeout + Duration::from_millis(250);
    let mut windows = Windows::new(config.merge_gap);
    let mut second = Histogram::new();
    let mut all = Histogram::new();
    let (mut s_req, mut s_ok) = (0u64, 0u64);
    let (mut requests, mut ok) = (0u64, 0u64);
    let mut t = 0u64;
    let mut ticker =
        tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut report_second = |t: u64, s_req: &mut u64, s_ok: &mut u64, second: &mut Histogram| {
        progress(&SecondReport {
            t,
            requests: *s_req,
            ok: *s_ok,
            failed: *s_req - *s_ok,
            p50: second.quantile(0.5),
            p99: second.quantile(0.99),
        });
        *s_req = 0;
        *s_ok = 0;
        second.clear();
    };
    loop {
        tokio::select! {
            sample = rx.recv() => {
                let Some(sample) = sample else { break };
                requests += 1;
                s_req += 1;
                if sample.ok {
                    ok += 1;
                    s_ok += 1;
                    second.record(sample.latency);
                    all.record(sample.latency);
                }
                windows.push(sample.at, sample.ok);
            }
            _ = ticker.tick() => {
                t += 1;
                report_second(t, &mut s_req, &mut s_ok, &mut second);
                windows.advance(start.elapsed().saturating_sub(horizon));
            }
        }
    }
    while users.join_next().await.is_some() {}
    let elapsed = start.elapsed();
    if s_req > 0 {
        report_second(t + 1, &mut s_req, &mut s_ok, &mut second);
    }
    let wall = |d: Duration| {
        SignedDuration::try_from(d)
            .ok()
            .and_then(|d| started_at.checked_add(d).ok())
            .unwrap_or(started_at)
    };
    let outage_windows = windows
        .finish(elapsed)
        .into_iter()
        .map(|(s, e, failures, closed)| OutageWindow {
            start: s,
            end: e,
            duration: e - s,
            start_wall: wall(s),
            end_wall: wall(e),
            failures,
            closed,
        })
        .collect();
    Ok(LoadReport {
        requests,
        ok,
        failures: requests - ok,
        outage_windows,
        p50: all.quantile(0.5),
        p99: all.quantile(0.99),
        started_at,
        elapsed,
    })
}

/// Parses a duration for the command line: `500ms`, `2s`, `1m30s`, `10m`
/// (jiff's friendly format), or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"));
    }
    let d: SignedDuration = s
        .parse()
        .map_err(|e| format!("{s:?} is not a duration like 500ms, 2s or 1m30s: {e}"))?;
    Duration::try_from(d).map_err(|_| format!("{s:?} must not be negative"))
}

/// Prints the end-of-run summary (the ground truth) as the CLI does.
pub fn print_summary(report: &LoadReport, out: &mut impl std::io::Write) -> std::io::Result<()> {
    writeln!(
        out,
        "outage windows (requests failing): {}",
        report.outage_windows.len()
    )?;
    for (i, w) in report.outage_windows.iter().enumerate() {
        writeln!(out, "  #{} {w}", i + 1)?;
    }
    writeln!(
        out,
        "totals: started={:.3} elapsed={:.3}s requests={} ok={} failed={} downtime={:.3}s ok_rate={:.0}/s p50={} p99={}",
        report.started_at,
        report.elapsed.as_secs_f64(),
        report.requests,
        report.ok,
        report.failures,
        report.downtime().as_secs_f64(),
        report.ok_rate(),
        fmt_ms(report.p50),
        fmt_ms(report.p99)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn histogram_quantiles_are_close() {
        let mut h = Histogram::new();
        for us in 1..=10_000u64 {
            h.record(Duration::from_micros(us));
        }
        let p50 = h.quantile(0.5).map(|d| d.as_micros()).unwrap_or(0) as f64;
        let p99 = h.quantile(0.99).map(|d| d.as_micros()).unwrap_or(0) as f64;
        assert!((p50 / 5000.0 - 1.0).abs() < 0.02, "{p50}");
        assert!((p99 / 9900.0 - 1.0).abs() < 0.02, "{p99}");
        for us in [0u64, 1, 127, 128, 129, 1000, 123_456, 60_000_000] {
            let v = Histogram::value(Histogram::index(us)) as f64;
            assert!(
                (v - us as f64).abs() <= (us as f64 * 0.016).max(0.5),
                "{us} -> {v}"
            );
        }
        assert_eq!(Histogram::new().quantile(0.5), None);
    }

    #[test]
    fn windows_from_out_of_order_samples() {
        let mut w = Windows::new(ms(20));
        // A failure before any success opens a window too.
        w.push(ms(5), false);
        w.push(ms(10), true);
        w.push(ms(100), true);
        w.push(ms(300), false); // a timeout sent at 300, delivered late
        w.push(ms(200), false);
        w.push(ms(250), false);
        w.push(ms(900), true);
        w.push(ms(950), true);
        w.push(ms(2000), false);
        // A late-stamped success inside an outage does not split it.
        w.push(ms(2005), true);
        w.push(ms(2010), false);
        w.advance(ms(1000));
        let done = w.finish(ms(2500));
        assert_eq!(
            done,
            vec![
                (ms(5), ms(10), 1, true),
                (ms(200), ms(900), 3, true),
                (ms(2000), ms(2500), 2, false)
            ]
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("500ms"), Ok(ms(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5"), Ok(ms(1500)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn window_display_has_millisecond_wall_clock() {
        let start_wall: Timestamp = "2026-01-02T03:04:05.123456Z".parse().unwrap();
        let w = OutageWindow {
            start: ms(1500),
            end: ms(2750),
            duration: ms(1250),
            start_wall,
            end_wall: start_wall,
            failures: 7,
            closed: true,
        };
        assert_eq!(
            w.to_string(),
            "start=+1.500s (2026-01-02T03:04:05.123Z) end=+2.750s (2026-01-02T03:04:05.123Z) length=1.250s failures=7"
        );
    }

    #[tokio::test]
    async fn urls() {
        let t = parse_target("http://127.0.0.1:31000/grade").await.unwrap();
        assert_eq!(t.addr, "127.0.0.1:31000".parse().unwrap());
        assert_eq!(t.path, "/grade");
        assert_eq!(t.host_header, "127.0.0.1:31000");
        let t = parse_target("HTTP://[::1]:8080").await.unwrap();
        assert_eq!(t.path, "/");
        assert_eq!(t.addr.port(), 8080);
        assert!(matches!(
            parse_target("https://127.0.0.1/").await,
            Err(LoadError::InvalidUrl { .. })
        ));
        assert!(matches!(
            parse_target("http://127.0.0.1:x/").await,
            Err(LoadError::InvalidUrl { .. })
        ));
        assert!(matches!(
            parse_target("http://10.1.2.3:80/").await,
            Err(LoadError::NotLoopback(_))
        ));
    }

    #[test]
    fn only_this_hosts_addresses_are_targets() {
        assert!(is_this_hosts("127.0.0.1".parse().unwrap()));
        assert!(is_this_hosts("::1".parse().unwrap()));
        // TEST-NET-2: nobody's address here.
        assert!(!is_this_hosts("198.51.100.7".parse().unwrap()));
        assert!(!is_this_hosts("0.0.0.0".parse().unwrap()));
        assert!(!is_this_hosts("224.0.0.1".parse().unwrap()));
    }
}
