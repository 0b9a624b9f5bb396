//! Credentials for one upstream: static Basic or Bearer, the Docker token flow
//! (`WWW-Authenticate: Bearer realm=…,service=…` → a token for an exact scope), and
//! for Entra ID identities, ACR's token exchange ([`super::acr`]).
//!
//! Credentials go to a token realm only on the registry's own host or on a host the
//! operator listed in `realm_hosts`, and never over plain HTTP when the registry itself
//! is reached over HTTPS: a registry (or whatever answers in its name) that names
//! another realm does not get them. Without credentials, any realm is asked: an
//! anonymous token gives nothing away.
//!
//! Tokens are cached per scope. A token past three quarters of its life is renewed in
//! the background while requests keep using it; only an expired (or rejected) token
//! makes requests wait, and then they share one fetch.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use http::HeaderValue;
use url::Url;

use super::Error;
use super::acr::Exchange;
use super::token::{self, Token};
use crate::config::{self, Auth};
use crate::metrics::UpstreamMetrics;
/// What the registry asked for in its last challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer { realm: Url, service: Option<String> },
}

impl Challenge {
    /// Parses a `WWW-Authenticate` value. Unknown schemes give `None`.
    pub fn parse(header: &str) -> Option<Challenge> {
        let header = header.trim();
        let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Some(Challenge::Basic);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let params = parse_params(rest);
        let realm = params.iter().find(|(k, _)| k == "realm")?.1.clone();
        let realm = Url::parse(&realm).ok()?;
        if !matches!(realm.scheme(), "http" | "https") {
            return None;
        }
        let service = params
            .into_iter()
            .find(|(k, _)| k == "service")
            .map(|(_, v)| v);
        Some(Challenge::Bearer { realm, service })
    }
}

/// `key="value", key=value` pairs (RFC 7235 auth-params), keys lowercased.
fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars
            .by_ref()
            .take_while(|c| *c != '=')
            .collect::<String>()
            .trim()
            .to_ascii_lowercase();
        if key.is_empty() {
            return out;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek().copied() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
            value = value.trim().to_string();
        }
        out.push((key, value));
    }
}

/// One scope's token, and the lock that lets a single fetch run at a time.
#[derive(Default)]
struct Slot {
    current: Mutex<Option<Token>>,
    fetching: Arc<tokio::sync::Mutex<()>>,
}

pub struct Authenticator {
    upstream: String,
    /// The registry's origin: where ACR credentials may go.
    origin: Url,
    /// Other hosts whose token realm may receive Basic credentials.
    realm_hosts: Vec<String>,
    /// How long a token answer may take to arrive.
    read_timeout: Duration,
    auth: Auth,
    acr: Option<Exchange>,
    challenge: Mutex<Option<Challenge>>,
    tokens: Mutex<HashMap<String, Arc<Slot>>>,
    /// Counts token fetches and renewals.
    metrics: UpstreamMetrics,
}

