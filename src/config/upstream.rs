//! `[[upstream]]`: the registries Ferry caches, each with its URL, timeouts, TLS and
//! proxy settings, credentials ([`super::auth`]) and anonymous access.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;
use url::Url;

use super::auth::validate_auth;
use super::files::{CaFor, Named, What};
use super::raw::RawUpstream;
use super::validate::rules_of;
use super::*;

/// Every `[[upstream]]`: at least one, distinct names and registries, one default.
pub(super) fn validate_upstreams(
    raw: Vec<RawUpstream>,
    src: &Source,
    files: &mut Vec<Named>,
) -> Result<Vec<Upstream>, ConfigError> {
    let mut upstreams = Vec::new();
    let mut names = HashSet::new();
    let mut registries = HashSet::new();
    for u in raw {
        let name = u.name.get_ref().clone();
        let valid_name = !name.is_empty()
            && name.split(['.', '_', '-']).all(|c| {
                !c.is_empty()
                    && c.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            });
        if !valid_name {
            return Err(src.error(Some(u.name.span()), format!("upstream name `{name}` must be lowercase letters, digits, and . _ - between them")));
        }
        if !names.insert(name.clone()) {
            return Err(src.error(
                Some(u.name.span()),
                format!("upstream name `{name}` is defined twice"),
            ));
        }
        let index = upstreams.len();
        upstreams.push(validate_upstream(u, index, src, &mut registries, files)?);
    }
    if upstreams.is_empty() {
        // Every request, cached images included, is routed through an upstream's
        // registry name: a file without one (emptied by accident, say) would turn a
        // running cache into a 404 for everything.
        return Err(src.error(
            None,
            "no [[upstream]] is configured: Ferry routes every image, cached ones included, through an upstream; add one (name and url)",
        ));
    }
    if upstreams.iter().filter(|u| u.default).count() > 1 {
        let which: Vec<_> = upstreams
            .iter()
            .filter(|u| u.default)
            .map(|u| u.name.as_str())
            .collect();
        return Err(src.error(
            None,
            format!(
                "only one upstream may be `default = true`, found: {}",
                which.join(", ")
            ),
        ));
    }
    Ok(upstreams)
}

/// One `[[upstream]]`, number `index`, whose name is checked; `registries` are those
/// of the upstreams before it.
fn validate_upstream(
    u: RawUpstream,
    index: usize,
    src: &Source,
    registries: &mut HashSet<String>,
    files: &mut Vec<Named>,
) -> Result<Upstream, ConfigError> {
    let name = u.name.get_ref().clone();
    let here = |field: &str| format!("upstream `{name}`: {field}");
    let url_s = u
        .url
        .ok_or_else(|| src.error(Some(u.name.span()), here("`url` is missing")))?;
    let url = Url::parse(url_s.get_ref()).map_err(|e| {
        src.error(
            Some(url_s.span()),
            format!("{}: `{}` is not a URL ({e})", here("url"), url_s.get_ref()),
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(src.error(
            Some(url_s.span()),
            format!(
                "{}: `{url}` must be an http:// or https:// URL with a host",
                here("url")
            ),
        ));
    }
    if url.query().is_some()
        || url.fragment().is_some()
        || !url.username().is_empty()
        || url.password().is_some()
    {
        return Err(src.error(
            Some(url_s.span()),
            format!(
                "{}: must not carry credentials, a query or a fragment (use `auth`)",
                here("url")
            ),
        ));
    }
    let registry = match u.registry {
        Some(r) => {
            let reg = r.get_ref().to_ascii_lowercase();
            let ok = !reg.is_empty()
                && reg.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')
                });
            if !ok {
                return Err(src.error(
                    Some(r.span()),
                    format!(
                        "{}: `{}` is not a registry host[:port]",
                        here("registry"),
                        r.get_ref()
                    ),
                ));
            }
            if !registries.insert(reg.clone()) {
                return Err(src.error(
                    Some(r.span()),
                    format!(
                        "{}: registry `{reg}` is already served by another upstream",
                        here("registry")
                    ),
                ));
            }
            reg
        }
        None => {
            let reg = match url.port() {
                Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
                None => url.host_str().unwrap_or_default().to_string(),
            };
            if !registries.insert(reg.clone()) {
                return Err(src.error(
                    Some(u.name.span()),
                    format!(
                        "{}: registry `{reg}` (from url) is already served by another upstream",
                        here("registry")
                    ),
                ));
            }
            reg
        }
    };
    let duration = |v: Option<Spanned<String>>,
                    field: &str,
                    default: Duration|
     -> Result<Duration, ConfigError> {
        match v {
            None => Ok(default),
            Some(s) => humantime::parse_duration(s.get_ref()).map_err(|e| {
                src.error(
                    Some(s.span()),
                    format!(
                        "{}: `{}` is not a duration like 60s or 5m ({e})",
                        here(field),
                        s.get_ref()
                    ),
                )
            }),
        }
    };
    let tag_ttl = duration(u.tag_ttl, "tag_ttl", DEFAULT_TAG_TTL)?;
    let connect_timeout = duration(
        u.connect_timeout,
        "connect_timeout",
        DEFAULT_CONNECT_TIMEOUT,
    )?;
    let read_timeout = duration(u.read_timeout, "read_timeout", DEFAULT_READ_TIMEOUT)?;
    let max_stale = match u.max_stale {
        None => None,
        Some(s) => Some(duration(Some(s), "max_stale", Duration::ZERO)?),
    };
    let offline_after_failures = match u.offline_after_failures {
        None => 1,
        Some(n) if *n.get_ref() == 0 => {
            return Err(src.error(
                Some(n.span()),
                format!("{} must be at least 1", here("offline_after_failures")),
            ));
        }
        Some(n) => n.into_inner(),
    };
    for (d, f) in [
        (connect_timeout, "connect_timeout"),
        (read_timeout, "read_timeout"),
    ] {
        if d.is_zero() {
            return Err(src.error(
                Some(u.name.span()),
                format!("{} must be more than zero", here(f)),
            ));
        }
    }
    let auth = match u.auth {
        None => Auth::Anonymous,
        Some(a) => validate_auth(a, src, &name, files)?,
    };
    let (resolve, proxy) = validate_reach(
        u.resolve,
        u.ca_file,
        u.proxy,
        &here,
        CaFor::Upstream(index),
        src,
        files,
    )?;
    let mut realm_hosts = Vec::new();
    for h in u.realm_hosts {
        let host = url::Host::parse(h.get_ref()).map_err(|_| {
            src.error(
                Some(h.span()),
                format!(
                    "{}: `{}` is not a host name or IP address (no scheme, port or path)",
                    here("realm_hosts"),
                    h.get_ref()
                ),
            )
        })?;
        realm_hosts.push(host.to_string());
    }
    let anonymous = rules_of(u.allow, u.deny, src, &format!("upstream `{name}`"))?;
    Ok(Upstream {
        name,
        registry,
        url,
        default: u.default.map(|d| d.into_inner()).unwrap_or(false),
        tag_ttl,
        connect_timeout,
        read_timeout,
        max_stale,
        offline_after_failures,
        auth,
        resolve,
        ca_pem: None,
        proxy,
        insecure_skip_verify: u.insecure_skip_verify.is_some_and(|v| v.into_inner()),
        realm_hosts,
        anonymous,
    })
}

