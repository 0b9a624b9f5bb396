//! Configuration: read once (TOML file or the built-in default, then `FERRY_*`
//! environment overrides), validated once into an immutable [`Config`].
//!
//! Every error names the key and, when it came from a file, the line, so that an
//! operator can fix it without reading Ferry's source.

pub mod htpasswd;
pub mod pattern;

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use url::Url;

use crate::cache_rules::{self, CacheRule};
use crate::oci::{ImageName, Platform};
pub use crate::secret::{Secret, SecretSource};
use htpasswd::Htpasswd;
use pattern::{Pattern, Permissions};

/// The configuration `ferry serve` runs on when given no `--config`.
pub const DEFAULT_CONFIG: &str = include_str!("default-config.toml");

/// `[storage] scrub_rate` unless set: on, and low. Bit rot or a damaged file is
/// otherwise served until a client's digest check fails; at 8 MiB/s a re-hash costs a
/// few percent of one core and of a disk's bandwidth, and still goes through a 200 GiB
/// store about every seven hours.
pub const DEFAULT_SCRUB_RATE: u64 = 8 << 20;

const DEFAULT_TAG_TTL: Duration = Duration::from_secs(60);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_PIN_REFRESH: Duration = Duration::from_secs(6 * 3600);
const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// `[server]` bounds on client connections; read at start only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// A new connection's first request head, or an HTTP/1 head once its first byte
    /// came, must arrive whole within this.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight is closed after this.
    pub idle_timeout: Duration,
    /// At most this many open connections (default: three quarters of the open-file
    /// limit, which also caps it).
    pub max_connections: Option<usize>,
}

/// A validated configuration. Nothing in it needs checking again.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// `[server] shutdown_timeout`: how long a stopping server lets requests in flight
    /// finish before it cuts them.
    pub shutdown_timeout: Duration,
    /// `[server] header_read_timeout`, `idle_timeout`, `max_connections`: what a client
    /// connection may hold without using it (see `crate::server::connections`).
    pub connections: ConnectionLimits,
    pub storage_root: PathBuf,
    pub upstreams: Vec<Upstream>,
    /// Cache rules, checked against ACR's constraints.
    pub rules: Vec<CacheRule>,
    /// `[storage] max_size` and `min_free`.
    pub quota: Quota,
    /// `[storage] scrub_rate`: bytes per second the background scrub re-hashes stored
    /// blobs at (see `crate::server::housekeeping`); 0: no scrub.
    pub scrub_rate: u64,
    /// Images kept fetched and refreshed in the background, never evicted.
    pub pins: Vec<Pin>,
    /// `[access]`: users who log in, and what they may pull.
    pub access: Access,
    /// `[tls]`: an HTTPS listener beside the plain one.
    pub tls: Option<Tls>,
}

/// `[access]`. Anonymous rules live on each upstream ([`Upstream::anonymous`]).
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// Users and their bcrypt hashes, as read at load (re-read when the file changes).
    pub htpasswd: Option<Htpasswd>,
    /// `[[access.user]]`: per-user patterns over `<registry>/<repository>`.
    pub users: Vec<AccessUser>,
}

#[derive(Debug, Clone)]
pub struct AccessUser {
    pub name: String,
    pub rules: Permissions,
}

/// `[tls]`: HTTPS from PEM files, reloaded when they change.
#[derive(Debug, Clone, PartialEq)]
pub struct Tls {
    pub listen: SocketAddr,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// A `[[pin]]`: images to keep in the store, refreshed every `refresh`.
#[derive(Debug, Clone, PartialEq)]
pub struct Pin {
    pub images: Vec<ImageName>,
    pub refresh: Duration,
    /// Only this platform of an index; `None`: all of them.
    pub platform: Option<Platform>,
}

/// When the store must make room (see `crate::server::housekeeping`). Both off by default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quota {
    /// Most bytes the blob store may hold.
    pub max_size: Option<u64>,
    /// Fewest bytes to leave free on the store's filesystem.
    pub min_free: Option<u64>,
}

/// Equal when a client built for one serves the other (a reload keeps the client).
#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    /// Short name: the store's key for this upstream and a path prefix clients may use.
    pub name: String,
    /// The registry host clients name (containerd's `ns`), lowercase, maybe with a port.
    pub registry: String,
    /// Base URL Ferry fetches from.
    pub url: Url,
    /// Requests naming no registry go here.
    pub default: bool,
    pub tag_ttl: Duration,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// How long past `tag_ttl` a cached tag may still be served while the upstream
    /// cannot be asked; `None`: as long as it is cached (what an edge site wants).
    pub max_stale: Option<Duration>,
    /// Consecutive failures after which the upstream counts as offline: requests stop
    /// waiting on it and it is probed in the background until it answers.
    pub offline_after_failures: u32,
    pub auth: Auth,
    /// Fixed addresses for host names (Private Link endpoints without private DNS).
    /// TLS still verifies against the names.
    pub resolve: Vec<(String, IpAddr)>,
    /// Extra CA certificates (PEM) to trust for this upstream.
    pub ca_pem: Option<Vec<u8>>,
    /// An explicit HTTP(S) proxy; without one, `HTTPS_PROXY`/`NO_PROXY` apply.
    pub proxy: Option<Url>,
    /// Skips TLS verification. Only ever set explicitly, and logged loudly.
    pub insecure_skip_verify: bool,
    /// Hosts other than the registry's own whose token realm may receive its
    /// credentials (Docker Hub's `auth.docker.io`), normalised as URLs print hosts.
    pub realm_hosts: Vec<String>,
    /// What anonymous clients may pull here: patterns over the repository.
    pub anonymous: Permissions,
}

