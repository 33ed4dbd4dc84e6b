//! Pool settings the README promises, against a real server: `DB_STATEMENT_TIMEOUT` cancels a
//! long statement with 57014 and leaves the connection usable, and `DB_POOL_RECYCLE` replaces a
//! connection once it has lived that long.

mod common;

use std::time::Duration;

use dbguard::{DbManager, ErrorClass, Idempotency};
use dbguard_tests::TestDb;
use sea_orm::{ConnectionTrait, DbBackend, Statement};

/// One connection and no overflow, so consecutive calls can only use the same session unless
/// the pool replaced it.
const ONE_CONNECTION: &[(&str, &str)] = &[("DB_POOL_SIZE", "1"), ("DB_MAX_OVERFLOW", "0")];

/// The server process id of the session a guarded call ran on.
async fn backend_pid(manager: &DbManager) -> i32 {
    manager
        .run(Idempotency::Idempotent, |db| async move {
            let row = db.query_one_raw(Statement::from_string(DbBackend::Postgres, "SELECT pg_backend_pid()")).await?;
            row.ok_or_else(|| sea_orm::DbErr::RecordNotFound("no row".into()))?.try_get_by_index::<i32>(0)
        })
        .await
        .expect("ask for the backend pid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_timeout_cancels_with_57014_and_the_connection_stays_usable() {
    let Some(db) = TestDb::create_or_skip("statement_timeout_57014").await else { return };
    let mut vars = ONE_CONNECTION.to_vec();
    vars.push(("DB_STATEMENT_TIMEOUT", "200ms"));
    let manager = common::manager(db.url(), &vars).await;
    let before = backend_pid(&manager).await;

    let no_retry = dbguard_core::RetryPolicy::builder().max_retries(0).build().expect("policy");
    let error = manager
        .run_with_policy(no_retry, Idempotency::Idempotent, |db| async move {
            db.execute_unprepared("SELECT pg_sleep(30)").await.map(|_| ())
        })
        .await
        .expect_err("the server cancels a statement longer than the timeout");
    assert_eq!(error.code(), Some("57014"), "{error}");
    assert_eq!(error.class(), ErrorClass::QueryCanceled, "{error}");

    // The same session (the pool's only one) answers the next call: it was not discarded.
    assert_eq!(backend_pid(&manager).await, before, "the cancelled statement's connection was replaced");
    manager.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_recycle_replaces_a_connection_that_outlived_it() {
    let Some(db) = TestDb::create_or_skip("pool_recycle").await else { return };
    let mut recycled_vars = ONE_CONNECTION.to_vec();
    recycled_vars.push(("DB_POOL_RECYCLE", "1s"));
    let recycled = common::manager(db.url(), &recycled_vars).await;
    let kept = common::manager(db.url(), ONE_CONNECTION).await;
    let (first, kept_first) = (backend_pid(&recycled).await, backend_pid(&kept).await);

    // Calls keep the connection busy, so only its age can retire it.
    let deadline = tokio::time::Instant::now() + common::HANG_LIMIT;
    while backend_pid(&recycled).await == first {
        assert!(tokio::time::Instant::now() < deadline, "a 1 s DB_POOL_RECYCLE never replaced the connection");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The default lifetime (an hour) kept the other manager's connection over the same span.
    assert_eq!(backend_pid(&kept).await, kept_first, "without a short recycle the connection is kept");
    recycled.close().await;
    kept.close().await;
}
