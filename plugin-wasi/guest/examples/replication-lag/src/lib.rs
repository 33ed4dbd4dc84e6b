//! PostgreSQL replication lag.
//!
//! On a standby: the time since the last replayed transaction
//! (`now() - pg_last_xact_replay_timestamp()`). On a primary: the largest `replay_lag` among
//! its replicas, and a pass when it has none. Warns above [`WARN_AFTER_SECS`], fails above
//! [`FAIL_AFTER_SECS`]. On other databases it passes as not applicable.

use core::time::Duration;

use dbguard_plugin_sdk::{
    CheckContext, CheckResult, CheckStatus, HealthCheckPlugin, LogLevel, Rows, export_health_check, log_health, query,
};

/// Lag above this many seconds is a warning.
pub const WARN_AFTER_SECS: f64 = 10.0;
/// Lag above this many seconds is a failure.
pub const FAIL_AFTER_SECS: f64 = 300.0;
const NAME: &str = "postgres:replication_lag";
const TIMEOUT: Duration = Duration::from_secs(2);

struct ReplicationLag;

fn single(rows: &Rows) -> Option<&dbguard_plugin_sdk::SqlValue> {
    rows.get(0, 0)
}

fn as_bool(rows: &Rows) -> Option<bool> {
    use dbguard_plugin_sdk::SqlValue;
    match single(rows)? {
        SqlValue::Integer(v) => Some(*v != 0),
        SqlValue::Text(t) => match t.trim() {
            "t" | "true" | "1" | "on" => Some(true),
            "f" | "false" | "0" | "off" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

fn judge(lag_secs: f64, role: &str) -> CheckResult {
    let status = if lag_secs > FAIL_AFTER_SECS {
        CheckStatus::Fail
    } else if lag_secs > WARN_AFTER_SECS {
        CheckStatus::Warn
    } else {
        CheckStatus::Pass
    };
    let mut result = CheckResult::new(NAME, status, false).observed(lag_secs, "s");
    result.message = Some(format!("{role}: replication lag {lag_secs:.1} s"));
    result
}

fn fail(message: String) -> CheckResult {
    let mut result = CheckResult::new(NAME, CheckStatus::Fail, false);
    result.message = Some(message);
    result
}

fn run() -> Result<CheckResult, String> {
    let in_recovery = query("SELECT pg_is_in_recovery()", &[], TIMEOUT)?;
    match as_bool(&in_recovery) {
        Some(true) => {
            let rows =
                query("SELECT EXTRACT(EPOCH FROM (now() - pg_last_xact_replay_timestamp()))::float8", &[], TIMEOUT)?;
            match single(&rows).and_then(|v| v.as_f64()) {
                Some(lag) => Ok(judge(lag.max(0.0), "standby")),
                None => {
                    let mut result = CheckResult::new(NAME, CheckStatus::Warn, false);
                    result.message = Some("standby has not replayed any transaction yet".into());
                    Ok(result)
                }
            }
        }
        Some(false) => {
            let rows = query(
                "SELECT count(*), COALESCE(MAX(EXTRACT(EPOCH FROM replay_lag)), 0)::float8 FROM pg_stat_replication",
                &[],
                TIMEOUT,
            )?;
            let replicas = rows.get(0, 0).and_then(|v| v.as_i64()).unwrap_or(0);
            if replicas == 0 {
                let mut result = CheckResult::new(NAME, CheckStatus::Pass, false).observed(0.0, "s");
                result.message = Some("primary with no replicas".into());
                return Ok(result);
            }
            let lag = rows.get(0, 1).and_then(|v| v.as_f64()).unwrap_or(0.0);
            Ok(judge(lag.max(0.0), &format!("primary with {replicas} replica(s)")))
        }
        None => Err("pg_is_in_recovery() returned no boolean".into()),
    }
}

impl HealthCheckPlugin for ReplicationLag {
    fn check(ctx: &CheckContext) -> CheckResult {
        if ctx.database_type != "postgres" {
            let mut result = CheckResult::new(NAME, CheckStatus::Pass, false);
            result.message = Some(format!("not applicable to {}", ctx.database_type));
            return result;
        }
        run().unwrap_or_else(|error| {
            log_health(LogLevel::Warn, &format!("replication lag check failed: {error}"));
            fail(error)
        })
    }
}

export_health_check!(ReplicationLag);
