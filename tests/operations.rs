//! Delivery operations: history pages and filters, redelivery, recovery,
//! auto-disable and notices, transactional emit, retention, stats, and the
//! errors for bad input. Real SQLite files, a real HTTP receiver on
//! 127.0.0.1, short retry schedules; waits use generous deadlines and never
//! assert speed.

mod common;
#[path = "common/receiver.rs"]
mod receiver;

use std::collections::HashSet;
use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::{
    TempDb, assert_invalid_input, endpoint, loopback_setup, schedule, verify_signed, wait_until,
};
use keyhook::rusqlite::{Connection, Transaction, TransactionBehavior};
use keyhook::{
    AttemptError, CreatedEndpoint, Delivery, DeliveryState, DisableReason, Dispatcher,
    DispatcherBuilder, EndpointStats, Error, HistoryQuery, MAX_HISTORY_RANGE, MAX_PAGE_SIZE,
    MAX_RECOVERY_WINDOW, NewEvent, Notice, RetryPolicy, WebhookRegistry,
};
use receiver::{Receiver, Reply};
use serde_json::json;

const CREATED: &str = "conversion.created";
const PAID: &str = "payout.sent";
const GONE: &str = "account.closed";
const QUIET: &str = "report.ready";
const ORG: &str = "org_1";
const OTHER_ORG: &str = "org_2";
const WAIT: Duration = Duration::from_secs(10);
const SETTLE: Duration = Duration::from_millis(400);
const DAY: Duration = Duration::from_secs(24 * 3600);

const TYPES: &[(&str, &str)] = &[
    (CREATED, "A new referred purchase"),
    (PAID, "A payout was sent"),
    (GONE, "An account was closed"),
    (QUIET, "A report is ready"),
];

fn setup() -> (TempDb, WebhookRegistry) {
    loopback_setup(TYPES)
}

/// For tests of SQLite itself (a host's own rusqlite transaction).
fn setup_sqlite() -> (TempDb, WebhookRegistry) {
    common::loopback_setup_sqlite(TYPES)
}

/// Short settings suited to tests; no auto-disable unless a test asks.
fn builder(t: &TempDb, registry: &WebhookRegistry) -> DispatcherBuilder {
    common::builder(t, registry).auto_disable_after(None)
}

/// Every delivery of the endpoint (one full page), newest first.
fn all(
    d: &Dispatcher,
    org: &str,
    endpoint_id: &str,
    state: Option<DeliveryState>,
) -> Vec<Delivery> {
    let query = HistoryQuery {
        state,
        limit: MAX_PAGE_SIZE,
        ..HistoryQuery::default()
    };
    d.history(org, endpoint_id, &query).unwrap().deliveries
}

/// Waits until the endpoint has `n` deliveries in `state`; returns them.
fn wait_for_state(
    d: &Dispatcher,
    org: &str,
    endpoint_id: &str,
    state: DeliveryState,
    n: usize,
) -> Vec<Delivery> {
    let mut last = Vec::new();
    let ok = wait_until(WAIT, || {
        last = all(d, org, endpoint_id, None);
        last.iter().filter(|x| x.state == state).count() >= n
    });
    assert!(ok, "expected {n} deliveries {state:?}, have {last:#?}");
    last.into_iter().filter(|x| x.state == state).collect()
}

/// Waits until every pending delivery of the endpoint has `attempts` attempts.
fn wait_for_attempts(
    d: &Dispatcher,
    org: &str,
    endpoint_id: &str,
    pending: usize,
    attempts: usize,
) {
    let mut last = Vec::new();
    let ok = wait_until(WAIT, || {
        last = all(d, org, endpoint_id, Some(DeliveryState::Pending));
        last.len() == pending && last.iter().all(|x| x.attempts.len() == attempts)
    });
    assert!(
        ok,
        "expected {pending} pending deliveries with {attempts} attempts, have {last:#?}"
    );
}

fn event_ids(deliveries: &[Delivery]) -> Vec<String> {
    deliveries.iter().map(|x| x.event_id.clone()).collect()
}

fn rev(ids: &[String]) -> Vec<String> {
    ids.iter().rev().cloned().collect()
}

/// A receiver answering 204 while `ok` is set, else 500 with a short body.
fn flaky(ok: &Arc<AtomicBool>) -> Receiver {
    let ok = Arc::clone(ok);
    Receiver::start(move |_| {
        if ok.load(Ordering::SeqCst) {
            Reply::status(204)
        } else {
            Reply::status(500).body("down")
        }
    })
}

/// One endpoint subscribed to `CREATED` behind a `flaky` receiver that fails
/// until `ok` is set, and a dispatcher making a single attempt per delivery.
fn one_attempt_to_flaky() -> (
    TempDb,
    WebhookRegistry,
    Arc<AtomicBool>,
    Receiver,
    CreatedEndpoint,
    Dispatcher,
) {
    let (t, registry) = setup();
    let ok = Arc::new(AtomicBool::new(false));
    let rx = flaky(&ok);
    let ep = endpoint(&registry, ORG, &rx.url("/"), &[CREATED]);
    let d = builder(&t, &registry)
        .retry_policy(schedule(1, Duration::ZERO))
        .start()
        .unwrap();
    (t, registry, ok, rx, ep, d)
}

/// A receiver answering from a list, in order; the last reply repeats.
fn scripted(replies: Vec<Reply>) -> Receiver {
    let n = AtomicUsize::new(0);
    Receiver::start(move |_| {
        let i = n.fetch_add(1, Ordering::SeqCst);
        replies[i.min(replies.len() - 1)].clone()
    })
}

/// A URL on 127.0.0.1 where nothing listens.
fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}/")
}

fn notice_sink() -> (
    Arc<Mutex<Vec<Notice>>>,
    impl Fn(&Notice) + Send + Sync + 'static,
) {
    let notices = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&notices);
    (notices, move |n: &Notice| {
        sink.lock().unwrap().push(n.clone())
    })
}

