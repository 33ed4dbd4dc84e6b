//! How each backend sends statements on dbguard's own connections ([`OwnedBackend`]):
//! PostgreSQL as named, cached statements or, behind a transaction pooler, over the simple query
//! protocol with the values written in; SQLite always prepared.

use std::time::Duration;

use dbguard_core::StatementMode;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use sea_orm::sea_query::{PostgresQueryBuilder, Values, inject_parameters};
use sea_orm::{DbBackend, DbErr, ExecResult, QueryResult, Statement};
use sea_query_sqlx::SqlxValues;
use sqlx::{Executor as _, IntoArguments, Postgres};

use crate::transaction::TxnOptions;

/// What dbguard's pool and [`DbConn`](crate::DbConn) need from a sqlx driver: statements sent as the backend
/// sends them, rows read back, and transactions begun. Implemented for PostgreSQL and SQLite.
///
/// Each method hands back sqlx's own future or stream unchanged: the statement path boxes
/// nothing more than the bare connection does.
pub trait OwnedBackend: sqlx::Database {
    /// SeaORM's name for the backend.
    const BACKEND: DbBackend;

    /// Runs `stmt`, discarding rows.
    fn execute<'c>(
        conn: &'c mut Self::Connection,
        stmt: Sendable<Self>,
    ) -> BoxFuture<'c, Result<Self::QueryResult, sqlx::Error>>;

    /// Runs `stmt` and reads every row.
    fn fetch_all<'c>(
        conn: &'c mut Self::Connection,
        stmt: Sendable<Self>,
    ) -> BoxFuture<'c, Result<Vec<Self::Row>, sqlx::Error>>;

    /// Runs `stmt` and reads at most one row.
    fn fetch_optional<'c>(
        conn: &'c mut Self::Connection,
        stmt: Sendable<Self>,
    ) -> BoxFuture<'c, Result<Option<Self::Row>, sqlx::Error>>;

    /// Runs `stmt`, yielding rows as they arrive.
    fn fetch<'c>(conn: &'c mut Self::Connection, stmt: Sendable<Self>)
    -> BoxStream<'c, Result<Self::Row, sqlx::Error>>;

    /// A row as SeaORM reads it.
    fn query_result(row: Self::Row) -> QueryResult;

    /// A statement's outcome as SeaORM reports it.
    fn exec_result(done: Self::QueryResult) -> ExecResult;

    /// `stmt` as this backend sends it under `mode`.
    fn sendable(stmt: Statement, mode: StatementMode) -> Result<Sendable<Self>, DbErr>;

    /// The statement that begins a transaction with `options`.
    fn begin_sql(options: &TxnOptions) -> String;

    /// What a connection carries to stop a statement that runs past `DB_STATEMENT_TIMEOUT`:
    /// nothing on PostgreSQL, where the server's `statement_timeout` does it.
    type StatementTimer: Send + Sync + 'static;

    /// Readies a newly opened connection to time its statements, each for at most `timeout`.
    fn time_statements(
        conn: &mut Self::Connection,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<Self::StatementTimer, sqlx::Error>>;

    /// Starts the clock of the statement about to be sent on the connection that owns `timer`.
    fn statement_starts(timer: &Self::StatementTimer);

    /// Whether the backend itself ends a statement that runs too long, so that nothing outside
    /// it needs to. PostgreSQL's server does, but only while it can still answer: a network
    /// partition leaves nothing to answer, so the runner bounds PostgreSQL attempts itself.
    const ENDS_LONG_STATEMENTS_ITSELF: bool;
}

/// The methods of [`OwnedBackend`] that differ between backends only in their types: each hands
/// back sqlx's own future, stream or SeaORM conversion unchanged.
macro_rules! forward_to_sqlx {
    () => {
        fn execute<'c>(
            conn: &'c mut Self::Connection,
            stmt: Sendable<Self>,
        ) -> BoxFuture<'c, Result<Self::QueryResult, sqlx::Error>> {
            conn.execute(stmt)
        }

        fn fetch_all<'c>(
            conn: &'c mut Self::Connection,
            stmt: Sendable<Self>,
        ) -> BoxFuture<'c, Result<Vec<Self::Row>, sqlx::Error>> {
            conn.fetch_all(stmt)
        }

        fn fetch_optional<'c>(
            conn: &'c mut Self::Connection,
            stmt: Sendable<Self>,
        ) -> BoxFuture<'c, Result<Option<Self::Row>, sqlx::Error>> {
            conn.fetch_optional(stmt)
        }

        fn fetch<'c>(
            conn: &'c mut Self::Connection,
            stmt: Sendable<Self>,
        ) -> BoxStream<'c, Result<Self::Row, sqlx::Error>> {
            conn.fetch(stmt)
        }

        fn query_result(row: Self::Row) -> QueryResult {
            QueryResult::from(row)
        }

        fn exec_result(done: Self::QueryResult) -> ExecResult {
            ExecResult::from(done)
        }
    };
}

