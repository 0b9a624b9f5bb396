//! A minimal read-only registry serving fixed manifests and blobs from memory, for the
//! one upstream behaviour Distribution 2.8.2 cannot produce: a manifest over 4 MiB
//! (Distribution refuses to store or read one). It answers `/v2/`, and GET/HEAD of
//! `/v2/<name>/manifests/<reference>` and `/v2/<name>/blobs/<digest>` with the headers
//! Distribution sends; anything else is a 404 OCI error. Every request is counted.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

#[derive(Default)]
struct Content {
    /// (name, reference) → (media type, bytes); the digest is registered as a
    /// reference too.
    manifests: HashMap<(String, String), (String, Vec<u8>)>,
    blobs: HashMap<String, Vec<u8>>,
}

struct Shared {
    content: Mutex<Content>,
    requests: AtomicUsize,
    log: Mutex<Vec<(String, String)>>,
}

/// A running static registry; stops when dropped.
pub struct StaticRegistry {
    shared: Arc<Shared>,
    addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl StaticRegistry {
    pub fn start() -> StaticRegistry {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind static registry on 127.0.0.1:0");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local_addr");
        let shared = Arc::new(Shared {
            content: Mutex::new(Content::default()),
            requests: AtomicUsize::new(0),
            log: Mutex::new(Vec::new()),
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("static-registry")
            .enable_all()
            .build()
            .expect("static registry runtime");
        let app = axum::Router::new()
            .fallback(serve)
            .with_state(shared.clone());
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            axum::serve(listener, app).await.expect("static registry");
        });
        StaticRegistry {
            shared,
            addr,
            runtime: Some(runtime),
        }
    }

    /// Serves `bytes` as `name:reference` and `name@<digest>`; returns the digest.
    pub fn put_manifest(
        &self,
        name: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> String {
        let digest = super::sha256_digest(bytes);
        let mut c = self.shared.content.lock().unwrap();
        for r in [reference, digest.as_str()] {
            c.manifests.insert(
                (name.to_owned(), r.to_owned()),
                (media_type.to_owned(), bytes.to_vec()),
            );
        }
        digest
    }

    /// Serves `bytes` as a blob (any repository); returns the digest.
    pub fn put_blob(&self, bytes: &[u8]) -> String {
        let digest = super::sha256_digest(bytes);
        self.shared
            .content
            .lock()
            .unwrap()
            .blobs
            .insert(digest.clone(), bytes.to_vec());
        digest
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests answered so far.
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// `(method, path)` of every request so far.
    pub fn request_log(&self) -> Vec<(String, String)> {
        self.shared.log.lock().unwrap().clone()
    }
}

impl Drop for StaticRegistry {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({"errors": [{"code": code, "message": message, "detail": null}]});
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (
                header::HeaderName::from_static("docker-distribution-api-version"),
                "registry/2.0",
            ),
        ],
        body.to_string(),
    )
        .into_response()
}

async fn serve(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    shared.requests.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_owned();
    shared
        .log
        .lock()
        .unwrap()
        .push((req.method().to_string(), path.clone()));
    let head = req.method() == Method::HEAD;
    if req.method() != Method::GET && !head {
        return error(StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED", "read-only");
    }
    if path == "/v2/" || path == "/v2" {
        return (
            StatusCode::OK,
            [(
                header::HeaderName::from_static("docker-distribution-api-version"),
                "registry/2.0",
            )],
            "{}",
        )
            .into_response();
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return error(StatusCode::NOT_FOUND, "NAME_UNKNOWN", "not a /v2/ path");
    };
    let (found, not_found_code) = if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
        let c = shared.content.lock().unwrap();
        (
            c.manifests
                .get(&(name.to_owned(), reference.to_owned()))
                .cloned(),
            "MANIFEST_UNKNOWN",
        )
    } else if let Some((_, digest)) = rest.rsplit_once("/blobs/") {
        let c = shared.content.lock().unwrap();
        (
            c.blobs
                .get(digest)
                .map(|b| ("application/octet-stream".to_owned(), b.clone())),
            "BLOB_UNKNOWN",
        )
    } else {
        return error(StatusCode::NOT_FOUND, "NAME_UNKNOWN", "unknown endpoint");
    };
    let Some((media_type, bytes)) = found else {
        return error(StatusCode::NOT_FOUND, not_found_code, "unknown to registry");
    };
    let digest = super::sha256_digest(&bytes);
    let len = bytes.len();
    let body = if head { Vec::new() } else { bytes };
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, media_type),
            (header::CONTENT_LENGTH, len.to_string()),
            (
                header::HeaderName::from_static("docker-content-digest"),
                digest.clone(),
            ),
            (header::ETAG, format!("\"{digest}\"")),
            (
                header::HeaderName::from_static("docker-distribution-api-version"),
                "registry/2.0".to_owned(),
            ),
        ],
        body,
    )
        .into_response()
}
