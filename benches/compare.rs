//! Ferry side by side with the registries people deploy (issue 6): CNCF Distribution
//! in proxy mode, nginx serving the upstream's blob files with sendfile (the ceiling
//! for serving cached bytes), and a direct pull from the upstream, all on 127.0.0.1 in
//! the same run.
//!
//! ```sh
//! cargo bench --bench compare                                  # full size, 3 repetitions
//! FERRY_BENCH_SCALE=tiny FERRY_BENCH_REPS=1 cargo bench --bench compare   # smoke
//! ```
//!
//! Settings (environment):
//! - `FERRY_BENCH_SCALE`: `full` (default: "big" = 4 x 64 MiB layers, "many" = 40 x
//!   1 MiB, 1,000 HEADs), `small` (quarter sizes) or `tiny` (a smoke run).
//! - `FERRY_BENCH_REPS`: repetitions (default 3; 1 for `tiny`). Tables show the median
//!   and, separately, min .. max; the JSON has every sample.
//! - `FERRY_BENCH_PEERS`: a comma list of `ferry,distribution-proxy,nginx,direct`.
//! - `FERRY_BENCH_BINARY`: another `ferry` binary to measure (default: the release
//!   build `cargo bench` makes).
//!
//! Every scenario starts its peer afresh (a new, empty store) except `direct` (the
//! upstream itself) and nginx (no store: it reads the upstream's files). The load
//! generator is in this file: blocking sockets with 1 MiB reads, bodies discarded or
//! compared with the known bytes, so it costs much less than the servers. Server CPU is
//! utime + stime from `/proc/<pid>/stat` of the server's process tree; peak RSS is
//! `VmHWM` reset at the start of the phase (`clear_refs`), summed over the tree
//! (nginx's master and workers), with sampled `VmRSS` as a floor. Before each measured
//! phase the bench waits (at most 3 s) until the server and the upstream use no CPU, so
//! leftover background work is not billed to the next phase; the server's CPU while
//! idle is a figure of its own.
//!
//! Output: the tables on stdout, `target/bench/compare.json` (every sample) and
//! `target/bench/throughput.svg` (throughput and CPU per GB against parallelism);
//! `compare-tiny.json` and `throughput-tiny.svg` (or `-small`) at other scales.
//! Under `cargo test` (no `--bench` argument) it does nothing.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde_json::json;

use ferry_testkit::http::media;
use ferry_testkit::process::{self as kit_process, ChildGuard};
use ferry_testkit::registry::{AccessLog, Registry};
use support::http::{Conn, Verify};
use support::images::{self, Image};
use support::proc::{self, PeakRss};
use support::report::{self, Better, DIRECT, DIST, FERRY, NGINX, Results};
use support::servers::{
    Ferry, Nginx, RunDirs, StaticManifest, run_dir, start_proxy, start_upstream, sweep_stale_runs,
};

const MIB: usize = 1 << 20;
const KIB: usize = 1 << 10;
/// What containerd sends when resolving a tag.
const CONTAINERD_ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*";
const ALL_PEERS: [&str; 4] = [FERRY, DIST, NGINX, DIRECT];

/// Sizes and counts of one run.
#[derive(Clone, Debug)]
struct Scale {
    name: String,
    big_layers: usize,
    big_layer_size: usize,
    many_layers: usize,
    many_layer_size: usize,
    /// Parallel GETs of the warm blob, per level.
    levels: Vec<usize>,
    /// Each level moves at least this much (clients repeat their GET).
    min_bytes_per_level: u64,
    stampede_clients: usize,
    heads: usize,
    manifest_get_clients: usize,
    manifest_get_secs: f64,
    reps: usize,
}

impl Scale {
    fn from_env() -> Scale {
        let name = std::env::var("FERRY_BENCH_SCALE").unwrap_or_else(|_| "full".to_owned());
        let mut s = match name.as_str() {
            "full" => Scale {
                name,
                big_layers: 4,
                big_layer_size: 64 * MIB,
                many_layers: 40,
                many_layer_size: MIB,
                levels: vec![1, 8, 64],
                min_bytes_per_level: 1 << 30,
                stampede_clients: 50,
                heads: 1000,
                manifest_get_clients: 16,
                manifest_get_secs: 3.0,
                reps: 3,
            },
            "small" => Scale {
                name,
                big_layers: 4,
                big_layer_size: 16 * MIB,
                many_layers: 40,
                many_layer_size: 256 * KIB,
                levels: vec![1, 8, 64],
                min_bytes_per_level: 256 << 20,
                stampede_clients: 50,
                heads: 1000,
                manifest_get_clients: 16,
                manifest_get_secs: 1.0,
                reps: 3,
            },
            "tiny" => Scale {
                name,
                big_layers: 4,
                big_layer_size: 2 * MIB,
                many_layers: 10,
                many_layer_size: 64 * KIB,
                levels: vec![1, 8, 64],
                min_bytes_per_level: 16 << 20,
                stampede_clients: 50,
                heads: 200,
                manifest_get_clients: 16,
                manifest_get_secs: 0.3,
                reps: 1,
            },
            other => panic!("FERRY_BENCH_SCALE={other}: use full, small or tiny"),
        };
        if let Ok(r) = std::env::var("FERRY_BENCH_REPS") {
            s.reps = r
                .parse()
                .ok()
                .filter(|&r| r >= 1)
                .unwrap_or_else(|| panic!("FERRY_BENCH_REPS={r}: a number >= 1"));
        }
        s
    }
}

