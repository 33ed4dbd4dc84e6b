//! `GET /api/database/queries` against real databases: on a private PostgreSQL cluster that
//! loads `pg_stat_statements`, a table scanned without an index shows in the top statements and
//! the sequential-scan list with a suggestion, an index nothing uses is listed, and neither a
//! password given in a utility statement nor a string literal comes back; without the extension
//! the answer says how to enable it; on SQLite it gives the file's facts.

mod support;

use std::time::{Duration, Instant};

use dbguard_tests::{DEFAULT_DB, PgCluster, TestDb};
use serde_json::Value;
use sqlx::Connection;
use support::{Server, assert_error, assert_schema};

/// A password given in a utility statement, which pg_stat_statements keeps verbatim.
const UTILITY_SECRET: &str = "Pw-utility-4f9d2c7e";
/// A string literal in a query.
const LITERAL_SECRET: &str = "literal-secret-8b1e6a";

async fn queries(server: &Server) -> Value {
    let (code, body) = server.get("/api/database/queries", Some(&server.reader)).await;
    assert_eq!(code, 200, "{body:#}");
    assert_schema("queries-response", &body);
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_without_an_index_is_found_and_no_secret_comes_back() {
    let Some(pg) = PgCluster::start_or_skip("queries_route_pg_stat_statements").await else { return };
    pg.set_setting("shared_preload_libraries", "'pg_stat_statements'").expect("preload");
    pg.restart().await.expect("restart with the extension's library");
    let url = pg.url(DEFAULT_DB);
    let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
    for statement in [
        "CREATE EXTENSION pg_stat_statements",
        "CREATE TABLE scan_me (id INTEGER, v INTEGER)",
        "INSERT INTO scan_me SELECT g, g % 1000 FROM generate_series(1, 20000) g",
        // Used by nothing: the queries filter on v.
        "CREATE INDEX scan_me_id ON scan_me (id)",
        "ANALYZE scan_me",
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement)).execute(&mut conn).await.expect(statement);
    }
    for n in 0..120 {
        sqlx::query("SELECT count(*) FROM scan_me WHERE v = $1").bind(n).execute(&mut conn).await.expect("scan");
    }
    let utility = format!("ALTER ROLE postgres PASSWORD '{UTILITY_SECRET}'");
    sqlx::raw_sql(sqlx::AssertSqlSafe(utility)).execute(&mut conn).await.expect("alter role");
    let literal = format!("SELECT '{LITERAL_SECRET}' AS s");
    sqlx::raw_sql(sqlx::AssertSqlSafe(literal)).execute(&mut conn).await.expect("literal");
    conn.close().await.expect("close");

    let server = Server::start(&[("DATABASE_URL", url.as_str())]).await;
    // Table statistics reach the views within a second or so of the transactions that made them.
    let started = Instant::now();
    let body = loop {
        let body = queries(&server).await;
        let scanned = body["data"]["sequential_scans"]
            .as_array()
            .is_some_and(|tables| tables.iter().any(|t| t["table"] == "public.scan_me"));
        if scanned || started.elapsed() > Duration::from_secs(15) {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let data = &body["data"];
    assert_eq!(data["database_type"], "postgresql");
    assert_eq!(data["statements_note"], Value::Null, "{data:#}");
    let statements = data["top_statements"].as_array().unwrap_or_else(|| panic!("{data:#}"));
    let scan = statements
        .iter()
        .find(|s| s["query"].as_str().is_some_and(|q| q.contains("FROM scan_me WHERE v = $1")))
        .unwrap_or_else(|| panic!("the scan is a top statement: {data:#}"));
    assert!(scan["calls"].as_u64().is_some_and(|calls| calls >= 120), "{scan:#}");
    let table = data["sequential_scans"]
        .as_array()
        .and_then(|tables| tables.iter().find(|t| t["table"] == "public.scan_me"))
        .unwrap_or_else(|| panic!("scan_me is read by sequential scans: {data:#}"));
    assert!(table["sequential_scans"].as_u64().is_some_and(|n| n >= 120), "{table:#}");
    assert!(table["suggestion"].as_str().is_some_and(|s| s.contains("an index")), "{table:#}");
    let unused = data["unused_indexes"].as_array().unwrap_or_else(|| panic!("{data:#}"));
    assert!(
        unused
            .iter()
            .any(|i| i["index"] == "scan_me_id" && i["suggestion"].as_str().is_some_and(|s| s.contains("DROP INDEX"))),
        "{data:#}"
    );
    assert!(data["cache_hit_ratio"].as_f64().is_some_and(|ratio| (0.0..=1.0).contains(&ratio)), "{data:#}");
    let text = body.to_string();
    assert!(!text.contains(UTILITY_SECRET), "a utility statement's password came back: {text}");
    assert!(!text.contains(LITERAL_SECRET), "a string literal came back: {text}");
    assert!(!text.to_ascii_lowercase().contains("alter role"), "utility statements are left out: {text}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_pg_stat_statements_the_answer_says_how_to_enable_it() {
    let Some(db) = TestDb::create_or_skip("queries_route_without_extension").await else { return };
    let server = Server::start(&[("DATABASE_URL", db.url())]).await;
    let body = queries(&server).await;
    assert_eq!(body["data"]["top_statements"], Value::Null, "{body:#}");
    let note = body["data"]["statements_note"].as_str().unwrap_or_default();
    assert!(note.contains("shared_preload_libraries") && note.contains("pg_stat_statements"), "{body:#}");
    assert!(body["data"]["sequential_scans"].is_array(), "the rest still answers: {body:#}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite_it_gives_the_file_facts_and_needs_a_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("app.db").display());
    let server = Server::start(&[("DATABASE_URL", url.as_str())]).await;
    let body = queries(&server).await;
    let sqlite = &body["data"]["sqlite"];
    assert_eq!(sqlite["journal_mode"], "wal", "{body:#}");
    assert!(sqlite["page_size"].as_i64().is_some_and(|size| size > 0), "{body:#}");
    assert_eq!(body["data"]["top_statements"], Value::Null);
    assert_error(&server.get("/api/database/queries", None).await, 401);
    server.stop().await;
}
