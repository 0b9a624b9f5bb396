//! Pulling whole images into the cache before they are needed: `ferry prefetch` and
//! the `[[pin]]` refresher.
//!
//! The prefetcher is a registry client of a Ferry — a running one, or one started
//! in-process on loopback (by `crate::prefetch_in_process`, which sits above both the
//! server and this client) — so content enters the store exactly as when a node pulls
//! it: verified, deduplicated, with tags recorded. It pulls every platform of an index
//! unless told one, and checks each blob's digest as it reads it.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use url::Url;

use ferry_oci::Digest;
use ferry_oci::manifest::{self, ALL_MANIFESTS, Manifest, is_index};

use crate::oci::{self, ImageName, Platform};

#[derive(Debug, thiserror::Error)]
pub enum PrefetchError {
    #[error("{image}: cannot reach Ferry at {url}: {detail}")]
    Unreachable {
        image: String,
        url: String,
        detail: String,
    },
    #[error("{image}: {url} answered {status}: {message}")]
    Status {
        image: String,
        url: String,
        status: u16,
        message: String,
    },
    #[error("{image}: {what} is not valid: {detail}")]
    Invalid {
        image: String,
        what: String,
        detail: String,
    },
    #[error("{image}: no manifest for platform {platform} in the index")]
    NoPlatform { image: String, platform: String },
    #[error("cannot start Ferry in-process: {0}")]
    Server(String),
}

/// Pulls `images` one after another through the Ferry at `base`; stops at the first
/// failure, which names the image.
pub async fn pull_all(
    prefetcher: &Prefetcher,
    images: &[ImageName],
    platform: Option<&Platform>,
) -> Result<Vec<Pulled>, PrefetchError> {
    let mut out = Vec::new();
    for image in images {
        out.push(prefetcher.pull(image, platform).await?);
    }
    Ok(out)
}

/// What one image's prefetch did.
#[derive(Debug, Clone)]
pub struct Pulled {
    pub image: String,
    pub manifests: usize,
    pub blobs: usize,
    pub bytes: u64,
    pub elapsed: Duration,
}

pub struct Prefetcher {
    http: reqwest::Client,
    base: Url,
    /// Progress bars on a terminal, log lines otherwise.
    bars: bool,
    /// Sent as a bearer token (Ferry's own pin refresher proving who it is).
    bearer: Option<crate::secret::Secret>,
}

/// A blob to fetch: digest and the size its descriptor declares.
struct Wanted {
    digest: Digest,
    size: u64,
}

impl Prefetcher {
    /// A prefetcher pulling through the Ferry at `base` (`http://127.0.0.1:5000`),
    /// showing progress bars if `bars` and standard error is a terminal.
    pub fn new(base: Url, bars: bool) -> Prefetcher {
        let http = reqwest::Client::builder()
            .user_agent(concat!("ferry-prefetch/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("a plain HTTP client builds");
        Prefetcher {
            http,
            base,
            bars: bars && std::io::stderr().is_terminal(),
            bearer: None,
        }
    }

    /// Authenticates every request with `token` as a bearer token.
    pub fn with_bearer(mut self, token: crate::secret::Secret) -> Prefetcher {
        self.bearer = Some(token);
        self
    }

    /// Pulls `image` (every platform, or only `platform`) into the Ferry's store.
    pub async fn pull(
        &self,
        image: &ImageName,
        platform: Option<&Platform>,
    ) -> Result<Pulled, PrefetchError> {
        let started = Instant::now();
        let label = image.to_string();
        let (top, top_type) = self
            .manifest(&label, image, &image.reference_or_latest().to_string())
            .await?;
        let mut manifests = 1;
        let mut wanted = Vec::new();
        let children = if is_index(&top_type) {
            let chosen: Vec<String> = top
                .children()
                .filter(|e| {
                    platform.is_none_or(|p| e.platform().as_ref().is_some_and(|ep| p.matches(ep)))
                })
                .map(|e| e.digest().to_string())
                .collect();
            if chosen.is_empty()
                && let Some(p) = platform
            {
                return Err(PrefetchError::NoPlatform {
                    image: label,
                    platform: format!("{}/{}", p.os, p.architecture),
                });
            }
            chosen
        } else {
            collect_blobs(&label, &top, &mut wanted)?;
            Vec::new()
        };
        for child in children {
            let (m, _) = self.manifest(&label, image, &child).await?;
            manifests += 1;
            collect_blobs(&label, &m, &mut wanted)?;
        }
        wanted.sort_by(|a, b| a.digest.cmp(&b.digest));
        wanted.dedup_by(|a, b| a.digest == b.digest);
        let total: u64 = wanted.iter().map(|w| w.size).sum();
        let progress = self.progress(&label, total);
        for w in &wanted {
            self.blob(&label, image, w, &progress).await?;
        }
        progress.finish_and_clear();
        let pulled = Pulled {
            image: label,
            manifests,
            blobs: wanted.len(),
            bytes: total,
            elapsed: started.elapsed(),
        };
        let rate = total as f64 / pulled.elapsed.as_secs_f64().max(0.001) / 1e6;
        tracing::info!(image = %pulled.image, manifests, blobs = pulled.blobs, bytes = total, secs = pulled.elapsed.as_secs_f64(), mb_per_s = format!("{rate:.1}"), "prefetched");
        Ok(pulled)
    }

    /// The URL of `image`'s manifest or blob at the Ferry: a registry the name starts
    /// with goes as the `ns` parameter (a host with a port is no path component), so
    /// Ferry routes the name exactly as a mirror request for it.
    fn url(&self, image: &ImageName, kind: &str, reference: &str) -> String {
        let mut url = format!("{}v2/{}/{kind}/{reference}", self.base, image.repo);
        if let Some(registry) = &image.registry {
            url += "?ns=";
            url.extend(url::form_urlencoded::byte_serialize(registry.as_bytes()));
        }
        url
    }

    async fn get(
        &self,
        label: &str,
        url: &str,
        accept: Option<&str>,
    ) -> Result<reqwest::Response, PrefetchError> {
        let mut req = self.http.get(url);
        if let Some(t) = &self.bearer {
            req = req.bearer_auth(t.expose());
        }
        if let Some(a) = accept {
            req = req.header(http::header::ACCEPT, a);
        }
        let resp = req.send().await.map_err(|e| PrefetchError::Unreachable {
            image: label.to_string(),
            url: self.base.to_string(),
            detail: e.to_string(),
        })?;
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            let body = resp.text().await.unwrap_or_default();
            let message = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["errors"][0]["message"].as_str().map(str::to_string))
                .unwrap_or(body);
            return Err(PrefetchError::Status {
                image: label.to_string(),
                url: url.to_string(),
                status,
                message,
            });
        }
        Ok(resp)
    }

