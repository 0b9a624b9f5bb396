//! Opens `[storage.shared]`: the object store client every replica reads and writes
//! through, with the credential and the reach (`endpoint`, `resolve`, `ca_file`,
//! `proxy`) the configuration gives. What is stored there and how is the storage
//! crate's business (`ferry_storage::backend::ObjectBackend`).

use std::sync::Arc;

use azure_core::credentials::TokenCredential;
use ferry_storage::backend::{
    AzureAuth, AzureStore, Backend, CONNECT_TIMEOUT, ObjectBackend, READ_TIMEOUT, S3Auth, S3Store,
};
use object_store::azure::AzureCredential as Bearer;

use crate::config::{AzureCredential, S3Credential, SharedStore, StoreLocation};
use crate::upstream::{Reach, entra, http_builder};

/// The scope of an Entra token that Azure Blob Storage accepts.
pub const STORAGE_SCOPE: &str = "https://storage.azure.com/.default";

/// Why the shared store could not be opened (before any request is made).
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("storage.shared: {0}")]
    Store(#[from] ferry_storage::Error),
    /// `resolve`, `ca_file` or `proxy` (named in the message), or an Entra identity,
    /// that cannot be used.
    #[error("storage.shared: {0}")]
    Setup(String),
}

/// The configured shared store. Makes no request: an unreachable store is found, and
/// reported, when it is first used.
pub fn open(cfg: &SharedStore) -> Result<Arc<dyn Backend>, OpenError> {
    // The same client as an upstream's, so `resolve` pins the store's name (TLS still
    // verified against it), `ca_file` is trusted and `proxy` carries the requests,
    // the credential's (Entra, AWS's chain) included.
    let http = http_builder(Reach {
        resolve: &cfg.resolve,
        ca_pem: cfg.ca_pem.as_deref(),
        proxy: cfg.proxy.as_ref(),
        connect_timeout: CONNECT_TIMEOUT,
        read_timeout: READ_TIMEOUT,
    })
    .and_then(|b| b.build().map_err(|e| e.to_string()))
    .map_err(OpenError::Setup)?;
    let endpoint = cfg
        .endpoint
        .as_ref()
        .map(|u| u.as_str().trim_end_matches('/').to_string());
    let store = match &cfg.location {
        StoreLocation::Azure {
            account,
            container,
            credential,
        } => {
            let auth = match credential {
                AzureCredential::AccountKey(key) => {
                    AzureAuth::AccountKey(key.current().expose().trim().to_string())
                }
                AzureCredential::Sas(token) => {
                    AzureAuth::Sas(token.current().expose().trim().to_string())
                }
                AzureCredential::Entra(e) => {
                    let credential = entra::credential(e, http.clone())
                        .map_err(|e| OpenError::Setup(format!("Entra ID credential: {e}")))?;
                    AzureAuth::Token(Arc::new(EntraTokens(credential)))
                }
            };
            AzureStore {
                account: account.clone(),
                container: container.clone(),
                endpoint,
                auth,
                http: Some(http),
            }
            .build()?
        }
        StoreLocation::S3 {
            bucket,
            region,
            credential,
        } => {
            let auth = match credential {
                S3Credential::AccessKey { id, secret } => S3Auth::AccessKey {
                    id: id.clone(),
                    secret: secret.current().expose().trim().to_string(),
                    session_token: None,
                },
                S3Credential::Environment => S3Auth::Environment,
            };
            S3Store {
                bucket: bucket.clone(),
                region: region.clone(),
                endpoint,
                auth,
                http: Some(http),
            }
            .build()?
        }
    };
    Ok(Arc::new(ObjectBackend::new(store, &cfg.prefix)?))
}

/// An Entra identity's tokens for the storage scope, as object_store asks for a
/// credential before each request. azure_identity caches a token and fetches the
/// next one when less than five minutes of it remain, so this asks Entra about once
/// per token lifetime, not per request.
#[derive(Debug)]
struct EntraTokens(Arc<dyn TokenCredential>);

#[async_trait::async_trait]
impl object_store::client::CredentialProvider for EntraTokens {
    type Credential = Bearer;

    async fn get_credential(&self) -> object_store::Result<Arc<Bearer>> {
        let token = self
            .0
            .get_token(&[STORAGE_SCOPE], None)
            .await
            .map_err(|e| object_store::Error::Generic {
                store: "MicrosoftAzure",
                source: format!("Entra ID token for the storage scope: {e}").into(),
            })?;
        Ok(Arc::new(Bearer::BearerToken(
            token.token.secret().to_string(),
        )))
    }
}
