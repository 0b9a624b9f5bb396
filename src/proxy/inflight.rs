//! At most one upstream fetch per blob (per repository) at a time.
//!
//! The first request for an uncached blob becomes the leader: it starts a fetch task
//! that outlives it, streaming upstream bytes into a staged file while hashing them.
//! Every request, the leader's included, reads that staged file as it grows, so a
//! late joiner first gets what is on disk, then follows the download; a `Range` is
//! served from the bytes as they arrive.
//!
//! Readers are held one byte short of the end of what they asked for until the digest
//! verified, a whole read and a `Range` alike: if the bytes turn out wrong, the fetch
//! fails, every reader's connection is cut before its last byte (so no client ever
//! sees a complete answer made of unverified bytes), and nothing is stored.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::Stream;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;

use ferry_oci::Digest;

use ferry_storage::Repo;

use super::Error;

/// How a fetch gets its bytes, as far as joining it is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Via {
    /// From the shared store or the upstream.
    Direct,
    /// From the replica that owns the digest (see `crate::peers`).
    Owner,
}

type Key = (Repo, Digest, Via);

type Fetches = Arc<Mutex<HashMap<Key, Arc<Fetch>>>>;

pub struct Inflight {
    fetches: Fetches,
    /// `ferry_inflight_fetches`: up while a leader exists.
    running: Gauge,
}

/// What [`Inflight::join_or_start`] found.
pub enum Joined {
    /// Someone else's fetch is running; follow it.
    Follower(Arc<Fetch>),
    /// No fetch was running and the caller must start one: it holds the sender.
    Leader(Arc<Fetch>, Leader),
    /// The blob landed in the store meanwhile.
    Stored,
}

/// The leader's side of a fetch. Dropping it without [`Leader::finish`] fails the
/// fetch, so followers never wait on a fetch nobody runs.
pub struct Leader {
    tx: watch::Sender<State>,
    fetch: Arc<Fetch>,
    key: Key,
    fetches: Fetches,
    finished: bool,
    running: Gauge,
}

#[derive(Clone)]
pub enum State {
    /// Waiting for the upstream's headers.
    Starting,
    /// Bytes `0..readable` of `size` may be read from `file`.
    Receiving {
        size: u64,
        file: Arc<File>,
        readable: u64,
    },
    /// Verified and stored; all `size` bytes may be read.
    Done {
        size: u64,
        file: Arc<File>,
    },
    Failed(Error),
}

pub struct Fetch {
    tx: watch::Sender<State>,
    /// Where the bytes come from, as the leader's client reports it: shared store,
    /// owner or upstream (set once, before the first byte).
    origin: std::sync::OnceLock<crate::cache_status::CacheStatus>,
}

impl Inflight {
    /// No fetches yet; `running` counts those in flight.
    pub fn new(running: Gauge) -> Inflight {
        Inflight {
            fetches: Fetches::default(),
            running,
        }
    }

    /// Joins a running fetch of `digest` in `repo`, or registers a new one that gets its
    /// bytes `via` (unless `is_stored` says the blob arrived since the caller last
    /// looked). A fetch from the owner is joined only if `join_owner` (a request from a
    /// peer must not wait on a fetch that may be waiting on that peer).
    pub fn join_or_start(
        &self,
        repo: &Repo,
        digest: &Digest,
        via: Via,
        join_owner: bool,
        is_stored: impl FnOnce() -> bool,
    ) -> Joined {
        let key = |via| (repo.clone(), digest.clone(), via);
        let mut fetches = self.fetches.lock().expect("inflight lock");
        let joinable = [Some(Via::Direct), join_owner.then_some(Via::Owner)];
        if let Some(f) = joinable
            .into_iter()
            .flatten()
            .find_map(|v| fetches.get(&key(v)))
        {
            return Joined::Follower(f.clone());
        }
        let key = key(via);
        // Checked under the lock: a leader removes its entry only after storing, so
        // either the entry or the stored blob is visible here.
        if is_stored() {
            return Joined::Stored;
        }
        let (tx, _) = watch::channel(State::Starting);
        let fetch = Arc::new(Fetch {
            tx: tx.clone(),
            origin: Default::default(),
        });
        fetches.insert(key.clone(), fetch.clone());
        self.running.inc();
        Joined::Leader(
            fetch.clone(),
            Leader {
                tx,
                fetch,
                key,
                fetches: self.fetches.clone(),
                finished: false,
                running: self.running.clone(),
            },
        )
    }

