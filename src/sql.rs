//! The storage seam: every statement keyhook runs goes through [`Sql`], a
//! connection or transaction on one of two engines.
//!
//! Statements are written once, in the SQL both SQLite and PostgreSQL
//! accept, with SQLite's numbered parameters (`?1`). On SQLite they run as
//! written, through rusqlite's statement cache, so the default engine pays
//! one `match` per call for the seam. On PostgreSQL (the `postgres`
//! feature) each statement is translated once per connection
//! ([`translate`]: `$1` parameters, SQLite-only planner hints dropped, a few
//! functions renamed) and kept prepared. Values cross the seam as [`Arg`]s
//! and come back through [`Col`], which on PostgreSQL accept any integer
//! width, booleans as integers, and text or bytes, as SQLite's dynamic
//! typing does.
//!
//! The API mirrors rusqlite's (`prepare_cached`, `query_row`, `execute`,
//! `query_map`, [`Optional::optional`]), so the storage code reads as
//! plain rusqlite code; it returns keyhook's [`Error`] throughout.

#[cfg(feature = "postgres")]
use std::cell::RefCell;

use crate::error::{Error, Result};

/// A connection or transaction on either engine.
#[derive(Clone, Copy)]
pub(crate) enum Sql<'a> {
    /// SQLite: a connection, or a transaction (which derefs to one).
    Lite(&'a rusqlite::Connection),
    /// PostgreSQL: a session of keyhook's pool or a host's transaction.
    #[cfg(feature = "postgres")]
    Pg(&'a RefCell<dyn crate::pg::PgRun + 'a>),
}

/// The engine behind an [`Sql`] or a [`Database`](crate::Database).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Engine {
    Sqlite,
    #[cfg(feature = "postgres")]
    Postgres,
}

impl<'a> From<&'a rusqlite::Connection> for Sql<'a> {
    fn from(c: &'a rusqlite::Connection) -> Self {
        Sql::Lite(c)
    }
}

impl<'a> From<&'a rusqlite::Transaction<'_>> for Sql<'a> {
    fn from(tx: &'a rusqlite::Transaction<'_>) -> Self {
        Sql::Lite(tx)
    }
}

impl<'a> Sql<'a> {
    pub(crate) fn engine(&self) -> Engine {
        match self {
            Sql::Lite(_) => Engine::Sqlite,
            #[cfg(feature = "postgres")]
            Sql::Pg(_) => Engine::Postgres,
        }
    }

