//! Fault drill: a private PostgreSQL server restarted (fast, then immediate) under ledger load.
//!
//! Writes are idempotent upserts on a keyed ledger: every acknowledged key must be in the table,
//! idempotent calls riding out an outage shorter than their retry schedule must surface no error,
//! and health must report the outage and the recovery (states, not timings).

mod common;

use dbguard::{HealthStatus, Idempotency};
use dbguard_tests::{PgCluster, StopMode};

/// Retries outlast the outage: 50 attempts capped at 200 ms, and a pool that waits 5 s for a
/// connection. The probe gives up after 1 s so the outage shows in health.
const DRILL_VARS: &[(&str, &str)] = &[
    ("DB_POOL_SIZE", "4"),
    ("DB_MAX_OVERFLOW", "4"),
    ("DB_POOL_TIMEOUT", "5s"),
    ("DB_HEALTH_TIMEOUT", "1s"),
    ("DB_RETRY_MAX_ATTEMPTS", "50"),
];

async fn restart_drill(test: &str, mode: StopMode) {
    let Some(pg) = PgCluster::start_or_skip(test).await else { return };
    // The harness runs clusters with asynchronous commit for speed; an immediate stop would
    // then drop commits the server had already acknowledged. This drill measures dbguard, not
    // that window, so commits are made durable before they are acknowledged.
    pg.set_setting("synchronous_commit", "on").expect("set synchronous_commit");
    pg.reload().await.expect("reload");
    let url = pg.url("postgres");
    let ledger = common::ledger_for(&url, Idempotency::Idempotent).await;
    let manager = common::manager(&url, DRILL_VARS).await;
    assert_eq!(manager.check_health(true).await.status, HealthStatus::Healthy);

    let load = common::LedgerLoad::start(&manager, 6, 2, Idempotency::Idempotent);
    common::wait_for_rows_above(&ledger, 50).await;

    pg.stop(mode).await.expect("stop the server");
    let (down, seen_down) = common::wait_for_health(&manager, HealthStatus::Unhealthy).await;
    assert!(!down.message.is_empty(), "an unhealthy report names its cause");
    pg.start().await.expect("start the server again");
    let (_, seen_up) = common::wait_for_health(&manager, HealthStatus::Healthy).await;
    let rows_at_recovery = common::ledger_rows(&ledger).await;
    common::wait_for_rows_above(&ledger, rows_at_recovery + 50).await;

    let tally = load.finish().await;
    let audit = ledger.audit(&tally.acked).await.expect("audit");
    let mut report = tally.combined();
    report.faults = 1;
    report.retries = manager.stats().retries();
    report.apply_audit(&audit);
    common::print_summary(test, &report, &format!("health={seen_down:?}->{seen_up:?} down_cause={:?}", down.message));

    common::assert_ledger_intact(&report, &audit, 0);
    assert_eq!(audit.unacked_present, 0, "no write committed without its caller being told");
    assert_eq!(tally.writes.errors_total(), 0, "writers saw errors: {:?}", tally.samples);
    assert_eq!(tally.reads.errors_total(), 0, "idempotent reads saw errors: {:?}", tally.samples);
    assert_eq!(report.outcome_unknown, 0, "idempotent writes are retried, never left unknown");
    assert!(report.retries > 0, "the outage reached calls, and they were retried");
    assert!(tally.reads.acked > 0 && tally.writes.acked > 0, "the load ran");
    manager.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_restart_under_ledger_load() {
    restart_drill("drill_restart_fast", StopMode::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immediate_restart_under_ledger_load() {
    restart_drill("drill_restart_immediate", StopMode::Immediate).await;
}
