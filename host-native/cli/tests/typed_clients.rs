//! The typed clients are a tested product: `schemas/clients/check.sh` generates the TypeScript
//! (openapi-typescript + openapi-fetch) and Python (datamodel-code-generator, pydantic v2)
//! clients from `schemas/openapi.json`, type-checks the TypeScript sample, and runs both against
//! a real `dbguard serve` on PostgreSQL with a least-privilege `DB_TEST_URL` login. Every route
//! must answer what the document says, with the statuses listed below seen by both clients.
//!
//! Needs node, npm and python3 with venv; without them the test skips, and with
//! `DBGUARD_REQUIRE_ALL=1` it fails.

// The HTTP API tests' support: the JWT secret and token minting.
#[path = "../../http/tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use dbguard_tests::TestDb;
use serde_json::json;

/// What both clients must have seen answered as documented: `(status, method, path)` as they
/// print it after `ok`.
const COVERED: &[(u16, &str, &str)] = &[
    (200, "GET", "/api/database/health"),
    (200, "GET", "/api/database/health?force=true"),
    (400, "GET", "/api/database/health?force=maybe"),
    (200, "GET", "/api/database/info"),
    (200, "GET", "/api/database/status"),
    (200, "GET", "/api/database/queries"),
    (200, "POST", "/api/database/test"),
    (400, "POST", "/api/database/test"),
    (403, "POST", "/api/database/test"),
    (200, "POST", "/api/database/reconnect"),
    (200, "GET", "/api/plugins"),
    (409, "POST", "/api/plugins/reload"),
    (200, "GET", "/livez"),
    (200, "GET", "/readyz"),
    (200, "GET", "/api/openapi.json"),
    (200, "GET", "/metrics"),
    (404, "GET", "/api/no-such-route"),
    (405, "DELETE", "/api/database/health"),
    (405, "POST", "/livez"),
];

/// A running `dbguard serve`, killed on drop however the test ends.
struct Serve {
    child: Child,
    base: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serve {
    /// Starts the server on `db` with `test_url` as `DB_TEST_URL`, no plugins and open metrics.
    fn start(db: &TestDb, test_url: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_dbguard"))
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", db.url())
            .env("DB_TEST_URL", test_url)
            .env("JWT_SECRET", support::SECRET)
            .env("DBGUARD_BIND", "127.0.0.1:0")
            .env("DB_ECHO", "false")
            // The clients read healthy or degraded as 200; a loaded machine must not make a
            // probe slow enough to matter either way.
            .env("DB_HEALTH_DEGRADED_LATENCY", "30s")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dbguard serve");
        let stdout = child.stdout.take().expect("stdout");
        let (sender, receiver) = std::sync::mpsc::channel::<String>();
        // Drains stdout for the server's whole life, so that it never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = sender.send(line);
            }
        });
        let base = loop {
            let line = receiver.recv_timeout(Duration::from_secs(60)).expect("serve prints its address");
            if let Some(rest) = line.strip_prefix("dbguard listening on ") {
                break rest.split_whitespace().next().unwrap_or_default().to_owned();
            }
        };
        Self { child, base }
    }
}

/// The first of node, npm and python3 (with venv) that is missing, if any.
fn missing_tool() -> Option<String> {
    let probes: [(&str, &[&str]); 3] =
        [("node", &["--version"]), ("npm", &["--version"]), ("python3", &["-c", "import venv, ensurepip"])];
    probes.iter().find_map(|(program, args)| {
        let ran = Command::new(program).args(*args).stdout(Stdio::null()).stderr(Stdio::null()).status();
        match ran {
            Ok(status) if status.success() => None,
            _ => Some(format!(
                "`{program} {}` failed: the typed-client check needs node, npm and python3-venv",
                args.join(" ")
            )),
        }
    })
}

fn token(scope: &str) -> String {
    let exp = support::now_secs() + 3600;
    support::hs256(support::SECRET.as_bytes(), &json!({ "sub": "typed-clients", "scope": scope, "exp": exp }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_clients_match_every_route() {
    const TEST: &str = "generated_clients_match_every_route";
    if let Some(reason) = missing_tool() {
        return dbguard_tests::skip(TEST, &reason);
    }
    let Some(db) = TestDb::create_or_skip(TEST).await else { return };
    let reader = db.create_read_only_role("clients_ro").await.expect("least-privilege role");
    let serve = Serve::start(&db, reader.url());

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../schemas/clients/check.sh");
    let output = tokio::task::spawn_blocking(move || {
        Command::new("bash")
            .arg(&script)
            .args([serve.base.as_str(), &token("db:read"), &token("db:read db:admin")])
            .output()
            .map(|output| (output, serve))
    })
    .await
    .expect("join")
    .expect("run schemas/clients/check.sh");
    let (output, serve) = output;
    drop(serve);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let shown = format!("--- stdout\n{stdout}\n--- stderr\n{stderr}");
    // What each client checked, for `--nocapture`.
    println!("{stdout}");
    assert!(output.status.success(), "check.sh failed ({}):\n{shown}", output.status);
    for client in ["ts", "py"] {
        assert!(stdout.contains(&format!("[{client}] all checks passed")), "{client} did not pass:\n{shown}");
        for (status, method, path) in COVERED {
            let seen = format!("[{client}] ok {status} {method} {path}");
            assert!(
                stdout.lines().any(|line| line.starts_with(&seen) && line[seen.len()..].starts_with([' ', ':'])),
                "{client} did not check {status} {method} {path}:\n{shown}"
            );
        }
    }
    assert!(!stdout.contains("FAIL"), "{shown}");
}
