use core::time::Duration;

use super::*;
use crate::retry::Jitter;

const SECRET: &str = "Zq9-never-show-this-password";

fn parse(vars: &[(&str, &str)]) -> Result<DbConfig, ConfigError> {
    DbConfig::from_vars(vars.iter().copied())
}

fn err(vars: &[(&str, &str)]) -> ConfigError {
    parse(vars).expect_err("configuration should be rejected")
}

#[test]
fn development_defaults() {
    let config = parse(&[]).expect("defaults are valid");
    assert_eq!(config.profile, Profile::Development);
    assert_eq!(config.url.expose_secret(), DEVELOPMENT_DEFAULT_URL);
    assert_eq!(config.database_type(), DatabaseType::Sqlite);
    assert_eq!(config.pool.size, 5);
    assert_eq!(config.pool.max_overflow, 10);
    assert_eq!(config.pool.timeout, Duration::from_secs(20));
    assert_eq!(config.pool.recycle, Duration::from_secs(3600));
    assert_eq!(config.pool.statement_timeout, Duration::from_secs(30));
    assert_eq!(config.pool.attempt_deadline(), Duration::from_secs(31));
    assert_eq!(config.health.interval, Duration::from_secs(300));
    assert_eq!(config.health.cache_ttl, Duration::from_secs(300));
    assert!(config.echo);
    assert_eq!(config.ssl_mode, SslMode::Disable);
    assert_eq!(config.retry, RetryPolicy::default());
    assert_eq!(config.service.bind, "127.0.0.1:8080");
    assert!(config.test_url.is_none());
}

#[test]
fn production_defaults() {
    let config = parse(&[
        ("DBGUARD_ENV", "production"),
        ("DATABASE_URL", "postgres://app@db/orders"),
        ("JWT_SECRET", "0123456789abcdef0123456789abcdef"),
    ])
    .expect("valid production configuration");
    assert_eq!(config.profile, Profile::Production);
    assert_eq!((config.pool.size, config.pool.max_overflow), (10, 20));
    assert_eq!(config.health.interval, Duration::from_secs(60));
    assert!(!config.echo);
    assert_eq!(config.ssl_mode, SslMode::Require);
}

#[test]
fn app_env_selects_the_profile_when_dbguard_env_is_unset() {
    let e = err(&[("APP_ENV", "production")]);
    assert_eq!(e, ConfigError::Missing { variable: "DATABASE_URL", profile: Profile::Production, hint: e_hint(&e) });
    // DBGUARD_ENV wins over APP_ENV.
    assert!(parse(&[("APP_ENV", "production"), ("DBGUARD_ENV", "development")]).is_ok());
}

fn e_hint(e: &ConfigError) -> &'static str {
    match e {
        ConfigError::Missing { hint, .. } => hint,
        _ => "",
    }
}

#[test]
fn production_requires_tls_unless_explicitly_disabled() {
    let base = [("DBGUARD_ENV", "production"), ("JWT_SECRET", "0123456789abcdef0123456789abcdef")];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut vars = base.to_vec();
        vars.extend_from_slice(extra);
        parse(&vars)
    };
    let e = with(&[("DATABASE_URL", "postgres://db/x?sslmode=disable")]).expect_err("plain TCP in production");
    assert_eq!(e.variable(), "DB_SSL");
    assert!(e.to_string().contains("requires TLS"), "{e}");
    let opted_out = with(&[("DATABASE_URL", "postgres://db/x"), ("DB_SSL", "false")]).expect("explicit opt-out");
    assert_eq!(opted_out.ssl_mode, SslMode::Disable);
    let verify = with(&[("DATABASE_URL", "postgres://db/x?sslmode=verify-full")]).expect("verified TLS");
    assert_eq!(verify.ssl_mode, SslMode::VerifyFull);
    // SQLite has no TLS to require.
    assert!(with(&[("DATABASE_URL", "sqlite:///var/lib/app.db")]).is_ok());
}

