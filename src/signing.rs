//! Standard Webhooks signatures, with no I/O: symmetric `v1` (HMAC-SHA256)
//! and asymmetric `v1a` (Ed25519).
//!
//! A sender signs the content `{msg_id}.{timestamp}.{body}` with each of its
//! endpoint's keys and sends three headers:
//!
//! * [`HEADER_ID`] (`webhook-id`): the message id, unique per message and the
//!   same on every retry;
//! * [`HEADER_TIMESTAMP`] (`webhook-timestamp`): integer Unix seconds, as
//!   decimal text;
//! * [`HEADER_SIGNATURE`] (`webhook-signature`): one or more entries separated
//!   by a single space: `v1,<base64>` where `<base64>` is the standard
//!   (padded) base64 of the 32-byte HMAC-SHA256, and `v1a,<base64>` for the
//!   64-byte Ed25519 signature.
//!
//! HMAC secrets are written `whsec_` followed by the standard base64 of the
//! key bytes ([`SigningSecret`]). Ed25519 keys are written `whsk_` (secret:
//! seed and public key, [`Ed25519SecretKey`]) and `whpk_` (public,
//! [`Ed25519PublicKey`]); a receiver holding only the public key cannot forge
//! webhooks.
//!
//! The sending side is [`Signer`] (one pre-keyed signer per key), [`sign`]
//! (the whole header value) and [`sign_into`] (the same into a reused
//! `String`, without allocating). The receiving side is [`Verifier`], which
//! holds HMAC secrets and Ed25519 public keys, and the shorthands [`verify`]
//! and [`verify_headers`] for HMAC secrets; all fail with a [`VerifyError`].
//!
//! While an endpoint moves from `v1` to `v1a`, the sender signs with both
//! keys (`v1,… v1a,…`) and each receiver verifies the entry it has a key for.
//!
//! ```
//! use keyhook::signing::{self, Ed25519SecretKey, Signer, SigningSecret, Verifier};
//! use std::time::SystemTime;
//!
//! let secret = SigningSecret::generate()?;
//! let key = Ed25519SecretKey::generate()?;
//! let signers = [Signer::new(&secret), Signer::ed25519(&key)];
//! let header = signing::sign(&signers, "msg_1", 1_700_000_000, b"{}");
//! assert!(header.starts_with("v1,") && header.contains(" v1a,"));
//!
//! // A receiver that was given only the public key (`whpk_...`).
//! let public = key.public_key().to_string();
//! let verifier = Verifier::new().with_public_key(&public.parse()?);
//! let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
//! verifier.verify(Some("msg_1"), Some("1700000000"), Some(&header), b"{}", now)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::alphabet;
use base64::engine::general_purpose::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use rand::TryRngCore as _;
use subtle::ConstantTimeEq;

use crate::error::Error;

mod ed25519;
mod mac;

pub use ed25519::{Ed25519PublicKey, Ed25519SecretKey};

use ed25519::{Ed25519Signer, SIG_LEN};
use mac::{KeyedMac, MAC_LEN, TS_BUF_LEN, b64_len, dotted_i64, encode_b64, encode_mac_words};

/// Name of the header carrying the message id.
pub const HEADER_ID: &str = "webhook-id";

/// Name of the header carrying the send time, in integer Unix seconds.
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";

/// Name of the header carrying the space-separated `v1,<base64>` and
/// `v1a,<base64>` signatures.
pub const HEADER_SIGNATURE: &str = "webhook-signature";

/// Prefix of an HMAC secret's text form.
pub const SECRET_PREFIX: &str = "whsec_";

/// Prefix of an Ed25519 secret key's text form.
pub const SECRET_KEY_PREFIX: &str = "whsk_";

/// Prefix of an Ed25519 public key's text form.
pub const PUBLIC_KEY_PREFIX: &str = "whpk_";

/// Shortest accepted secret, in key bytes.
pub const MIN_SECRET_LEN: usize = 24;

/// Longest accepted secret, in key bytes.
pub const MAX_SECRET_LEN: usize = 64;

/// How far a message's timestamp may be from the receiver's clock, either way,
/// in [`verify_headers`] and by default in [`Verifier`].
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// Longest `webhook-signature` header [`verify`] looks at, in bytes.
///
/// Longer headers are rejected before any work is done on them.
pub const MAX_SIGNATURE_HEADER_LEN: usize = 8 * 1024;

/// Most `v1a` entries of one header a [`Verifier`] checks; later ones are
/// ignored.
///
/// An Ed25519 verification costs about a thousand HMACs, so a header stuffed
/// with signatures could otherwise make a receiver spend milliseconds per
/// request. Senders sign with one or two keys at a time.
pub const MAX_V1A_ENTRIES: usize = 4;

/// Longest single signature entry, `v1a,` and the 88 base64 characters of an
/// Ed25519 signature: the size of the buffer [`Signer::sign_into`] writes to.
pub const MAX_ENTRY_LEN: usize = V1A_PREFIX.len() + V1A_B64_LEN;

/// Length of the padded standard base64 of a MAC.
const MAC_B64_LEN: usize = b64_len(MAC_LEN);

/// Length of the padded standard base64 of an Ed25519 signature.
const V1A_B64_LEN: usize = b64_len(SIG_LEN);

const V1_PREFIX: &str = "v1,";
const V1A_PREFIX: &str = "v1a,";

/// Length of one `v1,<base64>` header entry.
const ENTRY_LEN: usize = V1_PREFIX.len() + MAC_B64_LEN;

/// Longest base64 text of an accepted secret (64 bytes, padded).
const MAX_SECRET_B64_LEN: usize = MAX_SECRET_LEN.div_ceil(3) * 4;

/// Standard alphabet, padding optional: used to read secrets and keys only.
const SECRET_B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

// ---------------------------------------------------------------------------
// Secrets
// ---------------------------------------------------------------------------

/// An endpoint's signing key: 24 to 64 bytes, written `whsec_<base64>`.
///
/// `Debug` never shows the key, and there is no `Display`; use
/// [`SigningSecret::expose`] to get the text form on purpose. Equality is
/// compared in constant time.
#[derive(Clone)]
pub struct SigningSecret {
    key: Vec<u8>,
}

