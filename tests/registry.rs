//! The webhook registry end to end, on real SQLite files in temporary
//! directories: endpoints, signing secrets and their rotation, the event-type
//! catalogue, organization isolation, and the destination policy. Every bad
//! input must give a clear error and change nothing.

mod common;

use std::fmt::Debug;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keyhook::destination::Cidr;
use keyhook::signing::{self, Signer, VerifyError};
use keyhook::{
    CreatedEndpoint, DEFAULT_ROTATION_GRACE, Database, DestinationPolicy, Endpoint,
    EndpointOptions, EndpointUpdate, Error, MAX_ROTATION_GRACE, SigningSecret, WebhookRegistry,
};

use common::{TempDb, assert_not_found_id, temp_db_path, unix_now};

const ORG: &str = "org_a";
const OTHER_ORG: &str = "org_b";
/// An organization that never gets an endpoint: failed creates go here.
const EMPTY_ORG: &str = "org_empty";
const URL: &str = "https://hooks.example.com/keyhook";

/// The product's event types, deliberately not in name order.
const PRODUCT_TYPES: [(&str, &str); 5] = [
    ("payout.created", "A payout to an affiliate was created"),
    ("conversion.created", "A conversion was recorded"),
    ("affiliate.updated", "An affiliate's details changed"),
    ("conversion.updated", "A conversion's status changed"),
    ("affiliate.created", "An affiliate joined a program"),
];

/// The Standard Webhooks / Svix documentation example.
const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SPEC_MSG_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
const SPEC_TIMESTAMP: i64 = 1_614_265_330;
const SPEC_BODY: &[u8] = br#"{"test": 2432232314}"#;
const SPEC_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

// Compile-time check: the registry is a cheap handle shared across threads.
const _: fn() = || {
    fn send_sync_clone<T: Send + Sync + Clone + 'static>() {}
    send_sync_clone::<WebhookRegistry>();
};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn register_product_types(reg: &WebhookRegistry) {
    for (name, description) in PRODUCT_TYPES {
        reg.register_event_type(name, description).unwrap();
    }
}

/// A default registry whose catalogue holds the product's event types.
fn registry(db: &Database) -> WebhookRegistry {
    let reg = WebhookRegistry::new(db);
    register_product_types(&reg);
    reg
}

fn registry_with(db: &Database, policy: DestinationPolicy) -> WebhookRegistry {
    let reg = WebhookRegistry::builder(db)
        .destination_policy(policy)
        .build();
    register_product_types(&reg);
    reg
}

fn try_create(reg: &WebhookRegistry, org: &str, url: &str) -> keyhook::Result<CreatedEndpoint> {
    reg.create(
        org,
        url,
        &["conversion.created"],
        EndpointOptions::default(),
    )
}

fn create(reg: &WebhookRegistry, org: &str, url: &str) -> CreatedEndpoint {
    try_create(reg, org, url).unwrap()
}

/// An endpoint at `URL` subscribed to all event types.
fn create_all_types(reg: &WebhookRegistry, org: &str) -> Endpoint {
    reg.create(
        org,
        URL,
        &[] as &[&str],
        EndpointOptions {
            all_event_types: true,
            ..EndpointOptions::default()
        },
    )
    .unwrap()
    .endpoint
}

/// A default registry on a fresh file with one endpoint in `ORG` at `URL`.
fn one_endpoint() -> (TempDb, WebhookRegistry, CreatedEndpoint) {
    let tmp = TempDb::new();
    let reg = registry(&tmp.db);
    let created = create(&reg, ORG, URL);
    (tmp, reg, created)
}

/// An organization's endpoints with each one's signing secrets.
fn snapshot(reg: &WebhookRegistry, org: &str) -> Vec<(Endpoint, Vec<SigningSecret>)> {
    reg.list(org)
        .unwrap()
        .into_iter()
        .map(|ep| {
            let secrets = reg.signing_secrets(org, &ep.id).unwrap();
            (ep, secrets)
        })
        .collect()
}

/// A registry on a fresh file with one endpoint in `ORG` (with a custom
/// header and a rotated secret, so a snapshot covers every part of it).
struct Fixture {
    _tmp: TempDb,
    reg: WebhookRegistry,
    id: String,
    before: Vec<(Endpoint, Vec<SigningSecret>)>,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture::with_policy(DestinationPolicy::new())
    }

    fn with_policy(policy: DestinationPolicy) -> Fixture {
        let tmp = TempDb::new();
        let reg = registry_with(&tmp.db, policy);
        let created = reg
            .create(
                ORG,
                URL,
                &["conversion.created", "payout.created"],
                EndpointOptions {
                    description: Some("Primary".into()),
                    headers: vec![("X-Token".into(), "t0ken".into())],
                    ..EndpointOptions::default()
                },
            )
            .unwrap();
        let id = created.endpoint.id.clone();
        reg.rotate_secret(ORG, &id, None).unwrap();
        let before = snapshot(&reg, ORG);
        assert_eq!(before.len(), 1);
        assert_eq!(before[0].1.len(), 2);
        Fixture {
            _tmp: tmp,
            reg,
            id,
            before,
        }
    }

    /// Nothing changed in `ORG`, and no endpoint appeared anywhere else.
    #[track_caller]
    fn assert_unchanged(&self, what: &str) {
        assert_eq!(snapshot(&self.reg, ORG), self.before, "{what} changed ORG");
        for org in [OTHER_ORG, EMPTY_ORG] {
            assert!(
                self.reg.list(org).unwrap().is_empty(),
                "{what} created an endpoint in {org}"
            );
        }
    }

    fn create_in_empty_org<S: AsRef<str>>(
        &self,
        url: &str,
        types: &[S],
        options: EndpointOptions,
    ) -> keyhook::Result<CreatedEndpoint> {
        self.reg.create(EMPTY_ORG, url, types, options)
    }

    fn update(&self, update: EndpointUpdate) -> keyhook::Result<Endpoint> {
        self.reg.update(ORG, &self.id, update)
    }
}

#[track_caller]
fn invalid_input<T: Debug>(result: keyhook::Result<T>, expected_field: &str) -> String {
    match result {
        Err(Error::InvalidInput { field, reason }) if field == expected_field => {
            assert!(!reason.is_empty());
            reason
        }
        other => panic!("expected InvalidInput {{ field: {expected_field:?} }}, got {other:?}"),
    }
}

