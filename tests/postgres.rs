//! What only PostgreSQL has: connection errors, the host's own
//! transaction, several handles (app servers) on one schema, backends
//! killed under a running dispatcher. Runs when `KEYHOOK_TEST_POSTGRES`
//! names a server (CI sets it); the other suites run on it too.
#![cfg(feature = "postgres")]

mod common;
#[path = "common/receiver.rs"]
mod receiver;

use std::collections::HashSet;
use std::time::Duration;

use common::{TempDb, endpoint, loopback_registry, postgres_url, wait_until};
use keyhook::postgres::{Client, NoTls};
use keyhook::{ApiKeyStore, Database, Error, KeySettings, NewEvent, PgProblem, Rejection};
use receiver::Receiver;

const ORG: &str = "org_pg";
const TYPE: &str = "pg.tick";
const WAIT: Duration = Duration::from_secs(20);

/// The test server, or `None` (the test passes vacuously, saying so).
fn server() -> Option<String> {
    let url = postgres_url();
    if url.is_none() {
        eprintln!("KEYHOOK_TEST_POSTGRES is not set: skipped");
    }
    url
}

fn admin(url: &str) -> Client {
    Client::connect(url, NoTls).expect("connect to the test server")
}

fn pg_open_err(url: &str) -> Error {
    match Database::builder()
        .schema("kh_never_made")
        .busy_timeout(Duration::from_secs(2))
        .open_postgres(url)
    {
        Ok(_) => panic!("{url} opened"),
        Err(e) => e,
    }
}

