//! The delivery queue: emit fan-out, claim (lease), complete, reschedule.
//!
//! All of the dispatcher's SQL lives here; the worker speaks in the types below.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::sql::{Arg, Engine, Optional, Sql, params};

use crate::db::{CommitMark, Database, from_ms, now_ms};
use crate::error::{Error, Result};
use crate::event::{NewEvent, envelope};
use crate::id::new_id;
use crate::registry::{active_signers, headers_from_json};
use crate::signing::Signer;

use super::http::Response;
use super::{DisableReason, Notice};

pub(crate) const PENDING: i64 = 0;
pub(crate) const DELIVERED: i64 = 1;
pub(crate) const FAILED: i64 = 2;

/// Where and how to send: shared by the deliveries of one endpoint in a batch.
pub(crate) struct EndpointTarget {
    pub endpoint_row: i64,
    pub endpoint_id: String,
    pub org: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    /// Pre-keyed signers, one per key signing now (`v1` and `v1a`).
    pub signers: Vec<Signer>,
    /// What was known of the endpoint when it was claimed.
    pub health: Health,
}

/// What the dispatcher knows of an endpoint, which decides how much of the
/// workers it may hold (see [`ClaimLimits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Health {
    /// It has succeeded and its last attempt did not fail.
    Healthy,
    /// It has never succeeded, nor failed: new, or never sent anything.
    Unproven,
    /// Its last attempt failed.
    Failing,
}

impl Health {
    /// Not known to be healthy: its attempts count against the limited slots.
    pub fn limited(self) -> bool {
        self != Health::Healthy
    }
}

/// What a worker needs to make one attempt.
pub(crate) struct Claimed {
    pub delivery_row: i64,
    /// The attempt number (1-based); also the fencing token for completion.
    pub attempt: u32,
    pub event_id: String,
    pub body: Vec<u8>,
    pub target: Arc<EndpointTarget>,
    /// When the lease ends (ms); the request must finish before it.
    pub lease_until: i64,
    /// The commit that claimed it: synced before the attempt is sent, so
    /// nothing is sent that power loss could take back.
    pub commit: CommitMark,
}

/// How an attempt ended, for the delivery row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    Delivered,
    RetryAt(i64),
    Failed,
    /// 410 Gone: the delivery fails and the endpoint is disabled.
    Gone,
    /// Not sent: the lease would have ended before the request could finish
    /// (it waited too long in the queue). Given back, due now, uncounted.
    NotSent,
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
    tx: Sql<'_>,
    org: &str,
    events: &[NewEvent],
    limits: &EmitLimits,
) -> Result<Vec<Emitted>> {
    let now = now_ms();
    let mut out = Vec::with_capacity(events.len());
    for event in events {
        let body = checked_body(tx, &event.event_type, &event.data, now, limits)?;
        if let Some(key) = &event.idempotency_key
            && let Some(id) = tx
                .prepare_cached(
                    "SELECT id FROM keyhook_events WHERE org_id = ?1 AND idempotency_key = ?2",
                )?
                .query_row(params![org, key], |r| r.get::<String>(0))
                .optional()?
        {
            out.push(Emitted { id, deliveries: 0 });
            continue;
        }
        let (id, event_row) = insert_event_row(
            tx,
            org,
            &event.event_type,
            &body,
            event.idempotency_key.as_deref(),
            false,
            now,
        )?;
        let deliveries = tx
            .prepare_cached(concat!(
                "INSERT INTO keyhook_deliveries (id, event_row, endpoint_row, org_id,
                     state, next_attempt_at, created_at, updated_at)
                 SELECT ",
                new_delivery_id!("?3"),
                ", ?1, e.row_id, e.org_id, 0, ?2, ?3, ?3 FROM keyhook_endpoints e
                 WHERE e.org_id = ?4 AND e.enabled = 1
                   AND (e.all_event_types = 1 OR EXISTS (
                        SELECT 1 FROM keyhook_endpoint_event_types t
                        WHERE t.endpoint_row = e.row_id AND t.event_type = ?5))"
            ))?
            .execute(params![
                event_row,
                now.saturating_add(limits.first_delay_ms),
                now,
                org,
                event.event_type
            ])?;
        out.push(Emitted { id, deliveries });
    }
    if out.iter().any(|e| e.deliveries > 0) {
        tx.notify()?;
    }
    Ok(out)
}

/// Stores one event without an idempotency key, and its deliveries, in
/// one statement that is its own transaction: on PostgreSQL one round trip
/// where [`insert_events`] in a transaction takes five (`BEGIN`, the event
/// type, the event, its deliveries, `COMMIT`). `None` on SQLite, whose
/// writes cost no round trips (and have no data-modifying `WITH`).
///
/// The event id is chosen before the statement runs, so that a statement
/// whose connection was lost (a server restart) can be run again on a new
/// one without storing the event twice: if the first run committed, the
/// second finds the id taken (`ON CONFLICT DO NOTHING`) and counts what
/// the first one stored.
pub(crate) fn insert_event_alone(
    db: &Database,
    org: &str,
    event: &NewEvent,
    limits: &EmitLimits,
) -> Option<Result<Emitted>> {
    if !db.concurrent_writes() || event.idempotency_key.is_some() {
        return None;
    }
    Some((|| {
        let now = now_ms();
        let body = sized_body(&event.event_type, &event.data, now, limits)?;
        let id = new_id("msg_", now)?;
        let run = || store_event_alone(db, &id, org, &event.event_type, &body, now, limits);
        match run() {
            Err(e) if e.is_connection_lost() => run(),
            other => other,
        }
    })())
}

/// [`insert_event_alone`]'s statement, for the event `id`: run again with
/// the same id after its first run committed, it stores nothing more and
/// counts what the first one stored.
fn store_event_alone(
    db: &Database,
    id: &str,
    org: &str,
    event_type: &str,
    body: &[u8],
    now: i64,
    limits: &EmitLimits,
) -> Result<Emitted> {
    db.read(|sql| {
        let (archived, stored, deliveries) = sql
            .prepare_cached(concat!(
                "WITH t AS (
                     SELECT archived_at IS NOT NULL AS archived
                     FROM keyhook_event_types WHERE name = CAST(?3 AS TEXT)),
                 ev AS (
                     INSERT INTO keyhook_events (id, org_id, event_type, body, created_at, test)
                     SELECT CAST(?1 AS TEXT), CAST(?2 AS TEXT), CAST(?3 AS TEXT),
                         CAST(?4 AS BYTEA), CAST(?5 AS BIGINT), 0
                     FROM t WHERE NOT t.archived
                     ON CONFLICT (id) DO NOTHING
                     RETURNING row_id),
                 d AS (
                     INSERT INTO keyhook_deliveries (id, event_row, endpoint_row, org_id,
                         state, next_attempt_at, created_at, updated_at)
                     SELECT ",
                new_delivery_id!("?5"),
                ", ev.row_id, e.row_id, e.org_id, 0, CAST(?6 AS BIGINT), ?5, ?5
                     FROM ev, keyhook_endpoints e
                     WHERE e.org_id = ?2 AND e.enabled = 1
                       AND (e.all_event_types = 1 OR EXISTS (
                            SELECT 1 FROM keyhook_endpoint_event_types y
                            WHERE y.endpoint_row = e.row_id AND y.event_type = ?3))
                     RETURNING 1)
                 SELECT (SELECT archived FROM t), (SELECT COUNT(*) FROM ev),
                     (SELECT COUNT(*) FROM d)"
            ))?
            .query_row(
                params![
                    id,
                    org,
                    event_type,
                    body,
                    now,
                    now.saturating_add(limits.first_delay_ms)
                ],
                |r| {
                    Ok((
                        r.get::<Option<bool>>(0)?,
                        r.get::<i64>(1)?,
                        r.get::<i64>(2)?,
                    ))
                },
            )?;
        takes_emits(event_type, archived)?;
        let deliveries = match stored {
            1 => deliveries,
            // Stored by an earlier run whose answer was lost.
            _ => sql
                .prepare_cached(
                    "SELECT COUNT(*) FROM keyhook_deliveries
                     WHERE event_row = (SELECT row_id FROM keyhook_events WHERE id = ?1)",
                )?
                .query_row([id], |r| r.get::<i64>(0))?,
        };
        if deliveries > 0 {
            sql.notify()?;
        }
        Ok(Emitted {
            id: id.to_owned(),
            deliveries: deliveries as usize,
        })
    })
}

