//! The store's format marker: `<root>/format`, one line `ferry-store <N>`.
//!
//! An upgraded Ferry may lay the store out differently, and a Ferry rolled back to an
//! older version would misread such a store, or "repair" what it does not understand.
//! So [`Store::open`](crate::Store::open) reads the marker right after taking the lock
//! and before anything else opens: a store of another format is refused untouched.
//! A store without a marker is one of this format (markers came with format 1, the
//! first); it gets one.
//!
//! Neither `format` nor `lock` may ever move: every Ferry, of any format, must find
//! both where a format-1 Ferry does, or two of them could share a store unawares.

use std::fs::{self, File};
use std::io::{ErrorKind, Read, Write};
use std::num::NonZeroU32;

use crate::{Error, Layout, Result};

/// The store format this Ferry reads and writes. Bump it with any change to the
/// layout or to the index encoding that an older Ferry would misread (a new path it
/// would sweep or call stray, a record it would fail to decode or decode wrongly);
/// changes an older Ferry handles correctly (a new optional field it ignores) need no
/// bump. A bump needs a migration of format-`N-1` stores on open.
pub(crate) const FORMAT: u32 = 1;

const PREFIX: &str = "ferry-store ";

/// Refuses a store of another format, or marks a store that has no marker yet.
/// Call with the store's lock held.
pub(crate) fn check(layout: &Layout) -> Result<()> {
    let path = layout.format_file();
    let unreadable = |reason: String| Error::FormatUnreadable {
        path: path.display().to_string(),
        reason,
    };
    let mut text = Vec::new();
    match File::open(&path) {
        // Anything longer than a marker is not one; no need to read it all.
        Ok(f) => f
            .take(64)
            .read_to_end(&mut text)
            .map_err(|e| unreadable(e.to_string()))?,
        Err(e) if e.kind() == ErrorKind::NotFound => return mark(layout),
        Err(e) => return Err(unreadable(e.to_string())),
    };
    let found = std::str::from_utf8(&text)
        .ok()
        .map(str::trim_end)
        .and_then(|t| t.strip_prefix(PREFIX))
        .and_then(|n| n.parse::<NonZeroU32>().ok())
        .ok_or_else(|| {
            unreadable(format!(
                "it holds {:?}, not a line `{PREFIX}<number>`",
                String::from_utf8_lossy(&text)
            ))
        })?
        .get();
    if found != FORMAT {
        return Err(Error::Format {
            path: layout.root().display().to_string(),
            found,
        });
    }
    Ok(())
}