/// The endpoint's stats (in `ORG`), after checking its (pending, delivered,
/// failed) counts and its attempts in the last 24 hours.
#[track_caller]
fn checked_stats(
    d: &Dispatcher,
    ep: &CreatedEndpoint,
    counts: (u64, u64, u64),
    attempts_24h: u64,
) -> EndpointStats {
    let s = d.endpoint_stats(ORG, &ep.endpoint.id).unwrap();
    assert_eq!((s.pending, s.delivered, s.failed), counts, "{s:?}");
    assert_eq!(s.attempts_24h, attempts_24h, "{s:?}");
    s
}

/// An immediate transaction on `host` that has inserted a `host_orders` row
/// with `note`.
fn host_order<'c>(host: &'c mut Connection, note: &str) -> Transaction<'c> {
    let tx = host
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .unwrap();
    tx.execute("INSERT INTO host_orders (note) VALUES (?1)", [note])
        .unwrap();
    tx
}

#[track_caller]
fn assert_not_found<T: Debug>(result: Result<T, Error>, expected_kind: &str) {
    match result {
        Err(Error::NotFound { kind, .. }) if kind == expected_kind => {}
        other => panic!("expected NotFound {{ kind: {expected_kind:?} }}, got {other:?}"),
    }
}

// ---------------------------------------------------------------- history

#[test]
fn history_pages_newest_first_with_a_cursor_stable_while_new_deliveries_arrive() {
    let (t, registry) = setup();
    let rx = Receiver::ok();
    let ep = endpoint(&registry, ORG, &rx.url("/"), &[CREATED]);
    let d = builder(&t, &registry).start().unwrap();
    let original: Vec<String> = (0..7)
        .map(|i| d.emit(ORG, CREATED, &json!({ "n": i })).unwrap())
        .collect();
    wait_for_state(&d, ORG, &ep.endpoint.id, DeliveryState::Delivered, 7);

    let first = HistoryQuery {
        limit: 3,
        ..HistoryQuery::default()
    };
    let page1 = d.history(ORG, &ep.endpoint.id, &first).unwrap();
    assert_eq!(event_ids(&page1.deliveries), rev(&original[4..]));
    let cursor1 = page1.next_cursor.clone().expect("more pages");

    // New deliveries arrive between pages: they are newer than the cursor.
    let newer: Vec<String> = (0..4)
        .map(|i| d.emit(ORG, CREATED, &json!({ "new": i })).unwrap())
        .collect();
    wait_for_state(&d, ORG, &ep.endpoint.id, DeliveryState::Delivered, 11);

    let page2 = d
        .history(
            ORG,
            &ep.endpoint.id,
            &HistoryQuery {
                cursor: Some(cursor1),
                ..first.clone()
            },
        )
        .unwrap();
    assert_eq!(event_ids(&page2.deliveries), rev(&original[1..4]));
    let page3 = d
        .history(
            ORG,
            &ep.endpoint.id,
            &HistoryQuery {
                cursor: page2.next_cursor.clone(),
                ..first.clone()
            },
        )
        .unwrap();
    assert_eq!(event_ids(&page3.deliveries), rev(&original[..1]));
    assert_eq!(page3.next_cursor, None, "the last page has no cursor");

    let walked: Vec<&Delivery> = page1
        .deliveries
        .iter()
        .chain(&page2.deliveries)
        .chain(&page3.deliveries)
        .collect();
    let unique: HashSet<&str> = walked.iter().map(|x| x.id.as_str()).collect();
    assert_eq!(unique.len(), walked.len(), "no duplicates");
    let events: HashSet<&str> = walked.iter().map(|x| x.event_id.as_str()).collect();
    let expected: HashSet<&str> = original.iter().map(String::as_str).collect();
    assert_eq!(events, expected, "the pages cover exactly the original set");
    for pair in walked.windows(2) {
        assert!(pair[0].created_at >= pair[1].created_at, "newest first");
    }
    for x in &walked {
        assert_eq!(x.endpoint_id, ep.endpoint.id);
        assert_eq!(x.event_type, CREATED);
        assert_eq!(x.state, DeliveryState::Delivered);
        assert_eq!(x.next_attempt_at, None);
        assert_eq!(x.attempts.len(), 1);
    }

    // A fresh first page starts with the new deliveries.
    let fresh = d.history(ORG, &ep.endpoint.id, &first).unwrap();
    assert_eq!(event_ids(&fresh.deliveries), rev(&newer[1..]));
    d.shutdown(WAIT).unwrap();
}

