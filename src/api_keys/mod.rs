//! API keys: create, list, rename and edit, revoke, roll, and verify.

mod cache;
mod format;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime};

use crate::sql::{Optional, Row, Sql, params};
use hmac::{Hmac, Mac};
use rusqlite::types::Type;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::cursor;
use crate::db::{Database, duration_ms, from_ms, now_ms, to_ms};
use crate::error::{Error, Rejection, Result};
use crate::validate;

/// The longest grace period [`ApiKeyStore::roll`] accepts, unless the
/// store's builder sets another ([`ApiKeyStoreBuilder::max_roll_grace`]):
/// 7 days, as for a webhook secret's rotation.
pub const DEFAULT_MAX_ROLL_GRACE: Duration = Duration::from_secs(7 * 24 * 3600);

/// The largest [`ApiKeyStoreBuilder::max_roll_grace`] a store accepts: 365 days.
const MAX_ROLL_GRACE_LIMIT: Duration = Duration::from_secs(365 * 24 * 3600);

/// The largest host metadata one key may carry, in bytes of compact JSON.
pub const MAX_KEY_METADATA_BYTES: usize = 4096;

/// The most keys on one page of [`ApiKeyStore::list_page`].
const MAX_KEY_PAGE_SIZE: usize = 200;

/// How often `last_used_at` is written for one key: at most once a minute,
/// so `verify` is a read, not a write transaction, on almost every call.
const LAST_USED_GRANULARITY_MS: i64 = 60_000;

const HASH_SHA256: i64 = 1;
const HASH_HMAC_PEPPER: i64 = 2;

/// Settings of a key that its owner can edit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeySettings {
    /// When the key stops working. Must be in the future when set. Default: never.
    pub expires_at: Option<SystemTime>,
    /// Free-form permissions the host defines (e.g. `"conversions:read"`);
    /// each 1 to 100 printable characters without spaces, at most 50.
    pub scopes: Vec<String>,
    /// A longer note for the owner, at most 1,000 characters.
    pub description: Option<String>,
    /// The key's environment (e.g. `"live"` or `"test"`), fixed when the key is
    /// created; `None` means the store's default.
    pub environment: Option<String>,
    /// The host's own data about the key (e.g. the user who made it, a
    /// per-key rate limit), returned with it by [`ApiKeyStore::verify`], so an
    /// API server needs no second lookup. A JSON object of at most
    /// [`MAX_KEY_METADATA_BYTES`] serialized. Not secret: it is shown in
    /// listings and `Debug`. Default: none.
    pub metadata: Option<serde_json::Value>,
}

/// Changes for [`ApiKeyStore::update`]: `None` leaves a field as it is, so
/// `KeyUpdate::default()` changes nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyUpdate {
    /// A new name, checked and trimmed as by [`ApiKeyStore::create`].
    pub name: Option<String>,
    /// A new expiry; `Some(None)` removes it. A new expiry must be in the
    /// future. Giving an expired key a new expiry (or none) makes it work
    /// again, so it then counts against the live-key limit.
    pub expires_at: Option<Option<SystemTime>>,
    /// New scopes, replacing the old ones; `Some(vec![])` removes them all.
    pub scopes: Option<Vec<String>>,
    /// A new description; `Some(None)` clears it.
    pub description: Option<Option<String>>,
    /// New host metadata (a JSON object, as in [`KeySettings::metadata`]),
    /// replacing the old; `Some(None)` clears it.
    pub metadata: Option<Option<serde_json::Value>>,
}

/// Whether a key works, as of when it was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyState {
    /// Verifies (if the organization's plan includes API keys).
    Active,
    /// Past its expiry time.
    Expired,
    /// Revoked for good.
    Revoked,
}

impl KeyState {
    /// A stable name for URLs, forms and logs: `active`, `expired`,
    /// `revoked` (parsed back by `str::parse`).
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Active => "active",
            KeyState::Expired => "expired",
            KeyState::Revoked => "revoked",
        }
    }
}

impl std::fmt::Display for KeyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for KeyState {
    type Err = Error;

    /// The state [`KeyState::as_str`] names; [`Error::InvalidInput`]
    /// (`state`) for anything else.
    fn from_str(s: &str) -> Result<KeyState> {
        match s {
            "active" => Ok(KeyState::Active),
            "expired" => Ok(KeyState::Expired),
            "revoked" => Ok(KeyState::Revoked),
            _ => Err(Error::invalid(
                "state",
                "must be active, expired or revoked",
            )),
        }
    }
}

/// A key's metadata. Never holds the plaintext or the hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// The public id, also embedded in the key string (safe to show and log).
    pub id: String,
    /// The owning organization.
    pub org: String,
    /// The owner's name for the key.
    pub name: String,
    /// The owner's description.
    pub description: Option<String>,
    /// The environment (e.g. `"live"`).
    pub environment: String,
    /// What to show in a list: prefix, environment and the first characters, e.g. `vr_live_3kTMd9…`.
    pub hint: String,
    /// The key's scopes.
    pub scopes: Vec<String>,
    /// The host's metadata ([`KeySettings::metadata`]).
    pub metadata: Option<serde_json::Value>,
    /// When it was created.
    pub created_at: SystemTime,
    /// When it last verified, to the minute.
    pub last_used_at: Option<SystemTime>,
    /// When it expires, if ever.
    pub expires_at: Option<SystemTime>,
    /// When it was revoked, or when a roll's grace period will revoke it.
    pub revoked_at: Option<SystemTime>,
    /// Its state when read.
    pub state: KeyState,
}

/// A new key's plaintext. Shown once; `Debug` redacts it.
#[derive(Clone)]
pub struct KeySecret(String);

impl KeySecret {
    /// The full key string to show the user once. keyhook keeps only its hash.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for KeySecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeySecret(<redacted>)")
    }
}

/// What [`ApiKeyStore::create`] and [`ApiKeyStore::roll`] return.
#[derive(Debug, Clone)]
pub struct CreatedKey {
    /// The key's metadata.
    pub key: ApiKey,
    /// The plaintext, returned this once.
    pub secret: KeySecret,
}

/// A key that verified: who is calling and what they may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedKey {
    /// The key's id.
    pub id: String,
    /// The organization the caller acts for.
    pub org: String,
    /// The key's name, as its owner last set it (e.g. for audit logs).
    pub name: String,
    /// The key's scopes.
    pub scopes: Vec<String>,
    /// The key's environment.
    pub environment: String,
    /// The host's metadata ([`KeySettings::metadata`]).
    pub metadata: Option<serde_json::Value>,
}

