//! Fixtures and assertions shared by the test modules.

use std::path::{Path, PathBuf};

use reqwest::StatusCode;
use reqwest::header::HeaderMap;

use crate::harness::ferry::{Ferry, FerryBuilder, LOCAL, Upstream};
use crate::harness::http::{client, oci_error, with_accept};
use crate::harness::registry::{Registry, RegistryAuth};

/// An open Distribution and a Ferry whose only upstream is it, as `local` /
/// `registry.ferry-test.invalid`.
pub fn local_setup() -> (Registry, Ferry) {
    let registry = Registry::start(RegistryAuth::None);
    let ferry = FerryBuilder::new()
        .upstream(Upstream::local(&registry.url()))
        .start();
    (registry, ferry)
}

/// A response read whole.
#[derive(Debug)]
pub struct Fetched {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Fetched {
    /// Header `name` as text ("" if absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// `X-Cache`.
    pub fn x_cache(&self) -> &str {
        self.header("x-cache")
    }

    /// Body as lossy text, for messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body[..self.body.len().min(2000)]).into_owned()
    }

    /// Asserts `status`, an OCI error body with `code`, and the API version header;
    /// returns the error's message.
    pub fn assert_error(&self, status: u16, code: &str) -> String {
        assert_eq!(
            self.status.as_u16(),
            status,
            "expected {status} {code}, got body {}",
            self.text()
        );
        let (got_code, message) = oci_error(&self.body);
        assert_eq!(got_code, code, "error code; body {}", self.text());
        assert_api_version(&self.headers);
        message
    }
}

/// `GET url` with every `accept` type as its own `Accept` line.
pub async fn get(url: &str, accept: &[&str]) -> Fetched {
    send(reqwest::Method::GET, url, accept, &[]).await
}

/// `HEAD url`.
pub async fn head(url: &str, accept: &[&str]) -> Fetched {
    send(reqwest::Method::HEAD, url, accept, &[]).await
}

/// Any request, with extra headers; reads the whole body (panics if the body errors).
pub async fn send(
    method: reqwest::Method,
    url: &str,
    accept: &[&str],
    headers: &[(&str, &str)],
) -> Fetched {
    let mut req = with_accept(client().request(method.clone(), url), accept);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .bytes()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: body: {e}"))
        .to_vec();
    Fetched {
        status,
        headers,
        body,
    }
}

/// `Docker-Distribution-API-Version: registry/2.0`.
pub fn assert_api_version(headers: &HeaderMap) {
    assert_eq!(
        headers
            .get("docker-distribution-api-version")
            .and_then(|v| v.to_str().ok()),
        Some("registry/2.0"),
        "Docker-Distribution-API-Version on every response"
    );
}

/// `<ferry>/v2/local/<repo>/manifests/<reference>`.
pub fn manifest_url(ferry: &Ferry, repo: &str, reference: &str) -> String {
    format!("{}/v2/{LOCAL}/{repo}/manifests/{reference}", ferry.url())
}

/// `<ferry>/v2/local/<repo>/blobs/<digest>`.
pub fn blob_url(ferry: &Ferry, repo: &str, digest: &str) -> String {
    format!("{}/v2/{LOCAL}/{repo}/blobs/{digest}", ferry.url())
}

/// `blobs/sha256/ab/<hex>` in Ferry's store.
pub fn stored_blob_path(ferry: &Ferry, digest: &str) -> PathBuf {
    let hex = crate::harness::digest_hex(digest);
    ferry
        .storage_root()
        .join("blobs/sha256")
        .join(&hex[..2])
        .join(hex)
}

/// The `tags` of a `200` tag list answer.
pub fn listed_tags(r: &Fetched) -> Vec<String> {
    assert_eq!(r.status, 200, "tags/list: {}", r.text());
    let v: serde_json::Value = serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("tags/list JSON ({e}): {}", r.text()));
    v["tags"]
        .as_array()
        .unwrap_or_else(|| panic!("no tags array: {v}"))
        .iter()
        .map(|t| t.as_str().expect("tags are strings").to_owned())
        .collect()
}

/// Every regular file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(t) if t.is_file() => out.push(p),
                _ => {}
            }
        }
    }
    out
}

/// Whether any file under `dir` holds exactly `bytes`.
pub fn store_holds(dir: &Path, bytes: &[u8]) -> bool {
    files_under(dir).iter().any(|p| {
        std::fs::metadata(p).is_ok_and(|m| m.len() == bytes.len() as u64)
            && std::fs::read(p).is_ok_and(|b| b == bytes)
    })
}

/// `ferry <args> --config <ferry's config>` with no `FERRY_*` variables inherited,
/// bounded to 120 s. Returns the output and stdout + stderr as text; panics if the
/// command panicked.
pub fn ferry_cli(ferry: &Ferry, args: &[&str]) -> (std::process::Output, String) {
    let mut cmd = Ferry::cli_command();
    cmd.args(args).arg("--config").arg(ferry.config_path());
    let out = crate::harness::process::run_with_timeout(cmd, std::time::Duration::from_secs(120));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains("panicked"),
        "ferry {args:?} panicked\n{text}"
    );
    (out, text)
}

