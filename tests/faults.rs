//! Delivery under faults: a write lock held by another connection, endpoints
//! deleted or disabled mid-attempt, leases that look expired (as after a
//! wall-clock step), hanging new endpoints, retention in short-lived
//! processes, absurd durations. Real SQLite files, real HTTP on 127.0.0.1.
//!
//! Each test counts requests per `webhook-id` at the receiver: keyhook must
//! never cause a duplicate while the receiver is healthy.

mod common;
#[path = "common/receiver.rs"]
mod receiver;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{
    TempDb, builder, endpoint, endpoint_ids, loopback_registry, schedule, set_enabled, wait_until,
};
use keyhook::{Database, DeliveryState, Dispatcher, Error, NewEvent, RetryPolicy, WebhookRegistry};
use receiver::{Receiver, Reply};
use serde_json::json;

const TYPE: &str = "conversion.created";
const ORG: &str = "org_faults";
const WAIT: Duration = Duration::from_secs(30);

/// A database on the engine under test whose writers give up after
/// `busy`, and a loopback registry with the event type.
fn setup(busy: Duration) -> (TempDb, Database, WebhookRegistry) {
    setup_on(TempDb::new(), busy)
}

/// [`setup`] on a SQLite file whatever the engine under test, for faults
/// of SQLite itself (its file, its write lock held by another connection).
fn setup_sqlite(busy: Duration) -> (TempDb, Database, WebhookRegistry) {
    setup_on(TempDb::sqlite(), busy)
}

fn setup_on(t: TempDb, busy: Duration) -> (TempDb, Database, WebhookRegistry) {
    let db = t.reopen_with(Database::builder().busy_timeout(busy));
    let registry = loopback_registry(&db);
    registry
        .register_event_type(TYPE, "A fault test event")
        .unwrap();
    (t, db, registry)
}

/// Requests per `webhook-id` seen by `rx`.
fn per_id(rx: &Receiver) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for r in rx.received() {
        *counts
            .entry(r.header("webhook-id").unwrap().to_owned())
            .or_insert(0) += 1;
    }
    counts
}

/// Takes SQLite's write lock on `path` from a connection of its own (as
/// another process would) and holds it for `hold`.
fn hold_write_lock(path: &std::path::Path, hold: Duration) {
    let mut conn = rusqlite::Connection::open(path).unwrap();
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .unwrap();
    std::thread::sleep(hold);
    tx.rollback().unwrap();
}

/// Waits until the first delivery of event `id` is delivered.
#[track_caller]
fn wait_delivered(d: &Dispatcher, id: &str) {
    assert!(
        wait_until(WAIT, || {
            d.event_deliveries(ORG, id).unwrap()[0].state == DeliveryState::Delivered
        }),
        "{id} not delivered"
    );
}

/// Every delivery of `ids` is delivered, with exactly one attempt recorded.
fn assert_each_delivered_once(d: &Dispatcher, ids: &[String]) {
    for id in ids {
        let deliveries = d.event_deliveries(ORG, id).unwrap();
        for delivery in deliveries {
            assert_eq!(delivery.state, DeliveryState::Delivered, "{id}");
            assert_eq!(
                delivery.attempts.len(),
                1,
                "{id}: attempts {:?}",
                delivery.attempts
            );
        }
    }
}

