//! What a probe observed, turned into checks. Shared by every host so that the native host and
//! the WASI host judge the same observations the same way.

use core::time::Duration;

use super::report::{CheckResult, CheckStatus};

/// Limits a probe is judged against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeThresholds {
    /// A round trip slower than this makes the report degraded.
    pub degraded_latency: Duration,
    /// The probe's own timeout, quoted in the failure message.
    pub timeout: Duration,
}

impl Default for ProbeThresholds {
    fn default() -> Self {
        Self { degraded_latency: Duration::from_millis(250), timeout: Duration::from_secs(5) }
    }
}

/// How the round trip (`SELECT 1`) went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoundTrip {
    /// It answered after this long.
    Answered(Duration),
    /// It did not answer within the probe timeout.
    TimedOut,
    /// It failed with this (already redacted) message.
    Failed(String),
}

/// What a PostgreSQL probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresObservations {
    /// `SELECT 1`.
    pub round_trip: RoundTrip,
    /// `pg_is_in_recovery()`: true on a standby.
    pub in_recovery: Option<bool>,
    /// `current_setting('transaction_read_only')` on a fresh transaction.
    pub read_only: Option<bool>,
}

/// What a SQLite probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteObservations {
    /// `SELECT 1`.
    pub round_trip: RoundTrip,
    /// `PRAGMA journal_mode`, lower-case.
    pub journal_mode: Option<String>,
    /// `PRAGMA quick_check`'s first row, when it ran on this probe (it runs on a slower cadence).
    pub quick_check: Option<String>,
    /// Database size in bytes (`page_count * page_size`).
    pub size_bytes: Option<u64>,
}

/// Check names, stable across hosts.
pub mod names {
    /// The round trip.
    pub const ROUND_TRIP: &str = "database:round_trip";
    /// PostgreSQL: the server accepts writes.
    pub const WRITABLE: &str = "database:writable";
    /// SQLite: journal mode.
    pub const JOURNAL_MODE: &str = "database:journal_mode";
    /// SQLite: `PRAGMA quick_check`.
    pub const INTEGRITY: &str = "database:integrity";
    /// SQLite: file size.
    pub const SIZE: &str = "database:size";
}

/// Judges the round trip: failure or timeout fails (required), slow warns.
pub fn round_trip_check(round_trip: &RoundTrip, thresholds: &ProbeThresholds) -> CheckResult {
    match round_trip {
        RoundTrip::Answered(elapsed) => {
            let ms = elapsed.as_secs_f64() * 1000.0;
            let check = CheckResult::new(names::ROUND_TRIP, CheckStatus::Pass, true).observed(ms, "ms");
            if *elapsed > thresholds.degraded_latency {
                CheckResult { status: CheckStatus::Warn, ..check }.with_message(format!(
                    "slow: {ms:.0} ms is above the {} ms threshold",
                    thresholds.degraded_latency.as_millis()
                ))
            } else {
                check
            }
        }
        RoundTrip::TimedOut => CheckResult::new(names::ROUND_TRIP, CheckStatus::Fail, true)
            .with_message(format!("timed out after {} ms", thresholds.timeout.as_millis())),
        RoundTrip::Failed(message) => {
            CheckResult::new(names::ROUND_TRIP, CheckStatus::Fail, true).with_message(message.clone())
        }
    }
}

/// The checks for a PostgreSQL probe. A server that turned read-only (a standby after a
/// failover) is degraded, not healthy: `SELECT 1` alone would miss it.
pub fn postgres_checks(observed: &PostgresObservations, thresholds: &ProbeThresholds) -> Vec<CheckResult> {
    let mut checks = vec![round_trip_check(&observed.round_trip, thresholds)];
    if !matches!(observed.round_trip, RoundTrip::Answered(_)) {
        return checks;
    }
    let writable = match (observed.in_recovery, observed.read_only) {
        (Some(true), _) => CheckResult::new(names::WRITABLE, CheckStatus::Warn, false)
            .with_message("server is in recovery (a standby): writes will fail"),
        (_, Some(true)) => CheckResult::new(names::WRITABLE, CheckStatus::Warn, false)
            .with_message("transactions are read-only by default: writes will fail"),
        (Some(false), Some(false)) => CheckResult::new(names::WRITABLE, CheckStatus::Pass, false),
        _ => CheckResult::new(names::WRITABLE, CheckStatus::Warn, false).with_message("could not tell"),
    };
    checks.push(writable);
    checks
}

