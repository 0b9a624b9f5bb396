//! The store's background housekeeping in `ferry serve`: the startup check, keeping
//! last-access times, and the quota.
//!
//! - **Startup check.** Right after the store opens (which sweeps `staging/`), a
//!   background [`Store::quick_check`] compares every blob's size with the index
//!   (sizes, not hashes: `ferry fsck` re-hashes) and logs a summary; its byte count
//!   seeds the quota's running count. Serving does not wait for it.
//! - **Access times.** Lookups stamp an in-memory map (see
//!   [`ferry_storage::AccessTimes`]); this task writes the stamps that changed into the
//!   index every [`FLUSH_EVERY`] and at shutdown: no index write per request.
//! - **Quota.** With `[storage] max_size` or `min_free` set, the store is checked after
//!   every blob stored (the store calls back on growth) and every [`TICK`]. Over
//!   `max_size`, or under `min_free` free on the filesystem (`statvfs`), a pass evicts
//!   least-recently-used images ([`Store::evict`] says what an image is) down to the
//!   low-water mark: [`LOW_WATER_PERCENT`] of `max_size`, and `min_free` plus
//!   [`FREE_MARGIN_PERCENT`] free, so that passes do not run on every blob. A pass never
//!   deletes a blob a request holds a lease on (the proxy leases every blob it serves or
//!   fetches, for the life of the response) nor content of a `[[pin]]` image
//!   ([`Proxy::is_pinned`]).
//!   When a pass cannot reach the mark (everything left is in use or pinned), the next
//!   waits, backing off from [`RETRY_MIN`] to [`RETRY_MAX`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_storage::{Image, Store};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::bytesize::Human;
use crate::config::Quota;
use crate::proxy::Proxy;

pub const FLUSH_EVERY: Duration = Duration::from_secs(60);
pub const TICK: Duration = Duration::from_secs(10);
pub const LOW_WATER_PERCENT: u64 = 90;
pub const FREE_MARGIN_PERCENT: u64 = 10;
/// The least time between two passes.
const MIN_GAP: Duration = Duration::from_secs(1);
pub const RETRY_MIN: Duration = Duration::from_secs(5);
pub const RETRY_MAX: Duration = Duration::from_secs(300);

impl Quota {
    pub fn is_set(&self) -> bool {
        self.max_size.is_some() || self.min_free.is_some()
    }

    /// Whether the store must make room, with `used` bytes stored and `available` free.
    pub fn exceeded(&self, used: u64, available: Option<u64>) -> bool {
        self.max_size.is_some_and(|max| used > max)
            || matches!((self.min_free, available), (Some(min), Some(free)) if free < min)
    }

    /// Bytes to free to get back to the low-water mark (0 when not over the limits).
    pub fn to_free(&self, used: u64, available: Option<u64>) -> u64 {
        if !self.exceeded(used, available) {
            return 0;
        }
        let for_size = self.max_size.filter(|&max| used > max).map_or(0, |max| {
            used.saturating_sub(max / 100 * LOW_WATER_PERCENT + max % 100 * LOW_WATER_PERCENT / 100)
        });
        let for_free = match (self.min_free, available) {
            (Some(min), Some(free)) => (min + min / 100 * FREE_MARGIN_PERCENT).saturating_sub(free),
            _ => 0,
        };
        for_size.max(for_free)
    }
}

/// The running housekeeping task.
pub struct Housekeeping {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Housekeeping {
    /// Starts the task on `proxy`'s store.
    pub fn start(proxy: Arc<Proxy>, quota: Quota) -> Housekeeping {
        let wake = Arc::new(Notify::new());
        if quota.is_set() {
            let wake = wake.clone();
            proxy
                .store()
                .blobs
                .usage()
                .on_growth(move || wake.notify_one());
        }
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(proxy, quota, wake, stopped));
        Housekeeping { stop, task }
    }

    /// Stops the task, flushing access times first.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.task.await {
            tracing::warn!(error = %e, "store housekeeping ended abnormally");
        }
    }
}

/// Runs `f` on the store on a blocking thread.
async fn on_store<T: Send + 'static>(
    proxy: &Arc<Proxy>,
    f: impl FnOnce(&Store) -> T + Send + 'static,
) -> Option<T> {
    let proxy = proxy.clone();
    match tokio::task::spawn_blocking(move || f(proxy.store())).await {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(error = %e, "store housekeeping step failed");
            None
        }
    }
}