/// Which keys a page of [`ApiKeyStore::list_page`] shows. The default: every
/// key, 50 per page, first page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyQuery {
    /// Only keys in this state when the page is read ([`KeyState::Active`]:
    /// live keys, including an old key in a roll's grace period); `None`:
    /// every key. Default: `None`.
    pub state: Option<KeyState>,
    /// Keys per page, 1 to 200. Default: 50.
    pub limit: usize,
    /// The [`KeyPage::next_cursor`] of the previous page (read with the same
    /// `state`), to continue from it. Default: `None`, the first page.
    pub cursor: Option<String>,
}

impl Default for KeyQuery {
    fn default() -> Self {
        KeyQuery {
            state: None,
            limit: 50,
            cursor: None,
        }
    }
}

/// One page of an organization's keys, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPage {
    /// The keys, newest first. Metadata only.
    pub keys: Vec<ApiKey>,
    /// Pass this as [`KeyQuery::cursor`] (with the same `state`) for the
    /// next page; `None` on the last page. The cursor is a position, not
    /// an offset: keys created meanwhile never shift a page.
    pub next_cursor: Option<String>,
}

impl VerifiedKey {
    /// True if the key has `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}

/// Settings for an [`ApiKeyStore`]; start with [`ApiKeyStore::builder`].
pub struct ApiKeyStoreBuilder {
    db: Database,
    prefix: String,
    environments: Vec<String>,
    pepper: Option<Vec<u8>>,
    max_live_keys: u32,
    max_roll_grace: Duration,
    verify_cache: usize,
}

impl std::fmt::Debug for ApiKeyStoreBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyStoreBuilder")
            .field("prefix", &self.prefix)
            .field("environments", &self.environments)
            .field("pepper", &self.pepper.as_ref().map(|_| "<redacted>"))
            .field("max_live_keys", &self.max_live_keys)
            .field("max_roll_grace", &self.max_roll_grace)
            .field("verify_cache", &self.verify_cache)
            .finish()
    }
}

impl ApiKeyStoreBuilder {
    /// The prefix of every key string, so secret scanners can find leaked keys:
    /// 1 to 32 of `[A-Za-z0-9_]`, not starting or ending with `_`. Default: `"kh"`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The environments keys can belong to, the first being the default:
    /// each 1 to 16 of `[a-z0-9]`. Default: `["live", "test"]`.
    pub fn environments<I, S>(mut self, environments: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.environments = environments.into_iter().map(Into::into).collect();
        self
    }

    /// A server-side secret mixed into every key hash (HMAC-SHA256), kept out of
    /// the database: a stolen database file alone then cannot be used to test
    /// guesses. At least 16 bytes. Default: none (plain SHA-256 of the secret,
    /// which is already safe for 130 random bits).
    ///
    /// Keys hashed with a pepper need the same pepper to verify.
    pub fn pepper(mut self, pepper: impl Into<Vec<u8>>) -> Self {
        self.pepper = Some(pepper.into());
        self
    }

    /// The most live (not revoked, not expired) keys one organization may have.
    /// Default: 50.
    pub fn max_live_keys(mut self, limit: u32) -> Self {
        self.max_live_keys = limit;
        self
    }

    /// The longest grace period [`ApiKeyStore::roll`] accepts, at most 365
    /// days. Default: [`DEFAULT_MAX_ROLL_GRACE`] (7 days).
    pub fn max_roll_grace(mut self, grace: Duration) -> Self {
        self.max_roll_grace = grace;
        self
    }

    /// How many recently verified keys [`ApiKeyStore::verify`] answers from
    /// memory (0: none). Default: [`DEFAULT_VERIFY_CACHE`]. Only keys whose
    /// secret matched are kept, so unknown keys cannot push hot ones out;
    /// every verify still sees every change at once (see `verify`). SQLite
    /// files only: in memory and on PostgreSQL every verify reads the row.
    pub fn verify_cache(mut self, keys: usize) -> Self {
        self.verify_cache = keys;
        self
    }

    /// Checks the settings and builds the store.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] naming the setting (`prefix`, `environments`,
    /// `pepper`, `max_roll_grace`) that is out of its documented range.
    pub fn build(self) -> Result<ApiKeyStore> {
        let p = &self.prefix;
        if p.is_empty()
            || p.len() > 32
            || p.starts_with('_')
            || p.ends_with('_')
            || !p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(Error::invalid(
                "prefix",
                "must be 1 to 32 of [A-Za-z0-9_], not starting or ending with '_'",
            ));
        }
        if self.environments.is_empty() {
            return Err(Error::invalid("environments", "at least one is needed"));
        }
        for env in &self.environments {
            if env.is_empty()
                || env.len() > 16
                || !env
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            {
                return Err(Error::invalid(
                    "environments",
                    format!("{env:?} must be 1 to 16 of [a-z0-9]"),
                ));
            }
        }
        let pepper = match self.pepper {
            Some(p) if p.len() < 16 => {
                return Err(Error::invalid("pepper", "must be at least 16 bytes"));
            }
            Some(p) => Some(Hmac::<Sha256>::new_from_slice(&p).expect("HMAC takes any key length")),
            None => None,
        };
        if self.max_roll_grace > MAX_ROLL_GRACE_LIMIT {
            return Err(Error::invalid("max_roll_grace", "must be at most 365 days"));
        }
        let cache = cache::VerifyCache::new(&self.db, self.verify_cache)?.map(Arc::new);
        Ok(ApiKeyStore {
            db: self.db,
            cache,
            config: Arc::new(Config {
                prefix: self.prefix,
                environments: self.environments,
                pepper,
                max_live_keys: self.max_live_keys,
                max_roll_grace: self.max_roll_grace,
            }),
        })
    }
}

struct Config {
    prefix: String,
    environments: Vec<String>,
    /// Pre-keyed once; cloned per hash (cheaper than re-keying).
    pepper: Option<Hmac<Sha256>>,
    max_live_keys: u32,
    max_roll_grace: Duration,
}

