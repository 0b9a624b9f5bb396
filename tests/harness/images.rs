//! Real images without internet: OCI image layouts built in Rust (gzip'd tar layers of
//! random, incompressible content; real configs), pushed to Distribution with skopeo,
//! and OCI artifacts with a `subject` pushed with plain HTTP.
//!
//! After every push the manifest is read back from the registry, so the recorded
//! bytes and digest are exactly what the upstream serves (skopeo rewrites manifests
//! when converting formats).

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use super::http::media;
use super::process::{require_binary, run_ok};
use super::registry::Registry;
use super::sha256_digest;

/// A content-addressed blob with its bytes.
#[derive(Clone, Debug)]
pub struct Blob {
    pub digest: String,
    pub size: u64,
    pub media_type: String,
    pub bytes: Vec<u8>,
}

impl Blob {
    fn new(media_type: &str, bytes: Vec<u8>) -> Blob {
        Blob {
            digest: sha256_digest(&bytes),
            size: bytes.len() as u64,
            media_type: media_type.to_owned(),
            bytes,
        }
    }

    fn descriptor(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size})
    }
}

/// A single-platform image as the upstream serves it.
#[derive(Clone, Debug)]
pub struct PushedImage {
    pub repo: String,
    /// Empty for a platform manifest inside an index (pushed by digest only).
    pub tag: String,
    pub manifest_digest: String,
    /// The exact manifest bytes the upstream serves.
    pub manifest: Vec<u8>,
    pub media_type: String,
    pub config: Blob,
    pub layers: Vec<Blob>,
    /// `(os, architecture)`.
    pub platform: (String, String),
}

impl PushedImage {
    /// `repo:tag`.
    pub fn reference(&self) -> String {
        format!("{}:{}", self.repo, self.tag)
    }

    /// Config and layers.
    pub fn blobs(&self) -> Vec<&Blob> {
        std::iter::once(&self.config).chain(&self.layers).collect()
    }

    /// The largest layer.
    pub fn largest_layer(&self) -> &Blob {
        self.layers
            .iter()
            .max_by_key(|b| b.size)
            .expect("image has layers")
    }
}

/// A multi-platform OCI index as the upstream serves it.
#[derive(Clone, Debug)]
pub struct PushedIndex {
    pub repo: String,
    pub tag: String,
    pub digest: String,
    pub bytes: Vec<u8>,
    pub media_type: String,
    /// linux/amd64 first, then linux/arm64.
    pub images: Vec<PushedImage>,
}

impl PushedIndex {
    pub fn reference(&self) -> String {
        format!("{}:{}", self.repo, self.tag)
    }
}

/// An artifact whose `subject` is an image, plus the tag-schema fallback index.
#[derive(Clone, Debug)]
pub struct PushedArtifact {
    pub repo: String,
    pub subject_digest: String,
    pub artifact_type: String,
    pub manifest_digest: String,
    pub manifest: Vec<u8>,
    pub config: Blob,
    pub layer: Blob,
    pub annotations: serde_json::Map<String, Value>,
    /// `sha256-<hex of subject>`.
    pub fallback_tag: String,
    pub fallback_index_digest: String,
    pub fallback_index: Vec<u8>,
}

pub use ferry_testkit::images::random_bytes;

/// A gzip'd tar holding one file of `size` random bytes; returns (layer, diff_id).
pub fn make_layer(size: usize) -> (Blob, String) {
    let (bytes, diff_id) = ferry_testkit::images::layer(size);
    (Blob::new(media::OCI_LAYER_GZIP, bytes), diff_id)
}

/// An OCI image config for `arch` with the given layers' diff_ids.
fn make_config(arch: &str, diff_ids: &[String]) -> Blob {
    Blob::new(
        media::OCI_CONFIG,
        ferry_testkit::images::config(arch, diff_ids, "ferry test harness"),
    )
}

/// Layers, config and manifest of one platform, not yet pushed.
struct LocalImage {
    config: Blob,
    layers: Vec<Blob>,
    manifest: Blob,
    arch: String,
}

