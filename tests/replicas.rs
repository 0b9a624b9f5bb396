//! Several Ferry replicas sharing one store (`[storage.shared]`), here Azurite as Azure
//! Blob Storage: what one replica fetched, the others serve without asking the
//! upstream; a replica with an empty disk serves everything in the shared store with
//! the upstream gone; the shared store holds only verified, whole objects; a shared
//! store that is down costs only its copies.

use std::path::Path;

use ferry_storage::backend::{AzureAuth, AzureStore, BlobStore, ObjectBackend};
use ferry_testkit::azurite::{ACCOUNT, Azurite, KEY};

use crate::harness::faults::{FaultProxy, Mode};
use crate::harness::ferry::{Ferry, FerryBuilder, Upstream};
use crate::harness::images::{PushedImage, push_image};
use crate::harness::registry::{Registry, RegistryAuth};
use crate::support::{blob_url, get, head, manifest_url, pull_image};

const CONTAINER: &str = "ferry";
const PREFIX: &str = "test/";

/// A replica: its own root and port, the shared store in Azurite's `ferry` container.
fn replica(azurite: &Azurite, upstream_url: &str, dir: &Path, name: &str) -> Ferry {
    replica_builder(azurite, upstream_url, dir, name, "").start()
}

/// [`replica`], not started yet, with `shared_extra` lines in `[storage.shared]`.
fn replica_builder(
    azurite: &Azurite,
    upstream_url: &str,
    dir: &Path,
    name: &str,
    shared_extra: &str,
) -> FerryBuilder {
    let key = dir.join("azurite.key");
    std::fs::write(&key, KEY).unwrap();
    FerryBuilder::new()
        .upstream(Upstream::local(upstream_url))
        .storage_root(&dir.join(name))
        .extra_toml(&format!(
            "[storage.shared]\nkind = \"azure\"\naccount = \"{ACCOUNT}\"\ncontainer = \"{CONTAINER}\"\nprefix = \"{PREFIX}\"\nendpoint = \"{}\"\nauth = {{ kind = \"account_key\", key_file = \"{}\" }}\n{shared_extra}",
            azurite.endpoint(),
            key.display()
        ))
}

/// The shared store as the tests read it: the backend Ferry itself writes through.
fn shared(azurite: &Azurite) -> ObjectBackend {
    let store = AzureStore {
        account: ACCOUNT.into(),
        container: CONTAINER.into(),
        endpoint: Some(azurite.endpoint()),
        auth: AzureAuth::AccountKey(KEY.into()),
    }
    .build()
    .unwrap();
    ObjectBackend::new(store, PREFIX).unwrap()
}

