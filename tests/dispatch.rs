//! Whole-crate delivery behaviour: real SQLite files, a real HTTP receiver on
//! 127.0.0.1, short retry schedules. Waits use generous deadlines and never
//! assert speed, except the fairness test, whose point is latency.

mod common;
#[path = "common/receiver.rs"]
mod receiver;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use common::{
    TempDb, builder, endpoint, http_date, loopback_setup, schedule, unix_now, verify_signed,
    wait_until,
};
use keyhook::signing::VerifyError;
use keyhook::{
    AttemptError, Delivery, DeliveryState, DestinationPolicy, Dispatcher, EndpointOptions,
    EndpointUpdate, Error, NewEvent, RetryPolicy, SigningSecret, WebhookRegistry,
};
use receiver::{Received, Receiver, Reply};
use serde_json::json;

const CREATED: &str = "conversion.created";
const PAID: &str = "payout.sent";
const ORG: &str = "org_1";
const WAIT: Duration = Duration::from_secs(15);
const SETTLE: Duration = Duration::from_millis(400);

fn setup() -> (TempDb, WebhookRegistry) {
    loopback_setup(&[
        (CREATED, "A new referred purchase"),
        (PAID, "A payout was sent"),
    ])
}

/// Waits until the newest delivery to the endpoint leaves `Pending`, and returns it.
fn wait_settled(d: &Dispatcher, org: &str, endpoint_id: &str) -> Delivery {
    let mut last = None;
    let settled = wait_until(WAIT, || {
        let history = d.deliveries(org, endpoint_id, 1).unwrap();
        let done = history
            .first()
            .is_some_and(|h| h.state != DeliveryState::Pending);
        last = history.into_iter().next();
        done
    });
    assert!(settled, "delivery did not settle: {last:?}");
    last.unwrap()
}

fn statuses(d: &Delivery) -> Vec<Option<u16>> {
    d.attempts.iter().map(|a| a.status_code).collect()
}

fn verify_with(r: &Received, secrets: &[SigningSecret]) -> Result<(), VerifyError> {
    verify_signed(|name| r.header(name), &r.body, secrets)
}

/// The distinct `webhook-id`s the receiver has seen.
fn arrived_ids(rx: &Receiver) -> HashSet<String> {
    rx.received()
        .iter()
        .map(|r| r.header("webhook-id").unwrap().to_owned())
        .collect()
}

