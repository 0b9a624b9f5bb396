//! A stand-in for a registry's blob data endpoint (an Azure storage account, ACR's
//! `<registry>.<region>.data.azurecr.io`): where Distribution's `redirect` storage
//! middleware sends blob reads (see [`super::registry::RegistryOptions::redirect_to`]).
//!
//! It listens on **127.0.0.2**, a different host from the registry on 127.0.0.1, so a
//! client that honours origin boundaries drops `Authorization` on the way here. Like
//! real Azure storage it refuses (400) any request that carries `Authorization`; it
//! serves `GET`/`HEAD /docker/registry/v2/blobs/sha256/<2 hex>/<64 hex>/data` from
//! the registry's storage root, and records every request with all its headers.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// One request the endpoint saw.
#[derive(Clone, Debug)]
pub struct DataRequest {
    pub method: String,
    /// Path and query.
    pub target: String,
    /// Every header, names lowercased, in order.
    pub headers: Vec<(String, String)>,
    /// The status it was answered with.
    pub status: u16,
}

impl DataRequest {
    /// Header `name` (lowercase), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

struct Shared {
    root: Mutex<Option<PathBuf>>,
    requests: Mutex<Vec<DataRequest>>,
}

/// A running data endpoint; stops when dropped.
pub struct DataEndpoint {
    shared: Arc<Shared>,
    addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl DataEndpoint {
    /// Binds 127.0.0.2:0 and starts answering. Until [`DataEndpoint::serve_from`] names
    /// a storage root, blob requests get 503 (the registry's config needs this
    /// endpoint's URL before the registry, and so its storage root, exists).
    pub fn start() -> DataEndpoint {
        let listener = std::net::TcpListener::bind("127.0.0.2:0")
            .expect("bind the data endpoint on 127.0.0.2:0");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local_addr");
        let shared = Arc::new(Shared {
            root: Mutex::new(None),
            requests: Mutex::new(Vec::new()),
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("data-endpoint")
            .enable_all()
            .build()
            .expect("data endpoint runtime");
        let app = axum::Router::new()
            .fallback(serve)
            .with_state(shared.clone());
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            axum::serve(listener, app).await.expect("data endpoint");
        });
        DataEndpoint {
            shared,
            addr,
            runtime: Some(runtime),
        }
    }

    /// Serves blobs from `root` (a registry's `rootdirectory`).
    pub fn serve_from(&self, root: &Path) {
        *self.shared.root.lock().unwrap() = Some(root.to_path_buf());
    }

    /// `127.0.0.2:PORT`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.2:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request so far, oldest first.
    pub fn requests(&self) -> Vec<DataRequest> {
        self.shared.requests.lock().unwrap().clone()
    }
}

impl Drop for DataEndpoint {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// The blob file `path` names under `root`, if `path` has the exact shape
/// `/docker/registry/v2/blobs/sha256/<2 hex>/<64 hex>/data` (prefix matching the hex).
fn blob_file(root: &Path, path: &str) -> Option<PathBuf> {
    let rest = path.strip_prefix("/docker/registry/v2/blobs/sha256/")?;
    let mut parts = rest.split('/');
    let (prefix, hex, data) = (parts.next()?, parts.next()?, parts.next()?);
    let is_hex = |s: &str| s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let ok = parts.next().is_none()
        && data == "data"
        && prefix.len() == 2
        && hex.len() == 64
        && is_hex(hex)
        && hex.starts_with(prefix);
    ok.then(|| root.join(path.trim_start_matches('/')))
}

async fn serve(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let method = req.method().clone();
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let root = shared.root.lock().unwrap().clone();
    let response = answer(&method, req.uri().path(), &headers, root.as_deref()).await;
    shared.requests.lock().unwrap().push(DataRequest {
        method: method.to_string(),
        target,
        headers,
        status: response.status().as_u16(),
    });
    response
}

async fn answer(
    method: &Method,
    path: &str,
    headers: &[(String, String)],
    root: Option<&Path>,
) -> Response {
    let text = |status: StatusCode, body: &'static str| {
        (status, [(header::CONTENT_TYPE, "text/plain")], body).into_response()
    };
    if headers.iter().any(|(k, _)| k == "authorization") {
        // What Azure storage says to a request carrying registry credentials.
        return text(
            StatusCode::BAD_REQUEST,
            "Authentication information is not given in the correct format",
        );
    }
    if method != Method::GET && method != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD only");
    }
    let Some(root) = root else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "no storage root yet");
    };
    let Some(file) = blob_file(root, path) else {
        return text(StatusCode::NOT_FOUND, "not a blob data path");
    };
    let Ok(bytes) = tokio::fs::read(&file).await else {
        return text(StatusCode::NOT_FOUND, "no such blob");
    };
    let len = bytes.len();
    let body = if method == Method::HEAD {
        Vec::new()
    } else {
        bytes
    };
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        body,
    )
        .into_response()
}