/// Writes the marker (staged, fsynced, renamed, the directory fsynced: a crash leaves
/// either no marker or a whole one).
fn mark(layout: &Layout) -> Result<()> {
    let root = layout.root();
    // Only the lock, which the opener just took, or a marker staged by a run that
    // crashed before its rename: a new store. Anything else was made before markers.
    let staged = layout.format_file().with_extension("tmp");
    let made_before = fs::read_dir(root)?.any(|e| {
        e.map_or(true, |e| {
            let p = e.path();
            p != layout.lock_file() && p != staged
        })
    });
    let mut f = File::create(&staged)?;
    f.write_all(format!("{PREFIX}{FORMAT}\n").as_bytes())?;
    f.sync_all()?;
    fs::rename(&staged, layout.format_file())?;
    File::open(root)?.sync_all()?;
    if made_before {
        tracing::info!(
            store = %root.display(),
            format = FORMAT,
            "the store predates format markers; marked it as format {FORMAT}"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    use crate::testutil::*;
    use crate::{Digest, Error, Store};

    /// Every file under `dir` and its bytes.
    fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut out = BTreeMap::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.insert(p.clone(), std::fs::read(&p).unwrap());
                }
            }
        }
        out
    }

    /// A store holding an image, closed again.
    fn store_with_content(dir: &Path) -> Digest {
        let store = Store::open(dir).unwrap();
        let (m, _, _) = image(&store, &repo("team/app"), Some("v1"), 1, 100, &[]);
        store.index.flush().unwrap();
        m
    }

    #[test]
    fn a_new_store_is_marked_with_this_format() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("new");
        let store = Store::open(&root).unwrap();
        let marker = store.layout().format_file();
        assert_eq!(std::fs::read(&marker).unwrap(), b"ferry-store 1\n");
        drop(store);
        // Reopening reads it and leaves it (and nothing staged) as it was.
        Store::open(&root).unwrap();
        assert_eq!(std::fs::read(&marker).unwrap(), b"ferry-store 1\n");
        assert!(!marker.with_extension("tmp").exists());
    }

    #[test]
    fn a_store_made_before_markers_is_marked_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let m = store_with_content(dir.path());
        let marker = crate::Layout::new(dir.path()).format_file();
        std::fs::remove_file(&marker).unwrap();
        // A crash while marking left a staged marker behind too.
        std::fs::write(marker.with_extension("tmp"), b"ferry-st").unwrap();

        let store = Store::open(dir.path()).unwrap();
        assert_eq!(std::fs::read(&marker).unwrap(), b"ferry-store 1\n");
        assert!(!marker.with_extension("tmp").exists());
        assert!(store.index.manifest(&m).unwrap().is_some());
        assert!(store.fsck(false).unwrap().is_clean());
    }

    #[test]
    fn a_newer_format_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        store_with_content(dir.path());
        let layout = crate::Layout::new(dir.path());
        std::fs::write(layout.format_file(), b"ferry-store 2\n").unwrap();
        // Leftovers an opener would sweep, had it gone on.
        std::fs::write(layout.staging_dir().join("leftover"), b"x").unwrap();
        let before = files(dir.path());

        for open in [Store::open, Store::open_as_found] {
            let err = open(dir.path()).unwrap_err();
            assert!(matches!(err, Error::Format { found: 2, .. }), "{err}");
            assert_eq!(
                err.to_string(),
                format!(
                    "the store at {} has format 2; this Ferry understands format 1: \
                     run a Ferry that does, or use another storage root",
                    dir.path().display()
                )
            );
            assert_eq!(
                files(dir.path()),
                before,
                "a refused open changed the store"
            );
        }
        // The lock is not held after a refusal.
        std::fs::write(layout.format_file(), b"ferry-store 1\n").unwrap();
        Store::open(dir.path()).unwrap();
    }

    #[test]
    fn a_newer_format_is_refused_before_the_index_opens() {
        // A future layout without `index/`: the refusal must not create one.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("format"), b"ferry-store 7\n").unwrap();
        let err = Store::open(dir.path()).unwrap_err();
        assert!(matches!(err, Error::Format { found: 7, .. }), "{err}");
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["format", "lock"]);
    }

    #[test]
    fn an_unreadable_marker_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        store_with_content(dir.path());
        let marker = crate::Layout::new(dir.path()).format_file();
        let long = format!("ferry-store 1\n{}", "x".repeat(100));
        let garbage: [&[u8]; 8] = [
            b"",
            b"ferry-store\n",
            b"ferry-store two\n",
            b"ferry-store 0\n",
            b"ferry-store -1\n",
            b"ferry-store 99999999999\n",
            b"\xff\xfe\x00\x01",
            long.as_bytes(),
        ];
        for bytes in garbage {
            std::fs::write(&marker, bytes).unwrap();
            let before = files(dir.path());
            let err = Store::open(dir.path()).unwrap_err();
            assert!(matches!(err, Error::FormatUnreadable { .. }), "{err}");
            let text = err.to_string();
            assert!(
                text.contains(&marker.display().to_string()),
                "{bytes:?}: {text}"
            );
            assert_eq!(files(dir.path()), before, "{bytes:?}: the store changed");
        }
        // A directory where the marker belongs cannot be read either.
        std::fs::remove_file(&marker).unwrap();
        std::fs::create_dir(&marker).unwrap();
        let err = Store::open(dir.path()).unwrap_err();
        assert!(matches!(err, Error::FormatUnreadable { .. }), "{err}");
    }
}
