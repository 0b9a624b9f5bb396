//! Synthetic images of incompressible layers, pushed to the upstream with plain HTTP
//! (monolithic uploads, then the OCI manifest by tag).
//!
//! A layer is a real gzip'd tar holding one file of random bytes (stored deflate
//! blocks: random data does not compress), so any client could unpack it.

use std::io::{Read as _, Write as _};

use serde_json::json;

use super::http::Conn;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

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

fn random_bytes(size: usize) -> Vec<u8> {
    let mut buf = vec![0u8; size];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("read /dev/urandom");
    buf
}

/// A gzip'd tar of one file of `size` random bytes; returns (blob bytes, diff_id).
fn make_layer(size: usize) -> (Vec<u8>, String) {
    let payload = random_bytes(size);
    let mut tar = tar::Builder::new(Vec::with_capacity(size + 2048));
    let mut header = tar::Header::new_gnu();
    header.set_size(size as u64);
    header.set_mode(0o644);
    header.set_mtime(1_700_000_000);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    tar.append_data(&mut header, "payload.bin", &payload[..])
        .expect("append tar entry");
    drop(payload);
    let tar_bytes = tar.into_inner().expect("finish tar");
    let diff_id = sha256_digest(&tar_bytes);
    let mut gz = flate2::write::GzEncoder::new(
        Vec::with_capacity(tar_bytes.len() + tar_bytes.len() / 1000 + 1024),
        flate2::Compression::none(),
    );
    gz.write_all(&tar_bytes).expect("gzip");
    (gz.finish().expect("finish gzip"), diff_id)
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
        let (bytes, diff_id) = make_layer(layer_size);
        blobs.push(upload_blob(&mut conn, repo, &bytes));
        diff_ids.push(diff_id);
        if i == 0 && keep_first {
            kept = Some(bytes);
        }
    }
    let config = json!({
        "created": "2023-11-14T22:13:20Z",
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/payload.bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": diff_ids.iter().map(|_| json!({"created_by": "ferry bench"})).collect::<Vec<_>>(),
    });
    let config_bytes = serde_json::to_vec(&config).expect("config JSON");
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
