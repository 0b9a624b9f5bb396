//! Upstream secrets where the README says they come from: an environment variable
//! (`*_env`), a bearer `token_file` and an Entra `client_secret_file` that are
//! rotated while Ferry runs. None of them ever reaches the log.

use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::harness::acr::{AcrEmulator, Credential, Endpoint, Lifetimes, UPSTREAM};
use crate::harness::ferry::{Ferry, FerryBuilder, Upstream};
use crate::harness::http::media;
use crate::harness::images::push_image_http;
use crate::harness::registry::{Registry, RegistryAuth};
use crate::harness::{block_on, sha256_digest, temp_dir};
use crate::support::{get, manifest_url};

use super::{BearerGate, rotate_file};

/// Panics if `secret` (or its Basic-auth form with `user`) is in Ferry's log.
fn assert_not_logged(ferry: &Ferry, user: &str, secret: &str) {
    let log = ferry.log();
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{secret}"));
    assert!(!log.contains(secret), "the secret is in Ferry's log");
    assert!(
        !log.contains(&basic),
        "the Basic credentials are in Ferry's log"
    );
}

/// README: "every *_file secret can come from an environment variable instead:
/// password_env = "VAR"". The password is only in the environment: Ferry pulls with
/// it, `config check` accepts the file, and neither prints it.
#[tokio::test(flavor = "multi_thread")]
async fn password_env_takes_the_password_from_the_environment_and_never_logs_it() {
    const VAR: &str = "CORP_REGISTRY_PASSWORD";
    let password = format!("env-pw-{}", &sha256_digest(b"password_env")[7..27]);
    let registry = Registry::start(RegistryAuth::basic("puller", &password));
    let img = push_image_http(&registry, "team/app", "v1", &[30_000]);
    let ferry = FerryBuilder::new()
        .upstream(Upstream::local(&registry.url()).auth_inline(&format!(
            "{{ kind = \"basic\", username = \"puller\", password_env = \"{VAR}\" }}"
        )))
        .env(VAR, &password)
        .start();
    assert!(
        !ferry.config().contains(&password),
        "the test put the password in the file"
    );
    let caches = crate::support::pull_image(&ferry.url(), &img).await;
    assert_eq!(caches[0], "MISS");

    let out = crate::harness::process::run_with_timeout(
        {
            let mut cmd = Ferry::cli_command();
            cmd.args(["config", "check"])
                .arg(ferry.config_path())
                .env(VAR, &password);
            cmd
        },
        Duration::from_secs(30),
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "config check with {VAR} set\n{text}");
    assert!(
        !text.contains(&password),
        "config check printed the password"
    );

    // Without the variable the file does not validate: the password came from it.
    let out = crate::harness::process::run_with_timeout(
        {
            let mut cmd = Ferry::cli_command();
            cmd.args(["config", "check"])
                .arg(ferry.config_path())
                .env_remove(VAR);
            cmd
        },
        Duration::from_secs(30),
    );
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "config check without {VAR} passed");
    assert!(text.contains(VAR), "the refusal names the variable: {text}");
    assert_not_logged(&ferry, "puller", &password);
}

/// `token_env`: the bearer token from the environment only, sent, never logged.
#[tokio::test(flavor = "multi_thread")]
async fn token_env_takes_the_bearer_token_from_the_environment() {
    const VAR: &str = "CORP_REGISTRY_TOKEN";
    let token = format!("tok-env-{}", &sha256_digest(b"token_env")[7..39]);
    let registry = Registry::start(RegistryAuth::None);
    let img = push_image_http(&registry, "team/app", "v1", &[30_000]);
    let gate = BearerGate::start(registry.addr(), &token);
    let ferry = FerryBuilder::new()
        .upstream(
            Upstream::local(&gate.url())
                .auth_inline(&format!("{{ kind = \"bearer\", token_env = \"{VAR}\" }}")),
        )
        .env(VAR, &token)
        .start();
    assert!(!ferry.config().contains(&token));
    crate::support::pull_image(&ferry.url(), &img).await;
    let bearer = format!("Bearer {token}");
    assert!(
        gate.seen()
            .iter()
            .all(|a| a.as_deref() == Some(bearer.as_str())),
        "every upstream request carries the token from {VAR}"
    );
    assert!(!ferry.log().contains(&token), "the token is in Ferry's log");
}

