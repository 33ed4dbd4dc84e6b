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

/// Runs one query for a health-check plugin.
///
/// The host that owns the database implements this: it must run the statement read-only, cap
/// the rows and honour `timeout` itself, because a plugin blocked in a host call cannot be
/// interrupted by its deadline. Errors are plain messages: the plugin only reports them.
pub trait QueryFn: Send + Sync {
    /// Runs `sql` with positional text parameters.
    fn query(&self, sql: &str, params: &[String], timeout: Duration) -> Result<Rows, String>;
}

impl<F> QueryFn for F
where
    F: Fn(&str, &[String], Duration) -> Result<Rows, String> + Send + Sync,
{
    fn query(&self, sql: &str, params: &[String], timeout: Duration) -> Result<Rows, String> {
        self(sql, params, timeout)
    }
}
