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
//!
//! # Writes and group commit
//!
//! Every write transaction of the process runs on one write connection,
//! behind a mutex: writers queue there, and the connection's page cache stays
//! valid (SQLite drops a connection's whole cache whenever another connection
//! has written). Under [`Durability::Full`] that connection commits with
//! `synchronous=NORMAL`, and [`Database::sync`] then syncs the WAL file after
//! the lock is released: the caller returns only once its commit is on disk,
//! but no writer waits for the disk while holding the lock, and one sync
//! serves every commit made before it began. A write is durable when it
//! returns, as under `synchronous=FULL`, with one sync per group of
//! concurrent writers instead of one per commit. Two differences: other
//! connections may see a commit a moment before it is on disk (the
//! dispatcher syncs before anything it read leaves the process), and a
//! failed sync comes after the commit, so [`Error::Io`] from a write means
//! "committed, but durability unknown" (and every later write fails: a
//! sync error is not trusted to be reported twice). A `file:` URI keeps
//! SQLite's own `synchronous=FULL`, since it may name another VFS.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, ErrorCode, OpenFlags, TransactionBehavior};

use crate::error::{Error, OpenProblem, Result};
use crate::schema::{FROM_LEGACY, LEGACY, MIGRATIONS};
use crate::sql::Sql;

/// How hard SQLite works to keep committed data on power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Every write is on disk before it returns; nothing committed is lost
    /// even on power loss. The default. (keyhook commits with
    /// `synchronous=NORMAL` and syncs the WAL itself after releasing the
    /// write lock, so concurrent writers share one sync; see [`Database`].)
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
    #[cfg(feature = "postgres")]
    Postgres(Arc<crate::pg::Pool>),
}

/// Settings for opening a [`Database`]; start with [`Database::builder`].
#[derive(Debug, Clone)]
pub struct DatabaseBuilder {
    durability: Durability,
    busy_timeout: Duration,
    max_idle: usize,
    #[cfg(feature = "postgres")]
    schema: String,
    #[cfg(feature = "postgres")]
    max_connections: usize,
}

