//! WebAssembly plugins in the native host: loaded from a plugin directory, consulted by the
//! retry runner, hot-swapped when files change, refused without disturbing the active plugin,
//! joined to the health report, kept read-only, and controlled over the HTTP API.
//!
//! The guest plugins are built from `plugin-wasi/guest` for wasm32-wasip2 on first use, as the
//! plugin host's own tests do.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use dbguard::{DbManager, Idempotency};
use dbguard_core::health::CheckStatus;
use dbguard_core::{DbConfig, PluginStatus};
use dbguard_http::api::{self, AppState};
use dbguard_http::auth::Authenticator;
use dbguard_http::plugins::PluginRuntime;
use sea_orm::{ConnAcquireErr, ConnectionTrait, DbErr};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// A hang detector for waits on the directory watcher, not a timing claim.
const HANG_LIMIT: Duration = Duration::from_secs(60);

const SECRET: &str = "plugins-test-secret-0c4e7a9b2f61d853";

/// The component built from the guest crate `name`.
fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Replaces `dir/name` atomically, as a deployment should (write aside, then rename).
fn install(dir: &Path, name: &str, bytes: &[u8]) {
    let staging = dir.join(format!(".{name}.part"));
    std::fs::write(&staging, bytes).expect("write plugin");
    std::fs::rename(&staging, dir.join(name)).expect("rename plugin");
}

/// Bytes that are certainly not WebAssembly (no `\0asm` header).
fn random_bytes(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8 | 1
        })
        .collect()
}

fn config(db_path: &Path) -> DbConfig {
    let url = format!("sqlite://{}", db_path.display());
    let vars = vec![
        ("DATABASE_URL".to_owned(), url),
        ("DB_RETRY_BASE_DELAY".to_owned(), "10ms".to_owned()),
        ("DB_RETRY_MAX_DELAY".to_owned(), "50ms".to_owned()),
        ("DB_RETRY_MAX_ATTEMPTS".to_owned(), "5".to_owned()),
        ("DB_ECHO".to_owned(), "false".to_owned()),
        ("JWT_SECRET".to_owned(), SECRET.to_owned()),
    ];
    dbguard::env::config_from_vars(vars).expect("valid test configuration")
}

/// Asserts the `table:freshness` plugin's check is in `report` with `check`, and the report's
/// overall status is `overall`.
fn assert_freshness(report: &dbguard::HealthReport, check: CheckStatus, overall: dbguard::HealthStatus) {
    let found = report
        .checks
        .iter()
        .find(|c| c.name == "plugin:freshness.wasm/table:freshness")
        .unwrap_or_else(|| panic!("the plugin's check is in the report: {:?}", report.checks));
    assert_eq!(found.status, check, "{found:?}");
    assert_eq!(report.status, overall, "{:?}", report.checks);
}

/// Polls `done` until it holds; panics after [`HANG_LIMIT`].
async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + HANG_LIMIT;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn only_retry_policy(plugins: &[PluginStatus]) -> &PluginStatus {
    let retry: Vec<&PluginStatus> = plugins.iter().filter(|p| p.world == "retry-policy").collect();
    assert_eq!(retry.len(), 1, "exactly one retry policy is listed: {plugins:?}");
    retry[0]
}

