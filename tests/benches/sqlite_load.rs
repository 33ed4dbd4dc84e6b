//! Closed-loop load on a SQLite file: what dbguard's SQLite path costs against the connections
//! and pools it is built from.
//!
//! sqlx's pool pings every connection it takes back (`return_to_pool`); on SQLite the ping is a
//! message to the connection's worker thread, paid on every call. dbguard's pool (deadpool's
//! managed pool of sqlx connections, as on PostgreSQL) returns a connection with nothing done.
//! Four variants on one WAL-mode file, the same pragmas for all (`synchronous=NORMAL`,
//! `foreign_keys=ON`, a busy timeout):
//!
//! - `raw sqlx`: one `SqliteConnection` per task, the ceiling;
//! - `deadpool + sqlx connections, unguarded`: the bare pool dbguard's is built on (deadpool's
//!   managed pool, nothing done on return);
//! - `SeaORM default`: SeaORM's sqlx pool with its defaults;
//! - `dbguard full path`: `DbManager::run` on the file, on dbguard's own pool.
//!
//! Rounds and slices as in the PostgreSQL load bench (`load.rs`): within a round the variants
//! take turns slice by slice, and ratios are taken per round.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `DBGUARD_BENCH_SECONDS` | 2 | measured seconds per variant and round |
//! | `DBGUARD_BENCH_SLICES` | 4 | slices a round's seconds are measured in |
//! | `DBGUARD_BENCH_WARMUP` | 0.3 | unmeasured seconds before each slice |
//! | `DBGUARD_BENCH_ROUNDS` | 3 | rounds per workload × concurrency |
//! | `DBGUARD_BENCH_SQLITE_TASKS` | 1,4,16 | concurrent tasks |
//! | `DBGUARD_BENCH_POOL` | 16 | pool size of every pooled variant |
//! | `DBGUARD_BENCH_ROWS` | 10000 | rows in `bench_items` |

mod support;

use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dbguard::{DbManager, Idempotency};
use dbguard_core::DbConfig;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, Statement};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{ConnectOptions as _, Connection as _, SqliteConnection};
use support::{BareManager, Percentiles, Report, Table, XorShift, knob, knob_list, knob_seconds, median, micros};

const SELECT_ONE: &str = "SELECT 1";
const INDEXED_READ: &str = "SELECT id, name FROM bench_items WHERE id = $1";

fn main() -> ExitCode {
    support::run_main("sqlite_load", bench())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    Raw,
    BarePool,
    SeaOrm,
    Dbguard,
}

const VARIANTS: [Variant; 4] = [Variant::Raw, Variant::BarePool, Variant::SeaOrm, Variant::Dbguard];

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Variant::Raw => "raw sqlx",
            Variant::BarePool => "deadpool + sqlx connections, unguarded",
            Variant::SeaOrm => "SeaORM default",
            Variant::Dbguard => "dbguard full path",
        }
    }
}

/// The file's connect options, with the pragmas dbguard sets on SQLite files.
fn file_options(path: &str) -> Result<SqliteConnectOptions, String> {
    Ok(SqliteConnectOptions::from_str(&format!("sqlite://{path}"))
        .map_err(|e| e.to_string())?
        .create_if_missing(true)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(5))
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal))
}

/// What one task calls through.
enum Worker {
    Raw(SqliteConnection),
    BarePool(deadpool::managed::Pool<BareManager<SqliteConnection>>),
    SeaOrm(DatabaseConnection),
    Guarded(DbManager),
}

async fn sqlx_call(conn: &mut SqliteConnection, indexed: bool, id: i64) -> Result<(), String> {
    let query = if indexed { sqlx::query(INDEXED_READ).bind(id) } else { sqlx::query(SELECT_ONE) };
    query.fetch_one(conn).await.map(drop).map_err(|e| e.to_string())
}

async fn sea_orm_call(db: &impl ConnectionTrait, indexed: bool, id: i64) -> Result<(), DbErr> {
    let statement = if indexed {
        Statement::from_sql_and_values(DbBackend::Sqlite, INDEXED_READ, [id.into()])
    } else {
        Statement::from_string(DbBackend::Sqlite, SELECT_ONE)
    };
    match db.query_one_raw(statement).await? {
        Some(_) => Ok(()),
        None => Err(DbErr::RecordNotFound(format!("no row for id {id}"))),
    }
}

impl Worker {
    async fn call(&mut self, indexed: bool, id: i64) -> Result<(), String> {
        match self {
            Worker::Raw(conn) => sqlx_call(conn, indexed, id).await,
            Worker::BarePool(pool) => {
                let mut conn = pool.get().await.map_err(|e| e.to_string())?;
                sqlx_call(&mut conn, indexed, id).await
            }
            Worker::SeaOrm(db) => sea_orm_call(db, indexed, id).await.map_err(|e| e.to_string()),
            Worker::Guarded(manager) => manager
                .run(Idempotency::Idempotent, move |db| async move { sea_orm_call(&db, indexed, id).await })
                .await
                .map_err(|e| e.to_string()),
        }
    }
}

