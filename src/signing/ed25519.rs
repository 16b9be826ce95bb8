//! Standard Webhooks asymmetric (`v1a`) keys: Ed25519 (RFC 8032) key pairs
//! in the `whsk_` / `whpk_` text forms.
//!
//! The spec names the prefixes and says "base64 encoded" but not which bytes.
//! keyhook follows Svix, the spec's reference sender: a secret key is the
//! 64 bytes of the 32-byte seed followed by the 32-byte public key, a public
//! key is its 32 bytes, both in standard padded base64.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::hazmat::{ExpandedSecretKey, raw_sign_byupdate};
use ed25519_dalek::{SigningKey, VerifyingKey};
use rand::TryRngCore as _;
use sha2::{Digest as _, Sha512};

use super::{PUBLIC_KEY_PREFIX, SECRET_B64, SECRET_KEY_PREFIX, SECRET_PREFIX};
use crate::error::Error;

/// Length of an Ed25519 signature.
pub(super) const SIG_LEN: usize = 64;

/// Length of a seed, and of a public key.
const KEY_LEN: usize = 32;

/// Longest accepted base64 text of a key (64 bytes, padded).
const MAX_KEY_B64_LEN: usize = 88;

/// A sender's Ed25519 signing key for `v1a` signatures, written
/// `whsk_<base64>`.
///
/// The text form is the standard base64 of the 32-byte seed followed by the
/// 32-byte public key (64 bytes), as Svix writes it. `Debug` shows only the
/// public key, and there is no `Display`; use [`Ed25519SecretKey::expose`] to
/// get the text form on purpose. Equality is compared in constant time.
#[derive(Clone)]
pub struct Ed25519SecretKey {
    key: SigningKey,
}

impl Ed25519SecretKey {
    /// A new key pair from the operating system's random source.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the operating system's random source fails.
    pub fn generate() -> Result<Ed25519SecretKey, Error> {
        let mut seed = [0u8; KEY_LEN];
        rand::rngs::OsRng
            .try_fill_bytes(&mut seed)
            .map_err(|e| Error::Io(std::io::Error::other(e)))?;
        let key = Ed25519SecretKey::from_seed(&seed);
        seed.fill(0);
        Ok(key)
    }

    /// The key pair of this 32-byte seed (the "secret key" of RFC 8032).
    pub fn from_seed(seed: &[u8; KEY_LEN]) -> Ed25519SecretKey {
        Ed25519SecretKey {
            key: SigningKey::from_bytes(seed),
        }
    }

    /// Reads a secret key in its text form: `whsk_` followed by the standard
    /// base64 of the seed and the public key (64 bytes).
    ///
    /// The prefix and padding are optional, surrounding ASCII whitespace is
    /// ignored, and a bare 32-byte seed is accepted too.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] with field `"secret_key"` if the text is empty,
    /// carries another key's prefix (`whpk_`, `whsec_`), is not standard
    /// base64, does not decode to 64 (or 32) bytes, or holds a public key
    /// that is not the seed's. The error never contains the text.
    pub fn parse(s: &str) -> Result<Ed25519SecretKey, Error> {
        const FIELD: &str = "secret_key";
        let s = s.trim_ascii();
        if s.starts_with(PUBLIC_KEY_PREFIX) {
            return Err(Error::invalid(
                FIELD,
                "is a public key (whpk_); signing needs the secret key (whsk_)",
            ));
        }
        if s.starts_with(SECRET_PREFIX) {
            return Err(Error::invalid(
                FIELD,
                "is an HMAC secret (whsec_), not an Ed25519 secret key (whsk_)",
            ));
        }
        let b64 = s.strip_prefix(SECRET_KEY_PREFIX).unwrap_or(s);
        let mut buf = [0u8; MAX_KEY_B64_LEN];
        let bytes = decode_key(FIELD, b64, &mut buf)?;
        let key = match bytes.len() {
            64 => {
                let pair: &[u8; 64] = bytes.try_into().expect("length checked");
                SigningKey::from_keypair_bytes(pair).map_err(|_| {
                    Error::invalid(
                        FIELD,
                        "holds a public key that does not belong to its seed (bytes 33 to 64 \
                         must be the seed's public key)",
                    )
                })?
            }
            KEY_LEN => SigningKey::from_bytes(bytes.try_into().expect("length checked")),
            n => {
                return Err(Error::invalid(
                    FIELD,
                    format!(
                        "is {n} bytes; an Ed25519 secret key is 64 bytes (seed, then public key) \
                         or a 32-byte seed"
                    ),
                ));
            }
        };
        buf.fill(0);
        Ok(Ed25519SecretKey { key })
    }

