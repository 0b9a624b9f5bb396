//! Synthetic images of incompressible layers (the test kit's
//! [`ferry_testkit::images`]), pushed to the upstream with the load generator's own
//! client (monolithic uploads, then the OCI manifest by tag), keeping only the bytes
//! the benchmark verifies bodies against.

use ferry_testkit::http::media::{OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST};
use ferry_testkit::sha256_digest;
use serde_json::json;

use super::http::Conn;

#[derive(Clone, Debug)]
pub struct Blob {
    pub digest: String,
    pub size: u64,
}

/// An image as the upstream serves it.
#[derive(Clone, Debug)]
pub struct Image {
    pub repo: String,
    pub tag: String,
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
    pub config: Blob,
    pub layers: Vec<Blob>,
}

impl Image {
    pub fn blobs(&self) -> impl Iterator<Item = &Blob> {
        std::iter::once(&self.config).chain(&self.layers)
    }

    /// Bytes of config and layers.
    pub fn blob_bytes(&self) -> u64 {
        self.blobs().map(|b| b.size).sum()
    }

    /// Everything a pull moves: manifest, config and layers.
    pub fn total_bytes(&self) -> u64 {
        self.blob_bytes() + self.manifest.len() as u64
    }
}

/// Uploads `bytes` as one blob of `repo`.
fn upload_blob(conn: &mut Conn, repo: &str, bytes: &[u8]) -> Blob {
    let digest = sha256_digest(bytes);
    let resp = conn
        .request(
            "POST",
            &format!("/v2/{repo}/blobs/uploads/"),
            &[],
            None,
            true,
            &mut |_| {},
        )
        .expect("start upload");
    assert_eq!(resp.status, 202, "POST blob upload to {repo}");
    let location = resp.header("location").expect("upload Location").to_owned();
    // An absolute URL or a path; keep the path and query.
    let path = match location.strip_prefix("http://") {
        Some(rest) => rest[rest.find('/').unwrap_or(rest.len())..].to_owned(),
        None => location,
    };
    let sep = if path.contains('?') { '&' } else { '?' };
    let resp = conn
        .request(
            "PUT",
            &format!("{path}{sep}digest={digest}"),
            &[("Content-Type", "application/octet-stream")],
            Some(bytes),
            false,
            &mut |_| {},
        )
        .expect("upload blob");
    assert_eq!(resp.status, 201, "PUT blob {digest} to {repo}");
    Blob {
        digest,
        size: bytes.len() as u64,
    }
}

/// Builds and pushes an image of `layers` layers of `layer_size` random bytes each.
/// Returns it, and the bytes of its first layer if `keep_first` (for verifying bodies
/// without hashing them again).
pub fn push_image(
    upstream: &str,
    repo: &str,
    tag: &str,
    layers: usize,
    layer_size: usize,
    keep_first: bool,
) -> (Image, Option<Vec<u8>>) {
    let mut conn = Conn::connect(upstream).expect("connect to the upstream");
    let mut kept = None;
    let mut blobs = Vec::new();
    let mut diff_ids = Vec::new();
    for i in 0..layers {
        let (bytes, diff_id) = ferry_testkit::images::layer(layer_size);
        blobs.push(upload_blob(&mut conn, repo, &bytes));
        diff_ids.push(diff_id);
        if i == 0 && keep_first {
            kept = Some(bytes);
        }
    }
    let config_bytes = ferry_testkit::images::config("amd64", &diff_ids, "ferry bench");
    let config = upload_blob(&mut conn, repo, &config_bytes);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config.digest, "size": config.size},
        "layers": blobs.iter().map(|b| json!({"mediaType": OCI_LAYER_GZIP, "digest": b.digest, "size": b.size})).collect::<Vec<_>>(),
    });
    let manifest = serde_json::to_vec(&manifest).expect("manifest JSON");
    let resp = conn
        .request(
            "PUT",
            &format!("/v2/{repo}/manifests/{tag}"),
            &[("Content-Type", OCI_MANIFEST)],
            Some(&manifest),
            false,
            &mut |_| {},
        )
        .expect("put manifest");
    assert_eq!(resp.status, 201, "PUT manifest {repo}:{tag}");
    (
        Image {
            repo: repo.to_owned(),
            tag: tag.to_owned(),
            manifest_digest: sha256_digest(&manifest),
            manifest,
            config,
            layers: blobs,
        },
        kept,
    )
}
