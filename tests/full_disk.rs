//! A full disk: Ferry's store on a small file system of its own (a tmpfs, or a
//! loop-mounted ext4 image where tmpfs mounts are refused; see
//! [`crate::harness::smallfs`]), filled by the test so that a pulled layer does not fit.
//! The client gets an error (status or cut connection, never a complete body), Ferry
//! keeps running and says why in its log, nothing partial is left in the store, fsck
//! is clean; once the test frees space, the same pull through the same process works,
//! byte-identical.

use std::time::Duration;

use crate::harness::ferry::{Ferry, FerryBuilder, Upstream};
use crate::harness::http::{media, oci_error};
use crate::harness::images::{PushedImage, push_image_http};
use crate::harness::process::tail_str;
use crate::harness::registry::{Registry, RegistryAuth};
use crate::harness::sha256_digest;
use crate::harness::smallfs::SmallFs;
use crate::support::{
    Outcome, assert_fsck_clean, blob_url, fetch_outcome, files_under, get, manifest_url,
    stored_blob_path,
};

const FS_SIZE: u64 = 16 << 20;
/// Free space left when the big layer is pulled: room for the manifest, the config
/// and index updates, not for the layer.
const LEAVE_FREE: u64 = 2 << 20;
const BIG_LAYER: usize = 6 << 20;

/// The store's files outside the index, with sizes, for messages.
fn store_listing(ferry: &Ferry) -> String {
    let mut files: Vec<String> = files_under(&ferry.storage_root())
        .iter()
        .filter(|p| !p.starts_with(ferry.storage_root().join("index")))
        .map(|p| {
            let len = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
            format!("  {} ({len} bytes)", p.display())
        })
        .collect();
    files.sort();
    files.join("\n")
}

/// Pulls the big layer with the disk full: it must fail clearly, and leave nothing.
async fn pull_fails_on_full_disk(ferry: &mut Ferry, img: &PushedImage, what: &str) {
    let layer = img.largest_layer();
    let url = blob_url(ferry, &img.repo, &layer.digest);
    // Ferry's log must say why for this pull, not for an earlier one.
    let log_mark = ferry.log().len();
    let outcome = fetch_outcome(&url, &[]).await;
    match &outcome {
        Outcome::Complete { body, .. } => panic!(
            "{what}: the client got a complete 200 body ({} bytes, {}; the layer is {} bytes, \
             {}) although the layer cannot be stored\n{}",
            body.len(),
            sha256_digest(body),
            layer.size,
            layer.digest,
            tail_str(&ferry.log(), 30)
        ),
        Outcome::Status { status, body } => {
            assert!(
                *status >= 500,
                "{what}: status {status} for a blob Ferry could not store: {}",
                String::from_utf8_lossy(body)
            );
            let (code, message) = oci_error(body);
            eprintln!("{what}: client got {status} {code}: {message}");
        }
        Outcome::Cut { got, error } => {
            assert!((*got as u64) < layer.size, "{what}: cut after {got} bytes?");
            eprintln!("{what}: client got 200 then a cut body after {got} bytes ({error})");
        }
        Outcome::NoResponse(e) => eprintln!("{what}: client got no response ({e})"),
    }

    // Ferry is still up and says why.
    ferry.assert_running();
    let r = get(&format!("{}/v2/", ferry.url()), &[]).await;
    assert_eq!(r.status, 200, "{what}: /v2/ after the failed pull");
    // The line comes through a pipe, possibly after the response: wait for it.
    let said = ["No space left on device", "os error 28"]
        .iter()
        .any(|needle| {
            ferry
                .wait_for_log(log_mark, &[*needle], Duration::from_secs(5))
                .is_some()
        });
    assert!(
        said,
        "{what}: Ferry's log does not say the disk is full for this pull\n{}",
        tail_str(&ferry.log()[log_mark..], 30)
    );

    // Nothing partial: no blob under the digest, no leftover download taking space.
    // (The failed fetch ends in its own task; give it a moment to clean up.)
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let leftovers: Vec<_> = ["staging", "partial"]
            .iter()
            .flat_map(|d| files_under(&ferry.storage_root().join(d)))
            .collect();
        if leftovers.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: unfinished download left in the store after the failure:\n{}",
            store_listing(ferry)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !stored_blob_path(ferry, &layer.digest).exists(),
        "{what}: the layer is in blobs/ although it could not be written whole\n{}",
        store_listing(ferry)
    );
    for path in files_under(&ferry.storage_root().join("blobs")) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(
            sha256_digest(&bytes),
            format!("sha256:{name}"),
            "{what}: {} does not hold the bytes its name says",
            path.display()
        );
    }
}

