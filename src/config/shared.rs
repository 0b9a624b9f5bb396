//! `[storage.shared]` and `[cluster]`: the object store several replicas share, this
//! replica's bound on its local tier, and how replicas find each other.
//!
//! One `[storage.shared]` table serves both kinds of store; the keys of the other kind
//! are refused by name, and so is an `auth` kind the store does not take.

use std::net::SocketAddr;

use toml::Spanned;
use url::Url;

use super::auth::{StoreAuth, validate_store_auth};
use super::files::{CaFor, Named, What};
use super::raw::{RawCluster, RawShared};
use super::upstream::validate_reach;
use super::validate::storage_size;
use super::{Cluster, ConfigError, SecretSource, SharedStore, Source, StoreLocation};

/// The shared store, the local tier's bound and the cluster.
type Sharing = (Option<SharedStore>, Option<u64>, Option<Cluster>);

/// The shared store, the local tier's bound and the cluster, which make sense only
/// together: `local_max_size` and `[cluster]` need `[storage.shared]`.
pub(super) fn validate_shared(
    raw: Option<Spanned<RawShared>>,
    local_max_size: Option<Spanned<String>>,
    cluster: Option<RawCluster>,
    src: &Source,
    files: &mut Vec<Named>,
) -> Result<Sharing, ConfigError> {
    let Some(raw) = raw else {
        if let Some(s) = local_max_size {
            return Err(src.error(
                Some(s.span()),
                "storage.local_max_size bounds a replica's local tier in front of [storage.shared], which is not configured (use storage.max_size for the store)",
            ));
        }
        if cluster.is_some() {
            return Err(src.error(
                None,
                "[cluster] needs [storage.shared]: replicas share one store (configure it, or remove [cluster])",
            ));
        }
        return Ok((None, None, None));
    };
    let shared = validate_store(raw, src, files)?;
    let local_max_size = storage_size(local_max_size, "local_max_size", src)?;
    let cluster = cluster
        .map(|c| validate_cluster(c, src, files))
        .transpose()?;
    Ok((Some(shared), local_max_size, cluster))
}

fn validate_store(
    raw: Spanned<RawShared>,
    src: &Source,
    files: &mut Vec<Named>,
) -> Result<SharedStore, ConfigError> {
    let table = raw.span();
    let r = raw.into_inner();
    let here = |field: &str| format!("storage.shared: {field}");
    let kind = r.kind.get_ref().as_str();
    // Keys of the other kind are refused by name rather than ignored: a `bucket` in
    // an Azure table is a mistake that would otherwise surface as a 404 at run time.
    let (own, foreign): (&[&str], [(&str, bool); 2]) = match kind {
        "azure" => (
            &["account", "container"],
            [
                ("bucket", r.bucket.is_some()),
                ("region", r.region.is_some()),
            ],
        ),
        "s3" => (
            &["bucket", "region"],
            [
                ("account", r.account.is_some()),
                ("container", r.container.is_some()),
            ],
        ),
        other => {
            return Err(src.error(
                Some(r.kind.span()),
                format!(
                    "{}: `{other}` is not a kind of shared store: \"azure\" or \"s3\"",
                    here("kind")
                ),
            ));
        }
    };
    if let Some((key, _)) = foreign.iter().find(|(_, set)| *set) {
        return Err(src.error(
            Some(table.clone()),
            format!(
                "{}: `{key}` is not a key of kind = \"{kind}\" (it takes {})",
                here(key),
                own.join(", ")
            ),
        ));
    }
    let required = |v: Option<Spanned<String>>, key: &str| -> Result<String, ConfigError> {
        match v {
            Some(s) if !s.get_ref().is_empty() => Ok(s.into_inner()),
            Some(s) => Err(src.error(Some(s.span()), format!("{} is empty", here(key)))),
            None => Err(src.error(
                Some(table.clone()),
                format!("{} is required for kind = \"{kind}\"", here(key)),
            )),
        }
    };
    let auth = r
        .auth
        .map(|a| validate_store_auth(a, src, files))
        .transpose()?;
    let location = if kind == "azure" {
        let account = required(r.account, "account")?;
        let container = required(r.container, "container")?;
        let credential = match auth {
            Some(StoreAuth::Azure(c)) => c,
            Some(StoreAuth::S3(_)) => return Err(src.error(Some(table.clone()), format!("{}: kind = \"azure\" takes auth kind \"entra\", \"account_key\" or \"sas\"", here("auth")))),
            None => return Err(src.error(Some(table.clone()), format!("{} is required for kind = \"azure\": {{ kind = \"entra\", ... }}, \"account_key\" or \"sas\"", here("auth")))),
        };
        StoreLocation::Azure {
            account,
            container,
            credential,
        }
    } else {
        let bucket = required(r.bucket, "bucket")?;
        let region = r
            .region
            .map_or_else(|| "us-east-1".to_string(), |s| s.into_inner());
        let credential = match auth {
            Some(StoreAuth::S3(c)) => c,
            Some(StoreAuth::Azure(_)) => {
                return Err(src.error(
                    Some(table.clone()),
                    format!(
                        "{}: kind = \"s3\" takes auth kind \"access_key\" or \"environment\"",
                        here("auth")
                    ),
                ));
            }
            None => super::S3Credential::Environment,
        };
        StoreLocation::S3 {
            bucket,
            region,
            credential,
        }
    };
    let prefix = r.prefix.map(|p| p.into_inner()).unwrap_or_default();
    if prefix.split('/').any(|part| part == "." || part == "..") {
        return Err(src.error(
            Some(table.clone()),
            format!(
                "{}: `{prefix}` must not contain `.` or `..` segments",
                here("prefix")
            ),
        ));
    }
    let endpoint = match r.endpoint {
        None => None,
        Some(e) => Some(
            Url::parse(e.get_ref())
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
                .filter(|u| u.username().is_empty() && u.password().is_none() && u.query().is_none())
                .ok_or_else(|| {
                    src.error(
                        Some(e.span()),
                        format!(
                            "{}: `{}` must be an http:// or https:// URL with a host and no credentials or query (use `auth`)",
                            here("endpoint"),
                            e.get_ref()
                        ),
                    )
                })?,
        ),
    };
    let (resolve, proxy) = validate_reach(
        r.resolve,
        r.ca_file,
        r.proxy,
        &here,
        CaFor::SharedStore,
        src,
        files,
    )?;
    let eviction_grace = match r.eviction_grace {
        None => ferry_storage::backend::EVICTION_GRACE,
        Some(g) => humantime::parse_duration(g.get_ref()).map_err(|e| {
            src.error(
                Some(g.span()),
                format!(
                    "{}: `{}` is not a duration like 10m ({e})",
                    here("eviction_grace"),
                    g.get_ref()
                ),
            )
        })?,
    };
    Ok(SharedStore {
        location,
        prefix,
        endpoint,
        resolve,
        ca_pem: None,
        proxy,
        eviction_grace,
    })
}

