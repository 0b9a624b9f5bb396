//! Ferry in front of a private Azure Container Registry reached over Private Link,
//! authenticating with Entra ID (client secret, certificate, workload identity,
//! managed identity), against the emulator in `harness::acr`: Entra and the managed
//! identity endpoint, the ACR front (`/oauth2/exchange`, `/oauth2/token`, `/v2/*` →
//! real Distribution) and the data endpoint on 127.0.0.2.
//!
//! The first tests validate the emulator itself with direct calls, so that a failure
//! further down is Ferry's.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::harness::acr::entra::{JWT_BEARER, sign_client_assertion};
use crate::harness::acr::{
    ACR_RESOURCE, ACR_SCOPE, AcrEmulator, Credential, DATA_HOST, Endpoint, Lifetimes,
    REGISTRY_HOST, UPSTREAM, jwt_claims, now_secs,
};
use crate::harness::block_on;
use crate::harness::containerd::Containerd;
use crate::harness::ferry::Ferry;
use crate::harness::http::{media, parse_challenge};
use crate::harness::images::PushedImage;
use crate::support::{Fetched, get, send};

const PAUSE_REPO: &str = "aks-managed-repository/oss/kubernetes/pause";
const APP_REPO: &str = "team/app";

// ---------------------------------------------------------------------------
// Direct calls: the emulator behaves as documented.
// ---------------------------------------------------------------------------

/// `POST` a form, returning (status, JSON body).
async fn post_form(c: &reqwest::Client, url: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let resp = c
        .post(url)
        .form(form)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn entra_secret(emu: &AcrEmulator, c: &reqwest::Client, secret: &str) -> (u16, Value) {
    let ids = emu.ids();
    post_form(
        c,
        &emu.entra_token_url(),
        &[
            ("grant_type", "client_credentials"),
            ("client_id", &ids.sp_client_id),
            ("client_secret", secret),
            ("scope", ACR_SCOPE),
        ],
    )
    .await
}

/// Entra token → refresh token → access token for `repo`.
async fn acr_access_token(emu: &AcrEmulator, c: &reqwest::Client, aad: &str, repo: &str) -> String {
    let base = emu.registry_url();
    let (status, body) = post_form(
        c,
        &format!("{base}/oauth2/exchange"),
        &[
            ("grant_type", "access_token"),
            ("service", REGISTRY_HOST),
            ("tenant", &emu.ids().tenant_id),
            ("access_token", aad),
        ],
    )
    .await;
    assert_eq!(status, 200, "exchange: {body}");
    let refresh = body["refresh_token"].as_str().expect("refresh_token");
    assert!(jwt_claims(refresh)["exp"].as_u64().unwrap() > now_secs());
    let scope = format!("repository:{repo}:pull,push");
    let (status, body) = post_form(
        c,
        &format!("{base}/oauth2/token"),
        &[
            ("grant_type", "refresh_token"),
            ("service", REGISTRY_HOST),
            ("scope", &scope),
            ("scope", "registry:catalog:*"),
            ("refresh_token", refresh),
        ],
    )
    .await;
    assert_eq!(status, 200, "token: {body}");
    assert!(
        body.get("expires_in").is_none(),
        "ACR answers only access_token"
    );
    let access = body["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned();
    let claims = jwt_claims(&access);
    assert_eq!(claims["aud"], REGISTRY_HOST);
    assert_eq!(
        claims["access"],
        serde_json::json!([{"type": "repository", "name": repo, "actions": ["pull"]}]),
        "pull only, nothing for the catalog"
    );
    access
}

#[test]
fn emulator_implements_the_documented_flow() {
    let emu = AcrEmulator::start();
    let img = emu.push_image(APP_REPO, "1", &[300_000, 40_000]);
    let ids = emu.ids().clone();
    block_on(async {
        let c = emu.client();
        let base = emu.registry_url().to_owned();

        // The registry challenges with its realm and a service that is not host:port.
        let resp = c.get(format!("{base}/v2/")).send().await.unwrap();
        assert_eq!(resp.status(), 401);
        let ch = parse_challenge(
            resp.headers()
                .get("www-authenticate")
                .unwrap()
                .to_str()
                .unwrap(),
        );
        assert!(ch.contains(&("realm".to_owned(), format!("{base}/oauth2/token"))));
        assert!(ch.contains(&("service".to_owned(), REGISTRY_HOST.to_owned())));

        // Entra: failures first.
        let (s, b) = entra_secret(&emu, &c, "not-the-secret").await;
        assert_eq!(s, 401, "{b}");
        assert_eq!(b["error"], "invalid_client");
        assert_eq!(b["error_codes"][0], 7000215);
        let (s, b) = post_form(
            &c,
            &emu.entra_token_url(),
            &[
                ("grant_type", "client_credentials"),
                ("client_id", &ids.sp_client_id),
                ("client_secret", &ids.sp_client_secret),
                ("scope", "https://management.azure.com/.default"),
            ],
        )
        .await;
        assert_eq!(s, 400, "{b}");
        assert_eq!(b["error"], "invalid_scope");
        let (s, b) = post_form(
            &c,
            &format!(
                "{}/{}/oauth2/v2.0/token",
                emu.authority_host(),
                "00000000-1111-2222-3333-444444444444"
            ),
            &[
                ("grant_type", "client_credentials"),
                ("client_id", &ids.sp_client_id),
                ("client_secret", &ids.sp_client_secret),
                ("scope", ACR_SCOPE),
            ],
        )
        .await;
        assert_eq!(s, 400, "unknown tenant: {b}");

        // Client secret.
        let (s, b) = entra_secret(&emu, &c, &ids.sp_client_secret).await;
        assert_eq!(s, 200, "{b}");
        assert_eq!(b["token_type"], "Bearer");
        assert_eq!(b["expires_in"], 3599);
        let aad = b["access_token"].as_str().unwrap().to_owned();
        let claims = jwt_claims(&aad);
        assert_eq!(claims["aud"], ACR_RESOURCE);
        assert_eq!(claims["tid"], ids.tenant_id.as_str());

        // The exchange refuses a wrong tenant and a token that is not Entra's.
        let (s, b) = post_form(
            &c,
            &format!("{base}/oauth2/exchange"),
            &[
                ("grant_type", "access_token"),
                ("service", REGISTRY_HOST),
                ("tenant", "someone-else"),
                ("access_token", &aad),
            ],
        )
        .await;
        assert_eq!(s, 401, "{b}");
        let forged = emu.mint_access_token(APP_REPO, &["pull"], 60);
        let (s, _) = post_form(
            &c,
            &format!("{base}/oauth2/exchange"),
            &[
                ("grant_type", "access_token"),
                ("service", REGISTRY_HOST),
                ("access_token", &forged),
            ],
        )
        .await;
        assert_eq!(s, 401, "an ACR token is not an Entra token");

        let access = acr_access_token(&emu, &c, &aad, APP_REPO).await;

        // Manifest through the front.
        let resp = c
            .get(format!("{base}/v2/{APP_REPO}/manifests/1"))
            .bearer_auth(&access)
            .header("accept", media::OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.bytes().await.unwrap().to_vec(), img.manifest);

        // A token for another repository is refused by Distribution.
        let other = emu.mint_access_token("team/other", &["pull"], 60);
        let resp = c
            .get(format!("{base}/v2/{APP_REPO}/manifests/1"))
            .bearer_auth(&other)
            .header("accept", media::OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "insufficient scope");

        // Blob: 307 to the data endpoint with se & sig.
        let layer = &img.layers[0];
        let resp = c
            .get(format!("{base}/v2/{APP_REPO}/blobs/{}", layer.digest))
            .bearer_auth(&access)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 307);
        let location = resp.headers()["location"].to_str().unwrap().to_owned();
        let url = reqwest::Url::parse(&location).unwrap();
        assert_eq!(url.host_str(), Some(DATA_HOST));
        assert_eq!(url.port(), Some(emu.data_addr().port()));
        assert!(
            location.contains("se=") && location.contains("&sig="),
            "{location}"
        );

        // Following it with Authorization is refused; without, it serves the bytes.
        let resp = c.get(&location).bearer_auth(&access).send().await.unwrap();
        assert_eq!(resp.status(), 400, "Authorization at the data endpoint");
        let resp = c.get(&location).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(resp.bytes().await.unwrap().to_vec() == layer.bytes);
        let resp = c
            .get(&location)
            .header("range", "bytes=100-199")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 206);
        assert_eq!(
            resp.headers()["content-range"].to_str().unwrap(),
            format!("bytes 100-199/{}", layer.size)
        );
        assert!(resp.bytes().await.unwrap().to_vec() == layer.bytes[100..200]);
        let head = c.head(&location).send().await.unwrap();
        assert_eq!(head.status(), 200);
        assert_eq!(
            head.headers()["content-length"].to_str().unwrap(),
            layer.size.to_string()
        );
        // A tampered signature is refused.
        let tampered = location.replace("sig=", "sig=00");
        assert_eq!(c.get(&tampered).send().await.unwrap().status(), 403);

        // A client that follows redirects itself (reqwest drops Authorization across
        // hosts) gets the bytes in one call.
        let follow = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(
                &std::fs::read(emu.ca_file()).unwrap(),
            )
            .unwrap()])
            .resolve(REGISTRY_HOST, emu.front_addr())
            .resolve(DATA_HOST, emu.data_addr())
            .no_proxy()
            .build()
            .unwrap();
        let resp = follow
            .get(format!("{base}/v2/{APP_REPO}/blobs/{}", img.config.digest))
            .bearer_auth(&access)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(resp.bytes().await.unwrap().to_vec() == img.config.bytes);
    });

    // The data endpoint saw exactly one request with Authorization (the one above).
    let data = emu.records_of(Endpoint::Data);
    assert_eq!(
        data.iter()
            .filter(|r| r.header("authorization").is_some())
            .count(),
        1
    );
    assert!(data.iter().any(|r| r.status == 403));
    assert!(emu.count(Endpoint::Exchange) >= 3);

    // The leak detector finds the secret, and a token from only its signature.
    let secret_in_log = format!("level=debug secret={}", ids.sp_client_secret);
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        emu.assert_no_leaks(&[("a log", secret_in_log.as_bytes())])
    }));
    assert!(caught.is_err(), "the client secret is detected");
    let token = emu.mint_access_token(APP_REPO, &["pull"], 60);
    let sig_only = format!("token=…{}", token.rsplit('.').next().unwrap());
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        emu.assert_no_leaks(&[("a body", sig_only.as_bytes())])
    }));
    assert!(caught.is_err(), "a token's signature is detected");
    emu.assert_no_leaks(&[("clean", b"nothing secret here")]);
}

