//! README: `proxy = "http://egress…:3128"  # else HTTPS_PROXY / NO_PROXY apply`. A
//! proxy on 127.0.0.1 counts what goes through it.

use crate::harness::acr::{
    AcrEmulator, Credential, DATA_HOST, DATA_IP, Lifetimes, REGISTRY_HOST, UPSTREAM,
};
use crate::harness::block_on;
use crate::harness::ferry::{Ferry, FerryBuilder, Upstream};
use crate::harness::http::media;
use crate::harness::images::{PushedImage, push_image_http};
use crate::harness::registry::{Registry, RegistryAuth};
use crate::support::get;

use super::CountingProxy;

/// The upstream's `proxy` key: every upstream request goes through it (plain HTTP
/// upstream: requests in absolute form), and the pull still gets every byte right.
/// "else HTTPS_PROXY / NO_PROXY apply": with the key set, a proxy in the environment
/// sees nothing.
#[tokio::test(flavor = "multi_thread")]
async fn the_upstream_proxy_key_sends_every_upstream_request_through_the_proxy() {
    let registry = Registry::start(RegistryAuth::None);
    let img = push_image_http(&registry, "team/app", "v1", &[40_000]);
    let proxy = CountingProxy::start(&[]);
    let from_env = CountingProxy::start(&[]);
    let ferry = FerryBuilder::new()
        .upstream(Upstream::local(&registry.url()).raw(&format!("proxy = \"{}\"", proxy.url())))
        .env("HTTP_PROXY", &from_env.url())
        .env("HTTPS_PROXY", &from_env.url())
        .env("ALL_PROXY", &from_env.url())
        .start();
    let caches = crate::support::pull_image(&ferry.url(), &img).await;
    assert_eq!(caches[0], "MISS");
    let seen = proxy.seen();
    let through = format!("http://{}/v2/", registry.addr());
    assert!(
        seen.iter()
            .any(|l| l.starts_with("GET ") && l.contains(&through)),
        "the upstream requests went through the proxy: {seen:?}"
    );
    assert!(
        seen.iter().all(|l| l.contains(registry.addr())),
        "only the upstream's requests: {seen:?}"
    );
    assert_eq!(
        from_env.connections(),
        0,
        "the key wins over the environment: {:?}",
        from_env.seen()
    );
}

/// An HTTPS upstream (the ACR emulator) with no `proxy` key: `HTTPS_PROXY` applies,
/// so the registry is reached by `CONNECT` through the proxy; with the registry's
/// domain in `NO_PROXY` it is reached directly.
#[test]
fn https_proxy_applies_and_no_proxy_exempts() {
    let emu = AcrEmulator::start_with(Lifetimes::default());
    let app = emu.push_image("team/app", "1", &[50_000]);
    let proxy = CountingProxy::start(&[(REGISTRY_HOST, "127.0.0.1"), (DATA_HOST, DATA_IP)]);
    let connects_to_registry = |proxy: &CountingProxy| {
        proxy
            .seen()
            .iter()
            .filter(|l| l.starts_with(&format!("CONNECT {REGISTRY_HOST}:")))
            .count()
    };

    let ferry = emu
        .ferry(Credential::Secret)
        .env("HTTPS_PROXY", &proxy.url())
        .start();
    pull_app(&ferry, &app);
    assert!(
        connects_to_registry(&proxy) > 0,
        "HTTPS_PROXY is set but the registry was not reached through it: {:?}",
        proxy.seen()
    );
    drop(ferry);

    let before = proxy.seen().len();
    let ferry = emu
        .ferry(Credential::Secret)
        .env("HTTPS_PROXY", &proxy.url())
        .env("NO_PROXY", ".azurecr.io")
        .start();
    pull_app(&ferry, &app);
    let after: Vec<String> = proxy.seen()[before..]
        .iter()
        .filter(|l| l.contains("azurecr.io"))
        .cloned()
        .collect();
    assert!(
        after.is_empty(),
        "NO_PROXY names the registry's domain, yet it went through the proxy: {after:?}"
    );
}

/// Manifest and blobs of `app` through `ferry`, by the upstream's short name.
fn pull_app(ferry: &Ferry, app: &PushedImage) {
    block_on(async {
        let base = format!("{}/v2/{UPSTREAM}/{}", ferry.url(), app.repo);
        let r = get(
            &format!("{base}/manifests/{}", app.tag),
            &media::ALL_MANIFESTS,
        )
        .await;
        assert_eq!(
            r.status,
            200,
            "manifest: {}\n{}",
            r.text(),
            crate::harness::process::tail_str(&ferry.log(), 30)
        );
        assert_eq!(r.body, app.manifest);
        for blob in app.blobs() {
            let r = get(&format!("{base}/blobs/{}", blob.digest), &[]).await;
            assert_eq!(r.status, 200, "blob {}: {}", blob.digest, r.text());
            assert!(r.body == blob.bytes, "bytes of {}", blob.digest);
        }
    });
}
