//! The other replicas of a cluster (`[cluster]`): who is up, which replica owns a
//! digest, and asking the owner for a blob.
//!
//! # Why this design
//!
//! The goal is one upstream fetch per blob across replicas, without making any request
//! depend on the peer layer:
//!
//! - **Membership by asking.** Every few seconds ([`REFRESH`]) each name in `peers` is
//!   resolved again (a headless Service gives every pod, pods come and go) and every
//!   address is asked for its replica id (`GET /peer/v1/id`, bounded by
//!   [`PROBE_TIMEOUT`]). The replicas that answer are the live ones; the one that
//!   answers with this replica's id is this replica. No coordinator, no gossip: what
//!   each replica sees is what it can reach.
//! - **An owner per digest by rendezvous hashing** over the live replicas' ids: every
//!   replica that sees the same members picks the same owner, and a replica joining or
//!   leaving moves only the digests it owns (1/N of them), not everyone's.
//! - **A miss goes to the owner**, which fetches once (its single flight joins all the
//!   replicas' requests with its own clients') and streams as it downloads; the asker
//!   streams that into its own store while its clients read along. When the owner cannot
//!   be reached or breaks off, the asker fetches from the upstream itself, resuming with
//!   `Range` from what it has: correctness never depends on the peer layer, only the
//!   count of upstream fetches does.
//! - **No chains.** A replica serving a peer never forwards that request again, and
//!   never makes it wait on a fetch that is itself forwarded (`proxy::inflight`), so
//!   replicas whose views of the members differ for a moment cannot wait on each
//!   other in a circle.
//! - **A shared secret** (`secret_file`) as a bearer token on every peer request, checked
//!   in constant time: only replicas read through the peer port, which the
//!   NetworkPolicy also opens only to Ferry's pods.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus_client::metrics::gauge::Gauge;
use sha2::{Digest as _, Sha256};

use ferry_oci::Digest;

use crate::config::{Cluster, SecretSource};

/// How often the members are looked up again.
pub const REFRESH: Duration = Duration::from_secs(5);
/// How long a replica has to answer who it is before it counts as down.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// The shortest cluster secret accepted.
const MIN_SECRET: usize = 16;
/// A replica's id answer is a short hex string; anything longer is not a replica.
const MAX_ID: usize = 64;

/// A live replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub addr: SocketAddr,
    pub id: String,
}

/// This replica's view of the cluster.
pub struct Peers {
    names: Vec<String>,
    secret: SecretSource,
    /// This process's id: random, so a restarted replica is a new member.
    id: String,
    http: reqwest::Client,
    /// The other live replicas, sorted by address.
    others: ArcSwap<Vec<Member>>,
    /// `ferry_peers_live`: the live replicas this one sees, itself included.
    live: Gauge,
}

/// Why a peer could not give a blob.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("peer {addr}: {source}")]
    Http {
        addr: SocketAddr,
        source: reqwest::Error,
    },
    #[error("peer {addr} answered {status}")]
    Status { addr: SocketAddr, status: u16 },
    #[error("peer {addr} sent more than {limit} bytes")]
    TooLarge { addr: SocketAddr, limit: usize },
}

impl Peers {
    /// This replica in `cluster`; refused when the secret is too short to keep anyone
    /// who can reach the peer port from reading through it.
    pub fn new(cluster: &Cluster, live: Gauge) -> Result<Peers, String> {
        let secret = cluster.secret.current();
        if secret.expose().trim().len() < MIN_SECRET {
            return Err(format!(
                "cluster secret is shorter than {MIN_SECRET} characters (make one with `openssl rand -hex 32`)"
            ));
        }
        // Unique enough among a cluster's replicas; the pid and time if the OS has no
        // randomness to give (two replicas must only not collide).
        let id = format!(
            "{:016x}",
            getrandom::u64().unwrap_or_else(|_| {
                u64::from(std::process::id())
                    ^ std::time::UNIX_EPOCH
                        .elapsed()
                        .map_or(0, |d| d.as_nanos() as u64)
            })
        );
        let http = reqwest::Client::builder()
            // Peers are in the cluster's own network: never through a proxy.
            .no_proxy()
            .connect_timeout(PROBE_TIMEOUT)
            // An owner waiting on a slow upstream sends nothing for as long as the
            // upstream does; the owner's own read timeout bounds that.
            .read_timeout(Duration::from_secs(60))
            .build()
            .expect("a plain HTTP client builds");
        live.set(1);
        Ok(Peers {
            names: cluster.peers.clone(),
            secret: cluster.secret.clone(),
            id,
            http,
            others: ArcSwap::from_pointee(Vec::new()),
            live,
        })
    }