#[test]
fn emulator_checks_certificates_federated_tokens_and_managed_identity() {
    let emu = AcrEmulator::start();
    let ids = emu.ids().clone();
    let key_pem = std::fs::read_to_string(emu.client_cert_file()).unwrap();
    let cert_der = emu.client_cert_der();
    block_on(async {
        let c = emu.client();
        let url = emu.entra_token_url();
        let assertion_form = |a: &str, client_id: &str| {
            vec![
                ("grant_type".to_owned(), "client_credentials".to_owned()),
                ("client_id".to_owned(), client_id.to_owned()),
                ("client_assertion_type".to_owned(), JWT_BEARER.to_owned()),
                ("client_assertion".to_owned(), a.to_owned()),
                ("scope".to_owned(), ACR_SCOPE.to_owned()),
            ]
        };
        let post = |form: Vec<(String, String)>| {
            let c = c.clone();
            let url = url.clone();
            async move {
                let refs: Vec<(&str, &str)> =
                    form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                post_form(&c, &url, &refs).await
            }
        };

        // A good assertion.
        let good = sign_client_assertion(&key_pem, &cert_der, &ids.sp_client_id, &url, 300);
        let (s, b) = post(assertion_form(&good, &ids.sp_client_id)).await;
        assert_eq!(s, 200, "{b}");
        // Expired, wrong audience, wrong issuer, signed by another key.
        let expired = sign_client_assertion(&key_pem, &cert_der, &ids.sp_client_id, &url, -10);
        let (s, b) = post(assertion_form(&expired, &ids.sp_client_id)).await;
        assert_eq!(s, 401, "expired assertion: {b}");
        let wrong_aud = sign_client_assertion(
            &key_pem,
            &cert_der,
            &ids.sp_client_id,
            "https://login.microsoftonline.com/x/oauth2/v2.0/token",
            300,
        );
        let (s, b) = post(assertion_form(&wrong_aud, &ids.sp_client_id)).await;
        assert_eq!(s, 401, "wrong aud: {b}");
        let other_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        let forged = sign_client_assertion(
            &other_key.serialize_pem(),
            &cert_der,
            &ids.sp_client_id,
            &url,
            300,
        );
        let (s, b) = post(assertion_form(&forged, &ids.sp_client_id)).await;
        assert_eq!(s, 401, "bad signature: {b}");
        assert_eq!(b["error_codes"][0], 700027);

        // Federated token: verbatim only.
        let (s, b) = post(assertion_form(&ids.federated_token, &ids.wi_client_id)).await;
        assert_eq!(s, 200, "{b}");
        let (s, _) = post(assertion_form(
            &format!("{}\n", ids.federated_token),
            &ids.wi_client_id,
        ))
        .await;
        assert_eq!(s, 400, "a changed federated token");

        // Managed identity.
        let mi = emu.identity_endpoint();
        let get_mi = |client_id: Option<&str>, header: &str| {
            let mut u = reqwest::Url::parse(&mi).unwrap();
            u.query_pairs_mut()
                .append_pair("api-version", "2019-08-01")
                .append_pair("resource", ACR_RESOURCE);
            if let Some(id) = client_id {
                u.query_pairs_mut().append_pair("client_id", id);
            }
            c.get(u)
                .header("metadata", "true")
                .header("x-identity-header", header)
                .send()
        };
        let resp = get_mi(None, &ids.identity_header).await.unwrap();
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        assert!(
            body["expires_on"].is_string(),
            "expires_on is a string: {body}"
        );
        assert_eq!(body["resource"], ACR_RESOURCE);
        let resp = get_mi(Some(&ids.mi_user_client_id), &ids.identity_header)
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["client_id"], ids.mi_user_client_id.as_str());
        // The token works for the exchange.
        let aad = body["access_token"].as_str().unwrap().to_owned();
        let resp = c
            .post(format!("{}/oauth2/exchange", emu.registry_url()))
            .form(&[
                ("grant_type", "access_token"),
                ("service", REGISTRY_HOST),
                ("access_token", &aad),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            get_mi(None, "wrong").await.unwrap().status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            get_mi(Some("not-assigned"), &ids.identity_header)
                .await
                .unwrap()
                .status(),
            StatusCode::BAD_REQUEST
        );
    });
    let entra = emu.records_of(Endpoint::Entra);
    assert!(entra.iter().any(|r| r.detail == "certificate"));
    assert!(entra.iter().any(|r| r.detail == "federated token"));
}

