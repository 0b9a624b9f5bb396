//! `[[upstream]] auth`: which credential an upstream is asked with. Which keys each
//! kind takes is the schema's business ([`RawAuth`]); this checks what the keys say.

use std::ops::Range;
use std::path::PathBuf;

use toml::Spanned;
use url::Url;

use super::files::{Named, What};
use super::raw::{RawAuth, RawEntra, RawManagedIdentity, RawStoreAuth};
use super::{
    Auth, AzureCredential, ConfigError, Entra, EntraCredential, S3Credential, SecretSource, Source,
};

/// The secrets and the certificate file it names go to `files`, read after validation.
pub(super) fn validate_auth(
    a: Spanned<RawAuth>,
    src: &Source,
    upstream: &str,
    files: &mut Vec<Named>,
) -> Result<Auth, ConfigError> {
    let span = a.span();
    let at = At {
        src,
        whose: format!("upstream `{upstream}`"),
        span,
    };
    match a.into_inner() {
        RawAuth::Anonymous {} => Ok(Auth::Anonymous),
        RawAuth::Basic {
            username,
            password_file,
            password_env,
        } => {
            let username = text(username).ok_or_else(|| at.required("basic", "username"))?;
            let password = at.secret("basic", password_file, password_env, "password", files)?;
            Ok(Auth::Basic { username, password })
        }
        RawAuth::Bearer {
            token_file,
            token_env,
        } => Ok(Auth::Bearer {
            token: at.secret("bearer", token_file, token_env, "token", files)?,
        }),
        RawAuth::Entra(e) => Ok(Auth::Entra(validate_entra(e, &at, files)?)),
    }
}

/// `[storage.shared] auth`: which kinds fit the store's `kind` is checked by the caller.
pub(super) fn validate_store_auth(
    a: Spanned<RawStoreAuth>,
    src: &Source,
    files: &mut Vec<Named>,
) -> Result<StoreAuth, ConfigError> {
    let span = a.span();
    let at = At {
        src,
        whose: "storage.shared".to_string(),
        span,
    };
    Ok(match a.into_inner() {
        RawStoreAuth::AccountKey { key_file, key_env } => {
            StoreAuth::Azure(AzureCredential::AccountKey(at.secret(
                "account_key",
                key_file,
                key_env,
                "key",
                files,
            )?))
        }
        RawStoreAuth::Sas {
            token_file,
            token_env,
        } => StoreAuth::Azure(AzureCredential::Sas(
            at.secret("sas", token_file, token_env, "token", files)?,
        )),
        RawStoreAuth::Entra(e) => {
            StoreAuth::Azure(AzureCredential::Entra(validate_entra(e, &at, files)?))
        }
        RawStoreAuth::AccessKey {
            access_key_id,
            secret_access_key_file,
            secret_access_key_env,
        } => StoreAuth::S3(S3Credential::AccessKey {
            id: text(access_key_id).ok_or_else(|| at.required("access_key", "access_key_id"))?,
            secret: at.secret(
                "access_key",
                secret_access_key_file,
                secret_access_key_env,
                "secret_access_key",
                files,
            )?,
        }),
        RawStoreAuth::Environment {} => StoreAuth::S3(S3Credential::Environment),
    })
}

/// A validated `[storage.shared] auth`, for one of the two kinds of store.
pub(super) enum StoreAuth {
    Azure(AzureCredential),
    S3(S3Credential),
}

