//! The delivery history for the settings page: pages of deliveries with
//! their attempts, filtered by state and time, with a tamper-evident cursor.

use std::time::{Duration, SystemTime};

use crate::sql::{Arg, Optional, Params, Sql, params};

use crate::cursor;
use crate::db::{Database, from_ms, now_ms, to_ms};
use crate::error::{Error, Result};

use super::http::AttemptError;
use super::queue::{DELIVERED, FAILED, PENDING};

/// The longest time range one history query may span.
pub const MAX_HISTORY_RANGE: Duration = Duration::from_secs(90 * 24 * 3600);
/// The most deliveries on one history page.
pub const MAX_PAGE_SIZE: usize = 200;

impl std::fmt::Display for DeliveryState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for DeliveryState {
    type Err = Error;

    /// The state [`DeliveryState::as_str`] names; [`Error::InvalidInput`]
    /// (`state`) for anything else.
    fn from_str(s: &str) -> Result<DeliveryState> {
        match s {
            "pending" => Ok(DeliveryState::Pending),
            "delivered" => Ok(DeliveryState::Delivered),
            "failed" => Ok(DeliveryState::Failed),
            _ => Err(Error::invalid(
                "state",
                "must be pending, delivered or failed",
            )),
        }
    }
}

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
    /// A stable name for URLs, forms and logs: `pending`, `delivered`,
    /// `failed` (parsed back by `str::parse`).
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        }
    }

    pub(crate) fn from_code(code: i64) -> DeliveryState {
        match code {
            DELIVERED => DeliveryState::Delivered,
            FAILED => DeliveryState::Failed,
            _ => DeliveryState::Pending,
        }
    }

    fn code(self) -> i64 {
        match self {
            DeliveryState::Pending => PENDING,
            DeliveryState::Delivered => DELIVERED,
            DeliveryState::Failed => FAILED,
        }
    }
}

/// One event's delivery to one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Its id, for [`Dispatcher::redeliver`](super::Dispatcher::redeliver).
    pub id: String,
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
    /// A test event's delivery ([`Dispatcher::send_test_event`](super::Dispatcher::send_test_event)).
    pub test: bool,
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

/// Which deliveries a history page shows. The default: every state, all
/// time, 50 per page, first page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Only deliveries in this state.
    pub state: Option<DeliveryState>,
    /// Only deliveries of events of this type. An endpoint's page then
    /// skips its deliveries of other types; across an organization
    /// ([`Dispatcher::org_history`](super::Dispatcher::org_history)) pages
    /// follow the events of the type (newest first, through their index)
    /// with each event's deliveries. There, a state filter skips
    /// deliveries in other states: its cost grows with how rare the state
    /// is.
    pub event_type: Option<String>,
    /// Only deliveries of events emitted at or after this time (a
    /// delivery is dated by its event, replayed ones included).
    pub since: Option<SystemTime>,
    /// Only deliveries of events emitted before this time.
    pub until: Option<SystemTime>,
    /// Deliveries per page, 1 to [`MAX_PAGE_SIZE`]. Default: 50.
    pub limit: usize,
    /// The `next_cursor` of the previous page, to continue from it.
    pub cursor: Option<String>,
}

impl Default for HistoryQuery {
    fn default() -> Self {
        HistoryQuery {
            state: None,
            event_type: None,
            since: None,
            until: None,
            limit: 50,
            cursor: None,
        }
    }
}

/// One page of history, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    /// The deliveries, newest first, each with its attempts.
    pub deliveries: Vec<Delivery>,
    /// Pass this as [`HistoryQuery::cursor`] (with the same filters) for the
    /// next page; `None` on the last page. Pages stay stable while new
    /// deliveries arrive: the cursor is a position, not an offset.
    pub next_cursor: Option<String>,
}

/// The delivery columns, reading `deliveries` through `index` when given.
///
/// CROSS JOIN fixes the join order (SQLite never reorders it): deliveries
/// first, read in index order, so a page costs its own rows. With
/// statistics from ANALYZE the planner otherwise may start from endpoints
/// and sort the endpoint's whole history for every page.
fn delivery_select(index: Option<&str>) -> String {
    format!(
        "SELECT {DELIVERY_COLUMNS}
         FROM keyhook_deliveries d {}
         CROSS JOIN keyhook_events ev ON ev.row_id = d.event_row
         CROSS JOIN keyhook_endpoints e ON e.row_id = d.endpoint_row",
        index.map(|i| format!("INDEXED BY {i}")).unwrap_or_default()
    )
}

