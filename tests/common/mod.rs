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

/// A real SQLite file database (WAL, default settings) in its own temporary
/// directory, removed on drop.
pub struct TempDb {
    /// The open handle; clone it freely.
    pub db: Database,
    path: PathBuf,
    // Declared last so it is dropped last: the directory outlives the handle.
    _dir: TempDir,
}

impl TempDb {
    /// Opens a new, empty database file.
    pub fn new() -> TempDb {
        let (dir, path) = temp_db_path();
        let db = Database::open(&path).expect("open a new database file");
        TempDb {
            db,
            path,
            _dir: dir,
        }
    }

    /// The database file, for opening it again or with plain `rusqlite`.
    pub fn path(&self) -> &Path {
        &self.path
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
    let t = TempDb::new();
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
