//! Helpers shared by the integration tests.

// Each test crate compiles this module on its own and uses only some helpers.
#![allow(dead_code)]

use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use keyhook::signing::{VerifyError, verify};
use keyhook::{
    CreatedEndpoint, Database, DestinationPolicy, Dispatcher, DispatcherBuilder, EndpointOptions,
    Error, RetryPolicy, SigningSecret, WebhookRegistry,
};
use tempfile::TempDir;

/// A fresh temporary directory and the path of a (not yet created) database
/// file inside it. The directory and everything in it go when `TempDir` drops.
pub fn temp_db_path() -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let path = dir.path().join("keyhook.sqlite3");
    (dir, path)
}

/// The PostgreSQL server the suites run against instead of SQLite, when
/// `KEYHOOK_TEST_POSTGRES` holds its URL (and the `postgres` feature is
/// on): `KEYHOOK_TEST_POSTGRES=postgres://postgres@127.0.0.1/test cargo
/// test --features postgres`. Each [`TempDb`] then gets a schema of its
/// own, dropped afterwards, so tests run in parallel.
pub fn postgres_url() -> Option<String> {
    if cfg!(feature = "postgres") {
        std::env::var("KEYHOOK_TEST_POSTGRES")
            .ok()
            .filter(|u| !u.is_empty())
    } else {
        None
    }
}

/// A fresh database for one test: a real SQLite file (WAL, default
/// settings) in its own temporary directory, or a schema of its own on the
/// test PostgreSQL server ([`postgres_url`]); removed on drop.
pub struct TempDb {
    /// The open handle; clone it freely.
    pub db: Database,
    path: Option<PathBuf>,
    schema: Option<String>,
    // Declared last so it is dropped last: the directory outlives the handle.
    _dir: Option<TempDir>,
}

impl TempDb {
    /// A new, empty database on the engine under test.
    pub fn new() -> TempDb {
        match postgres_url() {
            Some(url) => TempDb::postgres(&url),
            None => TempDb::sqlite(),
        }
    }

    /// A new, empty SQLite file, whatever the engine under test (for tests
    /// of SQLite itself: its file, its locks, plain `rusqlite` access).
    pub fn sqlite() -> TempDb {
        let (dir, path) = temp_db_path();
        let db = Database::open(&path).expect("open a new database file");
        TempDb {
            db,
            path: Some(path),
            schema: None,
            _dir: Some(dir),
        }
    }

    #[cfg(feature = "postgres")]
    fn postgres(url: &str) -> TempDb {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let schema = format!(
            "kh_test_{}_{}_{:x}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst),
            rand_suffix()
        );
        let db = Database::builder()
            .schema(&schema)
            .open_postgres(url)
            .expect("open a new schema on the test PostgreSQL server");
        TempDb {
            db,
            path: None,
            schema: Some(schema),
            _dir: None,
        }
    }

    #[cfg(not(feature = "postgres"))]
    fn postgres(_: &str) -> TempDb {
        unreachable!("postgres_url is None without the postgres feature")
    }

