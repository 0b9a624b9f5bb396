//! The HTTP API: the pull half of the OCI distribution spec, on axum.
//!
//! Handlers parse the request at the edge (names, digests, tags, ranges, `Accept`),
//! call the [`proxy`](crate::proxy) and turn its answer into headers and a body.
//! Push, delete and upload endpoints answer `405 UNSUPPORTED`: Ferry is a read-only
//! cache. Errors become OCI error JSON in [`error`] only.

mod blobs;
mod credentials;
mod error;
mod manifests;
mod observe;
mod page;
mod path;
pub mod peer;
mod referrers;
mod tags;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Extension, Router};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};

pub use error::ApiError;
use error::Failure;
use path::Endpoint;

use crate::access::{Gate, Identity};
use crate::proxy::{CacheStatus, Proxy, Target};

/// The application: every route, with the logging and common-header layer. `access`
/// decides who may pull what.
pub fn router(proxy: Arc<Proxy>, access: Arc<Gate>) -> Router {
    Router::new()
        .route("/v2/", get(version_check).head(version_check))
        .route("/v2", get(version_check).head(version_check))
        .route("/v2/{*rest}", any(dispatch))
        .route("/_ferry/status", get(status))
        .route("/", get(page::page))
        .route("/metrics", get(observe::metrics))
        .route("/healthz", get(observe::healthz))
        .route("/readyz", get(observe::readyz))
        .fallback(|| async { ApiError::UnknownEndpoint })
        .layer(Extension(access))
        .layer(middleware::from_fn(log_and_stamp))
        .layer(middleware::from_fn_with_state(
            proxy.clone(),
            observe::observe,
        ))
        .with_state(proxy)
}

/// `GET /v2/`: "this is a registry". Clients (nodes) need no credentials; credentials
/// sent are checked, so `podman login` learns whether they are good. When users exist
/// the answer carries a Basic challenge even though it is a 200 (RFC 9110 allows
/// that): podman and skopeo only send credentials to registries whose `/v2/` asked.
async fn version_check(
    Extension(access): Extension<Arc<Gate>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    access.identify(credentials::from_headers(&headers)).await?;
    let mut resp = ([(http::header::CONTENT_TYPE, "application/json")], "{}").into_response();
    if access.has_users() {
        resp.headers_mut()
            .insert(http::header::WWW_AUTHENTICATE, credentials::challenge());
    }
    Ok(resp)
}

/// `GET /_ferry/status`: offline readiness of every cached and pinned image, as JSON.
async fn status(State(proxy): State<Arc<Proxy>>) -> Result<Response, ApiError> {
    let status = tokio::task::spawn_blocking(move || proxy.status())
        .await
        .map_err(|e| ApiError::Proxy(crate::proxy::Error::from(std::io::Error::other(e))))??;
    Ok(axum::Json(status).into_response())
}

/// Query parameters Ferry reads.
#[derive(Debug, Default)]
struct Params {
    /// containerd's mirror parameter: the registry host the client meant.
    ns: Option<String>,
    n: Option<String>,
    last: Option<String>,
    artifact_type: Option<String>,
}

impl Params {
    fn parse(query: Option<&str>) -> Params {
        let mut p = Params::default();
        for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let v = Some(v.into_owned());
            match &*k {
                "ns" => p.ns = v,
                "n" => p.n = v,
                "last" => p.last = v,
                "artifactType" => p.artifact_type = v,
                _ => {}
            }
        }
        p
    }
}

/// Routes `name` (after cache rules) and checks that `who` may pull from there.
fn authorize(
    proxy: &Proxy,
    access: &Gate,
    who: &Identity,
    name: &ferry_oci::RepoName,
    params: &Params,
) -> Result<Target, ApiError> {
    let target = proxy.route(name, params.ns.as_deref())?;
    access.check(
        who,
        target.upstream.name(),
        &target.upstream.config().registry,
        target.repo.name.as_str(),
    )?;
    Ok(target)
}

async fn dispatch(
    State(proxy): State<Arc<Proxy>>,
    Extension(access): Extension<Arc<Gate>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let rest = uri.path().strip_prefix("/v2/").unwrap_or_default();
    let endpoint = path::parse(rest)?;
    let params = Params::parse(uri.query());
    let head = method == Method::HEAD;
    let read = head || method == Method::GET;
    let who = access.identify(credentials::from_headers(&headers)).await?;
    let allowed = |name| authorize(&proxy, &access, &who, name, &params);
    let mut resp = match endpoint {
        Endpoint::Upload => return Err(ApiError::Unsupported("blob upload")),
        Endpoint::Manifest(..) if method == Method::DELETE => {
            return Err(ApiError::Unsupported("manifest deletion"));
        }
        Endpoint::Manifest(..) if method == Method::PUT => {
            return Err(ApiError::Unsupported("manifest push"));
        }
        Endpoint::Blob(..) if method == Method::DELETE => {
            return Err(ApiError::Unsupported("blob deletion"));
        }
        _ if !read => return Err(ApiError::Unsupported("this method")),
        Endpoint::Manifest(name, reference) => {
            let target = allowed(&name)?;
            manifests::get(&proxy, &target, &reference, &headers, head).await?
        }
        Endpoint::Blob(name, digest) => {
            let target = allowed(&name)?;
            blobs::get(&proxy, &target, &digest, &headers, head).await?
        }
        Endpoint::Tags(name) => {
            let target = allowed(&name)?;
            tags::list(&proxy, &target, &name, &params).await?
        }
        Endpoint::Referrers(name, subject) => {
            let target = allowed(&name)?;
            referrers::list(&proxy, &target, &subject, &params).await?
        }
    };
    if let Some(ns) = params
        .ns
        .as_deref()
        .and_then(|ns| HeaderValue::from_str(ns).ok())
    {
        resp.headers_mut().insert("oci-namespace", ns);
    }
    Ok(resp)
}

/// Stamps the API version header and `X-Content-Type-Options: nosniff` on every
/// response and logs each failure once, with the request it belongs to. `nosniff`:
/// a browser shown anything from this origin (the status page's) takes each body
/// as the type Ferry says, never guessing HTML or script from bytes an upstream chose.
async fn log_and_stamp(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let mut resp = next.run(req).await;
    resp.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    resp.headers_mut().insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    let status = resp.status().as_u16();
    match resp.extensions().get::<Failure>() {
        Some(Failure {
            message,
            needs_operator: true,
        }) => {
            tracing::warn!(%method, %path, status, error = %message, "request failed")
        }
        Some(Failure { message, .. }) => {
            tracing::info!(%method, %path, status, error = %message, "request refused")
        }
        None => {
            let cache = resp
                .headers()
                .get("x-cache")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            tracing::debug!(%method, %path, status, cache, "request served");
        }
    }
    resp
}

/// Headers every manifest and blob response carries.
fn content_headers(
    builder: http::response::Builder,
    digest: &ferry_oci::Digest,
    content_length: u64,
    cache: CacheStatus,
    warning: Option<&str>,
) -> http::response::Builder {
    let mut b = builder
        .header(http::header::CONTENT_LENGTH, content_length)
        .header("docker-content-digest", digest.as_str())
        .header(http::header::ETAG, format!("\"{digest}\""))
        .header("x-cache", cache.as_str());
    if let Some(w) = warning {
        b = b.header(http::header::WARNING, warning_value(w));
    }
    b
}

/// A `Warning: 299 - "<text>"` value (the only form the spec allows).
fn warning_value(text: &str) -> String {
    format!("299 - \"{}\"", text.replace('"', "'"))
}

fn build(b: http::response::Builder, body: Body) -> Response {
    b.body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
