//! The shared database handle: opening, pragmas, connections per thread, migrations.
//!
//! # How threads get connections
//!
//! A rusqlite [`Connection`] is `Send` but not `Sync`, so [`Database`] keeps a
//! small pool of idle connections behind a mutex. Each operation checks one
//! out, uses it on the calling thread, and puts it back; a thread never shares
//! a connection with another. On a file the pool grows on demand (SQLite in WAL
//! mode lets readers run beside one writer), keeping at most
//! [`DatabaseBuilder::max_idle_connections`] idle. An in-memory database lives
//! inside its single connection, so there operations take turns on it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, ErrorCode, OpenFlags, Transaction, TransactionBehavior};

use crate::error::{Error, Result};
use crate::schema::MIGRATIONS;

/// How hard SQLite works to keep committed data on power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `synchronous=FULL`: every commit is on disk before it returns; nothing
    /// committed is lost even on power loss. The default.
    #[default]
    Full,
    /// `synchronous=NORMAL`: commits survive a crash of the process, but the
    /// last few may be lost if the machine loses power. Faster commits.
    Normal,
}

#[derive(Debug, Clone)]
enum Target {
    File(PathBuf),
    Memory,
}

/// Settings for opening a [`Database`]; start with [`Database::builder`].
#[derive(Debug, Clone)]
pub struct DatabaseBuilder {
    durability: Durability,
    busy_timeout: Duration,
    max_idle: usize,
}

impl Default for DatabaseBuilder {
    fn default() -> Self {
        DatabaseBuilder {
            durability: Durability::Full,
            busy_timeout: Duration::from_secs(5),
            max_idle: 16,
        }
    }
}

impl DatabaseBuilder {
    /// Durability of commits. Default: [`Durability::Full`].
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// How long a connection waits for another writer's lock before failing
    /// with a "database is busy" error. Default: 5 seconds.
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// The most idle connections kept open for reuse. Default: 16.
    pub fn max_idle_connections(mut self, n: usize) -> Self {
        self.max_idle = n.max(1);
        self
    }

    /// Opens (creating if needed) the SQLite file at `path` in WAL mode and
    /// brings its schema up to date.
    ///
    /// # Errors
    ///
    /// [`Error::NotADatabase`] if the file is not SQLite, [`Error::SchemaTooNew`]
    /// if a newer keyhook wrote it, [`Error::Database`] for other SQLite errors.
    pub fn open(self, path: impl AsRef<Path>) -> Result<Database> {
        Database::from_parts(Target::File(path.as_ref().to_path_buf()), self)
    }

    /// Opens a private in-memory database (for tests and examples); it is gone
    /// when the last clone of the handle is dropped.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] if SQLite cannot create it.
    pub fn open_in_memory(self) -> Result<Database> {
        Database::from_parts(Target::Memory, self)
    }
}

/// A handle on keyhook's SQLite database, shared by every keyhook type.
///
/// Cheap to clone (an `Arc`), `Send` and `Sync`.
///
/// # How threads get connections
///
/// A rusqlite `Connection` is `Send` but not `Sync`, so `Database` keeps a
/// small pool of idle connections behind a mutex. Each operation checks one
/// out, uses it on the calling thread, and puts it back; a thread never
/// shares a connection with another. On a file the pool grows on demand
/// (SQLite in WAL mode lets readers run beside one writer), keeping at most
/// [`DatabaseBuilder::max_idle_connections`] idle. Write transactions of one
/// process queue on a mutex (no polling in SQLite's busy handler); other
/// processes on the same file meet the busy timeout. An in-memory database
/// lives inside its single connection, so there operations take turns on it.
///
/// # Durability
///
/// [`Durability::Full`] (the default) syncs every commit to disk before it
/// returns: nothing committed is lost even on power loss.
/// [`Durability::Normal`] survives a crash of the process, but the last
/// commits may be lost if the machine loses power.
#[derive(Clone)]
pub struct Database {
    inner: Arc<Inner>,
}