/// `$due`, or NULL (parked) while the delivery's endpoint is disabled: a
/// disabled endpoint's pending deliveries never come due, so they cost the
/// claims nothing, and enabling it makes them due again.
macro_rules! due_unless_disabled {
    ($due:literal) => {
        concat!(
            "CASE WHEN (SELECT enabled FROM keyhook_endpoints WHERE row_id = endpoint_row) = 1
                  THEN CAST(",
            $due,
            " AS INTEGER) END"
        )
    };
}

/// A public delivery id, made by SQLite as rows are inserted at time
/// `$now` (ms): `dlv_`, the time in 11 hex digits, then 16 random hex
/// digits. Ids reveal when, like event ids, but nothing of volume; the
/// time first keeps their unique index appended to, not written at random
/// places (one dirty page per commit rather than one per delivery).
macro_rules! new_delivery_id {
    ($now:literal) => {
        concat!(
            "'dlv_' || printf('%011x', ",
            $now,
            ") || lower(hex(randomblob(8)))"
        )
    };
}
use new_delivery_id;

/// The serialized envelope of an event of `event_type`, if the type takes
/// emits and the body is within the limit.
fn checked_body(
    tx: Sql<'_>,
    event_type: &str,
    data: &[u8],
    now: i64,
    limits: &EmitLimits,
) -> Result<Vec<u8>> {
    let body = sized_body(event_type, data, now, limits)?;
    let archived: Option<bool> = tx
        .prepare_cached("SELECT archived_at IS NOT NULL FROM keyhook_event_types WHERE name = ?1")?
        .query_row([event_type], |r| r.get(0))
        .optional()?;
    takes_emits(event_type, archived)?;
    Ok(body)
}

/// The serialized envelope of an event of `event_type`, if within the limit.
fn sized_body(event_type: &str, data: &[u8], now: i64, limits: &EmitLimits) -> Result<Vec<u8>> {
    let body = envelope(event_type, from_ms(now), data)?;
    if body.len() > limits.max_body {
        return Err(Error::PayloadTooLarge {
            size: body.len(),
            limit: limits.max_body,
        });
    }
    Ok(body)
}

/// Whether an event type whose row says `archived` (`None`: no such type)
/// takes emits.
fn takes_emits(event_type: &str, archived: Option<bool>) -> Result<()> {
    match archived {
        None => Err(Error::UnknownEventType {
            name: event_type.to_owned(),
        }),
        Some(true) => Err(Error::InvalidState {
            kind: "event type",
            id: event_type.to_owned(),
            state: "archived",
        }),
        Some(false) => Ok(()),
    }
}

fn insert_event_row(
    tx: Sql<'_>,
    org: &str,
    event_type: &str,
    body: &[u8],
    idempotency_key: Option<&str>,
    test: bool,
    now: i64,
) -> Result<(String, i64)> {
    let id = new_id("msg_", now)?;
    let row = tx.insert(
        "INSERT INTO keyhook_events (id, org_id, event_type, body, idempotency_key, created_at, test)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![id, org, event_type, body, idempotency_key, now, test],
    )?;
    Ok((id, row))
}

/// Stores a test event for one endpoint only, marked as a test, with its
/// one delivery due now. Returns the event id.
pub(crate) fn insert_test_event(
    tx: Sql<'_>,
    org: &str,
    endpoint_row: i64,
    event_type: &str,
    data: &[u8],
    limits: &EmitLimits,
) -> Result<String> {
    let now = now_ms();
    let body = checked_body(tx, event_type, data, now, limits)?;
    let (id, event_row) = insert_event_row(tx, org, event_type, &body, None, true, now)?;
    tx.prepare_cached(concat!(
        "INSERT INTO keyhook_deliveries (id, event_row, endpoint_row, org_id, state,
             next_attempt_at, created_at, updated_at)
         VALUES (",
        new_delivery_id!("?4"),
        ", ?1, ?2, ?3, 0, ?4, ?4, ?4)"
    ))?
    .execute(params![event_row, endpoint_row, org, now])?;
    tx.notify()?;
    Ok(id)
}

/// Events looked at per transaction by [`replay_missing`]: small, so emits
/// never wait long behind a replay of a large organization.
const REPLAY_CHUNK: i64 = 500;

/// Queues for an endpoint every event of its organization since `since`
/// that it is subscribed to now and never got (emitted while it was
/// disabled, or before it subscribed), oldest first, at most `max`; test
/// events excepted. Scans in small transactions. Returns how many.
pub(crate) fn replay_missing(
    db: &Database,
    org: &str,
    endpoint_row: i64,
    since: i64,
    max: usize,
) -> Result<usize> {
    let mut after = (since, i64::MIN);
    let mut queued = 0usize;
    while queued < max {
        let (n, last) = db.write(|tx| {
            let chunk: Vec<(i64, i64)> = tx
                .prepare_cached(
                    "SELECT created_at, row_id FROM keyhook_events INDEXED BY keyhook_events_by_org
                     WHERE org_id = ?1 AND (created_at, row_id) > (?2, ?3)
                     ORDER BY created_at, row_id LIMIT ?4",
                )?
                .query_map(params![org, after.0, after.1, REPLAY_CHUNK], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?
                .collect::<Result<_>>()?;
            let Some(&last) = chunk.last() else {
                return Ok((0, None));
            };
            let now = now_ms();
            let n = tx
                .prepare_cached(concat!(
                    "INSERT INTO keyhook_deliveries (id, event_row, endpoint_row, org_id,
                         state, next_attempt_at, created_at, updated_at)
                     SELECT ",
                    new_delivery_id!("?6"),
                    ", ev.row_id, e.row_id, ev.org_id, 0, ?6, ev.created_at, ?6
                     FROM keyhook_endpoints e
                     CROSS JOIN keyhook_events ev INDEXED BY keyhook_events_by_org
                     WHERE e.row_id = ?2 AND e.enabled = 1 AND ev.org_id = ?1 AND ev.test = 0
                       AND (ev.created_at, ev.row_id) > (?3, ?4)
                       AND (ev.created_at, ev.row_id) <= (?5, ?7)
                       AND (e.all_event_types = 1 OR EXISTS (
                            SELECT 1 FROM keyhook_endpoint_event_types t
                            WHERE t.endpoint_row = e.row_id AND t.event_type = ev.event_type))
                       AND NOT EXISTS (
                            SELECT 1 FROM keyhook_deliveries d INDEXED BY keyhook_deliveries_by_event
                            WHERE d.event_row = ev.row_id AND d.endpoint_row = e.row_id)
                     ORDER BY ev.created_at, ev.row_id
                     LIMIT ?8"
                ))?
                .execute(params![
                    org,
                    endpoint_row,
                    after.0,
                    after.1,
                    last.0,
                    now,
                    last.1,
                    (max - queued) as i64
                ])?;
            if n > 0 {
                tx.notify()?;
            }
            Ok((n, Some(last)))
        })?;
        queued += n;
        match last {
            Some(position) => after = position,
            None => break,
        }
    }
    Ok(queued)
}

/// How much [`claim_batch`] may take.
pub(crate) struct ClaimLimits {
    /// Deliveries to claim at most (idle workers).
    pub max: usize,
    /// Of those, at most this many to endpoints not known to be healthy
    /// (new or failing), which may be slow or dead.
    pub max_limited: usize,
    /// Of those, at most this many to failing endpoints, so new ones keep
    /// a slot.
    pub max_failing: usize,
    /// Attempts in flight at once to one limited endpoint, across processes.
    pub per_endpoint: u32,
    /// How far the lease pushes `next_attempt_at`.
    pub lease_ms: i64,
    /// Deliveries this process's workers hold (a JSON array of row ids):
    /// never claimed again, whatever their lease looks like (a wall-clock
    /// step can make a lease in progress look expired).
    pub held: String,
    /// Leave out the pass over limited endpoints (PostgreSQL only; see
    /// [`claim_batch`]).
    pub skip_limited: bool,
}

/// What one step of the dispatcher did.
pub(crate) struct Stepped {
    /// Per emit request, in order: its events, or why it stored nothing.
    pub emitted: Vec<Result<Vec<Emitted>>>,
    /// Per finished attempt, in order.
    pub recorded: Vec<Recorded>,
    pub claimed: Vec<Claimed>,
    /// The step's commit: sync it before relying on it.
    pub commit: CommitMark,
}

/// One step of the dispatcher, in one transaction (one commit): store the
/// emits handed to the pump, each in its own savepoint so a bad one fails
/// alone; record finished attempts (with `isolate`, each in a savepoint of
/// its own: the pump asks for it after a step failed for one record);
/// claim new work, including what was just emitted.
///
/// The commit is not synced to disk here: emitters sync it before their
/// emit returns, and workers before they send what it claimed (see
/// [`Database::sync`]). Attempt records are synced by whichever sync comes
/// next; if power is lost first, those attempts are simply made again (at
/// least once, never lost).
pub(crate) fn step(
    db: &Database,
    emits: &[(&str, &[NewEvent])],
    emit_limits: &EmitLimits,
    done: &[Completion],
    limits: &ClaimLimits,
    policy: &HealthPolicy,
    isolate: bool,
) -> Result<Stepped> {
    let run = |tx: Sql<'_>| {
        let emitted = emits
            .iter()
            .map(|(org, events)| in_savepoint(tx, |tx| insert_events(tx, org, events, emit_limits)))
            .collect::<Result<Vec<_>>>()?;
        let now = now_ms();
        let recorded = if isolate {
            done.iter()
                .map(|c| record_isolated(tx, c, now, policy))
                .collect::<Result<Vec<_>>>()?
        } else {
            record_all(tx, done, now, policy)?
        };
        let claimed = claim_batch(tx, limits)?;
        Ok((emitted, recorded, claimed))
    };
    let ((emitted, recorded, mut claimed), commit) = db.write_unsynced(run)?;
    for c in &mut claimed {
        c.commit = commit;
    }
    Ok(Stepped {
        emitted,
        recorded,
        claimed,
        commit,
    })
}

