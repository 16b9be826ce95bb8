//! The delivery queue: emit fan-out, claim (lease), complete, reschedule.
//!
//! All of the dispatcher's SQL lives here; the worker speaks in the types below.

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use crate::db::{Database, now_ms};
use crate::error::{Error, Result};
use crate::event::{NewEvent, envelope};
use crate::id::new_id;
use crate::registry::{active_secrets, headers_from_json};
use crate::signing::SigningSecret;

use super::http::Response;

pub(crate) const PENDING: i64 = 0;
pub(crate) const DELIVERED: i64 = 1;
pub(crate) const FAILED: i64 = 2;

/// What a worker needs to make one attempt.
pub(crate) struct Claimed {
    pub delivery_row: i64,
    /// The attempt number (1-based); also the fencing token for [`complete`].
    pub attempt: u32,
    pub endpoint_row: i64,
    pub endpoint_id: String,
    pub org: String,
    pub event_id: String,
    pub body: Vec<u8>,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub secrets: Vec<SigningSecret>,
}

/// Which deliveries a worker may claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lane {
    /// Anything due.
    Any,
    /// Only first attempts to endpoints with no recent failure, so retries
    /// and dead endpoints can never take every worker.
    Fresh,
}

/// How an attempt ended, for the delivery row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    Delivered,
    RetryAt(i64),
    Failed,
    /// 410 Gone: the delivery fails and the endpoint is disabled.
    Gone,
}

/// Limits checked when emitting.
pub(crate) struct EmitLimits {
    pub max_body: usize,
    pub first_delay_ms: i64,
}

/// The result of one emit: the event id, and how many deliveries it created
/// (zero for an idempotent repeat or no subscribers).
pub(crate) struct Emitted {
    pub id: String,
    pub deliveries: usize,
}

/// Stores events and their deliveries in the caller's transaction.
pub(crate) fn insert_events(
    tx: &Transaction<'_>,
    org: &str,
    events: &[NewEvent],
    limits: &EmitLimits,
) -> Result<Vec<Emitted>> {
    let now = now_ms();
    let mut out = Vec::with_capacity(events.len());
    for event in events {
        let at = crate::db::from_ms(now);
        let body = envelope(&event.event_type, at, &event.data)?;
        if body.len() > limits.max_body {
            return Err(Error::PayloadTooLarge {
                size: body.len(),
                limit: limits.max_body,
            });
        }
        if !tx
            .prepare_cached("SELECT 1 FROM event_types WHERE name = ?1")?
            .exists([&event.event_type])?
        {
            return Err(Error::UnknownEventType {
                name: event.event_type.clone(),
            });
        }
        if let Some(key) = &event.idempotency_key
            && let Some(id) = tx
                .prepare_cached("SELECT id FROM events WHERE org_id = ?1 AND idempotency_key = ?2")?
                .query_row(params![org, key], |r| r.get::<_, String>(0))
                .optional()?
        {
            out.push(Emitted { id, deliveries: 0 });
            continue;
        }
        let id = new_id("msg_", now)?;
        tx.prepare_cached(
            "INSERT INTO events (id, org_id, event_type, body, idempotency_key, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            id,
            org,
            event.event_type,
            body,
            event.idempotency_key,
            now
        ])?;
        let event_row = tx.last_insert_rowid();
        let deliveries = tx
            .prepare_cached(
                "INSERT INTO deliveries (event_row, endpoint_row, org_id, state, next_attempt_at,
                     created_at, updated_at)
                 SELECT ?1, e.row_id, e.org_id, 0, ?2, ?3, ?3 FROM endpoints e
                 WHERE e.org_id = ?4 AND e.enabled = 1
                   AND (e.all_event_types = 1 OR EXISTS (
                        SELECT 1 FROM endpoint_event_types t
                        WHERE t.endpoint_row = e.row_id AND t.event_type = ?5))",
            )?
            .execute(params![
                event_row,
                now + limits.first_delay_ms,
                now,
                org,
                event.event_type
            ])?;
        out.push(Emitted { id, deliveries });
    }
    Ok(out)
}

/// Leases the next due delivery in one atomic statement: its
/// `next_attempt_at` moves to `lease_until`, so if this worker dies the
/// delivery is simply due again then, and no other worker or process can
/// claim it meanwhile. Endpoints that failed recently, or never succeeded,
/// get at most `limited_in_flight` attempts at once.
pub(crate) fn claim(
    db: &Database,
    lane: Lane,
    lease_ms: i64,
    limited_in_flight: u32,
) -> Result<Option<Claimed>> {
    let now = now_ms();
    let conn = db.conn()?;
    let claimed = conn
        .prepare_cached(
            "UPDATE deliveries
             SET next_attempt_at = ?2, leased = 1, attempts = attempts + 1, updated_at = ?1
             WHERE state = 0 AND row_id = (
                SELECT d.row_id FROM deliveries d JOIN endpoints e ON e.row_id = d.endpoint_row
                WHERE d.state = 0 AND d.next_attempt_at <= ?1 AND e.enabled = 1
                  AND (?3 = 0 OR (d.attempts = 0 AND e.consecutive_failures = 0))
                  AND ((e.consecutive_failures = 0 AND e.last_success_at IS NOT NULL)
                       OR (SELECT COUNT(*) FROM deliveries x
                           WHERE x.endpoint_row = d.endpoint_row AND x.state = 0
                             AND x.leased = 1 AND x.next_attempt_at > ?1) < ?4)
                ORDER BY d.next_attempt_at, d.row_id
                LIMIT 1)
             RETURNING row_id, event_row, endpoint_row, attempts",
        )?
        .query_row(
            params![now, now + lease_ms, lane == Lane::Fresh, limited_in_flight],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, u32>(3)?,
                ))
            },
        )
        .optional()?;
    let Some((delivery_row, event_row, endpoint_row, attempt)) = claimed else {
        return Ok(None);
    };
    load(&conn, delivery_row, event_row, endpoint_row, attempt, now).map(Some)
}

