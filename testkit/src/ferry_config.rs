//! Ferry's TOML config, written in one place: `[server]`, `[storage]`, `[[upstream]]`
//! (with every kind of `auth`) and `[[rule]]`. The tests' `FerryBuilder`, the ACR
//! emulator and the benchmark all write their configs through [`FerryConfig`]; only
//! tests that mean to write a bad or odd file write one by hand.
//!
//! Secrets never stand in the file: they are written to files beside it and named by
//! `password_file`, `token_file`, `client_secret_file`, as an operator would.
//!
//! A config listens on `127.0.0.1:0` unless told otherwise; [`listening_addr`] reads
//! the port Ferry got from its `listening on` line.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The short name of the usual test upstream (a path prefix: `/v2/local/<repo>/…`).
pub const LOCAL: &str = "local";
/// The registry host clients name for the usual test upstream. `.invalid` never
/// resolves, so only Ferry can serve it.
pub const LOCAL_REGISTRY: &str = "registry.ferry-test.invalid";

/// A TOML basic string: `s` quoted, with `"`, `\` and control characters escaped.
pub fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out += "\\\"",
            '\\' => out += "\\\\",
            '\n' => out += "\\n",
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A path as a TOML string.
fn toml_path(path: &Path) -> String {
    toml_str(&path.display().to_string())
}

/// How Ferry authenticates to an upstream. Secrets are written to files when the
/// config is written.
#[derive(Clone, Debug)]
pub enum UpstreamAuth {
    Anonymous,
    Basic {
        username: String,
        password: String,
    },
    Bearer {
        token: String,
    },
    /// `kind = "entra"` (Azure Container Registry).
    Entra(Entra),
    /// An `auth` inline table written verbatim (e.g. `password_env`, or a secret file
    /// the test rotates itself).
    Inline(String),
}

/// `kind = "entra"`: one way to get an Entra ID token, and the authority to get it from.
#[derive(Clone, Debug)]
pub struct Entra {
    pub credential: EntraCredential,
    /// `authority_host` (None: Ferry's default).
    pub authority_host: Option<String>,
}

/// The credential of an `entra` upstream. Files are the caller's (a test may rotate
/// them).
#[derive(Clone, Debug)]
pub enum EntraCredential {
    /// A service principal with its secret in a file (`client_secret_file`).
    ClientSecretFile {
        tenant_id: String,
        client_id: String,
        path: PathBuf,
    },
    /// A service principal with its certificate (PEM key and certificate) in a file.
    CertificateFile {
        tenant_id: String,
        client_id: String,
        path: PathBuf,
    },
    /// Workload identity (`AZURE_FEDERATED_TOKEN_FILE`, … in Ferry's environment).
    WorkloadIdentity,
    /// A managed identity: system-assigned, or user-assigned with this client id.
    ManagedIdentity { client_id: Option<String> },
}

impl UpstreamAuth {
    /// The inline table; secrets go to files named after `index` in `secrets_dir`.
    fn to_toml(&self, secrets_dir: &Path, index: usize) -> String {
        match self {
            UpstreamAuth::Anonymous => "{ kind = \"anonymous\" }".to_owned(),
            UpstreamAuth::Basic { username, password } => {
                let path = secrets_dir.join(format!("upstream-{index}.password"));
                std::fs::write(&path, password).expect("write password file");
                format!(
                    "{{ kind = \"basic\", username = {}, password_file = {} }}",
                    toml_str(username),
                    toml_path(&path)
                )
            }
            UpstreamAuth::Bearer { token } => {
                let path = secrets_dir.join(format!("upstream-{index}.token"));
                std::fs::write(&path, token).expect("write token file");
                format!("{{ kind = \"bearer\", token_file = {} }}", toml_path(&path))
            }
            UpstreamAuth::Entra(entra) => {
                let mut keys = String::from("kind = \"entra\"");
                match &entra.credential {
                    EntraCredential::ClientSecretFile {
                        tenant_id,
                        client_id,
                        path,
                    } => {
                        let _ = write!(
                            keys,
                            ", tenant_id = {}, client_id = {}, client_secret_file = {}",
                            toml_str(tenant_id),
                            toml_str(client_id),
                            toml_path(path)
                        );
                    }
                    EntraCredential::CertificateFile {
                        tenant_id,
                        client_id,
                        path,
                    } => {
                        let _ = write!(
                            keys,
                            ", tenant_id = {}, client_id = {}, certificate_file = {}",
                            toml_str(tenant_id),
                            toml_str(client_id),
                            toml_path(path)
                        );
                    }
                    EntraCredential::WorkloadIdentity => keys += ", workload_identity = true",
                    EntraCredential::ManagedIdentity { client_id: None } => {
                        keys += ", managed_identity = true"
                    }
                    EntraCredential::ManagedIdentity {
                        client_id: Some(id),
                    } => {
                        let _ = write!(
                            keys,
                            ", managed_identity = {{ client_id = {} }}",
                            toml_str(id)
                        );
                    }
                }
                if let Some(host) = &entra.authority_host {
                    let _ = write!(keys, ", authority_host = {}", toml_str(host));
                }
                format!("{{ {keys} }}")
            }
            UpstreamAuth::Inline(table) => table.clone(),
        }
    }
}

