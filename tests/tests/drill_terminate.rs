//! Fault drill: every dbguard backend terminated (`pg_terminate_backend`) every 200 ms for 5 s
//! while the ledger load runs. Killed sessions are the most common fault in production
//! (failovers of poolers, idle-session killers, operators).
//!
//! Writes are non-idempotent plain inserts into a ledger without a unique key, so a write that
//! dbguard replayed after its session was killed would leave two rows. Idempotent reads must see
//! no error; a write may surface only as outcome-unknown, which the caller resolves by its key;
//! nothing acknowledged may be lost and no key may have two rows.

mod common;

use std::time::Duration;

use dbguard::Idempotency;
use dbguard_tests::TestDb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminating_every_backend_every_200ms_loses_and_replays_nothing() {
    let test = "drill_terminate";
    let Some(db) = TestDb::create_or_skip(test).await else { return };
    let ledger = common::ledger_for(db.url(), Idempotency::NonIdempotent).await;
    let manager =
        common::manager(db.url(), &[("DB_POOL_SIZE", "4"), ("DB_MAX_OVERFLOW", "4"), ("DB_RETRY_MAX_ATTEMPTS", "50")])
            .await;
    let load = common::LedgerLoad::start(&manager, 6, 2, Idempotency::NonIdempotent);

    // Only this database's dbguard sessions (the ledger's own audit pool is left alone).
    let terminate = format!(
        "SELECT count(pg_terminate_backend(pid))::bigint FROM pg_stat_activity \
         WHERE datname = '{}' AND application_name = 'dbguard'",
        db.name()
    );
    let (mut rounds, mut killed) = (0u64, 0i64);
    while rounds < 25 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        killed += common::admin_scalar(db.admin_url(), &terminate).await;
        rounds += 1;
    }
    let mut tally = load.finish().await;
    let unknown = tally.unknown.len() as u64;
    let resolution = common::resolve_unknown(&manager, &ledger, &mut tally).await;
    let audit = ledger.audit(&tally.acked).await.expect("audit");
    let mut report = tally.combined();
    report.faults = u64::try_from(killed).unwrap_or(0);
    report.retries = manager.stats().retries();
    report.apply_audit(&audit);
    common::print_summary(
        test,
        &report,
        &format!(
            "rounds={rounds} backends_killed={killed} resolved_committed={} resolved_rewritten={}",
            resolution.committed.len(),
            resolution.rewritten.len()
        ),
    );

    assert!(killed >= 25, "the drill must actually kill backends (killed {killed} in {rounds} rounds)");
    assert!(report.retries > 0, "killed sessions reached calls, and they were retried");
    assert_eq!(tally.reads.errors_total(), 0, "idempotent reads saw errors: {:?}", tally.samples);
    assert_eq!(
        tally.writes.errors_total(),
        0,
        "non-idempotent writes fail only as outcome-unknown; other errors: {:?}",
        tally.samples
    );
    common::assert_ledger_intact(&report, &audit, unknown);
    assert_eq!(audit.unacked_present, 0, "every row belongs to an acknowledged or resolved write");
    assert!(tally.writes.acked > 100, "the load ran ({} writes)", tally.writes.acked);
    manager.close().await;
}