/// "64 MiB", "256 KiB".
fn size_label(bytes: usize) -> String {
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{} KiB", bytes / KIB)
    }
}

/// One peer, started for one scenario.
struct Server {
    peer: &'static str,
    addr: String,
    pid: u32,
    /// Distribution's proxy (to wait until it has stored what it fetched).
    dist: Option<Registry>,
    _ferry: Option<Ferry>,
    _nginx: Option<Nginx>,
}

impl Server {
    fn pids(&self) -> Vec<u32> {
        proc::process_tree(self.pid)
    }

    /// A proxy of the upstream (whose upstream traffic is worth counting).
    fn is_proxy(&self) -> bool {
        matches!(self.peer, FERRY | DIST)
    }
}

struct Bench {
    scale: Scale,
    peers: Vec<&'static str>,
    ferry_bin: PathBuf,
    upstream: Registry,
    up_log: AccessLog,
    big: Image,
    many: Image,
    /// The first layer of "big": the blob of the GET scenarios, and its bytes.
    blob_bytes: Arc<Vec<u8>>,
    blob_digest: String,
    pull_dir: tempfile::TempDir,
    pulls: usize,
    results: Results,
    /// Verification failures (bodies or pulls that were wrong): the run fails.
    failures: Vec<String>,
    /// Peers already reported as busy while idle.
    busy_noted: Vec<&'static str>,
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "compare: a benchmark; run it with `cargo bench --bench compare` (nothing to do under cargo test)"
        );
        return;
    }
    kit_process::install_signal_handlers();
    // Temp dirs of runs killed by a signal go now; this run's go when it ends.
    sweep_stale_runs();
    let _run_dirs = RunDirs::create();
    let scale = Scale::from_env();
    let peers: Vec<&'static str> = match std::env::var("FERRY_BENCH_PEERS") {
        Ok(list) => list
            .split(',')
            .map(|p| {
                *ALL_PEERS
                    .iter()
                    .find(|&&k| k == p.trim())
                    .unwrap_or_else(|| panic!("FERRY_BENCH_PEERS: unknown peer {p:?}"))
            })
            .collect(),
        Err(_) => ALL_PEERS.to_vec(),
    };
    ensure_tools();
    // The release binary `cargo bench` just built, unless another build is named.
    let ferry_bin = std::env::var_os("FERRY_BENCH_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_ferry")));
    assert!(
        ferry_bin.is_file(),
        "no Ferry binary at {}",
        ferry_bin.display()
    );
    let out_dir = target_dir().join("bench");
    std::fs::create_dir_all(&out_dir).expect("create target/bench");
    let started = Instant::now();
    let machine = machine_info(&ferry_bin);
    println!(
        "ferry bench: scale {}, {} repetition(s), peers {}\n{}",
        scale.name,
        scale.reps,
        peers.join(", "),
        serde_json::to_string(&machine).unwrap()
    );

    let upstream = start_upstream();
    let up_log = upstream.access_log_reader();
    println!(
        "pushing big ({} x {}) and many ({} x {}) to the upstream at {}",
        scale.big_layers,
        size_label(scale.big_layer_size),
        scale.many_layers,
        size_label(scale.many_layer_size),
        upstream.addr()
    );
    let (big, first) = images::push_image(
        upstream.addr(),
        "bench/big",
        "latest",
        scale.big_layers,
        scale.big_layer_size,
        true,
    );
    let (many, _) = images::push_image(
        upstream.addr(),
        "bench/many",
        "latest",
        scale.many_layers,
        scale.many_layer_size,
        false,
    );
    let blob_digest = big.layers[0].digest.clone();
    let pull_dir = tempfile::Builder::new()
        .prefix("pulls")
        .tempdir_in(run_dir(if Path::new("/dev/shm").is_dir() {
            "/dev/shm"
        } else {
            "/tmp"
        }))
        .expect("create pull dir");
    let mut b = Bench {
        scale: scale.clone(),
        peers: peers.clone(),
        ferry_bin,
        upstream,
        up_log,
        big,
        many,
        blob_bytes: Arc::new(first.expect("first layer kept")),
        blob_digest,
        pull_dir,
        pulls: 0,
        results: Results::default(),
        failures: Vec::new(),
        busy_noted: Vec::new(),
    };

    // Scenario runs whose every response was checked and right, and those that failed.
    let (mut checks_passed, mut checks_failed) = (0usize, 0usize);
    for rep in 1..=scale.reps {
        let t = Instant::now();
        type Scenario = fn(&mut Bench, &'static str);
        let scenarios: [(&str, Scenario); 6] = [
            ("pull big", |b, p| b.pull(p, true)),
            ("pull many", |b, p| b.pull(p, false)),
            ("warm blob", Bench::warm_blob),
            ("cold GET", Bench::cold_get),
            ("stampede", Bench::stampede),
            ("manifests", Bench::manifests),
        ];
        for (name, scenario) in scenarios {
            for peer in &peers {
                let t = Instant::now();
                let failures = b.failures.len();
                scenario(&mut b, peer);
                if b.failures.len() == failures {
                    checks_passed += 1;
                } else {
                    checks_failed += 1;
                }
                eprintln!(
                    "  rep {rep} {name:<10} {peer:<18} {:6.1} s",
                    t.elapsed().as_secs_f64()
                );
            }
        }
        println!(
            "repetition {rep}/{} done in {:.1} s",
            scale.reps,
            t.elapsed().as_secs_f64()
        );
    }
    b.derive();

    let table = b.results.table(&peers);
    let targets = b.targets();
    println!();
    println!(
        "Ferry vs Distribution proxy vs nginx vs direct: scale {}, {} repetition(s); MB = 10^6 bytes, GB = 10^9 bytes",
        scale.name, scale.reps
    );
    println!("{table}");
    println!("Targets of issue 6 (Ferry's medians):");
    for t in &targets {
        println!(
            "  [{}] {}: {} (target {})",
            match t["met"].as_bool() {
                Some(true) => "met ",
                Some(false) => "MISS",
                None => " -- ",
            },
            t["target"].as_str().unwrap_or(""),
            t["value"].as_str().unwrap_or("-"),
            t["bound"].as_str().unwrap_or("")
        );
    }

    // A smoke run does not overwrite the full run's figures.
    let suffix = if scale.name == "full" {
        String::new()
    } else {
        format!("-{}", scale.name)
    };
    let json_path = out_dir.join(format!("compare{suffix}.json"));
    let svg_path = out_dir.join(format!("throughput{suffix}.svg"));
    let doc = json!({
        "command": "cargo bench --bench compare",
        "scale": scale.name,
        "repetitions": scale.reps,
        "sizes": {
            "big": {"layers": scale.big_layers, "layer_bytes": scale.big_layer_size, "image_bytes": b.big.total_bytes()},
            "many": {"layers": scale.many_layers, "layer_bytes": scale.many_layer_size, "image_bytes": b.many.total_bytes()},
            "blob_bytes": b.blob_bytes.len(),
            "parallel_levels": scale.levels,
            "stampede_clients": scale.stampede_clients,
            "heads": scale.heads,
            "manifest_get_clients": scale.manifest_get_clients,
        },
        "units": {"MB": 1_000_000u64, "GB": 1_000_000_000u64, "MiB": MIB},
        "peers": peers,
        "machine": machine,
        "load_after": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        "seconds": started.elapsed().as_secs_f64(),
        "metrics": b.results.to_json(&peers),
        "targets": targets,
        "failures": b.failures,
    });
    std::fs::write(&json_path, serde_json::to_vec_pretty(&doc).unwrap())
        .expect("write compare.json");
    let series = |kind: &str| -> report::Series {
        peers
            .iter()
            .map(|p| {
                let pts = scale
                    .levels
                    .iter()
                    .filter_map(|&n| {
                        b.results
                            .median(&format!("blob_par{n}_{kind}"), p)
                            .map(|v| (n, v))
                    })
                    .collect();
                (report::peer_title(p).to_owned(), pts)
            })
            .collect()
    };
    let title = format!(
        "Warm {} blob, parallel GETs on 127.0.0.1 ({} cores; median of {})",
        size_label(scale.big_layer_size),
        machine["cores"],
        scale.reps
    );
    if let Err(e) = report::plot(
        &svg_path,
        &title,
        &scale.levels,
        &series("mbps"),
        &series("cpu"),
    ) {
        b.failures.push(format!("plot: {e}"));
        checks_failed += 1;
    }
    println!(
        "\nwrote {} and {} ({:.0} s in all)",
        json_path.display(),
        svg_path.display(),
        started.elapsed().as_secs_f64()
    );
    println!("compare: {checks_passed} passed, {checks_failed} failed");
    if !b.failures.is_empty() {
        eprintln!("compare: {} failure(s):", b.failures.len());
        for f in &b.failures {
            eprintln!("  {f}");
        }
        // Stop the upstream and remove the temp dirs before exiting non-zero.
        drop(b);
        drop(_run_dirs);
        std::process::exit(1);
    }
}

