//! What an upstream's content can make Ferry store and serve: tag lists answered as
//! the spec requires (sorted, paged, the same offline), bounded and stripped of names
//! that are not tags; manifests that are not the manifest they claim refused, never
//! served under a type a browser would render; referrers answered online kept for
//! offline, empty answers included.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::harness::ferry::{Ferry, FerryBuilder, LOCAL, Upstream};
use crate::harness::hostile::Hostile;
use crate::harness::http::media;
use crate::harness::images::{push_artifact_with_referrer, push_image_http, put_manifest};
use crate::harness::registry::{Registry, RegistryAuth};
use crate::harness::static_registry::StaticRegistry;
use crate::support::{Fetched, files_under, get, listed_tags, manifest_url, store_holds};

/// The target of a `Link: <target>; rel="next"` header, `None` when there is none.
fn next_link(r: &Fetched) -> Option<String> {
    let link = r.header("link");
    if link.is_empty() {
        return None;
    }
    assert!(link.contains("rel=\"next\""), "Link: {link}");
    let target = link.split_once('<')?.1.split_once('>')?.0;
    Some(target.to_owned())
}

/// Status, body and `Link` of every page from `first`, following `Link` (≤ 20 pages).
async fn walk(ferry: &Ferry, first: &str) -> Vec<(u16, Vec<String>, Option<String>)> {
    let mut pages = Vec::new();
    let mut target = Some(first.to_owned());
    while let Some(t) = target.take() {
        assert!(pages.len() < 20, "more than 20 pages: {pages:?}");
        let r = get(&format!("{}{t}", ferry.url()), &[]).await;
        target = next_link(&r);
        pages.push((r.status.as_u16(), listed_tags(&r), target.clone()));
    }
    pages
}

#[tokio::test(flavor = "multi_thread")]
async fn tag_lists_are_sorted_paged_and_the_same_offline() {
    let registry = Registry::start(RegistryAuth::None);
    let img = push_image_http(&registry, "team/app", "v1", &[64]);
    // Distribution lists these in its own order and ignores `n` and `last`.
    let tags = ["v10", "B", "v2", "a", "_x", "latest"];
    for tag in tags {
        put_manifest(&registry, "team/app", tag, &img.media_type, &img.manifest);
    }
    let mut sorted: Vec<&str> = tags.into_iter().chain(["v1"]).collect();
    sorted.sort();
    let ferry = FerryBuilder::new()
        .upstream(Upstream::local(&registry.url()))
        .start();
    let base = format!("/v2/{LOCAL}/team/app/tags/list");
    let requests = [
        base.clone(),
        format!("{base}?n=2"),
        format!("{base}?n=2&last={}", sorted[2]),
        format!("{base}?n=100&last={}", sorted[5]),
        format!("{base}?last={}", sorted[3]),
    ];

    let mut online = Vec::new();
    for q in &requests {
        online.push(walk(&ferry, q).await);
    }
    // The whole list: sorted, no Link.
    assert_eq!(online[0], [(200, strings(&sorted), None)]);
    // Pages of two, each Link naming the last tag of its page, until the end.
    let pages = &online[1];
    assert_eq!(pages.len(), 4, "{pages:?}");
    let joined: Vec<String> = pages.iter().flat_map(|p| p.1.clone()).collect();
    assert_eq!(joined, strings(&sorted), "{pages:?}");
    for (i, (_, page, link)) in pages.iter().enumerate() {
        let expect = &sorted[i * 2..(i * 2 + 2).min(sorted.len())];
        assert_eq!(page, &strings(expect), "page {i}");
        match link {
            Some(l) => assert!(
                l.contains("n=2") && l.contains(&format!("last={}", expect[expect.len() - 1])),
                "page {i} Link {l}"
            ),
            None => assert_eq!(i, pages.len() - 1, "only the last page has no Link"),
        }
    }
    assert_eq!(online[2][0].1, strings(&sorted[3..5]));
    assert_eq!(online[3], [(200, strings(&sorted[6..]), None)]);
    assert_eq!(online[4], [(200, strings(&sorted[4..]), None)]);

    // The upstream is gone: the same requests get the same answers, from the cache.
    drop(registry);
    for (q, before) in requests.iter().zip(&online) {
        assert_eq!(&walk(&ferry, q).await, before, "{q} offline");
    }
    let r = get(&format!("{}{base}?n=2", ferry.url()), &[]).await;
    assert!(
        matches!(r.x_cache(), "STALE" | "OFFLINE"),
        "X-Cache {}",
        r.x_cache()
    );
}

