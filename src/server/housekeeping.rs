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
//! - **Scrub.** With `[storage] scrub_rate` above zero, a task of its own re-hashes every
//!   stored blob, one after the other at no more than that many bytes a second
//!   ([`Store::scrub_one`]), and drops those whose bytes no longer match their digest
//!   (a warning each, `ferry_scrub_dropped_total`), so that the next request fetches
//!   them again instead of serving them. A pass starts at most every
//!   [`SCRUB_PASS_GAP`]. It reads on one blocking thread, and stops with the server.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_storage::{Image, Scrubbed, Store};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::bytesize::Human;
use crate::config::Quota;
use crate::proxy::Proxy;
use crate::server::shared_maintenance::SharedMaintenance;

pub const FLUSH_EVERY: Duration = Duration::from_secs(60);
pub const TICK: Duration = Duration::from_secs(10);
pub const LOW_WATER_PERCENT: u64 = 90;
pub const FREE_MARGIN_PERCENT: u64 = 10;
/// The least time between two passes.
const MIN_GAP: Duration = Duration::from_secs(1);
pub const RETRY_MIN: Duration = Duration::from_secs(5);
pub const RETRY_MAX: Duration = Duration::from_secs(300);
/// The least time between the starts of two scrub passes: the rate bounds what a pass
/// costs, this how often a small store is walked.
pub const SCRUB_PASS_GAP: Duration = Duration::from_secs(60);
/// The most reading time a scrub saves up while it waits (on a walk, a slow disk): it
/// never reads faster than its rate for longer than this.
const SCRUB_BURST: Duration = Duration::from_secs(1);

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
    scrub: Option<JoinHandle<()>>,
    /// The shared store's lease and quota task.
    shared: Option<JoinHandle<()>>,
}

impl Housekeeping {
    /// Starts the task on `proxy`'s store, and the scrub at `scrub_rate` bytes a
    /// second unless that is 0.
    /// With `shared`, this replica's access times go to the shared store too, and
    /// its quota task runs beside (see [`super::shared_maintenance`]).
    pub fn start(
        proxy: Arc<Proxy>,
        quota: Quota,
        scrub_rate: u64,
        shared: Option<Arc<SharedMaintenance>>,
    ) -> Housekeeping {
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
        let scrub = (scrub_rate > 0).then(|| {
            tracing::info!(rate = %format!("{}/s", Human(scrub_rate)), "scrub: re-hashing stored blobs in the background");
            tokio::spawn(scrub(proxy.clone(), scrub_rate, stopped.clone()))
        });
        let shared_task = shared
            .clone()
            .and_then(|s| s.start(proxy.clone(), stopped.clone()));
        let task = tokio::spawn(run(proxy, quota, wake, stopped, shared));
        Housekeeping {
            stop,
            task,
            scrub,
            shared: shared_task,
        }
    }