/// What [`collect_rows`] reads, from `d` (deliveries), `ev` (events) and
/// `e` (endpoints).
const DELIVERY_COLUMNS: &str = "d.row_id, ev.id, ev.event_type, e.id, d.state, d.created_at,
    d.next_attempt_at, COALESCE(d.id, 'dlv_' || d.row_id), ev.test, ev.row_id, ev.created_at";

/// Where a delivery stands in the orders pages use.
#[derive(Clone, Copy)]
struct Keys {
    row: i64,
    event_row: i64,
    event_at: i64,
}

/// The row of a delivery of `org` by its public id.
pub(crate) fn delivery_row(c: Sql<'_>, org: &str, id: &str) -> Result<i64> {
    c.prepare_cached("SELECT row_id FROM keyhook_deliveries WHERE id = ?1 AND org_id = ?2")?
        .query_row([id, org], |r| r.get(0))
        .optional()?
        .ok_or_else(|| Error::not_found("delivery", id))
}

fn collect(c: Sql<'_>, sql: &str, params: impl Params) -> Result<Vec<Delivery>> {
    Ok(collect_rows(c, sql, params)?
        .into_iter()
        .map(|(_, d)| d)
        .collect())
}

/// Deliveries with their keys (the keyset of a page), attempts loaded.
fn collect_rows(c: Sql<'_>, sql: &str, params: impl Params) -> Result<Vec<(Keys, Delivery)>> {
    let mut stmt = c.prepare_cached(sql)?;
    let rows = stmt
        .query_map(params, |r| {
            Ok((
                Keys {
                    row: r.get(0)?,
                    event_row: r.get(9)?,
                    event_at: r.get(10)?,
                },
                Delivery {
                    id: r.get(7)?,
                    event_id: r.get(1)?,
                    event_type: r.get(2)?,
                    endpoint_id: r.get(3)?,
                    state: DeliveryState::from_code(r.get(4)?),
                    created_at: from_ms(r.get(5)?),
                    next_attempt_at: r.get::<Option<i64>>(6)?.map(from_ms),
                    test: r.get(8)?,
                    attempts: Vec::new(),
                },
            ))
        })?
        .collect::<Result<Vec<_>>>()?;
    rows.into_iter()
        .map(|(keys, mut d)| {
            d.attempts = attempts(c, keys.row)?;
            Ok((keys, d))
        })
        .collect()
}

pub(crate) fn attempts(c: Sql<'_>, delivery_row: i64) -> Result<Vec<Attempt>> {
    let mut stmt = c.prepare_cached(
        "SELECT attempted_at, duration_ms, status_code, error_kind, response_body, manual
         FROM keyhook_attempts WHERE delivery_row = ?1 ORDER BY row_id",
    )?;
    let rows = stmt.query_map([delivery_row], |r| {
        Ok(Attempt {
            at: from_ms(r.get(0)?),
            duration: Duration::from_millis(r.get::<i64>(1)?.max(0) as u64),
            status_code: r.get(2)?,
            error: r.get::<Option<String>>(3)?.map(|s| AttemptError::parse(&s)),
            response_excerpt: r.get::<Option<Vec<u8>>>(4)?.unwrap_or_default(),
            manual: r.get(5)?,
        })
    })?;
    rows.collect::<Result<_>>()
}

/// The endpoint's row, if `org` has it and it is enabled.
pub(crate) fn enabled_endpoint_row(c: Sql<'_>, org: &str, endpoint_id: &str) -> Result<i64> {
    let row = endpoint_row(c, org, endpoint_id)?;
    let enabled: bool = c.query_row(
        "SELECT enabled FROM keyhook_endpoints WHERE row_id = ?1",
        [row],
        |r| r.get(0),
    )?;
    if !enabled {
        return Err(Error::InvalidState {
            kind: "endpoint",
            id: endpoint_id.to_owned(),
            state: "disabled",
        });
    }
    Ok(row)
}

