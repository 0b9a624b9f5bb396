//! The one place that knows OCI error codes: every failure becomes a code, an HTTP
//! status and a message here, in one match.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode};

use ferry_oci::{DigestError, NameError, TagError};

use crate::access;
use crate::proxy;
use crate::upstream;

/// Why a request failed, as the API reports it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Proxy(#[from] proxy::Error),
    #[error(transparent)]
    NameInvalid(#[from] NameError),
    #[error(transparent)]
    DigestInvalid(#[from] DigestError),
    #[error(transparent)]
    TagInvalid(#[from] TagError),
    #[error("Ferry is a read-only cache: {0} is not supported")]
    Unsupported(&'static str),
    #[error("no such endpoint")]
    UnknownEndpoint,
    #[error("invalid pagination: {0}")]
    Pagination(String),
    #[error(transparent)]
    Access(#[from] access::Error),
    #[error("the peer port answers only replicas of this cluster (bearer secret missing or wrong)")]
    NotAPeer,
}

/// The failure as logged: attached to the response so the logging layer reports it
/// once, with the request it belongs to.
#[derive(Debug, Clone)]
pub struct Failure {
    pub message: String,
    /// Ferry's side needs an operator (an upstream down, Ferry's own credentials
    /// refused), as opposed to a client asking for something wrong.
    pub needs_operator: bool,
}

impl ApiError {
    fn code_and_status(&self) -> (&'static str, StatusCode) {
        use proxy::Error as P;
        use upstream::Error as U;
        match self {
            ApiError::NameInvalid(_) => ("NAME_INVALID", StatusCode::BAD_REQUEST),
            ApiError::DigestInvalid(_) => ("DIGEST_INVALID", StatusCode::BAD_REQUEST),
            // The conformance suite expects an invalid tag to be simply unknown.
            ApiError::TagInvalid(_) => ("MANIFEST_UNKNOWN", StatusCode::NOT_FOUND),
            ApiError::Unsupported(_) => ("UNSUPPORTED", StatusCode::METHOD_NOT_ALLOWED),
            ApiError::UnknownEndpoint => ("UNSUPPORTED", StatusCode::NOT_FOUND),
            ApiError::NotAPeer => ("UNAUTHORIZED", StatusCode::UNAUTHORIZED),
            ApiError::Pagination(_) => ("PAGINATION_NUMBER_INVALID", StatusCode::BAD_REQUEST),
            ApiError::Access(e) => match e {
                access::Error::AuthRequired { .. } | access::Error::BadCredentials { .. } => {
                    ("UNAUTHORIZED", StatusCode::UNAUTHORIZED)
                }
                access::Error::Denied { .. } => ("DENIED", StatusCode::FORBIDDEN),
            },
            ApiError::Proxy(e) => match e {
                P::NoUpstream { .. } | P::RepoUnknown { .. } => {
                    ("NAME_UNKNOWN", StatusCode::NOT_FOUND)
                }
                P::ManifestUnknown { .. } => ("MANIFEST_UNKNOWN", StatusCode::NOT_FOUND),
                P::BlobUnknown { .. } => ("BLOB_UNKNOWN", StatusCode::NOT_FOUND),
                P::RangeNotSatisfiable { .. } => {
                    ("RANGE_INVALID", StatusCode::RANGE_NOT_SATISFIABLE)
                }
                P::Pagination(_) => ("PAGINATION_NUMBER_INVALID", StatusCode::BAD_REQUEST),
                P::ManifestInvalid { .. } => ("MANIFEST_INVALID", StatusCode::BAD_GATEWAY),
                P::UpstreamDigestMismatch { .. } => ("DIGEST_INVALID", StatusCode::BAD_GATEWAY),
                P::UpstreamBroken { .. } | P::Peer(_) => ("UNAVAILABLE", StatusCode::BAD_GATEWAY),
                // The shared store unreachable: try again, like an upstream that is.
                P::Storage(e) if matches!(**e, ferry_storage::Error::ObjectStore(_)) => {
                    ("UNAVAILABLE", StatusCode::SERVICE_UNAVAILABLE)
                }
                P::Storage(_) => ("UNKNOWN", StatusCode::INTERNAL_SERVER_ERROR),
                P::Upstream(u) => match u {
                    U::Unreachable { .. } | U::Offline { .. } => {
                        ("UNAVAILABLE", StatusCode::SERVICE_UNAVAILABLE)
                    }
                    U::Timeout { .. } => ("UNAVAILABLE", StatusCode::GATEWAY_TIMEOUT),
                    U::BrokeOff { .. } => ("UNAVAILABLE", StatusCode::BAD_GATEWAY),
                    U::Unauthorized { .. } | U::Credential { .. } => {
                        ("UNAUTHORIZED", StatusCode::UNAUTHORIZED)
                    }
                    U::Denied { .. } => ("DENIED", StatusCode::FORBIDDEN),
                    U::TooManyRequests { .. } => ("TOOMANYREQUESTS", StatusCode::TOO_MANY_REQUESTS),
                    U::Status { status, .. } if *status >= 500 => {
                        ("UNAVAILABLE", StatusCode::BAD_GATEWAY)
                    }
                    U::Status { .. }
                    | U::Protocol { .. }
                    | U::TooLarge { .. }
                    | U::TooSlow { .. }
                    | U::RealmRefused { .. } => ("UNKNOWN", StatusCode::BAD_GATEWAY),
                },
            },
        }
    }

    /// What the client is told. Internal failures are not described to clients.
    fn client_message(&self) -> String {
        match self {
            ApiError::Proxy(proxy::Error::Storage(_)) => {
                "internal storage error (see Ferry's log)".to_string()
            }
            e => e.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, status) = self.code_and_status();
        let body = serde_json::json!({
            "errors": [{ "code": code, "message": self.client_message(), "detail": null }]
        });
        let mut resp = (status, Json(body)).into_response();
        let h = resp.headers_mut();
        match &self {
            ApiError::Proxy(proxy::Error::Upstream(upstream::Error::TooManyRequests {
                retry_after: Some(r),
                ..
            })) => {
                if let Ok(v) = HeaderValue::from_str(r) {
                    h.insert(http::header::RETRY_AFTER, v);
                }
            }
            // Ferry's own 401s invite Basic credentials (upstream 401s are Ferry's
            // credentials failing: the client has nothing to offer).
            ApiError::Access(_) if status == StatusCode::UNAUTHORIZED => {
                h.insert(
                    http::header::WWW_AUTHENTICATE,
                    super::credentials::challenge(),
                );
            }
            ApiError::Proxy(proxy::Error::RangeNotSatisfiable { size }) => {
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    h.insert(http::header::CONTENT_RANGE, v);
                }
            }
            _ => {}
        }
        // Access refusals are logged as warnings too: operators watch for them.
        let needs_operator = status.is_server_error()
            || matches!(self, ApiError::Access(_))
            || matches!(
                self,
                ApiError::Proxy(proxy::Error::Upstream(
                    upstream::Error::Unauthorized { .. }
                        | upstream::Error::Credential { .. }
                        | upstream::Error::Denied { .. }
                ))
            );
        resp.extensions_mut().insert(Failure {
            message: self.to_string(),
            needs_operator,
        });
        resp
    }
}
