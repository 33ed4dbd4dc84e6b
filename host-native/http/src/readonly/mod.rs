//! Running one read-only query for an operator (`POST /api/database/test`, and the `query`
//! import of health-check plugins).
//!
//! Read-only is enforced by the database, never by parsing SQL:
//!
//! - **PostgreSQL.** A `READ ONLY` transaction alone is not enough — a superuser can run
//!   `COPY … TO PROGRAM` inside one, and `set_config('role', …)` undoes `SET ROLE` — so the
//!   query runs as a least-privilege *login*: `DB_TEST_URL` if set, else the main URL's user
//!   only when it is not a superuser and holds neither `pg_execute_server_program` nor
//!   `pg_write_server_files` (checked on every call, on the connection that runs the query).
//!   A login that can read a catalog holding secrets ([`SECRET_CATALOGS`]: password hashes,
//!   foreign-server credentials), as `pg_read_all_data` can, is refused too: whatever it
//!   reads may end up in a response or, through a plugin, in the health report.
//!   Each call opens its own connection, runs `BEGIN READ ONLY`, sets a local
//!   `statement_timeout`, runs the statement through the extended protocol (a prepared
//!   statement cannot hold more than one command), always rolls back, and closes the
//!   connection — so session state (advisory locks, settings) cannot outlive the call.
//! - **SQLite.** Each call opens its own connection with `SQLITE_OPEN_READONLY`, sets
//!   `PRAGMA query_only`, limits attached databases to zero (`sqlite3_limit`, so `ATTACH`
//!   fails), leaves extension loading disabled (SQLite's default), refuses statements that
//!   `sqlite3_stmt_readonly` says would write, refuses a second statement in the text, and
//!   interrupts the statement (`sqlite3_interrupt`) when the timeout passes.

mod postgres;
mod sqlite;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dbguard::{DbError, DbManager, Idempotency, Redactor};
use dbguard_core::{DatabaseType, DbConfig};
use schemars::JsonSchema;
use sea_orm::{DbErr, RuntimeErr};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use sqlx::postgres::{PgConnectOptions, PgConnection};

use postgres::pg_options;
pub use sqlite::SQLITE_MAX_VALUE_BYTES;
use sqlite::run_sqlite;

/// Rows returned when the request does not say.
pub const DEFAULT_MAX_ROWS: u32 = 100;
/// The most rows a request may ask for.
pub const MAX_ROWS_CAP: u32 = 1000;
/// Timeout when the request does not say, in milliseconds.
pub const DEFAULT_TIMEOUT_MS: u64 = 2000;
/// The longest timeout a request may ask for, in milliseconds.
pub const TIMEOUT_MS_CAP: u64 = 10_000;
/// The longest query text accepted, in bytes.
pub const MAX_QUERY_BYTES: usize = 16 * 1024;
/// The most parameters accepted.
pub const MAX_PARAMS: usize = 100;
/// Read-only queries that may run at once (each holds its own connection).
pub const MAX_CONCURRENT: usize = 4;
/// The most bytes of values a result may carry (rows are counted as they arrive, so a result
/// past this is refused without being held in memory).
pub const MAX_RESULT_BYTES: usize = 4 << 20;
/// The catalogs that hold secrets: password hashes (`pg_authid`, and `pg_shadow` over it) and
/// the options of user mappings, which hold foreign servers' passwords.
pub const SECRET_CATALOGS: [&str; 3] = ["pg_authid", "pg_shadow", "pg_user_mapping"];

/// The body of `POST /api/database/test`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    /// One SQL statement. `$1`, `$2`, … (PostgreSQL) or `?1`, `?` (SQLite) refer to `params`.
    pub query: String,
    /// Parameters, bound as data (never spliced into the text): JSON null, booleans, numbers,
    /// strings; arrays and objects bind as JSON.
    #[serde(default)]
    pub params: Vec<Value>,
    /// Rows to return at most (default 100, capped at 1000).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub max_rows: Option<u32>,
    /// Statement timeout in milliseconds (default 2000, capped at 10000).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub timeout_ms: Option<u64>,
}

