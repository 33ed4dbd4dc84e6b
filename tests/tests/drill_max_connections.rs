//! Fault drill: the server's connection slots (`max_connections`) are all held by other
//! clients, so new sessions are refused with SQLSTATE 53300. dbguard must classify that,
//! back off and retry, and succeed once slots free up.

mod common;

use std::time::Duration;

use dbguard::{DbManager, ErrorClass, HealthStatus, Idempotency};
use dbguard_tests::{Ledger, LedgerKind, PgCluster, ledger_key};
use sqlx::{Connection, PgConnection};

const DRILL_VARS: &[(&str, &str)] = &[
    ("DB_POOL_SIZE", "2"),
    ("DB_MAX_OVERFLOW", "0"),
    ("DB_POOL_TIMEOUT", "1s"),
    ("DB_HEALTH_TIMEOUT", "1s"),
    ("DB_RETRY_MAX_ATTEMPTS", "50"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_connection_slots_are_classified_retried_and_recovered() {
    let test = "drill_max_connections";
    let Some(pg) = PgCluster::start_or_skip(test).await else { return };
    pg.set_max_connections(6).await.expect("max_connections = 6");
    let url = pg.url("postgres");
    {
        let ledger = Ledger::connect(&url).await.expect("ledger connection");
        ledger.create_table(LedgerKind::Append).await.expect("ledger table");
        ledger.pool().close().await;
    }

    // Other clients take every slot (superuser sessions may use the reserved ones too).
    let mut holders = Vec::new();
    let refusal = loop {
        match PgConnection::connect(&url).await {
            Ok(conn) => holders.push(conn),
            Err(err) => break err,
        }
        assert!(holders.len() <= 6, "max_connections = 6 is not enforced");
    };
    let refusal_code = refusal.as_database_error().and_then(|e| e.code()).map(|c| c.into_owned());
    assert_eq!(refusal_code.as_deref(), Some("53300"), "slots are full: {refusal}");

    let manager = DbManager::connect_lazy(common::config(&url, DRILL_VARS)).await.expect("lazy manager");
    let rebuild = manager.reconnect().await.expect_err("no slot for a new pool");
    let health = manager.check_health(true).await;
    let writers: Vec<_> = (0..4)
        .map(|worker| {
            let manager = manager.clone();
            tokio::spawn(async move {
                tokio::time::timeout(
                    common::HANG_LIMIT,
                    common::ledger_write(&manager, Idempotency::NonIdempotent, worker, 0),
                )
                .await
            })
        })
        .collect();
    // Until the writers have failed and retried a few times while the slots stay taken.
    let deadline = tokio::time::Instant::now() + common::HANG_LIMIT;
    while manager.stats().retries() < 4 {
        assert!(tokio::time::Instant::now() < deadline, "writers never retried while the slots were taken");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let retries_while_full = manager.stats().retries();
    let failures_while_full = manager.stats().summary().failures_by_class;
    for conn in holders.drain(..) {
        conn.close().await.ok();
    }

    let mut report = dbguard_tests::LedgerReport { faults: 1, ..Default::default() };
    let mut acked = Vec::new();
    for (worker, writer) in (0..).zip(writers) {
        let result = writer.await.expect("task").expect("a writer hung");
        match &result {
            Ok(rows_affected) => {
                acked.push(ledger_key(worker, 0));
                report.record_ack(*rows_affected);
            }
            Err(err) => {
                eprintln!("writer {worker} saw: {err}");
                report.record(&common::outcome_of(err));
            }
        }
    }
    let (recovered, _) = common::wait_for_health(&manager, HealthStatus::Healthy).await;
    let ledger = Ledger::connect(&url).await.expect("ledger connection");
    let audit = ledger.audit(&acked).await.expect("audit");
    report.retries = manager.stats().retries();
    report.apply_audit(&audit);
    let classes: Vec<String> = failures_while_full.iter().map(|(c, n)| format!("{c}={n}")).collect();
    common::print_summary(
        test,
        &report,
        &format!(
            "reconnect_while_full={} health_while_full={:?} retries_while_full={retries_while_full} \
             attempt_failures_while_full=[{}] health_after={:?}",
            rebuild.class(),
            health.status,
            classes.join(" "),
            recovered.status
        ),
    );

    assert_eq!(rebuild.class(), ErrorClass::TooManyConnections, "{rebuild}");
    assert_eq!(health.status, HealthStatus::Unhealthy, "{}", health.message);
    assert_eq!(report.errors_total(), 0, "writers recover once slots free up");
    assert_eq!(report.acked, 4);
    assert_eq!(report.outcome_unknown, 0, "a refused session sent nothing: the write is retried, not unknown");
    common::assert_ledger_intact(&report, &audit, 0);
    // What callers and metrics see while the server refuses sessions: the server's reason
    // (53300), not only the pool's "no connection within the acquire timeout".
    assert!(
        failures_while_full.contains_key(ErrorClass::TooManyConnections.as_str()),
        "failed attempts are classified too_many_connections, saw {failures_while_full:?}; health said: {}",
        health.message
    );
    manager.close().await;
}
