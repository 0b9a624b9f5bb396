//! An upstream that answers 500 or 503, and manifests cut off mid-body, made by a
//! [`FaultyFront`] in front of Distribution. The client gets a clear 5xx OCI error for
//! what is not cached, nothing is stored, and once the fault clears (and Ferry's
//! background probe has seen the upstream answer) the same pull works: a MISS, then a
//! HIT.

use std::time::{Duration, Instant};

use crate::harness::ferry::{Ferry, FerryBuilder, Upstream};
use crate::harness::front::{Fault, FaultyFront, Framing};
use crate::harness::http::{media, oci_error};
use crate::harness::images::{PushedImage, push_image_http};
use crate::harness::process::tail_str;
use crate::harness::registry::{Registry, RegistryAuth};
use crate::support::{
    Outcome, assert_fsck_clean, blob_url, fetch_outcome, files_under, manifest_url, store_holds,
};

/// How long the background probe may take to notice the upstream is back: probes
/// come 1 s, 2 s, 4 s, 8 s … after it went offline.
const RECOVERY: Duration = Duration::from_secs(20);

fn setup() -> (Registry, PushedImage, FaultyFront, Ferry) {
    let registry = Registry::start(RegistryAuth::None);
    let img = push_image_http(&registry, "team/app", "v1", &[512 << 10, 64 << 10]);
    let front = FaultyFront::start(registry.addr());
    let ferry = FerryBuilder::new()
        .upstream(Upstream::local(&front.url()))
        .start();
    (registry, img, front, ferry)
}

/// Asserts a 5xx OCI error naming the upstream; returns `(status, code, message)`.
fn assert_5xx(
    outcome: &Outcome,
    ferry: &Ferry,
    front: &FaultyFront,
    what: &str,
) -> (u16, String, String) {
    let Outcome::Status { status, body } = outcome else {
        panic!(
            "{what}: expected a 5xx OCI error, got {}\n--- front log ---\n{}\n--- ferry log ---\n{}",
            outcome.describe(),
            front.log_text(),
            tail_str(&ferry.log(), 30)
        );
    };
    assert!(
        (500..600).contains(status),
        "{what}: expected a 5xx, got {}",
        outcome.describe()
    );
    let (code, message) = oci_error(body);
    assert!(
        message.contains("local"),
        "{what}: the error should name the upstream: {code}: {message}"
    );
    eprintln!("{what}: {status} {code}: {message}");
    (*status, code, message)
}

/// Nothing under `blobs/` (no manifest, no blob), no unfinished download.
fn assert_nothing_stored(ferry: &Ferry, what: &str) {
    let files: Vec<_> = ["blobs", "staging", "partial"]
        .iter()
        .flat_map(|d| files_under(&ferry.storage_root().join(d)))
        .collect();
    assert!(files.is_empty(), "{what}: stored {files:?}");
}

