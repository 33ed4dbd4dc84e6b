//! Configuration from environment variables, passed in by the host.
//!
//! Core never reads the environment: the host hands `(name, value)` pairs to
//! [`DbConfig::from_vars`] (after resolving `NAME_FILE` secrets and `.env`), and gets back a
//! validated configuration or a [`ConfigError`] naming the variable at fault.

mod error;
mod parse;
mod url;
mod value;

use core::fmt;
use core::time::Duration;
use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use error::ConfigError;
pub use url::{DatabaseType, DatabaseUrl, HostPort, LoadBalanceHosts, TargetSessionAttrs, redact};

use crate::health::ProbeThresholds;
use crate::retry::{BreakerConfig, RetryPolicy};

/// Names of every variable dbguard reads.
pub mod vars {
    /// Profile: `development` or `production`.
    pub const DBGUARD_ENV: &str = "DBGUARD_ENV";
    /// Profile, when `DBGUARD_ENV` is unset.
    pub const APP_ENV: &str = "APP_ENV";
    /// `postgres://…` or `sqlite://…`.
    pub const DATABASE_URL: &str = "DATABASE_URL";
    /// Persistent connections.
    pub const DB_POOL_SIZE: &str = "DB_POOL_SIZE";
    /// Extra connections under load.
    pub const DB_MAX_OVERFLOW: &str = "DB_MAX_OVERFLOW";
    /// Wait for a connection.
    pub const DB_POOL_TIMEOUT: &str = "DB_POOL_TIMEOUT";
    /// Maximum connection lifetime.
    pub const DB_POOL_RECYCLE: &str = "DB_POOL_RECYCLE";
    /// Longest a statement may run (server-side `statement_timeout`, client-side backstop).
    pub const DB_STATEMENT_TIMEOUT: &str = "DB_STATEMENT_TIMEOUT";
    /// How statements reach PostgreSQL: `prepared` (named, cached) or `simple` (no server-side
    /// state, for PgBouncer's transaction pooling).
    pub const DB_STATEMENT_MODE: &str = "DB_STATEMENT_MODE";
    /// Which servers take the work a caller marks read-only: `primary`, `prefer-standby` or
    /// `standby` (libpq's `target_session_attrs` values).
    pub const DB_READ_TARGET: &str = "DB_READ_TARGET";
    /// Replay lag beyond which a standby takes no reads.
    pub const DB_REPLICA_MAX_LAG: &str = "DB_REPLICA_MAX_LAG";
    /// Background probe period.
    pub const DB_HEALTH_CHECK_INTERVAL: &str = "DB_HEALTH_CHECK_INTERVAL";
    /// How long a probed report is served from cache (defaults to the interval).
    pub const DB_HEALTH_CACHE_TTL: &str = "DB_HEALTH_CACHE_TTL";
    /// Timeout of one health probe.
    pub const DB_HEALTH_TIMEOUT: &str = "DB_HEALTH_TIMEOUT";
    /// Round trips slower than this make health degraded.
    pub const DB_HEALTH_DEGRADED_LATENCY: &str = "DB_HEALTH_DEGRADED_LATENCY";
    /// Log SQL statements.
    pub const DB_ECHO: &str = "DB_ECHO";
    /// TLS to the server.
    pub const DB_SSL: &str = "DB_SSL";
    /// Retries after the first try.
    pub const DB_RETRY_MAX_ATTEMPTS: &str = "DB_RETRY_MAX_ATTEMPTS";
    /// First retry delay.
    pub const DB_RETRY_BASE_DELAY: &str = "DB_RETRY_BASE_DELAY";
    /// Cap on any retry delay.
    pub const DB_RETRY_MAX_DELAY: &str = "DB_RETRY_MAX_DELAY";
    /// Jitter mode.
    pub const DB_RETRY_JITTER: &str = "DB_RETRY_JITTER";
    /// Consecutive connectivity failures that open the circuit breaker.
    pub const DB_BREAKER_FAILURES: &str = "DB_BREAKER_FAILURES";
    /// How long the breaker stays open before a probe.
    pub const DB_BREAKER_COOLDOWN: &str = "DB_BREAKER_COOLDOWN";
    /// Least-privilege login for the test endpoint (PostgreSQL).
    pub const DB_TEST_URL: &str = "DB_TEST_URL";
    /// HTTP listen address.
    pub const DBGUARD_BIND: &str = "DBGUARD_BIND";
    /// Directory of plugins watched for hot swap.
    pub const DBGUARD_PLUGIN_DIR: &str = "DBGUARD_PLUGIN_DIR";
    /// Whether `/metrics` needs a token.
    pub const DBGUARD_METRICS_AUTH: &str = "DBGUARD_METRICS_AUTH";
    /// Directory of schema migrations (`migrate`, the migrations health check).
    pub const DBGUARD_MIGRATIONS: &str = "DBGUARD_MIGRATIONS";
    /// Whether `serve` applies pending migrations before it starts serving.
    pub const DBGUARD_MIGRATE_ON_START: &str = "DBGUARD_MIGRATE_ON_START";
    /// Log line format: `json` or `text`.
    pub const DBGUARD_LOG_FORMAT: &str = "DBGUARD_LOG_FORMAT";
    /// HS256 secret for API tokens.
    pub const JWT_SECRET: &str = "JWT_SECRET";
    /// PEM public key (RS256 or EdDSA) for API tokens.
    pub const JWT_PUBLIC_KEY_FILE: &str = "JWT_PUBLIC_KEY_FILE";
    /// Required `iss` claim.
    pub const JWT_ISSUER: &str = "JWT_ISSUER";
    /// Required `aud` claim.
    pub const JWT_AUDIENCE: &str = "JWT_AUDIENCE";

