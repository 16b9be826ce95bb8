//! keyhook: API keys and Standard Webhooks delivery, embedded in your app.
//!
//! keyhook is the engine behind a SaaS "Developers" settings page: each
//! organization creates **API keys** to reach its data from scripts, and
//! registers **webhooks** to hear about events in real time. It runs inside
//! the host's process on a SQLite file (or, with the `postgres` feature, on
//! PostgreSQL, shared by several app servers: `Database::open_postgres`):
//! no separate service, no async runtime.
//!
//! * [`ApiKeyStore`]: create (the plaintext is shown once; only a hash is
//!   kept), list, rename, edit, revoke for good, roll with a grace period, and
//!   [`verify`](ApiKeyStore::verify) on every request.
//! * [`WebhookRegistry`]: the event-type catalogue, endpoints with their
//!   `whsec_` signing secrets or Ed25519 (`v1a`) key pairs, rotation.
//! * [`Dispatcher`]: [`emit`](Dispatcher::emit) stores an event durably and
//!   its worker threads deliver it, signed, retrying on a schedule, keeping a
//!   delivery history.
//! * [`signing`]: the Standard Webhooks signature scheme, and the
//!   receiver-side [`verify`](signing::verify) for your customers and tests.
//!
//! # Quickstart
//!
//! ```
//! use keyhook::{ApiKeyStore, Database, Dispatcher, EndpointOptions, KeySettings, WebhookRegistry};
//!
//! # fn main() -> keyhook::Result<()> {
//! let db = Database::open_in_memory()?; // Database::open("app.sqlite3") in production
//!
//! // API keys are a paid-plan feature: the host enables them per organization.
//! let keys = ApiKeyStore::builder(&db).prefix("vr").build()?;
//! keys.set_api_keys_enabled("org_1", true)?;
//! let created = keys.create("org_1", "Zapier Integration", KeySettings::default())?;
//! let plaintext = created.secret.expose(); // show it once; keyhook keeps only a hash
//! let caller = keys.verify(plaintext)?;
//! assert_eq!(caller.org, "org_1");
//!
//! // Webhooks: register event types, then endpoints subscribe to them.
//! let registry = WebhookRegistry::new(&db);
//! registry.register_event_type("conversion.created", "A new referred purchase is detected")?;
//! let endpoint = registry.create(
//!     "org_1",
//!     "https://example.com/webhooks",
//!     &["conversion.created"],
//!     EndpointOptions::default(),
//! )?;
//! println!("signing secret, shown once: {}", endpoint.secret.expose());
//!
//! // Emit: stored durably, then delivered by the dispatcher's workers.
//! // (Zero workers here, so this example makes no network call.)
//! let dispatcher = Dispatcher::builder(&db, &registry).workers(0).start()?;
//! let event_id = dispatcher.emit("org_1", "conversion.created", &serde_json::json!({"amount": 4900}))?;
//! let history = dispatcher.event_deliveries("org_1", &event_id)?;
//! assert_eq!(history[0].state, keyhook::DeliveryState::Pending);
//!
//! keys.revoke("org_1", &created.key.id)?;
//! assert_eq!(keys.verify(plaintext).unwrap_err().rejection(), Some(keyhook::Rejection::Revoked));
//! # Ok(())
//! # }
//! ```
//!
//! `cargo run --example quickstart` runs the same story end to end, with a
//! real receiver on 127.0.0.1 checking every signature.
//!
//! # Delivery guarantee
//!
//! **At least once.** [`Dispatcher::emit`] returns once the event and one
//! delivery per subscribed endpoint are committed in a single transaction;
//! from then on the event survives a crash of the process at any point and is
//! delivered after the next start. A crash between the receiver's answer and
//! the recording of it means the receiver sees the request again, so
//! receivers **deduplicate on the `webhook-id` header**, which is the event id
//! and the same on every attempt. There is **no ordering guarantee** between
//! events: retries and parallel workers reorder them; the envelope's
//! `timestamp` says when each event happened.
//!
//! Each request is a `POST` with the Standard Webhooks envelope
//! `{"type", "timestamp", "data"}` as its JSON body and the headers
//! `webhook-id`, `webhook-timestamp` and `webhook-signature`. A 2xx answer
//! within the request timeout (10 s by default) is success; 410 Gone disables
//! the endpoint; anything else is retried.
//!
//! # Retry schedule
//!
//! By default ([`RetryPolicy::default`]), the Standard Webhooks example:
//! immediately, then after 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h and
//! 24 h (ten attempts over about three days), each wait varied by ±20%.
//! 429, 502, 503, 504 and timeouts wait at least a minute, and a
//! `Retry-After` (delta-seconds or an HTTP-date, up to a day ahead) is
//! honoured between the scheduled wait and twice it. After
//! the last attempt the delivery is marked failed and stays in the history.
//!
//! # Security model
//!
//! * API keys: only SHA-256 of the secret part is stored (or HMAC-SHA256 with
//!   a server-side pepper kept out of the database); comparisons are constant
//!   time; a CRC32 checksum rejects malformed keys without a database lookup;
//!   revocation is enforced by a database trigger and seen by the very next
//!   `verify` in every thread and process: verify's cache of recently seen
//!   keys (SQLite files) checks for any commit, then for a change to keys,
//!   on every call ([`ApiKeyStoreBuilder::verify_cache`]).
//! * Webhook signing secrets are stored as raw bytes in the database, because
//!   signing needs them; protect the database file like any credential store.
//! * Secrets never appear in `Debug`, `Display`, logs or error messages.
//!   keyhook's own log lines (targets `keyhook::…`) name endpoints by id and
//!   destinations by scheme, host and port.
//! * The HTTP client, ureq, logs through the same `log` facade, to the
//!   host's logger, and has no setting to stop it. At `DEBUG` (target
//!   `ureq`) it logs each request's method, scheme, host and port, with the
//!   path and query masked (`/******`), and only harmless headers
//!   (`content-type`, `user-agent`…; `webhook-signature` and an endpoint's
//!   custom headers are only counted). At `TRACE` nothing is masked: `ureq`
//!   logs full URLs, query tokens included, and `ureq_proto` hex-dumps every
//!   request and response on the wire: signatures, custom auth headers,
//!   event bodies. Keep both at `DEBUG` or quieter in production, e.g.
//!   `RUST_LOG=debug,ureq=warn,ureq_proto=warn` with `env_logger`, a
//!   `log::Log::enabled` that drops `TRACE` for targets starting with
//!   `ureq`, or `log::set_max_level(log::LevelFilter::Debug)`.
//! * Destinations: endpoint URLs must be `https` and public. Private,
//!   loopback, link-local, CGNAT, multicast and cloud-metadata addresses are
//!   refused at registration, and again on every resolved address at connect
//!   time (so DNS rebinding does not work; a host's checked addresses are
//!   reused for 30 s, then resolved and checked again), unless the host
//!   allows them ([`DestinationPolicy`]). The scheme is checked again on
//!   every send: a dispatcher whose policy does not allow `http` sends
//!   nothing to an `http://` URL stored under a more lenient one
//!   ([`AttemptError::DestinationRefused`]). Redirects are never followed.
//!
//! # Operating it
//!
//! * Threads: a [`Dispatcher`] owns its workers (4 by default).
//!   [`Dispatcher::shutdown`] stops claiming, lets attempts in flight finish
//!   within a timeout and joins the threads; dropping the dispatcher asks them
//!   to stop.
//! * Multi-process: several processes may run dispatchers on one SQLite file.
//!   A delivery is claimed with one atomic statement that leases it, so two
//!   workers never make the same attempt; a process that dies leaves leases
//!   that simply expire. An emit-only process uses `.workers(0)`; an idle
//!   dispatcher notices other processes' commits within about 50 ms.
//! * Faults: an attempt that finished while the database could not be
//!   written (another process holding the lock past `busy_timeout`) is
//!   recorded once it can be, and this process never sends it again
//!   meanwhile (another process sharing the file may, once the attempt's
//!   lease has ended); emits in that window fail with [`Error::Locked`] and
//!   store nothing. A panic during an attempt is recorded as
//!   [`AttemptError::Panic`]; a thread that dies of one stops the
//!   dispatcher, which [`Dispatcher::health`] and [`Dispatcher::shutdown`]
//!   report.
//! * Fairness: endpoints not known to be healthy (new or failing) share
//!   all workers but one, so with two or more workers a healthy endpoint
//!   always has one; with three or more, failing endpoints leave new ones a
//!   slot. A disabled endpoint's pending deliveries are parked until it is
//!   enabled, and what claims cost follows the endpoints with due work, not
//!   the endpoints registered.
//! * Durability: [`Durability::Full`] by default (nothing committed is lost
//!   on power loss; concurrent writers share one sync of the WAL, made
//!   outside the write lock); [`Durability::Normal`] for commits that survive
//!   a process crash but may lose the last ones on power loss.
//!
//! # Sharing the SQLite file with your app
//!
//! keyhook may live in your app's own SQLite file, which
//! [`Dispatcher::emit_in`] needs (the event is written in your
//! transaction). It keeps out of your way there:
//!
//! * every keyhook table, index and trigger is named `keyhook_…`; leave
//!   them to keyhook and give none of yours that prefix;
//! * keyhook records its schema version in its own `keyhook_migrations`
//!   table and never writes `PRAGMA user_version`, which stays your
//!   migration tool's;
//! * [`Database::open`] applies keyhook's own migrations, each in one
//!   `IMMEDIATE` transaction, whatever else the file holds, and refuses a
//!   file whose keyhook schema is newer than the library
//!   ([`Error::SchemaTooNew`]). Run your migrations and keyhook's in either
//!   order; neither touches the other's tables;
//! * a file written by keyhook 0.1 (unprefixed tables, version in
//!   `user_version`) is upgraded in place on open: tables renamed, data
//!   kept, `user_version` left as it was;
//! * keyhook sets `journal_mode=WAL` (persistent, for the whole file) and
//!   `foreign_keys=ON` on its own connections; your connections choose
//!   their own settings, but should also set a `busy_timeout`.
//!
//! # Connections and threads
//!
//! [`Database`] is a cheap, cloneable, `Send + Sync` handle over a small
//! pool of SQLite connections; each operation borrows one for its thread.
//! See [`Database`] for details.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

