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

    /// Whether `given` is this secret, compared in constant time (a caller learns
    /// nothing from how long a wrong guess took).
    pub fn matches(&self, given: &[u8]) -> bool {
        let ours = self.0.as_bytes();
        ours.len() == given.len()
            && ours
                .iter()
                .zip(given)
                .fold(0u8, |acc, (x, y)| acc | (x ^ y))
                == 0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Where a configured secret comes from: a file (a Kubernetes Secret mount), re-read
/// when it changes so a rotated secret takes effect without a restart, or an
/// environment variable, read once at start. The config names a source when it is
/// validated and reads it in its own step ([`SecretSource::read`]), which a command
/// that never sends credentials skips.
#[derive(Clone)]
pub struct SecretSource {
    origin: Origin,
    state: Arc<Mutex<Loaded>>,
}

#[derive(Clone, PartialEq, Eq)]
enum Origin {
    File(PathBuf),
    Env(String),
}

struct Loaded {
    stamp: Option<FileStamp>,
    secret: Secret,
}

/// The same file (which each source re-reads itself when it changes), or environment
/// variables holding the same value.
impl PartialEq for SecretSource {
    fn eq(&self, other: &SecretSource) -> bool {
        match (&self.origin, &other.origin) {
            (Origin::File(a), Origin::File(b)) => a == b,
            (Origin::Env(_), Origin::Env(_)) => self.current() == other.current(),
            _ => false,
        }
    }
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.origin {
            Origin::File(p) => write!(f, "SecretSource(file {})", p.display()),
            Origin::Env(_) => f.write_str("SecretSource(environment)"),
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
    /// The secret in the file `path`, not read yet.
    pub fn file(path: impl Into<PathBuf>) -> SecretSource {
        SecretSource::unread(Origin::File(path.into()))
    }

    /// The secret in the environment variable `var`, not read yet.
    pub fn env(var: impl Into<String>) -> SecretSource {
        SecretSource::unread(Origin::Env(var.into()))
    }

    fn unread(origin: Origin) -> SecretSource {
        let state = Loaded {
            stamp: None,
            secret: Secret::new(""),
        };
        SecretSource {
            origin,
            state: Arc::new(Mutex::new(state)),
        }
    }

    /// Reads the secret now; an unreadable or empty file, or an unset or empty
    /// variable, is an error.
    pub fn read(&self) -> Result<(), String> {
        let loaded = match &self.origin {
            Origin::File(path) => Loaded {
                stamp: filestamp::of(path),
                secret: read(path)?,
            },
            Origin::Env(var) => {
                let value = std::env::var(var)
                    .map_err(|_| format!("environment variable `{var}` is not set"))?;
                if value.is_empty() {
                    return Err(format!("environment variable `{var}` is empty"));
                }
                Loaded {
                    stamp: None,
                    secret: Secret::new(value),
                }
            }
        };
        *self.state.lock().expect("secret lock") = loaded;
        Ok(())
    }

    /// The secret as its source holds it now. If a file changed but cannot be read
    /// (mid-rotation), the last good value is kept.
    pub fn current(&self) -> Secret {
        let mut state = self.state.lock().expect("secret lock");
        let Origin::File(path) = &self.origin else {
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
        let s = SecretSource::file(&p);
        s.read().unwrap();
        assert_eq!(s.current().expose(), "one");
        // Rotation as a Secret mount does it: a new file swapped in.
        let tmp = dir.path().join("s.new");
        std::fs::write(&tmp, "rotated-two\n").unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        assert_eq!(s.current().expose(), "rotated-two");
        assert!(!format!("{s:?}").contains("two"));
        assert!(
            SecretSource::file(dir.path().join("missing"))
                .read()
                .unwrap_err()
                .contains("missing")
        );
        assert!(
            SecretSource::env("FERRY_TEST_SURELY_UNSET_VARIABLE")
                .read()
                .is_err()
        );
    }
}
