//! Image names as users write them, in every command: what `ferry status` prints (a
//! registry with a port, Docker Hub's `docker.io/library/…`), with its digest too, is
//! taken back by `ferry prefetch`, a `[[pin]]` (`ferry config check`, then the pinned
//! flag of a serving Ferry) and `ferry export`. `ferry status --config` works whether
//! or not `ferry serve` holds the store.

use std::process::Output;
use std::time::Duration;

use crate::harness::ferry::{Ferry, FerryBuilder, Upstream};
use crate::harness::images::{push_image, push_index};
use crate::harness::podman::Podman;
use crate::harness::process::{free_port, run_with_timeout};
use crate::harness::registry::{Registry, RegistryAuth};
use crate::harness::temp_dir;
use crate::support::get;

/// A registry host with a port, as a private registry is often known.
const CORP_REGISTRY: &str = "registry.corp.test:16101";

/// `ferry <args>` with no `FERRY_*` variables inherited (plus `env`), bounded to 120 s.
fn ferry_with_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Ferry::cli_command();
    cmd.args(args).envs(env.iter().copied());
    let out = run_with_timeout(cmd, Duration::from_secs(120));
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("panicked"),
        "ferry {args:?} panicked: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `ferry <args>` and returns its stdout; panics with its output on failure.
fn ferry_ok(args: &[&str]) -> String {
    ferry_ok_with_env(args, &[])
}