impl Bench {
    fn start(&self, peer: &'static str) -> Server {
        match peer {
            FERRY => {
                let f = Ferry::start(&self.ferry_bin, &self.upstream.url());
                Server {
                    peer,
                    addr: f.addr().to_owned(),
                    pid: f.pid(),
                    dist: None,
                    _ferry: Some(f),
                    _nginx: None,
                }
            }
            DIST => {
                let d = start_proxy(&self.upstream.url());
                Server {
                    peer,
                    addr: d.addr().to_owned(),
                    pid: d.pid(),
                    dist: Some(d),
                    _ferry: None,
                    _nginx: None,
                }
            }
            NGINX => {
                let manifests: Vec<StaticManifest> = [&self.big, &self.many]
                    .into_iter()
                    .map(|i| StaticManifest {
                        repo: i.repo.clone(),
                        tag: i.tag.clone(),
                        digest: i.manifest_digest.clone(),
                        media_type: media::OCI_MANIFEST.to_owned(),
                        bytes: i.manifest.clone(),
                    })
                    .collect();
                let n = Nginx::start(&self.upstream.storage_root(), &manifests);
                Server {
                    peer,
                    addr: n.addr().to_owned(),
                    pid: n.pid(),
                    dist: None,
                    _ferry: None,
                    _nginx: Some(n),
                }
            }
            DIRECT => Server {
                peer,
                addr: self.upstream.addr().to_owned(),
                pid: self.upstream.pid(),
                dist: None,
                _ferry: None,
                _nginx: None,
            },
            _ => unreachable!(),
        }
    }

