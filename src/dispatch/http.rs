//! The shared HTTP agent, request building, and outcome classification.

use std::collections::HashMap;
use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ureq::Agent;
use ureq::config::Config;
use ureq::http::Uri;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

use crate::destination::{DestinationPolicy, Refusal};
use crate::signing::{HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP};

/// Bytes of a response body read past the stored excerpt so the connection
/// can go back to the pool; a longer body closes the connection instead.
const DRAIN_LIMIT: u64 = 64 * 1024;

const USER_AGENT: &str = concat!("keyhook/", env!("CARGO_PKG_VERSION"));

/// Why an attempt failed, as stored in the delivery history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AttemptError {
    /// The receiver answered with a status that is not 2xx (see the status code).
    Status,
    /// No complete answer within the request timeout (a response whose
    /// body stalled after its status line included; the status is kept).
    Timeout,
    /// The connection could not be made (refused, reset, unreachable).
    Connect,
    /// The host name did not resolve.
    Dns,
    /// The dispatcher's destination policy refused the URL's scheme (a
    /// stored `http://` URL under a policy without
    /// [`allow_http`](crate::DestinationPolicy::allow_http)) or every
    /// address its host resolved to. No request was sent.
    DestinationRefused,
    /// TLS failed: the server's certificate was refused (unknown issuer,
    /// expired, wrong name) or the handshake broke down (the server does
    /// not speak TLS, or no common version or cipher suite).
    Tls,
    /// Anything else (the log has details).
    Other,
    /// keyhook or host code running on the worker (a logger, say)
    /// panicked during the attempt; the panic was contained and logged.
    Panic,
}

impl AttemptError {
    /// A stable name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptError::Status => "status",
            AttemptError::Timeout => "timeout",
            AttemptError::Connect => "connect",
            AttemptError::Dns => "dns",
            AttemptError::DestinationRefused => "destination_refused",
            AttemptError::Tls => "tls",
            AttemptError::Other => "other",
            AttemptError::Panic => "panic",
        }
    }

    pub(crate) fn parse(s: &str) -> AttemptError {
        match s {
            "status" => AttemptError::Status,
            "timeout" => AttemptError::Timeout,
            "connect" => AttemptError::Connect,
            "dns" => AttemptError::Dns,
            "destination_refused" => AttemptError::DestinationRefused,
            "tls" => AttemptError::Tls,
            "panic" => AttemptError::Panic,
            _ => AttemptError::Other,
        }
    }
}

impl std::fmt::Display for AttemptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One signed request, ready to send.
pub(crate) struct Request<'a> {
    pub url: &'a str,
    pub headers: &'a [(String, String)],
    pub msg_id: &'a str,
    pub timestamp: i64,
    pub signature: &'a str,
    pub body: &'a [u8],
}

/// What became of an attempt.
#[derive(Debug)]
pub(crate) struct Response {
    pub status: Option<u16>,
    pub error: Option<AttemptError>,
    pub retry_after: Option<String>,
    pub excerpt: Vec<u8>,
    pub duration: Duration,
}

impl Response {
    /// Stands for an attempt that was never made.
    pub fn not_sent() -> Response {
        Response {
            status: None,
            error: None,
            retry_after: None,
            excerpt: Vec::new(),
            duration: Duration::ZERO,
        }
    }

    /// An attempt that panicked before it had an answer.
    pub fn panicked(duration: Duration) -> Response {
        Response {
            error: Some(AttemptError::Panic),
            duration,
            ..Response::not_sent()
        }
    }

    pub fn is_success(&self) -> bool {
        self.error.is_none() && self.status.is_some_and(|s| (200..300).contains(&s))
    }

    pub fn is_gone(&self) -> bool {
        self.status == Some(410)
    }

    /// 429, 502, 503, 504 and timeouts ask for a longer wait.
    pub fn is_throttled(&self) -> bool {
        self.error == Some(AttemptError::Timeout)
            || matches!(self.status, Some(429 | 502 | 503 | 504))
    }
}