struct Inner {
    target: Target,
    settings: DatabaseBuilder,
    idle: Mutex<Vec<Connection>>,
    /// Serializes this process's write transactions, so its writers queue on
    /// a mutex instead of polling SQLite's lock in the busy handler's sleeps.
    /// Other processes still meet the busy timeout.
    write_lock: Mutex<()>,
    /// Writers waiting for `write_lock`; background work yields to them.
    waiting_writers: AtomicUsize,
    /// Signalled when a connection is returned; only waited on for in-memory
    /// databases, whose single connection cannot be duplicated.
    returned: Condvar,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("target", &self.inner.target)
            .field("durability", &self.inner.settings.durability)
            .finish_non_exhaustive()
    }
}

impl Database {
    /// Settings for opening a database.
    pub fn builder() -> DatabaseBuilder {
        DatabaseBuilder::default()
    }

    /// Opens the SQLite file at `path` with default settings
    /// ([`Durability::Full`], 5 s busy timeout).
    ///
    /// # Errors
    ///
    /// As [`DatabaseBuilder::open`].
    pub fn open(path: impl AsRef<Path>) -> Result<Database> {
        Database::builder().open(path)
    }

    /// Opens a private in-memory database with default settings.
    ///
    /// # Errors
    ///
    /// As [`DatabaseBuilder::open_in_memory`].
    pub fn open_in_memory() -> Result<Database> {
        Database::builder().open_in_memory()
    }

    /// The schema version this build of keyhook writes.
    pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

    /// The file this handle opened, or `None` for an in-memory database.
    pub fn path(&self) -> Option<&Path> {
        match &self.inner.target {
            Target::File(p) => Some(p),
            Target::Memory => None,
        }
    }

    fn from_parts(target: Target, settings: DatabaseBuilder) -> Result<Database> {
        let db = Database {
            inner: Arc::new(Inner {
                target,
                settings,
                idle: Mutex::new(Vec::new()),
                write_lock: Mutex::new(()),
                waiting_writers: AtomicUsize::new(0),
                returned: Condvar::new(),
            }),
        };
        let mut conn = db.inner.connect()?;
        migrate(&mut conn, db.path())?;
        db.inner.lock_idle().push(conn);
        Ok(db)
    }

    /// Checks out a connection for the calling thread.
    pub(crate) fn conn(&self) -> Result<Conn<'_>> {
        let mut idle = self.inner.lock_idle();
        loop {
            if let Some(conn) = idle.pop() {
                return Ok(Conn {
                    inner: &self.inner,
                    conn: Some(conn),
                });
            }
            match self.inner.target {
                Target::Memory => {
                    idle = self
                        .inner
                        .returned
                        .wait(idle)
                        .unwrap_or_else(|e| e.into_inner())
                }
                Target::File(_) => {
                    drop(idle);
                    return Ok(Conn {
                        inner: &self.inner,
                        conn: Some(self.inner.connect()?),
                    });
                }
            }
        }
    }

    /// Runs `f` in an `IMMEDIATE` transaction (the write lock is taken up
    /// front, so two writers never deadlock on an upgrade) and commits if it
    /// returns `Ok`; an `Err` rolls everything back.
    pub(crate) fn write<T>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        let mut conn = self.conn()?;
        self.inner.waiting_writers.fetch_add(1, Ordering::SeqCst);
        let serialized = self.inner.write_lock.lock();
        self.inner.waiting_writers.fetch_sub(1, Ordering::SeqCst);
        let _serialized = serialized.unwrap_or_else(|e| e.into_inner());
        immediate(&mut conn, f)
    }

    /// Like [`write`](Self::write), for background work (retention): waits
    /// until no other writer of this process is waiting, so a long series
    /// of these never delays an emit by more than one transaction.
    pub(crate) fn write_background<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        let mut conn = self.conn()?;
        let _serialized = loop {
            while self.inner.waiting_writers.load(Ordering::SeqCst) > 0 {
                std::thread::sleep(Duration::from_micros(200));
            }
            let guard = self
                .inner
                .write_lock
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if self.inner.waiting_writers.load(Ordering::SeqCst) == 0 {
                break guard;
            }
        };
        immediate(&mut conn, f)
    }

    /// Runs `f` on a checked-out connection, outside any explicit transaction.
    pub(crate) fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = self.conn()?;
        f(&conn)
    }
}

