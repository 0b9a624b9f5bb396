//! Swapping in the upstreams and cache rules of a new configuration.
//!
//! An upstream whose settings did not change keeps its client, so its tokens, its
//! connection pool and its health (an open circuit included) carry over. A changed
//! one gets a new client; requests routed before the swap, and the fetches they
//! started, finish on the old one.

use std::sync::Arc;

use super::{Proxy, Settings};
use crate::cache_rules::CacheRules;
use crate::config::{self, Config};
use crate::upstream;

/// What a reconfiguration changed, by upstream name.
#[derive(Debug, Default)]
pub struct Reconfigured {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Given a new client: URL, credentials, timeouts, trust, pins of addresses...
    pub changed: Vec<String>,
    /// Kept with their clients.
    pub unchanged: usize,
    pub rules: usize,
}

impl Proxy {
    /// Routes requests by `config` from now on. Every new client is built before
    /// anything is swapped: on an error the running settings stay whole.
    pub fn reconfigure(&self, config: &Config) -> Result<Reconfigured, upstream::Error> {
        let old = self.settings.load_full();
        let mut done = Reconfigured {
            rules: config.rules.len(),
            ..Reconfigured::default()
        };
        let mut upstreams = Vec::with_capacity(config.upstreams.len());
        for u in &config.upstreams {
            let running = old.upstreams.iter().find(|c| c.name() == u.name);
            match running {
                Some(c) if serves_alike(c.config(), u) => {
                    done.unchanged += 1;
                    upstreams.push(c.clone());
                    continue;
                }
                Some(_) => done.changed.push(u.name.clone()),
                None => done.added.push(u.name.clone()),
            }
            upstreams.push(Arc::new(upstream::Client::new(u.clone(), &self.metrics)?));
        }
        done.removed = old
            .upstreams
            .iter()
            .filter(|c| !config.upstreams.iter().any(|u| u.name == c.name()))
            .map(|c| c.name().to_string())
            .collect();
        self.settings.store(Arc::new(Settings {
            upstreams,
            rules: CacheRules::new(config.rules.clone()),
        }));
        Ok(done)
    }
}

/// Whether a client built for `running` serves `new`: everything but the anonymous
/// access patterns (the access policy's business, not the client's) is the same.
fn serves_alike(running: &config::Upstream, new: &config::Upstream) -> bool {
    let mut new = new.clone();
    new.anonymous = running.anonymous.clone();
    *running == new
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::parse("t", text, &[]).unwrap()
    }

    const A: &str = "[[upstream]]\nname = \"a\"\nurl = \"https://a.example\"\n";
    const B: &str = "[[upstream]]\nname = \"b\"\nurl = \"https://b.example\"\n";

    #[test]
    fn keeps_unchanged_clients_and_swaps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let store = ferry_storage::Store::open(dir.path()).unwrap();
        let proxy = Proxy::new(&config(&format!("{A}{B}")), store).unwrap();
        let before = proxy.upstreams();
        // An old request's target, holding its client across the reload.
        let held = proxy.route(&"a/team/app".parse().unwrap(), None).unwrap();

        let c = "[[upstream]]\nname = \"c\"\nurl = \"https://c.example\"\n[[rule]]\nname = \"r\"\nsource = \"mirror.example/*\"\ntarget = \"x/*\"\nupstream = \"c\"\n";
        let new = format!(
            "{}deny = [\"secret/*\"]\n{}{c}",
            A,
            B.replace("b.example", "b2.example")
        );
        let done = proxy.reconfigure(&config(&new)).unwrap();
        assert_eq!(done.added, ["c"]);
        assert_eq!(done.changed, ["b"]);
        assert!(done.removed.is_empty());
        assert_eq!((done.unchanged, done.rules), (1, 1));
        let after = proxy.upstreams();
        assert!(
            Arc::ptr_eq(&before[0], &after[0]),
            "a changed only its access patterns: same client"
        );
        assert!(!Arc::ptr_eq(&before[1], &after[1]));
        assert_eq!(after[1].config().url.as_str(), "https://b2.example/");
        let routed = proxy
            .route(&"mirror.example/app".parse().unwrap(), None)
            .unwrap();
        assert_eq!(
            (routed.upstream.name(), routed.repo.name.as_str()),
            ("c", "x/app")
        );
        assert_eq!(held.upstream.name(), "a");

        let done = proxy.reconfigure(&config(A)).unwrap();
        assert_eq!(done.removed, ["b", "c"]);
        assert!(proxy.route(&"b/app".parse().unwrap(), None).is_err());
    }
}
