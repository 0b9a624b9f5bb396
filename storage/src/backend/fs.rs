//! The filesystem backend: today's blob files and sled index behind the seam.
//!
//! An adapter, not a second store: every call goes to [`Store`]'s [`Blobs`](crate::Blobs)
//! and [`Index`](crate::Index), so the guarantees documented there (verify before
//! rename, staged files swept, damaged files dropped on `stat`) hold through the seam
//! too. Blocking calls run on the blocking pool; warm reads go through
//! [`crate::chunks`] as they did before the seam.

use std::collections::BTreeSet;
use std::io;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;

use super::{BlobStore, BlobWriter, ByteStream, LocalBlob, MetaStore, Swap, Version, Versioned};
use crate::{
    BlobRecord, Digest, Error, Ingest, ManifestRecord, Repo, Result, Store, Tag, TagRecord,
};

/// The filesystem blob store and sled index of one [`Store`], as a backend.
#[derive(Debug, Clone)]
pub struct FsBackend {
    store: Arc<Store>,
}

impl FsBackend {
    pub fn new(store: Arc<Store>) -> FsBackend {
        FsBackend { store }
    }

    /// The store underneath, for what is not part of the seam (maintenance, leases).
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Runs `f` on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let store = self.store.clone();
        spawn_blocking(move || f(&store)).await
    }
}

async fn spawn_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Io(io::Error::other(e)))?
}

#[async_trait::async_trait]
impl BlobStore for FsBackend {
    async fn stat(&self, d: &Digest) -> Result<Option<u64>> {
        let d = d.clone();
        self.blocking(move |s| s.stored_size(&d)).await
    }

    async fn read_range(&self, d: &Digest, start: u64, len: u64) -> Result<Option<ByteStream>> {
        let Some(LocalBlob { file, size }) = self.local(d).await? else {
            return Ok(None);
        };
        match start.checked_add(len) {
            Some(end) if end <= size => {}
            end => {
                return Err(Error::RangeOutsideBlob {
                    digest: d.clone(),
                    start,
                    end: end.unwrap_or(u64::MAX),
                    size,
                });
            }
        }
        Ok(Some(crate::chunks::file_chunks(file, start, len).boxed()))
    }

    /// Opens the file without stamping an access time: the `stat` that found the blob
    /// did.
    async fn local(&self, d: &Digest) -> Result<Option<LocalBlob>> {
        let path = self.store.layout().blob(d);
        spawn_blocking(move || match std::fs::File::open(&path) {
            Ok(file) => {
                let size = file.metadata()?.len();
                Ok(Some(LocalBlob { file, size }))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        })
        .await
    }

    async fn writer(&self, d: &Digest, size: Option<u64>) -> Result<Box<dyn BlobWriter>> {
        let d = d.clone();
        let ingest = self.blocking(move |s| s.blobs.ingest(&d, size)).await?;
        Ok(Box::new(FsWriter {
            written: ingest.written(),
            ingest: Some(ingest),
        }))
    }

    async fn delete(&self, d: &Digest) -> Result<bool> {
        let d = d.clone();
        self.blocking(move |s| s.blobs.delete(&d)).await
    }

    async fn list(&self) -> Result<Vec<Digest>> {
        self.blocking(|s| s.blobs.list()).await
    }
}

/// An [`Ingest`] written on the blocking pool. Dropped uncommitted, the ingest
/// removes its staged file.
struct FsWriter {
    /// Away on the blocking pool during a write; gone after a write that panicked
    /// (the ingest was dropped with the task, taking its staged file with it).
    ingest: Option<Ingest>,
    written: u64,
}

impl FsWriter {
    fn ingest(&mut self) -> Result<Ingest> {
        self.ingest
            .take()
            .ok_or_else(|| Error::Io(io::Error::other("an earlier write of this blob failed")))
    }
}

#[async_trait::async_trait]
impl BlobWriter for FsWriter {
    async fn write(&mut self, bytes: Bytes) -> Result<()> {
        let mut ingest = self.ingest()?;
        let (ingest, res) = tokio::task::spawn_blocking(move || {
            let res = ingest.write(&bytes);
            (ingest, res)
        })
        .await
        .map_err(|e| Error::Io(io::Error::other(e)))?;
        self.written = ingest.written();
        self.ingest = Some(ingest);
        res
    }

