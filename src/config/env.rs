//! The `FERRY_*` environment overlay: each variable replaces one key of the file.

use toml::Spanned;

use super::ConfigError;
use super::raw::{RawAuth, RawConfig};

/// `FERRY_SERVER_LISTEN` (`_SHUTDOWN_TIMEOUT`, `_HEADER_READ_TIMEOUT`, `_IDLE_TIMEOUT`,
/// `_MAX_CONNECTIONS`), `FERRY_STORAGE_ROOT` (`_MAX_SIZE`, `_MIN_FREE`), and per upstream (name upper-cased,
/// `-` and `.` as `_`) `FERRY_UPSTREAM_<NAME>_<KEY>` for every key, `AUTH_<KEY>` for
/// the auth table. An override for an upstream that the file does not define is an
/// error rather than silently ignored.
pub(super) fn apply_env(raw: &mut RawConfig, env: &[(String, String)]) -> Result<(), ConfigError> {
    // Values from the environment carry the empty span 0..0: they have no line.
    let set = |slot: &mut Option<Spanned<String>>, v: &str| {
        *slot = Some(Spanned::new(0..0, v.to_string()))
    };
    let env_err = |key: &str, message: String| ConfigError {
        origin: format!("environment variable {key}"),
        location: String::new(),
        message,
    };
    let env_bool = |key: &str, value: &str| {
        value
            .parse::<bool>()
            .map_err(|_| env_err(key, format!("`{value}` is not true or false")))
    };
    for (key, value) in env {
        let Some(rest) = key.strip_prefix("FERRY_") else {
            continue;
        };
        match rest {
            "SERVER_LISTEN" => set(&mut raw.server.listen, value),
            "SERVER_SHUTDOWN_TIMEOUT" => set(&mut raw.server.shutdown_timeout, value),
            "SERVER_HEADER_READ_TIMEOUT" => set(&mut raw.server.header_read_timeout, value),
            "SERVER_IDLE_TIMEOUT" => set(&mut raw.server.idle_timeout, value),
            "SERVER_MAX_CONNECTIONS" => {
                let n = value
                    .parse::<u64>()
                    .map_err(|_| env_err(key, format!("`{value}` is not a count")))?;
                raw.server.max_connections = Some(Spanned::new(0..0, n));
            }
            "STORAGE_ROOT" => set(&mut raw.storage.root, value),
            "STORAGE_MAX_SIZE" => set(&mut raw.storage.max_size, value),
            "STORAGE_MIN_FREE" => set(&mut raw.storage.min_free, value),
            "STORAGE_SCRUB_RATE" => set(&mut raw.storage.scrub_rate, value),
            "ACCESS_HTPASSWD" => set(&mut raw.access.htpasswd, value),
            "TLS_LISTEN" => set(&mut raw.tls.get_or_insert_default().listen, value),
            "TLS_CERT_FILE" => set(&mut raw.tls.get_or_insert_default().cert_file, value),
            "TLS_KEY_FILE" => set(&mut raw.tls.get_or_insert_default().key_file, value),
            // Read by the CLI itself, not config keys.
            "CONFIG" | "LOG_FORMAT" | "LOG" => {}
            _ => {
                let Some(up) = rest.strip_prefix("UPSTREAM_") else {
                    return Err(env_err(key, "not a Ferry setting".into()));
                };
                let target = raw.upstream.iter_mut().find(|u| {
                    let prefix = env_name(u.name.get_ref()) + "_";
                    up.starts_with(&prefix)
                });
                let Some(u) = target else {
                    return Err(env_err(key, "names no configured upstream".into()));
                };
                let field = &up[env_name(u.name.get_ref()).len() + 1..];
                match field {
                    "REGISTRY" => set(&mut u.registry, value),
                    "URL" => set(&mut u.url, value),
                    "TAG_TTL" => set(&mut u.tag_ttl, value),
                    "CONNECT_TIMEOUT" => set(&mut u.connect_timeout, value),
                    "READ_TIMEOUT" => set(&mut u.read_timeout, value),
                    "MAX_STALE" => set(&mut u.max_stale, value),
                    "OFFLINE_AFTER_FAILURES" => {
                        let n = value
                            .parse::<u32>()
                            .map_err(|_| env_err(key, format!("`{value}` is not a count")))?;
                        u.offline_after_failures = Some(Spanned::new(0..0, n));
                    }
                    "CA_FILE" => set(&mut u.ca_file, value),
                    "PROXY" => set(&mut u.proxy, value),
                    "INSECURE_SKIP_VERIFY" => {
                        u.insecure_skip_verify = Some(Spanned::new(0..0, env_bool(key, value)?))
                    }
                    // A comma-separated list; empty clears the file's.
                    "REALM_HOSTS" => {
                        u.realm_hosts = value
                            .split(',')
                            .map(str::trim)
                            .filter(|h| !h.is_empty())
                            .map(|h| Spanned::new(0..0, h.to_string()))
                            .collect()
                    }
                    "DEFAULT" => u.default = Some(Spanned::new(0..0, env_bool(key, value)?)),
                    f if f.starts_with("AUTH_") => {
                        let a = u
                            .auth
                            .get_or_insert_with(|| Spanned::new(0..0, RawAuth::default()));
                        let a = a.get_mut();
                        match &f[5..] {
                            "KIND" => set(&mut a.kind, value),
                            "USERNAME" => set(&mut a.username, value),
                            "PASSWORD_FILE" => set(&mut a.password_file, value),
                            "TOKEN_FILE" => set(&mut a.token_file, value),
                            "TENANT_ID" => set(&mut a.tenant_id, value),
                            "CLIENT_ID" => set(&mut a.client_id, value),
                            "CLIENT_SECRET_FILE" => set(&mut a.client_secret_file, value),
                            "CLIENT_SECRET_ENV" => set(&mut a.client_secret_env, value),
                            "PASSWORD_ENV" => set(&mut a.password_env, value),
                            "TOKEN_ENV" => set(&mut a.token_env, value),
                            "CERTIFICATE_FILE" => set(&mut a.certificate_file, value),
                            "AUTHORITY_HOST" => set(&mut a.authority_host, value),
                            "WORKLOAD_IDENTITY" => {
                                a.workload_identity =
                                    Some(Spanned::new(0..0, env_bool(key, value)?))
                            }
                            _ => return Err(env_err(key, "not an auth setting".into())),
                        }
                    }
                    _ => return Err(env_err(key, "not an upstream setting".into())),
                }
            }
        }
    }
    Ok(())
}

