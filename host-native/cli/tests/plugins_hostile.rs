//! Hostile plugins dropped into a running `dbguard serve` on PostgreSQL, one fixture per
//! server. For each: the probes and the cached health answer within 1 s throughout, the health
//! JSON stays small and valid, the log, RSS and thread count stay bounded, nothing panics, the
//! plugin is refused or quarantined with its reason in `GET /api/plugins` (or, where its
//! misbehaviour is absorbed, stays active with what was absorbed shown), and SIGTERM ends the
//! process within the shutdown bound.

// The HTTP API tests' support: tokens, guest builds, schema checks.
#[path = "../../http/tests/support/mod.rs"]
mod support;

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dbguard_tests::TestDb;
use serde_json::Value;

/// How long each server is watched after it starts.
const WATCH: Duration = Duration::from_secs(6);
/// Every probe and cached health read must succeed within this.
const ANSWER_WITHIN: Duration = Duration::from_secs(1);
/// The health JSON stays under this.
const MAX_HEALTH_BYTES: usize = 64 << 10;
/// The server's log output stays under this.
const MAX_LOG_BYTES: u64 = 16 << 20;
/// RSS grows by less than this.
const MAX_RSS_GROWTH_KIB: u64 = 128 << 10;
/// The thread count stays under this.
const MAX_THREADS: u64 = 64;
/// SIGTERM must end the process within the server's shutdown bound: 20 s for open
/// connections, 10 s for checked-out database connections.
const SHUTDOWN_BOUND: Duration = Duration::from_secs(30);

/// One server at a time: the machine is small, and the 1 s answers are measured under load.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A running `dbguard serve` with its output counted; killed on drop however the test ends.
struct Serve {
    child: Child,
    base: String,
    token: String,
    log_bytes: Arc<AtomicU64>,
    /// Lines worth a look: panics, and lines that start like a forged log line.
    suspicious: Arc<Mutex<Vec<String>>>,
    panicked: Arc<AtomicBool>,
    /// When the process was started: printed costs are measured from here (never asserted).
    started: std::time::Instant,
    /// The plugin file's name.
    file: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one fixture cost the server.
#[derive(Debug, Default)]
struct Cost {
    rss_growth_kib: u64,
    max_threads: u64,
    max_health_bytes: usize,
    log_bytes: u64,
    /// When the server first answered, after start (the gate runs before it listens).
    listening_ms: u128,
    /// When `GET /api/plugins` first showed the plugin refused or quarantined, after start.
    settled_ms: Option<u128>,
}

impl Serve {
    /// Starts `dbguard serve` with `fixture` as the only plugin, `DB_TEST_URL` as `test_url`.
    fn start(db: &TestDb, test_url: &str, fixture: &str, plugin_dir: &std::path::Path) -> Self {
        std::fs::write(plugin_dir.join(format!("{fixture}.wasm")), dbguard_tests::guest!(fixture)).expect("plugin");
        let started = std::time::Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_dbguard"))
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", db.url())
            .env("DB_TEST_URL", test_url)
            .env("DBGUARD_BIND", "127.0.0.1:0")
            .env("DBGUARD_PLUGIN_DIR", plugin_dir)
            .env("DB_HEALTH_TIMEOUT", "2s")
            .env("DB_HEALTH_CHECK_INTERVAL", "500ms")
            .env("DB_HEALTH_DEGRADED_LATENCY", "30s")
            .env("DB_ECHO", "false")
            .env("DBGUARD_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start dbguard serve");
        let log_bytes = Arc::new(AtomicU64::new(0));
        let suspicious = Arc::new(Mutex::new(Vec::new()));
        let panicked = Arc::new(AtomicBool::new(false));
        let (address, stdout) = {
            let (sender, receiver) = std::sync::mpsc::channel::<String>();
            let stdout = child.stdout.take().expect("stdout");
            let counted = count_output(stdout, log_bytes.clone(), suspicious.clone(), panicked.clone(), Some(sender));
            (receiver, counted)
        };
        let stderr = child.stderr.take().expect("stderr");
        count_output(stderr, log_bytes.clone(), suspicious.clone(), panicked.clone(), None);
        drop(stdout);
        let (mut base, mut token) = (None, None);
        while base.is_none() || token.is_none() {
            let line = address.recv_timeout(Duration::from_secs(60)).expect("serve prints its address and token");
            if let Some(rest) = line.strip_prefix("dbguard listening on ") {
                base = rest.split_whitespace().next().map(str::to_owned);
            } else if line.trim().starts_with("eyJ") {
                token = Some(line.trim().to_owned());
            }
        }
        Self {
            child,
            base: base.unwrap_or_default(),
            token: token.unwrap_or_default(),
            log_bytes,
            suspicious,
            panicked,
            started,
            file: format!("{fixture}.wasm"),
        }
    }

