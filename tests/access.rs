//! The access policy as clients meet it: per-upstream anonymous `allow`/`deny`
//! patterns (403 DENIED, or 401 with a Basic challenge once users exist), decided on
//! the repository actually fetched so a cache rule cannot route around a deny; htpasswd
//! (bcrypt) users pulling with `skopeo copy --src-creds`, `skopeo login` and `podman
//! login`; wrong passwords refused and never logged; non-bcrypt htpasswd lines refused
//! at load.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::harness::ferry::{Ferry, FerryBuilder, LOCAL, LOCAL_REGISTRY, Upstream};
use crate::harness::http::media;
use crate::harness::images::{PushedImage, push_image_http};
use crate::harness::podman::Podman;
use crate::harness::process::{require_binary, run_ok, run_with_timeout};
use crate::harness::registry::{Registry, RegistryAuth};
use crate::harness::skopeo;
use crate::support::{Fetched, send};

const USER: &str = "ci-puller";
const PASSWORD: &str = "Ferry-Us3r-Pa55word-4d1e";
const WRONG_PASSWORD: &str = "Wrong-Us3r-Pa55word-0b9a";

fn basic(user: &str, password: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    format!("Basic {}", b64.encode(format!("{user}:{password}")))
}

/// `GET <ferry>/v2/local/<repo>/manifests/<tag>`, with `authorization` if given.
async fn manifest(ferry: &Ferry, repo: &str, tag: &str, authorization: Option<&str>) -> Fetched {
    let url = format!("{}/v2/{LOCAL}/{repo}/manifests/{tag}", ferry.url());
    get_as(&url, authorization).await
}

async fn get_as(url: &str, authorization: Option<&str>) -> Fetched {
    let headers: Vec<(&str, &str)> = authorization
        .map(|a| ("authorization", a))
        .into_iter()
        .collect();
    send(reqwest::Method::GET, url, &[media::OCI_MANIFEST], &headers).await
}

/// Upstream requests (after the seeding reads) for `repo`.
fn upstream_requests(registry: &Registry, seeded: usize, repo: &str) -> usize {
    registry.settled_access_log()[seeded..]
        .iter()
        .filter(|e| e.path.contains(&format!("/v2/{repo}/")))
        .count()
}

