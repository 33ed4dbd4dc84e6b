//! The README's main job, as a process: `dbguard serve` on the SQLite default prints an admin
//! token and a curl line, and that curl line returns a healthy report; SIGTERM shuts it down
//! cleanly.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn serve_prints_a_token_and_a_curl_line_that_works() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_dbguard"))
        .arg("serve")
        .current_dir(dir.path())
        .env_remove("DATABASE_URL")
        .env_remove("DATABASE_URL_FILE")
        .env_remove("JWT_SECRET")
        .env_remove("JWT_SECRET_FILE")
        .env_remove("JWT_PUBLIC_KEY_FILE")
        .env_remove("DBGUARD_ENV")
        .env_remove("APP_ENV")
        .env("DBGUARD_BIND", "127.0.0.1:0")
        // The test reads "healthy"; a loaded machine must not make a slow first probe "degraded".
        .env("DB_HEALTH_DEGRADED_LATENCY", "30s")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start dbguard serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut printed = Vec::new();
    let curl_line = loop {
        let Some(Ok(line)) = lines.next() else {
            let _ = child.kill();
            panic!("serve exited before printing a curl line: {printed:#?}");
        };
        printed.push(line.clone());
        if line.trim_start().starts_with("curl ") {
            break line.trim().to_owned();
        }
    };
    assert!(printed.iter().any(|l| l.starts_with("dbguard listening on http://127.0.0.1:")), "{printed:#?}");
    assert!(printed.iter().any(|l| l.trim().starts_with("eyJ")), "no token printed: {printed:#?}");

    let output = Command::new("sh").arg("-c").arg(&curl_line).output();
    let body = match output {
        Ok(output) if output.status.success() => String::from_utf8_lossy(&output.stdout).into_owned(),
        other => {
            let _ = child.kill();
            panic!("the printed curl line failed: {other:?}");
        }
    };
    let value: serde_json::Value = serde_json::from_str(&body).expect("JSON from the curl line");
    assert_eq!(value["success"], true, "{body}");
    assert_eq!(value["data"]["status"], "healthy", "{body}");

    let terminated = Command::new("sh").arg("-c").arg(format!("kill -TERM {}", child.id())).status();
    assert!(terminated.is_ok_and(|s| s.success()));
    let mut waited = Duration::ZERO;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(waited < Duration::from_secs(30), "serve did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
        waited += Duration::from_millis(50);
    };
    assert!(status.success(), "serve exited with {status}");
}

#[test]
fn config_errors_exit_78_without_a_panic() {
    let output = Command::new(env!("CARGO_BIN_EXE_dbguard"))
        .arg("check")
        .env("DATABASE_URL", "mysql://user:hunter2-secret@db/x")
        .output()
        .expect("run dbguard check");
    assert_eq!(output.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("DATABASE_URL"), "{stderr}");
    assert!(!stderr.contains("hunter2-secret") && !stderr.contains("panicked"), "{stderr}");
}

#[test]
fn check_exits_by_health() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("c.db").display());
    let output = Command::new(env!("CARGO_BIN_EXE_dbguard"))
        .args(["check", "--json"])
        .env("DATABASE_URL", &url)
        // The exit code follows the status; a loaded machine can take longer than the default
        // 250 ms to create and switch a fresh file to WAL, which would read as degraded (exit 1).
        .env("DB_HEALTH_DEGRADED_LATENCY", "30s")
        .env_remove("DBGUARD_ENV")
        .output()
        .expect("run dbguard check");
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON report");
    assert_eq!(report["status"], "healthy");
    let down = Command::new(env!("CARGO_BIN_EXE_dbguard"))
        .arg("check")
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .env("DB_HEALTH_TIMEOUT", "1s")
        .env("DB_POOL_TIMEOUT", "1s")
        .env_remove("DBGUARD_ENV")
        .output()
        .expect("run dbguard check");
    assert_eq!(down.status.code(), Some(2), "{}", String::from_utf8_lossy(&down.stdout));
}