impl Upstream {
    /// Docker Hub stores single-component names under `library/`.
    pub fn implicit_library(&self) -> bool {
        self.registry == "docker.io"
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Auth {
    /// No credentials; the registry's anonymous bearer-token flow still applies.
    Anonymous,
    /// Username and password, sent as Basic auth or to the registry's token realm.
    Basic {
        username: String,
        password: SecretSource,
    },
    /// A static bearer token sent with every request.
    Bearer { token: SecretSource },
    /// An Entra ID identity, exchanged for ACR tokens.
    Entra(Entra),
}

/// An Entra ID identity for an Azure Container Registry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entra {
    /// `None`: `AZURE_AUTHORITY_HOST`, else the public cloud.
    pub authority_host: Option<Url>,
    /// `None`: from the environment (workload identity: `AZURE_TENANT_ID`).
    pub tenant_id: Option<String>,
    /// `None`: from the environment (workload identity: `AZURE_CLIENT_ID`).
    pub client_id: Option<String>,
    pub credential: EntraCredential,
}

#[derive(Debug, Clone, PartialEq)]
pub enum EntraCredential {
    ClientSecret(SecretSource),
    /// A PEM file with the certificate and its (RSA) private key.
    Certificate(PathBuf),
    /// A federated token file; `None`: `AZURE_FEDERATED_TOKEN_FILE`, as on AKS.
    WorkloadIdentity {
        token_file: Option<PathBuf>,
    },
    /// The platform's managed identity; a user-assigned one by client ID.
    ManagedIdentity {
        client_id: Option<String>,
    },
}

impl Auth {
    fn describe(&self) -> String {
        match self {
            Auth::Anonymous => "anonymous".into(),
            Auth::Basic { username, .. } => {
                format!("basic (username {username}, password from file)")
            }
            Auth::Bearer { .. } => "bearer (token from file)".into(),
            Auth::Entra(e) => {
                let how = match &e.credential {
                    EntraCredential::ClientSecret(_) => "client secret from file".to_string(),
                    EntraCredential::Certificate(p) => format!("certificate {}", p.display()),
                    EntraCredential::WorkloadIdentity { .. } => "workload identity".to_string(),
                    EntraCredential::ManagedIdentity { client_id: None } => {
                        "system-assigned managed identity".to_string()
                    }
                    EntraCredential::ManagedIdentity { client_id: Some(c) } => {
                        format!("managed identity {c}")
                    }
                };
                let host = e
                    .authority_host
                    .as_ref()
                    .map_or("default authority".to_string(), |u| u.to_string());
                format!(
                    "entra ({how}; tenant {}; client {}; {host}) via the ACR token exchange",
                    e.tenant_id.as_deref().unwrap_or("from env"),
                    e.client_id.as_deref().unwrap_or("from env")
                )
            }
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
#[error("{origin}{location}: {message}")]
pub struct ConfigError {
    origin: String,
    location: String,
    message: String,
}

// ---- the raw shape, as written in TOML ----

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    storage: RawStorage,
    #[serde(default)]
    upstream: Vec<RawUpstream>,
    #[serde(default)]
    rule: Vec<RawRule>,
    #[serde(default)]
    pin: Vec<RawPin>,
    #[serde(default)]
    access: RawAccess,
    tls: Option<RawTls>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccess {
    htpasswd: Option<Spanned<String>>,
    #[serde(default)]
    user: Vec<RawUser>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: Spanned<String>,
    allow: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    deny: Vec<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    listen: Option<Spanned<String>>,
    cert_file: Option<Spanned<String>>,
    key_file: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPin {
    images: Vec<Spanned<String>>,
    refresh: Option<Spanned<String>>,
    platform: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Spanned<String>,
    source: Spanned<String>,
    target: Spanned<String>,
    upstream: Spanned<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<Spanned<String>>,
    shutdown_timeout: Option<Spanned<String>>,
    header_read_timeout: Option<Spanned<String>>,
    idle_timeout: Option<Spanned<String>>,
    max_connections: Option<Spanned<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    root: Option<Spanned<String>>,
    max_size: Option<Spanned<String>>,
    min_free: Option<Spanned<String>>,
    scrub_rate: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    name: Spanned<String>,
    registry: Option<Spanned<String>>,
    url: Option<Spanned<String>>,
    #[serde(default)]
    default: Option<Spanned<bool>>,
    tag_ttl: Option<Spanned<String>>,
    connect_timeout: Option<Spanned<String>>,
    read_timeout: Option<Spanned<String>>,
    max_stale: Option<Spanned<String>>,
    offline_after_failures: Option<Spanned<u32>>,
    auth: Option<Spanned<RawAuth>>,
    #[serde(default)]
    resolve: BTreeMap<String, Spanned<String>>,
    ca_file: Option<Spanned<String>>,
    proxy: Option<Spanned<String>>,
    insecure_skip_verify: Option<Spanned<bool>>,
    #[serde(default)]
    realm_hosts: Vec<Spanned<String>>,
    allow: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    deny: Vec<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    kind: Option<Spanned<String>>,
    username: Option<Spanned<String>>,
    password_file: Option<Spanned<String>>,
    token_file: Option<Spanned<String>>,
    tenant_id: Option<Spanned<String>>,
    client_id: Option<Spanned<String>>,
    client_secret_file: Option<Spanned<String>>,
    password_env: Option<Spanned<String>>,
    token_env: Option<Spanned<String>>,
    client_secret_env: Option<Spanned<String>>,
    certificate_file: Option<Spanned<String>>,
    workload_identity: Option<Spanned<bool>>,
    managed_identity: Option<Spanned<RawManagedIdentity>>,
    authority_host: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawManagedIdentity {
    Enabled(bool),
    UserAssigned { client_id: String },
}

/// Where the text being validated came from, to turn byte spans into `file:line:col`.
struct Source<'a> {
    origin: String,
    text: &'a str,
}

impl Source<'_> {
    fn error(
        &self,
        span: Option<std::ops::Range<usize>>,
        message: impl Into<String>,
    ) -> ConfigError {
        let location = match span {
            // A span of 0..0 marks a value that came from the environment.
            Some(r) if r.end > 0 => {
                let before = &self.text[..r.start.min(self.text.len())];
                let line = before.matches('\n').count() + 1;
                let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!(":{line}:{col}")
            }
            _ => String::new(),
        };
        ConfigError {
            origin: self.origin.clone(),
            location,
            message: message.into(),
        }
    }
}

impl Config {
    /// Loads `path` (or the built-in default), applies `FERRY_*` overrides from `env`,
    /// and validates the result.
    pub fn load(path: Option<&Path>, env: &[(String, String)]) -> Result<Config, ConfigError> {
        let (origin, text) = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| ConfigError {
                    origin: p.display().to_string(),
                    location: String::new(),
                    message: format!("cannot read the config file: {e}"),
                })?;
                (p.display().to_string(), text)
            }
            None => ("built-in config".to_string(), DEFAULT_CONFIG.to_string()),
        };
        Self::parse(&origin, &text, env)
    }

    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn parse(
        origin: &str,
        text: &str,
        env: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let src = Source {
            origin: origin.to_string(),
            text,
        };
        let mut raw: RawConfig = toml::from_str(text)
            .map_err(|e| src.error(e.span(), e.message().trim().to_string()))?;
        apply_env(&mut raw, env)?;
        validate(raw, &src)
    }

