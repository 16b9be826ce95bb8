//! Random identifiers and base62, shared by keys, endpoints and events.

use rand::TryRngCore;
use rand::rngs::OsRng;

use crate::error::{Error, Result};

pub(crate) const BASE62: &[u8; 62] =
    b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Fills `buf` from the operating system's CSPRNG.
pub(crate) fn os_random(buf: &mut [u8]) -> Result<()> {
    OsRng.try_fill_bytes(buf).map_err(|e| {
        Error::Io(std::io::Error::other(format!(
            "OS random source failed: {e}"
        )))
    })
}

/// `len` base62 characters from the OS CSPRNG, without modulo bias
/// (bytes >= 248 are redrawn: 248 = 4 * 62).
pub(crate) fn random_base62(len: usize) -> Result<String> {
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        os_random(&mut buf)?;
        for &b in &buf {
            if b < 248 && out.len() < len {
                out.push(BASE62[(b % 62) as usize] as char);
            }
        }
    }
    Ok(out)
}

/// Fixed-width base62 of `n`, most significant digit first.
pub(crate) fn base62_fixed(mut n: u64, width: usize) -> String {
    let mut digits = vec![b'0'; width];
    for slot in digits.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8(digits).expect("base62 is ASCII")
}

/// Decodes fixed-width base62; `None` on a non-base62 byte or overflow.
pub(crate) fn decode_base62(s: &[u8]) -> Option<u64> {
    let mut n: u64 = 0;
    for &c in s {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'A'..=b'Z' => c - b'A' + 10,
            b'a'..=b'z' => c - b'a' + 36,
            _ => return None,
        };
        n = n.checked_mul(62)?.checked_add(u64::from(d))?;
    }
    Some(n)
}

pub(crate) fn is_base62(s: &[u8]) -> bool {
    s.iter().all(u8::is_ascii_alphanumeric)
}

/// A new public id: `prefix` + 8 base62 chars of milliseconds (so ids sort by
/// creation time and inserts land at the end of the index) + 14 random chars
/// (83 bits).
pub(crate) fn new_id(prefix: &str, now_ms: i64) -> Result<String> {
    let mut id = String::with_capacity(prefix.len() + 22);
    id.push_str(prefix);
    id.push_str(&base62_fixed(now_ms.max(0) as u64, 8));
    id.push_str(&random_base62(14)?);
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base62_roundtrip() {
        for n in [0u64, 1, 61, 62, 4_294_967_295, 1_700_000_000_000] {
            assert_eq!(decode_base62(base62_fixed(n, 8).as_bytes()), Some(n));
        }
        assert_eq!(decode_base62(b"_"), None);
    }

    #[test]
    fn random_is_base62_and_distinct() {
        let a = random_base62(22).unwrap();
        let b = random_base62(22).unwrap();
        assert_eq!(a.len(), 22);
        assert!(is_base62(a.as_bytes()));
        assert_ne!(a, b);
    }

    #[test]
    fn ids_sort_by_time() {
        let a = new_id("msg_", 1_000).unwrap();
        let b = new_id("msg_", 2_000).unwrap();
        assert!(a < b);
        assert!(a.starts_with("msg_"));
    }
}
