//! A private Azure Container Registry behind Private Link, and the Entra ID it trusts,
//! emulated on loopback for Ferry's `kind = "entra"` upstream auth
//! (`../shared/reference/emulating-acr.md`; protocol.md §3).
//!
//! ```text
//! Ferry ─https─▶ 127.0.0.1:E  Entra: POST /{tenant}/oauth2/v2.0/token          (entra.rs)
//!       ─http──▶ 127.0.0.1:M  managed identity, App Service protocol          (entra.rs)
//!       ─https─▶ 127.0.0.1:A  ACR front, cert for contoso.azurecr.io:
//!                             POST /oauth2/exchange, POST /oauth2/token
//!                             /v2/* ─proxy─▶ Distribution 2.8.2 (unix socket, token auth,
//!                                           `redirect` storage middleware)
//!       ─https─▶ 127.0.0.2:D  data endpoint, cert for contoso.westeurope.data.azurecr.io:
//!                             blob bytes behind a SAS-style `?se=&sig=`; 400 on any
//!                             `Authorization`
//! ```
//!
//! - Entra checks the tenant, `scope` (exactly `https://containerregistry.azure.net/.default`),
//!   and a client secret, an RS256 client assertion signed by the registered
//!   certificate (`x5t`, `aud` = token URL, `iss` = `sub` = client id, `exp`), or the
//!   registered federated token (workload identity). It answers like Entra:
//!   `{"token_type","expires_in","ext_expires_in","access_token"}` or
//!   `{"error","error_description","error_codes"}`.
//! - `/oauth2/exchange` takes an unexpired Entra token (audience
//!   `https://containerregistry.azure.net`, optional `tenant` = its `tid`) and returns an
//!   ACR refresh token (a JWT with `exp`). `/oauth2/token` takes that refresh token and
//!   returns `{"access_token"}` only — no `expires_in`, as documented for ACR — an ES256
//!   JWT Distribution trusts (`kid` = libtrust fingerprint), granting `pull` only.
//! - The front proxies `/v2/*` to Distribution, whose challenge names
//!   `realm="https://contoso.azurecr.io:A/oauth2/token"`, `service="contoso.azurecr.io"`
//!   (not host:port). Distribution answers blob GET/HEAD with a 307 to the data endpoint;
//!   the front appends `se=<unix expiry>&sig=<HMAC(path|se)>` to the `Location`.
//! - Before proxying, the front checks a bearer token's `exp` strictly (Distribution
//!   allows 60 s of leeway) and answers 401 with the challenge when it has passed.
//! - Knobs: token and redirect lifetimes, 429 + `Retry-After` for the next N requests
//!   whose path contains a pattern, 401 for the next N authenticated `/v2` requests,
//!   a data-rate limit, cutting data responses short.
//! - Every request is recorded with its headers and status; every secret and token
//!   the emulator issued or checked is kept, so tests can grep for leaks.
//!
//! Everything stops when [`AcrEmulator`] drops.

pub mod entra;
pub mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use rcgen::PublicKeyData as _;
use serde_json::{Value, json};

use ferry_testkit::ferry_config::{Entra, EntraCredential, FerryConfig, Upstream, UpstreamAuth};

use super::ferry::FerryBuilder;
use super::images::{Blob, PushedImage, make_layer};
use super::process::{ChildGuard, require_binary};
use super::token_server::libtrust_key_id;

/// The registry's login server name (and Distribution's `service`).
pub const REGISTRY_HOST: &str = "contoso.azurecr.io";
/// The dedicated data endpoint's name.
pub const DATA_HOST: &str = "contoso.westeurope.data.azurecr.io";
/// The loopback address the data endpoint listens on.
pub const DATA_IP: &str = "127.0.0.2";
/// The scope every Entra token request must ask for.
pub const ACR_SCOPE: &str = "https://containerregistry.azure.net/.default";
/// The audience of Entra tokens for ACR (the managed-identity `resource`).
pub const ACR_RESOURCE: &str = "https://containerregistry.azure.net";
/// `iss` of ACR's refresh and access tokens (Distribution's `issuer`).
pub const ACR_ISSUER: &str = "Azure Container Registry";
/// Ferry's name for the upstream.
pub const UPSTREAM: &str = "acr";
/// The cache rule AKS nodes use: `mcr.microsoft.com/*` from the ACR's
/// `aks-managed-repository/*`.
const MCR_RULE: &str = "aks-managed-mcr";
const MCR_SOURCE: &str = "mcr.microsoft.com/*";
const MCR_TARGET: &str = "aks-managed-repository/*";

const BINARY: &str = "/usr/bin/docker-registry";
const BLOB_PREFIX: &str = "/docker/registry/v2/blobs/sha256/";

/// Tenant, app registrations and identities Entra knows.
#[derive(Clone, Debug)]
pub struct Identities {
    pub tenant_id: String,
    /// The service principal: has a client secret and a certificate.
    pub sp_client_id: String,
    pub sp_client_secret: String,
    /// A second app whose only credential is a federated (workload identity) token.
    pub wi_client_id: String,
    pub federated_token: String,
    /// The system-assigned managed identity (no `client_id` in the request).
    pub mi_system_client_id: String,
    /// A user-assigned managed identity (`client_id=` in the request).
    pub mi_user_client_id: String,
    /// `IDENTITY_HEADER` / `x-identity-header`.
    pub identity_header: String,
}

/// The lifetimes the emulator issues with; changeable at run time.
#[derive(Clone, Copy, Debug)]
pub struct Lifetimes {
    /// Entra access tokens (`expires_in`).
    pub entra: u64,
    /// ACR refresh tokens from `/oauth2/exchange`.
    pub refresh: u64,
    /// ACR access tokens from `/oauth2/token`.
    pub access: u64,
    /// `se` of the data-endpoint redirect (ACR: at least 20 minutes).
    pub redirect: u64,
}

impl Default for Lifetimes {
    fn default() -> Self {
        Lifetimes {
            entra: 3599,
            refresh: 3 * 3600,
            access: 75 * 60,
            redirect: 20 * 60,
        }
    }
}

/// Which server of the emulator saw a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /{tenant}/oauth2/v2.0/token`.
    Entra,
    /// The managed-identity endpoint.
    ManagedIdentity,
    /// `POST /oauth2/exchange`.
    Exchange,
    /// `/oauth2/token` (any method).
    Token,
    /// `/v2/*` on the front.
    Registry,
    /// The data endpoint.
    Data,
    /// Anything else on the front.
    Other,
}

/// One request any emulator server answered.
#[derive(Clone, Debug)]
pub struct Record {
    pub endpoint: Endpoint,
    pub method: String,
    /// Path and query as received.
    pub target: String,
    /// Every header, names lowercased.
    pub headers: Vec<(String, String)>,
    pub status: u16,
    /// When the request arrived.
    pub at: Instant,
    /// What the emulator made of it: credential kind, error code, "throttled", …
    pub detail: String,
    /// Token requests: the scopes asked for.
    pub scopes: Vec<String>,
    /// Entra / managed identity: the client id asked for.
    pub client_id: Option<String>,
}

impl Record {
    /// A request as it arrived, answered 200 unless the endpoint says otherwise.
    pub(super) fn arrived(
        endpoint: Endpoint,
        method: &http::Method,
        target: String,
        headers: &http::HeaderMap,
        at: Instant,
    ) -> Record {
        Record {
            endpoint,
            method: method.to_string(),
            target,
            headers: header_list(headers),
            status: 200,
            at,
            detail: String::new(),
            scopes: Vec::new(),
            client_id: None,
        }
    }

