//! The PostgreSQL engine (feature `postgres`): a small pool of sessions,
//! each keeping its statements prepared; values that cross the seam of
//! [`crate::sql`]; the schema's migrations; wake-ups between hosts with
//! `LISTEN`/`NOTIFY`.
//!
//! Why the synchronous `postgres` crate: keyhook is synchronous, and this
//! is the maintained blocking client of the `rust-postgres` project (the
//! same code as `tokio-postgres`, run on a private runtime), with binary
//! parameters, prepared statements and notifications.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use postgres::types::private::BytesMut;
use postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};
use postgres::{Client, NoTls, Statement};

use crate::error::{Error, PgProblem, Result};
use crate::sql::{Arg, translate};

type BoxError = Box<dyn std::error::Error + Sync + Send>;

/// A parameter value, converted to whatever type PostgreSQL inferred for
/// the parameter (SQLite has one integer type; PostgreSQL has three, and
/// infers `integer` for a parameter beside an `integer` literal).
///
/// `Debug` shows only the kind and size: `tokio_postgres` logs every
/// statement's parameters at DEBUG, and some are secrets (signing secrets,
/// endpoint URLs and headers).
pub(crate) enum Value<'a> {
    Null,
    Int(i64),
    Real(f64),
    Text(&'a str),
    Blob(&'a [u8]),
    /// An unsigned value over `i64::MAX`: refused when bound.
    OutOfRange,
}

impl fmt::Debug for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Int(_) => f.write_str("<integer>"),
            Value::Real(_) => f.write_str("<number>"),
            Value::Text(s) => write!(f, "<text, {} bytes>", s.len()),
            Value::Blob(b) => write!(f, "<bytes, {}>", b.len()),
            Value::OutOfRange => f.write_str("<out of range>"),
        }
    }
}

