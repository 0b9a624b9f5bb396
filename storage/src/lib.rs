//! Ferry's storage: a content-addressed blob store on the filesystem plus a sled index.
//!
//! - A blob is visible only after its digest verified: writes are staged, fsynced,
//!   then renamed into place ([`blobs`]).
//! - The blob store is the authority on what bytes exist; the [`index`] holds what
//!   the files cannot say (tags, media types, which repository a digest came from,
//!   access times). A crash at any point leaves a store that opens cleanly.
//! - Every path derives from a validated [`Digest`] through [`Layout`].
//! - One process has a store open at a time (a lock file, taken first).
//! - A store of a format this Ferry does not understand is refused untouched (a
//!   marker file, read right after the lock; see [`format`]).
//! - Maintenance reasons over the files and the index together: [`Store::fsck`]
//!   (re-hash and cross-check, optionally repair), [`Store::gc`] (unreferenced blobs),
//!   [`Store::evict`] (least recently used images, sparing leased blobs).
//! - A file changed since it verified is never served as good: reads check its size
//!   against the index, and a background scrub re-hashes (see [`scrub`]).
//!
//! - What the proxy asks of a store, whatever holds the bytes, is the seam in
//!   [`backend`]: a blob store and a metadata store, of which the blob files and sled
//!   index here are one backend ([`backend::FsBackend`]), with one test suite every
//!   backend passes. Warm blob chunks are read by [`chunks`].
//!
//! This crate knows nothing of HTTP or upstreams.

mod access_times;
pub mod backend;
mod blobs;
pub mod chunks;
mod error;
mod evict;
mod format;
mod fsck;
mod gc;
pub mod index;
mod layout;
mod lease;
mod lock;
mod scrub;
mod snapshot;
#[cfg(test)]
mod testutil;
mod usage;

use std::collections::HashSet;
use std::path::Path;

use ferry_oci::refs::Refs;

use ferry_oci::{Digest, Hasher, RepoName, Tag};

pub use access_times::{AccessTimes, now_millis};
pub use blobs::scan::{StoredFile, Walk};
pub use blobs::{Blobs, Ingest, Verified};
pub use error::{Error, Result};
pub use evict::{EvictReport, Image};
pub use fsck::{FsckReport, QuickReport, SizeMismatch};
pub use gc::GcReport;
pub use index::{BlobRecord, Index, ManifestRecord, Repo, TagRecord};
pub use layout::Layout;
pub use lease::Lease;
pub use scrub::Scrubbed;
pub use usage::{Usage, UsageCounts};

/// The blob store and the index, opened together under one root.
#[derive(Debug)]
pub struct Store {
    pub blobs: Blobs,
    pub index: Index,
    layout: Layout,
    _lock: lock::StoreLock,
}

impl Store {
    /// Opens the store, sweeping what an earlier run left in `staging/`. Fails with
    /// [`Error::Locked`] while another process has it open, and with [`Error::Format`]
    /// or [`Error::FormatUnreadable`] on a store of another format.
    pub fn open(root: &Path) -> Result<Store> {
        Self::open_with(root, true)
    }

    /// Opens the store leaving `staging/` as it is, for [`Store::fsck`] to report.
    pub fn open_as_found(root: &Path) -> Result<Store> {
        Self::open_with(root, false)
    }

    fn open_with(root: &Path, sweep: bool) -> Result<Store> {
        let layout = Layout::new(root);
        std::fs::create_dir_all(layout.root())?;
        // The lock first: staged files belong to whoever holds it.
        let lock = lock::StoreLock::acquire(&layout.lock_file())?;
        // Before anything reads or sweeps what a store of another format may hold.
        format::check(&layout)?;
        let index = Index::open(&layout.index_dir())?;
        let blobs = if sweep {
            Blobs::open_store(layout.clone())?
        } else {
            Blobs::open_as_found(layout.clone())?
        };
        let store = Store {
            blobs,
            index,
            layout,
            _lock: lock,
        };
        if sweep {
            store.index_unrecorded()?;
        }
        Ok(store)
    }

    /// Records blob files that have no index record: what a crash left between a
    /// blob's rename into `blobs/` and its index write. Their bytes were verified
    /// before the rename, so recording them is safe. The lost write also linked the
    /// blob to its repository: it is linked again to every repository holding a
    /// manifest that references it (the manifest was stored and linked before its
    /// blobs were fetched), so an edge site whose upstream is gone still serves it.
    /// What cannot be rebuilt (a manifest's media type) is learned again from the
    /// upstream on the next request, as for any unlinked blob.
    fn index_unrecorded(&self) -> Result<usize> {
        let mut added = HashSet::new();
        for f in self.blobs.walk()?.files {
            if self.index.blob(&f.digest)?.is_none() && self.index.manifest(&f.digest)?.is_none() {
                self.index.blob_stored(&f.digest, f.size)?;
                added.insert(f.digest);
            }
        }
        if added.is_empty() {
            return Ok(0);
        }
        let relinked = self.relink(&added)?;
        self.index.flush()?;
        tracing::info!(
            added = added.len(),
            relinked,
            "recorded blobs an interrupted run had stored"
        );
        Ok(added.len())
    }

