//! A reference "Settings > Organization > Developers" page on keyhook, for
//! one demo organization: API keys, webhooks, delivery history, a small
//! `/v1` JSON API authenticated with the keys, and a local receiver so that
//! deliveries succeed out of the box.
//!
//! How an async host uses a synchronous library:
//!
//! * every keyhook call runs on tokio's blocking pool ([`errors::blocking`]);
//! * the API-key check is one extractor, [`auth::ApiCaller`], with the scope
//!   check beside it; copy `auth.rs` into your app;
//! * keyhook's errors map to HTTP statuses in one place
//!   ([`errors::status_of`]);
//! * every form is checked against cross-site request forgery by one
//!   extractor ([`csrf::CsrfForm`]);
//! * secrets (an API key's plaintext, a signing secret) are rendered once, in
//!   the answer to the POST that made them, never put in a URL or a log;
//! * the forms that make them carry a single-use nonce ([`once`]), so
//!   reloading that answer (which re-sends the POST) changes nothing and
//!   gets a 409 page saying the secret cannot be shown again.

pub mod auth;
pub mod csrf;
mod developers;
pub mod errors;
mod host;
pub mod html;
mod keys;
pub mod once;
mod receiver;
mod webhooks;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use keyhook::{
    ApiKeyStore, Database, DestinationPolicy, Dispatcher, EventTypeUpdate, WebhookRegistry,
};

/// The demo organization the page manages.
pub const ORG: &str = "org_demo";

/// The scopes the `/v1` API knows; each key may hold any of them.
pub const SCOPES: &[(&str, &str)] = &[
    ("conversions:read", "Read conversions (GET /v1/conversions)"),
    ("affiliates:read", "Read affiliates (GET /v1/affiliates)"),
    ("payouts:read", "Read payouts (GET /v1/payouts)"),
];

/// The event-type catalogue, from the product text, with example payloads
/// that "Send test event" sends.
const EVENT_TYPES: &[(&str, &str, &str)] = &[
    (
        "conversion.created",
        "A new referred purchase is detected",
        r#"{"conversion_id":"cv_example","affiliate_id":"af_example","amount_cents":4900,"currency":"USD","status":"pending"}"#,
    ),
    (
        "conversion.updated",
        "A conversion status changes (approved, rejected, fraud)",
        r#"{"conversion_id":"cv_example","status":"approved"}"#,
    ),
    (
        "affiliate.created",
        "A new referrer is added to your program",
        r#"{"affiliate_id":"af_example","email":"ana@example.com"}"#,
    ),
    (
        "affiliate.updated",
        "An affiliate's status or details change",
        r#"{"affiliate_id":"af_example","status":"active"}"#,
    ),
    (
        "payout.created",
        "A new payout batch is created",
        r#"{"payout_id":"po_example","amount_cents":12000,"currency":"USD"}"#,
    ),
];

/// Where the page keeps its data.
#[derive(Debug, Clone)]
pub struct Config {
    /// The SQLite file (created if missing).
    pub database: PathBuf,
    /// Worker threads delivering webhooks.
    pub workers: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            database: PathBuf::from("developers-page.sqlite3"),
            workers: 2,
        }
    }
}

/// Everything the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