impl SigningSecret {
    /// A new secret of 32 bytes from the operating system's random source.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the operating system's random source fails.
    pub fn generate() -> Result<SigningSecret, Error> {
        let mut key = vec![0u8; 32];
        rand::rngs::OsRng
            .try_fill_bytes(&mut key)
            .map_err(|e| Error::Io(std::io::Error::other(e)))?;
        Ok(SigningSecret { key })
    }

    /// Reads a secret in its text form: `whsec_` followed by the standard
    /// base64 of the key bytes.
    ///
    /// Like the reference libraries, the `whsec_` prefix is optional. Padding
    /// is optional too, and surrounding ASCII whitespace is ignored.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] with field `"secret"` if the text is empty, is
    /// not standard base64, or does not decode to 24 to 64 bytes. The error
    /// never contains the text.
    pub fn parse(s: &str) -> Result<SigningSecret, Error> {
        let s = s.trim_ascii();
        let b64 = s.strip_prefix(SECRET_PREFIX).unwrap_or(s);
        if b64.is_empty() {
            return Err(Error::invalid("secret", "is empty"));
        }
        if b64.len() > MAX_SECRET_B64_LEN {
            return Err(Error::invalid(
                "secret",
                format!("is too long: keys are {MIN_SECRET_LEN} to {MAX_SECRET_LEN} bytes"),
            ));
        }
        let mut buf = [0u8; MAX_SECRET_B64_LEN];
        let n = SECRET_B64
            .decode_slice(b64, &mut buf)
            .map_err(|_| Error::invalid("secret", "is not valid base64"))?;
        SigningSecret::from_bytes(&buf[..n])
    }

    /// A secret with these key bytes.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] with field `"secret"` unless there are 24 to 64
    /// bytes.
    pub fn from_bytes(key: &[u8]) -> Result<SigningSecret, Error> {
        if !(MIN_SECRET_LEN..=MAX_SECRET_LEN).contains(&key.len()) {
            return Err(Error::invalid(
                "secret",
                format!(
                    "key is {} bytes; it must be {MIN_SECRET_LEN} to {MAX_SECRET_LEN}",
                    key.len()
                ),
            ));
        }
        Ok(SigningSecret { key: key.to_vec() })
    }

    /// The secret's text form, `whsec_<base64>`, as given to the endpoint's
    /// owner.
    ///
    /// This is the secret itself: handle it with care, and never log it.
    pub fn expose(&self) -> String {
        let mut s = String::with_capacity(SECRET_PREFIX.len() + MAX_SECRET_B64_LEN);
        s.push_str(SECRET_PREFIX);
        STANDARD.encode_string(&self.key, &mut s);
        s
    }

    /// The key bytes. Handle with care.
    pub fn as_bytes(&self) -> &[u8] {
        &self.key
    }
}

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningSecret(whsec_…redacted)")
    }
}

impl PartialEq for SigningSecret {
    fn eq(&self, other: &Self) -> bool {
        // Lengths are not secret; `ct_eq` on slices of unequal length is false.
        bool::from(self.key.as_slice().ct_eq(other.key.as_slice()))
    }
}

impl Eq for SigningSecret {}

impl FromStr for SigningSecret {
    type Err = Error;

    /// Same as [`SigningSecret::parse`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SigningSecret::parse(s)
    }
}

// ---------------------------------------------------------------------------
// Signing
// ---------------------------------------------------------------------------

/// A pre-keyed signer for one key: build it once per key and sign many
/// messages with it.
///
/// [`Signer::new`] signs `v1` (HMAC-SHA256 with a [`SigningSecret`]);
/// [`Signer::ed25519`] signs `v1a` (Ed25519 with an [`Ed25519SecretKey`]).
/// An HMAC signer keeps the key's inner and outer hash states, so each
/// signature starts from a copy of them; an Ed25519 signer keeps the
/// expanded secret key. Neither concatenates the signed content, and
/// [`Signer::sign_into`] does not allocate.
#[derive(Clone)]
pub struct Signer {
    scheme: Scheme,
}

#[derive(Clone)]
enum Scheme {
    V1(KeyedMac),
    // Boxed: an HMAC signer is 64 bytes, an Ed25519 one about 290.
    V1a(Box<Ed25519Signer>),
}

impl Signer {
    /// A `v1` (HMAC-SHA256) signer for this secret.
    pub fn new(secret: &SigningSecret) -> Signer {
        Signer {
            scheme: Scheme::V1(KeyedMac::new(secret.as_bytes())),
        }
    }

    /// A `v1a` (Ed25519) signer for this secret key.
    pub fn ed25519(key: &Ed25519SecretKey) -> Signer {
        Signer {
            scheme: Scheme::V1a(Box::new(key.signer())),
        }
    }

    /// The version its entries carry: `"v1"` or `"v1a"`.
    pub fn version(&self) -> &'static str {
        match self.scheme {
            Scheme::V1(_) => "v1",
            Scheme::V1a(_) => "v1a",
        }
    }

    /// The signature of `{msg_id}.{timestamp}.{body}`.
    ///
    /// `timestamp` is in Unix seconds, the value sent in [`HEADER_TIMESTAMP`].
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> Signature {
        let mut ts = [0u8; TS_BUF_LEN];
        let ts = dotted_i64(timestamp, &mut ts);
        let id = msg_id.as_bytes();
        match &self.scheme {
            Scheme::V1(mac) => Signature(SigBytes::V1(mac.mac3(id, ts, body))),
            Scheme::V1a(key) => Signature(SigBytes::V1a(key.sign3(id, ts, body))),
        }
    }

    /// Writes the header entry for `{msg_id}.{timestamp}.{body}`
    /// (`v1,<base64>` or `v1a,<base64>`) at the start of `out` and returns
    /// it, without allocating. Bytes of `out` after the entry are left as
    /// they were.
    ///
    /// The entry is ASCII, returned as bytes: what HTTP header values are
    /// (`http::HeaderValue::from_bytes`, a socket write), with no UTF-8
    /// check on every signature. `std::str::from_utf8(entry)` never fails on
    /// it; [`Signature`]'s `Display` and [`sign_into`] give text.
    ///
    /// ```
    /// use keyhook::signing::{MAX_ENTRY_LEN, Signer, SigningSecret};
    ///
    /// let signer = Signer::new(&SigningSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")?);
    /// let mut buf = [0u8; MAX_ENTRY_LEN];
    /// let entry = signer.sign_into("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#, &mut buf);
    /// assert_eq!(entry, b"v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    /// # Ok::<(), keyhook::Error>(())
    /// ```
    #[inline(always)]
    pub fn sign_into<'b>(
        &self,
        msg_id: &str,
        timestamp: i64,
        body: &[u8],
        out: &'b mut [u8; MAX_ENTRY_LEN],
    ) -> &'b [u8] {
        let id = msg_id.as_bytes();
        let len = match &self.scheme {
            Scheme::V1(mac) => {
                out[..V1_PREFIX.len()].copy_from_slice(V1_PREFIX.as_bytes());
                let words = mac.mac_v1_words(id, timestamp, body);
                encode_mac_words(&words, &mut out[V1_PREFIX.len()..ENTRY_LEN]);
                ENTRY_LEN
            }
            Scheme::V1a(key) => sign_v1a_into(key, id, timestamp, body, out),
        };
        &out[..len]
    }
}