/// Runs `f(thread)` on `threads` threads at once and gathers the results.
fn on_threads<T: Send>(threads: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    std::thread::scope(|s| {
        let f = &f;
        let handles: Vec<_> = (0..threads).map(|i| s.spawn(move || f(i))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// A receiver answering from a list, one reply per request in order; the last
/// reply repeats.
fn scripted(replies: Vec<Reply>) -> Receiver {
    let n = AtomicUsize::new(0);
    Receiver::start(move |_| {
        let i = n.fetch_add(1, Ordering::SeqCst);
        replies[i.min(replies.len() - 1)].clone()
    })
}

#[test]
fn body_is_the_standard_envelope_and_headers_are_signed() {
    let (t, registry) = setup();
    let rx = Receiver::ok();
    let ep = registry
        .create(
            ORG,
            &rx.url("/hook?tenant=7"),
            &[CREATED],
            EndpointOptions {
                headers: vec![("X-Receiver-Token".into(), "tok_abc123".into())],
                ..EndpointOptions::default()
            },
        )
        .unwrap();
    let d = builder(&t, &registry).start().unwrap();
    let data = json!({"amount": 12, "currency": "EUR", "note": "é \"quoted\""});
    let id = d.emit(ORG, CREATED, &data).unwrap();
    assert!(rx.wait_for(1, WAIT));
    let got = &rx.received()[0];

    assert_eq!(got.method, "POST");
    assert_eq!(got.path, "/hook?tenant=7");
    let body: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    let obj = body.as_object().unwrap();
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["data", "timestamp", "type"]);
    assert_eq!(obj["type"], CREATED);
    assert_eq!(obj["data"], data);
    let ts = obj["timestamp"].as_str().unwrap();
    assert!(
        ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
        "timestamp {ts:?} is not RFC 3339 UTC"
    );

    assert_eq!(got.header("content-type"), Some("application/json"));
    let ua = got.header("user-agent").unwrap();
    assert!(ua.starts_with("keyhook/"), "user-agent {ua:?}");
    assert_eq!(got.header("webhook-id"), Some(id.as_str()));
    let sent_at: i64 = got.header("webhook-timestamp").unwrap().parse().unwrap();
    assert!(
        (sent_at - unix_now()).abs() <= 30,
        "webhook-timestamp {sent_at} is far from now {}",
        unix_now()
    );
    verify_with(got, std::slice::from_ref(&ep.secret)).unwrap();
    assert!(verify_with(got, &[SigningSecret::generate().unwrap()]).is_err());
    assert_eq!(got.header("x-receiver-token"), Some("tok_abc123"));

    d.shutdown(WAIT).unwrap();
}

#[test]
fn retries_resend_the_same_id_and_bytes_with_a_fresh_timestamp() {
    let (t, registry) = setup();
    let rx = scripted(vec![
        Reply::status(500),
        Reply::status(500),
        Reply::status(204),
    ]);
    let ep = endpoint(&registry, ORG, &rx.url("/"), &[CREATED]);
    // One second apart, so each attempt falls in a later second.
    let d = builder(&t, &registry)
        .retry_policy(schedule(5, Duration::from_millis(1000)))
        .start()
        .unwrap();
    let id = d.emit(ORG, CREATED, &json!({"n": 1})).unwrap();
    let delivery = wait_settled(&d, ORG, &ep.endpoint.id);
    assert_eq!(delivery.state, DeliveryState::Delivered);
    assert_eq!(statuses(&delivery), [Some(500), Some(500), Some(204)]);
    assert_eq!(delivery.attempts[0].error, Some(AttemptError::Status));
    assert_eq!(delivery.attempts[2].error, None);

    let got = rx.received();
    assert_eq!(got.len(), 3);
    for r in &got {
        assert_eq!(r.header("webhook-id"), Some(id.as_str()));
        assert_eq!(r.body, got[0].body, "body bytes differ between attempts");
        verify_with(r, std::slice::from_ref(&ep.secret)).unwrap();
    }
    let stamps: Vec<i64> = got
        .iter()
        .map(|r| r.header("webhook-timestamp").unwrap().parse().unwrap())
        .collect();
    assert!(
        stamps[0] < stamps[1] && stamps[1] < stamps[2],
        "webhook-timestamp is not per attempt: {stamps:?}"
    );
    d.shutdown(WAIT).unwrap();
}

#[test]
fn receiver_down_then_up_is_delivered() {
    let (t, registry) = setup();
    let addr = Receiver::ok().addr(); // bound, then dropped: the port is closed
    let ep = endpoint(&registry, ORG, &format!("http://{addr}/hook"), &[CREATED]);
    let connect_failures = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&connect_failures);
    let d = builder(&t, &registry)
        .retry_policy(schedule(40, Duration::from_millis(250)))
        .on_attempt(move |r| {
            if r.error == Some(AttemptError::Connect) {
                seen.fetch_add(1, Ordering::SeqCst);
            }
        })
        .start()
        .unwrap();
    let id = d.emit(ORG, CREATED, &json!({"n": 1})).unwrap();
    assert!(
        wait_until(WAIT, || connect_failures.load(Ordering::SeqCst) >= 1),
        "no failed attempt with a Connect error was reported"
    );
    let history = d.deliveries(ORG, &ep.endpoint.id, 1).unwrap();
    assert_eq!(history[0].attempts[0].error, Some(AttemptError::Connect));
    assert_eq!(history[0].attempts[0].status_code, None);

    let rx = Receiver::start_on(addr, |_| Reply::status(204));
    assert!(
        rx.wait_for(1, WAIT),
        "not delivered once the receiver came back"
    );
    assert_eq!(rx.received()[0].header("webhook-id"), Some(id.as_str()));
    let delivery = wait_settled(&d, ORG, &ep.endpoint.id);
    assert_eq!(delivery.state, DeliveryState::Delivered);
    assert_eq!(delivery.attempts.last().unwrap().status_code, Some(204));
    d.shutdown(WAIT).unwrap();
}

#[test]
fn slow_receiver_times_out_and_is_retried_without_overlap() {
    let (t, registry) = setup();
    let receiver_delay = Duration::from_millis(1500);
    let in_progress: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let overlapped = Arc::new(AtomicBool::new(false));
    let (progress, overlap) = (Arc::clone(&in_progress), Arc::clone(&overlapped));
    let rx = Receiver::start(move |req| {
        let id = req.header("webhook-id").unwrap_or_default().to_owned();
        {
            let mut map = progress.lock().unwrap();
            let n = map.entry(id.clone()).or_default();
            *n += 1;
            if *n > 1 {
                overlap.store(true, Ordering::SeqCst);
            }
        }
        std::thread::sleep(receiver_delay);
        *progress.lock().unwrap().get_mut(&id).unwrap() -= 1;
        Reply::status(204)
    });
    let ep = endpoint(&registry, ORG, &rx.url("/"), &[CREATED]);
    // The retry waits longer than the receiver takes, so a second request
    // while the first is still being answered can only come from a worker
    // that claimed a delivery already in flight.
    let d = builder(&t, &registry)
        .workers(4)
        .request_timeout(Duration::from_millis(500))
        .retry_policy(
            RetryPolicy::new(vec![Duration::ZERO, Duration::from_millis(200)])
                .jitter(0.0)
                .throttle_delay(Duration::from_millis(1500)),
        )
        .start()
        .unwrap();
    let id = d.emit(ORG, CREATED, &json!({"n": 1})).unwrap();
    let delivery = wait_settled(&d, ORG, &ep.endpoint.id);
    assert_eq!(delivery.state, DeliveryState::Failed);
    assert_eq!(delivery.attempts.len(), 2);
    for a in &delivery.attempts {
        assert_eq!(a.error, Some(AttemptError::Timeout), "{a:?}");
        assert_eq!(a.status_code, None);
        assert!(
            a.duration < Duration::from_millis(1400),
            "the attempt waited past the request timeout: {:?}",
            a.duration
        );
    }
    // The receiver records a request after answering it.
    assert!(rx.wait_for(2, WAIT));
    std::thread::sleep(SETTLE);
    let got = rx.received();
    assert_eq!(got.len(), 2, "duplicate requests: {got:?}");
    assert!(
        got.iter()
            .all(|r| r.header("webhook-id") == Some(id.as_str()))
    );
    let (first, second) = (got[0].at.min(got[1].at), got[0].at.max(got[1].at));
    assert!(
        second - first >= Duration::from_millis(1500),
        "retry came {:?} after the first attempt started",
        second - first
    );
    assert!(
        !overlapped.load(Ordering::SeqCst),
        "two requests overlapped"
    );
    d.shutdown(WAIT).unwrap();
}

#[test]
fn gone_disables_the_endpoint() {
    let (t, registry) = setup();
    let rx = Receiver::start(|_| Reply::status(410));
    let ep = endpoint(&registry, ORG, &rx.url("/"), &[CREATED]);
    let disabled_reported = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&disabled_reported);
    let d = builder(&t, &registry)
        .on_attempt(move |r| {
            if r.endpoint_disabled() && r.failed() {
                flag.store(true, Ordering::SeqCst);
            }
        })
        .start()
        .unwrap();
    d.emit(ORG, CREATED, &json!({"n": 1})).unwrap();
    let delivery = wait_settled(&d, ORG, &ep.endpoint.id);
    assert_eq!(delivery.state, DeliveryState::Failed);
    assert_eq!(statuses(&delivery), [Some(410)]);
    let now = registry.get(ORG, &ep.endpoint.id).unwrap();
    assert!(!now.enabled);
    assert!(now.disabled_reason.is_some_and(|r| !r.is_empty()));
    assert!(wait_until(WAIT, || disabled_reported.load(Ordering::SeqCst)));

    let later = d.emit(ORG, CREATED, &json!({"n": 2})).unwrap();
    assert!(d.event_deliveries(ORG, &later).unwrap().is_empty());
    std::thread::sleep(SETTLE);
    assert_eq!(rx.count(), 1);
    assert_eq!(d.deliveries(ORG, &ep.endpoint.id, 10).unwrap().len(), 1);
    d.shutdown(WAIT).unwrap();
}

#[test]
fn redirects_are_not_followed() {
    let (t, registry) = setup();
    let target = Receiver::ok();
    let location = target.url("/moved");
    let rx = Receiver::start(move |_| Reply::status(302).header("location", &location));
    let ep = endpoint(&registry, ORG, &rx.url("/"), &[CREATED]);
    let d = builder(&t, &registry)
        .retry_policy(schedule(2, Duration::from_millis(200)))
        .start()
        .unwrap();
    d.emit(ORG, CREATED, &json!({"n": 1})).unwrap();
    let delivery = wait_settled(&d, ORG, &ep.endpoint.id);
    assert_eq!(delivery.state, DeliveryState::Failed);
    assert_eq!(statuses(&delivery), [Some(302), Some(302)]);
    assert!(
        delivery
            .attempts
            .iter()
            .all(|a| a.error == Some(AttemptError::Status))
    );
    std::thread::sleep(SETTLE);
    assert_eq!(target.count(), 0, "the redirect was followed");
    assert_eq!(rx.count(), 2);
    d.shutdown(WAIT).unwrap();
}

/// The first attempt gets a 503 with `retry-after` (from `retry_after()`,
/// asking for at least 2 s); the schedule says 1 s, which Retry-After may
/// stretch to 2 s. Asserts the second attempt waited for it.
fn assert_retry_after_honoured(retry_after: impl Fn() -> String + Send + Sync + 'static) {
    let (t, registry) = setup();
    let n = AtomicUsize::new(0);
    let rx = Receiver::start(move |_| match n.fetch_add(1, Ordering::SeqCst) {
        0 => Reply::status(503).header("retry-after", &retry_after()),
        _ => Reply::status(204),
    });
    let ep = endpoint(&registry, ORG, &rx.url("/"), &[CREATED]);
    let d = builder(&t, &registry)
        .retry_policy(
            RetryPolicy::new(vec![Duration::ZERO, Duration::from_secs(1)])
                .jitter(0.0)
                .throttle_delay(Duration::from_millis(100)),
        )
        .start()
        .unwrap();
    d.emit(ORG, CREATED, &json!({"n": 1})).unwrap();
    let delivery = wait_settled(&d, ORG, &ep.endpoint.id);
    assert_eq!(delivery.state, DeliveryState::Delivered);
    assert_eq!(statuses(&delivery), [Some(503), Some(204)]);
    let got = rx.received();
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= Duration::from_millis(1800),
        "second attempt came {gap:?} after the first; Retry-After asked for 2 s or more"
    );
    d.shutdown(WAIT).unwrap();
}