impl Default for DatabaseBuilder {
    fn default() -> Self {
        DatabaseBuilder {
            durability: Durability::Full,
            busy_timeout: Duration::from_secs(5),
            max_idle: 16,
            #[cfg(feature = "postgres")]
            schema: "keyhook".to_owned(),
            #[cfg(feature = "postgres")]
            max_connections: 16,
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
    /// brings its schema up to date. `path` may also be a SQLite `file:`
    /// URI. Directories are never created.
    ///
    /// # Errors
    ///
    /// [`Error::Open`] naming the path and the [`OpenProblem`]: the path is
    /// a directory, its directory is missing or is not one, access is
    /// denied, the database is read-only (refused here, not at the first
    /// write), or another connection or process held a lock on it past the
    /// busy timeout. [`Error::NotADatabase`] if the file is not SQLite,
    /// [`Error::SchemaTooNew`] if a newer keyhook wrote it,
    /// [`Error::Database`] for other SQLite errors.
    pub fn open(self, path: impl AsRef<Path>) -> Result<Database> {
        Database::from_parts(Target::File(path.as_ref().to_path_buf()), self)
    }

    /// The PostgreSQL schema keyhook's tables live in (created if
    /// missing). Default: `keyhook`. Lowercase letters, digits and
    /// underscores; checked by [`open_postgres`](Self::open_postgres).
    #[cfg(feature = "postgres")]
    pub fn schema(mut self, schema: &str) -> Self {
        self.schema = schema.to_owned();
        self
    }

    /// The most connections to PostgreSQL the pool opens at once (its
    /// notification listener is one more). Default: 16. A thread that finds
    /// them all in use waits up to the busy timeout for one, then gets
    /// [`Error::PostgresOpen`] with
    /// [`PgProblem::PoolExhausted`](crate::PgProblem::PoolExhausted).
    #[cfg(feature = "postgres")]
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// Connects to PostgreSQL (feature `postgres`) at `url`, a
    /// `postgres://user:password@host:port/database` URL or a
    /// `host=... user=... dbname=...` string, and brings keyhook's schema
    /// ([`schema`](Self::schema)) up to date. Several processes (app
    /// servers) may open the same database and schema: they share one
    /// delivery queue. Connections are pooled (at most
    /// [`max_connections`](Self::max_connections) open,
    /// [`max_idle_connections`](Self::max_idle_connections) kept idle) and
    /// replaced when the server closes them (a restart, a terminated
    /// backend). [`busy_timeout`](Self::busy_timeout) becomes the
    /// sessions' `lock_timeout`; [`durability`](Self::durability) does not
    /// apply: commits are as durable as the server's `synchronous_commit`.
    ///
    /// # Errors
    ///
    /// [`Error::PostgresOpen`] with a [`PgProblem`](crate::PgProblem): the
    /// URL does not parse, no server answers, authentication fails, the
    /// database does not exist, or the user may not create the schema.
    /// The password never appears in an error, a log line or `Debug`.
    /// [`Error::SchemaTooNew`] if a newer keyhook migrated the schema;
    /// [`Error::InvalidInput`] for a bad schema name.
    ///
    /// Leases and retry times are each process's own clock: keep the app
    /// servers' clocks in step (NTP), as for any lease-based queue. Each
    /// process opens at most [`max_connections`](Self::max_connections)
    /// (plus one to listen): size the server's `max_connections` for every
    /// app server's.
    #[cfg(feature = "postgres")]
    pub fn open_postgres(self, url: &str) -> Result<Database> {
        let target = crate::pg::Target::new(url, &self.schema, self.busy_timeout)?;
        let pool = crate::pg::Pool::open(target, self.max_idle, self.max_connections)?;
        Ok(Database::with_target(
            Target::Postgres(Arc::new(pool)),
            self,
        ))
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
/// process share one write connection and queue on a mutex (no polling in
/// SQLite's busy handler); other processes on the same file meet the busy
/// timeout. An in-memory database lives inside its single connection, so
/// there operations take turns on it.
///
/// # Durability
///
/// [`Durability::Full`] (the default): every write is on disk before it
/// returns, so nothing committed is lost even on power loss. keyhook syncs
/// the WAL itself, after releasing the write lock, so concurrent writers
/// share one sync (group commit) instead of paying one each inside the
/// lock. Other connections can see a commit a moment before it is synced;
/// keyhook's dispatcher syncs before it sends anything it claimed, so a
/// webhook never goes out for an event that power loss could take back
/// (a second process on the same file may, within that moment).
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
    /// This process's write connection; its mutex serializes the process's
    /// write transactions, so writers queue on a mutex instead of polling
    /// SQLite's lock in the busy handler's sleeps (other processes still
    /// meet the busy timeout). All writes share one connection so that its
    /// page cache stays valid between them: SQLite drops a connection's
    /// whole cache whenever another connection has written.
    writer: Mutex<Writer>,
    /// Commits made on `writer` so far. Under [`Durability::Full`] it commits
    /// with `synchronous=NORMAL` and [`Database::sync`] syncs the WAL after
    /// the write lock is released, so one sync serves every commit made
    /// before it began, and writers never wait for the disk while holding
    /// the lock.
    commits: AtomicU64,
    /// Every commit up to this count is on disk.
    synced: AtomicU64,
    /// The WAL file, opened for syncing; its mutex lets one sync run at a
    /// time. `None` until first needed, and again after the write
    /// connection is replaced (the WAL may have been recreated).
    wal: Mutex<Option<File>>,
    /// Whether commits need [`Database::sync`]: [`Durability::Full`] on a
    /// plain file path. (A `file:` URI may name another VFS or options that
    /// keyhook's own sync would not honour; there the write connection
    /// keeps SQLite's `synchronous=FULL`.)
    syncs: bool,
    /// Set when a sync failed; every later sync fails.
    sync_failed: AtomicBool,
    /// Syncs made (for tests and debugging).
    syncs_made: AtomicU64,
    /// The database file's full path as SQLite resolved it (the WAL is
    /// this plus `-wal`), so a later change of working directory does not
    /// matter.
    main_file: OnceLock<PathBuf>,
    /// Writers waiting for `writer`; background work yields to them.
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

    /// Connects to PostgreSQL with default settings (schema `keyhook`).
    ///
    /// # Errors
    ///
    /// As [`DatabaseBuilder::open_postgres`].
    #[cfg(feature = "postgres")]
    pub fn open_postgres(url: &str) -> Result<Database> {
        Database::builder().open_postgres(url)
    }

    /// The schema version this build of keyhook writes.
    pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

    /// The file this handle opened, or `None` for an in-memory database.
    pub fn path(&self) -> Option<&Path> {
        match &self.inner.target {
            Target::File(p) => Some(p),
            _ => None,
        }
    }

    /// The PostgreSQL pool, if this handle is on PostgreSQL.
    #[cfg(feature = "postgres")]
    pub(crate) fn pg(&self) -> Option<&crate::pg::Pool> {
        match &self.inner.target {
            Target::Postgres(pool) => Some(pool),
            _ => None,
        }
    }

    fn from_parts(target: Target, settings: DatabaseBuilder) -> Result<Database> {
        let db = Database::with_target(target, settings);
        let opened = db.inner.connect().and_then(|mut conn| {
            if let Some(path) = conn.path().filter(|p| !p.is_empty()) {
                let _ = db.inner.main_file.set(PathBuf::from(path));
            }
            migrate(&mut conn, db.path())?;
            Ok(conn)
        });
        let conn = match (opened, db.path()) {
            (Ok(conn), _) => conn,
            (Err(e), Some(path)) => return Err(open_error(path, e)),
            (Err(e), None) => return Err(e),
        };
        db.inner.lock_idle().push(conn);
        Ok(db)
    }

    fn with_target(target: Target, settings: DatabaseBuilder) -> Database {
        let syncs = settings.durability == Durability::Full
            && matches!(&target, Target::File(p) if !p.as_os_str().as_encoded_bytes().starts_with(b"file:"));
        Database {
            inner: Arc::new(Inner {
                target,
                settings,
                idle: Mutex::new(Vec::new()),
                writer: Mutex::new(Writer {
                    conn: None,
                    data_version: None,
                }),
                commits: AtomicU64::new(0),
                synced: AtomicU64::new(0),
                wal: Mutex::new(None),
                syncs,
                sync_failed: AtomicBool::new(false),
                syncs_made: AtomicU64::new(0),
                main_file: OnceLock::new(),
                waiting_writers: AtomicUsize::new(0),
                returned: Condvar::new(),
            }),
        }
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
                #[cfg(feature = "postgres")]
                Target::Postgres(_) => unreachable!("PostgreSQL runs through its pool"),
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
    /// returns `Ok`; an `Err` rolls everything back. Under
    /// [`Durability::Full`] the commit is on disk when this returns.
    pub(crate) fn write<T>(&self, f: impl FnOnce(Sql<'_>) -> Result<T>) -> Result<T> {
        let (value, commit) = self.commit(Turn::Writer, f)?;
        self.sync(commit)?;
        Ok(value)
    }

    /// Like [`write`](Self::write), but returns as soon as the transaction
    /// is committed, before it is synced to disk: call [`sync`](Self::sync)
    /// with the mark before anything relies on it surviving power loss.
    /// Other connections see the commit at once.
    pub(crate) fn write_unsynced<T>(
        &self,
        f: impl FnOnce(Sql<'_>) -> Result<T>,
    ) -> Result<(T, CommitMark)> {
        self.commit(Turn::Writer, f)
    }

    /// Like [`write`](Self::write), but on PostgreSQL without waiting for
    /// this process's other writers: the server runs such transactions side
    /// by side (and commits them together). For writes that do not rely on
    /// the writers of one process taking turns: emits, whose rows are new
    /// and whose idempotency keys are guarded by a unique index. On SQLite,
    /// which has one writer, the same as `write`.
    pub(crate) fn write_concurrent<T>(&self, f: impl FnOnce(Sql<'_>) -> Result<T>) -> Result<T> {
        #[cfg(feature = "postgres")]
        if let Target::Postgres(pool) = &self.inner.target {
            return pool.write(f);
        }
        self.write(f)
    }

    /// A connection of its own to the same SQLite file, set up as the
    /// pool's are, for a reader that keeps one (verify's cache watches
    /// `data_version` on it); `None` in memory and on PostgreSQL.
    pub(crate) fn extra_connection(&self) -> Result<Option<Connection>> {
        match &self.inner.target {
            Target::File(_) => Ok(Some(self.inner.connect()?)),
            _ => Ok(None),
        }
    }

    /// The wal-index (`-shm`) file of a plain file path, as SQLite resolved
    /// it (a `file:` URI may name another VFS, which may keep the index
    /// elsewhere: `None` there, in memory and on PostgreSQL).
    pub(crate) fn wal_index_path(&self) -> Option<PathBuf> {
        match &self.inner.target {
            Target::File(p) if !p.as_os_str().as_encoded_bytes().starts_with(b"file:") => {
                let mut name = self.inner.main_file.get()?.as_os_str().to_owned();
                name.push("-shm");
                Some(PathBuf::from(name))
            }
            _ => None,
        }
    }

    /// Whether writes of one process run side by side (PostgreSQL) rather
    /// than one at a time (SQLite).
    pub(crate) fn concurrent_writes(&self) -> bool {
        #[cfg(feature = "postgres")]
        if let Target::Postgres(_) = &self.inner.target {
            return true;
        }
        false
    }

    /// Like [`write`](Self::write), for background work (retention): waits
    /// until no other writer of this process is waiting, so a long series
    /// of these never delays an emit by more than one transaction.
    pub(crate) fn write_background<T>(&self, f: impl FnOnce(Sql<'_>) -> Result<T>) -> Result<T> {
        let (value, commit) = self.commit(Turn::Background, f)?;
        self.sync(commit)?;
        Ok(value)
    }

    fn commit<T>(
        &self,
        turn: Turn,
        f: impl FnOnce(Sql<'_>) -> Result<T>,
    ) -> Result<(T, CommitMark)> {
        let inner = &self.inner;
        #[cfg(feature = "postgres")]
        if let Target::Postgres(pool) = &inner.target {
            // Writes of one process take turns, as on SQLite: the
            // dispatcher's steps assume they do. Commits are durable when
            // COMMIT returns: nothing to sync.
            let _turn = inner.lock_writer(turn);
            return Ok((pool.write(f)?, CommitMark(0)));
        }
        if let Target::Memory = inner.target {
            // One connection, shared with readers: check it out first, as
            // readers do. Nothing to sync.
            let mut conn = self.conn()?;
            let _turn = inner.lock_writer(turn);
            return Ok((immediate(&mut conn, f)?, CommitMark(0)));
        }
        if self.sync_failed() {
            // Nothing more is committed that could not be made durable.
            return Err(sync_failed_error());
        }
        let queued_at = Instant::now();
        let mut writer = inner.lock_writer(turn);
        let conn = writer.connection(inner)?;
        // One busy timeout covers the wait for this process's writer and
        // for SQLite's lock together: writers queued behind a lock held
        // elsewhere fail after one timeout each, not after their turns.
        // (Background work waits its turn on purpose: not counted.)
        let busy = inner.settings.busy_timeout;
        let waited = queued_at.elapsed();
        let value = if turn == Turn::Writer && waited > Duration::from_millis(1) {
            conn.busy_timeout(busy.saturating_sub(waited))?;
            let restore = RestoreBusy(conn, busy);
            immediate(restore.0, f)
        } else {
            immediate(conn, f)
        };
        let value = value?;
        let mark = inner.commits.fetch_add(1, Ordering::SeqCst) + 1;
        Ok((value, CommitMark(mark)))
    }

    /// Makes sure the commit `mark` (and every earlier one) is on disk
    /// under [`Durability::Full`]: syncs the WAL unless a sync that began
    /// after that commit has already finished. Concurrent callers share one
    /// sync (group commit); no lock on the database is held meanwhile.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the sync fails: the commit stands, but whether it
    /// would survive power loss is unknown.
    ///
    /// A failed sync is final for this handle: Linux reports a lost write
    /// once, and a later sync of the same file may succeed without those
    /// pages on disk, so every later sync fails too until the database is
    /// opened again.
    pub(crate) fn sync(&self, mark: CommitMark) -> Result<()> {
        let inner = &self.inner;
        if !inner.syncs || mark.0 <= inner.synced.load(Ordering::SeqCst) {
            return Ok(());
        }
        let mut wal = inner.wal.lock().unwrap_or_else(|e| e.into_inner());
        inner.sync_locked(&mut wal, mark)
    }

    /// Syncs the WAL now, whatever has been synced: for anything read from
    /// the database that is about to leave the process (a reader may see a
    /// commit, of this process or another, before any sync covers it).
    pub(crate) fn sync_now(&self) -> Result<()> {
        let inner = &self.inner;
        if !inner.syncs {
            return Ok(());
        }
        // A sync that begins after this count covers it.
        let mark = CommitMark(inner.commits.load(Ordering::SeqCst) + 1);
        let mut wal = inner.wal.lock().unwrap_or_else(|e| e.into_inner());
        inner.sync_locked(&mut wal, mark)
    }

    /// Whether another connection (another process, or a host transaction
    /// on its own connection) has committed since the last call: SQLite's
    /// `data_version` as the write connection sees it, which this process's
    /// own writes do not change. Always false in memory.
    pub(crate) fn changed_elsewhere(&self) -> Result<bool> {
        match &self.inner.target {
            Target::Memory => return Ok(false),
            #[cfg(feature = "postgres")]
            Target::Postgres(pool) => return pool.changed_elsewhere(),
            Target::File(_) => {}
        }
        let mut writer = self.inner.lock_writer(Turn::Writer);
        let version: i64 = writer
            .connection(&self.inner)?
            .prepare_cached("PRAGMA data_version")?
            .query_row((), |r| r.get(0))?;
        Ok(writer
            .data_version
            .replace(version)
            .is_some_and(|v| v != version))
    }

    /// Makes the handle behave as after a failed sync (for tests).
    #[cfg(test)]
    pub(crate) fn fail_syncs(&self) {
        self.inner.sync_failed.store(true, Ordering::SeqCst);
    }

    /// Whether a sync failed, so that nothing more can be made durable.
    pub(crate) fn sync_failed(&self) -> bool {
        self.inner.syncs && self.inner.sync_failed.load(Ordering::SeqCst)
    }

    /// Runs `f` on a checked-out connection, outside any explicit transaction.
    pub(crate) fn read<T>(&self, f: impl FnOnce(Sql<'_>) -> Result<T>) -> Result<T> {
        #[cfg(feature = "postgres")]
        if let Target::Postgres(pool) = &self.inner.target {
            return pool.read(f);
        }
        let conn = self.conn()?;
        f(Sql::Lite(&conn))
    }
}

fn sync_failed_error() -> Error {
    Error::Io(std::io::Error::other(
        "an earlier sync of the database to disk failed; open the database again",
    ))
}

/// Puts a connection's busy timeout back when dropped (a panic included).
struct RestoreBusy<'a>(&'a mut Connection, Duration);

impl Drop for RestoreBusy<'_> {
    fn drop(&mut self) {
        // Nothing to report if it fails: the commit already stands, and
        // the next write sets it again if it must.
        let _ = self.0.busy_timeout(self.1);
    }
}

/// How a write transaction waits for its turn.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Turn {
    /// Queue on the write lock.
    Writer,
    /// Let every other waiting writer go first.
    Background,
}

/// A commit of the write connection, to pass to [`Database::sync`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct CommitMark(u64);

/// The write connection of a file database.
struct Writer {
    /// Opened on first use; replaced if it was left inside a transaction.
    conn: Option<Connection>,
    /// `data_version` at the last [`Database::changed_elsewhere`].
    data_version: Option<i64>,
}

impl Writer {
    /// The write connection, opened if needed.
    fn connection(&mut self, inner: &Inner) -> Result<&mut Connection> {
        if self.conn.as_ref().is_some_and(|c| !c.is_autocommit()) {
            // A panic inside a transaction: start over on a fresh connection.
            self.conn = None;
        }
        match &mut self.conn {
            Some(conn) => Ok(conn),
            slot @ None => {
                let conn = inner.connect()?;
                // A new connection counts versions afresh.
                self.data_version = None;
                if inner.syncs {
                    // Commits are synced by `Database::sync`, outside the lock.
                    conn.pragma_update(None, "synchronous", "NORMAL")?;
                }
                // The WAL may be a new file now: reopen it for syncing.
                *inner.wal.lock().unwrap_or_else(|e| e.into_inner()) = None;
                Ok(slot.insert(conn))
            }
        }
    }
}

impl Inner {
    /// Syncs the WAL (its lock held as `wal`) unless `mark` is covered.
    fn sync_locked(&self, wal: &mut Option<File>, mark: CommitMark) -> Result<()> {
        if self.sync_failed.load(Ordering::SeqCst) {
            return Err(sync_failed_error());
        }
        if mark.0 <= self.synced.load(Ordering::SeqCst) {
            return Ok(());
        }
        // Every commit counted so far has written its WAL frames.
        let upto = self.commits.load(Ordering::SeqCst);
        let file = match wal {
            Some(file) => file,
            slot @ None => slot.insert(self.open_wal()?),
        };
        self.syncs_made.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = file.sync_data() {
            self.sync_failed.store(true, Ordering::SeqCst);
            log::error!(
                "keyhook: syncing the database to disk failed: {e}; every later write will fail until it is opened again"
            );
            return Err(e.into());
        }
        self.synced.fetch_max(upto, Ordering::SeqCst);
        Ok(())
    }

    /// Opens the WAL file for syncing, and syncs its directory once so that
    /// a newly created WAL's name is on disk too.
    fn open_wal(&self) -> Result<File> {
        let path = match (self.main_file.get(), &self.target) {
            (Some(path), _) | (None, Target::File(path)) => path,
            _ => unreachable!("only file databases sync"),
        };
        let mut name = path.as_os_str().to_owned();
        name.push("-wal");
        // Write access: Windows needs it to flush a file.
        let file = OpenOptions::new().read(true).write(true).open(&name)?;
        #[cfg(unix)]
        if let Some(dir) = path.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            // As SQLite does, ignore a failure: some file systems cannot
            // sync a directory.
            if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
                log::debug!("keyhook: syncing the database's directory failed: {e}");
            }
        }
        Ok(file)
    }

    /// Takes this process's write lock, in `turn`.
    fn lock_writer(&self, turn: Turn) -> MutexGuard<'_, Writer> {
        let lock = || self.writer.lock().unwrap_or_else(|e| e.into_inner());
        if turn == Turn::Writer {
            self.waiting_writers.fetch_add(1, Ordering::SeqCst);
            let guard = lock();
            self.waiting_writers.fetch_sub(1, Ordering::SeqCst);
            return guard;
        }
        loop {
            while self.waiting_writers.load(Ordering::SeqCst) > 0 {
                std::thread::sleep(Duration::from_micros(200));
            }
            let guard = lock();
            if self.waiting_writers.load(Ordering::SeqCst) == 0 {
                return guard;
            }
        }
    }

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
            Target::File(path) => {
                let conn =
                    Connection::open_with_flags(path, flags).map_err(|e| file_error(path, e))?;
                // SQLite quietly opens a file it may not write read-only
                // (no write permission, an immutable file, a read-only
                // file system, a `mode=ro` URI), and every write would
                // fail later: refuse it now, naming it.
                if conn.is_readonly(rusqlite::MAIN_DB)? {
                    return Err(Error::Open {
                        path: path.clone(),
                        problem: OpenProblem::ReadOnly,
                        source: None,
                    });
                }
                conn
            }
            Target::Memory => Connection::open_in_memory()?,
            #[cfg(feature = "postgres")]
            Target::Postgres(_) => unreachable!("PostgreSQL runs through its pool"),
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
        setup(&conn).map_err(|e| match &self.target {
            Target::File(path) => file_error(path, e),
            _ => Error::from(e),
        })?;
        Ok(conn)
    }
}

/// The error for `e`, which SQLite gave while opening or setting up a
/// connection to the file at `path`. A lock stays [`Error::Locked`] here:
/// a connection opened later, mid-operation, meets it like any statement
/// (see [`open_error`] for the first one).
fn file_error(path: &Path, e: rusqlite::Error) -> Error {
    let problem = match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) => {
            return Error::NotADatabase {
                path: path.to_path_buf(),
                source: e,
            };
        }
        Some(ErrorCode::CannotOpen) => diagnose(path),
        Some(ErrorCode::ReadOnly) => OpenProblem::ReadOnly,
        Some(ErrorCode::PermissionDenied) => OpenProblem::PermissionDenied,
        _ => return Error::from(e),
    };
    Error::Open {
        path: path.to_path_buf(),
        problem,
        source: Some(e),
    }
}

/// The error [`Database::open`] returns for `e`, met while opening the
/// file at `path` and bringing its schema up to date: a lock held past the
/// busy timeout, or a write refused as read-only, is a problem with
/// opening that file.
fn open_error(path: &Path, e: Error) -> Error {
    let (problem, source) = match e {
        Error::Locked(source) => (OpenProblem::Locked, source),
        Error::Database(source) if source.sqlite_error_code() == Some(ErrorCode::ReadOnly) => {
            (OpenProblem::ReadOnly, source)
        }
        other => return other,
    };
    Error::Open {
        path: path.to_path_buf(),
        problem,
        source: Some(source),
    }
}

/// Why SQLite could not open `path`: SQLite says only "unable to open
/// database file", so the file system is asked. Nothing is changed, except
/// that when the file is missing from an existing directory, creating it
/// (as SQLite just tried to) is tried once more to learn the OS's reason,
/// and the file is removed again if that works.
fn diagnose(path: &Path) -> OpenProblem {
    use std::io::ErrorKind;
    // A `file:` URI is not a path: only SQLite knows what it names.
    if path.as_os_str().as_encoded_bytes().starts_with(b"file:") {
        return OpenProblem::Other;
    }
    let from_kind = |kind: ErrorKind| match kind {
        ErrorKind::NotADirectory => OpenProblem::ParentNotADirectory,
        ErrorKind::IsADirectory => OpenProblem::IsADirectory,
        ErrorKind::PermissionDenied => OpenProblem::PermissionDenied,
        ErrorKind::ReadOnlyFilesystem => OpenProblem::ReadOnly,
        _ => OpenProblem::Other,
    };
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => OpenProblem::IsADirectory,
        Ok(_) => match OpenOptions::new().read(true).write(true).open(path) {
            Ok(_) => OpenProblem::Other,
            Err(e) => from_kind(e.kind()),
        },
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let parent = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            match std::fs::metadata(parent) {
                Ok(meta) if !meta.is_dir() => OpenProblem::ParentNotADirectory,
                Ok(_) => match OpenOptions::new().write(true).create_new(true).open(path) {
                    Ok(created) => {
                        drop(created);
                        let _ = std::fs::remove_file(path);
                        OpenProblem::Other
                    }
                    Err(e) => from_kind(e.kind()),
                },
                Err(e) if e.kind() == ErrorKind::NotFound => OpenProblem::ParentMissing,
                Err(e) => from_kind(e.kind()),
            }
        }
        Err(e) => from_kind(e.kind()),
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
fn immediate<T>(conn: &mut Connection, f: impl FnOnce(Sql<'_>) -> Result<T>) -> Result<T> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let value = f(Sql::Lite(&tx))?;
    tx.commit()?;
    Ok(value)
}

/// Applies the migrations the database lacks, all in one transaction,
/// recording each in `keyhook_migrations`. A keyhook 0.1 file is upgraded
/// in place first; any other file (the host's own included) gets keyhook's
/// tables beside what it holds, and its `user_version` is left alone.
fn migrate(conn: &mut Connection, path: Option<&Path>) -> Result<()> {
    let map_open_err = |e: rusqlite::Error| match (path, e.sqlite_error_code()) {
        (Some(path), Some(ErrorCode::NotADatabase)) => Error::NotADatabase {
            path: path.to_path_buf(),
            source: e,
        },
        _ => Error::from(e),
    };
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(map_open_err)?;
    if !table_exists(&tx, "keyhook_migrations").map_err(map_open_err)? {
        tx.execute_batch(
            "CREATE TABLE keyhook_migrations (
                version    INTEGER PRIMARY KEY,
                applied_at INTEGER NOT NULL
            )",
        )?;
        if let Some(legacy) = legacy_version(&tx)? {
            for sql in &LEGACY[legacy as usize..] {
                tx.execute_batch(sql)?;
            }
            for sql in FROM_LEGACY {
                tx.execute_batch(sql)?;
            }
            tx.execute(
                "INSERT INTO keyhook_migrations (version, applied_at) VALUES (1, ?1)",
                [now_ms()],
            )?;
        }
    }
    let found: u32 = tx.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM keyhook_migrations",
        [],
        |r| r.get(0),
    )?;
    let supported = MIGRATIONS.len() as u32;
    if found > supported {
        return Err(Error::SchemaTooNew { found, supported });
    }
    for (version, batches) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        for sql in *batches {
            tx.execute_batch(sql)?;
        }
        tx.execute(
            "INSERT INTO keyhook_migrations (version, applied_at) VALUES (?1, ?2)",
            rusqlite::params![version as i64 + 1, now_ms()],
        )?;
    }
    tx.commit()?;
    Ok(())
}

