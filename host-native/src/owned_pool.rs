//! dbguard's own pool: deadpool's managed pool of sqlx connections, for PostgreSQL
//! ([`OwnedPgPool`]) and SQLite files ([`OwnedSqlitePool`]).
//!
//! sqlx's pool pings every connection as it comes back (on PostgreSQL a round trip per call, on
//! SQLite a hop to the connection's worker thread; no option turns it off). Here a connection
//! goes back with nothing done to it, and is validated at checkout only when it sat idle longer
//! than [`VALIDATE_IF_IDLE_FOR`](crate::pool::VALIDATE_IF_IDLE_FOR) (HikariCP's bypass window).
//! A connection whose state is unknown — a statement was in flight when its future was dropped,
//! a transaction was left open, the socket broke — is closed instead of returned
//! ([`Pooled::discard`]).
//!
//! Sizing in SQLAlchemy's terms: `DB_POOL_SIZE` connections are opened up front and kept;
//! up to `DB_MAX_OVERFLOW` more open under load and are closed once idle for
//! [`OVERFLOW_IDLE_TIMEOUT`](crate::pool::OVERFLOW_IDLE_TIMEOUT); `DB_POOL_TIMEOUT` bounds
//! the wait for a connection (and each connect); `DB_POOL_RECYCLE` bounds a connection's age.
//! The connection returned last is handed out first, so a light load keeps reusing a few warm
//! sessions and the rest go idle.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dbguard_core::PoolConfig;
use deadpool::managed::{self, Metrics, PoolError, RecycleError, RecycleResult};
use sea_orm::DbErr;
use sqlx::{ConnectOptions as _, Connection as _};

use crate::backend::OwnedBackend;
use crate::conn::acquire_err;
use crate::pool::{OVERFLOW_IDLE_TIMEOUT, VALIDATE_IF_IDLE_FOR};
use crate::stats::HotSeries;

/// How often the pool closes idle overflow connections and connections past their lifetime.
const MAINTENANCE_PERIOD: Duration = Duration::from_secs(1);

/// sqlx's connect options for a backend's connections.
type ConnectOptionsOf<DB> = <<DB as sqlx::Database>::Connection as sqlx::Connection>::Options;

/// One pooled connection and what the pool knows about it.
pub(crate) struct Pooled<DB: OwnedBackend> {
    conn: DB::Connection,
    /// Stops the connection's statements at `DB_STATEMENT_TIMEOUT` where the backend needs
    /// dbguard to (SQLite).
    statement_timer: DB::StatementTimer,
    /// When the connection last went back to the pool (or was opened).
    returned_at: Instant,
    /// When the connection was last handed out by the pool (set by `create` and `recycle`,
    /// which run at the end of every checkout).
    checked_out_at: Instant,
}

impl<DB: OwnedBackend> Pooled<DB> {
    /// The connection, its statement clock started: use it for one statement.
    pub(crate) fn for_statement(&mut self) -> &mut DB::Connection {
        DB::statement_starts(&self.statement_timer);
        &mut self.conn
    }

    /// Marks the connection as returned `now`: the idle window starts. Returns how long it
    /// was checked out.
    pub(crate) fn mark_returned(&mut self, now: Instant) -> Duration {
        self.returned_at = now;
        now.saturating_duration_since(self.checked_out_at)
    }

    /// Takes a connection in an unknown state out of its pool and closes it (dropping the
    /// socket or the SQLite handle: the server, or SQLite, rolls back whatever was open).
    pub(crate) fn discard(object: PooledObject<DB>) {
        drop(managed::Object::take(object));
    }
}

/// Opens and validates connections for deadpool.
pub(crate) struct ConnManager<DB: OwnedBackend> {
    options: ConnectOptionsOf<DB>,
    /// Run on each new connection ([`crate::pool::session_setup_sql`]).
    session_setup: Option<String>,
    /// `DB_POOL_RECYCLE`: connections older than this are closed, not reused.
    max_lifetime: Duration,
    /// `DB_STATEMENT_TIMEOUT`, for backends that dbguard times ([`OwnedBackend::time_statements`]).
    statement_timeout: Duration,
    /// Connections returned before this moment (nanoseconds after `epoch`) are validated at
    /// their next checkout, however briefly they were idle: one of their siblings broke.
    suspect_before_nanos: AtomicU64,
    epoch: Instant,
}

