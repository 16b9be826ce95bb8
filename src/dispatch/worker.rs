//! The dispatcher's threads.
//!
//! One *pump* thread owns the database side: in one transaction per step it
//! stores the events emitted meanwhile, records finished attempts and claims
//! new work, so workers in one process never contend for SQLite's write
//! lock, and one commit serves many emits and attempts (its sync to disk is
//! made after the lock is released, by the first emitter or worker that
//! needs it, and serves every commit before it). *Workers*
//! only sign and send: they take claimed deliveries from a queue and hand the
//! outcome back to the pump.

use std::collections::{HashMap, VecDeque};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rand::Rng;

use crate::db::{CommitMark, duration_ms, now_ms};
use crate::error::{Error, Result};
use crate::event::NewEvent;
use crate::signing::sign;

use super::hooks::CloseOnDrop;
use super::http::{self, Request, Response, redacted_target};
use super::queue::{
    self, ClaimLimits, Claimed, Completion, Emitted, Health, Next, Recorded, Stepped,
};
use super::retry::parse_retry_after;
use super::{AttemptReport, Shared};

/// Jobs claimed ahead of the workers, per worker, so each step's commit
/// serves several deliveries.
const PREFETCH_PER_WORKER: usize = 8;

/// The longest a finished attempt waits to be recorded while workers are
/// busy, so that one commit records many.
const RECORD_DELAY: Duration = Duration::from_millis(2);

/// How often a PostgreSQL pump with a backlog of healthy work looks for
/// limited endpoints' work, once it found none (see `ClaimLimits::skip_limited`).
const LIMITED_RECHECK: Duration = Duration::from_millis(50);

/// How long after start the first retention purge runs.
const FIRST_PURGE_DELAY: Duration = Duration::from_secs(3);

/// How often an idle pump looks for commits made by other connections.
const WATCH_INTERVAL: Duration = Duration::from_millis(50);

/// What the pump waits on: emits, finished attempts, stop.
#[derive(Default)]
pub(crate) struct PumpSignal {
    state: Mutex<PumpState>,
    /// The pump waits on this one.
    cond: Condvar,
    /// The maintenance thread waits on this one, so emits do not wake it.
    stop_cond: Condvar,
}

#[derive(Default)]
pub(crate) struct PumpState {
    /// Bumped by every emit in this process.
    generation: u64,
    /// Emits waiting for the pump's next step to commit them.
    emits: Vec<EmitRequest>,
    /// Whether the pump takes emits: it runs and has not been asked to stop.
    accepting: bool,
    done: Vec<Completion>,
    /// When the oldest entry of `done` arrived.
    first_done_at: Option<Instant>,
    pub(crate) stopping: bool,
}

impl PumpSignal {
    pub(crate) fn lock(&self) -> MutexGuard<'_, PumpState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// New work was committed in this process.
    pub fn emitted(&self) {
        self.lock().generation += 1;
        self.cond.notify_one();
    }

    /// Hands `request` to the pump's next step; gives it back if the pump
    /// does not run (the caller then writes it itself).
    pub fn submit(&self, request: EmitRequest) -> std::result::Result<(), EmitRequest> {
        let mut st = self.lock();
        if !st.accepting {
            return Err(request);
        }
        st.emits.push(request);
        st.generation += 1;
        drop(st);
        self.cond.notify_one();
        Ok(())
    }

    /// Stops taking emits until the guard is dropped, while the pump runs
    /// host code or sleeps; queued ones are handed back (their callers
    /// write them).
    fn pause(&self) -> Paused<'_> {
        let mut st = self.lock();
        let was = std::mem::replace(&mut st.accepting, false);
        let left = std::mem::take(&mut st.emits);
        drop(st);
        drop(left);
        Paused(self, was)
    }

    /// Opens the pump to emits until the guard is dropped.
    fn accept(&self) -> Accepting<'_> {
        let mut st = self.lock();
        st.accepting = !st.stopping;
        Accepting(self)
    }

    pub fn stop(&self) {
        let mut st = self.lock();
        st.stopping = true;
        st.accepting = false;
        drop(st);
        self.cond.notify_all();
        self.stop_cond.notify_all();
    }

    /// Sleeps up to `timeout`; true if stop was asked.
    fn wait_for_stop(&self, timeout: Duration) -> bool {
        let st = self.lock();
        let (st, _) = self
            .stop_cond
            .wait_timeout_while(st, timeout, |s| !s.stopping)
            .unwrap_or_else(|e| e.into_inner());
        st.stopping
    }

    fn finished(&self, c: Completion) {
        let mut st = self.lock();
        st.first_done_at.get_or_insert_with(Instant::now);
        st.done.push(c);
        drop(st);
        self.cond.notify_one();
    }
}

