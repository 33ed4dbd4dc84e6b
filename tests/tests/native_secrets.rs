//! Passwords never reach a log line, an error or `Debug` output, even at TRACE.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use dbguard::Idempotency;
use dbguard_tests::TestDb;
use sea_orm::ConnectionTrait;

/// Collects everything the tracing subscriber writes.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("capture lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_never_appears_in_trace_logs_errors_or_debug() {
    let Some(db) = TestDb::create_or_skip("secrets_native").await else { return };
    let role = db.create_role_with_password("secret_app").await.expect("role with password");
    let password = role.password().to_owned();
    assert!(role.url().contains(&password), "the role URL carries the password");

    let capture = Capture::default();
    let writer = capture.clone();
    // Global, so worker threads and `log` records (bridged) are captured too; this file holds
    // one test, so nothing else competes for the global subscriber.
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .try_init()
        .expect("install the capturing subscriber");

    let config = common::config(role.url(), &[("DB_ECHO", "true"), ("DB_RETRY_MAX_ATTEMPTS", "1")]);
    let mut shown = vec![format!("{config:?}"), format!("{}", config.url)];
    let manager = dbguard::DbManager::connect(config).await.expect("connects with the password role");
    shown.push(format!("{manager:?}"));
    manager
        .run(Idempotency::Idempotent, |db| async move { db.execute_unprepared("SELECT 1").await })
        .await
        .expect("query");
    let error = manager
        .run(Idempotency::Idempotent, |db| async move { db.execute_unprepared("SELECT * FROM missing").await })
        .await
        .expect_err("syntax");
    shown.push(error.to_string());
    shown.push(format!("{error:?}"));
    let health = manager.check_health(true).await;
    shown.push(serde_json::to_string(&*health).expect("serializes"));
    shown.push(serde_json::to_string(&manager.info()).expect("serializes"));
    shown.push(serde_json::to_string(&manager.status().await).expect("serializes"));
    manager.reconnect().await.expect("reconnect");
    manager.close().await;

    // A failed connect with the same password in the URL.
    let wrong_db = role.url().replace(db.name(), "no_such_database_here");
    let failed = dbguard::DbManager::connect(common::config(&wrong_db, &[("DB_RETRY_MAX_ATTEMPTS", "0")]))
        .await
        .expect_err("database does not exist");
    shown.push(failed.to_string());
    shown.push(format!("{failed:?}"));

    let logs = String::from_utf8(capture.0.lock().expect("capture lock").clone()).expect("utf-8 logs");
    assert!(logs.lines().count() >= 8, "TRACE logging captured output ({} lines)", logs.lines().count());
    assert!(logs.contains("connecting url=postgres://"), "the connect URL was logged (redacted)");
    assert!(logs.contains(":***@"), "and shown redacted");
    for (i, text) in shown.iter().chain(std::iter::once(&logs)).enumerate() {
        assert!(!text.contains(&password), "password leaked in item {i}: {text}");
    }
}
