//! Turning a [`DbConfig`] into pools: dbguard's own ([`OwnedPgPool`], [`OwnedSqlitePool`]) for
//! guarded calls, and a SeaORM pool for code that needs a plain [`DatabaseConnection`].
//!
//! Mapping for SeaORM's pool (SQLAlchemy's names → sqlx's):
//! pool_size → min_connections; pool_size + max_overflow → max_connections, with an idle
//! timeout that sheds the overflow; pool_timeout → acquire_timeout; pool_recycle →
//! max_lifetime; echo → statement logging. A pooled connection is pinged before checkout only
//! when it sat idle for longer than [`VALIDATE_IF_IDLE_FOR`] (HikariCP's 500 ms bypass
//! window): a busy pool pays no extra round trip, a stale connection is still caught.

use std::path::Path;
use std::time::Duration;

use dbguard_core::{
    DatabaseType, DbConfig, ErrorClass, PoolConfig, PoolStatus, SslMode, StatementMode, TargetSessionAttrs,
};
use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbErr};
use sqlx::postgres::{PgConnectOptions, PgSslMode};
#[cfg(feature = "sqlite")]
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};

pub use crate::backend::{OwnedBackend, Sendable};
use crate::classify::{Classified, classify_sqlx};
use crate::conn::DbConn;
#[cfg(feature = "sqlite")]
pub use crate::owned_pool::OwnedSqlitePool;
pub use crate::owned_pool::{OwnedPgPool, OwnedPool, OwnedPoolCounts};

/// Connections idle longer than this are validated before use.
pub const VALIDATE_IF_IDLE_FOR: Duration = Duration::from_millis(500);

/// Idle connections above `pool_size` are closed after this long.
pub const OVERFLOW_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a SQLite connection waits on a locked database before reporting `SQLITE_BUSY`.
pub const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a SQLite URL cannot be served by a build without the `sqlite` feature.
pub const SQLITE_NOT_BUILT: &str = "this build of dbguard has no SQLite support: enable its `sqlite` feature";

/// The `application_name` dbguard's PostgreSQL sessions carry.
pub const APPLICATION_NAME: &str = "dbguard";

/// SeaORM connect options for `config` (its first server). `lazy` pools open connections on
/// first use, so a service can start while its database is down.
pub fn connect_options(config: &DbConfig, lazy: bool) -> ConnectOptions {
    connect_options_for(config, 0, lazy)
}

/// SeaORM connect options for the `server`-th host of `config`'s URL. sqlx takes one host per
/// pool, so a multi-host URL becomes one pool at a time, on the server [`select_server`] chose.
pub fn connect_options_for(config: &DbConfig, server: usize, lazy: bool) -> ConnectOptions {
    let mut options = ConnectOptions::new(driver_url(config, server));
    let memory = config.url.is_sqlite_memory();
    options
        .min_connections(if memory { 1 } else { config.pool.size })
        .max_connections(if memory { 1 } else { config.pool.max_connections() })
        .acquire_timeout(config.pool.timeout)
        .connect_lazy(lazy)
        .sqlx_logging(config.echo)
        .sqlx_logging_level(tracing::log::LevelFilter::Info)
        .test_before_acquire_if_idle_for(VALIDATE_IF_IDLE_FOR);
    if memory {
        // An in-memory database lives as long as its one connection: never recycle it.
        options.idle_timeout(None).max_lifetime(None);
    } else {
        options.idle_timeout(OVERFLOW_IDLE_TIMEOUT).max_lifetime(config.pool.recycle);
    }
    match config.database_type() {
        DatabaseType::Postgresql => {
            let ssl_mode = pg_ssl_mode(config.ssl_mode);
            options.set_application_name(APPLICATION_NAME);
            options.map_sqlx_postgres_opts(move |pg| pg.ssl_mode(ssl_mode));
            if let Some(setup) = session_setup_sql(config) {
                options.map_sqlx_postgres_pool_opts(move |pool| {
                    let setup = setup.clone();
                    pool.after_connect(move |conn, _| {
                        let setup = setup.clone();
                        Box::pin(async move {
                            use sqlx::Executor as _;
                            conn.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(setup))).await.map(drop)
                        })
                    })
                });
            }
        }
        #[cfg(not(feature = "sqlite"))]
        DatabaseType::Sqlite => {}
        #[cfg(feature = "sqlite")]
        DatabaseType::Sqlite => {
            options.map_sqlx_sqlite_opts(move |sqlite| with_sqlite_pragmas(sqlite, memory));
        }
    }
    options
}

