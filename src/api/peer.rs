//! The peer port (`[cluster] listen`): what replicas ask each other (see
//! `crate::peers`). Not for clients: every request must carry the cluster's secret,
//! and nothing here is routed by image names, only by what the asking replica resolved.
//!
//! - `GET /peer/v1/id`: this replica's id, how replicas learn who is up.
//! - `GET /peer/v1/blobs/<upstream>/<digest>/<repository>` (with `Range`): the blob, as
//!   [`Proxy::blob_for_peer`] gives it: from this replica's store, or its one fetch.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::HeaderMap;

use ferry_oci::{Digest, RepoName};

use super::{ApiError, blobs};
use crate::metrics::Kind;
use crate::proxy::Proxy;

/// The peer port's routes; `proxy` must be in a cluster (`Proxy::with_peers`).
pub fn router(proxy: Arc<Proxy>) -> Router {
    Router::new()
        .route("/peer/v1/id", get(id))
        .route("/peer/v1/blobs/{upstream}/{digest}/{*repo}", get(blob))
        .fallback(|| async { ApiError::UnknownEndpoint })
        .layer(middleware::from_fn_with_state(proxy.clone(), admit))
        .with_state(proxy)
}

/// Only replicas of this cluster get past this.
async fn admit(State(proxy): State<Arc<Proxy>>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    match proxy.peers() {
        Some(peers) if peers.admits(given) => next.run(req).await,
        _ => {
            tracing::warn!(path = %req.uri().path(), "peer port: request without the cluster's secret refused");
            ApiError::NotAPeer.into_response()
        }
    }
}

async fn id(State(proxy): State<Arc<Proxy>>) -> Response {
    proxy
        .peers()
        .map(|p| p.id().to_owned())
        .unwrap_or_default()
        .into_response()
}

async fn blob(
    State(proxy): State<Arc<Proxy>>,
    Path((upstream, digest, repo)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let digest: Digest = digest.parse()?;
    let repo: RepoName = repo.parse()?;
    let target = proxy.target_of(&upstream, repo)?;
    let blob = proxy
        .blob_for_peer(&target, &digest, blobs::range(&headers))
        .await
        .inspect_err(|e| tracing::warn!(%upstream, repo = %target.repo.name, %digest, error = %e, "peer port: could not give a blob"))?;
    proxy.metrics().cache_result(Kind::Blob, blob.cache);
    Ok(blobs::respond(&proxy, blob, false))
}
