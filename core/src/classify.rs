//! One error classification for PostgreSQL and SQLite.
//!
//! Hosts turn driver errors into an [`ErrorClass`] at the edge (a SQLSTATE, a SQLite result
//! code, an I/O error kind, a pool acquire timeout, or the knowledge that a connection died after
//! `COMMIT` was sent). Everything downstream — the retry policy, the circuit breaker, metrics,
//! plugins — reasons about the class only, never about driver types.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::retry::{GiveUpReason, Idempotency};

/// What kind of failure a database call hit, independent of the driver that reported it.
///
/// Each class answers two questions: is it worth trying again ([`ErrorClass::is_retryable`]),
/// and is it safe to try again an operation that is *not* idempotent
/// ([`ErrorClass::is_safe_for_non_idempotent`]) — true only when the error guarantees that
/// nothing took effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorClass {
    /// The server could not be reached or refused the connection (08001, 08004, `ECONNREFUSED`).
    ConnectionRefused,
    /// An established connection broke (08000, 08003, 08006, 08007, reset, broken pipe, EOF).
    ConnectionLost,
    /// A client-side timeout fired while talking to the server; the statement may have run.
    Timeout,
    /// No pooled connection became free within the acquire timeout.
    PoolExhausted,
    /// The server has no connection slots left (53300).
    TooManyConnections,
    /// The server ran out of a resource: disk, memory, configuration limit (53000, 53100, 53200, 53400).
    ResourcesExhausted,
    /// The server is shutting down or the session was terminated (57P01, 57P02, 57P05).
    ServerShuttingDown,
    /// The server is starting up or recovering and does not accept connections yet (57P03).
    ServerStarting,
    /// The server reported an internal or I/O error (58000, 58030).
    ServerSystemError,
    /// The transaction lost a serialization conflict and was rolled back (40001).
    SerializationFailure,
    /// The transaction was chosen as a deadlock victim and rolled back (40P01).
    Deadlock,
    /// A lock or object was unavailable (55P03, 55006, 55000).
    LockNotAvailable,
    /// The server is read-only, typically a standby after a failover (25006).
    ReadOnlyServer,
    /// The statement was cancelled, usually by `statement_timeout` (57014).
    QueryCanceled,
    /// Login failed (28xxx).
    Authentication,
    /// The role lacks a privilege (42501).
    PermissionDenied,
    /// The statement is malformed or names something that does not exist (42xxx).
    Syntax,
    /// A constraint was violated (23xxx).
    Constraint,
    /// A value was out of range or malformed (22xxx).
    Data,
    /// SQLite: the database file is locked by another connection (`SQLITE_BUSY`, 5).
    Busy,
    /// SQLite: a table is locked within the same connection or shared cache (`SQLITE_LOCKED`, 6).
    Locked,
    /// SQLite: the disk or database is full (`SQLITE_FULL`, 13).
    StorageFull,
    /// SQLite: the database file cannot be written (`SQLITE_READONLY`, 8).
    StorageReadOnly,
    /// SQLite: a disk I/O error (`SQLITE_IOERR`, 10).
    StorageIo,
    /// SQLite: the database file is corrupt or not a database (`SQLITE_CORRUPT`, 11; `SQLITE_NOTADB`, 26).
    StorageCorrupt,
    /// The connection died after `COMMIT` was sent: the transaction may or may not have committed.
    CommitOutcomeUnknown,
    /// Anything else.
    Unknown,
    // Classes added after version 0.1.0 of the plugin contract come last, so that the
    // contract's `error-class` enum stays a prefix of [`ErrorClass::ALL`]; until the contract
    // is revised, plugins see them as `unknown`.
    /// The database named in the URL does not exist on the server (3D000): the server answers,
    /// but nothing can be served until the database is created or the URL is fixed.
    DatabaseMissing,
    /// A prepared statement was missing on the server connection (26000) or already defined
    /// there (42P05). Behind a transaction pooler (PgBouncer's `pool_mode = transaction`) each
    /// transaction may land on another server connection, so named statements do not carry
    /// over: set `DB_STATEMENT_MODE=simple`. Nothing ran, but retrying would hide the setting.
    PreparedStatementLost,
}