/// What every SQLite connection of dbguard's runs with: the file is created if missing, foreign
/// keys are enforced, a locked database is waited on for [`SQLITE_BUSY_TIMEOUT`], and a file
/// (not an in-memory database) is in WAL mode, so readers never block the writer.
#[cfg(feature = "sqlite")]
fn with_sqlite_pragmas(sqlite: SqliteConnectOptions, memory: bool) -> SqliteConnectOptions {
    let sqlite = sqlite.create_if_missing(true).foreign_keys(true).busy_timeout(SQLITE_BUSY_TIMEOUT);
    if memory { sqlite } else { sqlite.journal_mode(SqliteJournalMode::Wal).synchronous(SqliteSynchronous::Normal) }
}

/// sqlx's connect options for dbguard's pool on a SQLite file: the pragmas of
/// [`with_sqlite_pragmas`] and statement logging as configured.
#[cfg(feature = "sqlite")]
fn sqlite_connect_options(config: &DbConfig) -> Result<SqliteConnectOptions, DbErr> {
    use sqlx::ConnectOptions as _;
    let options = driver_url(config, 0)
        .parse::<SqliteConnectOptions>()
        .map_err(|err| DbErr::Conn(sea_orm::RuntimeErr::SqlxError(err.into())))?;
    let options = with_sqlite_pragmas(options, false);
    Ok(if config.echo {
        options.log_statements(tracing::log::LevelFilter::Info)
    } else {
        options.disable_statement_logging()
    })
}

fn pg_ssl_mode(mode: SslMode) -> PgSslMode {
    match mode {
        SslMode::Disable => PgSslMode::Disable,
        SslMode::Prefer => PgSslMode::Prefer,
        SslMode::Require => PgSslMode::Require,
        SslMode::VerifyCa => PgSslMode::VerifyCa,
        SslMode::VerifyFull => PgSslMode::VerifyFull,
    }
}

/// Creates the directory of a SQLite database file, so the development default works on a
/// fresh checkout.
pub fn prepare_sqlite_file(config: &DbConfig) -> std::io::Result<()> {
    if config.url.is_sqlite_memory() {
        return Ok(());
    }
    if let Some(parent) = config.url.sqlite_path().map(Path::new).and_then(Path::parent)
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)?;
    }
    Ok(())
}

/// The URL the driver gets for the `server`-th host (the URL as configured for SQLite).
fn driver_url(config: &DbConfig, server: usize) -> String {
    config.url.server_url(server).unwrap_or_else(|| config.url.expose_secret().to_owned())
}

/// `host:port` of the `server`-th host, for logs and errors (never a password).
pub fn server_label(config: &DbConfig, server: usize) -> String {
    match config.url.hosts().get(server) {
        Some(host) => format!("{}:{}", host.host, host.port.unwrap_or(5432)),
        None => config.connection_info().database.unwrap_or_default(),
    }
}

/// Opens one connection to the `server`-th host outside any pool and closes it again, so a
/// failure reports its real cause (connection refused, authentication failed, …) instead of
/// the pool's "timed out while waiting for an open connection".
pub async fn verify_reachable(config: &DbConfig, server: usize) -> Result<(), sqlx::Error> {
    probe_server(config, server, TargetSessionAttrs::Any).await.map(|_| ())
}

