use axum::body::Body;
use axum::response::Response;
use http::StatusCode;

use ferry_oci::Digest;
use ferry_oci::manifest::OCI_INDEX;

use super::{ApiError, Params, build, warning_value};
use crate::proxy::{Proxy, Target};

/// `GET /v2/<name>/referrers/<digest>[?artifactType=<type>]`
pub async fn list(
    proxy: &Proxy,
    target: &Target,
    subject: &Digest,
    params: &Params,
) -> Result<Response, ApiError> {
    let r = proxy
        .referrers(target, subject, params.artifact_type.as_deref())
        .await?;
    let mut b = Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, OCI_INDEX)
        .header(http::header::CONTENT_LENGTH, r.index.len())
        .header("x-cache", r.cache.as_str());
    if r.filtered {
        b = b.header("oci-filters-applied", "artifactType");
    }
    if let Some(w) = &r.warning {
        b = b.header(http::header::WARNING, warning_value(w));
    }
    Ok(build(b, Body::from(r.index)))
}
