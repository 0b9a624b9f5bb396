//! Maintenance of the shared store: its usage, eviction (run by one replica at a time,
//! under the maintenance lease, see [`MetaStore::take_maintenance_lease`]) and a
//! read-only check (`ferry fsck --shared`). Both work while replicas serve and write.
//!
//! # Eviction
//!
//! As the local store's ([`Store::evict`](crate::Store::evict)): the unit is an image
//! (a stored manifest that no other stored manifest contains, or that a tag points at,
//! with its child manifests, configs and layers, and its tags), and a blob no image
//! contains is a unit of its own. A unit was last used when any of its manifests was
//! (the shared blob records' access times, which every replica flushes there, or the
//! object's own time) or a tag of it was fetched; units go least recently used first,
//! and content another unit still contains stays.
//!
//! A unit any of whose content (a layer too) was used, or written, within the grace
//! period is never evicted: another replica may be streaming it right now, and
//! nothing in the shared store says so but the access times it flushes.
//!
//! # Order of deletes: what leads to content first, the bytes next, records last
//!
//! A replica serves from the shared store by a tag record, then a manifest record, then
//! the bytes (a blob: the bytes, then its link): every read looks the bytes up
//! before it uses them. So an image is taken apart from the top: its tags (only those
//! still pointing at it), then each manifest's record, then each object's bytes, then
//! the blob's record, and the repository links last. A pass that stops at any point
//! (a crash, a store that fails) leaves nothing that leads a reader to bytes that are
//! gone: at worst records without objects, which serve nothing (a lookup finds no
//! bytes: a miss, fetched again) and which the next pass drops and `ferry fsck
//! --shared` reports.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use object_store::ObjectStore;
use object_store::path::Path;

use super::{BlobStore, MetaStore, ObjectBackend};
use crate::{Digest, Error, Repo, Result, Tag, TagRecord};

/// How long after its last use (or its upload) content in the shared store is never
/// evicted. A replica reads a blob from the shared store while it streams it to a
/// client, and writes its use there only at its next access-time flush (every minute):
/// ten minutes covers the flush and a long read. Deleting a blob under a reader would
/// cut its client off mid-body.
pub const EVICTION_GRACE: Duration = Duration::from_secs(10 * 60);

/// Records read at once by a pass or a check: a pass reads every blob record of the
/// store, which one at a time would take minutes on a large one.
const READS_IN_FLIGHT: usize = 16;

/// How long an object may go without its record before the check reports it: a
/// replica writes the record right after the object it copied.
const RECORD_LAG: Duration = Duration::from_secs(60);

/// What the shared store holds under `blobs/`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SharedUsage {
    pub blobs: usize,
    pub bytes: u64,
}

/// Whether an image (its top manifest, its tags) must stay: `[[pin]]` images.
pub type Pinned<'a> = dyn Fn(&Digest, &[(Repo, Tag)]) -> bool + Sync + 'a;

/// What a shared eviction pass did.
#[derive(Debug, Default)]
pub struct SharedEvictReport {
    /// Bytes under `blobs/` when the pass started.
    pub used_before: u64,
    /// Bytes it set out to free.
    pub goal: u64,
    pub freed: u64,
    /// The units evicted (a top manifest, or a lone blob), least recently used first.
    pub evicted: Vec<Digest>,
    pub blobs_deleted: usize,
    /// Units left because some of their content was used within the grace period.
    pub kept_recent: usize,
    /// Units left because the `pinned` hook kept them.
    pub pinned: usize,
    /// Records without objects (a pass or a writer that stopped half way) dropped.
    pub stale_records: usize,
}

impl SharedEvictReport {
    /// Whether the pass freed what it set out to.
    pub fn reached_goal(&self) -> bool {
        self.freed >= self.goal
    }
}

/// An object under `blobs/`.
struct Stored {
    size: u64,
    /// When it was written, milliseconds since the epoch.
    modified_ms: u64,
}

/// A tag record found under `meta/repos/`.
struct TagAt {
    path: Path,
    record: TagRecord,
    /// The repository and tag its path names (`None`: a name this cannot read back).
    named: Option<(Repo, Tag)>,
}

struct Unit {
    root: Digest,
    tags: Vec<(Path, Option<(Repo, Tag)>)>,
    /// The root first, then what it contains that is stored, each once.
    members: Vec<Digest>,
    last_used_ms: u64,
    recent: bool,
}

