//! What an operator measures: the Prometheus metrics `GET /metrics` serves, and the
//! few in-memory tallies the status page shows (the most pulled images).
//!
//! One [`Metrics`] per server, owned by the [`Proxy`](crate::proxy::Proxy); every
//! counter is registered once here. Hot paths hold pre-resolved handles (a counter per
//! cache result, an [`UpstreamMetrics`] per upstream client), so counting a body chunk
//! is one atomic add: no label lookup, lock or allocation. Store size is not counted
//! here at all: it is read at scrape time from the store's running count
//! ([`ferry_storage::Usage`]), which never walks the store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::cache_status::CacheStatus;

/// Response-time buckets (seconds): from a warm manifest hit to a large cold blob.
const HTTP_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Upstream answer-time buckets (seconds): a nearby mirror to a slow WAN link.
const UPSTREAM_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// How many images the pull tally tracks (the status page shows the top few).
const TRACKED_IMAGES: usize = 200;

/// The `route` label of `ferry_http_requests_total`: a fixed set, never a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    Version,
    Manifest,
    Blob,
    Tags,
    Referrers,
    Status,
    Metrics,
    Page,
    Other,
}

impl Route {
    fn as_str(self) -> &'static str {
        match self {
            Route::Version => "version",
            Route::Manifest => "manifest",
            Route::Blob => "blob",
            Route::Tags => "tags",
            Route::Referrers => "referrers",
            Route::Status => "status",
            Route::Metrics => "metrics",
            Route::Page => "page",
            Route::Other => "other",
        }
    }
}

/// What was served: the `kind` label of `ferry_cache_results_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Manifest,
    Blob,
}

/// The `kind` label of `ferry_upstream_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    /// No connection, or it broke off.
    Unreachable,
    Timeout,
    /// An unexpected HTTP status (5xx, 429, 403...).
    Status,
    /// Bytes that did not match their digest.
    Digest,
    /// Ferry's credentials refused, or no token could be had.
    Auth,
    /// The upstream broke the protocol.
    Other,
}

const ERROR_KINDS: [UpstreamErrorKind; 6] = [
    UpstreamErrorKind::Unreachable,
    UpstreamErrorKind::Timeout,
    UpstreamErrorKind::Status,
    UpstreamErrorKind::Digest,
    UpstreamErrorKind::Auth,
    UpstreamErrorKind::Other,
];

impl UpstreamErrorKind {
    fn as_str(self) -> &'static str {
        match self {
            UpstreamErrorKind::Unreachable => "unreachable",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Status => "status",
            UpstreamErrorKind::Digest => "digest",
            UpstreamErrorKind::Auth => "auth",
            UpstreamErrorKind::Other => "other",
        }
    }
}

const RESULTS: [CacheStatus; 7] = [
    CacheStatus::Hit,
    CacheStatus::Shared,
    CacheStatus::Peer,
    CacheStatus::Miss,
    CacheStatus::Joined,
    CacheStatus::Stale,
    CacheStatus::Offline,
];

fn result_index(c: CacheStatus) -> usize {
    match c {
        CacheStatus::Hit => 0,
        CacheStatus::Shared => 1,
        CacheStatus::Peer => 2,
        CacheStatus::Miss => 3,
        CacheStatus::Joined => 4,
        CacheStatus::Stale => 5,
        CacheStatus::Offline => 6,
    }
}

