//! Child processes that die with their guard, free ports, readiness polling, log tails.
//!
//! A test's children die with their [`ChildGuard`]. The benchmark, which runs for
//! minutes and may be interrupted, also calls [`install_signal_handlers`]: from then on
//! every child gets a process group of its own (so nginx's workers go with their
//! master) and `PR_SET_PDEATHSIG`, and SIGINT, SIGTERM or SIGHUP to the benchmark kill
//! every group still running.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

/// Whether children get process groups of their own (see [`install_signal_handlers`]).
static GROUPED: AtomicBool = AtomicBool::new(false);
/// Process groups to kill on a signal (0 = free slot).
static GROUPS: [AtomicI32; 64] = [const { AtomicI32::new(0) }; 64];

extern "C" fn on_signal(sig: libc::c_int) {
    for slot in &GROUPS {
        let pgid = slot.load(Ordering::SeqCst);
        if pgid > 0 {
            // SAFETY: kill(2) is async-signal-safe.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
    }
    // SAFETY: _exit(2) is async-signal-safe.
    unsafe { libc::_exit(128 + sig) };
}

/// From now on every child is started in a process group of its own with
/// `PR_SET_PDEATHSIG` (it dies when the thread that started it ends: start children
/// from a thread that outlives them), and SIGINT, SIGTERM and SIGHUP kill every such
/// group still running before this process exits. For long runs that may be
/// interrupted (the benchmark); call once, early.
pub fn install_signal_handlers() {
    GROUPED.store(true, Ordering::SeqCst);
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only calls async-signal-safe functions.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

fn register_group(pgid: i32) {
    for slot in &GROUPS {
        if slot
            .compare_exchange(0, pgid, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            return;
        }
    }
    panic!("more than {} child process groups at once", GROUPS.len());
}

fn unregister_group(pgid: i32) {
    for slot in &GROUPS {
        let _ = slot.compare_exchange(pgid, 0, Ordering::SeqCst, Ordering::SeqCst);
    }
}

/// Spawns `cmd`, in a process group of its own if [`install_signal_handlers`] was
/// called; returns the child and whether it leads a group.
fn spawn_child(name: &str, cmd: &mut Command) -> (Child, bool) {
    let grouped = GROUPED.load(Ordering::SeqCst);
    if grouped {
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::setpgid(0, 0);
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
    }
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {name} ({cmd:?}): {e}"));
    if grouped {
        register_group(child.id() as i32);
    }
    (child, grouped)
}

/// A path to `name` if it is an executable on `$PATH` or in the sbin directories (where
/// Debian puts nginx); `name` itself if it is a path to a file.
pub fn find_binary(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return Some(PathBuf::from(name)).filter(|p| p.is_file());
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from));
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// Panics unless `binary` exists (a path, or found by [`find_binary`]), naming the
/// Debian package that provides it. Never skips: a missing tool is a failed test.
pub fn require_binary(binary: &str, debian_package: &str) -> PathBuf {
    find_binary(binary).unwrap_or_else(|| {
        panic!(
            "`{binary}` not found: install the Debian package `{debian_package}` \
             (apt-get install -y {debian_package}); tests/run.sh does this"
        )
    })
}

/// Clears the proxy variables (`HTTP_PROXY`, `https_proxy`, `ALL_PROXY`, …) from `cmd`'s
/// environment: everything the tests start is on loopback, and a proxy set for the
/// machine must not come between a client and it.
pub fn without_proxy_env(cmd: &mut Command) -> &mut Command {
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// A port on 127.0.0.1 that was free a moment ago. Only for programs that cannot bind
/// port 0 themselves; callers retry on "address already in use".
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// The last `lines` lines of the file at `path` (or a note that it is unreadable).
pub fn tail_file(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => tail_str(&String::from_utf8_lossy(&bytes), lines),
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// The last `lines` lines of `text`.
pub fn tail_str(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A spawned process that is killed (SIGKILL) and reaped when the guard drops.
///
/// stdout and stderr go to `<log_dir>/<name>.stdout` / `.stderr` unless the caller
/// took them as pipes (see [`ChildGuard::spawn_piped`]).
#[derive(Debug)]
pub struct ChildGuard {
    child: Option<Child>,
    /// Leads a process group of its own, killed with it (see [`install_signal_handlers`]).
    group: bool,
    name: String,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
}

impl ChildGuard {
    /// Spawns `cmd` with stdin closed and stdout/stderr written to files in `log_dir`.
    pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> ChildGuard {
        let stdout_path = log_dir.join(format!("{name}.stdout"));
        let stderr_path = log_dir.join(format!("{name}.stderr"));
        let stdout = File::create(&stdout_path).expect("create stdout log");
        let stderr = File::create(&stderr_path).expect("create stderr log");
        cmd.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
        let (child, group) = spawn_child(name, &mut cmd);
        ChildGuard {
            child: Some(child),
            group,
            name: name.to_owned(),
            stdout_path,
            stderr_path,
        }
    }

    /// Spawns `cmd` with stdout and stderr as pipes, which the caller takes with
    /// [`ChildGuard::child_mut`]; `log_dir` is only used to name the log files the
    /// caller is expected to write (`<name>.stdout`, `<name>.stderr`).
    pub fn spawn_piped(name: &str, mut cmd: Command, log_dir: &Path) -> ChildGuard {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let (child, group) = spawn_child(name, &mut cmd);
        ChildGuard {
            child: Some(child),
            group,
            name: name.to_owned(),
            stdout_path: log_dir.join(format!("{name}.stdout")),
            stderr_path: log_dir.join(format!("{name}.stderr")),
        }
    }

    pub fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("child already reaped")
    }

    pub fn id(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn stdout_path(&self) -> &Path {
        &self.stdout_path
    }

    pub fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }

    /// `Some(status)` if the process has exited.
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// The tails of both logs, for panic messages.
    pub fn log_tails(&self, lines: usize) -> String {
        format!(
            "--- {name} stderr (last {lines} lines) ---\n{}\n--- {name} stdout (last {lines} lines) ---\n{}",
            tail_file(&self.stderr_path, lines),
            tail_file(&self.stdout_path, lines),
            name = self.name
        )
    }

    /// Polls `url` until it answers any HTTP status (a 401 counts as ready) or `timeout`
    /// passes; panics with the log tails if the process exits or never answers.
    pub fn wait_for_http(&mut self, url: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit_status() {
                panic!(
                    "{} exited ({status}) before answering {url}\n{}",
                    self.name,
                    self.log_tails(40)
                );
            }
            if http_status(url, Duration::from_millis(500)).is_ok() {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} did not answer {url} within {timeout:?}\n{}",
                    self.name,
                    self.log_tails(40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM and waits up to `grace` for the process to exit, then SIGKILLs it.
    /// Returns whether it exited on its own.
    pub fn terminate(&mut self, grace: Duration) -> bool {
        let Some(child) = self.child.as_mut() else {
            return true;
        };
        if child.try_wait().ok().flatten().is_none() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if child.try_wait().ok().flatten().is_some() {
                // Reaps it, and what is left of its group.
                self.kill();
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        false
    }

    /// Waits up to `timeout` for the process to exit by itself and returns its status;
    /// kills it after that and returns None.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit_status() {
                self.kill();
                return Some(status);
            }
            if Instant::now() >= deadline {
                self.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills (SIGKILL) and reaps the process now, and whatever is left of its process
    /// group if it leads one (idempotent).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.group {
                let pgid = child.id() as i32;
                // SAFETY: kill(2) on a process group this process created.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
                unregister_group(pgid);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `url` until it answers any HTTP status or `timeout` passes.
pub fn wait_for_http(url: &str, timeout: Duration) -> Result<u16, String> {
    let deadline = Instant::now() + timeout;
    let mut last_err;
    loop {
        match http_status(url, Duration::from_millis(500)) {
            Ok(status) => return Ok(status),
            Err(e) => last_err = e,
        }
        if Instant::now() >= deadline {
            return Err(format!("{url} not answering after {timeout:?}: {last_err}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One blocking `GET` over plain HTTP/1.1 (std only, so it works inside or outside a
/// runtime), returning the status code.
pub fn http_status(url: &str, timeout: Duration) -> Result<u16, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("only http:// URLs: {url}"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr: SocketAddr = hostport
        .parse()
        .map_err(|e| format!("{hostport} is not an ip:port: {e}"))?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(timeout)).ok();
    stream.set_write_timeout(Some(timeout)).ok();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut head = [0u8; 32];
    let mut got = 0;
    while got < 12 {
        let n = stream.read(&mut head[got..]).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        got += n;
    }
    let text = String::from_utf8_lossy(&head[..got]);
    let status = text
        .strip_prefix("HTTP/1.")
        .and_then(|s| s.get(2..5))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("not an HTTP response: {text:?}"))?;
    Ok(status)
}

/// Runs `cmd` to completion with a time limit, capturing its output. Panics (with the
/// output) if it cannot start or runs past `timeout`; the caller checks the status.
pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> std::process::Output {
    let dir = crate::temp_dir("run");
    let out_path = dir.path().join("out");
    let err_path = dir.path().join("err");
    cmd.stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("create out"))
        .stderr(File::create(&err_path).expect("create err"));
    let desc = format!("{cmd:?}");
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {desc}: {e}"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{desc} still running after {timeout:?}; killed\nstderr:\n{}\nstdout:\n{}",
                tail_file(&err_path, 40),
                tail_file(&out_path, 40)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::process::Output {
        status,
        stdout: std::fs::read(&out_path).unwrap_or_default(),
        stderr: std::fs::read(&err_path).unwrap_or_default(),
    }
}

/// Like [`run_with_timeout`], but panics with the output unless the command succeeds.
pub fn run_ok(cmd: Command, timeout: Duration) -> std::process::Output {
    let desc = format!("{cmd:?}");
    let out = run_with_timeout(cmd, timeout);
    if !out.status.success() {
        panic!(
            "{desc} failed ({})\nstderr:\n{}\nstdout:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    out
}

/// A `kB` line of `/proc/<pid>/status` (`VmHWM`, `VmRSS`), in bytes.
pub fn status_bytes(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line[key.len()..]
        .trim_start_matches(':')
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}
