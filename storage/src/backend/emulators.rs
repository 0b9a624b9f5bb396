//! The shared store's emulators for the backend tests: the processes are the test
//! kit's ([`ferry_testkit::azurite`], [`ferry_testkit::moto`]); this adds the
//! [`AzureStore`] and [`S3Store`] that reach them.

pub use ferry_testkit::azurite::{Azurite, KEY};
pub use ferry_testkit::moto::{KEY_ID, Moto, SECRET};

use super::{AzureAuth, AzureStore, S3Auth, S3Store};

/// Where `container` of an Azurite is, with the account key.
pub trait AzuriteStore {
    fn store(&self, container: &str) -> AzureStore;
}

impl AzuriteStore for Azurite {
    fn store(&self, container: &str) -> AzureStore {
        AzureStore {
            account: ferry_testkit::azurite::ACCOUNT.into(),
            container: container.into(),
            endpoint: Some(self.endpoint()),
            auth: AzureAuth::AccountKey(KEY.into()),
            http: None,
        }
    }
}

/// Where `bucket` of a moto is, with the test access key.
pub trait MotoStore {
    fn store(&self, bucket: &str) -> S3Store;
}

impl MotoStore for Moto {
    fn store(&self, bucket: &str) -> S3Store {
        S3Store {
            bucket: bucket.into(),
            region: "us-east-1".into(),
            endpoint: Some(self.endpoint()),
            auth: S3Auth::AccessKey {
                id: KEY_ID.into(),
                secret: SECRET.into(),
                session_token: None,
            },
            http: None,
        }
    }
}

/// Every object in `b`'s container or bucket, whatever its prefix.
pub async fn everything(b: &super::ObjectBackend) -> Vec<String> {
    use futures_util::TryStreamExt;
    let all: Vec<_> = b.store().list(None).try_collect().await.unwrap();
    all.into_iter().map(|m| m.location.to_string()).collect()
}
