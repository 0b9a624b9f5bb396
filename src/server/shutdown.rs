//! Stopping a server: no new connections on any listener, requests in flight (and the
//! upstream fetches they started) run to their end for up to `[server]
//! shutdown_timeout`, then whatever is left is cut. A second stop request cuts at once.
//! A cut client sees its connection close before the declared length: never a
//! complete-looking wrong body.

use std::time::Duration;

use axum_server::Control;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;

use crate::proxy::Proxy;

/// How often the drain looks whether everything has finished.
const CHECK_EVERY: Duration = Duration::from_millis(50);

/// What was still running when the server stopped waiting.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cut {
    pub connections: usize,
    pub fetches: i64,
    /// Why it was cut: the deadline, or a second stop request.
    pub reason: Option<&'static str>,
}

/// Stops accepting on every listener `control` drives and waits, for up to `timeout`
/// or until the next request on `stop`, for open connections to finish their
/// requests and for upstream fetches to end; then closes the connections left.
pub async fn drain(
    control: &Control,
    proxy: &Proxy,
    timeout: Duration,
    stop: &mut BoxStream<'static, ()>,
) -> Cut {
    let fetches = || proxy.metrics().inflight().get();
    tracing::info!(
        connections = control.connection_count(),
        fetches = fetches(),
        timeout = %humantime::format_duration(timeout),
        "shutting down: no longer accepting connections; letting requests in flight finish"
    );
    control.graceful_shutdown(None);
    let finished = async {
        while control.connection_count() > 0 || fetches() > 0 {
            tokio::time::sleep(CHECK_EVERY).await;
        }
    };
    let reason = tokio::select! {
        _ = finished => return Cut::default(),
        _ = tokio::time::sleep(timeout) => "the shutdown deadline passed",
        _ = stop.next() => "a second stop signal came",
    };
    let cut = Cut {
        connections: control.connection_count(),
        fetches: fetches(),
        reason: Some(reason),
    };
    control.shutdown();
    cut
}