#[track_caller]
fn refused<T: Debug>(result: keyhook::Result<T>) -> String {
    match result {
        Err(Error::DestinationRefused { reason }) => reason,
        other => panic!("expected DestinationRefused, got {other:?}"),
    }
}

#[track_caller]
fn not_found<T: Debug>(result: keyhook::Result<T>, expected_id: &str) {
    assert_not_found_id(result, "endpoint", expected_id);
}

#[track_caller]
fn unknown_event_type<T: Debug>(result: keyhook::Result<T>, expected: &str) {
    match result {
        Err(e @ Error::UnknownEventType { .. }) => {
            let Error::UnknownEventType { name } = &e else {
                unreachable!()
            };
            assert_eq!(name, expected);
            assert!(e.to_string().contains(expected), "{e}");
        }
        other => panic!("expected UnknownEventType {expected:?}, got {other:?}"),
    }
}

fn ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// A `webhook-signature` header signed with every one of `secrets`.
fn signature_header(secrets: &[SigningSecret], msg_id: &str, ts: i64, body: &[u8]) -> String {
    let signers: Vec<Signer> = secrets.iter().map(Signer::new).collect();
    signing::sign(&signers, msg_id, ts, body)
}

fn verify_with(
    header: &str,
    secret: &SigningSecret,
    msg_id: &str,
    ts: i64,
    body: &[u8],
) -> Result<(), VerifyError> {
    signing::verify(
        Some(msg_id),
        Some(&ts.to_string()),
        Some(header),
        body,
        std::slice::from_ref(secret),
        SystemTime::now(),
        signing::DEFAULT_TOLERANCE,
    )
}