/// An Entra identity: exactly one credential, and the IDs it needs.
fn validate_entra(e: RawEntra, at: &At, files: &mut Vec<Named>) -> Result<Entra, ConfigError> {
    let RawEntra {
        tenant_id,
        client_id,
        client_secret_file,
        client_secret_env,
        certificate_file,
        workload_identity,
        managed_identity,
        authority_host,
        token_file,
    } = e;
    let span = at.span.clone();
    let authority_host = match authority_host {
        None => None,
        Some(h) => Some(
            Url::parse(&h)
                .ok()
                .filter(|u| u.scheme() == "https")
                .ok_or_else(|| {
                    at.error(format!(
                        "{}: `{h}` is not an https:// URL",
                        at.here("authority_host")
                    ))
                })?,
        ),
    };
    let chosen: Vec<&str> = [
        (
            "client_secret_file",
            client_secret_file.is_some() || client_secret_env.is_some(),
        ),
        ("certificate_file", certificate_file.is_some()),
        ("workload_identity", workload_identity == Some(true)),
        (
            "managed_identity",
            matches!(
                managed_identity,
                Some(RawManagedIdentity::Enabled(true) | RawManagedIdentity::UserAssigned { .. })
            ),
        ),
    ]
    .into_iter()
    .filter_map(|(k, on)| on.then_some(k))
    .collect();
    if chosen.len() != 1 {
        return Err(at.error(format!(
            "{}: kind = \"entra\" needs exactly one of client_secret_file (or _env), certificate_file, workload_identity = true, managed_identity (found {})",
            at.whose,
        if chosen.is_empty() { "none".to_string() } else { chosen.join(", ") }
        )));
    }
    let credential = match chosen[0] {
        "client_secret_file" => EntraCredential::ClientSecret(at.secret(
            "entra",
            client_secret_file,
            client_secret_env,
            "client_secret",
            files,
        )?),
        "certificate_file" => {
            let path = certificate_file.expect("chosen");
            let key = at.here("certificate_file");
            files.push(Named {
                span: span.clone(),
                what: What::Pem {
                    path: PathBuf::from(&path),
                    needs: &["-----BEGIN CERTIFICATE-----", "PRIVATE KEY-----"],
                    fault: format!(
                        "{key}: `{path}` must hold the certificate and its private key (PEM)"
                    ),
                },
                key,
            });
            EntraCredential::Certificate(PathBuf::from(path))
        }
        "workload_identity" => EntraCredential::WorkloadIdentity {
            token_file: text(token_file).map(PathBuf::from),
        },
        _ => EntraCredential::ManagedIdentity {
            client_id: match managed_identity {
                Some(RawManagedIdentity::UserAssigned { client_id }) => Some(client_id),
                _ => None,
            },
        },
    };
    let needs_ids = matches!(
        credential,
        EntraCredential::ClientSecret(_) | EntraCredential::Certificate(_)
    );
    let tenant_id = text(tenant_id);
    let client_id = text(client_id);
    if needs_ids {
        tenant_id
            .as_ref()
            .ok_or_else(|| at.required("entra", "tenant_id"))?;
        client_id
            .as_ref()
            .ok_or_else(|| at.required("entra", "client_id"))?;
    }
    Ok(Entra {
        authority_host,
        tenant_id,
        client_id,
        credential,
    })
}

/// A non-empty value.
fn text(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.is_empty())
}

/// Where an `auth` table is, for its errors: its values have no spans of their own.
struct At<'a> {
    src: &'a Source<'a>,
    /// Whose table it is: "upstream `acr`", "storage.shared".
    whose: String,
    span: Range<usize>,
}

