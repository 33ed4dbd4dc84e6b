//! `query`: one read-only statement, at most `max_rows` rows, rows as JSON objects.
//!
//! Read-only twice over: the file is opened with `mode=ro` and the connection has
//! `PRAGMA query_only = 1`. The row cap is enforced by SQLite where the statement is a query
//! (`SELECT`, `WITH`, `VALUES` are wrapped as `SELECT * FROM (…) LIMIT cap + 1`), so a large
//! table is never read whole; anything else (`PRAGMA`, `EXPLAIN`) is capped after fetching.

use dbguard_core::{DbConfig, ErrorClass};
use sea_orm::{ConnectionTrait, DatabaseConnection, QueryResult};
use serde_json::{Map, Value, json};

use crate::db::{Target, sql};
use crate::driver::{Clock, Retrier, Stopwatch};
use crate::error::{DbFailure, HostError};

/// Runs `statement` read-only and returns
/// `{"columns", "rows", "row_count", "truncated", "max_rows", "elapsed_ms"}`.
pub(crate) fn run(
    config: &DbConfig,
    target: &Target,
    clock: Clock,
    statement: &str,
    max_rows: u32,
) -> Result<Value, HostError> {
    let mut retrier = Retrier::new(clock, config.retry);
    let conn = target.open_read_only(&mut retrier)?;
    retrier.run(|| conn.execute_unprepared("PRAGMA query_only = 1")).map_err(HostError::Database)?;

    let started = Stopwatch::start();
    let cap = usize::try_from(max_rows).unwrap_or(usize::MAX);
    let rows = match capped(statement, max_rows) {
        Some(wrapped) => match fetch(&conn, &mut retrier, &wrapped) {
            // The wrapper is only an optimisation: if the statement does not fit in a subquery,
            // run it as written so the caller sees SQLite's error about *their* text.
            Err(failure) if failure.classified.class == ErrorClass::Syntax => fetch(&conn, &mut retrier, statement),
            other => other,
        },
        None => fetch(&conn, &mut retrier, statement),
    }
    .map_err(blame)?;
    let elapsed_ms = started.elapsed_ms();
    let _ = conn.close();

    let columns = rows.first().map(QueryResult::column_names).unwrap_or_default();
    let truncated = rows.len() > cap;
    let rows: Vec<Value> = rows.iter().take(cap).map(row_to_json).collect();
    Ok(json!({
        "columns": columns,
        "row_count": rows.len(),
        "rows": rows,
        "truncated": truncated,
        "max_rows": max_rows,
        "elapsed_ms": elapsed_ms,
    }))
}

fn fetch(conn: &DatabaseConnection, retrier: &mut Retrier, text: &str) -> Result<Vec<QueryResult>, DbFailure> {
    retrier.run(|| conn.query_all_raw(sql(text)))
}

/// Errors the caller's statement caused are usage errors (exit 64); the rest are the database's.
fn blame(failure: DbFailure) -> HostError {
    match failure.classified.class {
        ErrorClass::Syntax
        | ErrorClass::PermissionDenied
        | ErrorClass::StorageReadOnly
        | ErrorClass::Data
        | ErrorClass::Constraint => HostError::Statement(failure),
        _ => HostError::Database(failure),
    }
}

/// The statement wrapped so SQLite stops after `max_rows + 1` rows (one more than shown, to
/// tell whether rows were cut), or `None` when it is not a plain query.
fn capped(statement: &str, max_rows: u32) -> Option<String> {
    let keyword: String = skip_comments(statement).chars().take_while(char::is_ascii_alphabetic).collect();
    if !["select", "with", "values"].iter().any(|k| keyword.eq_ignore_ascii_case(k)) {
        return None;
    }
    let body = statement.trim_end().trim_end_matches(';').trim_end();
    // Newlines so that a trailing `-- comment` cannot swallow the closing parenthesis.
    Some(format!("SELECT * FROM (\n{body}\n) LIMIT {}", u64::from(max_rows) + 1))
}

/// The statement after leading whitespace and SQL comments.
fn skip_comments(mut text: &str) -> &str {
    loop {
        text = text.trim_start();
        if let Some(rest) = text.strip_prefix("--") {
            text = rest.split_once('\n').map_or("", |(_, after)| after);
        } else if let Some(rest) = text.strip_prefix("/*") {
            text = rest.split_once("*/").map_or("", |(_, after)| after);
        } else {
            return text;
        }
    }
}

/// One row as a JSON object in column order. SQLite's storage classes map to JSON directly;
/// blobs become `{"$blob": "<hex>"}` so they cannot be mistaken for text.
fn row_to_json(row: &QueryResult) -> Value {
    let mut object = Map::new();
    for (index, name) in row.column_names().into_iter().enumerate() {
        object.insert(name, cell(row, index));
    }
    Value::Object(object)
}

fn cell(row: &QueryResult, index: usize) -> Value {
    // Each getter accepts exactly one storage class (and NULL), so trying them in turn reads
    // the value's own type.
    if let Ok(value) = row.try_get_by_index::<Option<i64>>(index) {
        return value.map_or(Value::Null, Value::from);
    }
    if let Ok(value) = row.try_get_by_index::<Option<f64>>(index) {
        return value.map_or(Value::Null, Value::from);
    }
    if let Ok(value) = row.try_get_by_index::<Option<String>>(index) {
        return value.map_or(Value::Null, Value::from);
    }
    if let Ok(Some(bytes)) = row.try_get_by_index::<Option<Vec<u8>>>(index) {
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        return json!({ "$blob": hex });
    }
    Value::Null
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_queries_only() {
        assert_eq!(capped("SELECT 1;", 5).as_deref(), Some("SELECT * FROM (\nSELECT 1\n) LIMIT 6"));
        assert!(capped("  -- hi\n/* x */ with t as (select 1) select * from t", 5).is_some());
        assert!(capped("values (1)", 5).is_some());
        assert_eq!(capped("PRAGMA table_info(t)", 5), None);
        assert_eq!(capped("EXPLAIN SELECT 1", 5), None);
        assert_eq!(capped("/* unterminated", 5), None);
    }
}
