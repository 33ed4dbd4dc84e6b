//! The dashboard over real HTTP: the page and its files carry strict security headers and no
//! inline script or style; the event stream needs a db:read token, starts with the kept
//! history and then sends a sample every second, each valid against its schema; and an open
//! stream does not hold up a graceful shutdown.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{Server, assert_error, schemas_dir};

async fn sqlite_server(dir: &tempfile::TempDir) -> Server {
    let url = format!("sqlite://{}", dir.path().join("app.db").display());
    Server::start(&[("DATABASE_URL", url.as_str())]).await
}

/// Reads Server-Sent Events from `response` until `count` have arrived: `(event, data)` pairs.
async fn read_events(response: &mut reqwest::Response, count: usize) -> Vec<(String, Value)> {
    let mut buffer = String::new();
    let mut events = Vec::new();
    while events.len() < count {
        let chunk = tokio::time::timeout(Duration::from_secs(30), response.chunk())
            .await
            .expect("an event within 30 s")
            .expect("read the stream")
            .expect("the stream stays open");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let mut name = String::new();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("event:") {
                    name = value.trim().to_owned();
                } else if let Some(value) = line.strip_prefix("data:") {
                    data.push_str(value.trim_start());
                }
            }
            if !data.is_empty() {
                events.push((name, serde_json::from_str(&data).expect("event data is JSON")));
            }
        }
    }
    events
}

fn assert_sample(sample: &Value) {
    let path = schemas_dir().join("dashboard-sample.schema.json");
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("schema file")).expect("JSON");
    let validator = jsonschema::validator_for(&schema).expect("valid schema");
    let errors: Vec<String> = validator.iter_errors(sample).map(|e| format!("{e} at {}", e.instance_path())).collect();
    assert!(errors.is_empty(), "{errors:?}\n{sample:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_its_files_are_served_with_strict_headers_and_no_inline_code() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = sqlite_server(&dir).await;
    for (path, content_type) in
        [("/dashboard", "text/html"), ("/dashboard/app.js", "text/javascript"), ("/dashboard/app.css", "text/css")]
    {
        let response = server.client.get(server.url(path)).send().await.expect("request");
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers().clone();
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        assert!(header("content-type").starts_with(content_type), "{path}: {headers:?}");
        let policy = header("content-security-policy");
        assert!(policy.contains("default-src 'none'") && policy.contains("script-src 'self'"), "{path}: {policy}");
        assert!(!policy.contains("unsafe-inline") && !policy.contains("unsafe-eval"), "{path}: {policy}");
        assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(header("referrer-policy"), "no-referrer", "{path}");
        let body = response.text().await.expect("body");
        if path == "/dashboard" {
            // Every script has a src; no element carries an event handler or a style attribute.
            for tag in body.split("<script").skip(1) {
                assert!(tag.trim_start().starts_with("src="), "inline script: <script{tag}");
            }
            let lower = body.to_ascii_lowercase();
            assert!(
                !lower.contains(" onclick=") && !lower.contains(" onload=") && !lower.contains(" style="),
                "{body}"
            );
        }
        if path == "/dashboard/app.js" {
            assert!(!body.contains("innerHTML") && !body.contains("insertAdjacentHTML") && !body.contains("eval("));
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_needs_a_token_then_sends_history_and_a_sample_a_second() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("app.db").display());
    // A drain limit far above the wait below: only closing the stream can end it in time.
    let limits = dbguard_http::api::ServeLimits {
        shutdown_drain_limit: Duration::from_secs(600),
        ..dbguard_http::api::ServeLimits::default()
    };
    let options = support::Options { limits, ..support::Options::default() };
    let server = Server::start_with(&[("DATABASE_URL", url.as_str())], options).await;
    assert_error(&server.get("/api/dashboard/events", None).await, 401);
    // The sampler has been running since the server started: wait for a few samples.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut response = server
        .client
        .get(server.url("/api/dashboard/events"))
        .bearer_auth(&server.reader)
        .send()
        .await
        .expect("stream");
    assert_eq!(response.status(), 200);
    assert!(
        response.headers().get("content-type").is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream")),
        "{:?}",
        response.headers()
    );
    let events = read_events(&mut response, 3).await;
    assert_eq!(events[0].0, "history");
    let history = events[0].1.as_array().expect("history is an array");
    assert!(history.len() >= 2, "{history:?}");
    for sample in history {
        assert_sample(sample);
    }
    let seqs: Vec<u64> = history.iter().filter_map(|s| s["seq"].as_u64()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "consecutive: {seqs:?}");
    for (name, sample) in &events[1..] {
        assert_eq!(name, "sample");
        assert_sample(sample);
    }
    let last_kept = *seqs.last().expect("a sample");
    assert_eq!(events[1].1["seq"].as_u64(), Some(last_kept + 1), "the first live sample follows the history");
    assert_eq!(events[2].1["seq"].as_u64(), Some(last_kept + 2));

    // Shutting down ends the stream instead of waiting out the ten-minute drain limit on it.
    let mut server = server;
    let stopping = server.begin_shutdown();
    let ended =
        tokio::time::timeout(Duration::from_secs(30), async { while let Ok(Some(_)) = response.chunk().await {} })
            .await;
    assert!(ended.is_ok(), "the stream ended at shutdown");
    stopping.await.expect("join").expect("served");
}
