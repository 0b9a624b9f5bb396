//! What `/proc` says about a server: CPU ticks, peak and current RSS, summed over its
//! process tree. (Starting and stopping the processes is the test kit's
//! `ferry_testkit::process`.)

use std::fs::File;
use std::io::Read as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_testkit::process::status_bytes;

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