impl ToSql for Value<'_> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> std::result::Result<IsNull, BoxError> {
        match *self {
            Value::Null => Ok(IsNull::Yes),
            Value::OutOfRange => Err("integer out of range".into()),
            Value::Int(n) => match *ty {
                Type::INT8 => n.to_sql(ty, out),
                Type::INT4 => i32::try_from(n)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(n)?.to_sql(ty, out),
                Type::BOOL => (n != 0).to_sql(ty, out),
                Type::FLOAT8 => (n as f64).to_sql(ty, out),
                Type::TEXT | Type::VARCHAR => n.to_string().as_str().to_sql(ty, out),
                _ => Err(format!("cannot bind an integer as {ty}").into()),
            },
            Value::Real(x) => match *ty {
                Type::FLOAT8 => x.to_sql(ty, out),
                Type::FLOAT4 => (x as f32).to_sql(ty, out),
                _ => Err(format!("cannot bind a number as {ty}").into()),
            },
            Value::Text(s) => match *ty {
                Type::JSON => {
                    out.extend_from_slice(s.as_bytes());
                    Ok(IsNull::No)
                }
                Type::JSONB => {
                    out.extend_from_slice(&[1]);
                    out.extend_from_slice(s.as_bytes());
                    Ok(IsNull::No)
                }
                Type::BYTEA => s.as_bytes().to_sql(ty, out),
                _ => s.to_sql(ty, out),
            },
            Value::Blob(b) => b.to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// A column value of any type keyhook's schema uses.
pub(crate) enum Any {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl<'a> FromSql<'a> for Any {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> std::result::Result<Self, BoxError> {
        Ok(match *ty {
            Type::INT8 => Any::Int(i64::from_sql(ty, raw)?),
            Type::INT4 => Any::Int(i32::from_sql(ty, raw)?.into()),
            Type::INT2 => Any::Int(i16::from_sql(ty, raw)?.into()),
            Type::OID => Any::Int(u32::from_sql(ty, raw)?.into()),
            Type::BOOL => Any::Int(bool::from_sql(ty, raw)?.into()),
            Type::FLOAT8 => Any::Real(f64::from_sql(ty, raw)?),
            Type::FLOAT4 => Any::Real(f32::from_sql(ty, raw)?.into()),
            Type::BYTEA => Any::Blob(raw.to_vec()),
            Type::JSON => Any::Text(String::from_utf8(raw.to_vec())?),
            _ => Any::Text(String::from_sql(ty, raw)?),
        })
    }

    fn from_sql_null(_: &Type) -> std::result::Result<Self, BoxError> {
        Ok(Any::Null)
    }

    fn accepts(ty: &Type) -> bool {
        *ty != Type::NUMERIC
    }
}

/// A value read from PostgreSQL that keyhook cannot take (a bug).
pub(crate) fn conversion_error(column: usize, problem: &'static str) -> Error {
    Error::Database(rusqlite::Error::FromSqlConversionFailure(
        column,
        rusqlite::types::Type::Null,
        problem.into(),
    ))
}

/// What [`Sql::Pg`](crate::sql::Sql) runs statements on: a pooled session
/// or a host's own transaction.
pub(crate) trait PgRun {
    fn run_query(&mut self, sql: &str, args: &[&dyn Arg]) -> Result<Vec<postgres::Row>>;
    fn run_execute(&mut self, sql: &str, args: &[&dyn Arg]) -> Result<u64>;
    fn param_count(&mut self, sql: &str) -> Result<usize>;
    /// Runs `sql` unprepared (savepoints).
    fn batch(&mut self, sql: &str) -> Result<()>;
    /// Wakes the dispatchers of other processes when the transaction
    /// commits (`NOTIFY`; repeats within one transaction are folded).
    fn notify(&mut self) -> Result<()>;
}

fn values<'a>(args: &'a [&'a dyn Arg]) -> Vec<Value<'a>> {
    args.iter().map(|a| a.value()).collect()
}

fn refs<'a>(values: &'a [Value<'a>]) -> Vec<&'a (dyn ToSql + Sync)> {
    values.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

/// One connection of the pool, with its prepared statements (by the
/// SQLite text they were translated from).
pub(crate) struct Session {
    client: Client,
    statements: HashMap<String, Statement>,
    /// When the statements are prepared again, and the wait after that.
    replan_at: Instant,
    replan_every: Duration,
    /// Inside `BEGIN` (a write).
    in_transaction: bool,
    /// The transaction made work due: notify after the commit.
    wants_notify: bool,
}

/// Prepared statements kept per session; past this the cache starts over
/// (history pages build their statements from filters).
const MAX_STATEMENTS: usize = 256;

/// The first wait before a session's statements are prepared again, and
/// the longest: see [`Session::statement`].
const FIRST_REPLAN: Duration = Duration::from_millis(250);
const LAST_REPLAN: Duration = Duration::from_secs(600);

impl Session {
    fn new(client: Client) -> Session {
        Session {
            client,
            statements: HashMap::new(),
            in_transaction: false,
            wants_notify: false,
            replan_at: Instant::now() + FIRST_REPLAN,
            replan_every: FIRST_REPLAN,
        }
    }

    /// The prepared statement for `sql`.
    ///
    /// PostgreSQL plans a prepared statement once for all values after a
    /// few runs, by the size its tables had then, and keeps that plan. A
    /// plan made while keyhook's tables were nearly empty (just after they
    /// were created, or purged) scans tables that have since grown to
    /// thousands of rows, for every claim, until autovacuum's next
    /// `ANALYZE`. So the statements are prepared again after 0.25 s, then
    /// after twice as long each time, up to every 10 minutes: plans follow
    /// the tables as they grow, for a dozen preparations in the first
    /// quarter hour.
    fn statement(&mut self, sql: &str) -> Result<Statement> {
        if let Some(s) = self.statements.get(sql) {
            if Instant::now() < self.replan_at {
                return Ok(s.clone());
            }
            self.statements.clear();
            self.replan_every = (self.replan_every * 2).min(LAST_REPLAN);
            self.replan_at = Instant::now() + self.replan_every;
        }
        let stmt = prepare(&mut self.client, &translate(sql), self.in_transaction)?;
        if self.statements.len() >= MAX_STATEMENTS {
            self.statements.clear();
        }
        self.statements.insert(sql.to_owned(), stmt.clone());
        Ok(stmt)
    }
}

impl PgRun for Session {
    fn run_query(&mut self, sql: &str, args: &[&dyn Arg]) -> Result<Vec<postgres::Row>> {
        let stmt = self.statement(sql)?;
        let values = values(args);
        Ok(self.client.query(&stmt, &refs(&values))?)
    }

    fn run_execute(&mut self, sql: &str, args: &[&dyn Arg]) -> Result<u64> {
        let stmt = self.statement(sql)?;
        let values = values(args);
        Ok(self.client.execute(&stmt, &refs(&values))?)
    }

    fn param_count(&mut self, sql: &str) -> Result<usize> {
        Ok(self.statement(sql)?.params().len())
    }

    fn batch(&mut self, sql: &str) -> Result<()> {
        Ok(self.client.batch_execute(sql)?)
    }

    fn notify(&mut self) -> Result<()> {
        // Sent after the commit (`Pool::write`), at most every
        // NOTIFY_INTERVAL per process: a NOTIFY inside the transaction
        // would make the server commit it in turn with every other
        // notifying transaction.
        self.wants_notify = true;
        Ok(())
    }
}

/// Prepares `sql` with `prepare_typed`. A parameter the statement does not
/// use (SQL built from filters numbers its parameters once) has no type
/// PostgreSQL can infer: it is declared `text` and prepared again; the
/// others stay `unknown`, which PostgreSQL infers as usual. Integer
/// parameters are made `bigint`.
/// Inside a transaction each try runs in a savepoint: a failed prepare
/// would abort the transaction.
fn prepare<C: postgres::GenericClient>(
    client: &mut C,
    sql: &str,
    in_tx: bool,
) -> Result<Statement> {
    let mut types: Vec<Type> = Vec::new();
    loop {
        if in_tx {
            client.batch_execute("SAVEPOINT keyhook_prepare")?;
        }
        let prepared = client.prepare_typed(sql, &types);
        if in_tx {
            client.batch_execute(match prepared {
                Ok(_) => "RELEASE keyhook_prepare",
                Err(_) => "ROLLBACK TO keyhook_prepare; RELEASE keyhook_prepare",
            })?;
        }
        match prepared {
            // keyhook's integers are 64-bit: a parameter PostgreSQL took
            // for a 32-bit one (beside an integer literal, `?2 - 1000`)
            // is declared `bigint` instead, so no timestamp overflows it.
            Ok(stmt)
                if stmt
                    .params()
                    .iter()
                    .any(|t| *t == Type::INT4 || *t == Type::INT2) =>
            {
                types = stmt
                    .params()
                    .iter()
                    .zip(types.iter().chain(std::iter::repeat(&Type::UNKNOWN)))
                    .map(|(found, declared)| match *found {
                        Type::INT4 | Type::INT2 => Type::INT8,
                        _ => declared.clone(),
                    })
                    .collect();
            }
            Ok(stmt) => return Ok(stmt),
            Err(e) => {
                // A parameter without a type (unused), or used both beside
                // a 32-bit literal and as a 64-bit column: declared.
                let declared = e.as_db_error().and_then(|db| {
                    let n = db
                        .message()
                        .rsplit_once('$')
                        .and_then(|(_, n)| n.parse::<usize>().ok())
                        .filter(|&n| (1..=100).contains(&n))?;
                    let code = db.code();
                    if *code == postgres::error::SqlState::INDETERMINATE_DATATYPE {
                        Some((n, Type::TEXT))
                    } else if *code == postgres::error::SqlState::AMBIGUOUS_PARAMETER
                        && db.detail().is_some_and(|d| d.contains("bigint"))
                    {
                        Some((n, Type::INT8))
                    } else {
                        None
                    }
                });
                match declared.filter(|(n, ty)| types.get(n - 1) != Some(ty)) {
                    Some((n, ty)) => {
                        if types.len() < n {
                            types.resize(n, Type::UNKNOWN);
                        }
                        types[n - 1] = ty;
                    }
                    None => return Err(e.into()),
                }
            }
        }
    }
}

/// A host's own transaction, for `emit_in_postgres`.
pub(crate) struct HostTx<'a, 'b> {
    pub(crate) tx: &'a mut postgres::Transaction<'b>,
    pub(crate) notify: std::sync::Arc<str>,
}

impl PgRun for HostTx<'_, '_> {
    fn run_query(&mut self, sql: &str, args: &[&dyn Arg]) -> Result<Vec<postgres::Row>> {
        let translated = translate(sql);
        let stmt = prepare(self.tx, &translated, true)?;
        let values = values(args);
        Ok(self.tx.query(&stmt, &refs(&values))?)
    }

    fn run_execute(&mut self, sql: &str, args: &[&dyn Arg]) -> Result<u64> {
        let translated = translate(sql);
        let stmt = prepare(self.tx, &translated, true)?;
        let values = values(args);
        Ok(self.tx.execute(&stmt, &refs(&values))?)
    }

    fn param_count(&mut self, sql: &str) -> Result<usize> {
        let translated = translate(sql);
        Ok(prepare(self.tx, &translated, true)?.params().len())
    }

    fn batch(&mut self, sql: &str) -> Result<()> {
        Ok(self.tx.batch_execute(sql)?)
    }

    fn notify(&mut self) -> Result<()> {
        Ok(self.tx.batch_execute(&self.notify)?)
    }
}

/// Where and how to connect; the password never leaves this struct.
#[derive(Clone)]
pub(crate) struct Target {
    config: postgres::Config,
    /// The schema keyhook's tables live in.
    pub(crate) schema: String,
    /// The notification channel of that schema.
    channel: String,
    lock_timeout: Duration,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Postgres")
            .field("server", &self.describe())
            .field("schema", &self.schema)
            .finish()
    }
}

impl Target {
    /// Parses `url` (a `postgres://` URL or a `key=value` string).
    pub(crate) fn new(url: &str, schema: &str, lock_timeout: Duration) -> Result<Target> {
        let config: postgres::Config = url.parse().map_err(|_| Error::PostgresOpen {
            server: "(unparsable connection string)".into(),
            problem: PgProblem::InvalidUrl,
            source: None,
        })?;
        if schema.is_empty()
            || schema.len() > 40
            || !schema
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            || schema.as_bytes()[0].is_ascii_digit()
        {
            return Err(Error::invalid(
                "schema",
                "must be 1 to 40 lowercase letters, digits or underscores, not starting with a digit",
            ));
        }
        let mut config = config;
        if config.get_connect_timeout().is_none() {
            // Not the OS's minutes against a server that drops packets:
            // a write waits for this while holding the process's turn.
            config.connect_timeout(Duration::from_secs(5));
        }
        config.application_name(&format!("keyhook/{schema}"));
        Ok(Target {
            config,
            schema: schema.to_owned(),
            channel: format!("keyhook_{schema}"),
            lock_timeout,
        })
    }

    /// `user@host:port/dbname`, without the password.
    pub(crate) fn describe(&self) -> String {
        let c = &self.config;
        let host = match c.get_hosts().first() {
            Some(postgres::config::Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        };
        let port = c.get_ports().first().copied().unwrap_or(5432);
        format!(
            "{}@{host}:{port}/{}",
            c.get_user().unwrap_or("(default user)"),
            c.get_dbname().unwrap_or("(default database)")
        )
    }

    fn connect(&self) -> Result<Client> {
        let mut client = self.config.connect(NoTls).map_err(|e| self.open_error(e))?;
        client
            .batch_execute(&format!(
                "SET search_path TO {}; SET lock_timeout = {}",
                self.schema,
                self.lock_timeout.as_millis().max(1)
            ))
            .map_err(|e| self.open_error(e))?;
        Ok(client)
    }

    /// The error for failing to connect: what went wrong, in terms a host
    /// can act on, and where (without the password).
    pub(crate) fn open_error(&self, e: postgres::Error) -> Error {
        use postgres::error::SqlState;
        let problem = match e.code() {
            Some(c) if *c == SqlState::INVALID_PASSWORD => PgProblem::AuthenticationFailed,
            Some(c) if *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION => {
                PgProblem::AuthenticationFailed
            }
            Some(c) if *c == SqlState::INVALID_CATALOG_NAME => PgProblem::NoSuchDatabase,
            Some(c) if *c == SqlState::INSUFFICIENT_PRIVILEGE => PgProblem::PermissionDenied,
            Some(_) => PgProblem::Other,
            None if e.is_closed() => PgProblem::Unreachable,
            None => {
                let text = e.to_string();
                if text.contains("connect") || text.contains("refused") {
                    PgProblem::Unreachable
                } else {
                    PgProblem::Other
                }
            }
        };
        Error::PostgresOpen {
            server: self.describe(),
            problem,
            source: Some(e.into()),
        }
    }
}

/// The pool of sessions and the listening connection.
pub(crate) struct Pool {
    pub(crate) target: Target,
    idle: Mutex<Slots>,
    /// Signalled when a session is returned or closed.
    returned: std::sync::Condvar,
    max_idle: usize,
    /// The most sessions open at once (the listener is one more).
    max_open: usize,
    listener: Mutex<Option<Client>>,
    /// Written into this process's notifications, so it ignores its own.
    token: String,
    /// `NOTIFY channel, 'token'`.
    pub(crate) notify: std::sync::Arc<str>,
    /// `NOTIFY channel, 'host'`, sent in hosts' own transactions: it wakes
    /// this process's dispatcher too.
    pub(crate) host_notify: std::sync::Arc<str>,
    /// When the last `NOTIFY` went out, in ms since `started`.
    last_notify: AtomicU64,
    started: Instant,
}

/// The least time between two `NOTIFY`s of one process.
const NOTIFY_INTERVAL: Duration = Duration::from_millis(10);

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.target.fmt(f)
    }
}

/// A session checked out of the pool; back in when dropped, unless broken.
pub(crate) struct Checkout<'a> {
    pool: &'a Pool,
    session: Option<Session>,
    /// Inside a transaction that was neither committed nor rolled back (a
    /// panic): the session is dropped, which rolls it back.
    in_transaction: bool,
}

impl Checkout<'_> {
    fn session_mut(&mut self) -> &mut Session {
        self.session.as_mut().expect("present until drop")
    }
}

impl Drop for Checkout<'_> {
    fn drop(&mut self) {
        let Some(session) = self.session.take() else {
            // Never given back (a panic while it was lent out): it is gone.
            self.pool.lock_idle().open -= 1;
            self.pool.returned.notify_one();
            return;
        };
        if self.in_transaction || session.client.is_closed() {
            // Dropped: closing it rolls back what it was in.
            drop(session);
            self.pool.lock_idle().open -= 1;
            self.pool.returned.notify_one();
            return;
        }
        let mut slots = self.pool.lock_idle();
        if slots.idle.len() < self.pool.max_idle {
            slots.idle.push(session);
        } else {
            slots.open -= 1;
        }
        drop(slots);
        self.pool.returned.notify_one();
    }
}

