mod common;
#[path = "common/receiver.rs"]
mod receiver;

use std::time::Duration;

use common::{endpoint, loopback_setup, verify_signed};
use keyhook::Dispatcher;
use receiver::Receiver;

#[test]
fn emit_is_delivered_signed() {
    let (t, registry) = loopback_setup(&[("conversion.created", "A new referred purchase")]);
    let rx = Receiver::ok();
    let ep = endpoint(
        &registry,
        "org_1",
        &rx.url("/hook"),
        &["conversion.created"],
    );
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
    verify_signed(
        |name| got.header(name),
        &got.body,
        std::slice::from_ref(&ep.secret),
    )
    .unwrap();
    d.shutdown(Duration::from_secs(5)).unwrap();
    let history = d.deliveries("org_1", &ep.endpoint.id, 10).unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].state, keyhook::DeliveryState::Delivered);
    assert_eq!(history[0].attempts.len(), 1);
    assert_eq!(history[0].attempts[0].status_code, Some(204));
}
