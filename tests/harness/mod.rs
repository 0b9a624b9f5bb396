//! The integration-test harness: real processes on 127.0.0.1, no mocks.
//!
//! What the benchmark needs too lives in the test kit (`testkit/`, crate
//! `ferry_testkit`) and is re-exported here under the same paths: [`process`] (child
//! guards, ports, commands with a time limit), [`registry`] (Distribution), [`http`]
//! (the registry client), [`skopeo`] and the config writer behind
//! [`ferry::FerryBuilder`]. This folder holds what only the tests need.
//!
//! Every server a test needs is started by a guard type that owns its temp dir and
//! kills (and reaps) its process on `Drop`:
//!
//! - [`registry::Registry`]: Debian's CNCF Distribution (`docker-registry`), the upstream,
//!   with no auth, htpasswd basic auth, or token auth; its access log is parsed to count
//!   requests.
//! - [`token_server::TokenServer`]: an in-process Docker token server that Distribution
//!   trusts (ES256 JWTs, `kid` = libtrust fingerprint).
//! - [`faults::FaultProxy`]: a TCP proxy that cuts, throttles, refuses or stalls
//!   connections, switchable at run time.
//! - [`ferry::Ferry`]: the binary under test, `ferry serve --config <file>`.
//! - [`containerd::Containerd`]: a private containerd daemon plus a `ctr` helper.
//! - [`data_endpoint::DataEndpoint`]: where Distribution's `redirect` middleware sends
//!   blob reads, on 127.0.0.2 (another host); refuses requests carrying `Authorization`.
//! - [`static_registry::StaticRegistry`]: a tiny read-only registry serving fixed bytes,
//!   only for what Distribution cannot serve (manifests over 4 MiB).
//! - [`front::FaultyFront`]: an HTTP front for Distribution that answers 5xx or cuts
//!   manifests mid-body on demand, forwarding everything else.
//! - [`smallfs::SmallFs`]: a small tmpfs (or loop-mounted ext4) to run a store out of
//!   space; unmounted on `Drop`.
//!
//! [`images`] builds OCI image layouts in Rust and pushes them with skopeo (or plain
//! HTTP, for artifacts and for tests that push many images); [`http`] holds the small
//! registry client the tests and the pushers share; [`skopeo::copy`] starts a real
//! client's pull, and [`podman::Podman`] is podman with its storage in a temp dir.
//!
//! Loops are bounded in count and time; a missing binary panics naming its Debian
//! package. Nothing here touches the internet.
#![allow(dead_code)]

pub mod acr;
pub mod containerd;
pub mod data_endpoint;
pub mod faults;
pub mod ferry;
pub mod front;
pub mod hostile;
pub mod images;
pub mod podman;
pub mod smallfs;
pub mod static_registry;
pub mod token_server;

pub use ferry_testkit::{digest_hex, http, process, registry, sha256_digest, skopeo, temp_dir};

use std::future::Future;

/// Runs `fut` to completion on a fresh current-thread runtime in its own OS thread.
///
/// Works both inside and outside a tokio runtime, so the harness's synchronous API
/// (pushing images, starting servers) can be called from `#[tokio::test]` bodies.
pub fn block_on<F>(fut: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("build a tokio runtime")
                .block_on(fut)
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}