/// The one ureq agent all workers share: keep-alive pool, global timeout,
/// no redirects, no proxy, and the destination policy applied to every
/// request: its scheme rule before anything is resolved or sent (a URL
/// stored under a more lenient policy is not sent in clear text), its
/// address rules to every resolved address (so a DNS name pointing at a
/// private address is refused).
pub(crate) fn agent(policy: DestinationPolicy, timeout: Duration, pool_per_host: usize) -> Agent {
    let config: Config = Agent::config_builder()
        // ureq checks this on every request, redirects included, before it
        // resolves or connects: a refusal sends nothing.
        .https_only(!policy.allows_http())
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .max_redirects(0)
        .proxy(None)
        .user_agent(USER_AGENT)
        .max_idle_connections_per_host(pool_per_host.max(1))
        .max_idle_connections(pool_per_host.max(1) * 16)
        .build();
    Agent::with_parts(
        config,
        DefaultConnector::new(),
        PolicyResolver::new(policy, DefaultResolver::default()),
    )
}

/// How long resolved, allowed addresses of a host are reused. ureq resolves
/// before every request, even one that reuses a pooled connection, and its
/// resolver starts a thread per lookup when a timeout is set: without a
/// cache a named endpoint pays a thread and a DNS query per delivery.
const DNS_CACHE_TTL: Duration = Duration::from_secs(30);

/// Hosts kept in the cache at most; past that, expired entries go, and if
/// none has expired the cache starts over.
const DNS_CACHE_MAX: usize = 1024;

/// Resolves names as usual, then drops every address the policy refuses;
/// allowed answers are reused for [`DNS_CACHE_TTL`]. Only addresses that
/// passed the policy are cached, so a cached answer is as safe as a fresh
/// one (DNS rebinding gains nothing: a name keeps its checked addresses
/// until the entry expires, then is resolved and checked again). Failures
/// and refusals are not cached.
#[derive(Debug)]
struct PolicyResolver<R = DefaultResolver> {
    policy: DestinationPolicy,
    inner: R,
    ttl: Duration,
    cache: Mutex<HashMap<HostPort, Cached>>,
}

/// A host name (lowercased) and port.
type HostPort = (String, u16);

/// Allowed addresses, and when they expire.
type Cached = (Instant, Vec<SocketAddr>);

impl<R: Resolver> PolicyResolver<R> {
    fn new(policy: DestinationPolicy, inner: R) -> Self {
        PolicyResolver {
            policy,
            inner,
            ttl: DNS_CACHE_TTL,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, key: &HostPort) -> Option<ResolvedSocketAddrs> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let (expires, addrs) = cache.get(key)?;
        if *expires <= Instant::now() {
            return None;
        }
        let mut out = self.empty();
        for a in addrs {
            out.push(*a);
        }
        Some(out)
    }

    fn remember(&self, key: HostPort, addrs: &ResolvedSocketAddrs) {
        let now = Instant::now();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= DNS_CACHE_MAX && !cache.contains_key(&key) {
            cache.retain(|_, (expires, _)| *expires > now);
            if cache.len() >= DNS_CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(key, (now + self.ttl, addrs.iter().copied().collect()));
    }
}

impl<R: Resolver> Resolver for PolicyResolver<R> {
    fn resolve(
        &self,
        uri: &Uri,
        config: &Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        // An IP literal needs no lookup (ureq's resolver would spawn a
        // thread for it, since a timeout is set).
        if let Some(addr) = literal_addr(uri) {
            return match self.policy.check_ip(addr.ip()) {
                Ok(()) => {
                    let mut one = self.empty();
                    one.push(addr);
                    Ok(one)
                }
                Err(r) => Err(ureq::Error::Io(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    r,
                ))),
            };
        }
        let key = cache_key(uri);
        if let Some(hit) = key.as_ref().and_then(|k| self.cached(k)) {
            return Ok(hit);
        }
        let resolved = self.inner.resolve(uri, config, timeout)?;
        let mut allowed = self.empty();
        let mut refusal: Option<Refusal> = None;
        for addr in resolved.iter() {
            match self.policy.check_ip(addr.ip()) {
                Ok(()) => allowed.push(*addr),
                Err(r) => refusal = Some(r),
            }
        }
        match (allowed.is_empty(), refusal) {
            (true, Some(r)) => Err(ureq::Error::Io(io::Error::new(
                io::ErrorKind::PermissionDenied,
                r,
            ))),
            (true, None) => Err(ureq::Error::HostNotFound),
            _ => {
                if let Some(key) = key {
                    self.remember(key, &allowed);
                }
                Ok(allowed)
            }
        }
    }
}

/// The host (lowercased) and port a URI connects to.
fn cache_key(uri: &Uri) -> Option<HostPort> {
    Some((uri.authority()?.host().to_ascii_lowercase(), port(uri)?))
}

