//! The storage seam: what the proxy asks of a store, whatever holds the bytes.
//!
//! Two traits, each implemented by every backend:
//!
//! - [`BlobStore`]: immutable, content-addressed objects (blobs and manifests). `stat`,
//!   [`read_range`](BlobStore::read_range) as a stream of [`Bytes`], a
//!   [`BlobWriter`] that checks size and digest and only then commits, `delete` and
//!   `list`.
//! - [`MetaStore`]: the small mutable records around them: tags (with when they were
//!   fetched), manifest records, which repository a digest is linked to, blob records
//!   with their access times, referrers answers, the upstream's tag lists.
//!
//! Today's filesystem blob files and sled index are one backend ([`FsBackend`], an
//! adapter over [`Blobs`](crate::Blobs) and [`Index`](crate::Index)); the shared
//! backend ([`ObjectBackend`], `backend/object.rs`) keeps blobs and records as objects
//! in Azure Blob Storage ([`AzureStore`], tested against Azurite) or S3 ([`S3Store`],
//! tested against moto). All pass the same backend test suite (`backend/suite.rs`), as
//! Distribution's storage drivers do.
//!
//! # Why this shape
//!
//! - **Async, and `dyn`.** An object store answers over the network, so every call is
//!   `async`; the backend is chosen by configuration at run time, so the traits are
//!   object safe (`async_trait`) and the proxy holds an `Arc<dyn BlobStore>`. The
//!   filesystem backend runs its blocking calls (open, fsync, rename, sled) on the
//!   blocking pool, never on a runtime worker. The one exception is its warm read:
//!   [`read_range`](BlobStore::read_range) goes through [`crate::chunks`], which first
//!   tries `preadv2(RWF_NOWAIT)` on the worker (answered from the page cache or refused
//!   at once) and hops to the blocking pool only when the read would wait for the disk:
//!   warm serving is exactly the code path it was before the seam.
//! - **Ranges, not handles.** The proxy used to hold `std::fs::File`s; an object store has
//!   none to give. A range read returns a stream of exactly the bytes asked for (an
//!   object that turns out shorter ends the stream with an error, never a short
//!   body). A range that does not fit the object is refused before any byte
//!   ([`Error::RangeOutsideBlob`]): callers resolve `Range` headers against `stat` first.
//! - **A local file when there is one.** [`BlobStore::local`] hands out an open file and
//!   its size where the backend has one (the filesystem backend; a shared backend's
//!   local tier later), `None` elsewhere (the default). That is room for fast paths
//!   that need a file descriptor (`sendfile`, or following a growing download as
//!   `proxy::inflight` does) without the proxy knowing which backend it has.
//! - **Nothing partial is ever visible.** A [`BlobWriter`] verifies size and digest
//!   at [`commit`](BlobWriter::commit) and only then publishes (a rename here; a block
//!   list or multipart completion on an object store). Dropping a writer without
//!   committing abandons it: nothing becomes readable, whatever was staged is removed
//!   (or, on an object store, never committed and collected by the service). Two
//!   writers of the same digest may both commit: the content is the same, so either
//!   wins.
//! - **Records and bytes are separate calls.** Committing a blob writes no record:
//!   the caller records it with [`MetaStore::blob_stored_in`] (record and repository link
//!   in one write). This is today's order, and its crash story is unchanged: a blob
//!   committed whose record was lost is found at the next open and recorded and
//!   linked again (`Store::index_unrecorded`).
//! - **Conditional updates for what replicas share.** Tag records are the mutable
//!   state two replicas may update at once (a revalidation here, a moved tag there).
//!   [`MetaStore::tag`] returns the record with an opaque [`Version`];
//!   [`MetaStore::swap_tag`] writes only if the record is still at that version (or,
//!   given `None`, still absent), and otherwise reports [`Swap::Conflict`] so the writer
//!   reads again and reapplies its change ([`update_tag`]). sled does it with
//!   `compare_and_swap` on the record's bytes (the version *is* the bytes, so an
//!   A-B-A rewrite of identical bytes is harmless: the writer's change is applied to
//!   exactly what is there); an object store will do it with ETags and
//!   `If-Match` / `If-None-Match: *`. Immutable records (manifest records, links) and
//!   records whose last writer is as good as any (an upstream's tag list, a referrers
//!   answer: both are the upstream's latest word) are plain writes.
//! - **Access times move only forward.** [`MetaStore::record_access`] keeps the later of
//!   the recorded time and the new one, so replicas flushing their in-memory stamps in
//!   any order keep least-recently-used order right.
//!
//! - **One maintainer at a time.** Quota and eviction of a store several processes
//!   share run in one of them at a time: the one holding the store's maintenance lease
//!   ([`MetaStore::take_maintenance_lease`], a conditional write with an expiry; a
//!   filesystem store, which one process opens, grants it always).
//!
//! Leases on blobs being served, in-memory access stamps and the byte count stay where
//! they are ([`Blobs`](crate::Blobs)): they describe this process, not the store.

