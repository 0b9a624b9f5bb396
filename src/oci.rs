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

/// An image as clients name it through Ferry: `<registry or upstream>/<repo>[:tag]`
/// or `…@<digest>` (no tag: `latest`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageName {
    pub name: ferry_oci::RepoName,
    pub reference: ferry_oci::Reference,
}

impl std::str::FromStr for ImageName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        use ferry_oci::Reference;
        let bad = |why: &str| format!("`{s}` is not an image name ({why})");
        let (name, reference) = if let Some((name, digest)) = s.split_once('@') {
            (
                name,
                Reference::Digest(digest.parse().map_err(|e| bad(&format!("{e}")))?),
            )
        } else {
            let last_slash = s.rfind('/').map_or(0, |i| i + 1);
            match s[last_slash..].split_once(':') {
                Some((last, tag)) => {
                    let tag = tag.parse().map_err(|e| bad(&format!("{e}")))?;
                    (&s[..last_slash + last.len()], Reference::Tag(tag))
                }
                None => (s, Reference::Tag("latest".parse().expect("valid tag"))),
            }
        };
        let name = name.parse().map_err(|e| bad(&format!("{e}")))?;
        Ok(ImageName { name, reference })
    }
}

impl std::fmt::Display for ImageName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.reference {
            ferry_oci::Reference::Tag(t) => write!(f, "{}:{t}", self.name),
            ferry_oci::Reference::Digest(d) => write!(f, "{}@{d}", self.name),
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

    #[test]
    fn image_names() {
        let i: ImageName = "local/team/app:v1".parse().unwrap();
        assert_eq!(
            (i.name.as_str(), i.reference.to_string()),
            ("local/team/app", "v1".to_string())
        );
        let i: ImageName = "docker.io/library/nginx".parse().unwrap();
        assert_eq!(i.to_string(), "docker.io/library/nginx:latest");
        let d = format!("sha256:{}", "a".repeat(64));
        let i: ImageName = format!("ghcr/a/b@{d}").parse().unwrap();
        assert_eq!(i.to_string(), format!("ghcr/a/b@{d}"));
        assert!("Bad/Name:1".parse::<ImageName>().is_err());
        assert!("a/b:".parse::<ImageName>().is_err());
        let p: Platform = "linux/arm64/v8".parse().unwrap();
        let spec = |json: &str| serde_json::from_str(json).unwrap();
        assert!(p.matches(&spec(
            r#"{"os":"linux","architecture":"arm64","variant":"v8"}"#
        )));
        assert!(!p.matches(&spec(r#"{"os":"linux","architecture":"amd64"}"#)));
        assert!("linux".parse::<Platform>().is_err());
    }
}
