//! Closed-loop load against PostgreSQL: dbguard's guarded path next to the pools it is built
//! on, a peer pool and the raw driver, interleaved in one run.
//!
//! Two workloads (`SELECT 1`, and a primary-key read on a table of `DBGUARD_BENCH_ROWS` rows
//! with a random id) at several concurrencies. For each workload × concurrency the variants take
//! turns in rounds, and each row reports the variant's median round. A round measures every
//! variant for `DBGUARD_BENCH_SECONDS` in `DBGUARD_BENCH_SLICES` short slices: the variants
//! take turns slice by slice, each slice starting with the next variant in line, so a slow or
//! fast stretch of the machine (rounds of one variant moved by 20–40 % on a 2-core VM) falls
//! on every variant alike instead of deciding a ratio. Each slice opens its own pool (or
//! connections), warms up, measures, and closes it again, so slices do not share connections
//! and the server's `max_connections` is never approached.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `DBGUARD_BENCH_SECONDS` | 2 | measured seconds per variant and round (1-s rounds moved the 16-task ratios by ±10 %) |
//! | `DBGUARD_BENCH_SLICES` | 4 | slices a round's seconds are measured in, the variants taking turns |
//! | `DBGUARD_BENCH_WARMUP` | 0.3 | unmeasured seconds before each slice |
//! | `DBGUARD_BENCH_ROUNDS` | 3 | rounds per workload × concurrency |
//! | `DBGUARD_BENCH_TASKS` | 1,4,16,64 | concurrent tasks |
//! | `DBGUARD_BENCH_POOL` | 16 | pool size of every pooled variant |
//! | `DBGUARD_BENCH_ROWS` | 10000 | rows in `bench_items` |
//! | `DBGUARD_BENCH_METRICS` | true | install dbguard's Prometheus recorder, as `dbguard serve` does |
//! | `DBGUARD_BENCH_VARIANTS` | all | a subset, by key: raw, deadpool, pool, seaorm-default, seaorm-options, dbguard, dbguard-simple, dbguard-wasm |
//! | `DBGUARD_TEST_PG_URL` | postgres://postgres@127.0.0.1:5432/postgres | the server |
//! | `DBGUARD_PLUGIN_DIR` | unset: build `plugin-wasi/guest` | where `decorrelated_retry.wasm` is |
//!
//! `DBGUARD_BENCH_SECONDS=0.2 DBGUARD_BENCH_ROUNDS=1 DBGUARD_BENCH_SLICES=1 cargo bench -p dbguard-tests --bench load`
//! is a smoke run.

mod support;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use dbguard::{DbManager, Idempotency};
use dbguard_core::{DbConfig, StatementMode};
use dbguard_http::plugins::PluginRuntime;
use dbguard_tests::TestDb;
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, Statement};
use sqlx::{Connection, PgConnection};
use support::{
    BareManager, Percentiles, Report, Table, XorShift, knob, knob_list, knob_seconds, median, micros, with_sslmode,
};

const SELECT_ONE: &str = "SELECT 1";
const INDEXED_READ: &str = "SELECT id, name FROM bench_items WHERE id = $1";

/// Run phases, shared with the worker tasks through one atomic.
const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    SelectOne,
    IndexedRead,
}

impl Workload {
    fn title(self) -> &'static str {
        match self {
            Workload::SelectOne => "`SELECT 1`",
            Workload::IndexedRead => "primary-key read (`SELECT id, name FROM bench_items WHERE id = $1`)",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Workload::SelectOne => "select1",
            Workload::IndexedRead => "pk-read",
        }
    }

    fn sql(self) -> &'static str {
        match self {
            Workload::SelectOne => SELECT_ONE,
            Workload::IndexedRead => INDEXED_READ,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    RawSqlx,
    RawSqlxUnnamed,
    RawSqlxSimple,
    Deadpool,
    BarePool,
    SeaOrmDefault,
    SeaOrmDbguardOptions,
    DbguardFull,
    DbguardSimple,
    DbguardWasm,
}

/// Raw-driver rows that compare the statement mechanisms a transaction pooler allows; run only
/// when asked for by key (`DBGUARD_BENCH_VARIANTS=raw,raw-unnamed,raw-simple`).
const MECHANISM_VARIANTS: [Variant; 2] = [Variant::RawSqlxUnnamed, Variant::RawSqlxSimple];

const VARIANTS: [Variant; 8] = [
    Variant::RawSqlx,
    Variant::Deadpool,
    Variant::BarePool,
    Variant::SeaOrmDefault,
    Variant::SeaOrmDbguardOptions,
    Variant::DbguardFull,
    Variant::DbguardSimple,
    Variant::DbguardWasm,
];

