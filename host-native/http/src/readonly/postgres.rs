//! The PostgreSQL side of the read-only query service: a least-privilege login, a `READ ONLY`
//! transaction that is always rolled back, and rows as JSON.

use std::str::FromStr;

use dbguard_core::{DatabaseUrl, SslMode};
use futures::TryStreamExt;
use serde_json::{Map, Value};
use sqlx::postgres::{PgArguments, PgConnectOptions, PgConnection, PgRow, PgSslMode};
use sqlx::{Arguments, Column, Connection, Executor, Row, TypeInfo, ValueRef};

use super::{
    AttemptError, MAX_CONCURRENT, QueryError, QueryLimits, QueryRequest, ReadOnlyQuery, ResultBytes, Rows,
    SECRET_CATALOGS, hex,
};

impl ReadOnlyQuery {
    pub(super) async fn run_postgres(
        &self,
        options: &PgConnectOptions,
        dedicated: bool,
        request: &QueryRequest,
        limits: QueryLimits,
    ) -> Result<Rows, AttemptError> {
        let idle = match &self.idle {
            Some(idle) => idle.lock().await.pop(),
            None => None,
        };
        let reused = idle.is_some();
        let mut conn = match idle {
            Some(conn) => conn,
            None => PgConnection::connect_with(options).await.map_err(|err| self.pg_error(err))?,
        };
        let mut result = self.pg_session(&mut conn, dedicated, request, limits).await;
        if reused && matches!(result, Err(AttemptError::Unreachable { .. })) {
            // A kept connection the server has since closed: one fresh try.
            conn = PgConnection::connect_with(options).await.map_err(|err| self.pg_error(err))?;
            result = self.pg_session(&mut conn, dedicated, request, limits).await;
        }
        match &result {
            // A cleanly finished statement: roll back, then keep the connection or say goodbye.
            Ok((_, _, false)) => {
                let reset = conn.execute("ROLLBACK").await.is_ok();
                match &self.idle {
                    Some(idle) if reset && conn.execute("DISCARD ALL").await.is_ok() => {
                        let mut idle = idle.lock().await;
                        if idle.len() < MAX_CONCURRENT {
                            idle.push(conn);
                        } else {
                            drop(idle);
                            let _ = conn.close().await;
                        }
                    }
                    _ => {
                        let _ = conn.close().await;
                    }
                }
            }
            // Truncated or failed: the server may still be sending rows; dropping the socket
            // aborts the transaction without draining them (the server rolls back on EOF).
            _ => drop(conn),
        }
        result
    }