/// One guarded call whose first attempt fails with a retryable error (the pool timing out).
async fn call_with_one_retry(manager: &DbManager) {
    let attempts = Arc::new(AtomicU32::new(0));
    let seen = attempts.clone();
    manager
        .run(Idempotency::Idempotent, move |db| {
            let attempt = seen.fetch_add(1, Ordering::SeqCst);
            async move {
                if attempt == 0 {
                    return Err(DbErr::ConnectionAcquire(ConnAcquireErr::Timeout));
                }
                db.execute_unprepared("SELECT 1").await.map(|_| ())
            }
        })
        .await
        .expect("the retry succeeds");
    assert_eq!(attempts.load(Ordering::SeqCst), 2, "one failure, one retry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_plugin_is_asked_swapped_and_kept_when_a_bad_file_replaces_it() {
    let temp = tempfile::tempdir().expect("temp dir");
    let plugin_dir = temp.path().join("plugins");
    std::fs::create_dir(&plugin_dir).expect("plugin dir");
    let decorrelated = dbguard_tests::guest!("decorrelated-retry");
    install(&plugin_dir, "retry.wasm", &decorrelated);

    let manager = DbManager::connect(config(&temp.path().join("app.db"))).await.expect("manager");
    let runtime = PluginRuntime::start(manager.clone(), &plugin_dir).await.expect("runtime");

    let listed = runtime.plugins();
    let active = only_retry_policy(&listed);
    assert_eq!(active.name, "retry.wasm");
    assert_eq!(active.content_hash, sha256_hex(&decorrelated));
    assert_eq!(active.state, "active");
    assert!(runtime.refused().is_empty(), "nothing refused: {:?}", runtime.refused());

    // The runner asks the plugin about the failure.
    call_with_one_retry(&manager).await;
    let calls = runtime.retry_policy().stats().expect("a plugin is active").calls;
    assert!(calls > 0, "the retry runner consulted the plugin");
    // The status page lists it too.
    let status = manager.status().await;
    assert_eq!(only_retry_policy(&status.plugins).content_hash, sha256_hex(&decorrelated));

    // Replacing the file hot-swaps the policy.
    let fixed = dbguard_tests::guest!("fixture-fixed-delay-a");
    install(&plugin_dir, "retry.wasm", &fixed);
    let fixed_hash = sha256_hex(&fixed);
    wait_for("the watcher to swap in the new policy", || {
        runtime.plugins().iter().any(|p| p.world == "retry-policy" && p.content_hash == fixed_hash)
    })
    .await;
    call_with_one_retry(&manager).await;
    let calls_after_swap = runtime.retry_policy().stats().expect("a plugin is active").calls;
    assert!(calls_after_swap > 0, "the new plugin is consulted (its counters start afresh)");

    // A broken file is refused with a typed reason; the previous version stays active.
    install(&plugin_dir, "retry.wasm", &random_bytes(4096));
    wait_for("the watcher to refuse the broken file", || runtime.refused().iter().any(|r| r.file == "retry.wasm"))
        .await;
    let refused = runtime.refused();
    assert_eq!(refused[0].error, "not_wasm", "typed reason: {refused:?}");
    assert_eq!(only_retry_policy(&runtime.plugins()).content_hash, fixed_hash, "the previous plugin stays active");
    call_with_one_retry(&manager).await;
    let calls_after_refusal = runtime.retry_policy().stats().expect("a plugin is active").calls;
    assert!(calls_after_refusal > calls_after_swap, "the previous plugin still answers");

    // An explicit reload reports the same refusal and keeps the same plugin.
    let report = runtime.reload().await;
    assert_eq!(only_retry_policy(&report.plugins).content_hash, fixed_hash);
    assert!(report.refused.iter().any(|r| r.file == "retry.wasm" && r.error == "not_wasm"), "{report:?}");

    // Removing the file unloads the policy: the built-in one answers again.
    std::fs::remove_file(plugin_dir.join("retry.wasm")).expect("remove plugin");
    wait_for("the watcher to unload the policy", || runtime.plugins().is_empty()).await;
    assert!(runtime.retry_policy().stats().is_none());
    call_with_one_retry(&manager).await;
    manager.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_plugin_joins_the_report_and_cannot_write() {
    let temp = tempfile::tempdir().expect("temp dir");
    let plugin_dir = temp.path().join("plugins");
    std::fs::create_dir(&plugin_dir).expect("plugin dir");
    let manager = DbManager::connect(config(&temp.path().join("app.db"))).await.expect("manager");
    manager
        .run(Idempotency::Idempotent, |db| async move {
            db.execute_unprepared(
                "CREATE TABLE events (id INTEGER PRIMARY KEY, created_at INTEGER NOT NULL); \
                 INSERT INTO events (created_at) VALUES (CAST(strftime('%s', 'now') AS INTEGER));",
            )
            .await
            .map(|_| ())
        })
        .await
        .expect("schema");
    let freshness = dbguard_tests::guest!("table-freshness");
    install(&plugin_dir, "freshness.wasm", &freshness);
    // A file of neither world is refused and skipped; the rest still loads.
    install(&plugin_dir, "garbage.wasm", &random_bytes(512));

    let runtime = PluginRuntime::start(manager.clone(), &plugin_dir).await.expect("runtime");
    let listed = runtime.plugins();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].world, "health-check");
    assert_eq!(listed[0].content_hash, sha256_hex(&freshness));
    assert!(runtime.refused().iter().any(|r| r.file == "garbage.wasm"), "{:?}", runtime.refused());

    let report = manager.check_health(true).await;
    assert_freshness(&report, CheckStatus::Pass, dbguard::HealthStatus::Healthy);
    assert!(runtime.plugins()[0].calls > 0, "the health service called the plugin");

    // The plugin's only way to the database refuses writes, and the database says so.
    let query = runtime.query_fn();
    let refused = tokio::task::spawn_blocking(move || {
        query.query("INSERT INTO events (created_at) VALUES (1)", &[], Duration::from_secs(2))
    })
    .await
    .expect("query thread");
    let error = refused.expect_err("an INSERT through the plugin query is refused");
    assert!(matches!(&error, dbguard::plugins::QueryFailure::Failed(message) if !message.is_empty()), "{error:?}");
    let query = runtime.query_fn();
    let rows =
        tokio::task::spawn_blocking(move || query.query("SELECT count(*) FROM events", &[], Duration::from_secs(2)))
            .await
            .expect("query thread")
            .expect("reads are allowed");
    assert_eq!(rows.rows, vec![vec![dbguard_http::plugins::SqlValue::Integer(1)]], "nothing was written");

    // With the table gone the check fails, non-required: the report degrades.
    manager
        .run(Idempotency::Idempotent, |db| async move { db.execute_unprepared("DROP TABLE events").await.map(|_| ()) })
        .await
        .expect("drop");
    let report = manager.check_health(true).await;
    assert_freshness(&report, CheckStatus::Fail, dbguard::HealthStatus::Degraded);
    manager.close().await;
}

