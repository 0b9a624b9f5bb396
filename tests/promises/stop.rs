//! README (Stop): "On SIGTERM (or SIGINT) Ferry stops accepting connections on every
//! listener, lets requests in flight … finish …, flushes the index and exits 0. It
//! logs one line when the shutdown starts and one when it ends." Ctrl-C in a
//! terminal: a blob download in flight finishes whole, new connections are refused,
//! the exit status is 0, and the store it leaves serves the blob as a hit.

use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::harness::faults::{FaultProxy, Mode};
use crate::harness::ferry::{FerryBuilder, Upstream};
use crate::harness::http::client;
use crate::harness::images::push_image_http;
use crate::harness::registry::{Registry, RegistryAuth};
use crate::harness::sha256_digest;
use crate::support::{assert_fsck_clean, blob_url, get};

#[tokio::test(flavor = "multi_thread")]
async fn sigint_drains_like_sigterm_and_exits_0() {
    // 6 MiB at 2 MiB/s: about 3 s, so SIGINT lands in the middle.
    let registry = Registry::start(RegistryAuth::None);
    let img = push_image_http(&registry, "team/big", "v1", &[6 << 20]);
    let throttle = FaultProxy::start(registry.addr());
    throttle.set_mode(Mode::Throttle(2 << 20));
    let mut ferry = FerryBuilder::new()
        .upstream(Upstream::local(&throttle.url()))
        .start();
    let layer = img.largest_layer().clone();
    let url = blob_url(&ferry, &img.repo, &layer.digest);

    let progress = Arc::new(AtomicUsize::new(0));
    let seen = progress.clone();
    let download = tokio::spawn(async move {
        let mut resp = client().get(&url).send().await.expect("blob GET");
        assert_eq!(resp.status(), 200);
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.expect("the body arrives whole") {
            body.extend_from_slice(&chunk);
            seen.store(body.len(), Ordering::SeqCst);
        }
        body
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while progress.load(Ordering::SeqCst) < 64 << 10 {
        assert!(Instant::now() < deadline, "no body bytes within 20 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mark = ferry.log().len();
    ferry.signal("INT");
    let addr: std::net::SocketAddr = ferry.addr().parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            other => assert!(
                Instant::now() < deadline,
                "new connections still accepted 5 s after SIGINT: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let body = tokio::time::timeout(Duration::from_secs(30), download)
        .await
        .expect("the download in flight finished within 30 s")
        .expect("download task");
    assert_eq!(body.len() as u64, layer.size, "the whole blob");
    assert_eq!(sha256_digest(&body), layer.digest, "the right bytes");

    let status = ferry
        .wait_exit(Duration::from_secs(15))
        .expect("ferry exits once the download is done");
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGINT\n{}",
        &ferry.log()[mark..]
    );
    assert_eq!(
        ferry.log_lines(mark, &["shutting down"]).len(),
        1,
        "one line when the shutdown starts\n{}",
        &ferry.log()[mark..]
    );
    assert_eq!(
        ferry
            .log_lines(mark, &["stopped: every request in flight finished"])
            .len(),
        1,
        "one line when it ends\n{}",
        &ferry.log()[mark..]
    );
    assert_fsck_clean(&ferry, "after SIGINT");
    ferry.start_again();
    let again = get(&blob_url(&ferry, &img.repo, &layer.digest), &[]).await;
    assert_eq!(again.status, 200);
    assert_eq!(sha256_digest(&again.body), layer.digest);
    assert_eq!(again.x_cache(), "HIT", "the drained download was stored");
}