/// The answer of a read-only query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct QueryResult {
    /// Column names, in order.
    pub columns: Vec<String>,
    /// Rows as objects keyed by column name.
    pub rows: Vec<Map<String, Value>>,
    /// `rows.len()`.
    pub row_count: usize,
    /// Whether more rows existed than `max_rows`.
    pub truncated: bool,
    /// Wall time of the call, in milliseconds.
    pub elapsed_ms: f64,
}

/// Why a read-only query was refused or failed. Messages never contain a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// Bad SQL, a second statement, bad parameters or limits (HTTP 400).
    #[error("{0}")]
    Invalid(String),
    /// A write or a privileged operation was attempted, or no least-privilege login is
    /// configured (HTTP 403).
    #[error("{0}")]
    Forbidden(String),
    /// The statement ran past its timeout and was cancelled (HTTP 504).
    #[error("{0}")]
    Timeout(String),
    /// The result carries more bytes than the runner's limit (HTTP 400).
    #[error("{0}")]
    TooLarge(String),
    /// The login can read a catalog that holds secrets (HTTP 403).
    #[error("{0}")]
    SecretCatalog(String),
    /// The database could not be reached (HTTP 503).
    #[error("{0}")]
    Unavailable(String),
    /// Something unexpected on dbguard's side (HTTP 500).
    #[error("{0}")]
    Internal(String),
}

impl QueryError {
    /// A stable machine-readable code.
    pub const fn code(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "invalid_query",
            Self::Forbidden(_) => "forbidden",
            Self::Timeout(_) => "timeout",
            Self::TooLarge(_) => "result_too_large",
            Self::SecretCatalog(_) => "secret_catalog",
            Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "internal_error",
        }
    }
}

/// How one attempt of a query failed.
pub(crate) enum AttemptError {
    /// Refused or failed for a reason that another attempt cannot change.
    Refused(QueryError),
    /// The database could not be reached or would not serve this login or database: the retry
    /// policy judges it by its class.
    Unreachable {
        /// The driver's error, for classification.
        error: sqlx::Error,
        /// What to tell the caller (scrubbed of secrets).
        message: String,
    },
}

impl From<QueryError> for AttemptError {
    fn from(err: QueryError) -> Self {
        Self::Refused(err)
    }
}

impl AttemptError {
    fn into_query_error(self) -> QueryError {
        match self {
            Self::Refused(err) => err,
            Self::Unreachable { message, .. } => QueryError::Unavailable(message),
        }
    }
}

/// Why a test query run under the retry policy failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GuardedQueryError {
    /// Refused or failed for a reason that retrying cannot change.
    #[error(transparent)]
    Query(#[from] QueryError),
    /// The database could not be reached or would not serve, after the retry policy's
    /// attempts: carries the retry count and the time of the last attempt.
    #[error(transparent)]
    Database(#[from] DbError),
}

/// Limits of one call after defaults and caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryLimits {
    /// Rows returned at most.
    pub max_rows: u32,
    /// Statement timeout.
    pub timeout: Duration,
}

impl QueryLimits {
    /// Applies defaults and caps (values above a cap are lowered to it; zero is refused).
    pub fn from_request(request: &QueryRequest) -> Result<Self, QueryError> {
        let max_rows = request.max_rows.unwrap_or(DEFAULT_MAX_ROWS);
        let timeout_ms = request.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
        if max_rows == 0 {
            return Err(QueryError::Invalid("max_rows must be at least 1".into()));
        }
        if timeout_ms == 0 {
            return Err(QueryError::Invalid("timeout_ms must be at least 1".into()));
        }
        Ok(Self {
            max_rows: max_rows.min(MAX_ROWS_CAP),
            timeout: Duration::from_millis(timeout_ms.min(TIMEOUT_MS_CAP)),
        })
    }
}

enum Backend {
    Postgres { options: Box<PgConnectOptions>, dedicated: bool },
    Sqlite { path: Option<PathBuf> },
    Misconfigured(String),
}

/// Runs one read-only statement at a time per call, with a row cap, a byte cap and a timeout.
pub struct ReadOnlyQuery {
    backend: Backend,
    redactor: Redactor,
    permits: Arc<tokio::sync::Semaphore>,
    max_result_bytes: usize,
    /// Connections kept between calls, when reuse is on (see
    /// [`ReadOnlyQuery::with_connection_reuse`]).
    idle: Option<tokio::sync::Mutex<Vec<PgConnection>>>,
}

