//! Image parts any client could unpack, without internet: layers are gzip'd tars
//! holding one file of random (incompressible) bytes, configs are real OCI image
//! configs. Pushing them is the caller's business (skopeo or plain HTTP in the tests,
//! the load generator's own client in the benchmark).

use std::io::{Read as _, Write as _};

use rand::RngCore as _;
use serde_json::json;

use crate::sha256_digest;

/// `size` random bytes (from the kernel: much faster than a userspace RNG in debug
/// builds).
pub fn random_bytes(size: usize) -> Vec<u8> {
    let mut buf = vec![0u8; size];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .unwrap_or_else(|_| rand::rng().fill_bytes(&mut buf));
    buf
}

/// A gzip'd tar holding one file (`payload.bin`) of `size` random bytes; returns the
/// layer's bytes and its diff_id (the digest of the uncompressed tar).
pub fn layer(size: usize) -> (Vec<u8>, String) {
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
    // Random content does not compress: stored (level 0) deflate blocks are still a
    // real gzip stream and keep big layers quick to build in debug builds.
    let mut gz = flate2::write::GzEncoder::new(
        Vec::with_capacity(tar_bytes.len() + tar_bytes.len() / 1000 + 1024),
        flate2::Compression::none(),
    );
    gz.write_all(&tar_bytes).expect("gzip");
    (gz.finish().expect("finish gzip"), diff_id)
}

/// The JSON of an OCI image config for linux/`arch` whose layers have `diff_ids`;
/// `created_by` names who built it in each history entry.
pub fn config(arch: &str, diff_ids: &[String], created_by: &str) -> Vec<u8> {
    let config = json!({
        "created": "2023-11-14T22:13:20Z",
        "architecture": arch,
        "os": "linux",
        "config": {"Env": ["PATH=/usr/bin"], "Cmd": ["/payload.bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": diff_ids.iter().map(|_| json!({"created_by": created_by})).collect::<Vec<_>>(),
    });
    serde_json::to_vec(&config).expect("config JSON")
}
