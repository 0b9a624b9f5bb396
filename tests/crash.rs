//! Crash safety: Ferry is killed (SIGKILL) at a random moment while clients pull
//! several images through it at once, round after round. After every crash it must
//! start again; once stopped, `ferry fsck` must find its store clean; and a full pull
//! through it must give byte-identical images, with everything verified in earlier
//! rounds still served from the store.
//!
//! Every round pushes fresh images, so the kill lands on cold fetches (staging,
//! resumable partial downloads, fsync, rename, index flush), into a store that carries
//! the crashes of the rounds before; a fresh store takes over every
//! [`ROUNDS_PER_STORE`] rounds so that fsck's re-hashing stays bounded. Every
//! [`AIM_EVERY`]th kill is aimed at the moment a download is on disk unfinished, and the
//! test requires at least one kill to have landed there.
//!
//! A store fsck does not find clean is recorded (naming what each digest is), repaired
//! with `ferry fsck --repair`, and the run goes on: the test fails at the end with every
//! such round. Anything a client gets wrong fails it at once.
//!
//! 20 rounds by default, to keep CI quick; run more with the env var:
//! `FERRY_CRASH_ROUNDS=500 cargo test --test integration crash -j 1 -- --nocapture`.
//! Each run prints its random seed; `FERRY_CRASH_SEED=<seed>` replays its kill delays.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

use crate::harness::ferry::{Ferry, FerryBuilder, LOCAL, Upstream};
use crate::harness::http::{client, media};
use crate::harness::images::{PushedImage, push_image_http};
use crate::harness::process::tail_str;
use crate::harness::registry::{Registry, RegistryAuth};
use crate::harness::sha256_digest;
use crate::support::{assert_fsck_clean, ferry_cli, files_under, get};

const DEFAULT_ROUNDS: usize = 20;
const IMAGES_PER_ROUND: usize = 3;
/// Clients pulling each image at the same time (the second joins the first's fetch).
const CLIENTS_PER_IMAGE: usize = 2;
/// About 2.5 MiB per image.
const LAYERS: &[usize] = &[1 << 20, 768 << 10, 512 << 10, 256 << 10];
const ROUNDS_PER_STORE: usize = 10;
/// Every this many rounds the kill is aimed at a download being written to the store
/// rather than at a random moment, so that such kills happen in every run.
const AIM_EVERY: usize = 2;
/// An aimed kill waits for this many bytes of unfinished downloads in the store: a
/// layer being written (a manifest or config is staged and renamed in a moment).
const AIM_BYTES: u64 = 64 << 10;
/// How long an aimed kill waits for them.
const AIM_WAIT: Duration = Duration::from_secs(10);

/// What the clients saw around a kill.
#[derive(Default)]
struct Watch {
    /// Requests sent whose body has not ended yet.
    in_flight: AtomicUsize,
    /// Body bytes received.
    bytes: AtomicU64,
    /// Requests answered 200 with the whole, right body.
    complete: AtomicUsize,
    /// Set just before the SIGKILL: a failure seen while it is unset is Ferry's own.
    killed: AtomicBool,
    /// What must never happen: a complete body that is not the expected bytes, or any
    /// failure from a Ferry that was not being killed.
    violations: Mutex<Vec<String>>,
    /// Requests in flight: id → (URL, body bytes so far), for a pull that never ends.
    pending: Mutex<std::collections::HashMap<usize, (String, usize)>>,
    next_id: AtomicUsize,
}

impl Watch {
    fn violation(&self, what: String) {
        self.violations.lock().unwrap().push(what);
    }

    fn killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }
}

/// One request in flight, counted until dropped.
struct InFlight<'a> {
    watch: &'a Watch,
    id: usize,
}