    /// Every variable above, plus the `_FILE` forms the host resolves.
    pub const ALL: &[&str] = &[
        DBGUARD_ENV,
        APP_ENV,
        DATABASE_URL,
        "DATABASE_URL_FILE",
        DB_POOL_SIZE,
        DB_MAX_OVERFLOW,
        DB_POOL_TIMEOUT,
        DB_POOL_RECYCLE,
        DB_STATEMENT_TIMEOUT,
        DB_STATEMENT_MODE,
        DB_READ_TARGET,
        DB_REPLICA_MAX_LAG,
        DB_HEALTH_CHECK_INTERVAL,
        DB_HEALTH_CACHE_TTL,
        DB_HEALTH_TIMEOUT,
        DB_HEALTH_DEGRADED_LATENCY,
        DB_ECHO,
        DB_SSL,
        DB_RETRY_MAX_ATTEMPTS,
        DB_RETRY_BASE_DELAY,
        DB_RETRY_MAX_DELAY,
        DB_RETRY_JITTER,
        DB_BREAKER_FAILURES,
        DB_BREAKER_COOLDOWN,
        DB_TEST_URL,
        "DB_TEST_URL_FILE",
        DBGUARD_BIND,
        DBGUARD_PLUGIN_DIR,
        DBGUARD_METRICS_AUTH,
        DBGUARD_MIGRATIONS,
        DBGUARD_MIGRATE_ON_START,
        DBGUARD_LOG_FORMAT,
        JWT_SECRET,
        "JWT_SECRET_FILE",
        JWT_PUBLIC_KEY_FILE,
        JWT_ISSUER,
        JWT_AUDIENCE,
        "DBGUARD_LOG",
        "DBGUARD_TEST_PG_URL",
        "DBGUARD_REQUIRE_ALL",
    ];
}

/// The defaults profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Local work: SQLite default, SQL echo, a generated API token.
    Development,
    /// Servers: DATABASE_URL, TLS and an API key are required.
    Production,
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Development => "development",
            Self::Production => "production",
        })
    }
}

/// TLS mode toward PostgreSQL, as libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS if the server offers it.
    Prefer,
    /// TLS, certificate not verified.
    Require,
    /// TLS, certificate chain verified.
    VerifyCa,
    /// TLS, chain and host name verified.
    VerifyFull,
}

