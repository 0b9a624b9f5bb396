//! Client connections: how many are open, what each is doing, and closing those that
//! hold a file descriptor without using it (issue 11).
//!
//! Every accepted connection, plain or TLS, is registered in one [`Tracker`] by the
//! [`Acceptor`] that wraps both listeners. Two wrappers report to it: the [`Stream`]
//! under hyper (and under rustls) sees bytes move, and the [`Service`] above hyper sees
//! requests start and their responses end. From that, for each connection:
//!
//! - **new** (no request yet, TLS handshake included): closed unless its first request
//!   head has arrived whole within `header_read_timeout` of the connection opening;
//! - **HTTP/1, between requests**: once the first byte of the next request arrives,
//!   its head must arrive whole within `header_read_timeout` of that byte (slowloris);
//! - **idle** (no request in flight, HTTP/1 or HTTP/2): closed after `idle_timeout`
//!   since its last response ended. HTTP/2 control frames (pings, window updates) do
//!   not count as activity, and on HTTP/2 a slow request head is only bounded by this;
//! - **a request in flight**: never closed while Ferry (the store, the upstream) is
//!   what it waits on; but when every response on it has a chunk ready and the client
//!   has taken none for `idle_timeout` (a reader that stopped, or on HTTP/2 a
//!   flow-control window never reopened), it is closed. hyper only asks a body for
//!   its next chunk once the previous one found room, so the body wrapper sees this.
//!
//! hyper's own HTTP/1 `header_read_timeout` is not used: it starts whenever hyper waits
//! for a head, so it would also cut keep-alive connections idle for that long, it does
//! not cover the HTTP/1-or-2 detection nor the TLS handshake, and HTTP/2 has nothing
//! like it.
//!
//! The number of open connections is bounded below the process's descriptor limit
//! (`[server] max_connections`). At the bound, a new connection closes one that has
//! no request in flight: first those that never made a request, oldest first, then
//! the one idle longest. Only if every open connection has a request in flight is the
//! new one closed instead. One warning per burst (at most one a minute) says how many
//! were closed.
//!
//! Closing is done from outside the connection's task: a flag and the wakers of its
//! stream; the next poll returns an error and hyper drops the connection. A connection
//! idle after requests is first asked to close gracefully (an HTTP/2 GOAWAY; an idle
//! HTTP/1 connection closes at once) and cut if it is still open a
//! `header_read_timeout` later.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, HttpBody};
use axum_server::ConnectionShutdown;
use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::config::ConnectionLimits;

/// The share of the open-file limit that connections may use; the rest is kept for
/// store files, upstream connections and the listeners themselves.
const SHARE_NUM: u64 = 3;
const SHARE_DEN: u64 = 4;

/// How often a warning about the connection bound or accept errors may be logged.
const WARN_EVERY: Duration = Duration::from_secs(60);
/// How long a burst of closings may go on before it is reported anyway.
const BURST: Duration = Duration::from_secs(10);

/// `[server] max_connections` if set, but never more than the share of the
/// open-file limit (a warning says so when it is cut); that share when unset.
fn max_connections(configured: Option<usize>) -> usize {
    let budget = descriptor_budget();
    let max = match (configured, budget) {
        (Some(max), Some(budget)) if max > budget => {
            tracing::warn!(
                max_connections = max,
                budget,
                "server.max_connections is more than the open-file limit allows; using {budget}"
            );
            budget
        }
        (Some(max), _) => max,
        (None, Some(budget)) => budget,
        (None, None) => usize::MAX,
    };
    max.max(1)
}

/// Three quarters of the soft `RLIMIT_NOFILE`, if there is one.
fn descriptor_budget() -> Option<usize> {
    let (soft, _) = nofile_limit().ok()?;
    if soft == libc::RLIM_INFINITY {
        return None;
    }
    usize::try_from(soft / SHARE_DEN * SHARE_NUM).ok()
}

