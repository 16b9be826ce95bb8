//! API keys: create, list, rename and edit, revoke, roll, and verify.

mod format;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hmac::{Hmac, Mac};
use rusqlite::{OptionalExtension, Row, params};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::db::{Database, duration_ms, from_ms, now_ms, to_ms};
use crate::error::{Error, Rejection, Result};
use crate::validate;

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
    /// created; `None` means the store's default. [`ApiKeyStore::update`] refuses to change it.
    pub environment: Option<String>,
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
    /// The key's scopes.
    pub scopes: Vec<String>,
    /// The key's environment.
    pub environment: String,
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
}

impl std::fmt::Debug for ApiKeyStoreBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyStoreBuilder")
            .field("prefix", &self.prefix)
            .field("environments", &self.environments)
            .field("pepper", &self.pepper.as_ref().map(|_| "<redacted>"))
            .field("max_live_keys", &self.max_live_keys)
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

    /// Checks the settings and builds the store.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] naming the setting (`prefix`, `environments`,
    /// `pepper`) that is out of its documented range.
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
        Ok(ApiKeyStore {
            db: self.db,
            config: Arc::new(Config {
                prefix: self.prefix,
                environments: self.environments,
                pepper,
                max_live_keys: self.max_live_keys,
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
}

impl std::fmt::Debug for ApiKeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyStore")
            .field("prefix", &self.config.prefix)
            .field("environments", &self.config.environments)
            .field("pepper", &self.config.pepper.as_ref().map(|_| "<redacted>"))
            .field("max_live_keys", &self.config.max_live_keys)
            .finish_non_exhaustive()
    }
}

const KEY_COLUMNS: &str = "id, org_id, name, description, environment, hint, scopes, \
     created_at, last_used_at, expires_at, revoke_at, revoked_at";

impl ApiKeyStore {
    /// A store with default settings (prefix `kh`, environments `live` and `test`, no pepper, 50 keys).
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
    /// scope, description, unknown environment or an expiry not in the future.
    pub fn create(&self, org: &str, name: &str, settings: KeySettings) -> Result<CreatedKey> {
        validate::org(org)?;
        let name = validate::name(name)?;
        let now = now_ms();
        let settings = self.check_settings(settings, now)?;
        let env = settings
            .environment
            .clone()
            .unwrap_or_else(|| self.config.environments[0].clone());
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
            self.insert_key(tx, org, &name, &env, &settings, now)
        })
    }

    /// Fails with [`Error::LimitReached`] if the organization is at its live-key limit.
    fn require_room(&self, tx: &rusqlite::Transaction<'_>, org: &str, now: i64) -> Result<()> {
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
        tx: &rusqlite::Transaction<'_>,
        org: &str,
        name: &str,
        env: &str,
        settings: &KeySettings,
        now: i64,
    ) -> Result<CreatedKey> {
        let (plaintext, id, secret) = format::generate(&self.config.prefix, env)?;
        let (hash, kind) = self.hash(secret.as_bytes());
        let hint = format::hint(&self.config.prefix, env, &id);
        tx.execute(
            "INSERT INTO keyhook_api_keys (id, org_id, name, description, environment, hint, hash,
                 hash_kind, scopes, created_at, updated_at, expires_at, org_enabled)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10, ?11, 1)",
            params![
                id,
                org,
                name,
                settings.description,
                env,
                hint,
                hash.as_slice(),
                kind,
                settings.scopes.join(" "),
                now,
                settings.expires_at.map(to_ms),
            ],
        )?;
        let key = get_key(tx, org, &id, now)?;
        Ok(CreatedKey {
            key,
            secret: KeySecret(plaintext),
        })
    }

    /// The organization's keys, newest first. Metadata only.
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
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
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

    /// Renames a key.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a bad name, [`Error::NotFound`],
    /// [`Error::InvalidState`] if the key is revoked.
    pub fn rename(&self, org: &str, id: &str, name: &str) -> Result<ApiKey> {
        let name = validate::name(name)?;
        let now = now_ms();
        self.db.write(|tx| {
            require_not_revoked(tx, org, id, now)?;
            tx.execute(
                "UPDATE keyhook_api_keys SET name = ?3, updated_at = ?4 WHERE org_id = ?1 AND id = ?2",
                params![org, id, name, now],
            )?;
            get_key(tx, org, id, now)
        })
    }

    /// Replaces a key's settings (expiry, scopes, description). The environment cannot change.
    ///
    /// # Errors
    ///
    /// As [`create`](Self::create) for the settings; [`Error::NotFound`];
    /// [`Error::InvalidState`] if the key is revoked; [`Error::InvalidInput`]
    /// (`environment`) if `settings.environment` names another environment.
    pub fn update(&self, org: &str, id: &str, settings: KeySettings) -> Result<ApiKey> {
        let now = now_ms();
        let settings = self.check_settings(settings, now)?;
        self.db.write(|tx| {
            let current = require_not_revoked(tx, org, id, now)?;
            if let Some(env) = &settings.environment
                && *env != current.environment
            {
                return Err(Error::invalid(
                    "environment",
                    "a key's environment is fixed when it is created",
                ));
            }
            // A new expiry can bring an expired key back: it counts again.
            if current.state == KeyState::Expired {
                self.require_room(tx, org, now)?;
            }
            tx.execute(
                "UPDATE keyhook_api_keys SET expires_at = ?3, scopes = ?4, description = ?5, updated_at = ?6
                 WHERE org_id = ?1 AND id = ?2",
                params![
                    org,
                    id,
                    settings.expires_at.map(to_ms),
                    settings.scopes.join(" "),
                    settings.description,
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

    /// Replaces a key with a new one of the same name and settings. The old
    /// key keeps working for `grace` (never past its own expiry), then is
    /// revoked; a zero `grace` revokes it now. Works at the live-key limit,
    /// since the old key is on its way out.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`]; [`Error::InvalidState`] if the key is revoked or
    /// expired (create a new key instead).
    pub fn roll(&self, org: &str, id: &str, grace: Duration) -> Result<CreatedKey> {
        let now = now_ms();
        self.db.write(|tx| {
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
            let mut revoke_at = now.saturating_add(duration_ms(grace));
            if let Some(exp) = old.expires_at.map(to_ms) {
                revoke_at = revoke_at.min(exp);
            }
            if grace.is_zero() {
                tx.execute(
                    "UPDATE keyhook_api_keys SET revoked_at = ?3, updated_at = ?3 WHERE org_id = ?1 AND id = ?2",
                    params![org, id, now],
                )?;
            } else {
                tx.execute(
                    "UPDATE keyhook_api_keys SET revoke_at = MIN(COALESCE(revoke_at, ?3), ?3), updated_at = ?4
                     WHERE org_id = ?1 AND id = ?2",
                    params![org, id, revoke_at, now],
                )?;
            }
            let settings = KeySettings {
                expires_at: old.expires_at,
                scopes: old.scopes.clone(),
                description: old.description.clone(),
                environment: Some(old.environment.clone()),
            };
            self.insert_key(tx, org, &old.name, &old.environment, &settings, now)
        })
    }

    /// Checks a key presented by a caller. Malformed strings of any length are
    /// rejected without touching the database; revocation is seen at once
    /// (there is no cache).
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
        let conn = self.db.conn()?;
        let row = conn
            .prepare_cached(
                "SELECT org_id, hash, hash_kind, scopes, environment, expires_at, revoke_at,
                        revoked_at, last_used_at, org_enabled
                 FROM keyhook_api_keys WHERE id = ?1",
            )?
            .query_row([parsed.id], |r| {
                Ok(VerifyRow {
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
                })
            })
            .optional()?
            .ok_or(Error::Rejected(Rejection::Unknown))?;
        let matches = match row.hash_kind {
            HASH_SHA256 => bool::from(Sha256::digest(parsed.secret).as_slice().ct_eq(&row.hash)),
            HASH_HMAC_PEPPER => match &self.config.pepper {
                Some(mac) => {
                    let mut mac = mac.clone();
                    mac.update(parsed.secret.as_bytes());
                    mac.verify_slice(&row.hash).is_ok()
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
        // The environment is part of the key string but checked against the
        // stored row too, so a key cannot be replayed under another environment.
        if !matches || row.environment != parsed.environment {
            return Err(Error::Rejected(Rejection::Unknown));
        }
        if row.revoked_at.is_some() || row.revoke_at.is_some_and(|t| t <= now) {
            return Err(Error::Rejected(Rejection::Revoked));
        }
        if row.expires_at.is_some_and(|t| t <= now) {
            return Err(Error::Rejected(Rejection::Expired));
        }
        if !row.plan {
            return Err(Error::Rejected(Rejection::PlanInactive));
        }
        if row
            .last_used_at
            .is_none_or(|t| now - t >= LAST_USED_GRANULARITY_MS)
        {
            // A failure to record usage must not fail an otherwise valid request.
            if let Err(e) = conn
                .prepare_cached(
                    "UPDATE keyhook_api_keys SET last_used_at = ?2
                     WHERE id = ?1 AND (last_used_at IS NULL OR last_used_at <= ?3)",
                )
                .and_then(|mut s| {
                    s.execute(params![parsed.id, now, now - LAST_USED_GRANULARITY_MS])
                })
            {
                log::warn!("could not record last use of api key {}: {e}", parsed.id);
            }
        }
        Ok(VerifiedKey {
            id: parsed.id.to_owned(),
            org: row.org,
            scopes: split_scopes(&row.scopes),
            environment: row.environment,
        })
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

    fn check_settings(&self, mut s: KeySettings, now: i64) -> Result<KeySettings> {
        if let Some(exp) = s.expires_at
            && to_ms(exp) <= now
        {
            return Err(Error::invalid("expires_at", "must be in the future"));
        }
        s.scopes = validate::scopes(s.scopes)?;
        if let Some(d) = &s.description {
            validate::description(d)?;
        }
        if let Some(env) = &s.environment
            && !self.config.environments.contains(env)
        {
            return Err(Error::invalid(
                "environment",
                format!("{env:?} is not one of {:?}", self.config.environments),
            ));
        }
        Ok(s)
    }
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
}

fn split_scopes(s: &str) -> Vec<String> {
    s.split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn get_key(c: &rusqlite::Connection, org: &str, id: &str, now: i64) -> Result<ApiKey> {
    c.prepare_cached(&format!(
        "SELECT {KEY_COLUMNS} FROM keyhook_api_keys WHERE org_id = ?1 AND id = ?2"
    ))?
    .query_row([org, id], |r| key_from_row(r, now))
    .optional()?
    .ok_or_else(|| Error::not_found("api key", id))
}

fn require_not_revoked(c: &rusqlite::Connection, org: &str, id: &str, now: i64) -> Result<ApiKey> {
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

fn key_from_row(r: &Row<'_>, now: i64) -> rusqlite::Result<ApiKey> {
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
    Ok(ApiKey {
        id: r.get(0)?,
        org: r.get(1)?,
        name: r.get(2)?,
        description: r.get(3)?,
        environment: r.get(4)?,
        hint: r.get(5)?,
        scopes: split_scopes(&r.get::<_, String>(6)?),
        created_at: from_ms(r.get(7)?),
        last_used_at: r.get::<_, Option<i64>>(8)?.map(from_ms),
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
            s.db.read(|c| Ok(c.query_row("SELECT hash FROM keyhook_api_keys", [], |r| r.get(0))?))
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