impl std::fmt::Debug for ReadOnlyQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.backend {
            Backend::Postgres { dedicated: true, .. } => "postgresql (DB_TEST_URL)",
            Backend::Postgres { dedicated: false, .. } => "postgresql (main login)",
            Backend::Sqlite { .. } => "sqlite",
            Backend::Misconfigured(_) => "misconfigured",
        };
        f.debug_struct("ReadOnlyQuery").field("backend", &kind).finish_non_exhaustive()
    }
}

impl ReadOnlyQuery {
    /// Prepares the runner for `config` (connects lazily, per call).
    pub fn new(config: &DbConfig) -> Self {
        let backend = match config.database_type() {
            DatabaseType::Postgresql => {
                let (url, dedicated) = match &config.test_url {
                    Some(url) => (url, true),
                    None => (&config.url, false),
                };
                match pg_options(url, config.ssl_mode) {
                    Ok(options) => Backend::Postgres { options: Box::new(options), dedicated },
                    Err(message) => Backend::Misconfigured(message),
                }
            }
            DatabaseType::Sqlite if config.url.is_sqlite_memory() => Backend::Sqlite { path: None },
            DatabaseType::Sqlite => Backend::Sqlite { path: config.url.sqlite_path().map(PathBuf::from) },
        };
        Self {
            backend,
            redactor: Redactor::from_config(config),
            permits: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT)),
            max_result_bytes: MAX_RESULT_BYTES,
            idle: None,
        }
    }

    /// The same runner keeping its PostgreSQL connections between calls (at most
    /// [`MAX_CONCURRENT`]), for callers that query often, as health-check plugins do: one
    /// connection per query let a plugin open thousands. A connection is kept only after a
    /// statement that finished cleanly, and only once `ROLLBACK` and `DISCARD ALL` have reset
    /// it (settings, advisory locks, prepared statements), so nothing of one call reaches the
    /// next; the login's privileges are checked again on every call.
    pub fn with_connection_reuse(mut self) -> Self {
        self.idle = Some(tokio::sync::Mutex::new(Vec::new()));
        self
    }

    /// The same runner with another byte cap on results (default [`MAX_RESULT_BYTES`]; at
    /// least one byte).
    pub fn with_max_result_bytes(mut self, bytes: usize) -> Self {
        self.max_result_bytes = bytes.max(1);
        self
    }

    /// Runs the query under `manager`'s retry policy, breaker and retry budget, as any
    /// idempotent call (a read-only statement is safe to repeat): a database that cannot be
    /// reached is tried again on the policy's schedule. Writes one audit event (`target:
    /// "dbguard::audit"`) naming `subject`, the SHA-256 of the query text and the outcome.
    pub async fn run_guarded(
        &self,
        manager: &DbManager,
        subject: &str,
        request: &QueryRequest,
    ) -> Result<QueryResult, GuardedQueryError> {
        let outcome = manager
            .run_direct(Idempotency::Idempotent, || async {
                match self.attempt(request).await {
                    Ok(answer) => Ok(Ok(answer)),
                    // The database answered: for the breaker this attempt succeeded.
                    Err(AttemptError::Refused(err)) => Ok(Err(err)),
                    Err(AttemptError::Unreachable { error, .. }) => {
                        Err(DbErr::Conn(RuntimeErr::SqlxError(Arc::new(error))))
                    }
                }
            })
            .await;
        let result = match outcome {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(refused)) => Err(GuardedQueryError::Query(refused)),
            Err(gave_up) => Err(GuardedQueryError::Database(gave_up)),
        };
        let query_sha256 = sha256_hex(request.query.as_bytes());
        match &result {
            Ok(answer) => tracing::info!(
                target: "dbguard::audit",
                subject,
                query_sha256 = %query_sha256,
                outcome = "ok",
                rows = answer.row_count,
                truncated = answer.truncated,
                elapsed_ms = answer.elapsed_ms,
                "test query"
            ),
            Err(err) => tracing::info!(
                target: "dbguard::audit",
                subject,
                query_sha256 = %query_sha256,
                outcome = match err {
                    GuardedQueryError::Query(err) => err.code(),
                    GuardedQueryError::Database(err) => err.class().as_str(),
                },
                reason = %err,
                "test query refused"
            ),
        }
        result
    }

    /// Runs the query once (no retries).
    pub async fn run(&self, request: &QueryRequest) -> Result<QueryResult, QueryError> {
        self.attempt(request).await.map_err(AttemptError::into_query_error)
    }

    /// One attempt of the query.
    async fn attempt(&self, request: &QueryRequest) -> Result<QueryResult, AttemptError> {
        let limits = QueryLimits::from_request(request)?;
        if request.query.trim().is_empty() {
            return Err(QueryError::Invalid("query is empty".into()).into());
        }
        if request.query.len() > MAX_QUERY_BYTES {
            return Err(QueryError::Invalid(format!("query is longer than {MAX_QUERY_BYTES} bytes")).into());
        }
        if request.params.len() > MAX_PARAMS {
            return Err(QueryError::Invalid(format!("at most {MAX_PARAMS} params")).into());
        }
        let _permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| QueryError::Unavailable("the query runner is shutting down".into()))?;
        let started = Instant::now();
        let (columns, rows, truncated) = match &self.backend {
            Backend::Misconfigured(message) => return Err(QueryError::Forbidden(message.clone()).into()),
            Backend::Postgres { options, dedicated } => {
                // The server cancels at statement_timeout; this is the backstop for a server
                // (or network) that does not answer at all.
                let backstop = limits.timeout + Duration::from_secs(2);
                match tokio::time::timeout(backstop, self.run_postgres(options, *dedicated, request, limits)).await {
                    Ok(result) => result?,
                    Err(_) => {
                        return Err(QueryError::Timeout(format!(
                            "the database did not answer within {} ms",
                            backstop.as_millis()
                        ))
                        .into());
                    }
                }
            }
            Backend::Sqlite { path: None } => {
                return Err(QueryError::Invalid(
                    "the test endpoint needs a file database; an in-memory SQLite database cannot be opened read-only from a second connection".into(),
                )
                .into());
            }
            Backend::Sqlite { path: Some(path) } => {
                run_sqlite(path.clone(), request.clone(), limits, self.max_result_bytes).await?
            }
        };
        Ok(QueryResult {
            row_count: rows.len(),
            columns,
            rows,
            truncated,
            elapsed_ms: started.elapsed().as_secs_f64() * 1000.0,
        })
    }
}