#[test]
fn serving_in_production_requires_an_api_key() {
    let config = parse(&[("DBGUARD_ENV", "production"), ("DATABASE_URL", "postgres://db/x"), ("DB_SSL", "false")])
        .expect("database settings alone are valid");
    let e = config.require_api_key().expect_err("no key for the API");
    assert_eq!(e.variable(), "JWT_SECRET");
    assert!(matches!(e, ConfigError::Missing { .. }));
    assert!(parse(&[]).expect("development").require_api_key().is_ok(), "development generates a key");
}

#[test]
fn ssl_settings_must_agree() {
    let e = err(&[("DATABASE_URL", "postgres://db/x?sslmode=disable"), ("DB_SSL", "true")]);
    assert_eq!(e.variable(), "DB_SSL");
    let e = err(&[("DATABASE_URL", "postgres://db/x?sslmode=require"), ("DB_SSL", "no")]);
    assert_eq!(e.variable(), "DB_SSL");
    let e = err(&[("DATABASE_URL", "postgres://db/x?sslmode=sometimes")]);
    assert_eq!(e.variable(), "DATABASE_URL");
    assert!(e.to_string().contains("verify-full"), "{e}");
    assert_eq!(parse(&[("DATABASE_URL", "postgres://db/x"), ("DB_SSL", "1")]).expect("ok").ssl_mode, SslMode::Require);
}

#[test]
fn overrides_apply() {
    let config = parse(&[
        ("DATABASE_URL", "postgresql://app@db:6432/orders"),
        ("DB_POOL_SIZE", "7"),
        ("DB_MAX_OVERFLOW", "0"),
        ("DB_POOL_TIMEOUT", "500ms"),
        ("DB_POOL_RECYCLE", "30m"),
        ("DB_STATEMENT_TIMEOUT", "2s"),
        ("DB_STATEMENT_MODE", "Simple"),
        ("DB_HEALTH_CHECK_INTERVAL", "15s"),
        ("DB_HEALTH_CACHE_TTL", "2s"),
        ("DB_HEALTH_TIMEOUT", "750ms"),
        ("DB_HEALTH_DEGRADED_LATENCY", "100ms"),
        ("DB_ECHO", "no"),
        ("DB_RETRY_MAX_ATTEMPTS", "5"),
        ("DB_RETRY_BASE_DELAY", "100ms"),
        ("DB_RETRY_MAX_DELAY", "2s"),
        ("DB_RETRY_JITTER", "decorrelated"),
        ("DB_BREAKER_FAILURES", "3"),
        ("DB_BREAKER_COOLDOWN", "2s"),
        ("DB_TEST_URL", "postgres://reader@db/orders"),
        ("DBGUARD_BIND", "0.0.0.0:9000"),
        ("DBGUARD_PLUGIN_DIR", "/etc/dbguard/plugins"),
        ("DBGUARD_METRICS_AUTH", "true"),
        ("DBGUARD_MIGRATIONS", "db/migrations"),
        ("DBGUARD_MIGRATE_ON_START", "yes"),
    ])
    .expect("valid overrides");
    assert_eq!(config.pool.size, 7);
    assert_eq!(config.pool.max_overflow, 0);
    assert_eq!(config.pool.statement_mode, crate::config::StatementMode::Simple);
    assert_eq!(config.pool.max_connections(), 7);
    assert_eq!(config.pool.timeout, Duration::from_millis(500));
    assert_eq!(config.pool.recycle, Duration::from_secs(1800));
    assert_eq!(config.pool.statement_timeout, Duration::from_secs(2));
    // The longer of 500 ms acquire and 2 s statement, plus a tenth.
    assert_eq!(config.pool.attempt_deadline(), Duration::from_millis(2200));
    assert_eq!(config.health.interval, Duration::from_secs(15));
    assert_eq!(config.health.cache_ttl, Duration::from_secs(2));
    assert_eq!(config.health.thresholds.timeout, Duration::from_millis(750));
    assert_eq!(config.health.thresholds.degraded_latency, Duration::from_millis(100));
    assert!(!config.echo);
    assert_eq!(config.retry.max_retries(), 5);
    assert_eq!(config.retry.base_delay(), Duration::from_millis(100));
    assert_eq!(config.retry.max_delay(), Duration::from_secs(2));
    assert_eq!(config.retry.jitter(), Jitter::Decorrelated);
    assert_eq!(config.breaker.consecutive_failures, 3);
    assert_eq!(config.breaker.cool_down, Duration::from_secs(2));
    assert_eq!(config.test_url.as_ref().and_then(|u| u.user()), Some("reader"));
    assert_eq!(config.service.bind, "0.0.0.0:9000");
    assert_eq!(config.service.plugin_dir.as_deref(), Some("/etc/dbguard/plugins"));
    assert!(config.service.metrics_auth);
    assert_eq!(config.service.migrations_dir, "db/migrations");
    assert!(config.service.migrate_on_start);
    assert_eq!(config.ssl_mode, SslMode::Prefer);
}

