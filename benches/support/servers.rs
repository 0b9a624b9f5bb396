//! The servers: CNCF Distribution (the upstream, and the proxy peer), nginx serving
//! the upstream's blob files with sendfile, and Ferry. Each owns a temp dir (config,
//! store, logs) and its process, and goes away when dropped.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::proc::{Child, find_binary, free_port, tail_file};

/// `<base>/ferry-bench-<pid>`: every temp dir of this run lives in one of these (one
/// under `/tmp`, one under `/dev/shm` for pulled images), so that a run killed by a
/// signal leaves nothing a later run does not sweep (see [`sweep_stale_runs`]).
pub fn run_dir(base: &str) -> PathBuf {
    let dir = Path::new(base).join(format!("ferry-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// Removes the run dirs of benchmark processes that no longer exist.
pub fn sweep_stale_runs() {
    for base in ["/tmp", "/dev/shm"] {
        let Ok(entries) = std::fs::read_dir(base) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix("ferry-bench-")
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Removes this run's dirs (at the end, or when unwinding from a panic).
pub struct RunDirs;

impl Drop for RunDirs {
    fn drop(&mut self) {
        for base in ["/tmp", "/dev/shm"] {
            let _ = std::fs::remove_dir_all(
                Path::new(base).join(format!("ferry-bench-{}", std::process::id())),
            );
        }
    }
}

/// Builds a temp dir in this run's dir under `/tmp`.
pub fn temp_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(run_dir("/tmp"))
        .expect("create a temp dir under /tmp")
}

/// Distribution 2.8.2 (`docker-registry serve`), with filesystem storage and the
/// in-memory blob descriptor cache of its stock config. Its access log (stdout, Apache
/// combined format, one line after each response) counts what reached it.
pub struct Distribution {
    child: Child,
    addr: String,
    dir: tempfile::TempDir,
}

impl Distribution {
    /// A plain registry (the upstream).
    pub fn start_upstream() -> Distribution {
        Distribution::start("registry-upstream", "")
    }

    /// A pull-through cache of `remote_url` (`proxy.remoteurl`), on a fresh store.
    pub fn start_proxy(remote_url: &str) -> Distribution {
        Distribution::start(
            "registry-proxy",
            &format!("proxy:\n  remoteurl: {remote_url}\n"),
        )
    }

    fn start(name: &str, extra_yaml: &str) -> Distribution {
        let binary = find_binary("docker-registry")
            .expect("docker-registry not found: apt-get install docker-registry");
        let dir = temp_dir(name);
        let root = dir.path().join("storage");
        std::fs::create_dir_all(&root).expect("create storage root");
        for attempt in 1..=5 {
            let addr = format!("127.0.0.1:{}", free_port());
            let config = format!(
                "version: 0.1\n\
                 log:\n  level: info\n  accesslog:\n    disabled: false\n\
                 storage:\n  filesystem:\n    rootdirectory: {root}\n  cache:\n    blobdescriptor: inmemory\n\
                 http:\n  addr: {addr}\n  secret: ferry-bench-secret\n\
                 {extra_yaml}",
                root = root.display(),
            );
            let config_path = dir.path().join("config.yml");
            std::fs::write(&config_path, config).expect("write registry config");
            let mut cmd = Command::new(&binary);
            cmd.arg("serve").arg(&config_path);
            let mut child = Child::spawn(name, cmd, dir.path());
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Some(status) = child.exited() {
                    if tail_file(child.stderr_path(), 20).contains("address already in use")
                        && attempt < 5
                    {
                        break;
                    }
                    panic!("{name} exited ({status}) at start\n{}", child.log_tails(30));
                }
                if super::http::answers(&addr, "/v2/", Duration::from_millis(300)) {
                    return Distribution { child, addr, dir };
                }
                if Instant::now() >= deadline {
                    panic!("{name} did not answer within 20 s\n{}", child.log_tails(30));
                }
            }
        }
        unreachable!("no free port for {name}")
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// `storage.filesystem.rootdirectory`.
    pub fn storage_root(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Whether the store holds `digest` linked into `repo` (a proxy has cached it).
    pub fn has_layer(&self, repo: &str, digest: &str) -> bool {
        let hex = digest.trim_start_matches("sha256:");
        let root = self.storage_root().join("docker/registry/v2");
        root.join("blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
            .is_file()
            && root
                .join("repositories")
                .join(repo)
                .join("_layers/sha256")
                .join(hex)
                .join("link")
                .is_file()
    }

    pub fn access_log(&self) -> AccessLog {
        AccessLog {
            path: self.child.stdout_path().to_owned(),
        }
    }

    pub fn log_tails(&self, lines: usize) -> String {
        self.child.log_tails(lines)
    }
}

/// One access-log line.
#[derive(Clone, Debug)]
pub struct Access {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub bytes: u64,
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

    /// The lines after `mark`, once the log has not grown for `quiet` (at most 20 s of
    /// waiting: Distribution logs a request only after its response is written, and
    /// the proxy's own background fetches after they finish).
    pub fn since(&self, mark: u64, quiet: Duration) -> Vec<Access> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = self.len();
        let mut still = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(25));
            let now = self.len();
            if now != last {
                last = now;
                still = Instant::now();
            } else if still.elapsed() >= quiet || Instant::now() >= deadline {
                break;
            }
        }
        self.read_since(mark)
    }

    /// The lines after `mark`, as they are now.
    pub fn read_since(&self, mark: u64) -> Vec<Access> {
        let bytes = std::fs::read(&self.path).unwrap_or_default();
        let from = (mark as usize).min(bytes.len());
        String::from_utf8_lossy(&bytes[from..])
            .lines()
            .filter_map(parse_access_line)
            .collect()
    }
}

/// Parses `… "METHOD PATH HTTP/x" STATUS BYTES "referer" "user-agent"`.
fn parse_access_line(line: &str) -> Option<Access> {
    let start = line.find("] \"")? + 3;
    let rest = &line[start..];
    let end = rest.find('"')?;
    let mut request = rest[..end].split(' ');
    let method = request.next()?.to_owned();
    let path = request.next()?.to_owned();
    let mut after = rest[end + 1..].split_whitespace();
    let status = after.next()?.parse().ok()?;
    let bytes = after.next()?.parse().unwrap_or(0);
    Some(Access {
        method,
        path,
        status,
        bytes,
    })
}

/// A manifest nginx serves: by tag and by digest, with its media type and digest.
pub struct StaticManifest {
    pub repo: String,
    pub tag: String,
    pub digest: String,
    pub media_type: String,
    pub bytes: Vec<u8>,
}

/// nginx (Debian's) serving `/v2/<repo>/blobs/sha256:<hex>` straight from a
/// Distribution storage directory with `sendfile on`, and manifests from files written
/// here. As deployed: `worker_processes auto`, access log on.
pub struct Nginx {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Nginx {
    pub fn start(blob_storage_root: &Path, manifests: &[StaticManifest]) -> Nginx {
        let binary = find_binary("nginx").expect("nginx not found: apt-get install nginx");
        let dir = temp_dir("nginx");
        let d = dir.path();
        for sub in ["www", "tmp"] {
            std::fs::create_dir_all(d.join(sub)).expect("create nginx dirs");
        }
        let mut digest_map = String::new();
        for m in manifests {
            let mdir = d.join("www/v2").join(&m.repo).join("manifests");
            std::fs::create_dir_all(&mdir).expect("create manifests dir");
            std::fs::write(mdir.join(&m.tag), &m.bytes).expect("write manifest");
            std::fs::write(mdir.join(&m.digest), &m.bytes).expect("write manifest");
            for reference in [&m.tag, &m.digest] {
                let _ = writeln!(
                    digest_map,
                    "    \"/v2/{}/manifests/{reference}\" \"{}\";",
                    m.repo, m.digest
                );
            }
        }
        let media_type = manifests
            .first()
            .map(|m| m.media_type.as_str())
            .unwrap_or("application/vnd.oci.image.manifest.v1+json");
        assert!(
            manifests.iter().all(|m| m.media_type == media_type),
            "one manifest media type for nginx"
        );
        let blobs = blob_storage_root.join("docker/registry/v2/blobs/sha256");
        for attempt in 1..=5 {
            let addr = format!("127.0.0.1:{}", free_port());
            let config = format!(
                r#"user root;
worker_processes auto;
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log {d}/access.log;
  client_body_temp_path {d}/tmp/body;
  proxy_temp_path {d}/tmp/proxy;
  fastcgi_temp_path {d}/tmp/fastcgi;
  uwsgi_temp_path {d}/tmp/uwsgi;
  scgi_temp_path {d}/tmp/scgi;
  sendfile on;
  tcp_nopush on;
  keepalive_timeout 65;
  keepalive_requests 100000;
  types {{ }}
  default_type application/octet-stream;
  map_hash_bucket_size 256;
  map $uri $manifest_digest {{
    default "";
{digest_map}  }}
  server {{
    listen {addr};
    location = /v2/ {{
      default_type application/json;
      add_header Docker-Distribution-Api-Version registry/2.0 always;
      return 200 '{{}}';
    }}
    location ~ "^/v2/.+/blobs/sha256:([0-9a-f]{{2}})([0-9a-f]{{62}})$" {{
      alias {blobs}/$1/$1$2/data;
      add_header Docker-Content-Digest sha256:$1$2;
      add_header Docker-Distribution-Api-Version registry/2.0;
    }}
    location ~ ^/v2/.+/manifests/ {{
      root {d}/www;
      default_type {media_type};
      add_header Docker-Content-Digest $manifest_digest;
      add_header Docker-Distribution-Api-Version registry/2.0;
    }}
  }}
}}
"#,
                d = d.display(),
                blobs = blobs.display(),
            );
            let config_path = d.join("nginx.conf");
            std::fs::write(&config_path, config).expect("write nginx.conf");
            let mut cmd = Command::new(&binary);
            cmd.arg("-c").arg(&config_path).arg("-p").arg(d);
            let mut child = Child::spawn("nginx", cmd, d);
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Some(status) = child.exited() {
                    let err = tail_file(&d.join("error.log"), 20) + &child.log_tails(20);
                    if err.contains("Address already in use") && attempt < 5 {
                        break;
                    }
                    panic!("nginx exited ({status}) at start\n{err}");
                }
                if super::http::answers(&addr, "/v2/", Duration::from_millis(300)) {
                    return Nginx {
                        child,
                        addr,
                        _dir: dir,
                    };
                }
                if Instant::now() >= deadline {
                    panic!("nginx did not answer within 20 s\n{}", child.log_tails(30));
                }
            }
        }
        unreachable!("no free port for nginx")
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The master; its workers are its children.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }
}

/// Ferry (`ferry serve --config`), on a fresh store, caching one upstream that is the
/// default (so every peer gets the same paths). Its log level is its default.
pub struct Ferry {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Ferry {
    pub fn start(binary: &Path, upstream_url: &str) -> Ferry {
        let dir = temp_dir("ferry");
        let d = dir.path();
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[storage]\nroot = \"{store}\"\n\n\
             [[upstream]]\nname = \"up\"\nregistry = \"upstream.bench.invalid\"\nurl = \"{upstream_url}\"\n\
             default = true\nauth = {{ kind = \"anonymous\" }}\n",
            store = d.join("store").display(),
        );
        let config_path = d.join("ferry.toml");
        std::fs::write(&config_path, config).expect("write ferry.toml");
        let mut cmd = Command::new(binary);
        cmd.arg("serve").arg("--config").arg(&config_path);
        // The benchmark's own settings are not Ferry's (it refuses unknown FERRY_*), and
        // nothing may stand between Ferry and the loopback upstream.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy().into_owned();
            if k.starts_with("FERRY_") || k.to_ascii_lowercase().ends_with("_proxy") {
                cmd.env_remove(k);
            }
        }
        cmd.env("NO_COLOR", "1");
        let mut child = Child::spawn("ferry", cmd, d);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let log = std::fs::read_to_string(child.stderr_path()).unwrap_or_default()
                + &std::fs::read_to_string(child.stdout_path()).unwrap_or_default();
            if let Some(addr) = parse_listen_line(&log) {
                return Ferry {
                    child,
                    addr,
                    _dir: dir,
                };
            }
            if let Some(status) = child.exited() {
                panic!("ferry exited ({status}) at start\n{}", child.log_tails(30));
            }
            if Instant::now() >= deadline {
                panic!(
                    "ferry printed no `listening on http://` line within 20 s\n{}",
                    child.log_tails(30)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    pub fn log_tails(&self, lines: usize) -> String {
        self.child.log_tails(lines)
    }
}

/// The `listening on http://ADDR` address in `log`, if any.
fn parse_listen_line(log: &str) -> Option<String> {
    let (_, after) = log.split_once("listening on http://")?;
    let addr: String = after
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '[' | ']'))
        .collect();
    // Complete only once something follows it (the rest of the line).
    (!addr.is_empty() && after.len() > addr.len()).then_some(addr)
}
