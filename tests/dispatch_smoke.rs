mod common;
#[path = "common/receiver.rs"]
mod receiver;

use std::time::{Duration, SystemTime};

use common::TempDb;
use keyhook::signing::verify;
use keyhook::{DestinationPolicy, Dispatcher, EndpointOptions, WebhookRegistry};
use receiver::Receiver;

#[test]
fn emit_is_delivered_signed() {
    let t = TempDb::new();
    let registry = WebhookRegistry::builder(&t.db)
        .destination_policy(
            DestinationPolicy::new()
                .allow_http(true)
                .allow_loopback(true),
        )
        .build();
    registry
        .register_event_type("conversion.created", "A new referred purchase")
        .unwrap();
    let rx = Receiver::ok();
    let ep = registry
        .create(
            "org_1",
            &rx.url("/hook"),
            &["conversion.created"],
            EndpointOptions::default(),
        )
        .unwrap();
    let d = Dispatcher::builder(&t.db, &registry).start().unwrap();
    let id = d
        .emit(
            "org_1",
            "conversion.created",
            &serde_json::json!({"amount": 12}),
        )
        .unwrap();
    assert!(rx.wait_for(1, Duration::from_secs(10)));
    let got = &rx.received()[0];
    assert_eq!(got.header("webhook-id"), Some(id.as_str()));
    verify(
        got.header("webhook-id"),
        got.header("webhook-timestamp"),
        got.header("webhook-signature"),
        &got.body,
        std::slice::from_ref(&ep.secret),
        SystemTime::now(),
        Duration::from_secs(300),
    )
    .unwrap();
    d.shutdown(Duration::from_secs(5)).unwrap();
    let history = d.deliveries("org_1", &ep.endpoint.id, 10).unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].state, keyhook::DeliveryState::Delivered);
    assert_eq!(history[0].attempts.len(), 1);
    assert_eq!(history[0].attempts[0].status_code, Some(204));
}