fn validate_cluster(
    raw: RawCluster,
    src: &Source,
    files: &mut Vec<Named>,
) -> Result<Cluster, ConfigError> {
    let peers_span = raw.peers.span();
    let mut peers = Vec::new();
    for p in raw.peers.into_inner() {
        // `host:port`: a name is resolved again and again, so only its shape is
        // checked here.
        let ok = p.get_ref().rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !ok {
            return Err(src.error(
                Some(p.span()),
                format!("cluster.peers: `{}` is not a host:port", p.get_ref()),
            ));
        }
        peers.push(p.into_inner());
    }
    if peers.is_empty() {
        return Err(src.error(
            Some(peers_span),
            "cluster.peers is empty: give the headless Service's name:port, or each replica's address",
        ));
    }
    let listen: SocketAddr = match raw.listen {
        None => "0.0.0.0:5001".parse().expect("default peer address"),
        Some(s) => s.get_ref().parse().map_err(|e| {
            src.error(
                Some(s.span()),
                format!(
                    "cluster.listen: `{}` is not an address like 0.0.0.0:5001 ({e})",
                    s.get_ref()
                ),
            )
        })?,
    };
    let (source, key, span) = match (raw.secret_file, raw.secret_env) {
        (Some(f), None) => (
            SecretSource::file(f.get_ref().clone()),
            "cluster.secret_file",
            f.span(),
        ),
        (None, Some(e)) => (
            SecretSource::env(e.get_ref().clone()),
            "cluster.secret_env",
            e.span(),
        ),
        (None, None) => {
            return Err(src.error(
                None,
                "cluster.secret_file (or secret_env) is required: replicas prove themselves to each other with it",
            ));
        }
        (Some(f), Some(_)) => {
            return Err(src.error(
                Some(f.span()),
                "cluster: give secret_file or secret_env, not both",
            ));
        }
    };
    files.push(Named {
        span,
        key: key.to_string(),
        what: What::Secret(source.clone()),
    });
    Ok(Cluster {
        peers,
        listen,
        secret: source,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::testing::parse;
    use crate::config::{AzureCredential, S3Credential, StoreLocation};

    const UP: &str = "[[upstream]]\nname = \"a\"\nurl = \"http://x\"\n";

    #[test]
    fn azure_and_s3_stores() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, "c2VjcmV0\n").unwrap();
        let peer = dir.path().join("peer");
        std::fs::write(&peer, "0123456789abcdef0123456789abcdef\n").unwrap();
        let text = format!(
            "[storage]\nlocal_max_size = \"40GiB\"\n[storage.shared]\nkind = \"azure\"\naccount = \"devstoreaccount1\"\ncontainer = \"ferry\"\nprefix = \"prod/\"\nendpoint = \"http://127.0.0.1:10000/devstoreaccount1\"\nauth = {{ kind = \"account_key\", key_file = \"{}\" }}\nresolve = {{ \"ferrystore.blob.core.windows.net\" = \"10.1.2.3\" }}\n[cluster]\npeers = [\"ferry-peers.ferry.svc.cluster.local:5001\"]\nsecret_file = \"{}\"\n{UP}",
            key.display(),
            peer.display()
        );
        let c = parse(&text).unwrap();
        let s = c.shared.as_ref().unwrap();
        assert!(matches!(
            &s.location,
            StoreLocation::Azure { account, credential: AzureCredential::AccountKey(k), .. }
                if account == "devstoreaccount1" && k.current().expose() == "c2VjcmV0"
        ));
        assert_eq!(s.prefix, "prod/");
        assert_eq!(s.resolve.len(), 1);
        assert_eq!(c.local_max_size, Some(40 << 30));
        let cluster = c.cluster.as_ref().unwrap();
        assert_eq!(cluster.listen.port(), 5001);
        let d = c.describe();
        assert!(
            d.contains("azure account devstoreaccount1, container ferry")
                && d.contains("40 GiB")
                && d.contains("ferry-peers.ferry.svc.cluster.local:5001")
                && !d.contains("c2VjcmV0")
                && !d.contains("0123456789abcdef"),
            "{d}"
        );

        let c = parse(&format!(
            "[storage.shared]\nkind = \"s3\"\nbucket = \"ferry\"\nendpoint = \"http://127.0.0.1:9000\"\n{UP}"
        ))
        .unwrap();
        assert!(matches!(
            &c.shared.unwrap().location,
            StoreLocation::S3 { region, credential: S3Credential::Environment, .. } if region == "us-east-1"
        ));
    }

    /// `eviction_grace`: ten minutes unless set; a duration, or refused by name.
    #[test]
    fn eviction_grace() {
        let s3 = "[storage.shared]\nkind = \"s3\"\nbucket = \"ferry\"\n";
        let c = parse(&format!("{s3}{UP}")).unwrap();
        let grace = c.shared.as_ref().unwrap().eviction_grace;
        assert_eq!(grace, ferry_storage::backend::EVICTION_GRACE);
        assert!(
            c.describe().contains("eviction grace 10m"),
            "{}",
            c.describe()
        );
        let c = parse(&format!("{s3}eviction_grace = \"90s\"\n{UP}")).unwrap();
        assert_eq!(
            c.shared.unwrap().eviction_grace,
            std::time::Duration::from_secs(90)
        );
        let e = parse(&format!("{s3}eviction_grace = \"soon\"\n{UP}")).unwrap_err();
        assert!(
            e.to_string()
                .contains("storage.shared: eviction_grace: `soon`"),
            "{e}"
        );
    }

    /// Each mistake is refused with the key and the line of the table it is in.
    #[test]
    fn mistakes_are_named() {
        let azure = "[storage.shared]\nkind = \"azure\"\naccount = \"a\"\ncontainer = \"c\"\n";
        for (text, needle) in [
            (format!("{azure}bucket = \"b\"\n"), "`bucket` is not a key of kind = \"azure\""),
            (azure.to_string(), "auth is required"),
            (
                format!("{azure}auth = {{ kind = \"environment\" }}\n"),
                "takes auth kind \"entra\"",
            ),
            (
                "[storage.shared]\nkind = \"s3\"\nbucket = \"b\"\nauth = { kind = \"sas\", token_env = \"X\" }\n".to_string(),
                "takes auth kind \"access_key\"",
            ),
            ("[storage.shared]\nkind = \"gcs\"\n".to_string(), "\"azure\" or \"s3\""),
            ("[storage.shared]\nkind = \"s3\"\n".to_string(), "bucket is required"),
            (
                format!("{azure}auth = {{ kind = \"entra\", workload_identity = true, key_file = \"k\" }}\n"),
                "unknown field `key_file`",
            ),
            (
                format!("{azure}endpoint = \"https://u:p@x.example\"\nauth = {{ kind = \"sas\", token_env = \"X\" }}\n"),
                "no credentials",
            ),
            ("[storage]\nlocal_max_size = \"1G\"\n".to_string(), "[storage.shared], which is not configured"),
            ("[cluster]\npeers = [\"a:1\"]\nsecret_env = \"X\"\n".to_string(), "[cluster] needs [storage.shared]"),
            (
                format!("{azure}auth = {{ kind = \"entra\", workload_identity = true }}\n[cluster]\npeers = [\"ferry-peers\"]\nsecret_env = \"X\"\n"),
                "`ferry-peers` is not a host:port",
            ),
            (
                format!("{azure}auth = {{ kind = \"entra\", workload_identity = true }}\n[cluster]\npeers = [\"p:5001\"]\n"),
                "cluster.secret_file (or secret_env) is required",
            ),
        ] {
            let e = parse(&format!("{text}{UP}")).unwrap_err().to_string();
            assert!(e.contains(needle) && e.contains("test.toml"), "{text}\n=> {e}");
        }
    }
}
