//! The HTTP API as a client sees it: routing, headers, Accept negotiation, ranges,
//! tags, referrers, refusals of writes, error codes and tag revalidation.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;

use crate::harness::faults::{FaultProxy, Mode};
use crate::harness::ferry::{FerryBuilder, LOCAL, LOCAL_REGISTRY, Upstream};
use crate::harness::http::{media, raw_request};
use crate::harness::images::{
    large_manifest, push_artifact_with_referrer, push_docker_v2s2, push_image,
};
use crate::harness::process::free_port;
use crate::harness::registry::{Registry, RegistryAuth};
use crate::harness::static_registry::StaticRegistry;
use crate::support::{
    assert_api_version, blob_url, get, head, listed_tags, local_setup, manifest_url, send,
};

/// The host of a second upstream, with a port, as containerd would name it.
const OTHER_REGISTRY: &str = "other.ferry-test.invalid:5000";

#[tokio::test(flavor = "multi_thread")]
async fn routes_by_name_registry_and_ns() {
    let registry = Registry::start(RegistryAuth::None);
    let app = push_image(&registry, "team/app", "v1", &[4096]);
    // An image whose repository happens to start with the upstream's name: it shows
    // which name a request resolved to.
    let prefixed = push_image(&registry, "local/team/app", "v1", &[4096]);
    let ferry = FerryBuilder::new()
        .upstream(Upstream::local(&registry.url()))
        .upstream(Upstream::new("other", OTHER_REGISTRY, &registry.url()))
        .start();
    let base = ferry.url();
    let accept = [media::OCI_MANIFEST];

    let cases = [
        // First path component names the upstream, by `name` or by `registry`.
        (format!("{base}/v2/local/team/app/manifests/v1"), &app),
        (
            format!("{base}/v2/{LOCAL_REGISTRY}/team/app/manifests/v1"),
            &app,
        ),
        (format!("{base}/v2/other/team/app/manifests/v1"), &app),
        // `?ns=` names the upstream; the path is the repository as is.
        (
            format!("{base}/v2/team/app/manifests/v1?ns={LOCAL_REGISTRY}"),
            &app,
        ),
        (
            format!("{base}/v2/team/app/manifests/v1?ns=other.ferry-test.invalid%3A5000"),
            &app,
        ),
        (
            format!("{base}/v2/team/app/manifests/v1?ns=other.ferry-test.invalid:5000"),
            &app,
        ),
        // `ns` wins over a path prefix: the repository is `local/team/app`.
        (
            format!("{base}/v2/local/team/app/manifests/v1?ns={LOCAL_REGISTRY}"),
            &prefixed,
        ),
    ];
    for (url, want) in cases {
        let r = get(&url, &accept).await;
        assert_eq!(r.status, 200, "GET {url}: {}", r.text());
        assert_eq!(r.body, want.manifest, "GET {url} served the wrong manifest");
        assert_eq!(
            r.header("docker-content-digest"),
            want.manifest_digest,
            "GET {url}"
        );
        assert_api_version(&r.headers);
    }

    // Blobs route the same way.
    let layer = &app.layers[0];
    for url in [
        format!("{base}/v2/local/team/app/blobs/{}", layer.digest),
        format!(
            "{base}/v2/team/app/blobs/{}?ns=other.ferry-test.invalid%3A5000",
            layer.digest
        ),
    ] {
        let r = get(&url, &[]).await;
        assert_eq!(r.status, 200, "GET {url}: {}", r.text());
        assert_eq!(r.body, layer.bytes, "GET {url}");
    }

    // Neither a known prefix nor `ns`, and no default upstream: NAME_UNKNOWN, and the
    // message tells the user which registries exist.
    let r = get(&format!("{base}/v2/team/app/manifests/v1"), &accept).await;
    let message = r.assert_error(404, "NAME_UNKNOWN");
    for known in [LOCAL_REGISTRY, OTHER_REGISTRY] {
        assert!(
            message.contains(known),
            "NAME_UNKNOWN message should list {known}: {message}"
        );
    }
    // An `ns` nobody serves is not silently sent elsewhere.
    let r = get(
        &format!("{base}/v2/team/app/manifests/v1?ns=unknown.example"),
        &accept,
    )
    .await;
    assert_eq!(r.status, 404, "unknown ns: {}", r.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn default_upstream_takes_unrouted_requests() {
    let registry = Registry::start(RegistryAuth::None);
    let app = push_image(&registry, "team/app", "v1", &[4096]);
    let ferry = FerryBuilder::new()
        .upstream(Upstream::local(&registry.url()).default_upstream(true))
        .upstream(Upstream::new(
            "other",
            OTHER_REGISTRY,
            &format!("http://127.0.0.1:{}", free_port()),
        ))
        .start();
    let r = get(
        &format!("{}/v2/team/app/manifests/v1", ferry.url()),
        &[media::OCI_MANIFEST],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, app.manifest);
    // A known prefix still wins over the default.
    let r = get(
        &manifest_url(&ferry, "team/app", "v1"),
        &[media::OCI_MANIFEST],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn manifest_and_blob_headers_and_cache_status() {
    let (registry, ferry) = local_setup();
    let img = push_image(&registry, "team/app", "v1", &[300_000]);
    let r = get(&format!("{}/v2/", ferry.url()), &[]).await;
    assert_eq!(r.status, 200);
    assert_api_version(&r.headers);

    // Manifest by tag: first from upstream, then from the store.
    let url = manifest_url(&ferry, "team/app", "v1");
    for (i, want_cache) in ["MISS", "HIT"].into_iter().enumerate() {
        let r = get(&url, &media::ALL_MANIFESTS).await;
        assert_eq!(r.status, 200, "GET #{i} {url}: {}", r.text());
        assert_eq!(r.body, img.manifest, "manifest bytes are exact");
        assert_api_version(&r.headers);
        assert_eq!(r.header("docker-content-digest"), img.manifest_digest);
        assert_eq!(r.header("content-length"), img.manifest.len().to_string());
        assert_eq!(r.header("content-type"), media::OCI_MANIFEST);
        assert_eq!(r.header("etag"), format!("\"{}\"", img.manifest_digest));
        assert_eq!(r.x_cache(), want_cache, "X-Cache of GET #{i}");
    }
    // By digest: the same bytes are already in the store.
    let r = get(
        &manifest_url(&ferry, "team/app", &img.manifest_digest),
        &media::ALL_MANIFESTS,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, img.manifest);
    assert_eq!(
        r.x_cache(),
        "HIT",
        "manifest by digest after the tag was fetched"
    );
    // HEAD: headers without a body.
    let r = head(&url, &media::ALL_MANIFESTS).await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert_eq!(r.header("docker-content-digest"), img.manifest_digest);
    assert_eq!(r.header("content-length"), img.manifest.len().to_string());
    assert_eq!(r.header("content-type"), media::OCI_MANIFEST);
    assert_api_version(&r.headers);

    // Blob: MISS, then HIT, one upstream GET.
    let layer = &img.layers[0];
    let url = blob_url(&ferry, "team/app", &layer.digest);
    for (i, want_cache) in ["MISS", "HIT"].into_iter().enumerate() {
        let r = get(&url, &[]).await;
        assert_eq!(r.status, 200, "GET #{i} {url}: {}", r.text());
        assert!(r.body == layer.bytes, "blob bytes of GET #{i}");
        assert_api_version(&r.headers);
        assert_eq!(r.header("docker-content-digest"), layer.digest);
        assert_eq!(r.header("content-length"), layer.size.to_string());
        assert!(!r.header("content-type").is_empty(), "blob Content-Type");
        assert_eq!(r.header("etag"), format!("\"{}\"", layer.digest));
        assert_eq!(r.x_cache(), want_cache, "X-Cache of blob GET #{i}");
    }
    assert_eq!(
        registry.blob_gets(&layer.digest),
        1,
        "one upstream GET of the blob"
    );
    let r = head(&url, &[]).await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert_eq!(r.header("content-length"), layer.size.to_string());
    assert_eq!(r.header("docker-content-digest"), layer.digest);

    // HEAD of a blob nobody fetched yet works too.
    let config = &img.config;
    let r = head(&blob_url(&ferry, "team/app", &config.digest), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), config.size.to_string());
    assert_eq!(r.header("docker-content-digest"), config.digest);
}

#[tokio::test(flavor = "multi_thread")]
async fn blob_range_requests() {
    let (registry, ferry) = local_setup();
    let img = push_image(&registry, "team/app", "v1", &[200_000]);
    let layer = &img.layers[0];
    let size = layer.size as usize;
    let url = blob_url(&ferry, "team/app", &layer.digest);

    // Cold, then warm.
    for round in ["cold", "warm"] {
        let r = send(Method::GET, &url, &[], &[("range", "bytes=10-99")]).await;
        assert_eq!(r.status, 206, "{round} range: {}", r.text());
        assert_eq!(
            r.header("content-range"),
            format!("bytes 10-99/{size}"),
            "{round}"
        );
        assert_eq!(r.header("content-length"), "90", "{round}");
        assert!(r.body == layer.bytes[10..100], "{round} range bytes");

        // Open-ended, as containerd resumes.
        let from = size - 1000;
        let r = send(
            Method::GET,
            &url,
            &[],
            &[("range", &format!("bytes={from}-"))],
        )
        .await;
        assert_eq!(r.status, 206, "{round} open range: {}", r.text());
        assert_eq!(
            r.header("content-range"),
            format!("bytes {from}-{}/{size}", size - 1),
            "{round}"
        );
        assert!(r.body == layer.bytes[from..], "{round} open range bytes");

        // Past the end: unsatisfiable.
        let r = send(
            Method::GET,
            &url,
            &[],
            &[("range", &format!("bytes={size}-"))],
        )
        .await;
        assert_eq!(r.status, 416, "{round} unsatisfiable range: {}", r.text());

        if round == "cold" {
            let full = get(&url, &[]).await;
            assert_eq!(full.status, 200);
            assert!(full.body == layer.bytes);
        }
    }
}

/// The body of a manifest response hashes to the `Docker-Content-Digest` it came
/// with, and that is the digest the image was pushed as.
fn assert_served_digest(r: &crate::support::Fetched, digest: &str) {
    assert_eq!(r.header("docker-content-digest"), digest, "{}", r.text());
    assert_eq!(
        crate::harness::sha256_digest(&r.body),
        digest,
        "served bytes"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn accept_negotiation() {
    let (registry, ferry) = local_setup();
    let oci = push_image(&registry, "team/oci", "v1", &[4096]);
    let docker = push_docker_v2s2(&registry, "team/docker", "v1", &[4096]);
    let oci_url = manifest_url(&ferry, "team/oci", "v1");
    let docker_url = manifest_url(&ferry, "team/docker", "v1");

    // Cold: a Docker-only client is not handed an OCI manifest.
    // Ferry forwards the Accept, and Distribution answers as the spec's registries do
    // (protocol.md §5): 404 MANIFEST_UNKNOWN.
    let r = get(&oci_url, &[media::DOCKER_MANIFEST, media::DOCKER_LIST]).await;
    r.assert_error(404, "MANIFEST_UNKNOWN");
    // Accept as one comma-separated line works as well as separate lines.
    let r = get(
        &oci_url,
        &[&format!(
            "{}, {}",
            media::DOCKER_MANIFEST,
            media::OCI_MANIFEST
        )],
    )
    .await;
    assert_eq!(r.status, 200, "comma-separated Accept: {}", r.text());
    assert_eq!(r.body, oci.manifest);
    assert_served_digest(&r, &oci.manifest_digest);
    assert_eq!(r.header("content-type"), media::OCI_MANIFEST);
    // Warm: still not served to a client that cannot take it, by tag or by digest.
    for url in [
        oci_url.clone(),
        manifest_url(&ferry, "team/oci", &oci.manifest_digest),
    ] {
        let r = get(&url, &[media::DOCKER_MANIFEST, media::DOCKER_LIST]).await;
        let message = r.assert_error(404, "MANIFEST_UNKNOWN");
        eprintln!("cached OCI manifest, Docker-only Accept ({url}): {message}");
    }
    // `*/*` takes anything.
    let r = get(&oci_url, &["*/*"]).await;
    assert_eq!(r.status, 200, "*/*: {}", r.text());
    assert_eq!(r.body, oci.manifest);
    assert_served_digest(&r, &oci.manifest_digest);
    assert_eq!(r.header("content-type"), media::OCI_MANIFEST);

    // The Docker schema 2 image: served to Docker clients, not to OCI-only ones.
    let r = get(&docker_url, &[media::DOCKER_MANIFEST]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, docker.manifest);
    assert_served_digest(&r, &docker.manifest_digest);
    assert_eq!(r.header("content-type"), media::DOCKER_MANIFEST);
    // Distribution 2.8.2 answers such a request with a converted, signed schema 1
    // manifest whose bytes do not hash to its Docker-Content-Digest: Ferry refuses
    // it (never a wrong byte) rather than serve it or the cached schema 2 manifest.
    let r = get(&docker_url, &[media::OCI_MANIFEST, media::OCI_INDEX]).await;
    let message = r.assert_error(502, "DIGEST_INVALID");
    assert!(
        !r.body
            .windows(docker.manifest.len())
            .any(|w| w == docker.manifest),
        "cached Docker manifest in the refusal: {message}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tags_list_paginates_and_survives_upstream_outage() {
    let registry = Registry::start(RegistryAuth::None);
    let proxy = FaultProxy::start(registry.addr());
    let ferry = FerryBuilder::new()
        .upstream(Upstream::local(&proxy.url()))
        .start();
    let img = push_image(&registry, "team/app", "a", &[1024]);
    for tag in ["b", "c", "d"] {
        crate::harness::images::put_manifest(
            &registry,
            "team/app",
            tag,
            &img.media_type,
            &img.manifest,
        );
    }
    let base = format!("{}/v2/{LOCAL}/team/app/tags/list", ferry.url());
    // Distribution 2.8.2 lists tags in storage order and ignores `n` and `last`:
    // Ferry sorts and pages itself (tests/adversary/content.rs follows the pages).
    let r = get(&base, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_api_version(&r.headers);
    assert_eq!(listed_tags(&r), ["a", "b", "c", "d"]);
    for (query, page) in [("n=2", ["a", "b"]), ("n=2&last=b", ["c", "d"])] {
        let r = get(&format!("{base}?{query}"), &[]).await;
        assert_eq!(r.status, 200, "{query}: {}", r.text());
        assert_eq!(listed_tags(&r), page, "{query}");
    }

    // Upstream gone: the last list is answered from the cache.
    proxy.set_mode(Mode::Refuse);
    let r = get(&base, &[]).await;
    assert_eq!(
        r.status,
        200,
        "tags/list with the upstream down: {}",
        r.text()
    );
    assert_eq!(listed_tags(&r), ["a", "b", "c", "d"], "sorted offline too");
}

#[tokio::test(flavor = "multi_thread")]
async fn referrers_fall_back_to_the_tag_schema() {
    let (registry, ferry) = local_setup();
    let img = push_image(&registry, "team/app", "v1", &[4096]);
    let lonely = push_image(&registry, "team/app", "v2", &[4096]);
    let sbom = push_artifact_with_referrer(
        &registry,
        "team/app",
        &img,
        "application/vnd.example.sbom.v1",
    );
    let sig = push_artifact_with_referrer(
        &registry,
        "team/app",
        &img,
        "application/vnd.example.sig.v1",
    );
    let base = format!("{}/v2/{LOCAL}/team/app/referrers", ferry.url());

    let listed = |r: &crate::support::Fetched| -> Vec<Value> {
        assert_eq!(r.status, 200, "referrers: {}", r.text());
        assert_eq!(r.header("content-type"), media::OCI_INDEX);
        assert_api_version(&r.headers);
        let v: Value = serde_json::from_slice(&r.body)
            .unwrap_or_else(|e| panic!("referrers JSON ({e}): {}", r.text()));
        assert_eq!(v["schemaVersion"], 2, "{v}");
        v["manifests"]
            .as_array()
            .unwrap_or_else(|| panic!("no manifests array: {v}"))
            .clone()
    };

    let all = listed(&get(&format!("{base}/{}", img.manifest_digest), &[]).await);
    assert_eq!(all.len(), 2, "both artifacts listed: {all:?}");
    for art in [&sbom, &sig] {
        let d = all
            .iter()
            .find(|d| d["digest"] == art.manifest_digest.as_str())
            .unwrap_or_else(|| panic!("{} not listed: {all:?}", art.manifest_digest));
        assert_eq!(d["artifactType"], art.artifact_type.as_str());
        assert_eq!(d["mediaType"], media::OCI_MANIFEST);
        assert_eq!(d["size"], art.manifest.len());
        assert_eq!(
            d["annotations"]["org.example.kind"],
            art.artifact_type.as_str()
        );
    }

    let r = get(
        &format!(
            "{base}/{}?artifactType=application/vnd.example.sbom.v1",
            img.manifest_digest
        ),
        &[],
    )
    .await;
    assert_eq!(r.header("oci-filters-applied"), "artifactType");
    let filtered = listed(&r);
    assert_eq!(filtered.len(), 1, "{filtered:?}");
    assert_eq!(filtered[0]["digest"], sbom.manifest_digest.as_str());

    let r = get(
        &format!(
            "{base}/{}?artifactType=application/vnd.example.none",
            img.manifest_digest
        ),
        &[],
    )
    .await;
    assert_eq!(r.header("oci-filters-applied"), "artifactType");
    assert!(listed(&r).is_empty());

    // No referrers at all: an empty index, not a 404.
    assert!(listed(&get(&format!("{base}/{}", lonely.manifest_digest), &[]).await).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_are_unsupported() {
    let (registry, ferry) = local_setup();
    let img = push_image(&registry, "team/app", "v1", &[1024]);
    let base = format!("{}/v2/{LOCAL}/team/app", ferry.url());
    let cases = [
        (Method::POST, format!("{base}/blobs/uploads/")),
        (
            Method::POST,
            format!("{base}/blobs/uploads/?digest={}", img.config.digest),
        ),
        (
            Method::POST,
            format!(
                "{base}/blobs/uploads/?mount={}&from=other",
                img.config.digest
            ),
        ),
        (
            Method::PATCH,
            format!("{base}/blobs/uploads/some-upload-id"),
        ),
        (
            Method::PUT,
            format!(
                "{base}/blobs/uploads/some-upload-id?digest={}",
                img.config.digest
            ),
        ),
        (Method::GET, format!("{base}/blobs/uploads/some-upload-id")),
        (Method::PUT, format!("{base}/manifests/v2")),
        (Method::DELETE, format!("{base}/manifests/v1")),
        (
            Method::DELETE,
            format!("{base}/manifests/{}", img.manifest_digest),
        ),
        (
            Method::DELETE,
            format!("{base}/blobs/{}", img.config.digest),
        ),
    ];
    let writes =
        || ["POST", "PUT", "PATCH", "DELETE"].map(|m| registry.count_requests(m, "/v2/team/app/"));
    let before = writes();
    for (method, url) in cases {
        let r = send(
            method.clone(),
            &url,
            &[],
            &[("content-type", media::OCI_MANIFEST)],
        )
        .await;
        r.assert_error(405, "UNSUPPORTED");
    }
    assert_eq!(
        writes(),
        before,
        "no write reached the upstream (POST, PUT, PATCH, DELETE)"
    );
    // The upstream still has everything.
    let r = get(
        &manifest_url(&ferry, "team/app", &img.manifest_digest),
        &[media::OCI_MANIFEST],
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn error_codes() {
    let (registry, ferry) = local_setup();
    let img = push_image(&registry, "team/app", "v1", &[1024]);
    let base = format!("{}/v2/{LOCAL}", ferry.url());

    // Malformed digests.
    get(&format!("{base}/team/app/blobs/sha256:xyz"), &[])
        .await
        .assert_error(400, "DIGEST_INVALID");
    get(
        &format!("{base}/team/app/blobs/sha256:{}", "a".repeat(63)),
        &[],
    )
    .await
    .assert_error(400, "DIGEST_INVALID");
    get(
        &format!("{base}/team/app/manifests/sha256:totallywrong"),
        &[media::OCI_MANIFEST],
    )
    .await
    .assert_error(400, "DIGEST_INVALID");

    // Invalid repository names, sent byte for byte (no client-side normalisation).
    let prefix = format!("/v2/{LOCAL}");
    for path in [
        format!("{prefix}/Team/App/manifests/v1"),
        format!("{prefix}/team/../app/manifests/v1"),
        format!("{prefix}/team%2Fapp/manifests/v1"),
        format!("{prefix}/team%2fapp/blobs/{}", img.config.digest),
    ] {
        let r = raw_request(ferry.addr(), "GET", &path);
        assert_eq!(
            r.status,
            400,
            "GET {path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let (code, _) = crate::harness::http::oci_error(&r.body);
        assert_eq!(code, "NAME_INVALID", "GET {path}");
        assert_eq!(r.header("docker-distribution-api-version"), "registry/2.0");
    }

    // An invalid tag is just an unknown manifest (the conformance suite's case).
    get(
        &format!("{base}/team/app/manifests/.INVALID_MANIFEST_NAME"),
        &[media::OCI_MANIFEST],
    )
    .await
    .assert_error(404, "MANIFEST_UNKNOWN");
    get(
        &format!("{base}/team/app/manifests/{}", "t".repeat(129)),
        &[media::OCI_MANIFEST],
    )
    .await
    .assert_error(404, "MANIFEST_UNKNOWN");
    // Unknown, well-formed references.
    get(
        &format!("{base}/team/app/manifests/no-such-tag"),
        &[media::OCI_MANIFEST],
    )
    .await
    .assert_error(404, "MANIFEST_UNKNOWN");
    let missing = crate::harness::sha256_digest(b"hello world");
    get(
        &format!("{base}/team/app/manifests/{missing}"),
        &[media::OCI_MANIFEST],
    )
    .await
    .assert_error(404, "MANIFEST_UNKNOWN");
    get(&format!("{base}/team/app/blobs/{missing}"), &[])
        .await
        .assert_error(404, "BLOB_UNKNOWN");
    let r = head(&format!("{base}/team/app/blobs/{missing}"), &[]).await;
    assert_eq!(r.status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_upstream_is_503_naming_it() {
    let dead = format!("http://127.0.0.1:{}", free_port());
    let ferry = FerryBuilder::new().upstream(Upstream::local(&dead)).start();
    let digest = crate::harness::sha256_digest(b"never stored");
    for url in [
        manifest_url(&ferry, "team/app", "v1"),
        blob_url(&ferry, "team/app", &digest),
    ] {
        let started = Instant::now();
        let r = get(&url, &[media::OCI_MANIFEST]).await;
        let message = r.assert_error(503, "UNAVAILABLE");
        let detail = String::from_utf8_lossy(&r.body).into_owned();
        assert!(
            message.contains(LOCAL) || message.contains(LOCAL_REGISTRY) || message.contains(&dead),
            "503 should name the upstream: {detail}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "refused connections fail fast"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_upstream_manifest_is_502() {
    let upstream = StaticRegistry::start();
    let (digest, bytes) = large_manifest(4 << 20);
    assert!(bytes.len() > 4 << 20);
    upstream.put_manifest("team/big", "v1", media::OCI_MANIFEST, &bytes);
    let ferry = FerryBuilder::new()
        .upstream(Upstream::local(&upstream.url()))
        .start();
    for reference in ["v1", digest.as_str(), "v1"] {
        let r = get(
            &manifest_url(&ferry, "team/big", reference),
            &media::ALL_MANIFESTS,
        )
        .await;
        r.assert_error(502, "MANIFEST_INVALID");
    }
    assert!(
        !crate::support::store_holds(&ferry.storage_root(), &bytes),
        "the oversized manifest was stored"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tags_are_revalidated_after_ttl_digests_are_immutable() {
    // Long enough that the two quick requests inside it cannot outlast it on a loaded
    // machine: the slow part (pushing both images with skopeo) happens before the TTL
    // starts, and the tag then moves upstream with one manifest PUT.
    const TAG_TTL: Duration = Duration::from_secs(10);
    let registry = Registry::start(RegistryAuth::None);
    let ferry = FerryBuilder::new()
        .upstream(Upstream::local(&registry.url()).tag_ttl(&format!("{}s", TAG_TTL.as_secs())))
        .start();
    let first = push_image(&registry, "team/app", "latest", &[1024]);
    let second = push_image(&registry, "team/app", "next", &[1024]);
    assert_ne!(first.manifest_digest, second.manifest_digest);
    let url = manifest_url(&ferry, "team/app", "latest");
    let fetched_at = Instant::now();
    let r = get(&url, &[media::OCI_MANIFEST]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("docker-content-digest"), first.manifest_digest);

    // Move the tag upstream.
    crate::harness::images::put_manifest(
        &registry,
        "team/app",
        "latest",
        &second.media_type,
        &second.manifest,
    );
    let r = get(&url, &[media::OCI_MANIFEST]).await;
    assert!(
        fetched_at.elapsed() < TAG_TTL,
        "precondition: the tag moved and was asked for again within its TTL ({:?} passed)",
        fetched_at.elapsed()
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("docker-content-digest"),
        first.manifest_digest,
        "within tag_ttl the cached tag is served"
    );
    assert_eq!(r.x_cache(), "HIT");

    // After the TTL the tag is revalidated and follows the upstream.
    tokio::time::sleep(TAG_TTL.saturating_sub(fetched_at.elapsed()) + Duration::from_millis(500))
        .await;
    let r = get(&url, &[media::OCI_MANIFEST]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("docker-content-digest"),
        second.manifest_digest,
        "after tag_ttl the tag follows upstream"
    );
    assert_eq!(r.body, second.manifest);

    // The old digest is still served: digests are immutable.
    let r = get(
        &manifest_url(&ferry, "team/app", &first.manifest_digest),
        &[media::OCI_MANIFEST],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, first.manifest);
}
