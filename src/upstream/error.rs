use std::time::{Duration, SystemTime};

/// The longest `Retry-After` Ferry tells a client: an upstream asking for hours (or
/// sending nonsense) must not park a client's pull that long, and one more 429 after
/// a minute costs little.
pub const MAX_CLIENT_RETRY_AFTER: Duration = Duration::from_secs(60);

/// What went wrong talking to an upstream. Every variant names the upstream; none
/// carries a credential.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("upstream {upstream} is unreachable: {detail}")]
    Unreachable { upstream: String, detail: String },
    #[error("upstream {upstream} broke off its answer: {detail}")]
    BrokeOff { upstream: String, detail: String },
    #[error(
        "upstream {upstream} is offline (unreachable since {since}); Ferry serves what it has cached and probes it in the background"
    )]
    Offline { upstream: String, since: String },
    #[error("upstream {upstream} timed out: {detail}")]
    Timeout { upstream: String, detail: String },
    #[error("upstream {upstream} refused Ferry's credentials")]
    Unauthorized { upstream: String },
    #[error("upstream {upstream}: Ferry's Entra ID identity could not get a token: {detail}")]
    Credential { upstream: String, detail: String },
    #[error("upstream {upstream} denied access")]
    Denied { upstream: String },
    #[error("upstream {upstream} is rate-limiting Ferry")]
    TooManyRequests {
        upstream: String,
        /// The `Retry-After` Ferry passes on to its client: whole seconds, at least 1
        /// and at most [`MAX_CLIENT_RETRY_AFTER`], whatever the upstream sent.
        retry_after: Option<String>,
    },
    #[error("upstream {upstream} answered {status}")]
    Status { upstream: String, status: u16 },
    #[error("upstream {upstream} broke the protocol: {detail}")]
    Protocol { upstream: String, detail: String },
    #[error("upstream {upstream} sent a {what} over the {limit}-byte limit")]
    TooLarge {
        upstream: String,
        what: &'static str,
        limit: usize,
    },
    #[error("upstream {upstream} did not finish sending a {what} within {}", humantime::format_duration(*.deadline))]
    TooSlow {
        upstream: String,
        what: &'static str,
        deadline: std::time::Duration,
    },
    /// The upstream asked for Ferry's credentials somewhere they do not belong.
    #[error("upstream {upstream}: Ferry did not send its credentials to the token realm {detail}")]
    RealmRefused { upstream: String, detail: String },
}

impl Error {
    /// Whether the upstream could not be asked at all (as opposed to answering "no"):
    /// the cases in which serving what the cache holds is the right fallback. (Not
    /// what opens the circuit breaker: see [`Error::about_upstream`].)
    pub fn is_unavailable(&self) -> bool {
        match self {
            Error::Unreachable { .. }
            | Error::BrokeOff { .. }
            | Error::Timeout { .. }
            | Error::Offline { .. } => true,
            Error::Status { status, .. } => *status >= 500,
            _ => false,
        }
    }

    /// What this error says about the upstream as a whole (for the circuit breaker,
    /// see [`super::health`]), as opposed to about the one request that got it.
    pub(crate) fn about_upstream(&self) -> Evidence {
        match self {
            Error::Unreachable { .. } | Error::BrokeOff { .. } | Error::Timeout { .. } => {
                Evidence::Down
            }
            Error::Status { status, .. } if *status >= 500 => Evidence::Suspect,
            _ => Evidence::Up,
        }
    }

    /// The error an upstream's non-success status means.
    pub(crate) fn from_status(
        upstream: &str,
        status: http::StatusCode,
        headers: &http::HeaderMap,
    ) -> Error {
        let upstream = upstream.to_string();
        match status.as_u16() {
            401 => Error::Unauthorized { upstream },
            403 => Error::Denied { upstream },
            429 => {
                let asked = retry_after(headers, std::time::SystemTime::now());
                let retry_after = Some(client_retry_after(asked).as_secs().to_string());
                Error::TooManyRequests {
                    upstream,
                    retry_after,
                }
            }
            status => Error::Status { upstream, status },
        }
    }

