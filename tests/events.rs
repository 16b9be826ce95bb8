//! What a Developers settings page needs beyond emit and deliver: test
//! events, replaying what an endpoint missed, the event log, the
//! organization-wide delivery log, the event-type catalogue's lifecycle,
//! random delivery ids. Real SQLite files, real HTTP on 127.0.0.1.

mod common;
#[path = "common/receiver.rs"]
mod receiver;

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use common::{
    TempDb, assert_invalid_input, assert_not_found_id, builder, endpoint, loopback_setup,
    set_enabled, verify_signed, wait_until,
};
use keyhook::{
    DeliveryState, Dispatcher, EndpointUpdate, Error, EventQuery, EventTypeUpdate, HistoryQuery,
    NewEvent, WebhookRegistry,
};
use receiver::Receiver;
use serde_json::json;

const CREATED: &str = "conversion.created";
const PAID: &str = "payout.created";
const ORG: &str = "org_1";
const WAIT: Duration = Duration::from_secs(20);

fn setup() -> (TempDb, WebhookRegistry) {
    loopback_setup(&[
        (CREATED, "A new referred purchase is detected"),
        (PAID, "A new payout batch is created"),
    ])
}

fn events_stored(t: &TempDb) -> i64 {
    t.count("SELECT COUNT(*) FROM keyhook_events")
}

fn wait_delivered(d: &Dispatcher, id: &str) {
    assert!(
        wait_until(WAIT, || d
            .event(ORG, id)
            .unwrap()
            .deliveries
            .iter()
            .all(|del| del.state == DeliveryState::Delivered)),
        "{id} not delivered"
    );
}

#[test]
fn a_test_event_goes_to_one_endpoint_only_signed_and_marked() {
    let (t, registry) = setup();
    let (rx, other_rx) = (Receiver::ok(), Receiver::ok());
    let target = endpoint(&registry, ORG, &rx.url("/target"), &[CREATED]);
    endpoint(&registry, ORG, &other_rx.url("/other"), &[CREATED, PAID]);
    registry
        .update_event_type(
            PAID,
            EventTypeUpdate {
                example: Some(Some(json!({ "payout_id": "po_example", "amount": 1000 }))),
                ..EventTypeUpdate::default()
            },
        )
        .unwrap();
    let d = builder(&t, &registry).start().unwrap();

    // The type's example, to a type the endpoint does not even subscribe to.
    let example = d
        .send_test_event(ORG, &target.endpoint.id, PAID, None)
        .unwrap();
    // The caller's own payload.
    let given = d
        .send_test_event(ORG, &target.endpoint.id, CREATED, Some(&json!({ "n": 7 })))
        .unwrap();
    assert!(rx.wait_for(2, WAIT));
    wait_delivered(&d, &given);
    wait_delivered(&d, &example);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(other_rx.count(), 0, "a test event reached another endpoint");

    let got = rx.received();
    for r in &got {
        verify_signed(
            |h| r.header(h),
            &r.body,
            std::slice::from_ref(&target.secret),
        )
        .unwrap();
    }
    let body = |id: &str| -> serde_json::Value {
        let r = got
            .iter()
            .find(|r| r.header("webhook-id") == Some(id))
            .unwrap();
        serde_json::from_slice(&r.body).unwrap()
    };
    assert_eq!(
        body(&example)["data"],
        json!({ "payout_id": "po_example", "amount": 1000 })
    );
    assert_eq!(body(&example)["type"], PAID);
    assert_eq!(body(&given)["data"], json!({ "n": 7 }));

    // Marked as a test in the endpoint's history and in the event log.
    let history = d.deliveries(ORG, &target.endpoint.id, 10).unwrap();
    assert_eq!(history.len(), 2);
    assert!(history.iter().all(|h| h.test));
    let log = d.events(ORG, &EventQuery::default()).unwrap();
    assert!(log.events.iter().all(|e| e.test));
    let detail = d.event(ORG, &given).unwrap();
    assert_eq!(detail.deliveries.len(), 1);
    assert_eq!(detail.deliveries[0].endpoint_id, target.endpoint.id);
    assert_eq!(detail.data(), Some(json!({ "n": 7 })));

    // No example and no payload: `{}`.
    let bare = d
        .send_test_event(ORG, &target.endpoint.id, CREATED, None)
        .unwrap();
    assert_eq!(d.event(ORG, &bare).unwrap().data(), Some(json!({})));
    d.shutdown(WAIT).unwrap();
    drop(t);
}