/// Events an emit hands to the pump, and where the outcome goes.
pub(crate) struct EmitRequest {
    pub org: String,
    /// Shared with the caller, which writes them itself if the pump stops
    /// before committing them.
    pub events: Arc<Vec<NewEvent>>,
    /// The outcome, and the commit to sync before the emit returns.
    pub reply: SyncSender<EmitReply>,
}

/// What the pump answers an emit: its events, and the commit to sync before
/// the emit returns.
pub(crate) type EmitReply = Result<(Vec<Emitted>, CommitMark)>;

thread_local! {
    /// True on pump threads. Host code can still run there (the `log`
    /// facade's logger; a callback if the callbacks thread is gone), and an
    /// emit from it must not wait for the pump it runs on.
    static ON_PUMP: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the calling thread is a dispatcher's pump.
pub(crate) fn on_pump_thread() -> bool {
    ON_PUMP.with(|p| p.get())
}

/// Keeps the pump open to emits; when the pump exits (or panics), closes it
/// and drops the requests it will not commit, so their callers (seeing the
/// reply channel closed) write them themselves.
struct Accepting<'a>(&'a PumpSignal);

impl Drop for Accepting<'_> {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.accepting = false;
        let left = std::mem::take(&mut st.emits);
        drop(st);
        drop(left);
    }
}

/// Takes emits again when dropped (unless stop was asked meanwhile).
struct Paused<'a>(&'a PumpSignal, bool);

impl Drop for Paused<'_> {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.accepting = self.1 && !st.stopping;
    }
}

/// Claimed deliveries waiting for a worker.
#[derive(Default)]
pub(crate) struct Jobs {
    state: Mutex<JobQueue>,
    cond: Condvar,
}

#[derive(Default)]
struct JobQueue {
    queue: VecDeque<Claimed>,
    closed: bool,
}

impl Jobs {
    fn lock(&self) -> MutexGuard<'_, JobQueue> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues claimed jobs: those to endpoints not known to be healthy go
    /// first, since they count as in flight from their claim on.
    fn push(&self, jobs: Vec<Claimed>) {
        let n = jobs.len();
        let mut g = self.lock();
        for job in jobs {
            if job.target.health.limited() {
                g.queue.push_front(job);
            } else {
                g.queue.push_back(job);
            }
        }
        drop(g);
        for _ in 0..n {
            self.cond.notify_one();
        }
    }

    fn take_all(&self) -> Vec<Claimed> {
        self.lock().queue.drain(..).collect()
    }

    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.cond.notify_all();
    }

    /// The next job, or `None` once the queue is closed and empty.
    fn next(&self) -> Option<Claimed> {
        let mut g = self.lock();
        loop {
            if let Some(job) = g.queue.pop_front() {
                return Some(job);
            }
            if g.closed {
                return None;
            }
            g = self.cond.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }
}

pub(crate) fn run_worker(shared: Arc<Shared>) {
    let timeout_ms = duration_ms(shared.config.request_timeout);
    while let Some(claimed) = shared.jobs.next() {
        let (response, next) = if let Err(e) = shared.db.sync(claimed.commit) {
            // What claimed it must be on disk before anything is sent. Give
            // it back (the pump claims nothing more: every write is refused
            // once a sync has failed).
            contained(|| {
                log::error!(
                    "keyhook: not sending {}: the database could not be synced to disk: {e}",
                    claimed.event_id
                )
            });
            (Response::not_sent(), Next::NotSent)
        } else if now_ms().saturating_add(timeout_ms + 500) > claimed.lease_until {
            // Checked after the sync (which has no time bound), just before
            // sending: the request could outlast the lease, and another
            // process could then send the same attempt. Give it back.
            (Response::not_sent(), Next::NotSent)
        } else {
            attempt(&shared, &claimed)
        };
        shared.pump.finished(Completion {
            claimed,
            response,
            next,
            manual: false,
        });
    }
}

