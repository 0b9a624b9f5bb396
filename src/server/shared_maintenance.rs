//! Maintenance of the shared store (`[storage.shared]`) from `ferry serve`: its quota
//! and eviction, on one replica at a time, and this replica's access times.
//!
//! - **One replica at a time.** Every [`TICK`] each replica tries to take (or renew)
//!   the store's maintenance lease ([`MetaStore::take_maintenance_lease`], a
//!   conditional write; it lasts [`LEASE_TTL`]). The one that holds it checks the
//!   shared store against `[storage] max_size` and, over it, evicts least recently
//!   used images down to the low-water mark
//!   ([`ObjectBackend::evict_shared`] says what is kept: content other images hold,
//!   and whatever was used within `eviction_grace`). The others do nothing. A holder
//!   that dies is replaced once its lease expires; one that stops gives it up.
//! - **Access times.** The shared store's least-recently-used order is the blob
//!   records' access times. Blobs a replica serves from its local tier never touch the
//!   shared store, so at each access-time flush (`housekeeping::FLUSH_EVERY`) the uses
//!   it wrote into its local index are written there too: only blobs the shared store
//!   holds, a few at once, forward only (a later time another replica wrote stays).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use ferry_oci::{Digest, Tag};
use ferry_storage::backend::{BlobStore, MetaStore, ObjectBackend};
use ferry_storage::{Repo, now_millis};

use crate::bytesize::Human;
use crate::config::Quota;
use crate::metrics::SharedStoreMetrics;
use crate::proxy::Proxy;
use crate::server::housekeeping::{RETRY_MAX, RETRY_MIN};

/// How often a replica checks the lease and the shared store's quota.
pub const TICK: Duration = Duration::from_secs(10);
/// How long a lease lasts unless renewed (it is renewed before each pass): long enough
/// for a pass over a large store, short enough that a dead holder is replaced within a
/// couple of minutes. A pass that outlasts it may overlap the next holder's; the worst
/// that does is evict more than needed (each pass still spares content other images
/// hold and whatever was used within the grace period).
pub const LEASE_TTL: Duration = Duration::from_secs(120);
/// Access records written to the shared store at once.
const RECORDS_IN_FLIGHT: usize = 8;
/// The most one flush of access times to the shared store may take: a store that does
/// not answer must not hold up the local housekeeping, nor a shutdown. What is skipped
/// only makes those blobs look older to the shared eviction (the grace period covers
/// what is being served).
const RECORDS_TIMEOUT: Duration = Duration::from_secs(10);

/// What this replica does for the shared store.
pub struct SharedMaintenance {
    store: Arc<ObjectBackend>,
    /// The shared store's quota (`[storage] max_size`).
    max_size: Option<u64>,
    grace: Duration,
    /// This process, as the lease names it.
    holder: String,
    metrics: SharedStoreMetrics,
}

