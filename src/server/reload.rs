//! Reloading a running server's configuration, on SIGHUP and when the config file's
//! content changes (checked every [`POLL`]; a change is acted on once the file has
//! stayed the same for one poll, so a file written in pieces is read whole).
//!
//! A reload validates the whole file as `ferry serve` would. An invalid one is
//! refused with one error naming the file, the line and the reason, and the running
//! configuration stays in force. A valid one replaces the upstreams (their clients,
//! see [`Proxy::reconfigure`]), the cache rules, the access policy and the secrets files
//! named; connections and fetches in flight are not touched. What only a new process
//! can change (listen addresses, the store, the TLS files' paths, quotas, pins) is
//! named in a warning and otherwise left as it runs.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use sha2::Digest as _;

use super::signals::ConfigSource;
use crate::access::Gate;
use crate::config::Config;
use crate::filestamp::{self, FileStamp};
use crate::proxy::Proxy;

/// How often the config file is looked at.
pub const POLL: Duration = Duration::from_secs(2);

/// What the file held when it was last read: its stamp and a hash of its content.
#[derive(Clone, Copy)]
struct Seen {
    stamp: Option<FileStamp>,
    hash: Option<[u8; 32]>,
}

/// Reads the file once: its stamp, content hash and text (or why it cannot be read).
fn read(path: &Path) -> (Seen, Result<String, String>) {
    let stamp = filestamp::of(path);
    match std::fs::read(path) {
        Ok(bytes) => {
            let hash = sha2::Sha256::digest(&bytes).into();
            let text = String::from_utf8(bytes)
                .map_err(|_| format!("{}: the config file is not UTF-8 text", path.display()));
            (
                Seen {
                    stamp,
                    hash: Some(hash),
                },
                text,
            )
        }
        Err(e) => (
            Seen { stamp, hash: None },
            Err(format!(
                "{}: cannot read the config file: {e}",
                path.display()
            )),
        ),
    }
}

/// The reload task's state.
pub struct Reloader {
    source: Option<ConfigSource>,
    /// The configuration in force; what needs a restart stays as the process started.
    running: Arc<ArcSwap<Config>>,
    proxy: Arc<Proxy>,
    access: Arc<Gate>,
}

impl Reloader {
    pub fn new(
        source: Option<ConfigSource>,
        running: Arc<ArcSwap<Config>>,
        proxy: Arc<Proxy>,
        access: Arc<Gate>,
    ) -> Reloader {
        Reloader {
            source,
            running,
            proxy,
            access,
        }
    }