/// The port a URI connects to: its own, or its scheme's.
fn port(uri: &Uri) -> Option<u16> {
    uri.authority()?.port_u16().or(match uri.scheme_str() {
        Some("https") => Some(443),
        Some("http") => Some(80),
        _ => None,
    })
}

/// The socket address of a URI whose host is an IP literal.
fn literal_addr(uri: &Uri) -> Option<SocketAddr> {
    let authority = uri.authority()?;
    let host = authority.host();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let ip: IpAddr = host.parse().ok()?;
    Some(SocketAddr::new(ip, port(uri)?))
}

/// Sends one request and classifies the result. Never panics on the
/// receiver's behaviour; every failure becomes an [`AttemptError`].
pub(crate) fn send(agent: &Agent, req: &Request<'_>, excerpt_limit: usize) -> Response {
    let started = Instant::now();
    let mut builder = agent
        .post(req.url)
        .header("content-type", "application/json")
        .header(HEADER_ID, req.msg_id)
        .header(HEADER_TIMESTAMP, req.timestamp.to_string())
        .header(HEADER_SIGNATURE, req.signature);
    for (name, value) in req.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    match builder.send(req.body) {
        Ok(mut resp) => {
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let mut excerpt = Vec::new();
            let mut reader = resp.body_mut().as_reader();
            let read = (&mut reader)
                .take(excerpt_limit as u64)
                .read_to_end(&mut excerpt)
                .and_then(|_| io::copy(&mut (&mut reader).take(DRAIN_LIMIT), &mut io::sink()));
            // A status line and headers arrived: the answer counts even if the
            // body broke off (a timeout while reading it included).
            let error = match read {
                Err(e) if !(200..300).contains(&status) => Some(classify_io(&e)),
                _ if !(200..300).contains(&status) => Some(AttemptError::Status),
                _ => None,
            };
            Response {
                status: Some(status),
                error,
                retry_after,
                excerpt,
                duration: started.elapsed(),
            }
        }
        Err(e) => Response {
            status: None,
            error: Some(classify(&e)),
            retry_after: None,
            excerpt: Vec::new(),
            duration: started.elapsed(),
        },
    }
}

fn classify(e: &ureq::Error) -> AttemptError {
    match e {
        ureq::Error::Timeout(_) => AttemptError::Timeout,
        ureq::Error::HostNotFound => AttemptError::Dns,
        ureq::Error::Io(io) => classify_io(io),
        ureq::Error::ConnectionFailed => AttemptError::Connect,
        ureq::Error::Tls(_) | ureq::Error::Rustls(_) => AttemptError::Tls,
        ureq::Error::RequireHttpsOnly(_) => AttemptError::DestinationRefused,
        _ => AttemptError::Other,
    }
}

/// Classifies an I/O error: ureq's own errors (a timeout while reading a
/// body) and rustls's (a refused certificate, a broken handshake) reach
/// here wrapped in one, so they are unwrapped before the kind is looked at.
fn classify_io(e: &io::Error) -> AttemptError {
    let inner = e.get_ref();
    if inner.is_some_and(|inner| inner.is::<Refusal>()) {
        return AttemptError::DestinationRefused;
    }
    if let Some(ureq) = inner.and_then(|inner| inner.downcast_ref::<ureq::Error>()) {
        return classify(ureq);
    }
    if wraps(e, ureq::Error::Rustls) {
        return AttemptError::Tls;
    }
    match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => AttemptError::Timeout,
        io::ErrorKind::ConnectionRefused
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::NotConnected
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::UnexpectedEof
        | io::ErrorKind::HostUnreachable
        | io::ErrorKind::NetworkUnreachable
        | io::ErrorKind::AddrNotAvailable => AttemptError::Connect,
        _ => AttemptError::Other,
    }
}

/// Whether `e` wraps a value of the type `variant` holds. Passing
/// `ureq::Error::Rustls` names rustls's error type through ureq (which
/// wraps it in an I/O error when the handshake fails) without keyhook
/// depending on rustls itself.
fn wraps<T: std::error::Error + 'static>(e: &io::Error, _variant: fn(T) -> ureq::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<T>())
}

