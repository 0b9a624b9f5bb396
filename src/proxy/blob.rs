//! Blobs: served from the store when held for the repository, otherwise fetched once
//! from the upstream and streamed to every requester while it is stored.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use http::{HeaderMap, Method, StatusCode};

use ferry_oci::Digest;

use ferry_storage::Error as StorageError;

use super::inflight::{Joined, Leader, State, Via};
use super::{Asker, CacheStatus, Error, Proxy, Result, Target};

/// How many times one blob download is resumed after its connection broke.
const MAX_RESUMES: u32 = 5;
/// Upstream bytes are written to the store in pieces of about this size.
const WRITE_CHUNK: usize = 512 * 1024;
/// Bytes short of a piece are written anyway once the upstream has sent nothing for
/// this long: readers of a download that stalls get what has arrived, not nothing
/// until the stall ends.
const WRITE_IDLE: std::time::Duration = std::time::Duration::from_millis(200);

/// A blob ready to serve.
pub struct Blob {
    pub digest: Digest,
    /// The whole blob's size.
    pub size: u64,
    /// The inclusive byte range being served, when answering a `Range` request.
    pub range: Option<(u64, u64)>,
    pub cache: CacheStatus,
    /// The bytes (of `range`, or all); `None` for a `HEAD`.
    pub body: Option<BoxStream<'static, io::Result<Bytes>>>,
}

/// A single `Range: bytes=…` request. Multiple ranges are not supported: such a
/// header is ignored, as RFC 9110 allows, and the whole blob is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `bytes=a-` or `bytes=a-b`
    From { start: u64, end: Option<u64> },
    /// `bytes=-n`: the last n bytes.
    Suffix(u64),
}

impl ByteRange {
    /// Parses a `Range` header; `None` if it should be ignored.
    pub fn parse(header: &str) -> Option<ByteRange> {
        let spec = header.trim().strip_prefix("bytes=")?.trim();
        if spec.contains(',') {
            return None;
        }
        let (a, b) = spec.split_once('-')?;
        let (a, b) = (a.trim(), b.trim());
        if a.is_empty() {
            return Some(ByteRange::Suffix(b.parse().ok()?));
        }
        let start = a.parse().ok()?;
        let end = if b.is_empty() {
            None
        } else {
            Some(b.parse().ok()?)
        };
        if end.is_some_and(|e| e < start) {
            return None;
        }
        Some(ByteRange::From { start, end })
    }

    /// The inclusive range this selects in a blob of `size` bytes.
    pub fn resolve(self, size: u64) -> Result<(u64, u64)> {
        let unsatisfiable = Error::RangeNotSatisfiable { size };
        match self {
            ByteRange::From { start, end } if start < size => {
                Ok((start, end.unwrap_or(u64::MAX).min(size - 1)))
            }
            ByteRange::Suffix(n) if n > 0 && size > 0 => Ok((size - n.min(size), size - 1)),
            _ => Err(unsatisfiable),
        }
    }
}

impl Proxy {
    /// The blob `digest` in `t`, or the part `range` selects. With `want_body =
    /// false` (a HEAD) nothing is downloaded.
    pub async fn blob(
        self: &Arc<Self>,
        t: &Target,
        digest: &Digest,
        range: Option<ByteRange>,
        want_body: bool,
    ) -> Result<Blob> {
        self.blob_for(Asker::Client, t, digest, range, want_body)
            .await
    }

