//! What the shared backend costs on a store, printed by the stores' `figures` tests
//! (ignored: measurements, run by hand; not asserted, an emulator on a laptop is no
//! cloud service).

use std::time::Instant;

use bytes::Bytes;

use super::super::suite::read;
use super::super::{BlobStore, update_tag};
use super::{ObjectBackend, PART};
use crate::{Digest, Repo, Tag, TagRecord};

/// Uploads a 64 MiB blob at the real part size, reads it whole and by ranges, and
/// times HEADs and tag compare-and-swaps; prints one line for `store`.
pub async fn print(store: &str, b: &ObjectBackend) {
    let b = b.clone().with_part_size(PART);
    let bytes: Bytes = (0..64usize << 20)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    let d = Digest::sha256_of(&bytes);
    let mb = bytes.len() as f64 / 1e6;
    let started = Instant::now();
    let mut w = b.writer(&d, Some(bytes.len() as u64)).await.unwrap();
    // As an upstream body arrives: pieces of 64 KiB.
    for piece in bytes.chunks(64 << 10) {
        w.write(Bytes::copy_from_slice(piece)).await.unwrap();
    }
    w.commit().await.unwrap();
    let upload = started.elapsed();
    let started = Instant::now();
    let whole = read(&b, &d, 0, bytes.len() as u64).await.unwrap();
    let whole_read = started.elapsed();
    assert!(whole == bytes);
    // Ranges of 4 MiB at odd offsets, as a client resuming would ask.
    let started = Instant::now();
    let mut ranged = 0;
    for i in 0..16u64 {
        let (start, len) = (i * (4 << 20) + 12_345, (4 << 20) - 12_345);
        ranged += read(&b, &d, start, len).await.unwrap().len();
    }
    let ranged_read = started.elapsed();
    let heads = 50;
    let started = Instant::now();
    for _ in 0..heads {
        b.stat(&d).await.unwrap();
    }
    let head = started.elapsed() / heads;
    let r = Repo {
        upstream: "docker.io".into(),
        name: "library/alpine".parse().unwrap(),
    };
    let t: Tag = "cas".parse().unwrap();
    let swaps = 50;
    let started = Instant::now();
    for i in 0..swaps {
        let rec = TagRecord {
            digest: d.clone(),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            fetched_at: i.into(),
        };
        update_tag(&b, &r, &t, |_| Some(rec.clone())).await.unwrap();
    }
    let cas = started.elapsed() / swaps;
    println!(
        "{store}, 64 MiB: upload {:.0} MB/s, whole read {:.0} MB/s, 16 ranged reads {:.0} MB/s, \
         HEAD {:.2} ms, tag CAS (GET + conditional PUT) {:.2} ms",
        mb / upload.as_secs_f64(),
        mb / whole_read.as_secs_f64(),
        ranged as f64 / 1e6 / ranged_read.as_secs_f64(),
        head.as_secs_f64() * 1e3,
        cas.as_secs_f64() * 1e3,
    );
}
