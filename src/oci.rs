//! `Accept` negotiation for manifests, image names and platforms as users write them.

/// The media types a client accepts, from every `Accept` header it sent (skopeo
/// sends one type per header line), without parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accept(Vec<String>);

impl Accept {
    pub fn from_headers(headers: &http::HeaderMap) -> Accept {
        let types = headers
            .get_all(http::header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(media_type)
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect();
        Accept(types)
    }

    pub fn of(types: &[&str]) -> Accept {
        Accept(types.iter().map(|t| t.to_string()).collect())
    }

    /// Whether a manifest of `media_type` may be served to this client. A client
    /// that sends no `Accept`, or `*/*`, takes anything.
    pub fn allows(&self, media_type: &str) -> bool {
        self.0.is_empty() || self.0.iter().any(|t| t == media_type || t == "*/*")
    }

    /// The `Accept` to send upstream: the client's own list, so the upstream
    /// negotiates as it would for the client, or every manifest type if it sent none.
    pub fn upstream_header(&self) -> String {
        if self.0.is_empty() {
            ferry_oci::manifest::ALL_MANIFESTS.join(", ")
        } else {
            self.0.join(", ")
        }
    }
}

/// A `Content-Type` value without parameters, lowercased.
pub fn media_type(value: &str) -> &str {
    value.split(';').next().unwrap_or("").trim()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_oci::manifest::{DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};

    #[test]
    fn accept_reads_every_header_and_ignores_parameters() {
        let mut h = http::HeaderMap::new();
        h.append(http::header::ACCEPT, OCI_MANIFEST.parse().unwrap());
        h.append(
            http::header::ACCEPT,
            format!("{DOCKER_MANIFEST}; q=0.5, {DOCKER_LIST}")
                .parse()
                .unwrap(),
        );
        let a = Accept::from_headers(&h);
        assert!(a.allows(OCI_MANIFEST) && a.allows(DOCKER_MANIFEST) && a.allows(DOCKER_LIST));
        assert!(!a.allows(OCI_INDEX));
        assert!(Accept::default().allows(OCI_INDEX));
        assert!(Accept::of(&[OCI_MANIFEST, "*/*"]).allows(OCI_INDEX));
    }
}

/// An image as a user writes it, in every command and in `[[pin]]`:
/// `[registry/]repository[:tag][@digest]`, read as Docker's reference grammar reads it.
///
/// The first component is the `registry` when it looks like a host: it has a dot or a
/// port, or is `localhost` (Docker's rule), so `registry.corp.test:16101/team/app` (what
/// `ferry status` prints) and `docker.io/nginx` name one and `team/app` does not;
/// `index.docker.io` is Docker Hub's old name for `docker.io`. Any other first
/// component, such as an upstream's short name (`corp/team/app`), stays in `repo`.
/// Which upstream and repository a name means is the proxy's routing decision, the
/// registry standing for containerd's `ns` parameter, so a name resolves exactly as a
/// pull of it does (`docker.io/nginx` → `library/nginx` at the Docker Hub upstream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageName {
    pub registry: Option<String>,
    pub repo: ferry_oci::RepoName,
    /// The tag or digest written, if any. `name:tag@digest` is pulled by its digest, as
    /// Docker does.
    pub reference: Option<ferry_oci::Reference>,
}

/// Why a string is not an image name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{name}` is not an image name: {reason}")]
pub struct ImageNameError {
    name: String,
    reason: String,
}

impl ImageName {
    /// What to pull: the tag or digest written, else `latest`.
    pub fn reference_or_latest(&self) -> ferry_oci::Reference {
        self.reference
            .clone()
            .unwrap_or_else(|| ferry_oci::Reference::Tag("latest".parse().expect("valid tag")))
    }
}

impl std::str::FromStr for ImageName {
    type Err = ImageNameError;

    fn from_str(s: &str) -> Result<Self, ImageNameError> {
        use ferry_oci::{Digest, Reference, Tag};
        let bad = |reason: String| ImageNameError {
            name: s.chars().take(300).collect(),
            reason,
        };
        if s.is_empty() {
            return Err(bad("it is empty".into()));
        }
        let (rest, digest) = match s.rsplit_once('@') {
            Some((rest, d)) => {
                let d: Digest = d.parse().map_err(|e| bad(format!("{e}")))?;
                (rest, Some(d))
            }
            None => (s, None),
        };
        // A colon after the last slash starts the tag; one before it is a port.
        let last = rest.rfind('/').map_or(0, |i| i + 1);
        let (path, tag) = match rest[last..].split_once(':') {
            Some((_, tag)) => {
                let tag: Tag = tag.parse().map_err(|_| {
                    bad(format!(
                        "invalid tag `{tag}` (letters, digits, . _ -; at most 128)"
                    ))
                })?;
                (&rest[..rest.len() - tag.as_str().len() - 1], Some(tag))
            }
            None => (rest, None),
        };
        let (registry, repo) = match path.split_once('/') {
            Some((first, repo)) if first.contains(['.', ':']) || first == "localhost" => {
                (Some(registry_host(first).map_err(bad)?), repo)
            }
            _ => (None, path),
        };
        let repo = repo.parse().map_err(|_| {
            bad(format!(
                "invalid repository name `{}` (lowercase letters and digits, separated by \
                 . _ __ - and /)",
                repo.chars().take(300).collect::<String>()
            ))
        })?;
        let reference = match (digest, tag) {
            (Some(d), _) => Some(Reference::Digest(d)),
            (None, Some(t)) => Some(Reference::Tag(t)),
            (None, None) => None,
        };
        Ok(ImageName {
            registry,
            repo,
            reference,
        })
    }
}

