//! The on-disk tree, drawn once; every path Ferry touches is built here.
//!
//! ```text
//! <root>/
//!   blobs/sha256/ab/abcdef…   verified content, named by digest (manifests too)
//!   blobs/sha512/…
//!   staging/                   ingests in progress; swept when the store opens
//!   partial/<alg>-<hex>        interrupted downloads kept for resuming (unverified;
//!                              verified like any ingest when completed)
//!   index/                     the sled database (tags, links, metadata)
//!   lock                       held (flock) by the one process that has the store open
//!   format                     `ferry-store 1`: the layout and index encoding in use
//! ```
//!
//! Paths under `blobs/` are derived only from a validated [`Digest`], whose hex part
//! is lowercase hex of a fixed length, so no request can name a path outside it.

use std::path::{Path, PathBuf};

use crate::Digest;

#[derive(Clone, Debug)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Layout { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs")
    }

    pub fn blob(&self, d: &Digest) -> PathBuf {
        let hex = d.hex();
        self.blobs_dir()
            .join(d.algorithm().name())
            .join(&hex[..2])
            .join(hex)
    }

    pub fn staging_dir(&self) -> PathBuf {
        self.root.join("staging")
    }

    pub fn partial_dir(&self) -> PathBuf {
        self.root.join("partial")
    }

    /// Where an interrupted download of `d` waits to be resumed.
    pub fn partial(&self, d: &Digest) -> PathBuf {
        self.partial_dir()
            .join(format!("{}-{}", d.algorithm().name(), d.hex()))
    }

    pub fn index_dir(&self) -> PathBuf {
        self.root.join("index")
    }

    pub fn lock_file(&self) -> PathBuf {
        self.root.join("lock")
    }

    /// The store's format marker (see `format.rs`); like the lock, never moved.
    pub fn format_file(&self) -> PathBuf {
        self.root.join("format")
    }
}
