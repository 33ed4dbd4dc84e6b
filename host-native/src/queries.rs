//! Reads the database's own statistics for [`DbManager::query_analytics`]: `pg_stat_statements`
//! and the `pg_stat_*` views on PostgreSQL, `PRAGMA`s on SQLite. Thresholds, suggestions and
//! redaction are core's ([`dbguard_core::queries`]).

use dbguard_core::queries::{
    LONG_SESSION_MS, QueryAnalytics, SequentialScanTable, SessionStat, SqliteFacts, StatementStat, UnusedIndex,
    cache_suggestion, redact_query,
};
use dbguard_core::{DatabaseType, Idempotency};
use sea_orm::{ConnectionTrait, DbErr, QueryResult, Statement};

use crate::classify::classify_db_err;
use crate::{DbConn, DbError, DbManager};

/// Statements listed, at most.
const TOP_STATEMENTS: usize = 20;
/// Rows read from each view, at most (before filtering).
const ROW_LIMIT: u32 = 50;

/// What to do when `pg_stat_statements` is missing from this database.
const NOT_INSTALLED: &str = "pg_stat_statements is not installed in this database: add it to shared_preload_libraries in postgresql.conf, restart the server, then run CREATE EXTENSION pg_stat_statements";
/// What to do when the extension exists but the server did not load its library.
const NOT_LOADED: &str = "pg_stat_statements is installed but not loaded: add it to shared_preload_libraries in postgresql.conf and restart the server";

impl DbManager {
    /// Query analytics: the top statements, tables read by sequential scans, unused indexes,
    /// the cache hit ratio and long sessions on PostgreSQL; file facts on SQLite. Each finding
    /// carries a suggestion; query text is redacted. Read through the guarded path.
    pub async fn query_analytics(&self) -> Result<QueryAnalytics, DbError> {
        let database = self.config().database_type();
        self.run(Idempotency::Idempotent, move |conn| async move {
            match database {
                DatabaseType::Postgresql => postgres(&conn).await,
                DatabaseType::Sqlite => sqlite(&conn).await,
            }
        })
        .await
    }
}

async fn rows(conn: &DbConn, sql: &str) -> Result<Vec<QueryResult>, DbErr> {
    conn.query_all_raw(Statement::from_string(conn.get_database_backend(), sql.to_owned())).await
}

async fn postgres(conn: &DbConn) -> Result<QueryAnalytics, DbErr> {
    let mut report = QueryAnalytics::new(DatabaseType::Postgresql);
    match top_statements(conn).await {
        Ok(statements) => report.top_statements = Some(statements),
        Err(note) => report.statements_note = Some(note?),
    }
    report.sequential_scans = sequential_scans(conn).await?;
    report.unused_indexes = unused_indexes(conn).await?;
    let ratio = rows(
        conn,
        "SELECT (sum(heap_blks_hit) / nullif(sum(heap_blks_hit) + sum(heap_blks_read), 0))::float8 \
         FROM pg_statio_user_tables",
    )
    .await?;
    report.cache_hit_ratio = ratio.first().map(|row| row.try_get_by_index::<Option<f64>>(0)).transpose()?.flatten();
    report.cache_suggestion = cache_suggestion(report.cache_hit_ratio);
    report.long_sessions = long_sessions(conn).await?;
    Ok(report)
}

/// The statements, or (as `Err(Ok(note))`) why there are none: the extension is missing or
/// not loaded. Any other failure is `Err(Err(..))`.
async fn top_statements(conn: &DbConn) -> Result<Vec<StatementStat>, Result<String, DbErr>> {
    let installed = rows(conn, "SELECT count(*) FROM pg_extension WHERE extname = 'pg_stat_statements'")
        .await
        .and_then(|found| found.first().map(|row| row.try_get_by_index::<i64>(0)).transpose())
        .map_err(Err)?;
    if installed != Some(1) {
        return Err(Ok(NOT_INSTALLED.to_owned()));
    }
    let sql = format!(
        "SELECT query, calls, total_exec_time, mean_exec_time, rows, shared_blks_hit, shared_blks_read \
         FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         ORDER BY total_exec_time DESC LIMIT {ROW_LIMIT}"
    );
    let found = match rows(conn, &sql).await {
        Ok(found) => found,
        // 55000 object_not_in_prerequisite_state: "must be loaded via shared_preload_libraries".
        Err(err) if classify_db_err(&err).code.as_deref() == Some("55000") => return Err(Ok(NOT_LOADED.to_owned())),
        Err(err) => return Err(Err(err)),
    };
    let mut statements = Vec::new();
    for row in &found {
        let text: Option<String> = row.try_get_by_index(0).map_err(Err)?;
        // Utility statements and other users' statements (shown as "<insufficient privilege>")
        // are left out.
        let Some(query) = text.as_deref().and_then(redact_query) else { continue };
        let hit: i64 = row.try_get_by_index(5).map_err(Err)?;
        let read: i64 = row.try_get_by_index(6).map_err(Err)?;
        let mut statement = StatementStat {
            query,
            calls: non_negative(row.try_get_by_index(1).map_err(Err)?),
            total_time_ms: row.try_get_by_index(2).map_err(Err)?,
            mean_time_ms: row.try_get_by_index(3).map_err(Err)?,
            rows: non_negative(row.try_get_by_index(4).map_err(Err)?),
            cache_hit_ratio: (hit + read > 0).then(|| hit as f64 / (hit + read) as f64),
            suggestion: None,
        };
        statement.suggest();
        statements.push(statement);
        if statements.len() == TOP_STATEMENTS {
            break;
        }
    }
    Ok(statements)
}

