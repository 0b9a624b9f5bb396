use axum::body::Body;
use axum::response::Response;
use http::StatusCode;

use ferry_oci::RepoName;

use super::{ApiError, Params, build, warning_value};
use crate::proxy::{CacheStatus, Proxy, TagList, Target};

/// `GET /v2/<name>/tags/list[?n=<int>&last=<tag>]`
/// `name` is the repository as the client named it (the answer names it so).
pub async fn list(
    proxy: &Proxy,
    target: &Target,
    name: &RepoName,
    params: &Params,
) -> Result<Response, ApiError> {
    let n =
        match params.n.as_deref() {
            None => None,
            Some(n) => Some(n.parse::<usize>().map_err(|_| {
                ApiError::Pagination(format!("n={n} is not a non-negative integer"))
            })?),
        };
    let list = if n == Some(0) {
        // The spec: n=0 answers an empty list without a Link.
        TagList {
            tags: Vec::new(),
            next: None,
            cache: CacheStatus::Hit,
            warning: None,
        }
    } else {
        proxy.tags(target, n, params.last.as_deref()).await?
    };
    let body = serde_json::json!({ "name": name.as_str(), "tags": list.tags });
    let mut b = Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header("x-cache", list.cache.as_str());
    if let Some((n, last)) = &list.next {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        query
            .append_pair("n", &n.to_string())
            .append_pair("last", last);
        if let Some(ns) = &params.ns {
            query.append_pair("ns", ns);
        }
        b = b.header(
            http::header::LINK,
            format!("</v2/{name}/tags/list?{}>; rel=\"next\"", query.finish()),
        );
    }
    if let Some(w) = &list.warning {
        b = b.header(http::header::WARNING, warning_value(w));
    }
    Ok(build(
        b,
        Body::from(serde_json::to_vec(&body).expect("JSON serializes")),
    ))
}
