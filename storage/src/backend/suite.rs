//! The backend test suite: the same cases, run against every backend.
//!
//! Each case is a generic function over the seam's traits; a backend's tests run them
//! all with one line, given a function making a fresh, empty backend (and whatever
//! must live as long as it, a temporary directory, a container name):
//!
//! ```ignore
//! crate::backend::suite::backend_suite!(make_backend);
//! ```
//!
//! Cases assert only what a caller of the seam can see; what a backend leaves
//! behind in its own medium (staged files, uncommitted blocks) is checked by that
//! backend's own tests.

use bytes::Bytes;
use futures_util::TryStreamExt;

use super::{BlobStore, MetaStore, Swap, put_blob, update_tag};
use crate::{Digest, Error, ManifestRecord, Repo, Tag, TagRecord};

/// One `#[tokio::test]` per case, each on a fresh backend from `$make`.
macro_rules! backend_suite {
    ($make:path) => {
        $crate::backend::suite::backend_suite!(@cases $make;
            blob_absent,
            blob_put_stat_read,
            blob_read_ranges,
            blob_empty,
            blob_writer_refuses_wrong_size,
            blob_writer_refuses_wrong_digest,
            blob_abandoned_writer_leaves_nothing,
            blob_racing_writers_of_one_digest,
            blob_delete,
            blob_list,
            meta_tags,
            meta_swap_tag_refuses_a_stale_version,
            meta_concurrent_tag_updates_lose_nothing,
            meta_manifests_and_links,
            meta_blob_records_and_access_times,
            meta_referrers,
        );
    };
    (@cases $make:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (_keep, backend) = $make();
                $crate::backend::suite::$case(&backend).await;
            }
        )*
    };
}
pub(crate) use backend_suite;

/// The maintenance lease's cases, for the backends several processes share (the
/// filesystem backend grants the lease always: one process has it open).
macro_rules! lease_suite {
    ($make:path) => {
        $crate::backend::suite::backend_suite!(@cases $make;
            lease_one_holder_at_a_time,
            lease_expires_and_is_taken_over,
            lease_renewed_by_its_holder_and_released,
            lease_racing_takers_one_wins,
        );
    };
}
pub(crate) use lease_suite;