/// Runs `f` inside a savepoint of `tx`: if it fails, what it wrote is
/// rolled back and the rest of `tx` stands. The outer `Result` is for the
/// savepoint statements themselves.
pub(crate) fn in_savepoint<T>(
    tx: Sql<'_>,
    f: impl FnOnce(Sql<'_>) -> Result<T>,
) -> Result<Result<T>> {
    tx.batch("SAVEPOINT keyhook_one")?;
    let result = f(tx);
    if result.is_err() {
        tx.batch("ROLLBACK TO keyhook_one")?;
    }
    tx.batch("RELEASE keyhook_one")?;
    Ok(result)
}

/// When an endpoint is disabled for failing.
pub(crate) struct HealthPolicy {
    /// Disable an endpoint whose deliveries have failed, with no success,
    /// for this long; `None` never does.
    pub auto_disable_after_ms: Option<i64>,
}

/// What recording one finished attempt did.
pub(crate) struct Recorded {
    /// False if the lease was lost meanwhile: the attempt is in the history
    /// but the delivery row was left alone.
    pub applied: bool,
    pub notices: Vec<Notice>,
    /// Why nothing was recorded: the delivery is gone (its endpoint was
    /// deleted, say), or its record broke a constraint of its own.
    pub dropped: Option<String>,
}

impl Recorded {
    fn dropped(why: String) -> Recorded {
        Recorded {
            applied: false,
            notices: Vec::new(),
            dropped: Some(why),
        }
    }

    /// Its delivery is gone: nothing was recorded.
    fn gone() -> Recorded {
        Recorded::dropped(
            "the delivery no longer exists (its endpoint was deleted, or it was purged)".into(),
        )
    }
}

/// Records one finished attempt in a savepoint of its own: a record that
/// cannot be written (its row broke a constraint, a value the host edited
/// does not read back, …) is dropped alone, and the others in the step
/// stand. Errors of the whole transaction fail the step, and every attempt
/// in it is kept for the next one.
fn record_isolated(
    tx: Sql<'_>,
    c: &Completion,
    now: i64,
    policy: &HealthPolicy,
) -> Result<Recorded> {
    match in_savepoint(tx, |tx| complete_one(tx, c, now, policy))? {
        Ok(recorded) => Ok(recorded),
        Err(e) if transaction_failed(&e) => Err(e),
        Err(e) => Ok(Recorded::dropped(e.to_string())),
    }
}

/// Whether `e` failed a whole transaction (the lock, I/O, a full disk, a
/// corrupt or read-only file, memory), rather than one statement's row.
pub(crate) fn transaction_failed(e: &Error) -> bool {
    use rusqlite::ErrorCode as Code;
    #[cfg(feature = "postgres")]
    if let Error::Postgres(e) = e {
        // Data exceptions (22) and integrity violations (23) are one
        // row's; anything else (a lost connection, a deadlock, a lock
        // timeout, a full disk) is the whole transaction's.
        return !e
            .code()
            .is_some_and(|c| c.starts_with("22") || c.starts_with("23"));
    }
    let code = match e {
        Error::Database(e) | Error::Locked(e) => e.sqlite_error_code(),
        _ => return true,
    };
    matches!(
        code,
        Some(
            Code::DatabaseBusy
                | Code::DatabaseLocked
                | Code::SystemIoFailure
                | Code::DiskFull
                | Code::DatabaseCorrupt
                | Code::NotADatabase
                | Code::OutOfMemory
                | Code::ReadOnly
                | Code::CannotOpen
                | Code::FileLockingProtocolFailed
        )
    )
}

/// Leases due deliveries with atomic `UPDATE … RETURNING` statements: each
/// one's `next_attempt_at` moves to the lease end, so if this process dies
/// the delivery is simply due again then, and no other worker or process can
/// claim it meanwhile.
///
/// Endpoints not known to be healthy get at most `per_endpoint` attempts in
/// flight across processes, new ones first, then failing ones, within
/// `max_limited` and `max_failing`, so slow or dead endpoints never take
/// every worker; everything else is claimed oldest due first. The cost
/// follows the endpoints that have pending deliveries, never the number
/// registered.
pub(crate) fn claim_batch(conn: Sql<'_>, limits: &ClaimLimits) -> Result<Vec<Claimed>> {
    if limits.max == 0 {
        return Ok(Vec::new());
    }
    let now = now_ms();
    let lease_until = now + limits.lease_ms;
    // The oldest due deliveries the fast scan looks at.
    let window = (limits.max as i64 * CLAIM_SCAN_PER_ROW).max(64);
    let run = |sql: &str, max: usize, failing: bool| {
        claim_rows(
            conn,
            sql,
            &[
                &now,
                &lease_until,
                &(max as i64),
                &limits.per_endpoint,
                &failing,
                &limits.held,
                &window,
            ],
        )
    };
    // Which passes run: the limited one, the healthy one, and the walk over
    // endpoints for healthy work (SQLite).
    let mut rows = Vec::new();
    let limited = limits.max.min(limits.max_limited);
    let (limited_sql, healthy_sql, deep_sql, look_limited, look_healthy, look_deep) =
        match conn.engine() {
            Engine::Sqlite => {
                // The window, counted. If it holds fewer rows than it may,
                // the fast scan sees all due work, and limited endpoints'
                // due work is among it; the walk over endpoints (whose cost
                // follows the endpoints with pending work) is needed only
                // when there is more due work than that.
                let (due, limited_due): (i64, i64) = conn
                    .prepare_cached(DUE_WINDOW_SQL)?
                    .query_row(params![now, window], |r| Ok((r.get(0)?, r.get(1)?)))?;
                let all_in_window = due < window;
                (
                    if all_in_window {
                        CLAIM_LIMITED_IN_WINDOW_SQL
                    } else {
                        CLAIM_LIMITED_SQL
                    },
                    CLAIM_HEALTHY_SQL,
                    CLAIM_HEALTHY_DEEP_SQL,
                    limited_due > 0 || !all_in_window,
                    due > 0,
                    !all_in_window,
                )
            }
            // PostgreSQL claims from indexes, not a window, and every
            // statement is a round trip: no count, one healthy pass, and the
            // limited pass unless the pump leaves it out (it found no
            // limited work a moment ago: `skip_limited`).
            #[cfg(feature = "postgres")]
            Engine::Postgres => (
                PG_CLAIM_LIMITED_SQL,
                PG_CLAIM_HEALTHY_SQL,
                "",
                !limits.skip_limited,
                true,
                false,
            ),
        };
    if limited > 0 && look_limited && limited_claims_turn(conn)? {
        rows = run(limited_sql, limited, false)?;
        let failing = (limited - rows.len()).min(limits.max_failing);
        if failing > 0 {
            rows.extend(run(limited_sql, failing, true)?);
        }
        // Their turn is taken.
        let mut taken = conn.prepare_cached(
            "UPDATE keyhook_endpoints SET limited_claimed_at = ?2 WHERE row_id = ?1",
        )?;
        for (_, _, endpoint_row, _, _) in &rows {
            taken.execute(params![endpoint_row, now])?;
        }
    }
    if rows.len() < limits.max && look_healthy {
        rows.extend(run(healthy_sql, limits.max - rows.len(), false)?);
    }
    if rows.len() < limits.max && look_deep {
        // The fast scan may have been filled by due deliveries of limited
        // endpoints at capacity: find healthy endpoints' work per endpoint,
        // through an index, whatever lies ahead of it.
        rows.extend(run(deep_sql, limits.max - rows.len(), false)?);
    }
    // Endpoint settings and secrets are read once per endpoint in the batch.
    let mut endpoints: HashMap<i64, Arc<EndpointTarget>> = HashMap::new();
    let mut out = Vec::with_capacity(rows.len());
    for (delivery_row, event_row, endpoint_row, attempt, event) in rows {
        let target = match endpoints.get(&endpoint_row) {
            Some(t) => Arc::clone(t),
            None => {
                let t = Arc::new(load_endpoint(conn, endpoint_row, now)?);
                endpoints.insert(endpoint_row, Arc::clone(&t));
                t
            }
        };
        out.push(with_event(
            conn,
            (delivery_row, event_row, attempt),
            event,
            target,
            lease_until,
        )?);
    }
    Ok(out)
}

/// Whether this transaction may claim for limited endpoints now. Their
/// in-flight attempts are counted across every process, so two processes
/// must not count at once: on PostgreSQL a transaction-level advisory
/// lock (tried, never waited for: a process that finds it taken claims
/// only healthy work this step). SQLite's write lock already serializes
/// claims.
fn limited_claims_turn(conn: Sql<'_>) -> Result<bool> {
    match conn.engine() {
        Engine::Sqlite => Ok(true),
        #[cfg(feature = "postgres")]
        Engine::Postgres => conn
            .prepare_cached("SELECT pg_try_advisory_xact_lock(27496, hashtext(current_schema()))")?
            .query_row((), |r| r.get(0)),
    }
}

/// A claimed delivery (its delivery and event rows, and attempt number):
/// its event's id and body, as the claim read them or read now, and its
/// endpoint.
fn with_event(
    conn: Sql<'_>,
    (delivery_row, event_row, attempt): (i64, i64, u32),
    event: Option<(String, Vec<u8>)>,
    target: Arc<EndpointTarget>,
    lease_until: i64,
) -> Result<Claimed> {
    let (event_id, body) = match event {
        Some(event) => event,
        None => conn
            .prepare_cached("SELECT id, body FROM keyhook_events WHERE row_id = ?1")?
            .query_row([event_row], |r| Ok((r.get(0)?, r.get(1)?)))?,
    };
    Ok(Claimed {
        delivery_row,
        attempt,
        event_id,
        body,
        target,
        lease_until,
        commit: CommitMark::default(),
    })
}

/// How many due deliveries the fast claim looks at per delivery wanted.
const CLAIM_SCAN_PER_ROW: i64 = 8;

/// The oldest `?2` due deliveries: how many, and how many of those are to
/// enabled endpoints not known to be healthy.
const DUE_WINDOW_SQL: &str = "
    SELECT COUNT(*),
           COALESCE(SUM(CASE WHEN e.enabled = 1
                                  AND (e.consecutive_failures > 0 OR e.last_success_at IS NULL)
                             THEN 1 ELSE 0 END), 0)
    FROM (SELECT endpoint_row FROM keyhook_deliveries INDEXED BY keyhook_deliveries_due
          WHERE state = 0 AND next_attempt_at <= ?1
          ORDER BY next_attempt_at LIMIT (SELECT ?2)) d
    JOIN keyhook_endpoints e ON e.row_id = d.endpoint_row";

// Every claim statement takes the same parameters (each binds those it
// uses): ?1 now, ?2 the lease end, ?3 how many, ?4 attempts in flight per
// limited endpoint, ?5 failing (or new) endpoints, ?6 the rows this process
// holds (a JSON array), ?7 the due window's size.
//
// Every `LIMIT (SELECT ?n)` is deliberate: SQLite re-prepares a statement
// whenever a value bound to a plain `LIMIT ?n` changes (it plans with the
// value), which cost more than the claim itself.

/// Wraps a selection of delivery rows in the statement that leases them.
/// `leased` is 2 for claims of limited endpoints, which count as in flight
/// until their lease ends, and 1 for the others, which never count: a
/// process that dies with claims it never sent does not hold back their
/// endpoints.
macro_rules! lease {
    ($leased:literal, $select:expr) => {
        concat!(
            "UPDATE keyhook_deliveries
             SET next_attempt_at = ?2, leased = ",
            $leased,
            ", attempts = attempts + 1, updated_at = ?1
             WHERE state = 0 AND row_id IN (",
            $select,
            ")
             RETURNING row_id, event_row, endpoint_row, attempts"
        )
    };
}

/// The endpoints with pending deliveries that can come due (a disabled
/// endpoint's are parked: `next_attempt_at` NULL), walked one index seek
/// each (a loose index scan): what it costs follows the endpoints with
/// work, not the endpoints registered.
macro_rules! with_pending_endpoints {
    ($select:expr) => {
        concat!(
            "WITH RECURSIVE pending(endpoint_row) AS (
                SELECT (SELECT MIN(endpoint_row) FROM keyhook_deliveries
                        INDEXED BY keyhook_deliveries_due_by_endpoint
                        WHERE state = 0 AND next_attempt_at IS NOT NULL)
                UNION ALL
                SELECT (SELECT MIN(d.endpoint_row) FROM keyhook_deliveries d
                        INDEXED BY keyhook_deliveries_due_by_endpoint
                        WHERE d.state = 0 AND d.next_attempt_at IS NOT NULL
                          AND d.endpoint_row > p.endpoint_row)
                FROM pending p WHERE p.endpoint_row IS NOT NULL
            ) ",
            $select
        )
    };
}

/// The endpoints with deliveries in the due window (when it holds all due
/// work, no other endpoint has any).
macro_rules! with_window_endpoints {
    ($select:expr) => {
        concat!(
            "WITH pending(endpoint_row) AS (
                SELECT DISTINCT endpoint_row FROM (
                    SELECT endpoint_row FROM keyhook_deliveries INDEXED BY keyhook_deliveries_due
                    WHERE state = 0 AND next_attempt_at <= ?1
                    ORDER BY next_attempt_at LIMIT (SELECT ?7))
            ) ",
            $select
        )
    };
}