/// One `[[upstream]]` table.
#[derive(Clone, Debug)]
pub struct Upstream {
    pub name: String,
    pub registry: String,
    pub url: String,
    pub default: Option<bool>,
    pub tag_ttl: Option<String>,
    /// `resolve = { host = ip, … }`: host names this upstream's connections resolve
    /// to fixed addresses.
    pub resolve: Vec<(String, String)>,
    /// `ca_file`: the CA that signs the upstream's certificate.
    pub ca_file: Option<PathBuf>,
    pub auth: UpstreamAuth,
    /// Extra `key = value` lines appended to this table verbatim.
    pub extra: Vec<String>,
}

impl Upstream {
    /// An anonymous upstream named `name`, known to clients as `registry`, fetched
    /// from `url`.
    pub fn new(name: &str, registry: &str, url: &str) -> Upstream {
        Upstream {
            name: name.to_owned(),
            registry: registry.to_owned(),
            url: url.to_owned(),
            default: None,
            tag_ttl: None,
            resolve: Vec::new(),
            ca_file: None,
            auth: UpstreamAuth::Anonymous,
            extra: Vec::new(),
        }
    }

    /// The usual test upstream: `local` / `registry.ferry-test.invalid` → `url`.
    pub fn local(url: &str) -> Upstream {
        Upstream::new(LOCAL, LOCAL_REGISTRY, url)
    }

    pub fn default_upstream(mut self, default: bool) -> Upstream {
        self.default = Some(default);
        self
    }

    /// e.g. `"1s"`, `"60s"`.
    pub fn tag_ttl(mut self, ttl: &str) -> Upstream {
        self.tag_ttl = Some(ttl.to_owned());
        self
    }

    pub fn basic_auth(mut self, username: &str, password: &str) -> Upstream {
        self.auth = UpstreamAuth::Basic {
            username: username.to_owned(),
            password: password.to_owned(),
        };
        self
    }

    pub fn bearer_auth(mut self, token: &str) -> Upstream {
        self.auth = UpstreamAuth::Bearer {
            token: token.to_owned(),
        };
        self
    }

    pub fn auth(mut self, auth: UpstreamAuth) -> Upstream {
        self.auth = auth;
        self
    }

    /// `auth = <table>` verbatim, e.g.
    /// `{ kind = "basic", username = "u", password_env = "VAR" }`.
    pub fn auth_inline(mut self, table: &str) -> Upstream {
        self.auth = UpstreamAuth::Inline(table.to_owned());
        self
    }

    /// Connections to `host` go to `ip` (`resolve`).
    pub fn resolve(mut self, host: &str, ip: &str) -> Upstream {
        self.resolve.push((host.to_owned(), ip.to_owned()));
        self
    }

    /// Trusts the CA in `path` for this upstream (`ca_file`).
    pub fn ca_file(mut self, path: &Path) -> Upstream {
        self.ca_file = Some(path.to_owned());
        self
    }

    /// Appends a raw `key = value` line to this `[[upstream]]` table.
    pub fn raw(mut self, line: &str) -> Upstream {
        self.extra.push(line.to_owned());
        self
    }

