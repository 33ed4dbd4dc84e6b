//! Shared set-up for the native-host scenarios.

#![allow(dead_code, unreachable_pub)]

use dbguard::DbManager;
use dbguard_core::DbConfig;

/// Fast retries so scenarios finish quickly: 10 ms base, 200 ms cap, 20 retries.
pub const FAST_RETRY: &[(&str, &str)] = &[
    ("DB_RETRY_BASE_DELAY", "10ms"),
    ("DB_RETRY_MAX_DELAY", "200ms"),
    ("DB_RETRY_MAX_ATTEMPTS", "20"),
    ("DB_ECHO", "false"),
];

/// A configuration for `url` with fast retries plus `extra` overrides.
///
/// The slow-answer threshold is raised to 10 s: these scenarios assert on healthy versus
/// unhealthy, and a loaded test machine can take longer than the default 250 ms for a probe,
/// which would read as degraded. The latency drill sets the threshold it is written against.
pub fn config(url: &str, extra: &[(&str, &str)]) -> DbConfig {
    let mut vars: Vec<(&str, &str)> = vec![("DATABASE_URL", url), ("DB_HEALTH_DEGRADED_LATENCY", "10s")];
    vars.extend_from_slice(FAST_RETRY);
    vars.extend_from_slice(extra);
    DbConfig::from_vars(vars).expect("test configuration is valid")
}

/// A connected manager for `url`.
pub async fn manager(url: &str, extra: &[(&str, &str)]) -> DbManager {
    DbManager::connect(config(url, extra)).await.expect("test database reachable")
}

/// Runs SQL on the test database outside dbguard (set-up and verification).
pub async fn admin_exec(url: &str, sql: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await.expect("admin connection");
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned())).execute(&mut conn).await.expect("admin SQL");
    conn.close().await.ok();
}

/// One i64 from a query, outside dbguard.
pub async fn admin_scalar(url: &str, sql: &str) -> i64 {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await.expect("admin connection");
    let value: i64 =
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned())).fetch_one(&mut conn).await.expect("admin query");
    conn.close().await.ok();
    value
}

// ---------------------------------------------------------------------------------------------
// Fault drills: the ledger workload driven through dbguard, and what its callers were told.
// ---------------------------------------------------------------------------------------------

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dbguard::{DbError, HealthReport, HealthStatus, Idempotency};
use dbguard_tests::{APPEND_SQL, Ledger, LedgerAudit, LedgerKind, LedgerReport, Outcome, UPSERT_SQL, ledger_key};
use sea_orm::{ConnectionTrait, DbBackend, Statement};

/// Upper bound on any single wait in a drill. A hang detector, not a timing claim: reaching it
/// means something never returned.
pub const HANG_LIMIT: Duration = Duration::from_secs(30);

/// What a caller makes of a guarded call's error.
pub fn outcome_of(err: &DbError) -> Outcome {
    if err.is_outcome_unknown() { Outcome::OutcomeUnknown } else { Outcome::Error(err.class().as_str().to_owned()) }
}

/// The ledger table a drill's writes need: a non-idempotent write is a plain insert, so its
/// table must be able to show a replay ([`LedgerKind::Append`]); an idempotent write is an upsert
/// on the key, which needs [`LedgerKind::Keyed`].
pub fn ledger_kind(idempotency: Idempotency) -> LedgerKind {
    match idempotency {
        Idempotency::NonIdempotent => LedgerKind::Append,
        Idempotency::Idempotent => LedgerKind::Keyed,
    }
}

/// Connects a ledger to `url` and creates its table for writes made with `idempotency`.
pub async fn ledger_for(url: &str, idempotency: Idempotency) -> Ledger {
    let ledger = Ledger::connect(url).await.expect("ledger connection");
    ledger.create_table(ledger_kind(idempotency)).await.expect("ledger table");
    ledger
}

/// One ledger write of key `w<worker>-<seq>` through dbguard: [`APPEND_SQL`] when
/// non-idempotent, [`UPSERT_SQL`] when idempotent. Returns the rows the write affected.
pub async fn ledger_write(
    manager: &DbManager,
    idempotency: Idempotency,
    worker: i32,
    seq: i32,
) -> Result<u64, DbError> {
    let sql = match ledger_kind(idempotency) {
        LedgerKind::Append => APPEND_SQL,
        LedgerKind::Keyed => UPSERT_SQL,
    };
    manager
        .run(idempotency, move |db| async move {
            let values = [ledger_key(worker, seq).into(), worker.into(), seq.into()];
            db.execute_raw(Statement::from_sql_and_values(DbBackend::Postgres, sql, values))
                .await
                .map(|done| done.rows_affected())
        })
        .await
}

