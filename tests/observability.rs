//! What an operator watches, checked the way an operator would: `/metrics` scraped
//! after real pulls and passed through Prometheus' own `promtool`, `/healthz` and
//! `/readyz` on a store that fills up and an upstream that goes away, `X-Request-Id`
//! in responses and logs, and the status page at `/` as headless Chromium renders it.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::ferry::{Ferry, FerryBuilder, LOCAL, LOCAL_REGISTRY, Upstream};
use crate::harness::images::{PushedImage, push_image, push_image_http};
use crate::harness::process::{require_binary, run_ok, run_with_timeout};
use crate::harness::registry::{Registry, RegistryAuth};
use crate::harness::skopeo;
use crate::harness::smallfs::SmallFs;
use crate::harness::token_server::{TokenServer, TokenServerOptions};
use crate::support::{Fetched, blob_url, get, manifest_url, send};

/// A scrape: the text and every sample as `name{labels}` → value.
struct Scrape {
    text: String,
    samples: HashMap<String, f64>,
}

impl Scrape {
    /// The sample `key` (`name{labels}` exactly as exposed); panics if absent, so a
    /// renamed metric fails loudly instead of reading as zero.
    fn get(&self, key: &str) -> f64 {
        *self
            .samples
            .get(key)
            .unwrap_or_else(|| panic!("no sample {key} in /metrics:\n{}", self.text))
    }
}

async fn scrape(ferry: &Ferry) -> Scrape {
    let r = get(&format!("{}/metrics", ferry.url()), &[]).await;
    assert_eq!(r.status, 200, "GET /metrics: {}", r.text());
    assert!(
        r.header("content-type")
            .starts_with("text/plain; version=0.0.4"),
        "a plain scrape gets the Prometheus text format: {}",
        r.header("content-type")
    );
    let text = String::from_utf8(r.body).expect("metrics are text");
    let samples = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (key, value) = l.rsplit_once(' ').expect("sample line");
            (key.to_owned(), value.parse::<f64>().expect("sample value"))
        })
        .collect();
    Scrape { text, samples }
}

/// `skopeo copy docker://<ferry>/local/<reference> dir:<dest>`: a real client's pull.
fn skopeo_pull(ferry: &Ferry, reference: &str, dest: &Path) {
    let mut cmd = skopeo::copy();
    cmd.arg(format!("docker://{}/{LOCAL}/{reference}", ferry.addr()));
    cmd.arg(format!("dir:{}", dest.display()));
    run_ok(cmd, Duration::from_secs(120));
}

/// Manifest, config and layers: what one pull of `img` moves.
fn image_bytes(img: &PushedImage) -> u64 {
    img.manifest.len() as u64 + img.blobs().iter().map(|b| b.size).sum::<u64>()
}