impl<'a> InFlight<'a> {
    fn new(watch: &'a Watch, url: &str) -> InFlight<'a> {
        let id = watch.next_id.fetch_add(1, Ordering::SeqCst);
        watch
            .pending
            .lock()
            .unwrap()
            .insert(id, (url.to_owned(), 0));
        watch.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight { watch, id }
    }

    fn received(&self, total: usize) {
        if let Some(p) = self.watch.pending.lock().unwrap().get_mut(&self.id) {
            p.1 = total;
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.watch.pending.lock().unwrap().remove(&self.id);
        self.watch.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// GETs `url`. A complete 200 body must be exactly `expected`. Returns the X-Cache of a
/// complete, right answer; `None` for anything else (a violation unless Ferry was
/// being killed).
async fn fetch(
    http: &reqwest::Client,
    url: &str,
    accept: Option<&str>,
    expected: &[u8],
    watch: &Watch,
) -> Option<String> {
    let in_flight = InFlight::new(watch, url);
    let mut req = http.get(url);
    if let Some(a) = accept {
        req = req.header(reqwest::header::ACCEPT, a);
    }
    let mut resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            if !watch.killed() {
                watch.violation(format!("GET {url}: no answer from a running Ferry: {e}"));
            }
            return None;
        }
    };
    let status = resp.status();
    let x_cache = crate::harness::http::header(&resp, "x-cache").to_owned();
    let mut body = Vec::with_capacity(expected.len());
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => {
                watch.bytes.fetch_add(c.len() as u64, Ordering::SeqCst);
                body.extend_from_slice(&c);
                in_flight.received(body.len());
            }
            Ok(None) => break,
            Err(e) => {
                if !watch.killed() {
                    watch.violation(format!(
                        "GET {url}: {status}, body cut after {} bytes by a running Ferry: {e}",
                        body.len()
                    ));
                }
                return None;
            }
        }
    }
    if status != 200 {
        if !watch.killed() {
            watch.violation(format!(
                "GET {url}: {status} from a running Ferry: {}",
                String::from_utf8_lossy(&body[..body.len().min(500)])
            ));
        }
        return None;
    }
    if body != expected {
        watch.violation(format!(
            "GET {url}: a complete 200 body that is not the image's bytes: {} bytes, {} \
             (expected {} bytes, {}), X-Cache {x_cache}",
            body.len(),
            sha256_digest(&body),
            expected.len(),
            sha256_digest(expected)
        ));
        return None;
    }
    watch.complete.fetch_add(1, Ordering::SeqCst);
    Some(x_cache)
}

/// Pulls `img` as a client does: the manifest (by tag, or by digest), then config and
/// layers at once. Returns the X-Cache of each request that got the right bytes.
async fn pull(
    http: reqwest::Client,
    ferry_url: String,
    img: Arc<PushedImage>,
    by_digest: bool,
    watch: Arc<Watch>,
) -> Vec<Option<String>> {
    let base = format!("{ferry_url}/v2/{LOCAL}/{}", img.repo);
    let reference = if by_digest {
        &img.manifest_digest
    } else {
        &img.tag
    };
    let manifest = fetch(
        &http,
        &format!("{base}/manifests/{reference}"),
        Some(media::OCI_MANIFEST),
        &img.manifest,
        &watch,
    )
    .await;
    let blobs = futures_util::future::join_all(img.blobs().into_iter().map(|b| {
        let url = format!("{base}/blobs/{}", b.digest);
        let (http, watch) = (&http, &watch);
        async move { fetch(http, &url, None, &b.bytes, watch).await }
    }))
    .await;
    std::iter::once(manifest).chain(blobs).collect()
}

/// Starts `clients` concurrent pulls of every image.
fn spawn_pulls(
    rt: &tokio::runtime::Runtime,
    http: &reqwest::Client,
    ferry: &Ferry,
    images: &[Arc<PushedImage>],
    clients: usize,
    by_digest: bool,
    watch: &Arc<Watch>,
) -> Vec<tokio::task::JoinHandle<Vec<Option<String>>>> {
    let mut tasks = Vec::new();
    for _ in 0..clients {
        for img in images {
            tasks.push(rt.spawn(pull(
                http.clone(),
                ferry.url(),
                img.clone(),
                by_digest,
                watch.clone(),
            )));
        }
    }
    tasks
}

/// Waits (≤ 60 s) for the pulls; returns their results. Panics naming the requests
/// still in flight if they do not finish.
fn join(
    rt: &tokio::runtime::Runtime,
    tasks: Vec<tokio::task::JoinHandle<Vec<Option<String>>>>,
    watch: &Watch,
    ferry: &Ferry,
    what: &str,
) -> Vec<Vec<Option<String>>> {
    let joined = rt.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(60),
            futures_util::future::join_all(tasks),
        )
        .await
    });
    match joined {
        Ok(results) => results.into_iter().map(|r| r.expect("pull task")).collect(),
        Err(_) => {
            let mut pending: Vec<String> = watch
                .pending
                .lock()
                .unwrap()
                .values()
                .map(|(url, got)| format!("{url} ({got} bytes received)"))
                .collect();
            pending.sort();
            panic!(
                "{what}: pulls not finished after 60 s; {} requests still in flight:\n  {}\n\
                 --- ferry log (tail) ---\n{}",
                pending.len(),
                pending.join("\n  "),
                tail_str(&ferry.log(), 40)
            )
        }
    }
}

