//! Webhook endpoints, the event-type catalogue, and signing-key rotation.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::sql::{Optional, Row, Sql, params};

use crate::db::{Database, duration_ms, from_ms, now_ms};
use crate::destination::DestinationPolicy;
use crate::error::{Error, Result};
use crate::id::new_id;
use crate::signing::{Ed25519PublicKey, Ed25519SecretKey, Signer, SigningSecret};
use crate::validate;

/// Default grace period of [`WebhookRegistry::rotate_secret`] and
/// [`WebhookRegistry::rotate_ed25519_key`].
pub const DEFAULT_ROTATION_GRACE: Duration = Duration::from_secs(24 * 3600);
/// Longest grace period of [`WebhookRegistry::rotate_secret`] and
/// [`WebhookRegistry::rotate_ed25519_key`].
pub const MAX_ROTATION_GRACE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Headers keyhook sets itself, and hop-by-hop headers, which an endpoint's
/// custom headers may not override.
const FORBIDDEN_HEADERS: &[&str] = &[
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "content-type",
    "content-length",
    "content-encoding",
    "user-agent",
    "host",
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",
];
const MAX_HEADERS: usize = 20;

/// A registered event type, e.g. `conversion.created`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EventType {
    /// Dot-separated segments of `[A-Za-z0-9_]`.
    pub name: String,
    /// What it means, for the settings page.
    pub description: String,
    /// An example of its `data`, sent by
    /// [`Dispatcher::send_test_event`](crate::Dispatcher::send_test_event)
    /// when the caller gives none, and shown to developers.
    pub example: Option<serde_json::Value>,
    /// Deprecated: still works; a settings page may warn new subscribers.
    pub deprecated: bool,
    /// Archived: refuses new subscriptions and emits; its history stays.
    pub archived: bool,
}

/// A change to an event type ([`WebhookRegistry::update_event_type`]):
/// only the fields given change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventTypeUpdate {
    /// A new description.
    pub description: Option<String>,
    /// A new example payload (`Some(None)` removes it); at most 64 KiB of JSON.
    pub example: Option<Option<serde_json::Value>>,
    /// Deprecate it, or take the deprecation back.
    pub deprecated: Option<bool>,
    /// Archive it (no new subscriptions or emits), or restore it.
    pub archived: Option<bool>,
}

/// The largest example payload of an event type, serialized.
const MAX_EXAMPLE_BYTES: usize = 64 * 1024;

const EVENT_TYPE_COLUMNS: &str = "name, description, example, deprecated_at IS NOT NULL,
     archived_at IS NOT NULL";

/// The advisory lock kind of an organization's endpoints (PostgreSQL).
const LOCK_ENDPOINTS: i32 = 2;

fn event_type_row(r: &Row<'_>) -> Result<EventType> {
    let example: Option<String> = r.get(2)?;
    Ok(EventType {
        name: r.get(0)?,
        description: r.get(1)?,
        // Written by update_event_type from a serialized Value.
        example: example.and_then(|e| serde_json::from_str(&e).ok()),
        deprecated: r.get(3)?,
        archived: r.get(4)?,
    })
}

/// The event type `name`, or [`Error::UnknownEventType`].
pub(crate) fn event_type(conn: Sql<'_>, name: &str) -> Result<EventType> {
    conn.prepare_cached(&format!(
        "SELECT {EVENT_TYPE_COLUMNS} FROM keyhook_event_types WHERE name = ?1"
    ))?
    .query_row([name], event_type_row)
    .optional()?
    .ok_or_else(|| Error::UnknownEventType { name: name.into() })
}

/// The event type `name`, if it takes new emits and subscriptions.
pub(crate) fn usable_event_type(conn: Sql<'_>, name: &str) -> Result<EventType> {
    let t = event_type(conn, name)?;
    if t.archived {
        return Err(Error::InvalidState {
            kind: "event type",
            id: name.into(),
            state: "archived",
        });
    }
    Ok(t)
}

/// Options of [`WebhookRegistry::create`]. `Debug` redacts an imported secret.
#[derive(Clone, Default)]
pub struct EndpointOptions {
    /// A note for the owner, at most 1,000 characters.
    pub description: Option<String>,
    /// Receive every event type, including ones registered later; the list of
    /// event types given to `create` may then be empty.
    pub all_event_types: bool,
    /// Extra headers sent with every request (e.g. an auth token for the
    /// receiver). Names are case-insensitive and unique; keyhook's own headers
    /// and hop-by-hop headers are refused. At most 20.
    pub headers: Vec<(String, String)>,
    /// An existing `whsec_…` secret to keep, for endpoints moved from another
    /// provider; otherwise a new one is generated.
    pub secret: Option<SigningSecret>,
}

impl std::fmt::Debug for EndpointOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointOptions")
            .field("description", &self.description)
            .field("all_event_types", &self.all_event_types)
            .field(
                "headers",
                &self.headers.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("secret", &self.secret)
            .finish()
    }
}

