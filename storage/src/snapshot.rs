//! One look at the whole store, files and index together, that fsck, gc and eviction
//! reason over.
//!
//! Files are walked first, the index read after: content stored meanwhile shows up as
//! a record without a file, which every user of a snapshot leaves alone.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::UNIX_EPOCH;

use crate::blobs::scan::{StoredFile, Walk};
use crate::index::{Scanned, TagEntry};
use crate::{BlobRecord, Digest, ManifestRecord, Repo, Result, Store};
use ferry_oci::refs::Refs;

pub(crate) struct Snapshot {
    pub files: BTreeMap<Digest, StoredFile>,
    pub strays: Vec<std::path::PathBuf>,
    pub tags: Vec<Scanned<TagEntry>>,
    pub manifests: Vec<Scanned<(Digest, ManifestRecord)>>,
    pub blobs: Vec<Scanned<(Digest, BlobRecord)>>,
    pub links: Vec<Scanned<(Repo, Digest)>>,
    /// What each stored manifest (record and file both present) points at.
    pub refs: HashMap<Digest, Refs>,
    /// Stored manifests whose bytes are not a JSON manifest.
    pub unparsable: Vec<Digest>,
    /// Last access per blob record, in milliseconds.
    recorded_ms: HashMap<Digest, u64>,
}

impl Snapshot {
    pub fn take(store: &Store) -> Result<Snapshot> {
        let Walk { files, strays } = store.blobs.walk()?;
        let files: BTreeMap<Digest, StoredFile> =
            files.into_iter().map(|f| (f.digest.clone(), f)).collect();
        let index = &store.index;
        let manifests = index.scan_manifests()?;
        let mut refs = HashMap::new();
        let mut unparsable = Vec::new();
        for (d, _) in manifests.iter().filter_map(|s| s.value.as_ref().ok()) {
            if !files.contains_key(d) {
                continue;
            }
            let Some(bytes) = store.blobs.read_quietly(d)? else {
                continue;
            };
            match Refs::parse(&bytes) {
                Ok(r) => {
                    refs.insert(d.clone(), r);
                }
                Err(_) => unparsable.push(d.clone()),
            }
        }
        let blobs = index.scan_blobs()?;
        let recorded_ms = blobs
            .iter()
            .filter_map(|s| s.value.as_ref().ok())
            .map(|(d, r)| (d.clone(), r.last_access.saturating_mul(1000)))
            .collect();
        Ok(Snapshot {
            files,
            strays,
            tags: index.scan_tags()?,
            manifests,
            blobs,
            recorded_ms,
            links: index.scan_links()?,
            refs,
            unparsable,
        })
    }

    pub fn bytes(&self) -> u64 {
        self.files.values().map(|f| f.size).sum()
    }

    /// Manifest records that decode, by digest.
    pub fn manifest_records(&self) -> HashMap<&Digest, &ManifestRecord> {
        self.manifests
            .iter()
            .filter_map(|s| s.value.as_ref().ok())
            .map(|(d, r)| (d, r))
            .collect()
    }

    /// Blob records that decode, by digest.
    pub fn blob_records(&self) -> HashMap<&Digest, &BlobRecord> {
        self.blobs
            .iter()
            .filter_map(|s| s.value.as_ref().ok())
            .map(|(d, r)| (d, r))
            .collect()
    }

    /// Tag records that decode.
    pub fn tag_entries(&self) -> impl Iterator<Item = &TagEntry> {
        self.tags.iter().filter_map(|s| s.value.as_ref().ok())
    }

    /// Every digest some stored manifest references, subjects included.
    pub fn referenced(&self) -> HashSet<&Digest> {
        self.refs.values().flat_map(Refs::all).collect()
    }

    /// When `d` was last used, in milliseconds since the epoch: the latest of this
    /// process's stamp, the index's record and the file's write time.
    pub fn last_used_ms(&self, store: &Store, d: &Digest) -> u64 {
        let stamp = store.blobs.access_times().get(d).unwrap_or(0);
        let recorded = self.recorded_ms.get(d).copied().unwrap_or(0);
        let written = self
            .files
            .get(d)
            .and_then(|f| f.modified.duration_since(UNIX_EPOCH).ok())
            .map(|t| t.as_millis() as u64)
            .unwrap_or(0);
        stamp.max(recorded).max(written)
    }
}