fn assert_no_violations(watch: &Watch, ferry: &Ferry, what: &str) {
    let v = watch.violations.lock().unwrap();
    if !v.is_empty() {
        panic!(
            "{what}:\n  {}\n--- ferry log (tail) ---\n{}",
            v.join("\n  "),
            tail_str(&ferry.log(), 60)
        );
    }
}

/// Downloads Ferry has on disk, unfinished (files under `staging/` and `partial/`), and
/// the bytes written to them so far.
fn unfinished_downloads(ferry: &Ferry) -> (usize, u64) {
    let files: Vec<_> = ["staging", "partial"]
        .iter()
        .flat_map(|d| files_under(&ferry.storage_root().join(d)))
        .collect();
    let bytes = files
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    (files.len(), bytes)
}

/// What `digest` is among `images` (for fsck findings), with its size in the store.
fn describe_digest(ferry: &Ferry, images: &[&Arc<PushedImage>], digest: &str) -> String {
    let what = images.iter().find_map(|img| {
        if img.manifest_digest == digest {
            return Some(format!("the manifest of {}", img.repo));
        }
        if img.config.digest == digest {
            return Some(format!("the config of {}", img.repo));
        }
        img.layers
            .iter()
            .position(|l| l.digest == digest)
            .map(|i| format!("layer {i} of {}", img.repo))
    });
    let hex = crate::harness::digest_hex(digest);
    let path = ferry
        .storage_root()
        .join("blobs/sha256")
        .join(&hex[..2])
        .join(hex);
    let on_disk = match std::fs::metadata(&path) {
        Ok(m) => format!("{} bytes in blobs/", m.len()),
        Err(_) => "not in blobs/".to_owned(),
    };
    format!(
        "{} ({on_disk})",
        what.unwrap_or_else(|| "unknown".to_owned())
    )
}

/// `ferry fsck` of the stopped Ferry after a crash. Problems are kept in `findings`
/// (with what each digest is) and repaired with `fsck --repair`, so the run goes on and
/// the test fails at the end with every finding, not only the first.
fn fsck_after_crash(
    ferry: &Ferry,
    what: &str,
    images: &[&Arc<PushedImage>],
    findings: &mut Vec<String>,
) {
    let (out, text) = ferry_cli(ferry, &["fsck"]);
    if out.status.success() && text.contains("0 problem(s)") {
        return;
    }
    let report: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("checked") || l.starts_with("  "))
        .map(|l| match l.trim().strip_prefix("sha256:") {
            Some(_) => format!("{l}: {}", describe_digest(ferry, images, l.trim())),
            None => l.to_owned(),
        })
        .collect();
    findings.push(format!(
        "{what}: `ferry fsck` exited {} after the restart:\n    {}",
        out.status,
        report.join("\n    ")
    ));
    let (out, text) = ferry_cli(ferry, &["fsck", "--repair"]);
    assert!(
        out.status.success(),
        "{what}: `ferry fsck --repair` failed\n{text}"
    );
    assert_fsck_clean(ferry, &format!("{what}, after `ferry fsck --repair`"));
}

#[derive(Default, Debug)]
struct Stats {
    kills: usize,
    /// Some client request had been sent and its body had not ended.
    mid_transfer: usize,
    /// Ferry was writing downloads to the store when it died: unfinished ones on disk,
    /// with bytes in them.
    with_downloads_on_disk: usize,
    /// Every pull had finished before the kill.
    after_pulls: usize,
}