    async fn pg_session(
        &self,
        conn: &mut PgConnection,
        dedicated: bool,
        request: &QueryRequest,
        limits: QueryLimits,
    ) -> Result<Rows, AttemptError> {
        // Everything runs in one read-only transaction on unnamed statements: behind a transaction
        // pooler (PgBouncer) a transaction keeps its server connection, while a named statement
        // would be looked for on whichever server connection the next transaction gets.
        conn.execute("BEGIN READ ONLY").await.map_err(|err| self.pg_error(err))?;
        let (user, superuser, program, files, secrets): (String, bool, bool, bool, Vec<String>) = sqlx::query_as(
            "SELECT current_user::text, r.rolsuper, \
                    pg_has_role(current_user, 'pg_execute_server_program', 'MEMBER'), \
                    pg_has_role(current_user, 'pg_write_server_files', 'MEMBER'), \
                    ARRAY(SELECT c FROM unnest($1::text[]) c \
                          WHERE has_table_privilege(('pg_catalog.' || c)::regclass, 'SELECT')) \
             FROM pg_roles r WHERE r.rolname = current_user",
        )
        .bind(&SECRET_CATALOGS[..])
        .persistent(false)
        .fetch_one(&mut *conn)
        .await
        .map_err(|err| self.pg_error(err))?;
        let source = if dedicated { "DB_TEST_URL" } else { "DATABASE_URL" };
        if !superuser && !secrets.is_empty() {
            return Err(AttemptError::Refused(QueryError::SecretCatalog(format!(
                "the test endpoint refuses to run as {source}'s user \"{user}\", which can read {}: those catalogs hold password hashes and foreign-server credentials. Use a login without pg_read_all_data, e.g. CREATE ROLE dbguard_ro LOGIN PASSWORD '…' IN ROLE pg_monitor, plus GRANT USAGE ON SCHEMA app TO dbguard_ro and GRANT SELECT ON ALL TABLES IN SCHEMA app TO dbguard_ro",
                secrets.join(", ")
            ))));
        }
        if superuser || program || files {
            let what = if superuser {
                "is a superuser".to_owned()
            } else {
                "may run server programs or write server files (pg_execute_server_program / pg_write_server_files)"
                    .to_owned()
            };
            return Err(AttemptError::Refused(QueryError::Forbidden(format!(
                "the test endpoint refuses to run as {source}'s user \"{user}\", which {what}: a read-only transaction does not stop such a login from running programs or changing roles. Configure DB_TEST_URL with a least-privilege login, e.g. CREATE ROLE dbguard_ro LOGIN PASSWORD '…' IN ROLE pg_monitor, plus SELECT granted on the application's schemas"
            ))));
        }
        let timeout_ms = limits.timeout.as_millis().to_string();
        sqlx::query(
            "SELECT set_config('statement_timeout', $1, true), set_config('lock_timeout', $1, true), \
                    set_config('idle_in_transaction_session_timeout', $1, true)",
        )
        .bind(&timeout_ms)
        .persistent(false)
        .execute(&mut *conn)
        .await
        .map_err(|err| self.pg_error(err))?;

        let mut args = PgArguments::default();
        for param in &request.params {
            bind_pg(&mut args, param)?;
        }
        let max = usize::try_from(limits.max_rows).unwrap_or(usize::MAX);
        let mut rows = Vec::new();
        let mut columns: Vec<String> = Vec::new();
        let mut truncated = false;
        let mut bytes = ResultBytes::new(self.max_result_bytes);
        {
            // The text is the operator's by design; it runs read-only, as a least-privilege login,
            // and its parameters are bound, never spliced.
            let sql = sqlx::AssertSqlSafe(request.query.clone());
            let mut stream = sqlx::query_with(sql, args).persistent(false).fetch(&mut *conn);
            while let Some(row) = stream.try_next().await.map_err(|err| self.pg_error(err))? {
                if rows.len() == max {
                    truncated = true;
                    break;
                }
                let row_bytes: usize = (0..row.len())
                    .filter_map(|index| row.try_get_raw(index).ok())
                    .filter_map(|raw| raw.as_bytes().ok().map(<[u8]>::len))
                    .sum();
                bytes.add(row_bytes)?;
                if columns.is_empty() {
                    columns = row.columns().iter().map(|c| c.name().to_owned()).collect();
                }
                rows.push(pg_row(&row));
            }
        }
        Ok((columns, rows, truncated))
    }