/// One row per kind of bad value for every variable: the error names the variable.
#[test]
fn every_bad_value_names_its_variable() {
    let cases: &[(&str, &str)] = &[
        ("DBGUARD_ENV", "staging"),
        ("DBGUARD_ENV", ""),
        ("APP_ENV", "prod"),
        ("DATABASE_URL", ""),
        ("DATABASE_URL", "not a url"),
        ("DATABASE_URL", "postgres://h:99999/db"),
        ("DATABASE_URL", "postgres:/db"),
        ("DATABASE_URL", "sqlite://"),
        ("DB_POOL_SIZE", ""),
        ("DB_POOL_SIZE", "0"),
        ("DB_POOL_SIZE", "-1"),
        ("DB_POOL_SIZE", "ten"),
        ("DB_POOL_SIZE", "99999999999"),
        ("DB_POOL_SIZE", "5.5"),
        ("DB_MAX_OVERFLOW", "-3"),
        ("DB_MAX_OVERFLOW", "lots"),
        ("DB_MAX_OVERFLOW", "10001"),
        ("DB_POOL_TIMEOUT", "0"),
        ("DB_POOL_TIMEOUT", "-5"),
        ("DB_POOL_TIMEOUT", "30sec"),
        ("DB_POOL_TIMEOUT", "2h"),
        ("DB_POOL_TIMEOUT", ""),
        ("DB_POOL_RECYCLE", "0"),
        ("DB_POOL_RECYCLE", "1 hour"),
        ("DB_STATEMENT_TIMEOUT", "0"),
        ("DB_STATEMENT_TIMEOUT", "2d"),
        ("DB_STATEMENT_TIMEOUT", "5 s"),
        ("DB_HEALTH_CHECK_INTERVAL", "0"),
        ("DB_HEALTH_CHECK_INTERVAL", "5 m"),
        ("DB_HEALTH_CACHE_TTL", "0ms"),
        ("DB_HEALTH_TIMEOUT", "x"),
        ("DB_HEALTH_DEGRADED_LATENCY", "1.5s"),
        ("DB_STATEMENT_MODE", "transaction"),
        ("DB_STATEMENT_MODE", ""),
        ("DB_ECHO", "maybe"),
        ("DB_ECHO", ""),
        ("DB_SSL", "on"),
        ("DB_RETRY_MAX_ATTEMPTS", "101"),
        ("DB_RETRY_MAX_ATTEMPTS", "-1"),
        ("DB_RETRY_MAX_ATTEMPTS", "three"),
        ("DB_RETRY_BASE_DELAY", "0"),
        ("DB_RETRY_BASE_DELAY", "1d"),
        ("DB_RETRY_MAX_DELAY", "0"),
        ("DB_RETRY_JITTER", "random"),
        ("DB_RETRY_JITTER", ""),
        ("DB_BREAKER_FAILURES", "0"),
        ("DB_BREAKER_COOLDOWN", "forever"),
        ("DB_TEST_URL", "mysql://u@h/d"),
        ("DB_TEST_URL", "sqlite://other.db"),
        ("DBGUARD_BIND", "8080"),
        ("DBGUARD_BIND", ""),
        ("DBGUARD_BIND", "localhost:http"),
        ("DBGUARD_BIND", "not a host:80"),
        ("DBGUARD_BIND", "[::1:80"),
        ("DBGUARD_BIND", "127.0.0.1:+80"),
        ("DB_POOL_SIZE", "+5"),
        ("DB_MAX_OVERFLOW", "+0"),
        ("DBGUARD_PLUGIN_DIR", ""),
        ("DBGUARD_METRICS_AUTH", "sure"),
        ("DBGUARD_MIGRATIONS", ""),
        ("DBGUARD_MIGRATE_ON_START", "later"),
        ("JWT_SECRET", "short"),
        ("JWT_ISSUER", " "),
        ("JWT_AUDIENCE", ""),
        ("JWT_PUBLIC_KEY_FILE", ""),
    ];
    for (name, value) in cases {
        let mut vars = vec![(*name, *value)];
        // DB_TEST_URL must be compared against a PostgreSQL main URL.
        if name.starts_with("DB_TEST_URL") {
            vars.push(("DATABASE_URL", "postgres://db/x"));
        }
        let e = parse(&vars).expect_err(&format!("{name}={value:?} should be rejected"));
        assert_eq!(e.variable(), *name, "{name}={value:?} gave {e}");
        let text = e.to_string();
        assert!(text.starts_with(name), "message should lead with the variable: {text}");
    }
}

