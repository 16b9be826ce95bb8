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
    ///
    /// Displays as `database error: ` and SQLite's own message (e.g.
    /// `database error: disk I/O error`, `database error: no such column:
    /// version`): never the statement's text, never a bound value (for
    /// errors that would carry one, such as a value out of range, only
    /// what went wrong and in which column).
    #[error("database error: {}", SqliteMessage(.0))]
    Database(#[source] rusqlite::Error),
    /// Another connection or process held the database's write lock for
    /// longer than the busy timeout ([`DatabaseBuilder::busy_timeout`](crate::DatabaseBuilder::busy_timeout));
    /// nothing was written. Retrying later is safe.
    #[error(
        "the database is locked by another connection or process (waited the busy timeout); nothing was written"
    )]
    Locked(#[source] rusqlite::Error),

    /// PostgreSQL reported an error (feature `postgres`); the original is
    /// kept as the source. Displays the server's message, never a
    /// statement's parameters or the connection string.
    #[cfg(feature = "postgres")]
    #[error("database error (PostgreSQL): {0}")]
    Postgres(#[source] PostgresError),

    /// keyhook could not connect to, or set itself up in, the PostgreSQL
    /// database `server` (shown as `user@host:port/database`, never with
    /// the password); `problem` says why. Nothing was written.
    #[cfg(feature = "postgres")]
    #[error("cannot open PostgreSQL database {server}: {}", problem.describe())]
    PostgresOpen {
        /// Where keyhook tried to connect, without the password.
        server: String,
        /// What went wrong.
        problem: PgProblem,
        /// The client's error, when there was one.
        #[source]
        source: Option<PostgresError>,
    },

    /// The database at `path` could not be opened for keyhook's use;
    /// `problem` says why, in a form a host can map to its own message.
    /// Returned by [`Database::open`](crate::Database::open) (and, for a
    /// file removed or made unreadable later, when keyhook opens another
    /// connection to it). Nothing was written.
    ///
    /// Displays as e.g. `cannot open database /data/app.sqlite3: its
    /// directory does not exist`.
    #[error("cannot open database {}: {}", path.display(), OpenMessage(*problem, source.as_ref()))]
    Open {
        /// The path (or `file:` URI) that was given.
        path: PathBuf,
        /// What is wrong with it.
        problem: OpenProblem,
        /// SQLite's error, when SQLite reported one (a read-only database
        /// is noticed by asking SQLite, which reports no error).
        #[source]
        source: Option<rusqlite::Error>,
    },

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

/// Why a database could not be opened, in [`Error::Open`].
///
/// Each problem says what the operator has to fix; [`as_str`](Self::as_str)
/// gives a stable code for logs and API bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OpenProblem {
    /// The path names a directory, not a file.
    IsADirectory,
    /// The directory that should hold the file does not exist (keyhook
    /// creates the file, never directories).
    ParentMissing,
    /// Something on the way to the file that should be a directory is a
    /// file (e.g. `/data/app.txt/keyhook.sqlite3`).
    ParentNotADirectory,
    /// The operating system refused access to the file or its directory
    /// (SQLite creates `-wal` and `-shm` files beside the database, so the
    /// directory must be writable too).
    PermissionDenied,
    /// The database can be read but not written: the file, its directory
    /// or the file system is read-only, or a `file:` URI asked for
    /// `mode=ro`. keyhook writes (its migrations, every emit), so it
    /// refuses such a database when opening it rather than at the first
    /// write.
    ReadOnly,
    /// Another connection or process held a lock on the file for longer
    /// than the busy timeout ([`DatabaseBuilder::busy_timeout`](crate::DatabaseBuilder::busy_timeout))
    /// while keyhook was opening it or bringing its schema up to date.
    /// Retrying later is safe.
    Locked,
    /// SQLite could not open the file for another reason; its message is
    /// in the error's text and source.
    Other,
}

/// Why keyhook could not open a PostgreSQL database
/// ([`Error::PostgresOpen`]).
#[cfg(feature = "postgres")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PgProblem {
    /// The connection string is neither a `postgres://` URL nor a
    /// `key=value` list.
    InvalidUrl,
    /// No server answered at that address (refused, unreachable, timed out,
    /// or the connection closed while starting).
    Unreachable,
    /// The server refused the user or password.
    AuthenticationFailed,
    /// The server has no database of that name.
    NoSuchDatabase,
    /// The user may not create keyhook's schema or tables, or use them.
    PermissionDenied,
    /// Every connection of keyhook's pool
    /// ([`max_connections`](crate::DatabaseBuilder::max_connections)) stayed
    /// in use for the whole busy timeout. Retrying later is safe.
    PoolExhausted,
    /// Anything else; the server's message is in the source.
    Other,
}

