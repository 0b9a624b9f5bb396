//! Damaged blobs: found and dropped rather than served.
//!
//! A file under `blobs/` was verified when it was stored, but disks, file systems and
//! operators can change it afterwards. Two checks find what changed:
//!
//! - **On every read, the size.** [`Store::stored_size`] compares the file's size with
//!   the index record written when the blob verified (a blob's, or a manifest's);
//!   [`crate::Blobs::read`] (manifests, which are small) re-hashes what it read. A file that
//!   fails is dropped (with its index records, as eviction drops them) with a
//!   warning and reads as missing, so the caller fetches it again, as for any miss.
//! - **In the background, the bytes.** [`Store::scrub_one`] re-hashes one blob (the same
//!   routine as `ferry fsck`), paced by its caller, and drops it if it does not match
//!   its digest. The server's housekeeping walks the store with it at a bounded rate.
//!
//! Dropping never races with a fresh ingest of the same digest: an ingest renames a
//! new file into place, and only the very file found damaged (same device and inode)
//! is unlinked. A response still reading the dropped file keeps its open descriptor;
//! its bytes were wrong anyway, and the client's own digest check fails on them.

use std::fs;
use std::io;
use std::ops::ControlFlow;

use crate::blobs::scan::hash_file;
use crate::{Digest, Result, Store};

/// What [`Store::scrub_one`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scrubbed {
    /// The bytes match the digest.
    Intact { bytes: u64 },
    /// They did not: the blob was dropped.
    Dropped { bytes: u64 },
    /// Not stored any more (evicted, collected or dropped by a request since the
    /// walk), or replaced by a good copy before it could be dropped, or the pace stopped
    /// the check before its end.
    Skipped,
}

impl Store {
    /// The size of stored blob `d` (a manifest too), or `None` if it is not stored. A
    /// file whose size disagrees with the index record is damaged (truncated, or
    /// appended to): it is dropped, with a warning, and reads as not stored. A file
    /// with no record (stored by an older run, recorded on the next open) is trusted.
    pub fn stored_size(&self, d: &Digest) -> Result<Option<u64>> {
        self.blobs.access_times().touch(d);
        let meta = match fs::metadata(self.layout.blob(d)) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let recorded = match self.index.blob(d)? {
            Some(rec) => Some(rec.size),
            None => self.index.manifest(d)?.map(|m| m.size),
        };
        match recorded {
            Some(size) if size != meta.len() => {
                // Warned by whoever drops it: once, however many requests saw it.
                if self.drop_damaged(d, &meta)? {
                    tracing::warn!(digest = %d, recorded = size, found = meta.len(), "stored blob's size disagrees with the index: dropped, to be fetched again");
                }
                Ok(None)
            }
            _ => Ok(Some(meta.len())),
        }
    }

    /// Re-hashes stored blob `d`, calling `pace` after each piece read (see
    /// [`Scrubbed::Skipped`]), and drops it, with a warning, if its bytes do not match.
    /// Reads stamp no access time: a check is not a use.
    pub fn scrub_one(
        &self,
        d: &Digest,
        pace: impl FnMut(u64) -> ControlFlow<()>,
    ) -> Result<Scrubbed> {
        let Some(mut file) = self.blobs.open_quietly(d)? else {
            return Ok(Scrubbed::Skipped);
        };
        let meta = file.metadata()?;
        let bytes = meta.len();
        match hash_file(&mut file, d, pace)? {
            None => Ok(Scrubbed::Skipped),
            Some(actual) if actual == *d => Ok(Scrubbed::Intact { bytes }),
            Some(actual) => {
                if !self.drop_damaged(d, &meta)? {
                    // A request found it first, or a good copy replaced it.
                    return Ok(Scrubbed::Skipped);
                }
                tracing::warn!(digest = %d, %actual, bytes, "scrub: stored blob's bytes do not match its digest: dropped, to be fetched again");
                Ok(Scrubbed::Dropped { bytes })
            }
        }
    }

