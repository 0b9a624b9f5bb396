//! Image names as operators and bundles write them, `[registry/]repository[:tag|@digest]`,
//! and their resolution to a cached repository through Ferry's own routing.

use std::fmt;

use ferry_oci::{Digest, Reference, RepoName};

use ferry_storage::Repo;

use super::Error;
use crate::config::Config;

/// A parsed image name. `registry` is the host (or an upstream's short name) when
/// the first component names one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ImageName {
    pub registry: Option<String>,
    pub repo: RepoName,
    pub reference: Option<Reference>,
}

impl ImageName {
    /// Parses `s`. The first path component is a registry if it is an upstream's
    /// registry or short name, or looks like a host (a dot, a port or `localhost`),
    /// the rule Docker uses: so `team/app` names no registry, `ghcr.io/team/app` does.
    pub fn parse(s: &str, config: &Config) -> Result<ImageName, Error> {
        let bad = |reason: &str| Error::ImageName {
            name: s.chars().take(300).collect(),
            reason: reason.to_string(),
        };
        let (name, reference) = if let Some((name, digest)) = s.split_once('@') {
            let d: Digest = digest.parse().map_err(|e| bad(&format!("{e}")))?;
            (name, Some(Reference::Digest(d)))
        } else {
            match s.rsplit_once(':') {
                // A colon before the last slash is a registry's port, not a tag.
                Some((name, tag)) if !tag.contains('/') => {
                    let tag = tag.parse().map_err(|e| bad(&format!("{e}")))?;
                    (name, Some(Reference::Tag(tag)))
                }
                _ => (s, None),
            }
        };
        let (registry, path) = match name.split_once('/') {
            Some((first, rest)) if names_registry(first, config) => (Some(first), rest),
            _ => (None, name),
        };
        let repo: RepoName = path
            .parse()
            .map_err(|_| bad("not a valid repository name (lowercase, a-z 0-9 . _ - /)"))?;
        Ok(ImageName {
            registry: registry.map(str::to_ascii_lowercase),
            repo,
            reference,
        })
    }

    /// The repository Ferry caches this name under, routed as a request for it
    /// would be: with no registry named, to the default upstream. Also returns the
    /// upstream's registry host, the name the bundle records.
    pub fn route(&self, config: &Config) -> Result<(Repo, String), Error> {
        // An upstream's short name stands for its registry, as a path prefix does.
        let ns = self.registry.as_deref().map(|r| {
            config
                .upstreams
                .iter()
                .find(|u| u.name == r)
                .map_or(r, |u| u.registry.as_str())
        });
        crate::proxy::route_offline(config, &self.repo, ns).map_err(|error| Error::Route {
            name: self.to_string(),
            error,
        })
    }
}

impl fmt::Display for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(r) = &self.registry {
            write!(f, "{r}/")?;
        }
        write!(f, "{}", self.repo)?;
        match &self.reference {
            Some(Reference::Tag(t)) => write!(f, ":{t}"),
            Some(Reference::Digest(d)) => write!(f, "@{d}"),
            None => Ok(()),
        }
    }
}

/// The full name a bundle records for an image: `<registry>/<repository>` at the
/// upstream, then `:tag` or `@digest`. skopeo's `oci-archive:FILE:<name>` finds it.
pub(crate) fn full_ref(registry: &str, repo: &RepoName, reference: &Reference) -> String {
    match reference {
        Reference::Tag(t) => format!("{registry}/{repo}:{t}"),
        Reference::Digest(d) => format!("{registry}/{repo}@{d}"),
    }
}

fn names_registry(first: &str, config: &Config) -> bool {
    first.contains(['.', ':'])
        || first == "localhost"
        || config
            .upstreams
            .iter()
            .any(|u| u.name == first || u.registry == first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::parse("test", crate::config::DEFAULT_CONFIG, &[]).unwrap()
    }

    fn parse(s: &str) -> ImageName {
        ImageName::parse(s, &config()).unwrap()
    }

    #[test]
    fn names_with_and_without_registry() {
        let n = parse("registry.example:5000/team/app:v1");
        assert_eq!(n.registry.as_deref(), Some("registry.example:5000"));
        assert_eq!(n.repo.as_str(), "team/app");
        assert_eq!(n.reference, Some(Reference::Tag("v1".parse().unwrap())));
        assert_eq!(n.to_string(), "registry.example:5000/team/app:v1");

        let n = parse("team/app");
        assert_eq!(
            (n.registry, n.repo.as_str(), n.reference),
            (None, "team/app", None)
        );

        // An upstream's short name counts as a registry.
        assert_eq!(parse("ghcr/a/b:1").registry.as_deref(), Some("ghcr"));

        let d = Digest::sha256_of(b"x");
        let n = parse(&format!("localhost/a@{d}"));
        assert_eq!(n.registry.as_deref(), Some("localhost"));
        assert_eq!(n.reference, Some(Reference::Digest(d)));

        for bad in ["Team/app:v1", "a/b:", "a/b@sha256:00", "registry.example/"] {
            assert!(ImageName::parse(bad, &config()).is_err(), "{bad}");
        }
    }

    #[test]
    fn full_refs() {
        let repo: RepoName = "team/app".parse().unwrap();
        assert_eq!(
            full_ref("r.example", &repo, &Reference::Tag("v1".parse().unwrap())),
            "r.example/team/app:v1"
        );
    }
}