/// Changes for [`WebhookRegistry::update`]: `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct EndpointUpdate {
    /// A new URL, checked like on create.
    pub url: Option<String>,
    /// A new list of event types (must not be empty unless all types are received).
    pub event_types: Option<Vec<String>>,
    /// Receive all event types (true) or only the listed ones (false).
    pub all_event_types: Option<bool>,
    /// A new description; `Some(None)` clears it.
    pub description: Option<Option<String>>,
    /// New custom headers, replacing the old ones.
    pub headers: Option<Vec<(String, String)>>,
    /// Enable or disable the endpoint. Disabled endpoints get no new deliveries.
    pub enabled: Option<bool>,
}

/// A webhook endpoint.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Its id, e.g. `ep_…`.
    pub id: String,
    /// The owning organization.
    pub org: String,
    /// Where events are POSTed.
    pub url: String,
    /// The owner's note.
    pub description: Option<String>,
    /// Subscribed event types (empty when [`all_event_types`](Self::all_event_types)).
    pub event_types: Vec<String>,
    /// Whether it receives every event type.
    pub all_event_types: bool,
    /// Custom headers sent with each request.
    pub headers: Vec<(String, String)>,
    /// Whether deliveries are made to it.
    pub enabled: bool,
    /// Why it was disabled, when keyhook disabled it (e.g. the receiver answered 410).
    pub disabled_reason: Option<String>,
    /// When it was created.
    pub created_at: SystemTime,
    /// When it was last changed.
    pub updated_at: SystemTime,
}

impl std::fmt::Debug for Endpoint {
    // Custom header values often carry receiver credentials: names only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("id", &self.id)
            .field("org", &self.org)
            .field("url", &self.url)
            .field("description", &self.description)
            .field("event_types", &self.event_types)
            .field("all_event_types", &self.all_event_types)
            .field(
                "headers",
                &self.headers.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("enabled", &self.enabled)
            .field("disabled_reason", &self.disabled_reason)
            .field("created_at", &self.created_at)
            .field("updated_at", &self.updated_at)
            .finish()
    }
}

/// What [`WebhookRegistry::enable`] returns.
#[derive(Debug, Clone)]
pub struct EnabledEndpoint {
    /// The endpoint, enabled.
    pub endpoint: Endpoint,
    /// When its trouble began (first failure, or when it was disabled), if
    /// it was failing or disabled: pass it to
    /// [`Dispatcher::recover`](crate::Dispatcher::recover) to resend what
    /// failed meanwhile.
    pub missed_since: Option<SystemTime>,
}

/// What [`WebhookRegistry::create`] returns: the endpoint and its signing secret,
/// to show the owner (they need it to verify signatures).
#[derive(Debug, Clone)]
pub struct CreatedEndpoint {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// Its signing secret (`Debug` redacts it; [`SigningSecret::expose`] shows it).
    pub secret: SigningSecret,
}

/// What [`WebhookRegistry::create_ed25519`] returns: the endpoint and the
/// public key its owner verifies signatures with.
///
/// The secret key stays in keyhook's database; the receiver needs only the
/// public key, so a leaked receiver configuration cannot forge webhooks.
#[derive(Debug, Clone)]
pub struct CreatedEd25519Endpoint {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// The public key of its `v1a` signatures; `Display` writes the
    /// `whpk_…` form to show the owner.
    pub public_key: Ed25519PublicKey,
}

/// A signing key as stored in `keyhook_endpoint_secrets`: the row's `kind`
/// says what its `secret` column holds.
enum EndpointKey {
    /// Kind 0: an HMAC secret's key bytes (`v1`).
    Hmac(SigningSecret),
    /// Kind 1: an Ed25519 key pair's 32-byte seed (`v1a`).
    Ed25519(Ed25519SecretKey),
}

const KIND_HMAC: i64 = 0;
const KIND_ED25519: i64 = 1;

impl EndpointKey {
    fn kind(&self) -> i64 {
        match self {
            EndpointKey::Hmac(_) => KIND_HMAC,
            EndpointKey::Ed25519(_) => KIND_ED25519,
        }
    }

    fn stored_bytes(&self) -> &[u8] {
        match self {
            EndpointKey::Hmac(secret) => secret.as_bytes(),
            EndpointKey::Ed25519(key) => key.seed(),
        }
    }

    /// The key of a stored row; `None` for a row that is not a usable key
    /// of a known kind.
    fn from_row(kind: i64, bytes: &[u8]) -> Option<EndpointKey> {
        match kind {
            KIND_HMAC => SigningSecret::from_bytes(bytes).ok().map(EndpointKey::Hmac),
            KIND_ED25519 => <&[u8; 32]>::try_from(bytes)
                .ok()
                .map(|seed| EndpointKey::Ed25519(Ed25519SecretKey::from_seed(seed))),
            _ => None,
        }
    }
}

