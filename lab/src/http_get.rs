//! A minimal HTTP/1.1 GET over loopback (or the real cluster's node IP, which is this
//! host's), for the demo and the tests that read the daemon's endpoints (no client
//! library needed for `Connection: close` requests).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// GETs `path` from 127.0.0.1:`port`; `None` when there is no complete answer in time.
pub async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    get_with(port, path, None).await
}

/// Like [`get`], with an `Accept` header.
pub async fn get_with(port: u16, path: &str, accept: Option<&str>) -> Option<(u16, String)> {
    get_within(port, path, accept, Duration::from_secs(10)).await
}

/// Like [`get_with`], allowing `timeout` for the answer (a large `/metrics` under load
/// takes longer than the default 10 s). A chunked body cut short (no final empty chunk)
/// is no answer: the daemon aborts a scrape that way.
pub async fn get_within(
    port: u16,
    path: &str,
    accept: Option<&str>,
    timeout: Duration,
) -> Option<(u16, String)> {
    get_from(
        SocketAddr::from(([127, 0, 0, 1], port)),
        path,
        accept,
        timeout,
    )
    .await
}

/// Like [`get_within`], from any address (a NodePort on the real cluster's node IP).
pub async fn get_from(
    addr: SocketAddr,
    path: &str,
    accept: Option<&str>,
    timeout: Duration,
) -> Option<(u16, String)> {
    let connect = tokio::net::TcpStream::connect(addr);
    let mut stream = tokio::time::timeout(Duration::from_secs(2), connect)
        .await
        .ok()?
        .ok()?;
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    tokio::time::timeout(timeout, stream.read_to_end(&mut response))
        .await
        .ok()?
        .ok()?;
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)?
    } else {
        body.to_owned()
    };
    Some((status, body))
}

/// The body of a chunked response; `None` unless it ends with the final empty chunk.
fn dechunk(mut body: &str) -> Option<String> {
    let mut out = String::with_capacity(body.len());
    loop {
        let (size, rest) = body.split_once("\r\n")?;
        let size = usize::from_str_radix(size.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..size)?);
        body = rest[size..].strip_prefix("\r\n")?;
    }
}

#[cfg(test)]
mod tests {
    use super::dechunk;

    #[test]
    fn dechunks_a_chunked_body() {
        assert_eq!(
            dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n").as_deref(),
            Some("hello world")
        );
    }

    #[test]
    fn a_body_cut_short_is_no_answer() {
        assert_eq!(dechunk("5\r\nhello\r\n6\r\n wor"), None);
        assert_eq!(dechunk("5\r\nhello\r\n"), None);
        assert_eq!(dechunk("zz\r\nhello\r\n0\r\n\r\n"), None);
    }
}
