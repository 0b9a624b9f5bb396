//! Entra ID credentials for an ACR upstream, through `azure_identity`: client secret,
//! client certificate, workload identity and managed identity, all asking for the
//! ACR scope. Their HTTP goes through a client built like the upstream's own (same
//! trusted CAs, address pins and proxy), so a private authority endpoint works.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use azure_core::http::{ClientMethodOptions, ClientOptions, Transport};
use azure_identity::{
    ClientAssertion, ClientAssertionCredential, ClientAssertionCredentialOptions,
    ClientSecretCredential, ClientSecretCredentialOptions, ManagedIdentityCredential,
    ManagedIdentityCredentialOptions, UserAssignedId, WorkloadIdentityCredential,
    WorkloadIdentityCredentialOptions,
};
use base64::Engine as _;
use sha1::Digest as _;

use crate::config::{Entra, EntraCredential, Secret, SecretSource};

/// The scope of an Entra token that ACR's `/oauth2/exchange` accepts.
pub const ACR_SCOPE: &str = "https://containerregistry.azure.net/.default";

/// Builds the credential `entra` describes. `http` carries the upstream's TLS trust,
/// address pins and proxy.
pub fn credential(
    entra: &Entra,
    http: reqwest::Client,
) -> Result<Arc<dyn TokenCredential>, String> {
    let authority_host = entra.authority_host.clone();
    let options = move || {
        let mut o = ClientOptions {
            transport: Some(Transport::new(Arc::new(http.clone()))),
            ..Default::default()
        };
        if let Some(host) = &authority_host {
            let mut custom = CustomConfiguration::default();
            custom.authority_host = host.as_str().trim_end_matches('/').to_string();
            o.cloud = Some(Arc::new(CloudConfiguration::Custom(custom)));
        }
        o
    };
    let ids = || -> Result<(String, String), String> {
        match (&entra.tenant_id, &entra.client_id) {
            (Some(t), Some(c)) => Ok((t.clone(), c.clone())),
            _ => Err("tenant_id and client_id are required".to_string()),
        }
    };
    let e = |e: azure_core::Error| e.to_string();
    Ok(match &entra.credential {
        EntraCredential::ClientSecret(file) => {
            let (tenant, client) = ids()?;
            Arc::new(RotatingSecret::new(tenant, client, file.clone(), options)?)
        }
        EntraCredential::Certificate(path) => {
            let (tenant, client) = ids()?;
            let assertion =
                CertificateAssertion::load(path, &tenant, &client, entra.authority_host.as_ref())?;
            ClientAssertionCredential::new(
                tenant,
                client,
                assertion,
                Some(ClientAssertionCredentialOptions {
                    client_options: options(),
                }),
            )
            .map_err(e)?
        }
        EntraCredential::WorkloadIdentity { token_file } => {
            WorkloadIdentityCredential::new(Some(WorkloadIdentityCredentialOptions {
                credential_options: ClientAssertionCredentialOptions {
                    client_options: options(),
                },
                client_id: entra.client_id.clone(),
                tenant_id: entra.tenant_id.clone(),
                token_file_path: token_file.clone(),
            }))
            .map_err(e)?
        }
        EntraCredential::ManagedIdentity { client_id } => {
            ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
                user_assigned_id: client_id.clone().map(UserAssignedId::ClientId),
                client_options: options(),
            }))
            .map_err(e)?
        }
    })
}

/// A client-secret credential that follows its secret file: when the file is rotated,
/// the next token request uses the new secret.
struct RotatingSecret {
    tenant: String,
    client: String,
    file: SecretSource,
    options: Box<dyn Fn() -> ClientOptions + Send + Sync>,
    current: Mutex<(Secret, Arc<ClientSecretCredential>)>,
}

impl fmt::Debug for RotatingSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RotatingSecret")
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

impl RotatingSecret {
    fn new(
        tenant: String,
        client: String,
        file: SecretSource,
        options: impl Fn() -> ClientOptions + Send + Sync + 'static,
    ) -> Result<Self, String> {
        let secret = file.current();
        let cred = Self::build(&tenant, &client, &secret, &options)?;
        Ok(RotatingSecret {
            tenant,
            client,
            file,
            options: Box::new(options),
            current: Mutex::new((secret, cred)),
        })
    }

    fn build(
        tenant: &str,
        client: &str,
        secret: &Secret,
        options: &dyn Fn() -> ClientOptions,
    ) -> Result<Arc<ClientSecretCredential>, String> {
        ClientSecretCredential::new(
            tenant,
            client.to_string(),
            secret.expose().to_string().into(),
            Some(ClientSecretCredentialOptions {
                client_options: options(),
            }),
        )
        .map_err(|e| e.to_string())
    }
}

#[async_trait::async_trait]
impl TokenCredential for RotatingSecret {
    async fn get_token(
        &self,
        scopes: &[&str],
        options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        let secret = self.file.current();
        let cred = {
            let mut current = self.current.lock().expect("credential lock");
            if current.0 != secret {
                let cred = Self::build(&self.tenant, &self.client, &secret, &*self.options)
                    .map_err(|m| {
                        azure_core::Error::with_message(azure_core::error::ErrorKind::Credential, m)
                    })?;
                *current = (secret, cred);
            }
            current.1.clone()
        };
        cred.get_token(scopes, options).await
    }
}

/// The client assertion of a certificate credential, signed here from a PEM file so
/// the build needs no OpenSSL: an RS256 JWT with the certificate's SHA-1 thumbprint
/// (`x5t`), audience the token endpoint, issuer and subject the client ID.
struct CertificateAssertion {
    key: jsonwebtoken::EncodingKey,
    x5t: String,
    client_id: String,
    audience: String,
}

impl fmt::Debug for CertificateAssertion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAssertion")
            .field("x5t", &self.x5t)
            .finish_non_exhaustive()
    }
}

impl CertificateAssertion {
    fn load(
        path: &std::path::Path,
        tenant: &str,
        client_id: &str,
        authority: Option<&url::Url>,
    ) -> Result<Self, String> {
        let text =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let blocks = pem::parse_many(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let cert = blocks
            .iter()
            .find(|b| b.tag() == "CERTIFICATE")
            .ok_or_else(|| format!("{}: no CERTIFICATE block", path.display()))?;
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(&text)
            .map_err(|e| format!("{}: no usable RSA private key ({e})", path.display()))?;
        let x5t =
            base64::engine::general_purpose::STANDARD.encode(sha1::Sha1::digest(cert.contents()));
        let authority = authority.map_or("https://login.microsoftonline.com".to_string(), |u| {
            u.as_str().trim_end_matches('/').to_string()
        });
        Ok(CertificateAssertion {
            key,
            x5t,
            client_id: client_id.to_string(),
            audience: format!("{authority}/{tenant}/oauth2/v2.0/token"),
        })
    }
}

#[async_trait::async_trait]
impl ClientAssertion for CertificateAssertion {
    async fn secret(&self, _: Option<ClientMethodOptions<'_>>) -> azure_core::Result<String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.x5t = Some(self.x5t.clone());
        let claims = serde_json::json!({
            "aud": self.audience,
            "iss": self.client_id,
            "sub": self.client_id,
            "jti": format!("{now:x}-{:x}", rand_u64()),
            "nbf": now,
            "iat": now,
            "exp": now + 300,
        });
        jsonwebtoken::encode(&header, &claims, &self.key).map_err(|e| {
            azure_core::Error::with_message(
                azure_core::error::ErrorKind::Credential,
                format!("cannot sign the client assertion: {e}"),
            )
        })
    }
}

/// A unique-enough value for `jti`: the assertion is also bound by time and key.
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}
