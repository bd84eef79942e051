//! The built-in grade API: stores and returns grades, rejects bad bodies,
//! caps `GET /grade`, and — as a real `selfheal-lab grade-api` process —
//! starts small and grows resident memory with every stored grade.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use selfheal_lab::grade_api::{GradeApi, GradeApiConfig, LIST_LIMIT};
use serde_json::{Value, json};

/// Minimal keep-alive HTTP/1.1 client for answers with Content-Length.
struct Http {
    reader: BufReader<TcpStream>,
}

impl Http {
    fn connect(addr: SocketAddr) -> Http {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        Http {
            reader: BufReader::new(stream),
        }
    }

    /// Returns (status, lower-cased headers, body).
    fn request(
        &mut self,
        method: &str,
        body: Option<&str>,
    ) -> (u16, Vec<(String, String)>, String) {
        let body = body.unwrap_or("");
        let req = format!(
            "{method} /grade HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.reader
            .get_mut()
            .write_all(req.as_bytes())
            .expect("write");
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("status line");
        let status: u16 = line
            .split(' ')
            .nth(1)
            .expect("status")
            .parse()
            .expect("code");
        let mut headers = Vec::new();
        let mut length = 0usize;
        loop {
            line.clear();
            self.reader.read_line(&mut line).expect("header");
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').expect("header colon");
            let (k, v) = (k.to_ascii_lowercase(), v.trim().to_string());
            if k == "content-length" {
                length = v.parse().expect("length");
            }
            headers.push((k, v));
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).expect("body");
        (status, headers, String::from_utf8(body).expect("utf8"))
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_and_returns_grades() {
    let api = GradeApi::start(GradeApiConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        bytes_per_grade: 64,
    })
    .await
    .expect("start");
    let addr = api.addr();
    tokio::task::spawn_blocking(move || {
        let mut http = Http::connect(addr);
        let (status, _, body) = http.request("GET", None);
        assert_eq!((status, body.as_str()), (200, "[]"));

        let (status, _, body) = http.request(
            "POST",
            Some(r#"{"name":"Harry","subject":"Potions","score":"90"}"#),
        );
        assert_eq!(status, 201, "{body}");
        let stored: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(
            stored,
            json!({"id": 1, "name": "Harry", "subject": "Potions", "score": "90"})
        );

        let (status, _, body) = http.request("POST", Some(r#"{"name":"Harry""#));
        assert_eq!(status, 400);
        assert!(body.contains("not valid JSON"), "{body}");
        let (status, _, body) = http.request("POST", Some(r#"{"name":"Ron","score":"1"}"#));
        assert_eq!(status, 400);
        assert!(body.contains("subject"), "{body}");

        for i in 0..149 {
            let grade = format!(r#"{{"name":"N{i}","subject":"Charms","score":{i}}}"#);
            let (status, _, _) = http.request("POST", Some(&grade));
            assert_eq!(status, 201);
        }
        let (status, headers, body) = http.request("GET", None);
        assert_eq!(status, 200);
        assert_eq!(header(&headers, "x-total-count"), Some("150"));
        let list: Vec<Value> = serde_json::from_str(&body).expect("array");
        assert_eq!(list.len(), LIST_LIMIT);
        assert_eq!(list[0]["id"], 51);
        assert_eq!(
            list[99],
            json!({"id": 150, "name": "N148", "subject": "Charms", "score": "148"})
        );

        let mut health = TcpStream::connect(addr).expect("connect");
        health
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .expect("write");
        let mut answer = String::new();
        health.read_to_string(&mut answer).expect("read");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    })
    .await
    .expect("client");
    api.shutdown().await;
}

struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_server(bytes_per_grade: usize) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_selfheal-lab"))
        .args(["grade-api", "--listen", "127.0.0.1:0", "--bytes-per-grade"])
        .arg(bytes_per_grade.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn selfheal-lab grade-api");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("first line");
    // "grade-api: http://127.0.0.1:PORT/grade"
    let addr = line
        .trim()
        .strip_prefix("grade-api: http://")
        .and_then(|s| s.strip_suffix("/grade"))
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .expect("addr");
    Server { child, addr }
}

/// A `kB` field of /proc/PID/status (`VmRSS`, `RssAnon`, ...).
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS")
}

fn post_grades(http: &mut Http, n: usize) {
    for i in 0..n {
        let grade = format!(
            r#"{{"name":"N{i}","subject":"Herbology","score":"{}"}}"#,
            i % 101
        );
        let (status, _, _) = http.request("POST", Some(&grade));
        assert_eq!(status, 201);
    }
}

#[test]
fn process_is_small_at_idle_and_grows_with_grades() {
    const BYTES: usize = 4096;
    let started = Instant::now();
    let server = spawn_server(BYTES);
    let pid = server.child.id();
    let mut http = Http::connect(server.addr);
    let (status, _, _) = http.request("GET", None);
    assert_eq!(status, 200);
    assert!(started.elapsed() < Duration::from_secs(5), "slow start");
    let idle = rss_kib(pid);
    let idle_anon = status_kib(pid, "RssAnon");
    // Far below the experiment's 48Mi limit. Most of the RSS is the mapped
    // binary (large in debug builds); the process's own memory is tiny.
    assert!(idle < 40 * 1024, "idle RSS {idle} KiB");
    assert!(idle_anon < 8 * 1024, "idle anonymous RSS {idle_anon} KiB");

    post_grades(&mut http, 2000);
    let after_2k = rss_kib(pid);
    post_grades(&mut http, 2000);
    let after_4k = rss_kib(pid);
    let per_1000 = (after_4k - after_2k) as f64 / 2.0;
    eprintln!(
        "grade-api RSS: idle {idle} KiB ({idle_anon} KiB anonymous), after 2000 grades {after_2k} KiB, after 4000 {after_4k} KiB, {per_1000:.0} KiB per 1000 grades"
    );
    // Each grade keeps at least its 4 KiB of ballast resident.
    let expected = (BYTES * 1000 / 1024) as f64;
    assert!(
        per_1000 >= expected * 0.9,
        "RSS grew only {per_1000:.0} KiB per 1000 grades (expected >= {expected})"
    );
    assert!(after_2k as f64 >= idle as f64 + 2.0 * expected * 0.9);
    // The GET stays capped however many grades there are.
    let (_, headers, body) = http.request("GET", None);
    assert_eq!(header(&headers, "x-total-count"), Some("4000"));
    assert_eq!(
        serde_json::from_str::<Vec<Value>>(&body)
            .expect("array")
            .len(),
        LIST_LIMIT
    );
}

#[test]
fn process_exits_on_sigterm() {
    let mut server = spawn_server(1024);
    let pid = server.child.id().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(status) = server.child.try_wait().expect("wait") {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "still running 5 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}