/// The endpoint's row, if `org` has it.
pub(crate) fn endpoint_row(c: Sql<'_>, org: &str, endpoint_id: &str) -> Result<i64> {
    c.prepare_cached("SELECT row_id FROM keyhook_endpoints WHERE org_id = ?1 AND id = ?2")?
        .query_row([org, endpoint_id], |r| r.get(0))
        .optional()?
        .ok_or_else(|| Error::not_found("endpoint", endpoint_id))
}

/// Checks a page size and a time range; returns the range in ms.
fn check_page(
    limit: usize,
    since: Option<SystemTime>,
    until: Option<SystemTime>,
) -> Result<(i64, i64)> {
    if limit == 0 || limit > MAX_PAGE_SIZE {
        return Err(Error::invalid(
            "limit",
            format!("must be 1 to {MAX_PAGE_SIZE}"),
        ));
    }
    let from = since.map(to_ms).unwrap_or(i64::MIN);
    let to = until.map(to_ms).unwrap_or(i64::MAX);
    if from >= to {
        return Err(Error::invalid("since", "must be before until"));
    }
    if since.is_some()
        && until.is_some()
        && to.saturating_sub(from) > MAX_HISTORY_RANGE.as_millis() as i64
    {
        return Err(Error::invalid(
            "until",
            "the range may span at most 90 days",
        ));
    }
    Ok((from, to))
}

/// A page from `limit + 1` rows (keyset position, item) read newest first:
/// the items shown, and the cursor of the next page if the extra row exists.
fn finish_page<T, const N: usize>(
    mut rows: Vec<([i64; N], T)>,
    limit: usize,
    key: &[u8],
    scope: &CursorScope<'_>,
) -> (Vec<T>, Option<String>) {
    let next_cursor = if rows.len() > limit {
        rows.truncate(limit);
        let (position, _) = rows.last().expect("limit is at least 1");
        Some(cursor::encode(key, &scope.bytes(), *position))
    } else {
        None
    };
    (
        rows.into_iter().map(|(_, item)| item).collect(),
        next_cursor,
    )
}

/// A page of deliveries in event order: the organization's events newest
/// first (of one type when `by_type`), each with its deliveries (in one
/// state when `by_state`).
fn by_event_sql(by_type: bool, by_state: bool) -> String {
    // Parameters: ?1 organization, ?2 since, ?3 before_at, ?4 before_event,
    // ?5 before_row, ?6 limit, then the type and the state if filtered.
    let (index, type_filter) = if by_type {
        ("keyhook_events_by_org_type", "AND ev.event_type = ?7")
    } else {
        ("keyhook_events_by_org", "")
    };
    let state_filter = match (by_state, by_type) {
        (false, _) => "",
        (true, true) => "AND d.state = ?8",
        (true, false) => "AND d.state = ?7",
    };
    format!(
        "SELECT {DELIVERY_COLUMNS}
         FROM keyhook_events ev INDEXED BY {index}
         CROSS JOIN keyhook_deliveries d INDEXED BY keyhook_deliveries_by_event
           ON d.event_row = ev.row_id
         CROSS JOIN keyhook_endpoints e ON e.row_id = d.endpoint_row
         WHERE ev.org_id = ?1 {type_filter} AND ev.created_at >= ?2
           AND (ev.created_at, ev.row_id) <= (?3, ?4)
           AND ((ev.created_at, ev.row_id) < (?3, ?4) OR d.row_id < ?5)
           {state_filter}
         ORDER BY ev.created_at DESC, ev.row_id DESC, d.row_id DESC LIMIT ?6"
    )
}

