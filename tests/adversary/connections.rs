//! Idle and slow connections (issue 11, item 2): sockets that send nothing, or a byte
//! a second, must not stop Ferry serving others. Ferry closes them after
//! `[server] header_read_timeout` / `idle_timeout`, and past its bound on open
//! connections (below the open-file limit) a new client is still served, the
//! never-used connections closed first, with one warning.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::harness::acr::tls::TestCa;
use crate::harness::ferry::{Ferry, FerryBuilder, Upstream};
use crate::harness::images::push_image_http;
use crate::harness::process::require_binary;
use crate::harness::registry::{Registry, RegistryAuth};

/// No upstream is asked in these tests: `GET /v2/` is Ferry's own.
fn unused_upstream() -> Upstream {
    Upstream::local("http://127.0.0.1:9")
}

/// `GET /v2/` on a new connection; the status line, or why there is none, within 5 s.
fn get_v2(addr: &str) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: ferry\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    text.lines()
        .next()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .ok_or_else(|| "no answer".to_string())
}

/// Reads `s` until Ferry closes it (EOF or reset) or `deadline`; whether it closed.
fn closed_by(s: &mut TcpStream, deadline: Instant) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false;
            }
            Err(_) => return true,
        }
    }
}

/// The test process itself holds 1,100 sockets: its soft limit must allow that.
fn allow_descriptors(n: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read or write only the struct given.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_cur < n as libc::rlim_t {
            assert!(
                limit.rlim_max >= n as libc::rlim_t,
                "the test needs {n} descriptors; the hard limit is {}",
                limit.rlim_max
            );
            limit.rlim_cur = limit.rlim_max;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        }
    }
}

/// The attack: under a 1,024 descriptor limit, 1,100 connections that send
/// nothing. With the timeouts long (30 s), only the bound on connections can keep
/// Ferry serving: a new client gets its 200 within 5 s, the oldest idle sockets are
/// the ones closed, one warning says so, and Ferry never runs out of descriptors.
#[test]
fn idle_sockets_past_the_descriptor_limit_do_not_stop_new_clients() {
    let prlimit = require_binary("prlimit", "util-linux");
    allow_descriptors(1_100 + 200);
    let ferry = FerryBuilder::new()
        .upstream(unused_upstream())
        .server_raw("header_read_timeout = \"30s\"")
        .command_prefix(&[prlimit.to_str().unwrap(), "--nofile=1024:1024", "--"])
        .start();
    assert_eq!(get_v2(ferry.addr()).as_deref(), Ok("HTTP/1.1 200 OK"));
    let from = ferry.log().len();

    let addr = ferry.addr().parse().unwrap();
    let mut idle = Vec::with_capacity(1_100);
    let mut refused = 0;
    for _ in 0..1_100 {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
            Ok(s) => idle.push(s),
            Err(_) => refused += 1,
        }
    }
    assert!(
        idle.len() > 1_024,
        "only {} idle sockets connected ({refused} failed): the attack needs more than the limit",
        idle.len()
    );

    let started = Instant::now();
    let answer = get_v2(ferry.addr());
    let took = started.elapsed();
    assert_eq!(
        answer.as_deref(),
        Ok("HTTP/1.1 200 OK"),
        "GET /v2/ beside {} idle sockets under a 1,024 descriptor limit (after {took:?})",
        idle.len()
    );
    assert!(took < Duration::from_secs(5), "answered after {took:?}");

    // The oldest idle sockets were closed to make room, by Ferry, long before their
    // header read timeout.
    let deadline = Instant::now() + Duration::from_secs(5);
    for (i, s) in idle.iter_mut().take(3).enumerate() {
        assert!(
            closed_by(s, deadline),
            "idle socket {i} (among the oldest) still open"
        );
    }
    let warning = ferry
        .wait_for_log(from, &["connection limit reached"], Duration::from_secs(5))
        .expect("a warning about the connection limit");
    assert!(warning.contains("WARN"), "{warning}");
    let closed: usize = warning
        .split_once("closed=")
        .and_then(|(_, n)| n.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count of closed connections: {warning}"));
    assert!(
        closed >= idle.len() - 1_024,
        "{closed} closed, fewer than needed to stay below the limit: {warning}"
    );
    let log = ferry.log();
    let after = &log[from..];
    assert_eq!(
        after.matches("connection limit reached").count(),
        1,
        "one warning for the burst:\n{after}"
    );
    assert!(
        !after.contains("cannot accept connections"),
        "Ferry ran out of descriptors:\n{after}"
    );
    eprintln!(
        "{} idle sockets, GET /v2/ answered in {took:?}; {warning}",
        idle.len()
    );
}