    /// Lets the server (and the upstream) finish background work before a measured
    /// phase: at most 15 s until neither uses CPU.
    fn settle(&mut self, srv: &Server) {
        let mut pids = srv.pids();
        pids.extend(proc::process_tree(self.upstream.pid()));
        pids.sort_unstable();
        pids.dedup();
        if !proc::wait_idle(&pids, Duration::from_secs(3)) && !self.busy_noted.contains(&srv.peer) {
            eprintln!(
                "  note: {} (or the upstream) uses CPU with nothing to do; measuring anyway \
                 (see \"idle server CPU\")",
                srv.peer
            );
            self.busy_noted.push(srv.peer);
        }
    }

    fn add(&mut self, id: &str, label: &str, unit: &str, better: Better, peer: &str, v: f64) {
        self.results.add(id, label, unit, better, peer, v);
    }

    fn fail(&mut self, what: String) {
        eprintln!("FAILED: {what}");
        self.failures.push(what);
    }

    fn blob_path(&self) -> String {
        format!("/v2/{}/blobs/{}", self.big.repo, self.blob_digest)
    }

    /// `skopeo copy` of `image` from `addr` into a fresh `dir:`; seconds. Checks every
    /// blob landed with its size (skopeo itself verifies digests).
    fn skopeo_pull(&mut self, addr: &str, image: &Image) -> Option<f64> {
        self.pulls += 1;
        let dest = self.pull_dir.path().join(format!("pull-{}", self.pulls));
        let mut cmd = ferry_testkit::skopeo::copy();
        cmd.arg(format!("docker://{addr}/{}:{}", image.repo, image.tag));
        cmd.arg(format!("dir:{}", dest.display()));
        let t = Instant::now();
        let mut child = ChildGuard::spawn("skopeo", cmd, self.pull_dir.path());
        let status = child.wait_timeout(Duration::from_secs(600));
        let secs = t.elapsed().as_secs_f64();
        let ok = match status {
            Some(s) if s.success() => image.blobs().all(|b| {
                let hex = b.digest.trim_start_matches("sha256:");
                [dest.join(hex), dest.join(&b.digest)]
                    .iter()
                    .any(|p| std::fs::metadata(p).is_ok_and(|m| m.len() == b.size))
            }),
            _ => false,
        };
        let tails = child.log_tails(15);
        let _ = std::fs::remove_dir_all(&dest);
        if ok {
            Some(secs)
        } else {
            self.fail(format!(
                "skopeo pull of {}:{} from {addr} failed ({status:?})\n{tails}",
                image.repo, image.tag
            ));
            None
        }
    }