    /// Header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The path without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
}

struct ThrottlePlan {
    pattern: String,
    remaining: usize,
    retry_after: u64,
}

struct Knobs {
    lifetimes: Lifetimes,
    strict_exp: bool,
    /// Data endpoint bytes per second (None: unlimited).
    data_rate: Option<u64>,
    throttles: Vec<ThrottlePlan>,
    /// 401 for this many more authenticated `/v2` requests.
    reject_tokens: usize,
    /// Cut this many more data responses after this many body bytes.
    cut_data: Option<(usize, u64)>,
}

/// JWT keys.
struct Keys {
    entra_enc: jsonwebtoken::EncodingKey,
    entra_dec: jsonwebtoken::DecodingKey,
    entra_kid: String,
    refresh_enc: jsonwebtoken::EncodingKey,
    refresh_dec: jsonwebtoken::DecodingKey,
    access_enc: jsonwebtoken::EncodingKey,
    access_dec: jsonwebtoken::DecodingKey,
    access_kid: String,
    /// The client certificate registered for the service principal.
    client_cert_der: Vec<u8>,
    client_cert_dec: jsonwebtoken::DecodingKey,
    sas_key: [u8; 32],
}

/// State shared by every server.
struct Emu {
    ids: Identities,
    keys: Keys,
    knobs: Mutex<Knobs>,
    records: Mutex<Vec<Record>>,
    /// Every secret and token issued or checked.
    secrets: Mutex<Vec<String>>,
    /// `https://contoso.azurecr.io:A`.
    registry_url: String,
    realm: String,
    storage_root: PathBuf,
    distribution: reqwest::Client,
}

impl Emu {
    fn record(&self, r: Record) {
        self.records.lock().unwrap().push(r);
    }

    fn remember(&self, secret: &str) {
        if secret.is_empty() {
            return;
        }
        let mut s = self.secrets.lock().unwrap();
        if !s.iter().any(|x| x == secret) {
            s.push(secret.to_owned());
        }
    }

    fn lifetimes(&self) -> Lifetimes {
        self.knobs.lock().unwrap().lifetimes
    }
}

/// The running emulator: Entra, managed identity, the ACR front, Distribution and the
/// data endpoint. Stops everything when dropped.
pub struct AcrEmulator {
    emu: Arc<Emu>,
    ca: tls::TestCa,
    entra_addr: SocketAddr,
    mi_addr: SocketAddr,
    front_addr: SocketAddr,
    data_addr: SocketAddr,
    distribution: Option<ChildGuard>,
    runtime: Option<tokio::runtime::Runtime>,
    client_cert_file: PathBuf,
    dir: tempfile::TempDir,
}

