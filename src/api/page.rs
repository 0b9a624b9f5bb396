//! `GET /`: a small read-only status page for a person: store use against the quota,
//! hit ratio, bytes saved, each upstream's state, the most pulled images and offline
//! readiness. Server-rendered HTML with inline CSS: no script, no external assets, so
//! it works at an air-gapped site. Every string from outside (image names, upstream
//! errors, paths) is escaped.

use std::fmt::{self, Display, Write as _};
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};

use crate::bytesize::Human;
use crate::proxy::{CacheStatus, Proxy, Status};

/// Rows of the most-pulled table.
const TOP_IMAGES: usize = 10;
/// Rows of the cached-images table; the rest are summed up.
const MAX_IMAGE_ROWS: usize = 100;

const STYLE: &str = "
body{font:15px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;background:#f4f6f8;color:#1d2430}
header{background:#17324d;color:#fff;padding:14px 28px;display:flex;align-items:baseline;gap:16px}
header h1{margin:0;font-size:22px}header span{opacity:.8;font-size:13px}
main{padding:20px 28px;max-width:1200px}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(240px,1fr));gap:14px;margin-bottom:22px}
.card{background:#fff;border-radius:8px;padding:14px 16px;box-shadow:0 1px 2px rgba(0,0,0,.08)}
.card h2{margin:0;font-size:13px;text-transform:uppercase;letter-spacing:.04em;color:#5b6677}
.big{font-size:28px;font-weight:600;margin:4px 0}.card p{margin:2px 0}
.muted{color:#5b6677;font-size:13px}
.bar{height:8px;background:#e3e8ee;border-radius:4px;overflow:hidden;margin:6px 0}
.bar span{display:block;height:100%;background:#2f7dd1}
section{background:#fff;border-radius:8px;padding:12px 16px;margin-bottom:16px;box-shadow:0 1px 2px rgba(0,0,0,.08)}
section h2{font-size:16px;margin:4px 0 8px}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:6px 8px;border-bottom:1px solid #e3e8ee;vertical-align:top}
th{font-size:12px;text-transform:uppercase;color:#5b6677}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.nowrap{white-space:nowrap}
.ok{color:#12813a;font-weight:600}.bad{color:#b3261e;font-weight:600}.warn{color:#9a6700;font-weight:600}
code{font-size:13px;overflow-wrap:anywhere}
";

/// `GET /`
pub async fn page(State(proxy): State<Arc<Proxy>>) -> Response {
    let p = proxy.clone();
    let status = tokio::task::spawn_blocking(move || p.status().map_err(|e| e.to_string()))
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
    if let Err(e) = &status {
        tracing::warn!(error = %e, "status page: offline readiness unavailable");
    }
    let available = {
        let p = proxy.clone();
        tokio::task::spawn_blocking(move || p.store().available_space().ok())
            .await
            .ok()
            .flatten()
    };
    let mut html = String::with_capacity(16 * 1024);
    // Writing into a String cannot fail.
    let _ = render(&mut html, &proxy, status.as_ref(), available);
    let mut resp = Html(html).into_response();
    resp.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    resp
}

fn render(
    out: &mut String,
    proxy: &Proxy,
    status: Result<&Status, &String>,
    available: Option<u64>,
) -> fmt::Result {
    let metrics = proxy.metrics();
    let now = humantime::format_rfc3339_seconds(SystemTime::now());
    write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <meta http-equiv=\"refresh\" content=\"30\"><title>Ferry status</title>\
         <style>{STYLE}</style></head><body><header><h1>Ferry</h1>\
         <span>pull-through registry cache · version {} · as of {now}</span></header><main>",
        Esc(env!("CARGO_PKG_VERSION"))
    )?;

    // The four headline cards.
    out.push_str("<div class=\"cards\">");
    let usage = proxy.store().blobs.usage();
    let (used, blobs) = (usage.bytes(), usage.blobs());
    write!(
        out,
        "<div class=\"card\"><h2>Store</h2><p class=\"big\">{}</p>",
        Human(used)
    )?;
    match metrics.store_max() {
        Some(max) => {
            let pct = used as f64 * 100.0 / max as f64;
            write!(
                out,
                "<p>of {} quota ({pct:.1}%)</p><div class=\"bar\"><span style=\"width:{:.1}%\"></span></div>",
                Human(max),
                pct.min(100.0)
            )?;
        }
        None => out.push_str("<p>no quota (max_size) set</p>"),
    }
    write!(out, "<p class=\"muted\">{blobs} blobs")?;
    if let Some(free) = available {
        write!(out, " · {} free on disk", Human(free))?;
    }
    out.push_str("</p></div>");

    let totals = metrics.cache_totals();
    let requests: u64 = totals.iter().map(|t| t.1).sum();
    let from_cache: u64 = totals
        .iter()
        .filter(|t| {
            matches!(
                t.0,
                CacheStatus::Hit
                    | CacheStatus::Shared
                    | CacheStatus::Peer
                    | CacheStatus::Stale
                    | CacheStatus::Offline
            )
        })
        .map(|t| t.1)
        .sum();
    out.push_str("<div class=\"card\"><h2>Hit ratio</h2>");
    if requests == 0 {
        out.push_str("<p class=\"big\">–</p><p>no manifest or blob requests yet</p>");
    } else {
        write!(
            out,
            "<p class=\"big\">{:.1}%</p><p>{from_cache} of {requests} manifest and blob requests served from the cache</p>",
            from_cache as f64 * 100.0 / requests as f64
        )?;
    }
    out.push_str("</div>");

    let served: u64 = totals.iter().map(|t| t.2).sum();
    let fetched: u64 = proxy
        .upstreams()
        .iter()
        .map(|u| u.metrics().fetched_total())
        .sum();
    write!(
        out,
        "<div class=\"card\"><h2>Bytes saved</h2><p class=\"big\">{}</p>\
         <p>{} served to clients, {} fetched from upstreams</p></div>",
        Human(served.saturating_sub(fetched)),
        Human(served),
        Human(fetched)
    )?;

    out.push_str("<div class=\"card\"><h2>Offline readiness</h2>");
    match status {
        Ok(s) => {
            let complete = s.images.iter().filter(|i| i.complete).count();
            let class = if complete == s.images.len() && s.pinned_incomplete.is_empty() {
                "ok"
            } else {
                "warn"
            };
            write!(
                out,
                "<p class=\"big {class}\">{complete} of {}</p><p>cached images complete: they pull with every upstream down</p>",
                s.images.len()
            )?;
            if !s.pinned_incomplete.is_empty() {
                write!(
                    out,
                    "<p class=\"bad\">{} pinned images incomplete</p>",
                    s.pinned_incomplete.len()
                )?;
            }
        }
        Err(e) => write!(
            out,
            "<p class=\"bad\">unavailable</p><p class=\"muted\">{}</p>",
            Esc(e)
        )?,
    }
    out.push_str("</div></div>");

    // Upstreams.
    out.push_str(
        "<section><h2>Upstreams</h2><table><tr><th>Upstream</th><th>Registry</th><th>State</th><th>Fetched</th><th>Last error</th></tr>",
    );
    for u in proxy.upstreams() {
        write!(
            out,
            "<tr><td>{}</td><td class=\"nowrap\"><code>{}</code></td>",
            Esc(u.name()),
            Esc(&u.config().registry)
        )?;
        match u.offline_since() {
            None => out.push_str("<td class=\"ok\">online</td>"),
            Some(since) => write!(
                out,
                "<td><span class=\"bad\">offline</span> <span class=\"muted\">since {}; serving from cache</span></td>",
                humantime::format_rfc3339_seconds(since)
            )?,
        }
        write!(
            out,
            "<td class=\"num\">{}</td>",
            Human(u.metrics().fetched_total())
        )?;
        match u.last_error() {
            None => out.push_str("<td class=\"muted\">none</td>"),
            Some((at, e)) => write!(
                out,
                "<td><span class=\"muted\">{}</span> {}</td>",
                humantime::format_rfc3339_seconds(at),
                Esc(&e)
            )?,
        }
        out.push_str("</tr>");
    }
    out.push_str("</table></section>");

    // Several replicas: the shared store's health and the replicas this one sees.
    if let Some(up) = proxy.shared_store_answers() {
        out.push_str("<section><h2>Replicas</h2><p>Shared store: ");
        out.push_str(if up {
            "<span class=\"ok\">answering</span>"
        } else {
            "<span class=\"bad\">failing</span> <span class=\"muted\">(resting; serving from this replica's store and the upstreams)</span>"
        });
        out.push_str("</p>");
        match proxy.peers() {
            None => out.push_str(
                "<p class=\"muted\">no [cluster]: misses are not sent to other replicas</p>",
            ),
            Some(peers) => {
                let others = peers.others();
                write!(
                    out,
                    "<table><tr><th>Replica</th><th>Peer address</th></tr><tr><td><code>{}</code> (this one)</td><td></td></tr>",
                    Esc(peers.id())
                )?;
                for m in others.iter() {
                    write!(
                        out,
                        "<tr><td><code>{}</code></td><td><code>{}</code></td></tr>",
                        Esc(&m.id),
                        m.addr
                    )?;
                }
                write!(
                    out,
                    "</table><p class=\"muted\">{} replicas answering on the peer port; each digest is fetched by one of them</p>",
                    others.len() + 1
                )?;
            }
        }
        out.push_str("</section>");
    }

    // Most pulled.
    out.push_str("<section><h2>Most pulled images</h2>");
    let top = metrics.most_pulled(TOP_IMAGES);
    if top.is_empty() {
        out.push_str("<p class=\"muted\">nothing pulled since Ferry started</p>");
    } else {
        out.push_str("<table><tr><th>Image</th><th class=\"num\">Manifest requests</th></tr>");
        for (image, n) in &top {
            write!(
                out,
                "<tr><td><code>{}</code></td><td class=\"num\">{n}</td></tr>",
                Esc(image)
            )?;
        }
        out.push_str("</table><p class=\"muted\">since Ferry started</p>");
    }
    out.push_str("</section>");

    // Cached images and their readiness.
    if let Ok(s) = status {
        out.push_str("<section><h2>Cached images</h2>");
        if s.images.is_empty() {
            out.push_str("<p class=\"muted\">the store holds no tagged image yet</p>");
        } else {
            out.push_str(
                "<table><tr><th>Image</th><th class=\"num\">Size</th><th>Offline</th></tr>",
            );
            for i in s.images.iter().take(MAX_IMAGE_ROWS) {
                let pinned = if i.pinned { " (pinned)" } else { "" };
                write!(
                    out,
                    "<tr><td><code>{}</code>{pinned}</td><td class=\"num\">{}</td>",
                    Esc(&i.image),
                    Human(i.total_bytes)
                )?;
                if i.complete {
                    out.push_str("<td class=\"ok\">complete</td></tr>");
                } else {
                    write!(
                        out,
                        "<td class=\"warn\">{} blobs missing ({})</td></tr>",
                        i.missing_blobs,
                        Human(i.missing_bytes)
                    )?;
                }
            }
            out.push_str("</table>");
            if s.images.len() > MAX_IMAGE_ROWS {
                write!(
                    out,
                    "<p class=\"muted\">and {} more (all in <a href=\"/_ferry/status\">/_ferry/status</a>)</p>",
                    s.images.len() - MAX_IMAGE_ROWS
                )?;
            }
        }
        for pin in &s.pinned_incomplete {
            write!(
                out,
                "<p class=\"bad\">pinned but incomplete: <code>{}</code></p>",
                Esc(pin)
            )?;
        }
        out.push_str("</section>");
    }
    out.push_str(
        "<p class=\"muted\">Machine-readable: <a href=\"/metrics\">/metrics</a> · \
         <a href=\"/_ferry/status\">/_ferry/status</a> · <a href=\"/readyz\">/readyz</a></p>\
         </main></body></html>\n",
    );
    Ok(())
}

/// Text escaped for HTML element content and quoted attribute values.
struct Esc<'a>(&'a str);

impl Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(i) = rest.find(['&', '<', '>', '"', '\'']) {
            f.write_str(&rest[..i])?;
            f.write_str(match rest.as_bytes()[i] {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                _ => "&#39;",
            })?;
            rest = &rest[i + 1..];
        }
        f.write_str(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            Esc("<img src=x onerror='a&b'>\"").to_string(),
            "&lt;img src=x onerror=&#39;a&amp;b&#39;&gt;&quot;"
        );
        assert_eq!(Esc("plain/repo:tag").to_string(), "plain/repo:tag");
        assert_eq!(Esc("ünïcode").to_string(), "ünïcode");
    }
}