/// The oldest due delivery of each limited endpoint with a free slot:
/// failing endpoints when `?5` is true, new ones when false. Endpoints take
/// turns (the one claimed longest ago first), so one with a large backlog
/// cannot keep the slots from the others.
macro_rules! limited_claim {
    ($endpoints:ident) => {
        lease!(
            2,
            $endpoints!(
                "SELECT (SELECT d.row_id FROM keyhook_deliveries d
                         INDEXED BY keyhook_deliveries_due_by_endpoint
                         WHERE d.endpoint_row = e.row_id AND d.state = 0
                           AND d.next_attempt_at <= ?1
                           AND d.row_id NOT IN (SELECT CAST(value AS INTEGER) FROM json_each(?6))
                         ORDER BY d.next_attempt_at, d.row_id LIMIT 1) AS next_row
                 FROM pending p JOIN keyhook_endpoints e ON e.row_id = p.endpoint_row
                 WHERE e.enabled = 1 AND (e.consecutive_failures > 0 OR e.last_success_at IS NULL)
                   AND (e.consecutive_failures > 0) = ?5
                   AND (SELECT COUNT(*) FROM keyhook_deliveries x
                        INDEXED BY keyhook_deliveries_in_flight
                        WHERE x.endpoint_row = e.row_id AND x.state = 0 AND x.leased = 2
                          AND x.next_attempt_at > ?1) < ?4
                   AND next_row IS NOT NULL
                 ORDER BY e.limited_claimed_at NULLS FIRST, next_row
                 LIMIT (SELECT ?3)"
            )
        )
    };
}