/// Defect 1: attempts that finish while another connection holds the write
/// lock longer than `busy_timeout` are recorded once it is released, not
/// dropped and sent again when their leases end.
#[test]
fn attempts_finished_while_the_database_is_locked_are_recorded_not_resent() {
    let (t, db, registry) = setup_sqlite(Duration::from_millis(100));
    // Each request takes 300 ms, so attempts finish while the lock is held.
    let rx = Receiver::start(|_| Reply::status(204).delay(Duration::from_millis(300)));
    endpoint(&registry, ORG, &rx.url("/hook"), &[TYPE]);
    let d = Dispatcher::builder(&db, &registry)
        .workers(4)
        // A lease of 2 × 1 s + 1 s: well inside the test's wait.
        .request_timeout(Duration::from_secs(1))
        .poll_interval(Duration::from_millis(50))
        .start()
        .unwrap();
    let ids: Vec<String> = (0..8)
        .map(|i| d.emit(ORG, TYPE, &json!({ "i": i })).unwrap())
        .collect();
    assert!(rx.wait_for(1, WAIT));
    // Every request in flight now finishes while the lock is held.
    hold_write_lock(t.path(), Duration::from_millis(1500));
    assert!(wait_until(WAIT, || {
        ids.iter()
            .all(|id| d.event_deliveries(ORG, id).unwrap()[0].state == DeliveryState::Delivered)
    }));
    // Past any lease that could have been left behind.
    std::thread::sleep(Duration::from_secs(4));
    let counts = per_id(&rx);
    assert_eq!(counts.len(), ids.len());
    assert!(
        counts.values().all(|&n| n == 1),
        "duplicates keyhook caused: {counts:?}"
    );
    assert_each_delivered_once(&d, &ids);
    d.shutdown(WAIT).unwrap();
}

/// Defect 2: deleting (or disabling) one endpoint while an attempt to it is
/// in flight affects that endpoint only. The four attempts finish while
/// another connection holds the write lock, so they are recorded together,
/// in one step, once it is released: the deleted endpoint's record must not
/// take the others with it (they would be sent again when their leases end).
fn endpoint_changed_mid_attempt(change: impl Fn(&WebhookRegistry, &str)) {
    let (t, db, registry) = setup_sqlite(Duration::from_millis(100));
    let rx = Receiver::start(|_| Reply::status(204).delay(Duration::from_millis(400)));
    let eps = endpoint_ids(
        &registry,
        ORG,
        (0..4).map(|i| rx.url(&format!("/ep{i}"))),
        &[TYPE],
    );
    let d = Dispatcher::builder(&db, &registry)
        .workers(4)
        .request_timeout(Duration::from_secs(1))
        .poll_interval(Duration::from_millis(50))
        .start()
        .unwrap();
    let id = d.emit(ORG, TYPE, &json!({})).unwrap();
    // New endpoints: one attempt each; four workers hold three of them at
    // once (one stays free for healthy endpoints).
    assert!(rx.wait_for(3, WAIT), "got {}", rx.count());
    change(&registry, &eps[0]);
    hold_write_lock(t.path(), Duration::from_millis(1200));
    assert!(wait_until(WAIT, || {
        d.event_deliveries(ORG, &id)
            .unwrap()
            .iter()
            .filter(|del| del.endpoint_id != eps[0])
            .all(|del| del.state == DeliveryState::Delivered)
    }));
    // Past every lease (3 s).
    std::thread::sleep(Duration::from_secs(4));
    let paths: Vec<String> = rx.received().iter().map(|r| r.path.clone()).collect();
    for (i, ep) in eps.iter().enumerate().skip(1) {
        let sent = paths.iter().filter(|p| **p == format!("/ep{i}")).count();
        assert_eq!(sent, 1, "endpoint {ep} got {sent} requests: {paths:?}");
    }
    for del in d.event_deliveries(ORG, &id).unwrap() {
        if del.endpoint_id != eps[0] {
            assert_eq!(del.attempts.len(), 1, "{:?}", del.attempts);
        }
    }
    d.shutdown(WAIT).unwrap();
}

#[test]
fn deleting_an_endpoint_mid_attempt_affects_only_it() {
    endpoint_changed_mid_attempt(|registry, id| registry.delete(ORG, id).unwrap());
}

#[test]
fn disabling_an_endpoint_mid_attempt_affects_only_it() {
    endpoint_changed_mid_attempt(|registry, id| set_enabled(registry, ORG, id, false));
}