impl Variant {
    /// The name `DBGUARD_BENCH_VARIANTS` selects the variant by.
    fn key(self) -> &'static str {
        match self {
            Variant::RawSqlx => "raw",
            Variant::RawSqlxUnnamed => "raw-unnamed",
            Variant::RawSqlxSimple => "raw-simple",
            Variant::Deadpool => "deadpool",
            Variant::BarePool => "pool",
            Variant::SeaOrmDefault => "seaorm-default",
            Variant::SeaOrmDbguardOptions => "seaorm-options",
            Variant::DbguardFull => "dbguard",
            Variant::DbguardSimple => "dbguard-simple",
            Variant::DbguardWasm => "dbguard-wasm",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Variant::RawSqlx => "raw sqlx",
            Variant::RawSqlxUnnamed => "raw sqlx, unnamed statements",
            Variant::RawSqlxSimple => "raw sqlx, simple protocol",
            Variant::Deadpool => "deadpool-postgres",
            Variant::BarePool => "deadpool + sqlx connections, unguarded",
            Variant::SeaOrmDefault => "SeaORM default",
            Variant::SeaOrmDbguardOptions => "SeaORM + dbguard options",
            Variant::DbguardFull => "dbguard full path",
            Variant::DbguardSimple => "dbguard, DB_STATEMENT_MODE=simple",
            Variant::DbguardWasm => "dbguard + wasm policy",
        }
    }

    /// Connections the variant holds at `tasks` concurrent tasks.
    fn connections(self, tasks: usize, pool: u32) -> usize {
        match self {
            Variant::RawSqlx | Variant::RawSqlxUnnamed | Variant::RawSqlxSimple => tasks,
            _ => pool as usize,
        }
    }
}

#[derive(Debug, Clone)]
struct Knobs {
    seconds: Duration,
    warmup: Duration,
    rounds: usize,
    /// Slices each round's measured seconds are split into.
    slices: usize,
    tasks: Vec<usize>,
    pool: u32,
    rows: i64,
    metrics: bool,
    /// The variants to run (all unless `DBGUARD_BENCH_VARIANTS` names some, e.g. for profiling).
    variants: Vec<Variant>,
}

impl Knobs {
    fn from_env() -> Self {
        Self {
            seconds: knob_seconds("DBGUARD_BENCH_SECONDS", 2.0),
            warmup: knob_seconds("DBGUARD_BENCH_WARMUP", 0.3),
            rounds: knob("DBGUARD_BENCH_ROUNDS", 3usize).max(1),
            slices: knob("DBGUARD_BENCH_SLICES", 4usize).max(1),
            tasks: knob_list("DBGUARD_BENCH_TASKS", &[1usize, 4, 16, 64]),
            pool: knob("DBGUARD_BENCH_POOL", 16u32).max(1),
            rows: knob("DBGUARD_BENCH_ROWS", 10_000i64).max(1),
            metrics: knob("DBGUARD_BENCH_METRICS", true),
            variants: selected_variants(),
        }
    }
}

fn selected_variants() -> Vec<Variant> {
    let keys: Vec<String> = knob_list("DBGUARD_BENCH_VARIANTS", &[]);
    if keys.is_empty() {
        return VARIANTS.to_vec();
    }
    keys.iter()
        .map(|key| {
            VARIANTS.into_iter().chain(MECHANISM_VARIANTS).find(|v| v.key() == key.as_str()).unwrap_or_else(|| {
                let known: Vec<&str> = VARIANTS.iter().chain(&MECHANISM_VARIANTS).map(|v| v.key()).collect();
                eprintln!("DBGUARD_BENCH_VARIANTS: unknown variant {key:?}; known: {}", known.join(", "));
                std::process::exit(2)
            })
        })
        .collect()
}

/// What every run needs: the database, dbguard's configuration, and the plugin file.
struct Setup {
    url: String,
    config: DbConfig,
    knobs: Knobs,
    /// Directory holding `retry.wasm`, or why the wasm row is missing.
    plugin_dir: Result<tempfile::TempDir, String>,
}

/// The connections of one run: a pool, or one connection per task.
enum Target {
    Raw(Vec<PgConnection>, Variant),
    Deadpool(deadpool_postgres::Pool),
    BarePool(deadpool::managed::Pool<BareManager<PgConnection>>),
    SeaOrm(DatabaseConnection),
    Guarded { manager: DbManager, plugins: Option<PluginRuntime> },
}

/// What one task calls through.
enum Worker {
    /// A dedicated connection, and which of the raw variants drives it.
    Raw(PgConnection, Variant),
    Deadpool(deadpool_postgres::Pool),
    BarePool(deadpool::managed::Pool<BareManager<PgConnection>>),
    SeaOrm(DatabaseConnection),
    Guarded(DbManager),
}

/// The workload's statement on `conn`, named and cached as `raw sqlx` sends it.
async fn sqlx_call(conn: &mut PgConnection, workload: Workload, id: i64, persistent: bool) -> Result<(), String> {
    let query = match workload {
        Workload::SelectOne => sqlx::query(SELECT_ONE),
        Workload::IndexedRead => sqlx::query(INDEXED_READ).bind(id),
    };
    query.persistent(persistent).fetch_one(conn).await.map(drop).map_err(|e| e.to_string())
}

