use std::sync::Arc;

use ferry_oci::Digest;

use crate::upstream;

/// Why the proxy could not answer. Each variant says whose fault it is: the client's
/// request, the upstream, or Ferry itself ([`Error::Storage`]).
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The request named no registry Ferry serves.
    #[error("no upstream serves `{requested}`; configured registries: {}", registries.join(", "))]
    NoUpstream {
        requested: String,
        registries: Vec<String>,
    },
    #[error("repository {repo} is not known to upstream {upstream}")]
    RepoUnknown { upstream: String, repo: String },
    #[error("manifest {reference} is not known in {repo}")]
    ManifestUnknown { repo: String, reference: String },
    #[error("blob {digest} is not known in {repo}")]
    BlobUnknown { repo: String, digest: Digest },
    #[error("{0}")]
    Upstream(#[from] upstream::Error),
    #[error("upstream {upstream} sent an invalid manifest: {reason}")]
    ManifestInvalid { upstream: String, reason: String },
    #[error("upstream {upstream} sent bytes that do not match {expected}")]
    UpstreamDigestMismatch { upstream: String, expected: Digest },
    #[error("upstream {upstream} failed while sending {digest}: {detail}")]
    UpstreamBroken {
        upstream: String,
        digest: Digest,
        detail: String,
    },
    /// Another replica could not give a blob (the asker then fetches it itself: this
    /// reaches a client only if that fails too).
    #[error("{0}")]
    Peer(String),
    #[error("requested range is not satisfiable for a blob of {size} bytes")]
    RangeNotSatisfiable { size: u64 },
    #[error("invalid pagination: {0}")]
    Pagination(String),
    #[error("storage: {0}")]
    Storage(Arc<ferry_storage::Error>),
}

impl From<ferry_storage::Error> for Error {
    fn from(e: ferry_storage::Error) -> Self {
        Error::Storage(Arc::new(e))
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Storage(Arc::new(e.into()))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