/// Expiry times (ms) of the endpoint's stored secrets, read with the
/// engine's plain client.
fn stored_expiries(t: &TempDb, endpoint_id: &str) -> Vec<Option<i64>> {
    let from = format!(
        "FROM keyhook_endpoint_secrets s JOIN keyhook_endpoints e ON e.row_id = s.endpoint_row
         WHERE e.id = '{endpoint_id}'"
    );
    let n = t.count(&format!("SELECT COUNT(*) {from}"));
    (0..n)
        .map(|k| {
            let at = t.count(&format!(
                "SELECT COALESCE(s.expires_at, -1) {from} ORDER BY s.row_id LIMIT 1 OFFSET {k}"
            ));
            (at >= 0).then_some(at)
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Endpoints: create, list, get, update, delete
// ---------------------------------------------------------------------------

#[test]
fn create_list_get_update_delete() {
    let tmp = TempDb::new();
    let reg = registry(&tmp.db);
    assert!(reg.list(ORG).unwrap().is_empty());

    let first = reg
        .create(
            ORG,
            "https://Hooks.EXAMPLE.com/first",
            &["conversion.created", "conversion.created"],
            EndpointOptions {
                description: Some("Primary".into()),
                ..EndpointOptions::default()
            },
        )
        .unwrap()
        .endpoint;
    assert!(first.id.starts_with("ep_"), "{}", first.id);
    assert_eq!(first.org, ORG);
    // The normalized form is what was checked, so that is what is stored.
    assert_eq!(first.url, "https://hooks.example.com/first");
    assert_eq!(first.description.as_deref(), Some("Primary"));
    assert_eq!(first.event_types, ["conversion.created"]);
    assert!(!first.all_event_types);
    assert!(first.headers.is_empty());
    assert!(first.enabled);
    assert_eq!(first.disabled_reason, None);
    assert_eq!(first.created_at, first.updated_at);

    let second = create(&reg, ORG, "https://example.org/second").endpoint;
    assert_ne!(first.id, second.id);

    // Newest first; get returns exactly what create returned.
    assert_eq!(reg.list(ORG).unwrap(), [second.clone(), first.clone()]);
    assert_eq!(reg.get(ORG, &first.id).unwrap(), first);
    assert_eq!(reg.get(ORG, &second.id).unwrap(), second);

    thread::sleep(Duration::from_millis(5));
    let updated = reg
        .update(
            ORG,
            &first.id,
            EndpointUpdate {
                url: Some("https://hooks.example.com/v2".into()),
                event_types: Some(vec![
                    "conversion.updated".into(),
                    "affiliate.created".into(),
                ]),
                description: Some(None),
                headers: Some(vec![("X-Env".into(), "prod".into())]),
                enabled: Some(false),
                ..EndpointUpdate::default()
            },
        )
        .unwrap();
    assert_eq!(updated.id, first.id);
    assert_eq!(updated.url, "https://hooks.example.com/v2");
    assert_eq!(
        updated.event_types,
        ["affiliate.created", "conversion.updated"]
    );
    assert_eq!(updated.description, None);
    assert_eq!(updated.headers, [("x-env".to_owned(), "prod".to_owned())]);
    assert!(!updated.enabled);
    assert_eq!(updated.created_at, first.created_at);
    assert!(updated.updated_at > first.updated_at);
    assert_eq!(reg.get(ORG, &first.id).unwrap(), updated);
    // The other endpoint is untouched.
    assert_eq!(reg.get(ORG, &second.id).unwrap(), second);

    // Fields left `None` keep their values.
    let reenabled = reg
        .update(
            ORG,
            &first.id,
            EndpointUpdate {
                enabled: Some(true),
                ..EndpointUpdate::default()
            },
        )
        .unwrap();
    assert!(reenabled.enabled);
    assert_eq!(reenabled.url, updated.url);
    assert_eq!(reenabled.event_types, updated.event_types);
    assert_eq!(reenabled.headers, updated.headers);
    assert_eq!(reenabled.description, None);

    reg.delete(ORG, &first.id).unwrap();
    not_found(reg.get(ORG, &first.id), &first.id);
    not_found(reg.signing_secrets(ORG, &first.id), &first.id);
    not_found(reg.rotate_secret(ORG, &first.id, None), &first.id);
    not_found(
        reg.update(ORG, &first.id, EndpointUpdate::default()),
        &first.id,
    );
    not_found(reg.delete(ORG, &first.id), &first.id);
    assert_eq!(reg.list(ORG).unwrap(), std::slice::from_ref(&second));

    // The secrets went with it (foreign keys cascade in the file).
    assert!(stored_expiries(&tmp, &first.id).is_empty());
    assert_eq!(stored_expiries(&tmp, &second.id), [None]);

    not_found(reg.get(ORG, "ep_does_not_exist"), "ep_does_not_exist");
}

#[test]
fn create_returns_the_signing_secret() {
    let (_tmp, reg, created) = one_endpoint();
    let text = created.secret.expose();
    assert!(text.starts_with("whsec_"), "{text}");
    assert_eq!(SigningSecret::parse(&text).unwrap(), created.secret);
    assert_eq!(
        reg.signing_secrets(ORG, &created.endpoint.id).unwrap(),
        std::slice::from_ref(&created.secret)
    );

    // Each endpoint gets its own random secret.
    let other = create(&reg, ORG, URL);
    assert_ne!(other.secret, created.secret);
    assert_eq!(
        reg.signing_secrets(ORG, &other.endpoint.id).unwrap(),
        std::slice::from_ref(&other.secret)
    );

    // Debug shows neither the secret nor its key bytes.
    let debug = format!("{created:?}");
    let b64 = text.strip_prefix("whsec_").unwrap();
    assert!(!debug.contains(b64), "{debug}");
}

#[test]
fn imported_secret_is_kept() {
    let tmp = TempDb::new();
    let reg = registry(&tmp.db);
    let imported = SigningSecret::parse(SPEC_SECRET).unwrap();
    let options = EndpointOptions {
        secret: Some(imported.clone()),
        ..EndpointOptions::default()
    };
    assert!(!format!("{options:?}").contains("MfKQ9r8G"));
    let created = reg
        .create(ORG, URL, &["conversion.created"], options)
        .unwrap();
    assert_eq!(created.secret.expose(), SPEC_SECRET);
    let secrets = reg.signing_secrets(ORG, &created.endpoint.id).unwrap();
    assert_eq!(secrets, [imported]);
    assert_eq!(secrets[0].expose(), SPEC_SECRET);

    // The stored secret signs exactly as the receiver's old provider did.
    let header = signature_header(&secrets, SPEC_MSG_ID, SPEC_TIMESTAMP, SPEC_BODY);
    assert_eq!(header, SPEC_SIGNATURE);

    // Raw key bytes can be imported too.
    let from_bytes = SigningSecret::from_bytes(&[7u8; 24]).unwrap();
    let created = reg
        .create(
            ORG,
            URL,
            &["conversion.created"],
            EndpointOptions {
                secret: Some(from_bytes.clone()),
                ..EndpointOptions::default()
            },
        )
        .unwrap();
    assert_eq!(
        reg.signing_secrets(ORG, &created.endpoint.id).unwrap(),
        [from_bytes]
    );
}

#[test]
fn all_event_types_subscription() {
    let tmp = TempDb::new();
    let reg = registry(&tmp.db);
    let all = create_all_types(&reg, ORG);
    assert!(all.all_event_types);
    assert!(all.event_types.is_empty());
    assert_eq!(reg.get(ORG, &all.id).unwrap(), all);

    // With all types, a list given alongside is not kept.
    let both = reg
        .create(
            ORG,
            URL,
            &["conversion.created"],
            EndpointOptions {
                all_event_types: true,
                ..EndpointOptions::default()
            },
        )
        .unwrap()
        .endpoint;
    assert!(both.all_event_types);
    assert!(both.event_types.is_empty());

    // Switching to a list needs the list.
    let listed = reg
        .update(
            ORG,
            &all.id,
            EndpointUpdate {
                all_event_types: Some(false),
                event_types: Some(vec!["payout.created".into()]),
                ..EndpointUpdate::default()
            },
        )
        .unwrap();
    assert!(!listed.all_event_types);
    assert_eq!(listed.event_types, ["payout.created"]);

    // And back: the list is dropped.
    let back = reg
        .update(
            ORG,
            &all.id,
            EndpointUpdate {
                all_event_types: Some(true),
                ..EndpointUpdate::default()
            },
        )
        .unwrap();
    assert!(back.all_event_types);
    assert!(back.event_types.is_empty());
}

#[test]
fn custom_headers_are_lower_cased_and_their_values_stay_out_of_debug() {
    let tmp = TempDb::new();
    let reg = registry(&tmp.db);
    let options = EndpointOptions {
        headers: vec![
            ("X-Receiver-Token".into(), "tok-9f8e7d6c".into()),
            ("Authorization".into(), "Bearer s3cr3t-bearer".into()),
        ],
        ..EndpointOptions::default()
    };
    let options_debug = format!("{options:?}");
    assert!(!options_debug.contains("tok-9f8e7d6c"), "{options_debug}");
    assert!(!options_debug.contains("s3cr3t-bearer"), "{options_debug}");

    let created = reg
        .create(ORG, URL, &["conversion.created"], options)
        .unwrap();
    let expected = vec![
        ("x-receiver-token".to_owned(), "tok-9f8e7d6c".to_owned()),
        (
            "authorization".to_owned(),
            "Bearer s3cr3t-bearer".to_owned(),
        ),
    ];
    assert_eq!(created.endpoint.headers, expected);
    let endpoint = reg.get(ORG, &created.endpoint.id).unwrap();
    assert_eq!(endpoint.headers, expected);

    for debug in [
        format!("{endpoint:?}"),
        format!("{endpoint:#?}"),
        format!("{created:?}"),
        format!("{:?}", reg.list(ORG).unwrap()),
    ] {
        assert!(debug.contains("x-receiver-token"), "{debug}");
        assert!(!debug.contains("tok-9f8e7d6c"), "{debug}");
        assert!(!debug.contains("s3cr3t-bearer"), "{debug}");
    }
}

#[test]
fn registry_clones_share_the_database_across_threads() {
    let tmp = TempDb::new();
    let reg = registry(&tmp.db);
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let reg = reg.clone();
            thread::spawn(move || create(&reg, ORG, &format!("https://example.com/{i}")))
        })
        .collect();
    let mut ids: Vec<String> = handles
        .into_iter()
        .map(|h| h.join().unwrap().endpoint.id)
        .collect();
    ids.sort();
    let mut listed: Vec<String> = reg.list(ORG).unwrap().into_iter().map(|e| e.id).collect();
    listed.sort();
    assert_eq!(listed, ids);
}

// ---------------------------------------------------------------------------
// Secret rotation
// ---------------------------------------------------------------------------

#[test]
fn rotation_signs_with_both_secrets_until_the_grace_ends() {
    let (_tmp, reg, created) = one_endpoint();
    let id = &created.endpoint.id;
    let old = created.secret;

    let new = reg
        .rotate_secret(ORG, id, Some(Duration::from_millis(1500)))
        .unwrap();
    let rotated_at = std::time::Instant::now();
    assert_ne!(new, old);
    assert!(new.expose().starts_with("whsec_"));

    let secrets = reg.signing_secrets(ORG, id).unwrap();
    assert_eq!(secrets, [new.clone(), old.clone()], "new first, then old");

    // A request signed with both verifies with either secret alone, so a
    // receiver can switch at any time during the grace period.
    let ts = unix_now();
    let body = br#"{"type":"conversion.created"}"#;
    let header = signature_header(&secrets, "msg_rotation", ts, body);
    assert_eq!(header.split(' ').count(), 2, "{header}");
    assert_eq!(verify_with(&header, &new, "msg_rotation", ts, body), Ok(()));
    assert_eq!(verify_with(&header, &old, "msg_rotation", ts, body), Ok(()));
    let stranger = SigningSecret::generate().unwrap();
    assert_eq!(
        verify_with(&header, &stranger, "msg_rotation", ts, body),
        Err(VerifyError::NoMatchingSignature)
    );
    // Tampering with the body breaks both signatures.
    assert_eq!(
        verify_with(&header, &old, "msg_rotation", ts, b"{}"),
        Err(VerifyError::NoMatchingSignature)
    );

    // After the grace period only the new secret signs.
    let wait = Duration::from_millis(1700).saturating_sub(rotated_at.elapsed());
    thread::sleep(wait);
    let secrets = reg.signing_secrets(ORG, id).unwrap();
    assert_eq!(secrets, std::slice::from_ref(&new));
    let header = signature_header(&secrets, "msg_after", ts, body);
    assert_eq!(verify_with(&header, &new, "msg_after", ts, body), Ok(()));
    assert_eq!(
        verify_with(&header, &old, "msg_after", ts, body),
        Err(VerifyError::NoMatchingSignature)
    );

    // The endpoint itself did not change.
    assert_eq!(reg.get(ORG, id).unwrap(), created.endpoint);
}

#[test]
fn zero_grace_retires_the_old_secret_at_once() {
    let (_tmp, reg, created) = one_endpoint();
    let id = &created.endpoint.id;
    let new = reg.rotate_secret(ORG, id, Some(Duration::ZERO)).unwrap();
    assert_eq!(reg.signing_secrets(ORG, id).unwrap(), [new]);
}

#[test]
fn default_rotation_grace_is_24_hours() {
    assert_eq!(DEFAULT_ROTATION_GRACE, Duration::from_secs(24 * 3600));
    let (tmp, reg, created) = one_endpoint();
    let id = &created.endpoint.id;

    let before = ms(SystemTime::now());
    let new = reg.rotate_secret(ORG, id, None).unwrap();
    let after = ms(SystemTime::now());
    assert_eq!(
        reg.signing_secrets(ORG, id).unwrap(),
        [new, created.secret.clone()]
    );

    let day = 24 * 3600 * 1000;
    let expiries = stored_expiries(&tmp, id);
    assert_eq!(expiries.len(), 2, "{expiries:?}");
    let old_expiry = expiries[0].expect("the old secret has an expiry");
    assert!(
        (before + day..=after + day).contains(&old_expiry),
        "old secret expires at {old_expiry}, expected {before}+24h..={after}+24h"
    );
    assert_eq!(expiries[1], None, "the new secret does not expire");
}

#[test]
fn rotation_grace_over_seven_days_is_refused() {
    assert_eq!(MAX_ROTATION_GRACE, Duration::from_secs(7 * 24 * 3600));
    let fx = Fixture::new();
    for grace in [
        MAX_ROTATION_GRACE + Duration::from_millis(1),
        Duration::from_secs(8 * 24 * 3600),
        Duration::MAX,
    ] {
        let reason = invalid_input(fx.reg.rotate_secret(ORG, &fx.id, Some(grace)), "grace");
        assert!(reason.contains("7 days"), "{reason}");
        fx.assert_unchanged("a grace over 7 days");
    }
    // Exactly seven days is allowed.
    let new = fx
        .reg
        .rotate_secret(ORG, &fx.id, Some(MAX_ROTATION_GRACE))
        .unwrap();
    assert_eq!(fx.reg.signing_secrets(ORG, &fx.id).unwrap()[0], new);
}

/// Rotating again must not give a secret that is already on its way out a
/// longer life than it had (the API-key store's own rule: a scheduled
/// revocation may come sooner, never later).
#[test]
fn rotating_again_does_not_extend_an_older_secret() {
    let (_tmp, reg, created) = one_endpoint();
    let id = &created.endpoint.id;
    let first = created.secret;

    let second = reg
        .rotate_secret(ORG, id, Some(Duration::from_millis(300)))
        .unwrap();
    let third = reg.rotate_secret(ORG, id, None).unwrap();
    assert_eq!(
        reg.signing_secrets(ORG, id).unwrap(),
        [third.clone(), second.clone(), first.clone()]
    );
    thread::sleep(Duration::from_millis(500));
    // `first` was given 300 ms; the second rotation's 24 h are for `second`.
    assert_eq!(
        reg.signing_secrets(ORG, id).unwrap(),
        [third.clone(), second]
    );

    // A shorter grace does cut older secrets short (e.g. after a leak).
    let fourth = reg.rotate_secret(ORG, id, Some(Duration::ZERO)).unwrap();
    assert_eq!(reg.signing_secrets(ORG, id).unwrap(), [fourth]);
    assert_ne!(third, first);
}

// ---------------------------------------------------------------------------
// Organizations and limits
// ---------------------------------------------------------------------------

#[test]
fn organizations_are_isolated() {
    let fx = Fixture::new();
    let reg = &fx.reg;
    let id = fx.id.as_str();

    not_found(reg.get(OTHER_ORG, id), id);
    not_found(reg.signing_secrets(OTHER_ORG, id), id);
    not_found(reg.rotate_secret(OTHER_ORG, id, None), id);
    not_found(reg.rotate_secret(OTHER_ORG, id, Some(Duration::ZERO)), id);
    not_found(
        reg.update(
            OTHER_ORG,
            id,
            EndpointUpdate {
                url: Some("https://attacker.example.net/".into()),
                enabled: Some(false),
                ..EndpointUpdate::default()
            },
        ),
        id,
    );
    not_found(reg.delete(OTHER_ORG, id), id);
    assert!(reg.list(OTHER_ORG).unwrap().is_empty());

    // The error does not say the id exists elsewhere.
    let message = reg.get(OTHER_ORG, id).unwrap_err().to_string();
    assert!(!message.contains(ORG), "{message}");

    fx.assert_unchanged("another organization's calls");

    // B's own endpoints are separate, and A does not see them either.
    let theirs = create(reg, OTHER_ORG, URL).endpoint;
    assert_eq!(reg.list(OTHER_ORG).unwrap(), std::slice::from_ref(&theirs));
    not_found(reg.get(ORG, &theirs.id), &theirs.id);
    not_found(reg.delete(ORG, &theirs.id), &theirs.id);
    assert_eq!(snapshot(reg, ORG), fx.before);
}

#[test]
fn endpoint_limit_per_organization() {
    let tmp = TempDb::new();
    let reg = WebhookRegistry::builder(&tmp.db).max_endpoints(2).build();
    register_product_types(&reg);
    let first = create(&reg, ORG, URL).endpoint;
    create(&reg, ORG, URL);
    let before = snapshot(&reg, ORG);

    match try_create(&reg, ORG, URL) {
        Err(e @ Error::LimitReached { limit: 2, .. }) => {
            assert!(e.to_string().contains('2'), "{e}");
            assert!(e.is_client_error());
        }
        other => panic!("expected LimitReached {{ limit: 2 }}, got {other:?}"),
    }
    assert_eq!(snapshot(&reg, ORG), before);

    // The limit is per organization.
    create(&reg, OTHER_ORG, URL);
    create(&reg, OTHER_ORG, URL);
    assert_eq!(reg.list(OTHER_ORG).unwrap().len(), 2);

    // Deleting one makes room again.
    reg.delete(ORG, &first.id).unwrap();
    create(&reg, ORG, URL);
    assert_eq!(reg.list(ORG).unwrap().len(), 2);
}

#[test]
fn endpoint_limit_holds_under_concurrent_creates() {
    let tmp = TempDb::new();
    let reg = WebhookRegistry::builder(&tmp.db).max_endpoints(3).build();
    register_product_types(&reg);
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let reg = reg.clone();
            thread::spawn(move || try_create(&reg, ORG, URL))
        })
        .collect();
    let mut created = 0;
    for h in handles {
        match h.join().unwrap() {
            Ok(_) => created += 1,
            Err(Error::LimitReached { limit: 3, .. }) => {}
            Err(other) => panic!("unexpected error: {other:?}"),
        }
    }
    assert_eq!(created, 3);
    assert_eq!(reg.list(ORG).unwrap().len(), 3);
}

