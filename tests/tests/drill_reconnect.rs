//! Fault drill: 20 reconnect requests at once while the ledger load runs. They must collapse
//! into one pool rebuild, and no call may fail or be lost while the pools are swapped.
//!
//! "At once" means every request has asked before the rebuild finishes: the requests are polled
//! together from one task, so none can arrive after the rebuild (a late request rightly starts
//! a new one, which is why spawned requests could see two).

mod common;

use dbguard::{HealthStatus, Idempotency};
use dbguard_tests::TestDb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_reconnects_rebuild_once_and_lose_nothing() {
    let test = "drill_reconnect";
    let Some(db) = TestDb::create_or_skip(test).await else { return };
    let ledger = common::ledger_for(db.url(), Idempotency::Idempotent).await;
    let manager = common::manager(db.url(), &[("DB_POOL_SIZE", "4"), ("DB_MAX_OVERFLOW", "4")]).await;
    let load = common::LedgerLoad::start(&manager, 6, 2, Idempotency::Idempotent);
    common::wait_for_rows_above(&ledger, 50).await;

    let requests = futures::future::join_all((0..20).map(|_| manager.reconnect()));
    let mut statuses = Vec::new();
    for result in tokio::time::timeout(common::HANG_LIMIT, requests).await.expect("a reconnect hung") {
        statuses.push(result.expect("reconnect succeeds").status);
    }
    let rows_after_rebuild = common::ledger_rows(&ledger).await;
    common::wait_for_rows_above(&ledger, rows_after_rebuild + 50).await;
    let tally = load.finish().await;
    let rebuilds = manager.stats().summary().reconnects_total;
    let audit = ledger.audit(&tally.acked).await.expect("audit");
    let mut report = tally.combined();
    report.faults = 20;
    report.retries = manager.stats().retries();
    report.apply_audit(&audit);
    common::print_summary(test, &report, &format!("reconnect_requests=20 rebuilds={rebuilds}"));

    assert!(statuses.iter().all(|s| *s == HealthStatus::Healthy), "{statuses:?}");
    assert_eq!(rebuilds, 1, "20 concurrent requests collapse into one rebuild");
    assert_eq!(report.errors_total() + report.outcome_unknown, 0, "callers saw errors: {:?}", tally.samples);
    common::assert_ledger_intact(&report, &audit, 0);
    assert!(tally.writes.acked > 0, "the load ran");
    manager.close().await;
}
