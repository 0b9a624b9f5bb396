//! `[[upstream]] auth`: which credential an upstream is asked with.

use std::path::PathBuf;

use toml::Spanned;
use url::Url;

use super::raw::{RawAuth, RawManagedIdentity};
use super::{Auth, ConfigError, Entra, EntraCredential, SecretSource, Source};

pub(super) fn validate_auth(
    a: Spanned<RawAuth>,
    src: &Source,
    upstream: &str,
) -> Result<Auth, ConfigError> {
    let span = a.span();
    let a = a.into_inner();
    let kind_span = a.kind.as_ref().map(|k| k.span());
    let kind = a
        .kind
        .as_ref()
        .map(|k| k.get_ref().clone())
        .unwrap_or_else(|| "anonymous".to_string());
    let kind = kind.as_str();
    let here = |field: &str| format!("upstream `{upstream}`: auth.{field}");
    let required = |field: &str| {
        src.error(
            Some(span.clone()),
            format!("{} is required for kind = \"{kind}\"", here(field)),
        )
    };
    // A secret comes from `<name>_file` or `<name>_env`, exactly one of them.
    let secret = |file: &Option<Spanned<String>>,
                  env: &Option<Spanned<String>>,
                  name: &str|
     -> Result<SecretSource, ConfigError> {
        let (value, field, loaded) = match (file, env) {
            (Some(f), None) => (f, "file", SecretSource::from_file(f.get_ref())),
            (None, Some(e)) => (e, "env", SecretSource::from_env(e.get_ref())),
            (None, None) => return Err(required(&format!("{name}_file (or {name}_env)"))),
            (Some(f), Some(_)) => {
                return Err(src.error(
                    Some(f.span()),
                    format!("{}: give {name}_file or {name}_env, not both", here(name)),
                ));
            }
        };
        loaded.map_err(|e| {
            src.error(
                Some(value.span()),
                format!("{}: {e}", here(&format!("{name}_{field}"))),
            )
        })
    };
    // Which keys each kind takes; any other key present is a mistake worth naming.
    let present = [
        ("username", a.username.is_some()),
        ("password_file", a.password_file.is_some()),
        ("password_env", a.password_env.is_some()),
        ("token_env", a.token_env.is_some()),
        ("client_secret_env", a.client_secret_env.is_some()),
        ("token_file", a.token_file.is_some()),
        ("tenant_id", a.tenant_id.is_some()),
        ("client_id", a.client_id.is_some()),
        ("client_secret_file", a.client_secret_file.is_some()),
        ("certificate_file", a.certificate_file.is_some()),
        ("workload_identity", a.workload_identity.is_some()),
        ("managed_identity", a.managed_identity.is_some()),
        ("authority_host", a.authority_host.is_some()),
    ];
    let allowed: &[&str] = match kind {
        "anonymous" => &[],
        "basic" => &["username", "password_file", "password_env"],
        "bearer" => &["token_file", "token_env"],
        "entra" => &[
            "tenant_id",
            "client_id",
            "client_secret_file",
            "client_secret_env",
            "certificate_file",
            "workload_identity",
            "managed_identity",
            "authority_host",
            "token_file",
        ],
        other => {
            return Err(src.error(
                kind_span,
                format!(
                    "{}: unknown kind `{other}` (anonymous, basic, bearer, entra)",
                    here("kind")
                ),
            ));
        }
    };
    if let Some((field, _)) = present.iter().find(|(f, p)| *p && !allowed.contains(f)) {
        return Err(src.error(
            Some(span.clone()),
            format!("{} does not apply to kind = \"{kind}\"", here(field)),
        ));
    }
    let text = |v: &Option<Spanned<String>>| {
        v.as_ref()
            .map(|s| s.get_ref().clone())
            .filter(|s| !s.is_empty())
    };
    match kind {
        "anonymous" => Ok(Auth::Anonymous),
        "basic" => {
            let username = text(&a.username).ok_or_else(|| required("username"))?;
            Ok(Auth::Basic {
                username,
                password: secret(&a.password_file, &a.password_env, "password")?,
            })
        }
        "bearer" => Ok(Auth::Bearer {
            token: secret(&a.token_file, &a.token_env, "token")?,
        }),
        _ => {
            let authority_host = match &a.authority_host {
                None => None,
                Some(h) => Some(
                    Url::parse(h.get_ref())
                        .ok()
                        .filter(|u| u.scheme() == "https")
                        .ok_or_else(|| {
                            src.error(
                                Some(h.span()),
                                format!(
                                    "{}: `{}` is not an https:// URL",
                                    here("authority_host"),
                                    h.get_ref()
                                ),
                            )
                        })?,
                ),
            };
            let chosen: Vec<&str> = [
                (
                    "client_secret_file",
                    a.client_secret_file.is_some() || a.client_secret_env.is_some(),
                ),
                ("certificate_file", a.certificate_file.is_some()),
                (
                    "workload_identity",
                    a.workload_identity.as_ref().is_some_and(|w| *w.get_ref()),
                ),
                (
                    "managed_identity",
                    matches!(
                        a.managed_identity.as_ref().map(|m| m.get_ref()),
                        Some(
                            RawManagedIdentity::Enabled(true)
                                | RawManagedIdentity::UserAssigned { .. }
                        )
                    ),
                ),
            ]
            .into_iter()
            .filter_map(|(k, on)| on.then_some(k))
            .collect();
            if chosen.len() != 1 {
                return Err(src.error(Some(span.clone()), format!(
                    "upstream `{upstream}`: kind = \"entra\" needs exactly one of client_secret_file (or _env), certificate_file, workload_identity = true, managed_identity (found {})",
                    if chosen.is_empty() { "none".to_string() } else { chosen.join(", ") }
                )));
            }
            let credential = match chosen[0] {
                "client_secret_file" => EntraCredential::ClientSecret(secret(
                    &a.client_secret_file,
                    &a.client_secret_env,
                    "client_secret",
                )?),
                "certificate_file" => {
                    let f = a.certificate_file.as_ref().expect("chosen");
                    let pem = std::fs::read_to_string(f.get_ref()).map_err(|e| {
                        src.error(
                            Some(f.span()),
                            format!(
                                "{}: cannot read `{}`: {e}",
                                here("certificate_file"),
                                f.get_ref()
                            ),
                        )
                    })?;
                    if !pem.contains("-----BEGIN CERTIFICATE-----")
                        || !pem.contains("PRIVATE KEY-----")
                    {
                        return Err(src.error(
                            Some(f.span()),
                            format!(
                                "{}: `{}` must hold the certificate and its private key (PEM)",
                                here("certificate_file"),
                                f.get_ref()
                            ),
                        ));
                    }
                    EntraCredential::Certificate(PathBuf::from(f.get_ref()))
                }
                "workload_identity" => EntraCredential::WorkloadIdentity {
                    token_file: text(&a.token_file).map(PathBuf::from),
                },
                _ => EntraCredential::ManagedIdentity {
                    client_id: match a.managed_identity.map(|m| m.into_inner()) {
                        Some(RawManagedIdentity::UserAssigned { client_id }) => Some(client_id),
                        _ => None,
                    },
                },
            };
            let needs_ids = matches!(
                credential,
                EntraCredential::ClientSecret(_) | EntraCredential::Certificate(_)
            );
            let tenant_id = text(&a.tenant_id);
            let client_id = text(&a.client_id);
            if needs_ids {
                tenant_id.as_ref().ok_or_else(|| required("tenant_id"))?;
                client_id.as_ref().ok_or_else(|| required("client_id"))?;
            }
            Ok(Auth::Entra(Entra {
                authority_host,
                tenant_id,
                client_id,
                credential,
            }))
        }
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
            e.contains("tenant_id") && e.contains("does not apply"),
            "{e}"
        );
        let e = parse(&up(
            "kind = \"entra\", workload_identity = true, authority_host = \"http://x\"",
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("authority_host"), "{e}");
    }
}
