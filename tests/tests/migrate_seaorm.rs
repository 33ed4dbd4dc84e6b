//! Guarded runs of a SeaORM migrator (`dbguard::migrate::seaorm`) on a private PostgreSQL
//! cluster and a SQLite file: five runners at once apply each migration once, a failing
//! migration is rolled back on PostgreSQL and named, `down 2`, a migration the binary does not
//! know is refused, and the `database:migrations` check in its three states.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dbguard::migrate::seaorm::{catalog, migrate_down, migrate_up};
use dbguard::migrate::{MIGRATION_LOCK_KEY, MigrationError, MigrationEvent};
use dbguard::{DbManager, Idempotency};
use dbguard_core::{CheckStatus, DbConfig};
use dbguard_tests::{DEFAULT_DB, PgCluster};
use sea_orm::{ConnectionTrait, DbErr, Statement};
use sea_orm_migration::{MigrationName, MigrationTrait, MigratorTrait, SchemaManager};
use sqlx::Connection;

/// A migration of plain statements, run one by one.
struct Steps {
    name: &'static str,
    up: &'static [&'static str],
    down: &'static [&'static str],
}

impl MigrationName for Steps {
    fn name(&self) -> &str {
        self.name
    }
}

// The trait is declared through async-trait with `&SchemaManager` (lifetime elided); an impl
// that names the lifetime no longer matches it.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for Steps {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        run_all(manager, self.up).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        run_all(manager, self.down).await
    }
}

async fn run_all(manager: &SchemaManager<'_>, statements: &[&str]) -> Result<(), DbErr> {
    for statement in statements {
        manager.get_connection().execute_unprepared(statement).await?;
    }
    Ok(())
}

const CREATE_LOG: Steps = Steps {
    name: "m20260101_000001_create_log",
    up: &["CREATE TABLE applied_log (version INTEGER NOT NULL)", "INSERT INTO applied_log VALUES (1)"],
    down: &["DROP TABLE applied_log"],
};
const ADD_ORDERS: Steps = Steps {
    name: "m20260101_000002_add_orders",
    up: &["CREATE TABLE orders (id INTEGER PRIMARY KEY)", "INSERT INTO applied_log VALUES (2)"],
    down: &["DROP TABLE orders", "DELETE FROM applied_log WHERE version = 2"],
};
const ADD_INVOICES: Steps = Steps {
    name: "m20260101_000003_add_invoices",
    up: &["CREATE TABLE invoices (id INTEGER PRIMARY KEY)", "INSERT INTO applied_log VALUES (3)"],
    down: &["DROP TABLE invoices", "DELETE FROM applied_log WHERE version = 3"],
};

/// Three migrations, each appending its version to a log table (so one applied twice shows).
struct Three;

impl MigratorTrait for Three {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(CREATE_LOG), Box::new(ADD_ORDERS), Box::new(ADD_INVOICES)]
    }
}

/// The first two of [`Three`]: an older binary.
struct FirstTwo;

impl MigratorTrait for FirstTwo {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(CREATE_LOG), Box::new(ADD_ORDERS)]
    }
}

/// The second migration fails after it created a table and wrote a row.
struct FailingSecond;

impl MigratorTrait for FailingSecond {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        let failing = Steps {
            name: ADD_ORDERS.name,
            up: &[
                "CREATE TABLE orders (id INTEGER PRIMARY KEY)",
                "INSERT INTO applied_log VALUES (2)",
                "INSERT INTO missing_table VALUES (1)",
            ],
            down: ADD_ORDERS.down,
        };
        vec![Box::new(CREATE_LOG), Box::new(failing), Box::new(ADD_INVOICES)]
    }
}

fn config(url: &str) -> DbConfig {
    let vars = [("DATABASE_URL", url), ("DB_ECHO", "false"), ("DB_RETRY_BASE_DELAY", "100ms")];
    dbguard::env::config_from_vars(vars.map(|(name, value)| (name.to_owned(), value.to_owned())))
        .expect("valid configuration")
}

async fn integers(url: &str, sql: &str) -> Vec<i64> {
    let manager = DbManager::connect(config(url)).await.expect("connect");
    let sql = sql.to_owned();
    let values = manager
        .run(Idempotency::Idempotent, move |db| {
            let sql = sql.clone();
            async move {
                let rows = db.query_all_raw(Statement::from_string(db.get_database_backend(), sql)).await?;
                rows.iter().map(|row| row.try_get_by_index::<i64>(0)).collect::<Result<Vec<_>, _>>()
            }
        })
        .await
        .expect("query");
    manager.close().await;
    values
}