impl SslMode {
    const ACCEPTED: &'static str = "disable, allow, prefer, require, verify-ca, verify-full";

    fn parse(value: &str) -> Option<Self> {
        match value {
            "disable" => Some(Self::Disable),
            "allow" | "prefer" => Some(Self::Prefer),
            "require" => Some(Self::Require),
            "verify-ca" => Some(Self::VerifyCa),
            "verify-full" => Some(Self::VerifyFull),
            _ => None,
        }
    }

    /// Whether the connection is certainly encrypted.
    pub const fn is_encrypted(self) -> bool {
        matches!(self, Self::Require | Self::VerifyCa | Self::VerifyFull)
    }

    /// libpq's spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

/// Pool sizing and timing, in SQLAlchemy's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
pub struct PoolConfig {
    /// Connections kept open.
    pub size: u32,
    /// Extra connections allowed under load, closed when idle.
    pub max_overflow: u32,
    /// Wait for a free connection before failing.
    #[schemars(with = "u64")]
    #[serde(serialize_with = "crate::serde_util::duration_ms", rename = "timeout_ms")]
    pub timeout: Duration,
    /// Maximum lifetime of a connection.
    #[schemars(with = "u64")]
    #[serde(serialize_with = "crate::serde_util::duration_ms", rename = "recycle_ms")]
    pub recycle: Duration,
    /// Longest one statement may run: PostgreSQL cancels it on the server
    /// (`statement_timeout`), and a host abandons an attempt that has had no answer by
    /// [`PoolConfig::attempt_deadline`] (a partition, where the server's cancel cannot arrive).
    #[schemars(with = "u64")]
    #[serde(serialize_with = "crate::serde_util::duration_ms", rename = "statement_timeout_ms")]
    pub statement_timeout: Duration,
    /// How statements reach PostgreSQL.
    pub statement_mode: StatementMode,
}

/// Which servers take reads (`DB_READ_TARGET`), in libpq's `target_session_attrs` terms.
/// Writes, and transactions that write, always go to the primary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ReadTarget {
    /// Reads go to the primary like everything else (one server in use).
    #[default]
    Primary,
    /// Reads go to healthy standbys within `DB_REPLICA_MAX_LAG`; when none qualifies they go
    /// to the primary, and health says `degraded`.
    PreferStandby,
    /// Reads go only to qualifying standbys; when none qualifies a read fails at once.
    Standby,
}

impl ReadTarget {
    /// The values `DB_READ_TARGET` accepts.
    pub const ACCEPTED: &'static str = "primary, prefer-standby (fall back to the primary) or standby (fail fast)";

    /// Parses the setting (any case).
    pub fn parse(raw: &str) -> Option<Self> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "primary" => Some(Self::Primary),
            "prefer-standby" => Some(Self::PreferStandby),
            "standby" => Some(Self::Standby),
            _ => None,
        }
    }

    /// The setting's spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Primary => "primary",
            Self::PreferStandby => "prefer-standby",
            Self::Standby => "standby",
        }
    }
}

/// Reads on standbys: where they go and how stale a standby may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaConfig {
    /// `DB_READ_TARGET`.
    pub read_target: ReadTarget,
    /// `DB_REPLICA_MAX_LAG`: a standby whose replay is further behind takes no reads.
    pub max_lag: Duration,
    /// The URL's `load_balance_hosts`.
    pub load_balance: LoadBalanceHosts,
}

impl ReplicaConfig {
    /// Whether reads may leave the primary at all.
    pub fn routes_reads(&self) -> bool {
        self.read_target != ReadTarget::Primary
    }
}

