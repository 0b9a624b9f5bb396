//! What `ferry config check` prints: the configuration as understood, secrets never.

use super::{
    Auth, AzureCredential, Config, Entra, EntraCredential, S3Credential, SharedStore, StoreLocation,
};

impl Config {
    /// A human summary of what was understood, for `ferry config check`.
    pub fn describe(&self) -> String {
        let mut out = format!(
            "listen: {} (shutdown_timeout {})\nconnections: header_read_timeout {}, idle_timeout {}, max_connections {}\nstorage root: {}\nupstreams:\n",
            self.listen,
            humantime::format_duration(self.shutdown_timeout),
            humantime::format_duration(self.connections.header_read_timeout),
            humantime::format_duration(self.connections.idle_timeout),
            match self.connections.max_connections {
                Some(n) => n.to_string(),
                None => "3/4 of the open-file limit".to_string(),
            },
            self.storage_root.display()
        );
        for u in &self.upstreams {
            out += &format!(
                "  - {name}: registry {registry} -> {url}{default}\n      auth: {auth}{realms}; tag_ttl {ttl}; connect_timeout {ct}; read_timeout {rt}{lib}\n",
                name = u.name,
                registry = u.registry,
                url = u.url,
                default = if u.default { " (default)" } else { "" },
                auth = u.auth.describe(),
                realms = if u.realm_hosts.is_empty() {
                    String::new()
                } else {
                    format!("; token realms also on {}", u.realm_hosts.join(", "))
                },
                ttl = humantime::format_duration(u.tag_ttl),
                ct = humantime::format_duration(u.connect_timeout),
                rt = humantime::format_duration(u.read_timeout),
                lib = if u.implicit_library() {
                    "; single-component names get library/"
                } else {
                    ""
                },
            );
        }
        for (key, limit) in [
            ("max_size", self.quota.max_size),
            ("min_free", self.quota.min_free),
        ] {
            if let Some(bytes) = limit {
                out += &format!("storage {key}: {}\n", crate::bytesize::Human(bytes));
            }
        }
        out += &match self.scrub_rate {
            0 => "storage scrub_rate: off\n".to_string(),
            r => format!("storage scrub_rate: {}/s\n", crate::bytesize::Human(r)),
        };
        if let Some(s) = &self.shared {
            out += &format!("shared store: {}\n", s.describe());
            if let Some(bytes) = self.local_max_size {
                out += &format!(
                    "storage local_max_size: {} (this replica's local tier)\n",
                    crate::bytesize::Human(bytes)
                );
            }
        }
        if let Some(c) = &self.cluster {
            out += &format!(
                "cluster: peers {}; peer listener {}\n",
                c.peers.join(", "),
                c.listen,
            );
        }
        if let Some(t) = &self.tls {
            out += &format!(
                "tls: https://{} (cert {}, key {})\n",
                t.listen,
                t.cert_file.display(),
                t.key_file.display()
            );
        }
        for u in self.upstreams.iter().filter(|u| !u.anonymous.is_open()) {
            out += &format!(
                "anonymous access to {}: {}\n",
                u.name,
                u.anonymous.describe()
            );
        }
        if let Some(h) = &self.access.htpasswd {
            out += &format!(
                "users (htpasswd {}): {}\n",
                h.path().display(),
                h.users().join(", ")
            );
            for u in &self.access.users {
                out += &format!("  - {}: {}\n", u.name, u.rules.describe());
            }
        }
        if !self.rules.is_empty() {
            out += "rules:\n";
            for r in &self.rules {
                out += &format!("  - {r}\n");
            }
        }
        out
    }
}

impl Auth {
    pub(super) fn describe(&self) -> String {
        match self {
            Auth::Anonymous => "anonymous".into(),
            Auth::Basic { username, .. } => {
                format!("basic (username {username}, password from file)")
            }
            Auth::Bearer { .. } => "bearer (token from file)".into(),
            Auth::Entra(e) => format!("{} via the ACR token exchange", e.describe()),
        }
    }
}

impl SharedStore {
    fn describe(&self) -> String {
        let (what, auth) = match &self.location {
            StoreLocation::Azure {
                account,
                container,
                credential,
            } => (
                format!("azure account {account}, container {container}"),
                match credential {
                    AzureCredential::AccountKey(_) => "account key from file".to_string(),
                    AzureCredential::Sas(_) => "SAS token from file".to_string(),
                    AzureCredential::Entra(e) => e.describe(),
                },
            ),
            StoreLocation::S3 {
                bucket,
                region,
                credential,
            } => (
                format!("s3 bucket {bucket} in {region}"),
                match credential {
                    S3Credential::AccessKey { id, .. } => format!("access key {id}"),
                    S3Credential::Environment => "the AWS environment chain".to_string(),
                },
            ),
        };
        let endpoint = self
            .endpoint
            .as_ref()
            .map_or("its public endpoint".to_string(), |u| u.to_string());
        format!(
            "{what}, prefix \"{}\" at {endpoint}; auth: {auth}; eviction grace {}",
            self.prefix,
            humantime::format_duration(self.eviction_grace)
        )
    }
}

impl Entra {
    fn describe(&self) -> String {
        let how = match &self.credential {
            EntraCredential::ClientSecret(_) => "client secret from file".to_string(),
            EntraCredential::Certificate(p) => format!("certificate {}", p.display()),
            EntraCredential::WorkloadIdentity { .. } => "workload identity".to_string(),
            EntraCredential::ManagedIdentity { client_id: None } => {
                "system-assigned managed identity".to_string()
            }
            EntraCredential::ManagedIdentity { client_id: Some(c) } => {
                format!("managed identity {c}")
            }
        };
        let host = self
            .authority_host
            .as_ref()
            .map_or("default authority".to_string(), |u| u.to_string());
        format!(
            "entra ({how}; tenant {}; client {}; {host})",
            self.tenant_id.as_deref().unwrap_or("from env"),
            self.client_id.as_deref().unwrap_or("from env")
        )
    }
}