    /// Links each of `blobs` to the repositories whose linked manifests reference it;
    /// returns how many links it made.
    fn relink(&self, blobs: &HashSet<Digest>) -> Result<usize> {
        let mut made = 0;
        for scanned in self.index.scan_links()? {
            let Ok((repo, manifest)) = scanned.value else {
                continue;
            };
            if self.index.manifest(&manifest)?.is_none() {
                continue;
            }
            let Some(bytes) = self.blobs.read(&manifest)? else {
                continue;
            };
            let Ok(refs) = Refs::parse(&bytes) else {
                continue;
            };
            for d in refs.contents().filter(|d| blobs.contains(*d)) {
                if !self.index.is_linked(&repo, d)? {
                    self.index.link(&repo, d)?;
                    made += 1;
                }
            }
        }
        Ok(made)
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Bytes available to Ferry on the store's filesystem (`statvfs`'s `f_bavail`).
    pub fn available_space(&self) -> Result<u64> {
        Ok(fs2::available_space(self.layout.root())?)
    }

    /// Whether a blob could be stored now: creates, writes and removes a small file in
    /// `staging/`, where every ingest starts (recreating `staging/` if it was deleted,
    /// as an ingest would). Fails on a full or read-only file system, or a store root
    /// that is gone or not writable.
    pub fn check_writable(&self) -> Result<()> {
        static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = self
            .layout
            .staging_dir()
            .join(format!("writable-{}-{n}", std::process::id()));
        // A byte, not just a name: a full file system still creates empty files.
        let written = blobs::recreating_dir(&path, || std::fs::write(&path, b"ferry"));
        let removed = std::fs::remove_file(&path);
        written?;
        removed?;
        Ok(())
    }

    /// Writes the access times noted since the last flush into the index (see
    /// [`AccessTimes`]); how many were written.
    pub fn flush_access(&self) -> Result<usize> {
        Ok(self.flush_access_entries()?.len())
    }

    /// [`Store::flush_access`], returning what it wrote: (digest, size, seconds since
    /// the epoch) of each stored blob used since the last flush (a replica passes them
    /// on to the shared store's records).
    pub fn flush_access_entries(&self) -> Result<Vec<(Digest, u64, u64)>> {
        let mut n = Vec::new();
        for (d, at_ms) in self.blobs.access_times().take_dirty() {
            match self.blobs.size_of(&d)? {
                Some(size) => {
                    self.index.record_access(&d, size, at_ms / 1000)?;
                    n.push((d, size, at_ms / 1000));
                }
                // Lookups of blobs not stored (misses) are stamped too: forgotten here,
                // or the map would keep every digest ever asked for.
                None => self.blobs.access_times().forget(&d),
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blob_stored_without_its_record_is_recorded_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let d = Digest::sha256_of(b"layer");
        {
            let store = Store::open(dir.path()).unwrap();
            // A crash between the rename into blobs/ and the index write.
            store.blobs.put(&d, b"layer").unwrap();
            assert!(store.index.blob(&d).unwrap().is_none());
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.index.blob(&d).unwrap().map(|r| r.size), Some(5));
        assert!(store.fsck(false).unwrap().is_clean());
    }

    #[test]
    fn a_recovered_blob_is_linked_again_where_its_manifest_is() {
        use crate::testutil::{self, OCI_MANIFEST};
        let dir = tempfile::tempdir().unwrap();
        let (app, other) = (testutil::repo("team/app"), testutil::repo("team/other"));
        let layer = b"layer bytes".to_vec();
        let l = Digest::sha256_of(&layer);
        {
            let store = Store::open(dir.path()).unwrap();
            let manifest = testutil::image_manifest((&l, layer.len()), &[(&l, layer.len())]);
            testutil::put_manifest(&store, &app, Some("1"), OCI_MANIFEST, &manifest);
            // A crash between the layer's rename into blobs/ and its index writes.
            store.blobs.put(&l, &layer).unwrap();
            assert!(!store.index.is_linked(&app, &l).unwrap());
        }
        let store = Store::open(dir.path()).unwrap();
        assert!(store.index.blob(&l).unwrap().is_some());
        assert!(store.index.is_linked(&app, &l).unwrap(), "linked again");
        assert!(
            !store.index.is_linked(&other, &l).unwrap(),
            "only where a manifest references it"
        );
        assert!(store.fsck(false).unwrap().is_clean());
    }

    #[test]
    fn usage_counts_blobs_and_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let usage = store.blobs.usage();
        let (a, b) = (Digest::sha256_of(b"layer"), Digest::sha256_of(b"config!"));
        store.blobs.put(&a, b"layer").unwrap();
        store.blobs.put(&b, b"config!").unwrap();
        // The same blob committed again (two racing fetches) is one blob.
        store.blobs.put(&a, b"layer").unwrap();
        assert_eq!((usage.blobs(), usage.bytes()), (2, 12));
        store.blobs.delete(&a).unwrap();
        assert_eq!((usage.blobs(), usage.bytes()), (1, 7));
        // A walk corrects drift: here a blob removed behind the store's back.
        std::fs::remove_file(store.layout().blob(&b)).unwrap();
        let before = usage.raw();
        let walk = store.blobs.walk().unwrap();
        usage.rebase(before, walk.bytes(), walk.files.len());
        assert_eq!((usage.blobs(), usage.bytes()), (0, 0));
    }

    #[test]
    fn check_writable_leaves_nothing_and_recreates_only_staging() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        let store = Store::open(&root).unwrap();
        store.check_writable().unwrap();
        store.check_writable().unwrap();
        let staging = store.layout().staging_dir();
        assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0);
        std::fs::remove_dir(&staging).unwrap();
        store.check_writable().unwrap();
        assert!(staging.is_dir());
        // A deleted staging/ is recreated for ingests too.
        std::fs::remove_dir(&staging).unwrap();
        store.blobs.put(&Digest::sha256_of(b"x"), b"x").unwrap();
        // A root that is gone is not recreated.
        std::fs::remove_dir_all(&root).unwrap();
        assert!(store.check_writable().is_err());
        assert!(!root.exists());
    }
}
