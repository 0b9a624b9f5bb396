//! OCI bundles for air gaps: `ferry export` from one Ferry's store, `ferry import`
//! into another whose upstream is unreachable, then real clients (ctr, skopeo) pull
//! byte-identical images from it. Also skopeo reading Ferry's bundles and Ferry
//! importing skopeo's `oci-archive:`, signatures, corruption and `--since`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::harness::containerd::{Containerd, mirror_hosts_toml};
use crate::harness::ferry::{Ferry, FerryBuilder, LOCAL, LOCAL_REGISTRY, Upstream};
use crate::harness::http::media;
use crate::harness::images::{PushedImage, PushedIndex, push_image, push_index};
use crate::harness::process::{run_ok, run_with_timeout, tail_str};
use crate::harness::registry::{Registry, RegistryAuth};
use crate::harness::skopeo;
use crate::harness::{block_on, digest_hex, temp_dir};
use crate::support::{blob_url, get, manifest_url};

/// Nothing listens on port 1: the far site's upstream is unreachable.
const UNREACHABLE: &str = "http://127.0.0.1:1";

/// `ferry <args>`, with no `FERRY_*` variables inherited, bounded to 120 s.
fn ferry(args: &[&str]) -> Output {
    let mut cmd = Ferry::cli_command();
    cmd.args(args);
    run_with_timeout(cmd, Duration::from_secs(120))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `ferry <args>` and returns its stdout; panics with the output on failure.
fn ferry_ok(args: &[&str]) -> String {
    let out = ferry(args);
    assert!(
        out.status.success(),
        "ferry {} failed ({}):\n{}",
        args.join(" "),
        out.status,
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `ferry <args>`, expects a clean refusal (non-zero, no panic) whose output
/// holds every piece of `expected`; returns the output.
fn ferry_refused(args: &[&str], expected: &[&str]) -> String {
    let out = ferry(args);
    let t = text(&out);
    let code = out.status.code();
    assert!(
        matches!(code, Some(c) if c != 0 && c != 101) && !t.contains("panicked"),
        "ferry {} should fail cleanly, got {:?}:\n{t}",
        args.join(" "),
        out.status
    );
    for e in expected {
        assert!(
            t.contains(e),
            "ferry {}: output lacks `{e}`:\n{t}",
            args.join(" ")
        );
    }
    t
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// A Ferry whose upstream registry `registry.ferry-test.invalid` cannot be reached,
/// stopped so that its store can be imported into; `restart()` serves it.
fn far_site() -> Ferry {
    let mut ferry = FerryBuilder::new()
        .upstream(Upstream::local(UNREACHABLE))
        .start();
    assert!(ferry.terminate(), "ferry stops on SIGTERM");
    ferry
}

/// `skopeo copy [--all] <src> <dest>` (no TLS anywhere).
fn skopeo_copy(src: &str, dest: &str, all: bool) {
    let mut cmd = skopeo::copy();
    cmd.arg("--dest-tls-verify=false");
    if all {
        cmd.arg("--all");
    }
    cmd.arg(src).arg(dest);
    run_ok(cmd, Duration::from_secs(120));
}

/// Caches `img` in `ferry` by copying it through with skopeo.
fn pull_through(ferry: &Ferry, reference: &str, all: bool) {
    let dest = temp_dir("pulled");
    skopeo_copy(
        &format!("docker://{}/{LOCAL}/{reference}", ferry.addr()),
        &format!("dir:{}", dest.path().display()),
        all,
    );
}

/// `skopeo copy` through `ferry` into a `dir:`, then every blob of `imgs` and the
/// top manifest must be there byte for byte.
fn assert_skopeo_pulls(ferry: &Ferry, reference: &str, top: &[u8], imgs: &[&PushedImage]) {
    let dest = temp_dir("skopeo");
    skopeo_copy(
        &format!("docker://{}/{LOCAL}/{reference}", ferry.addr()),
        &format!("dir:{}", dest.path().display()),
        imgs.len() > 1,
    );
    let manifest = std::fs::read(dest.path().join("manifest.json")).expect("manifest.json");
    assert!(
        manifest == top,
        "skopeo got the exact top manifest of {reference}"
    );
    assert_dir_has(dest.path(), imgs);
}

/// A skopeo `dir:` holds every blob of `imgs` with the right bytes.
fn assert_dir_has(dir: &Path, imgs: &[&PushedImage]) {
    for img in imgs {
        for blob in img.blobs() {
            let p = dir.join(digest_hex(&blob.digest));
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            assert!(bytes == blob.bytes, "bytes of {}", blob.digest);
        }
    }
}

/// Manifests (by tag and digest) and blobs over plain HTTP through `ferry`:
/// byte-identical to the upstream's.
fn assert_http_serves(ferry: &Ferry, repo: &str, tag: &str, top: &[u8], imgs: &[&PushedImage]) {
    block_on(async {
        let digest = crate::harness::sha256_digest(top);
        for reference in [tag, digest.as_str()] {
            let m = get(&manifest_url(ferry, repo, reference), &[]).await;
            assert_eq!(m.status, 200, "{repo}:{reference}: {}", m.text());
            assert!(m.body == top, "{repo}:{reference}: manifest bytes");
            assert_eq!(m.header("docker-content-digest"), digest);
        }
        for img in imgs {
            let m = get(&manifest_url(ferry, repo, &img.manifest_digest), &[]).await;
            assert_eq!(
                m.status,
                200,
                "{repo}@{}: {}",
                img.manifest_digest,
                m.text()
            );
            assert!(m.body == img.manifest);
            for blob in img.blobs() {
                let b = get(&blob_url(ferry, repo, &blob.digest), &[]).await;
                assert_eq!(b.status, 200, "blob {}", blob.digest);
                assert!(b.body == blob.bytes, "bytes of {}", blob.digest);
            }
        }
    });
}

/// Pulls the index's linux/amd64 image and its manifest over HTTP, so Ferry caches
/// one platform of two.
fn cache_one_platform(ferry: &Ferry, index: &PushedIndex) {
    let amd64 = &index.images[0];
    block_on(async {
        let m = get(
            &manifest_url(ferry, &index.repo, &index.tag),
            &[media::OCI_INDEX],
        )
        .await;
        assert_eq!(m.status, 200, "{}", m.text());
        let m = get(
            &manifest_url(ferry, &index.repo, &amd64.manifest_digest),
            &[media::OCI_MANIFEST],
        )
        .await;
        assert_eq!(m.status, 200, "{}", m.text());
        for blob in amd64.blobs() {
            let b = get(&blob_url(ferry, &index.repo, &blob.digest), &[]).await;
            assert_eq!(b.status, 200);
        }
    });
}

fn keypair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let prefix = dir.join(name);
    let out = ferry_ok(&["keygen", "--output", path(&prefix)]);
    assert!(out.contains(".key") && out.contains(".pub"), "{out}");
    (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.pub")),
    )
}

#[test]
fn air_gap_signed_export_imports_and_serves_offline() {
    let registry = Registry::start(RegistryAuth::None);
    let img = push_image(&registry, "team/app", "v1", &[1 << 20, 200_000]);
    let multi = push_index(&registry, "team/multi", "v1", &[300_000]);
    let partial = push_index(&registry, "team/partial", "v1", &[100_000]);
    let mut near = FerryBuilder::new()
        .upstream(Upstream::local(&registry.url()))
        .start();
    pull_through(&near, "team/app:v1", false);
    pull_through(&near, "team/multi:v1", true);
    cache_one_platform(&near, &partial);

    let work = temp_dir("bundle");
    let (key, public) = keypair(work.path(), "site");
    let bundle = work.path().join("site.tar");
    let near_config = near.config_path().to_owned();
    let export = [
        "export",
        "--config",
        path(&near_config),
        "--output",
        path(&bundle),
        "--sign",
        path(&key),
        // By registry, by upstream short name, and by digest.
        &format!("{LOCAL_REGISTRY}/team/app:v1"),
        "local/team/multi:v1",
        &format!("{LOCAL_REGISTRY}/team/partial@{}", partial.digest),
    ];
    // While Ferry serves the store, export refuses cleanly.
    ferry_refused(&export, &["stop `ferry serve`"]);
    assert!(!bundle.exists(), "no bundle from a refused export");
    assert!(near.terminate());
    let out = ferry_ok(&export);
    assert!(
        out.contains(&format!("exported {LOCAL_REGISTRY}/team/multi:v1"))
            && out.contains("2 of 2 platforms")
            && out.contains("1 of 2 platforms")
            && out.contains(&partial.images[1].manifest_digest)
            && out.contains("signed by key"),
        "{out}"
    );
    assert!(
        !tar_names(&bundle).contains(&format!(
            "blobs/sha256/{}",
            digest_hex(&partial.images[1].manifest_digest)
        )),
        "the uncached platform is not in the bundle"
    );

    let mut far = far_site();
    let far_config = far.config_path().to_owned();
    let import = [
        "import",
        "--config",
        path(&far_config),
        "--trust",
        path(&public),
        path(&bundle),
    ];
    let out = ferry_ok(&import);
    assert!(
        out.contains("signature verified")
            && out.contains(&format!(
                "loaded {LOCAL_REGISTRY}/team/app:v1 {}",
                img.manifest_digest
            ))
            && out.contains(&format!(
                "loaded {LOCAL_REGISTRY}/team/multi:v1 {}",
                multi.digest
            ))
            && out.contains("as local/team/multi")
            && out.contains(&format!(
                "not in the bundle: linux/arm64 {}",
                partial.images[1].manifest_digest
            )),
        "{out}"
    );
    far.restart();

    // Importing while it serves is refused, not a panic or a corrupt store.
    ferry_refused(&import, &["stop `ferry serve`"]);

    let multi_imgs: Vec<&PushedImage> = multi.images.iter().collect();
    assert_http_serves(&far, "team/app", "v1", &img.manifest, &[&img]);
    assert_http_serves(&far, "team/multi", "v1", &multi.bytes, &multi_imgs);
    assert_skopeo_pulls(&far, "team/app:v1", &img.manifest, &[&img]);
    assert_skopeo_pulls(&far, "team/multi:v1", &multi.bytes, &multi_imgs);
    // The partial index by digest; its cached platform by digest.
    assert_http_serves(
        &far,
        "team/partial",
        &partial.digest,
        &partial.bytes,
        &[&partial.images[0]],
    );

    // A node pulls through hosts.toml, as a kubelet's containerd would.
    let ctd = Containerd::start();
    let hosts = ctd.hosts_dir();
    ctd.write_hosts_toml(
        &hosts,
        LOCAL_REGISTRY,
        &mirror_hosts_toml(&format!("http://{LOCAL_REGISTRY}"), &far.url()),
    );
    for (reference, img) in [
        (format!("{LOCAL_REGISTRY}/team/app:v1"), &img),
        (format!("{LOCAL_REGISTRY}/team/multi:v1"), &multi.images[0]),
    ] {
        let out = ctd.pull(&hosts, &reference, &[]);
        assert!(
            out.status.success(),
            "ctr pull {reference}: {}\n{}\n--- ferry log ---\n{}",
            String::from_utf8_lossy(&out.stderr),
            ctd.log_tails(20),
            tail_str(&far.log(), 40)
        );
        assert!(ctd.content(&img.manifest_digest) == img.manifest);
        for blob in img.blobs() {
            assert!(
                ctd.content(&blob.digest) == blob.bytes,
                "ctr: bytes of {}",
                blob.digest
            );
        }
    }
    far.assert_running();
}

#[test]
fn skopeo_reads_ferry_bundles_and_ferry_imports_skopeo_archives() {
    let registry = Registry::start(RegistryAuth::None);
    let img = push_image(&registry, "team/app", "v1", &[400_000, 1000]);
    let multi = push_index(&registry, "team/multi", "v1", &[200_000]);
    let mut near = FerryBuilder::new()
        .upstream(Upstream::local(&registry.url()))
        .start();
    pull_through(&near, "team/app:v1", false);
    pull_through(&near, "team/multi:v1", true);
    assert!(near.terminate());

    // skopeo reads Ferry's (unsigned) bundle by the full name it records.
    let work = temp_dir("bundle");
    let bundle = work.path().join("site.tar");
    ferry_ok(&[
        "export",
        "--config",
        path(near.config_path()),
        "--output",
        path(&bundle),
        &format!("{LOCAL_REGISTRY}/team/app:v1"),
        &format!("{LOCAL_REGISTRY}/team/multi:v1"),
    ]);
    let out = temp_dir("from-bundle");
    skopeo_copy(
        &format!(
            "oci-archive:{}:{LOCAL_REGISTRY}/team/app:v1",
            bundle.display()
        ),
        &format!("dir:{}", out.path().display()),
        false,
    );
    assert!(std::fs::read(out.path().join("manifest.json")).unwrap() == img.manifest);
    assert_dir_has(out.path(), &[&img]);
    let out = temp_dir("from-bundle");
    skopeo_copy(
        &format!(
            "oci-archive:{}:{LOCAL_REGISTRY}/team/multi:v1",
            bundle.display()
        ),
        &format!("dir:{}", out.path().display()),
        true,
    );
    assert!(std::fs::read(out.path().join("manifest.json")).unwrap() == multi.bytes);
    assert_dir_has(out.path(), &multi.images.iter().collect::<Vec<_>>());

    // skopeo's own archives: one named in full, one by tag only (needs --name).
    let full = work.path().join("full.tar");
    skopeo_copy(
        &format!("docker://{}/team/app:v1", registry.addr()),
        &format!(
            "oci-archive:{}:{LOCAL_REGISTRY}/team/app:v1",
            full.display()
        ),
        false,
    );
    let tagged = work.path().join("tagged.tar");
    skopeo_copy(
        &format!("docker://{}/team/multi:v1", registry.addr()),
        &format!("oci-archive:{}:v2", tagged.display()),
        true,
    );
    let mut far = far_site();
    let config = path(far.config_path()).to_owned();
    ferry_ok(&["import", "--config", &config, path(&full)]);
    ferry_refused(
        &["import", "--config", &config, path(&tagged)],
        &["`v2`", "--name"],
    );
    let out = ferry_ok(&[
        "import",
        "--config",
        &config,
        "--name",
        &format!("{LOCAL_REGISTRY}/team/copied"),
        path(&tagged),
    ]);
    assert!(
        out.contains(&format!("loaded {LOCAL_REGISTRY}/team/copied:v2")),
        "{out}"
    );
    // An unpacked layout directory too (skopeo's `oci:` writes one).
    let dir = temp_dir("layout");
    skopeo_copy(
        &format!("docker://{}/team/app:v1", registry.addr()),
        &format!(
            "oci:{}:{LOCAL_REGISTRY}/team/fromdir:v3",
            dir.path().display()
        ),
        false,
    );
    ferry_ok(&[
        "import",
        "--config",
        &config,
        "--from-dir",
        path(dir.path()),
    ]);
    far.restart();

    assert_http_serves(&far, "team/app", "v1", &img.manifest, &[&img]);
    assert_skopeo_pulls(&far, "team/app:v1", &img.manifest, &[&img]);
    let multi_imgs: Vec<&PushedImage> = multi.images.iter().collect();
    assert_http_serves(&far, "team/copied", "v2", &multi.bytes, &multi_imgs);
    assert_skopeo_pulls(&far, "team/copied:v2", &multi.bytes, &multi_imgs);
    assert_http_serves(&far, "team/fromdir", "v3", &img.manifest, &[&img]);
}

#[test]
fn refuses_unsigned_wrongly_signed_and_corrupt_bundles() {
    let registry = Registry::start(RegistryAuth::None);
    let img = push_image(&registry, "team/app", "v1", &[300_000, 50_000]);
    let mut near = FerryBuilder::new()
        .upstream(Upstream::local(&registry.url()))
        .start();
    pull_through(&near, "team/app:v1", false);
    assert!(near.terminate());
    let config = path(near.config_path()).to_owned();
    let work = temp_dir("bundle");
    let (key, public) = keypair(work.path(), "site");
    let (_, other_public) = keypair(work.path(), "other");
    let export = |out: &Path, sign: Option<&Path>| {
        let mut args = vec!["export", "--config", &config, "--output", path(out)];
        if let Some(k) = sign {
            args.extend(["--sign", path(k)]);
        }
        let image = format!("{LOCAL_REGISTRY}/team/app:v1");
        args.push(&image);
        ferry_ok(&args);
    };
    let unsigned = work.path().join("unsigned.tar");
    export(&unsigned, None);
    let signed = work.path().join("signed.tar");
    export(&signed, Some(&key));

    let mut far = far_site();
    let far_config = path(far.config_path()).to_owned();
    ferry_refused(
        &[
            "import",
            "--config",
            &far_config,
            "--trust",
            path(&public),
            path(&unsigned),
        ],
        &["not signed"],
    );
    ferry_refused(
        &[
            "import",
            "--config",
            &far_config,
            "--trust",
            path(&other_public),
            path(&signed),
        ],
        &["not signed by the trusted key"],
    );

    // One flipped byte in the middle of the largest layer.
    let layer = img.largest_layer();
    let corrupt = work.path().join("corrupt.tar");
    std::fs::copy(&signed, &corrupt).unwrap();
    let offset = blob_offset(&corrupt, &layer.digest) + layer.size / 2;
    let mut bytes = std::fs::read(&corrupt).unwrap();
    bytes[offset as usize] ^= 0x01;
    std::fs::write(&corrupt, bytes).unwrap();
    ferry_refused(
        &[
            "import",
            "--config",
            &far_config,
            "--trust",
            path(&public),
            path(&corrupt),
        ],
        &[&layer.digest, "corrupt"],
    );

    // Nothing of it is visible: not the tag, not the manifest, not the blob.
    far.restart();
    block_on(async {
        let m = get(&manifest_url(&far, "team/app", "v1"), &[]).await;
        assert!(
            matches!(m.status.as_u16(), 404 | 503),
            "tag of a refused bundle: {} {}",
            m.status,
            m.text()
        );
        let m = get(&manifest_url(&far, "team/app", &img.manifest_digest), &[]).await;
        assert!(
            matches!(m.status.as_u16(), 404 | 503),
            "manifest: {}",
            m.status
        );
        let b = get(&blob_url(&far, "team/app", &img.config.digest), &[]).await;
        assert!(matches!(b.status.as_u16(), 404 | 503), "blob: {}", b.status);
    });
    assert!(far.terminate());

    // The intact bundle still imports into that store.
    ferry_ok(&[
        "import",
        "--config",
        &far_config,
        "--trust",
        path(&public),
        path(&signed),
    ]);
    far.restart();
    assert_http_serves(&far, "team/app", "v1", &img.manifest, &[&img]);
}

#[test]
fn since_bundle_is_smaller_and_completes_an_earlier_one() {
    let registry = Registry::start(RegistryAuth::None);
    let v1 = push_image(&registry, "team/app", "v1", &[600_000, 100_000]);
    let mut near = FerryBuilder::new()
        .upstream(Upstream::local(&registry.url()))
        .start();
    pull_through(&near, "team/app:v1", false);
    // Blob times are file times, to the nanosecond; whole seconds on the command line.
    std::thread::sleep(Duration::from_millis(1100));
    let between = utc_now();
    std::thread::sleep(Duration::from_millis(1100));
    let v2 = push_image(&registry, "team/app", "v2", &[500_000]);
    pull_through(&near, "team/app:v2", false);
    assert!(near.terminate());

    let config = path(near.config_path()).to_owned();
    let work = temp_dir("bundle");
    let export = |out: &Path, since: Option<&str>, images: &[&str]| -> String {
        let mut args = vec!["export", "--config", &config, "--output", path(out)];
        if let Some(s) = since {
            args.extend(["--since", s]);
        }
        let images: Vec<String> = images
            .iter()
            .map(|i| format!("{LOCAL_REGISTRY}/{i}"))
            .collect();
        args.extend(images.iter().map(String::as_str));
        ferry_ok(&args)
    };
    let first = work.path().join("first.tar");
    export(&first, None, &["team/app:v1"]);
    let full = work.path().join("full.tar");
    export(&full, None, &["team/app:v1", "team/app:v2"]);
    let delta = work.path().join("delta.tar");
    let out = export(&delta, Some(path(&first)), &["team/app:v1", "team/app:v2"]);
    assert!(out.contains("left out by --since"), "{out}");
    let by_time = work.path().join("by-time.tar");
    export(&by_time, Some(&between), &["team/app:v1", "team/app:v2"]);

    let size = |p: &Path| std::fs::metadata(p).unwrap().len();
    assert!(
        size(&delta) + 600_000 < size(&full),
        "delta {} vs full {}",
        size(&delta),
        size(&full)
    );
    for bundle in [&delta, &by_time] {
        let names = tar_names(bundle);
        for blob in v1.blobs() {
            assert!(!names.contains(&format!("blobs/sha256/{}", digest_hex(&blob.digest))));
        }
        for blob in v2.blobs() {
            assert!(names.contains(&format!("blobs/sha256/{}", digest_hex(&blob.digest))));
        }
        // Manifests always travel: the importer checks every image whole.
        assert!(names.contains(&format!("blobs/sha256/{}", digest_hex(&v1.manifest_digest))));
    }

    // Alone, the delta is refused: v1's layers are nowhere.
    let mut alone = far_site();
    ferry_refused(
        &[
            "import",
            "--config",
            path(alone.config_path()),
            path(&delta),
        ],
        &["neither in the bundle nor in the store", "--since"],
    );
    alone.restart();
    block_on(async {
        let m = get(&manifest_url(&alone, "team/app", "v2"), &[]).await;
        assert!(
            matches!(m.status.as_u16(), 404 | 503),
            "nothing tagged: {}",
            m.status
        );
    });

    // On top of the first bundle it completes both images.
    let mut far = far_site();
    let far_config = path(far.config_path()).to_owned();
    ferry_ok(&["import", "--config", &far_config, path(&first)]);
    let out = ferry_ok(&["import", "--config", &far_config, path(&delta)]);
    assert!(
        out.contains(&format!("loaded {LOCAL_REGISTRY}/team/app:v2")),
        "{out}"
    );
    far.restart();
    assert_http_serves(&far, "team/app", "v1", &v1.manifest, &[&v1]);
    assert_http_serves(&far, "team/app", "v2", &v2.manifest, &[&v2]);
    assert_skopeo_pulls(&far, "team/app:v2", &v2.manifest, &[&v2]);
}

/// The entry names in a tar.
fn tar_names(p: &Path) -> Vec<String> {
    let mut archive = tar::Archive::new(std::fs::File::open(p).unwrap());
    archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// Where blob `digest`'s bytes start in the tar at `p`.
fn blob_offset(p: &Path, digest: &str) -> u64 {
    let name = format!("blobs/sha256/{}", digest_hex(digest));
    let mut archive = tar::Archive::new(std::fs::File::open(p).unwrap());
    for e in archive.entries().unwrap() {
        let e = e.unwrap();
        if e.path().unwrap().to_string_lossy() == name {
            return e.raw_file_position();
        }
    }
    panic!("{name} not in {}", p.display());
}

/// The current time as an RFC 3339 UTC timestamp (whole seconds, rounded down).
fn utc_now() -> String {
    let out = run_ok(
        {
            let mut c = Command::new("date");
            c.args(["-u", "+%Y-%m-%dT%H:%M:%SZ"]);
            c
        },
        Duration::from_secs(10),
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
