//! The ledger workload through PgBouncer (Debian's pgbouncer, started by the harness in front of
//! a private cluster), with fewer server connections than dbguard's pool:
//!
//! - transaction pooling with `DB_STATEMENT_MODE=simple`: idempotent and non-idempotent writes
//!   through `run`, transactions through `transaction`, reads and health, with zero failures
//!   and no write lost or duplicated;
//! - the same load with `DB_STATEMENT_MODE=prepared` fails, and the error names the setting
//!   (the fault the simple mode exists for, shown to be real);
//! - session pooling with the default prepared statements, the same way.

mod common;

use dbguard::{DbManager, HealthStatus, Idempotency};
use dbguard_tests::{APPEND_SQL, Ledger, PgBouncer, PgBouncerOptions, PgCluster, PoolMode, ledger_key};
use sea_orm::{ConnectionTrait, DbBackend, Statement};

/// Server connections PgBouncer keeps per database in transaction mode: fewer than dbguard's
/// pool, so client connections really share them.
const BOUNCER_POOL: u32 = 2;

/// dbguard's pool behind PgBouncer.
const DBGUARD_POOL: &[(&str, &str)] = &[("DB_POOL_SIZE", "4"), ("DB_MAX_OVERFLOW", "2")];

/// Rows the load must have written before it is stopped.
const ROWS_WANTED: u64 = 300;

/// Transactions run through `transaction` on the non-idempotent ledger.
const TRANSACTIONS: i32 = 60;

/// A private cluster with the two ledger databases, and PgBouncer in front of it in `mode`
/// with `pool_size` server connections per database; `None` after a skip.
async fn bouncer_in_front(test: &str, mode: PoolMode, pool_size: u32) -> Option<(PgCluster, PgBouncer)> {
    let pg = PgCluster::start_or_skip(test).await?;
    for db in ["keyed", "append"] {
        common::admin_exec(&pg.url("postgres"), &format!("CREATE DATABASE {db}")).await;
    }
    let options = PgBouncerOptions::in_front_of(&pg).pool_mode(mode).default_pool_size(pool_size);
    let bouncer = PgBouncer::start_or_skip(test, options).await?;
    Some((pg, bouncer))
}

async fn manager_through(bouncer: &PgBouncer, db: &str, statement_mode: &str) -> DbManager {
    let mut extra = DBGUARD_POOL.to_vec();
    extra.push(("DB_STATEMENT_MODE", statement_mode));
    common::manager(&bouncer.url(db), &extra).await
}

/// One transaction: a ledger append and a read of the table, committed together.
async fn ledger_transaction(manager: &DbManager, seq: i32) -> Result<i64, dbguard::DbError> {
    manager
        .transaction(move |txn| {
            Box::pin(async move {
                let values = [ledger_key(1000, seq).into(), 1000.into(), seq.into()];
                txn.execute_raw(Statement::from_sql_and_values(DbBackend::Postgres, APPEND_SQL, values)).await?;
                let row = txn
                    .query_one_raw(Statement::from_sql_and_values(
                        DbBackend::Postgres,
                        "SELECT count(*) AS n FROM ledger WHERE worker = $1",
                        [1000.into()],
                    ))
                    .await?
                    .expect("count returns a row");
                row.try_get::<i64>("", "n")
            })
        })
        .await
}

