//! The health report and the rules that turn check results into a status.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::DatabaseType;

/// Overall health of the database as seen by dbguard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// Every check passed.
    Healthy,
    /// Serving, but something needs attention (slow, read-only, an optional check failed).
    Degraded,
    /// A required check failed: do not send traffic.
    Unhealthy,
}

impl HealthStatus {
    /// The HTTP status for a health response: 200 for healthy and degraded, 503 for unhealthy
    /// (as Spring Boot maps DOWN).
    pub const fn http_status(self) -> u16 {
        match self {
            Self::Healthy | Self::Degraded => 200,
            Self::Unhealthy => 503,
        }
    }

    /// Whether a readiness probe should pass.
    pub const fn allows_traffic(self) -> bool {
        !matches!(self, Self::Unhealthy)
    }

    /// The exit code of `dbguard check`: 0 healthy, 1 degraded, 2 unhealthy.
    pub const fn exit_code(self) -> u8 {
        match self {
            Self::Healthy => 0,
            Self::Degraded => 1,
            Self::Unhealthy => 2,
        }
    }

    /// The status of a set of checks: any failing required check → unhealthy; any warning or
    /// failing optional check → degraded; otherwise healthy (also for no checks).
    pub fn aggregate(checks: &[CheckResult]) -> Self {
        let mut status = Self::Healthy;
        for check in checks {
            match check.status {
                CheckStatus::Fail if check.required => return Self::Unhealthy,
                CheckStatus::Fail | CheckStatus::Warn => status = Self::Degraded,
                CheckStatus::Pass => {}
            }
        }
        status
    }
}

/// The outcome of one check (IETF health-check draft's pass / warn / fail).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    /// Fine.
    Pass,
    /// Works, but outside its comfortable range.
    Warn,
    /// Does not work.
    Fail,
}

/// One named check inside a [`HealthReport`], e.g. `"database:round_trip"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CheckResult {
    /// `component:measure`, as in the IETF health-check draft.
    pub name: String,
    /// The outcome.
    pub status: CheckStatus,
    /// Whether a failure makes the whole report unhealthy (otherwise degraded).
    pub required: bool,
    /// The measured value, if the check measures one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_value: Option<f64>,
    /// Unit of `observed_value` (`ms`, `bytes`, `s`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_unit: Option<String>,
    /// A human-readable explanation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl CheckResult {
    /// A check with just a name, status and requirement.
    pub fn new(name: impl Into<String>, status: CheckStatus, required: bool) -> Self {
        Self { name: name.into(), status, required, observed_value: None, observed_unit: None, message: None }
    }

    /// Adds a measured value and its unit.
    pub fn observed(mut self, value: f64, unit: impl Into<String>) -> Self {
        self.observed_value = Some(value);
        self.observed_unit = Some(unit.into());
        self
    }

    /// Adds an explanation.
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }
}

/// Connection-pool occupancy, in SQLAlchemy's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub struct PoolStatus {
    /// Connections kept open (the configured minimum).
    pub pool_size: u32,
    /// Idle connections in the pool.
    pub checked_in: u32,
    /// Connections in use.
    pub checked_out: u32,
    /// Open connections above `pool_size`.
    pub overflow: u32,
    /// The most connections allowed above `pool_size`.
    pub max_overflow: u32,
    /// Tasks waiting for a connection, where the pool exposes it (null otherwise).
    pub waiting: Option<u32>,
}

impl PoolStatus {
    /// Builds the SQLAlchemy-style view from a pool's open and idle counts.
    pub fn from_counts(pool_size: u32, max_overflow: u32, open: u32, idle: u32) -> Self {
        let idle = idle.min(open);
        Self {
            pool_size,
            checked_in: idle,
            checked_out: open - idle,
            overflow: open.saturating_sub(pool_size),
            max_overflow,
            waiting: None,
        }
    }
}

