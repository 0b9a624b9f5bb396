//! The shared tier: the object store several replicas share (`[storage.shared]`),
//! behind this replica's local store.
//!
//! - **Reads.** A miss in the local store is looked up here before the upstream is
//!   asked. A blob streams from the shared store into the local one through the same
//!   single-flight fetch an upstream download uses (`blob.rs`, [`super::inflight`]);
//!   a manifest or a tag record is copied into the local store and served from there.
//!   Within `tag_ttl` a tag is answered from the local record alone: no shared-store
//!   round trip per request.
//! - **Writes.** What this replica fetched from the upstream is copied here once it is
//!   verified and stored locally, in the background: a client never waits for the
//!   shared store, and a shared store that fails costs only the copy (logged; the next
//!   replica to miss fetches from the upstream).
//! - **Failures are misses.** A shared store that cannot be read is treated as not
//!   holding what was asked: the upstream is asked instead. Nothing served depends on
//!   the shared store being up. After a failure the store rests for [`REST`] (not
//!   asked, nothing copied, `ferry_shared_store_up` 0): a store that is down then costs
//!   a miss nothing, rather than a connect timeout and retries each. The first request
//!   after the rest tries it again, so a store that is back is used again by itself.
//!
//! What is read back is trusted no more than an upstream: a blob is verified against
//! its digest as it streams into the local store, a manifest before it is stored.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;

use ferry_oci::{Digest, Tag};
use ferry_storage::backend::{self, Backend};
use ferry_storage::{Lease, ManifestRecord, TagRecord};

use super::{Proxy, Result, Target};
use crate::metrics::SharedStoreMetrics;

/// How long the shared store is left alone after a failure.
pub const REST: Duration = Duration::from_secs(10);

/// The shared store with this replica's view of its health.
pub(super) struct SharedTier {
    store: Arc<dyn Backend>,
    /// Milliseconds since the epoch until which the store is not asked; 0: answering.
    resting_until: AtomicU64,
    pub(super) metrics: SharedStoreMetrics,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl SharedTier {
    pub(super) fn new(store: Arc<dyn Backend>, metrics: SharedStoreMetrics) -> SharedTier {
        metrics.up.set(1);
        SharedTier {
            store,
            resting_until: AtomicU64::new(0),
            metrics,
        }
    }

    /// The store, unless it is resting after a failure.
    pub(super) fn available(&self) -> Option<&Arc<dyn Backend>> {
        let until = self.resting_until.load(Ordering::Relaxed);
        (until == 0 || now_ms() >= until).then_some(&self.store)
    }

    /// The store, resting or not (a read already decided on goes ahead).
    pub(super) fn store(&self) -> &Arc<dyn Backend> {
        &self.store
    }

    /// A failure of `what`: the store rests. Logged as a warning when it was answering,
    /// at debug level while it already failed (one line per outage, not per request).
    pub(super) fn failed(&self, what: &str, e: &dyn std::fmt::Display) {
        self.metrics.errors.inc();
        self.metrics.up.set(0);
        let was = self
            .resting_until
            .swap(now_ms() + REST.as_millis() as u64, Ordering::Relaxed);
        if was == 0 {
            tracing::warn!(error = %e, rest_secs = REST.as_secs(), "shared store failed ({what}); serving from the local store and the upstream, trying it again after a rest");
        } else {
            tracing::debug!(error = %e, "shared store failed again ({what})");
        }
    }

    /// An answer: a store that was resting is used again.
    pub(super) fn answered(&self) {
        if self.resting_until.swap(0, Ordering::Relaxed) != 0 {
            self.metrics.up.set(1);
            tracing::info!("shared store answers again");
        }
    }

    /// `r`, or `None` once the failure is noted.
    fn ok<T>(&self, what: &str, r: ferry_storage::Result<T>) -> Option<T> {
        match r {
            Ok(v) => {
                self.answered();
                Some(v)
            }
            Err(e) => {
                self.failed(what, &e);
                None
            }
        }
    }
}

impl Proxy {
    /// Whether the shared store answers (`None`: none is configured).
    pub fn shared_store_answers(&self) -> Option<bool> {
        self.shared_tier()
            .map(|t| t.resting_until.load(Ordering::Relaxed) == 0)
    }

