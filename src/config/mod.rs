//! Configuration: read once (TOML file or the built-in default, then `FERRY_*`
//! environment overrides), validated once into an immutable [`Config`].
//!
//! Every error names the key and, when it came from a file, the line, so that an
//! operator can fix it without reading Ferry's source.
//!
//! One file per step: `raw.rs` is the TOML schema as serde types, `env.rs` lays the
//! `FERRY_*` variables over the document, `validate.rs` (with `upstream.rs` for each
//! `[[upstream]]` and `auth.rs` for its `auth` table, `shared.rs` for `[storage.shared]` and `[cluster]`) turns it into the types below,
//! `files.rs` then reads the files it names, and `describe.rs` is what `ferry config
//! check` prints. [`pattern`] and [`htpasswd`] are the types `[access]` is made of.

mod auth;
mod describe;
mod env;
mod files;
pub mod htpasswd;
pub mod pattern;
mod raw;
mod shared;
mod upstream;
mod validate;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use env::Overlay;

use crate::cache_rules::CacheRule;
use crate::image::{ImageName, Platform};
pub use crate::secret::{Secret, SecretSource};
use htpasswd::Htpasswd;
use pattern::Permissions;

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
    /// `[storage.shared]`: the object store every replica reads and writes; `None`:
    /// the store under `storage_root` is the only one.
    pub shared: Option<SharedStore>,
    /// `[storage] local_max_size` (only with a shared store): the most bytes this
    /// replica's local tier under `storage_root` keeps.
    pub local_max_size: Option<u64>,
    /// `[cluster]` (only with a shared store): the replicas that share it.
    pub cluster: Option<Cluster>,
}

impl Config {
    /// The quota of the store under `storage_root`: `[storage] max_size` and
    /// `min_free`, except that with a shared store `local_max_size` bounds this
    /// replica's local tier (`max_size` is then the shared store's).
    pub fn local_quota(&self) -> Quota {
        match self.shared {
            Some(_) => Quota {
                max_size: self.local_max_size,
                ..self.quota
            },
            None => self.quota,
        }
    }
}

/// `[storage.shared]`: an Azure Blob Storage container or an S3 bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedStore {
    pub location: StoreLocation,
    /// Everything Ferry writes goes under this prefix ("" or "prod/"), so that several
    /// deployments can share a container.
    pub prefix: String,
    /// `None`: the service's public endpoint for the account (or region).
    pub endpoint: Option<Url>,
    /// As for an upstream: address pins (a private endpoint without private DNS), extra
    /// trusted CAs, an explicit proxy.
    pub resolve: Vec<(String, IpAddr)>,
    pub ca_pem: Option<Vec<u8>>,
    pub proxy: Option<Url>,
    /// `eviction_grace`: content used (or written) this recently is never evicted from
    /// the shared store (`ferry_storage::backend::EVICTION_GRACE` by default).
    pub eviction_grace: std::time::Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StoreLocation {
    Azure {
        account: String,
        container: String,
        credential: AzureCredential,
    },
    S3 {
        bucket: String,
        region: String,
        credential: S3Credential,
    },
}

/// How Ferry signs in to Azure Blob Storage.
#[derive(Debug, Clone, PartialEq)]
pub enum AzureCredential {
    /// The storage account's Shared Key (base64), as Azurite uses.
    AccountKey(SecretSource),
    /// A SAS token (its query string).
    Sas(SecretSource),
    /// The same identity kinds as an ACR upstream, asking for the storage scope.
    Entra(Entra),
}

/// How Ferry signs in to S3.
#[derive(Debug, Clone, PartialEq)]
pub enum S3Credential {
    AccessKey {
        id: String,
        secret: SecretSource,
    },
    /// The standard AWS chain: `AWS_*` variables, web identity, instance metadata.
    Environment,
}

/// `[cluster]`: how replicas find and trust each other.
#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    /// `host:port` of each replica's peer listener, or one name giving all of them (a
    /// headless Service); names are resolved again as pods come and go.
    pub peers: Vec<String>,
    /// Where this replica listens for its peers (not for clients).
    pub listen: SocketAddr,
    /// What replicas prove themselves to each other with.
    pub secret: SecretSource,
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

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
#[error("{origin}{location}: {message}")]
pub struct ConfigError {
    origin: String,
    location: String,
    message: String,
}

