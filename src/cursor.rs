//! Keyset cursors for paged lists (delivery history, the event log, API
//! keys): the position `(created_at, row id)` of the last item shown, with
//! an HMAC tag over the list's scope (which list, organization, filters)
//! under a per-database secret, so a cursor cannot be forged, altered, or
//! used with other filters or another organization.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use rusqlite::Connection;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::error::{Error, Result};

const TAG_LEN: usize = 16;

/// The database's cursor secret (made by the first migration).
pub(crate) fn key(c: &Connection) -> Result<Vec<u8>> {
    Ok(
        c.prepare_cached("SELECT value FROM keyhook_meta WHERE key = 'cursor_key'")?
            .query_row([], |r| r.get(0))?,
    )
}

fn tag(key: &[u8], scope: &[u8], at: i64, row: i64) -> [u8; TAG_LEN] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    // Length-prefixed, so no two scopes share a byte string.
    mac.update(&(scope.len() as u64).to_be_bytes());
    mac.update(scope);
    mac.update(&at.to_be_bytes());
    mac.update(&row.to_be_bytes());
    let full = mac.finalize().into_bytes();
    let mut tag = [0u8; TAG_LEN];
    tag.copy_from_slice(&full[..TAG_LEN]);
    tag
}

/// The cursor of position `(at, row)` in the list `scope` names.
pub(crate) fn encode(key: &[u8], scope: &[u8], at: i64, row: i64) -> String {
    let mut raw = Vec::with_capacity(16 + TAG_LEN);
    raw.extend_from_slice(&at.to_be_bytes());
    raw.extend_from_slice(&row.to_be_bytes());
    raw.extend_from_slice(&tag(key, scope, at, row));
    URL_SAFE_NO_PAD.encode(raw)
}

/// The position a cursor holds, if [`encode`] made it for this `scope`.
///
/// # Errors
///
/// [`Error::InvalidInput`] (`cursor`) for anything else.
pub(crate) fn decode(key: &[u8], scope: &[u8], cursor: &str) -> Result<(i64, i64)> {
    let bad = || {
        Error::invalid(
            "cursor",
            "not a cursor of this query (altered, or from other filters or another organization)",
        )
    };
    if cursor.len() > 64 {
        return Err(bad());
    }
    let raw = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
    if raw.len() != 16 + TAG_LEN {
        return Err(bad());
    }
    let at = i64::from_be_bytes(raw[..8].try_into().expect("8 bytes"));
    let row = i64::from_be_bytes(raw[8..16].try_into().expect("8 bytes"));
    if !bool::from(tag(key, scope, at, row).ct_eq(&raw[16..])) {
        return Err(bad());
    }
    Ok((at, row))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_tamper() {
        let key = [7u8; 32];
        let c = encode(&key, b"scope", 1_700_000_000_000, 42);
        assert_eq!(decode(&key, b"scope", &c).unwrap(), (1_700_000_000_000, 42));
        assert!(decode(&key, b"other", &c).is_err());
        assert!(decode(&[8u8; 32], b"scope", &c).is_err());
        let mut raw = URL_SAFE_NO_PAD.decode(&c).unwrap();
        raw[15] ^= 1;
        assert!(decode(&key, b"scope", &URL_SAFE_NO_PAD.encode(raw)).is_err());
        for junk in ["", "!!!", "AAAA", &"A".repeat(500)] {
            assert!(decode(&key, b"scope", junk).is_err());
        }
    }
}
