//! From the raw shape to a [`Config`]: defaults, ranges, names and cross-references.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::files::{Named, What};
use super::pattern::{Pattern, Permissions};
use super::raw::{RawAccess, RawConfig, RawPin, RawRule, RawServer, RawStorage, RawTls};
use super::upstream;
use super::*;
use crate::cache_rules::{self, CacheRule};

/// `[server]`: the listen address, the shutdown timeout, and the connection limits:
/// `header_read_timeout`, `idle_timeout` (durations, more than zero) and
/// `max_connections` (a count, more than zero).
fn validate_server(
    raw: &RawServer,
    src: &Source,
) -> Result<(SocketAddr, Duration, ConnectionLimits), ConfigError> {
    let listen = match &raw.listen {
        None => "127.0.0.1:5000".parse().expect("default listen address"),
        Some(s) => s.get_ref().parse::<SocketAddr>().map_err(|e| {
            src.error(
                Some(s.span()),
                format!(
                    "server.listen: `{}` is not an address like 127.0.0.1:5000 ({e})",
                    s.get_ref()
                ),
            )
        })?,
    };
    let shutdown_timeout = match &raw.shutdown_timeout {
        None => DEFAULT_SHUTDOWN_TIMEOUT,
        Some(s) => humantime::parse_duration(s.get_ref()).map_err(|e| {
            src.error(
                Some(s.span()),
                format!(
                    "server.shutdown_timeout: `{}` is not a duration like 30s ({e})",
                    s.get_ref()
                ),
            )
        })?,
    };
    let duration = |v: &Option<Spanned<String>>, key: &str, default: Duration| {
        let Some(s) = v else { return Ok(default) };
        match humantime::parse_duration(s.get_ref()) {
            Ok(d) if !d.is_zero() => Ok(d),
            Ok(_) => Err(src.error(
                Some(s.span()),
                format!("server.{key} must be more than zero"),
            )),
            Err(e) => Err(src.error(
                Some(s.span()),
                format!(
                    "server.{key}: `{}` is not a duration like 30s ({e})",
                    s.get_ref()
                ),
            )),
        }
    };
    let max_connections = match &raw.max_connections {
        None => None,
        Some(s) => match usize::try_from(*s.get_ref()) {
            Ok(n) if n > 0 => Some(n),
            _ => {
                return Err(src.error(Some(s.span()), "server.max_connections must be at least 1"));
            }
        },
    };
    let connections = ConnectionLimits {
        header_read_timeout: duration(
            &raw.header_read_timeout,
            "header_read_timeout",
            DEFAULT_HEADER_READ_TIMEOUT,
        )?,
        idle_timeout: duration(&raw.idle_timeout, "idle_timeout", DEFAULT_IDLE_TIMEOUT)?,
        max_connections,
    };
    Ok((listen, shutdown_timeout, connections))
}

/// The configuration `raw` describes, and the files it names, which this does not read
/// (see [`super::files`]): until they are, `ca_pem` and `access.htpasswd` are `None`
/// and secrets empty.
pub(super) fn validate(raw: RawConfig, src: &Source) -> Result<(Config, Vec<Named>), ConfigError> {
    let mut files = Vec::new();
    let (listen, shutdown_timeout, connections) = validate_server(&raw.server, src)?;
    let mut storage = raw.storage;
    let (shared, local_max_size, cluster) = shared::validate_shared(
        storage.shared.take(),
        storage.local_max_size.take(),
        raw.cluster,
        src,
        &mut files,
    )?;
    let (storage_root, quota, scrub_rate) = validate_storage(storage, src)?;
    let upstreams = upstream::validate_upstreams(raw.upstream, src, &mut files)?;
    let rules = validate_rules(raw.rule, &upstreams, src)?;
    let pins = validate_pins(raw.pin, src)?;
    let access = validate_access(raw.access, src, &mut files)?;
    let tls = raw
        .tls
        .map(|t| validate_tls(t, src, &mut files))
        .transpose()?;
    let config = Config {
        listen,
        shutdown_timeout,
        connections,
        storage_root,
        upstreams,
        rules,
        quota,
        scrub_rate,
        pins,
        access,
        tls,
        shared,
        local_max_size,
        cluster,
    };
    Ok((config, files))
}