fn make_image(arch: &str, layer_sizes: &[usize]) -> LocalImage {
    let (layers, diff_ids): (Vec<Blob>, Vec<String>) =
        layer_sizes.iter().map(|&s| make_layer(s)).unzip();
    let config = make_config(arch, &diff_ids);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
        "annotations": {"org.opencontainers.image.title": format!("ferry-test-{arch}")},
    });
    let manifest = Blob::new(
        media::OCI_MANIFEST,
        serde_json::to_vec(&manifest).expect("manifest JSON"),
    );
    LocalImage {
        config,
        layers,
        manifest,
        arch: arch.to_owned(),
    }
}

/// Writes an OCI image layout with `blobs`, whose index.json names `top` as `tag`.
fn write_layout(dir: &Path, blobs: &[&Blob], top: &Blob, tag: &str) {
    let blob_dir = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blob_dir).expect("create layout blobs dir");
    for b in blobs.iter().chain(std::iter::once(&top)) {
        std::fs::write(blob_dir.join(super::digest_hex(&b.digest)), &b.bytes)
            .expect("write layout blob");
    }
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
        .expect("write oci-layout");
    let mut desc = top.descriptor();
    desc["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
    let index = json!({"schemaVersion": 2, "mediaType": media::OCI_INDEX, "manifests": [desc]});
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&index).expect("index JSON"),
    )
    .expect("write index.json");
}

/// `skopeo copy` from an OCI layout into `registry`.
fn skopeo_push(registry: &Registry, layout: &Path, tag: &str, repo: &str, extra: &[&str]) {
    let skopeo = require_binary("skopeo", "skopeo");
    let mut cmd = Command::new(skopeo);
    cmd.args([
        "--insecure-policy",
        "copy",
        "--dest-tls-verify=false",
        "--retry-times",
        "0",
    ]);
    if let Some((u, p)) = registry.push_creds() {
        cmd.arg("--dest-creds").arg(format!("{u}:{p}"));
    }
    cmd.args(extra);
    cmd.arg(format!("oci:{}:{tag}", layout.display()));
    cmd.arg(format!("docker://{}/{repo}:{tag}", registry.addr()));
    run_ok(cmd, Duration::from_secs(120));
}

/// Reads a pushed manifest back and pairs its descriptors with the local blobs.
fn read_back_image(
    registry: &Registry,
    repo: &str,
    tag: &str,
    reference: &str,
    local: &LocalImage,
) -> PushedImage {
    let client = registry.client();
    let (manifest, media_type) = super::block_on(client.manifest_bytes(repo, reference));
    let parsed: Value = serde_json::from_slice(&manifest).expect("pushed manifest JSON");
    let known: HashMap<&str, &Blob> = std::iter::once(&local.config)
        .chain(&local.layers)
        .map(|b| (b.digest.as_str(), b))
        .collect();
    let resolve = |desc: &Value| -> Blob {
        let digest = desc["digest"].as_str().expect("descriptor digest");
        let media_type = desc["mediaType"].as_str().unwrap_or("").to_owned();
        let bytes = match known.get(digest) {
            Some(b) => b.bytes.clone(),
            None => super::block_on(client.blob(repo, digest)),
        };
        let blob = Blob {
            digest: digest.to_owned(),
            size: bytes.len() as u64,
            media_type,
            bytes,
        };
        assert_eq!(
            Some(blob.size),
            desc["size"].as_u64(),
            "descriptor size of {digest}"
        );
        blob
    };
    let config = resolve(&parsed["config"]);
    let layers = parsed["layers"]
        .as_array()
        .expect("manifest layers")
        .iter()
        .map(resolve)
        .collect();
    PushedImage {
        repo: repo.to_owned(),
        tag: tag.to_owned(),
        manifest_digest: sha256_digest(&manifest),
        manifest,
        media_type,
        config,
        layers,
        platform: ("linux".to_owned(), local.arch.clone()),
    }
}

/// Pushes a single-platform (linux/amd64) OCI image with one layer per entry of
/// `layer_sizes` (random bytes of that size, gzip'd).
pub fn push_image(
    registry: &Registry,
    repo: &str,
    tag: &str,
    layer_sizes: &[usize],
) -> PushedImage {
    let local = make_image("amd64", layer_sizes);
    let layout = super::temp_dir("layout");
    let blobs: Vec<&Blob> = std::iter::once(&local.config)
        .chain(&local.layers)
        .collect();
    write_layout(layout.path(), &blobs, &local.manifest, tag);
    skopeo_push(registry, layout.path(), tag, repo, &[]);
    let pushed = read_back_image(registry, repo, tag, tag, &local);
    assert_eq!(
        pushed.manifest_digest, local.manifest.digest,
        "skopeo kept the OCI manifest bytes"
    );
    pushed
}