#[test]
fn history_filters_by_state_and_time_range() {
    let (t, registry) = setup();
    let rx = Receiver::start(|r| {
        if String::from_utf8_lossy(&r.body).contains("\"fail\"") {
            Reply::status(500)
        } else {
            Reply::status(204)
        }
    });
    let ep = endpoint(&registry, ORG, &rx.url("/"), &[CREATED]);
    let id = ep.endpoint.id.as_str();

    // Before `middle`: one attempt only, so a failure is final.
    let d1 = builder(&t, &registry)
        .retry_policy(schedule(1, Duration::ZERO))
        .start()
        .unwrap();
    let failed_old = d1.emit(ORG, CREATED, &json!({"want": "fail"})).unwrap();
    let ok_old = d1.emit(ORG, CREATED, &json!({"want": "ok"})).unwrap();
    wait_for_state(&d1, ORG, id, DeliveryState::Failed, 1);
    wait_for_state(&d1, ORG, id, DeliveryState::Delivered, 1);
    d1.shutdown(WAIT).unwrap();

    std::thread::sleep(Duration::from_millis(10));
    let middle = SystemTime::now();
    std::thread::sleep(Duration::from_millis(10));

    // After `middle`: a failure waits an hour, so it stays pending.
    let d = builder(&t, &registry)
        .retry_policy(schedule(2, Duration::from_secs(3600)))
        .start()
        .unwrap();
    let pending_new = d.emit(ORG, CREATED, &json!({"want": "fail"})).unwrap();
    let ok_new = d.emit(ORG, CREATED, &json!({"want": "ok"})).unwrap();
    wait_for_state(&d, ORG, id, DeliveryState::Delivered, 2);
    wait_for_attempts(&d, ORG, id, 1, 1);

    let query =
        |state: Option<DeliveryState>, since: Option<SystemTime>, until: Option<SystemTime>| {
            let q = HistoryQuery {
                state,
                since,
                until,
                ..HistoryQuery::default()
            };
            event_ids(&d.history(ORG, id, &q).unwrap().deliveries)
        };
    use DeliveryState::{Delivered, Failed, Pending};
    assert_eq!(
        query(None, None, None),
        [&ok_new, &pending_new, &ok_old, &failed_old].map(String::as_str)
    );
    assert_eq!(query(Some(Pending), None, None), [pending_new.as_str()]);
    assert_eq!(
        query(Some(Delivered), None, None),
        [ok_new.as_str(), ok_old.as_str()]
    );
    assert_eq!(query(Some(Failed), None, None), [failed_old.as_str()]);
    assert_eq!(
        query(None, Some(middle), None),
        [ok_new.as_str(), pending_new.as_str()]
    );
    assert_eq!(
        query(None, None, Some(middle)),
        [ok_old.as_str(), failed_old.as_str()]
    );
    assert_eq!(
        query(Some(Delivered), Some(middle), None),
        [ok_new.as_str()]
    );
    assert_eq!(
        query(Some(Failed), None, Some(middle)),
        [failed_old.as_str()]
    );
    assert!(query(Some(Failed), Some(middle), None).is_empty());
    assert!(query(Some(Pending), None, Some(middle)).is_empty());

    // Filtered pages follow their cursor within the filter.
    for (filter, expected) in [
        (
            HistoryQuery {
                state: Some(Delivered),
                limit: 1,
                ..HistoryQuery::default()
            },
            vec![ok_new.clone(), ok_old.clone()],
        ),
        (
            HistoryQuery {
                since: Some(middle),
                limit: 1,
                ..HistoryQuery::default()
            },
            vec![ok_new.clone(), pending_new.clone()],
        ),
        (
            HistoryQuery {
                until: Some(middle),
                limit: 1,
                ..HistoryQuery::default()
            },
            vec![ok_old.clone(), failed_old.clone()],
        ),
    ] {
        let mut walked = Vec::new();
        let mut q = filter.clone();
        loop {
            let page = d.history(ORG, id, &q).unwrap();
            walked.extend(event_ids(&page.deliveries));
            match page.next_cursor {
                Some(c) => q.cursor = Some(c),
                None => break,
            }
            assert!(walked.len() <= expected.len(), "{filter:?}: {walked:?}");
        }
        assert_eq!(walked, expected, "{filter:?}");
    }

    let pending = &all(&d, ORG, id, Some(Pending))[0];
    assert!(
        pending
            .next_attempt_at
            .is_some_and(|at| at > SystemTime::now()),
        "a pending delivery shows its next attempt: {pending:?}"
    );
    d.shutdown(WAIT).unwrap();
}

#[test]
fn history_records_each_attempt_and_event_deliveries_span_endpoints() {
    let (t, registry) = setup();
    let rx = scripted(vec![
        Reply::status(500).body("not yet"),
        Reply::status(200).body("thanks"),
    ]);
    let good = endpoint(&registry, ORG, &rx.url("/"), &[CREATED]);
    let dead = endpoint(&registry, ORG, &closed_port_url(), &[CREATED]);
    let d = builder(&t, &registry)
        .retry_policy(schedule(3, Duration::from_millis(100)))
        .start()
        .unwrap();
    let before = SystemTime::now() - Duration::from_secs(1);
    let id = d.emit(ORG, CREATED, &json!({"x": 1})).unwrap();
    let delivered = wait_for_state(&d, ORG, &good.endpoint.id, DeliveryState::Delivered, 1);
    let failed = wait_for_state(&d, ORG, &dead.endpoint.id, DeliveryState::Failed, 1);
    let after = SystemTime::now() + Duration::from_secs(1);

    let a = &delivered[0].attempts;
    assert_eq!(a.len(), 2, "{a:?}");
    assert_eq!(a[0].status_code, Some(500));
    assert_eq!(a[0].error, Some(AttemptError::Status));
    assert_eq!(a[0].response_excerpt, b"not yet");
    assert_eq!(a[1].status_code, Some(200));
    assert_eq!(a[1].error, None);
    assert_eq!(a[1].response_excerpt, b"thanks");
    let f = &failed[0].attempts;
    assert_eq!(f.len(), 3, "{f:?}");
    for attempt in a.iter().chain(f) {
        assert!(!attempt.manual);
        assert!(attempt.at >= before && attempt.at <= after, "{attempt:?}");
        assert!(attempt.duration < Duration::from_secs(5), "{attempt:?}");
    }
    for attempt in f {
        assert_eq!(attempt.status_code, None);
        assert_eq!(attempt.error, Some(AttemptError::Connect));
        assert!(attempt.response_excerpt.is_empty());
    }
    for pair in a.windows(2).chain(f.windows(2)) {
        assert!(pair[0].at <= pair[1].at, "attempts oldest first");
    }

    // Per endpoint, each history holds only its own delivery.
    assert_eq!(all(&d, ORG, &good.endpoint.id, None).len(), 1);
    assert_eq!(all(&d, ORG, &dead.endpoint.id, None).len(), 1);
    // Per event, both deliveries with their attempts.
    let per_event = d.event_deliveries(ORG, &id).unwrap();
    assert_eq!(per_event.len(), 2);
    let by_endpoint: HashSet<(&str, DeliveryState, usize)> = per_event
        .iter()
        .map(|x| (x.endpoint_id.as_str(), x.state, x.attempts.len()))
        .collect();
    assert_eq!(
        by_endpoint,
        HashSet::from([
            (good.endpoint.id.as_str(), DeliveryState::Delivered, 2),
            (dead.endpoint.id.as_str(), DeliveryState::Failed, 3),
        ])
    );
    assert!(per_event.iter().all(|x| x.event_id == id));
    assert_eq!(d.delivery(ORG, &delivered[0].id).unwrap(), delivered[0]);
    d.shutdown(WAIT).unwrap();
}

