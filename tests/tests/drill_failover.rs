//! Fault drill: failover to a promoted standby, with `DATABASE_URL` naming both servers.
//!
//! Two private clusters, a primary and its streaming standby (`pg_basebackup -R`), and one URL
//! listing both with `target_session_attrs=read-write`. First, a pool that starts on the
//! standby (the first host, connected lazily) answers a write with 25006: the manager must
//! choose the writable server and the caller must see a success. Then, under ledger load, the
//! primary stops and the standby is promoted: the manager must move to it, every acknowledged
//! idempotent write (an upsert on a keyed ledger) must be on the new primary, and calls riding
//! out the switch surface no error.

mod common;

use dbguard::{DbManager, Idempotency};
use dbguard_tests::{Ledger, PgCluster, StopMode, ledger_key};
use sea_orm::ConnectionTrait;

/// Retries outlast a stop and a promotion: 50 attempts capped at 200 ms.
const DRILL_VARS: &[(&str, &str)] = &[
    ("DB_POOL_SIZE", "4"),
    ("DB_MAX_OVERFLOW", "4"),
    ("DB_POOL_TIMEOUT", "2s"),
    ("DB_HEALTH_TIMEOUT", "1s"),
    ("DB_RETRY_MAX_ATTEMPTS", "50"),
];

/// `postgres://` URL listing `first` then `second`, writable server wanted.
fn two_host_url(first: &PgCluster, second: &PgCluster) -> String {
    format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=read-write",
        first.port(),
        second.port()
    )
}

/// The port of the server the manager's pool talks to, asked through the guarded path.
async fn serving_port(manager: &DbManager) -> i32 {
    manager
        .run(Idempotency::Idempotent, |db| async move {
            let port = sea_orm::Statement::from_string(db.get_database_backend(), "SELECT inet_server_port()");
            let row = db.query_one_raw(port).await?;
            row.ok_or_else(|| sea_orm::DbErr::RecordNotFound("no row".into()))?.try_get_by_index::<i32>(0)
        })
        .await
        .expect("ask the server for its port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_a_promoted_standby() {
    let test = "drill_failover";
    let Some(primary) = PgCluster::start_or_skip(test).await else { return };
    primary.set_setting("synchronous_commit", "on").expect("set synchronous_commit");
    primary.reload().await.expect("reload");
    let primary_ledger = common::ledger_for(&primary.url("postgres"), Idempotency::Idempotent).await;
    let standby = PgCluster::standby_of(&primary).await.expect("standby of the primary");
    let primary_port = i32::from(primary.port());
    let standby_port = i32::from(standby.port());

    // Phase 1: a pool on the standby is evicted on 25006 and the write lands on the primary.
    let standby_first = common::config(&two_host_url(&standby, &primary), DRILL_VARS);
    let lazy = DbManager::connect_lazy(standby_first).await.expect("lazy manager");
    let phase1_rows = common::ledger_write(&lazy, Idempotency::NonIdempotent, 999, 0)
        .await
        .expect("a write that first reaches the read-only standby succeeds on the primary");
    assert_eq!(phase1_rows, 1, "the write ran once, on the primary");
    assert_eq!(primary_ledger.rows_for(&ledger_key(999, 0)).await.expect("look up the key"), 1);
    let summary = lazy.stats().summary();
    assert_eq!(summary.failures_by_class.get("read_only_server").copied(), Some(1), "{summary:?}");
    assert_eq!(summary.reconnects_total, 1, "one rebuild moved the pool: {summary:?}");
    assert_eq!(serving_port(&lazy).await, primary_port, "the pool moved to the writable server");
    lazy.close().await;
    // Connecting eagerly with the same URL chooses the writable server before any call.
    let eager = common::manager(&two_host_url(&standby, &primary), DRILL_VARS).await;
    assert_eq!(serving_port(&eager).await, primary_port);
    eager.close().await;

    // Phase 2: the primary stops under load and the standby is promoted.
    let manager = common::manager(&two_host_url(&primary, &standby), DRILL_VARS).await;
    assert_eq!(serving_port(&manager).await, primary_port);
    let load = common::LedgerLoad::start(&manager, 6, 2, Idempotency::Idempotent);
    let rows_before_stop = common::ledger_rows(&primary_ledger).await;
    common::wait_for_rows_above(&primary_ledger, rows_before_stop + 50).await;
    primary.stop(StopMode::Fast).await.expect("stop the primary");
    standby.promote().await.expect("promote the standby");
    let new_primary = Ledger::connect(&standby.url("postgres")).await.expect("ledger on the new primary");
    let rows_at_promotion = common::ledger_rows(&new_primary).await;
    // The switch takes the pool's acquire timeout at most (a refused server is retried by the
    // pool until then); wait for writes to land on the new primary, bounded.
    common::wait_for_rows_above(&new_primary, rows_at_promotion + 50).await;

    let (tally, audit, report) = common::finish_and_audit(load, &new_primary, &manager, 1).await;
    let port_after = serving_port(&manager).await;
    common::print_summary(test, &report, &format!("serving port {primary_port} -> {port_after}"));

    assert_eq!(port_after, standby_port, "the manager moved to the promoted standby");
    common::assert_ledger_intact(&report, &audit, 0);
    // The phase-1 write is the one row no load writer acknowledged.
    assert_eq!(audit.unacked_present, 1, "only the phase-1 write is outside the load's acknowledgements");
    assert_eq!(tally.writes.errors_total(), 0, "writers saw errors: {:?}", tally.samples);
    assert_eq!(tally.reads.errors_total(), 0, "idempotent reads saw errors: {:?}", tally.samples);
    assert_eq!(report.outcome_unknown, 0, "idempotent writes are retried, never left unknown");
    assert!(report.retries > 0, "the switch reached calls, and they were retried");
    manager.close().await;
}
