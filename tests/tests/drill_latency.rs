//! Fault drill: 600 ms of added latency each way between dbguard and PostgreSQL. Health must
//! say degraded (slow, but serving), not unhealthy, and calls must keep succeeding; the
//! threshold is configurable.
//!
//! The threshold is 1 s, not the 250 ms default: a probe through the proxy needs at least one
//! round trip (1.2 s), so it is always over 1 s, while a probe without the fault on a loaded test
//! machine stays well under it (the default is what flakes there, see `common::config`).

mod common;

use std::time::Duration;

use dbguard::{HealthStatus, Idempotency};
use dbguard_tests::{FaultProxy, ProxyMode, TestDb, ledger_key};

/// Added latency each way.
const LATENCY: Duration = Duration::from_millis(600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_latency_is_degraded_not_unhealthy() {
    let test = "drill_latency";
    let Some(db) = TestDb::create_or_skip(test).await else { return };
    let ledger = common::ledger_for(db.url(), Idempotency::NonIdempotent).await;
    let proxy = FaultProxy::start(db.server_addr().await.expect("server address")).await.expect("proxy");
    let url = proxy.rewrite_url(db.url());
    // The probe's own timeout is far above the slow answers, so slow never reads as down.
    let manager = common::manager(&url, &[("DB_HEALTH_DEGRADED_LATENCY", "1s"), ("DB_HEALTH_TIMEOUT", "30s")]).await;
    // A service that tolerates slow answers raises the threshold.
    let tolerant = common::manager(&url, &[("DB_HEALTH_DEGRADED_LATENCY", "20s"), ("DB_HEALTH_TIMEOUT", "30s")]).await;
    assert_eq!(manager.config().health.thresholds.degraded_latency, Duration::from_secs(1));
    assert_eq!(manager.check_health(true).await.status, HealthStatus::Healthy);

    proxy.set_mode(ProxyMode::Latency(LATENCY));
    let mut report = dbguard_tests::LedgerReport { faults: 1, ..Default::default() };
    let slow = manager.check_health(true).await;
    let tolerated = tolerant.check_health(true).await;
    let mut acked = Vec::new();
    for seq in 0..3 {
        match common::ledger_write(&manager, Idempotency::NonIdempotent, 0, seq).await {
            Ok(rows_affected) => {
                acked.push(ledger_key(0, seq));
                report.record_ack(rows_affected);
            }
            Err(err) => report.record(&common::outcome_of(&err)),
        }
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
    assert_eq!(report.retries, 0, "a slow answer is an answer: nothing was retried");
    assert_eq!(report.acked, 3);
    common::assert_ledger_intact(&report, &audit, 0);
    manager.close().await;
    tolerant.close().await;
}
