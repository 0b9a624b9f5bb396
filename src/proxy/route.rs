//! Which upstream, and which repository there, a request means.

use std::sync::Arc;

use ferry_oci::RepoName;

use ferry_storage::Repo;

use super::{Error, Proxy, Result, Settings, Target};
use crate::cache_rules::CacheRules;
use crate::config::{self, Config};
use crate::image::ImageName;
use crate::upstream;

impl Proxy {
    /// Picks the upstream for a request for `name`:
    /// 1. The registry the client meant: `ns` (containerd's mirror parameter, the
    ///    path then being the repository as is), else a first path component that
    ///    names a registry Ferry serves, or an upstream's short name (stripped:
    ///    `docker.io/library/nginx`, `corp/team/app`).
    /// 2. A cache rule for that registry maps the request to its upstream and
    ///    target repository (`mcr.microsoft.com/x` → `acr`, `aks-managed-repository/x`).
    /// 3. Otherwise the upstream serving that registry; with no registry named, the
    ///    upstream marked `default`.
    pub fn route(&self, name: &RepoName, ns: Option<&str>) -> Result<Target> {
        self.settings.load().route(name, ns)
    }

    /// The repository `repo` at the upstream named `upstream` (a request between
    /// replicas, which names both as the asker routed them).
    pub fn target_of(&self, upstream: &str, repo: RepoName) -> Result<Target> {
        let settings = self.settings.load();
        let up = settings
            .upstreams
            .iter()
            .find(|u| u.name() == upstream)
            .ok_or_else(|| Error::NoUpstream {
                requested: upstream.to_string(),
                registries: settings
                    .upstreams
                    .iter()
                    .map(|u| u.name().to_string())
                    .collect(),
            })?;
        Ok(target(up, repo))
    }

    /// Routes an image as a user names it (`ferry prefetch`, `[[pin]]`) the way a pull
    /// of it is routed: the registry it starts with is the `ns` a mirror sends.
    pub fn route_image(&self, image: &ImageName) -> Result<Target> {
        self.route(&image.repo, image.registry.as_deref())
    }
}

impl Settings {
    fn route(&self, name: &RepoName, ns: Option<&str>) -> Result<Target> {
        let (up, repo) = pick(&self.upstreams, &self.rules, name, ns)?;
        Ok(target(up, repo))
    }
}

/// Routes `image` as [`Proxy::route_image`] does, on the configuration alone: for the
/// commands that work on a store while no server runs (`ferry export`, `ferry
/// import`), which need no upstream client. Returns the repository and the registry
/// host of the upstream it is cached under.
pub fn route_offline(config: &Config, image: &ImageName) -> Result<(Repo, String)> {
    let rules = CacheRules::new(config.rules.clone());
    let (up, repo) = pick(
        &config.upstreams,
        &rules,
        &image.repo,
        image.registry.as_deref(),
    )?;
    Ok((
        Repo {
            upstream: up.name.clone(),
            name: repo,
        },
        up.registry.clone(),
    ))
}

/// Whether `image` says which registry it is from: it starts with a host, or with a
/// component routing takes for one (an upstream's short name or registry, a cache
/// rule's source registry).
pub fn names_registry(config: &Config, image: &ImageName) -> bool {
    image.registry.is_some()
        || image.repo.split_first().is_some_and(|(first, _)| {
            registry_named(
                &config.upstreams,
                &CacheRules::new(config.rules.clone()),
                first,
            )
            .is_some()
        })
}

/// What routing needs of an upstream: its configuration. The proxy routes over its
/// clients, [`route_offline`] over the configured upstreams themselves.
trait Routable {
    fn upstream_config(&self) -> &config::Upstream;
}

impl Routable for Arc<upstream::Client> {
    fn upstream_config(&self) -> &config::Upstream {
        self.config()
    }
}

impl Routable for config::Upstream {
    fn upstream_config(&self) -> &config::Upstream {
        self
    }
}

