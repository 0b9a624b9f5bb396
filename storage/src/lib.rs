//! Ferry's storage: a content-addressed blob store on the filesystem plus a sled index.
//!
//! - A blob is visible only after its digest verified: writes are staged, fsynced,
//!   then renamed into place ([`blobs`]).
//! - The blob store is the authority on what bytes exist; the [`index`] holds what
//!   the files cannot say (tags, media types, which repository a digest came from,
//!   access times). A crash at any point leaves a store that opens cleanly.
//! - Every path derives from a validated [`Digest`] through [`Layout`].
//!
//! This crate knows nothing of HTTP or upstreams.

mod blobs;
mod digest;
mod error;
pub mod index;
mod layout;
mod name;

use std::path::Path;

pub use blobs::{Blobs, Ingest};
pub use digest::{Algorithm, Digest, DigestError, Hasher};
pub use error::{Error, Result};
pub use index::{BlobRecord, Index, ManifestRecord, Repo, TagRecord};
pub use layout::Layout;
pub use name::{NameError, Reference, RepoName, Tag, TagError};

/// The blob store and the index, opened together under one root.
#[derive(Debug)]
pub struct Store {
    pub blobs: Blobs,
    pub index: Index,
    layout: Layout,
}

impl Store {
    pub fn open(root: &Path) -> Result<Store> {
        let layout = Layout::new(root);
        std::fs::create_dir_all(layout.root())?;
        let blobs = Blobs::open_store(layout.clone())?;
        let index = Index::open(&layout.index_dir())?;
        Ok(Store {
            blobs,
            index,
            layout,
        })
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }
}