/// Settings for a [`WebhookRegistry`]; start with [`WebhookRegistry::builder`].
#[derive(Debug)]
pub struct WebhookRegistryBuilder {
    db: Database,
    policy: DestinationPolicy,
    max_endpoints: u32,
}

impl WebhookRegistryBuilder {
    /// Which URLs endpoints may have. Default: [`DestinationPolicy::new`]
    /// (public `https` destinations only).
    pub fn destination_policy(mut self, policy: DestinationPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The most endpoints one organization may have. Default: 20.
    pub fn max_endpoints(mut self, limit: u32) -> Self {
        self.max_endpoints = limit;
        self
    }

    /// Builds the registry.
    pub fn build(self) -> WebhookRegistry {
        WebhookRegistry {
            db: self.db,
            config: Arc::new(Config {
                policy: self.policy,
                max_endpoints: self.max_endpoints,
            }),
        }
    }
}

#[derive(Debug)]
struct Config {
    policy: DestinationPolicy,
    max_endpoints: u32,
}

/// Webhook endpoints and the event-type catalogue. Cheap to clone, `Send + Sync`.
///
/// Endpoint calls take the organization id and never see another
/// organization's endpoints: a foreign id is [`Error::NotFound`].
#[derive(Debug, Clone)]
pub struct WebhookRegistry {
    db: Database,
    config: Arc<Config>,
}

const ENDPOINT_COLUMNS: &str = "row_id, id, org_id, url, description, all_event_types, headers, \
     enabled, disabled_reason, created_at, updated_at";

impl WebhookRegistry {
    /// A registry with default settings.
    pub fn new(db: &Database) -> WebhookRegistry {
        WebhookRegistry::builder(db).build()
    }

    /// Settings for a registry on `db`.
    pub fn builder(db: &Database) -> WebhookRegistryBuilder {
        WebhookRegistryBuilder {
            db: db.clone(),
            policy: DestinationPolicy::new(),
            max_endpoints: 20,
        }
    }

    /// The destination policy endpoints are checked against.
    pub fn destination_policy(&self) -> &DestinationPolicy {
        &self.config.policy
    }

    /// Adds an event type to the catalogue, or updates its description
    /// (its example, deprecation and archiving stay as they were).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] (`event_type`) unless the name is 1 to 100
    /// bytes of dot-separated `[A-Za-z0-9_]` segments; (`description`) for a
    /// bad description.
    pub fn register_event_type(&self, name: &str, description: &str) -> Result<EventType> {
        check_event_type_name(name)?;
        validate::description(description)?;
        self.db.write(|tx| {
            tx.execute(
                "INSERT INTO keyhook_event_types (name, description, created_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO UPDATE SET description = excluded.description",
                params![name, description, now_ms()],
            )?;
            event_type(tx, name)
        })
    }

    /// Changes an event type: its description, its example payload, its
    /// deprecation, its archiving. An archived type refuses new
    /// subscriptions and emits ([`Error::InvalidState`] `"archived"`);
    /// endpoints already subscribed keep it, and its history stays.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownEventType`]; [`Error::InvalidInput`] (`description`)
    /// for a bad description, (`example`) for an example over 64 KiB.
    /// Nothing changes on error.
    pub fn update_event_type(&self, name: &str, update: EventTypeUpdate) -> Result<EventType> {
        if let Some(d) = &update.description {
            validate::description(d)?;
        }
        let example = match &update.example {
            Some(Some(v)) => {
                let json = serde_json::to_string(v).map_err(Error::Serialize)?;
                if json.len() > MAX_EXAMPLE_BYTES {
                    return Err(Error::invalid(
                        "example",
                        format!(
                            "is {} bytes of JSON, over the limit of {MAX_EXAMPLE_BYTES}",
                            json.len()
                        ),
                    ));
                }
                Some(Some(json))
            }
            Some(None) => Some(None),
            None => None,
        };
        let now = now_ms();
        self.db.write(|tx| {
            event_type(tx, name)?;
            tx.execute(
                "UPDATE keyhook_event_types SET
                     description = COALESCE(?2, description),
                     example = CASE WHEN ?3 THEN ?4 ELSE example END,
                     deprecated_at = CASE CAST(?5 AS INTEGER) WHEN 1 THEN COALESCE(deprecated_at, ?7)
                                             WHEN 0 THEN NULL ELSE deprecated_at END,
                     archived_at = CASE CAST(?6 AS INTEGER) WHEN 1 THEN COALESCE(archived_at, ?7)
                                           WHEN 0 THEN NULL ELSE archived_at END
                 WHERE name = ?1",
                params![
                    name,
                    update.description,
                    example.is_some(),
                    example.flatten(),
                    update.deprecated,
                    update.archived,
                    now
                ],
            )?;
            event_type(tx, name)
        })
    }

