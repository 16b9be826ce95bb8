//! Ed25519 (`v1a`) endpoints end to end: real deliveries to a receiver on
//! 127.0.0.1 verified with the public key alone, and rotations between
//! `v1` and `v1a`. Runs on PostgreSQL too with `KEYHOOK_TEST_POSTGRES`.

mod common;
#[path = "common/receiver.rs"]
mod receiver;

use std::time::Duration;

use common::{
    TempDb, assert_invalid_input, assert_not_found_id, builder, endpoint, loopback_setup,
    wait_until,
};
use keyhook::signing::{Ed25519PublicKey, Ed25519SecretKey, Verifier, VerifyError};
use keyhook::{EndpointOptions, MAX_ROTATION_GRACE, SigningSecret, WebhookRegistry};
use receiver::{Received, Receiver};
use serde_json::json;

const CREATED: &str = "conversion.created";
const ORG: &str = "org_1";
const OTHER_ORG: &str = "org_2";
const WAIT: Duration = Duration::from_secs(15);

fn setup() -> (TempDb, WebhookRegistry) {
    loopback_setup(&[(CREATED, "A new referred purchase")])
}

/// Verifies a received request as a receiver holding only `verifier`'s keys.
fn check(r: &Received, verifier: &Verifier) -> Result<(), VerifyError> {
    verifier.verify_headers(|name| r.header(name), &r.body)
}

/// The versions of the request's signature entries, in order.
fn versions(r: &Received) -> Vec<String> {
    r.header("webhook-signature")
        .expect("a webhook-signature header")
        .split(' ')
        .map(|e| e.split_once(',').expect("version,signature").0.to_owned())
        .collect()
}

/// Emits one event and returns the request it arrives as (the `n`th the
/// receiver got, counting from 1).
fn deliver_one(t: &TempDb, registry: &WebhookRegistry, rx: &Receiver, n: usize) -> Received {
    let d = builder(t, registry).start().unwrap();
    let id = d.emit(ORG, CREATED, &json!({"n": n})).unwrap();
    assert!(rx.wait_for(n, WAIT), "event {n} was not delivered");
    d.shutdown(WAIT).unwrap();
    let got = rx.received().pop().unwrap();
    assert_eq!(got.header("webhook-id"), Some(id.as_str()));
    got
}

