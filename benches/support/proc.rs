//! Child processes that die with the benchmark, free ports, and what `/proc` says about
//! a server: CPU ticks, peak and current RSS, summed over its process tree.
//!
//! Every child is started in a process group of its own (so nginx's workers go with
//! their master) with `PR_SET_PDEATHSIG`, and its group is registered so that SIGINT,
//! SIGTERM or SIGHUP to the benchmark kills it too. [`Child`] kills and reaps the group
//! when dropped, including on panic.

use std::fs::File;
use std::io::Read as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Process groups to kill if the benchmark is interrupted (0 = free slot).
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

/// Installs the handler that kills every registered child group on SIGINT, SIGTERM and
/// SIGHUP. Call once, early.
pub fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only calls async-signal-safe functions.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

fn register(pgid: i32) {
    for slot in &GROUPS {
        if slot
            .compare_exchange(0, pgid, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            return;
        }
    }
    panic!("more than {} children at once", GROUPS.len());
}

fn unregister(pgid: i32) {
    for slot in &GROUPS {
        let _ = slot.compare_exchange(pgid, 0, Ordering::SeqCst, Ordering::SeqCst);
    }
}

/// A path to `name` if it is an executable on `$PATH` (or in the sbin directories,
/// where Debian puts nginx).
pub fn find_binary(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from));
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// A spawned process (and its process group), killed and reaped on drop. stdout and
/// stderr go to `<log_dir>/<name>.stdout` and `.stderr`.
pub struct Child {
    child: Option<std::process::Child>,
    name: String,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
}

