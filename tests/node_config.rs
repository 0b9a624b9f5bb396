//! `ferry node-config` end to end: the files it writes are read by a real containerd
//! (`ctr` with the generated `certs.d` tree as its hosts dir) and a real podman (the
//! generated `registries.conf` as `CONTAINERS_REGISTRIES_CONF`), which pull through
//! Ferry by the registry names nodes use; without `--fallback` neither goes to a
//! registry directly. Bad input fails clearly and writes nothing. The examples shipped
//! in `docker/` (containerd `certs.d`, podman `registries.conf`, k3s
//! `registries.yaml`) are byte for byte what it writes for the shipped configs.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use crate::harness::containerd::Containerd;
use crate::harness::ferry::{Ferry, FerryBuilder, LOCAL_REGISTRY, Upstream};
use crate::harness::http::media;
use crate::harness::images::{PushedImage, push_image};
use crate::harness::podman::Podman;
use crate::harness::process::{run_with_timeout, tail_str};
use crate::harness::registry::{Registry, RegistryAuth};
use crate::harness::{block_on, temp_dir};
use crate::support::{ferry_cli, get};

/// The cache rule every test config carries: `mcr.microsoft.com` is a registry Ferry
/// serves only through a rule, so node-config must still configure it.
const MCR_RULE: &str = r#"[[rule]]
name = "mcr"
source = "mcr.microsoft.com/*"
target = "mirror/*"
upstream = "direct"
"#;

/// A Distribution with three images: one under its own name, one Docker Hub official
/// image (`library/…`), one the rule serves as `mcr.microsoft.com/team/tool`.
struct Images {
    app: PushedImage,
    alpine: PushedImage,
    tool: PushedImage,
}

fn push_images(registry: &Registry) -> Images {
    Images {
        app: push_image(registry, "team/app", "v1", &[300_000]),
        alpine: push_image(registry, "library/alpine", "3.20", &[100_000]),
        tool: push_image(registry, "mirror/team/tool", "1", &[100_000]),
    }
}