// ---------------------------------------------------------------------------
// The event-type catalogue
// ---------------------------------------------------------------------------

#[test]
fn event_type_catalogue() {
    let tmp = TempDb::new();
    let reg = WebhookRegistry::new(&tmp.db);
    assert!(reg.event_types().unwrap().is_empty());
    // Before the catalogue has a type, nothing can subscribe to it.
    unknown_event_type(try_create(&reg, ORG, URL), "conversion.created");

    for (name, description) in PRODUCT_TYPES {
        let registered = reg.register_event_type(name, description).unwrap();
        assert_eq!(
            (registered.name.as_str(), registered.description.as_str()),
            (name, description)
        );
        assert_eq!(registered.example, None);
        assert!(!registered.deprecated && !registered.archived);
    }
    let mut expected: Vec<(String, String)> = PRODUCT_TYPES
        .iter()
        .map(|(n, d)| ((*n).into(), (*d).into()))
        .collect();
    expected.sort();
    let names: Vec<_> = expected.iter().map(|t| t.0.as_str()).collect();
    assert_eq!(
        names,
        [
            "affiliate.created",
            "affiliate.updated",
            "conversion.created",
            "conversion.updated",
            "payout.created"
        ]
    );
    let listed: Vec<(String, String)> = reg
        .event_types()
        .unwrap()
        .into_iter()
        .map(|t| (t.name, t.description))
        .collect();
    assert_eq!(listed, expected);

    // Registering again updates the description and adds nothing.
    reg.register_event_type("conversion.created", "A sale or lead was recorded")
        .unwrap();
    let types = reg.event_types().unwrap();
    assert_eq!(types.len(), 5);
    let conversion = types
        .iter()
        .find(|t| t.name == "conversion.created")
        .unwrap();
    assert_eq!(conversion.description, "A sale or lead was recorded");

    // Malformed names are refused and not added.
    for bad in [
        "Conversion Created",
        "a..b",
        ".a",
        "a.",
        "",
        "conversion-created",
    ] {
        let reason = invalid_input(reg.register_event_type(bad, "x"), "event_type");
        assert!(reason.contains(bad), "{reason}");
    }
    invalid_input(
        reg.register_event_type("ok.name", "bell\u{7}"),
        "description",
    );
    assert_eq!(reg.event_types().unwrap().len(), 5);

    // Now subscriptions work.
    create(&reg, ORG, URL);
}