#[test]
fn bad_test_events_are_refused_and_store_nothing() {
    let (t, registry) = setup();
    let rx = Receiver::ok();
    let ep = endpoint(&registry, ORG, &rx.url("/"), &[CREATED]);
    let d = builder(&t, &registry).workers(0).start().unwrap();
    let before = events_stored(&t);
    assert_not_found_id(
        d.send_test_event("org_2", &ep.endpoint.id, CREATED, None),
        "endpoint",
        &ep.endpoint.id,
    );
    assert!(matches!(
        d.send_test_event(ORG, &ep.endpoint.id, "no.such.type", None),
        Err(Error::UnknownEventType { .. })
    ));
    assert!(matches!(
        d.send_test_event(
            ORG,
            &ep.endpoint.id,
            CREATED,
            Some(&json!("x".repeat(300_000)))
        ),
        Err(Error::PayloadTooLarge { .. })
    ));
    set_enabled(&registry, ORG, &ep.endpoint.id, false);
    assert!(matches!(
        d.send_test_event(ORG, &ep.endpoint.id, CREATED, None),
        Err(Error::InvalidState {
            state: "disabled",
            ..
        })
    ));
    assert_eq!(events_stored(&t), before);
}

#[test]
fn events_emitted_while_disabled_are_replayed_once_on_request() {
    let (t, registry) = setup();
    let rx = Receiver::ok();
    let ep = endpoint(&registry, ORG, &rx.url("/"), &[CREATED]);
    let d = builder(&t, &registry).start().unwrap();
    let disable = |enabled: bool| set_enabled(&registry, ORG, &ep.endpoint.id, enabled);
    disable(false);
    let missed: Vec<String> = (0..3)
        .map(|i| d.emit(ORG, CREATED, &json!({ "i": i })).unwrap())
        .collect();
    // Another type, not subscribed: never replayed.
    d.emit(ORG, PAID, &json!({})).unwrap();
    let enabled = registry.enable(ORG, &ep.endpoint.id).unwrap();
    let since = enabled.missed_since.expect("it was disabled");
    // What enable documents: nothing was queued meanwhile, and recover
    // (failed deliveries) finds nothing either.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(rx.count(), 0);
    assert_eq!(d.recover(ORG, &ep.endpoint.id, since).unwrap(), 0);

    assert_eq!(d.replay_missing(ORG, &ep.endpoint.id, since).unwrap(), 3);
    assert!(rx.wait_for(3, WAIT));
    let arrived: HashSet<String> = rx
        .received()
        .iter()
        .map(|r| r.header("webhook-id").unwrap().to_owned())
        .collect();
    assert_eq!(arrived, missed.iter().cloned().collect());
    // Once replayed they are not missing any more.
    assert_eq!(d.replay_missing(ORG, &ep.endpoint.id, since).unwrap(), 0);

    // Bad windows are refused.
    let now = SystemTime::now();
    assert_invalid_input(
        d.replay_missing(ORG, &ep.endpoint.id, now + Duration::from_secs(60)),
        "since",
    );
    assert_invalid_input(
        d.replay_missing(
            ORG,
            &ep.endpoint.id,
            now - Duration::from_secs(15 * 24 * 3600),
        ),
        "since",
    );
    assert_not_found_id(
        d.replay_missing("org_2", &ep.endpoint.id, since),
        "endpoint",
        &ep.endpoint.id,
    );
    // A disabled endpoint is enabled first.
    disable(false);
    assert!(matches!(
        d.replay_missing(ORG, &ep.endpoint.id, since),
        Err(Error::InvalidState {
            state: "disabled",
            ..
        })
    ));
    disable(true);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(rx.count(), 3);
    d.shutdown(WAIT).unwrap();
    drop(t);
}

