//! The loader's second step: read the files a validated configuration names (CA
//! bundles, the htpasswd file, TLS and Entra PEM files, secrets), refusing one that
//! cannot be read or holds the wrong thing, with its key and line. Validation never
//! reads them, so a command that needs only the routing settings (`ferry node-config`
//! on a node without Ferry's secrets) skips this step.

use std::ops::Range;
use std::path::PathBuf;

use super::htpasswd::Htpasswd;
use super::{Config, ConfigError, SecretSource, Source};

/// A file (or secret) named by a key of the configuration, to read after validation.
pub(super) struct Named {
    /// The key's value (or its table's) in the text, for errors.
    pub(super) span: Range<usize>,
    /// The key as errors name it, e.g. "upstream `a`: ca_file".
    pub(super) key: String,
    pub(super) what: What,
}

pub(super) enum What {
    /// A `ca_file`: PEM certificates, kept in the config by their owner.
    Ca { path: PathBuf, owner: CaFor },
    /// A PEM file only looked at here (it is read where it is used, and again when it
    /// changes): it must contain each of `needs`, else `fault` is the error.
    Pem {
        path: PathBuf,
        needs: &'static [&'static str],
        fault: String,
    },
    /// `[access] htpasswd`, and the users (name, span) that must be in it.
    Htpasswd {
        path: PathBuf,
        users: Vec<(String, Range<usize>)>,
    },
    /// A secret from a file or an environment variable.
    Secret(SecretSource),
}

/// Whose `ca_file` it is.
pub(super) enum CaFor {
    /// Upstream number .0.
    Upstream(usize),
    SharedStore,
}

/// Reads each of `named` into `config`, in the order the keys were validated.
pub(super) fn read(
    config: &mut Config,
    named: Vec<Named>,
    src: &Source,
) -> Result<(), ConfigError> {
    for Named { span, key, what } in named {
        let error = |message: String| src.error(Some(span.clone()), message);
        let pem = |path: &PathBuf, needs: &[&str], fault: &str| {
            let bytes = std::fs::read(path)
                .map_err(|e| error(format!("{key}: cannot read `{}`: {e}", path.display())))?;
            let text = String::from_utf8_lossy(&bytes);
            if !needs.iter().all(|n| text.contains(n)) {
                return Err(error(fault.to_string()));
            }
            Ok(bytes)
        };
        match what {
            What::Ca { path, owner } => {
                let fault = format!("{key}: `{}` holds no PEM certificate", path.display());
                let bytes = Some(pem(&path, &["-----BEGIN CERTIFICATE-----"], &fault)?);
                match owner {
                    CaFor::Upstream(i) => config.upstreams[i].ca_pem = bytes,
                    CaFor::SharedStore => {
                        if let Some(s) = &mut config.shared {
                            s.ca_pem = bytes;
                        }
                    }
                }
            }
            What::Pem { path, needs, fault } => {
                pem(&path, needs, &fault)?;
            }
            What::Htpasswd { path, users } => {
                let h = Htpasswd::load(&path).map_err(|e| error(format!("{key}: {e}")))?;
                for (name, at) in users {
                    if !h.has_user(&name) {
                        return Err(src.error(
                            Some(at),
                            format!(
                                "access.user `{name}` is not in the htpasswd file {}",
                                h.path().display()
                            ),
                        ));
                    }
                }
                config.access.htpasswd = Some(h);
            }
            What::Secret(source) => source.read().map_err(|e| error(format!("{key}: {e}")))?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::config::testing::parse;

    /// Each file the configuration names is read after validation: one that cannot
    /// be read is refused by `load` (and `parse`) with its key and line, and not
    /// looked at by `load_without_files`.
    #[test]
    fn named_files_are_read_after_validation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry.toml");
        let up = "[[upstream]]\nname = \"a\"\nurl = \"http://x\"\n";
        for (text, key, line) in [
            (format!("{up}ca_file = \"/nonexistent/ca\"\n"), "ca_file", 4),
            (
                format!(
                    "{up}auth = {{ kind = \"bearer\", token_env = \"FERRY_TEST_SURELY_UNSET\" }}\n"
                ),
                "auth.token_env",
                4,
            ),
            (
                format!(
                    "{up}auth = {{ kind = \"entra\", tenant_id = \"t\", client_id = \"c\", certificate_file = \"/nonexistent/c.pem\" }}\n"
                ),
                "auth.certificate_file",
                4,
            ),
            (
                format!(
                    "[access]\nhtpasswd = \"/nonexistent/h\"\n[[access.user]]\nname = \"ci\"\n{up}"
                ),
                "access.htpasswd",
                2,
            ),
            (
                format!(
                    "[tls]\nlisten = \"127.0.0.1:0\"\ncert_file = \"/nonexistent/c\"\nkey_file = \"/nonexistent/k\"\n{up}"
                ),
                "tls.cert_file",
                3,
            ),
        ] {
            let e = parse(&text).unwrap_err().to_string();
            assert!(
                e.contains(&format!("test.toml:{line}:")) && e.contains(key),
                "{key}: {e}"
            );
            std::fs::write(&path, &text).unwrap();
            let e = Config::load(Some(&path), &[]).unwrap_err().to_string();
            assert!(
                e.contains(&format!("ferry.toml:{line}:")) && e.contains(key),
                "{key}: {e}"
            );
            Config::load_without_files(Some(&path), &[]).unwrap();
        }
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").unwrap();
        let text = format!("{up}ca_file = \"{}\"\n", ca.display());
        let c = parse(&text).unwrap();
        assert_eq!(
            c.upstreams[0].ca_pem.as_deref(),
            Some(&b"-----BEGIN CERTIFICATE-----\n"[..])
        );
        std::fs::write(&path, &text).unwrap();
        let c = Config::load_without_files(Some(&path), &[]).unwrap();
        assert_eq!(c.upstreams[0].ca_pem, None);
    }
}