/// `ferry node-config <args> --config <ferry's config>`: panics unless it exits 0;
/// returns stdout.
fn node_config_ok(ferry: &Ferry, args: &[&str]) -> String {
    let mut all = vec!["node-config"];
    all.extend_from_slice(args);
    let (out, text) = ferry_cli(ferry, &all);
    assert!(
        out.status.success(),
        "ferry {all:?} failed ({})\n{text}",
        out.status
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether Ferry holds `registry/repo:tag`: a GET through Ferry is a cache HIT.
fn ferry_has(ferry: &Ferry, registry: &str, repo: &str, tag: &str) -> bool {
    let url = format!("{}/v2/{repo}/manifests/{tag}?ns={registry}", ferry.url());
    let r = block_on(get(&url, &[media::OCI_MANIFEST, media::OCI_INDEX]));
    r.status == 200 && r.x_cache() == "HIT"
}

/// Requests a client other than Ferry made to the registry after the first `seeded`
/// entries of its access log (the test's own pushes).
fn direct_requests(registry: &Registry, seeded: usize) -> Vec<String> {
    registry.settled_access_log()[seeded..]
        .iter()
        .filter(|e| !e.user_agent.starts_with("ferry/"))
        .map(|e| format!("{} {} ({})", e.method, e.path, e.user_agent))
        .collect()
}

fn ctr_pull_ok(ctd: &Containerd, hosts: &Path, ferry: &Ferry, reference: &str) {
    let out = ctd.pull(hosts, reference, &[]);
    assert!(
        out.status.success(),
        "ctr pull {reference} failed ({})\nstderr:\n{}\n{}\n--- ferry log (tail) ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        ctd.log_tails(20),
        tail_str(&ferry.log(), 40),
    );
}

fn assert_ctr_content(ctd: &Containerd, img: &PushedImage) {
    for blob in img.blobs() {
        assert!(
            ctd.has_content(&blob.digest) && ctd.content(&blob.digest) == blob.bytes,
            "containerd holds {} ({}) intact",
            blob.digest,
            blob.media_type
        );
    }
}

/// containerd with the generated `certs.d`: the registry's own address as its name
/// (so a direct request would reach it and show in its access log), Docker Hub and a
/// rule source, all pulled through Ferry; with Ferry down nothing is pulled, until
/// `--fallback` is generated, which lets containerd go to the registry itself.
#[test]
fn containerd_pulls_through_generated_hosts_toml() {
    let registry = Registry::start(RegistryAuth::None);
    let images = push_images(&registry);
    let v2 = push_image(&registry, "team/app", "v2", &[200_000]);
    let seeded = registry.settled_access_log().len();
    // The registry name nodes use is the registry's real, reachable address.
    let name = registry.addr().to_string();
    let mut ferry = FerryBuilder::new()
        .upstream(Upstream::new("direct", &name, &registry.url()))
        .upstream(Upstream::new("docker", "docker.io", &registry.url()))
        .extra_toml(MCR_RULE)
        .start();
    let ctd = Containerd::start();
    let hosts = ctd.hosts_dir();
    let hosts_arg = hosts.display().to_string();

    let out = node_config_ok(&ferry, &["--mirror", &ferry.url(), "--write", &hosts_arg]);
    for host in [name.as_str(), "docker.io", "mcr.microsoft.com"] {
        let file = hosts.join(host).join("hosts.toml");
        assert!(
            out.contains(&format!("wrote {}", file.display())),
            "{host} written: {out}"
        );
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            !text.contains(&registry.url()) && !text.contains("registry-1.docker.io"),
            "without --fallback the file names only Ferry:\n{text}"
        );
    }
    // Running it again (the DaemonSet does, on every start) changes nothing.
    let mtime = |host: &str| {
        std::fs::metadata(hosts.join(host).join("hosts.toml"))
            .unwrap()
            .modified()
            .unwrap()
    };
    let before = mtime("docker.io");
    let out = node_config_ok(&ferry, &["--mirror", &ferry.url(), "--write", &hosts_arg]);
    assert_eq!(out.matches("unchanged ").count(), 3, "{out}");
    assert!(!out.contains("wrote "), "{out}");
    assert_eq!(mtime("docker.io"), before);

    ctr_pull_ok(&ctd, &hosts, &ferry, &format!("{name}/team/app:v1"));
    ctr_pull_ok(&ctd, &hosts, &ferry, "docker.io/library/alpine:3.20");
    ctr_pull_ok(&ctd, &hosts, &ferry, "mcr.microsoft.com/team/tool:1");
    for img in [&images.app, &images.alpine, &images.tool] {
        assert_ctr_content(&ctd, img);
    }
    // Ferry fetched them (they are in its cache now), and nobody else asked the
    // registry.
    assert!(ferry_has(&ferry, &name, "team/app", "v1"));
    assert!(ferry_has(&ferry, "docker.io", "library/alpine", "3.20"));
    assert!(ferry_has(&ferry, "mcr.microsoft.com", "team/tool", "1"));
    assert_eq!(direct_requests(&registry, seeded), Vec::<String>::new());

    // Ferry down: containerd has nowhere else to go.
    ferry.stop();
    let out = ctd.pull(&hosts, &format!("{name}/team/app:v2"), &[]);
    assert!(
        !out.status.success(),
        "pulled with Ferry down and no fallback:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(direct_requests(&registry, seeded), Vec::<String>::new());

    // --fallback: the same pull now goes to the registry itself.
    let out = node_config_ok(
        &ferry,
        &[
            "--mirror",
            &ferry.url(),
            "--write",
            &hosts_arg,
            "--fallback",
        ],
    );
    assert_eq!(out.matches("wrote ").count(), 3, "{out}");
    ctr_pull_ok(&ctd, &hosts, &ferry, &format!("{name}/team/app:v2"));
    assert_ctr_content(&ctd, &v2);
    let direct = direct_requests(&registry, seeded);
    assert!(
        direct
            .iter()
            .any(|r| r.contains("/team/app/manifests/v2") && r.contains("containerd")),
        "with --fallback containerd asked the registry itself: {direct:?}"
    );
}

/// `ferry node-config --format registries-conf --mirror <ferry> --write <dir>
/// [--fallback]`; returns stdout.
fn write_registries_conf(ferry: &Ferry, dir: &Path, fallback: bool) -> String {
    let (mirror, dir) = (ferry.url(), dir.display().to_string());
    let mut args = vec![
        "--format",
        "registries-conf",
        "--mirror",
        &mirror,
        "--write",
        &dir,
    ];
    if fallback {
        args.push("--fallback");
    }
    node_config_ok(ferry, &args)
}

/// podman pulls through a generated `registries.conf` by names only Ferry can serve
/// (`.invalid` never resolves; Docker Hub is not reachable from here) and by the
/// registry's own reachable address, which without `--fallback` it never asks:
/// Ferry's location carries the registry (or, with a port, the upstream's short
/// name) as its first path component, `library/` included. With Ferry down nothing
/// is pulled.
#[test]
fn podman_pulls_through_generated_registries_conf() {
    let registry = Registry::start(RegistryAuth::None);
    let images = push_images(&registry);
    let v2 = push_image(&registry, "team/app", "v2", &[200_000]);
    let seeded = registry.settled_access_log().len();
    let mut ferry = FerryBuilder::new()
        .upstream(Upstream::new("direct", LOCAL_REGISTRY, &registry.url()))
        .upstream(Upstream::new("docker", "docker.io", &registry.url()))
        // A name that does reach the registry: a direct request would show in its log.
        .upstream(Upstream::new("ported", registry.addr(), &registry.url()))
        .extra_toml(MCR_RULE)
        .start();
    let out_dir = temp_dir("nodeconf");
    let conf = out_dir.path().join("registries.conf");
    let out = write_registries_conf(&ferry, out_dir.path(), false);
    assert!(out.contains(&format!("wrote {}", conf.display())), "{out}");
    let podman = Podman::new(Some(&conf));

    for (reference, img, registry_name, repo, tag) in [
        (
            format!("{LOCAL_REGISTRY}/team/app:v1"),
            &images.app,
            LOCAL_REGISTRY,
            "team/app",
            "v1",
        ),
        // Docker Hub's short form: podman asks for library/alpine.
        (
            "docker.io/alpine:3.20".to_string(),
            &images.alpine,
            "docker.io",
            "library/alpine",
            "3.20",
        ),
        (
            "mcr.microsoft.com/team/tool:1".to_string(),
            &images.tool,
            "mcr.microsoft.com",
            "team/tool",
            "1",
        ),
        // A registry with a port is named by its upstream's short name at Ferry.
        (
            format!("{}/team/app:v1", registry.addr()),
            &images.app,
            registry.addr(),
            "team/app",
            "v1",
        ),
    ] {
        podman.pull_ok(&[], &reference, &ferry);
        assert_eq!(
            podman.digest(&reference),
            img.manifest_digest,
            "{reference}"
        );
        assert!(
            ferry_has(&ferry, registry_name, repo, tag),
            "Ferry served {reference}"
        );
    }
    assert_eq!(direct_requests(&registry, seeded), Vec::<String>::new());

    // The --fallback form (Ferry as a [[registry.mirror]]) serves as well.
    write_registries_conf(&ferry, out_dir.path(), true);
    assert!(
        std::fs::read_to_string(&conf)
            .unwrap()
            .contains("[[registry.mirror]]")
    );
    let reference = format!("{LOCAL_REGISTRY}/team/app:v2");
    podman.pull_ok(&[], &reference, &ferry);
    assert_eq!(podman.digest(&reference), v2.manifest_digest);

    // Ferry down, no fallback: the pull fails rather than going anywhere else.
    write_registries_conf(&ferry, out_dir.path(), false);
    ferry.stop();
    let out = podman.pull(&[], "docker.io/library/alpine:latest");
    assert!(!out.status.success(), "pulled with Ferry down");
    assert_eq!(direct_requests(&registry, seeded), Vec::<String>::new());
}

/// Runs `ferry node-config <args>` on `config` (no `FERRY_*` from the environment).
fn node_config(config: &Path, args: &[&str]) -> (Output, String) {
    let mut cmd = Ferry::cli_command();
    cmd.arg("node-config")
        .arg("--config")
        .arg(config)
        .args(args);
    let out = run_with_timeout(cmd, Duration::from_secs(30));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("panicked"), "{args:?} panicked\n{text}");
    (out, text)
}

/// Every file under `dir`, relative, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = crate::support::files_under(dir)
        .iter()
        .map(|p| p.strip_prefix(dir).unwrap().display().to_string())
        .collect();
    out.sort();
    out
}