impl OwnedBackend for Postgres {
    const BACKEND: DbBackend = DbBackend::Postgres;

    forward_to_sqlx!();

    /// A named, cached statement with bound values, or (`simple`, and statements without
    /// arguments) the simple protocol with the values written in.
    fn sendable(stmt: Statement, mode: StatementMode) -> Result<Sendable<Self>, DbErr> {
        Ok(match mode {
            StatementMode::Prepared => {
                let values = stmt.values.unwrap_or(Values(Vec::new()));
                (
                    sqlx::AssertSqlSafe(stmt.sql),
                    Some(<SqlxValues as IntoArguments<Postgres>>::into_arguments(SqlxValues(values))),
                )
            }
            StatementMode::Simple => (sqlx::AssertSqlSafe(inline(stmt)?), None),
        })
    }

    type StatementTimer = ();

    const ENDS_LONG_STATEMENTS_ITSELF: bool = false;

    /// The server times statements: `statement_timeout` is set by the session setup
    /// ([`crate::pool::session_setup_sql`]).
    fn time_statements(_conn: &mut Self::Connection, _timeout: Duration) -> BoxFuture<'_, Result<(), sqlx::Error>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn statement_starts(_timer: &()) {}

    /// `BEGIN` with the options' isolation level and access mode.
    fn begin_sql(options: &TxnOptions) -> String {
        let mut sql = String::from("BEGIN");
        if let Some(isolation) = options.isolation {
            sql.push_str(&format!(" ISOLATION LEVEL {isolation}"));
        }
        if let Some(access) = options.access_mode {
            sql.push_str(&format!(" {access}"));
        }
        sql
    }
}

#[cfg(feature = "sqlite")]
impl OwnedBackend for sqlx::Sqlite {
    const BACKEND: DbBackend = DbBackend::Sqlite;

    forward_to_sqlx!();

    /// Always prepared and cached per connection (SQLite parses nothing twice); the statement
    /// mode is a PostgreSQL setting.
    fn sendable(stmt: Statement, _mode: StatementMode) -> Result<Sendable<Self>, DbErr> {
        let values = stmt.values.unwrap_or(Values(Vec::new()));
        Ok((
            sqlx::AssertSqlSafe(stmt.sql),
            Some(<SqlxValues as IntoArguments<sqlx::Sqlite>>::into_arguments(SqlxValues(values))),
        ))
    }

    type StatementTimer = SqliteStatementTimer;

    const ENDS_LONG_STATEMENTS_ITSELF: bool = true;

    /// Installs a progress handler that interrupts a statement once its time is up: SQLite
    /// stops it (`SQLITE_INTERRUPT`, classified `query_canceled`), rolls back what it had done,
    /// and the connection stays usable, as PostgreSQL's `statement_timeout` does.
    fn time_statements(
        conn: &mut Self::Connection,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<SqliteStatementTimer, sqlx::Error>> {
        Box::pin(async move {
            let timer = SqliteStatementTimer::new(timeout);
            let handler_timer = timer.clone();
            conn.lock_handle()
                .await?
                .set_progress_handler(SqliteStatementTimer::OPS_PER_CHECK, move || handler_timer.may_go_on());
            Ok(timer)
        })
    }

    fn statement_starts(timer: &SqliteStatementTimer) {
        timer.start();
    }

    /// `BEGIN`, `BEGIN IMMEDIATE` or `BEGIN EXCLUSIVE`.
    ///
    /// SQLite's transactions are always serializable, so any isolation level asked for is met as
    /// it is. A read-only access mode has no per-transaction equivalent: it is left out, and said
    /// once per process rather than on every transaction.
    fn begin_sql(options: &TxnOptions) -> String {
        if options.access_mode == Some(sea_orm::AccessMode::ReadOnly) {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                tracing::warn!("SQLite has no read-only transactions: read-only transactions begin as read-write")
            });
        }
        match options.sqlite_mode {
            Some(mode) => format!("BEGIN {}", mode.sqlite_keyword()),
            None => String::from("BEGIN"),
        }
    }
}