fn guid() -> String {
    let b: [u8; 16] = rand::random();
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Seconds since the epoch, with a fraction.
pub fn now_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

pub fn now_secs() -> u64 {
    now_f64() as u64
}

fn random_hex(n: usize) -> String {
    let bytes: Vec<u8> = (0..n).map(|_| rand::random::<u8>()).collect();
    hex::encode(bytes)
}

/// The claims of a JWT, without checking anything (for tests).
pub fn jwt_claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap_or("");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .unwrap_or_default();
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&sha2::Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = sha2::Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let mut outer = sha2::Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

fn header_list(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// The checks `/oauth2/exchange` and `/oauth2/token` share: the grant they take, and
/// the registry's own service name.
fn check_grant_and_service(
    pairs: &[(String, String)],
    grant: &str,
) -> Result<(), (StatusCode, String)> {
    let bad = |m: String| (StatusCode::BAD_REQUEST, m);
    match first(pairs, "grant_type") {
        Some(g) if g == grant => {}
        Some(g) => return Err(bad(format!("unsupported grant_type {g:?}"))),
        None => return Err(bad("grant_type is required".to_owned())),
    }
    if first(pairs, "service") != Some(REGISTRY_HOST) {
        return Err(bad(format!(
            "service {:?} is not this registry ({REGISTRY_HOST})",
            first(pairs, "service")
        )));
    }
    Ok(())
}

fn form_pairs(body: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn query_pairs(query: &str) -> Vec<(String, String)> {
    form_pairs(query.as_bytes())
}

fn first<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn json_response(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        body.to_string(),
    )
        .into_response()
}

/// An OCI-style error body.
fn oci_error(status: StatusCode, code: &str, message: &str) -> Response {
    json_response(
        status,
        json!({"errors": [{"code": code, "message": message, "detail": null}]}),
    )
}

/// The repository named by a `/v2/<repo>/(manifests|blobs|tags|referrers)/…` path.
fn repo_of(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/v2/")?;
    for marker in ["/manifests/", "/blobs/", "/tags/", "/referrers/"] {
        if let Some(i) = rest.rfind(marker) {
            return Some(rest[..i].to_owned());
        }
    }
    None
}

impl AcrEmulator {
    /// Starts everything with default identities and lifetimes.
    pub fn start() -> AcrEmulator {
        AcrEmulator::start_with(Lifetimes::default())
    }

    pub fn start_with(lifetimes: Lifetimes) -> AcrEmulator {
        require_binary(BINARY, "docker-registry");
        let dir = super::temp_dir("acr");
        let d = dir.path().to_owned();
        let ca = tls::TestCa::generate(&d);

        let ids = Identities {
            tenant_id: guid(),
            sp_client_id: guid(),
            // Entra secrets look like this: 40 chars, with `~`, `.`, `_` and `-`.
            sp_client_secret: format!("Qx8Q~{}.b_T-{}", random_hex(14), random_hex(3)),
            wi_client_id: guid(),
            federated_token: String::new(),
            mi_system_client_id: guid(),
            mi_user_client_id: guid(),
            identity_header: format!("idh-{}", random_hex(16)),
        };

        // Keys: Entra (RS256), ACR refresh (ES256), ACR access (ES256, trusted by
        // Distribution through its certificate), the SP's client certificate (RSA).
        let entra_key =
            rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("generate the Entra key");
        let entra_enc =
            jsonwebtoken::EncodingKey::from_rsa_pem(entra_key.serialize_pem().as_bytes())
                .expect("Entra encoding key");
        let entra_dec =
            jsonwebtoken::DecodingKey::from_rsa_pem(entra_key.public_key_pem().as_bytes())
                .expect("Entra decoding key");
        let refresh_key = rcgen::KeyPair::generate().expect("generate the refresh key");
        let refresh_enc =
            jsonwebtoken::EncodingKey::from_ec_pem(refresh_key.serialize_pem().as_bytes())
                .expect("refresh encoding key");
        let refresh_dec =
            jsonwebtoken::DecodingKey::from_ec_pem(refresh_key.public_key_pem().as_bytes())
                .expect("refresh decoding key");
        let access_key = rcgen::KeyPair::generate().expect("generate the access-token key");
        let mut params = rcgen::CertificateParams::new(vec!["acr-token-signer".to_owned()])
            .expect("token cert params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "acr-token-signer");
        let access_cert = params.self_signed(&access_key).expect("token signer cert");
        let bundle = d.join("token-signer.crt");
        std::fs::write(&bundle, access_cert.pem()).expect("write rootcertbundle");
        let access_kid = libtrust_key_id(&access_key.subject_public_key_info());
        let access_enc =
            jsonwebtoken::EncodingKey::from_ec_pem(access_key.serialize_pem().as_bytes())
                .expect("access encoding key");
        let access_dec =
            jsonwebtoken::DecodingKey::from_ec_pem(access_key.public_key_pem().as_bytes())
                .expect("access decoding key");

        let client_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)
            .expect("generate the client certificate key");
        let mut params =
            rcgen::CertificateParams::new(Vec::<String>::new()).expect("client params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ferry-acr-pull");
        let client_cert = params
            .self_signed(&client_key)
            .expect("self-sign the client certificate");
        let client_cert_file = d.join("client-cert.pem");
        // As `az ad sp create-for-rbac --create-cert` writes it: key and certificate
        // in one PEM file.
        std::fs::write(
            &client_cert_file,
            format!("{}{}", client_key.serialize_pem(), client_cert.pem()),
        )
        .expect("write the client certificate file");
        let client_cert_dec =
            jsonwebtoken::DecodingKey::from_rsa_pem(client_key.public_key_pem().as_bytes())
                .expect("client certificate decoding key");

        let keys = Keys {
            entra_enc,
            entra_dec,
            entra_kid: random_hex(10),
            refresh_enc,
            refresh_dec,
            access_enc,
            access_dec,
            access_kid,
            client_cert_der: client_cert.der().to_vec(),
            client_cert_dec,
            sas_key: rand::random(),
        };

        // Bind every listener first: Distribution's config needs the ports.
        let bind = |addr: &str| {
            std::net::TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"))
        };
        let entra_l = bind("127.0.0.1:0");
        let mi_l = bind("127.0.0.1:0");
        let front_l = bind("127.0.0.1:0");
        let data_l = bind(&format!("{DATA_IP}:0"));
        let entra_addr = entra_l.local_addr().unwrap();
        let mi_addr = mi_l.local_addr().unwrap();
        let front_addr = front_l.local_addr().unwrap();
        let data_addr = data_l.local_addr().unwrap();
        let registry_url = format!("https://{REGISTRY_HOST}:{}", front_addr.port());
        let realm = format!("{registry_url}/oauth2/token");

        // Distribution on a unix socket: token auth, blob reads redirected.
        let storage_root = d.join("storage");
        std::fs::create_dir_all(&storage_root).expect("create storage root");
        let socket = d.join("registry.sock");
        let config = format!(
            "version: 0.1\n\
             log:\n  level: info\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\n\
             http:\n  net: unix\n  addr: {socket}\n  secret: ferry-acr-emulator\n\
             auth:\n  token:\n    realm: \"{realm}\"\n    service: \"{REGISTRY_HOST}\"\n    issuer: \"{ACR_ISSUER}\"\n    rootcertbundle: \"{bundle}\"\n\
             middleware:\n  storage:\n    - name: redirect\n      options:\n        baseurl: \"https://{DATA_HOST}:{dport}\"\n",
            root = storage_root.display(),
            socket = socket.display(),
            bundle = bundle.display(),
            dport = data_addr.port(),
        );
        let config_path = d.join("registry.yml");
        std::fs::write(&config_path, config).expect("write registry config");
        let mut cmd = Command::new(BINARY);
        cmd.arg("serve").arg(&config_path);
        let mut child = ChildGuard::spawn("docker-registry", cmd, &d);
        let distribution = reqwest::Client::builder()
            .unix_socket(socket.clone())
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .http1_only()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("unix-socket client");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = child.try_exit_status() {
                panic!(
                    "docker-registry exited ({status}) at start\n{}",
                    child.log_tails(40)
                );
            }
            let probe = distribution.clone();
            let ready = socket.exists()
                && super::block_on(async move {
                    probe
                        .get("http://registry/v2/")
                        .timeout(Duration::from_millis(500))
                        .send()
                        .await
                        .is_ok_and(|r| r.status() == 401)
                });
            if ready {
                break;
            }
            if Instant::now() >= deadline {
                panic!(
                    "docker-registry did not answer on {} within 15s\n{}",
                    socket.display(),
                    child.log_tails(40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }

        let mut ids = ids;
        // A projected service-account token: a JWT from the cluster's issuer, read
        // from a file with no trailing newline.
        ids.federated_token = {
            let claims = json!({
                "aud": ["api://AzureADTokenExchange"],
                "iss": "https://oidc.prod-aks.azure.com/ferry-test/",
                "sub": "system:serviceaccount:kube-system:ferry",
                "exp": now_secs() + 86_400,
                "iat": now_secs(),
                "jti": random_hex(8),
            });
            jsonwebtoken::encode(
                &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
                &claims,
                &keys.refresh_enc,
            )
            .expect("sign the federated token")
        };

        let emu = Arc::new(Emu {
            ids,
            keys,
            knobs: Mutex::new(Knobs {
                lifetimes,
                strict_exp: true,
                data_rate: None,
                throttles: Vec::new(),
                reject_tokens: 0,
                cut_data: None,
            }),
            records: Mutex::new(Vec::new()),
            secrets: Mutex::new(Vec::new()),
            registry_url,
            realm,
            storage_root,
            distribution,
        });
        {
            let ids = &emu.ids;
            for s in [
                &ids.sp_client_secret,
                &ids.federated_token,
                &ids.identity_header,
            ] {
                emu.remember(s);
            }
            // The middle lines of the client certificate's private key.
            let key_pem = std::fs::read_to_string(&client_cert_file).unwrap();
            for line in key_pem
                .lines()
                .skip_while(|l| !l.contains("PRIVATE KEY"))
                .skip(1)
                .take(4)
            {
                emu.remember(line);
            }
        }

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("acr-emulator")
            .enable_all()
            .build()
            .expect("emulator runtime");
        {
            let _guard = runtime.enter();
            let entra_leaf = ca.leaf(&["localhost", "127.0.0.1"]);
            let front_leaf = ca.leaf(&[REGISTRY_HOST, "localhost", "127.0.0.1"]);
            let data_leaf = ca.leaf(&[DATA_HOST, DATA_IP]);

            let entra_app = axum::Router::new()
                .route("/{tenant}/oauth2/v2.0/token", post(entra::token))
                .fallback(not_found_front)
                .with_state(emu.clone());
            let entra_listener = tls::TlsListener::new(entra_l, tls::server_config(&entra_leaf));
            runtime.spawn(async move {
                let _ = axum::serve(entra_listener, entra_app).await;
            });

            let mi_app = axum::Router::new()
                .fallback(entra::managed_identity)
                .with_state(emu.clone());
            mi_l.set_nonblocking(true).unwrap();
            let mi_listener = tokio::net::TcpListener::from_std(mi_l).expect("mi listener");
            runtime.spawn(async move {
                let _ = axum::serve(mi_listener, mi_app).await;
            });

            let front_app = axum::Router::new()
                .route("/oauth2/exchange", post(exchange))
                .route("/oauth2/token", post(token_post).get(token_get))
                .fallback(front)
                .with_state(emu.clone());
            let front_listener = tls::TlsListener::new(front_l, tls::server_config(&front_leaf));
            runtime.spawn(async move {
                let _ = axum::serve(front_listener, front_app).await;
            });

            let data_app = axum::Router::new().fallback(data).with_state(emu.clone());
            let data_listener = tls::TlsListener::new(data_l, tls::server_config(&data_leaf));
            runtime.spawn(async move {
                let _ = axum::serve(data_listener, data_app).await;
            });
        }

        AcrEmulator {
            emu,
            ca,
            entra_addr,
            mi_addr,
            front_addr,
            data_addr,
            distribution: Some(child),
            runtime: Some(runtime),
            client_cert_file,
            dir,
        }
    }

    // ---- addresses and identities ----

    pub fn ids(&self) -> &Identities {
        &self.emu.ids
    }

    /// `https://contoso.azurecr.io:A`.
    pub fn registry_url(&self) -> &str {
        &self.emu.registry_url
    }

    /// `https://contoso.azurecr.io:A/oauth2/token`.
    pub fn realm(&self) -> &str {
        &self.emu.realm
    }

    /// `https://127.0.0.1:E` (the authority host).
    pub fn authority_host(&self) -> String {
        format!("https://{}", self.entra_addr)
    }

    /// The Entra token URL for the tenant.
    pub fn entra_token_url(&self) -> String {
        format!(
            "{}/{}/oauth2/v2.0/token",
            self.authority_host(),
            self.emu.ids.tenant_id
        )
    }

    /// `http://127.0.0.1:M/` (`IDENTITY_ENDPOINT`).
    pub fn identity_endpoint(&self) -> String {
        format!("http://{}/", self.mi_addr)
    }

    pub fn front_addr(&self) -> SocketAddr {
        self.front_addr
    }

    pub fn data_addr(&self) -> SocketAddr {
        self.data_addr
    }

    /// The CA PEM file (Ferry's `ca_file`).
    pub fn ca_file(&self) -> &Path {
        self.ca.pem_path()
    }

    /// The SP's certificate and RSA key (PKCS#8) in one PEM file.
    pub fn client_cert_file(&self) -> &Path {
        &self.client_cert_file
    }

    /// The SP's certificate (DER), e.g. to sign client assertions in tests.
    pub fn client_cert_der(&self) -> Vec<u8> {
        self.emu.keys.client_cert_der.clone()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A reqwest client that trusts the CA and resolves both ACR names to loopback,
    /// following no redirects.
    pub fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .tls_certs_only([self.ca.reqwest_cert()])
            .resolve(REGISTRY_HOST, self.front_addr)
            .resolve(DATA_HOST, self.data_addr)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .http1_only()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(120))
            .build()
            .expect("build the emulator client")
    }

    // ---- knobs ----

    pub fn set_lifetimes(&self, lifetimes: Lifetimes) {
        self.emu.knobs.lock().unwrap().lifetimes = lifetimes;
    }

    pub fn lifetimes(&self) -> Lifetimes {
        self.emu.lifetimes()
    }

    /// Whether the front refuses expired access tokens itself (default true).
    pub fn set_strict_exp(&self, strict: bool) {
        self.emu.knobs.lock().unwrap().strict_exp = strict;
    }

    /// Limits the data endpoint to `bytes_per_sec` per response (None: unlimited).
    pub fn set_data_rate(&self, bytes_per_sec: Option<u64>) {
        self.emu.knobs.lock().unwrap().data_rate = bytes_per_sec;
    }

    /// Answers the next `n` front requests whose path contains `pattern` with 429,
    /// `Retry-After: <retry_after>` and a `TOOMANYREQUESTS` body.
    pub fn throttle_next(&self, n: usize, pattern: &str, retry_after: u64) {
        self.emu.knobs.lock().unwrap().throttles.push(ThrottlePlan {
            pattern: pattern.to_owned(),
            remaining: n,
            retry_after,
        });
    }

    /// How many 429s planned by [`AcrEmulator::throttle_next`] are still unspent.
    pub fn throttles_left(&self) -> usize {
        self.emu
            .knobs
            .lock()
            .unwrap()
            .throttles
            .iter()
            .map(|t| t.remaining)
            .sum()
    }

    /// Cancels every planned 429.
    pub fn clear_throttles(&self) {
        self.emu.knobs.lock().unwrap().throttles.clear();
    }

    /// Answers the next `n` `/v2` requests that carry a bearer token with 401
    /// `invalid_token` and the challenge (as if the token had been revoked).
    pub fn reject_next_tokens(&self, n: usize) {
        self.emu.knobs.lock().unwrap().reject_tokens = n;
    }

    /// Cuts the next `n` data responses after `after_bytes` body bytes.
    pub fn cut_next_data(&self, n: usize, after_bytes: u64) {
        self.emu.knobs.lock().unwrap().cut_data = Some((n, after_bytes));
    }

    // ---- what happened ----

    /// Every request so far, in arrival order.
    pub fn records(&self) -> Vec<Record> {
        let mut r = self.emu.records.lock().unwrap().clone();
        r.sort_by_key(|r| r.at);
        r
    }

    pub fn records_of(&self, endpoint: Endpoint) -> Vec<Record> {
        self.records()
            .into_iter()
            .filter(|r| r.endpoint == endpoint)
            .collect()
    }

    pub fn count(&self, endpoint: Endpoint) -> usize {
        self.emu
            .records
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.endpoint == endpoint)
            .count()
    }

    /// Forgets every record (issued secrets are kept).
    pub fn reset_records(&self) {
        self.emu.records.lock().unwrap().clear();
    }

    /// Every secret and token the emulator issued or checked, plus the signature part
    /// of every JWT among them (a partial leak still shows it).
    pub fn secrets(&self) -> Vec<String> {
        let all = self.emu.secrets.lock().unwrap().clone();
        let mut out = Vec::new();
        for s in all {
            let parts: Vec<&str> = s.split('.').collect();
            if parts.len() == 3 && parts[2].len() >= 32 {
                out.push(parts[2].to_owned());
            }
            out.push(s);
        }
        out
    }

    /// Panics if any secret shows up in any of `haystacks` (`(label, bytes)`).
    pub fn assert_no_leaks(&self, haystacks: &[(&str, &[u8])]) {
        let secrets = self.secrets();
        assert!(
            secrets.len() >= 3,
            "the emulator should hold at least its configured secrets"
        );
        for (label, bytes) in haystacks {
            let text = String::from_utf8_lossy(bytes);
            for s in &secrets {
                if let Some(pos) = text.find(s.as_str()) {
                    let start = text[..pos]
                        .char_indices()
                        .rev()
                        .nth(80)
                        .map_or(0, |(i, _)| i);
                    panic!(
                        "{label} contains a secret the emulator issued or checked ({}…): …{}…",
                        &s[..s.len().min(12)],
                        &text[start..pos]
                    );
                }
            }
        }
    }

    /// Mints an ACR access token for `repo` with `actions`, lifetime `secs`.
    pub fn mint_access_token(&self, repo: &str, actions: &[&str], secs: u64) -> String {
        let access = vec![json!({"type": "repository", "name": repo, "actions": actions})];
        mint_access(&self.emu, "seed", access, secs)
    }

    // ---- seeding ----

    /// Pushes a single-platform (linux/amd64) OCI image through the front with a
    /// push token (layers of random bytes of the given sizes), then forgets the records
    /// of the push.
    pub fn push_image(&self, repo: &str, tag: &str, layer_sizes: &[usize]) -> PushedImage {
        let (layers, diff_ids): (Vec<Blob>, Vec<String>) =
            layer_sizes.iter().map(|&s| make_layer(s)).unzip();
        let config = serde_json::to_vec(&json!({
            "created": "2023-11-14T22:13:20Z",
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": ["PATH=/usr/bin"], "Cmd": ["/payload.bin"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": diff_ids.iter().map(|_| json!({"created_by": "ferry acr emulator"})).collect::<Vec<_>>(),
        }))
        .unwrap();
        let config = Blob {
            digest: super::sha256_digest(&config),
            size: config.len() as u64,
            media_type: super::http::media::OCI_CONFIG.to_owned(),
            bytes: config,
        };
        let desc =
            |b: &Blob| json!({"mediaType": b.media_type, "digest": b.digest, "size": b.size});
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": super::http::media::OCI_MANIFEST,
            "config": desc(&config),
            "layers": layers.iter().map(desc).collect::<Vec<_>>(),
        }))
        .unwrap();
        let token = self.mint_access_token(repo, &["pull", "push"], 600);
        let client = self.client();
        let base = self.registry_url().to_owned();
        let blobs: Vec<Blob> = std::iter::once(config.clone())
            .chain(layers.iter().cloned())
            .collect();
        let manifest_body = manifest.clone();
        let repo_s = repo.to_owned();
        let tag_s = tag.to_owned();
        super::block_on(async move {
            for b in &blobs {
                let resp = client
                    .post(format!("{base}/v2/{repo_s}/blobs/uploads/"))
                    .bearer_auth(&token)
                    .header("content-length", "0")
                    .send()
                    .await
                    .expect("start upload");
                assert_eq!(resp.status(), 202, "start upload: {:?}", resp.text().await);
                let location = resp
                    .headers()
                    .get("location")
                    .and_then(|v| v.to_str().ok())
                    .expect("upload Location")
                    .to_owned();
                let url = if location.starts_with('/') {
                    format!("{base}{location}")
                } else {
                    location
                };
                let sep = if url.contains('?') { '&' } else { '?' };
                let resp = client
                    .put(format!("{url}{sep}digest={}", b.digest))
                    .bearer_auth(&token)
                    .header("content-type", "application/octet-stream")
                    .body(b.bytes.clone())
                    .send()
                    .await
                    .expect("finish upload");
                assert_eq!(resp.status(), 201, "finish upload: {:?}", resp.text().await);
            }
            let resp = client
                .put(format!("{base}/v2/{repo_s}/manifests/{tag_s}"))
                .bearer_auth(&token)
                .header("content-type", super::http::media::OCI_MANIFEST)
                .body(manifest_body)
                .send()
                .await
                .expect("put manifest");
            assert_eq!(resp.status(), 201, "put manifest: {:?}", resp.text().await);
        });
        self.reset_records();
        PushedImage {
            repo: repo.to_owned(),
            tag: tag.to_owned(),
            manifest_digest: super::sha256_digest(&manifest),
            manifest,
            media_type: super::http::media::OCI_MANIFEST.to_owned(),
            config,
            layers,
            platform: ("linux".to_owned(), "amd64".to_owned()),
        }
    }

    /// Where Distribution keeps the bytes of `digest`.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = super::digest_hex(digest);
        self.emu
            .storage_root
            .join(&BLOB_PREFIX[1..])
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// The tail of Distribution's own log and access log.
    pub fn distribution_log(&self, lines: usize) -> String {
        self.distribution
            .as_ref()
            .map(|c| c.log_tails(lines))
            .unwrap_or_default()
    }

    // ---- Ferry ----

    /// The `acr` upstream for `cred`, and the environment Ferry needs for it. Secret
    /// files go to the emulator's dir.
    pub fn ferry_upstream(&self, cred: Credential) -> (Upstream, Vec<(String, String)>) {
        let ids = &self.emu.ids;
        let d = self.dir.path();
        let mut env = Vec::new();
        let credential = match cred {
            Credential::Secret | Credential::WrongSecret => {
                let (name, secret) = if cred == Credential::Secret {
                    ("client-secret", ids.sp_client_secret.clone())
                } else {
                    let wrong = format!("Wr8Q~{}.x_W-{}", random_hex(14), random_hex(3));
                    self.emu.remember(&wrong);
                    ("wrong-client-secret", wrong)
                };
                let path = d.join(name);
                std::fs::write(&path, &secret).expect("write the secret file");
                EntraCredential::ClientSecretFile {
                    tenant_id: ids.tenant_id.clone(),
                    client_id: ids.sp_client_id.clone(),
                    path,
                }
            }
            Credential::Certificate => EntraCredential::CertificateFile {
                tenant_id: ids.tenant_id.clone(),
                client_id: ids.sp_client_id.clone(),
                path: self.client_cert_file.clone(),
            },
            Credential::WorkloadIdentity => {
                let path = d.join("azure-identity-token");
                std::fs::write(&path, &ids.federated_token).expect("write the federated token");
                env.push((
                    "AZURE_FEDERATED_TOKEN_FILE".to_owned(),
                    path.display().to_string(),
                ));
                env.push(("AZURE_CLIENT_ID".to_owned(), ids.wi_client_id.clone()));
                env.push(("AZURE_TENANT_ID".to_owned(), ids.tenant_id.clone()));
                EntraCredential::WorkloadIdentity
            }
            Credential::ManagedIdentity | Credential::UserAssignedManagedIdentity => {
                env.push(("IDENTITY_ENDPOINT".to_owned(), self.identity_endpoint()));
                env.push(("IDENTITY_HEADER".to_owned(), ids.identity_header.clone()));
                EntraCredential::ManagedIdentity {
                    client_id: (cred == Credential::UserAssignedManagedIdentity)
                        .then(|| ids.mi_user_client_id.clone()),
                }
            }
        };
        // Managed identities get their tokens from IDENTITY_ENDPOINT, not an authority.
        let authority_host = (!matches!(credential, EntraCredential::ManagedIdentity { .. }))
            .then(|| self.authority_host());
        let upstream = Upstream::new(UPSTREAM, REGISTRY_HOST, self.registry_url())
            .resolve(REGISTRY_HOST, "127.0.0.1")
            .resolve(DATA_HOST, DATA_IP)
            .ca_file(self.ca_file())
            .auth(UpstreamAuth::Entra(Entra {
                credential,
                authority_host,
            }));
        (upstream, env)
    }

    /// The `[[upstream]]` table (`acr`) and the `aks-managed-mcr` rule for `cred`, and
    /// the environment Ferry needs for it. Secret files go to the emulator's dir.
    pub fn ferry_config(&self, cred: Credential) -> (String, Vec<(String, String)>) {
        let (upstream, env) = self.ferry_upstream(cred);
        let toml = FerryConfig::new()
            .upstream(upstream)
            .rule(MCR_RULE, MCR_SOURCE, MCR_TARGET, UPSTREAM)
            .tables_toml(self.dir.path());
        (toml, env)
    }

    /// A [`FerryBuilder`] with only the `acr` upstream and its rule, for `cred`.
    pub fn ferry(&self, cred: Credential) -> FerryBuilder {
        let (upstream, env) = self.ferry_upstream(cred);
        let mut b = FerryBuilder::from_config(
            FerryConfig::new()
                .upstream(upstream)
                .rule(MCR_RULE, MCR_SOURCE, MCR_TARGET, UPSTREAM),
        );
        for (k, v) in &env {
            b = b.env(k, v);
        }
        b
    }
}