/// Like [`push_image`], but pushed with plain HTTP (monolithic blob uploads, then the
/// manifest by tag) instead of skopeo: much quicker, for tests that need fresh images
/// over and over. The manifest bytes are the ones built here, as Distribution keeps
/// them verbatim.
pub fn push_image_http(
    registry: &Registry,
    repo: &str,
    tag: &str,
    layer_sizes: &[usize],
) -> PushedImage {
    let local = make_image("amd64", layer_sizes);
    let client = registry.client();
    super::block_on(async {
        for blob in std::iter::once(&local.config).chain(&local.layers) {
            client.upload_blob(repo, &blob.bytes).await;
        }
        client
            .put_manifest(repo, tag, media::OCI_MANIFEST, &local.manifest.bytes)
            .await;
    });
    let pushed = read_back_image(registry, repo, tag, tag, &local);
    assert_eq!(
        pushed.manifest_digest, local.manifest.digest,
        "Distribution kept the manifest bytes"
    );
    pushed
}

/// Pushes the same kind of image, converted by skopeo to Docker schema 2
/// (`--format v2s2`).
pub fn push_docker_v2s2(
    registry: &Registry,
    repo: &str,
    tag: &str,
    layer_sizes: &[usize],
) -> PushedImage {
    let local = make_image("amd64", layer_sizes);
    let layout = super::temp_dir("layout");
    let blobs: Vec<&Blob> = std::iter::once(&local.config)
        .chain(&local.layers)
        .collect();
    write_layout(layout.path(), &blobs, &local.manifest, tag);
    skopeo_push(registry, layout.path(), tag, repo, &["--format", "v2s2"]);
    let pushed = read_back_image(registry, repo, tag, tag, &local);
    assert_eq!(
        pushed.media_type,
        media::DOCKER_MANIFEST,
        "skopeo --format v2s2 wrote a Docker schema 2 manifest"
    );
    pushed
}

/// Pushes an OCI image index with linux/amd64 and linux/arm64, each its own manifest
/// with distinct layers (`skopeo copy --all`).
pub fn push_index(
    registry: &Registry,
    repo: &str,
    tag: &str,
    layer_sizes: &[usize],
) -> PushedIndex {
    let locals = [
        make_image("amd64", layer_sizes),
        make_image("arm64", layer_sizes),
    ];
    let index = json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_INDEX,
        "manifests": locals.iter().map(|l| {
            let mut d = l.manifest.descriptor();
            d["platform"] = json!({"architecture": l.arch, "os": "linux"});
            d
        }).collect::<Vec<_>>(),
    });
    let index = Blob::new(
        media::OCI_INDEX,
        serde_json::to_vec(&index).expect("index JSON"),
    );
    let layout = super::temp_dir("layout");
    let mut blobs: Vec<&Blob> = Vec::new();
    for l in &locals {
        blobs.push(&l.config);
        blobs.extend(&l.layers);
        blobs.push(&l.manifest);
    }
    write_layout(layout.path(), &blobs, &index, tag);
    skopeo_push(registry, layout.path(), tag, repo, &["--all"]);

    let client = registry.client();
    let (bytes, media_type) = super::block_on(client.manifest_bytes(repo, tag));
    let digest = sha256_digest(&bytes);
    assert_eq!(digest, index.digest, "skopeo kept the index bytes");
    let images = locals
        .iter()
        .map(|l| read_back_image(registry, repo, "", &l.manifest.digest, l))
        .collect();
    PushedIndex {
        repo: repo.to_owned(),
        tag: tag.to_owned(),
        digest,
        bytes,
        media_type,
        images,
    }
}