#[cfg(feature = "postgres")]
impl PgProblem {
    /// A stable machine-readable code: `invalid_url`, `unreachable`,
    /// `authentication_failed`, `no_such_database`, `permission_denied`,
    /// `pool_exhausted`, `other`.
    pub fn as_str(self) -> &'static str {
        match self {
            PgProblem::InvalidUrl => "invalid_url",
            PgProblem::Unreachable => "unreachable",
            PgProblem::AuthenticationFailed => "authentication_failed",
            PgProblem::NoSuchDatabase => "no_such_database",
            PgProblem::PermissionDenied => "permission_denied",
            PgProblem::PoolExhausted => "pool_exhausted",
            PgProblem::Other => "other",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            PgProblem::InvalidUrl => {
                "the connection string is not a postgres:// URL or key=value list"
            }
            PgProblem::Unreachable => {
                "no server answered (is it running, and is the address right?)"
            }
            PgProblem::AuthenticationFailed => "the server refused the user or password",
            PgProblem::NoSuchDatabase => "the server has no such database",
            PgProblem::PermissionDenied => {
                "permission denied (the user must be able to create keyhook's schema and tables)"
            }
            PgProblem::PoolExhausted => {
                "every connection of the pool stayed in use for the busy timeout"
            }
            PgProblem::Other => "see the source error",
        }
    }
}

/// An error of the PostgreSQL client or server (feature `postgres`).
///
/// `Display` and `Debug` show the server's message and SQLSTATE code (or the
/// client's message), never the server's DETAIL, which can quote a row's
/// values (a unique key, a failing row's columns). [`get_ref`](Self::get_ref)
/// gives the client's whole error.
#[cfg(feature = "postgres")]
pub struct PostgresError(postgres::Error);

#[cfg(feature = "postgres")]
impl PostgresError {
    /// The SQLSTATE code (`"23505"`), for errors the server reported.
    pub fn code(&self) -> Option<&str> {
        self.0.code().map(|c| c.code())
    }

    /// The `postgres` client's error, DETAIL included.
    pub fn get_ref(&self) -> &postgres::Error {
        &self.0
    }
}

#[cfg(feature = "postgres")]
impl std::fmt::Debug for PostgresError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresError")
            .field("code", &self.code())
            .field("message", &self.to_string())
            .finish()
    }
}

#[cfg(feature = "postgres")]
impl std::error::Error for PostgresError {}

#[cfg(feature = "postgres")]
impl std::fmt::Display for PostgresError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.as_db_error() {
            Some(db) => write!(f, "{} ({})", db.message(), db.code().code()),
            None => match std::error::Error::source(&self.0) {
                Some(cause) => write!(f, "{}: {cause}", self.0),
                None => write!(f, "{}", self.0),
            },
        }
    }
}

#[cfg(feature = "postgres")]
impl From<postgres::Error> for Error {
    fn from(e: postgres::Error) -> Error {
        Error::Postgres(PostgresError(e))
    }
}

#[cfg(feature = "postgres")]
impl From<postgres::Error> for PostgresError {
    fn from(e: postgres::Error) -> PostgresError {
        PostgresError(e)
    }
}

impl OpenProblem {
    /// A stable machine-readable code: `is_a_directory`, `parent_missing`,
    /// `parent_not_a_directory`, `permission_denied`, `read_only`, `locked`,
    /// `other`.
    pub fn as_str(self) -> &'static str {
        match self {
            OpenProblem::IsADirectory => "is_a_directory",
            OpenProblem::ParentMissing => "parent_missing",
            OpenProblem::ParentNotADirectory => "parent_not_a_directory",
            OpenProblem::PermissionDenied => "permission_denied",
            OpenProblem::ReadOnly => "read_only",
            OpenProblem::Locked => "locked",
            OpenProblem::Other => "other",
        }
    }
}

impl std::fmt::Display for OpenProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OpenProblem::IsADirectory => "it is a directory, not a file",
            OpenProblem::ParentMissing => "its directory does not exist",
            OpenProblem::ParentNotADirectory => "a part of its directory path is not a directory",
            OpenProblem::PermissionDenied => {
                "permission denied (the file and its directory must be readable and writable)"
            }
            OpenProblem::ReadOnly => {
                "it is read-only (the file, its directory or the file system cannot be written)"
            }
            OpenProblem::Locked => {
                "it is locked by another connection or process (waited the busy timeout)"
            }
            OpenProblem::Other => "SQLite cannot open it",
        })
    }
}

