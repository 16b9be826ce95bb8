//! The whole product on one screen: an API key created, shown once, verified
//! and revoked; five event types; a webhook to a local receiver that checks
//! every signature; two events emitted and a test event sent, delivered and
//! listed in the delivery history and the event log.
//!
//! Run: `cargo run --example quickstart`. Exits with status 0 only if every
//! step worked.

use std::sync::mpsc;
use std::time::Duration;

use keyhook::signing::verify_headers;
use keyhook::{
    ApiKeyStore, Database, DestinationPolicy, Dispatcher, EndpointOptions, EventQuery,
    EventTypeUpdate, KeySettings, SigningSecret, WebhookRegistry,
};

const ORG: &str = "org_acme";

/// What the receiver saw in one request.
struct Seen {
    event_type: String,
    webhook_id: String,
    verified: Result<(), String>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("keyhook.sqlite3");
    let db = Database::open(&path)?;
    println!("database: {}", path.display());
    let mut failures = Vec::new();

    // --- API keys (a paid-plan feature: the host turns it on per organization)
    let keys = ApiKeyStore::builder(&db).prefix("vr").build()?;
    keys.set_api_keys_enabled(ORG, true)?;
    let created = keys.create(
        ORG,
        "Zapier Integration",
        KeySettings {
            scopes: vec!["conversions:read".into()],
            ..KeySettings::default()
        },
    )?;
    println!("\nAPI key created: {}", created.key.name);
    println!(
        "  Copy it now, it will only be shown once: {}",
        created.secret.expose()
    );
    match keys.verify(created.secret.expose()) {
        Ok(v) => println!("  verify: ok, org {} scopes {:?}", v.org, v.scopes),
        Err(e) => failures.push(format!("a new key did not verify: {e}")),
    }

    // --- Event types and a webhook to a local receiver
    let registry = WebhookRegistry::builder(&db)
        // Development only: a receiver on 127.0.0.1 over plain http.
        .destination_policy(
            DestinationPolicy::new()
                .allow_http(true)
                .allow_loopback(true),
        )
        .build();
    for (name, what) in [
        ("conversion.created", "A new referred purchase is detected"),
        (
            "conversion.updated",
            "A conversion status changes (approved, rejected, fraud)",
        ),
        (
            "affiliate.created",
            "A new referrer is added to your program",
        ),
        (
            "affiliate.updated",
            "An affiliate's status or details change",
        ),
        ("payout.created", "A new payout batch is created"),
    ] {
        registry.register_event_type(name, what)?;
    }
    // An example payload, for the settings page's "Send test event" button.
    registry.update_event_type(
        "conversion.created",
        EventTypeUpdate {
            example: Some(Some(
                serde_json::json!({"conversion_id": "cv_example", "amount_cents": 1000}),
            )),
            ..EventTypeUpdate::default()
        },
    )?;

    let server = tiny_http::Server::http("127.0.0.1:0").map_err(|e| e.to_string())?;
    let port = server.server_addr().to_ip().ok_or("no ip address")?.port();
    let (secret_tx, secret_rx) = mpsc::channel::<SigningSecret>();
    let (seen_tx, seen_rx) = mpsc::channel::<Seen>();
    let receiver = std::thread::spawn(move || receive(server, secret_rx, seen_tx));

    let webhook = registry.create(
        ORG,
        &format!("http://127.0.0.1:{port}/webhooks"),
        &["conversion.created", "conversion.updated"],
        EndpointOptions::default(),
    )?;
    println!("\nWebhook created: {}", webhook.endpoint.url);
    println!(
        "  signing secret (shown on creation): {}",
        webhook.secret.expose()
    );
    secret_tx.send(webhook.secret.clone())?;

    // --- Emit two events; the dispatcher delivers them on its own threads
    let dispatcher = Dispatcher::builder(&db, &registry).start()?;
    let created_id = dispatcher.emit(
        ORG,
        "conversion.created",
        &serde_json::json!({"conversion_id": "cv_1001", "amount_cents": 4900, "status": "pending"}),
    )?;
    let updated_id = dispatcher.emit(
        ORG,
        "conversion.updated",
        &serde_json::json!({"conversion_id": "cv_1001", "status": "approved"}),
    )?;
    println!("\nemitted {created_id} and {updated_id}");
    // "Send test event": to this endpoint only, with the type's example.
    let test_id =
        dispatcher.send_test_event(ORG, &webhook.endpoint.id, "conversion.created", None)?;
    println!("sent test event {test_id}");