/// Bytes that cross several of the filesystem backend's read chunks, in a pattern
/// where a misplaced chunk shows.
pub(super) fn pattern(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

async fn stored<B: BlobStore>(b: &B, bytes: &Bytes) -> Digest {
    let d = Digest::sha256_of(bytes);
    put_blob(b, &d, bytes.clone()).await.unwrap();
    d
}

/// The bytes a range read yields; `None` if the blob is not stored.
pub(super) async fn read<B: BlobStore>(b: &B, d: &Digest, start: u64, len: u64) -> Option<Vec<u8>> {
    let stream = b.read_range(d, start, len).await.unwrap()?;
    let chunks: Vec<Bytes> = stream.try_collect().await.unwrap();
    Some(chunks.concat())
}

fn repo(upstream: &str, name: &str) -> Repo {
    Repo {
        upstream: upstream.into(),
        name: name.parse().unwrap(),
    }
}

fn tag(name: &str) -> Tag {
    name.parse().unwrap()
}

fn tag_record(d: &Digest, fetched_at: u64) -> TagRecord {
    TagRecord {
        digest: d.clone(),
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        fetched_at,
    }
}

pub async fn blob_absent<B: BlobStore>(b: &B) {
    let d = Digest::sha256_of(b"never stored");
    assert_eq!(b.stat(&d).await.unwrap(), None);
    assert!(b.read_range(&d, 0, 0).await.unwrap().is_none());
    assert!(!b.delete(&d).await.unwrap());
    assert_eq!(b.list().await.unwrap(), vec![]);
}

pub async fn blob_put_stat_read<B: BlobStore>(b: &B) {
    let bytes = pattern(3 * crate::chunks::CHUNK as usize + 17);
    let d = Digest::sha256_of(&bytes);
    let mut w = b.writer(&d, Some(bytes.len() as u64)).await.unwrap();
    // Pieces of odd sizes, as an upstream body arrives.
    for piece in bytes.chunks(100_003) {
        w.write(Bytes::copy_from_slice(piece)).await.unwrap();
    }
    assert_eq!(w.written(), bytes.len() as u64);
    assert_eq!(b.stat(&d).await.unwrap(), None, "visible before its commit");
    w.commit().await.unwrap();
    assert_eq!(b.stat(&d).await.unwrap(), Some(bytes.len() as u64));
    let whole = read(b, &d, 0, bytes.len() as u64).await.unwrap();
    assert!(whole == bytes, "the whole blob reads back as written");
}

pub async fn blob_read_ranges<B: BlobStore>(b: &B) {
    let bytes = pattern(3 * crate::chunks::CHUNK as usize + 17);
    let size = bytes.len() as u64;
    let d = stored(b, &bytes).await;
    let chunk = crate::chunks::CHUNK;
    for (start, len) in [
        (0, 1),
        (size - 1, 1),
        (0, size),
        (5, 2 * chunk + 100),
        (chunk - 1, 2),
        (chunk, chunk),
        (size, 0),
        (0, 0),
        (7, size - 7),
    ] {
        let got = read(b, &d, start, len).await.unwrap();
        let want = &bytes[start as usize..(start + len) as usize];
        assert!(got == want, "bytes {start}+{len}");
    }
    for (start, len) in [(size - 1, 2), (size + 1, 0), (0, size + 1), (1, u64::MAX)] {
        match b.read_range(&d, start, len).await {
            Err(Error::RangeOutsideBlob { size: s, .. }) => assert_eq!(s, size),
            Err(e) => panic!("bytes {start}+{len}: {e}"),
            Ok(_) => panic!("bytes {start}+{len} outside the blob were not refused"),
        }
    }
}

pub async fn blob_empty<B: BlobStore>(b: &B) {
    let d = stored(b, &Bytes::new()).await;
    assert_eq!(b.stat(&d).await.unwrap(), Some(0));
    assert_eq!(read(b, &d, 0, 0).await.unwrap(), b"");
    assert_eq!(b.list().await.unwrap(), vec![d]);
}

pub async fn blob_writer_refuses_wrong_size<B: BlobStore>(b: &B) {
    let bytes = Bytes::from_static(b"hello world");
    let d = Digest::sha256_of(&bytes);
    // Longer than announced: refused at the write or at the commit.
    let mut w = b.writer(&d, Some(5)).await.unwrap();
    let refused = match w.write(bytes.clone()).await {
        Err(e) => e,
        Ok(()) => w.commit().await.unwrap_err(),
    };
    assert!(matches!(refused, Error::SizeMismatch { .. }), "{refused}");
    // Shorter than announced, though the digest would match: refused at the commit.
    let mut w = b.writer(&d, Some(20)).await.unwrap();
    w.write(bytes.clone()).await.unwrap();
    let refused = w.commit().await.unwrap_err();
    assert!(matches!(refused, Error::SizeMismatch { .. }), "{refused}");
    assert_eq!(b.stat(&d).await.unwrap(), None);
    assert!(b.read_range(&d, 0, 0).await.unwrap().is_none());
    assert_eq!(b.list().await.unwrap(), vec![]);
}

pub async fn blob_writer_refuses_wrong_digest<B: BlobStore>(b: &B) {
    let d = Digest::sha256_of(b"hello world");
    for size in [None, Some(11)] {
        let mut w = b.writer(&d, size).await.unwrap();
        w.write(Bytes::from_static(b"hello w0rld")).await.unwrap();
        let refused = w.commit().await.unwrap_err();
        assert!(matches!(refused, Error::DigestMismatch { .. }), "{refused}");
    }
    assert_eq!(b.stat(&d).await.unwrap(), None);
    assert_eq!(b.list().await.unwrap(), vec![]);
}

pub async fn blob_abandoned_writer_leaves_nothing<B: BlobStore>(b: &B) {
    let bytes = pattern(1000);
    let d = Digest::sha256_of(&bytes);
    let mut w = b.writer(&d, Some(1000)).await.unwrap();
    w.write(bytes.slice(..400)).await.unwrap();
    drop(w);
    assert_eq!(b.stat(&d).await.unwrap(), None);
    assert_eq!(b.list().await.unwrap(), vec![]);
    // The next writer of the digest starts from nothing.
    let mut w = b.writer(&d, Some(1000)).await.unwrap();
    assert_eq!(w.written(), 0);
    w.write(bytes.clone()).await.unwrap();
    w.commit().await.unwrap();
    assert_eq!(read(b, &d, 0, 1000).await.unwrap(), bytes);
}

pub async fn blob_racing_writers_of_one_digest<B: BlobStore>(b: &B) {
    let bytes = pattern(200_000);
    let d = Digest::sha256_of(&bytes);
    let mut w1 = b.writer(&d, Some(200_000)).await.unwrap();
    let mut w2 = b.writer(&d, Some(200_000)).await.unwrap();
    w1.write(bytes.slice(..100_000)).await.unwrap();
    w2.write(bytes.clone()).await.unwrap();
    w1.write(bytes.slice(100_000..)).await.unwrap();
    w2.commit().await.unwrap();
    w1.commit().await.unwrap();
    assert_eq!(b.stat(&d).await.unwrap(), Some(200_000));
    assert_eq!(read(b, &d, 0, 200_000).await.unwrap(), bytes);
    assert_eq!(b.list().await.unwrap(), vec![d]);
}

pub async fn blob_delete<B: BlobStore>(b: &B) {
    let (one, two) = (Bytes::from_static(b"one"), Bytes::from_static(b"two"));
    let (d1, d2) = (stored(b, &one).await, stored(b, &two).await);
    assert!(b.delete(&d1).await.unwrap());
    assert_eq!(b.stat(&d1).await.unwrap(), None);
    assert!(b.read_range(&d1, 0, 3).await.unwrap().is_none());
    assert!(!b.delete(&d1).await.unwrap(), "gone already");
    assert_eq!(read(b, &d2, 0, 3).await.unwrap(), b"two", "the other stays");
    // Stored again after a delete, it is there again.
    stored(b, &one).await;
    assert_eq!(b.stat(&d1).await.unwrap(), Some(3));
}

pub async fn blob_list<B: BlobStore>(b: &B) {
    let mut want = Vec::new();
    for i in 0..20u32 {
        want.push(stored(b, &Bytes::from(format!("blob {i}"))).await);
    }
    want.sort();
    assert_eq!(b.list().await.unwrap(), want);
}

pub async fn meta_tags<M: MetaStore>(m: &M) {
    let d = Digest::sha256_of(b"manifest");
    let (r, t) = (repo("a", "r"), tag("1"));
    assert!(m.tag(&r, &t).await.unwrap().is_none());
    let swap = m.swap_tag(&r, &t, None, &tag_record(&d, 1)).await.unwrap();
    assert!(matches!(swap, Swap::Done(_)));
    assert_eq!(
        m.tag(&r, &t).await.unwrap().unwrap().value,
        tag_record(&d, 1)
    );
    // Scoped by upstream and repository; "r" does not see "r/sub" by a shared prefix.
    assert!(m.tag(&repo("b", "r"), &t).await.unwrap().is_none());
    let (sub, two) = (repo("a", "r/sub"), tag("2"));
    let swap = m
        .swap_tag(&sub, &two, None, &tag_record(&d, 1))
        .await
        .unwrap();
    assert!(matches!(swap, Swap::Done(_)));
    let known: Vec<String> = m.known_tags(&r).await.unwrap().into_iter().collect();
    assert_eq!(known, vec!["1"]);
    // The upstream's tag list: absent, then replaced whole.
    assert_eq!(m.listed_tags(&r).await.unwrap(), None);
    m.set_listed_tags(&r, &[tag("a"), tag("b")]).await.unwrap();
    m.set_listed_tags(&r, &[tag("c")]).await.unwrap();
    assert_eq!(m.listed_tags(&r).await.unwrap(), Some(vec![tag("c")]));
    m.set_listed_tags(&r, &[]).await.unwrap();
    assert_eq!(m.listed_tags(&r).await.unwrap(), Some(vec![]));
    m.flush().await.unwrap();
}

pub async fn meta_swap_tag_refuses_a_stale_version<M: MetaStore>(m: &M) {
    let (r, t) = (repo("a", "r"), tag("latest"));
    let (old, new) = (Digest::sha256_of(b"old"), Digest::sha256_of(b"new"));
    let Swap::Done(v1) = m
        .swap_tag(&r, &t, None, &tag_record(&old, 1))
        .await
        .unwrap()
    else {
        panic!("creating an absent record conflicted");
    };
    // Created only if absent: a second creator learns it lost.
    let again = m
        .swap_tag(&r, &t, None, &tag_record(&new, 9))
        .await
        .unwrap();
    assert_eq!(again, Swap::Conflict);
    // Two writers read the same version; the first to write wins, the second is told.
    let a = m.tag(&r, &t).await.unwrap().unwrap();
    let b = m.tag(&r, &t).await.unwrap().unwrap();
    assert_eq!((&a.version, &b.version), (&v1, &v1));
    let moved = tag_record(&new, 2);
    let Swap::Done(v2) = m.swap_tag(&r, &t, Some(&b.version), &moved).await.unwrap() else {
        panic!("a write at the current version conflicted");
    };
    assert_ne!(v2, v1);
    let refreshed = tag_record(&old, 3);
    let stale = m
        .swap_tag(&r, &t, Some(&a.version), &refreshed)
        .await
        .unwrap();
    assert_eq!(stale, Swap::Conflict);
    assert_eq!(m.tag(&r, &t).await.unwrap().unwrap().value, moved, "kept");
    // Read again, the loser applies its change on top of the winner's.
    let now = m.tag(&r, &t).await.unwrap().unwrap();
    assert_eq!(now.version, v2);
    let mut on_top = now.value.clone();
    on_top.fetched_at = 3;
    let swap = m
        .swap_tag(&r, &t, Some(&now.version), &on_top)
        .await
        .unwrap();
    assert!(matches!(swap, Swap::Done(_)));
    assert_eq!(m.tag(&r, &t).await.unwrap().unwrap().value, on_top);
}

pub async fn meta_concurrent_tag_updates_lose_nothing<M: MetaStore>(m: &M) {
    const EACH: u64 = 40;
    let (r, t) = (repo("a", "r"), tag("counted"));
    let d = Digest::sha256_of(b"m");
    // Two writers each add EACH to `fetched_at`, one at a time, read-modify-write:
    // an update written over another writer's read loses that writer's increment.
    let writer = || async {
        for _ in 0..EACH {
            update_tag(m, &r, &t, |cur| {
                Some(tag_record(&d, cur.map_or(0, |c| c.fetched_at) + 1))
            })
            .await
            .unwrap();
        }
    };
    futures_util::join!(writer(), writer());
    let end = m.tag(&r, &t).await.unwrap().unwrap().value;
    assert_eq!(end.fetched_at, 2 * EACH, "updates lost");
}

pub async fn meta_manifests_and_links<M: MetaStore>(m: &M) {
    let d = Digest::sha256_of(b"manifest");
    assert_eq!(m.manifest(&d).await.unwrap(), None);
    let rec = ManifestRecord {
        media_type: "application/vnd.oci.image.index.v1+json".into(),
        size: 8,
    };
    m.put_manifest(&d, &rec).await.unwrap();
    assert_eq!(m.manifest(&d).await.unwrap(), Some(rec));
    let (r, sub, other) = (repo("a", "r"), repo("a", "r/sub"), repo("b", "r"));
    assert!(!m.is_linked(&r, &d).await.unwrap());
    m.link(&r, &d).await.unwrap();
    m.link(&r, &d).await.unwrap();
    assert!(m.is_linked(&r, &d).await.unwrap());
    assert!(!m.is_linked(&sub, &d).await.unwrap());
    assert!(!m.is_linked(&other, &d).await.unwrap());
    m.unlink(&r, &d).await.unwrap();
    assert!(!m.is_linked(&r, &d).await.unwrap());
    m.flush().await.unwrap();
}

pub async fn meta_blob_records_and_access_times<M: MetaStore>(m: &M) {
    let (d, other) = (Digest::sha256_of(b"layer"), Digest::sha256_of(b"other"));
    let r = repo("a", "r");
    assert_eq!(m.blob_record(&d).await.unwrap(), None);
    m.blob_stored_in(&r, &d, 5).await.unwrap();
    let rec = m.blob_record(&d).await.unwrap().unwrap();
    assert_eq!(rec.size, 5);
    assert!(m.is_linked(&r, &d).await.unwrap(), "linked with its record");
    // Access times move forward only; the size stays the one the blob verified at.
    let later = rec.last_access + 100;
    m.record_access(&d, 999, later).await.unwrap();
    m.record_access(&d, 999, later - 50).await.unwrap();
    let rec = m.blob_record(&d).await.unwrap().unwrap();
    assert_eq!((rec.size, rec.last_access), (5, later));
    // A use of a blob with no record makes one.
    m.record_access(&other, 7, 42).await.unwrap();
    let rec = m.blob_record(&other).await.unwrap().unwrap();
    assert_eq!((rec.size, rec.last_access), (7, 42));
    m.flush().await.unwrap();
}

pub async fn meta_referrers<M: MetaStore>(m: &M) {
    let subject = Digest::sha256_of(b"subject");
    let r = repo("a", "r");
    let sig = Some("application/vnd.example.sig");
    assert_eq!(m.referrers(&r, &subject, None).await.unwrap(), None);
    m.set_referrers(&r, &subject, None, b"all").await.unwrap();
    m.set_referrers(&r, &subject, sig, b"signatures")
        .await
        .unwrap();
    let got = m.referrers(&r, &subject, None).await.unwrap();
    assert_eq!(got.as_deref(), Some(&b"all"[..]));
    let got = m.referrers(&r, &subject, sig).await.unwrap();
    assert_eq!(got.as_deref(), Some(&b"signatures"[..]));
    assert_eq!(
        m.referrers(&repo("a", "r/sub"), &subject, None)
            .await
            .unwrap(),
        None
    );
    m.set_referrers(&r, &subject, None, b"all, newer")
        .await
        .unwrap();
    let got = m.referrers(&r, &subject, None).await.unwrap();
    assert_eq!(got.as_deref(), Some(&b"all, newer"[..]));
}

const LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(60);
/// A clock the lease cases run, so that expiry needs no waiting.
const T0: u64 = 1_000_000_000_000;

pub async fn lease_one_holder_at_a_time<M: MetaStore>(m: &M) {
    assert!(m.take_maintenance_lease("a", T0, LEASE_TTL).await.unwrap());
    assert!(
        !m.take_maintenance_lease("b", T0 + 1000, LEASE_TTL)
            .await
            .unwrap(),
        "a second holder while the first one's lease runs"
    );
    assert!(
        !m.take_maintenance_lease("b", T0 + 59_999, LEASE_TTL)
            .await
            .unwrap()
    );
}

pub async fn lease_expires_and_is_taken_over<M: MetaStore>(m: &M) {
    assert!(m.take_maintenance_lease("a", T0, LEASE_TTL).await.unwrap());
    let expired = T0 + LEASE_TTL.as_millis() as u64 + 1;
    assert!(
        m.take_maintenance_lease("b", expired, LEASE_TTL)
            .await
            .unwrap(),
        "an expired lease is taken over"
    );
    // The old holder's renewal finds it lost.
    assert!(
        !m.take_maintenance_lease("a", expired + 1, LEASE_TTL)
            .await
            .unwrap()
    );
    // Its release leaves the new holder's lease alone.
    m.release_maintenance_lease("a").await.unwrap();
    assert!(
        !m.take_maintenance_lease("c", expired + 2, LEASE_TTL)
            .await
            .unwrap()
    );
    assert!(
        m.take_maintenance_lease("b", expired + 3, LEASE_TTL)
            .await
            .unwrap()
    );
}

pub async fn lease_renewed_by_its_holder_and_released<M: MetaStore>(m: &M) {
    assert!(m.take_maintenance_lease("a", T0, LEASE_TTL).await.unwrap());
    // Renewed before it expires: it runs from the renewal.
    let renewed = T0 + 50_000;
    assert!(
        m.take_maintenance_lease("a", renewed, LEASE_TTL)
            .await
            .unwrap()
    );
    let after_first_expiry = T0 + LEASE_TTL.as_millis() as u64 + 1;
    assert!(
        !m.take_maintenance_lease("b", after_first_expiry, LEASE_TTL)
            .await
            .unwrap(),
        "the renewal did not extend the lease"
    );
    // Released: another holder takes it at once.
    m.release_maintenance_lease("a").await.unwrap();
    assert!(
        m.take_maintenance_lease("b", renewed + 1, LEASE_TTL)
            .await
            .unwrap()
    );
}

pub async fn lease_racing_takers_one_wins<M: MetaStore>(m: &M) {
    // Many rounds of eight takers at once on a free (then expired) lease: one wins each.
    for round in 0..5u64 {
        let now = T0 + round * 2 * LEASE_TTL.as_millis() as u64;
        let takers: Vec<_> = (0..8)
            .map(|i| {
                let holder = format!("r{round}-{i}");
                async move {
                    m.take_maintenance_lease(&holder, now, LEASE_TTL)
                        .await
                        .unwrap()
                }
            })
            .collect();
        let granted = futures_util::future::join_all(takers).await;
        assert_eq!(
            granted.iter().filter(|g| **g).count(),
            1,
            "round {round}: {granted:?}"
        );
    }
}