// README.md's example runs as a doctest, so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

mod api_keys;
mod cursor;
mod db;
pub mod destination;
mod dispatch;
mod error;
mod event;
mod id;
#[cfg(feature = "postgres")]
mod pg;
mod registry;
mod schema;
pub mod signing;
mod sql;
mod validate;

pub use api_keys::{
    ApiKey, ApiKeyStore, ApiKeyStoreBuilder, CreatedKey, DEFAULT_MAX_ROLL_GRACE,
    DEFAULT_VERIFY_CACHE, KeyPage, KeyQuery, KeySecret, KeySettings, KeyState, KeyUpdate,
    MAX_KEY_METADATA_BYTES, VerifiedKey,
};
pub use db::{Database, DatabaseBuilder, Durability};
pub use destination::DestinationPolicy;
pub use dispatch::{
    Attempt, AttemptError, AttemptReport, Delivery, DeliveryState, DisableReason, Dispatcher,
    DispatcherBuilder, DispatcherHealth, EndpointStats, EventDetail, EventPage, EventQuery,
    EventSummary, HistoryPage, HistoryQuery, MAX_HISTORY_RANGE, MAX_PAGE_SIZE, MAX_RECOVERY_WINDOW,
    MAX_REPLAY, MAX_RETRY_DELAY, Notice, PurgeReport, RetryPolicy,
};
pub use error::{Error, OpenProblem, Rejection, Result};
#[cfg(feature = "postgres")]
pub use error::{PgProblem, PostgresError};
pub use event::NewEvent;
pub use registry::{
    CreatedEd25519Endpoint, CreatedEndpoint, DEFAULT_ROTATION_GRACE, EnabledEndpoint, Endpoint,
    EndpointOptions, EndpointUpdate, EventType, EventTypeUpdate, MAX_ROTATION_GRACE,
    WebhookRegistry, WebhookRegistryBuilder,
};
pub use signing::{Ed25519PublicKey, SigningSecret};

/// The rusqlite version keyhook uses, for [`Dispatcher::emit_in`] inside the
/// host's own transactions.
pub use rusqlite;

/// The `postgres` client keyhook uses (feature `postgres`), for
/// [`Dispatcher::emit_in_postgres`] inside the host's own transaction.
#[cfg(feature = "postgres")]
pub use postgres;