    /// Whether this database is on PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        self.schema.is_some()
    }

    /// Another handle on the same database, opened with `builder`'s
    /// settings (a busy timeout, say).
    pub fn reopen_with(&self, builder: keyhook::DatabaseBuilder) -> Database {
        match (&self.path, &self.schema) {
            (Some(path), _) => builder.open(path).expect("open the database again"),
            #[cfg(feature = "postgres")]
            (None, Some(schema)) => builder
                .schema(schema)
                .open_postgres(&postgres_url().expect("on PostgreSQL"))
                .expect("open the schema again"),
            _ => unreachable!(),
        }
    }

    /// Another handle on the same database, as a second process would open it.
    pub fn reopen(&self) -> Database {
        self.reopen_with(Database::builder())
    }

    /// Where this database is, as text another process can open with
    /// [`open_located`]: the file's path, or `postgres:` and the schema.
    pub fn locator(&self) -> String {
        match (&self.path, &self.schema) {
            (Some(path), _) => path.to_str().expect("a UTF-8 temp path").to_owned(),
            (None, Some(schema)) => format!("postgres:{schema}"),
            _ => unreachable!(),
        }
    }

    /// The one number `sql` selects, read with the engine's plain client
    /// (rusqlite, or postgres in this database's schema), beside keyhook.
    pub fn count(&self, sql: &str) -> i64 {
        match &self.schema {
            #[cfg(feature = "postgres")]
            Some(schema) => {
                let mut c = keyhook::postgres::Client::connect(
                    &postgres_url().expect("on PostgreSQL"),
                    keyhook::postgres::NoTls,
                )
                .expect("connect to the test PostgreSQL server");
                c.batch_execute(&format!("SET search_path TO {schema}"))
                    .unwrap();
                c.query_one(sql, &[]).expect("run the count").get(0)
            }
            _ => rusqlite::Connection::open(self.path())
                .expect("open the database file")
                .query_row(sql, [], |r| r.get(0))
                .expect("run the count"),
        }
    }

    /// Cuts every connection this database's keyhook handles hold (pool and
    /// listener, found by their `application_name`), as a server restart
    /// does; returns how many (PostgreSQL only).
    #[cfg(feature = "postgres")]
    pub fn terminate_backends(&self) -> usize {
        let schema = self.schema.as_deref().expect("on PostgreSQL");
        let mut admin = keyhook::postgres::Client::connect(
            &postgres_url().expect("on PostgreSQL"),
            keyhook::postgres::NoTls,
        )
        .expect("connect to the test PostgreSQL server");
        admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE application_name = $1",
                &[&format!("keyhook/{schema}")],
            )
            .expect("terminate the backends") as usize
    }

    /// The database file, for opening it again or with plain `rusqlite`
    /// (SQLite only: such tests make theirs with [`TempDb::sqlite`]).
    pub fn path(&self) -> &Path {
        self.path
            .as_deref()
            .expect("a test of SQLite itself: make its database with TempDb::sqlite()")
    }
}

/// Opens the database [`TempDb::locator`] names (in a child process).
pub fn open_located(locator: &str) -> Database {
    match locator.strip_prefix("postgres:") {
        #[cfg(feature = "postgres")]
        Some(schema) => Database::builder()
            .schema(schema)
            .open_postgres(&postgres_url().expect("KEYHOOK_TEST_POSTGRES in the child"))
            .expect("open the schema in the child"),
        _ => Database::open(locator).expect("open the database in the child"),
    }
}

#[cfg(feature = "postgres")]
fn rand_suffix() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now()) as u32
}

impl Drop for TempDb {
    fn drop(&mut self) {
        #[cfg(feature = "postgres")]
        if let (Some(schema), Some(url)) = (&self.schema, postgres_url())
            && let Ok(mut c) = keyhook::postgres::Client::connect(&url, keyhook::postgres::NoTls)
        {
            let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
        }
    }
}

// ------------------------------------------------------------ delivery tests

/// A registry whose destination policy lets endpoints use plain HTTP on
/// 127.0.0.1, where the tests' receivers listen.
pub fn loopback_registry(db: &Database) -> WebhookRegistry {
    WebhookRegistry::builder(db)
        .destination_policy(
            DestinationPolicy::new()
                .allow_http(true)
                .allow_loopback(true),
        )
        .build()
}

/// A new database and a [`loopback_registry`] on it with `event_types`
/// (name, description) registered in order.
pub fn loopback_setup(event_types: &[(&str, &str)]) -> (TempDb, WebhookRegistry) {
    with_event_types(TempDb::new(), event_types)
}

/// [`loopback_setup`] on a SQLite file whatever the engine under test.
pub fn loopback_setup_sqlite(event_types: &[(&str, &str)]) -> (TempDb, WebhookRegistry) {
    with_event_types(TempDb::sqlite(), event_types)
}