    /// [`Proxy::blob`] for another replica, which asks because it sees this one as the
    /// digest's owner: never forwarded to a replica again (see `crate::peers`).
    pub async fn blob_for_peer(
        self: &Arc<Self>,
        t: &Target,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> Result<Blob> {
        self.blob_for(Asker::Peer, t, digest, range, true).await
    }

    async fn blob_for(
        self: &Arc<Self>,
        asker: Asker,
        t: &Target,
        digest: &Digest,
        range: Option<ByteRange>,
        want_body: bool,
    ) -> Result<Blob> {
        // Leased from before the lookup until the body is done or dropped, so that
        // eviction (`crate::server::housekeeping`) never deletes a blob a response is using.
        let lease = self.store.blobs.lease(digest);
        let mut blob = self
            .blob_unleased(asker, t, digest, range, want_body)
            .await?;
        if let Some(body) = blob.body.take() {
            blob.body = Some(
                body.map(move |chunk| {
                    let _held = &lease;
                    chunk
                })
                .boxed(),
            );
        }
        Ok(blob)
    }

    async fn blob_unleased(
        self: &Arc<Self>,
        asker: Asker,
        t: &Target,
        digest: &Digest,
        range: Option<ByteRange>,
        want_body: bool,
    ) -> Result<Blob> {
        // A stored file whose size disagrees with the index is dropped here and
        // fetched again like any miss: never served, whatever `X-Cache` would say.
        if let Some(size) = self.store.stored_size(digest)? {
            return self.stored_blob(t, digest, size, range, want_body).await;
        }
        if !want_body {
            return self.head_uncached_blob(t, digest, range).await;
        }
        // Another replica's request is never forwarded: it came to the owner.
        let owner = match asker {
            Asker::Client => self.peers.as_ref().and_then(|p| p.owner(digest)),
            Asker::Peer => None,
        };
        let via = if owner.is_some() {
            Via::Owner
        } else {
            Via::Direct
        };
        let joined =
            self.inflight
                .join_or_start(&t.repo, digest, via, asker == Asker::Client, || {
                    matches!(self.store.stored_size(digest), Ok(Some(_)))
                });
        let (fetch, cache) = match joined {
            Joined::Follower(f) => (f, CacheStatus::Joined),
            Joined::Leader(f, leader) => {
                let (proxy, t, d) = (self.clone(), t.clone(), digest.clone());
                // Spawned, not awaited: the fetch outlives a client that goes away.
                tokio::spawn(async move { proxy.run_fetch(t, d, owner, leader).await });
                (f, CacheStatus::Miss)
            }
            Joined::Stored => {
                let size = self.store.stored_size(digest)?.unwrap_or_default();
                return self.stored_blob(t, digest, size, range, want_body).await;
            }
        };
        let size = fetch.started().await?;
        // A fetch that is only being written to the store serves from local bytes.
        let cache = if cache == CacheStatus::Joined && fetch.is_verified() {
            CacheStatus::Hit
        } else if cache == CacheStatus::Miss {
            fetch.origin().unwrap_or(cache)
        } else {
            cache
        };
        let range = resolve(range, size)?;
        let (start, end) = bounds(range, size);
        let body = if size == 0 {
            futures_util::stream::empty().boxed()
        } else {
            fetch.stream(start, end).boxed()
        };
        Ok(Blob {
            digest: digest.clone(),
            size,
            range,
            cache,
            body: Some(body),
        })
    }

    async fn stored_blob(
        &self,
        t: &Target,
        digest: &Digest,
        size: u64,
        range: Option<ByteRange>,
        want_body: bool,
    ) -> Result<Blob> {
        let index = &self.store.index;
        if !index.is_linked(&t.repo, digest)? {
            // Stored for another repository: serve it here only if the upstream says
            // this repository has it too, or content would leak across repositories.
            self.upstream_blob_size(t, digest).await?;
            index.link(&t.repo, digest)?;
        }
        // Last access was stamped in memory by the `stat` that found the blob; the
        // housekeeping task writes it to the index, so a hit writes nothing here.
        let range = resolve(range, size)?;
        let (start, end) = bounds(range, size);
        let body = if want_body {
            let len = if size == 0 { 0 } else { end + 1 - start };
            // Gone since it was found: the lease keeps eviction off it, so only an
            // operator can have removed it; an error, as a failed open always was.
            let gone = || io::Error::new(io::ErrorKind::NotFound, "stored blob vanished");
            Some(
                self.blob_store
                    .read_range(digest, start, len)
                    .await?
                    .ok_or_else(gone)?,
            )
        } else {
            None
        };
        Ok(Blob {
            digest: digest.clone(),
            size,
            range,
            cache: CacheStatus::Hit,
            body,
        })
    }

    async fn head_uncached_blob(
        &self,
        t: &Target,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> Result<Blob> {
        let (size, cache) = match self.inflight.get(&t.repo, digest) {
            Some(f) => (f.started().await?, CacheStatus::Joined),
            None => match self.shared_blob(t, digest).await {
                Some(size) => (size, CacheStatus::Shared),
                None => (self.upstream_blob_size(t, digest).await?, CacheStatus::Miss),
            },
        };
        let range = resolve(range, size)?;
        Ok(Blob {
            digest: digest.clone(),
            size,
            range,
            cache,
            body: None,
        })
    }

    /// The size the upstream reports for `digest` in `t` (a `HEAD`).
    pub(super) async fn upstream_blob_size(&self, t: &Target, digest: &Digest) -> Result<u64> {
        upstream_blob(t, Method::HEAD, digest)
            .await
            .map(|(_, size)| size)
    }

    /// The fetch task: downloads `digest`, publishing progress to readers, and stores it
    /// if and only if it verifies.
    async fn run_fetch(
        self: Arc<Self>,
        t: Target,
        digest: Digest,
        owner: Option<SocketAddr>,
        leader: Leader,
    ) {
        // From before the blob is stored until it is copied to the shared store: the
        // local tier's eviction may run the moment it is stored.
        let lease = self.store.blobs.lease(&digest);
        match self.fetch_into_store(&t, &digest, owner, &leader).await {
            Ok((size, file, source)) => {
                leader.finish(State::Done { size, file });
                if source == Source::Upstream {
                    self.share_blob(&t, &digest, size, lease);
                }
            }
            Err(e) => {
                // A failure before any bytes went out reaches each client as an error
                // response, logged with its request; after that only this line tells.
                if leader.is_streaming() {
                    tracing::warn!(upstream = t.upstream.name(), repo = %t.repo.name, %digest, error = %e, "blob fetch failed mid-stream; clients cut off, nothing stored");
                }
                leader.finish(State::Failed(e));
            }
        }
    }

    async fn fetch_into_store(
        &self,
        t: &Target,
        digest: &Digest,
        owner: Option<SocketAddr>,
        leader: &Leader,
    ) -> Result<(u64, Arc<std::fs::File>, Source)> {
        let up = &t.upstream;
        let broken = |detail: String| Error::UpstreamBroken {
            upstream: up.name().to_string(),
            digest: digest.clone(),
            detail,
        };
        // A download an earlier run left in `partial/` (a crash, or an upstream that
        // broke off) is continued from its bytes rather than started over.
        let d = digest.clone();
        let mut ing = self.blocking(move |s| s.blobs.ingest_resumable(&d)).await?;
        let mut source = match (self.shared_blob(t, digest).await, owner) {
            (Some(size), _) => Source::Shared { size },
            (None, Some(addr)) => Source::Peer(addr),
            (None, None) => Source::Upstream,
        };
        let mut body = match self.first_body(source, &mut ing, t, digest).await {
            Err(e) if source != Source::Upstream => {
                self.source_failed(source, t, digest, &e);
                source = Source::Upstream;
                self.first_body(source, &mut ing, t, digest).await?
            }
            r => r?,
        };
        leader.reading_from(source.cache_status());
        let size = body.size;
        ing.expect_size(size)?;
        let mut ingest = Some(ing);
        // Keeps what was downloaded for the next attempt when the upstream broke off.
        let keep = |ingest: &mut Option<ferry_storage::Ingest>| {
            if let Some(i) = ingest.take() {
                i.keep_for_resume();
            }
        };
        let file = Arc::new(ingest.as_ref().expect("ingest").reader()?);
        let start = ingest.as_ref().map_or(0, |i| i.written());
        leader.publish(State::Receiving {
            size,
            file: file.clone(),
            readable: start.min(size.saturating_sub(1)),
        });

        // A dropped connection is resumed with a Range request from the bytes already
        // written (the hash simply continues), so readers see no error. A shared store
        // that breaks off is not asked again: the rest comes from the upstream.
        let mut resumes = 0;
        loop {
            let outcome = pump(body.bytes, body.skip, &mut ingest, size, |written| {
                // Hold the last byte back until the digest verified.
                leader.publish(State::Receiving {
                    size,
                    file: file.clone(),
                    readable: written.min(size.saturating_sub(1)),
                });
            })
            .await;
            let written = ingest.as_ref().map_or(0, |i| i.written());
            let reason = match outcome {
                Ok(()) if written == size => break,
                Ok(()) => format!("the body ended after {written} of {size} bytes"),
                Err(Pumped::Source(reason)) => reason,
                Err(Pumped::Storage(StorageError::SizeMismatch { actual, .. })) => {
                    return Err(broken(format!(
                        "sent {actual} bytes, more than its Content-Length {size}"
                    )));
                }
                Err(Pumped::Storage(e)) => return Err(e.into()),
            };
            if resumes == MAX_RESUMES {
                keep(&mut ingest);
                return Err(broken(format!("{reason} (after {resumes} resumptions)")));
            }
            resumes += 1;
            if source != Source::Upstream {
                self.source_failed(source, t, digest, &reason);
                tracing::info!(repo = %t.repo.name, %digest, written, size, "resuming from the upstream");
                source = Source::Upstream;
            } else {
                tracing::warn!(upstream = up.name(), repo = %t.repo.name, %digest, written, size, error = %reason, "upstream connection broke mid-blob; resuming with a Range request");
            }
            match self.open(source, t, digest, written).await {
                Ok(Some(b)) if b.size == size => body = b,
                Ok(_) => {
                    return Err(broken(format!(
                        "answered a resume from byte {written} with another blob or range"
                    )));
                }
                Err(e) => {
                    keep(&mut ingest);
                    return Err(e);
                }
            }
        }
        let ing = ingest.take().expect("ingest present at the end");
        let verified = self
            .blocking(move |_| ing.verify())
            .await
            .map_err(|e| match e {
                Error::Storage(se) => match &*se {
                    StorageError::DigestMismatch { .. } if source != Source::Upstream => {
                        // Verified when it was stored there: damaged since (or a peer
                        // that is not what it claims).
                        tracing::error!(repo = %t.repo.name, %digest, ?source, "bytes from the shared store or a peer do not match their digest; nothing stored");
                        Error::Storage(se)
                    }
                    StorageError::DigestMismatch { .. } => {
                        up.note_digest_mismatch(digest);
                        Error::UpstreamDigestMismatch {
                            upstream: up.name().to_string(),
                            expected: digest.clone(),
                        }
                    }
                    StorageError::SizeMismatch { actual, .. } => {
                        broken(format!("ended after {actual} of {size} bytes"))
                    }
                    _ => Error::Storage(se),
                },
                e => e,
            })?;
        // The bytes are right: readers may have the last one now. Making them durable
        // and visible in the store (fsyncs, the index) is no reason to keep a client
        // waiting; requests arriving meanwhile join this fetch and read the same file.
        leader.publish(State::Receiving {
            size,
            file: file.clone(),
            readable: size,
        });
        let (repo, d) = (t.repo.clone(), digest.clone());
        self.blocking(move |s| {
            verified.commit()?;
            s.index.blob_stored_in(&repo, &d, size)?;
            s.index.flush()
        })
        .await?;
        Ok((size, file, source))
    }

    /// The body a fetch starts with: from the bytes an earlier attempt kept when
    /// `source` can continue them, else from the start.
    async fn first_body(
        &self,
        source: Source,
        ing: &mut ferry_storage::Ingest,
        t: &Target,
        digest: &Digest,
    ) -> Result<Body> {
        let have = ing.written();
        if have > 0 {
            match self.open(source, t, digest, have).await? {
                Some(b) if b.size >= have => return Ok(b),
                // The kept bytes cannot be a prefix of this blob: start over.
                _ => ing.reset()?,
            }
        }
        self.open(source, t, digest, 0)
            .await?
            .ok_or_else(|| Error::BlobUnknown {
                repo: t.repo.name.to_string(),
                digest: digest.clone(),
            })
    }

    /// Blob `digest` from `source`, from byte `from` on; `None` when the source has
    /// no such range (the range is unsatisfiable, or another blob answered).
    async fn open(
        &self,
        source: Source,
        t: &Target,
        digest: &Digest,
        from: u64,
    ) -> Result<Option<Body>> {
        match source {
            Source::Upstream => {
                let opened = if from == 0 {
                    let (resp, size) = upstream_blob(t, Method::GET, digest).await?;
                    Some((resp, 0, size))
                } else {
                    ranged(t, digest, from).await?
                };
                Ok(opened.map(|(resp, skip, size)| Body {
                    bytes: upstream_bytes(resp, t.upstream.clone()),
                    skip,
                    size,
                }))
            }
            Source::Peer(addr) => {
                let Some(peers) = &self.peers else {
                    return Ok(None);
                };
                let resp = peers
                    .blob(addr, t.upstream.name(), t.repo.name.as_str(), digest, from)
                    .await
                    .map_err(|e| Error::Peer(e.to_string()))?;
                let (skip, size) = match resp.status() {
                    StatusCode::PARTIAL_CONTENT => match content_range(resp.headers()) {
                        Some((start, total)) if start == from => (0, total),
                        _ => return Ok(None),
                    },
                    _ => match content_length(resp.headers()) {
                        Some(total) => (from, total),
                        None => return Ok(None),
                    },
                };
                let counted = self.metrics.peer_bytes().clone();
                Ok(Some(Body {
                    bytes: resp
                        .bytes_stream()
                        .map(move |chunk| match chunk {
                            Ok(c) => {
                                counted.inc_by(c.len() as u64);
                                Ok(c)
                            }
                            Err(e) => Err(format!("peer {addr}: {e}")),
                        })
                        .boxed(),
                    skip,
                    size,
                }))
            }
            Source::Shared { size } => {
                let Some(tier) = self.shared_tier() else {
                    return Ok(None);
                };
                if from > size {
                    return Ok(None);
                }
                let read = tier.metrics.read.clone();
                Ok(tier
                    .store()
                    .read_range(digest, from, size - from)
                    .await?
                    .map(|bytes| Body {
                        bytes: bytes
                            .map_ok(move |c| {
                                read.inc_by(c.len() as u64);
                                c
                            })
                            .map_err(|e| e.to_string())
                            .boxed(),
                        skip: 0,
                        size,
                    }))
            }
        }
    }
}

/// Where a fetch reads a blob from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The shared store, which holds the blob for the repository (`size` bytes).
    Shared {
        size: u64,
    },
    /// The replica that owns the digest.
    Peer(SocketAddr),
    Upstream,
}

impl Source {
    /// What the client of the request that started the fetch is told.
    fn cache_status(self) -> CacheStatus {
        match self {
            Source::Shared { .. } => CacheStatus::Shared,
            Source::Peer(_) => CacheStatus::Peer,
            Source::Upstream => CacheStatus::Miss,
        }
    }
}

impl Proxy {
    /// `source` (not the upstream) failed: noted; the fetch goes on from the upstream.
    fn source_failed(
        &self,
        source: Source,
        t: &Target,
        digest: &Digest,
        e: &dyn std::fmt::Display,
    ) {
        match source {
            Source::Shared { .. } => self.shared_failed("reading a blob", e),
            Source::Peer(addr) => {
                self.metrics.peer_error();
                tracing::warn!(peer = %addr, repo = %t.repo.name, %digest, error = %e, "the owning replica could not give the blob; fetching from the upstream");
            }
            Source::Upstream => {}
        }
    }
}

/// A body being read: its bytes (a failure already put in words), how many of its
/// leading bytes to discard, and the whole blob's size.
struct Body {
    bytes: BoxStream<'static, Result<Bytes, String>>,
    skip: u64,
    size: u64,
}

/// An upstream response's body, each byte counted as fetched: discarded ones too,
/// since they crossed the link.
fn upstream_bytes(
    resp: crate::upstream::Response,
    up: Arc<crate::upstream::Client>,
) -> BoxStream<'static, Result<Bytes, String>> {
    resp.bytes_stream()
        .map(move |chunk| match chunk {
            Ok(c) => {
                up.metrics().fetched(c.len() as u64);
                Ok(c)
            }
            Err(e) => Err(up.body_error(&e).to_string()),
        })
        .boxed()
}