impl SharedMaintenance {
    pub fn new(
        store: Arc<ObjectBackend>,
        max_size: Option<u64>,
        grace: Duration,
        metrics: SharedStoreMetrics,
    ) -> SharedMaintenance {
        // Unique per process: in a pod every replica is pid 1 and the host name is the
        // pod's, so the start time tells two processes apart.
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "ferry".into());
        let holder = format!("{host}-{}-{:x}", std::process::id(), now_nanos());
        SharedMaintenance {
            store,
            max_size,
            grace,
            holder,
            metrics,
        }
    }

    /// Writes uses this replica made of blobs (digest, size, seconds since the epoch)
    /// into the shared store's records, for those it holds.
    pub async fn record_access(&self, used: Vec<(Digest, u64, u64)>) {
        let store = &self.store;
        let writes = futures_util::stream::iter(used)
            .map(|(d, size, at)| async move {
                // Only what the shared store holds: a record without its object is
                // what a check reports as damage.
                if store.stat(&d).await?.is_none() {
                    return Ok(false);
                }
                store.record_access(&d, size, at).await.map(|()| true)
            })
            .buffer_unordered(RECORDS_IN_FLIGHT)
            .collect::<Vec<ferry_storage::Result<bool>>>();
        let Ok(written) = tokio::time::timeout(RECORDS_TIMEOUT, writes).await else {
            tracing::warn!(timeout = ?RECORDS_TIMEOUT, "could not write access times to the shared store in time; skipped");
            return;
        };
        let n = written.iter().filter(|w| matches!(w, Ok(true))).count();
        match written.into_iter().find_map(Result::err) {
            Some(e) => {
                tracing::warn!(error = %e, written = n, "could not write access times to the shared store")
            }
            None if n > 0 => tracing::debug!(blobs = n, "access times written to the shared store"),
            None => {}
        }
    }

    /// Starts the lease and quota task; it stops (giving the lease up) when `stopped`
    /// changes.
    /// `proxy` says which images are pinned (`[[pin]]`): never evicted.
    pub fn start(
        self: Arc<Self>,
        proxy: Arc<Proxy>,
        stopped: watch::Receiver<bool>,
    ) -> Option<JoinHandle<()>> {
        let max_size = self.max_size?;
        Some(tokio::spawn(self.run(proxy, max_size, stopped)))
    }

    async fn run(
        self: Arc<Self>,
        proxy: Arc<Proxy>,
        max_size: u64,
        mut stopped: watch::Receiver<bool>,
    ) {
        let quota = Quota {
            max_size: Some(max_size),
            min_free: None,
        };
        let mut tick = tokio::time::interval(TICK);
        let mut held = false;
        // After a pass that could not reach the mark, the next waits, backing off.
        let (mut next_pass, mut retry) = (Instant::now(), RETRY_MIN);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stopped.changed() => break,
            }
            let now = now_millis();
            let granted = match self
                .store
                .take_maintenance_lease(&self.holder, now, LEASE_TTL)
                .await
            {
                Ok(g) => g,
                Err(e) => {
                    tracing::debug!(error = %e, "shared store: could not check the maintenance lease");
                    false
                }
            };
            if granted != held {
                if granted {
                    tracing::info!(holder = %self.holder, "took the shared store's maintenance lease: this replica keeps the shared store within max_size");
                } else {
                    tracing::info!(holder = %self.holder, "gave up or lost the shared store's maintenance lease");
                }
                held = granted;
                self.metrics.lease_held.set(i64::from(held));
            }
            if held && Instant::now() >= next_pass {
                if self.pass(&proxy, &quota, now).await {
                    retry = RETRY_MIN;
                } else {
                    next_pass = Instant::now() + retry;
                    retry = (retry * 2).min(RETRY_MAX);
                }
            }
        }
        if held {
            if let Err(e) = self.store.release_maintenance_lease(&self.holder).await {
                tracing::debug!(error = %e, "could not release the shared store's maintenance lease (it expires by itself)");
            }
            self.metrics.lease_held.set(0);
        }
    }

    /// One quota check and, over it, one eviction pass; whether the store is within
    /// its quota now.
    async fn pass(&self, proxy: &Proxy, quota: &Quota, now: u64) -> bool {
        let pinned = |d: &Digest, tags: &[(Repo, Tag)]| proxy.is_pinned(d, tags);
        match self
            .store
            .evict_shared(|used| quota.to_free(used, None), &pinned, self.grace, now)
            .await
        {
            Ok(r) if r.goal == 0 => true,
            Ok(r) => {
                self.metrics.evictions.inc_by(r.evicted.len() as u64);
                self.metrics.evicted_bytes.inc_by(r.freed);
                let after = r.used_before - r.freed;
                tracing::info!(
                    holder = %self.holder,
                    images = r.evicted.len(),
                    blobs = r.blobs_deleted,
                    freed = %Human(r.freed),
                    before = %Human(r.used_before),
                    after = %Human(after),
                    max_size = %Human(quota.max_size.unwrap_or(0)),
                    kept_recent = r.kept_recent,
                    pinned = r.pinned,
                    stale_records = r.stale_records,
                    "shared store eviction: evicted least recently used images"
                );
                if !r.reached_goal() {
                    tracing::warn!(
                        short_by = %Human(r.goal - r.freed),
                        kept_recent = r.kept_recent,
                        grace = %humantime::format_duration(self.grace),
                        "shared store still over max_size: what is left was used within the grace period"
                    );
                }
                r.reached_goal()
            }
            Err(e) => {
                tracing::warn!(error = %e, "shared store eviction pass failed; will retry");
                false
            }
        }
    }
}

fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use ferry_storage::backend::{AzureAuth, AzureStore, EVICTION_GRACE, put_blob};
    use ferry_testkit::azurite::{ACCOUNT, Azurite, KEY};

    use super::*;

    fn metrics() -> SharedStoreMetrics {
        SharedStoreMetrics {
            up: Default::default(),
            errors: Default::default(),
            read: Default::default(),
            written: Default::default(),
            evictions: Default::default(),
            evicted_bytes: Default::default(),
            lease_held: Default::default(),
        }
    }

    /// A replica's uses reach the shared records: later times only (another replica's
    /// later use stays), and only for blobs the shared store holds (no record without
    /// an object).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn uses_reach_the_shared_records_forward_only_for_what_it_holds() {
        let azurite = Azurite::start();
        azurite.create_container("ferry");
        let store = AzureStore {
            account: ACCOUNT.into(),
            container: "ferry".into(),
            endpoint: Some(azurite.endpoint()),
            auth: AzureAuth::AccountKey(KEY.into()),
            http: None,
        }
        .build()
        .unwrap();
        let shared = Arc::new(ObjectBackend::new(store, "t").unwrap());
        let held = Digest::sha256_of(b"held");
        put_blob(&*shared, &held, Bytes::from_static(b"held"))
            .await
            .unwrap();
        shared.record_access(&held, 4, 100).await.unwrap();
        let absent = Digest::sha256_of(b"absent");
        let m = SharedMaintenance::new(shared.clone(), None, EVICTION_GRACE, metrics());

        m.record_access(vec![(held.clone(), 4, 200), (absent.clone(), 6, 200)])
            .await;
        let rec = shared.blob_record(&held).await.unwrap().unwrap();
        assert_eq!((rec.size, rec.last_access), (4, 200));
        assert_eq!(shared.blob_record(&absent).await.unwrap(), None);
        // An older use (this replica's flush after another replica's) changes nothing.
        m.record_access(vec![(held.clone(), 4, 150)]).await;
        let rec = shared.blob_record(&held).await.unwrap().unwrap();
        assert_eq!(rec.last_access, 200);
    }
}
