//! Building small stores for the maintenance tests.

use crate::index::now_secs;
use crate::{Digest, ManifestRecord, Repo, Store, Tag, TagRecord};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

pub fn repo(name: &str) -> Repo {
    Repo {
        upstream: "up".into(),
        name: name.parse().unwrap(),
    }
}

/// Stores `bytes` as a blob fetched through `repo`, as the proxy does.
pub fn put_blob(store: &Store, repo: &Repo, bytes: &[u8]) -> Digest {
    let d = Digest::sha256_of(bytes);
    store.blobs.put(&d, bytes).unwrap();
    store.index.blob_stored(&d, bytes.len() as u64).unwrap();
    store.index.link(repo, &d).unwrap();
    d
}

/// Stores a manifest (and a tag for it, if given), as the proxy does.
pub fn put_manifest(
    store: &Store,
    repo: &Repo,
    tag: Option<&str>,
    media_type: &str,
    bytes: &[u8],
) -> Digest {
    let d = Digest::sha256_of(bytes);
    store.blobs.put(&d, bytes).unwrap();
    store
        .index
        .put_manifest(
            &d,
            &ManifestRecord {
                media_type: media_type.into(),
                size: bytes.len() as u64,
            },
        )
        .unwrap();
    store.index.link(repo, &d).unwrap();
    if let Some(tag) = tag {
        let tag: Tag = tag.parse().unwrap();
        store
            .index
            .set_tag(
                repo,
                &tag,
                &TagRecord {
                    digest: d.clone(),
                    media_type: media_type.into(),
                    fetched_at: now_secs(),
                },
            )
            .unwrap();
    }
    d
}

fn descriptor(d: &Digest, size: usize) -> String {
    format!(r#"{{"mediaType":"application/octet-stream","digest":"{d}","size":{size}}}"#)
}

/// An image manifest over stored `config` and `layers` (digest, size).
pub fn image_manifest(config: (&Digest, usize), layers: &[(&Digest, usize)]) -> Vec<u8> {
    let layers: Vec<String> = layers.iter().map(|(d, s)| descriptor(d, *s)).collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{},"layers":[{}]}}"#,
        descriptor(config.0, config.1),
        layers.join(",")
    )
    .into_bytes()
}

pub fn index_manifest(children: &[(&Digest, usize)]) -> Vec<u8> {
    let children: Vec<String> = children.iter().map(|(d, s)| descriptor(d, *s)).collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{}]}}"#,
        children.join(",")
    )
    .into_bytes()
}

/// A whole single-platform image: returns (manifest, config, own layer) digests. The
/// layer is `layer_size` bytes of `fill`; `shared` layers are referenced too.
pub fn image(
    store: &Store,
    repo: &Repo,
    tag: Option<&str>,
    fill: u8,
    layer_size: usize,
    shared: &[(&Digest, usize)],
) -> (Digest, Digest, Digest) {
    let layer = vec![fill; layer_size];
    let l = put_blob(store, repo, &layer);
    let config = format!(r#"{{"architecture":"amd64","os":"linux","fill":{fill}}}"#).into_bytes();
    let c = put_blob(store, repo, &config);
    let mut layers = shared.to_vec();
    layers.push((&l, layer_size));
    let m = put_manifest(
        store,
        repo,
        tag,
        OCI_MANIFEST,
        &image_manifest((&c, config.len()), &layers),
    );
    (m, c, l)
}
