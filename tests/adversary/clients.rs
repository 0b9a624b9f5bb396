//! What an anonymous client can do to other clients (issue 11, items 1 and 10).
//!
//! - It cannot open the circuit breaker: any client can make Distribution answer 500
//!   (a layer's digest asked for as a manifest), and that is that request's error,
//!   not evidence that the upstream is down; other clients' cold pulls keep working.
//! - A rate-limiting upstream cannot park a client's request: the waits its
//!   `Retry-After` asks for (seconds or an HTTP date) are honoured up to a total
//!   bound, then the client gets 429 with a `Retry-After` in sane seconds.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::harness::ferry::{Ferry, FerryBuilder, LOCAL, Upstream};
use crate::harness::http::{media, oci_error};
use crate::harness::images::{PushedImage, push_image_http};
use crate::harness::process::{run_with_timeout, tail_str};
use crate::harness::registry::{Registry, RegistryAuth};
use crate::harness::skopeo;
use crate::support::{get, manifest_url};

const PULLS: usize = 10;
/// The issue's attack: one request every 0.5 s for 20 s, the pulls spread over it.
const ATTACK_EVERY: Duration = Duration::from_millis(500);
const ATTACK_FOR: Duration = Duration::from_secs(20);

/// `skopeo copy` of `img` through Ferry into a fresh `dir:`; `Err(stderr)` if it fails.
fn pull(ferry: &Ferry, img: &PushedImage) -> Result<(), String> {
    let dest = crate::harness::temp_dir("skopeo-dir");
    let mut cmd = skopeo::copy();
    cmd.arg(format!(
        "docker://{}/{LOCAL}/{}",
        ferry.addr(),
        img.reference()
    ));
    cmd.arg(format!("dir:{}", dest.path().join("img").display()));
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    for blob in img.blobs() {
        let path = dest
            .path()
            .join("img")
            .join(crate::harness::digest_hex(&blob.digest));
        if std::fs::read(&path).ok().as_deref() != Some(blob.bytes.as_slice()) {
            return Err(format!("{} missing or wrong in the copy", blob.digest));
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_provoking_upstream_500s_does_not_cut_off_other_clients() {
    let registry = Registry::start(RegistryAuth::None);
    let images: Vec<PushedImage> = (0..PULLS)
        .map(|i| push_image_http(&registry, &format!("team/app{i}"), "v1", &[4 << 10]))
        .collect();
    let ferry = FerryBuilder::new()
        .upstream(Upstream::local(&registry.url()).raw("offline_after_failures = 1"))
        .start();

    // The attack: a layer's digest asked for as a manifest, which Distribution answers
    // with 500 (checked first, directly).
    let layer = &images[0].layers[0].digest;
    let direct = get(
        &format!("{}/v2/team/app0/manifests/{layer}", registry.url()),
        &[media::OCI_MANIFEST],
    )
    .await;
    assert_eq!(direct.status, 500, "Distribution: {}", direct.text());
    let attack_url = manifest_url(&ferry, "team/app0", layer);
    let stop = Arc::new(AtomicBool::new(false));
    let attacks = Arc::new(AtomicUsize::new(0));
    let attacker = tokio::spawn({
        let (stop, attacks) = (stop.clone(), attacks.clone());
        async move {
            let started = Instant::now();
            let mut statuses = Vec::new();
            while !stop.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(120) {
                let r = get(&attack_url, &[media::OCI_MANIFEST]).await;
                statuses.push((r.status.as_u16(), oci_error(&r.body).1));
                attacks.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(ATTACK_EVERY).await;
            }
            statuses
        }
    });

    // The pulls are spread over the attack, and each starts right after an attack was
    // answered: the moment the old breaker was open.
    let started = Instant::now();
    let mut failures = Vec::new();
    for (i, img) in images.iter().enumerate() {
        let slot = ATTACK_FOR * i as u32 / PULLS as u32;
        if let Some(wait) = slot.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        let seen = attacks.load(Ordering::SeqCst);
        let wait_from = Instant::now();
        while attacks.load(Ordering::SeqCst) == seen {
            assert!(
                wait_from.elapsed() < Duration::from_secs(10),
                "the attacker stalled"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let ferry_ref = &ferry;
        if let Err(e) = tokio::task::block_in_place(|| pull(ferry_ref, img)) {
            failures.push(format!("{}: {}", img.reference(), tail_str(&e, 3)));
        }
    }
    let pulls_took = started.elapsed();
    if let Some(rest) = ATTACK_FOR.checked_sub(started.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    stop.store(true, Ordering::SeqCst);
    let statuses = attacker.await.expect("attacker");
    eprintln!(
        "{PULLS} cold skopeo pulls in {pulls_took:?} under {} attacks: {} failed",
        statuses.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {PULLS} cold pulls failed under the attack:\n{}\n--- ferry log ---\n{}",
        failures.len(),
        failures.join("\n"),
        tail_str(&ferry.log(), 30)
    );
    assert!(
        statuses.len() >= 2 * PULLS,
        "the attack ran only {} times in {ATTACK_FOR:?}",
        statuses.len()
    );
    // The attacker itself got its own request's error: a 5xx naming the upstream.
    for (status, message) in &statuses {
        assert_eq!(*status, 502, "the attacker's answer: {message}");
        assert!(message.contains("500"), "{message}");
    }
    assert!(
        !ferry.log().contains("serving from cache and probing"),
        "the upstream was marked offline:\n{}",
        tail_str(&ferry.log(), 30)
    );
}

/// How the hostile upstream answers manifest requests, chosen by the repository's
/// first path component.
#[derive(Default)]
struct RateLimiter {
    /// `(path, when)` of every manifest request.
    seen: Mutex<Vec<(String, Instant)>>,
}

async fn rate_limit(State(s): State<Arc<RateLimiter>>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    if path == "/v2/" {
        return (StatusCode::OK, "{}").into_response();
    }
    s.seen.lock().unwrap().push((path.clone(), Instant::now()));
    let retry_after = match path.split('/').nth(2).unwrap_or("") {
        // A date two seconds ahead (one-second resolution: a wait of 1–2 s).
        "date" => httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(2)),
        "far-date" => httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(3600)),
        "huge" => "99999".to_string(),
        "eight" => "8".to_string(),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    (
        StatusCode::TOO_MANY_REQUESTS,
        [
            (header::RETRY_AFTER, retry_after),
            (header::CONTENT_TYPE, "application/json".to_string()),
        ],
        r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}"#,
    )
        .into_response()
}

/// Starts the rate-limiting upstream on 127.0.0.1; it stops with the runtime the
/// test runs on.
async fn start_rate_limiter() -> (String, Arc<RateLimiter>) {
    let state = Arc::new(RateLimiter::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .fallback(rate_limit)
        .with_state(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, state)
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limits_are_waited_out_within_a_bound_then_passed_on_with_a_sane_retry_after() {
    let (url, upstream) = start_rate_limiter().await;
    let ferry = FerryBuilder::new().upstream(Upstream::local(&url)).start();

    let ask = |repo: &'static str| {
        let url = manifest_url(&ferry, &format!("{repo}/app"), "v1");
        async move {
            let started = Instant::now();
            let r = get(&url, &[media::OCI_MANIFEST]).await;
            (repo, r, started.elapsed())
        }
    };
    let answers = tokio::join!(ask("date"), ask("far-date"), ask("huge"), ask("eight"));
    let seen = upstream.seen.lock().unwrap().clone();
    let asked = |repo: &str| -> Vec<Instant> {
        seen.iter()
            .filter(|(p, _)| p.starts_with(&format!("/v2/{repo}/")))
            .map(|(_, t)| *t)
            .collect()
    };
    for (repo, r, took) in [answers.0, answers.1, answers.2, answers.3] {
        let times = asked(repo);
        let retry_after = r.header("retry-after").to_string();
        eprintln!(
            "{repo}: {} after {took:?}, Retry-After {retry_after:?}, upstream asked {} times",
            r.status,
            times.len()
        );
        let message = r.assert_error(429, "TOOMANYREQUESTS");
        assert!(message.contains(LOCAL), "names the upstream: {message}");
        let secs: u64 = retry_after.parse().unwrap_or_else(|_| {
            panic!("{repo}: Retry-After {retry_after:?} is not a number of seconds")
        });
        assert!(
            (1..=60).contains(&secs),
            "{repo}: Retry-After {secs} s is not a sane wait"
        );
        assert!(
            took < Duration::from_secs(15 + 3),
            "{repo}: the client waited {took:?}, past the 15 s bound"
        );
        match repo {
            // The date was read: Ferry waited it out (1–2 s) before each retry.
            "date" => {
                assert!(times.len() >= 2, "{repo}: Ferry did not retry");
                for w in times.windows(2) {
                    let gap = w[1] - w[0];
                    assert!(
                        gap >= Duration::from_millis(900),
                        "{repo}: retried after {gap:?}, before the date"
                    );
                }
            }
            // Waits past the bound are not waited at all: the client hears at once.
            "far-date" | "huge" => {
                assert_eq!(
                    times.len(),
                    1,
                    "{repo}: Ferry retried a wait past the bound"
                );
                // Well below the 8 s that `eight` does wait: no wait at all, with a
                // margin for a loaded machine.
                assert!(took < Duration::from_secs(8), "{repo}: took {took:?}");
                assert_eq!(secs, 60, "{repo}: the long wait is clamped");
            }
            // 8 s, then 8 more would pass 15 s: one wait, then the 429.
            "eight" => {
                assert_eq!(
                    times.len(),
                    2,
                    "{repo}: upstream asked {} times",
                    times.len()
                );
                assert!(took >= Duration::from_secs(8), "{repo}: took {took:?}");
                assert_eq!(secs, 8, "{repo}");
            }
            _ => unreachable!(),
        }
    }
    assert!(
        !ferry.log().contains("serving from cache and probing"),
        "429s are answers: the upstream is there"
    );
}