/// Limited claims over every endpoint with pending work.
const CLAIM_LIMITED_SQL: &str = limited_claim!(with_pending_endpoints);

/// Limited claims over the endpoints in the due window.
const CLAIM_LIMITED_IN_WINDOW_SQL: &str = limited_claim!(with_window_endpoints);

/// Due deliveries of healthy endpoints among the oldest due (the window of
/// [`DUE_WINDOW_SQL`]).
const CLAIM_HEALTHY_SQL: &str = lease!(
    1,
    "SELECT d.row_id
     FROM (SELECT row_id, endpoint_row FROM keyhook_deliveries INDEXED BY keyhook_deliveries_due
           WHERE state = 0 AND next_attempt_at <= ?1
             AND row_id NOT IN (SELECT CAST(value AS INTEGER) FROM json_each(?6))
           ORDER BY next_attempt_at, row_id LIMIT (SELECT ?7)) d
     JOIN keyhook_endpoints e ON e.row_id = d.endpoint_row
     WHERE e.enabled = 1 AND e.consecutive_failures = 0 AND e.last_success_at IS NOT NULL
     LIMIT (SELECT ?3)"
);

/// Due deliveries of healthy endpoints, found endpoint by endpoint.
const CLAIM_HEALTHY_DEEP_SQL: &str = lease!(
    1,
    with_pending_endpoints!(
        "SELECT d.row_id
         FROM pending p
         JOIN keyhook_endpoints e ON e.row_id = p.endpoint_row
         JOIN keyhook_deliveries d INDEXED BY keyhook_deliveries_due_by_endpoint
           ON d.endpoint_row = e.row_id AND d.state = 0 AND d.next_attempt_at <= ?1
         WHERE e.enabled = 1 AND e.consecutive_failures = 0 AND e.last_success_at IS NOT NULL
           AND d.row_id NOT IN (SELECT CAST(value AS INTEGER) FROM json_each(?6))
         ORDER BY d.next_attempt_at, d.row_id
         LIMIT (SELECT ?3)"
    )
);

/// [`lease!`] on PostgreSQL: the claimed rows come back with their
/// event's id and body, in the same round trip.
#[cfg(feature = "postgres")]
macro_rules! pg_lease {
    ($leased:literal, $select:expr) => {
        concat!(
            "WITH c AS (
                 UPDATE keyhook_deliveries
                 SET next_attempt_at = ?2, leased = ",
            $leased,
            ", attempts = attempts + 1, updated_at = ?1
                 WHERE row_id = ANY (ARRAY(",
            $select,
            ")) AND ",
            pg_pending!(),
            "
                 RETURNING row_id, event_row, endpoint_row, attempts)
             SELECT c.row_id, c.event_row, c.endpoint_row, c.attempts, ev.id, ev.body
             FROM c JOIN keyhook_events ev ON ev.row_id = c.event_row"
        )
    };
}

/// `state = 0` (pending) for an update of rows chosen by `row_id`, on
/// PostgreSQL, written so that it does not match the partial indexes on
/// pending rows: the rows are found through the primary key, whatever the
/// table's statistics say. (Shortly after a table starts to fill, before
/// the server has analyzed it, its planner takes the pending rows for a
/// handful and scans them all, for every update, with the plan kept for
/// the session.) Deliveries' states are 0, 1 and 2.
macro_rules! pg_pending {
    () => {
        "state < 1"
    };
}

/// PostgreSQL's limited claim, over every process's claims: the oldest due
/// delivery of each limited endpoint with a free slot, as
/// [`CLAIM_LIMITED_SQL`], taken with `FOR UPDATE SKIP LOCKED` so that no
/// process waits for another's claim. (The in-flight count is safe
/// because limited claims take turns: [`limited_claims_turn`].)
#[cfg(feature = "postgres")]
const PG_CLAIM_LIMITED_SQL: &str = pg_lease!(
    2,
    "SELECT next_row FROM (
        SELECT (SELECT d.row_id FROM keyhook_deliveries d
                WHERE d.endpoint_row = e.row_id AND d.state = 0 AND d.next_attempt_at <= ?1
                  AND d.row_id NOT IN (SELECT CAST(value AS INTEGER) FROM json_each(?6))
                ORDER BY d.next_attempt_at, d.row_id LIMIT 1
                FOR UPDATE SKIP LOCKED) AS next_row,
               e.limited_claimed_at
        FROM keyhook_endpoints e
        WHERE e.row_id IN (SELECT endpoint_row FROM keyhook_deliveries
                           WHERE state = 0 AND next_attempt_at <= ?1)
          AND e.enabled = 1 AND (e.consecutive_failures > 0 OR e.last_success_at IS NULL)
          AND (e.consecutive_failures > 0) = ?5
          AND (SELECT COUNT(*) FROM keyhook_deliveries x
               WHERE x.endpoint_row = e.row_id AND x.state = 0 AND x.leased = 2
                 AND x.next_attempt_at > ?1) < ?4
     ) s
     WHERE next_row IS NOT NULL
     ORDER BY limited_claimed_at NULLS FIRST, next_row
     LIMIT ?3"
);

/// PostgreSQL's healthy claim: the oldest due deliveries of healthy
/// endpoints, skipping rows another process is claiming.
#[cfg(feature = "postgres")]
const PG_CLAIM_HEALTHY_SQL: &str = pg_lease!(
    1,
    "SELECT d.row_id
     FROM keyhook_deliveries d
     JOIN keyhook_endpoints e ON e.row_id = d.endpoint_row
     WHERE d.state = 0 AND d.next_attempt_at <= ?1
       AND e.enabled = 1 AND e.consecutive_failures = 0 AND e.last_success_at IS NOT NULL
       AND d.row_id NOT IN (SELECT CAST(value AS INTEGER) FROM json_each(?6))
       -- ?4 and ?5 are not used here, but PostgreSQL types every parameter.
       AND ?4 >= 0 AND ?5 IN (0, 1)
     ORDER BY d.next_attempt_at, d.row_id
     LIMIT ?3
     FOR UPDATE OF d SKIP LOCKED"
);

/// A claimed row: delivery, event and endpoint rows, the attempt number,
/// and the event's id and body when the claim read them.
type ClaimRow = (i64, i64, i64, u32, Option<(String, Vec<u8>)>);

/// Runs a claim statement, binding the parameters it uses.
fn claim_rows(conn: Sql<'_>, sql: &str, params: &[&dyn Arg]) -> Result<Vec<ClaimRow>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let used = stmt.parameter_count()?.min(params.len());
    // PostgreSQL's claims bring the event along (`pg_lease!`).
    let with_event = conn.engine() != Engine::Sqlite;
    stmt.query_map(&params[..used], |r| {
        let event = if with_event {
            Some((r.get(4)?, r.get(5)?))
        } else {
            None
        };
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, event))
    })?
    .collect()
}

/// Gives claimed deliveries that were never attempted back, due now (on shutdown).
pub(crate) fn release(db: &Database, claimed: &[Claimed]) -> Result<()> {
    if claimed.is_empty() {
        return Ok(());
    }
    let now = now_ms();
    db.write(|tx| {
        for c in claimed {
            give_back(tx, c, now)?;
        }
        Ok(())
    })
}

/// Undoes a claim whose attempt was never made: due now, attempt uncounted.
/// False if the lease was lost meanwhile.
fn give_back(tx: Sql<'_>, c: &Claimed, now: i64) -> Result<bool> {
    Ok(tx
        .prepare_cached(concat!(
            "UPDATE keyhook_deliveries SET leased = 0, next_attempt_at = ",
            due_unless_disabled!("?3"),
            ", attempts = attempts - 1
             WHERE row_id = ?1 AND attempts = ?2 AND state = 0"
        ))?
        .execute(params![c.delivery_row, c.attempt, now])?
        > 0)
}

