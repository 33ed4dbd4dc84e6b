//! Every API route through PgBouncer in transaction pooling mode (with fewer server connections
//! than dbguard's pool) and `DB_STATEMENT_MODE=simple`: health, info, status, parameterised
//! `/test` queries on the least-privilege login, reconnect, probes and metrics, one after another
//! and many at once, with no failure. Before dbguard owned its statements, 29 of 60 sequential
//! and 192 of 200 concurrent requests failed here with 42P05.

mod support;

use dbguard_tests::{PgBouncer, PgBouncerOptions, PoolMode, TestDb};
use serde_json::json;
use support::{Server, assert_schema};

/// Rounds of the sequential pass: every route once per round.
const ROUNDS: u64 = 20;

/// Concurrent `/test` requests in the burst.
const BURST: u64 = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_works_through_pgbouncer_transaction_pooling() {
    let test = "every_route_works_through_pgbouncer_transaction_pooling";
    let Some(db) = TestDb::create_or_skip(test).await else { return };
    let mut conn = db.connect().await.expect("admin connection");
    sqlx::raw_sql(
        "CREATE TABLE items (id int PRIMARY KEY, name text); INSERT INTO items VALUES (1,'a'),(2,'b'),(3,'c')",
    )
    .execute(&mut conn)
    .await
    .expect("seed");
    let reader = db.create_read_only_role("bouncer_ro").await.expect("role");
    let server_addr = db.server_addr().await.expect("server address");
    let options = PgBouncerOptions::new(server_addr.ip().to_string(), server_addr.port())
        .pool_mode(PoolMode::Transaction)
        .default_pool_size(2)
        .users(["postgres", reader.name()]);
    let Some(bouncer) = PgBouncer::start_or_skip(test, options).await else { return };

    let database_url = bouncer.url_as("postgres", db.name());
    let test_url = bouncer.url_as(reader.name(), db.name());
    let server = Server::start(&[
        ("DATABASE_URL", database_url.as_str()),
        ("DB_TEST_URL", test_url.as_str()),
        ("DB_STATEMENT_MODE", "simple"),
        ("DB_POOL_SIZE", "4"),
        ("DB_MAX_OVERFLOW", "2"),
    ])
    .await;
    let token = Some(server.reader.as_str());

    let mut failures = Vec::new();
    let mut requests = 0;
    for round in 0..ROUNDS {
        let id = round % 3 + 1;
        let answers = [
            ("health", server.get("/api/database/health?force=true", token).await, "health-response"),
            ("info", server.get("/api/database/info", token).await, "info-response"),
            ("status", server.get("/api/database/status", token).await, "status-response"),
            (
                "test",
                server.query("SELECT name, $1::int AS asked FROM items WHERE id = $1", json!([id])).await,
                "test-response",
            ),
            ("readyz", server.get("/readyz", None).await, "readyz-response"),
        ];
        for (route, (status, body), schema) in answers {
            requests += 1;
            if status == 200 && body["success"] != false {
                assert_schema(schema, &body);
            } else {
                failures.push(format!("round {round} {route}: {status} {body}"));
            }
        }
        if round % 5 == 4 {
            requests += 1;
            let (status, body) = server.post("/api/database/reconnect", &server.admin, json!({})).await;
            if status != 200 {
                failures.push(format!("round {round} reconnect: {status} {body}"));
            }
        }
        let metrics = server.client.get(server.url("/metrics")).send().await.expect("metrics");
        requests += 1;
        if metrics.status() != 200 {
            failures.push(format!("round {round} metrics: {}", metrics.status()));
        }
    }
    let (_, health) = server.get("/api/database/health", token).await;
    assert_eq!(health["data"]["status"], "healthy", "{health:#}");

    let burst = (0..BURST).map(|n| {
        let id = n % 3 + 1;
        let server = &server;
        async move { (id, server.query("SELECT name FROM items WHERE id = $1", json!([id])).await) }
    });
    for (id, (status, body)) in futures::future::join_all(burst).await {
        requests += 1;
        let expected = ["a", "b", "c"][usize::try_from(id - 1).unwrap_or(0)];
        if status != 200 || body["data"]["rows"][0]["name"] != expected {
            failures.push(format!("burst id {id}: {status} {body}"));
        }
    }
    println!(
        "DRILL pgbouncer-api            requests={requests} failures={} bouncer_pool=2 dbguard_pool=4+2 statement_mode=simple",
        failures.len()
    );
    assert!(failures.is_empty(), "{} of {requests} requests failed: {failures:#?}", failures.len());
    server.stop().await;
}
