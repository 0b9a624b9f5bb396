//! The shared backend on S3, against moto: the backend suite, and what only S3 shows
//! (multipart uploads, conditional writes, its credentials).

use std::time::{Duration, Instant};

use bytes::Bytes;
use object_store::ObjectStoreExt;

use super::super::emulators::{KEY_ID, Moto, MotoStore, SECRET, everything};
use super::super::suite::{pattern, read};
use super::super::{BlobStore, MetaStore, Swap, put_blob};
use super::{ObjectBackend, S3Auth, S3Store};
use crate::{Digest, Error, Repo, Tag, TagRecord};

/// S3's smallest part but the last: the suite's blobs are single puts, the tests
/// below upload several parts.
const S3_MIN_PART: usize = 5 << 20;

fn backend() -> (Moto, ObjectBackend) {
    let moto = Moto::start();
    moto.create_bucket("ferry");
    let store = moto.store("ferry").build().unwrap();
    let backend = ObjectBackend::new(store, "prod/").unwrap();
    (moto, backend.with_part_size(S3_MIN_PART))
}

crate::backend::suite::backend_suite!(backend);
crate::backend::suite::lease_suite!(backend);

/// The multipart uploads still open in the bucket, once none is (an abandoned
/// writer aborts its upload in a task of its own), or after 10 s.
fn open_uploads_settled(moto: &Moto) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let open = moto.open_uploads("ferry");
        if !open.contains("<Upload>") || Instant::now() > deadline {
            return open;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A blob of several parts that is refused, or abandoned, had parts uploaded, and
/// none became readable or listable; the uploads are aborted (S3 would otherwise keep,
/// and bill, their parts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_and_abandoned_multipart_uploads_leave_nothing() {
    let (moto, b) = backend();
    let bytes = pattern(3 * S3_MIN_PART + 7);
    let d = Digest::sha256_of(&bytes);
    // Wrong bytes (the last one changed), all of them uploaded: refused.
    let mut wrong = bytes.to_vec();
    *wrong.last_mut().unwrap() ^= 1;
    let mut w = b.writer(&d, Some(wrong.len() as u64)).await.unwrap();
    w.write(wrong.into()).await.unwrap();
    let open = moto.open_uploads("ferry");
    assert!(
        open.contains(&format!("<Key>{}</Key>", b.blob_path(&d))),
        "the parts went to the store before the commit: {open}"
    );
    let refused = w.commit().await.unwrap_err();
    assert!(matches!(refused, Error::DigestMismatch { .. }), "{refused}");
    let open = open_uploads_settled(&moto);
    assert!(
        !open.contains("<Upload>"),
        "a refused upload is open: {open}"
    );
    // Abandoned half way.
    let mut w = b.writer(&d, Some(bytes.len() as u64)).await.unwrap();
    w.write(bytes.slice(..2 * S3_MIN_PART + 1)).await.unwrap();
    assert!(moto.open_uploads("ferry").contains("<Upload>"));
    drop(w);
    let open = open_uploads_settled(&moto);
    assert!(
        !open.contains("<Upload>"),
        "an abandoned upload is open: {open}"
    );
    assert_eq!(everything(&b).await, Vec::<String>::new());
    assert_eq!(b.stat(&d).await.unwrap(), None);
    assert!(b.read_range(&d, 0, 1).await.unwrap().is_none());
    // The next writer of the digest stores it whole.
    put_blob(&b, &d, bytes.clone()).await.unwrap();
    let read = read(&b, &d, 0, bytes.len() as u64).await.unwrap();
    assert!(read == bytes);
    assert!(!moto.open_uploads("ferry").contains("<Upload>"));
}

/// Two replicas uploading the same blob in parts at once: both succeed, the blob is
/// whole, and no upload is left open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_multipart_uploads_of_one_blob_both_succeed() {
    let (moto, b) = backend();
    let bytes = pattern(2 * S3_MIN_PART + 3);
    let d = Digest::sha256_of(&bytes);
    let size = Some(bytes.len() as u64);
    let (mut w1, mut w2) = (
        b.writer(&d, size).await.unwrap(),
        b.writer(&d, size).await.unwrap(),
    );
    w1.write(bytes.slice(..S3_MIN_PART + 1)).await.unwrap();
    w2.write(bytes.clone()).await.unwrap();
    w2.commit().await.unwrap();
    w1.write(bytes.slice(S3_MIN_PART + 1..)).await.unwrap();
    w1.commit().await.unwrap();
    assert_eq!(b.stat(&d).await.unwrap(), size);
    let read = read(&b, &d, 0, bytes.len() as u64).await.unwrap();
    assert!(read == bytes);
    let open = open_uploads_settled(&moto);
    assert!(!open.contains("<Upload>"), "an upload is left open: {open}");
}

fn repo() -> Repo {
    Repo {
        upstream: "docker.io".into(),
        name: "library/alpine".parse().unwrap(),
    }
}

fn tag_record(d: &Digest, fetched_at: u64) -> TagRecord {
    TagRecord {
        digest: d.clone(),
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        fetched_at,
    }
}

