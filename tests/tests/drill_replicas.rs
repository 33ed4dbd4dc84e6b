//! Fault drill: reads on standbys (`DB_READ_TARGET`), with a primary and two streaming standbys
//! (`pg_basebackup -R`), each a private cluster, while a writer keeps writing on the primary.
//!
//! 1. Both standbys up: reads split between them within ±20 % of even; the primary serves none.
//! 2. Standby 1 stops, then starts: no read fails; it takes reads again soon after it accepts
//!    connections (one sampler interval, plus the sample itself).
//! 3. Replay paused on standby 2 while writes continue: it is excluded once its lag passes
//!    `DB_REPLICA_MAX_LAG`, and included again after replay resumes.
//! 4. Both standbys down: reads move to the primary with no error and health is `degraded`; a
//!    manager configured to fail fast (`DB_READ_TARGET=standby`) refuses the read at once.
//! 5. Both standbys back, replication made synchronous (`ANY 2`), ledger writes under load; the
//!    primary is killed (`kill -9`) and standby 1 promoted: failover moves the writes, no
//!    acknowledged write is lost or duplicated, reads see no error, and standby 2 (still
//!    following the dead primary) is excluded once the new primary's WAL passes it by more than
//!    `DB_REPLICA_MAX_LAG`.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dbguard::{DbManager, Idempotency};
use dbguard_core::{HealthStatus, ServerRole, ServerState};
use dbguard_tests::{Ledger, PgCluster, StopMode};
use sea_orm::{ConnectionTrait, DbErr, Statement};

/// Sampled every 200 ms; a standby more than 1 s behind takes no reads.
const DRILL_VARS: &[(&str, &str)] = &[
    ("DB_READ_TARGET", "prefer-standby"),
    ("DB_REPLICA_MAX_LAG", "1s"),
    ("DB_HEALTH_CHECK_INTERVAL", "200ms"),
    ("DB_HEALTH_TIMEOUT", "1s"),
    ("DB_POOL_SIZE", "2"),
    ("DB_MAX_OVERFLOW", "2"),
    ("DB_POOL_TIMEOUT", "2s"),
    ("DB_RETRY_MAX_ATTEMPTS", "20"),
];

const INTERVAL: Duration = Duration::from_millis(200);
/// Bound on every wait for a state the sampler must reach.
const STATE_WAIT: Duration = Duration::from_secs(20);
const ROWS: i64 = 100;

fn url(primary: &PgCluster, standbys: &[&PgCluster]) -> String {
    let hosts: Vec<String> = std::iter::once(primary)
        .chain(standbys.iter().copied())
        .map(|cluster| format!("127.0.0.1:{}", cluster.port()))
        .collect();
    format!("postgres://postgres@{}/postgres?target_session_attrs=primary&load_balance_hosts=random", hosts.join(","))
}

/// One read through the read API: the port of the server that answered.
async fn read_port(manager: &DbManager) -> Result<u16, dbguard::DbError> {
    manager
        .run_read(|db| async move {
            let sql = "SELECT inet_server_port(), (SELECT count(*) FROM drill_items)";
            let row = db.query_one_raw(Statement::from_string(db.get_database_backend(), sql)).await?;
            let row = row.ok_or_else(|| DbErr::RecordNotFound("no row".into()))?;
            let count: i64 = row.try_get_by_index(1)?;
            if count != ROWS {
                return Err(DbErr::Custom(format!("read {count} items, expected {ROWS}")));
            }
            Ok(u16::try_from(row.try_get_by_index::<i32>(0)?).unwrap_or(0))
        })
        .await
}

/// `n` reads from 4 tasks: reads per port, and the errors callers saw.
async fn reads(manager: &DbManager, n: usize) -> (BTreeMap<u16, usize>, Vec<String>) {
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let manager = manager.clone();
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                for _ in 0..n / 4 {
                    outcomes.push(read_port(&manager).await.map_err(|err| err.to_string()));
                }
                outcomes
            })
        })
        .collect();
    let (mut by_port, mut errors) = (BTreeMap::new(), Vec::new());
    for task in tasks {
        for outcome in task.await.expect("read task") {
            match outcome {
                Ok(port) => *by_port.entry(port).or_insert(0) += 1,
                Err(err) => errors.push(err),
            }
        }
    }
    (by_port, errors)
}

