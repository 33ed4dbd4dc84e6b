//! Recovery after a restart: how long after a private PostgreSQL server accepts connections
//! again does a guarded call succeed?
//!
//! A [`PgCluster`] of its own, a `DbManager` with fast retries, and one task issuing guarded
//! `SELECT 1` calls in a loop (1 ms apart while they succeed, 10 ms after a failed call, as a
//! request loop would). Each cycle stops the server (fast), waits, starts it, records the
//! instant [`PgCluster::wait_accepting`] returns and the instant the first guarded call
//! completes after the outage, and reports the difference. A negative value means dbguard got
//! through before the harness's own check did.
//!
//! Each scenario is one outage length; the dbguard configuration is the same in all: the
//! retry base delay below, every other setting at its default.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `DBGUARD_BENCH_RECOVERY_CYCLES` | 50 | restarts per scenario |
//! | `DBGUARD_BENCH_RECOVERY_DOWNTIME` | 1,5 | seconds between stop and start, one scenario each |
//! | `DBGUARD_BENCH_RETRY_BASE_MS` | 100 | `DB_RETRY_BASE_DELAY`, milliseconds |
//! | `DBGUARD_LOG` | unset (no log) | a log filter, e.g. `dbguard=debug`, to see each retry |

mod support;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dbguard::{DbManager, Idempotency};
use dbguard_tests::{PgCluster, StopMode};
use sea_orm::ConnectionTrait;
use support::{Report, Table, knob, knob_list, median};

/// Longest wait for the first successful call after a restart: a hang detector.
const RECOVERY_LIMIT: Duration = Duration::from_secs(60);

/// Pause between calls that succeed (keeps the loop from hogging a core the server needs).
const PAUSE_AFTER_SUCCESS: Duration = Duration::from_millis(1);

/// Pause after a call that failed, as a request loop in front of a failing service would.
const PAUSE_AFTER_FAILURE: Duration = Duration::from_millis(10);

/// What the calling task reports to the driver.
struct Caller {
    /// Reference point for the timestamps below.
    epoch: Instant,
    /// Whether the driver is waiting for the first success after an outage.
    armed: AtomicBool,
    /// Nanoseconds after `epoch` + 1 of the first success while armed; 0 = none yet.
    first_success: AtomicU64,
    errors: AtomicU64,
    stop: AtomicBool,
}

impl Caller {
    fn stamp(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX - 1) + 1
    }

    fn instant(&self, stamp: u64) -> Instant {
        self.epoch + Duration::from_nanos(stamp - 1)
    }
}

async fn call_loop(manager: DbManager, caller: Arc<Caller>) {
    while !caller.stop.load(Ordering::Relaxed) {
        let result = manager
            .run(Idempotency::Idempotent, |db| async move { db.execute_unprepared("SELECT 1").await.map(drop) })
            .await;
        let done = Instant::now();
        match result {
            Ok(()) => {
                if caller.armed.load(Ordering::Acquire) {
                    let _ = caller.first_success.compare_exchange(
                        0,
                        caller.stamp(done),
                        Ordering::AcqRel,
                        Ordering::Relaxed,
                    );
                }
                tokio::time::sleep(PAUSE_AFTER_SUCCESS).await;
            }
            Err(_) => {
                caller.errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(PAUSE_AFTER_FAILURE).await;
            }
        }
    }
}

