//! Group commit for emits: concurrent callers share one transaction and one
//! fsync, each still returning only once its events are committed.
//!
//! The first caller to find no commit in progress becomes the leader: it
//! takes every request queued so far, writes each inside its own savepoint
//! (so one caller's bad event fails only that caller), commits once, and
//! hands out the results. Callers that arrive meanwhile queue for the next
//! round. With one caller at a time this is exactly one transaction per emit.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard};

use crate::db::Database;
use crate::error::Result;
use crate::event::NewEvent;

use super::queue::{self, EmitLimits, Emitted};

struct Request {
    ticket: u64,
    org: String,
    events: Vec<NewEvent>,
}

#[derive(Default)]
struct State {
    queue: Vec<Request>,
    leader: bool,
    next_ticket: u64,
    results: HashMap<u64, Result<Vec<Emitted>>>,
}

#[derive(Default)]
pub(crate) struct GroupCommit {
    state: Mutex<State>,
    cond: Condvar,
}

impl GroupCommit {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores `events` for `org`, committed (alone or with other callers')
    /// before this returns.
    pub fn emit(
        &self,
        db: &Database,
        org: &str,
        events: Vec<NewEvent>,
        limits: &EmitLimits,
    ) -> Result<Vec<Emitted>> {
        let mut st = self.lock();
        let ticket = st.next_ticket;
        st.next_ticket += 1;
        st.queue.push(Request {
            ticket,
            org: org.to_owned(),
            events,
        });
        loop {
            if let Some(result) = st.results.remove(&ticket) {
                return result;
            }
            if !st.leader {
                st.leader = true;
                let batch = std::mem::take(&mut st.queue);
                drop(st);
                let results = commit(db, batch, limits);
                st = self.lock();
                st.results.extend(results);
                st.leader = false;
                self.cond.notify_all();
                continue;
            }
            st = self.cond.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Writes a batch in one transaction, each request in its own savepoint.
/// If the commit itself fails, each request is retried alone so that every
/// caller gets its own outcome.
fn commit(
    db: &Database,
    batch: Vec<Request>,
    limits: &EmitLimits,
) -> Vec<(u64, Result<Vec<Emitted>>)> {
    if batch.len() == 1 {
        let r = &batch[0];
        let result = db.write(|tx| queue::insert_events(tx, &r.org, &r.events, limits));
        return vec![(r.ticket, result)];
    }
    let shared = db.write(|tx| {
        let mut out = Vec::with_capacity(batch.len());
        for r in &batch {
            tx.execute_batch("SAVEPOINT keyhook_emit")?;
            let result = queue::insert_events(tx, &r.org, &r.events, limits);
            if result.is_ok() {
                tx.execute_batch("RELEASE keyhook_emit")?;
            } else {
                tx.execute_batch("ROLLBACK TO keyhook_emit; RELEASE keyhook_emit")?;
            }
            out.push((r.ticket, result));
        }
        Ok(out)
    });
    match shared {
        Ok(out) => out,
        Err(_) => batch
            .iter()
            .map(|r| {
                (
                    r.ticket,
                    db.write(|tx| queue::insert_events(tx, &r.org, &r.events, limits)),
                )
            })
            .collect(),
    }
}
