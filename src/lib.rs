//! Ferry: a pull-through caching OCI registry.
//!
//! Data flows one way: [`api`] (HTTP handlers) → [`proxy`] (cache logic) →
//! `ferry_storage` (blobs and index) and [`upstream`] (registry clients). Nothing
//! calls back up: every module imports only modules below it in this list.
//!
//! - The crate root is the top. [`serve`] opens the store, builds the proxy and the
//!   access policy, binds the listeners ([`connections`], [`tls`]) and serves until
//!   told to stop ([`shutdown`], [`signals`]), swapping in a new configuration when
//!   told to reload ([`reload`]) and keeping `[[pin]]` images fetched with the
//!   [`prefetch`] client. [`prefetch_in_process`] (`ferry prefetch` without a server)
//!   starts one on loopback and pulls through it.
//! - The other commands: [`cli`] (their arguments), then those that work on a store
//!   while no server does — [`bundle`] (OCI bundles for air gaps; it names images
//!   as the proxy routes them, by [`proxy::route_offline`]), [`maintenance`] (fsck,
//!   gc) —
//!   and [`nodeconfig`] (a node's container runtime configuration).
//! - [`api`] asks [`access`] who may pull what and calls [`proxy`]; [`quota`] (the
//!   server's housekeeping: startup check, access times, eviction) works on the
//!   proxy's store beside it.
//! - [`proxy`] routes (by the upstreams and cache rules of the config) and fetches
//!   through [`upstream`]; both count into [`metrics`], which labels answers by
//!   [`cache_status`].
//! - Leaves: [`config`], read and validated once into an immutable
//!   [`config::Config`] (with the types it holds, e.g. [`config::pattern`] and
//!   [`config::htpasswd`], which [`access`] is built from); [`rules`] (ACR-style
//!   cache rules), [`oci`], [`secret`], [`bytesize`].

pub mod access;
pub mod api;
pub mod bundle;
pub mod bytesize;
pub mod cache_status;
pub mod cli;
pub mod config;
pub mod connections;
mod filestamp;
pub mod maintenance;
pub mod metrics;
pub mod nodeconfig;
pub mod oci;
pub mod prefetch;
pub mod proxy;
pub mod quota;
pub mod reload;
pub mod rules;
pub mod secret;
pub mod shutdown;
pub mod signals;
pub mod tls;
pub mod upstream;

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use futures_util::StreamExt;

use config::Config;
use signals::Controls;

/// Why Ferry could not start or keep serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    // Not `source`: the message holds the cause already, and `{:#}` would repeat it.
    #[error("cannot open the store at {path}: {error}")]
    Store {
        path: String,
        error: ferry_storage::Error,
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

/// Opens the store, binds the listeners and serves until `controls` asks it to stop
/// (see [`shutdown`]), reloading the configuration when they ask that (see [`reload`]).
pub async fn serve(config: Config, controls: Controls) -> Result<(), ServeError> {
    serve_and_report(config, controls, |_| {}).await
}

/// `ferry prefetch` without `--server`: pulls `images` through a Ferry started in
/// this process on `config` (its store and
/// upstreams), listening on a loopback port only for the duration.
pub async fn prefetch_in_process(
    mut config: Config,
    images: &[oci::ImageName],
    platform: Option<&oci::Platform>,
) -> Result<Vec<prefetch::Pulled>, prefetch::PrefetchError> {
    config.listen = (std::net::Ipv4Addr::LOCALHOST, 0).into();
    config.pins.clear();
    // The operator's own pulls, on a loopback port that lives only as long: no HTTPS
    // listener, and the access policy (meant for clients) does not apply.
    config.tls = None;
    config.access = Default::default();
    for u in &mut config.upstreams {
        u.anonymous = Default::default();
    }
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_and_report(
        config,
        Controls::stop_on(async move {
            let _ = stop_rx.await;
        }),
        move |addr| {
            let _ = addr_tx.send(addr);
        },
    ));
    let Ok(addr) = addr_rx.await else {
        let why = match server.await {
            Ok(Err(e)) => e.to_string(),
            Ok(Ok(())) => "it stopped at once".to_string(),
            Err(e) => e.to_string(),
        };
        return Err(prefetch::PrefetchError::Server(why));
    };
    let base = url::Url::parse(&format!("http://{addr}/")).expect("a socket address makes a URL");
    let result = prefetch::pull_all(&prefetch::Prefetcher::new(base, true), images, platform).await;
    let _ = stop_tx.send(());
    let _ = server.await;
    result
}

