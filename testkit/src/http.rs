//! A small registry client (plain HTTP, Basic or Docker token auth) for seeding
//! Distribution and for asserting on responses, plus helpers for OCI error bodies.

use std::sync::Mutex;
use std::time::Duration;

use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::Value;

/// Media types, spelled once.
pub mod media {
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    /// What containerd sends when resolving (minus `*/*`).
    pub const ALL_MANIFESTS: [&str; 4] = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];
}

/// A reqwest client for tests: HTTP/1.1, no proxy, no redirects followed silently
/// beyond reqwest's default, bounded timeouts.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(120))
        .build()
        .expect("build reqwest client")
}

/// A request with every type in `accept` as its own `Accept` header line (as skopeo
/// sends them).
pub fn with_accept(mut req: RequestBuilder, accept: &[&str]) -> RequestBuilder {
    for a in accept {
        req = req.header(reqwest::header::ACCEPT, *a);
    }
    req
}

/// The parsed first error of an OCI error body: `(code, message)`. Panics with the body
/// if it is not one.
pub fn oci_error(body: &[u8]) -> (String, String) {
    let v: Value = serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "error body is not JSON ({e}): {:?}",
            String::from_utf8_lossy(body)
        )
    });
    let first = v["errors"]
        .get(0)
        .unwrap_or_else(|| panic!("no errors[0] in error body: {v}"));
    let code = first["code"]
        .as_str()
        .unwrap_or_else(|| panic!("errors[0].code is not a string: {v}"))
        .to_owned();
    let message = first["message"].as_str().unwrap_or("").to_owned();
    (code, message)
}

/// A header as `&str` (empty if missing or not text).
pub fn header<'a>(resp: &'a Response, name: &str) -> &'a str {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// A registry client for one registry, with optional credentials. Handles `Basic` and
/// `Bearer` challenges the way docker clients do (token from the realm, Basic creds
/// sent to the realm when present).
pub struct RegistryClient {
    base: String,
    creds: Option<(String, String)>,
    client: reqwest::Client,
    bearer: Mutex<Option<String>>,
}

