//! Command-line arguments.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "ferry", version, about = "A pull-through caching OCI registry")]
pub struct Args {
    /// Log format.
    #[arg(long, global = true, env = "FERRY_LOG_FORMAT", default_value = "human")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the registry cache (on the built-in config unless --config is given).
    Serve {
        /// TOML configuration file. FERRY_* environment variables override it.
        #[arg(long, env = "FERRY_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Write cached images to an OCI bundle (an OCI image layout in a tar) for a
    /// site that cannot reach the upstream. Stop `ferry serve` on the store first.
    Export {
        /// TOML configuration file (its store and upstreams). FERRY_* variables apply.
        #[arg(long, env = "FERRY_CONFIG")]
        config: Option<PathBuf>,
        /// The bundle to write.
        #[arg(long, short)]
        output: PathBuf,
        /// Leave out configs and layers stored before this RFC 3339 UTC time, or held
        /// by this earlier bundle. The importing store must already hold them.
        #[arg(long, value_name = "TIME|BUNDLE")]
        since: Option<crate::ops::bundle::Since>,
        /// Sign the bundle with this ed25519 private key (PKCS#8 PEM, `ferry keygen`).
        #[arg(long, value_name = "KEYFILE")]
        sign: Option<PathBuf>,
        /// Images as `ferry status` prints them or as clients name them:
        /// `[registry[:port]/]repository[:tag][@digest]`, the registry also written as
        /// an upstream's short name (`corp/team/app:1`); `nginx` is Docker Hub's.
        #[arg(required = true, value_name = "IMAGE")]
        images: Vec<crate::image::ImageName>,
    },
    /// Load an OCI bundle (from `ferry export` or skopeo's `oci-archive:`) into the
    /// store, verifying every digest. Stop `ferry serve` on the store first.
    Import {
        /// TOML configuration file (its store and upstreams). FERRY_* variables apply.
        #[arg(long, env = "FERRY_CONFIG")]
        config: Option<PathBuf>,
        /// The bundle (a tar archive).
        #[arg(required_unless_present = "from_dir", conflicts_with = "from_dir")]
        bundle: Option<PathBuf>,
        /// Import an unpacked OCI image layout directory instead of a tar.
        #[arg(long, value_name = "DIR")]
        from_dir: Option<PathBuf>,
        /// Refuse the bundle unless this ed25519 public key (PEM) signed it.
        #[arg(long, value_name = "PUBKEYFILE")]
        trust: Option<PathBuf>,
        /// `<registry>/<repo>` for images the bundle names by tag only.
        #[arg(long, value_name = "REGISTRY/REPO")]
        name: Option<String>,
    },
    /// Pull whole images into the cache ahead of need (every platform of an index,
    /// or --platform), with a progress bar per image on a terminal.
    Prefetch {
        /// A running Ferry to pull through, e.g. http://127.0.0.1:5000. Without it,
        /// Ferry runs in-process on --config's store (stop `ferry serve` first).
        #[arg(long, value_name = "URL", conflicts_with = "config")]
        server: Option<url::Url>,
        /// TOML configuration file (its store and upstreams). FERRY_* variables apply.
        #[arg(long, env = "FERRY_CONFIG")]
        config: Option<PathBuf>,
        /// Only this platform of an index, e.g. linux/amd64.
        #[arg(long)]
        platform: Option<crate::image::Platform>,
        /// A file with one image per line (blank lines and `#` comments skipped).
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
        /// Images as `ferry status` prints them or as clients name them:
        /// `[registry[:port]/]repository[:tag][@digest]`, the registry also written as
        /// an upstream's short name (`corp/team/app:1`); `nginx` is Docker Hub's.
        #[arg(value_name = "IMAGE")]
        images: Vec<crate::image::ImageName>,
    },
    /// Offline readiness: which cached and pinned images are complete in the store.
    Status {
        /// The running Ferry to ask (without it or --config: http://127.0.0.1:5000/).
        #[arg(long, value_name = "URL")]
        server: Option<url::Url>,
        /// This config's store: read directly, or, while `ferry serve` runs on it,
        /// asked of that Ferry at the config's `listen` address. FERRY_* variables apply.
        #[arg(long, env = "FERRY_CONFIG")]
        config: Option<PathBuf>,
        /// Print the JSON (`GET /_ferry/status`) instead of a summary.
        #[arg(long)]
        json: bool,
    },
    /// Write a new ed25519 keypair for signing bundles: PREFIX.key and PREFIX.pub (PEM).
    Keygen {
        #[arg(long, value_name = "PREFIX")]
        output: PathBuf,
    },
    /// Re-hash every blob and check the index against the files; exits non-zero when
    /// problems were found and not repaired. Stop `ferry serve` on the store first.
    Fsck {
        /// TOML configuration file (its store). FERRY_* variables apply.
        #[arg(long, env = "FERRY_CONFIG")]
        config: Option<PathBuf>,
        /// Drop what is damaged (it is fetched again on the next pull).
        #[arg(long, conflicts_with = "shared")]
        repair: bool,
        /// Check the shared store ([storage.shared]) instead: read-only, safe while
        /// replicas run.
        #[arg(long)]
        shared: bool,
        /// With --shared: compare sizes with the records only, without reading every
        /// byte.
        #[arg(long, requires = "shared")]
        sizes_only: bool,
    },
    /// Write the files that point nodes at Ferry, one entry per registry it serves
    /// (every upstream's `registry` and every cache-rule source): containerd
    /// `<DIR>/<registry>/hosts.toml`, `registries.conf` (podman, CRI-O) or k3s/RKE2
    /// `registries.yaml`. Without --write, prints them.
    NodeConfig {
        /// TOML configuration file (its upstreams and rules). FERRY_* variables apply.
        #[arg(long, env = "FERRY_CONFIG")]
        config: Option<PathBuf>,
        /// Ferry as nodes reach it, e.g. http://10.0.0.50:5000.
        #[arg(long, value_name = "URL")]
        mirror: crate::ops::nodeconfig::Mirror,
        /// Write the files under this directory (e.g. /etc/containerd/certs.d); files
        /// are replaced atomically and only when their content changed.
        #[arg(long, value_name = "DIR")]
        write: Option<PathBuf>,
        /// Let nodes go to the registry itself when Ferry cannot answer. Without it
        /// they never contact a registry directly.
        #[arg(long)]
        fallback: bool,
        #[arg(long, value_enum, default_value = "containerd")]
        format: crate::ops::nodeconfig::Format,
        /// CA file (its path on the node) that signed an https:// mirror's certificate.
        #[arg(long, value_name = "FILE")]
        ca: Option<PathBuf>,
    },
    /// Remove blobs no stored manifest references. Stop `ferry serve` on the store first.
    Gc {
        /// TOML configuration file (its store). FERRY_* variables apply.
        #[arg(long, env = "FERRY_CONFIG")]
        config: Option<PathBuf>,
        /// Keep blobs stored or used more recently than this (e.g. 1h, 30m, 0s).
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        grace: std::time::Duration,
        /// Refused, saying why: the shared store is kept by the replicas' own eviction.
        #[arg(long)]
        shared: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a configuration file and print what Ferry understood.
    Check {
        /// The file to check ("-" for the built-in default).
        file: PathBuf,
    },
}
