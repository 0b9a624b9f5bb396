//! Hostile upstreams for the adversary tests: a server no real registry plays (an
//! endless token, a wrong blob, a tag list of millions), on a loopback address, in its
//! own runtime so that a test's blocking calls cannot stall it; stopped when dropped.

use std::future::Future;
use std::net::SocketAddr;

/// A server on `host:0` in its own runtime; stops when dropped.
pub struct Hostile {
    pub addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Hostile {
    /// Runs `serve` on a listener bound to `host:0`.
    pub fn spawn<F>(
        host: &str,
        serve: impl FnOnce(tokio::net::TcpListener, SocketAddr) -> F,
    ) -> Hostile
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let listener = std::net::TcpListener::bind((host, 0))
            .unwrap_or_else(|e| panic!("bind a hostile server on {host}:0: {e}"));
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local_addr");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("hostile-upstream")
            .enable_all()
            .build()
            .expect("hostile server runtime");
        let listener = {
            let _in_runtime = runtime.enter();
            tokio::net::TcpListener::from_std(listener).expect("tokio listener")
        };
        runtime.spawn(serve(listener, addr));
        Hostile {
            addr,
            runtime: Some(runtime),
        }
    }

    /// An HTTP server answering with the router `app` builds for its address.
    pub fn http(host: &str, app: impl FnOnce(SocketAddr) -> axum::Router) -> Hostile {
        Hostile::spawn(host, |listener, addr| {
            let app = app(addr);
            async move {
                let _ = axum::serve(listener, app).await;
            }
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