/// Sends one attempt and decides what follows. A panic (in keyhook, or in
/// host code such as a logger) is contained: the attempt is recorded as
/// failed with [`AttemptError::Panic`](super::AttemptError::Panic), the
/// worker goes on, and the pump's count of attempts in flight balances.
fn attempt(shared: &Shared, claimed: &Claimed) -> (Response, Next) {
    let started = Instant::now();
    let sent = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let response = deliver(shared, claimed);
        let next = decide(shared, claimed, &response);
        (response, next)
    }));
    sent.unwrap_or_else(|panic| {
        let cause = panic_message(panic.as_ref());
        contained(|| {
            log::error!(
                "keyhook: attempt {} of {} to {} panicked: {cause}",
                claimed.attempt,
                claimed.event_id,
                claimed.target.endpoint_id
            )
        });
        let response = Response::panicked(started.elapsed());
        let next = contained(|| decide(shared, claimed, &response)).unwrap_or(Next::Failed);
        (response, next)
    })
}

/// Runs `f`, containing a panic (host code, a logger, may run inside).
pub(crate) fn contained<T>(f: impl FnOnce() -> T) -> Option<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).ok()
}

/// The message a panic was raised with.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_owned()
    }
}

/// What this process's workers hold: deliveries claimed and not yet
/// recorded (queued, being sent, or finished and waiting to be recorded).
/// The pump's counts derive from it, so they balance by construction, and
/// its rows are never claimed again while held.
#[derive(Default)]
struct Held {
    rows: HashMap<i64, Health>,
    unproven: usize,
    failing: usize,
}

impl Held {
    fn add(&mut self, c: &Claimed) {
        let health = c.target.health;
        let before = self.rows.insert(c.delivery_row, health);
        assert!(
            before.is_none(),
            "keyhook: delivery row {} claimed while held",
            c.delivery_row
        );
        match health {
            Health::Unproven => self.unproven += 1,
            Health::Failing => self.failing += 1,
            Health::Healthy => {}
        }
    }

    fn remove(&mut self, c: &Claimed) {
        match self.rows.remove(&c.delivery_row) {
            Some(Health::Unproven) => self.unproven -= 1,
            Some(Health::Failing) => self.failing -= 1,
            Some(Health::Healthy) | None => {}
        }
    }

    fn len(&self) -> usize {
        self.rows.len()
    }

    fn limited(&self) -> usize {
        self.unproven + self.failing
    }

    /// The held rows as a JSON array, for the claim statements.
    fn to_json(&self) -> String {
        let mut out = String::with_capacity(2 + self.rows.len() * 8);
        out.push('[');
        for (i, row) in self.rows.keys().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&row.to_string());
        }
        out.push(']');
        out
    }
}

/// How long a stopping pump keeps trying to record finished attempts in a
/// database it cannot write; then they are left to their leases.
const STOP_RECORD_GRACE: Duration = Duration::from_secs(10);

