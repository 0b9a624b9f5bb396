//! How many bytes (and blobs) the blob store holds, as a running count, so that the
//! quota can be checked after every stored blob, and the metrics read at every scrape,
//! without walking the store.
//!
//! Commits add, deletes subtract. The count starts at zero and is corrected against a
//! walk of `blobs/` ([`Usage::rebase`]) at startup and on every eviction pass, which
//! also absorbs drift (a blob committed twice by racing fetches, files removed by hand).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, Ordering};

type Listener = Box<dyn Fn() + Send + Sync>;

#[derive(Default)]
pub struct Usage {
    bytes: AtomicI64,
    blobs: AtomicI64,
    on_growth: OnceLock<Listener>,
}

impl std::fmt::Debug for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Usage")
            .field("bytes", &self.bytes.load(Ordering::Relaxed))
            .field("blobs", &self.blobs.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Usage {
    /// Bytes under `blobs/`, as far as this process counted.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed).max(0) as u64
    }

    /// Blobs under `blobs/`, as far as this process counted.
    pub fn blobs(&self) -> u64 {
        self.blobs.load(Ordering::Relaxed).max(0) as u64
    }

    /// The raw counts, to pass back to [`Usage::rebase`] after a walk.
    pub fn raw(&self) -> UsageCounts {
        UsageCounts {
            bytes: self.bytes.load(Ordering::Relaxed),
            blobs: self.blobs.load(Ordering::Relaxed),
        }
    }

    /// Sets `f` to be called (on the committing thread) after every blob stored; the
    /// quota task uses it to check right away. Only the first listener set counts.
    pub fn on_growth(&self, f: impl Fn() + Send + Sync + 'static) -> bool {
        self.on_growth.set(Box::new(f)).is_ok()
    }

    /// Corrects the counts to `bytes` and `blobs`, found by a walk that started when
    /// the counts were `before`: what was added or removed during the walk is kept.
    pub fn rebase(&self, before: UsageCounts, bytes: u64, blobs: usize) {
        self.bytes
            .fetch_add(bytes as i64 - before.bytes, Ordering::Relaxed);
        self.blobs
            .fetch_add(blobs as i64 - before.blobs, Ordering::Relaxed);
    }

    pub(crate) fn added(&self, n: u64) {
        self.bytes.fetch_add(n as i64, Ordering::Relaxed);
        self.blobs.fetch_add(1, Ordering::Relaxed);
        if let Some(f) = self.on_growth.get() {
            f();
        }
    }

    pub(crate) fn removed(&self, n: u64) {
        self.bytes.fetch_sub(n as i64, Ordering::Relaxed);
        self.blobs.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The counts at one moment, for [`Usage::rebase`].
#[derive(Debug, Clone, Copy)]
pub struct UsageCounts {
    bytes: i64,
    blobs: i64,
}