/// [`Error::Open`]'s detail: the problem, and for [`OpenProblem::Other`]
/// SQLite's message, which is all there is to say.
struct OpenMessage<'a>(OpenProblem, Option<&'a rusqlite::Error>);

impl std::fmt::Display for OpenMessage<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenMessage(OpenProblem::Other, Some(e)) => {
                write!(f, "{} ({})", OpenProblem::Other, SqliteMessage(e))
            }
            OpenMessage(problem, _) => problem.fmt(f),
        }
    }
}

/// What of a rusqlite error may be shown: SQLite's message (which names
/// tables, columns and constraints, never values), without the statement
/// text rusqlite appends to syntax errors, and without values or the
/// messages of conversion errors, which may quote one.
struct SqliteMessage<'a>(&'a rusqlite::Error);

impl std::fmt::Display for SqliteMessage<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use rusqlite::Error as E;
        match self.0 {
            E::SqliteFailure(_, Some(msg)) => f.write_str(msg),
            E::SqliteFailure(code, None) => {
                f.write_str(rusqlite::ffi::code_to_str(code.extended_code))
            }
            E::SqlInputError { msg, offset, .. } => {
                write!(f, "{msg} (at offset {offset} of the statement)")
            }
            E::SqliteSingleThreadedMode => {
                f.write_str("SQLite was compiled or configured for single-threaded use only")
            }
            E::FromSqlConversionFailure(column, ty, _) => {
                write!(
                    f,
                    "a {ty} value{} could not be converted",
                    InColumn(*column)
                )
            }
            E::IntegralValueOutOfRange(column, _) => {
                write!(f, "an integer{} is out of range", InColumn(*column))
            }
            E::Utf8Error(_) => f.write_str("a text value is not valid UTF-8"),
            E::NulError(_) => f.write_str("a string passed to SQLite contains a nul byte"),
            E::ToSqlConversionFailure(_) => {
                f.write_str("a value could not be converted for SQLite")
            }
            E::InvalidParameterName(name) => write!(f, "invalid parameter name {name}"),
            E::InvalidPath(_) => f.write_str("the path is not valid for SQLite"),
            E::ExecuteReturnedResults => f.write_str("a statement returned rows unexpectedly"),
            E::QueryReturnedNoRows => f.write_str("the query returned no rows"),
            E::QueryReturnedMoreThanOneRow => f.write_str("the query returned more than one row"),
            E::InvalidColumnIndex(i) => write!(f, "invalid column index {i}"),
            E::InvalidColumnName(name) => write!(f, "invalid column name {name}"),
            E::InvalidColumnType(i, name, ty) => {
                write!(f, "column {name} (index {i}) has unexpected type {ty}")
            }
            E::StatementChangedRows(n) => write!(f, "the statement changed {n} rows"),
            E::InvalidQuery => f.write_str("the query is not read-only"),
            E::UnwindingPanic => f.write_str("a panic unwound through SQLite"),
            E::MultipleStatement => f.write_str("more than one statement was given"),
            E::InvalidParameterCount(given, needed) => {
                write!(f, "{given} parameters given, {needed} needed")
            }
            E::InvalidDatabaseIndex(i) => write!(f, "invalid database index {i}"),
            // A variant added by a later rusqlite: its text is unknown, so
            // only its kind is shown.
            _ => f.write_str("rusqlite reported an error"),
        }
    }
}

/// ` in column N`, or nothing where rusqlite does not know the column
/// (it says `usize::MAX`).
struct InColumn(usize);