#[test]
fn retry_after_is_honoured() {
    assert_retry_after_honoured(|| "2".to_owned());
}

#[test]
fn retry_after_as_an_http_date_is_honoured() {
    // The date names a whole second 3 to 4 s ahead.
    assert_retry_after_honoured(|| http_date(SystemTime::now() + Duration::from_secs(4)));
}

#[test]
fn exhausted_schedule_fails_and_stays_in_history() {
    let (t, registry) = setup();
    let rx = Receiver::start(|_| Reply::status(500).body("broken"));
    let ep = endpoint(&registry, ORG, &rx.url("/"), &[CREATED]);
    // (attempt, failed, retry scheduled) as the observer saw them.
    let reports: Arc<Mutex<Vec<(u32, bool, bool)>>> = Arc::default();
    let seen = Arc::clone(&reports);
    let d = builder(&t, &registry)
        .retry_policy(schedule(3, Duration::from_millis(100)))
        .on_attempt(move |r| {
            seen.lock()
                .unwrap()
                .push((r.attempt, r.failed(), r.retry_at().is_some()));
        })
        .start()
        .unwrap();
    let id = d.emit(ORG, CREATED, &json!({"n": 1})).unwrap();
    let delivery = wait_settled(&d, ORG, &ep.endpoint.id);
    assert_eq!(delivery.state, DeliveryState::Failed);
    assert_eq!(delivery.attempts.len(), 3);
    assert_eq!(delivery.next_attempt_at, None);
    assert_eq!(delivery.attempts[2].response_excerpt, b"broken");
    assert!(wait_until(WAIT, || reports.lock().unwrap().len() == 3));
    std::thread::sleep(SETTLE);
    assert_eq!(rx.count(), 3, "attempts after the schedule was used up");
    assert_eq!(
        *reports.lock().unwrap(),
        [(1, false, true), (2, false, true), (3, true, false)]
    );
    let by_event = d.event_deliveries(ORG, &id).unwrap();
    assert_eq!(by_event.len(), 1);
    assert_eq!(by_event[0].state, DeliveryState::Failed);
    assert_eq!(by_event[0].attempts.len(), 3);
    d.shutdown(WAIT).unwrap();
}

