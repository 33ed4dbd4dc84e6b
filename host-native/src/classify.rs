//! Classify at the edge: every SeaORM, sqlx and I/O error becomes a core [`ErrorClass`] here,
//! and nowhere else.

use std::error::Error as StdError;

use dbguard_core::ErrorClass;
use sea_orm::{ConnAcquireErr, DbErr, RuntimeErr};

/// A classified failure: the class and the driver's own code (SQLSTATE or SQLite code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    /// The class.
    pub class: ErrorClass,
    /// SQLSTATE (PostgreSQL) or extended result code (SQLite), when the server sent one.
    pub code: Option<String>,
    /// Whether the error came from a pool that was closed by a reconnect (nothing was sent).
    pub pool_closed: bool,
}

impl Classified {
    pub(crate) fn of(class: ErrorClass) -> Self {
        Self { class, code: None, pool_closed: false }
    }

    /// A client-side timeout: no answer came in time, and the statement may have run.
    pub(crate) fn timeout() -> Self {
        Self::of(ErrorClass::Timeout)
    }
}

/// Classifies a SeaORM error.
pub fn classify_db_err(err: &DbErr) -> Classified {
    match err {
        DbErr::ConnectionAcquire(ConnAcquireErr::Timeout) => Classified::of(ErrorClass::pool_acquire_timeout()),
        DbErr::ConnectionAcquire(ConnAcquireErr::ConnectionClosed) => {
            Classified { class: ErrorClass::ConnectionRefused, code: None, pool_closed: true }
        }
        DbErr::Conn(runtime) | DbErr::Exec(runtime) | DbErr::Query(runtime) => classify_runtime(runtime),
        _ => Classified::of(ErrorClass::Unknown),
    }
}

fn classify_runtime(err: &RuntimeErr) -> Classified {
    match err {
        RuntimeErr::SqlxError(sqlx_err) => classify_sqlx(sqlx_err),
        _ => Classified::of(ErrorClass::Unknown),
    }
}

/// Classifies a sqlx error.
pub fn classify_sqlx(err: &sqlx::Error) -> Classified {
    use sqlx::Error as E;
    match err {
        E::Database(db) => classify_database_error(db.as_ref()),
        E::Io(io) => Classified::of(classify_io(io)),
        E::Tls(_) => Classified::of(ErrorClass::ConnectionRefused),
        E::PoolTimedOut => Classified::of(ErrorClass::pool_acquire_timeout()),
        // The pool was closed by a reconnect before this call got a connection: nothing was sent.
        E::PoolClosed => Classified { class: ErrorClass::ConnectionRefused, code: None, pool_closed: true },
        E::Protocol(_) | E::WorkerCrashed => Classified::of(ErrorClass::ConnectionLost),
        other => Classified::of(walk_sources_for_io(other).unwrap_or(ErrorClass::Unknown)),
    }
}

fn classify_database_error(db: &dyn sqlx::error::DatabaseError) -> Classified {
    let code = db.code().map(|c| c.into_owned());
    let class = if db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>().is_some() {
        code.as_deref().map_or(ErrorClass::Unknown, ErrorClass::from_sqlstate)
    } else if is_sqlite_error(db) {
        code.as_deref().and_then(|c| c.parse::<i32>().ok()).map_or(ErrorClass::Unknown, ErrorClass::from_sqlite_code)
    } else {
        ErrorClass::Unknown
    };
    Classified { class, code, pool_closed: false }
}

#[cfg(feature = "sqlite")]
fn is_sqlite_error(db: &dyn sqlx::error::DatabaseError) -> bool {
    db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some()
}

#[cfg(not(feature = "sqlite"))]
fn is_sqlite_error(_db: &dyn sqlx::error::DatabaseError) -> bool {
    false
}

fn classify_io(io: &std::io::Error) -> ErrorClass {
    ErrorClass::from_io_kind(io.kind())
}

/// Looks through `source()` for an I/O error, as reqwest's `is_timeout` does.
fn walk_sources_for_io(err: &(dyn StdError + 'static)) -> Option<ErrorClass> {
    let mut current = err.source();
    while let Some(source) = current {
        if let Some(io) = source.downcast_ref::<std::io::Error>() {
            return Some(classify_io(io));
        }
        current = source.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn sqlx_db_err(err: sqlx::Error) -> DbErr {
        DbErr::Exec(RuntimeErr::SqlxError(Arc::new(err)))
    }

    #[test]
    fn pool_errors() {
        assert_eq!(
            classify_db_err(&DbErr::ConnectionAcquire(ConnAcquireErr::Timeout)).class,
            ErrorClass::PoolExhausted
        );
        assert_eq!(classify_db_err(&sqlx_db_err(sqlx::Error::PoolTimedOut)).class, ErrorClass::PoolExhausted);
        let closed = classify_db_err(&sqlx_db_err(sqlx::Error::PoolClosed));
        assert!(closed.pool_closed);
        assert!(closed.class.is_safe_for_non_idempotent());
    }

    #[test]
    fn io_errors() {
        let refused = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(
            classify_db_err(&DbErr::Conn(RuntimeErr::SqlxError(Arc::new(refused)))).class,
            ErrorClass::ConnectionRefused
        );
        let reset = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert_eq!(classify_db_err(&sqlx_db_err(reset)).class, ErrorClass::ConnectionLost);
    }

    #[test]
    fn orm_errors_are_not_retryable() {
        let class = classify_db_err(&DbErr::RecordNotFound("user 7".into())).class;
        assert!(!class.is_retryable());
    }
}
