//! Debian's CNCF Distribution 2.8.2 (`docker-registry serve <config.yml>`) on 127.0.0.1
//! with filesystem storage in a temp dir: the tests' upstream, and both the upstream and
//! the pull-through proxy Ferry is compared with in the benchmark.
//!
//! Distribution 2.8.2 writes its access log to **stdout** in Apache combined format,
//! one line per request after the response is written:
//! `127.0.0.1 - - [30/Nov/2026:03:27:35 +0000] "GET /v2/foo/blobs/sha256:… HTTP/1.1" 404 157 "" "curl/7.88.1"`
//! (the path includes the query string, e.g. `?ns=…`). Its own logs go to stderr.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::process::{ChildGuard, free_port, require_binary, tail_file};

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

    /// Token auth trusting `server` (a token server that converts into its
    /// [`TokenAuth`]); its first user pushes seed content.
    pub fn token(server: impl Into<TokenAuth>) -> RegistryAuth {
        RegistryAuth::Token(server.into())
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
    /// The tests' `DataEndpoint` serves those URLs.
    pub redirect_baseurl: Option<String>,
    /// A pull-through cache of this registry (`proxy.remoteurl`) instead of a registry
    /// of its own.
    pub proxy_of: Option<String>,
    /// The in-memory blob descriptor cache of Distribution's stock config (the
    /// benchmark runs Distribution as deployed).
    pub blob_descriptor_cache: bool,
}

impl RegistryOptions {
    pub fn new(auth: RegistryAuth) -> RegistryOptions {
        RegistryOptions {
            auth,
            redirect_baseurl: None,
            proxy_of: None,
            blob_descriptor_cache: false,
        }
    }

    /// A pull-through cache of `remote_url` (see [`RegistryOptions::proxy_of`]).
    pub fn proxy_of(mut self, remote_url: &str) -> RegistryOptions {
        self.proxy_of = Some(remote_url.to_owned());
        self
    }

    /// With the stock in-memory blob descriptor cache.
    pub fn blob_descriptor_cache(mut self) -> RegistryOptions {
        self.blob_descriptor_cache = true;
        self
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
            proxy_of,
            blob_descriptor_cache,
        } = options;
        require_binary(BINARY, "docker-registry");
        let dir = crate::temp_dir("registry");
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
        let proxy_yaml = match &proxy_of {
            None => String::new(),
            Some(url) => format!("proxy:\n  remoteurl: {url}\n"),
        };
        let cache_yaml = if blob_descriptor_cache {
            "  cache:\n    blobdescriptor: inmemory\n"
        } else {
            ""
        };

        // Distribution cannot bind port 0 and report it, so pick a free port and retry
        // if another process grabbed it in between.
        for attempt in 1..=5 {
            let port = free_port();
            let addr = format!("127.0.0.1:{port}");
            let config = format!(
                "version: 0.1\n\
                 log:\n  level: info\n  accesslog:\n    disabled: false\n\
                 storage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\n{cache_yaml}\
                 http:\n  addr: {addr}\n  secret: ferry-test-secret\n\
                 {auth_yaml}{middleware_yaml}{proxy_yaml}",
                root = root.display(),
            );
            let config_path = dir.path().join("config.yml");
            std::fs::write(&config_path, &config).expect("write registry config");
            let mut cmd = Command::new(BINARY);
            cmd.arg("serve").arg(&config_path);
            let mut child = ChildGuard::spawn("docker-registry", cmd, dir.path());
            let url = format!("http://{addr}/v2/");
            let deadline = Instant::now() + Duration::from_secs(20);
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
                if crate::process::http_status(&url, Duration::from_millis(500)).is_ok() {
                    return Registry {
                        child,
                        addr,
                        auth,
                        dir,
                    };
                }
                if Instant::now() >= deadline {
                    panic!(
                        "docker-registry did not answer {url} within 20s\n{}",
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
    pub fn client(&self) -> crate::http::RegistryClient {
        crate::http::RegistryClient::new(&self.url(), self.push_creds())
    }

    /// The process id (for `/proc/<pid>/…`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `rootdirectory` of the filesystem driver.
    pub fn storage_root(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Where Distribution keeps the bytes of `digest`.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = crate::digest_hex(digest);
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

    /// Whether the store holds `digest` linked into `repo` (a proxy has cached it).
    pub fn has_layer(&self, repo: &str, digest: &str) -> bool {
        self.blob_path(digest).is_file()
            && self
                .storage_root()
                .join("docker/registry/v2/repositories")
                .join(repo)
                .join("_layers/sha256")
                .join(crate::digest_hex(digest))
                .join("link")
                .is_file()
    }

    /// Writes `bytes` back as the stored blob `digest` (undoes [`Registry::corrupt_blob`]).
    pub fn restore_blob(&self, digest: &str, bytes: &[u8]) {
        std::fs::write(self.blob_path(digest), bytes).expect("restore blob");
    }

    /// Every access-log line so far.
    pub fn access_log(&self) -> Vec<AccessLogEntry> {
        self.access_log_reader().read_since(0)
    }

    /// The access log once it has stopped growing for 100 ms (at most 2 s of waiting),
    /// because Distribution logs a request only after writing its response.
    pub fn settled_access_log(&self) -> Vec<AccessLogEntry> {
        let log = self.access_log_reader();
        log.settle(Duration::from_millis(100), Duration::from_secs(2));
        log.read_since(0)
    }

    /// The access log file, to read from a mark on.
    pub fn access_log_reader(&self) -> AccessLog {
        AccessLog {
            path: self.child.stdout_path().to_owned(),
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

/// Distribution's access log, read from a byte offset on.
pub struct AccessLog {
    path: PathBuf,
}

impl AccessLog {
    fn len(&self) -> u64 {
        std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
    }

    /// The current end; [`AccessLog::since`] reads what comes after it.
    pub fn mark(&self) -> u64 {
        self.len()
    }

    /// Waits until the log has not grown for `quiet`, or `limit` has passed.
    pub fn settle(&self, quiet: Duration, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut last = self.len();
        let mut still = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(25).min(quiet));
            let now = self.len();
            if now != last {
                last = now;
                still = Instant::now();
            } else if still.elapsed() >= quiet || Instant::now() >= deadline {
                return;
            }
        }
    }

    /// The lines after `mark`, once the log has not grown for `quiet` (at most 20 s of
    /// waiting: Distribution logs a request only after its response is written, and a
    /// proxy's own background fetches after they finish).
    pub fn since(&self, mark: u64, quiet: Duration) -> Vec<AccessLogEntry> {
        self.settle(quiet, Duration::from_secs(20));
        self.read_since(mark)
    }

    /// The lines after `mark`, as they are now.
    pub fn read_since(&self, mark: u64) -> Vec<AccessLogEntry> {
        let bytes = std::fs::read(&self.path).unwrap_or_default();
        let from = (mark as usize).min(bytes.len());
        String::from_utf8_lossy(&bytes[from..])
            .lines()
            .filter_map(parse_access_line)
            .collect()
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
