//! The `ferry` command line as an operator meets it: `ferry config check` accepts a
//! good file and summarises it, refuses bad ones with a message naming the file, line
//! and key (and never panics); `ferry serve` on a bad file exits at once; `FERRY_*`
//! environment variables override the file; `--log-format json` logs only JSON.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

use crate::harness::ferry::{Ferry, FerryBuilder, Upstream};
use crate::harness::http::media;
use crate::harness::images::push_image;
use crate::harness::process::{free_port, run_with_timeout};
use crate::harness::registry::{Registry, RegistryAuth};
use crate::support::{blob_url, get, manifest_url};

/// `ferry <args>` with no `FERRY_*` variables inherited from the test's environment.
fn ferry_command(args: &[&str]) -> Command {
    let mut cmd = Ferry::cli_command();
    cmd.args(args);
    cmd
}

/// stdout and stderr together, as an operator sees them in a terminal.
fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `ferry config check <file>`, bounded to 20 s.
fn config_check(file: &Path) -> Output {
    let mut cmd = ferry_command(&["config", "check"]);
    cmd.arg(file);
    run_with_timeout(cmd, Duration::from_secs(20))
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config file");
    path
}

/// Asserts a clean refusal: a non-zero exit code (not a signal, not Rust's panic code
/// 101), no panic message, and an output that names the file and holds every piece of
/// `expected`. Returns the output.
fn assert_refused(out: &Output, file: &Path, expected: &[&str], what: &str) -> String {
    let text = output_text(out);
    let code = out.status.code();
    assert!(
        matches!(code, Some(c) if c != 0 && c != 101),
        "{what}: expected a non-zero exit (no panic, no signal), got {:?}\n{text}",
        out.status
    );
    assert!(!text.contains("panicked"), "{what}: ferry panicked\n{text}");
    assert!(
        text.contains(&file.display().to_string()),
        "{what}: the message does not name the file {}\n{text}",
        file.display()
    );
    for piece in expected {
        assert!(
            text.contains(piece),
            "{what}: the message does not contain {piece:?}\n{text}"
        );
    }
    text
}

#[test]
fn config_check_accepts_a_valid_file_and_summarises_it() {
    let dir = crate::harness::temp_dir("cli");
    let password_file = write(dir.path(), "password", "Chk-S3cret-pw-8812\n");
    let file = write(
        dir.path(),
        "ferry.toml",
        &format!(
            r#"[server]
listen = "127.0.0.1:5999"

[storage]
root = "{root}"

[[upstream]]
name = "corp"
registry = "corp.ferry-test.invalid"
url = "http://127.0.0.1:9"
default = true

[[upstream]]
name = "ported"
registry = "ported.ferry-test.invalid:5000"
url = "https://127.0.0.1:10"
tag_ttl = "5m"
auth = {{ kind = "basic", username = "bot", password_file = "{password}" }}

[[rule]]
name = "aks-managed-mcr"
source = "mcr.microsoft.com/*"
target = "aks-managed-repository/*"
upstream = "corp"
"#,
            root = dir.path().join("store").display(),
            password = password_file.display(),
        ),
    );
    let out = config_check(&file);
    let text = output_text(&out);
    assert!(out.status.success(), "config check failed\n{text}");
    for piece in [
        "configuration is valid",
        "corp.ferry-test.invalid",
        "ported.ferry-test.invalid:5000",
        "aks-managed-mcr",
        "127.0.0.1:5999",
    ] {
        assert!(text.contains(piece), "summary lacks {piece:?}\n{text}");
    }
    assert!(
        !text.contains("Chk-S3cret-pw-8812"),
        "the summary prints the password\n{text}"
    );
}

#[test]
fn config_check_refuses_bad_files_naming_file_line_and_key() {
    let dir = crate::harness::temp_dir("cli");
    let missing = dir.path().join("no-such-dir/password");
    let upstream = "[[upstream]]\nname = \"corp\"\nurl = \"http://127.0.0.1:9\"\n";
    let cases: Vec<(&str, String, Vec<String>)> = vec![
        (
            "unknown key",
            // line 4
            format!("{upstream}colour = \"blue\"\n"),
            vec!["colour".into(), ":4".into()],
        ),
        (
            "bad URL",
            // line 3
            "[[upstream]]\nname = \"corp\"\nurl = \"htp//no-scheme\"\n".into(),
            vec!["url".into(), "htp//no-scheme".into(), ":3".into()],
        ),
        (
            "two upstreams with the same registry",
            // the second `registry` is on line 9
            "[[upstream]]\nname = \"one\"\nregistry = \"dup.ferry-test.invalid\"\nurl = \"http://127.0.0.1:9\"\n\n\
             [[upstream]]\nname = \"two\"\nurl = \"http://127.0.0.1:10\"\nregistry = \"dup.ferry-test.invalid\"\n"
                .into(),
            vec!["dup.ferry-test.invalid".into(), ":9".into()],
        ),
        (
            "missing password file",
            // line 4
            format!(
                "{upstream}auth = {{ kind = \"basic\", username = \"u\", password_file = \"{}\" }}\n",
                missing.display()
            ),
            vec![
                "password_file".into(),
                missing.display().to_string(),
                ":4".into(),
            ],
        ),
        (
            "overlapping wildcard rules",
            format!(
                "{upstream}\n[[rule]]\nname = \"mcr-rule\"\nsource = \"mcr.microsoft.com/*\"\n\
                 target = \"mirrored/*\"\nupstream = \"corp\"\n\n[[rule]]\nname = \"ghcr-rule\"\n\
                 source = \"ghcr.io/*\"\ntarget = \"mirrored/ghcr/*\"\nupstream = \"corp\"\n"
            ),
            vec!["mcr-rule".into(), "ghcr-rule".into()],
        ),
    ];
    for (i, (what, text, expected)) in cases.iter().enumerate() {
        let file = write(dir.path(), &format!("bad-{i}.toml"), text);
        let out = config_check(&file);
        let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
        let message = assert_refused(&out, &file, &expected, what);
        eprintln!("{what}: {}", message.trim());
    }
}