/// Creates, manages and verifies API keys. Cheap to clone, `Send + Sync`.
///
/// Every call but [`verify`](Self::verify) takes the organization id and
/// only ever sees that organization's keys: another organization's key id is
/// [`Error::NotFound`], exactly like an id that never existed.
///
/// API keys are a paid-plan feature: an organization can have keys only after
/// [`set_api_keys_enabled`](Self::set_api_keys_enabled)`(org, true)`. While
/// it is off, creating keys fails and existing keys verify as
/// [`Rejection::PlanInactive`]; they work again when it is back on.
#[derive(Clone)]
pub struct ApiKeyStore {
    db: Database,
    config: Arc<Config>,
    /// Recently verified keys (SQLite files).
    cache: Option<Arc<cache::VerifyCache>>,
}

impl std::fmt::Debug for ApiKeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyStore")
            .field("prefix", &self.config.prefix)
            .field("environments", &self.config.environments)
            .field("pepper", &self.config.pepper.as_ref().map(|_| "<redacted>"))
            .field("max_live_keys", &self.config.max_live_keys)
            .field("max_roll_grace", &self.config.max_roll_grace)
            .finish_non_exhaustive()
    }
}

/// The advisory lock kind of an organization's API keys (PostgreSQL).
const LOCK_API_KEYS: i32 = 1;

/// How many keys [`ApiKeyStore::verify`] keeps in memory unless
/// [`ApiKeyStoreBuilder::verify_cache`] says otherwise: 10,000 (a few MiB).
pub const DEFAULT_VERIFY_CACHE: usize = 10_000;

const KEY_COLUMNS: &str = "id, org_id, name, description, environment, hint, scopes, \
     created_at, last_used_at, expires_at, revoke_at, revoked_at, metadata";

impl ApiKeyStore {
    /// A store with default settings (prefix `kh`, environments `live` and
    /// `test`, no pepper, 50 keys, rolls with at most 7 days of grace).
    pub fn new(db: &Database) -> ApiKeyStore {
        ApiKeyStore::builder(db)
            .build()
            .expect("default settings are valid")
    }

    /// Settings for a store on `db`.
    pub fn builder(db: &Database) -> ApiKeyStoreBuilder {
        ApiKeyStoreBuilder {
            db: db.clone(),
            prefix: "kh".into(),
            environments: vec!["live".into(), "test".into()],
            pepper: None,
            max_live_keys: 50,
            max_roll_grace: DEFAULT_MAX_ROLL_GRACE,
            verify_cache: DEFAULT_VERIFY_CACHE,
        }
    }

    /// Turns API keys on or off for an organization (the host calls this when
    /// the organization's plan changes). Keys are kept either way.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a bad organization id, [`Error::Database`].
    pub fn set_api_keys_enabled(&self, org: &str, enabled: bool) -> Result<()> {
        validate::org(org)?;
        self.db.write(|tx| {
            tx.execute(
                "INSERT INTO keyhook_organizations (id, api_keys_enabled) VALUES (?1, ?2)
                 ON CONFLICT (id) DO UPDATE SET api_keys_enabled = excluded.api_keys_enabled",
                params![org, enabled],
            )?;
            tx.execute(
                "UPDATE keyhook_api_keys SET org_enabled = ?2 WHERE org_id = ?1 AND org_enabled <> ?2",
                params![org, enabled],
            )?;
            Ok(())
        })
    }

    /// Whether API keys are enabled for `org` (false for an organization never set).
    ///
    /// # Errors
    ///
    /// [`Error::Database`].
    pub fn api_keys_enabled(&self, org: &str) -> Result<bool> {
        self.db.read(|c| {
            Ok(c.prepare_cached(
                "SELECT api_keys_enabled FROM keyhook_organizations WHERE id = ?1",
            )?
            .query_row([org], |r| r.get(0))
            .optional()?
            .unwrap_or(false))
        })
    }

    /// Creates a key. The plaintext is in the result and nowhere else, ever.
    ///
    /// # Errors
    ///
    /// [`Error::PlanNotEnabled`] if the organization's plan lacks API keys,
    /// [`Error::LimitReached`] at the live-key limit, [`Error::InvalidInput`]
    /// for a bad name (empty, over 100 characters, control characters),
    /// scope, description, unknown environment, an expiry not in the future,
    /// or metadata that is not a JSON object of at most
    /// [`MAX_KEY_METADATA_BYTES`] (`metadata`).
    pub fn create(&self, org: &str, name: &str, settings: KeySettings) -> Result<CreatedKey> {
        validate::org(org)?;
        let name = validate::name(name)?;
        let now = now_ms();
        let new = self.check_settings(settings, now)?;
        self.db.write(|tx| {
            let enabled: bool = tx
                .query_row(
                    "SELECT api_keys_enabled FROM keyhook_organizations WHERE id = ?1",
                    [org],
                    |r| r.get(0),
                )
                .optional()?
                .unwrap_or(false);
            if !enabled {
                return Err(Error::PlanNotEnabled { org: org.into() });
            }
            self.require_room(tx, org, now)?;
            self.insert_key(tx, org, &name, &new, now)
        })
    }

    /// Fails with [`Error::LimitReached`] if the organization is at its live-key limit.
    /// Refuses a key past the organization's live-key limit. Counting and
    /// inserting take turns with every other process's (`lock_scope`).
    fn require_room(&self, tx: Sql<'_>, org: &str, now: i64) -> Result<()> {
        tx.lock_scope(LOCK_API_KEYS, org)?;
        let live: u32 = tx
            .prepare_cached(
                "SELECT COUNT(*) FROM keyhook_api_keys INDEXED BY keyhook_api_keys_live_by_org
                 WHERE org_id = ?1 AND revoked_at IS NULL
                   AND (revoke_at IS NULL OR revoke_at > ?2)
                   AND (expires_at IS NULL OR expires_at > ?2)",
            )?
            .query_row(params![org, now], |r| r.get(0))?;
        if live >= self.config.max_live_keys {
            return Err(Error::LimitReached {
                what: "live API keys",
                limit: self.config.max_live_keys,
            });
        }
        Ok(())
    }

