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
    /// the cases in which serving what the cache holds is the right fallback.
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
                let retry_after = headers
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
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
