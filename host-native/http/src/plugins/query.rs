//! The `query` import of health-check plugins, served by the read-only query service.

use std::time::Duration;

use serde_json::Value;

use super::{PLUGIN_MAX_ROWS, QueryFailure, QueryFn, Rows, SqlValue};
use crate::readonly::{QueryError, QueryRequest, ReadOnlyQuery, TIMEOUT_MS_CAP};

/// The `query` import of health-check plugins: [`ReadOnlyQuery`] driven from the plugin's
/// blocking thread.
pub(super) struct PluginQuery {
    pub(super) runner: ReadOnlyQuery,
    pub(super) runtime: tokio::runtime::Handle,
    pub(super) max_timeout: Duration,
}

impl QueryFn for PluginQuery {
    fn query(&self, sql: &str, params: &[String], timeout: Duration) -> Result<Rows, QueryFailure> {
        let timeout = timeout.min(self.max_timeout).max(Duration::from_millis(1));
        let request = QueryRequest {
            query: sql.to_owned(),
            params: params.iter().cloned().map(Value::String).collect(),
            max_rows: Some(PLUGIN_MAX_ROWS),
            timeout_ms: Some(u64::try_from(timeout.as_millis()).unwrap_or(TIMEOUT_MS_CAP)),
        };
        // Plugins run on the plugin host's own threads, outside the runtime, where waiting on
        // it is allowed; the runner's own timeout bounds the wait.
        let answer = self.runtime.block_on(self.runner.run(&request)).map_err(|error| {
            let message = format!("{}: {error}", error.code());
            match error {
                QueryError::Timeout(_) => QueryFailure::TimedOut(message),
                QueryError::TooLarge(_) => QueryFailure::TooLarge(message),
                _ => QueryFailure::Failed(message),
            }
        })?;
        let rows = answer
            .rows
            .iter()
            .map(|row| answer.columns.iter().map(|column| sql_value(row.get(column))).collect())
            .collect();
        Ok(Rows { columns: answer.columns, rows })
    }
}

fn sql_value(value: Option<&Value>) -> SqlValue {
    match value {
        None | Some(Value::Null) => SqlValue::Null,
        Some(Value::Bool(b)) => SqlValue::Integer(i64::from(*b)),
        Some(Value::Number(n)) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => SqlValue::Integer(i),
            (None, Some(f)) => SqlValue::Real(f),
            (None, None) => SqlValue::Text(n.to_string()),
        },
        Some(Value::String(s)) => SqlValue::Text(s.clone()),
        Some(other) => SqlValue::Text(other.to_string()),
    }
}