/// What every slice needs.
struct Setup {
    path: String,
    config: DbConfig,
    pool: u32,
    warmup: Duration,
    rows: u64,
}

/// The workers of one slice: a pool shared by every task, or a connection per task.
async fn open(variant: Variant, tasks: usize, setup: &Setup) -> Result<Vec<Worker>, String> {
    let options = file_options(&setup.path)?;
    Ok(match variant {
        Variant::Raw => {
            let mut workers = Vec::with_capacity(tasks);
            for _ in 0..tasks {
                workers.push(Worker::Raw(options.connect().await.map_err(|e| e.to_string())?));
            }
            workers
        }
        Variant::BarePool => {
            let pool = deadpool::managed::Pool::builder(BareManager { options })
                .max_size(setup.pool as usize)
                .build()
                .map_err(|e| e.to_string())?;
            (0..tasks).map(|_| Worker::BarePool(pool.clone())).collect()
        }
        Variant::SeaOrm => {
            let mut connect = sea_orm::ConnectOptions::new(format!("sqlite://{}", setup.path));
            connect.max_connections(setup.pool).map_sqlx_sqlite_opts(move |_| options.clone());
            let db = Database::connect(connect).await.map_err(|e| e.to_string())?;
            (0..tasks).map(|_| Worker::SeaOrm(db.clone())).collect()
        }
        Variant::Dbguard => {
            let manager = DbManager::connect(setup.config.clone()).await.map_err(|e| e.to_string())?;
            (0..tasks).map(|_| Worker::Guarded(manager.clone())).collect()
        }
    })
}

async fn close(workers: Vec<Worker>) {
    let mut manager = None;
    for worker in workers {
        match worker {
            Worker::Raw(conn) => {
                let _ = conn.close().await;
            }
            Worker::BarePool(pool) => pool.close(),
            Worker::SeaOrm(db) => {
                let _ = db.close().await;
            }
            Worker::Guarded(m) => manager = Some(m),
        }
    }
    if let Some(manager) = manager {
        manager.close().await;
    }
}

/// Calls that succeeded while measuring, with their latencies, and the measured time.
struct Slice {
    measured: Duration,
    nanos: Vec<u64>,
    errors: u64,
}

async fn run_slice(
    variant: Variant,
    indexed: bool,
    tasks: usize,
    setup: &Setup,
    measure: Duration,
) -> Result<Slice, String> {
    let workers = open(variant, tasks, setup).await?;
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let rows = setup.rows;
    let handles: Vec<_> = workers
        .into_iter()
        .enumerate()
        .map(|(index, mut worker)| {
            let (measuring, stop) = (measuring.clone(), stop.clone());
            tokio::spawn(async move {
                let mut rng = XorShift::new(index as u64 + 1);
                let (mut nanos, mut errors) = (Vec::new(), 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let counted = measuring.load(Ordering::Relaxed);
                    let id = i64::try_from(rng.next_u64() % rows + 1).unwrap_or(1);
                    let started = Instant::now();
                    match worker.call(indexed, id).await {
                        Ok(()) if counted => nanos.push(started.elapsed().as_nanos() as u64),
                        Ok(()) => {}
                        Err(_) => errors += 1,
                    }
                }
                (worker, nanos, errors)
            })
        })
        .collect();
    tokio::time::sleep(setup.warmup).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(measure).await;
    stop.store(true, Ordering::Relaxed);
    let measured = started.elapsed();
    let mut slice = Slice { measured, nanos: Vec::new(), errors: 0 };
    let mut workers = Vec::with_capacity(tasks);
    for handle in handles {
        let (worker, nanos, errors) = handle.await.map_err(|e| format!("a worker task failed: {e}"))?;
        slice.nanos.extend_from_slice(&nanos);
        slice.errors += errors;
        workers.push(worker);
    }
    close(workers).await;
    Ok(slice)
}

/// One variant's round: calls per second and latency over its slices.
struct Round {
    ops_per_sec: f64,
    latency: Percentiles,
    errors: u64,
}