/// The checks for a SQLite probe. A corrupt file fails (required); the journal mode and size
/// are reported for information.
pub fn sqlite_checks(observed: &SqliteObservations, thresholds: &ProbeThresholds) -> Vec<CheckResult> {
    let mut checks = vec![round_trip_check(&observed.round_trip, thresholds)];
    if !matches!(observed.round_trip, RoundTrip::Answered(_)) {
        return checks;
    }
    if let Some(mode) = &observed.journal_mode {
        // Informational: a rollback journal is a legitimate choice (readers then block writers),
        // so it never degrades the report on its own.
        let message = match mode.as_str() {
            "wal" | "memory" => mode.clone(),
            other => format!("{other} (not WAL: readers block writers)"),
        };
        checks.push(CheckResult::new(names::JOURNAL_MODE, CheckStatus::Pass, false).with_message(message));
    }
    if let Some(result) = &observed.quick_check {
        let status = if result == "ok" { CheckStatus::Pass } else { CheckStatus::Fail };
        checks.push(CheckResult::new(names::INTEGRITY, status, true).with_message(result.clone()));
    }
    if let Some(size) = observed.size_bytes {
        checks.push(CheckResult::new(names::SIZE, CheckStatus::Pass, false).observed(size as f64, "bytes"));
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::HealthStatus;

    fn answered(ms: u64) -> RoundTrip {
        RoundTrip::Answered(Duration::from_millis(ms))
    }

    #[test]
    fn postgres_primary_is_healthy_standby_is_degraded() {
        let t = ProbeThresholds::default();
        let primary =
            PostgresObservations { round_trip: answered(2), in_recovery: Some(false), read_only: Some(false) };
        assert_eq!(HealthStatus::aggregate(&postgres_checks(&primary, &t)), HealthStatus::Healthy);
        let standby = PostgresObservations { in_recovery: Some(true), ..primary.clone() };
        assert_eq!(HealthStatus::aggregate(&postgres_checks(&standby, &t)), HealthStatus::Degraded);
        let read_only = PostgresObservations { read_only: Some(true), ..primary };
        assert_eq!(HealthStatus::aggregate(&postgres_checks(&read_only, &t)), HealthStatus::Degraded);
    }

    #[test]
    fn slow_is_degraded_and_timeout_is_unhealthy() {
        let t = ProbeThresholds::default();
        let slow = round_trip_check(&answered(300), &t);
        assert_eq!(slow.status, CheckStatus::Warn);
        assert_eq!(HealthStatus::aggregate(&[slow]), HealthStatus::Degraded);
        let hung = round_trip_check(&RoundTrip::TimedOut, &t);
        assert_eq!(hung.message.as_deref(), Some("timed out after 5000 ms"));
        assert_eq!(HealthStatus::aggregate(&[hung]), HealthStatus::Unhealthy);
    }

    #[test]
    fn sqlite_corruption_fails_and_rollback_journal_is_informational() {
        let t = ProbeThresholds::default();
        let good = SqliteObservations {
            round_trip: answered(1),
            journal_mode: Some("wal".into()),
            quick_check: Some("ok".into()),
            size_bytes: Some(4096),
        };
        assert_eq!(HealthStatus::aggregate(&sqlite_checks(&good, &t)), HealthStatus::Healthy);
        let delete = SqliteObservations { journal_mode: Some("delete".into()), ..good.clone() };
        let checks = sqlite_checks(&delete, &t);
        assert_eq!(HealthStatus::aggregate(&checks), HealthStatus::Healthy);
        assert!(checks.iter().any(|c| c.message.as_deref() == Some("delete (not WAL: readers block writers)")));
        let corrupt = SqliteObservations { quick_check: Some("*** in database main ***".into()), ..good };
        assert_eq!(HealthStatus::aggregate(&sqlite_checks(&corrupt, &t)), HealthStatus::Unhealthy);
    }
}
