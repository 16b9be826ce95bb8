//! The dispatcher: durable emit, and delivery on a small pool of owned threads.

mod history;
mod hooks;
mod http;
mod queue;
mod retry;
mod worker;

use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crate::db::{CommitMark, Database, duration_ms, from_ms};
use crate::destination::DestinationPolicy;
use crate::error::{Error, Result};
use crate::event::NewEvent;
use crate::registry::WebhookRegistry;
use crate::validate;

pub use history::{
    Attempt, Delivery, DeliveryState, EndpointStats, EventDetail, EventPage, EventQuery,
    EventSummary, HistoryPage, HistoryQuery, MAX_HISTORY_RANGE, MAX_PAGE_SIZE,
};
pub use http::AttemptError;
pub use queue::PurgeReport;
pub use retry::{MAX_RETRY_DELAY, RetryPolicy};

use queue::{EmitLimits, Next};
use worker::{EmitRequest, Jobs, PumpSignal};

/// What happened in one attempt, as told to an observer
/// ([`DispatcherBuilder::on_attempt`]). Carries ids, never secrets or bodies.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct AttemptReport<'a> {
    /// The event (the `webhook-id`).
    pub event_id: &'a str,
    /// The endpoint.
    pub endpoint_id: &'a str,
    /// The organization.
    pub org: &'a str,
    /// Attempt number, 1-based.
    pub attempt: u32,
    /// The receiver's status code, if it answered.
    pub status: Option<u16>,
    /// Why it failed, if it did.
    pub error: Option<AttemptError>,
    outcome: Next,
}

impl AttemptReport<'_> {
    /// The delivery succeeded.
    pub fn delivered(&self) -> bool {
        self.outcome == Next::Delivered
    }

    /// When the next attempt is due, if the delivery will be retried.
    pub fn retry_at(&self) -> Option<SystemTime> {
        match self.outcome {
            Next::RetryAt(at) => Some(from_ms(at)),
            _ => None,
        }
    }

    /// The delivery failed for good (schedule used up, or 410 Gone).
    pub fn failed(&self) -> bool {
        matches!(self.outcome, Next::Failed | Next::Gone)
    }

    /// The receiver answered 410 Gone and the endpoint was disabled.
    pub fn endpoint_disabled(&self) -> bool {
        self.outcome == Next::Gone
    }
}

use hooks::{Hooks, NoticeHook, Observer};

/// How far back [`Dispatcher::recover`] and [`Dispatcher::replay_missing`] reach.
pub const MAX_RECOVERY_WINDOW: Duration = Duration::from_secs(14 * 24 * 3600);

/// The most events one [`Dispatcher::replay_missing`] call queues.
pub const MAX_REPLAY: usize = 10_000;

/// `since` in ms, if it is neither in the future nor beyond the window.
fn check_recovery_window(since: SystemTime) -> Result<i64> {
    let now = SystemTime::now();
    if since > now {
        return Err(Error::invalid("since", "must not be in the future"));
    }
    if now.duration_since(since).unwrap_or_default() > MAX_RECOVERY_WINDOW {
        return Err(Error::invalid("since", "may be at most 14 days back"));
    }
    Ok(crate::db::to_ms(since))
}

/// An operational notice for the host ([`DispatcherBuilder::on_notice`]):
/// things an operator or the endpoint's owner should hear about.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Notice {
    /// keyhook disabled an endpoint; its pending deliveries are kept.
    /// [`WebhookRegistry::enable`] brings it back.
    EndpointDisabled {
        /// The organization.
        org: String,
        /// The endpoint.
        endpoint_id: String,
        /// Why.
        reason: DisableReason,
    },
    /// A delivery used up its retry schedule and is marked failed.
    DeliveryExhausted {
        /// The organization.
        org: String,
        /// The endpoint.
        endpoint_id: String,
        /// The event that was not delivered.
        event_id: String,
        /// Attempts made.
        attempts: u32,
    },
    /// An endpoint that was failing succeeded again.
    EndpointRecovered {
        /// The organization.
        org: String,
        /// The endpoint.
        endpoint_id: String,
        /// When its failures began.
        failing_since: Option<SystemTime>,
    },
}

/// Why keyhook disabled an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisableReason {
    /// The receiver answered 410 Gone.
    Gone,
    /// Every attempt has failed since this time, for longer than the
    /// auto-disable period.
    FailingSince(SystemTime),
}

/// Settings for a [`Dispatcher`]; start with [`Dispatcher::builder`].
pub struct DispatcherBuilder {
    db: Database,
    policy: DestinationPolicy,
    config: Config,
    workers: usize,
    observer: Option<Observer>,
    notices: Option<NoticeHook>,
}

