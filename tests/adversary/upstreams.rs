//! What an upstream's answers can do to Ferry (issue 11, items 3, 5 and 9):
//!
//! - endless, dripping and 100 MiB token answers: memory stays bounded and the client
//!   gets a 502 naming the upstream within the read timeout (a 504 within connect and
//!   read timeout when the headers drip);
//! - a token realm on another host: Ferry's password does not go there unless the
//!   operator listed the host in `realm_hosts`;
//! - a redirect whose URL carries a signature (`sig=`, `se=`): when it fails, the
//!   signature shows nowhere, not in the client's error, Ferry's log, `/_ferry/status`
//!   or the status page.
//!
//! The hostile upstreams are small servers in this file ([`Hostile`]), on 127.0.0.1
//! (and 127.0.0.2 as "another host"): no real registry plays them. Each stops when dropped; every
//! stream they send is bounded in size and time.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::harness::ferry::{FerryBuilder, Upstream};
use crate::harness::hostile::Hostile;
use crate::harness::http::media;
use crate::harness::images::{PushedImage, push_image_http};
use crate::harness::registry::{Registry, RegistryAuth};
use crate::harness::token_server::{TokenServer, TokenServerOptions};
use crate::support::{Fetched, blob_url, get, manifest_url};

// ---------------------------------------------------------------------------------
// Item 3: token answers that never end, drip, or are huge.

/// How a hostile token endpoint answers.
#[derive(Clone, Copy, Debug)]
enum TokenAnswer {
    /// `{"token":"aaaa…` as fast as the connection takes it, never closed (up to
    /// [`ENDLESS_CAP`] or [`HOSTILE_STREAM_TIME`], to bound the test itself).
    Endless,
    /// `{"token":"aaaa…`, one byte every 100 ms: each read is quick, the whole is not.
    Drip,
    /// A complete, well-formed answer holding a 100 MiB token, with its
    /// `Content-Length`.
    Huge,
}

const ENDLESS_CAP: u64 = 1 << 30;
const HUGE_TOKEN: u64 = 100 << 20;
const HOSTILE_STREAM_TIME: Duration = Duration::from_secs(60);

