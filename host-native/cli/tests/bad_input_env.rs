//! The bad-input catalogue for configuration: one table of environments that must not start
//! the service, run through what `dbguard serve` runs before it binds (`NAME_FILE` secrets and
//! parsing, the API-key requirement, the token verifier).
//!
//! Every row names the variable at fault and the typed error it must produce; the error's text
//! must lead with that variable, say what is accepted, and show none of the secrets in the
//! environment. Parsing is pure, so "nothing changed" means: the good base configuration parses
//! to the same value before and after each row, the process environment is untouched, and the
//! secret files the rows point at are still there as they were.
//!
//! Values already in core's table (`core/src/config/tests.rs`) are not repeated here.

use std::path::{Path, PathBuf};

use dbguard::env::{EnvError, config_from_vars};
use dbguard_core::{ConfigError, DbConfig};
use dbguard_http::auth::{AuthError, Authenticator};

/// The database password of the base configuration and of URLs in the rows.
const PASSWORD: &str = "Pw-env-7c2f91d0e4";
/// The JWT secret of the base configuration (at least 32 bytes).
const JWT: &str = "jwt-env-secret-5b8e0f3a9c1d7e2b4a6f";
/// A secret that is too short to be accepted, but a secret all the same.
const SHORT_JWT: &str = "short-jwt-secret-31-bytes-long!";

/// How a row sets one variable.
#[derive(Debug, Clone, Copy)]
enum Set {
    /// `NAME=value`.
    To(&'static str),
    /// `NAME` removed from the base.
    Unset,
    /// `NAME` removed and `NAME_FILE` pointing at a prepared path.
    File(FileKind),
    /// `NAME` pointing at a prepared path (for `JWT_PUBLIC_KEY_FILE`, which is a path itself).
    PathTo(FileKind),
}

/// What a `_FILE` (or key file) path points at.
#[derive(Debug, Clone, Copy)]
enum FileKind {
    /// Nothing there.
    Absent,
    /// A directory.
    Directory,
    /// A file the process may not read (see [`Files::unreadable`]).
    Unreadable,
    /// A path through a regular file (`file/child`): unreadable for anyone, root included.
    UnderAFile,
    /// An empty file.
    Empty,
    /// Bytes that are not UTF-8.
    NotUtf8,
    /// A file holding this text.
    Holding(&'static str),
}

/// The error a row must produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Invalid,
    Missing,
    UnsupportedScheme,
    Conflict,
    UnreadableFile,
    Ambiguous,
    UnreadableKey,
    BadKey,
}

struct Row {
    case: &'static str,
    set: Vec<(&'static str, Set)>,
    /// The variable the error must name.
    variable: &'static str,
    kind: Kind,
    /// Text the error must contain: what is accepted, or why the value cannot be used.
    says: &'static str,
}

fn row(case: &'static str, set: &[(&'static str, Set)], variable: &'static str, kind: Kind, says: &'static str) -> Row {
    Row { case, set: set.to_vec(), variable, kind, says }
}

