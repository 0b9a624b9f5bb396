//! Manifests. By digest they are immutable: once stored and known in a repository,
//! served forever. By tag they are cached with their fetch time and revalidated with
//! an upstream `HEAD` once older than the upstream's `tag_ttl`.

use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method, StatusCode};

use ferry_oci::manifest::{ALL_MANIFESTS, MAX_MANIFEST_SIZE, Manifest};
use ferry_oci::{Digest, Reference, Tag};
use ferry_storage::index::now_secs;
use ferry_storage::{ManifestRecord, TagRecord};

use super::{Asker, CacheStatus, Error, Proxy, Result, Target, served_from_cache};
use crate::image::{self, Accept};

/// A manifest ready to serve.
#[derive(Debug, Clone)]
pub struct ServedManifest {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    /// Empty when the caller asked for headers only and the manifest was cached.
    pub bytes: Bytes,
    pub cache: CacheStatus,
    /// A `Warning` for the client when it got something less than fresh.
    pub warning: Option<String>,
}

impl Proxy {
    /// The manifest `reference` names in `t`, negotiated against `accept`.
    /// `want_body = false` (a HEAD) lets a cache hit skip reading the bytes.
    pub async fn manifest(
        &self,
        t: &Target,
        reference: &Reference,
        accept: &Accept,
        want_body: bool,
    ) -> Result<ServedManifest> {
        self.manifest_as(Asker::Client, t, reference, accept, want_body)
            .await
    }

    /// [`Proxy::manifest`] for another replica, which sees this one as the owner: a
    /// miss is fetched from the shared store or the upstream, never from a replica.
    pub async fn manifest_for_peer(
        &self,
        t: &Target,
        reference: &Reference,
        accept: &Accept,
    ) -> Result<ServedManifest> {
        self.manifest_as(Asker::Peer, t, reference, accept, true)
            .await
    }

    async fn manifest_as(
        &self,
        asker: Asker,
        t: &Target,
        reference: &Reference,
        accept: &Accept,
        want_body: bool,
    ) -> Result<ServedManifest> {
        match reference {
            Reference::Tag(tag) => self.manifest_by_tag(asker, t, tag, accept, want_body).await,
            Reference::Digest(d) => {
                if self.store.index.is_linked(&t.repo, d)?
                    && let Some(m) = self.cached_manifest(d, accept, want_body)?
                {
                    return Ok(m);
                }
                if self.copy_shared_manifest(t, d).await?
                    && let Some(mut m) = self.cached_manifest(d, accept, want_body)?
                {
                    m.cache = CacheStatus::Shared;
                    return Ok(m);
                }
                self.fetch_manifest(asker, t, d.as_str(), Some(d), None, accept)
                    .await
            }
        }
    }

