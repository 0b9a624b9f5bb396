//! Credentials in memory and on disk. Neither type ever prints its value.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// A credential. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A secret kept in a file (a Kubernetes Secret mount), re-read when the file changes
/// so a rotated secret takes effect without a restart.
#[derive(Clone)]
pub struct SecretFile {
    path: PathBuf,
    state: Arc<Mutex<Loaded>>,
}

struct Loaded {
    stamp: Option<(SystemTime, u64)>,
    secret: Secret,
}

impl fmt::Debug for SecretFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretFile({})", self.path.display())
    }
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

fn read(path: &Path) -> Result<Secret, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    let secret = text.trim_end_matches(['\r', '\n']);
    if secret.is_empty() {
        return Err(format!("`{}` is empty", path.display()));
    }
    Ok(Secret::new(secret))
}

impl SecretFile {
    /// Reads the secret now; an unreadable or empty file is an error.
    pub fn open(path: impl Into<PathBuf>) -> Result<SecretFile, String> {
        let path = path.into();
        let stamp = stamp(&path);
        let secret = read(&path)?;
        Ok(SecretFile {
            path,
            state: Arc::new(Mutex::new(Loaded { stamp, secret })),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The secret as the file holds it now. If the file changed but cannot be read
    /// (mid-rotation), the last good value is kept.
    pub fn current(&self) -> Secret {
        let now = stamp(&self.path);
        let mut state = self.state.lock().expect("secret lock");
        if now.is_some() && now != state.stamp {
            match read(&self.path) {
                Ok(secret) => {
                    if secret != state.secret {
                        tracing::info!(file = %self.path.display(), "secret file changed; using the new secret");
                    }
                    *state = Loaded { stamp: now, secret };
                }
                Err(e) => {
                    tracing::warn!(error = %e, "secret file changed but cannot be read; keeping the previous secret")
                }
            }
        }
        state.secret.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rereads_a_rotated_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        std::fs::write(&p, "one\n").unwrap();
        let s = SecretFile::open(&p).unwrap();
        assert_eq!(s.current().expose(), "one");
        // Rotation as a Secret mount does it: a new file swapped in.
        let tmp = dir.path().join("s.new");
        std::fs::write(&tmp, "rotated-two\n").unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        assert_eq!(s.current().expose(), "rotated-two");
        assert!(!format!("{s:?}").contains("two"));
        assert!(
            SecretFile::open(dir.path().join("missing"))
                .unwrap_err()
                .contains("missing")
        );
    }
}