    /// The failure as the caller sees it. A server that cannot be reached or will not serve
    /// this login or database (08, 53, 57P, 28, 3D000, I/O) is [`AttemptError::Unreachable`],
    /// for the retry policy to judge by its class; everything else is refused for good.
    fn pg_error(&self, err: sqlx::Error) -> AttemptError {
        let text = self.redactor.scrub(&err.to_string());
        let refused = match &err {
            sqlx::Error::Database(db) => {
                let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
                let message = format!("{} (SQLSTATE {code})", self.redactor.scrub(db.message()));
                match code.as_str() {
                    "25006" => QueryError::Forbidden(format!("write refused: {message}")),
                    "42501" => QueryError::Forbidden(format!("permission denied: {message}")),
                    "57014" => QueryError::Timeout(format!("cancelled at the statement timeout: {message}")),
                    "55P03" => QueryError::Timeout(format!("lock wait timed out: {message}")),
                    "42601" if message.contains("multiple commands") => {
                        QueryError::Invalid(format!("one statement only: {message}"))
                    }
                    c if c.starts_with("08") || c.starts_with("53") || c.starts_with("57P") => {
                        return AttemptError::Unreachable { error: err, message };
                    }
                    "28000" | "28P01" => {
                        return AttemptError::Unreachable { error: err, message: format!("cannot log in: {message}") };
                    }
                    "3D000" => {
                        let message = format!("the database does not exist: {message}");
                        return AttemptError::Unreachable { error: err, message };
                    }
                    _ => QueryError::Invalid(message),
                }
            }
            sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) | sqlx::Error::PoolTimedOut => {
                return AttemptError::Unreachable { error: err, message: format!("cannot reach the database: {text}") };
            }
            sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) | sqlx::Error::Encode(_) => {
                QueryError::Invalid(text)
            }
            _ => return AttemptError::Unreachable { error: err, message: text },
        };
        AttemptError::Refused(refused)
    }
}

pub(super) fn pg_options(url: &DatabaseUrl, ssl_mode: SslMode) -> Result<PgConnectOptions, String> {
    let options = PgConnectOptions::from_str(url.expose_secret())
        .map_err(|_| "DB_TEST_URL / DATABASE_URL cannot be used for the test endpoint".to_owned())?;
    let ssl_mode = match ssl_mode {
        SslMode::Disable => PgSslMode::Disable,
        SslMode::Prefer => PgSslMode::Prefer,
        SslMode::Require => PgSslMode::Require,
        SslMode::VerifyCa => PgSslMode::VerifyCa,
        SslMode::VerifyFull => PgSslMode::VerifyFull,
    };
    Ok(options.ssl_mode(ssl_mode).application_name("dbguard-readonly").statement_cache_capacity(0))
}

fn bind_pg(args: &mut PgArguments, param: &Value) -> Result<(), QueryError> {
    let bound = match param {
        Value::Null => args.add(Option::<String>::None),
        Value::Bool(b) => args.add(*b),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => args.add(i),
            (None, Some(f)) => args.add(f),
            _ => return Err(QueryError::Invalid(format!("parameter {n} is out of range"))),
        },
        Value::String(s) => args.add(s.clone()),
        Value::Array(_) | Value::Object(_) => args.add(sqlx::types::Json(param.clone())),
    };
    bound.map_err(|err| QueryError::Invalid(format!("cannot bind a parameter: {err}")))
}

fn pg_row(row: &PgRow) -> Map<String, Value> {
    let mut object = Map::new();
    for (index, column) in row.columns().iter().enumerate() {
        object.insert(column.name().to_owned(), pg_value(row, index));
    }
    object
}

fn pg_value(row: &PgRow, index: usize) -> Value {
    let Ok(raw) = row.try_get_raw(index) else { return Value::Null };
    if raw.is_null() {
        return Value::Null;
    }
    let type_name = raw.type_info().name().to_owned();
    let decoded = match type_name.as_str() {
        "BOOL" => row.try_get::<bool, _>(index).map(Value::from),
        "INT2" => row.try_get::<i16, _>(index).map(Value::from),
        "INT4" => row.try_get::<i32, _>(index).map(Value::from),
        "INT8" => row.try_get::<i64, _>(index).map(Value::from),
        "FLOAT4" => row.try_get::<f32, _>(index).map(|v| Value::from(f64::from(v))),
        "FLOAT8" => row.try_get::<f64, _>(index).map(Value::from),
        "JSON" | "JSONB" => row.try_get::<Value, _>(index),
        "BYTEA" => row.try_get::<Vec<u8>, _>(index).map(|b| Value::from(format!("\\x{}", hex(&b)))),
        _ => row.try_get::<String, _>(index).map(Value::from),
    };
    decoded.unwrap_or_else(|_| Value::from(format!("<{} value: cast it to text>", type_name.to_ascii_lowercase())))
}