impl<DB: OwnedBackend> ConnManager<DB> {
    fn nanos_since_epoch(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Whether `pooled` must be pinged before use `now`.
    fn needs_validation(&self, pooled: &Pooled<DB>, now: Instant) -> bool {
        now.saturating_duration_since(pooled.returned_at) > VALIDATE_IF_IDLE_FOR
            || self.nanos_since_epoch(pooled.returned_at) < self.suspect_before_nanos.load(Ordering::Relaxed)
    }
}

impl<DB: OwnedBackend> managed::Manager for ConnManager<DB> {
    type Type = Pooled<DB>;
    type Error = sqlx::Error;

    async fn create(&self) -> Result<Pooled<DB>, sqlx::Error> {
        // Boxed: a connect's state machine is about 10 KB, and unboxed it would be part of
        // every checkout's future, copied on every call although a connect is rare.
        let mut conn = Box::pin(self.options.connect()).await?;
        if let Some(setup) = &self.session_setup {
            DB::execute(&mut conn, (sqlx::AssertSqlSafe(setup.clone()), None)).await?;
        }
        let statement_timer = DB::time_statements(&mut conn, self.statement_timeout).await?;
        let now = Instant::now();
        Ok(Pooled { conn, statement_timer, returned_at: now, checked_out_at: now })
    }

    async fn recycle(&self, pooled: &mut Pooled<DB>, metrics: &Metrics) -> RecycleResult<sqlx::Error> {
        // One clock read for both checks: this runs on every checkout.
        let now = Instant::now();
        if now.saturating_duration_since(metrics.created) >= self.max_lifetime {
            return Err(RecycleError::message("the connection reached DB_POOL_RECYCLE"));
        }
        pooled.checked_out_at = now;
        if self.needs_validation(pooled, now) {
            // No timeout of its own: the checkout's deadline ([`OwnedPool::checkout`]) bounds
            // the ping together with everything else a checkout waits for. Boxed: it is rare,
            // and inline it would grow every statement's future.
            Box::pin(pooled.conn.ping()).await.map_err(RecycleError::Backend)?;
            pooled.checked_out_at = Instant::now();
        }
        Ok(())
    }
}

/// A checked-out connection.
pub(crate) type PooledObject<DB> = managed::Object<ConnManager<DB>>;

/// dbguard's pool of `DB` connections on one server or file. Cloning is cheap and shares the
/// pool.
pub struct OwnedPool<DB: OwnedBackend> {
    pool: managed::Pool<ConnManager<DB>>,
    shape: Arc<PoolShape>,
}

/// dbguard's PostgreSQL pool on one server.
pub type OwnedPgPool = OwnedPool<sqlx::Postgres>;

/// dbguard's pool on one SQLite database file.
#[cfg(feature = "sqlite")]
pub type OwnedSqlitePool = OwnedPool<sqlx::Sqlite>;

// Written out: derived, both would ask `DB` itself to be `Clone` or `Debug`.
impl<DB: OwnedBackend> Clone for OwnedPool<DB> {
    fn clone(&self) -> Self {
        Self { pool: self.pool.clone(), shape: Arc::clone(&self.shape) }
    }
}

impl<DB: OwnedBackend> std::fmt::Debug for OwnedPool<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnedPool")
            .field("backend", &<DB as sqlx::Database>::NAME)
            .field("status", &self.pool.status())
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct PoolShape {
    size: usize,
    warming: tokio::sync::Mutex<()>,
    acquire_timeout: Duration,
    max_lifetime: Duration,
}

/// How full the pool is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnedPoolCounts {
    /// Connections open (idle and checked out).
    pub open: u32,
    /// Connections idle in the pool.
    pub idle: u32,
    /// Callers waiting for a connection.
    pub waiting: u32,
}

