//! The native host rides out killed backends, reconnects and pool exhaustion without callers
//! seeing errors they should not.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use dbguard::{ErrorClass, Idempotency};
use dbguard_tests::TestDb;
use sea_orm::ConnectionTrait;

async fn select_one(manager: &dbguard::DbManager) -> Result<(), dbguard::DbError> {
    manager.run(Idempotency::Idempotent, |db| async move { db.execute_unprepared("SELECT 1").await.map(|_| ()) }).await
}

/// Loops `SELECT 1` on `tasks` tasks until `stop`, counting calls and errors.
fn spawn_readers(
    manager: &dbguard::DbManager,
    tasks: usize,
    stop: &Arc<AtomicBool>,
) -> (Vec<tokio::task::JoinHandle<()>>, Arc<AtomicU64>, Arc<AtomicU64>) {
    let calls = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let handles = (0..tasks)
        .map(|_| {
            let (manager, stop, calls, errors) = (manager.clone(), stop.clone(), calls.clone(), errors.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if let Err(err) = select_one(&manager).await {
                        eprintln!("caller saw: {err}");
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    calls.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    (handles, calls, errors)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminating_every_backend_mid_load_surfaces_no_errors() {
    let Some(db) = TestDb::create_or_skip("terminate_backends").await else { return };
    let manager = common::manager(db.url(), &[("DB_POOL_SIZE", "4"), ("DB_MAX_OVERFLOW", "4")]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (readers, calls, errors) = spawn_readers(&manager, 8, &stop);

    let terminate = format!(
        "SELECT count(pg_terminate_backend(pid))::bigint FROM pg_stat_activity \
         WHERE datname = '{}' AND application_name = 'dbguard'",
        db.name()
    );
    let mut terminated = 0;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        terminated += common::admin_scalar(db.admin_url(), &terminate).await;
    }
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        reader.await.expect("reader task");
    }
    let (calls, errors, retries) =
        (calls.load(Ordering::Relaxed), errors.load(Ordering::Relaxed), manager.stats().retries());
    println!("terminate drill: backends_killed={terminated} calls={calls} retries={retries} errors={errors}");
    assert!(terminated >= 10, "the drill must actually kill backends (killed {terminated})");
    assert!(calls > 100, "load must run during the drill ({calls} calls)");
    assert_eq!(errors, 0, "callers saw errors");
    manager.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_under_load_loses_no_call() {
    let Some(db) = TestDb::create_or_skip("reconnect_load").await else { return };
    let manager = common::manager(db.url(), &[]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (readers, calls, errors) = spawn_readers(&manager, 8, &stop);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // 20 concurrent requests, three times: each burst collapses into one rebuild. The burst is
    // polled from one task so every request asks before its rebuild ends (a request arriving
    // after a rebuild rightly starts another).
    for _ in 0..3 {
        let burst = (0..20).map(|_| manager.reconnect());
        for result in futures::future::join_all(burst).await {
            let status = result.expect("reconnect succeeds").status;
            assert_eq!(status, dbguard::HealthStatus::Healthy);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        reader.await.expect("reader task");
    }
    let summary = manager.stats().summary();
    println!(
        "reconnect drill: reconnects={} calls={} errors={}",
        summary.reconnects_total,
        calls.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed)
    );
    assert_eq!(errors.load(Ordering::Relaxed), 0);
    assert_eq!(summary.reconnects_total, 3, "60 requests in 3 bursts rebuild once per burst");
    manager.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_pool_fails_typed_after_the_acquire_timeout() {
    let Some(db) = TestDb::create_or_skip("pool_exhausted").await else { return };
    let manager = common::manager(
        db.url(),
        &[
            ("DB_POOL_SIZE", "2"),
            ("DB_MAX_OVERFLOW", "1"),
            ("DB_POOL_TIMEOUT", "300ms"),
            ("DB_RETRY_MAX_ATTEMPTS", "0"),
        ],
    )
    .await;
    // min_connections: the pool opens pool_size connections by itself.
    let mut open = 0;
    for _ in 0..100 {
        let status = manager.pool_status();
        open = status.checked_in + status.checked_out;
        if open >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(open >= 2, "pool should keep pool_size=2 connections open, has {open}");

    let holders: Vec<_> = (0..3)
        .map(|_| {
            let manager = manager.clone();
            tokio::spawn(async move {
                manager
                    .run(Idempotency::Idempotent, |db| async move {
                        db.execute_unprepared("SELECT pg_sleep(5)").await.map(|_| ())
                    })
                    .await
            })
        })
        .collect();
    // Wait until all three holders have their connection, then check the pool's accounting.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        let status = manager.pool_status();
        if status.checked_out == 3 {
            break status;
        }
        assert!(tokio::time::Instant::now() < deadline, "the holders never checked out 3 connections: {status:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(status.overflow, 1, "max connections = pool_size + max_overflow: {status:?}");
    let error = select_one(&manager).await.expect_err("no connection is free");
    assert_eq!(error.class(), ErrorClass::PoolExhausted);
    assert_eq!(error.retry_count(), 0);
    for holder in holders {
        holder.await.expect("task").expect("holders finish");
    }
    select_one(&manager).await.expect("connections come back");
    manager.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_database_at_start_says_where_how_often_and_why() {
    // A port nothing listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    let url = format!("postgres://app:Sup3r-Secret-Pw@127.0.0.1:{port}/nowhere");
    let config = common::config(&url, &[("DB_RETRY_MAX_ATTEMPTS", "2"), ("DB_RETRY_BASE_DELAY", "5ms")]);
    let error = dbguard::DbManager::connect(config).await.expect_err("nothing listens there");
    let text = error.to_string();
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(text.contains("after 3 attempts"), "{text}");
    assert!(text.contains("connection_refused"), "{text}");
    assert!(!text.contains("Sup3r-Secret-Pw") && !format!("{error:?}").contains("Sup3r-Secret-Pw"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_flight_health_makes_one_probe_for_500_callers() {
    let Some(db) = TestDb::create_or_skip("single_flight").await else { return };
    let manager = common::manager(db.url(), &[]).await;
    let callers = (0..500).map(|_| {
        let manager = manager.clone();
        tokio::spawn(async move { manager.check_health(false).await.status })
    });
    for status in futures::future::join_all(callers).await {
        assert_eq!(status.expect("task"), dbguard::HealthStatus::Healthy);
    }
    assert_eq!(manager.probe_count(), 1, "500 concurrent callers share one probe");
    let forced = manager.check_health(true).await;
    assert_eq!(forced.status, dbguard::HealthStatus::Healthy);
    assert_eq!(manager.probe_count(), 2, "force bypasses the cache");
    let version = forced.version.clone().unwrap_or_default();
    assert!(version.chars().next().is_some_and(|c| c.is_ascii_digit()), "server version reported: {version:?}");
    manager.close().await;
}