/// The health of the database at one moment, with the field names of the established health JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HealthReport {
    /// Aggregated from `checks`.
    pub status: HealthStatus,
    /// `postgresql` or `sqlite`.
    pub database_type: DatabaseType,
    /// The server's version string, when it answered.
    pub version: Option<String>,
    /// When the probe ran, RFC 3339 (UTC).
    #[schemars(extend("format" = "date-time"))]
    pub timestamp: String,
    /// How long the probe took, in milliseconds.
    pub response_time_ms: f64,
    /// The pool at probe time.
    pub pool_status: PoolStatus,
    /// A one-line summary: what is wrong, or "ok".
    pub message: String,
    /// The individual checks.
    pub checks: Vec<CheckResult>,
}

impl HealthReport {
    /// A report whose status and message follow from `checks` by [`HealthStatus::aggregate`].
    pub fn from_checks(
        database_type: DatabaseType,
        version: Option<String>,
        timestamp: String,
        response_time_ms: f64,
        pool_status: PoolStatus,
        checks: Vec<CheckResult>,
    ) -> Self {
        let status = HealthStatus::aggregate(&checks);
        let message = summarize(status, &checks);
        Self { status, database_type, version, timestamp, response_time_ms, pool_status, message, checks }
    }
}

fn summarize(status: HealthStatus, checks: &[CheckResult]) -> String {
    if status == HealthStatus::Healthy {
        return "ok".to_owned();
    }
    let problems: Vec<String> = checks
        .iter()
        .filter(|check| check.status != CheckStatus::Pass)
        .map(|check| match &check.message {
            Some(message) => format!("{}: {}", check.name, message),
            None => check.name.clone(),
        })
        .collect();
    let label = match status {
        HealthStatus::Degraded => "degraded",
        _ => "unhealthy",
    };
    format!("{label}: {}", problems.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(status: CheckStatus, required: bool) -> CheckResult {
        CheckResult::new("x", status, required)
    }

    #[test]
    fn aggregation_rule() {
        use CheckStatus::*;
        assert_eq!(HealthStatus::aggregate(&[]), HealthStatus::Healthy);
        assert_eq!(HealthStatus::aggregate(&[check(Pass, true)]), HealthStatus::Healthy);
        assert_eq!(HealthStatus::aggregate(&[check(Pass, true), check(Warn, true)]), HealthStatus::Degraded);
        assert_eq!(HealthStatus::aggregate(&[check(Fail, false)]), HealthStatus::Degraded);
        assert_eq!(HealthStatus::aggregate(&[check(Warn, false), check(Fail, true)]), HealthStatus::Unhealthy);
    }

    #[test]
    fn http_status_and_exit_codes() {
        assert_eq!(HealthStatus::Healthy.http_status(), 200);
        assert_eq!(HealthStatus::Degraded.http_status(), 200);
        assert_eq!(HealthStatus::Unhealthy.http_status(), 503);
        assert_eq!(
            [HealthStatus::Healthy, HealthStatus::Degraded, HealthStatus::Unhealthy].map(HealthStatus::exit_code),
            [0, 1, 2]
        );
    }

    #[test]
    fn pool_counts() {
        let status = PoolStatus::from_counts(5, 10, 7, 2);
        assert_eq!((status.checked_in, status.checked_out, status.overflow), (2, 5, 2));
        let odd = PoolStatus::from_counts(5, 10, 1, 4);
        assert_eq!((odd.checked_in, odd.checked_out, odd.overflow), (1, 0, 0));
    }

    #[test]
    fn message_names_failing_checks() {
        let report = HealthReport::from_checks(
            DatabaseType::Postgresql,
            None,
            "2026-01-01T00:00:00Z".into(),
            1.0,
            PoolStatus::default(),
            vec![
                CheckResult::new("database:round_trip", CheckStatus::Fail, true)
                    .with_message("timed out after 5000 ms"),
            ],
        );
        assert_eq!(report.status, HealthStatus::Unhealthy);
        assert_eq!(report.message, "unhealthy: database:round_trip: timed out after 5000 ms");
    }
}