type Rows = (Vec<String>, Vec<Map<String, Value>>, bool);

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// Lowercase hex SHA-256 of `bytes` (how audit events name a query).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Counts the bytes of a result as its rows arrive, and refuses it past the cap.
struct ResultBytes {
    total: usize,
    cap: usize,
}

impl ResultBytes {
    fn new(cap: usize) -> Self {
        Self { total: 0, cap }
    }

    fn add(&mut self, bytes: usize) -> Result<(), QueryError> {
        self.total = self.total.saturating_add(bytes);
        if self.total > self.cap {
            return Err(QueryError::TooLarge(format!(
                "the result is larger than {} bytes; select fewer rows or smaller values",
                self.cap
            )));
        }
        Ok(())
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    fn request(max_rows: Option<u32>, timeout_ms: Option<u64>) -> QueryRequest {
        QueryRequest { query: "SELECT 1".into(), params: vec![], max_rows, timeout_ms }
    }

    #[test]
    fn limits_default_and_cap() {
        let limits = QueryLimits::from_request(&request(None, None)).expect("defaults");
        assert_eq!((limits.max_rows, limits.timeout), (100, Duration::from_millis(2000)));
        let capped = QueryLimits::from_request(&request(Some(5000), Some(60_000))).expect("caps");
        assert_eq!((capped.max_rows, capped.timeout), (1000, Duration::from_millis(10_000)));
        assert!(QueryLimits::from_request(&request(Some(0), None)).is_err());
        assert!(QueryLimits::from_request(&request(None, Some(0))).is_err());
    }

    #[test]
    fn unknown_fields_are_refused() {
        let parsed: Result<QueryRequest, _> = serde_json::from_str(r#"{"query":"SELECT 1","mode":"rw"}"#);
        assert!(parsed.is_err());
    }

    #[test]
    fn sha256_is_hex() {
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