impl Worker {
    async fn call(&mut self, workload: Workload, id: i64) -> Result<(), String> {
        match self {
            Worker::Raw(conn, Variant::RawSqlxSimple) => {
                // The parameter written into the text, as a client-side binding would.
                let sql = match workload {
                    Workload::SelectOne => SELECT_ONE.to_owned(),
                    Workload::IndexedRead => INDEXED_READ.replace("$1", &id.to_string()),
                };
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).fetch_one(&mut *conn).await.map(drop).map_err(|e| e.to_string())
            }
            Worker::Raw(conn, variant) => sqlx_call(conn, workload, id, *variant != Variant::RawSqlxUnnamed).await,
            Worker::BarePool(pool) => {
                let mut conn = pool.get().await.map_err(|e| e.to_string())?;
                sqlx_call(&mut conn, workload, id, true).await
            }
            Worker::Deadpool(pool) => {
                let client = pool.get().await.map_err(|e| e.to_string())?;
                let statement = client.prepare_cached(workload.sql()).await.map_err(|e| e.to_string())?;
                let row = match workload {
                    Workload::SelectOne => client.query_one(&statement, &[]).await,
                    Workload::IndexedRead => client.query_one(&statement, &[&id]).await,
                };
                row.map(drop).map_err(|e| e.to_string())
            }
            Worker::SeaOrm(db) => sea_orm_call(db, workload, id).await.map_err(|e| e.to_string()),
            Worker::Guarded(manager) => manager
                .run(Idempotency::Idempotent, move |db| async move { sea_orm_call(&db, workload, id).await })
                .await
                .map_err(|e| e.to_string()),
        }
    }
}

/// The statement through SeaORM's raw-query API; a missing row is an error (it proves the
/// read did real work).
async fn sea_orm_call(db: &impl ConnectionTrait, workload: Workload, id: i64) -> Result<(), DbErr> {
    let statement = match workload {
        Workload::SelectOne => Statement::from_string(DbBackend::Postgres, SELECT_ONE),
        Workload::IndexedRead => Statement::from_sql_and_values(DbBackend::Postgres, INDEXED_READ, [id.into()]),
    };
    match db.query_one_raw(statement).await? {
        Some(_) => Ok(()),
        None => Err(DbErr::RecordNotFound(format!("no row for id {id}"))),
    }
}

impl Target {
    async fn open(variant: Variant, tasks: usize, setup: &Setup) -> Result<Self, String> {
        let pool = setup.knobs.pool;
        match variant {
            Variant::RawSqlx | Variant::RawSqlxUnnamed | Variant::RawSqlxSimple => {
                let mut conns = Vec::with_capacity(tasks);
                for _ in 0..tasks {
                    conns.push(PgConnection::connect(&setup.url).await.map_err(|e| e.to_string())?);
                }
                Ok(Target::Raw(conns, variant))
            }
            Variant::Deadpool => {
                let pg: tokio_postgres::Config = setup.url.parse().map_err(|e: tokio_postgres::Error| e.to_string())?;
                let manager = deadpool_postgres::Manager::from_config(
                    pg,
                    tokio_postgres::NoTls,
                    deadpool_postgres::ManagerConfig { recycling_method: deadpool_postgres::RecyclingMethod::Fast },
                );
                let pool = deadpool_postgres::Pool::builder(manager)
                    .max_size(pool as usize)
                    .build()
                    .map_err(|e| e.to_string())?;
                Ok(Target::Deadpool(pool))
            }
            Variant::BarePool => {
                let options = setup.url.parse().map_err(|e: sqlx::Error| e.to_string())?;
                let manager = BareManager::<PgConnection> { options };
                let pool = deadpool::managed::Pool::builder(manager)
                    .max_size(pool as usize)
                    .build()
                    .map_err(|e| e.to_string())?;
                Ok(Target::BarePool(pool))
            }
            Variant::SeaOrmDefault => {
                let mut options = ConnectOptions::new(setup.url.clone());
                options.max_connections(pool);
                Database::connect(options).await.map(Target::SeaOrm).map_err(|e| e.to_string())
            }
            Variant::SeaOrmDbguardOptions => {
                let options = dbguard::pool::connect_options(&setup.config, false);
                Database::connect(options).await.map(Target::SeaOrm).map_err(|e| e.to_string())
            }
            Variant::DbguardFull => {
                let manager = DbManager::connect(setup.config.clone()).await.map_err(|e| e.to_string())?;
                Ok(Target::Guarded { manager, plugins: None })
            }
            Variant::DbguardSimple => {
                let mut config = setup.config.clone();
                config.pool.statement_mode = StatementMode::Simple;
                let manager = DbManager::connect(config).await.map_err(|e| e.to_string())?;
                Ok(Target::Guarded { manager, plugins: None })
            }
            Variant::DbguardWasm => {
                let dir = setup.plugin_dir.as_ref().map_err(Clone::clone)?;
                let manager = DbManager::connect(setup.config.clone()).await.map_err(|e| e.to_string())?;
                let plugins = PluginRuntime::start(manager.clone(), dir.path()).await.map_err(|e| e.to_string())?;
                let active = plugins.plugins().iter().any(|p| p.world == "retry-policy");
                if !active {
                    manager.close().await;
                    return Err(format!("the retry policy did not load: {:?}", plugins.refused()));
                }
                Ok(Target::Guarded { manager, plugins: Some(plugins) })
            }
        }
    }