/// Connects to the `server`-th host and answers whether it is what `wanted` asks for: any
/// server that answers, one whose sessions accept writes, or one not in recovery.
async fn probe_server(config: &DbConfig, server: usize, wanted: TargetSessionAttrs) -> Result<bool, sqlx::Error> {
    use sqlx::{ConnectOptions as _, Connection as _};
    let url = driver_url(config, server);
    let attempt = async {
        match config.database_type() {
            DatabaseType::Postgresql => {
                let options = url
                    .parse::<sqlx::postgres::PgConnectOptions>()?
                    .ssl_mode(pg_ssl_mode(config.ssl_mode))
                    .application_name(APPLICATION_NAME)
                    .disable_statement_logging();
                let mut conn = options.connect().await?;
                let suitable = match wanted {
                    TargetSessionAttrs::Any => true,
                    TargetSessionAttrs::ReadWrite => {
                        sqlx::query_scalar::<_, String>("SHOW transaction_read_only").fetch_one(&mut conn).await?
                            == "off"
                    }
                    TargetSessionAttrs::Primary => {
                        !sqlx::query_scalar::<_, bool>("SELECT pg_is_in_recovery()").fetch_one(&mut conn).await?
                    }
                };
                conn.close().await?;
                Ok(suitable)
            }
            DatabaseType::Sqlite if config.url.is_sqlite_memory() => Ok(true),
            #[cfg(not(feature = "sqlite"))]
            DatabaseType::Sqlite => Err(sqlx::Error::Configuration(SQLITE_NOT_BUILT.into())),
            #[cfg(feature = "sqlite")]
            DatabaseType::Sqlite => {
                let options = url
                    .parse::<sqlx::sqlite::SqliteConnectOptions>()?
                    .create_if_missing(true)
                    .disable_statement_logging();
                options.connect().await?.close().await.map(|()| true)
            }
        }
    };
    match tokio::time::timeout(config.pool.timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(sqlx::Error::PoolTimedOut),
    }
}

/// Why no server of the URL could be pooled against: the class to act on and what each server
/// answered (scrub it before showing: driver messages may quote the URL).
#[derive(Debug, Clone)]
pub struct NoServer {
    /// Read-only when a server answered but refused writes, else the last server's failure.
    pub classified: Classified,
    /// `host:port: cause` for every server tried.
    pub cause: String,
}

/// Chooses the server to pool against: the first host of the URL, in order, that accepts a
/// connection and is what the URL's `target_session_attrs` asks for (libpq's rule). A URL with
/// one host and no `target_session_attrs` only proves that the server answers.
pub async fn select_server(config: &DbConfig) -> Result<usize, NoServer> {
    let wanted = config.url.target_session_attrs();
    let servers = config.url.hosts().len().max(1);
    let mut answers = Vec::with_capacity(servers);
    let mut refused_writes = false;
    let mut last_failure = Classified::of(ErrorClass::Unknown);
    for server in 0..servers {
        match probe_server(config, server, wanted).await {
            Ok(true) => return Ok(server),
            Ok(false) => {
                refused_writes = true;
                answers.push(format!("{}: not {}", server_label(config, server), wanted.as_str()));
            }
            Err(err) => {
                last_failure = classify_sqlx(&err);
                answers.push(if servers == 1 {
                    err.to_string()
                } else {
                    format!("{}: {err}", server_label(config, server))
                });
            }
        }
    }
    let classified = if refused_writes { Classified::of(ErrorClass::ReadOnlyServer) } else { last_failure };
    Err(NoServer { classified, cause: answers.join("; ") })
}

/// The pools of one server: dbguard's own for PostgreSQL and SQLite files, with a SeaORM pool
/// beside it for code that needs a plain [`DatabaseConnection`]; SeaORM's pool of one connection
/// alone for an in-memory SQLite database.
#[derive(Debug, Clone)]
pub struct Pools {
    /// SeaORM's pool. Beside dbguard's own it is opened lazily, holds no connection until it is
    /// used, and closes its idle connections after [`OVERFLOW_IDLE_TIMEOUT`]: only code that
    /// asks for [`DbManager::connection`](crate::DbManager::connection) uses it.
    pub db: DatabaseConnection,
    /// dbguard's own pool, where guarded calls run (`None` for an in-memory database).
    owned: Option<Owned>,
    statement_mode: StatementMode,
}

