//! HTTPS beside plain HTTP: skopeo pulls over TLS trusting only a test CA, HTTP/2 is
//! negotiated by ALPN, SIGTERM stops both listeners, and a replaced certificate is
//! served without a restart while a broken replacement is refused with a warning.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

use crate::harness::acr::tls::{Leaf, TestCa};
use crate::harness::ferry::{Ferry, FerryBuilder, LOCAL, Upstream};
use crate::harness::http::media;
use crate::harness::images::{PushedImage, push_image_http};
use crate::harness::process::{require_binary, run_with_timeout};
use crate::harness::registry::{Registry, RegistryAuth};

/// Writes `leaf` as `server.crt` / `server.key` in `dir`, each replaced by a rename (as
/// cert-manager and Secret mounts do).
fn write_pair(dir: &Path, leaf: &Leaf) -> (PathBuf, PathBuf) {
    let key_pem = pem::encode(&pem::Pem::new("PRIVATE KEY", leaf.key_pkcs8_der.clone()));
    let cert = dir.join("server.crt");
    let key = dir.join("server.key");
    replace(&key, key_pem.as_bytes());
    replace(&cert, leaf.cert_pem.as_bytes());
    (cert, key)
}

fn replace(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

fn ferry_with_tls(upstream_url: &str, cert: &Path, key: &Path) -> Ferry {
    FerryBuilder::new()
        .upstream(Upstream::local(upstream_url))
        .extra_toml(&format!(
            "[tls]\nlisten = \"127.0.0.1:0\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            cert.display(),
            key.display()
        ))
        .start()
}

/// `skopeo copy [extra] docker://<addr>/local/<image> dir:<dest>`, TLS verified.
fn skopeo_copy(addr: &str, img: &PushedImage, extra: &[&str], dest: &Path) -> std::process::Output {
    let mut cmd = Command::new(require_binary("skopeo", "skopeo"));
    cmd.args(["--insecure-policy", "copy", "--retry-times", "0"]);
    cmd.args(extra);
    cmd.arg(format!("docker://{addr}/{LOCAL}/{}", img.reference()));
    cmd.arg(format!("dir:{}", dest.display()));
    run_with_timeout(cmd, Duration::from_secs(120))
}

/// A client trusting only `ca`; HTTP/1.1 only, or HTTP/2 (offered by ALPN).
fn https_client(ca: &TestCa, http1: bool) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([ca.reqwest_cert()])
        .timeout(Duration::from_secs(30));
    if http1 {
        b = b.http1_only();
    }
    b.build().expect("https client")
}

/// The leaf certificate Ferry presents at `addr`, verified against `ca`.
async fn served_certificate(addr: &str, ca: &TestCa) -> Vec<u8> {
    let der = pem::parse(ca.pem()).expect("CA PEM").into_contents();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(der)).expect("CA");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into());
    let tls = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .expect("handshake in time")
    .expect("handshake");
    tls.get_ref().1.peer_certificates().expect("a certificate")[0].to_vec()
}

#[tokio::test(flavor = "multi_thread")]
async fn skopeo_pulls_over_https_and_http2_is_negotiated() {
    let registry = Registry::start(RegistryAuth::None);
    let img = push_image_http(&registry, "team/app", "1", &[300_000, 40_000]);
    let dir = crate::harness::temp_dir("tls");
    let ca = TestCa::generate(dir.path());
    let (cert, key) = write_pair(dir.path(), &ca.leaf(&["127.0.0.1", "localhost"]));
    let mut ferry = ferry_with_tls(&registry.url(), &cert, &key);
    let tls = ferry.tls_addr();
    assert_ne!(tls, ferry.addr(), "two listeners");

    // skopeo trusts the test CA through a cert dir, and verifies.
    let certs = dir.path().join("certs.d");
    std::fs::create_dir(&certs).unwrap();
    std::fs::copy(ca.pem_path(), certs.join("ca.crt")).unwrap();
    let dest = dir.path().join("copy");
    let certs_arg = certs.display().to_string();
    let out = skopeo_copy(&tls, &img, &["--src-cert-dir", &certs_arg], &dest);
    assert!(
        out.status.success(),
        "skopeo over TLS: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for blob in img.blobs() {
        let bytes = std::fs::read(dest.join(crate::harness::digest_hex(&blob.digest))).unwrap();
        assert!(bytes == blob.bytes, "bytes of {}", blob.digest);
    }
    // Without the CA the certificate is not trusted: TLS is really verified.
    let out = skopeo_copy(&tls, &img, &[], &dir.path().join("untrusted"));
    assert!(!out.status.success(), "skopeo trusted an unknown CA");

    let url = format!("https://{tls}/v2/{LOCAL}/team/app/manifests/1");
    for (http1, version) in [
        (false, reqwest::Version::HTTP_2),
        (true, reqwest::Version::HTTP_11),
    ] {
        let resp = https_client(&ca, http1)
            .get(&url)
            .header("accept", media::OCI_MANIFEST)
            .send()
            .await
            .expect("GET over TLS");
        assert_eq!(resp.version(), version);
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.bytes().await.unwrap().to_vec(), img.manifest);
    }
    // The plain listener still serves.
    let r = crate::support::get(&format!("{}/v2/", ferry.url()), &[]).await;
    assert_eq!(r.status, 200);

    // An HTTP/2 connection left open does not hold up SIGTERM.
    let idle = https_client(&ca, false);
    idle.get(format!("https://{tls}/v2/")).send().await.unwrap();
    assert!(
        ferry.terminate(),
        "ferry did not stop on SIGTERM with TLS on"
    );
    assert!(ferry.log().contains("stopped"), "{}", ferry.log());
    drop(idle);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replaced_certificate_is_served_without_restart() {
    let dir = crate::harness::temp_dir("tls");
    let ca = TestCa::generate(dir.path());
    let first = ca.leaf(&["127.0.0.1"]);
    let (cert, key) = write_pair(dir.path(), &first);
    // The upstream is never asked: only the listener matters here.
    let mut ferry = ferry_with_tls("http://127.0.0.1:9", &cert, &key);
    let tls = ferry.tls_addr();
    assert_eq!(served_certificate(&tls, &ca).await, first.cert_der.to_vec());

    let second = ca.leaf(&["127.0.0.1"]);
    write_pair(dir.path(), &second);
    let deadline = Instant::now() + Duration::from_secs(20);
    while served_certificate(&tls, &ca).await != second.cert_der.to_vec() {
        assert!(
            Instant::now() < deadline,
            "the new certificate was not served within 20 s\n{}",
            ferry.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A broken replacement: refused with a warning, the working one kept.
    let seen = ferry.log().len();
    replace(
        &cert,
        b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
    );
    let refused = |log: &str| {
        log[seen..]
            .lines()
            .any(|l| l.contains("WARN") && l.contains("keeping the previous certificate"))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !refused(&ferry.log()) {
        assert!(
            Instant::now() < deadline,
            "no warning about the broken certificate within 20 s\n{}",
            ferry.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        served_certificate(&tls, &ca).await,
        second.cert_der.to_vec()
    );
    let resp = https_client(&ca, false)
        .get(format!("https://{tls}/v2/"))
        .send()
        .await
        .expect("still serving");
    assert_eq!(resp.status(), 200);
    ferry.assert_running();
}