fn ferry_ok_with_env(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = ferry_with_env(args, env);
    assert!(
        out.status.success(),
        "ferry {} failed ({}):\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The image names of a `ferry status --json` answer, with each one's digest.
fn status_names(json: &str) -> Vec<(String, String)> {
    let status: serde_json::Value = serde_json::from_str(json).expect("status JSON");
    status["images"]
        .as_array()
        .expect("images")
        .iter()
        .map(|i| {
            (
                i["image"].as_str().unwrap().to_string(),
                i["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// One Distribution behind two upstreams: `corp`, known to clients as
/// `registry.corp.test:16101`, and the default `hub` as `docker.io` (Docker Hub's
/// names, `library/` added to one-component names).
fn two_upstreams(registry: &Registry) -> FerryBuilder {
    FerryBuilder::new()
        .upstream(Upstream::new("corp", CORP_REGISTRY, &registry.url()))
        .upstream(Upstream::new("hub", "docker.io", &registry.url()).default_upstream(true))
}

#[tokio::test(flavor = "multi_thread")]
async fn every_name_ferry_status_prints_is_taken_back_by_every_command() {
    let registry = Registry::start(RegistryAuth::None);
    push_image(&registry, "team/app", "v1", &[50_000]);
    push_index(&registry, "team/multi", "v1", &[20_000]);
    push_image(&registry, "library/nginx", "1.27", &[30_000]);
    let mut ferry = two_upstreams(&registry).start();
    let server = ferry.url();

    // Clients' short forms fill the cache: an upstream's short name, Docker Hub's.
    for name in ["corp/team/app:v1", "corp/team/multi:v1", "nginx:1.27"] {
        ferry_ok(&["prefetch", "--server", &server, name]);
    }
    let json = ferry_ok(&["status", "--json", "--server", &server]);
    let listed = status_names(&json);
    let names: Vec<&str> = listed.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "docker.io/library/nginx:1.27",
            "registry.corp.test:16101/team/app:v1",
            "registry.corp.test:16101/team/multi:v1",
        ],
        "{json}"
    );
    // The status page lists the same names.
    let page = get(&format!("{server}/"), &[]).await.body;
    let page = String::from_utf8_lossy(&page);
    for name in &names {
        assert!(
            page.contains(&format!("<code>{name}</code>")),
            "status page lacks {name}:\n{page}"
        );
    }
    // Each name as printed, by digest, and by tag and digest (the digest wins), with
    // the name prefetch reports for it.
    let mut written: Vec<(String, String)> = Vec::new();
    for (name, digest) in &listed {
        let by_digest = format!("{}@{digest}", name.rsplit_once(':').unwrap().0);
        written.push((name.clone(), name.clone()));
        written.push((by_digest.clone(), by_digest.clone()));
        written.push((format!("{name}@{digest}"), by_digest));
    }

    // `ferry prefetch` takes every one.
    for (name, shown) in &written {
        let out = ferry_ok(&["prefetch", "--server", &server, name]);
        assert!(out.starts_with(&format!("{shown}: ")), "{name}: {out}");
    }

    // A `[[pin]]` of every one passes `ferry config check`, and a Ferry serving it
    // counts each cached image as pinned and none as missing.
    let quoted: Vec<String> = written.iter().map(|(n, _)| format!("\"{n}\"")).collect();
    let pinned = format!(
        "{}\n[[pin]]\nimages = [{}]\nrefresh = \"1h\"\n",
        ferry.config(),
        quoted.join(", ")
    );
    let dir = temp_dir("pins");
    let file = dir.path().join("ferry.toml");
    std::fs::write(&file, &pinned).unwrap();
    let check = ferry_ok(&["config", "check", file.to_str().unwrap()]);
    assert!(check.contains("configuration is valid"), "{check}");
    // One no upstream serves is named.
    let unserved = format!("{pinned}\n[[pin]]\nimages = [\"other.example:5000/team/app:v1\"]\n");
    let bad = dir.path().join("unserved.toml");
    std::fs::write(&bad, unserved).unwrap();
    let out = ferry_with_env(&["config", "check", bad.to_str().unwrap()], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("`other.example:5000/team/app:v1`"),
        "{err}"
    );
    ferry.write_config(&pinned);
    ferry.restart();
    let status: serde_json::Value =
        serde_json::from_str(&ferry_ok(&["status", "--json", "--server", &ferry.url()])).unwrap();
    assert_eq!(
        status["pinned_incomplete"],
        serde_json::json!([]),
        "{status}"
    );
    for image in status["images"].as_array().unwrap() {
        assert_eq!(image["pinned"], true, "{image}");
    }

    // A name no upstream serves is refused, naming it and what is served.
    let out = ferry_with_env(
        &[
            "prefetch",
            "--server",
            &ferry.url(),
            "other.example:5000/team/app:v1",
        ],
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("other.example:5000") && err.contains(CORP_REGISTRY),
        "{err}"
    );
    let out = ferry_with_env(&["prefetch", "--server", &ferry.url(), "Team/App:v1"], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("`Team/App:v1` is not an image name"),
        "{err}"
    );

    // `ferry export` takes every one (it reads the store: Ferry stopped).
    ferry.terminate();
    let bundle = dir.path().join("names.tar");
    let config = ferry.config_path().to_str().unwrap().to_owned();
    let mut args = vec![
        "export",
        "--config",
        &config,
        "--output",
        bundle.to_str().unwrap(),
    ];
    args.extend(written.iter().map(|(n, _)| n.as_str()));
    let out = ferry_ok(&args);
    for name in &names {
        assert!(out.contains(name), "export does not list {name}:\n{out}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn status_with_a_config_asks_the_ferry_that_holds_the_store() {
    let registry = Registry::start(RegistryAuth::None);
    push_image(&registry, "team/app", "v1", &[40_000]);
    // On every interface: `ferry status` asks it on loopback.
    let mut ferry = two_upstreams(&registry)
        .listen(&format!("0.0.0.0:{}", free_port()))
        .start();
    ferry_ok(&["prefetch", "--server", &ferry.url(), "corp/team/app:v1"]);
    let config = ferry.config_path().to_str().unwrap().to_owned();

    let asked = ferry_ok(&["status", "--server", &ferry.url()]);
    assert!(
        asked.contains(&format!("complete   {CORP_REGISTRY}/team/app:v1")),
        "{asked}"
    );
    // The store is locked by the running Ferry: `--config` asks it instead.
    assert_eq!(ferry_ok(&["status", "--config", &config]), asked);
    let json = ferry_ok(&["status", "--json", "--server", &ferry.url()]);
    assert_eq!(ferry_ok(&["status", "--json", "--config", &config]), json);
    // FERRY_CONFIG is a config given too: not a blind ask of 127.0.0.1:5000.
    assert_eq!(
        ferry_ok_with_env(&["status"], &[("FERRY_CONFIG", &config)]),
        asked
    );

    // Nothing runs on the store: it is read directly, with the same answer.
    ferry.terminate();
    assert_eq!(ferry_ok(&["status", "--config", &config]), asked);
    assert_eq!(ferry_ok(&["status", "--json", "--config", &config]), json);
}

/// `skopeo <args>` with `HOME` at `home` (so `$HOME/.config/containers/` is its
/// registries configuration), bounded to 60 s.
fn skopeo(home: &std::path::Path, args: &[&str]) -> Output {
    let mut cmd =
        std::process::Command::new(crate::harness::process::require_binary("skopeo", "skopeo"));
    cmd.env("HOME", home)
        .env_remove("CONTAINERS_REGISTRIES_CONF")
        .args(args);
    run_with_timeout(cmd, Duration::from_secs(60))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// What the README's "Docker Engine" and "registries.conf" sections say, done with
/// skopeo (which reads names and registries.conf as podman, CRI-O and buildah do):
/// the path forms reach Ferry, `host:port` is never a path component, and with a
/// generated drop-in pulls go to Ferry while tag listing goes to the registry itself.
#[test]
fn clients_reach_ferry_by_the_names_the_readme_gives() {
    let registry = Registry::start(RegistryAuth::None);
    push_image(&registry, "team/app", "v1", &[20_000]);
    push_image(&registry, "library/nginx", "1.27", &[20_000]);
    let ferry = two_upstreams(&registry).start();
    let home = temp_dir("home");
    let addr = ferry.addr();
    let inspect = |name: &str| {
        skopeo(
            home.path(),
            &[
                "inspect",
                "--tls-verify=false",
                "--no-tags",
                &format!("docker://{name}"),
            ],
        )
    };

    // Docker Engine: a `registry-mirrors` entry gets Docker Hub names as paths
    // (`/v2/library/nginx/…`), routed to the default upstream; other registries by
    // the short-name form; a registry with a port as a path component is refused by
    // the client's own reference parser.
    for name in [
        format!("{addr}/library/nginx:1.27"),
        format!("{addr}/corp/team/app:v1"),
        format!("{addr}/docker.io/library/nginx:1.27"),
    ] {
        let out = inspect(&name);
        assert!(out.status.success(), "{name}: {}", text(&out));
    }
    let out = inspect(&format!("{addr}/{CORP_REGISTRY}/team/app:v1"));
    assert!(
        !out.status.success() && text(&out).contains("invalid reference format"),
        "{}",
        text(&out)
    );

    // registries.conf: the generated file as a drop-in (the per-user drop-in
    // directory, read as /etc/containers/registries.conf.d/ is, after the main file).
    let containers = home.path().join(".config/containers");
    std::fs::create_dir_all(&containers).unwrap();
    std::fs::write(
        containers.join("registries.conf"),
        "unqualified-search-registries = []\n",
    )
    .unwrap();
    let dropins = containers.join("registries.conf.d");
    let written = ferry_ok(&[
        "node-config",
        "--config",
        ferry.config_path().to_str().unwrap(),
        "--mirror",
        &ferry.url(),
        "--format",
        "registries-conf",
        "--write",
        &format!("{}/", dropins.display()),
    ]);
    assert!(
        written.contains(&dropins.join("registries.conf").display().to_string()),
        "{written}"
    );
    // Pulls (manifests and blobs) go to Ferry, by the registry's own name.
    let name = format!("docker://{CORP_REGISTRY}/team/app:v1");
    let out = skopeo(home.path(), &["inspect", "--no-tags", &name]);
    assert!(out.status.success(), "{}", text(&out));
    let dest = home.path().join("copied");
    let out = skopeo(
        home.path(),
        &[
            "--insecure-policy",
            "copy",
            &name,
            &format!("dir:{}", dest.display()),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    // Tag listing goes to the registry itself (unresolvable here), not to Ferry.
    let synced = home.path().join("synced");
    for args in [
        vec!["inspect", name.as_str()],
        vec!["list-tags", "docker://registry.corp.test:16101/team/app"],
        vec![
            "--insecure-policy",
            "sync",
            "--src",
            "docker",
            "--dest",
            "dir",
            "registry.corp.test:16101/team/app",
            synced.to_str().unwrap(),
        ],
    ] {
        let out = skopeo(home.path(), &args);
        assert!(
            !out.status.success() && text(&out).contains("registry.corp.test"),
            "skopeo {args:?}: {}",
            text(&out)
        );
    }
    // The path form lists the tags through Ferry.
    let out = skopeo(
        home.path(),
        &[
            "list-tags",
            "--tls-verify=false",
            &format!("docker://{addr}/corp/team/app"),
        ],
    );
    assert!(
        out.status.success() && text(&out).contains("\"v1\""),
        "{}",
        text(&out)
    );

    // podman, reading the same file: pulls through Ferry, lists tags at the registry
    // itself, and through Ferry by the path form.
    let podman = Podman::new(Some(&dropins.join("registries.conf")));
    podman.pull_ok(&[], &format!("{CORP_REGISTRY}/team/app:v1"), &ferry);
    let search = |args: &[&str]| run_with_timeout(podman.command(args), Duration::from_secs(60));
    let out = search(&[
        "search",
        "--list-tags",
        &format!("{CORP_REGISTRY}/team/app"),
    ]);
    assert!(
        !out.status.success() && text(&out).contains("registry.corp.test"),
        "{}",
        text(&out)
    );
    let out = search(&[
        "search",
        "--list-tags",
        "--tls-verify=false",
        &format!("{addr}/corp/team/app"),
    ]);
    assert!(
        out.status.success() && text(&out).contains("v1"),
        "{}",
        text(&out)
    );
}