    fn proc_status(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// Reads the probes and the cached health every 100 ms for [`WATCH`], each within
    /// [`ANSWER_WITHIN`], and measures what the server spends meanwhile.
    async fn watch(&self) -> Cost {
        let client = reqwest::Client::builder().timeout(ANSWER_WITHIN).build().expect("client");
        let baseline_rss = self.proc_status("VmRSS:");
        let mut cost = Cost { listening_ms: self.started.elapsed().as_millis(), ..Cost::default() };
        let mut max_rss = baseline_rss;
        let rounds = WATCH.as_millis() / 100;
        for _ in 0..rounds {
            for path in ["/livez", "/readyz"] {
                let response = client.get(format!("{}{path}", self.base)).send().await;
                let response = response.unwrap_or_else(|e| panic!("{path} did not answer within 1 s: {e}"));
                if path == "/livez" {
                    assert_eq!(response.status().as_u16(), 200, "a plugin never makes the process unlive");
                }
            }
            let health = client
                .get(format!("{}/api/database/health", self.base))
                .bearer_auth(&self.token)
                .send()
                .await
                .unwrap_or_else(|e| panic!("cached health did not answer within 1 s: {e}"));
            let body = health.bytes().await.expect("health body");
            let _: Value = serde_json::from_slice(&body).expect("the health JSON is valid");
            cost.max_health_bytes = cost.max_health_bytes.max(body.len());
            if cost.settled_ms.is_none() {
                let listed: Value = client
                    .get(format!("{}/api/plugins", self.base))
                    .bearer_auth(&self.token)
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("the plugin list did not answer within 1 s: {e}"))
                    .json()
                    .await
                    .expect("plugin list JSON");
                let settled = listed["data"].as_array().is_some_and(|rows| {
                    rows.iter().any(|row| row["name"] == self.file.as_str() && row["state"] != "active")
                });
                if settled {
                    cost.settled_ms = Some(self.started.elapsed().as_millis());
                }
            }
            max_rss = max_rss.max(self.proc_status("VmRSS:"));
            cost.max_threads = cost.max_threads.max(self.proc_status("Threads:"));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        cost.rss_growth_kib = max_rss.saturating_sub(baseline_rss);
        cost.log_bytes = self.log_bytes.load(Ordering::Relaxed);
        cost
    }

    async fn get(&self, path: &str) -> Value {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
        let response =
            client.get(format!("{}{path}", self.base)).bearer_auth(&self.token).send().await.expect("answer");
        response.json().await.expect("JSON")
    }

    /// The `GET /api/plugins` row of `fixture`.
    async fn plugin_row(&self, fixture: &str) -> Value {
        let listed = self.get("/api/plugins").await;
        let rows = listed["data"].as_array().cloned().unwrap_or_default();
        let file = format!("{fixture}.wasm");
        rows.into_iter().find(|row| row["name"] == file.as_str()).unwrap_or_else(|| panic!("{file} in {listed}"))
    }

    /// Sends SIGTERM and waits for the process to end, at most [`SHUTDOWN_BOUND`].
    fn terminate(&mut self) {
        let sent = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("kill");
        assert!(sent.success());
        let polls = SHUTDOWN_BOUND.as_millis() / 50;
        let asked = std::time::Instant::now();
        for _ in 0..polls {
            if self.child.try_wait().expect("wait").is_some() {
                println!("HOSTILE shutdown {} ms after SIGTERM", asked.elapsed().as_millis());
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("SIGTERM did not end the server within {SHUTDOWN_BOUND:?}");
    }

    /// The bounds every fixture must keep.
    fn assert_bounded(&self, fixture: &str, cost: &Cost) {
        println!(
            "HOSTILE {fixture:<28} rss_growth={} KiB threads<={} health<={} B log={} B listening={} ms settled={:?} ms",
            cost.rss_growth_kib,
            cost.max_threads,
            cost.max_health_bytes,
            cost.log_bytes,
            cost.listening_ms,
            cost.settled_ms
        );
        assert!(cost.max_health_bytes < MAX_HEALTH_BYTES, "{fixture}: health JSON of {} bytes", cost.max_health_bytes);
        assert!(cost.log_bytes < MAX_LOG_BYTES, "{fixture}: {} bytes of log", cost.log_bytes);
        assert!(cost.rss_growth_kib < MAX_RSS_GROWTH_KIB, "{fixture}: RSS grew {} KiB", cost.rss_growth_kib);
        assert!(cost.max_threads < MAX_THREADS, "{fixture}: {} threads", cost.max_threads);
        assert!(!self.panicked.load(Ordering::Relaxed), "{fixture}: panicked: {:?}", self.suspicious.lock().unwrap());
    }
}

/// Counts the bytes of `stream` and keeps suspicious lines; forwards lines to `lines` if given.
fn count_output(
    mut stream: impl Read + Send + 'static,
    bytes: Arc<AtomicU64>,
    suspicious: Arc<Mutex<Vec<String>>>,
    panicked: Arc<AtomicBool>,
    lines: Option<std::sync::mpsc::Sender<String>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buffer = vec![0u8; 64 << 10];
        let mut pending = Vec::new();
        loop {
            let Ok(read) = stream.read(&mut buffer) else { return };
            if read == 0 {
                return;
            }
            bytes.fetch_add(read as u64, Ordering::Relaxed);
            pending.extend_from_slice(&buffer[..read]);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line).trim_end().to_owned();
                let forged = line.starts_with(FORGED_PREFIX) || line.contains("\rFORGED");
                if line.contains("panicked") {
                    panicked.store(true, Ordering::Relaxed);
                }
                if (forged || line.contains("panicked")) && suspicious.lock().map(|s| s.len() < 20).unwrap_or(false) {
                    suspicious.lock().unwrap().push(line.chars().take(300).collect());
                }
                if let Some(lines) = &lines {
                    let _ = lines.send(line);
                }
            }
            // A line longer than the buffer is still counted, not kept.
            if pending.len() > (1 << 20) {
                pending.clear();
            }
        }
    })
}

