//! Bundle signatures: a detached ed25519 signature over the exact bytes of the
//! bundle's `index.json`, stored raw (64 bytes) as `index.json.sig` beside it.
//!
//! Signing `index.json` alone covers the whole bundle: it names each top manifest
//! by digest (and the name it is imported under), every manifest names its children
//! by digest, and the importer hashes everything it loads. Keys are PKCS#8 /
//! SubjectPublicKeyInfo PEM, the format `openssl genpkey -algorithm ed25519` writes,
//! so a signature can be checked without Ferry:
//! `openssl pkeyutl -verify -pubin -inkey KEY.pub -rawin -in index.json -sigfile index.json.sig`.

use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, KeypairBytes,
};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use super::Error;

/// The signature's file name inside the bundle.
pub const SIGNATURE_FILE: &str = "index.json.sig";

/// Writes a new keypair: `PREFIX.key` (private, mode 0600) and `PREFIX.pub`.
/// Refuses to overwrite either. Returns both paths.
pub fn keygen(prefix: &Path) -> Result<(PathBuf, PathBuf), Error> {
    let private_path = with_suffix(prefix, ".key");
    let public_path = with_suffix(prefix, ".pub");
    let mut seed = [0u8; ed25519_dalek::SECRET_KEY_LENGTH];
    // An ed25519 secret key is 32 uniformly random bytes; the OS supplies them.
    getrandom::fill(&mut seed).map_err(|e| Error::Key {
        path: private_path.display().to_string(),
        reason: format!("no randomness from the OS: {e}"),
    })?;
    let key = SigningKey::from_bytes(&seed);
    let key_err = |path: &Path, reason: String| Error::Key {
        path: path.display().to_string(),
        reason,
    };
    // PKCS#8 v1 (no embedded public key): the form OpenSSL writes and reads.
    let private_pem = KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    }
    .to_pkcs8_pem(LineEnding::LF)
    .map_err(|e| key_err(&private_path, e.to_string()))?;
    let public_pem = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| key_err(&public_path, e.to_string()))?;
    if let Some(existing) = [&private_path, &public_path]
        .into_iter()
        .find(|p| p.exists())
    {
        return Err(key_err(
            existing,
            "already exists; not overwriting a key".into(),
        ));
    }
    write_new(&private_path, private_pem.as_bytes(), 0o600)?;
    write_new(&public_path, public_pem.as_bytes(), 0o644)?;
    Ok((private_path, public_path))
}

/// A short name for a public key in messages: `sha256:` and 16 hex digits of the
/// hash of its raw bytes.
pub fn fingerprint(key: &VerifyingKey) -> String {
    let d = ferry_oci::Digest::sha256_of(key.as_bytes());
    format!("sha256:{}", &d.hex()[..16])
}

pub(crate) fn load_signing_key(path: &Path) -> Result<SigningKey, Error> {
    let pem = read_key(path)?;
    SigningKey::from_pkcs8_pem(&pem).map_err(|e| Error::Key {
        path: path.display().to_string(),
        reason: format!("not an ed25519 private key in PKCS#8 PEM ({e})"),
    })
}

pub(crate) fn load_verifying_key(path: &Path) -> Result<VerifyingKey, Error> {
    let pem = read_key(path)?;
    VerifyingKey::from_public_key_pem(&pem).map_err(|e| Error::Key {
        path: path.display().to_string(),
        reason: format!("not an ed25519 public key in PEM ({e})"),
    })
}

pub(crate) fn sign(key: &SigningKey, index_json: &[u8]) -> Vec<u8> {
    key.sign(index_json).to_bytes().to_vec()
}

/// Whether `signature` is `key`'s over `index_json`. Strict verification: no
/// malleable or small-order-key signatures.
pub(crate) fn verifies(key: &VerifyingKey, index_json: &[u8], signature: &[u8]) -> bool {
    Signature::from_slice(signature).is_ok_and(|sig| key.verify_strict(index_json, &sig).is_ok())
}

fn read_key(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|e| Error::Key {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

fn with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = opts.open(path).map_err(Error::io(path))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(Error::io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_sign_verify() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("site");
        let (private, public) = keygen(&prefix).unwrap();
        assert!(keygen(&prefix).is_err(), "never overwrites a key");
        let key = load_signing_key(&private).unwrap();
        let trusted = load_verifying_key(&public).unwrap();
        let sig = sign(&key, b"index");
        assert_eq!(sig.len(), 64);
        assert!(verifies(&trusted, b"index", &sig));
        assert!(!verifies(&trusted, b"index2", &sig));
        assert!(!verifies(&trusted, b"index", &sig[..63]));
        let (_, other) = keygen(&dir.path().join("other")).unwrap();
        assert!(!verifies(
            &load_verifying_key(&other).unwrap(),
            b"index",
            &sig
        ));
        // A private key is not a public key, and the reverse.
        assert!(load_verifying_key(&private).is_err());
        assert!(load_signing_key(&public).is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&private).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "private key readable by others: {mode:o}");
        }
    }
}
