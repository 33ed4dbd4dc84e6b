//! The CLI's commands as a user runs them, one process each: `check` exits by health (the
//! degraded case here; healthy and unhealthy are in `api_main_job.rs`), `info` never shows the
//! password, `token` mints a token the API accepts, and `schemas` writes what `schemas/` holds.

// The HTTP API tests' in-process server, token minting and schema checks.
#[path = "../../http/tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use dbguard_tests::TestDb;
use serde_json::Value;
use sqlx::Connection;

/// `dbguard <args>` in an empty directory (no `.env`), with only `vars` configured.
fn dbguard(dir: &Path, args: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dbguard"));
    command.args(args).current_dir(dir).env_clear();
    for (name, value) in vars {
        command.env(name, value);
    }
    command.output().expect("run dbguard")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_exits_1_when_the_database_is_degraded() {
    let Some(db) = TestDb::create_or_skip("check_exits_1_when_degraded").await else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    // Read-only sessions: the server answers, but writes would fail. That is degraded.
    let mut admin = sqlx::PgConnection::connect(db.admin_url()).await.expect("admin connection");
    let read_only = format!("ALTER DATABASE \"{}\" SET default_transaction_read_only = on", db.name());
    sqlx::raw_sql(sqlx::AssertSqlSafe(read_only)).execute(&mut admin).await.expect("make the database read-only");
    // The slow-answer threshold is raised so only the read-only check can make it degraded.
    let vars = [("DATABASE_URL", db.url()), ("DB_HEALTH_DEGRADED_LATENCY", "30s"), ("DB_ECHO", "false")];
    let output = dbguard(dir.path(), &["check", "--json"], &vars);
    assert_eq!(output.status.code(), Some(1), "stdout: {} stderr: {}", stdout(&output), stderr(&output));
    let report: Value = serde_json::from_slice(&output.stdout).expect("JSON report");
    assert_eq!(report["status"], "degraded", "{report:#}");
    assert!(report["message"].as_str().is_some_and(|m| m.contains("database:writable")), "{report:#}");

    let plain = dbguard(dir.path(), &["check"], &vars);
    assert_eq!(plain.status.code(), Some(1));
    assert!(stdout(&plain).starts_with("degraded: "), "{}", stdout(&plain));
}

/// Runs `dbguard check --json` on `database_url`, asserts that it exits 2 with an unhealthy
/// report, and returns the report's message.
fn unhealthy_check_message(database_url: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let vars = [("DATABASE_URL", database_url), ("DB_ECHO", "false")];
    let output = dbguard(dir.path(), &["check", "--json"], &vars);
    assert_eq!(output.status.code(), Some(2), "stdout: {} stderr: {}", stdout(&output), stderr(&output));
    let report: Value = serde_json::from_slice(&output.stdout).expect("JSON report");
    assert_eq!(report["status"], "unhealthy", "{report:#}");
    report["message"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn check_names_a_refused_connection_instead_of_a_timeout() {
    // Nothing listens there: every connect is refused at once. The pool alone would retry
    // until the probe timed out and say only "timed out after 5000 ms".
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let message = unhealthy_check_message(&format!("postgres://postgres@127.0.0.1:{closed_port}/app"));
    assert!(message.contains("connection_refused") && !message.contains("timed out"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_a_database_that_does_not_exist() {
    let Some(db) = TestDb::create_or_skip("check_names_a_missing_database").await else { return };
    // The server answers, but the database the URL names is not there (SQLSTATE 3D000).
    let message = unhealthy_check_message(&dbguard_tests::with_database(db.url(), &format!("{}_missing", db.name())));
    assert!(message.contains("database_missing") && message.contains("does not exist"), "{message}");
}

#[test]
fn info_prints_the_connection_without_the_password() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = "postgres://orders_app:Pw-1s-N0t-Sh0wn@db.internal:6432/orders";
    let output = dbguard(dir.path(), &["info"], &[("DATABASE_URL", url), ("DB_POOL_SIZE", "7")]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let info: Value = serde_json::from_slice(&output.stdout).expect("JSON info");
    assert_eq!(info["database_type"], "postgresql", "{info:#}");
    assert_eq!(info["host"], "db.internal");
    assert_eq!(info["port"], 6432);
    assert_eq!(info["database"], "orders");
    assert_eq!(info["user"], "orders_app");
    assert_eq!(info["pool_size"], 7);
    assert_eq!(info["max_overflow"], 10, "the development default");
    for text in [stdout(&output), stderr(&output)] {
        assert!(!text.contains("Pw-1s-N0t-Sh0wn"), "the password was printed: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_mints_a_token_the_api_accepts_for_its_scope() {
    let Some(db) = TestDb::create_or_skip("token_mints_a_token").await else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let vars = [("JWT_SECRET", support::SECRET), ("DATABASE_URL", db.url())];
    let output = dbguard(dir.path(), &["token", "--scope", "db:read", "--ttl", "1h"], &vars);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let token = stdout(&output).trim().to_owned();

    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.validate_aud = false;
    let key = jsonwebtoken::DecodingKey::from_secret(support::SECRET.as_bytes());
    let claims = jsonwebtoken::decode::<Value>(&token, &key, &validation).expect("a valid HS256 token").claims;
    assert_eq!(claims["scope"], "db:read", "{claims:#}");
    let lifetime = claims["exp"].as_u64().zip(claims["iat"].as_u64()).map(|(exp, iat)| exp - iat);
    assert_eq!(lifetime, Some(3600), "--ttl 1h: {claims:#}");

    // The API with the same secret accepts it for reads and refuses it for admin routes.
    let server = support::Server::start(&[("DATABASE_URL", db.url())]).await;
    let info = server.get("/api/database/info", Some(&token)).await;
    assert_eq!(info.0, 200, "{:#}", info.1);
    support::assert_error(&server.post("/api/database/reconnect", &token, serde_json::json!({})).await, 403);
    server.stop().await;

    let without_secret = dbguard(dir.path(), &["token", "--scope", "db:read"], &[("DATABASE_URL", db.url())]);
    assert_eq!(without_secret.status.code(), Some(78), "a token for a generated secret would verify nowhere");
    assert!(stderr(&without_secret).contains("JWT_SECRET"), "{}", stderr(&without_secret));
}

/// The files of `dir` by name (not its subdirectories, such as `schemas/clients`).
fn files_in(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .expect("read directory")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.is_file())
        .map(|path| {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
            (name, std::fs::read_to_string(&path).expect("read file"))
        })
        .collect()
}

#[test]
fn schemas_writes_exactly_the_committed_schema_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let output = dbguard(dir.path(), &["schemas", "--out", out.to_str().expect("utf-8 path")], &[]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let written = files_in(&out);
    assert!(written.contains_key("openapi.json"), "{:?}", written.keys());
    let committed: BTreeMap<String, String> =
        files_in(&support::schemas_dir()).into_iter().filter(|(name, _)| name.ends_with(".json")).collect();
    assert_eq!(written.keys().collect::<Vec<_>>(), committed.keys().collect::<Vec<_>>());
    for (name, text) in &written {
        assert!(committed.get(name) == Some(text), "{name} differs from the committed schemas/{name}");
    }
}