/// The start of the line the `forge-log` fixture tries to forge.
const FORGED_PREFIX: &str = "2026-01-01T00:00:00.000000Z";

/// Runs `fixture` in a fresh server and returns the server after the watch, with its cost.
async fn run_fixture(fixture: &str) -> Option<(Serve, Cost, TestDb, tempfile::TempDir)> {
    let test = format!("plugins_hostile_{}", fixture.replace('-', "_"));
    let db = TestDb::create_or_skip(&test).await?;
    let reader = db.create_read_only_role("hostile_ro").await.expect("least-privilege role");
    let dir = tempfile::tempdir().expect("tempdir");
    let serve = Serve::start(&db, reader.url(), fixture, dir.path());
    let cost = serve.watch().await;
    serve.assert_bounded(fixture, &cost);
    Some((serve, cost, db, dir))
}

/// Asserts the fixture was refused at the gate with `code`, and that SIGTERM ends the server.
async fn assert_refused(fixture: &str, code: &str) {
    let _serial = ONE_AT_A_TIME.lock().await;
    let Some((mut serve, _cost, _db, _dir)) = run_fixture(fixture).await else { return };
    let row = serve.plugin_row(fixture).await;
    assert_eq!(row["state"], "refused", "{row}");
    let reason = row["last_fault"].as_str().unwrap_or_default();
    assert!(reason.starts_with(&format!("{code}: ")), "{fixture}: {row}");
    serve.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_that_sleeps_at_load_is_refused_at_once() {
    assert_refused("fixture-sleep-at-load", "blocking").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_message_is_refused() {
    assert_refused("fixture-huge-message", "limit_exceeded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_rows_are_refused_by_bytes() {
    assert_refused("fixture-huge-rows", "limit_exceeded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_flood_is_refused_at_its_query_budget() {
    assert_refused("fixture-query-flood", "limit_exceeded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_query_is_a_fault_cut_at_the_check_deadline() {
    assert_refused("fixture-slow-query", "slow_query").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spoofed_builtin_check_name_is_refused() {
    assert_refused("fixture-spoof-builtin", "invalid_decision").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_that_sleeps_after_the_gate_is_quarantined() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let fixture = "fixture-sleep-after-gate";
    let Some((mut serve, _cost, _db, _dir)) = run_fixture(fixture).await else { return };
    let row = serve.plugin_row(fixture).await;
    assert_eq!(row["state"], "quarantined", "{row}");
    assert!(row["last_fault"].as_str().unwrap_or_default().contains("may not sleep"), "{row}");
    assert!(row["faults"].as_u64().unwrap_or(0) >= 3, "{row}");
    serve.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_flood_is_refused_at_its_call_budget() {
    assert_refused("fixture-log-flood", "limit_exceeded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cr_lf_cannot_forge_log_lines() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let fixture = "fixture-forge-log";
    let Some((mut serve, _cost, _db, _dir)) = run_fixture(fixture).await else { return };
    let row = serve.plugin_row(fixture).await;
    assert_eq!(row["state"], "active", "{row}");
    let forged = serve.suspicious.lock().unwrap().clone();
    assert!(forged.iter().all(|line| !line.starts_with(FORGED_PREFIX)), "forged lines: {forged:#?}");
    let health = serve.get("/api/database/health").await;
    let check = health["data"]["checks"]
        .as_array()
        .and_then(|checks| checks.iter().find(|c| c["name"] == "plugin:fixture-forge-log.wasm/fixture:forge_log"))
        .cloned()
        .unwrap_or_else(|| panic!("the plugin's check, under its plugin's name: {health}"));
    assert_eq!(check["status"], "pass", "{check}");
    serve.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_answering_retry_after_zero_is_held_not_trusted() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let fixture = "fixture-retry-zero";
    let Some((mut serve, _cost, _db, _dir)) = run_fixture(fixture).await else { return };
    let row = serve.plugin_row(fixture).await;
    // Its verdicts are held to the class and the minimum spacing (the host's tests show how);
    // they are valid, so it stays active.
    assert_eq!((row["world"].as_str(), row["state"].as_str()), (Some("retry-policy"), Some("active")), "{row}");
    serve.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_hashes_stay_out_of_reach() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let fixture = "fixture-read-authid";
    let Some((mut serve, _cost, db, _dir)) = run_fixture(fixture).await else { return };
    let health = serve.get("/api/database/health").await.to_string();
    assert!(!health.contains("SCRAM-SHA-256$") && !health.contains("md5"), "hashes in the report: {health}");
    assert!(health.contains("permission denied"), "the check says why it failed: {health}");
    serve.terminate();

    // A login in pg_read_all_data could read them: the test endpoint refuses it, and says so.
    let reader = db.create_read_all_data_role("hostile_all").await.expect("role");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut serve = Serve::start(&db, reader.url(), fixture, dir.path());
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
    let answer: Value = client
        .post(format!("{}/api/database/test", serve.base))
        .bearer_auth(&serve.token)
        .json(&serde_json::json!({ "query": "SELECT rolpassword FROM pg_authid" }))
        .send()
        .await
        .expect("answer")
        .json()
        .await
        .expect("JSON");
    assert_eq!(answer["error"], "secret_catalog", "{answer}");
    assert!(answer["message"].as_str().unwrap_or_default().contains("pg_authid"), "{answer}");
    let health = serve.get("/api/database/health").await.to_string();
    assert!(!health.contains("SCRAM-SHA-256$") && !health.contains("md5"), "hashes in the report: {health}");
    serve.terminate();
}