/// A page of deliveries of one endpoint (`endpoint_id`) or of the whole
/// organization (`None`), newest first. Each filter combination reads one
/// index in keyset order, so a page costs its own rows however deep.
pub(crate) fn history(
    db: &Database,
    org: &str,
    endpoint_id: Option<&str>,
    query: &HistoryQuery,
) -> Result<HistoryPage> {
    let (since, until) = check_page(query.limit, query.since, query.until)?;
    if let Some(t) = &query.event_type
        && (t.is_empty() || t.len() > 100)
    {
        return Err(Error::invalid("event_type", "must be 1 to 100 bytes"));
    }
    db.read(|c| {
        let endpoint_row = endpoint_id.map(|id| endpoint_row(c, org, id)).transpose()?;
        let key = cursor::key(c)?;
        let scope = CursorScope {
            kind: if endpoint_id.is_some() { 1 } else { 2 },
            org,
            endpoint_id: endpoint_id.unwrap_or(""),
            state: query.state,
            event_type: query.event_type.as_deref(),
            since,
            until,
        };
        let limit = query.limit as i64 + 1;
        let state = query.state.map(DeliveryState::code);
        let (deliveries, next_cursor) = match endpoint_row {
            // One endpoint's deliveries, newest first, through its own
            // indexes (a type filter skips the endpoint's other types).
            Some(row) => {
                let [before_at, before_row] = match &query.cursor {
                    Some(c) => cursor::decode(&key, &scope.bytes(), c)?,
                    None => [until, i64::MIN],
                };
                // Parameters: ?1 endpoint, ?2 since, ?3 before_at, ?4
                // before_row, ?5 limit, then the state and the type if
                // filtered.
                let mut params: Vec<&dyn Arg> = vec![&row, &since, &before_at, &before_row, &limit];
                let (index, filter) = match &state {
                    Some(s) => {
                        params.push(s);
                        (
                            "keyhook_deliveries_by_endpoint_state",
                            format!("AND d.state = ?{}", params.len()),
                        )
                    }
                    None => ("keyhook_deliveries_by_endpoint", String::new()),
                };
                let type_filter = match &query.event_type {
                    Some(t) => {
                        params.push(t);
                        format!("AND ev.event_type = ?{}", params.len())
                    }
                    None => String::new(),
                };
                let sql = format!(
                    "{} WHERE d.endpoint_row = ?1 {filter} {type_filter}
                       AND d.created_at >= ?2 AND (d.created_at, d.row_id) < (?3, ?4)
                     ORDER BY d.created_at DESC, d.row_id DESC LIMIT ?5",
                    delivery_select(Some(index))
                );
                let rows = collect_rows(c, &sql, params.as_slice())?
                    .into_iter()
                    .map(|(k, d)| ([to_ms(d.created_at), k.row], d))
                    .collect();
                finish_page(rows, query.limit, &key, &scope)
            }
            // The organization's events newest first (of the type), each
            // with its deliveries, through the events' indexes: deliveries
            // need no index per filter, which would cost every delivery
            // write.
            None => {
                let event_type = &query.event_type;
                let [before_at, before_event, before_row] = match &query.cursor {
                    Some(c) => cursor::decode(&key, &scope.bytes(), c)?,
                    None => [until, i64::MIN, i64::MIN],
                };
                let sql = by_event_sql(event_type.is_some(), state.is_some());
                let mut params: Vec<&dyn Arg> =
                    vec![&org, &since, &before_at, &before_event, &before_row, &limit];
                if let Some(t) = event_type {
                    params.push(t);
                }
                if let Some(s) = &state {
                    params.push(s);
                }
                let rows = collect_rows(c, &sql, params.as_slice())?
                    .into_iter()
                    .map(|(k, d)| ([k.event_at, k.event_row, k.row], d))
                    .collect();
                finish_page(rows, query.limit, &key, &scope)
            }
        };
        Ok(HistoryPage {
            deliveries,
            next_cursor,
        })
    })
}

pub(crate) fn event_deliveries(db: &Database, org: &str, event_id: &str) -> Result<Vec<Delivery>> {
    db.read(|c| {
        let row: i64 = c
            .prepare_cached("SELECT row_id FROM keyhook_events WHERE org_id = ?1 AND id = ?2")?
            .query_row([org, event_id], |r| r.get(0))
            .optional()?
            .ok_or_else(|| Error::not_found("event", event_id))?;
        collect(
            c,
            &format!(
                "{} WHERE d.event_row = ?1 ORDER BY d.row_id",
                delivery_select(None)
            ),
            params![row],
        )
    })
}