// ---------------------------------------------------------------------------
// Persistence
// ---------------------------------------------------------------------------

#[test]
fn reopening_the_file_keeps_endpoints_and_secrets() {
    let (_dir, path) = temp_db_path();
    let (before, catalogue, imported_id) = {
        let db = Database::open(&path).unwrap();
        let reg = registry(&db);
        let imported = reg
            .create(
                ORG,
                URL,
                &["affiliate.created", "payout.created"],
                EndpointOptions {
                    description: Some("imported".into()),
                    headers: vec![("X-Token".into(), "abc".into())],
                    secret: Some(SigningSecret::parse(SPEC_SECRET).unwrap()),
                    ..EndpointOptions::default()
                },
            )
            .unwrap();
        let rotated = create(&reg, ORG, "https://example.org/rotated");
        reg.rotate_secret(ORG, &rotated.endpoint.id, None).unwrap();
        reg.update(
            ORG,
            &rotated.endpoint.id,
            EndpointUpdate {
                enabled: Some(false),
                ..EndpointUpdate::default()
            },
        )
        .unwrap();
        let before = snapshot(&reg, ORG);
        assert_eq!(before.len(), 2);
        assert_eq!(before[0].1.len(), 2);
        (before, reg.event_types().unwrap(), imported.endpoint.id)
        // `reg` and `db` drop here: the file is closed.
    };

    let db = Database::open(&path).unwrap();
    let reg = WebhookRegistry::new(&db);
    assert_eq!(snapshot(&reg, ORG), before);
    assert_eq!(reg.event_types().unwrap(), catalogue);
    assert_eq!(
        reg.signing_secrets(ORG, &imported_id).unwrap()[0].expose(),
        SPEC_SECRET
    );
    // Still usable after reopening.
    create(&reg, ORG, URL);
    assert_eq!(reg.list(ORG).unwrap().len(), 3);
}

