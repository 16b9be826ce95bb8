//! Where webhooks may be delivered: the destination policy.
//!
//! A webhook URL is chosen by a customer, and the server that delivers to it
//! sits inside your network. Without a policy, a customer could register
//! `http://169.254.169.254/latest/meta-data/` or `http://10.0.0.5/admin` and
//! have keyhook make requests to your cloud metadata service or internal
//! hosts (server-side request forgery). [`DestinationPolicy`] refuses such
//! destinations in two places:
//!
//! - [`DestinationPolicy::check_url`] at registration time: the scheme, the
//!   shape of the URL, IP literals and a few fixed names (`localhost`,
//!   cloud metadata names).
//! - [`DestinationPolicy::check_ip`] at connect time, on every address a host
//!   name resolves to. A name can resolve to anything (and resolve
//!   differently later), so this second check is the one that protects you;
//!   the first only gives an early, clear error.
//!
//! Everything here is pure: no I/O, no DNS.
//!
//! ```
//! use keyhook::destination::{DestinationPolicy, AddressClass};
//!
//! let policy = DestinationPolicy::new();
//! assert!(policy.check_url("https://example.com/hook").is_ok());
//! assert!(policy.check_url("https://169.254.169.254/").is_err());
//!
//! let refusal = policy.check_ip("127.0.0.1".parse().unwrap()).unwrap_err();
//! assert_eq!(refusal.class(), AddressClass::Loopback);
//! assert_eq!(refusal.to_string(), "127.0.0.1 is a loopback address");
//! ```

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use url::{Host, Url};

use crate::error::{Error, Result};

/// The longest webhook URL [`DestinationPolicy::check_url`] accepts, in bytes,
/// both as given and once normalized by the URL parser.
pub const MAX_URL_LEN: usize = 2048;

/// Which webhook destinations are allowed. Cheap to clone.
///
/// [`DestinationPolicy::new`] (and `Default`) is strict: `https` only, and
/// only globally routable addresses. Each builder method loosens one rule:
///
/// - [`allow_http`](Self::allow_http): plain `http` URLs.
/// - [`allow_loopback`](Self::allow_loopback): loopback addresses
///   (`127.0.0.0/8`, `::1`, and their IPv4-mapped and embedded forms) and the
///   names `localhost` and `*.localhost`. For development and tests.
/// - [`allow_private`](Self::allow_private): private addresses
///   ([`AddressClass::Private`]: `10/8`, `172.16/12`, `192.168/16`,
///   `fc00::/7`, …), and nothing else.
/// - [`allow_cidr`](Self::allow_cidr): an allow-list. An address inside an
///   allow-listed block is allowed whatever its class, **except**
///   [`AddressClass::Unspecified`] (`0.0.0.0/8`, `::`), which is never
///   allowed: connecting to it reaches the local host on most systems.
#[derive(Debug, Clone, Default)]
pub struct DestinationPolicy {
    allow_http: bool,
    allow_loopback: bool,
    allow_private: bool,
    allowed: Vec<Cidr>,
}

impl DestinationPolicy {
    /// The strict policy: `https` only, public addresses only, no allow-list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also accept `http://` URLs (default: `false`).
    #[must_use]
    pub fn allow_http(mut self, yes: bool) -> Self {
        self.allow_http = yes;
        self
    }

    /// Whether plain `http` URLs are accepted (see [`allow_http`](Self::allow_http)).
    pub(crate) fn allows_http(&self) -> bool {
        self.allow_http
    }

    /// Also accept loopback destinations: `127.0.0.0/8`, `::1` (and the
    /// IPv6 forms that embed a `127.x` address) and the host names
    /// `localhost` and `*.localhost` (default: `false`). Meant for
    /// development and tests; other classes stay refused.
    #[must_use]
    pub fn allow_loopback(mut self, yes: bool) -> Self {
        self.allow_loopback = yes;
        self
    }

    /// Also accept private addresses, those [`classify`] reports as
    /// [`AddressClass::Private`]: `10.0.0.0/8`, `172.16.0.0/12`,
    /// `192.168.0.0/16`, `fc00::/7`, `fec0::/10` and `64:ff9b:1::/48`
    /// (default: `false`). Link-local, shared (CGNAT) and cloud metadata
    /// addresses stay refused; prefer [`allow_cidr`](Self::allow_cidr) with
    /// the one range you need.
    #[must_use]
    pub fn allow_private(mut self, yes: bool) -> Self {
        self.allow_private = yes;
        self
    }

    /// Allow every address inside `cidr`, whatever its class, except
    /// unspecified addresses (`0.0.0.0/8`, `::`), which are always refused.
    /// May be called several times; the blocks add up.
    ///
    /// The allow-list applies to addresses (IP literals in URLs, and resolved
    /// addresses in [`check_ip`](Self::check_ip)), not to host names.
    #[must_use]
    pub fn allow_cidr(mut self, cidr: Cidr) -> Self {
        self.allowed.push(cidr);
        self
    }

    /// Validate a webhook URL at registration time and return it parsed.
    ///
    /// Store and deliver to the returned URL's serialization
    /// ([`Url::as_str`]), not the input string: it is what was checked.
    ///
    /// Refused: an empty URL; one longer than [`MAX_URL_LEN`] bytes; control
    /// characters or leading/trailing whitespace anywhere in the input
    /// (checked before parsing, since the parser silently strips tabs and
    /// newlines); a relative or unparseable URL; a scheme other than `https`
    /// (or `http` when [`allow_http`](Self::allow_http) is set); a username
    /// or password; a fragment (`#…`); a missing host; port 0; an IP-literal
    /// host (in any form the parser accepts: `2130706433`, `0x7f.1`,
    /// `[::ffff:127.0.0.1]`, …) that [`check_ip`](Self::check_ip) refuses;
    /// the names `localhost` and `*.localhost` (unless
    /// [`allow_loopback`](Self::allow_loopback) is set); the cloud metadata
    /// names `metadata.google.internal` and `metadata.goog` (always).
    ///
    /// Other host names are accepted here: what they resolve to must be
    /// checked with [`check_ip`](Self::check_ip) when connecting.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] with `field: "url"` when the URL is malformed
    /// or breaks a rule of its shape (scheme, userinfo, fragment, length…);
    /// the reason names the part at fault and never repeats the whole URL.
    /// [`Error::DestinationRefused`] when the host is an address or a name
    /// the policy refuses, e.g. "169.254.169.254 is a cloud metadata address".
    pub fn check_url(&self, url: &str) -> Result<Url> {
        let invalid = |reason: String| Error::invalid("url", reason);
        if url.is_empty() {
            return Err(invalid("is empty".into()));
        }
        if url.len() > MAX_URL_LEN {
            return Err(invalid(format!(
                "is {} bytes, over the limit of {MAX_URL_LEN} bytes",
                url.len()
            )));
        }
        if let Some((at, c)) = url.char_indices().find(|(_, c)| c.is_control()) {
            return Err(invalid(format!(
                "contains a control character (U+{:04X} at byte {at})",
                u32::from(c)
            )));
        }
        if url.trim() != url {
            return Err(invalid("has leading or trailing whitespace".into()));
        }

        let parsed = Url::parse(url).map_err(|e| match e {
            url::ParseError::RelativeUrlWithoutBase => {
                invalid("is not an absolute URL; it must start with https://".into())
            }
            other => invalid(format!("could not be parsed: {other}")),
        })?;

        let scheme = parsed.scheme();
        let scheme_ok = scheme == "https" || (scheme == "http" && self.allow_http);
        if !scheme_ok {
            let wanted = if self.allow_http {
                "https or http"
            } else {
                "https"
            };
            return Err(invalid(format!(
                "scheme \"{scheme}\" is not allowed; use {wanted}"
            )));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(invalid(
                "must not contain a username or password (credentials in URLs leak into logs)"
                    .into(),
            ));
        }
        if parsed.fragment().is_some() {
            return Err(invalid("must not contain a fragment (#…)".into()));
        }
        if parsed.port() == Some(0) {
            return Err(invalid("port 0 is not allowed".into()));
        }
        if parsed.as_str().len() > MAX_URL_LEN {
            return Err(invalid(format!(
                "is {} bytes once normalized, over the limit of {MAX_URL_LEN} bytes",
                parsed.as_str().len()
            )));
        }

        match parsed.host() {
            None => return Err(invalid("has no host".into())),
            Some(Host::Ipv4(v4)) => self.check_ip(IpAddr::V4(v4))?,
            Some(Host::Ipv6(v6)) => self.check_ip(IpAddr::V6(v6))?,
            Some(Host::Domain(name)) => self.check_name(name)?,
        }
        Ok(parsed)
    }

