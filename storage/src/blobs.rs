//! The content-addressed blob store on the local filesystem.
//!
//! Its whole surface is: [`Blobs::stat`], [`Blobs::open`], [`Blobs::ingest`] (stage,
//! verify, publish), [`Blobs::delete`] and [`Blobs::list`]. Keeping it that narrow is
//! what lets an object-storage backend stand in later without touching the proxy.
//!
//! Invariant: a file exists under `blobs/` only if its bytes hash to its name. An
//! ingest writes to `staging/`, and only [`Ingest::commit`] (after checking size and
//! digest and fsyncing) renames it into place. A crash before the rename leaves a
//! staged file that the next open sweeps away; after it, a complete blob.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Digest, Error, Hasher, Layout, Result};

#[derive(Debug)]
pub struct Blobs {
    layout: Layout,
    next_stage: AtomicU64,
}

impl Blobs {
    /// Opens the store under `layout`, creating directories and removing staged files a
    /// previous process left behind.
    pub fn open_store(layout: Layout) -> Result<Self> {
        fs::create_dir_all(layout.blobs_dir())?;
        let staging = layout.staging_dir();
        if staging.exists() {
            for entry in fs::read_dir(&staging)? {
                let path = entry?.path();
                tracing::debug!(path = %path.display(), "removing staged file left by an earlier run");
                let _ = fs::remove_file(path);
            }
        }
        fs::create_dir_all(&staging)?;
        Ok(Blobs {
            layout,
            next_stage: AtomicU64::new(0),
        })
    }

    /// The size of a stored blob, or `None` if it is not stored.
    pub fn stat(&self, d: &Digest) -> Result<Option<u64>> {
        match fs::metadata(self.layout.blob(d)) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Opens a stored blob for reading, with its size.
    pub fn open(&self, d: &Digest) -> Result<Option<(File, u64)>> {
        match File::open(self.layout.blob(d)) {
            Ok(f) => {
                let len = f.metadata()?.len();
                Ok(Some((f, len)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads a whole stored blob into memory (for manifests, which are small).
    pub fn read(&self, d: &Digest) -> Result<Option<Vec<u8>>> {
        match fs::read(self.layout.blob(d)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
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
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&staged)?;
        Ok(Ingest {
            file,
            staged,
            target: self.layout.blob(expected),
            expected: expected.clone(),
            expected_size,
            hasher: expected.algorithm().hasher(),
            written: 0,
            committed: false,
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
        match fs::remove_file(self.layout.blob(d)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Every stored blob's digest. Files whose names are not digests are skipped.
    pub fn list(&self) -> Result<Vec<Digest>> {
        let mut out = Vec::new();
        for alg in fs::read_dir(self.layout.blobs_dir())? {
            let alg = alg?;
            let alg_name = alg.file_name().to_string_lossy().into_owned();
            for prefix in fs::read_dir(alg.path())? {
                for file in fs::read_dir(prefix?.path())? {
                    let name = file?.file_name().to_string_lossy().into_owned();
                    if let Ok(d) = format!("{alg_name}:{name}").parse() {
                        out.push(d);
                    }
                }
            }
        }
        out.sort();
        Ok(out)
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
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hasher")
    }
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
    pub fn commit(mut self) -> Result<()> {
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
        self.file.sync_all()?;
        let dir = self.target.parent().expect("blob paths have a parent");
        fs::create_dir_all(dir)?;
        fs::rename(&self.staged, &self.target)?;
        self.committed = true;
        // The rename is durable only once the directory entry is.
        File::open(dir)?.sync_all()?;
        Ok(())
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        if !self.committed {
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
