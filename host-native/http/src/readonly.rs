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

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dbguard_core::{DatabaseType, DatabaseUrl, DbConfig, SslMode};
use futures::TryStreamExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use sqlx::postgres::{PgArguments, PgConnectOptions, PgConnection, PgRow, PgSslMode};
use sqlx::{Arguments, Column, Connection, Executor, Row, TypeInfo, ValueRef};

use dbguard::Redactor;

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

    /// Runs the query and writes one audit event (`target: "dbguard::audit"`) naming `subject`,
    /// the SHA-256 of the query text and the outcome.
    pub async fn run_audited(&self, subject: &str, request: &QueryRequest) -> Result<QueryResult, QueryError> {
        let result = self.run(request).await;
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
                outcome = err.code(),
                reason = %err,
                "test query refused"
            ),
        }
        result
    }

    /// Runs the query.
    pub async fn run(&self, request: &QueryRequest) -> Result<QueryResult, QueryError> {
        let limits = QueryLimits::from_request(request)?;
        if request.query.trim().is_empty() {
            return Err(QueryError::Invalid("query is empty".into()));
        }
        if request.query.len() > MAX_QUERY_BYTES {
            return Err(QueryError::Invalid(format!("query is longer than {MAX_QUERY_BYTES} bytes")));
        }
        if request.params.len() > MAX_PARAMS {
            return Err(QueryError::Invalid(format!("at most {MAX_PARAMS} params")));
        }
        let _permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| QueryError::Unavailable("the query runner is shutting down".into()))?;
        let started = Instant::now();
        let (columns, rows, truncated) = match &self.backend {
            Backend::Misconfigured(message) => return Err(QueryError::Forbidden(message.clone())),
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
                        )));
                    }
                }
            }
            Backend::Sqlite { path: None } => {
                return Err(QueryError::Invalid(
                    "the test endpoint needs a file database; an in-memory SQLite database cannot be opened read-only from a second connection".into(),
                ));
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

    async fn run_postgres(
        &self,
        options: &PgConnectOptions,
        dedicated: bool,
        request: &QueryRequest,
        limits: QueryLimits,
    ) -> Result<Rows, QueryError> {
        let idle = match &self.idle {
            Some(idle) => idle.lock().await.pop(),
            None => None,
        };
        let reused = idle.is_some();
        let mut conn = match idle {
            Some(conn) => conn,
            None => PgConnection::connect_with(options).await.map_err(|err| self.pg_error(&err))?,
        };
        let mut result = self.pg_session(&mut conn, dedicated, request, limits).await;
        if reused && matches!(result, Err(QueryError::Unavailable(_))) {
            // A kept connection the server has since closed: one fresh try.
            conn = PgConnection::connect_with(options).await.map_err(|err| self.pg_error(&err))?;
            result = self.pg_session(&mut conn, dedicated, request, limits).await;
        }
        match &result {
            // A cleanly finished statement: roll back, then keep the connection or say goodbye.
            Ok((_, _, false)) => {
                let reset = conn.execute("ROLLBACK").await.is_ok();
                match &self.idle {
                    Some(idle) if reset && conn.execute("DISCARD ALL").await.is_ok() => {
                        let mut idle = idle.lock().await;
                        if idle.len() < MAX_CONCURRENT {
                            idle.push(conn);
                        } else {
                            drop(idle);
                            let _ = conn.close().await;
                        }
                    }
                    _ => {
                        let _ = conn.close().await;
                    }
                }
            }
            // Truncated or failed: the server may still be sending rows; dropping the socket
            // aborts the transaction without draining them (the server rolls back on EOF).
            _ => drop(conn),
        }
        result
    }

    async fn pg_session(
        &self,
        conn: &mut PgConnection,
        dedicated: bool,
        request: &QueryRequest,
        limits: QueryLimits,
    ) -> Result<Rows, QueryError> {
        let (user, superuser, program, files, secrets): (String, bool, bool, bool, Vec<String>) = sqlx::query_as(
            "SELECT current_user::text, r.rolsuper, \
                    pg_has_role(current_user, 'pg_execute_server_program', 'MEMBER'), \
                    pg_has_role(current_user, 'pg_write_server_files', 'MEMBER'), \
                    ARRAY(SELECT c FROM unnest($1::text[]) c \
                          WHERE has_table_privilege(('pg_catalog.' || c)::regclass, 'SELECT')) \
             FROM pg_roles r WHERE r.rolname = current_user",
        )
        .bind(&SECRET_CATALOGS[..])
        .fetch_one(&mut *conn)
        .await
        .map_err(|err| self.pg_error(&err))?;
        let source = if dedicated { "DB_TEST_URL" } else { "DATABASE_URL" };
        if !superuser && !secrets.is_empty() {
            return Err(QueryError::SecretCatalog(format!(
                "the test endpoint refuses to run as {source}'s user \"{user}\", which can read {}: those catalogs hold password hashes and foreign-server credentials. Use a login without pg_read_all_data, e.g. CREATE ROLE dbguard_ro LOGIN PASSWORD '…' IN ROLE pg_monitor, plus GRANT USAGE ON SCHEMA app TO dbguard_ro and GRANT SELECT ON ALL TABLES IN SCHEMA app TO dbguard_ro",
                secrets.join(", ")
            )));
        }
        if superuser || program || files {
            let what = if superuser {
                "is a superuser".to_owned()
            } else {
                "may run server programs or write server files (pg_execute_server_program / pg_write_server_files)"
                    .to_owned()
            };
            return Err(QueryError::Forbidden(format!(
                "the test endpoint refuses to run as {source}'s user \"{user}\", which {what}: a read-only transaction does not stop such a login from running programs or changing roles. Configure DB_TEST_URL with a least-privilege login, e.g. CREATE ROLE dbguard_ro LOGIN PASSWORD '…' IN ROLE pg_monitor, plus SELECT granted on the application's schemas"
            )));
        }
        conn.execute("BEGIN READ ONLY").await.map_err(|err| self.pg_error(&err))?;
        let timeout_ms = limits.timeout.as_millis().to_string();
        sqlx::query(
            "SELECT set_config('statement_timeout', $1, true), set_config('lock_timeout', $1, true), \
                    set_config('idle_in_transaction_session_timeout', $1, true)",
        )
        .bind(&timeout_ms)
        .execute(&mut *conn)
        .await
        .map_err(|err| self.pg_error(&err))?;

        let mut args = PgArguments::default();
        for param in &request.params {
            bind_pg(&mut args, param)?;
        }
        let max = usize::try_from(limits.max_rows).unwrap_or(usize::MAX);
        let mut rows = Vec::new();
        let mut columns: Vec<String> = Vec::new();
        let mut truncated = false;
        let mut bytes = ResultBytes::new(self.max_result_bytes);
        {
            // The text is the operator's by design; it runs read-only, as a least-privilege login,
            // and its parameters are bound, never spliced.
            let sql = sqlx::AssertSqlSafe(request.query.clone());
            let mut stream = sqlx::query_with(sql, args).persistent(false).fetch(&mut *conn);
            while let Some(row) = stream.try_next().await.map_err(|err| self.pg_error(&err))? {
                if rows.len() == max {
                    truncated = true;
                    break;
                }
                let row_bytes: usize = (0..row.len())
                    .filter_map(|index| row.try_get_raw(index).ok())
                    .filter_map(|raw| raw.as_bytes().ok().map(<[u8]>::len))
                    .sum();
                bytes.add(row_bytes)?;
                if columns.is_empty() {
                    columns = row.columns().iter().map(|c| c.name().to_owned()).collect();
                }
                rows.push(pg_row(&row));
            }
        }
        Ok((columns, rows, truncated))
    }

    fn pg_error(&self, err: &sqlx::Error) -> QueryError {
        let text = self.redactor.scrub(&err.to_string());
        match err {
            sqlx::Error::Database(db) => {
                let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
                let message = format!("{} (SQLSTATE {code})", self.redactor.scrub(db.message()));
                match code.as_str() {
                    "25006" => QueryError::Forbidden(format!("write refused: {message}")),
                    "42501" => QueryError::Forbidden(format!("permission denied: {message}")),
                    "57014" => QueryError::Timeout(format!("cancelled at the statement timeout: {message}")),
                    "55P03" => QueryError::Timeout(format!("lock wait timed out: {message}")),
                    "42601" if message.contains("multiple commands") => {
                        QueryError::Invalid(format!("one statement only: {message}"))
                    }
                    c if c.starts_with("08") || c.starts_with("53") || c.starts_with("57P") => {
                        QueryError::Unavailable(message)
                    }
                    "28000" | "28P01" => QueryError::Unavailable(format!("cannot log in: {message}")),
                    _ => QueryError::Invalid(message),
                }
            }
            sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) | sqlx::Error::PoolTimedOut => {
                QueryError::Unavailable(format!("cannot reach the database: {text}"))
            }
            sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) | sqlx::Error::Encode(_) => {
                QueryError::Invalid(text)
            }
            _ => QueryError::Unavailable(text),
        }
    }
}