    /// The catalogue, sorted by name, archived types included.
    ///
    /// # Errors
    ///
    /// [`Error::Database`].
    pub fn event_types(&self) -> Result<Vec<EventType>> {
        self.db.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {EVENT_TYPE_COLUMNS} FROM keyhook_event_types ORDER BY name"
            ))?;
            let rows = stmt.query_map((), event_type_row)?;
            rows.collect::<Result<_>>()
        })
    }

    /// Registers an endpoint and returns it with its signing secret: its
    /// requests are signed `v1` (HMAC-SHA256). For `v1a` (Ed25519) see
    /// [`create_ed25519`](Self::create_ed25519).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a bad URL, empty or malformed event types,
    /// bad headers or description; [`Error::DestinationRefused`] for a
    /// private, loopback or otherwise refused address; [`Error::UnknownEventType`]
    /// naming a type not in the catalogue; [`Error::LimitReached`] at the
    /// endpoint limit.
    pub fn create<S: AsRef<str>>(
        &self,
        org: &str,
        url: &str,
        event_types: &[S],
        mut options: EndpointOptions,
    ) -> Result<CreatedEndpoint> {
        let secret = match options.secret.take() {
            Some(s) => s,
            None => SigningSecret::generate()?,
        };
        let endpoint = self.insert_endpoint(
            org,
            url,
            event_types,
            options,
            &EndpointKey::Hmac(secret.clone()),
        )?;
        Ok(CreatedEndpoint { endpoint, secret })
    }

    /// Registers an endpoint whose requests are signed `v1a` (Ed25519) with
    /// a new key pair, and returns it with the public key (`whpk_…`) to give
    /// its owner. The secret key stays in keyhook's database.
    ///
    /// Receivers verify with
    /// [`Verifier::with_public_key`](crate::signing::Verifier::with_public_key);
    /// [`signing_public_keys`](Self::signing_public_keys) reads the key
    /// again later. An existing endpoint moves to `v1a` with
    /// [`rotate_ed25519_key`](Self::rotate_ed25519_key).
    ///
    /// # Errors
    ///
    /// As [`create`](Self::create), and [`Error::InvalidInput`] (`secret`)
    /// if `options.secret` holds an HMAC secret, which a `v1a` endpoint
    /// cannot use.
    pub fn create_ed25519<S: AsRef<str>>(
        &self,
        org: &str,
        url: &str,
        event_types: &[S],
        options: EndpointOptions,
    ) -> Result<CreatedEd25519Endpoint> {
        if options.secret.is_some() {
            return Err(Error::invalid(
                "secret",
                "is an HMAC (whsec_) secret; an Ed25519 endpoint signs with a key pair keyhook \
                 generates (leave it None, or use create for a v1 endpoint)",
            ));
        }
        let key = Ed25519SecretKey::generate()?;
        let endpoint = self.insert_endpoint(
            org,
            url,
            event_types,
            options,
            &EndpointKey::Ed25519(key.clone()),
        )?;
        Ok(CreatedEd25519Endpoint {
            endpoint,
            public_key: key.public_key(),
        })
    }

    /// Checks and inserts an endpoint signing with `key`.
    fn insert_endpoint<S: AsRef<str>>(
        &self,
        org: &str,
        url: &str,
        event_types: &[S],
        options: EndpointOptions,
        key: &EndpointKey,
    ) -> Result<Endpoint> {
        validate::org(org)?;
        let url = self.config.policy.check_url(url)?.to_string();
        let types = check_subscription(
            event_types.iter().map(AsRef::as_ref),
            options.all_event_types,
        )?;
        let headers = check_headers(options.headers)?;
        if let Some(d) = &options.description {
            validate::description(d)?;
        }
        let now = now_ms();
        let id = new_id("ep_", now)?;
        self.db.write(|tx| {
            require_known_types(tx, &types, &[])?;
            // Counting and inserting take turns with other processes'.
            tx.lock_scope(LOCK_ENDPOINTS, org)?;
            let count: u32 = tx.query_row(
                "SELECT COUNT(*) FROM keyhook_endpoints WHERE org_id = ?1",
                [org],
                |r| r.get(0),
            )?;
            if count >= self.config.max_endpoints {
                return Err(Error::LimitReached {
                    what: "webhook endpoints",
                    limit: self.config.max_endpoints,
                });
            }
            let row = tx.insert(
                "INSERT INTO keyhook_endpoints (id, org_id, url, description, all_event_types, headers,
                     enabled, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1, ?7, ?7)",
                params![
                    id,
                    org,
                    url,
                    options.description,
                    options.all_event_types,
                    headers_to_json(&headers),
                    now
                ],
            )?;
            set_types(tx, row, &types)?;
            insert_key(tx, row, key, now)?;
            Ok(get_endpoint(tx, org, &id)?.1)
        })
    }

    /// The organization's endpoints, newest first.
    ///
    /// # Errors
    ///
    /// [`Error::Database`].
    pub fn list(&self, org: &str) -> Result<Vec<Endpoint>> {
        self.db.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {ENDPOINT_COLUMNS} FROM keyhook_endpoints WHERE org_id = ?1
                 ORDER BY created_at DESC, row_id DESC"
            ))?;
            let rows: Vec<(i64, Endpoint)> = stmt
                .query_map([org], endpoint_from_row)?
                .collect::<Result<_>>()?;
            rows.into_iter()
                .map(|(row, mut ep)| {
                    ep.event_types = load_types(c, row)?;
                    Ok(ep)
                })
                .collect()
        })
    }

    /// One endpoint of the organization.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`].
    pub fn get(&self, org: &str, id: &str) -> Result<Endpoint> {
        self.db.read(|c| Ok(get_endpoint(c, org, id)?.1))
    }

    /// Changes an endpoint; fields left `None` keep their value.
    ///
    /// # Errors
    ///
    /// As [`create`](Self::create) for the new values, and [`Error::NotFound`].
    pub fn update(&self, org: &str, id: &str, update: EndpointUpdate) -> Result<Endpoint> {
        let url = match &update.url {
            Some(u) => Some(self.config.policy.check_url(u)?.to_string()),
            None => None,
        };
        let headers = update.headers.map(check_headers).transpose()?;
        if let Some(Some(d)) = &update.description {
            validate::description(d)?;
        }
        let now = now_ms();
        self.db.write(|tx| {
            let (row, current) = get_endpoint(tx, org, id)?;
            let all = update.all_event_types.unwrap_or(current.all_event_types);
            let types = match &update.event_types {
                Some(t) => check_subscription(t.iter().map(String::as_str), all)?,
                None => check_subscription(current.event_types.iter().map(String::as_str), all)?,
            };
            require_known_types(tx, &types, &current.event_types)?;
            tx.execute(
                "UPDATE keyhook_endpoints SET url = ?2, description = ?3, all_event_types = ?4,
                     headers = ?5, enabled = ?6, updated_at = ?7,
                     disabled_reason = CASE WHEN ?6 = 1 THEN NULL ELSE disabled_reason END,
                     disabled_at = CASE WHEN ?6 = 1 THEN NULL ELSE COALESCE(disabled_at, ?7) END,
                     failing_since = CASE WHEN ?6 = 1 AND enabled = 0 THEN NULL ELSE failing_since END
                 WHERE row_id = ?1",
                params![
                    row,
                    url.unwrap_or(current.url),
                    update.description.unwrap_or(current.description),
                    all,
                    headers_to_json(headers.as_ref().unwrap_or(&current.headers)),
                    update.enabled.unwrap_or(current.enabled),
                    now
                ],
            )?;
            set_types(tx, row, &types)?;
            match update.enabled {
                Some(false) if current.enabled => park_deliveries(tx, row, now)?,
                Some(true) if !current.enabled => unpark_deliveries(tx, row, now)?,
                _ => {}
            }
            Ok(get_endpoint(tx, org, id)?.1)
        })
    }

    /// Enables an endpoint (after keyhook or its owner disabled it) and says
    /// since when it missed deliveries, to offer a recovery. Its failure
    /// period starts afresh.
    ///
    /// What happens to events emitted meanwhile: while disabled, an endpoint
    /// gets no deliveries of new events (they are not queued for it), and
    /// enabling it does not queue them either. Its pending deliveries from
    /// before it was disabled resume. To deliver what it missed, call
    /// [`Dispatcher::replay_missing`](crate::Dispatcher::replay_missing)
    /// with `missed_since` (deliveries that failed meanwhile:
    /// [`Dispatcher::recover`](crate::Dispatcher::recover)).
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] (also for a deleted endpoint).
    pub fn enable(&self, org: &str, id: &str) -> Result<EnabledEndpoint> {
        let now = now_ms();
        self.db.write(|tx| {
            let (row, _) = get_endpoint(tx, org, id)?;
            let (failing_since, disabled_at): (Option<i64>, Option<i64>) = tx.query_row(
                "SELECT failing_since, disabled_at FROM keyhook_endpoints WHERE row_id = ?1",
                [row],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            tx.execute(
                "UPDATE keyhook_endpoints SET enabled = 1, disabled_reason = NULL, disabled_at = NULL,
                     failing_since = NULL, updated_at = ?2
                 WHERE row_id = ?1",
                params![row, now],
            )?;
            unpark_deliveries(tx, row, now)?;
            let missed = match (failing_since, disabled_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            Ok(EnabledEndpoint {
                endpoint: get_endpoint(tx, org, id)?.1,
                missed_since: missed.map(from_ms),
            })
        })
    }

    /// Deletes an endpoint, its secrets and its delivery history; pending
    /// deliveries to it are dropped.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`].
    pub fn delete(&self, org: &str, id: &str) -> Result<()> {
        self.db.write(|tx| {
            let n = tx.execute(
                "DELETE FROM keyhook_endpoints WHERE org_id = ?1 AND id = ?2",
                params![org, id],
            )?;
            if n == 0 {
                return Err(Error::not_found("endpoint", id));
            }
            Ok(())
        })
    }

    /// Gives the endpoint a new `v1` (HMAC) signing secret. Requests are
    /// signed with the new secret and with every key signing now until
    /// `grace` ends (default [`DEFAULT_ROTATION_GRACE`]), so receivers can
    /// switch without missing a request; then with the new secret only.
    ///
    /// On an endpoint signing `v1a`, this moves it back to `v1`: during the
    /// grace period its requests carry both `v1,…` and `v1a,…` entries.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] (`grace`) above [`MAX_ROTATION_GRACE`];
    /// [`Error::NotFound`]. Nothing changes on error.
    pub fn rotate_secret(
        &self,
        org: &str,
        id: &str,
        grace: Option<Duration>,
    ) -> Result<SigningSecret> {
        let grace = check_grace(grace)?;
        let secret = SigningSecret::generate()?;
        self.rotate(org, id, grace, &EndpointKey::Hmac(secret.clone()))?;
        Ok(secret)
    }

    /// Gives the endpoint a new `v1a` (Ed25519) key pair and returns its
    /// public key (`whpk_…`) for the owner. Requests are signed with the new
    /// key and with every key signing now until `grace` ends (default
    /// [`DEFAULT_ROTATION_GRACE`]); then with the new key only.
    ///
    /// This is how an endpoint moves from `v1` to `v1a`: during the grace
    /// period each request carries a `v1,…` entry for receivers still
    /// holding the HMAC secret and a `v1a,…` entry for those holding the
    /// public key, and each verifies the entry it has a key for. With a
    /// grace of zero the old keys stop signing at once.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] (`grace`) above [`MAX_ROTATION_GRACE`];
    /// [`Error::NotFound`]. Nothing changes on error.
    pub fn rotate_ed25519_key(
        &self,
        org: &str,
        id: &str,
        grace: Option<Duration>,
    ) -> Result<Ed25519PublicKey> {
        let grace = check_grace(grace)?;
        let key = Ed25519SecretKey::generate()?;
        self.rotate(org, id, grace, &EndpointKey::Ed25519(key.clone()))?;
        Ok(key.public_key())
    }

    /// Adds `key` to the endpoint's signing keys; the ones signing now stop
    /// `grace` from now.
    fn rotate(&self, org: &str, id: &str, grace: Duration, key: &EndpointKey) -> Result<()> {
        let now = now_ms();
        self.db.write(|tx| {
            let (row, _) = get_endpoint(tx, org, id)?;
            tx.execute(
                "DELETE FROM keyhook_endpoint_secrets WHERE endpoint_row = ?1 AND expires_at <= ?2",
                params![row, now],
            )?;
            tx.execute(
                "UPDATE keyhook_endpoint_secrets SET expires_at = ?2
                 WHERE endpoint_row = ?1 AND (expires_at IS NULL OR expires_at > ?2)",
                params![row, now.saturating_add(duration_ms(grace))],
            )?;
            insert_key(tx, row, key, now)
        })
    }

    /// The HMAC secrets that sign `v1` requests to this endpoint now, newest
    /// first: empty for an endpoint signing only `v1a` (see
    /// [`signing_public_keys`](Self::signing_public_keys)).
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`].
    pub fn signing_secrets(&self, org: &str, id: &str) -> Result<Vec<SigningSecret>> {
        Ok(self
            .active_keys(org, id)?
            .into_iter()
            .filter_map(|k| match k {
                EndpointKey::Hmac(secret) => Some(secret),
                EndpointKey::Ed25519(_) => None,
            })
            .collect())
    }

    /// The public keys of the Ed25519 keys that sign `v1a` requests to this
    /// endpoint now, newest first: what its receivers verify with. Empty for
    /// an endpoint signing only `v1` (see
    /// [`signing_secrets`](Self::signing_secrets)).
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`].
    pub fn signing_public_keys(&self, org: &str, id: &str) -> Result<Vec<Ed25519PublicKey>> {
        Ok(self
            .active_keys(org, id)?
            .into_iter()
            .filter_map(|k| match k {
                EndpointKey::Ed25519(key) => Some(key.public_key()),
                EndpointKey::Hmac(_) => None,
            })
            .collect())
    }

    fn active_keys(&self, org: &str, id: &str) -> Result<Vec<EndpointKey>> {
        self.db.read(|c| {
            let (row, _) = get_endpoint(c, org, id)?;
            active_keys(c, row, now_ms())
        })
    }
}

