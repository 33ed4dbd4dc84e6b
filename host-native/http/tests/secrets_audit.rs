//! The secrets audit: a sweep over every route with good and bad tokens, forced health,
//! reconnect, failing and refused test queries, failed connects and configuration errors —
//! against a PostgreSQL login with a password that works, one whose database does not exist,
//! and a password-bearing URL whose port is closed — all logged at TRACE into a buffer.
//! Neither the database passwords nor the JWT secret (nor their base64) may appear in any
//! response body or header, error text, `Debug` output or log line.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use dbguard_http::auth::Authenticator;
use dbguard_tests::TestDb;
use serde_json::{Value, json};
use support::{Server, base64_standard, base64url, hmac_token, now_secs};

/// The JWT secret of every server in the sweep.
const JWT_SECRET: &str = "audit-jwt-Qm7vX2pL9sK4wR8tY1nB6cF3";
/// The password in a URL whose port is closed: every connect fails.
const CLOSED_PORT_PASSWORD: &str = "Cl0sedPortPw-5e1a9c";

/// Everything the subscriber writes, from TRACE up, for the whole test binary.
fn logs() -> Arc<Mutex<Vec<u8>>> {
    static BUFFER: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    BUFFER
        .get_or_init(|| {
            let buffer = Arc::new(Mutex::new(Vec::new()));
            let writer = Capture(buffer.clone());
            // Installed before any server starts, so support's own subscriber stands down;
            // `try_init` also bridges `log` records into it.
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new("trace"))
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .try_init()
                .expect("install the TRACE subscriber");
            buffer
        })
        .clone()
}

#[derive(Clone)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn log_len() -> usize {
    logs().lock().unwrap_or_else(|p| p.into_inner()).len()
}

fn logs_since(offset: usize) -> String {
    let buffer = logs();
    let buffer = buffer.lock().unwrap_or_else(|p| p.into_inner());
    String::from_utf8_lossy(buffer.get(offset..).unwrap_or_default()).into_owned()
}

/// What the sweep saw, item by item, for the report of a leak.
#[derive(Default)]
struct Seen(Vec<(String, String)>);

impl Seen {
    fn push(&mut self, what: impl Into<String>, text: impl Into<String>) {
        self.0.push((what.into(), text.into()));
    }
}

/// Sends one request and records its status, headers and body.
async fn record(seen: &mut Seen, what: &str, request: reqwest::RequestBuilder) -> u16 {
    let response = request.send().await.expect("response");
    let status = response.status().as_u16();
    let headers = format!("{:?}", response.headers());
    let body = response.text().await.expect("body");
    seen.push(what, format!("{status} {headers} {body}"));
    status
}

/// Like [`record`], for the dashboard's event stream, which does not end: what arrives within a
/// second (the history event comes at once).
async fn record_stream(seen: &mut Seen, what: &str, request: reqwest::RequestBuilder) {
    let mut response = request.send().await.expect("response");
    let status = response.status().as_u16();
    let headers = format!("{:?}", response.headers());
    let mut body = Vec::new();
    let until = tokio::time::Instant::now() + Duration::from_secs(1);
    while let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(until, response.chunk()).await {
        body.extend_from_slice(&chunk);
    }
    seen.push(what, format!("{status} {headers} {}", String::from_utf8_lossy(&body)));
}