async fn run(
    proxy: Arc<Proxy>,
    quota: Quota,
    wake: Arc<Notify>,
    mut stopped: watch::Receiver<bool>,
) {
    // A stop during the check (it reads every blob's size) need not wait for it.
    tokio::select! {
        _ = startup_check(&proxy) => {}
        _ = stopped.changed() => {
            flush_access(&proxy).await;
            return;
        }
    }
    let mut last_flush = Instant::now();
    let mut next_pass = Instant::now();
    let mut retry = RETRY_MIN;
    let mut tick = tokio::time::interval(TICK);
    // A check is due: a blob was stored or the tick came, maybe before passes may run
    // again, in which case the check waits for `next_pass` rather than the next wake.
    let mut due = false;
    loop {
        tokio::select! {
            _ = wake.notified() => due = true,
            _ = tick.tick() => due = true,
            _ = tokio::time::sleep_until(next_pass.into()), if due => {}
            _ = stopped.changed() => break,
        }
        if last_flush.elapsed() >= FLUSH_EVERY {
            flush_access(&proxy).await;
            last_flush = Instant::now();
        }
        if !quota.is_set() {
            // Nothing to check: a `due` left set would wake the loop at once, forever.
            due = false;
            continue;
        }
        if !due || Instant::now() < next_pass {
            continue;
        }
        due = false;
        let store = proxy.store();
        let available = store.available_space().ok();
        if !quota.exceeded(store.blobs.usage().bytes(), available) {
            continue;
        }
        let pins = proxy.clone();
        let Some(result) = on_store(&proxy, move |s| {
            // Free space is read again: it is the fresh count, not the running one,
            // that decides how much to evict.
            let available = s.available_space().ok();
            let pinned = |image: &Image| pins.is_pinned(&image.digest, &image.tags);
            s.evict(|used| quota.to_free(used, available), &pinned)
        })
        .await
        else {
            continue;
        };
        match result {
            Ok(r) if r.goal == 0 => next_pass = Instant::now() + MIN_GAP,
            Ok(r) => {
                proxy.metrics().evicted(r.evicted.len(), r.freed);
                let after = r.used_before - r.freed;
                tracing::info!(
                    images = r.evicted.len(),
                    blobs = r.blobs_deleted,
                    freed = %Human(r.freed),
                    before = %Human(r.used_before),
                    after = %Human(after),
                    max_size = ?quota.max_size.map(|m| Human(m).to_string()),
                    kept_in_use = r.kept_in_use,
                    pinned = r.pinned,
                    "evicted least recently used images"
                );
                if r.reached_goal() {
                    retry = RETRY_MIN;
                    next_pass = Instant::now() + MIN_GAP;
                } else {
                    tracing::warn!(
                        short_by = %Human(r.goal - r.freed),
                        in_use = r.kept_in_use,
                        pinned = r.pinned,
                        retry_in = ?retry,
                        "store still over its limits: what is left is in use or pinned"
                    );
                    next_pass = Instant::now() + retry;
                    retry = (retry * 2).min(RETRY_MAX);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?retry, "eviction pass failed");
                next_pass = Instant::now() + retry;
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
    flush_access(&proxy).await;
}

async fn startup_check(proxy: &Arc<Proxy>) {
    let Some(result) = on_store(proxy, |s| {
        let raw_before = s.blobs.usage().raw();
        let report = s.quick_check()?;
        s.blobs
            .usage()
            .rebase(raw_before, report.bytes, report.blobs);
        Ok::<_, ferry_storage::Error>(report)
    })
    .await
    else {
        return;
    };
    match result {
        Ok(r) if r.problems() == 0 => {
            tracing::info!(blobs = r.blobs, bytes = %Human(r.bytes), "store check: sizes agree with the index")
        }
        Ok(r) => tracing::warn!(
            blobs = r.blobs,
            bytes = %Human(r.bytes),
            size_mismatches = r.size_mismatches.len(),
            missing_files = r.dangling,
            stray_files = r.strays,
            first_mismatch = ?r.size_mismatches.first().map(|m| m.digest.to_string()),
            "store check found problems; run `ferry fsck` (with the server stopped) for a full check"
        ),
        Err(e) => tracing::warn!(error = %e, "store check failed"),
    }
}

async fn flush_access(proxy: &Arc<Proxy>) {
    match on_store(proxy, |s| s.flush_access()).await {
        Some(Ok(n)) if n > 0 => tracing::debug!(blobs = n, "access times written to the index"),
        Some(Err(e)) => tracing::warn!(error = %e, "could not write access times"),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_low_water_mark() {
        let q = Quota {
            max_size: Some(1000),
            min_free: None,
        };
        assert!(!q.exceeded(1000, None));
        assert_eq!(q.to_free(1000, Some(0)), 0);
        assert!(q.exceeded(1001, None));
        assert_eq!(q.to_free(1001, None), 101);
        let q = Quota {
            max_size: None,
            min_free: Some(1000),
        };
        assert!(!q.exceeded(u64::MAX, Some(1000)));
        assert!(
            !q.exceeded(0, None),
            "unknown free space is not a reason to evict"
        );
        assert_eq!(q.to_free(5000, Some(999)), 101);
        let both = Quota {
            max_size: Some(10_000),
            min_free: Some(1000),
        };
        assert_eq!(both.to_free(10_500, Some(900)), 1500);
        assert_eq!(both.to_free(10_500, Some(100_000)), 1500);
        // Exact for sizes whose 90% would overflow a naive multiplication.
        let huge = Quota {
            max_size: Some(u64::MAX / 2),
            min_free: None,
        };
        assert!(huge.to_free(u64::MAX, None) > 0);
        assert!(!Quota::default().is_set());
    }
}