    /// A statement, prepared once per connection and kept.
    pub(crate) fn prepare_cached(&self, sql: &str) -> Result<Stmt<'a>> {
        match *self {
            Sql::Lite(c) => Ok(Stmt::Lite(c.prepare_cached(sql)?)),
            #[cfg(feature = "postgres")]
            Sql::Pg(c) => Ok(Stmt::Pg(c, sql.to_owned())),
        }
    }

    /// A statement (unit tests).
    #[cfg(test)]
    pub(crate) fn prepare(&self, sql: &str) -> Result<Stmt<'a>> {
        self.prepare_cached(sql)
    }

    /// Runs an `INSERT` of one row and returns the new row's `row_id`:
    /// SQLite's last insert rowid (cheaper than a `RETURNING` result), or
    /// `RETURNING row_id` appended on PostgreSQL.
    pub(crate) fn insert(&self, sql: &str, params: impl Params) -> Result<i64> {
        match *self {
            Sql::Lite(c) => {
                self.prepare_cached(sql)?.execute(params)?;
                Ok(c.last_insert_rowid())
            }
            #[cfg(feature = "postgres")]
            Sql::Pg(_) => self
                .prepare_cached(&format!("{sql} RETURNING row_id"))?
                .query_row(params, |r| r.get(0)),
        }
    }

    /// Runs several statements without parameters (SQLite unit tests).
    #[cfg(test)]
    pub(crate) fn execute_batch(&self, sql: &str) -> Result<()> {
        match *self {
            Sql::Lite(c) => Ok(c.execute_batch(sql)?),
            #[cfg(feature = "postgres")]
            Sql::Pg(_) => unreachable!("unit tests run on SQLite"),
        }
    }

    /// Runs one statement; the number of rows it changed.
    pub(crate) fn execute(&self, sql: &str, params: impl Params) -> Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }

    /// The first row of a query, mapped by `f`; no row is
    /// [`Optional::optional`]'s `None`.
    pub(crate) fn query_row<T>(
        &self,
        sql: &str,
        params: impl Params,
        f: impl FnOnce(&Row<'_>) -> Result<T>,
    ) -> Result<T> {
        self.prepare_cached(sql)?.query_row(params, f)
    }

    /// Runs a statement without parameters or results, unprepared
    /// (savepoints: they must work in a transaction that a failed statement
    /// has aborted, where PostgreSQL refuses to prepare anything).
    pub(crate) fn batch(&self, sql: &str) -> Result<()> {
        match *self {
            Sql::Lite(c) => {
                c.prepare_cached(sql)?.execute([])?;
                Ok(())
            }
            #[cfg(feature = "postgres")]
            Sql::Pg(c) => c.borrow_mut().batch(sql),
        }
    }

    /// Makes the transaction's read-then-write on `key` (an organization's
    /// key or endpoint count, say) take turns with every other process's:
    /// a transaction-level advisory lock on PostgreSQL (`kind` names what
    /// is counted); nothing on SQLite, whose writers take turns already.
    pub(crate) fn lock_scope(&self, kind: i32, key: &str) -> Result<()> {
        match *self {
            Sql::Lite(_) => {
                let _ = (kind, key);
                Ok(())
            }
            #[cfg(feature = "postgres")]
            Sql::Pg(_) => self
                .prepare_cached("SELECT pg_advisory_xact_lock(?1 * 4294967296 + hashtext(?2))")?
                .query_row(params![kind, key], |_| Ok(())),
        }
    }

    /// Wakes other processes' dispatchers once this transaction commits:
    /// new work is due. PostgreSQL sends a `NOTIFY` (folded with repeats);
    /// on SQLite they notice any commit through `data_version`.
    pub(crate) fn notify(&self) -> Result<()> {
        match *self {
            Sql::Lite(_) => Ok(()),
            #[cfg(feature = "postgres")]
            Sql::Pg(c) => c.borrow_mut().notify(),
        }
    }
}

/// A prepared statement.
pub(crate) enum Stmt<'a> {
    Lite(rusqlite::CachedStatement<'a>),
    #[cfg(feature = "postgres")]
    Pg(&'a RefCell<dyn crate::pg::PgRun + 'a>, String),
}