impl ErrorClass {
    /// Every class, in declaration order; for tables, metrics labels and plugin golden vectors.
    pub const ALL: [ErrorClass; 29] = [
        Self::ConnectionRefused,
        Self::ConnectionLost,
        Self::Timeout,
        Self::PoolExhausted,
        Self::TooManyConnections,
        Self::ResourcesExhausted,
        Self::ServerShuttingDown,
        Self::ServerStarting,
        Self::ServerSystemError,
        Self::SerializationFailure,
        Self::Deadlock,
        Self::LockNotAvailable,
        Self::ReadOnlyServer,
        Self::QueryCanceled,
        Self::Authentication,
        Self::PermissionDenied,
        Self::Syntax,
        Self::Constraint,
        Self::Data,
        Self::Busy,
        Self::Locked,
        Self::StorageFull,
        Self::StorageReadOnly,
        Self::StorageIo,
        Self::StorageCorrupt,
        Self::CommitOutcomeUnknown,
        Self::Unknown,
        Self::DatabaseMissing,
        Self::PreparedStatementLost,
    ];

    /// Classifies a PostgreSQL SQLSTATE (five characters, case-insensitive).
    ///
    /// The transient set includes every code Npgsql treats as transient; codes not listed
    /// fall back to their two-character class, then to [`ErrorClass::Unknown`].
    pub fn from_sqlstate(sqlstate: &str) -> Self {
        let code = sqlstate.trim().as_bytes();
        if code.len() != 5 || !code.is_ascii() {
            return Self::Unknown;
        }
        // Upper-case on the stack: classification sits on the error path of every call.
        let mut buffer = [0u8; 5];
        for (out, byte) in buffer.iter_mut().zip(code) {
            *out = byte.to_ascii_uppercase();
        }
        let Ok(upper) = core::str::from_utf8(&buffer) else { return Self::Unknown };
        match upper {
            "08001" | "08004" => Self::ConnectionRefused,
            "08000" | "08003" | "08006" | "08007" => Self::ConnectionLost,
            "53300" => Self::TooManyConnections,
            "53000" | "53100" | "53200" | "53400" => Self::ResourcesExhausted,
            "57P01" | "57P02" | "57P05" => Self::ServerShuttingDown,
            "57P03" => Self::ServerStarting,
            "57014" => Self::QueryCanceled,
            "58000" | "58030" => Self::ServerSystemError,
            "40001" => Self::SerializationFailure,
            "40P01" => Self::Deadlock,
            "55P03" | "55006" | "55000" => Self::LockNotAvailable,
            "25006" => Self::ReadOnlyServer,
            "42501" => Self::PermissionDenied,
            "3D000" => Self::DatabaseMissing,
            "26000" | "42P05" => Self::PreparedStatementLost,
            _ => match &upper[..2] {
                "08" => Self::ConnectionLost,
                "28" => Self::Authentication,
                "42" => Self::Syntax,
                "23" => Self::Constraint,
                "22" => Self::Data,
                "53" => Self::ResourcesExhausted,
                _ => Self::Unknown,
            },
        }
    }

    /// Classifies a SQLite result code, primary (`5`) or extended (`517`).
    pub fn from_sqlite_code(code: i32) -> Self {
        // Extended codes keep the primary code in their low byte.
        match code & 0xff {
            5 => Self::Busy,
            6 => Self::Locked,
            8 => Self::StorageReadOnly,
            10 => Self::StorageIo,
            11 | 26 => Self::StorageCorrupt,
            13 => Self::StorageFull,
            // SQLITE_CANTOPEN: the file or its directory is missing or unreadable.
            14 => Self::StorageIo,
            // SQLITE_CONSTRAINT
            19 => Self::Constraint,
            // SQLITE_MISMATCH, SQLITE_RANGE, SQLITE_TOOBIG
            20 | 25 | 18 => Self::Data,
            // SQLITE_ERROR: generic SQL error (syntax, missing table)
            1 => Self::Syntax,
            // SQLITE_AUTH, SQLITE_PERM
            23 | 3 => Self::PermissionDenied,
            // SQLITE_INTERRUPT: an interrupt (our timeout) cancelled the statement
            9 => Self::QueryCanceled,
            // SQLITE_NOMEM
            7 => Self::ResourcesExhausted,
            _ => Self::Unknown,
        }
    }

    /// Classifies an I/O error kind seen while talking to the server.
    pub fn from_io_kind(kind: std::io::ErrorKind) -> Self {
        use std::io::ErrorKind as K;
        match kind {
            K::ConnectionRefused | K::NotFound | K::AddrNotAvailable | K::HostUnreachable | K::NetworkUnreachable => {
                Self::ConnectionRefused
            }
            K::ConnectionReset
            | K::ConnectionAborted
            | K::BrokenPipe
            | K::UnexpectedEof
            | K::NotConnected
            | K::NetworkDown => Self::ConnectionLost,
            K::TimedOut | K::WouldBlock => Self::Timeout,
            K::PermissionDenied => Self::StorageReadOnly,
            K::StorageFull => Self::StorageFull,
            K::ReadOnlyFilesystem => Self::StorageReadOnly,
            _ => Self::Unknown,
        }
    }

