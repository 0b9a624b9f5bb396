//! skopeo, a real client, copying images through Ferry into `dir:` layouts.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::harness::ferry::{Ferry, LOCAL};
use crate::harness::http::media;
use crate::harness::images::{PushedImage, push_docker_v2s2, push_image, push_index};
use crate::harness::process::{require_binary, run_ok};
use crate::harness::registry::Registry;
use crate::harness::skopeo;
use crate::support::{get, local_setup, manifest_url};

/// `skopeo copy [--all] docker://<ferry>/local/<reference> dir:<dest>`.
fn copy_through_ferry(ferry: &Ferry, reference: &str, dest: &Path, all: bool) {
    let mut cmd = skopeo::copy();
    if all {
        cmd.arg("--all");
    }
    cmd.arg(format!("docker://{}/{LOCAL}/{reference}", ferry.addr()));
    cmd.arg(format!("dir:{}", dest.display()));
    run_ok(cmd, Duration::from_secs(120));
}

/// `skopeo inspect --raw docker://<host>/<reference>`.
fn inspect_raw(host_and_reference: &str) -> Vec<u8> {
    let mut cmd = Command::new(require_binary("skopeo", "skopeo"));
    cmd.args([
        "--insecure-policy",
        "inspect",
        "--raw",
        "--tls-verify=false",
        "--retry-times",
        "0",
    ]);
    cmd.arg(format!("docker://{host_and_reference}"));
    run_ok(cmd, Duration::from_secs(60)).stdout
}

/// Every blob of `img` is in `dir` with the right bytes.
fn assert_blobs_copied(dir: &Path, img: &PushedImage) {
    for blob in img.blobs() {
        let path = dir.join(crate::harness::digest_hex(&blob.digest));
        let bytes = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("skopeo did not write {} ({e})", path.display()));
        assert!(bytes == blob.bytes, "bytes of {}", blob.digest);
    }
}

/// Upstream blob GETs for every blob of `imgs`.
fn upstream_blob_gets(registry: &Registry, imgs: &[&PushedImage]) -> Vec<usize> {
    let log = registry.settled_access_log();
    imgs.iter()
        .flat_map(|i| i.blobs())
        .map(|b| {
            let path = format!("/blobs/{}", b.digest);
            log.iter()
                .filter(|e| e.method == "GET" && e.path.contains(&path))
                .count()
        })
        .collect()
}

/// Copies `reference` twice through Ferry; the second copy must not fetch any blob
/// from the upstream again.
fn copy_twice(
    ferry: &Ferry,
    registry: &Registry,
    reference: &str,
    all: bool,
    imgs: &[&PushedImage],
) -> [tempfile::TempDir; 2] {
    let before = upstream_blob_gets(registry, imgs);
    let first = crate::harness::temp_dir("skopeo-dir");
    copy_through_ferry(ferry, reference, &first.path().join("img"), all);
    let after_first = upstream_blob_gets(registry, imgs);
    let fetched: Vec<usize> = after_first
        .iter()
        .zip(&before)
        .map(|(a, b)| a - b)
        .collect();
    assert!(
        fetched.iter().all(|&n| n == 1),
        "each blob fetched from the upstream once by the first copy: {fetched:?}"
    );
    let second = crate::harness::temp_dir("skopeo-dir");
    copy_through_ferry(ferry, reference, &second.path().join("img"), all);
    assert_eq!(
        upstream_blob_gets(registry, imgs),
        after_first,
        "the second copy was served from Ferry's cache"
    );
    [first, second]
}

#[tokio::test(flavor = "multi_thread")]
async fn skopeo_copies_single_platform_oci_image() {
    let (registry, ferry) = local_setup();
    let img = push_image(&registry, "team/app", "v1", &[1 << 20, 300_000]);
    let dirs = copy_twice(&ferry, &registry, "team/app:v1", false, &[&img]);
    for d in &dirs {
        let dir = d.path().join("img");
        assert_eq!(
            std::fs::read(dir.join("manifest.json")).unwrap(),
            img.manifest
        );
        assert_blobs_copied(&dir, &img);
    }
    assert_eq!(
        inspect_raw(&format!("{}/{LOCAL}/team/app:v1", ferry.addr())),
        inspect_raw(&format!("{}/team/app:v1", registry.addr())),
        "skopeo inspect --raw: Ferry and the upstream agree"
    );
    let r = get(
        &manifest_url(&ferry, "team/app", "v1"),
        &[media::OCI_MANIFEST],
    )
    .await;
    assert_eq!(r.x_cache(), "HIT");
}

#[tokio::test(flavor = "multi_thread")]
async fn skopeo_copies_docker_schema2_image() {
    let (registry, ferry) = local_setup();
    let img = push_docker_v2s2(&registry, "team/docker", "v1", &[1 << 20]);
    let dirs = copy_twice(&ferry, &registry, "team/docker:v1", false, &[&img]);
    for d in &dirs {
        let dir = d.path().join("img");
        assert_eq!(
            std::fs::read(dir.join("manifest.json")).unwrap(),
            img.manifest
        );
        assert_blobs_copied(&dir, &img);
    }
    assert_eq!(
        inspect_raw(&format!("{}/{LOCAL}/team/docker:v1", ferry.addr())),
        img.manifest,
    );
    let r = get(
        &manifest_url(&ferry, "team/docker", "v1"),
        &[media::DOCKER_MANIFEST],
    )
    .await;
    assert_eq!(r.header("content-type"), media::DOCKER_MANIFEST);
    assert_eq!(r.x_cache(), "HIT");
}

#[tokio::test(flavor = "multi_thread")]
async fn skopeo_copies_multi_platform_index_with_all() {
    let (registry, ferry) = local_setup();
    let index = push_index(&registry, "team/multi", "v1", &[500_000]);
    let imgs: Vec<&PushedImage> = index.images.iter().collect();
    let dirs = copy_twice(&ferry, &registry, "team/multi:v1", true, &imgs);
    for d in &dirs {
        let dir = d.path().join("img");
        assert_eq!(
            std::fs::read(dir.join("manifest.json")).unwrap(),
            index.bytes
        );
        for img in &index.images {
            let per_instance = dir.join(format!(
                "{}.manifest.json",
                crate::harness::digest_hex(&img.manifest_digest)
            ));
            assert_eq!(
                std::fs::read(&per_instance)
                    .unwrap_or_else(|e| panic!("{}: {e}", per_instance.display())),
                img.manifest,
                "{:?} manifest",
                img.platform
            );
            assert_blobs_copied(&dir, img);
        }
    }
    assert_eq!(
        inspect_raw(&format!("{}/{LOCAL}/team/multi:v1", ferry.addr())),
        index.bytes,
    );
    let r = get(
        &manifest_url(&ferry, "team/multi", "v1"),
        &[media::OCI_INDEX],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), media::OCI_INDEX);
    assert_eq!(r.header("docker-content-digest"), index.digest);
    assert_eq!(r.x_cache(), "HIT");
}
