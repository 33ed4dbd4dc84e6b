//! Scenarios against real SQLite files. They run natively (`cargo test --target
//! x86_64-unknown-linux-gnu`): the code is the same, only SQLite's locking differs (POSIX locks
//! natively, dot-files under WASI), which is what lets a second connection hold a lock here.

use std::path::{Path, PathBuf};
use std::time::Duration;

use dbguard_core::{CheckStatus, DbConfig, ErrorClass, HealthStatus};
use rusqlite::Connection;

use crate::db::Target;
use crate::driver::Clock;
use crate::error::HostError;
use crate::{probe, query};

struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Self {
        Self { dir: tempfile::tempdir().unwrap() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A rollback-journal database with 250 rows.
    fn database(&self, name: &str) -> PathBuf {
        let path = self.path(name);
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, score REAL, data BLOB);
             WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 249)
             INSERT INTO t(name, score, data) SELECT 'n' || i, i * 1.5, x'00ff' FROM n;",
        )
        .unwrap();
        path
    }
}

/// Configuration with fast retries: 3 retries at 20, 40, 80 ms.
fn config(path: &Path) -> DbConfig {
    let url = format!("sqlite://{}", path.display());
    DbConfig::from_vars([("DATABASE_URL", url.as_str()), ("DB_RETRY_BASE_DELAY", "20ms")]).unwrap()
}

fn check(path: &Path) -> probe::CheckOutcome {
    let config = config(path);
    probe::check(&config, &Target::from_config(&config).unwrap(), Clock::start())
}

fn run_query(path: &Path, sql: &str, max_rows: u32) -> Result<serde_json::Value, HostError> {
    let config = config(path);
    query::run(&config, &Target::from_config(&config).unwrap(), Clock::start(), sql, max_rows)
}

#[test]
fn journal_mode_is_reported_but_never_degrades() {
    let scratch = Scratch::new();
    let path = scratch.database("app.db");
    let outcome = check(&path);
    assert_eq!(outcome.report.status, HealthStatus::Healthy, "{:?}", outcome.report);
    let journal = outcome.report.checks.iter().find(|c| c.name == "database:journal_mode").unwrap();
    assert_eq!(journal.message.as_deref(), Some("delete (not WAL: readers block writers)"));
    assert!(outcome.report.version.as_deref().is_some_and(|v| v.starts_with("3.")));
    let size = outcome.report.checks.iter().find(|c| c.name == "database:size").unwrap();
    assert!(size.observed_value.unwrap() > 0.0);

    Connection::open(&path).unwrap().pragma_update(None, "journal_mode", "wal").unwrap();
    let outcome = check(&path);
    assert_eq!(outcome.report.status, HealthStatus::Healthy, "{:?}", outcome.report);
    assert!(outcome.error.is_none());
}

#[test]
fn missing_file_is_unhealthy_and_not_created() {
    let scratch = Scratch::new();
    let path = scratch.path("missing.db");
    let outcome = check(&path);
    assert_eq!(outcome.report.status, HealthStatus::Unhealthy);
    assert_eq!(outcome.report.status.exit_code(), 2);
    let err = outcome.error.unwrap();
    assert_eq!(err.exit_code(), 2);
    assert!(err.to_string().starts_with("DATABASE_URL: cannot open SQLite database"), "{err}");
    assert!(!path.exists());
}

#[test]
fn file_that_is_not_a_database_is_unhealthy() {
    let scratch = Scratch::new();
    let path = scratch.path("notes.db");
    std::fs::write(&path, b"these are not the pages you are looking for").unwrap();
    let outcome = check(&path);
    assert_eq!(outcome.report.status, HealthStatus::Unhealthy);
    assert_eq!(outcome.report.checks[0].status, CheckStatus::Fail);
}

#[test]
fn busy_is_retried_until_the_lock_goes_away() {
    let scratch = Scratch::new();
    let path = scratch.database("app.db");
    let holder = Connection::open(&path).unwrap();
    holder.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        holder.execute_batch("COMMIT").unwrap();
    });
    let result = run_query(&path, "SELECT count(*) AS n FROM t", 10).unwrap();
    release.join().unwrap();
    assert_eq!(result["rows"][0]["n"], 250);
}

#[test]
fn busy_gives_up_after_the_policy_retries() {
    let scratch = Scratch::new();
    let path = scratch.database("app.db");
    let holder = Connection::open(&path).unwrap();
    holder.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let outcome = check(&path);
    assert_eq!(outcome.report.status, HealthStatus::Unhealthy);
    let message = outcome.report.checks[0].message.as_deref().unwrap();
    assert!(message.contains("database is locked") && message.ends_with("gave up after 4 attempts"), "{message}");

    match run_query(&path, "SELECT 1", 10) {
        Err(HostError::Database(failure)) => {
            assert_eq!(failure.classified.class, ErrorClass::Busy);
            assert_eq!(failure.retry_count, 3);
            assert!(failure.last_attempt.is_some());
        }
        other => panic!("expected busy, got {other:?}"),
    }
}

#[test]
fn query_caps_rows_in_column_order() {
    let scratch = Scratch::new();
    let path = scratch.database("app.db");
    let result = run_query(&path, "SELECT id, name, score, data FROM t ORDER BY id;", 2).unwrap();
    assert_eq!(result["columns"], serde_json::json!(["id", "name", "score", "data"]));
    assert_eq!(result["row_count"], 2);
    assert_eq!(result["truncated"], true);
    assert_eq!(result["rows"][1], serde_json::json!({"id": 2, "name": "n1", "score": 1.5, "data": {"$blob": "00ff"}}));
    let text = serde_json::to_string(&result["rows"][0]).unwrap();
    assert!(text.starts_with(r#"{"id":1,"name":"n0""#), "{text}");

    let pragma = run_query(&path, "PRAGMA table_info(t)", 3).unwrap();
    assert_eq!((pragma["row_count"].as_u64(), pragma["truncated"].as_bool()), (Some(3), Some(true)));
}

#[test]
fn query_rejects_writes_and_second_statements_as_usage_errors() {
    let scratch = Scratch::new();
    let path = scratch.database("app.db");
    for sql in ["DELETE FROM t", "SELECT 1; DELETE FROM t", "SELEC 1", "SELECT * FROM nope"] {
        let err = run_query(&path, sql, 10).unwrap_err();
        assert_eq!(err.exit_code(), 64, "{sql}: {err}");
    }
    let still_there = run_query(&path, "SELECT count(*) AS n FROM t", 10).unwrap();
    assert_eq!(still_there["rows"][0]["n"], 250);
}

#[test]
fn postgres_url_is_refused_with_what_is_accepted() {
    let config = DbConfig::from_vars([("DATABASE_URL", "postgres://app:hunter2@db/orders")]).unwrap();
    let err = Target::from_config(&config).unwrap_err();
    assert_eq!(err.exit_code(), 64);
    let message = err.to_string();
    assert!(message.starts_with("DATABASE_URL:") && message.contains("sqlite:///absolute/path.db"), "{message}");
    assert!(!message.contains("hunter2"));
}
