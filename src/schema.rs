//! Schema migrations, applied in order and tracked by `PRAGMA user_version`.
//!
//! Append only: a released migration is never edited, a change is a new entry.
//! Timestamps are integer milliseconds since the Unix epoch.

pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: organizations and API keys.
    r#"
    CREATE TABLE organizations (
        id               TEXT PRIMARY KEY,
        api_keys_enabled INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;

    CREATE TABLE api_keys (
        row_id       INTEGER PRIMARY KEY,
        id           TEXT NOT NULL UNIQUE,
        org_id       TEXT NOT NULL,
        name         TEXT NOT NULL,
        description  TEXT,
        environment  TEXT NOT NULL,
        hint         TEXT NOT NULL,
        hash         BLOB NOT NULL,
        hash_kind    INTEGER NOT NULL,
        scopes       TEXT NOT NULL,
        created_at   INTEGER NOT NULL,
        updated_at   INTEGER NOT NULL,
        expires_at   INTEGER,
        last_used_at INTEGER,
        revoke_at    INTEGER,
        revoked_at   INTEGER
    );
    CREATE INDEX api_keys_by_org ON api_keys (org_id, created_at);

    -- Revocation is permanent, whatever code runs against this file.
    CREATE TRIGGER api_keys_revocation_is_permanent
    BEFORE UPDATE OF revoked_at ON api_keys
    WHEN OLD.revoked_at IS NOT NULL
     AND (NEW.revoked_at IS NULL OR NEW.revoked_at <> OLD.revoked_at)
    BEGIN
        SELECT RAISE(ABORT, 'keyhook: a revoked API key cannot be re-enabled');
    END;

    -- A scheduled revocation (end of a roll's grace period) may come sooner, never later.
    CREATE TRIGGER api_keys_scheduled_revocation_is_permanent
    BEFORE UPDATE OF revoke_at ON api_keys
    WHEN OLD.revoke_at IS NOT NULL
     AND (NEW.revoke_at IS NULL OR NEW.revoke_at > OLD.revoke_at)
    BEGIN
        SELECT RAISE(ABORT, 'keyhook: a scheduled revocation cannot be cleared or postponed');
    END;
    "#,
];