// ---------------------------------------------------------------------------
// Bad input: a clear error, and nothing changed
// ---------------------------------------------------------------------------

#[test]
fn malformed_urls_are_invalid_input_and_change_nothing() {
    let fx = Fixture::new();
    let long = format!("https://example.com/{}", "a".repeat(2100));
    let prefix = "https://example.com/";
    let at_limit = format!("{prefix}{}", "a".repeat(2048 - prefix.len()));
    let one_over = format!("{at_limit}a");
    // 2,020 bytes as given, 6,020 once percent-encoded.
    let expands = format!("{prefix}{}", "é".repeat(1000));
    assert!(expands.len() <= 2048);
    let cases: Vec<(&str, &str)> = vec![
        ("not a url", "absolute"),
        ("https://", "host"),
        ("/hook", "absolute"),
        ("", "empty"),
        (" https://example.com/", "whitespace"),
        ("ftp://example.com/", "scheme"),
        ("file:///etc/passwd", "scheme"),
        ("http://example.com/", "scheme"),
        (&long, "2048"),
        ("https://example.com/#x", "fragment"),
        ("https://us\u{1}er:pw@example.com/", "control character"),
        ("https://example.com/\r\nX-Injected: 1", "control character"),
        ("https://user:hunter2@example.com/", "username or password"),
        ("https://user@example.com/", "username or password"),
        ("https://example.com:0/", "port 0"),
        (&one_over, "2048"),
        (&expands, "normalized"),
    ];
    for (url, expected) in &cases {
        let reason = invalid_input(try_create(&fx.reg, EMPTY_ORG, url), "url");
        assert!(
            reason.contains(expected),
            "create {url:?}: {reason:?} should mention {expected:?}"
        );
        // Reasons name the part at fault, never echo the URL or its credentials.
        assert!(!reason.contains("hunter2"), "{reason}");
        assert!(reason.len() < 200, "{reason}");

        let update_reason = invalid_input(
            fx.update(EndpointUpdate {
                url: Some((*url).to_owned()),
                ..EndpointUpdate::default()
            }),
            "url",
        );
        assert_eq!(update_reason, reason, "update {url:?}");
        fx.assert_unchanged(url);
    }

    // Exactly 2,048 bytes is allowed.
    let ep = try_create(&fx.reg, EMPTY_ORG, &at_limit).unwrap().endpoint;
    assert_eq!(ep.url, at_limit);
}

#[test]
fn non_public_addresses_are_refused_and_change_nothing() {
    let fx = Fixture::new();
    let cases = [
        ("https://10.0.0.1/", "private"),
        ("https://172.16.5.4/", "private"),
        ("https://192.168.1.1/", "private"),
        ("https://127.0.0.1/", "loopback"),
        ("https://127.1.2.3:8443/hook", "loopback"),
        ("https://2130706433/", "loopback"),
        ("https://0x7f.1/", "loopback"),
        ("https://[::1]/", "loopback"),
        ("https://169.254.169.254/latest/meta-data/", "metadata"),
        ("https://169.254.1.1/", "link-local"),
        ("https://100.64.0.1/", "carrier-grade NAT"),
        ("https://[fe80::1]/", "link-local"),
        ("https://[fc00::1]/", "private"),
        ("https://[::ffff:127.0.0.1]/", "loopback"),
        ("https://[::ffff:10.1.2.3]/", "private"),
        ("https://0.0.0.0/", "unspecified"),
        ("https://[::]/", "unspecified"),
        ("https://224.0.0.1/", "multicast"),
        ("https://255.255.255.255/", "broadcast"),
        ("https://localhost/", "loopback"),
        ("https://LocalHost./", "loopback"),
        ("https://api.localhost/", "loopback"),
        ("https://metadata.google.internal/", "metadata"),
        ("https://127.0.0.1./", "loopback"),
        ("https://0177.0.0.1/", "loopback"),
        (
            "https://\u{ff4c}\u{ff4f}\u{ff43}\u{ff41}\u{ff4c}\u{ff48}\u{ff4f}\u{ff53}\u{ff54}/",
            "loopback",
        ),
        ("https://[::ffff:169.254.169.254]/", "metadata"),
        ("https://[64:ff9b::a9fe:a9fe]/", "metadata"),
    ];
    for (url, expected) in cases {
        let reason = refused(try_create(&fx.reg, EMPTY_ORG, url));
        assert!(
            reason.contains(expected),
            "create {url}: {reason:?} should mention {expected:?}"
        );
        let update_reason = refused(fx.update(EndpointUpdate {
            url: Some(url.to_owned()),
            ..EndpointUpdate::default()
        }));
        assert_eq!(update_reason, reason, "update {url}");
        fx.assert_unchanged(url);
    }
}

