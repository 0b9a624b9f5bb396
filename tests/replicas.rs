//! Several Ferry replicas sharing one store (`[storage.shared]`), Azurite as Azure
//! Blob Storage or moto as S3: what one replica fetched, the others serve without asking the
//! upstream; a replica with an empty disk serves everything in the shared store with
//! the upstream gone; the shared store holds only verified, whole objects; a shared
//! store that is down costs only its copies.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferry_storage::backend::{AzureAuth, AzureStore, BlobStore, ObjectBackend, S3Auth, S3Store};
use ferry_testkit::azurite::{ACCOUNT, Azurite, KEY};
use ferry_testkit::moto::{self, Moto};
use ferry_testkit::process::free_port;

use crate::harness::acr::entra::STORAGE_SCOPE;
use crate::harness::acr::tls::TestCa;
use crate::harness::acr::{AcrEmulator, Endpoint};
use crate::harness::faults::{FaultProxy, Mode};
use crate::harness::ferry::{Ferry, FerryBuilder, Upstream};
use crate::harness::images::{PushedImage, push_image};
use crate::harness::registry::{Registry, RegistryAuth};
use crate::promises::CountingProxy;
use crate::support::{blob_url, get, head, manifest_url, pull_image};

const CONTAINER: &str = "ferry";
const PREFIX: &str = "test/";

/// A store emulator replicas share: Azurite (Azure Blob Storage) or moto (S3).
trait Emulator {
    /// A replica's `[storage.shared]` table, with its credential in a file in `dir`.
    fn table(&self, dir: &Path) -> String;
    /// The shared store as the tests read it: the backend Ferry itself writes through.
    fn backend(&self) -> ObjectBackend;
}

impl Emulator for Azurite {
    fn table(&self, dir: &Path) -> String {
        azure_table(&self.endpoint(), dir)
    }

    fn backend(&self) -> ObjectBackend {
        ObjectBackend::new(azure_store(self).build().unwrap(), PREFIX).unwrap()
    }
}

impl Emulator for Moto {
    fn table(&self, dir: &Path) -> String {
        let secret = dir.join("moto.secret");
        std::fs::write(&secret, moto::SECRET).unwrap();
        format!(
            "[storage.shared]\nkind = \"s3\"\nbucket = \"{CONTAINER}\"\nregion = \"us-east-1\"\nprefix = \"{PREFIX}\"\nendpoint = \"{}\"\nauth = {{ kind = \"access_key\", access_key_id = \"{}\", secret_access_key_file = \"{}\" }}\n",
            self.endpoint(),
            moto::KEY_ID,
            secret.display()
        )
    }

    fn backend(&self) -> ObjectBackend {
        let store = S3Store {
            bucket: CONTAINER.into(),
            region: "us-east-1".into(),
            endpoint: Some(self.endpoint()),
            auth: S3Auth::AccessKey {
                id: moto::KEY_ID.into(),
                secret: moto::SECRET.into(),
                session_token: None,
            },
            http: None,
        }
        .build()
        .unwrap();
        ObjectBackend::new(store, PREFIX).unwrap()
    }
}

/// `[storage.shared]` for Azurite's `ferry` container at `endpoint`, with the account
/// key in a file in `dir`.
fn azure_table(endpoint: &str, dir: &Path) -> String {
    let key = dir.join("azurite.key");
    std::fs::write(&key, KEY).unwrap();
    format!(
        "[storage.shared]\nkind = \"azure\"\naccount = \"{ACCOUNT}\"\ncontainer = \"{CONTAINER}\"\nprefix = \"{PREFIX}\"\nendpoint = \"{endpoint}\"\nauth = {{ kind = \"account_key\", key_file = \"{}\" }}\n",
        key.display()
    )
}

/// A replica: its own root and port, the shared store in the emulator's `ferry`
/// container (bucket).
fn replica(store: &impl Emulator, upstream_url: &str, dir: &Path, name: &str) -> Ferry {
    replica_with(store, upstream_url, dir, name, "")
}

/// A replica with more configuration (`[cluster]`).
fn replica_with(
    store: &impl Emulator,
    upstream_url: &str,
    dir: &Path,
    name: &str,
    extra: &str,
) -> Ferry {
    replica_builder(store, upstream_url, dir, name, extra).start()
}

/// A replica's configuration, to start.
fn replica_builder(
    store: &impl Emulator,
    upstream_url: &str,
    dir: &Path,
    name: &str,
    extra: &str,
) -> FerryBuilder {
    builder_on(&(store.table(dir) + extra), upstream_url, dir, name)
}

/// A replica with `table` as its `[storage.shared]`.
fn replica_on(table: &str, upstream_url: &str, dir: &Path, name: &str) -> Ferry {
    builder_on(table, upstream_url, dir, name).start()
}

fn builder_on(table: &str, upstream_url: &str, dir: &Path, name: &str) -> FerryBuilder {
    FerryBuilder::new()
        .upstream(Upstream::local(upstream_url))
        .storage_root(&dir.join(name))
        .extra_toml(table)
}

