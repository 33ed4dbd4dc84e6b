//! Options for guarded transactions.

use sea_orm::{AccessMode, IsolationLevel, SqliteTransactionMode, TransactionOptions};

/// How a guarded transaction begins.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TxnOptions {
    /// Isolation level (PostgreSQL); the server default when `None`. SQLite's transactions are
    /// always serializable, which meets every level.
    pub isolation: Option<IsolationLevel>,
    /// Read-only or read-write (PostgreSQL); the server default when `None`. SQLite has no
    /// read-only transactions: there a read-only transaction begins as read-write, and a warning
    /// says so once per process.
    pub access_mode: Option<AccessMode>,
    /// SQLite: `IMMEDIATE` takes the write lock up front, so a writer waits (busy_timeout)
    /// instead of failing with `SQLITE_BUSY_SNAPSHOT` half-way.
    pub sqlite_mode: Option<SqliteTransactionMode>,
}

impl TxnOptions {
    /// `SERIALIZABLE`.
    pub fn serializable() -> Self {
        Self { isolation: Some(IsolationLevel::Serializable), ..Self::default() }
    }

    /// SQLite `BEGIN IMMEDIATE`.
    pub fn sqlite_immediate() -> Self {
        Self { sqlite_mode: Some(SqliteTransactionMode::Immediate), ..Self::default() }
    }

    pub(crate) fn to_sea_orm(self) -> TransactionOptions {
        TransactionOptions {
            isolation_level: self.isolation,
            access_mode: self.access_mode,
            sqlite_transaction_mode: self.sqlite_mode,
        }
    }
}
