//! The query function a host hands to health-check plugins.

use core::time::Duration;

/// One value of a result row.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    /// SQL `NULL`.
    Null,
    /// An integer.
    Integer(i64),
    /// A floating-point number.
    Real(f64),
    /// Text (also how a host may pass types it does not map, such as timestamps).
    Text(String),
    /// Bytes.
    Blob(Vec<u8>),
}

/// The result of a query: column names and rows of values in column order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Rows {
    /// Column names.
    pub columns: Vec<String>,
    /// The rows.
    pub rows: Vec<Vec<SqlValue>>,
}

impl Rows {
    /// The bytes this result carries across the boundary: every column name, text and blob,
    /// and eight bytes per other value.
    pub fn byte_size(&self) -> usize {
        let columns: usize = self.columns.iter().map(String::len).sum();
        let values: usize = self
            .rows
            .iter()
            .flatten()
            .map(|value| match value {
                SqlValue::Text(text) => text.len(),
                SqlValue::Blob(bytes) => bytes.len(),
                SqlValue::Null | SqlValue::Integer(_) | SqlValue::Real(_) => 8,
            })
            .sum();
        columns.saturating_add(values)
    }
}

/// Why a query of a health-check plugin did not return rows.
///
/// Only [`QueryFailure::Failed`] reaches the plugin, as its `query` import's error string: a
/// check may report a database error. A timeout or an oversized result is the plugin's doing
/// and faults the check instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryFailure {
    /// The query failed or was refused; the plugin gets this message.
    Failed(String),
    /// The query ran past its timeout and was cancelled.
    TimedOut(String),
    /// The result was larger than the host's byte limit.
    TooLarge(String),
}

impl From<String> for QueryFailure {
    fn from(message: String) -> Self {
        Self::Failed(message)
    }
}

/// Runs one query for a health-check plugin.
///
/// The host that owns the database implements this: it must run the statement read-only, cap
/// the rows and their bytes, and honour `timeout` itself (the plugin host passes the smaller of
/// what the plugin asked for and what is left of the check's time).
pub trait QueryFn: Send + Sync {
    /// Runs `sql` with positional text parameters.
    fn query(&self, sql: &str, params: &[String], timeout: Duration) -> Result<Rows, QueryFailure>;
}

impl<F, E> QueryFn for F
where
    F: Fn(&str, &[String], Duration) -> Result<Rows, E> + Send + Sync,
    E: Into<QueryFailure>,
{
    fn query(&self, sql: &str, params: &[String], timeout: Duration) -> Result<Rows, QueryFailure> {
        self(sql, params, timeout).map_err(Into::into)
    }
}