/// Writes one byte of a request head a second until the write fails or 20 bytes.
fn slowloris(s: &TcpStream) -> std::thread::JoinHandle<()> {
    let mut s = s.try_clone().unwrap();
    std::thread::spawn(move || {
        for b in b"GET /v2/ HTTP/1.1\r\nHost: ferry\r\n".iter().take(20) {
            if s.write_all(&[*b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    })
}

/// Sockets that send nothing (plain and TLS, before any handshake), send an HTTP/2
/// preface and nothing more, or a request head a byte a second: each is closed by
/// Ferry within the header read timeout (2 s here) plus the sweep's slack, and so is
/// a slow head on a kept-alive connection; a keep-alive connection idle after a
/// request is closed after the idle timeout (5 s); other clients are served meanwhile.
#[test]
fn silent_slow_and_idle_connections_are_closed_after_their_timeouts() {
    let dir = crate::harness::temp_dir("conns");
    let ca = TestCa::generate(dir.path());
    let leaf = ca.leaf(&["127.0.0.1"]);
    let cert = dir.path().join("server.crt");
    let key = dir.path().join("server.key");
    std::fs::write(&cert, &leaf.cert_pem).unwrap();
    std::fs::write(
        &key,
        pem::encode(&pem::Pem::new("PRIVATE KEY", leaf.key_pkcs8_der.clone())),
    )
    .unwrap();
    let ferry: Ferry = FerryBuilder::new()
        .upstream(unused_upstream())
        .server_raw("header_read_timeout = \"2s\"")
        .server_raw("idle_timeout = \"5s\"")
        .extra_toml(&format!(
            "[tls]\nlisten = \"127.0.0.1:0\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            cert.display(),
            key.display()
        ))
        .start();
    let plain = ferry.addr().to_owned();
    let tls = ferry.tls_addr();
    let connect = |addr: &str| TcpStream::connect(addr).expect("connect");

    let opened = Instant::now();
    let mut sockets: Vec<(&str, TcpStream)> = Vec::new();
    for _ in 0..3 {
        sockets.push(("silent", connect(&plain)));
    }
    sockets.push(("silent TLS", connect(&tls)));
    let mut h2 = connect(&plain);
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .unwrap();
    sockets.push(("HTTP/2 preface only", h2));
    let mut writers = Vec::new();
    for _ in 0..3 {
        let s = connect(&plain);
        writers.push(slowloris(&s));
        sockets.push(("a byte a second", s));
    }

    // Others are served meanwhile.
    assert_eq!(get_v2(&plain).as_deref(), Ok("HTTP/1.1 200 OK"));
    let deadline = opened + Duration::from_millis(2_000 + 3_000);
    for (what, s) in &mut sockets {
        assert!(
            closed_by(s, deadline),
            "{what} connection still open {:?} after it opened (header_read_timeout 2s)",
            opened.elapsed()
        );
    }
    let closed_after = opened.elapsed();

    // Two keep-alive connections make a request each. Then one idles: closed after
    // the idle timeout. The other sends its next request head a byte a second:
    // closed after the header read timeout counted from that head's first byte,
    // before the idle timeout would have closed it.
    let used = || {
        let mut s = connect(&plain);
        s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: ferry\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 512];
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = s.read(&mut buf).expect("an answer");
        let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        s
    };
    let (mut kept, mut slow) = (used(), used());
    let answered = Instant::now();
    writers.push(slowloris(&slow));
    assert!(
        closed_by(&mut slow, answered + Duration::from_millis(2_000 + 2_000)),
        "a slow second request head still open {:?} after its first byte (header_read_timeout 2s, idle_timeout 5s)",
        answered.elapsed()
    );
    let slow_closed_after = answered.elapsed();
    assert!(
        closed_by(&mut kept, answered + Duration::from_millis(5_000 + 3_000)),
        "an idle keep-alive connection still open {:?} after its answer (idle_timeout 5s)",
        answered.elapsed()
    );
    let idle_closed_after = answered.elapsed();
    for w in writers {
        w.join().unwrap();
    }
    assert_eq!(get_v2(&plain).as_deref(), Ok("HTTP/1.1 200 OK"));
    eprintln!(
        "silent/slow sockets closed within {closed_after:?} of opening; a slow second head \
         {slow_closed_after:?} after its first byte; idle keep-alive {idle_closed_after:?} after its answer"
    );
}

/// HTTP/2 frame types the tests read and write.
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const GOAWAY: u8 = 7;

/// Sends the HTTP/2 preface, an empty SETTINGS and `GET <path>` on stream 1 (HPACK:
/// :method GET, :scheme http, :path, :authority "ferry"; END_STREAM | END_HEADERS).
fn h2_get(s: &mut TcpStream, path: &str) {
    assert!(path.len() < 127, "one-byte HPACK length");
    let mut block = vec![0x82, 0x86, 0x44, path.len() as u8];
    block.extend_from_slice(path.as_bytes());
    block.extend_from_slice(b"\x41\x05ferry");
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0".to_vec();
    out.extend_from_slice(&[0, 0, block.len() as u8, HEADERS, 0x05, 0, 0, 0, 1]);
    out.extend_from_slice(&block);
    s.write_all(&out).unwrap();
}

/// Sends an HTTP/2 PING every 300 ms, `count` times or until the connection is gone,
/// as some clients do on idle connections.
fn h2_pinger(s: &TcpStream, count: u8) -> std::thread::JoinHandle<()> {
    let mut pinger = s.try_clone().unwrap();
    std::thread::spawn(move || {
        for i in 0..count {
            let ping = [0, 0, 8, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, i];
            if pinger.write_all(&ping).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    })
}

/// The frames of an HTTP/2 connection, read until it ends or `deadline`: the types
/// seen, and whether the server closed it.
fn h2_frames_until_closed(s: &mut TcpStream, deadline: Instant) -> (Vec<u8>, bool) {
    let mut types = Vec::new();
    let mut header = [0u8; 9];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (types, false);
        }
        s.set_read_timeout(Some(left)).unwrap();
        if let Err(e) = s.read_exact(&mut header) {
            let open = matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut);
            return (types, !open);
        }
        types.push(header[3]);
        let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let mut payload = vec![0u8; len.min(1 << 20)];
        if let Err(e) = s.read_exact(&mut payload) {
            let open = matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut);
            return (types, !open);
        }
    }
}

