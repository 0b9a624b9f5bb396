//! containerd pulling through Ferry the way a Kubernetes node does: `hosts.toml` makes
//! Ferry the mirror of an unresolvable registry host, so every request carries
//! `?ns=registry.ferry-test.invalid` and only Ferry can answer it.

use crate::harness::containerd::{Containerd, mirror_hosts_toml};
use crate::harness::ferry::{Ferry, FerryBuilder, LOCAL_REGISTRY, Upstream};
use crate::harness::images::{PushedImage, push_image, push_index};
use crate::harness::registry::{Registry, RegistryAuth};
use crate::support::local_setup;

/// A containerd whose hosts dir sends `registry.ferry-test.invalid` to Ferry.
fn node(ferry: &Ferry) -> (Containerd, std::path::PathBuf) {
    let ctd = Containerd::start();
    let hosts = ctd.hosts_dir();
    ctd.write_hosts_toml(
        &hosts,
        LOCAL_REGISTRY,
        &mirror_hosts_toml(&format!("http://{LOCAL_REGISTRY}"), &ferry.url()),
    );
    (ctd, hosts)
}

fn pull_ok(ctd: &Containerd, hosts: &std::path::Path, ferry: &Ferry, reference: &str) {
    let out = ctd.pull(hosts, reference, &[]);
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
            ctd.has_content(&blob.digest),
            "containerd has no {} ({})",
            blob.digest,
            blob.media_type
        );
        assert!(
            ctd.content(&blob.digest) == blob.bytes,
            "bytes of {}",
            blob.digest
        );
    }
}

fn blob_gets(registry: &Registry, img: &PushedImage) -> Vec<usize> {
    let log = registry.settled_access_log();
    img.blobs()
        .iter()
        .map(|b| {
            let path = format!("/blobs/{}", b.digest);
            log.iter()
                .filter(|e| e.method == "GET" && e.path.contains(&path))
                .count()
        })
        .collect()
}

#[test]
fn ctr_pulls_through_hosts_toml_mirror() {
    let (registry, ferry) = local_setup();
    let img = push_image(&registry, "team/app", "v1", &[1 << 20, 200_000]);
    let index = push_index(&registry, "team/multi", "v1", &[300_000]);
    let amd64 = &index.images[0];
    assert_eq!(amd64.platform.1, "amd64");

    let (ctd, hosts) = node(&ferry);
    pull_ok(
        &ctd,
        &hosts,
        &ferry,
        &format!("{LOCAL_REGISTRY}/team/app:v1"),
    );
    assert_content(&ctd, &img);
    assert_eq!(
        blob_gets(&registry, &img),
        vec![1; img.blobs().len()],
        "Distribution saw each blob GET once"
    );
    assert!(
        ctd.image_names()
            .contains(&format!("{LOCAL_REGISTRY}/team/app:v1")),
        "image registered: {:?}",
        ctd.image_names()
    );

    // A multi-platform index resolves to this node's platform (linux/amd64).
    pull_ok(
        &ctd,
        &hosts,
        &ferry,
        &format!("{LOCAL_REGISTRY}/team/multi:v1"),
    );
    assert_content(&ctd, amd64);
    assert_eq!(blob_gets(&registry, amd64), vec![1; amd64.blobs().len()]);

    // Another node pulls the same images: all from Ferry's cache.
    let (second, second_hosts) = node(&ferry);
    pull_ok(
        &second,
        &second_hosts,
        &ferry,
        &format!("{LOCAL_REGISTRY}/team/app:v1"),
    );
    pull_ok(
        &second,
        &second_hosts,
        &ferry,
        &format!("{LOCAL_REGISTRY}/team/multi:v1"),
    );
    assert_content(&second, &img);
    assert_content(&second, amd64);
    assert_eq!(
        blob_gets(&registry, &img),
        vec![1; img.blobs().len()],
        "second node served from cache"
    );
    assert_eq!(blob_gets(&registry, amd64), vec![1; amd64.blobs().len()]);
}

/// A registry host with a port: containerd looks up `<host>:<port>/hosts.toml` and
/// sends `?ns=<host>%3A<port>`.
#[test]
fn ctr_pulls_a_registry_with_a_port() {
    const HOST: &str = "ported.ferry-test.invalid:5000";
    let registry = Registry::start(RegistryAuth::None);
    let img = push_image(&registry, "team/app", "v1", &[300_000]);
    let ferry = FerryBuilder::new()
        .upstream(Upstream::local(&registry.url()))
        .upstream(Upstream::new("ported", HOST, &registry.url()))
        .start();
    let ctd = Containerd::start();
    let hosts = ctd.hosts_dir();
    ctd.write_hosts_toml(
        &hosts,
        HOST,
        &mirror_hosts_toml(&format!("http://{HOST}"), &ferry.url()),
    );
    pull_ok(&ctd, &hosts, &ferry, &format!("{HOST}/team/app:v1"));
    assert_content(&ctd, &img);
    assert_eq!(blob_gets(&registry, &img), vec![1; img.blobs().len()]);
}