impl std::fmt::Display for InColumn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            usize::MAX => Ok(()),
            column => write!(f, " in column {column}"),
        }
    }
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
    /// Whether the connection to the PostgreSQL server was lost: closed,
    /// or its backend terminated (SQLSTATE class 57P, operator
    /// intervention: a restart, `pg_terminate_backend`) or cut off (class
    /// 08). What it was running may or may not have committed.
    pub(crate) fn is_connection_lost(&self) -> bool {
        match self {
            #[cfg(feature = "postgres")]
            Error::Postgres(e) => {
                e.get_ref().is_closed()
                    || e.code()
                        .is_some_and(|c| c.starts_with("57P") || c.starts_with("08"))
            }
            _ => false,
        }
    }

    /// Whether a unique index refused a row (SQLite or PostgreSQL).
    pub(crate) fn is_unique_violation(&self) -> bool {
        match self {
            Error::Database(e) => {
                e.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation)
                    && matches!(e, rusqlite::Error::SqliteFailure(f, _)
                        if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE)
            }
            #[cfg(feature = "postgres")]
            Error::Postgres(e) => e.code() == Some("23505"),
            _ => false,
        }
    }

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

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::ffi;

    fn shown(e: rusqlite::Error) -> String {
        Error::from(e).to_string()
    }

    #[test]
    fn a_database_error_shows_sqlites_message() {
        let io = rusqlite::Error::SqliteFailure(
            ffi::Error::new(ffi::SQLITE_IOERR_WRITE),
            Some("disk I/O error".into()),
        );
        assert_eq!(shown(io), "database error: disk I/O error");
        let bare = rusqlite::Error::SqliteFailure(ffi::Error::new(ffi::SQLITE_FULL), None);
        assert_eq!(
            shown(bare),
            "database error: Insertion failed because database is full"
        );
        let unique = rusqlite::Error::SqliteFailure(
            ffi::Error::new(ffi::SQLITE_CONSTRAINT_UNIQUE),
            Some("UNIQUE constraint failed: keyhook_api_keys.id".into()),
        );
        assert_eq!(
            shown(unique),
            "database error: UNIQUE constraint failed: keyhook_api_keys.id"
        );
    }

    #[test]
    fn a_database_error_never_shows_values_or_statements() {
        let secret = "sk_live_0123456789";
        #[derive(Debug)]
        struct Quoting(String);
        impl std::fmt::Display for Quoting {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "cannot convert {:?}", self.0)
            }
        }
        impl std::error::Error for Quoting {}
        for e in [
            rusqlite::Error::ToSqlConversionFailure(Box::new(Quoting(secret.into()))),
            rusqlite::Error::FromSqlConversionFailure(
                2,
                rusqlite::types::Type::Text,
                Box::new(Quoting(secret.into())),
            ),
            rusqlite::Error::IntegralValueOutOfRange(1, 123_456_789_012),
            rusqlite::Error::IntegralValueOutOfRange(usize::MAX, 123_456_789_012),
            rusqlite::Error::SqlInputError {
                error: ffi::Error::new(ffi::SQLITE_ERROR),
                msg: "no such column: version".into(),
                sql: format!("SELECT version FROM t WHERE key = '{secret}'"),
                offset: 7,
            },
        ] {
            let msg = shown(e);
            assert!(msg.starts_with("database error: "), "{msg}");
            assert!(!msg.contains(secret), "{msg}");
            assert!(!msg.contains("123456789012"), "{msg}");
            assert!(!msg.contains("SELECT"), "{msg}");
            assert!(!msg.contains(&usize::MAX.to_string()), "{msg}");
        }
        assert_eq!(
            shown(rusqlite::Error::IntegralValueOutOfRange(3, 1 << 40)),
            "database error: an integer in column 3 is out of range"
        );
    }

    #[test]
    fn busy_is_locked_and_the_source_is_kept() {
        let busy = rusqlite::Error::SqliteFailure(
            ffi::Error::new(ffi::SQLITE_BUSY),
            Some("database is locked".into()),
        );
        assert!(matches!(Error::from(busy), Error::Locked(_)));
        let io = Error::from(rusqlite::Error::SqliteFailure(
            ffi::Error::new(ffi::SQLITE_IOERR),
            None,
        ));
        assert!(std::error::Error::source(&io).is_some());
    }

    #[test]
    fn open_errors_name_the_path_and_the_problem() {
        let open = |problem, source| Error::Open {
            path: PathBuf::from("/data/app.sqlite3"),
            problem,
            source,
        };
        assert_eq!(
            open(OpenProblem::ParentMissing, None).to_string(),
            "cannot open database /data/app.sqlite3: its directory does not exist"
        );
        let cantopen = rusqlite::Error::SqliteFailure(
            ffi::Error::new(ffi::SQLITE_CANTOPEN),
            Some("unable to open database file".into()),
        );
        let other = open(OpenProblem::Other, Some(cantopen));
        assert_eq!(
            other.to_string(),
            "cannot open database /data/app.sqlite3: SQLite cannot open it (unable to open database file)"
        );
        assert!(std::error::Error::source(&other).is_some());
        assert!(!other.is_client_error());
        let codes = [
            OpenProblem::IsADirectory,
            OpenProblem::ParentMissing,
            OpenProblem::ParentNotADirectory,
            OpenProblem::PermissionDenied,
            OpenProblem::ReadOnly,
            OpenProblem::Locked,
            OpenProblem::Other,
        ]
        .map(OpenProblem::as_str);
        let unique: std::collections::HashSet<_> = codes.iter().collect();
        assert_eq!(unique.len(), codes.len());
    }
}