    /// A manifest (parsed) and its media type.
    async fn manifest(
        &self,
        label: &str,
        image: &ImageName,
        reference: &str,
    ) -> Result<(Manifest, String), PrefetchError> {
        let url = self.url(image, "manifests", reference);
        let resp = self
            .get(label, &url, Some(&ALL_MANIFESTS.join(", ")))
            .await?;
        let media_type = resp
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| oci::media_type(v).to_string())
            .unwrap_or_default();
        let invalid = |detail: String| PrefetchError::Invalid {
            image: label.to_string(),
            what: format!("manifest {reference}"),
            detail,
        };
        let bytes = resp.bytes().await.map_err(|e| invalid(e.to_string()))?;
        if let Ok(d) = reference.parse::<Digest>()
            && !d.verify(&bytes)
        {
            return Err(invalid("bytes do not match its digest".into()));
        }
        let (media_type, manifest) =
            Manifest::check(Some(&media_type), &bytes).map_err(|e| invalid(e.to_string()))?;
        Ok((manifest, media_type.to_string()))
    }

    async fn blob(
        &self,
        label: &str,
        image: &ImageName,
        w: &Wanted,
        progress: &ProgressBar,
    ) -> Result<(), PrefetchError> {
        let url = self.url(image, "blobs", w.digest.as_str());
        let resp = self.get(label, &url, None).await?;
        let mut hasher = w.digest.algorithm().hasher();
        let mut body = resp.bytes_stream();
        let invalid = |detail: String| PrefetchError::Invalid {
            image: label.to_string(),
            what: format!("blob {}", w.digest),
            detail,
        };
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| invalid(format!("download broke: {e}")))?;
            hasher.update(&chunk);
            progress.inc(chunk.len() as u64);
        }
        if hasher.finish() != w.digest {
            return Err(invalid("bytes do not match its digest".into()));
        }
        Ok(())
    }

    fn progress(&self, label: &str, total: u64) -> ProgressBar {
        if !self.bars {
            tracing::info!(image = %label, bytes = total, "prefetching");
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_message(label.to_string());
        bar
    }
}

/// Adds a manifest's config and layers to `wanted`.
fn collect_blobs(
    label: &str,
    manifest: &Manifest,
    wanted: &mut Vec<Wanted>,
) -> Result<(), PrefetchError> {
    for d in manifest.blobs() {
        let digest = manifest::digest(d).map_err(|e| PrefetchError::Invalid {
            image: label.to_string(),
            what: "a descriptor".into(),
            detail: e.to_string(),
        })?;
        wanted.push(Wanted {
            digest,
            size: d.size(),
        });
    }
    Ok(())
}
