//! A link that drops in the middle of a blob: Ferry resumes from the bytes it has with
//! a `Range` request, and the clients streaming the blob see no error.

use sha2::{Digest as _, Sha256};

use crate::harness::faults::{FaultProxy, Mode};
use crate::harness::ferry::{FerryBuilder, Upstream};
use crate::harness::images::push_image;
use crate::harness::registry::{Registry, RegistryAuth};
use crate::support::{blob_url, get};

#[tokio::test(flavor = "multi_thread")]
async fn connection_reset_mid_blob_is_resumed_with_range() {
    let registry = Registry::start(RegistryAuth::None);
    let proxy = FaultProxy::start(registry.addr());
    let ferry = FerryBuilder::new()
        .upstream(Upstream::local(&proxy.url()))
        .start();
    let img = push_image(&registry, "team/app", "v1", &[8 << 20]);
    let layer = img.largest_layer().clone();
    let size = layer.bytes.len() as u64;

    // The first connection carrying 3 MiB is cut; the link then works again.
    proxy.set_mode(Mode::CutOnceAfter(3 << 20));
    let before = proxy.bytes_to_client();
    let url = blob_url(&ferry, "team/app", &layer.digest);
    let clients: Vec<_> = (0..3)
        .map(|_| {
            tokio::spawn({
                let url = url.clone();
                async move { get(&url, &[]).await }
            })
        })
        .collect();
    for c in clients {
        let r = c.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.body.len() as u64, size, "a client got a short body");
        assert_eq!(
            format!("sha256:{}", hex::encode(Sha256::digest(&r.body))),
            layer.digest
        );
    }
    let sent = proxy.bytes_to_client() - before;

    let log = registry.settled_access_log();
    let gets: Vec<_> = log
        .iter()
        .filter(|e| e.method == "GET" && e.path.contains(&format!("/blobs/{}", layer.digest)))
        .collect();
    let statuses: Vec<u16> = gets.iter().map(|e| e.status).collect();
    eprintln!("resume: upstream GETs {statuses:?}, {sent} bytes sent for a {size}-byte blob");
    assert_eq!(
        statuses,
        vec![200, 206],
        "one GET, then one Range request continuing it"
    );
    assert!(
        gets[1].bytes < size - (2 << 20),
        "the resume re-sent {} bytes",
        gets[1].bytes
    );
    assert!(
        (sent as f64) <= 1.1 * size as f64,
        "the upstream sent {sent} bytes for a {size}-byte blob"
    );
    // Stored: the next request is a hit.
    let r = get(&url, &[]).await;
    assert_eq!(r.x_cache(), "HIT");
    assert!(r.body == layer.bytes);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_download_cut_by_a_crash_is_resumed_after_restart() {
    let registry = Registry::start(RegistryAuth::None);
    let proxy = FaultProxy::start(registry.addr());
    let mut ferry = FerryBuilder::new()
        .upstream(Upstream::local(&proxy.url()))
        .start();
    let img = push_image(&registry, "team/app", "v1", &[8 << 20]);
    let layer = img.largest_layer().clone();
    let size = layer.bytes.len() as u64;
    let url = blob_url(&ferry, "team/app", &layer.digest);

    // A slow link; Ferry is killed with about three quarters of the blob sent to it
    // (some of it still in socket buffers and write batches, never stored).
    proxy.set_mode(Mode::Throttle(4 << 20));
    let start = proxy.bytes_to_client();
    // This client is cut off by the crash; only the download it starts matters.
    let client = tokio::spawn({
        let url = url.clone();
        async move {
            if let Ok(resp) = crate::harness::http::client().get(&url).send().await {
                let _ = resp.bytes().await;
            }
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while proxy.bytes_to_client() - start < size * 3 / 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "download did not progress"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    ferry.crash_restart();
    let _ = client.await;

    proxy.set_mode(Mode::Pass);
    let before = proxy.bytes_to_client();
    let url = blob_url(&ferry, "team/app", &layer.digest);
    let r = get(&url, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.body == layer.bytes, "resumed blob bytes");
    let sent_after = proxy.bytes_to_client() - before;
    let log = registry.settled_access_log();
    let statuses: Vec<u16> = log
        .iter()
        .filter(|e| e.method == "GET" && e.path.contains(&format!("/blobs/{}", layer.digest)))
        .map(|e| e.status)
        .collect();
    eprintln!(
        "resume after crash: upstream GETs {statuses:?}; {sent_after} of {size} bytes fetched after the restart"
    );
    assert_eq!(
        statuses.last(),
        Some(&206),
        "the download after the restart continued with a Range request"
    );
    assert!(
        sent_after <= size - (1 << 20),
        "after the restart {sent_after} of {size} bytes were fetched again: nothing was reused"
    );
    assert_eq!(get(&url, &[]).await.x_cache(), "HIT");
}
