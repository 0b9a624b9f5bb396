//! The shared backend: blobs and records as objects in Azure Blob Storage or an S3
//! bucket, which every replica of a cluster reads and writes.
//!
//! # Why `object_store`
//!
//! The client is the Apache Arrow project's [`object_store`] crate rather than Azure's
//! `azure_storage_blob`: one API for Azure Blob Storage and S3 (the S3 backend is this
//! same code given the store [`S3Store::build`] makes), and it does everything this
//! backend needs against both (checked by the backend suite against Azurite and
//! moto): conditional puts ([`PutMode::Create`] as `If-None-Match: *`,
//! [`PutMode::Update`] as `If-Match: <ETag>`), block and multipart uploads committed
//! by one final request, ranged GETs streamed, listing by prefix, Shared Key, SAS and
//! Entra credentials (a token provider plugs in through `with_credentials`), S3 access
//! keys and AWS's credential chain, and it is the crate most Rust data tools use on
//! these stores. [`AzureStore`] and [`S3Store`] only say where the store is and how to
//! sign; both get the same HTTP timeouts and retries.
//!
//! # Layout, under a configurable prefix
//!
//! | object                                        | holds                         |
//! |-----------------------------------------------|-------------------------------|
//! | `blobs/<alg>/<hex>`                           | a blob or manifest's bytes    |
//! | `meta/blobs/<alg>/<hex>`                      | its [`BlobRecord`] (JSON)     |
//! | `meta/manifests/<alg>/<hex>`                  | a [`ManifestRecord`] (JSON)   |
//! | `meta/repos/<upstream>/<name>/_tags/<tag>`    | a [`TagRecord`] (JSON)        |
//! | `meta/repos/<upstream>/<name>/_listed`        | the upstream's tag list       |
//! | `meta/repos/<upstream>/<name>/_links/<alg>/<hex>` | empty: `<digest>` is linked |
//! | `meta/repos/<upstream>/<name>/_referrers/<alg>/<hex>/<query>` | a referrers answer |
//! | `meta/lease/maintenance`                      | who runs eviction, until when |
//!
//! Repository name components start with a letter or digit, so `_tags`, `_links`... never
//! collide with one, and `r` never sees `r/sub`'s records by a shared prefix (listing is
//! by whole path segments). The upstream name is one path segment (escaped if need be).
//!
//! S3 has no directories, only key prefixes: object_store lists `<dir>/`, with the
//! slash, so whole segments hold there too.
//!
//! # Blobs: nothing readable before it verified
//!
//! A [`BlobWriter`] hashes every byte as it arrives. A blob that fits in one part
//! ([`PART`], 8 MiB) is kept in memory and written by one `Put Blob` at the commit,
//! after the size and digest checked. A larger one is uploaded as blocks (S3: parts) as it
//! arrives (a write waits while two blocks are in flight: back-pressure on the
//! upstream, about three parts, 24 MiB, held per blob being written) and becomes
//! visible only when the commit, after the checks, puts the block list (Azure) or
//! completes the multipart upload (S3). A refused or abandoned writer commits nothing:
//! its staged blocks or uploaded parts are never readable nor listed. On Azure the
//! service drops them (at the next commit of that name or after a week); on S3 the
//! writer aborts its upload (dropped, in a task of its own), and an upload that a
//! killed process left open stays until a bucket lifecycle rule
//! (`AbortIncompleteMultipartUpload`, a day is plenty) removes its parts: invisible,
//! but billed until then. S3 refuses parts under 5 MiB but the last: [`PART`] is
//! 8 MiB, and a part size set with [`ObjectBackend::with_part_size`] must stay at
//! 5 MiB or more there.
//!
//! Two writers of one digest (two replicas fetching the same blob) may race: on Azure
//! the first commit discards the other's staged blocks, so the second commit fails;
//! on S3 both uploads are separate and either can complete. The object is
//! content-addressed and was verified by whoever committed it, so a writer that finds
//! it already there, before its commit (it then aborts its upload rather than replace
//! the object, and its ETag, under readers) or after a failed one, is done.
//!
//! # Records
//!
//! Tag records and blob records (access times) are read with their ETag and replaced
//! with `If-Match` (created with `If-None-Match: *`): a replica that lost the race is
//! told ([`Swap::Conflict`]) and reapplies its change, so no update is lost. A lost
//! race reads differently per store, all of it a conflict here: `412` (Azure, S3), `409`
//! for a create (Azurite; S3 when two conditional writes of one key are in flight,
//! which object_store retries for `If-Match`), `404` for `If-Match` on a removed
//! object (S3). S3 honours these headers since 2024 (AWS; moto 5.2.6, pinned by
//! `tests/run.sh`, does, as the tests check); a store that ignored them would lose
//! updates silently, so the tests check the stores they use
//! (`conditional_writes_are_honoured_by_the_store`). Manifest records, links, tag
//! lists and referrers answers are plain writes (immutable, or the upstream's latest
//! word). [`MetaStore::blob_stored_in`] is two writes here: the link
//! first, then the record, so a crash between them leaves a servable blob without a
//! record (found by a sweep of `blobs/`, as the filesystem backend finds unrecorded
//! files) rather than a record of a blob no repository serves.

use std::collections::BTreeSet;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::{Path, PathPart};
use object_store::{
    ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode, PutOptions,
    PutPayload, RetryConfig, UpdateVersion, WriteMultipart,
};
use serde::{Serialize, de::DeserializeOwned};

use super::{BlobStore, BlobWriter, ByteStream, MetaStore, Swap, Version, Versioned};
use crate::index::now_secs;
use crate::{BlobRecord, Digest, Error, Hasher, ManifestRecord, Repo, Result, Tag, TagRecord};

/// Blobs up to this size are written by one request; larger ones in blocks of it.
pub const PART: usize = 8 << 20;
/// Blocks of one blob uploaded at once.
const PARTS_IN_FLIGHT: usize = 2;