#[test]
fn sigkill_at_random_moments_during_concurrent_pulls_leaves_a_clean_store() {
    let rounds = match std::env::var("FERRY_CRASH_ROUNDS") {
        Ok(v) => v
            .parse::<usize>()
            .unwrap_or_else(|_| panic!("FERRY_CRASH_ROUNDS={v:?} is not a number")),
        Err(_) => DEFAULT_ROUNDS,
    };
    assert!(rounds >= 1, "FERRY_CRASH_ROUNDS must be at least 1");
    let seed = match std::env::var("FERRY_CRASH_SEED") {
        Ok(v) => v
            .parse::<u64>()
            .unwrap_or_else(|_| panic!("FERRY_CRASH_SEED={v:?} is not a number")),
        Err(_) => rand::random(),
    };
    eprintln!(
        "crash safety: {rounds} rounds (FERRY_CRASH_ROUNDS; default {DEFAULT_ROUNDS}, more with \
         the env var), seed {seed} (FERRY_CRASH_SEED replays it)"
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let http = client();
    let registry = Registry::start(RegistryAuth::None);

    let mut ferry: Option<Ferry> = None;
    // Images verified through the current store (all must stay served from it).
    let mut verified: Vec<Arc<PushedImage>> = Vec::new();
    let mut cold_pull: Option<Duration> = None;
    let mut stats = Stats::default();
    let mut findings: Vec<String> = Vec::new();
    let requests_per_round = IMAGES_PER_ROUND * CLIENTS_PER_IMAGE * (LAYERS.len() + 2);

    for round in 0..rounds {
        if round % ROUNDS_PER_STORE == 0 {
            // A fresh store (the old Ferry and its temp dir go away).
            drop(ferry.take());
            verified.clear();
            ferry = Some(
                FerryBuilder::new()
                    .upstream(Upstream::local(&registry.url()))
                    .start(),
            );
        }
        let ferry = ferry.as_mut().expect("ferry");

        if cold_pull.is_none() {
            // How long the concurrent pulls take when nothing goes wrong: the window
            // the kills are spread over. The quicker of two cold pulls (the first of a
            // new process is slower).
            let mut best = Duration::MAX;
            for c in 0..2 {
                let images: Vec<Arc<PushedImage>> = (0..IMAGES_PER_ROUND)
                    .map(|i| {
                        Arc::new(push_image_http(
                            &registry,
                            &format!("crash/calibration{c}-{i}"),
                            "v1",
                            LAYERS,
                        ))
                    })
                    .collect();
                let watch = Arc::new(Watch::default());
                let t = Instant::now();
                let tasks =
                    spawn_pulls(&rt, &http, ferry, &images, CLIENTS_PER_IMAGE, false, &watch);
                join(&rt, tasks, &watch, ferry, "calibration pull");
                best = best.min(t.elapsed());
                assert_no_violations(&watch, ferry, "calibration pull (no kill)");
                assert_eq!(
                    watch.complete.load(Ordering::SeqCst),
                    requests_per_round,
                    "calibration pull: every request complete"
                );
                verified.extend(images);
            }
            eprintln!(
                "crash safety: a cold concurrent pull of {IMAGES_PER_ROUND} images × \
                 {CLIENTS_PER_IMAGE} clients takes {best:?}; kills are spread over it"
            );
            cold_pull = Some(best.max(Duration::from_millis(20)));
        }
        let window = cold_pull.expect("calibrated");

        let images: Vec<Arc<PushedImage>> = (0..IMAGES_PER_ROUND)
            .map(|i| {
                Arc::new(push_image_http(
                    &registry,
                    &format!("crash/r{round}-img{i}"),
                    "v1",
                    LAYERS,
                ))
            })
            .collect();

        // Pull, and SIGKILL at a random moment of it.
        let watch = Arc::new(Watch::default());
        let tasks = spawn_pulls(&rt, &http, ferry, &images, CLIENTS_PER_IMAGE, false, &watch);
        let pulls_started = Instant::now();
        let delay = if round % AIM_EVERY == AIM_EVERY - 1 {
            // Aimed: the moment a layer is being written in the store (staging/ or
            // partial/), which random delays may all miss.
            let give_up = pulls_started + AIM_WAIT;
            while unfinished_downloads(ferry).1 < AIM_BYTES && Instant::now() < give_up {
                std::thread::sleep(Duration::from_micros(200));
            }
            pulls_started.elapsed()
        } else {
            let delay = Duration::from_micros(rng.random_range(0..=window.as_micros() as u64));
            std::thread::sleep(delay);
            delay
        };
        watch.killed.store(true, Ordering::SeqCst);
        let in_flight = watch.in_flight.load(Ordering::SeqCst);
        let received = watch.bytes.load(Ordering::SeqCst);
        ferry.stop();
        let (on_disk, on_disk_bytes) = unfinished_downloads(ferry);
        let what = format!("round {round}: SIGKILL {delay:?} into the pulls");
        join(&rt, tasks, &watch, ferry, &what);
        assert_no_violations(&watch, ferry, &what);
        stats.kills += 1;
        if in_flight > 0 {
            stats.mid_transfer += 1;
        }
        if on_disk_bytes > 0 {
            stats.with_downloads_on_disk += 1;
        }
        if in_flight == 0 && watch.complete.load(Ordering::SeqCst) == requests_per_round {
            stats.after_pulls += 1;
        }
        eprintln!(
            "round {round}: killed after {delay:?}: {in_flight} requests in flight, {} KiB \
             received, {} of {requests_per_round} complete, {on_disk} unfinished downloads on disk ({on_disk_bytes} bytes)",
            received >> 10,
            watch.complete.load(Ordering::SeqCst),
        );

        // It starts again (start_again panics with the log otherwise) and answers.
        ferry.start_again();
        let r = rt.block_on(get(&format!("{}/v2/", ferry.url()), &[]));
        assert_eq!(
            r.status,
            200,
            "{what}: /v2/ after the restart: {}",
            r.text()
        );
        ferry.assert_running();

        // Stopped, its store is clean.
        assert!(
            ferry.terminate(),
            "{what}: ferry did not exit on SIGTERM after restarting\n{}",
            tail_str(&ferry.log(), 40)
        );
        let known: Vec<&Arc<PushedImage>> = images.iter().chain(&verified).collect();
        fsck_after_crash(ferry, &what, &known, &mut findings);

        // Started again, a full pull is byte-identical; what earlier rounds verified is
        // still served from the store.
        ferry.start_again();
        let watch = Arc::new(Watch::default());
        let tasks = spawn_pulls(&rt, &http, ferry, &images, 1, false, &watch);
        let fresh = join(&rt, tasks, &watch, ferry, &format!("{what}: full pull"));
        let tasks = spawn_pulls(&rt, &http, ferry, &verified, 1, true, &watch);
        let earlier = join(
            &rt,
            tasks,
            &watch,
            ferry,
            &format!("{what}: pull of earlier rounds' images"),
        );
        assert_no_violations(&watch, ferry, &format!("{what}: full pull after restart"));
        assert!(
            fresh.iter().flatten().all(Option::is_some),
            "{what}: full pull after restart incomplete: {fresh:?}"
        );
        for (img, caches) in verified.iter().zip(&earlier) {
            assert!(
                caches.iter().all(|c| c.as_deref() == Some("HIT")),
                "{what}: {} (verified in an earlier round) is no longer served from the \
                 store: X-Cache {caches:?}\n{}",
                img.repo,
                tail_str(&ferry.log(), 40)
            );
        }
        // Distribution's copies of these blobs are no longer needed: dropping them keeps
        // long runs' disk use bounded (and proves later rounds never fetch them again).
        for img in &images {
            for blob in img.blobs() {
                let _ = std::fs::remove_file(registry.blob_path(&blob.digest));
            }
        }
        verified.extend(images);
    }

    let ferry = ferry.as_mut().expect("ferry");
    assert!(ferry.terminate(), "ferry exits on SIGTERM at the end");
    assert_fsck_clean(ferry, "after the last round");

    eprintln!(
        "crash safety: {rounds} rounds in {:?}: {} SIGKILLs, {} landed mid-transfer (client \
         requests in flight), {} with unfinished downloads on disk, {} after the pulls had \
         finished; kill delays 0..{:?}; seed {seed}",
        started.elapsed(),
        stats.kills,
        stats.mid_transfer,
        stats.with_downloads_on_disk,
        stats.after_pulls,
        cold_pull.unwrap_or_default(),
    );
    assert!(
        findings.is_empty(),
        "{} of {rounds} rounds left a store that `ferry fsck` does not find clean after \
         SIGKILL, restart and SIGTERM (each was repaired with `fsck --repair` to go on):\n{}",
        findings.len(),
        findings.join("\n")
    );
    if rounds >= 5 {
        assert!(
            stats.mid_transfer > 0,
            "no kill landed mid-transfer in {rounds} rounds: the test exercised nothing \
             ({stats:?})"
        );
    }
    if rounds >= AIM_EVERY {
        assert!(
            stats.with_downloads_on_disk > 0,
            "no kill in {rounds} rounds landed while a download was being written to the \
             store (staging/ or partial/), not even the aimed ones: the crash safety of \
             staging writes was not exercised ({stats:?})"
        );
    }
}