impl Child {
    pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> Child {
        let stdout_path = log_dir.join(format!("{name}.stdout"));
        let stderr_path = log_dir.join(format!("{name}.stderr"));
        cmd.stdin(Stdio::null())
            .stdout(File::create(&stdout_path).expect("create stdout log"))
            .stderr(File::create(&stderr_path).expect("create stderr log"));
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::setpgid(0, 0);
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name} ({cmd:?}): {e}"));
        register(child.id() as i32);
        Child {
            child: Some(child),
            name: name.to_owned(),
            stdout_path,
            stderr_path,
        }
    }

    pub fn pid(&self) -> u32 {
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

    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// The tails of both logs, for panic messages.
    pub fn log_tails(&self, lines: usize) -> String {
        format!(
            "--- {n} stderr ---\n{}\n--- {n} stdout ---\n{}",
            tail_file(&self.stderr_path, lines),
            tail_file(&self.stdout_path, lines),
            n = self.name
        )
    }

    /// Waits up to `timeout` for the process to exit by itself; kills it after that.
    /// Returns its status, or None if it had to be killed.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                self.reap();
                return Some(status);
            }
            if Instant::now() >= deadline {
                self.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn reap(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pgid = child.id() as i32;
            // Whatever is left of its group (nginx workers).
            // SAFETY: kill(2) on a process group this benchmark created.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            let _ = child.kill();
            let _ = child.wait();
            unregister(pgid);
        }
    }

    /// Kills (SIGKILL) the process group and reaps the process (idempotent).
    pub fn kill(&mut self) {
        self.reap();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `cmd` (its output to files in `log_dir`) for at most `timeout`; panics with
/// its output if it fails or runs too long.
pub fn run_ok(name: &str, cmd: Command, log_dir: &Path, timeout: Duration) {
    let desc = format!("{cmd:?}");
    let mut child = Child::spawn(name, cmd, log_dir);
    match child.wait_timeout(timeout) {
        Some(status) if status.success() => {}
        Some(status) => panic!("{desc} failed ({status})\n{}", child.log_tails(30)),
        None => panic!(
            "{desc} still running after {timeout:?}; killed\n{}",
            child.log_tails(30)
        ),
    }
}

/// A port on 127.0.0.1 that was free a moment ago (for servers that cannot bind port 0
/// and say which port they got; callers retry on "address already in use").
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// The last `lines` lines of a file.
pub fn tail_file(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`).
pub fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// The fields of `/proc/<pid>/stat` after the command name (field 3 is index 0).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let mut text = String::new();
    File::open(format!("/proc/{pid}/stat"))
        .ok()?
        .read_to_string(&mut text)
        .ok()?;
    let after = &text[text.rfind(')')? + 2..];
    Some(after.split_whitespace().map(str::to_owned).collect())
}

/// `pid` and all its descendants.
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(p) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(ppid) = stat_fields(p).and_then(|f| f.get(1)?.parse::<u32>().ok()) {
                parents.push((p, ppid));
            }
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        for &(p, pp) in &parents {
            if pp == parent && !tree.contains(&p) {
                tree.push(p);
            }
        }
        i += 1;
    }
    tree
}

/// utime + stime of every process in `pids`, in clock ticks.
pub fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|&p| stat_fields(p))
        .map(|f| {
            // utime and stime are fields 14 and 15 (indexes 11 and 12 here).
            let u: u64 = f.get(11).and_then(|s| s.parse().ok()).unwrap_or(0);
            let s: u64 = f.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
            u + s
        })
        .sum()
}

/// A `kB` line of `/proc/<pid>/status` (`VmHWM`, `VmRSS`), in bytes.
/// The whole machine's (busy, total) CPU ticks so far, from the first line of
/// `/proc/stat`: to tell whether a run was bound by the CPUs, whoever used them.
pub fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = fields.iter().sum();
    // idle and iowait are the 4th and 5th fields.
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

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

/// Resets each process's peak RSS (`VmHWM`) to its current RSS (`clear_refs` 5).
/// Returns false if the kernel refused (then only sampling counts).
pub fn reset_peak_rss(pids: &[u32]) -> bool {
    pids.iter()
        .all(|p| std::fs::write(format!("/proc/{p}/clear_refs"), "5").is_ok())
}

/// Summed `VmHWM` of `pids`.
pub fn peak_rss(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|&p| status_bytes(p, "VmHWM")).sum()
}

/// Samples the summed `VmRSS` of a set of processes every 5 ms on its own thread and
/// keeps the maximum.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    max: Arc<Mutex<u64>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    pub fn start(pids: Vec<u32>) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let max = Arc::new(Mutex::new(0u64));
        let (s, m) = (stop.clone(), max.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let rss: u64 = pids.iter().filter_map(|&p| status_bytes(p, "VmRSS")).sum();
                let mut g = m.lock().unwrap();
                *g = (*g).max(rss);
                drop(g);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        RssSampler {
            stop,
            max,
            thread: Some(thread),
        }
    }

    /// Stops sampling; the largest sum seen.
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        *self.max.lock().unwrap()
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Peak memory of a server over one phase: `VmHWM` reset at the start where the kernel
/// allows it, and sampled `VmRSS` as a floor.
pub struct PeakRss {
    pids: Vec<u32>,
    reset: bool,
    sampler: RssSampler,
}

impl PeakRss {
    pub fn start(pids: &[u32]) -> PeakRss {
        let reset = reset_peak_rss(pids);
        PeakRss {
            pids: pids.to_vec(),
            reset,
            sampler: RssSampler::start(pids.to_vec()),
        }
    }

    /// Bytes.
    pub fn finish(self) -> u64 {
        let sampled = self.sampler.finish();
        if self.reset {
            sampled.max(peak_rss(&self.pids))
        } else {
            sampled
        }
    }
}

/// Waits (at most `limit`) until `pids` use no more than one clock tick of CPU in
/// 200 ms: background work left over from the last phase (a cache fill being committed,
/// a garbage collection) is not billed to the next.
pub fn wait_idle(pids: &[u32], limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        let before = cpu_ticks(pids);
        std::thread::sleep(Duration::from_millis(200));
        if cpu_ticks(pids) - before <= 1 {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
    }
}
