//! The server: opens the store, builds the proxy and the access gate, binds the
//! listeners ([`connections`], [`tls`]) and serves until told to stop ([`shutdown`],
//! [`signals`]), swapping in a new configuration when told to reload ([`reload`]),
//! keeping `[[pin]]` images fetched and the store within its quota ([`housekeeping`]).

pub mod connections;
pub mod housekeeping;
pub mod reload;
pub mod shared_maintenance;
pub mod shutdown;
pub mod signals;
pub mod tls;

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use futures_util::StreamExt;

use crate::config::{self, Config};
use crate::ops::prefetch;
use crate::{access, api, proxy, secret, upstream};
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
    #[error("[cluster]: {0}")]
    Cluster(String),
    #[error("cannot open the shared store: {0}")]
    SharedStore(#[from] crate::shared_store::OpenError),
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
    serve_and_report(config, Audience::Clients, controls, |_, _| {}).await
}

/// Whom a server answers.
pub(crate) enum Audience {
    /// `ferry serve`: the configured listeners and access policy; pins kept fetched.
    Clients,
    /// `ferry prefetch` without a server: the operator's own pulls, on a loopback port
    /// that lives only as long, with Ferry's own token; no HTTPS listener, no pins.
    Operator,
}

/// [`serve`] for `audience`, telling `on_listening` the bound address and the token
/// Ferry's own pulls authenticate with (for an in-process Ferry on port 0, as
/// `ferry prefetch` runs one).
pub(crate) async fn serve_and_report(
    config: Config,
    audience: Audience,
    controls: Controls,
    on_listening: impl FnOnce(std::net::SocketAddr, &secret::Secret),
) -> Result<(), ServeError> {
    let (listen, tls, pins) = match audience {
        Audience::Clients => (config.listen, config.tls.as_ref(), &config.pins[..]),
        Audience::Operator => ((std::net::Ipv4Addr::LOCALHOST, 0).into(), None, &[][..]),
    };
    let root = config.storage_root.clone();
    let store = tokio::task::spawn_blocking(move || ferry_storage::Store::open(&root))
        .await
        .map_err(std::io::Error::other)?
        .map_err(|error| ServeError::Store {
            path: config.storage_root.display().to_string(),
            error,
        })?;
    let mut proxy = proxy::Proxy::new(&config, store)?;
    let mut shared_store = None;
    if let Some(shared) = &config.shared {
        let opened = crate::shared_store::open(shared)?;
        proxy = proxy.with_shared(opened.clone());
        shared_store = Some((opened, shared.eviction_grace));
    }
    // `ferry prefetch`'s in-process server is no replica: it forwards to none.
    let cluster = match audience {
        Audience::Clients => config.cluster.as_ref(),
        Audience::Operator => None,
    };
    let peers = match cluster {
        Some(c) => Some(Arc::new(
            crate::peers::Peers::new(c, proxy.metrics().peers_live().clone())
                .map_err(ServeError::Cluster)?,
        )),
        None => None,
    };
    if let Some(p) = &peers {
        proxy = proxy.with_peers(p.clone());
    }
    let proxy = Arc::new(proxy);
    let peer_listener = match cluster {
        Some(c) => Some(
            tokio::net::TcpListener::bind(c.listen)
                .await
                .map_err(|source| ServeError::Listen {
                    addr: c.listen,
                    source,
                })?,
        ),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: listen,
            source,
        })?;
    let addr = listener.local_addr()?;
    // Bound before the plain listener is announced: whoever waits for that line can
    // already use both.
    let tls = match tls {
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
    // Held in a `Gate` so that a config reload can swap the policy in place.
    let access = Arc::new(access::Gate::new(&config));
    on_listening(addr, access.internal_token());
    let pins = refresh_pins(pins, addr, access.internal_token());
    // `max_size` bounds the shared store, kept by one replica at a time (not by
    // `ferry prefetch`'s short-lived server).
    let shared_maintenance = shared_store
        .filter(|_| matches!(audience, Audience::Clients))
        .map(|(store, grace)| {
            Arc::new(shared_maintenance::SharedMaintenance::new(
                store,
                config.quota.max_size,
                grace,
                proxy.metrics().shared_store().clone(),
            ))
        });
    let housekeeping = housekeeping::Housekeeping::start(
        proxy.clone(),
        config.local_quota(),
        config.scrub_rate,
        shared_maintenance,
    );
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
    if let Some(l) = peer_listener {
        tracing::info!(
            replica = peers.as_ref().map_or("", |p| p.id()),
            "peer port listening on http://{}",
            l.local_addr()?
        );
        servers.spawn(
            axum_server::from_tcp(l.into_std()?)?
                .handle(axum_server::Handle::with_control(control.clone()))
                .serve(api::peer::router(proxy.clone()).into_make_service()),
        );
    }
    let membership = peers.as_ref().map(|p| p.start());
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
    if let Some(m) = membership {
        m.abort();
    }
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
    let base = crate::ops::listen_url(addr);
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