/// How to reach an Azure Blob Storage container.
#[derive(Clone)]
pub struct AzureStore {
    pub account: String,
    pub container: String,
    /// `https://<account>.blob.core.windows.net` if `None`; a private endpoint, or
    /// Azurite's `http://127.0.0.1:<port>/<account>` (the account is the first path
    /// segment there).
    pub endpoint: Option<String>,
    pub auth: AzureAuth,
    /// The HTTP client to reach the store with (Ferry's: address pins, trusted CAs, a
    /// proxy), built with [`CONNECT_TIMEOUT`] and [`READ_TIMEOUT`] and no limit on a
    /// whole request; `None`: object_store's own.
    pub http: Option<reqwest::Client>,
}

/// Credentials for [`AzureStore`].
#[derive(Clone)]
pub enum AzureAuth {
    /// The account's Shared Key (base64).
    AccountKey(String),
    /// A SAS token (the query string, with or without its `?`).
    Sas(String),
    /// Credentials from a provider, asked before each request: Entra ID tokens (the
    /// provider caches and refreshes them), or a key or SAS token that follows a file.
    Provider(object_store::azure::AzureCredentialProvider),
}

impl std::fmt::Debug for AzureStore {
    /// Without the credential.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureStore")
            .field("account", &self.account)
            .field("container", &self.container)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl AzureStore {
    /// The store client; makes no request.
    pub fn build(&self) -> Result<Arc<dyn ObjectStore>> {
        use object_store::azure::MicrosoftAzureBuilder;
        let (options, retry) = client_options(self.endpoint.as_deref());
        let mut builder = MicrosoftAzureBuilder::new()
            .with_account(&self.account)
            .with_container_name(&self.container)
            .with_client_options(options)
            .with_retry(retry);
        if let Some(endpoint) = &self.endpoint {
            builder = builder.with_endpoint(endpoint.clone());
        }
        builder = match &self.auth {
            AzureAuth::AccountKey(key) => builder.with_access_key(key),
            AzureAuth::Sas(token) => builder.with_config(
                object_store::azure::AzureConfigKey::SasKey,
                token.trim_start_matches('?'),
            ),
            AzureAuth::Provider(provider) => builder.with_credentials(provider.clone()),
        };
        if let Some(http) = &self.http {
            builder = builder.with_http_connector(Prebuilt(http.clone()));
        }
        Ok(Arc::new(builder.build()?))
    }
}

/// How to reach an S3 bucket (AWS, or an S3-compatible service: MinIO, Ceph, R2...).
#[derive(Clone)]
pub struct S3Store {
    pub bucket: String,
    pub region: String,
    /// AWS's regional endpoint if `None`; else the service's URL (`http://` allowed),
    /// addressed path-style (`<endpoint>/<bucket>/<key>`), which every S3-compatible
    /// service understands.
    pub endpoint: Option<String>,
    pub auth: S3Auth,
    /// As [`AzureStore::http`].
    pub http: Option<reqwest::Client>,
}

/// Credentials for [`S3Store`].
#[derive(Clone)]
pub enum S3Auth {
    /// An access key (a temporary one with its session token).
    AccessKey {
        id: String,
        secret: String,
        session_token: Option<String>,
    },
    /// AWS's standard chain, from the process's environment: `AWS_ACCESS_KEY_ID` /
    /// `AWS_SECRET_ACCESS_KEY` (/ `AWS_SESSION_TOKEN`), else a web identity token
    /// (`AWS_WEB_IDENTITY_TOKEN_FILE` and `AWS_ROLE_ARN`: EKS IRSA), else ECS / EKS Pod
    /// Identity container credentials, else the instance metadata service.
    Environment,
    /// Credentials from a provider, asked before each request (an access key that
    /// follows a file).
    Provider(object_store::aws::AwsCredentialProvider),
}

impl std::fmt::Debug for S3Store {
    /// Without the credential (the key id too: it names an account).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let auth = match self.auth {
            S3Auth::AccessKey { .. } => "access key",
            S3Auth::Environment => "environment",
            S3Auth::Provider(_) => "provider",
        };
        f.debug_struct("S3Store")
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("auth", &auth)
            .finish()
    }
}

impl S3Store {
    /// The store client; makes no request (the environment's credentials are fetched
    /// at the first one).
    pub fn build(&self) -> Result<Arc<dyn ObjectStore>> {
        self.build_with_env(|name| std::env::var(name).ok())
    }

    /// [`S3Store::build`], with `env` as the process environment.
    fn build_with_env(&self, env: impl Fn(&str) -> Option<String>) -> Result<Arc<dyn ObjectStore>> {
        use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
        let builder = match &self.auth {
            S3Auth::Environment => {
                let mut builder = AmazonS3Builder::new();
                for key in CREDENTIAL_CHAIN {
                    if let Some(value) = env(&key.as_ref().to_ascii_uppercase()) {
                        builder = builder.with_config(key, value);
                    }
                }
                builder
            }
            S3Auth::AccessKey {
                id,
                secret,
                session_token,
            } => {
                let keyed = AmazonS3Builder::new()
                    .with_access_key_id(id)
                    .with_secret_access_key(secret);
                match session_token {
                    Some(token) => keyed.with_token(token),
                    None => keyed,
                }
            }
            S3Auth::Provider(provider) => AmazonS3Builder::new().with_credentials(provider.clone()),
        };
        let (options, retry) = client_options(self.endpoint.as_deref());
        let mut builder = builder
            .with_bucket_name(&self.bucket)
            .with_region(&self.region)
            .with_virtual_hosted_style_request(false)
            // Tag and blob records are replaced with `If-Match` and created with
            // `If-None-Match: *` (AWS S3 since 2024, MinIO, R2, moto).
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            .with_client_options(options)
            .with_retry(retry);
        if let Some(endpoint) = &self.endpoint {
            builder = builder.with_endpoint(endpoint.clone());
        }
        if let Some(http) = &self.http {
            builder = builder.with_http_connector(Prebuilt(http.clone()));
        }
        Ok(Arc::new(builder.build()?))
    }
}