impl From<&SigningSecret> for Signer {
    fn from(secret: &SigningSecret) -> Self {
        Signer::new(secret)
    }
}

impl From<&Ed25519SecretKey> for Signer {
    fn from(key: &Ed25519SecretKey) -> Self {
        Signer::ed25519(key)
    }
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signer({}, ..)", self.version())
    }
}

/// Writes `v1,<base64>` at the start of `out`; returns its length.
#[inline]
fn write_v1(mac: &[u8; MAC_LEN], out: &mut [u8; MAX_ENTRY_LEN]) -> usize {
    out[..V1_PREFIX.len()].copy_from_slice(V1_PREFIX.as_bytes());
    encode_b64(mac, &mut out[V1_PREFIX.len()..ENTRY_LEN]);
    ENTRY_LEN
}

/// Writes the `v1a` entry of `{id}.{timestamp}.{body}` to `out`; returns its
/// length. Out of line: an Ed25519 signature costs far more than a call, and
/// [`Signer::sign_into`] stays small enough to inline for `v1`.
#[inline(never)]
fn sign_v1a_into(
    key: &Ed25519Signer,
    id: &[u8],
    timestamp: i64,
    body: &[u8],
    out: &mut [u8; MAX_ENTRY_LEN],
) -> usize {
    let mut ts = [0u8; TS_BUF_LEN];
    let ts = dotted_i64(timestamp, &mut ts);
    write_v1a(&key.sign3(id, ts, body), out)
}

/// Writes `v1a,<base64>` to `out`; returns its length.
#[inline]
fn write_v1a(sig: &[u8; SIG_LEN], out: &mut [u8; MAX_ENTRY_LEN]) -> usize {
    out[..V1A_PREFIX.len()].copy_from_slice(V1A_PREFIX.as_bytes());
    encode_b64(sig, &mut out[V1A_PREFIX.len()..]);
    MAX_ENTRY_LEN
}

#[inline]
fn entry_str(entry: &[u8]) -> &str {
    std::str::from_utf8(entry).expect("entries are ASCII")
}

/// One signature: a `v1` HMAC-SHA256 output (32 bytes) or a `v1a` Ed25519
/// signature (64 bytes).
///
/// `Display` writes the header entry, `v1,<base64>` or `v1a,<base64>`.
/// Equality is compared in constant time.
#[derive(Clone, Copy)]
pub struct Signature(SigBytes);

#[derive(Clone, Copy)]
enum SigBytes {
    V1([u8; MAC_LEN]),
    V1a([u8; SIG_LEN]),
}

impl Signature {
    /// The signature bytes: 32 for `v1`, 64 for `v1a`.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            SigBytes::V1(b) => b,
            SigBytes::V1a(b) => b,
        }
    }

    /// Its version: `"v1"` or `"v1a"`.
    pub fn version(&self) -> &'static str {
        match self.0 {
            SigBytes::V1(_) => "v1",
            SigBytes::V1a(_) => "v1a",
        }
    }

    /// The header entry, `v1,<base64>` or `v1a,<base64>`.
    pub fn to_header_value(&self) -> String {
        let mut buf = [0u8; MAX_ENTRY_LEN];
        self.entry(&mut buf).to_owned()
    }

    fn entry<'b>(&self, buf: &'b mut [u8; MAX_ENTRY_LEN]) -> &'b str {
        let len = match &self.0 {
            SigBytes::V1(mac) => write_v1(mac, buf),
            SigBytes::V1a(sig) => write_v1a(sig, buf),
        };
        entry_str(&buf[..len])
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; MAX_ENTRY_LEN];
        f.write_str(self.entry(&mut buf))
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({self})")
    }
}

impl PartialEq for Signature {
    fn eq(&self, other: &Self) -> bool {
        // Versions are not secret; `ct_eq` on slices of unequal length is false.
        bool::from(self.as_bytes().ct_eq(other.as_bytes()))
    }
}

impl Eq for Signature {}

/// The whole `webhook-signature` header value: one entry per signer
/// (`v1,<base64>` or `v1a,<base64>`), in order, separated by single spaces.
///
/// Give several signers while rotating an endpoint's key, including from
/// `v1` to `v1a`. With no signers the result is empty.
pub fn sign(signers: &[Signer], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut out = String::new();
    sign_into(signers, msg_id, timestamp, body, &mut out);
    out
}

/// [`sign`] into `out`, which is cleared first: no allocation once `out` has
/// room for the header (48 bytes per `v1` signer, 93 per `v1a` signer).
pub fn sign_into(signers: &[Signer], msg_id: &str, timestamp: i64, body: &[u8], out: &mut String) {
    out.clear();
    let room: usize = signers
        .iter()
        .map(|s| match s.scheme {
            Scheme::V1(_) => ENTRY_LEN + 1,
            Scheme::V1a(_) => MAX_ENTRY_LEN + 1,
        })
        .sum();
    out.reserve(room);
    let mut buf = [0u8; MAX_ENTRY_LEN];
    for (i, signer) in signers.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(entry_str(
            signer.sign_into(msg_id, timestamp, body, &mut buf),
        ));
    }
}

// ---------------------------------------------------------------------------
// Verifying
// ---------------------------------------------------------------------------

