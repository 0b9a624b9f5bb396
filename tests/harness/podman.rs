//! Debian's podman as a real client: as root, without network namespaces, cgroups,
//! journald or the host's storage; every path it writes is in its own temp dir.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use super::ferry::Ferry;
use super::process::{require_binary, run_with_timeout, tail_str, without_proxy_env};
use super::temp_dir;

/// A podman whose storage, runtime dir, `containers.conf` and default auth file (no
/// credentials) live in a temp dir removed on `Drop`.
pub struct Podman {
    dir: tempfile::TempDir,
    registries_conf: PathBuf,
}

impl Podman {
    /// podman reading `registries_conf` (e.g. one `ferry node-config` wrote), or, with
    /// `None`, an empty one of its own: references then name their registry and
    /// nothing of the host's configuration applies.
    ///
    /// A missing podman is a failure naming the Debian package, as for every other
    /// binary the tests start: the suite never skips.
    pub fn new(registries_conf: Option<&Path>) -> Podman {
        require_binary("podman", "podman");
        let dir = temp_dir("podman");
        let d = dir.path();
        std::fs::write(
            d.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                d.join("root").display(),
                d.join("runroot").display()
            ),
        )
        .unwrap();
        // No journald, no systemd cgroups: a pull needs neither.
        std::fs::write(
            d.join("containers.conf"),
            format!(
                "[engine]\nevents_logger = \"none\"\ncgroup_manager = \"cgroupfs\"\n\
                 [network]\nnetwork_config_dir = \"{}\"\n",
                d.join("networks").display()
            ),
        )
        .unwrap();
        std::fs::create_dir_all(d.join("xdg")).unwrap();
        // No credentials: podman refuses an auth file it is pointed at that is missing.
        std::fs::write(d.join("auth.json"), "{}").unwrap();
        let registries_conf = match registries_conf {
            Some(path) => path.to_path_buf(),
            None => {
                let path = d.join("registries.conf");
                std::fs::write(&path, "unqualified-search-registries = []\n").unwrap();
                path
            }
        };
        Podman {
            dir,
            registries_conf,
        }
    }

    /// `podman <args>` with this podman's configuration and storage.
    pub fn command(&self, args: &[&str]) -> Command {
        let d = self.dir.path();
        let mut cmd = Command::new("podman");
        cmd.env("CONTAINERS_REGISTRIES_CONF", &self.registries_conf)
            .env("CONTAINERS_CONF", d.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", d.join("storage.conf"))
            .env("XDG_RUNTIME_DIR", d.join("xdg"))
            .env("REGISTRY_AUTH_FILE", d.join("auth.json"))
            .env("HOME", d)
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("runroot"))
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .args(["--storage-driver", "vfs", "--cgroup-manager", "cgroupfs"])
            .args(["--events-backend", "none"])
            .args(args);
        without_proxy_env(&mut cmd);
        cmd
    }

    /// `podman pull --quiet <flags> <reference>`, bounded to 120 s.
    pub fn pull(&self, flags: &[&str], reference: &str) -> Output {
        let mut args = vec!["pull", "--quiet"];
        args.extend_from_slice(flags);
        args.push(reference);
        run_with_timeout(self.command(&args), Duration::from_secs(120))
    }

    /// [`Podman::pull`]; panics unless it succeeds, with podman's stderr, the
    /// registries config and Ferry's log tail.
    pub fn pull_ok(&self, flags: &[&str], reference: &str, ferry: &Ferry) {
        let out = self.pull(flags, reference);
        assert!(
            out.status.success(),
            "podman pull {reference} failed ({})\nstderr:\n{}\nregistries.conf:\n{}\n--- ferry log (tail) ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&self.registries_conf).unwrap_or_default(),
            tail_str(&ferry.log(), 40),
        );
    }

    /// The manifest digest podman recorded for `reference`.
    pub fn digest(&self, reference: &str) -> String {
        let out = run_with_timeout(
            self.command(&["image", "inspect", "--format", "{{.Digest}}", reference]),
            Duration::from_secs(30),
        );
        assert!(
            out.status.success(),
            "podman image inspect {reference}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}
