//! Bearer tokens: their lifetimes, and the Docker token endpoint
//! (`GET <realm>?service=…&scope=…`, distribution's token spec).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use http::HeaderValue;
use url::Url;

use super::Error;
use super::body::{self, Bound};
use crate::config::Secret;

/// A bearer token and when to stop using it.
#[derive(Clone)]
pub struct Token {
    value: Secret,
    /// Past this, the token is not sent: it would expire in flight.
    expires: Instant,
    /// Past this, a fresh token is fetched in the background while this one is
    /// still used, so no request waits for a refresh.
    renew_at: Instant,
}

impl Token {
    /// A token valid for `lifetime` from now.
    pub fn new(value: String, lifetime: Duration) -> Token {
        let now = Instant::now();
        // Stop using a token a little before its end: clocks differ, requests take time,
        // and `exp` has one-second granularity.
        let skew = (lifetime / 10).clamp(Duration::from_secs(1), Duration::from_secs(30));
        Token {
            value: Secret::new(value),
            expires: now + lifetime.saturating_sub(skew),
            renew_at: now + lifetime * 3 / 4,
        }
    }

    /// A JWT, valid until its `exp` claim; `fallback` when it has none.
    pub fn from_jwt(value: String, fallback: Duration) -> Token {
        let lifetime = jwt_expiry(&value)
            .map(|exp| {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                Duration::from_secs(exp).saturating_sub(now)
            })
            .unwrap_or(fallback);
        Token::new(value, lifetime)
    }

    pub fn secret(&self) -> &Secret {
        &self.value
    }

    pub fn is_usable(&self) -> bool {
        Instant::now() < self.expires
    }

    pub fn is_due_for_renewal(&self) -> bool {
        Instant::now() >= self.renew_at
    }

    /// `Authorization: Bearer <token>`, marked sensitive.
    pub fn header(&self) -> Option<HeaderValue> {
        bearer(self.value.expose())
    }
}

pub fn bearer(token: &str) -> Option<HeaderValue> {
    let mut v = HeaderValue::from_str(&format!("Bearer {token}")).ok()?;
    v.set_sensitive(true);
    Some(v)
}

/// The `exp` claim of a JWT, read without verifying it: the issuer checks its own
/// tokens, Ferry only needs to know when to stop sending one.
fn jwt_expiry(jwt: &str) -> Option<u64> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()?
        .get("exp")?
        .as_u64()
}

/// The largest token answer Ferry reads. Real ones are small: Docker Hub's and ACR's
/// JWTs are a few KiB, and an answer carries one twice at most (`token` and
/// `access_token`) beside a refresh token. An endless or huge answer stops here
/// rather than in Ferry's memory.
const ANSWER_LIMIT: usize = 64 << 10;

/// The largest token Ferry sends as a header, with room for the largest JWTs seen in
/// practice; front ends refuse much larger headers anyway (nginx's default is 8 KiB).
const TOKEN_LIMIT: usize = 16 << 10;

/// Fetches a token for `scope` from a Docker token endpoint, with Basic credentials
/// when Ferry has them (the caller checked that they may go to `realm`). The answer
/// must come within `read_timeout` (the upstream's).
pub async fn fetch(
    http: &reqwest::Client,
    upstream: &str,
    realm: &Url,
    service: Option<&str>,
    scope: &str,
    basic: Option<HeaderValue>,
    read_timeout: Duration,
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
    if let Some(b) = basic {
        req = req.header(http::header::AUTHORIZATION, b);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| Error::from_reqwest(upstream, &e))?;
    let resp = check_status(upstream, resp)?;
    #[derive(serde::Deserialize)]
    struct TokenResponse {
        token: Option<String>,
        access_token: Option<String>,
        expires_in: Option<u64>,
    }
    let body: TokenResponse = read_json(upstream, resp, "token response", read_timeout).await?;
    let value = body
        .token
        .or(body.access_token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| protocol(upstream, "the token endpoint's answer holds no token"))?;
    let value = checked(upstream, "token", value)?;
    // The spec's default and minimum lifetime is 60 s.
    Ok(Token::new(
        value,
        Duration::from_secs(body.expires_in.unwrap_or(60).max(60)),
    ))
}

/// `value` if it can be sent as a header as it is: visible ASCII only (the characters
/// of RFC 6750's `b64token` and of the opaque tokens registries issue), at most
/// [`TOKEN_LIMIT`] bytes. `what` names it in the error.
pub fn checked(upstream: &str, what: &'static str, value: String) -> Result<String, Error> {
    if value.len() > TOKEN_LIMIT {
        return Err(Error::TooLarge {
            upstream: upstream.to_string(),
            what,
            limit: TOKEN_LIMIT,
        });
    }
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(protocol(
            upstream,
            &format!("the {what} it issued is not a valid header value"),
        ));
    }
    Ok(value)
}

/// Maps a token endpoint's error statuses; 400 is how some (ACR) refuse credentials.
pub fn check_status(upstream: &str, resp: reqwest::Response) -> Result<reqwest::Response, Error> {
    match resp.status().as_u16() {
        200..=299 => Ok(resp),
        400 => Err(Error::Unauthorized {
            upstream: upstream.to_string(),
        }),
        _ => Err(Error::from_status(upstream, resp.status(), resp.headers())),
    }
}

/// Reads a token endpoint's JSON answer, at most [`ANSWER_LIMIT`] bytes within
/// `deadline`. reqwest's read timeout bounds the wait for the headers, but on a body
/// it restarts with every chunk: an answer dripping in would never end.
pub async fn read_json<T: serde::de::DeserializeOwned>(
    upstream: &str,
    resp: reqwest::Response,
    what: &'static str,
    deadline: Duration,
) -> Result<T, Error> {
    let bound = Bound {
        what,
        limit: ANSWER_LIMIT,
        deadline,
    };
    let bytes = body::read(upstream, resp, bound, |_| {}).await?;
    serde_json::from_slice(&bytes)
        .map_err(|_| protocol(upstream, &format!("the {what} is not the expected JSON")))
}

pub fn protocol(upstream: &str, detail: &str) -> Error {
    Error::Protocol {
        upstream: upstream.to_string(),
        detail: detail.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_jwt_expiry() {
        let enc = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let jwt = format!(
            "{}.{}.sig",
            enc(r#"{"alg":"ES256"}"#),
            enc(&format!(r#"{{"exp":{}}}"#, now + 4500))
        );
        assert_eq!(jwt_expiry(&jwt), Some(now + 4500));
        let t = Token::from_jwt(jwt, Duration::from_secs(1));
        assert!(t.is_usable() && !t.is_due_for_renewal());
        assert_eq!(jwt_expiry("opaque"), None);
        let t = Token::from_jwt("opaque".into(), Duration::ZERO);
        assert!(!t.is_usable());
    }

    #[test]
    fn refuses_tokens_that_cannot_be_headers() {
        assert_eq!(
            checked("u", "token", "eyJ.a-b_c.d~+/=".into()).unwrap(),
            "eyJ.a-b_c.d~+/="
        );
        for bad in ["", "a b", "a\r\nX-Injected: 1", "caf\u{e9}", "tab\there"] {
            assert!(
                matches!(
                    checked("u", "token", bad.into()),
                    Err(Error::Protocol { .. })
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            checked("u", "token", "a".repeat(TOKEN_LIMIT + 1)),
            Err(Error::TooLarge { .. })
        ));
        assert!(checked("u", "token", "a".repeat(TOKEN_LIMIT)).is_ok());
    }
}