    /// The key's text form, `whsk_<base64>` of the seed and the public key.
    ///
    /// This is the secret itself: handle it with care, and never log it.
    pub fn expose(&self) -> String {
        let mut s = String::with_capacity(SECRET_KEY_PREFIX.len() + MAX_KEY_B64_LEN);
        s.push_str(SECRET_KEY_PREFIX);
        STANDARD.encode_string(self.key.to_keypair_bytes(), &mut s);
        s
    }

    /// The 32-byte seed. Handle with care.
    pub fn seed(&self) -> &[u8; KEY_LEN] {
        self.key.as_bytes()
    }

    /// The matching public key, to give to receivers.
    pub fn public_key(&self) -> Ed25519PublicKey {
        Ed25519PublicKey {
            key: self.key.verifying_key(),
        }
    }

    pub(super) fn signer(&self) -> Ed25519Signer {
        Ed25519Signer {
            expanded: ExpandedSecretKey::from(self.key.as_bytes()),
            public: self.key.verifying_key(),
        }
    }
}

impl fmt::Debug for Ed25519SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ed25519SecretKey(whsk_…redacted, {})", self.public_key())
    }
}

impl PartialEq for Ed25519SecretKey {
    fn eq(&self, other: &Self) -> bool {
        // `SigningKey` compares its seeds in constant time.
        self.key == other.key
    }
}

impl Eq for Ed25519SecretKey {}

impl FromStr for Ed25519SecretKey {
    type Err = Error;

    /// Same as [`Ed25519SecretKey::parse`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ed25519SecretKey::parse(s)
    }
}

/// A receiver's Ed25519 public key for `v1a` signatures, written
/// `whpk_<base64>` (the standard base64 of its 32 bytes).
///
/// Public keys are not secret: `Display` writes the text form.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ed25519PublicKey {
    key: VerifyingKey,
}

impl Ed25519PublicKey {
    /// Reads a public key in its text form: `whpk_` followed by the standard
    /// base64 of the 32 key bytes.
    ///
    /// The prefix and padding are optional, and surrounding ASCII whitespace
    /// is ignored.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] with field `"public_key"` if the text is empty,
    /// carries a secret's prefix (`whsk_`, `whsec_`), is not standard base64,
    /// or its bytes are not a usable public key (see
    /// [`Ed25519PublicKey::from_bytes`]).
    pub fn parse(s: &str) -> Result<Ed25519PublicKey, Error> {
        const FIELD: &str = "public_key";
        let s = s.trim_ascii();
        if s.starts_with(SECRET_KEY_PREFIX) {
            return Err(Error::invalid(
                FIELD,
                "is a secret key (whsk_); give receivers its public key (whpk_)",
            ));
        }
        if s.starts_with(SECRET_PREFIX) {
            return Err(Error::invalid(
                FIELD,
                "is an HMAC secret (whsec_), not an Ed25519 public key (whpk_)",
            ));
        }
        let b64 = s.strip_prefix(PUBLIC_KEY_PREFIX).unwrap_or(s);
        let mut buf = [0u8; MAX_KEY_B64_LEN];
        let bytes = decode_key(FIELD, b64, &mut buf)?;
        let bytes: &[u8; KEY_LEN] = bytes.try_into().map_err(|_| {
            Error::invalid(
                FIELD,
                format!(
                    "is {} bytes; an Ed25519 public key is {KEY_LEN}",
                    bytes.len()
                ),
            )
        })?;
        Ed25519PublicKey::from_bytes(bytes)
    }

    /// A public key from its 32 bytes (RFC 8032's encoding).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] with field `"public_key"` if the bytes are not
    /// the encoding of a curve point, or encode a point of small order (a
    /// weak key, for which signatures can be forged without its secret).
    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> Result<Ed25519PublicKey, Error> {
        let key = VerifyingKey::from_bytes(bytes)
            .map_err(|_| Error::invalid("public_key", "is not an Ed25519 curve point"))?;
        if key.is_weak() {
            return Err(Error::invalid(
                "public_key",
                "is a weak Ed25519 key (a point of small order)",
            ));
        }
        Ok(Ed25519PublicKey { key })
    }

