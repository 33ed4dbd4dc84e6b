//! Fault drill: the postmaster and all its children killed with SIGKILL under ledger load,
//! then started again (crash recovery).
//!
//! Writes go through dbguard as non-idempotent calls, so a write whose connection died is never
//! replayed blindly: it surfaces as outcome-unknown, and the caller resolves it by looking up
//! its idempotency key. The ledger table has no unique key, so a write executed twice would
//! leave two rows: nothing acknowledged may be lost, no key may have two rows.

mod common;

use dbguard::{HealthStatus, Idempotency};
use dbguard_tests::{Outcome, PgCluster, ledger_key};
use sea_orm::{ConnectionTrait, DbBackend, Statement};

const DRILL_VARS: &[(&str, &str)] = &[
    ("DB_POOL_SIZE", "4"),
    ("DB_MAX_OVERFLOW", "4"),
    ("DB_POOL_TIMEOUT", "5s"),
    ("DB_HEALTH_TIMEOUT", "1s"),
    ("DB_RETRY_MAX_ATTEMPTS", "50"),
];

/// Worker id of the one slow write that is guaranteed to be in flight when the server dies.
const SLOW_WORKER: i32 = 99;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_the_postmaster_under_ledger_load() {
    let test = "drill_kill9";
    let Some(pg) = PgCluster::start_or_skip(test).await else { return };
    // Acknowledged means durable (see drill_restart): a SIGKILL must not be able to take back
    // a commit the server already confirmed.
    pg.set_setting("synchronous_commit", "on").expect("set synchronous_commit");
    pg.reload().await.expect("reload");
    let url = pg.url("postgres");
    let ledger = common::ledger_for(&url, Idempotency::NonIdempotent).await;
    let manager = common::manager(&url, DRILL_VARS).await;

    let load = common::LedgerLoad::start(&manager, 6, 2, Idempotency::NonIdempotent);
    common::wait_for_rows_above(&ledger, 50).await;

    // A write that is certainly mid-statement when the server dies.
    let slow = {
        let manager = manager.clone();
        tokio::spawn(async move {
            manager
                .run(Idempotency::NonIdempotent, |db| async move {
                    let values = [ledger_key(SLOW_WORKER, 0).into(), SLOW_WORKER.into(), 0.into()];
                    db.execute_raw(Statement::from_sql_and_values(
                        DbBackend::Postgres,
                        "INSERT INTO ledger (idempotency_key, worker, seq) SELECT $1, $2, $3 FROM pg_sleep(2)",
                        values,
                    ))
                    .await
                    .map(|_| ())
                })
                .await
        })
    };
    common::wait_for_statement(&url, "FROM pg_sleep(2)").await;

    pg.kill9().await.expect("kill -9 the server");
    let (down, seen_down) = common::wait_for_health(&manager, HealthStatus::Unhealthy).await;
    pg.start().await.expect("start after the kill (crash recovery)");
    let (_, seen_up) = common::wait_for_health(&manager, HealthStatus::Healthy).await;
    let rows_at_recovery = common::ledger_rows(&ledger).await;
    common::wait_for_rows_above(&ledger, rows_at_recovery + 50).await;

    let slow_result = tokio::time::timeout(common::HANG_LIMIT, slow).await.expect("slow write returns").expect("task");
    let mut tally = load.finish().await;
    let slow_error = slow_result.expect_err("the slow write's connection was killed under it");
    assert!(slow_error.is_outcome_unknown(), "a write cut off mid-flight is outcome-unknown: {slow_error}");
    assert_eq!(slow_error.retry_count(), 0, "an outcome-unknown write is never replayed blindly");
    tally.writes.record(&Outcome::OutcomeUnknown);
    tally.unknown.push((SLOW_WORKER, 0));

    let unknown = tally.unknown.len() as u64;
    let resolution = common::resolve_unknown(&manager, &ledger, &mut tally).await;
    let (committed, rewritten) = (resolution.committed.len(), resolution.rewritten.len());
    let audit = ledger.audit(&tally.acked).await.expect("audit");
    let mut report = tally.combined();
    report.faults = 1;
    report.retries = manager.stats().retries();
    report.apply_audit(&audit);
    common::print_summary(
        test,
        &report,
        &format!(
            "resolved_committed={committed} resolved_rewritten={rewritten} health={seen_down:?}->{seen_up:?} \
             down_cause={:?}",
            down.message
        ),
    );

    common::assert_ledger_intact(&report, &audit, unknown);
    assert_eq!(audit.unacked_present, 0, "every row belongs to an acknowledged or resolved write");
    assert_eq!(report.outcome_unknown, unknown, "every outcome-unknown write was counted and resolved");
    // The slow write was killed inside pg_sleep, before its insert ran: it cannot have committed.
    assert!(
        resolution.rewritten.contains(&ledger_key(SLOW_WORKER, 0)),
        "the write killed mid-statement did not commit and was written again: {resolution:?}"
    );
    assert_eq!(
        tally.writes.errors_total(),
        0,
        "non-idempotent writes fail only as outcome-unknown; other errors: {:?}",
        tally.samples
    );
    assert_eq!(tally.reads.errors_total(), 0, "idempotent reads saw errors: {:?}", tally.samples);
    assert!(tally.writes.acked > 0 && tally.reads.acked > 0, "the load ran");
    manager.close().await;
}
