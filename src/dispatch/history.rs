//! The delivery history: deliveries and their attempts, for the settings page.

use std::time::{Duration, SystemTime};

use rusqlite::{Connection, OptionalExtension, params};

use crate::db::{Database, from_ms};
use crate::error::{Error, Result};

use super::http::AttemptError;
use super::queue::{DELIVERED, FAILED};

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryState {
    /// Waiting for its next attempt (or in one).
    Pending,
    /// The receiver answered 2xx.
    Delivered,
    /// The retry schedule was used up, or the endpoint answered 410 Gone.
    Failed,
}

impl DeliveryState {
    pub(crate) fn from_code(code: i64) -> DeliveryState {
        match code {
            DELIVERED => DeliveryState::Delivered,
            FAILED => DeliveryState::Failed,
            _ => DeliveryState::Pending,
        }
    }
}

/// One event's delivery to one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The event id (the `webhook-id` header).
    pub event_id: String,
    /// The event type.
    pub event_type: String,
    /// The endpoint.
    pub endpoint_id: String,
    /// Where it stands.
    pub state: DeliveryState,
    /// When it was created (the event was emitted).
    pub created_at: SystemTime,
    /// When the next attempt is due, while pending.
    pub next_attempt_at: Option<SystemTime>,
    /// Its attempts, oldest first.
    pub attempts: Vec<Attempt>,
}

/// One HTTP attempt of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// When it started.
    pub at: SystemTime,
    /// How long it took.
    pub duration: Duration,
    /// The receiver's status code, if it answered.
    pub status_code: Option<u16>,
    /// Why it failed, if it did.
    pub error: Option<AttemptError>,
    /// The start of the response body (at most the configured excerpt size).
    pub response_excerpt: Vec<u8>,
    /// Made by hand (a redelivery) rather than by the retry schedule.
    pub manual: bool,
}

const DELIVERY_SELECT: &str = "SELECT d.row_id, ev.id, ev.event_type, e.id, d.state, d.created_at,
        d.next_attempt_at
     FROM deliveries d
     JOIN events ev ON ev.row_id = d.event_row
     JOIN endpoints e ON e.row_id = d.endpoint_row";

fn collect(c: &Connection, sql: &str, params: impl rusqlite::Params) -> Result<Vec<Delivery>> {
    let mut stmt = c.prepare_cached(sql)?;
    let rows = stmt
        .query_map(params, |r| {
            Ok((
                r.get::<_, i64>(0)?,
                Delivery {
                    event_id: r.get(1)?,
                    event_type: r.get(2)?,
                    endpoint_id: r.get(3)?,
                    state: DeliveryState::from_code(r.get(4)?),
                    created_at: from_ms(r.get(5)?),
                    next_attempt_at: r.get::<_, Option<i64>>(6)?.map(from_ms),
                    attempts: Vec::new(),
                },
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter()
        .map(|(row, mut d)| {
            d.attempts = attempts(c, row)?;
            Ok(d)
        })
        .collect()
}

fn attempts(c: &Connection, delivery_row: i64) -> Result<Vec<Attempt>> {
    let mut stmt = c.prepare_cached(
        "SELECT attempted_at, duration_ms, status_code, error_kind, response_body, manual
         FROM attempts WHERE delivery_row = ?1 ORDER BY row_id",
    )?;
    let rows = stmt.query_map([delivery_row], |r| {
        Ok(Attempt {
            at: from_ms(r.get(0)?),
            duration: Duration::from_millis(r.get::<_, i64>(1)?.max(0) as u64),
            status_code: r.get(2)?,
            error: r
                .get::<_, Option<String>>(3)?
                .map(|s| AttemptError::parse(&s)),
            response_excerpt: r.get::<_, Option<Vec<u8>>>(4)?.unwrap_or_default(),
            manual: r.get(5)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub(crate) fn endpoint_deliveries(
    db: &Database,
    org: &str,
    endpoint_id: &str,
    limit: usize,
) -> Result<Vec<Delivery>> {
    db.read(|c| {
        let row: i64 = c
            .prepare_cached("SELECT row_id FROM endpoints WHERE org_id = ?1 AND id = ?2")?
            .query_row([org, endpoint_id], |r| r.get(0))
            .optional()?
            .ok_or_else(|| Error::not_found("endpoint", endpoint_id))?;
        collect(
            c,
            &format!("{DELIVERY_SELECT} WHERE d.endpoint_row = ?1 ORDER BY d.row_id DESC LIMIT ?2"),
            params![row, limit.min(1000) as i64],
        )
    })
}

pub(crate) fn event_deliveries(db: &Database, org: &str, event_id: &str) -> Result<Vec<Delivery>> {
    db.read(|c| {
        let row: i64 = c
            .prepare_cached("SELECT row_id FROM events WHERE org_id = ?1 AND id = ?2")?
            .query_row([org, event_id], |r| r.get(0))
            .optional()?
            .ok_or_else(|| Error::not_found("event", event_id))?;
        collect(
            c,
            &format!("{DELIVERY_SELECT} WHERE d.event_row = ?1 ORDER BY d.row_id"),
            params![row],
        )
    })
}