/// Polls `url` until it answers 200 (≤ [`RECOVERY`]); returns the first 200 and how long
/// it took.
async fn wait_for_200(
    url: &str,
    accept: &[&str],
    ferry: &Ferry,
    front: &FaultyFront,
) -> (Outcome, Duration) {
    let started = Instant::now();
    loop {
        let outcome = fetch_outcome(url, accept).await;
        match &outcome {
            Outcome::Complete { .. } => return (outcome, started.elapsed()),
            Outcome::Status { status, .. } if *status >= 500 => {}
            other => panic!(
                "{url} while the upstream recovers: {}\n{}",
                other.describe(),
                tail_str(&ferry.log(), 30)
            ),
        }
        assert!(
            started.elapsed() < RECOVERY,
            "{url}: still {} {RECOVERY:?} after the fault cleared\n--- front log ---\n{}\n--- ferry log ---\n{}",
            outcome.describe(),
            front.log_text(),
            tail_str(&ferry.log(), 30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits (≤ [`RECOVERY`]) until Ferry asks the upstream again, probing with a blob
/// no one has (404 once it asks, 503 while it counts the upstream as offline), which
/// stores nothing.
async fn wait_until_online(ferry: &Ferry, front: &FaultyFront) {
    let url = blob_url(ferry, "team/app", &format!("sha256:{}", "0".repeat(64)));
    let started = Instant::now();
    loop {
        match fetch_outcome(&url, &[]).await {
            Outcome::Status { status: 404, .. } => return,
            Outcome::Status { status, .. } if status >= 500 => {}
            other => panic!("probe blob: {}", other.describe()),
        }
        assert!(
            started.elapsed() < RECOVERY,
            "upstream still offline {RECOVERY:?} after the fault\n--- front log ---\n{}\n--- ferry log ---\n{}",
            front.log_text(),
            tail_str(&ferry.log(), 30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn body_of(outcome: Outcome, what: &str) -> (Vec<u8>, String) {
    match outcome {
        Outcome::Complete { body, x_cache } => (body, x_cache),
        other => panic!("{what}: {}", other.describe()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_500_and_503_are_clear_errors_and_nothing_is_stored() {
    let (_registry, img, front, mut ferry) = setup();
    let manifest = manifest_url(&ferry, &img.repo, &img.tag);
    let accept = [media::OCI_MANIFEST];

    // 500 to everything, health probes included.
    front.arm(
        Fault::Status {
            status: 500,
            path_contains: String::new(),
        },
        None,
    );
    let first = fetch_outcome(&manifest, &accept).await;
    let (_, code, message) = assert_5xx(&first, &ferry, &front, "upstream 500, manifest by tag");
    assert_eq!(code, "UNAVAILABLE", "{message}");
    assert!(
        message.contains("500"),
        "the error says what the upstream answered: {message}"
    );
    // Now offline: uncached content is a 503 at once, without asking the upstream.
    // (Health probes of `/v2/` do not count: one may come meanwhile.)
    let asked = || front.log().iter().filter(|r| r.path != "/v2/").count();
    let asked_before = asked();
    let started = Instant::now();
    let again = fetch_outcome(&blob_url(&ferry, &img.repo, &img.config.digest), &[]).await;
    let took = started.elapsed();
    let (status, code, _) = assert_5xx(&again, &ferry, &front, "upstream 500, then a blob");
    assert_eq!((status, code.as_str()), (503, "UNAVAILABLE"));
    // Not asking is checked below; this bounds any other wait (a retry, a probe
    // awaited inline) by the upstream's connect timeout (3 s, the default) plus a
    // margin for a loaded machine.
    assert!(
        took < Duration::from_secs(3) + Duration::from_secs(5),
        "an offline upstream made the client wait {took:?}"
    );
    assert_eq!(
        asked(),
        asked_before,
        "Ferry asked an upstream it counts as offline"
    );
    assert_nothing_stored(&ferry, "after upstream 500s");

    // The probe gets the 500 too, so the upstream stays offline.
    // The first probe comes 1 s after; the rest is margin for a loaded machine.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !front
        .log()
        .iter()
        .any(|r| r.path == "/v2/" && r.status == 500)
    {
        assert!(
            Instant::now() < deadline,
            "no health probe within 15 s of the upstream going offline\n{}",
            front.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = fetch_outcome(&manifest, &accept).await;
    assert_5xx(
        &r,
        &ferry,
        &front,
        "upstream 500, after the probe also got 500",
    );

    // Fault cleared: the next probe sees it, and the pull works — a MISS, then a HIT.
    front.clear();
    let (outcome, took) = wait_for_200(&manifest, &accept, &ferry, &front).await;
    eprintln!("upstream 500 cleared: manifest served again after {took:?}");
    let (body, x_cache) = body_of(outcome, "manifest after the 500s");
    assert_eq!(body, img.manifest);
    assert_eq!(x_cache, "MISS", "nothing of the failed fetches was stored");
    assert!(
        ferry.log().contains("back online"),
        "Ferry logs that the upstream is back\n{}",
        tail_str(&ferry.log(), 20)
    );
    let (_, x_cache) = body_of(fetch_outcome(&manifest, &accept).await, "manifest again");
    assert_eq!(x_cache, "HIT");

    // 503 for blobs only: the config cannot be fetched; the cached manifest is still
    // served (by digest, from the store).
    front.arm(
        Fault::Status {
            status: 503,
            path_contains: "/blobs/".into(),
        },
        None,
    );
    let config_url = blob_url(&ferry, &img.repo, &img.config.digest);
    let outcome = fetch_outcome(&config_url, &[]).await;
    let (_, code, message) = assert_5xx(&outcome, &ferry, &front, "upstream 503, config blob");
    assert_eq!(code, "UNAVAILABLE", "{message}");
    assert!(message.contains("503"), "{message}");
    let (body, x_cache) = body_of(
        fetch_outcome(
            &manifest_url(&ferry, &img.repo, &img.manifest_digest),
            &accept,
        )
        .await,
        "cached manifest by digest while blobs get 503",
    );
    assert_eq!(
        (body.as_slice(), x_cache.as_str()),
        (img.manifest.as_slice(), "HIT")
    );
    assert!(
        !store_holds(&ferry.storage_root(), &img.config.bytes),
        "the config was stored although the upstream answered 503"
    );
    front.clear();
    let (outcome, took) = wait_for_200(&config_url, &[], &ferry, &front).await;
    eprintln!("upstream 503 on blobs cleared: config served after {took:?}");
    let (body, x_cache) = body_of(outcome, "config after the 503s");
    assert_eq!(body, img.config.bytes);
    assert_eq!(x_cache, "MISS");

    // One passing 503 on the layer (a blip): an error for that request; `/v2/` still
    // answers, so the upstream never counts as offline and the next try works.
    front.arm(
        Fault::Status {
            status: 503,
            path_contains: "/blobs/".into(),
        },
        Some(1),
    );
    let layer = img.largest_layer();
    let layer_url = blob_url(&ferry, &img.repo, &layer.digest);
    let outcome = fetch_outcome(&layer_url, &[]).await;
    assert_5xx(&outcome, &ferry, &front, "one upstream 503, layer");
    assert!(!front.armed(), "the one 503 was used");
    let (outcome, took) = wait_for_200(&layer_url, &[], &ferry, &front).await;
    eprintln!("one upstream 503: layer served after {took:?}");
    let (body, x_cache) = body_of(outcome, "layer after one 503");
    assert!(body == layer.bytes, "layer bytes");
    assert_eq!(x_cache, "MISS");
    let (body, x_cache) = body_of(fetch_outcome(&layer_url, &[]).await, "layer again");
    assert!(body == layer.bytes);
    assert_eq!(x_cache, "HIT");

    assert!(ferry.terminate(), "ferry exits on SIGTERM");
    assert_fsck_clean(&ferry, "after upstream 5xx");
}

#[tokio::test(flavor = "multi_thread")]
async fn manifest_cut_mid_body_is_an_error_and_nothing_is_stored() {
    let (_registry, img, front, mut ferry) = setup();
    let accept = [media::OCI_MANIFEST];
    let keep = img.manifest.len() / 2;
    let cases = [
        (Framing::Broken, false),
        (Framing::Broken, true),
        (Framing::Consistent, false),
        (Framing::Consistent, true),
        (Framing::ConsistentNoDigest, false),
        (Framing::ConsistentNoDigest, true),
    ];
    // The front really sends the head and `keep` bytes, then drops the connection
    // (checked directly, without Ferry).
    front.arm(
        Fault::TruncateManifest {
            keep,
            framing: Framing::Broken,
        },
        Some(1),
    );
    let direct = format!("{}/v2/{}/manifests/{}", front.url(), img.repo, img.tag);
    match fetch_outcome(&direct, &accept).await {
        Outcome::Cut { got, .. } => assert_eq!(got, keep, "bytes the front sent before the cut"),
        other => panic!("the front's broken framing: {}", other.describe()),
    }
    for (framing, by_digest) in cases {
        let reference = if by_digest {
            &img.manifest_digest
        } else {
            &img.tag
        };
        let what = format!(
            "manifest by {} cut to {keep} of {} bytes, {framing:?} framing",
            if by_digest { "digest" } else { "tag" },
            img.manifest.len()
        );
        wait_until_online(&ferry, &front).await;
        front.arm(Fault::TruncateManifest { keep, framing }, Some(1));
        let outcome = fetch_outcome(&manifest_url(&ferry, &img.repo, reference), &accept).await;
        assert!(
            !front.armed(),
            "{what}: Ferry did not fetch the manifest\n{}",
            front.log_text()
        );
        let (_, code, _) = assert_5xx(&outcome, &ferry, &front, &what);
        assert!(
            matches!(
                code.as_str(),
                "UNAVAILABLE" | "DIGEST_INVALID" | "MANIFEST_INVALID"
            ),
            "{what}: error code {code}"
        );
        ferry.assert_running();
        assert_nothing_stored(&ferry, &what);
        assert!(
            !store_holds(&ferry.storage_root(), &img.manifest[..keep]),
            "{what}: the cut manifest was stored"
        );
    }

    // Fault gone: a MISS, then HITs (by tag and by digest).
    wait_until_online(&ferry, &front).await;
    let url = manifest_url(&ferry, &img.repo, &img.tag);
    let (body, x_cache) = body_of(
        fetch_outcome(&url, &accept).await,
        "manifest after the cuts",
    );
    assert_eq!(body, img.manifest);
    assert_eq!(x_cache, "MISS", "nothing of the cut manifests was stored");
    let (body, x_cache) = body_of(fetch_outcome(&url, &accept).await, "manifest again");
    assert_eq!(
        (body.as_slice(), x_cache.as_str()),
        (img.manifest.as_slice(), "HIT")
    );
    let by_digest = manifest_url(&ferry, &img.repo, &img.manifest_digest);
    let (body, x_cache) = body_of(fetch_outcome(&by_digest, &accept).await, "by digest");
    assert_eq!(
        (body.as_slice(), x_cache.as_str()),
        (img.manifest.as_slice(), "HIT")
    );

    assert!(ferry.terminate(), "ferry exits on SIGTERM");
    assert_fsck_clean(&ferry, "after cut manifests");
}
