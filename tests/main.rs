//! Integration tests: Ferry as a process against real registries and clients. One
//! binary, real processes (Distribution, containerd, skopeo, Ferry itself) on
//! 127.0.0.1, fresh temp dirs per test, no internet.
//!
//! Needs the Debian packages `docker-registry`, `skopeo` and `containerd`
//! (`tests/run.sh` installs them); a missing one fails the test that needs it.

/// Starts and stops the processes the tests need (see its module docs).
mod harness;
/// Shared fixtures and assertions for the test modules.
mod support;

/// Routing, headers, negotiation, ranges, tags, referrers, error codes, tag TTL.
mod api;
/// Ferry in front of basic-auth and token-auth Distribution; secrets never leak.
mod auth;
/// 32 clients on one cold blob share one upstream fetch; time to first byte.
mod concurrency;
/// Corrupt upstream bytes, upstream dying mid-blob, client hang-ups, timeouts.
mod faults;
/// containerd's `ctr` pulling through `hosts.toml` (the `?ns=` path).
mod pull_containerd;
/// skopeo copying single-platform, Docker schema 2 and multi-platform images.
mod pull_skopeo;