/// A valid production-like configuration that every row starts from.
fn base() -> Vec<(String, String)> {
    [
        ("DATABASE_URL", format!("postgres://app:{PASSWORD}@db.internal:5432/orders")),
        ("JWT_SECRET", JWT.to_owned()),
        ("DB_POOL_SIZE", "7".to_owned()),
        ("DB_RETRY_JITTER", "full".to_owned()),
        ("DBGUARD_BIND", "127.0.0.1:9090".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Why the environment cannot serve.
#[derive(Debug)]
enum Failure {
    Env(EnvError),
    Auth(AuthError),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Env(err) => err.fmt(f),
            Self::Auth(err) => err.fmt(f),
        }
    }
}

/// What `dbguard serve` checks before it binds: the configuration, the API key, the verifier.
fn load(vars: Vec<(String, String)>) -> Result<(DbConfig, Authenticator), Failure> {
    let config = config_from_vars(vars).map_err(Failure::Env)?;
    config.require_api_key().map_err(|err| Failure::Env(EnvError::Config(err)))?;
    let auth = Authenticator::from_config(&config.service.auth, config.profile).map_err(Failure::Auth)?;
    Ok((config, auth))
}

/// The kind and variable of a failure, read from the typed error (not from its text).
fn classify(failure: &Failure) -> (Kind, &str) {
    match failure {
        Failure::Env(EnvError::Config(err)) => {
            let kind = match err {
                ConfigError::Invalid { .. } => Kind::Invalid,
                ConfigError::Missing { .. } => Kind::Missing,
                ConfigError::UnsupportedScheme { .. } => Kind::UnsupportedScheme,
                ConfigError::Conflict { .. } => Kind::Conflict,
                other => panic!("a configuration error this table does not know: {other:?}"),
            };
            (kind, err.variable())
        }
        Failure::Env(EnvError::UnreadableFile { variable, .. }) => (Kind::UnreadableFile, variable.as_str()),
        Failure::Env(EnvError::Ambiguous { variable }) => (Kind::Ambiguous, variable),
        Failure::Auth(AuthError::UnreadableKey { .. }) => (Kind::UnreadableKey, "JWT_PUBLIC_KEY_FILE"),
        Failure::Auth(AuthError::BadKey { .. }) => (Kind::BadKey, "JWT_PUBLIC_KEY_FILE"),
        other => panic!("an error this table does not know: {other:?}"),
    }
}

/// The files rows point at, in one temporary directory.
struct Files {
    dir: tempfile::TempDir,
    /// Whether `chmod 000` stops this process from reading (it does not for root).
    permissions_apply: bool,
}

impl Files {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let probe = dir.path().join("probe");
        std::fs::write(&probe, "x").expect("write probe");
        set_mode(&probe, 0o000);
        let permissions_apply = std::fs::read(&probe).is_err();
        std::fs::remove_file(&probe).expect("remove probe");
        Self { dir, permissions_apply }
    }

    /// Prepares what `kind` describes under a fresh name and returns its path.
    fn prepare(&self, index: usize, kind: FileKind) -> PathBuf {
        let path = self.dir.path().join(format!("row-{index}"));
        match kind {
            FileKind::Absent => {}
            FileKind::Directory => std::fs::create_dir(&path).expect("dir"),
            FileKind::Unreadable => {
                std::fs::write(&path, format!("postgres://app:{PASSWORD}@db/orders\n")).expect("write");
                set_mode(&path, 0o000);
                if !self.permissions_apply {
                    // Running as root (as CI does): mode 000 does not stop reads, so use what
                    // stops everyone — a path that continues through a regular file (ENOTDIR).
                    return path.join("secret");
                }
            }
            FileKind::UnderAFile => {
                std::fs::write(&path, "a regular file").expect("write");
                return path.join("secret");
            }
            FileKind::Empty => std::fs::write(&path, "").expect("write"),
            FileKind::NotUtf8 => std::fs::write(&path, b"postgres://app:\xff\xfe@db/orders\n").expect("write"),
            FileKind::Holding(text) => std::fs::write(&path, text).expect("write"),
        }
        path
    }

    /// Every regular file under the directory with its contents, to show rows change none.
    fn snapshot(&self) -> Vec<(PathBuf, Option<Vec<u8>>)> {
        let mut entries: Vec<(PathBuf, Option<Vec<u8>>)> = std::fs::read_dir(self.dir.path())
            .expect("list")
            .flatten()
            .map(|entry| {
                let path = entry.path();
                let contents = if path.is_file() { std::fs::read(&path).ok() } else { None };
                (path, contents)
            })
            .collect();
        entries.sort();
        entries
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn rows() -> Vec<Row> {
    use FileKind::*;
    use Kind::*;
    use Set::{File, PathTo, To, Unset};
    const URL: &str = "a URL like postgres://user:password@host:5432/db";
    const SCHEMES: &str = "accepted schemes are postgres, postgresql and sqlite";
    const PROFILE: &str = "expected development or production";
    const BOOL: &str = "expected one of true, false, 1, 0, yes, no";
    vec![
        // The profile.
        row("profile abbreviated", &[("DBGUARD_ENV", To("prod"))], "DBGUARD_ENV", Invalid, PROFILE),
        row("profile blank", &[("DBGUARD_ENV", To("   "))], "DBGUARD_ENV", Invalid, PROFILE),
        row("APP_ENV empty", &[("APP_ENV", To(""))], "APP_ENV", Invalid, PROFILE),
        row("APP_ENV abbreviated", &[("APP_ENV", To("dev"))], "APP_ENV", Invalid, PROFILE),
        row(
            "production without a database URL",
            &[("DBGUARD_ENV", To("production")), ("DATABASE_URL", Unset)],
            "DATABASE_URL",
            Missing,
            "set DATABASE_URL (or DATABASE_URL_FILE)",
        ),
        row(
            "production with sslmode=prefer",
            &[
                ("DBGUARD_ENV", To("production")),
                ("DATABASE_URL", To("postgres://app:Pw-env-7c2f91d0e4@db/orders?sslmode=prefer")),
            ],
            "DB_SSL",
            Conflict,
            "the production profile requires TLS",
        ),
        row(
            "production without an API key",
            &[("DBGUARD_ENV", To("production")), ("DB_SSL", To("false")), ("JWT_SECRET", Unset)],
            "JWT_SECRET",
            Missing,
            "set JWT_SECRET (or JWT_SECRET_FILE) or JWT_PUBLIC_KEY_FILE",
        ),
        // DATABASE_URL.
        row("URL blank", &[("DATABASE_URL", To("   "))], "DATABASE_URL", Invalid, URL),
        row("URL scheme http", &[("DATABASE_URL", To("http://db/orders"))], "DATABASE_URL", UnsupportedScheme, SCHEMES),
        row(
            "URL scheme mysql with a password",
            &[("DATABASE_URL", To("mysql://app:Pw-env-7c2f91d0e4@db:3306/app"))],
            "DATABASE_URL",
            UnsupportedScheme,
            SCHEMES,
        ),
        // Malformed URLs must not show their password in the error either.
        row(
            "URL without '//' after the scheme",
            &[("DATABASE_URL", To("postgres:app:Pw-env-7c2f91d0e4@db/orders"))],
            "DATABASE_URL",
            Invalid,
            URL,
        ),
        row(
            "URL with one '/' after the scheme",
            &[("DATABASE_URL", To("postgres:/app:Pw-env-7c2f91d0e4@db/orders"))],
            "DATABASE_URL",
            Invalid,
            URL,
        ),
        row(
            "URL without ':' after the scheme",
            &[("DATABASE_URL", To("postgres//app:Pw-env-7c2f91d0e4@db/orders"))],
            "DATABASE_URL",
            UnsupportedScheme,
            SCHEMES,
        ),
        row(
            "URL scheme mysql without '//'",
            &[("DATABASE_URL", To("mysql:app:Pw-env-7c2f91d0e4@db/app"))],
            "DATABASE_URL",
            UnsupportedScheme,
            SCHEMES,
        ),
        row(
            "URL password with an unencoded '/'",
            &[("DATABASE_URL", To("postgres://app:Pw-env-7c2f91d0e4/x@db/orders"))],
            "DATABASE_URL",
            Invalid,
            URL,
        ),
        row(
            "URL password with an unencoded '?'",
            &[("DATABASE_URL", To("postgres://app:x?Pw-env-7c2f91d0e4@db/orders"))],
            "DATABASE_URL",
            Invalid,
            URL,
        ),
        row("URL without a host", &[("DATABASE_URL", To("postgres:///orders"))], "DATABASE_URL", Invalid, "no host"),
        row(
            "URL with a parameter the driver ignores",
            &[("DATABASE_URL", To("postgres://app:Pw-env-7c2f91d0e4@db/orders?connect_timeout=5"))],
            "DATABASE_URL",
            Invalid,
            "unknown query parameter `connect_timeout`",
        ),
        row(
            "URL with sslmode twice",
            &[("DATABASE_URL", To("postgres://app:Pw-env-7c2f91d0e4@db/orders?sslmode=disable&sslmode=require"))],
            "DATABASE_URL",
            Invalid,
            "`sslmode` is given more than once",
        ),
        row(
            "SQLite URL with an unknown parameter",
            &[("DATABASE_URL", To("sqlite://data/app.db?journal=wal"))],
            "DATABASE_URL",
            Invalid,
            "unknown query parameter `journal`",
        ),
        row(
            "test URL with a misspelt sslmode",
            &[("DB_TEST_URL", To("postgres://reader:Pw-env-7c2f91d0e4@db/orders?sslmode=requir"))],
            "DB_TEST_URL",
            Invalid,
            "sslmode one of",
        ),
        row(
            "JWT secret of 32 spaces",
            &[("JWT_SECRET", To("                                "))],
            "JWT_SECRET",
            Invalid,
            "blank or one repeated character",
        ),
        row(
            "JWT secret of one repeated character",
            &[("JWT_SECRET", To("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"))],
            "JWT_SECRET",
            Invalid,
            "blank or one repeated character",
        ),
        row(
            "test URL without '//' after the scheme",
            &[("DB_TEST_URL", To("postgres:app:Pw-env-7c2f91d0e4@db/orders"))],
            "DB_TEST_URL",
            Invalid,
            URL,
        ),
        row(
            "URL scheme file",
            &[("DATABASE_URL", To("file:///var/lib/app.db"))],
            "DATABASE_URL",
            UnsupportedScheme,
            SCHEMES,
        ),
        row(
            "URL JDBC form",
            &[("DATABASE_URL", To("jdbc:postgresql://db/orders"))],
            "DATABASE_URL",
            UnsupportedScheme,
            SCHEMES,
        ),
        row(
            "URL scheme sqlite3",
            &[("DATABASE_URL", To("sqlite3://app.db"))],
            "DATABASE_URL",
            UnsupportedScheme,
            SCHEMES,
        ),
        row(
            "URL port overflow",
            &[("DATABASE_URL", To("postgres://app:Pw-env-7c2f91d0e4@db:65536/orders"))],
            "DATABASE_URL",
            Invalid,
            URL,
        ),
        row(
            "URL negative port",
            &[("DATABASE_URL", To("postgres://app:Pw-env-7c2f91d0e4@db:-1/orders"))],
            "DATABASE_URL",
            Invalid,
            URL,
        ),
        row(
            "URL empty sslmode",
            &[("DATABASE_URL", To("postgres://app:Pw-env-7c2f91d0e4@db/orders?sslmode="))],
            "DATABASE_URL",
            Invalid,
            "sslmode one of disable, allow, prefer, require, verify-ca, verify-full",
        ),
        row(
            "URL sslmode in capitals",
            &[("DATABASE_URL", To("postgres://app:Pw-env-7c2f91d0e4@db/orders?sslmode=REQUIRE"))],
            "DATABASE_URL",
            Invalid,
            "sslmode one of disable, allow, prefer, require, verify-ca, verify-full",
        ),
        row(
            "URL user not UTF-8 once decoded",
            &[("DATABASE_URL", To("postgres://%FF:Pw-env-7c2f91d0e4@db/orders"))],
            "DATABASE_URL",
            Invalid,
            "percent-encoding does not decode to UTF-8",
        ),
        row(
            "URL asking for a standby",
            &[("DATABASE_URL", To("postgres://app:Pw-env-7c2f91d0e4@db1,db2/orders?target_session_attrs=standby"))],
            "DATABASE_URL",
            Invalid,
            "target_session_attrs must be any, read-write or primary",
        ),
        row(
            "sqlite URL without a path",
            &[("DATABASE_URL", To("sqlite:"))],
            "DATABASE_URL",
            Invalid,
            "no database file",
        ),
        row(
            "sqlite URL with only parameters",
            &[("DATABASE_URL", To("sqlite://?mode=ro"))],
            "DATABASE_URL",
            Invalid,
            "no database file",
        ),
        // Pool.
        row(
            "pool size over the limit",
            &[("DB_POOL_SIZE", To("10001"))],
            "DB_POOL_SIZE",
            Invalid,
            "a whole number from 1 to 10000",
        ),
        row(
            "pool size overflows u64",
            &[("DB_POOL_SIZE", To("99999999999999999999"))],
            "DB_POOL_SIZE",
            Invalid,
            "a whole number from 1 to 10000",
        ),
        row(
            "pool size blank",
            &[("DB_POOL_SIZE", To("   "))],
            "DB_POOL_SIZE",
            Invalid,
            "a whole number from 1 to 10000",
        ),
        row(
            "pool size with words",
            &[("DB_POOL_SIZE", To("5 connections"))],
            "DB_POOL_SIZE",
            Invalid,
            "a whole number",
        ),
        row("pool size in hex", &[("DB_POOL_SIZE", To("0x10"))], "DB_POOL_SIZE", Invalid, "a whole number"),
        row("pool size in exponent form", &[("DB_POOL_SIZE", To("1e3"))], "DB_POOL_SIZE", Invalid, "a whole number"),
        row(
            "overflow empty",
            &[("DB_MAX_OVERFLOW", To(""))],
            "DB_MAX_OVERFLOW",
            Invalid,
            "a whole number from 0 to 10000",
        ),
        row(
            "overflow overflows u64",
            &[("DB_MAX_OVERFLOW", To("99999999999999999999"))],
            "DB_MAX_OVERFLOW",
            Invalid,
            "a whole number from 0 to 10000",
        ),
        row("overflow negative zero", &[("DB_MAX_OVERFLOW", To("-0"))], "DB_MAX_OVERFLOW", Invalid, "a whole number"),
        row(
            "pool timeout overflows u64",
            &[("DB_POOL_TIMEOUT", To("99999999999999999999"))],
            "DB_POOL_TIMEOUT",
            Invalid,
            "a duration between 1ms and 60m",
        ),
        row("pool timeout unit typo", &[("DB_POOL_TIMEOUT", To("10mss"))], "DB_POOL_TIMEOUT", Invalid, "a duration"),
        row("pool timeout spelled out", &[("DB_POOL_TIMEOUT", To("5 sec"))], "DB_POOL_TIMEOUT", Invalid, "a duration"),
        row(
            "pool timeout in hours",
            &[("DB_POOL_TIMEOUT", To("1h"))],
            "DB_POOL_TIMEOUT",
            Invalid,
            "(\"500ms\", \"2s\", \"1m\")",
        ),
        row(
            "pool timeout zero ms",
            &[("DB_POOL_TIMEOUT", To("0ms"))],
            "DB_POOL_TIMEOUT",
            Invalid,
            "between 1ms and 60m",
        ),
        row(
            "pool timeout over the cap",
            &[("DB_POOL_TIMEOUT", To("61m"))],
            "DB_POOL_TIMEOUT",
            Invalid,
            "between 1ms and 60m",
        ),
        row(
            "recycle empty",
            &[("DB_POOL_RECYCLE", To(""))],
            "DB_POOL_RECYCLE",
            Invalid,
            "a duration between 1s and 10080m",
        ),
        row("recycle negative", &[("DB_POOL_RECYCLE", To("-1"))], "DB_POOL_RECYCLE", Invalid, "a duration between 1s"),
        row("recycle under a second", &[("DB_POOL_RECYCLE", To("999ms"))], "DB_POOL_RECYCLE", Invalid, "between 1s"),
        row(
            "recycle minutes overflow",
            &[("DB_POOL_RECYCLE", To("18446744073709551615m"))],
            "DB_POOL_RECYCLE",
            Invalid,
            "between 1s and 10080m",
        ),
        row("recycle in days", &[("DB_POOL_RECYCLE", To("2d"))], "DB_POOL_RECYCLE", Invalid, "a duration"),
        row(
            "statement timeout empty",
            &[("DB_STATEMENT_TIMEOUT", To(""))],
            "DB_STATEMENT_TIMEOUT",
            Invalid,
            "a duration",
        ),
        row(
            "statement timeout negative",
            &[("DB_STATEMENT_TIMEOUT", To("-30s"))],
            "DB_STATEMENT_TIMEOUT",
            Invalid,
            "a duration",
        ),
        row(
            "statement timeout over a day",
            &[("DB_STATEMENT_TIMEOUT", To("1441m"))],
            "DB_STATEMENT_TIMEOUT",
            Invalid,
            "a duration between 1ms and 1440m",
        ),
        row(
            "statement timeout overflows u64",
            &[("DB_STATEMENT_TIMEOUT", To("99999999999999999999ms"))],
            "DB_STATEMENT_TIMEOUT",
            Invalid,
            "a duration between 1ms and 1440m",
        ),
        row(
            "statement mode of another pooler's vocabulary",
            &[("DB_STATEMENT_MODE", To("transaction"))],
            "DB_STATEMENT_MODE",
            Invalid,
            "prepared (direct connections, session pooling) or simple",
        ),
        row("statement mode empty", &[("DB_STATEMENT_MODE", To(""))], "DB_STATEMENT_MODE", Invalid, "one of prepared"),
        // Reads on standbys.
        row(
            "read target in another driver's vocabulary",
            &[("DB_READ_TARGET", To("replica"))],
            "DB_READ_TARGET",
            Invalid,
            "primary, prefer-standby (fall back to the primary) or standby (fail fast)",
        ),
        row(
            "standby reads with one host",
            &[
                ("DATABASE_URL", To("postgres://app:Pw-env-7c2f91d0e4@db/orders")),
                ("DB_READ_TARGET", To("prefer-standby")),
            ],
            "DB_READ_TARGET",
            Conflict,
            "list the primary and its standbys",
        ),
        row(
            "standby reads on SQLite",
            &[("DATABASE_URL", To("sqlite://data/app.db")), ("DB_READ_TARGET", To("standby"))],
            "DB_READ_TARGET",
            Conflict,
            "names a SQLite file",
        ),
        row(
            "replica lag of zero",
            &[("DB_REPLICA_MAX_LAG", To("0"))],
            "DB_REPLICA_MAX_LAG",
            Invalid,
            "between 1ms and 1440m",
        ),
        row(
            "load balancing in pgx's vocabulary",
            &[("DATABASE_URL", To("postgres://app:Pw-env-7c2f91d0e4@db1,db2/orders?load_balance_hosts=round-robin"))],
            "DATABASE_URL",
            Invalid,
            "load_balance_hosts must be disable or random",
        ),
        // Health.
        row(
            "interval under 100ms",
            &[("DB_HEALTH_CHECK_INTERVAL", To("99ms"))],
            "DB_HEALTH_CHECK_INTERVAL",
            Invalid,
            "a duration between 100ms and 1440m",
        ),
        row(
            "interval empty",
            &[("DB_HEALTH_CHECK_INTERVAL", To(""))],
            "DB_HEALTH_CHECK_INTERVAL",
            Invalid,
            "a duration",
        ),
        row(
            "interval negative",
            &[("DB_HEALTH_CHECK_INTERVAL", To("-300"))],
            "DB_HEALTH_CHECK_INTERVAL",
            Invalid,
            "a duration",
        ),
        row(
            "interval over a day",
            &[("DB_HEALTH_CHECK_INTERVAL", To("1441m"))],
            "DB_HEALTH_CHECK_INTERVAL",
            Invalid,
            "and 1440m",
        ),
        row(
            "cache TTL garbage",
            &[("DB_HEALTH_CACHE_TTL", To("garbage"))],
            "DB_HEALTH_CACHE_TTL",
            Invalid,
            "a duration",
        ),
        row(
            "cache TTL overflows u64",
            &[("DB_HEALTH_CACHE_TTL", To("99999999999999999999ms"))],
            "DB_HEALTH_CACHE_TTL",
            Invalid,
            "a duration between 1ms and 1440m",
        ),
        row(
            "probe timeout zero",
            &[("DB_HEALTH_TIMEOUT", To("0"))],
            "DB_HEALTH_TIMEOUT",
            Invalid,
            "between 1ms and 10m",
        ),
        row(
            "probe timeout over the cap",
            &[("DB_HEALTH_TIMEOUT", To("11m"))],
            "DB_HEALTH_TIMEOUT",
            Invalid,
            "between 1ms and 10m",
        ),
        row(
            "probe timeout unit in capitals",
            &[("DB_HEALTH_TIMEOUT", To("5S"))],
            "DB_HEALTH_TIMEOUT",
            Invalid,
            "a duration",
        ),
        row(
            "degraded latency empty",
            &[("DB_HEALTH_DEGRADED_LATENCY", To(""))],
            "DB_HEALTH_DEGRADED_LATENCY",
            Invalid,
            "a duration",
        ),
        row(
            "degraded latency negative",
            &[("DB_HEALTH_DEGRADED_LATENCY", To("-250ms"))],
            "DB_HEALTH_DEGRADED_LATENCY",
            Invalid,
            "a duration",
        ),
        row(
            "degraded latency with a space",
            &[("DB_HEALTH_DEGRADED_LATENCY", To("250 ms"))],
            "DB_HEALTH_DEGRADED_LATENCY",
            Invalid,
            "a duration",
        ),
        // Echo and TLS.
        row("echo as 2", &[("DB_ECHO", To("2"))], "DB_ECHO", Invalid, BOOL),
        row("echo as y", &[("DB_ECHO", To("y"))], "DB_ECHO", Invalid, BOOL),
        row("ssl empty", &[("DB_SSL", To(""))], "DB_SSL", Invalid, BOOL),
        row("ssl as an sslmode", &[("DB_SSL", To("require"))], "DB_SSL", Invalid, BOOL),
        row(
            "ssl true against sslmode=allow",
            &[("DB_SSL", To("true")), ("DATABASE_URL", To("postgres://app:Pw-env-7c2f91d0e4@db/orders?sslmode=allow"))],
            "DB_SSL",
            Conflict,
            "make them agree",
        ),
        // Retry and breaker.
        row(
            "retries empty",
            &[("DB_RETRY_MAX_ATTEMPTS", To(""))],
            "DB_RETRY_MAX_ATTEMPTS",
            Invalid,
            "a whole number from 0 to 100",
        ),
        row(
            "retries overflow u64",
            &[("DB_RETRY_MAX_ATTEMPTS", To("99999999999999999999"))],
            "DB_RETRY_MAX_ATTEMPTS",
            Invalid,
            "a whole number from 0 to 100",
        ),
        row(
            "retries as a decimal",
            &[("DB_RETRY_MAX_ATTEMPTS", To("3.0"))],
            "DB_RETRY_MAX_ATTEMPTS",
            Invalid,
            "a whole number",
        ),
        row(
            "base delay empty",
            &[("DB_RETRY_BASE_DELAY", To(""))],
            "DB_RETRY_BASE_DELAY",
            Invalid,
            "between 1ms and 60m",
        ),
        row("base delay negative", &[("DB_RETRY_BASE_DELAY", To("-1s"))], "DB_RETRY_BASE_DELAY", Invalid, "a duration"),
        row(
            "base delay unit typo",
            &[("DB_RETRY_BASE_DELAY", To("1sec"))],
            "DB_RETRY_BASE_DELAY",
            Invalid,
            "a duration",
        ),
        row(
            "max delay overflows u64",
            &[("DB_RETRY_MAX_DELAY", To("99999999999999999999"))],
            "DB_RETRY_MAX_DELAY",
            Invalid,
            "between 1ms and 60m",
        ),
        row(
            "max delay with a space",
            &[("DB_RETRY_MAX_DELAY", To("30 s"))],
            "DB_RETRY_MAX_DELAY",
            Invalid,
            "a duration",
        ),
        row(
            "max delay below the default base",
            &[("DB_RETRY_MAX_DELAY", To("500ms"))],
            "DB_RETRY_MAX_DELAY",
            Conflict,
            "raise DB_RETRY_MAX_DELAY or lower DB_RETRY_BASE_DELAY",
        ),
        row(
            "jitter typo",
            &[("DB_RETRY_JITTER", To("fulll"))],
            "DB_RETRY_JITTER",
            Invalid,
            "one of none, full, equal, decorrelated",
        ),
        row(
            "jitter as 0",
            &[("DB_RETRY_JITTER", To("0"))],
            "DB_RETRY_JITTER",
            Invalid,
            "one of none, full, equal, decorrelated",
        ),
        row(
            "breaker failures empty",
            &[("DB_BREAKER_FAILURES", To(""))],
            "DB_BREAKER_FAILURES",
            Invalid,
            "from 1 to 1000",
        ),
        row(
            "breaker failures negative",
            &[("DB_BREAKER_FAILURES", To("-5"))],
            "DB_BREAKER_FAILURES",
            Invalid,
            "from 1 to 1000",
        ),
        row(
            "breaker failures over",
            &[("DB_BREAKER_FAILURES", To("1001"))],
            "DB_BREAKER_FAILURES",
            Invalid,
            "from 1 to 1000",
        ),
        row(
            "cool-down zero",
            &[("DB_BREAKER_COOLDOWN", To("0"))],
            "DB_BREAKER_COOLDOWN",
            Invalid,
            "between 1ms and 60m",
        ),
        row("cool-down empty", &[("DB_BREAKER_COOLDOWN", To(""))], "DB_BREAKER_COOLDOWN", Invalid, "a duration"),
        row("cool-down in hours", &[("DB_BREAKER_COOLDOWN", To("2h"))], "DB_BREAKER_COOLDOWN", Invalid, "a duration"),
        row("log format yaml", &[("DBGUARD_LOG_FORMAT", To("yaml"))], "DBGUARD_LOG_FORMAT", Invalid, "json or text"),
        row("log format empty", &[("DBGUARD_LOG_FORMAT", To(""))], "DBGUARD_LOG_FORMAT", Invalid, "json or text"),
        // The test endpoint's login.
        row("test URL empty", &[("DB_TEST_URL", To(""))], "DB_TEST_URL", Invalid, URL),
        row(
            "test URL scheme http with a password",
            &[("DB_TEST_URL", To("http://reader:Pw-env-7c2f91d0e4@db/orders"))],
            "DB_TEST_URL",
            UnsupportedScheme,
            SCHEMES,
        ),
        row(
            "test URL port overflow with a password",
            &[("DB_TEST_URL", To("postgres://reader:Pw-env-7c2f91d0e4@db:99999/orders"))],
            "DB_TEST_URL",
            Invalid,
            URL,
        ),
        row(
            "test URL PostgreSQL beside SQLite",
            &[("DATABASE_URL", To("sqlite://data/app.db")), ("DB_TEST_URL", To("postgresql://reader@db/orders"))],
            "DB_TEST_URL",
            Conflict,
            "both must name the same kind of database",
        ),
        // The service.
        row("bind without a host", &[("DBGUARD_BIND", To(":8080"))], "DBGUARD_BIND", Invalid, "host:port"),
        row("bind port overflow", &[("DBGUARD_BIND", To("127.0.0.1:65536"))], "DBGUARD_BIND", Invalid, "host:port"),
        row("bind negative port", &[("DBGUARD_BIND", To("127.0.0.1:-1"))], "DBGUARD_BIND", Invalid, "host:port"),
        row("bind without a port", &[("DBGUARD_BIND", To("127.0.0.1"))], "DBGUARD_BIND", Invalid, "host:port"),
        row("metrics auth empty", &[("DBGUARD_METRICS_AUTH", To(""))], "DBGUARD_METRICS_AUTH", Invalid, BOOL),
        row(
            "metrics auth as a word",
            &[("DBGUARD_METRICS_AUTH", To("enabled"))],
            "DBGUARD_METRICS_AUTH",
            Invalid,
            BOOL,
        ),
        row(
            "plugin dir blank",
            &[("DBGUARD_PLUGIN_DIR", To("   "))],
            "DBGUARD_PLUGIN_DIR",
            Invalid,
            "a directory path",
        ),
        row(
            "migrations dir blank",
            &[("DBGUARD_MIGRATIONS", To(" "))],
            "DBGUARD_MIGRATIONS",
            Invalid,
            "a directory path",
        ),
        row(
            "migrate on start as a word",
            &[("DBGUARD_MIGRATE_ON_START", To("sometimes"))],
            "DBGUARD_MIGRATE_ON_START",
            Invalid,
            BOOL,
        ),
        // API keys.
        row("JWT secret empty", &[("JWT_SECRET", To(""))], "JWT_SECRET", Invalid, "at least 32 bytes (got 0)"),
        row(
            "JWT secret one byte short",
            &[("JWT_SECRET", To(SHORT_JWT))],
            "JWT_SECRET",
            Invalid,
            "at least 32 bytes (got 31)",
        ),
        row("issuer empty", &[("JWT_ISSUER", To(""))], "JWT_ISSUER", Invalid, "the expected iss claim"),
        row("audience blank", &[("JWT_AUDIENCE", To("  "))], "JWT_AUDIENCE", Invalid, "the expected aud claim"),
        row(
            "public key path blank",
            &[("JWT_SECRET", Unset), ("JWT_PUBLIC_KEY_FILE", To("  "))],
            "JWT_PUBLIC_KEY_FILE",
            Invalid,
            "a path to a PEM public key",
        ),
        row(
            "public key missing",
            &[("JWT_SECRET", Unset), ("JWT_PUBLIC_KEY_FILE", PathTo(Absent))],
            "JWT_PUBLIC_KEY_FILE",
            UnreadableKey,
            "cannot read",
        ),
        row(
            "public key is a directory",
            &[("JWT_SECRET", Unset), ("JWT_PUBLIC_KEY_FILE", PathTo(Directory))],
            "JWT_PUBLIC_KEY_FILE",
            UnreadableKey,
            "cannot read",
        ),
        row(
            "public key is not PEM",
            &[("JWT_SECRET", Unset), ("JWT_PUBLIC_KEY_FILE", PathTo(Holding("not a key\n")))],
            "JWT_PUBLIC_KEY_FILE",
            BadKey,
            "is not a PEM Ed25519 or RSA public key",
        ),
        row(
            "public key file empty",
            &[("JWT_SECRET", Unset), ("JWT_PUBLIC_KEY_FILE", PathTo(Empty))],
            "JWT_PUBLIC_KEY_FILE",
            BadKey,
            "is not a PEM Ed25519 or RSA public key",
        ),
        // Secrets from files.
        row("URL file missing", &[("DATABASE_URL", File(Absent))], "DATABASE_URL_FILE", UnreadableFile, "cannot read"),
        row(
            "URL file is a directory",
            &[("DATABASE_URL", File(Directory))],
            "DATABASE_URL_FILE",
            UnreadableFile,
            "cannot read",
        ),
        row(
            "URL file unreadable",
            &[("DATABASE_URL", File(Unreadable))],
            "DATABASE_URL_FILE",
            UnreadableFile,
            "cannot read",
        ),
        row(
            "URL file under a file",
            &[("DATABASE_URL", File(UnderAFile))],
            "DATABASE_URL_FILE",
            UnreadableFile,
            "cannot read",
        ),
        row(
            "URL file not UTF-8",
            &[("DATABASE_URL", File(NotUtf8))],
            "DATABASE_URL_FILE",
            UnreadableFile,
            "cannot read",
        ),
        row("URL file empty", &[("DATABASE_URL", File(Empty))], "DATABASE_URL", Invalid, URL),
        row(
            "URL file with an unknown scheme",
            &[("DATABASE_URL", File(Holding("mysql://app:Pw-env-7c2f91d0e4@db/app\n")))],
            "DATABASE_URL",
            UnsupportedScheme,
            SCHEMES,
        ),
        row(
            "URL file path empty",
            &[("DATABASE_URL", Unset), ("DATABASE_URL_FILE", To(""))],
            "DATABASE_URL_FILE",
            UnreadableFile,
            "cannot read",
        ),
        row("JWT file missing", &[("JWT_SECRET", File(Absent))], "JWT_SECRET_FILE", UnreadableFile, "cannot read"),
        row(
            "JWT file is a directory",
            &[("JWT_SECRET", File(Directory))],
            "JWT_SECRET_FILE",
            UnreadableFile,
            "cannot read",
        ),
        row(
            "JWT file unreadable",
            &[("JWT_SECRET", File(Unreadable))],
            "JWT_SECRET_FILE",
            UnreadableFile,
            "cannot read",
        ),
        row("JWT file empty", &[("JWT_SECRET", File(Empty))], "JWT_SECRET", Invalid, "at least 32 bytes (got 0)"),
        row(
            "JWT file with a short secret",
            &[("JWT_SECRET", File(Holding("short-jwt-secret-31-bytes-long!\n")))],
            "JWT_SECRET",
            Invalid,
            "at least 32 bytes (got 31)",
        ),
        row(
            "JWT secret given twice",
            &[("JWT_SECRET_FILE", To("/run/secrets/jwt"))],
            "JWT_SECRET",
            Ambiguous,
            "set only one",
        ),
        row(
            "test URL file missing",
            &[("DB_TEST_URL", File(Absent))],
            "DB_TEST_URL_FILE",
            UnreadableFile,
            "cannot read",
        ),
        row(
            "test URL file is a directory",
            &[("DB_TEST_URL", File(Directory))],
            "DB_TEST_URL_FILE",
            UnreadableFile,
            "cannot read",
        ),
        row("test URL file empty", &[("DB_TEST_URL", File(Empty))], "DB_TEST_URL", Invalid, URL),
        row(
            "test URL given twice",
            &[("DB_TEST_URL", To("postgres://reader@db/orders")), ("DB_TEST_URL_FILE", To("/run/secrets/test-url"))],
            "DB_TEST_URL",
            Ambiguous,
            "set only one",
        ),
    ]
}

/// The environment of a row: the base with the row's settings applied.
fn environment(row: &Row, index: usize, files: &Files) -> Vec<(String, String)> {
    let mut vars = base();
    for (name, set) in &row.set {
        let file_name = format!("{name}_FILE");
        vars.retain(|(key, _)| key != name);
        match set {
            Set::To(value) => vars.push(((*name).to_owned(), (*value).to_owned())),
            Set::Unset => {}
            Set::File(kind) => {
                vars.retain(|(key, _)| *key != file_name);
                let path = files.prepare(index, *kind);
                vars.push((file_name, path.display().to_string()));
            }
            Set::PathTo(kind) => {
                let path = files.prepare(index, *kind);
                vars.push(((*name).to_owned(), path.display().to_string()));
            }
        }
    }
    vars
}

#[test]
fn every_bad_environment_is_refused_naming_its_variable() {
    let files = Files::new();
    let environment_before: Vec<(std::ffi::OsString, std::ffi::OsString)> = std::env::vars_os().collect();
    let good = load(base()).expect("the base configuration is valid").0;
    let rows = rows();
    let mut failures = Vec::new();
    for (index, row) in rows.iter().enumerate() {
        let vars = environment(row, index, &files);
        let files_before = files.snapshot();
        let failure = match load(vars) {
            Ok(_) => {
                failures.push(format!("{}: accepted", row.case));
                continue;
            }
            Err(failure) => failure,
        };
        let (kind, variable) = classify(&failure);
        let text = failure.to_string();
        let debug = format!("{failure:?}");
        let mut problems = Vec::new();
        if (kind, variable) != (row.kind, row.variable) {
            problems.push(format!("expected {:?} naming {}, got {kind:?} naming {variable}", row.kind, row.variable));
        }
        if !text.starts_with(row.variable) {
            problems.push("the message does not lead with the variable".to_owned());
        }
        if !text.contains(row.says) {
            problems.push(format!("the message does not say {:?}", row.says));
        }
        for secret in [PASSWORD, JWT, SHORT_JWT] {
            if text.contains(secret) || debug.contains(secret) {
                problems.push(format!("a secret is shown: {secret}"));
            }
        }
        if files.snapshot() != files_before {
            problems.push("a secret file changed".to_owned());
        }
        if load(base()).expect("the base configuration is still valid").0 != good {
            problems.push("the base configuration parses differently afterwards".to_owned());
        }
        if !problems.is_empty() {
            failures.push(format!("{}: {} — {text}", row.case, problems.join("; ")));
        }
    }
    let environment_after: Vec<(std::ffi::OsString, std::ffi::OsString)> = std::env::vars_os().collect();
    assert_eq!(environment_before, environment_after, "the process environment changed");
    println!("bad_input_env: {} cases", rows.len());
    assert!(failures.is_empty(), "{} of {} rows failed:\n{}", failures.len(), rows.len(), failures.join("\n"));
}

/// The rows cover every variable of the configuration table, `_FILE` forms included.
#[test]
fn every_variable_has_a_row() {
    let rows = rows();
    let named: Vec<&str> = rows.iter().map(|row| row.variable).collect();
    let ignored = ["DBGUARD_LOG", "DBGUARD_TEST_PG_URL", "DBGUARD_REQUIRE_ALL"];
    let missing: Vec<&&str> = dbguard_core::config::vars::ALL
        .iter()
        .filter(|name| !ignored.contains(name) && !named.contains(name))
        .filter(|name| !rows.iter().any(|row| row.set.iter().any(|(set, _)| set == *name)))
        .collect();
    assert!(missing.is_empty(), "variables without a bad-input row: {missing:?}");
}
