//! Store maintenance as an operator meets it: `ferry fsck` finds a corrupt blob and
//! `--repair` drops it (the next pull fetches it again, byte-identical); `max_size`
//! keeps the store under its limit while clients pull concurrently, without a wrong
//! byte served and keeping the recent images; `ferry gc` removes what no manifest
//! references once it is older than the grace period. Neither command runs on a store
//! a server has open. No command runs on a store of a format it does not understand
//! (what an upgraded Ferry may have left before a rollback), and none touches it.

use std::process::Output;
use std::time::{Duration, Instant};

use crate::harness::ferry::{Ferry, FerryBuilder, Upstream};
use crate::harness::images::{PushedImage, push_image};
use crate::harness::registry::{Registry, RegistryAuth};
use crate::support::{
    blob_url, ferry_cli, files_under, get, local_setup, manifest_url, pull_image, stored_blob_path,
};

/// A clean failure: non-zero, not a panic (101), not a signal.
fn assert_failed(out: &Output, text: &str, what: &str) {
    assert!(
        matches!(out.status.code(), Some(c) if c != 0 && c != 101),
        "{what}: expected a clean non-zero exit, got {:?}\n{text}",
        out.status
    );
}

/// Bytes of every blob file in Ferry's store (manifests included).
fn store_blob_bytes(ferry: &Ferry) -> u64 {
    files_under(&ferry.storage_root().join("blobs"))
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

#[test]
fn fsck_finds_a_corrupt_blob_and_repair_makes_it_fetched_again() {
    let (registry, mut ferry) = local_setup();
    let app = push_image(&registry, "team/app", "v1", &[1 << 20, 300 << 10]);
    let tool = push_image(&registry, "team/tool", "v1", &[200 << 10]);
    let url = ferry.url();
    crate::harness::block_on(async {
        pull_image(&url, &app).await;
        pull_image(&url, &tool).await;
    });

    // While the server runs, the store is its own: a clear refusal, nothing touched.
    let (out, text) = ferry_cli(&ferry, &["fsck"]);
    assert_failed(&out, &text, "fsck beside a running server");
    assert!(
        text.contains("in use by another process") && text.contains("ferry serve"),
        "fsck beside a running server should say the store is in use\n{text}"
    );
    let (out, text) = ferry_cli(&ferry, &["gc"]);
    assert_failed(&out, &text, "gc beside a running server");
    assert!(text.contains("in use by another process"), "{text}");
    ferry.assert_running();

    assert!(ferry.terminate(), "ferry stopped on SIGTERM");
    let (out, text) = ferry_cli(&ferry, &["fsck"]);
    assert!(out.status.success(), "fsck of a healthy store\n{text}");
    assert!(text.contains("0 problem(s)"), "{text}");

    // Same size, other bytes: only re-hashing can tell.
    let layer = app.largest_layer();
    let path = stored_blob_path(&ferry, &layer.digest);
    let mut bytes = std::fs::read(&path).expect("the layer is in Ferry's store");
    assert_eq!(bytes, layer.bytes);
    for b in bytes.iter_mut().skip(4096).step_by(65536) {
        *b ^= 0xff;
    }
    std::fs::write(&path, &bytes).unwrap();

    let (out, text) = ferry_cli(&ferry, &["fsck"]);
    assert_failed(&out, &text, "fsck of a corrupt store");
    assert!(
        text.contains(&layer.digest) && text.contains("corrupt") && text.contains("--repair"),
        "fsck names the corrupt blob and the way out\n{text}"
    );
    assert!(path.exists(), "fsck without --repair changed the store");

    let (out, text) = ferry_cli(&ferry, &["fsck", "--repair"]);
    assert!(out.status.success(), "fsck --repair\n{text}");
    assert!(
        text.contains(&layer.digest) && text.contains("repaired"),
        "{text}"
    );
    assert!(!path.exists(), "the corrupt blob is still stored");

    let (out, text) = ferry_cli(&ferry, &["fsck"]);
    assert!(out.status.success(), "fsck after the repair\n{text}");
    assert!(text.contains("0 problem(s)"), "{text}");

    ferry.restart();
    let url = ferry.url();
    let caches = crate::harness::block_on(async { pull_image(&url, &app).await });
    let blobs = app.blobs();
    for (blob, cache) in blobs.iter().zip(&caches[1..]) {
        let expected = if blob.digest == layer.digest {
            "MISS"
        } else {
            "HIT"
        };
        assert_eq!(cache, expected, "X-Cache of {}", blob.digest);
    }
    assert_eq!(
        registry.blob_gets(&layer.digest),
        2,
        "the dropped layer was fetched again, once"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        layer.bytes,
        "stored again, intact"
    );
    // Of this start: the first start of this test logged its own summary.
    assert!(
        ferry
            .wait_for_log(
                ferry.start_offset(),
                &["store check: sizes agree with the index"],
                Duration::from_secs(10)
            )
            .is_some(),
        "the startup check after the restart logs a summary\n{}",
        crate::harness::process::tail_str(&ferry.log_since_start(), 30)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn max_size_keeps_the_store_under_its_limit_during_concurrent_pulls() {
    const MAX: u64 = 6 << 20;
    // About 2 MiB per image (layer, config, manifest): two fit under the low-water
    // mark (90%), three do not.
    const LAYER: usize = (2 << 20) - (16 << 10);
    let registry = Registry::start(RegistryAuth::None);
    let images: Vec<PushedImage> = (0..6)
        .map(|i| push_image(&registry, &format!("quota/img{i}"), "v1", &[LAYER]))
        .collect();
    let ferry = FerryBuilder::new()
        .upstream(Upstream::local(&registry.url()))
        .env("FERRY_STORAGE_MAX_SIZE", "6MiB")
        .start();
    let url = ferry.url();

    // Five images (~10 MiB) at once, each by two clients.
    let mut tasks = Vec::new();
    for img in images[..5].iter().chain(&images[..5]) {
        let (url, img) = (url.clone(), img.clone());
        tasks.push(tokio::spawn(async move { pull_image(&url, &img).await }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .expect("concurrent pulls finished within 120 s")
            .expect("pull task");
    }
    // Then two more, one after the other: these are the recent ones.
    pull_image(&url, &images[5]).await;
    pull_image(&url, &images[0]).await;

    let deadline = Instant::now() + Duration::from_secs(90);
    let mut used = store_blob_bytes(&ferry);
    while used > MAX && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        used = store_blob_bytes(&ferry);
    }
    assert!(
        used <= MAX,
        "store holds {used} bytes of blobs, over max_size {MAX}\n{}",
        crate::harness::process::tail_str(&ferry.log(), 40)
    );
    // Give a pass in progress time to finish, then look again: still under.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(store_blob_bytes(&ferry) <= MAX);

    for img in [&images[5], &images[0]] {
        let caches = pull_image(&url, img).await;
        assert!(
            caches.iter().all(|c| c == "HIT"),
            "{} was pulled last and should be served from the store: {caches:?}\n{}",
            img.reference(),
            crate::harness::process::tail_str(&ferry.log(), 40)
        );
    }
    let log = ferry.log();
    assert!(
        log.contains("evicted least recently used images"),
        "eviction logs what it did"
    );
    // Evicted images come back on demand, intact.
    pull_image(&url, &images[2]).await;
}

#[test]
fn gc_removes_unreferenced_blobs_after_the_grace_period() {
    let (registry, mut ferry) = local_setup();
    let app = push_image(&registry, "team/app", "v1", &[300 << 10]);
    let other = push_image(&registry, "team/other", "v1", &[100 << 10]);
    let lone = other.largest_layer().clone();
    let url = ferry.url();
    crate::harness::block_on(async {
        pull_image(&url, &app).await;
        // Fetched by digest alone: no stored manifest references it.
        let b = get(&blob_url(&ferry, "team/other", &lone.digest), &[]).await;
        assert_eq!(b.status, 200);
        assert_eq!(b.body, lone.bytes);
    });
    assert!(ferry.terminate());
    let lone_path = stored_blob_path(&ferry, &lone.digest);
    assert!(lone_path.exists());

    let (out, text) = ferry_cli(&ferry, &["gc", "--grace", "1h"]);
    assert!(out.status.success(), "gc\n{text}");
    assert!(
        lone_path.exists(),
        "a blob younger than the grace period was removed\n{text}"
    );
    assert!(text.contains("removed 0"), "{text}");

    std::thread::sleep(Duration::from_millis(2500));
    let (out, text) = ferry_cli(&ferry, &["gc", "--grace", "1s"]);
    assert!(out.status.success(), "gc\n{text}");
    assert!(
        !lone_path.exists(),
        "the unreferenced blob is still stored\n{text}"
    );
    assert!(
        text.contains(&lone.digest) && text.contains("removed 1"),
        "{text}"
    );
    for blob in app.blobs() {
        assert!(
            stored_blob_path(&ferry, &blob.digest).exists(),
            "gc removed {}, which the manifest references",
            blob.digest
        );
    }
    assert!(stored_blob_path(&ferry, &app.manifest_digest).exists());
    let (out, text) = ferry_cli(&ferry, &["fsck"]);
    assert!(
        out.status.success() && text.contains("0 problem(s)"),
        "{text}"
    );

    ferry.restart();
    let url = ferry.url();
    crate::harness::block_on(async {
        let caches = pull_image(&url, &app).await;
        assert!(caches.iter().all(|c| c == "HIT"), "{caches:?}");
        let m = get(&manifest_url(&ferry, "team/app", "v1"), &[&app.media_type]).await;
        assert_eq!(m.x_cache(), "HIT");
        let b = get(&blob_url(&ferry, "team/other", &lone.digest), &[]).await;
        assert_eq!((b.status.as_u16(), b.x_cache()), (200, "MISS"));
        assert_eq!(b.body, lone.bytes);
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn pinned_images_survive_eviction_even_when_least_recently_used() {
    const MAX: u64 = 6 << 20;
    const LAYER: usize = (2 << 20) - (16 << 10);
    let registry = Registry::start(RegistryAuth::None);
    let images: Vec<PushedImage> = (0..5)
        .map(|i| push_image(&registry, &format!("quota/img{i}"), "v1", &[LAYER]))
        .collect();
    let pinned = &images[0];
    let ferry = FerryBuilder::new()
        .upstream(Upstream::local(&registry.url()))
        .env("FERRY_STORAGE_MAX_SIZE", "6MiB")
        .extra_toml(&format!(
            "[[pin]]\nimages = [\"{}/{}:v1\"]\nrefresh = \"1h\"\n",
            crate::harness::ferry::LOCAL,
            pinned.repo
        ))
        .start();
    let url = ferry.url();
    // The pin refresher fetches the pinned image first: it is the oldest in the store.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !pinned
        .blobs()
        .iter()
        .all(|b| stored_blob_path(&ferry, &b.digest).exists())
    {
        assert!(
            Instant::now() < deadline,
            "pinned image not fetched\n{}",
            ferry.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut tasks = Vec::new();
    for img in &images[1..] {
        let (url, img) = (url.clone(), img.clone());
        tasks.push(tokio::spawn(async move { pull_image(&url, &img).await }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .expect("pulls finish")
            .expect("pull task");
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    while store_blob_bytes(&ferry) > MAX && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        store_blob_bytes(&ferry) <= MAX,
        "over max_size\n{}",
        ferry.log()
    );
    for blob in pinned.blobs() {
        assert!(
            stored_blob_path(&ferry, &blob.digest).exists(),
            "pinned blob {} was evicted",
            blob.digest
        );
    }
    // The pass logs after it deleted: give the line a moment to arrive.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ferry.log().contains("evicted least recently used images") {
        assert!(
            Instant::now() < deadline,
            "something was evicted\n{}",
            ferry.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every file under the store and its bytes.
fn store_files(root: &std::path::Path) -> std::collections::BTreeMap<std::path::PathBuf, Vec<u8>> {
    files_under(root)
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
            (p, bytes)
        })
        .collect()
}

#[test]
fn a_store_of_a_newer_format_is_refused_by_every_command_and_left_untouched() {
    let (registry, mut ferry) = local_setup();
    let app = push_image(&registry, "team/app", "v1", &[200 << 10]);
    let url = ferry.url();
    crate::harness::block_on(async { pull_image(&url, &app).await });
    assert!(ferry.terminate(), "ferry stopped on SIGTERM");
    let root = ferry.storage_root();
    let marker = root.join("format");
    assert_eq!(
        std::fs::read_to_string(&marker).expect("a new store has a format marker"),
        "ferry-store 1\n"
    );
    assert!(
        !ferry.log().contains("predates format markers"),
        "a new store is no old one\n{}",
        ferry.log()
    );

    // What a newer Ferry may leave behind after a rollback.
    std::fs::write(&marker, "ferry-store 2\n").unwrap();
    let before = store_files(&root);
    let expected = format!(
        "the store at {} has format 2; this Ferry understands format 1: run a Ferry that does, or use another storage root",
        root.display()
    );
    let work = crate::harness::temp_dir("format");
    let bundle = work.path().join("app.tar");
    let bundle_arg = bundle.display().to_string();
    let commands: [&[&str]; 6] = [
        &["serve"],
        &["fsck"],
        &["fsck", "--repair"],
        &["gc"],
        &["status"],
        &["export", "--output", &bundle_arg, "local/team/app:v1"],
    ];
    for args in commands {
        let started = Instant::now();
        let (out, text) = ferry_cli(&ferry, args);
        assert_failed(&out, &text, &format!("ferry {args:?} on a format-2 store"));
        assert_eq!(
            text.matches(&expected).count(),
            1,
            "ferry {args:?} should say, once, that the store's format is not its own\n{text}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "ferry {args:?} took {:?} to refuse",
            started.elapsed()
        );
        assert!(
            store_files(&root) == before,
            "ferry {args:?} changed the files of a store it refused"
        );
    }

    // The refused store is whole: marked back, it serves from the store as before.
    std::fs::write(&marker, "ferry-store 1\n").unwrap();
    ferry.start_again();
    let url = ferry.url();
    let caches = crate::harness::block_on(async { pull_image(&url, &app).await });
    assert!(caches.iter().all(|c| c == "HIT"), "{caches:?}");
    assert!(ferry.terminate());

    // A store made before markers existed is format 1: marked at the next start, said
    // once, and served as before.
    std::fs::remove_file(&marker).unwrap();
    ferry.start_again();
    let url = ferry.url();
    let caches = crate::harness::block_on(async { pull_image(&url, &app).await });
    assert!(caches.iter().all(|c| c == "HIT"), "{caches:?}");
    ferry.restart();
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "ferry-store 1\n");
    assert_eq!(
        ferry.log().matches("predates format markers").count(),
        1,
        "marking an old store is logged once\n{}",
        crate::harness::process::tail_str(&ferry.log(), 40)
    );
    assert!(ferry.terminate());
    crate::support::assert_fsck_clean(&ferry, "a store marked at start");
}