type Rows = (Vec<String>, Vec<Map<String, Value>>, bool);

fn pg_options(url: &DatabaseUrl, ssl_mode: SslMode) -> Result<PgConnectOptions, String> {
    let options = PgConnectOptions::from_str(url.expose_secret())
        .map_err(|_| "DB_TEST_URL / DATABASE_URL cannot be used for the test endpoint".to_owned())?;
    let ssl_mode = match ssl_mode {
        SslMode::Disable => PgSslMode::Disable,
        SslMode::Prefer => PgSslMode::Prefer,
        SslMode::Require => PgSslMode::Require,
        SslMode::VerifyCa => PgSslMode::VerifyCa,
        SslMode::VerifyFull => PgSslMode::VerifyFull,
    };
    Ok(options.ssl_mode(ssl_mode).application_name("dbguard-readonly").statement_cache_capacity(0))
}

fn bind_pg(args: &mut PgArguments, param: &Value) -> Result<(), QueryError> {
    let bound = match param {
        Value::Null => args.add(Option::<String>::None),
        Value::Bool(b) => args.add(*b),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => args.add(i),
            (None, Some(f)) => args.add(f),
            _ => return Err(QueryError::Invalid(format!("parameter {n} is out of range"))),
        },
        Value::String(s) => args.add(s.clone()),
        Value::Array(_) | Value::Object(_) => args.add(sqlx::types::Json(param.clone())),
    };
    bound.map_err(|err| QueryError::Invalid(format!("cannot bind a parameter: {err}")))
}

