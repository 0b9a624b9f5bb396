//! Image manifests and indexes as the image spec defines them (`oci-spec`'s types):
//! their media types, the check a manifest passes before Ferry stores it, and the
//! descriptors it holds. Every part of Ferry that walks a manifest (the store's
//! reference reader, prefetch, bundles, the status report) reads it through
//! [`Manifest`].

use oci_spec::image::{ImageIndex, ImageManifest};

pub use oci_spec::image::{Descriptor, Platform};

use crate::{Digest, DigestError};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// The manifest types Ferry asks for when a client names none.
pub const ALL_MANIFESTS: [&str; 4] = [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST];

/// Manifests larger than this are refused (the spec asks registries to take at least
/// 4 MB; containerd refuses more than about 4 MiB).
pub const MAX_MANIFEST_SIZE: usize = 4 * 1024 * 1024;

/// Whether `media_type` is an index (OCI) or a manifest list (Docker).
pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_LIST
}

/// An image manifest or an index, parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum Manifest {
    Image(Box<ImageManifest>),
    Index(Box<ImageIndex>),
}

/// Why bytes are not the manifest they should be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ManifestError(String);

impl Manifest {
    /// Parses `bytes` as `media_type` says: an index or list as an index, anything
    /// else as an image manifest. Only schema version 2 is a manifest Ferry reads.
    pub fn parse(media_type: &str, bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let parsed = if is_index(media_type) {
            serde_json::from_slice(bytes).map(|i| Manifest::Index(Box::new(i)))
        } else {
            serde_json::from_slice(bytes).map(|m| Manifest::Image(Box::new(m)))
        };
        let manifest =
            parsed.map_err(|e| ManifestError(format!("not a valid {media_type} ({e})")))?;
        match manifest.schema_version() {
            2 => Ok(manifest),
            v => Err(ManifestError(format!("schemaVersion {v} is not 2"))),
        }
    }

    /// Checks that `body` is the OCI or Docker image manifest or index it claims to
    /// be and says which: the `mediaType` its JSON declares, else a `Content-Type`
    /// naming one of the four types, else what its shape says. Anything else (another
    /// media type, a JSON object of another shape, a descriptor whose digest Ferry
    /// cannot verify) is refused with the reason: Ferry stores and serves manifests
    /// only, under their own type.
    pub fn check(
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<(&'static str, Manifest), ManifestError> {
        let probe = Probe::read(body)?;
        let known = |mt: &str| ALL_MANIFESTS.iter().copied().find(|&k| k == mt);
        let media_type = match (&probe.media_type, content_type.and_then(known)) {
            (Some(d), _) => known(d).ok_or_else(|| {
                ManifestError(format!(
                    "media type {:?} is not a manifest or index type",
                    d.chars().take(100).collect::<String>()
                ))
            })?,
            (None, Some(ct)) => ct,
            (None, None) => probe.shape(),
        };
        if let Some(ct) = content_type.and_then(known)
            && ct != media_type
        {
            return Err(ManifestError(format!(
                "served as {ct} but declares {media_type}"
            )));
        }
        let manifest = Manifest::parse(media_type, body)?;
        for d in manifest.blobs().chain(manifest.children()) {
            digest(d).map_err(|e| ManifestError(format!("a descriptor's digest: {e}")))?;
        }
        Ok((media_type, manifest))
    }

    /// Parses a manifest whose media type is not known (a stored one, read back): the
    /// type its JSON declares, else what its shape says.
    pub fn read(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let probe = Probe::read(bytes)?;
        let media_type = match probe.media_type.as_deref() {
            Some(t) if is_index(t) => OCI_INDEX,
            Some(_) => OCI_MANIFEST,
            None => probe.shape(),
        };
        Manifest::parse(media_type, bytes)
    }

    fn schema_version(&self) -> u32 {
        match self {
            Manifest::Image(m) => m.schema_version(),
            Manifest::Index(i) => i.schema_version(),
        }
    }

    /// The `mediaType` the JSON declares, if any.
    pub fn declared_type(&self) -> Option<String> {
        match self {
            Manifest::Image(m) => m.media_type().as_ref().map(|t| t.to_string()),
            Manifest::Index(i) => i.media_type().as_ref().map(|t| t.to_string()),
        }
    }

    /// An image manifest's config, then its layers; nothing for an index.
    pub fn blobs(&self) -> impl Iterator<Item = &Descriptor> {
        let (config, layers) = match self {
            Manifest::Image(m) => (Some(m.config()), &m.layers()[..]),
            Manifest::Index(_) => (None, &[][..]),
        };
        config.into_iter().chain(layers)
    }

    /// An index's manifests (one per platform, usually); nothing for an image.
    pub fn children(&self) -> impl Iterator<Item = &Descriptor> {
        match self {
            Manifest::Index(i) => &i.manifests()[..],
            Manifest::Image(_) => &[][..],
        }
        .iter()
    }

    /// What this manifest refers to (an artifact's target), if anything.
    pub fn subject(&self) -> Option<&Descriptor> {
        match self {
            Manifest::Image(m) => m.subject().as_ref(),
            Manifest::Index(i) => i.subject().as_ref(),
        }
    }
}

/// A descriptor's digest, if it is one Ferry can verify.
pub fn digest(d: &Descriptor) -> Result<Digest, DigestError> {
    d.digest().to_string().parse()
}

/// `os/architecture[/variant]`, for messages.
pub fn platform_label(p: &Platform) -> String {
    match p.variant() {
        Some(v) => format!("{}/{}/{v}", p.os(), p.architecture()),
        None => format!("{}/{}", p.os(), p.architecture()),
    }
}

/// The two fields that say what kind of manifest a JSON object is.
#[derive(serde::Deserialize)]
struct Probe {
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    manifests: Option<serde::de::IgnoredAny>,
}

impl Probe {
    fn read(body: &[u8]) -> Result<Probe, ManifestError> {
        let mut probe: Probe = serde_json::from_slice(body)
            .map_err(|e| ManifestError(format!("not a JSON manifest ({e})")))?;
        probe.media_type = probe.media_type.filter(|m| !m.is_empty());
        Ok(probe)
    }