    fn workers(&mut self, tasks: usize) -> Vec<Worker> {
        match self {
            Target::Raw(conns, variant) => conns.drain(..).map(|conn| Worker::Raw(conn, *variant)).collect(),
            Target::Deadpool(pool) => (0..tasks).map(|_| Worker::Deadpool(pool.clone())).collect(),
            Target::BarePool(pool) => (0..tasks).map(|_| Worker::BarePool(pool.clone())).collect(),
            Target::SeaOrm(db) => (0..tasks).map(|_| Worker::SeaOrm(db.clone())).collect(),
            Target::Guarded { manager, .. } => (0..tasks).map(|_| Worker::Guarded(manager.clone())).collect(),
        }
    }

    /// Calls the wasm policy answered during the run (it is asked only about failures).
    fn plugin_calls(&self) -> Option<u64> {
        match self {
            Target::Guarded { plugins: Some(plugins), .. } => plugins.retry_policy().stats().map(|s| s.calls),
            _ => None,
        }
    }

    async fn close(self, workers: Vec<Worker>) {
        for worker in workers {
            if let Worker::Raw(conn, _) = worker {
                let _ = conn.close().await;
            }
        }
        match self {
            Target::Raw(..) => {}
            Target::Deadpool(pool) => pool.close(),
            Target::BarePool(pool) => pool.close(),
            Target::SeaOrm(db) => {
                let _ = db.close().await;
            }
            Target::Guarded { manager, plugins } => {
                drop(plugins);
                manager.close().await;
            }
        }
    }
}

/// One variant's measured round: its slices together.
#[derive(Debug, Clone)]
struct Run {
    ops_per_sec: f64,
    latency: Percentiles,
    errors: u64,
    first_error: Option<String>,
    plugin_calls: Option<u64>,
}

impl Run {
    /// The round made of `slices`: calls over measured time, percentiles over every call.
    fn of_slices(slices: Vec<Slice>) -> Self {
        let measured: Duration = slices.iter().map(|slice| slice.measured).sum();
        let mut nanos = Vec::with_capacity(slices.iter().map(|slice| slice.nanos.len()).sum());
        let (mut errors, mut first_error, mut plugin_calls) = (0, None, None);
        for slice in slices {
            nanos.extend_from_slice(&slice.nanos);
            errors += slice.errors;
            first_error = first_error.or(slice.first_error);
            plugin_calls = match (plugin_calls, slice.plugin_calls) {
                (Some(sum), Some(calls)) => Some(sum + calls),
                (sum, calls) => sum.or(calls),
            };
        }
        Self {
            ops_per_sec: nanos.len() as f64 / measured.as_secs_f64().max(f64::MIN_POSITIVE),
            latency: Percentiles::of(&mut nanos),
            errors,
            first_error,
            plugin_calls,
        }
    }
}

/// One slice of a variant's round: a fresh target, warmed up, measured for a while.
struct Slice {
    measured: Duration,
    /// Latency of every call that succeeded while measuring.
    nanos: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
    plugin_calls: Option<u64>,
}

/// What one task saw.
struct Tally {
    worker: Worker,
    nanos: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
}