pub(crate) fn run_pump(shared: Arc<Shared>, workers: usize) {
    let capacity = workers * PREFETCH_PER_WORKER;
    // Endpoints not known to be healthy (new, or failing) may hold all but
    // one worker, so healthy endpoints always have one; failing ones all
    // but one of those, so new endpoints keep a slot.
    let limited_capacity = workers.saturating_sub(1).max(1);
    let failing_capacity = limited_capacity.saturating_sub(1).max(1);
    let mut held = Held::default();
    // Finished attempts not yet committed, oldest first: kept across failed
    // steps until they are recorded.
    let mut unrecorded: Vec<Completion> = Vec::new();
    let mut backoff = Duration::from_millis(10);
    // False once a claim came back short: nothing more is claimable until an
    // emit, a finished attempt or a timer says otherwise.
    let mut maybe_more = true;
    let mut last_generation = u64::MAX;
    let mut told_sync_failed = false;
    let mut stopping_since: Option<Instant> = None;
    // PostgreSQL: when a claim last looked for limited work and found
    // none, and whether a claim has left that look out since; see
    // `skip_limited`.
    let mut no_limited_since: Option<Instant> = None;
    let mut limited_unseen = false;
    let skips_limited = shared.db.concurrent_writes();
    let policy = shared.health_policy();
    let emit_limits = shared.emit_limits();
    ON_PUMP.with(|p| p.set(true));
    // Dropped in this order when the pump ends or panics: no more emits,
    // the job queue closed (workers end), then the callbacks thread
    // finishes what is queued and ends.
    let _hooks = CloseOnDrop(&shared.hooks);
    let _jobs = CloseJobs(&shared.jobs);
    let _accepting = shared.pump.accept();
    loop {
        let (emits, stopping, generation) = {
            let mut st = shared.pump.lock();
            let waiting = st.done.len() + unrecorded.len();
            let busy = held.len() - waiting;
            // Claimable work may exist: after an emit, or when a finished
            // attempt frees a slot at a limited endpoint, proves a new one,
            // or gives a job back.
            let unlocks = st
                .done
                .iter()
                .any(|c| c.claimed.target.health.limited() || c.next == Next::NotSent);
            let could_claim = maybe_more || unlocks || st.generation != last_generation;
            // Record now if work should be claimed (the queue is half empty
            // or a worker is idle), or if the oldest finished attempt waited
            // long enough; otherwise let more finish, and share one commit.
            let refill = could_claim && (capacity - busy >= capacity / 2 || busy < workers);
            let due = st
                .first_done_at
                .is_some_and(|t| t.elapsed() >= RECORD_DELAY);
            if !st.done.is_empty()
                && st.emits.is_empty()
                && !st.stopping
                && !refill
                && !due
                && waiting < capacity / 2
            {
                let deadline = st
                    .first_done_at
                    .map_or(RECORD_DELAY, |t| RECORD_DELAY.saturating_sub(t.elapsed()));
                let (generation, done) = (st.generation, st.done.len());
                let _ = shared.pump.cond.wait_timeout_while(st, deadline, |s| {
                    s.done.len() == done && !s.stopping && s.generation == generation
                });
                continue;
            }
            if unlocks {
                maybe_more = true;
                no_limited_since = None;
            }
            st.first_done_at = None;
            unrecorded.append(&mut st.done);
            // Recorded in endpoint order: two processes recording for the
            // same endpoints (on PostgreSQL, whose writers run side by
            // side) lock their rows in one order and cannot deadlock.
            unrecorded.sort_by_key(|c| c.claimed.target.endpoint_row);
            (std::mem::take(&mut st.emits), st.stopping, st.generation)
        };
        if generation != last_generation {
            maybe_more = true;
            last_generation = generation;
        }
        if stopping {
            stopping_since.get_or_insert_with(Instant::now);
            let queued = shared.jobs.take_all();
            for c in &queued {
                held.remove(c);
            }
            if let Err(e) = queue::release(&shared.db, &queued) {
                log::warn!(
                    "keyhook: releasing {} unstarted deliveries failed: {e}; their leases will expire",
                    queued.len()
                );
            }
        }
        let in_flight = held.len();
        let free = capacity - in_flight;
        let limits = ClaimLimits {
            // Refill in chunks (half the queue, or when a worker is idle), so
            // a commit serves several deliveries.
            max: if stopping || !maybe_more || !(free >= capacity / 2 || in_flight < workers) {
                0
            } else {
                free
            },
            // At most all workers but one; they go to the front of the
            // queue, so the next worker to finish takes them (from their
            // claim on they count as in flight, everywhere).
            max_limited: limited_capacity.saturating_sub(held.limited()),
            max_failing: failing_capacity.saturating_sub(held.failing),
            per_endpoint: shared.config.limited_in_flight,
            lease_ms: shared.lease_ms,
            held: held.to_json(),
            // On PostgreSQL each claim pass is a round trip: once a look
            // for limited work found none, look again only after
            // LIMITED_RECHECK (a new or failing endpoint's due work waits
            // that long at most), or at once when a limited attempt
            // finishes (a slot frees).
            skip_limited: skips_limited
                && no_limited_since.is_some_and(|t| t.elapsed() < LIMITED_RECHECK),
        };
        if stopping && unrecorded.is_empty() && emits.is_empty() {
            // A thread that died may never report what it held.
            if held.len() == 0 || shared.has_failed() {
                return;
            }
            wait_for_done(&shared, shared.config.poll_interval);
            continue;
        }
        if unrecorded.is_empty() && emits.is_empty() && limits.max == 0 {
            let mut idle = if in_flight < capacity && !maybe_more {
                idle_wait(&shared)
            } else {
                shared.config.poll_interval
            };
            if limited_unseen && let Some(t) = no_limited_since {
                // A claim left out limited work: look for it when its
                // recheck is due, not a whole idle wait later.
                idle = idle.min(LIMITED_RECHECK.saturating_sub(t.elapsed()));
            }
            if watch(&shared, generation, idle) {
                maybe_more = true;
            }
            continue;
        }
        let batch: Vec<(&str, &[NewEvent])> = emits
            .iter()
            .map(|r| (r.org.as_str(), r.events.as_slice()))
            .collect();
        let run_step = |emits: &[(&str, &[NewEvent])], isolate: bool| {
            queue::step(
                &shared.db,
                emits,
                &emit_limits,
                &unrecorded,
                &limits,
                &policy,
                isolate,
            )
        };
        let mut stepped = run_step(&batch, false);
        if let Err(e) = &stepped
            && !unrecorded.is_empty()
            && !queue::transaction_failed(e)
        {
            // One record could not be written: try again with each in a
            // savepoint of its own, so it is dropped alone.
            stepped = run_step(&batch, true);
        }
        if let Err(e @ Error::Locked(_)) = &stepped
            && !emits.is_empty()
        {
            // Another connection held the write lock for the whole busy
            // timeout: nothing was written, and each emit has waited as long
            // as it may. Say so to every caller now.
            let why = e.to_string();
            for request in &emits {
                let _ = request
                    .reply
                    .send(Err(Error::Locked(rusqlite::Error::SqliteFailure(
                        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                        Some(why.clone()),
                    ))));
            }
        } else if let Err(e) = &stepped
            && !emits.is_empty()
        {
            // An emit may have broken the whole transaction (a full disk,
            // say): write each on its own, so every caller gets its own
            // outcome, and try the rest of the step again without them.
            log::warn!(
                "keyhook: dispatcher step with {} emit(s) failed: {e}; writing them one by one",
                emits.len()
            );
            for request in &emits {
                let emitted = shared.write_events(&request.org, &request.events);
                let _ = request
                    .reply
                    .send(emitted.map(|e| (e, CommitMark::default())));
            }
            maybe_more = true;
            stepped = run_step(&[], true);
        }
        match stepped {
            Ok(Stepped {
                emitted,
                recorded,
                claimed,
                commit,
            }) => {
                // Callers first: nothing may stand between the commit and
                // their replies (a caller whose reply never comes writes its
                // events again). None left if they were written one by one.
                for (request, emitted) in emits.iter().zip(emitted) {
                    let _ = request.reply.send(emitted.map(|e| (e, commit)));
                }
                backoff = Duration::from_millis(10);
                for (c, recorded) in unrecorded.drain(..).zip(recorded) {
                    held.remove(&c.claimed);
                    report(&shared, &c, &recorded);
                    shared.notify(&recorded.notices, commit);
                }
                if claimed.len() < limits.max {
                    maybe_more = false;
                }
                if skips_limited && limits.max > 0 {
                    if claimed.iter().any(|c| c.target.health.limited()) {
                        no_limited_since = None;
                    } else if !limits.skip_limited {
                        no_limited_since = Some(Instant::now());
                    }
                    limited_unseen = limits.skip_limited;
                }
                for c in &claimed {
                    held.add(c);
                }
                shared.jobs.push(claimed);
            }
            Err(e) => {
                // The finished attempts stay in `unrecorded` (and held) for
                // the next step: dropping them would leave their deliveries
                // leased, to be sent again when the leases end. Once a sync
                // has failed every write is refused: say so once.
                if !shared.db.sync_failed() || !told_sync_failed {
                    told_sync_failed = shared.db.sync_failed();
                    log::error!(
                        "keyhook: dispatcher step failed: {e}; {} finished attempt(s) will be recorded when the database is writable again",
                        unrecorded.len()
                    );
                }
                if stopping_since.is_some_and(|t| t.elapsed() >= STOP_RECORD_GRACE)
                    || shared.db.sync_failed()
                {
                    log::error!(
                        "keyhook: giving up recording {} finished attempt(s); they will be made again when their leases end",
                        unrecorded.len()
                    );
                    for c in unrecorded.drain(..) {
                        held.remove(&c.claimed);
                    }
                }
                let _paused = shared.pump.pause();
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Closes the job queue when the pump ends, however it ends (a panic
/// included), so that workers stop rather than wait forever. Jobs still
/// queued are dropped unsent: nobody would record their attempts, and their
/// leases end so that the next dispatcher sends them (once).
struct CloseJobs<'a>(&'a Jobs);

impl Drop for CloseJobs<'_> {
    fn drop(&mut self) {
        drop(self.0.take_all());
        self.0.close();
    }
}

/// Sleeps until a finished attempt arrives, or `timeout` (while stopping:
/// nothing else matters then).
fn wait_for_done(shared: &Shared, timeout: Duration) {
    let st = shared.pump.lock();
    let _ = shared
        .pump
        .cond
        .wait_timeout_while(st, timeout, |s| s.done.is_empty())
        .unwrap_or_else(|e| e.into_inner());
}

/// Sleeps until an emit, a finished attempt, stop, or `timeout`; true if
/// the timeout ran out (time passed, so something may have come due).
fn wait(shared: &Shared, generation: u64, timeout: Duration) -> bool {
    let st = shared.pump.lock();
    let (_st, result) = shared
        .pump
        .cond
        .wait_timeout_while(st, timeout, |s| {
            s.generation == generation && s.done.is_empty() && !s.stopping
        })
        .unwrap_or_else(|e| e.into_inner());
    result.timed_out()
}

/// Like [`wait`], but looks every [`WATCH_INTERVAL`] for commits made by
/// other connections (another process, or [`emit_in`](super::Dispatcher::emit_in)
/// without [`wake`](super::Dispatcher::wake)); true if the timeout ran out or
/// such a commit was seen.
fn watch(shared: &Shared, generation: u64, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if !wait(shared, generation, left.min(WATCH_INTERVAL)) {
            return false;
        }
        if left <= WATCH_INTERVAL || shared.db.changed_elsewhere().unwrap_or(true) {
            return true;
        }
    }
}

/// How long the pump sleeps with nothing to do: until the next due
/// delivery, but never longer than the poll interval (which bounds how late
/// work emitted by another process is seen).
fn idle_wait(shared: &Shared) -> Duration {
    let poll = shared.config.poll_interval;
    match queue::next_due(&shared.db) {
        Ok(Some(due)) => {
            let until = due - now_ms();
            if until <= 0 {
                // Due but not claimable (its endpoint is at its in-flight
                // limit): a finished attempt wakes the pump.
                poll
            } else {
                poll.min(Duration::from_millis(until as u64 + 1))
            }
        }
        Ok(None) | Err(_) => poll,
    }
}

/// Signs with every current secret and sends.
pub(crate) fn deliver(shared: &Shared, claimed: &Claimed) -> Response {
    let timestamp = now_ms() / 1000;
    let target = &claimed.target;
    let signature = sign(&target.signers, &claimed.event_id, timestamp, &claimed.body);
    http::send(
        &shared.agent,
        &Request {
            url: &target.url,
            headers: &target.headers,
            msg_id: &claimed.event_id,
            timestamp,
            signature: &signature,
            body: &claimed.body,
        },
        shared.config.response_excerpt_limit,
    )
}

fn decide(shared: &Shared, claimed: &Claimed, response: &Response) -> Next {
    if response.is_success() {
        return Next::Delivered;
    }
    if response.is_gone() {
        return Next::Gone;
    }
    let retry_after = response
        .retry_after
        .as_deref()
        .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
    let unit: f64 = rand::rng().random();
    match shared.config.retry.next_delay(
        claimed.attempt,
        response.is_throttled(),
        retry_after,
        unit,
    ) {
        Some(delay) => Next::RetryAt(now_ms().saturating_add(duration_ms(delay))),
        None => Next::Failed,
    }
}

fn report(shared: &Shared, c: &Completion, recorded: &Recorded) {
    let (claimed, response) = (&c.claimed, &c.response);
    let endpoint = &claimed.target;
    if let Some(why) = &recorded.dropped {
        log::warn!(
            "keyhook: attempt {} of {} to {} not recorded: {why}",
            claimed.attempt,
            claimed.event_id,
            endpoint.endpoint_id
        );
        return;
    }
    let applied = recorded.applied;
    // Parsing the URL for the log line is skipped when nothing would print it.
    let target = if log::log_enabled!(log::Level::Info) {
        redacted_target(&endpoint.url)
    } else {
        String::new()
    };
    if c.next == Next::NotSent {
        log::debug!(
            "keyhook: {} to {} waited too long for a worker; given back",
            claimed.event_id,
            endpoint.endpoint_id
        );
        return;
    }
    if !applied && !c.manual {
        log::warn!(
            "keyhook: attempt {} of {} to {} outlived its lease; recorded, not applied",
            claimed.attempt,
            claimed.event_id,
            endpoint.endpoint_id
        );
    }
    match c.next {
        Next::Delivered => log::debug!(
            "keyhook: delivered {} to {} ({target}) attempt {} status {} in {:?}",
            claimed.event_id,
            endpoint.endpoint_id,
            claimed.attempt,
            response.status.unwrap_or(0),
            response.duration
        ),
        Next::RetryAt(at) => log::info!(
            "keyhook: attempt {} of {} to {} ({target}) failed ({}{}); retry in {} ms",
            claimed.attempt,
            claimed.event_id,
            endpoint.endpoint_id,
            response.error.map(|e| e.as_str()).unwrap_or("?"),
            response.status.map(|s| format!(" {s}")).unwrap_or_default(),
            at - now_ms()
        ),
        // Reported as notices.
        Next::Failed | Next::Gone | Next::NotSent => {}
    }
    if shared.hooks.observes_attempts() {
        shared.hooks.attempt(&AttemptReport {
            event_id: &claimed.event_id,
            endpoint_id: &endpoint.endpoint_id,
            org: &endpoint.org,
            attempt: claimed.attempt,
            status: response.status,
            error: response.error,
            outcome: c.next,
        });
    }
}

/// Runs the retention purge every `retention_interval` until stopped.
pub(crate) fn run_maintenance(shared: Arc<Shared>) {
    let Some(age) = shared.config.retention else {
        return;
    };
    // The first purge comes soon after start (a process may not live a
    // whole interval), but not at once: start-up has work of its own.
    let mut wait = shared.config.retention_interval.min(FIRST_PURGE_DELAY);
    loop {
        if shared.pump.wait_for_stop(wait) {
            return;
        }
        wait = shared.config.retention_interval;
        let cutoff = now_ms().saturating_sub(duration_ms(age));
        let stopping = || shared.pump.lock().stopping;
        match queue::purge(&shared.db, cutoff, &stopping) {
            Ok(r) if r.deliveries > 0 || r.events > 0 => log::info!(
                "keyhook: retention purged {} deliveries and {} events",
                r.deliveries,
                r.events
            ),
            Ok(_) => {}
            Err(e) => log::error!("keyhook: retention purge failed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn request() -> (EmitRequest, mpsc::Receiver<EmitReply>) {
        let (reply, result) = mpsc::sync_channel(1);
        let request = EmitRequest {
            org: "org_1".into(),
            events: Arc::new(Vec::new()),
            reply,
        };
        (request, result)
    }

    #[test]
    fn emits_go_to_the_pump_only_while_it_accepts() {
        let pump = PumpSignal::default();
        // Not started: the caller writes its events itself.
        assert!(pump.submit(request().0).is_err());

        let accepting = pump.accept();
        let (queued, result) = request();
        assert!(pump.submit(queued).is_ok());
        assert_eq!(pump.lock().emits.len(), 1);
        // The pump exits (or panics) without committing it: the request is
        // dropped, so its caller sees the channel closed and writes itself.
        drop(accepting);
        assert!(matches!(result.recv(), Err(mpsc::RecvError)));
        assert!(pump.lock().emits.is_empty());
        assert!(pump.submit(request().0).is_err());
    }

    #[test]
    fn a_pause_hands_back_queued_emits_and_ends_with_the_guard() {
        let pump = PumpSignal::default();
        let _accepting = pump.accept();
        let (queued, result) = request();
        assert!(pump.submit(queued).is_ok());
        let paused = pump.pause();
        // Its caller writes it: the pump is busy with host code.
        assert!(matches!(result.recv(), Err(mpsc::RecvError)));
        assert!(pump.submit(request().0).is_err());
        drop(paused);
        assert!(pump.submit(request().0).is_ok());
        // A stop during a pause is not undone by its end.
        let paused = pump.pause();
        pump.stop();
        drop(paused);
        assert!(pump.submit(request().0).is_err());
    }

    #[test]
    fn stop_closes_the_pump_to_emits() {
        let pump = PumpSignal::default();
        let _accepting = pump.accept();
        assert!(pump.submit(request().0).is_ok());
        pump.stop();
        assert!(pump.submit(request().0).is_err());
        // A pump that starts after stop was asked never accepts.
        let late = PumpSignal::default();
        late.stop();
        let _accepting = late.accept();
        assert!(late.submit(request().0).is_err());
    }
}