/// `[storage] <key>`: a size limit, more than zero.
pub(super) fn storage_size(
    v: Option<Spanned<String>>,
    key: &str,
    src: &Source,
) -> Result<Option<u64>, ConfigError> {
    let Some(s) = v else { return Ok(None) };
    match crate::bytesize::parse(s.get_ref()) {
        Ok(0) => Err(src.error(
            Some(s.span()),
            format!("storage.{key} must be more than zero (leave it out for no limit)"),
        )),
        Ok(n) => Ok(Some(n)),
        Err(e) => Err(src.error(Some(s.span()), format!("storage.{key}: {e}"))),
    }
}

/// `[storage]`: the root, the quota and the scrub rate.
fn validate_storage(raw: RawStorage, src: &Source) -> Result<(PathBuf, Quota, u64), ConfigError> {
    let storage_root = match raw.root {
        None => PathBuf::from("./ferry-data"),
        Some(s) if s.get_ref().is_empty() => {
            return Err(src.error(Some(s.span()), "storage.root is empty"));
        }
        Some(s) => PathBuf::from(s.into_inner()),
    };
    let size = |v, key| storage_size(v, key, src);
    let quota = Quota {
        max_size: size(raw.max_size, "max_size")?,
        min_free: size(raw.min_free, "min_free")?,
    };
    let scrub_rate = match raw.scrub_rate {
        None => DEFAULT_SCRUB_RATE,
        Some(s) => crate::bytesize::parse(s.get_ref()).map_err(|e| {
            src.error(
                Some(s.span()),
                format!("storage.scrub_rate: {e} (bytes per second, like \"8MiB\"; \"0\" for off)"),
            )
        })?,
    };
    Ok((storage_root, quota, scrub_rate))
}

/// `[[rule]]`s: each names a configured upstream, and together they pass ACR's checks.
fn validate_rules(
    raw: Vec<RawRule>,
    upstreams: &[Upstream],
    src: &Source,
) -> Result<Vec<CacheRule>, ConfigError> {
    let mut rule_list = Vec::new();
    let mut rule_spans = Vec::new();
    for r in raw {
        let name = r.name.get_ref();
        if !upstreams.iter().any(|u| &u.name == r.upstream.get_ref()) {
            return Err(src.error(
                Some(r.upstream.span()),
                format!(
                    "rule `{name}`: upstream `{}` is not configured",
                    r.upstream.get_ref()
                ),
            ));
        }
        let rule = CacheRule::parse(
            name,
            r.source.get_ref(),
            r.target.get_ref(),
            r.upstream.get_ref(),
        )
        .map_err(|e| src.error(Some(r.name.span()), format!("rule `{name}`: {e}")))?;
        rule_list.push(rule);
        rule_spans.push(r.name.span());
    }
    if let Err(e) = cache_rules::check(&rule_list) {
        // Named at the first rule that makes the set invalid (the later of a
        // conflicting pair), so the error has a line.
        let at = (1..=rule_list.len())
            .find(|&n| cache_rules::check(&rule_list[..n]).is_err())
            .map(|n| rule_spans[n - 1].clone());
        return Err(src.error(at, e));
    }
    Ok(rule_list)
}

