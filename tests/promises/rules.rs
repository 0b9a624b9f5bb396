//! README: "Cache rules follow ACR's: static rules (`docker.io/library/ubuntu` →
//! `ubuntu`) … Docker Hub sources get `library/` … A rule may also point at a non-ACR
//! upstream." A static rule end to end: every way a client names
//! `docker.io/library/ubuntu` is served from the rule's target repository upstream,
//! and nothing beside the exact source (a sibling, a sub-repository) is.

use crate::harness::ferry::{FerryBuilder, Upstream};
use crate::harness::http::media;
use crate::harness::images::push_image_http;
use crate::harness::registry::{Registry, RegistryAuth};
use crate::harness::sha256_digest;
use crate::support::get;

const RULE: &str = r#"[[rule]]
name = "ubuntu"
source = "docker.io/library/ubuntu"
target = "mirrored/ubuntu"
upstream = "local"
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_static_rule_maps_every_form_of_its_source_to_the_target_repository() {
    let registry = Registry::start(RegistryAuth::None);
    let img = push_image_http(&registry, "mirrored/ubuntu", "24.04", &[50_000]);
    // Same repository names under the target's parent: a rule that matched more than
    // its one source would find these.
    push_image_http(&registry, "mirrored/debian", "24.04", &[1_000]);
    push_image_http(&registry, "mirrored/ubuntu/sub", "24.04", &[1_000]);
    let seeded = registry.settled_access_log().len();
    let ferry = FerryBuilder::new()
        .upstream(Upstream::local(&registry.url()))
        .extra_toml(RULE)
        .start();
    let base = ferry.url();

    let forms = [
        (
            "containerd, ?ns=",
            format!("{base}/v2/library/ubuntu/manifests/24.04?ns=docker.io"),
        ),
        (
            "Docker Hub short name, ?ns=",
            format!("{base}/v2/ubuntu/manifests/24.04?ns=docker.io"),
        ),
        (
            "registry as first path component",
            format!("{base}/v2/docker.io/library/ubuntu/manifests/24.04"),
        ),
        (
            "registry and short name",
            format!("{base}/v2/docker.io/ubuntu/manifests/24.04"),
        ),
    ];
    let mut caches = Vec::new();
    for (what, url) in &forms {
        let r = get(url, &[media::OCI_MANIFEST]).await;
        assert_eq!(r.status, 200, "{what}: {}", r.text());
        assert_eq!(sha256_digest(&r.body), img.manifest_digest, "{what}: bytes");
        caches.push(r.x_cache().to_owned());
    }
    assert_eq!(caches[0], "MISS");
    assert!(
        caches[1..].iter().all(|c| c == "HIT"),
        "one cache entry for every form: {caches:?}"
    );
    for blob in img.blobs() {
        let r = get(
            &format!("{base}/v2/docker.io/library/ubuntu/blobs/{}", blob.digest),
            &[],
        )
        .await;
        assert_eq!(r.status, 200, "blob {}: {}", blob.digest, r.text());
        assert_eq!(sha256_digest(&r.body), blob.digest);
    }
    let log = registry.settled_access_log();
    let after = &log[seeded..];
    assert_eq!(
        after
            .iter()
            .filter(|e| e.method == "GET" && e.path == "/v2/mirrored/ubuntu/manifests/24.04")
            .count(),
        1,
        "the upstream served the target repository once: {after:#?}"
    );
    assert!(
        after.iter().all(|e| !e.path.contains("library")),
        "the source name never reached the upstream: {after:#?}"
    );

    // Not the source: a sibling and a sub-repository of it are not the rule's.
    for url in [
        format!("{base}/v2/docker.io/library/debian/manifests/24.04"),
        format!("{base}/v2/docker.io/library/ubuntu/sub/manifests/24.04"),
    ] {
        let r = get(&url, &[media::OCI_MANIFEST]).await;
        assert_ne!(
            r.status,
            200,
            "{url} is not the rule's source: {}",
            r.text()
        );
    }
    let log = registry.settled_access_log();
    assert!(
        log[seeded..]
            .iter()
            .all(|e| !e.path.contains("mirrored/debian") && !e.path.contains("mirrored/ubuntu/sub")),
        "a request beside the static source reached its target's neighbours"
    );
}
