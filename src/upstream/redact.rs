//! URLs as Ferry prints them. A URL an upstream hands Ferry (a redirect to a storage
//! account or a CDN) may carry a credential in its query (Azure SAS `sig=`, S3
//! `X-Amz-Signature=`, CDN tokens) or its userinfo, and errors, logs and the status
//! page are read by people who must not get it. Every URL Ferry prints goes through
//! [`url`]: query values and userinfo are replaced, while scheme, host, path and the
//! query's keys stay, so the message still says where Ferry went.

use url::Url;

const REDACTED: &str = "REDACTED";

/// `u` with every query value and any userinfo replaced by `REDACTED`, and without
/// its fragment. A query part that is not `key=value` with a plain key is replaced
/// whole: an opaque token may stand there alone.
pub fn url(u: &Url) -> String {
    let mut u = u.clone();
    if !u.username().is_empty() {
        let _ = u.set_username(REDACTED);
    }
    if u.password().is_some() {
        let _ = u.set_password(Some(REDACTED));
    }
    u.set_fragment(None);
    let query = u.query().map(|q| {
        q.split('&')
            .map(|part| match part.split_once('=') {
                Some((key, _)) if is_plain_key(key) => format!("{key}={REDACTED}"),
                _ if part.is_empty() => String::new(),
                _ => REDACTED.to_string(),
            })
            .collect::<Vec<_>>()
            .join("&")
    });
    u.set_query(query.as_deref());
    u.to_string()
}

/// A parameter name (`sig`, `X-Amz-Signature`, `api-version`), not something that
/// could itself be a secret.
fn is_plain_key(key: &str) -> bool {
    (1..=40).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// `text` with every occurrence of `u` (as it prints) replaced by its redacted form.
pub fn in_text(text: &str, u: &Url) -> String {
    text.replace(u.as_str(), &url(u))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_and_userinfo_are_redacted() {
        let u = Url::parse(
            "https://user:pw@acct.blob.core.windows.net/c/blob?sv=2021&se=2026-12-08T00%3A00Z&sig=SECRET%2Bx&opaqueSECRET2#frag",
        )
        .unwrap();
        let r = url(&u);
        assert_eq!(
            r,
            "https://REDACTED:REDACTED@acct.blob.core.windows.net/c/blob?sv=REDACTED&se=REDACTED&sig=REDACTED&REDACTED"
        );
        for secret in ["SECRET", "pw", "frag", "2021"] {
            assert!(!r.contains(secret), "{r}");
        }
        let plain = Url::parse("http://127.0.0.1:5000/v2/").unwrap();
        assert_eq!(url(&plain), "http://127.0.0.1:5000/v2/");
        let text = format!("error sending request for url ({u}): connection refused");
        let redacted = in_text(&text, &u);
        assert!(!redacted.contains("SECRET"), "{redacted}");
        assert!(redacted.contains("sig=REDACTED"), "{redacted}");
    }
}