fn pg_row(row: &PgRow) -> Map<String, Value> {
    let mut object = Map::new();
    for (index, column) in row.columns().iter().enumerate() {
        object.insert(column.name().to_owned(), pg_value(row, index));
    }
    object
}

fn pg_value(row: &PgRow, index: usize) -> Value {
    let Ok(raw) = row.try_get_raw(index) else { return Value::Null };
    if raw.is_null() {
        return Value::Null;
    }
    let type_name = raw.type_info().name().to_owned();
    let decoded = match type_name.as_str() {
        "BOOL" => row.try_get::<bool, _>(index).map(Value::from),
        "INT2" => row.try_get::<i16, _>(index).map(Value::from),
        "INT4" => row.try_get::<i32, _>(index).map(Value::from),
        "INT8" => row.try_get::<i64, _>(index).map(Value::from),
        "FLOAT4" => row.try_get::<f32, _>(index).map(|v| Value::from(f64::from(v))),
        "FLOAT8" => row.try_get::<f64, _>(index).map(Value::from),
        "JSON" | "JSONB" => row.try_get::<Value, _>(index),
        "BYTEA" => row.try_get::<Vec<u8>, _>(index).map(|b| Value::from(format!("\\x{}", hex(&b)))),
        _ => row.try_get::<String, _>(index).map(Value::from),
    };
    decoded.unwrap_or_else(|_| Value::from(format!("<{} value: cast it to text>", type_name.to_ascii_lowercase())))
}

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

/// The longest string or blob a SQLite statement of the test endpoint may build
/// (`SQLITE_LIMIT_LENGTH`). SQLite checks it as the value is made, so `randomblob(1e9)` fails
/// at once instead of allocating a gigabyte that the timeout's interrupt cannot stop.
pub const SQLITE_MAX_VALUE_BYTES: i32 = 1024 * 1024;

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

async fn run_sqlite(
    path: PathBuf,
    request: QueryRequest,
    limits: QueryLimits,
    max_bytes: usize,
) -> Result<Rows, QueryError> {
    use rusqlite::{Connection, OpenFlags, limits::Limit};

    let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(|err| QueryError::Unavailable(format!("cannot open the database read-only: {err}")))?;
    let setup = conn
        .set_limit(Limit::SQLITE_LIMIT_ATTACHED, 0)
        .and_then(|_| conn.set_limit(Limit::SQLITE_LIMIT_LENGTH, SQLITE_MAX_VALUE_BYTES))
        .and_then(|_| conn.execute_batch("PRAGMA query_only = 1; PRAGMA trusted_schema = 0;"))
        .and_then(|_| conn.busy_timeout(limits.timeout));
    setup.map_err(|err| QueryError::Internal(format!("cannot prepare the read-only connection: {err}")))?;
    let interrupt = conn.get_interrupt_handle();
    let worker = tokio::task::spawn_blocking(move || sqlite_query(&conn, &request, limits, max_bytes));
    let timer = tokio::spawn(async move {
        tokio::time::sleep(limits.timeout).await;
        interrupt.interrupt();
    });
    let result = worker.await;
    timer.abort();
    result.map_err(|err| QueryError::Internal(format!("the query worker failed: {err}")))?
}

