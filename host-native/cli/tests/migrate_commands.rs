//! `dbguard migrate` as a deploy runs it, one process per command, on a private PostgreSQL
//! cluster and on a SQLite file: five instances at once apply each migration once, a failing
//! migration is rolled back and named, a server killed mid-migration leaves it applied or absent
//! and `up` completes after the restart, `down 2` and `status`, a changed checksum refuses,
//! and the `database:migrations` check and `/api/database/status` in their three states.

// The HTTP API tests' in-process server, token minting and schema checks.
#[path = "../../http/tests/support/mod.rs"]
mod support;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use dbguard::migrate::MIGRATION_LOCK_KEY;
use dbguard_tests::{DEFAULT_DB, PgCluster};
use serde_json::Value;
use sqlx::Connection;

/// Three migrations: a log table each one appends its version to (so a migration applied
/// twice shows), and a table of its own.
const THREE: &[(&str, &str, &str)] = &[
    (
        "20260101000001_create_log",
        "CREATE TABLE applied_log (version INTEGER NOT NULL);\nINSERT INTO applied_log VALUES (1);\n",
        "DROP TABLE applied_log;\n",
    ),
    (
        "20260101000002_add_orders",
        "CREATE TABLE orders (id INTEGER PRIMARY KEY);\nINSERT INTO applied_log VALUES (2);\n",
        "DROP TABLE orders;\nDELETE FROM applied_log WHERE version = 2;\n",
    ),
    (
        "20260101000003_add_invoices",
        "CREATE TABLE invoices (id INTEGER PRIMARY KEY);\nINSERT INTO applied_log VALUES (3);\n",
        "DROP TABLE invoices;\nDELETE FROM applied_log WHERE version = 3;\n",
    ),
];

/// The second migration fails at its third line, after it created a table and wrote a row.
const FAILING_SECOND: &str = "CREATE TABLE orders (id INTEGER PRIMARY KEY);\nINSERT INTO applied_log VALUES (2);\nINSERT INTO missing_table VALUES (1);\n";

/// The database under test: a private PostgreSQL cluster or a SQLite file.
enum Target {
    Postgres(PgCluster),
    Sqlite(PathBuf),
}

impl Target {
    fn url(&self) -> String {
        match self {
            Self::Postgres(pg) => pg.url(DEFAULT_DB),
            Self::Sqlite(path) => format!("sqlite://{}", path.display()),
        }
    }

    /// Integers a query returns, in order.
    async fn integers(&self, sql: &str) -> Vec<i64> {
        let sql = sqlx::AssertSqlSafe(sql.to_owned());
        match self {
            Self::Postgres(pg) => {
                let mut conn = sqlx::PgConnection::connect(&pg.url(DEFAULT_DB)).await.expect("connect");
                sqlx::query_scalar::<_, i64>(sql).fetch_all(&mut conn).await.expect("query")
            }
            Self::Sqlite(path) => {
                let mut conn =
                    sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display())).await.expect("connect");
                sqlx::query_scalar::<_, i64>(sql).fetch_all(&mut conn).await.expect("query")
            }
        }
    }

    async fn applied_versions(&self) -> Vec<i64> {
        if !self.has_table("_sqlx_migrations").await {
            return Vec::new();
        }
        self.integers("SELECT version FROM _sqlx_migrations ORDER BY version").await
    }

    async fn log(&self) -> Vec<i64> {
        self.integers("SELECT CAST(version AS BIGINT) FROM applied_log ORDER BY version").await
    }

    async fn has_table(&self, name: &str) -> bool {
        let sql = match self {
            Self::Postgres(_) => format!("SELECT count(*) FROM pg_tables WHERE tablename = '{name}'"),
            Self::Sqlite(_) => format!("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '{name}'"),
        };
        self.integers(&sql).await == [1]
    }
}

/// A private cluster (its own data directory and port), or `None` where the test may skip.
async fn postgres(test: &str) -> Option<Target> {
    PgCluster::start_or_skip(test).await.map(Target::Postgres)
}

