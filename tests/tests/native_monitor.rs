//! `spawn_monitor`: background probes keep the cached health current on their own, so a reader
//! of the cache sees an outage and the recovery without ever forcing a probe.

mod common;

use dbguard::HealthStatus;
use dbguard_tests::{FaultProxy, ProxyMode, TestDb};

/// Waits, at most [`common::HANG_LIMIT`], until the cached report (never a forced probe) says
/// `want`.
async fn wait_for_cached(manager: &dbguard::DbManager, want: HealthStatus) {
    let deadline = tokio::time::Instant::now() + common::HANG_LIMIT;
    loop {
        let cached = manager.cached_health().map(|report| report.status);
        if cached == Some(want) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "the cached health never became {want:?}: {cached:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitor_probes_by_itself_and_tracks_an_outage() {
    let Some(db) = TestDb::create_or_skip("monitor_tracks_outage").await else { return };
    let proxy = FaultProxy::start(db.server_addr().await.expect("server address")).await.expect("proxy");
    let vars = [
        ("DB_HEALTH_CHECK_INTERVAL", "100ms"),
        ("DB_HEALTH_TIMEOUT", "1s"),
        ("DB_POOL_TIMEOUT", "1s"),
        ("DB_RETRY_MAX_ATTEMPTS", "0"),
    ];
    let manager = dbguard::DbManager::connect_lazy(common::config(&proxy.rewrite_url(db.url()), &vars))
        .await
        .expect("lazy manager");
    assert!(manager.cached_health().is_none(), "nothing has probed yet");
    let monitor = manager.spawn_monitor();

    wait_for_cached(&manager, HealthStatus::Healthy).await;
    let probes = manager.probe_count();
    let deadline = tokio::time::Instant::now() + common::HANG_LIMIT;
    while manager.probe_count() < probes + 3 {
        assert!(tokio::time::Instant::now() < deadline, "the monitor stopped probing at {}", manager.probe_count());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // The server becomes unreachable: open sessions are cut and new ones refused.
    proxy.set_mode(ProxyMode::Refuse);
    proxy.reset_all();
    wait_for_cached(&manager, HealthStatus::Unhealthy).await;
    proxy.set_mode(ProxyMode::Pass);
    wait_for_cached(&manager, HealthStatus::Healthy).await;

    manager.close().await;
    tokio::time::timeout(common::HANG_LIMIT, monitor).await.expect("the monitor stops with the manager").ok();
}