fn nofile_limit() -> io::Result<(libc::rlim_t, libc::rlim_t)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((limit.rlim_cur, limit.rlim_max))
}

/// Raises the soft open-file limit to the hard one (systemd and many shells start
/// processes at 1,024, too few for a registry's clients). Returns the limit in force.
// `rlim_t` is u64 on 64-bit Linux, where the casts are no-ops, but u32 on 32-bit.
#[allow(clippy::unnecessary_cast)]
pub fn raise_descriptor_limit() -> io::Result<u64> {
    let (soft, hard) = nofile_limit()?;
    if soft >= hard {
        return Ok(soft as u64);
    }
    let limit = libc::rlimit {
        rlim_cur: hard,
        rlim_max: hard,
    };
    // SAFETY: setrlimit only reads the struct it is given.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(hard as u64)
}

/// The open connections of every listener, and the task that closes those past
/// their time.
#[derive(Clone)]
pub struct Tracker {
    inner: Arc<Inner>,
}

struct Inner {
    limits: ConnectionLimits,
    /// `limits.max_connections`, resolved against the open-file limit.
    max_connections: usize,
    epoch: Instant,
    next_id: AtomicU64,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    warnings: Mutex<Warnings>,
}

/// Counts between two warnings, so that a burst is one line: the sweeper logs what
/// was counted once a tick passes with nothing new (or the burst has lasted
/// [`BURST`]), then at most once a minute for each kind.
#[derive(Default)]
struct Warnings {
    changed: bool,
    pending_since: Option<Instant>,
    evicted: u64,
    refused: u64,
    limit_warned: Option<Instant>,
    accept_errors: u64,
    last_accept_error: Option<String>,
    accept_warned: Option<Instant>,
}

/// What is known of one connection. Times are milliseconds since the tracker's epoch
/// plus one, so that 0 means "not set".
struct Conn {
    epoch: Instant,
    opened: u64,
    /// Requests whose response has not ended (HTTP/2 has several).
    in_flight: AtomicUsize,
    requests: AtomicU64,
    multiplexed: AtomicBool,
    /// When the connection last had no request in flight (or opened).
    since: AtomicU64,
    /// When the first byte of the next HTTP/1 request head arrived.
    head_started: AtomicU64,
    /// Requests in flight whose response is waiting on Ferry (its head, or the next
    /// body chunk): those are never the client's fault.
    on_ferry: AtomicUsize,
    /// When a response body was last asked for a chunk: hyper asks once the client
    /// has taken (or has room for) the previous one.
    progress: AtomicU64,
    /// When a graceful close was asked.
    closing: AtomicU64,
    closed: AtomicBool,
    reader: AtomicWaker,
    writer: AtomicWaker,
    /// How to ask hyper to close it gracefully; known once a request has been seen.
    shutdown: Mutex<Option<ConnectionShutdown>>,
}

impl Conn {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Cuts the connection: its next read or write fails, and hyper drops it.
    fn cut(&self) {
        self.closed.store(true, Ordering::Release);
        self.reader.wake();
        self.writer.wake();
    }

