//! Opening the configured SQLite database through sea-orm (sync), read-only and never creating it.

use dbguard_core::{DatabaseType, DbConfig};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, QueryResult, Statement};

use crate::driver::Retrier;
use crate::error::{DbFailure, HostError};

/// The SQLite database named by `DATABASE_URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// The path inside the WASI sandbox, or `:memory:`.
    pub(crate) path: String,
    memory: bool,
}

impl Target {
    /// Takes the SQLite database from a validated configuration, rejecting what this host cannot
    /// open: a PostgreSQL URL, a URI filename, a path sea-orm would split.
    pub(crate) fn from_config(config: &DbConfig) -> Result<Self, HostError> {
        let url = &config.url;
        let path = match (url.database_type(), url.sqlite_path()) {
            (DatabaseType::Sqlite, Some(path)) => path.to_owned(),
            _ => return Err(HostError::NotSqlite { url: url.redacted() }),
        };
        if url.is_sqlite_memory() {
            return Ok(Self { path: ":memory:".to_owned(), memory: true });
        }
        let unusable = |reason| Err(HostError::UnusablePath { path: path.clone(), reason });
        if path.starts_with("file:") {
            return unusable("is a URI filename, which this host does not take");
        }
        if path.contains('?') {
            return unusable("contains '?'");
        }
        Ok(Self { path, memory: false })
    }

    /// Opens the database read-only: a missing file is an error, never a new empty database.
    /// `SQLITE_BUSY` while opening is retried by `retrier`.
    pub(crate) fn open_read_only(&self, retrier: &mut Retrier) -> Result<DatabaseConnection, HostError> {
        // sea-orm's rusqlite connector takes `mode=` (ro, rw, rwc) and nothing else.
        let url = if self.memory { "sqlite::memory:".to_owned() } else { format!("sqlite://{}?mode=ro", self.path) };
        let mut options = ConnectOptions::new(url);
        options.sqlx_logging(false);
        // SQLite opens the file here (reading its header waits for the first statement), so a
        // missing file or an unreadable directory fails now with SQLITE_CANTOPEN.
        retrier
            .run(|| {
                let conn = Database::connect(options.clone())?;
                // rusqlite installs a 5 s busy handler that sleeps inside SQLite; the driver is
                // the only place that waits, so SQLITE_BUSY must come straight back to it.
                conn.execute_unprepared("PRAGMA busy_timeout = 0")?;
                if cfg!(target_os = "wasi") {
                    // SQLite's WASI build has no shared memory, so WAL databases open only in
                    // exclusive locking mode. Its locks are dot-files, so this takes nothing a
                    // reader would not hold anyway. (Natively a read-only file cannot take the
                    // exclusive POSIX lock, hence WASI only.)
                    conn.execute_unprepared("PRAGMA locking_mode = EXCLUSIVE")?;
                }
                Ok(conn)
            })
            .map_err(|failure| HostError::Open { path: self.path.clone(), failure })
    }
}

/// A raw SQLite statement.
pub(crate) fn sql(text: impl Into<String>) -> Statement {
    Statement::from_string(DbBackend::Sqlite, text)
}

/// Runs `text` (under the retry policy) and returns its first column of its first row as `T`,
/// or `None` when it returns no row or NULL.
pub(crate) fn scalar<T>(conn: &DatabaseConnection, retrier: &mut Retrier, text: &str) -> Result<Option<T>, DbFailure>
where
    Option<T>: sea_orm::TryGetable,
{
    retrier.run(|| {
        let row: Option<QueryResult> = conn.query_one_raw(sql(text))?;
        match row {
            Some(row) => row.try_get_by_index::<Option<T>>(0),
            None => Ok(None),
        }
    })
}
