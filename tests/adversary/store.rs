//! A damaged store, and reads of a blob still downloading (issue 11, items 7 and 11).
//!
//! - A stored blob truncated behind Ferry's back is fetched again, not served short
//!   as a hit; a stored manifest with wrong bytes likewise.
//! - A byte flipped in a stored blob (same size) is found by the background scrub,
//!   dropped, counted in `/metrics`, and fetched again on the next request.
//! - `rm -rf staging/ partial/` on a running Ferry: the next cold pull works.
//! - A `Range` request joining a download whose bytes turn out wrong never sees a
//!   complete `206`: its body is cut. One joining a download that stalls gets the
//!   bytes already received at once, not when the stall ends.
//!
//! The last two need an upstream no real registry plays: [`HostileBlob`], a raw
//! HTTP/1.1 server on 127.0.0.1 that serves one blob in two parts, holding the second
//! until the test releases it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::harness::ferry::{Ferry, FerryBuilder, Upstream};
use crate::harness::hostile::Hostile;
use crate::harness::http::client;
use crate::harness::images::{push_image_http, random_bytes};
use crate::harness::registry::{Registry, RegistryAuth};
use crate::harness::sha256_digest;
use crate::support::{blob_url, get, manifest_url, stored_blob_path};

/// `stored_blob_path`, once the blob is there: a fetch serves its last byte as soon as
/// the digest verified, and stores the blob just after.
async fn wait_stored(ferry: &Ferry, digest: &str) -> std::path::PathBuf {
    let path = stored_blob_path(ferry, digest);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(Instant::now() < deadline, "{digest} not stored within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    path
}

/// Lines of Ferry's log that contain every one of `needles`.
fn log_lines(ferry: &Ferry, needles: &[&str]) -> Vec<String> {
    ferry
        .log()
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .map(str::to_owned)
        .collect()
}

/// A Ferry in front of `registry` with the scrub at `scrub_rate` ("0": off).
fn ferry_with_scrub(registry: &Registry, scrub_rate: &str) -> Ferry {
    FerryBuilder::new()
        .upstream(Upstream::local(&registry.url()))
        .env("FERRY_STORAGE_SCRUB_RATE", scrub_rate)
        .start()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_truncated_blob_or_manifest_is_fetched_again_not_served() {
    let registry = Registry::start(RegistryAuth::None);
    let img = push_image_http(&registry, "store/trunc", "v1", &[300_000]);
    let layer = img.largest_layer().clone();
    // Off, so that what finds the damage is the read itself.
    let ferry = ferry_with_scrub(&registry, "0");
    let url = blob_url(&ferry, "store/trunc", &layer.digest);
    let murl = manifest_url(&ferry, "store/trunc", &img.manifest_digest);
    let accept = [img.media_type.as_str()];
    assert_eq!(get(&url, &[]).await.x_cache(), "MISS");
    assert_eq!(get(&murl, &accept).await.status, 200);

    // Truncated to 1,000 bytes, as a full disk or a careless copy would leave it.
    let path = wait_stored(&ferry, &layer.digest).await;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(1000)
        .unwrap();
    let b = get(&url, &[]).await;
    assert_eq!(b.status, 200, "GET of the truncated blob: {}", b.text());
    assert_eq!(
        b.header("content-length"),
        layer.size.to_string(),
        "Content-Length is the blob's size, not the file's"
    );
    assert_eq!(b.body.len() as u64, layer.size, "body length");
    assert_eq!(sha256_digest(&b.body), layer.digest, "body bytes");
    assert_eq!(b.x_cache(), "MISS", "fetched again, not a hit");
    assert_eq!(
        registry.blob_gets(&layer.digest),
        2,
        "the upstream was asked again"
    );
    let warned = log_lines(&ferry, &["WARN", "size disagrees", &layer.digest]);
    assert_eq!(warned.len(), 1, "one warning: {warned:#?}");
    // Stored again whole: the next GET is a hit.
    let again = get(&url, &[]).await;
    assert_eq!(
        (again.x_cache(), again.body.len() as u64),
        ("HIT", layer.size)
    );

    // A manifest's stored bytes changed (same size): fetched again too.
    let mpath = wait_stored(&ferry, &img.manifest_digest).await;
    let mut bytes = std::fs::read(&mpath).unwrap();
    let last = bytes.len() - 2;
    bytes[last] = if bytes[last] == b' ' { b'\t' } else { b' ' };
    std::fs::write(&mpath, &bytes).unwrap();
    let m = get(&murl, &accept).await;
    assert_eq!(m.status, 200, "GET of the damaged manifest: {}", m.text());
    assert_eq!(
        sha256_digest(&m.body),
        img.manifest_digest,
        "manifest bytes"
    );
    assert_eq!(m.x_cache(), "MISS", "manifest fetched again");
    let warned = log_lines(&ferry, &["WARN", "do not match", &img.manifest_digest]);
    assert_eq!(warned.len(), 1, "one warning: {warned:#?}");
}

/// `ferry_scrub_dropped_total` as `/metrics` shows it (`None`: not exposed).
async fn scrub_dropped(ferry: &Ferry) -> Option<u64> {
    let m = get(&format!("{}/metrics", ferry.url()), &[]).await;
    String::from_utf8_lossy(&m.body)
        .lines()
        .find_map(|l| l.strip_prefix("ferry_scrub_dropped_total "))
        .map(|v| v.trim().parse().expect("a count"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_scrub_drops_a_flipped_byte_and_it_is_fetched_again() {
    let registry = Registry::start(RegistryAuth::None);
    let img = push_image_http(&registry, "store/flip", "v1", &[2 << 20]);
    let layer = img.largest_layer().clone();
    let mut ferry = ferry_with_scrub(&registry, "64MiB");
    let url = blob_url(&ferry, "store/flip", &layer.digest);
    assert_eq!(get(&url, &[]).await.x_cache(), "MISS");

    // One byte flipped, the size unchanged: only re-hashing can tell.
    let path = wait_stored(&ferry, &layer.digest).await;
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[1 << 20] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    // A pass starts with the server (the last one, over an empty store, is done).
    ferry.restart();
    let url = blob_url(&ferry, "store/flip", &layer.digest);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(15);
    while scrub_dropped(&ferry).await != Some(1) {
        assert!(
            Instant::now() < deadline,
            "the scrub dropped nothing within 15 s (ferry_scrub_dropped_total: {:?})",
            scrub_dropped(&ferry).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "the scrub dropped the flipped blob {:?} after the server started",
        started.elapsed()
    );
    assert!(!path.exists(), "the damaged file is gone");
    let warned = log_lines(&ferry, &["WARN", "scrub", &layer.digest]);
    assert_eq!(warned.len(), 1, "one warning: {warned:#?}");

    let b = get(&url, &[]).await;
    assert_eq!(b.status, 200, "{}", b.text());
    assert_eq!(sha256_digest(&b.body), layer.digest, "correct bytes");
    assert_eq!(b.x_cache(), "MISS", "fetched again");
    assert_eq!(registry.blob_gets(&layer.digest), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cold_pull_works_after_staging_and_partial_are_deleted() {
    let registry = Registry::start(RegistryAuth::None);
    let img = push_image_http(&registry, "store/staging", "v1", &[200_000]);
    let ferry = ferry_with_scrub(&registry, "0");
    let root = ferry.storage_root();
    std::fs::remove_dir_all(root.join("staging")).unwrap();
    std::fs::remove_dir_all(root.join("partial")).unwrap();

    let m = get(
        &manifest_url(&ferry, "store/staging", &img.tag),
        &[img.media_type.as_str()],
    )
    .await;
    assert_eq!(m.status, 200, "manifest: {}", m.text());
    assert_eq!(sha256_digest(&m.body), img.manifest_digest);
    for blob in img.blobs() {
        let b = get(&blob_url(&ferry, "store/staging", &blob.digest), &[]).await;
        assert_eq!(b.status, 200, "blob {}: {}", blob.digest, b.text());
        assert_eq!(sha256_digest(&b.body), blob.digest);
    }
    let ready = get(&format!("{}/readyz", ferry.url()), &[]).await;
    assert_eq!(ready.status, 200, "ready: {}", ready.text());
    assert!(root.join("staging").is_dir() && root.join("partial").is_dir());
}

/// A hostile upstream serving one blob: its first `split` bytes at once, the rest
/// only once released (or after 20 s). With `wrong`, the bytes do not hash to the
/// digest it serves them under. `/v2/` answers 200; anything else 404.
struct HostileBlob {
    server: Hostile,
    digest: String,
    release: watch::Sender<bool>,
    gets: Arc<AtomicUsize>,
}

impl HostileBlob {
    fn start(good: Vec<u8>, split: usize, wrong: bool) -> HostileBlob {
        let digest = sha256_digest(&good);
        let mut served = good;
        if wrong {
            let last = served.len() - 1;
            served[last] ^= 0xff;
        }
        let (release, released) = watch::channel(false);
        let gets = Arc::new(AtomicUsize::new(0));
        let shared = Arc::new((digest.clone(), served, split));
        let counter = gets.clone();
        let server = Hostile::spawn("127.0.0.1", |listener, _| async move {
            // Bounded: no test makes more than a few requests.
            for _ in 0..100 {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let (shared, released, counter) =
                    (shared.clone(), released.clone(), counter.clone());
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(30),
                        answer(sock, &shared, released, &counter),
                    )
                    .await;
                });
            }
        });
        HostileBlob {
            server,
            digest,
            release,
            gets,
        }
    }

    fn url(&self) -> String {
        self.server.url()
    }

    /// Lets the rest of the body go.
    fn release(&self) {
        self.release.send_replace(true);
    }
}

/// One request on `sock`, answered and closed.
async fn answer(
    mut sock: tokio::net::TcpStream,
    (digest, bytes, split): &(String, Vec<u8>, usize),
    mut released: watch::Receiver<bool>,
    gets: &AtomicUsize,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = sock.read(&mut buf).await?;
        if n == 0 || head.len() > 64 * 1024 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    let mut first = head.lines().next().unwrap_or("").split(' ');
    let (method, path) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
    let common = "Docker-Distribution-API-Version: registry/2.0\r\nConnection: close\r\n";
    if path == "/v2/" {
        let resp = format!("HTTP/1.1 200 OK\r\n{common}Content-Length: 2\r\n\r\n{{}}");
        return sock.write_all(resp.as_bytes()).await;
    }
    if !path.ends_with(&format!("/blobs/{digest}")) {
        let resp = format!("HTTP/1.1 404 Not Found\r\n{common}Content-Length: 0\r\n\r\n");
        return sock.write_all(resp.as_bytes()).await;
    }
    let resp = format!(
        "HTTP/1.1 200 OK\r\n{common}Content-Type: application/octet-stream\r\n\
         Content-Length: {}\r\nDocker-Content-Digest: {digest}\r\n\r\n",
        bytes.len()
    );
    sock.write_all(resp.as_bytes()).await?;
    if method != "GET" {
        return Ok(());
    }
    gets.fetch_add(1, Ordering::SeqCst);
    sock.write_all(&bytes[..*split]).await?;
    sock.flush().await?;
    let _ = tokio::time::timeout(Duration::from_secs(20), released.wait_for(|r| *r)).await;
    sock.write_all(&bytes[*split..]).await?;
    sock.shutdown().await
}

/// Reads `resp`'s body until it ends, fails, or `within` passes: the bytes, and how
/// it ended (`Some(Ok)` the end, `Some(Err)` a cut, `None` still open).
async fn read_body(
    resp: &mut reqwest::Response,
    within: Duration,
    want: usize,
) -> (Vec<u8>, Option<Result<(), String>>) {
    let mut body = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if body.len() >= want {
            return (body, None);
        }
        match tokio::time::timeout_at(deadline, resp.chunk()).await {
            Err(_) => return (body, None),
            Ok(Ok(Some(c))) => body.extend_from_slice(&c),
            Ok(Ok(None)) => return (body, Some(Ok(()))),
            Ok(Err(e)) => return (body, Some(Err(e.to_string()))),
        }
    }
}

/// Starts the download with a whole GET, then joins it with `range`; returns both
/// responses once the range's headers are in.
async fn join_with_range(url: &str, range: &str) -> (reqwest::Response, reqwest::Response) {
    let leader = client().get(url).send().await.expect("first GET");
    assert_eq!(leader.status(), 200, "first GET");
    let ranged = client()
        .get(url)
        .header("range", range)
        .send()
        .await
        .expect("range GET");
    assert_eq!(ranged.status(), 206, "range GET");
    assert_eq!(
        ranged
            .headers()
            .get("x-cache")
            .and_then(|v| v.to_str().ok()),
        Some("JOINED"),
        "the range GET joined the download"
    );
    (leader, ranged)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_range_of_a_download_that_fails_verification_is_cut() {
    let good = random_bytes(256 * 1024);
    let up = HostileBlob::start(good, 64 * 1024, true);
    let ferry = FerryBuilder::new()
        .upstream(Upstream::local(&up.url()))
        .start();
    let url = blob_url(&ferry, "store/wrong", &up.digest);
    let (mut leader, mut ranged) = join_with_range(&url, "bytes=0-999").await;

    // The range's bytes have arrived, but the blob has not verified: all but the
    // last byte may come, not the last.
    let (early, end) = read_body(&mut ranged, Duration::from_secs(2), 1000).await;
    assert!(
        end.is_none() && early.len() < 1000,
        "before the blob verified, the range GET got {} bytes and {end:?}",
        early.len()
    );
    up.release();
    let (rest, end) = read_body(&mut ranged, Duration::from_secs(10), usize::MAX).await;
    let got = early.len() + rest.len();
    assert!(
        matches!(end, Some(Err(_))) && got < 1000,
        "a range of bytes that fail verification must be cut: got {got} of 1000 bytes, \
         ending {end:?}"
    );
    let (whole, end) = read_body(&mut leader, Duration::from_secs(10), usize::MAX).await;
    assert!(
        matches!(end, Some(Err(_))) && whole.len() < 256 * 1024,
        "the whole GET is cut too: {} bytes, {end:?}",
        whole.len()
    );
    assert_eq!(up.gets.load(Ordering::SeqCst), 1);
    // Nothing of it was stored.
    assert!(!stored_blob_path(&ferry, &up.digest).exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_range_reader_of_a_stalled_download_gets_what_arrived() {
    let good = random_bytes(400_000);
    let up = HostileBlob::start(good.clone(), 100_000, false);
    let ferry = FerryBuilder::new()
        .upstream(Upstream::local(&up.url()))
        .start();
    let url = blob_url(&ferry, "store/stall", &up.digest);
    let (mut leader, mut ranged) = join_with_range(&url, "bytes=0-199999").await;

    // The upstream stalls after 100,000 bytes: those come now, not when it resumes.
    let started = Instant::now();
    let (early, end) = read_body(&mut ranged, Duration::from_secs(2), 100_000).await;
    assert!(
        end.is_none() && early.len() == 100_000,
        "within 2 s of a stall the range GET got {} of the 100000 bytes received \
         ({end:?})",
        early.len()
    );
    eprintln!(
        "stalled download: the range reader had the 100000 bytes received after {:?}",
        started.elapsed()
    );
    up.release();
    let (rest, end) = read_body(&mut ranged, Duration::from_secs(10), usize::MAX).await;
    assert_eq!(
        end,
        Some(Ok(())),
        "the range GET ends cleanly once verified"
    );
    assert!([early, rest].concat() == good[..200_000], "range bytes");
    let (whole, end) = read_body(&mut leader, Duration::from_secs(10), usize::MAX).await;
    assert_eq!(end, Some(Ok(())));
    assert!(whole == good, "whole GET bytes");
}