    /// Refuse the few host names whose meaning does not depend on DNS.
    fn check_name(&self, name: &str) -> Result<()> {
        // The parser lowercases and IDNA-maps names; trailing dots make the
        // same name absolute (and resolvers may accept several).
        let name = name.trim_end_matches('.');
        let refused = |what: &str| Error::DestinationRefused {
            reason: format!("host \"{name}\" is {what}"),
        };
        if matches!(name, "metadata.google.internal" | "metadata.goog") {
            return Err(refused("a cloud metadata name"));
        }
        let loopback =
            matches!(name, "localhost" | "localhost.localdomain") || name.ends_with(".localhost");
        if loopback && !self.allow_loopback {
            return Err(refused("a loopback name"));
        }
        Ok(())
    }

    /// Check one address a destination resolved to, at connect time.
    ///
    /// Allowed: addresses [`classify`] calls public; unspecified addresses
    /// never; any other address inside an [`allow_cidr`](Self::allow_cidr)
    /// block; loopback addresses with [`allow_loopback`](Self::allow_loopback);
    /// private addresses with [`allow_private`](Self::allow_private).
    ///
    /// # Errors
    ///
    /// A [`Refusal`] naming the address and its [`AddressClass`]; it converts
    /// into [`Error::DestinationRefused`] with `?`.
    pub fn check_ip(&self, ip: IpAddr) -> std::result::Result<(), Refusal> {
        let Some(class) = classify(ip) else {
            return Ok(());
        };
        let lifted = match class {
            AddressClass::Unspecified => false,
            AddressClass::Loopback if self.allow_loopback => true,
            AddressClass::Private if self.allow_private => true,
            _ => self.allowed.iter().any(|cidr| cidr.contains(ip)),
        };
        if lifted {
            Ok(())
        } else {
            Err(Refusal { ip, class })
        }
    }
}

/// The kind of non-public address [`classify`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AddressClass {
    /// `0.0.0.0/8` ("this network") and `::`. Never allowed, even by an
    /// allow-list: connecting to it reaches the local host on most systems.
    Unspecified,
    /// `127.0.0.0/8` and `::1`.
    Loopback,
    /// `10.0.0.0/8`, `172.16.0.0/12`, `192.168.0.0/16`, unique-local
    /// `fc00::/7`, deprecated site-local `fec0::/10`, and the local-use NAT64
    /// prefix `64:ff9b:1::/48`.
    Private,
    /// `169.254.0.0/16` and `fe80::/10` (cloud metadata addresses inside
    /// them are reported as [`AddressClass::CloudMetadata`]).
    LinkLocal,
    /// `100.64.0.0/10`, shared address space for carrier-grade NAT.
    SharedCgnat,
    /// A cloud instance metadata service: `169.254.169.254` (AWS, GCP, Azure
    /// and others), `100.100.100.200` (Alibaba), `fd00:ec2::254` (AWS IPv6).
    CloudMetadata,
    /// `224.0.0.0/4` and `ff00::/8`.
    Multicast,
    /// `255.255.255.255`.
    Broadcast,
    /// `192.0.2.0/24`, `198.51.100.0/24`, `203.0.113.0/24`, `2001:db8::/32`
    /// and `3fff::/20`.
    Documentation,
    /// `198.18.0.0/15` and `2001:2::/48`.
    Benchmarking,
    /// Not globally routable for another reason: `240.0.0.0/4`, IETF
    /// protocol assignments `192.0.0.0/24` and `2001::/23` (less their
    /// globally reachable exceptions), the 6to4 relay anycast
    /// `192.88.99.0/24`, discard-only `100::/64`, deprecated IPv4-compatible
    /// addresses (`::a.b.c.d`) embedding a public address, and IPv6 outside
    /// the global unicast block `2000::/3`.
    Reserved,
}

impl AddressClass {
    /// The class with its article, as used in [`Refusal`]'s message.
    fn with_article(self) -> &'static str {
        match self {
            AddressClass::Unspecified => "an unspecified address",
            AddressClass::Loopback => "a loopback address",
            AddressClass::Private => "a private address",
            AddressClass::LinkLocal => "a link-local address",
            AddressClass::SharedCgnat => "a shared (carrier-grade NAT) address",
            AddressClass::CloudMetadata => "a cloud metadata address",
            AddressClass::Multicast => "a multicast address",
            AddressClass::Broadcast => "a broadcast address",
            AddressClass::Documentation => "a documentation address",
            AddressClass::Benchmarking => "a benchmarking address",
            AddressClass::Reserved => "a reserved address",
        }
    }
}

impl fmt::Display for AddressClass {
    /// E.g. "loopback address".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let phrase = self.with_article();
        let without = phrase
            .strip_prefix("an ")
            .or_else(|| phrase.strip_prefix("a "))
            .unwrap_or(phrase);
        f.write_str(without)
    }
}

/// Why [`DestinationPolicy::check_ip`] refused an address.
///
/// Displays as e.g. `127.0.0.1 is a loopback address`, or for an IPv6 address
/// that embeds an IPv4 one, `64:ff9b::7f00:1 is a loopback address (it embeds
/// 127.0.0.1)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Refusal {
    ip: IpAddr,
    class: AddressClass,
}