/// HTTP/2 (prior knowledge, as `h2c`): a connection idle after its request is told to
/// go away (`GOAWAY`) after the idle timeout, and closed; control frames do not keep
/// it open.
#[test]
fn an_idle_http2_connection_gets_goaway_after_the_idle_timeout() {
    let ferry = FerryBuilder::new()
        .upstream(unused_upstream())
        .server_raw("header_read_timeout = \"2s\"")
        .server_raw("idle_timeout = \"3s\"")
        .start();
    let mut s = TcpStream::connect(ferry.addr()).expect("connect");
    h2_get(&mut s, "/v2/");
    let sent = Instant::now();
    let pings = h2_pinger(&s, 30);
    let (types, closed) =
        h2_frames_until_closed(&mut s, sent + Duration::from_millis(3_000 + 2_000 + 3_000));
    let took = sent.elapsed();
    pings.join().unwrap();
    assert!(types.contains(&HEADERS), "no response: frames {types:?}");
    assert!(
        types.contains(&GOAWAY),
        "no GOAWAY within {took:?} (idle_timeout 3s): frames {types:?}"
    );
    assert!(
        closed,
        "connection still open after {took:?}: frames {types:?}"
    );
    eprintln!("idle HTTP/2 connection: GOAWAY and closed {took:?} after its request");
}