/// The pool's sessions: those idle, and how many are open in all.
#[derive(Default)]
struct Slots {
    idle: Vec<Session>,
    open: usize,
}

impl Pool {
    /// Connects once (the server is there, the schema is usable) and
    /// migrates.
    pub(crate) fn open(target: Target, max_idle: usize, max_open: usize) -> Result<Pool> {
        let token = {
            use rand::Rng;
            format!("{:016x}", rand::rng().random::<u64>())
        };
        let notify = format!("NOTIFY {}, '{token}'", target.channel).into();
        let host_notify = format!("NOTIFY {}, 'host'", target.channel).into();
        let pool = Pool {
            target,
            idle: Mutex::new(Slots::default()),
            returned: std::sync::Condvar::new(),
            max_idle,
            max_open: max_open.max(1),
            listener: Mutex::new(None),
            token,
            notify,
            host_notify,
            last_notify: AtomicU64::new(0),
            started: Instant::now(),
        };
        // The pool's first session migrates, then stays for use.
        let mut session = pool.session()?;
        crate::schema::pg_migrate(&mut session.client, &pool.target.schema)
            .map_err(|e| pool.map_setup_error(e))?;
        let mut slots = pool.lock_idle();
        slots.idle.push(session);
        slots.open = 1;
        drop(slots);
        Ok(pool)
    }

