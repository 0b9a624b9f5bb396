//! README (Edge sites): "`max_stale = "7d"` bounds how long past `tag_ttl` a tag may
//! be served that way (default: as long as it is cached)". With the upstream gone, a
//! cached tag is served (`STALE`/`OFFLINE`, with the Warning) until `tag_ttl +
//! max_stale`, then refused as unavailable; the same manifest by digest still pulls.

use std::time::{Duration, Instant};

use crate::harness::ferry::{FerryBuilder, Upstream};
use crate::harness::http::media;
use crate::harness::images::push_image_http;
use crate::harness::registry::{Registry, RegistryAuth};
use crate::harness::sha256_digest;
use crate::support::{get, manifest_url};

#[tokio::test(flavor = "multi_thread")]
async fn a_tag_past_max_stale_is_refused_while_its_digest_still_pulls() {
    // tag_ttl 1 s + max_stale 4 s: served offline until 5 s after the fetch.
    let registry = Registry::start(RegistryAuth::None);
    let img = push_image_http(&registry, "team/app", "v1", &[10_000]);
    let ferry = FerryBuilder::new()
        .upstream(
            Upstream::local(&registry.url())
                .tag_ttl("1s")
                .raw("max_stale = \"4s\""),
        )
        .start();
    let by_tag = manifest_url(&ferry, &img.repo, &img.tag);
    let by_digest = manifest_url(&ferry, &img.repo, &img.manifest_digest);
    let before = Instant::now();
    let r = get(&by_tag, &[media::OCI_MANIFEST]).await;
    let fetched = Instant::now();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.x_cache(), "MISS");
    drop(registry);

    // Past tag_ttl, well inside max_stale: served from the cache, saying so.
    tokio::time::sleep_until((before + Duration::from_millis(2100)).into()).await;
    let r = get(&by_tag, &[media::OCI_MANIFEST]).await;
    let at = before.elapsed();
    assert_eq!(
        r.status,
        200,
        "inside max_stale ({at:?} after the fetch): {}",
        r.text()
    );
    assert_eq!(sha256_digest(&r.body), img.manifest_digest);
    assert!(
        matches!(r.x_cache(), "STALE" | "OFFLINE"),
        "X-Cache {}",
        r.x_cache()
    );
    assert!(
        r.header("warning").starts_with("299 "),
        "Warning: {:?}",
        r.header("warning")
    );

    // Well past tag_ttl + max_stale (the store counts whole seconds): refused.
    tokio::time::sleep_until((fetched + Duration::from_secs(7)).into()).await;
    let r = get(&by_tag, &[media::OCI_MANIFEST]).await;
    let message = r.assert_error(503, "UNAVAILABLE");
    assert!(message.contains("local"), "names the upstream: {message}");

    // By digest it is the same content, and content by digest never goes stale.
    let r = get(&by_digest, &[media::OCI_MANIFEST]).await;
    assert_eq!(r.status, 200, "by digest: {}", r.text());
    assert_eq!(sha256_digest(&r.body), img.manifest_digest);
}