async fn sequential_scans(conn: &DbConn) -> Result<Vec<SequentialScanTable>, DbErr> {
    let sql = format!(
        "SELECT schemaname || '.' || relname, seq_scan, seq_tup_read, coalesce(idx_scan, 0), n_live_tup, \
         pg_total_relation_size(relid) FROM pg_stat_user_tables WHERE seq_scan > 0 \
         ORDER BY seq_tup_read DESC LIMIT {ROW_LIMIT}"
    );
    let mut tables = Vec::new();
    for row in rows(conn, &sql).await? {
        let mut table = SequentialScanTable {
            table: row.try_get_by_index(0)?,
            sequential_scans: non_negative(row.try_get_by_index(1)?),
            rows_read_sequentially: non_negative(row.try_get_by_index(2)?),
            index_scans: non_negative(row.try_get_by_index(3)?),
            live_rows: row.try_get_by_index(4)?,
            size_bytes: row.try_get_by_index(5)?,
            suggestion: None,
        };
        if table.stands_out() {
            table.suggest();
            tables.push(table);
        }
    }
    Ok(tables)
}

async fn unused_indexes(conn: &DbConn) -> Result<Vec<UnusedIndex>, DbErr> {
    let sql = format!(
        "SELECT s.schemaname || '.' || s.relname, s.indexrelname, pg_relation_size(s.indexrelid) \
         FROM pg_stat_user_indexes s JOIN pg_index i ON i.indexrelid = s.indexrelid \
         WHERE s.idx_scan = 0 AND NOT i.indisunique AND NOT i.indisprimary \
         ORDER BY pg_relation_size(s.indexrelid) DESC LIMIT {ROW_LIMIT}"
    );
    rows(conn, &sql)
        .await?
        .iter()
        .map(|row| Ok(UnusedIndex::new(row.try_get_by_index(0)?, row.try_get_by_index(1)?, row.try_get_by_index(2)?)))
        .collect()
}

async fn long_sessions(conn: &DbConn) -> Result<Vec<SessionStat>, DbErr> {
    let sql = format!(
        "SELECT pid, state, extract(epoch FROM now() - query_start)::float8 * 1000, \
         (extract(epoch FROM now() - xact_start) * 1000)::float8, query FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend' \
         AND (state = 'active' OR state LIKE 'idle in transaction%') \
         AND now() - coalesce(xact_start, query_start) > make_interval(secs => {}) \
         ORDER BY coalesce(xact_start, query_start) LIMIT {ROW_LIMIT}",
        LONG_SESSION_MS / 1000.0
    );
    rows(conn, &sql)
        .await?
        .iter()
        .map(|row| {
            let state: String = row.try_get_by_index(1)?;
            let query: Option<String> = row.try_get_by_index(4)?;
            Ok(SessionStat {
                pid: row.try_get_by_index(0)?,
                suggestion: SessionStat::suggestion_for(&state),
                state,
                statement_ms: row.try_get_by_index::<Option<f64>>(2)?.unwrap_or(0.0),
                transaction_ms: row.try_get_by_index(3)?,
                query: query.as_deref().and_then(redact_query),
            })
        })
        .collect()
}

async fn sqlite(conn: &DbConn) -> Result<QueryAnalytics, DbErr> {
    async fn pragma<T: sea_orm::TryGetable>(conn: &DbConn, name: &str) -> Result<T, DbErr> {
        let found = rows(conn, &format!("PRAGMA {name}")).await?;
        let row = found.first().ok_or_else(|| DbErr::Custom(format!("PRAGMA {name} returned no row")))?;
        row.try_get_by_index(0)
    }
    let mut report = QueryAnalytics::new(DatabaseType::Sqlite);
    report.sqlite = Some(SqliteFacts::new(
        pragma(conn, "page_count").await?,
        pragma(conn, "page_size").await?,
        pragma(conn, "freelist_count").await?,
        pragma(conn, "journal_mode").await?,
    ));
    Ok(report)
}

fn non_negative(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}