#[test]
fn retry_delays_must_be_ordered() {
    let e = err(&[("DB_RETRY_BASE_DELAY", "10s"), ("DB_RETRY_MAX_DELAY", "1s")]);
    assert_eq!(e.variable(), "DB_RETRY_MAX_DELAY");
    assert!(e.to_string().contains("at least the base delay"), "{e}");
    // A base above the default cap raises the default cap instead of failing.
    let config = parse(&[("DB_RETRY_BASE_DELAY", "45s")]).expect("valid");
    assert_eq!(config.retry.max_delay(), Duration::from_secs(45));
}

#[test]
fn unknown_schemes_are_named_with_the_accepted_ones() {
    let e = err(&[("DATABASE_URL", &format!("mysql://root:{SECRET}@db/app"))]);
    assert_eq!(
        e,
        ConfigError::UnsupportedScheme {
            variable: "DATABASE_URL",
            scheme: "mysql".into(),
            value: "mysql://root:***@db/app".into()
        }
    );
    let text = e.to_string();
    assert!(text.contains("\"mysql\"") && text.contains("postgres, postgresql and sqlite"), "{text}");
    assert!(!text.contains(SECRET));
}

#[test]
fn scheme_detection() {
    for (url, ty) in [
        ("postgres://db/x", DatabaseType::Postgresql),
        ("postgresql://db/x", DatabaseType::Postgresql),
        ("sqlite://app.db", DatabaseType::Sqlite),
        ("sqlite::memory:", DatabaseType::Sqlite),
    ] {
        assert_eq!(parse(&[("DATABASE_URL", url)]).expect(url).database_type(), ty, "{url}");
    }
}

