//! Checking the store against itself: every blob re-hashed, the index checked against
//! the files, and (with `repair`) whatever is wrong dropped so it is fetched again on
//! the next pull.
//!
//! What counts as a problem, and its repair:
//!
//! | problem | repair |
//! |---|---|
//! | corrupt: a blob's bytes do not hash to its name | delete the file and every record of it (tags pointing at it included) |
//! | dangling: a tag, manifest, blob or link record whose file is missing (a tag also when its manifest record is) | remove the record |
//! | orphan: a file no record knows and no manifest references | delete the file |
//! | unindexed: a file no record knows that a manifest references | record it |
//! | size mismatch: a record's size differs from its (verified) file | rewrite the record |
//! | staging leftover: a file in `staging/` (no server runs while fsck does) | delete it |
//! | unparsable manifest: a stored manifest that is not JSON | delete it and its records |
//! | stray: a file under `blobs/` Ferry would never find | delete it |
//! | corrupt record: an index record that does not decode | remove it |
//!
//! Blobs with a record that no manifest references (fetched by digest alone) are not
//! problems: they are counted, and `ferry gc` removes them.
//!
//! [`Store::quick_check`] is the cheap version the server runs at startup: sizes, not
//! hashes, and it changes nothing.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs;
use std::path::PathBuf;
use std::time::UNIX_EPOCH;

use crate::index::RecordKey;
use crate::snapshot::Snapshot;
use crate::{Digest, Result, Store};

/// What fsck found (and, with repair, fixed).
#[derive(Debug, Default)]
pub struct FsckReport {
    pub blobs_checked: usize,
    pub bytes_checked: u64,
    pub corrupt: Vec<Digest>,
    pub dangling: Vec<String>,
    pub orphans: Vec<Digest>,
    pub unindexed: Vec<Digest>,
    pub size_mismatches: Vec<SizeMismatch>,
    pub staging: Vec<PathBuf>,
    pub unparsable: Vec<Digest>,
    pub strays: Vec<PathBuf>,
    pub corrupt_records: Vec<String>,
    /// Not a problem: blobs with a record that no stored manifest references.
    pub unreferenced: usize,
    /// Whether the problems were repaired.
    pub repaired: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeMismatch {
    pub digest: Digest,
    /// Which record: `blob` or `manifest`.
    pub record: &'static str,
    pub recorded: u64,
    pub actual: u64,
}

impl FsckReport {
    /// How many problems were found.
    pub fn problems(&self) -> usize {
        self.corrupt.len()
            + self.dangling.len()
            + self.orphans.len()
            + self.unindexed.len()
            + self.size_mismatches.len()
            + self.staging.len()
            + self.unparsable.len()
            + self.strays.len()
            + self.corrupt_records.len()
    }

    pub fn is_clean(&self) -> bool {
        self.problems() == 0
    }
}

impl fmt::Display for FsckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "checked {} blobs ({} bytes): {} problem(s){}",
            self.blobs_checked,
            self.bytes_checked,
            self.problems(),
            if self.repaired && !self.is_clean() {
                ", repaired"
            } else {
                ""
            }
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
        let paths = |v: &[PathBuf]| v.iter().map(|p| p.display().to_string()).collect();
        section(
            "corrupt blobs (bytes do not match the digest)",
            strings(&self.corrupt),
        )?;
        section("index records whose blob is missing", self.dangling.clone())?;
        section(
            "orphan blobs (no index record, referenced by nothing)",
            strings(&self.orphans),
        )?;
        section(
            "blobs referenced by a manifest but missing from the index",
            strings(&self.unindexed),
        )?;
        section(
            "size mismatches between index and file",
            self.size_mismatches
                .iter()
                .map(|m| {
                    format!(
                        "{} ({} record says {}, file has {})",
                        m.digest, m.record, m.recorded, m.actual
                    )
                })
                .collect(),
        )?;
        section("leftovers in staging/", paths(&self.staging))?;
        section("manifests that do not parse", strings(&self.unparsable))?;
        section("stray files under blobs/", paths(&self.strays))?;
        section(
            "index records that do not decode",
            self.corrupt_records.clone(),
        )?;
        if self.unreferenced > 0 {
            writeln!(
                f,
                "  (not a problem) blobs referenced by no stored manifest: {} (`ferry gc` removes them)",
                self.unreferenced
            )?;
        }
        Ok(())
    }
}

/// The startup check's findings.
#[derive(Debug, Default, Clone)]
pub struct QuickReport {
    pub blobs: usize,
    pub bytes: u64,
    pub size_mismatches: Vec<SizeMismatch>,
    /// Records whose file is missing.
    pub dangling: usize,
    pub strays: usize,
}