#[test]
fn the_event_log_pages_newest_first_with_filters() {
    let (t, registry) = setup();
    let (rx_a, rx_b) = (Receiver::ok(), Receiver::ok());
    let a = endpoint(&registry, ORG, &rx_a.url("/a"), &[CREATED, PAID]);
    let b = endpoint(&registry, ORG, &rx_b.url("/b"), &[CREATED]);
    let d = builder(&t, &registry).start().unwrap();
    let mut ids = Vec::new();
    for i in 0..7 {
        let event_type = if i % 2 == 0 { CREATED } else { PAID };
        ids.push((
            event_type,
            d.emit(ORG, event_type, &json!({ "i": i })).unwrap(),
        ));
        std::thread::sleep(Duration::from_millis(3));
    }
    // Another organization's events never show.
    let stranger = d.emit("org_2", CREATED, &json!({})).unwrap();

    // Newest first, two per page, every event once.
    let mut seen = Vec::new();
    let mut query = EventQuery {
        limit: 2,
        ..EventQuery::default()
    };
    loop {
        let page = d.events(ORG, &query).unwrap();
        assert!(page.events.len() <= 2);
        seen.extend(page.events.into_iter().map(|e| e.id));
        match page.next_cursor {
            Some(c) => query.cursor = Some(c),
            None => break,
        }
    }
    let expected: Vec<String> = ids.iter().rev().map(|(_, id)| id.clone()).collect();
    assert_eq!(seen, expected);
    assert!(!seen.contains(&stranger));

    // By type.
    let paid = d
        .events(
            ORG,
            &EventQuery {
                event_type: Some(PAID.into()),
                ..EventQuery::default()
            },
        )
        .unwrap();
    let expected: Vec<&String> = ids
        .iter()
        .rev()
        .filter(|(t, _)| *t == PAID)
        .map(|(_, id)| id)
        .collect();
    assert_eq!(
        paid.events.iter().map(|e| &e.id).collect::<Vec<_>>(),
        expected
    );
    // A cursor from other filters is refused.
    let first = d
        .events(
            ORG,
            &EventQuery {
                limit: 1,
                ..EventQuery::default()
            },
        )
        .unwrap();
    assert_invalid_input(
        d.events(
            ORG,
            &EventQuery {
                limit: 1,
                event_type: Some(PAID.into()),
                cursor: first.next_cursor,
                ..EventQuery::default()
            },
        ),
        "cursor",
    );
    assert_invalid_input(
        d.events(
            ORG,
            &EventQuery {
                limit: 0,
                ..EventQuery::default()
            },
        ),
        "limit",
    );
    // Time range: nothing in the future.
    let future = d
        .events(
            ORG,
            &EventQuery {
                since: Some(SystemTime::now() + Duration::from_secs(60)),
                ..EventQuery::default()
            },
        )
        .unwrap();
    assert!(future.events.is_empty());

    // One event: its payload and its delivery state per endpoint.
    let (_, created) = &ids[0];
    wait_delivered(&d, created);
    let detail = d.event(ORG, created).unwrap();
    assert_eq!(detail.data(), Some(json!({ "i": 0 })));
    let mut endpoints: Vec<&str> = detail
        .deliveries
        .iter()
        .map(|del| del.endpoint_id.as_str())
        .collect();
    endpoints.sort();
    let mut both = vec![a.endpoint.id.as_str(), b.endpoint.id.as_str()];
    both.sort();
    assert_eq!(endpoints, both);
    assert_not_found_id(d.event("org_2", created), "event", created);

    // The organization-wide delivery log: both endpoints, filtered by type
    // and state, paged.
    for (_, id) in &ids {
        wait_delivered(&d, id);
    }
    let all = d.org_history(ORG, &HistoryQuery::default()).unwrap();
    assert_eq!(all.deliveries.len(), 4 + 4 + 3);
    let created_log = d
        .org_history(
            ORG,
            &HistoryQuery {
                event_type: Some(CREATED.into()),
                state: Some(DeliveryState::Delivered),
                limit: 3,
                ..HistoryQuery::default()
            },
        )
        .unwrap();
    assert_eq!(created_log.deliveries.len(), 3);
    assert!(
        created_log
            .deliveries
            .iter()
            .all(|d| d.event_type == CREATED)
    );
    let rest = d
        .org_history(
            ORG,
            &HistoryQuery {
                event_type: Some(CREATED.into()),
                state: Some(DeliveryState::Delivered),
                limit: 10,
                cursor: created_log.next_cursor.clone(),
                ..HistoryQuery::default()
            },
        )
        .unwrap();
    assert_eq!(rest.deliveries.len(), 8 - 3);
    // An endpoint's history filtered by type.
    let a_paid = d
        .history(
            ORG,
            &a.endpoint.id,
            &HistoryQuery {
                event_type: Some(PAID.into()),
                ..HistoryQuery::default()
            },
        )
        .unwrap();
    assert_eq!(a_paid.deliveries.len(), 3);
    assert!(a_paid.deliveries.iter().all(|d| d.event_type == PAID));
    // An endpoint cursor is not an organization cursor.
    let one = d
        .history(
            ORG,
            &a.endpoint.id,
            &HistoryQuery {
                limit: 1,
                ..HistoryQuery::default()
            },
        )
        .unwrap();
    assert_invalid_input(
        d.org_history(
            ORG,
            &HistoryQuery {
                limit: 1,
                cursor: one.next_cursor,
                ..HistoryQuery::default()
            },
        ),
        "cursor",
    );
    d.shutdown(WAIT).unwrap();
    drop(t);
}