#[test]
fn history_is_isolated_between_organizations() {
    let (t, registry) = setup();
    let rx = Receiver::ok();
    let ep_a = endpoint(&registry, ORG, &rx.url("/a"), &[CREATED]);
    let ep_b = endpoint(&registry, OTHER_ORG, &rx.url("/b"), &[CREATED]);
    let d = builder(&t, &registry).start().unwrap();
    let a_events: Vec<String> = (0..3)
        .map(|_| d.emit(ORG, CREATED, &json!({})).unwrap())
        .collect();
    let b_event = d.emit(OTHER_ORG, CREATED, &json!({})).unwrap();
    assert!(rx.wait_for(4, WAIT));

    let q = HistoryQuery {
        limit: 1,
        ..HistoryQuery::default()
    };
    let page = d.history(ORG, &ep_a.endpoint.id, &q).unwrap();
    let cursor = page.next_cursor.expect("more pages");

    assert_not_found(d.history(OTHER_ORG, &ep_a.endpoint.id, &q), "endpoint");
    assert_not_found(d.event_deliveries(OTHER_ORG, &a_events[0]), "event");
    assert_not_found(d.delivery(OTHER_ORG, &page.deliveries[0].id), "delivery");
    // Org A's cursor on org B's own endpoint is refused.
    assert_invalid_input(
        d.history(
            OTHER_ORG,
            &ep_b.endpoint.id,
            &HistoryQuery {
                cursor: Some(cursor.clone()),
                ..q.clone()
            },
        ),
        "cursor",
    );
    // B sees only its own.
    assert_eq!(
        event_ids(&all(&d, OTHER_ORG, &ep_b.endpoint.id, None)),
        [b_event]
    );
    // The cursor still works for A.
    let next = HistoryQuery {
        cursor: Some(cursor),
        ..q
    };
    assert_eq!(
        event_ids(&d.history(ORG, &ep_a.endpoint.id, &next).unwrap().deliveries),
        [a_events[1].clone()]
    );
    d.shutdown(WAIT).unwrap();
}

// ------------------------------------------------------- redeliver, recover

#[test]
fn redeliver_makes_a_manual_attempt_and_marks_delivered_only_on_success() {
    let (_t, _registry, ok, rx, ep, d) = one_attempt_to_flaky();
    let event = d.emit(ORG, CREATED, &json!({"r": 1})).unwrap();
    let failed = wait_for_state(&d, ORG, &ep.endpoint.id, DeliveryState::Failed, 1).remove(0);
    assert_eq!(failed.attempts.len(), 1);

    // A failing manual attempt is recorded and leaves the state alone.
    let manual = d.redeliver(ORG, &failed.id).unwrap();
    assert!(manual.manual);
    assert_eq!(manual.status_code, Some(500));
    assert_eq!(manual.error, Some(AttemptError::Status));
    assert_eq!(manual.response_excerpt, b"down");
    let now = d.delivery(ORG, &failed.id).unwrap();
    assert_eq!(now.state, DeliveryState::Failed);
    assert_eq!(now.attempts.len(), 2);
    assert_eq!(now.attempts[1], manual);
    assert_eq!(rx.count(), 2);

    // A succeeding one marks it delivered.
    ok.store(true, Ordering::SeqCst);
    let manual = d.redeliver(ORG, &failed.id).unwrap();
    assert!(manual.manual);
    assert_eq!(manual.status_code, Some(204));
    assert_eq!(manual.error, None);
    let history = all(&d, ORG, &ep.endpoint.id, None);
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].state, DeliveryState::Delivered);
    assert_eq!(history[0].next_attempt_at, None);
    let manual_flags: Vec<bool> = history[0].attempts.iter().map(|a| a.manual).collect();
    assert_eq!(manual_flags, [false, true, true]);
    assert_eq!(history[0].attempts[2], manual);

    // Same webhook-id, validly signed.
    let received = rx.received();
    assert_eq!(received.len(), 3);
    for r in &received {
        assert_eq!(r.header("webhook-id"), Some(event.as_str()));
    }
    let last = &received[2];
    verify_signed(
        |name| last.header(name),
        &last.body,
        std::slice::from_ref(&ep.secret),
    )
    .unwrap();
    std::thread::sleep(SETTLE);
    assert_eq!(rx.count(), 3, "nothing scheduled after the manual success");
    d.shutdown(WAIT).unwrap();
}

#[test]
fn recover_requeues_failed_deliveries_since_the_given_time() {
    let (_t, _registry, ok, rx, ep, d) = one_attempt_to_flaky();
    let id = ep.endpoint.id.as_str();
    let old = d.emit(ORG, CREATED, &json!({"old": true})).unwrap();
    wait_for_state(&d, ORG, id, DeliveryState::Failed, 1);
    std::thread::sleep(Duration::from_millis(20));
    let since = SystemTime::now();
    std::thread::sleep(Duration::from_millis(20));
    let recent: HashSet<String> = (0..2)
        .map(|i| d.emit(ORG, CREATED, &json!({ "recent": i })).unwrap())
        .collect();
    wait_for_state(&d, ORG, id, DeliveryState::Failed, 3);
    assert_eq!(rx.count(), 3);

    ok.store(true, Ordering::SeqCst);
    assert_eq!(d.recover(ORG, id, since).unwrap(), 2);
    let delivered = wait_for_state(&d, ORG, id, DeliveryState::Delivered, 2);
    assert_eq!(
        event_ids(&delivered).into_iter().collect::<HashSet<_>>(),
        recent
    );
    for x in &delivered {
        assert_eq!(x.attempts.len(), 2, "{x:?}");
    }
    let resent: HashSet<String> = rx.received()[3..]
        .iter()
        .map(|r| r.header("webhook-id").unwrap().to_owned())
        .collect();
    assert_eq!(resent, recent);

    std::thread::sleep(SETTLE);
    assert_eq!(
        rx.count(),
        5,
        "the delivery before `since` was not re-queued"
    );
    let failed = all(&d, ORG, id, Some(DeliveryState::Failed));
    assert_eq!(event_ids(&failed), [old]);
    assert_eq!(failed[0].attempts.len(), 1);
    assert_eq!(
        d.recover(ORG, id, since).unwrap(),
        0,
        "nothing left to recover"
    );
    d.shutdown(WAIT).unwrap();
}

// ------------------------------------------------ auto-disable and notices