    fn insert_key(
        &self,
        tx: Sql<'_>,
        org: &str,
        name: &str,
        new: &NewKey,
        now: i64,
    ) -> Result<CreatedKey> {
        let prefix = &self.config.prefix;
        let (plaintext, id, secret) = format::generate(prefix, &new.environment)?;
        let (hash, kind) = self.hash(secret.as_bytes());
        let hint = format::hint(prefix, &new.environment, &id);
        tx.execute(
            "INSERT INTO keyhook_api_keys (id, org_id, name, description, environment, hint, hash,
                 hash_kind, scopes, created_at, updated_at, expires_at, org_enabled, prefix, metadata)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10, ?11, 1, ?12, ?13)",
            params![
                id,
                org,
                name,
                new.description,
                new.environment,
                hint,
                hash.as_slice(),
                kind,
                new.scopes.join(" "),
                now,
                new.expires_at,
                prefix,
                new.metadata,
            ],
        )?;
        let key = get_key(tx, org, &id, now)?;
        Ok(CreatedKey {
            key,
            secret: KeySecret(plaintext),
        })
    }

    /// Every key of the organization, newest first, in one list. Metadata
    /// only. A settings page should rather read
    /// [`list_page`](Self::list_page), which filters and pages.
    ///
    /// # Errors
    ///
    /// [`Error::Database`].
    pub fn list(&self, org: &str) -> Result<Vec<ApiKey>> {
        let now = now_ms();
        self.db.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {KEY_COLUMNS} FROM keyhook_api_keys WHERE org_id = ?1
                 ORDER BY created_at DESC, row_id DESC"
            ))?;
            let rows = stmt.query_map([org], |r| key_from_row(r, now))?;
            rows.collect::<Result<Vec<_>>>()
        })
    }

    /// One page of the organization's keys, newest first, optionally only
    /// those in one state. Metadata only.
    ///
    /// Pages are keyset pages: each one starts where the last one ended
    /// (an index seek), so reading page 1,000 costs what page 1 does. A
    /// filtered page reads past the keys that do not match between the ones
    /// it shows.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a `limit` out of 1 to 200, or a `cursor`
    /// that is not this organization's with this `state` (altered, or from
    /// another query); [`Error::Database`].
    pub fn list_page(&self, org: &str, query: &KeyQuery) -> Result<KeyPage> {
        if query.limit == 0 || query.limit > MAX_KEY_PAGE_SIZE {
            return Err(Error::invalid(
                "limit",
                format!("must be 1 to {MAX_KEY_PAGE_SIZE}"),
            ));
        }
        let now = now_ms();
        self.db.read(|c| {
            let cursor_key = cursor::key(c)?;
            let (before_at, before_row) = match &query.cursor {
                Some(cursor) => decode_cursor(&cursor_key, org, query.state, cursor)?,
                None => (i64::MAX, i64::MAX),
            };
            let mut stmt = c.prepare_cached(&page_sql(query.state))?;
            let mut rows = stmt
                .query_map(
                    params![org, now, before_at, before_row, query.limit as i64 + 1],
                    |r| Ok((key_from_row(r, now)?, r.get::<i64>(7)?, r.get::<i64>(13)?)),
                )?
                .collect::<Result<Vec<_>>>()?;
            let next_cursor = if rows.len() > query.limit {
                rows.truncate(query.limit);
                let (_, at, row) = rows.last().expect("limit is at least 1");
                Some(encode_cursor(&cursor_key, org, query.state, *at, *row))
            } else {
                None
            };
            Ok(KeyPage {
                keys: rows.into_iter().map(|(key, _, _)| key).collect(),
                next_cursor,
            })
        })
    }

    /// One key of the organization.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] if the organization has no key with this id.
    pub fn get(&self, org: &str, id: &str) -> Result<ApiKey> {
        self.db.read(|c| get_key(c, org, id, now_ms()))
    }

    /// Renames a key (the same as [`update`](Self::update) with only a name).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a bad name, [`Error::NotFound`],
    /// [`Error::InvalidState`] if the key is revoked.
    pub fn rename(&self, org: &str, id: &str, name: &str) -> Result<ApiKey> {
        self.update(
            org,
            id,
            KeyUpdate {
                name: Some(name.to_owned()),
                ..KeyUpdate::default()
            },
        )
    }

    /// Changes the fields of a key that `changes` gives and leaves the others
    /// as they are. The environment cannot change.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] naming the field, for a value
    /// [`create`](Self::create) would refuse; [`Error::NotFound`];
    /// [`Error::InvalidState`] if the key is revoked;
    /// [`Error::LimitReached`] if a new expiry would make an expired key work
    /// again at the live-key limit. Nothing changes when any of these is returned.
    pub fn update(&self, org: &str, id: &str, changes: KeyUpdate) -> Result<ApiKey> {
        let now = now_ms();
        let name = changes.name.as_deref().map(validate::name).transpose()?;
        let expires_at = match changes.expires_at {
            Some(Some(t)) => Some(Some(check_expiry(t, now)?)),
            Some(None) => Some(None),
            None => None,
        };
        let scopes = changes.scopes.map(validate::scopes).transpose()?;
        if let Some(Some(d)) = &changes.description {
            validate::description(d)?;
        }
        let metadata = match &changes.metadata {
            Some(Some(m)) => Some(Some(metadata_text(m)?)),
            Some(None) => Some(None),
            None => None,
        };
        self.db.write(|tx| {
            let current = require_not_revoked(tx, org, id, now)?;
            // A new expiry can bring an expired key back: it counts again.
            if current.state == KeyState::Expired && expires_at.is_some() {
                self.require_room(tx, org, now)?;
            }
            // Columns that cannot be NULL keep their value through COALESCE;
            // for the others a flag (?4, ?7, ?9) tells "set, maybe to NULL"
            // from "leave as it is".
            tx.execute(
                "UPDATE keyhook_api_keys SET
                     name = COALESCE(?3, name),
                     expires_at = CASE WHEN ?4 THEN ?5 ELSE expires_at END,
                     scopes = COALESCE(?6, scopes),
                     description = CASE WHEN ?7 THEN ?8 ELSE description END,
                     metadata = CASE WHEN ?9 THEN ?10 ELSE metadata END,
                     updated_at = ?11
                 WHERE org_id = ?1 AND id = ?2",
                params![
                    org,
                    id,
                    name,
                    expires_at.is_some(),
                    expires_at.flatten(),
                    scopes.map(|s| s.join(" ")),
                    changes.description.is_some(),
                    changes.description.flatten(),
                    metadata.is_some(),
                    metadata.flatten(),
                    now
                ],
            )?;
            get_key(tx, org, id, now)
        })
    }

    /// Revokes a key, permanently and at once: the next [`verify`](Self::verify)
    /// on any thread or process rejects it. Revoking a revoked key changes nothing.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`].
    pub fn revoke(&self, org: &str, id: &str) -> Result<ApiKey> {
        let now = now_ms();
        self.db.write(|tx| {
            get_key(tx, org, id, now)?;
            tx.execute(
                "UPDATE keyhook_api_keys SET revoked_at = MIN(COALESCE(revoke_at, ?3), ?3), updated_at = ?3
                 WHERE org_id = ?1 AND id = ?2 AND revoked_at IS NULL",
                params![org, id, now],
            )?;
            get_key(tx, org, id, now)
        })
    }

    /// Replaces a key with a new one of the same name, settings and metadata.
    /// The old key keeps working for `grace` (never past its own expiry),
    /// then is revoked; a zero `grace` revokes it now.
    ///
    /// While its grace period runs, the old key is live and counts against
    /// the live-key limit with the new one; a roll with zero grace never adds
    /// a live key, so it works even at the limit.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] (`grace`) for a grace longer than the store's
    /// [`max_roll_grace`](ApiKeyStoreBuilder::max_roll_grace) (7 days unless
    /// set); [`Error::LimitReached`] if the old key in its grace period and
    /// the new key would be over the live-key limit; [`Error::NotFound`];
    /// [`Error::InvalidState`] if the key is revoked, expired (create a new
    /// key instead) or already rolled. Nothing changes when any of these is returned.
    pub fn roll(&self, org: &str, id: &str, grace: Duration) -> Result<CreatedKey> {
        if grace > self.config.max_roll_grace {
            return Err(Error::invalid(
                "grace",
                format!(
                    "must be at most {} seconds (the store's max_roll_grace)",
                    self.config.max_roll_grace.as_secs()
                ),
            ));
        }
        let now = now_ms();
        self.db.write(|tx| {
            // Two rolls of one key at once (two app servers) would both see
            // it unrolled: they take turns.
            tx.lock_scope(LOCK_API_KEYS, org)?;
            let old = require_not_revoked(tx, org, id, now)?;
            if old.state == KeyState::Expired {
                return Err(Error::InvalidState {
                    kind: "api key",
                    id: id.into(),
                    state: "expired",
                });
            }
            // Rolling it again would mint keys past the live-key limit:
            // roll the replacement instead.
            if old.revoked_at.is_some() {
                return Err(Error::InvalidState {
                    kind: "api key",
                    id: id.into(),
                    state: "already rolled (its grace period is running)",
                });
            }
            if grace.is_zero() {
                tx.execute(
                    "UPDATE keyhook_api_keys SET revoked_at = ?3, updated_at = ?3 WHERE org_id = ?1 AND id = ?2",
                    params![org, id, now],
                )?;
            } else {
                // `grace` is at most 365 days, so this cannot overflow; the
                // old key is not expired, so `revoke_at` is after `now`.
                let mut revoke_at = now.saturating_add(duration_ms(grace));
                if let Some(exp) = old.expires_at.map(to_ms) {
                    revoke_at = revoke_at.min(exp);
                }
                tx.execute(
                    "UPDATE keyhook_api_keys SET revoke_at = MIN(COALESCE(revoke_at, ?3), ?3), updated_at = ?4
                     WHERE org_id = ?1 AND id = ?2",
                    params![org, id, revoke_at, now],
                )?;
                // The old key still counts: room is needed for the new one.
                self.require_room(tx, org, now)?;
            }
            let new = NewKey {
                expires_at: old.expires_at.map(to_ms),
                scopes: old.scopes.clone(),
                description: old.description.clone(),
                environment: old.environment.clone(),
                metadata: old.metadata.as_ref().map(|m| m.to_string()),
            };
            self.insert_key(tx, org, &old.name, &new, now)
        })
    }

    /// Checks a key presented by a caller. Malformed strings of any length are
    /// rejected without touching the database. A well-formed key is one
    /// indexed read of one row, or, for a key verified recently (on a SQLite
    /// file; [`ApiKeyStoreBuilder::verify_cache`]), no read at all: SQLite is
    /// asked whether anything was committed since (`data_version`), and only
    /// then whether keys changed (a version that triggers bump on every
    /// change to what verify answers). Revocation, expiry, plan changes and
    /// key updates, made by any thread or process, are seen by the very next
    /// verify, cache or not.
    ///
    /// A key verifies only under the prefix and environment it was made
    /// with: the same id and secret spelled with another store's prefix (and
    /// a recomputed checksum) is [`Rejection::Unknown`], like a wrong secret.
    ///
    /// # Errors
    ///
    /// [`Error::Rejected`] with the [`Rejection`] (use [`Error::rejection`]);
    /// [`Error::Database`] if the database fails.
    pub fn verify(&self, key: &str) -> Result<VerifiedKey> {
        let parsed = format::parse(key).ok_or(Error::Rejected(Rejection::Malformed))?;
        if parsed.prefix != self.config.prefix
            || !self
                .config
                .environments
                .iter()
                .any(|e| e == parsed.environment)
        {
            return Err(Error::Rejected(Rejection::Malformed));
        }
        let now = now_ms();
        let cached = match &self.cache {
            Some(cache) => cache.get(parsed.id)?,
            None => None,
        };
        let key = match cached {
            Some(key) => {
                if !self.secret_matches(&parsed, &key) {
                    return Err(Error::Rejected(Rejection::Unknown));
                }
                key
            }
            None => {
                let (mut key, metadata, version) = self.read_key(&parsed)?;
                if !self.secret_matches(&parsed, &key) {
                    return Err(Error::Rejected(Rejection::Unknown));
                }
                // Parsed only for a key whose secret matched: a host's
                // malformed metadata is not told to a wrong secret.
                key.metadata = stored_metadata(metadata.as_deref())?;
                // Only a key whose secret matched is kept.
                let key = Arc::new(key);
                if let (Some(cache), Some(version)) = (&self.cache, version) {
                    cache.insert(parsed.id, Arc::clone(&key), version);
                }
                key
            }
        };
        if key.revoked_at.is_some() || key.revoke_at.is_some_and(|t| t <= now) {
            return Err(Error::Rejected(Rejection::Revoked));
        }
        if key.expires_at.is_some_and(|t| t <= now) {
            return Err(Error::Rejected(Rejection::Expired));
        }
        if !key.plan {
            return Err(Error::Rejected(Rejection::PlanInactive));
        }
        let last_used = key.last_used_at.load(Ordering::Relaxed);
        if last_used == i64::MIN || now.saturating_sub(last_used) >= LAST_USED_GRANULARITY_MS {
            key.last_used_at.store(now, Ordering::Relaxed);
            // A failure to record usage must not fail an otherwise valid request.
            let recorded = self.db.read(|conn| {
                conn.prepare_cached(
                    "UPDATE keyhook_api_keys SET last_used_at = ?2
                     WHERE id = ?1 AND (last_used_at IS NULL OR last_used_at <= ?3)",
                )?
                .execute(params![parsed.id, now, now - LAST_USED_GRANULARITY_MS])
            });
            if let Err(e) = recorded {
                log::warn!("could not record last use of api key {}: {e}", parsed.id);
            }
        }
        Ok(VerifiedKey {
            id: parsed.id.to_owned(),
            org: key.org.clone(),
            name: key.name.clone(),
            scopes: key.scopes.clone(),
            environment: key.environment.clone(),
            metadata: key.metadata.clone(),
        })
    }

    /// The key `parsed` names, as verify needs it (its metadata as stored,
    /// apart, unparsed), and the change version it was read under;
    /// [`Rejection::Unknown`] if there is none.
    fn read_key(
        &self,
        parsed: &format::Parsed<'_>,
    ) -> Result<(cache::Cached, Option<String>, Option<i64>)> {
        let (row, version) = self.db.read(|conn| {
            conn.prepare_cached(VERIFY_SQL)?
                .query_row([parsed.id], |r| {
                    Ok((
                        VerifyRow {
                            org: r.get(0)?,
                            hash: r.get(1)?,
                            hash_kind: r.get(2)?,
                            scopes: r.get(3)?,
                            environment: r.get(4)?,
                            expires_at: r.get(5)?,
                            revoke_at: r.get(6)?,
                            revoked_at: r.get(7)?,
                            last_used_at: r.get(8)?,
                            plan: r.get(9)?,
                            prefix: r.get(10)?,
                            name: r.get(11)?,
                            metadata: r.get(12)?,
                        },
                        r.get::<Option<i64>>(13)?,
                    ))
                })
                .optional()?
                .ok_or(Error::Rejected(Rejection::Unknown))
        })?;
        let key = cache::Cached {
            scopes: split_scopes(&row.scopes),
            org: row.org,
            name: row.name,
            environment: row.environment,
            metadata: None,
            prefix: row.prefix,
            hash: row.hash,
            hash_kind: row.hash_kind,
            expires_at: row.expires_at,
            revoke_at: row.revoke_at,
            revoked_at: row.revoked_at,
            plan: row.plan,
            last_used_at: AtomicI64::new(row.last_used_at.unwrap_or(i64::MIN)),
        };
        Ok((key, row.metadata, version))
    }

    /// Whether the presented secret is the key's (constant time), and the
    /// key was made under the prefix and environment it is spelled with.
    /// The prefix and environment are part of the key string but checked
    /// against the stored row too, so a key cannot be re-spelled for another
    /// store or environment on the same database. The hash is always
    /// computed, so such a key takes as long as a wrong secret.
    fn secret_matches(&self, parsed: &format::Parsed<'_>, key: &cache::Cached) -> bool {
        let matches = match key.hash_kind {
            HASH_SHA256 => bool::from(Sha256::digest(parsed.secret).as_slice().ct_eq(&key.hash)),
            HASH_HMAC_PEPPER => match &self.config.pepper {
                Some(mac) => {
                    let mut mac = mac.clone();
                    mac.update(parsed.secret.as_bytes());
                    mac.verify_slice(&key.hash).is_ok()
                }
                None => {
                    log::warn!(
                        "api key {} was hashed with a pepper but this store has none",
                        parsed.id
                    );
                    false
                }
            },
            _ => false,
        };
        let same_spelling =
            key.prefix.as_deref() == Some(parsed.prefix) && key.environment == parsed.environment;
        matches & same_spelling
    }

    fn hash(&self, secret: &[u8]) -> (Vec<u8>, i64) {
        match &self.config.pepper {
            Some(mac) => {
                let mut mac = mac.clone();
                mac.update(secret);
                (mac.finalize().into_bytes().to_vec(), HASH_HMAC_PEPPER)
            }
            None => (Sha256::digest(secret).to_vec(), HASH_SHA256),
        }
    }

    fn check_settings(&self, s: KeySettings, now: i64) -> Result<NewKey> {
        let expires_at = s.expires_at.map(|t| check_expiry(t, now)).transpose()?;
        let scopes = validate::scopes(s.scopes)?;
        if let Some(d) = &s.description {
            validate::description(d)?;
        }
        let environment = match s.environment {
            Some(env) if !self.config.environments.contains(&env) => {
                return Err(Error::invalid(
                    "environment",
                    format!("{env:?} is not one of {:?}", self.config.environments),
                ));
            }
            Some(env) => env,
            None => self.config.environments[0].clone(),
        };
        let metadata = s.metadata.as_ref().map(metadata_text).transpose()?;
        Ok(NewKey {
            expires_at,
            scopes,
            description: s.description,
            environment,
            metadata,
        })
    }
}

