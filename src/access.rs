//! Who may pull what.
//!
//! - Anonymous clients (nodes) may pull everything unless an upstream's `allow` /
//!   `deny` patterns say otherwise; they match the repository at that upstream.
//! - Users from an htpasswd file (bcrypt only) authenticate with Basic auth; their
//!   `[[access.user]]` patterns match `<registry>/<repository>`. A user without such a
//!   table may pull everything.
//! - Every decision is made on the upstream and repository a request is actually
//!   served from, after routing and cache rules, so a rule cannot route around a deny.
//!   A `deny` match wins over any `allow`.
//!
//! The [`Policy`] is built from a [`Config`] and held in a [`Gate`], which swaps it
//! whole (a config reload calls [`Gate::replace`]); the htpasswd file is re-read when
//! it changes. Successful bcrypt checks are remembered (keyed by a keyed hash of user
//! and password, bounded), so a node pulling 40 layers pays for one bcrypt, not 40.
//!
//! The patterns and the htpasswd file are the config's types
//! ([`crate::config::pattern`], [`crate::config::htpasswd`]): this policy is built
//! from them, and the config does not import it.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use sha2::Digest as _;

use crate::config::Config;
use crate::config::htpasswd::Htpasswd;
use crate::config::pattern::Permissions;
use crate::secret::Secret;

/// Successful verifications remembered at most.
const VERIFIED_CACHE: usize = 1024;
/// bcrypt checks running at once: a flood of wrong passwords may not take every
/// blocking thread.
const CONCURRENT_BCRYPT: usize = 4;

/// Why a request may not proceed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// Anonymous, denied, while users exist: logging in may help.
    #[error("authentication required: anonymous clients may not pull {image}")]
    AuthRequired { image: String },
    #[error("access denied: {who} may not pull {image}")]
    Denied { who: String, image: String },
    /// Credentials that do not verify (unknown user, wrong password, malformed).
    #[error("invalid credentials{}", user.as_ref().map(|u| format!(" for user `{u}`")).unwrap_or_default())]
    BadCredentials { user: Option<String> },
}

/// The credentials a request carries, as the API read them.
#[derive(Debug)]
pub enum Credentials {
    /// None, or Basic with an empty user name (what podman sends when it has none).
    None,
    Basic {
        user: String,
        password: Secret,
    },
    /// Ferry's own `[[pin]]` refresher.
    Internal(Secret),
    /// An `Authorization` header Ferry cannot read as any of those.
    Malformed,
}

/// Who a request is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    Anonymous,
    User(String),
    /// Ferry itself (pinned images): the operator configured those pulls.
    Internal,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Anonymous => f.write_str("anonymous"),
            Identity::User(u) => write!(f, "user `{u}`"),
            Identity::Internal => f.write_str("ferry (pin refresh)"),
        }
    }
}

/// The access policy of one configuration.
pub struct Policy {
    /// Anonymous rules by upstream name.
    anonymous: HashMap<String, Permissions>,
    /// `[[access.user]]` rules by user name.
    users: HashMap<String, Permissions>,
    htpasswd: Option<Mutex<Htpasswd>>,
    verified: Mutex<Verified>,
    /// Keys the verification cache, so its keys say nothing about passwords.
    cache_key: [u8; 32],
}

/// Successful verifications: cache key → the hash it verified against.
#[derive(Default)]
struct Verified {
    map: HashMap<[u8; 32], (String, String)>,
    order: VecDeque<[u8; 32]>,
}

impl Policy {
    pub fn new(config: &Config) -> Policy {
        let mut cache_key = [0u8; 32];
        getrandom::fill(&mut cache_key).expect("the OS random source works");
        Policy {
            anonymous: config
                .upstreams
                .iter()
                .map(|u| (u.name.clone(), u.anonymous.clone()))
                .collect(),
            users: config
                .access
                .users
                .iter()
                .map(|u| (u.name.clone(), u.rules.clone()))
                .collect(),
            htpasswd: config.access.htpasswd.clone().map(Mutex::new),
            verified: Mutex::default(),
            cache_key,
        }
    }

    /// Whether users can log in (then anonymous denials invite them to).
    pub fn has_users(&self) -> bool {
        self.htpasswd.is_some()
    }