/// A client built by the caller (with the timeouts of [`client_options`]), used for
/// every request of the store, the credential requests (AWS's chain) included.
#[derive(Debug)]
struct Prebuilt(reqwest::Client);

impl object_store::client::HttpConnector for Prebuilt {
    fn connect(&self, _: &ClientOptions) -> object_store::Result<object_store::client::HttpClient> {
        Ok(object_store::client::HttpClient::new(self.0.clone()))
    }
}

/// The `AWS_*` variables of AWS's credential chain that [`S3Auth::Environment`] reads
/// (as the AWS SDKs do). Only these: the bucket, region and endpoint are Ferry's
/// configuration, and an `AWS_ENDPOINT` meant for another tool must not send the
/// store's traffic elsewhere.
const CREDENTIAL_CHAIN: [object_store::aws::AmazonS3ConfigKey; 11] = {
    use object_store::aws::AmazonS3ConfigKey as K;
    [
        K::AccessKeyId,
        K::SecretAccessKey,
        K::Token,
        K::WebIdentityTokenFile,
        K::RoleArn,
        K::RoleSessionName,
        K::StsEndpoint,
        K::ContainerCredentialsRelativeUri,
        K::ContainerCredentialsFullUri,
        K::ContainerAuthorizationTokenFile,
        K::MetadataEndpoint,
    ]
};

/// How long a connection to the store may take to open.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the store may stay silent in the middle of an answer.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The HTTP client settings of every store. Blob bodies take as long as their readers
/// do: no limit on a whole request, but a store that stops answering is noticed, and
/// retries end soon enough for a caller to fall back to the upstream.
fn client_options(endpoint: Option<&str>) -> (ClientOptions, RetryConfig) {
    let options = ClientOptions::new()
        .with_timeout_disabled()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_read_timeout(READ_TIMEOUT)
        .with_allow_http(endpoint.is_some_and(|e| e.starts_with("http://")));
    let retry = RetryConfig {
        max_retries: 3,
        retry_timeout: Duration::from_secs(15),
        ..Default::default()
    };
    (options, retry)
}

/// Blobs and records as objects under one prefix of an object store.
#[derive(Clone)]
pub struct ObjectBackend {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    /// Bytes per block of an upload ([`PART`]).
    part: usize,
}

impl std::fmt::Debug for ObjectBackend {
    /// The store's `Display` (account and container): its `Debug` shows credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectBackend")
            .field("store", &format_args!("{}", self.store))
            .field("prefix", &self.prefix.as_ref())
            .finish_non_exhaustive()
    }
}