impl Drop for AcrEmulator {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
        if let Some(mut c) = self.distribution.take() {
            if std::thread::panicking() {
                eprintln!("--- acr emulator: distribution ---\n{}", c.log_tails(6));
            }
            c.kill();
        }
    }
}

/// How Ferry authenticates to the emulated ACR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Credential {
    /// Service principal with its client secret (from a file).
    Secret,
    /// Service principal with a secret Entra does not know.
    WrongSecret,
    /// Service principal with its certificate (PEM: key and certificate).
    Certificate,
    /// Workload identity: `AZURE_FEDERATED_TOKEN_FILE`, `AZURE_CLIENT_ID`, `AZURE_TENANT_ID`.
    WorkloadIdentity,
    /// System-assigned managed identity (`IDENTITY_ENDPOINT`, `IDENTITY_HEADER`).
    ManagedIdentity,
    /// User-assigned managed identity (`managed_identity = { client_id = … }`).
    UserAssignedManagedIdentity,
}

// ---- ACR tokens ----

fn mint_access(emu: &Emu, subject: &str, access: Vec<Value>, secs: u64) -> String {
    let now = now_secs();
    let claims = json!({
        "jti": guid(),
        "sub": subject,
        "nbf": now.saturating_sub(1),
        "exp": now + secs,
        "iat": now,
        "iss": ACR_ISSUER,
        "aud": REGISTRY_HOST,
        "version": "3.0",
        "rid": random_hex(16),
        "grant_type": "refresh_token",
        "tenant": emu.ids.tenant_id,
        "access": access,
        "roles": [],
    });
    let header = jsonwebtoken::Header {
        typ: Some("JWT".to_owned()),
        kid: Some(emu.keys.access_kid.clone()),
        ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256)
    };
    let token =
        jsonwebtoken::encode(&header, &claims, &emu.keys.access_enc).expect("sign access token");
    emu.remember(&token);
    token
}

