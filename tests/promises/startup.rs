//! How Ferry finds its config, and what it says at start.

use std::time::Duration;

use crate::harness::ferry::{Ferry, FerryBuilder, Upstream};
use crate::harness::images::push_image_http;
use crate::harness::process::run_with_timeout;
use crate::harness::registry::{Registry, RegistryAuth};

/// README: `FERRY_CONFIG` (the file). `ferry serve` with no `--config` and the file in
/// `FERRY_CONFIG` serves that file's upstream, on that file's address; without it
/// Ferry would run its built-in config (127.0.0.1:5000, no `local` upstream).
#[tokio::test(flavor = "multi_thread")]
async fn ferry_config_names_the_file_serve_runs_on() {
    let registry = Registry::start(RegistryAuth::None);
    let img = push_image_http(&registry, "team/app", "v1", &[20_000]);
    let ferry = FerryBuilder::new()
        .upstream(Upstream::local(&registry.url()))
        .config_from_env()
        .start();
    assert_ne!(
        ferry.addr(),
        "127.0.0.1:5000",
        "the file says port 0; 5000 is the built-in config's"
    );
    let caches = crate::support::pull_image(&ferry.url(), &img).await;
    assert_eq!(caches[0], "MISS", "fetched from the file's upstream");
    assert!(
        ferry.storage_root().join("blobs").is_dir(),
        "the file's [storage] root holds the store"
    );

    // The one-off commands read it too: `ferry fsck` with no `--config` checks this
    // store (the built-in config's `./ferry-data` would hold nothing).
    let mut ferry = ferry;
    assert!(ferry.terminate(), "ferry stops on SIGTERM");
    let elsewhere = crate::harness::temp_dir("cwd");
    let mut fsck = Ferry::cli_command();
    fsck.arg("fsck")
        .env("FERRY_CONFIG", ferry.config_path())
        .current_dir(elsewhere.path());
    let out = run_with_timeout(fsck, Duration::from_secs(60));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "fsck on FERRY_CONFIG\n{text}");
    // Manifest, config and layer.
    assert!(
        text.contains("checked 3 blobs"),
        "fsck checked the file's store\n{text}"
    );
}

/// README: `insecure_skip_verify = true` is "never silently; logged loudly": one
/// warning at start naming the upstream, and none for an upstream without it.
#[test]
fn insecure_skip_verify_is_a_warning_at_start_naming_the_upstream() {
    let ferry = FerryBuilder::new()
        .upstream(
            Upstream::new(
                "careless",
                "careless.ferry-test.invalid",
                "https://127.0.0.1:9",
            )
            .raw("insecure_skip_verify = true"),
        )
        .upstream(Upstream::new(
            "careful",
            "careful.ferry-test.invalid",
            "https://127.0.0.1:9",
        ))
        .start();
    let line = ferry
        .wait_for_log(
            0,
            &["WARN", "careless", "insecure_skip_verify"],
            Duration::from_secs(10),
        )
        .unwrap_or_else(|| {
            panic!(
                "no warning naming the upstream and insecure_skip_verify\n{}",
                ferry.log()
            )
        });
    assert!(
        line.contains("DISABLED") || line.to_lowercase().contains("verif"),
        "the warning says verification is off: {line}"
    );
    let warnings = ferry.log_lines(0, &["insecure_skip_verify"]);
    assert_eq!(warnings.len(), 1, "one warning: {warnings:#?}");
    assert!(
        ferry
            .log_lines(0, &["careful", "insecure_skip_verify"])
            .is_empty(),
        "no warning for the upstream that verifies"
    );
}
