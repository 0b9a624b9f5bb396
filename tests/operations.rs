//! Operating a running Ferry: SIGTERM drains (in-flight downloads finish, new
//! connections are refused, a stalled one is cut at `shutdown_timeout`, a second
//! SIGTERM cuts at once), and SIGHUP or a changed config file reloads upstreams, cache
//! rules, access policy and secrets without dropping connections; an invalid config is
//! refused with one log line and the running one keeps serving.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::harness::faults::{FaultProxy, Mode};
use crate::harness::ferry::{Ferry, FerryBuilder, LOCAL, Upstream};
use crate::harness::http::{client, media};
use crate::harness::images::{PushedImage, push_image_http};
use crate::harness::registry::{Registry, RegistryAuth};
use crate::harness::sha256_digest;
use crate::support::{
    Outcome, assert_fsck_clean, blob_url, fetch_outcome, get, local_setup, manifest_url,
};

/// Bound on waiting for a reload's log line: a file change is seen within two polls
/// (2 s each), a SIGHUP at once.
const RELOAD_WAIT: Duration = Duration::from_secs(15);

/// A layer that takes about a minute at [`STALLED_RATE`] (its first bytes reach the
/// client within a few seconds: Ferry hands them on in pieces of 512 KiB).
const STALLED_SIZE: usize = 16 << 20;
const STALLED_RATE: u64 = 256 << 10;

/// A blob GET running in the background, with how many body bytes arrived so far.
struct Download {
    progress: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<Outcome>,
}

impl Download {
    fn start(url: String) -> Download {
        let progress = Arc::new(AtomicUsize::new(0));
        let seen = progress.clone();
        let task = tokio::spawn(async move {
            let mut resp = match client().get(&url).send().await {
                Ok(r) => r,
                Err(e) => return Outcome::NoResponse(e.to_string()),
            };
            let status = resp.status().as_u16();
            let declared = resp.content_length();
            let mut body = Vec::new();
            loop {
                match resp.chunk().await {
                    Ok(Some(c)) => {
                        body.extend_from_slice(&c);
                        seen.store(body.len(), Ordering::SeqCst);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        return Outcome::Cut {
                            got: body.len(),
                            error: e.to_string(),
                        };
                    }
                }
            }
            match (status, declared) {
                (200, Some(n)) if n as usize != body.len() => Outcome::Cut {
                    got: body.len(),
                    error: format!("{} of {n} bytes", body.len()),
                },
                (200, _) => Outcome::Complete {
                    body,
                    x_cache: String::new(),
                },
                (status, _) => Outcome::Status { status, body },
            }
        });
        Download { progress, task }
    }

