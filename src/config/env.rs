//! The `FERRY_*` environment overlay. Each variable sets one key of the TOML document
//! before the document is read into the schema, so the schema's own checks (unknown
//! keys, types, which keys an `auth` kind takes) apply to it as to the file:
//!
//! - `FERRY_<SECTION>_<KEY>` for the keys of `[server]`, `[storage]`, `[access]`, `[tls]`;
//! - `FERRY_UPSTREAM_<NAME>_<KEY>` and `FERRY_UPSTREAM_<NAME>_AUTH_<KEY>` for the
//!   upstream of that name (upper-cased, `-` and `.` as `_`), which the file must define.
//!
//! A value from a variable gets a span of its own past the end of the text, so that an
//! error about it names the variable ([`Overlay::variable`]) instead of a line.

use std::borrow::Cow;
use std::ops::Range;

use toml::Spanned;
use toml::de::{DeArray, DeTable, DeValue};

use super::ConfigError;

/// Variables the CLI reads itself: not settings.
const NOT_SETTINGS: &[&str] = &["CONFIG", "LOG_FORMAT", "LOG"];

/// The sections whose keys a variable may set (the others are lists of tables).
const SECTIONS: &[&str] = &["server", "storage", "access", "tls"];

/// Keys whose value is not a string, and what a variable's text must be for them;
/// every other key takes the text as it is.
const TYPED: &[(&str, Type)] = &[
    ("max_connections", Type::Count),
    ("offline_after_failures", Type::Count),
    ("default", Type::Bool),
    ("insecure_skip_verify", Type::Bool),
    ("workload_identity", Type::Bool),
    ("managed_identity", Type::Bool),
    // A comma-separated list; empty clears the file's.
    ("realm_hosts", Type::List),
];

#[derive(Clone, Copy)]
enum Type {
    Count,
    Bool,
    List,
}

/// The variables laid over a document, by the spans their values got.
pub(super) struct Overlay {
    /// The first span past the text.
    base: usize,
    vars: Vec<String>,
}

impl Overlay {
    /// No variables.
    pub(super) fn none() -> Overlay {
        Overlay {
            base: usize::MAX,
            vars: Vec::new(),
        }
    }

    /// A span of its own for a value from `var` (or a table from several: `FERRY_TLS_*`).
    fn span(&mut self, var: &str) -> Range<usize> {
        let start = self.base + self.vars.len();
        self.vars.push(var.to_string());
        start..start + 1
    }

    /// The variable a value with this span came from, if it came from one.
    pub(super) fn variable(&self, span: &Range<usize>) -> Option<&str> {
        let i = span.start.checked_sub(self.base)?;
        self.vars.get(i).map(String::as_str)
    }
}

/// Sets each `FERRY_*` variable of `env` in `doc`, parsed from a text of `text_len`
/// bytes. An override for an upstream that the file does not define is an error rather
/// than silently ignored.
pub(super) fn apply_env<'i>(
    doc: &mut DeTable<'i>,
    text_len: usize,
    env: &'i [(String, String)],
) -> Result<Overlay, ConfigError> {
    let mut overlay = Overlay {
        base: text_len + 1,
        vars: Vec::new(),
    };
    for (var, value) in env {
        let Some(rest) = var.strip_prefix("FERRY_") else {
            continue;
        };
        if NOT_SETTINGS.contains(&rest) {
            continue;
        }
        let err = |message: String| ConfigError {
            origin: format!("environment variable {var}"),
            location: String::new(),
            message,
        };
        let span = overlay.span(var);
        let (table, key) = match rest.strip_prefix("UPSTREAM_") {
            Some(up) => {
                let (upstream, key) =
                    upstream(doc, up).ok_or_else(|| err("names no configured upstream".into()))?;
                match key.strip_prefix("AUTH_") {
                    // An `auth` table the variables make is theirs together: its errors
                    // (a key its kind does not take, a secret that cannot be read)
                    // name them all.
                    Some(key) => {
                        let all = format!("{}*", &var[..var.len() - key.len()]);
                        (table_in(upstream, "auth", || overlay.span(&all)), key)
                    }
                    None => (Some(upstream), key),
                }
            }
            None => match rest.split_once('_') {
                Some((section, key)) if SECTIONS.contains(&&*section.to_ascii_lowercase()) => {
                    let all = format!("FERRY_{section}_*");
                    let section = section.to_ascii_lowercase();
                    (table_in(doc, &section, || overlay.span(&all)), key)
                }
                _ => return Err(err("not a Ferry setting".into())),
            },
        };
        let table = table.ok_or_else(|| err("the file's table for it is not a table".into()))?;
        let key = key.to_ascii_lowercase();
        let value = match TYPED.iter().find(|(k, _)| *k == key).map(|(_, t)| *t) {
            None => DeValue::String(Cow::Borrowed(value.as_str())),
            Some(Type::Count) => DeValue::parse(value)
                .ok()
                .map(Spanned::into_inner)
                .filter(|v| v.is_integer() && value.parse::<u64>().is_ok())
                .ok_or_else(|| err(format!("`{value}` is not a count")))?,
            Some(Type::Bool) => DeValue::Boolean(
                value
                    .parse::<bool>()
                    .map_err(|_| err(format!("`{value}` is not true or false")))?,
            ),
            Some(Type::List) => DeValue::Array(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|h| !h.is_empty())
                    .map(|h| Spanned::new(span.clone(), DeValue::String(Cow::Borrowed(h))))
                    .collect::<DeArray>(),
            ),
        };
        table.insert(
            Spanned::new(span.clone(), Cow::Owned(key)),
            Spanned::new(span, value),
        );
    }
    Ok(overlay)
}

