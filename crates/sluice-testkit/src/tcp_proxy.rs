//! A loopback TCP proxy that can leave its connections half-open: after [`TcpProxy::freeze`]
//! every connection open at that moment stays open but carries nothing more either way, as
//! when a NAT or load balancer silently drops a long-lived connection. Connections made after
//! the freeze work normally.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A running proxy; stops when dropped.
pub struct TcpProxy {
    pub addr: SocketAddr,
    /// Connections whose number is below this are frozen.
    frozen_below: Arc<AtomicU64>,
    next: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Proxies 127.0.0.1:<any port> to `upstream`.
    pub async fn start(upstream: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (frozen_below, next) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (f, n) = (frozen_below.clone(), next.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let id = n.fetch_add(1, Ordering::SeqCst);
                let frozen = f.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else { return };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let up = pump(cr, sw, id, frozen.clone());
                    let down = pump(sr, cw, id, frozen);
                    let _ = tokio::join!(up, down);
                });
            }
        });
        TcpProxy { addr, frozen_below, next, task }
    }

    /// Freezes every connection open now.
    pub fn freeze(&self) {
        self.frozen_below.store(self.next.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    /// Connections made so far.
    pub fn connections(&self) -> u64 {
        self.next.load(Ordering::SeqCst)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies one direction until either side closes; a frozen connection's bytes are dropped.
async fn pump(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, id: u64, frozen: Arc<AtomicU64>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if id < frozen.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