/// One delivery of the organization.
pub(crate) fn delivery(c: Sql<'_>, org: &str, id: &str) -> Result<Delivery> {
    let row = delivery_row(c, org, id)?;
    collect(
        c,
        &format!(
            "{} WHERE d.row_id = ?1 AND d.org_id = ?2",
            delivery_select(None)
        ),
        params![row, org],
    )?
    .pop()
    .ok_or_else(|| Error::not_found("delivery", id))
}

/// Which events an event-log page shows ([`Dispatcher::events`](super::Dispatcher::events)).
/// The default: every type, all time, 50 per page, first page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventQuery {
    /// Only events of this type.
    pub event_type: Option<String>,
    /// Only events emitted at or after this time.
    pub since: Option<SystemTime>,
    /// Only events emitted before this time.
    pub until: Option<SystemTime>,
    /// Events per page, 1 to [`MAX_PAGE_SIZE`]. Default: 50.
    pub limit: usize,
    /// The `next_cursor` of the previous page, to continue from it.
    pub cursor: Option<String>,
}

impl Default for EventQuery {
    fn default() -> Self {
        EventQuery {
            event_type: None,
            since: None,
            until: None,
            limit: 50,
            cursor: None,
        }
    }
}

/// One event in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSummary {
    /// The event id (the `webhook-id` receivers see).
    pub id: String,
    /// Its type.
    pub event_type: String,
    /// When it was emitted.
    pub created_at: SystemTime,
    /// A test event ([`Dispatcher::send_test_event`](super::Dispatcher::send_test_event)).
    pub test: bool,
}

/// One page of the event log, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventPage {
    /// The events, newest first.
    pub events: Vec<EventSummary>,
    /// Pass this as [`EventQuery::cursor`] (with the same filters) for the
    /// next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// One event with its payload and its delivery to each endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventDetail {
    /// The event.
    pub event: EventSummary,
    /// The body receivers get, byte for byte: the Standard Webhooks
    /// envelope `{"type", "timestamp", "data"}`.
    pub body: Vec<u8>,
    /// Its deliveries (one per endpoint it went to), each with its attempts.
    pub deliveries: Vec<Delivery>,
}

impl EventDetail {
    /// The event's `data`, parsed from the body.
    pub fn data(&self) -> Option<serde_json::Value> {
        let mut envelope: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        Some(envelope.get_mut("data")?.take())
    }
}

/// A page of the organization's events, newest first, through one index in
/// keyset order (a page costs its own rows however deep).
pub(crate) fn events(db: &Database, org: &str, query: &EventQuery) -> Result<EventPage> {
    let (since, until) = check_page(query.limit, query.since, query.until)?;
    db.read(|c| {
        let key = cursor::key(c)?;
        let scope = CursorScope {
            kind: 3,
            org,
            endpoint_id: "",
            state: None,
            event_type: query.event_type.as_deref(),
            since,
            until,
        };
        let [before_at, before_row] = match &query.cursor {
            Some(c) => cursor::decode(&key, &scope.bytes(), c)?,
            None => [until, i64::MIN],
        };
        let (index, filter) = match query.event_type {
            Some(_) => ("keyhook_events_by_org_type", "AND event_type = ?6"),
            None => ("keyhook_events_by_org", ""),
        };
        let sql = format!(
            "SELECT row_id, id, event_type, created_at, test
             FROM keyhook_events INDEXED BY {index}
             WHERE org_id = ?1 {filter}
               AND created_at >= ?2 AND (created_at, row_id) < (?3, ?4)
             ORDER BY created_at DESC, row_id DESC LIMIT ?5"
        );
        let limit = query.limit as i64 + 1;
        let mut params: Vec<&dyn Arg> = vec![&org, &since, &before_at, &before_row, &limit];
        if let Some(t) = &query.event_type {
            params.push(t);
        }
        let mut stmt = c.prepare_cached(&sql)?;
        let rows = stmt
            .query_map(params.as_slice(), |r| {
                Ok((
                    [r.get::<i64>(3)?, r.get::<i64>(0)?],
                    EventSummary {
                        id: r.get(1)?,
                        event_type: r.get(2)?,
                        created_at: from_ms(r.get(3)?),
                        test: r.get(4)?,
                    },
                ))
            })?
            .collect::<Result<Vec<_>>>()?;
        let (events, next_cursor) = finish_page(rows, query.limit, &key, &scope);
        Ok(EventPage {
            events,
            next_cursor,
        })
    })
}