#[test]
fn passwords_never_leak_from_config_debug_or_errors() {
    let url = format!("postgres://app:{SECRET}@db:5432/orders");
    let config = parse(&[
        ("DATABASE_URL", url.as_str()),
        ("DB_TEST_URL", &format!("postgres://reader:{SECRET}@db/orders")),
        ("JWT_SECRET", &format!("{SECRET}{SECRET}")),
    ])
    .expect("valid");
    let shown = [
        format!("{config:?}"),
        format!("{}", config.url),
        format!("{:?}", config.url),
        format!("{:?}", config.connection_info()),
        serde_json::to_string(&config.connection_info()).expect("serializes"),
        format!("{:?}", config.service.auth),
    ];
    for text in shown {
        assert!(!text.contains(SECRET), "leaked: {text}");
    }
    for bad in [
        format!("postgres://app:{SECRET}@db:notaport/x"),
        format!("postgres://app:{SECRET}@/x?sslmode=bogus"),
        format!("redis://app:{SECRET}@db"),
        format!("postgres://db/x?password={SECRET}&sslmode=bogus"),
    ] {
        let e = err(&[("DATABASE_URL", bad.as_str())]);
        assert!(!e.to_string().contains(SECRET), "leaked: {e}");
        assert!(!format!("{e:?}").contains(SECRET), "leaked: {e:?}");
    }
    let e = err(&[("JWT_SECRET", "tiny-secret")]);
    assert!(!e.to_string().contains("tiny-secret"), "{e}");
}

#[test]
fn connection_info_has_no_password() {
    let config = parse(&[("DATABASE_URL", "postgres://app:pw@db.internal:6432/orders")]).expect("valid");
    let info = config.connection_info();
    assert_eq!(
        info,
        ConnectionInfo {
            database_type: DatabaseType::Postgresql,
            host: Some("db.internal".into()),
            port: Some(6432),
            database: Some("orders".into()),
            user: Some("app".into()),
            pool_size: 5,
            max_overflow: 10,
        }
    );
    let sqlite = parse(&[]).expect("valid").connection_info();
    assert_eq!((sqlite.host, sqlite.port, sqlite.database.as_deref()), (None, None, Some("data/dbguard.db")));
}

#[test]
fn look_alike_variables_are_reported() {
    let config = parse(&[("DB_POOL_SZE", "3"), ("DBGUARD_BIDN", "x"), ("HOME", "/root")]).expect("valid");
    assert_eq!(config.unknown_variables, ["DBGUARD_BIDN", "DB_POOL_SZE"]);
}

#[test]
fn jwt_settings() {
    let e = err(&[("JWT_SECRET", "0123456789abcdef0123456789abcdef"), ("JWT_PUBLIC_KEY_FILE", "/k.pem")]);
    assert_eq!(e.variable(), "JWT_PUBLIC_KEY_FILE");
    let config = parse(&[("JWT_PUBLIC_KEY_FILE", "/k.pem"), ("JWT_ISSUER", "auth"), ("JWT_AUDIENCE", "dbguard")])
        .expect("valid");
    assert_eq!(config.service.auth.issuer.as_deref(), Some("auth"));
    assert_eq!(config.service.auth.audience.as_deref(), Some("dbguard"));
}

#[test]
fn reads_go_to_standbys_only_when_asked() {
    let primary_only = parse(&[("DATABASE_URL", "postgres://app@a,b/orders")]).expect("valid");
    assert_eq!(primary_only.replicas.read_target, ReadTarget::Primary);
    assert!(!primary_only.replicas.routes_reads());
    assert_eq!(primary_only.replicas.max_lag, Duration::from_secs(10));

    let spread = parse(&[
        ("DATABASE_URL", "postgres://app@a,b,c/orders?target_session_attrs=primary&load_balance_hosts=random"),
        ("DB_READ_TARGET", "Prefer-Standby"),
        ("DB_REPLICA_MAX_LAG", "500ms"),
    ])
    .expect("valid");
    assert_eq!(spread.replicas.read_target, ReadTarget::PreferStandby);
    assert!(spread.replicas.routes_reads());
    assert_eq!(spread.replicas.max_lag, Duration::from_millis(500));
    assert_eq!(spread.replicas.load_balance, LoadBalanceHosts::Random);
}