/// `promtool check metrics` (Debian's `prometheus`) on `text`: parses and lints it.
fn promtool_check(text: &str) {
    let promtool = require_binary("promtool", "prometheus");
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("promtool wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("promtool still running after 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("promtool output");
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}\n{}{}\non:\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_what_a_pull_did_and_pass_promtool() {
    let registry = Registry::start(RegistryAuth::None);
    let ferry = FerryBuilder::new()
        .upstream(Upstream::local(&registry.url()))
        .env("FERRY_STORAGE_MAX_SIZE", "1GiB")
        .start();
    let img = push_image(&registry, "team/observed", "v1", &[1 << 20, 300_000]);
    let total = image_bytes(&img) as f64;
    let blobs = img.blobs().len() as f64;

    let before = scrape(&ferry).await;
    assert_eq!(before.get("ferry_store_bytes"), 0.0);
    assert_eq!(before.get("ferry_store_max_bytes"), (1u64 << 30) as f64);
    assert_eq!(before.get("ferry_upstream_up{upstream=\"local\"}"), 1.0);
    assert_eq!(before.get("ferry_inflight_fetches"), 0.0);

    let dir = crate::harness::temp_dir("observed");
    skopeo_pull(&ferry, "team/observed:v1", &dir.path().join("first"));
    let cold = scrape(&ferry).await;
    assert_eq!(
        cold.get("ferry_cache_results_total{kind=\"manifest\",result=\"miss\"}"),
        1.0
    );
    assert_eq!(
        cold.get("ferry_cache_results_total{kind=\"blob\",result=\"miss\"}"),
        blobs
    );
    assert_eq!(
        cold.get("ferry_cache_results_total{kind=\"blob\",result=\"hit\"}"),
        0.0
    );
    assert_eq!(
        cold.get("ferry_upstream_bytes_total{upstream=\"local\"}"),
        total,
        "fetched from the upstream: exactly the image's bytes"
    );
    assert_eq!(cold.get("ferry_served_bytes_total{result=\"miss\"}"), total);
    assert_eq!(cold.get("ferry_store_bytes"), total);
    assert_eq!(cold.get("ferry_store_blobs"), blobs + 1.0);
    assert_eq!(cold.get("ferry_inflight_fetches"), 0.0);
    assert!(
        cold.get("ferry_http_requests_total{route=\"blob\",method=\"GET\",status=\"200\"}")
            >= blobs
    );
    assert!(
        cold.get("ferry_upstream_request_duration_seconds_count{upstream=\"local\"}")
            >= blobs + 1.0
    );

    skopeo_pull(&ferry, "team/observed:v1", &dir.path().join("second"));
    let warm = scrape(&ferry).await;
    assert_eq!(
        warm.get("ferry_cache_results_total{kind=\"blob\",result=\"hit\"}"),
        blobs,
        "the second pull came from the cache"
    );
    assert_eq!(
        warm.get("ferry_cache_results_total{kind=\"manifest\",result=\"hit\"}"),
        1.0
    );
    assert_eq!(warm.get("ferry_served_bytes_total{result=\"hit\"}"), total);
    assert_eq!(
        warm.get("ferry_upstream_bytes_total{upstream=\"local\"}"),
        total,
        "nothing more fetched"
    );
    promtool_check(&warm.text);

    // A scraper that asks for OpenMetrics (Prometheus does) gets it.
    let open = get(
        &format!("{}/metrics", ferry.url()),
        &["application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"],
    )
    .await;
    assert!(
        open.header("content-type")
            .starts_with("application/openmetrics-text"),
        "{}",
        open.header("content-type")
    );
    let open_text = String::from_utf8_lossy(&open.body);
    assert!(
        open_text.contains("ferry_cache_results_total{kind="),
        "{open_text}"
    );
    assert!(open.body.ends_with(b"# EOF\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_hangs_up_is_not_counted_for_the_whole_blob() {
    let registry = Registry::start(RegistryAuth::None);
    let ferry = FerryBuilder::new()
        .upstream(Upstream::local(&registry.url()))
        .start();
    let img = push_image_http(&registry, "team/big", "v1", &[32 << 20]);
    let layer = img.largest_layer();
    let url = blob_url(&ferry, "team/big", &layer.digest);
    assert_eq!(
        get(&url, &[]).await.body.len() as u64,
        layer.size,
        "cold GET"
    );
    let hit = "ferry_served_bytes_total{result=\"hit\"}";
    assert_eq!(scrape(&ferry).await.get(hit), 0.0);

    // Read 1 MiB of the now cached blob, then hang up.
    let mut resp = crate::harness::http::client()
        .get(&url)
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.headers()["x-cache"], "HIT");
    let mut read = 0;
    while read < 1 << 20 {
        read += resp.chunk().await.expect("chunk").expect("more body").len();
    }
    drop(resp);

    // Ferry notices when a write fails; wait until the count stops moving.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = -1.0;
    let counted = loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = scrape(&ferry).await.get(hit);
        if now == last || Instant::now() > deadline {
            break now;
        }
        last = now;
    };
    assert!(
        counted >= read as f64 && counted < layer.size as f64 / 2.0,
        "served bytes for a client that read {read} of {} bytes and hung up: {counted}",
        layer.size
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn request_ids_are_returned_and_logged() {
    let registry = Registry::start(RegistryAuth::None);
    let ferry = FerryBuilder::new()
        .upstream(Upstream::local(&registry.url()))
        .start();
    let with_id = |id: &'static str| {
        let url = manifest_url(&ferry, "team/absent", "v1");
        async move { send(reqwest::Method::GET, &url, &[], &[("x-request-id", id)]).await }
    };
    let kept = with_id("deploy-42.pull_7").await;
    kept.assert_error(404, "MANIFEST_UNKNOWN");
    assert_eq!(kept.header("x-request-id"), "deploy-42.pull_7");
    // The log comes through a pipe, after the response: wait for it (bounded).
    assert!(
        ferry
            .wait_for_log(
                0,
                &["deploy-42.pull_7", "request refused"],
                std::time::Duration::from_secs(5)
            )
            .is_some(),
        "the request's log line carries its id:\n{}",
        ferry.log()
    );

    let long: &'static str = Box::leak("a".repeat(129).into_boxed_str());
    for insane in ["has space", "quote\"and<tag>", long] {
        let r = with_id(insane).await;
        let id = r.header("x-request-id");
        assert!(
            !id.is_empty() && id != insane && id.len() <= 128,
            "an id {insane:?} is replaced: {id:?}"
        );
    }
    let a = get(&format!("{}/v2/", ferry.url()), &[]).await;
    let b = get(&format!("{}/healthz", ferry.url()), &[]).await;
    let (a, b) = (a.header("x-request-id"), b.header("x-request-id"));
    assert!(!a.is_empty() && !b.is_empty() && a != b, "{a} {b}");
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_follows_the_store_not_the_upstream() {
    let fs = SmallFs::mount(16 << 20);
    let registry = Registry::start(RegistryAuth::None);
    let ferry = FerryBuilder::new()
        .upstream(Upstream::local(&registry.url()))
        .storage_root(&fs.path().join("store"))
        .start();
    let healthz = format!("{}/healthz", ferry.url());
    let readyz = format!("{}/readyz", ferry.url());
    let ok = get(&healthz, &[]).await;
    assert_eq!((ok.status.as_u16(), ok.text().as_str()), (200, "ok\n"));
    assert_eq!(get(&readyz, &[]).await.status, 200);

    let filler = fs.fill_leaving("filler", 0);
    for _ in 0..3 {
        let r = get(&readyz, &[]).await;
        assert_eq!(r.status, 503, "a full store is not ready: {}", r.text());
        assert!(
            r.text().contains("not writable") && r.text().contains("No space left"),
            "says why: {}",
            r.text()
        );
        assert_eq!(get(&healthz, &[]).await.status, 200, "but alive");
    }
    let warnings = ferry
        .log()
        .lines()
        .filter(|l| l.contains("not ready: the store is not writable"))
        .count();
    assert_eq!(warnings, 1, "logged once, not per probe:\n{}", ferry.log());

    std::fs::remove_file(&filler).expect("remove the filler");
    assert_eq!(get(&readyz, &[]).await.status, 200, "space again: ready");

    drop(registry);
    let pull = get(&manifest_url(&ferry, "team/any", "v1"), &[]).await;
    assert!(pull.status.is_server_error(), "the upstream is gone");
    let r = get(&readyz, &[]).await;
    assert_eq!(r.status, 200, "upstream down, still ready: {}", r.text());
    drop(ferry);
}

/// The visible text of `html`: tags dropped, entities decoded, whitespace collapsed.
fn visible_text(html: &str) -> String {
    let body = html.split("</style>").last().unwrap_or(html);
    let mut out = String::new();
    let mut in_tag = false;
    for c in body.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                out.push(' ');
            }
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    let out = out
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&");
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Headless Chromium (Debian's `chromium`) on `url` with `args`; bounded, and killed
/// by PID if it overruns.
fn chromium(url: &str, args: &[&str]) -> std::process::Output {
    let profile = crate::harness::temp_dir("chromium");
    let mut cmd = Command::new(require_binary("chromium", "chromium"));
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(args)
    .arg(url);
    let out = run_with_timeout(cmd, Duration::from_secs(90));
    assert!(
        out.status.success(),
        "chromium {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn status_page_shows_a_person_what_the_cache_does() {
    let registry = Registry::start(RegistryAuth::None);
    let ferry = FerryBuilder::new()
        .upstream(Upstream::local(&registry.url()).raw("offline_after_failures = 1"))
        .env("FERRY_STORAGE_MAX_SIZE", "1GiB")
        .start();
    let img = push_image_http(&registry, "team/web", "v1", &[2 << 20, 500_000]);
    // Pulled twice: four misses (manifest, config, two layers), then four hits.
    for _ in 0..2 {
        let m = get(
            &manifest_url(&ferry, "team/web", "v1"),
            &[img.media_type.as_str()],
        )
        .await;
        assert_eq!(m.status, 200);
        for b in img.blobs() {
            let r: Fetched = get(&blob_url(&ferry, "team/web", &b.digest), &[]).await;
            assert_eq!(r.body.len() as u64, b.size);
        }
    }
    // The upstream goes away; the next miss finds out.
    drop(registry);
    let gone = get(&manifest_url(&ferry, "team/other", "v1"), &[]).await;
    assert!(gone.status.is_server_error(), "{}", gone.text());

    let m = scrape(&ferry).await;
    assert_eq!(m.get("ferry_upstream_up{upstream=\"local\"}"), 0.0);
    assert!(m.get("ferry_upstream_errors_total{upstream=\"local\",kind=\"unreachable\"}") >= 1.0);

    let url = format!("http://{}/", ferry.addr());
    let dom = String::from_utf8(chromium(&url, &["--dump-dom"]).stdout).expect("utf-8 DOM");
    let text = visible_text(&dom);
    let image = format!("{LOCAL_REGISTRY}/team/web");
    for want in [
        "Hit ratio 50.0% 4 of 8 manifest and blob requests served from the cache",
        &format!("{image} 2"),
        "offline since",
        "upstream local is unreachable",
        "1 of 1 cached images complete",
        &format!("{image}:v1"),
        "of 1 GiB quota",
    ] {
        assert!(
            text.contains(want),
            "the page shows {want:?}; it shows:\n{text}"
        );
    }

    let shots = crate::harness::temp_dir("status-page");
    let png = shots.path().join("status-page.png");
    chromium(
        &url,
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=1200,900",
            "--hide-scrollbars",
        ],
    );
    let bytes = std::fs::read(&png).expect("chromium wrote the screenshot");
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 10_000,
        "a real screenshot ({} bytes)",
        bytes.len()
    );
    // `STATUS_PAGE_SCREENSHOT=docs/status-page.png` refreshes the README's picture.
    if let Ok(dest) = std::env::var("STATUS_PAGE_SCREENSHOT") {
        std::fs::copy(&png, &dest).expect("copy the screenshot");
    }
}

/// Pulls `img` (manifest, then every blob) through Ferry with plain GETs.
async fn pull(ferry: &Ferry, img: &PushedImage) {
    let m = get(
        &manifest_url(ferry, &img.repo, &img.tag),
        &[img.media_type.as_str()],
    )
    .await;
    assert_eq!(m.status, 200, "{}", m.text());
    for b in img.blobs() {
        let r = get(&blob_url(ferry, &img.repo, &b.digest), &[]).await;
        assert_eq!(r.body.len() as u64, b.size);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn token_fetches_and_refusals_are_counted() {
    let tokens = TokenServer::start(TokenServerOptions {
        users: vec![
            ("pusher".to_owned(), "pusher-secret-pw".to_owned()),
            ("puller".to_owned(), "puller-secret-pw".to_owned()),
        ],
        ..Default::default()
    });
    let registry = Registry::start(RegistryAuth::token(&tokens));
    let img = push_image_http(&registry, "team/tokens", "v1", &[200_000]);
    let seen_before = tokens.requests().len();
    let ferry = FerryBuilder::new()
        .upstream(Upstream::local(&registry.url()).basic_auth("puller", "puller-secret-pw"))
        .start();
    pull(&ferry, &img).await;
    let issued = tokens.requests()[seen_before..]
        .iter()
        .filter(|r| r.status == 200)
        .count();
    assert!(issued >= 1);
    let m = scrape(&ferry).await;
    assert_eq!(
        m.get("ferry_token_refreshes_total{upstream=\"local\",result=\"ok\"}"),
        issued as f64,
        "one count per token the realm issued to Ferry"
    );
    assert_eq!(
        m.get("ferry_token_refreshes_total{upstream=\"local\",result=\"error\"}"),
        0.0
    );

    let refused = FerryBuilder::new()
        .upstream(Upstream::local(&registry.url()).basic_auth("puller", "not-the-password"))
        .start();
    let r = get(
        &manifest_url(&refused, "team/tokens", "v1"),
        &[img.media_type.as_str()],
    )
    .await;
    r.assert_error(401, "UNAUTHORIZED");
    let m = scrape(&refused).await;
    assert_eq!(
        m.get("ferry_token_refreshes_total{upstream=\"local\",result=\"error\"}"),
        1.0
    );
    assert_eq!(
        m.get("ferry_upstream_errors_total{upstream=\"local\",kind=\"auth\"}"),
        1.0
    );
    assert_eq!(
        m.get("ferry_upstream_up{upstream=\"local\"}"),
        1.0,
        "a refusal is an answer: the upstream is up"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn evictions_for_the_quota_are_counted() {
    let registry = Registry::start(RegistryAuth::None);
    let ferry = FerryBuilder::new()
        .upstream(Upstream::local(&registry.url()))
        .env("FERRY_STORAGE_MAX_SIZE", "3MiB")
        .start();
    let max = (3u64 << 20) as f64;
    for i in 0..3 {
        let img = push_image_http(&registry, &format!("team/evicted{i}"), "v1", &[1 << 20]);
        pull(&ferry, &img).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let m = loop {
        let m = scrape(&ferry).await;
        if m.get("ferry_evictions_total") >= 1.0 && m.get("ferry_store_bytes") <= max {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "no eviction counted within 30 s:\n{}",
            m.text
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(m.get("ferry_evicted_bytes_total") >= (1u64 << 20) as f64);
    assert_eq!(m.get("ferry_store_max_bytes"), max);
    // The running count agrees with what is on disk.
    let on_disk: u64 = crate::support::files_under(&ferry.storage_root().join("blobs"))
        .iter()
        .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .sum();
    assert_eq!(m.get("ferry_store_bytes"), on_disk as f64);
}
