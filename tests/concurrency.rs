//! Many clients, one upstream fetch; and the first byte reaches a client before the
//! upstream has finished sending.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::faults::{FaultProxy, Mode};
use crate::harness::ferry::{Ferry, FerryBuilder, Upstream};
use crate::harness::http::client;
use crate::harness::images::push_image;
use crate::harness::registry::{Registry, RegistryAuth};
use crate::support::blob_url;

/// Distribution behind a throttled link, and Ferry in front: a cold blob takes
/// `size / bytes_per_sec` to arrive, long enough to watch what happens meanwhile.
fn throttled_setup(bytes_per_sec: u64) -> (Registry, FaultProxy, Ferry) {
    let registry = Registry::start(RegistryAuth::None);
    let proxy = FaultProxy::start(registry.addr());
    proxy.set_mode(Mode::Throttle(bytes_per_sec));
    let ferry = FerryBuilder::new()
        .upstream(Upstream::local(&proxy.url()))
        .start();
    (registry, proxy, ferry)
}

/// 32 clients ask at once for a cold blob that takes about 2 s to come from upstream.
/// One of them starts the fetch (`MISS`); every other follows it (`JOINED`) or, if it
/// came after the blob was verified, gets the stored copy (`HIT`). A client answered
/// while the upstream was still sending cannot have been served from the store.
#[tokio::test(flavor = "multi_thread")]
async fn thirty_two_clients_share_one_upstream_fetch() {
    const CLIENTS: usize = 32;
    let (registry, proxy, ferry) = throttled_setup(16 << 20);
    let img = push_image(&registry, "team/big", "v1", &[32 << 20]);
    let layer = Arc::new(img.largest_layer().clone());
    assert_eq!(crate::harness::sha256_digest(&layer.bytes), layer.digest);
    let url = blob_url(&ferry, "team/big", &layer.digest);
    let proxy = Arc::new(proxy);

    let barrier = Arc::new(tokio::sync::Barrier::new(CLIENTS));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let (url, layer, barrier, proxy) =
            (url.clone(), layer.clone(), barrier.clone(), proxy.clone());
        tasks.push(tokio::spawn(async move {
            // Each client has its own connection pool, like separate nodes.
            let c = client();
            barrier.wait().await;
            let mut resp = c
                .get(&url)
                .send()
                .await
                .unwrap_or_else(|e| panic!("client {i}: {e}"));
            // Upstream bytes (headers included) through the link when this client was
            // answered: below the blob's size, the upstream had not finished.
            let upstream_sent = proxy.bytes_to_client();
            assert_eq!(resp.status(), 200, "client {i}");
            let x_cache = resp
                .headers()
                .get("x-cache")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            // Compare as the bytes arrive, rather than holding 32 copies.
            let mut offset = 0usize;
            while let Some(chunk) = resp
                .chunk()
                .await
                .unwrap_or_else(|e| panic!("client {i} body after {offset} bytes: {e}"))
            {
                let end = offset + chunk.len();
                assert!(
                    end <= layer.bytes.len() && chunk[..] == layer.bytes[offset..end],
                    "client {i}: wrong bytes at {offset}..{end}"
                );
                offset = end;
            }
            assert_eq!(offset, layer.bytes.len(), "client {i}: body length");
            (x_cache, upstream_sent, started.elapsed(), offset)
        }));
    }
    let mut caches = std::collections::BTreeMap::<String, usize>::new();
    let mut answered_mid_fetch = Vec::new();
    let mut slowest = Duration::ZERO;
    let mut total_bytes = 0usize;
    for t in tasks {
        let (x_cache, upstream_sent, took, bytes) =
            tokio::time::timeout(Duration::from_secs(240), t)
                .await
                .expect("clients finished within 240 s")
                .expect("client task");
        if upstream_sent < layer.size {
            answered_mid_fetch.push(x_cache.clone());
        }
        *caches.entry(x_cache).or_default() += 1;
        slowest = slowest.max(took);
        total_bytes += bytes;
    }
    eprintln!(
        "{CLIENTS} clients × {} MiB through ferry ({} MiB verified): all done in {slowest:?}; \
         X-Cache: {caches:?}; answered before the upstream finished: {answered_mid_fetch:?}",
        layer.size >> 20,
        total_bytes >> 20
    );
    assert_eq!(
        registry.blob_gets(&layer.digest),
        1,
        "Distribution served the blob exactly once"
    );
    assert_eq!(
        caches.get("MISS"),
        Some(&1),
        "exactly one client started the fetch: {caches:?}"
    );
    for value in caches.keys() {
        assert!(
            ["HIT", "MISS", "JOINED"].contains(&value.as_str()),
            "X-Cache value {value:?}"
        );
    }
    assert!(
        answered_mid_fetch
            .iter()
            .all(|c| c == "MISS" || c == "JOINED"),
        "answered while the upstream was still sending, yet not MISS or JOINED: \
         {answered_mid_fetch:?}"
    );
    assert!(
        answered_mid_fetch.iter().any(|c| c == "JOINED"),
        "no client joined the running fetch ({caches:?}; answered mid-fetch: \
         {answered_mid_fetch:?})"
    );
}