fn sqlite_query(
    conn: &rusqlite::Connection,
    request: &QueryRequest,
    limits: QueryLimits,
    max_bytes: usize,
) -> Result<Rows, QueryError> {
    let mut statement = conn.prepare(&request.query).map_err(|err| sqlite_error(&err, limits))?;
    if !statement.readonly() {
        return Err(QueryError::Forbidden(
            "write refused: the statement would modify the database; the test endpoint runs read-only statements only"
                .into(),
        ));
    }
    let expected = statement.parameter_count();
    if expected != request.params.len() {
        return Err(QueryError::Invalid(format!(
            "the statement has {expected} parameters but {} were given",
            request.params.len()
        )));
    }
    for (index, param) in request.params.iter().enumerate() {
        let value = match param {
            Value::Null => rusqlite::types::Value::Null,
            Value::Bool(b) => rusqlite::types::Value::Integer(i64::from(*b)),
            Value::Number(n) => match (n.as_i64(), n.as_f64()) {
                (Some(i), _) => rusqlite::types::Value::Integer(i),
                (None, Some(f)) => rusqlite::types::Value::Real(f),
                _ => return Err(QueryError::Invalid(format!("parameter {n} is out of range"))),
            },
            Value::String(s) => rusqlite::types::Value::Text(s.clone()),
            other => rusqlite::types::Value::Text(other.to_string()),
        };
        statement.raw_bind_parameter(index + 1, value).map_err(|err| sqlite_error(&err, limits))?;
    }
    let columns: Vec<String> = statement.column_names().into_iter().map(str::to_owned).collect();
    let max = usize::try_from(limits.max_rows).unwrap_or(usize::MAX);
    let mut rows = Vec::new();
    let mut truncated = false;
    let mut bytes = ResultBytes::new(max_bytes);
    let mut cursor = statement.raw_query();
    while let Some(row) = cursor.next().map_err(|err| sqlite_error(&err, limits))? {
        if rows.len() == max {
            truncated = true;
            break;
        }
        let mut object = Map::new();
        for (index, name) in columns.iter().enumerate() {
            let value_bytes = match row.get_ref(index) {
                Ok(rusqlite::types::ValueRef::Text(b) | rusqlite::types::ValueRef::Blob(b)) => b.len(),
                _ => 8,
            };
            bytes.add(value_bytes)?;
            let value = match row.get_ref(index) {
                Ok(rusqlite::types::ValueRef::Null) | Err(_) => Value::Null,
                Ok(rusqlite::types::ValueRef::Integer(i)) => Value::from(i),
                Ok(rusqlite::types::ValueRef::Real(f)) => Value::from(f),
                Ok(rusqlite::types::ValueRef::Text(t)) => Value::from(String::from_utf8_lossy(t).into_owned()),
                Ok(rusqlite::types::ValueRef::Blob(b)) => Value::from(format!("\\x{}", hex(b))),
            };
            object.insert(name.clone(), value);
        }
        rows.push(object);
    }
    Ok((columns, rows, truncated))
}

fn sqlite_error(err: &rusqlite::Error, limits: QueryLimits) -> QueryError {
    use rusqlite::ErrorCode;
    let text = err.to_string();
    match err {
        rusqlite::Error::MultipleStatement => {
            QueryError::Invalid("one statement only: the text holds more than one statement".into())
        }
        rusqlite::Error::SqliteFailure(failure, _) => match failure.code {
            ErrorCode::OperationInterrupted => {
                QueryError::Timeout(format!("interrupted at the {} ms timeout", limits.timeout.as_millis()))
            }
            ErrorCode::ReadOnly | ErrorCode::AuthorizationForStatementDenied | ErrorCode::PermissionDenied => {
                QueryError::Forbidden(format!("write refused: {text}"))
            }
            ErrorCode::TooBig => QueryError::Invalid(format!(
                "a value would exceed the test endpoint's limit of {SQLITE_MAX_VALUE_BYTES} bytes: {text}"
            )),
            ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => {
                QueryError::Timeout(format!("the database stayed locked past the timeout: {text}"))
            }
            // Extension loading is off on this connection; SQLite says so as SQLITE_ERROR.
            _ if text.contains("not authorized") => QueryError::Forbidden(format!("refused: {text}")),
            _ if text.contains("too many attached databases") => {
                QueryError::Forbidden("ATTACH is refused: the test endpoint reads only the configured database".into())
            }
            _ => QueryError::Invalid(text),
        },
        _ => QueryError::Invalid(text),
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
