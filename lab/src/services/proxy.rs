//! The NodePort proxy: a userspace stand-in for kube-proxy.
//!
//! Each NodePort gets a listener on `bind_ip:nodePort` (127.0.0.1 by default).
//! Every accepted connection goes to the next **ready** backend, round-robin,
//! and is copied both ways (`tokio::io::copy_bidirectional`). With no ready
//! backend, or when connecting to the chosen backend fails, the client
//! connection is closed at once (reset), so clients see a failure just while
//! the workload is really down — like kube-proxy's iptables mode, no other
//! backend is retried. Established connections are left alone when a backend
//! becomes unready or the port goes away (as conntrack does); they end when
//! either side closes, or when the proxy shuts down.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::endpoints::NodePortRoute;

/// How long connecting to a backend may take before the client is dropped.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The ready backends of one NodePort, picked round-robin.
#[derive(Debug, Default)]
pub struct Backends {
    addrs: RwLock<Arc<Vec<SocketAddr>>>,
    next: AtomicUsize,
}

impl Backends {
    /// Replaces the backend list.
    pub fn set(&self, addrs: Vec<SocketAddr>) {
        let mut guard = self
            .addrs
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if **guard != addrs {
            *guard = Arc::new(addrs);
        }
    }

    /// Current backends.
    pub fn get(&self) -> Arc<Vec<SocketAddr>> {
        self.addrs
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The next backend, round-robin; `None` when none is ready.
    pub fn pick(&self) -> Option<SocketAddr> {
        let addrs = self.get();
        if addrs.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        Some(addrs[i % addrs.len()])
    }
}

struct Listener {
    service: String,
    backends: Arc<Backends>,
    task: JoinHandle<()>,
}

/// The set of NodePort listeners.
pub struct NodePortProxy {
    bind_ip: IpAddr,
    listeners: HashMap<u16, Listener>,
    stop_tx: watch::Sender<bool>,
    stop_rx: watch::Receiver<bool>,
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // Rebinding a port right after a previous listener closed must work.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

impl NodePortProxy {
    /// A proxy that will listen on `bind_ip`. Must be created inside a Tokio runtime.
    pub fn new(bind_ip: IpAddr) -> Self {
        let (stop_tx, stop_rx) = watch::channel(false);
        NodePortProxy {
            bind_ip,
            listeners: HashMap::new(),
            stop_tx,
            stop_rx,
        }
    }

    /// Node ports listened on right now.
    pub fn ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self.listeners.keys().copied().collect();
        ports.sort_unstable();
        ports
    }

    /// Makes the listeners match `routes`: new ports are bound, gone ports are
    /// closed, backends are updated. Returns the ports that could not be bound
    /// (retried at the next call).
    pub fn sync(&mut self, routes: &[NodePortRoute]) -> Vec<(u16, std::io::Error)> {
        let wanted: BTreeMap<u16, &NodePortRoute> =
            routes.iter().map(|r| (r.node_port, r)).collect();
        self.listeners.retain(|port, l| {
            let keep = wanted.contains_key(port);
            if !keep {
                tracing::info!(port, service = %l.service, "node port closed");
                l.task.abort();
            }
            keep
        });
        let mut failed = Vec::new();
        for (port, route) in wanted {
            if let Some(l) = self.listeners.get_mut(&port) {
                if l.service != route.service {
                    l.service = route.service.clone();
                }
                if *l.backends.get() != route.backends {
                    tracing::info!(port, service = %route.service, backends = ?route.backends, "ready backends changed");
                }
                l.backends.set(route.backends.clone());
                continue;
            }
            match bind(SocketAddr::new(self.bind_ip, port)) {
                Ok(listener) => {
                    let backends = Arc::new(Backends::default());
                    backends.set(route.backends.clone());
                    tracing::info!(port, service = %route.service, backends = ?route.backends, "node port listening");
                    let task = tokio::spawn(accept_loop(
                        listener,
                        backends.clone(),
                        self.stop_rx.clone(),
                    ));
                    self.listeners.insert(
                        port,
                        Listener {
                            service: route.service.clone(),
                            backends,
                            task,
                        },
                    );
                }
                Err(e) => failed.push((port, e)),
            }
        }
        failed
    }

    /// Closes every listener and every proxied connection.
    pub fn shutdown(&mut self) {
        let _ = self.stop_tx.send(true);
        for (_, l) in self.listeners.drain() {
            l.task.abort();
        }
    }
}

impl Drop for NodePortProxy {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn accept_loop(listener: TcpListener, backends: Arc<Backends>, stop: watch::Receiver<bool>) {
    loop {
        match listener.accept().await {
            Ok((client, _)) => {
                tokio::spawn(forward(client, backends.pick(), stop.clone()));
            }
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Closes `client` with a reset: the client sees a failure at once.
fn reject(client: TcpStream) {
    let _ = client.set_zero_linger();
    drop(client);
}

async fn forward(
    mut client: TcpStream,
    backend: Option<SocketAddr>,
    mut stop: watch::Receiver<bool>,
) {
    let Some(backend) = backend else {
        reject(client);
        return;
    };
    let mut upstream =
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(backend)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(%backend, error = %e, "backend refused");
                reject(client);
                return;
            }
            Err(_) => {
                tracing::debug!(%backend, "backend connect timed out");
                reject(client);
                return;
            }
        };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
        _ = stop.wait_for(|s| *s) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_and_empty() {
        let b = Backends::default();
        assert_eq!(b.pick(), None);
        let a1: SocketAddr = "127.0.1.1:1".parse().unwrap();
        let a2: SocketAddr = "127.0.1.2:1".parse().unwrap();
        b.set(vec![a1, a2]);
        let picks: Vec<_> = (0..4).filter_map(|_| b.pick()).collect();
        assert_eq!(picks, vec![a1, a2, a1, a2]);
        b.set(vec![]);
        assert_eq!(b.pick(), None);
    }
}
