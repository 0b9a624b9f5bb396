//! The content-addressed blob store on the local filesystem.
//!
//! Its whole surface is: [`Blobs::stat`], [`Blobs::open`], [`Blobs::ingest`] (stage,
//! verify, publish), [`Blobs::delete`] and [`Blobs::list`]. Keeping it that narrow is
//! what lets an object-storage backend stand in later without touching the proxy.
//!
//! Invariant: a file exists under `blobs/` only if its bytes hash to its name. An
//! ingest writes to `staging/`, and only [`Ingest::commit`] (after checking size and
//! digest and fsyncing) renames it into place. A crash before the rename leaves a
//! staged file that the next open sweeps away; after it, a complete blob. What a
//! disk or an operator changes afterwards is found and dropped, not served (see
//! `crate::scrub`): [`Blobs::read`] re-hashes what it reads.
//!
//! Around that surface the store keeps, in memory, what eviction needs: when each blob
//! was last used ([`AccessTimes`]), which are in use now ([`Leases`]) and how many bytes
//! it holds ([`Usage`]). Lookups stamp access times; nothing on the read path writes
//! to disk. What only maintenance needs (walking, re-hashing) is in [`scan`].

use std::collections::HashSet;
use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::access_times::AccessTimes;
use crate::lease::{Lease, Leases};
use crate::usage::Usage;
use crate::{Digest, Error, Hasher, Layout, Result};

pub(crate) mod scan;

/// How long an interrupted download is kept for resuming.
const PARTIAL_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

#[derive(Debug)]
pub struct Blobs {
    layout: Layout,
    next_stage: AtomicU64,
    // Shared with ingests, which count and stamp what they publish.
    usage: Arc<Usage>,
    access: Arc<AccessTimes>,
    leases: Leases,
    /// Digests whose `partial/` file an ingest of this process is writing.
    resuming: Arc<Mutex<HashSet<Digest>>>,
}

/// Frees a digest's `partial/` file for the next resumable ingest when dropped.
#[derive(Debug)]
struct ResumeSlot {
    set: Arc<Mutex<HashSet<Digest>>>,
    digest: Digest,
}

impl Drop for ResumeSlot {
    fn drop(&mut self) {
        self.set.lock().expect("resuming lock").remove(&self.digest);
    }
}

