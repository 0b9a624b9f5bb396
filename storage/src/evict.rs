//! Eviction: making room by dropping the least recently used images.
//!
//! The unit is an **image**: a stored manifest that is not a child of another stored
//! manifest (a tagged manifest, an index, or one pulled by digest alone), together with
//! its child manifests (for an index), their configs and layers, and every tag pointing
//! at it. A blob that no image contains (fetched by digest alone, or left behind) is a
//! unit of its own. A unit was last used when any of its manifests was (or, for a lone
//! blob, when it was), as [`AccessTimes`](crate::AccessTimes), the index and file times
//! say; a tag's revalidation counts too. Layers do not count: a base layer shared by
//! fifty images would otherwise keep all fifty fresh.
//!
//! An image some request is pulling right now (a lease on any of its content, stored
//! or still downloading) goes last: evicting it would free little and waste the pull.
//!
//! Units go oldest first. Evicting one removes its tags and deletes the content that no
//! surviving unit contains, so a layer shared with another image stays while that image
//! does. Never deleted: content of a unit the `pinned` hook keeps, and blobs a request
//! holds a [`Lease`](crate::Lease) on (left as lone blobs, for a later pass). Subjects
//! are not part of an image: an artifact and the image it refers to go separately.
//!
//! Removing records before files, and tags only if they still point where they did,
//! keeps a pull that races a pass correct: it finds a miss and fetches again.

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::snapshot::Snapshot;
use crate::{Digest, Repo, Result, Store, Tag};

/// A unit of eviction, as the `pinned` hook sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The top manifest, or the lone blob.
    pub digest: Digest,
    /// Tags pointing at it.
    pub tags: Vec<(Repo, Tag)>,
    /// `false` for a lone blob.
    pub is_manifest: bool,
    /// Milliseconds since the epoch; `u64::MAX` while a request is pulling it.
    pub last_used_ms: u64,
}

/// What an eviction pass did.
#[derive(Debug, Default)]
pub struct EvictReport {
    /// Bytes under `blobs/` when the pass started.
    pub used_before: u64,
    /// Bytes it set out to free.
    pub goal: u64,
    pub freed: u64,
    /// Units evicted, oldest first.
    pub evicted: Vec<Image>,
    pub blobs_deleted: usize,
    /// Blobs left because a request was using them.
    pub kept_in_use: usize,
    /// Units skipped because the hook pinned them.
    pub pinned: usize,
}

impl EvictReport {
    /// Whether the pass freed what it set out to.
    pub fn reached_goal(&self) -> bool {
        self.freed >= self.goal
    }
}

/// The last-use time of an image being pulled: later than any other.
const IN_USE: u64 = u64::MAX;

struct Unit {
    image: Image,
    /// The top manifest first, then what it contains, each once.
    members: Vec<Digest>,
}

impl Store {
    /// One eviction pass. `goal` gets the bytes stored (a fresh count, which also
    /// corrects [`Usage`](crate::Usage)) and says how many to free; `pinned` is asked
    /// before each unit is evicted.
    pub fn evict(
        &self,
        goal: impl FnOnce(u64) -> u64,
        pinned: &dyn Fn(&Image) -> bool,
    ) -> Result<EvictReport> {
        let raw_before = self.blobs.usage().raw();
        let snap = Snapshot::take(self)?;
        let used = snap.bytes();
        self.blobs
            .usage()
            .rebase(raw_before, used, snap.files.len());
        let mut report = EvictReport {
            used_before: used,
            goal: goal(used),
            ..EvictReport::default()
        };
        if report.goal == 0 {
            return Ok(report);
        }
        let mut units = units(self, &snap);
        units.sort_by(|a, b| {
            (a.image.last_used_ms, &a.image.digest).cmp(&(b.image.last_used_ms, &b.image.digest))
        });
        let mut holders: HashMap<Digest, usize> = HashMap::new();
        for u in &units {
            for m in &u.members {
                *holders.entry(m.clone()).or_default() += 1;
            }
        }
        let manifests = snap.manifest_records();
        let mut deleted = HashSet::new();
        for u in units {
            if report.freed >= report.goal {
                break;
            }
            if pinned(&u.image) {
                report.pinned += 1;
                continue;
            }
            for (repo, tag) in &u.image.tags {
                self.index.remove_tag_if(repo, tag, &u.image.digest)?;
            }
            for m in &u.members {
                let n = holders.get_mut(m).expect("every member is counted");
                *n -= 1;
                if *n > 0 {
                    continue;
                }
                if manifests.contains_key(m) {
                    self.index.remove_manifest(m)?;
                }
                match self.blobs.delete_unless_leased(m)? {
                    Some(size) => {
                        self.index.remove_blob(m)?;
                        report.freed += size;
                        report.blobs_deleted += 1;
                        deleted.insert(m.clone());
                    }
                    None => report.kept_in_use += 1,
                }
            }
            tracing::debug!(digest = %u.image.digest, tags = u.image.tags.len(), last_used_ms = u.image.last_used_ms, "evicted");
            report.evicted.push(u.image);
        }
        for s in &snap.links {
            if let Ok((_, d)) = &s.value
                && deleted.contains(d)
            {
                self.index.remove_record(&s.key)?;
            }
        }
        self.index.flush()?;
        Ok(report)
    }
}