    /// This replica's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether `authorization` (a request's header) carries the cluster's secret.
    pub fn admits(&self, authorization: Option<&[u8]>) -> bool {
        authorization
            .and_then(|a| a.strip_prefix(b"Bearer "))
            .is_some_and(|token| self.secret.current().matches(token))
    }

    /// The other live replicas, as last seen.
    pub fn others(&self) -> Arc<Vec<Member>> {
        self.others.load_full()
    }

    /// The replica that owns `d`, when it is another one; `None` when this replica owns
    /// it (or sees no other).
    pub fn owner(&self, d: &Digest) -> Option<SocketAddr> {
        self.owner_of(d.as_str())
    }

    /// The replica that owns `key` (a digest, a repository's reference), when it is
    /// another one; `None` when this replica owns it (or sees no other).
    pub fn owner_of(&self, key: &str) -> Option<SocketAddr> {
        let others = self.others.load();
        let weight = |id: &str| {
            let mut h = Sha256::new();
            h.update(id.as_bytes());
            h.update(key.as_bytes());
            h.finalize()
        };
        let mine = weight(&self.id);
        others
            .iter()
            .map(|m| (weight(&m.id), m.addr))
            .filter(|(w, _)| *w > mine)
            .max_by(|a, b| a.0.cmp(&b.0))
            .map(|(_, addr)| addr)
    }

    /// Looks the members up again, every [`REFRESH`], until the task is dropped.
    pub fn start(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let peers = self.clone();
        tokio::spawn(async move {
            loop {
                peers.refresh().await;
                tokio::time::sleep(REFRESH).await;
            }
        })
    }

