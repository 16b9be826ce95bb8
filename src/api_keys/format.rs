//! The API key string format (pure, no I/O).
//!
//! ```text
//! vr_live_3kTMd9QzR1bXa7Lw0pYc8NeVh2UfJ5sGq4OiKt6Zm1
//! └┬┘ └┬─┘ └────┬─────┘└──────────┬───────────┘└─┬──┘
//! prefix env  lookup id (12)    secret (22)   CRC32 (6)
//! ```
//!
//! * `prefix` is chosen by the host (`[A-Za-z0-9_]`, may contain `_`), so a
//!   secret scanner can recognise the keys; `env` separates live and test keys.
//! * The 40-character body is base62: a public lookup id (the key's id, 71
//!   random bits), the secret (22 characters from the OS CSPRNG, 130 bits)
//!   and a CRC32 of everything before it in 6 base62 characters.
//! * Parsing goes from the right, since the prefix may contain `_`.
//!
//! The checksum lets [`parse`] reject a mistyped or made-up string without a
//! database lookup, and lets secret scanners confirm a match offline.

use crate::error::Result;
use crate::id::{base62_fixed, decode_base62, is_base62, random_base62};

/// Length of the public lookup id.
pub(crate) const ID_LEN: usize = 12;
/// Length of the secret part (62^22 > 2^130).
pub(crate) const SECRET_LEN: usize = 22;
/// Length of the base62 CRC32 (62^6 > 2^32).
pub(crate) const CHECK_LEN: usize = 6;
pub(crate) const BODY_LEN: usize = ID_LEN + SECRET_LEN + CHECK_LEN;
/// Longest string worth parsing: prefix and environment are bounded at build time.
pub(crate) const MAX_KEY_LEN: usize = 32 + 1 + 16 + 1 + BODY_LEN;

/// The parts of a well-formed key, borrowed from the input.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Parsed<'a> {
    pub prefix: &'a str,
    pub environment: &'a str,
    pub id: &'a str,
    pub secret: &'a str,
}

/// Builds a new key string: returns `(full key, lookup id, secret)`.
pub(crate) fn generate(prefix: &str, environment: &str) -> Result<(String, String, String)> {
    let id = random_base62(ID_LEN)?;
    let secret = random_base62(SECRET_LEN)?;
    Ok((assemble(prefix, environment, &id, &secret), id, secret))
}

pub(crate) fn assemble(prefix: &str, environment: &str, id: &str, secret: &str) -> String {
    let mut key = String::with_capacity(prefix.len() + environment.len() + 2 + BODY_LEN);
    key.push_str(prefix);
    key.push('_');
    key.push_str(environment);
    key.push('_');
    key.push_str(id);
    key.push_str(secret);
    let check = crc32(key.as_bytes());
    key.push_str(&base62_fixed(u64::from(check), CHECK_LEN));
    key
}

/// Splits and checks a key string. `None` if it is not a well-formed key
/// with a correct checksum; never panics, whatever the bytes.
pub(crate) fn parse(key: &str) -> Option<Parsed<'_>> {
    if key.len() > MAX_KEY_LEN || key.len() < BODY_LEN + 4 || !key.is_ascii() {
        return None;
    }
    let (head, body) = key.rsplit_once('_')?;
    let (prefix, environment) = head.rsplit_once('_')?;
    if body.len() != BODY_LEN || prefix.is_empty() || environment.is_empty() {
        return None;
    }
    let body_bytes = body.as_bytes();
    if !is_base62(body_bytes) {
        return None;
    }
    let signed_len = key.len() - CHECK_LEN;
    let expected = decode_base62(&body_bytes[BODY_LEN - CHECK_LEN..])?;
    if u64::from(crc32(&key.as_bytes()[..signed_len])) != expected {
        return None;
    }
    Some(Parsed {
        prefix,
        environment,
        id: &body[..ID_LEN],
        secret: &body[ID_LEN..ID_LEN + SECRET_LEN],
    })
}

/// A display hint: prefix, environment and the first characters of the body.
pub(crate) fn hint(prefix: &str, environment: &str, id: &str) -> String {
    format!("{prefix}_{environment}_{}…", &id[..6.min(id.len())])
}

/// CRC-32/ISO-HDLC (the zlib/PNG CRC), as GitHub's token checksums use.
pub(crate) fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    let mut crc = !0u32;
    for &b in data {
        crc = TABLE[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_known_vector() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn generate_then_parse() {
        let (key, id, secret) = generate("vr", "live").unwrap();
        assert!(key.starts_with("vr_live_"));
        assert_eq!(key.len(), "vr_live_".len() + BODY_LEN);
        let p = parse(&key).unwrap();
        assert_eq!(p.prefix, "vr");
        assert_eq!(p.environment, "live");
        assert_eq!(p.id, id);
        assert_eq!(p.secret, secret);
    }

    #[test]
    fn prefix_may_contain_underscores() {
        let (key, _, _) = generate("my_app_v2", "test").unwrap();
        let p = parse(&key).unwrap();
        assert_eq!(p.prefix, "my_app_v2");
        assert_eq!(p.environment, "test");
    }

    #[test]
    fn any_single_character_change_is_rejected() {
        let (key, _, _) = generate("vr", "live").unwrap();
        let body_start = key.len() - BODY_LEN;
        for i in body_start..key.len() {
            let mut bytes = key.clone().into_bytes();
            bytes[i] = if bytes[i] == b'a' { b'b' } else { b'a' };
            let changed = String::from_utf8(bytes).unwrap();
            assert!(parse(&changed).is_none(), "change at {i} accepted");
        }
    }

    #[test]
    fn malformed_shapes_are_rejected() {
        let (key, _, _) = generate("vr", "live").unwrap();
        for bad in [
            "",
            "vr_live_",
            &key[..key.len() - 1],
            &format!("{key}x"),
            &key.replace("vr_live_", "vrlive"),
            &key.replace("vr_live_", "_live_"),
            &key.replace("vr_live_", "vr__"),
            "ü".repeat(30).as_str(),
        ] {
            assert!(parse(bad).is_none(), "{bad:?} accepted");
        }
        assert!(parse(&"a".repeat(1 << 20)).is_none());
    }

    #[test]
    fn hint_shows_only_public_parts() {
        let (_, id, secret) = generate("vr", "live").unwrap();
        let h = hint("vr", "live", &id);
        assert!(h.starts_with("vr_live_"));
        assert!(!h.contains(&secret[..6]));
    }
}
