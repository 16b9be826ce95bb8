//! The crate's one error type.

use std::path::PathBuf;

/// `Result` with keyhook's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why an API key did not verify.
///
/// The set is closed on purpose: a host maps each outcome to a response
/// (usually all of them to `401 Unauthorized`, with [`Rejection::PlanInactive`]
/// perhaps to `402` or `403`) and the compiler tells it when it missed one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// Not a keyhook key of this store: wrong length, characters, prefix,
    /// environment or checksum. Decided without touching the database.
    Malformed,
    /// Well formed, but no key with this id and secret exists.
    Unknown,
    /// The key was revoked (by hand, or at the end of a roll's grace period).
    Revoked,
    /// The key's expiry time has passed.
    Expired,
    /// The key's organization does not currently have API keys on its plan.
    /// The key is kept and works again when the plan returns.
    PlanInactive,
}

impl Rejection {
    /// A stable machine-readable code for API error bodies:
    /// `malformed`, `unknown`, `revoked`, `expired`, `plan_inactive`.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Malformed => "malformed",
            Rejection::Unknown => "unknown",
            Rejection::Revoked => "revoked",
            Rejection::Expired => "expired",
            Rejection::PlanInactive => "plan_inactive",
        }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Rejection::Malformed => "malformed API key",
            Rejection::Unknown => "unknown API key",
            Rejection::Revoked => "API key revoked",
            Rejection::Expired => "API key expired",
            Rejection::PlanInactive => "API keys are not enabled on this organization's plan",
        })
    }
}

/// Everything that can go wrong in keyhook.
///
/// Variants that come from bad input name the input (`field`, `name`, `id`)
/// and say what was wrong with it; nothing was changed when one is returned.
/// Secrets never appear in an error's `Display` or `Debug`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// SQLite reported an error; the original is kept as the source.
    #[error("database error")]
    Database(#[source] rusqlite::Error),
    /// Another connection or process held the database's write lock for
    /// longer than the busy timeout ([`DatabaseBuilder::busy_timeout`](crate::DatabaseBuilder::busy_timeout));
    /// nothing was written. Retrying later is safe.
    #[error(
        "the database is locked by another connection or process (waited the busy timeout); nothing was written"
    )]
    Locked(#[source] rusqlite::Error),

    /// The file exists but is not a SQLite database (or is encrypted or corrupt).
    #[error("{path} is not a SQLite database")]
    NotADatabase {
        /// The file that was opened.
        path: PathBuf,
        /// SQLite's own error.
        #[source]
        source: rusqlite::Error,
    },

    /// The database was written by a newer keyhook whose schema this version does not know.
    #[error(
        "database schema version {found} is newer than this keyhook supports ({supported}); upgrade keyhook"
    )]
    SchemaTooNew {
        /// The newest version recorded in the file's `keyhook_migrations` table.
        found: u32,
        /// The newest schema version this build knows.
        supported: u32,
    },

    /// An input value was rejected; `field` names it and `reason` says why.
    #[error("invalid {field}: {reason}")]
    InvalidInput {
        /// The parameter or setting that was wrong, e.g. `"name"` or `"expires_at"`.
        field: &'static str,
        /// What was wrong with it.
        reason: String,
    },

    /// No such object in this organization (it may exist in another one; keyhook does not say).
    #[error("{kind} {id:?} not found")]
    NotFound {
        /// What was looked up: `"api key"`, `"endpoint"`, `"event type"`, `"delivery"`…
        kind: &'static str,
        /// The id that was given.
        id: String,
    },

    /// The object exists but its state forbids the operation (e.g. renaming a revoked key).
    #[error("{kind} {id:?} is {state}")]
    InvalidState {
        /// What was acted on.
        kind: &'static str,
        /// Its id.
        id: String,
        /// The state that forbids the operation, e.g. `"revoked"`.
        state: &'static str,
    },

    /// A per-organization limit (live API keys, endpoints) is reached.
    #[error("limit reached: an organization may have at most {limit} {what}")]
    LimitReached {
        /// What is counted, e.g. `"live API keys"`.
        what: &'static str,
        /// The configured limit.
        limit: u32,
    },

    /// The organization's plan does not include API keys.
    #[error("API keys are not enabled for organization {org:?}")]
    PlanNotEnabled {
        /// The organization id.
        org: String,
    },

    /// An API key did not verify.
    #[error("{0}")]
    Rejected(Rejection),

    /// An event type was not registered in the catalogue.
    #[error("unknown event type {name:?}")]
    UnknownEventType {
        /// The event type that was given.
        name: String,
    },

    /// A webhook URL was refused by the destination policy.
    #[error("destination refused: {reason}")]
    DestinationRefused {
        /// Which rule refused it (e.g. "127.0.0.1 is a loopback address").
        reason: String,
    },

    /// An event body is larger than the configured limit.
    #[error("event body is {size} bytes, over the limit of {limit} bytes")]
    PayloadTooLarge {
        /// Serialized envelope size in bytes.
        size: usize,
        /// The configured limit in bytes.
        limit: usize,
    },

    /// Event data could not be serialized to JSON.
    #[error("event data could not be serialized to JSON")]
    Serialize(#[source] serde_json::Error),

    /// A dispatcher thread panicked outside any one attempt and stopped; the
    /// dispatcher no longer delivers (see [`Dispatcher::health`](crate::Dispatcher::health)).
    /// Emits are still stored, for the next dispatcher to deliver.
    #[error("dispatcher thread {thread} stopped: {cause}")]
    DispatcherFailed {
        /// The thread's name, e.g. `keyhook-pump`.
        thread: String,
        /// Its panic message.
        cause: String,
    },
    /// The dispatcher's threads did not finish within the shutdown timeout
    /// (a worker still in an attempt, or the callbacks thread still making
    /// queued calls).
    #[error("{unfinished} dispatcher thread(s) still running after the shutdown timeout")]
    ShutdownTimedOut {
        /// Threads that were still running.
        unfinished: usize,
    },

    /// An OS or I/O error: spawning threads, reading the OS random source,
    /// or syncing the database to disk. A write whose sync failed is
    /// committed but may not survive power loss, and every later write on
    /// that [`Database`](crate::Database) handle fails until the database is
    /// opened again.
    #[error("I/O error")]
    Io(#[from] std::io::Error),
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Error {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                Error::Locked(e)
            }
            _ => Error::Database(e),
        }
    }
}

impl Error {
    /// The API key [`Rejection`], if this error is one.
    pub fn rejection(&self) -> Option<Rejection> {
        match self {
            Error::Rejected(r) => Some(*r),
            _ => None,
        }
    }

    /// True when this error came from bad input or a missing object, not from
    /// the database or the OS; a host maps these to 4xx responses.
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            Error::InvalidInput { .. }
                | Error::NotFound { .. }
                | Error::InvalidState { .. }
                | Error::LimitReached { .. }
                | Error::PlanNotEnabled { .. }
                | Error::Rejected(_)
                | Error::UnknownEventType { .. }
                | Error::DestinationRefused { .. }
                | Error::PayloadTooLarge { .. }
                | Error::Serialize(_)
        )
    }

    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidInput {
            field,
            reason: reason.into(),
        }
    }

    pub(crate) fn not_found(kind: &'static str, id: impl Into<String>) -> Self {
        Error::NotFound {
            kind,
            id: id.into(),
        }
    }
}