#[test]
fn http_is_accepted_only_when_the_policy_allows_it() {
    let strict = Fixture::new();
    let reason = invalid_input(
        try_create(&strict.reg, EMPTY_ORG, "http://example.com/"),
        "url",
    );
    assert!(reason.contains("http"), "{reason}");
    strict.assert_unchanged("http on a strict policy");

    let lax = Fixture::with_policy(DestinationPolicy::new().allow_http(true));
    let ep = try_create(&lax.reg, EMPTY_ORG, "http://example.com/")
        .unwrap()
        .endpoint;
    assert_eq!(ep.url, "http://example.com/");
    // Other schemes, and non-public addresses, stay refused.
    invalid_input(
        lax.update(EndpointUpdate {
            url: Some("ftp://example.com/".into()),
            ..EndpointUpdate::default()
        }),
        "url",
    );
    refused(lax.update(EndpointUpdate {
        url: Some("http://10.0.0.1/".into()),
        ..EndpointUpdate::default()
    }));
    assert_eq!(snapshot(&lax.reg, ORG), lax.before);
}

#[test]
fn loopback_is_accepted_only_when_the_policy_allows_it() {
    let fx = Fixture::with_policy(DestinationPolicy::new().allow_loopback(true));
    for url in [
        "https://127.0.0.1:8443/hook",
        "https://[::1]/",
        "https://localhost/",
    ] {
        let ep = try_create(&fx.reg, OTHER_ORG, url)
            .unwrap_or_else(|e| panic!("{url}: {e}"))
            .endpoint;
        assert_eq!(ep.url, url);
    }
    assert_eq!(fx.reg.list(OTHER_ORG).unwrap().len(), 3);
    // Only loopback is lifted.
    for url in [
        "https://10.0.0.1/",
        "https://169.254.169.254/",
        "https://0.0.0.0/",
    ] {
        refused(fx.update(EndpointUpdate {
            url: Some(url.into()),
            ..EndpointUpdate::default()
        }));
        refused(try_create(&fx.reg, EMPTY_ORG, url));
    }
    assert_eq!(snapshot(&fx.reg, ORG), fx.before);
    assert!(fx.reg.list(EMPTY_ORG).unwrap().is_empty());
}

#[test]
fn allow_cidr_lifts_only_its_block() {
    let cidr: Cidr = "10.0.0.0/8".parse().unwrap();
    let fx = Fixture::with_policy(DestinationPolicy::new().allow_cidr(cidr));
    let ep = fx
        .reg
        .update(
            ORG,
            &fx.id,
            EndpointUpdate {
                url: Some("https://10.0.0.1/hook".into()),
                ..EndpointUpdate::default()
            },
        )
        .unwrap();
    assert_eq!(ep.url, "https://10.0.0.1/hook");
    let before = snapshot(&fx.reg, ORG);

    for (url, expected) in [
        ("https://192.168.1.1/", "private"),
        ("https://172.16.5.4/", "private"),
        ("https://127.0.0.1/", "loopback"),
    ] {
        let result = fx.reg.update(
            ORG,
            &fx.id,
            EndpointUpdate {
                url: Some(url.into()),
                ..EndpointUpdate::default()
            },
        );
        let reason = refused(result);
        assert!(reason.contains(expected), "{url}: {reason}");
        assert_eq!(snapshot(&fx.reg, ORG), before, "{url}");
    }

    // Even an allow-list covering everything never allows 0.0.0.0.
    let everything =
        Fixture::with_policy(DestinationPolicy::new().allow_cidr("0.0.0.0/0".parse().unwrap()));
    let reason = refused(try_create(&everything.reg, EMPTY_ORG, "https://0.0.0.0/"));
    assert!(reason.contains("unspecified"), "{reason}");
    everything.assert_unchanged("0.0.0.0 under 0.0.0.0/0");

    // A malformed block is an input error.
    for bad in ["10.0.0.0/33", "10.0.0/8", "nonsense", ""] {
        invalid_input(bad.parse::<Cidr>(), "cidr");
    }
}

#[test]
fn event_type_list_errors_change_nothing() {
    let fx = Fixture::new();
    let none: &[&str] = &[];

    // Empty list without all_event_types.
    let reason = invalid_input(
        fx.create_in_empty_org(URL, none, EndpointOptions::default()),
        "event_types",
    );
    assert!(reason.contains("event type"), "{reason}");
    fx.assert_unchanged("an empty event type list");

    // Unknown types are named.
    unknown_event_type(
        fx.create_in_empty_org(URL, &["conversion.deleted"], EndpointOptions::default()),
        "conversion.deleted",
    );
    unknown_event_type(
        fx.create_in_empty_org(
            URL,
            &["conversion.created", "refund.created"],
            EndpointOptions::default(),
        ),
        "refund.created",
    );
    unknown_event_type(
        fx.update(EndpointUpdate {
            url: Some("https://example.org/new".into()),
            event_types: Some(vec!["payout.created".into(), "payout.failed".into()]),
            description: Some(None),
            enabled: Some(false),
            ..EndpointUpdate::default()
        }),
        "payout.failed",
    );
    fx.assert_unchanged("an unknown event type");

    // Malformed names are named too.
    for bad in [
        "Conversion Created",
        "a..b",
        ".a",
        "a.",
        "conversion-created",
        "",
    ] {
        let reason = match fx.create_in_empty_org(
            URL,
            &["conversion.created", bad],
            EndpointOptions::default(),
        ) {
            Err(Error::InvalidInput { field, reason }) => {
                assert!(field.starts_with("event_type"), "{bad:?}: field {field}");
                reason
            }
            other => panic!("{bad:?}: expected InvalidInput, got {other:?}"),
        };
        assert!(reason.contains(&format!("{bad:?}")), "{reason}");
        match fx.update(EndpointUpdate {
            event_types: Some(vec![bad.into()]),
            ..EndpointUpdate::default()
        }) {
            Err(Error::InvalidInput { field, .. }) => {
                assert!(field.starts_with("event_type"), "{bad:?}: field {field}")
            }
            other => panic!("update {bad:?}: expected InvalidInput, got {other:?}"),
        }
        fx.assert_unchanged(bad);
    }
}

