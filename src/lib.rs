//! Ferry: a pull-through caching OCI registry.
//!
//! Data flows one way: [`api`] (HTTP handlers) → [`proxy`] (cache logic) →
//! `ferry_storage` (blobs and index) and [`upstream`] (registry clients). Nothing
//! calls back up. [`config`] is read once and validated into an immutable
//! [`config::Config`]; [`serve`] starts the server on it.
//!
//! Beside that path: [`rules`] (ACR-style cache rules, used by routing), [`quota`]
//! (the server's housekeeping: startup check, access times, eviction), and the
//! commands that work on a store while no server does — [`bundle`] (OCI bundles for
//! air gaps), [`maintenance`] (fsck, gc) — or through one — [`prefetch`].

pub mod access;
pub mod api;
pub mod bundle;
pub mod bytesize;
pub mod cli;
pub mod config;
pub mod maintenance;
pub mod metrics;
pub mod nodeconfig;
pub mod oci;
pub mod prefetch;
pub mod proxy;
pub mod quota;
pub mod rules;
pub mod secret;
pub mod tls;
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
    #[error(transparent)]
    Tls(#[from] tls::Error),
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
}

/// Opens the store, binds the listener and serves until `shutdown` completes, then
/// finishes in-flight requests.
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    serve_and_report(config, shutdown, |_| {}).await
}

/// [`serve`], telling `on_listening` the bound address (for an in-process Ferry on
/// port 0, as `ferry prefetch` runs one).
pub async fn serve_and_report(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_listening: impl FnOnce(std::net::SocketAddr),
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
    // Bound before the plain listener is announced: whoever waits for that line can
    // already use both.
    let tls = match &config.tls {
        Some(t) => Some(tls::Listener::bind(t).await?),
        None => None,
    };
    if let Some(t) = &tls {
        tracing::info!("listening on https://{}", t.local_addr()?);
    }
    for u in &config.upstreams {
        tracing::info!(upstream = %u.name, registry = %u.registry, url = %u.url, default = u.default, "upstream configured");
    }
    tracing::info!(storage = %config.storage_root.display(), "listening on http://{addr}");
    on_listening(addr);
    // Held in an `Access` so that a config reload can swap the policy in place.
    let access = Arc::new(access::Access::new(&config));
    refresh_pins(&config.pins, addr, access.internal_token());
    let housekeeping = quota::Housekeeping::start(proxy.clone(), config.quota);
    let app = api::router(proxy.clone(), access.clone());
    // One shutdown for both listeners.
    let shutdown = futures_util::FutureExt::shared(Box::pin(shutdown));
    let plain = axum::serve(listener, app.clone()).with_graceful_shutdown(shutdown.clone());
    match tls {
        Some(t) => {
            let (plain, secure) = tokio::join!(plain, t.serve(app, shutdown));
            plain?;
            secure?;
        }
        None => plain.await?,
    }
    housekeeping.stop().await;
    if let Err(e) = proxy.store().index.flush() {
        tracing::warn!(error = %e, "could not flush the index on shutdown");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Keeps `[[pin]]` images fetched — at start, then every `refresh` — through this
/// Ferry's own API on loopback, so they enter the store as any pull does.
fn refresh_pins(pins: &[config::Pin], addr: std::net::SocketAddr, token: &secret::Secret) {
    let ip = match addr.ip() {
        ip if !ip.is_unspecified() => ip,
        std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
    };
    let base = url::Url::parse(&format!(
        "http://{}/",
        std::net::SocketAddr::new(ip, addr.port())
    ))
    .expect("a socket address makes a URL");
    for pin in pins.iter().cloned() {
        let prefetcher = prefetch::Prefetcher::new(base.clone(), false).with_bearer(token.clone());
        tokio::spawn(async move {
            loop {
                for image in &pin.images {
                    if let Err(e) = prefetcher.pull(image, pin.platform.as_ref()).await {
                        tracing::warn!(error = %e, "pinned image not refreshed; will retry");
                    }
                }
                tokio::time::sleep(pin.refresh).await;
            }
        });
    }
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