    fn is_cut(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Bytes arrived. On an HTTP/1 connection between requests they are the next
    /// request head's first: its clock starts.
    fn bytes_in(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && self.requests.load(Ordering::Relaxed) > 0
            && !self.multiplexed.load(Ordering::Relaxed)
            && self.head_started.load(Ordering::Relaxed) == 0
        {
            self.head_started.store(self.now(), Ordering::Relaxed);
        }
    }
}

/// Why a connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Keep,
    /// Ask hyper to close it; cut it if that does not happen.
    Close(&'static str),
    Cut(&'static str),
}

impl Conn {
    fn verdict(&self, now: u64, limits: &ConnectionLimits) -> Verdict {
        let header = limits.header_read_timeout.as_millis() as u64;
        let idle = limits.idle_timeout.as_millis() as u64;
        let past = |at: u64, limit: u64| at != 0 && now.saturating_sub(at) >= limit;
        if self.in_flight.load(Ordering::Acquire) > 0 {
            // Every response has a chunk ready and none was taken: the client (or, on
            // HTTP/2, its flow-control window) is not reading.
            let stalled = self.on_ferry.load(Ordering::Acquire) == 0
                && past(self.progress.load(Ordering::Relaxed), idle);
            return if stalled {
                Verdict::Cut("the client took no response bytes for the idle timeout")
            } else {
                Verdict::Keep
            };
        }
        let closing = self.closing.load(Ordering::Relaxed);
        if closing != 0 {
            return if past(closing, header) {
                Verdict::Cut("did not close when asked")
            } else {
                Verdict::Keep
            };
        }
        if self.requests.load(Ordering::Relaxed) == 0 {
            return if past(self.opened, header) {
                Verdict::Cut("no request within the header read timeout of opening")
            } else {
                Verdict::Keep
            };
        }
        if past(self.head_started.load(Ordering::Relaxed), header) {
            return Verdict::Cut("request head not received within the header read timeout");
        }
        if past(self.since.load(Ordering::Relaxed), idle) {
            return Verdict::Close("idle for the idle timeout");
        }
        Verdict::Keep
    }
}

impl Tracker {
    /// A tracker enforcing `limits`, and its sweeping task (abort it when the server
    /// stops).
    pub fn start(limits: &ConnectionLimits) -> (Tracker, tokio::task::JoinHandle<()>) {
        let tracker = Tracker {
            inner: Arc::new(Inner {
                limits: *limits,
                max_connections: max_connections(limits.max_connections),
                epoch: Instant::now(),
                next_id: AtomicU64::new(0),
                conns: Mutex::new(HashMap::new()),
                warnings: Mutex::new(Warnings::default()),
            }),
        };
        let sweeper = tokio::spawn(tracker.clone().sweep());
        (tracker, sweeper)
    }

    /// The bound on open connections in force.
    pub fn max_connections(&self) -> usize {
        self.inner.max_connections
    }

    fn now(&self) -> u64 {
        self.inner.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Registers a new connection, making room for it at the bound.
    fn admit(&self) -> io::Result<Registration> {
        let now = self.now();
        let mut conns = self.inner.conns.lock().expect("connections lock");
        let max = self.inner.max_connections;
        // Those already cut are on their way out: only count the others (and only
        // walk the map when it is full).
        if conns.len() >= max && conns.values().filter(|c| !c.is_cut()).count() >= max {
            // Never-used connections first (oldest first), then the one idle longest.
            let victim = conns
                .values()
                .filter(|c| !c.is_cut() && c.in_flight.load(Ordering::Acquire) == 0)
                .min_by_key(|c| {
                    let used = c.requests.load(Ordering::Relaxed) > 0;
                    let at = if used {
                        c.since.load(Ordering::Relaxed)
                    } else {
                        c.opened
                    };
                    (used, at)
                })
                .cloned();
            match victim {
                Some(victim) => {
                    victim.cut();
                    self.note(|w| w.evicted += 1);
                }
                None => {
                    drop(conns);
                    self.note(|w| w.refused += 1);
                    return Err(io::Error::other(
                        "connection limit reached and every connection has a request in flight",
                    ));
                }
            }
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            epoch: self.inner.epoch,
            opened: now,
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            multiplexed: AtomicBool::new(false),
            since: AtomicU64::new(now),
            head_started: AtomicU64::new(0),
            on_ferry: AtomicUsize::new(0),
            progress: AtomicU64::new(now),
            closing: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            reader: AtomicWaker::new(),
            writer: AtomicWaker::new(),
            shutdown: Mutex::new(None),
        });
        conns.insert(id, conn.clone());
        Ok(Registration {
            tracker: self.clone(),
            id,
            conn,
        })
    }

    /// Notes an error of a listener's accept (out of descriptors, most likely): axum_server
    /// retries after 50 ms, so this only needs saying, once a minute.
    pub fn accept_error(&self, error: &io::Error) {
        let text = error.to_string();
        self.note(|w| {
            w.accept_errors += 1;
            w.last_accept_error = Some(text);
        });
    }

    /// Counts an event, for the sweeper's next warning.
    fn note(&self, count: impl FnOnce(&mut Warnings)) {
        let mut w = self.inner.warnings.lock().expect("warnings lock");
        count(&mut w);
        w.changed = true;
        w.pending_since.get_or_insert_with(Instant::now);
    }

    fn warn_counted(&self) {
        let open = self.inner.conns.lock().expect("connections lock").len();
        let mut w = self.inner.warnings.lock().expect("warnings lock");
        let quiet = !std::mem::take(&mut w.changed);
        if !quiet && w.pending_since.is_none_or(|at| at.elapsed() < BURST) {
            return;
        }
        let due = |at: Option<Instant>| at.is_none_or(|at| at.elapsed() >= WARN_EVERY);
        let max = self.inner.max_connections;
        if (w.evicted > 0 || w.refused > 0) && due(w.limit_warned) {
            let mut message = format!(
                "connection limit reached ({max} open connections): closed {} connection(s) with no request in flight (never-used first, oldest first) to serve new ones",
                w.evicted
            );
            if w.refused > 0 {
                message += &format!(
                    "; refused {} new connection(s) because every open one had a request in flight",
                    w.refused
                );
            }
            tracing::warn!(
                max_connections = max,
                closed = w.evicted,
                refused = w.refused,
                "{message}"
            );
            w.evicted = 0;
            w.refused = 0;
            w.limit_warned = Some(Instant::now());
        }
        if w.accept_errors > 0 && due(w.accept_warned) {
            tracing::warn!(
                errors = w.accept_errors,
                error = w.last_accept_error.as_deref().unwrap_or(""),
                open,
                max_connections = max,
                "cannot accept connections ({} failure(s)); retrying",
                w.accept_errors
            );
            w.accept_errors = 0;
            w.last_accept_error = None;
            w.accept_warned = Some(Instant::now());
        }
        if w.evicted == 0 && w.refused == 0 && w.accept_errors == 0 {
            w.pending_since = None;
        }
    }

    /// Closes, at a few ticks per timeout, what is past its time.
    async fn sweep(self) {
        let shortest = self
            .inner
            .limits
            .header_read_timeout
            .min(self.inner.limits.idle_timeout);
        let tick = (shortest / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let now = self.now();
            let conns: Vec<Arc<Conn>> = {
                let conns = self.inner.conns.lock().expect("connections lock");
                conns.values().filter(|c| !c.is_cut()).cloned().collect()
            };
            for conn in conns {
                match conn.verdict(now, &self.inner.limits) {
                    Verdict::Keep => {}
                    Verdict::Cut(why) => {
                        tracing::debug!("closing a client connection: {why}");
                        conn.cut();
                    }
                    Verdict::Close(why) => {
                        tracing::debug!("closing a client connection: {why}");
                        conn.closing.store(now, Ordering::Relaxed);
                        match conn.shutdown.lock().expect("shutdown lock").as_ref() {
                            Some(shutdown) => shutdown.graceful_shutdown(),
                            None => conn.cut(),
                        }
                    }
                }
            }
            self.warn_counted();
        }
    }
}

/// A connection's place in the tracker, given up when its stream is dropped (that is
/// when its descriptor closes).
struct Registration {
    tracker: Tracker,
    id: u64,
    conn: Arc<Conn>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut conns) = self.tracker.inner.conns.lock() {
            conns.remove(&self.id);
        }
    }
}

