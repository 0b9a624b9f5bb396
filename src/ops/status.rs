//! `ferry status`: the offline readiness of a store ([`crate::proxy::Status`]), read
//! from the store itself when nothing runs on it, else asked of the Ferry that holds
//! it, over HTTP (`GET /_ferry/status`, the JSON the status page is built from).

use std::time::Duration;

use url::Url;

use crate::config::Config;
use crate::proxy::{Proxy, Status};

/// Where `ferry status` asks when given neither `--server` nor `--config`.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:5000/";

/// A status answer is a few hundred bytes per cached image; a bound keeps a wrong
/// server from filling memory.
const MAX_STATUS_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("cannot ask Ferry at {url}: {detail}")]
    Ask { url: String, detail: String },
    #[error(
        "the store at {store} is in use by another process, and no Ferry answers at the \
         config's listen address ({url}: {detail}); stop the process holding the store, or \
         pass --server with the running Ferry's URL"
    )]
    LockedAndNoServer {
        store: String,
        url: String,
        detail: String,
    },
    #[error("cannot read the store at {store}: {detail}")]
    Store { store: String, detail: String },
}

/// The status of the store `config` names: read directly, or, while a Ferry runs on
/// it (the store is locked), asked of that Ferry at the config's `listen` address.
pub async fn of_config(config: &Config) -> Result<Status, StatusError> {
    let store = config.storage_root.display().to_string();
    let read = |e: &dyn std::fmt::Display| StatusError::Store {
        store: store.clone(),
        detail: e.to_string(),
    };
    match ferry_storage::Store::open(&config.storage_root) {
        Ok(opened) => {
            let config = config.clone();
            tokio::task::spawn_blocking(move || {
                Proxy::new(&config, opened)
                    .map_err(|e| e.to_string())?
                    .status()
                    .map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| read(&e))?
            .map_err(|e| read(&e))
        }
        Err(e) if crate::ops::bundle::is_locked(&e) => {
            let url = super::listen_url(config.listen);
            ask(&url).await.map_err(|e| match e {
                StatusError::Ask { url, detail } => {
                    StatusError::LockedAndNoServer { store, url, detail }
                }
                other => other,
            })
        }
        Err(e) => Err(read(&e)),
    }
}

/// The status as the Ferry at `server` reports it.
pub async fn ask(server: &Url) -> Result<Status, StatusError> {
    let url = server.join("_ferry/status").map_err(|e| StatusError::Ask {
        url: server.to_string(),
        detail: e.to_string(),
    })?;
    let failed = |detail: String| StatusError::Ask {
        url: url.to_string(),
        detail,
    };
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| failed(e.to_string()))?;
    let mut resp = http
        .get(url.clone())
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| failed(e.to_string()))?;
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| failed(e.to_string()))? {
        if body.len() + chunk.len() > MAX_STATUS_BYTES {
            return Err(failed(format!(
                "answer larger than {MAX_STATUS_BYTES} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(|e| failed(format!("not a status answer ({e})")))
}
