//! Tag lists. Ferry fetches the upstream's whole list (following the upstream's own
//! pages), keeps only names that are tags, stores it in place of the one before, and
//! answers every request from that list with [`page`]: sorted, `n` and `last` applied,
//! a `Link` to the next page. Upstreams that ignore `n` and `last` or do not sort
//! (Distribution 2.8) are answered for as the spec requires, and the same request gets
//! the same answer online and offline.

use std::collections::BTreeSet;

use http::{HeaderMap, Method, StatusCode};

use ferry_oci::Tag;

use super::{CacheStatus, Error, Proxy, Result, Target, served_from_cache};

/// One page of an upstream's tag list may be this large; a bigger answer is refused.
const MAX_PAGE_BYTES: usize = 4 * 1024 * 1024;
/// A repository may have this many tags; a longer list is refused, not truncated
/// (a truncated list would answer wrongly forever after).
const MAX_TAGS: usize = 100_000;
/// An upstream that paginates may take this many requests to list a repository.
const MAX_PAGES: usize = 1_000;

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
        let (all, cache, warning) = match self.upstream_tags(t).await {
            Ok(all) => (all, CacheStatus::Miss, None),
            Err(Error::Upstream(e)) if e.is_unavailable() => {
                let Some(kept) = self.kept_tags(t)? else {
                    return Err(Error::Upstream(e));
                };
                tracing::debug!(upstream = t.upstream.name(), repo = %t.repo.name, error = %e, "answering tag list from cache");
                (
                    kept,
                    CacheStatus::for_unavailable(&e),
                    Some(served_from_cache(t)),
                )
            }
            Err(e) => return Err(e),
        };
        let (tags, next) = page(all, n, last);
        Ok(TagList {
            tags,
            next,
            cache,
            warning,
        })
    }

    /// What the cache can list for `t` offline: the upstream's last list when it gave
    /// one (the answer it gave online, so offline answers the same), else the tags
    /// pulled through Ferry, `None` when it knows neither.
    fn kept_tags(&self, t: &Target) -> Result<Option<Vec<Tag>>> {
        let index = &self.store.index;
        if let Some(listed) = index.listed_tags(&t.repo)? {
            return Ok(Some(listed));
        }
        let pulled: Vec<Tag> = index
            .known_tags(&t.repo)?
            .iter()
            .filter_map(|name| name.parse().ok())
            .collect();
        Ok((!pulled.is_empty()).then_some(pulled))
    }

    /// The upstream's whole tag list for `t` (every page), checked and stored.
    async fn upstream_tags(&self, t: &Target) -> Result<Vec<Tag>> {
        let up = &t.upstream;
        let mut tags = BTreeSet::new();
        let mut not_tags = 0usize;
        let mut from: Option<(String, String)> = None;
        for pages in 1.. {
            let query: Vec<(&str, &str)> = match &from {
                Some((n, last)) => vec![("n", n.as_str()), ("last", last.as_str())],
                None => Vec::new(),
            };
            let resp = up
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
                    upstream: up.name().to_string(),
                    repo: t.repo.name.to_string(),
                });
            }
            let next = resp
                .headers()
                .get(http::header::LINK)
                .and_then(|v| v.to_str().ok())
                .and_then(next_page);
            let body = up.read_body(resp, "tag list", MAX_PAGE_BYTES).await?;
            #[derive(serde::Deserialize)]
            struct Answer {
                tags: Option<Vec<String>>,
            }
            let answer: Answer =
                serde_json::from_slice(&body).map_err(|_| up.protocol("tag list is not JSON"))?;
            let before = tags.len();
            for name in answer.tags.unwrap_or_default() {
                match name.parse::<Tag>() {
                    Ok(tag) => {
                        tags.insert(tag);
                    }
                    Err(_) => not_tags += 1,
                }
            }
            if tags.len() > MAX_TAGS {
                return Err(up
                    .protocol(&format!("tag list of more than {MAX_TAGS} tags"))
                    .into());
            }
            // A page that adds nothing ends the walk, so an upstream whose pages
            // loop cannot keep Ferry asking.
            match next {
                Some((n, last)) if tags.len() > before => {
                    if pages == MAX_PAGES {
                        return Err(up
                            .protocol(&format!("tag list of more than {MAX_PAGES} pages"))
                            .into());
                    }
                    from = Some((n.to_string(), last));
                }
                _ => break,
            }
        }
        if not_tags > 0 {
            tracing::warn!(upstream = up.name(), repo = %t.repo.name, not_tags, "upstream listed names that are not tags; left out");
        }
        let tags: Vec<Tag> = tags.into_iter().collect();
        let (repo, kept) = (t.repo.clone(), tags.clone());
        self.blocking(move |store| store.index.set_listed_tags(&repo, &kept))
            .await?;
        Ok(tags)
    }
}

/// The page of `all` a request for `n` tags after `last` gets, and the `n`/`last` of
/// the next page when more follow. Tags are served in lexical (byte) order.
fn page(
    mut all: Vec<Tag>,
    n: Option<usize>,
    last: Option<&str>,
) -> (Vec<String>, Option<(usize, String)>) {
    all.sort();
    all.dedup();
    let start = last.map_or(0, |l| all.partition_point(|t| t.as_str() <= l));
    let rest = all[start..].iter().map(|t| t.as_str().to_string());
    match n {
        Some(0) => (Vec::new(), None),
        Some(n) if all.len() - start > n => {
            let tags: Vec<String> = rest.take(n).collect();
            let next = tags.last().map(|l| (n, l.clone()));
            (tags, next)
        }
        _ => (rest.collect(), None),
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

    #[test]
    fn pages_are_sorted_and_cut_after_last() {
        let tags = |names: &[&str]| {
            names
                .iter()
                .map(|n| n.parse().unwrap())
                .collect::<Vec<Tag>>()
        };
        let all = tags(&["v2", "a", "v10", "B", "a"]);
        assert_eq!(
            page(all.clone(), None, None),
            (
                vec!["B".into(), "a".into(), "v10".into(), "v2".into()],
                None
            )
        );
        assert_eq!(
            page(all.clone(), Some(2), None),
            (vec!["B".into(), "a".into()], Some((2, "a".into())))
        );
        assert_eq!(
            page(all.clone(), Some(2), Some("a")),
            (vec!["v10".into(), "v2".into()], None)
        );
        assert_eq!(page(all.clone(), Some(2), Some("v2")), (vec![], None));
        assert_eq!(page(all.clone(), Some(0), None), (vec![], None));
        assert_eq!(
            page(all, None, Some("b")),
            (vec!["v10".into(), "v2".into()], None)
        );
    }
}