    /// Waits (≤ 20 s) until at least `bytes` body bytes arrived.
    async fn wait_for(&self, bytes: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.progress.load(Ordering::SeqCst) < bytes {
            assert!(
                !self.task.is_finished(),
                "the download ended before {bytes} bytes arrived"
            );
            assert!(
                Instant::now() < deadline,
                "only {} of {bytes} bytes arrived within 20 s",
                self.progress.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The outcome, waiting at most `timeout`.
    async fn finish(self, timeout: Duration) -> Outcome {
        tokio::time::timeout(timeout, self.task)
            .await
            .unwrap_or_else(|_| panic!("the download did not end within {timeout:?}"))
            .expect("download task")
    }
}

/// Asserts `outcome` is the whole blob, verified against its digest.
fn assert_whole_blob(outcome: &Outcome, digest: &str, size: u64, what: &str) {
    match outcome {
        Outcome::Complete { body, .. } => {
            assert_eq!(body.len() as u64, size, "{what}: length");
            assert_eq!(sha256_digest(body), digest, "{what}: digest");
        }
        other => panic!("{what}: not the whole blob: {}", other.describe()),
    }
}

/// Polls (≤ 15 s, a margin for a loaded machine) until a new TCP connection to `addr`
/// is refused.
fn assert_connections_refused(addr: &str) {
    let addr: std::net::SocketAddr = addr.parse().expect("ip:port");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return,
            other => assert!(
                Instant::now() < deadline,
                "new connections to {addr} are still accepted 15 s after SIGTERM: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for a log line with every one of `needles` after `from`; panics with the log.
fn expect_log(ferry: &Ferry, from: usize, needles: &[&str]) -> String {
    ferry
        .wait_for_log(from, needles, RELOAD_WAIT)
        .unwrap_or_else(|| {
            panic!(
                "no log line with {needles:?} within {RELOAD_WAIT:?}\n{}",
                crate::harness::process::tail_str(&ferry.log()[from..], 40)
            )
        })
}

/// Rewrites the config with `edit` applied to its text, then sends SIGHUP if `hup`.
/// Returns the log length before, to look for what the reload logged.
fn reconfigure(ferry: &mut Ferry, hup: bool, edit: impl FnOnce(&str) -> String) -> usize {
    let mark = ferry.log().len();
    let text = edit(ferry.config());
    ferry.write_config(&text);
    if hup {
        ferry.signal("HUP");
    }
    mark
}

/// The manifest of `img` through Ferry at `url` (`<ferry>/v2/<prefix>/<repo>/…`).
async fn manifest_status(url: &str) -> (u16, Vec<u8>) {
    let r = get(url, &[media::OCI_MANIFEST]).await;
    (r.status.as_u16(), r.body)
}

fn assert_manifest_ok(got: &(u16, Vec<u8>), img: &PushedImage, what: &str) {
    assert_eq!(
        got.0,
        200,
        "{what}: {}",
        String::from_utf8_lossy(&got.1[..got.1.len().min(500)])
    );
    assert_eq!(got.1, img.manifest, "{what}: the upstream's manifest bytes");
}

/// The `ferry_upstream_up` samples on `/metrics`, sorted.
async fn upstream_up(ferry: &Ferry) -> Vec<String> {
    let r = get(&format!("{}/metrics", ferry.url()), &[]).await;
    assert_eq!(r.status, 200, "GET /metrics: {}", r.text());
    let mut up: Vec<String> = String::from_utf8(r.body)
        .expect("metrics are text")
        .lines()
        .filter(|l| l.starts_with("ferry_upstream_up{"))
        .map(str::to_owned)
        .collect();
    up.sort();
    up
}

/// An HTTP/1.1 keep-alive connection, to show it survives a reload.
struct KeepAlive {
    stream: TcpStream,
    addr: String,
}

impl KeepAlive {
    fn open(addr: &str) -> KeepAlive {
        let stream = TcpStream::connect(addr).expect("connect to ferry");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("read timeout");
        KeepAlive {
            stream,
            addr: addr.to_owned(),
        }
    }

    /// `GET target` on this connection; the status and body (by Content-Length).
    fn get(&mut self, target: &str) -> (u16, Vec<u8>) {
        write!(
            self.stream,
            "GET {target} HTTP/1.1\r\nHost: {}\r\nAccept: {}\r\n\r\n",
            self.addr,
            media::OCI_MANIFEST
        )
        .expect("write a request on the kept-alive connection");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let n = self
                .stream
                .read(&mut byte)
                .expect("read a response on the kept-alive connection");
            assert!(n == 1, "the kept-alive connection was closed");
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad response head {head:?}"));
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or_else(|| panic!("no Content-Length in {head:?}"));
        let mut body = vec![0u8; len];
        self.stream
            .read_exact(&mut body)
            .expect("read the body on the kept-alive connection");
        (status, body)
    }
}

/// A registry with one image of one `layer` byte layer, behind a proxy throttled to
/// `rate` bytes per second, and a Ferry (with `server` lines) on it.
fn throttled_setup(
    layer: usize,
    rate: u64,
    server: &[&str],
) -> (Registry, FaultProxy, PushedImage, Ferry) {
    let registry = Registry::start(RegistryAuth::None);
    let img = push_image_http(&registry, "team/big", "v1", &[layer]);
    let proxy = FaultProxy::start(registry.addr());
    proxy.set_mode(Mode::Throttle(rate));
    let mut builder = FerryBuilder::new().upstream(Upstream::local(&proxy.url()));
    for line in server {
        builder = builder.server_raw(line);
    }
    let ferry = builder.start();
    (registry, proxy, img, ferry)
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_a_slow_download_finish_and_refuses_new_connections() {
    // About 3 s for the layer: SIGTERM lands in the middle.
    let (_registry, _proxy, img, mut ferry) = throttled_setup(6 << 20, 2 << 20, &[]);
    let layer = img.largest_layer().clone();
    let download = Download::start(blob_url(&ferry, "team/big", &layer.digest));
    download.wait_for(64 << 10).await;
    let mark = ferry.log().len();
    ferry.signal("TERM");
    assert_connections_refused(ferry.addr());
    assert!(
        ferry.wait_exit(Duration::from_millis(200)).is_none(),
        "ferry exited while a download was in flight\n{}",
        ferry.log()
    );
    let outcome = download.finish(Duration::from_secs(30)).await;
    assert_whole_blob(
        &outcome,
        &layer.digest,
        layer.size,
        "the download in flight",
    );
    let status = ferry
        .wait_exit(Duration::from_secs(15))
        .expect("ferry exits once the download is done");
    assert_eq!(status.code(), Some(0), "exit status\n{}", ferry.log());
    let starts = ferry.log_lines(mark, &["shutting down"]);
    let ends = ferry.log_lines(mark, &["stopped: every request in flight finished"]);
    assert!(
        starts.len() == 1 && ends.len() == 1,
        "one line at the start of the shutdown, one at its end\n{}",
        &ferry.log()[mark..]
    );
    assert_fsck_clean(&ferry, "after a graceful shutdown");
    // The blob finished by the drain was stored: the next start serves it as a hit.
    ferry.start_again();
    let again = fetch_outcome(&blob_url(&ferry, "team/big", &layer.digest), &[]).await;
    assert_whole_blob(&again, &layer.digest, layer.size, "after the restart");
    match again {
        Outcome::Complete { x_cache, .. } => assert_eq!(x_cache, "HIT"),
        _ => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_transfer_is_cut_at_the_shutdown_deadline() {
    // 16 MiB at 256 KiB/s: about a minute. The deadline is 2 s.
    let (_registry, _proxy, img, mut ferry) =
        throttled_setup(STALLED_SIZE, STALLED_RATE, &["shutdown_timeout = \"2s\""]);
    let layer = img.largest_layer().clone();
    let download = Download::start(blob_url(&ferry, "team/big", &layer.digest));
    download.wait_for(1).await;
    let mark = ferry.log().len();
    let signalled = Instant::now();
    ferry.signal("TERM");
    // The transfer alone would take about a minute: anything well below that was cut
    // at the deadline (the margin is for a loaded machine).
    let status = ferry
        .wait_exit(Duration::from_secs(30))
        .expect("ferry exits within the deadline and a margin");
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "exit status\n{}", ferry.log());
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(2 + 15),
        "ferry waited the 2 s deadline, then stopped without finishing the transfer: took {took:?}"
    );
    let outcome = download.finish(Duration::from_secs(10)).await;
    assert!(
        matches!(outcome, Outcome::Cut { .. } | Outcome::NoResponse(_)),
        "the client sees a cut connection, never a complete body: {}",
        outcome.describe()
    );
    let end = expect_log(&ferry, mark, &["stopped", "shutdown deadline passed"]);
    assert!(
        end.contains("cut 1 connection(s)"),
        "the end line counts what was cut: {end}"
    );
    // The cut fetch left only what a restart sweeps: after one, the store is clean.
    ferry.start_again();
    assert!(ferry.terminate(), "a second, idle ferry stops at once");
    assert_fsck_clean(&ferry, "after a shutdown that cut a transfer");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_sigterm_cuts_at_once() {
    let (_registry, _proxy, img, mut ferry) =
        throttled_setup(STALLED_SIZE, STALLED_RATE, &["shutdown_timeout = \"60s\""]);
    let layer = img.largest_layer().clone();
    let download = Download::start(blob_url(&ferry, "team/big", &layer.digest));
    download.wait_for(1).await;
    let mark = ferry.log().len();
    ferry.signal("TERM");
    expect_log(&ferry, mark, &["shutting down"]);
    let signalled = Instant::now();
    ferry.signal("TERM");
    // Far below the 60 s deadline (and the minute the transfer would take): the
    // second signal cut it; the rest is margin for a loaded machine.
    let status = ferry
        .wait_exit(Duration::from_secs(30))
        .expect("ferry exits soon after the second SIGTERM");
    assert!(
        signalled.elapsed() < Duration::from_secs(20),
        "took {:?} after the second SIGTERM (shutdown_timeout 60 s)",
        signalled.elapsed()
    );
    assert_eq!(status.code(), Some(0), "exit status\n{}", ferry.log());
    let outcome = download.finish(Duration::from_secs(10)).await;
    assert!(
        !matches!(outcome, Outcome::Complete { .. }),
        "cut, not complete: {}",
        outcome.describe()
    );
    let end = expect_log(&ferry, mark, &["stopped", "second stop signal"]);
    assert!(end.contains("index flushed"), "{end}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_adds_and_removes_an_upstream_and_a_rule_without_dropping_connections() {
    let (registry, _proxy, big, mut ferry) = throttled_setup(6 << 20, 2 << 20, &[]);
    let second = Registry::start(RegistryAuth::None);
    let app = push_image_http(&second, "team/app", "1", &[20_000]);
    let mirrored = push_image_http(&second, "team/tool", "2", &[20_000]);
    let _ = registry;
    let new_upstream = format!("{}/v2/second/team/app/manifests/1", ferry.url());
    let by_rule = format!(
        "{}/v2/mirror.ferry-test.invalid/tool/manifests/2",
        ferry.url()
    );
    for url in [&new_upstream, &by_rule] {
        let (status, _) = manifest_status(url).await;
        assert_eq!(status, 404, "before the reload, {url} names no upstream");
    }
    let mut kept = KeepAlive::open(ferry.addr());
    assert_eq!(kept.get("/v2/").0, 200);
    let layer = big.largest_layer().clone();
    let download = Download::start(blob_url(&ferry, "team/big", &layer.digest));
    download.wait_for(64 << 10).await;

    // A new upstream, a rule onto it, and a changed `local` (its client is replaced
    // while the download runs on the old one).
    let original = ferry.config().to_owned();
    let second_url = second.url();
    let mark = reconfigure(&mut ferry, true, |text| {
        format!(
            "{}\n[[upstream]]\nname = \"second\"\nregistry = \"second.ferry-test.invalid\"\nurl = \"{second_url}\"\n\n\
             [[rule]]\nname = \"mirror\"\nsource = \"mirror.ferry-test.invalid/*\"\ntarget = \"team/*\"\nupstream = \"second\"\n",
            text.replace("name = \"local\"", "name = \"local\"\ntag_ttl = \"5m\"")
        )
    });
    let line = expect_log(&ferry, mark, &["configuration reloaded"]);
    assert!(
        line.contains("upstreams_added=second")
            && line.contains("upstreams_changed=local")
            && line.contains("rules=1"),
        "the reload line says what changed: {line}"
    );
    assert_manifest_ok(
        &manifest_status(&new_upstream).await,
        &app,
        "the new upstream",
    );
    assert_manifest_ok(&manifest_status(&by_rule).await, &mirrored, "the new rule");
    let (status, body) = kept.get(&format!("/v2/{LOCAL}/team/big/manifests/v1"));
    assert_eq!(status, 200, "the kept-alive connection still serves");
    assert_eq!(body, big.manifest);
    let outcome = download.finish(Duration::from_secs(30)).await;
    assert_whole_blob(
        &outcome,
        &layer.digest,
        layer.size,
        "the download in flight",
    );
    ferry.assert_running();
    assert!(
        ferry.log_lines(mark, &["configuration refused"]).is_empty(),
        "{}",
        &ferry.log()[mark..]
    );
    assert_eq!(
        upstream_up(&ferry).await,
        [
            "ferry_upstream_up{upstream=\"local\"} 1",
            "ferry_upstream_up{upstream=\"second\"} 1",
        ],
        "the added upstream is reported up"
    );

    // Back to the first file: `second` and its rule are gone, and so is its series
    // (a removed upstream is neither up nor down).
    let mark = reconfigure(&mut ferry, true, |_| original);
    let line = expect_log(&ferry, mark, &["configuration reloaded"]);
    assert!(
        line.contains("upstreams_removed=second") && line.contains("rules=0"),
        "the reload line says what was removed: {line}"
    );
    for url in [&new_upstream, &by_rule] {
        let (status, _) = manifest_status(url).await;
        assert_eq!(status, 404, "after the removal, {url} names no upstream");
    }
    assert_eq!(
        upstream_up(&ferry).await,
        ["ferry_upstream_up{upstream=\"local\"} 1"],
        "the removed upstream's series is gone from /metrics"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_config_is_refused_and_the_running_one_keeps_serving() {
    let (registry, mut ferry) = local_setup();
    let images: Vec<PushedImage> = (1..=4)
        .map(|i| push_image_http(&registry, "team/app", &i.to_string(), &[10_000]))
        .collect();
    let url = |ferry: &Ferry, img: &PushedImage| manifest_url(ferry, &img.repo, &img.tag);
    assert_manifest_ok(
        &manifest_status(&url(&ferry, &images[0])).await,
        &images[0],
        "before",
    );
    let path = ferry.config_path().display().to_string();
    let good = ferry.config().to_owned();

    // A syntax error, on SIGHUP.
    let mark = reconfigure(&mut ferry, true, |text| {
        text.replace("[[upstream]]", "[[upstream]\nname = ")
    });
    let refused = expect_log(&ferry, mark, &["configuration refused"]);
    assert!(
        refused.contains(&format!("{path}:")) && refused.contains("SIGHUP"),
        "the refusal names the file and line: {refused}"
    );
    assert_manifest_ok(
        &manifest_status(&url(&ferry, &images[1])).await,
        &images[1],
        "after a refused syntax error",
    );

    // Overlapping rules, by changing the file alone.
    let mark = reconfigure(&mut ferry, false, |_| {
        format!(
            "{good}\n[[rule]]\nname = \"one\"\nsource = \"mirror.ferry-test.invalid/*\"\ntarget = \"team/*\"\nupstream = \"local\"\n\n\
             [[rule]]\nname = \"two\"\nsource = \"other.ferry-test.invalid/*\"\ntarget = \"team/sub/*\"\nupstream = \"local\"\n"
        )
    });
    let refused = expect_log(&ferry, mark, &["configuration refused", "conflict"]);
    let rule_two_line = ferry
        .config()
        .lines()
        .position(|l| l == "name = \"two\"")
        .expect("rule two")
        + 1;
    assert!(
        refused.contains(&format!("{path}:{rule_two_line}:"))
            && refused.contains("config file changed"),
        "the refusal names the file and the line of the conflicting rule: {refused}"
    );
    // Two more polls: the same bad file is not refused again.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        ferry.log_lines(mark, &["configuration refused"]).len(),
        1,
        "one line per refused change\n{}",
        &ferry.log()[mark..]
    );
    assert_manifest_ok(
        &manifest_status(&url(&ferry, &images[2])).await,
        &images[2],
        "after refused overlapping rules",
    );

    // A valid file whose listen address changed: reloaded, the address kept.
    let addr = ferry.addr().to_owned();
    let mark = reconfigure(&mut ferry, true, |_| {
        good.replace("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:1\"")
    });
    let restart = expect_log(&ferry, mark, &["needs a restart"]);
    assert!(restart.contains("server.listen"), "{restart}");
    expect_log(&ferry, mark, &["configuration reloaded"]);
    assert_eq!(ferry.addr(), addr);
    assert_manifest_ok(
        &manifest_status(&url(&ferry, &images[3])).await,
        &images[3],
        "after a reload on the same address",
    );
    ferry.assert_running();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_deny_pattern_applies_on_reload() {
    let (registry, mut ferry) = local_setup();
    let img = push_image_http(&registry, "team/app", "1", &[10_000]);
    let url = manifest_url(&ferry, &img.repo, &img.tag);
    assert_manifest_ok(&manifest_status(&url).await, &img, "allowed at first");

    let mark = reconfigure(&mut ferry, true, |text| {
        text.replace("name = \"local\"", "name = \"local\"\ndeny = [\"team/**\"]")
    });
    expect_log(&ferry, mark, &["configuration reloaded"]);
    get(&url, &[media::OCI_MANIFEST])
        .await
        .assert_error(403, "DENIED");

    // Lifted again, by changing the file alone.
    let mark = reconfigure(&mut ferry, false, |text| {
        text.replace("deny = [\"team/**\"]\n", "")
    });
    expect_log(
        &ferry,
        mark,
        &["configuration reloaded", "config file changed"],
    );
    assert_manifest_ok(&manifest_status(&url).await, &img, "allowed again");
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_password_files_apply_when_rotated_and_when_renamed() {
    const USER: &str = "ferry-bot";
    const PASSWORD: &str = "Upstream-S3cret-Rotation-4c1e";
    const WRONG: &str = "Not-The-Password-88d0";
    let registry = Registry::start(RegistryAuth::basic(USER, PASSWORD));
    let images: Vec<PushedImage> = (1..=3)
        .map(|i| push_image_http(&registry, "team/app", &i.to_string(), &[10_000]))
        .collect();
    let mut ferry = FerryBuilder::new()
        .upstream(Upstream::local(&registry.url()).basic_auth(USER, WRONG))
        .start();
    let url = |ferry: &Ferry, i: usize| manifest_url(ferry, "team/app", &images[i].tag);
    get(&url(&ferry, 0), &[media::OCI_MANIFEST])
        .await
        .assert_error(401, "UNAUTHORIZED");

    // Rotated in place, as a Secret mount does: no reload needed.
    let dir = ferry.config_path().parent().expect("ferry dir").to_owned();
    let file = dir.join("upstream-0.password");
    let tmp = dir.join("upstream-0.password.new");
    std::fs::write(&tmp, PASSWORD).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    assert_manifest_ok(
        &manifest_status(&url(&ferry, 0)).await,
        &images[0],
        "with the rotated password",
    );

    // The config names another file (with a wrong password): applies on SIGHUP.
    let other = dir.join("other.password");
    std::fs::write(&other, WRONG).unwrap();
    let (old, new) = (file.display().to_string(), other.display().to_string());
    let mark = reconfigure(&mut ferry, true, |text| text.replace(&old, &new));
    let line = expect_log(&ferry, mark, &["configuration reloaded"]);
    assert!(line.contains("upstreams_changed=local"), "{line}");
    get(&url(&ferry, 1), &[media::OCI_MANIFEST])
        .await
        .assert_error(401, "UNAUTHORIZED");
    // And back to the right one.
    let mark = reconfigure(&mut ferry, true, |text| text.replace(&new, &old));
    expect_log(&ferry, mark, &["configuration reloaded"]);
    assert_manifest_ok(
        &manifest_status(&url(&ferry, 2)).await,
        &images[2],
        "with the right file again",
    );
    for secret in [PASSWORD, WRONG] {
        assert!(
            !ferry.log().contains(secret),
            "a password reached ferry's log"
        );
    }
}