impl<DB: OwnedBackend> OwnedPool<DB> {
    /// A pool of `config.max_connections()` connections with `options`; nothing is opened
    /// until [`OwnedPool::warm`] or the first checkout. Must be called inside a Tokio runtime
    /// (the maintenance task is spawned on it).
    pub(crate) fn new(options: ConnectOptionsOf<DB>, session_setup: Option<String>, config: &PoolConfig) -> Self {
        let manager = ConnManager {
            options,
            session_setup,
            max_lifetime: config.recycle,
            statement_timeout: config.statement_timeout,
            suspect_before_nanos: AtomicU64::new(0),
            epoch: Instant::now(),
        };
        let max_size = usize::try_from(config.max_connections()).unwrap_or(usize::MAX).max(1);
        let pool = managed::Pool::builder(manager)
            .max_size(max_size)
            .runtime(deadpool::Runtime::Tokio1)
            // The connection returned last goes out first. Handed out in turn, every warm
            // connection stays in use under a light load: none idles long enough for overflow to
            // close, and each call meets a server process that slept since its last turn
            // (on PostgreSQL at 4 tasks on a 16-connection pool that halved throughput in the load
            // bench).
            .queue_mode(managed::QueueMode::Lifo)
            // One connect may take at most the acquire timeout; the whole checkout is bounded by
            // it too ([`OwnedPool::checkout`]).
            .create_timeout(Some(config.timeout))
            .build()
            .expect("a runtime and a positive size are always given");
        let shape = Arc::new(PoolShape {
            size: usize::try_from(config.size).unwrap_or(usize::MAX),
            warming: tokio::sync::Mutex::new(()),
            acquire_timeout: config.timeout,
            max_lifetime: config.recycle,
        });
        let owned = Self { pool, shape };
        owned.spawn_maintenance();
        owned
    }

    /// Opens `DB_POOL_SIZE` connections, failing with the first connect error.
    pub(crate) async fn warm(&self) -> Result<(), DbErr> {
        // One warm-up at a time: two would each see the pool short and open the difference.
        let _one_at_a_time = self.shape.warming.lock().await;
        let wanted = self.shape.size.saturating_sub(self.pool.status().size);
        let checkouts = (0..wanted).map(|_| self.checkout());
        let opened = futures::future::join_all(checkouts).await;
        for object in opened {
            object?.mark_returned(Instant::now());
        }
        Ok(())
    }

    /// A connection, within `DB_POOL_TIMEOUT`: an idle one (validated if it sat idle past the
    /// window) or a new one.
    ///
    /// A connect that fails because the server may be gone (refused, reset, shutting down,
    /// starting up) is tried again every [`POLL_INTERVAL`](crate::reachability::POLL_INTERVAL)
    /// until the timeout, so a call that arrives while a server restarts waits for it as it
    /// would for a busy pool, and the breaker sees one failure per call, not one per connect;
    /// when the time is up the caller gets that connect's own error (`connection_refused`), not a
    /// pool timeout. Other connect failures (authentication, a missing database) come back at once.
    pub(crate) async fn checkout(&self) -> Result<PooledObject<DB>, DbErr> {
        let started = tokio::time::Instant::now();
        let deadline = started + self.shape.acquire_timeout;
        let mut last_connect_error = None;
        let object = loop {
            // tokio registers the deadline's timer only if the checkout has to wait: taking an
            // idle connection that needs no ping completes at the first poll and arms nothing.
            let error = match tokio::time::timeout_at(deadline, self.pool.get()).await {
                Ok(Ok(object)) => break object,
                Ok(Err(PoolError::Backend(err))) => err,
                Ok(Err(PoolError::Timeout(_))) | Err(_) => {
                    return Err(acquire_err(last_connect_error.unwrap_or(sqlx::Error::PoolTimedOut)));
                }
                Ok(Err(PoolError::Closed)) => return Err(acquire_err(sqlx::Error::PoolClosed)),
                Ok(Err(other)) => return Err(DbErr::Custom(format!("connection pool: {other}"))),
            };
            let retry_at = tokio::time::Instant::now() + crate::reachability::POLL_INTERVAL;
            if !crate::classify::classify_sqlx(&error).class.says_server_may_be_gone() || retry_at >= deadline {
                return Err(acquire_err(error));
            }
            last_connect_error = Some(error);
            tokio::time::sleep_until(retry_at).await;
        };
        // The checkout ended when the pool handed the connection over: `create` or `recycle`
        // noted that moment, so no second clock read is needed here.
        let waited = object.checked_out_at.saturating_duration_since(started.into_std());
        HotSeries::with(|series| series.acquire_seconds.record(waited.as_secs_f64()));
        Ok(object)
    }