/// How a body stopped short of its end.
enum Pumped {
    /// The source broke off, for this reason.
    Source(String),
    Storage(StorageError),
}

/// The piece being hashed and written on the blocking pool, with the ingest it holds.
type Writing = tokio::task::JoinHandle<(ferry_storage::Ingest, Result<(), StorageError>)>;

/// Streams `body` (after discarding its first `skip` bytes) into `ingest` in pieces
/// of [`WRITE_CHUNK`], calling `progress` with the bytes written after each.
///
/// A piece is hashed and written on the blocking pool while the next one arrives, so
/// that receiving and hashing run side by side rather than taking turns; pieces are
/// still written one after the other, in order.
async fn pump(
    mut body: BoxStream<'static, Result<Bytes, String>>,
    mut skip: u64,
    ingest: &mut Option<ferry_storage::Ingest>,
    size: u64,
    progress: impl Fn(u64),
) -> Result<(), Pumped> {
    let mut pending = Vec::with_capacity(WRITE_CHUNK);
    let mut writing: Option<Writing> = None;
    loop {
        // Waiting on a quiet upstream with bytes in hand: write them (once) meanwhile.
        let next = if pending.is_empty() {
            body.next().await
        } else {
            match tokio::time::timeout(WRITE_IDLE, body.next()).await {
                Ok(next) => next,
                Err(_) => {
                    settle(&mut writing, ingest, size, &progress).await?;
                    writing = Some(start_write(ingest, std::mem::take(&mut pending)));
                    settle(&mut writing, ingest, size, &progress).await?;
                    pending.reserve(WRITE_CHUNK);
                    continue;
                }
            }
        };
        // Bytes that arrived before a failure are kept: the resume starts after them.
        let (chunk, failure) = match next {
            Some(Ok(chunk)) => (Some(chunk), None),
            Some(Err(e)) => (None, Some(e)),
            None => (None, None),
        };
        let at_end = chunk.is_none();
        if let Some(mut chunk) = chunk {
            let drop_now = skip.min(chunk.len() as u64);
            skip -= drop_now;
            let _ = chunk.split_to(drop_now as usize);
            pending.extend_from_slice(&chunk);
        }
        if pending.len() >= WRITE_CHUNK || (at_end && !pending.is_empty()) {
            settle(&mut writing, ingest, size, &progress).await?;
            let data = std::mem::replace(&mut pending, Vec::with_capacity(WRITE_CHUNK));
            writing = Some(start_write(ingest, data));
        }
        if at_end {
            settle(&mut writing, ingest, size, &progress).await?;
            return failure.map_or(Ok(()), |e| Err(Pumped::Source(e)));
        }
    }
}