/// A whole pull by tag, byte-identical; returns the X-Cache of manifest and blobs.
async fn pull_ok(ferry: &Ferry, img: &PushedImage, what: &str) -> Vec<String> {
    let m = get(
        &manifest_url(ferry, &img.repo, &img.tag),
        &[media::OCI_MANIFEST],
    )
    .await;
    assert_eq!(m.status, 200, "{what}: manifest: {}", m.text());
    assert_eq!(m.body, img.manifest, "{what}: manifest bytes");
    let mut caches = vec![m.x_cache().to_owned()];
    for blob in img.blobs() {
        match fetch_outcome(&blob_url(ferry, &img.repo, &blob.digest), &[]).await {
            Outcome::Complete { body, x_cache } => {
                assert!(
                    body == blob.bytes,
                    "{what}: bytes of {} ({} bytes, {})",
                    blob.digest,
                    body.len(),
                    sha256_digest(&body)
                );
                caches.push(x_cache);
            }
            Outcome::Cut { got, error } => panic!(
                "{what}: blob {} cut after {got} bytes: {error}\n{}",
                blob.digest,
                tail_str(&ferry.log(), 30)
            ),
            other => panic!(
                "{what}: blob {}: {}\n{}",
                blob.digest,
                other.describe(),
                tail_str(&ferry.log(), 30)
            ),
        }
    }
    caches
}

#[tokio::test(flavor = "multi_thread")]
async fn full_disk_fails_the_pull_cleanly_and_recovers_once_space_is_freed() {
    // Declared first, dropped last: Ferry is gone before the unmount.
    let fs = SmallFs::mount(FS_SIZE);
    let store = fs.path().join("store");
    let registry = Registry::start(RegistryAuth::None);
    let img = push_image_http(&registry, "team/big", "v1", &[BIG_LAYER, 64 << 10]);
    let mut ferry = FerryBuilder::new()
        .upstream(Upstream::local(&registry.url()))
        .storage_root(&store)
        .start();
    let filler = fs.fill_leaving("filler", LEAVE_FREE);
    eprintln!(
        "full disk: {:?} of {} MiB, {} KiB free after the filler; pulling a {} MiB layer",
        fs.kind(),
        FS_SIZE >> 20,
        fs.available() >> 10,
        BIG_LAYER >> 20
    );
    assert!(fs.available() < BIG_LAYER as u64);

    // Manifest and config fit.
    let m = get(
        &manifest_url(&ferry, &img.repo, &img.tag),
        &[media::OCI_MANIFEST],
    )
    .await;
    assert_eq!(m.status, 200, "manifest with 2 MiB free: {}", m.text());
    assert_eq!(m.body, img.manifest);

    // The layer does not, twice; Ferry stays up.
    pull_fails_on_full_disk(&mut ferry, &img, "disk full").await;
    pull_fails_on_full_disk(&mut ferry, &img, "disk full, second attempt").await;

    // Stopped, the store is clean (still full).
    assert!(ferry.terminate(), "ferry exits on SIGTERM with a full disk");
    assert_fsck_clean(&ferry, "after the pulls that hit a full disk");

    // Started on the full disk, it fails the same way; then the test frees space and
    // the same process serves the whole image, byte-identical.
    ferry.start_again();
    pull_fails_on_full_disk(&mut ferry, &img, "disk full, after a restart").await;
    std::fs::remove_file(&filler).expect("remove the filler");
    eprintln!(
        "full disk: filler removed, {} KiB free",
        fs.available() >> 10
    );
    let caches = pull_ok(&ferry, &img, "space freed").await;
    // The manifest was stored before the disk filled; config and layers never were.
    assert_eq!(
        caches.iter().map(String::as_str).collect::<Vec<_>>(),
        ["HIT", "MISS", "MISS", "MISS"],
        "X-Cache of manifest, config, layers once space was freed"
    );
    let caches = pull_ok(&ferry, &img, "pulled again").await;
    assert_eq!(
        caches.iter().map(String::as_str).collect::<Vec<_>>(),
        ["HIT", "HIT", "HIT", "HIT"],
        "X-Cache of manifest, config, layers on the next pull"
    );
    let layer = img.largest_layer();
    assert_eq!(
        std::fs::read(stored_blob_path(&ferry, &layer.digest)).unwrap(),
        layer.bytes,
        "the layer is stored intact"
    );
    assert!(ferry.terminate(), "ferry exits on SIGTERM");
    assert_fsck_clean(&ferry, "after the pull that worked once space was freed");
    drop(ferry);
    drop(fs);
}