#[test]
fn auto_disable_keeps_pending_deliveries_and_enable_delivers_them() {
    let (t, registry) = setup();
    let ok = Arc::new(AtomicBool::new(false));
    let rx = flaky(&ok);
    let ep = endpoint(&registry, ORG, &rx.url("/"), &[CREATED]);
    let id = ep.endpoint.id.as_str();
    let (notices, hook) = notice_sink();
    let d = builder(&t, &registry)
        .retry_policy(schedule(30, Duration::from_millis(100)))
        .auto_disable_after(Some(Duration::from_millis(300)))
        .on_notice(hook)
        .start()
        .unwrap();
    let started = SystemTime::now() - Duration::from_secs(1);
    let events: HashSet<String> = (0..3)
        .map(|i| d.emit(ORG, CREATED, &json!({ "i": i })).unwrap())
        .collect();

    let disabled = |n: &Notice| matches!(n, Notice::EndpointDisabled { .. });
    assert!(
        wait_until(WAIT, || notices.lock().unwrap().iter().any(disabled)),
        "no EndpointDisabled notice: {:?}",
        notices.lock().unwrap()
    );
    let endpoint_now = registry.get(ORG, id).unwrap();
    assert!(!endpoint_now.enabled);
    assert!(endpoint_now.disabled_reason.is_some());
    let pending = all(&d, ORG, id, Some(DeliveryState::Pending));
    assert_eq!(
        event_ids(&pending).into_iter().collect::<HashSet<_>>(),
        events,
        "pending deliveries are kept"
    );

    std::thread::sleep(Duration::from_millis(200));
    let attempts_before = rx.count();
    assert!(attempts_before >= 2, "it failed for a while first");
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(rx.count(), attempts_before, "no attempts while disabled");

    ok.store(true, Ordering::SeqCst);
    let enabled = registry.enable(ORG, id).unwrap();
    assert!(enabled.endpoint.enabled);
    assert_eq!(enabled.endpoint.disabled_reason, None);
    let missed = enabled.missed_since.expect("missed_since is set");
    assert!(
        missed >= started && missed <= SystemTime::now(),
        "{missed:?}"
    );
    let delivered = wait_for_state(&d, ORG, id, DeliveryState::Delivered, 3);
    assert_eq!(
        event_ids(&delivered).into_iter().collect::<HashSet<_>>(),
        events
    );

    assert!(wait_until(WAIT, || {
        notices
            .lock()
            .unwrap()
            .iter()
            .any(|n| matches!(n, Notice::EndpointRecovered { .. }))
    }));
    std::thread::sleep(Duration::from_millis(200));
    let seen = notices.lock().unwrap().clone();
    let disabled_at: Vec<usize> = (0..seen.len()).filter(|&i| disabled(&seen[i])).collect();
    assert_eq!(disabled_at.len(), 1, "{seen:?}");
    match &seen[disabled_at[0]] {
        Notice::EndpointDisabled {
            org,
            endpoint_id,
            reason: DisableReason::FailingSince(since),
        } => {
            assert_eq!((org.as_str(), endpoint_id.as_str()), (ORG, id));
            assert!(
                *since >= started && *since <= SystemTime::now(),
                "{since:?}"
            );
        }
        other => panic!("expected FailingSince, got {other:?}"),
    }
    let recovered_at: Vec<usize> = (0..seen.len())
        .filter(|&i| matches!(seen[i], Notice::EndpointRecovered { .. }))
        .collect();
    assert_eq!(recovered_at.len(), 1, "{seen:?}");
    assert!(recovered_at[0] > disabled_at[0], "{seen:?}");
    match &seen[recovered_at[0]] {
        Notice::EndpointRecovered {
            org, endpoint_id, ..
        } => assert_eq!((org.as_str(), endpoint_id.as_str()), (ORG, id)),
        other => panic!("{other:?}"),
    }
    d.shutdown(WAIT).unwrap();
}

#[test]
fn gone_disables_the_endpoint_and_an_exhausted_schedule_is_noticed() {
    let (t, registry) = setup();
    let rx_gone = Receiver::start(|_| Reply::status(410));
    let rx_bad = Receiver::start(|_| Reply::status(500));
    let gone = endpoint(&registry, ORG, &rx_gone.url("/"), &[CREATED]);
    let bad = endpoint(&registry, ORG, &rx_bad.url("/"), &[CREATED]);
    let (notices, hook) = notice_sink();
    let d = builder(&t, &registry)
        .retry_policy(schedule(3, Duration::from_millis(50)))
        .on_notice(hook)
        .start()
        .unwrap();
    let event = d.emit(ORG, CREATED, &json!({})).unwrap();
    assert!(wait_until(WAIT, || notices.lock().unwrap().len() >= 2));
    std::thread::sleep(SETTLE);

    assert_eq!(rx_gone.count(), 1);
    assert_eq!(rx_bad.count(), 3);
    let seen = notices.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        seen.contains(&Notice::EndpointDisabled {
            org: ORG.into(),
            endpoint_id: gone.endpoint.id.clone(),
            reason: DisableReason::Gone,
        }),
        "{seen:?}"
    );
    assert!(
        seen.contains(&Notice::DeliveryExhausted {
            org: ORG.into(),
            endpoint_id: bad.endpoint.id.clone(),
            event_id: event.clone(),
            attempts: 3,
        }),
        "{seen:?}"
    );
    let gone_now = registry.get(ORG, &gone.endpoint.id).unwrap();
    assert!(!gone_now.enabled);
    assert!(gone_now.disabled_reason.is_some());
    assert!(registry.get(ORG, &bad.endpoint.id).unwrap().enabled);
    let per_event = d.event_deliveries(ORG, &event).unwrap();
    assert!(
        per_event.iter().all(|x| x.state == DeliveryState::Failed),
        "{per_event:?}"
    );
    d.shutdown(WAIT).unwrap();
}

// ---------------------------------------------------- transactional emit