impl std::fmt::Debug for DispatcherBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DispatcherBuilder")
            .field("workers", &self.workers)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub request_timeout: Duration,
    pub retry: RetryPolicy,
    pub max_body: usize,
    pub response_excerpt_limit: usize,
    pub limited_in_flight: u32,
    pub poll_interval: Duration,
    pub auto_disable_after: Option<Duration>,
    pub retention: Option<Duration>,
    pub retention_interval: Duration,
}

/// The longest request timeout and poll interval accepted.
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// The longest auto-disable period and retention interval accepted.
const MAX_PERIOD: Duration = Duration::from_secs(365 * 24 * 3600);
/// The longest retention accepted.
const MAX_RETENTION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

impl Config {
    /// Refuses absurd durations, which could only be mistakes and would
    /// overflow time arithmetic on the dispatcher's threads.
    fn check(&self) -> Result<()> {
        fn within(field: &'static str, d: Duration, max: Duration, what: &str) -> Result<()> {
            if d > max {
                return Err(Error::invalid(
                    field,
                    format!("{d:?} is beyond the limit of {what}"),
                ));
            }
            Ok(())
        }
        if self.request_timeout.is_zero() {
            return Err(Error::invalid("request_timeout", "must be more than zero"));
        }
        within(
            "request_timeout",
            self.request_timeout,
            MAX_TIMEOUT,
            "one hour",
        )?;
        within("poll_interval", self.poll_interval, MAX_TIMEOUT, "one hour")?;
        self.retry
            .check()
            .map_err(|reason| Error::invalid("retry_policy", reason))?;
        if let Some(period) = self.auto_disable_after {
            within("auto_disable_after", period, MAX_PERIOD, "365 days")?;
        }
        if let Some(age) = self.retention {
            within("retention", age, MAX_RETENTION, "10 years")?;
        }
        within(
            "retention_interval",
            self.retention_interval,
            MAX_PERIOD,
            "365 days",
        )
    }
}