#[test]
fn rotation_signs_with_old_and_new_secret() {
    let (t, registry) = setup();
    let rx = Receiver::ok();
    let ep = endpoint(&registry, ORG, &rx.url("/"), &[CREATED]);
    let old = ep.secret.clone();
    let new = registry
        .rotate_secret(ORG, &ep.endpoint.id, Some(Duration::from_secs(3600)))
        .unwrap();
    assert_ne!(old.expose(), new.expose());
    let d = builder(&t, &registry).start().unwrap();
    d.emit(ORG, CREATED, &json!({"n": 1})).unwrap();
    assert!(rx.wait_for(1, WAIT));
    let got = &rx.received()[0];
    let signature = got.header("webhook-signature").unwrap();
    let entries: Vec<&str> = signature.split(' ').collect();
    assert_eq!(entries.len(), 2, "{signature:?}");
    assert!(
        entries.iter().all(|e| e.starts_with("v1,")),
        "{signature:?}"
    );
    verify_with(got, &[old]).expect("verifies with the old secret alone");
    verify_with(got, &[new]).expect("verifies with the new secret alone");
    assert!(verify_with(got, &[SigningSecret::generate().unwrap()]).is_err());
    d.shutdown(WAIT).unwrap();
}

#[test]
fn loopback_name_is_refused_at_connect_time() {
    let (t, registry) = setup();
    let rx = Receiver::ok();
    let url = format!("http://localhost:{}/hook", rx.addr().port());
    let ep = endpoint(&registry, ORG, &url, &[CREATED]);

    let strict = builder(&t, &registry)
        .retry_policy(schedule(1, Duration::ZERO))
        .destination_policy(DestinationPolicy::new().allow_http(true))
        .start()
        .unwrap();
    strict.emit(ORG, CREATED, &json!({"n": 1})).unwrap();
    let delivery = wait_settled(&strict, ORG, &ep.endpoint.id);
    strict.shutdown(WAIT).unwrap();
    assert_eq!(delivery.state, DeliveryState::Failed);
    assert_eq!(delivery.attempts.len(), 1);
    assert_eq!(
        delivery.attempts[0].error,
        Some(AttemptError::DestinationRefused)
    );
    assert_eq!(delivery.attempts[0].status_code, None);
    assert_eq!(rx.count(), 0);

    let lenient = builder(&t, &registry).start().unwrap();
    let id = lenient.emit(ORG, CREATED, &json!({"n": 2})).unwrap();
    assert!(rx.wait_for(1, WAIT), "not delivered with loopback allowed");
    assert_eq!(rx.received()[0].header("webhook-id"), Some(id.as_str()));
    lenient.shutdown(WAIT).unwrap();
}

#[test]
fn idempotency_key_deduplicates_per_org() {
    let (t, registry) = setup();
    let rx = Receiver::ok();
    endpoint(&registry, ORG, &rx.url("/"), &[CREATED]);
    let d = builder(&t, &registry).start().unwrap();
    let event = || {
        NewEvent::new(CREATED, &json!({"order": 1234}))
            .unwrap()
            .idempotency_key("order-1234")
    };
    let first = d.emit_event(ORG, event()).unwrap();
    let second = d.emit_event(ORG, event()).unwrap();
    assert_eq!(first, second);
    assert!(rx.wait_for(1, WAIT));
    std::thread::sleep(SETTLE);
    assert_eq!(rx.count(), 1);
    assert_eq!(d.event_deliveries(ORG, &first).unwrap().len(), 1);

    let other_org = d.emit_event("org_2", event()).unwrap();
    assert_ne!(other_org, first);
    assert!(d.event_deliveries("org_2", &other_org).unwrap().is_empty());
    d.shutdown(WAIT).unwrap();
}

#[test]
fn bad_emits_are_refused_and_store_nothing() {
    let (t, registry) = setup();
    let rx = Receiver::ok();
    let ep = registry
        .create(
            ORG,
            &rx.url("/"),
            &[] as &[&str],
            EndpointOptions {
                all_event_types: true,
                ..EndpointOptions::default()
            },
        )
        .unwrap();
    let d = builder(&t, &registry).max_body_bytes(200).start().unwrap();

    let err = d.emit(ORG, "conversion.deleted", &json!({})).unwrap_err();
    assert!(
        matches!(&err, Error::UnknownEventType { name } if name == "conversion.deleted"),
        "{err:?}"
    );
    assert!(err.to_string().contains("conversion.deleted"), "{err}");

    let big = "x".repeat(300);
    let err = d.emit(ORG, CREATED, &json!({ "big": big })).unwrap_err();
    assert!(
        matches!(err, Error::PayloadTooLarge { size, limit: 200 } if size > 300),
        "{err:?}"
    );
    assert!(err.to_string().contains("200"), "{err}");

    let empty_key = NewEvent::new(CREATED, &json!({}))
        .unwrap()
        .idempotency_key("");
    let err = d.emit_event(ORG, empty_key).unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidInput {
                field: "idempotency_key",
                ..
            }
        ),
        "{err:?}"
    );

    std::thread::sleep(SETTLE);
    assert_eq!(rx.count(), 0);
    assert!(d.deliveries(ORG, &ep.endpoint.id, 10).unwrap().is_empty());
    // The same data under the limit and a known type goes through: the
    // endpoint was reachable all along.
    d.emit(ORG, CREATED, &json!({})).unwrap();
    assert!(rx.wait_for(1, WAIT));
    d.shutdown(WAIT).unwrap();
}