impl Stmt<'_> {
    /// Runs it; the number of rows it changed.
    pub(crate) fn execute(&mut self, params: impl Params) -> Result<usize> {
        match self {
            Stmt::Lite(s) => params.with(|args| Ok(s.execute(lite(args))?)),
            #[cfg(feature = "postgres")]
            Stmt::Pg(c, sql) => params.with(|args| {
                let n = c.borrow_mut().run_execute(sql, args)?;
                Ok(usize::try_from(n).unwrap_or(usize::MAX))
            }),
        }
    }

    /// The first row, mapped by `f`.
    pub(crate) fn query_row<T>(
        &mut self,
        params: impl Params,
        f: impl FnOnce(&Row<'_>) -> Result<T>,
    ) -> Result<T> {
        match self {
            Stmt::Lite(s) => params.with(|args| {
                let mut rows = s.query(lite(args))?;
                match rows.next()? {
                    Some(r) => f(&Row::Lite(r)),
                    None => Err(no_rows()),
                }
            }),
            #[cfg(feature = "postgres")]
            Stmt::Pg(c, sql) => params.with(|args| {
                let rows = c.borrow_mut().run_query(sql, args)?;
                match rows.first() {
                    Some(r) => f(&Row::Pg(r)),
                    None => Err(no_rows()),
                }
            }),
        }
    }

    /// Every row, mapped by `f`.
    pub(crate) fn query_map<T>(
        &mut self,
        params: impl Params,
        mut f: impl FnMut(&Row<'_>) -> Result<T>,
    ) -> Result<std::vec::IntoIter<Result<T>>> {
        let mut out = Vec::new();
        match self {
            Stmt::Lite(s) => params.with(|args| -> Result<()> {
                let mut rows = s.query(lite(args))?;
                while let Some(r) = rows.next()? {
                    out.push(f(&Row::Lite(r)));
                }
                Ok(())
            })?,
            #[cfg(feature = "postgres")]
            Stmt::Pg(c, sql) => params.with(|args| -> Result<()> {
                let rows = c.borrow_mut().run_query(sql, args)?;
                out.extend(rows.iter().map(|r| f(&Row::Pg(r))));
                Ok(())
            })?,
        }
        Ok(out.into_iter())
    }

    /// How many parameters the statement takes.
    pub(crate) fn parameter_count(&mut self) -> Result<usize> {
        match self {
            Stmt::Lite(s) => Ok(s.parameter_count()),
            #[cfg(feature = "postgres")]
            Stmt::Pg(c, sql) => c.borrow_mut().param_count(sql),
        }
    }

    /// Whether the query returns a row.
    pub(crate) fn exists(&mut self, params: impl Params) -> Result<bool> {
        self.query_row(params, |_| Ok(()))
            .optional()
            .map(|r| r.is_some())
    }
}

fn lite<'p>(args: &'p [&'p dyn Arg]) -> rusqlite::ParamsFromIter<LiteArgs<'p>> {
    rusqlite::params_from_iter(LiteArgs(args.iter()))
}

/// The arguments as rusqlite binds them (trait upcasting, no copies).
struct LiteArgs<'p>(std::slice::Iter<'p, &'p dyn Arg>);

impl<'p> Iterator for LiteArgs<'p> {
    type Item = &'p dyn rusqlite::ToSql;
    fn next(&mut self) -> Option<Self::Item> {
        self.0.next().map(|a| *a as &dyn rusqlite::ToSql)
    }
}

/// The error of a `query_row` that found no row, as rusqlite reports it.
fn no_rows() -> Error {
    Error::Database(rusqlite::Error::QueryReturnedNoRows)
}

/// `query_row(..).optional()`: no row is `Ok(None)`.
pub(crate) trait Optional<T> {
    fn optional(self) -> Result<Option<T>>;
}

impl<T> Optional<T> for Result<T> {
    fn optional(self) -> Result<Option<T>> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(Error::Database(rusqlite::Error::QueryReturnedNoRows)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// A row of a result.
pub(crate) enum Row<'r> {
    Lite(&'r rusqlite::Row<'r>),
    #[cfg(feature = "postgres")]
    Pg(&'r postgres::Row),
}

impl Row<'_> {
    /// Column `idx` (from 0) as a `T`.
    pub(crate) fn get<T: Col>(&self, idx: usize) -> Result<T> {
        match self {
            Row::Lite(r) => Ok(r.get(idx)?),
            #[cfg(feature = "postgres")]
            Row::Pg(r) => {
                let v: crate::pg::Any = r.try_get(idx).map_err(Error::from)?;
                T::from_pg(v).map_err(|problem| crate::pg::conversion_error(idx, problem))
            }
        }
    }
}

/// A value bound to a statement parameter.
pub(crate) trait Arg: rusqlite::ToSql {
    /// The value as PostgreSQL takes it.
    #[cfg(feature = "postgres")]
    fn value(&self) -> crate::pg::Value<'_>;
}

/// A column type keyhook reads.
#[cfg(not(feature = "postgres"))]
pub(crate) trait Col: rusqlite::types::FromSql {}
#[cfg(not(feature = "postgres"))]
impl<T: rusqlite::types::FromSql> Col for T {}

/// A column type keyhook reads.
#[cfg(feature = "postgres")]
pub(crate) trait Col: rusqlite::types::FromSql + Sized {
    /// Converts PostgreSQL's value, whatever its integer width.
    fn from_pg(v: crate::pg::Any) -> std::result::Result<Self, &'static str>;
}

/// The parameters of one statement.
pub(crate) trait Params {
    fn with<R>(self, f: impl FnOnce(&[&dyn Arg]) -> R) -> R;
}

impl Params for &[&dyn Arg] {
    fn with<R>(self, f: impl FnOnce(&[&dyn Arg]) -> R) -> R {
        f(self)
    }
}

impl<const N: usize> Params for &[&dyn Arg; N] {
    fn with<R>(self, f: impl FnOnce(&[&dyn Arg]) -> R) -> R {
        f(self)
    }
}

impl<T: Arg, const N: usize> Params for [T; N] {
    fn with<R>(self, f: impl FnOnce(&[&dyn Arg]) -> R) -> R {
        let refs: [&dyn Arg; N] = std::array::from_fn(|i| &self[i] as &dyn Arg);
        f(&refs)
    }
}

impl Params for () {
    fn with<R>(self, f: impl FnOnce(&[&dyn Arg]) -> R) -> R {
        f(&[])
    }
}

/// `params![a, b, c]`: statement parameters, as rusqlite's macro of that name.
macro_rules! params {
    () => { &[] as &[&dyn $crate::sql::Arg] };
    ($($p:expr),+ $(,)?) => { &[$(&$p as &dyn $crate::sql::Arg),+] as &[&dyn $crate::sql::Arg] };
}
pub(crate) use params;

macro_rules! arg_impls {
    ($($t:ty => |$s:ident| $v:expr;)*) => {$(
        impl Arg for $t {
            #[cfg(feature = "postgres")]
            fn value(&self) -> crate::pg::Value<'_> {
                let $s = self;
                $v
            }
        }
    )*};
}

#[cfg(feature = "postgres")]
use crate::pg::Value as V;

arg_impls! {
    i64 => |s| V::Int(*s);
    i32 => |s| V::Int(i64::from(*s));
    u32 => |s| V::Int(i64::from(*s));
    u16 => |s| V::Int(i64::from(*s));
    u8 => |s| V::Int(i64::from(*s));
    u64 => |s| i64::try_from(*s).map_or(V::OutOfRange, V::Int);
    usize => |s| i64::try_from(*s).map_or(V::OutOfRange, V::Int);
    bool => |s| V::Int(i64::from(*s));
    f64 => |s| V::Real(*s);
    str => |s| V::Text(s);
    String => |s| V::Text(s);
    [u8] => |s| V::Blob(s);
    Vec<u8> => |s| V::Blob(s);
}

impl<const N: usize> Arg for [u8; N] {
    #[cfg(feature = "postgres")]
    fn value(&self) -> crate::pg::Value<'_> {
        V::Blob(self)
    }
}

impl<T: Arg + ?Sized> Arg for &T {
    #[cfg(feature = "postgres")]
    fn value(&self) -> crate::pg::Value<'_> {
        (**self).value()
    }
}