/// A registry that answers every `/v2/` request `401 Bearer realm=<its own /token>`,
/// and its token endpoint answering as `answer` says.
fn token_registry(answer: TokenAnswer) -> Hostile {
    Hostile::http("127.0.0.1", |addr| {
        let challenge = format!(r#"Bearer realm="http://{addr}/token",service="hostile""#);
        axum::Router::new()
            .route(
                "/token",
                axum::routing::get(move || async move { token_answer(answer) }),
            )
            .fallback(move || {
                let challenge = challenge.clone();
                async move {
                    (
                        StatusCode::UNAUTHORIZED,
                        [
                            (header::WWW_AUTHENTICATE, challenge),
                            (header::CONTENT_TYPE, "application/json".to_owned()),
                        ],
                        r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
                    )
                }
            })
    })
}

fn token_answer(answer: TokenAnswer) -> Response {
    const CHUNK: usize = 64 << 10;
    let filler = Bytes::from(vec![b'a'; CHUNK]);
    let opening = Bytes::from_static(br#"{"token":""#);
    let started = Instant::now();
    let body = match answer {
        TokenAnswer::Endless => {
            let chunks = (0..ENDLESS_CAP / CHUNK as u64)
                .take_while(move |_| started.elapsed() < HOSTILE_STREAM_TIME)
                .map(move |_| Ok::<_, Infallible>(filler.clone()));
            Body::from_stream(futures_util::stream::iter(
                std::iter::once(Ok(opening)).chain(chunks),
            ))
        }
        TokenAnswer::Drip => {
            let drops = futures_util::stream::unfold((), move |()| async move {
                if started.elapsed() >= HOSTILE_STREAM_TIME {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                Some((Ok::<_, Infallible>(Bytes::from_static(b"a")), ()))
            });
            Body::from_stream(futures_util::StreamExt::chain(
                futures_util::stream::iter([Ok(opening)]),
                drops,
            ))
        }
        TokenAnswer::Huge => {
            let closing = Bytes::from_static(br#""}"#);
            let len = opening.len() as u64 + HUGE_TOKEN + closing.len() as u64;
            let chunks = (0..HUGE_TOKEN / CHUNK as u64).map(move |_| filler.clone());
            let parts = std::iter::once(opening)
                .chain(chunks)
                .chain(std::iter::once(closing))
                .map(Ok::<_, Infallible>);
            return (
                [
                    (header::CONTENT_TYPE, "application/json".to_owned()),
                    (header::CONTENT_LENGTH, len.to_string()),
                ],
                Body::from_stream(futures_util::stream::iter(parts)),
            )
                .into_response();
        }
    };
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// A registry like [`token_registry`] whose token endpoint sends its status line,
/// then its headers one byte every 100 ms. Plain TCP, as no HTTP server library
/// drips its headers.
fn header_drip_registry() -> Hostile {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    Hostile::spawn("127.0.0.1", |listener, addr| async move {
        for _ in 0..100 {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut head = vec![0u8; 8192];
                let mut n = 0;
                while n < head.len() && !head[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    let read =
                        tokio::time::timeout(Duration::from_secs(10), conn.read(&mut head[n..]));
                    match read.await {
                        Ok(Ok(m)) if m > 0 => n += m,
                        _ => return,
                    }
                }
                if head.starts_with(b"GET /token") {
                    let _ = conn.write_all(b"HTTP/1.1 200 OK\r\n").await;
                    let started = Instant::now();
                    while started.elapsed() < HOSTILE_STREAM_TIME {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        if conn.write_all(b"x").await.is_err() {
                            return;
                        }
                    }
                } else {
                    let answer = format!(
                        "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"http://{addr}/token\",service=\"hostile\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    );
                    let _ = conn.write_all(answer.as_bytes()).await;
                }
            });
        }
    })
}

/// The timeouts the token tests configure: a hostile answer must be cut within them.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread")]
async fn endless_dripping_and_huge_token_answers_are_cut() {
    // Name, server, and the status and code the client must get: a body past its
    // bounds is a 502; headers that never end are the upstream timing out, a 504.
    let upstreams = [
        (
            "endless",
            token_registry(TokenAnswer::Endless),
            502,
            "UNKNOWN",
        ),
        ("drip", token_registry(TokenAnswer::Drip), 502, "UNKNOWN"),
        ("huge", token_registry(TokenAnswer::Huge), 502, "UNKNOWN"),
        ("slowheaders", header_drip_registry(), 504, "UNAVAILABLE"),
    ];
    let mut builder = FerryBuilder::new();
    for (name, server, _, _) in &upstreams {
        builder = builder.upstream(
            Upstream::new(name, &format!("{name}.ferry-test.invalid"), &server.url())
                .raw(&format!("read_timeout = \"{}s\"", READ_TIMEOUT.as_secs()))
                .raw(&format!(
                    "connect_timeout = \"{}s\"",
                    CONNECT_TIMEOUT.as_secs()
                )),
        );
    }
    let mut ferry = builder.start();
    let pid = ferry.pid();
    let (rss_before, _) = super::memory_mib(pid);

    let pulls = upstreams.iter().map(|(name, _, status, code)| {
        let url = format!("{}/v2/{name}/team/app/manifests/v1", ferry.url());
        async move {
            let started = Instant::now();
            let r = get(&url, &[media::OCI_MANIFEST]).await;
            (*name, r, started.elapsed(), *status, *code)
        }
    });
    let results = futures_util::future::join_all(pulls).await;
    let (rss_after, hwm) = super::memory_mib(pid);
    eprintln!(
        "ferry's memory: VmRSS {rss_before} MiB before, {rss_after} MiB after; VmHWM {hwm} MiB"
    );
    for (name, r, elapsed, _, _) in &results {
        eprintln!("{name}: {} in {elapsed:?}: {}", r.status.as_u16(), r.text());
    }
    for (name, r, elapsed, status, code) in &results {
        let message = r.assert_error(*status, code);
        assert!(
            message.contains(&format!("upstream {name}")),
            "{name}: the error names the upstream: {message}"
        );
        // Connecting may take its own timeout before the read timeout starts.
        assert!(
            *elapsed < CONNECT_TIMEOUT + READ_TIMEOUT + Duration::from_secs(2),
            "{name}: answered after {elapsed:?}, read timeout {READ_TIMEOUT:?}"
        );
    }
    assert!(
        hwm < 128,
        "ferry's memory peaked at {hwm} MiB reading token answers"
    );
    ferry.assert_running();
}

// ---------------------------------------------------------------------------------
// Item 5: a token realm on another host.

const USER: &str = "ferry-bot";
const PASSWORD: &str = "Realm-S3cret-Pa55word-4b1e";

/// A Distribution with token auth whose realm (a token server that knows Ferry's
/// account) is on 127.0.0.2, another host than the registry on 127.0.0.1.
fn registry_with_foreign_realm() -> (TokenServer, Registry, PushedImage) {
    let tokens = TokenServer::start(TokenServerOptions {
        users: vec![
            ("pusher".to_owned(), "pusher-secret-pw".to_owned()),
            (USER.to_owned(), PASSWORD.to_owned()),
        ],
        host: "127.0.0.2".to_owned(),
        ..Default::default()
    });
    let registry = Registry::start(RegistryAuth::token(&tokens));
    let img = push_image_http(&registry, "team/app", "v1", &[4096]);
    (tokens, registry, img)
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_go_to_a_foreign_token_realm_only_when_listed() {
    let (tokens, registry, img) = registry_with_foreign_realm();
    assert!(tokens.realm().starts_with("http://127.0.0.2:"));

    // Not listed: nothing is sent there, and the client learns why.
    let seen_before = tokens.requests().len();
    let ferry = FerryBuilder::new()
        .upstream(Upstream::local(&registry.url()).basic_auth(USER, PASSWORD))
        .start();
    let m = get(
        &manifest_url(&ferry, "team/app", "v1"),
        &[media::OCI_MANIFEST],
    )
    .await;
    let message = m.assert_error(502, "UNKNOWN");
    assert!(
        message.contains("127.0.0.2") && message.contains("realm_hosts"),
        "the error names the host and the key to set: {message}"
    );
    let sent: Vec<_> = tokens.requests().into_iter().skip(seen_before).collect();
    assert!(
        sent.iter().all(|r| !r.had_credentials),
        "Ferry's credentials reached the foreign realm: {sent:?}"
    );
    // The log line may follow the response by a moment on a busy machine.
    assert!(
        ferry
            .wait_for_log(0, &["127.0.0.2"], std::time::Duration::from_secs(10))
            .is_some()
            && !ferry.log().contains(PASSWORD),
        "the refusal is logged, without the password"
    );
    drop(ferry);

    // Listed: the operator's word, and the pull works with Ferry's account.
    let seen_before = tokens.requests().len();
    let ferry = FerryBuilder::new()
        .upstream(
            Upstream::local(&registry.url())
                .basic_auth(USER, PASSWORD)
                .raw("realm_hosts = [\"127.0.0.2\"]"),
        )
        .start();
    let m = get(
        &manifest_url(&ferry, "team/app", "v1"),
        &[media::OCI_MANIFEST],
    )
    .await;
    assert_eq!(
        m.status,
        200,
        "manifest with the realm allowed: {}",
        m.text()
    );
    assert_eq!(m.body, img.manifest);
    let sent: Vec<_> = tokens.requests().into_iter().skip(seen_before).collect();
    assert!(
        !sent.is_empty() && sent.iter().all(|r| r.account.as_deref() == Some(USER)),
        "Ferry authenticated to the listed realm: {sent:?}"
    );
}

// ---------------------------------------------------------------------------------
// Item 9: a redirect URL's signature stays secret.

const SIG: &str = "c2lnbmF0dXJlU0VDUkVUZm9yVGhlQmxvYg";
const EXPIRY: &str = "2026-12-08T06Z";

/// A data endpoint on 127.0.0.2 that takes connections and closes them unanswered,
/// and a registry that redirects every blob request there with a signed URL, as ACR
/// and S3-backed registries do. Returns `(registry, data endpoint)`.
fn redirect_to_broken_data_endpoint() -> (Hostile, Hostile) {
    let data = Hostile::spawn("127.0.0.2", |listener, _| async move {
        for _ in 0..10_000 {
            match listener.accept().await {
                Ok((conn, _)) => drop(conn),
                Err(_) => return,
            }
        }
    });
    let data_addr = data.addr;
    let registry = Hostile::http("127.0.0.1", move |_| {
        axum::Router::new().fallback(move |req: Request| async move {
            let path = req.uri().path();
            if path == "/v2/" || path == "/v2" {
                return (StatusCode::OK, "{}").into_response();
            }
            if path.contains("/blobs/") {
                let location = format!(
                    "http://{data_addr}/docker/blob/data?sv=2024-11-04&se={EXPIRY}&sr=b&sp=r&sig={SIG}"
                );
                return (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, location)])
                    .into_response();
            }
            StatusCode::NOT_FOUND.into_response()
        })
    });
    (registry, data)
}

/// `text` holds none of the redirect's signed values.
fn assert_secret_free(what: &str, text: &str) {
    for secret in [SIG, EXPIRY] {
        assert!(
            !text.contains(secret),
            "{what} holds the redirect's signed value {secret}:\n{}",
            &text[..text.len().min(4000)]
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_redirects_signature_is_printed_nowhere() {
    let (registry, _data) = redirect_to_broken_data_endpoint();
    let ferry = FerryBuilder::new()
        .upstream(Upstream::local(&registry.url()))
        .start();
    let digest = format!("sha256:{}", "5".repeat(64));
    let r: Fetched = get(&blob_url(&ferry, "team/app", &digest), &[]).await;
    assert!(
        r.status.is_server_error(),
        "a blob whose data endpoint fails is a 5xx: {} {}",
        r.status,
        r.text()
    );
    let body = r.text();
    assert!(
        body.contains("sig=REDACTED"),
        "the error still says where Ferry went: {body}"
    );
    assert_secret_free("the client's error", &body);
    assert_secret_free("ferry's log", &ferry.log());
    let status = get(&format!("{}/_ferry/status", ferry.url()), &[]).await;
    assert_eq!(status.status, 200);
    assert_secret_free("/_ferry/status", &String::from_utf8_lossy(&status.body));
    let page = get(&format!("{}/", ferry.url()), &[]).await;
    assert_eq!(page.status, 200);
    let page = String::from_utf8_lossy(&page.body).into_owned();
    assert!(
        page.contains("sig=REDACTED"),
        "the status page shows the last error, redacted"
    );
    assert_secret_free("the status page", &page);
}