    /// A running fetch of `digest` in `repo`, if any.
    pub fn get(&self, repo: &Repo, digest: &Digest) -> Option<Arc<Fetch>> {
        let fetches = self.fetches.lock().expect("inflight lock");
        [Via::Direct, Via::Owner]
            .into_iter()
            .find_map(|v| fetches.get(&(repo.clone(), digest.clone(), v)).cloned())
    }
}

impl Leader {
    pub fn publish(&self, state: State) {
        self.tx.send_replace(state);
    }

    /// Notes where the bytes come from (before publishing any).
    pub fn reading_from(&self, origin: crate::cache_status::CacheStatus) {
        let _ = self.fetch.origin.set(origin);
    }

    /// Whether readers have started receiving bytes (so a failure now can only cut
    /// their connections, not become an error response).
    pub fn is_streaming(&self) -> bool {
        matches!(*self.tx.borrow(), State::Receiving { .. })
    }

    /// Ends the fetch: unregisters it, then tells every reader how it ended. The
    /// order matters: a request arriving in between finds the blob in the store.
    pub fn finish(mut self, end: State) {
        self.fetches
            .lock()
            .expect("inflight lock")
            .remove(&self.key);
        self.tx.send_replace(end);
        self.finished = true;
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        self.running.dec();
        if !self.finished {
            // The fetch task ended without finishing (it panicked): unregister and
            // fail, so that followers stop waiting and the next request starts over.
            self.fetches
                .lock()
                .expect("inflight lock")
                .remove(&self.key);
            self.tx.send_replace(State::Failed(Error::Storage(Arc::new(
                io::Error::other("blob fetch ended unexpectedly").into(),
            ))));
        }
    }
}

impl Fetch {
    /// Waits for the upstream's answer: the blob's size, or why there is none.
    pub async fn started(&self) -> Result<u64, Error> {
        let mut rx = self.tx.subscribe();
        let state = rx
            .wait_for(|s| !matches!(s, State::Starting))
            .await
            .map(|s| s.clone())
            .unwrap_or_else(|_| {
                State::Failed(Error::Storage(Arc::new(
                    io::Error::other("blob fetch abandoned").into(),
                )))
            });
        match state {
            State::Receiving { size, .. } | State::Done { size, .. } => Ok(size),
            State::Failed(e) => Err(e),
            State::Starting => unreachable!("waited for a state other than Starting"),
        }
    }

    /// Where the bytes come from (known once [`Fetch::started`]).
    pub fn origin(&self) -> Option<crate::cache_status::CacheStatus> {
        self.origin.get().copied()
    }

    /// Whether every byte has arrived and matched the digest: what is left is only
    /// storing it, so a reader joining now is served from local bytes alone.
    pub fn is_verified(&self) -> bool {
        match &*self.tx.borrow() {
            State::Receiving { size, readable, .. } => *size > 0 && readable == size,
            State::Done { .. } => true,
            _ => false,
        }
    }

    /// Bytes `start..=end` of the blob, as they become readable. Byte `end` itself
    /// only once the whole blob verified: a range that ends before the blob does is no
    /// safer to complete from unverified bytes than the whole blob is.
    pub fn stream(
        &self,
        start: u64,
        end: u64,
    ) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
        let rx = self.tx.subscribe();
        futures_util::stream::try_unfold((rx, start), move |(mut rx, pos)| async move {
            if pos > end {
                return Ok(None);
            }
            let (file, readable) = loop {
                {
                    let state = rx.borrow_and_update();
                    match &*state {
                        State::Receiving {
                            file,
                            readable,
                            size,
                        } => {
                            let verified = readable == size;
                            let allowed = if verified {
                                *readable
                            } else {
                                (*readable).min(end)
                            };
                            if allowed > pos {
                                break (file.clone(), allowed);
                            }
                        }
                        State::Done { file, size } => break (file.clone(), *size),
                        State::Failed(e) => return Err(io::Error::other(e.to_string())),
                        _ => {}
                    }
                }
                rx.changed()
                    .await
                    .map_err(|_| io::Error::other("blob fetch abandoned"))?;
            };
            let n = ferry_storage::chunks::CHUNK
                .min(readable - pos)
                .min(end + 1 - pos);
            let chunk = ferry_storage::chunks::read_chunk(&file, pos, n).await?;
            let next = pos + chunk.len() as u64;
            Ok(Some((chunk, (rx, next))))
        })
    }
}
