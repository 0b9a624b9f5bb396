//! Ferry authenticating to its upstream: htpasswd basic auth, Docker token auth with
//! credentials and anonymously. Clients of Ferry need no credentials; a wrong upstream
//! password is a 401 for the client, and neither the password nor a token the realm
//! issued ever shows up in a log or response.

use std::time::Duration;

use base64::Engine as _;

use crate::harness::ferry::{Ferry, FerryBuilder, LOCAL, Upstream};
use crate::harness::http::media;
use crate::harness::images::{PushedImage, push_image};
use crate::harness::process::run_ok;
use crate::harness::registry::{Registry, RegistryAuth};
use crate::harness::skopeo;
use crate::harness::token_server::{TokenServer, TokenServerOptions};
use crate::support::{Fetched, blob_url, get, manifest_url};

const USER: &str = "ferry-bot";
const PASSWORD: &str = "Upstream-S3cret-Pa55word-7f3a";
const WRONG_PASSWORD: &str = "Wrong-S3cret-Pa55word-91c2";

/// Every form in which `password` could leak: as is, and base64'd inside a Basic
/// header or alone.
fn secret_forms(user: &str, password: &str) -> Vec<String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    vec![
        password.to_owned(),
        b64.encode(format!("{user}:{password}")),
        b64.encode(password),
    ]
}

fn assert_no_leak(ferry: &Ferry, responses: &[&Fetched], password: &str) {
    assert_absent(
        ferry,
        responses,
        &secret_forms(USER, password),
        "the upstream password",
    );
}

/// No bearer or refresh token `tokens` issued (to Ferry or anyone) is in Ferry's log or
/// in `responses`: a token is a credential for as long as it lives.
fn assert_no_token_leak(ferry: &Ferry, responses: &[&Fetched], tokens: &TokenServer) {
    let issued = tokens.issued_secrets();
    assert!(!issued.is_empty(), "the token server issued tokens");
    assert_absent(ferry, responses, &issued, "a token the token server issued");
}

fn assert_absent(ferry: &Ferry, responses: &[&Fetched], secrets: &[String], what: &str) {
    let log = ferry.log();
    for secret in secrets {
        assert!(
            !log.contains(secret.as_str()),
            "ferry's log contains {what} (as {secret:?})"
        );
        for r in responses {
            assert!(
                !String::from_utf8_lossy(&r.body).contains(secret.as_str()),
                "a response body contains {what}"
            );
            for (name, value) in &r.headers {
                assert!(
                    !value.to_str().unwrap_or("").contains(secret.as_str()),
                    "response header {name} contains {what}"
                );
            }
        }
    }
}

/// Pulls manifest and every blob of `img` through Ferry, without credentials.
async fn pull_all(ferry: &Ferry, img: &PushedImage) -> Vec<Fetched> {
    let repo = &img.repo;
    let mut out = Vec::new();
    let r = get(&manifest_url(ferry, repo, &img.tag), &[media::OCI_MANIFEST]).await;
    assert_eq!(r.status, 200, "manifest through ferry: {}", r.text());
    assert_eq!(r.body, img.manifest);
    out.push(r);
    for blob in img.blobs() {
        let r = get(&blob_url(ferry, repo, &blob.digest), &[]).await;
        assert_eq!(r.status, 200, "blob through ferry: {}", r.text());
        assert!(r.body == blob.bytes, "bytes of {}", blob.digest);
        out.push(r);
    }
    out
}

