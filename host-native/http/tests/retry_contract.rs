//! The routes that touch the database retry on the policy's schedule and report it:
//! `POST /api/database/test` (an idempotent read-only call) and `POST /api/database/reconnect`
//! answer 503 once the 1 s / 2 s / 4 s schedule is used up with the database down, with the
//! real retry count and the time of the last attempt; when the database comes back within the
//! schedule they answer 200.

mod support;

use dbguard_tests::{PgCluster, TestDb};
use serde_json::{Value, json};
use support::{Server, log_buffer};

/// The seed's schedule: three retries, one second doubling, no jitter.
const SCHEDULE: [(&str, &str); 3] =
    [("DB_RETRY_MAX_ATTEMPTS", "3"), ("DB_RETRY_BASE_DELAY", "1s"), ("DB_RETRY_JITTER", "none")];

/// Posts `body` to `path` as the admin with its own request id, whose log lines are then this
/// call's alone.
async fn post(server: &Server, path: &str, body: Value, request_id: &str) -> (u16, Value) {
    let response = server
        .client
        .post(server.url(path))
        .bearer_auth(&server.admin)
        .header("x-request-id", request_id)
        .json(&body)
        .send()
        .await
        .expect("response");
    support::decode(response).await
}

async fn test_query(server: &Server, request_id: &str) -> (u16, Value) {
    post(server, "/api/database/test", json!({ "query": "SELECT 41 + 1 AS answer" }), request_id).await
}

async fn reconnect(server: &Server, request_id: &str) -> (u16, Value) {
    post(server, "/api/database/reconnect", json!({}), request_id).await
}

/// Asserts the seed's error body after three retries on the schedule.
fn assert_gave_up_on_schedule(status: u16, body: &Value, request_id: &str) {
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["success"], false, "{body}");
    assert_eq!(body["error"], "connection_refused", "{body}");
    assert_eq!(body["retry_count"], 3, "{body}");
    assert!(body["last_attempt"].as_str().is_some_and(|t| t.ends_with('Z')), "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("gave up after 4 attempts"), "{message}");
    assert_eq!(retry_delays(request_id), [1000, 2000, 4000], "the retries follow the 1 s / 2 s / 4 s schedule");
}

/// The `delay_ms` of every "retrying" line logged under `request_id`, in order.
fn retry_delays(request_id: &str) -> Vec<u64> {
    let logs = String::from_utf8_lossy(&log_buffer().lock().unwrap_or_else(|p| p.into_inner())).into_owned();
    logs.lines()
        .filter(|line| line.contains(request_id) && line.contains("retrying"))
        .filter_map(|line| line.split("delay_ms=").nth(1))
        .filter_map(|rest| rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .collect()
}

/// Runs `request` against the stopped cluster and starts the cluster again once the request's
/// first attempt has been refused and its first retry is waiting.
async fn back_during(
    pg: &PgCluster,
    request_id: &str,
    request: impl std::future::Future<Output = (u16, Value)>,
) -> (u16, Value) {
    let restart = async {
        while retry_delays(request_id).is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        pg.start().await.expect("start");
    };
    tokio::join!(request, restart).0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_and_reconnect_retry_on_the_schedule_then_report_the_attempts() {
    let Some(pg) = PgCluster::start_or_skip("retry_contract").await else { return };
    let db = TestDb::create_on(&pg.url("postgres"), "retry_contract").await.expect("database");
    let reader = db.create_read_only_role("retry_ro").await.expect("role");
    let mut vars = vec![("DATABASE_URL", db.url()), ("DB_TEST_URL", reader.url())];
    vars.extend(SCHEDULE);

    // Down for the whole schedule: four attempts, three waits, then the seed's error body.
    let server = Server::start(&vars).await;
    pg.stop(dbguard_tests::StopMode::Fast).await.expect("stop");
    let (status, body) = test_query(&server, "retry-down").await;
    assert_gave_up_on_schedule(status, &body, "retry-down");
    // Two reconnects at once: one runs the schedule, the other waits for it and shares its
    // error instead of running a second schedule against the same stopped server.
    let ((status, body), (second_status, second_body)) =
        tokio::join!(reconnect(&server, "reconnect-down"), reconnect(&server, "reconnect-waits"));
    let (ran, waited) = if retry_delays("reconnect-down").is_empty() {
        ((second_status, second_body, "reconnect-waits"), (status, body))
    } else {
        ((status, body, "reconnect-down"), (second_status, second_body))
    };
    assert_gave_up_on_schedule(ran.0, &ran.1, ran.2);
    assert_eq!(waited, (ran.0, ran.1.clone()), "the waiting reconnect shares the same error");
    server.stop().await;

    // Back within the schedule: the first attempt fails, a retry succeeds.
    let server = Server::start(&vars).await;
    let (status, body) = back_during(&pg, "retry-recovers", test_query(&server, "retry-recovers")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["rows"][0]["answer"], 42, "{body}");
    let delays = retry_delays("retry-recovers");
    assert!(!delays.is_empty() && delays.len() < 3, "recovered after {} retries: {delays:?}", delays.len());
    assert_eq!(delays[0], 1000, "{delays:?}");

    pg.stop(dbguard_tests::StopMode::Fast).await.expect("stop");
    let (status, body) = back_during(&pg, "reconnect-recovers", reconnect(&server, "reconnect-recovers")).await;
    assert_eq!(status, 200, "{body}");
    assert!(!retry_delays("reconnect-recovers").is_empty());
    server.stop().await;
}