/// One idempotent read of the ledger through dbguard.
pub async fn ledger_read(manager: &DbManager) -> Result<i64, DbError> {
    manager
        .run(Idempotency::Idempotent, |db| async move {
            let row = db
                .query_one_raw(Statement::from_string(DbBackend::Postgres, "SELECT count(*) AS n FROM ledger"))
                .await?;
            row.map_or(Ok(0), |r| r.try_get::<i64>("", "n"))
        })
        .await
}

/// What the load's callers saw.
#[derive(Debug, Default)]
pub struct LoadTally {
    /// Writes: calls and outcomes.
    pub writes: LedgerReport,
    /// Reads: calls and outcomes.
    pub reads: LedgerReport,
    /// Keys of acknowledged writes.
    pub acked: Vec<String>,
    /// `(worker, seq)` of writes whose outcome is unknown.
    pub unknown: Vec<(i32, i32)>,
    /// The first few error texts callers saw, for the failure message.
    pub samples: Vec<String>,
}

impl LoadTally {
    /// Writes and reads in one report (the drill's summary line): calls and errors count reads
    /// too; `acked` counts acknowledged writes only.
    pub fn combined(&self) -> LedgerReport {
        let mut all = self.writes.clone();
        all.calls += self.reads.calls;
        for (class, n) in &self.reads.errors {
            *all.errors.entry(class.clone()).or_default() += n;
        }
        all
    }

    fn note(&mut self, err: &DbError) {
        if self.samples.len() < 8 {
            self.samples.push(err.to_string());
        }
    }
}

/// Ledger writers and readers running against a manager until [`LedgerLoad::finish`].
pub struct LedgerLoad {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<LoadTally>>,
}

impl LedgerLoad {
    /// Starts `writers` writer tasks (worker ids `0..writers`, writing with `idempotency`) and
    /// `readers` reader tasks. Each pauses briefly between calls so the server keeps some CPU.
    pub fn start(manager: &DbManager, writers: i32, readers: usize, idempotency: Idempotency) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for worker in 0..writers {
            let (manager, stop) = (manager.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut tally = LoadTally::default();
                let mut seq = 0;
                while !stop.load(Ordering::Relaxed) {
                    let result = ledger_write(&manager, idempotency, worker, seq).await;
                    match &result {
                        Ok(rows_affected) => {
                            tally.acked.push(ledger_key(worker, seq));
                            tally.writes.record_ack(*rows_affected);
                        }
                        Err(err) => {
                            tally.note(err);
                            let outcome = outcome_of(err);
                            if outcome == Outcome::OutcomeUnknown {
                                tally.unknown.push((worker, seq));
                            }
                            tally.writes.record(&outcome);
                        }
                    }
                    seq += 1;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                tally
            }));
        }
        for _ in 0..readers {
            let (manager, stop) = (manager.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut tally = LoadTally::default();
                while !stop.load(Ordering::Relaxed) {
                    match ledger_read(&manager).await {
                        Ok(_) => tally.reads.record(&Outcome::Ok),
                        Err(err) => {
                            tally.note(&err);
                            tally.reads.record(&outcome_of(&err));
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                tally
            }));
        }
        Self { stop, tasks }
    }

    /// Stops the load and adds up what every task saw. Panics if a task does not return within
    /// [`HANG_LIMIT`] (a hung call).
    pub async fn finish(self) -> LoadTally {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = LoadTally::default();
        for task in self.tasks {
            let tally = tokio::time::timeout(HANG_LIMIT, task)
                .await
                .expect("a ledger task hung: some call never returned")
                .expect("ledger task panicked");
            total.writes.merge(&tally.writes);
            total.reads.merge(&tally.reads);
            total.acked.extend(tally.acked);
            total.unknown.extend(tally.unknown);
            for sample in tally.samples {
                if total.samples.len() < 8 {
                    total.samples.push(sample);
                }
            }
        }
        total
    }
}

/// How a drill's outcome-unknown writes turned out when looked up by key.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// Keys found in the table: the write had committed.
    pub committed: Vec<String>,
    /// Keys absent: written again through dbguard, and acknowledged.
    pub rewritten: Vec<String>,
}

/// Looks up each outcome-unknown write by its idempotency key (outside dbguard). A key that is
/// present had committed; an absent one is written again through dbguard as a non-idempotent
/// write. Both end up in `tally.acked`, so the audit then checks each resolved key is in the
/// table exactly once. Never re-issues a write whose key is present.
pub async fn resolve_unknown(manager: &DbManager, ledger: &Ledger, tally: &mut LoadTally) -> Resolution {
    let mut resolution = Resolution::default();
    for &(worker, seq) in &tally.unknown.clone() {
        let key = ledger_key(worker, seq);
        if ledger.rows_for(&key).await.expect("look up an outcome-unknown key") > 0 {
            resolution.committed.push(key.clone());
        } else {
            ledger_write(manager, Idempotency::NonIdempotent, worker, seq)
                .await
                .expect("re-issuing a write that did not commit succeeds once the server is back");
            resolution.rewritten.push(key.clone());
        }
        tally.acked.push(key);
    }
    resolution
}