/// [`serve`], telling `on_listening` the bound address (for an in-process Ferry on
/// port 0, as `ferry prefetch` runs one).
async fn serve_and_report(
    config: Config,
    controls: Controls,
    on_listening: impl FnOnce(std::net::SocketAddr),
) -> Result<(), ServeError> {
    let root = config.storage_root.clone();
    let store = tokio::task::spawn_blocking(move || ferry_storage::Store::open(&root))
        .await
        .map_err(std::io::Error::other)?
        .map_err(|error| ServeError::Store {
            path: config.storage_root.display().to_string(),
            error,
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
    let pins = refresh_pins(&config.pins, addr, access.internal_token());
    let housekeeping = quota::Housekeeping::start(proxy.clone(), config.quota, config.scrub_rate);
    let app = api::router(proxy.clone(), access.clone());
    // One control over both listeners: one drain, one count of open connections;
    // and one tracker: one bound on them, the same timeouts.
    let control = axum_server::Control::new();
    let (tracker, sweeper) = connections::Tracker::start(&config.connections);
    tracing::debug!(limits = ?config.connections, max_connections = tracker.max_connections(), "client connection limits");
    let mut servers = tokio::task::JoinSet::new();
    let mut plain = connections::watch_accept_errors(
        axum_server::from_tcp(listener.into_std()?)?
            .acceptor(connections::Acceptor::new(tracker.clone())),
        &tracker,
    );
    connections::limit_http1_buffers(&mut plain);
    servers.spawn(
        plain
            .handle(axum_server::Handle::with_control(control.clone()))
            .serve(app.clone().into_make_service()),
    );
    if let Some(t) = tls {
        servers.spawn(t.serve(
            app,
            axum_server::Handle::with_control(control.clone()),
            tracker.clone(),
        ));
    }
    let Controls {
        mut stop,
        reload: reloads,
        source,
    } = controls;
    let running = Arc::new(ArcSwap::from_pointee(config));
    let reloader = tokio::spawn(
        reload::Reloader::new(source, running.clone(), proxy.clone(), access).run(reloads),
    );
    // Until asked to stop, or a listener ends on its own: it failed.
    let failed = tokio::select! {
        _ = stop.next() => None,
        Some(ended) = servers.join_next() => Some(match ended {
            Ok(Ok(())) => std::io::Error::other("a listener stopped unasked"),
            Ok(Err(e)) => e,
            Err(e) => std::io::Error::other(e),
        }),
    };
    let started = Instant::now();
    reloader.abort();
    for p in pins {
        p.abort();
    }
    let cut = match &failed {
        None => {
            let timeout = running.load().shutdown_timeout;
            shutdown::drain(&control, &proxy, timeout, &mut stop).await
        }
        Some(_) => {
            let cut = shutdown::Cut {
                connections: control.connection_count(),
                fetches: proxy.metrics().inflight().get(),
                reason: Some("a listener failed"),
            };
            control.shutdown();
            cut
        }
    };
    while servers.join_next().await.is_some() {}
    sweeper.abort();
    housekeeping.stop().await;
    if let Err(e) = proxy.store().index.flush() {
        tracing::warn!(error = %e, "could not flush the index on shutdown");
    }
    let took = humantime::format_duration(std::time::Duration::from_millis(
        started.elapsed().as_millis() as u64,
    ));
    match cut.reason {
        None => tracing::info!(
            took = %took,
            "stopped: every request in flight finished; index flushed"
        ),
        Some(reason) => tracing::warn!(
            took = %took,
            cut_connections = cut.connections,
            cut_fetches = cut.fetches,
            "stopped: {reason}; cut {} connection(s) and {} upstream fetch(es) still running; index flushed",
            cut.connections,
            cut.fetches
        ),
    }
    match failed {
        Some(e) => Err(ServeError::Io(e)),
        None => Ok(()),
    }
}

/// Keeps `[[pin]]` images fetched — at start, then every `refresh` — through this
/// Ferry's own API on loopback, so they enter the store as any pull does. Returns the
/// refresh tasks, to end them when the server stops.
fn refresh_pins(
    pins: &[config::Pin],
    addr: std::net::SocketAddr,
    token: &secret::Secret,
) -> Vec<tokio::task::JoinHandle<()>> {
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
    let mut tasks = Vec::new();
    for pin in pins.iter().cloned() {
        let prefetcher = prefetch::Prefetcher::new(base.clone(), false).with_bearer(token.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                for image in &pin.images {
                    if let Err(e) = prefetcher.pull(image, pin.platform.as_ref()).await {
                        tracing::warn!(error = %e, "pinned image not refreshed; will retry");
                    }
                }
                tokio::time::sleep(pin.refresh).await;
            }
        }));
    }
    tasks
}
