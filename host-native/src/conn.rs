//! [`DbConn`]: the connection a guarded call works on, usable by everything in SeaORM that
//! takes a `&impl ConnectionTrait` (`Entity::find().all(&db)`, ActiveModel writes, raw
//! [`Statement`]s, `execute_unprepared`) or a `&impl StreamTrait` (`Entity::find().stream(&db)`).
//!
//! On PostgreSQL and on a SQLite file it wraps one connection of dbguard's own pool
//! ([`crate::owned_pool`]), checked out at the first statement and returned (with no round trip)
//! when the handle is dropped. On an in-memory SQLite database it wraps SeaORM's pool of one
//! connection, or a transaction on it.

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use dbguard_core::StatementMode;
use futures::StreamExt as _;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use sea_orm::{
    ConnAcquireErr, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, ExecResult,
    QueryResult, RuntimeErr, Statement, StreamTrait, TransactionTrait,
};
use sqlx::Postgres;

use crate::backend::{OwnedBackend, Sendable};
use crate::owned_pool::{OwnedPgPool, OwnedPool, Pooled, PooledObject};
use crate::stats::HotSeries;
use crate::transaction::TxnOptions;

/// A database connection for one attempt of a guarded call: implements
/// [`sea_orm::ConnectionTrait`].
///
/// Statements on one handle run one after another on the same connection. A stream of rows
/// ([`StreamTrait`]) holds that connection until it ends, so a second statement on the same handle
/// issued while the stream is still being read waits for the stream, which then never ends: read
/// the stream to its end (or drop it) first, or collect the rows with `all`. On a SQLite file
/// `DB_STATEMENT_TIMEOUT` counts from a statement's start until its last row is read: a stream
/// read more slowly than that ends with `query_canceled`.
pub struct DbConn {
    kind: Kind,
}

impl std::fmt::Debug for DbConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            Kind::OwnedPostgres(_) => "postgres",
            #[cfg(feature = "sqlite")]
            Kind::OwnedSqlite(_) => "sqlite",
            Kind::Shared(_) => "sea-orm pool",
            Kind::SharedTransaction(_) => "sea-orm transaction",
        };
        f.debug_struct("DbConn").field("kind", &kind).finish_non_exhaustive()
    }
}

enum Kind {
    /// A connection of dbguard's PostgreSQL pool.
    OwnedPostgres(Owned<Postgres>),
    /// A connection of dbguard's pool on a SQLite file.
    #[cfg(feature = "sqlite")]
    OwnedSqlite(Owned<sqlx::Sqlite>),
    /// SeaORM's pool (an in-memory SQLite database).
    Shared(DatabaseConnection),
    /// A transaction on SeaORM's pool.
    SharedTransaction(DatabaseTransaction),
}

/// One connection of dbguard's pool, checked out lazily.
struct Owned<DB: OwnedBackend> {
    pool: OwnedPool<DB>,
    mode: StatementMode,
    slot: tokio::sync::Mutex<Slot<DB>>,
}

struct Slot<DB: OwnedBackend> {
    object: Option<PooledObject<DB>>,
    /// A statement was sent and its answer not yet read to the end: if the handle is dropped
    /// now, nobody knows what the connection will say next.
    in_flight: bool,
    /// `BEGIN` ran and neither `COMMIT` nor `ROLLBACK` finished.
    in_transaction: bool,
    /// The connection failed below SQL (I/O, protocol): it is not worth returning.
    broken: bool,
}

impl<DB: OwnedBackend> Slot<DB> {
    fn empty() -> Self {
        Self { object: None, in_flight: false, in_transaction: false, broken: false }
    }

    /// The checked-out connection ([`Owned::checked_out`] put one here), its statement clock
    /// started: use it for one statement.
    fn for_statement(&mut self) -> &mut DB::Connection {
        self.object.as_mut().expect("a connection is checked out before use").for_statement()
    }
}

impl<DB: OwnedBackend> Drop for Owned<DB> {
    fn drop(&mut self) {
        let slot = self.slot.get_mut();
        let Some(mut object) = slot.object.take() else { return };
        let used_for = object.mark_returned(Instant::now());
        HotSeries::with(|series| series.usage_seconds.record(used_for.as_secs_f64()));
        if slot.in_flight || slot.in_transaction || slot.broken {
            Pooled::discard(object);
        }
    }
}