/// Starts hashing and writing `data` on the blocking pool; the ingest travels with it
/// until [`settle`] puts it back.
fn start_write(ingest: &mut Option<ferry_storage::Ingest>, data: Vec<u8>) -> Writing {
    let mut ing = ingest.take().expect("ingest present between writes");
    tokio::task::spawn_blocking(move || {
        let res = ing.write(&data);
        (ing, res)
    })
}

/// Waits for the piece being written, if any: puts its ingest back and reports
/// progress, or the storage error.
async fn settle(
    writing: &mut Option<Writing>,
    ingest: &mut Option<ferry_storage::Ingest>,
    size: u64,
    progress: &impl Fn(u64),
) -> Result<(), Pumped> {
    let Some(w) = writing.take() else {
        return Ok(());
    };
    let (ing, res) = w
        .await
        .map_err(|e| Pumped::Storage(io::Error::other(e).into()))?;
    let written = ing.written();
    *ingest = Some(ing);
    res.map_err(Pumped::Storage)?;
    progress(written.min(size));
    Ok(())
}

/// A `GET` of the blob from byte `from` on: the response, how many of its leading
/// bytes to discard (all of `from` when the upstream ignored the range and sent the
/// whole blob), and the blob's total size. `None` when the range is unsatisfiable.
async fn ranged(
    t: &Target,
    digest: &Digest,
    from: u64,
) -> Result<Option<(crate::upstream::Response, u64, u64)>> {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::RANGE,
        http::HeaderValue::from_str(&format!("bytes={from}-")).expect("ASCII"),
    );
    let resp = match t
        .send(Method::GET, &format!("blobs/{digest}"), headers)
        .await
    {
        Err(crate::upstream::Error::Status { status: 416, .. }) => return Ok(None),
        r => r?,
    };
    match resp.status() {
        StatusCode::PARTIAL_CONTENT => match content_range(resp.headers()) {
            Some((start, total)) if start == from => Ok(Some((resp, 0, total))),
            _ => Ok(None),
        },
        StatusCode::OK => {
            let total = content_length(resp.headers())
                .ok_or_else(|| t.upstream.protocol("blob GET without Content-Length"))?;
            Ok(Some((resp, from, total)))
        }
        _ => Err(Error::BlobUnknown {
            repo: t.repo.name.to_string(),
            digest: digest.clone(),
        }),
    }
}