#[test]
fn emulator_knobs_expire_throttle_and_revoke() {
    let emu = AcrEmulator::start_with(Lifetimes {
        access: 2,
        redirect: 1,
        ..Lifetimes::default()
    });
    let img = emu.push_image(APP_REPO, "1", &[100_000]);
    block_on(async {
        let c = emu.client();
        let base = emu.registry_url().to_owned();
        let (_, b) = entra_secret(&emu, &c, &emu.ids().sp_client_secret).await;
        let access =
            acr_access_token(&emu, &c, b["access_token"].as_str().unwrap(), APP_REPO).await;
        let manifest = format!("{base}/v2/{APP_REPO}/manifests/1");
        let get_m = |t: String| {
            c.get(&manifest)
                .bearer_auth(t)
                .header("accept", media::OCI_MANIFEST)
                .send()
        };
        assert_eq!(get_m(access.clone()).await.unwrap().status(), 200);

        // 429 for the next two requests matching the pattern.
        emu.throttle_next(2, "/manifests/", 1);
        for _ in 0..2 {
            let r = get_m(access.clone()).await.unwrap();
            assert_eq!(r.status(), 429);
            assert_eq!(r.headers()["retry-after"], "1");
        }
        assert_eq!(emu.throttles_left(), 0);
        assert_eq!(get_m(access.clone()).await.unwrap().status(), 200);

        // Revoked token: 401 with the challenge.
        emu.reject_next_tokens(1);
        let r = get_m(access.clone()).await.unwrap();
        assert_eq!(r.status(), 401);
        assert!(
            r.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .contains("invalid_token")
        );

        // A stale redirect is refused at the data endpoint.
        let r = c
            .get(format!(
                "{base}/v2/{APP_REPO}/blobs/{}",
                img.layers[0].digest
            ))
            .bearer_auth(&access)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 307);
        let location = r.headers()["location"].to_str().unwrap().to_owned();
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(c.get(&location).send().await.unwrap().status(), 403);

        // The access token (2 s) has expired: the front refuses it even though
        // Distribution would allow 60 s of leeway.
        let r = get_m(access.clone()).await.unwrap();
        assert_eq!(r.status(), 401);
        let ch = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
        assert!(
            ch.contains(&format!("scope=\"repository:{APP_REPO}:pull\"")),
            "{ch}"
        );

        // Slow and cut data responses.
        emu.set_data_rate(Some(200_000));
        let r = c
            .get(format!(
                "{base}/v2/{APP_REPO}/blobs/{}",
                img.layers[0].digest
            ))
            .bearer_auth(emu.mint_access_token(APP_REPO, &["pull"], 60))
            .send()
            .await
            .unwrap();
        let location = r.headers()["location"].to_str().unwrap().to_owned();
        let started = Instant::now();
        let body = c
            .get(&location)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert!(body.to_vec() == img.layers[0].bytes);
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "rate limit"
        );
        emu.set_data_rate(None);
        emu.cut_next_data(1, 1000);
        let r = c
            .get(format!(
                "{base}/v2/{APP_REPO}/blobs/{}",
                img.layers[0].digest
            ))
            .bearer_auth(emu.mint_access_token(APP_REPO, &["pull"], 60))
            .send()
            .await
            .unwrap();
        let location = r.headers()["location"].to_str().unwrap().to_owned();
        let r = c.get(&location).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.bytes().await.is_err(), "the body is cut short");

        // Expired Entra tokens are refused by the exchange, expired refresh tokens by
        // the token endpoint.
        // Two seconds, not one: `exp` has one-second granularity, so a one-second
        // token can expire before a loaded machine gets to use it once.
        emu.set_lifetimes(Lifetimes {
            entra: 2,
            refresh: 2,
            ..emu.lifetimes()
        });
        let (_, b) = entra_secret(&emu, &c, &emu.ids().sp_client_secret).await;
        let aad = b["access_token"].as_str().unwrap().to_owned();
        let exchange = |aad: String| {
            c.post(format!("{base}/oauth2/exchange"))
                .form(&[
                    ("grant_type", "access_token".to_owned()),
                    ("service", REGISTRY_HOST.to_owned()),
                    ("access_token", aad),
                ])
                .send()
        };
        let r = exchange(aad.clone()).await.unwrap();
        assert_eq!(r.status(), 200);
        let refresh = r.json::<Value>().await.unwrap()["refresh_token"]
            .as_str()
            .unwrap()
            .to_owned();
        tokio::time::sleep(Duration::from_millis(3100)).await;
        assert_eq!(
            exchange(aad).await.unwrap().status(),
            401,
            "expired Entra token"
        );
        let r = c
            .post(format!("{base}/oauth2/token"))
            .form(&[
                ("grant_type", "refresh_token"),
                ("service", REGISTRY_HOST),
                ("scope", &format!("repository:{APP_REPO}:pull")),
                ("refresh_token", &refresh),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "expired refresh token");
    });
}