#[test]
fn batches_are_delivered_or_refused_whole() {
    let (t, registry) = setup();
    let rx = Receiver::ok();
    let ep = endpoint(&registry, ORG, &rx.url("/"), &[CREATED]);
    let d = builder(&t, &registry).workers(4).start().unwrap();
    let events = (0..50)
        .map(|i| NewEvent::new(CREATED, &json!({ "i": i })).unwrap())
        .collect();
    let ids = d.emit_batch(ORG, events).unwrap();
    assert_eq!(ids.len(), 50);
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), 50);
    assert!(rx.wait_for(50, WAIT), "only {} of 50 arrived", rx.count());
    let arrived = arrived_ids(&rx);
    assert_eq!(arrived, ids.iter().cloned().collect());

    let mixed = vec![
        NewEvent::new(CREATED, &json!({"i": 100})).unwrap(),
        NewEvent::new("no.such.type", &json!({})).unwrap(),
        NewEvent::new(CREATED, &json!({"i": 101})).unwrap(),
    ];
    let err = d.emit_batch(ORG, mixed).unwrap_err();
    assert!(matches!(err, Error::UnknownEventType { .. }), "{err:?}");
    std::thread::sleep(SETTLE);
    assert_eq!(rx.count(), 50);
    assert_eq!(d.deliveries(ORG, &ep.endpoint.id, 1000).unwrap().len(), 50);
    d.shutdown(WAIT).unwrap();
}

#[test]
fn only_enabled_subscribed_endpoints_get_deliveries() {
    let (t, registry) = setup();
    // Four workers: with two, the idle endpoint below trips the claim bug that
    // `idle_unproven_endpoints_do_not_block_delivery` covers.
    let d = builder(&t, &registry).workers(4).start().unwrap();

    let lonely = d.emit("org_empty", CREATED, &json!({})).unwrap();
    assert!(lonely.starts_with("msg_"), "{lonely}");
    assert!(d.event_deliveries("org_empty", &lonely).unwrap().is_empty());

    let disabled_rx = Receiver::ok();
    let other_type_rx = Receiver::ok();
    let control_rx = Receiver::ok();
    let disabled = endpoint(&registry, ORG, &disabled_rx.url("/"), &[CREATED]);
    registry
        .update(
            ORG,
            &disabled.endpoint.id,
            EndpointUpdate {
                enabled: Some(false),
                ..EndpointUpdate::default()
            },
        )
        .unwrap();
    endpoint(&registry, ORG, &other_type_rx.url("/"), &[PAID]);
    let control = endpoint(&registry, ORG, &control_rx.url("/"), &[CREATED]);

    let id = d.emit(ORG, CREATED, &json!({})).unwrap();
    let deliveries = d.event_deliveries(ORG, &id).unwrap();
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0].endpoint_id, control.endpoint.id);
    assert!(control_rx.wait_for(1, WAIT));
    std::thread::sleep(SETTLE);
    assert_eq!(disabled_rx.count(), 0);
    assert_eq!(other_type_rx.count(), 0);
    d.shutdown(WAIT).unwrap();
}

/// Three endpoints whose receiver never answers in time, ten events each,
/// saturate what slow endpoints may hold; then twenty events, one every
/// 100 ms, to a healthy endpoint must each arrive within a second. With
/// `proven`, the healthy endpoint has had a success before; without, it is
/// brand new.
fn healthy_endpoint_is_served_beside_slow_ones(proven: bool) {
    let (t, registry) = setup();
    let slow_rx = Receiver::start(|_| Reply::status(204).delay(Duration::from_secs(3)));
    let healthy_rx = Receiver::ok();
    let healthy = endpoint(&registry, ORG, &healthy_rx.url("/healthy"), &[PAID]);
    let d = builder(&t, &registry)
        .workers(4)
        .request_timeout(Duration::from_secs(1))
        .retry_policy(
            schedule(21, Duration::from_millis(100)).throttle_delay(Duration::from_millis(100)),
        )
        .start()
        .unwrap();
    let mut expected = 20;
    if proven {
        // Before the slow endpoints exist.
        d.emit(ORG, PAID, &json!({ "warm": true })).unwrap();
        let warmed = wait_settled(&d, ORG, &healthy.endpoint.id);
        assert_eq!(warmed.state, DeliveryState::Delivered);
        expected += 1;
    }
    let slow: Vec<(String, String)> = (0..3)
        .map(|i| {
            let org = if i == 0 {
                ORG.to_owned()
            } else {
                format!("org_slow{i}")
            };
            let ep = endpoint(
                &registry,
                &org,
                &slow_rx.url(&format!("/slow{i}")),
                &[CREATED],
            );
            (org, ep.endpoint.id)
        })
        .collect();
    for (org, _) in &slow {
        for i in 0..10 {
            d.emit(org, CREATED, &json!({ "i": i })).unwrap();
        }
    }
    assert!(
        slow_rx.wait_for(3, WAIT),
        "the slow endpoints were not all being attempted"
    );
    // Until their first attempts fail they are new endpoints, like the
    // healthy one, and share the slots of endpoints not known to be healthy;
    // once failing, they leave one of those slots to new endpoints.
    assert!(wait_until(WAIT, || slow.iter().all(|(org, id)| {
        d.deliveries(org, id, 100)
            .unwrap()
            .iter()
            .any(|del| !del.attempts.is_empty())
    })));

    let mut emitted: Vec<(String, Instant)> = Vec::new();
    for i in 0..20 {
        let at = Instant::now();
        let id = d.emit(ORG, PAID, &json!({ "i": i })).unwrap();
        emitted.push((id, at));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        healthy_rx.wait_for(expected, WAIT),
        "only {} of {expected} arrived",
        healthy_rx.count()
    );
    let arrivals: HashMap<String, Instant> = healthy_rx
        .received()
        .into_iter()
        .map(|r| (r.header("webhook-id").unwrap().to_owned(), r.at))
        .collect();
    let late: Vec<(usize, Duration)> = emitted
        .iter()
        .enumerate()
        .map(|(i, (id, at))| (i, arrivals[id] - *at))
        .filter(|(_, waited)| *waited > Duration::from_secs(1))
        .collect();
    assert!(
        late.is_empty(),
        "healthy deliveries late behind slow ones: {late:?}"
    );
    // The slow ones really were timing out meanwhile.
    let slow_history = d.deliveries(&slow[0].0, &slow[0].1, 100).unwrap();
    assert!(
        slow_history
            .iter()
            .flat_map(|h| &h.attempts)
            .any(|a| a.error == Some(AttemptError::Timeout))
    );
    d.shutdown(WAIT).unwrap();
}

