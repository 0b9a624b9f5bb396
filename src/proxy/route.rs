//! Which upstream, and which repository there, a request means.

use std::sync::Arc;

use ferry_storage::{Repo, RepoName};

use super::{Error, Proxy, Result, Settings, Target};
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
}

impl Settings {
    fn route(&self, name: &RepoName, ns: Option<&str>) -> Result<Target> {
        let (registry, path) = if let Some(ns) = ns {
            (Some(ns.to_ascii_lowercase()), name.clone())
        } else if let Some((first, rest)) = name.split_first()
            && let Some(registry) = self.registry_named(first)
        {
            (Some(registry), rest)
        } else {
            (None, name.clone())
        };
        if let Some(reg) = &registry
            && let Some((rule, repo)) = self.rules.resolve(reg, &path)
        {
            let up = self
                .upstream(&rule.upstream)
                .ok_or_else(|| self.no_upstream(reg))?;
            return Ok(target(up, repo));
        }
        let up = match &registry {
            Some(reg) => self
                .upstreams
                .iter()
                .find(|u| &u.config().registry == reg)
                .ok_or_else(|| self.no_upstream(reg))?,
            None => self
                .upstreams
                .iter()
                .find(|u| u.config().default)
                .ok_or_else(|| {
                    self.no_upstream(name.split_first().map_or(name.as_str(), |(f, _)| f))
                })?,
        };
        let repo = if up.config().implicit_library() && path.component_count() == 1 {
            path.prefixed(&"library".parse().expect("valid name"))
        } else {
            path
        };
        Ok(target(up, repo))
    }

    /// The registry a first path component names: an upstream's registry or short
    /// name, or a cache rule's source registry.
    fn registry_named(&self, first: &str) -> Option<String> {
        if let Some(u) = self
            .upstreams
            .iter()
            .find(|u| u.config().registry == first || u.config().name == first)
        {
            return Some(u.config().registry.clone());
        }
        self.rules.covers_registry(first).then(|| first.to_string())
    }

    fn upstream(&self, name: &str) -> Option<&Arc<upstream::Client>> {
        self.upstreams.iter().find(|u| u.name() == name)
    }

    fn no_upstream(&self, requested: &str) -> Error {
        let mut registries: Vec<String> = self
            .upstreams
            .iter()
            .map(|u| {
                format!(
                    "{} (prefix {}/ or ?ns={})",
                    u.config().registry,
                    u.config().name,
                    u.config().registry
                )
            })
            .collect();
        registries.extend(self.rules.sources().map(|s| format!("{s} (cache rule)")));
        Error::NoUpstream {
            requested: requested.to_string(),
            registries,
        }
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
}
