//! One HTTP probe: send the request, judge the answer, classify the failure.

use std::error::Error as _;
use std::io;
use std::time::{Duration, Instant};

use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};

use super::target::ProbeSpec;

/// The outcome of one probe, as exported in the `result` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProbeResult {
    Success,
    Timeout,
    ConnectionRefused,
    ConnectionReset,
    Dns,
    Tls,
    HttpStatus,
    BodyMismatch,
}

impl ProbeResult {
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeResult::Success => "success",
            ProbeResult::Timeout => "timeout",
            ProbeResult::ConnectionRefused => "connection_refused",
            ProbeResult::ConnectionReset => "connection_reset",
            ProbeResult::Dns => "dns",
            ProbeResult::Tls => "tls",
            ProbeResult::HttpStatus => "http_status",
            ProbeResult::BodyMismatch => "body_mismatch",
        }
    }

    pub fn is_success(self) -> bool {
        self == ProbeResult::Success
    }
}

impl EncodeLabelValue for ProbeResult {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

/// Bodies are read only to match `body_regex`, and never beyond this.
const MAX_BODY: usize = 1 << 20;

/// Builds the HTTP client for one target.
pub fn client_for(spec: &ProbeSpec) -> reqwest::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .timeout(spec.timeout)
        .connect_timeout(spec.timeout)
        // The probe judges the target itself, not where it redirects to.
        .redirect(reqwest::redirect::Policy::none())
        // A proxy from the daemon's environment would measure the proxy, not the target.
        .no_proxy()
        .user_agent(concat!("selfheal-exporter/", env!("CARGO_PKG_VERSION")));
    if !spec.reuse_connections {
        builder = builder.pool_max_idle_per_host(0);
    }
    builder.build()
}

/// Runs one probe; returns its result and how long it took.
pub async fn probe(client: &reqwest::Client, spec: &ProbeSpec) -> (ProbeResult, Duration) {
    let started = Instant::now();
    let result = run(client, spec).await;
    (result, started.elapsed())
}

async fn run(client: &reqwest::Client, spec: &ProbeSpec) -> ProbeResult {
    let mut request = client
        .request(spec.method.clone(), spec.url.clone())
        .headers(spec.headers.clone());
    if let Some(body) = &spec.body {
        request = request.body(body.clone());
    }
    let mut response = match request.send().await {
        Ok(response) => response,
        Err(error) => return classify(&error),
    };
    if !spec.expect_status.accepts(response.status().as_u16()) {
        return ProbeResult::HttpStatus;
    }
    let Some(pattern) = &spec.body_regex else {
        return ProbeResult::Success;
    };
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                body.extend_from_slice(&chunk);
                if body.len() >= MAX_BODY {
                    break;
                }
            }
            Ok(None) => break,
            Err(error) => return classify(&error),
        }
    }
    if pattern.is_match(&String::from_utf8_lossy(&body)) {
        ProbeResult::Success
    } else {
        ProbeResult::BodyMismatch
    }
}

/// Maps a request error to a failure class by walking its causes.
pub fn classify(error: &reqwest::Error) -> ProbeResult {
    if error.is_timeout() {
        return ProbeResult::Timeout;
    }
    let mut source = error.source();
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<io::Error>() {
            match io.kind() {
                io::ErrorKind::ConnectionRefused => return ProbeResult::ConnectionRefused,
                io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::UnexpectedEof => return ProbeResult::ConnectionReset,
                io::ErrorKind::TimedOut => return ProbeResult::Timeout,
                _ => {}
            }
        }
        if cause.downcast_ref::<rustls::Error>().is_some() {
            return ProbeResult::Tls;
        }
        let text = cause.to_string();
        if text.contains("dns error") || text.contains("failed to lookup address") {
            return ProbeResult::Dns;
        }
        source = cause.source();
    }
    if error.is_connect() {
        // Could not connect for another reason (e.g. no route): the client saw no answer.
        ProbeResult::ConnectionRefused
    } else {
        // The connection broke mid-request (e.g. closed before a complete response).
        ProbeResult::ConnectionReset
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::target::StaticTarget;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn spec(url: &str, tweak: impl FnOnce(&mut StaticTarget)) -> ProbeSpec {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut target: StaticTarget = toml::from_str(&format!(
            "name = \"t\"\nurl = \"{url}\"\ntimeout = \"300ms\""
        ))
        .expect("target");
        tweak(&mut target);
        target.compile().expect("valid")
    }

    async fn once(spec: &ProbeSpec) -> ProbeResult {
        let client = client_for(spec).expect("client");
        probe(&client, spec).await.0
    }

    /// A server that answers each connection with `response` (or, if None, closes it at once).
    async fn server(response: Option<&'static str>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 2048];
                    let _ = socket.read(&mut buf).await;
                    if let Some(response) = response {
                        let _ = socket.write_all(response.as_bytes()).await;
                    }
                });
            }
        });
        format!("http://{addr}/health")
    }

    #[tokio::test]
    async fn classifies_what_clients_see() {
        let ok = server(Some("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")).await;
        assert_eq!(once(&spec(&ok, |_| {})).await, ProbeResult::Success);
        assert_eq!(
            once(&spec(&ok, |t| t.body_regex = Some("hel+o".into()))).await,
            ProbeResult::Success
        );
        assert_eq!(
            once(&spec(&ok, |t| t.body_regex = Some("bye".into()))).await,
            ProbeResult::BodyMismatch
        );
        let unavailable = server(Some(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n",
        ))
        .await;
        assert_eq!(
            once(&spec(&unavailable, |_| {})).await,
            ProbeResult::HttpStatus
        );
        assert_eq!(
            once(&spec(&unavailable, |t| t.expect_status = "503".into())).await,
            ProbeResult::Success
        );
        let closes = server(None).await;
        assert_eq!(
            once(&spec(&closes, |_| {})).await,
            ProbeResult::ConnectionReset
        );

        let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = free.local_addr().expect("addr").port();
        drop(free);
        let refused = format!("http://127.0.0.1:{port}/");
        assert_eq!(
            once(&spec(&refused, |_| {})).await,
            ProbeResult::ConnectionRefused
        );

        // Accepts but never answers.
        let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let hangs = format!("http://{}/", silent.local_addr().expect("addr"));
        assert_eq!(once(&spec(&hangs, |_| {})).await, ProbeResult::Timeout);
        drop(silent);
        // `dns` is not exercised here: resolving a name would send traffic off this machine.
    }
}
