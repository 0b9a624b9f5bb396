//! What a stored manifest points at: an image manifest's config and layers, an
//! index's child manifests, and the `subject` an artifact refers to. Descriptors whose
//! digest Ferry cannot verify are skipped: such content can never be in the store.

use crate::Digest;
use crate::manifest::{self, Manifest};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Refs {
    /// Config and layers.
    pub blobs: Vec<Digest>,
    /// An index's child manifests.
    pub manifests: Vec<Digest>,
    pub subject: Option<Digest>,
}

impl Refs {
    pub fn parse(bytes: &[u8]) -> Result<Refs, manifest::ManifestError> {
        let m = Manifest::read(bytes)?;
        let digests = |ds: &mut dyn Iterator<Item = &manifest::Descriptor>| {
            ds.filter_map(|d| manifest::digest(d).ok()).collect()
        };
        Ok(Refs {
            blobs: digests(&mut m.blobs()),
            manifests: digests(&mut m.children()),
            subject: m.subject().and_then(|d| manifest::digest(d).ok()),
        })
    }

    /// What is part of the image itself: blobs and child manifests, not the subject.
    pub fn contents(&self) -> impl Iterator<Item = &Digest> {
        self.blobs.iter().chain(&self.manifests)
    }

    /// Everything referenced, the subject included.
    pub fn all(&self) -> impl Iterator<Item = &Digest> {
        self.contents().chain(&self.subject)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_images_and_indexes() {
        let (c, l, m, s) = (
            Digest::sha256_of(b"c"),
            Digest::sha256_of(b"l"),
            Digest::sha256_of(b"m"),
            Digest::sha256_of(b"s"),
        );
        let d = |d: &Digest| format!(r#"{{"mediaType":"x","digest":"{d}","size":1}}"#);
        let json = format!(
            r#"{{"schemaVersion":2,"config":{},"layers":[{},{{"mediaType":"x","digest":"md5:00","size":1}}],"subject":{}}}"#,
            d(&c),
            d(&l),
            d(&s)
        );
        let r = Refs::parse(json.as_bytes()).unwrap();
        assert_eq!(r.blobs, vec![c, l]);
        assert_eq!(r.subject, Some(s));
        assert_eq!(r.all().count(), 3);
        assert_eq!(r.contents().count(), 2);
        let index = format!(r#"{{"schemaVersion":2,"manifests":[{}]}}"#, d(&m));
        let r = Refs::parse(index.as_bytes()).unwrap();
        assert_eq!(r.manifests, vec![m]);
        assert!(Refs::parse(b"<html>").is_err());
        assert!(Refs::parse(b"[1]").is_err());
    }
}
