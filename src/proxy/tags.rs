//! Tag lists: proxied, remembered, and answered from what the cache knows when the
//! upstream cannot be asked.

use futures_util::StreamExt;
use http::{HeaderMap, Method, StatusCode};

use super::{CacheStatus, Error, Proxy, Result, Target, served_from_cache};

/// Tag lists are small; a bigger answer is not one.
const MAX_TAG_LIST: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct TagList {
    pub tags: Vec<String>,
    /// The `n`/`last` of the next page when there is one.
    pub next: Option<(usize, String)>,
    pub cache: CacheStatus,
    pub warning: Option<String>,
}

impl Proxy {
    pub async fn tags(&self, t: &Target, n: Option<usize>, last: Option<&str>) -> Result<TagList> {
        match self.upstream_tags(t, n, last).await {
            Ok(list) => Ok(list),
            Err(Error::Upstream(e)) if e.is_unavailable() => {
                let known = self.store.index.known_tags(&t.repo)?;
                if known.is_empty() {
                    return Err(Error::Upstream(e));
                }
                tracing::debug!(upstream = t.upstream.name(), repo = %t.repo.name, error = %e, "answering tag list from cache");
                let mut tags: Vec<String> = known
                    .into_iter()
                    .filter(|tag| last.is_none_or(|l| tag.as_str() > l))
                    .collect();
                let mut next = None;
                if let Some(n) = n
                    && tags.len() > n
                {
                    tags.truncate(n);
                    next = tags.last().map(|l| (n, l.clone()));
                }
                Ok(TagList {
                    tags,
                    next,
                    cache: CacheStatus::for_unavailable(&e),
                    warning: Some(served_from_cache(t)),
                })
            }
            Err(e) => Err(e),
        }
    }

    async fn upstream_tags(
        &self,
        t: &Target,
        n: Option<usize>,
        last: Option<&str>,
    ) -> Result<TagList> {
        let n_text = n.map(|n| n.to_string());
        let mut query = Vec::new();
        if let Some(n) = &n_text {
            query.push(("n", n.as_str()));
        }
        if let Some(last) = last {
            query.push(("last", last));
        }
        let resp = t
            .upstream
            .send(
                Method::GET,
                &t.repo.name,
                "tags/list",
                &query,
                HeaderMap::new(),
            )
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Err(Error::RepoUnknown {
                upstream: t.upstream.name().to_string(),
                repo: t.repo.name.to_string(),
            });
        }
        let next = resp
            .headers()
            .get(http::header::LINK)
            .and_then(|v| v.to_str().ok())
            .and_then(next_page);
        let mut body = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| t.upstream.body_error(&e))?;
            if body.len() + chunk.len() > MAX_TAG_LIST {
                return Err(t.upstream.protocol("tag list too large").into());
            }
            body.extend_from_slice(&chunk);
        }
        #[derive(serde::Deserialize)]
        struct Answer {
            tags: Option<Vec<String>>,
        }
        let answer: Answer = serde_json::from_slice(&body)
            .map_err(|_| t.upstream.protocol("tag list is not JSON"))?;
        let tags = answer.tags.unwrap_or_default();
        self.store.index.add_listed_tags(&t.repo, &tags)?;
        Ok(TagList {
            tags,
            next,
            cache: CacheStatus::Miss,
            warning: None,
        })
    }
}

/// The `n` and `last` of a `Link: <…?n=2&last=b>; rel="next"` header.
fn next_page(link: &str) -> Option<(usize, String)> {
    let (target, params) = link.split_once(';')?;
    if !params.replace(' ', "").contains("rel=\"next\"") {
        return None;
    }
    let target = target.trim().trim_start_matches('<').trim_end_matches('>');
    let url = url::Url::parse("http://upstream.invalid")
        .ok()?
        .join(target)
        .ok()?;
    let mut n = None;
    let mut last = None;
    for (k, v) in url.query_pairs() {
        match &*k {
            "n" => n = v.parse().ok(),
            "last" => last = Some(v.into_owned()),
            _ => {}
        }
    }
    Some((n.unwrap_or(100), last?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_link_headers() {
        assert_eq!(
            next_page(r#"</v2/r/tags/list?last=b&n=2>; rel="next""#),
            Some((2, "b".into()))
        );
        assert_eq!(
            next_page(r#"</v2/r/tags/list?last=v1&n=2&orderby=>; rel="next""#),
            Some((2, "v1".into()))
        );
        assert_eq!(next_page(r#"</x>; rel="prev""#), None);
    }
}