/// Asserts what a drill's audit says about its acknowledged writes: none lost, none written twice
/// (where the table can show it), and every acknowledged key found, `resolved` counting the
/// outcome-unknown writes settled by [`resolve_unknown`]. The messages name the keys.
pub fn assert_ledger_intact(report: &LedgerReport, audit: &LedgerAudit, resolved: u64) {
    assert_eq!(report.lost, 0, "acknowledged writes lost: {:?}", audit.lost);
    match audit.kind {
        LedgerKind::Append => assert_eq!(
            report.duplicates,
            Some(0),
            "writes replayed: keys with more than one row {:?}, keys acknowledged twice {:?}",
            audit.duplicated,
            audit.acked_twice
        ),
        LedgerKind::Keyed => {
            assert_eq!(report.duplicates, None, "keys acknowledged twice: {:?}", audit.acked_twice)
        }
    }
    assert_eq!(report.found, report.acked + resolved, "every acknowledged key is in the table once");
}

/// Waits, at most [`HANG_LIMIT`], until the ledger holds more than `rows` rows: the load is
/// running (or running again after a fault). Returns the count seen.
pub async fn wait_for_rows_above(ledger: &Ledger, rows: u64) -> u64 {
    let deadline = tokio::time::Instant::now() + HANG_LIMIT;
    loop {
        let now_rows = ledger_rows(ledger).await;
        if now_rows > rows {
            return now_rows;
        }
        assert!(tokio::time::Instant::now() < deadline, "the ledger stayed at {now_rows} rows");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Rows in the ledger table.
pub async fn ledger_rows(ledger: &Ledger) -> u64 {
    let n: i64 =
        sqlx::query_scalar("SELECT count(*) FROM ledger").fetch_one(ledger.pool()).await.expect("count ledger rows");
    u64::try_from(n).unwrap_or(0)
}

/// Waits, at most [`HANG_LIMIT`], until a statement containing `fragment` is running on the
/// server `admin_url` points at (`pg_stat_activity`), so a fault is known to land mid-statement.
pub async fn wait_for_statement(admin_url: &str, fragment: &str) {
    wait_for_running(admin_url, fragment, true).await;
}

/// Waits, at most [`HANG_LIMIT`], until no statement containing `fragment` runs any more on the
/// server `admin_url` points at: whatever it was going to commit, it has.
pub async fn wait_for_statement_end(admin_url: &str, fragment: &str) {
    wait_for_running(admin_url, fragment, false).await;
}

async fn wait_for_running(admin_url: &str, fragment: &str, running: bool) {
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%{}%' \
         AND pid <> pg_backend_pid()",
        fragment.replace('\'', "''")
    );
    let deadline = tokio::time::Instant::now() + HANG_LIMIT;
    while (admin_scalar(admin_url, &sql).await > 0) != running {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a statement with {fragment:?} never reached running={running}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Probes (forced) until the status is `want`, at most [`HANG_LIMIT`]; returns that report and
/// the statuses seen on the way. Panics with the last report if `want` never shows.
pub async fn wait_for_health(manager: &DbManager, want: HealthStatus) -> (Arc<HealthReport>, Vec<HealthStatus>) {
    let deadline = tokio::time::Instant::now() + HANG_LIMIT;
    let mut seen = Vec::new();
    loop {
        let report = manager.check_health(true).await;
        if seen.last() != Some(&report.status) {
            seen.push(report.status);
        }
        if report.status == want {
            return (report, seen);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "health never became {want:?}; saw {seen:?}; last: {}",
            report.message
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stops `load`, audits its acknowledged writes against `ledger` (the server that holds them
/// after the drill) and builds the drill's report with `faults` injected and the manager's retries.
pub async fn finish_and_audit(
    load: LedgerLoad,
    ledger: &Ledger,
    manager: &DbManager,
    faults: u64,
) -> (LoadTally, LedgerAudit, LedgerReport) {
    let tally = load.finish().await;
    let audit = ledger.audit(&tally.acked).await.expect("audit");
    let mut report = tally.combined();
    report.faults = faults;
    report.retries = manager.stats().retries();
    report.apply_audit(&audit);
    (tally, audit, report)
}

/// Prints a drill's one-line summary (stdout; `--nocapture` shows it).
pub fn print_summary(drill: &str, report: &LedgerReport, extra: &str) {
    let classes = report.error_classes();
    println!(
        "DRILL {drill:<24} {}{}{}",
        report.summary(),
        if classes.is_empty() { String::new() } else { format!(" error_classes=[{classes}]") },
        if extra.is_empty() { String::new() } else { format!(" {extra}") }
    );
}