/// One event of `org` with its body and deliveries.
pub(crate) fn event(db: &Database, org: &str, event_id: &str) -> Result<EventDetail> {
    db.read(|c| {
        let (row, event, body) = c
            .prepare_cached(
                "SELECT row_id, id, event_type, created_at, test, body FROM keyhook_events
                 WHERE org_id = ?1 AND id = ?2",
            )?
            .query_row([org, event_id], |r| {
                Ok((
                    r.get::<i64>(0)?,
                    EventSummary {
                        id: r.get(1)?,
                        event_type: r.get(2)?,
                        created_at: from_ms(r.get(3)?),
                        test: r.get(4)?,
                    },
                    r.get::<Vec<u8>>(5)?,
                ))
            })
            .optional()?
            .ok_or_else(|| Error::not_found("event", event_id))?;
        let deliveries = collect(
            c,
            &format!(
                "{} WHERE d.event_row = ?1 ORDER BY d.row_id",
                delivery_select(None)
            ),
            params![row],
        )?;
        Ok(EventDetail {
            event,
            body,
            deliveries,
        })
    })
}

/// What a cursor is valid for: the same kind of list, organization,
/// endpoint and filters.
struct CursorScope<'a> {
    /// 1: an endpoint's history; 2: an organization's; 3: its events.
    kind: u8,
    org: &'a str,
    endpoint_id: &'a str,
    state: Option<DeliveryState>,
    event_type: Option<&'a str>,
    since: i64,
    until: i64,
}

impl CursorScope<'_> {
    /// What a cursor's tag covers.
    fn bytes(&self) -> Vec<u8> {
        let mut out = vec![self.kind];
        for part in [
            self.org.as_bytes(),
            self.endpoint_id.as_bytes(),
            self.event_type.unwrap_or("").as_bytes(),
        ] {
            out.extend_from_slice(&(part.len() as u64).to_be_bytes());
            out.extend_from_slice(part);
        }
        out.push(u8::from(self.event_type.is_some()));
        out.extend_from_slice(&self.state.map_or(-1, DeliveryState::code).to_be_bytes());
        out.extend_from_slice(&self.since.to_be_bytes());
        out.extend_from_slice(&self.until.to_be_bytes());
        out
    }
}

#[cfg(test)]
fn encode_cursor(key: &[u8], scope: &CursorScope<'_>, at: i64, row: i64) -> String {
    cursor::encode(key, &scope.bytes(), [at, row])
}

#[cfg(test)]
fn decode_cursor(key: &[u8], scope: &CursorScope<'_>, c: &str) -> Result<(i64, i64)> {
    let [at, row] = cursor::decode(key, &scope.bytes(), c)?;
    Ok((at, row))
}

/// Counts for a dashboard.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EndpointStats {
    /// Deliveries waiting for an attempt.
    pub pending: u64,
    /// Deliveries that succeeded.
    pub delivered: u64,
    /// Deliveries that failed for good.
    pub failed: u64,
    /// Attempts in the last 24 hours (of deliveries created in that time).
    pub attempts_24h: u64,
    /// Share of those attempts that succeeded, `None` without attempts.
    pub success_rate_24h: Option<f64>,
}