impl<T: Arg> Arg for Option<T> {
    #[cfg(feature = "postgres")]
    fn value(&self) -> crate::pg::Value<'_> {
        match self {
            Some(v) => v.value(),
            None => V::Null,
        }
    }
}

#[cfg(feature = "postgres")]
macro_rules! col_impls {
    ($($t:ty => |$v:ident| $e:expr;)*) => {$(
        impl Col for $t {
            fn from_pg($v: crate::pg::Any) -> std::result::Result<Self, &'static str> {
                $e
            }
        }
    )*};
}

#[cfg(feature = "postgres")]
use crate::pg::Any as A;

#[cfg(feature = "postgres")]
fn int(v: A) -> std::result::Result<i64, &'static str> {
    match v {
        A::Int(n) => Ok(n),
        A::Null => Err("unexpected NULL"),
        _ => Err("not an integer"),
    }
}

#[cfg(feature = "postgres")]
col_impls! {
    i64 => |v| int(v);
    i32 => |v| int(v).and_then(|n| i32::try_from(n).map_err(|_| "integer out of range"));
    u32 => |v| int(v).and_then(|n| u32::try_from(n).map_err(|_| "integer out of range"));
    u16 => |v| int(v).and_then(|n| u16::try_from(n).map_err(|_| "integer out of range"));
    u64 => |v| int(v).and_then(|n| u64::try_from(n).map_err(|_| "integer out of range"));
    usize => |v| int(v).and_then(|n| usize::try_from(n).map_err(|_| "integer out of range"));
    bool => |v| int(v).map(|n| n != 0);
    f64 => |v| match v {
        A::Real(x) => Ok(x),
        A::Int(n) => Ok(n as f64),
        _ => Err("not a number"),
    };
    String => |v| match v {
        A::Text(s) => Ok(s),
        A::Blob(b) => String::from_utf8(b).map_err(|_| "not UTF-8 text"),
        _ => Err("not text"),
    };
    Vec<u8> => |v| match v {
        A::Blob(b) => Ok(b),
        A::Text(s) => Ok(s.into_bytes()),
        _ => Err("not bytes"),
    };
}

