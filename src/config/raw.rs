//! The configuration as written in TOML: serde types that keep each value's span, so
//! that validation can name the line of a bad value.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) server: RawServer,
    #[serde(default)]
    pub(super) storage: RawStorage,
    #[serde(default)]
    pub(super) upstream: Vec<RawUpstream>,
    #[serde(default)]
    pub(super) rule: Vec<RawRule>,
    #[serde(default)]
    pub(super) pin: Vec<RawPin>,
    #[serde(default)]
    pub(super) access: RawAccess,
    pub(super) tls: Option<RawTls>,
    pub(super) cluster: Option<RawCluster>,
}

/// `[cluster]`: the other replicas sharing `[storage.shared]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    pub(super) peers: Spanned<Vec<Spanned<String>>>,
    pub(super) listen: Option<Spanned<String>>,
    pub(super) secret_file: Option<Spanned<String>>,
    pub(super) secret_env: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAccess {
    pub(super) htpasswd: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) user: Vec<RawUser>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUser {
    pub(super) name: Spanned<String>,
    pub(super) allow: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(super) deny: Vec<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) listen: Option<Spanned<String>>,
    pub(super) cert_file: Option<Spanned<String>>,
    pub(super) key_file: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPin {
    pub(super) images: Vec<Spanned<String>>,
    pub(super) refresh: Option<Spanned<String>>,
    pub(super) platform: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    pub(super) name: Spanned<String>,
    pub(super) source: Spanned<String>,
    pub(super) target: Spanned<String>,
    pub(super) upstream: Spanned<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) listen: Option<Spanned<String>>,
    pub(super) shutdown_timeout: Option<Spanned<String>>,
    pub(super) header_read_timeout: Option<Spanned<String>>,
    pub(super) idle_timeout: Option<Spanned<String>>,
    pub(super) max_connections: Option<Spanned<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStorage {
    pub(super) root: Option<Spanned<String>>,
    pub(super) max_size: Option<Spanned<String>>,
    pub(super) min_free: Option<Spanned<String>>,
    pub(super) scrub_rate: Option<Spanned<String>>,
    pub(super) local_max_size: Option<Spanned<String>>,
    pub(super) shared: Option<Spanned<RawShared>>,
}

/// `[storage.shared]`. One table for both kinds, rather than a tagged enum, so that
/// every value keeps its span; which keys belong to which kind is checked in
/// `shared.rs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawShared {
    pub(super) kind: Spanned<String>,
    pub(super) account: Option<Spanned<String>>,
    pub(super) container: Option<Spanned<String>>,
    pub(super) bucket: Option<Spanned<String>>,
    pub(super) region: Option<Spanned<String>>,
    pub(super) prefix: Option<Spanned<String>>,
    pub(super) endpoint: Option<Spanned<String>>,
    pub(super) auth: Option<Spanned<RawStoreAuth>>,
    #[serde(default)]
    pub(super) resolve: BTreeMap<String, Spanned<String>>,
    pub(super) ca_file: Option<Spanned<String>>,
    pub(super) proxy: Option<Spanned<String>>,
    pub(super) eviction_grace: Option<Spanned<String>>,
}

/// `[storage.shared] auth`, tagged by `kind` like an upstream's.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub(super) enum RawStoreAuth {
    /// Azure: the storage account's Shared Key.
    AccountKey {
        key_file: Option<String>,
        key_env: Option<String>,
    },
    /// Azure: a SAS token.
    Sas {
        token_file: Option<String>,
        token_env: Option<String>,
    },
    /// Azure: an Entra identity, as for an upstream.
    Entra(RawEntra),
    /// S3: an access key.
    AccessKey {
        access_key_id: Option<String>,
        secret_access_key_file: Option<String>,
        secret_access_key_env: Option<String>,
    },
    /// S3: the standard AWS chain (environment, web identity, instance metadata).
    Environment {},
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub(super) name: Spanned<String>,
    pub(super) registry: Option<Spanned<String>>,
    pub(super) url: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) default: Option<Spanned<bool>>,
    pub(super) tag_ttl: Option<Spanned<String>>,
    pub(super) connect_timeout: Option<Spanned<String>>,
    pub(super) read_timeout: Option<Spanned<String>>,
    pub(super) max_stale: Option<Spanned<String>>,
    pub(super) offline_after_failures: Option<Spanned<u32>>,
    pub(super) auth: Option<Spanned<RawAuth>>,
    #[serde(default)]
    pub(super) resolve: BTreeMap<String, Spanned<String>>,
    pub(super) ca_file: Option<Spanned<String>>,
    pub(super) proxy: Option<Spanned<String>>,
    pub(super) insecure_skip_verify: Option<Spanned<bool>>,
    #[serde(default)]
    pub(super) realm_hosts: Vec<Spanned<String>>,
    pub(super) allow: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(super) deny: Vec<Spanned<String>>,
}

/// `auth`: which keys a table may hold follows from its `kind`, so serde refuses a key
/// that does not belong to it (with the key and its line) before validation runs.
///
/// Inside the table values have no spans of their own (serde reads a tagged table
/// through a buffer that keeps none): errors name the table's line and the key.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub(super) enum RawAuth {
    Anonymous {},
    Basic {
        username: Option<String>,
        password_file: Option<String>,
        password_env: Option<String>,
    },
    Bearer {
        token_file: Option<String>,
        token_env: Option<String>,
    },
    Entra(RawEntra),
}

/// An Entra identity's keys, in an upstream's `auth` or the shared store's.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEntra {
    pub(super) tenant_id: Option<String>,
    pub(super) client_id: Option<String>,
    pub(super) client_secret_file: Option<String>,
    pub(super) client_secret_env: Option<String>,
    pub(super) certificate_file: Option<String>,
    pub(super) workload_identity: Option<bool>,
    pub(super) managed_identity: Option<RawManagedIdentity>,
    pub(super) authority_host: Option<String>,
    /// With `workload_identity`: the federated token file.
    pub(super) token_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawManagedIdentity {
    Enabled(bool),
    UserAssigned { client_id: String },
}
