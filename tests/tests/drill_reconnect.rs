//! Fault drill: 20 reconnect requests at once while the ledger load runs. They must collapse
//! into one pool rebuild, and no call may fail or be lost while the pools are swapped.

mod common;

use std::time::Duration;

use dbguard::{HealthStatus, Idempotency};
use dbguard_tests::{Ledger, TestDb};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_reconnects_rebuild_once_and_lose_nothing() {
    let test = "drill_reconnect";
    let Some(db) = TestDb::create_or_skip(test).await else { return };
    let ledger = Ledger::connect(db.url()).await.expect("ledger connection");
    ledger.create_table().await.expect("ledger table");
    let manager = common::manager(db.url(), &[("DB_POOL_SIZE", "4"), ("DB_MAX_OVERFLOW", "4")]).await;
    let load = common::LedgerLoad::start(&manager, 6, 2, Idempotency::Idempotent);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let requests: Vec<_> = (0..20)
        .map(|_| {
            let manager = manager.clone();
            tokio::spawn(async move { tokio::time::timeout(common::HANG_LIMIT, manager.reconnect()).await })
        })
        .collect();
    let mut statuses = Vec::new();
    for request in requests {
        let report = request.await.expect("task").expect("a reconnect hung").expect("reconnect succeeds");
        statuses.push(report.status);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
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
    assert_eq!((report.lost, report.duplicates), (0, 0), "lost: {:?}", audit.lost);
    assert!(tally.writes.acked > 0, "the load ran");
    manager.close().await;
}