    /// The current htpasswd entries, re-read if the file changed (see
    /// [`Htpasswd::reload_if_changed`]).
    fn entries(&self) -> Option<Arc<HashMap<String, String>>> {
        let mut h = self.htpasswd.as_ref()?.lock().expect("htpasswd lock");
        h.reload_if_changed();
        Some(h.entries())
    }

    fn cache_key(&self, user: &str, password: &Secret) -> [u8; 32] {
        let mut h = sha2::Sha256::new();
        h.update(self.cache_key);
        h.update((user.len() as u64).to_le_bytes());
        h.update(user.as_bytes());
        h.update(password.expose().as_bytes());
        h.finalize().into()
    }

    fn remember(&self, key: [u8; 32], user: &str, hash: &str) {
        let mut v = self.verified.lock().expect("cache lock");
        if v.map
            .insert(key, (user.to_string(), hash.to_string()))
            .is_none()
        {
            v.order.push_back(key);
        }
        while v.order.len() > VERIFIED_CACHE {
            if let Some(old) = v.order.pop_front() {
                v.map.remove(&old);
            }
        }
    }

    fn recalled(&self, key: &[u8; 32], user: &str, hash: &str) -> bool {
        // A changed hash (new password in the file) no longer counts.
        self.verified
            .lock()
            .expect("cache lock")
            .map
            .get(key)
            .is_some_and(|(u, h)| u == user && h == hash)
    }

    fn rules(&self, who: &Identity, upstream: &str) -> Option<&Permissions> {
        match who {
            Identity::Anonymous => self.anonymous.get(upstream),
            Identity::User(u) => self.users.get(u),
            Identity::Internal => None,
        }
    }
}

/// The access gate the API consults; holds the current [`Policy`], swappable.
pub struct Gate {
    policy: ArcSwap<Policy>,
    /// What Ferry's own pin refresher sends as a bearer token: random per process.
    internal: Secret,
    bcrypt: tokio::sync::Semaphore,
}

impl Gate {
    pub fn new(config: &Config) -> Gate {
        let mut token = [0u8; 32];
        getrandom::fill(&mut token).expect("the OS random source works");
        Gate {
            policy: ArcSwap::from_pointee(Policy::new(config)),
            internal: Secret::new(hex::encode(token)),
            bcrypt: tokio::sync::Semaphore::new(CONCURRENT_BCRYPT),
        }
    }

    /// Installs the policy of a new configuration; requests already checked keep
    /// their answer, the next ones get the new policy.
    pub fn replace(&self, config: &Config) {
        self.policy.store(Arc::new(Policy::new(config)));
    }

    /// Whether users can log in: clients are then told they may send Basic credentials.
    pub fn has_users(&self) -> bool {
        self.policy.load().has_users()
    }

    /// The bearer token Ferry's own pin refresher authenticates with.
    pub fn internal_token(&self) -> &Secret {
        &self.internal
    }

    /// Who `credentials` are. Without users configured, credentials are ignored (a
    /// node may send the real registry's credentials to its mirror).
    pub async fn identify(&self, credentials: Credentials) -> Result<Identity, Error> {
        if let Credentials::Internal(token) = &credentials
            && self.internal.matches(token.expose().as_bytes())
        {
            return Ok(Identity::Internal);
        }
        let policy = self.policy.load_full();
        // Without users, credentials are ignored; a request without any (a node) is
        // anonymous without a look at the htpasswd file.
        if !policy.has_users() {
            return Ok(Identity::Anonymous);
        }
        let (user, password) = match credentials {
            Credentials::None => return Ok(Identity::Anonymous),
            Credentials::Basic { user, password } => (user, password),
            Credentials::Internal(_) | Credentials::Malformed => {
                return Err(Error::BadCredentials { user: None });
            }
        };
        let Some(entries) = policy.entries() else {
            return Ok(Identity::Anonymous);
        };
        let bad = || Error::BadCredentials {
            user: Some(user.clone()),
        };
        let Some(hash) = entries.get(&user).cloned() else {
            return Err(bad());
        };
        let key = policy.cache_key(&user, &password);
        if policy.recalled(&key, &user, &hash) {
            return Ok(Identity::User(user));
        }
        let ok = {
            let _permit = self.bcrypt.acquire().await.expect("never closed");
            let h = hash.clone();
            tokio::task::spawn_blocking(move || bcrypt::verify(password.expose(), &h))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(false)
        };
        if !ok {
            return Err(bad());
        }
        policy.remember(key, &user, &hash);
        Ok(Identity::User(user))
    }

