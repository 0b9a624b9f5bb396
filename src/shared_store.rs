//! Opens `[storage.shared]`: the object store client every replica reads and writes
//! through, with the credential and the reach (`endpoint`, `resolve`, `ca_file`,
//! `proxy`) the configuration gives. What is stored there and how is the storage
//! crate's business (`ferry_storage::backend::ObjectBackend`).

use std::sync::{Arc, Mutex};

use azure_core::credentials::TokenCredential;
use ferry_storage::backend::{
    AzureAuth, AzureStore, CONNECT_TIMEOUT, ObjectBackend, READ_TIMEOUT, S3Auth, S3Store,
};
use object_store::aws::AwsCredential;
use object_store::azure::{AzureAccessKey, AzureCredential as Bearer, split_sas};

use crate::config::{
    AzureCredential, S3Credential, Secret, SecretSource, SharedStore, StoreLocation,
};
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
pub fn open(cfg: &SharedStore) -> Result<Arc<ObjectBackend>, OpenError> {
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
                AzureCredential::AccountKey(key) => AzureAuth::Provider(Arc::new(Following::new(
                    key,
                    "the account key is not base64",
                    |k| AzureAccessKey::try_new(k).ok().map(Bearer::AccessKey),
                )?)),
                AzureCredential::Sas(token) => AzureAuth::Provider(Arc::new(Following::new(
                    token,
                    "the SAS token is not a query string",
                    |t| split_sas(t).ok().map(Bearer::SASToken),
                )?)),
                AzureCredential::Entra(e) => {
                    let credential = entra::credential(e, http.clone())
                        .map_err(|e| OpenError::Setup(format!("Entra ID credential: {e}")))?;
                    AzureAuth::Provider(Arc::new(EntraTokens(credential)))
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
                S3Credential::AccessKey { id, secret } => {
                    let id = id.clone();
                    S3Auth::Provider(Arc::new(Following::new(
                        secret,
                        "the secret access key is not usable",
                        move |secret| {
                            Some(AwsCredential {
                                key_id: id.clone(),
                                secret_key: secret.to_string(),
                                token: None,
                            })
                        },
                    )?))
                }
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

/// Makes a credential from a secret, or `None` if the secret is malformed.
type Make<C> = Box<dyn Fn(&str) -> Option<C> + Send + Sync>;

/// A credential made from a secret (file or variable), made again when the file
/// changes: a rotated account key, SAS token or S3 secret is used from the next
/// request on, without a restart.
struct Following<C> {
    source: SecretSource,
    make: Make<C>,
    /// Why a secret is refused (never the secret itself).
    malformed: &'static str,
    current: Mutex<(Secret, Arc<C>)>,
}

impl<C> std::fmt::Debug for Following<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Following").finish_non_exhaustive()
    }
}

impl<C> Following<C> {
    /// Refuses a malformed secret now rather than at the first request.
    fn new(
        source: &SecretSource,
        malformed: &'static str,
        make: impl Fn(&str) -> Option<C> + Send + Sync + 'static,
    ) -> Result<Self, OpenError> {
        let secret = source.current();
        let credential =
            make(secret.expose().trim()).ok_or(OpenError::Setup(malformed.to_string()))?;
        Ok(Following {
            source: source.clone(),
            make: Box::new(make),
            malformed,
            current: Mutex::new((secret, Arc::new(credential))),
        })
    }
}

#[async_trait::async_trait]
impl<C: Send + Sync + 'static> object_store::client::CredentialProvider for Following<C> {
    type Credential = C;

    async fn get_credential(&self) -> object_store::Result<Arc<C>> {
        // A stat of the file while it is unchanged (`SecretSource::current`).
        let secret = self.source.current();
        let mut current = self.current.lock().expect("credential lock");
        if current.0 != secret {
            let credential = (self.make)(secret.expose().trim()).ok_or_else(|| {
                object_store::Error::Generic {
                    store: "shared store",
                    source: format!("{} (after it changed)", self.malformed).into(),
                }
            })?;
            *current = (secret, Arc::new(credential));
        }
        Ok(current.1.clone())
    }
}