fn load(
    conn: &Connection,
    delivery_row: i64,
    event_row: i64,
    endpoint_row: i64,
    attempt: u32,
    now: i64,
) -> Result<Claimed> {
    let (event_id, body, org, endpoint_id, url, headers) = conn
        .prepare_cached(
            "SELECT ev.id, ev.body, ev.org_id, e.id, e.url, e.headers
             FROM events ev, endpoints e WHERE ev.row_id = ?1 AND e.row_id = ?2",
        )?
        .query_row(params![event_row, endpoint_row], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
            ))
        })?;
    Ok(Claimed {
        delivery_row,
        attempt,
        endpoint_row,
        endpoint_id,
        org,
        event_id,
        body,
        url,
        headers: headers_from_json(&headers),
        secrets: active_secrets(conn, endpoint_row, now)?,
    })
}

/// Records an attempt and moves the delivery on. Returns false if the lease
/// was lost meanwhile (another worker re-claimed the delivery after the lease
/// expired): the attempt is still recorded, the delivery row is left alone.
pub(crate) fn complete(
    db: &Database,
    claimed: &Claimed,
    response: &Response,
    next: Next,
    manual: bool,
) -> Result<bool> {
    let now = now_ms();
    db.write(|tx| {
        let (state, next_at) = match next {
            Next::Delivered => (DELIVERED, None),
            Next::RetryAt(at) => (PENDING, Some(at)),
            Next::Failed | Next::Gone => (FAILED, None),
        };
        let applied = if manual {
            // A manual attempt leaves the schedule alone unless it succeeded.
            tx.prepare_cached(
                "UPDATE deliveries SET state = ?2, next_attempt_at = NULL, leased = 0, updated_at = ?3
                 WHERE row_id = ?1 AND ?2 = 1 AND state <> 1",
            )?
            .execute(params![claimed.delivery_row, state, now])?
                > 0
        } else {
            tx.prepare_cached(
                "UPDATE deliveries SET state = ?3, next_attempt_at = ?4, leased = 0, updated_at = ?5
                 WHERE row_id = ?1 AND attempts = ?2 AND state = 0",
            )?
            .execute(params![
                claimed.delivery_row,
                claimed.attempt,
                state,
                next_at,
                now
            ])? > 0
        };
        let started = now - response.duration.as_millis() as i64;
        tx.prepare_cached(
            "INSERT INTO attempts (delivery_row, attempted_at, duration_ms, status_code,
                 error_kind, response_body, manual)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
            claimed.delivery_row,
            started,
            response.duration.as_millis() as i64,
            response.status,
            response.error.map(|e| e.as_str()),
            response.excerpt,
            manual
        ])?;
        if response.is_success() {
            tx.prepare_cached(
                "UPDATE endpoints SET consecutive_failures = 0, failing_since = NULL,
                     last_success_at = ?2
                 WHERE row_id = ?1 AND (consecutive_failures <> 0 OR last_success_at IS NULL
                     OR last_success_at < ?2 - 1000)",
            )?
            .execute(params![claimed.endpoint_row, now])?;
        } else {
            tx.prepare_cached(
                "UPDATE endpoints SET consecutive_failures = consecutive_failures + 1,
                     failing_since = COALESCE(failing_since, ?2)
                 WHERE row_id = ?1",
            )?
            .execute(params![claimed.endpoint_row, started])?;
        }
        if next == Next::Gone {
            tx.prepare_cached(
                "UPDATE endpoints SET enabled = 0, disabled_reason = ?2, updated_at = ?3
                 WHERE row_id = ?1",
            )?
            .execute(params![
                claimed.endpoint_row,
                "the receiver answered 410 Gone",
                now
            ])?;
        }
        Ok(applied)
    })
}

/// When the earliest pending delivery is due (leases included), if any.
pub(crate) fn next_due(db: &Database) -> Result<Option<i64>> {
    db.read(|c| {
        Ok(
            c.prepare_cached("SELECT MIN(next_attempt_at) FROM deliveries WHERE state = 0")?
                .query_row([], |r| r.get::<_, Option<i64>>(0))?,
        )
    })
}