/// Everything verify needs, in one row found through the unique index on `id`.
/// One key's row and, read in the same statement (the same snapshot), the
/// change version it belongs to (for the cache).
const VERIFY_SQL: &str = "SELECT org_id, hash, hash_kind, scopes, environment, expires_at,
        revoke_at, revoked_at, last_used_at, org_enabled, prefix, name, metadata,
        (SELECT version FROM keyhook_key_changes WHERE id = 1)
     FROM keyhook_api_keys WHERE id = ?1";

/// A page of one organization's keys (?1), at `now` (?2), strictly older
/// than the keyset position (?3, ?4), at most ?5 of them.
///
/// SQLite appends the row id to every index entry, so the index on
/// (org_id, created_at) is ordered by the keyset (created_at, row_id): a
/// page starts with a seek and nothing is sorted.
fn page_sql(state: Option<KeyState>) -> String {
    // Keys of one state, as key_from_row decides it.
    let state_filter = match state {
        None => "",
        Some(KeyState::Active) => {
            "AND revoked_at IS NULL AND (revoke_at IS NULL OR revoke_at > ?2)
             AND (expires_at IS NULL OR expires_at > ?2)"
        }
        Some(KeyState::Revoked) => "AND (revoked_at IS NOT NULL OR revoke_at <= ?2)",
        Some(KeyState::Expired) => {
            "AND revoked_at IS NULL AND (revoke_at IS NULL OR revoke_at > ?2)
             AND expires_at <= ?2"
        }
    };
    format!(
        "SELECT {KEY_COLUMNS}, row_id FROM keyhook_api_keys INDEXED BY keyhook_api_keys_by_org
         WHERE org_id = ?1 AND (created_at, row_id) < (?3, ?4) {state_filter}
         ORDER BY created_at DESC, row_id DESC LIMIT ?5"
    )
}

