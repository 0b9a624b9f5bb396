//! Where an upstream's redirects may lead Ferry (issue 11, item 6's redirect rules).
//!
//! A hostile upstream (in-process, on 127.0.0.1, wanting a static Bearer token)
//! redirects requests. Redirects to another origin keep working for manifests and
//! blobs alike, as registry.k8s.io sends every request to its regional backends, and
//! the token never goes along. A redirect to a link-local address (cloud metadata
//! endpoints, 169.254.0.0/16 and fe80::/10) is refused at once: 502 naming the
//! upstream, nothing asked there. So is a redirect from an https upstream to plain
//! http, which anyone on the path could answer.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::harness::acr::tls::{TestCa, TlsListener, server_config};
use crate::harness::ferry::{FerryBuilder, LOCAL, Upstream};
use crate::harness::http::media;
use crate::harness::sha256_digest;
use crate::support::{blob_url, get, manifest_url};

/// The upstream's `connect_timeout` where a link-local target must be refused before
/// any connection: long enough that "refused at once" has seconds of margin.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

const TOKEN: &str = "redirect-test-token-7f3a9c";

/// One server's record of the requests it got: `(path, Authorization)`.
#[derive(Default)]
struct Seen(Mutex<Vec<(String, Option<String>)>>);

impl Seen {
    fn record(&self, req: &Request) {
        let authz = req
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        self.0
            .lock()
            .unwrap()
            .push((req.uri().path().to_string(), authz));
    }

    fn all(&self) -> Vec<(String, Option<String>)> {
        self.0.lock().unwrap().clone()
    }
}

/// The upstream: wants the token, and redirects `/v2/<kind>/app/...` by `kind`.
struct Redirector {
    backend: String,
    seen: Seen,
}

async fn redirector(State(s): State<Arc<Redirector>>, req: Request) -> Response {
    s.seen.record(&req);
    let authorized = req
        .headers()
        .get(header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == format!("Bearer {TOKEN}").as_bytes());
    if !authorized {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let path = req.uri().path().to_string();
    if path == "/v2/" {
        return (StatusCode::OK, "{}").into_response();
    }
    let rest = path.splitn(4, '/').nth(3).unwrap_or("");
    let target = match path.split('/').nth(2).unwrap_or("") {
        // As registry.k8s.io does: every request to a backend on another origin.
        "k8s" => format!("{}/{rest}", s.backend),
        "metadata" => "http://169.254.169.254/latest/meta-data/iam/security-credentials/".into(),
        "metadata6" => "http://[fe80::a9fe:a9fe]/metadata/identity/oauth2/token".into(),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, target)]).into_response()
}

/// The backend the `k8s` redirects go to: serves one manifest and its blobs, by
/// path suffix, to anyone.
struct Backend {
    manifest: Vec<u8>,
    blobs: Vec<Vec<u8>>,
    seen: Seen,
}

async fn backend(State(s): State<Arc<Backend>>, req: Request) -> Response {
    s.seen.record(&req);
    let path = req.uri().path();
    if path.contains("/manifests/") {
        return (
            [
                (header::CONTENT_TYPE, media::OCI_MANIFEST.to_string()),
                (
                    header::HeaderName::from_static("docker-content-digest"),
                    sha256_digest(&s.manifest),
                ),
            ],
            s.manifest.clone(),
        )
            .into_response();
    }
    match s
        .blobs
        .iter()
        .find(|b| path.ends_with(&format!("/blobs/{}", sha256_digest(b))))
    {
        Some(b) => b.clone().into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// A small manifest with its config and one layer: `(manifest, config, layer)`.
fn image() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
            .to_vec();
    let layer = crate::harness::images::random_bytes(3000);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha256_digest(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": sha256_digest(&layer), "size": layer.len()}],
    }))
    .unwrap();
    (manifest, config, layer)
}