/// For logs: the address a URL points at, without path or query (which may
/// carry tokens).
pub(crate) fn redacted_target(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => format!(
            "{}://{}{}",
            u.scheme(),
            u.host_str().unwrap_or("?"),
            u.port().map(|p| format!(":{p}")).unwrap_or_default()
        ),
        Err(_) => "<invalid url>".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn outcome_classes() {
        let r = |status: Option<u16>, error: Option<AttemptError>| Response {
            status,
            error,
            retry_after: None,
            excerpt: Vec::new(),
            duration: Duration::ZERO,
        };
        assert!(r(Some(204), None).is_success());
        assert!(!r(Some(302), Some(AttemptError::Status)).is_success());
        assert!(r(Some(410), Some(AttemptError::Status)).is_gone());
        assert!(r(Some(429), Some(AttemptError::Status)).is_throttled());
        assert!(r(None, Some(AttemptError::Timeout)).is_throttled());
        assert!(!r(Some(500), Some(AttemptError::Status)).is_throttled());
    }

    #[test]
    fn wrapped_errors_are_classified_by_what_they_wrap() {
        // How a body read reports a timeout: ureq's error inside an I/O error.
        let body_timeout = io::Error::other(ureq::Error::Timeout(ureq::Timeout::Global));
        assert_eq!(classify_io(&body_timeout), AttemptError::Timeout);
        let reset = io::Error::other(ureq::Error::Io(io::ErrorKind::ConnectionReset.into()));
        assert_eq!(classify_io(&reset), AttemptError::Connect);
        // Invalid data that is not rustls's is not a TLS failure.
        let invalid = io::Error::new(io::ErrorKind::InvalidData, "bad chunk");
        assert_eq!(classify_io(&invalid), AttemptError::Other);
        let refusal = DestinationPolicy::new()
            .check_ip("10.0.0.1".parse().unwrap())
            .unwrap_err();
        // As the policy resolver returns it.
        let refused = ureq::Error::Io(io::Error::new(io::ErrorKind::PermissionDenied, refusal));
        assert_eq!(classify(&refused), AttemptError::DestinationRefused);
        // And as a body read would, wrapped once more.
        assert_eq!(
            classify_io(&io::Error::other(refused)),
            AttemptError::DestinationRefused
        );
    }

    #[test]
    fn the_scheme_rule_and_tls_errors_have_their_kinds() {
        let http = ureq::Error::RequireHttpsOnly("http://example.com/".into());
        assert_eq!(classify(&http), AttemptError::DestinationRefused);
        assert_eq!(classify(&ureq::Error::Tls("handshake")), AttemptError::Tls);
        assert_eq!(classify(&ureq::Error::HostNotFound), AttemptError::Dns);
        assert_eq!(
            classify(&ureq::Error::Timeout(ureq::Timeout::Connect)),
            AttemptError::Timeout
        );
    }

    #[test]
    fn an_agent_sends_http_only_under_a_policy_that_allows_it() {
        let strict = agent(DestinationPolicy::new(), Duration::from_secs(1), 1);
        assert!(strict.config().https_only());
        let lenient = agent(
            DestinationPolicy::new().allow_http(true),
            Duration::from_secs(1),
            1,
        );
        assert!(!lenient.config().https_only());
    }

    #[test]
    fn attempt_error_names_roundtrip() {
        for e in [
            AttemptError::Status,
            AttemptError::Timeout,
            AttemptError::Connect,
            AttemptError::Dns,
            AttemptError::DestinationRefused,
            AttemptError::Tls,
            AttemptError::Other,
        ] {
            assert_eq!(AttemptError::parse(e.as_str()), e);
        }
    }

    #[test]
    fn ip_literals_resolve_without_lookup() {
        let addr = |u: &str| literal_addr(&u.parse::<Uri>().unwrap());
        assert_eq!(
            addr("http://127.0.0.1:8080/x"),
            Some("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(addr("https://[::1]/x"), Some("[::1]:443".parse().unwrap()));
        assert_eq!(
            addr("http://93.184.216.34/"),
            Some("93.184.216.34:80".parse().unwrap())
        );
        assert_eq!(addr("https://example.com/"), None);
    }

    /// A resolver answering whatever it was last told, counting lookups.
    #[derive(Debug, Default)]
    struct Fake {
        answer: Mutex<Vec<SocketAddr>>,
        lookups: std::sync::atomic::AtomicUsize,
    }

    impl Fake {
        fn answer(&self, addrs: &[&str]) {
            *self.answer.lock().unwrap() = addrs.iter().map(|a| a.parse().unwrap()).collect();
        }
    }

    /// The fake as the policy resolver holds it.
    #[derive(Debug)]
    struct Handle(Arc<Fake>);

    impl Resolver for Handle {
        fn resolve(
            &self,
            _uri: &Uri,
            _config: &Config,
            _timeout: NextTimeout,
        ) -> Result<ResolvedSocketAddrs, ureq::Error> {
            self.0
                .lookups
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut out = self.empty();
            for a in self.0.answer.lock().unwrap().iter() {
                out.push(*a);
            }
            if out.is_empty() {
                return Err(ureq::Error::HostNotFound);
            }
            Ok(out)
        }
    }

    fn resolver(ttl: Duration) -> (PolicyResolver<Handle>, Arc<Fake>) {
        let fake = Arc::new(Fake::default());
        let mut r = PolicyResolver::new(DestinationPolicy::new(), Handle(Arc::clone(&fake)));
        r.ttl = ttl;
        (r, fake)
    }

    fn resolve(r: &PolicyResolver<Handle>, url: &str) -> Result<Vec<SocketAddr>, ureq::Error> {
        let config = Agent::config_builder().build();
        r.resolve(&url.parse().unwrap(), &config, NextTimeout::default())
            .map(|a| a.iter().copied().collect())
    }

    fn lookups(fake: &Fake) -> usize {
        fake.lookups.load(std::sync::atomic::Ordering::SeqCst)
    }

    #[test]
    fn a_named_host_is_looked_up_once_per_ttl() {
        let (r, fake) = resolver(Duration::from_secs(60));
        fake.answer(&["93.184.216.34:443"]);
        let public: Vec<SocketAddr> = vec!["93.184.216.34:443".parse().unwrap()];
        assert_eq!(resolve(&r, "https://hooks.example.com/a").unwrap(), public);
        assert_eq!(
            resolve(&r, "https://hooks.example.com/b?x=1").unwrap(),
            public
        );
        assert_eq!(
            resolve(&r, "https://HOOKS.Example.com:443/").unwrap(),
            public
        );
        assert_eq!(lookups(&fake), 1);
        // Another port or host is another entry.
        fake.answer(&["93.184.216.34:8443"]);
        resolve(&r, "https://hooks.example.com:8443/").unwrap();
        resolve(&r, "https://other.example.com:8443/").unwrap();
        assert_eq!(lookups(&fake), 3);
        // IP literals never reach the resolver or the cache.
        resolve(&r, "https://93.184.216.34/").unwrap();
        assert_eq!(lookups(&fake), 3);
    }

    #[test]
    fn an_expired_entry_is_resolved_and_checked_again() {
        let (r, fake) = resolver(Duration::from_millis(50));
        fake.answer(&["93.184.216.34:443"]);
        resolve(&r, "https://rebind.example.com/").unwrap();
        // The name now points at a private address (DNS rebinding): the
        // checked answer is used until it expires, then the new one is
        // refused.
        fake.answer(&["10.0.0.1:443"]);
        assert!(resolve(&r, "https://rebind.example.com/").is_ok());
        assert_eq!(lookups(&fake), 1);
        std::thread::sleep(Duration::from_millis(80));
        let err = resolve(&r, "https://rebind.example.com/").unwrap_err();
        assert!(
            matches!(&err, ureq::Error::Io(e) if e.kind() == io::ErrorKind::PermissionDenied),
            "{err:?}"
        );
        // Refusals are not cached: each attempt asks again.
        assert!(resolve(&r, "https://rebind.example.com/").is_err());
        assert_eq!(lookups(&fake), 3);
    }

    #[test]
    fn failures_are_not_cached_and_the_cache_stays_bounded() {
        let (r, fake) = resolver(Duration::from_secs(60));
        assert!(matches!(
            resolve(&r, "https://down.example.com/"),
            Err(ureq::Error::HostNotFound)
        ));
        fake.answer(&["93.184.216.34:443"]);
        resolve(&r, "https://down.example.com/").unwrap();
        assert_eq!(lookups(&fake), 2);
        for i in 0..DNS_CACHE_MAX + 10 {
            resolve(&r, &format!("https://h{i}.example.com/")).unwrap();
        }
        assert!(r.cache.lock().unwrap().len() <= DNS_CACHE_MAX);
    }

    #[test]
    fn log_target_drops_path_and_credentials() {
        assert_eq!(
            redacted_target("https://example.com:8443/hook?token=abc"),
            "https://example.com:8443"
        );
    }
}