    fn written(&self) -> u64 {
        self.written
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        let ingest = self.ingest()?;
        spawn_blocking(move || ingest.commit()).await
    }
}

#[async_trait::async_trait]
impl MetaStore for FsBackend {
    async fn tag(&self, repo: &Repo, tag: &Tag) -> Result<Option<Versioned<TagRecord>>> {
        let (repo, tag) = (repo.clone(), tag.clone());
        let found = self
            .blocking(move |s| s.index.tag_with_bytes(&repo, &tag))
            .await?;
        Ok(found.map(|(value, bytes)| Versioned {
            value,
            version: Version(bytes),
        }))
    }

    async fn swap_tag(
        &self,
        repo: &Repo,
        tag: &Tag,
        expected: Option<&Version>,
        rec: &TagRecord,
    ) -> Result<Swap> {
        let (repo, tag, rec) = (repo.clone(), tag.clone(), rec.clone());
        let expected = expected.map(|v| v.0.clone());
        let written = self
            .blocking(move |s| s.index.swap_tag(&repo, &tag, expected.as_deref(), &rec))
            .await?;
        Ok(match written {
            Some(bytes) => Swap::Done(Version(bytes)),
            None => Swap::Conflict,
        })
    }

    async fn known_tags(&self, repo: &Repo) -> Result<BTreeSet<String>> {
        let repo = repo.clone();
        self.blocking(move |s| s.index.known_tags(&repo)).await
    }

    async fn listed_tags(&self, repo: &Repo) -> Result<Option<Vec<Tag>>> {
        let repo = repo.clone();
        self.blocking(move |s| s.index.listed_tags(&repo)).await
    }

    async fn set_listed_tags(&self, repo: &Repo, tags: &[Tag]) -> Result<()> {
        let (repo, tags) = (repo.clone(), tags.to_vec());
        self.blocking(move |s| s.index.set_listed_tags(&repo, &tags))
            .await
    }

    async fn manifest(&self, d: &Digest) -> Result<Option<ManifestRecord>> {
        let d = d.clone();
        self.blocking(move |s| s.index.manifest(&d)).await
    }

    async fn put_manifest(&self, d: &Digest, rec: &ManifestRecord) -> Result<()> {
        let (d, rec) = (d.clone(), rec.clone());
        self.blocking(move |s| s.index.put_manifest(&d, &rec)).await
    }

    async fn link(&self, repo: &Repo, d: &Digest) -> Result<()> {
        let (repo, d) = (repo.clone(), d.clone());
        self.blocking(move |s| s.index.link(&repo, &d)).await
    }

    async fn is_linked(&self, repo: &Repo, d: &Digest) -> Result<bool> {
        let (repo, d) = (repo.clone(), d.clone());
        self.blocking(move |s| s.index.is_linked(&repo, &d)).await
    }

    async fn unlink(&self, repo: &Repo, d: &Digest) -> Result<()> {
        let (repo, d) = (repo.clone(), d.clone());
        self.blocking(move |s| s.index.unlink(&repo, &d)).await
    }

    async fn blob_record(&self, d: &Digest) -> Result<Option<BlobRecord>> {
        let d = d.clone();
        self.blocking(move |s| s.index.blob(&d)).await
    }

    async fn blob_stored_in(&self, repo: &Repo, d: &Digest, size: u64) -> Result<()> {
        let (repo, d) = (repo.clone(), d.clone());
        self.blocking(move |s| s.index.blob_stored_in(&repo, &d, size))
            .await
    }

    async fn record_access(&self, d: &Digest, size: u64, at: u64) -> Result<()> {
        let d = d.clone();
        self.blocking(move |s| s.index.record_access(&d, size, at))
            .await
    }