#[cfg(test)]
mod emulators;
mod fs;
mod object;
#[cfg(test)]
mod suite;

use std::collections::BTreeSet;
use std::io;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;

use crate::{BlobRecord, Digest, ManifestRecord, Repo, Result, Tag, TagRecord};

pub use fs::FsBackend;
pub use object::{
    AzureAuth, AzureStore, CONNECT_TIMEOUT, EVICTION_GRACE, ObjectBackend, Pinned, READ_TIMEOUT,
    S3Auth, S3Store, SharedEvictReport, SharedFsckReport, SharedUsage,
};

/// A whole backend: blobs and records in one store (what a shared store is).
pub trait Backend: BlobStore + MetaStore {}

impl<T: BlobStore + MetaStore> Backend for T {}

/// A blob's bytes as they are read.
pub type ByteStream = BoxStream<'static, io::Result<Bytes>>;

/// A stored blob as an open local file, for backends that have one.
#[derive(Debug)]
pub struct LocalBlob {
    pub file: std::fs::File,
    /// The file's size when it was opened.
    pub size: u64,
}

/// Immutable, content-addressed objects: blobs and manifests, by digest.
#[async_trait::async_trait]
pub trait BlobStore: Send + Sync + std::fmt::Debug {
    /// The size of stored blob `d`, or `None` if it is not stored (nor usable: a
    /// backend that can tell a damaged object drops it and says `None`).
    async fn stat(&self, d: &Digest) -> Result<Option<u64>>;

    /// Bytes `start..start + len` of `d`, or `None` if it is not stored. The stream
    /// yields exactly `len` bytes or ends with an error. A range reaching past the
    /// end is refused with [`Error::RangeOutsideBlob`](crate::Error::RangeOutsideBlob).
    async fn read_range(&self, d: &Digest, start: u64, len: u64) -> Result<Option<ByteStream>>;

    /// `d` as an open local file, where this backend keeps one; `None` otherwise.
    async fn local(&self, _d: &Digest) -> Result<Option<LocalBlob>> {
        Ok(None)
    }

    /// Starts writing `d`, which must hash to its digest and, if given, be `size`
    /// bytes long. Nothing is visible until [`BlobWriter::commit`].
    async fn writer(&self, d: &Digest, size: Option<u64>) -> Result<Box<dyn BlobWriter>>;

    /// Removes `d`; whether it was there.
    async fn delete(&self, d: &Digest) -> Result<bool>;

    /// Every stored digest, sorted.
    async fn list(&self) -> Result<Vec<Digest>>;
}

/// A blob being written. Dropped without [`commit`](BlobWriter::commit), it leaves
/// nothing readable.
#[async_trait::async_trait]
pub trait BlobWriter: Send {
    /// Appends bytes. May refuse bytes past the expected size at once.
    async fn write(&mut self, bytes: Bytes) -> Result<()>;

    /// How many bytes were written so far.
    fn written(&self) -> u64;

    /// Checks size and digest ([`Error::SizeMismatch`](crate::Error::SizeMismatch),
    /// [`Error::DigestMismatch`](crate::Error::DigestMismatch)), then makes the blob
    /// durable and visible. On error nothing is visible.
    async fn commit(self: Box<Self>) -> Result<()>;
}

/// Stores `bytes` (already in memory) as `d`, verifying them first.
pub async fn put_blob(store: &dyn BlobStore, d: &Digest, bytes: Bytes) -> Result<()> {
    let mut w = store.writer(d, Some(bytes.len() as u64)).await?;
    w.write(bytes).await?;
    w.commit().await
}

/// Which state of a record a read saw; what a conditional write is made against.
/// Opaque: its bytes mean something only to the backend that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version(pub(crate) Vec<u8>);

/// A record with the version it was read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<T> {
    pub value: T,
    pub version: Version,
}

/// How a conditional write ended.
#[must_use]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Swap {
    /// Written; the record is now at this version.
    Done(Version),
    /// Someone else wrote (or removed, or created) the record first: nothing written.
    Conflict,
}

/// The mutable records around the blobs.
#[async_trait::async_trait]
pub trait MetaStore: Send + Sync + std::fmt::Debug {
    /// Where `tag` in `repo` pointed when last fetched, with the record's version.
    async fn tag(&self, repo: &Repo, tag: &Tag) -> Result<Option<Versioned<TagRecord>>>;