async fn log(url: &str) -> Vec<i64> {
    integers(url, "SELECT CAST(version AS BIGINT) FROM applied_log ORDER BY version").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_runners_at_once_apply_each_seaorm_migration_once() {
    let Some(pg) = PgCluster::start_or_skip("seaorm_five_runners").await else { return };
    let url = pg.url(DEFAULT_DB);
    // Held from outside while the five start, so each must wait for it.
    let mut holder = sqlx::PgConnection::connect(&url).await.expect("connect");
    sqlx::query("SELECT pg_advisory_lock($1)").bind(MIGRATION_LOCK_KEY).execute(&mut holder).await.expect("lock");
    let waiting = Arc::new(AtomicUsize::new(0));
    let runners: Vec<_> = (0..5)
        .map(|_| {
            let (url, waiting) = (url.clone(), waiting.clone());
            tokio::spawn(async move {
                let mut events = move |event: MigrationEvent| {
                    if event == MigrationEvent::WaitingForLock {
                        waiting.fetch_add(1, Ordering::SeqCst);
                    }
                };
                migrate_up::<Three>(&config(&url), &mut events).await
            })
        })
        .collect();
    let started = Instant::now();
    while waiting.load(Ordering::SeqCst) < 5 {
        assert!(started.elapsed() < Duration::from_secs(60), "{} of 5 waited", waiting.load(Ordering::SeqCst));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    holder.close().await.expect("release");
    let mut applied = Vec::new();
    for runner in runners {
        let run = runner.await.expect("runner task").expect("migrate up");
        assert!(run.waited_for_lock);
        applied.push(run.versions.len());
    }
    applied.sort_unstable();
    assert_eq!(applied, [0, 0, 0, 0, 3], "one runner applied all three, the others found nothing to do");
    assert_eq!(log(&url).await, [1, 2, 3], "each migration ran exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_seaorm_migration_is_rolled_back_on_postgres_and_named() {
    let Some(pg) = PgCluster::start_or_skip("seaorm_failing_migration").await else { return };
    let url = pg.url(DEFAULT_DB);
    let err = migrate_up::<FailingSecond>(&config(&url), &mut |_| {}).await.expect_err("the second fails");
    let MigrationError::Failed { version, file, rolled_back, code, .. } = &err else { panic!("{err}") };
    assert_eq!((*version, file.as_str(), *rolled_back), (20260101000002, "m20260101_000002_add_orders", true), "{err}");
    assert_eq!(code.as_deref(), Some("42P01"), "{err}");
    assert!(err.to_string().contains("missing_table"), "{err}");
    assert_eq!(log(&url).await, [1], "the first stays, the second left no row, the third did not run");
    let tables = "SELECT count(*) FROM pg_tables WHERE tablename IN ('orders', 'invoices')";
    assert_eq!(integers(&url, tables).await, [0]);
    assert_eq!(integers(&url, "SELECT count(*) FROM seaql_migrations").await, [1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seaorm_down_two_reverts_and_an_older_binary_is_refused_and_fails_the_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("app.db").display());
    let manager = DbManager::connect(config(&url)).await.expect("connect");
    manager.watch_migrations(Some(catalog::<Three>().expect("catalog")));
    let check = |report: &dbguard_core::HealthReport| {
        let check = report.checks.iter().find(|c| c.name == "database:migrations").expect("migrations check");
        check.status
    };
    assert_eq!(check(&*manager.check_health(true).await), CheckStatus::Warn, "three pending");

    let run = migrate_up::<Three>(manager.config(), &mut |_| {}).await.expect("up");
    assert_eq!(run.versions, [20260101000001, 20260101000002, 20260101000003]);
    assert_eq!(check(&*manager.check_health(true).await), CheckStatus::Pass);
    let status = manager.status().await.migrations.expect("status lists migrations");
    assert_eq!(status.current_version, Some(20260101000003));

    // A binary that knows only the first two: refused, and its check fails.
    let refused = migrate_up::<FirstTwo>(manager.config(), &mut |_| {}).await.expect_err("out of step");
    assert!(matches!(refused, MigrationError::UnknownApplied { version: 20260101000003 }), "{refused}");
    manager.watch_migrations(Some(catalog::<FirstTwo>().expect("catalog")));
    assert_eq!(check(&*manager.check_health(true).await), CheckStatus::Fail);

    let mut reverted = Vec::new();
    let run = migrate_down::<Three>(manager.config(), 2, &mut |event| {
        if let MigrationEvent::Reverted { file, .. } = event {
            reverted.push(file);
        }
    })
    .await
    .expect("down 2");
    assert_eq!(run.versions, [20260101000003, 20260101000002]);
    assert_eq!(reverted, ["m20260101_000003_add_invoices", "m20260101_000002_add_orders"]);
    assert_eq!(log(&url).await, [1]);
    manager.watch_migrations(Some(catalog::<Three>().expect("catalog")));
    let status = manager.status().await.migrations.expect("status lists migrations");
    let states: Vec<_> = status.migrations.iter().map(|m| m.state).collect();
    use dbguard_core::MigrationState::{Applied, Pending};
    assert_eq!(states, [Applied, Pending, Pending]);
    manager.close().await;
}

/// Listed out of order: refused before anything connects.
struct OutOfOrder;

impl MigratorTrait for OutOfOrder {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(ADD_ORDERS), Box::new(CREATE_LOG)]
    }
}

#[test]
fn a_migrator_listed_out_of_order_is_refused() {
    let err = catalog::<OutOfOrder>().expect_err("out of order");
    assert!(err.to_string().contains("list migrations oldest first"), "{err}");
}
