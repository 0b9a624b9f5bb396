//! The proxy: local store first, then the upstream, teeing what it fetches into the
//! store. It answers in domain types; `api` turns them into HTTP.
//!
//! - A request is first routed ([`Proxy::route`]) to an upstream and the repository
//!   name there.
//! - Manifests ([`manifest`]) and blobs ([`blob`]) are served from the store when it
//!   holds them for that repository, fetched otherwise; at most one upstream fetch
//!   per blob runs at a time ([`inflight`]).
//! - Ferry is read-only: nothing here writes to an upstream.

mod blob;
mod error;
mod inflight;
mod manifest;
mod pins;
mod ready;
mod reconfigure;
mod referrers;
mod route;
mod shared;
mod status;
mod tags;

use std::sync::Arc;

use ferry_storage::backend::{Backend, BlobStore, FsBackend};
use ferry_storage::{Repo, Store};

pub use blob::{Blob, ByteRange};
pub use error::{Error, Result};
pub use manifest::ServedManifest;
pub use reconfigure::Reconfigured;
pub use referrers::Referrers;
pub use route::{names_registry, route_offline};
pub use status::{ImageStatus, PlatformStatus, Status};
pub use tags::TagList;

pub use crate::cache_status::CacheStatus;

use crate::cache_rules::CacheRules;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::upstream;

// Here, not in `cache_status`: it reads the upstream's errors, and that module must
// stay a leaf (`upstream` imports `metrics`, which imports it).
impl CacheStatus {
    /// The label of an answer the cache gave because the upstream could not be asked.
    fn for_unavailable(e: &upstream::Error) -> CacheStatus {
        match e {
            upstream::Error::Offline { .. } => CacheStatus::Offline,
            _ => CacheStatus::Stale,
        }
    }
}

/// The `Warning` text for an answer served from the cache in place of the upstream.
fn served_from_cache(t: &Target) -> String {
    format!(
        "served from cache: upstream {} unreachable",
        t.upstream.name()
    )
}

/// A request resolved to an upstream and the repository name there.
#[derive(Debug, Clone)]
pub struct Target {
    pub upstream: Arc<upstream::Client>,
    pub repo: Repo,
}

impl Target {
    /// `method /v2/<repo>/<path>` at the upstream: a 2xx or 404 answer.
    async fn send(
        &self,
        method: http::Method,
        path: &str,
        headers: http::HeaderMap,
    ) -> Result<upstream::Response, upstream::Error> {
        self.upstream
            .send(method, &self.repo.name, path, &[], headers)
            .await
    }
}

/// What a configuration reload replaces, swapped whole: the upstream clients and the
/// cache rules. A request takes the snapshot when it is routed and keeps the client it
/// got (a fetch already running finishes on it).
pub struct Settings {
    upstreams: Vec<Arc<upstream::Client>>,
    rules: CacheRules,
}

pub struct Proxy {
    store: Arc<Store>,
    /// The blob side of [`Proxy::store`] through the storage seam (see
    /// `ferry_storage::backend`), which warm blobs are read from.
    blob_store: Arc<dyn BlobStore>,
    /// `[storage.shared]`: the store replicas share, behind the local one (see [`shared`]).
    shared: Option<Arc<shared::SharedTier>>,
    /// `[cluster]`: the other replicas, and which one owns a digest.
    peers: Option<Arc<crate::peers::Peers>>,
    settings: arc_swap::ArcSwap<Settings>,
    /// `[[pin]]` images: reported by `status`, never evicted.
    pins: Vec<crate::config::Pin>,
    inflight: inflight::Inflight,
    metrics: Arc<Metrics>,
    /// Whether the store was writable at the last readiness check (see [`ready`]).
    ready: std::sync::atomic::AtomicBool,
}

impl Proxy {
    pub fn new(config: &Config, store: Store) -> Result<Proxy, upstream::Error> {
        let store = Arc::new(store);
        let metrics = Arc::new(Metrics::new(store.clone()));
        metrics.set_store_max(config.local_quota().max_size);
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| upstream::Client::new(u.clone(), &metrics).map(Arc::new))
            .collect::<Result<_, _>>()?;
        Ok(Proxy {
            blob_store: Arc::new(FsBackend::new(store.clone())),
            shared: None,
            peers: None,
            store,
            settings: arc_swap::ArcSwap::from_pointee(Settings {
                upstreams,
                rules: CacheRules::new(config.rules.clone()),
            }),
            pins: config.pins.clone(),
            inflight: inflight::Inflight::new(metrics.inflight().clone()),
            metrics,
            ready: std::sync::atomic::AtomicBool::new(true),
        })
    }

    /// Puts `shared` behind the local store: what the local store misses is looked for
    /// there, and what is fetched from an upstream is copied there.
    pub fn with_shared(mut self, shared: Arc<dyn Backend>) -> Proxy {
        let metrics = self.metrics.shared_store().clone();
        self.shared = Some(Arc::new(shared::SharedTier::new(shared, metrics)));
        self
    }

    /// Sends misses to the replica that owns the digest (see `crate::peers`).
    pub fn with_peers(mut self, peers: Arc<crate::peers::Peers>) -> Proxy {
        self.peers = Some(peers);
        self
    }

    /// The cluster this replica is in, if any.
    pub fn peers(&self) -> Option<&Arc<crate::peers::Peers>> {
        self.peers.as_ref()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The configured upstreams, in configuration order.
    pub fn upstreams(&self) -> Vec<Arc<upstream::Client>> {
        self.settings.load().upstreams.clone()
    }

    /// Runs blocking storage work off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> ferry_storage::Result<T> + Send + 'static,
    ) -> Result<T> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| Error::from(std::io::Error::other(e)))?
            .map_err(Error::from)
    }
}
