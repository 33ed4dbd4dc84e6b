//! A server that refuses every connection is reported as `connection_refused` by the health
//! route, not as a probe timeout: with no connection open, the probe asks the server directly
//! instead of waiting out the pool's own connect backoff.

mod support;

use support::Server;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_names_a_refused_connection() {
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let url = format!("postgres://postgres@127.0.0.1:{closed_port}/app");
    let server = Server::start(&[("DATABASE_URL", url.as_str())]).await;
    let reader = server.reader.clone();
    let (status, body) = server.get("/api/database/health?force=true", Some(&reader)).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["data"]["status"], "unhealthy", "{body}");
    let message = body["data"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("connection_refused") && !message.contains("timed out"), "{body}");
    support::assert_schema("health-response", &body);
    server.stop().await;
}