    fn map_setup_error(&self, e: Error) -> Error {
        use postgres::error::SqlState;
        match e {
            Error::Postgres(pe)
                if pe.get_ref().code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) =>
            {
                Error::PostgresOpen {
                    server: self.target.describe(),
                    problem: PgProblem::PermissionDenied,
                    source: Some(pe),
                }
            }
            other => other,
        }
    }

    fn lock_idle(&self) -> MutexGuard<'_, Slots> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn session(&self) -> Result<Session> {
        Ok(Session::new(self.target.connect()?))
    }

    /// A live session: an idle one that is still connected, or a new one
    /// (after a server restart every idle one is found closed and dropped)
    /// while fewer than `max_open` are open; otherwise waits for one to be
    /// returned, up to the busy timeout.
    pub(crate) fn checkout(&self) -> Result<Checkout<'_>> {
        let deadline = Instant::now() + self.target.lock_timeout;
        let mut slots = self.lock_idle();
        loop {
            while let Some(s) = slots.idle.pop() {
                if !s.client.is_closed() {
                    return Ok(self.lend(s));
                }
                slots.open -= 1;
            }
            if slots.open < self.max_open {
                slots.open += 1;
                drop(slots);
                return match self.session() {
                    Ok(s) => Ok(self.lend(s)),
                    Err(e) => {
                        self.lock_idle().open -= 1;
                        self.returned.notify_one();
                        Err(e)
                    }
                };
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::PostgresOpen {
                    server: self.target.describe(),
                    problem: PgProblem::PoolExhausted,
                    source: None,
                });
            }
            slots = self
                .returned
                .wait_timeout(slots, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn lend(&self, session: Session) -> Checkout<'_> {
        Checkout {
            pool: self,
            session: Some(session),
            in_transaction: false,
        }
    }

    /// Runs `f` in a transaction and commits if it returns `Ok`.
    pub(crate) fn write<T>(&self, f: impl FnOnce(crate::sql::Sql<'_>) -> Result<T>) -> Result<T> {
        let mut out = self.checkout()?;
        if let Err(e) = out.session_mut().client.batch_execute("BEGIN") {
            // A connection the server closed (a restart) fails its first
            // use: nothing ran yet, so start again on a new one.
            if !out.session_mut().client.is_closed() {
                return Err(e.into());
            }
            self.forget_idle();
            out = self.checkout()?;
            out.session_mut().client.batch_execute("BEGIN")?;
        }
        out.in_transaction = true;
        let mut session = out.session.take().expect("present until drop");
        session.in_transaction = true;
        session.wants_notify = false;
        let cell = std::cell::RefCell::new(session);
        let value = f(crate::sql::Sql::Pg(&cell));
        let mut session = cell.into_inner();
        session.in_transaction = false;
        let end = match &value {
            Ok(_) => session.client.batch_execute("COMMIT"),
            Err(_) => session.client.batch_execute("ROLLBACK"),
        };
        let closed = session.client.is_closed();
        if value.is_ok() && end.is_ok() {
            self.notify_if_asked(&mut session);
        }
        out.session = Some(session);
        if closed {
            self.forget_idle();
        }
        match (value, end) {
            (Ok(v), Ok(())) => {
                out.in_transaction = false;
                Ok(v)
            }
            (Err(e), Ok(())) => {
                out.in_transaction = false;
                Err(e)
            }
            // The closure's own error says more than a failed ROLLBACK.
            (Err(e), Err(_)) => Err(e),
            (Ok(_), Err(e)) => Err(e.into()),
        }
    }

    /// Runs `f` outside an explicit transaction: each statement is its own
    /// transaction, committed when it returns. A write of one statement
    /// saves the `BEGIN` and `COMMIT` round trips this way. If `f` asked to
    /// notify, notifies after it as [`write`](Self::write) does.
    pub(crate) fn read<T>(&self, f: impl FnOnce(crate::sql::Sql<'_>) -> Result<T>) -> Result<T> {
        let mut out = self.checkout()?;
        let mut session = out.session.take().expect("present until drop");
        session.wants_notify = false;
        let cell = std::cell::RefCell::new(session);
        let value = f(crate::sql::Sql::Pg(&cell));
        let mut session = cell.into_inner();
        if value.is_ok() {
            self.notify_if_asked(&mut session);
        }
        if session.client.is_closed() {
            // The server closed it (a restart): so it did every idle one,
            // which would each fail a call in turn.
            self.forget_idle();
        }
        out.session = Some(session);
        value
    }

    /// After a commit: sends the `NOTIFY` if what committed asked for one
    /// and none was sent in the last [`NOTIFY_INTERVAL`].
    fn notify_if_asked(&self, session: &mut Session) {
        if session.wants_notify
            && self.notify_due()
            && let Err(e) = session.client.batch_execute(&self.notify)
        {
            // Only a hint: other processes poll.
            log::debug!("keyhook: NOTIFY failed: {e}");
        }
    }

    /// Drops every idle session (after one was found closed by the server).
    fn forget_idle(&self) {
        let mut slots = self.lock_idle();
        let dropped = slots.idle.len();
        slots.idle.clear();
        slots.open -= dropped;
        drop(slots);
        self.returned.notify_all();
    }

    /// Whether this process may send a `NOTIFY` now (at most one per
    /// [`NOTIFY_INTERVAL`]): other processes are woken promptly, and
    /// commits do not queue on the server's notification lock.
    fn notify_due(&self) -> bool {
        let now = self.started.elapsed().as_millis() as u64;
        let last = self.last_notify.load(Ordering::Relaxed);
        now >= last + NOTIFY_INTERVAL.as_millis() as u64
            && self
                .last_notify
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Whether another process (or a host transaction) has notified new
    /// work since the last call. Polls without blocking; listening starts
    /// on the first call, and again after the connection is lost (which
    /// counts as a change: something may have been missed).
    pub(crate) fn changed_elsewhere(&self) -> Result<bool> {
        let mut listener = self.listener.lock().unwrap_or_else(|e| e.into_inner());
        let client = match listener.as_mut() {
            Some(c) if !c.is_closed() => c,
            _ => {
                let mut c = self.target.connect()?;
                c.batch_execute(&format!("LISTEN {}", self.target.channel))?;
                *listener = Some(c);
                return Ok(true);
            }
        };
        let polled = {
            let mut changed = false;
            let mut drained = 0;
            let mut notifications = client.notifications();
            // `iter()` only returns what is already buffered; a short
            // timeout makes the client read the socket.
            let mut iter = notifications.timeout_iter(Duration::from_millis(1));
            loop {
                match fallible_next(&mut iter) {
                    Ok(Some(n)) => {
                        changed |= n.payload() != self.token;
                        drained += 1;
                        // Enough to know; the rest is read next time.
                        if drained >= 64 {
                            break Ok(changed);
                        }
                    }
                    Ok(None) => break Ok(changed),
                    Err(e) => break Err(Error::from(e)),
                }
            }
        };
        if polled.is_err() {
            *listener = None;
        }
        polled
    }
}

fn fallible_next<I>(iter: &mut I) -> std::result::Result<Option<I::Item>, I::Error>
where
    I: postgres::fallible_iterator::FallibleIterator,
{
    iter.next()
}
