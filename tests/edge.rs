//! An edge site's day: the link to the upstream drops, and every node keeps pulling
//! what Ferry has cached, without waiting on the dead upstream.

use std::time::{Duration, Instant};

use crate::harness::containerd::{Containerd, mirror_hosts_toml};
use crate::harness::ferry::{Ferry, FerryBuilder, LOCAL, LOCAL_REGISTRY, Upstream};
use crate::harness::http::media;
use crate::harness::images::{PushedImage, push_image, push_index};
use crate::harness::process::run_ok;
use crate::harness::registry::{Registry, RegistryAuth};
use crate::harness::skopeo;
use crate::support::{get, manifest_url};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A fresh node (containerd) mirroring the local registry through Ferry.
fn node(ferry: &Ferry) -> (Containerd, std::path::PathBuf) {
    let ctd = Containerd::start();
    let hosts = ctd.hosts_dir();
    ctd.write_hosts_toml(
        &hosts,
        LOCAL_REGISTRY,
        &mirror_hosts_toml(&format!("http://{LOCAL_REGISTRY}"), &ferry.url()),
    );
    (ctd, hosts)
}

/// Pulls every image once with `ctr` on a new node and once with skopeo (by tag and by
/// digest), checks the bytes, and returns how long it all took.
fn pull_everything(ferry: &Ferry, images: &[&PushedImage]) -> Duration {
    let started = Instant::now();
    let (ctd, hosts) = node(ferry);
    for img in images {
        let reference = format!("{LOCAL_REGISTRY}/{}:{}", img.repo, img.tag);
        let out = ctd.pull(&hosts, &reference, &[]);
        assert!(
            out.status.success(),
            "ctr pull {reference}: {}\n--- ferry log ---\n{}",
            String::from_utf8_lossy(&out.stderr),
            crate::harness::process::tail_str(&ferry.log(), 30)
        );
        for blob in img.blobs() {
            assert!(
                ctd.content(&blob.digest) == blob.bytes,
                "ctr: bytes of {}",
                blob.digest
            );
        }
        for source in [
            format!("{}:{}", img.repo, img.tag),
            format!("{}@{}", img.repo, img.manifest_digest),
        ] {
            let dest = tempfile::tempdir().unwrap();
            let mut cmd = skopeo::copy();
            cmd.arg(format!("docker://{}/{LOCAL}/{source}", ferry.addr()))
                .arg(format!("dir:{}", dest.path().display()));
            run_ok(cmd, Duration::from_secs(120));
            for blob in img.blobs() {
                let path = dest.path().join(crate::harness::digest_hex(&blob.digest));
                assert!(
                    std::fs::read(&path).unwrap() == blob.bytes,
                    "skopeo {source}: bytes of {}",
                    blob.digest
                );
            }
        }
    }
    started.elapsed()
}

#[test]
fn edge_day_upstream_stopped_everything_cached_still_pulls() {
    let registry = Registry::start(RegistryAuth::None);
    let app = push_image(&registry, "team/app", "v1", &[1 << 20, 300_000]);
    let index = push_index(&registry, "team/multi", "v1", &[400_000]);
    let amd64 = index.images[0].clone();
    let amd64 = PushedImage {
        tag: "v1".into(),
        repo: "team/multi".into(),
        ..amd64
    };
    let ferry = FerryBuilder::new()
        .upstream(Upstream::local(&registry.url()).tag_ttl("1s"))
        .start();

    let first = pull_everything(&ferry, &[&app]);
    // The index pulled by ctr: the node's platform (linux/amd64) of it.
    let (ctd, hosts) = node(&ferry);
    let out = ctd.pull(
        &hosts,
        &format!("{LOCAL_REGISTRY}/team/multi:v1"),
        &["--platform", "linux/amd64"],
    );
    assert!(
        out.status.success(),
        "ctr pull of the index: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(ctd);

    // The link drops: the upstream's process is gone, and every cached tag is past
    // its TTL, so each tag request tries to revalidate.
    drop(registry);
    std::thread::sleep(Duration::from_millis(1100));

    let second = pull_everything(&ferry, &[&app]);
    let (ctd, hosts) = node(&ferry);
    let out = ctd.pull(
        &hosts,
        &format!("{LOCAL_REGISTRY}/team/multi:v1"),
        &["--platform", "linux/amd64"],
    );
    assert!(
        out.status.success(),
        "ctr pull of the index, upstream down: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for blob in amd64.blobs() {
        assert!(
            ctd.content(&blob.digest) == blob.bytes,
            "index platform: bytes of {}",
            blob.digest
        );
    }
    eprintln!(
        "edge day: first pull (upstream up) {first:?}, second pull (upstream stopped) {second:?}"
    );
    assert!(
        second <= first + CONNECT_TIMEOUT + Duration::from_secs(1),
        "with the upstream down the pull took {second:?}, the first {first:?}: Ferry waited on the dead upstream"
    );

    // Tag answers say they are served from the cache, and how.
    let r = crate::harness::block_on(get(
        &manifest_url(&ferry, "team/app", "v1"),
        &[media::OCI_MANIFEST],
    ));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, app.manifest);
    assert!(
        r.header("warning")
            .contains("served from cache: upstream local unreachable"),
        "Warning: {:?}",
        r.header("warning")
    );
    assert!(
        matches!(r.x_cache(), "OFFLINE" | "STALE"),
        "X-Cache {}",
        r.x_cache()
    );
    // What was never cached is a clear 503 naming the upstream, at once.
    let started = Instant::now();
    let r = crate::harness::block_on(get(
        &manifest_url(&ferry, "team/other", "v1"),
        &[media::OCI_MANIFEST],
    ));
    let message = r.assert_error(503, "UNAVAILABLE");
    assert!(message.contains("local"), "{message}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "uncached request waited {:?}",
        started.elapsed()
    );
    // Tag lists too.
    let r = crate::harness::block_on(get(
        &format!("{}/v2/{LOCAL}/team/app/tags/list", ferry.url()),
        &[],
    ));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("\"v1\""), "{}", r.text());
}