/// The clock of one SQLite connection's current statement, shared with the progress handler
/// that SQLite calls on the connection's worker thread while a statement runs.
///
/// Starting a statement is one clock read and one atomic store; no timer is registered with the
/// async runtime. (A runtime timer per statement, armed around each attempt, cost a SQLite call
/// on dbguard's pool more than half of its speed against the bare pool at 4 tasks.)
#[cfg(feature = "sqlite")]
#[derive(Debug, Clone)]
pub struct SqliteStatementTimer {
    /// When the current statement's time is up, in nanoseconds after `epoch`.
    deadline_nanos: std::sync::Arc<std::sync::atomic::AtomicU64>,
    epoch: std::time::Instant,
    timeout: Duration,
}

#[cfg(feature = "sqlite")]
impl SqliteStatementTimer {
    /// Virtual-machine steps between two looks at the clock: a clock read every few
    /// microseconds of work costs a long statement well under 1 %, and a statement that
    /// finishes within that many steps never looks at all.
    const OPS_PER_CHECK: i32 = 1000;

    fn new(timeout: Duration) -> Self {
        Self {
            deadline_nanos: std::sync::Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX)),
            epoch: std::time::Instant::now(),
            timeout,
        }
    }

    fn nanos_now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn start(&self) {
        let deadline = self.nanos_now().saturating_add(u64::try_from(self.timeout.as_nanos()).unwrap_or(u64::MAX));
        self.deadline_nanos.store(deadline, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the running statement is still within its time.
    fn may_go_on(&self) -> bool {
        self.nanos_now() < self.deadline_nanos.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A statement ready for sqlx: with arguments it is prepared (named and cached per
/// connection); without, PostgreSQL sends it over the simple query protocol.
pub type Sendable<DB> = (sqlx::AssertSqlSafe<String>, Option<<DB as sqlx::Database>::Arguments>);

/// The statement with its parameters written in as literals, escaped by sea-query's
/// PostgreSQL builder (strings as `E'…'` with every quote and backslash escaped), for the simple
/// query protocol. A `$n` beyond the parameters given is refused here rather than sent.
fn inline(stmt: Statement) -> Result<String, DbErr> {
    let Some(values) = stmt.values.filter(|values| !values.0.is_empty()) else { return Ok(stmt.sql) };
    if let Some(index) = placeholder_beyond(&stmt.sql, values.0.len()) {
        return Err(DbErr::Custom(format!(
            "the statement refers to parameter ${index} but only {} were given",
            values.0.len()
        )));
    }
    Ok(inject_parameters(&stmt.sql, &values.0, &PostgresQueryBuilder))
}

/// The first `$n` in `sql` with `n` zero or above `given`, if any (conservatively also inside
/// literals, where nothing would be substituted).
fn placeholder_beyond(sql: &str, given: usize) -> Option<usize> {
    let bytes = sql.as_bytes();
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'$' {
            let digits = bytes[index + 1..].iter().take_while(|byte| byte.is_ascii_digit()).count();
            if digits > 0 {
                let number = sql[index + 1..index + 1 + digits].parse::<usize>().unwrap_or(usize::MAX);
                if number == 0 || number > given {
                    return Some(number);
                }
            }
            index += 1 + digits;
        } else {
            index += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_past_the_parameters_are_found() {
        assert_eq!(placeholder_beyond("SELECT $1, $2", 2), None);
        assert_eq!(placeholder_beyond("SELECT $1, $3", 2), Some(3));
        assert_eq!(placeholder_beyond("SELECT $0", 1), Some(0));
        assert_eq!(placeholder_beyond("SELECT $99999999999999999999999", 1), Some(usize::MAX));
        assert_eq!(placeholder_beyond("SELECT '$' || $1", 1), None);
    }

    #[test]
    fn inlined_strings_cannot_close_their_literal() {
        let stmt = Statement::from_sql_and_values(DbBackend::Postgres, "SELECT $1", ["x'; DROP TABLE t; --\\".into()]);
        let sql = inline(stmt).expect("inlined");
        assert_eq!(sql, r"SELECT E'x\'; DROP TABLE t; --\\'");
    }

    #[test]
    fn a_statement_without_parameters_is_sent_as_written() {
        let stmt = Statement::from_string(DbBackend::Postgres, "SELECT $1");
        assert_eq!(inline(stmt).expect("unchanged"), "SELECT $1");
    }
}
