//! Opens `[storage.shared]`: the object store client every replica reads and writes
//! through, with the credential and the reach (`endpoint`, `resolve`, `ca_file`,
//! `proxy`) the configuration gives. What is stored there and how is the storage
//! crate's business (`ferry_storage::backend::ObjectBackend`).

use std::sync::Arc;

use ferry_storage::backend::{AzureAuth, AzureStore, ObjectBackend};

use crate::config::{AzureCredential, SharedStore, StoreLocation};

/// Why the shared store could not be opened (before any request is made).
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("storage.shared: {0}")]
    Store(#[from] ferry_storage::Error),
    #[error("storage.shared: {0}")]
    Unsupported(&'static str),
}

/// The configured shared store. Makes no request: an unreachable store is found, and
/// reported, when it is first used.
pub fn open(cfg: &SharedStore) -> Result<Arc<ObjectBackend>, OpenError> {
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
                AzureCredential::Entra(_) => {
                    return Err(OpenError::Unsupported(
                        "Entra identities for the shared store are not supported yet: use account_key or sas",
                    ));
                }
            };
            AzureStore {
                account: account.clone(),
                container: container.clone(),
                endpoint: cfg
                    .endpoint
                    .as_ref()
                    .map(|u| u.as_str().trim_end_matches('/').to_string()),
                auth,
            }
            .build()?
        }
        StoreLocation::S3 { .. } => {
            return Err(OpenError::Unsupported("kind = \"s3\" is not supported yet"));
        }
    };
    Ok(Arc::new(ObjectBackend::new(store, &cfg.prefix)?))
}
