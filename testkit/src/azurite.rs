//! Azurite, Microsoft's emulator of Azure Blob Storage, as the shared store of tests.
//!
//! `tests/run.sh` installs it with npm into `target/azurite/` (`FERRY_AZURITE` names
//! another `azurite-blob`). Used by the storage crate's backend suite and by the
//! integration tests' replicas. Each [`Azurite`] is its own process on a free port of
//! 127.0.0.1 with its own `--location`, killed when dropped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use crate::process::ChildGuard;
use base64::Engine as _;
use sha2::Digest as _;

use crate::testserver::{Restartable, request, spawn_answering};

/// Azurite's one account and its published development key (the same in every
/// installation; not a secret).
pub const ACCOUNT: &str = "devstoreaccount1";
pub const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// A running `azurite-blob`.
pub struct Azurite {
    server: Restartable,
}

/// `azurite-blob` on `port` keeping its data in `dir`, once it answers.
fn spawn(port: u16, dir: &Path) -> Option<ChildGuard> {
    let mut cmd = Command::new(binary());
    cmd.arg("--blobHost")
        .arg("127.0.0.1")
        .arg("--blobPort")
        .arg(port.to_string())
        .arg("--location")
        .arg(dir.join("data"))
        .args(["--skipApiVersionCheck", "--loose", "--silent"])
        // It would otherwise report to a telemetry service on the internet.
        .arg("--disableTelemetry");
    let url = format!("http://127.0.0.1:{port}/");
    spawn_answering(&format!("azurite-{port}"), cmd, dir, &url)
}

fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("FERRY_AZURITE") {
        return path.into();
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = root.join("target/azurite/node_modules/.bin/azurite-blob");
    assert!(
        path.is_file(),
        "{} not found: install Azurite with `npm install --prefix target/azurite azurite@3` \
         (tests/run.sh does this)",
        path.display()
    );
    path
}

impl Azurite {
    /// Starts one and waits until it answers.
    pub fn start() -> Azurite {
        Azurite {
            server: Restartable::start("azurite", spawn),
        }
    }

    /// Stops it (SIGTERM): the store becomes unreachable. Not SIGKILL: Azurite keeps
    /// its metadata in a database it saves every few seconds, so a killed Azurite
    /// forgets writes it acknowledged (Azure itself does not).
    pub fn stop(&mut self) {
        self.server.stop();
    }

    /// Starts it again on the same port and data (after [`Azurite::stop`]).
    pub fn restart(&mut self) {
        self.server.restart();
    }

    /// The account's endpoint (path style: the account is the first segment).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{ACCOUNT}", self.server.port())
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// An account SAS for blobs (every container and object), signed with `key`
    /// (base64); `KEY` makes one Azurite accepts.
    pub fn account_sas(key: &str) -> String {
        let (perms, services, types, expiry) = ("rwdlac", "b", "sco", "2099-01-01T00:00:00Z");
        let (protocols, version) = ("http,https", "2019-12-12");
        // https://learn.microsoft.com/rest/api/storageservices/create-account-sas
        let to_sign = format!(
            "{ACCOUNT}\n{perms}\n{services}\n{types}\n\n{expiry}\n\n{protocols}\n{version}\n"
        );
        let b64 = base64::engine::general_purpose::STANDARD;
        let key = b64.decode(key).expect("base64 key");
        let sig = b64.encode(hmac_sha256(&key, to_sign.as_bytes()));
        let sig = sig
            .replace('+', "%2B")
            .replace('/', "%2F")
            .replace('=', "%3D");
        format!(
            "sv={version}&ss={services}&srt={types}&sp={perms}&se={expiry}&spr={protocols}&sig={sig}"
        )
    }

    /// Creates `container` (Azure creates none on a first write).
    pub fn create_container(&self, container: &str) {
        let (status, body) =
            self.signed("PUT", &format!("/{container}"), &[("restype", "container")]);
        assert_eq!(status, 201, "create container {container}: {body}");
    }

    /// The blocks staged for `blob` in `container` and not committed (Get Block List),
    /// as Azure's XML answer; `None` if there is no such blob, committed or staged.
    pub fn uncommitted_blocks(&self, container: &str, blob: &str) -> Option<String> {
        let path = format!("/{container}/{blob}");
        let query = [("blocklisttype", "uncommitted"), ("comp", "blocklist")];
        match self.signed("GET", &path, &query) {
            (200, body) => Some(body),
            (404, _) => None,
            (status, body) => panic!("get block list of {path}: {status} {body}"),
        }
    }

    /// Sends a bodiless request signed with the account's Shared Key; its status and
    /// body. `query` sorted by name.
    fn signed(&self, method: &str, path: &str, query: &[(&str, &str)]) -> (u16, String) {
        let date = httpdate::fmt_http_date(SystemTime::now());
        let version = "2021-08-06";
        // https://learn.microsoft.com/rest/api/storageservices/authorize-with-shared-key
        let mut to_sign = format!(
            "{method}\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n\
             /{ACCOUNT}/{ACCOUNT}{path}"
        );
        for (name, value) in query {
            to_sign.push_str(&format!("\n{name}:{value}"));
        }
        let query: Vec<String> = query.iter().map(|(n, v)| format!("{n}={v}")).collect();
        let query = query.join("&");
        let b64 = base64::engine::general_purpose::STANDARD;
        let key = b64.decode(KEY).expect("base64 key");
        let signature = b64.encode(hmac_sha256(&key, to_sign.as_bytes()));
        let auth = format!("SharedKey {ACCOUNT}:{signature}");
        let headers = [
            ("x-ms-date", date.as_str()),
            ("x-ms-version", version),
            ("Authorization", auth.as_str()),
        ];
        request(
            self.server.port(),
            method,
            &format!("/{ACCOUNT}{path}?{query}"),
            &headers,
        )
    }
}

/// HMAC-SHA256 (RFC 2104) of `msg` under `key`.
fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&sha2::Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = sha2::Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    inner.update(msg);
    let mut outer = sha2::Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().to_vec()
}

#[cfg(test)]
#[test]
fn hmac_matches_rfc_4231_case_2() {
    let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
    assert_eq!(
        hex::encode(mac),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
}
