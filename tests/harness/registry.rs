//! The upstream: Debian's CNCF Distribution 2.8.2 (`docker-registry serve <config.yml>`)
//! on 127.0.0.1 with filesystem storage in a temp dir.
//!
//! Distribution 2.8.2 writes its access log to **stdout** in Apache combined format,
//! one line per request after the response is written:
//! `127.0.0.1 - - [30/Nov/2026:03:27:35 +0000] "GET /v2/foo/blobs/sha256:… HTTP/1.1" 404 157 "" "curl/7.88.1"`
//! (the path includes the query string, e.g. `?ns=…`). Its own logs go to stderr.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::process::{ChildGuard, free_port, require_binary, tail_file};
use super::token_server::TokenServer;

const BINARY: &str = "/usr/bin/docker-registry";

/// How Distribution authenticates clients.
#[derive(Clone, Debug)]
pub enum RegistryAuth {
    /// Anyone may push and pull.
    None,
    /// htpasswd (bcrypt) basic auth with one account.
    Basic { username: String, password: String },
    /// Docker token auth against a [`TokenServer`].
    Token(TokenAuth),
}

/// What Distribution's `auth.token` section needs, plus credentials for seeding.
#[derive(Clone, Debug)]
pub struct TokenAuth {
    pub realm: String,
    pub service: String,
    pub issuer: String,
    pub rootcertbundle: PathBuf,
    pub push_creds: (String, String),
}

impl RegistryAuth {
    /// Basic auth with the given account.
    pub fn basic(username: &str, password: &str) -> RegistryAuth {
        RegistryAuth::Basic {
            username: username.to_owned(),
            password: password.to_owned(),
        }
    }

    /// Token auth trusting `server`; its first user pushes seed content.
    pub fn token(server: &TokenServer) -> RegistryAuth {
        RegistryAuth::Token(TokenAuth {
            realm: server.realm().to_owned(),
            service: server.service().to_owned(),
            issuer: server.issuer().to_owned(),
            rootcertbundle: server.cert_path().to_owned(),
            push_creds: server.user(),
        })
    }
}

/// Everything [`Registry::start_with`] can vary.
#[derive(Clone, Debug)]
pub struct RegistryOptions {
    pub auth: RegistryAuth,
    /// Enables Distribution's `redirect` storage middleware with this `baseurl`
    /// (`http://127.0.0.2:PORT`): blob GETs and HEADs then answer 307 with
    /// `Location: <baseurl>/docker/registry/v2/blobs/sha256/<2 hex>/<64 hex>/data`, the
    /// blob's path under [`Registry::storage_root`] (manifests are never redirected).
    /// [`super::data_endpoint::DataEndpoint`] serves those URLs.
    pub redirect_baseurl: Option<String>,
}

impl RegistryOptions {
    pub fn new(auth: RegistryAuth) -> RegistryOptions {
        RegistryOptions {
            auth,
            redirect_baseurl: None,
        }
    }

    /// Redirects blob reads to `baseurl` (see [`RegistryOptions::redirect_baseurl`]).
    pub fn redirect_to(mut self, baseurl: &str) -> RegistryOptions {
        self.redirect_baseurl = Some(baseurl.to_owned());
        self
    }
}

/// One access-log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessLogEntry {
    pub method: String,
    /// Path including any query string.
    pub path: String,
    pub status: u16,
    pub bytes: u64,
    pub user_agent: String,
}

/// A running Distribution; killed when dropped.
pub struct Registry {
    child: ChildGuard,
    addr: String,
    auth: RegistryAuth,
    dir: tempfile::TempDir,
}

impl Registry {
    pub fn start(auth: RegistryAuth) -> Registry {
        Registry::start_with(RegistryOptions::new(auth))
    }

