//! How Ferry notices that a file it re-reads has changed (secrets, the htpasswd file,
//! TLS certificates, the config file): by polling its modification time and length,
//! which also sees a ConfigMap or Secret volume swapping its symlink, where a watch on
//! the file itself would not.

use std::path::Path;
use std::time::SystemTime;

/// A file's modification time and length; `None` from [`of`] when it cannot be read.
pub type FileStamp = (SystemTime, u64);

pub fn of(path: &Path) -> Option<FileStamp> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}