/// Verifies a JWT's signature (and `aud`, if given) and returns its claims; `exp` is
/// checked by the caller, strictly.
fn verify(
    token: &str,
    key: &jsonwebtoken::DecodingKey,
    alg: jsonwebtoken::Algorithm,
    aud: Option<&str>,
) -> Result<Value, String> {
    let mut v = jsonwebtoken::Validation::new(alg);
    v.validate_exp = false;
    v.validate_nbf = false;
    v.leeway = 0;
    v.required_spec_claims.clear();
    match aud {
        Some(a) => v.set_audience(&[a]),
        None => v.validate_aud = false,
    }
    jsonwebtoken::decode::<Value>(token, key, &v)
        .map(|d| d.claims)
        .map_err(|e| e.to_string())
}

/// Whether `claims.exp` is still in the future (no leeway).
fn unexpired(claims: &Value) -> bool {
    claims["exp"].as_f64().is_some_and(|exp| exp > now_f64())
}

/// `token`'s claims if it verifies with `key` and has not expired; else the 401 an
/// exchange or token endpoint answers, naming `what` the token is.
fn valid_claims(
    token: &str,
    key: &jsonwebtoken::DecodingKey,
    alg: jsonwebtoken::Algorithm,
    aud: Option<&str>,
    what: &str,
) -> Result<Value, (StatusCode, String)> {
    let unauth = |m: String| (StatusCode::UNAUTHORIZED, m);
    let claims = verify(token, key, alg, aud)
        .map_err(|e| unauth(format!("the {what} is not valid: {e}")))?;
    if !unexpired(&claims) {
        return Err(unauth(format!("the {what} has expired")));
    }
    Ok(claims)
}