impl DispatcherBuilder {
    /// Worker threads making attempts. Default: 4. Zero makes an emit-only
    /// dispatcher (another process delivers).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// Total time for one attempt: connect, send, and the full answer.
    /// Default: 10 seconds.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.config.request_timeout = timeout;
        self
    }

    /// The retry schedule. Default: [`RetryPolicy::default`].
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.config.retry = policy;
        self
    }

    /// The largest serialized event accepted by emit. Default: 256 KiB.
    pub fn max_body_bytes(mut self, limit: usize) -> Self {
        self.config.max_body = limit;
        self
    }

    /// How much of each response body is kept in the history. Default: 4 KiB.
    pub fn response_excerpt_bytes(mut self, limit: usize) -> Self {
        self.config.response_excerpt_limit = limit;
        self
    }

    /// Attempts in flight at once to an endpoint that failed recently or has
    /// not yet succeeded. Healthy endpoints may use every worker. Default: 1.
    pub fn limited_in_flight(mut self, n: u32) -> Self {
        self.config.limited_in_flight = n.max(1);
        self
    }

    /// The longest an idle dispatcher sleeps before looking for work it was
    /// not told about. Default: 1 second. Commits by other connections
    /// (another process, [`Dispatcher::emit_in`] without
    /// [`Dispatcher::wake`]) are noticed sooner: an idle dispatcher checks
    /// SQLite's `data_version` every 50 ms.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.config.poll_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// The destination policy enforced at connect time on every resolved
    /// address. Default: the registry's policy.
    pub fn destination_policy(mut self, policy: DestinationPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Disables an endpoint whose deliveries have all failed, with no
    /// success, for this long (counted from the first failure); its pending
    /// deliveries are kept. `None` never does. Default: 5 days.
    pub fn auto_disable_after(mut self, period: Option<Duration>) -> Self {
        self.config.auto_disable_after = period;
        self
    }

    /// Delivered and failed deliveries (with their attempts) and their
    /// events are purged once older than this, by a background thread of
    /// the dispatcher; pending deliveries never are. `None` keeps
    /// everything ([`Dispatcher::purge`] still works). Default: 30 days.
    pub fn retention(mut self, age: Option<Duration>) -> Self {
        self.config.retention = age;
        self
    }

    /// How often the retention purge runs. Default: every hour.
    pub fn retention_interval(mut self, interval: Duration) -> Self {
        self.config.retention_interval = interval.max(Duration::from_millis(10));
        self
    }

    /// Calls `hook` with each operational [`Notice`] (endpoint disabled,
    /// delivery exhausted, endpoint recovered) once the change is committed
    /// and on disk.
    ///
    /// Callbacks (this one and [`on_attempt`](Self::on_attempt)'s) run in
    /// order on a thread of their own, so a slow or blocking callback never
    /// holds up deliveries or emits, and a callback may emit. Keep them
    /// quick all the same: calls queue up behind a slow one (past 10,000
    /// queued, further calls are dropped and counted in the log), and
    /// [`Dispatcher::shutdown`] waits for the queue. A callback that panics
    /// is logged; the next calls still happen. With `.workers(0)` there is
    /// no such thread: notices from [`Dispatcher::redeliver`] are told on
    /// the calling thread.
    pub fn on_notice(mut self, hook: impl Fn(&Notice) + Send + Sync + 'static) -> Self {
        self.notices = Some(Arc::new(hook));
        self
    }

    /// Calls `observer` after every attempt is recorded (committed; on disk
    /// with the next sync), on the callbacks thread described at
    /// [`on_notice`](Self::on_notice).
    pub fn on_attempt(
        mut self,
        observer: impl Fn(&AttemptReport<'_>) + Send + Sync + 'static,
    ) -> Self {
        self.observer = Some(Arc::new(observer));
        self
    }

    /// Starts the workers. Deliveries left from before (pending, due, or
    /// leased by a process that died) are picked up.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if a thread cannot be spawned (the ones started are stopped).
    pub fn start(self) -> Result<Dispatcher> {
        self.config.check()?;
        let timeout = self.config.request_timeout;
        // The lease outlasts the request timeout with room to record the
        // result, so a slow receiver is never sent a duplicate meanwhile.
        let lease_ms = duration_ms(timeout).saturating_mul(2).saturating_add(1000);
        let shared = Arc::new(Shared {
            agent: http::agent(self.policy, timeout, self.workers.max(1)),
            db: self.db.clone(),
            lease_ms,
            config: self.config,
            pump: PumpSignal::default(),
            jobs: Jobs::default(),
            hooks: Hooks::new(self.db, self.observer, self.notices),
            failure: Mutex::new(None),
        });
        let dispatcher = Dispatcher {
            shared: Arc::clone(&shared),
            threads: Mutex::new(Vec::new()),
        };
        if self.workers == 0 {
            return Ok(dispatcher);
        }
        // What a crash left due for disabled endpoints, parked again.
        if let Err(e) = queue::park_stale(&shared.db) {
            log::warn!("keyhook: could not park disabled endpoints' deliveries: {e}");
        }
        let workers = self.workers;
        // Every thread reports a panic that escapes it: the dispatcher
        // stops, and says why (health, shutdown, the log).
        let spawn = |name: String, f: Box<dyn FnOnce() + Send>| {
            let shared = Arc::clone(&shared);
            let thread = name.clone();
            std::thread::Builder::new().name(name).spawn(move || {
                if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
                    shared.failed(thread, worker::panic_message(panic.as_ref()));
                }
            })
        };
        if let Some(callbacks) = shared.hooks.start()? {
            dispatcher.lock_threads().push(callbacks);
        }
        let pump = {
            let shared = Arc::clone(&shared);
            spawn(
                "keyhook-pump".into(),
                Box::new(move || worker::run_pump(shared, workers)),
            )?
        };
        dispatcher.lock_threads().push(pump);
        if shared.config.retention.is_some() {
            let shared = Arc::clone(&shared);
            let maintenance = spawn(
                "keyhook-maintenance".into(),
                Box::new(move || worker::run_maintenance(shared)),
            )?;
            dispatcher.lock_threads().push(maintenance);
        }
        for i in 0..workers {
            let shared = Arc::clone(&shared);
            match spawn(
                format!("keyhook-worker-{i}"),
                Box::new(move || worker::run_worker(shared)),
            ) {
                Ok(h) => dispatcher.lock_threads().push(h),
                Err(e) => {
                    let _ = dispatcher.shutdown(Duration::from_secs(1));
                    return Err(e.into());
                }
            }
        }
        Ok(dispatcher)
    }
}

/// State shared by the dispatcher handle and its threads.
pub(crate) struct Shared {
    pub db: Database,
    pub agent: ureq::Agent,
    pub config: Config,
    pub lease_ms: i64,
    pub pump: PumpSignal,
    pub jobs: Jobs,
    pub hooks: Hooks,
    /// The first thread that died of a panic, and why.
    failure: Mutex<Option<(String, String)>>,
}

impl Shared {
    /// A thread died of a panic: remember the first, stop the others, say so.
    fn failed(&self, thread: String, cause: String) {
        let first = {
            let mut failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
            let first = failure.is_none();
            if first {
                *failure = Some((thread.clone(), cause.clone()));
            }
            first
        };
        self.pump.stop();
        self.jobs.close();
        if first {
            worker::contained(|| {
                log::error!(
                    "keyhook: dispatcher thread {thread} panicked and stopped: {cause}; the dispatcher no longer delivers (emits are still stored)"
                )
            });
        }
    }

    pub fn has_failed(&self) -> bool {
        self.failure().is_some()
    }