/// Runs the ledger load (4 writers, 2 readers) on `db` through `manager` until the table holds
/// [`ROWS_WANTED`] rows, then (non-idempotent ledger only) [`TRANSACTIONS`] transactions, and
/// returns the combined report after the audit plus the first error texts.
async fn run_ledger(
    manager: &DbManager,
    ledger: &Ledger,
    idempotency: Idempotency,
) -> (dbguard_tests::LedgerReport, dbguard_tests::LedgerAudit, Vec<String>) {
    let load = common::LedgerLoad::start(manager, 4, 2, idempotency);
    let stop_at = tokio::time::Instant::now() + common::HANG_LIMIT / 3;
    while common::ledger_rows(ledger).await < ROWS_WANTED && tokio::time::Instant::now() < stop_at {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mut tally = load.finish().await;
    if idempotency == Idempotency::NonIdempotent {
        for seq in 0..TRANSACTIONS {
            match ledger_transaction(manager, seq).await {
                Ok(count) => {
                    assert!(count > i64::from(seq), "the transaction sees its own write: {count} rows at {seq}");
                    tally.acked.push(ledger_key(1000, seq));
                    tally.writes.record_ack(1);
                }
                Err(err) => {
                    if tally.samples.len() < 8 {
                        tally.samples.push(err.to_string());
                    }
                    tally.writes.record(&common::outcome_of(&err));
                }
            }
        }
    }
    let audit = ledger.audit(&tally.acked).await.expect("audit");
    let mut report = tally.combined();
    report.apply_audit(&audit);
    (report, audit, tally.samples)
}

/// [`run_ledger`], printing the drill line, and asserting that no call failed, the load ran, and
/// no acknowledged write was lost or duplicated.
async fn run_clean_ledger(manager: &DbManager, ledger: &Ledger, idempotency: Idempotency, drill: &str, extra: &str) {
    let (report, audit, samples) = run_ledger(manager, ledger, idempotency).await;
    common::print_summary(drill, &report, extra);
    assert_eq!(report.errors_total(), 0, "{drill}: calls failed: {samples:?}");
    assert!(report.acked >= ROWS_WANTED, "{drill}: the load ran: {report}");
    common::assert_ledger_intact(&report, &audit, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_pooling_with_simple_statements_loses_nothing_and_fails_nothing() {
    let test = "transaction_pooling_with_simple_statements_loses_nothing_and_fails_nothing";
    let Some((pg, bouncer)) = bouncer_in_front(test, PoolMode::Transaction, BOUNCER_POOL).await else { return };

    for (db, idempotency) in [("keyed", Idempotency::Idempotent), ("append", Idempotency::NonIdempotent)] {
        let ledger = common::ledger_for(&pg.url(db), idempotency).await;
        let manager = manager_through(&bouncer, db, "simple").await;
        let health = manager.check_health(true).await;
        assert_eq!(health.status, HealthStatus::Healthy, "health through PgBouncer: {health:?}");

        let summary = format!("bouncer_pool={BOUNCER_POOL} dbguard_pool=4+2 statement_mode=simple");
        run_clean_ledger(&manager, &ledger, idempotency, &format!("pgbouncer-txn-{db}"), &summary).await;

        // The servers PgBouncer opened: never more than its pool, whatever dbguard's size.
        let servers = bouncer.show("SERVERS").await.expect("SHOW SERVERS");
        let ours = servers.iter().filter(|s| s["database"] == db).count();
        assert!(ours <= BOUNCER_POOL as usize, "{ours} server connections for {db}: {servers:?}");
        manager.close().await;
    }
}

/// The fault the simple mode exists for: named statements through transaction pooling fail,
/// and the caller is told which setting fixes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_through_transaction_pooling_fail_with_an_error_naming_the_setting() {
    let test = "prepared_statements_through_transaction_pooling_fail_with_an_error_naming_the_setting";
    let Some((pg, bouncer)) = bouncer_in_front(test, PoolMode::Transaction, BOUNCER_POOL).await else { return };
    let ledger = common::ledger_for(&pg.url("keyed"), Idempotency::Idempotent).await;
    let manager = manager_through(&bouncer, "keyed", "prepared").await;

    let (report, _audit, samples) = run_ledger(&manager, &ledger, Idempotency::Idempotent).await;
    common::print_summary("pgbouncer-txn-prepared", &report, "statement_mode=prepared");
    let lost_statements = report.errors.get("prepared_statement_lost").copied().unwrap_or(0);
    assert!(lost_statements > 0, "named statements through transaction pooling did not fail: {report} {samples:?}");
    assert!(
        samples.iter().any(|text| text.contains("DB_STATEMENT_MODE=simple")),
        "the error names the setting: {samples:?}"
    );
    manager.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_pooling_with_prepared_statements_loses_nothing_and_fails_nothing() {
    let test = "session_pooling_with_prepared_statements_loses_nothing_and_fails_nothing";
    // In session mode a client keeps its server connection until it disconnects, so PgBouncer's
    // pool must hold all of dbguard's connections (4 + 2 overflow), or the surplus waits.
    let Some((pg, bouncer)) = bouncer_in_front(test, PoolMode::Session, 6).await else { return };

    for (db, idempotency) in [("keyed", Idempotency::Idempotent), ("append", Idempotency::NonIdempotent)] {
        let ledger = common::ledger_for(&pg.url(db), idempotency).await;
        let manager = manager_through(&bouncer, db, "prepared").await;
        let summary = "bouncer_pool=6 dbguard_pool=4+2 statement_mode=prepared";
        run_clean_ledger(&manager, &ledger, idempotency, &format!("pgbouncer-session-{db}"), summary).await;
        manager.close().await;
    }
}