fn strings(s: &[&str]) -> Vec<String> {
    s.iter().map(|t| t.to_string()).collect()
}

/// A hostile upstream on 127.0.0.1: `/v2/` answers, `/v2/huge/tags/list` streams a
/// 15 MiB list of valid tags without a `Content-Length`, `/v2/many/tags/list` lists
/// 100,001 tags, `/v2/mixed/tags/list` lists names that are not tags among tags,
/// `/v2/paged/tags/list` pages its list with `Link`, `/v2/loop/tags/list` links to
/// itself. Stops when dropped.
fn tag_list_upstream() -> Hostile {
    Hostile::http("127.0.0.1", |_| {
        axum::Router::new().fallback(serve_tag_lists)
    })
}

const HUGE_LIST: usize = 15 << 20;

/// Listed by `/v2/mixed/tags/list`: only the first two are tags.
const MIXED: [&str; 6] = ["good", "ok-1", "../x", "a b", ".hidden", "x\r\ny"];

async fn serve_tag_lists(req: Request) -> Response {
    let json = [(header::CONTENT_TYPE, "application/json")];
    match req.uri().path() {
        "/v2/" | "/v2" => (json, "{}").into_response(),
        "/v2/mixed/tags/list" => {
            (json, json!({"name": "mixed", "tags": MIXED}).to_string()).into_response()
        }
        "/v2/huge/tags/list" => {
            // `{"name":"huge","tags":["t0000000",…]}` in 64 KiB chunks, 15 MiB in all.
            const CHUNK: usize = 64 << 10;
            let per_chunk = CHUNK / 11;
            let chunks = (0..HUGE_LIST / CHUNK).map(move |c| {
                let mut s = String::with_capacity(CHUNK + 64);
                if c == 0 {
                    s.push_str(r#"{"name":"huge","tags":["#);
                } else {
                    s.push(',');
                }
                let first = c * per_chunk;
                let names: Vec<String> = (first..first + per_chunk)
                    .map(|i| format!("\"t{i:07}\""))
                    .collect();
                s.push_str(&names.join(","));
                if c + 1 == HUGE_LIST / CHUNK {
                    s.push_str("]}");
                }
                Ok::<_, std::io::Error>(bytes::Bytes::from(s))
            });
            let body = Body::from_stream(futures_util::stream::iter(chunks));
            (json, body).into_response()
        }
        "/v2/many/tags/list" => {
            // 100,001 tags in about 1.1 MiB: under the size limit, over the count.
            let tags: Vec<String> = (0..=100_000).map(|i| format!("m{i}")).collect();
            (json, json!({"name": "many", "tags": tags}).to_string()).into_response()
        }
        "/v2/paged/tags/list" => {
            // Pages of two in no order, each naming the next with `Link`.
            let query = req.uri().query().unwrap_or("");
            let (tags, next) = match query {
                "" => (["p3", "p1"].as_slice(), Some("p1")),
                q if q.contains("last=p1") => (["p2", "p4"].as_slice(), Some("p4")),
                _ => (["p0"].as_slice(), None),
            };
            let mut resp =
                (json, json!({"name": "paged", "tags": tags}).to_string()).into_response();
            if let Some(last) = next {
                let link = format!(r#"</v2/paged/tags/list?n=2&last={last}>; rel="next""#);
                resp.headers_mut()
                    .insert(header::LINK, link.parse().expect("Link value"));
            }
            resp
        }
        "/v2/loop/tags/list" => {
            // A `Link` to the same page, forever.
            let link = r#"</v2/loop/tags/list?n=1&last=l1>; rel="next""#;
            (
                [
                    (header::CONTENT_TYPE, "application/json"),
                    (header::LINK, link),
                ],
                r#"{"name":"loop","tags":["l1"]}"#,
            )
                .into_response()
        }
        _ => (
            StatusCode::NOT_FOUND,
            json,
            r#"{"errors":[{"code":"NAME_UNKNOWN"}]}"#,
        )
            .into_response(),
    }
}

fn store_bytes(ferry: &Ferry) -> u64 {
    files_under(&ferry.storage_root())
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_tag_lists_are_bounded_and_only_tags_are_listed() {
    let upstream = tag_list_upstream();
    let mut ferry = FerryBuilder::new()
        .upstream(Upstream::local(&upstream.url()))
        .start();
    let pid = ferry.pid();

    let store_before = store_bytes(&ferry);
    let (_, peak_before) = super::memory_mib(pid);
    let started = Instant::now();
    let url = format!("{}/v2/{LOCAL}/huge/tags/list", ferry.url());
    let answers = futures_util::future::join_all((0..9).map(|_| get(&url, &[]))).await;
    let elapsed = started.elapsed();
    let (_, peak_after) = super::memory_mib(pid);
    eprintln!(
        "nine 15 MiB tag lists: statuses {:?} in {elapsed:?}; ferry VmHWM {peak_before} → {peak_after} MiB",
        answers
            .iter()
            .map(|r| r.status.as_u16())
            .collect::<Vec<_>>()
    );
    for r in &answers {
        assert_eq!(r.status, 502, "{}", r.text());
        assert!(
            r.text().contains(LOCAL),
            "the 502 names the upstream: {}",
            r.text()
        );
    }
    assert!(peak_after < 128, "peak RSS {peak_after} MiB");

    let mixed = format!("{}/v2/{LOCAL}/mixed/tags/list", ferry.url());
    assert_eq!(listed_tags(&get(&mixed, &[]).await), ["good", "ok-1"]);
    // Offline: still only its tags.
    drop(upstream);
    assert_eq!(listed_tags(&get(&mixed, &[]).await), ["good", "ok-1"]);

    // What the attack left in the store, once Ferry has written everything out.
    ferry.terminate();
    let store_after = store_bytes(&ferry);
    eprintln!("store: {store_before} → {store_after} bytes");
    assert!(
        store_after < store_before + (4 << 20),
        "store grew from {store_before} to {store_after} bytes"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_pages_are_followed_and_bounded() {
    let upstream = tag_list_upstream();
    let ferry = FerryBuilder::new()
        .upstream(Upstream::local(&upstream.url()))
        .start();
    let url = |repo: &str| format!("{}/v2/{LOCAL}/{repo}/tags/list", ferry.url());
    // Every page of the upstream's, sorted into one list.
    let r = get(&url("paged"), &[]).await;
    assert_eq!(listed_tags(&r), ["p0", "p1", "p2", "p3", "p4"]);
    let r = get(&format!("{}?n=3", url("paged")), &[]).await;
    assert_eq!(listed_tags(&r), ["p0", "p1", "p2"]);
    assert_eq!(
        next_link(&r).as_deref(),
        Some(format!("/v2/{LOCAL}/paged/tags/list?n=3&last=p2").as_str())
    );
    // A page linking to itself ends the walk.
    let started = Instant::now();
    let r = get(&url("loop"), &[]).await;
    assert_eq!(listed_tags(&r), ["l1"]);
    // A walk that did not end would run until the client gave up (120 s).
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    // Over 100,000 tags: refused, naming the upstream, and nothing listed offline.
    let r = get(&url("many"), &[]).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(
        r.text().contains("100000 tags") && r.text().contains(LOCAL),
        "{}",
        r.text()
    );
    drop(upstream);
    let r = get(&url("many"), &[]).await;
    assert_eq!(r.status, 503, "{}", r.text());
}

/// `bytes` a manifest-shaped JSON object whose config descriptor names a real blob.
fn image_manifest(config_digest: &str, extra: &[(&str, Value)]) -> Vec<u8> {
    let mut m = json!({
        "schemaVersion": 2,
        "config": {"mediaType": media::OCI_CONFIG, "digest": config_digest, "size": 2},
        "layers": [],
    });
    for (k, v) in extra {
        m[*k] = v.clone();
    }
    serde_json::to_vec(&m).expect("JSON")
}

#[tokio::test(flavor = "multi_thread")]
async fn manifests_that_are_not_manifests_are_refused() {
    let upstream = StaticRegistry::start();
    let config = upstream.put_blob(b"{}");
    let html = image_manifest(&config, &[("mediaType", json!("text/html"))]);
    let not_manifest = br#"{"hello":"<script>alert(1)</script>"}"#.to_vec();
    let crlf = image_manifest(
        &config,
        &[(
            "mediaType",
            json!(format!("{}\r\nX-Injected: 1", media::OCI_MANIFEST)),
        )],
    );
    let hostile = [
        ("evil/html", "text/html", &html),
        ("evil/json", "application/json", &not_manifest),
        ("evil/crlf", media::OCI_MANIFEST, &crlf),
    ];
    let mut digests = Vec::new();
    for (repo, content_type, bytes) in hostile {
        digests.push(upstream.put_manifest(repo, "v1", content_type, bytes));
    }
    let good = image_manifest(&config, &[("mediaType", json!(media::OCI_MANIFEST))]);
    let good_digest = upstream.put_manifest("fine/app", "v1", media::OCI_MANIFEST, &good);
    let ferry = FerryBuilder::new()
        .upstream(Upstream::local(&upstream.url()))
        .start();

    for ((repo, _, bytes), digest) in hostile.iter().zip(&digests) {
        // Twice by tag (the second would be a cache hit had it been stored), then by digest.
        for reference in ["v1", "v1", digest.as_str()] {
            let r = get(&manifest_url(&ferry, repo, reference), &[]).await;
            let message = r.assert_error(502, "MANIFEST_INVALID");
            assert!(message.contains(LOCAL), "names the upstream: {message}");
            assert_eq!(r.header("x-content-type-options"), "nosniff");
            assert_eq!(r.header("x-injected"), "");
        }
        assert!(
            !store_holds(&ferry.storage_root(), bytes),
            "{repo}: the refused manifest was stored"
        );
    }

    let r = get(
        &manifest_url(&ferry, "fine/app", "v1"),
        &media::ALL_MANIFESTS,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, good);
    assert_eq!(r.header("content-type"), media::OCI_MANIFEST);
    assert_eq!(r.header("docker-content-digest"), good_digest);
    assert_eq!(r.header("x-content-type-options"), "nosniff");
    for path in ["/v2/", "/", "/_ferry/status", "/healthz"] {
        let r = get(&format!("{}{path}", ferry.url()), &[]).await;
        assert_eq!(r.header("x-content-type-options"), "nosniff", "{path}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn referrers_answered_online_are_kept_for_offline() {
    const SBOM: &str = "application/vnd.example.sbom.v1";
    let registry = Registry::start(RegistryAuth::None);
    let lonely = push_image_http(&registry, "team/app", "v1", &[64]);
    let signed = push_image_http(&registry, "team/app", "v2", &[64]);
    let sbom = push_artifact_with_referrer(&registry, "team/app", &signed, SBOM);
    let ferry = FerryBuilder::new()
        .upstream(Upstream::local(&registry.url()))
        .start();
    let base = format!("{}/v2/{LOCAL}/team/app/referrers", ferry.url());
    // (query, how many referrers it lists)
    let queries = [
        (format!("{base}/{}", lonely.manifest_digest), 0),
        (
            format!("{base}/{}?artifactType={SBOM}", lonely.manifest_digest),
            0,
        ),
        (format!("{base}/{}", signed.manifest_digest), 1),
        (
            format!("{base}/{}?artifactType={SBOM}", signed.manifest_digest),
            1,
        ),
        (
            format!("{base}/{}?artifactType=other/x", signed.manifest_digest),
            0,
        ),
    ];
    let mut online = Vec::new();
    for (q, count) in &queries {
        let r = get(q, &[]).await;
        assert_eq!(r.status, 200, "{q}: {}", r.text());
        let v: Value = serde_json::from_slice(&r.body).expect("referrers JSON");
        let listed = v["manifests"].as_array().expect("manifests array");
        assert_eq!(listed.len(), *count, "{q}: {v}");
        if *count == 1 {
            assert_eq!(listed[0]["digest"], sbom.manifest_digest.as_str());
        }
        online.push(r.body);
    }

    drop(registry);
    let started = Instant::now();
    for ((q, _), before) in queries.iter().zip(&online) {
        let r = get(q, &[]).await;
        assert_eq!(r.status, 200, "{q} offline: {}", r.text());
        assert_eq!(&r.body, before, "{q}: the same answer offline");
        assert_eq!(r.header("content-type"), media::OCI_INDEX);
        assert!(
            matches!(r.x_cache(), "STALE" | "OFFLINE"),
            "{q}: X-Cache {}",
            r.x_cache()
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "offline answers took {:?}",
        started.elapsed()
    );
}
