//! A test CA (rcgen), leaf certificates signed by it, and an HTTPS listener for axum.
//!
//! The listener accepts TCP connections in a background task and runs each TLS
//! handshake in its own task, so a client that stalls or fails its handshake never
//! blocks the others; axum only ever sees finished TLS streams.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A CA that signs the emulator's server certificates. Its PEM is written to a file
/// (Ferry's `ca_file`).
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
    pem_path: PathBuf,
}

/// A leaf certificate and its key.
pub struct Leaf {
    pub cert_der: CertificateDer<'static>,
    pub cert_pem: String,
    pub key_pkcs8_der: Vec<u8>,
}

impl TestCa {
    /// Generates a P-256 CA and writes its PEM to `<dir>/ca.pem`.
    pub fn generate(dir: &Path) -> TestCa {
        let key = rcgen::KeyPair::generate().expect("generate the CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Ferry ACR emulator test CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("self-sign the CA");
        let pem = cert.pem();
        let pem_path = dir.join("ca.pem");
        std::fs::write(&pem_path, &pem).expect("write ca.pem");
        TestCa {
            issuer: rcgen::Issuer::new(params, key),
            pem,
            pem_path,
        }
    }

    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// The CA certificate's PEM file.
    pub fn pem_path(&self) -> &Path {
        &self.pem_path
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let key = rcgen::KeyPair::generate().expect("generate a leaf key");
        let sans: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
        let mut params = rcgen::CertificateParams::new(sans).expect("leaf params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0]);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign the leaf certificate");
        Leaf {
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_pkcs8_der: key.serialize_der(),
        }
    }

    /// A reqwest root certificate for this CA.
    pub fn reqwest_cert(&self) -> reqwest::Certificate {
        reqwest::Certificate::from_pem(self.pem.as_bytes()).expect("CA PEM for reqwest")
    }
}

/// A rustls server config presenting `leaf` (HTTP/1.1 only).
pub fn server_config(leaf: &Leaf) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.cert_der.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key_pkcs8_der.clone())),
        )
        .expect("server certificate and key");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// An axum [`axum::serve::Listener`] that yields TLS streams.
pub struct TlsListener {
    rx: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        SocketAddr,
    )>,
    local: SocketAddr,
}

impl TlsListener {
    /// Must be called inside a tokio runtime: spawns the accept loop.
    pub fn new(listener: std::net::TcpListener, config: Arc<rustls::ServerConfig>) -> TlsListener {
        listener.set_nonblocking(true).expect("nonblocking");
        let local = listener.local_addr().expect("local_addr");
        let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let Ok((tcp, peer)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let acceptor = acceptor.clone();
                let conn_tx = tx.clone();
                tokio::spawn(async move {
                    let handshake =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await;
                    if let Ok(Ok(tls)) = handshake {
                        let _ = conn_tx.send((tls, peer)).await;
                    }
                });
                if tx.is_closed() {
                    return;
                }
            }
        });
        TlsListener { rx, local }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accept loop never ends while the runtime runs.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
