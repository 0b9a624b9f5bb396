//! An in-process Docker token server (distribution `docs/spec/auth/token.md` and
//! `oauth.md`) whose JWTs Distribution 2.8.2 accepts.
//!
//! - `GET <realm>?service=S&scope=A&scope=B[&offline_token=true]`, optionally with
//!   `Authorization: Basic`, answers `{"token","access_token","expires_in","issued_at"}`
//!   (+ `refresh_token` when `offline_token=true` and the caller authenticated).
//! - `POST <realm>` (form: `grant_type=password|refresh_token`, `service`, `client_id`,
//!   `scope` space-separated, `access_type=offline`) answers
//!   `{"access_token","scope","expires_in","issued_at"[,"refresh_token"]}`.
//! - Wrong credentials → 401; no credentials → an anonymous token (pull only) if
//!   anonymous access is allowed, else 401. A partial grant is not an error: the token
//!   carries the intersection of what was asked and what the caller may do.
//! - Tokens are ES256 JWTs signed by a P-256 key whose self-signed certificate is the
//!   `rootcertbundle` Distribution is configured with; the header carries `kid` = the
//!   libtrust fingerprint of that key. Claims: `iss`, `sub`, `aud` (= service, a string),
//!   `exp`, `nbf`, `iat`, `jti`, `access`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use rcgen::PublicKeyData as _;
use serde_json::{Value, json};

/// Who may get tokens, and for how long.
#[derive(Clone, Debug)]
pub struct TokenServerOptions {
    /// The `service` (JWT `aud`) this server issues tokens for.
    pub service: String,
    /// The JWT `iss`.
    pub issuer: String,
    /// Accounts that may authenticate; each gets every action it asks for.
    pub users: Vec<(String, String)>,
    /// Whether a request without credentials gets a (pull-only) token.
    pub allow_anonymous: bool,
    /// `expires_in` of issued tokens, in seconds (the spec's minimum is 60).
    pub expires_in: u64,
    /// The loopback address to listen on: `127.0.0.2` makes the realm another host
    /// than a registry on 127.0.0.1.
    pub host: String,
}

impl Default for TokenServerOptions {
    fn default() -> Self {
        TokenServerOptions {
            service: "token-registry.ferry-test.invalid".to_owned(),
            issuer: "ferry-test-token-issuer".to_owned(),
            users: vec![("pusher".to_owned(), "pusher-secret-pw".to_owned())],
            allow_anonymous: false,
            expires_in: 300,
            host: "127.0.0.1".to_owned(),
        }
    }
}

/// One request the token server answered.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    /// `GET` or `POST`.
    pub method: String,
    pub service: Option<String>,
    /// Every requested scope, as sent.
    pub scopes: Vec<String>,
    /// The authenticated account, if any.
    pub account: Option<String>,
    /// Whether the request carried credentials (valid or not).
    pub had_credentials: bool,
    pub status: u16,
}

struct Inner {
    opts: TokenServerOptions,
    realm: String,
    encoding_key: jsonwebtoken::EncodingKey,
    kid: String,
    requests: Mutex<Vec<TokenRequest>>,
    count: AtomicUsize,
    refresh_tokens: Mutex<HashMap<String, String>>,
    /// Every bearer token signed, for leak checks.
    issued: Mutex<Vec<String>>,
}

/// A running token server; stops when dropped.
pub struct TokenServer {
    inner: Arc<Inner>,
    addr: SocketAddr,
    cert_path: PathBuf,
    runtime: Option<tokio::runtime::Runtime>,
    _dir: tempfile::TempDir,
}

impl TokenServer {
    /// Starts a token server with default options and one user, `pusher`.
    pub fn start_default() -> TokenServer {
        TokenServer::start(TokenServerOptions::default())
    }

    pub fn start(opts: TokenServerOptions) -> TokenServer {
        let dir = super::temp_dir("token");
        let key = rcgen::KeyPair::generate().expect("generate a P-256 key");
        let mut params = rcgen::CertificateParams::new(vec!["ferry-test-token-signer".to_owned()])
            .expect("certificate params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ferry-test-token-signer");
        let cert = params.self_signed(&key).expect("self-sign the token cert");
        let cert_path = dir.path().join("token-signer.crt");
        std::fs::write(&cert_path, cert.pem()).expect("write rootcertbundle");
        let kid = libtrust_key_id(&key.subject_public_key_info());
        let encoding_key = jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes())
            .expect("load the signing key");