#[test]
fn slow_endpoints_do_not_starve_a_healthy_one() {
    healthy_endpoint_is_served_beside_slow_ones(true);
}

#[test]
fn slow_endpoints_do_not_starve_a_new_endpoint() {
    healthy_endpoint_is_served_beside_slow_ones(false);
}

#[test]
fn idle_unproven_endpoints_do_not_block_delivery() {
    let (t, registry) = setup();
    // Registered, never sent anything, so never proven: nothing is due for it.
    let idle_rx = Receiver::ok();
    endpoint(&registry, "org_idle", &idle_rx.url("/"), &[PAID]);
    let rx = Receiver::ok();
    let ep = endpoint(&registry, ORG, &rx.url("/"), &[CREATED]);
    let d = builder(&t, &registry).workers(2).start().unwrap();
    let id = d.emit(ORG, CREATED, &json!({})).unwrap();
    assert!(
        rx.wait_for(1, WAIT),
        "not delivered: {:?}",
        d.deliveries(ORG, &ep.endpoint.id, 1).unwrap()
    );
    assert_eq!(rx.received()[0].header("webhook-id"), Some(id.as_str()));
    assert_eq!(idle_rx.count(), 0);
    d.shutdown(WAIT).unwrap();
}

#[test]
fn a_burst_to_an_endpoint_turning_slow_is_not_sent_twice() {
    let (t, registry) = setup();
    let slow = Arc::new(AtomicBool::new(false));
    let turn = Arc::clone(&slow);
    let rx = Receiver::start(move |_| {
        if turn.load(Ordering::SeqCst) {
            Reply::status(204).delay(Duration::from_millis(1500))
        } else {
            Reply::status(204)
        }
    });
    let ep = endpoint(&registry, ORG, &rx.url("/"), &[CREATED]);
    // Every retry waits far longer than the test runs: any second request
    // for an event is a duplicate, not a retry.
    let d = builder(&t, &registry)
        .workers(2)
        .request_timeout(Duration::from_secs(1))
        .retry_policy(
            RetryPolicy::new(vec![Duration::ZERO, Duration::from_secs(30)])
                .jitter(0.0)
                .throttle_delay(Duration::from_secs(30)),
        )
        .start()
        .unwrap();
    d.emit(ORG, CREATED, &json!({ "warm": true })).unwrap();
    assert_eq!(
        wait_settled(&d, ORG, &ep.endpoint.id).state,
        DeliveryState::Delivered
    );
    slow.store(true, Ordering::SeqCst);
    let events = (0..8)
        .map(|i| NewEvent::new(CREATED, &json!({ "i": i })).unwrap())
        .collect();
    let ids = d.emit_batch(ORG, events).unwrap();
    // Each of the eight takes the full request timeout; wait until every one
    // had its first attempt, and a little longer.
    let all_tried = wait_until(WAIT, || {
        ids.iter().all(|id| {
            d.event_deliveries(ORG, id)
                .unwrap()
                .iter()
                .all(|h| !h.attempts.is_empty())
        })
    });
    assert!(all_tried, "not every event was attempted");
    std::thread::sleep(Duration::from_millis(1500));
    let mut per_id: HashMap<String, usize> = HashMap::new();
    for r in rx.received() {
        *per_id
            .entry(r.header("webhook-id").unwrap().to_owned())
            .or_default() += 1;
    }
    let twice: Vec<(&String, usize)> = ids
        .iter()
        .map(|id| (id, per_id.get(id).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 1)
        .collect();
    assert!(
        twice.is_empty(),
        "sent again before their retry was due: {twice:?}"
    );
    for id in &ids {
        let history = d.event_deliveries(ORG, id).unwrap();
        assert_eq!(history[0].attempts.len(), 1, "{history:?}");
    }
    d.shutdown(WAIT).unwrap();
}

#[test]
fn concurrent_emitters_each_event_delivered_once() {
    let (t, registry) = setup();
    let rx = Receiver::ok();
    endpoint(&registry, ORG, &rx.url("/"), &[CREATED]);
    let d = builder(&t, &registry).workers(4).start().unwrap();
    let ids: Vec<String> = on_threads(8, |thread| {
        (0..100)
            .map(|i| {
                d.emit(ORG, CREATED, &json!({ "t": thread, "i": i }))
                    .unwrap()
            })
            .collect::<Vec<_>>()
    })
    .concat();
    let expected: HashSet<String> = ids.iter().cloned().collect();
    assert_eq!(expected.len(), 800, "event ids are not unique");
    assert!(
        rx.wait_for(800, Duration::from_secs(60)),
        "only {} of 800 arrived",
        rx.count()
    );
    std::thread::sleep(SETTLE);
    let got = rx.received();
    let mut seen = HashSet::new();
    let twice: Vec<String> = got
        .iter()
        .map(|r| r.header("webhook-id").unwrap().to_owned())
        .filter(|id| !seen.insert(id.clone()))
        .collect();
    assert!(twice.is_empty(), "delivered twice: {twice:?}");
    assert_eq!(seen, expected);
    d.shutdown(WAIT).unwrap();
}

#[test]
fn pending_events_survive_shutdown_and_restart() {
    let (t, registry) = setup();
    let rx = Receiver::ok();
    endpoint(&registry, ORG, &rx.url("/"), &[CREATED]);

    let first = builder(&t, &registry).start().unwrap();
    let delivered = first.emit(ORG, CREATED, &json!({"n": 0})).unwrap();
    assert!(rx.wait_for(1, WAIT));
    first.shutdown(WAIT).unwrap();
    first.shutdown(WAIT).unwrap();
    // Emitting on a stopped dispatcher still stores the event.
    let after_shutdown = first.emit(ORG, CREATED, &json!({"n": 1})).unwrap();

    let emit_only = builder(&t, &registry).workers(0).start().unwrap();
    let from_emit_only = emit_only.emit(ORG, CREATED, &json!({"n": 2})).unwrap();
    std::thread::sleep(SETTLE);
    assert_eq!(rx.count(), 1, "delivered with no worker running");
    for id in [&after_shutdown, &from_emit_only] {
        let pending = emit_only.event_deliveries(ORG, id).unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].state, DeliveryState::Pending);
    }
    emit_only.shutdown(WAIT).unwrap();

    let restarted = builder(&t, &registry).start().unwrap();
    assert!(
        rx.wait_for(3, WAIT),
        "pending events not delivered after restart"
    );
    std::thread::sleep(SETTLE);
    let ids: Vec<String> = rx
        .received()
        .iter()
        .map(|r| r.header("webhook-id").unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 3);
    assert_eq!(ids[0], delivered);
    let later: HashSet<&String> = ids[1..].iter().collect();
    assert_eq!(later, HashSet::from([&after_shutdown, &from_emit_only]));
    restarted.shutdown(WAIT).unwrap();
}