impl Inner {
    fn lock_idle(&self) -> MutexGuard<'_, Vec<Connection>> {
        // A panic while holding this lock cannot leave the Vec inconsistent.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn connect(&self) -> Result<Connection> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI;
        let conn = match &self.target {
            Target::File(path) => Connection::open_with_flags(path, flags)?,
            Target::Memory => Connection::open_in_memory()?,
        };
        conn.busy_timeout(self.settings.busy_timeout)?;
        conn.set_prepared_statement_cache_capacity(64);
        let sync = match self.settings.durability {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        };
        let setup = |conn: &Connection| -> rusqlite::Result<()> {
            if let Target::File(_) = self.target {
                let mode: String =
                    conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
                if !mode.eq_ignore_ascii_case("wal") {
                    return Err(rusqlite::Error::SqliteFailure(
                        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
                        Some(format!("could not switch to WAL mode (got {mode})")),
                    ));
                }
            }
            conn.pragma_update(None, "synchronous", sync)?;
            conn.pragma_update(None, "foreign_keys", "ON")?;
            Ok(())
        };
        setup(&conn).map_err(|e| match (&self.target, e.sqlite_error_code()) {
            (Target::File(path), Some(ErrorCode::NotADatabase)) => Error::NotADatabase {
                path: path.clone(),
                source: e,
            },
            _ => Error::Database(e),
        })?;
        Ok(conn)
    }
}

/// A connection checked out of the pool; goes back when dropped.
pub(crate) struct Conn<'a> {
    inner: &'a Inner,
    conn: Option<Connection>,
}

impl std::ops::Deref for Conn<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn.as_ref().expect("connection present until drop")
    }
}

impl std::ops::DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut Connection {
        self.conn.as_mut().expect("connection present until drop")
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        // A connection left inside a transaction (a panic mid-operation) is
        // not reused: closing it rolls the transaction back.
        if !conn.is_autocommit() {
            return;
        }
        let mut idle = self.inner.lock_idle();
        if idle.len() < self.inner.settings.max_idle {
            idle.push(conn);
        }
        drop(idle);
        self.inner.returned.notify_one();
    }
}

/// Runs `f` in an IMMEDIATE transaction on `conn`, committing if it returns Ok.
fn immediate<T>(conn: &mut Connection, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let value = f(&tx)?;
    tx.commit()?;
    Ok(value)
}

/// Applies the migrations the database lacks, all in one transaction.
fn migrate(conn: &mut Connection, path: Option<&Path>) -> Result<()> {
    let map_open_err = |e: rusqlite::Error| match (path, e.sqlite_error_code()) {
        (Some(path), Some(ErrorCode::NotADatabase)) => Error::NotADatabase {
            path: path.to_path_buf(),
            source: e,
        },
        _ => Error::Database(e),
    };
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(map_open_err)?;
    let found: u32 = tx
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(map_open_err)?;
    let supported = MIGRATIONS.len() as u32;
    if found > supported {
        return Err(Error::SchemaTooNew { found, supported });
    }
    for sql in &MIGRATIONS[found as usize..] {
        tx.execute_batch(sql)?;
    }
    if found < supported {
        tx.pragma_update(None, "user_version", supported)?;
    }
    tx.commit()?;
    Ok(())
}

/// Milliseconds since the Unix epoch, the unit of every timestamp column.
pub(crate) fn now_ms() -> i64 {
    to_ms(SystemTime::now())
}

pub(crate) fn to_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

pub(crate) fn from_ms(ms: i64) -> SystemTime {
    if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms as u64)
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    }
}

pub(crate) fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handle_is_send_sync_clone() {
        fn check<T: Send + Sync + Clone>() {}
        check::<Database>();
    }

    #[test]
    fn ms_roundtrip() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(from_ms(to_ms(t)), t);
        assert_eq!(to_ms(UNIX_EPOCH - Duration::from_millis(5)), -5);
    }

    #[test]
    fn in_memory_opens_at_current_schema() {
        let db = Database::open_in_memory().unwrap();
        let v: u32 = db
            .read(|c| Ok(c.pragma_query_value(None, "user_version", |r| r.get(0))?))
            .unwrap();
        assert_eq!(v, Database::SCHEMA_VERSION);
    }
}