impl Blobs {
    /// Opens the store under `layout`, creating directories and removing staged files a
    /// previous process left behind.
    pub fn open_store(layout: Layout) -> Result<Self> {
        let blobs = Self::open_as_found(layout)?;
        for path in blobs.staged()? {
            tracing::debug!(path = %path.display(), "removing staged file left by an earlier run");
            let _ = fs::remove_file(path);
        }
        // Interrupted downloads are kept for resuming, but not forever.
        for entry in fs::read_dir(blobs.layout.partial_dir())? {
            let entry = entry?;
            let age = entry
                .metadata()?
                .modified()
                .ok()
                .and_then(|m| m.elapsed().ok());
            if age.is_none_or(|a| a > PARTIAL_MAX_AGE) {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(blobs)
    }

    /// Opens the store without sweeping `staging/`, so that `fsck` can report what an
    /// earlier run left there.
    pub(crate) fn open_as_found(layout: Layout) -> Result<Self> {
        fs::create_dir_all(layout.blobs_dir())?;
        fs::create_dir_all(layout.staging_dir())?;
        fs::create_dir_all(layout.partial_dir())?;
        Ok(Blobs {
            layout,
            next_stage: AtomicU64::new(0),
            usage: Arc::default(),
            access: Arc::default(),
            leases: Leases::default(),
            resuming: Arc::default(),
        })
    }

    /// Bytes stored, as counted by this process (see [`Usage`]).
    pub fn usage(&self) -> &Usage {
        &self.usage
    }

    /// When blobs were last used, as seen by this process.
    pub fn access_times(&self) -> &AccessTimes {
        &self.access
    }

    /// Marks `d` as in use until the lease is dropped: eviction will not delete it.
    /// Take it before looking the blob up.
    pub fn lease(&self, d: &Digest) -> Lease {
        self.access.touch(d);
        self.leases.hold(d)
    }

    pub fn is_leased(&self, d: &Digest) -> bool {
        self.leases.is_held(d)
    }

    /// The size of a stored blob, or `None` if it is not stored.
    pub fn stat(&self, d: &Digest) -> Result<Option<u64>> {
        self.access.touch(d);
        match fs::metadata(self.layout.blob(d)) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Opens a stored blob for reading, with its size.
    pub fn open(&self, d: &Digest) -> Result<Option<(File, u64)>> {
        self.access.touch(d);
        match File::open(self.layout.blob(d)) {
            Ok(f) => {
                let len = f.metadata()?.len();
                Ok(Some((f, len)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads a whole stored blob into memory (for manifests, which are small),
    /// re-hashing it: bytes that do not match their digest are dropped, with a
    /// warning, and read as not stored.
    pub fn read(&self, d: &Digest) -> Result<Option<Vec<u8>>> {
        self.access.touch(d);
        let mut file = match File::open(self.layout.blob(d)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let meta = file.metadata()?;
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        io::Read::read_to_end(&mut file, &mut bytes)?;
        if d.verify(&bytes) {
            return Ok(Some(bytes));
        }
        // Warned by whoever drops it: once, however many requests read it.
        if self.remove_if_same(d, &meta)? {
            tracing::warn!(digest = %d, bytes = bytes.len(), "stored blob's bytes do not match its digest: dropped, to be fetched again");
        }
        Ok(None)
    }

    /// Unlinks `d` if its file is still the one `seen` describes (same device and
    /// inode): a damaged file goes, never a good copy an ingest renamed over it since.
    pub(crate) fn remove_if_same(&self, d: &Digest, seen: &Metadata) -> Result<bool> {
        let path = self.layout.blob(d);
        match fs::metadata(&path) {
            Ok(now) if now.dev() == seen.dev() && now.ino() == seen.ino() => {}
            Ok(_) => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        match fs::remove_file(&path) {
            Ok(()) => {
                self.usage.removed(seen.len());
                self.access.forget(d);
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Starts staging a blob that must hash to `expected` (and, if given, be exactly
    /// `expected_size` bytes long).
    pub fn ingest(&self, expected: &Digest, expected_size: Option<u64>) -> Result<Ingest> {
        let n = self.next_stage.fetch_add(1, Ordering::Relaxed);
        let staged = self.layout.staging_dir().join(format!(
            "{}-{}-{n}",
            expected.hex(),
            std::process::id()
        ));
        let file = recreating_dir(&staged, || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&staged)
        })?;
        Ok(Ingest {
            file,
            staged,
            target: self.layout.blob(expected),
            expected: expected.clone(),
            expected_size,
            hasher: expected.algorithm().hasher(),
            written: 0,
            committed: false,
            keep: false,
            usage: self.usage.clone(),
            access: self.access.clone(),
            _resume: None,
        })
    }

    /// Like [`Blobs::ingest`], but continuing an interrupted download of `expected` if
    /// one was kept ([`Ingest::keep_for_resume`], or a crash): the bytes already there
    /// are re-hashed, and [`Ingest::written`] says where to resume. Another download of
    /// the same digest under way in this process gets a fresh, non-resumable ingest.
    pub fn ingest_resumable(&self, expected: &Digest) -> Result<Ingest> {
        let path = self.layout.partial(expected);
        if !self
            .resuming
            .lock()
            .expect("resuming lock")
            .insert(expected.clone())
        {
            return self.ingest(expected, None);
        }
        let release = ResumeSlot {
            set: self.resuming.clone(),
            digest: expected.clone(),
        };
        let mut file = recreating_dir(&path, || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
        })?;
        let mut hasher = expected.algorithm().hasher();
        let mut written = 0u64;
        // Nearly always a new, empty file: no buffer for that.
        if file.metadata()?.len() > 0 {
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = io::Read::read(&mut file, &mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                written += n as u64;
            }
        }
        if written > 0 {
            tracing::info!(digest = %expected, bytes = written, "resuming an interrupted download");
        }
        Ok(Ingest {
            file,
            staged: path,
            target: self.layout.blob(expected),
            expected: expected.clone(),
            expected_size: None,
            hasher,
            written,
            committed: false,
            keep: false,
            usage: self.usage.clone(),
            access: self.access.clone(),
            _resume: Some(release),
        })
    }

    /// Stores `bytes` (already in memory) under `expected`, verifying them first.
    pub fn put(&self, expected: &Digest, bytes: &[u8]) -> Result<()> {
        let mut ingest = self.ingest(expected, Some(bytes.len() as u64))?;
        ingest.write(bytes)?;
        ingest.commit()
    }

    /// Removes a blob; `false` if it was not there.
    pub fn delete(&self, d: &Digest) -> Result<bool> {
        Ok(self.remove(d)?.is_some())
    }

    /// Removes a blob unless it is leased: `None` if leased, else the bytes freed (0 if
    /// it was not there).
    pub fn delete_unless_leased(&self, d: &Digest) -> Result<Option<u64>> {
        self.leases
            .unless_held(d, || self.remove(d).map(|n| n.unwrap_or(0)))
            .transpose()
    }

    /// Unlinks a blob, keeping the byte count and access times in step; its size, or
    /// `None` if it was not there.
    fn remove(&self, d: &Digest) -> Result<Option<u64>> {
        let path = self.layout.blob(d);
        let size = match fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        match fs::remove_file(&path) {
            Ok(()) => {
                self.usage.removed(size);
                self.access.forget(d);
                Ok(Some(size))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Every stored blob's digest. Files whose names are not digests are skipped.
    pub fn list(&self) -> Result<Vec<Digest>> {
        let mut out: Vec<Digest> = self.walk()?.files.into_iter().map(|f| f.digest).collect();
        out.sort();
        Ok(out)
    }
}

/// Runs `create`, which creates a file in `path`'s directory; if that directory is
/// gone (an operator's `rm -rf staging/` on a running server), recreates it, warns,
/// and tries once more: a lost directory costs one warning, not every ingest failing
/// until a restart. Only the directory itself is recreated, never the store's root: a
/// root that is gone (an unmounted volume) stays an error.
pub(crate) fn recreating_dir<T>(path: &Path, create: impl Fn() -> io::Result<T>) -> io::Result<T> {
    match create() {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let dir = path.parent().expect("store files have a parent directory");
            match fs::create_dir(dir) {
                Ok(()) => {
                    tracing::warn!(dir = %dir.display(), "a store directory was deleted; recreated it")
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
            create()
        }
        r => r,
    }
}

/// A blob being staged. Bytes go in with [`Ingest::write`]; concurrent readers can
/// read what is written so far through [`Ingest::reader`]. Dropping an uncommitted
/// ingest deletes the staged file: nothing of it ever becomes visible.
#[derive(Debug)]
pub struct Ingest {
    file: File,
    staged: PathBuf,
    target: PathBuf,
    expected: Digest,
    expected_size: Option<u64>,
    hasher: Hasher,
    written: u64,
    committed: bool,
    /// Leave the file for a later resume instead of deleting it when dropped.
    keep: bool,
    usage: Arc<Usage>,
    access: Arc<AccessTimes>,
    /// Held by a resumable ingest while it owns its `partial/` file.
    _resume: Option<ResumeSlot>,
}

impl Ingest {
    /// Appends bytes, hashing them. Refuses bytes past the expected size.
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let after = self.written + bytes.len() as u64;
        if let Some(expected) = self.expected_size
            && after > expected
        {
            return Err(Error::SizeMismatch {
                digest: self.expected.clone(),
                expected,
                actual: after,
            });
        }
        self.file.write_all(bytes)?;
        self.hasher.update(bytes);
        self.written = after;
        Ok(())
    }

    /// Sets the size the bytes must reach, once it is known (a resumed download
    /// learns it from the upstream's answer).
    pub fn expect_size(&mut self, size: u64) -> Result<()> {
        if self.written > size {
            return Err(Error::SizeMismatch {
                digest: self.expected.clone(),
                expected: size,
                actual: self.written,
            });
        }
        self.expected_size = Some(size);
        Ok(())
    }

    /// Drops what was written, to start over (the kept bytes were not a prefix of the
    /// blob the upstream now serves).
    pub fn reset(&mut self) -> Result<()> {
        self.file.set_len(0)?;
        io::Seek::seek(&mut self.file, io::SeekFrom::Start(0))?;
        self.hasher = self.expected.algorithm().hasher();
        self.written = 0;
        Ok(())
    }

    /// Keeps a resumable ingest's bytes when it is dropped uncommitted, so a later
    /// download continues from them (for an interrupted upstream; never for bytes
    /// that failed verification). No effect on a non-resumable ingest.
    pub fn keep_for_resume(mut self) {
        self.keep = self._resume.is_some();
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn digest(&self) -> &Digest {
        &self.expected
    }

    /// A handle on the staged file for positional reads (`read_at`) of the bytes
    /// written so far. It stays valid after the ingest commits or aborts.
    pub fn reader(&self) -> Result<File> {
        Ok(self.file.try_clone()?)
    }

    /// Verifies size and digest, makes the bytes durable and publishes the blob.
    pub fn commit(self) -> Result<()> {
        self.verify()?.commit()
    }

    /// Checks size and digest. The bytes are then known to be right, though not yet
    /// durable or visible in the store: [`Verified::commit`] does that.
    pub fn verify(mut self) -> Result<Verified> {
        if let Some(expected) = self.expected_size
            && self.written != expected
        {
            return Err(Error::SizeMismatch {
                digest: self.expected.clone(),
                expected,
                actual: self.written,
            });
        }
        let actual =
            std::mem::replace(&mut self.hasher, self.expected.algorithm().hasher()).finish();
        if actual != self.expected {
            return Err(Error::DigestMismatch {
                expected: self.expected.clone(),
                actual,
            });
        }
        Ok(Verified(self))
    }
}

/// An ingest whose bytes matched their digest. Dropping it uncommitted discards them.
#[derive(Debug)]
pub struct Verified(Ingest);

impl Verified {
    /// Makes the bytes durable and publishes the blob under its digest.
    pub fn commit(self) -> Result<()> {
        let mut this = self.0;
        this.file.sync_all()?;
        let dir = this.target.parent().expect("blob paths have a parent");
        fs::create_dir_all(dir)?;
        // Replacing an identical blob (two fetches racing) adds no bytes.
        let replaces = this.target.exists();
        fs::rename(&this.staged, &this.target)?;
        this.committed = true;
        this.access.touch(&this.expected);
        if !replaces {
            this.usage.added(this.written);
        }
        // The rename is durable only once the directory entry is.
        File::open(dir)?.sync_all()?;
        Ok(())
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        if !self.committed && !self.keep {
            let _ = fs::remove_file(&self.staged);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    fn store() -> (tempfile::TempDir, Blobs) {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open_store(Layout::new(dir.path())).unwrap();
        (dir, blobs)
    }

    #[test]
    fn ingest_verifies_then_publishes() {
        let (_dir, blobs) = store();
        let d = Digest::sha256_of(b"hello world");
        let mut i = blobs.ingest(&d, Some(11)).unwrap();
        i.write(b"hello ").unwrap();
        assert_eq!(blobs.stat(&d).unwrap(), None, "visible before commit");
        let reader = i.reader().unwrap();
        let mut buf = [0u8; 6];
        reader.read_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"hello ");
        i.write(b"world").unwrap();
        i.commit().unwrap();
        assert_eq!(blobs.stat(&d).unwrap(), Some(11));
        assert_eq!(blobs.read(&d).unwrap().unwrap(), b"hello world");
        assert_eq!(blobs.list().unwrap(), vec![d]);
    }

    #[test]
    fn wrong_bytes_never_become_visible() {
        let (dir, blobs) = store();
        let d = Digest::sha256_of(b"hello world");
        let mut i = blobs.ingest(&d, None).unwrap();
        i.write(b"hello w0rld").unwrap();
        assert!(matches!(i.commit(), Err(Error::DigestMismatch { .. })));
        assert_eq!(blobs.stat(&d).unwrap(), None);
        assert_eq!(fs::read_dir(dir.path().join("staging")).unwrap().count(), 0);
    }

    #[test]
    fn size_is_enforced() {
        let (_dir, blobs) = store();
        let d = Digest::sha256_of(b"hello world");
        let mut i = blobs.ingest(&d, Some(5)).unwrap();
        assert!(matches!(
            i.write(b"hello world"),
            Err(Error::SizeMismatch { .. })
        ));
        let mut i = blobs.ingest(&d, Some(20)).unwrap();
        i.write(b"hello world").unwrap();
        assert!(matches!(i.commit(), Err(Error::SizeMismatch { .. })));
        assert_eq!(blobs.stat(&d).unwrap(), None);
    }

    #[test]
    fn an_interrupted_download_resumes_where_it_stopped() {
        let (_dir, blobs) = store();
        let d = Digest::sha256_of(b"hello world");
        let mut i = blobs.ingest_resumable(&d).unwrap();
        assert_eq!(i.written(), 0);
        i.write(b"hello ").unwrap();
        // A second download of the same digest meanwhile does not share the file.
        let other = blobs.ingest_resumable(&d).unwrap();
        assert_eq!(other.written(), 0);
        drop(other);
        i.keep_for_resume();
        let mut i = blobs.ingest_resumable(&d).unwrap();
        assert_eq!(i.written(), 6, "resumes after the kept bytes");
        i.expect_size(11).unwrap();
        i.write(b"world").unwrap();
        i.commit().unwrap();
        assert_eq!(blobs.read(&d).unwrap().unwrap(), b"hello world");
        // Without keep_for_resume, a failed download leaves nothing.
        let d2 = Digest::sha256_of(b"x");
        let mut i = blobs.ingest_resumable(&d2).unwrap();
        i.write(b"y").unwrap();
        drop(i);
        assert_eq!(blobs.ingest_resumable(&d2).unwrap().written(), 0);
    }

    #[test]
    fn leftover_staging_is_swept_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let blobs = Blobs::open_store(layout.clone()).unwrap();
        let d = Digest::sha256_of(b"x");
        let mut i = blobs.ingest(&d, None).unwrap();
        i.write(b"x").unwrap();
        std::mem::forget(i); // as if the process died here
        assert_eq!(fs::read_dir(layout.staging_dir()).unwrap().count(), 1);
        let blobs = Blobs::open_store(layout.clone()).unwrap();
        assert_eq!(fs::read_dir(layout.staging_dir()).unwrap().count(), 0);
        assert_eq!(blobs.stat(&d).unwrap(), None);
    }
}