fn load_endpoint(conn: Sql<'_>, endpoint_row: i64, now: i64) -> Result<EndpointTarget> {
    let (endpoint_id, org, url, headers, failing, unproven) = conn
        .prepare_cached(
            "SELECT id, org_id, url, headers, consecutive_failures > 0,
                    last_success_at IS NULL
             FROM keyhook_endpoints WHERE row_id = ?1",
        )?
        .query_row([endpoint_row], |r| {
            Ok((
                r.get::<String>(0)?,
                r.get::<String>(1)?,
                r.get::<String>(2)?,
                r.get::<String>(3)?,
                r.get::<bool>(4)?,
                r.get::<bool>(5)?,
            ))
        })?;
    let signers = active_signers(conn, endpoint_row, now)?;
    Ok(EndpointTarget {
        endpoint_row,
        endpoint_id,
        org,
        url,
        headers: headers_from_json(&headers),
        signers,
        health: if failing {
            Health::Failing
        } else if unproven {
            Health::Unproven
        } else {
            Health::Healthy
        },
    })
}

/// One finished attempt, to record.
pub(crate) struct Completion {
    pub claimed: Claimed,
    pub response: Response,
    pub next: Next,
    pub manual: bool,
}

fn complete_one(tx: Sql<'_>, c: &Completion, now: i64, policy: &HealthPolicy) -> Result<Recorded> {
    let (claimed, response, target) = (&c.claimed, &c.response, &c.claimed.target);
    let mut notices = Vec::new();
    // Checked only when an update changed nothing (the rare path).
    let gone = || -> Result<Option<Recorded>> {
        let exists = tx
            .prepare_cached("SELECT 1 FROM keyhook_deliveries WHERE row_id = ?1")?
            .exists([claimed.delivery_row])?;
        Ok((!exists).then(Recorded::gone))
    };
    if c.next == Next::NotSent {
        let applied = give_back(tx, claimed, now)?;
        if !applied && let Some(dropped) = gone()? {
            return Ok(dropped);
        }
        return Ok(Recorded {
            applied,
            notices,
            dropped: None,
        });
    }
    let (state, next_at) = match c.next {
        Next::Delivered => (DELIVERED, None),
        Next::RetryAt(at) => (PENDING, Some(at)),
        Next::Failed | Next::Gone => (FAILED, None),
        Next::NotSent => unreachable!("handled above"),
    };
    let applied = if c.manual {
        // A manual attempt leaves the schedule alone unless it succeeded.
        state == DELIVERED
            && tx
                .prepare_cached(
                    "UPDATE keyhook_deliveries SET state = 1, next_attempt_at = NULL, leased = 0,
                         updated_at = ?2
                     WHERE row_id = ?1 AND state <> 1",
                )?
                .execute(params![claimed.delivery_row, now])?
                > 0
    } else {
        tx.prepare_cached(concat!(
            "UPDATE keyhook_deliveries SET state = ?3, next_attempt_at = ",
            due_unless_disabled!("?4"),
            ", leased = 0, updated_at = ?5
             WHERE row_id = ?1 AND attempts = ?2 AND state = 0"
        ))?
        .execute(params![
            claimed.delivery_row,
            claimed.attempt,
            state,
            next_at,
            now
        ])? > 0
    };
    if !applied && let Some(dropped) = gone()? {
        return Ok(dropped);
    }
    let duration_ms = response.duration.as_millis() as i64;
    let started = now - duration_ms;
    tx.prepare_cached(
        "INSERT INTO keyhook_attempts (delivery_row, attempted_at, duration_ms, status_code,
             error_kind, response_body, manual)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        claimed.delivery_row,
        started,
        duration_ms,
        response.status,
        response.error.map(|e| e.as_str()),
        (!response.excerpt.is_empty()).then_some(&response.excerpt),
        c.manual
    ])?;
    if response.is_success() {
        if target.health == Health::Failing {
            // It was failing when claimed: tell the host if this ends that.
            let failing_since: Option<Option<i64>> = tx
                .prepare_cached(
                    "SELECT failing_since FROM keyhook_endpoints WHERE row_id = ?1 AND consecutive_failures > 0",
                )?
                .query_row([target.endpoint_row], |r| r.get(0))
                .optional()?;
            if let Some(since) = failing_since {
                notices.push(Notice::EndpointRecovered {
                    org: target.org.clone(),
                    endpoint_id: target.endpoint_id.clone(),
                    failing_since: since.map(from_ms),
                });
            }
        }
        // Written only when something changes, or once a second.
        tx.prepare_cached(
            "UPDATE keyhook_endpoints SET consecutive_failures = 0, failing_since = NULL,
                 last_success_at = ?2
             WHERE row_id = ?1 AND (consecutive_failures <> 0 OR last_success_at IS NULL
                 OR last_success_at < ?2 - 1000)",
        )?
        .execute(params![target.endpoint_row, now])?;
    } else {
        tx.prepare_cached(
            "UPDATE keyhook_endpoints SET consecutive_failures = consecutive_failures + 1,
                 failing_since = COALESCE(failing_since, ?2)
             WHERE row_id = ?1",
        )?
        .execute(params![target.endpoint_row, started])?;
        if let Some(after) = policy.auto_disable_after_ms {
            let since: Option<i64> = tx
                .prepare_cached(
                    "UPDATE keyhook_endpoints SET enabled = 0, disabled_at = ?2, updated_at = ?2,
                         disabled_reason = 'deliveries failed continuously'
                     WHERE row_id = ?1 AND enabled = 1 AND failing_since <= ?3
                     RETURNING failing_since",
                )?
                .query_row(params![target.endpoint_row, now, now - after], |r| r.get(0))
                .optional()?;
            if let Some(since) = since {
                crate::registry::park_deliveries(tx, target.endpoint_row, now)?;
                notices.push(Notice::EndpointDisabled {
                    org: target.org.clone(),
                    endpoint_id: target.endpoint_id.clone(),
                    reason: DisableReason::FailingSince(from_ms(since)),
                });
            }
        }
    }
    if c.next == Next::Gone {
        let changed = tx
            .prepare_cached(
                "UPDATE keyhook_endpoints SET enabled = 0, disabled_at = ?2, updated_at = ?2,
                     disabled_reason = 'the receiver answered 410 Gone'
                 WHERE row_id = ?1 AND enabled = 1",
            )?
            .execute(params![target.endpoint_row, now])?;
        if changed > 0 {
            crate::registry::park_deliveries(tx, target.endpoint_row, now)?;
            notices.push(Notice::EndpointDisabled {
                org: target.org.clone(),
                endpoint_id: target.endpoint_id.clone(),
                reason: DisableReason::Gone,
            });
        }
    }
    if applied && c.next == Next::Failed {
        notices.push(Notice::DeliveryExhausted {
            org: target.org.clone(),
            endpoint_id: target.endpoint_id.clone(),
            event_id: claimed.event_id.clone(),
            attempts: claimed.attempt,
        });
    }
    Ok(Recorded {
        applied,
        notices,
        dropped: None,
    })
}

/// Records finished attempts, in `done`'s order. On PostgreSQL the
/// common ones (delivered, by the dispatcher, at an endpoint not failing,
/// the lease still held) are written together, [`RECORD_CHUNK`] per
/// statement, rather than three statements each: the pump records them one
/// round trip after another, so round trips bound how fast it keeps up.
/// The rest, and everything on SQLite (where a statement costs no round
/// trip), one by one.
fn record_all(
    tx: Sql<'_>,
    done: &[Completion],
    now: i64,
    policy: &HealthPolicy,
) -> Result<Vec<Recorded>> {
    let together = |c: &Completion| {
        tx.engine() != Engine::Sqlite
            && !c.manual
            && c.next == Next::Delivered
            && c.response.is_success()
            && c.claimed.target.health != Health::Failing
    };
    // In `done`'s order (the pump sorts it by endpoint), so that endpoint
    // rows are locked in one order across processes: runs of attempts that
    // go together, then each of the others.
    let mut out = Vec::with_capacity(done.len());
    let mut i = 0;
    while i < done.len() {
        let run = done[i..]
            .iter()
            .take(RECORD_CHUNK)
            .take_while(|c| together(c))
            .count();
        if run == 0 {
            out.push(complete_one(tx, &done[i], now, policy)?);
            i += 1;
            continue;
        }
        let chunk = &done[i..i + run];
        for (c, r) in chunk.iter().zip(record_delivered(tx, chunk.iter(), now)?) {
            out.push(match r {
                Some(r) => r,
                None => complete_one(tx, c, now, policy)?,
            });
        }
        i += run;
    }
    Ok(out)
}

