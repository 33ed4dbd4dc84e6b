//! A table's row count and freshness: fails when the table is missing or unreadable, warns
//! when it has fewer than [`MIN_ROWS`] rows or its newest row is older than [`MAX_AGE_SECS`].
//!
//! The freshness column holds Unix seconds on SQLite and a `timestamptz` on PostgreSQL; the
//! age is computed by the database's own clock so host and database clocks need not agree.

use core::time::Duration;

use dbguard_plugin_sdk::{CheckContext, CheckResult, CheckStatus, HealthCheckPlugin, export_health_check, query};

/// The table to watch.
pub const TABLE: &str = "events";
/// Its freshness column.
pub const COLUMN: &str = "created_at";
/// Fewer rows than this is a warning.
pub const MIN_ROWS: i64 = 1;
/// A newest row older than this many seconds is a warning.
pub const MAX_AGE_SECS: f64 = 3600.0;
const NAME: &str = "table:freshness";
const TIMEOUT: Duration = Duration::from_secs(2);

struct TableFreshness;

fn sql(database_type: &str) -> String {
    if database_type == "postgres" {
        format!("SELECT count(*), EXTRACT(EPOCH FROM (now() - MAX({COLUMN})))::float8 FROM {TABLE}")
    } else {
        format!("SELECT COUNT(*), CAST(strftime('%s', 'now') AS INTEGER) - MAX({COLUMN}) FROM {TABLE}")
    }
}

impl HealthCheckPlugin for TableFreshness {
    fn check(ctx: &CheckContext) -> CheckResult {
        let rows = match query(&sql(&ctx.database_type), &[], TIMEOUT) {
            Ok(rows) => rows,
            Err(error) => {
                let mut result = CheckResult::new(NAME, CheckStatus::Fail, false);
                result.message = Some(format!("cannot read {TABLE}: {error}"));
                return result;
            }
        };
        let count = rows.get(0, 0).and_then(|v| v.as_i64()).unwrap_or(0);
        let age = rows.get(0, 1).and_then(|v| v.as_f64());
        let (status, message) = match age {
            _ if count < MIN_ROWS => {
                (CheckStatus::Warn, format!("{TABLE} has {count} rows, expected at least {MIN_ROWS}"))
            }
            Some(age) if age > MAX_AGE_SECS => {
                (CheckStatus::Warn, format!("newest {TABLE} row is {age:.0} s old (limit {MAX_AGE_SECS:.0} s)"))
            }
            Some(age) => (CheckStatus::Pass, format!("{count} rows, newest {age:.0} s old")),
            None => (CheckStatus::Warn, format!("{TABLE} has {count} rows but no {COLUMN} value")),
        };
        let mut result = CheckResult::new(NAME, status, false);
        if let Some(age) = age {
            result = result.observed(age.max(0.0), "s");
        }
        result.message = Some(message);
        result
    }
}

export_health_check!(TableFreshness);