/// Bounds what hyper may queue for one HTTP/1 connection (and read of a request
/// head), on every listener. Its default, ~400 KiB, is what 64 parallel downloads of
/// warm blobs would hold in memory when chunks come straight from the page cache
/// faster than the socket drains; 64 KiB keeps every connection to about one chunk in
/// flight.
pub(crate) fn limit_http1_buffers<A>(server: &mut axum_server::Server<std::net::SocketAddr, A>) {
    server.http_builder().http1().max_buf_size(64 * 1024);
}

/// Puts `server` under `tracker`: accept errors of its listener (out of descriptors)
/// are counted and logged once a minute rather than retried in silence. The caller
/// sets the [`Acceptor`].
pub fn watch_accept_errors<A>(
    server: axum_server::Server<std::net::SocketAddr, A>,
    tracker: &Tracker,
) -> axum_server::Server<std::net::SocketAddr, A> {
    let tracker = tracker.clone();
    server.accept_error_handler(move |peer, error| {
        // With a peer, it is one connection's own failure (a TLS handshake, a refusal
        // at the bound), already accounted for or not the listener's concern.
        if peer.is_none() {
            tracker.accept_error(error);
        }
    })
}

/// The axum_server acceptor that registers each connection (put it under the TLS
/// acceptor, so that it sees the TCP stream).
#[derive(Clone)]
pub struct Acceptor {
    tracker: Tracker,
}

