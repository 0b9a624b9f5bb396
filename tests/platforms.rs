//! Pulling one platform of a multi-platform index fetches only that platform from the
//! upstream: nothing of the other platform (manifest, config, layers) is downloaded.

use std::process::Command;
use std::time::Duration;

use crate::harness::containerd::{Containerd, mirror_hosts_toml};
use crate::harness::ferry::{LOCAL, LOCAL_REGISTRY};
use crate::harness::images::{PushedImage, push_index};
use crate::harness::process::{require_binary, run_ok, tail_str};
use crate::harness::registry::Registry;
use crate::support::local_setup;

/// Upstream GETs per blob of `img`, and of its manifest by digest, as
/// `[(what, count)]`, counting only access-log entries from `since` on (seeding reads
/// manifests back, and those requests are not Ferry's).
fn upstream_gets(registry: &Registry, since: usize, img: &PushedImage) -> Vec<(String, usize)> {
    let log = registry.settled_access_log();
    let count = |path: String| {
        log[since.min(log.len())..]
            .iter()
            .filter(|e| e.method == "GET" && e.path.contains(&path))
            .count()
    };
    let mut out = vec![(
        format!("manifest {}", img.manifest_digest),
        count(format!("/manifests/{}", img.manifest_digest)),
    )];
    for b in img.blobs() {
        out.push((
            format!("{} {}", b.media_type, b.digest),
            count(format!("/blobs/{}", b.digest)),
        ));
    }
    out
}

/// Asserts every blob of `img` was fetched from the upstream exactly once.
fn assert_fetched_once(registry: &Registry, since: usize, img: &PushedImage) {
    let gets = upstream_gets(registry, since, img);
    for (what, n) in &gets[1..] {
        assert_eq!(
            *n, 1,
            "{:?}: upstream GETs of {what} (all: {gets:?})",
            img.platform
        );
    }
}

/// Asserts nothing of `img` (manifest, config, layers) was fetched from the upstream.
fn assert_untouched(registry: &Registry, since: usize, img: &PushedImage, asked_for: &str) {
    let gets = upstream_gets(registry, since, img);
    assert!(
        gets.iter().all(|(_, n)| *n == 0),
        "{asked_for} was asked for, yet the upstream served parts of {:?}: {gets:?}",
        img.platform
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn skopeo_pulling_arm64_fetches_nothing_of_amd64() {
    let (registry, ferry) = local_setup();
    let index = push_index(&registry, "team/multi", "v1", &[400_000, 150_000]);
    let (amd64, arm64) = (&index.images[0], &index.images[1]);
    assert_eq!(arm64.platform.1, "arm64");
    let seeded = registry.settled_access_log().len();

    let dest = crate::harness::temp_dir("skopeo-dir");
    let dir = dest.path().join("img");
    let mut cmd = Command::new(require_binary("skopeo", "skopeo"));
    cmd.args([
        "--override-os",
        "linux",
        "--override-arch",
        "arm64",
        "--insecure-policy",
        "copy",
        "--src-tls-verify=false",
        "--retry-times",
        "0",
    ])
    .arg(format!("docker://{}/{LOCAL}/team/multi:v1", ferry.addr()))
    .arg(format!("dir:{}", dir.display()));
    run_ok(cmd, Duration::from_secs(60));

    assert_eq!(
        std::fs::read(dir.join("manifest.json")).expect("skopeo wrote manifest.json"),
        arm64.manifest,
        "skopeo chose the arm64 manifest"
    );
    for b in arm64.blobs() {
        let path = dir.join(crate::harness::digest_hex(&b.digest));
        assert!(
            std::fs::read(&path).is_ok_and(|bytes| bytes == b.bytes),
            "arm64 blob {} copied intact",
            b.digest
        );
    }
    assert_fetched_once(&registry, seeded, arm64);
    assert_untouched(&registry, seeded, amd64, "linux/arm64");
}

#[test]
fn ctr_pulling_the_node_platform_fetches_nothing_of_arm64() {
    let (registry, ferry) = local_setup();
    let index = push_index(&registry, "team/multi", "v1", &[400_000, 150_000]);
    let (amd64, arm64) = (&index.images[0], &index.images[1]);
    assert_eq!(amd64.platform.1, "amd64");
    let seeded = registry.settled_access_log().len();

    let ctd = Containerd::start();
    let hosts = ctd.hosts_dir();
    ctd.write_hosts_toml(
        &hosts,
        LOCAL_REGISTRY,
        &mirror_hosts_toml(&format!("http://{LOCAL_REGISTRY}"), &ferry.url()),
    );
    let reference = format!("{LOCAL_REGISTRY}/team/multi:v1");
    // What a linux/amd64 node pulls (named, so the test does not depend on the host).
    let out = ctd.pull(&hosts, &reference, &["--platform", "linux/amd64"]);
    assert!(
        out.status.success(),
        "ctr pull {reference} failed ({})\nstderr:\n{}\n--- ferry log (tail) ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        tail_str(&ferry.log(), 40),
    );
    for b in amd64.blobs() {
        assert!(
            ctd.has_content(&b.digest) && ctd.content(&b.digest) == b.bytes,
            "containerd holds amd64 blob {} intact",
            b.digest
        );
    }
    assert_fetched_once(&registry, seeded, amd64);
    assert_untouched(&registry, seeded, arm64, "linux/amd64");
}
