//! A containerd 1.6 daemon owned by the test, and `ctr` to pull through it.
//!
//! Config (version 2) that works in this sandbox: the CRI plugin and the aufs, btrfs,
//! zfs and devmapper snapshotters disabled (they cannot load here and only add noise);
//! `opt` pointed into the temp dir (it would create /opt/containerd); root, state and
//! sockets in a short temp dir under /tmp (unix socket paths must stay < 108 bytes).
//! Pulls use `--snapshotter native` (plain copies, no overlay mounts) so unpacking
//! works without overlayfs; `ctr` gets `--plain-http` and `--hosts-dir`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use super::process::{ChildGuard, require_binary, run_with_timeout};

/// The containerd namespace the tests use.
pub const NAMESPACE: &str = "ferrytest";

/// A running containerd; killed when dropped.
pub struct Containerd {
    child: ChildGuard,
    socket: PathBuf,
    dir: tempfile::TempDir,
}

impl Containerd {
    pub fn start() -> Containerd {
        let binary = require_binary("containerd", "containerd");
        require_binary("ctr", "containerd");
        let dir = super::temp_dir("ctd");
        let d = dir.path();
        let socket = d.join("c.sock");
        assert!(
            socket.as_os_str().len() < 100,
            "socket path too long: {}",
            socket.display()
        );
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = "{grpc}"

[ttrpc]
  address = "{ttrpc}"

[debug]
  address = ""
  level = "info"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"#,
            root = d.join("root").display(),
            state = d.join("state").display(),
            grpc = socket.display(),
            ttrpc = d.join("t.sock").display(),
            opt = d.join("opt").display(),
        );
        let config_path = d.join("config.toml");
        std::fs::write(&config_path, config).expect("write containerd config");
        let mut cmd = Command::new(binary);
        cmd.arg("--config").arg(&config_path);
        let child = ChildGuard::spawn("containerd", cmd, d);

        let mut ctd = Containerd { child, socket, dir };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = ctd.child.try_exit_status() {
                panic!(
                    "containerd exited ({status}) at start\n{}",
                    ctd.child.log_tails(40)
                );
            }
            if ctd.socket.exists() {
                let out = run_with_timeout(ctd.ctr(&["version"]), Duration::from_secs(5));
                if out.status.success() {
                    break;
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "containerd not ready within 15s\n{}",
                    ctd.child.log_tails(40)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        ctd
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The root directory (content store under `io.containerd.content.v1.content`).
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// A fresh `hosts.toml` directory root in this containerd's temp dir.
    pub fn hosts_dir(&self) -> PathBuf {
        let p = self.dir.path().join("hosts");
        std::fs::create_dir_all(&p).expect("create hosts dir");
        p
    }

    /// Writes `<hosts_dir>/<host>/hosts.toml`.
    pub fn write_hosts_toml(&self, hosts_dir: &Path, host: &str, content: &str) {
        let d = hosts_dir.join(host);
        std::fs::create_dir_all(&d).expect("create hosts.toml dir");
        std::fs::write(d.join("hosts.toml"), content).expect("write hosts.toml");
    }

    /// `ctr --address <sock> -n ferrytest <args>`.
    pub fn ctr(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(&self.socket)
            .arg("-n")
            .arg(NAMESPACE)
            .args(args);
        cmd
    }

    /// `ctr images pull --plain-http --hosts-dir <dir> --snapshotter native <ref>`
    /// (plus `extra`, e.g. `--all-platforms`), bounded to 120 s.
    pub fn pull(&self, hosts_dir: &Path, reference: &str, extra: &[&str]) -> Output {
        let hosts = hosts_dir.display().to_string();
        let mut args = vec![
            "images",
            "pull",
            "--plain-http",
            "--hosts-dir",
            &hosts,
            "--snapshotter",
            "native",
        ];
        args.extend_from_slice(extra);
        args.push(reference);
        run_with_timeout(self.ctr(&args), Duration::from_secs(120))
    }

    /// `ctr content fetch --plain-http --hosts-dir <dir> <ref>` (no unpacking).
    pub fn fetch(&self, hosts_dir: &Path, reference: &str, extra: &[&str]) -> Output {
        let hosts = hosts_dir.display().to_string();
        let mut args = vec!["content", "fetch", "--plain-http", "--hosts-dir", &hosts];
        args.extend_from_slice(extra);
        args.push(reference);
        run_with_timeout(self.ctr(&args), Duration::from_secs(120))
    }

    /// Whether the content store holds `digest`.
    pub fn has_content(&self, digest: &str) -> bool {
        self.root()
            .join("io.containerd.content.v1.content/blobs/sha256")
            .join(super::digest_hex(digest))
            .is_file()
    }

    /// The bytes of `digest` in the content store.
    pub fn content(&self, digest: &str) -> Vec<u8> {
        let path = self
            .root()
            .join("io.containerd.content.v1.content/blobs/sha256")
            .join(super::digest_hex(digest));
        std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    }

    /// `ctr images ls -q`.
    pub fn image_names(&self) -> Vec<String> {
        let out = run_with_timeout(self.ctr(&["images", "ls", "-q"]), Duration::from_secs(30));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    pub fn log_tails(&self, lines: usize) -> String {
        self.child.log_tails(lines)
    }
}

/// A `hosts.toml` that makes `mirror` (e.g. `http://127.0.0.1:PORT`) the pull/resolve
/// mirror of `server` (e.g. `http://registry.ferry-test.invalid`).
pub fn mirror_hosts_toml(server: &str, mirror: &str) -> String {
    format!(
        "server = \"{server}\"\n\n[host.\"{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
    )
}