/// Why a received webhook did not verify.
///
/// The set is closed on purpose: a receiver usually answers all of them with
/// `400` or `401`, and the compiler tells it when it missed one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum VerifyError {
    /// A required header is absent; the value is its name.
    #[error("missing {0} header")]
    MissingHeader(&'static str),

    /// A header is present but malformed.
    #[error("invalid {header} header: {reason}")]
    InvalidHeader {
        /// The header's name.
        header: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// The timestamp is older than the tolerance allows (possibly a replay).
    #[error("webhook timestamp is too old")]
    TimestampTooOld,

    /// The timestamp is further in the future than the tolerance allows.
    #[error("webhook timestamp is too far in the future")]
    TimestampTooNew,

    /// No entry in the header matches any of the keys: no `v1` entry matches
    /// a secret, and no `v1a` entry verifies under a public key.
    #[error("no matching webhook signature")]
    NoMatchingSignature,

    /// No secrets (or, for a [`Verifier`], public keys) were given to verify
    /// with.
    #[error("no secrets to verify the webhook with")]
    NoSecrets,
}

/// A receiver's verifier: the HMAC secrets (`v1`) and Ed25519 public keys
/// (`v1a`) an endpoint's webhooks may be signed with, and the timestamp
/// tolerance.
///
/// Build it once and verify many messages with it; secrets are pre-keyed.
/// A message passes when its timestamp is within the tolerance and one `v1`
/// entry matches one secret or one `v1a` entry verifies under one public key.
/// Entries of other versions are ignored, so a receiver holding only one kind
/// of key verifies a header signed with both during a rotation.
///
/// ```
/// use keyhook::signing::{Ed25519PublicKey, SigningSecret, Verifier};
///
/// let verifier = Verifier::new()
///     .with_secret(&SigningSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")?)
///     .with_public_key(&Ed25519PublicKey::parse("whpk_1SiA4o9hyqTCpIqC5V9HUakiiaeACeqfZTInDBbOir4=")?);
/// let headers = |name: &str| match name {
///     "webhook-id" => Some("msg_p5jXN8AQM9LWM0D4loKWxJek"),
///     "webhook-timestamp" => Some("1614265330"),
///     "webhook-signature" => Some("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="),
///     _ => None,
/// };
/// // Signed in 2021: far outside the default five minutes.
/// assert!(verifier.verify_headers(headers, br#"{"test": 2432232314}"#).is_err());
/// # Ok::<(), keyhook::Error>(())
/// ```
#[derive(Clone)]
pub struct Verifier {
    secrets: Vec<KeyedMac>,
    public_keys: Vec<Ed25519PublicKey>,
    tolerance: Duration,
}

impl Verifier {
    /// A verifier with no keys yet and [`DEFAULT_TOLERANCE`].
    pub fn new() -> Verifier {
        Verifier {
            secrets: Vec::new(),
            public_keys: Vec::new(),
            tolerance: DEFAULT_TOLERANCE,
        }
    }

    /// Adds an HMAC secret: `v1` entries are checked against it.
    pub fn with_secret(mut self, secret: &SigningSecret) -> Verifier {
        self.secrets.push(KeyedMac::new(secret.as_bytes()));
        self
    }

    /// Adds an Ed25519 public key: `v1a` entries are verified under it.
    pub fn with_public_key(mut self, key: &Ed25519PublicKey) -> Verifier {
        self.public_keys.push(*key);
        self
    }

    /// How far a timestamp may be from the clock, either way (exactly
    /// `tolerance` passes). Default: [`DEFAULT_TOLERANCE`], five minutes.
    pub fn tolerance(mut self, tolerance: Duration) -> Verifier {
        self.tolerance = tolerance;
        self
    }

    /// Checks a received webhook, given its three header values (`None` when
    /// a header is absent), its raw body and the receiver's clock.
    ///
    /// Within the header, a `v1` entry that is not the padded base64 of 32
    /// bytes, or a `v1a` entry that is not the padded base64 of 64 bytes,
    /// never matches. MACs are compared in constant time; Ed25519 signatures
    /// are verified strictly (RFC 8032, rejecting non-canonical and
    /// small-order values), the first [`MAX_V1A_ENTRIES`] well-formed ones
    /// only.
    ///
    /// # Errors
    ///
    /// * [`VerifyError::NoSecrets`] if the verifier holds no keys;
    /// * [`VerifyError::MissingHeader`] naming the first absent header;
    /// * [`VerifyError::InvalidHeader`] if the id is empty, the timestamp is
    ///   not a decimal integer, or the signature header is longer than
    ///   [`MAX_SIGNATURE_HEADER_LEN`] or has no entry of a version the
    ///   verifier holds keys for;
    /// * [`VerifyError::TimestampTooOld`] / [`VerifyError::TimestampTooNew`]
    ///   if the timestamp is outside the tolerance;
    /// * [`VerifyError::NoMatchingSignature`] if no entry matches.
    pub fn verify(
        &self,
        msg_id: Option<&str>,
        timestamp: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
        now: SystemTime,
    ) -> Result<(), VerifyError> {
        verify_with(
            &self.secrets,
            &self.public_keys,
            msg_id,
            timestamp,
            signature,
            body,
            now,
            self.tolerance,
        )
    }

    /// [`Verifier::verify`] with the system clock, reading the headers
    /// through `get` (see [`verify_headers`]).
    ///
    /// # Errors
    ///
    /// As [`Verifier::verify`].
    pub fn verify_headers<'a>(
        &self,
        get: impl Fn(&str) -> Option<&'a str>,
        body: &[u8],
    ) -> Result<(), VerifyError> {
        self.verify(
            get(HEADER_ID),
            get(HEADER_TIMESTAMP),
            get(HEADER_SIGNATURE),
            body,
            SystemTime::now(),
        )
    }
}

impl Default for Verifier {
    fn default() -> Self {
        Verifier::new()
    }
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field(
                "secrets",
                &format_args!("[{} redacted]", self.secrets.len()),
            )
            .field("public_keys", &self.public_keys)
            .field("tolerance", &self.tolerance)
            .finish()
    }
}