fn acr_unauthorized(message: &str) -> Response {
    oci_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message)
}

async fn exchange(State(emu): State<Arc<Emu>>, req: Request) -> Response {
    let at = Instant::now();
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let pairs = form_pairs(&body);
    let rec = Record::arrived(
        Endpoint::Exchange,
        &parts.method,
        parts.uri.to_string(),
        &parts.headers,
        at,
    );
    let result = (|| -> Result<Response, (StatusCode, String)> {
        let bad = |m: &str| (StatusCode::BAD_REQUEST, m.to_owned());
        let unauth = |m: &str| (StatusCode::UNAUTHORIZED, m.to_owned());
        check_grant_and_service(&pairs, "access_token")?;
        let Some(aad) = first(&pairs, "access_token") else {
            return Err(bad("access_token is required"));
        };
        emu.remember(aad);
        let claims = valid_claims(
            aad,
            &emu.keys.entra_dec,
            jsonwebtoken::Algorithm::RS256,
            Some(ACR_RESOURCE),
            "AAD access token",
        )?;
        let tid = claims["tid"].as_str().unwrap_or("");
        if let Some(t) = first(&pairs, "tenant")
            && t != tid
        {
            return Err(unauth(&format!(
                "tenant {t:?} does not match the token's tenant"
            )));
        }
        let now = now_secs();
        let lifetime = emu.lifetimes().refresh;
        let claims = json!({
            "jti": guid(),
            "sub": claims["oid"],
            "nbf": now.saturating_sub(1),
            "exp": now + lifetime,
            "iat": now,
            "iss": ACR_ISSUER,
            "aud": REGISTRY_HOST,
            "version": "1.0",
            "rid": random_hex(16),
            "grant_type": "refresh_token",
            "appid": claims["appid"],
            "tenant": tid,
            "permissions": {"actions": ["read"], "notActions": []},
            "roles": [],
        });
        let header = jsonwebtoken::Header {
            typ: Some("JWT".to_owned()),
            kid: Some("acr-refresh".to_owned()),
            ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256)
        };
        let refresh = jsonwebtoken::encode(&header, &claims, &emu.keys.refresh_enc)
            .expect("sign refresh token");
        emu.remember(&refresh);
        Ok(json_response(
            StatusCode::OK,
            json!({"refresh_token": refresh}),
        ))
    })();
    finish_token_endpoint(&emu, rec, result, "refresh token issued")
}

/// Records what an ACR token endpoint did and turns its result into the answer: the
/// success body, or ACR's 401 challenge or an OCI error.
fn finish_token_endpoint(
    emu: &Emu,
    mut rec: Record,
    result: Result<Response, (StatusCode, String)>,
    issued: &str,
) -> Response {
    let resp = match result {
        Ok(r) => {
            rec.detail = issued.to_owned();
            r
        }
        Err((status, message)) => {
            rec.status = status.as_u16();
            rec.detail = message.clone();
            if status == StatusCode::UNAUTHORIZED {
                acr_unauthorized(&message)
            } else {
                oci_error(status, "UNSUPPORTED", &message)
            }
        }
    };
    emu.record(rec);
    resp
}

/// `repository:<name>:<actions>` (the name may hold `:`), split.
fn parse_scope(scope: &str) -> Option<(String, String, Vec<String>)> {
    let (rtype, rest) = scope.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    Some((
        rtype.to_owned(),
        name.to_owned(),
        actions
            .split(',')
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect(),
    ))
}

async fn token_post(State(emu): State<Arc<Emu>>, req: Request) -> Response {
    let at = Instant::now();
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let pairs = form_pairs(&body);
    let scopes: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' ').filter(|s| !s.is_empty()).map(str::to_owned))
        .collect();
    let rec = Record {
        scopes: scopes.clone(),
        ..Record::arrived(
            Endpoint::Token,
            &parts.method,
            parts.uri.to_string(),
            &parts.headers,
            at,
        )
    };
    let result = (|| -> Result<Response, (StatusCode, String)> {
        let bad = |m: &str| (StatusCode::BAD_REQUEST, m.to_owned());
        check_grant_and_service(&pairs, "refresh_token")?;
        let Some(refresh) = first(&pairs, "refresh_token") else {
            return Err(bad("refresh_token is required"));
        };
        emu.remember(refresh);
        let claims = valid_claims(
            refresh,
            &emu.keys.refresh_dec,
            jsonwebtoken::Algorithm::ES256,
            Some(REGISTRY_HOST),
            "refresh token",
        )?;
        // Every identity here holds pull (AcrPull) on every repository, nothing else.
        let mut access = Vec::new();
        for s in &scopes {
            let Some((rtype, name, actions)) = parse_scope(s) else {
                return Err(bad(&format!("malformed scope {s:?}")));
            };
            let granted: Vec<&str> = actions
                .iter()
                .filter(|a| rtype == "repository" && (*a == "pull" || *a == "*"))
                .map(|_| "pull")
                .take(1)
                .collect();
            if !granted.is_empty() {
                access.push(json!({"type": rtype, "name": name, "actions": granted}));
            }
        }
        let subject = claims["sub"].as_str().unwrap_or("").to_owned();
        let token = mint_access(&emu, &subject, access, emu.lifetimes().access);
        Ok(json_response(
            StatusCode::OK,
            json!({"access_token": token}),
        ))
    })();
    finish_token_endpoint(&emu, rec, result, "access token issued")
}

