//! Data safety when things go wrong: wrong bytes upstream, an upstream that dies
//! mid-blob or stalls, and a client that hangs up mid-stream.

use std::time::{Duration, Instant};

use crate::harness::faults::{FaultProxy, Mode};
use crate::harness::ferry::{Ferry, FerryBuilder, Upstream};
use crate::harness::http::{client, media};
use crate::harness::images::{Blob, push_image};
use crate::harness::registry::{Registry, RegistryAuth};
use crate::support::{blob_url, get, local_setup, manifest_url, store_holds, stored_blob_path};

/// What a client got for one blob GET (fields are for the failure messages).
#[derive(Debug)]
#[allow(dead_code)]
enum Outcome {
    /// Status 200 and the whole body arrived.
    Complete(Vec<u8>),
    /// Status 200, but the body ended early or errored.
    Cut { got: usize },
    /// Any other status.
    Status(u16),
    /// No response at all.
    NoResponse(String),
}

async fn fetch_blob(url: &str) -> Outcome {
    let resp = match client().get(url).send().await {
        Ok(r) => r,
        Err(e) => return Outcome::NoResponse(e.to_string()),
    };
    if resp.status() != 200 {
        return Outcome::Status(resp.status().as_u16());
    }
    let declared = resp.content_length();
    let mut resp = resp;
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => body.extend_from_slice(&c),
            Ok(None) => break,
            Err(_) => return Outcome::Cut { got: body.len() },
        }
    }
    match declared {
        Some(n) if n as usize != body.len() => Outcome::Cut { got: body.len() },
        _ => Outcome::Complete(body),
    }
}

/// Asserts the client did not receive the complete (wrong) blob.
fn assert_not_complete(outcome: &Outcome, blob: &Blob, what: &str) {
    if let Outcome::Complete(body) = outcome {
        panic!(
            "{what}: client received a complete 200 body of {} bytes (blob is {} bytes, digest ok: {})",
            body.len(),
            blob.size,
            crate::harness::sha256_digest(body) == blob.digest
        );
    }
    eprintln!("{what}: {outcome:?}");
}