/// One slice of `variant` measured for `measure` after the warm-up.
async fn run_slice(
    variant: Variant,
    workload: Workload,
    tasks: usize,
    setup: &Setup,
    measure: Duration,
) -> Result<Slice, String> {
    let mut target = Target::open(variant, tasks, setup).await?;
    let phase = Arc::new(AtomicU8::new(WARMUP));
    let rows = setup.knobs.rows.unsigned_abs();
    let expected_ops = (measure.as_secs_f64() * 200_000.0 / tasks as f64) as usize;
    let handles: Vec<_> = target
        .workers(tasks)
        .into_iter()
        .enumerate()
        .map(|(index, mut worker)| {
            let phase = phase.clone();
            tokio::spawn(async move {
                let mut rng = XorShift::new(index as u64 + 1);
                let mut nanos = Vec::with_capacity(expected_ops.min(4_000_000));
                let (mut errors, mut first_error) = (0, None);
                loop {
                    let now_in = phase.load(Ordering::Relaxed);
                    if now_in == STOP {
                        break;
                    }
                    let id = i64::try_from(rng.next_u64() % rows + 1).unwrap_or(1);
                    let started = Instant::now();
                    let outcome = worker.call(workload, id).await;
                    let elapsed = started.elapsed();
                    match outcome {
                        Ok(()) if now_in == MEASURE => nanos.push(elapsed.as_nanos() as u64),
                        Ok(()) => {}
                        Err(err) => {
                            errors += 1;
                            first_error.get_or_insert(err);
                        }
                    }
                }
                Tally { worker, nanos, errors, first_error }
            })
        })
        .collect();
    tokio::time::sleep(setup.knobs.warmup).await;
    phase.store(MEASURE, Ordering::Relaxed);
    let measuring = Instant::now();
    tokio::time::sleep(measure).await;
    phase.store(STOP, Ordering::Relaxed);
    let measured = measuring.elapsed();

    let mut nanos = Vec::new();
    let mut workers = Vec::with_capacity(tasks);
    let (mut errors, mut first_error) = (0, None);
    for handle in handles {
        let tally = handle.await.map_err(|e| format!("a worker task failed: {e}"))?;
        nanos.extend_from_slice(&tally.nanos);
        errors += tally.errors;
        first_error = first_error.or(tally.first_error);
        workers.push(tally.worker);
    }
    let plugin_calls = target.plugin_calls();
    target.close(workers).await;
    Ok(Slice { measured, nanos, errors, first_error, plugin_calls })
}

/// The decorrelated-retry example plugin written into a fresh plugin directory as
/// `retry.wasm`: from `$DBGUARD_PLUGIN_DIR` when set (as the plugin host's benchmark reads it),
/// else built by the harness the way the plugin tests build it (same target directory, so
/// either reuses the other's build). A failed build becomes the reason the row is missing.
fn prepare_plugin_dir() -> Result<tempfile::TempDir, String> {
    let bytes = match std::env::var_os("DBGUARD_PLUGIN_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => {
            let path = PathBuf::from(dir).join("decorrelated_retry.wasm");
            std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => {
            eprintln!("building the guest plugins (wasm32-wasip2) for the `dbguard + wasm policy` row…");
            let target_tmpdir = Path::new(env!("CARGO_TARGET_TMPDIR"));
            std::panic::catch_unwind(|| dbguard_tests::guest_plugin(target_tmpdir, "decorrelated-retry")).map_err(
                |panic| {
                    let message = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                        .unwrap_or_else(|| "the guest build panicked".to_owned());
                    message.lines().take(3).collect::<Vec<_>>().join(" / ")
                },
            )?
        }
    };
    let dir = tempfile::Builder::new()
        .prefix("dbguard-bench-plugins-")
        .tempdir()
        .map_err(|e| format!("cannot create a plugin directory: {e}"))?;
    std::fs::write(dir.path().join("retry.wasm"), bytes).map_err(|e| format!("cannot write retry.wasm: {e}"))?;
    Ok(dir)
}

/// dbguard's configuration for the benchmark database: a pool of `pool` connections, all of
/// them persistent (`DB_POOL_SIZE = pool`, `DB_MAX_OVERFLOW = 0`; max connections is the sum),
/// statement logging off, everything else at the development profile's defaults.
fn dbguard_config(url: &str, pool: u32) -> Result<DbConfig, String> {
    let vars = [
        ("DATABASE_URL", url.to_owned()),
        ("DB_POOL_SIZE", pool.to_string()),
        ("DB_MAX_OVERFLOW", "0".to_owned()),
        ("DB_ECHO", "false".to_owned()),
    ];
    let config = dbguard::env::config_from_vars(vars.map(|(k, v)| (k.to_owned(), v)))
        .map_err(|e| format!("dbguard configuration: {e}"))?;
    if config.pool.max_connections() != pool {
        return Err(format!("dbguard would open {} connections, not {pool}", config.pool.max_connections()));
    }
    Ok(config)
}