pub(crate) fn endpoint_stats(db: &Database, org: &str, endpoint_id: &str) -> Result<EndpointStats> {
    db.read(|c| {
        let row = endpoint_row(c, org, endpoint_id)?;
        let count = |state: i64| -> Result<u64> {
            c.prepare_cached(
                "SELECT COUNT(*) FROM keyhook_deliveries INDEXED BY keyhook_deliveries_by_endpoint_state
                 WHERE endpoint_row = ?1 AND state = ?2",
            )?
            .query_row(params![row, state], |r| r.get(0))
        };
        let day_ago = now_ms() - 24 * 3600 * 1000;
        let (attempts, ok): (u64, u64) = c
            .prepare_cached(
                "SELECT COUNT(a.row_id), COALESCE(SUM(CASE WHEN a.status_code BETWEEN 200 AND 299 THEN 1 ELSE 0 END), 0)
                 FROM keyhook_deliveries d INDEXED BY keyhook_deliveries_by_endpoint
                 JOIN keyhook_attempts a ON a.delivery_row = d.row_id
                 WHERE d.endpoint_row = ?1 AND d.created_at >= ?2 AND a.attempted_at >= ?2",
            )?
            .query_row(params![row, day_ago], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(EndpointStats {
            pending: count(PENDING)?,
            delivered: count(DELIVERED)?,
            failed: count(FAILED)?,
            attempts_24h: attempts,
            success_rate_24h: (attempts > 0).then(|| ok as f64 / attempts as f64),
        })
    })
}

/// Pending deliveries of the organization, across its endpoints.
pub(crate) fn org_backlog(db: &Database, org: &str) -> Result<u64> {
    db.read(|c| {
        c.prepare_cached(
            "SELECT COUNT(*) FROM keyhook_endpoints e
             CROSS JOIN keyhook_deliveries d INDEXED BY keyhook_deliveries_by_endpoint_state
               ON d.endpoint_row = e.row_id AND d.state = 0
             WHERE e.org_id = ?1",
        )?
        .query_row([org], |r| r.get(0))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn scope(org: &str) -> CursorScope<'_> {
        CursorScope {
            kind: 1,
            org,
            endpoint_id: "ep_1",
            state: None,
            event_type: None,
            since: i64::MIN,
            until: i64::MAX,
        }
    }

    #[test]
    fn cursor_roundtrip_and_tamper() {
        let key = [7u8; 32];
        let c = encode_cursor(&key, &scope("org"), 1_700_000_000_000, 42);
        assert_eq!(
            decode_cursor(&key, &scope("org"), &c).unwrap(),
            (1_700_000_000_000, 42)
        );
        // Another organization, other filters, another key, edited bytes: refused.
        assert!(decode_cursor(&key, &scope("other"), &c).is_err());
        let filtered = CursorScope {
            state: Some(DeliveryState::Failed),
            ..scope("org")
        };
        assert!(decode_cursor(&key, &filtered, &c).is_err());
        assert!(decode_cursor(&[8u8; 32], &scope("org"), &c).is_err());
        let mut raw = URL_SAFE_NO_PAD.decode(&c).unwrap();
        raw[15] ^= 1;
        assert!(decode_cursor(&key, &scope("org"), &URL_SAFE_NO_PAD.encode(raw)).is_err());
        for junk in ["", "!!!", "AAAA", &"A".repeat(500)] {
            assert!(decode_cursor(&key, &scope("org"), junk).is_err());
        }
    }

    #[test]
    fn event_ordered_pages_seek_and_never_sort() {
        let db = Database::open_in_memory().unwrap();
        for by_type in [false, true] {
            for by_state in [false, true] {
                {
                    let sql = by_event_sql(by_type, by_state);
                    let plan: Vec<String> = db
                        .read(|c| {
                            let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
                            let n = stmt.parameter_count()?;
                            let zeros: Vec<&dyn crate::sql::Arg> = vec![&0i64; n];
                            let rows = stmt.query_map(zeros.as_slice(), |r| r.get::<String>(3))?;
                            rows.collect::<Result<_>>()
                        })
                        .unwrap();
                    let plan = plan.join("\n");
                    assert!(!plan.contains("TEMP B-TREE"), "{plan}");
                    assert!(plan.contains("SEARCH ev USING INDEX"), "{plan}");
                    assert!(plan.contains("created_at<"), "seeks the position: {plan}");
                }
            }
        }
    }

    #[test]
    fn cursors_of_other_lists_and_types_are_refused() {
        let key = [7u8; 32];
        let c = encode_cursor(&key, &scope("org"), 5, 6);
        for other in [
            CursorScope {
                kind: 2,
                ..scope("org")
            },
            CursorScope {
                event_type: Some("a.b"),
                ..scope("org")
            },
        ] {
            assert!(decode_cursor(&key, &other, &c).is_err());
        }
    }
}