/// `client_secret_env`: the Entra client secret from the environment only.
#[test]
fn client_secret_env_takes_the_entra_secret_from_the_environment() {
    const VAR: &str = "ACR_SP_CLIENT_SECRET";
    let emu = AcrEmulator::start_with(Lifetimes::default());
    let app = emu.push_image("team/app", "1", &[40_000]);
    let (toml, env) = emu.ferry_config(Credential::Secret);
    let file = format!(
        "client_secret_file = \"{}\"",
        emu.dir().join("client-secret").display()
    );
    assert!(toml.contains(&file), "{toml}");
    std::fs::remove_file(emu.dir().join("client-secret")).unwrap();
    let mut builder = FerryBuilder::new()
        .extra_toml(&toml.replace(&file, &format!("client_secret_env = \"{VAR}\"")))
        .env(VAR, &emu.ids().sp_client_secret);
    for (k, v) in &env {
        builder = builder.env(k, v);
    }
    let ferry = builder.start();
    block_on(async {
        let base = format!("{}/v2/{UPSTREAM}/team/app", ferry.url());
        let r = get(&format!("{base}/manifests/1"), &media::ALL_MANIFESTS).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.body, app.manifest);
    });
    emu.assert_no_leaks(&[("ferry log", ferry.log().as_bytes())]);
}

/// README: `auth = { kind = "bearer", token_file = … }`, and "secret files
/// (`password_file`, `token_file`, …) are re-read whenever they change". An upstream
/// that takes only the current token: Ferry sends it, and after the file is replaced
/// sends the new one, without a reload; neither token is logged.
#[tokio::test(flavor = "multi_thread")]
async fn bearer_token_file_is_sent_and_a_rotated_file_is_picked_up() {
    let old = format!("tok-old-{}", &sha256_digest(b"old")[7..39]);
    let new = format!("tok-new-{}", &sha256_digest(b"new")[7..39]);
    let registry = Registry::start(RegistryAuth::None);
    let first = push_image_http(&registry, "team/first", "v1", &[30_000]);
    let second = push_image_http(&registry, "team/second", "v1", &[30_000]);
    let gate = BearerGate::start(registry.addr(), &old);
    let secrets = temp_dir("bearer");
    let token_file = secrets.path().join("token");
    std::fs::write(&token_file, &old).unwrap();
    let ferry = FerryBuilder::new()
        .upstream(Upstream::local(&gate.url()).auth_inline(&format!(
            "{{ kind = \"bearer\", token_file = \"{}\" }}",
            token_file.display()
        )))
        .start();

    crate::support::pull_image(&ferry.url(), &first).await;
    let seen = gate.seen();
    assert!(!seen.is_empty(), "nothing reached the upstream");
    let bearer_old = format!("Bearer {old}");
    assert!(
        seen.iter()
            .all(|a| a.as_deref() == Some(bearer_old.as_str())),
        "every upstream request carries the token from the file: {seen:?}"
    );

    // The upstream now takes only the new token; the file is rotated.
    gate.accept_only(&new);
    rotate_file(&token_file, &new);
    let url = manifest_url(&ferry, &second.repo, &second.tag);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = get(&url, &[media::OCI_MANIFEST]).await;
        if r.status == 200 {
            assert_eq!(sha256_digest(&r.body), second.manifest_digest);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rotated token was not used within 10 s: {} {}",
            r.status,
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    crate::support::pull_image(&ferry.url(), &second).await;
    let bearer_new = format!("Bearer {new}");
    assert_eq!(
        gate.seen().last().cloned().flatten().as_deref(),
        Some(bearer_new.as_str())
    );
    let log = ferry.log();
    assert!(
        !log.contains(&old) && !log.contains(&new),
        "a token is in Ferry's log"
    );
}

/// README (ACR): "A rotated secret file is picked up without a restart." Ferry starts
/// with a secret Entra ID refuses (an expired one, say); once the file holds the valid
/// secret, pulls work, with no reload or restart; no secret reaches the log.
#[test]
fn a_rotated_entra_client_secret_file_is_picked_up_without_a_restart() {
    let emu = AcrEmulator::start_with(Lifetimes::default());
    let app = emu.push_image("team/app", "1", &[60_000]);
    let ferry = emu.ferry(Credential::WrongSecret).start();
    let url = format!("{}/v2/{UPSTREAM}/team/app/manifests/1", ferry.url());
    block_on(async {
        get(&url, &media::ALL_MANIFESTS)
            .await
            .assert_error(401, "UNAUTHORIZED");
    });
    assert!(emu.count(Endpoint::Entra) > 0, "Entra ID was asked");

    rotate_file(
        &emu.dir().join("wrong-client-secret"),
        &emu.ids().sp_client_secret,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    block_on(async {
        loop {
            let r = get(&url, &media::ALL_MANIFESTS).await;
            if r.status == 200 {
                assert_eq!(r.body, app.manifest, "manifest bytes");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the rotated client secret was not used within 10 s: {} {}\n{}",
                r.status,
                r.text(),
                crate::harness::process::tail_str(&ferry.log(), 30)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for blob in app.blobs() {
            let r = get(
                &format!(
                    "{}/v2/{UPSTREAM}/team/app/blobs/{}",
                    ferry.url(),
                    blob.digest
                ),
                &[],
            )
            .await;
            assert_eq!(r.status, 200, "blob {}: {}", blob.digest, r.text());
            assert!(r.body == blob.bytes, "bytes of {}", blob.digest);
        }
    });
    let log = ferry.log();
    emu.assert_no_leaks(&[("ferry log", log.as_bytes())]);
}
