//! Image names in bundles: which cached repository a name means (routed as a pull of
//! it would be, by [`crate::proxy::route_offline`]), and the full name a bundle
//! records. Names are parsed by [`crate::image::ImageName`], as in every command.

use ferry_oci::{Reference, RepoName};

use ferry_storage::Repo;

use super::Error;
use crate::config::Config;
use crate::image::ImageName;

/// The repository Ferry caches `image` under, routed as a request for it would be
/// (with no registry named, to the default upstream), and the upstream's registry
/// host, the name the bundle records.
pub(crate) fn route(image: &ImageName, config: &Config) -> Result<(Repo, String), Error> {
    crate::proxy::route_offline(config, image).map_err(|error| Error::Route {
        name: image.to_string(),
        error,
    })
}

/// The full name a bundle records for an image: `<registry>/<repository>` at the
/// upstream, then `:tag` or `@digest`. skopeo's `oci-archive:FILE:<name>` finds it.
pub(crate) fn full_ref(registry: &str, repo: &RepoName, reference: &Reference) -> String {
    match reference {
        Reference::Tag(t) => format!("{registry}/{repo}:{t}"),
        Reference::Digest(d) => format!("{registry}/{repo}@{d}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::parse("test", crate::config::DEFAULT_CONFIG, &[]).unwrap()
    }

    /// Every form a user writes routes to the repository a pull of it reaches.
    #[test]
    fn names_route_as_pulls_do() {
        let config = config();
        for (written, upstream, repo, registry) in [
            ("ghcr.io/a/b:1", "ghcr", "a/b", "ghcr.io"),
            ("ghcr/a/b:1", "ghcr", "a/b", "ghcr.io"),
            ("nginx", "docker", "library/nginx", "docker.io"),
            ("library/nginx", "docker", "library/nginx", "docker.io"),
            ("docker.io/nginx", "docker", "library/nginx", "docker.io"),
            (
                "index.docker.io/nginx",
                "docker",
                "library/nginx",
                "docker.io",
            ),
            ("someone/app", "docker", "someone/app", "docker.io"),
        ] {
            let (r, reg) = route(&written.parse().unwrap(), &config).unwrap();
            assert_eq!(
                (r.upstream.as_str(), r.name.as_str(), reg.as_str()),
                (upstream, repo, registry),
                "{written}"
            );
        }
        let e = route(&"unknown.example:5000/a".parse().unwrap(), &config)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown.example:5000"), "{e}");
        let e = "Team/app:v1".parse::<ImageName>().unwrap_err().to_string();
        assert!(e.contains("Team/app"), "{e}");
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
