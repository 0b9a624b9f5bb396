//! What the cache did for one request: the `X-Cache` header's values and the labels
//! of the cache metrics. A leaf of its own so that `proxy`, which decides it, and
//! `metrics`, which counts it, both import it without importing each other.

/// What the cache did for a request, reported to clients as `X-Cache`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// Served from the store.
    Hit,
    /// Not in this replica's store: copied from the shared store replicas share.
    Shared,
    /// Not in this replica's store: streamed from the replica that owns the digest.
    Peer,
    /// Fetched from the upstream by this request.
    Miss,
    /// Joined a fetch another request had started.
    Joined,
    /// Served from the store because asking the upstream failed just now.
    Stale,
    /// Served from the store without asking: the upstream is known to be offline.
    Offline,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Shared => "SHARED",
            CacheStatus::Peer => "PEER",
            CacheStatus::Miss => "MISS",
            CacheStatus::Joined => "JOINED",
            CacheStatus::Stale => "STALE",
            CacheStatus::Offline => "OFFLINE",
        }
    }
}
