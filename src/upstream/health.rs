//! Whether an upstream answers. After `offline_after_failures` consecutive failures
//! (connect errors, timeouts, 5xx) the upstream counts as offline: requests stop
//! waiting on it — what is cached is served at once — and one background task probes
//! it with backoff until it answers again.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use url::Url;

use crate::metrics::UpstreamMetrics;

const FIRST_PROBE: Duration = Duration::from_secs(1);
const MAX_PROBE_INTERVAL: Duration = Duration::from_secs(30);

#[derive(Default)]
struct State {
    failures: u32,
    offline_since: Option<SystemTime>,
}

pub struct Health {
    upstream: String,
    threshold: u32,
    state: Mutex<State>,
    /// `ferry_upstream_up`, set on every change.
    metrics: UpstreamMetrics,
}

impl Health {
    pub fn new(upstream: &str, threshold: u32, metrics: UpstreamMetrics) -> Arc<Health> {
        metrics.set_up(true);
        Arc::new(Health {
            upstream: upstream.to_string(),
            threshold: threshold.max(1),
            state: Mutex::default(),
            metrics,
        })
    }

    /// When the upstream went offline, if it is.
    pub fn offline_since(&self) -> Option<SystemTime> {
        self.state.lock().expect("health lock").offline_since
    }

    pub fn record_success(&self) {
        let mut s = self.state.lock().expect("health lock");
        if let Some(since) = s.offline_since.take() {
            let down = SystemTime::now().duration_since(since).unwrap_or_default();
            tracing::info!(upstream = %self.upstream, down_secs = down.as_secs(), "upstream answers again; back online");
            self.metrics.set_up(true);
        }
        s.failures = 0;
    }

    /// Counts a failure; `true` when this one took the upstream offline (the caller
    /// then starts the probe).
    pub fn record_failure(&self) -> bool {
        let mut s = self.state.lock().expect("health lock");
        s.failures = s.failures.saturating_add(1);
        if s.offline_since.is_none() && s.failures >= self.threshold {
            s.offline_since = Some(SystemTime::now());
            self.metrics.set_up(false);
            tracing::warn!(upstream = %self.upstream, failures = s.failures, "upstream unreachable; serving from cache and probing it in the background");
            return true;
        }
        false
    }

    /// Probes `GET <base>/v2/` with backoff until the upstream gives any HTTP answer
    /// (401 included: it is up), then marks it online.
    pub fn spawn_probe(self: &Arc<Self>, http: reqwest::Client, base: Url, timeout: Duration) {
        let health = self.clone();
        tokio::spawn(async move {
            let Ok(url) = base.join("v2/") else { return };
            let mut wait = FIRST_PROBE;
            while health.offline_since().is_some() {
                tokio::time::sleep(wait).await;
                match tokio::time::timeout(timeout, http.get(url.clone()).send()).await {
                    Ok(Ok(resp)) if !resp.status().is_server_error() => {
                        health.record_success();
                        return;
                    }
                    _ => wait = (wait * 2).min(MAX_PROBE_INTERVAL),
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goes_offline_after_the_threshold_and_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(ferry_storage::Store::open(dir.path()).unwrap());
        let metrics = crate::metrics::Metrics::new(store);
        let h = Health::new("u", 2, metrics.upstream("u"));
        let up = || {
            metrics
                .encode(false)
                .0
                .lines()
                .any(|l| l == "ferry_upstream_up{upstream=\"u\"} 1")
        };
        assert!(up());
        assert!(!h.record_failure());
        assert!(h.offline_since().is_none());
        assert!(h.record_failure());
        assert!(h.offline_since().is_some());
        assert!(!up(), "the circuit opened");
        assert!(!h.record_failure(), "already offline: no second probe");
        h.record_success();
        assert!(h.offline_since().is_none());
        assert!(up());
        assert!(!h.record_failure());
    }
}