// ---------------------------------------------------------------------------
// Ferry against the emulator.
// ---------------------------------------------------------------------------

const MCR: &str = "mcr.microsoft.com";

/// An emulator with `aks-managed-repository/oss/kubernetes/pause:3.6` and
/// `team/app:1` pushed.
struct Seeded {
    emu: AcrEmulator,
    pause: PushedImage,
    app: PushedImage,
}

fn seeded(lifetimes: Lifetimes) -> Seeded {
    let emu = AcrEmulator::start_with(lifetimes);
    let pause = emu.push_image(PAUSE_REPO, "3.6", &[250_000]);
    let app = emu.push_image(APP_REPO, "1", &[400_000, 60_000]);
    Seeded { emu, pause, app }
}

/// `<ferry>/v2/<path>/<kind>/<reference>[?ns=<ns>]`.
fn ferry_url(ferry: &Ferry, path: &str, kind: &str, reference: &str, ns: Option<&str>) -> String {
    let mut u = format!("{}/v2/{path}/{kind}/{reference}", ferry.url());
    if let Some(ns) = ns {
        u += &format!("?ns={ns}");
    }
    u
}

/// Pulls the manifest (by tag) and every blob of `img` through Ferry as
/// `/v2/<path>/…[?ns=]`, checking the bytes. Returns every response.
async fn pull_http(ferry: &Ferry, path: &str, ns: Option<&str>, img: &PushedImage) -> Vec<Fetched> {
    let mut out = Vec::new();
    let r = get(
        &ferry_url(ferry, path, "manifests", &img.tag, ns),
        &media::ALL_MANIFESTS,
    )
    .await;
    assert_eq!(
        r.status,
        200,
        "manifest {path}:{} (ns {ns:?}) through ferry: {}\n--- ferry log ---\n{}",
        img.tag,
        r.text(),
        crate::harness::process::tail_str(&ferry.log(), 30)
    );
    assert_eq!(r.body, img.manifest, "manifest bytes of {path}:{}", img.tag);
    out.push(r);
    for blob in img.blobs() {
        let r = get(&ferry_url(ferry, path, "blobs", &blob.digest, ns), &[]).await;
        assert_eq!(
            r.status,
            200,
            "blob {} of {path} (ns {ns:?}) through ferry: {}\n--- ferry log ---\n{}",
            blob.digest,
            r.text(),
            crate::harness::process::tail_str(&ferry.log(), 30)
        );
        assert!(r.body == blob.bytes, "bytes of {}", blob.digest);
        out.push(r);
    }
    out
}

/// What must hold after any Ferry run against the emulator:
/// - the data endpoint served blobs, never saw `Authorization`, never had to refuse a
///   stale or forged redirect (403) or a credential (400);
/// - the registry never saw anything but bearer tokens;
/// - every `/oauth2/token` request asked for one repository's pull scope;
/// - no secret or token the emulator issued or checked is in Ferry's log or in any
///   response.
fn assert_clean(emu: &AcrEmulator, ferry: &Ferry, responses: &[Fetched], expect_blobs: bool) {
    let data = emu.records_of(Endpoint::Data);
    if expect_blobs {
        assert!(
            data.iter()
                .any(|r| r.method == "GET" && r.status / 100 == 2),
            "the data endpoint served no blob: {data:#?}"
        );
    }
    for r in &data {
        assert!(
            r.header("authorization").is_none(),
            "Authorization reached the data endpoint: {} {}",
            r.method,
            r.path()
        );
        assert!(
            r.status != 403 && r.status != 400,
            "the data endpoint refused {} {} with {} ({})",
            r.method,
            r.target,
            r.status,
            r.detail
        );
    }
    for r in emu.records_of(Endpoint::Registry) {
        if let Some(a) = r.header("authorization") {
            assert!(
                a.starts_with("Bearer "),
                "{} {} carried non-bearer credentials",
                r.method,
                r.path()
            );
        }
    }
    for r in emu.records_of(Endpoint::Token) {
        assert_eq!(
            r.method, "POST",
            "token requests use the documented POST form"
        );
        assert!(
            !r.scopes.is_empty()
                && r.scopes.iter().all(|s| {
                    s.starts_with("repository:")
                        && s.ends_with(":pull")
                        && s.matches(':').count() == 2
                }),
            "token request scopes should be one repository's pull: {:?}",
            r.scopes
        );
    }
    let log = ferry.log();
    let mut hay: Vec<(String, Vec<u8>)> = vec![("ferry's log".to_owned(), log.into_bytes())];
    for (i, r) in responses.iter().enumerate() {
        hay.push((format!("response #{i} body"), r.body.clone()));
        let headers: String = r
            .headers
            .iter()
            .map(|(k, v)| format!("{k}: {}\n", v.to_str().unwrap_or("")))
            .collect();
        hay.push((format!("response #{i} headers"), headers.into_bytes()));
    }
    let refs: Vec<(&str, &[u8])> = hay
        .iter()
        .map(|(l, b)| (l.as_str(), b.as_slice()))
        .collect();
    emu.assert_no_leaks(&refs);
}

/// A containerd whose hosts dir sends `host` to `mirror_toml` (a `[host…]` table),
/// with `server` unreachable so only Ferry can answer.
fn node_for(ctd: &Containerd, host: &str, mirror_toml: &str) -> std::path::PathBuf {
    let hosts = ctd.hosts_dir();
    ctd.write_hosts_toml(
        &hosts,
        host,
        &format!("server = \"http://127.0.0.1:1\"\n\n{mirror_toml}"),
    );
    hosts
}

fn plain_mirror(ferry: &Ferry) -> String {
    format!(
        "[host.\"{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
        ferry.url()
    )
}

fn ctr_pull_ok(
    ctd: &Containerd,
    hosts: &std::path::Path,
    ferry: &Ferry,
    reference: &str,
    extra: &[&str],
) {
    let out = ctd.pull(hosts, reference, extra);
    assert!(
        out.status.success(),
        "ctr pull {reference} failed ({})\nstderr:\n{}\nstdout:\n{}\n{}\n--- ferry log (tail) ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout),
        ctd.log_tails(20),
        crate::harness::process::tail_str(&ferry.log(), 40),
    );
}

fn assert_content(ctd: &Containerd, img: &PushedImage) {
    for blob in img.blobs() {
        assert!(
            ctd.has_content(&blob.digest) && ctd.content(&blob.digest) == blob.bytes,
            "containerd's bytes of {} ({})",
            blob.digest,
            blob.media_type
        );
    }
}