    /// The 32 key bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        self.key.as_bytes()
    }

    pub(super) fn verifying_key(&self) -> &VerifyingKey {
        &self.key
    }
}

impl fmt::Display for Ed25519PublicKey {
    /// The text form, `whpk_<base64>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut b64 = [0u8; 44];
        super::mac::encode_b64(self.key.as_bytes(), &mut b64);
        f.write_str(PUBLIC_KEY_PREFIX)?;
        f.write_str(std::str::from_utf8(&b64).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for Ed25519PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ed25519PublicKey({self})")
    }
}

impl FromStr for Ed25519PublicKey {
    type Err = Error;

    /// Same as [`Ed25519PublicKey::parse`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ed25519PublicKey::parse(s)
    }
}

/// Decodes a key's base64 (padding optional) into `buf`.
fn decode_key<'b>(
    field: &'static str,
    b64: &str,
    buf: &'b mut [u8; MAX_KEY_B64_LEN],
) -> Result<&'b [u8], Error> {
    if b64.is_empty() {
        return Err(Error::invalid(field, "is empty"));
    }
    if b64.len() > MAX_KEY_B64_LEN {
        return Err(Error::invalid(
            field,
            "is too long for an Ed25519 key (at most 64 bytes)",
        ));
    }
    let n = SECRET_B64
        .decode_slice(b64, buf)
        .map_err(|_| Error::invalid(field, "is not valid base64"))?;
    Ok(&buf[..n])
}

/// Signs with the seed's expanded form kept, so a signature costs no key
/// derivation, and with the message fed in parts, so nothing is concatenated.
pub(super) struct Ed25519Signer {
    expanded: ExpandedSecretKey,
    public: VerifyingKey,
}

impl Ed25519Signer {
    /// The Ed25519 signature of `a ‖ b ‖ body`.
    pub(super) fn sign3(&self, a: &[u8], b: &[u8], body: &[u8]) -> [u8; SIG_LEN] {
        // `expanded` and `public` come from the same seed, which is what
        // `raw_sign_byupdate` requires; the closure hashes the same parts on
        // each of its two calls.
        let signature = raw_sign_byupdate::<Sha512, _>(
            &self.expanded,
            |h: &mut Sha512| {
                h.update(a);
                h.update(b);
                h.update(body);
                Ok(())
            },
            &self.public,
        )
        .expect("the message closure never fails");
        signature.to_bytes()
    }
}

impl Clone for Ed25519Signer {
    fn clone(&self) -> Self {
        Ed25519Signer {
            expanded: ExpandedSecretKey {
                scalar: self.expanded.scalar,
                hash_prefix: self.expanded.hash_prefix,
            },
            public: self.public,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex<const N: usize>(s: &str) -> [u8; N] {
        let bytes: Vec<u8> = (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect();
        bytes.try_into().unwrap()
    }

    /// RFC 8032 section 7.1, TESTs 1 to 3: seed, public key, message, signature.
    const RFC8032: [(&str, &str, &[u8], &str); 3] = [
        (
            "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
            b"",
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
        ),
        (
            "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
            "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
            &[0x72],
            "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
        ),
        (
            "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
            "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
            &[0xaf, 0x82],
            "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
        ),
    ];

    /// The signing path `Signer` uses (expanded key kept, message fed in
    /// three parts) gives RFC 8032's signatures however the message is split.
    #[test]
    fn rfc8032_vectors_sign_in_parts() {
        for (seed, public, msg, sig) in RFC8032 {
            let key = Ed25519SecretKey::from_seed(&unhex(seed));
            assert_eq!(key.public_key().as_bytes(), &unhex::<32>(public));
            let expected: [u8; SIG_LEN] = unhex(sig);
            let signer = key.signer();
            for i in 0..=msg.len() {
                for j in i..=msg.len() {
                    assert_eq!(signer.sign3(&msg[..i], &msg[i..j], &msg[j..]), expected);
                }
            }
            let signer = signer.clone();
            assert_eq!(signer.sign3(msg, b"", b""), expected);
            let dalek = ed25519_dalek::Signature::from_bytes(&expected);
            assert!(
                key.public_key()
                    .verifying_key()
                    .verify_strict(msg, &dalek)
                    .is_ok()
            );
        }
    }
}
