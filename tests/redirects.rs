//! An upstream that redirects blob reads to another host (as ACR sends them to a
//! storage account): Ferry follows the 307 and fetches the bytes, and its upstream
//! credentials never go to the other host. Distribution issues the 307 itself (its
//! `redirect` storage middleware); the data endpoint on 127.0.0.2 refuses any request
//! carrying `Authorization`, as Azure storage does.

use base64::Engine as _;
use reqwest::Method;

use crate::harness::data_endpoint::DataEndpoint;
use crate::harness::ferry::{FerryBuilder, Upstream};
use crate::harness::http::media;
use crate::harness::images::push_image;
use crate::harness::registry::{Registry, RegistryAuth, RegistryOptions};
use crate::harness::sha256_digest;
use crate::support::{Fetched, blob_url, get, head, manifest_url, send};

const USER: &str = "ferry-bot";
const PASSWORD: &str = "Redirect-S3cret-Pa55word-4d1e";

#[tokio::test(flavor = "multi_thread")]
async fn redirected_blob_reads_never_carry_credentials_to_the_data_host() {
    let data = DataEndpoint::start();
    let registry = Registry::start_with(
        RegistryOptions::new(RegistryAuth::basic(USER, PASSWORD)).redirect_to(&data.url()),
    );
    data.serve_from(&registry.storage_root());
    let img = push_image(&registry, "team/app", "v1", &[1 << 20, 200_000]);
    let seen_before = data.requests().len();
    let ferry = FerryBuilder::new()
        .upstream(Upstream::local(&registry.url()).basic_auth(USER, PASSWORD))
        .start();

    let mut responses: Vec<Fetched> = Vec::new();
    let m = get(
        &manifest_url(&ferry, "team/app", "v1"),
        &[media::OCI_MANIFEST],
    )
    .await;
    assert_eq!(m.status, 200, "manifest through ferry: {}", m.text());
    assert_eq!(m.body, img.manifest);
    responses.push(m);

    // An uncached HEAD goes to the upstream too, and Distribution redirects HEADs.
    let layer = img.largest_layer();
    let h = head(&blob_url(&ferry, "team/app", &layer.digest), &[]).await;
    assert_eq!(
        h.status,
        200,
        "HEAD of a redirected blob: {}\ndata endpoint saw: {:#?}\nregistry saw: {:#?}",
        h.text(),
        &data.requests()[seen_before..],
        registry.settled_access_log()
    );
    assert_eq!(
        h.header("content-length"),
        layer.size.to_string(),
        "HEAD of a redirected blob: Content-Length"
    );
    responses.push(h);

    for blob in img.blobs() {
        let r = get(&blob_url(&ferry, "team/app", &blob.digest), &[]).await;
        assert_eq!(
            r.status,
            200,
            "GET of redirected blob {}: {}\ndata endpoint saw: {:#?}",
            blob.digest,
            r.text(),
            &data.requests()[seen_before..]
        );
        assert_eq!(r.body.len() as u64, blob.size, "length of {}", blob.digest);
        assert_eq!(
            sha256_digest(&r.body),
            blob.digest,
            "bytes of {}",
            blob.digest
        );
        responses.push(r);
    }

    // The bytes really came by way of the redirect.
    let redirected: Vec<_> = registry
        .settled_access_log()
        .into_iter()
        .filter(|e| e.path.contains("/blobs/sha256:") && e.status == 307)
        .collect();
    assert!(
        redirected
            .iter()
            .any(|e| e.method == "GET" && e.path.contains(&layer.digest)),
        "Distribution answered the blob GET with a 307: {redirected:?}"
    );
    let ours = data.requests().split_off(seen_before);
    let from_ferry: Vec<_> = ours
        .iter()
        .filter(|r| {
            r.header("user-agent")
                .is_some_and(|ua| ua.starts_with("ferry/"))
        })
        .collect();
    for blob in img.blobs() {
        let hex = crate::harness::digest_hex(&blob.digest);
        assert!(
            from_ferry
                .iter()
                .any(|r| r.method == "GET" && r.target.contains(hex) && r.status == 200),
            "ferry fetched {} from the data endpoint: {ours:#?}",
            blob.digest
        );
    }
    assert!(
        from_ferry
            .iter()
            .any(|r| r.method == "HEAD"
                && r.target.contains(crate::harness::digest_hex(&layer.digest))),
        "ferry's HEAD followed the redirect: {ours:#?}"
    );
    for r in &ours {
        assert!(
            r.header("authorization").is_none(),
            "{} {} reached the data endpoint (127.0.0.2) with Authorization: {r:#?}",
            r.method,
            r.target
        );
    }

    // Control: the data endpoint does refuse credentials, so a leak would have failed
    // the GETs above rather than passing unnoticed.
    let blob_path = format!(
        "{}/docker/registry/v2/blobs/sha256/{}/{}/data",
        data.url(),
        &crate::harness::digest_hex(&layer.digest)[..2],
        crate::harness::digest_hex(&layer.digest)
    );
    let refused = send(
        Method::GET,
        &blob_path,
        &[],
        &[("authorization", "Basic Zm9vOmJhcg==")],
    )
    .await;
    assert_eq!(refused.status, 400, "data endpoint with Authorization");
    let served = get(&blob_path, &[]).await;
    assert_eq!(served.status, 200, "data endpoint without Authorization");

    // The password appears nowhere: not in Ferry's log, not in what clients got.
    let b64 = base64::engine::general_purpose::STANDARD;
    let secrets = [
        PASSWORD.to_owned(),
        b64.encode(format!("{USER}:{PASSWORD}")),
        b64.encode(PASSWORD),
    ];
    let log = ferry.log();
    for secret in &secrets {
        assert!(
            !log.contains(secret.as_str()),
            "ferry's log contains the upstream password (as {secret:?})"
        );
        for r in &responses {
            assert!(
                !String::from_utf8_lossy(&r.body).contains(secret.as_str()),
                "a response body contains the upstream password"
            );
            for (name, value) in &r.headers {
                assert!(
                    !value.to_str().unwrap_or("").contains(secret.as_str()),
                    "response header {name} contains the upstream password"
                );
            }
        }
    }
}