/// Waits until the server on `port` is in `state` (as `/status` reports it); how long it took.
async fn wait_for_state(manager: &DbManager, port: u16, state: ServerState) -> Duration {
    let started = Instant::now();
    loop {
        let servers = manager.status().await.servers.expect("servers are listed");
        let server = servers.iter().find(|server| server.port == port).expect("the server is listed");
        if server.state == state && (state != ServerState::Up || server.role != ServerRole::Unknown) {
            return started.elapsed();
        }
        assert!(started.elapsed() < STATE_WAIT, "{port} never reached {state:?}: {servers:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Keeps inserting on the primary through the guarded path until stopped: the WAL the
/// standbys replay. Returns the writes acknowledged.
fn start_writer(manager: &DbManager, stop: Arc<AtomicBool>, errors: Arc<AtomicU64>) -> tokio::task::JoinHandle<u64> {
    let manager = manager.clone();
    tokio::spawn(async move {
        let mut acked = 0;
        while !stop.load(Ordering::Relaxed) {
            let outcome = manager
                .run(Idempotency::NonIdempotent, |db| async move {
                    db.execute_unprepared("INSERT INTO drill_writes (at) VALUES (clock_timestamp())").await
                })
                .await;
            match outcome {
                Ok(_) => acked += 1,
                Err(_) => {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        acked
    })
}

async fn wait_replicated(standby: &PgCluster) {
    let started = Instant::now();
    loop {
        if let Ok(mut conn) = <sqlx::PgConnection as sqlx::Connection>::connect(&standby.url("postgres")).await {
            let count: Result<i64, _> =
                sqlx::query_scalar("SELECT count(*) FROM drill_items").fetch_one(&mut conn).await;
            if count.ok() == Some(ROWS) {
                return;
            }
        }
        assert!(started.elapsed() < STATE_WAIT, "standby {} never caught up", standby.port());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_on_standbys_survive_losing_them() {
    let test = "drill_replicas";
    let Some(primary) = PgCluster::start_or_skip(test).await else { return };
    let primary_ledger = common::ledger_for(&primary.url("postgres"), Idempotency::Idempotent).await;
    common::admin_exec(
        &primary.url("postgres"),
        &format!(
            "CREATE TABLE drill_items (id bigint PRIMARY KEY, name text NOT NULL);
             INSERT INTO drill_items SELECT g, 'item ' || g FROM generate_series(1, {ROWS}) g;
             CREATE TABLE drill_writes (id bigserial PRIMARY KEY, at timestamptz NOT NULL);"
        ),
    )
    .await;
    let standby1 = PgCluster::standby_of(&primary).await.expect("standby 1");
    let standby2 = PgCluster::standby_of(&primary).await.expect("standby 2");
    wait_replicated(&standby1).await;
    wait_replicated(&standby2).await;
    let (p, s1, s2) = (primary.port(), standby1.port(), standby2.port());

    let manager = common::manager(&url(&primary, &[&standby1, &standby2]), DRILL_VARS).await;
    let stop_writer = Arc::new(AtomicBool::new(false));
    let write_errors = Arc::new(AtomicU64::new(0));
    let writer = start_writer(&manager, stop_writer.clone(), write_errors.clone());

    // Phase 1: both standbys take reads, evenly; the primary takes none.
    wait_for_state(&manager, s1, ServerState::Up).await;
    wait_for_state(&manager, s2, ServerState::Up).await;
    let (split, errors) = reads(&manager, 800).await;
    assert!(errors.is_empty(), "phase 1 read errors: {errors:?}");
    assert_eq!(split.get(&p), None, "the primary served reads: {split:?}");
    for port in [s1, s2] {
        let share = split.get(&port).copied().unwrap_or(0);
        assert!((320..=480).contains(&share), "standby {port} served {share} of 800 reads: {split:?}");
    }
    let health = manager.check_health(true).await;
    assert_eq!(health.status, HealthStatus::Healthy, "{health:?}");

    // Phase 2: standby 1 stops, then starts.
    standby1.stop(StopMode::Fast).await.expect("stop standby 1");
    let (while_down, errors) = reads(&manager, 400).await;
    assert!(errors.is_empty(), "reads failed while standby 1 was down: {errors:?}");
    assert_eq!(while_down.get(&p), None, "reads went to the primary while standby 2 was up: {while_down:?}");
    wait_for_state(&manager, s1, ServerState::Down).await;
    assert_eq!(manager.check_health(true).await.status, HealthStatus::Degraded);
    standby1.start().await.expect("start standby 1");
    standby1.wait_accepting().await.expect("standby 1 accepts connections");
    let rejoined_after = wait_for_state(&manager, s1, ServerState::Up).await;
    assert!(
        rejoined_after <= INTERVAL * 10,
        "standby 1 rejoined {rejoined_after:?} after accepting connections (interval {INTERVAL:?})"
    );
    let (after_rejoin, errors) = reads(&manager, 400).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert!(after_rejoin.get(&s1).copied().unwrap_or(0) > 0, "standby 1 takes reads again: {after_rejoin:?}");

    // Phase 3: replay paused on standby 2 while writes continue.
    common::admin_exec(&standby2.url("postgres"), "SELECT pg_wal_replay_pause()").await;
    let excluded_after = wait_for_state(&manager, s2, ServerState::Lagging).await;
    let (while_lagging, errors) = reads(&manager, 200).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(while_lagging.get(&s2), None, "a lagging standby served reads: {while_lagging:?}");
    common::admin_exec(&standby2.url("postgres"), "SELECT pg_wal_replay_resume()").await;
    let included_after = wait_for_state(&manager, s2, ServerState::Up).await;
    let (after_resume, errors) = reads(&manager, 400).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert!(after_resume.get(&s2).copied().unwrap_or(0) > 0, "standby 2 takes reads again: {after_resume:?}");

    // Phase 4: both standbys down.
    standby1.stop(StopMode::Fast).await.expect("stop standby 1");
    standby2.stop(StopMode::Fast).await.expect("stop standby 2");
    let (on_primary, errors) = reads(&manager, 200).await;
    assert!(errors.is_empty(), "reads failed with both standbys down: {errors:?}");
    assert_eq!(on_primary.get(&p).copied(), Some(200), "{on_primary:?}");
    wait_for_state(&manager, s1, ServerState::Down).await;
    wait_for_state(&manager, s2, ServerState::Down).await;
    let health = manager.check_health(true).await;
    assert_eq!(health.status, HealthStatus::Degraded, "{health:?}");
    let reads_check = health.checks.iter().find(|check| check.name == "database:reads").expect("reads check");
    assert!(reads_check.message.as_deref().unwrap_or("").contains("reads go to the primary"), "{reads_check:?}");
    let fail_fast_vars: Vec<(&str, &str)> = DRILL_VARS.iter().copied().chain([("DB_READ_TARGET", "standby")]).collect();
    let fail_fast = common::manager(&url(&primary, &[&standby1, &standby2]), &fail_fast_vars).await;
    let started = Instant::now();
    let refused = read_port(&fail_fast).await.expect_err("no standby: the read fails");
    let refused_in = started.elapsed();
    assert!(refused.to_string().contains("no standby takes reads"), "{refused}");
    fail_fast.close().await;

    stop_writer.store(true, Ordering::Relaxed);
    let acked = writer.await.expect("writer");
    assert_eq!(write_errors.load(Ordering::Relaxed), 0, "writes on the primary failed");

    // Phase 5: the primary is killed and standby 1 promoted, under ledger writes.
    standby1.start().await.expect("start standby 1");
    standby2.start().await.expect("start standby 2");
    wait_for_state(&manager, s1, ServerState::Up).await;
    wait_for_state(&manager, s2, ServerState::Up).await;
    // Acknowledged only once both standbys have it: what the promoted one lacks is then never
    // acknowledged (asynchronous replication may lose acknowledged writes on a kill -9, by
    // PostgreSQL's design, whatever the client does).
    primary.set_setting("synchronous_commit", "on").expect("synchronous commit");
    primary.set_setting("synchronous_standby_names", "'ANY 2 (*)'").expect("synchronous replication");
    primary.reload().await.expect("reload the primary");
    let load = common::LedgerLoad::start(&manager, 4, 2, Idempotency::Idempotent);
    let rows_before_kill = common::ledger_rows(&primary_ledger).await;
    common::wait_for_rows_above(&primary_ledger, rows_before_kill + 50).await;
    let killed = Instant::now();
    primary.kill9().await.expect("kill the primary");
    let (during_failover, failover_read_errors) = reads(&manager, 40).await;
    standby1.promote().await.expect("promote standby 1");
    let new_primary = Ledger::connect(&standby1.url("postgres")).await.expect("ledger on the new primary");
    let rows_at_promotion = common::ledger_rows(&new_primary).await;
    common::wait_for_rows_above(&new_primary, rows_at_promotion + 50).await;
    let writes_moved_after = killed.elapsed();
    let stale_excluded_after = wait_for_state(&manager, s2, ServerState::Lagging).await;
    let (after_failover, errors) = reads(&manager, 200).await;
    let (tally, audit, report) = common::finish_and_audit(load, &new_primary, &manager, 1).await;
    assert!(failover_read_errors.is_empty(), "reads failed during the failover: {failover_read_errors:?}");
    assert!(errors.is_empty(), "reads failed after the failover: {errors:?}");
    assert_eq!(after_failover.get(&s2), None, "the stale standby served reads: {after_failover:?}");
    assert_eq!(after_failover.get(&s1).copied(), Some(200), "reads fall back to the new primary: {after_failover:?}");
    common::assert_ledger_intact(&report, &audit, 0);
    assert_eq!(tally.writes.errors_total(), 0, "writers saw errors: {:?}", tally.samples);
    let status = manager.status().await;
    let servers = status.servers.expect("servers");
    let reads_by_server: Vec<String> =
        servers.iter().map(|server| format!("{}={}", server.port, server.reads)).collect();
    common::print_summary(
        test,
        &report,
        &format!(
            "reads_by_port=[{}] phase1={split:?} standby_rejoined_ms={} lag_excluded_ms={} lag_included_ms={} \
             fail_fast_ms={} phase1_4_writes_acked={acked} failover_reads={during_failover:?} \
             writes_on_new_primary_ms={} stale_standby_excluded_ms={}",
            reads_by_server.join(" "),
            rejoined_after.as_millis(),
            excluded_after.as_millis(),
            included_after.as_millis(),
            refused_in.as_millis(),
            writes_moved_after.as_millis(),
            stale_excluded_after.as_millis(),
        ),
    );
    assert!(acked > 0);
    manager.close().await;
}