fn result_label(c: CacheStatus) -> &'static str {
    match c {
        CacheStatus::Hit => "hit",
        CacheStatus::Shared => "shared",
        CacheStatus::Peer => "peer",
        CacheStatus::Miss => "miss",
        CacheStatus::Joined => "joined",
        CacheStatus::Stale => "stale",
        CacheStatus::Offline => "offline",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    route: &'static str,
    method: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    kind: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamErrorLabels {
    upstream: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    upstream: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    http_requests: Family<HttpLabels, Counter>,
    http_duration: HistogramFamily<RouteLabels>,
    /// `[kind][result]`, resolved once.
    cache_results: [[Counter; RESULTS.len()]; 2],
    /// Per result, resolved once.
    served: [Counter; RESULTS.len()],
    upstream_bytes: Family<UpstreamLabels, Counter>,
    upstream_duration: HistogramFamily<UpstreamLabels>,
    upstream_errors: Family<UpstreamErrorLabels, Counter>,
    token_refreshes: Family<TokenLabels, Counter>,
    upstream_up: Family<UpstreamLabels, Gauge>,
    inflight: Gauge,
    store_max: Gauge,
    evictions: Counter,
    evicted_bytes: Counter,
    scrub_checked: Counter,
    scrub_dropped: Counter,
    pulls: Pulls,
    shared: SharedStoreMetrics,
    peer_bytes: Counter,
    peer_errors: Counter,
    peers_live: Gauge,
}

/// The shared store's health and traffic (`[storage.shared]`), as this replica sees it.
#[derive(Clone, Debug)]
pub struct SharedStoreMetrics {
    /// `ferry_shared_store_up`: 1 while it answers, 0 while this replica rests it after a
    /// failure (and when none is configured).
    pub up: Gauge,
    /// `ferry_shared_store_errors`: failed reads and copies.
    pub errors: Counter,
    /// `ferry_shared_store{direction="read"}`: blob and manifest bytes read from it.
    pub read: Counter,
    /// `ferry_shared_store{direction="written"}`: bytes this replica copied to it.
    pub written: Counter,
    /// `ferry_shared_evictions`: units (images, lone blobs) this replica evicted from
    /// the shared store.
    pub evictions: Counter,
    /// `ferry_shared_evicted_bytes`: bytes they held.
    pub evicted_bytes: Counter,
    /// `ferry_shared_maintenance_lease`: 1 while this replica holds the shared store's
    /// maintenance lease (it runs the shared quota and eviction).
    pub lease_held: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: &'static str,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Every metric, registered; the store's size is read from `store` at each scrape.
    pub fn new(store: Arc<ferry_storage::Store>) -> Metrics {
        let mut r = Registry::default();
        let http_requests = Family::<HttpLabels, Counter>::default();
        r.register(
            "ferry_http_requests",
            "HTTP requests answered, by route, method and status",
            http_requests.clone(),
        );
        let http_duration: HistogramFamily<RouteLabels> =
            Family::new_with_constructor(|| Histogram::new(HTTP_BUCKETS));
        r.register_with_unit(
            "ferry_http_request_duration",
            "Time to answer a request (until the response headers), by route",
            Unit::Seconds,
            http_duration.clone(),
        );
        let cache_family = Family::<CacheLabels, Counter>::default();
        r.register(
            "ferry_cache_results",
            "Manifest and blob requests by what the cache did: hit, shared (from the shared store), peer (from the replica owning it), miss (fetched), joined (a fetch in flight), stale or offline (served from cache, upstream unavailable)",
            cache_family.clone(),
        );
        let cache_results = ["manifest", "blob"].map(|kind| {
            RESULTS.map(|c| {
                cache_family
                    .get_or_create(&CacheLabels {
                        kind,
                        result: result_label(c),
                    })
                    .clone()
            })
        });
        let served_family = Family::<ResultLabels, Counter>::default();
        r.register_with_unit(
            "ferry_served",
            "Manifest and blob body bytes sent to clients, by cache result",
            Unit::Bytes,
            served_family.clone(),
        );
        let served = RESULTS.map(|c| {
            served_family
                .get_or_create(&ResultLabels {
                    result: result_label(c),
                })
                .clone()
        });
        let upstream_bytes = Family::<UpstreamLabels, Counter>::default();
        r.register_with_unit(
            "ferry_upstream",
            "Manifest and blob body bytes fetched from each upstream",
            Unit::Bytes,
            upstream_bytes.clone(),
        );
        let upstream_duration: HistogramFamily<UpstreamLabels> =
            Family::new_with_constructor(|| Histogram::new(UPSTREAM_BUCKETS));
        r.register_with_unit(
            "ferry_upstream_request_duration",
            "Time until an upstream answered (headers, including token fetches and redirects)",
            Unit::Seconds,
            upstream_duration.clone(),
        );
        let upstream_errors = Family::<UpstreamErrorLabels, Counter>::default();
        r.register(
            "ferry_upstream_errors",
            "Failed upstream requests and bodies, by upstream and kind",
            upstream_errors.clone(),
        );
        let inflight = Gauge::default();
        r.register(
            "ferry_inflight_fetches",
            "Blob downloads from upstreams running now",
            inflight.clone(),
        );
        r.register_collector(Box::new(StoreSize { store }));
        let store_max = Gauge::default();
        r.register(
            "ferry_store_max_bytes",
            "The store's max_size quota in bytes (0: no quota)",
            store_max.clone(),
        );
        let evictions = Counter::default();
        r.register(
            "ferry_evictions",
            "Images (and lone blobs) evicted to keep the store within its quota",
            evictions.clone(),
        );
        let evicted_bytes = Counter::default();
        r.register_with_unit(
            "ferry_evicted",
            "Bytes freed by eviction",
            Unit::Bytes,
            evicted_bytes.clone(),
        );
        let scrub_checked = Counter::default();
        r.register_with_unit(
            "ferry_scrub_checked",
            "Bytes of stored blobs the background scrub re-hashed",
            Unit::Bytes,
            scrub_checked.clone(),
        );
        let scrub_dropped = Counter::default();
        r.register(
            "ferry_scrub_dropped",
            "Stored blobs the background scrub found damaged (bytes not matching their digest) and dropped",
            scrub_dropped.clone(),
        );
        let token_refreshes = Family::<TokenLabels, Counter>::default();
        r.register(
            "ferry_token_refreshes",
            "Registry tokens fetched or renewed (ACR exchanges included), by upstream and result",
            token_refreshes.clone(),
        );
        let upstream_up = Family::<UpstreamLabels, Gauge>::default();
        r.register(
            "ferry_upstream_up",
            "1 while an upstream answers, 0 while it is offline (circuit open)",
            upstream_up.clone(),
        );
        let shared_bytes = Family::<DirectionLabels, Counter>::default();
        let direction = |direction| {
            shared_bytes
                .get_or_create(&DirectionLabels { direction })
                .clone()
        };
        let shared = SharedStoreMetrics {
            up: Gauge::default(),
            errors: Counter::default(),
            read: direction("read"),
            written: direction("written"),
            evictions: Counter::default(),
            evicted_bytes: Counter::default(),
            lease_held: Gauge::default(),
        };
        r.register(
            "ferry_shared_evictions",
            "Images and lone blobs this replica evicted from the shared store",
            shared.evictions.clone(),
        );
        r.register_with_unit(
            "ferry_shared_evicted",
            "Bytes this replica evicted from the shared store",
            Unit::Bytes,
            shared.evicted_bytes.clone(),
        );
        r.register(
            "ferry_shared_maintenance_lease",
            "1 while this replica holds the shared store's maintenance lease (it runs the shared quota and eviction)",
            shared.lease_held.clone(),
        );
        r.register_with_unit(
            "ferry_shared_store",
            "Blob and manifest bytes read from the shared store and copied to it by this replica",
            Unit::Bytes,
            shared_bytes,
        );
        r.register(
            "ferry_shared_store_up",
            "1 while the shared store answers; 0 while this replica rests it after a failure, or when none is configured",
            shared.up.clone(),
        );
        r.register(
            "ferry_shared_store_errors",
            "Failed reads from and copies to the shared store",
            shared.errors.clone(),
        );
        let peer_bytes = Counter::default();
        r.register_with_unit(
            "ferry_peer_received",
            "Blob bytes streamed from the replica owning them",
            Unit::Bytes,
            peer_bytes.clone(),
        );
        let peer_errors = Counter::default();
        r.register(
            "ferry_peer_errors",
            "Blobs the owning replica could not give (fetched from the upstream instead)",
            peer_errors.clone(),
        );
        let peers_live = Gauge::default();
        r.register(
            "ferry_peers_live",
            "Replicas this one sees answering on the peer port, itself included (0: no [cluster])",
            peers_live.clone(),
        );
        let build_info = Family::<VersionLabels, Gauge>::default();
        build_info
            .get_or_create(&VersionLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        r.register("ferry_build_info", "Ferry's version", build_info);
        Metrics {
            registry: r,
            http_requests,
            http_duration,
            cache_results,
            served,
            upstream_bytes,
            upstream_duration,
            upstream_errors,
            token_refreshes,
            upstream_up,
            inflight,
            store_max,
            evictions,
            evicted_bytes,
            scrub_checked,
            scrub_dropped,
            pulls: Pulls::default(),
            shared,
            peer_bytes,
            peer_errors,
            peers_live,
        }
    }

    /// Bytes received from owning replicas, to add to as they arrive.
    pub fn peer_bytes(&self) -> &Counter {
        &self.peer_bytes
    }

    /// A blob the owning replica could not give.
    pub fn peer_error(&self) {
        self.peer_errors.inc();
    }

    /// The gauge of live replicas, which `crate::peers` keeps.
    pub fn peers_live(&self) -> &Gauge {
        &self.peers_live
    }

    /// The shared store's health and traffic counters.
    pub fn shared_store(&self) -> &SharedStoreMetrics {
        &self.shared
    }

    /// The exposition: OpenMetrics when the scraper asks for it, else Prometheus text
    /// 0.0.4 (what `promtool` and older scrapers read). Returns the body and its type.
    pub fn encode(&self, openmetrics: bool) -> (String, &'static str) {
        let mut out = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail.
        if openmetrics {
            let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
            (
                out,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
        } else {
            let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
            (
                out,
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            )
        }
    }

    /// One answered request.
    pub fn request(&self, route: Route, method: &http::Method, status: u16, took: Duration) {
        let method = match *method {
            http::Method::GET => "GET",
            http::Method::HEAD => "HEAD",
            http::Method::PUT => "PUT",
            http::Method::POST => "POST",
            http::Method::PATCH => "PATCH",
            http::Method::DELETE => "DELETE",
            http::Method::OPTIONS => "OPTIONS",
            _ => "other",
        };
        let route = route.as_str();
        self.http_requests
            .get_or_create(&HttpLabels {
                route,
                method,
                status,
            })
            .inc();
        self.http_duration
            .get_or_create(&RouteLabels { route })
            .observe(took.as_secs_f64());
    }

    /// A manifest or blob answered from the cache (or not), as `cache` says.
    pub fn cache_result(&self, kind: Kind, cache: CacheStatus) {
        let k = match kind {
            Kind::Manifest => 0,
            Kind::Blob => 1,
        };
        self.cache_results[k][result_index(cache)].inc();
    }

    /// The counter of body bytes served with `cache`, to add to as chunks go out.
    pub fn served(&self, cache: CacheStatus) -> &Counter {
        &self.served[result_index(cache)]
    }

    /// The counters of one upstream, resolved once for its client.
    pub fn upstream(&self, name: &str) -> UpstreamMetrics {
        let upstream = || name.to_string();
        let token = |result| {
            self.token_refreshes
                .get_or_create(&TokenLabels {
                    upstream: upstream(),
                    result,
                })
                .clone()
        };
        let up = self
            .upstream_up
            .get_or_create(&UpstreamLabels {
                upstream: upstream(),
            })
            .clone();
        up.set(1);
        UpstreamMetrics {
            bytes: self
                .upstream_bytes
                .get_or_create(&UpstreamLabels {
                    upstream: upstream(),
                })
                .clone(),
            duration: self
                .upstream_duration
                .get_or_create(&UpstreamLabels {
                    upstream: upstream(),
                })
                .clone(),
            errors: ERROR_KINDS.map(|k| {
                self.upstream_errors
                    .get_or_create(&UpstreamErrorLabels {
                        upstream: upstream(),
                        kind: k.as_str(),
                    })
                    .clone()
            }),
            token_ok: token("ok"),
            token_error: token("error"),
            up,
        }
    }

    /// Drops the `ferry_upstream_up` series of an upstream a reload removed: a gone
    /// upstream is neither up nor down, and its last value would otherwise stay for
    /// as long as the process runs. Its clients still running keep a gauge no one
    /// scrapes. Its counters stay: they are totals of what did happen.
    pub fn forget_upstream(&self, name: &str) {
        self.upstream_up.remove(&UpstreamLabels {
            upstream: name.to_string(),
        });
    }

    /// The gauge of blob downloads in flight.
    pub fn inflight(&self) -> &Gauge {
        &self.inflight
    }

    /// The quota's `max_size` (`None`: no quota).
    pub fn set_store_max(&self, max: Option<u64>) {
        self.store_max
            .set(max.map_or(0, |m| i64::try_from(m).unwrap_or(i64::MAX)));
    }

    /// The quota's `max_size`, as last set.
    pub fn store_max(&self) -> Option<u64> {
        u64::try_from(self.store_max.get()).ok().filter(|&m| m > 0)
    }

    /// One eviction pass: `images` units evicted, `bytes` freed.
    pub fn evicted(&self, images: usize, bytes: u64) {
        self.evictions.inc_by(images as u64);
        self.evicted_bytes.inc_by(bytes);
    }

    /// One blob re-hashed by the scrub: `bytes` read, and whether it was dropped.
    pub fn scrubbed(&self, bytes: u64, dropped: bool) {
        self.scrub_checked.inc_by(bytes);
        if dropped {
            self.scrub_dropped.inc();
        }
    }

    /// A manifest GET of `image` (`<registry>/<repository>`), for the pull tally.
    pub fn record_pull(&self, image: &str) {
        self.pulls.record(image);
    }

    /// The `n` most pulled images with their manifest GETs, most first.
    pub fn most_pulled(&self, n: usize) -> Vec<(String, u64)> {
        self.pulls.top(n)
    }

    /// Requests by cache result, summed over manifests and blobs, and the bytes served
    /// with each: `(result, requests, bytes)`.
    pub fn cache_totals(&self) -> Vec<(CacheStatus, u64, u64)> {
        RESULTS
            .iter()
            .map(|&c| {
                let i = result_index(c);
                (
                    c,
                    self.cache_results[0][i].get() + self.cache_results[1][i].get(),
                    self.served[i].get(),
                )
            })
            .collect()
    }
}

/// One upstream's counters, held by its client.
#[derive(Clone, Debug)]
pub struct UpstreamMetrics {
    bytes: Counter,
    duration: Histogram,
    errors: [Counter; 6],
    token_ok: Counter,
    token_error: Counter,
    up: Gauge,
}

impl UpstreamMetrics {
    /// `n` body bytes received.
    pub fn fetched(&self, n: u64) {
        self.bytes.inc_by(n);
    }

    /// Body bytes received so far.
    pub fn fetched_total(&self) -> u64 {
        self.bytes.get()
    }

    /// An answer (or failure) after `took`.
    pub fn answered_after(&self, took: Duration) {
        self.duration.observe(took.as_secs_f64());
    }

    pub fn error(&self, kind: UpstreamErrorKind) {
        let i = ERROR_KINDS
            .iter()
            .position(|k| *k == kind)
            .expect("every kind is listed");
        self.errors[i].inc();
    }

    pub fn token_refresh(&self, ok: bool) {
        if ok {
            self.token_ok.inc();
        } else {
            self.token_error.inc();
        }
    }

    /// The circuit: `false` while the upstream counts as offline.
    pub fn set_up(&self, up: bool) {
        self.up.set(i64::from(up));
    }
}

/// Store size, read at scrape time from the store's running counts.
#[derive(Debug)]
struct StoreSize {
    store: Arc<ferry_storage::Store>,
}

impl Collector for StoreSize {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let usage = self.store.blobs.usage();
        let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        for (name, help, value) in [
            (
                "ferry_store_bytes",
                "Bytes of blobs (manifests included) in the store",
                usage.bytes(),
            ),
            (
                "ferry_store_blobs",
                "Blobs (manifests included) in the store",
                usage.blobs(),
            ),
        ] {
            let gauge = ConstGauge::new(as_i64(value));
            let m = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            gauge.encode(m)?;
        }
        Ok(())
    }
}

/// Manifest GETs per image, for "most pulled": bounded by the Space-Saving scheme.
/// Once [`TRACKED_IMAGES`] names are tracked, a new one replaces the least counted
/// and inherits its count (+1), so heavy hitters stay and memory does not grow.
#[derive(Default)]
struct Pulls {
    counts: Mutex<HashMap<String, u64>>,
}

impl Pulls {
    fn record(&self, image: &str) {
        let mut counts = self.counts.lock().expect("pulls lock");
        if let Some(c) = counts.get_mut(image) {
            *c += 1;
            return;
        }
        let mut start = 1;
        if counts.len() >= TRACKED_IMAGES
            && let Some((least, n)) = counts
                .iter()
                .min_by_key(|(_, n)| **n)
                .map(|(k, n)| (k.clone(), *n))
        {
            counts.remove(&least);
            start = n + 1;
        }
        counts.insert(image.to_string(), start);
    }

    fn top(&self, n: usize) -> Vec<(String, u64)> {
        let mut all: Vec<(String, u64)> = self
            .counts
            .lock()
            .expect("pulls lock")
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(n);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> (tempfile::TempDir, Metrics) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(ferry_storage::Store::open(dir.path()).unwrap());
        (dir, Metrics::new(store))
    }

    #[test]
    fn exposes_the_documented_names() {
        let (_dir, m) = metrics();
        m.request(
            Route::Blob,
            &http::Method::GET,
            200,
            Duration::from_millis(3),
        );
        m.cache_result(Kind::Blob, CacheStatus::Miss);
        m.served(CacheStatus::Miss).inc_by(42);
        let up = m.upstream("acr");
        up.fetched(42);
        up.answered_after(Duration::from_millis(20));
        up.error(UpstreamErrorKind::Timeout);
        up.token_refresh(true);
        m.evicted(1, 7);
        m.scrubbed(5, true);
        m.set_store_max(Some(1 << 30));
        let (text, content_type) = m.encode(false);
        assert!(content_type.starts_with("text/plain; version=0.0.4"));
        for line in [
            "ferry_http_requests_total{route=\"blob\",method=\"GET\",status=\"200\"} 1",
            "ferry_http_request_duration_seconds_count{route=\"blob\"} 1",
            "ferry_cache_results_total{kind=\"blob\",result=\"miss\"} 1",
            "ferry_cache_results_total{kind=\"manifest\",result=\"hit\"} 0",
            "ferry_served_bytes_total{result=\"miss\"} 42",
            "ferry_upstream_bytes_total{upstream=\"acr\"} 42",
            "ferry_upstream_request_duration_seconds_count{upstream=\"acr\"} 1",
            "ferry_upstream_errors_total{upstream=\"acr\",kind=\"timeout\"} 1",
            "ferry_upstream_errors_total{upstream=\"acr\",kind=\"digest\"} 0",
            "ferry_inflight_fetches 0",
            "ferry_store_bytes 0",
            "ferry_store_blobs 0",
            "ferry_store_max_bytes 1073741824",
            "ferry_evictions_total 1",
            "ferry_evicted_bytes_total 7",
            "ferry_scrub_checked_bytes_total 5",
            "ferry_scrub_dropped_total 1",
            "ferry_token_refreshes_total{upstream=\"acr\",result=\"ok\"} 1",
            "ferry_upstream_up{upstream=\"acr\"} 1",
            &format!(
                "ferry_build_info{{version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            ),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        let (open, content_type) = m.encode(true);
        assert!(content_type.starts_with("application/openmetrics-text"));
        assert!(open.ends_with("# EOF\n"));
    }

    #[test]
    fn a_forgotten_upstream_has_no_up_series_until_it_comes_back() {
        let (_dir, m) = metrics();
        let _kept = m.upstream("kept");
        let gone = m.upstream("gone");
        m.forget_upstream("gone");
        // Its old client may still run a request that trips the circuit.
        gone.set_up(false);
        let up = |m: &Metrics| -> Vec<String> {
            let (text, _) = m.encode(false);
            text.lines()
                .filter(|l| l.starts_with("ferry_upstream_up{"))
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(up(&m), ["ferry_upstream_up{upstream=\"kept\"} 1"]);
        let _back = m.upstream("gone");
        let mut after = up(&m);
        after.sort();
        assert_eq!(
            after,
            [
                "ferry_upstream_up{upstream=\"gone\"} 1",
                "ferry_upstream_up{upstream=\"kept\"} 1",
            ]
        );
    }

    #[test]
    fn pull_tally_is_bounded_and_keeps_heavy_hitters() {
        let p = Pulls::default();
        for _ in 0..50 {
            p.record("mcr.microsoft.com/dotnet/runtime");
        }
        for i in 0..(TRACKED_IMAGES * 3) {
            p.record(&format!("docker.io/library/one-off-{i}"));
        }
        assert!(p.counts.lock().unwrap().len() <= TRACKED_IMAGES);
        let top = p.top(3);
        assert_eq!(top[0].0, "mcr.microsoft.com/dotnet/runtime");
        assert_eq!(top.len(), 3);
    }
}