/// The shared parts.
pub struct Inner {
    /// The API key store.
    pub keys: ApiKeyStore,
    /// Endpoints and the event-type catalogue.
    pub registry: WebhookRegistry,
    /// Emits and delivers events.
    pub dispatcher: Dispatcher,
    /// The organization this page manages.
    pub org: String,
    /// The local receiver's URL.
    pub receiver_url: String,
    /// Single-use nonces of the forms that show a secret once.
    pub once: once::FormNonces,
    host: Mutex<host::HostData>,
    received: Mutex<VecDeque<receiver::Received>>,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// Opens the database, registers the event catalogue and starts the
    /// dispatcher. `addr` is where the page listens: the local receiver is
    /// there, at `/receiver`. Blocking: call it before serving (or from
    /// `spawn_blocking`).
    ///
    /// # Errors
    ///
    /// keyhook's errors opening the database or starting the dispatcher.
    pub fn open(config: &Config, addr: SocketAddr) -> keyhook::Result<AppState> {
        let db = Database::open(&config.database)?;
        let keys = ApiKeyStore::builder(&db).prefix("vr").build()?;
        let registry = WebhookRegistry::builder(&db)
            // The demo's receiver is this server, on 127.0.0.1 over plain
            // http. A production page keeps the default policy: https to
            // public addresses only.
            .destination_policy(
                DestinationPolicy::new()
                    .allow_http(true)
                    .allow_loopback(true),
            )
            .build();
        for (name, description, example) in EVENT_TYPES {
            registry.register_event_type(name, description)?;
            let example = serde_json::from_str(example).map_err(keyhook::Error::Serialize)?;
            registry.update_event_type(
                name,
                EventTypeUpdate {
                    example: Some(Some(example)),
                    ..EventTypeUpdate::default()
                },
            )?;
        }
        // A fresh demo starts on a paid plan, so API keys can be tried at
        // once; after that the plan switch on the page decides.
        if !keys.api_keys_enabled(ORG)? && keys.list(ORG)?.is_empty() {
            keys.set_api_keys_enabled(ORG, true)?;
        }
        let dispatcher = Dispatcher::builder(&db, &registry)
            .workers(config.workers)
            .request_timeout(Duration::from_secs(10))
            .start()?;
        let host = if addr.ip().is_unspecified() {
            "127.0.0.1".to_owned()
        } else if addr.is_ipv6() {
            format!("[{}]", addr.ip())
        } else {
            addr.ip().to_string()
        };
        Ok(AppState(Arc::new(Inner {
            keys,
            registry,
            dispatcher,
            org: ORG.to_owned(),
            receiver_url: format!("http://{host}:{}/receiver", addr.port()),
            once: once::FormNonces::new()?,
            host: Mutex::new(host::HostData::seeded()),
            received: Mutex::new(VecDeque::new()),
        })))
    }
}

/// Every route of the page.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(developers::page))
        .route("/plan", post(keys::switch_plan))
        .route("/keys", post(keys::create))
        .route("/keys/{id}/edit", get(keys::edit_form).post(keys::edit))
        .route(
            "/keys/{id}/revoke",
            get(keys::revoke_form).post(keys::revoke),
        )
        .route("/keys/{id}/roll", get(keys::roll_form).post(keys::roll))
        .route("/webhooks", post(webhooks::create))
        .route("/webhooks/{id}", get(webhooks::show).post(webhooks::edit))
        .route("/webhooks/{id}/enabled", post(webhooks::set_enabled))
        .route("/webhooks/{id}/rotate", post(webhooks::rotate))
        .route("/webhooks/{id}/test", post(webhooks::send_test))
        .route("/webhooks/{id}/replay", post(webhooks::replay))
        .route(
            "/webhooks/{id}/delete",
            get(webhooks::delete_form).post(webhooks::delete),
        )
        .route("/deliveries", get(webhooks::org_log))
        .route("/deliveries/{id}/redeliver", post(webhooks::redeliver))
        .route("/simulate", post(host::simulate))
        .route("/v1/me", get(host::api_me))
        .route("/v1/conversions", get(host::api_conversions))
        .route("/v1/affiliates", get(host::api_affiliates))
        .route("/v1/payouts", get(host::api_payouts))
        .route("/receiver", post(receiver::receive))
        .fallback(not_found)
        .layer(axum::middleware::from_fn(csrf::session))
        .with_state(state)
}

async fn not_found() -> errors::PageError {
    errors::PageError {
        status: axum::http::StatusCode::NOT_FOUND,
        title: "Page not found".into(),
        message: "There is no page at this address.".into(),
    }
}

/// Serves the page on `listener` until `shutdown` completes, then stops
/// the dispatcher (letting attempts in flight finish, up to 5 seconds).
///
/// # Errors
///
/// The listener's I/O errors.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let served = axum::serve(listener, router(state.clone()))
        .with_graceful_shutdown(shutdown)
        .await;
    let stopped = errors::blocking(move || state.dispatcher.shutdown(Duration::from_secs(5))).await;
    if let Err(e) = stopped {
        errors::log_error(&e);
    }
    served
}