/// How a host sends statements to PostgreSQL (`DB_STATEMENT_MODE`).
///
/// A transaction pooler (PgBouncer with `pool_mode = transaction`) may hand each transaction,
/// and each autocommit statement, to a different server connection, so a statement prepared
/// on one is missing on the next (26000) or already there under the same name (42P05).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum StatementMode {
    /// Named statements, prepared once per connection and cached: the fastest on a direct
    /// connection or behind a session pooler.
    #[default]
    Prepared,
    /// The simple query protocol with parameters sent as escaped literals: one round trip per
    /// statement and no server-side state between round trips, so any transaction pooler can
    /// route it (as pgx's simple-protocol mode does).
    Simple,
}

impl StatementMode {
    /// The values `DB_STATEMENT_MODE` accepts.
    pub const ACCEPTED: &'static str =
        "prepared (direct connections, session pooling) or simple (PgBouncer transaction or statement pooling)";

    /// Parses `prepared` or `simple` (any case).
    pub fn parse(raw: &str) -> Option<Self> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "prepared" => Some(Self::Prepared),
            "simple" => Some(Self::Simple),
            _ => None,
        }
    }

    /// The setting's spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Prepared => "prepared",
            Self::Simple => "simple",
        }
    }
}

impl PoolConfig {
    /// `size + max_overflow`: the most connections the pool opens.
    pub fn max_connections(&self) -> u32 {
        self.size.saturating_add(self.max_overflow)
    }

    /// How long a host lets one attempt of a guarded call wait for any answer before giving it
    /// up as a timeout: the longer of the acquire timeout and the statement timeout (so that
    /// each still fires first, with its own error), plus a tenth of that, at most one second,
    /// for the server's own cancel to arrive.
    pub fn attempt_deadline(&self) -> Duration {
        let longest = self.timeout.max(self.statement_timeout);
        longest + (longest / 10).min(Duration::from_secs(1))
    }
}

/// Health monitoring settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthConfig {
    /// Background probe period.
    pub interval: Duration,
    /// How long a report is served from cache.
    pub cache_ttl: Duration,
    /// Probe timeout and slow threshold.
    pub thresholds: ProbeThresholds,
}

/// API-token verification settings. The secret is kept out of `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// HS256 shared secret.
    pub secret: Option<Secret>,
    /// Path of a PEM public key (RS256 or EdDSA).
    pub public_key_file: Option<String>,
    /// Required issuer.
    pub issuer: Option<String>,
    /// Required audience.
    pub audience: Option<String>,
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("secret", &self.secret)
            .field("public_key_file", &self.public_key_file)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

/// A secret string: `Debug` and `Display` print `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; never log it.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// How the host writes log lines (`DBGUARD_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line, for log collectors (the production default).
    Json,
    /// Human-readable lines (the development default).
    Text,
}

impl LogFormat {
    /// The values `DBGUARD_LOG_FORMAT` accepts.
    pub const ACCEPTED: &'static str = "json or text";

    /// Parses `json` or `text` (any case).
    pub fn parse(raw: &str) -> Option<Self> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "json" => Some(Self::Json),
            "text" => Some(Self::Text),
            _ => None,
        }
    }

    /// The default for `profile`.
    pub fn default_for(profile: Profile) -> Self {
        match profile {
            Profile::Production => Self::Json,
            Profile::Development => Self::Text,
        }
    }
}

/// Settings of the HTTP service around the manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    /// Listen address, e.g. `127.0.0.1:8080`.
    pub bind: String,
    /// Plugins directory watched for hot swap.
    pub plugin_dir: Option<String>,
    /// Whether `/metrics` requires a `db:read` token.
    pub metrics_auth: bool,
    /// Directory of schema migrations; [`DEFAULT_MIGRATIONS_DIR`] unless set.
    pub migrations_dir: String,
    /// Whether `serve` runs `migrate up` before serving.
    pub migrate_on_start: bool,
    /// How log lines are written.
    pub log_format: LogFormat,
    /// Token verification.
    pub auth: AuthConfig,
}

