//! README: `[[pin]]` … `refresh = "6h"  # refetched (tags revalidated) this often` and
//! `platform = "linux/amd64"`. No client pulls in these tests: what is in the store is
//! the pin's doing.

use std::time::{Duration, Instant};

use crate::harness::ferry::{Ferry, FerryBuilder, LOCAL, Upstream};
use crate::harness::images::{push_image_http, push_index};
use crate::harness::registry::{Registry, RegistryAuth};

use super::stored;

/// Waits up to `secs` for `cond`, panicking with `what` and the log tail.
fn wait_until(ferry: &Ferry, secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "{what} within {secs} s\n{}",
            crate::harness::process::tail_str(&ferry.log(), 30)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The pinned tag moves upstream; within `refresh` (+ `tag_ttl`, as the refresh pulls
/// through Ferry's own cache) the new image is in the store, with no client asking.
#[test]
fn a_pinned_tag_that_moves_upstream_is_refetched_every_refresh() {
    let registry = Registry::start(RegistryAuth::None);
    let v1 = push_image_http(&registry, "team/app", "stable", &[20_000]);
    let ferry = FerryBuilder::new()
        .upstream(Upstream::local(&registry.url()).tag_ttl("1s"))
        .extra_toml(&format!(
            "[[pin]]\nimages = [\"{LOCAL}/team/app:stable\"]\nrefresh = \"2s\"\n"
        ))
        .start();
    wait_until(
        &ferry,
        20,
        "the pinned image was not fetched at start",
        || stored(&ferry, &v1.largest_layer().digest),
    );

    let v2 = push_image_http(&registry, "team/app", "stable", &[20_000]);
    assert_ne!(v1.manifest_digest, v2.manifest_digest);
    let moved = Instant::now();
    // 2 s refresh + 1 s tag_ttl, with a wide margin for a loaded machine.
    wait_until(
        &ferry,
        20,
        "the moved tag's new layer was not fetched",
        || stored(&ferry, &v2.largest_layer().digest),
    );
    eprintln!(
        "the pin refetched the moved tag {:?} after the push",
        moved.elapsed()
    );
    assert!(
        registry.blob_gets(&v2.largest_layer().digest) == 1,
        "fetched once from the upstream"
    );
}

/// `platform = "linux/arm64"` on an index: the pin fetches that platform's image and
/// nothing of the other.
#[test]
fn a_pin_with_a_platform_fetches_only_that_platform() {
    let registry = Registry::start(RegistryAuth::None);
    let index = push_index(&registry, "team/multi", "v1", &[30_000]);
    let (amd64, arm64) = (&index.images[0], &index.images[1]);
    assert_eq!(arm64.platform.1, "arm64");
    let ferry = FerryBuilder::new()
        .upstream(Upstream::local(&registry.url()))
        .extra_toml(&format!(
            "[[pin]]\nimages = [\"{LOCAL}/team/multi:v1\"]\nplatform = \"linux/arm64\"\nrefresh = \"1h\"\n"
        ))
        .start();
    wait_until(&ferry, 20, "the pinned platform was not fetched", || {
        arm64.blobs().iter().all(|b| stored(&ferry, &b.digest))
    });
    // The pass that fetched arm64 is over once it logs the image as prefetched.
    assert!(
        ferry
            .wait_for_log(0, &["prefetched", "team/multi"], Duration::from_secs(20))
            .is_some(),
        "the pin's pass did not finish\n{}",
        ferry.log()
    );
    for blob in amd64.blobs() {
        assert!(
            !stored(&ferry, &blob.digest),
            "amd64 blob {} stored",
            blob.digest
        );
        assert_eq!(
            registry.blob_gets(&blob.digest),
            0,
            "amd64 blob {} fetched",
            blob.digest
        );
    }
}