    /// A human summary of what was understood, for `ferry config check`.
    pub fn describe(&self) -> String {
        let mut out = format!(
            "listen: {} (shutdown_timeout {})\nconnections: header_read_timeout {}, idle_timeout {}, max_connections {}\nstorage root: {}\nupstreams:\n",
            self.listen,
            humantime::format_duration(self.shutdown_timeout),
            humantime::format_duration(self.connections.header_read_timeout),
            humantime::format_duration(self.connections.idle_timeout),
            match self.connections.max_connections {
                Some(n) => n.to_string(),
                None => "3/4 of the open-file limit".to_string(),
            },
            self.storage_root.display()
        );
        for u in &self.upstreams {
            out += &format!(
                "  - {name}: registry {registry} -> {url}{default}\n      auth: {auth}{realms}; tag_ttl {ttl}; connect_timeout {ct}; read_timeout {rt}{lib}\n",
                name = u.name,
                registry = u.registry,
                url = u.url,
                default = if u.default { " (default)" } else { "" },
                auth = u.auth.describe(),
                realms = if u.realm_hosts.is_empty() {
                    String::new()
                } else {
                    format!("; token realms also on {}", u.realm_hosts.join(", "))
                },
                ttl = humantime::format_duration(u.tag_ttl),
                ct = humantime::format_duration(u.connect_timeout),
                rt = humantime::format_duration(u.read_timeout),
                lib = if u.implicit_library() {
                    "; single-component names get library/"
                } else {
                    ""
                },
            );
        }
        for (key, limit) in [
            ("max_size", self.quota.max_size),
            ("min_free", self.quota.min_free),
        ] {
            if let Some(bytes) = limit {
                out += &format!("storage {key}: {}\n", crate::bytesize::Human(bytes));
            }
        }
        out += &match self.scrub_rate {
            0 => "storage scrub_rate: off\n".to_string(),
            r => format!("storage scrub_rate: {}/s\n", crate::bytesize::Human(r)),
        };
        if let Some(t) = &self.tls {
            out += &format!(
                "tls: https://{} (cert {}, key {})\n",
                t.listen,
                t.cert_file.display(),
                t.key_file.display()
            );
        }
        for u in self.upstreams.iter().filter(|u| !u.anonymous.is_open()) {
            out += &format!(
                "anonymous access to {}: {}\n",
                u.name,
                u.anonymous.describe()
            );
        }
        if let Some(h) = &self.access.htpasswd {
            out += &format!(
                "users (htpasswd {}): {}\n",
                h.path().display(),
                h.users().join(", ")
            );
            for u in &self.access.users {
                out += &format!("  - {}: {}\n", u.name, u.rules.describe());
            }
        }
        if !self.rules.is_empty() {
            out += "rules:\n";
            for r in &self.rules {
                out += &format!("  - {r}\n");
            }
        }
        out
    }
}

/// `FERRY_SERVER_LISTEN` (`_SHUTDOWN_TIMEOUT`, `_HEADER_READ_TIMEOUT`, `_IDLE_TIMEOUT`,
/// `_MAX_CONNECTIONS`), `FERRY_STORAGE_ROOT` (`_MAX_SIZE`, `_MIN_FREE`), and per upstream (name upper-cased,
/// `-` and `.` as `_`) `FERRY_UPSTREAM_<NAME>_<KEY>` for every key, `AUTH_<KEY>` for
/// the auth table. An override for an upstream that the file does not define is an
/// error rather than silently ignored.
fn apply_env(raw: &mut RawConfig, env: &[(String, String)]) -> Result<(), ConfigError> {
    // Values from the environment carry the empty span 0..0: they have no line.
    let set = |slot: &mut Option<Spanned<String>>, v: &str| {
        *slot = Some(Spanned::new(0..0, v.to_string()))
    };
    let env_err = |key: &str, message: String| ConfigError {
        origin: format!("environment variable {key}"),
        location: String::new(),
        message,
    };
    let env_bool = |key: &str, value: &str| {
        value
            .parse::<bool>()
            .map_err(|_| env_err(key, format!("`{value}` is not true or false")))
    };
    for (key, value) in env {
        let Some(rest) = key.strip_prefix("FERRY_") else {
            continue;
        };
        match rest {
            "SERVER_LISTEN" => set(&mut raw.server.listen, value),
            "SERVER_SHUTDOWN_TIMEOUT" => set(&mut raw.server.shutdown_timeout, value),
            "SERVER_HEADER_READ_TIMEOUT" => set(&mut raw.server.header_read_timeout, value),
            "SERVER_IDLE_TIMEOUT" => set(&mut raw.server.idle_timeout, value),
            "SERVER_MAX_CONNECTIONS" => {
                let n = value
                    .parse::<u64>()
                    .map_err(|_| env_err(key, format!("`{value}` is not a count")))?;
                raw.server.max_connections = Some(Spanned::new(0..0, n));
            }
            "STORAGE_ROOT" => set(&mut raw.storage.root, value),
            "STORAGE_MAX_SIZE" => set(&mut raw.storage.max_size, value),
            "STORAGE_MIN_FREE" => set(&mut raw.storage.min_free, value),
            "STORAGE_SCRUB_RATE" => set(&mut raw.storage.scrub_rate, value),
            "ACCESS_HTPASSWD" => set(&mut raw.access.htpasswd, value),
            "TLS_LISTEN" => set(&mut raw.tls.get_or_insert_default().listen, value),
            "TLS_CERT_FILE" => set(&mut raw.tls.get_or_insert_default().cert_file, value),
            "TLS_KEY_FILE" => set(&mut raw.tls.get_or_insert_default().key_file, value),
            // Read by the CLI itself, not config keys.
            "CONFIG" | "LOG_FORMAT" | "LOG" => {}
            _ => {
                let Some(up) = rest.strip_prefix("UPSTREAM_") else {
                    return Err(env_err(key, "not a Ferry setting".into()));
                };
                let target = raw.upstream.iter_mut().find(|u| {
                    let prefix = env_name(u.name.get_ref()) + "_";
                    up.starts_with(&prefix)
                });
                let Some(u) = target else {
                    return Err(env_err(key, "names no configured upstream".into()));
                };
                let field = &up[env_name(u.name.get_ref()).len() + 1..];
                match field {
                    "REGISTRY" => set(&mut u.registry, value),
                    "URL" => set(&mut u.url, value),
                    "TAG_TTL" => set(&mut u.tag_ttl, value),
                    "CONNECT_TIMEOUT" => set(&mut u.connect_timeout, value),
                    "READ_TIMEOUT" => set(&mut u.read_timeout, value),
                    "MAX_STALE" => set(&mut u.max_stale, value),
                    "OFFLINE_AFTER_FAILURES" => {
                        let n = value
                            .parse::<u32>()
                            .map_err(|_| env_err(key, format!("`{value}` is not a count")))?;
                        u.offline_after_failures = Some(Spanned::new(0..0, n));
                    }
                    "CA_FILE" => set(&mut u.ca_file, value),
                    "PROXY" => set(&mut u.proxy, value),
                    "INSECURE_SKIP_VERIFY" => {
                        u.insecure_skip_verify = Some(Spanned::new(0..0, env_bool(key, value)?))
                    }
                    // A comma-separated list; empty clears the file's.
                    "REALM_HOSTS" => {
                        u.realm_hosts = value
                            .split(',')
                            .map(str::trim)
                            .filter(|h| !h.is_empty())
                            .map(|h| Spanned::new(0..0, h.to_string()))
                            .collect()
                    }
                    "DEFAULT" => u.default = Some(Spanned::new(0..0, env_bool(key, value)?)),
                    f if f.starts_with("AUTH_") => {
                        let a = u
                            .auth
                            .get_or_insert_with(|| Spanned::new(0..0, RawAuth::default()));
                        let a = a.get_mut();
                        match &f[5..] {
                            "KIND" => set(&mut a.kind, value),
                            "USERNAME" => set(&mut a.username, value),
                            "PASSWORD_FILE" => set(&mut a.password_file, value),
                            "TOKEN_FILE" => set(&mut a.token_file, value),
                            "TENANT_ID" => set(&mut a.tenant_id, value),
                            "CLIENT_ID" => set(&mut a.client_id, value),
                            "CLIENT_SECRET_FILE" => set(&mut a.client_secret_file, value),
                            "CLIENT_SECRET_ENV" => set(&mut a.client_secret_env, value),
                            "PASSWORD_ENV" => set(&mut a.password_env, value),
                            "TOKEN_ENV" => set(&mut a.token_env, value),
                            "CERTIFICATE_FILE" => set(&mut a.certificate_file, value),
                            "AUTHORITY_HOST" => set(&mut a.authority_host, value),
                            "WORKLOAD_IDENTITY" => {
                                a.workload_identity =
                                    Some(Spanned::new(0..0, env_bool(key, value)?))
                            }
                            _ => return Err(env_err(key, "not an auth setting".into())),
                        }
                    }
                    _ => return Err(env_err(key, "not an upstream setting".into())),
                }
            }
        }
    }
    Ok(())
}

/// `[server] header_read_timeout`, `idle_timeout` (durations, more than zero) and
/// `max_connections` (a count, more than zero).
fn validate_connections(raw: &RawServer, src: &Source) -> Result<ConnectionLimits, ConfigError> {
    let duration = |v: &Option<Spanned<String>>, key: &str, default: Duration| {
        let Some(s) = v else { return Ok(default) };
        match humantime::parse_duration(s.get_ref()) {
            Ok(d) if !d.is_zero() => Ok(d),
            Ok(_) => Err(src.error(
                Some(s.span()),
                format!("server.{key} must be more than zero"),
            )),
            Err(e) => Err(src.error(
                Some(s.span()),
                format!(
                    "server.{key}: `{}` is not a duration like 30s ({e})",
                    s.get_ref()
                ),
            )),
        }
    };
    let max_connections = match &raw.max_connections {
        None => None,
        Some(s) => match usize::try_from(*s.get_ref()) {
            Ok(n) if n > 0 => Some(n),
            _ => {
                return Err(src.error(Some(s.span()), "server.max_connections must be at least 1"));
            }
        },
    };
    Ok(ConnectionLimits {
        header_read_timeout: duration(
            &raw.header_read_timeout,
            "header_read_timeout",
            DEFAULT_HEADER_READ_TIMEOUT,
        )?,
        idle_timeout: duration(&raw.idle_timeout, "idle_timeout", DEFAULT_IDLE_TIMEOUT)?,
        max_connections,
    })
}

fn env_name(upstream: &str) -> String {
    upstream.to_ascii_uppercase().replace(['-', '.'], "_")
}

fn validate(raw: RawConfig, src: &Source) -> Result<Config, ConfigError> {
    let connections = validate_connections(&raw.server, src)?;
    let listen = match raw.server.listen {
        None => "127.0.0.1:5000".parse().expect("default listen address"),
        Some(s) => s.get_ref().parse::<SocketAddr>().map_err(|e| {
            src.error(
                Some(s.span()),
                format!(
                    "server.listen: `{}` is not an address like 127.0.0.1:5000 ({e})",
                    s.get_ref()
                ),
            )
        })?,
    };
    let shutdown_timeout = match raw.server.shutdown_timeout {
        None => DEFAULT_SHUTDOWN_TIMEOUT,
        Some(s) => humantime::parse_duration(s.get_ref()).map_err(|e| {
            src.error(
                Some(s.span()),
                format!(
                    "server.shutdown_timeout: `{}` is not a duration like 30s ({e})",
                    s.get_ref()
                ),
            )
        })?,
    };
    let storage_root = match raw.storage.root {
        None => PathBuf::from("./ferry-data"),
        Some(s) if s.get_ref().is_empty() => {
            return Err(src.error(Some(s.span()), "storage.root is empty"));
        }
        Some(s) => PathBuf::from(s.into_inner()),
    };
    let size = |v: Option<Spanned<String>>, key: &str| -> Result<Option<u64>, ConfigError> {
        let Some(s) = v else { return Ok(None) };
        match crate::bytesize::parse(s.get_ref()) {
            Ok(0) => Err(src.error(
                Some(s.span()),
                format!("storage.{key} must be more than zero (leave it out for no limit)"),
            )),
            Ok(n) => Ok(Some(n)),
            Err(e) => Err(src.error(Some(s.span()), format!("storage.{key}: {e}"))),
        }
    };
    let quota = Quota {
        max_size: size(raw.storage.max_size, "max_size")?,
        min_free: size(raw.storage.min_free, "min_free")?,
    };
    let scrub_rate = match raw.storage.scrub_rate {
        None => DEFAULT_SCRUB_RATE,
        Some(s) => crate::bytesize::parse(s.get_ref()).map_err(|e| {
            src.error(
                Some(s.span()),
                format!("storage.scrub_rate: {e} (bytes per second, like \"8MiB\"; \"0\" for off)"),
            )
        })?,
    };
    let mut upstreams = Vec::new();
    let mut names = HashSet::new();
    let mut registries = HashSet::new();
    for u in raw.upstream {
        let name = u.name.get_ref().clone();
        let here = |field: &str| format!("upstream `{name}`: {field}");
        let valid_name = !name.is_empty()
            && name.split(['.', '_', '-']).all(|c| {
                !c.is_empty()
                    && c.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            });
        if !valid_name {
            return Err(src.error(Some(u.name.span()), format!("upstream name `{name}` must be lowercase letters, digits, and . _ - between them")));
        }
        if !names.insert(name.clone()) {
            return Err(src.error(
                Some(u.name.span()),
                format!("upstream name `{name}` is defined twice"),
            ));
        }
        let url_s = u
            .url
            .ok_or_else(|| src.error(Some(u.name.span()), here("`url` is missing")))?;
        let url = Url::parse(url_s.get_ref()).map_err(|e| {
            src.error(
                Some(url_s.span()),
                format!("{}: `{}` is not a URL ({e})", here("url"), url_s.get_ref()),
            )
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(src.error(
                Some(url_s.span()),
                format!(
                    "{}: `{url}` must be an http:// or https:// URL with a host",
                    here("url")
                ),
            ));
        }
        if url.query().is_some()
            || url.fragment().is_some()
            || !url.username().is_empty()
            || url.password().is_some()
        {
            return Err(src.error(
                Some(url_s.span()),
                format!(
                    "{}: must not carry credentials, a query or a fragment (use `auth`)",
                    here("url")
                ),
            ));
        }
        let registry = match u.registry {
            Some(r) => {
                let reg = r.get_ref().to_ascii_lowercase();
                let ok = !reg.is_empty()
                    && reg.bytes().all(|b| {
                        b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')
                    });
                if !ok {
                    return Err(src.error(
                        Some(r.span()),
                        format!(
                            "{}: `{}` is not a registry host[:port]",
                            here("registry"),
                            r.get_ref()
                        ),
                    ));
                }
                if !registries.insert(reg.clone()) {
                    return Err(src.error(
                        Some(r.span()),
                        format!(
                            "{}: registry `{reg}` is already served by another upstream",
                            here("registry")
                        ),
                    ));
                }
                reg
            }
            None => {
                let reg = match url.port() {
                    Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
                    None => url.host_str().unwrap_or_default().to_string(),
                };
                if !registries.insert(reg.clone()) {
                    return Err(src.error(
                        Some(u.name.span()),
                        format!(
                            "{}: registry `{reg}` (from url) is already served by another upstream",
                            here("registry")
                        ),
                    ));
                }
                reg
            }
        };
        let duration = |v: Option<Spanned<String>>,
                        field: &str,
                        default: Duration|
         -> Result<Duration, ConfigError> {
            match v {
                None => Ok(default),
                Some(s) => humantime::parse_duration(s.get_ref()).map_err(|e| {
                    src.error(
                        Some(s.span()),
                        format!(
                            "{}: `{}` is not a duration like 60s or 5m ({e})",
                            here(field),
                            s.get_ref()
                        ),
                    )
                }),
            }
        };
        let tag_ttl = duration(u.tag_ttl, "tag_ttl", DEFAULT_TAG_TTL)?;
        let connect_timeout = duration(
            u.connect_timeout,
            "connect_timeout",
            DEFAULT_CONNECT_TIMEOUT,
        )?;
        let read_timeout = duration(u.read_timeout, "read_timeout", DEFAULT_READ_TIMEOUT)?;
        let max_stale = match u.max_stale {
            None => None,
            Some(s) => Some(duration(Some(s), "max_stale", Duration::ZERO)?),
        };
        let offline_after_failures = match u.offline_after_failures {
            None => 1,
            Some(n) if *n.get_ref() == 0 => {
                return Err(src.error(
                    Some(n.span()),
                    format!("{} must be at least 1", here("offline_after_failures")),
                ));
            }
            Some(n) => n.into_inner(),
        };
        for (d, f) in [
            (connect_timeout, "connect_timeout"),
            (read_timeout, "read_timeout"),
        ] {
            if d.is_zero() {
                return Err(src.error(
                    Some(u.name.span()),
                    format!("{} must be more than zero", here(f)),
                ));
            }
        }
        let auth = match u.auth {
            None => Auth::Anonymous,
            Some(a) => validate_auth(a, src, &name)?,
        };
        let mut resolve = Vec::new();
        for (host, addr) in u.resolve {
            let ip = addr.get_ref().parse::<IpAddr>().map_err(|_| {
                src.error(
                    Some(addr.span()),
                    format!(
                        "{}: `{}` is not an IP address",
                        here(&format!("resolve.\"{host}\"")),
                        addr.get_ref()
                    ),
                )
            })?;
            resolve.push((host.to_ascii_lowercase(), ip));
        }
        let ca_pem = match u.ca_file {
            None => None,
            Some(f) => {
                let pem = std::fs::read(f.get_ref()).map_err(|e| {
                    src.error(
                        Some(f.span()),
                        format!("{}: cannot read `{}`: {e}", here("ca_file"), f.get_ref()),
                    )
                })?;
                if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                    return Err(src.error(
                        Some(f.span()),
                        format!(
                            "{}: `{}` holds no PEM certificate",
                            here("ca_file"),
                            f.get_ref()
                        ),
                    ));
                }
                Some(pem)
            }
        };
        let proxy = match u.proxy {
            None => None,
            Some(p) => Some(
                Url::parse(p.get_ref())
                    .ok()
                    .filter(|url| matches!(url.scheme(), "http" | "https" | "socks5" | "socks5h"))
                    .ok_or_else(|| {
                        src.error(
                            Some(p.span()),
                            format!("{}: `{}` is not a proxy URL", here("proxy"), p.get_ref()),
                        )
                    })?,
            ),
        };
        let mut realm_hosts = Vec::new();
        for h in u.realm_hosts {
            let host = url::Host::parse(h.get_ref()).map_err(|_| {
                src.error(
                    Some(h.span()),
                    format!(
                        "{}: `{}` is not a host name or IP address (no scheme, port or path)",
                        here("realm_hosts"),
                        h.get_ref()
                    ),
                )
            })?;
            realm_hosts.push(host.to_string());
        }
        let anonymous = rules_of(u.allow, u.deny, src, &format!("upstream `{name}`"))?;
        upstreams.push(Upstream {
            name,
            registry,
            url,
            default: u.default.map(|d| d.into_inner()).unwrap_or(false),
            tag_ttl,
            connect_timeout,
            read_timeout,
            max_stale,
            offline_after_failures,
            auth,
            resolve,
            ca_pem,
            proxy,
            insecure_skip_verify: u.insecure_skip_verify.is_some_and(|v| v.into_inner()),
            realm_hosts,
            anonymous,
        });
    }
    if upstreams.is_empty() {
        // Every request, cached images included, is routed through an upstream's
        // registry name: a file without one (emptied by accident, say) would turn a
        // running cache into a 404 for everything.
        return Err(src.error(
            None,
            "no [[upstream]] is configured: Ferry routes every image, cached ones included, through an upstream; add one (name and url)",
        ));
    }
    if upstreams.iter().filter(|u| u.default).count() > 1 {
        let which: Vec<_> = upstreams
            .iter()
            .filter(|u| u.default)
            .map(|u| u.name.as_str())
            .collect();
        return Err(src.error(
            None,
            format!(
                "only one upstream may be `default = true`, found: {}",
                which.join(", ")
            ),
        ));
    }
    let mut rule_list = Vec::new();
    let mut rule_spans = Vec::new();
    for r in raw.rule {
        let name = r.name.get_ref();
        if !upstreams.iter().any(|u| &u.name == r.upstream.get_ref()) {
            return Err(src.error(
                Some(r.upstream.span()),
                format!(
                    "rule `{name}`: upstream `{}` is not configured",
                    r.upstream.get_ref()
                ),
            ));
        }
        let rule = CacheRule::parse(
            name,
            r.source.get_ref(),
            r.target.get_ref(),
            r.upstream.get_ref(),
        )
        .map_err(|e| src.error(Some(r.name.span()), format!("rule `{name}`: {e}")))?;
        rule_list.push(rule);
        rule_spans.push(r.name.span());
    }
    if let Err(e) = cache_rules::check(&rule_list) {
        // Named at the first rule that makes the set invalid (the later of a
        // conflicting pair), so the error has a line.
        let at = (1..=rule_list.len())
            .find(|&n| cache_rules::check(&rule_list[..n]).is_err())
            .map(|n| rule_spans[n - 1].clone());
        return Err(src.error(at, e));
    }
    let mut pins = Vec::new();
    for p in raw.pin {
        let images = p
            .images
            .iter()
            .map(|i| {
                i.get_ref()
                    .parse::<ImageName>()
                    .map_err(|e| src.error(Some(i.span()), format!("pin: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let refresh = match &p.refresh {
            None => DEFAULT_PIN_REFRESH,
            Some(r) => humantime::parse_duration(r.get_ref())
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    src.error(
                        Some(r.span()),
                        format!("pin: refresh `{}` is not a duration like 6h", r.get_ref()),
                    )
                })?,
        };
        let platform = match &p.platform {
            None => None,
            Some(pl) => Some(
                pl.get_ref()
                    .parse::<Platform>()
                    .map_err(|e| src.error(Some(pl.span()), format!("pin: {e}")))?,
            ),
        };
        pins.push(Pin {
            images,
            refresh,
            platform,
        });
    }
    let access = validate_access(raw.access, src)?;
    let tls = raw.tls.map(|t| validate_tls(t, src)).transpose()?;
    Ok(Config {
        listen,
        shutdown_timeout,
        connections,
        storage_root,
        upstreams,
        rules: rule_list,
        quota,
        scrub_rate,
        pins,
        access,
        tls,
    })
}

/// `allow` / `deny` lists of `who` (an upstream or a user), for errors.
fn rules_of(
    allow: Option<Vec<Spanned<String>>>,
    deny: Vec<Spanned<String>>,
    src: &Source,
    who: &str,
) -> Result<Permissions, ConfigError> {
    let parse = |list: Vec<Spanned<String>>, key: &str| {
        list.into_iter()
            .map(|p| {
                Pattern::parse(p.get_ref())
                    .map_err(|e| src.error(Some(p.span()), format!("{who}: {key}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(Permissions {
        allow: allow.map(|a| parse(a, "allow")).transpose()?,
        deny: parse(deny, "deny")?,
    })
}

fn validate_access(raw: RawAccess, src: &Source) -> Result<Access, ConfigError> {
    let htpasswd = match &raw.htpasswd {
        None => None,
        Some(h) => Some(
            Htpasswd::load(Path::new(h.get_ref()))
                .map_err(|e| src.error(Some(h.span()), format!("access.htpasswd: {e}")))?,
        ),
    };
    let mut users: Vec<AccessUser> = Vec::new();
    for u in raw.user {
        let name = u.name.get_ref().clone();
        let Some(h) = &htpasswd else {
            return Err(src.error(
                Some(u.name.span()),
                format!("access.user `{name}`: users need `[access] htpasswd` to log in with"),
            ));
        };
        if !h.has_user(&name) {
            return Err(src.error(
                Some(u.name.span()),
                format!(
                    "access.user `{name}` is not in the htpasswd file {}",
                    h.path().display()
                ),
            ));
        }
        if users.iter().any(|x| x.name == name) {
            return Err(src.error(
                Some(u.name.span()),
                format!("access.user `{name}` is defined twice"),
            ));
        }
        let rules = rules_of(u.allow, u.deny, src, &format!("access.user `{name}`"))?;
        users.push(AccessUser { name, rules });
    }
    Ok(Access { htpasswd, users })
}

fn validate_tls(raw: RawTls, src: &Source) -> Result<Tls, ConfigError> {
    let listen = match raw.listen {
        None => return Err(src.error(None, "tls.listen is missing (e.g. \"0.0.0.0:5443\")")),
        Some(s) => s.get_ref().parse::<SocketAddr>().map_err(|e| {
            src.error(
                Some(s.span()),
                format!(
                    "tls.listen: `{}` is not an address like 0.0.0.0:5443 ({e})",
                    s.get_ref()
                ),
            )
        })?,
    };
    // A light look now (`ferry config check`); the pair is fully checked when served.
    let pem = |v: Option<Spanned<String>>, key: &str, marker: &str| {
        let Some(f) = v else {
            return Err(src.error(None, format!("tls.{key} is missing")));
        };
        let text = std::fs::read(f.get_ref()).map_err(|e| {
            src.error(
                Some(f.span()),
                format!("tls.{key}: cannot read `{}`: {e}", f.get_ref()),
            )
        })?;
        if !String::from_utf8_lossy(&text).contains(marker) {
            return Err(src.error(
                Some(f.span()),
                format!("tls.{key}: `{}` holds no PEM {marker}", f.get_ref()),
            ));
        }
        Ok(PathBuf::from(f.into_inner()))
    };
    Ok(Tls {
        listen,
        cert_file: pem(raw.cert_file, "cert_file", "CERTIFICATE")?,
        key_file: pem(raw.key_file, "key_file", "PRIVATE KEY")?,
    })
}

fn validate_auth(a: Spanned<RawAuth>, src: &Source, upstream: &str) -> Result<Auth, ConfigError> {
    let span = a.span();
    let a = a.into_inner();
    let kind_span = a.kind.as_ref().map(|k| k.span());
    let kind = a
        .kind
        .as_ref()
        .map(|k| k.get_ref().clone())
        .unwrap_or_else(|| "anonymous".to_string());
    let kind = kind.as_str();
    let here = |field: &str| format!("upstream `{upstream}`: auth.{field}");
    let required = |field: &str| {
        src.error(
            Some(span.clone()),
            format!("{} is required for kind = \"{kind}\"", here(field)),
        )
    };
    // A secret comes from `<name>_file` or `<name>_env`, exactly one of them.
    let secret = |file: &Option<Spanned<String>>,
                  env: &Option<Spanned<String>>,
                  name: &str|
     -> Result<SecretSource, ConfigError> {
        let (value, field, loaded) = match (file, env) {
            (Some(f), None) => (f, "file", SecretSource::from_file(f.get_ref())),
            (None, Some(e)) => (e, "env", SecretSource::from_env(e.get_ref())),
            (None, None) => return Err(required(&format!("{name}_file (or {name}_env)"))),
            (Some(f), Some(_)) => {
                return Err(src.error(
                    Some(f.span()),
                    format!("{}: give {name}_file or {name}_env, not both", here(name)),
                ));
            }
        };
        loaded.map_err(|e| {
            src.error(
                Some(value.span()),
                format!("{}: {e}", here(&format!("{name}_{field}"))),
            )
        })
    };
    // Which keys each kind takes; any other key present is a mistake worth naming.
    let present = [
        ("username", a.username.is_some()),
        ("password_file", a.password_file.is_some()),
        ("password_env", a.password_env.is_some()),
        ("token_env", a.token_env.is_some()),
        ("client_secret_env", a.client_secret_env.is_some()),
        ("token_file", a.token_file.is_some()),
        ("tenant_id", a.tenant_id.is_some()),
        ("client_id", a.client_id.is_some()),
        ("client_secret_file", a.client_secret_file.is_some()),
        ("certificate_file", a.certificate_file.is_some()),
        ("workload_identity", a.workload_identity.is_some()),
        ("managed_identity", a.managed_identity.is_some()),
        ("authority_host", a.authority_host.is_some()),
    ];
    let allowed: &[&str] = match kind {
        "anonymous" => &[],
        "basic" => &["username", "password_file", "password_env"],
        "bearer" => &["token_file", "token_env"],
        "entra" => &[
            "tenant_id",
            "client_id",
            "client_secret_file",
            "client_secret_env",
            "certificate_file",
            "workload_identity",
            "managed_identity",
            "authority_host",
            "token_file",
        ],
        other => {
            return Err(src.error(
                kind_span,
                format!(
                    "{}: unknown kind `{other}` (anonymous, basic, bearer, entra)",
                    here("kind")
                ),
            ));
        }
    };
    if let Some((field, _)) = present.iter().find(|(f, p)| *p && !allowed.contains(f)) {
        return Err(src.error(
            Some(span.clone()),
            format!("{} does not apply to kind = \"{kind}\"", here(field)),
        ));
    }
    let text = |v: &Option<Spanned<String>>| {
        v.as_ref()
            .map(|s| s.get_ref().clone())
            .filter(|s| !s.is_empty())
    };
    match kind {
        "anonymous" => Ok(Auth::Anonymous),
        "basic" => {
            let username = text(&a.username).ok_or_else(|| required("username"))?;
            Ok(Auth::Basic {
                username,
                password: secret(&a.password_file, &a.password_env, "password")?,
            })
        }
        "bearer" => Ok(Auth::Bearer {
            token: secret(&a.token_file, &a.token_env, "token")?,
        }),
        _ => {
            let authority_host = match &a.authority_host {
                None => None,
                Some(h) => Some(
                    Url::parse(h.get_ref())
                        .ok()
                        .filter(|u| u.scheme() == "https")
                        .ok_or_else(|| {
                            src.error(
                                Some(h.span()),
                                format!(
                                    "{}: `{}` is not an https:// URL",
                                    here("authority_host"),
                                    h.get_ref()
                                ),
                            )
                        })?,
                ),
            };
            let chosen: Vec<&str> = [
                (
                    "client_secret_file",
                    a.client_secret_file.is_some() || a.client_secret_env.is_some(),
                ),
                ("certificate_file", a.certificate_file.is_some()),
                (
                    "workload_identity",
                    a.workload_identity.as_ref().is_some_and(|w| *w.get_ref()),
                ),
                (
                    "managed_identity",
                    matches!(
                        a.managed_identity.as_ref().map(|m| m.get_ref()),
                        Some(
                            RawManagedIdentity::Enabled(true)
                                | RawManagedIdentity::UserAssigned { .. }
                        )
                    ),
                ),
            ]
            .into_iter()
            .filter_map(|(k, on)| on.then_some(k))
            .collect();
            if chosen.len() != 1 {
                return Err(src.error(Some(span.clone()), format!(
                    "upstream `{upstream}`: kind = \"entra\" needs exactly one of client_secret_file (or _env), certificate_file, workload_identity = true, managed_identity (found {})",
                    if chosen.is_empty() { "none".to_string() } else { chosen.join(", ") }
                )));
            }
            let credential = match chosen[0] {
                "client_secret_file" => EntraCredential::ClientSecret(secret(
                    &a.client_secret_file,
                    &a.client_secret_env,
                    "client_secret",
                )?),
                "certificate_file" => {
                    let f = a.certificate_file.as_ref().expect("chosen");
                    let pem = std::fs::read_to_string(f.get_ref()).map_err(|e| {
                        src.error(
                            Some(f.span()),
                            format!(
                                "{}: cannot read `{}`: {e}",
                                here("certificate_file"),
                                f.get_ref()
                            ),
                        )
                    })?;
                    if !pem.contains("-----BEGIN CERTIFICATE-----")
                        || !pem.contains("PRIVATE KEY-----")
                    {
                        return Err(src.error(
                            Some(f.span()),
                            format!(
                                "{}: `{}` must hold the certificate and its private key (PEM)",
                                here("certificate_file"),
                                f.get_ref()
                            ),
                        ));
                    }
                    EntraCredential::Certificate(PathBuf::from(f.get_ref()))
                }
                "workload_identity" => EntraCredential::WorkloadIdentity {
                    token_file: text(&a.token_file).map(PathBuf::from),
                },
                _ => EntraCredential::ManagedIdentity {
                    client_id: match a.managed_identity.map(|m| m.into_inner()) {
                        Some(RawManagedIdentity::UserAssigned { client_id }) => Some(client_id),
                        _ => None,
                    },
                },
            };
            let needs_ids = matches!(
                credential,
                EntraCredential::ClientSecret(_) | EntraCredential::Certificate(_)
            );
            let tenant_id = text(&a.tenant_id);
            let client_id = text(&a.client_id);
            if needs_ids {
                tenant_id.as_ref().ok_or_else(|| required("tenant_id"))?;
                client_id.as_ref().ok_or_else(|| required("client_id"))?;
            }
            Ok(Auth::Entra(Entra {
                authority_host,
                tenant_id,
                client_id,
                credential,
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream for tests about other settings: a config needs one.
    const ONE_UPSTREAM: &str = "\n[[upstream]]\nname = \"t\"\nurl = \"http://127.0.0.1:9\"\n";

    /// Parses `text`, with [`ONE_UPSTREAM`] after it when it names none (appended:
    /// the line numbers of `text` stay as written).
    fn parse(text: &str) -> Result<Config, ConfigError> {
        parse_with(text, &[])
    }

    fn parse_with(text: &str, env: &[(String, String)]) -> Result<Config, ConfigError> {
        let text = if text.contains("[[upstream]]") {
            text.to_string()
        } else {
            format!("{text}{ONE_UPSTREAM}")
        };
        Config::parse("test.toml", &text, env)
    }

    #[test]
    fn a_config_without_upstreams_is_refused() {
        for text in ["", "[server]\nlisten = \"127.0.0.1:5000\"\n"] {
            let e = Config::parse("test.toml", text, &[])
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("test.toml") && e.contains("no [[upstream]]"),
                "{e}"
            );
        }
    }

    #[test]
    fn builtin_default_is_valid() {
        let c = Config::load(None, &[]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:5000");
        assert_eq!(c.storage_root, PathBuf::from("./ferry-data"));
        let regs: Vec<_> = c.upstreams.iter().map(|u| u.registry.as_str()).collect();
        assert_eq!(
            regs,
            [
                "docker.io",
                "mcr.microsoft.com",
                "ghcr.io",
                "quay.io",
                "registry.k8s.io"
            ]
        );
        let docker = &c.upstreams[0];
        assert!(docker.default && docker.implicit_library());
        assert_eq!(docker.url.as_str(), "https://registry-1.docker.io/");
        assert_eq!(docker.realm_hosts, ["auth.docker.io"]);
    }

    #[test]
    fn errors_name_key_and_line() {
        let e = parse("[server]\nlisten = \"127.0.0.1:5000\"\nbogus = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("test.toml:3") && e.contains("bogus"), "{e}");
        let e = parse("[[upstream]]\nname = \"a\"\nurl = \"not a url\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("test.toml:3:7") && e.contains("url"), "{e}");
        let e = parse("[[upstream]]\nname = \"a\"\nurl = \"http://x\"\n[[upstream]]\nname = \"b\"\nurl = \"http://y\"\nregistry = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("test.toml:7") && e.contains("already served"),
            "{e}"
        );
        let e = parse("[[upstream]]\nname = \"a\"\nurl = \"http://x\"\nauth = { kind = \"basic\", username = \"u\", password_file = \"/nonexistent/p\" }\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("test.toml:4")
                && e.contains("password_file")
                && e.contains("/nonexistent/p"),
            "{e}"
        );
    }

    #[test]
    fn shutdown_timeout() {
        assert_eq!(parse("").unwrap().shutdown_timeout, Duration::from_secs(30));
        let c = parse("[server]\nshutdown_timeout = \"5s\"\n").unwrap();
        assert_eq!(c.shutdown_timeout, Duration::from_secs(5));
        let e = parse("[server]\nshutdown_timeout = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("test.toml:2") && e.contains("server.shutdown_timeout"),
            "{e}"
        );
        let env = vec![(
            "FERRY_SERVER_SHUTDOWN_TIMEOUT".to_string(),
            "1m".to_string(),
        )];
        let c = parse_with("", &env).unwrap();
        assert_eq!(c.shutdown_timeout, Duration::from_secs(60));
    }

    #[test]
    fn connection_limits() {
        let c = parse("").unwrap().connections;
        assert_eq!(c.header_read_timeout, Duration::from_secs(30));
        assert_eq!(c.idle_timeout, Duration::from_secs(90));
        assert_eq!(c.max_connections, None);
        let c = parse("[server]\nheader_read_timeout = \"2s\"\nidle_timeout = \"1m\"\nmax_connections = 500\n")
            .unwrap();
        assert_eq!(c.connections.header_read_timeout, Duration::from_secs(2));
        assert_eq!(c.connections.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.connections.max_connections, Some(500));
        assert!(
            c.describe().contains("max_connections 500"),
            "{}",
            c.describe()
        );
        for (text, key) in [
            ("header_read_timeout = \"0s\"", "server.header_read_timeout"),
            ("idle_timeout = \"soon\"", "server.idle_timeout"),
            ("max_connections = 0", "server.max_connections"),
        ] {
            let e = parse(&format!("[server]\n{text}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("test.toml:2") && e.contains(key), "{e}");
        }
        let env = vec![
            ("FERRY_SERVER_IDLE_TIMEOUT".to_string(), "5s".to_string()),
            ("FERRY_SERVER_MAX_CONNECTIONS".to_string(), "7".to_string()),
        ];
        let c = parse_with("", &env).unwrap().connections;
        assert_eq!(c.idle_timeout, Duration::from_secs(5));
        assert_eq!(c.max_connections, Some(7));
    }

    #[test]
    fn storage_limits() {
        let c = parse("[storage]\nmax_size = \"200GiB\"\nmin_free = \"5G\"\n").unwrap();
        assert_eq!(c.quota.max_size, Some(200 << 30));
        assert_eq!(c.quota.min_free, Some(5 << 30));
        assert!(
            c.describe().contains("max_size: 200 GiB"),
            "{}",
            c.describe()
        );
        assert_eq!(parse("").unwrap().quota, Quota::default());
        let e = parse("[storage]\nroot = \"/x\"\nmax_size = \"lots\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("test.toml:3") && e.contains("storage.max_size") && e.contains("lots"),
            "{e}"
        );
        let e = parse("[storage]\nmin_free = \"0\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("test.toml:2") && e.contains("min_free"), "{e}");
        assert_eq!(c.scrub_rate, DEFAULT_SCRUB_RATE);
        assert!(
            c.describe().contains("scrub_rate: 8 MiB/s"),
            "{}",
            c.describe()
        );
        let c = parse("[storage]\nscrub_rate = \"0\"\n").unwrap();
        assert_eq!(c.scrub_rate, 0);
        assert!(c.describe().contains("scrub_rate: off"));
        let e = parse("[storage]\nscrub_rate = \"fast\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("test.toml:2") && e.contains("storage.scrub_rate"),
            "{e}"
        );
        let env = vec![("FERRY_STORAGE_SCRUB_RATE".to_string(), "1MiB".to_string())];
        let up = "[[upstream]]\nname = \"t\"\nurl = \"http://127.0.0.1:9\"\n";
        assert_eq!(Config::parse("t", up, &env).unwrap().scrub_rate, 1 << 20);
        let env = vec![("FERRY_STORAGE_MAX_SIZE".to_string(), "6MiB".to_string())];
        let c = parse_with("[storage]\nmax_size = \"1G\"\n", &env).unwrap();
        assert_eq!(c.quota.max_size, Some(6 << 20));
        let bad = vec![("FERRY_STORAGE_MIN_FREE".to_string(), "x".to_string())];
        let e = parse_with("", &bad).unwrap_err().to_string();
        assert!(e.contains("storage.min_free"), "{e}");
    }

    #[test]
    fn env_overrides_win() {
        let env = vec![
            (
                "FERRY_SERVER_LISTEN".to_string(),
                "127.0.0.1:6000".to_string(),
            ),
            (
                "FERRY_UPSTREAM_MY_REG_URL".to_string(),
                "http://127.0.0.1:9".to_string(),
            ),
            (
                "FERRY_UPSTREAM_MY_REG_TAG_TTL".to_string(),
                "5m".to_string(),
            ),
        ];
        let c = Config::parse(
            "t",
            "[[upstream]]\nname = \"my-reg\"\nurl = \"http://x\"\n",
            &env,
        )
        .unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:6000");
        assert_eq!(c.upstreams[0].url.as_str(), "http://127.0.0.1:9/");
        assert_eq!(c.upstreams[0].tag_ttl, Duration::from_secs(300));
        let bad = vec![(
            "FERRY_UPSTREAM_NOPE_URL".to_string(),
            "http://x".to_string(),
        )];
        let e = parse_with("", &bad).unwrap_err().to_string();
        assert!(e.contains("FERRY_UPSTREAM_NOPE_URL"), "{e}");
    }

    #[test]
    fn entra_auth() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sp");
        std::fs::write(&p, "s3cret\n").unwrap();
        let up = |auth: &str| {
            format!(
                "[[upstream]]\nname = \"acr\"\nurl = \"https://contoso.azurecr.io\"\nauth = {{ {auth} }}\n"
            )
        };
        let ok = up(&format!(
            "kind = \"entra\", tenant_id = \"t\", client_id = \"c\", client_secret_file = \"{}\", authority_host = \"https://login.example\"",
            p.display()
        ));
        let c = parse(&ok).unwrap();
        assert!(matches!(
            &c.upstreams[0].auth,
            Auth::Entra(Entra {
                credential: EntraCredential::ClientSecret(_),
                ..
            })
        ));
        assert!(!c.describe().contains("s3cret"));
        let c = parse(&up(
            "kind = \"entra\", managed_identity = { client_id = \"mi\" }",
        ))
        .unwrap();
        assert!(matches!(
            &c.upstreams[0].auth,
            Auth::Entra(Entra {
                credential: EntraCredential::ManagedIdentity { client_id: Some(_) },
                ..
            })
        ));
        parse(&up("kind = \"entra\", workload_identity = true")).unwrap();
        let e = parse(&up(&format!(
            "kind = \"entra\", client_id = \"c\", client_secret_file = \"{}\"",
            p.display()
        )))
        .unwrap_err()
        .to_string();
        assert!(e.contains("tenant_id"), "{e}");
        // SAFETY: a variable only this test reads; no test here enumerates the environment.
        unsafe { std::env::set_var("FERRY_TEST_ENTRA_SECRET", "from-env") };
        let c = parse(&up(
            "kind = \"entra\", tenant_id = \"t\", client_id = \"c\", client_secret_env = \"FERRY_TEST_ENTRA_SECRET\"",
        ))
        .unwrap();
        match &c.upstreams[0].auth {
            Auth::Entra(Entra {
                credential: EntraCredential::ClientSecret(s),
                ..
            }) => {
                assert_eq!(s.current().expose(), "from-env")
            }
            other => panic!("{other:?}"),
        }
        let e = parse(&up(
            "kind = \"entra\", workload_identity = true, managed_identity = true",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("exactly one") && e.contains("workload_identity, managed_identity"),
            "{e}"
        );
        let e = parse(&up("kind = \"basic\", username = \"u\", tenant_id = \"t\""))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("tenant_id") && e.contains("does not apply"),
            "{e}"
        );
        let e = parse(&up(
            "kind = \"entra\", workload_identity = true, authority_host = \"http://x\"",
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("authority_host"), "{e}");
    }

    #[test]
    fn rules_are_validated() {
        let base = "[[upstream]]\nname = \"acr\"\nurl = \"https://contoso.azurecr.io\"\n";
        let ok = format!(
            "{base}[[rule]]\nname = \"aks-managed-mcr\"\nsource = \"mcr.microsoft.com/*\"\ntarget = \"aks-managed-repository/*\"\nupstream = \"acr\"\n"
        );
        let c = parse(&ok).unwrap();
        assert_eq!(c.rules.len(), 1);
        assert!(c.describe().contains("aks-managed-mcr"));
        let e = parse(&ok.replace("upstream = \"acr\"\n", "upstream = \"nope\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("test.toml:8") && e.contains("nope"), "{e}");
        let twice = format!(
            "{ok}[[rule]]\nname = \"other\"\nsource = \"ghcr.io/*\"\ntarget = \"aks-managed-repository/x/*\"\nupstream = \"acr\"\n"
        );
        let e = parse(&twice).unwrap_err().to_string();
        assert!(
            e.contains("aks-managed-mcr") && e.contains("other") && e.contains("overlap"),
            "{e}"
        );
        assert!(e.contains("test.toml:10:"), "at the later rule: {e}");
    }

    #[test]
    fn access_and_tls() {
        let dir = tempfile::tempdir().unwrap();
        let h = dir.path().join("htpasswd");
        std::fs::write(&h, format!("ci:{}\n", bcrypt::hash("pw", 4).unwrap())).unwrap();
        let base = "[[upstream]]\nname = \"a\"\nurl = \"http://x\"\nallow = [\"team/**\"]\n";
        let ok = format!(
            "{base}[access]\nhtpasswd = \"{}\"\n[[access.user]]\nname = \"ci\"\nallow = [\"x/**\"]\n",
            h.display()
        );
        let c = parse(&ok).unwrap();
        assert_eq!(c.access.users.len(), 1);
        assert!(c.describe().contains("ci: allow x/**"), "{}", c.describe());
        assert!(!format!("{c:?}").contains("$2"), "hashes never print");
        let e = parse(&ok.replace("\"ci\"", "\"nobody\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("test.toml:8") && e.contains("nobody"), "{e}");
        let e = parse(&format!("{base}[[access.user]]\nname = \"ci\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("htpasswd"), "{e}");
        let e = parse(&base.replace("team/**", "team/["))
            .unwrap_err()
            .to_string();
        assert!(e.contains("test.toml:4") && e.contains("allow"), "{e}");
        std::fs::write(&h, "ci:$apr1$x$y\n").unwrap();
        let e = parse(&ok).unwrap_err().to_string();
        assert!(
            e.contains(&format!("{}:1", h.display())) && e.contains("bcrypt"),
            "{e}"
        );
        let e = parse("[tls]\nlisten = \"0.0.0.0:5443\"\ncert_file = \"/nonexistent/c\"\nkey_file = \"/nonexistent/k\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("test.toml:3") && e.contains("cert_file"), "{e}");
        let e = parse("[tls]\nlisten = \"nope\"\n").unwrap_err().to_string();
        assert!(e.contains("tls.listen"), "{e}");
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\n").unwrap();
        std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\n").unwrap();
        let env: Vec<(String, String)> = [
            ("FERRY_TLS_LISTEN", "127.0.0.1:5443".to_string()),
            ("FERRY_TLS_CERT_FILE", cert.display().to_string()),
            ("FERRY_TLS_KEY_FILE", key.display().to_string()),
            ("FERRY_ACCESS_HTPASSWD", h.display().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        std::fs::write(&h, format!("ci:{}\n", bcrypt::hash("pw", 4).unwrap())).unwrap();
        let c = parse_with("", &env).unwrap();
        assert_eq!(c.tls.unwrap().listen.to_string(), "127.0.0.1:5443");
        assert_eq!(c.access.htpasswd.unwrap().users(), ["ci"]);
    }

    #[test]
    fn secrets_do_not_print() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p");
        std::fs::write(&p, "hunter2\n").unwrap();
        let text = format!(
            "[[upstream]]\nname = \"a\"\nurl = \"http://x\"\nauth = {{ kind = \"basic\", username = \"u\", password_file = \"{}\" }}\n",
            p.display()
        );
        let c = parse(&text).unwrap();
        match &c.upstreams[0].auth {
            Auth::Basic { password, .. } => assert_eq!(password.current().expose(), "hunter2"),
            other => panic!("{other:?}"),
        }
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!c.describe().contains("hunter2"));
    }

    #[test]
    fn realm_hosts() {
        let text = "[[upstream]]\nname = \"a\"\nurl = \"https://r.example\"\nrealm_hosts = [\"Auth.Example\", \"10.0.0.1\"]\n";
        let c = parse(text).unwrap();
        assert_eq!(c.upstreams[0].realm_hosts, ["auth.example", "10.0.0.1"]);
        assert!(
            c.describe()
                .contains("token realms also on auth.example, 10.0.0.1"),
            "{}",
            c.describe()
        );
        for bad in [
            "https://auth.example",
            "auth.example:443",
            "auth.example/token",
            "",
        ] {
            let text = format!(
                "[[upstream]]\nname = \"a\"\nurl = \"https://r.example\"\nrealm_hosts = [\"{bad}\"]\n"
            );
            let e = parse(&text).unwrap_err().to_string();
            assert!(
                e.contains("test.toml:4") && e.contains("realm_hosts"),
                "{bad}: {e}"
            );
        }
        let env = vec![(
            "FERRY_UPSTREAM_A_REALM_HOSTS".to_string(),
            "x.example, y.example".to_string(),
        )];
        let c = Config::parse("t", text, &env).unwrap();
        assert_eq!(c.upstreams[0].realm_hosts, ["x.example", "y.example"]);
    }
}
