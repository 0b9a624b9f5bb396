//! Garbage collection: blobs that no stored manifest references, once they are older
//! than a grace period.
//!
//! Live content is every stored manifest (it has a manifest record or a tag points at
//! it) and everything a stored manifest references through `config`, `layers`,
//! `manifests` or `subject`. The grace period, counted from when a blob was stored or
//! last used, whichever is later, keeps a pull in progress safe whether its manifest
//! arrives before or after its blobs.

use std::collections::HashSet;
use std::time::Duration;

use crate::access_times::now_millis;
use crate::snapshot::Snapshot;
use crate::{Digest, Result, Store};

#[derive(Debug, Default)]
pub struct GcReport {
    /// Removed blobs and their sizes.
    pub removed: Vec<(Digest, u64)>,
    pub bytes_freed: u64,
    /// Unreferenced, but younger than the grace period.
    pub kept_young: usize,
    /// Unreferenced and old enough, but in use right now.
    pub kept_in_use: usize,
    /// Blobs kept because a manifest references them, manifests included.
    pub live: usize,
}

impl Store {
    pub fn gc(&self, grace: Duration) -> Result<GcReport> {
        let snap = Snapshot::take(self)?;
        let mut live: HashSet<&Digest> = snap.referenced();
        live.extend(snap.manifest_records().into_keys());
        live.extend(snap.tag_entries().map(|t| &t.record.digest));
        let now = now_millis();
        let grace_ms = grace.as_millis() as u64;
        let mut report = GcReport::default();
        let mut removed = HashSet::new();
        for d in snap.files.keys() {
            if live.contains(d) {
                report.live += 1;
                continue;
            }
            if now.saturating_sub(snap.last_used_ms(self, d)) < grace_ms {
                report.kept_young += 1;
                continue;
            }
            match self.blobs.delete_unless_leased(d)? {
                None => report.kept_in_use += 1,
                Some(size) => {
                    self.index.remove_blob(d)?;
                    tracing::debug!(digest = %d, size, "gc: removed unreferenced blob");
                    report.bytes_freed += size;
                    report.removed.push((d.clone(), size));
                    removed.insert(d.clone());
                }
            }
        }
        for s in &snap.links {
            if let Ok((_, d)) = &s.value
                && removed.contains(d)
            {
                self.index.remove_record(&s.key)?;
            }
        }
        self.index.flush()?;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    fn stored(store: &Store, d: &Digest) -> bool {
        store.layout().blob(d).exists()
    }

    #[test]
    fn gc_removes_old_unreferenced_blobs_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let r = repo("team/app");
        let (m, c, l) = image(&store, &r, Some("v1"), 1, 100, &[]);
        let lone = put_blob(&store, &r, b"by digest alone");
        let report = store.gc(std::time::Duration::from_secs(3600)).unwrap();
        assert!(report.removed.is_empty());
        assert_eq!((report.kept_young, report.live), (1, 3));
        let report = store.gc(std::time::Duration::ZERO).unwrap();
        assert_eq!(report.removed, vec![(lone.clone(), 15)]);
        assert!(!stored(&store, &lone));
        assert_eq!(store.index.blob(&lone).unwrap(), None);
        assert!(!store.index.is_linked(&r, &lone).unwrap());
        for d in [&m, &c, &l] {
            assert!(stored(&store, d));
        }
    }
}