/// Every route with good, bad and no tokens; forced health; reconnect; test queries that
/// succeed, fail, are refused and time out.
async fn sweep(server: &Server, seen: &mut Seen, label: &str, database_password: &str) {
    let claims = |changes: Value| {
        let mut claims = json!({ "sub": "audit", "exp": now_secs() + 600, "scope": "db:read db:admin" });
        if let (Some(claims), Some(changes)) = (claims.as_object_mut(), changes.as_object()) {
            claims.extend(changes.clone());
        }
        claims
    };
    let hs = |changes: Value| hmac_token(jsonwebtoken::Algorithm::HS256, JWT_SECRET.as_bytes(), &claims(changes));
    let tokens: Vec<(&str, String)> = vec![
        ("admin", server.admin.clone()),
        ("reader", server.reader.clone()),
        ("expired", hs(json!({ "exp": now_secs() - 3600 }))),
        ("premature", hs(json!({ "nbf": now_secs() + 3600 }))),
        ("no scope", hs(json!({ "scope": "" }))),
        (
            "wrong secret",
            hmac_token(jsonwebtoken::Algorithm::HS256, b"not-the-audit-secret-but-32-bytes!", &claims(json!({}))),
        ),
        ("HS512", hmac_token(jsonwebtoken::Algorithm::HS512, JWT_SECRET.as_bytes(), &claims(json!({})))),
        (
            "alg none",
            format!("{}.{}.", base64url(br#"{"alg":"none"}"#), base64url(claims(json!({})).to_string().as_bytes())),
        ),
        ("garbage", "x.y.z".to_owned()),
        // The secrets themselves, sent as tokens: the server must not echo or log the header.
        ("the JWT secret as a token", JWT_SECRET.to_owned()),
        ("the password as a token", database_password.to_owned()),
    ];
    let gets = [
        "/api/database/health",
        "/api/database/health?force=true",
        "/api/database/health?force=maybe",
        "/api/database/info",
        "/api/database/status",
        "/api/database/queries",
        "/api/plugins",
        "/livez",
        "/readyz",
        "/metrics",
        "/api/openapi.json",
        "/dashboard",
        "/dashboard/app.js",
        "/api/nothing-here",
    ];
    for path in gets {
        record(seen, &format!("{label} GET {path} without a token"), server.client.get(server.url(path))).await;
        for (name, token) in &tokens {
            let request = server.client.get(server.url(path)).bearer_auth(token);
            record(seen, &format!("{label} GET {path} with {name}"), request).await;
        }
    }
    for (name, token) in &tokens {
        let request = server.client.post(server.url("/api/database/reconnect")).bearer_auth(token);
        record(seen, &format!("{label} POST reconnect with {name}"), request).await;
        let request = server.client.post(server.url("/api/plugins/reload")).bearer_auth(token);
        record(seen, &format!("{label} POST plugin reload with {name}"), request).await;
        let request = server.client.delete(server.url("/api/database/health")).bearer_auth(token);
        record(seen, &format!("{label} DELETE health with {name}"), request).await;
    }
    let queries = [
        json!({ "query": "SELECT 1 AS one" }),
        json!({ "query": "SELECT count(*) AS n FROM audit_items" }),
        json!({ "query": "SELECT * FROM no_such_table" }),
        json!({ "query": "SELEC broken" }),
        json!({ "query": "SELECT 1/0" }),
        json!({ "query": "SELECT current_setting('no.such_setting')" }),
        json!({ "query": "SELECT current_user, session_user, inet_server_port()" }),
        json!({ "query": "INSERT INTO audit_items (name) VALUES ('x')" }),
        json!({ "query": "SELECT 1; SELECT 2" }),
        json!({ "query": "SELECT pg_sleep(3)", "timeout_ms": 200 }),
        json!({ "query": "SELECT $1::int", "params": ["not a number"] }),
    ];
    for body in &queries {
        for (name, token) in tokens.iter().take(3) {
            let request = server.client.post(server.url("/api/database/test")).bearer_auth(token).json(body);
            record(seen, &format!("{label} POST test {body} with {name}"), request).await;
        }
    }
    let not_json = server
        .client
        .post(server.url("/api/database/test"))
        .bearer_auth(&server.admin)
        .header("content-type", "application/json")
        .body("{\"query\":");
    record(seen, &format!("{label} POST test with a broken body"), not_json).await;

    // The dashboard's feed last, so that its history holds the samples of everything above.
    let events = "/api/dashboard/events";
    record_stream(seen, &format!("{label} GET {events} without a token"), server.client.get(server.url(events))).await;
    for (name, token) in &tokens {
        let request = server.client.get(server.url(events)).bearer_auth(token);
        record_stream(seen, &format!("{label} GET {events} with {name}"), request).await;
    }
    let opened = format!("{label} GET {events} with");
    assert!(
        seen.0.iter().any(|(what, text)| what.starts_with(&opened) && text.contains("event: history")),
        "no token opened the dashboard feed, so the sweep saw none of its samples"
    );
    let manager = &server.manager;
    seen.push(format!("{label} manager Debug"), format!("{manager:?}"));
    seen.push(format!("{label} config Debug"), format!("{:?}", manager.config()));
    seen.push(format!("{label} config URL"), format!("{} {:?}", manager.config().url, manager.config().test_url));
    seen.push(format!("{label} info"), serde_json::to_string(&manager.info()).expect("serializes"));
    seen.push(format!("{label} status"), serde_json::to_string(&manager.status().await).expect("serializes"));
    let health = manager.check_health(true).await;
    seen.push(format!("{label} health"), serde_json::to_string(&*health).expect("serializes"));
    match manager.reconnect().await {
        Ok(report) => seen.push(format!("{label} reconnect"), serde_json::to_string(&*report).expect("serializes")),
        Err(err) => seen.push(format!("{label} reconnect error"), format!("{err} {err:?}")),
    }
    use sea_orm::ConnectionTrait;
    let failed = manager
        .run(dbguard::Idempotency::Idempotent, |db| async move { db.execute_unprepared("SELECT * FROM nowhere").await })
        .await;
    if let Err(err) = failed {
        seen.push(format!("{label} run error"), format!("{err} {err:?}"));
    }
    seen.push(
        format!("{label} status after errors"),
        serde_json::to_string(&manager.status().await).expect("serializes"),
    );
    let auth = Authenticator::from_config(&manager.config().service.auth, manager.config().profile).expect("auth");
    seen.push(format!("{label} authenticator Debug"), format!("{auth:?}"));
}

/// Configuration errors for environments that carry the secrets.
fn config_errors(seen: &mut Seen, url: &str, password: &str) {
    let bad: Vec<Vec<(String, String)>> = vec![
        vec![("DATABASE_URL".into(), url.replace("postgres://", "mysql://"))],
        vec![("DATABASE_URL".into(), format!("postgres://app:{password}@db:notaport/x"))],
        vec![("DATABASE_URL".into(), format!("postgres://app:{password}@db/x?sslmode=sometimes"))],
        vec![("DATABASE_URL".into(), format!("postgres://db/x?password={password}&sslmode=bogus"))],
        vec![
            ("DATABASE_URL".into(), url.into()),
            ("DB_TEST_URL".into(), format!("postgres://ro:{password}@db:99999/x")),
        ],
        vec![("DATABASE_URL".into(), url.into()), ("DB_TEST_URL".into(), format!("sqlite://{password}.db"))],
        vec![
            ("DATABASE_URL".into(), url.into()),
            ("JWT_SECRET".into(), JWT_SECRET.into()),
            ("DB_POOL_SIZE".into(), "x".into()),
        ],
        vec![
            ("DATABASE_URL".into(), url.into()),
            ("JWT_SECRET".into(), JWT_SECRET.into()),
            ("JWT_PUBLIC_KEY_FILE".into(), "/k.pem".into()),
        ],
        vec![("DATABASE_URL".into(), url.into()), ("JWT_SECRET".into(), JWT_SECRET[..20].into())],
        vec![("DATABASE_URL".into(), url.into()), ("DATABASE_URL_FILE".into(), "/run/secrets/url".into())],
        vec![("DATABASE_URL".into(), url.into()), ("JWT_SECRET_FILE".into(), "/nonexistent/jwt".into())],
        vec![("DBGUARD_ENV".into(), "production".into()), ("DATABASE_URL".into(), format!("{url}?sslmode=disable"))],
    ];
    for vars in bad {
        let names: Vec<String> = vars.iter().map(|(name, _)| name.clone()).collect();
        match dbguard::env::config_from_vars(vars) {
            Ok(config) => seen.push(format!("config {names:?} (accepted)"), format!("{config:?}")),
            Err(err) => seen.push(format!("config error {names:?}"), format!("{err} {err:?}")),
        }
    }
}

/// A port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// The ways each secret could show up: as is, and base64-encoded.
fn forms(secret: &str) -> Vec<String> {
    vec![secret.to_owned(), base64_standard(secret.as_bytes()), base64url(secret.as_bytes())]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_appears_anywhere_at_trace() {
    let _ = logs();
    let mut seen = Seen::default();
    let mut passwords = vec![CLOSED_PORT_PASSWORD.to_owned()];
    // Where the audited log starts: after the harness's own CREATE ROLE … PASSWORD statement.
    let mut logs_from = None;

    // A real login with a password, and the same login on a database that does not exist.
    let db = TestDb::create_or_skip("secrets_audit").await;
    if let Some(db) = &db {
        let role = db.create_role_with_password("audit").await.expect("role with a password");
        passwords.push(role.password().to_owned());
        logs_from = Some(log_len());
        let url = role.url().to_owned();
        let server = Server::start(&[
            ("DATABASE_URL", &url),
            ("DB_TEST_URL", &url),
            ("DB_ECHO", "true"),
            ("JWT_SECRET", JWT_SECRET),
        ])
        .await;
        use sea_orm::ConnectionTrait;
        server
            .manager
            .connection()
            .execute_unprepared("CREATE TABLE audit_items (id serial PRIMARY KEY, name text); INSERT INTO audit_items (name) VALUES ('a')")
            .await
            .expect("seed through the password login");
        sweep(&server, &mut seen, "postgres", role.password()).await;
        server.stop().await;

        let missing_db = url.replace(db.name(), "dbguard_audit_no_such_database");
        let server = Server::start(&[
            ("DATABASE_URL", &missing_db),
            ("DB_ECHO", "true"),
            ("JWT_SECRET", JWT_SECRET),
            ("DB_POOL_TIMEOUT", "2s"),
            ("DB_HEALTH_TIMEOUT", "2s"),
        ])
        .await;
        sweep(&server, &mut seen, "postgres, missing database", role.password()).await;
        server.stop().await;
        let failed = dbguard::DbManager::connect(
            dbguard::env::config_from_vars([
                ("DATABASE_URL".to_owned(), missing_db.clone()),
                ("DB_RETRY_MAX_ATTEMPTS".to_owned(), "0".to_owned()),
            ])
            .expect("valid"),
        )
        .await
        .expect_err("the database does not exist");
        seen.push("connect error, missing database", format!("{failed} {failed:?}"));
        config_errors(&mut seen, &url, role.password());
    }

    // A password-bearing URL whose port is closed: every connect fails.
    let logs_from = logs_from.unwrap_or_else(log_len);
    let closed = format!("postgres://app:{CLOSED_PORT_PASSWORD}@127.0.0.1:{}/orders?sslmode=disable", closed_port());
    let server = Server::start(&[
        ("DATABASE_URL", &closed),
        ("DB_TEST_URL", &closed),
        ("DB_ECHO", "true"),
        ("JWT_SECRET", JWT_SECRET),
        ("DB_POOL_TIMEOUT", "1s"),
        ("DB_HEALTH_TIMEOUT", "1s"),
        ("DB_RETRY_MAX_ATTEMPTS", "1"),
        ("DB_RETRY_BASE_DELAY", "10ms"),
    ])
    .await;
    sweep(&server, &mut seen, "closed port", CLOSED_PORT_PASSWORD).await;
    server.stop().await;
    let config = dbguard::env::config_from_vars([
        ("DATABASE_URL".to_owned(), closed.clone()),
        ("DB_RETRY_MAX_ATTEMPTS".to_owned(), "1".to_owned()),
        ("DB_RETRY_BASE_DELAY".to_owned(), "10ms".to_owned()),
        ("DB_POOL_TIMEOUT".to_owned(), "1s".to_owned()),
    ])
    .expect("valid");
    let failed = dbguard::DbManager::connect(config).await.expect_err("nothing listens");
    seen.push("connect error, closed port", format!("{failed} {failed:?}"));
    config_errors(&mut seen, &closed, CLOSED_PORT_PASSWORD);

    // SQLite with statement logging, so the subscriber sees sqlx's events even without
    // PostgreSQL; its only secret is the JWT secret.
    let dir = tempfile::tempdir().expect("temp dir");
    let sqlite = format!("sqlite://{}", dir.path().join("audit.db").display());
    let server = Server::start(&[("DATABASE_URL", &sqlite), ("DB_ECHO", "true"), ("JWT_SECRET", JWT_SECRET)]).await;
    use sea_orm::ConnectionTrait;
    server
        .manager
        .connection()
        .execute_unprepared("CREATE TABLE audit_items (id INTEGER PRIMARY KEY, name TEXT)")
        .await
        .expect("seed");
    sweep(&server, &mut seen, "sqlite", CLOSED_PORT_PASSWORD).await;
    server.stop().await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    let logs = logs_since(logs_from);
    // The audit can only fail if the subscriber really captured TRACE output from the stack.
    assert!(logs.lines().count() > 100, "too little was logged ({} lines)", logs.lines().count());
    assert!(logs.lines().any(|line| line.contains(" TRACE ")), "no TRACE-level line was captured");
    assert!(logs.contains("sqlx::query"), "sqlx's statement events were not captured");
    assert!(logs.contains("DatabaseConnection { inner: Sqlx"), "sea-orm's spans were not captured");
    assert!(logs.contains("dbguard::audit"), "dbguard's audit events were not captured");
    assert!(seen.0.len() > 300, "the sweep recorded only {} items", seen.0.len());

    let mut leaks = Vec::new();
    let secrets: Vec<String> =
        passwords.iter().chain(std::iter::once(&JWT_SECRET.to_owned())).flat_map(|s| forms(s)).collect();
    for secret in &secrets {
        for (what, text) in &seen.0 {
            if text.contains(secret.as_str()) {
                leaks.push(format!("{what}: {}", text.replace(secret.as_str(), "<SECRET>")));
            }
        }
        for line in logs.lines().filter(|line| line.contains(secret.as_str())) {
            leaks.push(format!("log: {}", line.replace(secret.as_str(), "<SECRET>")));
        }
    }
    println!(
        "secrets_audit: {} items and {} log lines checked for {} secret forms",
        seen.0.len(),
        logs.lines().count(),
        secrets.len()
    );
    assert!(leaks.is_empty(), "{} leaks:\n{}", leaks.len(), leaks.join("\n"));
    drop(db);
}