/// Docker-style `GET /oauth2/token` (Basic auth) is not emulated: Ferry is expected
/// to use the documented exchange → POST flow. Recorded, and refused.
async fn token_get(State(emu): State<Arc<Emu>>, req: Request) -> Response {
    emu.record(Record {
        status: 401,
        detail: "GET /oauth2/token is not emulated".to_owned(),
        ..Record::arrived(
            Endpoint::Token,
            req.method(),
            req.uri().to_string(),
            req.headers(),
            Instant::now(),
        )
    });
    acr_unauthorized("the emulator only answers POST /oauth2/token with a refresh token")
}

async fn not_found_front(State(emu): State<Arc<Emu>>, req: Request) -> Response {
    emu.record(Record {
        status: 404,
        detail: "no such endpoint".to_owned(),
        ..Record::arrived(
            Endpoint::Other,
            req.method(),
            req.uri().to_string(),
            req.headers(),
            Instant::now(),
        )
    });
    oci_error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such endpoint")
}

// ---- the front: /v2/* ----

fn challenge(emu: &Emu, path: &str, error: Option<&str>) -> String {
    let mut c = format!("Bearer realm=\"{}\",service=\"{REGISTRY_HOST}\"", emu.realm);
    if let Some(repo) = repo_of(path) {
        c += &format!(",scope=\"repository:{repo}:pull\"");
    }
    if let Some(e) = error {
        c += &format!(",error=\"{e}\"");
    }
    c
}

fn unauthorized_with_challenge(emu: &Emu, path: &str, message: &str) -> Response {
    let mut resp = acr_unauthorized(message);
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_str(&challenge(emu, path, Some("invalid_token"))).unwrap(),
    );
    resp.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    resp
}

async fn front(State(emu): State<Arc<Emu>>, req: Request) -> Response {
    let at = Instant::now();
    let path = req.uri().path().to_owned();
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| path.clone());
    if !path.starts_with("/v2/") && path != "/v2" {
        return not_found_front(State(emu), req).await;
    }
    let mut rec = Record {
        status: 0,
        ..Record::arrived(
            Endpoint::Registry,
            req.method(),
            target.clone(),
            req.headers(),
            at,
        )
    };
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::to_owned);

    // Fault injection first: 429s, then revoked tokens.
    let early = {
        let mut k = emu.knobs.lock().unwrap();
        let throttled = k
            .throttles
            .iter_mut()
            .find(|t| t.remaining > 0 && path.contains(&t.pattern))
            .map(|t| {
                t.remaining -= 1;
                t.retry_after
            });
        if let Some(retry_after) = throttled {
            let mut resp = oci_error(
                StatusCode::TOO_MANY_REQUESTS,
                "TOOMANYREQUESTS",
                "too many requests (emulated throttling)",
            );
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_str(&retry_after.to_string()).unwrap(),
            );
            Some((resp, "throttled".to_owned()))
        } else if bearer.is_some() && k.reject_tokens > 0 {
            k.reject_tokens -= 1;
            Some((
                unauthorized_with_challenge(&emu, &path, "the access token was revoked"),
                "token rejected (knob)".to_owned(),
            ))
        } else {
            None
        }
    };
    if let Some((resp, detail)) = early {
        rec.status = resp.status().as_u16();
        rec.detail = detail;
        emu.record(rec);
        return resp;
    }
    if let Some(token) = &bearer {
        emu.remember(token);
        let strict = emu.knobs.lock().unwrap().strict_exp;
        if let Ok(claims) = verify(
            token,
            &emu.keys.access_dec,
            jsonwebtoken::Algorithm::ES256,
            None,
        ) {
            let exp = claims["exp"].as_f64().unwrap_or(0.0);
            rec.detail = format!("bearer exp in {:.1}s", exp - now_f64());
            if strict && !unexpired(&claims) {
                rec.status = 401;
                rec.detail = "expired access token".to_owned();
                emu.record(rec);
                return unauthorized_with_challenge(&emu, &path, "the access token has expired");
            }
        } else {
            rec.detail = "bearer token not signed by the registry".to_owned();
        }
    } else if req.headers().contains_key(header::AUTHORIZATION) {
        rec.detail = "non-bearer Authorization".to_owned();
    }

    // Proxy to Distribution.
    let (parts, body) = req.into_parts();
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or(REGISTRY_HOST)
        .to_owned();
    let body = match axum::body::to_bytes(body, 64 << 20).await {
        Ok(b) => b,
        Err(_) => {
            rec.status = 400;
            emu.record(rec);
            return oci_error(StatusCode::BAD_REQUEST, "UNKNOWN", "request body too large");
        }
    };
    let mut fwd = emu
        .distribution
        .request(parts.method.clone(), format!("http://registry{target}"));
    for (k, v) in &parts.headers {
        if matches!(
            k.as_str(),
            "host" | "connection" | "transfer-encoding" | "content-length" | "keep-alive"
        ) {
            continue;
        }
        fwd = fwd.header(k, v);
    }
    fwd = fwd
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", host)
        .body(body);
    let upstream = match fwd.send().await {
        Ok(r) => r,
        Err(e) => {
            rec.status = 502;
            rec.detail = format!("distribution: {e}");
            emu.record(rec);
            return oci_error(
                StatusCode::BAD_GATEWAY,
                "UNAVAILABLE",
                "registry unavailable",
            );
        }
    };
    let status = upstream.status();
    let mut headers = HeaderMap::new();
    for (k, v) in upstream.headers() {
        if matches!(
            k.as_str(),
            "connection" | "transfer-encoding" | "keep-alive"
        ) {
            continue;
        }
        headers.append(k.clone(), v.clone());
    }
    if status == StatusCode::TEMPORARY_REDIRECT
        && let Some(loc) = headers.get(header::LOCATION).and_then(|v| v.to_str().ok())
    {
        let loc = loc.to_owned();
        let se = now_secs() + emu.lifetimes().redirect;
        let loc_path = reqwest::Url::parse(&loc)
            .map(|u| u.path().to_owned())
            .unwrap_or_default();
        let sig = hex::encode(hmac_sha256(
            &emu.keys.sas_key,
            format!("{loc_path}|{se}").as_bytes(),
        ));
        let sep = if loc.contains('?') { '&' } else { '?' };
        let signed = format!("{loc}{sep}se={se}&sig={sig}");
        headers.insert(header::LOCATION, HeaderValue::from_str(&signed).unwrap());
        rec.detail += &format!("; redirect se={se}");
    }
    let bytes = upstream.bytes().await.unwrap_or_default();
    rec.status = status.as_u16();
    emu.record(rec);
    let mut resp = Response::new(Body::from(bytes));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

// ---- the data endpoint ----

fn storage_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "application/xml"),
            (
                header::HeaderName::from_static("x-ms-error-code"),
                code,
            ),
        ],
        format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>{code}</Code><Message>{message}</Message></Error>"
        ),
    )
        .into_response()
}

/// `bytes=a-b`, `bytes=a-`, `bytes=-n` against `size` → inclusive (start, end).
fn parse_range(value: &str, size: u64) -> Option<(u64, u64)> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        if n == 0 || size == 0 {
            return None;
        }
        return Some((size.saturating_sub(n), size - 1));
    }
    let start: u64 = a.parse().ok()?;
    let end = if b.is_empty() {
        size.checked_sub(1)?
    } else {
        b.parse::<u64>().ok()?.min(size.checked_sub(1)?)
    };
    (start <= end && start < size).then_some((start, end))
}

