//! Ferry: a pull-through caching OCI registry.
//!
//! Data flows one way: [`api`] (HTTP handlers) → [`proxy`] (cache logic) →
//! `ferry_storage` (blobs and index) and [`upstream`] (registry clients). Nothing
//! calls back up. [`config`] is read once and validated into an immutable
//! [`config::Config`]; [`serve`] starts the server on it.

pub mod api;
pub mod cli;
pub mod config;
pub mod oci;
pub mod proxy;
pub mod rules;
pub mod secret;
pub mod upstream;

use std::future::Future;
use std::sync::Arc;

use config::Config;

/// Why Ferry could not start or keep serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot open the store at {path}: {source}")]
    Store {
        path: String,
        source: ferry_storage::Error,
    },
    #[error("cannot set up upstream clients: {0}")]
    Upstream(#[from] upstream::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
}

/// Opens the store, binds the listener and serves until `shutdown` completes, then
/// finishes in-flight requests.
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let root = config.storage_root.clone();
    let store = tokio::task::spawn_blocking(move || ferry_storage::Store::open(&root))
        .await
        .map_err(std::io::Error::other)?
        .map_err(|source| ServeError::Store {
            path: config.storage_root.display().to_string(),
            source,
        })?;
    let proxy = Arc::new(proxy::Proxy::new(&config, store)?);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr()?;
    for u in &config.upstreams {
        tracing::info!(upstream = %u.name, registry = %u.registry, url = %u.url, default = u.default, "upstream configured");
    }
    tracing::info!(storage = %config.storage_root.display(), "listening on http://{addr}");
    axum::serve(listener, api::router(proxy.clone()))
        .with_graceful_shutdown(shutdown)
        .await?;
    if let Err(e) = proxy.store().index.flush() {
        tracing::warn!(error = %e, "could not flush the index on shutdown");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
