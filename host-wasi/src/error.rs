//! Errors of the WASI host, and the one place that turns driver errors into core's
//! [`ErrorClass`] (classify at the edge: nothing downstream looks at sea-orm or rusqlite types).

use std::fmt;

use dbguard_core::{ConfigError, ErrorBody, ErrorClass, GiveUpReason};
use sea_orm::{ConnAcquireErr, DbErr, RuntimeErr};

/// What the accepted `DATABASE_URL` forms are, for error messages.
pub(crate) const ACCEPTED_URLS: &str =
    "sqlite://relative/path.db, sqlite:///absolute/path.db or sqlite::memory: (a path the WASI runtime preopens)";

/// Exit code for a healthy report or a successful command.
pub(crate) const EXIT_OK: u8 = 0;
/// Exit code when the database is unhealthy or unusable.
pub(crate) const EXIT_UNHEALTHY: u8 = 2;
/// Exit code for a bad invocation: arguments, configuration or statement (BSD `EX_USAGE`).
pub(crate) const EXIT_USAGE: u8 = 64;

/// A driver error reduced to what the host reasons about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Classified {
    /// Core's class of the failure.
    pub(crate) class: ErrorClass,
    /// SQLite's extended result code, when SQLite reported one.
    pub(crate) code: Option<i32>,
    /// SQLite's (or the driver's) message.
    pub(crate) message: String,
}

impl Classified {
    /// Classifies a sea-orm error: SQLite failures by their extended result code through
    /// [`ErrorClass::from_sqlite_code`], a second statement in one string as a syntax error, a
    /// connection that could not be had as pool exhaustion, anything else as unknown.
    pub(crate) fn from_db_err(err: &DbErr) -> Self {
        let runtime = match err {
            DbErr::Conn(runtime) | DbErr::Exec(runtime) | DbErr::Query(runtime) => Some(runtime),
            _ => None,
        };
        if let Some(RuntimeErr::Rusqlite(driver)) = runtime {
            return Self::from_rusqlite(driver);
        }
        if let Some(RuntimeErr::Internal(message)) = runtime {
            return Self { class: ErrorClass::Unknown, code: None, message: message.clone() };
        }
        let class = match err {
            DbErr::ConnectionAcquire(ConnAcquireErr::Timeout) => ErrorClass::pool_acquire_timeout(),
            DbErr::ConnectionAcquire(_) => ErrorClass::ConnectionLost,
            _ => ErrorClass::Unknown,
        };
        Self { class, code: None, message: err.to_string() }
    }

    fn from_rusqlite(err: &rusqlite::Error) -> Self {
        match err {
            rusqlite::Error::SqliteFailure(failure, message) => {
                let code = failure.extended_code;
                let message = message.clone().unwrap_or_else(|| failure.to_string());
                Self { class: ErrorClass::from_sqlite_code(code), code: Some(code), message }
            }
            // A statement SQLite refused to compile: syntax, a missing table or column.
            rusqlite::Error::SqlInputError { error, msg, .. } => Self {
                class: ErrorClass::from_sqlite_code(error.extended_code),
                code: Some(error.extended_code),
                message: msg.clone(),
            },
            rusqlite::Error::MultipleStatement => Self {
                class: ErrorClass::Syntax,
                code: None,
                message: "only one statement may be run at a time".to_owned(),
            },
            other => Self { class: ErrorClass::Unknown, code: None, message: other.to_string() },
        }
    }
}

/// A database call that failed for good, after core's retry policy had its say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DbFailure {
    /// The last attempt's error.
    pub(crate) classified: Classified,
    /// Retries made before giving up.
    pub(crate) retry_count: u32,
    /// Why core stopped.
    pub(crate) reason: GiveUpReason,
    /// When the last attempt failed, RFC 3339.
    pub(crate) last_attempt: Option<String>,
}

impl fmt::Display for DbFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.classified.message)?;
        if let Some(code) = self.classified.code {
            write!(f, " (SQLite code {code})")?;
        }
        match self.reason {
            // Saying "not retried" about a syntax error is noise.
            GiveUpReason::NotRetryable(_) => Ok(()),
            ref reason => write!(f, "; {reason}"),
        }
    }
}

