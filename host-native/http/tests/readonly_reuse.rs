//! The read-only runner that health-check plugins use keeps its connections between calls,
//! and nothing of one call reaches the next.

use dbguard_http::readonly::{QueryRequest, ReadOnlyQuery};
use dbguard_tests::TestDb;
use serde_json::Value;

fn request(sql: &str) -> QueryRequest {
    QueryRequest { query: sql.to_owned(), params: Vec::new(), max_rows: None, timeout_ms: None }
}

async fn scalar(runner: &ReadOnlyQuery, sql: &str) -> Value {
    let answer = runner.run(&request(sql)).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    answer.rows[0].values().next().cloned().unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_queries_reuse_one_reset_connection() {
    let Some(db) = TestDb::create_or_skip("readonly_reuse").await else { return };
    let reader = db.create_read_only_role("reuse_ro").await.expect("role");
    let vars = [
        ("DATABASE_URL".to_owned(), db.url().to_owned()),
        ("DB_TEST_URL".to_owned(), reader.url().to_owned()),
        ("JWT_SECRET".to_owned(), "readonly-reuse-secret-5d1f0b7a93c2e846".to_owned()),
    ];
    let config = dbguard::env::config_from_vars(vars).expect("config");
    let runner = ReadOnlyQuery::new(&config).with_connection_reuse();

    let first = scalar(&runner, "SELECT pg_backend_pid()").await;
    // A session-level advisory lock and a session setting outlive a rolled-back transaction;
    // the reset must clear both before the connection is used again.
    scalar(&runner, "SELECT pg_advisory_lock(4242)::text").await;
    scalar(&runner, "SELECT set_config('application_name', 'changed by a plugin', false)").await;
    for _ in 0..20 {
        assert_eq!(scalar(&runner, "SELECT pg_backend_pid()").await, first, "one connection serves every query");
    }
    let locks =
        scalar(&runner, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()").await;
    assert_eq!(locks, Value::from(0), "the advisory lock was released");
    assert_eq!(scalar(&runner, "SELECT current_setting('application_name')").await, Value::from("dbguard-readonly"));

    // Without reuse every call is a new connection, as for `/test`.
    let fresh = ReadOnlyQuery::new(&config);
    let one = scalar(&fresh, "SELECT pg_backend_pid()").await;
    assert_ne!(scalar(&fresh, "SELECT pg_backend_pid()").await, one);
}
