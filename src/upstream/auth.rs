//! Credentials for one upstream: static Basic or Bearer, and the Docker token flow
//! (`WWW-Authenticate: Bearer realm=…,service=…` → token for an exact scope).
//!
//! Tokens are cached per scope until shortly before they expire. One async mutex per
//! scope makes concurrent requests share a single token fetch.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use http::HeaderValue;
use url::Url;

use super::Error;
use crate::config::{Auth, Secret};

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

#[derive(Clone)]
struct Token {
    value: Secret,
    expires: Instant,
}

type TokenSlot = Arc<tokio::sync::Mutex<Option<Token>>>;

pub struct Authenticator {
    upstream: String,
    auth: Auth,
    challenge: Mutex<Option<Challenge>>,
    tokens: Mutex<HashMap<String, TokenSlot>>,
}

impl Authenticator {
    pub fn new(upstream: &str, auth: Auth) -> Self {
        Authenticator {
            upstream: upstream.to_string(),
            auth,
            challenge: Mutex::new(None),
            tokens: Mutex::new(HashMap::new()),
        }
    }

    fn basic(&self) -> Option<HeaderValue> {
        match &self.auth {
            Auth::Basic { username, password } => {
                let raw = format!("{username}:{}", password.expose());
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

    fn bearer(token: &str) -> Option<HeaderValue> {
        let mut v = HeaderValue::from_str(&format!("Bearer {token}")).ok()?;
        v.set_sensitive(true);
        Some(v)
    }

    /// The `Authorization` to send for a request needing `scope`, from what is known
    /// so far (fetching a token when the registry is known to want one).
    pub async fn authorization(
        &self,
        http: &reqwest::Client,
        scope: &str,
    ) -> Result<Option<HeaderValue>, Error> {
        if let Auth::Bearer { token } = &self.auth {
            return Ok(Self::bearer(token.expose()));
        }
        let challenge = self.challenge.lock().expect("challenge lock").clone();
        match challenge {
            None => Ok(None),
            Some(Challenge::Basic) => Ok(self.basic()),
            Some(Challenge::Bearer { realm, service }) => self
                .token(http, &realm, service.as_deref(), scope, None)
                .await
                .map(Some),
        }
    }

    /// Handles a 401: learns the challenge and returns the `Authorization` to retry
    /// with, or `None` when nothing Ferry holds would help.
    pub async fn on_unauthorized(
        &self,
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
            Challenge::Basic => {
                let basic = self.basic();
                // Sending the same Basic header again cannot succeed.
                Ok(basic.filter(|b| Some(b) != rejected))
            }
            Challenge::Bearer { realm, service } => self
                .token(http, &realm, service.as_deref(), scope, rejected)
                .await
                .map(Some),
        }
    }

    /// A token for `scope`, from the cache unless it is expired or is the one the
    /// registry just `rejected`.
    async fn token(
        &self,
        http: &reqwest::Client,
        realm: &Url,
        service: Option<&str>,
        scope: &str,
        rejected: Option<&HeaderValue>,
    ) -> Result<HeaderValue, Error> {
        let slot = {
            let mut tokens = self.tokens.lock().expect("token lock");
            tokens.entry(scope.to_string()).or_default().clone()
        };
        let mut cached = slot.lock().await;
        if let Some(t) = cached.as_ref() {
            let header = Self::bearer(t.value.expose());
            let was_rejected = rejected.is_some() && header.as_ref() == rejected;
            if t.expires > Instant::now() && !was_rejected {
                return header.ok_or_else(|| self.protocol("token is not a valid header value"));
            }
        }
        let fresh = self.fetch_token(http, realm, service, scope).await?;
        let header = Self::bearer(fresh.value.expose())
            .ok_or_else(|| self.protocol("token is not a valid header value"))?;
        *cached = Some(fresh);
        Ok(header)
    }

    fn protocol(&self, detail: &str) -> Error {
        Error::Protocol {
            upstream: self.upstream.clone(),
            detail: detail.to_string(),
        }
    }

    async fn fetch_token(
        &self,
        http: &reqwest::Client,
        realm: &Url,
        service: Option<&str>,
        scope: &str,
    ) -> Result<Token, Error> {
        let mut url = realm.clone();
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            q.append_pair("scope", scope);
        }
        let mut req = http.get(url);
        if let Some(b) = self.basic() {
            req = req.header(http::header::AUTHORIZATION, b);
        }
        let started = Instant::now();
        let resp = req
            .send()
            .await
            .map_err(|e| Error::from_reqwest(&self.upstream, &e))?;
        match resp.status().as_u16() {
            200..=299 => {}
            401 => {
                return Err(Error::Unauthorized {
                    upstream: self.upstream.clone(),
                });
            }
            403 => {
                return Err(Error::Denied {
                    upstream: self.upstream.clone(),
                });
            }
            429 => {
                let retry_after = resp
                    .headers()
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                return Err(Error::TooManyRequests {
                    upstream: self.upstream.clone(),
                    retry_after,
                });
            }
            s => {
                return Err(Error::Status {
                    upstream: self.upstream.clone(),
                    status: s,
                });
            }
        }
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| Error::from_reqwest(&self.upstream, &e))?;
        let body: TokenResponse = serde_json::from_slice(&bytes)
            .map_err(|_| self.protocol("the token endpoint's answer is not a token response"))?;
        let value = body
            .token
            .or(body.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| self.protocol("the token endpoint's answer holds no token"))?;
        // The spec's default and minimum lifetime is 60 s. Renew a little early so a
        // token never expires between being chosen and being checked.
        let lifetime = Duration::from_secs(body.expires_in.unwrap_or(60).max(60));
        let margin = (lifetime / 10).min(Duration::from_secs(30));
        tracing::debug!(upstream = %self.upstream, scope, "fetched a registry token");
        Ok(Token {
            value: Secret::new(value),
            expires: started + lifetime - margin,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