fn entra_details(emu: &AcrEmulator) -> Vec<String> {
    emu.records_of(Endpoint::Entra)
        .into_iter()
        .map(|r| format!("{} {}", r.status, r.detail))
        .collect()
}

#[test]
fn ctr_pulls_mcr_and_acr_images_through_ferry_with_a_client_secret() {
    let s = seeded(Lifetimes::default());
    let emu = &s.emu;
    // The AKS bootstrap hosts.toml (AgentBaker) form gets its own image, so that
    // containerd really fetches through it.
    let coredns = emu.push_image(
        "aks-managed-repository/oss/kubernetes/coredns",
        "v1.9.3",
        &[150_000, 30_000],
    );
    let ferry = emu.ferry(Credential::Secret).start();
    let ctd = Containerd::start();

    // mcr.microsoft.com/oss/kubernetes/pause:3.6 → ?ns=mcr.microsoft.com → the rule.
    let hosts = node_for(&ctd, MCR, &plain_mirror(&ferry));
    ctr_pull_ok(
        &ctd,
        &hosts,
        &ferry,
        &format!("{MCR}/oss/kubernetes/pause:3.6"),
        &[],
    );
    assert_content(&ctd, &s.pause);

    // contoso.azurecr.io/team/app:1 → ?ns=contoso.azurecr.io → the upstream itself.
    let hosts = node_for(&ctd, REGISTRY_HOST, &plain_mirror(&ferry));
    ctr_pull_ok(
        &ctd,
        &hosts,
        &ferry,
        &format!("{REGISTRY_HOST}/team/app:1"),
        &[],
    );
    assert_content(&ctd, &s.app);

    // AgentBaker's form: /v2/aks-managed-repository/…?ns=mcr.microsoft.com.
    let bootstrap = format!(
        "[host.\"{}/v2/aks-managed-repository\"]\n  capabilities = [\"pull\", \"resolve\"]\n  override_path = true\n",
        ferry.url()
    );
    let hosts = node_for(&ctd, MCR, &bootstrap);
    ctr_pull_ok(
        &ctd,
        &hosts,
        &ferry,
        &format!("{MCR}/oss/kubernetes/coredns:v1.9.3"),
        &[],
    );
    assert_content(&ctd, &coredns);
    let v2 = emu.records_of(Endpoint::Registry);
    assert!(
        v2.iter()
            .any(|r| r.path()
                == "/v2/aks-managed-repository/oss/kubernetes/coredns/manifests/v1.9.3"),
        "the rule maps the bootstrap form onto the same repository"
    );

    // The same images over plain HTTP, every addressing form.
    let mut responses = Vec::new();
    block_on(async {
        responses.extend(
            pull_http(
                &ferry,
                &format!("{MCR}/oss/kubernetes/pause"),
                None,
                &s.pause,
            )
            .await,
        );
        responses.extend(pull_http(&ferry, PAUSE_REPO, Some(MCR), &s.pause).await);
        responses.extend(pull_http(&ferry, "oss/kubernetes/pause", Some(MCR), &s.pause).await);
        responses.extend(pull_http(&ferry, &format!("{UPSTREAM}/team/app"), None, &s.app).await);
        responses.extend(pull_http(&ferry, APP_REPO, Some(REGISTRY_HOST), &s.app).await);
    });

    // Secret → Entra once, one exchange, one access token per repository.
    let entra = emu.records_of(Endpoint::Entra);
    assert!(!entra.is_empty(), "ferry never asked Entra for a token");
    assert!(
        entra
            .iter()
            .all(|r| r.status == 200 && r.detail == "client secret"),
        "{:?}",
        entra_details(emu)
    );
    assert!(
        entra.len() <= 2,
        "Entra tokens are cached: {:?}",
        entra_details(emu)
    );
    assert!(
        (1..=2).contains(&emu.count(Endpoint::Exchange)),
        "refresh tokens are cached: {} exchanges",
        emu.count(Endpoint::Exchange)
    );
    let tokens = emu.records_of(Endpoint::Token);
    for repo in [
        PAUSE_REPO,
        APP_REPO,
        "aks-managed-repository/oss/kubernetes/coredns",
    ] {
        let n = tokens
            .iter()
            .filter(|t| t.scopes == [format!("repository:{repo}:pull")])
            .count();
        assert!(
            (1..=2).contains(&n),
            "{n} token requests for {repo} (one per repository, cached)"
        );
    }
    assert_eq!(
        tokens.len(),
        tokens.iter().filter(|t| t.status == 200).count()
    );
    assert_clean(emu, &ferry, &responses, true);
}

/// Pulls pause through Ferry with `cred`, checks the emulator saw the credential
/// `detail` on `endpoint`, and that nothing leaked.
fn pull_with(cred: Credential, endpoint: Endpoint, detail: &str) {
    let s = seeded(Lifetimes::default());
    let emu = &s.emu;
    let ferry = emu.ferry(cred).start();
    let mut responses = Vec::new();
    block_on(async {
        responses.extend(pull_http(&ferry, "oss/kubernetes/pause", Some(MCR), &s.pause).await);
        responses.extend(pull_http(&ferry, APP_REPO, Some(REGISTRY_HOST), &s.app).await);
    });
    let seen = emu.records_of(endpoint);
    assert!(
        !seen.is_empty() && seen.iter().all(|r| r.status == 200 && r.detail == detail),
        "{endpoint:?} requests: {:?}",
        seen.iter()
            .map(|r| format!("{} {} {}", r.status, r.detail, r.target))
            .collect::<Vec<_>>()
    );
    let ids = emu.ids();
    let client_id = match cred {
        Credential::Secret | Credential::WrongSecret | Credential::Certificate => {
            Some(ids.sp_client_id.as_str())
        }
        Credential::WorkloadIdentity => Some(ids.wi_client_id.as_str()),
        Credential::ManagedIdentity => None,
        Credential::UserAssignedManagedIdentity => Some(ids.mi_user_client_id.as_str()),
    };
    assert!(
        seen.iter().all(|r| r.client_id.as_deref() == client_id),
        "client ids asked for: {:?}, expected {client_id:?}",
        seen.iter().map(|r| r.client_id.clone()).collect::<Vec<_>>()
    );
    if endpoint == Endpoint::ManagedIdentity {
        assert_eq!(
            emu.count(Endpoint::Entra),
            0,
            "managed identity needs no Entra call"
        );
    }
    assert!(seen.len() <= 2, "cached: {} token fetches", seen.len());
    assert!(emu.count(Endpoint::Exchange) >= 1);
    assert_clean(emu, &ferry, &responses, true);
}