/// Pushes an artifact manifest (`artifactType`, empty config, one layer, `subject` =
/// `subject`) with plain HTTP, then maintains the referrers tag-schema fallback index
/// `sha256-<hex>` as an OCI 1.1 client does against a registry without the referrers
/// API (read, append without duplicates, write back).
pub fn push_artifact_with_referrer(
    registry: &Registry,
    repo: &str,
    subject: &PushedImage,
    artifact_type: &str,
) -> PushedArtifact {
    let client = registry.client();
    let config = Blob::new(media::OCI_EMPTY, b"{}".to_vec());
    let layer = Blob::new(
        &format!("{artifact_type}+json"),
        serde_json::to_vec(
            &json!({"sbom": "ferry test", "nonce": hex::encode(rand::random::<[u8; 8]>())}),
        )
        .expect("layer JSON"),
    );
    let mut annotations = serde_json::Map::new();
    annotations.insert(
        "org.opencontainers.image.created".to_owned(),
        json!("2023-11-14T22:13:20Z"),
    );
    annotations.insert("org.example.kind".to_owned(), json!(artifact_type));
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {"mediaType": media::OCI_EMPTY, "digest": config.digest, "size": config.size, "data": "e30="},
        "layers": [layer.descriptor()],
        "subject": {"mediaType": subject.media_type, "digest": subject.manifest_digest, "size": subject.manifest.len()},
        "annotations": annotations,
    });
    let manifest = serde_json::to_vec(&manifest).expect("artifact manifest JSON");
    let manifest_digest = sha256_digest(&manifest);
    let fallback_tag = format!("sha256-{}", super::digest_hex(&subject.manifest_digest));

    let (fallback_index, fallback_index_digest) = super::block_on(async {
        client.upload_blob(repo, &config.bytes).await;
        client.upload_blob(repo, &layer.bytes).await;
        client
            .put_manifest(repo, &manifest_digest, media::OCI_MANIFEST, &manifest)
            .await;
        // Tag-schema fallback: read-modify-write the index (start empty on 404).
        let resp = client
            .get_manifest(repo, &fallback_tag, &[media::OCI_INDEX])
            .await;
        let mut index = match resp.status().as_u16() {
            200 => resp.json::<Value>().await.expect("fallback index JSON"),
            404 => json!({"schemaVersion": 2, "mediaType": media::OCI_INDEX, "manifests": []}),
            s => panic!("GET fallback index {repo}:{fallback_tag}: {s}"),
        };
        let list = index["manifests"].as_array_mut().expect("manifests array");
        if !list.iter().any(|d| d["digest"] == json!(manifest_digest)) {
            list.push(json!({
                "mediaType": media::OCI_MANIFEST,
                "digest": manifest_digest,
                "size": manifest.len(),
                "artifactType": artifact_type,
                "annotations": annotations,
            }));
        }
        let bytes = serde_json::to_vec(&index).expect("fallback index JSON");
        let digest = client
            .put_manifest(repo, &fallback_tag, media::OCI_INDEX, &bytes)
            .await;
        (bytes, digest)
    });

    PushedArtifact {
        repo: repo.to_owned(),
        subject_digest: subject.manifest_digest.clone(),
        artifact_type: artifact_type.to_owned(),
        manifest_digest,
        manifest,
        config,
        layer,
        annotations,
        fallback_tag,
        fallback_index_digest,
        fallback_index,
    }
}

/// An OCI manifest of at least `min_size` bytes (padded with an annotation) that
/// references one small layer; returns (digest, bytes). Distribution 2.8.2 can neither
/// store nor serve one over 4 MiB (PUT: "http: request body too large"; GET of a blob
/// linked in by hand: 500 "storage: read exceeds limit"), so oversized manifests are
/// served by [`super::static_registry::StaticRegistry`].
pub fn large_manifest(min_size: usize) -> (String, Vec<u8>) {
    let (layer, diff_id) = make_layer(1024);
    let config = make_config("amd64", &[diff_id]);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": [layer.descriptor()],
        "annotations": {"org.example.padding": "x".repeat(min_size)},
    });
    let bytes = serde_json::to_vec(&manifest).expect("manifest JSON");
    (sha256_digest(&bytes), bytes)
}

/// Pushes a raw manifest (`bytes` with `media_type`) by `reference` with plain HTTP;
/// the blobs it references must already exist. Returns its digest.
pub fn put_manifest(
    registry: &Registry,
    repo: &str,
    reference: &str,
    media_type: &str,
    bytes: &[u8],
) -> String {
    let client = registry.client();
    super::block_on(client.put_manifest(repo, reference, media_type, bytes))
}
