use std::path::Path;

use ferry_oci::Digest;

/// Why an export, import or key operation failed. Every variant names what the
/// operator has to look at: a file, an image, a digest. Causes are part of the
/// message, not a `source` chain, so `{:#}` does not print them twice.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "the store at {path} is in use by another process: stop `ferry serve` on it first \
         (export and import open the store directly)"
    )]
    StoreLocked { path: String },
    #[error("there is no store at {path} (check [storage] root in the config)")]
    NoStore { path: String },
    #[error("cannot open the store at {path}: {error}")]
    StoreOpen {
        path: String,
        error: ferry_storage::Error,
    },
    #[error(transparent)]
    Storage(#[from] ferry_storage::Error),
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("invalid image name `{name}`: {reason}")]
    ImageName { name: String, reason: String },
    #[error(transparent)]
    Name(#[from] crate::oci::ImageNameError),
    #[error("cannot route {name}: {error}")]
    Route {
        name: String,
        error: crate::proxy::Error,
    },
    #[error("{image} is not cached in this store (pull it through Ferry first)")]
    NotCached { image: String },
    #[error("{image}: blob {digest} is not in the store")]
    MissingBlob { image: String, digest: Digest },
    #[error(
        "{image}: no platform of index {digest} is complete in the store; incomplete: {missing}"
    )]
    NoCompletePlatform {
        image: String,
        digest: Digest,
        missing: String,
    },
    #[error("manifest {digest} is not usable: {reason}")]
    BadManifest { digest: Digest, reason: String },
    #[error("{path} is not an OCI image layout: {reason}")]
    NotALayout { path: String, reason: String },
    #[error(
        "the bundle's copy of {digest} is corrupt: {reason}; nothing from this bundle was tagged"
    )]
    Corrupt { digest: Digest, reason: String },
    #[error(
        "{image}: {digest} is neither in the bundle nor in the store; if the bundle was made \
         with `ferry export --since`, import the bundle it was made against first"
    )]
    Incomplete { image: String, digest: Digest },
    #[error(
        "the bundle names `{ref_name}`, which says no registry: pass --name <registry>/<repository>"
    )]
    NeedsName { ref_name: String },
    #[error("--since {value}: {reason}")]
    Since { value: String, reason: String },
    #[error("bundle {path} is not signed (no {file}), and --trust requires a signature")]
    Unsigned { path: String, file: &'static str },
    #[error(
        "bundle {path} is not signed by the trusted key {fingerprint}: its signature does not \
         verify (signed by another key, or index.json was altered)"
    )]
    BadSignature { path: String, fingerprint: String },
    #[error("key file {path}: {reason}")]
    Key { path: String, reason: String },
}

impl Error {
    pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |error| Error::Io {
            path: path.display().to_string(),
            error,
        }
    }
}