/// `resolve`: fixed addresses by host name.
type AddressPins = Vec<(String, IpAddr)>;

/// `resolve`, `ca_file` and `proxy`: how an endpoint is reached (an upstream's, the
/// shared store's). The CA file is read later, into `ca`'s owner.
pub(super) fn validate_reach(
    resolve: BTreeMap<String, Spanned<String>>,
    ca_file: Option<Spanned<String>>,
    proxy: Option<Spanned<String>>,
    here: &dyn Fn(&str) -> String,
    ca: CaFor,
    src: &Source,
    files: &mut Vec<Named>,
) -> Result<(AddressPins, Option<Url>), ConfigError> {
    let mut pins = Vec::new();
    for (host, addr) in resolve {
        let ip = addr.get_ref().parse::<IpAddr>().map_err(|_| {
            src.error(
                Some(addr.span()),
                format!(
                    "{}: `{}` is not an IP address",
                    here(&format!("resolve.\"{host}\"")),
                    addr.get_ref()
                ),
            )
        })?;
        pins.push((host.to_ascii_lowercase(), ip));
    }
    if let Some(f) = ca_file {
        files.push(Named {
            span: f.span(),
            key: here("ca_file"),
            what: What::Ca {
                path: PathBuf::from(f.into_inner()),
                owner: ca,
            },
        });
    }
    let proxy = match proxy {
        None => None,
        Some(p) => Some(
            Url::parse(p.get_ref())
                .ok()
                .filter(|url| matches!(url.scheme(), "http" | "https" | "socks5" | "socks5h"))
                .ok_or_else(|| {
                    src.error(
                        Some(p.span()),
                        format!("{}: `{}` is not a proxy URL", here("proxy"), p.get_ref()),
                    )
                })?,
        ),
    };
    Ok((pins, proxy))
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::config::testing::parse;

    #[test]
    fn realm_hosts() {
        let text = "[[upstream]]\nname = \"a\"\nurl = \"https://r.example\"\nrealm_hosts = [\"Auth.Example\", \"10.0.0.1\"]\n";
        let c = parse(text).unwrap();
        assert_eq!(c.upstreams[0].realm_hosts, ["auth.example", "10.0.0.1"]);
        assert!(
            c.describe()
                .contains("token realms also on auth.example, 10.0.0.1"),
            "{}",
            c.describe()
        );
        for bad in [
            "https://auth.example",
            "auth.example:443",
            "auth.example/token",
            "",
        ] {
            let text = format!(
                "[[upstream]]\nname = \"a\"\nurl = \"https://r.example\"\nrealm_hosts = [\"{bad}\"]\n"
            );
            let e = parse(&text).unwrap_err().to_string();
            assert!(
                e.contains("test.toml:4") && e.contains("realm_hosts"),
                "{bad}: {e}"
            );
        }
        let env = vec![(
            "FERRY_UPSTREAM_A_REALM_HOSTS".to_string(),
            "x.example, y.example".to_string(),
        )];
        let c = Config::parse("t", text, &env).unwrap();
        assert_eq!(c.upstreams[0].realm_hosts, ["x.example", "y.example"]);
    }
}
