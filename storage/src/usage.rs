//! How many bytes the blob store holds, as a running count, so that the quota can be
//! checked after every stored blob without walking the store.
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
    on_growth: OnceLock<Listener>,
}

impl std::fmt::Debug for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Usage")
            .field("bytes", &self.bytes.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Usage {
    /// Bytes under `blobs/`, as far as this process counted.
    pub fn bytes(&self) -> u64 {
        self.raw().max(0) as u64
    }

    /// The raw count, to pass back to [`Usage::rebase`] after a walk.
    pub fn raw(&self) -> i64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Sets `f` to be called (on the committing thread) after every blob stored; the
    /// quota task uses it to check right away. Only the first listener set counts.
    pub fn on_growth(&self, f: impl Fn() + Send + Sync + 'static) -> bool {
        self.on_growth.set(Box::new(f)).is_ok()
    }

    /// Corrects the count to `walked` bytes, found by a walk that started when the
    /// count was `raw_before`: what was added or removed during the walk is kept.
    pub fn rebase(&self, raw_before: i64, walked: u64) {
        self.bytes
            .fetch_add(walked as i64 - raw_before, Ordering::Relaxed);
    }

    pub(crate) fn added(&self, n: u64) {
        self.bytes.fetch_add(n as i64, Ordering::Relaxed);
        if let Some(f) = self.on_growth.get() {
            f();
        }
    }

    pub(crate) fn removed(&self, n: u64) {
        self.bytes.fetch_sub(n as i64, Ordering::Relaxed);
    }
}
