//! Ferry's test kit: what the integration tests (`tests/harness/`) and the benchmark
//! (`benches/support/`) both need, written once. Real processes on 127.0.0.1, no mocks.
//!
//! - [`process`]: child processes that are killed and reaped with their guard, free
//!   ports, readiness polling, commands run with a time limit, log tails.
//! - [`registry`]: Debian's CNCF Distribution (`docker-registry`) as an upstream or as a
//!   pull-through proxy, and its access log.
//! - [`http`]: a small registry client (plain HTTP, Basic or Docker token auth), the
//!   media types, OCI error bodies.
//! - [`images`]: image layers (gzip'd tars of random bytes) and configs.
//! - [`skopeo`]: skopeo as a real client.
//! - [`ferry_config`]: Ferry's TOML config, written in one place.
//! - [`azurite`], [`moto`]: Azurite (Azure Blob Storage) and moto (S3) as the shared
//!   store, started by [`testserver`].
//!
//! What only the tests need (Ferry as a restartable process with its log, hostile
//! servers, containerd, podman, token servers) stays in `tests/harness/`; what only the
//! benchmark needs (its load generator, nginx, the report) in `benches/support/`.
//!
//! A missing binary panics naming its Debian package: nothing here skips.

pub mod azurite;
pub mod ferry_config;
pub mod http;
pub mod images;
pub mod moto;
pub mod process;
pub mod registry;
pub mod skopeo;
pub mod testserver;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

static TEMP_ROOT: OnceLock<PathBuf> = OnceLock::new();

/// Makes [`temp_dir`] create its dirs under `root` instead of `/tmp` (the benchmark
/// keeps everything of one run in one dir it can sweep after a crash). Call once,
/// before the first temp dir; later calls are ignored.
pub fn set_temp_root(root: &Path) {
    let _ = TEMP_ROOT.set(root.to_owned());
}

/// Builds a temp dir under `/tmp` (not `$TMPDIR`, so unix socket paths stay short), or
/// under the root given to [`set_temp_root`].
pub fn temp_dir(prefix: &str) -> tempfile::TempDir {
    let root = TEMP_ROOT.get().map_or(Path::new("/tmp"), PathBuf::as_path);
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(root)
        .unwrap_or_else(|e| panic!("create a temp dir under {}: {e}", root.display()))
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// The hex part of a `sha256:<hex>` digest.
pub fn digest_hex(digest: &str) -> &str {
    digest
        .strip_prefix("sha256:")
        .unwrap_or_else(|| panic!("not a sha256 digest: {digest}"))
}
