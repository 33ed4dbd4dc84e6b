//! `/metrics` exports durations as Prometheus histograms with buckets (which add up across
//! instances, unlike a summary's quantiles) and the pool's occupancy in HikariCP's terms.

mod support;

use dbguard::Idempotency;
use sea_orm::ConnectionTrait;
use support::Server;

async fn scrape(server: &Server) -> String {
    let response = server.client.get(server.url("/metrics")).send().await.expect("scrape /metrics");
    assert_eq!(response.status(), 200);
    response.text().await.expect("metrics text")
}

/// The value of the series `name` with no labels.
fn gauge(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test]
async fn durations_are_histograms_and_the_pool_is_exported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("metrics.db").display());
    let server = Server::start(&[("DATABASE_URL", &url), ("DB_POOL_SIZE", "3"), ("DB_MAX_OVERFLOW", "4")]).await;
    server
        .manager
        .run(Idempotency::Idempotent, |db| async move { db.execute_unprepared("SELECT 1").await.map(|_| ()) })
        .await
        .expect("a guarded call");
    let (status, _) = server.get("/api/database/health?force=true", Some(&server.reader)).await;
    assert_eq!(status, 200);

    let text = scrape(&server).await;
    for histogram in ["dbguard_call_duration_seconds", "dbguard_health_probe_duration_seconds"] {
        assert!(text.contains(&format!("# TYPE {histogram} histogram")), "{histogram} is a histogram:\n{text}");
        for bound in ["0.0001", "0.001", "0.01", "0.1", "1", "30", "+Inf"] {
            assert!(
                text.contains(&format!("{histogram}_bucket{{le=\"{bound}\"}}")),
                "{histogram} has a bucket at {bound}:\n{text}"
            );
        }
        assert!(!text.contains(&format!("{histogram}{{quantile=")), "no summary quantiles for {histogram}");
        let count = gauge(&text, &format!("{histogram}_count")).expect("a count");
        assert!(count >= 1.0, "{histogram} recorded something");
    }
    assert_eq!(gauge(&text, "dbguard_pool_connections_min"), Some(3.0), "{text}");
    assert_eq!(gauge(&text, "dbguard_pool_connections_max"), Some(7.0), "{text}");
    let active = gauge(&text, "dbguard_pool_connections_active").expect("active connections");
    let idle = gauge(&text, "dbguard_pool_connections_idle").expect("idle connections");
    assert!(active + idle >= 1.0, "the pool has the connection the call used: active {active}, idle {idle}");
    server.stop().await;
}