    async fn referrers(
        &self,
        repo: &Repo,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Option<Vec<u8>>> {
        let (repo, subject) = (repo.clone(), subject.clone());
        let artifact_type = artifact_type.map(str::to_owned);
        self.blocking(move |s| s.index.referrers(&repo, &subject, artifact_type.as_deref()))
            .await
    }

    async fn set_referrers(
        &self,
        repo: &Repo,
        subject: &Digest,
        artifact_type: Option<&str>,
        index: &[u8],
    ) -> Result<()> {
        let (repo, subject) = (repo.clone(), subject.clone());
        let (artifact_type, index) = (artifact_type.map(str::to_owned), index.to_vec());
        self.blocking(move |s| {
            s.index
                .set_referrers(&repo, &subject, artifact_type.as_deref(), &index)
        })
        .await
    }

    async fn flush(&self) -> Result<()> {
        self.blocking(|s| s.index.flush()).await
    }

    /// One process has the store open (its lock file): it is always the one.
    async fn take_maintenance_lease(
        &self,
        _holder: &str,
        _now_ms: u64,
        _ttl: std::time::Duration,
    ) -> Result<bool> {
        Ok(true)
    }

    async fn release_maintenance_lease(&self, _holder: &str) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend() -> (tempfile::TempDir, FsBackend) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, FsBackend::new(Arc::new(store)))
    }

    crate::backend::suite::backend_suite!(backend);

    /// One process has the store open: the maintenance lease is always its own.
    #[tokio::test]
    async fn the_maintenance_lease_is_always_granted() {
        let (_dir, b) = backend();
        let ttl = std::time::Duration::from_secs(60);
        assert!(b.take_maintenance_lease("a", 1, ttl).await.unwrap());
        assert!(b.take_maintenance_lease("b", 2, ttl).await.unwrap());
        b.release_maintenance_lease("a").await.unwrap();
    }

    /// What the suite cannot see: nothing is left in `staging/` either.
    #[tokio::test]
    async fn refused_and_abandoned_writes_leave_no_staged_file() {
        let (_dir, b) = backend();
        let d = Digest::sha256_of(b"hello world");
        let mut w = b.writer(&d, None).await.unwrap();
        w.write(Bytes::from_static(b"hello w0rld")).await.unwrap();
        assert!(w.commit().await.is_err());
        let mut w = b.writer(&d, None).await.unwrap();
        w.write(Bytes::from_static(b"hello")).await.unwrap();
        drop(w);
        let staging = b.store().layout().staging_dir();
        assert_eq!(std::fs::read_dir(staging).unwrap().count(), 0);
    }

    /// This backend hands out its files, for paths that need a descriptor.
    #[tokio::test]
    async fn a_stored_blob_is_a_local_file() {
        let (_dir, b) = backend();
        let bytes = Bytes::from_static(b"layer bytes");
        let d = Digest::sha256_of(&bytes);
        assert!(b.local(&d).await.unwrap().is_none());
        super::super::put_blob(&b, &d, bytes.clone()).await.unwrap();
        let local = b.local(&d).await.unwrap().unwrap();
        assert_eq!(local.size, bytes.len() as u64);
        let mut read = Vec::new();
        std::io::Read::read_to_end(&mut &local.file, &mut read).unwrap();
        assert_eq!(read, bytes);
    }

    /// A file whose size disagrees with its record reads as not stored, through the
    /// seam as without it.
    #[tokio::test]
    async fn a_truncated_file_is_not_stored() {
        let (_dir, b) = backend();
        let bytes = Bytes::from_static(b"layer bytes");
        let d = Digest::sha256_of(&bytes);
        super::super::put_blob(&b, &d, bytes.clone()).await.unwrap();
        let repo = crate::testutil::repo("team/app");
        b.blob_stored_in(&repo, &d, bytes.len() as u64)
            .await
            .unwrap();
        let path = b.store().layout().blob(&d);
        std::fs::write(&path, b"layer").unwrap();
        assert_eq!(b.stat(&d).await.unwrap(), None);
        assert!(!path.exists(), "dropped");
    }
}
