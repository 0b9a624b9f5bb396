//! The store as an operator sees it: `/readyz` when it turns read-only, eviction down
//! to 90% of `max_size`, and last-use times that outlive a restart.

use std::time::{Duration, Instant};

use crate::harness::ferry::{Ferry, FerryBuilder, Upstream};
use crate::harness::images::{PushedImage, push_image_http};
use crate::harness::registry::{Registry, RegistryAuth};
use crate::support::get;

use super::{ReadOnly, store_blob_bytes, stored};

/// README (Operate): "`/readyz` is 200 while the store is writable … and 503 with the
/// reason when it is not (disk full or read-only); the change is logged once. It never
/// asks the upstreams." The store's directory turns read-only under a running Ferry
/// (as a file system remounted read-only after an error does), then writable again.
#[tokio::test(flavor = "multi_thread")]
async fn readyz_is_503_while_the_store_is_read_only_and_200_again_after() {
    let registry = Registry::start(RegistryAuth::None);
    let img = push_image_http(&registry, "team/app", "v1", &[20_000]);
    let ferry = FerryBuilder::new()
        .upstream(Upstream::local(&registry.url()))
        .start();
    let readyz = format!("{}/readyz", ferry.url());
    assert_eq!(get(&readyz, &[]).await.status, 200);
    crate::support::pull_image(&ferry.url(), &img).await;
    let mark = ferry.log().len();

    let mut ro = ReadOnly::mount(&ferry.storage_root());
    for _ in 0..3 {
        let r = get(&readyz, &[]).await;
        assert_eq!(r.status, 503, "read-only store: {}", r.text());
        let text = r.text();
        assert!(
            text.contains("not writable") && text.to_lowercase().contains("read-only"),
            "the reason: {text}"
        );
    }
    // Liveness is not readiness, and cached content still serves.
    assert_eq!(
        get(&format!("{}/healthz", ferry.url()), &[]).await.status,
        200
    );
    assert!(
        crate::support::pull_image(&ferry.url(), &img)
            .await
            .iter()
            .all(|c| c == "HIT")
    );
    ro.unmount();

    let r = get(&readyz, &[]).await;
    assert_eq!(r.status, 200, "writable again: {}", r.text());
    // The log line may follow the answer by a moment on a busy machine.
    ferry.wait_for_log(
        mark,
        &["ready: the store is writable again"],
        std::time::Duration::from_secs(10),
    );
    let not_ready = ferry.log_lines(mark, &["not ready"]);
    assert_eq!(
        not_ready.len(),
        1,
        "logged once, not per probe: {not_ready:#?}"
    );
    assert_eq!(
        ferry
            .log_lines(mark, &["ready: the store is writable again"])
            .len(),
        1
    );
}

/// About 1.2 MiB per image (layer, config, manifest).
const LAYER: usize = 1200 << 10;

fn images(registry: &Registry, n: usize) -> Vec<PushedImage> {
    (0..n)
        .map(|i| push_image_http(registry, &format!("quota/img{i}"), "v1", &[LAYER]))
        .collect()
}

/// Waits (≤ 30 s) until the store's blobs are at most `bytes`.
async fn wait_store_at_most(ferry: &Ferry, bytes: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let used = store_blob_bytes(ferry);
        if used <= bytes {
            return used;
        }
        assert!(
            Instant::now() < deadline,
            "the store holds {used} bytes, over {bytes}, 30 s on\n{}",
            crate::harness::process::tail_str(&ferry.log(), 30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// README (Quota): "over the limit, a background pass evicts the least recently used
/// images … down to 90% of `max_size`". Nine images of 1.2 MiB (10.8 MiB) against
/// 10 MiB: getting just under 10 MiB takes one eviction (9.6 MiB), 90% takes two
/// (8.4 MiB) — the two pulled first, nothing more.
#[tokio::test(flavor = "multi_thread")]
async fn eviction_goes_down_to_90_percent_of_max_size_lru_first() {
    const MAX: u64 = 10 << 20;
    let registry = Registry::start(RegistryAuth::None);
    let imgs = images(&registry, 9);
    let ferry = FerryBuilder::new()
        .upstream(Upstream::local(&registry.url()))
        .env("FERRY_STORAGE_MAX_SIZE", "10MiB")
        .start();
    for img in &imgs {
        crate::support::pull_image(&ferry.url(), img).await;
    }
    let used = wait_store_at_most(&ferry, MAX * 9 / 10).await;
    // A pass running right now may still be deleting: give it the time to finish.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = store_blob_bytes(&ferry).min(used);
    let image_bytes = imgs[0].blobs().iter().map(|b| b.size).sum::<u64>();
    assert!(
        used + image_bytes > MAX * 9 / 10,
        "evicted more than needed to reach 90%: {used} bytes left"
    );
    let evicted: Vec<usize> = (0..imgs.len())
        .filter(|&i| !stored(&ferry, &imgs[i].largest_layer().digest))
        .collect();
    assert_eq!(evicted, vec![0, 1], "the two least recently used, only");
}

/// README (Quota): "Last use is tracked in memory and written to the index every
/// minute and at shutdown." A is pulled first, B and C after, then A again (all hits);
/// Ferry restarts with a `max_size` that fits two of the three: B, the least recently
/// used before the restart, is evicted, not A (the oldest fetch).
#[tokio::test(flavor = "multi_thread")]
async fn last_use_before_a_restart_decides_eviction_after_it() {
    let registry = Registry::start(RegistryAuth::None);
    let imgs = images(&registry, 3);
    let (a, b, c) = (&imgs[0], &imgs[1], &imgs[2]);
    let mut ferry = FerryBuilder::new()
        .upstream(Upstream::local(&registry.url()))
        .start();
    for img in [a, b, c] {
        crate::support::pull_image(&ferry.url(), img).await;
    }
    // Whole seconds apart, so no two uses can share a timestamp.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(
        crate::support::pull_image(&ferry.url(), a)
            .await
            .iter()
            .all(|x| x == "HIT")
    );

    // 3 MiB: the three (3.6 MiB) exceed it; two (2.4 MiB) fit under 90% (2.7 MiB).
    let text = ferry
        .config()
        .replace("[storage]\n", "[storage]\nmax_size = \"3MiB\"\n");
    ferry.write_config(&text);
    ferry.restart();
    wait_store_at_most(&ferry, (3 << 20) * 9 / 10).await;
    assert!(
        !stored(&ferry, &b.largest_layer().digest),
        "B was used least recently"
    );
    assert!(
        stored(&ferry, &a.largest_layer().digest),
        "A was used last, before the restart"
    );
    assert!(stored(&ferry, &c.largest_layer().digest));
}