/// A new key's settings, checked, as stored.
struct NewKey {
    expires_at: Option<i64>,
    scopes: Vec<String>,
    description: Option<String>,
    environment: String,
    /// Compact JSON.
    metadata: Option<String>,
}

/// An expiry in milliseconds, if it is after `now`.
fn check_expiry(t: SystemTime, now: i64) -> Result<i64> {
    let ms = to_ms(t);
    if ms <= now {
        return Err(Error::invalid("expires_at", "must be in the future"));
    }
    Ok(ms)
}

/// Host metadata as stored: compact JSON of an object, at most
/// [`MAX_KEY_METADATA_BYTES`], that reads back (serde_json refuses to read
/// values nested deeper than 128, which a `Value` built in code can be).
fn metadata_text(metadata: &serde_json::Value) -> Result<String> {
    if !metadata.is_object() {
        return Err(Error::invalid("metadata", "must be a JSON object"));
    }
    let text = metadata.to_string();
    if text.len() > MAX_KEY_METADATA_BYTES {
        return Err(Error::invalid(
            "metadata",
            format!(
                "is {} bytes as JSON, over the limit of {MAX_KEY_METADATA_BYTES}",
                text.len()
            ),
        ));
    }
    if parse_metadata(&text).is_err() {
        return Err(Error::invalid(
            "metadata",
            "nests too deeply to be read back as JSON",
        ));
    }
    Ok(text)
}