    /// Writes `rec` if the tag's record is still at `expected` (`None`: still absent).
    async fn swap_tag(
        &self,
        repo: &Repo,
        tag: &Tag,
        expected: Option<&Version>,
        rec: &TagRecord,
    ) -> Result<Swap>;

    /// The tags fetched through Ferry in `repo`, sorted.
    async fn known_tags(&self, repo: &Repo) -> Result<BTreeSet<String>>;

    /// The tag list the upstream last gave for `repo`, if it ever gave one.
    async fn listed_tags(&self, repo: &Repo) -> Result<Option<Vec<Tag>>>;

    /// Replaces the upstream's tag list for `repo`.
    async fn set_listed_tags(&self, repo: &Repo, tags: &[Tag]) -> Result<()>;

    async fn manifest(&self, d: &Digest) -> Result<Option<ManifestRecord>>;

    async fn put_manifest(&self, d: &Digest, rec: &ManifestRecord) -> Result<()>;

    /// Records that `d` exists in `repo` upstream, so it may be served under that name.
    async fn link(&self, repo: &Repo, d: &Digest) -> Result<()>;

    async fn is_linked(&self, repo: &Repo, d: &Digest) -> Result<bool>;

    async fn unlink(&self, repo: &Repo, d: &Digest) -> Result<()>;

    /// The record of blob `d`: the size it verified at and when it was last used.
    async fn blob_record(&self, d: &Digest) -> Result<Option<BlobRecord>>;

    /// Records blob `d` of `size` bytes, used now, and links it to `repo`, in one write.
    async fn blob_stored_in(&self, repo: &Repo, d: &Digest, size: u64) -> Result<()>;

    /// Notes a use of `d` at `at` (seconds since the epoch), keeping a later time
    /// already recorded; `size` makes a record for a blob that had none.
    async fn record_access(&self, d: &Digest, size: u64, at: u64) -> Result<()>;

    /// The referrers answer kept for `subject`: the unfiltered one, or the one an
    /// upstream filtered by `artifact_type` itself.
    async fn referrers(
        &self,
        repo: &Repo,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Option<Vec<u8>>>;

    /// Keeps a referrers answer, replacing the one before for the same query.
    async fn set_referrers(
        &self,
        repo: &Repo,
        subject: &Digest,
        artifact_type: Option<&str>,
        index: &[u8],
    ) -> Result<()>;

    /// Takes the store's maintenance lease for `holder` (an id unique to one process)
    /// until `now_ms + ttl` (milliseconds since the epoch; `now_ms` is the caller's
    /// clock, so that tests need not wait), or renews it if `holder` has it. Granted
    /// when no one holds it, when `holder` does, or when the holder's lease expired;
    /// refused while another holder's lease runs, and when another process took it in
    /// between (the write is conditional: of two takers, one wins). A holder whose
    /// lease expired and was taken over learns it at its next renewal: refused. Quota
    /// and eviction on a shared store run only under it, so on one replica at a time.
    /// A store only one process opens grants it always.
    async fn take_maintenance_lease(
        &self,
        holder: &str,
        now_ms: u64,
        ttl: Duration,
    ) -> Result<bool>;

    /// Gives the maintenance lease up, if `holder` still has it, so another process
    /// may take it at once rather than after its expiry.
    async fn release_maintenance_lease(&self, holder: &str) -> Result<()>;

    /// Waits until every write so far is durable (a backend whose every write is
    /// durable when it returns has nothing to wait for). Writers call it where a crash
    /// must not lose what they wrote: after storing a manifest or a blob.
    async fn flush(&self) -> Result<()>;
}

/// Updates a tag's record with `change` (given the record as it is, `None` if absent;
/// returning `None` to leave it as it is) until it applies to the record as it is:
/// another writer's update in between is read and `change` applied on top of it,
/// never overwritten. Returns the record as it ends up. Each retry means another
/// writer's update went in, so writers as a whole always make progress.
pub async fn update_tag(
    meta: &dyn MetaStore,
    repo: &Repo,
    tag: &Tag,
    mut change: impl FnMut(Option<&TagRecord>) -> Option<TagRecord> + Send,
) -> Result<Option<TagRecord>> {
    loop {
        let current = meta.tag(repo, tag).await?;
        let Some(new) = change(current.as_ref().map(|c| &c.value)) else {
            return Ok(current.map(|c| c.value));
        };
        let expected = current.as_ref().map(|c| &c.version);
        match meta.swap_tag(repo, tag, expected, &new).await? {
            Swap::Done(_) => return Ok(Some(new)),
            Swap::Conflict => continue,
        }
    }
}