        let listener = std::net::TcpListener::bind((opts.host.as_str(), 0))
            .unwrap_or_else(|e| panic!("bind token server on {}:0: {e}", opts.host));
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local_addr");
        let realm = format!("http://{addr}/token");
        let inner = Arc::new(Inner {
            opts,
            realm,
            encoding_key,
            kid,
            requests: Mutex::new(Vec::new()),
            count: AtomicUsize::new(0),
            refresh_tokens: Mutex::new(HashMap::new()),
            issued: Mutex::new(Vec::new()),
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("token-server")
            .enable_all()
            .build()
            .expect("token server runtime");
        let app = axum::Router::new()
            .route("/token", get(token_get).post(token_post))
            .with_state(inner.clone());
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            axum::serve(listener, app).await.expect("token server");
        });
        TokenServer {
            inner,
            addr,
            cert_path,
            runtime: Some(runtime),
            _dir: dir,
        }
    }

    /// `http://<host>:PORT/token`, the realm Distribution advertises.
    pub fn realm(&self) -> &str {
        &self.inner.realm
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn service(&self) -> &str {
        &self.inner.opts.service
    }

    pub fn issuer(&self) -> &str {
        &self.inner.opts.issuer
    }

    /// The PEM certificate Distribution must trust (`rootcertbundle`).
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// The `kid` placed in every token header.
    pub fn key_id(&self) -> &str {
        &self.inner.kid
    }

    /// The first configured user, for pushing seed content.
    pub fn user(&self) -> (String, String) {
        self.inner
            .opts
            .users
            .first()
            .cloned()
            .expect("token server has no users")
    }

    /// How many token requests (GET or POST, any outcome) were answered.
    pub fn token_requests(&self) -> usize {
        self.inner.count.load(Ordering::SeqCst)
    }

    /// Every request answered so far.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.inner.requests.lock().unwrap().clone()
    }

    /// Every secret this server handed out, in the forms a leak could take: each bearer
    /// token, its signature alone (a token cut or re-encoded around it still carries
    /// it), and each refresh token.
    pub fn issued_secrets(&self) -> Vec<String> {
        let mut out = Vec::new();
        for token in self.inner.issued.lock().unwrap().iter() {
            if let Some(signature) = token.rsplit('.').next() {
                out.push(signature.to_owned());
            }
            out.push(token.clone());
        }
        out.extend(self.inner.refresh_tokens.lock().unwrap().keys().cloned());
        out
    }

    /// Mints a token directly (for tests that talk to Distribution themselves).
    pub fn mint(&self, subject: &str, access: &[(&str, &str, &[&str])]) -> String {
        let access: Vec<Value> = access
            .iter()
            .map(|(t, n, a)| json!({"type": t, "name": n, "actions": a}))
            .collect();
        self.inner.sign(subject, access, self.inner.opts.expires_in)
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// libtrust's key ID: SHA-256 of the DER SubjectPublicKeyInfo, first 240 bits,
/// base32 (RFC 4648, no padding), in 12 groups of 4 joined by `:`.
pub fn libtrust_key_id(spki_der: &[u8]) -> String {
    use sha2::Digest as _;
    let hash = sha2::Sha256::digest(spki_der);
    let b32 = base32_nopad(&hash[..30]);
    b32.as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(":")
}

fn base32_nopad(data: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for &b in data {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// RFC 3339 UTC timestamp for `secs` since the epoch.
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn random_token() -> String {
    let bytes: [u8; 24] = rand::random();
    hex::encode(bytes)
}

impl Inner {
    fn sign(&self, subject: &str, access: Vec<Value>, expires_in: u64) -> String {
        let now = now_secs();
        let claims = json!({
            "iss": self.opts.issuer,
            "sub": subject,
            "aud": self.opts.service,
            "exp": now + expires_in,
            "nbf": now.saturating_sub(1),
            "iat": now,
            "jti": random_token(),
            "access": access,
        });
        let header = jsonwebtoken::Header {
            typ: Some("JWT".to_owned()),
            kid: Some(self.kid.clone()),
            ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256)
        };
        let token = jsonwebtoken::encode(&header, &claims, &self.encoding_key).expect("sign JWT");
        self.issued.lock().unwrap().push(token.clone());
        token
    }

    fn check_password(&self, user: &str, password: &str) -> bool {
        self.opts
            .users
            .iter()
            .any(|(u, p)| u == user && p == password)
    }

    /// The `access` claim for `scopes` granted to `account` (None = anonymous), and the
    /// granted scopes in scope-string form.
    fn grant(&self, account: Option<&str>, scopes: &[String]) -> (Vec<Value>, Vec<String>) {
        let mut access = Vec::new();
        let mut granted_scopes = Vec::new();
        for scope in scopes {
            let Some((rtype, rest)) = scope.split_once(':') else {
                continue;
            };
            let Some((name, actions)) = rest.rsplit_once(':') else {
                continue;
            };
            // `repository(plugin)`: the class is deprecated and ignored.
            let rtype = rtype.split('(').next().unwrap_or(rtype);
            let granted: Vec<&str> = actions
                .split(',')
                .filter(|a| !a.is_empty())
                .filter(|a| match account {
                    Some(_) => true,
                    None => rtype == "repository" && *a == "pull",
                })
                .collect();
            if granted.is_empty() {
                continue;
            }
            granted_scopes.push(format!("{rtype}:{name}:{}", granted.join(",")));
            access.push(json!({"type": rtype, "name": name, "actions": granted}));
        }
        (access, granted_scopes)
    }

    fn record(&self, req: TokenRequest) {
        self.count.fetch_add(1, Ordering::SeqCst);
        self.requests.lock().unwrap().push(req);
    }

    fn unauthorized(&self, message: &str) -> Response {
        let body =
            json!({"errors": [{"code": "UNAUTHORIZED", "message": message, "detail": null}]});
        (
            StatusCode::UNAUTHORIZED,
            [
                (
                    header::WWW_AUTHENTICATE,
                    format!("Basic realm=\"{}\"", self.realm),
                ),
                (header::CONTENT_TYPE, "application/json".to_owned()),
            ],
            body.to_string(),
        )
            .into_response()
    }
}

fn bad_request(error: &str, description: &str) -> Response {
    let body = json!({"error": error, "error_description": description});
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn json_ok(body: Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn parse_pairs(query: &str) -> Vec<(String, String)> {
    let url = reqwest::Url::parse(&format!("http://x/?{query}")).expect("parse query");
    url.query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn first<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Every `scope` value, each split on spaces (one param may carry several scopes).
fn all_scopes(pairs: &[(String, String)]) -> Vec<String> {
    pairs
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' ').filter(|s| !s.is_empty()).map(str::to_owned))
        .collect()
}

fn basic_credentials(headers: &HeaderMap) -> Option<Result<(String, String), ()>> {
    let value = headers.get(header::AUTHORIZATION)?;
    let value = value.to_str().ok()?;
    let Some(encoded) = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))
    else {
        return Some(Err(()));
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok());
    Some(match decoded.as_deref().and_then(|s| s.split_once(':')) {
        Some((u, p)) => Ok((u.to_owned(), p.to_owned())),
        None => Err(()),
    })
}

async fn token_get(
    State(inner): State<Arc<Inner>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let pairs = parse_pairs(query.as_deref().unwrap_or(""));
    let service = first(&pairs, "service").map(str::to_owned);
    let scopes = all_scopes(&pairs);
    let creds = basic_credentials(&headers);
    let mut rec = TokenRequest {
        method: "GET".to_owned(),
        service: service.clone(),
        scopes: scopes.clone(),
        account: None,
        had_credentials: creds.is_some(),
        status: 200,
    };
    let account = match creds {
        Some(Ok((user, password))) if inner.check_password(&user, &password) => Some(user),
        Some(_) => {
            rec.status = 401;
            inner.record(rec);
            return inner.unauthorized("invalid username or password");
        }
        None if inner.opts.allow_anonymous => None,
        None => {
            rec.status = 401;
            inner.record(rec);
            return inner.unauthorized("authentication required");
        }
    };
    if service.as_deref() != Some(inner.opts.service.as_str()) {
        rec.status = 400;
        inner.record(rec);
        return bad_request("invalid_request", "unknown or missing service");
    }
    rec.account = account.clone();
    let (access, _) = inner.grant(account.as_deref(), &scopes);
    let now = now_secs();
    let token = inner.sign(
        account.as_deref().unwrap_or(""),
        access,
        inner.opts.expires_in,
    );
    let mut body = json!({
        "token": token,
        "access_token": token,
        "expires_in": inner.opts.expires_in,
        "issued_at": rfc3339(now),
    });
    if let Some(user) = &account
        && first(&pairs, "offline_token") == Some("true")
    {
        let refresh = random_token();
        inner
            .refresh_tokens
            .lock()
            .unwrap()
            .insert(refresh.clone(), user.clone());
        body["refresh_token"] = json!(refresh);
    }
    inner.record(rec);
    json_ok(body)
}

async fn token_post(State(inner): State<Arc<Inner>>, body: Bytes) -> Response {
    let pairs = parse_pairs(&String::from_utf8_lossy(&body));
    let service = first(&pairs, "service").map(str::to_owned);
    let scopes = all_scopes(&pairs);
    let grant_type = first(&pairs, "grant_type").unwrap_or("");
    let mut rec = TokenRequest {
        method: "POST".to_owned(),
        service: service.clone(),
        scopes: scopes.clone(),
        account: None,
        had_credentials: grant_type == "password" || grant_type == "refresh_token",
        status: 200,
    };
    let mut returned_refresh = None;
    let account = match grant_type {
        "password" => {
            let user = first(&pairs, "username").unwrap_or("");
            let password = first(&pairs, "password").unwrap_or("");
            if !inner.check_password(user, password) {
                rec.status = 401;
                inner.record(rec);
                return inner.unauthorized("invalid username or password");
            }
            user.to_owned()
        }
        "refresh_token" => {
            let refresh = first(&pairs, "refresh_token").unwrap_or("");
            let Some(user) = inner.refresh_tokens.lock().unwrap().get(refresh).cloned() else {
                rec.status = 401;
                inner.record(rec);
                return inner.unauthorized("invalid refresh token");
            };
            returned_refresh = Some(refresh.to_owned());
            user
        }
        _ => {
            rec.status = 400;
            inner.record(rec);
            return bad_request(
                "unsupported_grant_type",
                "grant_type must be password or refresh_token",
            );
        }
    };
    if service.as_deref() != Some(inner.opts.service.as_str()) {
        rec.status = 400;
        inner.record(rec);
        return bad_request("invalid_request", "unknown or missing service");
    }
    rec.account = Some(account.clone());
    let (access, granted) = inner.grant(Some(&account), &scopes);
    let now = now_secs();
    let token = inner.sign(&account, access, inner.opts.expires_in);
    let mut body = json!({
        "access_token": token,
        "scope": granted.join(" "),
        "expires_in": inner.opts.expires_in,
        "issued_at": rfc3339(now),
    });
    if returned_refresh.is_none() && first(&pairs, "access_type") == Some("offline") {
        let refresh = random_token();
        inner
            .refresh_tokens
            .lock()
            .unwrap()
            .insert(refresh.clone(), account.clone());
        returned_refresh = Some(refresh);
    }
    if let Some(refresh) = returned_refresh {
        body["refresh_token"] = json!(refresh);
    }
    inner.record(rec);
    json_ok(body)
}

/// Distribution's `auth.token` section trusting this server (`RegistryAuth::token`).
impl From<&TokenServer> for super::registry::TokenAuth {
    fn from(server: &TokenServer) -> Self {
        super::registry::TokenAuth {
            realm: server.realm().to_owned(),
            service: server.service().to_owned(),
            issuer: server.issuer().to_owned(),
            rootcertbundle: server.cert_path().to_owned(),
            push_creds: server.user(),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(super::rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn base32_matches_rfc4648() {
        assert_eq!(super::base32_nopad(b"foobar"), "MZXW6YTBOI");
        assert_eq!(super::base32_nopad(b"f"), "MY");
    }
}
