//! An edge site's day: the link to the upstream drops, and every node keeps pulling
//! what Ferry has cached, without waiting on the dead upstream: a link that refuses
//! connections, and one that goes silent (connections accepted, never answered).

use std::time::{Duration, Instant};

use crate::harness::containerd::{Containerd, mirror_hosts_toml};
use crate::harness::faults::{FaultProxy, Mode};
use crate::harness::ferry::{Ferry, FerryBuilder, LOCAL, LOCAL_REGISTRY, Upstream};
use crate::harness::http::media;
use crate::harness::images::{PushedImage, push_image, push_index};
use crate::harness::process::run_ok;
use crate::harness::registry::{Registry, RegistryAuth};
use crate::harness::skopeo;
use crate::support::{blob_url, get, manifest_url};

/// The upstream's `connect_timeout`: what revalidating a tag may wait on a dropped
/// link. Long enough that an answer which does not wait on the upstream stays well
/// inside it on a loaded machine, so "did not wait" can be told by the clock.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(8);
/// What a loaded machine may add to a wait bounded by a timeout.
const MARGIN: Duration = Duration::from_secs(5);

/// The upstream `local` at `url` with [`CONNECT_TIMEOUT`] and a 1 s `tag_ttl`.
fn edge_upstream(url: &str) -> Upstream {
    Upstream::local(url).tag_ttl("1s").raw(&format!(
        "connect_timeout = \"{}s\"",
        CONNECT_TIMEOUT.as_secs()
    ))
}

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
        .upstream(edge_upstream(&registry.url()))
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
        second <= first + CONNECT_TIMEOUT + MARGIN,
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
    // The first revalidation after the drop was STALE; the many requests since found
    // the upstream offline.
    assert_eq!(
        r.x_cache(),
        "OFFLINE",
        "X-Cache once the upstream counts as offline"
    );
    // What was never cached is a clear 503 naming the upstream, at once.
    let started = Instant::now();
    let r = crate::harness::block_on(get(
        &manifest_url(&ferry, "team/other", "v1"),
        &[media::OCI_MANIFEST],
    ));
    let message = r.assert_error(503, "UNAVAILABLE");
    assert!(message.contains("local"), "{message}");
    // Not waiting on the upstream: less than its connect timeout (a loaded machine
    // may still take a moment).
    assert!(
        started.elapsed() < CONNECT_TIMEOUT,
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

/// The link drops in `mode` after a tag was cached and its `tag_ttl` ran out; checks the
/// sequence the README's "Edge sites" section promises: the first request revalidates,
/// waits no longer than the `connect_timeout` (plus a margin for a loaded machine, far
/// below the `read_timeout`), and gets the cached manifest as `STALE` with the Warning;
/// the upstream is then offline (`offline_after_failures` = 1), so the next requests get
/// `OFFLINE` without waiting on it, blobs are still served, and what was never cached
/// is `503 UNAVAILABLE`.
fn link_drops_stale_then_offline(mode: Mode) {
    /// Long, so that only the `connect_timeout` can explain a quick revalidation.
    const READ_TIMEOUT: &str = "60s";
    let registry = Registry::start(RegistryAuth::None);
    let proxy = FaultProxy::start(registry.addr());
    let app = push_image(&registry, "team/app", "v1", &[300_000]);
    let ferry = FerryBuilder::new()
        .upstream(edge_upstream(&proxy.url()).raw(&format!("read_timeout = \"{READ_TIMEOUT}\"")))
        .start();
    let manifest = manifest_url(&ferry, "team/app", "v1");
    let fetch = |url: &str, accept: &[&str]| crate::harness::block_on(get(url, accept));
    let r = fetch(&manifest, &[media::OCI_MANIFEST]);
    assert_eq!(r.status, 200, "first pull: {}", r.text());
    for blob in app.blobs() {
        let r = fetch(&blob_url(&ferry, "team/app", &blob.digest), &[]);
        assert_eq!(r.status, 200, "first pull of {}: {}", blob.digest, r.text());
    }

    // The tag's TTL runs out, then the link drops.
    std::thread::sleep(Duration::from_millis(1100));
    proxy.set_mode(mode);
    let connections = proxy.connections();

    // Revalidation fails within the connect timeout: STALE, with the Warning.
    let started = Instant::now();
    let r = fetch(&manifest, &[media::OCI_MANIFEST]);
    let took = started.elapsed();
    eprintln!(
        "link dropped ({mode:?}): revalidation answered {} in {took:?}",
        r.x_cache()
    );
    assert_eq!(r.status, 200, "{mode:?}: cached tag: {}", r.text());
    assert_eq!(r.body, app.manifest, "{mode:?}: cached manifest bytes");
    assert!(
        proxy.connections() > connections,
        "{mode:?}: Ferry did not try the upstream to revalidate the tag past its TTL"
    );
    assert!(
        took <= CONNECT_TIMEOUT + MARGIN,
        "{mode:?}: revalidating took {took:?}; the README bounds it by the connect_timeout \
         ({CONNECT_TIMEOUT:?}; read_timeout {READ_TIMEOUT})\n{}",
        crate::harness::process::tail_str(&ferry.log(), 30)
    );
    assert_eq!(
        r.x_cache(),
        "STALE",
        "{mode:?}: first answer after the drop"
    );
    assert_eq!(
        r.header("warning"),
        "299 - \"served from cache: upstream local unreachable\"",
        "{mode:?}: Warning of the stale answer"
    );

    // Offline now: no more waiting on the upstream.
    let started = Instant::now();
    let r = fetch(&manifest, &[media::OCI_MANIFEST]);
    let took = started.elapsed();
    assert_eq!(r.status, 200, "{mode:?}: cached tag, offline: {}", r.text());
    assert_eq!(
        r.body, app.manifest,
        "{mode:?}: cached manifest bytes, offline"
    );
    assert_eq!(
        r.x_cache(),
        "OFFLINE",
        "{mode:?}: second answer after the drop"
    );
    assert!(
        r.header("warning")
            .contains("served from cache: upstream local unreachable"),
        "{mode:?}: Warning offline: {:?}",
        r.header("warning")
    );
    assert!(
        took < CONNECT_TIMEOUT,
        "{mode:?}: offline, the cached tag still waited {took:?}"
    );
    for blob in app.blobs() {
        let r = fetch(&blob_url(&ferry, "team/app", &blob.digest), &[]);
        assert_eq!(r.status, 200, "{mode:?}: cached blob offline: {}", r.text());
        assert!(r.body == blob.bytes, "{mode:?}: bytes of {}", blob.digest);
        assert_eq!(r.x_cache(), "HIT", "{mode:?}: cached blob offline");
    }
    let started = Instant::now();
    let r = fetch(
        &manifest_url(&ferry, "team/other", "v1"),
        &[media::OCI_MANIFEST],
    );
    let took = started.elapsed();
    let message = r.assert_error(503, "UNAVAILABLE");
    assert!(message.contains("local"), "{mode:?}: {message}");
    assert!(
        took < CONNECT_TIMEOUT,
        "{mode:?}: uncached request, upstream offline, waited {took:?}"
    );
}

#[test]
fn edge_link_refused_stale_within_connect_timeout_then_offline() {
    link_drops_stale_then_offline(Mode::Refuse);
}

/// Packets dropped: connections are accepted and never answered, so only Ferry's own
/// timeout ends the wait.
#[test]
fn edge_link_silent_stale_within_connect_timeout_then_offline() {
    link_drops_stale_then_offline(Mode::Hang);
}
