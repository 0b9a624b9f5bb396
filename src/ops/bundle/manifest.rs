//! What a manifest references, as far as copying an image whole is concerned: an
//! index's platform manifests, or an image manifest's config and layers. A
//! `subject` is not followed: the image does not need its referrers' target.

use serde::Deserialize;

use ferry_oci::Digest;

use super::Error;
use crate::oci;

/// A content descriptor, its digest validated.
#[derive(Debug, Clone)]
pub(crate) struct Descriptor {
    pub media_type: Option<String>,
    pub digest: Digest,
    pub size: u64,
    /// `os/architecture[/variant]`, for messages about platforms.
    pub platform: Option<String>,
}

#[derive(Debug)]
pub(crate) enum Children {
    /// An index (or Docker manifest list): manifests, one per platform.
    Manifests(Vec<Descriptor>),
    /// An image or artifact manifest: config and layers.
    Blobs(Vec<Descriptor>),
}

#[derive(Debug)]
pub(crate) struct Parsed {
    pub media_type: String,
    pub children: Children,
}

#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    manifests: Option<Vec<RawDescriptor>>,
    config: Option<RawDescriptor>,
    layers: Option<Vec<RawDescriptor>>,
    /// The short-lived OCI artifact manifest's list of blobs.
    blobs: Option<Vec<RawDescriptor>>,
    #[serde(rename = "fsLayers")]
    fs_layers: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct RawDescriptor {
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    digest: String,
    size: u64,
    platform: Option<RawPlatform>,
}

#[derive(Deserialize)]
struct RawPlatform {
    os: String,
    architecture: String,
    variant: Option<String>,
}

impl RawDescriptor {
    fn validate(self, manifest: &Digest) -> Result<Descriptor, Error> {
        let digest = self.digest.parse().map_err(|e| Error::BadManifest {
            digest: manifest.clone(),
            reason: format!("{e}"),
        })?;
        Ok(Descriptor {
            media_type: self.media_type,
            digest,
            size: self.size,
            platform: self.platform.map(|p| match p.variant {
                Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                None => format!("{}/{}", p.os, p.architecture),
            }),
        })
    }
}

/// Parses manifest `digest`. Its media type is the one its JSON declares, else
/// `declared` (what the descriptor pointing at it says), else what its shape says.
pub(crate) fn parse(
    digest: &Digest,
    bytes: &[u8],
    declared: Option<&str>,
) -> Result<Parsed, Error> {
    let bad = |reason: String| Error::BadManifest {
        digest: digest.clone(),
        reason,
    };
    let raw: Raw =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not a JSON manifest ({e})")))?;
    if raw.fs_layers.is_some() {
        return Err(bad("Docker schema 1 manifests are not supported".into()));
    }
    let is_index = raw.manifests.is_some();
    let media_type = raw
        .media_type
        .filter(|m| !m.is_empty())
        .or_else(|| declared.filter(|m| !m.is_empty()).map(str::to_string))
        .unwrap_or_else(|| {
            if is_index {
                oci::OCI_INDEX
            } else {
                oci::OCI_MANIFEST
            }
            .to_string()
        });
    let validate = |v: Vec<RawDescriptor>| -> Result<Vec<Descriptor>, Error> {
        v.into_iter().map(|d| d.validate(digest)).collect()
    };
    let children = if let Some(manifests) = raw.manifests {
        Children::Manifests(validate(manifests)?)
    } else {
        let mut blobs = Vec::new();
        blobs.extend(raw.config.map(|c| c.validate(digest)).transpose()?);
        blobs.extend(validate(raw.layers.unwrap_or_default())?);
        blobs.extend(validate(raw.blobs.unwrap_or_default())?);
        Children::Blobs(blobs)
    };
    Ok(Parsed {
        media_type,
        children,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_and_image() {
        let d = Digest::sha256_of(b"x");
        let child = Digest::sha256_of(b"child");
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{}","digest":"{child}","size":5,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}}]}}"#,
            oci::OCI_MANIFEST
        );
        let p = parse(&d, index.as_bytes(), None).unwrap();
        assert_eq!(p.media_type, oci::OCI_INDEX);
        let Children::Manifests(m) = p.children else {
            panic!("an index")
        };
        assert_eq!(m[0].digest, child);
        assert_eq!(m[0].platform.as_deref(), Some("linux/arm64/v8"));

        let image = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"digest":"{child}","size":5}},"layers":[{{"digest":"{d}","size":1}}]}}"#,
            oci::DOCKER_MANIFEST
        );
        let p = parse(&d, image.as_bytes(), Some(oci::OCI_MANIFEST)).unwrap();
        assert_eq!(p.media_type, oci::DOCKER_MANIFEST);
        let Children::Blobs(b) = p.children else {
            panic!("an image")
        };
        assert_eq!(b.len(), 2);
    }

    #[test]
    fn refusals() {
        let d = Digest::sha256_of(b"x");
        assert!(parse(&d, b"<html>", None).is_err());
        assert!(parse(&d, br#"{"schemaVersion":1,"fsLayers":[]}"#, None).is_err());
        assert!(parse(&d, br#"{"layers":[{"digest":"md5:0000","size":1}]}"#, None).is_err());
    }
}