    async fn manifest_by_tag(
        &self,
        asker: Asker,
        t: &Target,
        tag: &Tag,
        accept: &Accept,
        want_body: bool,
    ) -> Result<ServedManifest> {
        let index = &self.store.index;
        let ttl = t.upstream.config().tag_ttl.as_secs();
        let mut rec = index.tag(&t.repo, tag)?;
        let mut cache = CacheStatus::Hit;
        // Past its ttl here (or never fetched here), the tag may have been fetched
        // since by another replica: its record, when newer, saves asking the upstream.
        if rec
            .as_ref()
            .is_none_or(|r| now_secs().saturating_sub(r.fetched_at) >= ttl)
            && let Some(newer) = self.newer_shared_tag(t, tag, rec.as_ref()).await?
        {
            rec = Some(newer);
            cache = CacheStatus::Shared;
        }
        if let Some(rec) = rec
            && let Some(mut m) = self.cached_manifest(&rec.digest, accept, want_body)?
        {
            m.cache = cache;
            let now = now_secs();
            if now.saturating_sub(rec.fetched_at) < ttl {
                return Ok(m);
            }
            match self.upstream_digest(t, tag.as_str(), accept).await {
                Ok(Some(d)) if d == rec.digest => {
                    let rec = TagRecord {
                        fetched_at: now,
                        ..rec
                    };
                    index.set_tag(&t.repo, tag, &rec)?;
                    self.share_tag(t, tag, rec);
                    return Ok(m);
                }
                // Moved, gone, or the upstream did not say: fetch it to find out.
                Ok(_) => {}
                Err(e) if e.is_unavailable() => {
                    let age = Duration::from_secs(now.saturating_sub(rec.fetched_at));
                    let limit = t
                        .upstream
                        .config()
                        .max_stale
                        .map(|m| m + t.upstream.config().tag_ttl);
                    if limit.is_some_and(|limit| age > limit) {
                        tracing::warn!(upstream = t.upstream.name(), repo = %t.repo.name, %tag, age_secs = age.as_secs(), "cached tag is older than max_stale; not serving it");
                        return Err(e.into());
                    }
                    m.cache = CacheStatus::for_unavailable(&e);
                    m.warning = Some(served_from_cache(t));
                    return Ok(m);
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.fetch_manifest(asker, t, tag.as_str(), None, Some(tag), accept)
            .await
    }

    /// The stored manifest `d`, if it is stored, indexed, and of a type `accept` allows.
    fn cached_manifest(
        &self,
        d: &Digest,
        accept: &Accept,
        want_body: bool,
    ) -> Result<Option<ServedManifest>> {
        let Some(rec) = self.store.index.manifest(d)? else {
            return Ok(None);
        };
        // A record of another type (stored by an older Ferry that took any JSON) is
        // not a manifest to serve: fetched again, and checked this time.
        if !accept.allows(&rec.media_type) || !ALL_MANIFESTS.contains(&rec.media_type.as_str()) {
            return Ok(None);
        }
        let bytes = if want_body {
            match self.store.blobs.read(d)? {
                Some(b) => Bytes::from(b),
                None => return Ok(None),
            }
        } else {
            if self.store.blobs.stat(d)?.is_none() {
                return Ok(None);
            }
            Bytes::new()
        };
        Ok(Some(ServedManifest {
            digest: d.clone(),
            media_type: rec.media_type,
            size: rec.size,
            bytes,
            cache: CacheStatus::Hit,
            warning: None,
        }))
    }

    /// Asks the upstream which digest `reference` names now (a `HEAD`), `None` if it
    /// does not know the reference or does not say.
    async fn upstream_digest(
        &self,
        t: &Target,
        reference: &str,
        accept: &Accept,
    ) -> Result<Option<Digest>, crate::upstream::Error> {
        // A client is waiting, and the cache can answer: give the upstream no longer
        // than a connect timeout.
        let up = &t.upstream;
        let resp = up
            .send_within(
                Some(up.config().connect_timeout),
                Method::HEAD,
                &t.repo.name,
                &format!("manifests/{reference}"),
                &[],
                accept_headers(accept),
            )
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Ok(resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok()))
    }

    /// Fetches a manifest, verifies it, and stores it as known in `t.repo` (and as
    /// what `tag` points to, when fetched by tag): once for all the requests that ask
    /// at the same time (see [`super::flights`]), and, in a cluster, from the replica
    /// that owns the reference (which fetches it once for all replicas) unless that
    /// one fails to give it.
    async fn fetch_manifest(
        &self,
        asker: Asker,
        t: &Target,
        reference: &str,
        expected: Option<&Digest>,
        tag: Option<&Tag>,
        accept: &Accept,
    ) -> Result<ServedManifest> {
        let owner = match (asker, &self.peers) {
            (Asker::Client, Some(peers)) => {
                peers.owner_of(&format!("{}/{}:{reference}", t.repo.upstream, t.repo.name))
            }
            _ => None,
        };
        let fetch = async {
            // A fetch that ended between this request's look at the store and now
            // stored what it asks for: no second fetch.
            if let Some(m) = self.stored_meanwhile(t, expected, tag, accept)? {
                return Ok(m);
            }
            if let Some(addr) = owner {
                match self
                    .manifest_from_peer(addr, t, reference, expected, tag, accept)
                    .await
                {
                    Ok(m) => return Ok(m),
                    Err(e) => {
                        self.metrics.peer_error();
                        tracing::warn!(peer = %addr, repo = %t.repo.name, %reference, error = %e, "the owning replica could not give the manifest; fetching from the upstream");
                    }
                }
            }
            self.fetch_manifest_now(t, reference, expected, tag, accept)
                .await
        };
        self.flights
            .once(&t.repo, reference, &accept.upstream_header(), fetch)
            .await
    }

    async fn fetch_manifest_now(
        &self,
        t: &Target,
        reference: &str,
        expected: Option<&Digest>,
        tag: Option<&Tag>,
        accept: &Accept,
    ) -> Result<ServedManifest> {
        let up = &t.upstream;
        let resp = t
            .send(
                Method::GET,
                &format!("manifests/{reference}"),
                accept_headers(accept),
            )
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Err(Error::ManifestUnknown {
                repo: t.repo.name.to_string(),
                reference: reference.to_string(),
            });
        }
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| image::media_type(v).to_ascii_lowercase());
        let header_digest: Option<Digest> = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let body = up
            .read_body(resp, "manifest", MAX_MANIFEST_SIZE)
            .await
            .map_err(|e| match e {
                crate::upstream::Error::TooLarge { limit, .. } => Error::ManifestInvalid {
                    upstream: up.name().to_string(),
                    reason: format!("larger than the {limit}-byte limit"),
                },
                e => e.into(),
            })?;
        let digest = match (expected, header_digest) {
            (Some(d), _) => d.clone(),
            (None, Some(d)) => d,
            (None, None) => Digest::sha256_of(&body),
        };
        if !digest.verify(&body) {
            up.note_digest_mismatch(&digest);
            return Err(Error::UpstreamDigestMismatch {
                upstream: up.name().to_string(),
                expected: digest,
            });
        }
        let media_type = Manifest::check(content_type.as_deref(), &body)
            .map_err(|reason| Error::ManifestInvalid {
                upstream: up.name().to_string(),
                reason: reason.to_string(),
            })?
            .0
            .to_string();
        let m = self
            .store_manifest(t, digest, media_type, body, tag)
            .await?;
        self.share_manifest(t, &m.digest, m.record(), m.bytes.clone(), m.tag_record(tag));
        Ok(m)
    }