/// The store honours `If-None-Match: *` and `If-Match`: written behind the backend's
/// back (another replica), a tag record makes a create and a stale swap conflicts,
/// and the other replica's record stays, byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_writes_are_honoured_by_the_store() {
    let (moto, b) = backend();
    let (r, t): (Repo, Tag) = (repo(), "3.20".parse().unwrap());
    let d = Digest::sha256_of(b"m");
    // Another replica, its own client.
    let other = ObjectBackend::new(moto.store("ferry").build().unwrap(), "prod").unwrap();
    let Swap::Done(theirs) = other
        .swap_tag(&r, &t, None, &tag_record(&d, 1))
        .await
        .unwrap()
    else {
        panic!("create conflicted");
    };
    let path = b.tag_path(&r, &t);
    let stored = b.store().get(&path).await.unwrap().bytes().await.unwrap();
    assert_eq!(
        b.swap_tag(&r, &t, None, &tag_record(&d, 2)).await.unwrap(),
        Swap::Conflict,
        "If-None-Match: * ignored"
    );
    let Swap::Done(_) = other
        .swap_tag(&r, &t, Some(&theirs), &tag_record(&d, 3))
        .await
        .unwrap()
    else {
        panic!("a swap at the current version conflicted");
    };
    let now = b.store().get(&path).await.unwrap().bytes().await.unwrap();
    assert_ne!(now, stored);
    assert_eq!(
        b.swap_tag(&r, &t, Some(&theirs), &tag_record(&d, 4))
            .await
            .unwrap(),
        Swap::Conflict,
        "If-Match ignored"
    );
    let kept = b.store().get(&path).await.unwrap().bytes().await.unwrap();
    assert_eq!(kept, now, "overwritten");
    // Removed behind its back: a swap at the old version conflicts too (S3 says 404).
    b.store().delete(&path).await.unwrap();
    let current = b.tag(&r, &t).await.unwrap();
    assert!(current.is_none());
    assert_eq!(
        b.swap_tag(&r, &t, Some(&theirs), &tag_record(&d, 5))
            .await
            .unwrap(),
        Swap::Conflict
    );
    assert!(b.tag(&r, &t).await.unwrap().is_none());
}

/// Neither the secret nor the session token shows in `Debug` of the store settings
/// or the backend, nor in an error; the environment chain signs with the
/// environment's keys and takes nothing else from it (an `AWS_ENDPOINT` there is not
/// where the store is).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_stay_secret_and_the_environment_gives_only_credentials() {
    let (moto, b) = backend();
    let token = "ferry-test-session-token-42";
    let keyed = S3Store {
        auth: S3Auth::AccessKey {
            id: KEY_ID.into(),
            secret: SECRET.into(),
            session_token: Some(token.into()),
        },
        ..moto.store("ferry")
    };
    let with_token = ObjectBackend::new(keyed.build().unwrap(), "prod").unwrap();
    for shown in [
        format!("{keyed:?} {keyed:#?}"),
        format!("{with_token:?} {with_token:#?}"),
        format!("{b:?} {b:#?}"),
    ] {
        for secret in [SECRET, token, KEY_ID] {
            assert!(!shown.contains(secret), "a credential is in {shown}");
        }
    }
    let layer = Bytes::from_static(b"layer");
    let d = Digest::sha256_of(&layer);
    put_blob(&with_token, &d, layer).await.unwrap();
    // The environment chain, given an environment.
    let env = |name: &str| match name {
        "AWS_ACCESS_KEY_ID" => Some(KEY_ID.to_owned()),
        "AWS_SECRET_ACCESS_KEY" => Some(SECRET.to_owned()),
        "AWS_ENDPOINT" | "AWS_ENDPOINT_URL" | "AWS_ENDPOINT_URL_S3" => {
            Some("http://127.0.0.1:9".to_owned())
        }
        "AWS_BUCKET" => Some("elsewhere".to_owned()),
        _ => None,
    };
    let from_env = S3Store {
        auth: S3Auth::Environment,
        ..moto.store("ferry")
    };
    let from_env = from_env.build_with_env(env).unwrap();
    let from_env = ObjectBackend::new(from_env, "prod").unwrap();
    assert_eq!(from_env.stat(&d).await.unwrap(), Some(5));
    // An unreachable store: the error names no credential.
    drop(moto);
    let failed = with_token.stat(&d).await.unwrap_err();
    let shown = format!("{failed} {failed:?}");
    assert!(matches!(failed, Error::ObjectStore(_)), "{shown}");
    for secret in [SECRET, token] {
        assert!(!shown.contains(secret), "a credential is in {shown}");
    }
}

/// The store stopped: calls fail soon with an error (a caller falls back to the
/// upstream); started again, the same backend works on, without a new client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_store_fails_calls_and_recovers_by_itself() {
    let (mut moto, b) = backend();
    let layer = Bytes::from_static(b"layer");
    let d = Digest::sha256_of(&layer);
    put_blob(&b, &d, layer.clone()).await.unwrap();
    moto.stop();
    let started = Instant::now();
    let failed = b.stat(&d).await.unwrap_err();
    assert!(matches!(failed, Error::ObjectStore(_)), "{failed}");
    assert!(
        b.read_range(&d, 0, 5).await.is_err(),
        "read from a dead store"
    );
    let (r, t): (Repo, Tag) = (repo(), "latest".parse().unwrap());
    let swap = b.swap_tag(&r, &t, None, &tag_record(&d, 1)).await;
    assert!(
        swap.is_err(),
        "a conditional write to a dead store: {swap:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    // moto keeps nothing across a restart (S3 would): the bucket is made again.
    moto.restart();
    moto.create_bucket("ferry");
    assert_eq!(b.stat(&d).await.unwrap(), None);
    put_blob(&b, &d, layer).await.unwrap();
    assert_eq!(b.stat(&d).await.unwrap(), Some(5));
    let swap = b.swap_tag(&r, &t, None, &tag_record(&d, 1)).await.unwrap();
    assert!(matches!(swap, Swap::Done(_)), "{swap:?}");
}

/// Figures against moto, printed: `cargo test -p ferry-storage figures -- --ignored
/// --nocapture` (beside Azurite's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, run by hand"]
async fn s3_figures() {
    let (_moto, b) = backend();
    super::figures::print("moto", &b).await;
}
