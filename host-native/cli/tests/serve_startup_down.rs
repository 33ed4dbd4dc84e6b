//! Fault drill: the database is down when `dbguard serve` starts, as an orchestrator sees it.
//!
//! The process must start and stay up; `/livez` answers 200 (restarting it would not help),
//! `/readyz` 503 and the health report is unhealthy with the real cause. Once the server
//! appears, the same process becomes ready without a restart.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use dbguard_tests::PgCluster;
use serde_json::Value;

/// Kills the server when the test ends, however it ends.
struct ServeProcess(Child);

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `dbguard serve` against `database_url`; returns the process, its base URL and the
/// admin token it printed (development profile, generated secret).
fn start_serve(database_url: &str) -> (ServeProcess, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dbguard"))
        .arg("serve")
        .env_remove("DATABASE_URL_FILE")
        .env_remove("JWT_SECRET")
        .env_remove("JWT_SECRET_FILE")
        .env_remove("JWT_PUBLIC_KEY_FILE")
        .env_remove("DBGUARD_ENV")
        .env_remove("APP_ENV")
        .env("DATABASE_URL", database_url)
        .env("DBGUARD_BIND", "127.0.0.1:0")
        .env("DB_POOL_TIMEOUT", "500ms")
        .env("DB_HEALTH_TIMEOUT", "1s")
        .env("DB_HEALTH_CHECK_INTERVAL", "500ms")
        .env("DB_HEALTH_DEGRADED_LATENCY", "30s")
        .env("DB_ECHO", "false")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start dbguard serve");
    let stdout = child.stdout.take().expect("stdout");
    let process = ServeProcess(child);
    let mut lines = BufReader::new(stdout).lines();
    let (mut base, mut token) = (None, None);
    let mut printed = Vec::new();
    while base.is_none() || token.is_none() {
        let Some(Ok(line)) = lines.next() else {
            panic!("serve exited before printing its address and token: {printed:#?}");
        };
        // "dbguard listening on http://127.0.0.1:PORT (development profile, …)"
        if let Some(rest) = line.strip_prefix("dbguard listening on ") {
            base = rest.split_whitespace().next().map(str::to_owned);
        } else if line.trim().starts_with("eyJ") {
            token = Some(line.trim().to_owned());
        }
        printed.push(line);
    }
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (process, base.unwrap_or_default(), token.unwrap_or_default())
}

async fn get(client: &reqwest::Client, url: &str, token: Option<&str>) -> (u16, Value) {
    let mut request = client.get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("the server answers");
    let status = response.status().as_u16();
    let body = response.json::<Value>().await.expect("a JSON body");
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_starts_while_the_database_is_down_and_becomes_ready() {
    let test = "drill_serve_startup_down";
    let pg = match PgCluster::init().await {
        Ok(pg) => pg,
        Err(e) if e.is_missing_component() => return dbguard_tests::skip(test, &e.to_string()),
        Err(e) => panic!("{test}: initdb failed: {e}"),
    };
    let (mut serve, base, token) = start_serve(&pg.url("postgres"));
    let client = reqwest::Client::new();

    let (live, _) = get(&client, &format!("{base}/livez"), None).await;
    let (not_ready, not_ready_body) = get(&client, &format!("{base}/readyz"), None).await;
    let health_url = format!("{base}/api/database/health?force=true");
    let (health_down, health_down_body) = get(&client, &health_url, Some(&token)).await;
    let cause = health_down_body["data"]["message"].as_str().unwrap_or_default().to_owned();

    pg.start().await.expect("the server appears");
    let appeared = tokio::time::Instant::now();
    let deadline = appeared + Duration::from_secs(30);
    let mut polls = 0;
    let ready = loop {
        polls += 1;
        let (status, body) = get(&client, &format!("{base}/readyz"), None).await;
        if status == 200 {
            break body;
        }
        assert!(tokio::time::Instant::now() < deadline, "never became ready: {status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ready_after = appeared.elapsed();
    let (health_up, health_up_body) = get(&client, &health_url, Some(&token)).await;
    let still_running = serve.0.try_wait().expect("process status").is_none();
    println!(
        "DRILL {test:<24} faults=1 livez={live} readyz_down={not_ready} health_down={health_down} cause={cause:?} \
         readyz_up=200 after {} ms ({polls} polls) health_up={health_up} restarted=false",
        ready_after.as_millis()
    );

    assert_eq!(live, 200, "a process whose database is down is alive");
    assert_eq!(not_ready, 503, "{not_ready_body}");
    assert_eq!(not_ready_body["success"], false, "{not_ready_body}");
    assert_eq!(not_ready_body["error"], "not_ready", "{not_ready_body}");
    assert_eq!(health_down, 503, "{health_down_body}");
    assert_eq!(health_down_body["data"]["status"], "unhealthy", "{health_down_body}");
    assert!(cause.contains("connection_refused"), "the report names the real cause: {health_down_body}");
    assert_eq!(ready["data"]["status"], "ready", "{ready}");
    assert_eq!(health_up, 200, "{health_up_body}");
    assert_eq!(health_up_body["data"]["status"], "healthy", "{health_up_body}");
    assert!(still_running, "ready without a restart");
}