/// A `GET` or `HEAD` of `blobs/<digest>` upstream, with the size it announces.
async fn upstream_blob(
    t: &Target,
    method: Method,
    digest: &Digest,
) -> Result<(crate::upstream::Response, u64)> {
    let resp = t
        .send(method.clone(), &format!("blobs/{digest}"), HeaderMap::new())
        .await?;
    if resp.status() == StatusCode::NOT_FOUND {
        return Err(Error::BlobUnknown {
            repo: t.repo.name.to_string(),
            digest: digest.clone(),
        });
    }
    let size = content_length(resp.headers()).ok_or_else(|| {
        t.upstream
            .protocol(&format!("blob {method} without Content-Length"))
    })?;
    Ok((resp, size))
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// The first byte and the total of `Content-Range: bytes <from>-<end>/<total>`.
fn content_range(headers: &HeaderMap) -> Option<(u64, u64)> {
    let range = headers.get(http::header::CONTENT_RANGE)?.to_str().ok()?;
    let (span, total) = range.strip_prefix("bytes ")?.split_once('/')?;
    Some((span.split('-').next()?.parse().ok()?, total.parse().ok()?))
}

/// Resolves an optional range against `size`.
fn resolve(range: Option<ByteRange>, size: u64) -> Result<Option<(u64, u64)>> {
    range.map(|r| r.resolve(size)).transpose()
}

/// The inclusive bytes to read: the range, or the whole blob.
fn bounds(range: Option<(u64, u64)>, size: u64) -> (u64, u64) {
    range.unwrap_or((0, size.saturating_sub(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(
            ByteRange::parse("bytes=0-9"),
            Some(ByteRange::From {
                start: 0,
                end: Some(9)
            })
        );
        assert_eq!(
            ByteRange::parse("bytes=5-"),
            Some(ByteRange::From {
                start: 5,
                end: None
            })
        );
        assert_eq!(ByteRange::parse("bytes=-3"), Some(ByteRange::Suffix(3)));
        assert_eq!(ByteRange::parse("bytes=0-1,3-4"), None);
        assert_eq!(ByteRange::parse("items=0-1"), None);
        assert_eq!(ByteRange::parse("bytes=9-1"), None);
        assert_eq!(
            ByteRange::From {
                start: 5,
                end: None
            }
            .resolve(10)
            .unwrap(),
            (5, 9)
        );
        assert_eq!(
            ByteRange::From {
                start: 5,
                end: Some(100)
            }
            .resolve(10)
            .unwrap(),
            (5, 9)
        );
        assert_eq!(ByteRange::Suffix(3).resolve(10).unwrap(), (7, 9));
        assert_eq!(ByteRange::Suffix(30).resolve(10).unwrap(), (0, 9));
        assert!(
            ByteRange::From {
                start: 10,
                end: None
            }
            .resolve(10)
            .is_err()
        );
        assert!(ByteRange::Suffix(0).resolve(10).is_err());
    }
}