fn parse_metadata(text: &str) -> serde_json::Result<serde_json::Value> {
    serde_json::from_str(text)
}

/// A list cursor's MAC is bound to this, the organization and the state
/// filter, so it is refused by any other query (and by delivery history,
/// which keys its cursors with the same secret).
const CURSOR_DOMAIN: &[u8] = b"keyhook api key list v1\0";
fn state_code(state: Option<KeyState>) -> u8 {
    match state {
        None => 0,
        Some(KeyState::Active) => 1,
        Some(KeyState::Expired) => 2,
        Some(KeyState::Revoked) => 3,
    }
}

/// What a list cursor's tag covers.
fn cursor_scope(org: &str, state: Option<KeyState>) -> Vec<u8> {
    let mut scope = CURSOR_DOMAIN.to_vec();
    scope.extend_from_slice(org.as_bytes());
    scope.extend_from_slice(&[0, state_code(state)]);
    scope
}

fn encode_cursor(key: &[u8], org: &str, state: Option<KeyState>, at: i64, row: i64) -> String {
    cursor::encode(key, &cursor_scope(org, state), [at, row])
}

/// The (created_at, row_id) position a cursor holds, if it is one this
/// organization's query with this state filter made.
fn decode_cursor(
    key: &[u8],
    org: &str,
    state: Option<KeyState>,
    cursor: &str,
) -> Result<(i64, i64)> {
    let [at, row] = cursor::decode(key, &cursor_scope(org, state), cursor)?;
    Ok((at, row))
}

struct VerifyRow {
    org: String,
    hash: Vec<u8>,
    hash_kind: i64,
    scopes: String,
    environment: String,
    expires_at: Option<i64>,
    revoke_at: Option<i64>,
    revoked_at: Option<i64>,
    last_used_at: Option<i64>,
    plan: bool,
    /// The prefix the key was made with (NULL only if a host wrote the row).
    prefix: Option<String>,
    name: String,
    metadata: Option<String>,
}

