//! Fault drill: every dbguard backend terminated (`pg_terminate_backend`) every 200 ms for 5 s
//! while the ledger load runs. Killed sessions are the most common fault in production
//! (failovers of poolers, idle-session killers, operators); callers must see none of it.

mod common;

use std::time::Duration;

use dbguard::Idempotency;
use dbguard_tests::{Ledger, TestDb};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminating_every_backend_every_200ms_surfaces_no_error() {
    let test = "drill_terminate";
    let Some(db) = TestDb::create_or_skip(test).await else { return };
    let ledger = Ledger::connect(db.url()).await.expect("ledger connection");
    ledger.create_table().await.expect("ledger table");
    let manager =
        common::manager(db.url(), &[("DB_POOL_SIZE", "4"), ("DB_MAX_OVERFLOW", "4"), ("DB_RETRY_MAX_ATTEMPTS", "50")])
            .await;
    let load = common::LedgerLoad::start(&manager, 6, 2, Idempotency::Idempotent);

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
    let tally = load.finish().await;
    let audit = ledger.audit(&tally.acked).await.expect("audit");
    let mut report = tally.combined();
    report.faults = u64::try_from(killed).unwrap_or(0);
    report.retries = manager.stats().retries();
    report.apply_audit(&audit);
    common::print_summary(test, &report, &format!("rounds={rounds} backends_killed={killed}"));

    assert!(killed >= 25, "the drill must actually kill backends (killed {killed} in {rounds} rounds)");
    assert_eq!(report.errors_total(), 0, "callers saw errors: {:?}", tally.samples);
    assert_eq!(report.outcome_unknown, 0, "idempotent writes are retried, never left unknown");
    assert_eq!(report.lost, 0, "acknowledged writes lost: {:?}", audit.lost);
    assert_eq!(report.duplicates, 0, "duplicated writes");
    assert!(tally.writes.acked > 100, "the load ran ({} writes)", tally.writes.acked);
    manager.close().await;
}