#[cfg(feature = "postgres")]
impl<T: Col> Col for Option<T> {
    fn from_pg(v: A) -> std::result::Result<Self, &'static str> {
        match v {
            A::Null => Ok(None),
            v => T::from_pg(v).map(Some),
        }
    }
}

/// `stmt` translated from SQLite's SQL to PostgreSQL's: `?N` parameters
/// become `$N`; `INDEXED BY` hints (which PostgreSQL's planner does not
/// take) are dropped; `(SELECT ?N)` (SQLite's way to keep a LIMIT out of
/// the plan) becomes a typed parameter; `json_each(?N)` (a JSON array of
/// numbers) becomes `json_array_elements_text`; scalar `max(a, b)` and
/// `min(a, b)` become `GREATEST` and `LEAST`; `CAST(.. AS INTEGER)` becomes
/// 64-bit. Anything else must be written in SQL both engines accept.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) fn translate(stmt: &str) -> String {
    // Delivery ids (`dlv_`, the time in 11 hex digits, 16 random ones):
    // PostgreSQL has neither printf nor randomblob.
    let ids;
    let stmt = if stmt.contains("printf('%011x', ") {
        ids = stmt
            .replace(
                "lower(hex(randomblob(8)))",
                "substr(md5(CAST(gen_random_uuid() AS text)), 1, 16)",
            )
            .replace("printf('%011x', ", "lpad(to_hex(CAST(")
            .replace(") || substr(md5", " AS BIGINT)), 11, '0') || substr(md5");
        ids.as_str()
    } else {
        stmt
    };
    let b = stmt.as_bytes();
    let mut out = String::with_capacity(stmt.len() + 16);
    let mut i = 0;
    let mut next_param = 1;
    let word_at = |i: usize, w: &str| -> bool {
        b.len() >= i + w.len()
            && b[i..i + w.len()].eq_ignore_ascii_case(w.as_bytes())
            && (i == 0 || !is_ident(b[i - 1]))
    };
    while i < b.len() {
        let c = b[i];
        if c == b'\'' {
            // A string literal, copied as is.
            let end = stmt[i + 1..].find('\'').map_or(b.len(), |e| i + 1 + e + 1);
            out.push_str(&stmt[i..end]);
            i = end;
        } else if c == b'-' && b.get(i + 1) == Some(&b'-') {
            let end = stmt[i..].find('\n').map_or(b.len(), |e| i + e);
            i = end;
        } else if c == b'?' {
            let digits = b[i + 1..].iter().take_while(|d| d.is_ascii_digit()).count();
            out.push('$');
            if digits == 0 {
                out.push_str(&next_param.to_string());
                next_param += 1;
            } else {
                out.push_str(&stmt[i + 1..i + 1 + digits]);
            }
            i += 1 + digits;
        } else if word_at(i, "INDEXED BY ") {
            i += "INDEXED BY ".len();
            while i < b.len() && is_ident(b[i]) {
                i += 1;
            }
        } else if word_at(i, "(SELECT ?") {
            let digits = b[i + 9..].iter().take_while(|d| d.is_ascii_digit()).count();
            if b.get(i + 9 + digits) == Some(&b')') {
                out.push_str("CAST($");
                out.push_str(&stmt[i + 9..i + 9 + digits]);
                out.push_str(" AS BIGINT)");
                i += 9 + digits + 1;
            } else {
                out.push('(');
                i += 1;
            }
        } else if word_at(i, "json_each(?") {
            let digits = b[i + 11..]
                .iter()
                .take_while(|d| d.is_ascii_digit())
                .count();
            out.push_str("json_array_elements_text(CAST($");
            out.push_str(&stmt[i + 11..i + 11 + digits]);
            out.push_str(" AS json)) AS json_each(value)");
            i += 11 + digits + 1;
        } else if word_at(i, "CROSS JOIN ") {
            // SQLite's join-order hint; PostgreSQL wants a plain JOIN
            // before ON.
            let rest = stmt[i + 11..].to_ascii_uppercase();
            let ends = [" WHERE ", " JOIN ", " ORDER ", " LIMIT ", ")"]
                .iter()
                .filter_map(|w| rest.find(w))
                .min()
                .unwrap_or(rest.len());
            let with_on = rest
                .find(" ON ")
                .or_else(|| rest.find("\nON ").map(|p| p + 1))
                .is_some_and(|p| p < ends);
            out.push_str(if with_on { "JOIN " } else { "CROSS JOIN " });
            i += 11;
        } else if word_at(i, "AS INTEGER)") {
            out.push_str("AS BIGINT)");
            i += "AS INTEGER)".len();
        } else if word_at(i, "max(") || word_at(i, "min(") {
            let name = &stmt[i..i + 3];
            let args_at = i + 4;
            if top_level_comma(&b[args_at..]) {
                out.push_str(if name.eq_ignore_ascii_case("max") {
                    "GREATEST("
                } else {
                    "LEAST("
                });
            } else {
                out.push_str(&stmt[i..args_at]);
            }
            i = args_at;
        } else {
            // Copy one UTF-8 character.
            let len = utf8_len(c);
            out.push_str(&stmt[i..i + len]);
            i += len;
        }
    }
    out
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

