//! Parsing `/v2/<name>/<endpoint>` paths. Names may have any number of components,
//! so one wildcard route takes every `/v2/…` path and this module splits it.
//!
//! The raw (still percent-encoded) path is parsed: an encoded `/` or `.` cannot sneak
//! past the name grammar, because `%` is not in it.

use ferry_oci::{Digest, Reference, RepoName};

use super::error::ApiError;

/// The endpoint a `/v2/…` path names.
#[derive(Debug, PartialEq, Eq)]
pub enum Endpoint {
    Manifest(RepoName, Reference),
    Blob(RepoName, Digest),
    Tags(RepoName),
    Referrers(RepoName, Digest),
    /// Blob upload endpoints: refused, Ferry is read-only.
    Upload,
}

/// Parses the part of the path after `/v2/`.
pub fn parse(rest: &str) -> Result<Endpoint, ApiError> {
    let segs: Vec<&str> = rest.split('/').collect();
    let n = segs.len();
    let name = |upto: usize| -> Result<RepoName, ApiError> {
        Ok(segs[..upto].join("/").parse::<RepoName>()?)
    };
    if n >= 3 && segs[n - 3] == "blobs" && segs[n - 2] == "uploads"
        || n >= 2 && segs[n - 2] == "blobs" && segs[n - 1] == "uploads"
    {
        return Ok(Endpoint::Upload);
    }
    if n < 3 {
        return Err(ApiError::UnknownEndpoint);
    }
    let last = segs[n - 1];
    match segs[n - 2] {
        "tags" if last == "list" => Ok(Endpoint::Tags(name(n - 2)?)),
        "manifests" => {
            let name = name(n - 2)?;
            Ok(Endpoint::Manifest(name, reference(last)?))
        }
        "blobs" => {
            let name = name(n - 2)?;
            Ok(Endpoint::Blob(name, last.parse()?))
        }
        "referrers" => {
            let name = name(n - 2)?;
            Ok(Endpoint::Referrers(name, last.parse()?))
        }
        _ => Err(ApiError::UnknownEndpoint),
    }
}

/// A manifest reference in a path: a digest (it has a `:`) or a tag.
pub fn reference(segment: &str) -> Result<Reference, ApiError> {
    Ok(if segment.contains(':') {
        Reference::Digest(segment.parse()?)
    } else {
        Reference::Tag(segment.parse()?)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest() -> String {
        format!("sha256:{}", "a".repeat(64))
    }

    #[test]
    fn endpoints() {
        assert!(
            matches!(parse("library/nginx/manifests/1.27"), Ok(Endpoint::Manifest(n, Reference::Tag(_))) if n.as_str() == "library/nginx")
        );
        assert!(matches!(
            parse(&format!("a/b/c/manifests/{}", digest())),
            Ok(Endpoint::Manifest(_, Reference::Digest(_)))
        ));
        assert!(matches!(
            parse(&format!("a/blobs/{}", digest())),
            Ok(Endpoint::Blob(..))
        ));
        assert!(matches!(parse("a/b/tags/list"), Ok(Endpoint::Tags(n)) if n.as_str() == "a/b"));
        assert!(matches!(
            parse(&format!("a/referrers/{}", digest())),
            Ok(Endpoint::Referrers(..))
        ));
        assert_eq!(parse("a/blobs/uploads/").unwrap(), Endpoint::Upload);
        assert_eq!(parse("a/blobs/uploads").unwrap(), Endpoint::Upload);
        assert_eq!(
            parse("a/blobs/uploads/some-uuid").unwrap(),
            Endpoint::Upload
        );
        // A repository may itself be called "tags" or "manifests".
        assert!(
            matches!(parse("manifests/manifests/x"), Ok(Endpoint::Manifest(n, _)) if n.as_str() == "manifests")
        );
    }

    #[test]
    fn bad_input() {
        assert!(matches!(
            parse("a/manifests/sha256:totallywrong"),
            Err(ApiError::DigestInvalid(_))
        ));
        assert!(matches!(
            parse("a/manifests/.INVALID_MANIFEST_NAME"),
            Err(ApiError::TagInvalid(_))
        ));
        assert!(matches!(
            parse("A/manifests/x"),
            Err(ApiError::NameInvalid(_))
        ));
        assert!(matches!(
            parse("a/../b/manifests/x"),
            Err(ApiError::NameInvalid(_))
        ));
        assert!(matches!(
            parse("a%2Fb/manifests/x"),
            Err(ApiError::NameInvalid(_))
        ));
        assert!(matches!(
            parse("a/%2e%2e/manifests/x"),
            Err(ApiError::NameInvalid(_))
        ));
        assert!(matches!(
            parse("a//b/manifests/x"),
            Err(ApiError::NameInvalid(_))
        ));
        assert!(matches!(
            parse(&format!("a/blobs/sha256:{}", "A".repeat(64))),
            Err(ApiError::DigestInvalid(_))
        ));
        assert!(matches!(
            parse("a/whatever"),
            Err(ApiError::UnknownEndpoint)
        ));
        assert!(matches!(
            parse("manifests/x"),
            Err(ApiError::UnknownEndpoint)
        ));
    }
}