impl Acceptor {
    pub fn new(tracker: Tracker) -> Acceptor {
        Acceptor { tracker }
    }
}

impl<S> axum_server::accept::Accept<TcpStream, S> for Acceptor {
    type Stream = Stream;
    type Service = Service<S>;
    type Future = std::future::Ready<io::Result<(Stream, Service<S>)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        std::future::ready(self.tracker.admit().map(|registration| {
            let conn = registration.conn.clone();
            (
                Stream {
                    inner: stream,
                    registration,
                },
                Service {
                    inner: service,
                    conn,
                },
            )
        }))
    }
}

/// A tracked TCP stream: reports bytes moving, fails once the connection is cut.
pub struct Stream {
    inner: TcpStream,
    registration: Registration,
}

/// Registers `cx` on `waker`, then fails if the connection is cut. Registered before
/// the flag is read: a cut between the two still wakes the task.
fn uncut(conn: &Conn, waker: &AtomicWaker, cx: &Context<'_>) -> io::Result<()> {
    waker.register(cx.waker());
    if conn.is_cut() {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "connection closed by Ferry",
        ));
    }
    Ok(())
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let conn = &this.registration.conn;
        if let Err(e) = uncut(conn, &conn.reader, cx) {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            conn.bytes_in();
        }
        polled
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let conn = &this.registration.conn;
        if let Err(e) = uncut(conn, &conn.writer, cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let conn = &this.registration.conn;
        if let Err(e) = uncut(conn, &conn.writer, cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The per-connection service, wrapped to count requests in flight until their
/// response bodies end.
#[derive(Clone)]
pub struct Service<S> {
    inner: S,
    conn: Arc<Conn>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower_service::Service<http::Request<B>> for Service<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<http::Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let conn = &self.conn;
        if req.version() == http::Version::HTTP_2 {
            conn.multiplexed.store(true, Ordering::Relaxed);
        }
        if conn.requests.fetch_add(1, Ordering::Relaxed) == 0
            && let Some(shutdown) = req.extensions().get::<ConnectionShutdown>()
        {
            *conn.shutdown.lock().expect("shutdown lock") = Some(shutdown.clone());
        }
        let guard = InFlight::start(conn.clone());
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| Body::new(Tracked { inner: body, guard })))
        })
    }
}

/// One request in flight, until its response body is dropped; and whose turn it is,
/// Ferry's (to produce the response or its next chunk) or the client's (to take it).
struct InFlight {
    conn: Arc<Conn>,
    on_ferry: bool,
}

impl InFlight {
    fn start(conn: Arc<Conn>) -> InFlight {
        conn.on_ferry.fetch_add(1, Ordering::AcqRel);
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        conn.head_started.store(0, Ordering::Relaxed);
        InFlight {
            conn,
            on_ferry: true,
        }
    }