#[test]
fn emit_in_exists_only_if_the_host_transaction_commits() {
    let (t, registry) = setup_sqlite();
    let rx = Receiver::ok();
    let ep = endpoint(&registry, ORG, &rx.url("/"), &[CREATED]);
    // A long poll: only `wake` makes the commit arrive within the deadline.
    let d = builder(&t, &registry)
        .poll_interval(Duration::from_secs(60))
        .start()
        .unwrap();
    let mut host = Connection::open(t.path()).unwrap();
    host.busy_timeout(Duration::from_secs(5)).unwrap();
    host.execute_batch("CREATE TABLE host_orders (id INTEGER PRIMARY KEY, note TEXT NOT NULL)")
        .unwrap();
    let host_rows = |host: &Connection, note: &str| -> i64 {
        host.query_row(
            "SELECT COUNT(*) FROM host_orders WHERE note = ?1",
            [note],
            |r| r.get(0),
        )
        .unwrap()
    };

    // Rolled back: no event, nothing sent.
    let tx = host_order(&mut host, "rolled back");
    let ids = d
        .emit_in(
            &tx,
            ORG,
            vec![NewEvent::new(CREATED, &json!({"order": 1})).unwrap()],
        )
        .unwrap();
    assert_eq!(ids.len(), 1);
    tx.rollback().unwrap();
    d.wake();
    assert_not_found(d.event_deliveries(ORG, &ids[0]), "event");
    assert_eq!(host_rows(&host, "rolled back"), 0);

    // Committed: it arrives.
    let tx = host_order(&mut host, "committed");
    let committed = d
        .emit_in(
            &tx,
            ORG,
            vec![NewEvent::new(CREATED, &json!({"order": 2})).unwrap()],
        )
        .unwrap()
        .remove(0);
    tx.commit().unwrap();
    d.wake();
    assert!(rx.wait_for(1, WAIT), "the committed event did not arrive");
    assert_eq!(
        rx.received()[0].header("webhook-id"),
        Some(committed.as_str())
    );
    wait_for_state(&d, ORG, &ep.endpoint.id, DeliveryState::Delivered, 1);
    assert_eq!(host_rows(&host, "committed"), 1);

    // A failing emit_in rolls back its savepoint; the host still commits.
    let tx = host_order(&mut host, "kept");
    let err = d
        .emit_in(
            &tx,
            ORG,
            vec![
                NewEvent::new(CREATED, &json!({"order": 3})).unwrap(),
                NewEvent::new("no.such.type", &json!({})).unwrap(),
            ],
        )
        .unwrap_err();
    assert!(
        matches!(&err, Error::UnknownEventType { name } if name == "no.such.type"),
        "{err:?}"
    );
    tx.commit().unwrap();
    d.wake();
    assert_eq!(host_rows(&host, "kept"), 1);
    let events: i64 = host
        .query_row("SELECT COUNT(*) FROM keyhook_events", [], |r| r.get(0))
        .unwrap();
    assert_eq!(events, 1, "only the committed event exists");
    let deliveries: i64 = host
        .query_row("SELECT COUNT(*) FROM keyhook_deliveries", [], |r| r.get(0))
        .unwrap();
    assert_eq!(deliveries, 1);
    std::thread::sleep(SETTLE);
    assert_eq!(rx.count(), 1, "nothing else was sent");
    d.shutdown(WAIT).unwrap();
}

#[test]
fn commits_by_other_connections_are_noticed_without_wake() {
    // SQLite: `data_version`; PostgreSQL: `emit_in_postgres` in postgres.rs.
    // A poll of a minute: only the watch on other connections' commits can
    // bring these within the deadline.
    let (t, registry) = setup_sqlite();
    let rx = Receiver::ok();
    endpoint(&registry, ORG, &rx.url("/"), &[CREATED]);
    let d = builder(&t, &registry)
        .poll_interval(Duration::from_secs(60))
        .start()
        .unwrap();
    // Let the pump go idle first.
    std::thread::sleep(Duration::from_millis(200));

    // The host's own transaction, with no wake().
    let mut host = Connection::open(t.path()).unwrap();
    host.busy_timeout(Duration::from_secs(5)).unwrap();
    host.execute_batch("CREATE TABLE host_orders (id INTEGER PRIMARY KEY, note TEXT NOT NULL)")
        .unwrap();
    let tx = host_order(&mut host, "no wake");
    d.emit_in(
        &tx,
        ORG,
        vec![NewEvent::new(CREATED, &json!({"order": 1})).unwrap()],
    )
    .unwrap();
    tx.commit().unwrap();
    assert!(
        rx.wait_for(1, Duration::from_secs(3)),
        "emit_in without wake was not noticed"
    );

    // Another handle on the file stands for an emit-only process.
    let other_db = keyhook::Database::open(t.path()).unwrap();
    let emit_only = Dispatcher::builder(&other_db, &registry)
        .workers(0)
        .start()
        .unwrap();
    emit_only.emit(ORG, CREATED, &json!({"order": 2})).unwrap();
    assert!(
        rx.wait_for(2, Duration::from_secs(3)),
        "an emit by another connection was not noticed"
    );
    d.shutdown(WAIT).unwrap();
}

// ------------------------------------------------------------- retention

#[test]
fn purge_removes_finished_deliveries_attempts_and_events_but_never_pending() {
    let (t, registry) = setup();
    let rx_ok = Receiver::ok();
    let rx_down = Receiver::start(|_| Reply::status(500));
    let rx_gone = Receiver::start(|_| Reply::status(410));
    let ok = endpoint(&registry, ORG, &rx_ok.url("/"), &[CREATED]);
    let down = endpoint(&registry, ORG, &rx_down.url("/"), &[PAID]);
    let gone = endpoint(&registry, ORG, &rx_gone.url("/"), &[GONE]);
    let d = builder(&t, &registry)
        .retry_policy(schedule(2, Duration::from_secs(3600)))
        .start()
        .unwrap();
    let created: Vec<String> = (0..2)
        .map(|_| d.emit(ORG, CREATED, &json!({})).unwrap())
        .collect();
    let gone_event = d.emit(ORG, GONE, &json!({})).unwrap();
    let paid = d.emit(ORG, PAID, &json!({})).unwrap();
    wait_for_state(&d, ORG, &ok.endpoint.id, DeliveryState::Delivered, 2);
    wait_for_state(&d, ORG, &gone.endpoint.id, DeliveryState::Failed, 1);
    wait_for_attempts(&d, ORG, &down.endpoint.id, 1, 1);
    assert_eq!(t.count("SELECT COUNT(*) FROM keyhook_attempts"), 4);

    // Nothing is that old yet.
    let none = d.purge(Duration::from_secs(3600)).unwrap();
    assert_eq!((none.events, none.deliveries), (0, 0));
    assert_eq!(t.count("SELECT COUNT(*) FROM keyhook_deliveries"), 4);

    std::thread::sleep(Duration::from_millis(5));
    let report = d.purge(Duration::ZERO).unwrap();
    assert_eq!(report.deliveries, 3, "{report:?}");
    assert_eq!(report.events, 3, "{report:?}");
    for id in created.iter().chain([&gone_event]) {
        assert_not_found(d.event_deliveries(ORG, id), "event");
    }
    assert!(all(&d, ORG, &ok.endpoint.id, None).is_empty());
    assert!(all(&d, ORG, &gone.endpoint.id, None).is_empty());
    let kept = d.event_deliveries(ORG, &paid).unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].state, DeliveryState::Pending);
    assert_eq!(kept[0].attempts.len(), 1);
    assert_eq!(t.count("SELECT COUNT(*) FROM keyhook_attempts"), 1);
    assert_eq!(t.count("SELECT COUNT(*) FROM keyhook_events"), 1);
    assert_eq!(d.backlog(ORG).unwrap(), 1);

    let again = d.purge(Duration::ZERO).unwrap();
    assert_eq!((again.events, again.deliveries), (0, 0));
    d.shutdown(WAIT).unwrap();
}

