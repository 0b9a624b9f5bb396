//! At most one manifest fetch per repository, reference and accepted types at a time.
//!
//! A rollout sends thousands of nodes after the same tag at once; without this, each
//! request that misses would be its own upstream GET (and a registry that counts them,
//! as ACR does, starts answering 429). The first request leads: it fetches, as it would
//! alone, in its own task. Requests arriving meanwhile follow: they wait for the
//! leader's answer and get it too (errors included). A leader that goes away before it
//! answered (its client hung up) releases its followers, which then fetch on their
//! own: nobody waits on a fetch nobody runs.
//!
//! Blobs have their own, streaming single flight ([`super::inflight`]); a manifest is
//! small and answered whole, so this one only shares the result.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use ferry_storage::Repo;

use super::{CacheStatus, Result, ServedManifest};

/// The repository, the reference and the `Accept` sent upstream.
type Key = (Repo, String, String);

type Answer = Option<Result<ServedManifest>>;

#[derive(Default)]
pub struct Flights {
    running: Arc<Mutex<HashMap<Key, watch::Receiver<Answer>>>>,
}

/// The leader's hold on its key: dropped, the key is free again and followers still
/// waiting fetch on their own.
struct Lead {
    key: Key,
    running: Arc<Mutex<HashMap<Key, watch::Receiver<Answer>>>>,
    tx: watch::Sender<Answer>,
}

impl Drop for Lead {
    fn drop(&mut self) {
        self.running.lock().expect("flights lock").remove(&self.key);
    }
}

impl Flights {
    /// `fetch`'s answer for `key`, or the answer of the fetch already running for it
    /// (told apart by [`CacheStatus::Joined`]).
    pub async fn once<F>(
        &self,
        repo: &Repo,
        reference: &str,
        accept: &str,
        fetch: F,
    ) -> Result<ServedManifest>
    where
        F: Future<Output = Result<ServedManifest>>,
    {
        let key = (repo.clone(), reference.to_owned(), accept.to_owned());
        let joined = {
            let mut running = self.running.lock().expect("flights lock");
            match running.get(&key) {
                Some(rx) => Err(rx.clone()),
                None => {
                    let (tx, rx) = watch::channel(None);
                    running.insert(key.clone(), rx);
                    Ok(Lead {
                        key,
                        running: self.running.clone(),
                        tx,
                    })
                }
            }
        };
        match joined {
            Ok(lead) => {
                let answer = fetch.await;
                lead.tx.send_replace(Some(answer.clone()));
                answer
            }
            Err(mut rx) => {
                // Owned before anything else is awaited: the channel's guard must not
                // be held across the fallback fetch.
                let answer = rx
                    .wait_for(Option::is_some)
                    .await
                    .ok()
                    .and_then(|a| a.clone());
                match answer {
                    Some(answer) => answer.map(|mut m| {
                        m.cache = CacheStatus::Joined;
                        m
                    }),
                    // The leader went away without an answer.
                    None => fetch.await,
                }
            }
        }
    }
}