impl RegistryClient {
    /// `base` is `http://host:port`.
    pub fn new(base: &str, creds: Option<(String, String)>) -> RegistryClient {
        RegistryClient {
            base: base.trim_end_matches('/').to_owned(),
            creds,
            client: client(),
            bearer: Mutex::new(None),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends the request `build(client, url)` builds, answering one auth challenge.
    /// `path` starts with `/v2/` (or is an absolute URL, e.g. an upload `Location`).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        build: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Response {
        let url = if path.starts_with("http://") {
            path.to_owned()
        } else {
            format!("{}{}", self.base, path)
        };
        let attempt = |auth: Option<Auth>| {
            let mut req = build(self.client.request(method.clone(), &url));
            match auth {
                Some(Auth::Basic(u, p)) => req = req.basic_auth(u, Some(p)),
                Some(Auth::Bearer(t)) => req = req.bearer_auth(t),
                None => {}
            }
            req.send()
        };
        let cached = self.bearer.lock().unwrap().clone();
        let resp = attempt(cached.map(Auth::Bearer))
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        if resp.status() != StatusCode::UNAUTHORIZED {
            return resp;
        }
        let challenge = header(&resp, "www-authenticate").to_owned();
        let auth = if challenge.to_ascii_lowercase().starts_with("basic") {
            let (u, p) = self
                .creds
                .clone()
                .unwrap_or_else(|| panic!("{url} wants Basic auth and no creds were given"));
            Auth::Basic(u, p)
        } else if challenge.to_ascii_lowercase().starts_with("bearer") {
            let token = self.fetch_token(&challenge).await;
            *self.bearer.lock().unwrap() = Some(token.clone());
            Auth::Bearer(token)
        } else {
            return resp;
        };
        attempt(Some(auth))
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"))
    }

    async fn fetch_token(&self, challenge: &str) -> String {
        let params = parse_challenge(challenge);
        let realm = params
            .iter()
            .find(|(k, _)| k == "realm")
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no realm in {challenge}"));
        let mut url = reqwest::Url::parse(&realm).expect("realm URL");
        {
            let mut q = url.query_pairs_mut();
            for (k, v) in &params {
                if k == "service" {
                    q.append_pair("service", v);
                }
                if k == "scope" {
                    for s in v.split(' ') {
                        q.append_pair("scope", s);
                    }
                }
            }
        }
        let mut req = self.client.get(url.clone());
        if let Some((u, p)) = &self.creds {
            req = req.basic_auth(u, Some(p));
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let status = resp.status();
        let body: Value = resp.json().await.expect("token response JSON");
        assert!(
            status.is_success(),
            "token request {url} → {status}: {body}"
        );
        body["token"]
            .as_str()
            .or_else(|| body["access_token"].as_str())
            .expect("token in token response")
            .to_owned()
    }

    /// `GET /v2/<repo>/manifests/<reference>` with the given `Accept` types.
    pub async fn get_manifest(&self, repo: &str, reference: &str, accept: &[&str]) -> Response {
        self.send(
            Method::GET,
            &format!("/v2/{repo}/manifests/{reference}"),
            |r| with_accept(r, accept),
        )
        .await
    }

    /// The manifest's bytes and `Content-Type`; panics unless 200.
    pub async fn manifest_bytes(&self, repo: &str, reference: &str) -> (Vec<u8>, String) {
        let resp = self
            .get_manifest(repo, reference, &media::ALL_MANIFESTS)
            .await;
        let status = resp.status();
        let ct = header(&resp, "content-type").to_owned();
        let body = resp.bytes().await.expect("manifest body").to_vec();
        assert_eq!(
            status,
            StatusCode::OK,
            "GET manifest {repo}:{reference}: {}",
            String::from_utf8_lossy(&body)
        );
        (body, ct)
    }

    /// `GET /v2/<repo>/blobs/<digest>`; panics unless 200.
    pub async fn blob(&self, repo: &str, digest: &str) -> Vec<u8> {
        let resp = self
            .send(Method::GET, &format!("/v2/{repo}/blobs/{digest}"), |r| r)
            .await;
        let status = resp.status();
        let body = resp.bytes().await.expect("blob body").to_vec();
        assert_eq!(status, StatusCode::OK, "GET blob {repo}@{digest}");
        body
    }

    /// Monolithic upload (POST, then PUT `?digest=`); returns the digest.
    pub async fn upload_blob(&self, repo: &str, bytes: &[u8]) -> String {
        let digest = crate::sha256_digest(bytes);
        let resp = self
            .send(Method::POST, &format!("/v2/{repo}/blobs/uploads/"), |r| {
                r.header("content-length", "0")
            })
            .await;
        assert_eq!(
            resp.status(),
            StatusCode::ACCEPTED,
            "start upload to {repo}"
        );
        let location = header(&resp, "location").to_owned();
        let location = if location.starts_with('/') {
            format!("{}{}", self.base, location)
        } else {
            location
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let put_url = format!("{location}{sep}digest={digest}");
        let body = bytes.to_vec();
        let resp = self
            .send(Method::PUT, &put_url, |r| {
                r.header("content-type", "application/octet-stream")
                    .body(body.clone())
            })
            .await;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        assert_eq!(
            status,
            StatusCode::CREATED,
            "finish upload to {repo}: {text}"
        );
        digest
    }

    /// `PUT /v2/<repo>/manifests/<reference>`; panics unless 201. Returns the digest
    /// of `bytes`.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> String {
        let body = bytes.to_vec();
        let resp = self
            .send(
                Method::PUT,
                &format!("/v2/{repo}/manifests/{reference}"),
                |r| r.header("content-type", media_type).body(body.clone()),
            )
            .await;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        assert_eq!(
            status,
            StatusCode::CREATED,
            "PUT manifest {repo}:{reference}: {text}"
        );
        crate::sha256_digest(bytes)
    }
}

enum Auth {
    Basic(String, String),
    Bearer(String),
}

/// `Bearer realm="…",service="…",scope="…"` → `[(key, value)]`.
pub fn parse_challenge(challenge: &str) -> Vec<(String, String)> {
    let rest = challenge
        .split_once(' ')
        .map(|(_, r)| r)
        .unwrap_or("")
        .trim();
    let mut out = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(',') | Some(' ')) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n)
                        }
                    }
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        out.push((key.trim().to_ascii_lowercase(), value));
    }
    out
}

/// A response read by [`raw_request`].
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first value of header `name` (case-insensitive), or "".
    pub fn header(&self, name: &str) -> &str {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    }
}

/// Sends `METHOD <target> HTTP/1.1` byte for byte over a fresh TCP connection (no URL
/// normalisation: `..` and `%2F` reach the server as written) and reads the whole
/// response (Content-Length, chunked, or until close). Blocking, bounded to 30 s.
pub fn raw_request(addr: &str, method: &str, target: &str) -> RawResponse {
    use std::io::{Read, Write};
    let mut stream =
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    write!(
        stream,
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: ferry-tests\r\nConnection: close\r\n\r\n"
    )
    .expect("write request");
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("read response to {method} {target}: {e}"));
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut rest = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        let mut body = Vec::new();
        let mut pos = 0;
        while let Some(eol) = rest[pos..].windows(2).position(|w| w == b"\r\n") {
            let size_text = String::from_utf8_lossy(&rest[pos..pos + eol]).into_owned();
            let size =
                usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap_or(0);
            pos += eol + 2;
            if size == 0 || pos + size > rest.len() {
                break;
            }
            body.extend_from_slice(&rest[pos..pos + size]);
            pos += size + 2;
        }
        rest = body;
    } else if let Some(len) = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        rest.truncate(len);
    }
    RawResponse {
        status,
        headers,
        body: rest,
    }
}
