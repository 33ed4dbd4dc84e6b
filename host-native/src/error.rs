//! The error a guarded call returns.

use std::fmt;
use std::sync::Arc;

use dbguard_core::{ErrorClass, GiveUpReason};
use sea_orm::DbErr;

use crate::secrets::Redactor;

/// Why a guarded database call failed, after any retries.
///
/// `Display` and `Debug` never contain a password: the driver's message is scrubbed of every
/// configured secret and of anything shaped like a URL password before it is stored.
#[derive(Clone, thiserror::Error)]
#[error("{message}")]
pub struct DbError {
    class: ErrorClass,
    code: Option<String>,
    retries: u32,
    last_attempt: Option<String>,
    reason: Option<GiveUpReason>,
    message: String,
    source_err: Option<Arc<DbErr>>,
}

/// What a caller needs to know about a statement prepared on another server connection.
const PREPARED_STATEMENT_LOST_HINT: &str = "; a transaction pooler (PgBouncer with pool_mode = transaction or \
     statement) routes each transaction to any server connection, so prepared statements do not carry over: \
     set DB_STATEMENT_MODE=simple";

impl DbError {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn from_db_err(
        err: DbErr,
        cause: Option<String>,
        class: ErrorClass,
        code: Option<String>,
        retries: u32,
        last_attempt: Option<String>,
        reason: Option<GiveUpReason>,
        redactor: &Redactor,
    ) -> Self {
        // `cause` is the real reason found behind a pool timeout, already scrubbed.
        let mut detail = cause.unwrap_or_else(|| redactor.scrub(&err.to_string()));
        if class == ErrorClass::PreparedStatementLost {
            detail.push_str(PREPARED_STATEMENT_LOST_HINT);
        }
        let message = match &reason {
            Some(reason) if retries > 0 => format!("{class}: {detail} ({reason})"),
            _ => format!("{class}: {detail}"),
        };
        Self { class, code, retries, last_attempt, reason, message, source_err: Some(Arc::new(err)) }
    }

    pub(crate) fn circuit_open(
        class: ErrorClass,
        retry_in_ms: u128,
        retries: u32,
        last_attempt: Option<String>,
    ) -> Self {
        Self {
            class,
            code: None,
            retries,
            last_attempt,
            reason: Some(GiveUpReason::CircuitOpen),
            message: format!("circuit breaker open after repeated {class} failures; next probe in {retry_in_ms} ms"),
            source_err: None,
        }
    }

    pub(crate) fn with_message(class: ErrorClass, message: String, retries: u32, last_attempt: Option<String>) -> Self {
        Self { class, code: None, retries, last_attempt, reason: None, message, source_err: None }
    }

    /// The failure's class.
    pub fn class(&self) -> ErrorClass {
        self.class
    }

    /// SQLSTATE or SQLite result code, if the server sent one.
    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }

    /// Retries made before giving up.
    pub fn retry_count(&self) -> u32 {
        self.retries
    }

    /// When the last attempt ended, RFC 3339.
    pub fn last_attempt(&self) -> Option<&str> {
        self.last_attempt.as_deref()
    }

    /// Why retrying stopped, if it was considered.
    pub fn give_up_reason(&self) -> Option<&GiveUpReason> {
        self.reason.as_ref()
    }

    /// Whether the call failed fast because the circuit breaker is open.
    pub fn is_circuit_open(&self) -> bool {
        self.reason == Some(GiveUpReason::CircuitOpen)
    }

    /// Whether a write may or may not have been applied (resolve it with an idempotency key).
    pub fn is_outcome_unknown(&self) -> bool {
        self.class == ErrorClass::CommitOutcomeUnknown
    }

    /// The SeaORM error behind it, to match on `RecordNotFound` and the like.
    pub fn db_err(&self) -> Option<&DbErr> {
        self.source_err.as_deref()
    }
}

impl fmt::Debug for DbError {
    // The SeaORM error is left out: its Debug output is not scrubbed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbError")
            .field("class", &self.class)
            .field("code", &self.code)
            .field("retries", &self.retries)
            .field("last_attempt", &self.last_attempt)
            .field("reason", &self.reason)
            .field("message", &self.message)
            .finish()
    }
}
