//! OCI and Docker media types, and `Accept` negotiation for manifests.

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// The manifest types Ferry asks for when a client names none.
pub const ALL_MANIFESTS: [&str; 4] = [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST];

/// Manifests larger than this are refused (the spec asks registries to take at least
/// 4 MB; containerd refuses more than about 4 MiB).
pub const MAX_MANIFEST_SIZE: usize = 4 * 1024 * 1024;

/// Checks that `body` is the OCI or Docker image manifest or index it claims to be
/// and says which: the `mediaType` its JSON declares, else a `Content-Type` naming one
/// of the four types, else what its shape says. Anything else (another media type, a
/// JSON object of another shape, a descriptor without a valid digest) is refused with
/// the reason: Ferry stores and serves manifests only, under their own type.
pub fn manifest_type(content_type: Option<&str>, body: &[u8]) -> Result<&'static str, String> {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
    }
    let probe: Probe =
        serde_json::from_slice(body).map_err(|e| format!("not a JSON manifest ({e})"))?;
    let known = |mt: &str| ALL_MANIFESTS.iter().copied().find(|&k| k == mt);
    let declared = probe.media_type.filter(|m| !m.is_empty());
    let media_type = match (&declared, content_type.and_then(known)) {
        (Some(d), _) => known(d).ok_or_else(|| {
            format!(
                "media type {:?} is not a manifest or index type",
                d.chars().take(100).collect::<String>()
            )
        })?,
        (None, Some(ct)) => ct,
        (None, None) if probe.manifests.is_some() => OCI_INDEX,
        (None, None) => OCI_MANIFEST,
    };
    if let Some(ct) = content_type.and_then(known)
        && ct != media_type
    {
        return Err(format!("served as {ct} but declares {media_type}"));
    }
    shape::check(media_type, body)?;
    Ok(media_type)
}

/// The parts of manifests and indexes that make them what they are, as the image
/// spec and Docker's schema 2 require them.
mod shape {
    use ferry_oci::Digest;
    use serde::Deserialize;

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    #[allow(dead_code)] // Parsed to be checked, not read.
    struct Descriptor {
        media_type: String,
        digest: Digest,
        size: u64,
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct ImageManifest {
        #[serde(rename = "schemaVersion")]
        schema_version: u32,
        config: Descriptor,
        layers: Vec<Descriptor>,
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Index {
        #[serde(rename = "schemaVersion")]
        schema_version: u32,
        manifests: Vec<Descriptor>,
    }

    pub fn check(media_type: &str, body: &[u8]) -> Result<(), String> {
        let schema_version =
            if media_type == super::OCI_INDEX || media_type == super::DOCKER_LIST {
                serde_json::from_slice::<Index>(body).map(|i| i.schema_version)
            } else {
                serde_json::from_slice::<ImageManifest>(body).map(|m| m.schema_version)
            }
            .map_err(|e| format!("not a valid {media_type} ({e})"))?;
        if schema_version != 2 {
            return Err(format!("schemaVersion {schema_version} is not 2"));
        }
        Ok(())
    }
}

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
            ALL_MANIFESTS.join(", ")
        } else {
            self.0.join(", ")
        }
    }
}

/// The descriptors of an image manifest's blobs: its config, then its layers.
pub fn blob_descriptors(manifest: &serde_json::Value) -> impl Iterator<Item = &serde_json::Value> {
    let layers = manifest.get("layers").and_then(|l| l.as_array());
    manifest
        .get("config")
        .into_iter()
        .chain(layers.into_iter().flatten())
}

/// A `Content-Type` value without parameters, lowercased.
pub fn media_type(value: &str) -> &str {
    value.split(';').next().unwrap_or("").trim()
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn manifest_types_are_checked_against_their_shape() {
        let d = format!("sha256:{}", "a".repeat(64));
        let image = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"x","digest":"{d}","size":1}},"layers":[]}}"#
        );
        let index = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
        assert_eq!(
            manifest_type(Some("application/json"), index.as_bytes()),
            Ok(OCI_INDEX)
        );
        assert_eq!(
            manifest_type(Some(DOCKER_MANIFEST), image.as_bytes()),
            Ok(DOCKER_MANIFEST)
        );
        assert_eq!(manifest_type(None, image.as_bytes()), Ok(OCI_MANIFEST));
        let html = image.replacen('{', r#"{"mediaType":"text/html","#, 1);
        assert!(manifest_type(None, html.as_bytes()).is_err());
        let crlf = image.replacen(
            '{',
            r#"{"mediaType":"application/vnd.oci.image.manifest.v1+json\r\nX: y","#,
            1,
        );
        assert!(manifest_type(None, crlf.as_bytes()).is_err());
        assert!(manifest_type(None, br#"{"hello":"world"}"#).is_err());
        assert!(manifest_type(Some(OCI_INDEX), image.as_bytes()).is_err());
        assert!(manifest_type(None, b"<html>").is_err());
        let bad_digest = image.replace(&d, "sha256:zz");
        assert!(manifest_type(None, bad_digest.as_bytes()).is_err());
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
    /// Whether an index entry's `platform` object is this platform (a variant given
    /// here must match; none given matches any).
    pub fn matches(&self, platform: &serde_json::Value) -> bool {
        let field = |k: &str| platform.get(k).and_then(|v| v.as_str());
        field("os") == Some(self.os.as_str())
            && field("architecture") == Some(self.architecture.as_str())
            && self
                .variant
                .as_deref()
                .is_none_or(|v| field("variant") == Some(v))
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
        assert!(
            p.matches(&serde_json::json!({"os":"linux","architecture":"arm64","variant":"v8"}))
        );
        assert!(!p.matches(&serde_json::json!({"os":"linux","architecture":"amd64"})));
        assert!("linux".parse::<Platform>().is_err());
    }
}
