//! [`DbConn`]: the connection a guarded call works on, usable by everything in SeaORM that
//! takes a `&impl ConnectionTrait` (`Entity::find().all(&db)`, ActiveModel writes, raw
//! [`Statement`]s, `execute_unprepared`) or a `&impl StreamTrait` (`Entity::find().stream(&db)`).
//!
//! On PostgreSQL it wraps one connection of dbguard's own pool ([`crate::pg_pool`]), checked
//! out at the first statement and returned (with no round trip) when the handle is dropped.
//! On SQLite it wraps SeaORM's pool or transaction.

use std::time::Instant;

use dbguard_core::StatementMode;
use std::future::Future;
use std::pin::Pin;

use futures::StreamExt as _;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use sea_orm::sea_query::{PostgresQueryBuilder, Values, inject_parameters};
use sea_orm::{
    ConnAcquireErr, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, ExecResult,
    QueryResult, RuntimeErr, Statement, StreamTrait, TransactionTrait,
};
use sea_query_sqlx::SqlxValues;
use sqlx::postgres::{PgArguments, PgConnection};
use sqlx::{Executor as _, IntoArguments, Postgres};

use crate::pg_pool::{OwnedPgPool, PgObject, PooledPg};
use crate::stats::HotSeries;
use crate::transaction::TxnOptions;

/// A database connection for one attempt of a guarded call: implements
/// [`sea_orm::ConnectionTrait`].
///
/// Statements on one handle run one after another on the same connection.
pub struct DbConn {
    kind: Kind,
}

impl std::fmt::Debug for DbConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            Kind::Owned(_) => "postgres",
            Kind::Shared(_) => "sea-orm pool",
            Kind::SharedTransaction(_) => "sea-orm transaction",
        };
        f.debug_struct("DbConn").field("kind", &kind).finish_non_exhaustive()
    }
}

enum Kind {
    /// A connection of dbguard's PostgreSQL pool.
    Owned(Owned),
    /// SeaORM's pool (SQLite).
    Shared(DatabaseConnection),
    /// A transaction on SeaORM's pool (SQLite).
    SharedTransaction(DatabaseTransaction),
}

/// One connection of dbguard's pool, checked out lazily.
struct Owned {
    pool: OwnedPgPool,
    mode: StatementMode,
    slot: tokio::sync::Mutex<Slot>,
}

#[derive(Default)]
struct Slot {
    object: Option<PgObject>,
    /// A statement was sent and its answer not yet read to the end: if the handle is dropped
    /// now, nobody knows what the connection will say next.
    in_flight: bool,
    /// `BEGIN` ran and neither `COMMIT` nor `ROLLBACK` finished.
    in_transaction: bool,
    /// The connection failed below SQL (I/O, protocol): it is not worth returning.
    broken: bool,
}

impl Slot {
    /// The checked-out connection ([`Owned::checked_out`] put one here).
    fn conn(&mut self) -> &mut PgConnection {
        &mut self.object.as_mut().expect("a connection is checked out before use").conn
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        let slot = self.slot.get_mut();
        let Some(mut object) = slot.object.take() else { return };
        let used_for = object.mark_returned(Instant::now());
        HotSeries::with(|series| series.usage_seconds.record(used_for.as_secs_f64()));
        if slot.in_flight || slot.in_transaction || slot.broken {
            PooledPg::discard(object);
        }
    }
}

impl DbConn {
    pub(crate) fn owned(pool: OwnedPgPool, mode: StatementMode) -> Self {
        Self { kind: Kind::Owned(Owned { pool, mode, slot: tokio::sync::Mutex::new(Slot::default()) }) }
    }

    pub(crate) fn shared(db: DatabaseConnection) -> Self {
        Self { kind: Kind::Shared(db) }
    }

    /// Begins a transaction on this connection (checking one out first).
    pub(crate) async fn begin(self, options: &TxnOptions) -> Result<Self, DbErr> {
        match self.kind {
            Kind::Owned(owned) => {
                owned.execute_unprepared(&begin_sql(options)).await?;
                owned.slot.lock().await.in_transaction = true;
                Ok(Self { kind: Kind::Owned(owned) })
            }
            Kind::Shared(db) => {
                let txn = db.begin_with_options(options.to_sea_orm()).await?;
                Ok(Self { kind: Kind::SharedTransaction(txn) })
            }
            Kind::SharedTransaction(_) => Err(DbErr::Custom("a transaction is already open on this handle".into())),
        }
    }

