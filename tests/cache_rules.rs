//! Cache rules end to end, the AKS way: `mcr.microsoft.com/*` is served from the
//! repository namespace `aks-managed-repository/*` of an upstream. Every form a client
//! may use to name the image reaches the same upstream repository (and the same cache
//! entry), and containerd pulls `mcr.microsoft.com/…` through `hosts.toml` with only
//! Ferry able to answer.

use crate::harness::containerd::{Containerd, mirror_hosts_toml};
use crate::harness::ferry::{FerryBuilder, LOCAL_REGISTRY, Upstream};
use crate::harness::http::media;
use crate::harness::images::push_image;
use crate::harness::process::{free_port, tail_str};
use crate::harness::registry::{Registry, RegistryAuth};
use crate::support::get;

const MCR: &str = "mcr.microsoft.com";
/// Where the rule sends `mcr.microsoft.com/<path>` at the upstream.
const TARGET_REPO: &str = "aks-managed-repository/oss/kubernetes/pause";

const RULE: &str = r#"[[rule]]
name = "aks-managed-mcr"
source = "mcr.microsoft.com/*"
target = "aks-managed-repository/*"
upstream = "local"
"#;

#[tokio::test(flavor = "multi_thread")]
async fn mcr_rule_routes_every_request_form_and_ctr_pulls() {
    let registry = Registry::start(RegistryAuth::None);
    let img = push_image(&registry, TARGET_REPO, "3.6", &[300_000]);
    // Seeding reads the manifest back; count only what comes after.
    let seeded = registry.settled_access_log().len();
    let upstream_gets = |path: String| {
        registry.settled_access_log()[seeded..]
            .iter()
            .filter(|e| e.method == "GET" && e.path.contains(&path))
            .count()
    };
    let ferry = FerryBuilder::new()
        .upstream(Upstream::local(&registry.url()))
        .extra_toml(RULE)
        .start();
    let base = ferry.url();

    let forms = [
        (
            "?ns= (containerd mirror)",
            format!("{base}/v2/oss/kubernetes/pause/manifests/3.6?ns={MCR}"),
        ),
        (
            "registry as first path component",
            format!("{base}/v2/{MCR}/oss/kubernetes/pause/manifests/3.6"),
        ),
        (
            "AKS bootstrap form (target path with ?ns=)",
            format!("{base}/v2/{TARGET_REPO}/manifests/3.6?ns={MCR}"),
        ),
    ];
    let mut caches = Vec::new();
    for (what, url) in &forms {
        let r = get(url, &[media::OCI_MANIFEST, media::OCI_INDEX]).await;
        assert_eq!(r.status, 200, "{what}: GET {url}: {}", r.text());
        assert_eq!(r.body, img.manifest, "{what}: the pushed manifest");
        assert_eq!(
            r.header("docker-content-digest"),
            img.manifest_digest,
            "{what}"
        );
        caches.push(r.x_cache().to_owned());
    }
    // One upstream repository, so one cache entry: only the first form went upstream.
    assert_eq!(
        caches,
        ["MISS", "HIT", "HIT"],
        "X-Cache of the three forms, in order"
    );
    assert_eq!(
        upstream_gets(format!("/v2/{TARGET_REPO}/manifests/3.6")),
        1,
        "the upstream served the tag once"
    );

    // Blobs follow the rule too.
    let layer = &img.layers[0];
    let r = get(
        &format!(
            "{base}/v2/{MCR}/oss/kubernetes/pause/blobs/{}",
            layer.digest
        ),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "blob through the rule: {}", r.text());
    assert!(r.body == layer.bytes, "blob bytes through the rule");

    // Control: the same path on the upstream itself, without the rule, does not exist,
    // so the answers above can only have come through the rule.
    let r = get(
        &format!("{base}/v2/oss/kubernetes/pause/manifests/3.6?ns={LOCAL_REGISTRY}"),
        &[media::OCI_MANIFEST],
    )
    .await;
    assert_eq!(
        r.status,
        404,
        "oss/kubernetes/pause outside the rule: {}",
        r.text()
    );

    // A node whose hosts.toml sends mcr.microsoft.com to Ferry; the `server` fallback is
    // a closed port, so only Ferry can serve the pull.
    let ctd = Containerd::start();
    let hosts = ctd.hosts_dir();
    let closed = format!("http://127.0.0.1:{}", free_port());
    ctd.write_hosts_toml(&hosts, MCR, &mirror_hosts_toml(&closed, &ferry.url()));
    let reference = format!("{MCR}/oss/kubernetes/pause:3.6");
    let out = ctd.pull(&hosts, &reference, &[]);
    assert!(
        out.status.success(),
        "ctr pull {reference} failed ({})\nstderr:\n{}\nstdout:\n{}\n--- ferry log (tail) ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout),
        tail_str(&ferry.log(), 40),
    );
    for blob in img.blobs() {
        assert!(
            ctd.has_content(&blob.digest) && ctd.content(&blob.digest) == blob.bytes,
            "containerd holds {} intact",
            blob.digest
        );
    }
    assert!(
        ctd.image_names().contains(&reference),
        "image registered as {reference}: {:?}",
        ctd.image_names()
    );
    for blob in img.blobs() {
        assert_eq!(
            upstream_gets(format!("/v2/{TARGET_REPO}/blobs/{}", blob.digest)),
            1,
            "the upstream served {} once, from the rule's target repository",
            blob.digest
        );
    }
}
