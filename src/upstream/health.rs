//! Whether an upstream answers, as a whole. The circuit opens only on evidence that
//! the upstream itself is unreachable, never on what one request's path got: after
//! `offline_after_failures` consecutive failures (connect errors, timeouts, broken-off
//! answers, a failing `/v2/` probe) the upstream counts as offline: requests stop
//! waiting on it — what is cached is served at once — and one background task probes
//! it with backoff until it answers again.
//!
//! A 5xx answered to one request is not such evidence by itself: any client can make
//! a registry answer 500 (Distribution does for a blob's digest asked as a manifest),
//! and if that opened the circuit one anonymous request would cut every other client
//! off. So a 5xx makes Ferry ask `GET /v2/` once (one probe at a time, however many
//! 5xx come meanwhile), and only a failing probe counts as a failure.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use url::Url;

use crate::metrics::UpstreamMetrics;

const FIRST_PROBE: Duration = Duration::from_secs(1);
/// After a probe found the upstream up, 5xx answers within this long are taken as
/// their requests' own without probing again: a client sending 5xx-provoking requests
/// in a tight loop gets Ferry to send at most one extra `/v2/` a second.
const CONFIRMED_UP_FOR: Duration = Duration::from_secs(1);
const MAX_PROBE_INTERVAL: Duration = Duration::from_secs(30);

#[derive(Default)]
struct State {
    failures: u32,
    offline_since: Option<SystemTime>,
    /// A probe confirming a 5xx is under way: later 5xx do not start another.
    confirming: bool,
    /// When such a probe last found the upstream up.
    confirmed_up_at: Option<Instant>,
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

    /// Decides what a 5xx answered to one request says about the upstream: probes
    /// `GET <base>/v2/` once and counts a failure only if the probe fails too. Returns
    /// at once when a probe is already under way, or found the upstream up less than
    /// [`CONFIRMED_UP_FOR`] ago (or it already counts as offline); otherwise once the
    /// probe has answered, so the next request sees its verdict. The probe runs as its
    /// own task, so a client hanging up mid-way does not leave it half done.
    pub async fn confirm_server_error(
        self: &Arc<Self>,
        http: reqwest::Client,
        base: Url,
        timeout: Duration,
    ) {
        {
            let mut s = self.state.lock().expect("health lock");
            let recently_up = s
                .confirmed_up_at
                .is_some_and(|at| at.elapsed() < CONFIRMED_UP_FOR);
            if s.confirming || recently_up || s.offline_since.is_some() {
                return;
            }
            s.confirming = true;
        }
        let health = self.clone();
        let probe = tokio::spawn(async move {
            let up = probe(&http, &base, timeout).await;
            {
                let mut s = health.state.lock().expect("health lock");
                s.confirming = false;
                s.confirmed_up_at = up.then(Instant::now);
            }
            if up {
                health.record_success();
            } else {
                tracing::warn!(upstream = %health.upstream, "upstream answered 5xx and its /v2/ probe failed too");
                if health.record_failure() {
                    health.spawn_probe(http, base, timeout);
                }
            }
        });
        let _ = probe.await;
    }

    /// Probes `GET <base>/v2/` with backoff until the upstream gives any HTTP answer
    /// (401 included: it is up), then marks it online.
    pub fn spawn_probe(self: &Arc<Self>, http: reqwest::Client, base: Url, timeout: Duration) {
        let health = self.clone();
        tokio::spawn(async move {
            let mut wait = FIRST_PROBE;
            while health.offline_since().is_some() {
                tokio::time::sleep(wait).await;
                if probe(&http, &base, timeout).await {
                    health.record_success();
                    return;
                }
                wait = (wait * 2).min(MAX_PROBE_INTERVAL);
            }
        });
    }
}

/// Whether `GET <base>/v2/` gets an HTTP answer other than a 5xx within `timeout`
/// (401 included: the upstream is there, it wants credentials).
async fn probe(http: &reqwest::Client, base: &Url, timeout: Duration) -> bool {
    let Ok(url) = base.join("v2/") else {
        return false;
    };
    matches!(
        tokio::time::timeout(timeout, http.get(url).send()).await,
        Ok(Ok(resp)) if !resp.status().is_server_error()
    )
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

    /// A `/v2/` on 127.0.0.1 answering `status` after 200 ms; counts its requests.
    async fn v2_answering(status: u16) -> (Url, Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = count.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let _ = conn.read(&mut [0; 4096]).await;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let head = format!(
                        "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    );
                    let _ = conn.write_all(head.as_bytes()).await;
                });
            }
        });
        (url, count)
    }

    fn health(threshold: u32) -> (Arc<Health>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(ferry_storage::Store::open(dir.path()).unwrap());
        let metrics = crate::metrics::Metrics::new(store).upstream("u");
        (Health::new("u", threshold, metrics), dir)
    }

    #[tokio::test]
    async fn a_5xx_opens_the_circuit_only_if_the_probe_fails_and_probes_once() {
        let http = reqwest::Client::new();
        let timeout = Duration::from_secs(5);

        let (up, probes) = v2_answering(200).await;
        let (h, _dir) = health(1);
        let confirms = (0..5).map(|_| h.confirm_server_error(http.clone(), up.clone(), timeout));
        futures_util::future::join_all(confirms).await;
        assert!(
            h.offline_since().is_none(),
            "/v2/ answers: the 5xx was one path's"
        );
        assert_eq!(
            probes.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "one probe for five 5xx"
        );
        h.confirm_server_error(http.clone(), up.clone(), timeout)
            .await;
        assert_eq!(
            probes.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "no second probe right after one found the upstream up"
        );

        let (down, _) = v2_answering(503).await;
        let (h, _dir) = health(1);
        h.confirm_server_error(http.clone(), down.clone(), timeout)
            .await;
        assert!(h.offline_since().is_some(), "/v2/ fails too: offline");

        // With a threshold of 2, one failing probe is one failure.
        let (h, _dir) = health(2);
        h.confirm_server_error(http.clone(), down.clone(), timeout)
            .await;
        assert!(h.offline_since().is_none());
        h.confirm_server_error(http, down, timeout).await;
        assert!(h.offline_since().is_some());
    }
}
