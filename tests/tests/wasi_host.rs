//! The WASI host (`host-wasi/`, built here for `wasm32-wasip1`) run through dbguard's own
//! runner, against the native host on the same SQLite files: the same report, retries on a
//! database a native writer holds, and no way out of the preopened directory.
//!
//! The module is built once per test run into this crate's `CARGO_TARGET_TMPDIR`. Without
//! clang, llvm-ar-14 or Debian's wasi-libc the tests say `SKIP` (and fail under
//! `DBGUARD_REQUIRE_ALL=1`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use dbguard::DbManager;
use dbguard_cli::wasi_run::{Output, WasiRunError, WasiRunOptions, WasiRunOutput, run_wasi_module_with_output};
use dbguard_core::DbConfig;
use serde_json::Value;

/// Fast retries for the guest: 20 ms base, 200 ms cap.
const FAST_RETRY: &[(&str, &str)] = &[("DB_RETRY_BASE_DELAY", "20ms"), ("DB_RETRY_MAX_DELAY", "200ms")];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// The built `dbguard-wasi.wasm`, or why it cannot be built here.
fn module() -> Result<&'static Path, &'static str> {
    static MODULE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    MODULE.get_or_init(build_module).as_deref().map_err(String::as_str)
}

fn build_module() -> Result<PathBuf, String> {
    let host_wasi = repo_root().join("host-wasi");
    // build.sh --check names the Debian package of every missing tool.
    let tools = Command::new("bash")
        .arg(host_wasi.join("build.sh"))
        .arg("--check")
        .output()
        .map_err(|err| format!("cannot run host-wasi/build.sh: {err}"))?;
    if !tools.status.success() {
        return Err(format!(
            "the WASI toolchain is incomplete: {}",
            String::from_utf8_lossy(&tools.stderr).trim().replace('\n', "; ")
        ));
    }
    let target_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dbguard-wasi");
    // Run from host-wasi/ so that its .cargo/config.toml (the C compiler settings) applies.
    let build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
        .current_dir(&host_wasi)
        .args(["build", "--release", "--locked", "--target", "wasm32-wasip1", "--manifest-path"])
        .arg(host_wasi.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .map_err(|err| format!("cannot run cargo: {err}"))?;
    // A toolchain that is present but broken is a failure, not a skip.
    assert!(build.status.success(), "building host-wasi failed:\n{}", String::from_utf8_lossy(&build.stderr));
    Ok(target_dir.join("wasm32-wasip1/release/dbguard-wasi.wasm"))
}

/// The module, or a loud skip (a failure under `DBGUARD_REQUIRE_ALL=1`).
macro_rules! module_or_skip {
    ($test:expr) => {
        match module() {
            Ok(module) => module,
            Err(reason) => {
                dbguard_tests::skip($test, reason);
                return;
            }
        }
    };
}

/// Runs the guest with `args` in a writable sandbox, capturing both streams. Writable, so that
/// SQLite's WASI build takes its `<database>.lock` directory and coordinates with the dot-file
/// writer of the busy tests; the guest itself opens the database read-only (`mode=ro`, `query_only`).
fn run_guest(module: &Path, args: &[&str], url: &str, extra: &[(&str, &str)], db_dir: Option<&Path>) -> WasiRunOutput {
    try_run_guest(module, args, url, extra, db_dir, true).unwrap_or_else(|err| panic!("runner failed: {err}"))
}

fn try_run_guest(
    module: &Path,
    args: &[&str],
    url: &str,
    extra: &[(&str, &str)],
    db_dir: Option<&Path>,
    writable: bool,
) -> Result<WasiRunOutput, WasiRunError> {
    let mut env = vec![("DATABASE_URL".to_owned(), url.to_owned())];
    env.extend(extra.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())));
    let options = WasiRunOptions {
        db_dir: db_dir.map(Path::to_path_buf),
        writable,
        env,
        stdout: Output::Capture,
        stderr: Output::Capture,
    };
    let args: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
    run_wasi_module_with_output(module, &args, options)
}

fn text(bytes: Option<&Vec<u8>>) -> String {
    bytes.map(|bytes| String::from_utf8_lossy(bytes).into_owned()).unwrap_or_default()
}