/// The grace period asked for, or the default; at most [`MAX_ROTATION_GRACE`].
fn check_grace(grace: Option<Duration>) -> Result<Duration> {
    let grace = grace.unwrap_or(DEFAULT_ROTATION_GRACE);
    if grace > MAX_ROTATION_GRACE {
        return Err(Error::invalid("grace", "must be at most 7 days"));
    }
    Ok(grace)
}

fn insert_key(tx: Sql<'_>, endpoint_row: i64, key: &EndpointKey, now: i64) -> Result<()> {
    tx.execute(
        "INSERT INTO keyhook_endpoint_secrets (endpoint_row, kind, secret, created_at)
         VALUES (?1, ?2, ?3, ?4)",
        params![endpoint_row, key.kind(), key.stored_bytes(), now],
    )?;
    Ok(())
}

/// The keys signing for an endpoint at `now`, newest first.
fn active_keys(c: Sql<'_>, endpoint_row: i64, now: i64) -> Result<Vec<EndpointKey>> {
    let mut stmt = c.prepare_cached(
        "SELECT kind, secret FROM keyhook_endpoint_secrets
         WHERE endpoint_row = ?1 AND (expires_at IS NULL OR expires_at > ?2)
         ORDER BY row_id DESC",
    )?;
    let rows = stmt.query_map(params![endpoint_row, now], |r| {
        Ok((r.get::<i64>(0)?, r.get::<Vec<u8>>(1)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (kind, bytes) = row?;
        // Stored keys were checked when written; a bad row is skipped, not fatal.
        out.extend(EndpointKey::from_row(kind, &bytes));
    }
    Ok(out)
}

/// Pre-keyed signers for an endpoint's keys signing at `now`, newest first:
/// `v1` for HMAC secrets, `v1a` for Ed25519 keys.
pub(crate) fn active_signers(c: Sql<'_>, endpoint_row: i64, now: i64) -> Result<Vec<Signer>> {
    Ok(active_keys(c, endpoint_row, now)?
        .iter()
        .map(|k| match k {
            EndpointKey::Hmac(secret) => Signer::new(secret),
            EndpointKey::Ed25519(key) => Signer::ed25519(key),
        })
        .collect())
}

/// Checks an event type name against the Standard Webhooks rule.
pub(crate) fn check_event_type_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name.split('.').all(|seg| {
            !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        });
    if !ok {
        return Err(Error::invalid(
            "event_type",
            format!(
                "{:?} must be 1 to 100 bytes of dot-separated [A-Za-z0-9_] segments",
                truncate_for_message(name)
            ),
        ));
    }
    Ok(())
}

fn truncate_for_message(s: &str) -> String {
    s.chars().take(64).collect()
}

fn check_subscription<'a>(types: impl Iterator<Item = &'a str>, all: bool) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for t in types {
        check_event_type_name(t)?;
        if !out.iter().any(|o| o == t) {
            out.push(t.to_owned());
        }
    }
    if out.is_empty() && !all {
        return Err(Error::invalid(
            "event_types",
            "choose at least one event type, or all event types",
        ));
    }
    if all {
        out.clear();
    }
    Ok(out)
}