impl QuickReport {
    pub fn problems(&self) -> usize {
        self.size_mismatches.len() + self.dangling + self.strays
    }
}

impl Store {
    /// Checks everything; with `repair`, fixes what it can (see the module docs). Run
    /// it on a store no server has open (which [`Store::open`]'s lock guarantees).
    pub fn fsck(&self, repair: bool) -> Result<FsckReport> {
        let mut report = FsckReport {
            staging: self.blobs.staged()?,
            ..FsckReport::default()
        };
        let snap = Snapshot::take(self)?;
        report.strays = snap.strays.clone();

        let mut corrupt = HashSet::new();
        for (d, file) in &snap.files {
            report.blobs_checked += 1;
            report.bytes_checked += file.size;
            match self.blobs.rehash(d) {
                Ok(Some(actual)) if actual == *d => {}
                Ok(None) => {}
                Ok(Some(actual)) => {
                    tracing::warn!(digest = %d, %actual, "blob bytes do not match their digest");
                    corrupt.insert(d.clone());
                }
                Err(e) => {
                    tracing::warn!(digest = %d, error = %e, "blob cannot be read");
                    corrupt.insert(d.clone());
                }
            }
        }
        let good = |d: &Digest| snap.files.contains_key(d) && !corrupt.contains(d);
        let manifests = snap.manifest_records();
        let blobs = snap.blob_records();

        for (key, err) in snap
            .tags
            .iter()
            .map(|s| (&s.key, s.value.as_ref().err()))
            .chain(
                snap.manifests
                    .iter()
                    .map(|s| (&s.key, s.value.as_ref().err())),
            )
            .chain(snap.blobs.iter().map(|s| (&s.key, s.value.as_ref().err())))
            .chain(snap.links.iter().map(|s| (&s.key, s.value.as_ref().err())))
        {
            if let Some(err) = err {
                report.corrupt_records.push(format!("{key}: {err}"));
            }
        }

        // Records of a missing file. Records of a corrupt file go with it.
        let mut dangling_keys = Vec::new();
        for s in &snap.tags {
            let Ok(t) = &s.value else { continue };
            let d = &t.record.digest;
            if corrupt.contains(d) {
                continue;
            }
            if !good(d) || !manifests.contains_key(d) {
                report.dangling.push(format!(
                    "tag {}/{}:{} -> {d}",
                    t.repo.upstream, t.repo.name, t.tag
                ));
                dangling_keys.push(s.key.clone());
            }
        }
        for s in &snap.manifests {
            let Ok((d, _)) = &s.value else { continue };
            if !snap.files.contains_key(d) {
                report.dangling.push(format!("manifest {d}"));
                dangling_keys.push(s.key.clone());
            }
        }
        for s in &snap.blobs {
            let Ok((d, _)) = &s.value else { continue };
            if !snap.files.contains_key(d) {
                report.dangling.push(format!("blob {d}"));
                dangling_keys.push(s.key.clone());
            }
        }
        for s in &snap.links {
            let Ok((repo, d)) = &s.value else { continue };
            if !snap.files.contains_key(d) {
                report
                    .dangling
                    .push(format!("link {}/{}@{d}", repo.upstream, repo.name));
                dangling_keys.push(s.key.clone());
            }
        }

        report.unparsable = snap
            .unparsable
            .iter()
            .filter(|d| !corrupt.contains(*d))
            .cloned()
            .collect();
        let referenced: HashSet<&Digest> = snap
            .refs
            .iter()
            .filter(|(d, _)| !corrupt.contains(*d))
            .flat_map(|(_, r)| r.all())
            .collect();
        for (d, file) in snap.files.iter().filter(|(d, _)| good(d)) {
            let (b, m) = (blobs.get(d), manifests.get(d));
            if b.is_none() && m.is_none() {
                if referenced.contains(d) {
                    report.unindexed.push(d.clone());
                } else {
                    report.orphans.push(d.clone());
                }
            } else if m.is_none() && !referenced.contains(d) {
                report.unreferenced += 1;
            }
            if let Some(b) = b
                && b.size != file.size
            {
                report.size_mismatches.push(SizeMismatch {
                    digest: d.clone(),
                    record: "blob",
                    recorded: b.size,
                    actual: file.size,
                });
            }
            if let Some(m) = m
                && m.size != file.size
            {
                report.size_mismatches.push(SizeMismatch {
                    digest: d.clone(),
                    record: "manifest",
                    recorded: m.size,
                    actual: file.size,
                });
            }
        }
        let mut corrupt: Vec<Digest> = corrupt.into_iter().collect();
        corrupt.sort();
        report.corrupt = corrupt;

        if repair && !report.is_clean() {
            self.repair(&report, &snap, &dangling_keys)?;
            report.repaired = true;
        }
        Ok(report)
    }