impl DbConn {
    pub(crate) fn owned_postgres(pool: OwnedPgPool, mode: StatementMode) -> Self {
        Self { kind: Kind::OwnedPostgres(Owned::new(pool, mode)) }
    }

    #[cfg(feature = "sqlite")]
    pub(crate) fn owned_sqlite(pool: crate::owned_pool::OwnedSqlitePool) -> Self {
        Self { kind: Kind::OwnedSqlite(Owned::new(pool, StatementMode::Prepared)) }
    }

    pub(crate) fn shared(db: DatabaseConnection) -> Self {
        Self { kind: Kind::Shared(db) }
    }

    /// Begins a transaction on this connection (checking one out first).
    pub(crate) async fn begin(self, options: &TxnOptions) -> Result<Self, DbErr> {
        match self.kind {
            Kind::OwnedPostgres(owned) => Ok(Self { kind: Kind::OwnedPostgres(owned.begin(options).await?) }),
            #[cfg(feature = "sqlite")]
            Kind::OwnedSqlite(owned) => Ok(Self { kind: Kind::OwnedSqlite(owned.begin(options).await?) }),
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
            Kind::OwnedPostgres(owned) => owned.end_transaction("COMMIT").await,
            #[cfg(feature = "sqlite")]
            Kind::OwnedSqlite(owned) => owned.end_transaction("COMMIT").await,
            Kind::SharedTransaction(txn) => txn.commit().await,
            Kind::Shared(_) => Ok(()),
        }
    }

    /// Rolls back the transaction [`DbConn::begin`] opened.
    pub(crate) async fn rollback(self) -> Result<(), DbErr> {
        match self.kind {
            Kind::OwnedPostgres(owned) => owned.end_transaction("ROLLBACK").await,
            #[cfg(feature = "sqlite")]
            Kind::OwnedSqlite(owned) => owned.end_transaction("ROLLBACK").await,
            Kind::SharedTransaction(txn) => txn.rollback().await,
            Kind::Shared(_) => Ok(()),
        }
    }
}

impl<DB: OwnedBackend> Owned<DB> {
    fn new(pool: OwnedPool<DB>, mode: StatementMode) -> Self {
        Self { pool, mode, slot: tokio::sync::Mutex::new(Slot::empty()) }
    }

    /// Begins a transaction on this handle's connection (checking one out first).
    async fn begin(self, options: &TxnOptions) -> Result<Self, DbErr> {
        self.execute_unprepared(&DB::begin_sql(options)).await?;
        self.slot.lock().await.in_transaction = true;
        Ok(self)
    }

