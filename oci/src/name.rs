//! Repository names, tags and references, validated against the distribution spec's
//! grammar. Once one of these exists, it is known to be safe in a URL path and a key.

use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;

use regex::Regex;

use crate::Digest;

static NAME_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$")
        .expect("repository name regex")
});
static TAG_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$").expect("tag regex"));

/// Many clients cap `host/` + name at 255 characters; Ferry holds names to that too.
const MAX_NAME_LEN: usize = 255;

/// A repository name such as `library/nginx`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid repository name `{0}`")]
pub struct NameError(pub String);

impl RepoName {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name split at its first `/`, if it has more than one component.
    pub fn split_first(&self) -> Option<(&str, RepoName)> {
        let (first, rest) = self.0.split_once('/')?;
        Some((first, RepoName(rest.to_string())))
    }

    /// `prefix/self`; the result of joining two valid names is valid.
    pub fn prefixed(&self, prefix: &RepoName) -> RepoName {
        RepoName(format!("{}/{}", prefix.0, self.0))
    }

    pub fn component_count(&self) -> usize {
        self.0.split('/').count()
    }
}

impl FromStr for RepoName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        if s.len() <= MAX_NAME_LEN && NAME_RE.is_match(s) {
            Ok(RepoName(s.to_string()))
        } else {
            Err(NameError(s.chars().take(300).collect()))
        }
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RepoName({})", self.0)
    }
}

/// A tag such as `1.27`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid tag `{0}`")]
pub struct TagError(pub String);

impl Tag {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The tag the referrers tag-schema fallback uses for `subject`: `<alg>-<hex>`,
    /// its reference part cut to 64 characters as the spec says.
    pub fn referrers_fallback(subject: &Digest) -> Tag {
        let hex: String = subject.hex().chars().take(64).collect();
        Tag(format!("{}-{hex}", subject.algorithm().name()))
    }
}

impl FromStr for Tag {
    type Err = TagError;
    fn from_str(s: &str) -> Result<Self, TagError> {
        if TAG_RE.is_match(s) {
            Ok(Tag(s.to_string()))
        } else {
            Err(TagError(s.chars().take(200).collect()))
        }
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tag({})", self.0)
    }
}

/// What a manifest request names: a tag or a digest, nothing else.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in [
            "a",
            "library/nginx",
            "a.b/c__d/e-f",
            "a---b",
            "docker.io/library/x",
        ] {
            assert!(ok.parse::<RepoName>().is_ok(), "{ok}");
        }
        for bad in [
            "",
            "A",
            "a/",
            "/a",
            "a//b",
            "../etc",
            "a/../b",
            "a%2Fb",
            "a/./b",
            "a_-b",
            "a:5000/b",
            &"a".repeat(256),
        ] {
            assert!(bad.parse::<RepoName>().is_err(), "{bad}");
        }
    }

    #[test]
    fn tags() {
        assert!("1.27".parse::<Tag>().is_ok());
        assert!("_x".parse::<Tag>().is_ok());
        assert!(".INVALID_MANIFEST_NAME".parse::<Tag>().is_err());
        assert!("a".repeat(129).parse::<Tag>().is_err());
        assert!("a/b".parse::<Tag>().is_err());
    }

    #[test]
    fn fallback_tag() {
        let d = Digest::sha256_of(b"x");
        assert_eq!(
            Tag::referrers_fallback(&d).as_str(),
            format!("sha256-{}", d.hex())
        );
    }
}