    fn to_toml(&self, secrets_dir: &Path, index: usize) -> String {
        let mut s = String::from("[[upstream]]\n");
        let _ = writeln!(s, "name = {}", toml_str(&self.name));
        let _ = writeln!(s, "registry = {}", toml_str(&self.registry));
        let _ = writeln!(s, "url = {}", toml_str(&self.url));
        if let Some(d) = self.default {
            let _ = writeln!(s, "default = {d}");
        }
        if let Some(ttl) = &self.tag_ttl {
            let _ = writeln!(s, "tag_ttl = {}", toml_str(ttl));
        }
        if !self.resolve.is_empty() {
            let pairs: Vec<String> = self
                .resolve
                .iter()
                .map(|(host, ip)| format!("{} = {}", toml_str(host), toml_str(ip)))
                .collect();
            let _ = writeln!(s, "resolve = {{ {} }}", pairs.join(", "));
        }
        if let Some(ca) = &self.ca_file {
            let _ = writeln!(s, "ca_file = {}", toml_path(ca));
        }
        let _ = writeln!(s, "auth = {}", self.auth.to_toml(secrets_dir, index));
        for line in &self.extra {
            s += line;
            s += "\n";
        }
        s
    }
}

/// One `[[rule]]` table: repositories matching `source` are fetched as `target` from
/// `upstream` (`*` carries the rest of the name).
#[derive(Clone, Debug)]
pub struct Rule {
    pub name: String,
    pub source: String,
    pub target: String,
    pub upstream: String,
}

impl Rule {
    fn to_toml(&self) -> String {
        format!(
            "[[rule]]\nname = {}\nsource = {}\ntarget = {}\nupstream = {}\n",
            toml_str(&self.name),
            toml_str(&self.source),
            toml_str(&self.target),
            toml_str(&self.upstream)
        )
    }
}

/// A whole Ferry config file.
#[derive(Clone, Debug, Default)]
pub struct FerryConfig {
    /// `[server] listen` (None: `127.0.0.1:0`, the port printed in the
    /// `listening on http://` line).
    pub listen: Option<String>,
    /// Extra `key = value` lines of the `[server]` table, verbatim.
    pub server_extra: Vec<String>,
    /// `[storage] root` (None: `store/` beside the config file).
    pub storage_root: Option<PathBuf>,
    pub upstreams: Vec<Upstream>,
    pub rules: Vec<Rule>,
    /// Whole tables appended at the end, verbatim.
    pub extra_toml: String,
}

impl FerryConfig {
    pub fn new() -> FerryConfig {
        FerryConfig::default()
    }

    pub fn listen(mut self, addr: &str) -> FerryConfig {
        self.listen = Some(addr.to_owned());
        self
    }

    /// Appends a raw `key = value` line to the `[server]` table.
    pub fn server_raw(mut self, line: &str) -> FerryConfig {
        self.server_extra.push(line.to_owned());
        self
    }

    pub fn storage_root(mut self, path: &Path) -> FerryConfig {
        self.storage_root = Some(path.to_owned());
        self
    }

    pub fn upstream(mut self, upstream: Upstream) -> FerryConfig {
        self.upstreams.push(upstream);
        self
    }

    pub fn rule(mut self, name: &str, source: &str, target: &str, upstream: &str) -> FerryConfig {
        self.rules.push(Rule {
            name: name.to_owned(),
            source: source.to_owned(),
            target: target.to_owned(),
            upstream: upstream.to_owned(),
        });
        self
    }

    /// Appends raw TOML (whole tables) at the end of the config.
    pub fn extra_toml(mut self, toml: &str) -> FerryConfig {
        self.extra_toml.push_str(toml);
        self.extra_toml.push('\n');
        self
    }

    /// `[storage] root` of a config file written in `dir`.
    pub fn store_in(&self, dir: &Path) -> PathBuf {
        self.storage_root
            .clone()
            .unwrap_or_else(|| dir.join("store"))
    }

