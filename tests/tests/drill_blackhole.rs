//! Fault drill: a network partition (the proxy accepts and never answers) between dbguard and
//! PostgreSQL.
//!
//! New calls must come back with a typed error once the pool's acquire timeout fires (no task
//! hangs), the breaker must open so that later calls fail fast, and calls must succeed again
//! once traffic flows and the pool is rebuilt. A query already running on a connection when the
//! partition starts must come back too: the server's cancel cannot arrive, so the runner's
//! attempt deadline (`DB_STATEMENT_TIMEOUT` plus a tenth) gives it up as a timeout. How long
//! each took is printed in the summary (timings are reported, not asserted).

mod common;

use std::time::Duration;

use dbguard::{ErrorClass, HealthStatus, Idempotency};
use dbguard_core::BreakerState;
use dbguard_tests::{FaultProxy, ProxyMode, TestDb};
use sea_orm::ConnectionTrait;

const DRILL_VARS: &[(&str, &str)] = &[
    ("DB_POOL_SIZE", "2"),
    ("DB_MAX_OVERFLOW", "2"),
    ("DB_POOL_TIMEOUT", "500ms"),
    ("DB_STATEMENT_TIMEOUT", "1s"),
    ("DB_HEALTH_TIMEOUT", "500ms"),
    ("DB_RETRY_MAX_ATTEMPTS", "2"),
    ("DB_BREAKER_FAILURES", "5"),
    ("DB_BREAKER_COOLDOWN", "30s"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackhole_fails_typed_opens_the_breaker_and_recovers() {
    let test = "drill_blackhole";
    let Some(db) = TestDb::create_or_skip(test).await else { return };
    let ledger = common::ledger_for(db.url(), Idempotency::Idempotent).await;
    let proxy = FaultProxy::start(db.server_addr().await.expect("server address")).await.expect("proxy");
    let manager = common::manager(&proxy.rewrite_url(db.url()), DRILL_VARS).await;
    let mut report = dbguard_tests::LedgerReport::default();
    let mut acked = Vec::new();
    let mut seq = 0;

    for _ in 0..20 {
        let rows_affected =
            common::ledger_write(&manager, Idempotency::Idempotent, 0, seq).await.expect("write before the fault");
        report.record_ack(rows_affected);
        acked.push(dbguard_tests::ledger_key(0, seq));
        seq += 1;
    }

    // A query that is on the wire when the partition starts. It is not retried, so its error
    // is the abandoned attempt's own.
    let in_flight = {
        let manager = manager.clone();
        tokio::spawn(async move {
            let policy = dbguard_core::RetryPolicy::builder().max_retries(0).build().expect("policy");
            let result = manager
                .run_with_policy(policy, Idempotency::Idempotent, |db| async move {
                    db.execute_unprepared("SELECT pg_sleep(5)").await.map(|_| ())
                })
                .await;
            (result, tokio::time::Instant::now())
        })
    };
    common::wait_for_statement(db.url(), "SELECT pg_sleep(5)").await;
    proxy.set_mode(ProxyMode::Blackhole);
    let blackhole_started = tokio::time::Instant::now();
    report.faults = 1;
    // Let the pooled connections sit idle past the validation window, so acquiring one pings it.
    tokio::time::sleep(Duration::from_millis(700)).await;

    // New calls during the partition: each must return, with a typed error.
    let calls: Vec<_> = (0..8)
        .map(|i| {
            let manager = manager.clone();
            tokio::spawn(async move {
                tokio::time::timeout(common::HANG_LIMIT, common::ledger_write(&manager, Idempotency::Idempotent, 1, i))
                    .await
            })
        })
        .collect();
    let mut classes = Vec::new();
    for call in calls {
        let result = call.await.expect("task").expect("a call hung during the blackhole");
        let err = result.expect_err("no write can succeed through a blackhole");
        report.record(&common::outcome_of(&err));
        classes.push((err.class(), err.is_circuit_open()));
    }
    for (class, _) in &classes {
        assert!(
            matches!(class, ErrorClass::PoolExhausted | ErrorClass::Timeout),
            "blackholed calls fail as pool_exhausted or timeout, not {class}: {classes:?}"
        );
    }
    let breaker_during = manager.breaker_state();
    assert_eq!(breaker_during, BreakerState::Open, "repeated acquire timeouts open the breaker");

    let fast = common::ledger_write(&manager, Idempotency::Idempotent, 2, 0).await.expect_err("breaker is open");
    report.record(&common::outcome_of(&fast));
    assert!(fast.is_circuit_open(), "a call while the breaker is open fails fast: {fast}");
    assert_eq!(fast.retry_count(), 0, "failing fast means no attempt and no retry");

    let health = manager.check_health(true).await;
    assert_eq!(health.status, HealthStatus::Unhealthy, "{}", health.message);
    let (in_flight_result, in_flight_returned) =
        tokio::time::timeout(common::HANG_LIMIT, in_flight).await.expect("the in-flight call hung").expect("task");
    let in_flight_err = in_flight_result.expect_err("no answer can come through a blackhole");
    assert_eq!(in_flight_err.class(), ErrorClass::Timeout, "{in_flight_err}");
    let in_flight_ms = in_flight_returned.saturating_duration_since(blackhole_started).as_millis();

    proxy.set_mode(ProxyMode::Pass);
    // The drill's pool timeout is 500 ms; on a loaded machine one fresh connect can exceed it.
    // An operator retries a failed reconnect, and so does the drill, a bounded number of times.
    let mut rebuilt = manager.reconnect().await;
    for _ in 0..5 {
        if rebuilt.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        rebuilt = manager.reconnect().await;
    }
    let rebuilt = rebuilt.expect("reconnect once traffic flows");
    assert_eq!(rebuilt.status, HealthStatus::Healthy, "{}", rebuilt.message);
    assert_eq!(manager.breaker_state(), BreakerState::Closed, "a successful rebuild closes the breaker");
    for _ in 0..20 {
        let rows_affected =
            common::ledger_write(&manager, Idempotency::Idempotent, 0, seq).await.expect("write after recovery");
        report.record_ack(rows_affected);
        acked.push(dbguard_tests::ledger_key(0, seq));
        seq += 1;
    }

    let audit = ledger.audit(&acked).await.expect("audit");
    report.retries = manager.stats().retries();
    report.apply_audit(&audit);
    common::print_summary(
        test,
        &report,
        &format!(
            "breaker_during={breaker_during:?} health_during={:?} in_flight=timeout after {in_flight_ms} ms \
             (deadline {} ms)",
            health.status,
            manager.config().pool.attempt_deadline().as_millis()
        ),
    );
    common::assert_ledger_intact(&report, &audit, 0);
    assert_eq!(report.acked, 40, "20 writes before the fault and 20 after recovery");
    assert_eq!(report.errors_total(), 9, "the 8 blackholed calls and the one refused by the breaker");
    assert_eq!(report.absorbed, 0, "no write before or after the fault needed a retry");
    manager.close().await;
}
