//! Azurite for the backend tests: the process is the test kit's
//! ([`ferry_testkit::azurite`]); this adds the [`AzureStore`] that reaches it.

pub use ferry_testkit::azurite::{Azurite, KEY};

use super::{AzureAuth, AzureStore};

/// Where `container` of `azurite` is, with the account key.
pub fn store(azurite: &Azurite, container: &str) -> AzureStore {
    AzureStore {
        account: ferry_testkit::azurite::ACCOUNT.into(),
        container: container.into(),
        endpoint: Some(azurite.endpoint()),
        auth: AzureAuth::AccountKey(KEY.into()),
    }
}
