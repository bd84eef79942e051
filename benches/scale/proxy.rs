//! The buffering TCP proxy between the daemon and the lab (phase drain).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A TCP proxy between the daemon and the lab that buffers, without limit, everything the
/// lab sends. With the daemon frozen by SIGSTOP, the lab's watch task encodes every
/// pending event into this buffer instead of blocking on a full socket, so after SIGCONT
/// the daemon reads the stream at memory speed: the drain measures the daemon alone,
/// not the lab's single-threaded watch encoder. `hold(true)` stops reading from the lab
/// (the lab's watch then blocks, as on a direct connection).
pub(crate) struct Proxy {
    pub(crate) port: u16,
    /// Bytes read from the lab so far.
    pub(crate) received: Arc<AtomicU64>,
    pub(crate) hold: tokio::sync::watch::Sender<bool>,
    pub(crate) tasks: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Proxy {
    pub(crate) async fn start(upstream: u16) -> Result<Proxy> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .context("proxy listens")?;
        let port = listener.local_addr()?.port();
        let received = Arc::new(AtomicU64::new(0));
        let (hold, held) = tokio::sync::watch::channel(false);
        let tasks: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let accept = {
            let received = received.clone();
            let tasks = tasks.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    else {
                        continue;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let handles = Proxy::pipe(client, server, received.clone(), held.clone());
                    tasks
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .extend(handles);
                }
            })
        };
        tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(accept);
        Ok(Proxy {
            port,
            received,
            hold,
            tasks,
        })
    }

    pub(crate) fn pipe(
        client: tokio::net::TcpStream,
        server: tokio::net::TcpStream,
        received: Arc<AtomicU64>,
        mut held: tokio::sync::watch::Receiver<bool>,
    ) -> [tokio::task::JoinHandle<()>; 3] {
        let (mut client_read, mut client_write) = client.into_split();
        let (mut server_read, mut server_write) = server.into_split();
        let requests = tokio::spawn(async move {
            let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
            let _ = server_write.shutdown().await;
        });
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
        let reader = tokio::spawn(async move {
            loop {
                while *held.borrow_and_update() {
                    if held.changed().await.is_err() {
                        return;
                    }
                }
                let mut buf = vec![0u8; 256 * 1024];
                match server_read.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        buf.truncate(n);
                        received.fetch_add(n as u64, Ordering::Relaxed);
                        if tx.send(buf).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let writer = tokio::spawn(async move {
            while let Some(buf) = rx.recv().await {
                if client_write.write_all(&buf).await.is_err() {
                    return;
                }
            }
            let _ = client_write.shutdown().await;
        });
        [requests, reader, writer]
    }

    pub(crate) fn hold(&self, hold: bool) {
        self.hold.send_replace(hold);
    }

    /// Bytes received from the lab so far.
    pub(crate) fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Waits until at least `bytes` more than `mark` have been received from the lab and
    /// no more arrive for 300 ms; returns how many.
    pub(crate) async fn wait_buffered(
        &self,
        mark: u64,
        bytes: u64,
        timeout: Duration,
    ) -> Result<u64> {
        let deadline = Instant::now() + timeout;
        let mut last = 0;
        let mut since = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let now = self.received() - mark;
            if now != last {
                last = now;
                since = Instant::now();
            } else if now >= bytes && since.elapsed() >= Duration::from_millis(300) {
                return Ok(now);
            }
            ensure!(
                Instant::now() < deadline,
                "the proxy buffered only {now} of {bytes} bytes"
            );
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .drain(..)
        {
            task.abort();
        }
    }
}
