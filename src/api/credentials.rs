//! Reading a request's `Authorization` header into [`Credentials`], and the challenge
//! that invites Basic credentials.

use base64::Engine as _;
use http::{HeaderMap, HeaderValue};

use crate::access::Credentials;
use crate::secret::Secret;

/// `WWW-Authenticate` of Ferry's users (Basic, as `podman login` and containerd expect).
pub fn challenge() -> HeaderValue {
    HeaderValue::from_static("Basic realm=\"ferry\"")
}

pub fn from_headers(headers: &HeaderMap) -> Credentials {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Credentials::None;
    };
    let Some((scheme, rest)) = value.to_str().ok().and_then(|v| v.trim().split_once(' ')) else {
        return Credentials::Malformed;
    };
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Credentials::Internal(Secret::new(rest));
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return Credentials::Malformed;
    }
    let Some(text) = base64::engine::general_purpose::STANDARD
        .decode(rest)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
    else {
        return Credentials::Malformed;
    };
    match text.split_once(':') {
        // What podman and skopeo send after a Basic challenge when they hold no
        // credentials: an empty user (and password).
        Some(("", _)) => Credentials::None,
        Some((user, password)) => Credentials::Basic {
            user: user.to_string(),
            password: Secret::new(password),
        },
        None => Credentials::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(v: &str) -> Credentials {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_str(v).unwrap(),
        );
        from_headers(&h)
    }

    #[test]
    fn parses_basic() {
        assert!(matches!(from_headers(&HeaderMap::new()), Credentials::None));
        // "ci:pa:ss"
        match creds("Basic Y2k6cGE6c3M=") {
            Credentials::Basic { user, password } => {
                assert_eq!((user.as_str(), password.expose()), ("ci", "pa:ss"))
            }
            other => panic!("{other:?}"),
        }
        // ":" — no credentials at all.
        assert!(matches!(creds("Basic Og=="), Credentials::None));
        assert!(matches!(creds("Basic !!!"), Credentials::Malformed));
        assert!(matches!(creds("Digest x"), Credentials::Malformed));
        assert!(matches!(creds("Bearer t"), Credentials::Internal(_)));
    }
}
