//! Fault drill: 300 ms of added latency each way between dbguard and PostgreSQL. Health must
//! say degraded (slow, but serving), not unhealthy, and calls must keep succeeding; the
//! threshold is configurable.

mod common;

use std::time::Duration;

use dbguard::{HealthStatus, Idempotency};
use dbguard_tests::{FaultProxy, Ledger, Outcome, ProxyMode, TestDb, ledger_key};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_latency_is_degraded_not_unhealthy() {
    let test = "drill_latency";
    let Some(db) = TestDb::create_or_skip(test).await else { return };
    let ledger = Ledger::connect(db.url()).await.expect("ledger connection");
    ledger.create_table().await.expect("ledger table");
    let proxy = FaultProxy::start(db.server_addr().await.expect("server address")).await.expect("proxy");
    let url = proxy.rewrite_url(db.url());
    let manager = common::manager(&url, &[("DB_HEALTH_DEGRADED_LATENCY", "250ms")]).await;
    // A service that tolerates slow answers raises the threshold.
    let tolerant = common::manager(&url, &[("DB_HEALTH_DEGRADED_LATENCY", "5s")]).await;
    assert_eq!(
        manager.config().health.thresholds.degraded_latency,
        Duration::from_millis(250),
        "the default threshold, which this drill is written against"
    );
    assert_eq!(manager.check_health(true).await.status, HealthStatus::Healthy);

    proxy.set_mode(ProxyMode::Latency(Duration::from_millis(300)));
    let mut report = dbguard_tests::LedgerReport { faults: 1, ..Default::default() };
    let slow = manager.check_health(true).await;
    let tolerated = tolerant.check_health(true).await;
    let mut acked = Vec::new();
    for seq in 0..5 {
        let outcome = match common::ledger_write(&manager, Idempotency::NonIdempotent, 0, seq).await {
            Ok(()) => {
                acked.push(ledger_key(0, seq));
                Outcome::Ok
            }
            Err(err) => common::outcome_of(&err),
        };
        report.record(&outcome);
    }
    proxy.set_mode(ProxyMode::Pass);
    let after = manager.check_health(true).await;

    let audit = ledger.audit(&acked).await.expect("audit");
    report.retries = manager.stats().retries();
    report.apply_audit(&audit);
    common::print_summary(
        test,
        &report,
        &format!(
            "health_slow={:?} ({:.0} ms) tolerant={:?} after={:?} message={:?}",
            slow.status, slow.response_time_ms, tolerated.status, after.status, slow.message
        ),
    );
    assert_eq!(slow.status, HealthStatus::Degraded, "{}", slow.message);
    assert!(slow.message.contains("slow"), "the report says why: {}", slow.message);
    assert_eq!(tolerated.status, HealthStatus::Healthy, "{}", tolerated.message);
    assert_eq!(after.status, HealthStatus::Healthy, "{}", after.message);
    assert_eq!(report.errors_total() + report.outcome_unknown, 0, "slow calls still succeed");
    assert_eq!((report.lost, report.duplicates), (0, 0));
    manager.close().await;
    tolerant.close().await;
}