/// Parks a disabled endpoint's pending deliveries (`next_attempt_at`
/// NULL: never due, so they cost the claims nothing). Deliveries leased
/// now are parked when their attempt is recorded.
pub(crate) fn park_deliveries(tx: Sql<'_>, endpoint_row: i64, now: i64) -> Result<()> {
    tx.prepare_cached(
        "UPDATE keyhook_deliveries SET next_attempt_at = NULL, leased = 0
         WHERE endpoint_row = ?1 AND state = 0 AND (leased = 0 OR next_attempt_at <= ?2)",
    )?
    .execute(params![endpoint_row, now])?;
    Ok(())
}

/// Makes an enabled endpoint's parked deliveries due now.
fn unpark_deliveries(tx: Sql<'_>, endpoint_row: i64, now: i64) -> Result<()> {
    tx.prepare_cached(
        "UPDATE keyhook_deliveries SET next_attempt_at = ?2
         WHERE endpoint_row = ?1 AND state = 0 AND next_attempt_at IS NULL",
    )?
    .execute(params![endpoint_row, now])?;
    tx.notify()?;
    Ok(())
}

/// Every type must be in the catalogue, and not archived unless the
/// endpoint already had it (`kept`).
fn require_known_types(tx: Sql<'_>, types: &[String], kept: &[String]) -> Result<()> {
    for t in types {
        if kept.contains(t) {
            event_type(tx, t)?;
        } else {
            usable_event_type(tx, t)?;
        }
    }
    Ok(())
}