/// The one JSON line a guest wrote to `stream`.
fn json_line(bytes: Option<&Vec<u8>>) -> Value {
    let text = text(bytes);
    let line = text.lines().find(|line| line.starts_with('{')).unwrap_or_else(|| panic!("no JSON line in {text:?}"));
    serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}"))
}

/// Asserts `instance` is valid against `schemas/<stem>.schema.json`.
fn assert_schema(stem: &str, instance: &Value) {
    let path = repo_root().join("schemas").join(format!("{stem}.schema.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    let schema: Value = serde_json::from_str(&text).expect("schema JSON");
    let validator = jsonschema::validator_for(&schema).expect("valid schema");
    let errors: Vec<String> =
        validator.iter_errors(instance).map(|err| format!("{err} at {}", err.instance_path())).collect();
    assert!(errors.is_empty(), "{stem}: {errors:?}\n{instance:#}");
}

/// A SQLite file with a table of `rows` rows, written natively.
fn sample_database(dir: &Path, rows: i64) -> PathBuf {
    let path = dir.join("app.db");
    let conn = rusqlite::Connection::open(&path).expect("create database");
    conn.execute_batch("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL)").expect("schema");
    for id in 1..=rows {
        conn.execute("INSERT INTO items (id, name) VALUES (?1, ?2)", (id, format!("item {id}"))).expect("row");
    }
    path
}

fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

/// Name → status of every check in a report.
fn checks(report: &Value) -> Vec<(String, String)> {
    let mut checks: Vec<(String, String)> = report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .map(|check| {
            (check["name"].as_str().unwrap_or("").to_owned(), check["status"].as_str().unwrap_or("").to_owned())
        })
        .collect();
    checks.sort();
    checks
}

/// Both sides compare statuses: a loaded machine must not turn a slow probe into "degraded".
const TOLERANT: &[(&str, &str)] = &[("DB_HEALTH_DEGRADED_LATENCY", "30s")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasi_check_agrees_with_the_native_check() {
    let module = module_or_skip!("wasi_check_agrees_with_the_native_check");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = sample_database(dir.path(), 10);
    let url = sqlite_url(&path);

    let (wasi, first, again) = tokio::task::spawn_blocking({
        let (module, url) = (module.to_path_buf(), url.clone());
        move || {
            let started = Instant::now();
            let out = run_guest(&module, &["check"], &url, TOLERANT, None);
            let first = started.elapsed();
            let started = Instant::now();
            run_guest(&module, &["check"], &url, TOLERANT, None);
            (out, first, started.elapsed())
        }
    })
    .await
    .expect("runner thread");
    // A figure for the record, not an assertion: the first run includes compiling the module
    // (unless an earlier test of this process did), the second starts from the compiled module.
    eprintln!("wasi check: first run {first:?}, with the module compiled {again:?}");
    let wasi_report = json_line(wasi.stdout.as_ref());
    assert_eq!(wasi.exit_code, 0, "stderr: {}\nreport: {wasi_report:#}", text(wasi.stderr.as_ref()));
    assert_schema("health-report", &wasi_report);

    let mut vars = vec![("DATABASE_URL", url.as_str()), ("DB_ECHO", "false")];
    vars.extend_from_slice(TOLERANT);
    let config = DbConfig::from_vars(vars).expect("config");
    let manager = DbManager::connect(config).await.expect("native connect");
    let native_report = serde_json::to_value(&*manager.check_health(true).await).expect("report JSON");
    manager.close().await;
    assert_schema("health-report", &native_report);

    for field in ["status", "database_type"] {
        assert_eq!(
            wasi_report[field], native_report[field],
            "{field}\nwasi: {wasi_report:#}\nnative: {native_report:#}"
        );
    }
    // The same SQLite release line, not the same patch: the WASI host links the SQLite that
    // sea-orm-sync's rusqlite bundles (3.51.1), the native host a later patch (3.51.3) that fixes
    // a unix-VFS deadlock the WASI build cannot reach (it has one thread and no shared memory).
    let release_line = |report: &serde_json::Value| {
        report["version"].as_str().map(|version| version.split('.').take(2).collect::<Vec<_>>().join("."))
    };
    assert_eq!(
        release_line(&wasi_report),
        release_line(&native_report),
        "wasi: {wasi_report:#}\nnative: {native_report:#}"
    );
    assert_eq!(wasi_report["status"], "healthy");
    assert!(wasi_report["version"].as_str().is_some_and(|v| v.starts_with("3.")), "{wasi_report:#}");
    assert_eq!(checks(&wasi_report), checks(&native_report), "wasi: {wasi_report:#}\nnative: {native_report:#}");
}

/// A native writer holding `BEGIN EXCLUSIVE` through SQLite's `unix-dotfile` VFS. SQLite's
/// WASI build has no POSIX locks and locks with a `<database>.lock` directory; only a native
/// connection using the same dot-file protocol is visible to it (see host-wasi/README.md).
fn exclusive_writer(path: &Path) -> rusqlite::Connection {
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = rusqlite::Connection::open_with_flags_and_vfs(path, flags, c"unix-dotfile").expect("writer");
    conn.execute_batch("BEGIN EXCLUSIVE; INSERT INTO items (id, name) VALUES (1000, 'written while busy');")
        .expect("exclusive lock");
    conn
}

#[test]
fn a_busy_database_is_retried_and_then_reported() {
    let module = module_or_skip!("a_busy_database_is_retried_and_then_reported");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = sample_database(dir.path(), 3);
    let url = sqlite_url(&path);
    let writer = exclusive_writer(&path);
    assert!(dir.path().join("app.db.lock").exists(), "the writer holds the dot-file lock");

    let mut extra = FAST_RETRY.to_vec();
    extra.push(("DB_RETRY_MAX_ATTEMPTS", "3"));
    let out = run_guest(module, &["query", "SELECT count(*) AS n FROM items"], &url, &extra, None);
    let error = json_line(out.stderr.as_ref());
    assert_eq!(out.exit_code, 2, "{error:#}");
    assert_schema("error-body", &error);
    assert_eq!(error["error"], "busy", "{error:#}");
    assert_eq!(error["retry_count"], 3, "{error:#}");
    drop(writer);
}

#[test]
fn a_busy_database_is_read_once_the_writer_commits() {
    let module = module_or_skip!("a_busy_database_is_read_once_the_writer_commits");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = sample_database(dir.path(), 3);
    let url = sqlite_url(&path);
    let writer = exclusive_writer(&path);
    let hold = Duration::from_millis(400);
    let released = std::thread::spawn(move || {
        std::thread::sleep(hold);
        writer.execute_batch("COMMIT").expect("commit");
    });

    let mut extra = FAST_RETRY.to_vec();
    extra.push(("DB_RETRY_MAX_ATTEMPTS", "30"));
    let out = run_guest(module, &["query", "SELECT count(*) AS n FROM items"], &url, &extra, None);
    released.join().expect("writer thread");
    assert_eq!(out.exit_code, 0, "stderr: {}", text(out.stderr.as_ref()));
    let result = json_line(out.stdout.as_ref());
    // The guest waited for the writer: it sees the committed row, after the commit.
    assert_eq!(result["rows"][0]["n"], 4, "{result:#}");
}

#[test]
fn paths_outside_the_preopened_directory_are_unreachable() {
    let module = module_or_skip!("paths_outside_the_preopened_directory_are_unreachable");
    let root = tempfile::tempdir().expect("temp dir");
    let inside = root.path().join("inside");
    let outside = root.path().join("outside");
    std::fs::create_dir_all(&inside).expect("dir");
    std::fs::create_dir_all(&outside).expect("dir");
    let secret = sample_database(&outside, 1);

    // The runner refuses a database it would have to preopen more than `db_dir` for.
    let refused = try_run_guest(module, &["check"], &sqlite_url(&secret), &[], Some(&inside), true);
    match refused {
        Err(err @ WasiRunError::OutsideDbDir { .. }) => assert_ne!(err.exit_code(), 0),
        other => panic!("expected OutsideDbDir, got {other:?}"),
    }
    let dotdot = format!("sqlite://{}/../outside/app.db", inside.display());
    let refused = try_run_guest(module, &["check"], &dotdot, &[], Some(&inside), true);
    assert!(matches!(refused, Err(WasiRunError::OutsideDbDir { .. })), "{refused:?}");

    // A symlink inside pointing outside: the runner lets it through, the sandbox does not.
    let link = inside.join("link.db");
    std::os::unix::fs::symlink(&secret, &link).expect("symlink");
    let mut extra = FAST_RETRY.to_vec();
    extra.push(("DB_RETRY_MAX_ATTEMPTS", "1"));
    let out = run_guest(module, &["check"], &sqlite_url(&link), &extra, Some(&inside));
    let report = json_line(out.stdout.as_ref());
    assert_eq!(out.exit_code, 2, "{report:#}");
    assert_eq!(report["status"], "unhealthy", "{report:#}");
    assert_schema("health-report", &report);
    let error = json_line(out.stderr.as_ref());
    assert_schema("error-body", &error);
    eprintln!("symlink out of the sandbox: {error}");
    let out = run_guest(module, &["query", "SELECT name FROM items"], &sqlite_url(&link), &extra, Some(&inside));
    assert_ne!(out.exit_code, 0);
    assert!(text(out.stdout.as_ref()).is_empty(), "no row leaks: {}", text(out.stdout.as_ref()));
}

/// A read-only sandbox writes nothing, not even SQLite's lock directory, and still reads: the
/// host falls back to SQLite's `nolock=1` when the lock directory cannot be created. Both
/// journal modes: dbguard's own SQLite files are WAL.
#[test]
fn a_read_only_sandbox_reads_and_writes_nothing() {
    let module = module_or_skip!("a_read_only_sandbox_reads_and_writes_nothing");
    for journal_mode in ["delete", "wal"] {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = sample_database(dir.path(), 2);
        let conn = rusqlite::Connection::open(&path).expect("open");
        let mode: String =
            conn.query_row(&format!("PRAGMA journal_mode = {journal_mode}"), [], |row| row.get(0)).expect("mode");
        assert_eq!(mode, journal_mode);
        drop(conn);
        read_only_sandbox_case(module, dir.path(), &path, journal_mode);
    }
}

fn read_only_sandbox_case(module: &Path, dir: &Path, path: &Path, journal_mode: &str) {
    let listing = || -> Vec<(String, u64)> {
        let mut files: Vec<(String, u64)> = std::fs::read_dir(dir)
            .expect("list")
            .map(|entry| entry.expect("entry"))
            .map(|entry| (entry.file_name().to_string_lossy().into_owned(), entry.metadata().map_or(0, |m| m.len())))
            .collect();
        files.sort();
        files
    };
    let before = listing();
    let bytes = std::fs::read(path).expect("read");
    let url = sqlite_url(path);
    let mut env = FAST_RETRY.to_vec();
    env.extend_from_slice(TOLERANT);

    let check = try_run_guest(module, &["check"], &url, &env, None, false).expect("runner");
    assert_eq!(check.exit_code, 0, "{journal_mode}: {}", text(check.stdout.as_ref()));
    let report = json_line(check.stdout.as_ref());
    assert_schema("health-report", &report);
    assert_eq!(report["status"], "healthy", "{journal_mode}: {report:#}");
    assert_eq!(listing(), before, "{journal_mode}");

    let query =
        try_run_guest(module, &["query", "SELECT id FROM items ORDER BY id"], &url, &env, None, false).expect("runner");
    assert_eq!(query.exit_code, 0, "{journal_mode}: stderr: {}", text(query.stderr.as_ref()));
    assert_eq!(json_line(query.stdout.as_ref())["row_count"], 2, "{journal_mode}");
    assert_eq!(listing(), before, "{journal_mode}");
    assert_eq!(std::fs::read(path).expect("read"), bytes, "{journal_mode}");

    // Still read-only: a write is refused by SQLite, not by the sandbox alone.
    let write = try_run_guest(module, &["query", "DELETE FROM items"], &url, &env, None, false).expect("runner");
    assert_ne!(write.exit_code, 0, "{journal_mode}: a write must fail: {}", text(write.stdout.as_ref()));
    assert_eq!(std::fs::read(path).expect("read"), bytes, "{journal_mode}");
}
