//! Keyset cursors for paged lists (delivery history, the event log, API
//! keys): the position of the last item shown (`created_at` and row ids), with
//! an HMAC tag over the list's scope (which list, organization, filters)
//! under a per-database secret, so a cursor cannot be forged, altered, or
//! used with other filters or another organization.

use crate::sql::Sql;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::error::{Error, Result};

const TAG_LEN: usize = 16;

/// The database's cursor secret (made by the first migration).
pub(crate) fn key(c: Sql<'_>) -> Result<Vec<u8>> {
    c.prepare_cached("SELECT value FROM keyhook_meta WHERE key = 'cursor_key'")?
        .query_row((), |r| r.get(0))
}

fn tag(key: &[u8], scope: &[u8], position: &[u8]) -> [u8; TAG_LEN] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    // Length-prefixed, so no two scopes share a byte string.
    mac.update(&(scope.len() as u64).to_be_bytes());
    mac.update(scope);
    mac.update(position);
    let full = mac.finalize().into_bytes();
    let mut tag = [0u8; TAG_LEN];
    tag.copy_from_slice(&full[..TAG_LEN]);
    tag
}

/// The cursor of `position` (N numbers) in the list `scope` names.
pub(crate) fn encode<const N: usize>(key: &[u8], scope: &[u8], position: [i64; N]) -> String {
    let mut raw: Vec<u8> = position.iter().flat_map(|n| n.to_be_bytes()).collect();
    let tag = tag(key, scope, &raw);
    raw.extend_from_slice(&tag);
    URL_SAFE_NO_PAD.encode(raw)
}

/// The position a cursor holds, if [`encode`] made it for this `scope`.
///
/// # Errors
///
/// [`Error::InvalidInput`] (`cursor`) for anything else.
pub(crate) fn decode<const N: usize>(key: &[u8], scope: &[u8], cursor: &str) -> Result<[i64; N]> {
    let bad = || {
        Error::invalid(
            "cursor",
            "not a cursor of this query (altered, or from other filters or another organization)",
        )
    };
    if cursor.len() > 128 {
        return Err(bad());
    }
    let raw = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
    if raw.len() != 8 * N + TAG_LEN {
        return Err(bad());
    }
    let (position, given) = raw.split_at(8 * N);
    if !bool::from(tag(key, scope, position).ct_eq(given)) {
        return Err(bad());
    }
    let mut out = [0i64; N];
    for (n, bytes) in out.iter_mut().zip(position.chunks_exact(8)) {
        *n = i64::from_be_bytes(bytes.try_into().expect("8 bytes"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_tamper() {
        let key = [7u8; 32];
        let c = encode(&key, b"scope", [1_700_000_000_000, 42]);
        assert_eq!(
            decode::<2>(&key, b"scope", &c).unwrap(),
            [1_700_000_000_000, 42]
        );
        assert!(decode::<2>(&key, b"other", &c).is_err());
        assert!(decode::<2>(&[8u8; 32], b"scope", &c).is_err());
        assert!(decode::<3>(&key, b"scope", &c).is_err(), "another shape");
        let mut raw = URL_SAFE_NO_PAD.decode(&c).unwrap();
        raw[15] ^= 1;
        assert!(decode::<2>(&key, b"scope", &URL_SAFE_NO_PAD.encode(raw)).is_err());
        for junk in ["", "!!!", "AAAA", &"A".repeat(500)] {
            assert!(decode::<2>(&key, b"scope", junk).is_err());
        }
    }
}