    println!("\nThe receiver got:");
    let mut received = Vec::new();
    while received.len() < 3 {
        match seen_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(seen) => {
                println!(
                    "  POST {} webhook-id {} signature {}",
                    seen.event_type,
                    seen.webhook_id,
                    match &seen.verified {
                        Ok(()) => "verified".to_owned(),
                        Err(e) => format!("REJECTED: {e}"),
                    }
                );
                if let Err(e) = &seen.verified {
                    failures.push(format!("a delivery failed verification: {e}"));
                }
                received.push(seen.webhook_id);
            }
            Err(_) => {
                failures.push("the receiver did not get all three events within 10 s".into());
                break;
            }
        }
    }
    for id in [&created_id, &updated_id, &test_id] {
        if !received.contains(id) {
            failures.push(format!("event {id} never arrived"));
        }
    }

    // Let the workers record the last attempt before reading the history.
    dispatcher.shutdown(Duration::from_secs(10))?;
    println!("\nDelivery history of {}:", webhook.endpoint.id);
    for d in dispatcher.deliveries(ORG, &webhook.endpoint.id, 10)? {
        let last = d.attempts.last();
        println!(
            "  {} {:<20} {:<5} {:?} after {} attempt(s), last status {}",
            d.event_id,
            d.event_type,
            if d.test { "test" } else { "" },
            d.state,
            d.attempts.len(),
            last.and_then(|a| a.status_code)
                .map_or("-".into(), |s| s.to_string())
        );
        if d.state != keyhook::DeliveryState::Delivered {
            failures.push(format!("delivery of {} is {:?}", d.event_id, d.state));
        }
    }

    println!("\nEvent log of {ORG}, newest first:");
    let log = dispatcher.events(ORG, &EventQuery::default())?;
    for e in &log.events {
        println!(
            "  {} {:<20} {}",
            e.id,
            e.event_type,
            if e.test { "test" } else { "" }
        );
    }
    if log.events.len() != 3 || !log.events.iter().any(|e| e.test && e.id == test_id) {
        failures.push(format!("the event log shows {:?}", log.events));
    }
    let detail = dispatcher.event(ORG, &created_id)?;
    println!(
        "  {} payload {} delivered to {} endpoint(s)",
        created_id,
        detail.data().unwrap_or_default(),
        detail.deliveries.len()
    );

    // --- Revoke the key: it stops working at once
    keys.revoke(ORG, &created.key.id)?;
    match keys.verify(created.secret.expose()) {
        Err(e) if e.rejection() == Some(keyhook::Rejection::Revoked) => {
            println!("\nkey revoked; verify now says: {e}")
        }
        other => failures.push(format!("a revoked key gave {other:?}")),
    }

    drop(secret_tx);
    let _ = receiver.join();
    if failures.is_empty() {
        println!("\nquickstart: everything worked");
        Ok(())
    } else {
        for f in &failures {
            eprintln!("FAILED: {f}");
        }
        std::process::exit(1);
    }
}

/// A customer's server: checks each request's Standard Webhooks signature.
fn receive(
    server: tiny_http::Server,
    secret: mpsc::Receiver<SigningSecret>,
    seen: mpsc::Sender<Seen>,
) {
    let Ok(secret) = secret.recv() else { return };
    let mut count = 0;
    while count < 3 {
        let Ok(Some(mut request)) = server.recv_timeout(Duration::from_secs(15)) else {
            return;
        };
        let mut body = Vec::new();
        if request.as_reader().read_to_end(&mut body).is_err() {
            continue;
        }
        let header = |name: &str| -> Option<String> {
            request
                .headers()
                .iter()
                .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
                .map(|h| h.value.as_str().to_owned())
        };
        let (id, ts, sig) = (
            header("webhook-id"),
            header("webhook-timestamp"),
            header("webhook-signature"),
        );
        let verified = verify_headers(
            |name| match name {
                "webhook-id" => id.as_deref(),
                "webhook-timestamp" => ts.as_deref(),
                "webhook-signature" => sig.as_deref(),
                _ => None,
            },
            &body,
            std::slice::from_ref(&secret),
        )
        .map_err(|e| e.to_string());
        let event_type = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["type"].as_str().map(str::to_owned))
            .unwrap_or_default();
        let status = if verified.is_ok() { 204 } else { 400 };
        let _ = request.respond(tiny_http::Response::empty(status));
        count += 1;
        let _ = seen.send(Seen {
            event_type,
            webhook_id: id.unwrap_or_default(),
            verified,
        });
    }
}
