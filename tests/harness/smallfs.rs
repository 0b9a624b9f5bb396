//! A small file system of the test's own, to run Ferry's store out of space.
//!
//! A `tmpfs` mounted with `size=` (needs root, or CAP_SYS_ADMIN; the test suite runs as
//! root). Where tmpfs mounts are refused, a loop-mounted ext4 image (`truncate`,
//! `mkfs.ext4` from e2fsprogs, `mount -o loop`). If neither works the test fails
//! saying why: it never skips.
//!
//! Unmounted when dropped (bounded: `umount`, then a lazy `umount -l` if it is still
//! busy), so drop the [`super::ferry::Ferry`] using it first (declare it after this).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::process::{require_binary, run_with_timeout};

/// How the file system was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Tmpfs,
    LoopExt4,
}

/// A mounted small file system; unmounted when dropped.
pub struct SmallFs {
    mount_point: PathBuf,
    kind: Kind,
    mounted: bool,
    dir: tempfile::TempDir,
}

impl SmallFs {
    /// Mounts a file system of about `size` bytes on a fresh directory under /tmp.
    pub fn mount(size: u64) -> SmallFs {
        let dir = super::temp_dir("smallfs");
        let mount_point = dir.path().join("mnt");
        std::fs::create_dir(&mount_point).expect("create mount point");

        let mut cmd = Command::new("mount");
        cmd.args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size},mode=0755"),
            "tmpfs",
        ])
        .arg(&mount_point);
        let out = run_with_timeout(cmd, Duration::from_secs(10));
        if out.status.success() {
            return SmallFs {
                mount_point,
                kind: Kind::Tmpfs,
                mounted: true,
                dir,
            };
        }
        let tmpfs_error = String::from_utf8_lossy(&out.stderr).trim().to_owned();

        let loop_error = match Self::mount_loop_ext4(dir.path(), &mount_point, size) {
            Ok(()) => {
                return SmallFs {
                    mount_point,
                    kind: Kind::LoopExt4,
                    mounted: true,
                    dir,
                };
            }
            Err(e) => e,
        };
        panic!(
            "cannot mount a small file system to fill up: \
             `mount -t tmpfs` failed ({tmpfs_error}) and a loop-mounted ext4 image failed \
             ({loop_error}). The full-disk test needs root (CAP_SYS_ADMIN) to mount; \
             tests/run.sh runs as root."
        )
    }

    fn mount_loop_ext4(dir: &Path, mount_point: &Path, size: u64) -> Result<(), String> {
        let mkfs = require_binary("mkfs.ext4", "e2fsprogs");
        let image = dir.join("fs.img");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(size))
            .map_err(|e| format!("create image: {e}"))?;
        let mut cmd = Command::new(mkfs);
        cmd.args(["-q", "-F", "-m", "0"]).arg(&image);
        let out = run_with_timeout(cmd, Duration::from_secs(30));
        if !out.status.success() {
            return Err(format!(
                "mkfs.ext4: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let mut cmd = Command::new("mount");
        cmd.args(["-o", "loop"]).arg(&image).arg(mount_point);
        let out = run_with_timeout(cmd, Duration::from_secs(10));
        if !out.status.success() {
            return Err(format!(
                "mount -o loop: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(())
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.mount_point
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Bytes free for new data (`statfs` f_bavail × f_bsize, via `stat -f`).
    pub fn available(&self) -> u64 {
        let out = run_with_timeout(
            {
                let mut c = Command::new("stat");
                c.args(["-f", "-c", "%a %S"]).arg(&self.mount_point);
                c
            },
            Duration::from_secs(10),
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let mut parts = text.split_whitespace().map(|s| s.parse::<u64>());
        match (parts.next(), parts.next()) {
            (Some(Ok(blocks)), Some(Ok(size))) => blocks * size,
            _ => panic!("unexpected `stat -f` output: {text:?}"),
        }
    }

    /// Writes a file of zeros (really allocated) so that at most `leave` bytes stay
    /// free; returns its path. Stops early, without error, if the disk fills first.
    pub fn fill_leaving(&self, name: &str, leave: u64) -> PathBuf {
        let path = self.mount_point.join(name);
        let mut file = std::fs::File::create(&path).expect("create filler file");
        let chunk = vec![0u8; 64 << 10];
        let mut left = self.available().saturating_sub(leave);
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            if file.write_all(&chunk[..n]).is_err() {
                break;
            }
            left -= n as u64;
        }
        let _ = file.sync_all();
        path
    }

    fn umount(&mut self, lazy: bool) -> bool {
        let mut cmd = Command::new("umount");
        if lazy {
            cmd.arg("-l");
        }
        cmd.arg(&self.mount_point)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let Ok(mut child) = cmd.spawn() else {
            return false;
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status.success(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return false;
                }
            }
        }
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        if !self.mounted {
            return;
        }
        // A few tries (a process that just died may still hold files), then lazily.
        for _ in 0..5 {
            if self.umount(false) {
                self.mounted = false;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if self.mounted && self.umount(true) {
            self.mounted = false;
        }
        if self.mounted {
            eprintln!(
                "warning: could not unmount {}; left mounted",
                self.mount_point.display()
            );
            // Keep the temp dir: removing it would walk into the mounted file system.
            let dir = std::mem::replace(&mut self.dir, super::temp_dir("smallfs-leftover"));
            let _ = dir.keep();
        }
    }
}
