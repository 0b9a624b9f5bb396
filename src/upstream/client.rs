//! The HTTP client for one upstream registry.

use http::header::{AUTHORIZATION, LOCATION, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use url::Url;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::Error;
use super::acr::Exchange;
use super::auth::Authenticator;
use super::body;
use super::entra;
use super::error::{Evidence, retry_after};
use super::health::Health;
use crate::config;
use crate::metrics::{Metrics, UpstreamErrorKind, UpstreamMetrics};
use ferry_oci::RepoName;

/// Registries chain a redirect or two (login server → data endpoint → storage).
const MAX_REDIRECTS: usize = 5;
/// A request rate-limited (429) is retried at most this many times, and only while
/// the waits it asks for add up to no more than [`MAX_RATE_LIMIT_WAIT`]; then the 429
/// is passed on to the client (with a `Retry-After` it can use), which has its own
/// backoff. A client's request thus never hangs on an upstream's rate limit.
const MAX_RATE_LIMIT_RETRIES: u32 = 3;
const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(15);

/// An upstream's answer: 2xx, or 404 (which callers turn into their own "unknown").
pub type Response = reqwest::Response;

pub struct Client {
    config: config::Upstream,
    http: reqwest::Client,
    auth: Arc<Authenticator>,
    health: Arc<Health>,
    /// 429 answers seen, for the log.
    rate_limited: AtomicU64,
    metrics: UpstreamMetrics,
    /// The last failure and when, for the status page.
    last_error: Mutex<Option<(SystemTime, String)>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("name", &self.config.name)
            .finish_non_exhaustive()
    }
}

/// How Ferry reaches a service over HTTP: an upstream registry, or the shared store.
pub struct Reach<'a> {
    /// Fixed addresses for host names; TLS still verifies against the names.
    pub resolve: &'a [(String, IpAddr)],
    /// Extra CA certificates (PEM) to trust.
    pub ca_pem: Option<&'a [u8]>,
    /// An explicit HTTP(S) proxy; without one, `HTTPS_PROXY`/`NO_PROXY` apply.
    pub proxy: Option<&'a Url>,
    pub connect_timeout: Duration,
    /// How long the service may stay silent in the middle of an answer.
    pub read_timeout: Duration,
}