    /// The manifest a request for `expected` (by digest) or `tag` finds in the store
    /// now: by digest if linked to `t.repo`, by tag if fetched within `tag_ttl`.
    fn stored_meanwhile(
        &self,
        t: &Target,
        expected: Option<&Digest>,
        tag: Option<&Tag>,
        accept: &Accept,
    ) -> Result<Option<ServedManifest>> {
        let index = &self.store.index;
        let digest = match (expected, tag) {
            (Some(d), _) if index.is_linked(&t.repo, d)? => d.clone(),
            (None, Some(tag)) => match index.tag(&t.repo, tag)? {
                Some(rec)
                    if now_secs().saturating_sub(rec.fetched_at)
                        < t.upstream.config().tag_ttl.as_secs() =>
                {
                    rec.digest
                }
                _ => return Ok(None),
            },
            _ => return Ok(None),
        };
        self.cached_manifest(&digest, accept, true)
    }

    /// Stores a verified manifest as known in `t.repo` (and as what `tag` points to),
    /// durably, and answers with it as a [`CacheStatus::Miss`].
    async fn store_manifest(
        &self,
        t: &Target,
        digest: Digest,
        media_type: String,
        body: Bytes,
        tag: Option<&Tag>,
    ) -> Result<ServedManifest> {
        let m = ServedManifest {
            digest,
            media_type,
            size: body.len() as u64,
            bytes: body,
            cache: CacheStatus::Miss,
            warning: None,
        };
        let (repo, rec, tagged, d, b) = (
            t.repo.clone(),
            m.record(),
            m.tag_record(tag),
            m.digest.clone(),
            m.bytes.clone(),
        );
        self.blocking(move |store| {
            store.blobs.put(&d, &b)?;
            store.index.manifest_stored_in(
                &repo,
                &d,
                &rec,
                tagged.as_ref().map(|(t, r)| (t, r)),
            )?;
            // Durable before it is served: a node that got it must find it after a
            // crash, even with the upstream gone.
            store.index.flush()
        })
        .await?;
        Ok(m)
    }

    /// Manifest `reference` of `t` from the replica at `addr`, which owns it: checked
    /// as an upstream's would be (its digest, its type), then stored here. The owner
    /// copies it to the shared store; this replica does not again.
    async fn manifest_from_peer(
        &self,
        addr: std::net::SocketAddr,
        t: &Target,
        reference: &str,
        expected: Option<&Digest>,
        tag: Option<&Tag>,
        accept: &Accept,
    ) -> Result<ServedManifest> {
        let peers = self
            .peers
            .as_ref()
            .ok_or_else(|| Error::Peer("no cluster".into()))?;
        let (content_type, header_digest, body) = peers
            .manifest(
                addr,
                t.upstream.name(),
                t.repo.name.as_str(),
                reference,
                &accept.upstream_header(),
                MAX_MANIFEST_SIZE,
            )
            .await
            .map_err(|e| Error::Peer(e.to_string()))?;
        let digest = match (expected, header_digest) {
            (Some(d), _) => d.clone(),
            (None, Some(d)) => d
                .parse()
                .map_err(|_| Error::Peer(format!("peer {addr} sent an invalid digest")))?,
            (None, None) => return Err(Error::Peer(format!("peer {addr} sent no digest"))),
        };
        if !digest.verify(&body) {
            return Err(Error::Peer(format!(
                "peer {addr} sent bytes that do not match {digest}"
            )));
        }
        let content_type = content_type.map(|v| image::media_type(&v).to_ascii_lowercase());
        let media_type = Manifest::check(content_type.as_deref(), &body)
            .map_err(|reason| {
                Error::Peer(format!("peer {addr} sent an invalid manifest: {reason}"))
            })?
            .0
            .to_string();
        let mut m = self
            .store_manifest(t, digest, media_type, body, tag)
            .await?;
        m.cache = CacheStatus::Peer;
        Ok(m)
    }
}

impl ServedManifest {
    fn record(&self) -> ManifestRecord {
        ManifestRecord {
            media_type: self.media_type.clone(),
            size: self.size,
        }
    }

    /// The record of `tag` pointing here, fetched now.
    fn tag_record(&self, tag: Option<&Tag>) -> Option<(Tag, TagRecord)> {
        tag.map(|tag| {
            let rec = TagRecord {
                digest: self.digest.clone(),
                media_type: self.media_type.clone(),
                fetched_at: now_secs(),
            };
            (tag.clone(), rec)
        })
    }
}

fn accept_headers(accept: &Accept) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&accept.upstream_header()) {
        h.insert(ACCEPT, v);
    }
    h
}