impl Authenticator {
    pub fn new(config: &config::Upstream, acr: Option<Exchange>, metrics: UpstreamMetrics) -> Self {
        Authenticator {
            upstream: config.name.clone(),
            origin: config.url.clone(),
            realm_hosts: config.realm_hosts.clone(),
            read_timeout: config.read_timeout,
            auth: config.auth.clone(),
            acr,
            challenge: Mutex::new(None),
            tokens: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    fn basic(&self) -> Option<HeaderValue> {
        match &self.auth {
            Auth::Basic { username, password } => {
                let raw = format!("{username}:{}", password.current().expose());
                let mut v = HeaderValue::from_str(&format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(raw)
                ))
                .ok()?;
                v.set_sensitive(true);
                Some(v)
            }
            _ => None,
        }
    }

    /// The `Authorization` to send for a request needing `scope`, from what is known
    /// so far (fetching a token when the registry is known to want one).
    pub async fn authorization(
        self: &Arc<Self>,
        http: &reqwest::Client,
        scope: &str,
    ) -> Result<Option<HeaderValue>, Error> {
        if let Auth::Bearer { token } = &self.auth {
            return Ok(token::bearer(token.current().expose()));
        }
        let challenge = self.challenge.lock().expect("challenge lock").clone();
        match challenge {
            None => Ok(None),
            Some(Challenge::Basic) => Ok(self.basic()),
            Some(Challenge::Bearer { realm, service }) => self
                .token(http, realm, service, scope, None)
                .await
                .map(Some),
        }
    }

    /// Handles a 401: learns the challenge and returns the `Authorization` to retry
    /// with, or `None` when nothing Ferry holds would help.
    pub async fn on_unauthorized(
        self: &Arc<Self>,
        http: &reqwest::Client,
        www_authenticate: Option<&str>,
        scope: &str,
        rejected: Option<&HeaderValue>,
    ) -> Result<Option<HeaderValue>, Error> {
        if matches!(self.auth, Auth::Bearer { .. }) {
            return Ok(None);
        }
        let Some(challenge) = www_authenticate.and_then(Challenge::parse) else {
            return Ok(None);
        };
        *self.challenge.lock().expect("challenge lock") = Some(challenge.clone());
        match challenge {
            // Sending the same Basic header again cannot succeed.
            Challenge::Basic => Ok(self.basic().filter(|b| Some(b) != rejected)),
            Challenge::Bearer { realm, service } => self
                .token(http, realm, service, scope, rejected)
                .await
                .map(Some),
        }
    }

    /// A token for `scope`: the cached one unless it expired or is the one the
    /// registry just `rejected`.
    async fn token(
        self: &Arc<Self>,
        http: &reqwest::Client,
        realm: Url,
        service: Option<String>,
        scope: &str,
        rejected: Option<&HeaderValue>,
    ) -> Result<HeaderValue, Error> {
        let slot = self
            .tokens
            .lock()
            .expect("token lock")
            .entry(scope.to_string())
            .or_default()
            .clone();
        let reusable =
            |t: &Token| t.is_usable() && (rejected.is_none() || t.header().as_ref() != rejected);
        let current = slot.current.lock().expect("slot lock").clone();
        if let Some(t) = current.filter(|t| reusable(t)) {
            if t.is_due_for_renewal()
                && let Ok(guard) = slot.fetching.clone().try_lock_owned()
            {
                let (this, http, slot, scope) =
                    (self.clone(), http.clone(), slot.clone(), scope.to_string());
                tokio::spawn(async move {
                    let _fetching = guard;
                    match this.fetch(&http, &realm, service.as_deref(), &scope).await {
                        Ok(t) => *slot.current.lock().expect("slot lock") = Some(t),
                        Err(e) => {
                            tracing::warn!(upstream = %this.upstream, error = %e, "renewing a token ahead of expiry failed; will retry")
                        }
                    }
                });
            }
            return t.header().ok_or_else(|| {
                token::protocol(&self.upstream, "token is not a valid header value")
            });
        }
        let _fetching = slot.fetching.lock().await;
        // Another request may have fetched one while this one waited.
        let current = slot.current.lock().expect("slot lock").clone();
        let t = match current.filter(|t| reusable(t)) {
            Some(t) => t,
            None => {
                let t = self.fetch(http, &realm, service.as_deref(), scope).await?;
                *slot.current.lock().expect("slot lock") = Some(t.clone());
                t
            }
        };
        t.header()
            .ok_or_else(|| token::protocol(&self.upstream, "token is not a valid header value"))
    }

    /// A new token for `scope` (counted, whether it came or not).
    async fn fetch(
        &self,
        http: &reqwest::Client,
        realm: &Url,
        service: Option<&str>,
        scope: &str,
    ) -> Result<Token, Error> {
        let t = self.fetch_uncounted(http, realm, service, scope).await;
        self.metrics.token_refresh(t.is_ok());
        t
    }

    async fn fetch_uncounted(
        &self,
        http: &reqwest::Client,
        realm: &Url,
        service: Option<&str>,
        scope: &str,
    ) -> Result<Token, Error> {
        let t = match &self.acr {
            Some(acr) => {
                let service = service.ok_or_else(|| {
                    token::protocol(&self.upstream, "ACR challenge without a service")
                })?;
                acr.access_token(http, &self.origin, realm, service, scope, self.read_timeout)
                    .await?
            }
            None => {
                let basic = self.basic();
                if basic.is_some() {
                    credentials_may_go_to(realm, &self.origin, &self.realm_hosts).map_err(
                        |detail| Error::RealmRefused {
                            upstream: self.upstream.clone(),
                            detail,
                        },
                    )?;
                }
                let read_timeout = self.read_timeout;
                token::fetch(
                    http,
                    &self.upstream,
                    realm,
                    service,
                    scope,
                    basic,
                    read_timeout,
                )
                .await?
            }
        };
        tracing::debug!(upstream = %self.upstream, scope, "fetched a registry token");
        Ok(t)
    }
}

/// Whether Ferry's credentials for the registry at `origin` may go to the token
/// `realm`; if not, why (for the error). Its own host, or one the operator listed in
/// `realm_hosts`; and no plain HTTP when the registry is HTTPS (an HTTP registry gets
/// them in clear text already, the operator chose that).
fn credentials_may_go_to(realm: &Url, origin: &Url, realm_hosts: &[String]) -> Result<(), String> {
    let host = realm.host_str().unwrap_or_default();
    let where_ = realm.origin().ascii_serialization();
    if realm.host_str() != origin.host_str() && !realm_hosts.iter().any(|h| h == host) {
        return Err(format!(
            "{where_}: that host is not the registry's own; if it is the registry's token service, add \"{host}\" to realm_hosts in this [[upstream]]"
        ));
    }
    if realm.scheme() != "https" && origin.scheme() == "https" {
        return Err(format!(
            "{where_}: that is plain HTTP, and the registry is reached over HTTPS"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_go_to_own_and_listed_hosts_only() {
        let url = |s: &str| Url::parse(s).unwrap();
        let hub = url("https://registry-1.docker.io");
        let listed = ["auth.docker.io".to_string()];
        let ok = |realm: &str, origin: &Url, hosts: &[String]| {
            credentials_may_go_to(&url(realm), origin, hosts)
        };
        assert_eq!(ok("https://auth.docker.io/token", &hub, &listed), Ok(()));
        assert_eq!(ok("https://registry-1.docker.io:8443/t", &hub, &[]), Ok(()));
        let e = ok("https://auth.docker.io/token", &hub, &[]).unwrap_err();
        assert!(
            e.contains("auth.docker.io") && e.contains("realm_hosts"),
            "{e}"
        );
        let e = ok("https://evil.example/token", &hub, &listed).unwrap_err();
        assert!(e.contains("evil.example"), "{e}");
        // No downgrade, not even to a listed host or to the registry's own.
        let e = ok("http://auth.docker.io/token", &hub, &listed).unwrap_err();
        assert!(e.contains("plain HTTP"), "{e}");
        assert!(ok("http://registry-1.docker.io/token", &hub, &[]).is_err());
        // A plain HTTP registry: its own host (any port) and listed hosts.
        let local = url("http://127.0.0.1:5000");
        assert_eq!(ok("http://127.0.0.1:5001/token", &local, &[]), Ok(()));
        assert!(ok("http://127.0.0.2:5001/token", &local, &[]).is_err());
        assert_eq!(
            ok(
                "http://127.0.0.2:5001/token",
                &local,
                &["127.0.0.2".to_string()]
            ),
            Ok(())
        );
    }

    #[test]
    fn parses_challenges() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#,
        )
        .unwrap();
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: Url::parse("https://auth.docker.io/token").unwrap(),
                service: Some("registry.docker.io".into())
            }
        );
        assert_eq!(
            Challenge::parse(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(Challenge::parse("Negotiate"), None);
        assert_eq!(
            Challenge::parse(r#"Bearer realm="file:///etc/passwd""#),
            None
        );
        let c = Challenge::parse(r#"bearer service="a, b", realm=http://x/t"#).unwrap();
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: Url::parse("http://x/t").unwrap(),
                service: Some("a, b".into())
            }
        );
    }
}