impl ObjectBackend {
    /// Everything this backend writes goes under `prefix` (`""`: the container's root;
    /// `"prod/"`: several deployments share a container).
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str) -> Result<ObjectBackend> {
        let prefix = Path::parse(prefix.trim_matches('/')).map_err(object_store::Error::from)?;
        Ok(ObjectBackend {
            store,
            prefix,
            part: PART,
        })
    }

    /// Uploads in blocks of `part` bytes (tests: many blocks from small blobs).
    pub fn with_part_size(mut self, part: usize) -> ObjectBackend {
        self.part = part.max(1);
        self
    }

    /// The object store underneath.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    fn path<'a>(&self, parts: impl IntoIterator<Item = PathPart<'a>>) -> Path {
        let mut path = self.prefix.clone();
        for part in parts {
            path = path.join(part);
        }
        path
    }

    fn digest_parts(d: &Digest) -> [PathPart<'static>; 2] {
        [
            PathPart::from(d.algorithm().name().to_owned()),
            PathPart::from(d.hex().to_owned()),
        ]
    }

    /// The path of blob `d`'s bytes.
    pub fn blob_path(&self, d: &Digest) -> Path {
        self.path(
            [PathPart::from("blobs")]
                .into_iter()
                .chain(Self::digest_parts(d)),
        )
    }

    fn lease_path(&self) -> Path {
        self.path(["meta", "lease", "maintenance"].map(PathPart::from))
    }

    fn blobs_dir(&self) -> Path {
        self.path([PathPart::from("blobs")])
    }

    fn record_path(&self, kind: &'static str, d: &Digest) -> Path {
        let head = [PathPart::from("meta"), PathPart::from(kind)];
        self.path(head.into_iter().chain(Self::digest_parts(d)))
    }

    /// `meta/repos/<upstream>/<name>/<what>`.
    fn repo_path<'a>(&self, repo: &'a Repo, what: impl IntoIterator<Item = PathPart<'a>>) -> Path {
        let head = [
            PathPart::from("meta"),
            PathPart::from("repos"),
            PathPart::from(repo.upstream.as_str()),
        ];
        let name = repo.name.as_str().split('/').map(PathPart::from);
        self.path(head.into_iter().chain(name).chain(what))
    }

    fn tag_path(&self, repo: &Repo, tag: &Tag) -> Path {
        self.repo_path(
            repo,
            [PathPart::from("_tags"), PathPart::from(tag.as_str())],
        )
    }

    fn link_path(&self, repo: &Repo, d: &Digest) -> Path {
        let what = [PathPart::from("_links")];
        self.repo_path(repo, what.into_iter().chain(Self::digest_parts(d)))
    }

    fn referrers_path(&self, repo: &Repo, subject: &Digest, artifact_type: Option<&str>) -> Path {
        // A media type has `/` and `+`: hex keeps it one plain segment.
        let query = match artifact_type {
            None => "all".to_owned(),
            Some(t) => format!("type-{}", hex::encode(t)),
        };
        let what = [PathPart::from("_referrers")];
        let tail = [PathPart::from(query)];
        self.repo_path(
            repo,
            what.into_iter()
                .chain(Self::digest_parts(subject))
                .chain(tail),
        )
    }

    /// The object at `path`, or `None`.
    async fn get_bytes(&self, path: &Path) -> Result<Option<(Bytes, Option<String>)>> {
        match self.store.get(path).await {
            Ok(got) => {
                let etag = got.meta.e_tag.clone();
                Ok(Some((got.bytes().await?, etag)))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn get_json<T: DeserializeOwned>(
        &self,
        path: &Path,
    ) -> Result<Option<(T, Option<String>)>> {
        let Some((bytes, etag)) = self.get_bytes(path).await? else {
            return Ok(None);
        };
        let value = serde_json::from_slice(&bytes).map_err(|e| Error::CorruptRecord {
            key: path.to_string(),
            reason: e.to_string(),
        })?;
        Ok(Some((value, etag)))
    }

    async fn put(&self, path: &Path, bytes: impl Into<PutPayload>) -> Result<()> {
        self.store.put(path, bytes.into()).await?;
        Ok(())
    }

    /// Writes `value` if the object is still at `etag` (`None`: still absent); `None` if
    /// it was not.
    async fn put_if(
        &self,
        path: &Path,
        etag: Option<&str>,
        value: Vec<u8>,
    ) -> Result<Option<Option<String>>> {
        let mode = match etag {
            None => PutMode::Create,
            Some(e) => PutMode::Update(UpdateVersion {
                e_tag: Some(e.to_owned()),
                version: None,
            }),
        };
        let opts = PutOptions {
            mode,
            ..Default::default()
        };
        match self.store.put_opts(path, value.into(), opts).await {
            Ok(done) => Ok(Some(done.e_tag)),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. }
                // Replaced with If-Match after it was removed.
                | object_store::Error::NotFound { .. },
            ) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Replaces the JSON record at `path` with `change` applied to it, with conditional
    /// writes until no other writer came in between (`change` returning `None`: leave it).
    async fn update_json<T: Serialize + DeserializeOwned>(
        &self,
        path: &Path,
        mut change: impl FnMut(Option<T>) -> Option<T>,
    ) -> Result<()> {
        loop {
            let (current, etag) = match self.get_json::<T>(path).await? {
                Some((v, etag)) => (Some(v), Some(etag.ok_or_else(|| no_etag(path))?)),
                None => (None, None),
            };
            let Some(new) = change(current) else {
                return Ok(());
            };
            let bytes = serde_json::to_vec(&new).expect("records serialize");
            if self.put_if(path, etag.as_deref(), bytes).await?.is_some() {
                return Ok(());
            }
        }
    }

    /// Whether an object exists at `path`.
    async fn exists(&self, path: &Path) -> Result<bool> {
        match self.store.head(path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes the object at `path`; whether it was there. S3 answers a delete of
    /// nothing as it answers one of something (`204`), so the object is looked up first
    /// (two replicas deleting it at once may then both say they did).
    async fn delete_path(&self, path: &Path) -> Result<bool> {
        if !self.exists(path).await? {
            return Ok(false);
        }
        self.remove(path).await?;
        Ok(true)
    }

    /// Deletes the object at `path` if there is one.
    async fn remove(&self, path: &Path) -> Result<()> {
        match self.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The path of every object under `dir`.
    async fn names_under(&self, dir: &Path) -> Result<Vec<Path>> {
        Ok(self
            .store
            .list(Some(dir))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await?)
    }
}

fn no_etag(path: &Path) -> Error {
    Error::Io(io::Error::other(format!(
        "the object store gave no ETag for {path}: conditional writes are impossible"
    )))
}

#[async_trait::async_trait]
impl BlobStore for ObjectBackend {
    async fn stat(&self, d: &Digest) -> Result<Option<u64>> {
        match self.store.head(&self.blob_path(d)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn read_range(&self, d: &Digest, start: u64, len: u64) -> Result<Option<ByteStream>> {
        let outside = |size: u64| Error::RangeOutsideBlob {
            digest: d.clone(),
            start,
            end: start.saturating_add(len),
            size,
        };
        let end = start.checked_add(len).filter(|_| len > 0);
        let Some(end) = end else {
            // HTTP has no empty range (nor one past u64): the size alone answers.
            return match self.stat(d).await? {
                None => Ok(None),
                Some(size) if end.is_none() && len > 0 => Err(outside(size)),
                Some(size) if start > size => Err(outside(size)),
                Some(_) => Ok(Some(futures_util::stream::empty().boxed())),
            };
        };
        let opts = GetOptions {
            range: Some(GetRange::Bounded(start..end)),
            ..Default::default()
        };
        let got = match self.store.get_opts(&self.blob_path(d), opts).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            // A range starting at or past the end is refused (416): the size tells.
            Err(e) => {
                return match self.stat(d).await? {
                    None => Ok(None),
                    Some(size) if end > size => Err(outside(size)),
                    Some(_) => Err(e.into()),
                };
            }
        };
        // A range reaching past the end comes back cut to the object.
        if end > got.meta.size {
            return Err(outside(got.meta.size));
        }
        Ok(Some(exactly(got.into_stream(), len)))
    }

    async fn writer(&self, d: &Digest, size: Option<u64>) -> Result<Box<dyn BlobWriter>> {
        Ok(Box::new(ObjectWriter {
            backend: self.clone(),
            path: self.blob_path(d),
            digest: d.clone(),
            expected: size,
            hasher: Some(d.algorithm().hasher()),
            written: 0,
            buffered: Vec::new(),
            upload: None,
        }))
    }

    async fn delete(&self, d: &Digest) -> Result<bool> {
        self.delete_path(&self.blob_path(d)).await
    }

    async fn list(&self) -> Result<Vec<Digest>> {
        let dir = self.blobs_dir();
        let mut out = Vec::new();
        for path in self.names_under(&dir).await? {
            let parts: Vec<_> = path.prefix_match(&dir).into_iter().flatten().collect();
            // `<alg>/<hex>`; anything else is not this backend's.
            if let [alg, hex] = parts.as_slice()
                && let Ok(d) = format!("{}:{}", alg.as_ref(), hex.as_ref()).parse::<Digest>()
            {
                out.push(d);
            }
        }
        out.sort();
        Ok(out)
    }
}

/// `stream`, checked to yield exactly `len` bytes: one that ends early ends with an
/// error, never as a short body.
fn exactly(
    stream: futures_util::stream::BoxStream<'static, object_store::Result<Bytes>>,
    len: u64,
) -> ByteStream {
    futures_util::stream::unfold(Some((stream, len)), |state| async move {
        let (mut stream, left) = state?;
        let item = match stream.next().await {
            Some(Ok(chunk)) => match left.checked_sub(chunk.len() as u64) {
                Some(left) => return Some((Ok(chunk), Some((stream, left)))),
                None => io::Error::other("the object store sent more than the range"),
            },
            Some(Err(e)) => io::Error::other(e),
            None if left == 0 => return None,
            None => io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the object store's body ended {left} bytes short"),
            ),
        };
        // An error ends the stream.
        Some((Err(item), None))
    })
    .boxed()
}

/// A blob on its way into the object store; see the module doc.
struct ObjectWriter {
    backend: ObjectBackend,
    path: Path,
    digest: Digest,
    expected: Option<u64>,
    /// Taken by the commit.
    hasher: Option<Hasher>,
    written: u64,
    /// What came before the upload started (at most one part).
    buffered: Vec<Bytes>,
    upload: Option<WriteMultipart>,
}

impl ObjectWriter {
    fn size_mismatch(&self, actual: u64) -> Error {
        Error::SizeMismatch {
            digest: self.digest.clone(),
            expected: self.expected.unwrap_or(actual),
            actual,
        }
    }

    /// Whether the blob is already stored (another writer committed it), at its size.
    fn already_stored(&self) -> impl Future<Output = Result<bool>> + Send + 'static {
        let (backend, digest, size) = (self.backend.clone(), self.digest.clone(), self.written);
        async move { Ok(backend.stat(&digest).await? == Some(size)) }
    }
}

#[async_trait::async_trait]
impl BlobWriter for ObjectWriter {
    async fn write(&mut self, bytes: Bytes) -> Result<()> {
        let total = self.written + bytes.len() as u64;
        if self.expected.is_some_and(|n| total > n) {
            return Err(self.size_mismatch(total));
        }
        let Some(hasher) = self.hasher.as_mut() else {
            return Err(Error::Io(io::Error::other("write after commit")));
        };
        hasher.update(&bytes);
        self.written = total;
        match &mut self.upload {
            Some(upload) => upload.put(bytes),
            None => {
                self.buffered.push(bytes);
                if self.written > self.backend.part as u64 {
                    let upload = self.backend.store.put_multipart(&self.path).await?;
                    let part = self.backend.part;
                    let mut upload = WriteMultipart::new_with_chunk_size(upload, part);
                    for b in self.buffered.drain(..) {
                        upload.put(b);
                    }
                    self.upload = Some(upload);
                }
            }
        }
        if let Some(upload) = &mut self.upload {
            upload.wait_for_capacity(PARTS_IN_FLIGHT).await?;
        }
        Ok(())
    }

    fn written(&self) -> u64 {
        self.written
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        if self.expected.is_some_and(|n| n != self.written) {
            return Err(self.size_mismatch(self.written));
        }
        let actual = self.hasher.take().expect("committed once").finish();
        if actual != self.digest {
            return Err(Error::DigestMismatch {
                expected: self.digest.clone(),
                actual,
            });
        }
        let Some(upload) = self.upload.take() else {
            let payload = PutPayload::from_iter(std::mem::take(&mut self.buffered));
            let opts = PutOptions {
                mode: PutMode::Create,
                ..Default::default()
            };
            return match self.backend.store.put_opts(&self.path, payload, opts).await {
                Ok(_) => Ok(()),
                // Committed by another writer: the same verified bytes. But S3's `409`
                // (reported as this) also means another conditional write of the name
                // is only in flight, and may yet fail: done only if the blob is there.
                Err(e @ object_store::Error::AlreadyExists { .. }) => {
                    if self.already_stored().await? {
                        Ok(())
                    } else {
                        Err(e.into())
                    }
                }
                Err(e) => Err(e.into()),
            };
        };
        // Committing over a stored blob would change its ETag under its readers.
        if self.already_stored().await? {
            upload.abort().await?;
            return Ok(());
        }
        match upload.finish().await {
            Ok(_) => Ok(()),
            // Another writer's commit in between discarded this one's blocks.
            Err(_) if self.already_stored().await? => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

impl Drop for ObjectWriter {
    /// An abandoned upload is aborted (S3 keeps its parts until then; Azure has nothing
    /// to abort).
    fn drop(&mut self) {
        if let Some(upload) = self.upload.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                let _ = upload.abort().await;
            });
        }
    }
}

#[async_trait::async_trait]
impl MetaStore for ObjectBackend {
    async fn tag(&self, repo: &Repo, tag: &Tag) -> Result<Option<Versioned<TagRecord>>> {
        let path = self.tag_path(repo, tag);
        let Some((value, etag)) = self.get_json(&path).await? else {
            return Ok(None);
        };
        let etag = etag.ok_or_else(|| no_etag(&path))?;
        Ok(Some(Versioned {
            value,
            version: Version(etag.into_bytes()),
        }))
    }

    async fn swap_tag(
        &self,
        repo: &Repo,
        tag: &Tag,
        expected: Option<&Version>,
        rec: &TagRecord,
    ) -> Result<Swap> {
        let path = self.tag_path(repo, tag);
        let expected = expected
            .map(|v| String::from_utf8(v.0.clone()))
            .transpose()
            .map_err(|_| Error::Io(io::Error::other("not a version of this backend")))?;
        let bytes = serde_json::to_vec(rec).expect("records serialize");
        Ok(
            match self.put_if(&path, expected.as_deref(), bytes).await? {
                Some(etag) => Swap::Done(Version(etag.ok_or_else(|| no_etag(&path))?.into_bytes())),
                None => Swap::Conflict,
            },
        )
    }

    async fn known_tags(&self, repo: &Repo) -> Result<BTreeSet<String>> {
        let dir = self.repo_path(repo, [PathPart::from("_tags")]);
        Ok(self
            .names_under(&dir)
            .await?
            .iter()
            .filter_map(|p| p.filename().map(str::to_owned))
            .collect())
    }

    async fn listed_tags(&self, repo: &Repo) -> Result<Option<Vec<Tag>>> {
        let path = self.repo_path(repo, [PathPart::from("_listed")]);
        let Some((names, _)) = self.get_json::<Vec<String>>(&path).await? else {
            return Ok(None);
        };
        Ok(Some(names.iter().filter_map(|n| n.parse().ok()).collect()))
    }

    async fn set_listed_tags(&self, repo: &Repo, tags: &[Tag]) -> Result<()> {
        let path = self.repo_path(repo, [PathPart::from("_listed")]);
        let names: Vec<&str> = tags.iter().map(Tag::as_str).collect();
        self.put(&path, serde_json::to_vec(&names).expect("JSON"))
            .await
    }

    async fn manifest(&self, d: &Digest) -> Result<Option<ManifestRecord>> {
        let path = self.record_path("manifests", d);
        Ok(self.get_json(&path).await?.map(|(rec, _)| rec))
    }

    async fn put_manifest(&self, d: &Digest, rec: &ManifestRecord) -> Result<()> {
        let path = self.record_path("manifests", d);
        self.put(&path, serde_json::to_vec(rec).expect("JSON"))
            .await
    }

    async fn link(&self, repo: &Repo, d: &Digest) -> Result<()> {
        self.put(&self.link_path(repo, d), Bytes::new()).await
    }

    async fn is_linked(&self, repo: &Repo, d: &Digest) -> Result<bool> {
        self.exists(&self.link_path(repo, d)).await
    }

    async fn unlink(&self, repo: &Repo, d: &Digest) -> Result<()> {
        self.remove(&self.link_path(repo, d)).await
    }

    async fn blob_record(&self, d: &Digest) -> Result<Option<BlobRecord>> {
        let path = self.record_path("blobs", d);
        Ok(self.get_json(&path).await?.map(|(rec, _)| rec))
    }

    async fn blob_stored_in(&self, repo: &Repo, d: &Digest, size: u64) -> Result<()> {
        self.link(repo, d).await?;
        let now = now_secs();
        self.update_json(&self.record_path("blobs", d), |cur: Option<BlobRecord>| {
            Some(BlobRecord {
                size,
                last_access: cur.map_or(now, |c| c.last_access.max(now)),
            })
        })
        .await
    }

    async fn record_access(&self, d: &Digest, size: u64, at: u64) -> Result<()> {
        self.update_json(
            &self.record_path("blobs", d),
            |cur: Option<BlobRecord>| match cur {
                None => Some(BlobRecord {
                    size,
                    last_access: at,
                }),
                Some(c) if c.last_access < at => Some(BlobRecord {
                    last_access: at,
                    ..c
                }),
                Some(_) => None,
            },
        )
        .await
    }

    async fn referrers(
        &self,
        repo: &Repo,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Option<Vec<u8>>> {
        let path = self.referrers_path(repo, subject, artifact_type);
        Ok(self.get_bytes(&path).await?.map(|(b, _)| b.to_vec()))
    }

    async fn set_referrers(
        &self,
        repo: &Repo,
        subject: &Digest,
        artifact_type: Option<&str>,
        index: &[u8],
    ) -> Result<()> {
        let path = self.referrers_path(repo, subject, artifact_type);
        self.put(&path, Bytes::copy_from_slice(index)).await
    }

    /// Every write is durable when the service acknowledged it.
    async fn flush(&self) -> Result<()> {
        Ok(())
    }

    /// The lease is one object, `meta/lease/maintenance`, created with
    /// `If-None-Match: *`, and renewed, taken over (expired) or released with
    /// `If-Match` on the ETag it was read at: of two replicas racing for it, one write
    /// wins and the other is told (a conflict: not granted).
    async fn take_maintenance_lease(
        &self,
        holder: &str,
        now_ms: u64,
        ttl: Duration,
    ) -> Result<bool> {
        let path = self.lease_path();
        let etag = match self.get_bytes(&path).await? {
            None => None,
            Some((bytes, etag)) => {
                // An unreadable record holds nothing: taken over, as an expired one.
                if let Ok(rec) = serde_json::from_slice::<LeaseRecord>(&bytes)
                    && rec.holder != holder
                    && rec.expires_ms > now_ms
                {
                    return Ok(false);
                }
                Some(etag.ok_or_else(|| no_etag(&path))?)
            }
        };
        let rec = LeaseRecord {
            holder: holder.to_owned(),
            expires_ms: now_ms.saturating_add(ttl.as_millis() as u64),
        };
        let bytes = serde_json::to_vec(&rec).expect("records serialize");
        Ok(self.put_if(&path, etag.as_deref(), bytes).await?.is_some())
    }

    /// Marks the lease expired (conditionally: a lease another process took in
    /// between is left alone).
    async fn release_maintenance_lease(&self, holder: &str) -> Result<()> {
        let path = self.lease_path();
        let Some((rec, etag)) = self.get_json::<LeaseRecord>(&path).await? else {
            return Ok(());
        };
        if rec.holder != holder {
            return Ok(());
        }
        let expired = LeaseRecord {
            expires_ms: 0,
            ..rec
        };
        let bytes = serde_json::to_vec(&expired).expect("records serialize");
        let etag = etag.ok_or_else(|| no_etag(&path))?;
        let _ = self.put_if(&path, Some(&etag), bytes).await?;
        Ok(())
    }
}

/// The maintenance lease's record: who holds it, until when.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct LeaseRecord {
    holder: String,
    /// Milliseconds since the epoch, by the holder's clock.
    expires_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::super::emulators::{Azurite, AzuriteStore, everything};
    use super::super::suite::{pattern, read};
    use super::*;

    /// Small blocks, so that the suite's blobs of a few hundred KiB are block uploads.
    const TEST_PART: usize = 100_000;

    fn backend() -> (Azurite, ObjectBackend) {
        let azurite = Azurite::start();
        azurite.create_container("ferry");
        let store = azurite.store("ferry").build().unwrap();
        let backend = ObjectBackend::new(store, "prod/").unwrap();
        (azurite, backend.with_part_size(TEST_PART))
    }

    crate::backend::suite::backend_suite!(backend);
    crate::backend::suite::lease_suite!(backend);

    /// What the suite cannot see: a blob of several blocks that is refused, or
    /// abandoned, had its blocks staged in Azurite, and none of them became readable.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refused_and_abandoned_block_uploads_leave_nothing_readable() {
        let (azurite, b) = backend();
        let bytes = pattern(5 * TEST_PART + 7);
        let d = Digest::sha256_of(&bytes);
        let blob = b.blob_path(&d).to_string();
        // Wrong bytes (the last one changed), all of them uploaded: refused.
        let mut wrong = bytes.to_vec();
        *wrong.last_mut().unwrap() ^= 1;
        let mut w = b.writer(&d, Some(wrong.len() as u64)).await.unwrap();
        w.write(wrong.into()).await.unwrap();
        let staged = azurite.uncommitted_blocks("ferry", &blob);
        assert!(
            staged.as_deref().is_some_and(|x| x.contains("<Block>")),
            "the blocks went to the store before the commit: {staged:?}"
        );
        let refused = w.commit().await.unwrap_err();
        assert!(matches!(refused, Error::DigestMismatch { .. }), "{refused}");
        // Abandoned half way.
        let mut w = b.writer(&d, Some(bytes.len() as u64)).await.unwrap();
        w.write(bytes.slice(..3 * TEST_PART)).await.unwrap();
        drop(w);
        assert_eq!(everything(&b).await, Vec::<String>::new());
        let got = b.store().get(&b.blob_path(&d)).await;
        assert!(
            matches!(got, Err(object_store::Error::NotFound { .. })),
            "{got:?}"
        );
        assert_eq!(b.stat(&d).await.unwrap(), None);
        // The next writer of the digest stores it whole.
        super::super::put_blob(&b, &d, bytes.clone()).await.unwrap();
        let read = read(&b, &d, 0, bytes.len() as u64).await.unwrap();
        assert!(read == bytes);
    }

    /// Two replicas uploading the same blob in blocks at once: on Azure the first
    /// commit discards the other's staged blocks; both writers still succeed, and the
    /// blob is whole.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn interleaved_block_uploads_of_one_blob_both_succeed() {
        let (_azurite, b) = backend();
        let bytes = pattern(4 * TEST_PART + 3);
        let d = Digest::sha256_of(&bytes);
        let size = Some(bytes.len() as u64);
        let (mut w1, mut w2) = (
            b.writer(&d, size).await.unwrap(),
            b.writer(&d, size).await.unwrap(),
        );
        w1.write(bytes.slice(..2 * TEST_PART + 1)).await.unwrap();
        w2.write(bytes.clone()).await.unwrap();
        w2.commit().await.unwrap();
        w1.write(bytes.slice(2 * TEST_PART + 1..)).await.unwrap();
        w1.commit().await.unwrap();
        assert_eq!(b.stat(&d).await.unwrap(), size);
        let read = read(&b, &d, 0, bytes.len() as u64).await.unwrap();
        assert!(read == bytes);
    }

    /// The layout of the module doc, under the prefix; another prefix in the same
    /// container is another store.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn objects_are_laid_out_under_the_prefix() {
        let (azurite, prod) = backend();
        let store = azurite.store("ferry").build().unwrap();
        let staging = ObjectBackend::new(store, "staging").unwrap();
        let layer = Bytes::from_static(b"layer");
        let d = Digest::sha256_of(&layer);
        super::super::put_blob(&prod, &d, layer).await.unwrap();
        let repo = Repo {
            upstream: "docker.io".into(),
            name: "library/alpine".parse().unwrap(),
        };
        prod.blob_stored_in(&repo, &d, 5).await.unwrap();
        let tag: Tag = "3.20".parse().unwrap();
        let rec = TagRecord {
            digest: d.clone(),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            fetched_at: 1,
        };
        assert!(matches!(
            prod.swap_tag(&repo, &tag, None, &rec).await.unwrap(),
            Swap::Done(_)
        ));
        let hex = d.hex();
        let mut want = vec![
            format!("prod/blobs/sha256/{hex}"),
            format!("prod/meta/blobs/sha256/{hex}"),
            format!("prod/meta/repos/docker.io/library/alpine/_links/sha256/{hex}"),
            "prod/meta/repos/docker.io/library/alpine/_tags/3.20".to_owned(),
        ];
        want.sort();
        let mut got = everything(&prod).await;
        got.sort();
        assert_eq!(got, want);
        assert_eq!(staging.list().await.unwrap(), vec![]);
        assert_eq!(staging.stat(&d).await.unwrap(), None);
        assert!(staging.tag(&repo, &tag).await.unwrap().is_none());
        assert!(!staging.is_linked(&repo, &d).await.unwrap());
    }

    /// At the real part size: a blob of several 8 MiB blocks and a short last one
    /// reads back whole and by ranges across block boundaries.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_blob_of_several_default_parts_reads_back_across_blocks() {
        let (_azurite, b) = backend();
        let b = b.with_part_size(PART);
        let bytes = pattern(3 * PART + 12_345);
        let d = Digest::sha256_of(&bytes);
        let mut w = b.writer(&d, Some(bytes.len() as u64)).await.unwrap();
        // As an upstream body arrives: pieces of 64 KiB.
        for piece in bytes.chunks(64 << 10) {
            w.write(Bytes::copy_from_slice(piece)).await.unwrap();
        }
        w.commit().await.unwrap();
        let part = PART as u64;
        for (start, len) in [
            (0, bytes.len() as u64),
            (part - 10, 20),
            (2 * part - 1, part + 2),
        ] {
            let read = read(&b, &d, start, len).await.unwrap();
            let want = &bytes[start as usize..(start + len) as usize];
            assert!(read == want, "bytes {start}+{len}");
        }
    }

    /// A range read yields exactly its length: a body that ends early or runs long
    /// ends in an error, never a short (or long) body.
    #[tokio::test]
    async fn a_short_or_long_body_is_an_error() {
        let body = |chunks: &[&'static [u8]]| {
            let items: Vec<object_store::Result<Bytes>> =
                chunks.iter().map(|c| Ok(Bytes::from_static(c))).collect();
            futures_util::stream::iter(items).boxed()
        };
        let read = |stream, len| async move {
            let items: Vec<io::Result<Bytes>> = exactly(stream, len).collect().await;
            items
        };
        let exact = read(body(&[b"ab", b"cd"]), 4).await;
        assert_eq!(exact.len(), 2);
        assert!(exact.iter().all(|i| i.is_ok()));
        let short = read(body(&[b"ab", b"c"]), 4).await;
        assert_eq!(short.len(), 3);
        assert_eq!(
            short[2].as_ref().unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        let long = read(body(&[b"ab", b"cde"]), 4).await;
        assert_eq!(long.len(), 2);
        assert!(long[1].is_err());
    }

    /// A SAS token works as the account key does; a wrong credential of either kind is
    /// refused, and the error names neither the key nor the signature.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sas_and_account_key_auth_and_refused_credentials_stay_secret() {
        use super::super::emulators::KEY;
        let (azurite, _) = backend();
        let with = |auth| {
            let store = AzureStore {
                auth,
                ..azurite.store("ferry")
            };
            ObjectBackend::new(store.build().unwrap(), "prod").unwrap()
        };
        let sas = Azurite::account_sas(KEY);
        let b = with(AzureAuth::Sas(format!("?{sas}")));
        let keyed = with(AzureAuth::AccountKey(KEY.into()));
        let sig = sas.rsplit_once("sig=").unwrap().1;
        // The key as base64, and as the bytes object_store's own `Debug` shows.
        let key_bytes =
            base64::engine::Engine::decode(&base64::engine::general_purpose::STANDARD, KEY)
                .unwrap();
        let key_bytes = format!("{key_bytes:?}");
        let key_bytes = key_bytes.trim_matches(|c| c == '[' || c == ']');
        for shown in [format!("{b:?} {b:#?}"), format!("{keyed:?} {keyed:#?}")] {
            for secret in [KEY, sig, key_bytes] {
                assert!(!shown.contains(secret), "a credential is in {shown}");
            }
        }
        let layer = Bytes::from_static(b"layer");
        let d = Digest::sha256_of(&layer);
        super::super::put_blob(&b, &d, layer).await.unwrap();
        assert_eq!(b.stat(&d).await.unwrap(), Some(5));
        assert_eq!(b.list().await.unwrap(), vec![d.clone()]);
        // Signed with another key: refused.
        let other_key =
            base64::engine::Engine::encode(&base64::engine::general_purpose::STANDARD, [7u8; 64]);
        let forged = Azurite::account_sas(&other_key);
        let sig = forged.rsplit_once("sig=").unwrap().1.to_owned();
        let decoded = sig
            .replace("%2B", "+")
            .replace("%2F", "/")
            .replace("%3D", "=");
        for (auth, secrets) in [
            (AzureAuth::Sas(forged), vec![sig, decoded]),
            (AzureAuth::AccountKey(other_key.clone()), vec![other_key]),
        ] {
            let refused = with(auth).stat(&d).await.unwrap_err();
            let shown = format!("{refused} {refused:?}");
            assert!(shown.contains("403"), "not refused: {shown}");
            for secret in secrets.iter().chain([&KEY.to_owned()]) {
                assert!(
                    !shown.contains(secret.as_str()),
                    "a credential is in {shown}"
                );
            }
        }
    }

    /// Figures against Azurite, printed: `cargo test -p ferry-storage figures --
    /// --ignored --nocapture` (beside moto's).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "a measurement, run by hand"]
    async fn azurite_figures() {
        let (_azurite, b) = backend();
        super::figures::print("azurite", &b).await;
    }

    /// The store stopped: calls fail soon with an error (a caller falls back to the
    /// upstream); started again, the same backend works on, its data intact.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unreachable_store_fails_calls_and_recovers_by_itself() {
        let (mut azurite, b) = backend();
        let layer = Bytes::from_static(b"layer");
        let d = Digest::sha256_of(&layer);
        super::super::put_blob(&b, &d, layer).await.unwrap();
        azurite.stop();
        let started = std::time::Instant::now();
        let failed = b.stat(&d).await.unwrap_err();
        assert!(matches!(failed, Error::ObjectStore(_)), "{failed}");
        let read = b.read_range(&d, 0, 5).await;
        assert!(read.is_err(), "read from a dead store");
        let other = Digest::sha256_of(b"other");
        let put = super::super::put_blob(&b, &other, Bytes::from_static(b"other")).await;
        assert!(put.is_err(), "write to a dead store");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{:?}",
            started.elapsed()
        );
        // Nothing in the error says what the key is.
        assert!(!failed.to_string().contains(super::super::emulators::KEY));
        azurite.restart();
        assert_eq!(b.stat(&d).await.unwrap(), Some(5));
        assert_eq!(b.stat(&other).await.unwrap(), None);
    }
}

#[cfg(test)]
mod figures;
mod maintenance;
pub use maintenance::{EVICTION_GRACE, Pinned, SharedEvictReport, SharedFsckReport, SharedUsage};
#[cfg(test)]
mod s3_tests;
