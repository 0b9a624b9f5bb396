//! Several Ferry replicas sharing one store (`[storage.shared]`), Azurite as Azure
//! Blob Storage or moto as S3: what one replica fetched, the others serve without asking the
//! upstream; a replica with an empty disk serves everything in the shared store with
//! the upstream gone; the shared store holds only verified, whole objects; a shared
//! store that is down costs only its copies.

use std::path::Path;

use ferry_storage::backend::{AzureAuth, AzureStore, BlobStore, ObjectBackend, S3Auth, S3Store};
use ferry_testkit::azurite::{ACCOUNT, Azurite, KEY};
use ferry_testkit::moto::{self, Moto};

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
    replica_with(&store.table(dir), upstream_url, dir, name)
}

/// A replica with `table` as its `[storage.shared]`.
fn replica_with(table: &str, upstream_url: &str, dir: &Path, name: &str) -> Ferry {
    FerryBuilder::new()
        .upstream(Upstream::local(upstream_url))
        .storage_root(&dir.join(name))
        .extra_toml(table)
        .start()
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
    let a = replica_with(&table, &registry.url(), dir.path(), "a");
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
            replica_with(
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
        let r = replica_with(&table, &registry.url(), dir.path(), &root);
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
                r.log().contains("shared store failed"),
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
    let a = replica_with(&table, &registry.url(), dir.path(), "a");
    pull_image(&a.url(), &first).await;
    assert!(
        a.log().contains("403 Forbidden"),
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
    let m = get(&format!("{}/metrics", ferry.url()), &[]).await;
    let text = String::from_utf8_lossy(&m.body);
    text.lines()
        .find_map(|l| l.strip_prefix("ferry_shared_store_up "))
        .unwrap_or_else(|| panic!("no ferry_shared_store_up in /metrics:\n{text}"))
        .to_owned()
}
