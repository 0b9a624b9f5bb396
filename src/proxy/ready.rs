//! Readiness: whether this server can do its job right now, which is storing what it
//! fetches. The upstreams are not asked: with them down Ferry serves from its cache,
//! and taking it out of a load balancer then would defeat its purpose.

use std::sync::atomic::Ordering;

use super::Proxy;

impl Proxy {
    /// `Ok` while a blob could be stored; otherwise why not. A change either way is
    /// logged once, not at every probe.
    pub async fn ready(&self) -> Result<(), String> {
        let result = self
            .blocking(|s| s.check_writable())
            .await
            .map_err(|e| match e {
                super::Error::Storage(e) => e.to_string(),
                e => e.to_string(),
            });
        let was_ready = self.ready.swap(result.is_ok(), Ordering::Relaxed);
        let root = self.store.layout().root().display().to_string();
        match &result {
            Err(e) if was_ready => {
                tracing::warn!(store = %root, error = %e, "not ready: the store is not writable")
            }
            Ok(()) if !was_ready => {
                tracing::info!(store = %root, "ready: the store is writable again")
            }
            _ => {}
        }
        result.map_err(|e| format!("the store at {root} is not writable: {e}"))
    }
}