#[test]
fn history_is_scoped_to_the_organization() {
    let (t, registry) = setup();
    let rx = Receiver::ok();
    let ep = endpoint(&registry, "org_a", &rx.url("/"), &[CREATED]);
    let d = builder(&t, &registry).start().unwrap();
    let id = d.emit("org_a", CREATED, &json!({})).unwrap();
    assert!(rx.wait_for(1, WAIT));
    assert_eq!(d.deliveries("org_a", &ep.endpoint.id, 10).unwrap().len(), 1);
    assert_eq!(d.event_deliveries("org_a", &id).unwrap().len(), 1);

    let err = d.deliveries("org_b", &ep.endpoint.id, 10).unwrap_err();
    assert!(
        matches!(
            err,
            Error::NotFound {
                kind: "endpoint",
                ..
            }
        ),
        "{err:?}"
    );
    let err = d.event_deliveries("org_b", &id).unwrap_err();
    assert!(
        matches!(err, Error::NotFound { kind: "event", .. }),
        "{err:?}"
    );
    d.shutdown(WAIT).unwrap();
}

#[test]
fn response_excerpt_is_truncated() {
    let (t, registry) = setup();
    let body: Vec<u8> = (0..100u8).map(|i| b'a' + i % 26).collect();
    let reply_body = body.clone();
    let rx = Receiver::start(move |_| Reply::status(200).body(reply_body.clone()));
    let ep = endpoint(&registry, ORG, &rx.url("/"), &[CREATED]);
    let d = builder(&t, &registry)
        .response_excerpt_bytes(16)
        .start()
        .unwrap();
    d.emit(ORG, CREATED, &json!({})).unwrap();
    let delivery = wait_settled(&d, ORG, &ep.endpoint.id);
    assert_eq!(delivery.state, DeliveryState::Delivered);
    assert_eq!(delivery.attempts[0].status_code, Some(200));
    assert_eq!(delivery.attempts[0].response_excerpt, &body[..16]);
    d.shutdown(WAIT).unwrap();
}

/// Events stored in the database, counted with the engine's plain client.
fn stored_events(t: &TempDb) -> i64 {
    t.count("SELECT COUNT(*) FROM keyhook_events")
}

#[test]
fn concurrent_emits_share_commits_but_fail_alone() {
    // Concurrent emits are written together by the pump, each in its own
    // savepoint: a bad one must fail alone and leave nothing behind.
    let (t, registry) = setup();
    let rx = Receiver::ok();
    endpoint(&registry, ORG, &rx.url("/"), &[CREATED]);
    let d = builder(&t, &registry)
        .workers(4)
        .max_body_bytes(300)
        .start()
        .unwrap();
    let big = "x".repeat(400);
    let results = on_threads(6, |thread| {
        (0..60)
            .map(|i| {
                let n = thread * 1000 + i;
                let result = match n % 3 {
                    0 => d.emit(ORG, CREATED, &json!({ "n": n })),
                    1 => d.emit(ORG, "no.such.type", &json!({ "n": n })),
                    _ => d.emit(ORG, CREATED, &json!({ "n": n, "big": big })),
                };
                (n, result)
            })
            .collect::<Vec<_>>()
    });
    let mut good = HashSet::new();
    for (n, result) in results.into_iter().flatten() {
        match (n % 3, result) {
            (0, Ok(id)) => assert!(good.insert(id)),
            (1, Err(Error::UnknownEventType { name })) => assert_eq!(name, "no.such.type"),
            (2, Err(Error::PayloadTooLarge { limit: 300, .. })) => {}
            (kind, other) => panic!("emit {n} (kind {kind}) returned {other:?}"),
        }
    }
    assert_eq!(good.len(), 120);
    assert!(
        rx.wait_for(120, Duration::from_secs(60)),
        "only {} of 120 arrived",
        rx.count()
    );
    std::thread::sleep(SETTLE);
    let arrived = arrived_ids(&rx);
    assert_eq!(arrived, good);
    assert_eq!(rx.count(), 120, "some event arrived twice");
    assert_eq!(
        stored_events(&t),
        120,
        "a refused emit left an event behind"
    );
    d.shutdown(WAIT).unwrap();
}