    /// The config text for a file in `dir`; the upstreams' secrets are written to
    /// files there.
    pub fn to_toml(&self, dir: &Path) -> String {
        let listen = self.listen.as_deref().unwrap_or("127.0.0.1:0");
        let mut config = format!("[server]\nlisten = {}\n", toml_str(listen));
        for line in &self.server_extra {
            config += line;
            config += "\n";
        }
        let _ = write!(
            config,
            "\n[storage]\nroot = {}\n",
            toml_path(&self.store_in(dir))
        );
        config += &self.tables_toml(dir);
        config
    }

    /// The tables after `[storage]`: the upstreams, the rules and the extra TOML, for a
    /// file in `dir` (the upstreams' secrets are written to files there).
    pub fn tables_toml(&self, dir: &Path) -> String {
        let mut tables = String::new();
        for (i, u) in self.upstreams.iter().enumerate() {
            tables += "\n";
            tables += &u.to_toml(dir, i);
        }
        for rule in &self.rules {
            tables += "\n";
            tables += &rule.to_toml();
        }
        if !self.extra_toml.is_empty() {
            tables += "\n";
            tables += &self.extra_toml;
        }
        tables
    }

    /// Writes the config (and the upstreams' secret files) to `dir/ferry.toml`;
    /// returns its path and text.
    pub fn write(&self, dir: &Path) -> (PathBuf, String) {
        let path = dir.join("ferry.toml");
        let text = self.to_toml(dir);
        std::fs::write(&path, &text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        (path, text)
    }
}

/// The address of the first complete `listening on <scheme>://ADDR` line in `log`
/// (`scheme` is `http` or `https`): what `listen = "127.0.0.1:0"` became. Complete
/// means something follows the address, so a line still being written is not read
/// as a shorter port.
pub fn listening_addr(log: &str, scheme: &str) -> Option<String> {
    let (_, after) = log.split_once(&format!("listening on {scheme}://"))?;
    address_at(after)
}

/// Like [`listening_addr`], but the last such line (the current listener after
/// restarts).
pub fn last_listening_addr(log: &str, scheme: &str) -> Option<String> {
    let (_, after) = log.rsplit_once(&format!("listening on {scheme}://"))?;
    address_at(after)
}

/// The `host:port` (IPv6 in brackets) at the start of `text`, if something follows it.
fn address_at(text: &str) -> Option<String> {
    let addr: String = text
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '[' | ']'))
        .collect();
    (!addr.is_empty() && text.len() > addr.len()).then_some(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_addr_reads_complete_lines_only() {
        let log = "INFO ferry: listening on https://127.0.0.1:4431\n\
                   INFO ferry: listening on http://127.0.0.1:5001 (2 upstreams)\n\
                   INFO ferry: listening on https://[::1]:4432\n";
        assert_eq!(
            listening_addr(log, "http").as_deref(),
            Some("127.0.0.1:5001")
        );
        assert_eq!(
            listening_addr(log, "https").as_deref(),
            Some("127.0.0.1:4431")
        );
        assert_eq!(
            last_listening_addr(log, "https").as_deref(),
            Some("[::1]:4432")
        );
        assert_eq!(
            listening_addr("listening on http://127.0.0.1:50", "http"),
            None
        );
    }

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(toml_str("a\"b\\c\nd\u{1}"), "\"a\\\"b\\\\c\\nd\\u0001\"");
    }

    #[test]
    fn a_config_names_every_table_once() {
        let dir = tempfile::tempdir().unwrap();
        let text = FerryConfig::new()
            .upstream(Upstream::local("http://127.0.0.1:9").basic_auth("u", "secret"))
            .rule("r", "a/*", "b/*", LOCAL)
            .to_toml(dir.path());
        assert!(
            text.starts_with("[server]\nlisten = \"127.0.0.1:0\"\n"),
            "{text}"
        );
        assert_eq!(text.matches("[storage]").count(), 1, "{text}");
        assert_eq!(text.matches("[[upstream]]").count(), 1, "{text}");
        assert_eq!(text.matches("[[rule]]").count(), 1, "{text}");
        assert!(
            !text.contains("secret"),
            "the password stays in its file: {text}"
        );
        let file = dir.path().join("upstream-0.password");
        assert_eq!(std::fs::read_to_string(file).unwrap(), "secret");
    }
}