fn utf8_len(c: u8) -> usize {
    match c {
        0xf0.. => 4,
        0xe0.. => 3,
        0xc0.. => 2,
        _ => 1,
    }
}

/// Whether the parenthesised argument list starting at `b` (just after its
/// opening parenthesis) has a comma at its own level.
fn top_level_comma(b: &[u8]) -> bool {
    let mut depth = 0usize;
    for &c in b {
        match c {
            b'(' => depth += 1,
            b')' if depth == 0 => return false,
            b')' => depth -= 1,
            b',' if depth == 0 => return true,
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::translate;

    #[test]
    fn translation_to_postgres() {
        assert_eq!(
            translate("SELECT a FROM t INDEXED BY t_idx WHERE b = ?1 AND c = ?12"),
            "SELECT a FROM t  WHERE b = $1 AND c = $12"
        );
        assert_eq!(translate("VALUES (?, ?)"), "VALUES ($1, $2)");
        assert_eq!(
            translate("FROM a CROSS JOIN b ON b.x = a.x CROSS JOIN c WHERE c.y = 1"),
            "FROM a JOIN b ON b.x = a.x CROSS JOIN c WHERE c.y = 1"
        );
        assert_eq!(
            translate("SELECT 1 LIMIT (SELECT ?7)"),
            "SELECT 1 LIMIT CAST($7 AS BIGINT)"
        );
        assert_eq!(
            translate("x NOT IN (SELECT CAST(value AS INTEGER) FROM json_each(?6))"),
            "x NOT IN (SELECT CAST(value AS BIGINT) FROM json_array_elements_text(CAST($6 AS json)) AS json_each(value))"
        );
        assert_eq!(
            translate("SELECT max(a, min(b, 2)), MAX(c), count(*) FROM t"),
            "SELECT GREATEST(a, LEAST(b, 2)), MAX(c), count(*) FROM t"
        );
        assert_eq!(
            translate("SELECT 'dlv_' || printf('%011x', ?3) || lower(hex(randomblob(8))), 1"),
            "SELECT 'dlv_' || lpad(to_hex(CAST($3 AS BIGINT)), 11, '0') || substr(md5(CAST(gen_random_uuid() AS text)), 1, 16), 1"
        );
        assert_eq!(
            translate("SELECT '?1 max(a, b)' -- ?2\n, ?3"),
            "SELECT '?1 max(a, b)' \n, $3"
        );
    }
}
