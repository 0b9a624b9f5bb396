//! What an upstream's answers can do to Ferry (issue 11, items 3, 5 and 9):
//!
//! - endless, dripping and 100 MiB token answers: memory stays bounded and the client
//!   gets a 502 naming the upstream within the read timeout;
//! - a token realm on another host: Ferry's password does not go there unless the
//!   operator listed the host in `realm_hosts`;
//! - a redirect whose URL carries a signature (`sig=`, `se=`): when it fails, the
//!   signature shows nowhere, not in the client's error, Ferry's log, `/_ferry/status`
//!   or the status page.
//!
//! The hostile upstreams are small servers in this file, on 127.0.0.1 (and 127.0.0.2
//! as "another host"): no real registry plays them. Each stops when dropped; every
//! stream they send is bounded in size and time.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::harness::ferry::{FerryBuilder, Upstream};
use crate::harness::http::media;
use crate::harness::images::{PushedImage, push_image_http};
use crate::harness::registry::{Registry, RegistryAuth};
use crate::harness::token_server::{TokenServer, TokenServerOptions};
use crate::support::{Fetched, blob_url, get, manifest_url};

/// A server on `host:0` in its own runtime; stops when dropped.
struct Hostile {
    addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Hostile {
    /// Runs `serve` on a listener bound to `host:0`.
    fn spawn<F>(host: &str, serve: impl FnOnce(tokio::net::TcpListener, SocketAddr) -> F) -> Hostile
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let listener = std::net::TcpListener::bind((host, 0))
            .unwrap_or_else(|e| panic!("bind a hostile server on {host}:0: {e}"));
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local_addr");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("hostile-upstream")
            .enable_all()
            .build()
            .expect("hostile server runtime");
        let listener = {
            let _in_runtime = runtime.enter();
            tokio::net::TcpListener::from_std(listener).expect("tokio listener")
        };
        runtime.spawn(serve(listener, addr));
        Hostile {
            addr,
            runtime: Some(runtime),
        }
    }

    /// An HTTP server answering with the router `app` builds for its address.
    fn http(host: &str, app: impl FnOnce(SocketAddr) -> axum::Router) -> Hostile {
        Hostile::spawn(host, |listener, addr| {
            let app = app(addr);
            async move {
                let _ = axum::serve(listener, app).await;
            }
        })
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
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