impl ObjectBackend {
    /// `path` as a digest, if it is `<dir>/<alg>/<hex>`.
    fn digest_at(dir: &Path, path: &Path) -> Option<Digest> {
        let parts: Vec<_> = path.prefix_match(dir)?.collect();
        match parts.as_slice() {
            [alg, hex] => format!("{}:{}", alg.as_ref(), hex.as_ref()).parse().ok(),
            _ => None,
        }
    }

    /// Every object under `blobs/`.
    async fn stored(&self) -> Result<BTreeMap<Digest, Stored>> {
        let dir = self.blobs_dir();
        let mut out = BTreeMap::new();
        let listed: Vec<_> = self.store.list(Some(&dir)).try_collect().await?;
        for meta in listed {
            if let Some(d) = Self::digest_at(&dir, &meta.location) {
                let modified_ms = meta.last_modified.timestamp_millis().max(0) as u64;
                out.insert(
                    d,
                    Stored {
                        size: meta.size,
                        modified_ms,
                    },
                );
            }
        }
        Ok(out)
    }

    /// The digests with a record under `meta/<kind>/`.
    async fn recorded(&self, kind: &'static str) -> Result<Vec<Digest>> {
        let dir = self.path(["meta", kind].map(object_store::path::PathPart::from));
        Ok(self
            .names_under(&dir)
            .await?
            .iter()
            .filter_map(|p| Self::digest_at(&dir, p))
            .collect())
    }

    /// The repository and tag of a tag record at `path`, under `meta/repos` (`dir`):
    /// `<upstream>/<name>/_tags/<tag>`.
    fn tag_named(dir: &Path, path: &Path) -> Option<(Repo, Tag)> {
        let parts: Vec<_> = path.prefix_match(dir)?.collect();
        let [upstream, name @ .., marker, tag] = parts.as_slice() else {
            return None;
        };
        if marker.as_ref() != "_tags" || name.is_empty() {
            return None;
        }
        let name: Vec<&str> = name.iter().map(|p| p.as_ref()).collect();
        let repo = Repo {
            upstream: upstream.as_ref().to_owned(),
            name: name.join("/").parse().ok()?,
        };
        Some((repo, tag.as_ref().parse().ok()?))
    }

    /// Every tag record and every repository link (path, digest).
    async fn tags_and_links(&self) -> Result<(Vec<TagAt>, Vec<(Path, Digest)>)> {
        let dir = self.path(["meta", "repos"].map(object_store::path::PathPart::from));
        let (mut tag_paths, mut links) = (Vec::new(), Vec::new());
        for path in self.names_under(&dir).await? {
            let parts: Vec<_> = path.parts().collect();
            let n = parts.len();
            if n >= 2 && parts[n - 2].as_ref() == "_tags" {
                tag_paths.push(path);
            } else if n >= 3
                && parts[n - 3].as_ref() == "_links"
                && let Ok(d) =
                    format!("{}:{}", parts[n - 2].as_ref(), parts[n - 1].as_ref()).parse()
            {
                links.push((path, d));
            }
        }
        let dir = &dir;
        let tags = futures_util::stream::iter(tag_paths)
            .map(|path| async move {
                // A record that went away or does not parse leads nowhere: skipped.
                match self.get_json::<TagRecord>(&path).await {
                    Ok(Some((record, _))) => {
                        let named = Self::tag_named(dir, &path);
                        Some(TagAt {
                            path,
                            record,
                            named,
                        })
                    }
                    _ => None,
                }
            })
            .buffer_unordered(READS_IN_FLIGHT)
            .filter_map(|t| async move { t })
            .collect()
            .await;
        Ok((tags, links))
    }

    /// The bytes under `blobs/`: what `[storage] max_size` bounds.
    pub async fn usage(&self) -> Result<SharedUsage> {
        let stored = self.stored().await?;
        Ok(SharedUsage {
            blobs: stored.len(),
            bytes: stored.values().map(|s| s.size).sum(),
        })
    }