    /// The class for a pool that handed out no connection within its acquire timeout.
    pub const fn pool_acquire_timeout() -> Self {
        Self::PoolExhausted
    }

    /// The class for a connection lost after `COMMIT` was sent: the outcome is unknown.
    pub const fn commit_outcome_unknown() -> Self {
        Self::CommitOutcomeUnknown
    }

    /// Whether trying the operation again may succeed.
    ///
    /// [`ErrorClass::CommitOutcomeUnknown`] is never retryable by default: replaying it could
    /// apply the same change twice. Hosts resolve it with an idempotency key instead.
    pub const fn is_retryable(self) -> bool {
        matches!(
            self,
            Self::ConnectionRefused
                | Self::ConnectionLost
                | Self::Timeout
                | Self::PoolExhausted
                | Self::TooManyConnections
                | Self::ResourcesExhausted
                | Self::ServerShuttingDown
                | Self::ServerStarting
                | Self::ServerSystemError
                | Self::SerializationFailure
                | Self::Deadlock
                | Self::LockNotAvailable
                | Self::ReadOnlyServer
                | Self::Busy
                | Self::Locked
        )
    }

    /// Whether a non-idempotent operation may be retried: true only when the error guarantees
    /// that nothing took effect (the server rejected or rolled back the work, or it never got
    /// a connection).
    pub const fn is_safe_for_non_idempotent(self) -> bool {
        matches!(
            self,
            Self::ConnectionRefused
                | Self::PoolExhausted
                | Self::TooManyConnections
                | Self::ResourcesExhausted
                | Self::ServerStarting
                | Self::SerializationFailure
                | Self::Deadlock
                | Self::LockNotAvailable
                | Self::ReadOnlyServer
                | Self::Busy
                | Self::Locked
        )
    }

    /// Whether the failure says the database is unreachable or not serving, as opposed to
    /// rejecting one statement.
    pub const fn is_connectivity(self) -> bool {
        matches!(
            self,
            Self::ConnectionRefused
                | Self::ConnectionLost
                | Self::Timeout
                | Self::PoolExhausted
                | Self::TooManyConnections
                | Self::ServerShuttingDown
                | Self::ServerStarting
                | Self::DatabaseMissing
        )
    }

    /// Whether the failure counts against the circuit breaker: the database could not be
    /// reached or gave no connection. A connection that died mid-call (killed backend, server
    /// restart) does not count by itself: the next connect attempt tells whether the server
    /// is really gone, and a pool recovering from killed backends must not trip the breaker.
    pub const fn trips_breaker(self) -> bool {
        matches!(
            self,
            Self::ConnectionRefused
                | Self::Timeout
                | Self::PoolExhausted
                | Self::TooManyConnections
                | Self::ServerStarting
        )
    }

    /// Whether a connection that produced this error should be evicted from the pool rather
    /// than reused (a standby answering 25006 on a connection meant for writes, a dead socket).
    pub const fn evicts_connection(self) -> bool {
        matches!(
            self,
            Self::ConnectionLost | Self::ReadOnlyServer | Self::ServerShuttingDown | Self::CommitOutcomeUnknown
        )
    }

    /// Whether the server itself may be gone (stopped, restarting, failing over), as opposed
    /// to one connection or one statement failing: before retrying, wait for it to answer.
    pub const fn says_server_may_be_gone(self) -> bool {
        matches!(self, Self::ConnectionRefused | Self::ConnectionLost | Self::ServerShuttingDown | Self::ServerStarting)
    }

    /// Whether a write sent on the connection that failed this way may or may not have been
    /// applied: only an answer from the server settles it.
    pub const fn may_have_applied(self) -> bool {
        matches!(self, Self::ConnectionLost | Self::Timeout | Self::ServerShuttingDown | Self::ServerSystemError)
    }

    /// Whether the failure suggests the pool's server is gone or demoted, so that a multi-host
    /// URL should choose its server again: the connection died, the server refused or stopped
    /// answering (the pool then times out acquiring), or it answered read-only (25006, a
    /// standby after a failover).
    pub const fn suggests_failover(self) -> bool {
        self.evicts_connection() || matches!(self, Self::ConnectionRefused | Self::Timeout | Self::PoolExhausted)
    }

