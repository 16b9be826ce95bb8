//! Events: what the host emits, and the Standard Webhooks envelope they are sent in.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::error::{Error, Result};

/// An event to emit: its type, its data and an optional idempotency key.
///
/// ```
/// let event = keyhook::NewEvent::new("conversion.created", &serde_json::json!({"id": "cv_1"}))?
///     .idempotency_key("order-1234");
/// # Ok::<(), keyhook::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub(crate) event_type: String,
    /// `data` serialized once, spliced into the envelope as is.
    pub(crate) data: Vec<u8>,
    pub(crate) idempotency_key: Option<String>,
}

impl NewEvent {
    /// An event of `event_type` carrying `data` (anything `Serialize`).
    ///
    /// # Errors
    ///
    /// [`Error::Serialize`] if `data` cannot be represented as JSON.
    pub fn new(event_type: impl Into<String>, data: &impl Serialize) -> Result<NewEvent> {
        Ok(NewEvent {
            event_type: event_type.into(),
            data: serde_json::to_vec(data).map_err(Error::Serialize)?,
            idempotency_key: None,
        })
    }

    /// A key that makes emitting idempotent per organization: a second emit
    /// with the same key returns the first event's id and delivers nothing
    /// new. 1 to 255 bytes, no control characters.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> NewEvent {
        self.idempotency_key = Some(key.into());
        self
    }

    /// The event type.
    pub fn event_type(&self) -> &str {
        &self.event_type
    }
}

/// Serializes the Standard Webhooks envelope `{"type","timestamp","data"}`
/// once; these exact bytes are stored, signed and sent on every attempt.
pub(crate) fn envelope(event_type: &str, at: SystemTime, data: &[u8]) -> Result<Vec<u8>> {
    let mut body = Vec::with_capacity(96 + data.len());
    body.extend_from_slice(b"{\"type\":");
    serde_json::to_writer(&mut body, event_type).map_err(Error::Serialize)?;
    body.extend_from_slice(b",\"timestamp\":\"");
    body.extend_from_slice(rfc3339(at).as_bytes());
    body.extend_from_slice(b"\",\"data\":");
    body.extend_from_slice(data);
    body.push(b'}');
    Ok(body)
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-29T21:46:19.123Z`.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, day) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's algorithm.
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// (year, month, day) to days since 1970-01-01, Howard Hinnant's algorithm
/// (the inverse of [`civil_from_days`]; it does not check the date exists).
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_614_265_330_123);
        assert_eq!(rfc3339(t), "2021-02-25T15:02:10.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn envelope_shape() {
        let body = envelope("conversion.created", UNIX_EPOCH, br#"{"amount":12}"#).unwrap();
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            r#"{"type":"conversion.created","timestamp":"1970-01-01T00:00:00.000Z","data":{"amount":12}}"#
        );
    }
}
