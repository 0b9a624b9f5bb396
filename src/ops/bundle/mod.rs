//! OCI bundles: cached images carried to sites that cannot reach the upstreams
//! (edge sites, air gaps).
//!
//! A bundle is a standard OCI image layout in a tar: `oci-layout`, `index.json` and
//! `blobs/<alg>/<hex>`. `index.json` lists each image's top manifest (exact bytes,
//! digest and media type, as the upstream served it) with the annotation
//! `org.opencontainers.image.ref.name` = `<registry>/<repository>:<tag>`, the
//! upstream's registry host and the repository there; skopeo reads it as
//! `oci-archive:FILE:<that name>`. A signed bundle also holds `index.json.sig`
//! ([`signing`]).
//!
//! - [`export`]: images from the store into a bundle; `--since` leaves out configs
//!   and layers an earlier bundle carried or stored before a time.
//! - [`import`]: a bundle (Ferry's, or skopeo's `oci-archive:`) into the store,
//!   every digest verified, tags written only once all content is in.
//!
//! Both open the store directly, so they run while no `ferry serve` uses it.

mod error;
mod export;
mod import;
mod layout;
mod manifest;
mod name;
mod signing;

pub use error::Error;
pub use export::{ExportOptions, ExportReport, Since, export};
pub use import::{ImportOptions, ImportReport, import};
pub use signing::{SIGNATURE_FILE, keygen};

use crate::config::Config;

/// How deep indexes may nest inside indexes before a bundle is refused.
const MAX_DEPTH: usize = 4;

/// Opens the store under `config` (no server runs). `create`: an import may start a
/// new store; an export needs an existing one.
fn open_store(config: &Config, create: bool) -> Result<ferry_storage::Store, Error> {
    let root = &config.storage_root;
    let path = root.display().to_string();
    if !create && !ferry_storage::Layout::new(root).index_dir().exists() {
        return Err(Error::NoStore { path });
    }
    ferry_storage::Store::open(root).map_err(|error| {
        if is_locked(&error) {
            Error::StoreLocked { path: path.clone() }
        } else {
            Error::StoreOpen {
                path: path.clone(),
                error,
            }
        }
    })
}

/// Whether the store is open in another process: its lock file is held or, failing
/// that, sled's own lock (which sled reports only in its message).
pub(crate) fn is_locked(e: &ferry_storage::Error) -> bool {
    match e {
        ferry_storage::Error::Locked { .. } => true,
        ferry_storage::Error::Index(inner) => inner.to_string().contains("could not acquire lock"),
        _ => false,
    }
}