impl At<'_> {
    fn here(&self, field: &str) -> String {
        format!("{}: auth.{field}", self.whose)
    }

    fn error(&self, message: String) -> ConfigError {
        self.src.error(Some(self.span.clone()), message)
    }

    fn required(&self, kind: &str, field: &str) -> ConfigError {
        self.error(format!(
            "{} is required for kind = \"{kind}\"",
            self.here(field)
        ))
    }

    /// A secret comes from `<name>_file` or `<name>_env`, exactly one of them; it is
    /// read with the other files, after validation.
    fn secret(
        &self,
        kind: &str,
        file: Option<String>,
        env: Option<String>,
        name: &str,
        files: &mut Vec<Named>,
    ) -> Result<SecretSource, ConfigError> {
        let (source, field) = match (file, env) {
            (Some(f), None) => (SecretSource::file(f), "file"),
            (None, Some(e)) => (SecretSource::env(e), "env"),
            (None, None) => {
                return Err(self.required(kind, &format!("{name}_file (or {name}_env)")));
            }
            (Some(_), Some(_)) => {
                return Err(self.error(format!(
                    "{}: give {name}_file or {name}_env, not both",
                    self.here(name)
                )));
            }
        };
        files.push(Named {
            span: self.span.clone(),
            key: self.here(&format!("{name}_{field}")),
            what: What::Secret(source.clone()),
        });
        Ok(source)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testing::parse;
    use crate::config::{Auth, Entra, EntraCredential};

    #[test]
    fn entra_auth() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sp");
        std::fs::write(&p, "s3cret\n").unwrap();
        let up = |auth: &str| {
            format!(
                "[[upstream]]\nname = \"acr\"\nurl = \"https://contoso.azurecr.io\"\nauth = {{ {auth} }}\n"
            )
        };
        let ok = up(&format!(
            "kind = \"entra\", tenant_id = \"t\", client_id = \"c\", client_secret_file = \"{}\", authority_host = \"https://login.example\"",
            p.display()
        ));
        let c = parse(&ok).unwrap();
        assert!(matches!(
            &c.upstreams[0].auth,
            Auth::Entra(Entra {
                credential: EntraCredential::ClientSecret(_),
                ..
            })
        ));
        assert!(!c.describe().contains("s3cret"));
        let c = parse(&up(
            "kind = \"entra\", managed_identity = { client_id = \"mi\" }",
        ))
        .unwrap();
        assert!(matches!(
            &c.upstreams[0].auth,
            Auth::Entra(Entra {
                credential: EntraCredential::ManagedIdentity { client_id: Some(_) },
                ..
            })
        ));
        parse(&up("kind = \"entra\", workload_identity = true")).unwrap();
        let e = parse(&up(&format!(
            "kind = \"entra\", client_id = \"c\", client_secret_file = \"{}\"",
            p.display()
        )))
        .unwrap_err()
        .to_string();
        assert!(e.contains("tenant_id"), "{e}");
        // SAFETY: a variable only this test reads; no test here enumerates the environment.
        unsafe { std::env::set_var("FERRY_TEST_ENTRA_SECRET", "from-env") };
        let c = parse(&up(
            "kind = \"entra\", tenant_id = \"t\", client_id = \"c\", client_secret_env = \"FERRY_TEST_ENTRA_SECRET\"",
        ))
        .unwrap();
        match &c.upstreams[0].auth {
            Auth::Entra(Entra {
                credential: EntraCredential::ClientSecret(s),
                ..
            }) => {
                assert_eq!(s.current().expose(), "from-env")
            }
            other => panic!("{other:?}"),
        }
        let e = parse(&up(
            "kind = \"entra\", workload_identity = true, managed_identity = true",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("exactly one") && e.contains("workload_identity, managed_identity"),
            "{e}"
        );
        let e = parse(&up("kind = \"basic\", username = \"u\", tenant_id = \"t\""))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("tenant_id") && e.contains("unknown field") && e.contains("test.toml:4"),
            "{e}"
        );
        let e = parse(&up(
            "kind = \"entra\", workload_identity = true, authority_host = \"http://x\"",
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("authority_host"), "{e}");
    }

    #[test]
    fn the_kind_decides_the_keys() {
        // A table of its own: the error names the key, what the kind takes, and a line.
        let text = "[[upstream]]\nname = \"a\"\nurl = \"http://x\"\n[upstream.auth]\nkind = \"bearer\"\nusername = \"u\"\n";
        let e = parse(text).unwrap_err().to_string();
        assert!(
            e.contains("test.toml:4:")
                && e.contains("unknown field `username`")
                && e.contains("token_file"),
            "{e}"
        );
        let e = parse(&text.replace("bearer", "magic"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("test.toml:") && e.contains("`magic`") && e.contains("entra"),
            "{e}"
        );
        let up = "[[upstream]]\nname = \"a\"\nurl = \"http://x\"\n";
        let c = parse(&format!("{up}auth = {{ kind = \"anonymous\" }}\n")).unwrap();
        assert_eq!(c.upstreams[0].auth, Auth::Anonymous);
        let e = parse(&format!(
            "{up}auth = {{ kind = \"anonymous\", username = \"u\" }}\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("test.toml:4:") && e.contains("username"), "{e}");
    }
}