#[test]
fn certificate_credential_pulls() {
    pull_with(Credential::Certificate, Endpoint::Entra, "certificate");
}

#[test]
fn workload_identity_pulls() {
    pull_with(
        Credential::WorkloadIdentity,
        Endpoint::Entra,
        "federated token",
    );
}

#[test]
fn system_assigned_managed_identity_pulls() {
    pull_with(
        Credential::ManagedIdentity,
        Endpoint::ManagedIdentity,
        "system-assigned",
    );
}

#[test]
fn user_assigned_managed_identity_pulls() {
    pull_with(
        Credential::UserAssignedManagedIdentity,
        Endpoint::ManagedIdentity,
        "user-assigned",
    );
}

/// Ferry's log lines from `from` (a byte offset) on that mention the Entra failure.
fn failure_lines(log: &str, from: usize) -> Vec<String> {
    log[from.min(log.len())..]
        .lines()
        .filter(|l| {
            ["7000215", "invalid_client", "Invalid client secret"]
                .iter()
                .any(|w| l.contains(w))
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn wrong_client_secret_is_a_401_naming_the_upstream_and_never_logged() {
    let s = seeded(Lifetimes::default());
    let emu = &s.emu;
    let ferry = emu.ferry(Credential::WrongSecret).start();
    let log_start = ferry.log().len();
    let urls = [
        ferry_url(
            &ferry,
            "oss/kubernetes/pause",
            "manifests",
            "3.6",
            Some(MCR),
        ),
        ferry_url(
            &ferry,
            APP_REPO,
            "blobs",
            &s.app.layers[0].digest,
            Some(REGISTRY_HOST),
        ),
        ferry_url(
            &ferry,
            &format!("{UPSTREAM}/team/app"),
            "manifests",
            "1",
            None,
        ),
    ];
    let mut responses = Vec::new();
    block_on(async {
        for url in &urls {
            let r = get(url, &media::ALL_MANIFESTS).await;
            let message = r.assert_error(401, "UNAUTHORIZED");
            assert!(
                message.contains(UPSTREAM),
                "the 401 names the upstream `{UPSTREAM}`: {message:?}"
            );
            responses.push(r);
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let entra = emu.records_of(Endpoint::Entra);
    assert!(
        !entra.is_empty()
            && entra
                .iter()
                .all(|r| r.status == 401 && r.detail.contains("7000215")),
        "Entra saw the wrong secret: {:?}",
        entra_details(emu)
    );
    assert!(
        entra.len() <= 2 * urls.len(),
        "{} Entra requests for {} client requests: no retry storm",
        entra.len(),
        urls.len()
    );
    assert_eq!(emu.count(Endpoint::Exchange), 0);
    assert_eq!(emu.count(Endpoint::Token), 0);
    assert_eq!(emu.count(Endpoint::Data), 0);

    let log = ferry.log();
    let failures = failure_lines(&log, log_start);
    assert!(
        !failures.is_empty(),
        "ferry's log does not say that Entra refused the client secret:\n{}",
        &log[log_start..]
    );
    assert!(
        failures.len() <= 2 * urls.len(),
        "one log line per failed request, not a flood: {} lines for {} requests:\n{}",
        failures.len(),
        urls.len(),
        failures.join("\n")
    );
    assert_clean(emu, &ferry, &responses, false);
}

#[test]
fn tokens_are_cached_per_repository_and_concurrent_requests_share_one_fetch() {
    let emu = AcrEmulator::start();
    let img = emu.push_image(APP_REPO, "1", &[50_000; 8]);
    let pause = emu.push_image(PAUSE_REPO, "3.6", &[60_000]);
    let ferry = emu.ferry(Credential::Secret).start();
    let mut responses = Vec::new();
    block_on(async {
        // Eight cold blobs at once, nothing cached yet.
        let futs = img.layers.iter().map(|b| {
            let url = ferry_url(&ferry, APP_REPO, "blobs", &b.digest, Some(REGISTRY_HOST));
            async move { get(&url, &[]).await }
        });
        let results = futures_util::future::join_all(futs).await;
        for (r, b) in results.iter().zip(&img.layers) {
            assert_eq!(r.status, 200, "{}", r.text());
            assert!(r.body == b.bytes);
        }
        responses.extend(results);
    });
    assert_eq!(
        emu.count(Endpoint::Entra),
        1,
        "one Entra token: {:?}",
        entra_details(&emu)
    );
    assert_eq!(emu.count(Endpoint::Exchange), 1, "one exchange");
    assert_eq!(
        emu.count(Endpoint::Token),
        1,
        "eight concurrent requests share one access-token fetch"
    );
    // Another repository: a new access token from the same refresh token.
    block_on(async {
        responses.extend(pull_http(&ferry, "oss/kubernetes/pause", Some(MCR), &pause).await);
        responses.extend(pull_http(&ferry, APP_REPO, Some(REGISTRY_HOST), &img).await);
    });
    assert_eq!(emu.count(Endpoint::Entra), 1);
    assert_eq!(
        emu.count(Endpoint::Exchange),
        1,
        "the refresh token is reused"
    );
    assert_eq!(
        emu.count(Endpoint::Token),
        2,
        "one access token per repository"
    );
    assert_clean(&emu, &ferry, &responses, true);
}

#[test]
fn a_401_from_the_registry_is_retried_once_with_a_fresh_token() {
    let s = seeded(Lifetimes::default());
    let emu = &s.emu;
    let ferry = emu.ferry(Credential::Secret).start();
    let mut responses = Vec::new();
    block_on(async {
        let r = get(
            &ferry_url(&ferry, APP_REPO, "manifests", "1", Some(REGISTRY_HOST)),
            &media::ALL_MANIFESTS,
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        responses.push(r);
    });
    let tokens = emu.count(Endpoint::Token);

    // The registry refuses the cached token once: Ferry refreshes and retries.
    emu.reject_next_tokens(1);
    let blob = &s.app.layers[0];
    block_on(async {
        let r = get(
            &ferry_url(&ferry, APP_REPO, "blobs", &blob.digest, Some(REGISTRY_HOST)),
            &[],
        )
        .await;
        assert_eq!(r.status, 200, "recovered from one 401: {}", r.text());
        assert!(r.body == blob.bytes);
        responses.push(r);
    });
    assert_eq!(
        emu.count(Endpoint::Token),
        tokens + 1,
        "exactly one refresh"
    );

    // The registry keeps refusing: one refresh, one retry, then 401 for the client.
    emu.reject_next_tokens(1000);
    let blob = &s.app.layers[1];
    let before = emu.count(Endpoint::Token);
    block_on(async {
        let r = get(
            &ferry_url(&ferry, APP_REPO, "blobs", &blob.digest, Some(REGISTRY_HOST)),
            &[],
        )
        .await;
        let message = r.assert_error(401, "UNAUTHORIZED");
        assert!(
            message.contains(UPSTREAM),
            "names the upstream: {message:?}"
        );
        responses.push(r);
    });
    emu.reject_next_tokens(0);
    let hits = emu
        .records_of(Endpoint::Registry)
        .iter()
        .filter(|r| r.path().ends_with(&blob.digest))
        .count();
    assert_eq!(hits, 2, "the request and exactly one retry");
    assert_eq!(
        emu.count(Endpoint::Token),
        before + 1,
        "exactly one refresh"
    );
    assert_clean(emu, &ferry, &responses, true);
}

#[test]
fn short_token_lifetimes_during_a_slow_pull_refresh_once_per_expiry() {
    // Entra 8 s, refresh token 6 s, access token 3 s; 32 MiB at 4 MiB/s, one layer at
    // a time: every kind of token expires several times during the pull.
    let lifetimes = Lifetimes {
        entra: 8,
        refresh: 6,
        access: 3,
        ..Lifetimes::default()
    };
    let emu = AcrEmulator::start_with(lifetimes);
    let big = emu.push_image("aks-managed-repository/oss/big/image", "1", &[4 << 20; 8]);
    let ferry = emu.ferry(Credential::Secret).start();
    let ctd = Containerd::start();
    let hosts = node_for(&ctd, MCR, &plain_mirror(&ferry));
    emu.set_data_rate(Some(4 << 20));
    let started = Instant::now();
    ctr_pull_ok(
        &ctd,
        &hosts,
        &ferry,
        &format!("{MCR}/oss/big/image:1"),
        &["--max-concurrent-downloads", "1"],
    );
    let elapsed = started.elapsed().as_secs_f64();
    assert_content(&ctd, &big);
    assert!(
        elapsed >= 6.0,
        "the pull was slow enough to outlive tokens ({elapsed:.1}s)"
    );

    let v2 = emu.records_of(Endpoint::Registry);
    let authed = v2
        .iter()
        .filter(|r| r.header("authorization").is_some())
        .count();
    let tokens = emu.count(Endpoint::Token);
    let exchanges = emu.count(Endpoint::Exchange);
    let entra = emu.count(Endpoint::Entra);
    let expired = v2
        .iter()
        .filter(|r| r.detail == "expired access token")
        .count();
    let summary = format!(
        "{elapsed:.1}s: {} /v2 requests ({authed} with a token, {expired} with an expired one), \
         {tokens} access tokens, {exchanges} exchanges, {entra} Entra tokens",
        v2.len()
    );
    let t0 = v2.first().map(|r| r.at).unwrap_or_else(Instant::now);
    let timeline: String = emu
        .records()
        .iter()
        .filter(|r| r.endpoint != Endpoint::Data)
        .map(|r| {
            format!(
                "\n  +{:>6.2}s {:?} {} {} → {} ({})",
                r.at.saturating_duration_since(t0).as_secs_f64(),
                r.endpoint,
                r.method,
                r.path(),
                r.status,
                r.detail
            )
        })
        .collect();
    let summary = format!("{summary}{timeline}");
    eprintln!("{summary}");
    assert!(
        tokens >= 2,
        "the access token had to be refreshed: {summary}"
    );
    assert!(
        tokens as f64 <= elapsed / 3.0 + 3.0,
        "about one access token per expiry: {summary}"
    );
    assert!(tokens < authed, "not one token per request: {summary}");
    assert!(
        exchanges as f64 <= elapsed / 6.0 + 3.0,
        "about one exchange per refresh-token expiry: {summary}"
    );
    assert!(
        entra <= exchanges + 1,
        "an Entra token only when exchanging: {summary}"
    );
    assert_eq!(
        expired, 0,
        "tokens are replaced before their exp, not sent expired: {summary}"
    );
    for r in emu
        .records_of(Endpoint::Exchange)
        .iter()
        .chain(&emu.records_of(Endpoint::Token))
    {
        assert_eq!(
            r.status, 200,
            "no expired Entra or refresh token was presented: {r:?}"
        );
    }
    assert_clean(&emu, &ferry, &[], true);
}

#[test]
fn retry_after_on_a_blob_is_honoured_within_a_bounded_budget() {
    let s = seeded(Lifetimes::default());
    let emu = &s.emu;
    let ferry = emu.ferry(Credential::Secret).start();
    let mut responses = Vec::new();
    let layer = &s.app.layers[0];
    let path = format!("/blobs/{}", layer.digest);
    emu.throttle_next(1, &path, 1);
    let started = Instant::now();
    block_on(async {
        responses.extend(pull_http(&ferry, APP_REPO, Some(REGISTRY_HOST), &s.app).await);
    });
    assert_eq!(emu.throttles_left(), 0);
    let hits: Vec<_> = emu
        .records_of(Endpoint::Registry)
        .into_iter()
        .filter(|r| r.path().ends_with(&path))
        .collect();
    assert!(hits.len() >= 2 && hits[0].status == 429, "{hits:#?}");
    let waited = hits[1].at.duration_since(hits[0].at);
    assert!(
        waited >= Duration::from_millis(950),
        "Ferry retried after {waited:?}, before Retry-After: 1 had passed"
    );
    assert!(started.elapsed() < Duration::from_secs(30));

    // Throttled for longer than Ferry will wait: the client gets 429 TOOMANYREQUESTS.
    let layer = &s.app.layers[1];
    let path = format!("/blobs/{}", layer.digest);
    // A fresh Ferry, so the blob is not cached.
    drop(ferry);
    let ferry = emu.ferry(Credential::Secret).start();
    emu.throttle_next(1000, &path, 1);
    let started = Instant::now();
    block_on(async {
        let r = get(
            &ferry_url(
                &ferry,
                APP_REPO,
                "blobs",
                &layer.digest,
                Some(REGISTRY_HOST),
            ),
            &[],
        )
        .await;
        r.assert_error(429, "TOOMANYREQUESTS");
        responses.push(r);
    });
    let took = started.elapsed();
    let attempts = emu
        .records_of(Endpoint::Registry)
        .iter()
        .filter(|r| r.path().ends_with(&path) && r.status == 429)
        .count();
    eprintln!("429 budget: {attempts} attempts in {took:?}");
    assert!(took < Duration::from_secs(60), "bounded in time: {took:?}");
    assert!(
        (1..=10).contains(&attempts),
        "bounded retries: {attempts} attempts in {took:?}"
    );
    assert!(emu.throttles_left() > 0);
    // Once the registry recovers, the same blob is served (nothing bad was cached).
    emu.clear_throttles();
    block_on(async {
        let r = get(
            &ferry_url(
                &ferry,
                APP_REPO,
                "blobs",
                &layer.digest,
                Some(REGISTRY_HOST),
            ),
            &[],
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.body == layer.bytes);
        responses.push(r);
    });
    assert_clean(emu, &ferry, &responses, true);
}

/// GET `url`, tolerating a body cut short; (status, bytes or None).
async fn get_tolerant(url: &str) -> (u16, Option<Vec<u8>>) {
    let resp = crate::harness::http::client()
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status().as_u16();
    (status, resp.bytes().await.ok().map(|b| b.to_vec()))
}

#[test]
fn stale_redirects_are_never_reused() {
    // Redirect URLs valid for 1 s.
    let s = seeded(Lifetimes {
        redirect: 1,
        ..Lifetimes::default()
    });
    let emu = &s.emu;
    let ferry = emu.ferry(Credential::Secret).start();
    let mut responses = Vec::new();
    let layer = &s.app.layers[0];
    let url = ferry_url(
        &ferry,
        APP_REPO,
        "blobs",
        &layer.digest,
        Some(REGISTRY_HOST),
    );
    block_on(async {
        // HEAD first (Ferry may follow the 307 with a HEAD), then GET after the
        // redirect has gone stale.
        let r = send(reqwest::Method::HEAD, &url, &[], &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-length"), layer.size.to_string());
        responses.push(r);
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let r = get(&url, &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.body == layer.bytes);
        responses.push(r);
    });

    // A transfer cut after its redirect went stale: whatever Ferry does next (resume,
    // refetch, or fail this response so the client retries), it must not reuse the
    // stale URL.
    let layer = &s.app.layers[1];
    let url = ferry_url(
        &ferry,
        APP_REPO,
        "blobs",
        &layer.digest,
        Some(REGISTRY_HOST),
    );
    emu.set_data_rate(Some(20_000));
    emu.cut_next_data(1, 40_000);
    block_on(async {
        let mut ok = false;
        for _attempt in 0..2 {
            let (status, body) = get_tolerant(&url).await;
            if status == 200 && body.as_deref() == Some(layer.bytes.as_slice()) {
                ok = true;
                break;
            }
            emu.set_data_rate(None);
        }
        assert!(ok, "the blob was served within two client attempts");
    });
    let data = emu.records_of(Endpoint::Data);
    for r in &data {
        eprintln!(
            "data: {} {} {} {}",
            r.method,
            r.status,
            r.detail,
            r.target.split('?').nth(1).unwrap_or("")
        );
    }
    assert!(
        data.iter().any(|r| r.detail.starts_with("cut")),
        "the cut happened: {data:#?}"
    );
    assert_clean(emu, &ferry, &responses, true);
}

// ---------------------------------------------------------------------------
// Rule validation: `ferry config check`.
// ---------------------------------------------------------------------------

fn config_check(rules: &str) -> std::process::Output {
    let dir = crate::harness::temp_dir("acr-config");
    let path = dir.path().join("ferry.toml");
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[storage]\nroot = \"{}\"\n\n\
         [[upstream]]\nname = \"acr\"\nregistry = \"contoso.azurecr.io\"\nurl = \"https://contoso.azurecr.io\"\nauth = {{ kind = \"anonymous\" }}\n\n{rules}",
        dir.path().join("store").display()
    );
    std::fs::write(&path, toml).unwrap();
    let mut cmd = std::process::Command::new(Ferry::binary());
    cmd.arg("config").arg("check").arg(&path);
    crate::harness::process::run_with_timeout(cmd, Duration::from_secs(30))
}

fn rule(name: &str, source: &str, target: &str) -> String {
    format!(
        "[[rule]]\nname = \"{name}\"\nsource = \"{source}\"\ntarget = \"{target}\"\nupstream = \"acr\"\n\n"
    )
}

fn refused(out: &std::process::Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!out.status.success(), "config check accepted it:\n{text}");
    text
}

#[test]
fn config_check_refuses_conflicting_and_too_many_rules() {
    // The AKS rule alone, plus a static rule inside its namespace, is fine.
    let ok = config_check(&format!(
        "{}{}",
        rule(
            "aks-managed-mcr",
            "mcr.microsoft.com/*",
            "aks-managed-repository/*"
        ),
        rule(
            "pinned-pause",
            "mcr.microsoft.com/oss/kubernetes/pause",
            "aks-managed-repository/oss/kubernetes/pause"
        )
    ));
    assert!(
        ok.status.success(),
        "a valid rule set is accepted: {}",
        String::from_utf8_lossy(&ok.stderr)
    );

    // Overlapping wildcard targets (nested).
    let text = refused(&config_check(&format!(
        "{}{}",
        rule(
            "aks-managed-mcr",
            "mcr.microsoft.com/*",
            "aks-managed-repository/*"
        ),
        rule("ghcr-nested", "ghcr.io/*", "aks-managed-repository/ghcr/*")
    )));
    assert!(
        text.contains("aks-managed-mcr") && text.contains("ghcr-nested"),
        "names both rules: {text}"
    );

    // Two static rules for the same source repository.
    let text = refused(&config_check(&format!(
        "{}{}",
        rule(
            "pause-a",
            "mcr.microsoft.com/oss/kubernetes/pause",
            "pause-a"
        ),
        rule(
            "pause-b",
            "mcr.microsoft.com/oss/kubernetes/pause",
            "pause-b"
        )
    )));
    assert!(
        text.contains("pause-a") && text.contains("pause-b"),
        "names both rules: {text}"
    );

    // 1,001 rules.
    let many: String = (0..1001)
        .map(|i| {
            rule(
                &format!("r{i}"),
                &format!("mcr.microsoft.com/repo{i}"),
                &format!("t/repo{i}"),
            )
        })
        .collect();
    let text = refused(&config_check(&many));
    assert!(
        text.contains("1000") || text.contains("1,000"),
        "says what the limit is: {text}"
    );
    // Exactly 1,000 is allowed.
    let thousand: String = (0..1000)
        .map(|i| {
            rule(
                &format!("r{i}"),
                &format!("mcr.microsoft.com/repo{i}"),
                &format!("t/repo{i}"),
            )
        })
        .collect();
    let out = config_check(&thousand);
    assert!(
        out.status.success(),
        "1,000 rules are allowed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
