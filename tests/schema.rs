//! keyhook owns its schema politely: prefixed tables, its own migration
//! table, the host's tables and `user_version` left alone, a keyhook 0.1
//! file upgraded in place, a newer schema refused.

mod common;
#[path = "common/receiver.rs"]
mod receiver;

use std::time::Duration;

use common::{loopback_registry, temp_db_path, verify_signed, wait_until};
use keyhook::{
    ApiKeyStore, Database, DeliveryState, Dispatcher, EndpointUpdate, KeySettings, SigningSecret,
};
use receiver::Receiver;
use serde_json::json;

const FIXTURE: &[u8] = include_bytes!("fixtures/keyhook-0.1.sqlite3");
/// What the fixture's writer (keyhook 0.1, `user_version` 3) printed.
const FIXTURE_FACTS: &str = include_str!("fixtures/keyhook-0.1.json");

fn tables(path: &std::path::Path) -> Vec<String> {
    let c = rusqlite::Connection::open(path).unwrap();
    let mut stmt = c
        .prepare("SELECT name FROM sqlite_schema WHERE type IN ('table', 'index', 'trigger') AND name NOT LIKE 'sqlite_%' ORDER BY name")
        .unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

fn user_version(path: &std::path::Path) -> u32 {
    rusqlite::Connection::open(path)
        .unwrap()
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap()
}

#[test]
fn every_table_index_and_trigger_is_prefixed() {
    let (_dir, path) = temp_db_path();
    drop(Database::open(&path).unwrap());
    let names = tables(&path);
    assert!(names.len() > 20, "{names:?}");
    for name in &names {
        assert!(name.starts_with("keyhook_"), "{name} is not prefixed");
    }
    assert_eq!(user_version(&path), 0, "keyhook wrote user_version");
}

#[test]
fn a_file_with_the_host_s_own_tables_and_user_version_works() {
    for host_version in [1u32, 3, 42] {
        let (_dir, path) = temp_db_path();
        {
            let host = rusqlite::Connection::open(&path).unwrap();
            host.execute_batch(
                "CREATE TABLE organizations (id TEXT PRIMARY KEY, name TEXT NOT NULL);
                 CREATE TABLE events (id INTEGER PRIMARY KEY, what TEXT);
                 CREATE INDEX deliveries_due ON events (what);
                 INSERT INTO organizations VALUES ('org_1', 'Acme');
                 INSERT INTO events (what) VALUES ('signup');",
            )
            .unwrap();
            host.pragma_update(None, "user_version", host_version)
                .unwrap();
        }
        let db = Database::open(&path).unwrap();
        let keys = ApiKeyStore::builder(&db).prefix("vr").build().unwrap();
        keys.set_api_keys_enabled("org_1", true).unwrap();
        let key = keys
            .create("org_1", "Zapier Integration", KeySettings::default())
            .unwrap();
        assert_eq!(keys.verify(key.secret.expose()).unwrap().org, "org_1");
        let reg = loopback_registry(&db);
        reg.register_event_type("conversion.created", "A sale")
            .unwrap();
        let d = Dispatcher::builder(&db, &reg).workers(0).start().unwrap();
        d.emit("org_1", "conversion.created", &json!({})).unwrap();
        drop((d, reg, keys, db));
        // Reopening changes nothing.
        drop(Database::open(&path).unwrap());

        assert_eq!(user_version(&path), host_version);
        let host = rusqlite::Connection::open(&path).unwrap();
        let name: String = host
            .query_row(
                "SELECT name FROM organizations WHERE id = 'org_1'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(name, "Acme");
        let what: String = host
            .query_row("SELECT what FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(what, "signup");
    }
}

#[test]
fn a_keyhook_0_1_file_is_upgraded_in_place() {
    let facts: serde_json::Value = serde_json::from_str(FIXTURE_FACTS).unwrap();
    let fact = |k: &str| facts[k].as_str().unwrap().to_owned();
    let (_dir, path) = temp_db_path();
    std::fs::write(&path, FIXTURE).unwrap();
    assert_eq!(user_version(&path), 3);
    assert!(tables(&path).contains(&"api_keys".to_owned()));
    // A second 0.1 key, made by a store whose prefix holds an underscore.
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(
            "INSERT INTO api_keys (id, org_id, name, environment, hint, hash, hash_kind, scopes,
                 created_at, updated_at, org_enabled)
             SELECT 'key_underscored', org_id, 'Other', 'test', 'my_app_test_abcdef…', hash,
                 hash_kind, scopes, created_at, updated_at, org_enabled FROM api_keys",
        )
        .unwrap();

    let db = Database::open(&path).unwrap();
    // Old names are gone, new ones are there; user_version is untouched.
    let names = tables(&path);
    for name in &names {
        assert!(name.starts_with("keyhook_"), "{name} left unprefixed");
    }
    assert_eq!(user_version(&path), 3);
    // Each key's prefix is recovered from its hint.
    let prefixes: Vec<(String, String)> = {
        let c = rusqlite::Connection::open(&path).unwrap();
        let mut stmt = c
            .prepare("SELECT id, prefix FROM keyhook_api_keys ORDER BY row_id")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    };
    assert_eq!(prefixes[0].1, "vr");
    assert_eq!(prefixes[1], ("key_underscored".into(), "my_app".into()));

    // The key made by 0.1 still verifies, with its organization.
    let keys = ApiKeyStore::builder(&db).prefix("vr").build().unwrap();
    let verified = keys.verify(&fact("key")).unwrap();
    assert_eq!(verified.org, "org_1");
    // Its endpoint and signing secret survive.
    let reg = loopback_registry(&db);
    let endpoint = reg.get("org_1", &fact("endpoint")).unwrap();
    let secrets = reg.signing_secrets("org_1", &endpoint.id).unwrap();
    let secret = SigningSecret::parse(&fact("secret")).unwrap();
    assert_eq!(secrets[0].expose(), secret.expose());
    // Its pending delivery keeps its id and is delivered, signed, after the
    // endpoint is pointed at a live receiver.
    let d = Dispatcher::builder(&db, &reg)
        .workers(1)
        .poll_interval(Duration::from_millis(50))
        .start()
        .unwrap();
    let history = d.event_deliveries("org_1", &fact("event")).unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].id, "dlv_1");
    assert_eq!(
        d.delivery("org_1", "dlv_1").unwrap().event_id,
        fact("event")
    );
    let rx = Receiver::ok();
    reg.update(
        "org_1",
        &endpoint.id,
        EndpointUpdate {
            url: Some(rx.url("/hook")),
            ..EndpointUpdate::default()
        },
    )
    .unwrap();
    d.wake();
    assert!(rx.wait_for(1, Duration::from_secs(30)));
    let got = &rx.received()[0];
    assert_eq!(got.header("webhook-id"), Some(fact("event").as_str()));
    verify_signed(|h| got.header(h), &got.body, &[secret]).unwrap();
    assert!(wait_until(Duration::from_secs(20), || {
        d.delivery("org_1", "dlv_1").unwrap().state == DeliveryState::Delivered
    }));
    // New deliveries get random ids beside the old ones.
    let new = d
        .emit(
            "org_1",
            "conversion.created",
            &json!({ "after": "upgrade" }),
        )
        .unwrap();
    let id = d.event_deliveries("org_1", &new).unwrap()[0].id.clone();
    assert_eq!(id.len(), "dlv_".len() + 27);
    d.shutdown(Duration::from_secs(10)).unwrap();
    drop((d, reg, keys, db));
    // Opening again is a no-op.
    let before = tables(&path);
    drop(Database::open(&path).unwrap());
    assert_eq!(tables(&path), before);
}
