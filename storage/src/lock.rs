//! One process per store.
//!
//! sled allows one process per database, and two processes sweeping `staging/` or
//! deleting blobs under each other would break the store's invariants. So a
//! [`Store`](crate::Store) holds an exclusive `flock` on `<root>/lock` for as long as
//! it is open, taken *before* anything else is touched: `ferry fsck` started next to a
//! running `ferry serve` fails cleanly instead of sweeping the server's staged files.
//! The kernel drops the lock when the process dies, so a crash never leaves it stale.

use std::fs::{File, OpenOptions};
use std::path::Path;

use fs2::FileExt;

use crate::{Error, Result};

#[derive(Debug)]
pub(crate) struct StoreLock {
    // Never read: holding the open file is what holds the lock.
    _file: File,
}

impl StoreLock {
    pub(crate) fn acquire(path: &Path) -> Result<StoreLock> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        match file.try_lock_exclusive() {
            Ok(()) => Ok(StoreLock { _file: file }),
            Err(e) if e.raw_os_error() == fs2::lock_contended_error().raw_os_error() => {
                Err(Error::Locked {
                    path: path.parent().unwrap_or(path).display().to_string(),
                })
            }
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let held = StoreLock::acquire(&path).unwrap();
        // flock locks belong to the open file description, so a second open in the
        // same process conflicts just as another process would.
        assert!(matches!(
            StoreLock::acquire(&path),
            Err(Error::Locked { .. })
        ));
        drop(held);
        StoreLock::acquire(&path).unwrap();
    }
}