    fn repair(
        &self,
        report: &FsckReport,
        snap: &Snapshot,
        dangling_keys: &[RecordKey],
    ) -> Result<()> {
        let index = &self.index;
        for path in &report.staging {
            remove_path(path)?;
        }
        for path in &report.strays {
            remove_path(path)?;
        }
        for s in snap
            .tags
            .iter()
            .map(|s| (&s.key, s.value.is_err()))
            .chain(snap.manifests.iter().map(|s| (&s.key, s.value.is_err())))
            .chain(snap.blobs.iter().map(|s| (&s.key, s.value.is_err())))
            .chain(snap.links.iter().map(|s| (&s.key, s.value.is_err())))
            .filter(|(_, bad)| *bad)
            .map(|(k, _)| k)
        {
            index.remove_record(s)?;
        }
        for key in dangling_keys {
            index.remove_record(key)?;
        }
        // Bad content goes with every record of it, so nothing points at it any more.
        let doomed: HashSet<&Digest> = report.corrupt.iter().chain(&report.unparsable).collect();
        for t in snap.tag_entries() {
            if doomed.contains(&t.record.digest) {
                index.remove_tag_if(&t.repo, &t.tag, &t.record.digest)?;
            }
        }
        for s in &snap.links {
            if let Ok((_, d)) = &s.value
                && doomed.contains(d)
            {
                index.remove_record(&s.key)?;
            }
        }
        for d in &doomed {
            index.remove_manifest(d)?;
            index.remove_blob(d)?;
            self.blobs.delete(d)?;
        }
        for d in &report.orphans {
            self.blobs.delete(d)?;
        }
        let modified_secs = |d: &Digest| {
            snap.files
                .get(d)
                .and_then(|f| f.modified.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |t| t.as_secs())
        };
        for d in &report.unindexed {
            if let Some(f) = snap.files.get(d) {
                index.record_access(d, f.size, modified_secs(d))?;
            }
        }
        let manifests = snap.manifest_records();
        let blobs = snap.blob_records();
        for m in &report.size_mismatches {
            match m.record {
                "manifest" => {
                    if let Some(rec) = manifests.get(&m.digest) {
                        let mut rec = (*rec).clone();
                        rec.size = m.actual;
                        index.put_manifest(&m.digest, &rec)?;
                    }
                }
                _ => {
                    let at = blobs
                        .get(&m.digest)
                        .map_or_else(|| modified_secs(&m.digest), |r| r.last_access);
                    index.remove_blob(&m.digest)?;
                    index.record_access(&m.digest, m.actual, at)?;
                }
            }
        }
        index.flush()
    }

    /// The startup check: walks `blobs/` and compares sizes with the index, without
    /// hashing or changing anything. Also returns the bytes stored, which the quota
    /// starts from.
    pub fn quick_check(&self) -> Result<QuickReport> {
        let walk = self.blobs.walk()?;
        let files: HashMap<&Digest, u64> = walk.files.iter().map(|f| (&f.digest, f.size)).collect();
        let mut report = QuickReport {
            blobs: walk.files.len(),
            bytes: walk.bytes(),
            strays: walk.strays.len(),
            ..QuickReport::default()
        };
        for s in self.index.scan_blobs()? {
            let Ok((d, rec)) = s.value else { continue };
            match files.get(&d) {
                None => report.dangling += 1,
                Some(&actual) if actual != rec.size => report.size_mismatches.push(SizeMismatch {
                    digest: d,
                    record: "blob",
                    recorded: rec.size,
                    actual,
                }),
                Some(_) => {}
            }
        }
        for s in self.index.scan_manifests()? {
            let Ok((d, rec)) = s.value else { continue };
            match files.get(&d) {
                None => report.dangling += 1,
                Some(&actual) if actual != rec.size => report.size_mismatches.push(SizeMismatch {
                    digest: d,
                    record: "manifest",
                    recorded: rec.size,
                    actual,
                }),
                Some(_) => {}
            }
        }
        Ok(report)
    }
}

