//! The sled index: what the filesystem cannot say by itself.
//!
//! Trees and keys (`\0` separates parts; upstream names never contain it):
//!
//! | tree        | key                         | value            |
//! |-------------|-----------------------------|------------------|
//! | `tags`      | upstream, repo, tag         | [`TagRecord`]    |
//! | `manifests` | digest                      | [`ManifestRecord`] |
//! | `links`     | upstream, repo, digest      | empty            |
//! | `blobs`     | digest                      | [`BlobRecord`]   |
//! | `taglists`  | upstream, repo              | tag names (JSON) |
//! | `referrers` | upstream, repo, digest[, `artifactType=`type] | index bytes |
//!
//! The index is never the authority on whether bytes exist: the blob store is. A
//! record whose blob is missing (a crash between the two writes, a deleted file) reads
//! as a cache miss, so every crash point leaves a usable store. It does hold the
//! size each blob verified at, which is how a file damaged since is told apart (see
//! [`crate::Store::stored_size`]).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use sled::Transactional;

use crate::{Digest, Error, RepoName, Result, Tag};

mod scan;
pub use scan::{RecordKey, Scanned, TagEntry, Tree};

/// A repository as Ferry caches it: which upstream, and the name there.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Repo {
    pub upstream: String,
    pub name: RepoName,
}

impl Repo {
    fn key(&self, suffix: &str) -> Vec<u8> {
        format!("{}\0{}\0{suffix}", self.upstream, self.name).into_bytes()
    }

    fn prefix(&self) -> Vec<u8> {
        self.key("")
    }
}