    /// Stops the task, flushing access times first, and the scrub.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.task.await {
            tracing::warn!(error = %e, "store housekeeping ended abnormally");
        }
        if let Some(scrub) = self.scrub
            && let Err(e) = scrub.await
        {
            tracing::warn!(error = %e, "scrub ended abnormally");
        }
        if let Some(shared) = self.shared
            && let Err(e) = shared.await
        {
            tracing::warn!(error = %e, "shared store maintenance ended abnormally");
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
    shared: Option<Arc<SharedMaintenance>>,
) {
    let shared = shared.as_deref();
    // A stop during the check (it reads every blob's size) need not wait for it.
    tokio::select! {
        _ = startup_check(&proxy) => {}
        _ = stopped.changed() => {
            flush_access(&proxy, shared).await;
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
            flush_access(&proxy, shared).await;
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
    flush_access(&proxy, shared).await;
}

/// The scrub: passes over every stored blob at `rate` bytes a second, until `stopped`.
async fn scrub(proxy: Arc<Proxy>, rate: u64, mut stopped: watch::Receiver<bool>) {
    loop {
        let started = Instant::now();
        let files = match on_store(&proxy, |s| s.blobs.walk()).await {
            Some(Ok(walk)) => walk.files,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "scrub: could not list the store");
                Vec::new()
            }
            None => Vec::new(),
        };
        let mut pace = Pace::new(rate, stopped.clone());
        let (mut blobs, mut bytes, mut dropped) = (0usize, 0u64, 0usize);
        for f in files {
            let d = f.digest;
            // The pace travels with the blocking read and comes back with its result.
            let Some((found, back)) = on_store(&proxy, move |s| {
                let found = s.scrub_one(&d, |n| pace.after(n));
                (found.map_err(|e| (d, e)), pace)
            })
            .await
            else {
                break;
            };
            pace = back;
            if *stopped.borrow() {
                return;
            }
            match found {
                Ok(Scrubbed::Intact { bytes: n }) => {
                    proxy.metrics().scrubbed(n, false);
                    (blobs, bytes) = (blobs + 1, bytes + n);
                }
                Ok(Scrubbed::Dropped { bytes: n }) => {
                    proxy.metrics().scrubbed(n, true);
                    (blobs, bytes, dropped) = (blobs + 1, bytes + n, dropped + 1);
                }
                Ok(Scrubbed::Skipped) => {}
                Err((d, e)) => {
                    tracing::warn!(digest = %d, error = %e, "scrub: could not check a stored blob")
                }
            }
        }
        tracing::debug!(blobs, bytes = %Human(bytes), dropped, took = ?started.elapsed(), "scrub pass done");
        tokio::select! {
            _ = tokio::time::sleep_until((started + SCRUB_PASS_GAP).into()) => {}
            _ = stopped.changed() => return,
        }
    }
}

/// Keeps the scrub's reads to `rate` bytes a second: told each piece read, it sleeps
/// (on the blocking thread that reads) until the next may be, and says stop once the
/// server stops.
struct Pace {
    rate: u64,
    /// When reading may go on.
    next: Instant,
    stopped: watch::Receiver<bool>,
}

impl Pace {
    fn new(rate: u64, stopped: watch::Receiver<bool>) -> Pace {
        Pace {
            rate,
            next: Instant::now(),
            stopped,
        }
    }

    fn after(&mut self, n: u64) -> ControlFlow<()> {
        let now = Instant::now();
        let earliest = now.checked_sub(SCRUB_BURST).unwrap_or(now);
        self.next = self.next.max(earliest) + Duration::from_secs_f64(n as f64 / self.rate as f64);
        loop {
            if *self.stopped.borrow() {
                return ControlFlow::Break(());
            }
            let now = Instant::now();
            if now >= self.next {
                return ControlFlow::Continue(());
            }
            // In short naps, so that a stopping server does not wait for a long one.
            std::thread::sleep((self.next - now).min(Duration::from_millis(100)));
        }
    }
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

async fn flush_access(proxy: &Arc<Proxy>, shared: Option<&SharedMaintenance>) {
    match on_store(proxy, |s| s.flush_access_entries()).await {
        Some(Ok(used)) if !used.is_empty() => {
            tracing::debug!(blobs = used.len(), "access times written to the index");
            if let Some(shared) = shared {
                shared.record_access(used).await;
            }
        }
        Some(Err(e)) => tracing::warn!(error = %e, "could not write access times"),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scrub_pace_keeps_to_its_rate_and_stops() {
        let (stop, stopped) = watch::channel(false);
        let mut pace = Pace::new(10 << 20, stopped);
        let t = Instant::now();
        // 3 MiB at 10 MiB/s from a standing start: about 0.3 s.
        for _ in 0..3 {
            assert!(pace.after(1 << 20).is_continue());
        }
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(250), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
        stop.send(true).unwrap();
        assert!(
            pace.after(1 << 30).is_break(),
            "a stop ends the wait at once"
        );
    }

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