    /// Commits the transaction [`DbConn::begin`] opened.
    pub(crate) async fn commit(self) -> Result<(), DbErr> {
        match self.kind {
            Kind::Owned(owned) => owned.end_transaction("COMMIT").await,
            Kind::SharedTransaction(txn) => txn.commit().await,
            Kind::Shared(_) => Ok(()),
        }
    }

    /// Rolls back the transaction [`DbConn::begin`] opened.
    pub(crate) async fn rollback(self) -> Result<(), DbErr> {
        match self.kind {
            Kind::Owned(owned) => owned.end_transaction("ROLLBACK").await,
            Kind::SharedTransaction(txn) => txn.rollback().await,
            Kind::Shared(_) => Ok(()),
        }
    }
}

/// `BEGIN` with the options' isolation level and access mode (PostgreSQL).
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

impl Owned {
    /// Runs `work` on the checked-out connection (checking one out first), keeping track of
    /// whether the connection is in a known state.
    async fn with_conn<R>(
        &self,
        work: impl for<'c> FnOnce(&'c mut PgConnection) -> BoxFuture<'c, Result<R, sqlx::Error>>,
        map_err: fn(sqlx::Error) -> DbErr,
    ) -> Result<R, DbErr> {
        let mut slot = self.checked_out().await?;
        slot.in_flight = true;
        let result = work(slot.conn()).await;
        slot.in_flight = false;
        result.map_err(|err| map_err(self.note_failure(&mut slot, err)))
    }

    /// The slot, locked, with a connection checked out.
    async fn checked_out(&self) -> Result<tokio::sync::MutexGuard<'_, Slot>, DbErr> {
        let mut slot = self.slot.lock().await;
        if slot.object.is_none() {
            slot.object = Some(self.pool.checkout().await?);
        }
        Ok(slot)
    }

    /// Marks the connection broken when `err` says it is, and hands `err` back.
    fn note_failure(&self, slot: &mut Slot, err: sqlx::Error) -> sqlx::Error {
        // A statement the server rejected leaves the connection usable; a broken socket, a
        // protocol error or a server ending the session does not. What broke this connection (a
        // restart, terminated backends) likely broke its idle siblings too: they are pinged
        // before their next use.
        let ends_session = crate::classify::classify_sqlx(&err).class.says_server_may_be_gone();
        if ends_session || !matches!(err, sqlx::Error::Database(_)) {
            slot.broken = true;
            self.pool.suspect_idle_connections();
        }
        err
    }

    /// The rows of `stmt` as they arrive. The stream holds the connection until it ends; one
    /// dropped before its end leaves rows unread, so the connection is closed, not returned.
    async fn stream(&self, stmt: Statement) -> Result<BoxStream<'_, Result<QueryResult, DbErr>>, DbErr> {
        let sendable = self.sendable(stmt)?;
        let mut slot = self.checked_out().await?;
        slot.in_flight = true;
        Ok(Box::pin(async_stream::stream! {
            let mut failure = None;
            {
                let mut rows = slot.conn().fetch(sendable);
                while let Some(row) = rows.next().await {
                    match row {
                        Ok(row) => yield Ok(QueryResult::from(row)),
                        Err(err) => {
                            failure = Some(err);
                            break;
                        }
                    }
                }
            }
            slot.in_flight = false;
            if let Some(err) = failure {
                yield Err(query_err(self.note_failure(&mut slot, err)));
            }
        }))
    }

    async fn end_transaction(&self, sql: &'static str) -> Result<(), DbErr> {
        self.execute_unprepared(sql).await?;
        self.slot.lock().await.in_transaction = false;
        Ok(())
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        let unprepared: Sendable = (sqlx::AssertSqlSafe(sql.to_owned()), None);
        self.with_conn(move |conn| conn.execute(unprepared), exec_err).await.map(ExecResult::from)
    }

    async fn execute(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        let sendable = self.sendable(stmt)?;
        self.with_conn(move |conn| conn.execute(sendable), exec_err).await.map(ExecResult::from)
    }

    async fn query_all(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        let sendable = self.sendable(stmt)?;
        let rows = self.with_conn(move |conn| conn.fetch_all(sendable), query_err).await?;
        Ok(rows.into_iter().map(QueryResult::from).collect())
    }

    async fn query_one(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        let sendable = self.sendable(stmt)?;
        let row = self.with_conn(move |conn| conn.fetch_optional(sendable), query_err).await?;
        Ok(row.map(QueryResult::from))
    }

    /// `stmt` as the statement mode sends it: a named, cached statement with bound values, or
    /// (no arguments) the simple protocol with the values written in.
    fn sendable(&self, stmt: Statement) -> Result<Sendable, DbErr> {
        Ok(match self.mode {
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
}

/// A statement ready for sqlx: with arguments it is prepared (named and cached per
/// connection); without, it goes over the simple query protocol.
type Sendable = (sqlx::AssertSqlSafe<String>, Option<PgArguments>);

/// A failed statement, as SeaORM reports one (so that classification sees the same shapes).
fn exec_err(err: sqlx::Error) -> DbErr {
    DbErr::Exec(RuntimeErr::SqlxError(err.into()))
}

/// A failed query, as SeaORM reports one.
fn query_err(err: sqlx::Error) -> DbErr {
    DbErr::Query(RuntimeErr::SqlxError(err.into()))
}

/// A connection that could not be checked out, as SeaORM's pool reports one.
pub(crate) fn acquire_err(err: sqlx::Error) -> DbErr {
    match err {
        sqlx::Error::PoolTimedOut => DbErr::ConnectionAcquire(ConnAcquireErr::Timeout),
        sqlx::Error::PoolClosed => DbErr::ConnectionAcquire(ConnAcquireErr::ConnectionClosed),
        other => DbErr::Conn(RuntimeErr::SqlxError(other.into())),
    }
}

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

#[async_trait::async_trait]
impl ConnectionTrait for DbConn {
    fn get_database_backend(&self) -> DbBackend {
        match &self.kind {
            Kind::Owned(_) => DbBackend::Postgres,
            Kind::Shared(db) => ConnectionTrait::get_database_backend(db),
            Kind::SharedTransaction(txn) => ConnectionTrait::get_database_backend(txn),
        }
    }

    async fn execute_raw(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        match &self.kind {
            Kind::Owned(owned) => owned.execute(stmt).await,
            Kind::Shared(db) => db.execute_raw(stmt).await,
            Kind::SharedTransaction(txn) => txn.execute_raw(stmt).await,
        }
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        match &self.kind {
            Kind::Owned(owned) => owned.execute_unprepared(sql).await,
            Kind::Shared(db) => db.execute_unprepared(sql).await,
            Kind::SharedTransaction(txn) => txn.execute_unprepared(sql).await,
        }
    }

    async fn query_one_raw(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        match &self.kind {
            Kind::Owned(owned) => owned.query_one(stmt).await,
            Kind::Shared(db) => db.query_one_raw(stmt).await,
            Kind::SharedTransaction(txn) => txn.query_one_raw(stmt).await,
        }
    }

    async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        match &self.kind {
            Kind::Owned(owned) => owned.query_all(stmt).await,
            Kind::Shared(db) => db.query_all_raw(stmt).await,
            Kind::SharedTransaction(txn) => txn.query_all_raw(stmt).await,
        }
    }
}

impl StreamTrait for DbConn {
    type Stream<'a> = BoxStream<'a, Result<QueryResult, DbErr>>;

    fn get_database_backend(&self) -> DbBackend {
        ConnectionTrait::get_database_backend(self)
    }

    fn stream_raw<'a>(
        &'a self,
        stmt: Statement,
    ) -> Pin<Box<dyn Future<Output = Result<Self::Stream<'a>, DbErr>> + 'a + Send>> {
        Box::pin(async move {
            match &self.kind {
                Kind::Owned(owned) => owned.stream(stmt).await,
                Kind::Shared(db) => Ok(db.stream_raw(stmt).await?.boxed()),
                Kind::SharedTransaction(txn) => Ok(txn.stream_raw(stmt).await?.boxed()),
            }
        })
    }
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

    /// Every call builds a statement's future and boxes it (`ConnectionTrait` returns boxed
    /// futures), copying it whole: with a connect's state machine inline it was 11 KB per
    /// call, most of the guarded path's cost over the bare pool. A connect is boxed on its own.
    #[tokio::test]
    async fn a_statement_future_stays_small() {
        let url = "postgres://postgres@127.0.0.1:1/never_connected";
        let config = dbguard_core::DbConfig::from_vars([("DATABASE_URL", url)]).expect("valid");
        let options: sqlx::postgres::PgConnectOptions = url.parse().expect("valid");
        let db = DbConn::owned(OwnedPgPool::new(options, None, &config.pool), StatementMode::Prepared);
        let future = db.query_one_raw(Statement::from_string(DbBackend::Postgres, "SELECT 1"));
        let size = std::mem::size_of_val(&*future);
        assert!(size <= 4096, "a statement's future takes {size} bytes");
    }
}
