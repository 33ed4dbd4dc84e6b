//! Pool settings the README promises, against a real server: `DB_STATEMENT_TIMEOUT` cancels a
//! long statement with 57014 and leaves the connection usable, `DB_POOL_RECYCLE` replaces a
//! connection once it has lived that long, and dbguard's own PostgreSQL pool keeps
//! `DB_POOL_SIZE` warm, closes idle overflow, counts its waiters, and never reuses a connection
//! whose statement was cut off or whose rows were left unread.

mod common;

use std::time::Duration;

use dbguard::{DbManager, ErrorClass, Idempotency};
use dbguard_tests::TestDb;
use futures::StreamExt as _;
use sea_orm::{ConnectionTrait, DbBackend, Statement, StreamTrait};

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

/// Streams the first `take` rows of a 100 000-row series on a guarded call's connection, and
/// drops the stream there.
async fn stream_series(manager: &DbManager, take: usize) -> usize {
    manager
        .run(Idempotency::Idempotent, move |db| async move {
            let series = Statement::from_string(DbBackend::Postgres, "SELECT generate_series(1, 100000) AS n");
            let mut rows = db.stream_raw(series).await?;
            let mut read = 0;
            while read < take {
                match rows.next().await {
                    Some(row) => {
                        assert_eq!(row?.try_get::<i32>("", "n")?, i32::try_from(read + 1).expect("small"));
                        read += 1;
                    }
                    None => break,
                }
            }
            Ok(read)
        })
        .await
        .expect("stream the series")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_left_unfinished_closes_its_connection_and_a_finished_one_returns_it() {
    let Some(db) = TestDb::create_or_skip("stream_unfinished").await else { return };
    let manager = common::manager(db.url(), ONE_CONNECTION).await;

    let first = backend_pid(&manager).await;
    assert_eq!(stream_series(&manager, usize::MAX).await, 100_000, "every row arrives, in order");
    assert_eq!(backend_pid(&manager).await, first, "a stream read to its end returns its connection");

    assert_eq!(stream_series(&manager, 3).await, 3);
    let after_unfinished = backend_pid(&manager).await;
    assert_ne!(after_unfinished, first, "a connection with rows left unread went back to the pool");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_dropped_mid_statement_does_not_leave_its_connection_in_the_pool() {
    let Some(db) = TestDb::create_or_skip("dropped_mid_statement").await else { return };
    let manager = common::manager(db.url(), ONE_CONNECTION).await;
    let before = backend_pid(&manager).await;

    // The caller gives up while the statement runs: its future, and the handle, are dropped.
    let abandoned = tokio::time::timeout(
        Duration::from_millis(300),
        manager.run(Idempotency::Idempotent, |db| async move {
            db.execute_unprepared("SELECT pg_sleep(5)").await.map(|_| ())
        }),
    )
    .await;
    assert!(abandoned.is_err(), "the call was still running when dropped");

    // The only connection was mid-statement: it is closed, and the next call gets a new session
    // at once instead of the old one's pending answer.
    let after = tokio::time::timeout(Duration::from_secs(3), backend_pid(&manager))
        .await
        .expect("the next call does not wait for the abandoned statement");
    assert_ne!(after, before, "the connection with a statement in flight went back into the pool");
    manager.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_size_is_kept_warm_and_idle_overflow_is_closed() {
    let Some(db) = TestDb::create_or_skip("overflow_shed").await else { return };
    let manager = common::manager(db.url(), &[("DB_POOL_SIZE", "2"), ("DB_MAX_OVERFLOW", "3")]).await;
    let warm = manager.pool_status();
    assert_eq!((warm.checked_in, warm.checked_out), (2, 0), "DB_POOL_SIZE connections open at start: {warm:?}");

    // Five calls at once need the three overflow connections.
    let calls = (0..5).map(|_| {
        manager.run(Idempotency::Idempotent, |db| async move {
            db.execute_unprepared("SELECT pg_sleep(0.3)").await.map(|_| ())
        })
    });
    for result in futures::future::join_all(calls).await {
        result.expect("every call is served");
    }
    let busy = manager.pool_status();
    assert_eq!((busy.checked_in, busy.overflow), (5, 3), "the overflow connections opened: {busy:?}");

    // Idle for OVERFLOW_IDLE_TIMEOUT, the overflow closes and DB_POOL_SIZE stays, also under a
    // light steady load: one call at a time keeps reusing the connection returned last, so
    // the others go idle (a pool handing out its connections in turn would keep every one busy).
    let deadline = tokio::time::Instant::now() + dbguard::pool::OVERFLOW_IDLE_TIMEOUT + common::HANG_LIMIT;
    loop {
        backend_pid(&manager).await;
        let status = manager.pool_status();
        if status.checked_in + status.checked_out == 2 {
            assert_eq!(status.overflow, 0, "{status:?}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "idle overflow was never closed: {status:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    manager.close().await;
}

/// Calls one at a time run on the connection returned last, so its server process and caches
/// stay warm while the rest of the pool idles (and can be validated or closed as idle).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_call_at_a_time_reuses_the_connection_returned_last() {
    let Some(db) = TestDb::create_or_skip("pool_lifo").await else { return };
    let manager = common::manager(db.url(), &[("DB_POOL_SIZE", "4"), ("DB_MAX_OVERFLOW", "0")]).await;
    assert_eq!(manager.pool_status().checked_in, 4, "DB_POOL_SIZE connections open at start");
    let mut pids = std::collections::BTreeSet::new();
    for _ in 0..8 {
        pids.insert(backend_pid(&manager).await);
    }
    assert_eq!(pids.len(), 1, "sequential calls spread over the pool's sessions: {pids:?}");
    manager.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_status_counts_the_callers_waiting_for_a_connection() {
    let Some(db) = TestDb::create_or_skip("pool_waiters").await else { return };
    let manager = common::manager(db.url(), ONE_CONNECTION).await;
    assert_eq!(manager.pool_status().waiting, Some(0));
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let manager = manager.clone();
            tokio::spawn(async move {
                manager
                    .run(Idempotency::Idempotent, |db| async move {
                        db.execute_unprepared("SELECT pg_sleep(0.5)").await.map(|_| ())
                    })
                    .await
            })
        })
        .collect();
    let deadline = tokio::time::Instant::now() + common::HANG_LIMIT;
    let mut most_waiting = 0;
    while most_waiting < 3 {
        most_waiting = most_waiting.max(manager.pool_status().waiting.unwrap_or(0));
        assert!(tokio::time::Instant::now() < deadline, "never saw 3 waiters (at most {most_waiting})");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for call in calls {
        call.await.expect("task").expect("each call is served in turn");
    }
    assert_eq!(manager.pool_status().waiting, Some(0));
    manager.close().await;
}