#[tokio::test(flavor = "multi_thread")]
async fn redirects_cross_origins_without_credentials_but_never_to_link_local_addresses() {
    let (manifest, config, layer) = image();
    let back = Arc::new(Backend {
        manifest: manifest.clone(),
        blobs: vec![config, layer.clone()],
        seen: Seen::default(),
    });
    let backend_url = serve(
        axum::Router::new()
            .fallback(backend)
            .with_state(back.clone()),
    )
    .await;
    let up = Arc::new(Redirector {
        backend: backend_url,
        seen: Seen::default(),
    });
    let upstream_url = serve(
        axum::Router::new()
            .fallback(redirector)
            .with_state(up.clone()),
    )
    .await;
    let ferry = FerryBuilder::new()
        .upstream(
            Upstream::local(&upstream_url)
                .bearer_auth(TOKEN)
                .raw(&format!(
                    "connect_timeout = \"{}s\"",
                    CONNECT_TIMEOUT.as_secs()
                )),
        )
        .start();

    // Across origins, manifests included: served, and the token stayed home.
    let m = get(
        &manifest_url(&ferry, "k8s/app", "v1"),
        &[media::OCI_MANIFEST],
    )
    .await;
    assert_eq!(m.status, 200, "redirected manifest: {}", m.text());
    assert_eq!(m.body, manifest);
    let b = get(&blob_url(&ferry, "k8s/app", &sha256_digest(&layer)), &[]).await;
    assert_eq!(b.status, 200, "redirected blob: {}", b.text());
    assert!(b.body == layer, "redirected blob bytes");
    let at_backend = back.seen.all();
    assert!(
        at_backend.iter().any(|(p, _)| p.contains("/manifests/"))
            && at_backend.iter().any(|(p, _)| p.contains("/blobs/")),
        "the backend served both: {at_backend:?}"
    );
    assert!(
        up.seen
            .all()
            .iter()
            .any(|(p, a)| p.contains("/k8s/app/manifests/") && a.is_some()),
        "the upstream got the token (so there was one to leak)"
    );
    for (path, authz) in &at_backend {
        assert!(
            authz.is_none(),
            "{path} reached the other origin with Authorization {authz:?}"
        );
    }

    // Link-local targets: refused before any connection is tried. (Asking would
    // have taken until the connect timeout on this machine, and on a cloud VM would
    // have fetched the metadata service's answer.)
    for kind in ["metadata", "metadata6"] {
        for url in [
            manifest_url(&ferry, &format!("{kind}/app"), "v1"),
            blob_url(&ferry, &format!("{kind}/app"), &sha256_digest(b"secret")),
        ] {
            let started = Instant::now();
            let r = get(&url, &[media::OCI_MANIFEST]).await;
            let took = started.elapsed();
            assert_eq!(r.status, 502, "{url}: {}", r.text());
            let message = crate::harness::http::oci_error(&r.body).1;
            assert!(
                message.contains(LOCAL) && message.contains("link-local"),
                "{url}: the error names the upstream and why: {message}"
            );
            assert!(
                took < CONNECT_TIMEOUT,
                "{url}: took {took:?}: Ferry tried to connect (connect_timeout {CONNECT_TIMEOUT:?})"
            );
        }
    }
    assert!(
        !ferry.log().contains("serving from cache and probing"),
        "a refused redirect is the upstream's answer, not it being down"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_https_upstream_cannot_redirect_to_plain_http() {
    const HOST: &str = "registry.redirect-test.invalid";
    let (manifest, config, layer) = image();
    let back = Arc::new(Backend {
        manifest,
        blobs: vec![config, layer.clone()],
        seen: Seen::default(),
    });
    let plain = serve(
        axum::Router::new()
            .fallback(backend)
            .with_state(back.clone()),
    )
    .await;
    // The same redirecting upstream, over TLS: its `k8s` redirects now step down.
    let dir = crate::harness::temp_dir("redirect-tls");
    let ca = TestCa::generate(dir.path());
    let up = Arc::new(Redirector {
        backend: plain,
        seen: Seen::default(),
    });
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let tls = TlsListener::new(listener, server_config(&ca.leaf(&[HOST])));
    let app = axum::Router::new()
        .fallback(redirector)
        .with_state(up.clone());
    tokio::spawn(async move { axum::serve(tls, app).await });
    let ferry = FerryBuilder::new()
        .upstream(
            Upstream::local(&format!("https://{HOST}:{port}"))
                .bearer_auth(TOKEN)
                .raw(&format!("resolve = {{ \"{HOST}\" = \"127.0.0.1\" }}"))
                .raw(&format!("ca_file = \"{}\"", ca.pem_path().display())),
        )
        .start();

    for url in [
        manifest_url(&ferry, "k8s/app", "v1"),
        blob_url(&ferry, "k8s/app", &sha256_digest(&layer)),
    ] {
        let r = get(&url, &[media::OCI_MANIFEST]).await;
        assert_eq!(r.status, 502, "{url}: {}", r.text());
        let message = crate::harness::http::oci_error(&r.body).1;
        assert!(
            message.contains("upstream local") && message.contains("https to plain http"),
            "{url}: the error names the upstream and why: {message}"
        );
    }
    assert!(
        up.seen
            .all()
            .iter()
            .any(|(p, a)| p.contains("/k8s/app/") && a.is_some()),
        "Ferry reached the upstream over TLS with its token: {:?}",
        up.seen.all()
    );
    assert_eq!(back.seen.all(), vec![], "nothing was asked over plain http");
}