fn set_types(tx: Sql<'_>, row: i64, types: &[String]) -> Result<()> {
    tx.execute(
        "DELETE FROM keyhook_endpoint_event_types WHERE endpoint_row = ?1",
        [row],
    )?;
    let mut stmt = tx.prepare_cached(
        "INSERT INTO keyhook_endpoint_event_types (endpoint_row, event_type) VALUES (?1, ?2)",
    )?;
    for t in types {
        stmt.execute(params![row, t])?;
    }
    Ok(())
}

fn check_headers(headers: Vec<(String, String)>) -> Result<Vec<(String, String)>> {
    if headers.len() > MAX_HEADERS {
        return Err(Error::invalid(
            "headers",
            format!("at most {MAX_HEADERS} custom headers"),
        ));
    }
    let mut out: Vec<(String, String)> = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        let lower = name.to_ascii_lowercase();
        let is_token = !lower.is_empty()
            && lower.len() <= 100
            && lower
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !is_token {
            return Err(Error::invalid(
                "headers",
                format!(
                    "{:?} is not a valid header name",
                    truncate_for_message(&name)
                ),
            ));
        }
        if FORBIDDEN_HEADERS.contains(&lower.as_str()) || lower.starts_with("proxy-") {
            return Err(Error::invalid(
                "headers",
                format!("{lower:?} is set by keyhook or is a hop-by-hop header"),
            ));
        }
        if out.iter().any(|(n, _)| *n == lower) {
            return Err(Error::invalid(
                "headers",
                format!("{lower:?} is given twice"),
            ));
        }
        // Values are not echoed: they often hold credentials.
        if value.len() > 4096 || value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(Error::invalid(
                "headers",
                format!(
                    "the value of {lower:?} must be at most 4,096 bytes without control characters"
                ),
            ));
        }
        out.push((lower, value));
    }
    Ok(out)
}