/// Waits (bounded) for the first success after the caller was armed; returns its instant.
async fn first_success(caller: &Caller) -> Option<Instant> {
    let deadline = Instant::now() + RECOVERY_LIMIT;
    loop {
        let stamp = caller.first_success.load(Ordering::Acquire);
        if stamp != 0 {
            return Some(caller.instant(stamp));
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// One cycle's observations.
struct Cycle {
    /// First successful call minus the instant the server accepted connections, in ms.
    recovery_ms: f64,
    caller_errors: u64,
    /// Retries the runner scheduled during the cycle.
    retries: u64,
}

/// Runs `knobs.cycles` outages of `downtime` each against a fresh manager.
async fn run_scenario(pg: &PgCluster, downtime: Duration, knobs: &Knobs) -> Result<Vec<Cycle>, String> {
    let vars = [
        ("DATABASE_URL", pg.url("postgres")),
        ("DB_ECHO", "false".to_owned()),
        ("DB_RETRY_BASE_DELAY", format!("{}ms", knobs.base_delay.as_millis())),
    ];
    let config = dbguard::env::config_from_vars(vars.into_iter().map(|(k, v)| (k.to_owned(), v)))
        .map_err(|e| format!("dbguard configuration: {e}"))?;
    let manager = DbManager::connect(config).await.map_err(|e| e.to_string())?;
    let caller = Arc::new(Caller {
        epoch: Instant::now(),
        armed: AtomicBool::new(false),
        first_success: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let task = tokio::spawn(call_loop(manager.clone(), caller.clone()));
    let mut cycles = Vec::new();
    for cycle in 0..knobs.cycles {
        // Steady state first: a success after a short settle.
        tokio::time::sleep(Duration::from_millis(300)).await;
        caller.first_success.store(0, Ordering::Release);
        caller.armed.store(true, Ordering::Release);
        if first_success(&caller).await.is_none() {
            return Err(format!("cycle {cycle}: no successful call before the restart"));
        }
        caller.armed.store(false, Ordering::Release);

        let retries_before = manager.stats().retries();
        pg.stop(StopMode::Fast).await.map_err(|e| e.to_string())?;
        let errors_before = caller.errors.load(Ordering::Relaxed);
        caller.first_success.store(0, Ordering::Release);
        caller.armed.store(true, Ordering::Release);
        tokio::time::sleep(downtime).await;
        pg.start().await.map_err(|e| e.to_string())?;
        pg.wait_accepting().await.map_err(|e| e.to_string())?;
        let accepting = Instant::now();
        let Some(recovered) = first_success(&caller).await else {
            return Err(format!("cycle {cycle}: no successful call within {RECOVERY_LIMIT:?} of the restart"));
        };
        caller.armed.store(false, Ordering::Release);
        let recovery_ms = if recovered >= accepting {
            recovered.duration_since(accepting).as_secs_f64() * 1e3
        } else {
            -(accepting.duration_since(recovered).as_secs_f64() * 1e3)
        };
        let caller_errors = caller.errors.load(Ordering::Relaxed) - errors_before;
        let retries = manager.stats().retries() - retries_before;
        eprintln!(
            "down {:.1} s, cycle {cycle}: first success {recovery_ms:+.1} ms, caller errors {caller_errors}, \
             retries {retries}",
            downtime.as_secs_f64()
        );
        cycles.push(Cycle { recovery_ms, caller_errors, retries });
    }
    caller.stop.store(true, Ordering::Relaxed);
    let _ = task.await;
    manager.close().await;
    Ok(cycles)
}

struct Knobs {
    cycles: usize,
    downtimes: Vec<f64>,
    base_delay: Duration,
}

/// With `DBGUARD_LOG` set (e.g. `dbguard=debug`), logs what the runner does during the cycles.
fn init_logging() {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("DBGUARD_LOG") {
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    }
}

async fn bench() -> Result<Report, String> {
    init_logging();
    let knobs = Knobs {
        cycles: knob("DBGUARD_BENCH_RECOVERY_CYCLES", 50usize).max(1),
        downtimes: knob_list("DBGUARD_BENCH_RECOVERY_DOWNTIME", &[1.0, 5.0]),
        base_delay: Duration::from_millis(knob("DBGUARD_BENCH_RETRY_BASE_MS", 100u64).max(1)),
    };
    let base_ms = knobs.base_delay.as_millis();
    let pg = PgCluster::start_new().await.map_err(|e| format!("cannot start a private PostgreSQL cluster: {e}"))?;
    let target_ms = base_ms as f64 + 500.0;

    let mut report = Report::new("recovery");
    report.line("## Recovery after a restart (`tests/benches/recovery.rs`)");
    report.line("");
    report.line(format!(
        "A private PostgreSQL cluster stopped (fast) and started {} times per outage length; one task loops \
         guarded `SELECT 1` through a manager with `DB_RETRY_BASE_DELAY={base_ms}ms` and every other setting \
         at its default (3 retries, pool timeout 20 s). Recovery = first successful guarded call minus the \
         instant `PgCluster::wait_accepting()` returned (negative: dbguard was through first). Target: \
         no cycle above base retry delay + 500 ms = {target_ms:.0} ms.",
        knobs.cycles,
    ));
    report.line("");
    let mut table = Table::new(&[
        "down s",
        "cycles",
        "median ms",
        "min ms",
        "max ms",
        "caller errors",
        "retries",
        "target met",
        "each cycle ms",
    ]);
    for &down in &knobs.downtimes {
        let cycles = run_scenario(&pg, Duration::from_secs_f64(down.max(0.0)), &knobs).await?;
        let values: Vec<f64> = cycles.iter().map(|c| c.recovery_ms).collect();
        let median_ms = median(&values).unwrap_or(f64::NAN);
        let min_ms = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max_ms = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let errors: u64 = cycles.iter().map(|c| c.caller_errors).sum();
        table.row(&[
            format!("{down:.1}"),
            cycles.len().to_string(),
            format!("{median_ms:.0}"),
            format!("{min_ms:.0}"),
            format!("{max_ms:.0}"),
            errors.to_string(),
            cycles.iter().map(|c| c.retries).sum::<u64>().to_string(),
            if max_ms <= target_ms { "yes".to_owned() } else { "**no**".to_owned() },
            values.iter().map(|v| format!("{v:.0}")).collect::<Vec<_>>().join(", "),
        ]);
    }
    report.line(table.render().trim_end());
    report.line("");
    report.line(
        "**What limits this number.** A fast stop terminates the pooled connections (57P01). Before a retry \
         after a failure that says the server may be gone, the runner waits for the server itself: one direct \
         connect every 50 ms, shared by every waiting caller, for up to `DB_POOL_TIMEOUT` (the bound the pool's \
         acquire would apply). The first success therefore follows the server's return by at most one poll \
         interval plus a connect and the query, and usually comes before the harness's own check (which also \
         polls every 50 ms, but starts a new server connection each time): hence the negative values. A call \
         whose first attempt comes after every connection is gone waits in dbguard's checkout instead, which \
         tries the connect again every 50 ms (the same cadence, no doubling backoff as in sqlx's pool) until \
         `DB_POOL_TIMEOUT`, so it too is through within one poll of the server's return. Run with \
         `DBGUARD_LOG=dbguard=debug` to see the retries.",
    );
    report.line("");
    drop(pg);
    Ok(report)
}

fn main() -> ExitCode {
    support::run_main("recovery", bench())
}