async fn send(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.expect("response");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_lists_and_reloads_plugins_with_scopes() {
    let temp = tempfile::tempdir().expect("temp dir");
    let plugin_dir = temp.path().join("plugins");
    std::fs::create_dir(&plugin_dir).expect("plugin dir");
    let decorrelated = dbguard_tests::guest!("decorrelated-retry");
    install(&plugin_dir, "retry.wasm", &decorrelated);
    let config = config(&temp.path().join("app.db"));
    let auth = Authenticator::from_config(&config.service.auth, config.profile).expect("authenticator");
    let admin = auth.mint("tester", "db:read db:admin", Duration::from_secs(600)).expect("admin token");
    let reader = auth.mint("reader", "db:read", Duration::from_secs(600)).expect("reader token");
    let manager = DbManager::connect(config).await.expect("manager");
    let runtime = PluginRuntime::start(manager.clone(), &plugin_dir).await.expect("runtime");
    let state = AppState::new(manager.clone(), auth).with_plugins(Arc::new(runtime.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(api::serve(listener, state, async move {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("client");
    let list = format!("{base}/api/plugins");
    let reload = format!("{base}/api/plugins/reload");

    let (status, body) = send(client.get(&list)).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["success"], false);

    let (status, body) = send(client.get(&list).bearer_auth(&reader)).await;
    assert_eq!(status, 200, "{body}");
    let plugins = body["data"].as_array().expect("a list");
    assert_eq!(plugins.len(), 1, "{body}");
    assert_eq!(plugins[0]["name"], "retry.wasm");
    assert_eq!(plugins[0]["world"], "retry-policy");
    assert_eq!(plugins[0]["content_hash"], sha256_hex(&decorrelated));
    assert_eq!(plugins[0]["state"], "active");
    for field in ["version", "loaded_at", "calls", "faults"] {
        assert!(plugins[0].get(field).is_some(), "{field} missing: {body}");
    }

    let (status, body) = send(client.post(&reload)).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = send(client.post(&reload).bearer_auth(&reader)).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "forbidden");

    // Swap the file and reload explicitly: the answer shows the new plugin at once.
    let fixed = dbguard_tests::guest!("fixture-fixed-delay-b");
    install(&plugin_dir, "retry.wasm", &fixed);
    let (status, body) = send(client.post(&reload).bearer_auth(&admin)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["plugins"][0]["content_hash"], sha256_hex(&fixed), "{body}");
    assert_eq!(body["data"]["refused"], Value::Array(Vec::new()), "{body}");

    let _ = stop.send(());
    server.await.expect("server task").expect("server");
    drop(runtime);
    manager.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_without_a_plugin_runtime_lists_nothing_and_refuses_reload() {
    let temp = tempfile::tempdir().expect("temp dir");
    let config = config(&temp.path().join("app.db"));
    let auth = Authenticator::from_config(&config.service.auth, config.profile).expect("authenticator");
    let admin = auth.mint("tester", "db:read db:admin", Duration::from_secs(600)).expect("admin token");
    let manager = DbManager::connect(config).await.expect("manager");
    let state = AppState::new(manager.clone(), auth);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let server = tokio::spawn(api::serve(listener, state, std::future::pending()));
    let client = reqwest::Client::new();
    let (status, body) = send(client.get(format!("{base}/api/plugins")).bearer_auth(&admin)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"], Value::Array(Vec::new()));
    let (status, body) = send(client.post(format!("{base}/api/plugins/reload")).bearer_auth(&admin)).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"], "plugins_disabled");
    server.abort();
    manager.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_plugin_runs_on_postgresql_through_the_read_only_login() {
    let test = "plugin_health_check_postgres";
    let Some(db) = dbguard_tests::TestDb::create_or_skip(test).await else { return };
    let temp = tempfile::tempdir().expect("temp dir");
    let plugin_dir = temp.path().join("plugins");
    std::fs::create_dir(&plugin_dir).expect("plugin dir");
    let mut admin = db.connect().await.expect("admin connection");
    sqlx::raw_sql("CREATE TABLE events (id serial PRIMARY KEY, created_at timestamptz NOT NULL DEFAULT now()); INSERT INTO events DEFAULT VALUES")
        .execute(&mut admin)
        .await
        .expect("schema");
    // The plugin's queries run as a least-privilege login, as the test endpoint's do.
    let reader = db.create_read_only_role("plugin_ro").await.expect("read-only role");
    let vars = vec![
        ("DATABASE_URL".to_owned(), db.url().to_owned()),
        ("DB_TEST_URL".to_owned(), reader.url().to_owned()),
        ("DB_ECHO".to_owned(), "false".to_owned()),
        ("DB_HEALTH_DEGRADED_LATENCY".to_owned(), "10s".to_owned()),
        ("JWT_SECRET".to_owned(), SECRET.to_owned()),
    ];
    let manager =
        DbManager::connect(dbguard::env::config_from_vars(vars).expect("valid configuration")).await.expect("manager");
    install(&plugin_dir, "freshness.wasm", &dbguard_tests::guest!("table-freshness"));
    let runtime = PluginRuntime::start(manager.clone(), &plugin_dir).await.expect("runtime");
    assert_eq!(runtime.plugins().len(), 1, "{:?}", runtime.refused());

    let report = manager.check_health(true).await;
    assert_freshness(&report, CheckStatus::Pass, dbguard::HealthStatus::Healthy);

    // Writes through the plugin's query are refused by the server; the row count is unchanged.
    let query = runtime.query_fn();
    let refused = tokio::task::spawn_blocking(move || {
        query.query("INSERT INTO events DEFAULT VALUES", &[], Duration::from_secs(2))
    })
    .await
    .expect("query thread");
    assert!(refused.is_err(), "an INSERT through the plugin query is refused: {refused:?}");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&mut admin).await.expect("count");
    assert_eq!(rows, 1, "nothing was written");

    sqlx::raw_sql("DROP TABLE events").execute(&mut admin).await.expect("drop");
    let report = manager.check_health(true).await;
    assert_freshness(&report, CheckStatus::Fail, dbguard::HealthStatus::Degraded);
    manager.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_policy_that_sleeps_on_real_failures_faults_instead_of_panicking_the_call() {
    let temp = tempfile::tempdir().expect("temp dir");
    let plugin_dir = temp.path().join("plugins");
    std::fs::create_dir(&plugin_dir).expect("plugin dir");
    install(&plugin_dir, "sleepy.wasm", &dbguard_tests::guest!("fixture-sleep-on-failure"));
    let manager = DbManager::connect(config(&temp.path().join("app.db"))).await.expect("manager");
    let runtime = PluginRuntime::start(manager.clone(), &plugin_dir).await.expect("runtime");
    assert_eq!(only_retry_policy(&runtime.plugins()).state, "active", "it passes the gate");

    // A real failure carries the driver's code: the plugin sleeps in WASI, on the runner's
    // async thread. That used to panic ("Cannot start a runtime from within a runtime").
    for _ in 0..3 {
        let error = manager
            .run(Idempotency::Idempotent, |db| async move { db.execute_unprepared("SELEC 1").await.map(|_| ()) })
            .await
            .expect_err("bad SQL fails");
        assert_eq!(error.class(), dbguard_core::ErrorClass::Syntax, "{error}");
    }
    let stats = runtime.retry_policy().stats().expect("loaded");
    assert_eq!(stats.state.as_str(), "quarantined", "{stats:?}");
    assert!(stats.last_fault.as_deref().is_some_and(|fault| fault.contains("may not sleep")), "{stats:?}");
    manager.close().await;
}