/// `ferry fsck` of a stopped Ferry's store: panics (with fsck's report, Ferry's log
/// tail and the store's files) unless it exits 0 reporting no problem. Returns the
/// report.
pub fn assert_fsck_clean(ferry: &Ferry, what: &str) -> String {
    let (out, text) = ferry_cli(ferry, &["fsck"]);
    if !out.status.success() || !text.contains("0 problem(s)") {
        let mut files: Vec<String> = files_under(&ferry.storage_root())
            .iter()
            .filter(|p| !p.starts_with(ferry.storage_root().join("index")))
            .map(|p| {
                let len = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
                format!("  {} ({len} bytes)", p.display())
            })
            .collect();
        files.sort();
        panic!(
            "{what}: `ferry fsck` is not clean ({})\n--- fsck ---\n{text}\n--- store files (index/ left out) ---\n{}\n--- ferry log (tail) ---\n{}",
            out.status,
            files.join("\n"),
            crate::harness::process::tail_str(&ferry.log(), 40)
        );
    }
    text
}

/// What a client got for one GET, read to the end without panicking.
#[derive(Debug)]
pub enum Outcome {
    /// Status 200 and a body of the declared length.
    Complete { body: Vec<u8>, x_cache: String },
    /// Status 200, then the body ended early or errored.
    Cut { got: usize, error: String },
    /// Any other status, with its body.
    Status { status: u16, body: Vec<u8> },
    /// No response at all.
    NoResponse(String),
}

impl Outcome {
    /// For messages, without dumping bodies.
    pub fn describe(&self) -> String {
        match self {
            Outcome::Complete { body, x_cache } => {
                format!("200, {} bytes, X-Cache {x_cache}", body.len())
            }
            Outcome::Cut { got, error } => format!("200, cut after {got} bytes: {error}"),
            Outcome::Status { status, body } => format!(
                "{status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(1000)])
            ),
            Outcome::NoResponse(e) => format!("no response: {e}"),
        }
    }
}

/// `GET url` (with `accept` types), classified.
pub async fn fetch_outcome(url: &str, accept: &[&str]) -> Outcome {
    let mut resp = match with_accept(client().get(url), accept).send().await {
        Ok(r) => r,
        Err(e) => return Outcome::NoResponse(e.to_string()),
    };
    let status = resp.status().as_u16();
    let declared = resp.content_length();
    let x_cache = crate::harness::http::header(&resp, "x-cache").to_owned();
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => body.extend_from_slice(&c),
            Ok(None) => break,
            Err(e) => {
                return Outcome::Cut {
                    got: body.len(),
                    error: e.to_string(),
                };
            }
        }
    }
    if status != 200 {
        return Outcome::Status { status, body };
    }
    match declared {
        Some(n) if n as usize != body.len() => Outcome::Cut {
            got: body.len(),
            error: format!("body of {} bytes, Content-Length {n}", body.len()),
        },
        _ => Outcome::Complete { body, x_cache },
    }
}

/// Pulls `img` through Ferry by tag as a client does (manifest, then config and
/// layers), verifying every byte against its digest. Returns the X-Cache of the
/// manifest and of each blob, in that order.
pub async fn pull_image(ferry_url: &str, img: &crate::harness::images::PushedImage) -> Vec<String> {
    let base = format!("{ferry_url}/v2/local/{}", img.repo);
    let m = get(
        &format!("{base}/manifests/{}", img.tag),
        &[img.media_type.as_str()],
    )
    .await;
    assert_eq!(
        m.status,
        200,
        "manifest of {}: {}",
        img.reference(),
        m.text()
    );
    assert_eq!(
        crate::harness::sha256_digest(&m.body),
        img.manifest_digest,
        "manifest bytes of {}",
        img.reference()
    );
    let mut caches = vec![m.x_cache().to_owned()];
    for blob in img.blobs() {
        let b = get(&format!("{base}/blobs/{}", blob.digest), &[]).await;
        assert_eq!(
            b.status,
            200,
            "blob {} of {}: {}",
            blob.digest,
            img.reference(),
            b.text()
        );
        assert_eq!(
            crate::harness::sha256_digest(&b.body),
            blob.digest,
            "bytes of {} served for {}",
            blob.digest,
            img.reference()
        );
        caches.push(b.x_cache().to_owned());
    }
    caches
}

/// GETs `img`'s manifest from every one of `urls` at once (a URL may repeat), each
/// answer checked to be its exact bytes; how many answers had each `X-Cache`.
pub async fn manifest_gets_at_once(
    urls: Vec<String>,
    img: &crate::harness::images::PushedImage,
) -> std::collections::BTreeMap<String, usize> {
    let gets: Vec<_> = urls
        .into_iter()
        .map(|url| {
            let accept = img.media_type.clone();
            tokio::spawn(async move { get(&url, &[accept.as_str()]).await })
        })
        .collect();
    let mut caches = std::collections::BTreeMap::<String, usize>::new();
    for g in gets {
        let m = tokio::time::timeout(std::time::Duration::from_secs(60), g)
            .await
            .expect("every GET within 60 s")
            .unwrap();
        assert_eq!(m.status, 200, "{}", m.text());
        assert_eq!(m.body, img.manifest, "manifest bytes");
        *caches.entry(m.x_cache().to_owned()).or_default() += 1;
    }
    caches
}