    /// One eviction pass (see the module doc). `goal` gets the bytes stored and says
    /// how many to free; content used or written since `now_ms - grace` stays, and so
    /// does an image `pinned` says is (given its digest and tags: `[[pin]]` images).
    /// Run it only under the maintenance lease: two passes at once would each count
    /// the other's deletes as their own progress.
    pub async fn evict_shared(
        &self,
        goal: impl FnOnce(u64) -> u64,
        pinned: &Pinned<'_>,
        grace: Duration,
        now_ms: u64,
    ) -> Result<SharedEvictReport> {
        let stored = self.stored().await?;
        let used = stored.values().map(|s| s.size).sum();
        let mut report = SharedEvictReport {
            used_before: used,
            goal: goal(used),
            ..SharedEvictReport::default()
        };
        if report.goal == 0 {
            return Ok(report);
        }
        let recent_since = now_ms.saturating_sub(grace.as_millis() as u64);
        // Last access by the records replicas flushed, in milliseconds.
        let mut access: HashMap<Digest, u64> = HashMap::new();
        let records = futures_util::stream::iter(self.recorded("blobs").await?)
            .map(|d| async move { (self.blob_record(&d).await, d) })
            .buffer_unordered(READS_IN_FLIGHT)
            .collect::<Vec<_>>()
            .await;
        for (rec, d) in records {
            match rec {
                Ok(Some(r)) => {
                    access.insert(d, r.last_access.saturating_mul(1000));
                }
                Ok(None) | Err(Error::CorruptRecord { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let last_used = |d: &Digest| {
            let written = stored.get(d).map_or(0, |s| s.modified_ms);
            access.get(d).copied().unwrap_or(0).max(written)
        };
        let manifest_records: HashSet<Digest> =
            self.recorded("manifests").await?.into_iter().collect();
        let (tags, links) = self.tags_and_links().await?;
        let mut tags_of: HashMap<&Digest, Vec<&TagAt>> = HashMap::new();
        for t in &tags {
            tags_of.entry(&t.record.digest).or_default().push(t);
        }
        // What each stored manifest contains.
        // Owned (not borrowed from the maps): the stream lives across awaits.
        let manifests: Vec<(Digest, u64)> = stored
            .iter()
            .filter(|(d, s)| {
                (manifest_records.contains(*d) || tags_of.contains_key(*d))
                    && s.size <= ferry_oci::manifest::MAX_MANIFEST_SIZE as u64
            })
            .map(|(d, s)| (d.clone(), s.size))
            .collect();
        let read = futures_util::stream::iter(manifests)
            .map(|(d, size)| async move {
                let Some(body) = self.read_range(&d, 0, size).await? else {
                    return Ok(None);
                };
                let chunks: Vec<bytes::Bytes> = body.try_collect().await?;
                let parsed = ferry_oci::refs::Refs::parse(&chunks.concat()).ok();
                Ok::<_, Error>(parsed.map(|r| (d, r)))
            })
            .buffer_unordered(READS_IN_FLIGHT)
            .try_collect::<Vec<_>>()
            .await?;
        let refs: HashMap<Digest, ferry_oci::refs::Refs> = read.into_iter().flatten().collect();
        let children: HashSet<&Digest> = refs.values().flat_map(|r| &r.manifests).collect();
        let mut units = Vec::new();
        let mut contained = HashSet::new();
        for root in refs
            .keys()
            .filter(|d| !children.contains(d) || tags_of.contains_key(d))
        {
            let mut members = vec![root.clone()];
            let mut seen = HashSet::from([root]);
            let (mut last, mut recent) = (0, false);
            let mut i = 0;
            while i < members.len() {
                let d = members[i].clone();
                i += 1;
                // Layers do not make an image used (a shared base layer would keep
                // every image fresh), but one being read keeps its image.
                recent |= last_used(&d) >= recent_since;
                let Some(r) = refs.get(&d) else { continue };
                last = last.max(last_used(&d));
                for c in r.contents() {
                    if stored.contains_key(c) && seen.insert(c) {
                        members.push(c.clone());
                    }
                }
            }
            let root_tags = tags_of.get(root).cloned().unwrap_or_default();
            for t in &root_tags {
                last = last.max(t.record.fetched_at.saturating_mul(1000));
            }
            recent |= last >= recent_since;
            contained.extend(members.iter().cloned());
            units.push(Unit {
                root: root.clone(),
                tags: root_tags
                    .iter()
                    .map(|t| (t.path.clone(), t.named.clone()))
                    .collect(),
                members,
                last_used_ms: last,
                recent,
            });
        }
        for d in stored.keys().filter(|d| !contained.contains(*d)) {
            let last = last_used(d);
            units.push(Unit {
                root: d.clone(),
                tags: Vec::new(),
                members: vec![d.clone()],
                last_used_ms: last,
                recent: last >= recent_since,
            });
        }
        units.sort_by(|a, b| (a.last_used_ms, &a.root).cmp(&(b.last_used_ms, &b.root)));
        let mut holders: HashMap<Digest, usize> = HashMap::new();
        for u in &units {
            for m in &u.members {
                *holders.entry(m.clone()).or_default() += 1;
            }
        }
        let mut deleted = HashSet::new();
        for u in units {
            if report.freed >= report.goal {
                break;
            }
            if u.recent {
                report.kept_recent += 1;
                continue;
            }
            let named: Vec<(Repo, Tag)> = u.tags.iter().filter_map(|(_, n)| n.clone()).collect();
            if pinned(&u.root, &named) {
                report.pinned += 1;
                continue;
            }
            for (path, _) in &u.tags {
                // Only if it still points here: a replica may have moved it since.
                if let Some((rec, _)) = self.get_json::<TagRecord>(path).await?
                    && rec.digest == u.root
                {
                    self.remove(path).await?;
                }
            }
            for m in &u.members {
                let n = holders.get_mut(m).expect("every member is counted");
                *n -= 1;
                if *n > 0 {
                    continue;
                }
                if manifest_records.contains(m) {
                    self.remove(&self.record_path("manifests", m)).await?;
                }
                if self.delete(m).await? {
                    report.freed += stored.get(m).map_or(0, |s| s.size);
                    report.blobs_deleted += 1;
                }
                self.remove(&self.record_path("blobs", m)).await?;
                deleted.insert(m.clone());
            }
            tracing::debug!(digest = %u.root, last_used_ms = u.last_used_ms, "evicted from the shared store");
            report.evicted.push(u.root);
        }
        for (path, d) in &links {
            if deleted.contains(d) {
                self.remove(path).await?;
            }
        }
        // Records a stopped pass left behind (their objects gone, unused since).
        for (d, at) in &access {
            if !stored.contains_key(d) && !deleted.contains(d) && *at < recent_since {
                self.remove(&self.record_path("blobs", d)).await?;
                report.stale_records += 1;
            }
        }
        Ok(report)
    }

    /// Checks every object under `blobs/` against its record (size), and with `rehash`
    /// against its digest (every byte read), and finds records without objects and
    /// objects without records. Reads only: safe while replicas run (what they delete
    /// or write meanwhile is counted as such, not as damage).
    pub async fn fsck_shared(&self, rehash: bool, now_ms: u64) -> Result<SharedFsckReport> {
        let stored = self.stored().await?;
        let blob_records = self.recorded("blobs").await?;
        let manifest_records = self.recorded("manifests").await?;
        let mut report = SharedFsckReport {
            rehashed: rehash,
            ..SharedFsckReport::default()
        };
        let mut recorded_size: HashMap<Digest, u64> = HashMap::new();
        for d in &manifest_records {
            if let Some(r) = self.manifest(d).await? {
                recorded_size.insert(d.clone(), r.size);
            }
        }
        for d in &blob_records {
            match self.blob_record(d).await {
                Ok(Some(r)) => {
                    recorded_size.entry(d.clone()).or_insert(r.size);
                }
                Ok(None) => {}
                Err(Error::CorruptRecord { .. }) => report.corrupt_records.push(d.clone()),
                Err(e) => return Err(e),
            }
        }
        let lag_since = now_ms.saturating_sub(RECORD_LAG.as_millis() as u64);
        for (d, s) in &stored {
            report.blobs += 1;
            report.bytes += s.size;
            match recorded_size.get(d) {
                Some(&recorded) if recorded != s.size => {
                    report.size_mismatches.push((d.clone(), recorded, s.size))
                }
                Some(_) => {}
                None if s.modified_ms < lag_since => report.unrecorded_objects.push(d.clone()),
                None => {}
            }
            if rehash {
                match self.hash_of(d, s.size).await? {
                    Some(actual) if actual != *d => report.digest_mismatches.push(d.clone()),
                    Some(_) => {}
                    None => report.gone_during_check += 1,
                }
            }
        }
        for d in recorded_size.keys() {
            // Looked up again: an eviction may have removed both since the listing.
            if !stored.contains_key(d) && self.stat(d).await?.is_none() {
                let still = self.manifest(d).await?.is_some()
                    || self.blob_record(d).await.ok().flatten().is_some();
                if still {
                    report.records_without_objects.push(d.clone());
                }
            }
        }
        report.records_without_objects.sort();
        Ok(report)
    }

    /// The digest of object `d`'s bytes (`size` of them), `None` if it went away.
    async fn hash_of(&self, d: &Digest, size: u64) -> Result<Option<Digest>> {
        let mut hasher = d.algorithm().hasher();
        let body = match self.read_range(d, 0, size).await {
            Ok(Some(body)) => body,
            // Gone, or shorter than listed (replaced since): not this check's finding.
            Ok(None) | Err(Error::RangeOutsideBlob { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut body = body;
        while let Some(chunk) = body.try_next().await? {
            hasher.update(&chunk);
        }
        Ok(Some(hasher.finish()))
    }
}

/// What `ferry fsck --shared` found.
#[derive(Debug, Default)]
pub struct SharedFsckReport {
    pub blobs: usize,
    pub bytes: u64,
    /// Whether every object was read and hashed (else sizes only).
    pub rehashed: bool,
    /// (digest, recorded size, object size).
    pub size_mismatches: Vec<(Digest, u64, u64)>,
    /// Objects whose bytes do not hash to their name.
    pub digest_mismatches: Vec<Digest>,
    /// Blob or manifest records whose object is missing.
    pub records_without_objects: Vec<Digest>,
    /// Objects with neither a blob nor a manifest record (older than a minute).
    pub unrecorded_objects: Vec<Digest>,
    pub corrupt_records: Vec<Digest>,
    /// Objects deleted while the check read them (eviction): not a problem.
    pub gone_during_check: usize,
}

impl SharedFsckReport {
    pub fn problems(&self) -> usize {
        self.size_mismatches.len()
            + self.digest_mismatches.len()
            + self.records_without_objects.len()
            + self.unrecorded_objects.len()
            + self.corrupt_records.len()
    }

    pub fn is_clean(&self) -> bool {
        self.problems() == 0
    }
}

impl fmt::Display for SharedFsckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "checked {} blobs ({} bytes) in the shared store, {}: {} problem(s)",
            self.blobs,
            self.bytes,
            if self.rehashed {
                "every byte re-hashed"
            } else {
                "sizes only"
            },
            self.problems()
        )?;
        let mut section = |title: &str, items: Vec<String>| -> fmt::Result {
            if items.is_empty() {
                return Ok(());
            }
            writeln!(f, "  {title}: {}", items.len())?;
            for i in items {
                writeln!(f, "    {i}")?;
            }
            Ok(())
        };
        let strings = |v: &[Digest]| v.iter().map(|d| d.to_string()).collect::<Vec<_>>();
        section(
            "size differs from its record",
            self.size_mismatches
                .iter()
                .map(|(d, rec, got)| format!("{d}: recorded {rec}, stored {got}"))
                .collect(),
        )?;
        section(
            "bytes do not match the digest",
            strings(&self.digest_mismatches),
        )?;
        section(
            "records without objects",
            strings(&self.records_without_objects),
        )?;
        section("objects without records", strings(&self.unrecorded_objects))?;
        section("unreadable records", strings(&self.corrupt_records))?;
        if self.gone_during_check > 0 {
            writeln!(
                f,
                "  deleted while checked (eviction by a replica): {}",
                self.gone_during_check
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use object_store::ObjectStoreExt;

    use super::super::super::emulators::{Azurite, AzuriteStore, Moto, MotoStore};
    use super::super::super::put_blob;
    use super::*;
    use crate::{ManifestRecord, Repo, Tag, now_millis};

    const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

    fn azurite() -> (Azurite, ObjectBackend) {
        let azurite = Azurite::start();
        azurite.create_container("ferry");
        let store = azurite.store("ferry").build().unwrap();
        (azurite, ObjectBackend::new(store, "prod/").unwrap())
    }

    fn moto() -> (Moto, ObjectBackend) {
        let moto = Moto::start();
        moto.create_bucket("ferry");
        let store = moto.store("ferry").build().unwrap();
        (moto, ObjectBackend::new(store, "prod/").unwrap())
    }

    /// Each case against Azurite and moto.
    macro_rules! on_both {
        ($($case:ident),*) => {
            mod on_azurite {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $case() {
                        let (_keep, b) = super::azurite();
                        super::$case(&b).await;
                    }
                )*
            }
            mod on_moto {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $case() {
                        let (_keep, b) = super::moto();
                        super::$case(&b).await;
                    }
                )*
            }
        };
    }

    on_both!(
        eviction_takes_least_recently_used_images_and_spares_recent_and_shared_content,
        the_check_finds_missing_corrupted_and_resized_objects
    );

    fn repo() -> Repo {
        Repo {
            upstream: "docker.io".into(),
            name: "team/app".parse().unwrap(),
        }
    }

    async fn blob(b: &ObjectBackend, bytes: &[u8]) -> (Digest, u64) {
        let d = Digest::sha256_of(bytes);
        put_blob(b, &d, Bytes::copy_from_slice(bytes))
            .await
            .unwrap();
        b.blob_stored_in(&repo(), &d, bytes.len() as u64)
            .await
            .unwrap();
        (d, bytes.len() as u64)
    }

    /// An image as a replica shares it: blobs, the manifest (bytes, record, link), a tag.
    async fn image(b: &ObjectBackend, tag: &str, blobs: &[(Digest, u64)]) -> Digest {
        let desc = |(d, n): &(Digest, u64)| {
            format!(r#"{{"mediaType":"application/octet-stream","digest":"{d}","size":{n}}}"#)
        };
        let layers: Vec<String> = blobs[1..].iter().map(desc).collect();
        let json = format!(
            r#"{{"schemaVersion":2,"mediaType":"{MANIFEST}","config":{},"layers":[{}]}}"#,
            desc(&blobs[0]),
            layers.join(",")
        );
        let d = Digest::sha256_of(json.as_bytes());
        put_blob(b, &d, Bytes::from(json.clone())).await.unwrap();
        let rec = ManifestRecord {
            media_type: MANIFEST.into(),
            size: json.len() as u64,
        };
        b.put_manifest(&d, &rec).await.unwrap();
        b.link(&repo(), &d).await.unwrap();
        let tag: Tag = tag.parse().unwrap();
        let rec = TagRecord {
            digest: d.clone(),
            media_type: MANIFEST.into(),
            fetched_at: 0,
        };
        let _ = b.swap_tag(&repo(), &tag, None, &rec).await.unwrap();
        d
    }

    /// Least recently used images go first, as units; a layer another image holds
    /// stays; an image used within the grace period stays, whatever the quota says;
    /// what is evicted leaves no tag, record or link behind.
    async fn eviction_takes_least_recently_used_images_and_spares_recent_and_shared_content(
        b: &ObjectBackend,
    ) {
        let base = blob(b, &[1u8; 3000]).await;
        let (ca, la) = (blob(b, b"config a").await, blob(b, &[2u8; 2000]).await);
        let (cb, lb) = (blob(b, b"config b").await, blob(b, &[3u8; 2000]).await);
        let a = image(b, "a", &[ca.clone(), base.clone(), la.clone()]).await;
        let bm = image(b, "b", &[cb.clone(), base.clone(), lb.clone()]).await;
        // As seen an hour from now: everything was written long ago. Image a was
        // last pulled 30 minutes before, b 20.
        let now = now_millis() + 3600 * 1000;
        let secs = |ago_min: u64| (now - ago_min * 60 * 1000) / 1000;
        b.record_access(&a, 0, secs(30)).await.unwrap();
        b.record_access(&bm, 0, secs(20)).await.unwrap();
        let before = b.usage().await.unwrap();
        assert_eq!(before.blobs, 7);

        let r = b
            .evict_shared(|_| 1, &|_, _| false, EVICTION_GRACE, now)
            .await
            .unwrap();
        assert_eq!(r.evicted, vec![a.clone()]);
        assert_eq!(r.blobs_deleted, 3, "a's manifest, config and own layer");
        for gone in [&a, &ca.0, &la.0] {
            assert_eq!(b.stat(gone).await.unwrap(), None, "{gone} still stored");
            assert_eq!(b.blob_record(gone).await.unwrap(), None);
            assert!(!b.is_linked(&repo(), gone).await.unwrap());
        }
        assert_eq!(b.manifest(&a).await.unwrap(), None);
        assert!(
            b.tag(&repo(), &"a".parse().unwrap())
                .await
                .unwrap()
                .is_none()
        );
        for kept in [&bm, &cb.0, &lb.0, &base.0] {
            assert!(b.stat(kept).await.unwrap().is_some(), "{kept} evicted");
        }
        assert!(
            b.tag(&repo(), &"b".parse().unwrap())
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(
            b.usage().await.unwrap().bytes,
            before.bytes - r.freed,
            "freed what it says"
        );

        // Image b's layer was read a minute ago (by a replica streaming it): the whole
        // image stays, though the quota wants everything gone.
        b.record_access(&lb.0, 0, secs(1)).await.unwrap();
        let r = b
            .evict_shared(|used| used, &|_, _| false, EVICTION_GRACE, now)
            .await
            .unwrap();
        assert_eq!((r.evicted.len(), r.kept_recent, r.freed), (0, 1, 0));
        assert!(!r.reached_goal());
        assert_eq!(b.usage().await.unwrap().blobs, 4);
        // Past the grace period, it goes too, unless pinned (by its tag: the hook is
        // given the repository and tag the record's path names).
        let later = now + EVICTION_GRACE.as_millis() as u64;
        let pin = |_: &Digest, tags: &[(Repo, Tag)]| {
            tags.iter().any(|(r, t)| *r == repo() && t.as_str() == "b")
        };
        let r = b
            .evict_shared(|used| used, &pin, EVICTION_GRACE, later)
            .await
            .unwrap();
        assert_eq!((r.evicted.len(), r.pinned, r.freed), (0, 1, 0));
        let r = b
            .evict_shared(|used| used, &|_, _| false, EVICTION_GRACE, later)
            .await
            .unwrap();
        assert_eq!(r.evicted, vec![bm.clone()]);
        assert!(r.reached_goal());
        assert_eq!(b.usage().await.unwrap(), SharedUsage::default());
        let fsck = b.fsck_shared(true, later).await.unwrap();
        assert!(fsck.is_clean(), "{fsck}");
    }

    /// The check reads a clean store as clean, then finds a deleted object, bytes that
    /// do not match their digest (same size: only re-hashing sees it) and an object
    /// of another size than its record.
    async fn the_check_finds_missing_corrupted_and_resized_objects(b: &ObjectBackend) {
        let (x, y, z) = (
            blob(b, &[4u8; 5000]).await,
            blob(b, &[5u8; 5000]).await,
            blob(b, &[6u8; 5000]).await,
        );
        let m = image(b, "v1", &[x.clone(), y.clone()]).await;
        let now = now_millis();
        let clean = b.fsck_shared(true, now).await.unwrap();
        assert!(clean.is_clean(), "{clean}");
        assert_eq!(clean.blobs, 4);

        b.store().delete(&b.blob_path(&x.0)).await.unwrap();
        b.store()
            .put(&b.blob_path(&y.0), Bytes::from(vec![9u8; 5000]).into())
            .await
            .unwrap();
        b.store()
            .put(&b.blob_path(&z.0), Bytes::from(vec![6u8; 10]).into())
            .await
            .unwrap();
        let sizes = b.fsck_shared(false, now).await.unwrap();
        assert_eq!(sizes.records_without_objects, vec![x.0.clone()], "{sizes}");
        assert_eq!(sizes.size_mismatches, vec![(z.0.clone(), 5000, 10)]);
        assert!(sizes.digest_mismatches.is_empty(), "sizes only: {sizes}");
        let full = b.fsck_shared(true, now).await.unwrap();
        assert_eq!(full.digest_mismatches.len(), 2, "{full}");
        assert!(full.digest_mismatches.contains(&y.0));
        assert!(full.digest_mismatches.contains(&z.0));
        assert_eq!(full.problems(), 4, "{full}");
        let shown = full.to_string();
        assert!(
            shown.contains(&y.0.to_string()) && shown.contains("4 problem(s)"),
            "{shown}"
        );
        let _ = m;
    }
}