    /// Drops the damaged file `seen` of `d` and, as eviction does, its blob and
    /// manifest records (a fetch writes them again). `false` if it was gone already or
    /// a good copy took its place meanwhile.
    fn drop_damaged(&self, d: &Digest, seen: &fs::Metadata) -> Result<bool> {
        if !self.blobs.remove_if_same(d, seen)? {
            return Ok(false);
        }
        self.index.remove_blob(d)?;
        self.index.remove_manifest(d)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(bytes: &[u8]) -> (tempfile::TempDir, Store, Digest) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let d = Digest::sha256_of(bytes);
        store.blobs.put(&d, bytes).unwrap();
        store.index.blob_stored(&d, bytes.len() as u64).unwrap();
        (dir, store, d)
    }

    #[test]
    fn a_file_whose_size_disagrees_with_the_index_reads_as_missing() {
        let (_dir, store, d) = stored(b"hello world");
        assert_eq!(store.stored_size(&d).unwrap(), Some(11));
        let path = store.layout().blob(&d);
        fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(5)
            .unwrap();
        let before = store.blobs.usage().bytes();
        assert_eq!(store.stored_size(&d).unwrap(), None);
        assert!(!path.exists(), "the damaged file is dropped");
        assert!(store.index.blob(&d).unwrap().is_none(), "with its record");
        assert_eq!(store.blobs.usage().bytes(), before - 5);
        // Stored again, it is served again.
        store.blobs.put(&d, b"hello world").unwrap();
        assert_eq!(store.stored_size(&d).unwrap(), Some(11));
    }

    #[test]
    fn the_scrub_drops_flipped_bytes_and_keeps_good_ones() {
        let (_dir, store, d) = stored(b"hello world");
        let mut seen = 0;
        let all = |n| {
            seen += n;
            ControlFlow::Continue(())
        };
        assert_eq!(
            store.scrub_one(&d, all).unwrap(),
            Scrubbed::Intact { bytes: 11 }
        );
        assert_eq!(seen, 11);
        fs::write(store.layout().blob(&d), b"hello w0rld").unwrap();
        let stop = |_| ControlFlow::Break(());
        assert_eq!(store.scrub_one(&d, stop).unwrap(), Scrubbed::Skipped);
        assert!(
            store.layout().blob(&d).exists(),
            "a stopped check drops nothing"
        );
        let all = |_| ControlFlow::Continue(());
        assert_eq!(
            store.scrub_one(&d, all).unwrap(),
            Scrubbed::Dropped { bytes: 11 }
        );
        assert_eq!(store.stored_size(&d).unwrap(), None);
        assert_eq!(store.scrub_one(&d, all).unwrap(), Scrubbed::Skipped);
    }

    #[test]
    fn a_good_copy_renamed_over_a_damaged_one_is_kept() {
        let (_dir, store, d) = stored(b"hello world");
        let path = store.layout().blob(&d);
        fs::write(&path, b"hello w0rld").unwrap();
        let damaged = fs::metadata(&path).unwrap();
        // A fresh ingest publishes a good copy between the check and the drop.
        store.blobs.put(&d, b"hello world").unwrap();
        assert!(!store.blobs.remove_if_same(&d, &damaged).unwrap());
        assert_eq!(store.blobs.read(&d).unwrap().unwrap(), b"hello world");
    }

    #[test]
    fn a_manifest_read_with_wrong_bytes_reads_as_missing() {
        let (_dir, store, d) = stored(b"{\"schemaVersion\":2}");
        assert!(store.blobs.read(&d).unwrap().is_some());
        fs::write(store.layout().blob(&d), b"{\"schemaVersion\":3}").unwrap();
        assert_eq!(store.blobs.read(&d).unwrap(), None);
        assert!(!store.layout().blob(&d).exists());
    }
}