fn remove_path(path: &std::path::Path) -> Result<()> {
    let res = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match res {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    #[test]
    fn reports_then_repairs() {
        let dir = tempfile::tempdir().unwrap();
        let r = repo("team/app");
        let (m, c, l, other, orphan);
        {
            let store = Store::open(dir.path()).unwrap();
            (m, c, l) = image(&store, &r, Some("v1"), 1, 4096, &[]);
            let (_, _, o) = image(&store, &r, Some("v2"), 2, 100, &[]);
            other = o;
            // An orphan: bytes no record knows and no manifest references.
            orphan = Digest::sha256_of(b"orphan");
            store.blobs.put(&orphan, b"orphan").unwrap();
            // A record that lies about a (good) blob's size.
            store.index.blob_stored(&other, 99).unwrap();
            store.index.flush().unwrap();
        }
        let layout = crate::Layout::new(dir.path());
        // Corrupt the layer (same size, different bytes), delete the config, leave a
        // staged file as a crashed ingest would.
        std::fs::write(layout.blob(&l), vec![9u8; 4096]).unwrap();
        std::fs::remove_file(layout.blob(&c)).unwrap();
        std::fs::write(layout.staging_dir().join("leftover-1"), b"half").unwrap();
        std::fs::write(layout.blobs_dir().join("sha256").join("README"), b"?").unwrap();

        let store = Store::open_as_found(dir.path()).unwrap();
        let report = store.fsck(false).unwrap();
        assert_eq!(report.corrupt, vec![l.clone()], "{report}");
        assert_eq!(report.orphans, vec![orphan.clone()], "{report}");
        assert_eq!(report.staging.len(), 1, "{report}");
        assert_eq!(report.strays.len(), 1, "{report}");
        assert_eq!(
            report.size_mismatches,
            vec![SizeMismatch {
                digest: other.clone(),
                record: "blob",
                recorded: 99,
                actual: 100
            }],
            "{report}"
        );
        // The config's blob record and its link dangle.
        assert_eq!(report.dangling.len(), 2, "{report}");
        assert!(
            report.dangling.iter().all(|d| d.contains(c.as_str())),
            "{report}"
        );
        assert!(!report.repaired && !report.is_clean());
        let text = report.to_string();
        assert!(
            text.contains(l.as_str()) && text.contains("corrupt"),
            "{text}"
        );
        // Reporting changed nothing.
        assert!(layout.blob(&l).exists() && layout.blob(&orphan).exists());

        let report = store.fsck(true).unwrap();
        assert!(report.repaired && report.problems() == 7, "{report}");
        assert!(!layout.blob(&l).exists() && !layout.blob(&orphan).exists());
        assert_eq!(store.index.blob(&l).unwrap(), None);
        assert_eq!(store.index.blob(&other).unwrap().unwrap().size, 100);
        // The image itself stays: its missing layer is fetched on the next pull.
        assert!(store.index.manifest(&m).unwrap().is_some());
        assert!(store.blobs.staged().unwrap().is_empty());

        let report = store.fsck(false).unwrap();
        assert!(report.is_clean(), "{report}");
        assert_eq!(report.blobs_checked, 4);
    }

    #[test]
    fn corrupt_manifest_takes_its_tags_and_unreferenced_blobs_are_no_problem() {
        let dir = tempfile::tempdir().unwrap();
        let r = repo("team/app");
        let store = Store::open(dir.path()).unwrap();
        let (m, _, _) = image(&store, &r, Some("v1"), 1, 10, &[]);
        put_blob(&store, &r, b"fetched by digest alone");
        let path = store.layout().blob(&m);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[0] = b' ';
        std::fs::write(&path, bytes).unwrap();

        let report = store.fsck(true).unwrap();
        assert_eq!(report.corrupt, vec![m.clone()], "{report}");
        // Its config and layer, and the blob fetched alone: recorded, so gc's job.
        assert_eq!(report.unreferenced, 3, "{report}");
        assert_eq!(store.index.tag(&r, &"v1".parse().unwrap()).unwrap(), None);
        assert_eq!(store.index.manifest(&m).unwrap(), None);
        assert!(!store.index.is_linked(&r, &m).unwrap());
        let report = store.fsck(false).unwrap();
        assert!(report.is_clean(), "{report}");
        assert_eq!(report.unreferenced, 3);
    }

    #[test]
    fn quick_check_compares_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let r = repo("a");
        let store = Store::open(dir.path()).unwrap();
        let (_, c, l) = image(&store, &r, None, 1, 1000, &[]);
        std::fs::write(store.layout().blob(&l), b"short").unwrap();
        std::fs::remove_file(store.layout().blob(&c)).unwrap();
        let q = store.quick_check().unwrap();
        assert_eq!(q.blobs, 2);
        assert_eq!(q.size_mismatches.len(), 1);
        assert_eq!(q.size_mismatches[0].digest, l);
        assert_eq!(q.dangling, 1);
        assert_eq!(q.problems(), 2);
    }

    #[test]
    fn a_second_opener_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        std::fs::write(store.layout().staging_dir().join("in-progress"), b"x").unwrap();
        let err = Store::open_as_found(dir.path()).unwrap_err();
        assert!(matches!(err, crate::Error::Locked { .. }), "{err}");
        assert!(err.to_string().contains("ferry serve"), "{err}");
        // The refused opener swept nothing.
        assert_eq!(store.blobs.staged().unwrap().len(), 1);
    }
}