    /// Notes a failure of the shared store (it rests; see [`SharedTier::failed`]).
    pub(super) fn shared_failed(&self, what: &str, e: &dyn std::fmt::Display) {
        if let Some(tier) = self.shared_tier() {
            tier.failed(what, e);
        }
    }

    /// The shared tier (health, metrics), if one is configured.
    pub(super) fn shared_tier(&self) -> Option<&Arc<SharedTier>> {
        self.shared.as_ref()
    }

    /// The size of blob `d` in the shared store when it may be served in `t.repo`:
    /// stored there, and linked to the repository (by the replica that fetched it, or
    /// now, if the upstream confirms the repository has it).
    pub(super) async fn shared_blob(&self, t: &Target, d: &Digest) -> Option<u64> {
        let tier = self.shared_tier()?;
        let shared = tier.available()?;
        let size = tier.ok("blob lookup", shared.stat(d).await)??;
        if !tier.ok("blob lookup", shared.is_linked(&t.repo, d).await)? {
            // Stored for another repository: as for the local store, only if the
            // upstream says this one has it too.
            self.upstream_blob_size(t, d).await.ok()?;
            let _ = shared.link(&t.repo, d).await;
        }
        Some(size)
    }

    /// Copies blob `d`, just stored locally, to the shared store, in the background;
    /// `lease` keeps the local copy until it is read.
    pub(super) fn share_blob(&self, t: &Target, d: &Digest, size: u64, lease: Lease) {
        let Some(tier) = self.shared_tier().cloned() else {
            return;
        };
        let Some(shared) = tier.available().cloned() else {
            return;
        };
        let (local, repo, d) = (self.blob_store.clone(), t.repo.clone(), d.clone());
        tokio::spawn(async move {
            // Held since the fetch began: eviction never takes the local copy before
            // it is read here.
            let _lease = lease;
            let copied = async {
                if shared.stat(&d).await? != Some(size) {
                    let Some(mut body) = local.read_range(&d, 0, size).await? else {
                        // Only an operator can have removed it: nothing to copy, and no
                        // fault of the shared store's.
                        tracing::debug!(digest = %d, "local copy gone before it was shared");
                        return Ok(());
                    };
                    let mut w = shared.writer(&d, Some(size)).await?;
                    use futures_util::StreamExt;
                    while let Some(chunk) = body.next().await {
                        let chunk = chunk?;
                        tier.metrics.written.inc_by(chunk.len() as u64);
                        w.write(chunk).await?;
                    }
                    w.commit().await?;
                }
                shared.blob_stored_in(&repo, &d, size).await
            };
            match copied.await {
                Ok(()) => tier.answered(),
                Err(e) => tier.failed("copying a blob", &e),
            }
        });
    }

    /// Copies manifest `d` (and, fetched by tag, the tag's record) to the shared store,
    /// in the background.
    pub(super) fn share_manifest(
        &self,
        t: &Target,
        d: &Digest,
        rec: ManifestRecord,
        bytes: Bytes,
        tag: Option<(Tag, TagRecord)>,
    ) {
        let Some(tier) = self.shared_tier().cloned() else {
            return;
        };
        let Some(shared) = tier.available().cloned() else {
            return;
        };
        let (repo, d) = (t.repo.clone(), d.clone());
        tokio::spawn(async move {
            // In this order, so that a reader finding the link finds the rest.
            let copied = async {
                if shared.stat(&d).await?.is_none() {
                    tier.metrics.written.inc_by(bytes.len() as u64);
                    backend::put_blob(&*shared, &d, bytes).await?;
                }
                shared.put_manifest(&d, &rec).await?;
                shared.link(&repo, &d).await?;
                if let Some((tag, rec)) = tag {
                    share_tag(&*shared, &repo, &tag, rec).await?;
                }
                Ok::<_, ferry_storage::Error>(())
            };
            match copied.await {
                Ok(()) => tier.answered(),
                Err(e) => tier.failed("copying a manifest", &e),
            }
        });
    }

