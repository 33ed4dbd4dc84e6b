//! `POST /api/database/test` runs under the retry policy, as any idempotent call: with the
//! database down it answers 503 once the 1 s / 2 s / 4 s schedule is used up, with the real
//! retry count and the time of the last attempt; when the database comes back within the
//! schedule it answers 200.

mod support;

use dbguard_tests::{PgCluster, TestDb};
use serde_json::{Value, json};
use support::{Server, log_buffer};

/// The seed's schedule: three retries, one second doubling, no jitter.
const SCHEDULE: [(&str, &str); 3] =
    [("DB_RETRY_MAX_ATTEMPTS", "3"), ("DB_RETRY_BASE_DELAY", "1s"), ("DB_RETRY_JITTER", "none")];

/// Sends the test query with its own request id, whose log lines are then this call's alone.
async fn test_query(server: &Server, request_id: &str) -> (u16, Value) {
    let response = server
        .client
        .post(server.url("/api/database/test"))
        .bearer_auth(&server.admin)
        .header("x-request-id", request_id)
        .json(&json!({ "query": "SELECT 41 + 1 AS answer" }))
        .send()
        .await
        .expect("response");
    support::decode(response).await
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_query_retries_on_the_schedule_then_reports_the_attempts() {
    let Some(pg) = PgCluster::start_or_skip("test_query_retry").await else { return };
    let db = TestDb::create_on(&pg.url("postgres"), "test_query_retry").await.expect("database");
    let reader = db.create_read_only_role("retry_ro").await.expect("role");
    let mut vars = vec![("DATABASE_URL", db.url()), ("DB_TEST_URL", reader.url())];
    vars.extend(SCHEDULE);

    // Down for the whole schedule: four attempts, three waits, then the seed's error body.
    let server = Server::start(&vars).await;
    pg.stop(dbguard_tests::StopMode::Fast).await.expect("stop");
    let (status, body) = test_query(&server, "retry-down").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["success"], false, "{body}");
    assert_eq!(body["error"], "connection_refused", "{body}");
    assert_eq!(body["retry_count"], 3, "{body}");
    assert!(body["last_attempt"].as_str().is_some_and(|t| t.ends_with('Z')), "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("gave up after 4 attempts"), "{message}");
    assert_eq!(retry_delays("retry-down"), [1000, 2000, 4000], "the retries follow the 1 s / 2 s / 4 s schedule");
    server.stop().await;

    // Back within the schedule: the first attempt fails, a retry succeeds.
    let server = Server::start(&vars).await;
    let request = test_query(&server, "retry-recovers");
    let restart = async {
        // Start the server again once the first attempt has been refused and its retry waits.
        while retry_delays("retry-recovers").is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        pg.start().await.expect("start");
    };
    let ((status, body), ()) = tokio::join!(request, restart);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["rows"][0]["answer"], 42, "{body}");
    let delays = retry_delays("retry-recovers");
    assert!(!delays.is_empty() && delays.len() < 3, "recovered after {} retries: {delays:?}", delays.len());
    assert_eq!(delays[0], 1000, "{delays:?}");
    server.stop().await;
}