/// The whole validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct DbConfig {
    /// The profile whose defaults applied.
    pub profile: Profile,
    /// The database.
    pub url: DatabaseUrl,
    /// Least-privilege login for the test endpoint.
    pub test_url: Option<DatabaseUrl>,
    /// Pool settings.
    pub pool: PoolConfig,
    /// Reads on standbys.
    pub replicas: ReplicaConfig,
    /// Health monitoring.
    pub health: HealthConfig,
    /// Log SQL statements.
    pub echo: bool,
    /// TLS toward PostgreSQL (always `Disable` for SQLite).
    pub ssl_mode: SslMode,
    /// The built-in retry policy.
    pub retry: RetryPolicy,
    /// Circuit breaker tuning.
    pub breaker: BreakerConfig,
    /// HTTP service settings.
    pub service: ServiceConfig,
    /// Variables that look like dbguard's (`DB_*`, `DBGUARD_*`) but are not known: likely typos.
    pub unknown_variables: Vec<String>,
}

/// The migrations directory when `DBGUARD_MIGRATIONS` is not set, relative to the working
/// directory.
pub const DEFAULT_MIGRATIONS_DIR: &str = "migrations";

/// The SQLite database used when development runs without `DATABASE_URL`.
pub const DEVELOPMENT_DEFAULT_URL: &str = "sqlite://data/dbguard.db";

const SECOND: Duration = Duration::from_secs(1);
const MILLISECOND: Duration = Duration::from_millis(1);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

impl DbConfig {
    /// Builds the configuration from `(name, value)` pairs, e.g. `std::env::vars()`.
    /// Later pairs win over earlier ones with the same name.
    pub fn from_vars<I, K, V>(vars: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let env: BTreeMap<String, String> =
            vars.into_iter().map(|(k, v)| (k.as_ref().to_owned(), v.as_ref().to_owned())).collect();
        parse::Parser { env: &env }.parse()
    }

    /// What the API may show about the connection: never the password.
    pub fn connection_info(&self) -> ConnectionInfo {
        ConnectionInfo::from_url(&self.url, &self.pool)
    }

    /// The database engine.
    pub fn database_type(&self) -> DatabaseType {
        self.url.database_type()
    }

    /// Checks what serving the HTTP API needs beyond the database: in production a token key
    /// must be configured (development generates one). Tools that only talk to the database
    /// (`check`, the WASI host) do not call this.
    pub fn require_api_key(&self) -> Result<(), ConfigError> {
        let auth = &self.service.auth;
        if self.profile == Profile::Production && auth.secret.is_none() && auth.public_key_file.is_none() {
            return Err(ConfigError::Missing {
                variable: vars::JWT_SECRET,
                profile: self.profile,
                hint: "set JWT_SECRET (or JWT_SECRET_FILE) or JWT_PUBLIC_KEY_FILE so the API can verify tokens",
            });
        }
        Ok(())
    }
}

/// Connection facts safe to show: never the password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ConnectionInfo {
    /// `postgresql` or `sqlite`.
    pub database_type: DatabaseType,
    /// First host (PostgreSQL), null for SQLite.
    pub host: Option<String>,
    /// Port (PostgreSQL; 5432 when the URL omits it), null for SQLite.
    pub port: Option<u16>,
    /// Database name (PostgreSQL) or file path (SQLite).
    pub database: Option<String>,
    /// Login user, if any.
    pub user: Option<String>,
    /// Persistent connections.
    pub pool_size: u32,
    /// Extra connections under load.
    pub max_overflow: u32,
}

impl ConnectionInfo {
    /// Derives the info from a URL and pool settings.
    pub fn from_url(url: &DatabaseUrl, pool: &PoolConfig) -> Self {
        let first = url.hosts().first();
        let is_pg = url.database_type() == DatabaseType::Postgresql;
        Self {
            database_type: url.database_type(),
            host: first.map(|h| h.host.clone()).or_else(|| is_pg.then(|| "localhost".to_owned())),
            port: is_pg.then(|| first.and_then(|h| h.port).unwrap_or(5432)),
            database: url.database().map(str::to_owned),
            user: url.user().map(str::to_owned),
            pool_size: pool.size,
            max_overflow: pool.max_overflow,
        }
    }
}

#[cfg(test)]
mod tests;