/// WARN lines of Ferry's log that mention `needle`.
fn warnings_about(ferry: &Ferry, needle: &str) -> Vec<String> {
    ferry
        .log()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains(needle))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn anonymous_allow_and_deny_per_upstream() {
    let registry = Registry::start(RegistryAuth::None);
    let public = push_image_http(&registry, "public/app", "1", &[20_000]);
    let private = push_image_http(&registry, "private/app", "1", &[20_000]);
    let secret = push_image_http(&registry, "public/secret/app", "1", &[20_000]);
    let seeded = registry.settled_access_log().len();
    let ferry = FerryBuilder::new()
        .upstream(
            Upstream::local(&registry.url())
                .raw(r#"allow = ["public/**"]"#)
                .raw(r#"deny = ["public/secret/*"]"#),
        )
        .start();

    let r = manifest(&ferry, "public/app", "1", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, public.manifest);

    for (img, what) in [(&private, "not allowed"), (&secret, "denied (deny wins)")] {
        let r = manifest(&ferry, &img.repo, "1", None).await;
        let message = r.assert_error(403, "DENIED");
        assert!(
            message.contains(&format!("{LOCAL_REGISTRY}/{}", img.repo)),
            "{what}: the message names the image: {message}"
        );
        assert_eq!(
            r.header("www-authenticate"),
            "",
            "{what}: no users, so no challenge"
        );
        // Blobs, tags, and the containerd mirror form are refused alike.
        let blob = format!(
            "{}/v2/{LOCAL}/{}/blobs/{}",
            ferry.url(),
            img.repo,
            img.layers[0].digest
        );
        get_as(&blob, None).await.assert_error(403, "DENIED");
        let tags = format!("{}/v2/{LOCAL}/{}/tags/list", ferry.url(), img.repo);
        get_as(&tags, None).await.assert_error(403, "DENIED");
        let ns = format!(
            "{}/v2/{}/manifests/1?ns={LOCAL_REGISTRY}",
            ferry.url(),
            img.repo
        );
        get_as(&ns, None).await.assert_error(403, "DENIED");
        assert_eq!(
            upstream_requests(&registry, seeded, &img.repo),
            0,
            "{what}: a denied repository is never fetched"
        );
    }
    // Credentials change nothing while no users are configured.
    let r = manifest(&ferry, "private/app", "1", Some(&basic("x", "y"))).await;
    r.assert_error(403, "DENIED");

    // The version check stays open and asks for nothing.
    let v = get_as(&format!("{}/v2/", ferry.url()), None).await;
    assert_eq!(v.status, 200);
    assert_eq!(v.header("www-authenticate"), "");

    // Each denial is logged once, as a warning naming who and what.
    let image = format!("{LOCAL_REGISTRY}/private/app");
    let lines = warnings_about(&ferry, &image);
    assert!(
        lines.len() == 5 && lines.iter().all(|l| l.contains("anonymous")),
        "one WARN line per denied request, naming anonymous and {image}:\n{}",
        lines.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cache_rule_cannot_bypass_a_deny() {
    let registry = Registry::start(RegistryAuth::None);
    let ok = push_image_http(
        &registry,
        "aks-managed-repository/oss/pause",
        "1",
        &[10_000],
    );
    push_image_http(
        &registry,
        "aks-managed-repository/internal/app",
        "1",
        &[10_000],
    );
    let seeded = registry.settled_access_log().len();
    let ferry = FerryBuilder::new()
        .upstream(
            Upstream::local(&registry.url())
                .raw(r#"deny = ["aks-managed-repository/internal/**"]"#),
        )
        .extra_toml(
            r#"[[rule]]
name = "aks-managed-mcr"
source = "mcr.microsoft.com/*"
target = "aks-managed-repository/*"
upstream = "local""#,
        )
        .start();
    let base = ferry.url();
    let r = get_as(
        &format!("{base}/v2/oss/pause/manifests/1?ns=mcr.microsoft.com"),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, ok.manifest);
    for url in [
        format!("{base}/v2/internal/app/manifests/1?ns=mcr.microsoft.com"),
        format!("{base}/v2/mcr.microsoft.com/internal/app/manifests/1"),
        format!("{base}/v2/{LOCAL}/aks-managed-repository/internal/app/manifests/1"),
    ] {
        let message = get_as(&url, None).await.assert_error(403, "DENIED");
        assert!(
            message.contains("aks-managed-repository/internal/app"),
            "{url}: the refusal names the repository actually meant: {message}"
        );
    }
    assert_eq!(
        upstream_requests(&registry, seeded, "aks-managed-repository/internal/app"),
        0
    );
}

/// An htpasswd file with one bcrypt user (cost 5: quick, still real bcrypt).
fn write_htpasswd(dir: &Path, password: &str) -> PathBuf {
    let path = dir.join("htpasswd");
    let hash = bcrypt::hash(password, 5).expect("bcrypt");
    std::fs::write(&path, format!("# Ferry users\n{USER}:{hash}\n")).expect("write htpasswd");
    path
}

/// `skopeo copy [extra] docker://<ferry>/local/<image> dir:<dest>`.
fn skopeo_copy(
    ferry: &Ferry,
    img: &PushedImage,
    extra: &[&str],
    dest: &Path,
) -> std::process::Output {
    let mut cmd = skopeo::copy();
    cmd.args(extra);
    cmd.arg(format!(
        "docker://{}/{LOCAL}/{}",
        ferry.addr(),
        img.reference()
    ));
    cmd.arg(format!("dir:{}", dest.display()));
    run_with_timeout(cmd, Duration::from_secs(120))
}

fn assert_copied(out: &std::process::Output, dest: &Path, img: &PushedImage) {
    assert!(
        out.status.success(),
        "skopeo copy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for blob in img.blobs() {
        let path = dest.join(crate::harness::digest_hex(&blob.digest));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{} ({e})", path.display()));
        assert!(bytes == blob.bytes, "bytes of {}", blob.digest);
    }
}

/// skopeo failed, and says why: the registry refused the credentials (401).
fn assert_unauthorized(out: &std::process::Output, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(
        !out.status.success()
            && ["401", "unauthorized", "invalid username/password"]
                .iter()
                .any(|w| stderr.contains(w)),
        "{what}: expected a refusal for credentials, got {}: {stderr}",
        out.status
    );
}

fn skopeo_login(ferry: &Ferry, authfile: &Path, password: &str) -> std::process::Output {
    let mut cmd = Command::new(require_binary("skopeo", "skopeo"));
    cmd.args(["login", "--tls-verify=false", "--authfile"])
        .arg(authfile)
        .args(["-u", USER, "-p", password, ferry.addr()]);
    run_with_timeout(cmd, Duration::from_secs(60))
}

/// Ferry in front of `registry`: anonymous may pull `public/*` only, [`USER`] (from
/// an htpasswd file in `dir`) `private/**` only.
fn ferry_with_user(registry: &Registry, dir: &Path) -> Ferry {
    let htpasswd = write_htpasswd(dir, PASSWORD);
    FerryBuilder::new()
        .upstream(Upstream::local(&registry.url()).raw(r#"allow = ["public/*"]"#))
        .extra_toml(&format!(
            "[access]\nhtpasswd = \"{}\"\n\n[[access.user]]\nname = \"{USER}\"\nallow = [\"{LOCAL_REGISTRY}/private/**\"]\n",
            htpasswd.display()
        ))
        .start()
}

#[tokio::test(flavor = "multi_thread")]
async fn htpasswd_user_pulls_what_anonymous_cannot() {
    let registry = Registry::start(RegistryAuth::None);
    let public = push_image_http(&registry, "public/app", "1", &[50_000]);
    let private = push_image_http(&registry, "private/app", "1", &[80_000, 30_000]);
    let dir = crate::harness::temp_dir("access");
    let ferry = ferry_with_user(&registry, dir.path());

    // Anonymous: public pulls, private asks for credentials.
    let r = manifest(&ferry, "public/app", "1", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = manifest(&ferry, "private/app", "1", None).await;
    r.assert_error(401, "UNAUTHORIZED");
    assert_eq!(r.header("www-authenticate"), r#"Basic realm="ferry""#);
    // The version check stays 200 for nodes, but says credentials are welcome.
    let v = get_as(&format!("{}/v2/", ferry.url()), None).await;
    assert_eq!(v.status, 200);
    assert_eq!(v.header("www-authenticate"), r#"Basic realm="ferry""#);
    // ... and checks credentials sent to it.
    let good = basic(USER, PASSWORD);
    let wrong = basic(USER, WRONG_PASSWORD);
    let v = get_as(&format!("{}/v2/", ferry.url()), Some(&good)).await;
    assert_eq!(v.status, 200, "{}", v.text());
    get_as(&format!("{}/v2/", ferry.url()), Some(&wrong))
        .await
        .assert_error(401, "UNAUTHORIZED");

    // The user: private pulls; public is outside their own patterns: 403, not 401.
    let r = manifest(&ferry, "private/app", "1", Some(&good)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, private.manifest);
    let r = manifest(&ferry, "public/app", "1", Some(&good)).await;
    let message = r.assert_error(403, "DENIED");
    assert!(message.contains(USER), "{message}");
    let r = manifest(&ferry, "private/app", "1", Some(&wrong)).await;
    r.assert_error(401, "UNAUTHORIZED");
    assert_eq!(r.header("www-authenticate"), r#"Basic realm="ferry""#);
    manifest(&ferry, "private/app", "1", Some(&basic("nobody", PASSWORD)))
        .await
        .assert_error(401, "UNAUTHORIZED");

    // skopeo, anonymously: public copies, private is refused.
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("public");
    assert_copied(&skopeo_copy(&ferry, &public, &[], &dest), &dest, &public);
    let refused = skopeo_copy(&ferry, &private, &[], &out.path().join("anon"));
    assert_unauthorized(&refused, "anonymous skopeo copy of a private image");
    // With --src-creds.
    let creds = format!("{USER}:{PASSWORD}");
    let dest = out.path().join("creds");
    let copied = skopeo_copy(&ferry, &private, &["--src-creds", &creds], &dest);
    assert_copied(&copied, &dest, &private);
    let bad = format!("{USER}:{WRONG_PASSWORD}");
    let refused = skopeo_copy(
        &ferry,
        &private,
        &["--src-creds", &bad],
        &out.path().join("bad"),
    );
    assert_unauthorized(&refused, "skopeo copy with a wrong password");

    // skopeo login (its own auth file): a wrong password is refused, the right one
    // stored and then used by copy.
    let authfile = out.path().join("auth.json");
    let login = skopeo_login(&ferry, &authfile, WRONG_PASSWORD);
    assert_unauthorized(&login, "skopeo login with a wrong password");
    assert!(!authfile.exists(), "a refused login stored nothing");
    let login = skopeo_login(&ferry, &authfile, PASSWORD);
    assert!(
        login.status.success(),
        "skopeo login: {}",
        String::from_utf8_lossy(&login.stderr)
    );
    let dest = out.path().join("login");
    let copied = skopeo_copy(
        &ferry,
        &private,
        &["--src-authfile", &authfile.display().to_string()],
        &dest,
    );
    assert_copied(&copied, &dest, &private);

    assert_passwords_not_logged(&ferry);
}

/// No form of either password reaches Ferry's log, though the wrong one is logged
/// as a refusal.
fn assert_passwords_not_logged(ferry: &Ferry) {
    let b64 = base64::engine::general_purpose::STANDARD;
    let log = ferry.log();
    for p in [PASSWORD, WRONG_PASSWORD] {
        for form in [
            p.to_owned(),
            b64.encode(format!("{USER}:{p}")),
            b64.encode(p),
        ] {
            assert!(
                !log.contains(&form),
                "ferry's log holds a password (as {form:?})"
            );
        }
    }
    assert!(
        !warnings_about(ferry, "invalid credentials").is_empty(),
        "wrong passwords are logged (without the password)"
    );
}

/// `podman login` against Ferry: a wrong password is refused and stores nothing in
/// the `--authfile`; the right one is stored, and `podman pull` with that file gets
/// an image anonymous may not pull (which it could not before), by the reference a
/// podman user without Ferry's `registries.conf` types: `<ferry>/<registry>/<repo>`.
#[test]
fn podman_login_then_pulls_what_anonymous_cannot() {
    let podman = Podman::new(None);
    let registry = Registry::start(RegistryAuth::None);
    let private = push_image_http(&registry, "private/app", "1", &[80_000, 30_000]);
    let dir = crate::harness::temp_dir("access");
    let ferry = ferry_with_user(&registry, dir.path());
    let reference = format!("{}/{LOCAL_REGISTRY}/{}", ferry.addr(), private.reference());
    let authfile = dir.path().join("podman-auth.json");
    let authfile_arg = authfile.display().to_string();
    let login = |password: &str| {
        run_with_timeout(
            podman.command(&[
                "login",
                "--tls-verify=false",
                "--authfile",
                &authfile_arg,
                "-u",
                USER,
                "-p",
                password,
                ferry.addr(),
            ]),
            Duration::from_secs(60),
        )
    };

    // Anonymous (podman's own auth file is empty): refused for want of credentials.
    let anonymous = podman.pull(&["--tls-verify=false"], &reference);
    assert_unauthorized(&anonymous, "anonymous podman pull of a private image");

    let refused = login(WRONG_PASSWORD);
    assert_unauthorized(&refused, "podman login with a wrong password");
    assert!(
        !authfile.exists(),
        "a refused login stored nothing:\n{}",
        std::fs::read_to_string(&authfile).unwrap_or_default()
    );

    let login = login(PASSWORD);
    assert!(
        login.status.success(),
        "podman login: {}",
        String::from_utf8_lossy(&login.stderr)
    );
    let stored = std::fs::read_to_string(&authfile).unwrap_or_default();
    assert!(
        stored.contains(ferry.addr()),
        "podman login stored credentials for {}:\n{stored}",
        ferry.addr()
    );
    podman.pull_ok(
        &["--tls-verify=false", "--authfile", &authfile_arg],
        &reference,
        &ferry,
    );
    assert_eq!(podman.digest(&reference), private.manifest_digest);

    assert_passwords_not_logged(&ferry);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_htpasswd_file_applies_without_restart() {
    let registry = Registry::start(RegistryAuth::None);
    push_image_http(&registry, "private/app", "1", &[10_000]);
    let dir = crate::harness::temp_dir("access");
    let htpasswd = write_htpasswd(dir.path(), PASSWORD);
    let ferry = FerryBuilder::new()
        .upstream(Upstream::local(&registry.url()).raw(r#"allow = []"#))
        .extra_toml(&format!(
            "[access]\nhtpasswd = \"{}\"\n",
            htpasswd.display()
        ))
        .start();
    let old = basic(USER, PASSWORD);
    let new = basic(USER, WRONG_PASSWORD);
    // Verified (and remembered) with the old password.
    for _ in 0..2 {
        let r = manifest(&ferry, "private/app", "1", Some(&old)).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // The password changes in the file: the remembered verification no longer counts.
    let rotated = dir.path().join("htpasswd.new");
    let hash = bcrypt::hash(WRONG_PASSWORD, 5).unwrap();
    std::fs::write(&rotated, format!("{USER}:{hash}\n")).unwrap();
    std::fs::rename(&rotated, &htpasswd).unwrap();
    manifest(&ferry, "private/app", "1", Some(&old))
        .await
        .assert_error(401, "UNAUTHORIZED");
    let r = manifest(&ferry, "private/app", "1", Some(&new)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // A broken replacement keeps the users that worked.
    std::fs::write(&rotated, format!("{USER}:$apr1$abc$def\n")).unwrap();
    std::fs::rename(&rotated, &htpasswd).unwrap();
    let r = manifest(&ferry, "private/app", "1", Some(&new)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let deadline = Instant::now() + Duration::from_secs(5);
    while warnings_about(&ferry, "htpasswd").is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let lines = warnings_about(&ferry, "htpasswd");
    assert!(
        lines.len() == 1 && lines[0].contains("bcrypt"),
        "one warning for the bad file:\n{}",
        ferry.log()
    );
}

/// `ferry config check <file>`, with no `FERRY_*` variables from the test's environment.
fn config_check(file: &Path) -> Command {
    let mut cmd = Ferry::cli_command();
    cmd.args(["config", "check"]).arg(file);
    cmd
}

#[test]
fn config_check_refuses_a_non_bcrypt_htpasswd_line() {
    let dir = crate::harness::temp_dir("access");
    let htpasswd = dir.path().join("htpasswd");
    let hash = bcrypt::hash(PASSWORD, 5).unwrap();
    std::fs::write(
        &htpasswd,
        format!("{USER}:{hash}\nlegacy:$apr1$Qx5m0gS2$4Ti1Tf0hBmLsgdJQKz0Hj/\n"),
    )
    .unwrap();
    let config = dir.path().join("ferry.toml");
    std::fs::write(
        &config,
        format!(
            "[[upstream]]\nname = \"local\"\nurl = \"http://127.0.0.1:9\"\n\n[access]\nhtpasswd = \"{}\"\n",
            htpasswd.display()
        ),
    )
    .unwrap();
    let out = run_with_timeout(config_check(&config), Duration::from_secs(20));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        matches!(out.status.code(), Some(c) if c != 0 && c != 101),
        "refused without a panic: {text}"
    );
    for piece in [
        format!("{}:6", config.display()),
        format!("{}:2", htpasswd.display()),
        "legacy".to_owned(),
        "MD5".to_owned(),
        "bcrypt".to_owned(),
    ] {
        assert!(text.contains(&piece), "the message names {piece:?}: {text}");
    }
    // The good file passes and lists the user.
    std::fs::write(&htpasswd, format!("{USER}:{hash}\n")).unwrap();
    let out = run_ok(config_check(&config), Duration::from_secs(20));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(USER), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn pinned_images_are_kept_where_clients_are_denied() {
    let registry = Registry::start(RegistryAuth::None);
    let app = push_image_http(&registry, "team/app", "v1", &[30_000]);
    let seeded = registry.settled_access_log().len();
    let dir = crate::harness::temp_dir("access");
    let htpasswd = write_htpasswd(dir.path(), PASSWORD);
    let ferry = FerryBuilder::new()
        .upstream(Upstream::local(&registry.url()).raw(r#"allow = []"#))
        .extra_toml(&format!(
            "[access]\nhtpasswd = \"{}\"\n\n[[pin]]\nimages = [\"{LOCAL}/team/app:v1\"]\nrefresh = \"1h\"\n",
            htpasswd.display()
        ))
        .start();
    // The operator configured the pin: Ferry's own refresher is not a client.
    let fetched = |registry: &Registry| {
        let log = registry.settled_access_log();
        app.blobs().iter().all(|b| {
            log[seeded..]
                .iter()
                .any(|e| e.method == "GET" && e.path.contains(&format!("/blobs/{}", b.digest)))
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !fetched(&registry) {
        assert!(
            Instant::now() < deadline,
            "pinned image not fetched: {}",
            ferry.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Clients still need credentials for it.
    manifest(&ferry, "team/app", "v1", None)
        .await
        .assert_error(401, "UNAUTHORIZED");
    let r = manifest(&ferry, "team/app", "v1", Some(&basic(USER, PASSWORD))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.x_cache(), "HIT");
    assert!(
        !ferry.log().contains("pinned image not refreshed"),
        "{}",
        ferry.log()
    );
}
