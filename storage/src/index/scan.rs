//! Whole-index reads and targeted removals, for maintenance (fsck, gc, eviction).
//!
//! Scans return every record with its raw key, decoded or not: fsck reports and removes
//! records that do not decode, gc and eviction skip them.

use std::fmt;

use super::{BlobRecord, Index, ManifestRecord, Repo, TagRecord, decode, encode};
use crate::{Digest, RepoName, Result, Tag};

/// Which tree a record is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tree {
    Tags,
    Manifests,
    Links,
    Blobs,
}

impl Tree {
    pub fn name(self) -> &'static str {
        match self {
            Tree::Tags => "tags",
            Tree::Manifests => "manifests",
            Tree::Links => "links",
            Tree::Blobs => "blobs",
        }
    }
}

/// A record's address in the index.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RecordKey {
    pub tree: Tree,
    key: Vec<u8>,
}

impl fmt::Display for RecordKey {
    /// `tags/<upstream>/<repo>/<tag>`: the key's parts joined with `/`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            self.tree.name(),
            String::from_utf8_lossy(&self.key).replace('\0', "/")
        )
    }
}

/// One record from a scan: its key, and its value or why it does not decode.
#[derive(Debug)]
pub struct Scanned<T> {
    pub key: RecordKey,
    pub value: std::result::Result<T, String>,
}

/// A tag record with where it lives.
#[derive(Debug, Clone)]
pub struct TagEntry {
    pub repo: Repo,
    pub tag: Tag,
    pub record: TagRecord,
}

/// `upstream \0 repo \0 last`, split and validated.
fn split_repo_key(key: &[u8]) -> std::result::Result<(Repo, &str), String> {
    let text = std::str::from_utf8(key).map_err(|_| "key is not UTF-8".to_string())?;
    let mut parts = text.splitn(3, '\0');
    let (Some(upstream), Some(name), Some(last)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err("key does not have three parts".into());
    };
    let name: RepoName = name.parse().map_err(|e| format!("{e}"))?;
    Ok((
        Repo {
            upstream: upstream.to_string(),
            name,
        },
        last,
    ))
}

fn parse_digest(text: &[u8]) -> std::result::Result<Digest, String> {
    std::str::from_utf8(text)
        .map_err(|_| "key is not UTF-8".to_string())?
        .parse()
        .map_err(|e| format!("{e}"))
}

impl Index {
    fn tree(&self, t: Tree) -> &sled::Tree {
        match t {
            Tree::Tags => &self.tags,
            Tree::Manifests => &self.manifests,
            Tree::Links => &self.links,
            Tree::Blobs => &self.blobs,
        }
    }

    fn scan<T>(
        &self,
        t: Tree,
        parse: impl Fn(&[u8], &[u8]) -> std::result::Result<T, String>,
    ) -> Result<Vec<Scanned<T>>> {
        let mut out = Vec::new();
        for kv in self.tree(t).iter() {
            let (k, v) = kv?;
            out.push(Scanned {
                value: parse(&k, &v),
                key: RecordKey {
                    tree: t,
                    key: k.to_vec(),
                },
            });
        }
        Ok(out)
    }

    pub fn scan_tags(&self) -> Result<Vec<Scanned<TagEntry>>> {
        self.scan(Tree::Tags, |k, v| {
            let (repo, tag) = split_repo_key(k)?;
            let tag: Tag = tag.parse().map_err(|e| format!("{e}"))?;
            let record: TagRecord = decode(k, v).map_err(|e| e.to_string())?;
            Ok(TagEntry { repo, tag, record })
        })
    }

    pub fn scan_manifests(&self) -> Result<Vec<Scanned<(Digest, ManifestRecord)>>> {
        self.scan(Tree::Manifests, |k, v| {
            Ok((parse_digest(k)?, decode(k, v).map_err(|e| e.to_string())?))
        })
    }

    pub fn scan_blobs(&self) -> Result<Vec<Scanned<(Digest, BlobRecord)>>> {
        self.scan(Tree::Blobs, |k, v| {
            Ok((parse_digest(k)?, decode(k, v).map_err(|e| e.to_string())?))
        })
    }

    pub fn scan_links(&self) -> Result<Vec<Scanned<(Repo, Digest)>>> {
        self.scan(Tree::Links, |k, _| {
            let (repo, d) = split_repo_key(k)?;
            Ok((repo, parse_digest(d.as_bytes())?))
        })
    }

