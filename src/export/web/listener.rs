//! The listeners `axum::serve` runs on: plain TCP, or TLS with each handshake in its own
//! task (a slow or silent client holds up no one else; handshakes time out after
//! [`HANDSHAKE_TIMEOUT`]). Each connection comes with a [`Peer`]: its address and the
//! client certificate it presented, which [`super::auth`] reads per request. Failed
//! handshakes (an untrusted client certificate, plain HTTP on the TLS port, a client
//! that does not trust ours and says so) are counted in
//! `selfheal_web_tls_handshake_errors_total` and logged at debug level.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use prometheus_client::metrics::counter::Counter;
use rustls::pki_types::CertificateDer;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// A TLS handshake not finished in this time is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is on the other end of a connection.
#[derive(Clone, Debug)]
pub struct Peer {
    /// The remote address.
    pub addr: SocketAddr,
    /// The client certificate presented at the TLS handshake (verified there when the
    /// `client_auth_type` verifies); `None` on plain HTTP or without one.
    pub client_cert: Option<Arc<CertificateDer<'static>>>,
}

impl Connected<IncomingStream<'_, TcpListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        Peer {
            addr: *stream.remote_addr(),
            client_cert: None,
        }
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// TLS over a TCP listener: accepts in a task of its own, hands over finished handshakes.
pub struct TlsListener {
    local: SocketAddr,
    handshaken: mpsc::Receiver<(TlsStream<TcpStream>, Peer)>,
    accepting: JoinHandle<()>,
}

impl TlsListener {
    /// Starts accepting on `listener` (must be called inside the runtime); failed and
    /// timed-out handshakes are counted in `handshake_errors`.
    pub fn new(
        listener: TcpListener,
        acceptor: TlsAcceptor,
        handshake_errors: Counter,
    ) -> io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (ready, handshaken) = mpsc::channel(64);
        let accepting = tokio::spawn(accept_loop(listener, acceptor, ready, handshake_errors));
        Ok(TlsListener {
            local,
            handshaken,
            accepting,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<(TlsStream<TcpStream>, Peer)>,
    handshake_errors: Counter,
) {
    loop {
        let (tcp, addr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // E.g. out of file descriptors: wait a little rather than spin.
                tracing::warn!("web: cannot accept a connection: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let ready = ready.clone();
        let handshake_errors = handshake_errors.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let client_cert = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .map(|cert| Arc::new(cert.clone().into_owned()));
                    let _ = ready.send((stream, Peer { addr, client_cert })).await;
                }
                Ok(Err(error)) => {
                    handshake_errors.inc();
                    tracing::debug!(%addr, "web: TLS handshake failed: {error}");
                }
                Err(_) => {
                    handshake_errors.inc();
                    tracing::debug!(%addr, "web: TLS handshake timed out");
                }
            }
        });
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.handshaken.recv().await {
            Some(connection) => connection,
            // The accept loop never ends by itself; if it was aborted, accept nothing.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(Peer {
            addr: self.local,
            client_cert: None,
        })
    }
}
