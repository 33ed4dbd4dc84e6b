//! The parser behind [`DbConfig::from_vars`]: one method per kind of value, each naming the
//! variable and what is valid when a value is wrong.

use core::time::Duration;
use std::collections::BTreeMap;

use super::url::UrlError;
use super::{
    AuthConfig, ConfigError, DAY, DEVELOPMENT_DEFAULT_URL, DatabaseType, DatabaseUrl, DbConfig, HOUR, HealthConfig,
    LogFormat, MILLISECOND, PoolConfig, Profile, ReadTarget, ReplicaConfig, SECOND, Secret, ServiceConfig, SslMode,
    StatementMode, redact, value, vars,
};
use crate::health::ProbeThresholds;
use crate::retry::{BreakerConfig, Jitter, RetryPolicy};

pub(super) struct Parser<'a> {
    pub(super) env: &'a BTreeMap<String, String>,
}

impl Parser<'_> {
    fn get(&self, name: &'static str) -> Option<&str> {
        self.env.get(name).map(String::as_str)
    }

    fn duration(
        &self,
        name: &'static str,
        default: Duration,
        min: Duration,
        max: Duration,
    ) -> Result<Duration, ConfigError> {
        self.get(name).map_or(Ok(default), |raw| value::duration(name, raw, min, max))
    }

    fn integer(&self, name: &'static str, default: u32, min: u32, max: u32) -> Result<u32, ConfigError> {
        self.get(name).map_or(Ok(default), |raw| value::integer(name, raw, min, max))
    }

    fn boolean(&self, name: &'static str) -> Result<Option<bool>, ConfigError> {
        self.get(name).map(|raw| value::boolean(name, raw)).transpose()
    }

    fn non_empty(&self, name: &'static str, what: &str) -> Result<Option<String>, ConfigError> {
        match self.get(name) {
            None => Ok(None),
            Some(raw) if raw.trim().is_empty() => {
                Err(ConfigError::Invalid { variable: name, value: raw.to_owned(), expected: what.to_owned() })
            }
            Some(raw) => Ok(Some(raw.trim().to_owned())),
        }
    }

    fn profile(&self) -> Result<Profile, ConfigError> {
        let (name, raw) = match (self.get(vars::DBGUARD_ENV), self.get(vars::APP_ENV)) {
            (Some(raw), _) => (vars::DBGUARD_ENV, raw),
            (None, Some(raw)) => (vars::APP_ENV, raw),
            (None, None) => return Ok(Profile::Development),
        };
        match raw.trim().to_ascii_lowercase().as_str() {
            "development" => Ok(Profile::Development),
            "production" => Ok(Profile::Production),
            _ => Err(ConfigError::Invalid {
                variable: name,
                value: raw.to_owned(),
                expected: "development or production".to_owned(),
            }),
        }
    }

    fn url(&self, name: &'static str, raw: &str) -> Result<DatabaseUrl, ConfigError> {
        DatabaseUrl::parse(raw).map_err(|err| match err {
            UrlError::UnsupportedScheme(scheme) => {
                ConfigError::UnsupportedScheme { variable: name, scheme, value: redact(raw) }
            }
            UrlError::Malformed(why) => ConfigError::Invalid {
                variable: name,
                value: redact(raw),
                expected: format!(
                    "a URL like postgres://user:password@host:5432/db or sqlite://path/to/file.db ({why})"
                ),
            },
            UrlError::Parameter(why) => ConfigError::Invalid { variable: name, value: redact(raw), expected: why },
        })
    }

    pub(super) fn parse(&self) -> Result<DbConfig, ConfigError> {
        let profile = self.profile()?;
        let production = profile == Profile::Production;

        let url = match self.get(vars::DATABASE_URL) {
            Some(raw) => self.url(vars::DATABASE_URL, raw)?,
            None if production => {
                return Err(ConfigError::Missing {
                    variable: vars::DATABASE_URL,
                    profile,
                    hint: "set DATABASE_URL (or DATABASE_URL_FILE) to postgres://… or sqlite://…",
                });
            }
            None => self.url(vars::DATABASE_URL, DEVELOPMENT_DEFAULT_URL)?,
        };
        let test_url = match self.get(vars::DB_TEST_URL) {
            Some(raw) => {
                let test_url = self.url(vars::DB_TEST_URL, raw)?;
                if test_url.database_type() != url.database_type() {
                    return Err(ConfigError::Conflict {
                        variable: vars::DB_TEST_URL,
                        reason: format!(
                            "is a {} URL but DATABASE_URL is {}; both must name the same kind of database",
                            test_url.database_type(),
                            url.database_type()
                        ),
                    });
                }
                if let Some(raw) = test_url.param("sslmode")
                    && SslMode::parse(raw).is_none()
                {
                    return Err(ConfigError::Invalid {
                        variable: vars::DB_TEST_URL,
                        value: format!("sslmode={raw}"),
                        expected: format!("sslmode one of {}", SslMode::ACCEPTED),
                    });
                }
                Some(test_url)
            }
            None => None,
        };

        let pool = PoolConfig {
            size: self.integer(vars::DB_POOL_SIZE, if production { 10 } else { 5 }, 1, 10_000)?,
            max_overflow: self.integer(vars::DB_MAX_OVERFLOW, if production { 20 } else { 10 }, 0, 10_000)?,
            timeout: self.duration(vars::DB_POOL_TIMEOUT, 20 * SECOND, MILLISECOND, HOUR)?,
            recycle: self.duration(vars::DB_POOL_RECYCLE, HOUR, SECOND, 7 * DAY)?,
            statement_timeout: self.duration(vars::DB_STATEMENT_TIMEOUT, 30 * SECOND, MILLISECOND, DAY)?,
            statement_mode: self.statement_mode()?,
        };

        let replicas = self.replicas(&url)?;

        let interval = self.duration(
            vars::DB_HEALTH_CHECK_INTERVAL,
            if production { 60 * SECOND } else { 300 * SECOND },
            100 * MILLISECOND,
            DAY,
        )?;
        let health = HealthConfig {
            interval,
            cache_ttl: self.duration(vars::DB_HEALTH_CACHE_TTL, interval, MILLISECOND, DAY)?,
            thresholds: ProbeThresholds {
                timeout: self.duration(vars::DB_HEALTH_TIMEOUT, 5 * SECOND, MILLISECOND, 10 * 60 * SECOND)?,
                degraded_latency: self.duration(
                    vars::DB_HEALTH_DEGRADED_LATENCY,
                    ProbeThresholds::default().degraded_latency,
                    MILLISECOND,
                    10 * 60 * SECOND,
                )?,
            },
        };

        let echo = self.boolean(vars::DB_ECHO)?.unwrap_or(!production);
        let ssl_mode = self.ssl_mode(&url, profile)?;
        let retry = self.retry()?;
        let breaker = BreakerConfig {
            consecutive_failures: self.integer(vars::DB_BREAKER_FAILURES, 5, 1, 1000)?,
            cool_down: self.duration(vars::DB_BREAKER_COOLDOWN, 5 * SECOND, MILLISECOND, HOUR)?,
            ..BreakerConfig::default()
        };
        let service = self.service(profile)?;

        Ok(DbConfig {
            profile,
            url,
            test_url,
            pool,
            replicas,
            health,
            echo,
            ssl_mode,
            retry,
            breaker,
            service,
            unknown_variables: self.unknown_variables(),
        })
    }

    fn ssl_mode(&self, url: &DatabaseUrl, profile: Profile) -> Result<SslMode, ConfigError> {
        let db_ssl = self.boolean(vars::DB_SSL)?;
        if url.database_type() == DatabaseType::Sqlite {
            return Ok(SslMode::Disable);
        }
        let from_url = match url.param("sslmode") {
            None => None,
            Some(raw) => Some(SslMode::parse(raw).ok_or_else(|| ConfigError::Invalid {
                variable: vars::DATABASE_URL,
                value: format!("sslmode={raw}"),
                expected: format!("sslmode one of {}", SslMode::ACCEPTED),
            })?),
        };
        let mode = match (db_ssl, from_url) {
            (Some(true), Some(mode)) if !mode.is_encrypted() => {
                return Err(ConfigError::Conflict {
                    variable: vars::DB_SSL,
                    reason: format!(
                        "is true but DATABASE_URL has sslmode={}; remove one or make them agree",
                        mode.as_str()
                    ),
                });
            }
            (Some(false), Some(mode)) if mode.is_encrypted() => {
                return Err(ConfigError::Conflict {
                    variable: vars::DB_SSL,
                    reason: format!(
                        "is false but DATABASE_URL has sslmode={}; remove one or make them agree",
                        mode.as_str()
                    ),
                });
            }
            (_, Some(mode)) => mode,
            (Some(true), None) => SslMode::Require,
            (Some(false), None) => SslMode::Disable,
            (None, None) if profile == Profile::Production => SslMode::Require,
            (None, None) => SslMode::Prefer,
        };
        if profile == Profile::Production && !mode.is_encrypted() && db_ssl != Some(false) {
            return Err(ConfigError::Conflict {
                variable: vars::DB_SSL,
                reason: format!(
                    "the production profile requires TLS but DATABASE_URL has sslmode={}; use sslmode=require \
                     (or verify-full), or set DB_SSL=false to opt out explicitly",
                    mode.as_str()
                ),
            });
        }
        Ok(mode)
    }

    fn statement_mode(&self) -> Result<StatementMode, ConfigError> {
        match self.get(vars::DB_STATEMENT_MODE) {
            None => Ok(StatementMode::default()),
            Some(raw) => StatementMode::parse(raw).ok_or_else(|| ConfigError::Invalid {
                variable: vars::DB_STATEMENT_MODE,
                value: raw.to_owned(),
                expected: format!("one of {}", StatementMode::ACCEPTED),
            }),
        }
    }

    fn replicas(&self, url: &DatabaseUrl) -> Result<ReplicaConfig, ConfigError> {
        let read_target = match self.get(vars::DB_READ_TARGET) {
            None => ReadTarget::default(),
            Some(raw) => ReadTarget::parse(raw).ok_or_else(|| ConfigError::Invalid {
                variable: vars::DB_READ_TARGET,
                value: raw.to_owned(),
                expected: format!("one of {}", ReadTarget::ACCEPTED),
            })?,
        };
        // Without standbys to read from, any other value would silently do nothing.
        if read_target != ReadTarget::Primary && url.hosts().len() < 2 {
            return Err(ConfigError::Conflict {
                variable: vars::DB_READ_TARGET,
                reason: format!(
                    "is {} but DATABASE_URL names {}; list the primary and its standbys, \
                     e.g. postgres://user@primary:5432,standby1:5432,standby2:5432/db",
                    read_target.as_str(),
                    match url.database_type() {
                        DatabaseType::Sqlite => "a SQLite file".to_owned(),
                        DatabaseType::Postgresql => format!("{} host", url.hosts().len()),
                    }
                ),
            });
        }
        Ok(ReplicaConfig {
            read_target,
            max_lag: self.duration(vars::DB_REPLICA_MAX_LAG, 10 * SECOND, MILLISECOND, DAY)?,
            load_balance: url.load_balance_hosts(),
        })
    }

    fn retry(&self) -> Result<RetryPolicy, ConfigError> {
        let defaults = RetryPolicy::default();
        let max_retries =
            self.integer(vars::DB_RETRY_MAX_ATTEMPTS, defaults.max_retries(), 0, RetryPolicy::MAX_RETRIES_LIMIT)?;
        let base = self.duration(vars::DB_RETRY_BASE_DELAY, defaults.base_delay(), MILLISECOND, HOUR)?;
        let max = self.duration(vars::DB_RETRY_MAX_DELAY, defaults.max_delay().max(base), MILLISECOND, HOUR)?;
        let jitter = match self.get(vars::DB_RETRY_JITTER) {
            None => Jitter::None,
            Some(raw) => Jitter::parse(raw).ok_or_else(|| ConfigError::Invalid {
                variable: vars::DB_RETRY_JITTER,
                value: raw.to_owned(),
                expected: format!("one of {}", Jitter::ACCEPTED),
            })?,
        };
        RetryPolicy::builder().max_retries(max_retries).base_delay(base).max_delay(max).jitter(jitter).build().map_err(
            |err| ConfigError::Conflict {
                variable: vars::DB_RETRY_MAX_DELAY,
                reason: format!("{err}; raise DB_RETRY_MAX_DELAY or lower DB_RETRY_BASE_DELAY"),
            },
        )
    }

    fn service(&self, profile: Profile) -> Result<ServiceConfig, ConfigError> {
        let bind = match self.non_empty(vars::DBGUARD_BIND, "host:port, e.g. 127.0.0.1:8080")? {
            None => "127.0.0.1:8080".to_owned(),
            Some(bind) => {
                let valid = bind.rsplit_once(':').is_some_and(|(host, port)| valid_bind_host(host) && valid_port(port));
                if !valid {
                    return Err(ConfigError::Invalid {
                        variable: vars::DBGUARD_BIND,
                        value: bind,
                        expected: "host:port, e.g. 127.0.0.1:8080 or 0.0.0.0:8080".to_owned(),
                    });
                }
                bind
            }
        };
        let secret = match self.get(vars::JWT_SECRET) {
            None => None,
            Some(raw) if raw.len() < 32 => {
                return Err(ConfigError::Invalid {
                    variable: vars::JWT_SECRET,
                    value: "<redacted>".to_owned(),
                    expected: format!("a secret of at least 32 bytes (got {})", raw.len()),
                });
            }
            Some(raw) if raw.trim().is_empty() || raw.bytes().all(|b| b == raw.as_bytes()[0]) => {
                return Err(ConfigError::Invalid {
                    variable: vars::JWT_SECRET,
                    value: "<redacted>".to_owned(),
                    expected: "a random secret of at least 32 bytes (this one is blank or one repeated character)"
                        .to_owned(),
                });
            }
            Some(raw) => Some(Secret::new(raw)),
        };
        let auth = AuthConfig {
            secret,
            public_key_file: self.non_empty(vars::JWT_PUBLIC_KEY_FILE, "a path to a PEM public key")?,
            issuer: self.non_empty(vars::JWT_ISSUER, "the expected iss claim")?,
            audience: self.non_empty(vars::JWT_AUDIENCE, "the expected aud claim")?,
        };
        if auth.secret.is_some() && auth.public_key_file.is_some() {
            return Err(ConfigError::Conflict {
                variable: vars::JWT_PUBLIC_KEY_FILE,
                reason: "JWT_SECRET and JWT_PUBLIC_KEY_FILE are both set; choose one algorithm".to_owned(),
            });
        }
        Ok(ServiceConfig {
            bind,
            plugin_dir: self.non_empty(vars::DBGUARD_PLUGIN_DIR, "a directory path")?,
            metrics_auth: self.boolean(vars::DBGUARD_METRICS_AUTH)?.unwrap_or(false),
            migrations_dir: self
                .non_empty(vars::DBGUARD_MIGRATIONS, "a directory path")?
                .unwrap_or_else(|| super::DEFAULT_MIGRATIONS_DIR.to_owned()),
            migrate_on_start: self.boolean(vars::DBGUARD_MIGRATE_ON_START)?.unwrap_or(false),
            log_format: self.log_format(profile)?,
            auth,
        })
    }

    fn log_format(&self, profile: Profile) -> Result<LogFormat, ConfigError> {
        match self.get(vars::DBGUARD_LOG_FORMAT) {
            None => Ok(LogFormat::default_for(profile)),
            Some(raw) => LogFormat::parse(raw).ok_or_else(|| ConfigError::Invalid {
                variable: vars::DBGUARD_LOG_FORMAT,
                value: raw.to_owned(),
                expected: LogFormat::ACCEPTED.to_owned(),
            }),
        }
    }

    fn unknown_variables(&self) -> Vec<String> {
        self.env
            .keys()
            .filter(|name| name.starts_with("DB_") || name.starts_with("DBGUARD_"))
            .filter(|name| !vars::ALL.contains(&name.as_str()))
            .cloned()
            .collect()
    }
}

/// A listen host: a name or IPv4 address without spaces, or a bracketed IPv6 address.
fn valid_bind_host(host: &str) -> bool {
    match host.strip_prefix('[') {
        Some(rest) => rest.strip_suffix(']').is_some_and(|ip| ip.parse::<core::net::Ipv6Addr>().is_ok()),
        None => {
            !host.is_empty() && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
        }
    }
}

/// A port: plain digits from 0 to 65535 (0 asks the system for a free one).
fn valid_port(port: &str) -> bool {
    !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok()
}