async fn assert_ferry_alive(ferry: &mut Ferry) {
    ferry.assert_running();
    let r = get(&format!("{}/v2/", ferry.url()), &[]).await;
    assert_eq!(r.status, 200, "ferry still serves /v2/");
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupt_upstream_blob_is_never_served_or_stored() {
    let (registry, mut ferry) = local_setup();
    let img = push_image(&registry, "team/app", "v1", &[2 << 20]);
    let layer = img.largest_layer().clone();
    registry.corrupt_blob(&layer.digest);
    let corrupted = std::fs::read(registry.blob_path(&layer.digest)).expect("read corrupted blob");
    let url = blob_url(&ferry, "team/app", &layer.digest);

    for attempt in 1..=2 {
        let outcome = fetch_blob(&url).await;
        assert_not_complete(
            &outcome,
            &layer,
            &format!("corrupt blob, attempt {attempt}"),
        );
        assert_ferry_alive(&mut ferry).await;
    }
    assert!(
        !store_holds(&ferry.storage_root(), &corrupted),
        "the corrupted bytes were stored"
    );

    // Upstream fixed: the blob comes through intact.
    registry.restore_blob(&layer.digest, &layer.bytes);
    match fetch_blob(&url).await {
        Outcome::Complete(body) => {
            assert!(body == layer.bytes, "bytes after the upstream was fixed")
        }
        other => panic!("after the upstream was fixed: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_dying_mid_blob_again_and_again_cuts_the_client_and_stores_nothing() {
    let registry = Registry::start(RegistryAuth::None);
    let proxy = FaultProxy::start(registry.addr());
    let mut ferry = FerryBuilder::new()
        .upstream(Upstream::local(&proxy.url()))
        .start();
    let img = push_image(&registry, "team/app", "v1", &[8 << 20]);
    let layer = img.largest_layer().clone();
    let url = blob_url(&ferry, "team/app", &layer.digest);

    // Every connection dies after 1 MiB: Ferry resumes a bounded number of times
    // (each with a Range request), then gives up with the client cut short.
    proxy.set_mode(Mode::CutAfter(1 << 20));
    let outcome = fetch_blob(&url).await;
    assert_not_complete(&outcome, &layer, "upstream cut after every 1 MiB");
    assert_ferry_alive(&mut ferry).await;
    assert!(
        !store_holds(&ferry.storage_root(), &layer.bytes),
        "a blob was stored although the upstream died"
    );

    proxy.set_mode(Mode::Pass);
    let r = get(&url, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.body == layer.bytes, "bytes after the upstream recovered");
    assert_eq!(
        r.x_cache(),
        "MISS",
        "the cut fetch left nothing in the store"
    );
    let r = get(&url, &[]).await;
    assert_eq!(r.x_cache(), "HIT");
    assert!(r.body == layer.bytes);
}

#[tokio::test(flavor = "multi_thread")]
async fn client_hanging_up_does_not_cancel_the_fetch() {
    let registry = Registry::start(RegistryAuth::None);
    let proxy = FaultProxy::start(registry.addr());
    let ferry = FerryBuilder::new()
        .upstream(Upstream::local(&proxy.url()))
        .start();
    let img = push_image(&registry, "team/app", "v1", &[8 << 20]);
    let layer = img.largest_layer().clone();
    let url = blob_url(&ferry, "team/app", &layer.digest);

    // ~2 s for the whole blob, so the client leaves long before the end.
    proxy.set_mode(Mode::Throttle(4 << 20));
    {
        let mut resp = client().get(&url).send().await.expect("GET blob");
        assert_eq!(resp.status(), 200);
        let mut got = 0;
        while got < 64 * 1024 {
            match resp.chunk().await.expect("first chunks") {
                Some(c) => got += c.len(),
                None => panic!("blob ended after {got} bytes"),
            }
        }
        // Dropping the response closes the connection.
    }

    // The fetch goes on without the client and lands in the store.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let r = get(&url, &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.body == layer.bytes, "bytes while the fetch is on");
        match r.x_cache() {
            "HIT" => break,
            "JOINED" if Instant::now() < deadline => continue,
            other => panic!(
                "X-Cache {other:?}: the abandoned fetch did not complete into the store \
                 (upstream GETs: {})",
                registry.blob_gets(&layer.digest)
            ),
        }
    }
    assert_eq!(
        registry.blob_gets(&layer.digest),
        1,
        "one upstream GET, kept going after the client left"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stalled_upstream_is_504_then_offline_until_it_answers() {
    // What Ferry waits on a stalled upstream; long enough that an answer that does not
    // wait on it stays well inside it on a loaded machine.
    const READ_TIMEOUT: Duration = Duration::from_secs(5);
    let registry = Registry::start(RegistryAuth::None);
    let proxy = FaultProxy::start(registry.addr());
    let mut ferry = FerryBuilder::new()
        .upstream(
            Upstream::local(&proxy.url())
                .raw("connect_timeout = \"2s\"")
                .raw(&format!("read_timeout = \"{}s\"", READ_TIMEOUT.as_secs())),
        )
        .start();
    let img = push_image(&registry, "team/app", "v1", &[1024]);
    proxy.set_mode(Mode::Hang);
    // The first request waits out the read timeout and gets 504; the upstream now
    // counts as offline.
    let started = Instant::now();
    let r = get(
        &manifest_url(&ferry, "team/app", "v1"),
        &[media::OCI_MANIFEST],
    )
    .await;
    let took = started.elapsed();
    assert_eq!(
        r.status,
        504,
        "GET against a stalled upstream: {}",
        r.text()
    );
    crate::harness::http::oci_error(&r.body);
    assert!(took < Duration::from_secs(30), "504 took {took:?}");
    eprintln!("stalled upstream → 504 after {took:?}");
    // Later requests for what is not cached do not wait on it: 503 at once, naming it.
    let started = Instant::now();
    let r = get(&blob_url(&ferry, "team/app", &img.layers[0].digest), &[]).await;
    let took = started.elapsed();
    let message = r.assert_error(503, "UNAVAILABLE");
    assert!(
        message.contains("local") && message.contains("offline"),
        "{message}"
    );
    // Asking the stalled upstream would take its whole read timeout.
    assert!(
        took < READ_TIMEOUT,
        "an offline upstream still made the client wait {took:?} (read_timeout {READ_TIMEOUT:?})"
    );
    assert_ferry_alive(&mut ferry).await;

    // Back up: the background probe notices within its backoff.
    proxy.set_mode(Mode::Pass);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = get(
            &manifest_url(&ferry, "team/app", "v1"),
            &[media::OCI_MANIFEST],
        )
        .await;
        if r.status == 200 {
            assert_eq!(r.body, img.manifest);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "upstream back, still {}: {}",
            r.status,
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cache_survives_restart_with_upstream_down() {
    let registry = Registry::start(RegistryAuth::None);
    let proxy = FaultProxy::start(registry.addr());
    let mut ferry = FerryBuilder::new()
        .upstream(Upstream::local(&proxy.url()))
        .start();
    let img = push_image(&registry, "team/app", "v1", &[500_000]);
    let layer = img.largest_layer().clone();
    let r = get(
        &manifest_url(&ferry, "team/app", &img.manifest_digest),
        &[media::OCI_MANIFEST],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = get(&blob_url(&ferry, "team/app", &layer.digest), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());

    // Upstream down: content addressed by digest is served from the store, before and
    // after a SIGKILL (what was served must have been durable), and after a restart.
    proxy.set_mode(Mode::Refuse);
    for moment in ["before restart", "after a crash", "after restart"] {
        match moment {
            "after restart" => ferry.restart(),
            "after a crash" => ferry.crash_restart(),
            _ => {}
        }
        let r = get(&blob_url(&ferry, "team/app", &layer.digest), &[]).await;
        assert_eq!(r.status, 200, "blob {moment}: {}", r.text());
        assert!(r.body == layer.bytes);
        assert_eq!(r.x_cache(), "HIT", "{moment}");
        let r = get(
            &manifest_url(&ferry, "team/app", &img.manifest_digest),
            &[media::OCI_MANIFEST],
        )
        .await;
        assert_eq!(r.status, 200, "manifest by digest {moment}: {}", r.text());
        assert_eq!(r.body, img.manifest);
        assert_eq!(r.x_cache(), "HIT", "{moment}");
    }
    assert_eq!(registry.blob_gets(&layer.digest), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_leaves_a_store_that_serves_correctly() {
    let (registry, mut ferry) = local_setup();
    let img = push_image(&registry, "team/app", "v1", &[500_000]);
    let layer = img.largest_layer().clone();
    let manifest = manifest_url(&ferry, "team/app", "v1");
    assert_eq!(get(&manifest, &[media::OCI_MANIFEST]).await.status, 200);
    assert_eq!(
        get(&blob_url(&ferry, "team/app", &layer.digest), &[])
            .await
            .status,
        200
    );
    // Cached means in the store: the verified file renamed into `blobs/`. (A client
    // gets the last byte, even an `X-Cache: HIT` for a download that verified, a
    // moment before that rename, and a crash in between rightly loses it.) The
    // index write and its flush come after the rename: a crash may land before them,
    // and the store must still serve the layer.
    let stored = stored_blob_path(&ferry, &layer.digest);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !stored.exists() {
        assert!(
            Instant::now() < deadline,
            "the layer is still not in the store 10 s after its pull"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // SIGKILL right after caching, and the upstream goes away: only the store can
    // answer now, so a store that lost what it had cached fails here (with the
    // upstream up, Ferry would quietly fetch it again).
    ferry.crash_restart();
    drop(registry);
    for (what, url, accept, expected) in [
        (
            "manifest by tag",
            manifest_url(&ferry, "team/app", "v1"),
            &[media::OCI_MANIFEST][..],
            &img.manifest,
        ),
        (
            "manifest by digest",
            manifest_url(&ferry, "team/app", &img.manifest_digest),
            &[media::OCI_MANIFEST][..],
            &img.manifest,
        ),
        (
            "layer",
            blob_url(&ferry, "team/app", &layer.digest),
            &[][..],
            &layer.bytes,
        ),
    ] {
        let r = get(&url, accept).await;
        assert_eq!(
            r.status,
            200,
            "{what} after a crash, upstream stopped: {}\n{}",
            r.text(),
            crate::harness::process::tail_str(&ferry.log_since_start(), 30)
        );
        assert!(
            &r.body == expected,
            "{what} after a crash, upstream stopped: {} bytes, not the cached ones",
            r.body.len()
        );
        assert_eq!(
            r.x_cache(),
            "HIT",
            "{what} after a crash, upstream stopped: served from the store"
        );
    }
}