    /// A body that failed mid-way: the upstream answered, then broke off.
    pub(crate) fn broke_off(upstream: &str, e: &reqwest::Error) -> Error {
        match Error::from_reqwest(upstream, e) {
            Error::Unreachable { upstream, detail } => Error::BrokeOff { upstream, detail },
            other => other,
        }
    }

    pub(crate) fn from_reqwest(upstream: &str, e: &reqwest::Error) -> Error {
        // reqwest's Display includes the URL, whose query may hold a credential (a
        // redirect's SAS signature): it is printed redacted. The source chain says why.
        let mut detail = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            detail.push_str(": ");
            detail.push_str(&s.to_string());
            source = s.source();
        }
        if let Some(url) = e.url() {
            detail = super::redact::in_text(&detail, url);
        }
        if e.is_timeout() {
            Error::Timeout {
                upstream: upstream.to_string(),
                detail,
            }
        } else {
            Error::Unreachable {
                upstream: upstream.to_string(),
                detail,
            }
        }
    }
}

/// What one failed request says about the upstream as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Evidence {
    /// It answered (even "no"): it is there.
    Up,
    /// It could not be reached, or broke off: counts toward the circuit breaker.
    Down,
    /// A 5xx: maybe the whole upstream, maybe only this request's path; a `/v2/`
    /// probe decides.
    Suspect,
}

/// The wait an answer's `Retry-After` asks for: delay-seconds or an HTTP date (RFC
/// 9110 §10.2.3; a date in the past asks for no wait). `None` when absent or
/// unreadable.
pub(crate) fn retry_after(headers: &http::HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The `Retry-After` Ferry passes on for an upstream's wish (`None`: it named none):
/// whole seconds, rounded up, between 1 and [`MAX_CLIENT_RETRY_AFTER`].
pub(crate) fn client_retry_after(asked: Option<Duration>) -> Duration {
    let asked = asked.unwrap_or(Duration::from_secs(1));
    let secs = asked
        .as_secs()
        .saturating_add(u64::from(asked.subsec_nanos() > 0));
    Duration::from_secs(secs).clamp(Duration::from_secs(1), MAX_CLIENT_RETRY_AFTER)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::RETRY_AFTER;

    fn with(value: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(RETRY_AFTER, value.parse().unwrap());
        h
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let now = httpdate::parse_http_date("Mon, 07 Dec 2026 20:00:00 GMT").unwrap();
        assert_eq!(retry_after(&http::HeaderMap::new(), now), None);
        assert_eq!(retry_after(&with("7"), now), Some(Duration::from_secs(7)));
        assert_eq!(
            retry_after(&with("Mon, 07 Dec 2026 20:00:30 GMT"), now),
            Some(Duration::from_secs(30))
        );
        // RFC 850 and asctime forms are HTTP dates too.
        assert_eq!(
            retry_after(&with("Monday, 07-Dec-26 20:01:00 GMT"), now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            retry_after(&with("Mon, 07 Dec 2026 19:00:00 GMT"), now),
            Some(Duration::ZERO),
            "a date in the past asks for no wait"
        );
        assert_eq!(retry_after(&with("-5"), now), None);
        assert_eq!(retry_after(&with("soon"), now), None);
    }

    #[test]
    fn clients_are_told_a_sane_wait() {
        let secs = |s: u64| Some(Duration::from_secs(s));
        assert_eq!(client_retry_after(None), Duration::from_secs(1));
        assert_eq!(client_retry_after(secs(0)), Duration::from_secs(1));
        assert_eq!(client_retry_after(secs(7)), Duration::from_secs(7));
        assert_eq!(
            client_retry_after(Some(Duration::from_millis(2_100))),
            Duration::from_secs(3)
        );
        assert_eq!(client_retry_after(secs(99_999)), MAX_CLIENT_RETRY_AFTER);
        assert_eq!(client_retry_after(secs(u64::MAX)), MAX_CLIENT_RETRY_AFTER);
        assert_eq!(
            client_retry_after(Some(Duration::MAX)),
            MAX_CLIENT_RETRY_AFTER
        );
    }
}
