use crate::Digest;

/// What can go wrong in the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("storage I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("index error: {0}")]
    Index(#[from] sled::Error),
    /// A shared store's request failed (unreachable, refused, an unexpected answer).
    #[error("shared store error: {0}")]
    ObjectStore(#[from] object_store::Error),
    #[error("content does not match digest {expected} (got {actual})")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("content of {digest} is {actual} bytes, expected {expected}")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("bytes {start}..{end} are outside blob {digest} of {size} bytes")]
    RangeOutsideBlob {
        digest: Digest,
        start: u64,
        end: u64,
        size: u64,
    },
    #[error("corrupt index record under {key}: {reason}")]
    CorruptRecord { key: String, reason: String },
    #[error(
        "the store at {path} is in use by another process (is `ferry serve` running on it?); stop it first"
    )]
    Locked { path: String },
    #[error(
        "the store at {path} has format {found}; this Ferry understands format {}: run a Ferry that does, or use another storage root",
        crate::format::FORMAT
    )]
    Format { path: String, found: u32 },
    #[error(
        "the store's format marker {path} is unreadable ({reason}); not knowing the store's layout, Ferry leaves it alone: restore the file (a store this Ferry made reads `ferry-store {}`), or use another storage root",
        crate::format::FORMAT
    )]
    FormatUnreadable { path: String, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