pub(super) fn env_name(upstream: &str) -> String {
    upstream.to_ascii_uppercase().replace(['-', '.'], "_")
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::config::testing::parse_with;
    use std::time::Duration;

    #[test]
    fn env_overrides_win() {
        let env = vec![
            (
                "FERRY_SERVER_LISTEN".to_string(),
                "127.0.0.1:6000".to_string(),
            ),
            (
                "FERRY_UPSTREAM_MY_REG_URL".to_string(),
                "http://127.0.0.1:9".to_string(),
            ),
            (
                "FERRY_UPSTREAM_MY_REG_TAG_TTL".to_string(),
                "5m".to_string(),
            ),
        ];
        let c = Config::parse(
            "t",
            "[[upstream]]\nname = \"my-reg\"\nurl = \"http://x\"\n",
            &env,
        )
        .unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:6000");
        assert_eq!(c.upstreams[0].url.as_str(), "http://127.0.0.1:9/");
        assert_eq!(c.upstreams[0].tag_ttl, Duration::from_secs(300));
        let bad = vec![(
            "FERRY_UPSTREAM_NOPE_URL".to_string(),
            "http://x".to_string(),
        )];
        let e = parse_with("", &bad).unwrap_err().to_string();
        assert!(e.contains("FERRY_UPSTREAM_NOPE_URL"), "{e}");
    }
}
