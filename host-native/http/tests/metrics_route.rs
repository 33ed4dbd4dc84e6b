//! `GET /metrics`: Prometheus text with the `dbguard_*` series a guarded call and a health probe
//! move, open by default, and behind a `db:read` token with `DBGUARD_METRICS_AUTH=true`.

mod support;

use dbguard::Idempotency;
use dbguard_tests::TestDb;
use sea_orm::ConnectionTrait;
use support::Server;

/// One guarded call and one forced probe, so the call and probe series exist.
async fn make_traffic(server: &Server) {
    server
        .manager
        .run(Idempotency::Idempotent, |db| async move { db.execute_unprepared("SELECT 1").await.map(|_| ()) })
        .await
        .expect("a guarded call");
    server.manager.check_health(true).await;
}

/// `GET /metrics` with an optional bearer token: status, content type and body.
async fn metrics(server: &Server, token: Option<&str>) -> (u16, String, String) {
    let mut request = server.client.get(server.url("/metrics"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("GET /metrics");
    let status = response.status().as_u16();
    let content_type =
        response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    (status, content_type, response.text().await.expect("body"))
}

/// Asserts the series a call and a probe produce are in the text, typed as Prometheus expects.
fn assert_dbguard_series(text: &str) {
    for series in ["dbguard_calls_total", "dbguard_health_probes_total"] {
        assert!(
            text.lines().any(|line| line == format!("# TYPE {series} counter")),
            "{series} is not exposed as a counter:\n{text}"
        );
        // Every label set of the series, e.g. `outcome="error"`, exists from the first call on,
        // at 0 until it moves; one of them must have counted this traffic.
        let mut values = text
            .lines()
            .filter(|line| line.starts_with(series) && !line.starts_with('#'))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok());
        assert!(values.any(|v| v >= 1.0), "{series} has no sample of at least 1:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_open_by_default_and_carry_the_dbguard_series() {
    let Some(db) = TestDb::create_or_skip("metrics_open_by_default").await else { return };
    let server = Server::start(&[("DATABASE_URL", db.url())]).await;
    make_traffic(&server).await;
    let (status, content_type, text) = metrics(&server, None).await;
    assert_eq!(status, 200, "{text}");
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    assert_dbguard_series(&text);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_auth_requires_a_read_token() {
    let Some(db) = TestDb::create_or_skip("metrics_auth_requires_a_token").await else { return };
    let server = Server::start(&[("DATABASE_URL", db.url()), ("DBGUARD_METRICS_AUTH", "true")]).await;
    make_traffic(&server).await;
    let (anonymous, _, body) = metrics(&server, None).await;
    assert_eq!(anonymous, 401, "{body}");
    assert!(!body.contains("dbguard_calls_total"), "a refused request must not leak the series: {body}");
    let (bad, _, _) = metrics(&server, Some("not-a-token")).await;
    assert_eq!(bad, 401);
    let (with_token, _, text) = metrics(&server, Some(&server.reader)).await;
    assert_eq!(with_token, 200, "{text}");
    assert_dbguard_series(&text);
    server.stop().await;
}