fn with_event_types(t: TempDb, event_types: &[(&str, &str)]) -> (TempDb, WebhookRegistry) {
    let registry = loopback_registry(&t.db);
    for (name, description) in event_types {
        registry.register_event_type(name, description).unwrap();
    }
    (t, registry)
}

/// An endpoint with default options.
pub fn endpoint(
    registry: &WebhookRegistry,
    org: &str,
    url: &str,
    types: &[&str],
) -> CreatedEndpoint {
    registry
        .create(org, url, types, EndpointOptions::default())
        .unwrap()
}

/// The ids of new endpoints of `org`, one at each of `urls`.
pub fn endpoint_ids(
    registry: &WebhookRegistry,
    org: &str,
    urls: impl IntoIterator<Item = String>,
    types: &[&str],
) -> Vec<String> {
    urls.into_iter()
        .map(|url| endpoint(registry, org, &url, types).endpoint.id)
        .collect()
}

/// Enables or disables an endpoint, as its owner would on the settings page.
pub fn set_enabled(registry: &WebhookRegistry, org: &str, endpoint_id: &str, enabled: bool) {
    registry
        .update(
            org,
            endpoint_id,
            keyhook::EndpointUpdate {
                enabled: Some(enabled),
                ..keyhook::EndpointUpdate::default()
            },
        )
        .unwrap();
}

/// `attempts` attempts: immediately, then every `gap`; no jitter; a short
/// throttle delay.
pub fn schedule(attempts: usize, gap: Duration) -> RetryPolicy {
    let mut waits = vec![Duration::ZERO];
    waits.extend(std::iter::repeat_n(gap, attempts - 1));
    RetryPolicy::new(waits)
        .jitter(0.0)
        .throttle_delay(Duration::from_millis(300))
}

/// A dispatcher builder with short settings suited to tests.
pub fn builder(t: &TempDb, registry: &WebhookRegistry) -> DispatcherBuilder {
    Dispatcher::builder(&t.db, registry)
        .workers(2)
        .request_timeout(Duration::from_secs(5))
        .retry_policy(schedule(5, Duration::from_millis(200)))
        .poll_interval(Duration::from_millis(100))
}

/// Polls `done` every 20 ms until it holds (true) or `timeout` passes (false).
pub fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Verifies a received request's signature as a receiver would: its
/// `webhook-*` headers read through `header`, now, with 300 s of tolerance.
pub fn verify_signed<'a>(
    header: impl Fn(&str) -> Option<&'a str>,
    body: &[u8],
    secrets: &[SigningSecret],
) -> Result<(), VerifyError> {
    verify(
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
        body,
        secrets,
        SystemTime::now(),
        Duration::from_secs(300),
    )
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// `t` as an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the HTTP-date a
/// receiver puts in `Retry-After`.
pub fn http_date(t: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = t.duration_since(UNIX_EPOCH).unwrap().as_secs();
    let days = secs / 86_400;
    // Howard Hinnant's civil_from_days, for dates after 1970.
    let z = days + 719_468;
    let (era, doe) = (z / 146_097, z % 146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    let rem = secs % 86_400;
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        MONTHS[month as usize - 1],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

// --------------------------------------------------------------- assertions

#[track_caller]
pub fn assert_invalid_input<T: Debug>(result: keyhook::Result<T>, expected_field: &str) {
    match result {
        Err(Error::InvalidInput { field, .. }) if field == expected_field => {}
        other => panic!("expected InvalidInput {{ field: {expected_field:?} }}, got {other:?}"),
    }
}

/// `result` is `NotFound` for exactly this kind and id.
#[track_caller]
pub fn assert_not_found_id<T: Debug>(
    result: keyhook::Result<T>,
    expected_kind: &str,
    expected_id: &str,
) {
    match result {
        Err(Error::NotFound { kind, id }) if kind == expected_kind && id == expected_id => {}
        other => panic!(
            "expected NotFound {{ kind: {expected_kind:?}, id: {expected_id:?} }}, got {other:?}"
        ),
    }
}
