//! The binary under test: `ferry serve --config <file>` with a config written by the
//! test kit's [`FerryConfig`].
//!
//! The config listens on `127.0.0.1:0` (unless [`FerryBuilder::listen`] says otherwise);
//! the harness learns the address from the first
//! log line containing `listening on http://` (stderr or stdout), within 15 s.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_testkit::ferry_config::{FerryConfig, last_listening_addr, listening_addr};

use super::process::{ChildGuard, without_proxy_env};

#[allow(unused_imports)] // `UpstreamAuth` is part of the harness's API, for the tests to name.
pub use ferry_testkit::ferry_config::{LOCAL, LOCAL_REGISTRY, Upstream, UpstreamAuth};

/// Builds a Ferry config and starts it.
#[derive(Clone, Debug, Default)]
pub struct FerryBuilder {
    config: FerryConfig,
    args: Vec<String>,
    env: Vec<(String, String)>,
    prefix: Vec<String>,
    config_from_env: bool,
}

impl FerryBuilder {
    pub fn new() -> FerryBuilder {
        FerryBuilder::default()
    }

    /// A builder around `config` (e.g. one a test kit helper made).
    pub fn from_config(config: FerryConfig) -> FerryBuilder {
        FerryBuilder {
            config,
            ..FerryBuilder::default()
        }
    }

    pub fn upstream(mut self, upstream: Upstream) -> FerryBuilder {
        self.config = self.config.upstream(upstream);
        self
    }

    /// Appends a raw `key = value` line to the `[server]` table.
    pub fn server_raw(mut self, line: &str) -> FerryBuilder {
        self.config = self.config.server_raw(line);
        self
    }

    /// Appends raw TOML (whole tables) at the end of the config.
    pub fn extra_toml(mut self, toml: &str) -> FerryBuilder {
        self.config = self.config.extra_toml(toml);
        self
    }