/// Every unit in the snapshot: images, then lone blobs.
fn units(store: &Store, snap: &Snapshot) -> Vec<Unit> {
    let records = snap.manifest_records();
    let mut tags: HashMap<&Digest, Vec<&crate::index::TagEntry>> = HashMap::new();
    for t in snap.tag_entries() {
        tags.entry(&t.record.digest).or_default().push(t);
    }
    // Stored manifests: a file, and a record or a tag saying it is a manifest.
    let stored: BTreeSet<&Digest> = snap
        .files
        .keys()
        .filter(|d| records.contains_key(d) || tags.contains_key(d))
        .collect();
    let children: HashSet<&Digest> = stored
        .iter()
        .filter_map(|d| snap.refs.get(*d))
        .flat_map(|r| &r.manifests)
        .collect();
    let mut out = Vec::new();
    let mut contained = HashSet::new();
    for root in stored
        .iter()
        .filter(|d| !children.contains(*d) || tags.contains_key(*d))
    {
        let mut members = vec![(*root).clone()];
        let mut seen: HashSet<&Digest> = HashSet::from([*root]);
        let mut last_used = 0;
        let mut i = 0;
        while i < members.len() {
            let d = members[i].clone();
            i += 1;
            if stored.contains(&d) {
                last_used = last_used.max(snap.last_used_ms(store, &d));
            }
            let Some(refs) = snap.refs.get(&d) else {
                continue;
            };
            for c in refs.contents() {
                // A lease, even on content not stored yet, is a pull of this image
                // in progress.
                if store.blobs.is_leased(c) {
                    last_used = IN_USE;
                }
                if snap.files.contains_key(c) && seen.insert(c) {
                    members.push(c.clone());
                }
            }
        }
        let root_tags: Vec<(Repo, Tag)> = tags
            .get(*root)
            .map(|ts| ts.iter().map(|t| (t.repo.clone(), t.tag.clone())).collect())
            .unwrap_or_default();
        for t in tags.get(*root).into_iter().flatten() {
            last_used = last_used.max(t.record.fetched_at.saturating_mul(1000));
        }
        contained.extend(members.iter().cloned());
        out.push(Unit {
            image: Image {
                digest: (*root).clone(),
                tags: root_tags,
                is_manifest: true,
                last_used_ms: last_used,
            },
            members,
        });
    }
    for d in snap.files.keys().filter(|d| !contained.contains(*d)) {
        out.push(Unit {
            image: Image {
                digest: d.clone(),
                tags: Vec::new(),
                is_manifest: false,
                last_used_ms: snap.last_used_ms(store, d),
            },
            members: vec![d.clone()],
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access_times::now_millis;
    use crate::testutil::*;

    const MIB: usize = 1 << 20;

    /// Makes `d` look used `n` seconds from now, so test order beats file times.
    fn used(store: &Store, d: &Digest, n: u64) {
        store
            .blobs
            .access_times()
            .touch_at(d, now_millis() + n * 1000);
    }

    fn stored(store: &Store, d: &Digest) -> bool {
        store.layout().blob(d).exists()
    }

    fn nothing_pinned(_: &Image) -> bool {
        false
    }

    /// Three images, A (oldest) B C (newest), A and B sharing a base layer.
    struct Three {
        base: Digest,
        a: (Digest, Digest, Digest),
        b: (Digest, Digest, Digest),
        c: (Digest, Digest, Digest),
    }

    fn three(store: &Store) -> Three {
        let r = repo("team/app");
        let base = put_blob(store, &r, &vec![0u8; MIB]);
        let a = image(store, &r, Some("a"), 1, MIB, &[(&base, MIB)]);
        let b = image(store, &r, Some("b"), 2, MIB, &[(&base, MIB)]);
        let c = image(store, &r, Some("c"), 3, MIB, &[]);
        used(store, &a.0, 10);
        used(store, &b.0, 20);
        used(store, &c.0, 30);
        // A layer read recently does not make its image recent.
        used(store, &a.2, 40);
        Three { base, a, b, c }
    }

    #[test]
    fn least_recently_used_image_goes_first_and_shared_layers_stay() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let t = three(&store);
        let report = store.evict(|_| 1, &nothing_pinned).unwrap();
        assert_eq!(report.evicted.len(), 1);
        assert_eq!(report.evicted[0].digest, t.a.0);
        assert_eq!(report.evicted[0].tags.len(), 1);
        let (m, c, l) = &t.a;
        assert!(!stored(&store, m) && !stored(&store, c) && !stored(&store, l));
        assert!(stored(&store, &t.base), "B still uses the base layer");
        assert_eq!(
            store
                .index
                .tag(&repo("team/app"), &"a".parse().unwrap())
                .unwrap(),
            None
        );
        assert_eq!(store.index.manifest(m).unwrap(), None);
        assert_eq!(store.index.blob(l).unwrap(), None);
        assert!(!store.index.is_linked(&repo("team/app"), l).unwrap());
        assert_eq!(report.blobs_deleted, 3);
        assert!(report.reached_goal());

        // Next, B: now the base layer goes with it.
        let report = store.evict(|_| 1, &nothing_pinned).unwrap();
        assert_eq!(report.evicted[0].digest, t.b.0);
        assert!(!stored(&store, &t.base));
        assert!(stored(&store, &t.c.2));
        assert_eq!(
            store.blobs.usage().bytes(),
            report.used_before - report.freed
        );
    }

    #[test]
    fn goal_is_met_oldest_first_and_pinned_images_stay() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let t = three(&store);
        let pin_a = |i: &Image| i.tags.iter().any(|(_, tag)| tag.as_str() == "a");
        // Two images' worth: A is pinned, so B and C go; A keeps the base layer.
        let report = store
            .evict(|used| used - (MIB as u64 * 2 + 1000), &pin_a)
            .unwrap();
        assert_eq!(report.pinned, 1);
        let evicted: Vec<_> = report.evicted.iter().map(|i| &i.digest).collect();
        assert_eq!(evicted, vec![&t.b.0, &t.c.0]);
        assert!(stored(&store, &t.a.0) && stored(&store, &t.a.2) && stored(&store, &t.base));
        assert!(!stored(&store, &t.b.2) && !stored(&store, &t.c.2));
        assert!(report.reached_goal());
        // Nothing else to take: the goal cannot be met.
        let report = store.evict(|used| used, &pin_a).unwrap();
        assert!(!report.reached_goal());
        assert!(stored(&store, &t.a.0));
    }

    #[test]
    fn blobs_in_use_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let t = three(&store);
        let lease = store.blobs.lease(&t.a.2);
        // Everything must go: A, being pulled, goes last, and its leased layer stays.
        let report = store.evict(|used| used, &nothing_pinned).unwrap();
        let order: Vec<_> = report.evicted.iter().map(|i| i.digest.clone()).collect();
        assert_eq!(order, vec![t.b.0.clone(), t.c.0.clone(), t.a.0.clone()]);
        assert_eq!(report.kept_in_use, 1);
        assert!(!report.reached_goal());
        assert!(stored(&store, &t.a.2), "leased layer deleted");
        assert!(!stored(&store, &t.a.0) && !stored(&store, &t.base));
        drop(lease);
        // Left as a lone blob, for the next pass.
        let report = store.evict(|used| used, &nothing_pinned).unwrap();
        assert_eq!(report.evicted.len(), 1);
        assert!(!report.evicted[0].is_manifest);
        assert!(report.reached_goal());
        assert_eq!(store.blobs.walk().unwrap().files.len(), 0);
    }

    #[test]
    fn an_image_being_pulled_goes_last() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let t = three(&store);
        // A's layer is deleted (as if not fetched yet) and a request is fetching it.
        store.blobs.delete(&t.a.2).unwrap();
        let _lease = store.blobs.lease(&t.a.2);
        let report = store.evict(|_| 1, &nothing_pinned).unwrap();
        assert_eq!(report.evicted[0].digest, t.b.0);
        assert!(stored(&store, &t.a.0));
        let report = store.evict(|used| used, &nothing_pinned).unwrap();
        let order: Vec<_> = report.evicted.iter().map(|i| i.digest.clone()).collect();
        assert_eq!(order, vec![t.c.0.clone(), t.a.0.clone()]);
    }

    #[test]
    fn an_index_goes_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let r = repo("multi");
        let (amd, amd_c, amd_l) = image(&store, &r, None, 1, 1000, &[]);
        let (arm, _, arm_l) = image(&store, &r, None, 2, 1000, &[]);
        let sizes = |d: &Digest| std::fs::metadata(store.layout().blob(d)).unwrap().len() as usize;
        let idx = put_manifest(
            &store,
            &r,
            Some("latest"),
            OCI_INDEX,
            &index_manifest(&[(&amd, sizes(&amd)), (&arm, sizes(&arm))]),
        );
        let other = image(&store, &r, Some("other"), 3, 1000, &[]);
        used(&store, &amd, 5);
        used(&store, &other.0, 10);
        let report = store.evict(|_| 1, &nothing_pinned).unwrap();
        assert_eq!(report.evicted.len(), 1, "{:?}", report.evicted);
        assert_eq!(report.evicted[0].digest, idx);
        for d in [&idx, &amd, &amd_c, &amd_l, &arm, &arm_l] {
            assert!(!stored(&store, d), "{d} kept");
        }
        assert!(stored(&store, &other.0));
    }
}