    /// Reloads on every request from `requests` and on every change of the file, until
    /// dropped.
    pub async fn run(self, mut requests: BoxStream<'static, ()>) {
        let Some(source) = self.source.clone() else {
            while requests.next().await.is_some() {
                tracing::info!(
                    "SIGHUP: nothing to reload: ferry serve runs on the built-in configuration (give it --config FILE)"
                );
            }
            return;
        };
        let path = source.path.clone();
        // The file as it was read at startup, near enough: a change is what differs.
        let mut seen = look(&path).await;
        let mut last_stamp = seen.stamp;
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                Some(()) = requests.next() => {
                    seen = self.reload(&source, "SIGHUP").await;
                    last_stamp = seen.stamp;
                }
                _ = tick.tick() => {
                    let now = filestamp::of(&path);
                    if now != last_stamp {
                        // Changing still, maybe: look again next time.
                        last_stamp = now;
                        continue;
                    }
                    if now == seen.stamp {
                        continue;
                    }
                    let now_seen = look(&path).await;
                    if now_seen.hash == seen.hash {
                        // Touched, same content.
                        seen = now_seen;
                        continue;
                    }
                    seen = self.reload(&source, "config file changed").await;
                    last_stamp = seen.stamp;
                }
            }
        }
    }

    /// Reads and applies the file; returns what it read, so the same content is not
    /// tried again.
    async fn reload(&self, source: &ConfigSource, trigger: &'static str) -> Seen {
        let src = source.clone();
        let (seen, loaded) = tokio::task::spawn_blocking(move || {
            let (seen, text) = read(&src.path);
            let config = text.and_then(|t| {
                Config::parse(&src.path.display().to_string(), &t, &src.env)
                    .map_err(|e| e.to_string())
            });
            (seen, config)
        })
        .await
        .unwrap_or_else(|e| {
            let unread = Seen {
                stamp: None,
                hash: None,
            };
            (unread, Err(format!("the config file was not read: {e}")))
        });
        match loaded {
            Ok(config) => self.apply(config, trigger),
            Err(e) => tracing::error!(
                trigger,
                error = %e,
                "configuration refused; the running configuration stays in force"
            ),
        }
        seen
    }

    fn apply(&self, new: Config, trigger: &'static str) {
        let running = self.running.load_full();
        let reloaded = match self.proxy.reconfigure(&new) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(
                    trigger,
                    error = %e,
                    "configuration refused; the running configuration stays in force"
                );
                return;
            }
        };
        for name in &reloaded.removed {
            self.proxy.metrics().forget_upstream(name);
        }
        self.access.replace(&new);
        let restart = needs_restart(&running, &new);
        if !restart.is_empty() {
            tracing::warn!(
                trigger,
                settings = %restart.join(", "),
                "changed in the config file, but needs a restart to take effect; the running value is kept"
            );
        }
        let users = new.access.htpasswd.as_ref().map_or(0, |h| h.users().len());
        let list = |v: &[String]| {
            if v.is_empty() {
                "-".to_string()
            } else {
                v.join(",")
            }
        };
        tracing::info!(
            trigger,
            upstreams_added = %list(&reloaded.added),
            upstreams_removed = %list(&reloaded.removed),
            upstreams_changed = %list(&reloaded.changed),
            upstreams_unchanged = reloaded.unchanged,
            rules = reloaded.rules,
            users,
            "configuration reloaded: {} upstreams ({} added, {} removed, {} changed), {} cache rules, {} users",
            new.upstreams.len(),
            reloaded.added.len(),
            reloaded.removed.len(),
            reloaded.changed.len(),
            reloaded.rules,
            users,
        );
        // The new file, with what takes effect only at start as it runs.
        let applied = Config {
            listen: running.listen,
            connections: running.connections,
            storage_root: running.storage_root.clone(),
            tls: running.tls.clone(),
            quota: running.quota,
            scrub_rate: running.scrub_rate,
            pins: running.pins.clone(),
            shared: running.shared.clone(),
            local_max_size: running.local_max_size,
            cluster: running.cluster.clone(),
            ..new
        };
        self.running.store(Arc::new(applied));
    }
}

/// The settings that differ between `running` and `new` but only take effect in a new
/// process.
fn needs_restart(running: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    if running.listen != new.listen {
        out.push("server.listen");
    }
    if running.connections != new.connections {
        out.push("server.header_read_timeout/idle_timeout/max_connections");
    }
    if running.storage_root != new.storage_root {
        out.push("storage.root");
    }
    if running.quota.max_size != new.quota.max_size {
        out.push("storage.max_size");
    }
    if running.quota.min_free != new.quota.min_free {
        out.push("storage.min_free");
    }
    if running.scrub_rate != new.scrub_rate {
        out.push("storage.scrub_rate");
    }
    if running.tls != new.tls {
        out.push("tls");
    }
    if running.pins != new.pins {
        out.push("pin");
    }
    if running.shared != new.shared {
        out.push("storage.shared");
    }
    if running.local_max_size != new.local_max_size {
        out.push("storage.local_max_size");
    }
    if running.cluster != new.cluster {
        out.push("cluster");
    }
    out
}

/// The file's stamp and content hash now (nothing, if that cannot be learned).
async fn look(path: &Path) -> Seen {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || read(&path).0)
        .await
        .unwrap_or(Seen {
            stamp: None,
            hash: None,
        })
}