    pub fn start_with(options: RegistryOptions) -> Registry {
        let RegistryOptions {
            auth,
            redirect_baseurl,
        } = options;
        require_binary(BINARY, "docker-registry");
        let dir = super::temp_dir("registry");
        let root = dir.path().join("storage");
        std::fs::create_dir_all(&root).expect("create storage root");

        let auth_yaml = match &auth {
            RegistryAuth::None => String::new(),
            RegistryAuth::Basic { username, password } => {
                let hash = bcrypt::hash(password, 4).expect("bcrypt");
                let htpasswd = dir.path().join("htpasswd");
                std::fs::write(&htpasswd, format!("{username}:{hash}\n")).expect("write htpasswd");
                format!(
                    "auth:\n  htpasswd:\n    realm: ferry-test-basic\n    path: {}\n",
                    htpasswd.display()
                )
            }
            RegistryAuth::Token(t) => format!(
                "auth:\n  token:\n    realm: \"{}\"\n    service: \"{}\"\n    issuer: \"{}\"\n    rootcertbundle: \"{}\"\n",
                t.realm,
                t.service,
                t.issuer,
                t.rootcertbundle.display()
            ),
        };

        let middleware_yaml = match &redirect_baseurl {
            None => String::new(),
            Some(baseurl) => format!(
                "middleware:\n  storage:\n    - name: redirect\n      options:\n        baseurl: \"{baseurl}\"\n"
            ),
        };

        // Distribution cannot bind port 0 and report it, so pick a free port and retry
        // if another process grabbed it in between.
        for attempt in 1..=5 {
            let port = free_port();
            let addr = format!("127.0.0.1:{port}");
            let config = format!(
                "version: 0.1\n\
                 log:\n  level: info\n  accesslog:\n    disabled: false\n\
                 storage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\n\
                 http:\n  addr: {addr}\n  secret: ferry-test-secret\n\
                 {auth_yaml}{middleware_yaml}",
                root = root.display(),
            );
            let config_path = dir.path().join("config.yml");
            std::fs::write(&config_path, &config).expect("write registry config");
            let mut cmd = Command::new(BINARY);
            cmd.arg("serve").arg(&config_path);
            let mut child = ChildGuard::spawn("docker-registry", cmd, dir.path());
            let url = format!("http://{addr}/v2/");
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                if let Some(status) = child.try_exit_status() {
                    let stderr = tail_file(child.stderr_path(), 20);
                    if stderr.contains("address already in use") && attempt < 5 {
                        break;
                    }
                    panic!(
                        "docker-registry exited ({status}) at start\n{}",
                        child.log_tails(40)
                    );
                }
                if super::process::http_status(&url, Duration::from_millis(500)).is_ok() {
                    return Registry {
                        child,
                        addr,
                        auth,
                        dir,
                    };
                }
                if Instant::now() >= deadline {
                    panic!(
                        "docker-registry did not answer {url} within 15s\n{}",
                        child.log_tails(40)
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        unreachable!("docker-registry failed to find a free port")
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn auth(&self) -> &RegistryAuth {
        &self.auth
    }

    /// Credentials that may push (None for an open registry).
    pub fn push_creds(&self) -> Option<(String, String)> {
        match &self.auth {
            RegistryAuth::None => None,
            RegistryAuth::Basic { username, password } => {
                Some((username.clone(), password.clone()))
            }
            RegistryAuth::Token(t) => Some(t.push_creds.clone()),
        }
    }

    /// A client for talking to this registry directly, with push credentials.
    pub fn client(&self) -> super::http::RegistryClient {
        super::http::RegistryClient::new(&self.url(), self.push_creds())
    }

    /// `rootdirectory` of the filesystem driver.
    pub fn storage_root(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Where Distribution keeps the bytes of `digest`.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = super::digest_hex(digest);
        self.storage_root()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Flips bytes of the stored blob in place (same size), so Distribution serves
    /// bytes that do not match `digest` (it does not re-verify on read).
    pub fn corrupt_blob(&self, digest: &str) {
        let path = self.blob_path(digest);
        let mut bytes =
            std::fs::read(&path).unwrap_or_else(|e| panic!("read blob {}: {e}", path.display()));
        assert!(!bytes.is_empty(), "cannot corrupt an empty blob");
        let len = bytes.len();
        for i in [0, len / 2, len - 1] {
            bytes[i] ^= 0xff;
        }
        std::fs::write(&path, &bytes).expect("write corrupted blob");
    }

    /// Writes `bytes` back as the stored blob `digest` (undoes [`Registry::corrupt_blob`]).
    pub fn restore_blob(&self, digest: &str, bytes: &[u8]) {
        std::fs::write(self.blob_path(digest), bytes).expect("restore blob");
    }

    /// Every access-log line so far.
    pub fn access_log(&self) -> Vec<AccessLogEntry> {
        let text = std::fs::read_to_string(self.child.stdout_path()).unwrap_or_default();
        text.lines().filter_map(parse_access_line).collect()
    }

    /// The access log once it has stopped growing for 100 ms (at most 2 s of waiting),
    /// because Distribution logs a request only after writing its response.
    pub fn settled_access_log(&self) -> Vec<AccessLogEntry> {
        let len = || {
            std::fs::metadata(self.child.stdout_path())
                .map(|m| m.len())
                .unwrap_or(0)
        };
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut last = len();
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let now = len();
            if now == last || Instant::now() >= deadline {
                return self.access_log();
            }
            last = now;
        }
    }

    /// How many requests with `method` whose path contains `path_substring` were
    /// logged (from [`Registry::settled_access_log`]).
    pub fn count_requests(&self, method: &str, path_substring: &str) -> usize {
        self.settled_access_log()
            .iter()
            .filter(|e| e.method == method && e.path.contains(path_substring))
            .count()
    }

    /// GETs of the blob `digest` in any repository.
    pub fn blob_gets(&self, digest: &str) -> usize {
        self.count_requests("GET", &format!("/blobs/{digest}"))
    }

    /// The tail of Distribution's own log (stderr).
    pub fn stderr_tail(&self, lines: usize) -> String {
        tail_file(self.child.stderr_path(), lines)
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.yml")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Parses `… "METHOD PATH HTTP/x" STATUS BYTES "referer" "user-agent"`.
pub fn parse_access_line(line: &str) -> Option<AccessLogEntry> {
    let start = line.find("] \"")? + 3;
    let rest = &line[start..];
    let end = rest.find('"')?;
    let mut request = rest[..end].split(' ');
    let method = request.next()?.to_owned();
    let path = request.next()?.to_owned();
    let mut after = rest[end + 1..].split_whitespace();
    let status = after.next()?.parse().ok()?;
    let bytes = after.next()?.parse().unwrap_or(0);
    let user_agent = rest[end + 1..].rsplit('"').nth(1).unwrap_or("").to_owned();
    Some(AccessLogEntry {
        method,
        path,
        status,
        bytes,
        user_agent,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_combined_log_line() {
        let e = super::parse_access_line(
            r#"127.0.0.1 - - [30/Nov/2026:03:27:49 +0000] "GET /v2/test/img/blobs/sha256:45c2?ns=registry.ferry-test.invalid HTTP/1.1" 200 100236 "" "containerd/1.6.20~ds1""#,
        )
        .unwrap();
        assert_eq!(e.method, "GET");
        assert_eq!(
            e.path,
            "/v2/test/img/blobs/sha256:45c2?ns=registry.ferry-test.invalid"
        );
        assert_eq!(e.status, 200);
        assert_eq!(e.bytes, 100236);
        assert_eq!(e.user_agent, "containerd/1.6.20~ds1");
    }
}