#[test]
fn delivery_ids_are_random_and_scoped() {
    let (t, registry) = setup();
    let rx = Receiver::ok();
    endpoint(&registry, ORG, &rx.url("/"), &[CREATED]);
    let d = builder(&t, &registry).workers(0).start().unwrap();
    let batch = (0..20)
        .map(|i| NewEvent::new(CREATED, &json!({ "i": i })).unwrap())
        .collect();
    let ids: Vec<String> = d
        .emit_batch(ORG, batch)
        .unwrap()
        .iter()
        .map(|e| d.event_deliveries(ORG, e).unwrap()[0].id.clone())
        .collect();
    for id in &ids {
        let hex = id.strip_prefix("dlv_").expect("dlv_ prefix");
        // The time (11 hex digits), then 16 random ones.
        assert_eq!(hex.len(), 27, "{id}");
        assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    }
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len());
    let mut sorted = ids.clone();
    sorted.sort();
    assert_ne!(sorted, ids, "ids follow emission order");
    // Found by id in its organization only.
    assert_eq!(d.delivery(ORG, &ids[0]).unwrap().id, ids[0]);
    assert_not_found_id(d.delivery("org_2", &ids[0]), "delivery", &ids[0]);
    assert_not_found_id(d.redeliver("org_2", &ids[0]), "delivery", &ids[0]);
    assert_not_found_id(d.delivery(ORG, "dlv_1"), "delivery", "dlv_1");
    // A manual redelivery by id.
    let attempt = d.redeliver(ORG, &ids[0]).unwrap();
    assert_eq!(attempt.status_code, Some(204));
    assert_eq!(
        d.delivery(ORG, &ids[0]).unwrap().state,
        DeliveryState::Delivered
    );
    drop(t);
}

#[test]
fn the_catalogue_describes_deprecates_and_archives_types() {
    let (t, registry) = setup();
    let rx = Receiver::ok();
    let ep = endpoint(&registry, ORG, &rx.url("/"), &[CREATED]);
    let d = builder(&t, &registry).start().unwrap();
    let first = d.emit(ORG, CREATED, &json!({})).unwrap();
    wait_delivered(&d, &first);

    let updated = registry
        .update_event_type(
            CREATED,
            EventTypeUpdate {
                description: Some("A sale or lead was recorded".into()),
                example: Some(Some(json!({ "amount": 4900 }))),
                ..EventTypeUpdate::default()
            },
        )
        .unwrap();
    assert_eq!(updated.description, "A sale or lead was recorded");
    assert_eq!(updated.example, Some(json!({ "amount": 4900 })));

    // Bad inputs: nothing changes.
    let before = registry.event_types().unwrap();
    assert_invalid_input(
        registry.update_event_type(
            CREATED,
            EventTypeUpdate {
                description: Some("new".into()),
                example: Some(Some(json!("x".repeat(70_000)))),
                ..EventTypeUpdate::default()
            },
        ),
        "example",
    );
    assert!(matches!(
        registry.update_event_type("no.such.type", EventTypeUpdate::default()),
        Err(Error::UnknownEventType { .. })
    ));
    assert_eq!(registry.event_types().unwrap(), before);

    // Deprecated: still works.
    let deprecated = registry
        .update_event_type(
            CREATED,
            EventTypeUpdate {
                deprecated: Some(true),
                ..EventTypeUpdate::default()
            },
        )
        .unwrap();
    assert!(deprecated.deprecated && !deprecated.archived);
    d.emit(ORG, CREATED, &json!({})).unwrap();

    // Archived: no emits, no new subscriptions; existing ones and history stay.
    registry
        .update_event_type(
            CREATED,
            EventTypeUpdate {
                archived: Some(true),
                ..EventTypeUpdate::default()
            },
        )
        .unwrap();
    let stored = events_stored(&t);
    match d.emit(ORG, CREATED, &json!({})) {
        Err(Error::InvalidState { kind, id, state }) => {
            assert_eq!(
                (kind, id.as_str(), state),
                ("event type", CREATED, "archived")
            )
        }
        other => panic!("expected InvalidState archived, got {other:?}"),
    }
    assert_eq!(events_stored(&t), stored);
    assert!(matches!(
        registry.create(ORG, &rx.url("/new"), &[CREATED], Default::default()),
        Err(Error::InvalidState {
            state: "archived",
            ..
        })
    ));
    // The endpoint that had it keeps it through an unrelated update.
    registry
        .update(
            ORG,
            &ep.endpoint.id,
            EndpointUpdate {
                event_types: Some(vec![CREATED.into(), PAID.into()]),
                ..EndpointUpdate::default()
            },
        )
        .unwrap();
    assert_eq!(
        d.event(ORG, &first).unwrap().deliveries[0].state,
        DeliveryState::Delivered
    );
    // Restored: emits work again.
    registry
        .update_event_type(
            CREATED,
            EventTypeUpdate {
                archived: Some(false),
                ..EventTypeUpdate::default()
            },
        )
        .unwrap();
    d.emit(ORG, CREATED, &json!({})).unwrap();
    d.shutdown(WAIT).unwrap();
}
