//! Cache rules, with the shape and meaning of Azure Container Registry's artifact-cache
//! rules: `source = "mcr.microsoft.com/*"`, `target = "aks-managed-repository/*"`,
//! `upstream = "acr"` serves a pull of `mcr.microsoft.com/<path>` from the repository
//! `aks-managed-repository/<path>` of upstream `acr`.
//!
//! - A static rule maps one repository; a wildcard rule (`…/*`) maps a registry or a
//!   repository namespace. The most specific rule wins: a static rule, then the
//!   wildcard with the longest source path.
//! - Wildcard rules may not overlap each other (same or nested target paths, as ACR
//!   checks); static rules may overlap wildcards but not each other (same source or
//!   same target). At most [`MAX_RULES`] rules.
//! - Docker Hub sources get `library/` when a single-component name omits it.

use std::fmt;

use ferry_oci::RepoName;

/// ACR allows 1,000 cache rules per registry; Ferry keeps the same limit.
pub const MAX_RULES: usize = 1000;

/// A validated cache rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheRule {
    pub name: String,
    /// The registry clients name (`mcr.microsoft.com`).
    pub source_registry: String,
    /// The repository path under it; empty for a registry-level wildcard.
    pub source_path: String,
    /// The repository path at the upstream; empty for `*`.
    pub target_path: String,
    pub wildcard: bool,
    /// The configured upstream that holds the target.
    pub upstream: String,
}

impl fmt::Display for CacheRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let star = |p: &str| match (self.wildcard, p.is_empty()) {
            (false, _) => p.to_string(),
            (true, true) => "*".to_string(),
            (true, false) => format!("{p}/*"),
        };
        write!(
            f,
            "rule `{}` ({}/{} -> {}:{})",
            self.name,
            self.source_registry,
            star(&self.source_path).trim_start_matches('/'),
            self.upstream,
            star(&self.target_path)
        )
    }
}

/// Splits `path/*` into (`path`, wildcard); `*` alone is the empty path.
fn split_wildcard(s: &str) -> (&str, bool) {
    if s == "*" {
        ("", true)
    } else if let Some(p) = s.strip_suffix("/*") {
        (p, true)
    } else {
        (s, false)
    }
}

fn valid_path(p: &str) -> bool {
    p.is_empty() || p.parse::<RepoName>().is_ok()
}

impl CacheRule {
    /// Validates one rule as written. Errors are sentences naming the field.
    pub fn parse(
        name: &str,
        source: &str,
        target: &str,
        upstream: &str,
    ) -> Result<CacheRule, String> {
        let (registry, source_rest) = source.split_once('/').ok_or_else(|| {
            format!("source `{source}` must be <registry>/<repository> or <registry>/*")
        })?;
        let registry = registry.to_ascii_lowercase();
        if registry.is_empty()
            || !registry
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'))
        {
            return Err(format!(
                "source `{source}`: `{registry}` is not a registry host"
            ));
        }
        let (source_path, source_wild) = split_wildcard(source_rest);
        let (target_path, target_wild) = split_wildcard(target);
        if source_wild != target_wild {
            return Err(format!(
                "source `{source}` and target `{target}` must both end in `*` or neither"
            ));
        }
        if !source_wild && source_path.is_empty() {
            return Err(format!("source `{source}` names no repository"));
        }
        if !valid_path(source_path) {
            return Err(format!(
                "source `{source}`: `{source_path}` is not a repository name"
            ));
        }
        if !valid_path(target_path) || (!target_wild && target_path.is_empty()) {
            return Err(format!(
                "target `{target}` is not a repository name (or a path ending in /*)"
            ));
        }
        let mut source_path = source_path.to_string();
        if registry == "docker.io" && !source_wild && !source_path.contains('/') {
            source_path = format!("library/{source_path}");
        }
        Ok(CacheRule {
            name: name.to_string(),
            source_registry: registry,
            source_path,
            target_path: target_path.to_string(),
            wildcard: source_wild,
            upstream: upstream.to_string(),
        })
    }