/// Checks a received webhook, given its three header values (`None` when a
/// header is absent), its raw body, and the endpoint's HMAC secrets (several
/// while one is being rotated).
///
/// The message passes when its timestamp is within `tolerance` of `now`
/// either way (exactly `tolerance` passes) and one `v1` entry of the signature
/// header matches one of the secrets. Entries of other versions, and entries
/// without a comma, are ignored; a `v1` entry that is not the padded base64
/// of 32 bytes never matches. MACs are compared in constant time. To verify
/// `v1a` signatures with public keys, use a [`Verifier`].
///
/// # Errors
///
/// * [`VerifyError::NoSecrets`] if `secrets` is empty;
/// * [`VerifyError::MissingHeader`] naming the first absent header;
/// * [`VerifyError::InvalidHeader`] if the id is empty, the timestamp is not
///   a decimal integer, or the signature header is longer than
///   [`MAX_SIGNATURE_HEADER_LEN`] or has no `v1` entry;
/// * [`VerifyError::TimestampTooOld`] / [`VerifyError::TimestampTooNew`] if
///   the timestamp is outside the tolerance;
/// * [`VerifyError::NoMatchingSignature`] if no `v1` entry matches.
pub fn verify(
    msg_id: Option<&str>,
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    secrets: &[SigningSecret],
    now: SystemTime,
    tolerance: Duration,
) -> Result<(), VerifyError> {
    let keyed: Vec<KeyedMac> = secrets
        .iter()
        .map(|s| KeyedMac::new(s.as_bytes()))
        .collect();
    verify_with(
        &keyed,
        &[],
        msg_id,
        timestamp,
        signature,
        body,
        now,
        tolerance,
    )
}

/// [`verify`] with [`DEFAULT_TOLERANCE`] and the system clock, reading the
/// headers through `get`.
///
/// `get` is called with the lower-case names [`HEADER_ID`],
/// [`HEADER_TIMESTAMP`] and [`HEADER_SIGNATURE`], and returns the header's
/// value or `None`. HTTP header names are case-insensitive, so `get` must
/// match them case-insensitively (most HTTP libraries' header maps do).
///
/// # Errors
///
/// As [`verify`].
pub fn verify_headers<'a>(
    get: impl Fn(&str) -> Option<&'a str>,
    body: &[u8],
    secrets: &[SigningSecret],
) -> Result<(), VerifyError> {
    verify(
        get(HEADER_ID),
        get(HEADER_TIMESTAMP),
        get(HEADER_SIGNATURE),
        body,
        secrets,
        SystemTime::now(),
        DEFAULT_TOLERANCE,
    )
}

#[allow(clippy::too_many_arguments)]
fn verify_with(
    secrets: &[KeyedMac],
    public_keys: &[Ed25519PublicKey],
    msg_id: Option<&str>,
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: SystemTime,
    tolerance: Duration,
) -> Result<(), VerifyError> {
    if secrets.is_empty() && public_keys.is_empty() {
        return Err(VerifyError::NoSecrets);
    }
    let msg_id = msg_id.ok_or(VerifyError::MissingHeader(HEADER_ID))?;
    let timestamp = timestamp.ok_or(VerifyError::MissingHeader(HEADER_TIMESTAMP))?;
    let signature = signature.ok_or(VerifyError::MissingHeader(HEADER_SIGNATURE))?;

    if msg_id.is_empty() {
        return Err(VerifyError::InvalidHeader {
            header: HEADER_ID,
            reason: "empty",
        });
    }
    let ts = parse_timestamp(timestamp).ok_or(VerifyError::InvalidHeader {
        header: HEADER_TIMESTAMP,
        reason: "not an integer number of seconds",
    })?;
    if signature.len() > MAX_SIGNATURE_HEADER_LEN {
        return Err(VerifyError::InvalidHeader {
            header: HEADER_SIGNATURE,
            reason: "too long",
        });
    }
    let has_v1 = !secrets.is_empty() && entries(signature, "v1").next().is_some();
    let has_v1a = !public_keys.is_empty() && entries(signature, "v1a").next().is_some();
    if !has_v1 && !has_v1a {
        let reason = match (secrets.is_empty(), public_keys.is_empty()) {
            (false, true) => "no v1 signature",
            (true, false) => "no v1a signature",
            _ => "no v1 or v1a signature",
        };
        return Err(VerifyError::InvalidHeader {
            header: HEADER_SIGNATURE,
            reason,
        });
    }

    check_tolerance(ts, now, tolerance)?;

    let mut ts_buf = [0u8; TS_BUF_LEN];
    let ts_text = dotted_i64(ts, &mut ts_buf);
    if has_v1 {
        for secret in secrets {
            let expected = secret.mac3(msg_id.as_bytes(), ts_text, body);
            for entry in entries(signature, "v1") {
                if let Some(mac) = decode_fixed::<MAC_LEN, MAC_B64_LEN>(entry)
                    && bool::from(mac.ct_eq(&expected))
                {
                    return Ok(());
                }
            }
        }
    }
    if has_v1a {
        // Ed25519 verification needs the signed content in one piece.
        let mut content = Vec::with_capacity(msg_id.len() + ts_text.len() + body.len());
        content.extend_from_slice(msg_id.as_bytes());
        content.extend_from_slice(ts_text);
        content.extend_from_slice(body);
        let well_formed = entries(signature, "v1a")
            .filter_map(decode_fixed::<SIG_LEN, V1A_B64_LEN>)
            .take(MAX_V1A_ENTRIES);
        for sig in well_formed {
            let sig = ed25519_dalek::Signature::from_bytes(&sig);
            for key in public_keys {
                if key.verifying_key().verify_strict(&content, &sig).is_ok() {
                    return Ok(());
                }
            }
        }
    }
    Err(VerifyError::NoMatchingSignature)
}

/// Decimal digits with an optional leading `-`; no `+`, no whitespace.
fn parse_timestamp(s: &str) -> Option<i64> {
    if s.starts_with('+') {
        return None;
    }
    s.parse().ok()
}

fn check_tolerance(ts: i64, now: SystemTime, tolerance: Duration) -> Result<(), VerifyError> {
    // Everything in nanoseconds as i128: no overflow for any i64 timestamp,
    // any SystemTime and any Duration.
    let now_ns: i128 = match now.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    };
    let ts_ns = i128::from(ts) * 1_000_000_000;
    let tol_ns = tolerance.as_nanos() as i128;
    if now_ns - ts_ns > tol_ns {
        Err(VerifyError::TimestampTooOld)
    } else if ts_ns - now_ns > tol_ns {
        Err(VerifyError::TimestampTooNew)
    } else {
        Ok(())
    }
}

/// The base64 parts of the header's entries of this version.
fn entries<'h>(header: &'h str, version: &'static str) -> impl Iterator<Item = &'h str> {
    header
        .split(' ')
        .filter_map(|entry| entry.split_once(','))
        .filter(move |(v, _)| *v == version)
        .map(|(_, b64)| b64)
}

