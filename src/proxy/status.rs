//! Offline readiness: for every cached image, whether everything it needs is in the
//! store (per platform for an index), how much is missing, and which pinned images
//! are incomplete — the answer to "what breaks if the link drops?" before it drops.

use ferry_oci::manifest::{self, Manifest};
use ferry_oci::{Digest, Reference};
use serde::{Deserialize, Serialize};

use super::{Proxy, Result};

#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    pub images: Vec<ImageStatus>,
    /// Pinned images not completely in the store (or not at all).
    pub pinned_incomplete: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ImageStatus {
    /// `<registry>/<repository>:<tag>`, as nodes name it; every command takes it back
    /// as an [`crate::oci::ImageName`], which routes to this image's repository.
    pub image: String,
    pub upstream: String,
    pub digest: String,
    pub media_type: String,
    pub pinned: bool,
    pub complete: bool,
    /// For an index, one entry per platform; for a single manifest, one entry.
    pub platforms: Vec<PlatformStatus>,
    pub missing_blobs: usize,
    pub missing_bytes: u64,
    pub total_bytes: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PlatformStatus {
    /// `os/architecture[/variant]`, or empty when the manifest does not say.
    pub platform: String,
    pub digest: String,
    /// Whether the platform's manifest is stored; if not, its blobs are unknown.
    pub manifest_cached: bool,
    pub complete: bool,
    pub missing_blobs: usize,
    pub missing_bytes: u64,
    pub total_bytes: u64,
}

impl Proxy {
    /// The readiness of everything tagged in the store, and of the pinned images.
    pub fn status(&self) -> Result<Status> {
        let mut images = Vec::new();
        let upstreams = self.upstreams();
        for entry in self.store.index.scan_tags()? {
            let Ok(e) = entry.value else { continue };
            let registry = upstreams
                .iter()
                .find(|u| u.name() == e.repo.upstream)
                .map_or(e.repo.upstream.clone(), |u| u.config().registry.clone());
            let platforms = match self.store.blobs.read(&e.record.digest)? {
                None => vec![missing_manifest("", &e.record.digest, 0)],
                Some(bytes) => self.platforms(&bytes, &e.record.digest)?,
            };
            let pinned = self.is_pinned(&e.record.digest, &[(e.repo.clone(), e.tag.clone())]);
            images.push((
                e.repo.clone(),
                e.tag.clone(),
                ImageStatus {
                    image: format!("{registry}/{}:{}", e.repo.name, e.tag),
                    upstream: e.repo.upstream.clone(),
                    digest: e.record.digest.to_string(),
                    media_type: e.record.media_type.clone(),
                    pinned,
                    complete: platforms.iter().all(|p| p.complete),
                    missing_blobs: platforms.iter().map(|p| p.missing_blobs).sum(),
                    missing_bytes: platforms.iter().map(|p| p.missing_bytes).sum(),
                    total_bytes: platforms.iter().map(|p| p.total_bytes).sum(),
                    platforms,
                },
            ));
        }
        let pinned_incomplete = self
            .pins
            .iter()
            .flat_map(|p| &p.images)
            .filter(|pin| {
                let Ok(t) = self.route_image(pin) else {
                    return true;
                };
                !images.iter().any(|(repo, tag, i)| {
                    *repo == t.repo
                        && i.complete
                        && match &pin.reference_or_latest() {
                            Reference::Tag(want) => tag == want,
                            Reference::Digest(d) => i.digest == d.as_str(),
                        }
                })
            })
            .map(|pin| pin.to_string())
            .collect();
        let mut images: Vec<ImageStatus> = images.into_iter().map(|(_, _, i)| i).collect();
        images.sort_by(|a, b| a.image.cmp(&b.image));
        Ok(Status {
            images,
            pinned_incomplete,
        })
    }

    /// Per-platform readiness of the manifest `bytes` (digest `d`).
    fn platforms(&self, bytes: &[u8], d: &Digest) -> Result<Vec<PlatformStatus>> {
        let m = Manifest::read(bytes).ok();
        let Some(Manifest::Index(_)) = &m else {
            return self.blobs_of("", d, m.as_ref()).map(|p| vec![p]);
        };
        let mut out = Vec::new();
        for child in m.iter().flat_map(Manifest::children) {
            let Ok(cd) = manifest::digest(child) else {
                continue;
            };
            let platform = child
                .platform()
                .as_ref()
                .map(manifest::platform_label)
                .unwrap_or_else(|| "/".to_string());
            out.push(match self.store.blobs.read(&cd)? {
                None => missing_manifest(&platform, &cd, child.size()),
                Some(b) => self.blobs_of(&platform, &cd, Manifest::read(&b).ok().as_ref())?,
            });
        }
        Ok(out)
    }

    /// Readiness of one image manifest (`None`: unreadable): its config and layers.
    fn blobs_of(
        &self,
        platform: &str,
        d: &Digest,
        manifest: Option<&Manifest>,
    ) -> Result<PlatformStatus> {
        let (mut missing_blobs, mut missing_bytes, mut total_bytes) = (0, 0, 0);
        for desc in manifest.into_iter().flat_map(Manifest::blobs) {
            let size = desc.size();
            total_bytes += size;
            let stored = match manifest::digest(desc) {
                Ok(bd) => self.store.blobs.stat(&bd)?.is_some(),
                Err(_) => false,
            };
            if !stored {
                missing_blobs += 1;
                missing_bytes += size;
            }
        }
        Ok(PlatformStatus {
            platform: platform.to_string(),
            digest: d.to_string(),
            manifest_cached: true,
            complete: missing_blobs == 0,
            missing_blobs,
            missing_bytes,
            total_bytes,
        })
    }
}

impl Status {
    /// A human summary: one line per image, its incomplete platforms, then the pins.
    pub fn render(&self) -> String {
        let mb = |b: u64| format!("{:.1} MB", b as f64 / 1e6);
        let mut out = String::new();
        for i in &self.images {
            let state = if i.complete {
                "complete  "
            } else {
                "INCOMPLETE"
            };
            let pin = if i.pinned { " (pinned)" } else { "" };
            out += &format!("{state} {}{pin}  {}\n", i.image, mb(i.total_bytes));
            for p in i.platforms.iter().filter(|p| !p.complete) {
                let name = if p.platform.is_empty() {
                    "image"
                } else {
                    p.platform.as_str()
                };
                if p.manifest_cached {
                    out += &format!(
                        "    {name}: {} blobs missing, {}\n",
                        p.missing_blobs,
                        mb(p.missing_bytes)
                    );
                } else {
                    out += &format!("    {name}: not cached\n");
                }
            }
        }
        let complete = self.images.iter().filter(|i| i.complete).count();
        out += &format!("{complete} of {} cached images complete", self.images.len());
        if self.pinned_incomplete.is_empty() {
            out += "; every pinned image complete\n";
        } else {
            out += &format!(
                "; pinned but incomplete: {}\n",
                self.pinned_incomplete.join(", ")
            );
        }
        out
    }
}

/// A platform whose manifest itself is not stored: all of it is missing.
fn missing_manifest(platform: &str, d: &Digest, size: u64) -> PlatformStatus {
    PlatformStatus {
        platform: platform.to_string(),
        digest: d.to_string(),
        manifest_cached: false,
        complete: false,
        missing_blobs: 1,
        missing_bytes: size,
        total_bytes: size,
    }
}
