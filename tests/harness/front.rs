//! An HTTP front for Distribution that makes the faults a TCP proxy cannot: 5xx
//! answers, and manifests cut off mid-body. Everything else is forwarded as is (method,
//! path, query, headers; the body streamed back). Runs on 127.0.0.1:0 in its own
//! runtime; stops when dropped.
//!
//! A fault is armed for a number of matching requests or until [`FaultyFront::clear`].
//! Every request is logged with the status it got and whether a fault answered it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;

/// What an armed fault does to the requests it matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answers `status` with an OCI error body, without asking Distribution, to every
    /// request whose path contains `path_contains` (`""`: every request, `/v2/`
    /// included, so Ferry's health probe sees it too).
    Status { status: u16, path_contains: String },
    /// Manifest GETs (paths containing `/manifests/`): Distribution's answer, but only
    /// the first `keep` bytes of its body.
    TruncateManifest { keep: usize, framing: Framing },
}

/// How a truncated manifest is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length` of the whole manifest, `keep` bytes, then the connection is
    /// dropped: the client sees the body end early.
    Broken,
    /// `Content-Length: keep` and `keep` bytes: a well-formed response carrying a cut
    /// manifest (its `Docker-Content-Digest` still names the whole one).
    Consistent,
    /// Like `Consistent`, without `Docker-Content-Digest`: only the bytes themselves can
    /// tell they are not a manifest.
    ConsistentNoDigest,
}

/// One request the front answered.
#[derive(Clone, Debug)]
pub struct FrontRequest {
    pub method: String,
    /// Path and query.
    pub path: String,
    pub status: u16,
    /// Whether an armed fault answered it.
    pub faulted: bool,
}

struct Armed {
    fault: Fault,
    /// `None`: until cleared.
    remaining: Option<usize>,
}

struct Shared {
    upstream: String,
    client: reqwest::Client,
    armed: Mutex<Option<Armed>>,
    log: Mutex<Vec<FrontRequest>>,
}

/// A running front; stops when dropped.
pub struct FaultyFront {
    shared: Arc<Shared>,
    addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FaultyFront {
    /// Fronts `upstream` (`127.0.0.1:PORT`, plain HTTP), with no fault armed.
    pub fn start(upstream: &str) -> FaultyFront {
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind faulty front on 127.0.0.1:0");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local_addr");
        let client = reqwest::Client::builder()
            .no_proxy()
            .http1_only()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("front's client");
        let shared = Arc::new(Shared {
            upstream: format!("http://{upstream}"),
            client,
            armed: Mutex::new(None),
            log: Mutex::new(Vec::new()),
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("faulty-front")
            .enable_all()
            .build()
            .expect("faulty front runtime");
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(shared.clone());
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            axum::serve(listener, app).await.expect("faulty front");
        });
        FaultyFront {
            shared,
            addr,
            runtime: Some(runtime),
        }
    }

    /// Arms `fault` for the next `count` matching requests (`None`: until cleared),
    /// replacing any fault armed before.
    pub fn arm(&self, fault: Fault, count: Option<usize>) {
        *self.shared.armed.lock().unwrap() = Some(Armed {
            fault,
            remaining: count,
        });
    }

    /// Disarms any fault: every request is forwarded again.
    pub fn clear(&self) {
        *self.shared.armed.lock().unwrap() = None;
    }