/// A registry as the first component of a name: `host[:port]`, lowercased, with Docker
/// Hub's old `index.docker.io` as `docker.io`.
fn registry_host(s: &str) -> Result<String, String> {
    let (host, port) = match s.rsplit_once(':') {
        Some((host, port)) if !s.ends_with(']') => (host, Some(port)),
        _ => (s, None),
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    let host_ok = if let Some(ip6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        ip6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        host.split('.').all(label_ok)
    };
    if !host_ok {
        return Err(format!("invalid registry host `{host}`"));
    }
    if let Some(port) = port
        && port.parse::<u16>().is_err()
    {
        return Err(format!("invalid registry port `{port}` in `{s}`"));
    }
    let host = s.to_ascii_lowercase();
    Ok(if host == "index.docker.io" {
        "docker.io".to_string()
    } else {
        host
    })
}

impl std::fmt::Display for ImageName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(r) = &self.registry {
            write!(f, "{r}/")?;
        }
        write!(f, "{}", self.repo)?;
        match &self.reference {
            Some(ferry_oci::Reference::Tag(t)) => write!(f, ":{t}"),
            Some(ferry_oci::Reference::Digest(d)) => write!(f, "@{d}"),
            None => Ok(()),
        }
    }
}

/// A platform such as `linux/amd64` or `linux/arm64/v8`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl std::str::FromStr for Platform {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: None,
            }),
            [os, arch, v] if !os.is_empty() && !arch.is_empty() && !v.is_empty() => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: Some(v.to_string()),
            }),
            _ => Err(format!("`{s}` is not a platform like linux/amd64")),
        }
    }
}

impl Platform {
    /// Whether an index entry's `platform` is this platform (a variant given here
    /// must match; none given matches any).
    pub fn matches(&self, platform: &ferry_oci::manifest::Platform) -> bool {
        platform.os().to_string() == self.os
            && platform.architecture().to_string() == self.architecture
            && self
                .variant
                .as_deref()
                .is_none_or(|v| platform.variant().as_deref() == Some(v))
    }
}

#[cfg(test)]
mod image_tests {
    use super::*;

    /// Every way a user writes a name, each read as Docker reads it.
    #[test]
    fn image_names() {
        use ferry_oci::Reference;
        let parse = |s: &str| s.parse::<ImageName>().unwrap();
        let d = format!("sha256:{}", "a".repeat(64));
        let tag = |t: &str| Some(Reference::Tag(t.parse().unwrap()));
        let digest = Some(Reference::Digest(d.parse().unwrap()));
        for (written, registry, repo, reference, shown) in [
            // What `ferry status` prints: a registry with a port.
            (
                "registry.corp.test:16101/team/app:1",
                Some("registry.corp.test:16101"),
                "team/app",
                tag("1"),
                None,
            ),
            // An upstream's short name is routing's business: part of the path here.
            ("corp/team/app:1", None, "corp/team/app", tag("1"), None),
            ("local/team/app:v1", None, "local/team/app", tag("v1"), None),
            // Docker Hub, every way Docker takes it.
            ("nginx", None, "nginx", None, None),
            (
                "library/nginx:1.27",
                None,
                "library/nginx",
                tag("1.27"),
                None,
            ),
            ("docker.io/nginx", Some("docker.io"), "nginx", None, None),
            (
                "index.docker.io/library/nginx",
                Some("docker.io"),
                "library/nginx",
                None,
                Some("docker.io/library/nginx"),
            ),
            ("localhost/a", Some("localhost"), "a", None, None),
            (
                "Registry.Example:5000/a:V1",
                Some("registry.example:5000"),
                "a",
                tag("V1"),
                Some("registry.example:5000/a:V1"),
            ),
            ("[::1]:5000/a", Some("[::1]:5000"), "a", None, None),
            // Digests; with a tag too, the digest wins as in Docker.
            (
                &format!("ghcr.io/a/b@{d}"),
                Some("ghcr.io"),
                "a/b",
                digest.clone(),
                None,
            ),
            (
                &format!("reg:5000/a/b:v1@{d}"),
                Some("reg:5000"),
                "a/b",
                digest.clone(),
                Some(&format!("reg:5000/a/b@{d}")),
            ),
        ] {
            let n = parse(written);
            assert_eq!(
                (n.registry.as_deref(), n.repo.as_str(), &n.reference),
                (registry, repo, &reference),
                "{written}"
            );
            assert_eq!(n.to_string(), shown.unwrap_or(written), "{written}");
            assert_eq!(parse(&n.to_string()), n, "{written} round-trips");
        }
        assert_eq!(parse("nginx").reference_or_latest().to_string(), "latest");
        for (bad, says) in [
            ("", "empty"),
            ("Bad/Name:1", "invalid repository name `Bad/Name`"),
            ("a/b:", "invalid tag ``"),
            ("a/b@sha256:00", "sha256:00"),
            ("registry.example/", "invalid repository name ``"),
            ("registry.example:http/a", "invalid registry port `http`"),
            (
                "bad_host.example/a",
                "invalid registry host `bad_host.example`",
            ),
            ("-x.example:1/a", "invalid registry host `-x.example`"),
        ] {
            let e = bad.parse::<ImageName>().unwrap_err().to_string();
            assert!(
                e.contains(&format!("`{bad}`")) && e.contains(says),
                "{bad}: {e}"
            );
        }
        let p: Platform = "linux/arm64/v8".parse().unwrap();
        let spec = |json: &str| serde_json::from_str(json).unwrap();
        assert!(p.matches(&spec(
            r#"{"os":"linux","architecture":"arm64","variant":"v8"}"#
        )));
        assert!(!p.matches(&spec(r#"{"os":"linux","architecture":"amd64"}"#)));
        assert!("linux".parse::<Platform>().is_err());
    }
}