#[test]
fn serve_with_a_bad_config_exits_at_once_with_the_message() {
    let dir = crate::harness::temp_dir("cli");
    let file = write(
        dir.path(),
        "ferry.toml",
        "[server]\nlisten = \"127.0.0.1:0\"\nlisten_backlog = 5\n",
    );
    let mut cmd = ferry_command(&["serve", "--config"]);
    cmd.arg(&file);
    // Exiting at all is the behaviour: run_with_timeout fails the test if `serve`
    // is still running (serving, or waiting on something) after 20 s.
    let out = run_with_timeout(cmd, Duration::from_secs(20));
    assert_refused(&out, &file, &["listen_backlog", ":3"], "serve, unknown key");
}

#[tokio::test(flavor = "multi_thread")]
async fn environment_overrides_listen_address_and_upstream_url() {
    let registry = Registry::start(RegistryAuth::None);
    let img = push_image(&registry, "team/app", "v1", &[200_000]);
    // The file names a port that is taken, and an upstream URL where nothing listens:
    // Ferry can only start and serve if the environment wins.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port to block");
    let taken_port = taken.local_addr().unwrap().port();
    let dead_url = format!("http://127.0.0.1:{}", free_port());
    let ferry = FerryBuilder::new()
        .listen(&format!("127.0.0.1:{taken_port}"))
        .upstream(Upstream::local(&dead_url))
        .env("FERRY_SERVER_LISTEN", "127.0.0.1:0")
        .env("FERRY_UPSTREAM_LOCAL_URL", &registry.url())
        .start();
    let port: u16 = ferry
        .addr()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a port in the listening line");
    assert_ne!(
        port,
        taken_port,
        "ferry claims the file's port; log:\n{}",
        ferry.log()
    );
    assert!(ferry.addr().starts_with("127.0.0.1:"), "{}", ferry.addr());

    let m = get(
        &manifest_url(&ferry, "team/app", "v1"),
        &[media::OCI_MANIFEST],
    )
    .await;
    assert_eq!(
        m.status,
        200,
        "manifest via the env's upstream URL: {}",
        m.text()
    );
    assert_eq!(m.body, img.manifest);
    let layer = &img.layers[0];
    let b = get(&blob_url(&ferry, "team/app", &layer.digest), &[]).await;
    assert_eq!(
        b.status,
        200,
        "blob via the env's upstream URL: {}",
        b.text()
    );
    assert!(b.body == layer.bytes, "blob bytes");

    // `config check` reports the same override.
    let mut cmd = ferry_command(&["config", "check"]);
    cmd.arg(ferry.config_path())
        .env("FERRY_UPSTREAM_LOCAL_URL", registry.url());
    let out = run_with_timeout(cmd, Duration::from_secs(20));
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&registry.url()) && !text.contains(&dead_url),
        "config check shows the env's URL, not the file's\n{text}"
    );
    // Held until here, so the file's port stayed taken throughout.
    drop(taken);
}

#[tokio::test(flavor = "multi_thread")]
async fn json_log_format_writes_only_json_lines() {
    let registry = Registry::start(RegistryAuth::None);
    let img = push_image(&registry, "team/app", "v1", &[4096]);
    let mut ferry = FerryBuilder::new()
        .upstream(Upstream::local(&registry.url()))
        .arg("--log-format")
        .arg("json")
        .start();
    // Some traffic, a miss, a hit and an error, so there is more than the banner.
    for reference in ["v1", "v1", "no-such-tag"] {
        get(
            &manifest_url(&ferry, "team/app", reference),
            &[media::OCI_MANIFEST],
        )
        .await;
    }
    get(
        &format!(
            "{}/v2/team/app/manifests/v1?ns=unknown.ferry-test.invalid",
            ferry.url()
        ),
        &[media::OCI_MANIFEST],
    )
    .await;
    get(&blob_url(&ferry, "team/app", &img.layers[0].digest), &[]).await;
    assert!(ferry.terminate(), "ferry exits on SIGTERM");

    let log = ferry.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 2, "ferry logged almost nothing:\n{log}");
    let mut listening = None;
    for line in &lines {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {line}"));
        assert!(v.is_object(), "a log line is not a JSON object: {line}");
        let message = v["fields"]["message"]
            .as_str()
            .or_else(|| v["message"].as_str())
            .unwrap_or("");
        if message.starts_with("listening on http://") {
            listening = Some(v.clone());
        }
    }
    let listening = listening.unwrap_or_else(|| panic!("no JSON line says `listening on`:\n{log}"));
    assert!(
        listening.to_string().contains(ferry.addr()),
        "the listening line names the address {}: {listening}",
        ferry.addr()
    );
    assert_eq!(listening["level"], "INFO", "{listening}");
}