fn headers_to_json(headers: &[(String, String)]) -> String {
    serde_json::Value::Array(
        headers
            .iter()
            .map(|(k, v)| serde_json::json!([k, v]))
            .collect(),
    )
    .to_string()
}

pub(crate) fn headers_from_json(s: &str) -> Vec<(String, String)> {
    serde_json::from_str::<Vec<(String, String)>>(s).unwrap_or_default()
}

fn endpoint_from_row(r: &Row<'_>) -> Result<(i64, Endpoint)> {
    Ok((
        r.get(0)?,
        Endpoint {
            id: r.get(1)?,
            org: r.get(2)?,
            url: r.get(3)?,
            description: r.get(4)?,
            event_types: Vec::new(),
            all_event_types: r.get(5)?,
            headers: headers_from_json(&r.get::<String>(6)?),
            enabled: r.get(7)?,
            disabled_reason: r.get(8)?,
            created_at: from_ms(r.get(9)?),
            updated_at: from_ms(r.get(10)?),
        },
    ))
}

fn load_types(c: Sql<'_>, row: i64) -> Result<Vec<String>> {
    let mut stmt = c.prepare_cached(
        "SELECT event_type FROM keyhook_endpoint_event_types WHERE endpoint_row = ?1 ORDER BY event_type",
    )?;
    let rows = stmt.query_map([row], |r| r.get(0))?;
    rows.collect::<Result<_>>()
}

/// The endpoint's internal row id and its public form.
pub(crate) fn get_endpoint(c: Sql<'_>, org: &str, id: &str) -> Result<(i64, Endpoint)> {
    let (row, mut ep) = c
        .prepare_cached(&format!(
            "SELECT {ENDPOINT_COLUMNS} FROM keyhook_endpoints WHERE org_id = ?1 AND id = ?2"
        ))?
        .query_row([org, id], endpoint_from_row)
        .optional()?
        .ok_or_else(|| Error::not_found("endpoint", id))?;
    ep.event_types = load_types(c, row)?;
    Ok((row, ep))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_type_names() {
        for ok in ["conversion.created", "a", "a_b.C9", "x.y.z"] {
            assert!(check_event_type_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "a.",
            ".a",
            "a..b",
            "a-b",
            "a b",
            "é",
            &"a".repeat(101),
        ] {
            assert!(check_event_type_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn header_rules() {
        let h = |n: &str, v: &str| vec![(n.to_owned(), v.to_owned())];
        assert_eq!(
            check_headers(h("X-Token", "abc")).unwrap(),
            vec![("x-token".to_owned(), "abc".to_owned())]
        );
        for forbidden in [
            "webhook-signature",
            "Content-Type",
            "Connection",
            "Proxy-Foo",
            "Host",
        ] {
            assert!(check_headers(h(forbidden, "x")).is_err(), "{forbidden}");
        }
        assert!(check_headers(h("bad name", "x")).is_err());
        assert!(check_headers(h("x-a", "line\r\nbreak")).is_err());
        let dup = vec![("X-A".into(), "1".into()), ("x-a".into(), "2".into())];
        assert!(check_headers(dup).is_err());
        let err = check_headers(h("x-a", "secret\u{0}value"))
            .unwrap_err()
            .to_string();
        assert!(!err.contains("secret"));
    }

    #[test]
    fn subscription_rules() {
        assert!(check_subscription(std::iter::empty(), false).is_err());
        assert!(
            check_subscription(std::iter::empty(), true)
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            check_subscription(["a.b", "a.b"].into_iter(), false).unwrap(),
            vec!["a.b"]
        );
    }

    #[test]
    fn headers_json_roundtrip() {
        let h = vec![("x-a".to_owned(), "1\"2".to_owned())];
        assert_eq!(headers_from_json(&headers_to_json(&h)), h);
    }
}
