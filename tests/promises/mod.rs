//! README promises, each done the way a user would and checked by what they would
//! notice (issue 12): secrets from the environment and from rotated files, proxies,
//! `FERRY_CONFIG`, `max_stale`, SIGINT, reload messages, static cache rules, pins,
//! `/readyz` on a read-only store, eviction and last-use times.

/// `[[pin]]` `refresh` and `platform`.
mod pins;
/// The upstream `proxy` key, `HTTP(S)_PROXY` and `NO_PROXY`.
mod proxy;
/// A reload names the changed settings that need a restart and keeps them.
mod reload;
/// A static cache rule (`docker.io/library/ubuntu` → `mirrored/ubuntu`) end to end.
mod rules;
/// `password_env`, `kind = "bearer"` with a rotated `token_file`, a rotated Entra
/// `client_secret_file`: taken where the README says, never logged.
mod secrets;
/// `max_stale`: a tag past `tag_ttl + max_stale` is no longer served offline.
mod stale;
/// `ferry serve` on `FERRY_CONFIG`; the `insecure_skip_verify` warning at start.
mod startup;
/// SIGINT stops Ferry as SIGTERM does.
mod stop;
/// `/readyz` on a read-only store; eviction down to 90%; last use kept across a restart.
mod store;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::harness::ferry::Ferry;
use crate::harness::hostile::Hostile;
use crate::harness::process::run_with_timeout;
use crate::support::files_under;

