use std::sync::Arc;

use axum::body::Body;
use axum::response::Response;
use http::{HeaderMap, StatusCode};

use ferry_oci::Digest;

use super::observe::counted_body;
use super::{ApiError, build, content_headers};
use crate::metrics::Kind;
use crate::proxy::{Blob, ByteRange, Proxy, Target};

/// `GET`/`HEAD /v2/<name>/blobs/<digest>`, with single `Range` requests.
pub async fn get(
    proxy: &Arc<Proxy>,
    target: &Target,
    digest: &Digest,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response, ApiError> {
    let range = range(headers);
    let blob = proxy.blob(target, digest, range, !head).await?;
    proxy.metrics().cache_result(Kind::Blob, blob.cache);
    Ok(respond(proxy, blob, head))
}

/// The `Range` a request asks for, if it asks for one Ferry serves.
pub fn range(headers: &HeaderMap) -> Option<ByteRange> {
    headers
        .get(http::header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(ByteRange::parse)
}

/// A blob's answer: status, headers and the body (none for a `HEAD`).
pub fn respond(proxy: &Arc<Proxy>, blob: Blob, head: bool) -> Response {
    let (status, length) = match blob.range {
        Some((start, end)) => (StatusCode::PARTIAL_CONTENT, end + 1 - start),
        None => (StatusCode::OK, blob.size),
    };
    let mut b = content_headers(
        Response::builder().status(status),
        &blob.digest,
        length,
        blob.cache,
        None,
    )
    .header(http::header::CONTENT_TYPE, "application/octet-stream")
    .header(http::header::ACCEPT_RANGES, "bytes");
    if let Some((start, end)) = blob.range {
        b = b.header(
            http::header::CONTENT_RANGE,
            format!("bytes {start}-{end}/{}", blob.size),
        );
    }
    let body = match blob.body {
        Some(stream) if !head => counted_body(proxy, blob.cache, stream),
        _ => Body::empty(),
    };
    build(b, body)
}