async fn bench() -> Result<Report, String> {
    let seconds = knob_seconds("DBGUARD_BENCH_SECONDS", 2.0);
    let slices = knob("DBGUARD_BENCH_SLICES", 4usize).max(1);
    let rounds = knob("DBGUARD_BENCH_ROUNDS", 3usize).max(1);
    let tasks_list = knob_list("DBGUARD_BENCH_SQLITE_TASKS", &[1usize, 4, 16]);
    let pool = knob("DBGUARD_BENCH_POOL", 16u32).max(1);
    let rows = knob("DBGUARD_BENCH_ROWS", 10_000u64).max(1);
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let path = dir.path().join("bench.db").display().to_string();
    fill(&path, rows).await?;
    let config = DbConfig::from_vars([
        ("DATABASE_URL", format!("sqlite://{path}")),
        ("DB_POOL_SIZE", pool.to_string()),
        ("DB_MAX_OVERFLOW", "0".to_owned()),
        ("DB_ECHO", "false".to_owned()),
    ])
    .map_err(|e| format!("dbguard configuration: {e}"))?;
    let warmup = knob_seconds("DBGUARD_BENCH_WARMUP", 0.3);
    let setup = Setup { path, config, pool, warmup, rows };

    let mut report = Report::new("sqlite_load");
    report.line("## Closed-loop load on SQLite (`tests/benches/sqlite_load.rs`)");
    report.line("");
    report.line(format!(
        "One WAL-mode file in a temporary directory, {rows} rows in `bench_items`. {rounds} round(s), median \
         round reported; a round measures every variant for {} s in {slices} slice(s), taking turns slice by \
         slice, each slice on freshly opened connections after {} s warm-up; pool of {pool} connections for \
         every pooled variant; `raw sqlx` holds one connection per task. Ratios are per round, median shown.",
        seconds.as_secs_f64(),
        warmup.as_secs_f64(),
    ));
    report.line("");
    let mut table = Table::new(&[
        "workload",
        "variant",
        "tasks",
        "ops/s",
        "p50 µs",
        "p99 µs",
        "× raw sqlx",
        "× deadpool + sqlx connections",
        "errors",
    ]);
    for (indexed, workload) in [(false, "`SELECT 1`"), (true, "pk read")] {
        for &tasks in &tasks_list {
            let mut by_round: Vec<Vec<Round>> = Vec::new();
            for round in 0..rounds {
                let measured = run_round(indexed, tasks, &setup, seconds.div_f64(slices as f64), slices, round).await?;
                by_round.push(measured);
            }
            for (index, variant) in VARIANTS.into_iter().enumerate() {
                let per_round = |other: usize| -> Vec<f64> {
                    by_round
                        .iter()
                        .map(|r| r[index].ops_per_sec / r[other].ops_per_sec.max(f64::MIN_POSITIVE))
                        .collect()
                };
                let mut mine: Vec<&Round> = by_round.iter().map(|r| &r[index]).collect();
                mine.sort_by(|a, b| a.ops_per_sec.total_cmp(&b.ops_per_sec));
                let middle = mine[(mine.len() - 1) / 2];
                let ratio = |values: Vec<f64>| median(&values).map_or("–".to_owned(), |r| format!("{r:.2}"));
                table.row(&[
                    workload.to_owned(),
                    variant.label().to_owned(),
                    tasks.to_string(),
                    format!("{:.0}", middle.ops_per_sec),
                    micros(middle.latency.p50),
                    micros(middle.latency.p99),
                    ratio(per_round(0)),
                    ratio(per_round(1)),
                    mine.iter().map(|r| r.errors).sum::<u64>().to_string(),
                ]);
                eprintln!(
                    "sqlite {workload} tasks={tasks} {:<40} {:>9.0} ops/s (median round)",
                    variant.label(),
                    middle.ops_per_sec
                );
            }
        }
    }
    report.line(table.render().trim_end());
    report.line("");
    drop(setup);
    drop(dir);
    Ok(report)
}

/// One round: the variants take turns slice by slice, the first turn passing on each slice.
async fn run_round(
    indexed: bool,
    tasks: usize,
    setup: &Setup,
    measure: Duration,
    slices: usize,
    round: usize,
) -> Result<Vec<Round>, String> {
    let mut measured: Vec<Vec<Slice>> = VARIANTS.iter().map(|_| Vec::new()).collect();
    for slice in 0..slices {
        for turn in 0..VARIANTS.len() {
            let index = (round * slices + slice + turn) % VARIANTS.len();
            let outcome = run_slice(VARIANTS[index], indexed, tasks, setup, measure).await;
            measured[index].push(outcome.map_err(|e| format!("{}: {e}", VARIANTS[index].label()))?);
        }
    }
    Ok(measured
        .into_iter()
        .map(|slices| {
            let time: Duration = slices.iter().map(|s| s.measured).sum();
            let mut nanos: Vec<u64> = slices.iter().flat_map(|s| s.nanos.iter().copied()).collect();
            Round {
                ops_per_sec: nanos.len() as f64 / time.as_secs_f64().max(f64::MIN_POSITIVE),
                latency: Percentiles::of(&mut nanos),
                errors: slices.iter().map(|s| s.errors).sum(),
            }
        })
        .collect())
}

/// Creates `bench_items` with `rows` rows.
async fn fill(path: &str, rows: u64) -> Result<(), String> {
    let mut conn = file_options(path)?.connect().await.map_err(|e| e.to_string())?;
    let mut tx = conn.begin().await.map_err(|e| e.to_string())?;
    sqlx::query("CREATE TABLE bench_items (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
        .execute(&mut *tx)
        .await
        .map_err(|e| e.to_string())?;
    for id in 1..=rows {
        sqlx::query("INSERT INTO bench_items (id, name) VALUES ($1, $2)")
            .bind(id as i64)
            .bind(format!("item {id}"))
            .execute(&mut *tx)
            .await
            .map_err(|e| e.to_string())?;
    }
    tx.commit().await.map_err(|e| e.to_string())?;
    conn.close().await.map_err(|e| e.to_string())
}
