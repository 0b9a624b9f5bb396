//! Leases: the blobs requests are using right now, which eviction must leave alone.
//!
//! The proxy takes a lease on a blob before it looks it up and holds it until the
//! response body is finished or dropped (for a fetch, that covers the whole download
//! and the commit). Deleting for space goes through [`Leases::unless_held`], which
//! checks and unlinks under the lock leases are taken under, so either the lease came
//! first (the blob is skipped) or the delete did (the request finds no blob and fetches
//! it again). On Unix an open file stays readable after it is unlinked, so a lease
//! mainly closes the gap between a request's lookup and its open; it also keeps what
//! is being served in the cache rather than evicting it under a client's feet.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::Digest;

type Held = Arc<Mutex<HashMap<Digest, usize>>>;

#[derive(Debug, Default)]
pub struct Leases {
    held: Held,
}

/// A blob in use. Dropping it ends the use.
#[derive(Debug)]
pub struct Lease {
    held: Held,
    digest: Digest,
}

impl Leases {
    pub(crate) fn hold(&self, d: &Digest) -> Lease {
        *self
            .held
            .lock()
            .expect("leases lock")
            .entry(d.clone())
            .or_insert(0) += 1;
        Lease {
            held: self.held.clone(),
            digest: d.clone(),
        }
    }

    pub fn is_held(&self, d: &Digest) -> bool {
        self.held.lock().expect("leases lock").contains_key(d)
    }

    /// Runs `f` (a delete) unless `d` is leased, holding new leases off meanwhile.
    pub(crate) fn unless_held<T>(&self, d: &Digest, f: impl FnOnce() -> T) -> Option<T> {
        let held = self.held.lock().expect("leases lock");
        if held.contains_key(d) {
            return None;
        }
        let out = f();
        drop(held);
        Some(out)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut held = self.held.lock().expect("leases lock");
        if let Some(n) = held.get_mut(&self.digest) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.digest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_until_every_lease_drops() {
        let leases = Leases::default();
        let d = Digest::sha256_of(b"a");
        let a = leases.hold(&d);
        let b = leases.hold(&d);
        assert_eq!(leases.unless_held(&d, || ()), None);
        drop(a);
        assert!(leases.is_held(&d));
        drop(b);
        assert!(!leases.is_held(&d));
        assert_eq!(leases.unless_held(&d, || 7), Some(7));
    }
}
