//! Credentials in memory and on disk. Neither type ever prints its value.

use crate::filestamp::{self, FileStamp};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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

/// Where a configured secret comes from: a file (a Kubernetes Secret mount), re-read
/// when it changes so a rotated secret takes effect without a restart, or an
/// environment variable, read once at start.
#[derive(Clone)]
pub struct SecretSource {
    /// `None` for a secret from the environment.
    path: Option<PathBuf>,
    state: Arc<Mutex<Loaded>>,
}

struct Loaded {
    stamp: Option<FileStamp>,
    secret: Secret,
}

/// The same file (which each source re-reads itself when it changes), or environment
/// variables holding the same value.
impl PartialEq for SecretSource {
    fn eq(&self, other: &SecretSource) -> bool {
        self.path == other.path && (self.path.is_some() || self.current() == other.current())
    }
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(p) => write!(f, "SecretSource(file {})", p.display()),
            None => f.write_str("SecretSource(environment)"),
        }
    }
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

impl SecretSource {
    /// Reads the secret from a file now; an unreadable or empty file is an error.
    pub fn from_file(path: impl Into<PathBuf>) -> Result<SecretSource, String> {
        let path = path.into();
        let stamp = filestamp::of(&path);
        let secret = read(&path)?;
        Ok(SecretSource {
            path: Some(path),
            state: Arc::new(Mutex::new(Loaded { stamp, secret })),
        })
    }

    /// Reads the secret from the environment variable `var`; unset or empty is an error.
    pub fn from_env(var: &str) -> Result<SecretSource, String> {
        let value =
            std::env::var(var).map_err(|_| format!("environment variable `{var}` is not set"))?;
        if value.is_empty() {
            return Err(format!("environment variable `{var}` is empty"));
        }
        let loaded = Loaded {
            stamp: None,
            secret: Secret::new(value),
        };
        Ok(SecretSource {
            path: None,
            state: Arc::new(Mutex::new(loaded)),
        })
    }

    /// The secret as its source holds it now. If a file changed but cannot be read
    /// (mid-rotation), the last good value is kept.
    pub fn current(&self) -> Secret {
        let mut state = self.state.lock().expect("secret lock");
        let Some(path) = &self.path else {
            return state.secret.clone();
        };
        let now = filestamp::of(path);
        if now.is_some() && now != state.stamp {
            match read(path) {
                Ok(secret) => {
                    if secret != state.secret {
                        tracing::info!(file = %path.display(), "secret file changed; using the new secret");
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
        let s = SecretSource::from_file(&p).unwrap();
        assert_eq!(s.current().expose(), "one");
        // Rotation as a Secret mount does it: a new file swapped in.
        let tmp = dir.path().join("s.new");
        std::fs::write(&tmp, "rotated-two\n").unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        assert_eq!(s.current().expose(), "rotated-two");
        assert!(!format!("{s:?}").contains("two"));
        assert!(
            SecretSource::from_file(dir.path().join("missing"))
                .unwrap_err()
                .contains("missing")
        );
        assert!(SecretSource::from_env("FERRY_TEST_SURELY_UNSET_VARIABLE").is_err());
    }
}