#[test]
fn bad_urls_refused_servers_and_missing_rights_are_named_without_the_password() {
    let Some(url) = server() else { return };
    let cases = [
        ("not a url at all ://", PgProblem::InvalidUrl),
        (
            "postgres://postgres:hunter2-secret@127.0.0.1:1/test",
            PgProblem::Unreachable,
        ),
        (
            "postgres://postgres:hunter2-secret@127.0.0.1:5432/keyhook_no_such_db",
            PgProblem::NoSuchDatabase,
        ),
    ];
    for (bad, expected) in cases {
        let e = pg_open_err(bad);
        let shown = format!("{e} / {e:?} / {:?}", std::error::Error::source(&e));
        assert!(!shown.contains("hunter2"), "the password leaked: {shown}");
        match &e {
            Error::PostgresOpen { problem, .. } => assert_eq!(*problem, expected, "{bad}: {e}"),
            other => panic!("{bad}: {other:?}"),
        }
    }
    // A user who may not create the schema.
    let mut a = admin(&url);
    let _ = a.batch_execute("DROP ROLE IF EXISTS keyhook_weak");
    a.batch_execute("CREATE ROLE keyhook_weak LOGIN PASSWORD 'weak-secret-77'")
        .unwrap();
    let weak = "postgres://keyhook_weak:weak-secret-77@127.0.0.1:5432/test";
    let e = pg_open_err(weak);
    a.batch_execute("DROP ROLE keyhook_weak").unwrap();
    assert!(
        matches!(
            e,
            Error::PostgresOpen {
                problem: PgProblem::PermissionDenied,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(!format!("{e} {e:?}").contains("weak-secret-77"));
    let db = TempDb::new();
    assert!(!format!("{:?}", db.db).contains("password"));
}

#[test]
fn a_newer_schema_is_refused() {
    let Some(url) = server() else { return };
    let t = TempDb::new();
    let schema = t.locator().trim_start_matches("postgres:").to_owned();
    admin(&url)
        .batch_execute(&format!(
            "INSERT INTO {schema}.keyhook_migrations VALUES (99, 0)"
        ))
        .unwrap();
    match Database::builder().schema(&schema).open_postgres(&url) {
        Err(Error::SchemaTooNew { found: 99, .. }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn emit_in_postgres_exists_only_if_the_host_commits_and_wakes_every_dispatcher() {
    let Some(url) = server() else { return };
    let t = TempDb::new();
    let registry = loopback_registry(&t.db);
    registry.register_event_type(TYPE, "A tick").unwrap();
    let rx = Receiver::ok();
    endpoint(&registry, ORG, &rx.url("/"), &[TYPE]);
    // A second app server, with a poll of a minute: only a notification
    // can bring the events within the deadline.
    let other = t.reopen();
    let d = keyhook::Dispatcher::builder(&other, &loopback_registry(&other))
        .poll_interval(Duration::from_secs(60))
        .start()
        .unwrap();
    let emitter = keyhook::Dispatcher::builder(&t.db, &registry)
        .workers(0)
        .start()
        .unwrap();
    let schema = t.locator().trim_start_matches("postgres:").to_owned();
    let mut host = admin(&url);
    host.batch_execute("CREATE TEMP TABLE orders (note TEXT)")
        .unwrap();
    // Rolled back: nothing.
    let mut tx = host.transaction().unwrap();
    let ids = emitter
        .emit_in_postgres(&mut tx, ORG, vec![NewEvent::new(TYPE, &1).unwrap()])
        .unwrap();
    assert_eq!(ids.len(), 1);
    tx.rollback().unwrap();
    // Committed: the host's row and the event, together.
    let mut tx = host.transaction().unwrap();
    tx.execute("INSERT INTO orders VALUES ('paid')", &[])
        .unwrap();
    let path_before: String = tx.query_one("SHOW search_path", &[]).unwrap().get(0);
    let ids = emitter
        .emit_in_postgres(&mut tx, ORG, vec![NewEvent::new(TYPE, &2).unwrap()])
        .unwrap();
    let path_after: String = tx.query_one("SHOW search_path", &[]).unwrap().get(0);
    assert_eq!(
        path_before, path_after,
        "the host's search_path is put back"
    );
    tx.commit().unwrap();
    assert!(rx.wait_for(1, WAIT), "the other process was not woken");
    std::thread::sleep(Duration::from_millis(300));
    let got: Vec<String> = rx
        .received()
        .iter()
        .filter_map(|r| r.header("webhook-id").map(str::to_owned))
        .collect();
    assert_eq!(got, ids, "only the committed event is delivered");
    assert_eq!(
        t.count(&format!("SELECT COUNT(*) FROM {schema}.keyhook_events")),
        1
    );
    d.shutdown(WAIT).unwrap();
    emitter.shutdown(WAIT).unwrap();
}

#[test]
fn a_key_revoked_on_one_server_fails_verify_on_another_at_once() {
    if server().is_none() {
        return;
    }
    let t = TempDb::new();
    let a = ApiKeyStore::new(&t.db);
    a.set_api_keys_enabled(ORG, true).unwrap();
    let other = t.reopen();
    let b = ApiKeyStore::new(&other);
    let created = a.create(ORG, "ci", KeySettings::default()).unwrap();
    let plaintext = created.secret.expose().to_owned();
    assert!(b.verify(&plaintext).is_ok());
    a.revoke(ORG, &created.key.id).unwrap();
    assert_eq!(
        b.verify(&plaintext).unwrap_err().rejection(),
        Some(Rejection::Revoked)
    );
}

#[test]
fn killed_backends_lose_nothing_and_delivery_resumes_by_itself() {
    if server().is_none() {
        return;
    }
    let t = TempDb::new();
    let registry = loopback_registry(&t.db);
    registry.register_event_type(TYPE, "A tick").unwrap();
    let rx = Receiver::ok();
    endpoint(&registry, ORG, &rx.url("/"), &[TYPE]);
    let d = keyhook::Dispatcher::builder(&t.db, &registry)
        .workers(4)
        .poll_interval(Duration::from_millis(200))
        .start()
        .unwrap();
    let mut acknowledged = HashSet::new();
    for i in 0..300 {
        if i % 60 == 30 {
            // Every connection of this test's keyhook (pool, listener) is
            // cut, as a server restart does.
            t.terminate_backends();
        }
        // An emit of one event that meets a dead connection runs again on
        // a new one; a write that fails acknowledges nothing.
        if let Ok(id) = d.emit(ORG, TYPE, &i) {
            acknowledged.insert(id);
        }
    }
    assert!(
        acknowledged.len() >= 290,
        "{} emits failed",
        300 - acknowledged.len()
    );
    let arrived = wait_until(Duration::from_secs(60), || {
        let seen: HashSet<String> = rx
            .received()
            .iter()
            .filter_map(|r| r.header("webhook-id").map(str::to_owned))
            .collect();
        acknowledged.iter().all(|id| seen.contains(id))
    });
    assert!(arrived, "an acknowledged event never arrived");
    d.shutdown(WAIT).unwrap();
}

#[test]
fn the_pool_opens_at_most_max_connections_and_threads_take_turns() {
    let Some(url) = server() else { return };
    let t = TempDb::new();
    let schema = t.locator().trim_start_matches("postgres:").to_owned();
    let db = t.reopen_with(Database::builder().max_connections(2));
    let store = ApiKeyStore::new(&db);
    store.set_api_keys_enabled(ORG, true).unwrap();
    let key = store
        .create(ORG, "k", KeySettings::default())
        .unwrap()
        .secret
        .expose()
        .to_owned();
    let app = format!("keyhook/{schema}");
    let mut admin = admin(&url);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let most = std::thread::scope(|s| {
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (store, key) = (store.clone(), key.clone());
                s.spawn(move || {
                    for _ in 0..100 {
                        store.verify(&key).expect("verify while the pool is shared");
                    }
                })
            })
            .collect();
        let watcher = s.spawn(|| {
            let mut most = 0i64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let n: i64 = admin
                    .query_one(
                        "SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = $1",
                        &[&app],
                    )
                    .unwrap()
                    .get(0);
                most = most.max(n);
                std::thread::sleep(Duration::from_millis(2));
            }
            most
        });
        for t in threads {
            t.join().unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        watcher.join().unwrap()
    });
    // Two for the pool of this handle; the first handle (TempDb's own)
    // keeps its one idle session, and has no listener (no dispatcher).
    assert!(most <= 3, "{most} connections open at once");
}
