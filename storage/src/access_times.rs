//! When each blob was last used, kept in memory so that serving writes nothing.
//!
//! Every lookup, open or read of a blob through [`Blobs`](crate::Blobs) stamps it here:
//! a map update under a mutex, no I/O. The server writes the stamps that changed into
//! the index's `blobs` records now and then and at shutdown
//! ([`Store::flush_access`](crate::Store::flush_access)), so least-recently-used order
//! survives a restart without one index write per request.
//!
//! Stamps are milliseconds since the Unix epoch: images pulled a moment apart must still
//! be told apart when choosing what to evict.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::Digest;

#[derive(Debug, Default)]
pub struct AccessTimes {
    stamps: Mutex<HashMap<Digest, Stamp>>,
}

#[derive(Debug, Clone, Copy)]
struct Stamp {
    at_ms: u64,
    /// Changed since the last flush.
    dirty: bool,
}

pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl AccessTimes {
    /// Notes a use of `d` now.
    pub fn touch(&self, d: &Digest) {
        self.touch_at(d, now_millis());
    }

    pub(crate) fn touch_at(&self, d: &Digest, at_ms: u64) {
        let mut stamps = self.stamps.lock().expect("access times lock");
        match stamps.get_mut(d) {
            Some(s) => {
                s.at_ms = s.at_ms.max(at_ms);
                s.dirty = true;
            }
            None => {
                stamps.insert(d.clone(), Stamp { at_ms, dirty: true });
            }
        }
    }

    /// The last use of `d` this process saw, in milliseconds since the epoch.
    pub fn get(&self, d: &Digest) -> Option<u64> {
        self.stamps
            .lock()
            .expect("access times lock")
            .get(d)
            .map(|s| s.at_ms)
    }

    /// Drops what is known of `d` (it was deleted).
    pub(crate) fn forget(&self, d: &Digest) {
        self.stamps.lock().expect("access times lock").remove(d);
    }

    /// The stamps changed since the last call, marked clean.
    pub(crate) fn take_dirty(&self) -> Vec<(Digest, u64)> {
        let mut stamps = self.stamps.lock().expect("access times lock");
        stamps
            .iter_mut()
            .filter(|(_, s)| s.dirty)
            .map(|(d, s)| {
                s.dirty = false;
                (d.clone(), s.at_ms)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_move_forward_and_flush_once() {
        let t = AccessTimes::default();
        let d = Digest::sha256_of(b"a");
        t.touch_at(&d, 2000);
        t.touch_at(&d, 1000);
        assert_eq!(t.get(&d), Some(2000));
        assert_eq!(t.take_dirty(), vec![(d.clone(), 2000)]);
        assert!(t.take_dirty().is_empty());
        t.forget(&d);
        assert_eq!(t.get(&d), None);
    }
}