    /// Whether `who` may pull `repository` of the upstream `upstream` (serving
    /// `registry`).
    pub fn check(
        &self,
        who: &Identity,
        upstream: &str,
        registry: &str,
        repository: &str,
    ) -> Result<(), Error> {
        let policy = self.policy.load();
        let full = || format!("{registry}/{repository}");
        let permitted = match policy.rules(who, upstream) {
            None => true,
            Some(rules) => match who {
                Identity::User(_) => rules.permits(&full()),
                _ => rules.permits(repository),
            },
        };
        match (permitted, who) {
            (true, _) => Ok(()),
            (false, Identity::Anonymous) if policy.has_users() => {
                Err(Error::AuthRequired { image: full() })
            }
            (false, who) => Err(Error::Denied {
                who: who.to_string(),
                image: full(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config with two upstreams, anonymous rules on one, and (optionally) a user.
    fn access(with_user: bool) -> (tempfile::TempDir, Gate) {
        let dir = tempfile::tempdir().unwrap();
        let mut text = String::from(
            "[[upstream]]\nname = \"docker\"\nregistry = \"docker.io\"\nurl = \"https://registry-1.docker.io\"\n\
             [[upstream]]\nname = \"acr\"\nregistry = \"contoso.azurecr.io\"\nurl = \"https://contoso.azurecr.io\"\n\
             allow = [\"public/**\"]\ndeny = [\"public/secret\"]\n",
        );
        if with_user {
            let h = dir.path().join("htpasswd");
            std::fs::write(&h, format!("ci:{}\n", bcrypt::hash("pw", 4).unwrap())).unwrap();
            text += &format!(
                "[access]\nhtpasswd = \"{}\"\n[[access.user]]\nname = \"ci\"\ndeny = [\"docker.io/library/busybox\"]\n",
                h.display()
            );
        }
        let config = Config::parse("t", &text, &[]).unwrap();
        (dir, Gate::new(&config))
    }

    #[tokio::test]
    async fn decisions() {
        let anon = Identity::Anonymous;
        let (_d, open) = access(false);
        assert!(
            open.check(&anon, "docker", "docker.io", "library/busybox")
                .is_ok()
        );
        assert!(
            open.check(&anon, "acr", "contoso.azurecr.io", "public/a/b")
                .is_ok()
        );
        assert!(matches!(
            open.check(&anon, "acr", "contoso.azurecr.io", "public/secret"),
            Err(Error::Denied { .. })
        ));
        assert!(matches!(
            open.check(&anon, "acr", "contoso.azurecr.io", "private/app"),
            Err(Error::Denied { .. })
        ));
        // Without users, credentials are ignored.
        let basic = || Credentials::Basic {
            user: "ci".into(),
            password: Secret::new("pw"),
        };
        assert_eq!(open.identify(basic()).await.unwrap(), anon);

        let (_d, users) = access(true);
        assert!(matches!(
            users.check(&anon, "acr", "contoso.azurecr.io", "private/app"),
            Err(Error::AuthRequired { .. })
        ));
        let ci = users.identify(basic()).await.unwrap();
        assert_eq!(ci, Identity::User("ci".into()));
        // Remembered: the second check does not need bcrypt (same answer either way).
        assert_eq!(users.identify(basic()).await.unwrap(), ci);
        assert!(
            users
                .check(&ci, "acr", "contoso.azurecr.io", "private/app")
                .is_ok()
        );
        assert!(matches!(
            users.check(&ci, "docker", "docker.io", "library/busybox"),
            Err(Error::Denied { .. })
        ));
        let wrong = Credentials::Basic {
            user: "ci".into(),
            password: Secret::new("nope"),
        };
        assert!(matches!(
            users.identify(wrong).await,
            Err(Error::BadCredentials { .. })
        ));
        let internal = Credentials::Internal(users.internal_token().clone());
        assert_eq!(users.identify(internal).await.unwrap(), Identity::Internal);
        assert!(matches!(
            users
                .identify(Credentials::Internal(Secret::new("guess")))
                .await,
            Err(Error::BadCredentials { .. })
        ));
    }
}