/// The routing decision (see [`Proxy::route`]): the upstream and the repository there.
fn pick<'a, U: Routable>(
    upstreams: &'a [U],
    rules: &CacheRules,
    name: &RepoName,
    ns: Option<&str>,
) -> Result<(&'a U, RepoName)> {
    let (registry, path) = if let Some(ns) = ns {
        (Some(ns.to_ascii_lowercase()), name.clone())
    } else if let Some((first, rest)) = name.split_first()
        && let Some(registry) = registry_named(upstreams, rules, first)
    {
        (Some(registry), rest)
    } else {
        (None, name.clone())
    };
    if let Some(reg) = &registry
        && let Some((rule, repo)) = rules.resolve(reg, &path)
    {
        let up = upstreams
            .iter()
            .find(|u| u.upstream_config().name == rule.upstream)
            .ok_or_else(|| no_upstream(upstreams, rules, reg))?;
        return Ok((up, repo));
    }
    let up = match &registry {
        Some(reg) => upstreams
            .iter()
            .find(|u| &u.upstream_config().registry == reg)
            .ok_or_else(|| no_upstream(upstreams, rules, reg))?,
        None => upstreams
            .iter()
            .find(|u| u.upstream_config().default)
            .ok_or_else(|| {
                no_upstream(
                    upstreams,
                    rules,
                    name.split_first().map_or(name.as_str(), |(f, _)| f),
                )
            })?,
    };
    let repo = if up.upstream_config().implicit_library() && path.component_count() == 1 {
        path.prefixed(&"library".parse().expect("valid name"))
    } else {
        path
    };
    Ok((up, repo))
}

/// The registry a first path component names: an upstream's registry or short
/// name, or a cache rule's source registry.
fn registry_named<U: Routable>(upstreams: &[U], rules: &CacheRules, first: &str) -> Option<String> {
    if let Some(u) = upstreams
        .iter()
        .map(U::upstream_config)
        .find(|u| u.registry == first || u.name == first)
    {
        return Some(u.registry.clone());
    }
    rules.covers_registry(first).then(|| first.to_string())
}

fn no_upstream<U: Routable>(upstreams: &[U], rules: &CacheRules, requested: &str) -> Error {
    let mut registries: Vec<String> = upstreams
        .iter()
        .map(U::upstream_config)
        .map(|u| format!("{} (prefix {}/ or ?ns={})", u.registry, u.name, u.registry))
        .collect();
    registries.extend(rules.sources().map(|s| format!("{s} (cache rule)")));
    Error::NoUpstream {
        requested: requested.to_string(),
        registries,
    }
}