    /// The class a caller sees when the runner gives up for `reason`: a non-idempotent call
    /// whose connection died is reported as [`ErrorClass::CommitOutcomeUnknown`], because the
    /// caller must resolve it (by an idempotency key), not assume it failed.
    pub fn surfaced(self, idempotency: Idempotency, reason: &GiveUpReason) -> Self {
        match reason {
            GiveUpReason::UnsafeToRepeat(_) if idempotency == Idempotency::NonIdempotent && self.may_have_applied() => {
                Self::CommitOutcomeUnknown
            }
            _ => self,
        }
    }

    /// The stable snake_case name used in metrics labels, logs and the plugin contract.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ConnectionRefused => "connection_refused",
            Self::ConnectionLost => "connection_lost",
            Self::Timeout => "timeout",
            Self::PoolExhausted => "pool_exhausted",
            Self::TooManyConnections => "too_many_connections",
            Self::ResourcesExhausted => "resources_exhausted",
            Self::ServerShuttingDown => "server_shutting_down",
            Self::ServerStarting => "server_starting",
            Self::ServerSystemError => "server_system_error",
            Self::SerializationFailure => "serialization_failure",
            Self::Deadlock => "deadlock",
            Self::LockNotAvailable => "lock_not_available",
            Self::ReadOnlyServer => "read_only_server",
            Self::QueryCanceled => "query_canceled",
            Self::Authentication => "authentication",
            Self::PermissionDenied => "permission_denied",
            Self::Syntax => "syntax",
            Self::Constraint => "constraint",
            Self::Data => "data",
            Self::Busy => "busy",
            Self::Locked => "locked",
            Self::StorageFull => "storage_full",
            Self::StorageReadOnly => "storage_read_only",
            Self::StorageIo => "storage_io",
            Self::StorageCorrupt => "storage_corrupt",
            Self::CommitOutcomeUnknown => "commit_outcome_unknown",
            Self::Unknown => "unknown",
            Self::DatabaseMissing => "database_missing",
            Self::PreparedStatementLost => "prepared_statement_lost",
        }
    }
}