/// The seeds of the endpoint's stored Ed25519 keys, newest first, read with
/// the engine's plain client beside keyhook.
fn stored_seeds(t: &TempDb, endpoint_id: &str) -> Vec<Vec<u8>> {
    const SQL: &str = "SELECT s.secret FROM keyhook_endpoint_secrets s
         JOIN keyhook_endpoints e ON e.row_id = s.endpoint_row
         WHERE e.id = $1 AND s.kind = 1 ORDER BY s.row_id DESC";
    #[cfg(feature = "postgres")]
    if let Some(schema) = t.locator().strip_prefix("postgres:") {
        let mut c = keyhook::postgres::Client::connect(
            &common::postgres_url().unwrap(),
            keyhook::postgres::NoTls,
        )
        .unwrap();
        c.batch_execute(&format!("SET search_path TO {schema}"))
            .unwrap();
        return c
            .query(SQL, &[&endpoint_id])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
    }
    let c = keyhook::rusqlite::Connection::open(t.path()).unwrap();
    let mut stmt = c.prepare(&SQL.replace("$1", "?1")).unwrap();
    stmt.query_map([endpoint_id], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn public_key_of_seed(seed: &[u8]) -> Ed25519PublicKey {
    Ed25519SecretKey::from_seed(seed.try_into().expect("a 32-byte seed")).public_key()
}

#[test]
fn v1a_endpoint_is_verified_with_its_public_key_alone() {
    let (t, registry) = setup();
    let rx = Receiver::ok();
    let created = registry
        .create_ed25519(ORG, &rx.url("/"), &[CREATED], EndpointOptions::default())
        .unwrap();
    let id = &created.endpoint.id;
    let public_key = created.public_key;

    // The key returned is the stored key's, and the only one signing.
    let seeds = stored_seeds(&t, id);
    assert_eq!(seeds.len(), 1);
    assert_eq!(public_key_of_seed(&seeds[0]), public_key);
    assert_eq!(registry.signing_public_keys(ORG, id).unwrap(), [public_key]);
    assert!(registry.signing_secrets(ORG, id).unwrap().is_empty());
    let shown = format!("{created:?}");
    assert!(shown.contains(&public_key.to_string()) && !shown.contains("whsk_"));

    let got = deliver_one(&t, &registry, &rx, 1);
    assert_eq!(versions(&got), ["v1a"]);
    // The receiver was given the `whpk_` text.
    let given: Ed25519PublicKey = public_key.to_string().parse().unwrap();
    check(&got, &Verifier::new().with_public_key(&given)).expect("verifies with the public key");

    let stranger = Ed25519SecretKey::generate().unwrap().public_key();
    assert_eq!(
        check(&got, &Verifier::new().with_public_key(&stranger)),
        Err(VerifyError::NoMatchingSignature)
    );
    let hmac = SigningSecret::generate().unwrap();
    assert!(check(&got, &Verifier::new().with_secret(&hmac)).is_err());
}

#[test]
fn rotation_from_v1_to_v1a_signs_with_both_during_the_grace_period() {
    let (t, registry) = setup();
    let rx = Receiver::ok();
    let ep = endpoint(&registry, ORG, &rx.url("/"), &[CREATED]);
    let id = &ep.endpoint.id;
    let old = ep.secret.clone();

    let public_key = registry
        .rotate_ed25519_key(ORG, id, Some(Duration::from_secs(3600)))
        .unwrap();
    assert_eq!(
        registry.signing_secrets(ORG, id).unwrap(),
        std::slice::from_ref(&old)
    );
    assert_eq!(registry.signing_public_keys(ORG, id).unwrap(), [public_key]);
    assert_eq!(public_key_of_seed(&stored_seeds(&t, id)[0]), public_key);

    let got = deliver_one(&t, &registry, &rx, 1);
    let mut seen = versions(&got);
    seen.sort();
    assert_eq!(seen, ["v1", "v1a"], "{:?}", got.header("webhook-signature"));
    // Each receiver verifies the entry it holds a key for.
    check(&got, &Verifier::new().with_secret(&old)).expect("the old HMAC secret alone");
    check(&got, &Verifier::new().with_public_key(&public_key)).expect("the public key alone");
    let stranger = Ed25519SecretKey::generate().unwrap().public_key();
    assert!(check(&got, &Verifier::new().with_public_key(&stranger)).is_err());
    assert!(
        check(
            &got,
            &Verifier::new().with_secret(&SigningSecret::generate().unwrap())
        )
        .is_err()
    );

    // And back to v1 at once: only the new HMAC secret signs.
    let back = registry
        .rotate_secret(ORG, id, Some(Duration::ZERO))
        .unwrap();
    assert_eq!(registry.signing_secrets(ORG, id).unwrap(), [back]);
    assert!(registry.signing_public_keys(ORG, id).unwrap().is_empty());
}

#[test]
fn after_the_grace_period_only_v1a_signs() {
    let (t, registry) = setup();
    let rx = Receiver::ok();
    let ep = endpoint(&registry, ORG, &rx.url("/"), &[CREATED]);
    let id = &ep.endpoint.id;
    let old = ep.secret.clone();

    let grace = Duration::from_millis(800);
    let public_key = registry.rotate_ed25519_key(ORG, id, Some(grace)).unwrap();
    assert_eq!(
        registry.signing_secrets(ORG, id).unwrap(),
        std::slice::from_ref(&old)
    );
    assert!(
        wait_until(WAIT, || registry
            .signing_secrets(ORG, id)
            .unwrap()
            .is_empty()),
        "the HMAC secret still signs after its grace period"
    );
    assert_eq!(registry.signing_public_keys(ORG, id).unwrap(), [public_key]);

    let got = deliver_one(&t, &registry, &rx, 1);
    assert_eq!(versions(&got), ["v1a"]);
    check(&got, &Verifier::new().with_public_key(&public_key)).unwrap();
    assert!(check(&got, &Verifier::new().with_secret(&old)).is_err());

    // A second rotation with no grace: the first key pair stops at once.
    let next = registry
        .rotate_ed25519_key(ORG, id, Some(Duration::ZERO))
        .unwrap();
    assert_ne!(next, public_key);
    assert_eq!(registry.signing_public_keys(ORG, id).unwrap(), [next]);
    let got = deliver_one(&t, &registry, &rx, 2);
    assert_eq!(versions(&got), ["v1a"]);
    check(&got, &Verifier::new().with_public_key(&next)).unwrap();
    assert!(check(&got, &Verifier::new().with_public_key(&public_key)).is_err());
}

#[test]
fn bad_inputs_are_refused_and_change_nothing() {
    let (t, registry) = setup();
    let ep = endpoint(&registry, ORG, "http://127.0.0.1:9/", &[CREATED]);
    let id = &ep.endpoint.id;
    let unchanged = |registry: &WebhookRegistry| {
        assert_eq!(
            registry.signing_secrets(ORG, id).unwrap(),
            std::slice::from_ref(&ep.secret)
        );
        assert!(registry.signing_public_keys(ORG, id).unwrap().is_empty());
        assert!(stored_seeds(&t, id).is_empty());
    };

    assert_not_found_id(
        registry.rotate_ed25519_key(ORG, "ep_missing", None),
        "endpoint",
        "ep_missing",
    );
    // Another organization's endpoint is not found, not rotated.
    assert_not_found_id(
        registry.rotate_ed25519_key(OTHER_ORG, id, None),
        "endpoint",
        id,
    );
    assert_not_found_id(registry.signing_public_keys(OTHER_ORG, id), "endpoint", id);
    assert_invalid_input(
        registry.rotate_ed25519_key(ORG, id, Some(MAX_ROTATION_GRACE + Duration::from_secs(1))),
        "grace",
    );
    unchanged(&registry);

    // An imported HMAC secret cannot sign v1a.
    let imported = EndpointOptions {
        secret: Some(SigningSecret::generate().unwrap()),
        ..EndpointOptions::default()
    };
    assert_invalid_input(
        registry.create_ed25519(ORG, "http://127.0.0.1:9/", &[CREATED], imported),
        "secret",
    );
    assert_invalid_input(
        registry.create_ed25519(
            ORG,
            "ftp://127.0.0.1/",
            &[CREATED],
            EndpointOptions::default(),
        ),
        "url",
    );
    assert_eq!(registry.list(ORG).unwrap().len(), 1);
    unchanged(&registry);

    // create_ed25519 checks like create, and counts against the same limit.
    let limited = WebhookRegistry::builder(&t.db)
        .destination_policy(registry.destination_policy().clone())
        .max_endpoints(1)
        .build();
    assert!(matches!(
        limited.create_ed25519(
            ORG,
            "http://127.0.0.1:9/",
            &[CREATED],
            EndpointOptions::default()
        ),
        Err(keyhook::Error::LimitReached { .. })
    ));
    assert_eq!(registry.list(ORG).unwrap().len(), 1);
}