    /// Sets an environment variable for the Ferry process.
    pub fn env(mut self, key: &str, value: &str) -> FerryBuilder {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// `[server] listen` in the file (default `127.0.0.1:0`). Ferry must still print a
    /// `listening on http://` line (e.g. because `FERRY_SERVER_LISTEN` overrides it).
    pub fn listen(mut self, addr: &str) -> FerryBuilder {
        self.config = self.config.listen(addr);
        self
    }

    /// Appends an argument after `serve --config <file>` (e.g. `--log-format`).
    pub fn arg(mut self, arg: &str) -> FerryBuilder {
        self.args.push(arg.to_owned());
        self
    }

    /// `[storage] root` (default: `store/` in Ferry's temp dir), e.g. a directory on a
    /// small file system. The caller owns it; it must outlive the [`Ferry`].
    pub fn storage_root(mut self, path: &Path) -> FerryBuilder {
        self.config = self.config.storage_root(path);
        self
    }

    /// Runs Ferry through a program that execs it, e.g.
    /// `["prlimit", "--nofile=1024:1024", "--"]` (the process keeps Ferry's pid).
    pub fn command_prefix(mut self, prefix: &[&str]) -> FerryBuilder {
        self.prefix = prefix.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Names the config file in `FERRY_CONFIG` instead of `--config`.
    pub fn config_from_env(mut self) -> FerryBuilder {
        self.config_from_env = true;
        self
    }

    pub fn start(self) -> Ferry {
        let dir = super::temp_dir("ferry");
        let store = self.config.store_in(dir.path());
        let (config_path, config) = self.config.write(dir.path());
        let mut ferry = Ferry {
            child: None,
            addr: String::new(),
            log: Arc::new(Mutex::new(String::new())),
            readers: Vec::new(),
            config_path,
            config,
            store,
            env: self.env,
            args: self.args,
            prefix: self.prefix,
            config_from_env: self.config_from_env,
            starts: 0,
            start_offset: 0,
            dir,
        };
        ferry.spawn();
        ferry
    }
}

/// A running Ferry; killed when dropped. Its temp dir holds the config, the store
/// (`store/`), secret files and the logs of every start (`ferry-N.log`).
pub struct Ferry {
    child: Option<ChildGuard>,
    addr: String,
    log: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    config_path: PathBuf,
    config: String,
    store: PathBuf,
    env: Vec<(String, String)>,
    args: Vec<String>,
    prefix: Vec<String>,
    /// `FERRY_CONFIG=<file>` instead of `--config <file>`.
    config_from_env: bool,
    starts: usize,
    /// Length of `log` when the current process started: where its own lines begin.
    start_offset: usize,
    dir: tempfile::TempDir,
}

/// The `listening on http://ADDR` address in `line`, if any.
pub fn parse_listen_line(line: &str) -> Option<String> {
    listening_addr(line, "http")
}

impl Ferry {
    /// The path of the binary under test.
    pub fn binary() -> &'static str {
        env!("CARGO_BIN_EXE_ferry")
    }

    /// The binary for a one-off command (`config check`, `node-config`, `fsck`, …),
    /// the caller adds the arguments. None of the test environment's `FERRY_*`
    /// variables reach it (Ferry would apply them, or refuse the suite's own such as
    /// `FERRY_CRASH_ROUNDS`), and `NO_COLOR=1` keeps escape codes out of the output
    /// the tests read.
    pub fn cli_command() -> Command {
        let mut cmd = Command::new(Ferry::binary());
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("FERRY_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("NO_COLOR", "1");
        cmd
    }

    fn spawn(&mut self) {
        self.starts += 1;
        // The readers of the previous process were joined when it stopped, so nothing
        // of it can land after this mark.
        self.start_offset = self.log.lock().unwrap().len();
        let mut cmd = match self.prefix.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(Ferry::binary());
                cmd
            }
            None => Command::new(Ferry::binary()),
        };
        if self.config_from_env {
            // In its temp dir: a Ferry that ignored the variable would put the
            // built-in config's `./ferry-data` there, not in the test's directory.
            cmd.arg("serve")
                .env("FERRY_CONFIG", &self.config_path)
                .current_dir(self.dir.path());
        } else {
            cmd.arg("serve").arg("--config").arg(&self.config_path);
        }
        cmd.args(&self.args);
        // Debug logs on, so the leak checks read everything Ferry can log.
        if std::env::var_os("FERRY_LOG").is_none() {
            cmd.env("FERRY_LOG", "info,ferry=debug,ferry_storage=debug");
        }
        without_proxy_env(&mut cmd);
        cmd.env("NO_COLOR", "1");
        // Settings of the test suite itself (`FERRY_CRASH_ROUNDS`, …) are not Ferry's,
        // which refuses unknown `FERRY_*` variables.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("FERRY_CRASH_") {
                cmd.env_remove(k);
            }
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let name = format!("ferry-{}", self.starts);
        let mut child = ChildGuard::spawn_piped(&name, cmd, self.dir.path());
        let log_path = self.dir.path().join(format!("{name}.log"));
        let log_file = Arc::new(Mutex::new(
            std::fs::File::create(&log_path).expect("create ferry log"),
        ));
        let (tx, rx) = mpsc::channel::<String>();
        let stdout = child.child_mut().stdout.take().expect("stdout pipe");
        let stderr = child.child_mut().stderr.take().expect("stderr pipe");
        let streams: [Box<dyn Read + Send>; 2] = [Box::new(stderr), Box::new(stdout)];
        for stream in streams {
            let tx = tx.clone();
            let log = self.log.clone();
            let file = log_file.clone();
            self.readers.push(std::thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                let mut buf = Vec::new();
                loop {
                    buf.clear();
                    match reader.read_until(b'\n', &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    let line = String::from_utf8_lossy(&buf).into_owned();
                    let _ = file.lock().unwrap().write_all(line.as_bytes());
                    log.lock().unwrap().push_str(&line);
                    if let Some(addr) = parse_listen_line(&line) {
                        let _ = tx.send(addr);
                    }
                }
            }));
        }
        drop(tx);
        let addr = match rx.recv_timeout(Duration::from_secs(15)) {
            Ok(addr) => addr,
            Err(_) => {
                let status = child.try_exit_status();
                child.kill();
                panic!(
                    "ferry printed no `listening on http://` line within 15s (exit status: {status:?})\n\
                     config ({}):\n{}\n--- ferry log (tail) ---\n{}",
                    self.config_path.display(),
                    self.config,
                    super::process::tail_str(&self.log(), 60)
                );
            }
        };
        self.addr = addr;
        self.child = Some(child);
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The `[tls]` listener's `127.0.0.1:PORT`, from the last `listening on https://`
    /// line (Ferry logs it before the plain one). Panics if there is none.
    pub fn tls_addr(&self) -> String {
        let log = self.log();
        last_listening_addr(&log, "https")
            .unwrap_or_else(|| panic!("ferry logged no `listening on https://` line\n{log}"))
    }

    /// `[storage] root`.
    pub fn storage_root(&self) -> PathBuf {
        self.store.clone()
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The config text.
    pub fn config(&self) -> &str {
        &self.config
    }

    /// Everything Ferry wrote to stderr and stdout so far, across restarts.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// What the current process wrote so far: the log from its start on, without the
    /// lines of earlier starts (which would satisfy a check meant for this one).
    pub fn log_since_start(&self) -> String {
        self.log.lock().unwrap()[self.start_offset..].to_owned()
    }

    /// Where the current process's lines begin in [`Ferry::log`], as a `from` for
    /// [`Ferry::log_lines`] and [`Ferry::wait_for_log`].
    pub fn start_offset(&self) -> usize {
        self.start_offset
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_exit_status().is_none())
    }

    /// Stops the process gracefully (SIGTERM; SIGKILL after 10 s) and starts it again
    /// with the same config and store; the address changes (port 0). Panics if Ferry
    /// did not exit on SIGTERM within 10 s.
    pub fn restart(&mut self) {
        let clean = self.terminate();
        assert!(
            clean,
            "ferry did not exit within 10 s of SIGTERM\n{}",
            super::process::tail_str(&self.log(), 40)
        );
        self.spawn();
    }

    /// Kills the process with SIGKILL (a crash) and starts it again with the same
    /// config and store.
    pub fn crash_restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Starts the process again (same config and store) after [`Ferry::stop`] or
    /// [`Ferry::terminate`]; the address changes. Panics if it is still running, or if
    /// it does not print its `listening on` line within 15 s.
    pub fn start_again(&mut self) {
        assert!(
            self.child.is_none(),
            "start_again: ferry is still running; stop or terminate it first"
        );
        self.spawn();
    }

    /// SIGTERM, then waits (≤ 10 s, then SIGKILL). Returns whether it exited on its own.
    pub fn terminate(&mut self) -> bool {
        let clean = match self.child.take() {
            Some(mut child) => child.terminate(Duration::from_secs(10)),
            None => true,
        };
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        clean
    }

    /// The process id (for `/proc/<pid>/status`).
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(|c| c.id())
            .expect("ferry is running")
    }

    /// Sends `signal` (`HUP`, `TERM`, `INT`) to the process and returns at once.
    pub fn signal(&mut self, signal: &str) {
        let pid = self
            .child
            .as_ref()
            .map(|c| c.id())
            .expect("ferry is running");
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {pid}: {status}");
    }

    /// Waits up to `timeout` for the process to exit on its own and returns its exit
    /// status; `None` if it is still running then (it is left running).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let status = self.child.as_mut().and_then(|c| c.try_exit_status());
            if let Some(status) = status {
                self.child = None;
                for r in self.readers.drain(..) {
                    let _ = r.join();
                }
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Replaces the config file the way a Kubernetes ConfigMap update does (a new file
    /// renamed over it); restarts use the new text too.
    pub fn write_config(&mut self, text: &str) {
        let tmp = self.config_path.with_extension("toml.new");
        std::fs::write(&tmp, text).expect("write the new ferry config");
        std::fs::rename(&tmp, &self.config_path).expect("rename the new ferry config");
        self.config = text.to_owned();
    }

    /// The log's lines after its first `from` bytes that hold every one of `needles`.
    pub fn log_lines(&self, from: usize, needles: &[&str]) -> Vec<String> {
        self.log()[from..]
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .map(str::to_owned)
            .collect()
    }

    /// Waits up to `timeout` for a log line, after the first `from` bytes of the log,
    /// that contains every one of `needles`; returns it, or `None`.
    pub fn wait_for_log(&self, from: usize, needles: &[&str], timeout: Duration) -> Option<String> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let log = self.log();
            let found = log
                .get(from..)
                .unwrap_or("")
                .lines()
                .find(|l| needles.iter().all(|n| l.contains(n)));
            if let Some(line) = found {
                return Some(line.to_owned());
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills (SIGKILL) and reaps the process.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill();
        }
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }

    /// Panics with the log tail unless Ferry is still running.
    pub fn assert_running(&mut self) {
        if !self.is_running() {
            panic!(
                "ferry exited unexpectedly\n{}",
                super::process::tail_str(&self.log(), 60)
            );
        }
    }
}

impl Drop for Ferry {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "--- ferry log (tail) ---\n{}",
                super::process::tail_str(&self.log(), 40)
            );
        }
    }
}
