//! What a manifest references, as far as copying an image whole is concerned: an
//! index's platform manifests, or an image manifest's config and layers. A
//! `subject` is not followed: the image does not need its referrers' target.

use ferry_oci::Digest;
use ferry_oci::manifest::{self, ALL_MANIFESTS, Manifest, is_index};

use super::Error;
#[cfg(test)]
use ferry_oci::manifest::{DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};

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

impl Descriptor {
    fn of(d: &manifest::Descriptor, parent: &Digest) -> Result<Descriptor, Error> {
        Ok(Descriptor {
            media_type: Some(d.media_type().to_string()).filter(|t| !t.is_empty()),
            digest: manifest::digest(d).map_err(|e| Error::BadManifest {
                digest: parent.clone(),
                reason: e.to_string(),
            })?,
            size: d.size(),
            platform: d.platform().as_ref().map(manifest::platform_label),
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
    let (found, parsed) = Manifest::check(None, bytes).map_err(|e| bad(e.to_string()))?;
    let media_type = match declared {
        Some(d)
            if parsed.declared_type().is_none()
                && ALL_MANIFESTS.contains(&d)
                && is_index(d) == is_index(found) =>
        {
            d
        }
        _ => found,
    }
    .to_string();
    let of = |d| Descriptor::of(d, digest);
    let children = match &parsed {
        Manifest::Index(_) => {
            Children::Manifests(parsed.children().map(of).collect::<Result<_, _>>()?)
        }
        Manifest::Image(_) => Children::Blobs(parsed.blobs().map(of).collect::<Result<_, _>>()?),
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
            OCI_MANIFEST
        );
        let p = parse(&d, index.as_bytes(), None).unwrap();
        assert_eq!(p.media_type, OCI_INDEX);
        let Children::Manifests(m) = p.children else {
            panic!("an index")
        };
        assert_eq!(m[0].digest, child);
        assert_eq!(m[0].platform.as_deref(), Some("linux/arm64/v8"));

        let image = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"c","digest":"{child}","size":5}},"layers":[{{"mediaType":"l","digest":"{d}","size":1}}]}}"#,
            DOCKER_MANIFEST
        );
        let p = parse(&d, image.as_bytes(), Some(OCI_MANIFEST)).unwrap();
        assert_eq!(p.media_type, DOCKER_MANIFEST);
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
