//! Fault drill: the database is down when the service starts. A lazily connected manager
//! must come up, report unhealthy with a cause, and become healthy once the server appears,
//! without being rebuilt.

mod common;

use dbguard::{DbManager, HealthStatus, Idempotency};
use dbguard_tests::{PgCluster, ledger_key};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_down_at_startup_then_appears() {
    let test = "drill_startup_down";
    let pg = match PgCluster::init().await {
        Ok(pg) => pg,
        Err(e) if e.is_missing_component() => return dbguard_tests::skip(test, &e.to_string()),
        Err(e) => panic!("{test}: initdb failed: {e}"),
    };
    let url = pg.url("postgres");
    let config = common::config(
        &url,
        &[("DB_POOL_TIMEOUT", "500ms"), ("DB_HEALTH_TIMEOUT", "1s"), ("DB_RETRY_MAX_ATTEMPTS", "2")],
    );
    let manager = DbManager::connect_lazy(config).await.expect("a lazy manager starts while the database is down");
    let mut report = dbguard_tests::LedgerReport { faults: 1, ..Default::default() };

    let down = manager.check_health(true).await;
    let call = common::ledger_write(&manager, Idempotency::Idempotent, 0, 0).await.expect_err("nothing listens");
    report.record(&common::outcome_of(&call));

    pg.start().await.expect("the server appears");
    let ledger = common::ledger_for(&url, Idempotency::Idempotent).await;
    let (up, seen) = common::wait_for_health(&manager, HealthStatus::Healthy).await;
    let rows_affected =
        common::ledger_write(&manager, Idempotency::Idempotent, 0, 1).await.expect("calls succeed once it is up");
    report.record_ack(rows_affected);
    let audit = ledger.audit(&[ledger_key(0, 1)]).await.expect("audit");
    report.retries = manager.stats().retries();
    report.apply_audit(&audit);
    let rebuilds = manager.stats().summary().reconnects_total;
    common::print_summary(
        test,
        &report,
        &format!(
            "health_down={:?} cause={:?} call_while_down={} health_seen={seen:?} rebuilds={rebuilds}",
            down.status,
            down.message,
            call.class()
        ),
    );

    assert_eq!(down.status, HealthStatus::Unhealthy, "{}", down.message);
    assert!(down.message.contains("database:round_trip"), "the cause names the failed check: {}", down.message);
    assert!(call.class().is_connectivity(), "a call while down fails with a connectivity class: {call}");
    assert_eq!(up.status, HealthStatus::Healthy);
    assert_eq!(rebuilds, 0, "recovered without rebuilding the manager or its pool");
    assert_eq!(report.absorbed, 0, "the one write after start-up inserted its row");
    common::assert_ledger_intact(&report, &audit, 0);
    // The cause an operator reads must be the real one: nothing listens (connection refused),
    // not "pool exhausted", which points at the application's own concurrency.
    assert!(
        down.message.contains("connection_refused") && call.class() == dbguard::ErrorClass::ConnectionRefused,
        "health and calls name the real cause; health said {:?}, the call failed as {}",
        down.message,
        call.class()
    );
    manager.close().await;
}
