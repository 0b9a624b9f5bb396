//! `ferry prefetch` and `[[pin]]`: whole images pulled into the store before any node
//! asks, through a running Ferry or one started in-process on the config.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::faults::{FaultProxy, Mode};
use crate::harness::ferry::{Ferry, FerryBuilder, LOCAL, Upstream};
use crate::harness::images::{PushedImage, push_image, push_index};
use crate::harness::process::run_with_timeout;
use crate::harness::registry::{Registry, RegistryAuth};
use crate::support::{blob_url, get};

fn blob_gets(registry: &Registry, img: &PushedImage) -> usize {
    img.blobs()
        .iter()
        .map(|b| registry.blob_gets(&b.digest))
        .sum()
}

fn prefetch(args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(Ferry::binary());
    cmd.arg("prefetch").args(args);
    run_with_timeout(cmd, Duration::from_secs(120))
}

#[tokio::test(flavor = "multi_thread")]
async fn prefetch_through_a_running_ferry_pulls_the_platform_asked_for() {
    let registry = Registry::start(RegistryAuth::None);
    let index = push_index(&registry, "team/multi", "v1", &[300_000]);
    let ferry = FerryBuilder::new()
        .upstream(Upstream::local(&registry.url()))
        .start();
    let (amd64, arm64) = (&index.images[0], &index.images[1]);
    let before = (blob_gets(&registry, amd64), blob_gets(&registry, arm64));

    let out = prefetch(&[
        "--server",
        &ferry.url(),
        "--platform",
        "linux/arm64",
        &format!("{LOCAL}/team/multi:v1"),
    ]);
    assert!(
        out.status.success(),
        "prefetch failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.contains("team/multi:v1") && summary.contains("2 blobs"),
        "{summary}"
    );

    assert_eq!(
        blob_gets(&registry, arm64) - before.1,
        arm64.blobs().len(),
        "each arm64 blob fetched once"
    );
    assert_eq!(
        blob_gets(&registry, amd64),
        before.0,
        "amd64 was not asked for"
    );
    for blob in arm64.blobs() {
        let r = get(&blob_url(&ferry, "team/multi", &blob.digest), &[]).await;
        assert_eq!(r.x_cache(), "HIT", "{} is in the store", blob.digest);
    }
    // `ferry status` says what an offline day would break: amd64 of the index.
    let mut cmd = Command::new(Ferry::binary());
    cmd.args(["status", "--json", "--server", &ferry.url()]);
    let out = run_with_timeout(cmd, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    let image = status["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["image"] == "registry.ferry-test.invalid/team/multi:v1")
        .unwrap_or_else(|| panic!("index not listed: {status}"));
    assert_eq!(image["complete"], false, "{image}");
    let platforms: Vec<(String, bool)> = image["platforms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["platform"].as_str().unwrap().to_string(),
                p["complete"].as_bool().unwrap(),
            )
        })
        .collect();
    assert!(
        platforms.contains(&("linux/arm64".into(), true)),
        "{platforms:?}"
    );
    assert!(
        platforms.contains(&("linux/amd64".into(), false)),
        "{platforms:?}"
    );
    let mut cmd = Command::new(Ferry::binary());
    cmd.args(["status", "--server", &ferry.url()]);
    let out = run_with_timeout(cmd, Duration::from_secs(30));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("INCOMPLETE registry.ferry-test.invalid/team/multi:v1")
            && text.contains("linux/amd64: not cached"),
        "{text}"
    );

    // A bad name or an unknown image is a clear failure, not a panic.
    let out = prefetch(&["--server", &ferry.url(), &format!("{LOCAL}/team/none:v1")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("team/none") && err.contains("404") && !err.contains("panicked"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn prefetch_from_the_config_fills_the_store_for_an_offline_day() {
    let registry = Registry::start(RegistryAuth::None);
    let proxy = FaultProxy::start(registry.addr());
    let app = push_image(&registry, "team/app", "v1", &[600_000, 10_000]);
    let index = push_index(&registry, "team/multi", "v1", &[200_000]);
    let mut ferry = FerryBuilder::new()
        .upstream(Upstream::local(&proxy.url()))
        .start();
    ferry.terminate();

    let list = ferry.config_path().with_file_name("images.txt");
    std::fs::write(
        &list,
        format!("# site images\n{LOCAL}/team/app:v1\n\n{LOCAL}/team/multi:v1\n"),
    )
    .unwrap();
    let out = prefetch(&[
        "--config",
        &ferry.config_path().display().to_string(),
        "--file",
        &list.display().to_string(),
    ]);
    assert!(
        out.status.success(),
        "prefetch failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The link is gone; everything prefetched (all platforms of the index) is served.
    proxy.set_mode(Mode::Refuse);
    ferry.restart();
    for img in std::iter::once(&app).chain(index.images.iter()) {
        for blob in img.blobs() {
            let r = get(&blob_url(&ferry, &img.repo, &blob.digest), &[]).await;
            assert_eq!(r.status, 200, "{}: {}", blob.digest, r.text());
            assert_eq!(r.x_cache(), "HIT");
            assert!(r.body == blob.bytes);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pinned_images_are_fetched_without_any_client() {
    let registry = Registry::start(RegistryAuth::None);
    let app = push_image(&registry, "team/app", "v1", &[400_000]);
    let ferry = FerryBuilder::new()
        .upstream(Upstream::local(&registry.url()))
        .extra_toml(&format!(
            "[[pin]]\nimages = [\"{LOCAL}/team/app:v1\"]\nrefresh = \"1h\"\n"
        ))
        .start();
    // No client pulls: the pin refresher does, soon after start.
    let deadline = Instant::now() + Duration::from_secs(20);
    while blob_gets(&registry, &app) < app.blobs().len() {
        assert!(
            Instant::now() < deadline,
            "pinned image not fetched: {}",
            ferry.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for blob in app.blobs() {
        let r = get(&blob_url(&ferry, "team/app", &blob.digest), &[]).await;
        assert_eq!(r.x_cache(), "HIT", "pinned blob {}", blob.digest);
    }
    let r = get(&format!("{}/_ferry/status", ferry.url()), &[]).await;
    let status: serde_json::Value = serde_json::from_slice(&r.body).expect("status JSON");
    let image = &status["images"][0];
    assert_eq!(
        (image["pinned"].as_bool(), image["complete"].as_bool()),
        (Some(true), Some(true)),
        "{status}"
    );
    assert_eq!(
        status["pinned_incomplete"],
        serde_json::json!([]),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn status_names_pinned_images_that_are_not_in_the_store() {
    let registry = Registry::start(RegistryAuth::None);
    let ferry = FerryBuilder::new()
        .upstream(Upstream::local(&registry.url()))
        .extra_toml(&format!("[[pin]]\nimages = [\"{LOCAL}/team/gone:v9\"]\n"))
        .start();
    let r = get(&format!("{}/_ferry/status", ferry.url()), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let status: serde_json::Value = serde_json::from_slice(&r.body).expect("status JSON");
    assert_eq!(
        status["pinned_incomplete"],
        serde_json::json!([format!("{LOCAL}/team/gone:v9")]),
        "{status}"
    );
}