fn sqlite(dir: &Path) -> Target {
    Target::Sqlite(dir.join("app.db"))
}

/// A working directory with a `migrations/` directory of `files` (name, up, down).
fn workdir(files: &[(&str, &str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("migrations")).expect("migrations dir");
    for (name, up, down) in files {
        write_migration(dir.path(), name, up, down);
    }
    dir
}

fn write_migration(dir: &Path, name: &str, up: &str, down: &str) {
    std::fs::write(dir.join("migrations").join(format!("{name}.up.sql")), up).expect("write up");
    std::fs::write(dir.join("migrations").join(format!("{name}.down.sql")), down).expect("write down");
}

/// `dbguard migrate <args>` in `dir` with only the database and quick retries configured.
fn migrate(dir: &Path, url: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dbguard"));
    command
        .arg("migrate")
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("DATABASE_URL", url)
        .env("DB_ECHO", "false")
        .env("DB_RETRY_BASE_DELAY", "100ms")
        .env("DB_RETRY_MAX_DELAY", "500ms");
    command
}

struct Ran {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn code(&self) -> Option<i32> {
        self.status.code()
    }

    fn describe(&self) -> String {
        format!("exit {:?}\nstdout: {}\nstderr: {}", self.code(), self.stdout, self.stderr)
    }
}

fn run(mut command: Command) -> Ran {
    let output = command.output().expect("run dbguard");
    Ran {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A `dbguard` process whose output goes to files, so the test can watch it while it runs.
struct Running {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Running {
    fn spawn(mut command: Command, dir: &Path, label: &str) -> Self {
        let stdout = dir.join(format!("{label}.out"));
        let stderr = dir.join(format!("{label}.err"));
        command.stdout(Stdio::from(File::create(&stdout).expect("stdout file")));
        command.stderr(Stdio::from(File::create(&stderr).expect("stderr file")));
        Self { child: command.spawn().expect("spawn dbguard"), stdout, stderr }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// Waits until the process has printed `text`; panics after a minute or if it exits first.
    async fn wait_for_output(&mut self, text: &str) {
        let started = Instant::now();
        while !self.output().contains(text) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("exited ({status}) before printing {text:?}: {}", self.output());
            }
            assert!(started.elapsed() < Duration::from_secs(60), "no {text:?} after 60 s: {}", self.output());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn wait(mut self) -> Ran {
        let status = self.child.wait().expect("wait for dbguard");
        Ran { status, stdout: self.output(), stderr: std::fs::read_to_string(&self.stderr).unwrap_or_default() }
    }
}

/// Holds the migration lock from outside, as another instance in the middle of a run would.
enum HeldLock {
    Postgres(sqlx::PgConnection),
    Sqlite(File),
}

async fn hold_lock(target: &Target) -> HeldLock {
    match target {
        Target::Postgres(pg) => {
            let mut conn = sqlx::PgConnection::connect(&pg.url(DEFAULT_DB)).await.expect("connect");
            sqlx::query("SELECT pg_advisory_lock($1)").bind(MIGRATION_LOCK_KEY).execute(&mut conn).await.expect("lock");
            HeldLock::Postgres(conn)
        }
        Target::Sqlite(path) => {
            let file = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(format!("{}.migrate-lock", path.display()))
                .expect("lock file");
            file.lock().expect("lock");
            HeldLock::Sqlite(file)
        }
    }
}

async fn release(lock: HeldLock) {
    match lock {
        HeldLock::Postgres(conn) => conn.close().await.expect("close"),
        HeldLock::Sqlite(file) => drop(file),
    }
}

async fn five_instances_apply_each_migration_once(target: Target) {
    let dir = workdir(THREE);
    let url = target.url();
    // The lock is held while the five start, so each must wait for it, as on a deploy where
    // one instance got there first; then they race for it.
    let lock = hold_lock(&target).await;
    let mut runs: Vec<Running> =
        (0..5).map(|n| Running::spawn(migrate(dir.path(), &url, &["up"]), dir.path(), &format!("up{n}"))).collect();
    for run in &mut runs {
        run.wait_for_output("waiting for another instance").await;
    }
    release(lock).await;
    let results: Vec<Ran> = runs.into_iter().map(Running::wait).collect();
    for result in &results {
        assert_eq!(result.code(), Some(0), "{}", result.describe());
    }
    let appliers = results.iter().filter(|r| r.stdout.contains("applied 3 migration(s)")).count();
    let idle = results.iter().filter(|r| r.stdout.contains("nothing to apply")).count();
    assert_eq!((appliers, idle), (1, 4), "{:#?}", results.iter().map(Ran::describe).collect::<Vec<_>>());
    assert_eq!(target.applied_versions().await, vec![20260101000001, 20260101000002, 20260101000003]);
    assert_eq!(target.log().await, vec![1, 2, 3], "each migration ran exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_instances_at_once_apply_each_postgres_migration_once() {
    let Some(target) = postgres("five_instances_postgres").await else { return };
    five_instances_apply_each_migration_once(target).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_instances_at_once_apply_each_sqlite_migration_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    five_instances_apply_each_migration_once(sqlite(dir.path())).await;
}

async fn a_failing_migration_is_rolled_back_and_named(target: Target) {
    let dir = workdir(&[THREE[0], (THREE[1].0, FAILING_SECOND, THREE[1].2), THREE[2]]);
    let ran = run(migrate(dir.path(), &target.url(), &["up"]));
    assert_eq!(ran.code(), Some(1), "{}", ran.describe());
    assert!(ran.stdout.contains("applied 20260101000001_create_log.up.sql"), "{}", ran.describe());
    assert!(
        ran.stderr.contains("20260101000002_add_orders.up.sql failed at line 3: INSERT INTO missing_table VALUES (1)"),
        "{}",
        ran.describe()
    );
    assert!(ran.stderr.contains("rolled back"), "{}", ran.describe());
    // The first stays; the second left no table, no row and no bookkeeping; the third never ran.
    assert_eq!(target.applied_versions().await, vec![20260101000001]);
    assert_eq!(target.log().await, vec![1]);
    assert!(!target.has_table("orders").await, "the failed migration's table was rolled back");
    assert!(!target.has_table("invoices").await, "the migration after the failure did not run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_postgres_migration_is_rolled_back_and_named() {
    let Some(target) = postgres("failing_migration_postgres").await else { return };
    a_failing_migration_is_rolled_back_and_named(target).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_sqlite_migration_is_rolled_back_and_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    a_failing_migration_is_rolled_back_and_named(sqlite(dir.path())).await;
}

async fn down_two_reverts_and_status_shows_them_pending(target: Target) {
    let dir = workdir(THREE);
    let url = target.url();
    let up = run(migrate(dir.path(), &url, &["up"]));
    assert_eq!(up.code(), Some(0), "{}", up.describe());
    let down = run(migrate(dir.path(), &url, &["down", "2"]));
    assert_eq!(down.code(), Some(0), "{}", down.describe());
    let reverted: Vec<&str> = down.stdout.lines().filter(|line| line.starts_with("reverted 2026")).collect();
    assert_eq!(reverted.len(), 2, "{}", down.describe());
    assert!(reverted[0].contains("20260101000003_add_invoices.down.sql"), "newest first: {}", down.describe());
    assert_eq!(target.applied_versions().await, vec![20260101000001]);
    assert_eq!(target.log().await, vec![1]);
    assert!(!target.has_table("orders").await && !target.has_table("invoices").await);

    let status = run(migrate(dir.path(), &url, &["status", "--json"]));
    assert_eq!(status.code(), Some(1), "pending migrations exit 1: {}", status.describe());
    let report: Value = serde_json::from_str(&status.stdout).expect("status JSON");
    support::assert_schema("migrations-report", &report);
    let states: Vec<&str> =
        report["migrations"].as_array().expect("list").iter().filter_map(|m| m["state"].as_str()).collect();
    assert_eq!(states, ["applied", "pending", "pending"], "{report:#}");
    assert_eq!(report["current_version"], 20260101000001_i64);

    let text = run(migrate(dir.path(), &url, &["status"]));
    assert!(text.stdout.contains("2 pending: 20260101000002, 20260101000003"), "{}", text.describe());

    // And back up: the reverted ones apply again.
    let again = run(migrate(dir.path(), &url, &["up"]));
    assert_eq!(again.code(), Some(0), "{}", again.describe());
    assert_eq!(target.log().await, vec![1, 2, 3]);
    assert_eq!(run(migrate(dir.path(), &url, &["status"])).code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_two_reverts_two_postgres_migrations() {
    let Some(target) = postgres("down_two_postgres").await else { return };
    down_two_reverts_and_status_shows_them_pending(target).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_two_reverts_two_sqlite_migrations() {
    let dir = tempfile::tempdir().expect("tempdir");
    down_two_reverts_and_status_shows_them_pending(sqlite(dir.path())).await;
}

async fn out_of_step_databases_are_refused(target: Target) {
    let dir = workdir(&THREE[..1]);
    let url = target.url();
    assert_eq!(run(migrate(dir.path(), &url, &["up"])).code(), Some(0));
    // An applied migration is edited and a new one added: nothing may run.
    let first = dir.path().join("migrations").join(format!("{}.up.sql", THREE[0].0));
    std::fs::write(&first, format!("{}-- edited after it was applied\n", THREE[0].1)).expect("edit");
    write_migration(dir.path(), THREE[1].0, THREE[1].1, THREE[1].2);
    let changed = run(migrate(dir.path(), &url, &["up"]));
    assert_eq!(changed.code(), Some(2), "{}", changed.describe());
    assert!(
        changed.stderr.contains("20260101000001_create_log.up.sql was applied with another checksum"),
        "{}",
        changed.describe()
    );
    assert_eq!(target.applied_versions().await, vec![20260101000001], "nothing ran after the refusal");
    let status = run(migrate(dir.path(), &url, &["status"]));
    assert_eq!(status.code(), Some(2), "{}", status.describe());
    assert!(status.stdout.contains("CHANGED"), "{}", status.describe());

    // Restored, it applies; then a binary without the newest file (a rollback deploy) is refused.
    std::fs::write(&first, THREE[0].1).expect("restore");
    assert_eq!(run(migrate(dir.path(), &url, &["up"])).code(), Some(0));
    for suffix in ["up", "down"] {
        std::fs::remove_file(dir.path().join("migrations").join(format!("{}.{suffix}.sql", THREE[1].0))).expect("rm");
    }
    let unknown = run(migrate(dir.path(), &url, &["up"]));
    assert_eq!(unknown.code(), Some(2), "{}", unknown.describe());
    assert!(unknown.stderr.contains("applied migration 20260101000002, which is not in"), "{}", unknown.describe());
    let status = run(migrate(dir.path(), &url, &["status", "--json"]));
    assert_eq!(status.code(), Some(2), "{}", status.describe());
    let report: Value = serde_json::from_str(&status.stdout).expect("status JSON");
    assert_eq!(report["migrations"][1]["state"], "unknown", "{report:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_step_postgres_databases_are_refused() {
    let Some(target) = postgres("out_of_step_postgres").await else { return };
    out_of_step_databases_are_refused(target).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_step_sqlite_databases_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    out_of_step_databases_are_refused(sqlite(dir.path())).await;
}

/// The second migration sleeps when the session asks for it (a setting in the URL), so the
/// first run can be caught in the middle of it and a later run goes straight through with the
/// same checksum.
const SLOW_SECOND: &str = "CREATE TABLE orders (id INTEGER PRIMARY KEY);\nINSERT INTO applied_log VALUES (2);\n\
SELECT pg_sleep(CASE WHEN current_setting('dbguard_test.slow', true) = 'on' THEN 120 ELSE 0 END);\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_migration_leaves_it_absent_and_up_completes_after_the_restart() {
    let Some(target) = postgres("kill9_mid_migration").await else { return };
    let Target::Postgres(pg) = &target else { unreachable!() };
    // Acknowledged means durable: a SIGKILL must not take back a migration that committed.
    pg.set_setting("synchronous_commit", "on").expect("set synchronous_commit");
    pg.reload().await.expect("reload");
    let dir = workdir(&[THREE[0], (THREE[1].0, SLOW_SECOND, THREE[1].2), THREE[2]]);
    let url = target.url();
    let slow_url = format!("{url}?options=-c%20dbguard_test.slow%3Don");
    let mut first = Running::spawn(migrate(dir.path(), &slow_url, &["up"]), dir.path(), "slow");
    first.wait_for_output("applied 20260101000001_create_log.up.sql").await;
    let mut admin = sqlx::PgConnection::connect(&url).await.expect("admin");
    let started = Instant::now();
    loop {
        let sleeping: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%pg_sleep(CASE%' AND pid <> pg_backend_pid()",
        )
        .fetch_one(&mut admin)
        .await
        .expect("pg_stat_activity");
        if sleeping == 1 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the second migration never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(admin);
    pg.kill9().await.expect("kill -9 the server");
    let killed = first.wait();
    assert_eq!(killed.code(), Some(75), "{}", killed.describe());
    assert!(
        killed.stderr.contains("the connection was lost while 20260101000002_add_orders.up.sql ran"),
        "{}",
        killed.describe()
    );

    // `up` started while the server is down waits, retrying, and applies once it is back.
    let mut retrying = migrate(dir.path(), &url, &["up"]);
    retrying.env("DB_RETRY_MAX_ATTEMPTS", "100");
    let mut second = Running::spawn(retrying, dir.path(), "after");
    second.wait_for_output("database unavailable").await;
    pg.start().await.expect("restart");
    let finished = second.wait();
    assert_eq!(finished.code(), Some(0), "{}", finished.describe());
    assert!(finished.stdout.contains("applied 2 migration(s)"), "{}", finished.describe());
    // The killed migration had left nothing: had it been half-applied, its table would have
    // stopped the second run, and its log row would show twice.
    assert_eq!(target.log().await, vec![1, 2, 3]);
    assert_eq!(target.applied_versions().await, vec![20260101000001, 20260101000002, 20260101000003]);
}

#[test]
fn bad_arguments_and_a_missing_directory_get_their_exit_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("app.db").display());
    let missing = run(migrate(dir.path(), &url, &["up"]));
    assert_eq!(missing.code(), Some(66), "{}", missing.describe());
    assert!(missing.stderr.contains("migrations directory migrations does not exist"), "{}", missing.describe());
    let bad_name = run(migrate(dir.path(), &url, &["new", "Add Orders"]));
    assert_eq!(bad_name.code(), Some(64), "{}", bad_name.describe());
    assert!(!dir.path().join("migrations").exists(), "a refused name creates nothing");

    for name in ["create_users", "create_users"] {
        let created = run(migrate(dir.path(), &url, &["new", name]));
        assert_eq!(created.code(), Some(0), "{}", created.describe());
    }
    let mut files: Vec<String> = std::fs::read_dir(dir.path().join("migrations"))
        .expect("read migrations")
        .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files.len(), 4, "two pairs with distinct versions: {files:?}");
    assert!(files.iter().all(|f| f.ends_with("_create_users.up.sql") || f.ends_with("_create_users.down.sql")));
    assert_ne!(files[0].split('_').next(), files[2].split('_').next(), "{files:?}");

    let zero = run(migrate(dir.path(), &url, &["down", "0"]));
    assert_eq!(zero.code(), Some(64), "{}", zero.describe());
    // The new files are comments only: they apply, and `status` is then clean.
    assert_eq!(run(migrate(dir.path(), &url, &["up"])).code(), Some(0));
    assert_eq!(run(migrate(dir.path(), &url, &["status"])).code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_without_a_down_file_is_not_reverted() {
    let dir = workdir(&THREE[..1]);
    std::fs::write(
        dir.path().join("migrations").join("20260101000002_no_way_back.sql"),
        "CREATE TABLE kept (id INTEGER);\n",
    )
    .expect("write");
    let target = sqlite(dir.path());
    let url = target.url();
    assert_eq!(run(migrate(dir.path(), &url, &["up"])).code(), Some(0));
    let down = run(migrate(dir.path(), &url, &["down", "2"]));
    assert_eq!(down.code(), Some(2), "{}", down.describe());
    assert!(down.stderr.contains("20260101000002_no_way_back.sql has no down file"), "{}", down.describe());
    assert_eq!(target.applied_versions().await, vec![20260101000001, 20260101000002], "nothing was reverted");
}

/// The check's state and the status route's list, read through the API.
async fn migrations_seen_by_the_api(server: &support::Server) -> (String, Vec<String>) {
    let (code, health) = server.get("/api/database/health?force=true", Some(&server.reader)).await;
    assert_eq!(code, 200, "{health:#}");
    let checks = health["data"]["checks"].as_array().cloned().unwrap_or_default();
    let check = checks.iter().find(|c| c["name"] == "database:migrations").unwrap_or_else(|| panic!("{health:#}"));
    let (code, status) = server.get("/api/database/status", Some(&server.reader)).await;
    assert_eq!(code, 200, "{status:#}");
    support::assert_schema("status-response", &status);
    let states = status["data"]["migrations"]["migrations"]
        .as_array()
        .unwrap_or_else(|| panic!("{status:#}"))
        .iter()
        .map(|m| m["state"].as_str().unwrap_or_default().to_owned())
        .collect();
    (check["status"].as_str().unwrap_or_default().to_owned(), states)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_migrations_check_passes_warns_and_fails_and_status_lists_them() {
    use dbguard::migrate::{MigrationSet, migrate_up};
    let dir = workdir(THREE);
    let url = sqlite(dir.path()).url();
    let server = support::Server::start(&[("DATABASE_URL", url.as_str())]).await;
    let migrations = dir.path().join("migrations");
    server.manager.watch_migrations(Some(MigrationSet::load(&migrations).await.expect("load").catalog()));
    assert_eq!(
        migrations_seen_by_the_api(&server).await,
        ("warn".to_owned(), vec!["pending".to_owned(); 3]),
        "nothing applied yet"
    );

    let set = MigrationSet::load(&migrations).await.expect("load");
    migrate_up(server.manager.config(), &set, &mut |_| {}).await.expect("migrate up");
    assert_eq!(migrations_seen_by_the_api(&server).await, ("pass".to_owned(), vec!["applied".to_owned(); 3]));

    // A binary that knows only the first two: the database is ahead of it.
    let older = workdir(&THREE[..2]);
    server
        .manager
        .watch_migrations(Some(MigrationSet::load(older.path().join("migrations")).await.expect("load").catalog()));
    let (state, list) = migrations_seen_by_the_api(&server).await;
    assert_eq!(
        (state.as_str(), list.as_slice()),
        ("fail", &["applied".to_owned(), "applied".to_owned(), "unknown".to_owned()][..])
    );
    let (_, health) = server.get("/api/database/health?force=true", Some(&server.reader)).await;
    assert_eq!(
        health["data"]["status"], "degraded",
        "an unknown migration degrades, it does not stop traffic: {health:#}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_error_without_a_position_still_names_its_statement() {
    let Some(target) = postgres("error_without_position").await else { return };
    // "already exists" comes without a position in the script: the statement is found by
    // running the script again in a transaction that is rolled back.
    let twice = "CREATE TABLE twice (id INTEGER);\n-- the same again\nCREATE TABLE twice (id INTEGER);\n";
    let dir = workdir(&[("20260101000001_twice", twice, "DROP TABLE twice;\n")]);
    let ran = run(migrate(dir.path(), &target.url(), &["up"]));
    assert_eq!(ran.code(), Some(1), "{}", ran.describe());
    assert!(
        ran.stderr.contains("20260101000001_twice.up.sql failed at line 3: CREATE TABLE twice (id INTEGER)"),
        "{}",
        ran.describe()
    );
    assert!(ran.stderr.contains("(code 42P07)"), "{}", ran.describe());
    assert!(!target.has_table("twice").await, "neither the migration nor the search left the table");
    assert_eq!(target.applied_versions().await, Vec::<i64>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_transactional_migration_runs_outside_a_transaction_and_says_so_when_it_fails() {
    let Some(target) = postgres("no_transaction_migration").await else { return };
    // CREATE INDEX CONCURRENTLY refuses to run inside a transaction block: it only works here
    // because the file opts out of the migration transaction.
    let index = "-- no-transaction\nCREATE INDEX CONCURRENTLY applied_log_version ON applied_log (version);\n";
    let dir = workdir(&[THREE[0], ("20260101000002_index_log", index, "DROP INDEX applied_log_version;\n")]);
    let url = target.url();
    let ran = run(migrate(dir.path(), &url, &["up"]));
    assert_eq!(ran.code(), Some(0), "{}", ran.describe());
    let indexes = target.integers("SELECT count(*) FROM pg_indexes WHERE indexname = 'applied_log_version'").await;
    assert_eq!(indexes, [1]);

    // The same opt-out on a failing file: the error does not claim a rollback.
    let failing = "-- no-transaction\nCREATE INDEX CONCURRENTLY broken ON no_such_table (id);\n";
    write_migration(dir.path(), "20260101000003_broken_index", failing, "DROP INDEX broken;\n");
    let ran = run(migrate(dir.path(), &url, &["up"]));
    assert_eq!(ran.code(), Some(1), "{}", ran.describe());
    assert!(ran.stderr.contains("20260101000003_broken_index.up.sql failed"), "{}", ran.describe());
    assert!(ran.stderr.contains("without a migration transaction"), "{}", ran.describe());
    assert!(!ran.stderr.contains("it was rolled back"), "{}", ran.describe());
}

/// `dbguard serve` in `dir` on `url`, with migrations applied at start, on a free port.
fn serve_migrating(dir: &Path, url: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dbguard"));
    command
        .arg("serve")
        .current_dir(dir)
        .env_clear()
        .env("DATABASE_URL", url)
        .env("DB_ECHO", "false")
        .env("DBGUARD_BIND", "127.0.0.1:0")
        .env("DBGUARD_MIGRATE_ON_START", "true");
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_migrates_at_start_when_asked_and_does_not_start_on_a_failed_migration() {
    // A failing migration: serve stops with `up`'s exit code and never listens.
    let broken = workdir(&[THREE[0], (THREE[1].0, FAILING_SECOND, THREE[1].2)]);
    let url = sqlite(broken.path()).url();
    let refused = run(serve_migrating(broken.path(), &url));
    assert_eq!(refused.code(), Some(1), "{}", refused.describe());
    assert!(refused.stderr.contains("20260101000002_add_orders.up.sql failed at line 3"), "{}", refused.describe());
    assert!(!refused.stdout.contains("listening"), "{}", refused.describe());

    let dir = workdir(THREE);
    let url = sqlite(dir.path()).url();
    let mut serving = Running::spawn(serve_migrating(dir.path(), &url), dir.path(), "serve");
    serving.wait_for_output("admin token").await;
    serving.wait_for_output("curl").await;
    let output = serving.output();
    let applied = output.find("applied 20260101000003_add_invoices.up.sql").unwrap_or_else(|| panic!("{output}"));
    let listening = output.find("listening on").unwrap_or_else(|| panic!("{output}"));
    assert!(applied < listening, "migrations are applied before the server listens: {output}");
    let address = output
        .split("listening on http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("{output}"))
        .to_owned();
    let token = output
        .lines()
        .skip_while(|line| !line.starts_with("admin token"))
        .nth(1)
        .map(str::trim)
        .unwrap_or_else(|| panic!("{output}"))
        .to_owned();
    let status: Value = reqwest::Client::new()
        .get(format!("http://{address}/api/database/status"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("status request")
        .json()
        .await
        .expect("status JSON");
    let states: Vec<&str> = status["data"]["migrations"]["migrations"]
        .as_array()
        .unwrap_or_else(|| panic!("{status:#}"))
        .iter()
        .filter_map(|m| m["state"].as_str())
        .collect();
    assert_eq!(states, ["applied"; 3], "{status:#}");
    let checks = status["data"]["health"]["checks"].as_array().cloned().unwrap_or_default();
    assert!(checks.iter().any(|c| c["name"] == "database:migrations" && c["status"] == "pass"), "{status:#}");
    let _ = serving.child.kill();
    let _ = serving.wait();
}

/// The second migration counts to a hundred million while a `go_slow` table exists, after it
/// created a table and wrote a row; without the table it goes straight through, with the same
/// checksum.
const SLOW_SQLITE_SECOND: &str = "CREATE TABLE orders (id INTEGER PRIMARY KEY);\nINSERT INTO applied_log VALUES (2);\n\
WITH RECURSIVE n(x) AS (SELECT 1 WHERE EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'go_slow') \
UNION ALL SELECT x + 1 FROM n WHERE x < 100000000) SELECT count(*) FROM n;\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migrating_process_killed_on_sqlite_leaves_the_migration_absent_and_up_completes() {
    let dir = workdir(&[THREE[0], (THREE[1].0, SLOW_SQLITE_SECOND, THREE[1].2), THREE[2]]);
    let target = sqlite(dir.path());
    let Target::Sqlite(path) = &target else { unreachable!() };
    let url = target.url();
    {
        let mut conn = sqlx::SqliteConnection::connect(&format!("{url}?mode=rwc")).await.expect("create");
        sqlx::query("CREATE TABLE go_slow (x INTEGER)").execute(&mut conn).await.expect("marker");
        conn.close().await.expect("close");
    }
    let mut first = Running::spawn(migrate(dir.path(), &url, &["up"]), dir.path(), "slow");
    first.wait_for_output("applied 20260101000001_create_log.up.sql").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        first.child.try_wait().expect("poll").is_none(),
        "the slow migration ended before the kill: {}",
        first.output()
    );
    first.child.kill().expect("kill -9 the migrating process");
    let killed = first.wait();
    assert_eq!(killed.status.code(), None, "killed by a signal: {}", killed.describe());

    // What the killed run wrote was never committed: SQLite rolls it back on the next open.
    assert_eq!(target.applied_versions().await, vec![20260101000001]);
    assert_eq!(target.log().await, vec![1]);
    assert!(!target.has_table("orders").await);
    assert!(std::path::Path::new(&format!("{}.migrate-lock", path.display())).exists());

    {
        let mut conn = sqlx::SqliteConnection::connect(&url).await.expect("connect");
        sqlx::query("DROP TABLE go_slow").execute(&mut conn).await.expect("drop marker");
        conn.close().await.expect("close");
    }
    // The lock died with the process: the next run does not wait.
    let ran = run(migrate(dir.path(), &url, &["up"]));
    assert_eq!(ran.code(), Some(0), "{}", ran.describe());
    assert!(!ran.stdout.contains("waiting"), "{}", ran.describe());
    assert_eq!(target.log().await, vec![1, 2, 3]);
    assert_eq!(target.applied_versions().await, vec![20260101000001, 20260101000002, 20260101000003]);
}