/// Waits (≤ 20 s) until the shared store holds every blob and the manifest of `img`:
/// replicas copy there in the background.
async fn wait_until_shared(store: &ObjectBackend, img: &PushedImage) {
    let mut wanted: Vec<&str> = img.blobs().iter().map(|b| b.digest.as_str()).collect();
    wanted.push(&img.manifest_digest);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let listed: Vec<String> = store
            .list()
            .await
            .unwrap()
            .iter()
            .map(|d| d.to_string())
            .collect();
        if wanted.iter().all(|w| listed.iter().any(|l| l == w)) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the shared store holds {listed:?}, not all of {wanted:?}, after 20 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Every object under `blobs/` hashes to its name: nothing partial or wrong is there.
async fn assert_only_whole_objects(store: &ObjectBackend) {
    use futures_util::TryStreamExt;
    for d in store.list().await.unwrap() {
        let size = store
            .stat(&d)
            .await
            .unwrap()
            .expect("listed blob has a size");
        let chunks: Vec<bytes::Bytes> = store
            .read_range(&d, 0, size)
            .await
            .unwrap()
            .expect("listed blob readable")
            .try_collect()
            .await
            .unwrap();
        assert_eq!(
            crate::harness::sha256_digest(&chunks.concat()),
            d.to_string(),
            "the shared store's {d} does not hash to its name"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_serve_what_one_fetched_and_an_empty_replica_serves_it_offline() {
    let azurite = Azurite::start();
    azurite.create_container(CONTAINER);
    let registry = Registry::start(RegistryAuth::None);
    let img = push_image(&registry, "team/app", "v1", &[3 << 20, 200_000]);
    // Between the replicas and the registry: refusing, it is an upstream that is gone.
    let link = FaultProxy::start(registry.addr());
    let dir = tempfile::tempdir().unwrap();
    let a = replica(&azurite, &link.url(), dir.path(), "a");
    let b = replica(&azurite, &link.url(), dir.path(), "b");

    let caches = pull_image(&a.url(), &img).await;
    assert!(
        caches.iter().all(|c| c == "MISS"),
        "first pull, through replica a: {caches:?}"
    );
    let store = shared(&azurite);
    wait_until_shared(&store, &img).await;
    let blob_gets: Vec<usize> = img
        .blobs()
        .iter()
        .map(|bl| registry.blob_gets(&bl.digest))
        .collect();
    assert!(
        blob_gets.iter().all(|&n| n == 1),
        "upstream blob GETs: {blob_gets:?}"
    );

    // Replica b has never seen the image: everything comes from the shared store.
    let caches = pull_image(&b.url(), &img).await;
    assert!(
        caches[1..].iter().all(|c| c == "SHARED"),
        "pull through replica b: {caches:?}"
    );
    for bl in img.blobs() {
        assert_eq!(
            registry.blob_gets(&bl.digest),
            1,
            "replica b fetched {} from the upstream again",
            bl.digest
        );
    }
    // And now from its own disk.
    let caches = pull_image(&b.url(), &img).await;
    assert!(
        caches[1..].iter().all(|c| c == "HIT"),
        "second pull through replica b: {caches:?}"
    );

    // The upstream is gone; a new replica with an empty disk serves the image by tag
    // and by digest, every byte verified by `pull_image`.
    link.set_mode(Mode::Refuse);
    let c = replica(&azurite, &link.url(), dir.path(), "c");
    pull_image(&c.url(), &img).await;
    let by_digest = get(
        &manifest_url(&c, &img.repo, &img.manifest_digest),
        &[&img.media_type],
    )
    .await;
    assert_eq!(by_digest.status, 200, "{}", by_digest.text());
    assert_eq!(by_digest.body, img.manifest);
    // A blob the shared store does not hold is still an error, not a hang.
    let missing = format!("sha256:{}", "0".repeat(64));
    let r = head(&blob_url(&c, &img.repo, &missing), &[]).await;
    assert!(
        r.status.as_u16() >= 400,
        "HEAD of an unknown blob, upstream gone: {}",
        r.status
    );

    assert_only_whole_objects(&store).await;
}

/// The shared store down: replicas still pull from the upstream (nothing is copied,
/// one warning says so, `ferry_shared_store_up` is 0); back up, the replica uses it
/// again after its rest (10 s), without a restart.
#[tokio::test(flavor = "multi_thread")]
async fn a_shared_store_that_is_down_costs_only_its_copies() {
    let mut azurite = Azurite::start();
    azurite.create_container(CONTAINER);
    let registry = Registry::start(RegistryAuth::None);
    let first = push_image(&registry, "team/one", "v1", &[1 << 20]);
    let second = push_image(&registry, "team/two", "v1", &[1 << 20]);
    let dir = tempfile::tempdir().unwrap();
    let a = replica(&azurite, &registry.url(), dir.path(), "a");

    azurite.stop();
    let started = std::time::Instant::now();
    let caches = pull_image(&a.url(), &first).await;
    assert!(caches.iter().all(|c| c == "MISS"), "{caches:?}");
    // The store's retries are bounded: a pull does not wait for them.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "a pull with the shared store down took {:?}",
        started.elapsed()
    );
    assert_eq!(
        a.log().matches("shared store failed").count(),
        1,
        "one warning per outage:\n{}",
        a.log()
    );
    assert!(shared_store_up(&a).await == "0", "the store is down");

    azurite.restart();
    // After the replica's rest of the store (`proxy::shared::REST`, 10 s), the next
    // miss asks it again and copies what it fetched.
    tokio::time::sleep(std::time::Duration::from_secs(11)).await;
    pull_image(&a.url(), &second).await;
    wait_until_shared(&shared(&azurite), &second).await;
    assert!(shared_store_up(&a).await == "1", "the store is back");
}

/// The value of `ferry_shared_store_up` on `ferry`'s /metrics.
async fn shared_store_up(ferry: &Ferry) -> String {
    let m = get(&format!("{}/metrics", ferry.url()), &[]).await;
    let text = String::from_utf8_lossy(&m.body);
    text.lines()
        .find_map(|l| l.strip_prefix("ferry_shared_store_up "))
        .unwrap_or_else(|| panic!("no ferry_shared_store_up in /metrics:\n{text}"))
        .to_owned()
}

/// The value of metric `name` on `ferry`'s /metrics.
async fn metric(ferry: &Ferry, name: &str) -> String {
    let m = get(&format!("{}/metrics", ferry.url()), &[]).await;
    let text = String::from_utf8_lossy(&m.body);
    let prefix = format!("{name} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
        .to_owned()
}

/// `ferry <args>` with `config`: (exit success, stdout, stderr).
fn ferry_cli(config: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Ferry::cli_command()
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Three replicas with a shared `max_size` smaller than what they pull: the shared
/// store ends within it, evicted by one replica alone (the lease holder), whole images
/// at a time, so every image still there pulls byte-identical through a fresh replica
/// with the upstream gone; `ferry fsck --shared` reads it as clean while the replicas
/// run, then finds an object deleted and one with wrong bytes.
#[tokio::test(flavor = "multi_thread")]
async fn replicas_keep_the_shared_store_within_its_quota_one_at_a_time() {
    const MAX: u64 = 5 << 20;
    let azurite = Azurite::start();
    azurite.create_container(CONTAINER);
    let registry = Registry::start(RegistryAuth::None);
    let link = FaultProxy::start(registry.addr());
    let images: Vec<PushedImage> = (0..4)
        .map(|i| {
            push_image(
                &registry,
                &format!("team/app{i}"),
                "v1",
                &[1 << 20, 1 << 20],
            )
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    // A short grace period: what the test pulled a second ago may go (in production,
    // ten minutes: what a replica may still be streaming).
    let start = |name: &str| {
        replica_builder(
            &azurite,
            &link.url(),
            dir.path(),
            name,
            "eviction_grace = \"1s\"\n",
        )
        .env("FERRY_STORAGE_MAX_SIZE", "5MiB")
        .start()
    };
    let replicas = [start("a"), start("b"), start("c")];
    let store = shared(&azurite);
    for (i, img) in images.iter().enumerate() {
        pull_image(&replicas[i % 3].url(), img).await;
        wait_until_shared(&store, img).await;
    }
    let total: u64 = images
        .iter()
        .map(|img| {
            img.blobs()
                .iter()
                .map(|b| b.bytes.len() as u64)
                .sum::<u64>()
                + img.manifest.len() as u64
        })
        .sum();
    assert!(total > MAX, "the images ({total} bytes) fit the quota");

    // Replicas check every 10 s (`server::shared_maintenance::TICK`); a pass logs
    // when it is done.
    let passes = || -> Vec<usize> {
        replicas
            .iter()
            .map(|r| r.log().matches("shared store eviction: evicted").count())
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    let used = loop {
        let used = store.usage().await.unwrap().bytes;
        if used <= MAX && passes().iter().any(|&n| n > 0) {
            break used;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the shared store still holds {used} bytes (max_size {MAX}) after 40 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let evicting = passes();
    assert_eq!(
        evicting.iter().filter(|&&n| n > 0).count(),
        1,
        "eviction passes per replica: {evicting:?}"
    );
    let mut holders = Vec::new();
    for r in &replicas {
        holders.push(metric(r, "ferry_shared_maintenance_lease").await);
    }
    assert_eq!(
        holders.iter().filter(|h| *h == "1").count(),
        1,
        "lease held per replica: {holders:?}"
    );
    let evictor = &replicas[evicting.iter().position(|&n| n > 0).unwrap()];
    assert_ne!(metric(evictor, "ferry_shared_evictions_total").await, "0");
    assert_ne!(
        metric(evictor, "ferry_shared_evicted_bytes_total").await,
        "0"
    );

    // Whole images went: each is either all there or has no manifest left.
    let mut cached = Vec::new();
    for img in &images {
        let manifest: ferry_oci::Digest = img.manifest_digest.parse().unwrap();
        let mut present = Vec::new();
        for b in img.blobs() {
            present.push(
                store
                    .stat(&b.digest.parse().unwrap())
                    .await
                    .unwrap()
                    .is_some(),
            );
        }
        if store.stat(&manifest).await.unwrap().is_some() {
            assert!(
                present.iter().all(|&p| p),
                "{}: a blob of a cached manifest was deleted: {present:?}",
                img.repo
            );
            cached.push(img);
        }
    }
    assert!(
        !cached.is_empty() && cached.len() < images.len(),
        "{} of {} images still cached ({used} bytes)",
        cached.len(),
        images.len()
    );

    // The upstream gone, a replica with an empty disk serves every image still cached.
    link.set_mode(Mode::Refuse);
    let d = start("d");
    for img in &cached {
        let caches = pull_image(&d.url(), img).await;
        assert!(
            caches[1..].iter().all(|c| c == "SHARED"),
            "{}: {caches:?}",
            img.repo
        );
    }

    // The check, while the replicas run.
    let (ok, out, err) = ferry_cli(d.config_path(), &["fsck", "--shared"]);
    assert!(ok, "fsck --shared on a clean store:\n{out}\n{err}");
    assert!(out.contains("0 problem(s)"), "{out}");
    // A layer deleted, another overwritten with wrong bytes of its size.
    let (gone, bad) = (&cached[0].blobs()[0], &cached[0].blobs()[1]);
    // Straight to Azurite (Put Blob, Delete Blob), as a stray tool or a bit flip would.
    let url = |digest: &str| {
        let path = store.blob_path(&digest.parse().unwrap());
        let sas = Azurite::account_sas(KEY);
        format!("{}/{CONTAINER}/{path}?{sas}", azurite.endpoint())
    };
    let http = reqwest::Client::new();
    let deleted = http.delete(url(&gone.digest)).send().await.unwrap();
    assert_eq!(deleted.status(), 202);
    let wrong = vec![0u8; bad.bytes.len()];
    let put = http
        .put(url(&bad.digest))
        .header("x-ms-blob-type", "BlockBlob")
        .body(wrong)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);
    let (ok, out, err) = ferry_cli(d.config_path(), &["fsck", "--shared"]);
    assert!(!ok, "fsck --shared passed a damaged store:\n{out}");
    assert!(out.contains("2 problem(s)"), "{out}");
    assert!(
        out.contains("records without objects: 1") && out.contains(&gone.digest),
        "{out}"
    );
    assert!(
        out.contains("bytes do not match the digest: 1") && out.contains(&bad.digest),
        "{out}"
    );
    assert!(
        err.contains("problem(s) found in the shared store"),
        "{err}"
    );
    // Sizes only: the missing object, not the wrong bytes.
    let (_, out, _) = ferry_cli(d.config_path(), &["fsck", "--shared", "--sizes-only"]);
    assert!(
        out.contains("1 problem(s)") && !out.contains(&bad.digest),
        "{out}"
    );
    // gc refuses the shared store, saying why.
    let (ok, _, err) = ferry_cli(d.config_path(), &["gc", "--shared"]);
    assert!(
        !ok && err.contains("does not run on the shared store"),
        "{err}"
    );
}
