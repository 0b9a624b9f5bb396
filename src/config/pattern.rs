//! Repository patterns and one principal's allow / deny lists of them, as the config
//! holds them; `access` decides with them.

use std::fmt;

/// A repository pattern: `*` matches within one path component, `**` any depth.
#[derive(Clone)]
pub struct Pattern {
    text: String,
    matcher: globset::GlobMatcher,
}

impl Pattern {
    pub fn parse(text: &str) -> Result<Pattern, String> {
        if text.is_empty() {
            return Err("an empty pattern matches nothing".into());
        }
        if text.starts_with('/') || text.ends_with('/') {
            return Err(format!("`{text}` may not start or end with `/`"));
        }
        let glob = globset::GlobBuilder::new(text)
            .literal_separator(true)
            .build()
            .map_err(|e| format!("`{text}` is not a pattern: {}", e.kind()))?;
        Ok(Pattern {
            text: text.to_string(),
            matcher: glob.compile_matcher(),
        })
    }

    fn matches(&self, name: &str) -> bool {
        self.matcher.is_match(name)
    }
}

/// Patterns are equal when they are written the same.
impl PartialEq for Pattern {
    fn eq(&self, other: &Pattern) -> bool {
        self.text == other.text
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.text)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// One principal's patterns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Permissions {
    /// `None`: everything not denied.
    pub allow: Option<Vec<Pattern>>,
    pub deny: Vec<Pattern>,
}

impl Permissions {
    /// Whether `name` is allowed: no deny matches and (no allow list, or one matches).
    pub fn permits(&self, name: &str) -> bool {
        !self.deny.iter().any(|p| p.matches(name))
            && self
                .allow
                .as_ref()
                .is_none_or(|a| a.iter().any(|p| p.matches(name)))
    }

    /// Whether these rules restrict anything.
    pub fn is_open(&self) -> bool {
        self.allow.is_none() && self.deny.is_empty()
    }

    /// `allow [..] deny [..]` for `ferry config check`.
    pub fn describe(&self) -> String {
        let list = |v: &[Pattern]| {
            v.iter()
                .map(|p| p.text.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let allow = match &self.allow {
            None => "everything".to_string(),
            Some(a) => list(a),
        };
        if self.deny.is_empty() {
            format!("allow {allow}")
        } else {
            format!("allow {allow}; deny {}", list(&self.deny))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(allow: Option<&[&str]>, deny: &[&str]) -> Permissions {
        Permissions {
            allow: allow.map(|a| a.iter().map(|p| Pattern::parse(p).unwrap()).collect()),
            deny: deny.iter().map(|p| Pattern::parse(p).unwrap()).collect(),
        }
    }

    #[test]
    fn patterns() {
        let r = rules(Some(&["library/*", "team/**"]), &["team/secret/**"]);
        assert!(r.permits("library/nginx"));
        assert!(!r.permits("library/x/y"), "* stays within one component");
        assert!(r.permits("team/a"));
        assert!(r.permits("team/a/b/c"));
        assert!(!r.permits("team/secret/app"), "deny wins");
        assert!(!r.permits("other/app"));
        let open = rules(None, &["private/*"]);
        assert!(open.permits("anything/at/all"));
        assert!(!open.permits("private/app"));
        let r = rules(Some(&["contoso.azurecr.io/aks-*/**"]), &[]);
        assert!(r.permits("contoso.azurecr.io/aks-managed-repository/oss/pause"));
        assert!(!r.permits("ghcr.io/aks-x/y"));
        assert!(Pattern::parse("").is_err());
        assert!(Pattern::parse("/x").is_err());
        assert!(Pattern::parse("a/[").is_err());
    }
}
