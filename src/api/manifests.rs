use axum::body::Body;
use axum::response::Response;
use http::{HeaderMap, StatusCode};

use ferry_storage::{Reference, RepoName};

use super::{ApiError, Params, build, content_headers};
use crate::oci::Accept;
use crate::proxy::Proxy;

/// `GET`/`HEAD /v2/<name>/manifests/<reference>`
pub async fn get(
    proxy: &Proxy,
    name: &RepoName,
    reference: &Reference,
    params: &Params,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response, ApiError> {
    let target = proxy.route(name, params.ns.as_deref())?;
    let accept = Accept::from_headers(headers);
    let m = proxy.manifest(&target, reference, &accept, !head).await?;
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
        Body::from(m.bytes)
    };
    Ok(build(b, body))
}