/// The HTTP client every outbound connection of Ferry is made with: `reach`'s pins,
/// CAs and proxy, redirects left to the caller (to control where credentials go),
/// and no name resolving to a link-local address. On error, which key is wrong.
pub fn http_builder(reach: Reach<'_>) -> Result<reqwest::ClientBuilder, String> {
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(reach.connect_timeout)
        .read_timeout(reach.read_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(Arc::new(NoLinkLocal))
        .pool_idle_timeout(Duration::from_secs(90));
    for (host, ip) in reach.resolve {
        // Port 0: keep the URL's port. TLS still checks the certificate for `host`.
        builder = builder.resolve(host, SocketAddr::new(*ip, 0));
    }
    if let Some(pem) = reach.ca_pem {
        let certs =
            reqwest::Certificate::from_pem_bundle(pem).map_err(|e| format!("ca_file: {e}"))?;
        builder = builder.tls_certs_merge(certs);
    }
    if let Some(proxy) = reach.proxy {
        // Cloud metadata endpoints (Azure's and AWS's managed identities, ECS and EKS
        // Pod Identity credentials) answer only on the node itself: never through
        // the proxy. No other request goes to a link-local address (`NoLinkLocal`).
        let metadata =
            reqwest::NoProxy::from_string("169.254.0.0/16,fe80::/10,fd00:ec2::254,fd00:ec2::23");
        let proxy = reqwest::Proxy::all(proxy.as_str()).map_err(|e| format!("proxy: {e}"))?;
        builder = builder.proxy(proxy.no_proxy(metadata));
    }
    Ok(builder)
}

impl Client {
    pub fn new(config: config::Upstream, metrics: &Metrics) -> Result<Client, Error> {
        let metrics = metrics.upstream(&config.name);
        let setup = |detail: String| Error::Protocol {
            upstream: config.name.clone(),
            detail,
        };
        let mut builder = http_builder(Reach {
            resolve: &config.resolve,
            ca_pem: config.ca_pem.as_deref(),
            proxy: config.proxy.as_ref(),
            connect_timeout: config.connect_timeout,
            read_timeout: config.read_timeout,
        })
        .map_err(setup)?;
        if config.insecure_skip_verify {
            tracing::warn!(upstream = %config.name, "TLS certificate verification is DISABLED for this upstream (insecure_skip_verify)");
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
        let http = builder
            .build()
            .map_err(|e| Error::from_reqwest(&config.name, &e))?;
        let acr = match &config.auth {
            config::Auth::Entra(entra) => {
                let credential = entra::credential(entra, http.clone())
                    .map_err(|e| setup(format!("Entra ID credential: {e}")))?;
                Some(Exchange::new(&config.name, credential))
            }
            _ => None,
        };
        let auth = Arc::new(Authenticator::new(&config, acr, metrics.clone()));
        let health = Health::new(&config.name, config.offline_after_failures, metrics.clone());
        Ok(Client {
            config,
            http,
            auth,
            health,
            rate_limited: AtomicU64::new(0),
            metrics,
            last_error: Mutex::new(None),
        })
    }

    pub fn metrics(&self) -> &UpstreamMetrics {
        &self.metrics
    }

    /// When the upstream went offline, if it counts as offline now.
    pub fn offline_since(&self) -> Option<SystemTime> {
        self.health.offline_since()
    }

    /// The last failure talking to the upstream, and when.
    pub fn last_error(&self) -> Option<(SystemTime, String)> {
        self.last_error.lock().expect("last error lock").clone()
    }

    /// Counts a failure for the metrics and the status page.
    fn note_error(&self, e: &Error) {
        let kind = match e {
            // Not asked at all: the circuit is open, `ferry_upstream_up` says so.
            Error::Offline { .. } => return,
            Error::Unreachable { .. } | Error::BrokeOff { .. } => UpstreamErrorKind::Unreachable,
            Error::Timeout { .. } => UpstreamErrorKind::Timeout,
            Error::Unauthorized { .. } | Error::Credential { .. } | Error::RealmRefused { .. } => {
                UpstreamErrorKind::Auth
            }
            Error::Denied { .. } | Error::TooManyRequests { .. } | Error::Status { .. } => {
                UpstreamErrorKind::Status
            }
            Error::Protocol { .. } | Error::TooLarge { .. } | Error::TooSlow { .. } => {
                UpstreamErrorKind::Other
            }
        };
        self.note(kind, e.to_string());
    }

    fn note(&self, kind: UpstreamErrorKind, message: String) {
        self.metrics.error(kind);
        *self.last_error.lock().expect("last error lock") = Some((SystemTime::now(), message));
    }

    /// Counts bytes from this upstream that did not match their digest.
    pub fn note_digest_mismatch(&self, digest: &ferry_oci::Digest) {
        self.note(
            UpstreamErrorKind::Digest,
            format!(
                "upstream {} sent bytes that do not match {digest}",
                self.name()
            ),
        );
    }

    pub fn config(&self) -> &config::Upstream {
        &self.config
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Sends `method /v2/<repo>/<path>` with pull credentials for `repo`, retrying
    /// once after a 401 with whatever the challenge asks for. Returns 2xx and 404
    /// answers; every other status becomes an [`Error`]. While the upstream is
    /// offline, fails at once with [`Error::Offline`] instead of waiting on it.
    pub async fn send(
        &self,
        method: Method,
        repo: &RepoName,
        path: &str,
        query: &[(&str, &str)],
        headers: HeaderMap,
    ) -> Result<Response, Error> {
        self.send_within(None, method, repo, path, query, headers)
            .await
    }

    /// [`Client::send`], giving up after `deadline` (counted as the upstream failing):
    /// for requests a client is waiting on that the cache could answer instead.
    pub async fn send_within(
        &self,
        deadline: Option<Duration>,
        method: Method,
        repo: &RepoName,
        path: &str,
        query: &[(&str, &str)],
        headers: HeaderMap,
    ) -> Result<Response, Error> {
        if let Some(since) = self.health.offline_since() {
            return Err(Error::Offline {
                upstream: self.config.name.clone(),
                since: humantime::format_rfc3339_seconds(since).to_string(),
            });
        }
        let started = Instant::now();
        let attempt = self.send_authenticated(method, repo, path, query, headers);
        let result = match deadline {
            None => attempt.await,
            Some(d) => tokio::time::timeout(d, attempt).await.unwrap_or_else(|_| {
                Err(Error::Timeout {
                    upstream: self.config.name.clone(),
                    detail: format!("no answer within {}", humantime::format_duration(d)),
                })
            }),
        };
        self.metrics.answered_after(started.elapsed());
        if let Err(e) = &result {
            self.note_error(e);
        }
        match result.as_ref().map_err(Error::about_upstream) {
            Err(Evidence::Down) => {
                if self.health.record_failure() {
                    self.health.spawn_probe(
                        self.http.clone(),
                        self.config.url.clone(),
                        self.config.connect_timeout,
                    );
                }
            }
            // Maybe this request's own error (any client can provoke a 500): the
            // circuit opens only if `/v2/` fails too.
            Err(Evidence::Suspect) => {
                self.health
                    .confirm_server_error(
                        self.http.clone(),
                        self.config.url.clone(),
                        self.config.connect_timeout,
                    )
                    .await
            }
            // Any answer, even a refusal, means the upstream is there.
            Ok(_) | Err(Evidence::Up) => self.health.record_success(),
        }
        result
    }

    async fn send_authenticated(
        &self,
        method: Method,
        repo: &RepoName,
        path: &str,
        query: &[(&str, &str)],
        headers: HeaderMap,
    ) -> Result<Response, Error> {
        let mut url = self.config.url.clone();
        {
            let mut segs = url
                .path_segments_mut()
                .map_err(|_| self.protocol("base URL cannot hold a path"))?;
            segs.pop_if_empty().push("v2");
            segs.extend(repo.as_str().split('/'));
            segs.extend(path.split('/'));
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let scope = format!("repository:{repo}:pull");
        let mut authz = self.auth.authorization(&self.http, &scope).await?;
        let mut retried = false;
        let mut rate_limited = 0;
        let mut waited = Duration::ZERO;
        loop {
            let resp = self
                .send_following_redirects(&method, &url, &headers, authz.as_ref())
                .await?;
            if resp.status() == StatusCode::UNAUTHORIZED && !retried {
                retried = true;
                let challenge = resp
                    .headers()
                    .get(WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok());
                if let Some(next) = self
                    .auth
                    .on_unauthorized(&self.http, challenge, &scope, authz.as_ref())
                    .await?
                {
                    authz = Some(next);
                    continue;
                }
            }
            if resp.status() == StatusCode::TOO_MANY_REQUESTS
                && let Some(wait) = rate_limit_wait(
                    rate_limited,
                    waited,
                    retry_after(resp.headers(), SystemTime::now()),
                )
            {
                rate_limited += 1;
                waited += wait;
                let total = self.rate_limited.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!(
                    upstream = %self.config.name, %repo, path, retry = rate_limited, wait_secs = wait.as_secs_f64(),
                    rate_limited_total = total, "upstream answered 429; waiting Retry-After, then retrying"
                );
                tokio::time::sleep(wait).await;
                continue;
            }
            return self.classify(resp);
        }
    }

    async fn send_following_redirects(
        &self,
        method: &Method,
        url: &Url,
        headers: &HeaderMap,
        authz: Option<&HeaderValue>,
    ) -> Result<Response, Error> {
        let origin = url.origin();
        let mut url = url.clone();
        for _ in 0..=MAX_REDIRECTS {
            let mut req = self
                .http
                .request(method.clone(), url.clone())
                .headers(headers.clone());
            // Credentials go only to the registry's own origin: a redirect target on
            // another host (a storage account, a CDN) never sees them.
            if let Some(a) = authz
                && url.origin() == origin
            {
                req = req.header(AUTHORIZATION, a.clone());
            }
            let resp = req
                .send()
                .await
                .map_err(|e| Error::from_reqwest(&self.config.name, &e))?;
            if resp.status().is_redirection()
                && let Some(loc) = resp.headers().get(LOCATION)
            {
                let loc = loc
                    .to_str()
                    .map_err(|_| self.protocol("redirect Location is not text"))?;
                let next = url
                    .join(loc)
                    .map_err(|_| self.protocol("redirect Location is not a URL"))?;
                if let Err(why) = redirect_allowed(&url, &next) {
                    tracing::warn!(upstream = %self.config.name, host = next.host_str().unwrap_or(""), why, "refused an upstream's redirect");
                    return Err(self.protocol(&format!(
                        "refused its redirect to {}: {why}",
                        next.host_str().unwrap_or("(no host)")
                    )));
                }
                url = next;
                tracing::debug!(upstream = %self.config.name, host = url.host_str().unwrap_or(""), "following redirect");
                continue;
            }
            return Ok(resp);
        }
        Err(self.protocol("too many redirects"))
    }

    fn classify(&self, resp: Response) -> Result<Response, Error> {
        match resp.status().as_u16() {
            200..=299 | 404 => Ok(resp),
            _ => Err(Error::from_status(
                &self.config.name,
                resp.status(),
                resp.headers(),
            )),
        }
    }

    pub fn protocol(&self, detail: &str) -> Error {
        Error::Protocol {
            upstream: self.config.name.clone(),
            detail: detail.to_string(),
        }
    }

    /// Reads a body Ferry buffers (see [`body`]), counting its bytes as fetched and
    /// its failure as this upstream's.
    pub async fn read_body(
        &self,
        resp: Response,
        what: &'static str,
        limit: usize,
    ) -> Result<bytes::Bytes, Error> {
        let bound = body::Bound {
            what,
            limit,
            deadline: self.config.read_timeout,
        };
        let read = body::read(&self.config.name, resp, bound, |n| {
            self.metrics.fetched(n as u64)
        })
        .await;
        if let Err(e) = &read {
            self.note_error(e);
        }
        read
    }

    /// Maps (and counts) an error reading a response body.
    pub fn body_error(&self, e: &reqwest::Error) -> Error {
        let e = Error::broke_off(&self.config.name, e);
        self.note_error(&e);
        e
    }
}

/// Whether an upstream's redirect from `from` may be followed to `to`. Redirects to
/// other origins are normal (registry.k8s.io sends every request, manifests included,
/// to regional backends; ACR sends blobs to storage), but an upstream must not make
/// Ferry fetch what it could not fetch itself: nothing but HTTP(S), no step down from
/// https to plain http (anyone on the path could then answer), and no link-local
/// address (169.254.0.0/16, fe80::/10), where cloud metadata endpoints
/// (169.254.169.254) hand out the host's credentials.
fn redirect_allowed(from: &Url, to: &Url) -> Result<(), &'static str> {
    match to.scheme() {
        "https" => {}
        "http" if from.scheme() == "https" => return Err("a step down from https to plain http"),
        "http" => {}
        _ => return Err("not an HTTP URL"),
    }
    // A name that resolves to such an address is refused by [`NoLinkLocal`].
    let link_local = match to.host() {
        Some(url::Host::Ipv4(ip)) => is_link_local(ip.into()),
        Some(url::Host::Ipv6(ip)) => is_link_local(ip.into()),
        Some(url::Host::Domain(_)) => false,
        None => return Err("no host"),
    };
    if link_local {
        return Err("a link-local address (where cloud metadata endpoints answer)");
    }
    Ok(())
}

/// 169.254.0.0/16 and fe80::/10 (an IPv4 one mapped into IPv6 included).
fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => {
            (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_link_local())
        }
    }
}

/// The system's name resolution, minus link-local addresses: a redirect to a name
/// that resolves to a metadata endpoint (`metadata.google.internal`) gets no further
/// than one to its address. The operator's own `resolve` entries apply on top,
/// unfiltered (reqwest consults them first).
struct NoLinkLocal;

impl reqwest::dns::Resolve for NoLinkLocal {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| !is_link_local(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(format!(
                    "{host} resolves to no address but link-local ones, which Ferry refuses"
                )
                .into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// How long to wait before retrying a request rate-limited for the `retries + 1`th
/// time, having waited `waited` already, when the upstream asks for `asked` (`None`:
/// it did not say, one second); `None`: do not retry, pass the 429 on.
fn rate_limit_wait(retries: u32, waited: Duration, asked: Option<Duration>) -> Option<Duration> {
    let wait = asked.unwrap_or(Duration::from_secs(1));
    (retries < MAX_RATE_LIMIT_RETRIES && waited.saturating_add(wait) <= MAX_RATE_LIMIT_WAIT)
        .then_some(wait)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_with_a_private_ca_pins_and_a_proxy() {
        let ca =
            rcgen::generate_simple_self_signed(vec!["contoso.azurecr.io".to_string()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.cert.pem()).unwrap();
        let text = format!(
            "[[upstream]]\nname = \"acr\"\nurl = \"https://contoso.azurecr.io\"\nca_file = \"{}\"\nproxy = \"http://127.0.0.1:3128\"\nresolve = {{ \"contoso.azurecr.io\" = \"127.0.0.1\" }}\n",
            ca_file.display()
        );
        let config = config::Config::parse("t", &text, &[]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(ferry_storage::Store::open(dir.path()).unwrap());
        Client::new(config.upstreams[0].clone(), &Metrics::new(store)).unwrap();
    }

    /// With an explicit proxy, a request to a metadata endpoint (a link-local address)
    /// is not sent to the proxy; any other is.
    #[tokio::test]
    async fn metadata_endpoints_bypass_the_proxy() {
        let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}", proxy.local_addr().unwrap())).unwrap();
        let http = http_builder(Reach {
            resolve: &[],
            ca_pem: None,
            proxy: Some(&url),
            connect_timeout: Duration::from_millis(300),
            read_timeout: Duration::from_millis(300),
        })
        .unwrap()
        .build()
        .unwrap();
        let proxied = async |target: &str| {
            let request = http.get(target).send();
            let accepted = tokio::time::timeout(Duration::from_secs(1), proxy.accept());
            let (_, accepted) = tokio::join!(request, accepted);
            accepted.is_ok()
        };
        assert!(proxied("http://example.test/").await);
        assert!(!proxied("http://169.254.169.254/metadata/identity/oauth2/token").await);
        assert!(!proxied("http://169.254.170.2/v2/credentials").await);
    }

    #[test]
    fn redirects_never_step_down_nor_go_link_local() {
        let allowed = |from: &str, to: &str| {
            redirect_allowed(&Url::parse(from).unwrap(), &Url::parse(to).unwrap())
        };
        // Cross-origin redirects keep working (registry.k8s.io, ACR's data endpoints).
        assert_eq!(
            allowed(
                "https://registry.k8s.io/v2/pause/manifests/3.10",
                "https://us-west1-docker.pkg.dev/v2/k8s-artifacts-prod/images/pause/manifests/3.10"
            ),
            Ok(())
        );
        assert_eq!(
            allowed("http://127.0.0.1:5000/v2/", "http://127.0.0.2:6000/data"),
            Ok(())
        );
        assert_eq!(
            allowed("http://127.0.0.1:5000/v2/", "https://storage.example/data"),
            Ok(())
        );
        for to in ["http://storage.example/data", "http://127.0.0.1:5000/v2/"] {
            assert!(allowed("https://registry.example/v2/", to).is_err(), "{to}");
        }
        for to in [
            "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
            "https://169.254.169.254/metadata/identity/oauth2/token",
            // The same address spelled as one number, as the URL standard reads it.
            "http://2852039166/latest/meta-data/",
            "http://[fe80::a9fe:a9fe]/",
            "http://[febf::1]:8080/",
            "http://[::ffff:169.254.169.254]/",
        ] {
            assert!(allowed("http://registry.example/v2/", to).is_err(), "{to}");
        }
        assert_eq!(
            allowed("http://registry.example/v2/", "http://[fec0::1]/"),
            Ok(())
        );
        assert!(allowed("https://registry.example/v2/", "file:///etc/passwd").is_err());
    }

    #[tokio::test]
    async fn names_resolving_only_to_link_local_addresses_are_refused() {
        use reqwest::dns::Resolve as _;
        let resolve = |name: &str| NoLinkLocal.resolve(name.parse().unwrap());
        // getaddrinfo answers a numeric name with itself: the filter at work.
        assert!(resolve("169.254.169.254").await.is_err());
        let local: Vec<SocketAddr> = resolve("127.0.0.1").await.unwrap().collect();
        assert_eq!(local, vec![SocketAddr::from(([127, 0, 0, 1], 0))]);
    }

    #[test]
    fn rate_limit_waits_are_bounded_in_count_and_total() {
        let s = Duration::from_secs;
        assert_eq!(rate_limit_wait(0, s(0), None), Some(s(1)));
        assert_eq!(rate_limit_wait(0, s(0), Some(s(7))), Some(s(7)));
        assert_eq!(rate_limit_wait(1, s(7), Some(s(7))), Some(s(7)));
        assert_eq!(rate_limit_wait(2, s(14), Some(s(7))), None, "past 15 s");
        assert_eq!(rate_limit_wait(0, s(0), Some(s(99_999))), None);
        assert_eq!(rate_limit_wait(0, s(0), Some(Duration::MAX)), None);
        assert_eq!(rate_limit_wait(3, s(0), Some(s(0))), None, "three retries");
        assert_eq!(rate_limit_wait(2, s(0), Some(s(0))), Some(s(0)));
    }
}