    fn failure(&self) -> Option<(String, String)> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stores events in a transaction of their own (synced) and wakes the
    /// pump.
    pub fn write_events(&self, org: &str, events: &[NewEvent]) -> Result<Vec<queue::Emitted>> {
        let limits = self.emit_limits();
        if let [event] = events
            && let Some(emitted) = queue::insert_event_alone(&self.db, org, event, &limits)
        {
            let emitted = emitted?;
            if emitted.deliveries > 0 {
                self.pump.emitted();
            }
            return Ok(vec![emitted]);
        }
        let write = || {
            self.db
                .write_concurrent(|tx| queue::insert_events(tx, org, events, &limits))
        };
        let emitted = match write() {
            // Two processes (or threads, on PostgreSQL) emitted with the same
            // idempotency key at once: the other one's event stands; this
            // emit, written again, finds it.
            Err(e) if e.is_unique_violation() => write()?,
            other => other?,
        };
        if emitted.iter().any(|e| e.deliveries > 0) {
            self.pump.emitted();
        }
        Ok(emitted)
    }

    pub fn emit_limits(&self) -> EmitLimits {
        EmitLimits {
            max_body: self.config.max_body,
            first_delay_ms: duration_ms(self.config.retry.first_delay()),
        }
    }

    pub fn health_policy(&self) -> queue::HealthPolicy {
        queue::HealthPolicy {
            auto_disable_after_ms: self.config.auto_disable_after.map(duration_ms),
        }
    }

    /// Logs `notices` and tells the hook, once `commit` is on disk.
    pub fn notify(&self, notices: &[Notice], commit: CommitMark) {
        for n in notices {
            match n {
                Notice::EndpointDisabled {
                    endpoint_id,
                    reason,
                    ..
                } => log::warn!("keyhook: endpoint {endpoint_id} disabled: {reason:?}"),
                Notice::DeliveryExhausted {
                    endpoint_id,
                    event_id,
                    attempts,
                    ..
                } => log::warn!(
                    "keyhook: delivery of {event_id} to {endpoint_id} failed for good after {attempts} attempts"
                ),
                Notice::EndpointRecovered { endpoint_id, .. } => {
                    log::info!("keyhook: endpoint {endpoint_id} recovered")
                }
            }
            self.hooks.notice(n, commit);
        }
    }
}

