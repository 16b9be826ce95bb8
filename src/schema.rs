//! keyhook's schema, tracked in its own table, `keyhook_migrations`.
//!
//! The file may be the host's own: every keyhook table, index and trigger
//! carries the `keyhook_` prefix, and keyhook never writes
//! `PRAGMA user_version` (it belongs to the host's migration tool). It reads
//! it once, to recognise a file written by keyhook 0.1, which kept its
//! schema version there and used unprefixed names ([`LEGACY`]); such a file
//! is upgraded in place ([`FROM_LEGACY`]).
//!
//! Append only: a released migration is never edited, a change is a new entry.
//! Timestamps are integer milliseconds since the Unix epoch.

/// The migrations, each a list of SQL batches run in order; version `n` is
/// `MIGRATIONS[n - 1]`.
pub(crate) const MIGRATIONS: &[&[&str]] = &[
    // 1: API keys, webhooks, delivery (the whole of keyhook 0.1).
    &[TABLES_V1, INDEXES_V1],
    // 2: event log, test events, event-type lifecycle, key prefixes and
    // metadata, random delivery ids.
    &[V2],
    // 3: a change counter for API keys (verify's cache), Ed25519 secrets.
    &[V3],
];

/// Version 1's tables.
const TABLES_V1: &str = r#"
    CREATE TABLE keyhook_organizations (
        id               TEXT PRIMARY KEY,
        api_keys_enabled INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;

    CREATE TABLE keyhook_api_keys (
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
        revoked_at   INTEGER,
        -- A copy of keyhook_organizations.api_keys_enabled, kept in step by
        -- set_api_keys_enabled, so verify reads one row.
        org_enabled  INTEGER NOT NULL DEFAULT 0
    );

    CREATE TABLE keyhook_event_types (
        name        TEXT PRIMARY KEY,
        description TEXT NOT NULL,
        created_at  INTEGER NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE keyhook_endpoints (
        row_id               INTEGER PRIMARY KEY,
        id                   TEXT NOT NULL UNIQUE,
        org_id               TEXT NOT NULL,
        url                  TEXT NOT NULL,
        description          TEXT,
        all_event_types      INTEGER NOT NULL,
        headers              TEXT NOT NULL,
        enabled              INTEGER NOT NULL DEFAULT 1,
        disabled_reason      TEXT,
        created_at           INTEGER NOT NULL,
        updated_at           INTEGER NOT NULL,
        consecutive_failures INTEGER NOT NULL DEFAULT 0,
        failing_since        INTEGER,
        last_success_at      INTEGER,
        disabled_at          INTEGER
    );

    CREATE TABLE keyhook_endpoint_event_types (
        endpoint_row INTEGER NOT NULL REFERENCES keyhook_endpoints (row_id) ON DELETE CASCADE,
        event_type   TEXT NOT NULL,
        PRIMARY KEY (endpoint_row, event_type)
    ) WITHOUT ROWID;

    -- Signing secrets: the current one has no expiry; rotated-out ones sign
    -- until expires_at. Stored as raw key bytes: signing needs them.
    CREATE TABLE keyhook_endpoint_secrets (
        row_id       INTEGER PRIMARY KEY,
        endpoint_row INTEGER NOT NULL REFERENCES keyhook_endpoints (row_id) ON DELETE CASCADE,
        secret       BLOB NOT NULL,
        created_at   INTEGER NOT NULL,
        expires_at   INTEGER
    );

    CREATE TABLE keyhook_events (
        row_id          INTEGER PRIMARY KEY,
        id              TEXT NOT NULL UNIQUE,
        org_id          TEXT NOT NULL,
        event_type      TEXT NOT NULL,
        body            BLOB NOT NULL,
        idempotency_key TEXT,
        created_at      INTEGER NOT NULL
    );

    -- state: 0 pending, 1 delivered, 2 failed.
    -- next_attempt_at is both the due time and, while leased, the lease
    -- expiry: a worker that dies leaves a delivery that is simply due again.
    -- leased: 1 for a claim of a healthy endpoint, 2 for a claim of one not
    -- known to be healthy (only those count as attempts in flight).
    -- attempts doubles as a fencing token: completing an attempt checks it.
    CREATE TABLE keyhook_deliveries (
        row_id          INTEGER PRIMARY KEY,
        event_row       INTEGER NOT NULL REFERENCES keyhook_events (row_id) ON DELETE CASCADE,
        endpoint_row    INTEGER NOT NULL REFERENCES keyhook_endpoints (row_id) ON DELETE CASCADE,
        org_id          TEXT NOT NULL,
        state           INTEGER NOT NULL DEFAULT 0,
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_at INTEGER,
        leased          INTEGER NOT NULL DEFAULT 0,
        created_at      INTEGER NOT NULL,
        updated_at      INTEGER NOT NULL
    );

    CREATE TABLE keyhook_attempts (
        row_id        INTEGER PRIMARY KEY,
        delivery_row  INTEGER NOT NULL REFERENCES keyhook_deliveries (row_id) ON DELETE CASCADE,
        attempted_at  INTEGER NOT NULL,
        duration_ms   INTEGER NOT NULL,
        status_code   INTEGER,
        error_kind    TEXT,
        response_body BLOB,
        manual        INTEGER NOT NULL DEFAULT 0
    );

    -- Per-database secrets, e.g. the key that makes history cursors tamper-evident.
    CREATE TABLE keyhook_meta (
        key   TEXT PRIMARY KEY,
        value BLOB NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO keyhook_meta (key, value) VALUES ('cursor_key', randomblob(32));
"#;

/// Version 1's indexes and triggers (shared by a new file and one
/// upgraded from keyhook 0.1).
const INDEXES_V1: &str = r#"
    CREATE INDEX keyhook_api_keys_by_org ON keyhook_api_keys (org_id, created_at);
    -- Covers the live-key count of create.
    CREATE INDEX keyhook_api_keys_live_by_org
        ON keyhook_api_keys (org_id, revoked_at, revoke_at, expires_at);

    -- Revocation is permanent, whatever code runs against this file.
    CREATE TRIGGER keyhook_api_keys_revocation_is_permanent
    BEFORE UPDATE OF revoked_at ON keyhook_api_keys
    WHEN OLD.revoked_at IS NOT NULL
     AND (NEW.revoked_at IS NULL OR NEW.revoked_at <> OLD.revoked_at)
    BEGIN
        SELECT RAISE(ABORT, 'keyhook: a revoked API key cannot be re-enabled');
    END;

    -- A scheduled revocation (end of a roll's grace period) may come sooner, never later.
    CREATE TRIGGER keyhook_api_keys_scheduled_revocation_is_permanent
    BEFORE UPDATE OF revoke_at ON keyhook_api_keys
    WHEN OLD.revoke_at IS NOT NULL
     AND (NEW.revoke_at IS NULL OR NEW.revoke_at > OLD.revoke_at)
    BEGIN
        SELECT RAISE(ABORT, 'keyhook: a scheduled revocation cannot be cleared or postponed');
    END;

    CREATE INDEX keyhook_endpoints_by_org ON keyhook_endpoints (org_id, created_at);
    CREATE INDEX keyhook_endpoint_event_types_by_type
        ON keyhook_endpoint_event_types (event_type);
    CREATE INDEX keyhook_endpoint_secrets_by_endpoint ON keyhook_endpoint_secrets (endpoint_row);
    -- Endpoints whose attempts are limited: failing, or not yet proven.
    CREATE INDEX keyhook_endpoints_limited ON keyhook_endpoints (row_id)
        WHERE enabled = 1 AND (consecutive_failures > 0 OR last_success_at IS NULL);

    CREATE UNIQUE INDEX keyhook_events_by_idempotency_key
        ON keyhook_events (org_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
    CREATE INDEX keyhook_events_by_created ON keyhook_events (created_at);

    CREATE INDEX keyhook_deliveries_due ON keyhook_deliveries (next_attempt_at) WHERE state = 0;
    CREATE INDEX keyhook_deliveries_in_flight ON keyhook_deliveries (endpoint_row, next_attempt_at)
        WHERE state = 0 AND leased = 2;
    CREATE INDEX keyhook_deliveries_due_by_endpoint
        ON keyhook_deliveries (endpoint_row, next_attempt_at) WHERE state = 0;
    -- History pages: newest first per endpoint, optionally by state. SQLite
    -- appends the row id to every index entry, so both are ordered by
    -- (created_at, row_id): the keyset of the history cursor.
    CREATE INDEX keyhook_deliveries_by_endpoint ON keyhook_deliveries (endpoint_row, created_at);
    CREATE INDEX keyhook_deliveries_by_endpoint_state
        ON keyhook_deliveries (endpoint_row, state, created_at);
    CREATE INDEX keyhook_deliveries_by_event ON keyhook_deliveries (event_row);

    CREATE INDEX keyhook_attempts_by_delivery ON keyhook_attempts (delivery_row);
"#;

/// Version 2.
const V2: &str = r#"
    -- Event log: an organization's events, newest first, by type; test events.
    ALTER TABLE keyhook_events ADD COLUMN test INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX keyhook_events_by_org ON keyhook_events (org_id, created_at);
    CREATE INDEX keyhook_events_by_org_type ON keyhook_events (org_id, event_type, created_at);

    -- Deliveries: public ids that say nothing of volume (0.1's sequential
    -- ones are kept). Type filters and the organization-wide log read
    -- events first (by organization, by type), then their deliveries, so
    -- deliveries need no more indexes: each costs every delivery write.
    ALTER TABLE keyhook_deliveries ADD COLUMN id TEXT;
    UPDATE keyhook_deliveries SET id = 'dlv_' || row_id;
    CREATE UNIQUE INDEX keyhook_deliveries_by_id ON keyhook_deliveries (id);

    -- Limited endpoints take turns: the one claimed longest ago goes first.
    ALTER TABLE keyhook_endpoints ADD COLUMN limited_claimed_at INTEGER;
    -- Claims find limited endpoints through their pending deliveries now;
    -- this index was only kept up to date.
    DROP INDEX keyhook_endpoints_limited;

    -- A disabled endpoint's pending deliveries are parked (next_attempt_at
    -- NULL): never due, and out of the index the claims walk.
    UPDATE keyhook_deliveries SET next_attempt_at = NULL, leased = 0
        WHERE state = 0
          AND endpoint_row IN (SELECT row_id FROM keyhook_endpoints WHERE enabled = 0);
    DROP INDEX keyhook_deliveries_due_by_endpoint;
    CREATE INDEX keyhook_deliveries_due_by_endpoint
        ON keyhook_deliveries (endpoint_row, next_attempt_at)
        WHERE state = 0 AND next_attempt_at IS NOT NULL;

    -- The event-type catalogue: an example payload, deprecation, archiving.
    ALTER TABLE keyhook_event_types ADD COLUMN example TEXT;
    ALTER TABLE keyhook_event_types ADD COLUMN deprecated_at INTEGER;
    ALTER TABLE keyhook_event_types ADD COLUMN archived_at INTEGER;

    -- API keys: the prefix a key was made with (checked on verify), and
    -- the host's own metadata (a JSON object).
    ALTER TABLE keyhook_api_keys ADD COLUMN prefix TEXT;
    -- The hint is prefix, '_', environment, '_', six characters and '…';
    -- the prefix may itself hold underscores.
    UPDATE keyhook_api_keys SET prefix = substr(hint, 1, length(hint) - length(environment) - 9);
    ALTER TABLE keyhook_api_keys ADD COLUMN metadata TEXT;
"#;

/// Version 3.
const V3: &str = r#"
    -- Bumped by every change to what verify answers (not by last use):
    -- verify's cache of recently seen keys checks it, so a revocation in
    -- any process is seen by the very next verify.
    CREATE TABLE keyhook_key_changes (
        id      INTEGER PRIMARY KEY CHECK (id = 1),
        version INTEGER NOT NULL
    );
    INSERT INTO keyhook_key_changes (id, version) VALUES (1, 0);
    CREATE TRIGGER keyhook_api_keys_changed
    AFTER UPDATE OF org_id, name, environment, hash, hash_kind, scopes, expires_at,
        revoke_at, revoked_at, org_enabled, prefix, metadata ON keyhook_api_keys
    BEGIN
        UPDATE keyhook_key_changes SET version = version + 1 WHERE id = 1;
    END;
    CREATE TRIGGER keyhook_api_keys_deleted AFTER DELETE ON keyhook_api_keys
    BEGIN
        UPDATE keyhook_key_changes SET version = version + 1 WHERE id = 1;
    END;

    -- Signing keys: 0 an HMAC secret (v1), 1 an Ed25519 secret key (v1a).
    ALTER TABLE keyhook_endpoint_secrets ADD COLUMN kind INTEGER NOT NULL DEFAULT 0;
"#;

/// keyhook 0.1's migrations: unprefixed names, versioned by
/// `PRAGMA user_version`. Run only to bring a 0.1 file to its last version
/// before [`FROM_LEGACY`]; never on a new file.
pub(crate) const LEGACY: &[&str] = &[
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
        revoked_at   INTEGER,
        -- A copy of organizations.api_keys_enabled, kept in step by
        -- set_api_keys_enabled, so verify reads one row.
        org_enabled  INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX api_keys_by_org ON api_keys (org_id, created_at);
    -- Covers the live-key count of create.
    CREATE INDEX api_keys_live_by_org ON api_keys (org_id, revoked_at, revoke_at, expires_at);

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
    // 2: the event-type catalogue and webhook endpoints.
    r#"
    CREATE TABLE event_types (
        name        TEXT PRIMARY KEY,
        description TEXT NOT NULL,
        created_at  INTEGER NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE endpoints (
        row_id          INTEGER PRIMARY KEY,
        id              TEXT NOT NULL UNIQUE,
        org_id          TEXT NOT NULL,
        url             TEXT NOT NULL,
        description     TEXT,
        all_event_types INTEGER NOT NULL,
        headers         TEXT NOT NULL,
        enabled         INTEGER NOT NULL DEFAULT 1,
        disabled_reason TEXT,
        created_at      INTEGER NOT NULL,
        updated_at      INTEGER NOT NULL
    );
    CREATE INDEX endpoints_by_org ON endpoints (org_id, created_at);

    CREATE TABLE endpoint_event_types (
        endpoint_row INTEGER NOT NULL REFERENCES endpoints (row_id) ON DELETE CASCADE,
        event_type   TEXT NOT NULL,
        PRIMARY KEY (endpoint_row, event_type)
    ) WITHOUT ROWID;
    CREATE INDEX endpoint_event_types_by_type ON endpoint_event_types (event_type);

    -- Signing secrets: the current one has no expiry; rotated-out ones sign
    -- until expires_at. Stored as raw key bytes: signing needs them.
    CREATE TABLE endpoint_secrets (
        row_id       INTEGER PRIMARY KEY,
        endpoint_row INTEGER NOT NULL REFERENCES endpoints (row_id) ON DELETE CASCADE,
        secret       BLOB NOT NULL,
        created_at   INTEGER NOT NULL,
        expires_at   INTEGER
    );
    CREATE INDEX endpoint_secrets_by_endpoint ON endpoint_secrets (endpoint_row);
    "#,
    // 3: events, deliveries and attempts; endpoint health for the dispatcher.
    r#"
    CREATE TABLE events (
        row_id          INTEGER PRIMARY KEY,
        id              TEXT NOT NULL UNIQUE,
        org_id          TEXT NOT NULL,
        event_type      TEXT NOT NULL,
        body            BLOB NOT NULL,
        idempotency_key TEXT,
        created_at      INTEGER NOT NULL
    );
    CREATE UNIQUE INDEX events_by_idempotency_key ON events (org_id, idempotency_key)
        WHERE idempotency_key IS NOT NULL;
    CREATE INDEX events_by_created ON events (created_at);

    -- state: 0 pending, 1 delivered, 2 failed.
    -- next_attempt_at is both the due time and, while leased = 1, the lease
    -- expiry: a worker that dies leaves a delivery that is simply due again.
    -- attempts doubles as a fencing token: completing an attempt checks it.
    CREATE TABLE deliveries (
        row_id          INTEGER PRIMARY KEY,
        event_row       INTEGER NOT NULL REFERENCES events (row_id) ON DELETE CASCADE,
        endpoint_row    INTEGER NOT NULL REFERENCES endpoints (row_id) ON DELETE CASCADE,
        org_id          TEXT NOT NULL,
        state           INTEGER NOT NULL DEFAULT 0,
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_at INTEGER,
        leased          INTEGER NOT NULL DEFAULT 0,
        created_at      INTEGER NOT NULL,
        updated_at      INTEGER NOT NULL
    );
    CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE state = 0;
    CREATE INDEX deliveries_in_flight ON deliveries (endpoint_row, next_attempt_at)
        WHERE state = 0 AND leased = 1;
    CREATE INDEX deliveries_due_by_endpoint ON deliveries (endpoint_row, next_attempt_at)
        WHERE state = 0;
    -- History pages: newest first per endpoint, optionally by state. SQLite
    -- appends the row id to every index entry, so both are ordered by
    -- (created_at, row_id): the keyset of the history cursor.
    CREATE INDEX deliveries_by_endpoint ON deliveries (endpoint_row, created_at);
    CREATE INDEX deliveries_by_endpoint_state ON deliveries (endpoint_row, state, created_at);
    CREATE INDEX deliveries_by_event ON deliveries (event_row);

    CREATE TABLE attempts (
        row_id        INTEGER PRIMARY KEY,
        delivery_row  INTEGER NOT NULL REFERENCES deliveries (row_id) ON DELETE CASCADE,
        attempted_at  INTEGER NOT NULL,
        duration_ms   INTEGER NOT NULL,
        status_code   INTEGER,
        error_kind    TEXT,
        response_body BLOB,
        manual        INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX attempts_by_delivery ON attempts (delivery_row);

    ALTER TABLE endpoints ADD COLUMN consecutive_failures INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE endpoints ADD COLUMN failing_since INTEGER;
    ALTER TABLE endpoints ADD COLUMN last_success_at INTEGER;
    ALTER TABLE endpoints ADD COLUMN disabled_at INTEGER;
    -- Endpoints whose attempts are limited: failing, or not yet proven.
    CREATE INDEX endpoints_limited ON endpoints (row_id)
        WHERE enabled = 1 AND (consecutive_failures > 0 OR last_success_at IS NULL);

    -- Per-database secrets, e.g. the key that makes history cursors tamper-evident.
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value BLOB NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO meta (key, value) VALUES ('cursor_key', randomblob(32));
    "#,
    // 4: leased = 2 marks claims of endpoints not known to be healthy: only
    // those count as attempts in flight (a dead process's unsent claims to
    // a healthy endpoint hold nothing back).
    r#"
    DROP INDEX deliveries_in_flight;
    CREATE INDEX deliveries_in_flight ON deliveries (endpoint_row, next_attempt_at)
        WHERE state = 0 AND leased = 2;
    "#,
];

/// Turns a keyhook 0.1 file at its last version into version 1: tables
/// renamed (SQLite rewrites the foreign keys that name them), old indexes
/// and triggers replaced by prefixed ones.
pub(crate) const FROM_LEGACY: &[&str] = &[
    r#"
    ALTER TABLE organizations RENAME TO keyhook_organizations;
    ALTER TABLE api_keys RENAME TO keyhook_api_keys;
    ALTER TABLE event_types RENAME TO keyhook_event_types;
    ALTER TABLE endpoints RENAME TO keyhook_endpoints;
    ALTER TABLE endpoint_event_types RENAME TO keyhook_endpoint_event_types;
    ALTER TABLE endpoint_secrets RENAME TO keyhook_endpoint_secrets;
    ALTER TABLE events RENAME TO keyhook_events;
    ALTER TABLE deliveries RENAME TO keyhook_deliveries;
    ALTER TABLE attempts RENAME TO keyhook_attempts;
    ALTER TABLE meta RENAME TO keyhook_meta;
    DROP TRIGGER api_keys_revocation_is_permanent;
    DROP TRIGGER api_keys_scheduled_revocation_is_permanent;
    DROP INDEX api_keys_by_org;
    DROP INDEX api_keys_live_by_org;
    DROP INDEX endpoints_by_org;
    DROP INDEX endpoint_event_types_by_type;
    DROP INDEX endpoint_secrets_by_endpoint;
    DROP INDEX endpoints_limited;
    DROP INDEX events_by_idempotency_key;
    DROP INDEX events_by_created;
    DROP INDEX deliveries_due;
    DROP INDEX deliveries_in_flight;
    DROP INDEX deliveries_due_by_endpoint;
    DROP INDEX deliveries_by_endpoint;
    DROP INDEX deliveries_by_endpoint_state;
    DROP INDEX deliveries_by_event;
    DROP INDEX attempts_by_delivery;
    -- 0.1 leased = 1 for every claim; none of them counts as in flight now.
    "#,
    INDEXES_V1,
];

/// The same schema on PostgreSQL (feature `postgres`), at its current
/// version: a new database gets `PG_MIGRATIONS[n - 1]` for each version
/// `n` it lacks, recorded in the same `keyhook_migrations` table, so the
/// version numbers of both engines agree. Integers are `BIGINT` (SQLite's
/// are 64-bit), booleans stay integers (the SQL is shared), blobs are
/// `BYTEA`.
#[cfg(feature = "postgres")]
pub(crate) const PG_MIGRATIONS: &[&[&str]] = &[&[PG_V1], &[PG_V2], &[PG_V3]];

#[cfg(feature = "postgres")]
const PG_V1: &str = r#"
    CREATE TABLE keyhook_organizations (
        id               TEXT PRIMARY KEY,
        api_keys_enabled BIGINT NOT NULL DEFAULT 0
    );

    CREATE TABLE keyhook_api_keys (
        row_id       BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        id           TEXT NOT NULL UNIQUE,
        org_id       TEXT NOT NULL,
        name         TEXT NOT NULL,
        description  TEXT,
        environment  TEXT NOT NULL,
        hint         TEXT NOT NULL,
        hash         BYTEA NOT NULL,
        hash_kind    BIGINT NOT NULL,
        scopes       TEXT NOT NULL,
        created_at   BIGINT NOT NULL,
        updated_at   BIGINT NOT NULL,
        expires_at   BIGINT,
        last_used_at BIGINT,
        revoke_at    BIGINT,
        revoked_at   BIGINT,
        org_enabled  BIGINT NOT NULL DEFAULT 0
    );
    CREATE INDEX keyhook_api_keys_by_org ON keyhook_api_keys (org_id, created_at);
    CREATE INDEX keyhook_api_keys_live_by_org
        ON keyhook_api_keys (org_id, revoked_at, revoke_at, expires_at);

    -- Revocation is permanent, whatever code runs against this database.
    CREATE FUNCTION keyhook_api_keys_revocation_guard() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF OLD.revoked_at IS NOT NULL
           AND (NEW.revoked_at IS NULL OR NEW.revoked_at <> OLD.revoked_at) THEN
            RAISE EXCEPTION 'keyhook: a revoked API key cannot be re-enabled';
        END IF;
        IF OLD.revoke_at IS NOT NULL
           AND (NEW.revoke_at IS NULL OR NEW.revoke_at > OLD.revoke_at) THEN
            RAISE EXCEPTION 'keyhook: a scheduled revocation cannot be cleared or postponed';
        END IF;
        RETURN NEW;
    END $$;
    CREATE TRIGGER keyhook_api_keys_revocation_is_permanent
        BEFORE UPDATE OF revoked_at, revoke_at ON keyhook_api_keys
        FOR EACH ROW EXECUTE FUNCTION keyhook_api_keys_revocation_guard();

    -- Names sort bytewise ("C"), as on SQLite, whatever the database's collation.
    CREATE TABLE keyhook_event_types (
        name        TEXT COLLATE "C" PRIMARY KEY,
        description TEXT NOT NULL,
        created_at  BIGINT NOT NULL
    );

    CREATE TABLE keyhook_endpoints (
        row_id               BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        id                   TEXT NOT NULL UNIQUE,
        org_id               TEXT NOT NULL,
        url                  TEXT NOT NULL,
        description          TEXT,
        all_event_types      BIGINT NOT NULL,
        headers              TEXT NOT NULL,
        enabled              BIGINT NOT NULL DEFAULT 1,
        disabled_reason      TEXT,
        created_at           BIGINT NOT NULL,
        updated_at           BIGINT NOT NULL,
        consecutive_failures BIGINT NOT NULL DEFAULT 0,
        failing_since        BIGINT,
        last_success_at      BIGINT,
        disabled_at          BIGINT
    );
    CREATE INDEX keyhook_endpoints_by_org ON keyhook_endpoints (org_id, created_at);

    CREATE TABLE keyhook_endpoint_event_types (
        endpoint_row BIGINT NOT NULL REFERENCES keyhook_endpoints (row_id) ON DELETE CASCADE,
        event_type   TEXT COLLATE "C" NOT NULL,
        PRIMARY KEY (endpoint_row, event_type)
    );
    CREATE INDEX keyhook_endpoint_event_types_by_type
        ON keyhook_endpoint_event_types (event_type);

    CREATE TABLE keyhook_endpoint_secrets (
        row_id       BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        endpoint_row BIGINT NOT NULL REFERENCES keyhook_endpoints (row_id) ON DELETE CASCADE,
        secret       BYTEA NOT NULL,
        created_at   BIGINT NOT NULL,
        expires_at   BIGINT
    );
    CREATE INDEX keyhook_endpoint_secrets_by_endpoint ON keyhook_endpoint_secrets (endpoint_row);

    CREATE TABLE keyhook_events (
        row_id          BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        id              TEXT NOT NULL UNIQUE,
        org_id          TEXT NOT NULL,
        event_type      TEXT NOT NULL,
        body            BYTEA NOT NULL,
        idempotency_key TEXT,
        created_at      BIGINT NOT NULL
    );
    CREATE UNIQUE INDEX keyhook_events_by_idempotency_key
        ON keyhook_events (org_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
    CREATE INDEX keyhook_events_by_created ON keyhook_events (created_at);

    CREATE TABLE keyhook_deliveries (
        row_id          BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        event_row       BIGINT NOT NULL REFERENCES keyhook_events (row_id) ON DELETE CASCADE,
        endpoint_row    BIGINT NOT NULL REFERENCES keyhook_endpoints (row_id) ON DELETE CASCADE,
        org_id          TEXT NOT NULL,
        state           BIGINT NOT NULL DEFAULT 0,
        attempts        BIGINT NOT NULL DEFAULT 0,
        next_attempt_at BIGINT,
        leased          BIGINT NOT NULL DEFAULT 0,
        created_at      BIGINT NOT NULL,
        updated_at      BIGINT NOT NULL
    );
    CREATE INDEX keyhook_deliveries_due ON keyhook_deliveries (next_attempt_at, row_id)
        WHERE state = 0;
    CREATE INDEX keyhook_deliveries_in_flight ON keyhook_deliveries (endpoint_row, next_attempt_at)
        WHERE state = 0 AND leased = 2;
    CREATE INDEX keyhook_deliveries_by_endpoint
        ON keyhook_deliveries (endpoint_row, created_at, row_id);
    CREATE INDEX keyhook_deliveries_by_endpoint_state
        ON keyhook_deliveries (endpoint_row, state, created_at, row_id);
    CREATE INDEX keyhook_deliveries_by_event ON keyhook_deliveries (event_row);

    CREATE TABLE keyhook_attempts (
        row_id        BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        delivery_row  BIGINT NOT NULL REFERENCES keyhook_deliveries (row_id) ON DELETE CASCADE,
        attempted_at  BIGINT NOT NULL,
        duration_ms   BIGINT NOT NULL,
        status_code   BIGINT,
        error_kind    TEXT,
        response_body BYTEA,
        manual        BIGINT NOT NULL DEFAULT 0
    );
    CREATE INDEX keyhook_attempts_by_delivery ON keyhook_attempts (delivery_row);

    -- Per-database secrets; the cursor key is written by pg_migrate.
    CREATE TABLE keyhook_meta (
        key   TEXT PRIMARY KEY,
        value BYTEA NOT NULL
    );
"#;

#[cfg(feature = "postgres")]
const PG_V2: &str = r#"
    ALTER TABLE keyhook_events ADD COLUMN test BIGINT NOT NULL DEFAULT 0;
    CREATE INDEX keyhook_events_by_org ON keyhook_events (org_id, created_at, row_id);
    CREATE INDEX keyhook_events_by_org_type
        ON keyhook_events (org_id, event_type, created_at, row_id);

    ALTER TABLE keyhook_deliveries ADD COLUMN id TEXT;
    CREATE UNIQUE INDEX keyhook_deliveries_by_id ON keyhook_deliveries (id);

    ALTER TABLE keyhook_endpoints ADD COLUMN limited_claimed_at BIGINT;

    CREATE INDEX keyhook_deliveries_due_by_endpoint
        ON keyhook_deliveries (endpoint_row, next_attempt_at)
        WHERE state = 0 AND next_attempt_at IS NOT NULL;

    ALTER TABLE keyhook_event_types ADD COLUMN example TEXT;
    ALTER TABLE keyhook_event_types ADD COLUMN deprecated_at BIGINT;
    ALTER TABLE keyhook_event_types ADD COLUMN archived_at BIGINT;

    ALTER TABLE keyhook_api_keys ADD COLUMN prefix TEXT;
    ALTER TABLE keyhook_api_keys ADD COLUMN metadata TEXT;
"#;

#[cfg(feature = "postgres")]
const PG_V3: &str = r#"
    CREATE TABLE keyhook_key_changes (
        id      BIGINT PRIMARY KEY CHECK (id = 1),
        version BIGINT NOT NULL
    );
    INSERT INTO keyhook_key_changes (id, version) VALUES (1, 0);
    CREATE FUNCTION keyhook_key_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE keyhook_key_changes SET version = version + 1 WHERE id = 1;
        RETURN NULL;
    END $$;
    CREATE TRIGGER keyhook_api_keys_changed
        AFTER UPDATE OF org_id, name, environment, hash, hash_kind, scopes, expires_at,
            revoke_at, revoked_at, org_enabled, prefix, metadata ON keyhook_api_keys
        FOR EACH STATEMENT EXECUTE FUNCTION keyhook_key_changed();
    CREATE TRIGGER keyhook_api_keys_deleted AFTER DELETE ON keyhook_api_keys
        FOR EACH STATEMENT EXECUTE FUNCTION keyhook_key_changed();

    ALTER TABLE keyhook_endpoint_secrets ADD COLUMN kind BIGINT NOT NULL DEFAULT 0;
"#;

/// Brings keyhook's schema `schema` (created if missing) up to date, in
/// one transaction under an advisory lock, so hosts starting together
/// migrate once.
#[cfg(feature = "postgres")]
pub(crate) fn pg_migrate(client: &mut postgres::Client, schema: &str) -> crate::Result<()> {
    use crate::Error;
    let supported = PG_MIGRATIONS.len() as u32;
    // Up to date: no DDL (which needs rights an application's role may
    // lack, when the schema's owner runs migrations).
    // (`schema` is checked: lowercase letters, digits and underscores.)
    let exists: bool = client
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[&format!("{schema}.keyhook_migrations")],
        )?
        .get(0);
    let current: Option<i64> = if exists {
        client
            .query_one(
                &format!("SELECT MAX(version) FROM {schema}.keyhook_migrations"),
                &[],
            )?
            .get(0)
    } else {
        None
    };
    if current == Some(i64::from(supported)) {
        return Ok(());
    }
    let mut tx = client.transaction()?;
    // One lock for every keyhook schema of the database: 0x6b68 is "kh".
    tx.execute("SELECT pg_advisory_xact_lock(27496, 1)", &[])?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema}; SET LOCAL search_path TO {schema};
         CREATE TABLE IF NOT EXISTS keyhook_migrations (
             version    BIGINT PRIMARY KEY,
             applied_at BIGINT NOT NULL
         )"
    ))?;
    let found: i64 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM keyhook_migrations",
            &[],
        )?
        .get(0);
    let found = u32::try_from(found).unwrap_or(u32::MAX);
    if found > supported {
        return Err(Error::SchemaTooNew { found, supported });
    }
    for (version, batches) in PG_MIGRATIONS.iter().enumerate().skip(found as usize) {
        for sql in *batches {
            tx.batch_execute(sql)?;
        }
        if version == 0 {
            let key: [u8; 32] = rand::random();
            // Bound as keyhook's own value: tokio_postgres logs parameters
            // at DEBUG, and this one is a secret.
            tx.execute(
                "INSERT INTO keyhook_meta (key, value) VALUES ('cursor_key', $1)",
                &[&crate::pg::Value::Blob(&key)],
            )?;
        }
        tx.execute(
            "INSERT INTO keyhook_migrations (version, applied_at) VALUES ($1, $2)",
            &[&(version as i64 + 1), &crate::db::now_ms()],
        )?;
    }
    tx.commit()?;
    Ok(())
}