    /// Records in the shared store that `tag` was found at `rec` (a revalidation), in
    /// the background.
    pub(super) fn share_tag(&self, t: &Target, tag: &Tag, rec: TagRecord) {
        let Some(tier) = self.shared_tier().cloned() else {
            return;
        };
        let Some(shared) = tier.available().cloned() else {
            return;
        };
        let (repo, tag) = (t.repo.clone(), tag.clone());
        tokio::spawn(async move {
            let r = share_tag(&*shared, &repo, &tag, rec).await;
            tier.ok("recording a tag", r);
        });
    }

    /// The shared store's record of `tag`, when it is newer than `local`, with its
    /// manifest copied into the local store (so the caller finds both locally).
    pub(super) async fn newer_shared_tag(
        &self,
        t: &Target,
        tag: &Tag,
        local: Option<&TagRecord>,
    ) -> Result<Option<TagRecord>> {
        let Some(tier) = self.shared_tier() else {
            return Ok(None);
        };
        let Some(shared) = tier.available() else {
            return Ok(None);
        };
        let Some(Some(found)) = tier.ok("tag lookup", shared.tag(&t.repo, tag).await) else {
            return Ok(None);
        };
        let found = found.value;
        if local.is_some_and(|l| l.fetched_at >= found.fetched_at) {
            return Ok(None);
        }
        if !self.copy_shared_manifest(t, &found.digest).await? {
            return Ok(None);
        }
        let (repo, tag2, rec) = (t.repo.clone(), tag.clone(), found.clone());
        self.blocking(move |s| s.index.set_tag(&repo, &tag2, &rec))
            .await?;
        Ok(Some(found))
    }

    /// Copies manifest `d` of `t.repo` from the shared store into the local one;
    /// whether it is there now. A manifest the shared store holds for `t.repo` is
    /// verified before it is stored.
    pub(super) async fn copy_shared_manifest(&self, t: &Target, d: &Digest) -> Result<bool> {
        if self.store.index.is_linked(&t.repo, d)?
            && self.store.index.manifest(d)?.is_some()
            && self.store.blobs.stat(d)?.is_some()
        {
            return Ok(true);
        }
        let Some(tier) = self.shared_tier() else {
            return Ok(false);
        };
        let Some(shared) = tier.available() else {
            return Ok(false);
        };
        let fetched = async {
            if !shared.is_linked(&t.repo, d).await? {
                return Ok(None);
            }
            let Some(rec) = shared.manifest(d).await? else {
                return Ok(None);
            };
            if rec.size > ferry_oci::manifest::MAX_MANIFEST_SIZE as u64 {
                return Ok(None);
            }
            let Some(body) = shared.read_range(d, 0, rec.size).await? else {
                return Ok(None);
            };
            use futures_util::TryStreamExt;
            let bytes: Vec<Bytes> = body.try_collect().await?;
            Ok::<_, ferry_storage::Error>(Some((rec, bytes.concat())))
        };
        let Some(Some((rec, bytes))) = tier.ok("manifest lookup", fetched.await) else {
            return Ok(false);
        };
        tier.metrics.read.inc_by(bytes.len() as u64);
        if !d.verify(&bytes) {
            tracing::error!(repo = %t.repo.name, digest = %d, "the shared store holds a manifest that does not match its digest; not using it");
            return Ok(false);
        }
        let (repo, d) = (t.repo.clone(), d.clone());
        self.blocking(move |s| {
            s.blobs.put(&d, &bytes)?;
            s.index.manifest_stored_in(&repo, &d, &rec, None)?;
            s.index.flush()
        })
        .await?;
        Ok(true)
    }
}

/// Writes `rec` as `tag`'s shared record unless another replica recorded a later fetch.
async fn share_tag(
    shared: &dyn Backend,
    repo: &ferry_storage::Repo,
    tag: &Tag,
    rec: TagRecord,
) -> ferry_storage::Result<()> {
    backend::update_tag(shared, repo, tag, |current| match current {
        Some(c) if c.fetched_at >= rec.fetched_at => None,
        _ => Some(rec.clone()),
    })
    .await
    .map(|_| ())
}