/// Most attempts [`record_delivered`] writes in one statement.
const RECORD_CHUNK: usize = 16;

/// Columns of one row of [`record_delivered`]'s `VALUES`.
const RECORD_COLUMNS: usize = 6;

/// [`record_delivered`]'s statement for `n` attempts (PostgreSQL): what
/// [`complete_one`] does for a delivered attempt whose lease still holds
/// (the attempt count is the fencing token), for all of them at once: the
/// deliveries marked delivered, the attempts kept, their endpoints marked
/// healthy (written only when something changes, or once a second).
/// Returns the delivery rows it updated; the others (a lease lost, a
/// delivery deleted) are left alone, for `complete_one`.
fn record_delivered_sql(n: usize) -> &'static str {
    static SQL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let all = SQL.get_or_init(|| {
        (1..=RECORD_CHUNK)
            .map(|n| {
                let rows: Vec<String> = (0..n)
                    .map(|i| {
                        let p = 2 + i * RECORD_COLUMNS;
                        format!(
                            "(CAST(?{} AS BIGINT), CAST(?{} AS BIGINT), CAST(?{} AS BIGINT), \
                             CAST(?{} AS BIGINT), CAST(?{} AS BIGINT), CAST(?{} AS BYTEA))",
                            p,
                            p + 1,
                            p + 2,
                            p + 3,
                            p + 4,
                            p + 5
                        )
                    })
                    .collect();
                format!(
                    concat!(
                        "WITH u (row_id, attempts, endpoint_row, duration_ms, status, excerpt) AS (
                             VALUES {}),
                         d AS (
                             UPDATE keyhook_deliveries k SET state = 1, next_attempt_at = NULL,
                                 leased = 0, updated_at = ?1
                             WHERE k.row_id = ANY (ARRAY(SELECT row_id FROM u)) AND k.",
                        pg_pending!(),
                        "
                               AND k.attempts = (SELECT u.attempts FROM u WHERE u.row_id = k.row_id)
                             RETURNING k.row_id),
                         a AS (
                             INSERT INTO keyhook_attempts (delivery_row, attempted_at, duration_ms,
                                 status_code, error_kind, response_body, manual)
                             SELECT u.row_id, ?1 - u.duration_ms, u.duration_ms, u.status, NULL,
                                 u.excerpt, 0
                             FROM u JOIN d ON d.row_id = u.row_id),
                         e AS (
                             UPDATE keyhook_endpoints SET consecutive_failures = 0,
                                 failing_since = NULL, last_success_at = ?1
                             WHERE row_id = ANY (ARRAY(
                                     SELECT u.endpoint_row FROM u JOIN d ON d.row_id = u.row_id))
                               AND (consecutive_failures <> 0 OR last_success_at IS NULL
                                    OR last_success_at < ?1 - 1000))
                         SELECT row_id FROM d"
                    ),
                    rows.join(",\n")
                )
            })
            .collect()
    });
    &all[n - 1]
}

/// Records delivered attempts in one statement (PostgreSQL; see
/// [`record_delivered_sql`]), in their order: `None` for those it left
/// alone.
fn record_delivered<'c>(
    tx: Sql<'_>,
    done: impl ExactSizeIterator<Item = &'c Completion>,
    now: i64,
) -> Result<Vec<Option<Recorded>>> {
    let n = done.len();
    type Row<'c> = (i64, i64, i64, i64, Option<i64>, Option<&'c Vec<u8>>);
    let rows: Vec<Row<'c>> = done
        .map(|c| {
            (
                c.claimed.delivery_row,
                i64::from(c.claimed.attempt),
                c.claimed.target.endpoint_row,
                c.response.duration.as_millis() as i64,
                c.response.status.map(i64::from),
                (!c.response.excerpt.is_empty()).then_some(&c.response.excerpt),
            )
        })
        .collect();
    let mut args: Vec<&dyn Arg> = Vec::with_capacity(1 + n * RECORD_COLUMNS);
    args.push(&now);
    for (delivery, attempt, endpoint, duration, status, excerpt) in &rows {
        args.extend([
            delivery as &dyn Arg,
            attempt,
            endpoint,
            duration,
            status,
            excerpt,
        ]);
    }
    let applied: std::collections::HashSet<i64> = tx
        .prepare_cached(record_delivered_sql(n))?
        .query_map(args.as_slice(), |r| r.get::<i64>(0))?
        .collect::<Result<_>>()?;
    Ok(rows
        .iter()
        .map(|row| {
            applied.contains(&row.0).then(|| Recorded {
                applied: true,
                notices: Vec::new(),
                dropped: None,
            })
        })
        .collect())
}

/// Loads a delivery of `org` for a manual attempt, without leasing it.
pub(crate) fn load_manual(conn: Sql<'_>, org: &str, delivery_row: i64) -> Result<Option<Claimed>> {
    let row = conn
        .prepare_cached(
            "SELECT event_row, endpoint_row, attempts FROM keyhook_deliveries
             WHERE row_id = ?1 AND org_id = ?2",
        )?
        .query_row(params![delivery_row, org], |r| {
            Ok((r.get::<i64>(0)?, r.get::<i64>(1)?, r.get::<u32>(2)?))
        })
        .optional()?;
    let Some((event_row, endpoint_row, attempts)) = row else {
        return Ok(None);
    };
    let target = Arc::new(load_endpoint(conn, endpoint_row, now_ms())?);
    with_event(
        conn,
        (delivery_row, event_row, attempts),
        None,
        target,
        i64::MAX,
    )
    .map(Some)
}

/// Records a manual attempt on its own.
pub(crate) fn record_manual(
    db: &Database,
    c: &Completion,
    policy: &HealthPolicy,
) -> Result<Recorded> {
    db.write(|tx| complete_one(tx, c, now_ms(), policy))
}

/// Puts an endpoint's failed deliveries created since `since` back in the
/// queue, due now, with a fresh schedule. Returns how many.
pub(crate) fn recover(db: &Database, endpoint_row: i64, since: i64) -> Result<usize> {
    let now = now_ms();
    db.write(|tx| {
        tx.prepare_cached(concat!(
            "UPDATE keyhook_deliveries SET state = 0, attempts = 0, next_attempt_at = ",
            due_unless_disabled!("?3"),
            ", leased = 0, updated_at = ?3
                 WHERE endpoint_row = ?1 AND state = 2 AND created_at >= ?2"
        ))?
        .execute(params![endpoint_row, since, now])
    })
}

/// What one purge removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgeReport {
    /// Events removed (they had no pending delivery left).
    pub events: u64,
    /// Delivered and failed deliveries removed, with their attempts.
    pub deliveries: u64,
}

/// Events handled per purge transaction: small, so emit never waits long.
const PURGE_BATCH: i64 = 25;