    /// The upstream repository for `path` (under `source_registry`), if this rule
    /// covers it. Specificity is the length of the source path matched; statics rank
    /// above every wildcard.
    fn apply(&self, path: &str) -> Option<(usize, String)> {
        if !self.wildcard {
            return (path == self.source_path).then(|| (usize::MAX, self.target_path.clone()));
        }
        let rest = if self.source_path.is_empty() {
            path
        } else {
            path.strip_prefix(&self.source_path)?.strip_prefix('/')?
        };
        let target = if self.target_path.is_empty() {
            rest.to_string()
        } else {
            format!("{}/{rest}", self.target_path)
        };
        Some((self.source_path.len(), target))
    }
}

/// Whether `a` equals `b` or one contains the other, component-wise.
fn nested(a: &str, b: &str) -> bool {
    let within = |inner: &str, outer: &str| {
        outer.is_empty() || inner == outer || inner.starts_with(&format!("{outer}/"))
    };
    within(a, b) || within(b, a)
}

/// Checks a rule set against ACR's constraints; the error names the conflicting rules.
pub fn check(rules: &[CacheRule]) -> Result<(), String> {
    if rules.len() > MAX_RULES {
        return Err(format!(
            "{} rules configured; at most {MAX_RULES} are allowed",
            rules.len()
        ));
    }
    for (i, a) in rules.iter().enumerate() {
        for b in &rules[..i] {
            if a.name == b.name {
                return Err(format!("rule name `{}` is used twice", a.name));
            }
            let same_source_registry = a.source_registry == b.source_registry;
            let same_upstream = a.upstream == b.upstream;
            let conflict = match (a.wildcard, b.wildcard) {
                (true, true) => same_upstream && nested(&a.target_path, &b.target_path),
                (false, false) => {
                    (same_source_registry && a.source_path == b.source_path)
                        || (same_upstream && a.target_path == b.target_path)
                }
                _ => false,
            };
            if conflict {
                let why = if a.wildcard {
                    "wildcard rules may not overlap"
                } else {
                    "static rules may not map the same repository"
                };
                return Err(format!("{b} and {a} conflict: {why}"));
            }
        }
    }
    Ok(())
}

/// The rule set, for routing.
#[derive(Debug, Clone, Default)]
pub struct CacheRules(Vec<CacheRule>);