/// Defect 3 (time arithmetic): absurd durations are refused when the
/// dispatcher starts, with an error naming the setting, instead of
/// overflowing `now + delay` in a worker.
#[test]
fn absurd_durations_are_refused_at_start() {
    let (t, _db, registry) = setup(Duration::from_secs(5));
    let refused = |b: keyhook::DispatcherBuilder, field: &str| match b.start() {
        Err(Error::InvalidInput { field: f, reason }) => {
            assert_eq!(f, field, "{reason}");
            assert!(!reason.is_empty());
        }
        other => panic!("expected InvalidInput {{ field: {field:?} }}, got {other:?}"),
    };
    refused(
        builder(&t, &registry).retry_policy(RetryPolicy::new([Duration::ZERO, Duration::MAX])),
        "retry_policy",
    );
    refused(
        builder(&t, &registry).retry_policy(RetryPolicy::new([
            Duration::ZERO,
            Duration::from_secs(31 * 24 * 3600),
        ])),
        "retry_policy",
    );
    refused(
        builder(&t, &registry).retry_policy(
            RetryPolicy::new([Duration::ZERO]).throttle_delay(Duration::from_secs(u64::MAX)),
        ),
        "retry_policy",
    );
    refused(
        builder(&t, &registry).request_timeout(Duration::ZERO),
        "request_timeout",
    );
    refused(
        builder(&t, &registry).request_timeout(Duration::MAX),
        "request_timeout",
    );
    refused(
        builder(&t, &registry).auto_disable_after(Some(Duration::MAX)),
        "auto_disable_after",
    );
    refused(
        builder(&t, &registry).retention(Some(Duration::MAX)),
        "retention",
    );
    refused(
        builder(&t, &registry).poll_interval(Duration::MAX),
        "poll_interval",
    );
    // The longest allowed schedule still works.
    let d = builder(&t, &registry)
        .retry_policy(RetryPolicy::new([
            Duration::ZERO,
            Duration::from_secs(30 * 24 * 3600),
        ]))
        .start()
        .unwrap();
    d.shutdown(WAIT).unwrap();
}