impl Refusal {
    /// The refused address, as it was given.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// Why it was refused.
    pub fn class(&self) -> AddressClass {
        self.class
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is {}", self.ip, self.class.with_article())?;
        if let IpAddr::V6(v6) = self.ip {
            // `::ffff:a.b.c.d` already displays its IPv4 address.
            if let Some((v4, kind)) = embedded_ipv4(v6)
                && kind != Embedding::Mapped
            {
                write!(f, " (it embeds {v4})")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for Refusal {}

impl From<Refusal> for Error {
    fn from(refusal: Refusal) -> Self {
        Error::DestinationRefused {
            reason: refusal.to_string(),
        }
    }
}

/// Classify an address: `None` when it is public (globally routable),
/// otherwise the reason it is not.
///
/// IPv6 addresses that embed an IPv4 address are classified by the IPv4
/// address: IPv4-mapped `::ffff:0:0/96`, IPv4-translated `::ffff:0:0:0/96`,
/// IPv4-compatible `::/96`, NAT64 `64:ff9b::/96` and 6to4 `2002::/16` (bits
/// 16 to 48). A public address embedded in a mapped, NAT64 or 6to4 address
/// is public; one embedded in a deprecated IPv4-compatible or -translated
/// address is [`AddressClass::Reserved`].
pub fn classify(ip: IpAddr) -> Option<AddressClass> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u8) -> bool {
    masked_eq(
        u128::from(u32::from(ip)),
        u128::from(u32::from(Ipv4Addr::from(net))),
        prefix,
        32,
    )
}

fn in_v6(ip: Ipv6Addr, net: [u16; 8], prefix: u8) -> bool {
    masked_eq(u128::from(ip), u128::from(Ipv6Addr::from(net)), prefix, 128)
}

/// Whether `a` and `b`, numbers `width` bits wide, agree on their top
/// `prefix` bits.
fn masked_eq(a: u128, b: u128, prefix: u8, width: u8) -> bool {
    let mask = prefix_mask(prefix, width);
    a & mask == b & mask
}

/// The netmask with the top `prefix` of `width` bits set (`prefix <= width`).
fn prefix_mask(prefix: u8, width: u8) -> u128 {
    let all = if width == 128 {
        u128::MAX
    } else {
        (1u128 << width) - 1
    };
    match u32::from(width - prefix) {
        128 => 0,
        host_bits => all & !((1u128 << host_bits) - 1),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<AddressClass> {
    use AddressClass::*;
    let o = ip.octets();
    let class = if in_v4(ip, [0, 0, 0, 0], 8) {
        Unspecified
    } else if in_v4(ip, [127, 0, 0, 0], 8) {
        Loopback
    } else if o == [169, 254, 169, 254] || o == [100, 100, 100, 200] {
        CloudMetadata
    } else if in_v4(ip, [10, 0, 0, 0], 8)
        || in_v4(ip, [172, 16, 0, 0], 12)
        || in_v4(ip, [192, 168, 0, 0], 16)
    {
        Private
    } else if in_v4(ip, [169, 254, 0, 0], 16) {
        LinkLocal
    } else if in_v4(ip, [100, 64, 0, 0], 10) {
        SharedCgnat
    } else if in_v4(ip, [192, 0, 2, 0], 24)
        || in_v4(ip, [198, 51, 100, 0], 24)
        || in_v4(ip, [203, 0, 113, 0], 24)
    {
        Documentation
    } else if in_v4(ip, [198, 18, 0, 0], 15) {
        Benchmarking
    } else if in_v4(ip, [224, 0, 0, 0], 4) {
        Multicast
    } else if o == [255, 255, 255, 255] {
        Broadcast
    } else if in_v4(ip, [240, 0, 0, 0], 4) || in_v4(ip, [192, 88, 99, 0], 24) {
        Reserved
    } else if in_v4(ip, [192, 0, 0, 0], 24) {
        // IETF protocol assignments; PCP and TURN anycast are global.
        if o == [192, 0, 0, 9] || o == [192, 0, 0, 10] {
            return None;
        }
        Reserved
    } else {
        return None;
    };
    Some(class)
}

/// How an IPv6 address carries an IPv4 one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Embedding {
    /// `::ffff:a.b.c.d`
    Mapped,
    /// `::ffff:0:a.b.c.d` (SIIT, deprecated)
    Translated,
    /// `::a.b.c.d` (deprecated)
    Compatible,
    /// `64:ff9b::a.b.c.d`
    Nat64,
    /// `2002:aabb:ccdd::/48`
    SixToFour,
}

/// The IPv4 address embedded in `ip`, if it is one of the forms that embed
/// one. `::` and `::1` are not treated as IPv4-compatible.
fn embedded_ipv4(ip: Ipv6Addr) -> Option<(Ipv4Addr, Embedding)> {
    let bits = u128::from(ip);
    let low = Ipv4Addr::from((bits & 0xffff_ffff) as u32);
    let s = ip.segments();
    if in_v6(ip, [0, 0, 0, 0, 0, 0xffff, 0, 0], 96) {
        Some((low, Embedding::Mapped))
    } else if in_v6(ip, [0, 0, 0, 0, 0xffff, 0, 0, 0], 96) {
        Some((low, Embedding::Translated))
    } else if in_v6(ip, [0; 8], 96) && bits > 1 {
        Some((low, Embedding::Compatible))
    } else if in_v6(ip, [0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96) {
        Some((low, Embedding::Nat64))
    } else if s[0] == 0x2002 {
        let v4 = (u32::from(s[1]) << 16) | u32::from(s[2]);
        Some((Ipv4Addr::from(v4), Embedding::SixToFour))
    } else {
        None
    }
}

fn classify_v6(ip: Ipv6Addr) -> Option<AddressClass> {
    use AddressClass::*;
    if ip.is_unspecified() {
        return Some(Unspecified);
    }
    if ip.is_loopback() {
        return Some(Loopback);
    }
    if let Some((v4, kind)) = embedded_ipv4(ip) {
        let inner = classify_v4(v4);
        return match kind {
            Embedding::Mapped | Embedding::Nat64 | Embedding::SixToFour => inner,
            Embedding::Compatible | Embedding::Translated => inner.or(Some(Reserved)),
        };
    }
    let s = ip.segments();
    let class = if in_v6(ip, [0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48) {
        Private
    } else if in_v6(ip, [0x100, 0, 0, 0, 0, 0, 0, 0], 64) {
        Reserved
    } else if s == [0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254] {
        CloudMetadata
    } else if in_v6(ip, [0xfc00, 0, 0, 0, 0, 0, 0, 0], 7)
        || in_v6(ip, [0xfec0, 0, 0, 0, 0, 0, 0, 0], 10)
    {
        Private
    } else if in_v6(ip, [0xfe80, 0, 0, 0, 0, 0, 0, 0], 10) {
        LinkLocal
    } else if in_v6(ip, [0xff00, 0, 0, 0, 0, 0, 0, 0], 8) {
        Multicast
    } else if in_v6(ip, [0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32)
        || in_v6(ip, [0x3fff, 0, 0, 0, 0, 0, 0, 0], 20)
    {
        Documentation
    } else if in_v6(ip, [0x2001, 2, 0, 0, 0, 0, 0, 0], 48) {
        Benchmarking
    } else if in_v6(ip, [0x2001, 0, 0, 0, 0, 0, 0, 0], 23) {
        // IETF protocol assignments (Teredo included), less the blocks the
        // IANA registry marks globally reachable.
        let global = matches!(s, [0x2001, 1, 0, 0, 0, 0, 0, 1..=3])
            || in_v6(ip, [0x2001, 3, 0, 0, 0, 0, 0, 0], 32)
            || in_v6(ip, [0x2001, 4, 0x112, 0, 0, 0, 0, 0], 48)
            || in_v6(ip, [0x2001, 0x20, 0, 0, 0, 0, 0, 0], 27);
        if global {
            return None;
        }
        Reserved
    } else if !in_v6(ip, [0x2000, 0, 0, 0, 0, 0, 0, 0], 3) {
        Reserved
    } else {
        return None;
    };
    Some(class)
}

/// A block of addresses in CIDR notation, e.g. `10.1.0.0/16` or `fd00::/8`.
///
/// Parsed with [`FromStr`]. Host bits set below the prefix are cleared, so
/// `10.1.2.3/16` is the block `10.1.0.0/16` (its `Display`). A bare address
/// (`10.1.2.3`, `::1`) is a block of one (`/32`, `/128`).
///
/// An IPv4 address and its IPv4-mapped IPv6 form (`::ffff:a.b.c.d`) count as
/// the same address in [`contains`](Self::contains).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The block of `prefix` leading bits of `ip`; host bits are cleared.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] with `field: "cidr"` when `prefix` is longer
    /// than the address (32 for IPv4, 128 for IPv6).
    pub fn new(ip: IpAddr, prefix: u8) -> Result<Self> {
        let (width, bits) = match ip {
            IpAddr::V4(v4) => (32, u128::from(u32::from(v4))),
            IpAddr::V6(v6) => (128, u128::from(v6)),
        };
        if prefix > width {
            return Err(Error::invalid(
                "cidr",
                format!(
                    "prefix length {prefix} is over {width} for an IPv{} address",
                    if width == 32 { 4 } else { 6 }
                ),
            ));
        }
        let masked = bits & prefix_mask(prefix, width);
        let network = match ip {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(masked as u32)),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(masked)),
        };
        Ok(Cidr { network, prefix })
    }

    /// The first address of the block (host bits cleared).
    pub fn network(&self) -> IpAddr {
        self.network
    }

    /// The prefix length: how many leading bits an address must share.
    pub fn prefix_len(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` is inside this block. An IPv4 block also contains the
    /// IPv4-mapped IPv6 forms (`::ffff:a.b.c.d`) of its addresses, and an
    /// IPv6 block contains an IPv4 address when it contains its mapped form.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(v4)) => in_v4(v4, net.octets(), self.prefix),
            (IpAddr::V4(net), IpAddr::V6(v6)) => v6
                .to_ipv4_mapped()
                .is_some_and(|v4| in_v4(v4, net.octets(), self.prefix)),
            (IpAddr::V6(net), IpAddr::V6(v6)) => in_v6(v6, net.segments(), self.prefix),
            (IpAddr::V6(net), IpAddr::V4(v4)) => {
                in_v6(v4.to_ipv6_mapped(), net.segments(), self.prefix)
            }
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = Error;

    /// Parse `ADDRESS/PREFIX` or a bare `ADDRESS`. No surrounding whitespace.
    fn from_str(s: &str) -> Result<Self> {
        let bad = |reason: String| Error::invalid("cidr", reason);
        if s.is_empty() {
            return Err(bad("is empty".into()));
        }
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let ip: IpAddr = addr
            .parse()
            .map_err(|_| bad(format!("{addr:?} is not an IPv4 or IPv6 address")))?;
        let prefix = match prefix {
            None => match ip {
                IpAddr::V4(_) => 32,
                IpAddr::V6(_) => 128,
            },
            Some(p) => {
                let digits_ok =
                    !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit());
                let n = if digits_ok {
                    p.parse::<u8>().ok()
                } else {
                    None
                };
                n.ok_or_else(|| bad(format!("prefix length {p:?} is not a number from 0 to 128")))?
            }
        };
        Cidr::new(ip, prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AddressClass::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    fn strict() -> DestinationPolicy {
        DestinationPolicy::new()
    }

    /// The `reason` of an `InvalidInput { field: "url" }`, or panic.
    fn invalid_reason(policy: &DestinationPolicy, url: &str) -> String {
        match policy.check_url(url) {
            Err(Error::InvalidInput { field, reason }) => {
                assert_eq!(field, "url");
                reason
            }
            other => panic!("{url:?}: expected InvalidInput, got {other:?}"),
        }
    }

    /// The `reason` of a `DestinationRefused`, or panic.
    fn refused_reason(policy: &DestinationPolicy, url: &str) -> String {
        match policy.check_url(url) {
            Err(Error::DestinationRefused { reason }) => reason,
            other => panic!("{url:?}: expected DestinationRefused, got {other:?}"),
        }
    }

    #[test]
    fn classifies_ipv4() {
        let cases = [
            ("0.0.0.0", Unspecified),
            ("0.1.2.3", Unspecified),
            ("10.0.0.1", Private),
            ("10.255.255.255", Private),
            ("172.16.0.1", Private),
            ("172.31.255.255", Private),
            ("192.168.1.1", Private),
            ("127.0.0.1", Loopback),
            ("127.255.0.9", Loopback),
            ("169.254.0.1", LinkLocal),
            ("169.254.169.254", CloudMetadata),
            ("100.100.100.200", CloudMetadata),
            ("100.64.0.1", SharedCgnat),
            ("100.127.255.255", SharedCgnat),
            ("224.0.0.1", Multicast),
            ("239.255.255.250", Multicast),
            ("240.0.0.1", Reserved),
            ("255.255.255.254", Reserved),
            ("255.255.255.255", Broadcast),
            ("192.0.0.1", Reserved),
            ("192.0.0.170", Reserved),
            ("192.88.99.1", Reserved),
            ("192.0.2.1", Documentation),
            ("198.51.100.7", Documentation),
            ("203.0.113.255", Documentation),
            ("198.18.0.1", Benchmarking),
            ("198.19.255.255", Benchmarking),
        ];
        for (s, class) in cases {
            assert_eq!(classify(ip(s)), Some(class), "{s}");
        }
    }

    #[test]
    fn public_ipv4_is_public() {
        for s in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.216.34",
            "172.15.255.255",
            "172.32.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "169.253.255.255",
            "198.17.255.255",
            "198.20.0.0",
            "192.0.0.9",
            "192.0.0.10",
            "192.0.3.1",
            "223.255.255.255",
            "11.0.0.1",
            "126.255.255.255",
            "128.0.0.1",
        ] {
            assert_eq!(classify(ip(s)), None, "{s}");
        }
    }

    #[test]
    fn classifies_ipv6() {
        let cases = [
            ("::", Unspecified),
            ("::1", Loopback),
            ("fe80::1", LinkLocal),
            ("febf::1", LinkLocal),
            ("fc00::1", Private),
            ("fd12:3456::1", Private),
            ("fec0::1", Private),
            ("64:ff9b:1::1", Private),
            ("ff02::1", Multicast),
            ("ff0e::1", Multicast),
            ("2001:db8::1", Documentation),
            ("3fff::1", Documentation),
            ("2001:2::1", Benchmarking),
            ("fd00:ec2::254", CloudMetadata),
            ("100::1", Reserved),
            ("2001::1", Reserved),     // Teredo
            ("2001:10::1", Reserved),  // ORCHID (deprecated)
            ("2001:1ff::1", Reserved), // end of 2001::/23
            ("4000::1", Reserved),     // outside 2000::/3
            ("1::1", Reserved),
            ("5f00::1", Reserved),      // SRv6 SIDs
            ("64:ff9b:2::1", Reserved), // 64:ff9b::/32 but not the /96
        ];
        for (s, class) in cases {
            assert_eq!(classify(ip(s)), Some(class), "{s}");
        }
    }

    #[test]
    fn public_ipv6_is_public() {
        for s in [
            "2606:4700::1111",
            "2001:4860:4860::8888",
            "2a00:1450::1",
            "2001:200::1",   // just past 2001::/23
            "2001:1::1",     // PCP anycast
            "2001:1::2",     // TURN anycast
            "2001:3::1",     // AMT
            "2001:4:112::1", // AS112
            "2001:20::1",    // ORCHIDv2
            "2001:db9::1",
            "3ffe::1",
        ] {
            assert_eq!(classify(ip(s)), None, "{s}");
        }
    }

    #[test]
    fn classifies_embedded_ipv4() {
        let cases = [
            // IPv4-mapped
            ("::ffff:127.0.0.1", Some(Loopback)),
            ("::ffff:10.0.0.1", Some(Private)),
            ("::ffff:169.254.169.254", Some(CloudMetadata)),
            ("::ffff:0.0.0.0", Some(Unspecified)),
            ("::ffff:100.64.0.1", Some(SharedCgnat)),
            ("::ffff:224.0.0.1", Some(Multicast)),
            ("::ffff:255.255.255.255", Some(Broadcast)),
            ("::ffff:192.0.2.1", Some(Documentation)),
            ("::ffff:8.8.8.8", None),
            // IPv4-translated (SIIT)
            ("::ffff:0:127.0.0.1", Some(Loopback)),
            ("::ffff:0:8.8.8.8", Some(Reserved)),
            // IPv4-compatible (deprecated)
            ("::127.0.0.1", Some(Loopback)),
            ("::10.1.2.3", Some(Private)),
            ("::169.254.169.254", Some(CloudMetadata)),
            ("::0.0.0.2", Some(Unspecified)),
            ("::8.8.8.8", Some(Reserved)),
            // NAT64
            ("64:ff9b::127.0.0.1", Some(Loopback)),
            ("64:ff9b::a9fe:a9fe", Some(CloudMetadata)),
            ("64:ff9b::192.168.0.1", Some(Private)),
            ("64:ff9b::8.8.8.8", None),
            // 6to4: 2002:AABB:CCDD::/48 embeds AA.BB.CC.DD
            ("2002:7f00:1::", Some(Loopback)),
            ("2002:7f00:1:1::5", Some(Loopback)),
            ("2002:a00:1::1", Some(Private)),
            ("2002:a9fe:a9fe::", Some(CloudMetadata)),
            ("2002:c000:201::", Some(Documentation)),
            ("2002:808:808::1", None),
        ];
        for (s, class) in cases {
            assert_eq!(classify(ip(s)), class, "{s}");
        }
    }

    #[test]
    fn refusal_display_and_accessors() {
        let policy = strict();
        let r = policy.check_ip(ip("127.0.0.1")).unwrap_err();
        assert_eq!(r.to_string(), "127.0.0.1 is a loopback address");
        assert_eq!(r.ip(), ip("127.0.0.1"));
        assert_eq!(r.class(), Loopback);
        let r = policy.check_ip(ip("169.254.169.254")).unwrap_err();
        assert_eq!(r.to_string(), "169.254.169.254 is a cloud metadata address");
        let r = policy.check_ip(ip("::ffff:127.0.0.1")).unwrap_err();
        assert_eq!(r.to_string(), "::ffff:127.0.0.1 is a loopback address");
        let r = policy.check_ip(ip("64:ff9b::7f00:1")).unwrap_err();
        assert_eq!(
            r.to_string(),
            "64:ff9b::7f00:1 is a loopback address (it embeds 127.0.0.1)"
        );
        let r = policy.check_ip(ip("0.0.0.0")).unwrap_err();
        assert_eq!(r.to_string(), "0.0.0.0 is an unspecified address");
        assert_eq!(Loopback.to_string(), "loopback address");
        assert_eq!(Unspecified.to_string(), "unspecified address");
        let err: Error = r.into();
        assert!(matches!(
            &err,
            Error::DestinationRefused { reason } if reason == "0.0.0.0 is an unspecified address"
        ));
        assert_eq!(
            err.to_string(),
            "destination refused: 0.0.0.0 is an unspecified address"
        );
    }

    #[test]
    fn check_ip_allows_public() {
        for s in [
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:1.1.1.1",
            "64:ff9b::1.1.1.1",
        ] {
            assert_eq!(strict().check_ip(ip(s)), Ok(()), "{s}");
        }
    }

    #[test]
    fn allow_loopback_lifts_only_loopback() {
        let policy = strict().allow_loopback(true);
        for s in [
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "::ffff:127.0.0.1",
            "::127.0.0.1",
        ] {
            assert_eq!(policy.check_ip(ip(s)), Ok(()), "{s}");
        }
        for s in [
            "0.0.0.0",
            "::",
            "10.0.0.1",
            "192.168.0.1",
            "169.254.169.254",
            "169.254.1.1",
            "100.64.0.1",
            "fe80::1",
            "fd00::1",
            "224.0.0.1",
            "255.255.255.255",
        ] {
            assert!(policy.check_ip(ip(s)).is_err(), "{s}");
        }
        assert!(policy.check_url("https://127.0.0.1:8080/hook").is_ok());
        assert!(policy.check_url("https://[::1]/hook").is_ok());
        assert!(policy.check_url("https://localhost:3000/hook").is_ok());
        assert!(policy.check_url("https://api.localhost/hook").is_ok());
        assert!(policy.check_url("https://10.0.0.1/").is_err());
        // Still https only.
        assert!(policy.check_url("http://localhost/").is_err());
        assert!(
            policy
                .clone()
                .allow_http(true)
                .check_url("http://localhost/")
                .is_ok()
        );
    }

    #[test]
    fn allow_private_lifts_only_private() {
        let policy = strict().allow_private(true);
        for s in [
            "10.0.0.1",
            "172.16.5.5",
            "192.168.1.1",
            "fd00::1",
            "::ffff:10.0.0.1",
        ] {
            assert_eq!(policy.check_ip(ip(s)), Ok(()), "{s}");
        }
        for s in [
            "127.0.0.1",
            "169.254.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "fe80::1",
            "0.0.0.0",
        ] {
            assert!(policy.check_ip(ip(s)).is_err(), "{s}");
        }
        assert!(policy.check_url("https://localhost/").is_err());
    }

    #[test]
    fn cidr_allow_list_lifts_only_inside() {
        let policy = strict().allow_cidr(cidr("10.1.0.0/16"));
        assert_eq!(policy.check_ip(ip("10.1.2.3")), Ok(()));
        assert_eq!(policy.check_ip(ip("10.1.255.255")), Ok(()));
        assert_eq!(policy.check_ip(ip("::ffff:10.1.2.3")), Ok(()));
        assert_eq!(
            policy.check_ip(ip("10.2.0.1")).unwrap_err().class(),
            Private
        );
        assert!(policy.check_ip(ip("192.168.0.1")).is_err());
        assert!(policy.check_ip(ip("127.0.0.1")).is_err());
        assert!(policy.check_url("https://10.1.0.5/hook").is_ok());
        assert!(policy.check_url("https://10.0.0.5/hook").is_err());

        let policy = strict()
            .allow_cidr(cidr("fd00::/8"))
            .allow_cidr(cidr("169.254.169.254/32"))
            .allow_cidr(cidr("127.0.0.0/8"))
            .allow_cidr(cidr("0.0.0.0/0"));
        assert_eq!(policy.check_ip(ip("fd12::1")), Ok(()));
        assert!(policy.check_ip(ip("fc00::1")).is_err());
        assert!(policy.check_url("https://[fd00::5]/").is_ok());
        // The allow-list wins over every class but unspecified.
        assert_eq!(policy.check_ip(ip("169.254.169.254")), Ok(()));
        assert_eq!(policy.check_ip(ip("127.0.0.1")), Ok(()));
        assert_eq!(policy.check_ip(ip("224.0.0.1")), Ok(()));
        assert_eq!(
            policy.check_ip(ip("0.0.0.0")).unwrap_err().class(),
            Unspecified
        );
        assert!(
            strict()
                .allow_cidr(cidr("::/0"))
                .check_ip(ip("::"))
                .is_err()
        );
        // Names are not addresses: the allow-list does not lift them.
        assert!(policy.check_url("https://localhost/").is_err());
        assert!(
            policy
                .check_url("https://metadata.google.internal/")
                .is_err()
        );
    }

    #[test]
    fn cidr_parsing() {
        let c = cidr("10.1.0.0/16");
        assert_eq!(c.network(), ip("10.1.0.0"));
        assert_eq!(c.prefix_len(), 16);
        assert_eq!(c.to_string(), "10.1.0.0/16");
        // Host bits are cleared.
        assert_eq!(cidr("10.1.2.3/16"), c);
        assert_eq!(cidr("10.1.2.3/16").to_string(), "10.1.0.0/16");
        assert_eq!(cidr("fd00::1/8").to_string(), "fd00::/8");
        // Bare addresses are single-address blocks.
        assert_eq!(cidr("10.1.2.3").to_string(), "10.1.2.3/32");
        assert_eq!(cidr("::1").to_string(), "::1/128");
        assert_eq!(cidr("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert_eq!(cidr("::/0").to_string(), "::/0");
        assert_eq!(cidr("1.2.3.4/32").prefix_len(), 32);
        assert_eq!(cidr("::/128").prefix_len(), 128);

        for bad in [
            "",
            "garbage",
            "10.1.0.0/",
            "10.1.0.0/33",
            "10.1.0.0/-1",
            "10.1.0.0/+8",
            "10.1.0.0/8/8",
            "10.1.0.0/ 8",
            " 10.1.0.0/8",
            "10.1.0.0/0008",
            "10.1.0.0/abc",
            "fd00::/129",
            "fd00::/256",
            "fd00::/99999999999",
            "10.1/16",
            "fe80::1%eth0/64",
            "/8",
            "[::1]/128",
        ] {
            match bad.parse::<Cidr>() {
                Err(Error::InvalidInput { field, reason }) => {
                    assert_eq!(field, "cidr", "{bad:?}");
                    assert!(!reason.is_empty());
                }
                other => panic!("{bad:?}: expected InvalidInput, got {other:?}"),
            }
        }
        let err = "10.0.0.0/33".parse::<Cidr>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid cidr: prefix length 33 is over 32 for an IPv4 address"
        );
        let err = "nope/8".parse::<Cidr>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid cidr: \"nope\" is not an IPv4 or IPv6 address"
        );
        assert!(Cidr::new(ip("::"), 129).is_err());
        assert_eq!(Cidr::new(ip("10.9.9.9"), 8).unwrap(), cidr("10.0.0.0/8"));
    }

    #[test]
    fn cidr_contains() {
        let c = cidr("10.1.0.0/16");
        assert!(c.contains(ip("10.1.0.0")));
        assert!(c.contains(ip("10.1.255.255")));
        assert!(!c.contains(ip("10.0.255.255")));
        assert!(!c.contains(ip("10.2.0.0")));
        assert!(c.contains(ip("::ffff:10.1.2.3")));
        assert!(!c.contains(ip("::10.1.2.3")));
        assert!(!c.contains(ip("64:ff9b::10.1.2.3")));
        let all4 = cidr("0.0.0.0/0");
        assert!(all4.contains(ip("255.255.255.255")));
        assert!(!all4.contains(ip("2606:4700::1")));
        let v6 = cidr("fd00::/8");
        assert!(v6.contains(ip("fdff:ffff::1")));
        assert!(!v6.contains(ip("fc00::1")));
        assert!(!v6.contains(ip("10.0.0.1")));
        assert!(cidr("::ffff:0:0/96").contains(ip("1.2.3.4")));
        assert!(cidr("::/0").contains(ip("2606:4700::1")));
        assert!(cidr("1.2.3.4").contains(ip("1.2.3.4")));
        assert!(!cidr("1.2.3.4").contains(ip("1.2.3.5")));
    }

    #[test]
    fn accepts_normal_urls() {
        let policy = strict();
        for s in [
            "https://example.com/hook",
            "https://example.com",
            "https://example.com:8443/a/b?x=1&y=2",
            "https://93.184.216.34/",
            "https://[2606:4700::1111]/",
            "https://[::ffff:8.8.8.8]/",
            "https://xn--bcher-kva.example/",
            "https://bücher.example/hook",
            "https://example.com/path with space",
            "https://example.com./hook",
            "https://hooks.internal/x", // names resolve later: checked by check_ip
        ] {
            let url = policy
                .check_url(s)
                .unwrap_or_else(|e| panic!("{s:?} refused: {e}"));
            assert_eq!(url.scheme(), "https");
        }
        let url = policy.check_url("https://Example.COM:443/Hook").unwrap();
        assert_eq!(url.as_str(), "https://example.com/Hook");
        let url = policy.check_url("https://bücher.example/").unwrap();
        assert_eq!(url.host_str(), Some("xn--bcher-kva.example"));
    }

    #[test]
    fn http_only_when_allowed() {
        let reason = invalid_reason(&strict(), "http://example.com/hook");
        assert_eq!(reason, "scheme \"http\" is not allowed; use https");
        let policy = strict().allow_http(true);
        assert!(policy.check_url("http://example.com/hook").is_ok());
        assert!(policy.check_url("https://example.com/hook").is_ok());
        assert!(refused_reason(&policy, "http://127.0.0.1/").contains("loopback"));
        let reason = invalid_reason(&policy, "ftp://example.com/");
        assert_eq!(reason, "scheme \"ftp\" is not allowed; use https or http");
    }

    #[test]
    fn refuses_bad_schemes() {
        for (url, scheme) in [
            ("ftp://example.com/file", "ftp"),
            ("file:///etc/passwd", "file"),
            ("javascript:alert(1)", "javascript"),
            ("data:text/plain,hi", "data"),
            ("gopher://example.com/", "gopher"),
            ("ws://example.com/", "ws"),
            ("wss://example.com/", "wss"),
            ("HTTPS-evil://example.com/", "https-evil"),
            ("localhost:8080", "localhost"),
        ] {
            let reason = invalid_reason(&strict(), url);
            assert!(reason.contains(&format!("\"{scheme}\"")), "{url}: {reason}");
        }
    }

    #[test]
    fn refuses_bad_shapes() {
        let policy = strict();
        assert_eq!(invalid_reason(&policy, ""), "is empty");
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        assert!(invalid_reason(&policy, &long).contains("over the limit of 2048 bytes"));
        let exact = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN - 20));
        assert_eq!(exact.len(), MAX_URL_LEN);
        assert!(policy.check_url(&exact).is_ok());
        // Under the limit as given, over it once percent-encoded.
        let expands = format!("https://example.com/{}", "é".repeat(700));
        assert!(expands.len() <= MAX_URL_LEN);
        assert!(invalid_reason(&policy, &expands).contains("once normalized"));

        assert!(invalid_reason(&policy, "https://example.com/hook#frag").contains("fragment"));
        assert!(invalid_reason(&policy, "https://example.com/#").contains("fragment"));
        assert!(invalid_reason(&policy, "/hook").contains("not an absolute URL"));
        assert!(invalid_reason(&policy, "example.com/hook").contains("not an absolute URL"));
        assert!(invalid_reason(&policy, "https://").contains("could not be parsed"));
        assert!(invalid_reason(&policy, "https://exa mple.com/").contains("could not be parsed"));
        assert!(invalid_reason(&policy, "https://[::1/").contains("could not be parsed"));
        assert!(
            invalid_reason(&policy, "https://example.com:99999/").contains("could not be parsed")
        );
        assert_eq!(
            invalid_reason(&policy, "https://example.com:0/"),
            "port 0 is not allowed"
        );
        assert!(invalid_reason(&policy, " https://example.com/").contains("whitespace"));
        assert!(invalid_reason(&policy, "https://example.com/ ").contains("whitespace"));
    }

    #[test]
    fn refuses_userinfo_without_echoing_it() {
        let policy = strict();
        for url in [
            "https://user:hunter2@example.com/",
            "https://user@example.com/",
            "https://:hunter2@example.com/",
            "https://user:@example.com/",
            "https://example.com\\@evil.com/",
        ] {
            match policy.check_url(url) {
                Err(Error::InvalidInput { reason, .. }) => {
                    assert!(reason.contains("username or password"), "{url}: {reason}");
                    assert!(!reason.contains("hunter2"));
                }
                // `\` is a path separator for https: host example.com, path `/@evil.com/`.
                Ok(parsed) if url.contains('\\') => {
                    assert_eq!(parsed.host_str(), Some("example.com"));
                }
                other => panic!("{url}: {other:?}"),
            }
        }
    }

    #[test]
    fn refuses_control_characters_before_parsing() {
        let policy = strict();
        for url in [
            "https://a\u{0}b@example.com/",
            "https://user:pa\u{0}ss@example.com/",
            "https://exa\tmple.com/",
            "https://example.com/ho\nok",
            "https://example.com/\r\n",
            "\thttps://example.com/",
            "https://example.com/\u{7f}",
            "https://example.com/\u{85}",
            "https://127.0.0.\n1/",
        ] {
            let reason = invalid_reason(&policy, url);
            assert!(reason.contains("control character"), "{url:?}: {reason}");
            assert!(!reason.contains("pa"), "{reason}");
        }
        assert_eq!(
            invalid_reason(&policy, "https://exa\tmple.com/"),
            "contains a control character (U+0009 at byte 11)"
        );
    }

    #[test]
    fn numeric_ipv4_forms_are_normalized_and_checked() {
        let policy = strict();
        for (url, shown) in [
            ("https://2130706433/", "127.0.0.1"),
            ("https://0x7f.1/", "127.0.0.1"),
            ("https://0x7f000001/", "127.0.0.1"),
            ("https://017700000001/", "127.0.0.1"),
            ("https://0177.0.0.1/", "127.0.0.1"),
            ("https://127.1/", "127.0.0.1"),
            ("https://127.0.1/", "127.0.0.1"),
            ("https://0/", "0.0.0.0"),
            ("https://2852039166/", "169.254.169.254"),
            ("https://0xa9.0xfe.0xa9.0xfe/", "169.254.169.254"),
            ("https://0251.0376.0251.0376/", "169.254.169.254"),
            ("https://167772161/", "10.0.0.1"),
            ("https://①②⑦.0.0.1/", "127.0.0.1"),
            ("https://127。0。0。1/", "127.0.0.1"),
        ] {
            let reason = refused_reason(&policy, url);
            assert!(
                reason.starts_with(&format!("{shown} is ")),
                "{url}: {reason}"
            );
        }
        // And the normalized form is what comes back when allowed.
        let url = strict()
            .allow_loopback(true)
            .check_url("https://0x7f.1:8080/x")
            .unwrap();
        assert_eq!(url.as_str(), "https://127.0.0.1:8080/x");
        let url = strict().check_url("https://1572395042/").unwrap();
        assert_eq!(url.host_str(), Some("93.184.216.34"));
        // Not an address and not a valid name either.
        assert!(invalid_reason(&policy, "https://1.2.3.4.5/").contains("could not be parsed"));
        assert!(invalid_reason(&policy, "https://4294967296/").contains("could not be parsed"));
    }

    #[test]
    fn refuses_private_ip_literals() {
        let policy = strict();
        for (url, class) in [
            ("https://127.0.0.1/", "loopback"),
            ("https://10.0.0.1/", "private"),
            ("https://172.16.0.1/", "private"),
            ("https://192.168.0.1/", "private"),
            (
                "https://169.254.169.254/latest/meta-data/",
                "cloud metadata",
            ),
            ("https://169.254.1.1/", "link-local"),
            ("https://100.100.100.200/", "cloud metadata"),
            ("https://100.64.0.1/", "shared"),
            ("https://0.0.0.0/", "unspecified"),
            ("https://224.0.0.1/", "multicast"),
            ("https://255.255.255.255/", "broadcast"),
            ("https://240.0.0.1/", "reserved"),
            ("https://192.0.2.1/", "documentation"),
            ("https://198.18.0.1/", "benchmarking"),
            ("https://[::1]/", "loopback"),
            ("https://[::]/", "unspecified"),
            ("https://[fe80::1]/", "link-local"),
            ("https://[fd00::1]/", "private"),
            ("https://[ff02::1]/", "multicast"),
            ("https://[2001:db8::1]/", "documentation"),
            ("https://[fd00:ec2::254]/", "cloud metadata"),
            ("https://[100::1]/", "reserved"),
            ("https://[::ffff:127.0.0.1]/", "loopback"),
            ("https://[::ffff:7f00:1]/", "loopback"),
            ("https://[::ffff:169.254.169.254]/", "cloud metadata"),
            ("https://[::127.0.0.1]/", "loopback"),
            ("https://[64:ff9b::127.0.0.1]/", "loopback"),
            ("https://[64:ff9b::a9fe:a9fe]/", "cloud metadata"),
            ("https://[2002:7f00:1::]/", "loopback"),
            ("https://[2002:a9fe:a9fe::1]/", "cloud metadata"),
        ] {
            let reason = refused_reason(&policy, url);
            assert!(reason.contains(&format!(" {class} ")), "{url}: {reason}");
        }
        assert_eq!(
            refused_reason(&policy, "https://169.254.169.254/"),
            "169.254.169.254 is a cloud metadata address"
        );
    }

    #[test]
    fn refuses_fixed_names() {
        let policy = strict();
        for url in [
            "https://localhost/",
            "https://LOCALHOST:8080/",
            "https://localhost./",
            "https://foo.localhost/",
            "https://a.b.localhost./",
            "https://localhost.localdomain/",
            "https://ｌｏｃａｌｈｏｓｔ/",
        ] {
            let reason = refused_reason(&policy, url);
            assert!(reason.ends_with("is a loopback name"), "{url}: {reason}");
        }
        for url in [
            "https://metadata.google.internal/computeMetadata/v1/",
            "https://METADATA.google.internal./",
            "https://metadata.goog/",
        ] {
            let reason = refused_reason(&policy, url);
            assert!(
                reason.ends_with("is a cloud metadata name"),
                "{url}: {reason}"
            );
            // allow_loopback does not lift them.
            assert!(strict().allow_loopback(true).check_url(url).is_err());
        }
        assert_eq!(
            refused_reason(&policy, "https://localhost/"),
            "host \"localhost\" is a loopback name"
        );
        // Look-alikes are ordinary names.
        for url in [
            "https://localhost.example.com/",
            "https://notlocalhost/",
            "https://mylocalhost.com/",
            "https://metadata.google.internal.example.com/",
        ] {
            assert!(policy.check_url(url).is_ok(), "{url}");
        }
    }

    /// Tiny xorshift64* generator: deterministic, no dependency.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn random_inputs_never_panic_and_accepted_urls_obey_the_rules() {
        const PIECES: &[&str] = &[
            "https://",
            "http://",
            "ftp://",
            "file:",
            "javascript:",
            "//",
            "/",
            "\\",
            ":",
            "@",
            "#",
            "?",
            "&",
            "=",
            "%",
            "%00",
            "%2e",
            ".",
            "..",
            "[",
            "]",
            "::",
            "::ffff:",
            "64:ff9b::",
            "2002:",
            "fe80::",
            "127.0.0.1",
            "169.254.169.254",
            "0x7f",
            "0177",
            "2130706433",
            "localhost",
            "example.com",
            "xn--",
            "ü",
            "①",
            "。",
            "ｌ",
            " ",
            "\t",
            "\n",
            "\0",
            "\u{7f}",
            "a",
            "Z",
            "0",
            "9",
            "-",
            "_",
            "~",
            ":0",
            ":443",
            ":65536",
            "user:pw@",
            "%40",
            "\u{200b}",
            "\u{fffd}",
            "é",
        ];
        let policies = [
            strict(),
            strict().allow_http(true).allow_loopback(true),
            strict()
                .allow_private(true)
                .allow_cidr(cidr("169.254.0.0/16")),
        ];
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut accepted = 0;
        for i in 0..20_000 {
            let mut s = String::new();
            if i % 2 == 0 {
                s.push_str("https://");
            }
            if i % 7 == 0 {
                // Pure noise: arbitrary chars, including non-ASCII.
                for _ in 0..rng.below(40) {
                    let c = char::from_u32((rng.next() % 0x3000) as u32).unwrap_or('?');
                    s.push(c);
                }
            } else {
                for _ in 0..rng.below(12) {
                    s.push_str(PIECES[rng.below(PIECES.len())]);
                }
            }
            let policy = &policies[i % policies.len()];
            let _ = s.parse::<Cidr>();
            if let Ok(url) = policy.check_url(&s) {
                accepted += 1;
                assert!(matches!(url.scheme(), "https" | "http"), "{s:?}");
                assert!(
                    url.username().is_empty() && url.password().is_none(),
                    "{s:?}"
                );
                assert!(url.fragment().is_none(), "{s:?}");
                assert!(url.host().is_some() && url.port() != Some(0), "{s:?}");
                assert!(url.as_str().len() <= MAX_URL_LEN, "{s:?}");
                assert!(!s.chars().any(char::is_control), "{s:?}");
                match url.host() {
                    Some(Host::Ipv4(v4)) => assert!(policy.check_ip(v4.into()).is_ok()),
                    Some(Host::Ipv6(v6)) => assert!(policy.check_ip(v6.into()).is_ok()),
                    _ => {}
                }
                // Checking the normalized URL again gives the same URL.
                assert_eq!(
                    policy.check_url(url.as_str()).as_ref().ok(),
                    Some(&url),
                    "{s:?}"
                );
            }
        }
        assert!(accepted > 100, "the generator never produced a valid URL");
    }
}
