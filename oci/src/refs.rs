//! What a stored manifest points at, read from its JSON.
//!
//! Only the descriptors matter: `config`, `layers`, `manifests` (an index's children),
//! `subject` (what an artifact refers to), plus the rarer `blobs` (OCI artifact manifest
//! drafts) and Docker schema 1 `fsLayers`. Descriptors whose digest Ferry cannot verify
//! are skipped: such content can never be in the store.

use serde_json::Value;

use crate::Digest;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Refs {
    /// Config and layers (and other plain blobs).
    pub blobs: Vec<Digest>,
    /// An index's child manifests.
    pub manifests: Vec<Digest>,
    pub subject: Option<Digest>,
}

/// Why a stored manifest could not be read as one.
#[derive(Debug, thiserror::Error)]
#[error("not a JSON manifest: {0}")]
pub struct RefsError(String);

impl Refs {
    pub fn parse(bytes: &[u8]) -> Result<Refs, RefsError> {
        let v: Value = serde_json::from_slice(bytes).map_err(|e| RefsError(e.to_string()))?;
        if !v.is_object() {
            return Err(RefsError("not a JSON object".into()));
        }
        let digest = |d: &Value, field: &str| {
            d.get(field)
                .and_then(Value::as_str)
                .and_then(|s| s.parse::<Digest>().ok())
        };
        let list = |field: &str, key: &str| -> Vec<Digest> {
            v.get(field)
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|d| digest(d, key)).collect())
                .unwrap_or_default()
        };
        let mut blobs: Vec<Digest> = v
            .get("config")
            .and_then(|c| digest(c, "digest"))
            .into_iter()
            .collect();
        blobs.extend(list("layers", "digest"));
        blobs.extend(list("blobs", "digest"));
        blobs.extend(list("fsLayers", "blobSum"));
        Ok(Refs {
            blobs,
            manifests: list("manifests", "digest"),
            subject: v.get("subject").and_then(|s| digest(s, "digest")),
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
    fn reads_every_kind_of_descriptor() {
        let (c, l, m, s) = (
            Digest::sha256_of(b"c"),
            Digest::sha256_of(b"l"),
            Digest::sha256_of(b"m"),
            Digest::sha256_of(b"s"),
        );
        let json = format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"{c}"}},"layers":[{{"digest":"{l}"}},{{"digest":"md5:00"}}],"manifests":[{{"digest":"{m}"}}],"subject":{{"digest":"{s}"}}}}"#
        );
        let r = Refs::parse(json.as_bytes()).unwrap();
        assert_eq!(r.blobs, vec![c, l]);
        assert_eq!(r.manifests, vec![m]);
        assert_eq!(r.subject, Some(s));
        assert_eq!(r.all().count(), 4);
        assert_eq!(r.contents().count(), 3);
        assert!(Refs::parse(b"<html>").is_err());
        assert!(Refs::parse(b"[1]").is_err());
    }
}