async fn create_items(url: &str, rows: i64) -> Result<(), sqlx::Error> {
    let mut conn = PgConnection::connect(url).await?;
    let sql = format!(
        "CREATE TABLE bench_items (id bigint PRIMARY KEY, name text NOT NULL); \
         INSERT INTO bench_items SELECT g, 'item ' || g FROM generate_series(1, {rows}) AS g; \
         ANALYZE bench_items;"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await?;
    conn.close().await
}

async fn server_version(url: &str) -> String {
    let Ok(mut conn) = PgConnection::connect(url).await else { return "unknown".to_owned() };
    let version: String =
        sqlx::query_scalar("SELECT version()").fetch_one(&mut conn).await.unwrap_or_else(|_| "unknown".to_owned());
    let _ = conn.close().await;
    version
}

/// Every variant's rounds at one workload × concurrency.
struct Cell {
    workload: Workload,
    tasks: usize,
    rounds: Vec<(Variant, Result<Run, String>)>,
}

impl Cell {
    /// The variant's median round by throughput, the spread of its rounds, and the first error
    /// if no round succeeded.
    fn summary(&self, variant: Variant) -> Result<(Run, f64), String> {
        let mut runs: Vec<&Run> = Vec::new();
        let mut failure = None;
        for (v, outcome) in &self.rounds {
            if *v != variant {
                continue;
            }
            match outcome {
                Ok(run) => runs.push(run),
                Err(err) => failure = Some(err.clone()),
            }
        }
        if runs.is_empty() {
            return Err(failure.unwrap_or_else(|| "not run".to_owned()));
        }
        runs.sort_by(|a, b| a.ops_per_sec.total_cmp(&b.ops_per_sec));
        let median = runs[(runs.len() - 1) / 2].clone();
        let spread = (runs[runs.len() - 1].ops_per_sec - runs[0].ops_per_sec) / median.ops_per_sec.max(1.0);
        Ok((median, spread))
    }

    fn ops(&self, variant: Variant) -> Option<f64> {
        self.summary(variant).ok().map(|(run, _)| run.ops_per_sec)
    }

    /// The variant's throughput in each round, in round order (`None` for a failed round).
    fn ops_by_round(&self, variant: Variant) -> Vec<Option<f64>> {
        self.rounds
            .iter()
            .filter(|(v, _)| *v == variant)
            .map(|(_, outcome)| outcome.as_ref().ok().map(|run| run.ops_per_sec))
            .collect()
    }

    /// `numerator` ÷ `denominator` in each round both completed. The two were measured in the
    /// same stretch of time, slice for slice, so a round's ratio does not depend on how fast the
    /// machine was during that round.
    fn round_ratios(&self, numerator: Variant, denominator: Variant) -> Vec<f64> {
        self.ops_by_round(numerator)
            .into_iter()
            .zip(self.ops_by_round(denominator))
            .filter_map(|(n, d)| ratio(n, d))
            .collect()
    }
}

fn ratio(numerator: Option<f64>, denominator: Option<f64>) -> Option<f64> {
    match (numerator, denominator) {
        (Some(n), Some(d)) if d > 0.0 => Some(n / d),
        _ => None,
    }
}

fn ratio_cell(value: Option<f64>) -> String {
    value.map_or_else(|| "–".to_owned(), |r| format!("{r:.2}"))
}

fn report_workload(report: &mut Report, cells: &[Cell], workload: Workload, knobs: &Knobs) {
    report.line(format!("### {}", workload.title()));
    report.line("");
    let mut table = Table::new(&[
        "variant",
        "tasks",
        "conns",
        "ops/s",
        "p50 µs",
        "p99 µs",
        "× SeaORM default",
        "× SeaORM + dbguard options",
        "round spread",
        "errors",
    ]);
    let mut missing = Vec::new();
    for cell in cells.iter().filter(|c| c.workload == workload) {
        let default = cell.ops(Variant::SeaOrmDefault);
        let tuned = cell.ops(Variant::SeaOrmDbguardOptions);
        for &variant in &knobs.variants {
            match cell.summary(variant) {
                Ok((run, spread)) => {
                    let errors = match &run.first_error {
                        Some(err) => format!("{} ({err})", run.errors),
                        None => run.errors.to_string(),
                    };
                    table.row(&[
                        variant.label().to_owned(),
                        cell.tasks.to_string(),
                        variant.connections(cell.tasks, knobs.pool).to_string(),
                        format!("{:.0}", run.ops_per_sec),
                        micros(run.latency.p50),
                        micros(run.latency.p99),
                        ratio_cell(ratio(Some(run.ops_per_sec), default)),
                        ratio_cell(ratio(Some(run.ops_per_sec), tuned)),
                        format!("{:.0}%", spread * 100.0),
                        errors,
                    ]);
                }
                Err(reason) => missing.push(format!("{} at {} tasks: {reason}", variant.label(), cell.tasks)),
            }
        }
    }
    report.line(table.render().trim_end());
    report.line("");
    for line in missing {
        report.line(format!("MISSING {line}"));
        report.line("");
    }
}

/// What bounds the load numbers on a machine with `cores` cores; the rest is true of the code
/// measured, whatever the machine.
fn load_limits(cores: usize) -> String {
    format!(
        "**What limits these numbers.** {cores} core(s) run the client, the server backends and loopback TCP, \
         so once tasks outnumber the cores the machine is CPU-bound and throughput follows the round trips and \
         wake-ups each call costs; {LOAD_LIMITS_PER_CALL}"
    )
}

/// The part of [`load_limits`] that does not depend on the machine.
const LOAD_LIMITS_PER_CALL: &str = "at 1 task a call is latency-bound (a wake-up per round trip on an idle machine), and its \
rounds vary by tens of percent, so ratios at 1 task are within noise. `raw sqlx` is one round trip on a \
dedicated connection: the ceiling. With more tasks than cores a reply is often already waiting when its task \
is polled, so its p50 is tiny and the queueing shows in p99 (its mean latency is tasks ÷ ops/s). \
`deadpool-postgres` (`RecyclingMethod::Fast`) is one round trip plus a hop to tokio-postgres's connection \
task. `deadpool + sqlx connections, unguarded` is the pool dbguard is built on with nothing on top: the \
statements of `raw sqlx` on 16 shared connections, so its gap to `raw sqlx` is what sharing costs (a \
checkout per call and, with more tasks than connections, waiters queued and woken), and the gap from it to \
`dbguard full path` is the guard's own cost. The two SeaORM rows run on sqlx's pool, and sqlx-core 0.9 pings each connection when it returns to \
the pool (`return_to_pool`, unconditionally): two round trips per call. SeaORM's defaults add a third, the \
ping at checkout (`test_before_acquire`); dbguard's options replace it with \
`test_before_acquire_if_idle_for(500 ms)`, so a busy pool pays two. The dbguard rows run on dbguard's own \
pool (deadpool's managed pool of sqlx connections): a connection goes back with no I/O and is pinged at \
checkout only after 500 ms idle, so a call is one round trip, like `raw sqlx`, plus a pool checkout. \
`dbguard full path` uses named, cached statements (`DB_STATEMENT_MODE=prepared`); \
`DB_STATEMENT_MODE=simple` sends the statement with its parameters as escaped literals over the simple \
protocol, also one round trip, with text-format rows. Per call dbguard adds a read of the breaker's \
settled flag (its lock only while failures are in its window), six clock reads (the bare pool makes one), \
a tokio timer around the attempt, SeaORM's statement and row conversions, the boxed statement future \
`ConnectionTrait` returns, counters, and three durations (call, acquire, usage) counted into fixed \
buckets: CPU on the client, no extra round trip. `dbguard + wasm policy` runs the same code on success; the policy is asked only after a \
failed attempt.";

fn report_targets(report: &mut Report, cells: &[Cell]) {
    report.line("### Targets");
    report.line("");
    report.line(
        "A target is judged on the median of its per-round ratios: within a round both variants ran \
         slice for slice in the same stretch of time. The ratio of the two median rounds (which may \
         come from different rounds) is shown beside it.",
    );
    report.line("");
    let mut table =
        Table::new(&["target", "workload", "tasks", "per-round ratios", "median", "ratio of median rounds", "met"]);
    let mut target_row = |label: String, cell: &Cell, subject: Variant, baseline: Variant, floor: f64| {
        let rounds = cell.round_ratios(subject, baseline);
        let measured = median(&rounds);
        let verdict = match measured {
            Some(r) if r >= floor => "yes",
            Some(_) => "**no**",
            None => "not measured",
        };
        table.row(&[
            label,
            cell.workload.key().to_owned(),
            cell.tasks.to_string(),
            if rounds.is_empty() {
                "–".to_owned()
            } else {
                rounds.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>().join(" / ")
            },
            ratio_cell(measured),
            ratio_cell(ratio(cell.ops(subject), cell.ops(baseline))),
            verdict.to_owned(),
        ]);
    };
    for cell in cells.iter().filter(|c| c.tasks == 16 || c.tasks == 64) {
        let floors = [(Variant::RawSqlx, 0.8), (Variant::Deadpool, 1.0)];
        for (guarded, (baseline, floor)) in
            [Variant::DbguardFull, Variant::DbguardSimple].into_iter().flat_map(|g| floors.map(|f| (g, f)))
        {
            target_row(format!("{} ≥ {floor} × {}", guarded.label(), baseline.label()), cell, guarded, baseline, floor);
        }
    }
    // Not targets of their own: what a pool with nothing on top reaches against `raw sqlx`, and
    // what the guard costs on top of that pool, so a missed target above can be told apart into
    // the two.
    for cell in cells.iter().filter(|c| c.tasks == 16 || c.tasks == 64) {
        for (subject, baseline, floor) in
            [(Variant::BarePool, Variant::RawSqlx, 0.8), (Variant::DbguardFull, Variant::BarePool, 0.9)]
        {
            let label = format!("(reference) {} ≥ {floor} × {}", subject.label(), baseline.label());
            target_row(label, cell, subject, baseline, floor);
        }
    }
    for cell in cells.iter().filter(|c| c.tasks == 1 || c.tasks == 16) {
        let label = "SeaORM + dbguard options ≥ 1.3 × SeaORM default".to_owned();
        target_row(label, cell, Variant::SeaOrmDbguardOptions, Variant::SeaOrmDefault, 1.3);
    }
    report.line(table.render().trim_end());
    report.line("");
    let plugin_calls: Vec<String> = cells
        .iter()
        .filter_map(|cell| {
            let (run, _) = cell.summary(Variant::DbguardWasm).ok()?;
            Some(format!("{} × {}: {}", cell.workload.key(), cell.tasks, run.plugin_calls.unwrap_or(0)))
        })
        .collect();
    if !plugin_calls.is_empty() {
        report.line(format!(
            "Calls the wasm policy answered in the reported rounds ({}): it is asked only after a failed \
             attempt, so on an error-free load the row measures having a plugin installed, not calling it.",
            plugin_calls.join(", ")
        ));
        report.line("");
    }
}

/// One round at `workload` × `tasks`: every variant measured in slices, taking turns, the first
/// turn of each slice passing to the next variant in line (so none always follows the same
/// neighbour or opens the round).
async fn run_round(
    workload: Workload,
    tasks: usize,
    setup: &Setup,
    round: usize,
) -> Vec<(Variant, Result<Run, String>)> {
    let knobs = &setup.knobs;
    let variants = &knobs.variants;
    let measure = knobs.seconds.div_f64(knobs.slices as f64);
    let mut slices: Vec<Result<Vec<Slice>, String>> = variants.iter().map(|_| Ok(Vec::new())).collect();
    for slice in 0..knobs.slices {
        let first = (round * knobs.slices + slice) % variants.len();
        for turn in 0..variants.len() {
            let index = (first + turn) % variants.len();
            let Ok(done) = &mut slices[index] else { continue };
            match run_slice(variants[index], workload, tasks, setup, measure).await {
                Ok(measured) => done.push(measured),
                Err(err) => slices[index] = Err(err),
            }
        }
    }
    variants.iter().copied().zip(slices.into_iter().map(|outcome| outcome.map(Run::of_slices))).collect()
}

async fn bench() -> Result<Report, String> {
    let knobs = Knobs::from_env();
    if knobs.metrics {
        // The recorder `dbguard serve` installs: every guarded call then updates real series.
        let _ = dbguard_http::api::metrics_handle();
    }
    let db = TestDb::create("bench_load").await.map_err(|e| format!("cannot create the benchmark database: {e}"))?;
    let url = with_sslmode(db.url(), "disable");
    create_items(&url, knobs.rows).await.map_err(|e| format!("cannot fill bench_items: {e}"))?;
    let version = server_version(&url).await;
    let config = dbguard_config(&url, knobs.pool)?;
    let plugin_dir = if knobs.variants.contains(&Variant::DbguardWasm) {
        let dir = prepare_plugin_dir();
        if let Err(reason) = &dir {
            eprintln!("MISSING dbguard + wasm policy: {reason}");
        }
        dir
    } else {
        Err("not selected".to_owned())
    };
    let setup = Setup { url, config, knobs: knobs.clone(), plugin_dir };

    let mut report = Report::new("load");
    report.line("## Closed-loop load (`tests/benches/load.rs`)");
    report.line("");
    report.line(format!(
        "Server: {version}, loopback TCP, `sslmode=disable` for every client. {} round(s), median round \
         reported; a round measures every variant for {} s in {} slice(s), the variants taking turns slice \
         by slice (the first turn passing to the next variant each slice), each slice on freshly opened \
         connections after {} s warm-up; pool of {} connections for every \
         pooled variant; `raw sqlx` holds one connection per task (64 at 64 tasks). dbguard's Prometheus \
         recorder {}. Load generator and server share the machine's {} cores.",
        knobs.rounds,
        knobs.seconds.as_secs_f64(),
        knobs.slices,
        knobs.warmup.as_secs_f64(),
        knobs.pool,
        if knobs.metrics { "installed" } else { "not installed" },
        support::cores(),
    ));
    report.line("");

    let mut cells = Vec::new();
    for workload in [Workload::SelectOne, Workload::IndexedRead] {
        for &tasks in &knobs.tasks {
            let mut cell = Cell { workload, tasks, rounds: Vec::new() };
            for round in 0..knobs.rounds {
                for (variant, outcome) in run_round(workload, tasks, &setup, round).await {
                    match &outcome {
                        Ok(run) => eprintln!(
                            "{} tasks={tasks} round={round} {:<26} {:>9.0} ops/s p50={}µs p99={}µs errors={}",
                            workload.key(),
                            variant.label(),
                            run.ops_per_sec,
                            micros(run.latency.p50),
                            micros(run.latency.p99),
                            run.errors
                        ),
                        Err(err) => eprintln!(
                            "{} tasks={tasks} round={round} {:<26} failed: {err}",
                            workload.key(),
                            variant.label()
                        ),
                    }
                    cell.rounds.push((variant, outcome));
                }
            }
            cells.push(cell);
        }
    }
    for workload in [Workload::SelectOne, Workload::IndexedRead] {
        report_workload(&mut report, &cells, workload, &knobs);
    }
    report_targets(&mut report, &cells);
    report.line(load_limits(support::cores()));
    report.line("");
    drop(setup);
    drop(db);
    Ok(report)
}

fn main() -> ExitCode {
    support::run_main("load", bench())
}