    /// Notes a poll of the response body: the client has made room for a chunk.
    fn polled(&mut self, on_ferry: bool) {
        let conn = &self.conn;
        conn.progress.store(conn.now(), Ordering::Relaxed);
        if on_ferry != self.on_ferry {
            self.on_ferry = on_ferry;
            if on_ferry {
                conn.on_ferry.fetch_add(1, Ordering::AcqRel);
            } else {
                conn.on_ferry.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let conn = &self.conn;
        conn.since.store(conn.now(), Ordering::Relaxed);
        if self.on_ferry {
            conn.on_ferry.fetch_sub(1, Ordering::AcqRel);
        }
        conn.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body holding its request's [`InFlight`].
struct Tracked {
    inner: Body,
    guard: InFlight,
}

impl HttpBody for Tracked {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        // A chunk handed over is the client's to take; anything else (waiting on the
        // store or the upstream, the end, an error) is not.
        let handed_over = matches!(polled, Poll::Ready(Some(Ok(_))));
        self.guard.polled(!handed_over);
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ConnectionLimits {
        ConnectionLimits {
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
            max_connections: Some(2),
        }
    }

    fn conn(tracker: &Tracker) -> Registration {
        tracker.admit().expect("admitted")
    }

    #[tokio::test]
    async fn timeouts_mean_what_their_names_say() {
        let (tracker, sweeper) = Tracker::start(&limits());
        let l = limits();
        let r = conn(&tracker);
        let c = &r.conn;
        let s = |secs: u64| c.opened + secs * 1000;
        // New: the first head within the header read timeout of opening.
        assert_eq!(c.verdict(s(29), &l), Verdict::Keep);
        assert!(matches!(c.verdict(s(30), &l), Verdict::Cut(_)));
        // A request in flight is never cut while Ferry is what it waits on...
        let mut guard = InFlight::start(c.clone());
        c.requests.fetch_add(1, Ordering::Relaxed);
        assert_eq!(c.verdict(s(1000), &l), Verdict::Keep);
        // ... but is once the client has left a chunk untaken for the idle timeout.
        guard.polled(false);
        let handed = c.progress.load(Ordering::Relaxed);
        assert_eq!(c.verdict(handed + 60_000, &l), Verdict::Keep);
        assert!(matches!(c.verdict(handed + 90_000, &l), Verdict::Cut(_)));
        guard.polled(true);
        assert_eq!(c.verdict(handed + 1_000_000, &l), Verdict::Keep);
        drop(guard);
        // Idle after a response: the idle timeout, not the header one.
        let since = c.since.load(Ordering::Relaxed);
        assert_eq!(c.verdict(since + 60_000, &l), Verdict::Keep);
        assert!(matches!(c.verdict(since + 90_000, &l), Verdict::Close(_)));
        // A byte of the next HTTP/1 head starts the header read timeout.
        c.bytes_in();
        let head = c.head_started.load(Ordering::Relaxed);
        assert!(head != 0);
        assert!(matches!(c.verdict(head + 30_000, &l), Verdict::Cut(_)));
        sweeper.abort();
    }

    #[tokio::test]
    async fn at_the_bound_a_never_used_connection_goes_first() {
        let (tracker, sweeper) = Tracker::start(&limits());
        let used = conn(&tracker);
        used.conn.requests.fetch_add(1, Ordering::Relaxed);
        let fresh = conn(&tracker);
        let _third = conn(&tracker);
        assert!(fresh.conn.is_cut() && !used.conn.is_cut());
        // Then the idle one; a connection with a request in flight is never closed.
        let _busy = InFlight::start(_third.conn.clone());
        drop(fresh);
        let _fourth = conn(&tracker);
        assert!(used.conn.is_cut());
        sweeper.abort();
    }
}
