//! Requests that arrive while a blob is still downloading join the one upstream fetch:
//! a `Range` is served from the bytes as they arrive, a late full GET reads what is on
//! disk and then follows, a HEAD answers from the fetch. The upstream sits behind a
//! throttling proxy so the download takes a few seconds.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::harness::faults::{FaultProxy, Mode};
use crate::harness::ferry::{FerryBuilder, Upstream};
use crate::harness::http::client;
use crate::harness::images::push_image;
use crate::harness::registry::{Registry, RegistryAuth};
use crate::harness::sha256_digest;
use crate::support::{blob_url, head};

/// Blob size: big enough that the throttled download takes a few seconds.
const BLOB_SIZE: usize = 8 << 20;
/// Upstream → Ferry bytes per second: about 3 s for the blob.
const RATE: u64 = 3 << 20;

/// A GET as a client saw it, with when its headers and its last byte arrived.
#[derive(Debug)]
struct Timed {
    status: u16,
    x_cache: String,
    content_range: String,
    content_length: Option<u64>,
    body: Vec<u8>,
    headers_at: Instant,
    done_at: Instant,
}

/// GETs `url` (with `range`, if any), counting body bytes into `progress` as they come.
async fn timed_get(url: String, range: Option<String>, progress: Arc<AtomicUsize>) -> Timed {
    let mut req = client().get(&url);
    if let Some(r) = &range {
        req = req.header("range", r);
    }
    let mut resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url} (range {range:?}): {e}"));
    let headers_at = Instant::now();
    let h = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let (status, x_cache, content_range) =
        (resp.status().as_u16(), h("x-cache"), h("content-range"));
    let content_length = resp.content_length();
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .unwrap_or_else(|e| panic!("GET {url} (range {range:?}) body after {}: {e}", body.len()))
    {
        body.extend_from_slice(&chunk);
        progress.store(body.len(), Ordering::SeqCst);
    }
    Timed {
        status,
        x_cache,
        content_range,
        content_length,
        body,
        headers_at,
        done_at: Instant::now(),
    }
}

/// Waits (≤ 15 s) until `progress` reaches `bytes`; panics if `leader` ended first.
async fn wait_for_progress(
    progress: &AtomicUsize,
    bytes: usize,
    leader: &tokio::task::JoinHandle<Timed>,
) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while progress.load(Ordering::SeqCst) < bytes {
        assert!(
            !leader.is_finished(),
            "the first GET ended before {bytes} bytes arrived"
        );
        assert!(
            Instant::now() < deadline,
            "the first GET got only {} of {bytes} bytes within 15 s",
            progress.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn range_late_get_and_head_join_the_fetch_in_flight() {
    let registry = Registry::start(RegistryAuth::None);
    let img = push_image(&registry, "team/big", "v1", &[BLOB_SIZE]);
    let layer = img.largest_layer().clone();
    let size = layer.size;
    let proxy = FaultProxy::start(registry.addr());
    proxy.set_mode(Mode::Throttle(RATE));
    let ferry = FerryBuilder::new()
        .upstream(Upstream::local(&proxy.url()))
        .start();
    let url = blob_url(&ferry, "team/big", &layer.digest);
    let started = Instant::now();

    let progress = Arc::new(AtomicUsize::new(0));
    let leader = tokio::spawn(timed_get(url.clone(), None, progress.clone()));
    wait_for_progress(&progress, 1, &leader).await;

    // (a) The last 300 kB, while most of the blob has yet to arrive.
    let range_start = size - 300_000;
    let ranged = tokio::spawn(timed_get(
        url.clone(),
        Some(format!("bytes={range_start}-")),
        Arc::new(AtomicUsize::new(0)),
    ));
    // (c) A HEAD answers at once with the whole size.
    let h = head(&url, &[]).await;
    assert!(
        !leader.is_finished(),
        "the download ended before the HEAD was answered: throttle too fast to test joins"
    );
    assert_eq!(h.status, 200, "HEAD in flight: {}", h.text());
    assert_eq!(
        h.header("content-length"),
        size.to_string(),
        "HEAD in flight: Content-Length is the blob's size"
    );
    assert_eq!(h.x_cache(), "JOINED", "HEAD in flight: X-Cache");

    // (b) A full GET once a couple of MiB are on disk: it reads those, then follows.
    wait_for_progress(&progress, 2 << 20, &leader).await;
    let late = tokio::spawn(timed_get(url.clone(), None, Arc::new(AtomicUsize::new(0))));

    let within = |t| tokio::time::timeout(Duration::from_secs(60), t);
    let leader = within(leader)
        .await
        .expect("first GET within 60 s")
        .unwrap();
    let ranged = within(ranged)
        .await
        .expect("range GET within 60 s")
        .unwrap();
    let late = within(late).await.expect("late GET within 60 s").unwrap();
    eprintln!(
        "{} MiB blob at {} MiB/s: first GET done after {:?}; range headers after {:?}, \
         done after {:?}; late GET headers after {:?}, done after {:?}",
        size >> 20,
        RATE >> 20,
        leader.done_at - started,
        ranged.headers_at - started,
        ranged.done_at - started,
        late.headers_at - started,
        late.done_at - started,
    );

    assert_eq!(leader.status, 200, "first GET");
    assert_eq!(leader.x_cache, "MISS", "first GET");
    assert!(leader.body == layer.bytes, "first GET: bytes");

    assert_eq!(ranged.status, 206, "range GET in flight");
    assert_eq!(ranged.x_cache, "JOINED", "range GET in flight: X-Cache");
    assert_eq!(
        ranged.content_range,
        format!("bytes {range_start}-{}/{size}", size - 1),
        "range GET in flight: Content-Range"
    );
    assert_eq!(
        ranged.content_length,
        Some(size - range_start),
        "range GET in flight: Content-Length"
    );
    assert!(
        ranged.body == layer.bytes[range_start as usize..],
        "range GET in flight: got {} bytes, not the blob's last {}",
        ranged.body.len(),
        size - range_start
    );
    assert!(
        ranged.headers_at < leader.done_at,
        "the range GET was answered only after the download finished"
    );

    assert_eq!(late.status, 200, "late GET");
    assert_eq!(late.x_cache, "JOINED", "late GET: X-Cache");
    assert_eq!(late.body.len() as u64, size, "late GET: length");
    assert_eq!(sha256_digest(&late.body), layer.digest, "late GET: digest");
    assert!(
        late.headers_at < leader.done_at,
        "the late GET was answered only after the download finished"
    );

    assert_eq!(
        registry.blob_gets(&layer.digest),
        1,
        "the upstream served the blob once: {:?}",
        registry
            .settled_access_log()
            .iter()
            .filter(|e| e.path.contains(&layer.digest))
            .collect::<Vec<_>>()
    );
}