#[test]
fn concurrent_emits_with_one_idempotency_key_store_one_event() {
    let (t, registry) = setup();
    let rx = Receiver::ok();
    endpoint(&registry, ORG, &rx.url("/"), &[CREATED]);
    let d = builder(&t, &registry).workers(2).start().unwrap();
    let start = std::sync::Barrier::new(8);
    let ids: HashSet<String> = on_threads(8, |_| {
        start.wait();
        let event = NewEvent::new(CREATED, &json!({"order": 77}))
            .unwrap()
            .idempotency_key("order-77");
        d.emit_event(ORG, event).unwrap()
    })
    .into_iter()
    .collect();
    assert_eq!(ids.len(), 1, "one key gave several ids: {ids:?}");
    assert!(rx.wait_for(1, WAIT));
    std::thread::sleep(SETTLE);
    assert_eq!(rx.count(), 1);
    assert_eq!(stored_events(&t), 1);
    d.shutdown(WAIT).unwrap();
}

#[test]
fn emits_racing_a_shutdown_are_all_stored_and_delivered_later() {
    let (t, registry) = setup();
    let rx = Receiver::ok();
    endpoint(&registry, ORG, &rx.url("/"), &[CREATED]);
    let d = builder(&t, &registry).workers(2).start().unwrap();
    let stop_after = AtomicUsize::new(0);
    let ids: Vec<String> = std::thread::scope(|s| {
        let emitters: Vec<_> = (0..4)
            .map(|thread| {
                let (d, stop_after) = (&d, &stop_after);
                s.spawn(move || {
                    let mut ids = Vec::new();
                    for i in 0..150 {
                        // Every call returns, before, during or after the
                        // shutdown, and every id it returns is stored.
                        ids.push(
                            d.emit(ORG, CREATED, &json!({ "t": thread, "i": i }))
                                .unwrap(),
                        );
                        stop_after.fetch_add(1, Ordering::SeqCst);
                    }
                    ids
                })
            })
            .collect();
        assert!(wait_until(WAIT, || stop_after.load(Ordering::SeqCst) >= 100));
        d.shutdown(WAIT).unwrap();
        emitters
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert_eq!(ids.len(), 600);
    assert_eq!(stored_events(&t), 600);
    let restarted = builder(&t, &registry).workers(2).start().unwrap();
    assert!(
        rx.wait_for(600, Duration::from_secs(60)),
        "only {} of 600 arrived after restart",
        rx.count()
    );
    let arrived = arrived_ids(&rx);
    assert_eq!(arrived, ids.into_iter().collect());
    restarted.shutdown(WAIT).unwrap();
}

#[test]
fn a_callback_may_emit() {
    let (t, registry) = setup();
    let rx = Receiver::ok();
    endpoint(&registry, ORG, &rx.url("/"), &[CREATED, PAID]);
    let slot: Arc<std::sync::OnceLock<std::sync::Weak<Dispatcher>>> = Arc::default();
    let (sent, followups) = std::sync::mpsc::channel();
    let hook_slot = Arc::clone(&slot);
    let sent = Mutex::new(sent);
    let once = AtomicBool::new(false);
    let d = Arc::new(
        builder(&t, &registry)
            .on_attempt(move |r| {
                let Some(d) = hook_slot.get().and_then(std::sync::Weak::upgrade) else {
                    return;
                };
                if r.delivered() && !once.swap(true, Ordering::SeqCst) {
                    let followup = d.emit(ORG, PAID, &json!({ "after": r.event_id }));
                    let _ = sent.lock().unwrap().send(followup);
                }
            })
            .start()
            .unwrap(),
    );
    slot.set(Arc::downgrade(&d)).unwrap();
    let first = d.emit(ORG, CREATED, &json!({})).unwrap();
    let followup = followups
        .recv_timeout(WAIT)
        .expect("the callback's emit never returned")
        .unwrap();
    assert_ne!(followup, first);
    assert!(
        rx.wait_for(2, WAIT),
        "the follow-up event was not delivered"
    );
    let arrived = arrived_ids(&rx);
    assert!(arrived.contains(&first) && arrived.contains(&followup));
    d.shutdown(WAIT).unwrap();
}

#[test]
fn a_callback_waiting_on_an_emitting_thread_does_not_deadlock() {
    // The hook hands every delivered attempt to another thread and waits
    // until it is taken; that thread emits. Callbacks run on their own
    // thread, so the pump, which writes emits, never waits for the hook.
    let (t, registry) = setup();
    let rx = Receiver::ok();
    endpoint(&registry, ORG, &rx.url("/"), &[CREATED, PAID]);
    let (handoff, taken) = std::sync::mpsc::sync_channel::<String>(0);
    let handoff = Mutex::new(handoff);
    let d = Arc::new(
        builder(&t, &registry)
            .on_attempt(move |r| {
                if r.delivered() {
                    let _ = handoff.lock().unwrap().send(r.event_id.to_owned());
                }
            })
            .start()
            .unwrap(),
    );
    let consumer = {
        let d = Arc::clone(&d);
        std::thread::spawn(move || {
            let mut followups = Vec::new();
            for (n, id) in taken.iter().enumerate() {
                if n < 20 {
                    followups.push(d.emit(ORG, PAID, &json!({ "after": id })).unwrap());
                }
                if n + 1 == 40 {
                    break;
                }
            }
            followups
        })
    };
    for i in 0..20 {
        d.emit(ORG, CREATED, &json!({ "i": i })).unwrap();
    }
    assert!(
        rx.wait_for(40, Duration::from_secs(30)),
        "stalled: {} of 40 arrived",
        rx.count()
    );
    let followups = consumer.join().unwrap();
    assert_eq!(followups.len(), 20);
    assert!(followups.iter().all(|id| arrived_ids(&rx).contains(id)));
    d.shutdown(WAIT).unwrap();
}
