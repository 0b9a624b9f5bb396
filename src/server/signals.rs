//! How a running server is told to stop and to reload: Unix signals for `ferry serve`
//! (SIGTERM or SIGINT stop it, SIGHUP reloads), a future for a server run in process.

use std::future::Future;
use std::path::PathBuf;

use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream};
use tokio::signal::unix::{SignalKind, signal};

/// Where a reload reads the configuration from: the file `ferry serve --config` named,
/// with the `FERRY_*` overrides of the environment it started in.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    pub path: PathBuf,
    pub env: Vec<(String, String)>,
}

/// The requests a running server receives.
pub struct Controls {
    /// Stop requests: the first lets requests in flight finish, the second cuts them.
    /// Never ends.
    pub(crate) stop: BoxStream<'static, ()>,
    /// Reload requests. Never ends.
    pub(crate) reload: BoxStream<'static, ()>,
    /// What a reload reads; `None`: the built-in configuration, nothing to reload.
    pub(crate) source: Option<ConfigSource>,
}

impl Controls {
    /// SIGTERM and SIGINT stop, SIGHUP reloads `source`. The handlers are installed
    /// here, before the server starts, so that an early SIGHUP does not end the
    /// process (its default action).
    pub fn from_signals(source: Option<ConfigSource>) -> std::io::Result<Controls> {
        let term = signal_stream(SignalKind::terminate())?;
        let int = signal_stream(SignalKind::interrupt())?;
        Ok(Controls {
            stop: stream::select(term, int).boxed(),
            reload: signal_stream(SignalKind::hangup())?,
            source,
        })
    }

    /// Stops (and then lets requests in flight finish) when `stop` completes; no
    /// reloads.
    pub fn stop_on(stop: impl Future<Output = ()> + Send + 'static) -> Controls {
        Controls {
            stop: stream::once(stop).chain(stream::pending()).boxed(),
            reload: stream::pending().boxed(),
            source: None,
        }
    }
}

/// Every delivery of `kind`, as a stream that never ends.
fn signal_stream(kind: SignalKind) -> std::io::Result<BoxStream<'static, ()>> {
    let s = signal(kind)?;
    Ok(stream::unfold(s, |mut s| async move {
        match s.recv().await {
            Some(()) => Some(((), s)),
            // The driver is gone (the runtime is shutting down): nothing more comes.
            None => std::future::pending().await,
        }
    })
    .boxed())
}