fn ferry_with(registry: &Registry, username: &str, password: &str) -> Ferry {
    FerryBuilder::new()
        .upstream(Upstream::local(&registry.url()).basic_auth(username, password))
        .start()
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_auth_upstream() {
    let registry = Registry::start(RegistryAuth::basic(USER, PASSWORD));
    let img = push_image(&registry, "team/app", "v1", &[300_000]);
    let ferry = ferry_with(&registry, USER, PASSWORD);
    let responses = pull_all(&ferry, &img).await;

    // A real client, with no credentials of its own.
    let dest = crate::harness::temp_dir("skopeo-dir");
    let mut cmd = skopeo::copy();
    cmd.arg(format!("docker://{}/{LOCAL}/team/app:v1", ferry.addr()))
        .arg(format!("dir:{}", dest.path().join("img").display()));
    run_ok(cmd, Duration::from_secs(120));
    assert_eq!(
        std::fs::read(dest.path().join("img/manifest.json")).unwrap(),
        img.manifest
    );

    let refs: Vec<&Fetched> = responses.iter().collect();
    assert_no_leak(&ferry, &refs, PASSWORD);
}

#[tokio::test(flavor = "multi_thread")]
async fn token_auth_upstream_with_credentials() {
    let opts = TokenServerOptions {
        users: vec![
            ("pusher".to_owned(), "pusher-secret-pw".to_owned()),
            (USER.to_owned(), PASSWORD.to_owned()),
        ],
        allow_anonymous: false,
        ..Default::default()
    };
    let tokens = TokenServer::start(opts);
    let registry = Registry::start(RegistryAuth::token(&tokens));
    let img = push_image(&registry, "team/app", "v1", &[300_000]);
    let seen_before = tokens.requests().len();
    let ferry = ferry_with(&registry, USER, PASSWORD);
    let responses = pull_all(&ferry, &img).await;

    let ferry_requests: Vec<_> = tokens.requests().into_iter().skip(seen_before).collect();
    eprintln!(
        "ferry made {} token request(s) for 1 manifest + {} blobs",
        ferry_requests.len(),
        img.blobs().len()
    );
    assert!(!ferry_requests.is_empty(), "ferry asked the token server");
    for r in &ferry_requests {
        assert_eq!(r.status, 200, "token request {r:?}");
        assert_eq!(
            r.account.as_deref(),
            Some(USER),
            "ferry authenticated to the realm: {r:?}"
        );
        assert_eq!(
            r.service.as_deref(),
            Some(tokens.service()),
            "service from the challenge: {r:?}"
        );
    }
    assert!(
        ferry_requests.iter().any(|r| r
            .scopes
            .iter()
            .any(|s| s.starts_with("repository:team/app:") && s.contains("pull"))),
        "ferry asked for pull on team/app: {ferry_requests:?}"
    );
    let refs: Vec<&Fetched> = responses.iter().collect();
    assert_no_leak(&ferry, &refs, PASSWORD);
    assert_no_token_leak(&ferry, &refs, &tokens);
}

#[tokio::test(flavor = "multi_thread")]
async fn token_auth_upstream_anonymous() {
    let tokens = TokenServer::start(TokenServerOptions {
        allow_anonymous: true,
        ..Default::default()
    });
    let registry = Registry::start(RegistryAuth::token(&tokens));
    let img = push_image(&registry, "team/app", "v1", &[300_000]);
    let seen_before = tokens.requests().len();
    let ferry = FerryBuilder::new()
        .upstream(Upstream::local(&registry.url()))
        .start();
    let responses = pull_all(&ferry, &img).await;
    let ferry_requests: Vec<_> = tokens.requests().into_iter().skip(seen_before).collect();
    assert!(!ferry_requests.is_empty(), "ferry got an anonymous token");
    for r in &ferry_requests {
        assert!(
            !r.had_credentials,
            "anonymous upstream, yet credentials were sent: {r:?}"
        );
        assert_eq!(r.status, 200, "{r:?}");
    }
    let refs: Vec<&Fetched> = responses.iter().collect();
    assert_no_token_leak(&ferry, &refs, &tokens);
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_basic_password_is_401_and_never_leaks() {
    let registry = Registry::start(RegistryAuth::basic(USER, PASSWORD));
    let img = push_image(&registry, "team/app", "v1", &[1024]);
    let ferry = ferry_with(&registry, USER, WRONG_PASSWORD);
    let m = get(
        &manifest_url(&ferry, "team/app", "v1"),
        &[media::OCI_MANIFEST],
    )
    .await;
    m.assert_error(401, "UNAUTHORIZED");
    let b = get(&blob_url(&ferry, "team/app", &img.config.digest), &[]).await;
    b.assert_error(401, "UNAUTHORIZED");
    assert_no_leak(&ferry, &[&m, &b], WRONG_PASSWORD);
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_token_realm_password_is_401_and_never_leaks() {
    let opts = TokenServerOptions {
        users: vec![
            ("pusher".to_owned(), "pusher-secret-pw".to_owned()),
            (USER.to_owned(), PASSWORD.to_owned()),
        ],
        ..Default::default()
    };
    let tokens = TokenServer::start(opts);
    let registry = Registry::start(RegistryAuth::token(&tokens));
    let img = push_image(&registry, "team/app", "v1", &[1024]);
    let seen_before = tokens.requests().len();
    let ferry = ferry_with(&registry, USER, WRONG_PASSWORD);
    let m = get(
        &manifest_url(&ferry, "team/app", "v1"),
        &[media::OCI_MANIFEST],
    )
    .await;
    m.assert_error(401, "UNAUTHORIZED");
    let b = get(&blob_url(&ferry, "team/app", &img.config.digest), &[]).await;
    b.assert_error(401, "UNAUTHORIZED");
    let ferry_requests: Vec<_> = tokens.requests().into_iter().skip(seen_before).collect();
    assert!(
        ferry_requests
            .iter()
            .any(|r| r.had_credentials && r.status == 401),
        "the realm refused ferry's credentials: {ferry_requests:?}"
    );
    assert_no_leak(&ferry, &[&m, &b], WRONG_PASSWORD);
    // Only the pusher's tokens exist; Ferry must not have come by one either.
    assert_no_token_leak(&ferry, &[&m, &b], &tokens);
}