/// Removes finished deliveries (and their attempts) of events created
/// before `cutoff`, and those events once nothing is pending for them, in
/// small transactions. Pending deliveries are never removed.
pub(crate) fn purge(db: &Database, cutoff: i64, stop: &dyn Fn() -> bool) -> Result<PurgeReport> {
    let mut report = PurgeReport::default();
    let mut after = (i64::MIN, i64::MIN);
    loop {
        if stop() {
            return Ok(report);
        }
        let batch_started = Instant::now();
        let (events, deliveries, last) = db.write_background(|tx| {
            let batch: Vec<(i64, i64)> = tx
                .prepare_cached(
                    "SELECT created_at, row_id FROM keyhook_events
                     WHERE created_at < ?1 AND (created_at, row_id) > (?2, ?3)
                     ORDER BY created_at, row_id LIMIT ?4",
                )?
                .query_map(params![cutoff, after.0, after.1, PURGE_BATCH], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?
                .collect::<Result<_>>()?;
            let (mut events, mut deliveries) = (0u64, 0u64);
            for (_, row) in &batch {
                deliveries += tx
                    .prepare_cached(
                        "DELETE FROM keyhook_deliveries WHERE event_row = ?1 AND state <> 0",
                    )?
                    .execute([row])? as u64;
                events += tx
                    .prepare_cached(
                        "DELETE FROM keyhook_events WHERE row_id = ?1
                           AND NOT EXISTS (SELECT 1 FROM keyhook_deliveries WHERE event_row = ?1)",
                    )?
                    .execute([row])? as u64;
            }
            Ok((events, deliveries, batch.last().copied()))
        })?;
        report.events += events;
        report.deliveries += deliveries;
        // Leave room for other processes' writers too (they do not see
        // this process's priority): purging takes at most about half of the
        // write capacity.
        std::thread::sleep(batch_started.elapsed().min(Duration::from_millis(5)));
        match last {
            Some(pos) => after = pos,
            None => return Ok(report),
        }
    }
}

/// Parks due deliveries of disabled endpoints that a crash left due (their
/// attempts were never recorded). Run when a dispatcher starts.
pub(crate) fn park_stale(db: &Database) -> Result<usize> {
    db.write(|tx| {
        tx.prepare_cached(
            "UPDATE keyhook_deliveries SET next_attempt_at = NULL, leased = 0
                 WHERE state = 0 AND next_attempt_at <= ?1
                   AND endpoint_row IN (SELECT row_id FROM keyhook_endpoints WHERE enabled = 0)",
        )?
        .execute([now_ms()])
    })
}

/// When the earliest pending delivery is due (leases included), if any.
pub(crate) fn next_due(db: &Database) -> Result<Option<i64>> {
    db.read(|c| {
        c.prepare_cached("SELECT MIN(next_attempt_at) FROM keyhook_deliveries WHERE state = 0")?
            .query_row((), |r| r.get::<Option<i64>>(0))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::StatementStatus;
    /// An emit whose statement committed but whose answer was lost (the
    /// connection died) runs again under the same id: the second run
    /// stores nothing and counts the first one's deliveries. Runs when
    /// `KEYHOOK_TEST_POSTGRES` names a server (the CI's PostgreSQL pass).
    #[cfg(feature = "postgres")]
    #[test]
    fn an_emit_run_again_under_its_id_is_stored_once() {
        let Ok(url) = std::env::var("KEYHOOK_TEST_POSTGRES") else {
            return;
        };
        let schema = format!("kh_unit_alone_{}", std::process::id());
        // Dropped however the test ends.
        struct DropSchema(String, String);
        impl Drop for DropSchema {
            fn drop(&mut self) {
                if let Ok(mut admin) =
                    crate::postgres::Client::connect(&self.0, crate::postgres::NoTls)
                {
                    let _ =
                        admin.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.1));
                }
            }
        }
        let _schema = DropSchema(url.clone(), schema.clone());
        let db = Database::builder()
            .schema(&schema)
            .open_postgres(&url)
            .unwrap();
        let registry = crate::WebhookRegistry::builder(&db)
            .destination_policy(crate::DestinationPolicy::new().allow_http(true))
            .build();
        registry.register_event_type("a.b", "t").unwrap();
        for url in ["http://example.com/1", "http://example.com/2"] {
            registry
                .create("org_1", url, &["a.b"], crate::EndpointOptions::default())
                .unwrap();
        }
        let limits = EmitLimits {
            max_body: 1 << 20,
            first_delay_ms: 0,
        };
        let now = now_ms();
        let store = || store_event_alone(&db, "msg_same", "org_1", "a.b", b"{}", now, &limits);
        let (first, again) = (store().unwrap(), store().unwrap());
        assert_eq!((first.deliveries, again.deliveries), (2, 2));
        assert_eq!(again.id, "msg_same");
        let counts = db
            .read(|sql| {
                sql.prepare_cached(
                    "SELECT (SELECT COUNT(*) FROM keyhook_events),
                            (SELECT COUNT(*) FROM keyhook_deliveries)",
                )?
                .query_row((), |r| Ok((r.get::<i64>(0)?, r.get::<i64>(1)?)))
            })
            .unwrap();
        assert_eq!(counts, (1, 2));
    }

    /// One healthy and one new endpoint with a due delivery each, and
    /// `others` endpoints in other organizations: a third never had
    /// anything to send, a third are disabled with a parked pending
    /// delivery, a third are failing with a retry due in an hour. Returns the
    /// virtual-machine steps of each statement a claim runs when all due
    /// work fits its window (the probe, the limited claim, the healthy
    /// claim), and of the walk over endpoints with pending work.
    fn claim_steps(others: usize) -> Vec<i32> {
        let db = Database::open_in_memory().unwrap();
        db.write(|tx| {
            let now = now_ms();
            let mut endpoint = tx.prepare(
                "INSERT INTO keyhook_endpoints (id, org_id, url, all_event_types, headers, created_at,
                     updated_at, last_success_at, enabled, consecutive_failures)
                 VALUES (?1, ?2, 'https://example.com/', 1, '[]', ?3, ?3, ?4, ?5, ?6)",
            )?;
            endpoint.execute(params!["ep_healthy", "org_a", now, now, 1, 0])?;
            endpoint.execute(params!["ep_new", "org_a", now, None::<i64>, 1, 0])?;
            for i in 0..others {
                let (enabled, failures) = match i % 3 {
                    0 => (1, 0),
                    1 => (0, 0),
                    _ => (1, 3),
                };
                endpoint.execute(params![
                    format!("ep_other{i}"),
                    format!("org_{i}"),
                    now,
                    None::<i64>,
                    enabled,
                    failures
                ])?;
            }
            tx.execute(
                "INSERT INTO keyhook_events (id, org_id, event_type, body, created_at)
                 VALUES ('msg_1', 'org_a', 't', x'7b7d', ?1)",
                [now],
            )?;
            // Due now for org_a; parked for the disabled; in an hour for the failing.
            tx.execute(
                "INSERT INTO keyhook_deliveries (event_row, endpoint_row, org_id, next_attempt_at,
                     created_at, updated_at)
                 SELECT 1, row_id, org_id,
                        CASE WHEN org_id = 'org_a' THEN ?1
                             WHEN enabled = 0 THEN NULL ELSE ?1 + 3600000 END, ?1, ?1
                 FROM keyhook_endpoints
                 WHERE org_id = 'org_a' OR enabled = 0 OR consecutive_failures > 0",
                [now - 1],
            )?;
            Ok(())
        })
        .unwrap();
        let mut conn = db.conn().unwrap();
        let now = now_ms();
        let probe = {
            let mut stmt = conn.prepare(DUE_WINDOW_SQL).unwrap();
            let (due, limited): (i64, i64) = stmt
                .query_row(rusqlite::params![now, 64], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap();
            assert_eq!(
                (due, limited),
                (2, 1),
                "the window holds the two due deliveries"
            );
            stmt.get_status(StatementStatus::VmStep)
        };
        let mut steps = vec![probe];
        for (sql, failing) in [
            (CLAIM_LIMITED_IN_WINDOW_SQL, false),
            (CLAIM_HEALTHY_SQL, false),
            (CLAIM_LIMITED_SQL, false),
        ] {
            // Rolled back when dropped: each statement claims from the same state.
            let tx = conn.transaction().unwrap();
            let mut stmt = tx.prepare(sql).unwrap();
            let params: [&dyn Arg; 7] =
                [&now, &(now + 1000), &10i64, &1u32, &failing, &"[]", &64i64];
            for (i, p) in params.iter().enumerate().take(stmt.parameter_count()) {
                stmt.raw_bind_parameter(i + 1, p).unwrap();
            }
            let mut rows = stmt.raw_query();
            let mut n = 0;
            while rows.next().unwrap().is_some() {
                n += 1;
            }
            drop(rows);
            assert_eq!(n, 1, "each statement claims its one delivery: {sql}");
            steps.push(stmt.get_status(StatementStatus::VmStep));
        }
        steps
    }

    #[test]
    fn claim_cost_does_not_grow_with_idle_disabled_or_waiting_endpoints() {
        let without = claim_steps(0);
        let with = claim_steps(30_000);
        let names = ["probe", "limited in window", "healthy", "walk"];
        // The walk visits endpoints with pending work that can come due
        // (the failing ones' retries), never idle or disabled ones; it runs
        // only when due work overflows the window.
        for (i, (w, wo)) in with.iter().zip(&without).enumerate().take(3) {
            assert!(
                *w <= wo * 2 + 50,
                "{}: {w} steps with 30,000 other endpoints, {wo} without",
                names[i]
            );
        }
        let walk_per_waiting = (with[3] - without[3]) / 10_000;
        assert!(
            walk_per_waiting < 100,
            "the walk spends {walk_per_waiting} steps per endpoint with work"
        );
    }
}
