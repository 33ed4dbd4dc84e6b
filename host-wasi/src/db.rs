//! Opening the configured SQLite database through sea-orm (sync), read-only and never creating it.

use dbguard_core::{DatabaseType, DbConfig, ErrorClass};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, QueryResult, Statement};

use crate::driver::Retrier;
use crate::error::{Classified, DbFailure, HostError};

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
    ///
    /// SQLite's WASI build locks by creating a `<database>.lock` directory next to the file, even
    /// to read, and a WAL database also needs its `-wal` file. Where the directory cannot be
    /// written (a read-only preopen), the first read fails; the file is then opened again
    /// without locks (`nolock=1`), and if that cannot read it either (WAL), as immutable
    /// (`immutable=1`: no locks, no journal, so changes still in a `-wal` file are not seen).
    pub(crate) fn open_read_only(&self, retrier: &mut Retrier) -> Result<DatabaseConnection, HostError> {
        if self.memory {
            return self.open_with(retrier, "sqlite::memory:".to_owned());
        }
        // sea-orm's rusqlite connector takes `mode=` (ro, rw, rwc) and nothing else, except for
        // a URI filename, which it hands to SQLite whole.
        let conn = self.open_with(retrier, format!("sqlite://{}?mode=ro", self.path))?;
        if !cfg!(target_os = "wasi") {
            return Ok(conn);
        }
        let mut conn = conn;
        for fallback in [ReadOnlyFallback::NoLock, ReadOnlyFallback::Immutable] {
            // The first read takes the lock (and, in exclusive mode, keeps it). Any other
            // failure is left for the caller's own statements to observe and report.
            match conn.query_one_raw(sql("PRAGMA schema_version")) {
                Err(err) if needs_writable_directory(&Classified::from_db_err(&err)) => {
                    let _ = conn.close();
                    conn = self.open_with(retrier, fallback.url(&self.path))?;
                }
                _ => return Ok(conn),
            }
        }
        Ok(conn)
    }

    /// Connects to `url` (retrying `SQLITE_BUSY`) and sets up the connection for this host.
    fn open_with(&self, retrier: &mut Retrier, url: String) -> Result<DatabaseConnection, HostError> {
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

/// SQLite's extended code for a lock that could not be taken for a reason other than contention.
const SQLITE_IOERR_LOCK: i32 = 10 | (15 << 8);
/// SQLite's primary code for a file it could not open (here: a WAL database's `-wal` file).
const SQLITE_CANTOPEN: i32 = 14;

/// Whether a read failed because SQLite needed to create something next to the database: its
/// dot-file lock (`SQLITE_PERM`, `SQLITE_READONLY`, or the lock failing outright) or a WAL
/// file (`SQLITE_CANTOPEN`; the database itself was already open). Contention is
/// `SQLITE_BUSY` and is not this.
fn needs_writable_directory(failure: &Classified) -> bool {
    matches!(failure.class, ErrorClass::PermissionDenied | ErrorClass::StorageReadOnly)
        || failure.code == Some(SQLITE_IOERR_LOCK)
        || failure.code.is_some_and(|code| code & 0xff == SQLITE_CANTOPEN)
}

/// How to open a database read-only when its directory cannot be written.
#[derive(Debug, Clone, Copy)]
enum ReadOnlyFallback {
    /// No locks; journals and WAL are still honoured.
    NoLock,
    /// No locks and no journal or WAL: the main file as it is.
    Immutable,
}

impl ReadOnlyFallback {
    /// The URL opening `path` this way. sea-orm hands a `file:` URI filename to SQLite whole;
    /// in it `%` and `#` must be escaped (`?` never reaches here).
    fn url(self, path: &str) -> String {
        let escaped = path.replace('%', "%25").replace('#', "%23");
        let parameter = match self {
            Self::NoLock => "nolock=1",
            Self::Immutable => "immutable=1",
        };
        format!("sqlite://file:{escaped}?mode=ro&{parameter}")
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

#[cfg(test)]
mod tests {
    use super::*;

    fn classified(class: ErrorClass, code: Option<i32>) -> Classified {
        Classified { class, code, message: String::new() }
    }

    #[test]
    fn only_a_directory_problem_falls_back() {
        assert!(needs_writable_directory(&classified(ErrorClass::PermissionDenied, Some(3))));
        assert!(needs_writable_directory(&classified(ErrorClass::StorageReadOnly, Some(8))));
        assert!(needs_writable_directory(&classified(ErrorClass::StorageIo, Some(SQLITE_IOERR_LOCK))));
        assert!(needs_writable_directory(&classified(ErrorClass::StorageIo, Some(14))));
        assert!(!needs_writable_directory(&classified(ErrorClass::Busy, Some(5))));
        assert!(!needs_writable_directory(&classified(ErrorClass::StorageIo, Some(10))));
        assert!(!needs_writable_directory(&classified(ErrorClass::StorageCorrupt, Some(26))));
    }

    #[test]
    fn the_fallback_urls_read_and_refuse_writes() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("odd %23 #name.db");
        let writer = rusqlite::Connection::open(&path)?;
        writer.execute_batch("CREATE TABLE t (id INTEGER); INSERT INTO t VALUES (7);")?;
        drop(writer);

        for fallback in [ReadOnlyFallback::NoLock, ReadOnlyFallback::Immutable] {
            let conn = Database::connect(ConnectOptions::new(fallback.url(&path.display().to_string())))?;
            let row = conn.query_one_raw(sql("SELECT id FROM t"))?.ok_or("no row")?;
            assert_eq!(row.try_get_by_index::<i64>(0)?, 7, "{fallback:?}");
            let write = conn.execute_unprepared("INSERT INTO t VALUES (8)").err().ok_or("write succeeded")?;
            assert_eq!(Classified::from_db_err(&write).class, ErrorClass::StorageReadOnly, "{fallback:?}");
        }
        Ok(())
    }
}
