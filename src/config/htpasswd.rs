//! An htpasswd file (bcrypt only), as the config loads it; `access` verifies
//! passwords against it and re-reads it when it changes.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::filestamp::{self, FileStamp};

/// Why an htpasswd file was refused.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct HtpasswdError {
    path: PathBuf,
    line: Option<usize>,
    message: String,
}

/// The users of an htpasswd file: name → bcrypt hash. Its `Debug` shows names only.
#[derive(Clone)]
pub struct Htpasswd {
    path: PathBuf,
    stamp: Option<FileStamp>,
    entries: Arc<HashMap<String, String>>,
}

impl fmt::Debug for Htpasswd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Htpasswd")
            .field("path", &self.path)
            .field("users", &self.users())
            .finish()
    }
}

impl Htpasswd {
    /// Reads and checks `path`: `user:hash` lines, `#` comments, bcrypt hashes only.
    pub fn load(path: &Path) -> Result<Htpasswd, HtpasswdError> {
        let stamp = filestamp::of(path);
        let text = std::fs::read_to_string(path).map_err(|e| HtpasswdError {
            path: path.to_owned(),
            line: None,
            message: format!("cannot read the htpasswd file: {e}"),
        })?;
        let entries = Self::parse(&text).map_err(|(line, message)| HtpasswdError {
            path: path.to_owned(),
            line: Some(line),
            message,
        })?;
        Ok(Htpasswd {
            path: path.to_owned(),
            stamp,
            entries: Arc::new(entries),
        })
    }

    fn parse(text: &str) -> Result<HashMap<String, String>, (usize, String)> {
        let mut entries = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((user, hash)) = line.split_once(':') else {
                return Err((n, "not a `user:hash` line".into()));
            };
            if user.is_empty() {
                return Err((n, "the user name is empty".into()));
            }
            if let Some(kind) = not_bcrypt(hash) {
                return Err((
                    n,
                    format!(
                        "user `{user}` has {kind}; Ferry accepts bcrypt hashes only (create them with `htpasswd -B`)"
                    ),
                ));
            }
            if hash.parse::<bcrypt::HashParts>().is_err() {
                return Err((n, format!("user `{user}`: malformed bcrypt hash")));
            }
            if entries.insert(user.to_string(), hash.to_string()).is_some() {
                return Err((n, format!("user `{user}` is listed twice")));
            }
        }
        Ok(entries)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// User names, sorted.
    pub fn users(&self) -> Vec<&str> {
        let mut u: Vec<&str> = self.entries.keys().map(String::as_str).collect();
        u.sort_unstable();
        u
    }

    pub fn has_user(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// User name → bcrypt hash.
    pub fn entries(&self) -> Arc<HashMap<String, String>> {
        self.entries.clone()
    }

    /// Re-reads the file if it changed. A changed file that cannot be used is
    /// reported once and the previous entries kept.
    pub fn reload_if_changed(&mut self) {
        let now = filestamp::of(&self.path);
        if now.is_some() && now != self.stamp {
            match Htpasswd::load(&self.path) {
                Ok(new) => {
                    tracing::info!(file = %self.path.display(), users = new.entries.len(), "htpasswd file changed; using the new users");
                    *self = new;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "htpasswd file changed but cannot be used; keeping the previous users");
                    self.stamp = now;
                }
            }
        }
    }
}

/// What a hash that is not bcrypt is, for the error; `None` if it looks like bcrypt.
fn not_bcrypt(hash: &str) -> Option<&'static str> {
    if ["$2a$", "$2b$", "$2x$", "$2y$"]
        .iter()
        .any(|p| hash.starts_with(p))
    {
        return None;
    }
    Some(if hash.starts_with("$apr1$") {
        "an MD5 (apr1) hash"
    } else if hash.starts_with("{SHA}") {
        "a SHA-1 hash"
    } else if hash.starts_with("$1$") {
        "an MD5-crypt hash"
    } else if hash.starts_with("$5$") || hash.starts_with("$6$") {
        "a SHA-crypt hash"
    } else {
        "a crypt(3) or plain-text password"
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn htpasswd_bcrypt_only() {
        let hash = bcrypt::hash("pw", 4).unwrap();
        let ok = Htpasswd::parse(&format!("# users\n\nci:{hash}\n")).unwrap();
        assert!(ok.contains_key("ci"));
        for (line, kind) in [
            ("bob:$apr1$abc$def", "MD5 (apr1)"),
            ("bob:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "SHA-1"),
            ("bob:plain", "plain-text"),
            ("bob:$6$salt$hash", "SHA-crypt"),
        ] {
            let (n, e) = Htpasswd::parse(&format!("ci:{hash}\n{line}\n")).unwrap_err();
            assert_eq!(n, 2, "{e}");
            assert!(
                e.contains(kind) && e.contains("bob") && e.contains("bcrypt"),
                "{e}"
            );
        }
        assert_eq!(Htpasswd::parse("nocolon\n").unwrap_err().0, 1);
        let (n, e) = Htpasswd::parse(&format!("ci:{hash}\nci:{hash}\n")).unwrap_err();
        assert!(n == 2 && e.contains("twice"), "{e}");
        let (_, e) = Htpasswd::parse("ci:$2y$05$short\n").unwrap_err();
        assert!(e.contains("malformed"), "{e}");
    }
}