#[test]
fn bad_input_is_refused_and_nothing_is_written() {
    let dir = temp_dir("nodeconf-bad");
    let d = dir.path();
    let config = d.join("ferry.toml");
    std::fs::write(
        &config,
        format!(
            "[[upstream]]\nname = \"direct\"\nregistry = \"{LOCAL_REGISTRY}\"\nurl = \"http://127.0.0.1:9\"\n\n\
             [[upstream]]\nname = \"docker\"\nregistry = \"docker.io\"\nurl = \"https://registry-1.docker.io\"\n\n{MCR_RULE}"
        ),
    )
    .unwrap();
    let out_dir = d.join("certs.d");
    let out_arg = out_dir.display().to_string();

    let refused = |args: &[&str], expect: &[&str]| {
        let (out, text) = node_config(&config, args);
        assert!(!out.status.success(), "{args:?} succeeded:\n{text}");
        for e in expect {
            assert!(text.contains(e), "{args:?}: no `{e}` in:\n{text}");
        }
        assert_eq!(
            text.lines()
                .filter(|l| l.to_ascii_lowercase().contains("error"))
                .count(),
            1,
            "{args:?}: said once:\n{text}"
        );
    };
    refused(
        &["--mirror", "not a url", "--write", &out_arg],
        &["--mirror", "not a URL"],
    );
    refused(
        &["--mirror", "10.0.0.50:5000", "--write", &out_arg],
        &["--mirror", "http://10.0.0.50:5000"],
    );
    refused(
        &["--mirror", "ftp://10.0.0.50:5000", "--write", &out_arg],
        &["scheme must be http or https"],
    );
    refused(
        &[
            "--mirror",
            "http://10.0.0.50:5000/v2/x",
            "--write",
            &out_arg,
        ],
        &["only scheme, host and port"],
    );
    refused(
        &[
            "--mirror",
            "http://10.0.0.50:5000",
            "--format",
            "cri-o",
            "--write",
            &out_arg,
        ],
        &["cri-o", "containerd", "registries-conf", "k3s"],
    );
    refused(
        &[
            "--mirror",
            "http://10.0.0.50:5000",
            "--ca",
            "/etc/ferry/ca.pem",
            "--write",
            &out_arg,
        ],
        &["--ca", "https://"],
    );
    assert!(!out_dir.exists(), "nothing written for refused arguments");

    // A --write directory that cannot be made: a file is in its way.
    let blocker = d.join("a-file");
    std::fs::write(&blocker, "").unwrap();
    let under_file = blocker.join("certs.d");
    refused(
        &[
            "--mirror",
            "http://10.0.0.50:5000",
            "--write",
            &under_file.display().to_string(),
        ],
        &["cannot write", &blocker.display().to_string()],
    );

    // One registry's directory cannot be made: no other file appears either.
    std::fs::create_dir(&out_dir).unwrap();
    std::fs::write(out_dir.join("mcr.microsoft.com"), "not a directory").unwrap();
    refused(
        &["--mirror", "http://10.0.0.50:5000", "--write", &out_arg],
        &["cannot write", "mcr.microsoft.com"],
    );
    assert_eq!(listing(&out_dir), ["mcr.microsoft.com"]);

    // Once the way is clear, the same command writes all three.
    std::fs::remove_file(out_dir.join("mcr.microsoft.com")).unwrap();
    let (out, text) = node_config(
        &config,
        &["--mirror", "http://10.0.0.50:5000", "--write", &out_arg],
    );
    assert!(out.status.success(), "{text}");
    assert_eq!(
        listing(&out_dir),
        [
            "docker.io/hosts.toml",
            "mcr.microsoft.com/hosts.toml",
            format!("{LOCAL_REGISTRY}/hosts.toml").as_str(),
        ]
    );
}