/// Where a tag pointed when Ferry last asked the upstream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagRecord {
    pub digest: Digest,
    pub media_type: String,
    /// Seconds since the Unix epoch at the last fetch or successful revalidation.
    pub fetched_at: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestRecord {
    pub media_type: String,
    pub size: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRecord {
    pub size: u64,
    /// Seconds since the Unix epoch, as of the last write of the in-memory access
    /// times ([`crate::AccessTimes`]).
    pub last_access: u64,
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub struct Index {
    db: sled::Db,
    tags: sled::Tree,
    manifests: sled::Tree,
    links: sled::Tree,
    blobs: sled::Tree,
    taglists: sled::Tree,
    referrers: sled::Tree,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index").finish_non_exhaustive()
    }
}

fn decode<T: DeserializeOwned>(key: &[u8], v: &[u8]) -> Result<T> {
    serde_json::from_slice(v).map_err(|e| Error::CorruptRecord {
        key: String::from_utf8_lossy(key).replace('\0', "/"),
        reason: e.to_string(),
    })
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("index records serialize")
}

impl Index {
    pub fn open(path: &Path) -> Result<Self> {
        let db = sled::Config::new().path(path).open()?;
        Ok(Index {
            tags: db.open_tree("tags")?,
            manifests: db.open_tree("manifests")?,
            links: db.open_tree("links")?,
            blobs: db.open_tree("blobs")?,
            taglists: db.open_tree("taglists")?,
            referrers: db.open_tree("referrers")?,
            db,
        })
    }

    fn get<T: DeserializeOwned>(tree: &sled::Tree, key: &[u8]) -> Result<Option<T>> {
        tree.get(key)?.map(|v| decode(key, &v)).transpose()
    }

    pub fn tag(&self, repo: &Repo, tag: &Tag) -> Result<Option<TagRecord>> {
        Self::get(&self.tags, &repo.key(tag.as_str()))
    }

    pub fn set_tag(&self, repo: &Repo, tag: &Tag, rec: &TagRecord) -> Result<()> {
        self.tags.insert(repo.key(tag.as_str()), encode(rec))?;
        Ok(())
    }

    /// A tag's record with its encoded bytes, which [`Index::swap_tag`] compares.
    pub(crate) fn tag_with_bytes(
        &self,
        repo: &Repo,
        tag: &Tag,
    ) -> Result<Option<(TagRecord, Vec<u8>)>> {
        let key = repo.key(tag.as_str());
        self.tags
            .get(&key)?
            .map(|v| Ok((decode(&key, &v)?, v.to_vec())))
            .transpose()
    }

    /// Writes `rec` if the tag's record is still `expected` (its bytes; `None`: still
    /// absent). The bytes written, or `None` if the record was not as expected.
    pub(crate) fn swap_tag(
        &self,
        repo: &Repo,
        tag: &Tag,
        expected: Option<&[u8]>,
        rec: &TagRecord,
    ) -> Result<Option<Vec<u8>>> {
        let new = encode(rec);
        let swapped =
            self.tags
                .compare_and_swap(repo.key(tag.as_str()), expected, Some(new.as_slice()))?;
        Ok(swapped.is_ok().then_some(new))
    }

    /// The tags fetched through Ferry in `repo` (by manifest pulls), sorted.
    pub fn known_tags(&self, repo: &Repo) -> Result<BTreeSet<String>> {
        let mut out = BTreeSet::new();
        let prefix = repo.prefix();
        for kv in self.tags.scan_prefix(&prefix) {
            let (k, _) = kv?;
            out.insert(String::from_utf8_lossy(&k[prefix.len()..]).into_owned());
        }
        Ok(out)
    }

    /// The tag list the upstream last gave for `repo`, if it ever gave one.
    pub fn listed_tags(&self, repo: &Repo) -> Result<Option<Vec<Tag>>> {
        let Some(names) = Self::get::<Vec<String>>(&self.taglists, &repo.prefix())? else {
            return Ok(None);
        };
        // Lists stored by older versions were not checked: what is not a tag is dropped.
        Ok(Some(names.iter().filter_map(|n| n.parse().ok()).collect()))
    }

    /// Records the upstream's tag list for `repo`, replacing the one before (tags
    /// the upstream no longer lists are gone). Written only when it changed.
    pub fn set_listed_tags(&self, repo: &Repo, tags: &[Tag]) -> Result<()> {
        let key = repo.prefix();
        let value = encode(&tags.iter().map(Tag::as_str).collect::<Vec<_>>());
        if self.taglists.get(&key)?.as_deref() != Some(value.as_slice()) {
            self.taglists.insert(key, value)?;
        }
        Ok(())
    }

    pub fn manifest(&self, d: &Digest) -> Result<Option<ManifestRecord>> {
        Self::get(&self.manifests, d.as_str().as_bytes())
    }

    pub fn put_manifest(&self, d: &Digest, rec: &ManifestRecord) -> Result<()> {
        self.manifests.insert(d.as_str().as_bytes(), encode(rec))?;
        Ok(())
    }

    /// Records that `d` is known to exist in `repo` upstream, so it may be served
    /// under that name without asking again.
    pub fn link(&self, repo: &Repo, d: &Digest) -> Result<()> {
        self.links.insert(repo.key(d.as_str()), &[])?;
        Ok(())
    }

    pub fn is_linked(&self, repo: &Repo, d: &Digest) -> Result<bool> {
        Ok(self.links.contains_key(repo.key(d.as_str()))?)
    }

    pub fn blob(&self, d: &Digest) -> Result<Option<BlobRecord>> {
        Self::get(&self.blobs, d.as_str().as_bytes())
    }

    pub fn blob_stored(&self, d: &Digest, size: u64) -> Result<()> {
        let rec = BlobRecord {
            size,
            last_access: now_secs(),
        };
        self.blobs.insert(d.as_str().as_bytes(), encode(&rec))?;
        Ok(())
    }

    /// Records a blob fetched for `repo` and links it there, in one transaction: sled
    /// persists trees independently, and a crash that kept the record but lost the
    /// link would leave a stored blob no repository serves (and that the sweep of
    /// unrecorded files at open would not look at).
    pub fn blob_stored_in(&self, repo: &Repo, d: &Digest, size: u64) -> Result<()> {
        let rec = encode(&BlobRecord {
            size,
            last_access: now_secs(),
        });
        let link = repo.key(d.as_str());
        (&self.blobs, &self.links)
            .transaction(|(blobs, links)| {
                blobs.insert(d.as_str().as_bytes(), rec.as_slice())?;
                links.insert(link.as_slice(), &[])?;
                Ok(())
            })
            .map_err(transaction_error)
    }

    /// Records a manifest fetched for `repo`, links it there and, fetched by `tag`,
    /// points the tag at it: one transaction, for the reason [`Index::blob_stored_in`]
    /// gives (a tag whose manifest record was lost would point at nothing servable).
    pub fn manifest_stored_in(
        &self,
        repo: &Repo,
        d: &Digest,
        rec: &ManifestRecord,
        tag: Option<(&Tag, &TagRecord)>,
    ) -> Result<()> {
        let rec = encode(rec);
        let link = repo.key(d.as_str());
        let tag = tag.map(|(t, r)| (repo.key(t.as_str()), encode(r)));
        (&self.manifests, &self.links, &self.tags)
            .transaction(|(manifests, links, tags)| {
                manifests.insert(d.as_str().as_bytes(), rec.as_slice())?;
                links.insert(link.as_slice(), &[])?;
                if let Some((key, value)) = &tag {
                    tags.insert(key.as_slice(), value.as_slice())?;
                }
                Ok(())
            })
            .map_err(transaction_error)
    }

    /// The referrers answer kept for `subject`: the unfiltered one, or the one an
    /// upstream filtered by `artifact_type` itself.
    pub fn referrers(
        &self,
        repo: &Repo,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Option<Vec<u8>>> {
        let key = referrers_key(repo, subject, artifact_type);
        Ok(self.referrers.get(key)?.map(|v| v.to_vec()))
    }

    /// Keeps a referrers answer, replacing the one before for the same query.
    pub fn set_referrers(
        &self,
        repo: &Repo,
        subject: &Digest,
        artifact_type: Option<&str>,
        index: &[u8],
    ) -> Result<()> {
        let key = referrers_key(repo, subject, artifact_type);
        if self.referrers.get(&key)?.as_deref() != Some(index) {
            self.referrers.insert(key, index)?;
        }
        Ok(())
    }

    /// Waits until every write so far is on disk.
    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }
}

fn referrers_key(repo: &Repo, subject: &Digest, artifact_type: Option<&str>) -> Vec<u8> {
    match artifact_type {
        None => repo.key(subject.as_str()),
        Some(a) => repo.key(&format!("{subject}\0artifactType={a}")),
    }
}

/// A transaction that never aborts fails only in sled itself.
fn transaction_error(e: sled::transaction::TransactionError) -> Error {
    match e {
        sled::transaction::TransactionError::Storage(e)
        | sled::transaction::TransactionError::Abort(e) => e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(up: &str, name: &str) -> Repo {
        Repo {
            upstream: up.into(),
            name: name.parse().unwrap(),
        }
    }

    #[test]
    fn tags_are_scoped_by_upstream_and_repo() {
        let dir = tempfile::tempdir().unwrap();
        let idx = Index::open(dir.path()).unwrap();
        let d = Digest::sha256_of(b"m");
        let rec = TagRecord {
            digest: d.clone(),
            media_type: "x".into(),
            fetched_at: 1,
        };
        let t: Tag = "1".parse().unwrap();
        idx.set_tag(&repo("a", "r"), &t, &rec).unwrap();
        assert_eq!(idx.tag(&repo("a", "r"), &t).unwrap(), Some(rec));
        assert_eq!(idx.tag(&repo("b", "r"), &t).unwrap(), None);
        // "r" must not see the tags of "r/sub" through a shared prefix.
        idx.set_tag(
            &repo("a", "r/sub"),
            &"2".parse().unwrap(),
            &TagRecord {
                digest: d.clone(),
                media_type: "x".into(),
                fetched_at: 1,
            },
        )
        .unwrap();
        let tags: Vec<_> = idx
            .known_tags(&repo("a", "r"))
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(tags, vec!["1"]);
        idx.link(&repo("a", "r"), &d).unwrap();
        assert!(idx.is_linked(&repo("a", "r"), &d).unwrap());
        assert!(!idx.is_linked(&repo("a", "r/sub"), &d).unwrap());
    }

    #[test]
    fn a_stored_manifest_is_recorded_linked_and_tagged_together() {
        let dir = tempfile::tempdir().unwrap();
        let idx = Index::open(dir.path()).unwrap();
        let (r, d) = (repo("a", "r"), Digest::sha256_of(b"m"));
        let rec = ManifestRecord {
            media_type: "x".into(),
            size: 1,
        };
        let t: Tag = "1".parse().unwrap();
        let tag = TagRecord {
            digest: d.clone(),
            media_type: "x".into(),
            fetched_at: 1,
        };
        idx.manifest_stored_in(&r, &d, &rec, Some((&t, &tag)))
            .unwrap();
        assert_eq!(idx.manifest(&d).unwrap(), Some(rec));
        assert!(idx.is_linked(&r, &d).unwrap());
        assert_eq!(idx.tag(&r, &t).unwrap(), Some(tag));
        idx.blob_stored_in(&r, &Digest::sha256_of(b"b"), 5).unwrap();
        assert!(idx.is_linked(&r, &Digest::sha256_of(b"b")).unwrap());
        assert_eq!(idx.blob(&Digest::sha256_of(b"b")).unwrap().unwrap().size, 5);
    }

    #[test]
    fn a_listed_tag_list_replaces_the_one_before() {
        let dir = tempfile::tempdir().unwrap();
        let idx = Index::open(dir.path()).unwrap();
        let r = repo("a", "r");
        assert_eq!(idx.listed_tags(&r).unwrap(), None);
        let tags = |names: &[&str]| {
            names
                .iter()
                .map(|n| n.parse().unwrap())
                .collect::<Vec<Tag>>()
        };
        idx.set_listed_tags(&r, &tags(&["a", "b"])).unwrap();
        idx.set_listed_tags(&r, &tags(&["c"])).unwrap();
        assert_eq!(idx.listed_tags(&r).unwrap(), Some(tags(&["c"])));
        idx.set_listed_tags(&r, &[]).unwrap();
        assert_eq!(idx.listed_tags(&r).unwrap(), Some(vec![]));
    }
}
