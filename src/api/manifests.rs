use axum::body::Body;
use axum::response::Response;
use http::{HeaderMap, StatusCode};

use ferry_oci::Reference;

use super::observe::counted_body;
use super::{ApiError, build, content_headers};
use crate::metrics::Kind;
use crate::oci::Accept;
use crate::proxy::{Proxy, Target};

/// `GET`/`HEAD /v2/<name>/manifests/<reference>`
pub async fn get(
    proxy: &Proxy,
    target: &Target,
    reference: &Reference,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response, ApiError> {
    let accept = Accept::from_headers(headers);
    let m = proxy.manifest(target, reference, &accept, !head).await?;
    proxy.metrics().cache_result(Kind::Manifest, m.cache);
    if !head {
        let registry = &target.upstream.config().registry;
        proxy
            .metrics()
            .record_pull(&format!("{registry}/{}", target.repo.name));
    }
    let etag = format!("\"{}\"", m.digest);
    let not_modified = headers
        .get(http::header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let status = if not_modified {
        StatusCode::NOT_MODIFIED
    } else {
        StatusCode::OK
    };
    let b = content_headers(
        Response::builder().status(status),
        &m.digest,
        m.size,
        m.cache,
        m.warning.as_deref(),
    )
    .header(http::header::CONTENT_TYPE, &m.media_type);
    let body = if head || not_modified {
        Body::empty()
    } else {
        let bytes = m.bytes;
        counted_body(
            proxy,
            m.cache,
            futures_util::stream::once(async { Ok(bytes) }),
        )
    };
    Ok(build(b, body))
}