    fn shape(&self) -> &'static str {
        if self.manifests.is_some() {
            OCI_INDEX
        } else {
            OCI_MANIFEST
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(d: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"x","digest":"{d}","size":1}},"layers":[]}}"#
        )
    }

    #[test]
    fn manifest_types_are_checked_against_their_shape() {
        let d = format!("sha256:{}", "a".repeat(64));
        let image = image(&d);
        let index = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
        let kind = |ct, body: &str| Manifest::check(ct, body.as_bytes()).map(|(t, _)| t);
        assert_eq!(kind(Some("application/json"), index), Ok(OCI_INDEX));
        assert_eq!(kind(Some(DOCKER_MANIFEST), &image), Ok(DOCKER_MANIFEST));
        assert_eq!(kind(None, &image), Ok(OCI_MANIFEST));
        let html = image.replacen('{', r#"{"mediaType":"text/html","#, 1);
        assert!(kind(None, &html).is_err());
        let crlf = image.replacen(
            '{',
            r#"{"mediaType":"application/vnd.oci.image.manifest.v1+json\r\nX: y","#,
            1,
        );
        assert!(kind(None, &crlf).is_err());
        assert!(kind(None, r#"{"hello":"world"}"#).is_err());
        assert!(kind(Some(OCI_INDEX), &image).is_err());
        assert!(kind(None, "<html>").is_err());
        assert!(kind(None, &image.replace(&d, "sha256:zz")).is_err());
        // A digest Ferry cannot verify would name a blob that can never be fetched.
        assert!(kind(None, &image.replace(&d, "md5:0123")).is_err());
        let v1 = image.replace(r#""schemaVersion":2"#, r#""schemaVersion":1"#);
        assert!(kind(None, &v1).is_err());
    }

    #[test]
    fn walks_images_and_indexes() {
        let (c, l, m, s) = (
            Digest::sha256_of(b"c"),
            Digest::sha256_of(b"l"),
            Digest::sha256_of(b"m"),
            Digest::sha256_of(b"s"),
        );
        let img = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"x","digest":"{c}","size":1}},"layers":[{{"mediaType":"y","digest":"{l}","size":2}}],"subject":{{"mediaType":"z","digest":"{s}","size":3}}}}"#
        );
        let parsed = Manifest::read(img.as_bytes()).unwrap();
        let blobs: Vec<Digest> = parsed.blobs().map(|d| digest(d).unwrap()).collect();
        assert_eq!(blobs, vec![c, l]);
        assert_eq!(parsed.children().count(), 0);
        assert_eq!(digest(parsed.subject().unwrap()).unwrap(), s);

        let idx = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{m}","size":5,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}}]}}"#
        );
        let parsed = Manifest::read(idx.as_bytes()).unwrap();
        let child = parsed.children().next().unwrap();
        assert_eq!(digest(child).unwrap(), m);
        assert_eq!(
            platform_label(child.platform().as_ref().unwrap()),
            "linux/arm64/v8"
        );
        assert_eq!(parsed.blobs().count(), 0);
        assert!(Manifest::read(b"[1]").is_err());
    }
}