    /// Removes one record, whatever it holds.
    pub fn remove_record(&self, key: &RecordKey) -> Result<()> {
        self.tree(key.tree).remove(&key.key)?;
        Ok(())
    }

    /// Removes a tag only if it still points at `digest`: a tag moved meanwhile to a
    /// new manifest stays. Whether it was removed.
    pub fn remove_tag_if(&self, repo: &Repo, tag: &Tag, digest: &Digest) -> Result<bool> {
        let key = repo.key(tag.as_str());
        let Some(current) = self.tags.get(&key)? else {
            return Ok(false);
        };
        match decode::<TagRecord>(&key, &current) {
            Ok(rec) if rec.digest == *digest => {}
            _ => return Ok(false),
        }
        Ok(self
            .tags
            .compare_and_swap(&key, Some(current), None::<&[u8]>)?
            .is_ok())
    }

    pub fn remove_manifest(&self, d: &Digest) -> Result<()> {
        self.manifests.remove(d.as_str().as_bytes())?;
        Ok(())
    }

    pub fn remove_blob(&self, d: &Digest) -> Result<()> {
        self.blobs.remove(d.as_str().as_bytes())?;
        Ok(())
    }

    pub fn unlink(&self, repo: &Repo, d: &Digest) -> Result<()> {
        self.links.remove(repo.key(d.as_str()))?;
        Ok(())
    }

    /// Writes a blob record used at `at` (seconds), keeping a later time already
    /// recorded. The size is `size` only for a new record: an existing record keeps the
    /// size the blob verified at, the one a damaged file is told apart by.
    ///
    /// One atomic update, so that writers racing (housekeeping and shutdown flushing
    /// at once) cannot move a time backwards. A record that does not decode is
    /// replaced.
    pub fn record_access(&self, d: &Digest, size: u64, at: u64) -> Result<()> {
        self.blobs.update_and_fetch(d.as_str().as_bytes(), |old| {
            let old = old.and_then(|v| serde_json::from_slice::<BlobRecord>(v).ok());
            let rec = match old {
                Some(rec) => BlobRecord {
                    size: rec.size,
                    last_access: rec.last_access.max(at),
                },
                None => BlobRecord {
                    size,
                    last_access: at,
                },
            };
            Some(encode(&rec))
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_decode_keys_and_report_bad_records() {
        let dir = tempfile::tempdir().unwrap();
        let idx = Index::open(dir.path()).unwrap();
        let repo = Repo {
            upstream: "up".into(),
            name: "team/app".parse().unwrap(),
        };
        let d = Digest::sha256_of(b"m");
        let tag: Tag = "v1".parse().unwrap();
        idx.set_tag(
            &repo,
            &tag,
            &TagRecord {
                digest: d.clone(),
                media_type: "x".into(),
                fetched_at: 1,
            },
        )
        .unwrap();
        idx.link(&repo, &d).unwrap();
        idx.blobs.insert(b"sha256:nope", b"{}".to_vec()).unwrap();
        let tags = idx.scan_tags().unwrap();
        assert_eq!(tags.len(), 1);
        let t = tags[0].value.as_ref().unwrap();
        assert_eq!((t.repo.clone(), t.tag.clone()), (repo.clone(), tag.clone()));
        assert_eq!(tags[0].key.to_string(), "tags/up/team/app/v1");
        let links = idx.scan_links().unwrap();
        assert_eq!(links[0].value.as_ref().unwrap(), &(repo.clone(), d.clone()));
        let blobs = idx.scan_blobs().unwrap();
        assert!(blobs[0].value.is_err());
        idx.remove_record(&blobs[0].key).unwrap();
        assert!(idx.scan_blobs().unwrap().is_empty());

        let other = Digest::sha256_of(b"other");
        assert!(!idx.remove_tag_if(&repo, &tag, &other).unwrap());
        assert!(idx.remove_tag_if(&repo, &tag, &d).unwrap());
        assert_eq!(idx.tag(&repo, &tag).unwrap(), None);

        idx.record_access(&d, 5, 100).unwrap();
        idx.record_access(&d, 5, 50).unwrap();
        assert_eq!(idx.blob(&d).unwrap().unwrap().last_access, 100);
    }
}