/// The `[[upstream]]` table whose name `up` starts with, and the rest of `up` (the key).
fn upstream<'d, 'i>(
    doc: &'d mut DeTable<'i>,
    up: &'d str,
) -> Option<(&'d mut DeTable<'i>, &'d str)> {
    let DeValue::Array(upstreams) = doc.get_mut("upstream")?.get_mut() else {
        return None;
    };
    for u in upstreams.iter_mut() {
        let DeValue::Table(t) = u.get_mut() else {
            continue;
        };
        let Some(name) = t.get("name").and_then(|n| n.get_ref().as_str()) else {
            continue;
        };
        let prefix = env_name(name) + "_";
        if let Some(key) = up.strip_prefix(&prefix) {
            return Some((t, key));
        }
    }
    None
}

/// The table `name` in `parent`, made (with a span from `span`) if the file has none;
/// `None` if the file has a value of another type there.
fn table_in<'d, 'i>(
    parent: &'d mut DeTable<'i>,
    name: &str,
    span: impl FnOnce() -> Range<usize>,
) -> Option<&'d mut DeTable<'i>> {
    if !parent.contains_key(name) {
        let span = span();
        parent.insert(
            Spanned::new(span.clone(), Cow::Owned(name.to_string())),
            Spanned::new(span, DeValue::Table(DeTable::new())),
        );
    }
    let value = parent.get_mut(name)?;
    match value.get_mut() {
        DeValue::Table(t) => Some(t),
        _ => None,
    }
}

/// An upstream's name as it appears in variable names.
fn env_name(upstream: &str) -> String {
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

    #[test]
    fn env_errors_name_the_variable() {
        let var = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        let e = parse_with("", &var("FERRY_SERVER_LISTEN", "nope"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("environment variable FERRY_SERVER_LISTEN: server.listen"),
            "{e}"
        );
        // A key the schema does not have is refused by the schema, naming both.
        let e = parse_with("", &var("FERRY_SERVER_BOGUS", "1"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("environment variable FERRY_SERVER_BOGUS") && e.contains("`bogus`"),
            "{e}"
        );
        let e = parse_with("", &var("FERRY_RULE_X", "1"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("FERRY_RULE_X") && e.contains("not a Ferry setting"),
            "{e}"
        );
        let e = parse_with("", &var("FERRY_UPSTREAM_T_INSECURE_SKIP_VERIFY", "yes"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("FERRY_UPSTREAM_T_INSECURE_SKIP_VERIFY") && e.contains("true or false"),
            "{e}"
        );
        // An auth table the variables make: a key its kind does not take.
        let env = [
            ("FERRY_UPSTREAM_T_AUTH_KIND", "bearer"),
            ("FERRY_UPSTREAM_T_AUTH_USERNAME", "u"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let e = parse_with("", &env).unwrap_err().to_string();
        assert!(
            e.contains("FERRY_UPSTREAM_T_AUTH_*") && e.contains("`username`"),
            "{e}"
        );
        // The file's own values keep their lines beside variables.
        let e = parse_with(
            "[server]\nlisten = \"nope\"\n",
            &var("FERRY_SERVER_IDLE_TIMEOUT", "5s"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("test.toml:2:"), "{e}");
    }
}