fn table_exists(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?1)",
        [name],
        |r| r.get(0),
    )
}

/// The schema version of a file written by keyhook 0.1 (kept in
/// `user_version`, beside its unprefixed tables), or `None` for any other
/// file: a host's `user_version` is never taken for keyhook's.
fn legacy_version(conn: &Connection) -> Result<Option<u32>> {
    let version: u32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version == 0 || version as usize > LEGACY.len() {
        return Ok(None);
    }
    // 0.1's first migration made these two tables with these columns.
    let keyhook_columns: i64 = conn.query_row(
        "SELECT (SELECT COUNT(*) FROM pragma_table_info('api_keys')
                 WHERE name IN ('hash_kind', 'org_enabled', 'revoke_at'))
              + (SELECT COUNT(*) FROM pragma_table_info('organizations')
                 WHERE name = 'api_keys_enabled')",
        [],
        |r| r.get(0),
    )?;
    Ok((keyhook_columns == 4).then_some(version))
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

    fn sync_mode(tx: Sql<'_>) -> Result<i64> {
        tx.query_row("PRAGMA synchronous", (), |r| r.get(0))
    }

    /// A database file (default settings) with a table `t (x)`, created
    /// by one synced write.
    fn file_db_with_table() -> (tempfile::TempDir, Database) {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path().join("db.sqlite3")).unwrap();
        db.write(|tx| tx.execute_batch("CREATE TABLE t (x)"))
            .unwrap();
        (dir, db)
    }

    fn counts(db: &Database) -> (u64, u64) {
        (
            db.inner.commits.load(Ordering::SeqCst),
            db.inner.synced.load(Ordering::SeqCst),
        )
    }

    #[test]
    fn full_durability_syncs_every_write_before_it_returns() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path().join("db.sqlite3")).unwrap();
        // The write connection commits with NORMAL (1); Database::sync
        // makes each commit durable after the lock is released.
        assert_eq!(db.write(sync_mode).unwrap(), 1);
        assert_eq!(counts(&db), (1, 1));
        db.write_background(sync_mode).unwrap();
        assert_eq!(counts(&db), (2, 2));
        // Unsynced: committed and visible, synced only when asked.
        let ((), mark) = db
            .write_unsynced(|tx| tx.execute_batch("CREATE TABLE t (x)"))
            .unwrap();
        assert_eq!(counts(&db), (3, 2));
        let ((), later) = db
            .write_unsynced(|tx| tx.execute_batch("INSERT INTO t VALUES (1)"))
            .unwrap();
        assert!(later > mark);
        db.sync(mark).unwrap();
        // One sync covers every commit made before it began.
        assert_eq!(counts(&db), (4, 4));
        db.sync(later).unwrap();
        assert_eq!(counts(&db), (4, 4));
        // A failed transaction commits nothing and needs no sync.
        let failed = db.write(|tx| -> Result<()> {
            tx.execute_batch("INSERT INTO t VALUES (2)")?;
            Err(Error::invalid("x", "test"))
        });
        assert!(failed.is_err());
        assert_eq!(counts(&db), (4, 4));
    }

    #[test]
    fn concurrent_writes_all_end_synced() {
        let (_dir, db) = file_db_with_table();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for i in 0..50 {
                        db.write(|tx| tx.execute("INSERT INTO t VALUES (?1)", [i]))
                            .unwrap();
                        let (commits, synced) = counts(&db);
                        assert!(synced <= commits);
                    }
                });
            }
        });
        let (commits, synced) = counts(&db);
        assert_eq!((commits, synced), (201, 201));
        // Never more syncs than commits (fewer when writers overlapped).
        assert!(db.inner.syncs_made.load(Ordering::SeqCst) <= 201);
    }

    #[test]
    fn a_failed_sync_fails_every_later_write() {
        let (_dir, db) = file_db_with_table();
        // As if fdatasync had reported EIO: the kernel reports a lost write
        // once, so no later sync may be trusted.
        db.inner.sync_failed.store(true, Ordering::SeqCst);
        let err = db
            .write(|tx| tx.execute_batch("INSERT INTO t VALUES (1)"))
            .unwrap_err();
        assert!(matches!(err, Error::Io(_)), "{err:?}");
        assert!(err.to_string().contains("I/O"), "{err}");
        assert!(db.sync_now().is_err());
        assert!(db.sync_failed());
        assert!(db.write_unsynced(|_| Ok(())).is_err());
        // Refused before it began: nothing was committed that cannot be
        // made durable.
        let rows: i64 = db
            .read(|c| c.query_row("SELECT COUNT(*) FROM t", (), |r| r.get(0)))
            .unwrap();
        assert_eq!(rows, 0);
        assert_eq!(counts(&db), (1, 1));
        // What was synced before the failure stays synced.
        assert!(db.sync(CommitMark(1)).is_ok());
    }

    #[test]
    fn sync_now_syncs_even_when_everything_counted_is_synced() {
        let (dir, db) = file_db_with_table();
        assert_eq!(counts(&db), (1, 1));
        // Another connection's commit is not counted; sync_now covers it.
        let other = Connection::open(dir.path().join("db.sqlite3")).unwrap();
        other.execute("INSERT INTO t VALUES (1)", []).unwrap();
        let before = db.inner.syncs_made.load(Ordering::SeqCst);
        db.sync_now().unwrap();
        assert_eq!(db.inner.syncs_made.load(Ordering::SeqCst), before + 1);
        assert_eq!(counts(&db), (1, 1));
    }

    #[cfg(unix)]
    #[test]
    fn the_synced_file_is_the_wal_sqlite_writes() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite3");
        let db = Database::open(&path).unwrap();
        db.write(|tx| tx.execute_batch("CREATE TABLE t (x)"))
            .unwrap();
        let wal = std::fs::metadata(dir.path().join("db.sqlite3-wal")).unwrap();
        let guard = db.inner.wal.lock().unwrap();
        let synced = guard.as_ref().unwrap().metadata().unwrap();
        assert_eq!((synced.dev(), synced.ino()), (wal.dev(), wal.ino()));
        // SQLite's frames are in it.
        assert!(wal.len() > 32);
    }

    #[test]
    fn a_uri_keeps_sqlites_own_full_sync() {
        let dir = tempfile::tempdir().unwrap();
        let uri = format!("file:{}", dir.path().join("db.sqlite3").display());
        let db = Database::open(uri).unwrap();
        assert_eq!(db.write(sync_mode).unwrap(), 2);
        assert_eq!(counts(&db), (1, 0));
    }

    #[test]
    fn changes_by_other_connections_are_noticed_and_our_own_are_not() {
        let (dir, db) = file_db_with_table();
        assert!(!db.changed_elsewhere().unwrap(), "first call sets the mark");
        db.write(|tx| tx.execute_batch("INSERT INTO t VALUES (1)"))
            .unwrap();
        assert!(!db.changed_elsewhere().unwrap(), "our own write");
        let other = Connection::open(dir.path().join("db.sqlite3")).unwrap();
        other.execute("INSERT INTO t VALUES (2)", []).unwrap();
        assert!(db.changed_elsewhere().unwrap());
        assert!(!db.changed_elsewhere().unwrap(), "told once");
        // Another handle on the same file is another connection.
        let second = Database::open(dir.path().join("db.sqlite3")).unwrap();
        second
            .write(|tx| tx.execute_batch("INSERT INTO t VALUES (3)"))
            .unwrap();
        assert!(db.changed_elsewhere().unwrap());
        assert!(
            !Database::open_in_memory()
                .unwrap()
                .changed_elsewhere()
                .unwrap()
        );
    }

    #[test]
    fn normal_durability_never_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::builder()
            .durability(Durability::Normal)
            .open(dir.path().join("db.sqlite3"))
            .unwrap();
        assert_eq!(db.write(sync_mode).unwrap(), 1);
        assert_eq!(counts(&db), (1, 0));
    }

    #[test]
    fn the_wal_is_found_by_absolute_path() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path().join("db.sqlite3")).unwrap();
        assert!(db.inner.main_file.get().unwrap().is_absolute());
        let expected = dir.path().canonicalize().unwrap().join("db.sqlite3");
        let resolved = db.inner.main_file.get().unwrap().canonicalize().unwrap();
        assert_eq!(resolved, expected);
    }

    #[test]
    fn a_panic_inside_a_write_leaves_the_writer_usable() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path().join("db.sqlite3")).unwrap();
        db.write(|tx| tx.execute_batch("CREATE TABLE t (x INTEGER)"))
            .unwrap();
        let db2 = db.clone();
        let panicked = std::thread::spawn(move || {
            db2.write(|tx| -> Result<()> {
                tx.execute_batch("INSERT INTO t VALUES (1)")?;
                panic!("inside a write");
            })
        })
        .join();
        assert!(panicked.is_err());
        // The half-done transaction was rolled back; the next write works.
        db.write(sync_mode).unwrap();
        let rows: i64 = db
            .write(|tx| tx.query_row("SELECT COUNT(*) FROM t", (), |r| r.get(0)))
            .unwrap();
        assert_eq!(rows, 0);
    }

    #[test]
    fn in_memory_opens_at_current_schema() {
        let db = Database::open_in_memory().unwrap();
        let (v, user_version): (u32, u32) = db
            .read(|c| {
                Ok((
                    c.query_row("SELECT MAX(version) FROM keyhook_migrations", (), |r| {
                        r.get(0)
                    })?,
                    c.query_row("PRAGMA user_version", (), |r| r.get(0))?,
                ))
            })
            .unwrap();
        assert_eq!(v, Database::SCHEMA_VERSION);
        assert_eq!(user_version, 0, "user_version belongs to the host");
    }
}