/// The `N` bytes in an entry, if it is their padded standard base64
/// (`B64` characters).
fn decode_fixed<const N: usize, const B64: usize>(b64: &str) -> Option<[u8; N]> {
    if b64.len() != B64 {
        return None;
    }
    // Room for the decoder's conservative length estimate.
    let mut buf = [0u8; B64];
    let n = STANDARD.decode_slice(b64, &mut buf).ok()?;
    buf.get(..n)?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use hmac::Mac as _;

    use super::*;

    type HmacSha256 = hmac::Hmac<sha2::Sha256>;

    const A_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const A_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const A_TS: i64 = 1614265330;
    const A_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const A_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    const B_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const B_ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
    const B_TS: i64 = 1649367553;
    const B_BODY: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;
    const B_SIG: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";

    const OTHER: &str = "Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=";

    fn secret(s: &str) -> SigningSecret {
        SigningSecret::parse(s).unwrap()
    }

    fn at(ts: i64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(ts as u64)
    }

    fn verify_a(sig: &str) -> Result<(), VerifyError> {
        verify_a_at(sig, at(A_TS))
    }

    fn verify_a_at(sig: &str, now: SystemTime) -> Result<(), VerifyError> {
        verify(
            Some(A_ID),
            Some(&A_TS.to_string()),
            Some(sig),
            A_BODY,
            &[secret(A_SECRET)],
            now,
            DEFAULT_TOLERANCE,
        )
    }

    #[test]
    fn sign_into_writes_the_entry_and_nothing_after_it() {
        // At every alignment of the caller's buffer, for both schemes.
        let v1 = Signer::new(&secret(A_SECRET));
        assert_eq!(v1.sign(A_ID, A_TS, A_BODY).to_string(), A_SIG);
        let v1a = Signer::ed25519(&Ed25519SecretKey::generate().unwrap());
        let cases = [
            ("", 0, Vec::new()),
            (A_ID, A_TS, A_BODY.to_vec()),
            (A_ID, -1, vec![b'b'; 5]),
            (&*"x".repeat(48), i64::MAX, vec![b'b'; 200]),
            (&*"y".repeat(70), i64::MIN, vec![b'b'; 1000]),
        ];
        for signer in [&v1, &v1a] {
            for (id, ts, body) in &cases {
                let (id, ts) = (*id, *ts);
                let expected = signer.sign(id, ts, body).to_string();
                for offset in 0..16 {
                    let mut backing = [0xffu8; MAX_ENTRY_LEN + 16];
                    let out: &mut [u8; MAX_ENTRY_LEN] = (&mut backing
                        [offset..offset + MAX_ENTRY_LEN])
                        .try_into()
                        .unwrap();
                    let entry = signer.sign_into(id, ts, body, out);
                    assert_eq!(entry, expected.as_bytes(), "offset {offset}");
                    let len = entry.len();
                    assert!(
                        backing[..offset].iter().all(|&b| b == 0xff)
                            && backing[offset + len..].iter().all(|&b| b == 0xff),
                        "bytes outside the entry changed at offset {offset}"
                    );
                }
            }
        }
    }

    #[test]
    fn vector_a_signs() {
        let s = secret(A_SECRET);
        assert_eq!(s.as_bytes().len(), 24);
        let signer = Signer::new(&s);
        let sig = signer.sign(A_ID, A_TS, A_BODY);
        assert_eq!(sig.to_string(), A_SIG);
        assert_eq!(sig.to_header_value(), A_SIG);
        assert_eq!(sign(&[signer], A_ID, A_TS, A_BODY), A_SIG);
    }

    #[test]
    fn vector_b_signs() {
        let signer = Signer::new(&secret(B_SECRET));
        assert_eq!(signer.sign(B_ID, B_TS, B_BODY).to_string(), B_SIG);
        assert_eq!(sign(&[signer], B_ID, B_TS, B_BODY), B_SIG);
    }

    #[test]
    fn sign_several_signers() {
        let a = Signer::new(&secret(A_SECRET));
        let b = Signer::new(&secret(B_SECRET));
        let header = sign(&[a.clone(), b.clone()], A_ID, A_TS, A_BODY);
        let expected = format!("{A_SIG} {}", b.sign(A_ID, A_TS, A_BODY));
        assert_eq!(header, expected);
        assert_eq!(header.len(), 2 * ENTRY_LEN + 1);
        assert_eq!(sign(&[], A_ID, A_TS, A_BODY), "");
    }

    #[test]
    fn sign_matches_hmac_of_concatenation() {
        let key = secret(B_SECRET);
        let signer = Signer::new(&key);
        let body: Vec<u8> = (0..=255u8).cycle().take(300).collect();
        for id_len in [0, 1, 28, 41, 42, 43, 60, 100] {
            let id = "m".repeat(id_len);
            for ts in [0, -5, A_TS, i64::MIN] {
                for body_len in [0, 1, 11, 12, 13, 22, 23, 24, 63, 64, 65, 200, 300] {
                    let body = &body[..body_len];
                    let mut mac = HmacSha256::new_from_slice(key.as_bytes()).unwrap();
                    mac.update(format!("{id}.{ts}.").as_bytes());
                    mac.update(body);
                    let expected: [u8; MAC_LEN] = mac.finalize().into_bytes().into();
                    assert_eq!(signer.sign(&id, ts, body).as_bytes(), &expected);
                }
            }
        }
    }

    #[test]
    fn signature_entries_match_base64_crate() {
        use rand::Rng as _;
        let mut rng = rand::rng();
        let mut cases = vec![[0u8; MAC_LEN], [0xff; MAC_LEN]];
        cases.extend((0..1000).map(|_| rng.random::<[u8; MAC_LEN]>()));
        for mac in cases {
            let sig = Signature(SigBytes::V1(mac));
            assert_eq!(sig.to_string(), format!("v1,{}", STANDARD.encode(mac)));
            assert_eq!(sig.to_header_value(), sig.to_string());
            assert_eq!(
                decode_fixed::<MAC_LEN, MAC_B64_LEN>(&sig.to_string()[3..]),
                Some(mac)
            );
            let mut long = [0u8; SIG_LEN];
            long[..MAC_LEN].copy_from_slice(&mac);
            long[MAC_LEN..].copy_from_slice(&mac);
            let sig = Signature(SigBytes::V1a(long));
            assert_eq!(sig.to_string(), format!("v1a,{}", STANDARD.encode(long)));
            assert_eq!(
                decode_fixed::<SIG_LEN, V1A_B64_LEN>(&sig.to_string()[4..]),
                Some(long)
            );
        }
    }

    #[test]
    fn vector_a_verifies() {
        assert_eq!(verify_a(A_SIG), Ok(()));
    }

    #[test]
    fn vector_b_verifies() {
        let r = verify(
            Some(B_ID),
            Some("1649367553"),
            Some(B_SIG),
            B_BODY,
            &[secret(B_SECRET)],
            at(B_TS),
            DEFAULT_TOLERANCE,
        );
        assert_eq!(r, Ok(()));
    }

    #[test]
    fn changed_signature_fails() {
        let bad = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA=";
        assert_eq!(verify_a(bad), Err(VerifyError::NoMatchingSignature));
    }

    #[test]
    fn changed_body_or_id_fails() {
        let r = verify(
            Some(A_ID),
            Some("1614265330"),
            Some(A_SIG),
            br#"{"test": 2432232315}"#,
            &[secret(A_SECRET)],
            at(A_TS),
            DEFAULT_TOLERANCE,
        );
        assert_eq!(r, Err(VerifyError::NoMatchingSignature));
        let r = verify(
            Some("msg_other"),
            Some("1614265330"),
            Some(A_SIG),
            A_BODY,
            &[secret(A_SECRET)],
            at(A_TS),
            DEFAULT_TOLERANCE,
        );
        assert_eq!(r, Err(VerifyError::NoMatchingSignature));
    }

    #[test]
    fn multi_signature_header_verifies() {
        let header = format!("v1,{OTHER} v2,{OTHER} {A_SIG} v1,{OTHER}");
        assert_eq!(verify_a(&header), Ok(()));
        // Extra spaces and comma-less entries are skipped.
        let header = format!("  junk v1,{OTHER}   {A_SIG} ");
        assert_eq!(verify_a(&header), Ok(()));
    }

    #[test]
    fn valid_mac_under_other_version_fails() {
        let b64 = &A_SIG[3..];
        let header = format!("v2,{b64} v1a,{b64} v1,{OTHER}");
        assert_eq!(verify_a(&header), Err(VerifyError::NoMatchingSignature));
    }

    #[test]
    fn empty_and_truncated_signatures_fail() {
        assert_eq!(verify_a("v1,"), Err(VerifyError::NoMatchingSignature));
        assert!(verify_a(&A_SIG[..8]).is_err());
        assert_eq!(verify_a(&A_SIG[..8]), Err(VerifyError::NoMatchingSignature));
        // Unpadded form of the valid MAC is not accepted.
        assert_eq!(
            verify_a(&A_SIG[..A_SIG.len() - 1]),
            Err(VerifyError::NoMatchingSignature)
        );
        let no_v1 = Err(VerifyError::InvalidHeader {
            header: HEADER_SIGNATURE,
            reason: "no v1 signature",
        });
        assert_eq!(verify_a(""), no_v1);
        assert_eq!(verify_a("   "), no_v1);
        assert_eq!(verify_a(&format!("v2,{OTHER}")), no_v1);
        assert_eq!(verify_a("garbage"), no_v1);
    }

    #[test]
    fn overlong_signature_header_fails() {
        let mut header = String::from(A_SIG);
        while header.len() <= MAX_SIGNATURE_HEADER_LEN {
            header.push_str(" v2,x");
        }
        assert_eq!(
            verify_a(&header),
            Err(VerifyError::InvalidHeader {
                header: HEADER_SIGNATURE,
                reason: "too long"
            })
        );
    }

    #[test]
    fn timestamp_tolerance() {
        assert_eq!(
            verify_a_at(A_SIG, at(A_TS + 301)),
            Err(VerifyError::TimestampTooOld)
        );
        assert_eq!(
            verify_a_at(A_SIG, at(A_TS - 301)),
            Err(VerifyError::TimestampTooNew)
        );
        assert_eq!(verify_a_at(A_SIG, at(A_TS + 300)), Ok(()));
        assert_eq!(verify_a_at(A_SIG, at(A_TS - 300)), Ok(()));
        // Just past the tolerance, below one second.
        assert_eq!(
            verify_a_at(A_SIG, at(A_TS + 300) + Duration::from_millis(1)),
            Err(VerifyError::TimestampTooOld)
        );
        // A clock before 1970 does not panic.
        assert_eq!(
            verify_a_at(A_SIG, UNIX_EPOCH - Duration::from_secs(10)),
            Err(VerifyError::TimestampTooNew)
        );
    }

    #[test]
    fn bad_timestamps_are_invalid() {
        let invalid = Err(VerifyError::InvalidHeader {
            header: HEADER_TIMESTAMP,
            reason: "not an integer number of seconds",
        });
        for ts in [
            "hello",
            "",
            "+1614265330",
            " 1614265330",
            "1614265330 ",
            "1614265330.0",
            "99999999999999999999",
        ] {
            let r = verify(
                Some(A_ID),
                Some(ts),
                Some(A_SIG),
                A_BODY,
                &[secret(A_SECRET)],
                at(A_TS),
                DEFAULT_TOLERANCE,
            );
            assert_eq!(r, invalid, "{ts:?}");
        }
        // Extreme but valid integers are just out of tolerance.
        for (ts, err) in [
            (i64::MIN, VerifyError::TimestampTooOld),
            (i64::MAX, VerifyError::TimestampTooNew),
        ] {
            let r = verify(
                Some(A_ID),
                Some(&ts.to_string()),
                Some(A_SIG),
                A_BODY,
                &[secret(A_SECRET)],
                at(A_TS),
                DEFAULT_TOLERANCE,
            );
            assert_eq!(r, Err(err));
        }
    }

    #[test]
    fn missing_headers_are_named() {
        let secrets = [secret(A_SECRET)];
        let ts = A_TS.to_string();
        let run = |id, ts, sig| verify(id, ts, sig, A_BODY, &secrets, at(A_TS), DEFAULT_TOLERANCE);
        assert_eq!(
            run(None, Some(&ts), Some(A_SIG)),
            Err(VerifyError::MissingHeader(HEADER_ID))
        );
        assert_eq!(
            run(Some(A_ID), None, Some(A_SIG)),
            Err(VerifyError::MissingHeader(HEADER_TIMESTAMP))
        );
        assert_eq!(
            run(Some(A_ID), Some(&ts), None),
            Err(VerifyError::MissingHeader(HEADER_SIGNATURE))
        );
        assert_eq!(
            run(Some(""), Some(&ts), Some(A_SIG)),
            Err(VerifyError::InvalidHeader {
                header: HEADER_ID,
                reason: "empty"
            })
        );
        assert_eq!(
            VerifyError::MissingHeader(HEADER_TIMESTAMP).to_string(),
            "missing webhook-timestamp header"
        );
    }

    #[test]
    fn no_secrets() {
        let r = verify(
            Some(A_ID),
            Some("1614265330"),
            Some(A_SIG),
            A_BODY,
            &[],
            at(A_TS),
            DEFAULT_TOLERANCE,
        );
        assert_eq!(r, Err(VerifyError::NoSecrets));
    }

    #[test]
    fn rotation_second_secret_matches() {
        let secrets = [secret(B_SECRET), secret(A_SECRET)];
        let r = verify(
            Some(A_ID),
            Some("1614265330"),
            Some(A_SIG),
            A_BODY,
            &secrets,
            at(A_TS),
            DEFAULT_TOLERANCE,
        );
        assert_eq!(r, Ok(()));
    }

    #[test]
    fn verify_headers_uses_closure() {
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let s = SigningSecret::generate().unwrap();
        let header = sign(&[Signer::new(&s)], "msg_1", ts, b"{}");
        let ts_text = ts.to_string();
        let get = |name: &str| match name {
            HEADER_ID => Some("msg_1"),
            HEADER_TIMESTAMP => Some(ts_text.as_str()),
            HEADER_SIGNATURE => Some(header.as_str()),
            _ => None,
        };
        assert_eq!(verify_headers(get, b"{}", std::slice::from_ref(&s)), Ok(()));
        assert_eq!(
            verify_headers(get, b"{ }", &[s]),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn secret_parse_forms() {
        let with = secret(A_SECRET);
        let without = secret(&A_SECRET["whsec_".len()..]);
        assert_eq!(with, without);
        assert_eq!(with.expose(), A_SECRET);
        assert_eq!(A_SECRET.parse::<SigningSecret>().unwrap(), with);
        assert_ne!(with, secret(B_SECRET));

        // 32 bytes: padded and unpadded are the same secret.
        let key = [7u8; 32];
        let padded = SigningSecret::from_bytes(&key).unwrap().expose();
        assert!(padded.ends_with('='));
        let unpadded = padded.trim_end_matches('=');
        assert_eq!(secret(unpadded).as_bytes(), key);
        assert_eq!(secret(&padded), secret(unpadded));
        assert_eq!(secret(&format!(" {padded}\n")).as_bytes(), key);

        // Bounds.
        assert!(SigningSecret::from_bytes(&[1; 24]).is_ok());
        assert!(SigningSecret::from_bytes(&[1; 64]).is_ok());
        let s64 = SigningSecret::from_bytes(&[1; 64]).unwrap().expose();
        assert_eq!(secret(&s64).as_bytes(), [1; 64]);
        assert!(SigningSecret::from_bytes(&[1; 23]).is_err());
        assert!(SigningSecret::from_bytes(&[1; 65]).is_err());
    }

    #[test]
    fn secret_parse_rejects_without_echoing() {
        let ten = format!("whsec_{}", STANDARD.encode([0xA5u8; 10]));
        let hundred = format!("whsec_{}", STANDARD.encode([0x5Au8; 100]));
        let sixty_five = format!("whsec_{}", STANDARD.encode([0x5Au8; 65]));
        let garbage = "whsec_not*base64!secretvalue";
        for input in [
            "whsec_",
            "",
            garbage,
            ten.as_str(),
            hundred.as_str(),
            sixty_five.as_str(),
        ] {
            let err = SigningSecret::parse(input).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::InvalidInput {
                        field: "secret",
                        ..
                    }
                ),
                "{input:?}: {err:?}"
            );
            let shown = format!("{err} {err:?}");
            let body = input.trim_start_matches("whsec_");
            if !body.is_empty() {
                assert!(!shown.contains(body), "{shown}");
            }
        }
    }

    #[test]
    fn secret_debug_is_redacted() {
        let s = secret(A_SECRET);
        let shown = format!("{s:?} {:?}", Signer::new(&s));
        assert_eq!(format!("{s:?}"), "SigningSecret(whsec_…redacted)");
        assert!(!shown.contains(&A_SECRET["whsec_".len()..]));
        assert!(!shown.contains("MfKQ9r8G"));
    }

    #[test]
    fn generate_is_random_and_valid() {
        let a = SigningSecret::generate().unwrap();
        let b = SigningSecret::generate().unwrap();
        assert_eq!(a.as_bytes().len(), 32);
        assert_ne!(a, b);
        assert_eq!(SigningSecret::parse(&a.expose()).unwrap(), a);
    }

    #[test]
    fn random_headers_never_panic() {
        use rand::Rng as _;
        let mut rng = rand::rng();
        let secrets = [secret(A_SECRET)];
        const ALPHABET: &[u8] = b"v12a, =+/-.0123456789ABCDEFabcdef\t";
        for i in 0..10_000 {
            let len = rng.random_range(0..120);
            let bytes: Vec<u8> = if i % 2 == 0 {
                (0..len).map(|_| rng.random()).collect()
            } else {
                (0..len)
                    .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())])
                    .collect()
            };
            let text = String::from_utf8_lossy(&bytes);
            let sig_like = format!("v1,{text}");
            for (ts, sig) in [
                (text.as_ref(), A_SIG),
                ("1614265330", text.as_ref()),
                ("1614265330", sig_like.as_str()),
            ] {
                let r = verify(
                    Some(A_ID),
                    Some(ts),
                    Some(sig),
                    A_BODY,
                    &secrets,
                    at(A_TS),
                    DEFAULT_TOLERANCE,
                );
                if ts != "1614265330" && r.is_ok() {
                    assert_eq!(ts.parse::<i64>().ok(), Some(A_TS));
                }
                if sig != A_SIG {
                    assert!(r.is_err() || sig.contains(&A_SIG[3..]));
                }
            }
            let _ = SigningSecret::parse(&text);
        }
    }
}