#[test]
fn background_retention_purges_finished_deliveries_only() {
    let (t, registry) = setup();
    let rx_ok = Receiver::ok();
    let rx_down = Receiver::start(|_| Reply::status(500));
    endpoint(&registry, ORG, &rx_ok.url("/"), &[CREATED]);
    let down = endpoint(&registry, ORG, &rx_down.url("/"), &[PAID]);
    let d = builder(&t, &registry)
        .retry_policy(schedule(2, Duration::from_secs(3600)))
        .retention(Some(Duration::from_millis(1)))
        .retention_interval(Duration::from_millis(200))
        .start()
        .unwrap();
    let delivered = d.emit(ORG, CREATED, &json!({})).unwrap();
    let pending = d.emit(ORG, PAID, &json!({})).unwrap();
    assert!(rx_ok.wait_for(1, WAIT));
    assert!(rx_down.wait_for(1, WAIT));
    assert!(
        wait_until(WAIT, || matches!(
            d.event_deliveries(ORG, &delivered),
            Err(Error::NotFound { .. })
        )),
        "the delivered event was not purged in the background"
    );
    std::thread::sleep(Duration::from_millis(500));
    let kept = d.event_deliveries(ORG, &pending).unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].state, DeliveryState::Pending);
    assert_eq!(all(&d, ORG, &down.endpoint.id, None).len(), 1);
    assert_eq!(t.count("SELECT COUNT(*) FROM keyhook_deliveries"), 1);
    d.shutdown(WAIT).unwrap();
}

// ------------------------------------------------------------------ stats

#[test]
fn endpoint_stats_and_backlog_count_by_state() {
    let (t, registry) = setup();
    let rx_flaky = scripted(vec![Reply::status(500), Reply::status(204)]);
    let rx_down = Receiver::start(|_| Reply::status(500));
    let rx_gone = Receiver::start(|_| Reply::status(410));
    let good = endpoint(&registry, ORG, &rx_flaky.url("/"), &[CREATED]);
    let down = endpoint(&registry, ORG, &rx_down.url("/"), &[PAID]);
    let gone = endpoint(&registry, ORG, &rx_gone.url("/"), &[GONE]);
    let quiet = endpoint(&registry, ORG, &rx_down.url("/quiet"), &[QUIET]);
    let other = endpoint(&registry, OTHER_ORG, &rx_down.url("/other"), &[PAID]);
    let d = builder(&t, &registry)
        .retry_policy(
            RetryPolicy::new(vec![
                Duration::ZERO,
                Duration::from_millis(150),
                Duration::from_secs(3600),
            ])
            .jitter(0.0),
        )
        .start()
        .unwrap();
    for _ in 0..2 {
        d.emit(ORG, CREATED, &json!({})).unwrap();
        d.emit(ORG, PAID, &json!({})).unwrap();
    }
    d.emit(ORG, GONE, &json!({})).unwrap();
    d.emit(OTHER_ORG, PAID, &json!({})).unwrap();
    wait_for_state(&d, ORG, &good.endpoint.id, DeliveryState::Delivered, 2);
    wait_for_state(&d, ORG, &gone.endpoint.id, DeliveryState::Failed, 1);
    wait_for_attempts(&d, ORG, &down.endpoint.id, 2, 2);
    wait_for_attempts(&d, OTHER_ORG, &other.endpoint.id, 1, 2);

    let s = checked_stats(&d, &good, (0, 2, 0), 3);
    let rate = s.success_rate_24h.expect("attempts were made");
    assert!((rate - 2.0 / 3.0).abs() < 1e-9, "{s:?}");

    let s = checked_stats(&d, &down, (2, 0, 0), 4);
    assert_eq!(s.success_rate_24h, Some(0.0), "{s:?}");

    let s = checked_stats(&d, &gone, (0, 0, 1), 1);
    assert_eq!(s.success_rate_24h, Some(0.0), "{s:?}");

    let s = checked_stats(&d, &quiet, (0, 0, 0), 0);
    assert_eq!(s.success_rate_24h, None, "{s:?}");

    assert_eq!(d.backlog(ORG).unwrap(), 2);
    assert_eq!(d.backlog(OTHER_ORG).unwrap(), 1);
    assert_eq!(d.backlog("org_nobody").unwrap(), 0);
    assert_not_found(d.endpoint_stats(OTHER_ORG, &good.endpoint.id), "endpoint");
    d.shutdown(WAIT).unwrap();
}

// -------------------------------------------------------------- bad input

