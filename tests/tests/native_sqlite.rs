//! SQLite: contention is retried and nothing is lost; a file runs on dbguard's own pool, whose
//! status is truthful, whose `BEGIN IMMEDIATE` takes the write lock up front and which closes a
//! connection left mid-transaction, and whose statements stop at `DB_STATEMENT_TIMEOUT`;
//! in-memory databases work; rows stream.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use std::time::Duration;

use dbguard::{DbManager, HealthStatus, Idempotency, TxnOptions};
use futures::{StreamExt as _, TryStreamExt as _};
use sea_orm::{ConnectionTrait, DbBackend, Statement, StreamTrait};
use sqlx::Connection as _;

/// A connection to the file outside dbguard that does not wait on locks: it sees only what
/// was committed, and a write it tries while another connection holds the lock fails at once.
async fn outside_connection(path: &std::path::Path) -> sqlx::SqliteConnection {
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(path).busy_timeout(Duration::ZERO);
    sqlx::SqliteConnection::connect_with(&options).await.expect("outside connection")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_runs_on_dbguards_pool_and_its_status_is_truthful() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}/owned.db", dir.path().display());
    let manager = common::manager(&url, &[("DB_POOL_SIZE", "2"), ("DB_MAX_OVERFLOW", "1")]).await;
    let idle = manager.pool_status();
    assert_eq!((idle.checked_in, idle.checked_out, idle.overflow), (2, 0, 0), "{idle:?}");
    // Only dbguard's pool counts waiting callers; SeaORM's cannot.
    assert_eq!(idle.waiting, Some(0), "{idle:?}");

    let (busy, answer) = manager
        .run(Idempotency::Idempotent, |db| {
            let manager = manager.clone();
            async move {
                let row = db.query_one_raw(Statement::from_string(DbBackend::Sqlite, "SELECT 41 + 1 AS n")).await?;
                // The handle holds its connection from its first statement until it is dropped.
                Ok((manager.pool_status(), row.expect("one row").try_get::<i32>("", "n")?))
            }
        })
        .await
        .expect("select");
    assert_eq!(answer, 42);
    assert_eq!((busy.checked_in, busy.checked_out), (1, 1), "{busy:?}");
    let after = manager.pool_status();
    assert_eq!((after.checked_in, after.checked_out), (2, 0), "returned: {after:?}");

    let report = manager.check_health(true).await;
    assert_eq!(report.status, HealthStatus::Healthy, "{}", report.message);
    // Code that needs a plain SeaORM connection (a migrator) still gets one on the same file.
    let plain = manager.connection();
    plain.execute_unprepared("CREATE TABLE plain (n INT)").await.expect("plain connection");
    manager
        .run(Idempotency::Idempotent, |db| async move { db.execute_unprepared("INSERT INTO plain VALUES (1)").await })
        .await
        .expect("the guarded path sees the plain connection's table");
    manager.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_immediate_transaction_holds_the_write_lock_from_its_begin() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("locks.db");
    let manager = common::manager(&format!("sqlite://{}", path.display()), &[]).await;
    manager
        .run(Idempotency::Idempotent, |db| async move { db.execute_unprepared("CREATE TABLE t (n INT)").await })
        .await
        .expect("schema");
    let mut outside = outside_connection(&path).await;
    for (options, holds_lock) in [(TxnOptions::default(), false), (TxnOptions::sqlite_immediate(), true)] {
        let (began, release) = (Arc::new(tokio::sync::Notify::new()), Arc::new(tokio::sync::Notify::new()));
        let transaction = tokio::spawn({
            let (manager, began, release) = (manager.clone(), Arc::clone(&began), Arc::clone(&release));
            async move {
                manager
                    .transaction_with(options, move |txn| {
                        let (began, release) = (Arc::clone(&began), Arc::clone(&release));
                        Box::pin(async move {
                            // Reads only: a deferred transaction takes no write lock for them.
                            txn.query_one_raw(Statement::from_string(DbBackend::Sqlite, "SELECT count(*) FROM t"))
                                .await?;
                            began.notify_one();
                            release.notified().await;
                            Ok(())
                        })
                    })
                    .await
            }
        });
        began.notified().await;
        let outside_write = sqlx::raw_sql("BEGIN IMMEDIATE; ROLLBACK").execute(&mut outside).await;
        if holds_lock {
            let err = outside_write.expect_err("the immediate transaction holds the write lock");
            assert!(err.to_string().contains("locked"), "{err}");
        } else {
            outside_write.expect("a deferred transaction that only read holds no write lock");
        }
        release.notify_one();
        transaction.await.expect("task").expect("transaction");
    }
    outside.close().await.ok();
    manager.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_cut_off_mid_way_is_rolled_back_and_its_connection_closed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("cut.db");
    // One connection: the next call would get the cut-off one if it went back to the pool.
    let manager =
        common::manager(&format!("sqlite://{}", path.display()), &[("DB_POOL_SIZE", "1"), ("DB_MAX_OVERFLOW", "0")])
            .await;
    manager
        .run(Idempotency::Idempotent, |db| async move { db.execute_unprepared("CREATE TABLE t (n INT)").await })
        .await
        .expect("schema");
    let cut_off = tokio::time::timeout(
        Duration::from_millis(200),
        manager.transaction_with(TxnOptions::sqlite_immediate(), |txn| {
            Box::pin(async move {
                txn.execute_unprepared("INSERT INTO t VALUES (1)").await?;
                std::future::pending::<()>().await;
                Ok(())
            })
        }),
    )
    .await;
    assert!(cut_off.is_err(), "the transaction never ends by itself");
    manager
        .run(Idempotency::NonIdempotent, |db| async move { db.execute_unprepared("INSERT INTO t VALUES (2)").await })
        .await
        .expect("the write lock was released");
    let mut outside = outside_connection(&path).await;
    let committed: Vec<i32> =
        sqlx::query_scalar("SELECT n FROM t ORDER BY n").fetch_all(&mut outside).await.expect("rows");
    assert_eq!(committed, vec![2], "the cut-off insert was rolled back and the next write committed");
    outside.close().await.ok();
    manager.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_past_the_statement_timeout_is_interrupted_and_its_connection_kept() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("timeout.db");
    // One connection: a temporary table, which lives only on the connection that made it, shows
    // whether the interrupted statement's connection was kept.
    let manager = common::manager(
        &format!("sqlite://{}", path.display()),
        &[("DB_POOL_SIZE", "1"), ("DB_MAX_OVERFLOW", "0"), ("DB_STATEMENT_TIMEOUT", "200ms")],
    )
    .await;
    manager
        .run(Idempotency::Idempotent, |db| async move {
            db.execute_unprepared("CREATE TABLE t (n INT); CREATE TEMP TABLE this_connection (n INT)").await
        })
        .await
        .expect("schema");

    // A billion rows: minutes of work, unless SQLite is stopped.
    let endless_insert = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000000) \
                          INSERT INTO t SELECT x FROM c";
    let no_retry = dbguard_core::RetryPolicy::builder().max_retries(0).build().expect("policy");
    let interrupted = tokio::time::timeout(
        common::HANG_LIMIT,
        manager.run_with_policy(no_retry, Idempotency::NonIdempotent, |db| async move {
            db.execute_unprepared(endless_insert).await.map(drop)
        }),
    )
    .await
    .expect("the statement was stopped at its timeout")
    .expect_err("a statement past DB_STATEMENT_TIMEOUT fails");
    assert_eq!(interrupted.class(), dbguard_core::ErrorClass::QueryCanceled, "{interrupted}");

    let (rows, kept): (i64, i64) = manager
        .run(Idempotency::Idempotent, |db| async move {
            let count = |sql: &'static str| {
                let db = &db;
                async move {
                    let row = db.query_one_raw(Statement::from_string(DbBackend::Sqlite, sql)).await?;
                    row.expect("one row").try_get_by_index::<i64>(0)
                }
            };
            Ok((count("SELECT count(*) FROM t").await?, count("SELECT count(*) FROM this_connection").await?))
        })
        .await
        .expect("the connection answers after the interrupt");
    assert_eq!(rows, 0, "the interrupted insert was rolled back");
    assert_eq!(kept, 0, "the interrupted statement's connection (with its temporary table) was kept");
    manager.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contending_writers_lose_no_row() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}/contended.db", dir.path().display());
    // Two managers are two independent pools on one file: real lock contention.
    let writers: Vec<DbManager> = vec![
        common::manager(&url, &[("DB_POOL_SIZE", "2"), ("DB_MAX_OVERFLOW", "2")]).await,
        common::manager(&url, &[("DB_POOL_SIZE", "2"), ("DB_MAX_OVERFLOW", "2")]).await,
    ];
    writers[0]
        .run(Idempotency::Idempotent, |db| async move {
            db.execute_unprepared("CREATE TABLE IF NOT EXISTS events (key TEXT PRIMARY KEY, writer INT)").await
        })
        .await
        .expect("schema");
    let errors = Arc::new(AtomicU64::new(0));
    let per_task = 100;
    let tasks: Vec<_> = (0..8)
        .map(|task| {
            let manager = writers[task % 2].clone();
            let errors = errors.clone();
            tokio::spawn(async move {
                for seq in 0..per_task {
                    // A read then a write in one deferred transaction: the classic way to get
                    // SQLITE_BUSY past busy_timeout (the read lock cannot be upgraded).
                    let result = manager
                        .transaction(move |txn| {
                            Box::pin(async move {
                                txn.query_one_raw(Statement::from_string(
                                    DbBackend::Sqlite,
                                    "SELECT count(*) FROM events",
                                ))
                                .await?;
                                txn.execute_raw(Statement::from_sql_and_values(
                                    DbBackend::Sqlite,
                                    "INSERT INTO events (key, writer) VALUES (?, ?)",
                                    [format!("t{task}-{seq}").into(), (task as i32).into()],
                                ))
                                .await
                            })
                        })
                        .await;
                    if let Err(err) = result {
                        eprintln!("writer saw: {err}");
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("writer task");
    }
    let count = writers[0]
        .run(Idempotency::Idempotent, |db| async move {
            let row = db
                .query_one_raw(Statement::from_string(DbBackend::Sqlite, "SELECT count(*) AS n FROM events"))
                .await?
                .expect("row");
            row.try_get::<i64>("", "n")
        })
        .await
        .expect("count");
    let retries: u64 = writers.iter().map(|w| w.stats().retries()).sum();
    println!("sqlite contention: rows={count} retries={retries} errors={}", errors.load(Ordering::Relaxed));
    assert_eq!(errors.load(Ordering::Relaxed), 0);
    assert_eq!(count, 8 * per_task as i64, "every row lands exactly once (primary key)");
    let report = writers[0].check_health(true).await;
    assert_eq!(report.status, HealthStatus::Healthy, "{}", report.message);
    for writer in writers {
        writer.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_database_is_one_shared_connection() {
    let manager = common::manager("sqlite::memory:", &[]).await;
    manager
        .run(Idempotency::NonIdempotent, |db| async move {
            db.execute_unprepared("CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('kept')").await
        })
        .await
        .expect("create");
    // Later calls see the same in-memory database.
    let body = manager
        .run(Idempotency::Idempotent, |db| async move {
            let row = db
                .query_one_raw(Statement::from_string(DbBackend::Sqlite, "SELECT body FROM notes"))
                .await?
                .expect("row");
            row.try_get::<String>("", "body")
        })
        .await
        .expect("select");
    assert_eq!(body, "kept");
    let status = manager.pool_status();
    assert!(status.checked_in + status.checked_out <= 1, "{status:?}");
    let report = manager.check_health(true).await;
    assert_eq!(report.status, HealthStatus::Healthy, "{}", report.message);
    manager.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immediate_transactions_serialize_writers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}/immediate.db", dir.path().display());
    let manager = common::manager(&url, &[]).await;
    manager
        .run(Idempotency::Idempotent, |db| async move {
            db.execute_unprepared("CREATE TABLE counter (n INT); INSERT INTO counter VALUES (0)").await
        })
        .await
        .expect("schema");
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let manager = manager.clone();
            tokio::spawn(async move {
                for _ in 0..25 {
                    manager
                        .transaction_with(TxnOptions::sqlite_immediate(), |txn| {
                            Box::pin(async move { txn.execute_unprepared("UPDATE counter SET n = n + 1").await })
                        })
                        .await
                        .expect("increment");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    let n = manager
        .run(Idempotency::Idempotent, |db| async move {
            let row = db
                .query_one_raw(Statement::from_string(DbBackend::Sqlite, "SELECT n FROM counter"))
                .await?
                .expect("row");
            row.try_get::<i32>("", "n")
        })
        .await
        .expect("read");
    assert_eq!(n, 100);

    // Rows stream on SeaORM's pool and inside a transaction on it alike.
    let counter = || Statement::from_string(DbBackend::Sqlite, "SELECT n FROM counter UNION ALL SELECT -1");
    let streamed = manager
        .run(Idempotency::Idempotent, |db| async move {
            let rows = db.stream_raw(counter()).await?;
            rows.map(|row| row?.try_get::<i32>("", "n")).try_collect::<Vec<_>>().await
        })
        .await
        .expect("stream on the pool");
    assert_eq!(streamed, vec![100, -1]);
    let streamed_in_transaction = manager
        .transaction(|txn| {
            Box::pin(async move {
                let rows = txn.stream_raw(counter()).await?;
                rows.map(|row| row?.try_get::<i32>("", "n")).try_collect::<Vec<_>>().await
            })
        })
        .await
        .expect("stream in a transaction");
    assert_eq!(streamed_in_transaction, vec![100, -1]);
    manager.close().await;
}

/// SQLite 3.51.1 (bundled by libsqlite3-sys 0.36) could deadlock inside its unix VFS when one
/// connection to a WAL-mode file closed while another opened the same file: the close took the
/// file's lock mutex and then the VFS's global one, the open the other way round, and every
/// thread touching the file hung for good. dbguard's pool opens and closes connections while
/// others run (warm-up, overflow, recycling, a reconnect), so the linked SQLite must be one where
/// this cannot happen (3.51.3 and later).
#[test]
fn connections_opening_and_closing_at_once_on_one_file_never_hang() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("churn.db");
    rusqlite::Connection::open(&path)
        .and_then(|conn| conn.pragma_update(None, "journal_mode", "WAL"))
        .expect("a WAL-mode file");
    let (done, finished) = std::sync::mpsc::channel();
    let churn = Duration::from_secs(3);
    for _ in 0..8 {
        let (path, done) = (path.clone(), done.clone());
        std::thread::spawn(move || {
            let started = std::time::Instant::now();
            let mut cycles = 0u64;
            while started.elapsed() < churn {
                let conn = rusqlite::Connection::open(&path).expect("open");
                conn.query_row("SELECT 1", [], |row| row.get::<_, i64>(0)).expect("select");
                drop(conn);
                cycles += 1;
            }
            done.send(cycles).ok();
        });
    }
    drop(done);
    let mut cycles = 0;
    for _ in 0..8 {
        // Far longer than the churn takes: not a timing claim, a bound on waiting for a hang.
        cycles += finished.recv_timeout(Duration::from_secs(120)).expect("a thread hung in SQLite");
    }
    assert!(cycles > 0, "the threads opened and closed connections");
}