impl core::fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_connections_on_writes_surface_as_outcome_unknown() {
        let unsafe_lost = GiveUpReason::UnsafeToRepeat(ErrorClass::ConnectionLost);
        assert_eq!(
            ErrorClass::ConnectionLost.surfaced(Idempotency::NonIdempotent, &unsafe_lost),
            ErrorClass::CommitOutcomeUnknown
        );
        let exhausted = GiveUpReason::RetriesExhausted(3);
        assert_eq!(
            ErrorClass::ConnectionLost.surfaced(Idempotency::Idempotent, &exhausted),
            ErrorClass::ConnectionLost
        );
        let syntax = GiveUpReason::NotRetryable(ErrorClass::Syntax);
        assert_eq!(ErrorClass::Syntax.surfaced(Idempotency::NonIdempotent, &syntax), ErrorClass::Syntax);
    }

    #[test]
    fn server_gone_and_failover_rules() {
        assert!(ErrorClass::ConnectionRefused.says_server_may_be_gone());
        assert!(!ErrorClass::SerializationFailure.says_server_may_be_gone());
        assert!(ErrorClass::ReadOnlyServer.suggests_failover());
        assert!(ErrorClass::PoolExhausted.suggests_failover());
        assert!(!ErrorClass::Syntax.suggests_failover());
        assert!(ErrorClass::Timeout.may_have_applied());
        assert!(!ErrorClass::ConnectionRefused.may_have_applied());
    }

    /// Every SQLSTATE Npgsql treats as transient (REFERENCE.md) must be retryable here.
    const NPGSQL_TRANSIENT: [&str; 22] = [
        "53000", "53100", "53200", "53300", "53400", "57P03", "58000", "58030", "40001", "40P01", "55P03", "55006",
        "55000", "08000", "08003", "08006", "08001", "08004", "08007", "57P01", "57P02", "57P05",
    ];

    #[test]
    fn every_npgsql_transient_sqlstate_is_retryable() {
        for code in NPGSQL_TRANSIENT {
            let class = ErrorClass::from_sqlstate(code);
            assert!(class.is_retryable(), "{code} classified as {class}, which is not retryable");
        }
    }

    #[test]
    fn sqlstate_table() {
        let table = [
            ("08001", ErrorClass::ConnectionRefused),
            ("08004", ErrorClass::ConnectionRefused),
            ("08006", ErrorClass::ConnectionLost),
            ("08P01", ErrorClass::ConnectionLost),
            ("53300", ErrorClass::TooManyConnections),
            ("53100", ErrorClass::ResourcesExhausted),
            ("57p01", ErrorClass::ServerShuttingDown),
            ("57P03", ErrorClass::ServerStarting),
            ("57014", ErrorClass::QueryCanceled),
            ("40001", ErrorClass::SerializationFailure),
            ("40P01", ErrorClass::Deadlock),
            ("55P03", ErrorClass::LockNotAvailable),
            ("25006", ErrorClass::ReadOnlyServer),
            ("28P01", ErrorClass::Authentication),
            ("28000", ErrorClass::Authentication),
            ("3D000", ErrorClass::DatabaseMissing),
            ("26000", ErrorClass::PreparedStatementLost),
            ("42P05", ErrorClass::PreparedStatementLost),
            ("42501", ErrorClass::PermissionDenied),
            ("42601", ErrorClass::Syntax),
            ("42P01", ErrorClass::Syntax),
            ("23505", ErrorClass::Constraint),
            ("23503", ErrorClass::Constraint),
            ("22012", ErrorClass::Data),
            ("58030", ErrorClass::ServerSystemError),
            ("XX000", ErrorClass::Unknown),
            ("", ErrorClass::Unknown),
            ("4000", ErrorClass::Unknown),
            ("é4000", ErrorClass::Unknown),
        ];
        for (code, expected) in table {
            assert_eq!(ErrorClass::from_sqlstate(code), expected, "SQLSTATE {code:?}");
        }
    }

    #[test]
    fn sqlite_primary_and_extended_codes() {
        let table = [
            (5, ErrorClass::Busy),
            (261, ErrorClass::Busy),
            (517, ErrorClass::Busy),
            (773, ErrorClass::Busy),
            (6, ErrorClass::Locked),
            (262, ErrorClass::Locked),
            (13, ErrorClass::StorageFull),
            (10, ErrorClass::StorageIo),
            (266, ErrorClass::StorageIo),
            (11, ErrorClass::StorageCorrupt),
            (26, ErrorClass::StorageCorrupt),
            (8, ErrorClass::StorageReadOnly),
            (1032, ErrorClass::StorageReadOnly),
            (2067, ErrorClass::Constraint),
            (1, ErrorClass::Syntax),
            (9, ErrorClass::QueryCanceled),
            (999_999, ErrorClass::Unknown),
        ];
        for (code, expected) in table {
            assert_eq!(ErrorClass::from_sqlite_code(code), expected, "SQLite code {code}");
        }
        for code in [5, 261, 517, 773, 6, 262] {
            assert!(ErrorClass::from_sqlite_code(code).is_retryable(), "{code}");
        }
        for code in [13, 10, 11, 8] {
            assert!(!ErrorClass::from_sqlite_code(code).is_retryable(), "{code}");
        }
    }

    #[test]
    fn io_kinds() {
        use std::io::ErrorKind as K;
        assert_eq!(ErrorClass::from_io_kind(K::ConnectionRefused), ErrorClass::ConnectionRefused);
        assert_eq!(ErrorClass::from_io_kind(K::ConnectionReset), ErrorClass::ConnectionLost);
        assert_eq!(ErrorClass::from_io_kind(K::BrokenPipe), ErrorClass::ConnectionLost);
        assert_eq!(ErrorClass::from_io_kind(K::UnexpectedEof), ErrorClass::ConnectionLost);
        assert_eq!(ErrorClass::from_io_kind(K::TimedOut), ErrorClass::Timeout);
        assert_eq!(ErrorClass::from_io_kind(K::Other), ErrorClass::Unknown);
    }

    #[test]
    fn commit_outcome_unknown_is_never_retried() {
        let class = ErrorClass::commit_outcome_unknown();
        assert!(!class.is_retryable());
        assert!(!class.is_safe_for_non_idempotent());
    }

    #[test]
    fn safe_for_non_idempotent_implies_retryable() {
        for class in ErrorClass::ALL {
            if class.is_safe_for_non_idempotent() {
                assert!(class.is_retryable(), "{class}");
            }
        }
    }

    #[test]
    fn errors_that_may_have_taken_effect_are_unsafe() {
        for class in [ErrorClass::ConnectionLost, ErrorClass::Timeout, ErrorClass::ServerSystemError] {
            assert!(class.is_retryable() && !class.is_safe_for_non_idempotent(), "{class}");
        }
    }

    #[test]
    fn names_round_trip_through_serde() {
        for class in ErrorClass::ALL {
            let json = serde_json::to_string(&class).expect("serialize");
            assert_eq!(json, format!("\"{}\"", class.as_str()));
            let back: ErrorClass = serde_json::from_str(&json).expect("deserialize");
            assert_eq!(back, class);
        }
    }
}