/// Defect 4: endpoints not known to be healthy (new ones included) share
/// the limited slots, so a healthy endpoint always has a worker: with two
/// workers and a dozen new endpoints that hang past the request timeout,
/// each of a healthy endpoint's deliveries arrives within a second.
#[test]
fn new_hanging_endpoints_leave_a_worker_for_a_healthy_one() {
    let (t, _db, registry) = setup(Duration::from_secs(5));
    let hang = Receiver::start(|_| Reply::status(204).delay(Duration::from_secs(3)));
    let healthy_rx = Receiver::ok();
    registry
        .register_event_type("healthy.ping", "For the healthy endpoint")
        .unwrap();
    let healthy = endpoint(
        &registry,
        ORG,
        &healthy_rx.url("/healthy"),
        &["healthy.ping"],
    );
    let d = builder(&t, &registry)
        .workers(2)
        .request_timeout(Duration::from_secs(2))
        .retry_policy(
            schedule(20, Duration::from_millis(100)).throttle_delay(Duration::from_millis(100)),
        )
        .start()
        .unwrap();
    // Proven healthy before the hanging endpoints exist.
    d.emit(ORG, "healthy.ping", &json!({ "warm": true }))
        .unwrap();
    assert!(healthy_rx.wait_for(1, WAIT));
    assert!(wait_until(WAIT, || {
        d.deliveries(ORG, &healthy.endpoint.id, 1).unwrap()[0].state == DeliveryState::Delivered
    }));
    for i in 0..12 {
        let org = format!("org_new{i}");
        endpoint(&registry, &org, &hang.url(&format!("/new{i}")), &[TYPE]);
        d.emit(&org, TYPE, &json!({ "i": i })).unwrap();
    }
    assert!(hang.wait_for(1, WAIT));
    let mut emitted = Vec::new();
    for i in 0..15 {
        let at = Instant::now();
        emitted.push((d.emit(ORG, "healthy.ping", &json!({ "i": i })).unwrap(), at));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(healthy_rx.wait_for(16, WAIT));
    let arrivals: HashMap<String, Instant> = healthy_rx
        .received()
        .into_iter()
        .map(|r| (r.header("webhook-id").unwrap().to_owned(), r.at))
        .collect();
    let late: Vec<Duration> = emitted
        .iter()
        .map(|(id, at)| arrivals[id] - *at)
        .filter(|waited| *waited > Duration::from_secs(1))
        .collect();
    assert!(late.is_empty(), "healthy deliveries waited: {late:?}");
    // Only one hanging endpoint at a time held a worker.
    assert!(hang.count() < 12, "{} hanging requests", hang.count());
    let _ = d.shutdown(Duration::from_secs(5));
}

/// Defect 6: a process never claims again what its own workers are
/// sending, even when the lease looks expired (as after a forward step of
/// the wall clock, simulated here by moving the lease into the past).
#[test]
fn an_expired_looking_lease_is_not_claimed_again_by_its_own_process() {
    let (t, db, registry) = setup_sqlite(Duration::from_secs(5));
    // Recorded on arrival, answered 1.5 s later (the first, quickly).
    let first = Arc::new(AtomicBool::new(true));
    let rx = Receiver::start(move |_| {
        let delay = if first.swap(false, Ordering::SeqCst) {
            0
        } else {
            1500
        };
        Reply::status(204).delay(Duration::from_millis(delay))
    });
    endpoint(&registry, ORG, &rx.url("/hook"), &[TYPE]);
    let d = Dispatcher::builder(&db, &registry)
        .workers(2)
        .request_timeout(Duration::from_secs(5))
        .poll_interval(Duration::from_millis(50))
        .start()
        .unwrap();
    // Proven healthy first: its claims are not limited.
    let warm = d.emit(ORG, TYPE, &json!({ "warm": true })).unwrap();
    wait_delivered(&d, &warm);
    let id = d.emit(ORG, TYPE, &json!({})).unwrap();
    assert!(rx.wait_for(2, WAIT));
    let moved = rusqlite::Connection::open(t.path())
        .unwrap()
        .execute(
            "UPDATE keyhook_deliveries SET next_attempt_at = 0 WHERE state = 0",
            [],
        )
        .or_else(|_| {
            rusqlite::Connection::open(t.path()).unwrap().execute(
                "UPDATE keyhook_deliveries SET next_attempt_at = 0 WHERE state = 0",
                [],
            )
        })
        .unwrap();
    assert_eq!(moved, 1);
    d.wake();
    wait_delivered(&d, &id);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        rx.count(),
        2,
        "sent again while its first attempt was in flight"
    );
    d.shutdown(WAIT).unwrap();
}

/// Defect 7: retention runs soon after start, not only after a whole
/// `retention_interval`.
#[test]
fn retention_runs_soon_after_start() {
    let (t, db, registry) = setup(Duration::from_secs(5));
    let rx = Receiver::ok();
    endpoint(&registry, ORG, &rx.url("/hook"), &[TYPE]);
    let d = builder(&t, &registry).retention(None).start().unwrap();
    let id = d.emit(ORG, TYPE, &json!({})).unwrap();
    wait_delivered(&d, &id);
    d.shutdown(WAIT).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let d = Dispatcher::builder(&db, &registry)
        .workers(1)
        .retention(Some(Duration::from_millis(1)))
        .retention_interval(Duration::from_secs(3600))
        .start()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(60), || d
            .event_deliveries(ORG, &id)
            .is_err()),
        "not purged within a minute of start"
    );
    d.shutdown(WAIT).unwrap();
}