/// `[[pin]]`s.
fn validate_pins(raw: Vec<RawPin>, src: &Source) -> Result<Vec<Pin>, ConfigError> {
    let mut pins = Vec::new();
    for p in raw {
        let images = p
            .images
            .iter()
            .map(|i| {
                i.get_ref()
                    .parse::<ImageName>()
                    .map_err(|e| src.error(Some(i.span()), format!("pin: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let refresh = match &p.refresh {
            None => DEFAULT_PIN_REFRESH,
            Some(r) => humantime::parse_duration(r.get_ref())
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    src.error(
                        Some(r.span()),
                        format!("pin: refresh `{}` is not a duration like 6h", r.get_ref()),
                    )
                })?,
        };
        let platform = match &p.platform {
            None => None,
            Some(pl) => Some(
                pl.get_ref()
                    .parse::<Platform>()
                    .map_err(|e| src.error(Some(pl.span()), format!("pin: {e}")))?,
            ),
        };
        pins.push(Pin {
            images,
            refresh,
            platform,
        });
    }
    Ok(pins)
}

/// `allow` / `deny` lists of `who` (an upstream or a user), for errors.
pub(super) fn rules_of(
    allow: Option<Vec<Spanned<String>>>,
    deny: Vec<Spanned<String>>,
    src: &Source,
    who: &str,
) -> Result<Permissions, ConfigError> {
    let parse = |list: Vec<Spanned<String>>, key: &str| {
        list.into_iter()
            .map(|p| {
                Pattern::parse(p.get_ref())
                    .map_err(|e| src.error(Some(p.span()), format!("{who}: {key}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(Permissions {
        allow: allow.map(|a| parse(a, "allow")).transpose()?,
        deny: parse(deny, "deny")?,
    })
}

/// `[access]`; the htpasswd file, and that each user is in it, go to `files`.
fn validate_access(
    raw: RawAccess,
    src: &Source,
    files: &mut Vec<Named>,
) -> Result<Access, ConfigError> {
    let mut users: Vec<AccessUser> = Vec::new();
    let mut spans = Vec::new();
    for u in raw.user {
        let name = u.name.get_ref().clone();
        if raw.htpasswd.is_none() {
            return Err(src.error(
                Some(u.name.span()),
                format!("access.user `{name}`: users need `[access] htpasswd` to log in with"),
            ));
        }
        if users.iter().any(|x| x.name == name) {
            return Err(src.error(
                Some(u.name.span()),
                format!("access.user `{name}` is defined twice"),
            ));
        }
        let rules = rules_of(u.allow, u.deny, src, &format!("access.user `{name}`"))?;
        spans.push((name.clone(), u.name.span()));
        users.push(AccessUser { name, rules });
    }
    if let Some(h) = raw.htpasswd {
        files.push(Named {
            span: h.span(),
            key: "access.htpasswd".to_string(),
            what: What::Htpasswd {
                path: PathBuf::from(h.into_inner()),
                users: spans,
            },
        });
    }
    Ok(Access {
        htpasswd: None,
        users,
    })
}

/// `[tls]`; its PEM files get a light look with the other files (`ferry config
/// check`), and are fully checked when served.
fn validate_tls(raw: RawTls, src: &Source, files: &mut Vec<Named>) -> Result<Tls, ConfigError> {
    let listen = match raw.listen {
        None => return Err(src.error(None, "tls.listen is missing (e.g. \"0.0.0.0:5443\")")),
        Some(s) => s.get_ref().parse::<SocketAddr>().map_err(|e| {
            src.error(
                Some(s.span()),
                format!(
                    "tls.listen: `{}` is not an address like 0.0.0.0:5443 ({e})",
                    s.get_ref()
                ),
            )
        })?,
    };
    let mut pem = |v: Option<Spanned<String>>, key: &str, needs: &'static [&'static str]| {
        let Some(f) = v else {
            return Err(src.error(None, format!("tls.{key} is missing")));
        };
        let path = PathBuf::from(f.get_ref());
        files.push(Named {
            span: f.span(),
            key: format!("tls.{key}"),
            what: What::Pem {
                fault: format!("tls.{key}: `{}` holds no PEM {}", f.get_ref(), needs[0]),
                path: path.clone(),
                needs,
            },
        });
        Ok(path)
    };
    Ok(Tls {
        listen,
        cert_file: pem(raw.cert_file, "cert_file", &["CERTIFICATE"])?,
        key_file: pem(raw.key_file, "key_file", &["PRIVATE KEY"])?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::{parse, parse_with};

    #[test]
    fn shutdown_timeout() {
        assert_eq!(parse("").unwrap().shutdown_timeout, Duration::from_secs(30));
        let c = parse("[server]\nshutdown_timeout = \"5s\"\n").unwrap();
        assert_eq!(c.shutdown_timeout, Duration::from_secs(5));
        let e = parse("[server]\nshutdown_timeout = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("test.toml:2") && e.contains("server.shutdown_timeout"),
            "{e}"
        );
        let env = vec![(
            "FERRY_SERVER_SHUTDOWN_TIMEOUT".to_string(),
            "1m".to_string(),
        )];
        let c = parse_with("", &env).unwrap();
        assert_eq!(c.shutdown_timeout, Duration::from_secs(60));
    }

    #[test]
    fn connection_limits() {
        let c = parse("").unwrap().connections;
        assert_eq!(c.header_read_timeout, Duration::from_secs(30));
        assert_eq!(c.idle_timeout, Duration::from_secs(90));
        assert_eq!(c.max_connections, None);
        let c = parse("[server]\nheader_read_timeout = \"2s\"\nidle_timeout = \"1m\"\nmax_connections = 500\n")
            .unwrap();
        assert_eq!(c.connections.header_read_timeout, Duration::from_secs(2));
        assert_eq!(c.connections.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.connections.max_connections, Some(500));
        assert!(
            c.describe().contains("max_connections 500"),
            "{}",
            c.describe()
        );
        for (text, key) in [
            ("header_read_timeout = \"0s\"", "server.header_read_timeout"),
            ("idle_timeout = \"soon\"", "server.idle_timeout"),
            ("max_connections = 0", "server.max_connections"),
        ] {
            let e = parse(&format!("[server]\n{text}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("test.toml:2") && e.contains(key), "{e}");
        }
        let env = vec![
            ("FERRY_SERVER_IDLE_TIMEOUT".to_string(), "5s".to_string()),
            ("FERRY_SERVER_MAX_CONNECTIONS".to_string(), "7".to_string()),
        ];
        let c = parse_with("", &env).unwrap().connections;
        assert_eq!(c.idle_timeout, Duration::from_secs(5));
        assert_eq!(c.max_connections, Some(7));
    }

    #[test]
    fn storage_limits() {
        let c = parse("[storage]\nmax_size = \"200GiB\"\nmin_free = \"5G\"\n").unwrap();
        assert_eq!(c.quota.max_size, Some(200 << 30));
        assert_eq!(c.quota.min_free, Some(5 << 30));
        assert!(
            c.describe().contains("max_size: 200 GiB"),
            "{}",
            c.describe()
        );
        assert_eq!(parse("").unwrap().quota, Quota::default());
        let e = parse("[storage]\nroot = \"/x\"\nmax_size = \"lots\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("test.toml:3") && e.contains("storage.max_size") && e.contains("lots"),
            "{e}"
        );
        let e = parse("[storage]\nmin_free = \"0\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("test.toml:2") && e.contains("min_free"), "{e}");
        assert_eq!(c.scrub_rate, DEFAULT_SCRUB_RATE);
        assert!(
            c.describe().contains("scrub_rate: 8 MiB/s"),
            "{}",
            c.describe()
        );
        let c = parse("[storage]\nscrub_rate = \"0\"\n").unwrap();
        assert_eq!(c.scrub_rate, 0);
        assert!(c.describe().contains("scrub_rate: off"));
        let e = parse("[storage]\nscrub_rate = \"fast\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("test.toml:2") && e.contains("storage.scrub_rate"),
            "{e}"
        );
        let env = vec![("FERRY_STORAGE_SCRUB_RATE".to_string(), "1MiB".to_string())];
        let up = "[[upstream]]\nname = \"t\"\nurl = \"http://127.0.0.1:9\"\n";
        assert_eq!(Config::parse("t", up, &env).unwrap().scrub_rate, 1 << 20);
        let env = vec![("FERRY_STORAGE_MAX_SIZE".to_string(), "6MiB".to_string())];
        let c = parse_with("[storage]\nmax_size = \"1G\"\n", &env).unwrap();
        assert_eq!(c.quota.max_size, Some(6 << 20));
        let bad = vec![("FERRY_STORAGE_MIN_FREE".to_string(), "x".to_string())];
        let e = parse_with("", &bad).unwrap_err().to_string();
        assert!(e.contains("storage.min_free"), "{e}");
    }

    #[test]
    fn rules_are_validated() {
        let base = "[[upstream]]\nname = \"acr\"\nurl = \"https://contoso.azurecr.io\"\n";
        let ok = format!(
            "{base}[[rule]]\nname = \"aks-managed-mcr\"\nsource = \"mcr.microsoft.com/*\"\ntarget = \"aks-managed-repository/*\"\nupstream = \"acr\"\n"
        );
        let c = parse(&ok).unwrap();
        assert_eq!(c.rules.len(), 1);
        assert!(c.describe().contains("aks-managed-mcr"));
        let e = parse(&ok.replace("upstream = \"acr\"\n", "upstream = \"nope\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("test.toml:8") && e.contains("nope"), "{e}");
        let twice = format!(
            "{ok}[[rule]]\nname = \"other\"\nsource = \"ghcr.io/*\"\ntarget = \"aks-managed-repository/x/*\"\nupstream = \"acr\"\n"
        );
        let e = parse(&twice).unwrap_err().to_string();
        assert!(
            e.contains("aks-managed-mcr") && e.contains("other") && e.contains("overlap"),
            "{e}"
        );
        assert!(e.contains("test.toml:10:"), "at the later rule: {e}");
    }

    #[test]
    fn access_and_tls() {
        let dir = tempfile::tempdir().unwrap();
        let h = dir.path().join("htpasswd");
        std::fs::write(&h, format!("ci:{}\n", bcrypt::hash("pw", 4).unwrap())).unwrap();
        let base = "[[upstream]]\nname = \"a\"\nurl = \"http://x\"\nallow = [\"team/**\"]\n";
        let ok = format!(
            "{base}[access]\nhtpasswd = \"{}\"\n[[access.user]]\nname = \"ci\"\nallow = [\"x/**\"]\n",
            h.display()
        );
        let c = parse(&ok).unwrap();
        assert_eq!(c.access.users.len(), 1);
        assert!(c.describe().contains("ci: allow x/**"), "{}", c.describe());
        assert!(!format!("{c:?}").contains("$2"), "hashes never print");
        let e = parse(&ok.replace("\"ci\"", "\"nobody\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("test.toml:8") && e.contains("nobody"), "{e}");
        let e = parse(&format!("{base}[[access.user]]\nname = \"ci\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("htpasswd"), "{e}");
        let e = parse(&base.replace("team/**", "team/["))
            .unwrap_err()
            .to_string();
        assert!(e.contains("test.toml:4") && e.contains("allow"), "{e}");
        std::fs::write(&h, "ci:$apr1$x$y\n").unwrap();
        let e = parse(&ok).unwrap_err().to_string();
        assert!(
            e.contains(&format!("{}:1", h.display())) && e.contains("bcrypt"),
            "{e}"
        );
        let e = parse("[tls]\nlisten = \"0.0.0.0:5443\"\ncert_file = \"/nonexistent/c\"\nkey_file = \"/nonexistent/k\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("test.toml:3") && e.contains("cert_file"), "{e}");
        let e = parse("[tls]\nlisten = \"nope\"\n").unwrap_err().to_string();
        assert!(e.contains("tls.listen"), "{e}");
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\n").unwrap();
        std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\n").unwrap();
        let env: Vec<(String, String)> = [
            ("FERRY_TLS_LISTEN", "127.0.0.1:5443".to_string()),
            ("FERRY_TLS_CERT_FILE", cert.display().to_string()),
            ("FERRY_TLS_KEY_FILE", key.display().to_string()),
            ("FERRY_ACCESS_HTPASSWD", h.display().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        std::fs::write(&h, format!("ci:{}\n", bcrypt::hash("pw", 4).unwrap())).unwrap();
        let c = parse_with("", &env).unwrap();
        assert_eq!(c.tls.unwrap().listen.to_string(), "127.0.0.1:5443");
        assert_eq!(c.access.htpasswd.unwrap().users(), ["ci"]);
    }
}