/// dbguard's own pool of one backend.
#[derive(Debug, Clone)]
enum Owned {
    Postgres(OwnedPgPool),
    #[cfg(feature = "sqlite")]
    Sqlite(OwnedSqlitePool),
}

impl Owned {
    fn status(&self, config: &PoolConfig) -> PoolStatus {
        match self {
            Self::Postgres(pool) => pool.status(config),
            #[cfg(feature = "sqlite")]
            Self::Sqlite(pool) => pool.status(config),
        }
    }

    /// Whether the backend stops a statement that runs too long with no runtime timer around it.
    fn ends_long_statements_itself(&self) -> bool {
        match self {
            Self::Postgres(_) => <sqlx::Postgres as OwnedBackend>::ENDS_LONG_STATEMENTS_ITSELF,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(_) => <sqlx::Sqlite as OwnedBackend>::ENDS_LONG_STATEMENTS_ITSELF,
        }
    }

    fn close(&self) {
        match self {
            Self::Postgres(pool) => pool.close(),
            #[cfg(feature = "sqlite")]
            Self::Sqlite(pool) => pool.close(),
        }
    }
}

impl Pools {
    /// A handle for one attempt: a connection of dbguard's pool, checked out at its first
    /// statement; on an in-memory SQLite database SeaORM's pool.
    ///
    /// An in-memory database lives and dies with its one connection, which dbguard's pool
    /// would close whenever a statement is cut off mid-way: SeaORM's pool keeps it for the
    /// process's life.
    pub(crate) fn conn(&self) -> DbConn {
        match &self.owned {
            Some(Owned::Postgres(owned)) => DbConn::owned_postgres(owned.clone(), self.statement_mode),
            #[cfg(feature = "sqlite")]
            Some(Owned::Sqlite(owned)) => DbConn::owned_sqlite(owned.clone()),
            None => DbConn::shared(self.db.clone()),
        }
    }

    /// Whether a statement on these pools that runs past `DB_STATEMENT_TIMEOUT` is stopped by
    /// the backend with no runtime timer around the attempt: SQLite on dbguard's pool (an
    /// in-memory database on SeaORM's pool has no statement timer).
    pub(crate) fn ends_long_statements_itself(&self) -> bool {
        self.owned.as_ref().is_some_and(Owned::ends_long_statements_itself)
    }
}

/// Opens the pools on the `server`-th host. dbguard's pool, unless `lazy`, opens `DB_POOL_SIZE`
/// connections first and fails with the first connect error.
pub async fn open(config: &DbConfig, server: usize, lazy: bool) -> Result<Pools, DbErr> {
    let statement_mode = config.pool.statement_mode;
    let owned = match config.database_type() {
        DatabaseType::Postgresql => {
            let pool = OwnedPgPool::new(pg_connect_options(config, server)?, session_setup_sql(config), &config.pool);
            Some(Owned::Postgres(warmed(pool, lazy).await?))
        }
        #[cfg(not(feature = "sqlite"))]
        DatabaseType::Sqlite => return Err(DbErr::Custom(SQLITE_NOT_BUILT.into())),
        #[cfg(feature = "sqlite")]
        DatabaseType::Sqlite if config.url.is_sqlite_memory() => None,
        #[cfg(feature = "sqlite")]
        DatabaseType::Sqlite => {
            let pool = OwnedSqlitePool::new(sqlite_connect_options(config)?, None, &config.pool);
            Some(Owned::Sqlite(warmed(pool, lazy).await?))
        }
    };
    let db = if owned.is_some() {
        let mut options = connect_options_for(config, server, true);
        options.min_connections(0);
        Database::connect(options).await?
    } else {
        Database::connect(connect_options_for(config, server, lazy)).await?
    };
    Ok(Pools { db, owned, statement_mode })
}