#[test]
fn history_rejects_bad_cursors_ranges_and_limits() {
    let (t, registry) = setup();
    let rx = Receiver::ok();
    let ep = endpoint(&registry, ORG, &rx.url("/"), &[CREATED]);
    let id = ep.endpoint.id.as_str();
    let d = builder(&t, &registry).start().unwrap();
    for i in 0..3 {
        d.emit(ORG, CREATED, &json!({ "i": i })).unwrap();
    }
    wait_for_state(&d, ORG, id, DeliveryState::Delivered, 3);
    let q = HistoryQuery {
        limit: 1,
        ..HistoryQuery::default()
    };
    let cursor = d.history(ORG, id, &q).unwrap().next_cursor.unwrap();
    let with = |cursor: &str| HistoryQuery {
        cursor: Some(cursor.to_owned()),
        ..q.clone()
    };
    assert_eq!(
        d.history(ORG, id, &with(&cursor)).unwrap().deliveries.len(),
        1
    );

    // Tampered: flip one character (in the position part).
    let mut chars: Vec<char> = cursor.chars().collect();
    chars[5] = if chars[5] == 'A' { 'B' } else { 'A' };
    let tampered: String = chars.into_iter().collect();
    assert_invalid_input(d.history(ORG, id, &with(&tampered)), "cursor");
    assert_invalid_input(d.history(ORG, id, &with("not a cursor!")), "cursor");
    assert_invalid_input(
        d.history(ORG, id, &with(&format!("{cursor}AAAA"))),
        "cursor",
    );
    // Reused with other filters.
    let other_state = HistoryQuery {
        state: Some(DeliveryState::Delivered),
        ..with(&cursor)
    };
    assert_invalid_input(d.history(ORG, id, &other_state), "cursor");
    let other_since = HistoryQuery {
        since: Some(SystemTime::now() - DAY),
        ..with(&cursor)
    };
    assert_invalid_input(d.history(ORG, id, &other_since), "cursor");

    let now = SystemTime::now();
    let range = |since: SystemTime, until: SystemTime| HistoryQuery {
        since: Some(since),
        until: Some(until),
        ..HistoryQuery::default()
    };
    assert_invalid_input(
        d.history(ORG, id, &range(now, now - Duration::from_secs(3600))),
        "since",
    );
    assert_invalid_input(
        d.history(
            ORG,
            id,
            &range(now - MAX_HISTORY_RANGE - DAY, now + Duration::from_secs(1)),
        ),
        "until",
    );
    let within = range(now - MAX_HISTORY_RANGE + DAY, now + Duration::from_secs(1));
    assert_eq!(d.history(ORG, id, &within).unwrap().deliveries.len(), 3);

    for limit in [0, MAX_PAGE_SIZE + 1] {
        let bad = HistoryQuery {
            limit,
            ..HistoryQuery::default()
        };
        assert_invalid_input(d.history(ORG, id, &bad), "limit");
    }
    let biggest = HistoryQuery {
        limit: MAX_PAGE_SIZE,
        ..HistoryQuery::default()
    };
    assert_eq!(d.history(ORG, id, &biggest).unwrap().deliveries.len(), 3);
    assert_not_found(d.history(ORG, "ep_missing", &q), "endpoint");
    d.shutdown(WAIT).unwrap();
}

#[test]
fn recover_rejects_windows_out_of_bounds_and_requeues_nothing() {
    let (_t, _registry, ok, rx, ep, d) = one_attempt_to_flaky();
    let id = ep.endpoint.id.as_str();
    d.emit(ORG, CREATED, &json!({})).unwrap();
    wait_for_state(&d, ORG, id, DeliveryState::Failed, 1);
    ok.store(true, Ordering::SeqCst);

    let now = SystemTime::now();
    assert_invalid_input(
        d.recover(
            ORG,
            id,
            now - MAX_RECOVERY_WINDOW - Duration::from_secs(3600),
        ),
        "since",
    );
    assert_invalid_input(d.recover(ORG, id, now + Duration::from_secs(3600)), "since");
    assert_not_found(d.recover(OTHER_ORG, id, now - DAY), "endpoint");
    assert_not_found(d.recover(ORG, "ep_missing", now - DAY), "endpoint");
    std::thread::sleep(SETTLE);
    assert_eq!(rx.count(), 1, "nothing was re-queued");
    let failed = all(&d, ORG, id, None);
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].state, DeliveryState::Failed);
    assert_eq!(failed[0].attempts.len(), 1);

    // Just inside the window works.
    let inside = SystemTime::now() - MAX_RECOVERY_WINDOW + Duration::from_secs(60);
    assert_eq!(d.recover(ORG, id, inside).unwrap(), 1);
    wait_for_state(&d, ORG, id, DeliveryState::Delivered, 1);
    d.shutdown(WAIT).unwrap();
}

#[test]
fn redeliver_refuses_other_organizations_and_malformed_ids_without_sending() {
    let (t, registry) = setup();
    let rx = Receiver::ok();
    let ep = endpoint(&registry, ORG, &rx.url("/"), &[CREATED]);
    let d = builder(&t, &registry).start().unwrap();
    d.emit(ORG, CREATED, &json!({})).unwrap();
    let delivery = wait_for_state(&d, ORG, &ep.endpoint.id, DeliveryState::Delivered, 1).remove(0);
    assert_eq!(rx.count(), 1);

    assert_not_found(d.redeliver(OTHER_ORG, &delivery.id), "delivery");
    for bad in ["", "dlv_x", "dlv_-1", "dlv_0", "dlv_", "dlv_999999", "17"] {
        assert_not_found(d.redeliver(ORG, bad), "delivery");
        assert_not_found(d.delivery(ORG, bad), "delivery");
    }
    std::thread::sleep(SETTLE);
    assert_eq!(rx.count(), 1, "no request was sent");
    assert_eq!(
        d.delivery(ORG, &delivery.id).unwrap(),
        delivery,
        "unchanged"
    );
    d.shutdown(WAIT).unwrap();
}

#[test]
fn enable_of_a_deleted_or_foreign_endpoint_is_not_found() {
    let (_t, registry) = setup();
    let ep = endpoint(&registry, ORG, "http://127.0.0.1:9/", &[CREATED]);
    assert_not_found(registry.enable(OTHER_ORG, &ep.endpoint.id), "endpoint");
    assert!(registry.get(ORG, &ep.endpoint.id).unwrap().enabled);
    registry.delete(ORG, &ep.endpoint.id).unwrap();
    assert_not_found(registry.enable(ORG, &ep.endpoint.id), "endpoint");
    assert_not_found(registry.get(ORG, &ep.endpoint.id), "endpoint");
}