/// `n` replicas in one cluster (peer ports on 127.0.0.1, one secret), once each sees
/// all `n` answering on the peer port.
async fn cluster(azurite: &Azurite, upstream_url: &str, dir: &Path, n: usize) -> Vec<Ferry> {
    let secret = dir.join("peer.secret");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef\n").unwrap();
    let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let peers: Vec<String> = ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    let replicas: Vec<Ferry> = ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            let table = format!(
                "[cluster]\npeers = [{}]\nlisten = \"127.0.0.1:{port}\"\nsecret_file = \"{}\"\n",
                peers.join(", "),
                secret.display()
            );
            replica_with(azurite, upstream_url, dir, &format!("r{i}"), &table)
        })
        .collect();
    // Members are looked up every 5 s (`peers::REFRESH`).
    let deadline = Instant::now() + Duration::from_secs(20);
    for r in &replicas {
        while metric(r, "ferry_peers_live").await != n.to_string() {
            assert!(
                Instant::now() < deadline,
                "replica {} does not see {n} replicas within 20 s:\n{}",
                r.url(),
                r.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    replicas
}

/// A GET of `url` as a client saw it: status, X-Cache, and the digest of the body,
/// hashed as it streams (48 × 32 MiB is not kept in memory). `progress` counts bytes.
async fn hashed_get(
    url: String,
    progress: Arc<AtomicU64>,
) -> Result<(u16, String, String), String> {
    use sha2::Digest as _;
    let mut resp = crate::harness::http::client()
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = resp.status().as_u16();
    let x_cache = resp
        .headers()
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let mut h = sha2::Sha256::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("GET {url} ({x_cache}) body: {e}"))?
    {
        progress.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        h.update(&chunk);
    }
    Ok((
        status,
        x_cache,
        format!("sha256:{}", hex::encode(h.finalize())),
    ))
}

/// The shared store as the tests read it.
fn shared(store: &impl Emulator) -> ObjectBackend {
    store.backend()
}

/// Waits (≤ 20 s) until the shared store holds every blob and the manifest of `img`:
/// replicas copy there in the background.
async fn wait_until_shared(store: &ObjectBackend, img: &PushedImage) {
    let mut wanted: Vec<&str> = img.blobs().iter().map(|b| b.digest.as_str()).collect();
    wanted.push(&img.manifest_digest);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let listed: Vec<String> = store
            .list()
            .await
            .unwrap()
            .iter()
            .map(|d| d.to_string())
            .collect();
        if wanted.iter().all(|w| listed.iter().any(|l| l == w)) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the shared store holds {listed:?}, not all of {wanted:?}, after 20 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Every object under `blobs/` hashes to its name: nothing partial or wrong is there.
async fn assert_only_whole_objects(store: &ObjectBackend) {
    use futures_util::TryStreamExt;
    for d in store.list().await.unwrap() {
        let size = store
            .stat(&d)
            .await
            .unwrap()
            .expect("listed blob has a size");
        let chunks: Vec<bytes::Bytes> = store
            .read_range(&d, 0, size)
            .await
            .unwrap()
            .expect("listed blob readable")
            .try_collect()
            .await
            .unwrap();
        assert_eq!(
            crate::harness::sha256_digest(&chunks.concat()),
            d.to_string(),
            "the shared store's {d} does not hash to its name"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_serve_what_one_fetched_and_an_empty_replica_serves_it_offline() {
    let azurite = Azurite::start();
    azurite.create_container(CONTAINER);
    serve_what_one_fetched(&azurite).await;
}

/// The same on S3 (moto), signed with an access key whose secret is in a file.
#[tokio::test(flavor = "multi_thread")]
async fn replicas_on_s3_serve_what_one_fetched_and_an_empty_replica_serves_it_offline() {
    let moto = Moto::start();
    moto.create_bucket(CONTAINER);
    serve_what_one_fetched(&moto).await;
}

/// Replica a pulls an image, replica b serves it from the shared store (`SHARED`, no
/// second upstream GET), then from its disk; with the upstream gone, a new replica
/// with an empty disk serves it whole; the store holds only whole objects.
async fn serve_what_one_fetched(emulator: &impl Emulator) {
    let registry = Registry::start(RegistryAuth::None);
    let img = push_image(&registry, "team/app", "v1", &[3 << 20, 200_000]);
    // Between the replicas and the registry: refusing, it is an upstream that is gone.
    let link = FaultProxy::start(registry.addr());
    let dir = tempfile::tempdir().unwrap();
    let a = replica(emulator, &link.url(), dir.path(), "a");
    let b = replica(emulator, &link.url(), dir.path(), "b");

    let caches = pull_image(&a.url(), &img).await;
    assert!(
        caches.iter().all(|c| c == "MISS"),
        "first pull, through replica a: {caches:?}"
    );
    let store = shared(emulator);
    wait_until_shared(&store, &img).await;
    let blob_gets: Vec<usize> = img
        .blobs()
        .iter()
        .map(|bl| registry.blob_gets(&bl.digest))
        .collect();
    assert!(
        blob_gets.iter().all(|&n| n == 1),
        "upstream blob GETs: {blob_gets:?}"
    );

    // Replica b has never seen the image: everything comes from the shared store.
    let caches = pull_image(&b.url(), &img).await;
    assert!(
        caches[1..].iter().all(|c| c == "SHARED"),
        "pull through replica b: {caches:?}"
    );
    for bl in img.blobs() {
        assert_eq!(
            registry.blob_gets(&bl.digest),
            1,
            "replica b fetched {} from the upstream again",
            bl.digest
        );
    }
    // And now from its own disk.
    let caches = pull_image(&b.url(), &img).await;
    assert!(
        caches[1..].iter().all(|c| c == "HIT"),
        "second pull through replica b: {caches:?}"
    );

    // The upstream is gone; a new replica with an empty disk serves the image by tag
    // and by digest, every byte verified by `pull_image`.
    link.set_mode(Mode::Refuse);
    let c = replica(emulator, &link.url(), dir.path(), "c");
    pull_image(&c.url(), &img).await;
    let by_digest = get(
        &manifest_url(&c, &img.repo, &img.manifest_digest),
        &[&img.media_type],
    )
    .await;
    assert_eq!(by_digest.status, 200, "{}", by_digest.text());
    assert_eq!(by_digest.body, img.manifest);
    // A blob the shared store does not hold is still an error, not a hang.
    let missing = format!("sha256:{}", "0".repeat(64));
    let r = head(&blob_url(&c, &img.repo, &missing), &[]).await;
    assert!(
        r.status.as_u16() >= 400,
        "HEAD of an unknown blob, upstream gone: {}",
        r.status
    );

    assert_only_whole_objects(&store).await;
}

/// `resolve` pins the store's name to an address, as for a private endpoint without
/// private DNS: a replica reaches Azurite by a name of the account's own shape
/// (`<account>.blob.store.example`, which no resolver knows; Azurite reads the account
/// from it) and copies what it fetched there.
#[tokio::test(flavor = "multi_thread")]
async fn resolve_pins_the_shared_stores_name() {
    let azurite = Azurite::start();
    azurite.create_container(CONTAINER);
    let registry = Registry::start(RegistryAuth::None);
    let img = push_image(&registry, "team/app", "v1", &[300_000]);
    let dir = tempfile::tempdir().unwrap();
    let host = format!("{ACCOUNT}.blob.store.example");
    let endpoint = format!("http://{host}:{}", azurite.port());
    let table = azure_table(&endpoint, dir.path())
        + &format!("resolve = {{ \"{host}\" = \"127.0.0.1\" }}\n");
    let a = replica_on(&table, &registry.url(), dir.path(), "a");
    pull_image(&a.url(), &img).await;
    wait_until_shared(&shared(&azurite), &img).await;
    assert!(
        !a.log().contains("shared store failed"),
        "the store was reached:\n{}",
        a.log()
    );
}

/// Azurite on HTTPS (`--oauth basic`: it also takes Entra tokens) with a certificate
/// for 127.0.0.1 from a CA of its own, the `ferry` container in it; the CA's PEM.
fn tls_azurite(dir: &Path) -> (Azurite, String) {
    let ca = TestCa::generate(dir);
    let leaf = ca.leaf(&["127.0.0.1"]);
    let (cert, key) = (dir.join("azurite.crt"), dir.join("azurite.key.pem"));
    std::fs::write(&cert, &leaf.cert_pem).unwrap();
    let key_pem = pem::encode(&pem::Pem::new("PRIVATE KEY", leaf.key_pkcs8_der.clone()));
    std::fs::write(&key, key_pem).unwrap();
    let azurite = Azurite::start_tls(&cert, &key, &[CONTAINER]);
    (azurite, ca.pem().to_owned())
}

/// The shared store on a TLS Azurite as the tests read it (account key, its CA).
fn tls_shared(azurite: &Azurite, ca_pem: &str) -> ObjectBackend {
    let http = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap()])
        .no_proxy()
        .build()
        .unwrap();
    let store = AzureStore {
        http: Some(http),
        ..azure_store(azurite)
    };
    ObjectBackend::new(store.build().unwrap(), PREFIX).unwrap()
}

fn azure_store(azurite: &Azurite) -> AzureStore {
    AzureStore {
        account: ACCOUNT.into(),
        container: CONTAINER.into(),
        endpoint: Some(azurite.endpoint()),
        auth: AzureAuth::AccountKey(KEY.into()),
        http: None,
    }
}

/// Entra identities for the shared store, as on AKS with a private storage account:
/// each replica (client secret, certificate, workload identity) asks the configured
/// authority for a token of the storage scope, once (azure_identity keeps it until it
/// nears expiry), and Azurite, on HTTPS checking the token's issuer, audience and
/// lifetime, takes it for every request; `ca_file` (the store's CA and the
/// authority's in one bundle) is trusted for both. What one replica fetched, the
/// others serve; no secret, assertion or token is in a log.
#[tokio::test(flavor = "multi_thread")]
async fn entra_identities_sign_in_to_the_shared_store() {
    let acr = AcrEmulator::start();
    let ids = acr.ids().clone();
    let dir = tempfile::tempdir().unwrap();
    let (azurite, ca_pem) = tls_azurite(dir.path());
    let bundle = dir.path().join("cas.pem");
    let acr_ca = std::fs::read_to_string(acr.ca_file()).unwrap();
    std::fs::write(&bundle, format!("{ca_pem}\n{acr_ca}")).unwrap();
    let secret = dir.path().join("entra.secret");
    std::fs::write(&secret, &ids.sp_client_secret).unwrap();
    let federated = dir.path().join("federated.token");
    std::fs::write(&federated, &ids.federated_token).unwrap();
    let table = |identity: String| {
        format!(
            "[storage.shared]\nkind = \"azure\"\naccount = \"{ACCOUNT}\"\ncontainer = \"{CONTAINER}\"\nprefix = \"{PREFIX}\"\nendpoint = \"{}\"\nca_file = \"{}\"\nauth = {{ kind = \"entra\", {identity}, authority_host = \"{}\" }}\n",
            azurite.endpoint(),
            bundle.display(),
            acr.authority_host(),
        )
    };
    let (tenant, sp) = (&ids.tenant_id, &ids.sp_client_id);
    let identities = [
        (
            "client secret",
            format!(
                "tenant_id = \"{tenant}\", client_id = \"{sp}\", client_secret_file = \"{}\"",
                secret.display()
            ),
        ),
        (
            "certificate",
            format!(
                "tenant_id = \"{tenant}\", client_id = \"{sp}\", certificate_file = \"{}\"",
                acr.client_cert_file().display()
            ),
        ),
        (
            "federated token",
            format!(
                "tenant_id = \"{tenant}\", client_id = \"{}\", workload_identity = true, token_file = \"{}\"",
                ids.wi_client_id,
                federated.display()
            ),
        ),
    ];
    let registry = Registry::start(RegistryAuth::None);
    let img = push_image(&registry, "team/app", "v1", &[3 << 20, 200_000]);
    let replicas: Vec<Ferry> = identities
        .iter()
        .enumerate()
        .map(|(i, (_, identity))| {
            replica_on(
                &table(identity.clone()),
                &registry.url(),
                dir.path(),
                &format!("r{i}"),
            )
        })
        .collect();

    pull_image(&replicas[0].url(), &img).await;
    wait_until_shared(&tls_shared(&azurite, &ca_pem), &img).await;
    for (r, (kind, _)) in replicas[1..].iter().zip(&identities[1..]) {
        let caches = pull_image(&r.url(), &img).await;
        assert!(
            caches[1..].iter().all(|c| c == "SHARED"),
            "pull through the replica with a {kind}: {caches:?}"
        );
    }
    for r in &replicas {
        assert!(!r.log().contains("shared store failed"), "{}", r.log());
    }
    let tokens: Vec<_> = acr
        .records_of(Endpoint::Entra)
        .into_iter()
        .filter(|r| r.scopes.iter().any(|s| s == STORAGE_SCOPE))
        .collect();
    let mut how: Vec<&str> = tokens.iter().map(|t| t.detail.as_str()).collect();
    how.sort();
    let mut kinds: Vec<&str> = identities.iter().map(|(k, _)| *k).collect();
    kinds.sort();
    assert_eq!(
        how, kinds,
        "one storage token per replica, kept for every request: {tokens:?}"
    );
    assert!(tokens.iter().all(|t| t.status == 200), "{tokens:?}");
    let logs: Vec<String> = replicas.iter().map(|r| r.log()).collect();
    let logs: Vec<(&str, &[u8])> = logs
        .iter()
        .map(|l| ("a replica's log", l.as_bytes()))
        .collect();
    acr.assert_no_leaks(&logs);
}

/// `proxy`: every request to the store goes through it (HTTPS: a `CONNECT` tunnel),
/// with the store's certificate verified against `ca_file`; a proxy in the
/// environment sees nothing.
#[tokio::test(flavor = "multi_thread")]
async fn the_proxy_key_carries_the_shared_stores_requests() {
    let dir = tempfile::tempdir().unwrap();
    let (azurite, ca_pem) = tls_azurite(dir.path());
    let ca = dir.path().join("store-ca.pem");
    std::fs::write(&ca, &ca_pem).unwrap();
    let proxy = CountingProxy::start(&[]);
    let from_env = CountingProxy::start(&[]);
    let table = azure_table(&azurite.endpoint(), dir.path())
        + &format!(
            "ca_file = \"{}\"\nproxy = \"{}\"\n",
            ca.display(),
            proxy.url()
        );
    let registry = Registry::start(RegistryAuth::None);
    let img = push_image(&registry, "team/app", "v1", &[300_000]);
    let a = FerryBuilder::new()
        .upstream(Upstream::local(&registry.url()))
        .storage_root(&dir.path().join("a"))
        .extra_toml(&table)
        .env("HTTPS_PROXY", &from_env.url())
        .start();
    pull_image(&a.url(), &img).await;
    wait_until_shared(&tls_shared(&azurite, &ca_pem), &img).await;
    let tunnel = format!("CONNECT 127.0.0.1:{} ", azurite.port());
    let seen = proxy.seen();
    assert!(
        !seen.is_empty() && seen.iter().all(|l| l.starts_with(&tunnel)),
        "the store's requests, and only they, went through the proxy: {seen:?}"
    );
    assert_eq!(from_env.connections(), 0, "{:?}", from_env.seen());
    assert!(!a.log().contains("shared store failed"), "{}", a.log());
}

/// No credential of the store shows: four replicas, one per kind of secret (Azure
/// account key; a SAS token Azurite refuses, whose signature would ride in request
/// URLs; an S3 secret access key; an Entra client secret the authority refuses), pull
/// through the store (the refused ones fail and log why); their logs (debug), status
/// page, `/_ferry/status`, `/metrics` and `ferry config check` of their configuration
/// hold none of the secrets.
#[tokio::test(flavor = "multi_thread")]
async fn store_credentials_are_in_no_log_status_or_config_check() {
    let azurite = Azurite::start();
    azurite.create_container(CONTAINER);
    let moto = Moto::start();
    moto.create_bucket(CONTAINER);
    let acr = AcrEmulator::start();
    let registry = Registry::start(RegistryAuth::None);
    let img = push_image(&registry, "team/app", "v1", &[200_000]);
    let dir = tempfile::tempdir().unwrap();
    let secret_file = |name: &str, secret: &str| {
        let path = dir.path().join(format!("{name}.secret"));
        std::fs::write(&path, secret).unwrap();
        path.display().to_string()
    };
    let azure = |auth: &str| {
        format!(
            "[storage.shared]\nkind = \"azure\"\naccount = \"{ACCOUNT}\"\ncontainer = \"{CONTAINER}\"\nprefix = \"{PREFIX}\"\nendpoint = \"{}\"\nca_file = \"{}\"\nauth = {auth}\n",
            azurite.endpoint(),
            acr.ca_file().display()
        )
    };
    // Signed with another key: Azurite refuses it (403).
    let other_key =
        base64::engine::Engine::encode(&base64::engine::general_purpose::STANDARD, [7u8; 64]);
    let sas = Azurite::account_sas(&other_key);
    let sig = sas.rsplit_once("sig=").unwrap().1.to_owned();
    let sig_decoded = sig
        .replace("%2B", "+")
        .replace("%2F", "/")
        .replace("%3D", "=");
    let entra_secret = "Wr8Q~ferry.store-entra-secret_0123456789";
    let configs = [
        (
            "account key",
            azure(&format!(
                "{{ kind = \"account_key\", key_file = \"{}\" }}",
                secret_file("key", KEY)
            )),
        ),
        (
            "sas",
            azure(&format!(
                "{{ kind = \"sas\", token_file = \"{}\" }}",
                secret_file("sas", &sas)
            )),
        ),
        ("s3", moto.table(dir.path())),
        (
            "entra",
            azure(&format!(
                "{{ kind = \"entra\", tenant_id = \"{}\", client_id = \"{}\", client_secret_file = \"{}\", authority_host = \"{}\" }}",
                acr.ids().tenant_id,
                acr.ids().sp_client_id,
                secret_file("entra", entra_secret),
                acr.authority_host()
            )),
        ),
    ];
    let secrets = [
        KEY,
        other_key.as_str(),
        sig.as_str(),
        sig_decoded.as_str(),
        moto::SECRET,
        entra_secret,
    ];
    for (kind, table) in configs {
        let root = format!("replica-{}", kind.replace(' ', "-"));
        let r = replica_on(&table, &registry.url(), dir.path(), &root);
        pull_image(&r.url(), &img).await;
        let mut shown = Vec::new();
        for path in ["/", "/_ferry/status", "/metrics"] {
            let page = get(&format!("{}{path}", r.url()), &[]).await;
            shown.push((path.to_owned(), page.text()));
        }
        let mut check = Ferry::cli_command();
        check.args(["config", "check"]).arg(r.config_path());
        let out =
            crate::harness::process::run_with_timeout(check, std::time::Duration::from_secs(20));
        assert!(out.status.success(), "{kind}: config check: {out:?}");
        shown.push((
            "config check".to_owned(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ));
        shown.push(("log".to_owned(), r.log()));
        for (what, text) in &shown {
            for secret in secrets {
                assert!(
                    !text.contains(secret),
                    "{kind}: a credential ({secret}) is in {what}:\n{text}"
                );
            }
        }
        if kind == "sas" || kind == "entra" {
            assert!(
                r.wait_for_log(0, &["shared store failed"], Duration::from_secs(20))
                    .is_some(),
                "{kind}: the refused credential was used and its failure logged:\n{}",
                r.log()
            );
        }
    }
}

/// A rotated key file is used without a restart: a replica whose key file holds a key
/// Azurite refuses copies nothing (and says so); once the file holds the right key,
/// the next miss after the replica's rest of the store (10 s) is copied there.
#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_key_file_is_used_without_a_restart() {
    let azurite = Azurite::start();
    azurite.create_container(CONTAINER);
    let registry = Registry::start(RegistryAuth::None);
    let first = push_image(&registry, "team/one", "v1", &[200_000]);
    let second = push_image(&registry, "team/two", "v1", &[200_000]);
    let dir = tempfile::tempdir().unwrap();
    let table = azure_table(&azurite.endpoint(), dir.path());
    let key_file = dir.path().join("azurite.key");
    let other_key =
        base64::engine::Engine::encode(&base64::engine::general_purpose::STANDARD, [7u8; 64]);
    std::fs::write(&key_file, &other_key).unwrap();
    let a = replica_on(&table, &registry.url(), dir.path(), "a");
    pull_image(&a.url(), &first).await;
    // Refused by a lookup, or by the copy that runs after the pull.
    assert!(
        a.wait_for_log(0, &["403 Forbidden"], Duration::from_secs(20))
            .is_some(),
        "the wrong key was refused:\n{}",
        a.log()
    );
    std::fs::write(&key_file, KEY).unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(11)).await;
    pull_image(&a.url(), &second).await;
    wait_until_shared(&shared(&azurite), &second).await;
}

/// The shared store down: replicas still pull from the upstream (nothing is copied,
/// one warning says so, `ferry_shared_store_up` is 0); back up, the replica uses it
/// again after its rest (10 s), without a restart.
#[tokio::test(flavor = "multi_thread")]
async fn a_shared_store_that_is_down_costs_only_its_copies() {
    let mut azurite = Azurite::start();
    azurite.create_container(CONTAINER);
    let registry = Registry::start(RegistryAuth::None);
    let first = push_image(&registry, "team/one", "v1", &[1 << 20]);
    let second = push_image(&registry, "team/two", "v1", &[1 << 20]);
    let dir = tempfile::tempdir().unwrap();
    let a = replica(&azurite, &registry.url(), dir.path(), "a");

    azurite.stop();
    let started = std::time::Instant::now();
    let caches = pull_image(&a.url(), &first).await;
    assert!(caches.iter().all(|c| c == "MISS"), "{caches:?}");
    // The store's retries are bounded: a pull does not wait for them.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "a pull with the shared store down took {:?}",
        started.elapsed()
    );
    assert_eq!(
        a.log().matches("shared store failed").count(),
        1,
        "one warning per outage:\n{}",
        a.log()
    );
    assert!(shared_store_up(&a).await == "0", "the store is down");

    azurite.restart();
    // After the replica's rest of the store (`proxy::shared::REST`, 10 s), the next
    // miss asks it again and copies what it fetched.
    tokio::time::sleep(std::time::Duration::from_secs(11)).await;
    pull_image(&a.url(), &second).await;
    wait_until_shared(&shared(&azurite), &second).await;
    assert!(shared_store_up(&a).await == "1", "the store is back");
}

/// The value of `ferry_shared_store_up` on `ferry`'s /metrics.
async fn shared_store_up(ferry: &Ferry) -> String {
    metric(ferry, "ferry_shared_store_up").await
}

/// The value of the unlabelled metric `name` on `ferry`'s /metrics.
async fn metric(ferry: &Ferry, name: &str) -> String {
    let m = get(&format!("{}/metrics", ferry.url()), &[]).await;
    let text = String::from_utf8_lossy(&m.body);
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
        .to_owned()
}

/// `ferry <args>` with `config`: (exit success, stdout, stderr).
fn ferry_cli(config: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Ferry::cli_command()
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Three replicas with a shared `max_size` smaller than what they pull: the shared
/// store ends within it, evicted by one replica alone (the lease holder), whole images
/// at a time, so every image still there pulls byte-identical through a fresh replica
/// with the upstream gone; `ferry fsck --shared` reads it as clean while the replicas
/// run, then finds an object deleted and one with wrong bytes.
#[tokio::test(flavor = "multi_thread")]
async fn replicas_keep_the_shared_store_within_its_quota_one_at_a_time() {
    const MAX: u64 = 5 << 20;
    let azurite = Azurite::start();
    azurite.create_container(CONTAINER);
    let registry = Registry::start(RegistryAuth::None);
    let link = FaultProxy::start(registry.addr());
    let images: Vec<PushedImage> = (0..4)
        .map(|i| {
            push_image(
                &registry,
                &format!("team/app{i}"),
                "v1",
                &[1 << 20, 1 << 20],
            )
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    // A short grace period: what the test pulled a second ago may go (in production,
    // ten minutes: what a replica may still be streaming).
    let start = |name: &str| {
        replica_builder(
            &azurite,
            &link.url(),
            dir.path(),
            name,
            "eviction_grace = \"1s\"\n",
        )
        .env("FERRY_STORAGE_MAX_SIZE", "5MiB")
        .start()
    };
    let replicas = [start("a"), start("b"), start("c")];
    let store = shared(&azurite);
    for (i, img) in images.iter().enumerate() {
        pull_image(&replicas[i % 3].url(), img).await;
        wait_until_shared(&store, img).await;
    }
    let total: u64 = images
        .iter()
        .map(|img| {
            img.blobs()
                .iter()
                .map(|b| b.bytes.len() as u64)
                .sum::<u64>()
                + img.manifest.len() as u64
        })
        .sum();
    assert!(total > MAX, "the images ({total} bytes) fit the quota");

    // Replicas check every 10 s (`server::shared_maintenance::TICK`); a pass logs
    // when it is done.
    let passes = || -> Vec<usize> {
        replicas
            .iter()
            .map(|r| r.log().matches("shared store eviction: evicted").count())
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    let used = loop {
        let used = store.usage().await.unwrap().bytes;
        if used <= MAX && passes().iter().any(|&n| n > 0) {
            break used;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the shared store still holds {used} bytes (max_size {MAX}) after 40 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let evicting = passes();
    assert_eq!(
        evicting.iter().filter(|&&n| n > 0).count(),
        1,
        "eviction passes per replica: {evicting:?}"
    );
    let mut holders = Vec::new();
    for r in &replicas {
        holders.push(metric(r, "ferry_shared_maintenance_lease").await);
    }
    assert_eq!(
        holders.iter().filter(|h| *h == "1").count(),
        1,
        "lease held per replica: {holders:?}"
    );
    let evictor = &replicas[evicting.iter().position(|&n| n > 0).unwrap()];
    assert_ne!(metric(evictor, "ferry_shared_evictions_total").await, "0");
    assert_ne!(
        metric(evictor, "ferry_shared_evicted_bytes_total").await,
        "0"
    );

    // Whole images went: each is either all there or has no manifest left.
    let mut cached = Vec::new();
    for img in &images {
        let manifest: ferry_oci::Digest = img.manifest_digest.parse().unwrap();
        let mut present = Vec::new();
        for b in img.blobs() {
            present.push(
                store
                    .stat(&b.digest.parse().unwrap())
                    .await
                    .unwrap()
                    .is_some(),
            );
        }
        if store.stat(&manifest).await.unwrap().is_some() {
            assert!(
                present.iter().all(|&p| p),
                "{}: a blob of a cached manifest was deleted: {present:?}",
                img.repo
            );
            cached.push(img);
        }
    }
    assert!(
        !cached.is_empty() && cached.len() < images.len(),
        "{} of {} images still cached ({used} bytes)",
        cached.len(),
        images.len()
    );

    // The upstream gone, a replica with an empty disk serves every image still cached.
    link.set_mode(Mode::Refuse);
    let d = start("d");
    for img in &cached {
        let caches = pull_image(&d.url(), img).await;
        assert!(
            caches[1..].iter().all(|c| c == "SHARED"),
            "{}: {caches:?}",
            img.repo
        );
    }

    // The check, while the replicas run.
    let (ok, out, err) = ferry_cli(d.config_path(), &["fsck", "--shared"]);
    assert!(ok, "fsck --shared on a clean store:\n{out}\n{err}");
    assert!(out.contains("0 problem(s)"), "{out}");
    // A layer deleted, another overwritten with wrong bytes of its size.
    let (gone, bad) = (&cached[0].blobs()[0], &cached[0].blobs()[1]);
    // Straight to Azurite (Put Blob, Delete Blob), as a stray tool or a bit flip would.
    let url = |digest: &str| {
        let path = store.blob_path(&digest.parse().unwrap());
        let sas = Azurite::account_sas(KEY);
        format!("{}/{CONTAINER}/{path}?{sas}", azurite.endpoint())
    };
    let http = reqwest::Client::new();
    let deleted = http.delete(url(&gone.digest)).send().await.unwrap();
    assert_eq!(deleted.status(), 202);
    let wrong = vec![0u8; bad.bytes.len()];
    let put = http
        .put(url(&bad.digest))
        .header("x-ms-blob-type", "BlockBlob")
        .body(wrong)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);
    let (ok, out, err) = ferry_cli(d.config_path(), &["fsck", "--shared"]);
    assert!(!ok, "fsck --shared passed a damaged store:\n{out}");
    assert!(out.contains("2 problem(s)"), "{out}");
    assert!(
        out.contains("records without objects: 1") && out.contains(&gone.digest),
        "{out}"
    );
    assert!(
        out.contains("bytes do not match the digest: 1") && out.contains(&bad.digest),
        "{out}"
    );
    assert!(
        err.contains("problem(s) found in the shared store"),
        "{err}"
    );
    // Sizes only: the missing object, not the wrong bytes.
    let (_, out, _) = ferry_cli(d.config_path(), &["fsck", "--shared", "--sizes-only"]);
    assert!(
        out.contains("1 problem(s)") && !out.contains(&bad.digest),
        "{out}"
    );
    // gc refuses the shared store, saying why.
    let (ok, _, err) = ferry_cli(d.config_path(), &["gc", "--shared"]);
    assert!(
        !ok && err.contains("does not run on the shared store"),
        "{err}"
    );
}

/// Three replicas in a cluster on Azurite, in front of an upstream that sends
/// `rate` bytes per second and holds one image with a 32 MiB layer.
struct SlowCluster {
    // Dropped first: the replicas before what they use.
    replicas: Vec<Ferry>,
    img: PushedImage,
    azurite: Azurite,
    registry: Registry,
    _link: FaultProxy,
    _dir: tempfile::TempDir,
}

impl SlowCluster {
    async fn start(rate: u64) -> SlowCluster {
        let azurite = Azurite::start();
        azurite.create_container(CONTAINER);
        let registry = Registry::start(RegistryAuth::None);
        let img = push_image(&registry, "team/big", "v1", &[32 << 20]);
        let link = FaultProxy::start(registry.addr());
        link.set_mode(Mode::Throttle(rate));
        let dir = tempfile::tempdir().unwrap();
        let replicas = cluster(&azurite, &link.url(), dir.path(), 3).await;
        SlowCluster {
            replicas,
            img,
            azurite,
            registry,
            _link: link,
            _dir: dir,
        }
    }
}

/// 48 clients, 16 per replica, ask three replicas at once for one uncached 32 MiB blob
/// coming slowly from the upstream: one upstream GET in all, 48 correct bodies.
#[tokio::test(flavor = "multi_thread")]
async fn forty_eight_clients_on_three_replicas_cause_one_upstream_fetch() {
    // About 3 s for the blob: every request arrives while it downloads.
    let slow = SlowCluster::start(12 << 20).await;
    let (registry, img, replicas) = (&slow.registry, &slow.img, &slow.replicas);
    let layer = img.largest_layer();

    let started = Instant::now();
    let gets: Vec<_> = (0..48)
        .map(|i| {
            let url = blob_url(&replicas[i % 3], &img.repo, &layer.digest);
            tokio::spawn(hashed_get(url, Arc::new(AtomicU64::new(0))))
        })
        .collect();
    let mut caches = std::collections::BTreeMap::<String, usize>::new();
    for g in gets {
        let (status, x_cache, digest) = tokio::time::timeout(Duration::from_secs(120), g)
            .await
            .expect("every GET within 120 s")
            .unwrap()
            .unwrap();
        assert_eq!(status, 200, "{x_cache}");
        assert_eq!(digest, layer.digest, "a client got wrong bytes ({x_cache})");
        *caches.entry(x_cache).or_default() += 1;
    }
    eprintln!(
        "48 GETs of 32 MiB over 3 replicas in {:?}: {caches:?}",
        started.elapsed()
    );
    assert_eq!(
        registry.blob_gets(&layer.digest),
        1,
        "upstream GETs of the blob ({caches:?})"
    );
    assert!(
        caches.get("PEER").copied().unwrap_or(0) >= 1,
        "no replica streamed from the owner: {caches:?}"
    );
}

/// The replica downloading a blob for the cluster is killed (SIGKILL) half way: the
/// clients of the other replicas still get the whole, correct blob (each replica
/// resumes from the upstream with Range from what it has), and the shared store
/// holds no partial object.
#[tokio::test(flavor = "multi_thread")]
async fn killing_the_owner_mid_download_fails_no_client_of_another_replica() {
    // About 4 s for the blob.
    let mut slow = SlowCluster::start(8 << 20).await;
    let layer = slow.img.largest_layer().clone();
    let (registry, img) = (&slow.registry, &slow.img);
    let replicas = &mut slow.replicas;

    let progress: Vec<Arc<AtomicU64>> = (0..3).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let gets: Vec<(usize, tokio::task::JoinHandle<_>)> = (0..12)
        .map(|i| {
            let r = i % 3;
            let url = blob_url(&replicas[r], &img.repo, &layer.digest);
            (r, tokio::spawn(hashed_get(url, progress[r].clone())))
        })
        .collect();
    // The owner's clients are the only ones not told PEER; which replica owns the
    // digest is up to the rendezvous hash, so it is read from the answers.
    let deadline = Instant::now() + Duration::from_secs(30);
    while progress.iter().any(|p| p.load(Ordering::Relaxed) < 4 << 20) {
        assert!(
            Instant::now() < deadline,
            "the download did not start within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let peer_counts: Vec<f64> =
        futures_util::future::join_all(replicas.iter().map(|r| cache_results(r, "peer"))).await;
    let owner = peer_counts
        .iter()
        .position(|&n| n == 0.0)
        .unwrap_or_else(|| panic!("every replica streamed from a peer: {peer_counts:?}"));
    assert_eq!(
        peer_counts.iter().filter(|&&n| n == 0.0).count(),
        1,
        "one owner: {peer_counts:?}"
    );
    let at_kill: Vec<u64> = progress
        .iter()
        .map(|p| p.load(Ordering::Relaxed) >> 20)
        .collect();
    replicas[owner].stop();
    eprintln!(
        "killed the owner (replica {owner}) of a 32 MiB blob with MiB received per replica's clients at {at_kill:?}"
    );

    for (r, g) in gets {
        let outcome = tokio::time::timeout(Duration::from_secs(120), g)
            .await
            .expect("every GET ends within 120 s")
            .unwrap();
        if r == owner {
            continue;
        }
        let (status, x_cache, digest) =
            outcome.unwrap_or_else(|e| panic!("a client of replica {r}: {e}"));
        assert_eq!(status, 200);
        assert_eq!(
            digest, layer.digest,
            "a client of replica {r} got wrong bytes ({x_cache})"
        );
    }
    let upstream_gets = registry.blob_gets(&layer.digest);
    eprintln!(
        "upstream GETs of the blob: {upstream_gets} (the owner's, then the survivors' resumptions)"
    );
    assert!(
        (2..=3).contains(&upstream_gets),
        "upstream GETs: {upstream_gets}"
    );

    let store = shared(&slow.azurite);
    let deadline = Instant::now() + Duration::from_secs(30);
    while store
        .stat(&layer.digest.parse().unwrap())
        .await
        .unwrap()
        .is_none()
    {
        assert!(
            Instant::now() < deadline,
            "a survivor did not copy the blob to the shared store"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_only_whole_objects(&store).await;
}

/// `ferry_cache_results_total{kind="blob",result=...}` on `ferry`.
async fn cache_results(ferry: &Ferry, result: &str) -> f64 {
    let m = get(&format!("{}/metrics", ferry.url()), &[]).await;
    let needle = format!("ferry_cache_results_total{{kind=\"blob\",result=\"{result}\"}} ");
    String::from_utf8_lossy(&m.body)
        .lines()
        .find_map(|l| l.strip_prefix(&needle)?.parse().ok())
        .unwrap_or(0.0)
}

/// A rolling restart of three replicas, one at a time, while skopeo pulls in a loop
/// through the replicas that are up (as a Service routes to ready pods): no pull fails,
/// including those of images nobody pulled before (forwarded to an owner that may be
/// the one stopping, or started by it and cut by its shutdown).
#[tokio::test(flavor = "multi_thread")]
async fn a_rolling_restart_fails_no_pull() {
    let azurite = Azurite::start();
    azurite.create_container(CONTAINER);
    let registry = Registry::start(RegistryAuth::None);
    // Enough images that pulls of ones nobody pulled before go on through all three
    // restarts: those are forwarded to owners, which may be the replica stopping.
    let images: Vec<PushedImage> = (0..80)
        .map(|i| push_image(&registry, &format!("team/app{i}"), "v1", &[300_000]))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let mut replicas = cluster(&azurite, &registry.url(), dir.path(), 3).await;

    // The addresses a Service would route to: the replicas that are up.
    let up = Arc::new(std::sync::Mutex::new(
        replicas
            .iter()
            .map(|r| r.addr().to_owned())
            .collect::<Vec<_>>(),
    ));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let puller = {
        let (up, stop, images) = (up.clone(), stop.clone(), images.clone());
        let dest_root = dir.path().join("pulled");
        std::fs::create_dir_all(&dest_root).unwrap();
        tokio::task::spawn_blocking(move || {
            let (mut pulls, mut failures) = (0usize, Vec::new());
            let deadline = Instant::now() + Duration::from_secs(240);
            while !stop.load(Ordering::Relaxed) && pulls < 400 && Instant::now() < deadline {
                let addr = {
                    let up = up.lock().unwrap();
                    up[pulls % up.len()].clone()
                };
                let img = &images[pulls % images.len()];
                let dest = dest_root.join(pulls.to_string());
                let mut cmd = ferry_testkit::skopeo::copy();
                cmd.arg(format!("docker://{addr}/local/{}", img.reference()))
                    .arg(format!("dir:{}", dest.display()));
                let out = ferry_testkit::process::run_with_timeout(cmd, Duration::from_secs(60));
                let whole = out.status.success()
                    && img.blobs().iter().all(|b| {
                        std::fs::read(dest.join(crate::harness::digest_hex(&b.digest)))
                            .is_ok_and(|bytes| bytes == b.bytes)
                    });
                if !whole {
                    failures.push(format!(
                        "pull {pulls} of {} via {addr}: {}",
                        img.reference(),
                        String::from_utf8_lossy(&out.stderr)
                    ));
                }
                let _ = std::fs::remove_dir_all(&dest);
                pulls += 1;
            }
            (pulls, failures)
        })
    };

    for (i, replica) in replicas.iter_mut().enumerate() {
        // Out of the Service first (a pod going away stops being ready), then SIGTERM:
        // what it is serving drains; then started again, and back once it sees all.
        let addr = replica.addr().to_owned();
        up.lock().unwrap().retain(|a| *a != addr);
        tokio::time::sleep(Duration::from_millis(500)).await;
        replica.restart();
        let deadline = Instant::now() + Duration::from_secs(20);
        while metric(replica, "ferry_peers_live").await != "3" {
            assert!(
                Instant::now() < deadline,
                "restarted replica {i} does not see the others"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        up.lock().unwrap().push(replica.addr().to_owned());
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (pulls, failures) = puller.await.unwrap();
    eprintln!(
        "rolling restart of 3 replicas: {pulls} skopeo pulls, {} failed",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {pulls} pulls failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(pulls >= 12, "only {pulls} pulls ran during the restart");
    let peer_served: f64 =
        futures_util::future::join_all(replicas.iter().map(|r| cache_results(r, "peer")))
            .await
            .iter()
            .sum();
    eprintln!("blobs streamed from an owner since the last restarts: {peer_served}");
}

/// The peer port answers only replicas: without the cluster's secret, or with another,
/// nothing is served (401 with OCI error JSON, logged), and it is not a registry.
#[tokio::test(flavor = "multi_thread")]
async fn the_peer_port_refuses_whoever_lacks_the_secret() {
    let azurite = Azurite::start();
    azurite.create_container(CONTAINER);
    let registry = Registry::start(RegistryAuth::None);
    let img = push_image(&registry, "team/app", "v1", &[100_000]);
    let dir = tempfile::tempdir().unwrap();
    let replicas = cluster(&azurite, &registry.url(), dir.path(), 2).await;
    let peer_port = |r: &Ferry| -> String {
        let log = r.log();
        let line = log
            .lines()
            .find(|l| l.contains("peer port listening on http://"))
            .expect("peer port logged");
        let after = line.rsplit("http://").next().unwrap();
        after.split_whitespace().next().unwrap().to_owned()
    };
    let port = peer_port(&replicas[0]);
    let layer = &img.layers[0];
    let url = format!(
        "http://{port}/peer/v1/blobs/local/{}/team/app",
        layer.digest
    );
    let client = crate::harness::http::client();
    for auth in [
        None,
        Some("Bearer wrong-secret-wrong-secret-00"),
        Some("Basic dTpw"),
    ] {
        let mut req = client.get(&url);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 401, "{auth:?}");
        let body = resp.text().await.unwrap();
        assert!(body.contains("UNAUTHORIZED"), "{auth:?}: {body}");
    }
    let r = client
        .get(format!("http://{port}/peer/v1/id"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401, "the id is not given away either");
    // With the secret, the client API is still not there: only replicas' paths.
    let r = client
        .get(format!(
            "http://{port}/v2/local/team/app/blobs/{}",
            layer.digest
        ))
        .header("authorization", "Bearer 0123456789abcdef0123456789abcdef")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    // Nothing was fetched for any of it.
    assert_eq!(registry.blob_gets(&layer.digest), 0);
    assert!(
        replicas[0]
            .log()
            .contains("request without the cluster's secret refused")
    );
}

/// The local tier is a bounded cache of the shared store: a replica keeps at most
/// `local_max_size` on its disk, and what it evicted it serves again from the shared
/// store, with the upstream gone.
#[tokio::test(flavor = "multi_thread")]
async fn the_local_tier_stays_within_local_max_size_and_refills_from_the_shared_store() {
    let azurite = Azurite::start();
    azurite.create_container(CONTAINER);
    let registry = Registry::start(RegistryAuth::None);
    let images: Vec<PushedImage> = (0..4)
        .map(|i| push_image(&registry, &format!("team/app{i}"), "v1", &[900_000]))
        .collect();
    let link = FaultProxy::start(registry.addr());
    let dir = tempfile::tempdir().unwrap();
    // `[storage]` is the builder's table: the bound comes from the environment.
    let a = replica_builder(&azurite, &link.url(), dir.path(), "a", "")
        .env("FERRY_STORAGE_LOCAL_MAX_SIZE", "2MiB")
        .start();
    for img in &images {
        pull_image(&a.url(), img).await;
    }
    let store = shared(&azurite);
    for img in &images {
        wait_until_shared(&store, img).await;
    }
    let limit = 2 << 20;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let used: u64 = metric(&a, "ferry_store_bytes").await.parse().unwrap();
        if used <= limit {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the local tier holds {used} bytes, over local_max_size {limit}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    link.set_mode(Mode::Refuse);
    for img in &images {
        let caches = pull_image(&a.url(), img).await;
        assert!(
            caches[1..].iter().all(|c| c == "HIT" || c == "SHARED"),
            "{}: {caches:?}",
            img.reference()
        );
    }
}

/// 24 clients ask three replicas at once for a tag nobody pulled, from an upstream slow
/// to answer: one upstream manifest GET in all (the replica owning the reference
/// fetches it; the others ask it, their own clients joining their one request).
#[tokio::test(flavor = "multi_thread")]
async fn a_tag_asked_of_three_replicas_at_once_is_fetched_once() {
    // A manifest of a few hundred bytes takes about a second at 512 bytes/s.
    let slow = SlowCluster::start(512).await;
    let (registry, img) = (&slow.registry, &slow.img);
    let before = registry.count_requests("GET", "/manifests/v1");
    let urls = (0..24)
        .map(|i| manifest_url(&slow.replicas[i % 3], &img.repo, &img.tag))
        .collect();
    let caches = crate::support::manifest_gets_at_once(urls, img).await;
    let upstream_gets = registry.count_requests("GET", "/manifests/v1") - before;
    assert_eq!(upstream_gets, 1, "upstream manifest GETs ({caches:?})");
    assert!(caches.contains_key("PEER"), "{caches:?}");
}

/// A replica killed (SIGKILL) while it copies a blob it fetched to the shared store:
/// nothing partial is visible there (the blocks it staged are never committed), and
/// the next replica to fetch the blob copies it whole.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_killed_while_copying_leaves_no_partial_object() {
    let azurite = Azurite::start();
    azurite.create_container(CONTAINER);
    let registry = Registry::start(RegistryAuth::None);
    let img = push_image(&registry, "team/big", "v1", &[64 << 20]);
    let layer = img.largest_layer().clone();
    let dir = tempfile::tempdir().unwrap();
    let mut a = replica(&azurite, &registry.url(), dir.path(), "a");
    let store = shared(&azurite);
    let digest: ferry_oci::Digest = layer.digest.parse().unwrap();
    let name = store.blob_path(&digest).to_string();
    let got = get(&blob_url(&a, &img.repo, &layer.digest), &[]).await;
    assert_eq!(got.status, 200);
    // The copy starts once the blob is stored here, in blocks of 8 MiB committed
    // together at the end: kill the replica once some are staged.
    let deadline = Instant::now() + Duration::from_secs(20);
    let staged = loop {
        let blocks = azurite
            .uncommitted_blocks(CONTAINER, &name)
            .map_or(0, |x| x.matches("<Block>").count());
        if blocks > 0 {
            break blocks;
        }
        assert!(
            Instant::now() < deadline && store.stat(&digest).await.unwrap().is_none(),
            "the copy never staged a block to kill it in the middle of"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    a.stop();
    let visible = store.stat(&digest).await.unwrap();
    eprintln!("killed during the copy, {staged} block(s) of 8 MiB staged: visible {visible:?}");
    assert!(
        visible.is_none_or(|size| size == layer.size),
        "a partial object is visible: {visible:?} of {}",
        layer.size
    );
    assert_only_whole_objects(&store).await;

    // The next replica to miss fetches it and copies it whole.
    let b = replica(&azurite, &registry.url(), dir.path(), "b");
    let got = get(&blob_url(&b, &img.repo, &layer.digest), &[]).await;
    assert_eq!(crate::harness::sha256_digest(&got.body), layer.digest);
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.stat(&digest).await.unwrap() != Some(layer.size) {
        assert!(
            Instant::now() < deadline,
            "the blob never reached the shared store whole"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_only_whole_objects(&store).await;
}