    /// Runs `work` on the checked-out connection (checking one out first), keeping track of
    /// whether the connection is in a known state.
    async fn with_conn<R>(
        &self,
        work: impl for<'c> FnOnce(&'c mut DB::Connection) -> BoxFuture<'c, Result<R, sqlx::Error>>,
        map_err: fn(sqlx::Error) -> DbErr,
    ) -> Result<R, DbErr> {
        let mut slot = self.checked_out().await?;
        slot.in_flight = true;
        let result = work(slot.for_statement()).await;
        slot.in_flight = false;
        result.map_err(|err| map_err(self.note_failure(&mut slot, err)))
    }

    /// The slot, locked, with a connection checked out.
    async fn checked_out(&self) -> Result<tokio::sync::MutexGuard<'_, Slot<DB>>, DbErr> {
        let mut slot = self.slot.lock().await;
        if slot.object.is_none() {
            slot.object = Some(self.pool.checkout().await?);
        }
        Ok(slot)
    }

    /// Marks the connection broken when `err` says it is, and hands `err` back.
    fn note_failure(&self, slot: &mut Slot<DB>, err: sqlx::Error) -> sqlx::Error {
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
        let sendable = DB::sendable(stmt, self.mode)?;
        let mut slot = self.checked_out().await?;
        slot.in_flight = true;
        Ok(Box::pin(async_stream::stream! {
            let mut failure = None;
            {
                let mut rows = DB::fetch(slot.for_statement(), sendable);
                while let Some(row) = rows.next().await {
                    match row {
                        Ok(row) => yield Ok(DB::query_result(row)),
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
        let unprepared: Sendable<DB> = (sqlx::AssertSqlSafe(sql.to_owned()), None);
        self.with_conn(move |conn| DB::execute(conn, unprepared), exec_err).await.map(DB::exec_result)
    }

    async fn execute(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        let sendable = DB::sendable(stmt, self.mode)?;
        self.with_conn(move |conn| DB::execute(conn, sendable), exec_err).await.map(DB::exec_result)
    }

    async fn query_all(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        let sendable = DB::sendable(stmt, self.mode)?;
        let rows = self.with_conn(move |conn| DB::fetch_all(conn, sendable), query_err).await?;
        Ok(rows.into_iter().map(DB::query_result).collect())
    }

    async fn query_one(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        let sendable = DB::sendable(stmt, self.mode)?;
        let row = self.with_conn(move |conn| DB::fetch_optional(conn, sendable), query_err).await?;
        Ok(row.map(DB::query_result))
    }
}

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

#[async_trait::async_trait]
impl ConnectionTrait for DbConn {
    fn get_database_backend(&self) -> DbBackend {
        match &self.kind {
            Kind::OwnedPostgres(_) => DbBackend::Postgres,
            #[cfg(feature = "sqlite")]
            Kind::OwnedSqlite(_) => DbBackend::Sqlite,
            Kind::Shared(db) => ConnectionTrait::get_database_backend(db),
            Kind::SharedTransaction(txn) => ConnectionTrait::get_database_backend(txn),
        }
    }

    async fn execute_raw(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        match &self.kind {
            Kind::OwnedPostgres(owned) => owned.execute(stmt).await,
            #[cfg(feature = "sqlite")]
            Kind::OwnedSqlite(owned) => owned.execute(stmt).await,
            Kind::Shared(db) => db.execute_raw(stmt).await,
            Kind::SharedTransaction(txn) => txn.execute_raw(stmt).await,
        }
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        match &self.kind {
            Kind::OwnedPostgres(owned) => owned.execute_unprepared(sql).await,
            #[cfg(feature = "sqlite")]
            Kind::OwnedSqlite(owned) => owned.execute_unprepared(sql).await,
            Kind::Shared(db) => db.execute_unprepared(sql).await,
            Kind::SharedTransaction(txn) => txn.execute_unprepared(sql).await,
        }
    }

    async fn query_one_raw(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        match &self.kind {
            Kind::OwnedPostgres(owned) => owned.query_one(stmt).await,
            #[cfg(feature = "sqlite")]
            Kind::OwnedSqlite(owned) => owned.query_one(stmt).await,
            Kind::Shared(db) => db.query_one_raw(stmt).await,
            Kind::SharedTransaction(txn) => txn.query_one_raw(stmt).await,
        }
    }

    async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        match &self.kind {
            Kind::OwnedPostgres(owned) => owned.query_all(stmt).await,
            #[cfg(feature = "sqlite")]
            Kind::OwnedSqlite(owned) => owned.query_all(stmt).await,
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
                Kind::OwnedPostgres(owned) => owned.stream(stmt).await,
                #[cfg(feature = "sqlite")]
                Kind::OwnedSqlite(owned) => owned.stream(stmt).await,
                Kind::Shared(db) => Ok(db.stream_raw(stmt).await?.boxed()),
                Kind::SharedTransaction(txn) => Ok(txn.stream_raw(stmt).await?.boxed()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every call builds a statement's future and boxes it (`ConnectionTrait` returns boxed
    /// futures), copying it whole: with a connect's state machine inline it was 11 KB per
    /// call, most of the guarded path's cost over the bare pool. A connect is boxed on its own.
    #[tokio::test]
    async fn a_statement_future_stays_small() {
        let url = "postgres://postgres@127.0.0.1:1/never_connected";
        let config = dbguard_core::DbConfig::from_vars([("DATABASE_URL", url)]).expect("valid");
        let options: sqlx::postgres::PgConnectOptions = url.parse().expect("valid");
        let db = DbConn::owned_postgres(OwnedPgPool::new(options, None, &config.pool), StatementMode::Prepared);
        let future = db.query_one_raw(Statement::from_string(DbBackend::Postgres, "SELECT 1"));
        let size = std::mem::size_of_val(&*future);
        assert!(size <= 4096, "a statement's future takes {size} bytes");
    }
}
