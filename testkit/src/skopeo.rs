//! skopeo as the tests' real client: one way to start a copy out of a plain-HTTP
//! registry on loopback.

use std::process::Command;

use crate::process::require_binary;

/// `skopeo --insecure-policy copy --src-tls-verify=false --retry-times 0`; the caller
/// adds its own flags, then source and destination.
///
/// No signature policy is configured on a test machine, the source (Ferry or
/// Distribution on 127.0.0.1) speaks plain HTTP, and a test wants the first error
/// rather than skopeo quietly retrying over it.
pub fn copy() -> Command {
    let mut cmd = Command::new(require_binary("skopeo", "skopeo"));
    cmd.args([
        "--insecure-policy",
        "copy",
        "--src-tls-verify=false",
        "--retry-times",
        "0",
    ]);
    cmd
}