/// `pool` with its `DB_POOL_SIZE` connections opened, unless `lazy`.
async fn warmed<DB: OwnedBackend>(pool: OwnedPool<DB>, lazy: bool) -> Result<OwnedPool<DB>, DbErr> {
    if !lazy {
        pool.warm().await?;
    }
    Ok(pool)
}

/// What every new PostgreSQL session runs first: `SET statement_timeout`, so the server cancels
/// a statement that runs too long (57014, `query_canceled`) and the connection stays usable (the
/// runner's attempt deadline is only the backstop).
///
/// It is a `SET` after connecting rather than the `options` startup parameter because PgBouncer
/// refuses that parameter ("unsupported startup parameter: options"). With
/// `DB_STATEMENT_MODE=simple` nothing is set: behind a transaction pooler a session setting would
/// stay on whichever server connection ran it, for every client of the pooler; set the timeout on
/// the role there (`ALTER ROLE app SET statement_timeout = '30s'`).
pub(crate) fn session_setup_sql(config: &DbConfig) -> Option<String> {
    match config.pool.statement_mode {
        StatementMode::Prepared => {
            Some(format!("SET statement_timeout = {}", config.pool.statement_timeout.as_millis()))
        }
        StatementMode::Simple => None,
    }
}

/// sqlx's connect options for dbguard's own pool on the `server`-th host: TLS mode,
/// `application_name` and statement logging as configured.
pub(crate) fn pg_connect_options(config: &DbConfig, server: usize) -> Result<PgConnectOptions, DbErr> {
    pg_session_options(config, server).map_err(|err| DbErr::Conn(sea_orm::RuntimeErr::SqlxError(err.into())))
}

/// Options for one PostgreSQL session to the `server`-th host outside any pool, with the TLS
/// mode, application name and statement logging the pools use.
pub(crate) fn pg_session_options(config: &DbConfig, server: usize) -> Result<PgConnectOptions, sqlx::Error> {
    use sqlx::ConnectOptions as _;
    let options = driver_url(config, server)
        .parse::<PgConnectOptions>()?
        .ssl_mode(pg_ssl_mode(config.ssl_mode))
        .application_name(APPLICATION_NAME);
    Ok(if config.echo {
        options.log_statements(tracing::log::LevelFilter::Info)
    } else {
        options.disable_statement_logging()
    })
}

/// The pool's occupancy in SQLAlchemy's terms.
pub fn status(pools: &Pools, config: &DbConfig) -> PoolStatus {
    match &pools.owned {
        Some(owned) => owned.status(&config.pool),
        None => memory_pool_status(&pools.db, config),
    }
}

/// SeaORM's pool of one connection that holds an in-memory SQLite database.
fn memory_pool_status(db: &DatabaseConnection, config: &DbConfig) -> PoolStatus {
    #[cfg(feature = "sqlite")]
    let (open, idle) = {
        let pool = db.get_sqlite_connection_pool();
        (pool.size(), u32::try_from(pool.num_idle()).unwrap_or(u32::MAX))
    };
    // Without SQLite built in, `open` refuses an in-memory database: no pool ever gets here.
    #[cfg(not(feature = "sqlite"))]
    let (open, idle) = {
        let _ = db;
        (0, 0)
    };
    PoolStatus::from_counts(config.pool.size, config.pool.max_overflow, open, idle)
}

/// Closes the pools, waiting for checked-out connections of SeaORM's pool to come back
/// (dbguard's own close as they come back).
pub async fn close(pools: &Pools) {
    if let Some(owned) = &pools.owned {
        owned.close();
    }
    if let Err(err) = pools.db.close_by_ref().await {
        tracing::debug!(error = %err, "closing a retired pool");
    }
}
