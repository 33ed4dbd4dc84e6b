//! The `dbguard_breaker_state` gauge follows every change of the circuit breaker, whoever
//! causes it: health probes opening it, the end of its cool-down, a half-open call closing it,
//! and the reset of a rebuilt pool. (Before the breaker had one owner, a probe could open it
//! and a half-open success could close it without the gauge moving.)

mod common;

use std::time::Duration;

use dbguard::{DbManager, Idempotency};
use dbguard_core::BreakerState;
use dbguard_tests::{PgCluster, StopMode};
use sea_orm::ConnectionTrait;

/// Two failed probes open the breaker; it may try again 300 ms later.
const BREAKER_VARS: &[(&str, &str)] = &[
    ("DB_BREAKER_FAILURES", "2"),
    ("DB_BREAKER_COOLDOWN", "300ms"),
    ("DB_HEALTH_TIMEOUT", "1s"),
    ("DB_POOL_TIMEOUT", "1s"),
];

/// How many times a condition is polled (every 50 ms) before the test gives up on it.
const POLLS: u32 = 200;

/// The gauge as Prometheus would scrape it: 0 closed, 1 half-open, 2 open.
fn gauge() -> f64 {
    let text = dbguard_http::api::metrics_handle().expect("this test binary installs the only recorder").render();
    text.lines()
        .find_map(|line| line.strip_prefix("dbguard_breaker_state "))
        .and_then(|value| value.trim().parse().ok())
        .expect("the breaker gauge is exported")
}

fn gauge_of(state: BreakerState) -> f64 {
    match state {
        BreakerState::Closed => 0.0,
        BreakerState::HalfOpen => 1.0,
        BreakerState::Open => 2.0,
    }
}

/// Probes the stopped server until the breaker opens.
async fn open_by_probes(manager: &DbManager) {
    for _ in 0..POLLS {
        manager.check_health(true).await;
        if manager.breaker_state() == BreakerState::Open {
            return;
        }
    }
    panic!("failed probes never opened the breaker");
}

async fn wait_for_state(manager: &DbManager, wanted: BreakerState) {
    for _ in 0..POLLS {
        if manager.breaker_state() == wanted {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the breaker never became {wanted:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_gauge_follows_every_transition() {
    let test = "breaker_gauge";
    // The recorder must exist before the manager records its first state.
    dbguard_http::api::metrics_handle().expect("this test binary installs the only recorder");
    let Some(pg) = PgCluster::start_or_skip(test).await else { return };
    let manager = common::manager(&pg.url("postgres"), BREAKER_VARS).await;
    assert_eq!(gauge(), gauge_of(BreakerState::Closed), "a new manager starts closed");

    // Probes alone open it.
    pg.stop(StopMode::Fast).await.expect("stop the server");
    open_by_probes(&manager).await;
    assert_eq!(gauge(), gauge_of(BreakerState::Open), "the probes that opened the breaker moved the gauge");

    // The cool-down ends by time alone; the next look at the breaker reports it.
    pg.start().await.expect("start the server");
    wait_for_state(&manager, BreakerState::HalfOpen).await;
    assert_eq!(gauge(), gauge_of(BreakerState::HalfOpen), "the end of the cool-down moved the gauge");

    // A half-open call that reaches the database closes it.
    manager
        .run(Idempotency::Idempotent, |db| async move { db.execute_unprepared("SELECT 1").await.map(|_| ()) })
        .await
        .expect("the server is back");
    assert_eq!(manager.breaker_state(), BreakerState::Closed);
    assert_eq!(gauge(), gauge_of(BreakerState::Closed), "the half-open success moved the gauge");

    // A rebuilt pool starts with a reset breaker.
    pg.stop(StopMode::Fast).await.expect("stop the server again");
    open_by_probes(&manager).await;
    assert_eq!(gauge(), gauge_of(BreakerState::Open));
    pg.start().await.expect("start the server again");
    pg.wait_accepting().await.expect("the server accepts connections");
    manager.reconnect().await.expect("the pool is rebuilt");
    assert_eq!(manager.breaker_state(), BreakerState::Closed);
    assert_eq!(gauge(), gauge_of(BreakerState::Closed), "the reset moved the gauge");
}