/// The repository root: the shipped examples and the commands in their comments use
/// paths relative to it.
fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `ferry <args>` run in the repository root, as a maintainer regenerates the
/// examples; panics unless it exits 0. Returns stdout.
fn ferry_in_repo(args: &[&str]) -> Vec<u8> {
    let mut cmd = Ferry::cli_command();
    cmd.current_dir(repo_root()).args(args);
    let out = run_with_timeout(cmd, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "ferry {} failed ({})\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Where `shipped` and `generated` first differ, for the failure message.
fn first_difference(shipped: &str, generated: &str) -> String {
    let (a, b): (Vec<&str>, Vec<&str>) = (shipped.lines().collect(), generated.lines().collect());
    let Some(i) = (0..a.len().max(b.len())).find(|&i| a.get(i) != b.get(i)) else {
        return "they differ only in line endings or the final newline".to_string();
    };
    let show = |l: Option<&&str>| l.map_or("<end of file>".to_string(), |l| format!("{l:?}"));
    format!(
        "first difference at line {}:\n  shipped:   {}\n  generated: {}",
        i + 1,
        show(a.get(i)),
        show(b.get(i))
    )
}

/// A single-file example: its leading comment lines (up to the generated marker)
/// are its own and must name `command`; everything from the marker on is exactly
/// what `command` prints.
fn assert_example_is_generated(example: &str, command: &[&str]) {
    let shown = format!("ferry {}", command.join(" "));
    let shipped = std::fs::read_to_string(repo_root().join(example))
        .unwrap_or_else(|e| panic!("{example}: {e}"));
    let generated = String::from_utf8(ferry_in_repo(command)).expect("UTF-8 output");
    let regenerate = |preamble_lines: usize| {
        format!(
            "regenerate it from the repository root, keeping its {preamble_lines} own comment \
             line(s) at the top:\n  {{ head -n {preamble_lines} {example}; cargo run -q -- {}; }} \
             > {example}.new && mv {example}.new {example}",
            command.join(" ")
        )
    };
    let marker = shipped
        .lines()
        .position(|l| l.starts_with("# Generated by ferry node-config"))
        .unwrap_or_else(|| {
            panic!(
                "{example} has no `# Generated by ferry node-config` line: it must be its own \
                 comment lines, naming the command, followed by what `{shown}` prints; \
                 regenerate it from the repository root with `cargo run -q -- {}`, then put \
                 those comment lines back on top",
                command.join(" ")
            )
        });
    let preamble: String = shipped.split_inclusive('\n').take(marker).collect();
    assert!(
        preamble.lines().all(|l| l.starts_with('#')),
        "{example}: only comment lines may come before the generated part:\n{preamble}"
    );
    assert!(
        preamble.contains(&shown),
        "{example}: its comment must name the command that makes it, `{shown}`:\n{preamble}"
    );
    let expected = format!("{preamble}{generated}");
    assert!(
        shipped == expected,
        "{example} is not what `{shown}` prints now ({}); {}",
        first_difference(&shipped, &expected),
        regenerate(marker)
    );
}

/// The examples in `docker/` are what `ferry node-config` writes for the shipped
/// configs, byte for byte, so they never drift from the generator. The configs name
/// secret files that do not exist here; node-config needs no secrets and goes on.
#[test]
fn shipped_examples_are_what_node_config_writes() {
    assert_example_is_generated(
        "docker/podman/registries.conf",
        &[
            "node-config",
            "--config",
            "docker/ferry.toml",
            "--format",
            "registries-conf",
            "--mirror",
            "http://10.0.0.50:5000",
        ],
    );
    assert_example_is_generated(
        "docker/k3s/registries.yaml",
        &[
            "node-config",
            "--config",
            "docker/ferry.toml",
            "--format",
            "k3s",
            "--mirror",
            "http://10.0.0.50:5000",
        ],
    );

    // containerd: a tree of hosts.toml files, made by the command its README gives.
    let shipped_dir = repo_root().join("docker/containerd/certs.d");
    let documented = "ferry node-config --config docker/ferry-acr.toml --mirror \
                      http://10.0.0.50:5000 --write docker/containerd/certs.d";
    let readme = std::fs::read_to_string(repo_root().join("docker/containerd/README.md")).unwrap();
    assert!(
        readme.contains(documented),
        "docker/containerd/README.md must give the command that makes certs.d, `{documented}`"
    );
    let regenerate = "regenerate it from the repository root with:\n  rm -r docker/containerd/certs.d && \
                      cargo run -q -- node-config --config docker/ferry-acr.toml --mirror \
                      http://10.0.0.50:5000 --write docker/containerd/certs.d";
    let out = temp_dir("nodeconf-examples");
    let out_arg = out.path().display().to_string();
    ferry_in_repo(&[
        "node-config",
        "--config",
        "docker/ferry-acr.toml",
        "--mirror",
        "http://10.0.0.50:5000",
        "--write",
        &out_arg,
    ]);
    let files = listing(out.path());
    assert!(
        files.contains(&"contoso.azurecr.io/hosts.toml".to_string())
            && files.contains(&"mcr.microsoft.com/hosts.toml".to_string()),
        "node-config wrote the ACR's and the rule's registry: {files:?}"
    );
    assert_eq!(
        listing(&shipped_dir),
        files,
        "docker/containerd/certs.d holds other files than `{documented}` writes; {regenerate}"
    );
    for file in &files {
        let shipped = std::fs::read_to_string(shipped_dir.join(file)).unwrap();
        let generated = std::fs::read_to_string(out.path().join(file)).unwrap();
        assert!(
            shipped == generated,
            "docker/containerd/certs.d/{file} is not what `{documented}` writes now ({}); {regenerate}",
            first_difference(&shipped, &generated)
        );
    }
}