/// A stream of events is emitted and delivered while another connection
/// holds the write lock three times, each time several times longer than
/// `busy_timeout`. Emits during a hold fail with a clear error and store
/// nothing; every acknowledged event arrives exactly once; delivery resumes
/// by itself.
#[test]
fn a_database_held_elsewhere_delays_but_never_duplicates() {
    let busy = Duration::from_millis(150);
    let (t, db, registry) = setup_sqlite(busy);
    let rx = Receiver::start(|_| Reply::status(204).delay(Duration::from_millis(20)));
    endpoint(&registry, ORG, &rx.url("/hook"), &[TYPE]);
    let d = Arc::new(
        Dispatcher::builder(&db, &registry)
            .workers(4)
            .request_timeout(Duration::from_secs(1))
            .poll_interval(Duration::from_millis(50))
            .start()
            .unwrap(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let emitter = {
        let (d, stop) = (Arc::clone(&d), Arc::clone(&stop));
        std::thread::spawn(move || {
            let (mut acked, mut refused) = (Vec::new(), 0usize);
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let event = NewEvent::new(TYPE, &json!({ "i": i })).unwrap();
                match d.emit_event(ORG, event) {
                    Ok(id) => acked.push(id),
                    Err(e) => {
                        let text = e.to_string();
                        assert!(text.contains("locked"), "unclear error: {text}");
                        refused += 1;
                    }
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            (acked, refused, i)
        })
    };
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(500));
        hold_write_lock(t.path(), busy * 6);
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    let (acked, refused, tried) = emitter.join().unwrap();
    assert!(refused > 0, "no emit met the lock");
    // Nothing half-written: exactly the acknowledged events exist.
    let stored: i64 = rusqlite::Connection::open(t.path())
        .unwrap()
        .query_row("SELECT COUNT(*) FROM keyhook_events", [], |r| r.get(0))
        .or_else(|_| {
            rusqlite::Connection::open(t.path()).unwrap().query_row(
                "SELECT COUNT(*) FROM keyhook_events",
                [],
                |r| r.get(0),
            )
        })
        .unwrap();
    assert_eq!(
        stored as usize,
        acked.len(),
        "{tried} tried, {refused} refused"
    );
    assert!(
        rx.wait_for(acked.len(), WAIT),
        "only {} arrived",
        rx.count()
    );
    // Past every lease.
    std::thread::sleep(Duration::from_secs(4));
    let counts = per_id(&rx);
    assert_eq!(counts.len(), acked.len());
    let dups: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "duplicates: {dups:?}");
    assert_each_delivered_once(&d, &acked);
    d.shutdown(WAIT).unwrap();
}

/// CPU time this process has used (user + system), from /proc.
#[cfg(target_os = "linux")]
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name (which may hold spaces) start after ')'.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

/// Shutting down waits for the attempt in flight without spinning: the
/// pump sleeps until the attempt reports back.
#[cfg(target_os = "linux")]
#[test]
fn shutdown_waits_for_attempts_in_flight_without_spinning() {
    let (_t, db, registry) = setup(Duration::from_secs(5));
    let rx = Receiver::start(|_| Reply::status(204).delay(Duration::from_secs(2)));
    endpoint(&registry, ORG, &rx.url("/hook"), &[TYPE]);
    let d = Dispatcher::builder(&db, &registry)
        .workers(1)
        .request_timeout(Duration::from_secs(5))
        .start()
        .unwrap();
    let id = d.emit(ORG, TYPE, &json!({})).unwrap();
    assert!(rx.wait_for(1, WAIT));
    let cpu = process_cpu();
    d.shutdown(WAIT).unwrap();
    let used = process_cpu() - cpu;
    assert!(
        used < Duration::from_millis(800),
        "{used:?} of CPU while waiting about 2 s for one attempt"
    );
    assert_eq!(
        d.event_deliveries(ORG, &id).unwrap()[0].state,
        DeliveryState::Delivered
    );
}

/// While another connection holds the write lock, concurrent emits each
/// fail after about one `busy_timeout`, not after their turn at it one by one.
#[test]
fn emits_on_a_locked_database_fail_after_one_busy_timeout() {
    let busy = Duration::from_millis(300);
    let (t, db, registry) = setup_sqlite(busy);
    let rx = Receiver::ok();
    endpoint(&registry, ORG, &rx.url("/hook"), &[TYPE]);
    let d = Arc::new(
        Dispatcher::builder(&db, &registry)
            .workers(2)
            .start()
            .unwrap(),
    );
    let path = t.path().to_owned();
    let holder = std::thread::spawn(move || hold_write_lock(&path, Duration::from_secs(4)));
    std::thread::sleep(Duration::from_millis(200));
    let waits: Vec<(Duration, bool)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..10)
            .map(|i| {
                let d = Arc::clone(&d);
                s.spawn(move || {
                    let started = Instant::now();
                    let result = d.emit(ORG, TYPE, &json!({ "i": i }));
                    (started.elapsed(), matches!(result, Err(Error::Locked(_))))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    holder.join().unwrap();
    for (waited, locked) in &waits {
        assert!(*locked, "an emit under the lock did not fail with Locked");
        assert!(
            *waited < busy * 5,
            "an emit waited {waited:?} with a busy timeout of {busy:?}: {waits:?}"
        );
    }
    // Nothing was stored, and delivery goes on once the lock is gone.
    let id = d.emit(ORG, TYPE, &json!({ "after": true })).unwrap();
    wait_delivered(&d, &id);
    assert_eq!(rx.count(), 1);
}

/// A disabled endpoint's pending deliveries are parked (not due, so no
/// claim looks at them) and resume when it is enabled.
#[test]
fn a_disabled_endpoint_s_pending_deliveries_are_parked_until_enabled() {
    let (_t, db, registry) = setup(Duration::from_secs(5));
    let rx = Receiver::ok();
    let ep = endpoint(&registry, ORG, &rx.url("/hook"), &[TYPE]);
    let emitter = Dispatcher::builder(&db, &registry)
        .workers(0)
        .start()
        .unwrap();
    let id = emitter.emit(ORG, TYPE, &json!({})).unwrap();
    set_enabled(&registry, ORG, &ep.endpoint.id, false);
    let parked = &emitter.event_deliveries(ORG, &id).unwrap()[0];
    assert_eq!(parked.state, DeliveryState::Pending);
    assert_eq!(parked.next_attempt_at, None, "not due while disabled");
    let d = Dispatcher::builder(&db, &registry)
        .workers(1)
        .poll_interval(Duration::from_millis(50))
        .start()
        .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(rx.count(), 0);
    registry.enable(ORG, &ep.endpoint.id).unwrap();
    d.wake();
    wait_delivered(&d, &id);
    assert_eq!(rx.count(), 1);
    d.shutdown(WAIT).unwrap();
}

/// Endpoints not known to be healthy take turns at the limited slots: one
/// with a large failing backlog cannot keep a slot from another failing
/// endpoint (two workers: one limited slot).
#[test]
fn failing_endpoints_take_turns_at_the_limited_slot() {
    let (t, _db, registry) = setup(Duration::from_secs(5));
    let rx = Receiver::start(|_| Reply::status(500).delay(Duration::from_millis(100)));
    endpoint(&registry, ORG, &rx.url("/big"), &[TYPE]);
    endpoint(&registry, "org_small", &rx.url("/small"), &[TYPE]);
    let d = builder(&t, &registry)
        .workers(2)
        .retry_policy(schedule(10, Duration::ZERO).throttle_delay(Duration::ZERO))
        .start()
        .unwrap();
    for i in 0..20 {
        d.emit(ORG, TYPE, &json!({ "i": i })).unwrap();
    }
    d.emit("org_small", TYPE, &json!({})).unwrap();
    assert!(
        wait_until(WAIT, || rx
            .received()
            .iter()
            .filter(|r| r.path == "/small")
            .count()
            >= 3),
        "the small endpoint got {} attempts",
        rx.received().iter().filter(|r| r.path == "/small").count()
    );
    let paths: Vec<String> = rx.received().into_iter().map(|r| r.path).collect();
    let third_small = paths
        .iter()
        .enumerate()
        .filter(|(_, p)| *p == "/small")
        .nth(2)
        .unwrap()
        .0;
    let big_before = paths[..third_small].iter().filter(|p| *p == "/big").count();
    assert!(
        big_before <= 6,
        "{big_before} attempts to the big backlog before the small endpoint's third: {paths:?}"
    );
    let _ = d.shutdown(Duration::from_secs(5));
}

/// A dispatcher (2 workers, a 6 s poll interval) whose endpoint at `url`
/// (event type TYPE) is proven healthy, and a second event type,
/// `other.type`, for new endpoints.
fn proven_endpoint_and_new_type(url: &str) -> (TempDb, WebhookRegistry, Dispatcher) {
    let (t, _db, registry) = setup(Duration::from_secs(5));
    registry
        .register_event_type("other.type", "For new endpoints")
        .unwrap();
    endpoint(&registry, ORG, url, &[TYPE]);
    let d = builder(&t, &registry)
        .workers(2)
        .poll_interval(Duration::from_secs(6))
        .start()
        .unwrap();
    let warm = d.emit(ORG, TYPE, &json!({})).unwrap();
    wait_delivered(&d, &warm);
    (t, registry, d)
}

/// A new endpoint's delivery is not held back by healthy work queued ahead
/// of the workers, nor by the poll interval: the next worker to finish
/// takes it.
#[test]
fn a_new_endpoint_is_served_while_healthy_work_is_queued() {
    let busy_rx = Receiver::start(|_| Reply::status(204).delay(Duration::from_millis(200)));
    let new_rx = Receiver::ok();
    let (_t, registry, d) = proven_endpoint_and_new_type(&busy_rx.url("/busy"));
    // Then a queue of slow healthy work.
    for i in 0..30 {
        d.emit(ORG, TYPE, &json!({ "i": i })).unwrap();
    }
    assert!(busy_rx.wait_for(3, WAIT));
    endpoint(&registry, "org_new", &new_rx.url("/new"), &["other.type"]);
    let emitted = Instant::now();
    d.emit("org_new", "other.type", &json!({})).unwrap();
    assert!(new_rx.wait_for(1, WAIT));
    let waited = new_rx.received()[0].at - emitted;
    // Well within the poll interval: the next worker to finish took it.
    assert!(
        waited < Duration::from_secs(3),
        "the new endpoint waited {waited:?} behind healthy work"
    );
    let _ = d.shutdown(Duration::from_secs(10));
}

/// On PostgreSQL a claim leaves out the look for new or failing endpoints'
/// work for 50 ms after a look found none; a new endpoint's event emitted
/// in that moment is still sent promptly, not a poll interval later (the
/// pump wakes for the next look). Seen failing without that wake-up: the
/// new endpoint waited the whole 6 s poll interval.
#[test]
fn a_new_endpoint_emitted_right_after_healthy_work_is_sent_promptly() {
    let rx = Receiver::ok();
    let (_t, registry, d) = proven_endpoint_and_new_type(&rx.url("/healthy"));
    for round in 0..5 {
        let org = format!("org_new{round}");
        endpoint(
            &registry,
            &org,
            &rx.url(&format!("/new{round}")),
            &["other.type"],
        );
        let before = rx.count();
        d.emit(ORG, TYPE, &json!({ "round": round })).unwrap();
        let emitted = Instant::now();
        d.emit(&org, "other.type", &json!({})).unwrap();
        assert!(rx.wait_for(before + 2, WAIT));
        let at = rx
            .received()
            .iter()
            .find(|r| r.path == format!("/new{round}"))
            .map(|r| r.at)
            .unwrap();
        let waited = at - emitted;
        assert!(
            waited < Duration::from_secs(2),
            "round {round}: the new endpoint waited {waited:?}"
        );
    }
    let _ = d.shutdown(Duration::from_secs(10));
}