impl CacheRules {
    pub fn new(rules: Vec<CacheRule>) -> CacheRules {
        CacheRules(rules)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The source registries rules cover, once each.
    pub fn sources(&self) -> impl Iterator<Item = &str> {
        let mut seen: Vec<&str> = self.0.iter().map(|r| r.source_registry.as_str()).collect();
        seen.sort();
        seen.dedup();
        seen.into_iter()
    }

    /// Whether any rule has `registry` as its source.
    pub fn covers_registry(&self, registry: &str) -> bool {
        self.0.iter().any(|r| r.source_registry == registry)
    }

    /// The rule for a pull of `registry`/`path` and the upstream repository it maps to.
    ///
    /// A path that already starts with a wildcard rule's target namespace is taken as
    /// the target itself: that is the form AKS's node configuration sends when Ferry
    /// stands where the ACR was (`/v2/aks-managed-repository/…?ns=mcr.microsoft.com`).
    pub fn resolve(&self, registry: &str, path: &RepoName) -> Option<(&CacheRule, RepoName)> {
        let path = path.as_str();
        let library;
        let path = if registry == "docker.io" && !path.contains('/') {
            library = format!("library/{path}");
            library.as_str()
        } else {
            path
        };
        let candidates = self.0.iter().filter(|r| r.source_registry == registry);
        if let Some(r) = candidates.clone().find(|r| {
            r.wildcard
                && !r.target_path.is_empty()
                && path.starts_with(&format!("{}/", r.target_path))
        }) {
            return path.parse().ok().map(|p| (r, p));
        }
        let (rule, _, target) = candidates
            .filter_map(|r| r.apply(path).map(|(rank, target)| (r, rank, target)))
            .max_by_key(|(_, rank, _)| *rank)?;
        target.parse().ok().map(|t| (rule, t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, source: &str, target: &str) -> CacheRule {
        CacheRule::parse(name, source, target, "acr").unwrap()
    }

    fn resolve(rules: &CacheRules, registry: &str, path: &str) -> Option<(String, String)> {
        rules
            .resolve(registry, &path.parse().unwrap())
            .map(|(r, p)| (r.name.clone(), p.to_string()))
    }

    #[test]
    fn aks_managed_mcr() {
        let rules = CacheRules::new(vec![rule(
            "aks-managed-mcr",
            "mcr.microsoft.com/*",
            "aks-managed-repository/*",
        )]);
        assert_eq!(
            resolve(&rules, "mcr.microsoft.com", "oss/kubernetes/pause"),
            Some((
                "aks-managed-mcr".into(),
                "aks-managed-repository/oss/kubernetes/pause".into()
            ))
        );
        // The AKS bootstrap form already names the target.
        assert_eq!(
            resolve(
                &rules,
                "mcr.microsoft.com",
                "aks-managed-repository/oss/kubernetes/pause"
            ),
            Some((
                "aks-managed-mcr".into(),
                "aks-managed-repository/oss/kubernetes/pause".into()
            ))
        );
        assert_eq!(resolve(&rules, "ghcr.io", "oss/x"), None);
    }

    #[test]
    fn most_specific_wins_and_docker_hub_gets_library() {
        let rules = CacheRules::new(vec![
            rule("all", "docker.io/*", "hub/*"),
            rule("dotnet", "docker.io/dotnet/*", "dn/*"),
            rule("ubuntu", "docker.io/ubuntu", "ubuntu"),
        ]);
        check(&rules.0).unwrap();
        assert_eq!(
            resolve(&rules, "docker.io", "dotnet/sdk"),
            Some(("dotnet".into(), "dn/sdk".into()))
        );
        assert_eq!(
            resolve(&rules, "docker.io", "ubuntu"),
            Some(("ubuntu".into(), "ubuntu".into()))
        );
        assert_eq!(
            resolve(&rules, "docker.io", "library/ubuntu"),
            Some(("ubuntu".into(), "ubuntu".into()))
        );
        assert_eq!(
            resolve(&rules, "docker.io", "nginx"),
            Some(("all".into(), "hub/library/nginx".into()))
        );
        let rules = CacheRules::new(vec![
            rule("mcr", "mcr.microsoft.com/*", "mcr/*"),
            rule("dotnet", "ghcr.io/dotnet/*", "dotnet/*"),
        ]);
        check(&rules.0).unwrap();
        assert_eq!(
            resolve(&rules, "ghcr.io", "dotnet/sdk"),
            Some(("dotnet".into(), "dotnet/sdk".into()))
        );
        assert_eq!(resolve(&rules, "ghcr.io", "dotnetx/sdk"), None);
    }

    #[test]
    fn conflicts_are_named() {
        let e = check(&[
            rule("a", "mcr.microsoft.com/*", "x/*"),
            rule("b", "ghcr.io/*", "x/y/*"),
        ])
        .unwrap_err();
        assert!(
            e.contains("`a`") && e.contains("`b`") && e.contains("overlap"),
            "{e}"
        );
        let e = check(&[
            rule("a", "docker.io/ubuntu", "u"),
            rule("b", "docker.io/library/ubuntu", "v"),
        ])
        .unwrap_err();
        assert!(e.contains("`a`") && e.contains("`b`"), "{e}");
        check(&[
            rule("w", "mcr.microsoft.com/*", "m/*"),
            rule("s", "mcr.microsoft.com/x", "m/x"),
        ])
        .unwrap();
        let many: Vec<CacheRule> = (0..=MAX_RULES)
            .map(|i| rule(&format!("r{i}"), &format!("r.io/p{i}"), &format!("t{i}")))
            .collect();
        assert!(check(&many).unwrap_err().contains("at most 1000"));
        assert!(CacheRule::parse("x", "mcr.microsoft.com/*", "target", "acr").is_err());
        assert!(CacheRule::parse("x", "mcr.microsoft.com", "target", "acr").is_err());
        assert!(CacheRule::parse("x", "mcr.microsoft.com/A", "target", "acr").is_err());
    }
}
