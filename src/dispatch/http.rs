//! The shared HTTP agent, request building, and outcome classification.

use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr};
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
    /// No complete answer within the request timeout.
    Timeout,
    /// The connection could not be made (refused, reset, unreachable).
    Connect,
    /// The host name did not resolve.
    Dns,
    /// The destination policy refused the resolved address.
    DestinationRefused,
    /// TLS failed (certificate, handshake).
    Tls,
    /// Anything else (the log has details).
    Other,
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
/// resolved address (so a DNS name pointing at a private address is refused).
pub(crate) fn agent(policy: DestinationPolicy, timeout: Duration, pool_per_host: usize) -> Agent {
    let config: Config = Agent::config_builder()
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
        PolicyResolver {
            policy,
            inner: DefaultResolver::default(),
        },
    )
}

/// Resolves names as usual, then drops every address the policy refuses.
#[derive(Debug)]
struct PolicyResolver {
    policy: DestinationPolicy,
    inner: DefaultResolver,
}

impl Resolver for PolicyResolver {
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
            _ => Ok(allowed),
        }
    }
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
    let port = authority.port_u16().or(match uri.scheme_str() {
        Some("https") => Some(443),
        Some("http") => Some(80),
        _ => None,
    })?;
    Some(SocketAddr::new(ip, port))
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
        _ => AttemptError::Other,
    }
}

fn classify_io(e: &io::Error) -> AttemptError {
    if e.get_ref().is_some_and(|inner| inner.is::<Refusal>()) {
        return AttemptError::DestinationRefused;
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

    #[test]
    fn log_target_drops_path_and_credentials() {
        assert_eq!(
            redacted_target("https://example.com:8443/hook?token=abc"),
            "https://example.com:8443"
        );
    }
}
