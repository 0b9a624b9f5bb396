//! Ferry: a pull-through caching OCI registry.
//!
//! Data flows one way: [`api`] (HTTP handlers) → [`proxy`] (cache logic) →
//! `ferry_storage` (blobs and index) and [`upstream`] (registry clients). Nothing
//! calls back up: every module imports only modules below it in this list.
//!
//! - The crate root is the top: [`serve`], and [`prefetch_in_process`]
//!   (`ferry prefetch` without a server: starts one on loopback and pulls through it).
//! - [`server`]: the store, the proxy and the access [`access::Gate`] put together
//!   behind the listeners, with their connection limits, TLS, shutdown, signals,
//!   config reload and housekeeping (quota, access times, scrub); it keeps `[[pin]]`
//!   images fetched with the [`ops::prefetch`] client.
//! - [`ops`]: the commands that work beside a server or without one — bundles for air
//!   gaps (which name images as the proxy routes them, by [`proxy::route_offline`]),
//!   fsck and gc, a node's runtime configuration, prefetch, status (read from the
//!   store, or asked of the Ferry that holds it); [`cli`] holds the
//!   arguments of every command.
//! - [`api`] asks [`access`] who may pull what and calls [`proxy`].
//! - [`proxy`] routes (by the upstreams and [`cache_rules`] of the config) and
//!   fetches through [`upstream`]; with several replicas it also reads and writes the
//!   shared store [`shared_store`] opens and asks the replica [`peers`] names as a
//!   digest's owner; all of them count into [`metrics`], which labels answers by
//!   [`cache_status`].
//! - Leaves: [`config`], read and validated once into a [`config::Config`] that
//!   nothing changes afterwards (with the types it holds, e.g. [`config::pattern`]
//!   and [`config::htpasswd`], which [`access`] is built from); [`cache_rules`]
//!   (ACR-style cache rules), [`image`], [`secret`], [`bytesize`].

pub mod access;
pub mod api;
pub mod bytesize;
pub mod cache_rules;
pub mod cache_status;
pub mod cli;
pub mod config;
mod filestamp;
pub mod image;
pub mod metrics;
pub mod ops;
pub mod peers;
pub mod proxy;
pub mod secret;
pub mod server;
pub mod shared_store;
pub mod upstream;

pub use server::{ServeError, serve};

use config::Config;
use ops::prefetch;
use server::signals;
use signals::Controls;

/// `ferry prefetch` without `--server`: pulls `images` through a Ferry started in
/// this process on `config` (its store and upstreams), listening on a loopback port
/// only for the duration.
pub async fn prefetch_in_process(
    config: Config,
    images: &[image::ImageName],
    platform: Option<&image::Platform>,
) -> Result<Vec<prefetch::Pulled>, prefetch::PrefetchError> {
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server::serve_and_report(
        config,
        server::Audience::Operator,
        Controls::stop_on(async move {
            let _ = stop_rx.await;
        }),
        move |addr, token| {
            let _ = ready_tx.send((addr, token.clone()));
        },
    ));
    let Ok((addr, token)) = ready_rx.await else {
        let why = match server.await {
            Ok(Err(e)) => e.to_string(),
            Ok(Ok(())) => "it stopped at once".to_string(),
            Err(e) => e.to_string(),
        };
        return Err(prefetch::PrefetchError::Server(why));
    };
    let base = url::Url::parse(&format!("http://{addr}/")).expect("a socket address makes a URL");
    // Ferry's own token: the operator's pulls are not subject to the clients' policy.
    let prefetcher = prefetch::Prefetcher::new(base, true).with_bearer(token);
    let result = prefetch::pull_all(&prefetcher, images, platform).await;
    let _ = stop_tx.send(());
    let _ = server.await;
    result
}