/// Stores events durably and delivers them as signed webhooks.
///
/// `Send + Sync`: share it (for example in an `Arc`) between request
/// handlers. It owns its worker threads: [`shutdown`](Self::shutdown) stops
/// and joins them; dropping it asks them to stop after their current attempt.
pub struct Dispatcher {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("workers", &self.lock_threads().len())
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl Dispatcher {
    /// Settings for a dispatcher delivering to `registry`'s endpoints.
    pub fn builder(db: &Database, registry: &WebhookRegistry) -> DispatcherBuilder {
        DispatcherBuilder {
            db: db.clone(),
            policy: registry.destination_policy().clone(),
            config: Config {
                request_timeout: Duration::from_secs(10),
                retry: RetryPolicy::default(),
                max_body: 256 * 1024,
                response_excerpt_limit: 4096,
                limited_in_flight: 1,
                poll_interval: Duration::from_secs(1),
                auto_disable_after: Some(Duration::from_secs(5 * 24 * 3600)),
                retention: Some(Duration::from_secs(30 * 24 * 3600)),
                retention_interval: Duration::from_secs(3600),
            },
            workers: 4,
            observer: None,
            notices: None,
        }
    }

    fn lock_threads(&self) -> std::sync::MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.threads.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Emits an event: stores it and one delivery per enabled endpoint of
    /// `org` subscribed to `event_type`, in one transaction, and returns
    /// once that is on disk (under [`Durability::Full`](crate::Durability)).
    /// Returns the event id (the `webhook-id` receivers see). With no
    /// subscribed endpoint the event is still recorded.
    ///
    /// While the dispatcher runs, its pump thread writes the emit: events
    /// emitted concurrently share one transaction and one disk sync with the
    /// pump's own bookkeeping, each in its own savepoint (one caller's bad
    /// event fails only that caller), and their deliveries are claimed in
    /// the same transaction, so workers start at once. Without running
    /// threads (`.workers(0)`, or after [`shutdown`](Self::shutdown)) the
    /// calling thread writes it.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownEventType`] if the type is not in the catalogue;
    /// [`Error::PayloadTooLarge`] over the size limit; [`Error::Serialize`]
    /// if `data` is not JSON-serializable; nothing is stored then.
    /// [`Error::Io`] if the commit could not be synced to disk: it stands,
    /// but might not survive power loss.
    pub fn emit(
        &self,
        org: &str,
        event_type: &str,
        data: &impl serde::Serialize,
    ) -> Result<String> {
        self.emit_event(org, NewEvent::new(event_type, data)?)
    }

    /// Emits a [`NewEvent`] (use it for an idempotency key).
    ///
    /// # Errors
    ///
    /// As [`emit`](Self::emit); [`Error::InvalidInput`] (`idempotency_key`).
    pub fn emit_event(&self, org: &str, event: NewEvent) -> Result<String> {
        let mut ids = self.emit_batch(org, vec![event])?;
        Ok(ids.pop().expect("one id per event"))
    }

    /// Emits many events in one transaction: all are stored or none.
    ///
    /// # Errors
    ///
    /// As [`emit_event`](Self::emit_event), for the first bad event.
    pub fn emit_batch(&self, org: &str, events: Vec<NewEvent>) -> Result<Vec<String>> {
        self.check_events(org, &events)?;
        let emitted = if worker::on_pump_thread() || self.shared.db.concurrent_writes() {
            // Host code reached from a pump (a logger, say) must not wait
            // for a pump. On PostgreSQL emits are their own transactions,
            // side by side: the server commits them together, and a pump
            // would only make them take turns.
            self.shared.write_events(org, &events)?
        } else {
            self.emit_through_pump(org, events)?
        };
        Ok(emitted.into_iter().map(|e| e.id).collect())
    }

    /// While the pump runs it commits emits together with its own step (one
    /// commit, and the new deliveries are claimed in it). If it does not
    /// run, or stops before committing this request, the events are written
    /// here.
    fn emit_through_pump(&self, org: &str, events: Vec<NewEvent>) -> Result<Vec<queue::Emitted>> {
        let events = Arc::new(events);
        let (reply, result) = mpsc::sync_channel(1);
        let request = EmitRequest {
            org: org.to_owned(),
            events: Arc::clone(&events),
            reply,
        };
        if self.shared.pump.submit(request).is_err() {
            return self.shared.write_events(org, &events);
        }
        match result.recv() {
            Ok(committed) => {
                let (emitted, commit) = committed?;
                // On disk before the caller hears of it.
                self.shared.db.sync(commit)?;
                Ok(emitted)
            }
            Err(mpsc::RecvError) => self.shared.write_events(org, &events),
        }
    }

    /// Emits events inside the host's own transaction on the same SQLite
    /// file (the outbox pattern): they exist if and only if `tx` commits.
    /// Call [`wake`](Self::wake) after the commit so workers start at once
    /// (otherwise an idle dispatcher notices the commit within about 50 ms).
    ///
    /// `tx` must be on a connection to the file this dispatcher uses, opened
    /// with this crate's re-exported [`rusqlite`](crate::rusqlite).
    ///
    /// # Errors
    ///
    /// As [`emit_batch`](Self::emit_batch); on error, nothing of it is in
    /// `tx` (a savepoint is rolled back) and the host may still commit.
    pub fn emit_in(
        &self,
        tx: &rusqlite::Transaction<'_>,
        org: &str,
        events: Vec<NewEvent>,
    ) -> Result<Vec<String>> {
        self.check_events(org, &events)?;
        let limits = self.shared.emit_limits();
        let emitted = queue::in_savepoint(crate::sql::Sql::Lite(tx), |tx| {
            queue::insert_events(tx, org, &events, &limits)
        })??;
        Ok(emitted.into_iter().map(|e| e.id).collect())
    }

    /// Emits events inside the host's own PostgreSQL transaction (the
    /// outbox pattern; feature `postgres`): they exist if and only if `tx`
    /// commits, and dispatchers of every process are woken when it does.
    /// `tx` must be on the database this dispatcher uses (any connection:
    /// keyhook's schema is set for its own statements and the
    /// transaction's `search_path` put back after).
    ///
    /// # Errors
    ///
    /// As [`emit_batch`](Self::emit_batch); on error, nothing of it is in
    /// `tx` (a savepoint is rolled back) and the host may still commit.
    /// [`Error::InvalidInput`] (`tx`) if this dispatcher's database is SQLite.
    #[cfg(feature = "postgres")]
    pub fn emit_in_postgres(
        &self,
        tx: &mut postgres::Transaction<'_>,
        org: &str,
        events: Vec<NewEvent>,
    ) -> Result<Vec<String>> {
        let Some(pool) = self.shared.db.pg() else {
            return Err(Error::invalid(
                "tx",
                "this dispatcher's database is SQLite: use emit_in",
            ));
        };
        self.check_events(org, &events)?;
        let limits = self.shared.emit_limits();
        let host_path: String = tx
            .query_one("SELECT current_setting('search_path')", &[])?
            .get(0);
        tx.execute(
            "SELECT set_config('search_path', $1, true)",
            &[&pool.target.schema],
        )?;
        let host = std::cell::RefCell::new(crate::pg::HostTx {
            tx: &mut *tx,
            notify: pool.host_notify.clone(),
        });
        let emit = || {
            queue::in_savepoint(crate::sql::Sql::Pg(&host), |sql| {
                queue::insert_events(sql, org, &events, &limits)
            })
        };
        let emitted = match emit() {
            // Another transaction with the same idempotency key committed
            // while this one waited on it: rolled back to the savepoint,
            // the emit now finds that event.
            Ok(Err(e)) if e.is_unique_violation() => emit(),
            other => other,
        };
        drop(host);
        tx.execute("SELECT set_config('search_path', $1, true)", &[&host_path])?;
        Ok(emitted??.into_iter().map(|e| e.id).collect())
    }

    /// Tells the workers that new work was committed outside
    /// [`emit`](Self::emit) (after [`emit_in`](Self::emit_in)'s transaction),
    /// so they start at once rather than within about 50 ms.
    pub fn wake(&self) {
        self.shared.pump.emitted();
    }

    /// A page of an endpoint's delivery history, newest first, each
    /// delivery with its attempts. Follow `next_cursor` for older pages.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] if the organization has no such endpoint;
    /// [`Error::InvalidInput`] for a cursor that was altered or belongs to
    /// other filters (`cursor`), a reversed range (`since`), a range over
    /// [`MAX_HISTORY_RANGE`] (`until`), or a bad page size (`limit`).
    pub fn history(
        &self,
        org: &str,
        endpoint_id: &str,
        query: &HistoryQuery,
    ) -> Result<HistoryPage> {
        history::history(&self.shared.db, org, Some(endpoint_id), query)
    }

    /// A page of the organization's delivery log across all its endpoints,
    /// newest first, with the same filters and paging as
    /// [`history`](Self::history).
    ///
    /// # Errors
    ///
    /// As [`history`](Self::history), without [`Error::NotFound`].
    pub fn org_history(&self, org: &str, query: &HistoryQuery) -> Result<HistoryPage> {
        validate::org(org)?;
        history::history(&self.shared.db, org, None, query)
    }

    /// A page of the organization's event log: the events it emitted (test
    /// events included, marked), newest first, filtered by type and time.
    /// Follow `next_cursor` for older pages; a page costs its own rows
    /// however deep.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a cursor that was altered or belongs to
    /// other filters (`cursor`), a reversed range (`since`), a range over
    /// [`MAX_HISTORY_RANGE`] (`until`), or a bad page size (`limit`).
    pub fn events(&self, org: &str, query: &EventQuery) -> Result<EventPage> {
        validate::org(org)?;
        history::events(&self.shared.db, org, query)
    }

    /// One event with its body (the payload receivers get) and its delivery
    /// to each endpoint, each with its attempts.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] if the organization has no such event.
    pub fn event(&self, org: &str, event_id: &str) -> Result<EventDetail> {
        history::event(&self.shared.db, org, event_id)
    }

    /// Sends a test event to one endpoint only (a settings page's "Send test
    /// event" button): stored, signed and delivered like any other event,
    /// with its own `webhook-id`, shown in that endpoint's history and in
    /// the event log marked as a test, and never delivered to any other
    /// endpoint. `data` is the event's `data`; without it, the type's
    /// example payload ([`EventTypeUpdate::example`](crate::EventTypeUpdate))
    /// is sent, or `{}` if the type has none. Returns the event id.
    ///
    /// The endpoint need not subscribe to the type, but must be enabled.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] for an endpoint the organization does not have;
    /// [`Error::InvalidState`] if it is disabled or the type is archived;
    /// [`Error::UnknownEventType`]; [`Error::PayloadTooLarge`]. Nothing is
    /// stored then.
    pub fn send_test_event(
        &self,
        org: &str,
        endpoint_id: &str,
        event_type: &str,
        data: Option<&serde_json::Value>,
    ) -> Result<String> {
        validate::org(org)?;
        let given = data
            .map(|d| serde_json::to_vec(d).map_err(Error::Serialize))
            .transpose()?;
        let limits = self.shared.emit_limits();
        let id = self.shared.db.write(|tx| {
            let row = history::enabled_endpoint_row(tx, org, endpoint_id)?;
            let data = match given {
                Some(d) => d,
                None => {
                    let example = crate::registry::event_type(tx, event_type)?.example;
                    serde_json::to_vec(&example.unwrap_or_else(|| serde_json::json!({})))
                        .map_err(Error::Serialize)?
                }
            };
            queue::insert_test_event(tx, org, row, event_type, &data, &limits)
        })?;
        self.wake();
        Ok(id)
    }

    /// Delivers to an endpoint what it missed: every event of its
    /// organization since `since` (at most [`MAX_RECOVERY_WINDOW`] back)
    /// that the endpoint is subscribed to now and never got a delivery of:
    /// events emitted while it was disabled, or before it subscribed to
    /// their type. Svix calls this "replay missing". At most
    /// [`MAX_REPLAY`] are queued per call, oldest first (call again for
    /// more); test events are not replayed. Returns how many were queued.
    ///
    /// Use it after [`WebhookRegistry::enable`], with the `missed_since` it
    /// returns. Failed deliveries are [`recover`](Self::recover)'s job. The
    /// organization's events are scanned in small transactions, so emits
    /// never wait long behind it. Events older than the dispatcher's
    /// retention are not replayed (their other deliveries may have been
    /// purged); after a manual [`purge`](Self::purge) with a shorter age,
    /// pass a `since` within it.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] (`since`) if `since` is in the future or more
    /// than 14 days back; [`Error::NotFound`]; [`Error::InvalidState`] if
    /// the endpoint is disabled (enable it first).
    pub fn replay_missing(&self, org: &str, endpoint_id: &str, since: SystemTime) -> Result<usize> {
        let mut since = check_recovery_window(since)?;
        // Retention may have purged older deliveries of events it kept (for
        // another endpoint's pending delivery): those must not look missed.
        if let Some(age) = self.shared.config.retention {
            since = since.max(crate::db::now_ms().saturating_sub(duration_ms(age)));
        }
        let row = self
            .shared
            .db
            .read(|c| history::enabled_endpoint_row(c, org, endpoint_id))?;
        let n = queue::replay_missing(&self.shared.db, org, row, since, MAX_REPLAY)?;
        if n > 0 {
            self.wake();
        }
        Ok(n)
    }

    /// The newest `limit` deliveries of an endpoint (at most
    /// [`MAX_PAGE_SIZE`]); [`history`](Self::history) pages and filters.
    ///
    /// # Errors
    ///
    /// As [`history`](Self::history).
    pub fn deliveries(&self, org: &str, endpoint_id: &str, limit: usize) -> Result<Vec<Delivery>> {
        let query = HistoryQuery {
            limit: limit.clamp(1, MAX_PAGE_SIZE),
            ..HistoryQuery::default()
        };
        Ok(self.history(org, endpoint_id, &query)?.deliveries)
    }

    /// The deliveries of one event, each with its attempts.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] if the organization has no such event.
    pub fn event_deliveries(&self, org: &str, event_id: &str) -> Result<Vec<Delivery>> {
        history::event_deliveries(&self.shared.db, org, event_id)
    }

    /// One delivery with its attempts.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] if the organization has no such delivery.
    pub fn delivery(&self, org: &str, delivery_id: &str) -> Result<Delivery> {
        self.shared
            .db
            .read(|c| history::delivery(c, org, delivery_id))
    }

    /// Sends one delivery again now, on the calling thread (a manual
    /// attempt, outside the retry schedule, recorded as manual), whatever
    /// its state. Success marks it delivered; failure leaves its schedule
    /// as it was. Returns the attempt.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] if the organization has no such delivery.
    pub fn redeliver(&self, org: &str, delivery_id: &str) -> Result<Attempt> {
        let (row, claimed) = self.shared.db.read(|c| {
            let row = history::delivery_row(c, org, delivery_id)?;
            Ok((row, queue::load_manual(c, org, row)?))
        })?;
        let claimed = claimed.ok_or_else(|| Error::not_found("delivery", delivery_id))?;
        // What was read may be committed but not yet on disk.
        self.shared.db.sync_now()?;
        let response = worker::deliver(&self.shared, &claimed);
        let next = if response.is_success() {
            Next::Delivered
        } else if response.is_gone() {
            Next::Gone
        } else {
            Next::Failed
        };
        let completion = queue::Completion {
            claimed,
            response,
            next,
            manual: true,
        };
        let recorded =
            queue::record_manual(&self.shared.db, &completion, &self.shared.health_policy())?;
        // Recorded with a synced write.
        self.shared.notify(&recorded.notices, CommitMark::default());
        let attempts = self.shared.db.read(|c| history::attempts(c, row))?;
        attempts
            .into_iter()
            .rev()
            .find(|a| a.manual)
            .ok_or_else(|| Error::not_found("delivery", delivery_id))
    }

    /// Recovers what an endpoint missed: every failed delivery to it
    /// created since `since` (at most [`MAX_RECOVERY_WINDOW`] back) is queued
    /// again, due now, with a fresh retry schedule. Returns how many.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] (`since`) if `since` is in the future or more
    /// than 14 days back; [`Error::NotFound`].
    pub fn recover(&self, org: &str, endpoint_id: &str, since: SystemTime) -> Result<usize> {
        let since = check_recovery_window(since)?;
        let row = self
            .shared
            .db
            .read(|c| history::endpoint_row(c, org, endpoint_id))?;
        let n = queue::recover(&self.shared.db, row, since)?;
        if n > 0 {
            self.wake();
        }
        Ok(n)
    }

    /// Purges delivered and failed deliveries (with their attempts) and
    /// their events created more than `older_than` ago, in small
    /// transactions so emits never wait long. Pending deliveries stay.
    ///
    /// # Errors
    ///
    /// [`Error::Database`]; what was purged before the error stays purged.
    pub fn purge(&self, older_than: Duration) -> Result<PurgeReport> {
        let cutoff = crate::db::now_ms().saturating_sub(duration_ms(older_than));
        queue::purge(&self.shared.db, cutoff, &|| false)
    }

    /// Counts by state and the success rate of the last 24 hours, for a dashboard.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`].
    pub fn endpoint_stats(&self, org: &str, endpoint_id: &str) -> Result<EndpointStats> {
        history::endpoint_stats(&self.shared.db, org, endpoint_id)
    }

    /// Pending deliveries of the organization, across its endpoints.
    ///
    /// # Errors
    ///
    /// [`Error::Database`].
    pub fn backlog(&self, org: &str) -> Result<u64> {
        history::org_backlog(&self.shared.db, org)
    }

    fn check_events(&self, org: &str, events: &[NewEvent]) -> Result<()> {
        validate::org(org)?;
        for e in events {
            if let Some(k) = &e.idempotency_key
                && (k.is_empty() || k.len() > 255 || k.chars().any(char::is_control))
            {
                return Err(Error::invalid(
                    "idempotency_key",
                    "must be 1 to 255 bytes without control characters",
                ));
            }
        }
        Ok(())
    }

    /// Whether the dispatcher delivers: [`Running`](DispatcherHealth::Running),
    /// [`Stopped`](DispatcherHealth::Stopped) by [`shutdown`](Self::shutdown)
    /// (or never started: zero workers), or
    /// [`Failed`](DispatcherHealth::Failed) because one of its threads
    /// panicked outside an attempt. A host can poll it from a health check.
    pub fn health(&self) -> DispatcherHealth {
        if let Some((thread, cause)) = self.shared.failure() {
            return DispatcherHealth::Failed { thread, cause };
        }
        if self.shared.db.sync_failed() {
            return DispatcherHealth::DatabaseFailed {
                cause: "a sync of the database to disk failed; every write is refused until the database is opened again".into(),
            };
        }
        let threads = self.lock_threads();
        if threads.is_empty() || self.shared.pump.lock().stopping {
            DispatcherHealth::Stopped
        } else {
            DispatcherHealth::Running
        }
    }

    /// Stops claiming work, lets attempts in flight finish within `timeout`,
    /// and joins the threads. What is left is delivered after the next
    /// start. Calling it twice is harmless. It returns within `timeout`
    /// (give or take a few milliseconds), whatever the threads do.
    ///
    /// # Errors
    ///
    /// [`Error::DispatcherFailed`] if a thread had panicked (outside an
    /// attempt: those are contained and recorded), so the dispatcher was
    /// not delivering; [`Error::ShutdownTimedOut`] if some threads were
    /// still in an attempt (or making queued callback calls) at the
    /// deadline; they stop on their own after it.
    pub fn shutdown(&self, timeout: Duration) -> Result<()> {
        self.shared.pump.stop();
        let deadline = Instant::now() + timeout;
        // Taken out of the mutex while waiting, so that health() and a
        // concurrent shutdown do not wait on it.
        let threads = std::mem::take(&mut *self.lock_threads());
        while threads.iter().any(|t| !t.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let (finished, unfinished): (Vec<_>, Vec<_>) =
            threads.into_iter().partition(|t| t.is_finished());
        for t in finished {
            // A panic was caught in the thread and recorded: it ends cleanly.
            let _ = t.join();
        }
        let unfinished_count = unfinished.len();
        // Keep the handles: a later shutdown can still join them.
        self.lock_threads().extend(unfinished);
        if let Some((thread, cause)) = self.shared.failure() {
            return Err(Error::DispatcherFailed { thread, cause });
        }
        if unfinished_count > 0 {
            return Err(Error::ShutdownTimedOut {
                unfinished: unfinished_count,
            });
        }
        Ok(())
    }
}

/// Whether a [`Dispatcher`] delivers ([`Dispatcher::health`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DispatcherHealth {
    /// Its threads run.
    Running,
    /// Shut down (or dropped), or started with zero workers.
    Stopped,
    /// A thread panicked outside any one attempt; the dispatcher stopped
    /// delivering. Emits are still stored; a new dispatcher delivers them.
    Failed {
        /// The thread's name, e.g. `keyhook-pump`.
        thread: String,
        /// Its panic message.
        cause: String,
    },
    /// A sync of the database to disk failed: every write is refused
    /// (emits included) until the database is opened again.
    DatabaseFailed {
        /// What failed.
        cause: String,
    },
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        self.shared.pump.stop();
    }
}
