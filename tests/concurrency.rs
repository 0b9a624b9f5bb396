//! Many clients, one upstream fetch; and how soon the first byte arrives.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::http::client;
use crate::harness::images::push_image;
use crate::support::{blob_url, local_setup};

#[tokio::test(flavor = "multi_thread")]
async fn thirty_two_clients_share_one_upstream_fetch() {
    const CLIENTS: usize = 32;
    let (registry, ferry) = local_setup();
    let img = push_image(&registry, "team/big", "v1", &[32 << 20]);
    let layer = Arc::new(img.largest_layer().clone());
    assert_eq!(crate::harness::sha256_digest(&layer.bytes), layer.digest);
    let url = blob_url(&ferry, "team/big", &layer.digest);

    let barrier = Arc::new(tokio::sync::Barrier::new(CLIENTS));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let (url, layer, barrier) = (url.clone(), layer.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            // Each client has its own connection pool, like separate nodes.
            let c = client();
            barrier.wait().await;
            let mut resp = c
                .get(&url)
                .send()
                .await
                .unwrap_or_else(|e| panic!("client {i}: {e}"));
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
            (x_cache, started.elapsed(), offset)
        }));
    }
    let mut caches = std::collections::BTreeMap::<String, usize>::new();
    let mut slowest = Duration::ZERO;
    let mut total_bytes = 0usize;
    for t in tasks {
        let (x_cache, took, bytes) = tokio::time::timeout(Duration::from_secs(240), t)
            .await
            .expect("clients finished within 240 s")
            .expect("client task");
        *caches.entry(x_cache).or_default() += 1;
        slowest = slowest.max(took);
        total_bytes += bytes;
    }
    eprintln!(
        "{CLIENTS} clients × {} MiB through ferry ({} MiB verified): all done in {slowest:?}; \
         X-Cache: {caches:?}",
        layer.size >> 20,
        total_bytes >> 20
    );
    assert_eq!(
        registry.blob_gets(&layer.digest),
        1,
        "Distribution served the blob exactly once"
    );
    for value in caches.keys() {
        assert!(
            ["HIT", "MISS", "JOINED"].contains(&value.as_str()),
            "X-Cache value {value:?}"
        );
    }
}

/// Prints (does not assert) time to first byte and total time for a cold blob:
/// straight from Distribution vs through Ferry.
#[tokio::test(flavor = "multi_thread")]
async fn time_to_first_byte_cold_blob() {
    let (registry, ferry) = local_setup();
    let img = push_image(&registry, "team/ttfb", "v1", &[8 << 20, 8 << 20]);
    let direct = &img.layers[0];
    let proxied = &img.layers[1];

    async fn measure(url: &str) -> (Duration, Duration, usize) {
        let c = client();
        let started = Instant::now();
        let mut resp = c.get(url).send().await.expect("GET blob");
        assert_eq!(resp.status(), 200, "{url}");
        let mut first = None;
        let mut total = 0;
        while let Some(chunk) = resp.chunk().await.expect("body") {
            if first.is_none() && !chunk.is_empty() {
                first = Some(started.elapsed());
            }
            total += chunk.len();
        }
        (first.unwrap_or_default(), started.elapsed(), total)
    }

    let (d_first, d_total, d_len) = measure(&format!(
        "{}/v2/team/ttfb/blobs/{}",
        registry.url(),
        direct.digest
    ))
    .await;
    let (f_first, f_total, f_len) = measure(&blob_url(&ferry, "team/ttfb", &proxied.digest)).await;
    assert_eq!(d_len as u64, direct.size);
    assert_eq!(f_len as u64, proxied.size);
    eprintln!(
        "cold 8 MiB blob: Distribution direct: first byte {d_first:?}, total {d_total:?}; \
         through ferry (MISS): first byte {f_first:?}, total {f_total:?}"
    );
}