    /// Occupancy in SQLAlchemy's terms, for a pool sized by `config`.
    pub(crate) fn status(&self, config: &PoolConfig) -> dbguard_core::PoolStatus {
        let counts = self.counts();
        let mut status =
            dbguard_core::PoolStatus::from_counts(config.size, config.max_overflow, counts.open, counts.idle);
        status.waiting = Some(counts.waiting);
        status
    }

    /// Marks every connection now idle in the pool for validation at its next checkout.
    pub(crate) fn suspect_idle_connections(&self) {
        let manager = self.pool.manager();
        manager.suspect_before_nanos.fetch_max(manager.nanos_since_epoch(Instant::now()), Ordering::Relaxed);
    }

    /// Occupancy now.
    pub fn counts(&self) -> OwnedPoolCounts {
        let status = self.pool.status();
        let to_u32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        OwnedPoolCounts { open: to_u32(status.size), idle: to_u32(status.available), waiting: to_u32(status.waiting) }
    }

    /// Closes the pool: waiting callers fail with `PoolClosed`, idle connections close now and
    /// checked-out ones as they come back.
    pub(crate) fn close(&self) {
        self.pool.close();
    }

    /// Closes idle connections above `DB_POOL_SIZE` that have sat idle for
    /// [`OVERFLOW_IDLE_TIMEOUT`] and idle connections past `DB_POOL_RECYCLE`, then opens
    /// connections up to `DB_POOL_SIZE` again (after a restart dropped them, or on a lazy
    /// pool). A failed connect is left for the next tick: callers see their own errors.
    async fn maintain(&self) {
        let open = self.pool.status().size;
        let mut surplus = open.saturating_sub(self.shape.size);
        let max_lifetime = self.shape.max_lifetime;
        let now = Instant::now();
        let removed = self.pool.retain(|pooled, metrics| {
            if metrics.age() >= max_lifetime {
                surplus = surplus.saturating_sub(1);
                return false;
            }
            if surplus > 0 && now.saturating_duration_since(pooled.returned_at) >= OVERFLOW_IDLE_TIMEOUT {
                surplus -= 1;
                return false;
            }
            true
        });
        if !removed.removed.is_empty() {
            tracing::debug!(closed = removed.removed.len(), "closed idle overflow or expired connections");
        }
        if self.pool.status().size < self.shape.size
            && let Err(err) = self.warm().await
        {
            tracing::debug!(error = %err, "could not open the pool's connections yet");
        }
    }

    fn spawn_maintenance(&self) {
        let weak = self.pool.weak();
        let shape = Arc::clone(&self.shape);
        tokio::spawn(async move {
            // The first tick after one period: a pool opened eagerly is warm already, and one
            // opened lazily may be replaced before then (`DbManager::connect` does).
            let mut tick =
                tokio::time::interval_at(tokio::time::Instant::now() + MAINTENANCE_PERIOD, MAINTENANCE_PERIOD);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(pool) = weak.upgrade() else { return };
                if pool.is_closed() {
                    return;
                }
                Self { pool, shape: Arc::clone(&shape) }.maintain().await;
            }
        });
    }
}