#[tokio::test(flavor = "multi_thread")]
async fn disk_full_to_the_last_byte_still_serves_what_is_cached() {
    // Declared first, dropped last: Ferry is gone before the unmount.
    let fs = SmallFs::mount(FS_SIZE);
    let store = fs.path().join("store");
    let registry = Registry::start(RegistryAuth::None);
    let cached = push_image_http(&registry, "team/cached", "v1", &[512 << 10, 64 << 10]);
    let fresh = push_image_http(&registry, "team/fresh", "v1", &[512 << 10]);
    let mut ferry = FerryBuilder::new()
        .upstream(Upstream::local(&registry.url()))
        .storage_root(&store)
        .start();
    let caches = pull_ok(&ferry, &cached, "before the disk fills").await;
    assert!(caches.iter().skip(1).all(|c| c == "MISS"), "{caches:?}");

    // Not one byte left.
    let filler = fs.fill_leaving("filler", 0);
    eprintln!(
        "disk full to the last byte: {:?}, {} bytes free",
        fs.kind(),
        fs.available()
    );

    // What is cached is still served, by tag and by digest, again and again.
    for attempt in 1..=3 {
        let what = format!("cached image with no space left, pull {attempt}");
        let caches = pull_ok(&ferry, &cached, &what).await;
        assert!(caches.iter().all(|c| c == "HIT"), "{what}: {caches:?}");
        let m = get(
            &manifest_url(&ferry, &cached.repo, &cached.manifest_digest),
            &[media::OCI_MANIFEST],
        )
        .await;
        assert_eq!(m.status, 200, "{what}: manifest by digest: {}", m.text());
        assert_eq!(m.body, cached.manifest);
    }

    // What is not cached fails clearly (the manifest cannot be stored), Ferry stays up.
    let outcome = fetch_outcome(
        &manifest_url(&ferry, &fresh.repo, &fresh.tag),
        &[media::OCI_MANIFEST],
    )
    .await;
    match &outcome {
        Outcome::Status { status, body } if *status >= 500 => {
            let (code, message) = oci_error(body);
            eprintln!("uncached manifest with no space left: {status} {code}: {message}");
        }
        other => panic!(
            "uncached manifest with no space left: expected a 5xx, got {}\n{}",
            other.describe(),
            tail_str(&ferry.log(), 30)
        ),
    }
    pull_fails_on_full_disk(&mut ferry, &fresh, "uncached layer with no space left").await;

    // Space back: the same process pulls the new image, byte-identical.
    std::fs::remove_file(&filler).expect("remove the filler");
    let caches = pull_ok(&ferry, &fresh, "space freed").await;
    assert!(
        caches.iter().all(|c| c == "MISS"),
        "nothing of the failed pulls was stored: {caches:?}"
    );
    let caches = pull_ok(&ferry, &cached, "cached image after space was freed").await;
    assert!(caches.iter().all(|c| c == "HIT"), "{caches:?}");
    assert!(ferry.terminate(), "ferry exits on SIGTERM");
    assert_fsck_clean(&ferry, "after the disk was full to the last byte");
    drop(ferry);
    drop(fs);
}
