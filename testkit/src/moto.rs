//! moto's server mode, a Python emulator of S3, as the shared store of tests.
//!
//! `tests/run.sh` installs it with pip into the venv `target/moto/` (`FERRY_MOTO` names
//! another `moto_server`). Each [`Moto`] is its own process on a free port of 127.0.0.1,
//! killed when dropped. moto keeps everything in memory: a stopped one forgets it all.
//! It checks no signature (any access key is accepted), but it keeps S3's rules that
//! matter here: `If-None-Match: *` and `If-Match` on PUT (moto 5.1 and later), and parts
//! of a multipart upload of at least 5 MiB but the last.

use std::path::PathBuf;
use std::process::Command;

use crate::process::ChildGuard;

use crate::testserver::{Restartable, request, spawn_answering};

/// The access key tests sign with; moto accepts any.
pub const KEY_ID: &str = "FERRYTESTKEYID";
pub const SECRET: &str = "ferry-test-secret-access-key-0123456789";

/// A running `moto_server`.
pub struct Moto {
    server: Restartable,
}

/// `moto_server` on `port`, once it answers.
fn spawn(port: u16, dir: &std::path::Path) -> Option<ChildGuard> {
    let mut cmd = Command::new(binary());
    cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
    let url = format!("http://127.0.0.1:{port}/moto-api/");
    spawn_answering(&format!("moto-{port}"), cmd, dir, &url)
}

fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("FERRY_MOTO") {
        return path.into();
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = root.join("target/moto/bin/moto_server");
    assert!(
        path.is_file(),
        "{} not found: install moto with `python3 -m venv target/moto && \
         target/moto/bin/pip install 'moto[server]==5.2.6'` (tests/run.sh does this)",
        path.display()
    );
    path
}

impl Moto {
    /// Starts one and waits until it answers.
    pub fn start() -> Moto {
        Moto {
            server: Restartable::start("moto", spawn),
        }
    }

    /// Stops it (SIGTERM): the store becomes unreachable. moto forgets everything.
    pub fn stop(&mut self) {
        self.server.stop();
    }

    /// Starts it again on the same port, empty (after [`Moto::stop`]).
    pub fn restart(&mut self) {
        self.server.restart();
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.server.port())
    }

    /// Creates `bucket` (S3 creates none on a first write).
    pub fn create_bucket(&self, bucket: &str) {
        let (status, body) = request(self.server.port(), "PUT", &format!("/{bucket}"), &[]);
        assert_eq!(status, 200, "create bucket {bucket}: {body}");
    }

    /// The multipart uploads started in `bucket` and neither completed nor aborted
    /// (ListMultipartUploads), as S3's XML answer.
    pub fn open_uploads(&self, bucket: &str) -> String {
        let (status, body) = request(
            self.server.port(),
            "GET",
            &format!("/{bucket}?uploads"),
            &[],
        );
        assert_eq!(status, 200, "list uploads of {bucket}: {body}");
        body
    }
}