    /// (1) and (2): a cold, then a warm `skopeo copy` of "big" or "many".
    fn pull(&mut self, peer: &'static str, big: bool) {
        let image = if big {
            self.big.clone()
        } else {
            self.many.clone()
        };
        let key = if big { "big" } else { "many" };
        let desc = if big {
            format!(
                "{} x {}",
                self.scale.big_layers,
                size_label(self.scale.big_layer_size)
            )
        } else {
            format!(
                "{} x {}",
                self.scale.many_layers,
                size_label(self.scale.many_layer_size)
            )
        };
        let srv = self.start(peer);
        let mb = image.total_bytes() as f64 / 1e6;
        self.settle(&srv);

        let mark = self.up_log.mark();
        let pids = srv.pids();
        let cpu0 = proc::cpu_ticks(&pids);
        let machine0 = proc::machine_ticks();
        let Some(cold) = self.skopeo_pull(&srv.addr, &image) else {
            return;
        };
        let machine1 = proc::machine_ticks();
        // Near 100%, the pull was bound by the CPUs (client, upstream and server
        // together), and a server's own CPU comes straight out of the client's share.
        self.add(
            &format!("cold_pull_{key}_busy"),
            &format!("cold pull {key}: machine CPU busy"),
            "%",
            Better::Lower,
            peer,
            100.0 * (machine1.0 - machine0.0) as f64 / (machine1.1 - machine0.1).max(1) as f64,
        );
        // What the server itself spent: on a 2-core machine a proxy's CPU is taken from
        // the client and the upstream, so it is what decides a cold pull's speed.
        let cpu = (proc::cpu_ticks(&pids) - cpu0) as f64 / proc::clk_tck();
        self.add(
            &format!("cold_pull_{key}_cpu"),
            &format!("cold pull {key}: server CPU"),
            "CPU-s/GB",
            Better::Lower,
            peer,
            cpu / (image.total_bytes() as f64 / 1e9),
        );
        self.add(
            &format!("cold_pull_{key}_mbps"),
            &format!("cold pull {key} ({desc})"),
            "MB/s",
            Better::Higher,
            peer,
            mb / cold,
        );
        self.add(
            &format!("cold_pull_{key}_s"),
            &format!("cold pull {key}"),
            "s",
            Better::Lower,
            peer,
            cold,
        );
        if srv.is_proxy() {
            let up: u64 = self
                .up_log
                .since(mark, Duration::from_secs(1))
                .iter()
                .filter(|a| a.method == "GET" && a.path.contains("/blobs/"))
                .map(|a| a.bytes)
                .sum();
            self.add(
                &format!("cold_pull_{key}_upstream_x"),
                &format!("cold pull {key}: upstream blob bytes / image's"),
                "x",
                Better::Lower,
                peer,
                up as f64 / image.blob_bytes() as f64,
            );
        }

        // Distribution's proxy stores what it fetched in the background: let it finish
        // so that the warm pull is warm.
        if let Some(d) = &srv.dist {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !image
                .layers
                .iter()
                .all(|l| d.has_layer(&image.repo, &l.digest))
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.settle(&srv);
        let mark = self.up_log.mark();
        let Some(warm) = self.skopeo_pull(&srv.addr, &image) else {
            return;
        };
        self.add(
            &format!("warm_pull_{key}_mbps"),
            &format!("warm pull {key}"),
            "MB/s",
            Better::Higher,
            peer,
            mb / warm,
        );
        self.add(
            &format!("warm_pull_{key}_s"),
            &format!("warm pull {key}"),
            "s",
            Better::Lower,
            peer,
            warm,
        );
        if srv.is_proxy() {
            let n = self.up_log.since(mark, Duration::from_millis(300)).len();
            self.add(
                &format!("warm_pull_{key}_upstream"),
                &format!("warm pull {key}: upstream requests"),
                "req",
                Better::Lower,
                peer,
                n as f64,
            );
        }
    }

    /// GETs the blob once, comparing every byte; seconds.
    fn get_blob_verified(&mut self, addr: &str, what: &str) -> Option<f64> {
        let path = self.blob_path();
        let expected = self.blob_bytes.clone();
        let t = Instant::now();
        let mut v = Verify::new(&expected);
        let r = Conn::connect(addr)
            .and_then(|mut c| c.request("GET", &path, &[], None, false, &mut |b| v.feed(b)));
        let secs = t.elapsed().as_secs_f64();
        match r {
            Ok(r) if r.status == 200 && v.complete() => Some(secs),
            Ok(r) => {
                self.fail(format!(
                    "{what}: GET {path} from {addr}: status {}, {} bytes, verified {}",
                    r.status,
                    r.body_len,
                    v.complete()
                ));
                None
            }
            Err(e) => {
                self.fail(format!("{what}: GET {path} from {addr}: {e}"));
                None
            }
        }
    }

    /// (3) and (6): the blob made warm, then 1, 8 and 64 parallel GETs of it: aggregate
    /// MB/s, server CPU-s per GB, peak RSS.
    fn warm_blob(&mut self, peer: &'static str) {
        let srv = self.start(peer);
        let path = self.blob_path();
        let size = self.blob_bytes.len() as u64;
        if self.get_blob_verified(&srv.addr, "warm-up").is_none() {
            return;
        }
        // Warm means a GET that reaches no upstream (Distribution stores in the
        // background after serving).
        if srv.is_proxy() {
            let mut warm = false;
            for _ in 0..60 {
                let mark = self.up_log.mark();
                let ok = Conn::connect(&srv.addr)
                    .and_then(|mut c| c.get_discard(&path, &[]))
                    .is_ok_and(|(s, n)| s == 200 && n == size);
                let hits = self
                    .up_log
                    .since(mark, Duration::from_millis(150))
                    .iter()
                    .filter(|a| a.path.contains("/blobs/"))
                    .count();
                if ok && hits == 0 {
                    warm = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            if !warm {
                self.fail(format!("{peer}: the blob never became warm"));
                return;
            }
        }
        self.settle(&srv);
        let pids = srv.pids();
        let tck = proc::clk_tck();
        let peak = PeakRss::start(&pids);
        let mark = self.up_log.mark();
        for &n in &self.scale.levels.clone() {
            let rounds = self
                .scale
                .min_bytes_per_level
                .div_ceil(n as u64 * size)
                .max(1) as usize;
            let cpu0 = proc::cpu_ticks(&pids);
            let r = parallel_gets(&srv.addr, &path, n, rounds, size);
            let cpu1 = proc::cpu_ticks(&pids);
            match r {
                Ok((secs, bytes)) => {
                    let label = if n == 1 {
                        "warm blob, 1 GET at a time".to_owned()
                    } else {
                        format!("warm blob, {n} parallel GETs")
                    };
                    self.add(
                        &format!("blob_par{n}_mbps"),
                        &label,
                        "MB/s",
                        Better::Higher,
                        peer,
                        bytes as f64 / secs / 1e6,
                    );
                    self.add(
                        &format!("blob_par{n}_cpu"),
                        &format!("{label}: server CPU"),
                        "CPU-s/GB",
                        Better::Lower,
                        peer,
                        (cpu1 - cpu0) as f64 / tck / (bytes as f64 / 1e9),
                    );
                }
                Err(e) => self.fail(format!("{peer}: {n} parallel GETs: {e}")),
            }
        }
        let rss = peak.finish();
        self.add(
            "blob_rss",
            "peak RSS during the parallel GETs",
            "MiB",
            Better::Lower,
            peer,
            rss as f64 / MIB as f64,
        );
        if srv.is_proxy() {
            let n = self.up_log.since(mark, Duration::from_millis(300)).len();
            self.add(
                "blob_upstream",
                "parallel GETs: upstream requests",
                "req",
                Better::Lower,
                peer,
                n as f64,
            );
        }
    }

    /// One client, one GET of the uncached blob: the time the stampede is judged by.
    fn cold_get(&mut self, peer: &'static str) {
        let srv = self.start(peer);
        // What the server costs doing nothing (fresh, no requests yet), over 1 s.
        std::thread::sleep(Duration::from_millis(500));
        let pids = srv.pids();
        let (cpu0, t0) = (proc::cpu_ticks(&pids), Instant::now());
        std::thread::sleep(Duration::from_secs(1));
        let idle =
            (proc::cpu_ticks(&pids) - cpu0) as f64 / proc::clk_tck() / t0.elapsed().as_secs_f64();
        self.add(
            "idle_cpu",
            "idle server CPU (fresh, no requests)",
            "% of a core",
            Better::Lower,
            peer,
            idle * 100.0,
        );
        self.settle(&srv);
        if let Some(secs) = self.get_blob_verified(&srv.addr, "cold GET") {
            self.add(
                "cold_get_s",
                &format!(
                    "cold GET of one uncached {} blob, 1 client",
                    size_label(self.scale.big_layer_size)
                ),
                "s",
                Better::Lower,
                peer,
                secs,
            );
        }
    }

    /// (4) and (6): many clients GET one uncached blob at once.
    fn stampede(&mut self, peer: &'static str) {
        let srv = self.start(peer);
        let n = self.scale.stampede_clients;
        self.settle(&srv);
        let pids = srv.pids();
        let peak = PeakRss::start(&pids);
        let mark = self.up_log.mark();
        let path = self.blob_path();
        let barrier = Arc::new(Barrier::new(n + 1));
        let threads: Vec<_> = (0..n)
            .map(|_| {
                let (addr, path, barrier, expected) = (
                    srv.addr.clone(),
                    path.clone(),
                    barrier.clone(),
                    self.blob_bytes.clone(),
                );
                std::thread::spawn(move || -> Result<Instant, String> {
                    let conn = Conn::connect(&addr);
                    barrier.wait();
                    let mut conn = conn.map_err(|e| e.to_string())?;
                    let mut v = Verify::new(&expected);
                    let r = conn
                        .request("GET", &path, &[], None, false, &mut |b| v.feed(b))
                        .map_err(|e| e.to_string())?;
                    let done = Instant::now();
                    if r.status != 200 || !v.complete() {
                        return Err(format!(
                            "status {}, {} bytes, verified {}",
                            r.status,
                            r.body_len,
                            v.complete()
                        ));
                    }
                    Ok(done)
                })
            })
            .collect();
        barrier.wait();
        let t0 = Instant::now();
        let mut last = t0;
        let mut errors = Vec::new();
        for t in threads {
            match t.join() {
                Ok(Ok(done)) => last = last.max(done),
                Ok(Err(e)) => errors.push(e),
                Err(_) => errors.push("client thread panicked".to_owned()),
            }
        }
        let rss = peak.finish();
        if !errors.is_empty() {
            self.fail(format!(
                "{peer}: stampede: {} of {n} clients failed, e.g. {}",
                errors.len(),
                errors[0]
            ));
            return;
        }
        self.add(
            "stampede_s",
            &format!("stampede: {n} clients GET it at once, last done"),
            "s",
            Better::Lower,
            peer,
            (last - t0).as_secs_f64(),
        );
        // What bounds the stampede on one machine: all clients' bytes over loopback.
        self.add(
            "stampede_mbps",
            "stampede: aggregate",
            "MB/s",
            Better::Higher,
            peer,
            (n * self.blob_bytes.len()) as f64 / (last - t0).as_secs_f64() / 1e6,
        );
        if srv.is_proxy() {
            let digest = self.blob_digest.clone();
            let gets = self
                .up_log
                .since(mark, Duration::from_secs(1))
                .iter()
                .filter(|a| a.method == "GET" && a.path.contains(&digest))
                .count();
            self.add(
                "stampede_upstream_gets",
                "stampede: GETs of the blob upstream",
                "req",
                Better::Lower,
                peer,
                gets as f64,
            );
        }
        self.add(
            "stampede_rss",
            "stampede: peak RSS",
            "MiB",
            Better::Lower,
            peer,
            rss as f64 / MIB as f64,
        );
    }

    /// (5): warm manifest HEAD latency, then concurrent manifest GETs.
    fn manifests(&mut self, peer: &'static str) {
        let srv = self.start(peer);
        let path = format!("/v2/{}/manifests/{}", self.big.repo, self.big.tag);
        let accept = [("Accept", CONTAINERD_ACCEPT)];
        let mut conn = match Conn::connect(&srv.addr) {
            Ok(c) => c,
            Err(e) => return self.fail(format!("{peer}: connect: {e}")),
        };
        match conn.get_bytes(&path, &accept) {
            Ok((r, body)) if r.status == 200 && body == self.big.manifest => {}
            Ok((r, body)) => {
                return self.fail(format!(
                    "{peer}: GET {path}: status {}, {} bytes (want the pushed manifest)",
                    r.status,
                    body.len()
                ));
            }
            Err(e) => return self.fail(format!("{peer}: GET {path}: {e}")),
        }
        self.settle(&srv);
        let mark = self.up_log.mark();
        let mut lat = Vec::with_capacity(self.scale.heads);
        for i in 0..self.scale.heads {
            let t = Instant::now();
            let r = conn.request("HEAD", &path, &accept, None, i == 0, &mut |_| {});
            lat.push(t.elapsed().as_secs_f64() * 1e3);
            match r {
                Ok(r) if r.status == 200 => {
                    if i == 0
                        && r.header("docker-content-digest") != Some(&self.big.manifest_digest)
                    {
                        return self.fail(format!(
                            "{peer}: HEAD {path}: Docker-Content-Digest {:?}, want {}",
                            r.header("docker-content-digest"),
                            self.big.manifest_digest
                        ));
                    }
                }
                Ok(r) => return self.fail(format!("{peer}: HEAD {path}: status {}", r.status)),
                Err(e) => return self.fail(format!("{peer}: HEAD {path}: {e}")),
            }
        }
        let upstream = self.up_log.since(mark, Duration::from_millis(300)).len();
        lat.sort_by(|a, b| a.total_cmp(b));
        let pct = |p: f64| lat[((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1];
        let heads = self.scale.heads;
        self.add(
            "head_p50_ms",
            &format!("manifest HEAD by tag, warm, {heads} sequential: p50"),
            "ms",
            Better::Lower,
            peer,
            pct(0.50),
        );
        self.add(
            "head_p99_ms",
            "manifest HEAD by tag: p99",
            "ms",
            Better::Lower,
            peer,
            pct(0.99),
        );
        if srv.is_proxy() {
            self.add(
                "head_upstream",
                "manifest HEADs: upstream requests per HEAD",
                "req",
                Better::Lower,
                peer,
                upstream as f64 / heads as f64,
            );
        }
        drop(conn);

        let clients = self.scale.manifest_get_clients;
        match concurrent_gets(
            &srv.addr,
            &path,
            &accept,
            clients,
            Duration::from_secs_f64(self.scale.manifest_get_secs),
            self.big.manifest.len() as u64,
        ) {
            Ok(rps) => self.add(
                "manifest_get_rps",
                &format!("manifest GET by tag, {clients} concurrent clients"),
                "req/s",
                Better::Higher,
                peer,
                rps,
            ),
            Err(e) => self.fail(format!("{peer}: concurrent manifest GETs: {e}")),
        }
    }

    /// Figures computed from others' medians.
    fn derive(&mut self) {
        for peer in self.peers.clone() {
            let (Some(s), Some(one)) = (
                self.results.median("stampede_s", peer),
                self.results.median("cold_get_s", peer),
            ) else {
                continue;
            };
            self.add(
                "stampede_vs_one",
                "stampede: last done / one client's time",
                "x",
                Better::Lower,
                peer,
                s / one,
            );
        }
    }

    /// Ferry against each target of issue 6 (medians of this run).
    fn targets(&self) -> Vec<serde_json::Value> {
        let m = |id: &str, p: &str| self.results.median(id, p);
        let mut out = Vec::new();
        let mut check = |target: String,
                         value: Option<f64>,
                         bound: Option<f64>,
                         le: bool,
                         unit: &str| {
            let met = match (value, bound) {
                (Some(v), Some(b)) => Some(if le { v <= b } else { v >= b }),
                _ => None,
            };
            out.push(json!({
                "target": target,
                "value": value.map(|v| format!("{} {unit}", report::fmt_num(v))),
                "bound": bound.map(|b| format!("{} {} {unit}", if le { "<=" } else { ">=" }, report::fmt_num(b))),
                "met": met,
            }));
        };
        for n in [8, 64] {
            if !self.scale.levels.contains(&n) {
                continue;
            }
            let cpu = format!("blob_par{n}_cpu");
            let mbps = format!("blob_par{n}_mbps");
            check(
                format!("warm blob, {n} parallel: CPU per GB <= 1.5x nginx"),
                m(&cpu, FERRY),
                m(&cpu, NGINX).map(|v| 1.5 * v),
                true,
                "CPU-s/GB",
            );
            check(
                format!("warm blob, {n} parallel: CPU per GB <= 0.5x Distribution"),
                m(&cpu, FERRY),
                m(&cpu, DIST).map(|v| 0.5 * v),
                true,
                "CPU-s/GB",
            );
            check(
                format!("warm blob, {n} parallel: MB/s >= 0.95x nginx"),
                m(&mbps, FERRY),
                m(&mbps, NGINX).map(|v| 0.95 * v),
                false,
                "MB/s",
            );
        }
        check(
            "warm pull many: time <= 1.2x nginx".to_owned(),
            m("warm_pull_many_s", FERRY),
            m("warm_pull_many_s", NGINX).map(|v| 1.2 * v),
            true,
            "s",
        );
        for key in ["big", "many"] {
            check(
                format!("cold pull {key}: MB/s >= 0.95x direct"),
                m(&format!("cold_pull_{key}_mbps"), FERRY),
                m(&format!("cold_pull_{key}_mbps"), DIRECT).map(|v| 0.95 * v),
                false,
                "MB/s",
            );
            check(
                format!("cold pull {key}: upstream bytes = 1.00x the image's"),
                m(&format!("cold_pull_{key}_upstream_x"), FERRY),
                Some(1.0),
                true,
                "x",
            );
        }
        check(
            "stampede: upstream GETs of the blob = 1".to_owned(),
            m("stampede_upstream_gets", FERRY),
            Some(1.0),
            true,
            "req",
        );
        check(
            "stampede: last client within 1.5x one client's time".to_owned(),
            m("stampede_vs_one", FERRY),
            Some(1.5),
            true,
            "x",
        );
        check(
            "warm manifest HEAD p50 <= 0.3 ms".to_owned(),
            m("head_p50_ms", FERRY),
            Some(0.3),
            true,
            "ms",
        );
        check(
            "warm manifest HEAD p99 <= 1 ms".to_owned(),
            m("head_p99_ms", FERRY),
            Some(1.0),
            true,
            "ms",
        );
        check(
            "warm manifest HEAD: zero upstream requests".to_owned(),
            m("head_upstream", FERRY),
            Some(0.0),
            true,
            "req/HEAD",
        );
        check(
            "manifest GETs, 16 concurrent: >= 3x Distribution req/s".to_owned(),
            m("manifest_get_rps", FERRY),
            m("manifest_get_rps", DIST).map(|v| 3.0 * v),
            false,
            "req/s",
        );
        check(
            "peak RSS during parallel GETs <= 32 MiB".to_owned(),
            m("blob_rss", FERRY),
            Some(32.0),
            true,
            "MiB",
        );
        check(
            "peak RSS during the stampede <= 32 MiB".to_owned(),
            m("stampede_rss", FERRY),
            Some(32.0),
            true,
            "MiB",
        );
        out
    }
}

/// `n` clients, each on its own connection, GET `path` `rounds` times in a row, all
/// starting together. Returns (seconds until the last is done, bytes moved).
fn parallel_gets(
    addr: &str,
    path: &str,
    n: usize,
    rounds: usize,
    size: u64,
) -> Result<(f64, u64), String> {
    let barrier = Arc::new(Barrier::new(n + 1));
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let (addr, path, barrier) = (addr.to_owned(), path.to_owned(), barrier.clone());
            std::thread::spawn(move || -> Result<Instant, String> {
                let conn = Conn::connect(&addr);
                barrier.wait();
                let mut conn = conn.map_err(|e| e.to_string())?;
                for _ in 0..rounds {
                    let (status, len) = conn.get_discard(&path, &[]).map_err(|e| e.to_string())?;
                    if status != 200 || len != size {
                        return Err(format!("status {status}, {len} of {size} bytes"));
                    }
                }
                Ok(Instant::now())
            })
        })
        .collect();
    barrier.wait();
    let t0 = Instant::now();
    let mut last = t0;
    for t in threads {
        last = last.max(
            t.join()
                .map_err(|_| "client thread panicked".to_owned())??,
        );
    }
    Ok(((last - t0).as_secs_f64(), n as u64 * rounds as u64 * size))
}

/// `clients` keep-alive clients GET `path` back to back for `duration`; requests per
/// second over all of them.
fn concurrent_gets(
    addr: &str,
    path: &str,
    extra: &[(&str, &str)],
    clients: usize,
    duration: Duration,
    body_len: u64,
) -> Result<f64, String> {
    let barrier = Arc::new(Barrier::new(clients + 1));
    let extra: Vec<(String, String)> = extra
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (addr, path, barrier, extra) = (
                addr.to_owned(),
                path.to_owned(),
                barrier.clone(),
                extra.clone(),
            );
            std::thread::spawn(move || -> Result<(u64, Instant), String> {
                let headers: Vec<(&str, &str)> = extra
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let conn = Conn::connect(&addr);
                barrier.wait();
                let mut conn = conn.map_err(|e| e.to_string())?;
                let deadline = Instant::now() + duration;
                let mut count = 0u64;
                while Instant::now() < deadline {
                    let (status, len) = conn
                        .get_discard(&path, &headers)
                        .map_err(|e| e.to_string())?;
                    if status != 200 || len != body_len {
                        return Err(format!("status {status}, {len} of {body_len} bytes"));
                    }
                    count += 1;
                }
                Ok((count, Instant::now()))
            })
        })
        .collect();
    barrier.wait();
    let t0 = Instant::now();
    let mut total = 0;
    let mut last = t0;
    for t in threads {
        let (count, done) = t
            .join()
            .map_err(|_| "client thread panicked".to_owned())??;
        total += count;
        last = last.max(done);
    }
    Ok(total as f64 / (last - t0).as_secs_f64())
}

/// Installs docker-registry, skopeo and nginx with apt-get (as root) when missing.
fn ensure_tools() {
    let missing: Vec<&str> = [
        ("docker-registry", "docker-registry"),
        ("skopeo", "skopeo"),
        ("nginx", "nginx"),
    ]
    .into_iter()
    .filter(|(bin, _)| kit_process::find_binary(bin).is_none())
    .map(|(_, pkg)| pkg)
    .collect();
    if missing.is_empty() {
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!(
            "missing {}: install them (apt-get install {}) or run as root",
            missing.join(", "),
            missing.join(" ")
        );
    }
    println!("installing {} with apt-get", missing.join(", "));
    let mut update = Command::new("apt-get");
    update.args(["update", "-qq"]);
    kit_process::run_ok(update, Duration::from_secs(600));
    let mut install = Command::new("apt-get");
    install
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing);
    kit_process::run_ok(install, Duration::from_secs(600));
}

/// `target/`: three levels above this executable (`target/release/deps/compare-…`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target"))
}

/// What the figures were measured on.
fn machine_info(ferry_bin: &Path) -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| (kb / 1024.0 / 1024.0 * 10.0).round() / 10.0);
    let version = |bin: &str, arg: &str| -> String {
        Command::new(bin)
            .arg(arg)
            .output()
            .map(|o| {
                let s = String::from_utf8_lossy(&o.stdout).into_owned()
                    + &String::from_utf8_lossy(&o.stderr);
                s.lines().next().unwrap_or("").trim().to_owned()
            })
            .unwrap_or_default()
    };
    let nginx = kit_process::find_binary("nginx")
        .map(|p| version(&p.to_string_lossy(), "-v"))
        .unwrap_or_default();
    json!({
        "cpu": model,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memory_gib": mem_gib,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "load_before": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        "ferry": ferry_bin.display().to_string(),
        "docker_registry": version("docker-registry", "--version"),
        "nginx": nginx,
        "skopeo": version("skopeo", "--version"),
    })
}
