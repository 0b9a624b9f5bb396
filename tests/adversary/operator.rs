//! Configuration accidents: a config file emptied on a running Ferry (`: > ferry.toml`)
//! or left without an `[[upstream]]`. Before issue 11 the reload went through ("0
//! upstreams … 1 removed", at INFO) and every pull, cached images included, got 404
//! until the file was fixed; `ferry serve` on such a file started and answered 404.
//! Now both are refused: at start with a clear error, on reload with one error while
//! the running configuration keeps serving.

use std::time::{Duration, Instant};

use crate::harness::ferry::Ferry;
use crate::harness::http::media;
use crate::harness::images::{PushedImage, push_image_http};
use crate::harness::process::{run_with_timeout, tail_str};
use crate::support::{get, local_setup, manifest_url};

/// A file change is seen within two polls (2 s each), a SIGHUP at once.
const RELOAD_WAIT: Duration = Duration::from_secs(15);

/// What a node sees pulling `img`'s manifest through Ferry: the status and bytes.
async fn assert_pulls(ferry: &Ferry, img: &PushedImage, what: &str) {
    let r = get(
        &manifest_url(ferry, &img.repo, &img.tag),
        &[media::OCI_MANIFEST],
    )
    .await;
    assert_eq!(
        r.status,
        200,
        "{what}: {}\n--- ferry log ---\n{}",
        r.text(),
        tail_str(&ferry.log(), 20)
    );
    assert_eq!(
        r.body, img.manifest,
        "{what}: the upstream's manifest bytes"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_emptied_or_upstream_less_config_is_refused_on_reload_and_pulls_go_on() {
    let (registry, mut ferry) = local_setup();
    let images: Vec<PushedImage> = (1..=3)
        .map(|i| push_image_http(&registry, "team/app", &i.to_string(), &[10_000]))
        .collect();
    assert_pulls(&ferry, &images[0], "before").await;
    let good = ferry.config().to_owned();

    // `: > ferry.toml`: the file changes to nothing; no signal.
    let mark = ferry.log().len();
    ferry.write_config("");
    let refused = ferry
        .wait_for_log(mark, &["configuration refused"], RELOAD_WAIT)
        .unwrap_or_else(|| {
            panic!(
                "an emptied config file was not refused within {RELOAD_WAIT:?}\n{}",
                tail_str(&ferry.log()[mark..], 20)
            )
        });
    assert!(
        refused.contains("no [[upstream]]") && refused.contains("ERROR"),
        "one error saying why: {refused}"
    );
    assert!(
        ferry
            .log_lines(mark, &["configuration reloaded"])
            .is_empty(),
        "the empty file was applied\n{}",
        &ferry.log()[mark..]
    );
    assert_pulls(&ferry, &images[0], "a cached image, config emptied").await;
    assert_pulls(&ferry, &images[1], "an uncached image, config emptied").await;

    // A file with settings but no upstream, on SIGHUP.
    let mark = ferry.log().len();
    let listen = good
        .lines()
        .find(|l| l.starts_with("listen"))
        .expect("the test config sets listen");
    ferry.write_config(&format!("[server]\n{listen}\n"));
    ferry.signal("HUP");
    ferry
        .wait_for_log(
            mark,
            &["configuration refused", "no [[upstream]]"],
            RELOAD_WAIT,
        )
        .unwrap_or_else(|| {
            panic!(
                "an upstream-less config was not refused on SIGHUP\n{}",
                tail_str(&ferry.log()[mark..], 20)
            )
        });
    // Two more polls: the same file is not refused again.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        ferry.log_lines(mark, &["configuration refused"]).len(),
        1,
        "one error per refused change\n{}",
        &ferry.log()[mark..]
    );
    assert_pulls(
        &ferry,
        &images[2],
        "an uncached image, upstream-less config",
    )
    .await;

    // Fixed: the same config as before reloads.
    let mark = ferry.log().len();
    ferry.write_config(&good);
    ferry.signal("HUP");
    assert!(
        ferry
            .wait_for_log(mark, &["configuration reloaded"], RELOAD_WAIT)
            .is_some(),
        "the fixed file did not reload\n{}",
        tail_str(&ferry.log()[mark..], 20)
    );
    ferry.assert_running();
}

#[test]
fn serve_and_config_check_refuse_an_empty_config() {
    let dir = crate::harness::temp_dir("operator");
    for (name, text) in [
        ("empty.toml", ""),
        ("no-upstream.toml", "[server]\nlisten = \"127.0.0.1:0\"\n"),
    ] {
        let file = dir.path().join(name);
        std::fs::write(&file, text).expect("write the config");
        for args in [&["serve", "--config"][..], &["config", "check"][..]] {
            let mut cmd = Ferry::cli_command();
            cmd.args(args).arg(&file);
            cmd.current_dir(dir.path());
            let started = Instant::now();
            let out = run_with_timeout(cmd, Duration::from_secs(20));
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let what = format!("ferry {} {name}", args.join(" "));
            assert!(
                matches!(out.status.code(), Some(c) if c != 0 && c != 101),
                "{what}: expected a refusal (non-zero exit, no panic), got {:?}\n{text}",
                out.status
            );
            assert!(
                text.contains(&file.display().to_string()) && text.contains("no [[upstream]]"),
                "{what}: the message names the file and the reason\n{text}"
            );
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{what}: took {:?}",
                started.elapsed()
            );
        }
    }
}