    async fn refresh(&self) {
        let mut addrs = Vec::new();
        for name in &self.names {
            match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::lookup_host(name.as_str())).await
            {
                Ok(Ok(found)) => addrs.extend(found),
                Ok(Err(e)) => {
                    tracing::debug!(peer = %name, error = %e, "peer name does not resolve")
                }
                Err(_) => tracing::debug!(peer = %name, "peer name lookup timed out"),
            }
        }
        addrs.sort();
        addrs.dedup();
        let probes = addrs.into_iter().map(|addr| async move {
            let id = self.probe(addr).await?;
            Some(Member { addr, id })
        });
        let mut others: Vec<Member> = futures_util::future::join_all(probes)
            .await
            .into_iter()
            .flatten()
            .filter(|m| m.id != self.id)
            .collect();
        // One replica reachable at two addresses (two names for it) counts once.
        others.sort_by(|a, b| a.id.cmp(&b.id).then(a.addr.cmp(&b.addr)));
        others.dedup_by(|a, b| a.id == b.id);
        others.sort_by_key(|m| m.addr);
        let before = self.others.load();
        if **before != others {
            tracing::info!(replicas = others.len() + 1, others = ?others.iter().map(|m| m.addr.to_string()).collect::<Vec<_>>(), "cluster members changed");
        }
        self.live.set(others.len() as i64 + 1);
        self.others.store(Arc::new(others));
    }

    /// The id of the replica at `addr`, if it answers as one.
    async fn probe(&self, addr: SocketAddr) -> Option<String> {
        let resp = self
            .authorized(self.http.get(format!("http://{addr}/peer/v1/id")))
            .timeout(PROBE_TIMEOUT)
            .send()
            .await
            .ok()?;
        if !resp.status().is_success() {
            tracing::debug!(%addr, status = resp.status().as_u16(), "peer refused the id probe");
            return None;
        }
        let body = resp.bytes().await.ok()?;
        let id = std::str::from_utf8(&body).ok()?.trim();
        (!id.is_empty() && id.len() <= MAX_ID && id.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| id.to_owned())
    }

    /// Blob `d` of `repo` at `upstream`, from byte `from` on, from the replica at
    /// `addr`: a 200 (from 0) or 206 answer whose body streams as the owner has it.
    /// The repository goes last in the path: its `/`s need no escaping there, and
    /// upstream names and digests have none.
    pub async fn blob(
        &self,
        addr: SocketAddr,
        upstream: &str,
        repo: &str,
        d: &Digest,
        from: u64,
    ) -> Result<reqwest::Response, PeerError> {
        let range = (from > 0).then(|| (http::header::RANGE, format!("bytes={from}-")));
        self.get(addr, &format!("blobs/{upstream}/{d}/{repo}"), range)
            .await
    }

    /// Manifest `reference` of `repo` at `upstream` from the replica at `addr`, asked
    /// with `accept`: its `Content-Type`, `Docker-Content-Digest` and bytes (at most
    /// `limit` of them).
    pub async fn manifest(
        &self,
        addr: SocketAddr,
        upstream: &str,
        repo: &str,
        reference: &str,
        accept: &str,
        limit: usize,
    ) -> Result<(Option<String>, Option<String>, bytes::Bytes), PeerError> {
        let accept = (http::header::ACCEPT, accept.to_owned());
        let mut resp = self
            .get(
                addr,
                &format!("manifests/{upstream}/{reference}/{repo}"),
                Some(accept),
            )
            .await?;
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (content_type, digest) = (header("content-type"), header("docker-content-digest"));
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|source| PeerError::Http { addr, source })?
        {
            if body.len() + chunk.len() > limit {
                return Err(PeerError::TooLarge { addr, limit });
            }
            body.extend_from_slice(&chunk);
        }
        Ok((content_type, digest, body.into()))
    }

    /// `GET /peer/v1/<path>` at `addr` with the secret (and `header`): a 200 or 206.
    async fn get(
        &self,
        addr: SocketAddr,
        path: &str,
        header: Option<(http::HeaderName, String)>,
    ) -> Result<reqwest::Response, PeerError> {
        let mut req = self.authorized(self.http.get(format!("http://{addr}/peer/v1/{path}")));
        if let Some((name, value)) = header {
            req = req.header(name, value);
        }
        let resp = req
            .send()
            .await
            .map_err(|source| PeerError::Http { addr, source })?;
        match resp.status().as_u16() {
            200 | 206 => Ok(resp),
            status => Err(PeerError::Status { addr, status }),
        }
    }

    fn authorized(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        req.header(
            http::header::AUTHORIZATION,
            format!("Bearer {}", self.secret.current().expose()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(dir: &std::path::Path, port: u16) -> Peers {
        let secret = dir.join("secret");
        std::fs::write(&secret, "0123456789abcdef0123456789abcdef").unwrap();
        let source = SecretSource::file(&secret);
        source.read().unwrap();
        let cluster = Cluster {
            peers: vec![format!("127.0.0.1:{port}")],
            listen: format!("127.0.0.1:{port}").parse().unwrap(),
            secret: source,
        };
        Peers::new(&cluster, Gauge::default()).unwrap()
    }

    /// Three replicas that see each other agree on every digest's owner, each owns
    /// about a third, and one leaving moves only the digests it owned.
    #[test]
    fn replicas_agree_on_owners_and_share_them() {
        let dir = tempfile::tempdir().unwrap();
        let rs: Vec<Peers> = (0..3).map(|i| replica(dir.path(), 5001 + i)).collect();
        let addr = |i: usize| -> SocketAddr { format!("127.0.0.1:{}", 5001 + i).parse().unwrap() };
        let see = |rs: &[Peers], alive: &[usize]| {
            for &i in alive {
                let others = alive
                    .iter()
                    .filter(|&&j| j != i)
                    .map(|&j| Member {
                        addr: addr(j),
                        id: rs[j].id().to_owned(),
                    })
                    .collect();
                rs[i].others.store(Arc::new(others));
            }
        };
        see(&rs, &[0, 1, 2]);
        let digests: Vec<Digest> = (0..300)
            .map(|n| Digest::sha256_of(format!("{n}").as_bytes()))
            .collect();
        let owner = |i: usize, d: &Digest| rs[i].owner(d).map_or(addr(i), |a| a);
        let mut owned = [0usize; 3];
        let before: Vec<SocketAddr> = digests.iter().map(|d| owner(0, d)).collect();
        for (d, o) in digests.iter().zip(&before) {
            assert!(
                (0..3).all(|i| owner(i, d) == *o),
                "replicas disagree on {d}"
            );
            owned[o.port() as usize - 5001] += 1;
        }
        assert!(
            owned.iter().all(|&n| (60..=140).contains(&n)),
            "shares: {owned:?}"
        );
        // Replica 2 goes: what 0 and 1 owned stays theirs.
        see(&rs, &[0, 1]);
        for (d, o) in digests.iter().zip(&before) {
            let now = owner(0, d);
            assert_eq!(now, owner(1, d));
            if *o != addr(2) {
                assert_eq!(now, *o, "{d} moved although its owner stayed");
            }
        }
        // The secret is checked; a wrong or missing one is refused.
        assert!(rs[0].admits(Some(b"Bearer 0123456789abcdef0123456789abcdef")));
        assert!(!rs[0].admits(Some(b"Bearer 0123456789abcdef0123456789abcdee")));
        assert!(!rs[0].admits(Some(b"0123456789abcdef0123456789abcdef")));
        assert!(!rs[0].admits(None));
    }
}
