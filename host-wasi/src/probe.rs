//! The SQLite health probe. This module only observes; core's `sqlite_checks` and
//! `HealthReport::from_checks` judge, so the WASI host and the native host report the same
//! checks for the same database.

use std::time::Duration;

use dbguard_core::health::probe::{RoundTrip, SqliteObservations, sqlite_checks};
use dbguard_core::{DatabaseType, DbConfig, HealthReport, PoolStatus};
use sea_orm::{ConnectionTrait, DatabaseConnection};

use crate::db::{Target, scalar, sql};
use crate::driver::{Clock, Retrier, Stopwatch, wall_clock_rfc3339};
use crate::error::HostError;

/// What one `check` produced: always a report, plus the error that made it unhealthy when the
/// database could not even be opened.
#[derive(Debug)]
pub(crate) struct CheckOutcome {
    /// The report to print.
    pub(crate) report: HealthReport,
    /// Why the database could not be opened, for stderr.
    pub(crate) error: Option<HostError>,
}

/// Probes the configured database: open read-only, `SELECT 1` (timed), `sqlite_version()`,
/// `PRAGMA journal_mode`, `PRAGMA quick_check`, `page_count * page_size`.
pub(crate) fn check(config: &DbConfig, target: &Target, clock: Clock) -> CheckOutcome {
    let timestamp = wall_clock_rfc3339();
    let total = Stopwatch::start();
    let mut retrier = Retrier::new(clock, config.retry);
    let (observations, version, open, error) = match target.open_read_only(&mut retrier) {
        Ok(conn) => {
            let (observations, version) = observe(&conn, &mut retrier, config.health.thresholds.timeout);
            let _ = conn.close();
            (observations, version, 1, None)
        }
        Err(err) => {
            let observations = SqliteObservations {
                round_trip: RoundTrip::Failed(err.to_string()),
                journal_mode: None,
                quick_check: None,
                size_bytes: None,
            };
            (observations, None, 0, Some(err))
        }
    };
    let checks = sqlite_checks(&observations, &config.health.thresholds);
    // One connection, no pool: open and idle once the probe is done, or none at all.
    let pool_status = PoolStatus::from_counts(1, 0, open, open);
    let report =
        HealthReport::from_checks(DatabaseType::Sqlite, version, timestamp, total.elapsed_ms(), pool_status, checks);
    CheckOutcome { report, error }
}

/// Runs the probe's statements on an open connection. A statement that fails leaves its
/// observation empty, except `quick_check`, whose failure is the observation (a file that is
/// not a database fails there, since `SELECT 1` never reads the file).
fn observe(
    conn: &DatabaseConnection,
    retrier: &mut Retrier,
    timeout: Duration,
) -> (SqliteObservations, Option<String>) {
    let round_trip = round_trip(conn, retrier, timeout);
    let answered = matches!(round_trip, RoundTrip::Answered(_));
    let mut observations = SqliteObservations { round_trip, journal_mode: None, quick_check: None, size_bytes: None };
    if !answered {
        return (observations, None);
    }
    let version = scalar::<String>(conn, retrier, "SELECT sqlite_version()").ok().flatten();
    observations.journal_mode =
        scalar::<String>(conn, retrier, "PRAGMA journal_mode").ok().flatten().map(|mode| mode.to_ascii_lowercase());
    observations.quick_check = match scalar::<String>(conn, retrier, "PRAGMA quick_check") {
        Ok(first_row) => first_row,
        Err(failure) => Some(failure.to_string()),
    };
    observations.size_bytes =
        scalar::<i64>(conn, retrier, "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()")
            .ok()
            .flatten()
            .and_then(|bytes| u64::try_from(bytes).ok());
    (observations, version)
}

/// Times `SELECT 1`. Only the attempt that answered counts, not retry sleeps. WASI gives no
/// way to interrupt a running statement, so the timeout is judged after the fact.
fn round_trip(conn: &DatabaseConnection, retrier: &mut Retrier, timeout: Duration) -> RoundTrip {
    let mut last_attempt = Duration::ZERO;
    let answered = retrier.run(|| {
        let attempt = Stopwatch::start();
        let result = conn.query_one_raw(sql("SELECT 1"));
        last_attempt = attempt.elapsed();
        result
    });
    match answered {
        Ok(_) if last_attempt > timeout => RoundTrip::TimedOut,
        Ok(_) => RoundTrip::Answered(last_attempt),
        Err(failure) => RoundTrip::Failed(failure.to_string()),
    }
}
