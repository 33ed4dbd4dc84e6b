//! Turning a [`DbConfig`] into a SeaORM pool.
//!
//! Mapping (SQLAlchemy's names → sqlx's):
//! pool_size → min_connections; pool_size + max_overflow → max_connections, with an idle
//! timeout that sheds the overflow; pool_timeout → acquire_timeout; pool_recycle →
//! max_lifetime; echo → statement logging. A pooled connection is pinged before checkout only
//! when it sat idle for longer than [`VALIDATE_IF_IDLE_FOR`] (HikariCP's 500 ms bypass
//! window): a busy pool pays no extra round trip, a stale connection is still caught.

use std::path::Path;
use std::time::Duration;

use dbguard_core::{DatabaseType, DbConfig, PoolStatus, SslMode};
use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbErr};
use sqlx::postgres::PgSslMode;
use sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};

/// Connections idle longer than this are validated before use.
pub const VALIDATE_IF_IDLE_FOR: Duration = Duration::from_millis(500);

/// Idle connections above `pool_size` are closed after this long.
pub const OVERFLOW_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a SQLite connection waits on a locked database before reporting `SQLITE_BUSY`.
pub const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The `application_name` dbguard's PostgreSQL sessions carry.
pub const APPLICATION_NAME: &str = "dbguard";

/// SeaORM connect options for `config`. `lazy` pools open connections on first use, so a
/// service can start while its database is down.
pub fn connect_options(config: &DbConfig, lazy: bool) -> ConnectOptions {
    let mut options = ConnectOptions::new(config.url.expose_secret().to_owned());
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
        }
        DatabaseType::Sqlite => {
            options.map_sqlx_sqlite_opts(move |sqlite| {
                let sqlite = sqlite.create_if_missing(true).foreign_keys(true).busy_timeout(SQLITE_BUSY_TIMEOUT);
                if memory {
                    sqlite
                } else {
                    sqlite.journal_mode(SqliteJournalMode::Wal).synchronous(SqliteSynchronous::Normal)
                }
            });
        }
    }
    options
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

/// Opens one connection outside any pool and closes it again, so a failure reports its real
/// cause (connection refused, authentication failed, …) instead of the pool's "timed out
/// while waiting for an open connection".
pub async fn verify_reachable(config: &DbConfig) -> Result<(), sqlx::Error> {
    use sqlx::{ConnectOptions as _, Connection as _};
    let url = config.url.expose_secret();
    let attempt = async {
        match config.database_type() {
            DatabaseType::Postgresql => {
                let options = url
                    .parse::<sqlx::postgres::PgConnectOptions>()?
                    .ssl_mode(pg_ssl_mode(config.ssl_mode))
                    .application_name(APPLICATION_NAME)
                    .disable_statement_logging();
                options.connect().await?.close().await
            }
            DatabaseType::Sqlite if config.url.is_sqlite_memory() => Ok(()),
            DatabaseType::Sqlite => {
                let options = url
                    .parse::<sqlx::sqlite::SqliteConnectOptions>()?
                    .create_if_missing(true)
                    .disable_statement_logging();
                options.connect().await?.close().await
            }
        }
    };
    match tokio::time::timeout(config.pool.timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(sqlx::Error::PoolTimedOut),
    }
}

/// Opens the pool.
pub async fn open(config: &DbConfig, lazy: bool) -> Result<DatabaseConnection, DbErr> {
    Database::connect(connect_options(config, lazy)).await
}

/// The pool's occupancy in SQLAlchemy's terms.
pub fn status(db: &DatabaseConnection, config: &DbConfig) -> PoolStatus {
    let (open, idle) = match config.database_type() {
        DatabaseType::Postgresql => {
            let pool = db.get_postgres_connection_pool();
            (pool.size(), u32::try_from(pool.num_idle()).unwrap_or(u32::MAX))
        }
        DatabaseType::Sqlite => {
            let pool = db.get_sqlite_connection_pool();
            (pool.size(), u32::try_from(pool.num_idle()).unwrap_or(u32::MAX))
        }
    };
    PoolStatus::from_counts(config.pool.size, config.pool.max_overflow, open, idle)
}

/// Closes the pool, waiting for checked-out connections to come back.
pub async fn close(db: &DatabaseConnection) {
    if let Err(err) = db.close_by_ref().await {
        tracing::debug!(error = %err, "closing a retired pool");
    }
}
