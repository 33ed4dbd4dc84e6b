//! Shared set-up for the native-host scenarios.

#![allow(dead_code, unreachable_pub)]

use dbguard::DbManager;
use dbguard_core::DbConfig;

/// Fast retries so scenarios finish quickly: 10 ms base, 200 ms cap, 20 retries.
pub const FAST_RETRY: &[(&str, &str)] = &[
    ("DB_RETRY_BASE_DELAY", "10ms"),
    ("DB_RETRY_MAX_DELAY", "200ms"),
    ("DB_RETRY_MAX_ATTEMPTS", "20"),
    ("DB_ECHO", "false"),
];

/// A configuration for `url` with fast retries plus `extra` overrides.
pub fn config(url: &str, extra: &[(&str, &str)]) -> DbConfig {
    let mut vars: Vec<(&str, &str)> = vec![("DATABASE_URL", url)];
    vars.extend_from_slice(FAST_RETRY);
    vars.extend_from_slice(extra);
    DbConfig::from_vars(vars).expect("test configuration is valid")
}

/// A connected manager for `url`.
pub async fn manager(url: &str, extra: &[(&str, &str)]) -> DbManager {
    DbManager::connect(config(url, extra)).await.expect("test database reachable")
}

/// Runs SQL on the test database outside dbguard (set-up and verification).
pub async fn admin_exec(url: &str, sql: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await.expect("admin connection");
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned())).execute(&mut conn).await.expect("admin SQL");
    conn.close().await.ok();
}

/// One i64 from a query, outside dbguard.
pub async fn admin_scalar(url: &str, sql: &str) -> i64 {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await.expect("admin connection");
    let value: i64 =
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned())).fetch_one(&mut conn).await.expect("admin query");
    conn.close().await.ok();
    value
}