/// Everything that can end a command early. Each variant knows its exit code and its stable
/// machine-readable name.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum HostError {
    /// The command line is wrong.
    Usage(String),
    /// Core rejected the configuration (it names the variable and what is valid).
    Config(ConfigError),
    /// `DATABASE_URL` is valid but not SQLite, the only engine this host speaks.
    NotSqlite {
        /// The configured URL, password redacted.
        url: String,
    },
    /// The SQLite path cannot be handed to the driver as it is.
    UnusablePath {
        /// The path from `DATABASE_URL`.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The database could not be opened.
    Open {
        /// The path from `DATABASE_URL`.
        path: String,
        /// Why.
        failure: DbFailure,
    },
    /// The user's statement was rejected (syntax, a write, more than one statement).
    Statement(DbFailure),
    /// The database failed while running a statement.
    Database(DbFailure),
    /// Writing the result to stdout failed.
    Output(String),
}

impl HostError {
    /// The process exit code: 64 for what the caller got wrong, 2 for what the database did.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) | Self::Config(_) | Self::NotSqlite { .. } | Self::UnusablePath { .. } => EXIT_USAGE,
            Self::Statement(_) => EXIT_USAGE,
            Self::Open { .. } | Self::Database(_) | Self::Output(_) => EXIT_UNHEALTHY,
        }
    }

    /// The stable name of the error: a usage or configuration kind, or core's error class.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::Usage(_) => "usage",
            Self::Config(_) => "invalid_config",
            Self::NotSqlite { .. } => "unsupported_database",
            Self::UnusablePath { .. } => "invalid_config",
            Self::Open { failure, .. } | Self::Statement(failure) | Self::Database(failure) => {
                failure.classified.class.as_str()
            }
            Self::Output(_) => "output",
        }
    }

    /// The error as the API's error body (`success`, `error`, `message`, `retry_count`,
    /// `last_attempt`), for stderr.
    pub(crate) fn body(&self) -> ErrorBody {
        let mut body = ErrorBody::new(self.kind(), self.to_string());
        if let Self::Open { failure, .. } | Self::Statement(failure) | Self::Database(failure) = self {
            body.retry_count = failure.retry_count;
            body.last_attempt = failure.last_attempt.clone();
        }
        body
    }
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Usage(message) => f.write_str(message),
            Self::Config(err) => write!(f, "{err}"),
            Self::NotSqlite { url } => {
                write!(f, "DATABASE_URL: {url:?} is not SQLite; the WASI host accepts {ACCEPTED_URLS}")
            }
            Self::UnusablePath { path, reason } => {
                write!(f, "DATABASE_URL: SQLite path {path:?} {reason}; accepted: {ACCEPTED_URLS}")
            }
            Self::Open { path, failure } => {
                write!(f, "DATABASE_URL: cannot open SQLite database {path:?}: {failure}")?;
                if failure.classified.class == ErrorClass::StorageIo {
                    f.write_str(
                        " (does the file exist, and does the WASI runtime preopen its directory, \
                         e.g. `--dir ./data::/data` for sqlite:///data/app.db?)",
                    )?;
                }
                Ok(())
            }
            Self::Statement(failure) => write!(f, "statement rejected: {failure}"),
            Self::Database(failure) => write!(f, "database error: {failure}"),
            Self::Output(message) => write!(f, "cannot write the result: {message}"),
        }
    }
}

impl From<ConfigError> for HostError {
    fn from(err: ConfigError) -> Self {
        Self::Config(err)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn sqlite_err(extended: i32) -> DbErr {
        let failure = rusqlite::ffi::Error::new(extended);
        DbErr::Query(RuntimeErr::Rusqlite(Arc::new(rusqlite::Error::SqliteFailure(failure, None))))
    }

    #[test]
    fn busy_and_locked_are_contention() {
        assert_eq!(Classified::from_db_err(&sqlite_err(5)).class, ErrorClass::Busy);
        assert_eq!(Classified::from_db_err(&sqlite_err(517)).class, ErrorClass::Busy);
        assert_eq!(Classified::from_db_err(&sqlite_err(262)).class, ErrorClass::Locked);
        assert_eq!(Classified::from_db_err(&sqlite_err(517)).code, Some(517));
    }

    #[test]
    fn usage_errors_exit_64_and_database_errors_exit_2() {
        assert_eq!(HostError::Usage("x".into()).exit_code(), 64);
        assert_eq!(HostError::NotSqlite { url: "postgres://h/db".into() }.exit_code(), 64);
        let failure = DbFailure {
            classified: Classified::from_db_err(&sqlite_err(14)),
            retry_count: 0,
            reason: GiveUpReason::NotRetryable(ErrorClass::StorageIo),
            last_attempt: None,
        };
        let open = HostError::Open { path: "/data/app.db".into(), failure };
        assert_eq!(open.exit_code(), 2);
        assert!(open.to_string().starts_with("DATABASE_URL: cannot open SQLite database \"/data/app.db\""));
    }
}
