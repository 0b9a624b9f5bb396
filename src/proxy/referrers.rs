//! The referrers API: proxied to upstreams that have it, and built from the
//! tag-schema fallback (`<alg>-<hex>` tag holding an index) for those that do not.

use bytes::Bytes;
use http::header::ACCEPT;
use http::{HeaderMap, HeaderValue, Method, StatusCode};

use ferry_oci::manifest::{MAX_MANIFEST_SIZE, Manifest, OCI_INDEX};
use ferry_oci::{Digest, Reference, Tag};

use super::{CacheStatus, Error, Proxy, Result, Target, served_from_cache};
use crate::oci::Accept;

#[derive(Debug, Clone)]
pub struct Referrers {
    /// An OCI image index listing the referrers.
    pub index: Bytes,
    /// Whether an `artifactType` filter was applied.
    pub filtered: bool,
    pub cache: CacheStatus,
    pub warning: Option<String>,
}

impl Proxy {
    /// The referrers of `subject`. Every answer got online (an empty one included) is
    /// kept, so the same query gets the same answer while the upstream is down.
    pub async fn referrers(
        &self,
        t: &Target,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Referrers> {
        let online = match self.upstream_referrers(t, subject, artifact_type).await {
            Ok(Some(r)) => Ok(r),
            Ok(None) => self.fallback_referrers(t, subject, artifact_type).await,
            Err(e) => Err(e),
        };
        let e = match online {
            Err(Error::Upstream(e)) if e.is_unavailable() => e,
            answered => return answered,
        };
        if let Some(index) = self.stored_referrers(t, subject, artifact_type)? {
            tracing::debug!(upstream = t.upstream.name(), repo = %t.repo.name, %subject, error = %e, "answering referrers from cache");
            return Ok(Referrers {
                index,
                filtered: artifact_type.is_some(),
                cache: CacheStatus::for_unavailable(&e),
                warning: Some(served_from_cache(t)),
            });
        }
        // Perhaps the fallback tag is cached.
        match self.fallback_referrers(t, subject, artifact_type).await {
            Err(Error::Upstream(_)) => Err(Error::Upstream(e)),
            r => r,
        }
    }

    /// The answer kept for this query: kept as asked, or filtered from the kept
    /// unfiltered answer.
    fn stored_referrers(
        &self,
        t: &Target,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Option<Bytes>> {
        let index = &self.store.index;
        if artifact_type.is_some()
            && let Some(kept) = index.referrers(&t.repo, subject, artifact_type)?
        {
            return Ok(Some(Bytes::from(kept)));
        }
        Ok(index
            .referrers(&t.repo, subject, None)?
            .map(|all| filter(&all, artifact_type)))
    }

    /// The upstream's referrers API answer, `None` if it has no such API (404).
    async fn upstream_referrers(
        &self,
        t: &Target,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Option<Referrers>> {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static(OCI_INDEX));
        let query: Vec<(&str, &str)> = artifact_type
            .map(|a| ("artifactType", a))
            .into_iter()
            .collect();
        let resp = t
            .upstream
            .send(
                Method::GET,
                &t.repo.name,
                &format!("referrers/{subject}"),
                &query,
                headers,
            )
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let upstream_filtered = resp
            .headers()
            .get("oci-filters-applied")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|f| f.trim() == "artifactType"));
        let body = t
            .upstream
            .read_body(resp, "referrers index", MAX_MANIFEST_SIZE)
            .await?;
        if let Err(reason) = Manifest::check(Some(OCI_INDEX), &body) {
            return Err(t
                .upstream
                .protocol(&format!("referrers answer is not an image index: {reason}"))
                .into());
        }
        let index = if upstream_filtered {
            // Only this query's answer: kept under its filter.
            self.store
                .index
                .set_referrers(&t.repo, subject, artifact_type, &body)?;
            body
        } else {
            self.store
                .index
                .set_referrers(&t.repo, subject, None, &body)?;
            match artifact_type {
                Some(_) => filter(&body, artifact_type),
                None => body,
            }
        };
        Ok(Some(Referrers {
            index,
            filtered: artifact_type.is_some(),
            cache: CacheStatus::Miss,
            warning: None,
        }))
    }

    async fn fallback_referrers(
        &self,
        t: &Target,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Referrers> {
        let tag = Reference::Tag(Tag::referrers_fallback(subject));
        match self
            .manifest(t, &tag, &Accept::of(&[OCI_INDEX]), true)
            .await
        {
            Ok(m) => {
                let all = filter(&m.bytes, None);
                self.store
                    .index
                    .set_referrers(&t.repo, subject, None, &all)?;
                Ok(Referrers {
                    index: filter(&all, artifact_type),
                    filtered: artifact_type.is_some(),
                    cache: m.cache,
                    warning: m.warning,
                })
            }
            // No fallback tag: no referrers, and that answer is kept too.
            Err(Error::ManifestUnknown { .. }) => {
                let none = filter(b"", None);
                self.store
                    .index
                    .set_referrers(&t.repo, subject, None, &none)?;
                Ok(Referrers {
                    index: none,
                    filtered: artifact_type.is_some(),
                    cache: CacheStatus::Miss,
                    warning: None,
                })
            }
            Err(e) => Err(e),
        }
    }
}

/// A referrers index holding the descriptors of `index` (any image index JSON)
/// whose `artifactType` matches, or all of them. Unreadable input gives an empty list.
fn filter(index: &[u8], artifact_type: Option<&str>) -> Bytes {
    let manifests: Vec<serde_json::Value> = serde_json::from_slice::<serde_json::Value>(index)
        .ok()
        .and_then(|v| v.get("manifests").and_then(|m| m.as_array()).cloned())
        .unwrap_or_default()
        .into_iter()
        .filter(|d| {
            artifact_type.is_none_or(|a| d.get("artifactType").and_then(|t| t.as_str()) == Some(a))
        })
        .collect();
    let out = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": manifests,
    });
    Bytes::from(serde_json::to_vec(&out).expect("JSON serializes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_by_artifact_type() {
        let idx = br#"{"schemaVersion":2,"manifests":[{"digest":"a","artifactType":"x"},{"digest":"b","artifactType":"y"}]}"#;
        let v: serde_json::Value = serde_json::from_slice(&filter(idx, Some("y"))).unwrap();
        assert_eq!(v["manifests"].as_array().unwrap().len(), 1);
        assert_eq!(v["manifests"][0]["digest"], "b");
        let v: serde_json::Value = serde_json::from_slice(&filter(b"", None)).unwrap();
        assert_eq!(v["manifests"].as_array().unwrap().len(), 0);
        assert_eq!(v["mediaType"], OCI_INDEX);
    }
}