/// Where the text being validated came from, to turn byte spans into `file:line:col`
/// (or, for a value from the environment, the variable's name).
struct Source<'a> {
    origin: String,
    text: &'a str,
    env: Overlay,
}

impl Source<'_> {
    fn error(
        &self,
        span: Option<std::ops::Range<usize>>,
        message: impl Into<String>,
    ) -> ConfigError {
        let (origin, location) = match span {
            Some(r) if self.env.variable(&r).is_some() => (
                format!(
                    "environment variable {}",
                    self.env.variable(&r).unwrap_or_default()
                ),
                String::new(),
            ),
            Some(r) => {
                let before = &self.text[..r.start.min(self.text.len())];
                let line = before.matches('\n').count() + 1;
                let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                (self.origin.clone(), format!(":{line}:{col}"))
            }
            None => (self.origin.clone(), String::new()),
        };
        ConfigError {
            origin,
            location,
            message: message.into(),
        }
    }
}

/// Whether loading reads the files the configuration names (see [`files`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Files {
    Read,
    Unread,
}

impl Config {
    /// Loads `path` (or the built-in default), applies `FERRY_*` overrides from `env`,
    /// validates the result and reads the files it names.
    pub fn load(path: Option<&Path>, env: &[(String, String)]) -> Result<Config, ConfigError> {
        Self::load_from(path, env, Files::Read)
    }

    /// [`Config::load`] without reading the files the configuration names, for a
    /// command that needs only the listener, the upstreams and the rules (`ferry
    /// node-config`, run on nodes that have none of Ferry's secrets): each CA bundle
    /// (`ca_pem`) and `access.htpasswd` is `None`, each secret empty, and TLS and
    /// certificate files are not looked at. Everything else is validated as by `load`.
    pub fn load_without_files(
        path: Option<&Path>,
        env: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        Self::load_from(path, env, Files::Unread)
    }

    fn load_from(
        path: Option<&Path>,
        env: &[(String, String)],
        files: Files,
    ) -> Result<Config, ConfigError> {
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
        Self::parse_from(&origin, &text, env, files)
    }

    /// Parses and validates TOML text, and reads the files it names; `origin` names
    /// the text in errors.
    pub fn parse(
        origin: &str,
        text: &str,
        env: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        Self::parse_from(origin, text, env, Files::Read)
    }

    fn parse_from(
        origin: &str,
        text: &str,
        env: &[(String, String)],
        files: Files,
    ) -> Result<Config, ConfigError> {
        let mut src = Source {
            origin: origin.to_string(),
            text,
            env: env::Overlay::none(),
        };
        let raw_error =
            |src: &Source, e: toml::de::Error| src.error(e.span(), e.message().trim().to_string());
        let mut doc = toml::de::DeTable::parse(text).map_err(|e| raw_error(&src, e))?;
        src.env = env::apply_env(doc.get_mut(), text.len(), env)?;
        let raw = raw::RawConfig::deserialize(toml::de::Deserializer::from(doc))
            .map_err(|e| raw_error(&src, e))?;
        let (mut config, named) = validate::validate(raw, &src)?;
        if files == Files::Read {
            files::read(&mut config, named, &src)?;
        }
        Ok(config)
    }
}

/// Test helpers shared by the tests of each step.
#[cfg(test)]
pub(crate) mod testing {
    use super::{Config, ConfigError};

    /// An upstream for tests about other settings: a config needs one.
    const ONE_UPSTREAM: &str = "\n[[upstream]]\nname = \"t\"\nurl = \"http://127.0.0.1:9\"\n";

    /// Parses `text`, with [`ONE_UPSTREAM`] after it when it names none (appended:
    /// the line numbers of `text` stay as written).
    pub(crate) fn parse(text: &str) -> Result<Config, ConfigError> {
        parse_with(text, &[])
    }

    pub(crate) fn parse_with(text: &str, env: &[(String, String)]) -> Result<Config, ConfigError> {
        let text = if text.contains("[[upstream]]") {
            text.to_string()
        } else {
            format!("{text}{ONE_UPSTREAM}")
        };
        Config::parse("test.toml", &text, env)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::parse;
    use super::*;

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
}