fn split_scopes(s: &str) -> Vec<String> {
    s.split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn get_key(c: Sql<'_>, org: &str, id: &str, now: i64) -> Result<ApiKey> {
    c.prepare_cached(&format!(
        "SELECT {KEY_COLUMNS} FROM keyhook_api_keys WHERE org_id = ?1 AND id = ?2"
    ))?
    .query_row([org, id], |r| key_from_row(r, now))
    .optional()?
    .ok_or_else(|| Error::not_found("api key", id))
}

fn require_not_revoked(c: Sql<'_>, org: &str, id: &str, now: i64) -> Result<ApiKey> {
    let key = get_key(c, org, id, now)?;
    if key.state == KeyState::Revoked {
        return Err(Error::InvalidState {
            kind: "api key",
            id: id.into(),
            state: "revoked",
        });
    }
    Ok(key)
}

/// The host's metadata as stored (column 12 of [`KEY_COLUMNS`] and of
/// [`VERIFY_SQL`]), parsed; text that is not a JSON object (written around
/// keyhook) is a database error.
fn stored_metadata(text: Option<&str>) -> Result<Option<serde_json::Value>> {
    text.map(parse_metadata).transpose().map_err(|e| {
        Error::Database(rusqlite::Error::FromSqlConversionFailure(
            12,
            Type::Text,
            Box::new(e),
        ))
    })
}

fn key_from_row(r: &Row<'_>, now: i64) -> Result<ApiKey> {
    let expires_at: Option<i64> = r.get(9)?;
    let revoke_at: Option<i64> = r.get(10)?;
    let revoked_at: Option<i64> = r.get(11)?;
    let state = if revoked_at.is_some() || revoke_at.is_some_and(|t| t <= now) {
        KeyState::Revoked
    } else if expires_at.is_some_and(|t| t <= now) {
        KeyState::Expired
    } else {
        KeyState::Active
    };
    let metadata = stored_metadata(r.get::<Option<String>>(12)?.as_deref())?;
    Ok(ApiKey {
        id: r.get(0)?,
        org: r.get(1)?,
        name: r.get(2)?,
        description: r.get(3)?,
        environment: r.get(4)?,
        hint: r.get(5)?,
        scopes: split_scopes(&r.get::<String>(6)?),
        metadata,
        created_at: from_ms(r.get(7)?),
        last_used_at: r.get::<Option<i64>>(8)?.map(from_ms),
        expires_at: expires_at.map(from_ms),
        revoked_at: revoked_at.or(revoke_at).map(from_ms),
        state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> ApiKeyStore {
        let db = Database::open_in_memory().unwrap();
        let store = ApiKeyStore::builder(&db).prefix("vr").build().unwrap();
        store.set_api_keys_enabled("org_1", true).unwrap();
        store
    }

    #[test]
    fn store_is_send_sync_clone() {
        fn check<T: Send + Sync + Clone>() {}
        check::<ApiKeyStore>();
    }

    #[test]
    fn only_a_hash_is_stored() {
        let s = store();
        let created = s.create("org_1", "ci", KeySettings::default()).unwrap();
        let plaintext = created.secret.expose().to_owned();
        let secret_part = &plaintext[plaintext.len() - 28..plaintext.len() - 6];
        let stored: Vec<u8> =
            s.db.read(|c| c.query_row("SELECT hash FROM keyhook_api_keys", (), |r| r.get(0)))
                .unwrap();
        assert_eq!(stored, Sha256::digest(secret_part.as_bytes()).to_vec());
        assert!(!format!("{created:?}").contains(secret_part));
    }

    #[test]
    fn pepper_changes_the_hash_and_is_needed_to_verify() {
        let db = Database::open_in_memory().unwrap();
        let peppered = ApiKeyStore::builder(&db)
            .pepper(b"0123456789abcdef0123".to_vec())
            .build()
            .unwrap();
        peppered.set_api_keys_enabled("o", true).unwrap();
        let k = peppered.create("o", "k", KeySettings::default()).unwrap();
        assert!(peppered.verify(k.secret.expose()).is_ok());
        let plain = ApiKeyStore::new(&db);
        assert_eq!(
            plain.verify(k.secret.expose()).unwrap_err().rejection(),
            Some(Rejection::Unknown)
        );
        let other = ApiKeyStore::builder(&db)
            .pepper(b"another pepper of 16+ bytes".to_vec())
            .build()
            .unwrap();
        assert_eq!(
            other.verify(k.secret.expose()).unwrap_err().rejection(),
            Some(Rejection::Unknown)
        );
        assert!(!format!("{peppered:?}").contains("0123456789"));
    }

    #[test]
    fn wrong_secret_with_right_id_is_unknown() {
        let s = store();
        let k = s.create("org_1", "ci", KeySettings::default()).unwrap();
        let p = format::parse(k.secret.expose()).unwrap();
        let mut other = p.secret.to_owned().into_bytes();
        other[0] = if other[0] == b'a' { b'b' } else { b'a' };
        let forged = format::assemble("vr", "live", p.id, std::str::from_utf8(&other).unwrap());
        assert_eq!(
            s.verify(&forged).unwrap_err().rejection(),
            Some(Rejection::Unknown)
        );
    }

    /// SQLite's plan for `sql`, one line per step.
    fn plan(s: &ApiKeyStore, sql: &str) -> String {
        s.db.read(|c| {
            let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
            let n = stmt.parameter_count()?;
            let zeros: Vec<&dyn crate::sql::Arg> = vec![&0i64; n];
            let rows = stmt.query_map(zeros.as_slice(), |r| r.get::<String>(3))?;
            Ok(rows.collect::<Result<Vec<_>>>()?.join("\n"))
        })
        .unwrap()
    }

    #[test]
    fn verify_reads_one_row_through_an_index() {
        // One key by its index, and the one-row change version by its key.
        let plan = plan(&store(), VERIFY_SQL);
        let lines: Vec<&str> = plan.lines().collect();
        assert_eq!(lines.len(), 3, "{plan}");
        assert!(
            lines[0].starts_with("SEARCH keyhook_api_keys USING INDEX")
                && lines[0].ends_with("(id=?)"),
            "{plan}"
        );
        assert_eq!(lines[1], "SCALAR SUBQUERY 1", "{plan}");
        assert!(
            lines[2].starts_with("SEARCH keyhook_key_changes USING INTEGER PRIMARY KEY"),
            "{plan}"
        );
    }

    #[test]
    fn pages_seek_and_never_sort() {
        let s = store();
        for state in [
            None,
            Some(KeyState::Active),
            Some(KeyState::Revoked),
            Some(KeyState::Expired),
        ] {
            let plan = plan(&s, &page_sql(state));
            assert!(
                plan.starts_with("SEARCH keyhook_api_keys USING INDEX keyhook_api_keys_by_org (org_id=? AND created_at<?)"),
                "{state:?}: {plan}"
            );
            assert!(!plan.contains("TEMP B-TREE"), "{state:?}: {plan}");
        }
    }

    #[test]
    fn metadata_text_checks_shape_size_and_depth() {
        use serde_json::json;
        assert_eq!(
            metadata_text(&json!({"b": 1, "a": [true]})).unwrap(),
            r#"{"a":[true],"b":1}"#
        );
        for bad in [json!(null), json!([]), json!("s"), json!(1.5)] {
            assert!(matches!(
                metadata_text(&bad),
                Err(Error::InvalidInput {
                    field: "metadata",
                    ..
                })
            ));
        }
        let big = json!({ "k": "x".repeat(MAX_KEY_METADATA_BYTES) });
        assert!(metadata_text(&big).is_err());
        let mut deep = json!({});
        for _ in 0..130 {
            deep = json!({ "d": deep });
        }
        assert!(metadata_text(&deep).is_err(), "would not read back");
    }

    #[test]
    fn cursor_roundtrip_and_tamper() {
        let key = [7u8; 32];
        let c = encode_cursor(&key, "org", None, 1_700_000_000_000, 42);
        assert_eq!(
            decode_cursor(&key, "org", None, &c).unwrap(),
            (1_700_000_000_000, 42)
        );
        assert!(decode_cursor(&key, "org2", None, &c).is_err());
        assert!(decode_cursor(&key, "org", Some(KeyState::Revoked), &c).is_err());
        assert!(decode_cursor(&[8u8; 32], "org", None, &c).is_err());
        for junk in ["", "!!!!", &"A".repeat(65)] {
            assert!(decode_cursor(&key, "org", None, junk).is_err());
        }
    }

    #[test]
    fn builder_rejects_bad_settings() {
        let db = Database::open_in_memory().unwrap();
        for prefix in ["", "_vr", "vr_", "v-r", &"a".repeat(33)] {
            let err = ApiKeyStore::builder(&db)
                .prefix(prefix)
                .build()
                .unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::InvalidInput {
                        field: "prefix",
                        ..
                    }
                ),
                "{prefix}"
            );
        }
        let err = ApiKeyStore::builder(&db)
            .environments(["Live"])
            .build()
            .unwrap_err();
        assert!(matches!(
            err,
            Error::InvalidInput {
                field: "environments",
                ..
            }
        ));
        let err = ApiKeyStore::builder(&db)
            .pepper(b"short".to_vec())
            .build()
            .unwrap_err();
        assert!(matches!(
            err,
            Error::InvalidInput {
                field: "pepper",
                ..
            }
        ));
    }
}
