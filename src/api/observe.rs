//! Watching a running Ferry: the request id and the metrics every request gets, and
//! the endpoints that operators and orchestrators poll: `/metrics`, `/healthz` (the
//! process answers) and `/readyz` (the store is writable; never the upstreams, since
//! Ferry serves from its cache while they are down).

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, TryStreamExt};
use http::{HeaderMap, HeaderValue, StatusCode};
use tracing::Instrument;

use crate::metrics::Route;
use crate::proxy::{CacheStatus, Proxy};

pub const REQUEST_ID: &str = "x-request-id";
/// The longest request id taken from a client.
const MAX_REQUEST_ID: usize = 128;

/// The outermost layer: gives the request an id (the client's, if sane), runs it in a
/// span carrying that id (so every log line of the request has `request_id`), returns
/// the id in `X-Request-Id`, and counts the request by route, method and status.
pub async fn observe(State(proxy): State<Arc<Proxy>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = req
        .headers()
        .get(REQUEST_ID)
        .filter(|v| is_sane(v.as_bytes()))
        .cloned()
        .unwrap_or_else(new_request_id);
    let route = route_of(req.uri().path());
    let method = req.method().clone();
    // Error level: a span is recorded only when its level is enabled, and the id must
    // be on the request's warnings even when the log is set to `warn`.
    let span = tracing::error_span!("request", request_id = id.to_str().unwrap_or_default());
    let mut resp = next.run(req).instrument(span).await;
    proxy
        .metrics()
        .request(route, &method, resp.status().as_u16(), started.elapsed());
    resp.headers_mut().insert(REQUEST_ID, id);
    resp
}

/// A client's id is kept if it is 1 to 128 characters of `[A-Za-z0-9._-]`: safe in
/// logs and headers as it is.
fn is_sane(id: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A fresh id: a random per-process prefix and a counter, unique across restarts
/// without a system call per request.
fn new_request_id() -> HeaderValue {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let prefix =
        *PREFIX.get_or_init(|| getrandom::u64().unwrap_or_else(|_| std::process::id().into()));
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    HeaderValue::from_str(&format!("{prefix:016x}-{n:08x}")).expect("hex is a header value")
}

/// The `route` label for `path`. Mirrors [`super::path`] on the last two segments,
/// without validating names: a label, not a decision.
fn route_of(path: &str) -> Route {
    match path {
        "/" => return Route::Page,
        "/metrics" => return Route::Metrics,
        "/_ferry/status" => return Route::Status,
        "/v2" | "/v2/" => return Route::Version,
        _ => {}
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return Route::Other;
    };
    let mut segs = rest.rsplit('/');
    let (last, kind) = (segs.next(), segs.next());
    match (kind, last) {
        (Some("tags"), Some("list")) => Route::Tags,
        (Some("manifests"), _) => Route::Manifest,
        (Some("blobs"), Some(last)) if last != "uploads" => Route::Blob,
        (Some("referrers"), _) => Route::Referrers,
        _ => Route::Other,
    }
}

/// A response body that counts its bytes in `ferry_served_bytes_total` as they are
/// handed to the connection: a client that hangs up mid-blob is not counted in full.
/// One atomic add per chunk.
pub fn counted_body<S>(proxy: &Proxy, cache: CacheStatus, stream: S) -> Body
where
    S: Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static,
{
    let served = proxy.metrics().served(cache).clone();
    Body::from_stream(stream.inspect_ok(move |chunk| {
        served.inc_by(chunk.len() as u64);
    }))
}

/// `GET /metrics`: OpenMetrics for scrapers that ask for it (Prometheus does), else the
/// Prometheus text format 0.0.4.
pub async fn metrics(State(proxy): State<Arc<Proxy>>, headers: HeaderMap) -> Response {
    let openmetrics = headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    let (body, content_type) = proxy.metrics().encode(openmetrics);
    ([(http::header::CONTENT_TYPE, content_type)], body).into_response()
}

/// `GET /healthz`: the process is alive and serving HTTP.
pub async fn healthz() -> Response {
    text(StatusCode::OK, "ok\n".to_string())
}

/// `GET /readyz`: 200 while the store is writable, else 503 with the reason.
pub async fn readyz(State(proxy): State<Arc<Proxy>>) -> Response {
    match proxy.ready().await {
        Ok(()) => text(StatusCode::OK, "ready\n".to_string()),
        Err(why) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids() {
        assert!(is_sane(b"abc-DEF_1.2"));
        assert!(is_sane("a".repeat(128).as_bytes()));
        assert!(!is_sane("a".repeat(129).as_bytes()));
        assert!(!is_sane(b""));
        assert!(!is_sane(b"a b"));
        assert!(!is_sane(b"a\"<script>"));
        let (a, b) = (new_request_id(), new_request_id());
        assert_ne!(a, b);
        assert!(is_sane(a.as_bytes()));
    }

    #[test]
    fn routes() {
        let d = format!("sha256:{}", "a".repeat(64));
        for (path, route) in [
            ("/", Route::Page),
            ("/metrics", Route::Metrics),
            ("/healthz", Route::Other),
            ("/_ferry/status", Route::Status),
            ("/v2/", Route::Version),
            ("/v2/library/nginx/manifests/1.27", Route::Manifest),
            (&format!("/v2/a/b/c/blobs/{d}"), Route::Blob),
            ("/v2/a/blobs/uploads/", Route::Other),
            ("/v2/a/blobs/uploads/1234", Route::Other),
            ("/v2/a/tags/list", Route::Tags),
            (&format!("/v2/a/referrers/{d}"), Route::Referrers),
            ("/v2/_catalog", Route::Other),
        ] {
            assert_eq!(route_of(path), route, "{path}");
        }
    }
}
