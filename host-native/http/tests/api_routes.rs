//! The HTTP API against real databases over real HTTP: every route on SQLite and PostgreSQL,
//! the auth matrix, the read-only test endpoint's refusals, bad bodies, health following a
//! stopped server, graceful shutdown, and secrets kept out of bodies, headers and logs.

mod support;

use std::time::Duration;

use dbguard_tests::{PgCluster, StopMode, TestDb, skip};
use serde_json::{Value, json};
use sqlx::Connection;
use support::{SECRET, Server, assert_error, assert_schema, hs256, now_secs};

async fn sqlite_server(dir: &tempfile::TempDir, extra: &[(&str, &str)]) -> Server {
    let url = format!("sqlite://{}", dir.path().join("app.db").display());
    let mut vars = vec![("DATABASE_URL", url.as_str())];
    vars.extend_from_slice(extra);
    let server = Server::start(&vars).await;
    // A table to read, created through the guarded pool (the test endpoint cannot write).
    use sea_orm::ConnectionTrait;
    server
        .manager
        .connection()
        .execute_unprepared(
            "CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, name TEXT); \
             INSERT INTO items (name) VALUES ('a'), ('b'), ('c');",
        )
        .await
        .expect("seed");
    server
}

async fn every_route(server: &Server) {
    let token = Some(server.reader.as_str());
    let health = server.get("/api/database/health", token).await;
    assert_eq!(health.0, 200, "{:#}", health.1);
    assert_schema("health-response", &health.1);
    let forced = server.get("/api/database/health?force=true", token).await;
    assert_eq!(forced.0, 200);
    assert_schema("health-response", &forced.1);
    let info = server.get("/api/database/info", token).await;
    assert_eq!(info.0, 200);
    assert_schema("info-response", &info.1);
    let status = server.get("/api/database/status", token).await;
    assert_eq!(status.0, 200);
    assert_schema("status-response", &status.1);
    let test = server.query("SELECT count(*) AS n FROM items", json!([])).await;
    assert_eq!(test.0, 200, "{:#}", test.1);
    assert_schema("test-response", &test.1);
    assert_eq!(test.1["data"]["rows"][0]["n"], 3);
    let reconnect = server.post("/api/database/reconnect", &server.admin, json!({})).await;
    assert_eq!(reconnect.0, 200, "{:#}", reconnect.1);
    assert_schema("health-response", &reconnect.1);
    let live = server.get("/livez", None).await;
    assert_eq!(live.0, 200);
    assert_schema("livez-response", &live.1);
    let ready = server.get("/readyz", None).await;
    assert_eq!(ready.0, 200);
    assert_schema("readyz-response", &ready.1);
    let metrics = server.client.get(server.url("/metrics")).send().await.expect("metrics");
    assert_eq!(metrics.status().as_u16(), 200);
    let openapi = server.get("/api/openapi.json", None).await;
    assert_eq!(openapi.0, 200);
    assert_eq!(openapi.1["openapi"], "3.1.0");
    assert_error(&server.get("/api/nothing-here", token).await, 404);
    let wrong_method = server.client.delete(server.url("/api/database/health")).send().await.expect("405");
    assert_error(&support::decode(wrong_method).await, 405);
    // Reading routes refuse a token without db:read; admin routes refuse a reader.
    assert_error(&server.post("/api/database/reconnect", &server.reader, json!({})).await, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_on_sqlite_matches_its_schema() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = sqlite_server(&dir, &[]).await;
    every_route(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_on_postgres_matches_its_schema() {
    let Some(db) = TestDb::create_or_skip("every_route_on_postgres_matches_its_schema").await else { return };
    let mut conn = db.connect().await.expect("admin connection");
    sqlx::raw_sql(
        "CREATE TABLE items (id serial PRIMARY KEY, name text); INSERT INTO items (name) VALUES ('a'),('b'),('c')",
    )
    .execute(&mut conn)
    .await
    .expect("seed");
    let reader = db.create_read_only_role("api_ro").await.expect("role");
    let server = Server::start(&[("DATABASE_URL", db.url()), ("DB_TEST_URL", reader.url())]).await;
    every_route(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_matrix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = sqlite_server(&dir, &[("JWT_ISSUER", "https://issuer.test"), ("JWT_AUDIENCE", "dbguard")]).await;
    let now = now_secs();
    let claims = |extra: Value| {
        let mut base =
            json!({ "sub": "t", "exp": now + 600, "iss": "https://issuer.test", "aud": "dbguard", "scope": "db:read" });
        if let (Some(base), Some(extra)) = (base.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                if v.is_null() {
                    base.remove(k);
                } else {
                    base.insert(k.clone(), v.clone());
                }
            }
        }
        base
    };
    let good = hs256(SECRET.as_bytes(), &claims(json!({})));
    let path = "/api/database/info";
    let send = |header: Option<String>| {
        let mut request = server.client.get(server.url(path));
        if let Some(header) = header {
            request = request.header("authorization", header);
        }
        async move { support::decode(request.send().await.expect("response")).await }
    };
    assert_error(&send(None).await, 401);
    assert_error(&send(Some("Token abc".into())).await, 401);
    assert_error(&send(Some("Bearer".into())).await, 401);
    assert_error(&send(Some("Bearer not-a-jwt".into())).await, 401);
    let bad_signature = hs256(b"some-other-secret-entirely", &claims(json!({})));
    assert_error(&send(Some(format!("Bearer {bad_signature}"))).await, 401);
    // alg: none — header and claims, empty signature.
    use base64_free::encode;
    let none =
        format!("{}.{}.", encode(br#"{"alg":"none","typ":"JWT"}"#), encode(claims(json!({})).to_string().as_bytes()));
    assert_error(&send(Some(format!("Bearer {none}"))).await, 401);
    let expired = hs256(SECRET.as_bytes(), &claims(json!({ "exp": now - 3600 })));
    assert_error(&send(Some(format!("Bearer {expired}"))).await, 401);
    let no_exp = hs256(SECRET.as_bytes(), &claims(json!({ "exp": null })));
    assert_error(&send(Some(format!("Bearer {no_exp}"))).await, 401);
    let early = hs256(SECRET.as_bytes(), &claims(json!({ "nbf": now + 3600 })));
    assert_error(&send(Some(format!("Bearer {early}"))).await, 401);
    let wrong_iss = hs256(SECRET.as_bytes(), &claims(json!({ "iss": "https://evil.test" })));
    assert_error(&send(Some(format!("Bearer {wrong_iss}"))).await, 401);
    let wrong_aud = hs256(SECRET.as_bytes(), &claims(json!({ "aud": "someone-else" })));
    assert_error(&send(Some(format!("Bearer {wrong_aud}"))).await, 401);
    let no_scope = hs256(SECRET.as_bytes(), &claims(json!({ "scope": "db:admin" })));
    assert_error(&send(Some(format!("Bearer {no_scope}"))).await, 403);
    let reader_on_admin = server.post("/api/database/test", &good, json!({ "query": "SELECT 1" })).await;
    assert_error(&reader_on_admin, 403);
    let ok = send(Some(format!("Bearer {good}"))).await;
    assert_eq!(ok.0, 200, "{:#}", ok.1);
    server.stop().await;
}

/// Minimal unpadded base64url, to forge an `alg: none` token by hand.
mod base64_free {
    pub(super) fn encode(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk.iter().enumerate().fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
            for i in 0..=chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            }
        }
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_key_tokens_and_algorithm_confusion() {
    let dir = tempfile::tempdir().expect("tempdir");
    let private = dir.path().join("ed.pem");
    let public = dir.path().join("ed.pub.pem");
    let made = std::process::Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&private)
        .status()
        .is_ok_and(|s| s.success())
        && std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&private)
            .arg("-out")
            .arg(&public)
            .status()
            .is_ok_and(|s| s.success());
    if !made {
        skip("public_key_tokens_and_algorithm_confusion", "openssl is needed to make an Ed25519 key pair");
        return;
    }
    let public_path = public.display().to_string();
    let url = format!("sqlite://{}", dir.path().join("app.db").display());
    let server =
        Server::start(&[("DATABASE_URL", &url), ("JWT_SECRET", ""), ("JWT_PUBLIC_KEY_FILE", &public_path)]).await;
    let claims = json!({ "sub": "t", "exp": now_secs() + 600, "scope": "db:read" });
    let private_pem = std::fs::read(&private).expect("private key");
    let key = jsonwebtoken::EncodingKey::from_ed_pem(&private_pem).expect("ed key");
    let good =
        jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA), &claims, &key).expect("sign");
    let ok = server.get("/api/database/info", Some(&good)).await;
    assert_eq!(ok.0, 200, "{:#}", ok.1);
    // HS256 keyed with the public key's PEM text: the classic confusion attack.
    let public_pem = std::fs::read(&public).expect("public key");
    let confused = hs256(&public_pem, &claims);
    assert_error(&server.get("/api/database/info", Some(&confused)).await, 401);
    // And the configured HS secret of other tests means nothing here.
    assert_error(&server.get("/api/database/info", Some(&hs256(SECRET.as_bytes(), &claims))).await, 401);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_test_endpoint_refuses_writes_and_privileged_functions() {
    let Some(db) = TestDb::create_or_skip("postgres_test_endpoint_refuses_writes").await else { return };
    let mut admin = db.connect().await.expect("admin");
    sqlx::raw_sql(
        "CREATE TABLE items (id serial PRIMARY KEY, name text); INSERT INTO items (name) VALUES ('a'),('b'),('c'); \
         CREATE SEQUENCE counter;",
    )
    .execute(&mut admin)
    .await
    .expect("seed");
    let reader = db.create_read_only_role("api_ro").await.expect("role");
    let server = Server::start(&[("DATABASE_URL", db.url()), ("DB_TEST_URL", reader.url())]).await;
    let marker = std::env::temp_dir().join(format!("dbguard-copy-program-{}", std::process::id()));
    let admin_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut admin).await.expect("pid");
    // The rows' content, hashed, so an UPDATE that kept the count would still show.
    const ITEMS_HASH: &str = "SELECT md5(string_agg(id::text || ':' || name, ',' ORDER BY id)) FROM items";
    let items_before: String = sqlx::query_scalar(ITEMS_HASH).fetch_one(&mut admin).await.expect("hash items");

    let forbidden = [
        "INSERT INTO items (name) VALUES ('x')".to_owned(),
        "UPDATE items SET name = 'x'".to_owned(),
        "DELETE FROM items".to_owned(),
        "CREATE TABLE evil (x int)".to_owned(),
        "DROP TABLE items".to_owned(),
        "SELECT nextval('counter')".to_owned(),
        "SELECT set_config('role', 'postgres', false)".to_owned(),
        format!("COPY (SELECT 1) TO PROGRAM 'touch {}'", marker.display()),
        format!("SELECT pg_terminate_backend({admin_pid})"),
        "SELECT pg_reload_conf()".to_owned(),
    ];
    for sql in &forbidden {
        let got = server.query(sql, json!([])).await;
        assert_error(&got, 403);
        assert!(got.1["message"].as_str().is_some_and(|m| !m.is_empty()), "{sql}");
    }
    let multiple = server.query("SELECT 1; DELETE FROM items", json!([])).await;
    assert_error(&multiple, 400);

    // An advisory lock taken by the query does not outlive the call. Taking one is allowed in a
    // read-only transaction, so the query succeeds and the lock must be gone afterwards.
    let locked = server.query("SELECT pg_advisory_lock(4242)", json!([])).await;
    assert_eq!(locked.0, 200, "{:#}", locked.1);
    let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(4242)").fetch_one(&mut admin).await.expect("lock");
    assert!(free, "the advisory lock outlived the test query");

    let slow = server
        .post("/api/database/test", &server.admin, json!({ "query": "SELECT pg_sleep(5)", "timeout_ms": 300 }))
        .await;
    assert_error(&slow, 504);

    let big = server
        .post(
            "/api/database/test",
            &server.admin,
            json!({ "query": "SELECT g FROM generate_series(1, 1000000) g", "max_rows": 1000 }),
        )
        .await;
    assert_eq!(big.0, 200, "{:#}", big.1);
    assert_eq!(big.1["data"]["row_count"], 1000);
    assert_eq!(big.1["data"]["truncated"], true);

    // Parameters are data: an injection attempt is just a string that matches nothing.
    let injected = server.query("SELECT count(*) AS n FROM items WHERE name = $1", json!(["a' OR '1'='1"])).await;
    assert_eq!(injected.0, 200, "{:#}", injected.1);
    assert_eq!(injected.1["data"]["rows"][0]["n"], 0);
    let matched = server.query("SELECT count(*) AS n FROM items WHERE name = $1", json!(["a"])).await;
    assert_eq!(matched.1["data"]["rows"][0]["n"], 1);

    // Nothing changed: rows, sequence, tables, the marker file, the admin backend.
    let items_after: String = sqlx::query_scalar(ITEMS_HASH).fetch_one(&mut admin).await.expect("hash items");
    assert_eq!(items_after, items_before, "the rows of items changed");
    let called: bool = sqlx::query_scalar("SELECT is_called FROM counter").fetch_one(&mut admin).await.expect("seq");
    assert!(!called, "nextval ran");
    let evil: Option<String> =
        sqlx::query_scalar("SELECT to_regclass('evil')::text").fetch_one(&mut admin).await.expect("regclass");
    assert!(evil.is_none());
    assert!(!marker.exists(), "COPY TO PROGRAM ran");
    assert!(admin.ping().await.is_ok(), "the admin backend was terminated");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_superuser_login_without_test_url_is_refused() {
    let Some(db) = TestDb::create_or_skip("postgres_superuser_login_without_test_url_is_refused").await else {
        return;
    };
    let server = Server::start(&[("DATABASE_URL", db.url())]).await;
    let got = server.query("SELECT 1", json!([])).await;
    assert_error(&got, 403);
    let message = got.1["message"].as_str().unwrap_or_default();
    assert!(message.contains("DB_TEST_URL") && message.contains("superuser"), "{message}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_test_endpoint_refuses_writes_and_attach() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = sqlite_server(&dir, &[]).await;
    for sql in [
        "INSERT INTO items (name) VALUES ('x')",
        "UPDATE items SET name = 'x'",
        "DELETE FROM items",
        "CREATE TABLE evil (x)",
        "DROP TABLE items",
    ] {
        assert_error(&server.query(sql, json!([])).await, 403);
    }
    let other = dir.path().join("other.db");
    let attach = server.query(&format!("ATTACH DATABASE '{}' AS other", other.display()), json!([])).await;
    assert_error(&attach, 403);
    assert!(!other.exists(), "ATTACH created a file");
    assert_error(&server.query("SELECT 1; DELETE FROM items", json!([])).await, 400);
    let injected = server.query("SELECT count(*) AS n FROM items WHERE name = ?1", json!(["a' OR '1'='1"])).await;
    assert_eq!(injected.1["data"]["rows"][0]["n"], 0, "{:#}", injected.1);
    let big = server
        .post(
            "/api/database/test",
            &server.admin,
            json!({ "query": "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 1000000) SELECT x FROM n" }),
        )
        .await;
    assert_eq!(big.1["data"]["row_count"], 100, "{:#}", big.1);
    assert_eq!(big.1["data"]["truncated"], true);
    let endless = server
        .post(
            "/api/database/test",
            &server.admin,
            json!({ "query": "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT count(*) FROM n", "timeout_ms": 300 }),
        )
        .await;
    assert_error(&endless, 504);
    let count = server.query("SELECT count(*) AS n FROM items", json!([])).await;
    assert_eq!(count.1["data"]["rows"][0]["n"], 3);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_get_the_envelope_and_the_server_stays_healthy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = sqlite_server(&dir, &[]).await;
    let post_raw = |body: Vec<u8>, content_type: &'static str| {
        let request = server
            .client
            .post(server.url("/api/database/test"))
            .bearer_auth(&server.admin)
            .header("content-type", content_type)
            .body(body);
        async move { support::decode(request.send().await.expect("response")).await }
    };
    assert_error(&post_raw(b"{\"query\":".to_vec(), "application/json").await, 400);
    assert_error(&post_raw(b"{\"query\": 42}".to_vec(), "application/json").await, 400);
    assert_error(&post_raw(b"{\"query\": \"SELECT 1\", \"mode\": \"rw\"}".to_vec(), "application/json").await, 400);
    assert_error(&post_raw(b"{\"query\": \"SELECT 1\", \"max_rows\": -1}".to_vec(), "application/json").await, 400);
    assert_error(&post_raw(b"query=SELECT+1".to_vec(), "application/x-www-form-urlencoded").await, 415);
    let huge = format!("{{\"query\": \"SELECT '{}'\"}}", "x".repeat(200 * 1024));
    assert_error(&post_raw(huge.into_bytes(), "application/json").await, 413);
    assert_error(&server.get("/api/database/health?force=maybe", Some(&server.reader)).await, 400);
    let health = server.get("/api/database/health", Some(&server.reader)).await;
    assert_eq!(health.0, 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_postgres_makes_health_and_readyz_503_while_livez_stays_200() {
    let Some(cluster) = PgCluster::start_or_skip("stopped_postgres_makes_health_503").await else { return };
    let url = cluster.url("postgres");
    let server = Server::start(&[("DATABASE_URL", &url), ("DB_HEALTH_TIMEOUT", "2s"), ("DB_POOL_TIMEOUT", "2s")]).await;
    let before = server.get("/api/database/health?force=true", Some(&server.reader)).await;
    assert_eq!(before.0, 200, "{:#}", before.1);
    assert_eq!(server.get("/readyz", None).await.0, 200);
    cluster.stop(StopMode::Fast).await.expect("stop");
    let down = server.get("/api/database/health?force=true", Some(&server.reader)).await;
    assert_eq!(down.0, 503, "{:#}", down.1);
    assert_schema("health-response", &down.1);
    assert_eq!(down.1["data"]["status"], "unhealthy");
    assert_error(&server.get("/readyz", None).await, 503);
    assert_eq!(server.get("/livez", None).await.0, 200);
    cluster.start().await.expect("start again");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_completes_the_in_flight_request() {
    let Some(db) = TestDb::create_or_skip("graceful_shutdown_completes_the_in_flight_request").await else { return };
    let reader = db.create_read_only_role("api_ro").await.expect("role");
    let mut server = Server::start(&[("DATABASE_URL", db.url()), ("DB_TEST_URL", reader.url())]).await;
    let slow = {
        let request = server
            .client
            .post(server.url("/api/database/test"))
            .bearer_auth(&server.admin)
            .json(&json!({ "query": "SELECT pg_sleep(1.5) IS NULL AS slept", "timeout_ms": 8000 }));
        tokio::spawn(async move { support::decode(request.send().await.expect("response")).await })
    };
    // Shut down once the slow query is running on the server.
    let mut admin = db.connect().await.expect("admin");
    for _ in 0..100 {
        let running: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'dbguard-readonly' AND query LIKE '%pg_sleep%'",
        )
        .fetch_one(&mut admin)
        .await
        .expect("activity");
        if running > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let base = server.base.clone();
    let serving = server.begin_shutdown();
    let done = slow.await.expect("join");
    assert_eq!(done.0, 200, "{:#}", done.1);
    assert_eq!(done.1["data"]["rows"][0]["slept"], false);
    serving.await.expect("join").expect("serve ended cleanly");
    let refused = reqwest::Client::new().get(format!("{base}/livez")).send().await;
    assert!(refused.is_err(), "a new connection was accepted after shutdown");
    server.manager.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_appear_in_bodies_headers_or_logs() {
    let Some(db) = TestDb::create_or_skip("secrets_never_appear").await else { return };
    let role = db.create_role_with_password("api_pw").await.expect("role");
    let password = role.password().to_owned();
    // The harness's own CREATE ROLE statement (logged by sqlx) is before this point.
    let logs_from = support::log_buffer().lock().unwrap_or_else(|p| p.into_inner()).len();
    let server = Server::start(&[("DATABASE_URL", role.url()), ("DB_TEST_URL", role.url())]).await;
    let mut seen = String::new();
    for path in ["/api/database/health?force=true", "/api/database/info", "/api/database/status", "/metrics", "/nope"] {
        let response = server.client.get(server.url(path)).bearer_auth(&server.admin).send().await.expect("response");
        seen.push_str(&format!("{:?}", response.headers()));
        seen.push_str(&response.text().await.expect("body"));
    }
    for sql in ["SELECT current_setting('nope')", "SELECT 1/0", "SELECT 1", "SELEC broken"] {
        let (_, body) = server.query(sql, json!([])).await;
        seen.push_str(&body.to_string());
    }
    let (_, reconnect) = server.post("/api/database/reconnect", &server.admin, json!({})).await;
    seen.push_str(&reconnect.to_string());
    server.stop().await;
    let logs = {
        let buffer = support::log_buffer();
        let buffer = buffer.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(buffer.get(logs_from..).unwrap_or_default()).into_owned()
    };
    for secret in [password.as_str(), SECRET] {
        assert!(!seen.contains(secret), "a secret appeared in a response: {}", seen.replace(secret, "<SECRET>"));
        let leaked: Vec<String> =
            logs.lines().filter(|line| line.contains(secret)).map(|line| line.replace(secret, "<SECRET>")).collect();
        assert!(leaked.is_empty(), "a secret appeared in log lines: {leaked:#?}");
    }
    assert!(!logs.is_empty(), "no log lines were captured");
}
