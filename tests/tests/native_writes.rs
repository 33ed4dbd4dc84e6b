//! Writes under failure: serialization conflicts are retried whole, writes whose connection
//! died are never duplicated, a read-only server is recognised.

mod common;

use std::sync::Arc;

use dbguard::{ErrorClass, HealthStatus, Idempotency, TxnOptions};
use dbguard_tests::{FaultProxy, TestDb};
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use tokio::sync::Barrier;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_serializable_transactions_are_retried_whole() {
    let Some(db) = TestDb::create_or_skip("serializable_retry").await else { return };
    common::admin_exec(db.url(), "CREATE TABLE ledger (account int, amount int); INSERT INTO ledger VALUES (1, 100);")
        .await;
    let manager = common::manager(db.url(), &[]).await;
    // Both transactions read the balance, meet at the barrier on their first attempt, then
    // write: one of them must lose with 40001 and run again from the start.
    let barrier = Arc::new(Barrier::new(2));
    let attempts = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let tasks = (0..2).map(|_| {
        let (manager, barrier, attempts) = (manager.clone(), barrier.clone(), attempts.clone());
        tokio::spawn(async move {
            manager
                .transaction_with(TxnOptions::serializable(), move |txn| {
                    let barrier = barrier.clone();
                    let attempt = attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    Box::pin(async move {
                        let row = txn
                            .query_one_raw(Statement::from_string(
                                DbBackend::Postgres,
                                "SELECT sum(amount)::int AS balance FROM ledger WHERE account = 1",
                            ))
                            .await?
                            .expect("one row");
                        let balance: i32 = row.try_get("", "balance")?;
                        if attempt < 2 {
                            barrier.wait().await;
                        }
                        txn.execute_unprepared("INSERT INTO ledger VALUES (1, -10)").await?;
                        Ok(balance)
                    })
                })
                .await
        })
    });
    let results: Vec<_> = futures::future::join_all(tasks).await.into_iter().map(|r| r.expect("task")).collect();
    for result in &results {
        assert!(result.is_ok(), "both transfers eventually commit: {result:?}");
    }
    let total = common::admin_scalar(db.url(), "SELECT sum(amount)::bigint FROM ledger WHERE account = 1").await;
    let rows = common::admin_scalar(db.url(), "SELECT count(*) FROM ledger").await;
    let attempts = attempts.load(std::sync::atomic::Ordering::SeqCst);
    println!("serializable: attempts={attempts} retries={} rows={rows} total={total}", manager.stats().retries());
    assert_eq!(total, 80, "each withdrawal applied exactly once");
    assert_eq!(rows, 3);
    assert!(attempts >= 3, "the loser ran again ({attempts} attempts)");
    assert!(manager.stats().summary().failures_by_class.contains_key("serialization_failure"));
    manager.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_connection_dies_is_outcome_unknown_and_never_duplicated() {
    let Some(db) = TestDb::create_or_skip("write_dies").await else { return };
    common::admin_exec(db.url(), "CREATE TABLE payments (id text, amount int)").await;
    let addr = db.server_addr().await.expect("server address");
    let proxy = FaultProxy::start(addr).await.expect("proxy");
    let manager = common::manager(&proxy.rewrite_url(db.url()), &[]).await;

    let writer = {
        let manager = manager.clone();
        tokio::spawn(async move {
            manager
                .run(Idempotency::NonIdempotent, |db| async move {
                    // Slow enough that the reset lands while the statement runs.
                    db.execute_unprepared("INSERT INTO payments SELECT 'p-1', 42 FROM pg_sleep(1)").await
                })
                .await
        })
    };
    common::wait_for_statement(db.url(), "FROM pg_sleep(1)").await;
    proxy.reset_all();
    let error = writer.await.expect("task").expect_err("the connection died mid-write");
    // The server does not notice the reset until it answers: the insert still runs and commits.
    common::wait_for_statement_end(db.url(), "FROM pg_sleep(1)").await;
    let rows = common::admin_scalar(db.url(), "SELECT count(*) FROM payments WHERE id = 'p-1'").await;
    println!("write dies: class={} retries={} rows={rows}", error.class(), error.retry_count());
    assert_eq!(error.class(), ErrorClass::CommitOutcomeUnknown, "{error}");
    assert!(error.is_outcome_unknown());
    assert_eq!(error.retry_count(), 0, "a non-idempotent write is never replayed blindly");
    assert_eq!(rows, 1, "committed once by the server, never replayed by dbguard ({rows} rows)");
    manager.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_turned_read_only_is_degraded_and_writes_are_classified() {
    let Some(db) = TestDb::create_or_skip("read_only").await else { return };
    common::admin_exec(db.url(), "CREATE TABLE t (x int)").await;
    let manager = common::manager(db.url(), &[("DB_RETRY_MAX_ATTEMPTS", "1")]).await;
    assert_eq!(manager.check_health(true).await.status, HealthStatus::Healthy);

    common::admin_exec(
        db.admin_url(),
        &format!("ALTER DATABASE \"{}\" SET default_transaction_read_only = on", db.name()),
    )
    .await;
    // Session defaults apply to new sessions: rebuild the pool as a failover would.
    let report = manager.reconnect().await.expect("reconnect");
    assert_eq!(report.status, HealthStatus::Degraded, "{}", report.message);
    assert!(report.message.contains("database:writable"), "{}", report.message);

    let error = manager
        .run(Idempotency::NonIdempotent, |db| async move { db.execute_unprepared("INSERT INTO t VALUES (1)").await })
        .await
        .expect_err("writes fail on a read-only server");
    assert_eq!(error.class(), ErrorClass::ReadOnlyServer);
    assert_eq!(error.code(), Some("25006"));
    manager.close().await;
}
