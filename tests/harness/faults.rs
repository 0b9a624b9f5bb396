//! A fault-injecting TCP proxy on 127.0.0.1:0, to sit between Ferry and Distribution.
//!
//! The mode is switchable at run time. Switching closes every open connection, so a
//! pooled keep-alive connection cannot carry a request past the new mode; the next
//! connection the client opens gets the new mode.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forward both ways.
    Pass,
    /// Forward, but after `n` bytes of upstream→client data on a connection (headers
    /// included), close both sides.
    CutAfter(u64),
    /// Like `CutAfter`, but only for the first connection that gets that far; every
    /// other connection passes (a link that drops once, then recovers).
    CutOnceAfter(u64),
    /// Forward, with upstream→client limited to about this many bytes per second.
    Throttle(u64),
    /// Accept, then close at once without reading.
    Refuse,
    /// Accept and read the request, but never answer (for timeouts). The connection
    /// stays open until the mode changes or the proxy drops.
    Hang,
}

struct Shared {
    mode: watch::Sender<(u64, Mode)>,
    /// Whether `CutOnceAfter` has cut its connection.
    cut_once_done: std::sync::atomic::AtomicBool,
    connections: AtomicUsize,
    bytes_to_client: AtomicU64,
}

/// A running fault proxy; stops (closing every connection) when dropped.
pub struct FaultProxy {
    shared: Arc<Shared>,
    addr: SocketAddr,
    upstream: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FaultProxy {
    /// Proxies to `upstream` (`127.0.0.1:PORT`), starting in `Mode::Pass`.
    pub fn start(upstream: &str) -> FaultProxy {
        let upstream: SocketAddr = upstream.parse().expect("upstream ip:port");
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind fault proxy on 127.0.0.1:0");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local_addr");
        let (mode, _) = watch::channel((0, Mode::Pass));
        let shared = Arc::new(Shared {
            mode,
            cut_once_done: std::sync::atomic::AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            bytes_to_client: AtomicU64::new(0),
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fault-proxy")
            .enable_all()
            .build()
            .expect("fault proxy runtime");
        let accept_shared = shared.clone();
        runtime.spawn(async move {
            let listener = TcpListener::from_std(listener).expect("tokio listener");
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                accept_shared.connections.fetch_add(1, Ordering::SeqCst);
                let shared = accept_shared.clone();
                tokio::spawn(handle(shared, client, upstream));
            }
        });
        FaultProxy {
            shared,
            addr,
            upstream,
            runtime: Some(runtime),
        }
    }

    /// Switches the mode and closes every open connection, then waits 100 ms so the
    /// peers see the old connections closed before the next request (a pooled
    /// connection closed under a request would be a spurious failure).
    pub fn set_mode(&self, mode: Mode) {
        self.shared.mode.send_modify(|(generation, m)| {
            *generation += 1;
            *m = mode;
        });
        std::thread::sleep(Duration::from_millis(100));
    }

    pub fn mode(&self) -> Mode {
        self.shared.mode.borrow().1
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Upstream→client bytes forwarded so far.
    pub fn bytes_to_client(&self) -> u64 {
        self.shared.bytes_to_client.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

async fn handle(shared: Arc<Shared>, mut client: TcpStream, upstream: SocketAddr) {
    let mut mode_rx = shared.mode.subscribe();
    let (generation, mode) = *mode_rx.borrow_and_update();
    let changed = async move {
        loop {
            if mode_rx.changed().await.is_err() {
                return;
            }
            if mode_rx.borrow().0 != generation {
                return;
            }
        }
    };
    match mode {
        Mode::Refuse => {
            let _ = client.set_zero_linger();
            drop(client);
        }
        Mode::Hang => {
            let mut sink = [0u8; 16 * 1024];
            let drain = async {
                while let Ok(n) = client.read(&mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
                // Keep the connection open after the peer half-closes.
                std::future::pending::<()>().await;
            };
            tokio::select! {
                _ = drain => {}
                _ = changed => {}
            }
        }
        Mode::Pass | Mode::CutAfter(_) | Mode::CutOnceAfter(_) | Mode::Throttle(_) => {
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            let up = async {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match cr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if sw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = sw.shutdown().await;
                // Keep waiting: the response may still be flowing the other way.
                std::future::pending::<()>().await;
            };
            let down = async {
                let mut buf = vec![0u8; 16 * 1024];
                let mut sent: u64 = 0;
                loop {
                    let want = match mode {
                        Mode::CutAfter(limit) => {
                            let left = limit.saturating_sub(sent);
                            if left == 0 {
                                break;
                            }
                            (left as usize).min(buf.len())
                        }
                        Mode::CutOnceAfter(limit)
                            if !shared.cut_once_done.load(Ordering::SeqCst) =>
                        {
                            let left = limit.saturating_sub(sent);
                            if left == 0 {
                                if shared.cut_once_done.swap(true, Ordering::SeqCst) {
                                    buf.len()
                                } else {
                                    break;
                                }
                            } else {
                                (left as usize).min(buf.len())
                            }
                        }
                        _ => buf.len(),
                    };
                    let n = match sr.read(&mut buf[..want]).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    sent += n as u64;
                    shared.bytes_to_client.fetch_add(n as u64, Ordering::SeqCst);
                    if let Mode::Throttle(bps) = mode {
                        let bps = bps.max(1);
                        tokio::time::sleep(Duration::from_secs_f64(n as f64 / bps as f64)).await;
                    }
                }
                let _ = cw.shutdown().await;
            };
            tokio::select! {
                _ = up => {}
                _ = down => {}
                _ = changed => {}
            }
            // Dropping both halves closes both sockets.
        }
    }
}
