//! The benchmark's own servers: nginx serving the upstream's blob files with sendfile,
//! and Ferry as the benchmark runs it (its default log level, output to files). Each
//! owns a temp dir (config, store, logs) and its process, and goes away when dropped.
//! Distribution, the upstream and the proxy peer, is the test kit's
//! [`ferry_testkit::registry::Registry`].

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ferry_testkit::ferry_config::{FerryConfig, Upstream, listening_addr};
use ferry_testkit::process::{ChildGuard, find_binary, free_port, http_status, tail_file};
use ferry_testkit::registry::{Registry, RegistryAuth, RegistryOptions};
use ferry_testkit::temp_dir;

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

impl RunDirs {
    /// Makes every temp dir of the test kit (servers' configs, stores and logs) go in
    /// this run's dir under `/tmp`, removed when the guard drops.
    pub fn create() -> RunDirs {
        ferry_testkit::set_temp_root(&run_dir("/tmp"));
        RunDirs
    }
}

impl Drop for RunDirs {
    fn drop(&mut self) {
        for base in ["/tmp", "/dev/shm"] {
            let _ = std::fs::remove_dir_all(
                Path::new(base).join(format!("ferry-bench-{}", std::process::id())),
            );
        }
    }
}

/// Distribution 2.8.2 as the upstream: a plain registry with the in-memory blob
/// descriptor cache of its stock config. Its access log counts what reached it.
pub fn start_upstream() -> Registry {
    Registry::start_with(RegistryOptions::new(RegistryAuth::None).blob_descriptor_cache())
}

/// Distribution 2.8.2 as the proxy peer: a pull-through cache of `remote_url`
/// (`proxy.remoteurl`) on a fresh store, as deployed.
pub fn start_proxy(remote_url: &str) -> Registry {
    Registry::start_with(
        RegistryOptions::new(RegistryAuth::None)
            .blob_descriptor_cache()
            .proxy_of(remote_url),
    )
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
    child: ChildGuard,
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
            let mut child = ChildGuard::spawn("nginx", cmd, d);
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Some(status) = child.try_exit_status() {
                    let err = tail_file(&d.join("error.log"), 20) + &child.log_tails(20);
                    if err.contains("Address already in use") && attempt < 5 {
                        break;
                    }
                    panic!("nginx exited ({status}) at start\n{err}");
                }
                if http_status(&format!("http://{addr}/v2/"), Duration::from_millis(300)).is_ok() {
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
        self.child.id()
    }
}

/// Ferry (`ferry serve --config`), on a fresh store, caching one upstream that is the
/// default (so every peer gets the same paths). Its log level is its default.
pub struct Ferry {
    child: ChildGuard,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Ferry {
    pub fn start(binary: &Path, upstream_url: &str) -> Ferry {
        let dir = temp_dir("ferry");
        let d = dir.path();
        let (config_path, _) = FerryConfig::new()
            .upstream(
                Upstream::new("up", "upstream.bench.invalid", upstream_url).default_upstream(true),
            )
            .write(d);
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
        let mut child = ChildGuard::spawn("ferry", cmd, d);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let log = std::fs::read_to_string(child.stderr_path()).unwrap_or_default()
                + &std::fs::read_to_string(child.stdout_path()).unwrap_or_default();
            if let Some(addr) = listening_addr(&log, "http") {
                return Ferry {
                    child,
                    addr,
                    _dir: dir,
                };
            }
            if let Some(status) = child.try_exit_status() {
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
        self.child.id()
    }

    pub fn log_tails(&self, lines: usize) -> String {
        self.child.log_tails(lines)
    }
}
