//! HTTPS beside the plain listener: rustls from PEM files, HTTP/1.1 and HTTP/2 chosen
//! by ALPN, and the certificate pair re-read when its files change (cert-manager and
//! Kubernetes Secret mounts replace them in place). A changed pair that does not load
//! is refused with a warning and the previous one keeps serving.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::Router;
use axum_server::tls_rustls::RustlsConfig;

use super::connections::{Acceptor, Tracker};
use crate::config::Tls;
use crate::filestamp::{self, FileStamp};

/// How often the certificate files are looked at.
const POLL: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr} (tls.listen): {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot use the TLS certificate {cert} with key {key}: {source}")]
    Pair {
        cert: String,
        key: String,
        source: std::io::Error,
    },
}

/// A bound HTTPS listener with its certificate loaded.
pub struct Listener {
    listener: std::net::TcpListener,
    rustls: RustlsConfig,
    files: Tls,
}

impl Listener {
    /// Loads the certificate pair and binds `tls.listen`.
    pub async fn bind(tls: &Tls) -> Result<Listener, Error> {
        let rustls = RustlsConfig::from_pem_file(&tls.cert_file, &tls.key_file)
            .await
            .map_err(|source| Error::Pair {
                cert: tls.cert_file.display().to_string(),
                key: tls.key_file.display().to_string(),
                source,
            })?;
        let listen = |source| Error::Listen {
            addr: tls.listen,
            source,
        };
        let listener = std::net::TcpListener::bind(tls.listen).map_err(listen)?;
        listener.set_nonblocking(true).map_err(listen)?;
        Ok(Listener {
            listener,
            rustls,
            files: tls.clone(),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves `app` until `handle` shuts it down (see [`super::shutdown`]), its
    /// connections under `tracker` (see [`super::connections`]).
    pub async fn serve(
        self,
        app: Router,
        handle: axum_server::Handle<SocketAddr>,
        tracker: Tracker,
    ) -> std::io::Result<()> {
        let watcher = tokio::spawn(watch(
            self.rustls.clone(),
            self.files.cert_file.clone(),
            self.files.key_file.clone(),
        ));
        // The tracker under TLS: it sees the TCP stream, so a handshake that never
        // ends is bounded like a request head that never arrives.
        let mut server = super::connections::watch_accept_errors(
            axum_server::from_tcp_rustls(self.listener, self.rustls)?
                .map(|tls| tls.acceptor(Acceptor::new(tracker.clone()))),
            &tracker,
        );
        super::connections::limit_http1_buffers(&mut server);
        let served = server.handle(handle).serve(app.into_make_service()).await;
        watcher.abort();
        served
    }
}

/// Modification time and length of both files; a change in either is a new pair.
fn stamps(cert: &Path, key: &Path) -> [Option<FileStamp>; 2] {
    [cert, key].map(filestamp::of)
}

/// Polls the files and reloads the pair when they change.
async fn watch(rustls: RustlsConfig, cert: PathBuf, key: PathBuf) {
    let mut seen = stamps(&cert, &key);
    loop {
        tokio::time::sleep(POLL).await;
        let now = stamps(&cert, &key);
        if now == seen {
            continue;
        }
        // Remembered even when the reload fails: one warning per change, and a pair
        // written one file at a time loads once its second file lands.
        seen = now;
        match rustls.reload_from_pem_file(&cert, &key).await {
            Ok(()) => {
                tracing::info!(cert = %cert.display(), key = %key.display(), "TLS certificate changed; serving the new one")
            }
            Err(e) => tracing::warn!(
                cert = %cert.display(),
                key = %key.display(),
                error = %e,
                "TLS certificate files changed but cannot be used; keeping the previous certificate"
            ),
        }
    }
}
