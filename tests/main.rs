//! Integration tests: Ferry as a process against real registries and clients. One
//! binary, real processes (Distribution, containerd, skopeo, Ferry itself) on
//! 127.0.0.1, fresh temp dirs per test, no internet.
//!
//! Needs the Debian packages `docker-registry`, `skopeo`, `containerd` and `podman`
//! (`tests/run.sh` installs them); a missing one fails the test that needs it.

/// Starts and stops the processes the tests need (see its module docs).
mod harness;
/// Shared fixtures and assertions for the test modules.
mod support;

/// Anonymous allow/deny per upstream, htpasswd users with skopeo and `podman login`,
/// denials logged once.
mod access;
/// A private ACR over Private Link (emulated Entra ID, ACR front, data endpoint).
mod acr;
/// Attacks and accidents against the real binary: hostile clients and upstreams, a
/// damaged store, careless configuration (issue 11).
mod adversary;
/// Routing, headers, negotiation, ranges, tags, referrers, error codes, tag TTL.
mod api;
/// Ferry in front of basic-auth and token-auth Distribution; secrets never leak.
mod auth;
/// OCI bundles: signed export, verified import at an offline site, skopeo both ways,
/// refusals (unsigned, other key, corrupt, store in use), `--since`.
mod bundles;
/// Cache rules (`mcr.microsoft.com/*` → `aks-managed-repository/*`) end to end.
mod cache_rules;
/// `ferry config check`, `ferry serve` on bad configs, `FERRY_*` overrides, JSON logs.
mod cli;
/// 32 clients on one cold blob share one upstream fetch; time to first byte.
mod concurrency;
/// SIGKILL at random moments during concurrent pulls, round after round
/// (`FERRY_CRASH_ROUNDS`): Ferry restarts, `ferry fsck` is clean, pulls are identical.
mod crash;
/// An edge site's day: the upstream stops, every cached image still pulls.
mod edge;
/// Corrupt upstream bytes, upstream dying mid-blob, client hang-ups, timeouts.
mod faults;
/// A store on a small file system runs out of space mid-pull: a clear failure,
/// nothing partial stored, cached images still served, a clean fsck, and the pull
/// works once space is freed.
mod full_disk;
/// Range, late GET and HEAD joining a blob download in flight: one upstream GET.
mod inflight;
/// Image names as `ferry status` prints them, taken back by prefetch, pins and export;
/// `ferry status --config` beside a running Ferry.
mod names;
/// `ferry node-config`: containerd (`ctr`) and podman pull through the files it
/// writes; without `--fallback` neither goes to a registry directly; the examples in
/// `docker/` are exactly what it writes.
mod node_config;
/// `/metrics` after real pulls (checked by `promtool`), `/healthz` and `/readyz` on a
/// store that fills up, `X-Request-Id`, and the status page in headless Chromium.
mod observability;
/// SIGTERM drains in-flight downloads (a stalled one is cut at the deadline); SIGHUP
/// and config file changes reload upstreams, rules, access and secrets; invalid
/// configs are refused.
mod operations;
/// Pulling one platform of an index fetches nothing of the other.
mod platforms;
/// `ferry prefetch` and `[[pin]]` fill the store ahead of need.
mod prefetch;
/// README promises that had no test: secrets from the environment and rotated files,
/// proxies, `FERRY_CONFIG`, `max_stale`, SIGINT, reload messages, static rules, pins,
/// `/readyz` on a read-only store, eviction to 90%, last use across a restart.
mod promises;
/// containerd's `ctr` pulling through `hosts.toml` (the `?ns=` path).
mod pull_containerd;
/// skopeo copying single-platform, Docker schema 2 and multi-platform images.
mod pull_skopeo;
/// Blob reads redirected to another host: followed, without credentials.
mod redirects;
/// Several replicas on one shared store (Azurite): one fetch serves them all, an empty
/// replica serves the shared store with the upstream gone, a store that is down costs
/// only its copies.
mod replicas;
/// A blob download whose connection drops is resumed with Range.
mod resume;
/// `ferry fsck` (report, repair), `max_size` eviction under concurrent pulls, `ferry gc`.
mod store_maintenance;
/// HTTPS with a test CA (skopeo, HTTP/2 by ALPN) and certificates replaced live.
mod tls;
/// Upstream 500/503 and manifests cut mid-body: clear 5xx errors, nothing stored,
/// recovery once the background probe sees the upstream answer again.
mod upstream_faults;
