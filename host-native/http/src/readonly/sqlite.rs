//! The SQLite side of the read-only query service: a read-only connection with `query_only`,
//! no `ATTACH`, a length limit and an interrupt at the timeout.

use std::path::PathBuf;

use serde_json::{Map, Value};

use super::{QueryError, QueryLimits, QueryRequest, ResultBytes, Rows, hex};

/// The longest string or blob a SQLite statement of the test endpoint may build
/// (`SQLITE_LIMIT_LENGTH`). SQLite checks it as the value is made, so `randomblob(1e9)` fails
/// at once instead of allocating a gigabyte that the timeout's interrupt cannot stop.
pub const SQLITE_MAX_VALUE_BYTES: i32 = 1024 * 1024;

pub(super) async fn run_sqlite(
    path: PathBuf,
    request: QueryRequest,
    limits: QueryLimits,
    max_bytes: usize,
) -> Result<Rows, QueryError> {
    use rusqlite::{Connection, OpenFlags, limits::Limit};

    let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(|err| QueryError::Unavailable(format!("cannot open the database read-only: {err}")))?;
    let setup = conn
        .set_limit(Limit::SQLITE_LIMIT_ATTACHED, 0)
        .and_then(|_| conn.set_limit(Limit::SQLITE_LIMIT_LENGTH, SQLITE_MAX_VALUE_BYTES))
        .and_then(|_| conn.execute_batch("PRAGMA query_only = 1; PRAGMA trusted_schema = 0;"))
        .and_then(|_| conn.busy_timeout(limits.timeout));
    setup.map_err(|err| QueryError::Internal(format!("cannot prepare the read-only connection: {err}")))?;
    let interrupt = conn.get_interrupt_handle();
    let worker = tokio::task::spawn_blocking(move || sqlite_query(&conn, &request, limits, max_bytes));
    let timer = tokio::spawn(async move {
        tokio::time::sleep(limits.timeout).await;
        interrupt.interrupt();
    });
    let result = worker.await;
    timer.abort();
    result.map_err(|err| QueryError::Internal(format!("the query worker failed: {err}")))?
}

fn sqlite_query(
    conn: &rusqlite::Connection,
    request: &QueryRequest,
    limits: QueryLimits,
    max_bytes: usize,
) -> Result<Rows, QueryError> {
    let mut statement = conn.prepare(&request.query).map_err(|err| sqlite_error(&err, limits))?;
    if !statement.readonly() {
        return Err(QueryError::Forbidden(
            "write refused: the statement would modify the database; the test endpoint runs read-only statements only"
                .into(),
        ));
    }
    let expected = statement.parameter_count();
    if expected != request.params.len() {
        return Err(QueryError::Invalid(format!(
            "the statement has {expected} parameters but {} were given",
            request.params.len()
        )));
    }
    for (index, param) in request.params.iter().enumerate() {
        let value = match param {
            Value::Null => rusqlite::types::Value::Null,
            Value::Bool(b) => rusqlite::types::Value::Integer(i64::from(*b)),
            Value::Number(n) => match (n.as_i64(), n.as_f64()) {
                (Some(i), _) => rusqlite::types::Value::Integer(i),
                (None, Some(f)) => rusqlite::types::Value::Real(f),
                _ => return Err(QueryError::Invalid(format!("parameter {n} is out of range"))),
            },
            Value::String(s) => rusqlite::types::Value::Text(s.clone()),
            other => rusqlite::types::Value::Text(other.to_string()),
        };
        statement.raw_bind_parameter(index + 1, value).map_err(|err| sqlite_error(&err, limits))?;
    }
    let columns: Vec<String> = statement.column_names().into_iter().map(str::to_owned).collect();
    let max = usize::try_from(limits.max_rows).unwrap_or(usize::MAX);
    let mut rows = Vec::new();
    let mut truncated = false;
    let mut bytes = ResultBytes::new(max_bytes);
    let mut cursor = statement.raw_query();
    while let Some(row) = cursor.next().map_err(|err| sqlite_error(&err, limits))? {
        if rows.len() == max {
            truncated = true;
            break;
        }
        let mut object = Map::new();
        for (index, name) in columns.iter().enumerate() {
            let value_bytes = match row.get_ref(index) {
                Ok(rusqlite::types::ValueRef::Text(b) | rusqlite::types::ValueRef::Blob(b)) => b.len(),
                _ => 8,
            };
            bytes.add(value_bytes)?;
            let value = match row.get_ref(index) {
                Ok(rusqlite::types::ValueRef::Null) | Err(_) => Value::Null,
                Ok(rusqlite::types::ValueRef::Integer(i)) => Value::from(i),
                Ok(rusqlite::types::ValueRef::Real(f)) => Value::from(f),
                Ok(rusqlite::types::ValueRef::Text(t)) => Value::from(String::from_utf8_lossy(t).into_owned()),
                Ok(rusqlite::types::ValueRef::Blob(b)) => Value::from(format!("\\x{}", hex(b))),
            };
            object.insert(name.clone(), value);
        }
        rows.push(object);
    }
    Ok((columns, rows, truncated))
}

fn sqlite_error(err: &rusqlite::Error, limits: QueryLimits) -> QueryError {
    use rusqlite::ErrorCode;
    let text = err.to_string();
    match err {
        rusqlite::Error::MultipleStatement => {
            QueryError::Invalid("one statement only: the text holds more than one statement".into())
        }
        rusqlite::Error::SqliteFailure(failure, _) => match failure.code {
            ErrorCode::OperationInterrupted => {
                QueryError::Timeout(format!("interrupted at the {} ms timeout", limits.timeout.as_millis()))
            }
            ErrorCode::ReadOnly | ErrorCode::AuthorizationForStatementDenied | ErrorCode::PermissionDenied => {
                QueryError::Forbidden(format!("write refused: {text}"))
            }
            ErrorCode::TooBig => QueryError::Invalid(format!(
                "a value would exceed the test endpoint's limit of {SQLITE_MAX_VALUE_BYTES} bytes: {text}"
            )),
            ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => {
                QueryError::Timeout(format!("the database stayed locked past the timeout: {text}"))
            }
            // Extension loading is off on this connection; SQLite says so as SQLITE_ERROR.
            _ if text.contains("not authorized") => QueryError::Forbidden(format!("refused: {text}")),
            _ if text.contains("too many attached databases") => {
                QueryError::Forbidden("ATTACH is refused: the test endpoint reads only the configured database".into())
            }
            _ => QueryError::Invalid(text),
        },
        _ => QueryError::Invalid(text),
    }
}
