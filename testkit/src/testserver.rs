//! The servers that play the shared store in tests (Azurite, moto): a child process
//! on a free port of 127.0.0.1, ready once it answers HTTP, killed with its guard.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::process::{ChildGuard, free_port, wait_for_http, without_proxy_env};

/// `start` on a free port, and the port; another port if the process could not take
/// it (a free port may be taken again before the server binds it).
pub fn on_free_port<T>(what: &str, mut start: impl FnMut(u16) -> Option<T>) -> (u16, T) {
    for _ in 0..5 {
        let port = free_port();
        if let Some(server) = start(port) {
            return (port, server);
        }
    }
    panic!("{what} did not start");
}

/// Spawns `cmd` (logs in `dir`) and waits until `url` answers; `None`, with its log
/// tails printed, if it exited first (its port was taken) or did not answer in 30 s.
pub fn spawn_answering(name: &str, mut cmd: Command, dir: &Path, url: &str) -> Option<ChildGuard> {
    without_proxy_env(&mut cmd);
    let mut process = ChildGuard::spawn(name, cmd, dir);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && process.try_exit_status().is_none() {
        if wait_for_http(url, Duration::from_millis(200)).is_ok() {
            return Some(process);
        }
    }
    eprintln!("{name} did not start:\n{}", process.log_tails(20));
    None
}

/// Sends a bodiless HTTP/1.1 request to 127.0.0.1:`port`; the answer's status and body.
pub fn request(port: u16, method: &str, target: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the test server");
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("Content-Length: 0\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).expect("send");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    let status = answer
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_owned())
}

/// A server process on a fixed port and data directory, which a test can stop (the
/// store becomes unreachable) and start again.
pub struct Restartable {
    port: u16,
    // Dropped first: the process goes before its directory.
    process: Option<ChildGuard>,
    dir: tempfile::TempDir,
    what: &'static str,
    spawn: fn(u16, &Path) -> Option<ChildGuard>,
}

impl Restartable {
    /// `spawn` on a free port with a new directory, once it answers.
    pub fn start(what: &'static str, spawn: fn(u16, &Path) -> Option<ChildGuard>) -> Restartable {
        let dir = crate::temp_dir(&format!("ferry-{what}"));
        let (port, process) = on_free_port(what, |port| spawn(port, dir.path()));
        Restartable {
            port,
            process: Some(process),
            dir,
            what,
            spawn,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops it with SIGTERM (waiting up to 10 s).
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.terminate(Duration::from_secs(10));
        }
    }

    /// Starts it again on the same port and directory.
    pub fn restart(&mut self) {
        self.stop();
        let process = (self.spawn)(self.port, self.dir.path())
            .unwrap_or_else(|| panic!("{} restarts", self.what));
        self.process = Some(process);
    }
}