fn target(up: &Arc<upstream::Client>, repo: RepoName) -> Target {
    Target {
        upstream: up.clone(),
        repo: Repo {
            upstream: up.name().to_string(),
            name: repo,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn proxy(extra: &str) -> (tempfile::TempDir, Proxy) {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "{}\n[[upstream]]\nname = \"acr\"\nregistry = \"contoso.azurecr.io\"\nurl = \"https://contoso.azurecr.io\"\n{extra}",
            crate::config::DEFAULT_CONFIG
        );
        let config = Config::parse("test", &text, &[]).unwrap();
        let store = ferry_storage::Store::open(dir.path()).unwrap();
        (dir, Proxy::new(&config, store).unwrap())
    }

    fn route(p: &Proxy, name: &str, ns: Option<&str>) -> Result<(String, String)> {
        p.route(&name.parse().unwrap(), ns)
            .map(|t| (t.repo.upstream, t.repo.name.to_string()))
    }

    #[test]
    fn by_ns_prefix_and_default() {
        let (_d, p) = proxy("");
        let r = |n, ns| route(&p, n, ns).unwrap();
        assert_eq!(
            r("library/nginx", Some("docker.io")),
            ("docker".into(), "library/nginx".into())
        );
        assert_eq!(
            r("nginx", Some("docker.io")),
            ("docker".into(), "library/nginx".into())
        );
        assert_eq!(
            r("docker.io/nginx", None),
            ("docker".into(), "library/nginx".into())
        );
        assert_eq!(r("ghcr/a/b", None), ("ghcr".into(), "a/b".into()));
        assert_eq!(r("ghcr.io/a/b", None), ("ghcr".into(), "a/b".into()));
        assert_eq!(
            r("team/app", Some("contoso.azurecr.io")),
            ("acr".into(), "team/app".into())
        );
        // ns wins; the path is the repository, unstripped.
        assert_eq!(
            r("ghcr/a", Some("ghcr.io")),
            ("ghcr".into(), "ghcr/a".into())
        );
        // Neither: the default upstream (docker.io, with library/).
        assert_eq!(
            r("alpine", None),
            ("docker".into(), "library/alpine".into())
        );
        assert_eq!(
            r("someone/app", None),
            ("docker".into(), "someone/app".into())
        );
        let e = route(&p, "x", Some("unknown.example"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown.example")
                && e.contains("ghcr.io")
                && e.contains("contoso.azurecr.io"),
            "{e}"
        );
    }

    #[test]
    fn no_default_lists_registries() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::parse(
            "t",
            "[[upstream]]\nname = \"corp\"\nurl = \"https://registry.corp.example\"\n",
            &[],
        )
        .unwrap();
        let p = Proxy::new(&config, ferry_storage::Store::open(dir.path()).unwrap()).unwrap();
        let e = route(&p, "team/app", None).unwrap_err();
        assert!(matches!(e, Error::NoUpstream { .. }));
        assert!(e.to_string().contains("registry.corp.example"), "{e}");
        assert_eq!(
            route(&p, "corp/team/app", None).unwrap(),
            ("corp".into(), "team/app".into())
        );
    }

    #[test]
    fn cache_rules() {
        let (_d, p) = proxy(
            "[[rule]]\nname = \"aks-managed-mcr\"\nsource = \"mcr.microsoft.com/*\"\ntarget = \"aks-managed-repository/*\"\nupstream = \"acr\"\n",
        );
        let r = |n, ns| route(&p, n, ns).unwrap();
        let pause = (
            "acr".to_string(),
            "aks-managed-repository/oss/kubernetes/pause".to_string(),
        );
        assert_eq!(r("oss/kubernetes/pause", Some("mcr.microsoft.com")), pause);
        assert_eq!(r("mcr.microsoft.com/oss/kubernetes/pause", None), pause);
        // The AKS bootstrap form: the path already names the target namespace.
        assert_eq!(
            r(
                "aks-managed-repository/oss/kubernetes/pause",
                Some("mcr.microsoft.com")
            ),
            pause
        );
        // `mcr/` is the MCR upstream's short name: the same registry, so the rule applies.
        assert_eq!(
            r("mcr/oss/kubernetes/pause", None),
            ("acr".into(), pause.1.clone())
        );
    }

    /// The names `ferry status` prints (`<registry>/<repository>:<tag>` of what is
    /// cached) route back to the repository they were printed for, cache-rule targets
    /// and Docker Hub's `library/` included.
    #[test]
    fn status_names_route_back_to_their_repository() {
        let extra = "[[upstream]]\nname = \"corp\"\nregistry = \"registry.corp.test:16101\"\nurl = \"https://registry.corp.test:16101\"\n[[rule]]\nname = \"aks-managed-mcr\"\nsource = \"mcr.microsoft.com/*\"\ntarget = \"aks-managed-repository/*\"\nupstream = \"acr\"\n";
        let (_d, p) = proxy(extra);
        for (upstream, repo) in [
            ("docker", "library/nginx"),
            ("docker", "someone/app"),
            ("ghcr", "org/tool"),
            ("acr", "aks-managed-repository/oss/kubernetes/pause"),
            ("acr", "team/app"),
            ("corp", "team/app"),
        ] {
            let registry = p
                .upstreams()
                .iter()
                .find(|u| u.name() == upstream)
                .unwrap()
                .config()
                .registry
                .clone();
            let printed = format!("{registry}/{repo}:1");
            let image: ImageName = printed.parse().unwrap();
            let t = p.route_image(&image).unwrap();
            assert_eq!(
                (t.repo.upstream.as_str(), t.repo.name.as_str()),
                (upstream, repo),
                "{printed}"
            );
        }
    }

    /// `ferry export` / `import` route on the config alone, with no client built:
    /// the same answers as the proxy, errors included.
    #[test]
    fn offline_routes_as_the_proxy_does() {
        let extra = "[[rule]]\nname = \"aks-managed-mcr\"\nsource = \"mcr.microsoft.com/*\"\ntarget = \"aks-managed-repository/*\"\nupstream = \"acr\"\n";
        let (_d, p) = proxy(extra);
        let config = Config::parse(
            "test",
            &format!(
                "{}\n[[upstream]]\nname = \"acr\"\nregistry = \"contoso.azurecr.io\"\nurl = \"https://contoso.azurecr.io\"\n{extra}",
                crate::config::DEFAULT_CONFIG
            ),
            &[],
        )
        .unwrap();
        for (name, ns) in [
            ("library/nginx", Some("docker.io")),
            ("docker.io/nginx", None),
            ("alpine", None),
            ("ghcr/a/b", None),
            ("team/app", Some("contoso.azurecr.io")),
            ("mcr.microsoft.com/oss/kubernetes/pause", None),
            ("mcr/oss/kubernetes/pause", None),
            ("x", Some("unknown.example")),
        ] {
            let repo: RepoName = name.parse().unwrap();
            let online = p.route(&repo, ns).map(|t| {
                let registry = t.upstream.config().registry.clone();
                (t.repo, registry)
            });
            let image = ImageName {
                registry: ns.map(str::to_string),
                repo: repo.clone(),
                reference: None,
            };
            let offline = route_offline(&config, &image);
            match (online, offline) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{name}"),
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{name}"),
                (a, b) => panic!("{name}: proxy {a:?}, offline {b:?}"),
            }
        }
    }
}