    /// Whether a fault is still armed (a counted one disarms itself when used up).
    pub fn armed(&self) -> bool {
        self.shared.armed.lock().unwrap().is_some()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request answered so far.
    pub fn log(&self) -> Vec<FrontRequest> {
        self.shared.log.lock().unwrap().clone()
    }

    /// Requests with `method` whose path contains `path_contains`.
    pub fn count(&self, method: &str, path_contains: &str) -> usize {
        self.log()
            .iter()
            .filter(|r| r.method == method && r.path.contains(path_contains))
            .count()
    }

    /// The log as lines, for failure messages.
    pub fn log_text(&self) -> String {
        self.log()
            .iter()
            .map(|r| {
                format!(
                    "{} {} -> {}{}",
                    r.method,
                    r.path,
                    r.status,
                    if r.faulted { " (fault)" } else { "" }
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for FaultyFront {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Shared {
    /// The armed fault if it matches this request (using one of its count).
    fn take_fault(&self, method: &Method, path: &str) -> Option<Fault> {
        let mut armed = self.armed.lock().unwrap();
        let a = armed.as_mut()?;
        let matches = match &a.fault {
            Fault::Status { path_contains, .. } => path.contains(path_contains.as_str()),
            Fault::TruncateManifest { .. } => method == Method::GET && path.contains("/manifests/"),
        };
        if !matches {
            return None;
        }
        let fault = a.fault.clone();
        if let Some(n) = a.remaining.as_mut() {
            *n = n.saturating_sub(1);
            if *n == 0 {
                *armed = None;
            }
        }
        Some(fault)
    }

    fn record(&self, method: &Method, path: &str, status: u16, faulted: bool) {
        self.log.lock().unwrap().push(FrontRequest {
            method: method.to_string(),
            path: path.to_owned(),
            status,
            faulted,
        });
    }
}

fn is_hop_by_hop(name: &header::HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
    )
}

fn oci_error(status: u16, message: &str) -> Response {
    let code = if status == 503 {
        "UNAVAILABLE"
    } else {
        "UNKNOWN"
    };
    let body = serde_json::json!({"errors": [{"code": code, "message": message, "detail": null}]});
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header("docker-distribution-api-version", "registry/2.0")
        .body(Body::from(body.to_string()))
        .expect("error response")
}

async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".to_owned());
    let fault = shared.take_fault(&method, &path);
    if let Some(Fault::Status { status, .. }) = &fault {
        shared.record(&method, &path, *status, true);
        return oci_error(*status, "injected by the test's faulty front");
    }

    let mut forward = shared
        .client
        .request(method.clone(), format!("{}{path}", shared.upstream));
    for (name, value) in req.headers() {
        if name != header::HOST && !is_hop_by_hop(name) {
            forward = forward.header(name, value);
        }
    }
    let body = match axum::body::to_bytes(req.into_body(), 256 << 20).await {
        Ok(b) => b,
        Err(e) => {
            shared.record(&method, &path, 400, false);
            return oci_error(400, &format!("front could not read the request body: {e}"));
        }
    };
    if !body.is_empty() {
        forward = forward.body(body);
    }
    let resp = match forward.send().await {
        Ok(r) => r,
        Err(e) => {
            shared.record(&method, &path, 502, false);
            return oci_error(502, &format!("front could not reach Distribution: {e}"));
        }
    };
    let status = resp.status();
    let mut headers = HeaderMap::new();
    for (name, value) in resp.headers() {
        if !is_hop_by_hop(name) {
            headers.append(name, value.clone());
        }
    }

    let truncate = match fault {
        Some(Fault::TruncateManifest { keep, framing }) if status == StatusCode::OK => {
            Some((keep, framing))
        }
        _ => None,
    };
    let body = match truncate {
        None => Body::from_stream(resp.bytes_stream()),
        Some((keep, framing)) => {
            let full = match resp.bytes().await {
                Ok(b) => b,
                Err(e) => {
                    shared.record(&method, &path, 502, false);
                    return oci_error(502, &format!("front could not read the manifest: {e}"));
                }
            };
            let part = full.slice(..keep.min(full.len().saturating_sub(1)));
            match framing {
                Framing::Broken => {
                    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(full.len()));
                    // The promised length is never reached: hyper drops the connection
                    // when the body stream fails. The pause first lets the head and the
                    // kept bytes go out (failing at once, hyper may send nothing at all).
                    let part = futures_util::stream::iter([Ok::<_, std::io::Error>(part)]);
                    let cut = futures_util::stream::once(async {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        Err(std::io::Error::other(
                            "truncated by the test's faulty front",
                        ))
                    });
                    Body::from_stream(futures_util::StreamExt::chain(part, cut))
                }
                Framing::Consistent | Framing::ConsistentNoDigest => {
                    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(part.len()));
                    if framing == Framing::ConsistentNoDigest {
                        headers.remove("docker-content-digest");
                    }
                    Body::from(part)
                }
            }
        }
    };
    shared.record(&method, &path, status.as_u16(), truncate.is_some());
    let mut out = Response::new(body);
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    out
}