/// A cold blob is streamed to the client as it arrives, not stored first: the first
/// body byte reaches the client while the (throttled) upstream has sent less than the
/// whole blob.
#[tokio::test(flavor = "multi_thread")]
async fn time_to_first_byte_cold_blob() {
    const SIZE: usize = 8 << 20;
    // About 2 s for the whole blob: ample time to see its first byte before the end.
    let (registry, proxy, ferry) = throttled_setup(4 << 20);
    let img = push_image(&registry, "team/ttfb", "v1", &[SIZE]);
    let layer = img.largest_layer();

    let started = Instant::now();
    let mut resp = client()
        .get(blob_url(&ferry, "team/ttfb", &layer.digest))
        .send()
        .await
        .expect("GET blob");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-cache"], "MISS");
    let mut first = None;
    let mut body = Vec::with_capacity(SIZE);
    while let Some(chunk) = resp.chunk().await.expect("body") {
        if first.is_none() && !chunk.is_empty() {
            first = Some((started.elapsed(), proxy.bytes_to_client()));
        }
        body.extend_from_slice(&chunk);
    }
    let (first_at, upstream_sent) = first.expect("a non-empty body");
    eprintln!(
        "cold {} MiB blob through a throttled upstream: first byte after {first_at:?}, \
         when the upstream had sent {upstream_sent} of {} bytes; whole blob after {:?}",
        layer.size >> 20,
        layer.size,
        started.elapsed()
    );
    assert!(body == layer.bytes, "bytes of {}", layer.digest);
    assert!(
        upstream_sent < layer.size,
        "the first byte came only after the upstream had sent the whole blob \
         ({upstream_sent} of {} bytes)",
        layer.size
    );
}

/// 24 clients ask at once for a tag nobody pulled, from an upstream slow to answer:
/// one upstream manifest GET in all (a rollout's thousand nodes do not become a
/// thousand registry requests); every client gets the same, correct manifest.
#[tokio::test(flavor = "multi_thread")]
async fn clients_asking_for_one_tag_at_once_cause_one_upstream_manifest_get() {
    const CLIENTS: usize = 24;
    // A manifest of a few hundred bytes takes about a second at 512 bytes/s.
    let (registry, proxy, ferry) = throttled_setup(512);
    proxy.set_mode(Mode::Pass);
    let img = push_image(&registry, "team/app", "v1", &[1000]);
    proxy.set_mode(Mode::Throttle(512));
    let before = registry.count_requests("GET", "/manifests/v1");
    let url = crate::support::manifest_url(&ferry, "team/app", "v1");
    let caches = crate::support::manifest_gets_at_once(vec![url; CLIENTS], &img).await;
    let upstream_gets = registry.count_requests("GET", "/manifests/v1") - before;
    assert_eq!(upstream_gets, 1, "upstream manifest GETs ({caches:?})");
    assert_eq!(caches.get("MISS"), Some(&1), "{caches:?}");
}