#[test]
fn update_to_an_empty_event_list_is_refused() {
    let fx = Fixture::new();
    invalid_input(
        fx.update(EndpointUpdate {
            event_types: Some(vec![]),
            ..EndpointUpdate::default()
        }),
        "event_types",
    );
    fx.assert_unchanged("an empty event list");
    invalid_input(
        fx.update(EndpointUpdate {
            event_types: Some(vec![]),
            all_event_types: Some(false),
            url: Some("https://example.org/new".into()),
            ..EndpointUpdate::default()
        }),
        "event_types",
    );
    fx.assert_unchanged("an empty event list with a new URL");

    // An all-types endpoint cannot turn the flag off without a list.
    let all = create_all_types(&fx.reg, OTHER_ORG);
    invalid_input(
        fx.reg.update(
            OTHER_ORG,
            &all.id,
            EndpointUpdate {
                all_event_types: Some(false),
                ..EndpointUpdate::default()
            },
        ),
        "event_types",
    );
    assert_eq!(fx.reg.get(OTHER_ORG, &all.id).unwrap(), all);
}

#[test]
fn bad_custom_headers_are_refused_and_change_nothing() {
    let fx = Fixture::new();
    let headers = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    };
    let try_both = |h: Vec<(String, String)>| -> String {
        let reason = invalid_input(
            fx.create_in_empty_org(
                URL,
                &["conversion.created"],
                EndpointOptions {
                    headers: h.clone(),
                    ..EndpointOptions::default()
                },
            ),
            "headers",
        );
        let update_reason = invalid_input(
            fx.update(EndpointUpdate {
                headers: Some(h),
                ..EndpointUpdate::default()
            }),
            "headers",
        );
        assert_eq!(update_reason, reason);
        fx.assert_unchanged(&reason);
        reason
    };

    let reason = try_both(headers(&[("X-A", "1"), ("x-a", "2")]));
    assert!(
        reason.contains("x-a") && reason.contains("twice"),
        "{reason}"
    );

    for forbidden in [
        "webhook-signature",
        "Webhook-Id",
        "webhook-timestamp",
        "content-type",
        "Content-Length",
        "host",
        "Connection",
        "transfer-encoding",
        "Proxy-Authorization",
        "upgrade",
    ] {
        let reason = try_both(headers(&[("X-Ok", "1"), (forbidden, "v")]));
        assert!(
            reason.contains(&forbidden.to_ascii_lowercase()),
            "{forbidden}: {reason}"
        );
    }

    let reason = try_both(headers(&[("bad name", "v")]));
    assert!(reason.contains("bad name"), "{reason}");
    try_both(headers(&[("", "v")]));

    // Values are checked but never echoed: they often hold credentials.
    for value in [
        "s3cr3t\r\nX-Injected: 1",
        "s3cr3t\u{0}",
        format!("s3cr3t{}", "v".repeat(5000)).as_str(),
    ] {
        let reason = try_both(headers(&[("Authorization", value)]));
        assert!(reason.contains("authorization"), "{reason}");
        assert!(!reason.contains("s3cr3t"), "{reason}");
    }

    let many: Vec<(String, String)> = (0..21).map(|i| (format!("x-h{i}"), "v".into())).collect();
    let reason = try_both(many);
    assert!(reason.contains("20"), "{reason}");
}

#[test]
fn malformed_imported_secrets_are_refused_without_echoing_them() {
    let fx = Fixture::new();
    let too_short = "whsec_AAAAAAAAAAAAAAAAAAAAAA=="; // 16 bytes
    let too_long = format!("whsec_{}", "A".repeat(88)); // 66 bytes
    for bad in ["whsec_", "whsec_!!!", "", too_short, too_long.as_str()] {
        let err = SigningSecret::parse(bad).unwrap_err();
        let message = err.to_string();
        let debug = format!("{err:?}");
        let reason = invalid_input(Err::<(), _>(err), "secret");
        assert!(!reason.is_empty());
        if bad.len() > 6 {
            let b64 = &bad[6..];
            assert!(!message.contains(b64), "{bad:?}: {message}");
            assert!(!debug.contains(b64), "{bad:?}: {debug}");
        }
        assert!(!message.contains("whsec_"), "{message}");
    }
    assert!(
        SigningSecret::parse(too_short)
            .unwrap_err()
            .to_string()
            .contains("16 bytes")
    );
    invalid_input(SigningSecret::from_bytes(&[1u8; 23]), "secret");
    invalid_input(SigningSecret::from_bytes(&[1u8; 65]), "secret");
    fx.assert_unchanged("malformed secrets");
}

#[test]
fn another_organizations_endpoint_id_changes_nothing() {
    let fx = Fixture::new();
    // Valid changes aimed at ORG's endpoint from OTHER_ORG.
    not_found(
        fx.reg.update(
            OTHER_ORG,
            &fx.id,
            EndpointUpdate {
                url: Some("https://example.net/takeover".into()),
                event_types: Some(vec!["payout.created".into()]),
                all_event_types: Some(true),
                description: Some(Some("mine now".into())),
                headers: Some(vec![("X-Evil".into(), "1".into())]),
                enabled: Some(false),
            },
        ),
        &fx.id,
    );
    not_found(fx.reg.rotate_secret(OTHER_ORG, &fx.id, None), &fx.id);
    not_found(fx.reg.delete(OTHER_ORG, &fx.id), &fx.id);
    fx.assert_unchanged("another organization's id");
}

#[test]
fn bad_descriptions_and_orgs_are_refused() {
    let fx = Fixture::new();
    let long = "d".repeat(1001);
    for bad in ["bell\u{7}", long.as_str()] {
        invalid_input(
            fx.create_in_empty_org(
                URL,
                &["conversion.created"],
                EndpointOptions {
                    description: Some(bad.into()),
                    ..EndpointOptions::default()
                },
            ),
            "description",
        );
        invalid_input(
            fx.update(EndpointUpdate {
                description: Some(Some(bad.into())),
                ..EndpointUpdate::default()
            }),
            "description",
        );
        fx.assert_unchanged("a bad description");
    }
    for org in ["", "org\u{0}a"] {
        invalid_input(try_create(&fx.reg, org, URL), "org");
    }
    fx.assert_unchanged("a bad org");
}