/// Bytes of every file under the store's `blobs/`.
fn store_blob_bytes(ferry: &Ferry) -> u64 {
    files_under(&ferry.storage_root().join("blobs"))
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

/// Whether the store holds a blob file for `digest`.
fn stored(ferry: &Ferry, digest: &str) -> bool {
    crate::support::stored_blob_path(ferry, digest).exists()
}

/// Replaces `path` with `text` the way a Kubernetes Secret update does: a new file
/// renamed over the old one.
fn rotate_file(path: &Path, text: &str) {
    let tmp = path.with_extension("rotating");
    std::fs::write(&tmp, text).expect("write the rotated file");
    std::fs::rename(&tmp, path).expect("rename the rotated file into place");
}

/// A directory bind-mounted read-only over itself: new opens under it fail with
/// `EROFS`, as on a file system remounted read-only after an error, while files
/// already open stay writable. Unmounted when dropped.
struct ReadOnly {
    path: PathBuf,
    mounted: bool,
}

impl ReadOnly {
    fn mount(path: &Path) -> ReadOnly {
        let mount = |args: &[&str]| {
            let mut cmd = Command::new("mount");
            cmd.args(args).arg(path);
            let out = run_with_timeout(cmd, Duration::from_secs(10));
            assert!(
                out.status.success(),
                "mount {args:?} {} (needs root): {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        mount(&["--bind", &path.display().to_string()]);
        // From here on the guard unmounts, whatever happens next.
        let guard = ReadOnly {
            path: path.to_owned(),
            mounted: true,
        };
        mount(&["-o", "remount,bind,ro"]);
        guard
    }

    fn unmount(&mut self) {
        if !self.mounted {
            return;
        }
        let mut cmd = Command::new("umount");
        cmd.arg(&self.path);
        if !run_with_timeout(cmd, Duration::from_secs(10))
            .status
            .success()
        {
            let mut lazy = Command::new("umount");
            lazy.arg("-l").arg(&self.path);
            let _ = run_with_timeout(lazy, Duration::from_secs(10));
        }
        self.mounted = false;
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// An HTTP proxy on 127.0.0.1 that counts what goes through it: `CONNECT host:port`
/// tunnels, and plain requests in absolute form (`GET http://host:port/… HTTP/1.1`),
/// whose connection it pipes to `host:port` as is (Distribution, like any Go server,
/// takes the absolute form). It resolves the names it is given itself, as an egress
/// proxy in front of a private network does. Stops when dropped.
pub(crate) struct CountingProxy {
    server: Hostile,
    /// The first request line of every connection made through it.
    seen: Arc<Mutex<Vec<String>>>,
    connections: Arc<AtomicUsize>,
}

impl CountingProxy {
    /// A proxy that connects to the hosts it is asked for, `resolve` (host, IP) first.
    pub(crate) fn start(resolve: &[(&str, &str)]) -> CountingProxy {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (s, c) = (seen.clone(), connections.clone());
        let resolve: Arc<Vec<(String, String)>> = Arc::new(
            resolve
                .iter()
                .map(|(h, ip)| (h.to_string(), ip.to_string()))
                .collect(),
        );
        let server = Hostile::spawn("127.0.0.1", move |listener, _| async move {
            while let Ok((client, _)) = listener.accept().await {
                let (s, c, r) = (s.clone(), c.clone(), resolve.clone());
                tokio::spawn(async move {
                    let _ = proxy_one(client, s, c, &r).await;
                });
            }
        });
        CountingProxy {
            server,
            seen,
            connections,
        }
    }

    pub(crate) fn url(&self) -> String {
        self.server.url()
    }

    pub(crate) fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub(crate) fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

async fn proxy_one(
    mut client: tokio::net::TcpStream,
    seen: Arc<Mutex<Vec<String>>>,
    connections: Arc<AtomicUsize>,
    resolve: &[(String, String)],
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The request head, at most 64 KiB.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 64 << 10 {
        if client.read(&mut byte).await? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let line = text.lines().next().unwrap_or("").to_owned();
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let authority = if method == "CONNECT" {
        target.to_owned()
    } else {
        let rest = target.strip_prefix("http://").unwrap_or("");
        rest.split('/').next().unwrap_or("").to_owned()
    };
    connections.fetch_add(1, Ordering::SeqCst);
    seen.lock().unwrap().push(line.clone());
    let authority = match authority.rsplit_once(':') {
        Some((host, port)) => match resolve.iter().find(|(h, _)| h == host) {
            Some((_, ip)) => format!("{ip}:{port}"),
            None => authority.clone(),
        },
        None => authority.clone(),
    };
    let mut upstream = match tokio::net::TcpStream::connect(&authority).await {
        Ok(u) => u,
        Err(_) => {
            client
                .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
                .await?;
            return Ok(());
        }
    };
    if method == "CONNECT" {
        client
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await?;
    } else {
        upstream.write_all(&head).await?;
    }
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}

/// An HTTP front for Distribution that only answers requests carrying
/// `Authorization: Bearer <token>` with the token it currently accepts (`401`
/// otherwise), and records every `Authorization` it saw. Stops when dropped.
struct BearerGate {
    server: Hostile,
    accepted: Arc<Mutex<String>>,
    seen: Arc<Mutex<Vec<Option<String>>>>,
}

impl BearerGate {
    fn start(registry_addr: &str, token: &str) -> BearerGate {
        let accepted = Arc::new(Mutex::new(token.to_owned()));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let upstream = format!("http://{registry_addr}");
        let (a, s) = (accepted.clone(), seen.clone());
        let server = Hostile::http("127.0.0.1", move |_| {
            let client = reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("gate client");
            axum::Router::new().fallback(move |req: axum::extract::Request| {
                let (a, s, client, upstream) =
                    (a.clone(), s.clone(), client.clone(), upstream.clone());
                async move { gate(req, &a, &s, &client, &upstream).await }
            })
        });
        BearerGate {
            server,
            accepted,
            seen,
        }
    }

    fn url(&self) -> String {
        self.server.url()
    }

    fn accept_only(&self, token: &str) {
        *self.accepted.lock().unwrap() = token.to_owned();
    }

    fn seen(&self) -> Vec<Option<String>> {
        self.seen.lock().unwrap().clone()
    }
}

async fn gate(
    req: axum::extract::Request,
    accepted: &Mutex<String>,
    seen: &Mutex<Vec<Option<String>>>,
    client: &reqwest::Client,
    upstream: &str,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    seen.lock().unwrap().push(auth.clone());
    let want = format!("Bearer {}", accepted.lock().unwrap());
    if auth.as_deref() != Some(want.as_str()) {
        return (
            axum::http::StatusCode::UNAUTHORIZED,
            [("content-type", "application/json")],
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"token required"}]}"#,
        )
            .into_response();
    }
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let mut forward = client.request(req.method().clone(), format!("{upstream}{path}"));
    for name in ["accept", "range"] {
        for v in req.headers().get_all(name) {
            forward = forward.header(name, v);
        }
    }
    let resp = match forward.send().await {
        Ok(r) => r,
        Err(e) => return (axum::http::StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    let mut out = axum::http::Response::builder().status(resp.status().as_u16());
    for (name, value) in resp.headers() {
        if name != "transfer-encoding" && name != "connection" {
            out = out.header(name.as_str(), value.as_bytes());
        }
    }
    let body = resp.bytes().await.unwrap_or_default();
    out.body(axum::body::Body::from(body))
        .expect("gate response")
}