/// A slow reader: a client that asks for a 32 MiB blob and then takes nothing holds a
/// request in flight; Ferry cuts it once no response byte has moved for the idle
/// timeout, instead of holding the connection (and its buffers) forever.
#[test]
fn a_client_that_stops_reading_is_cut_after_the_idle_timeout() {
    const SIZE: usize = 32 << 20;
    let registry = Registry::start(RegistryAuth::None);
    let img = push_image_http(&registry, "team/big", "1", &[SIZE]);
    let blob = img.largest_layer();
    let ferry = FerryBuilder::new()
        .upstream(Upstream::local(&registry.url()))
        .server_raw("idle_timeout = \"3s\"")
        .start();
    let mut s = TcpStream::connect(ferry.addr()).expect("connect");
    write!(
        s,
        "GET /v2/local/team/big/blobs/{} HTTP/1.1\r\nHost: ferry\r\nConnection: close\r\n\r\n",
        blob.digest
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
        s.read_exact(&mut byte).expect("response head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // The attack: take nothing for longer than the idle timeout (3 s) and its slack.
    std::thread::sleep(Duration::from_secs(6));
    let mut body = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let deadline = Instant::now() + Duration::from_secs(10);
    let ended = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break false;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => body += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break false;
            }
            Err(_) => break true,
        }
    };
    assert!(ended, "the connection neither ended nor delivered in 10 s");
    assert!(
        body < SIZE,
        "the whole blob ({body} bytes) waited for a client that stopped reading"
    );
    eprintln!("a client that stopped reading got {body} of {SIZE} bytes, then the cut");
}

/// At start Ferry raises its soft open-file limit to the hard one (1,024 is a common
/// soft default, too few for a registry's clients).
#[test]
fn the_open_file_limit_is_raised_to_the_hard_limit() {
    let prlimit = require_binary("prlimit", "util-linux");
    let ferry = FerryBuilder::new()
        .upstream(unused_upstream())
        .command_prefix(&[prlimit.to_str().unwrap(), "--nofile=256:4096", "--"])
        .start();
    let pid = ferry.pid();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let numbers: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers, ["4096", "4096"], "{line}");
}

/// The same on HTTP/2, where the socket never blocks: a client asks for a 32 MiB blob
/// and never reopens its flow-control window (no `WINDOW_UPDATE`), while it reads
/// what it got and keeps pinging. Ferry cuts the connection once no chunk has been
/// taken for the idle timeout.
#[test]
fn an_http2_client_that_never_reopens_its_window_is_cut_after_the_idle_timeout() {
    const SIZE: usize = 32 << 20;
    let registry = Registry::start(RegistryAuth::None);
    let img = push_image_http(&registry, "team/big", "1", &[SIZE]);
    let blob = img.largest_layer();
    let ferry = FerryBuilder::new()
        .upstream(Upstream::local(&registry.url()))
        .server_raw("idle_timeout = \"3s\"")
        .start();
    let mut s = TcpStream::connect(ferry.addr()).expect("connect");
    h2_get(&mut s, &format!("/v2/local/team/big/blobs/{}", blob.digest));
    let sent = Instant::now();
    let pings = h2_pinger(&s, 40);
    let (types, closed) = h2_frames_until_closed(&mut s, sent + Duration::from_secs(3 + 7));
    let took = sent.elapsed();
    pings.join().unwrap();
    assert!(types.contains(&HEADERS), "no response: frames {types:?}");
    assert!(types.contains(&DATA), "no body: frames {types:?}");
    assert!(
        closed,
        "a stalled HTTP/2 download still open after {took:?} (idle_timeout 3s)"
    );
    eprintln!("an HTTP/2 client with a closed window was cut {took:?} after its request");
}