async fn data(State(emu): State<Arc<Emu>>, req: Request) -> Response {
    let at = Instant::now();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let rec = Record {
        status: 0,
        ..Record::arrived(
            Endpoint::Data,
            req.method(),
            req.uri()
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_else(|| path.clone()),
            req.headers(),
            at,
        )
    };
    let finish = |mut rec: Record, resp: Response, detail: &str| {
        rec.status = resp.status().as_u16();
        rec.detail = detail.to_owned();
        emu.record(rec);
        resp
    };
    if req.headers().contains_key(header::AUTHORIZATION) {
        let resp = storage_error(
            StatusCode::BAD_REQUEST,
            "InvalidAuthenticationInfo",
            "Authentication information is not given in the correct format. Check the value of Authorization header.",
        );
        return finish(rec, resp, "Authorization header sent");
    }
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let resp = storage_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "UnsupportedHttpVerb",
            "The resource doesn't support the specified HTTP verb.",
        );
        return finish(rec, resp, "method");
    }
    let hex_part = path
        .strip_prefix(BLOB_PREFIX)
        .and_then(|r| r.strip_suffix("/data"))
        .and_then(|r| r.split_once('/'))
        .filter(|(two, h)| {
            two.len() == 2
                && h.len() == 64
                && h.starts_with(two)
                && h.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        })
        .map(|(_, h)| h.to_owned());
    let Some(hex_part) = hex_part else {
        let resp = storage_error(
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            "The specified resource does not exist.",
        );
        return finish(rec, resp, "not a blob path");
    };
    let q = query_pairs(&query);
    let se = first(&q, "se").and_then(|s| s.parse::<u64>().ok());
    let sig = first(&q, "sig").unwrap_or("");
    let Some(se) = se else {
        let resp = storage_error(
            StatusCode::FORBIDDEN,
            "AuthenticationFailed",
            "Server failed to authenticate the request: no signed expiry.",
        );
        return finish(rec, resp, "no se");
    };
    let expected = hex::encode(hmac_sha256(
        &emu.keys.sas_key,
        format!("{path}|{se}").as_bytes(),
    ));
    if sig != expected {
        let resp = storage_error(
            StatusCode::FORBIDDEN,
            "AuthenticationFailed",
            "Server failed to authenticate the request. Signature did not match.",
        );
        return finish(rec, resp, "bad sig");
    }
    if now_f64() > se as f64 {
        let resp = storage_error(
            StatusCode::FORBIDDEN,
            "AuthenticationFailed",
            "Signed expiry time has passed: the redirect URL is stale.",
        );
        return finish(rec, resp, "expired se");
    }
    let file = emu
        .storage_root
        .join(&BLOB_PREFIX[1..])
        .join(&hex_part[..2])
        .join(&hex_part)
        .join("data");
    let size = match std::fs::metadata(&file) {
        Ok(m) => m.len(),
        Err(_) => {
            let resp = storage_error(
                StatusCode::NOT_FOUND,
                "BlobNotFound",
                "The specified blob does not exist.",
            );
            return finish(rec, resp, "no such blob");
        }
    };
    let range = req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (status, start, end) = match &range {
        None => (StatusCode::OK, 0, size.saturating_sub(1)),
        Some(r) => match parse_range(r, size) {
            Some((s, e)) => (StatusCode::PARTIAL_CONTENT, s, e),
            None => {
                let mut resp = storage_error(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "InvalidRange",
                    "The range specified is invalid for the current size of the resource.",
                );
                resp.headers_mut().insert(
                    header::CONTENT_RANGE,
                    HeaderValue::from_str(&format!("bytes */{size}")).unwrap(),
                );
                return finish(rec, resp, "bad range");
            }
        },
    };
    let len = if size == 0 { 0 } else { end - start + 1 };
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, len.to_string())
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, format!("\"0x{}\"", &hex_part[..16]))
        .header("x-ms-blob-type", "BlockBlob");
    if status == StatusCode::PARTIAL_CONTENT {
        builder = builder.header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}"));
    }
    if *req.method() == Method::HEAD {
        let resp = builder.body(Body::empty()).unwrap();
        return finish(rec, resp, "head");
    }
    let (rate, cut) = {
        let mut k = emu.knobs.lock().unwrap();
        let cut = match &mut k.cut_data {
            Some((n, after)) if *n > 0 => {
                *n -= 1;
                Some(*after)
            }
            _ => None,
        };
        (k.data_rate, cut)
    };
    let detail = match (&range, cut) {
        (Some(r), _) => format!("range {r}"),
        (None, Some(c)) => format!("cut after {c} bytes"),
        _ => "full".to_owned(),
    };
    let state = BodyState {
        path: file,
        start,
        len,
        sent: 0,
        rate,
        cut,
        file: None,
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        match st.next_chunk().await {
            Ok(Some(bytes)) => Some((Ok(bytes), st)),
            Ok(None) => None,
            Err(e) => {
                st.sent = st.len;
                Some((Err(e), st))
            }
        }
    });
    let resp = builder.body(Body::from_stream(stream)).unwrap();
    finish(rec, resp, &detail)
}

/// Streams `len` bytes of `path` from `start`, at `rate` bytes/s, cut after `cut`.
struct BodyState {
    path: PathBuf,
    start: u64,
    len: u64,
    sent: u64,
    rate: Option<u64>,
    cut: Option<u64>,
    file: Option<tokio::fs::File>,
}

impl BodyState {
    async fn next_chunk(&mut self) -> std::io::Result<Option<Bytes>> {
        use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
        if self.sent >= self.len {
            return Ok(None);
        }
        if let Some(c) = self.cut
            && self.sent >= c
        {
            // Let what was sent so far reach the client, then drop the connection.
            tokio::time::sleep(Duration::from_millis(300)).await;
            return Err(std::io::Error::other("emulated connection cut"));
        }
        if self.file.is_none() {
            let mut f = tokio::fs::File::open(&self.path).await?;
            f.seek(std::io::SeekFrom::Start(self.start)).await?;
            self.file = Some(f);
        }
        let mut want = (64 * 1024u64).min(self.len - self.sent);
        if let Some(c) = self.cut {
            want = want.min(c - self.sent);
        }
        let mut buf = vec![0u8; want as usize];
        self.file
            .as_mut()
            .expect("opened")
            .read_exact(&mut buf)
            .await?;
        if let Some(r) = self.rate
            && r > 0
        {
            tokio::time::sleep(Duration::from_secs_f64(want as f64 / r as f64)).await;
        }
        self.sent += want;
        Ok(Some(Bytes::from(buf)))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn hmac_matches_rfc4231_case_2() {
        assert_eq!(
            hex::encode(super::hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn ranges() {
        assert_eq!(super::parse_range("bytes=0-9", 100), Some((0, 9)));
        assert_eq!(super::parse_range("bytes=90-", 100), Some((90, 99)));
        assert_eq!(super::parse_range("bytes=-10", 100), Some((90, 99)));
        assert_eq!(super::parse_range("bytes=95-200", 100), Some((95, 99)));
        assert_eq!(super::parse_range("bytes=100-", 100), None);
        assert_eq!(super::parse_range("bytes=0-1,3-4", 100), None);
    }

    #[test]
    fn repo_from_path() {
        assert_eq!(
            super::repo_of("/v2/aks-managed-repository/oss/kubernetes/pause/manifests/3.6"),
            Some("aks-managed-repository/oss/kubernetes/pause".to_owned())
        );
        assert_eq!(super::repo_of("/v2/"), None);
    }
}
