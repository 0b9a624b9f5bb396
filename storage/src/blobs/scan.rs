//! Walking and re-hashing the blob store, for maintenance (fsck, gc, eviction).
//!
//! Nothing here stamps access times: a maintenance pass looking at every blob is not a
//! use of any of them.

use std::fs::{self, File};
use std::io::{self, Read};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::SystemTime;

use super::Blobs;
use crate::{Digest, Result};

/// What `file`'s bytes hash to under `d`'s algorithm, read a MiB at a time; `pace` is
/// told each piece's length and may stop the read (then `None`), which is how the
/// background scrub keeps to its rate and stops on shutdown.
pub(crate) fn hash_file(
    file: &mut File,
    d: &Digest,
    mut pace: impl FnMut(u64) -> ControlFlow<()>,
) -> io::Result<Option<Digest>> {
    let mut hasher = d.algorithm().hasher();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
                if pace(n as u64).is_break() {
                    return Ok(None);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Some(hasher.finish()))
}

/// A blob file found by a walk.
#[derive(Debug, Clone)]
pub struct StoredFile {
    pub digest: Digest,
    pub size: u64,
    /// When its bytes were written (the staged file's last write, kept by the rename).
    pub modified: SystemTime,
}

/// Everything under `blobs/`.
#[derive(Debug, Default)]
pub struct Walk {
    pub files: Vec<StoredFile>,
    /// Entries Ferry would never find or serve: names that are not digests, files in
    /// the wrong prefix directory, unknown algorithms.
    pub strays: Vec<PathBuf>,
}

impl Walk {
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

impl Blobs {
    /// Walks `blobs/`, sorted by digest. Files that vanish meanwhile are skipped.
    pub fn walk(&self) -> Result<Walk> {
        let mut walk = Walk::default();
        for alg in fs::read_dir(self.layout.blobs_dir())? {
            let alg = alg?;
            let alg_name = alg.file_name().to_string_lossy().into_owned();
            let known = ["sha256", "sha512"].contains(&alg_name.as_str());
            if !known || !alg.file_type()?.is_dir() {
                walk.strays.push(alg.path());
                continue;
            }
            for prefix in fs::read_dir(alg.path())? {
                let prefix = prefix?;
                if !prefix.file_type()?.is_dir() {
                    walk.strays.push(prefix.path());
                    continue;
                }
                let prefix_name = prefix.file_name().to_string_lossy().into_owned();
                for file in fs::read_dir(prefix.path())? {
                    let file = file?;
                    let name = file.file_name().to_string_lossy().into_owned();
                    let digest = format!("{alg_name}:{name}").parse::<Digest>().ok();
                    let is_file = file.file_type()?.is_file();
                    match digest {
                        Some(d)
                            if is_file
                                && d.hex().starts_with(&prefix_name)
                                && prefix_name.len() == 2 =>
                        {
                            let meta = match file.metadata() {
                                Ok(m) => m,
                                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                                Err(e) => return Err(e.into()),
                            };
                            walk.files.push(StoredFile {
                                digest: d,
                                size: meta.len(),
                                modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                            });
                        }
                        _ => walk.strays.push(file.path()),
                    }
                }
            }
        }
        walk.files.sort_by(|a, b| a.digest.cmp(&b.digest));
        walk.strays.sort();
        Ok(walk)
    }

    /// What the bytes stored under `d` hash to (under `d`'s algorithm); `None` if it is
    /// not stored.
    pub fn rehash(&self, d: &Digest) -> Result<Option<Digest>> {
        let Some(mut file) = self.open_quietly(d)? else {
            return Ok(None);
        };
        Ok(hash_file(&mut file, d, |_| ControlFlow::Continue(()))?)
    }

    /// Opens a stored blob without counting it as a use; `None` if it is not stored.
    pub(crate) fn open_quietly(&self, d: &Digest) -> Result<Option<File>> {
        match File::open(self.layout.blob(d)) {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The size of a stored blob without counting it as a use.
    pub(crate) fn size_of(&self, d: &Digest) -> Result<Option<u64>> {
        match fs::metadata(self.layout.blob(d)) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// A stored manifest's bytes, without counting it as a use.
    pub(crate) fn read_quietly(&self, d: &Digest) -> Result<Option<Vec<u8>>> {
        match fs::read(self.layout.blob(d)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Files in `staging/`: ingests in progress, or (with no server running) left by
    /// a process that died.
    pub fn staged(&self) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        match fs::read_dir(self.layout.staging_dir()) {
            Ok(entries) => {
                for e in entries {
                    out.push(e?.path());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        out.sort();
        Ok(out)
    }
}
