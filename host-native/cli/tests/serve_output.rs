//! What `dbguard serve` writes into a pipe: no terminal escape codes in either profile, and in
//! production one JSON object per line, with the request id on the lines logged inside a
//! request.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

/// A JWT secret for the production profile (random-looking, 40 bytes).
const SECRET: &str = "serve-output-secret-6d1f0a9b8c7e5d4c3b2a";

/// How long the test waits for the server's first line.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Kills the server when the test ends, however it ends.
struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The running server and the lines of its stdout and stderr.
struct Started {
    serve: Serve,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
}

fn start(dir: &std::path::Path, production: bool) -> Started {
    let mut serve = serve(dir, production);
    let stdout = lines_of(serve.0.stdout.take().expect("stdout"));
    let stderr = lines_of(serve.0.stderr.take().expect("stderr"));
    Started { serve, stdout, stderr }
}

fn serve(dir: &std::path::Path, production: bool) -> Serve {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dbguard"));
    command
        .arg("serve")
        .current_dir(dir)
        .env_remove("DATABASE_URL_FILE")
        .env_remove("JWT_SECRET_FILE")
        .env_remove("JWT_PUBLIC_KEY_FILE")
        .env_remove("APP_ENV")
        .env_remove("DBGUARD_LOG_FORMAT")
        .env_remove("DBGUARD_LOG")
        .env("DATABASE_URL", "sqlite://data/output.db")
        .env("DBGUARD_BIND", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if production {
        command.env("DBGUARD_ENV", "production").env("JWT_SECRET", SECRET);
    } else {
        command.env("DBGUARD_ENV", "development").env_remove("JWT_SECRET");
    }
    Serve(command.spawn().expect("start dbguard serve"))
}

/// Forwards each line of `stream` to a channel.
fn lines_of(stream: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}

/// Sends a request without a token: it is refused, and the refusal is logged inside the
/// request's span.
fn refused_request(address: &str) {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(address).expect("connect to serve");
    stream.set_read_timeout(Some(Duration::from_secs(30))).expect("read timeout");
    write!(stream, "GET /api/database/health HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")
        .expect("send the request");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 401"), "a request without a token is refused: {answer}");
}

/// Ends the server with SIGTERM and returns every line it wrote that was not read yet.
fn terminate(mut serve: Serve, stdout: mpsc::Receiver<String>, stderr: mpsc::Receiver<String>) -> Vec<String> {
    let terminated = Command::new("kill").arg("-TERM").arg(serve.0.id().to_string()).status();
    assert!(terminated.is_ok_and(|s| s.success()), "SIGTERM sent");
    let status = serve.0.wait().expect("wait for serve");
    assert!(status.success(), "serve exited with {status}");
    // The process is gone, so both readers reach the end of their pipe.
    stdout.iter().chain(stderr.iter()).collect()
}

fn assert_no_escape_codes(lines: &[String]) {
    for line in lines {
        assert!(!line.contains('\u{1b}'), "an escape code in a pipe: {line:?}");
    }
}

#[test]
fn development_output_has_no_escape_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Started { serve, stdout, stderr } = start(dir.path(), false);
    let mut seen = Vec::new();
    let address = loop {
        let line = stdout.recv_timeout(START_TIMEOUT).expect("serve prints where it listens");
        seen.push(line.clone());
        if let Some(rest) = line.strip_prefix("dbguard listening on http://") {
            break rest.split_whitespace().next().expect("an address").to_owned();
        }
    };
    refused_request(&address);
    seen.extend(terminate(serve, stdout, stderr));
    assert!(seen.iter().any(|line| line.contains("request refused")), "the refusal was logged: {seen:#?}");
    assert_no_escape_codes(&seen);
}

#[test]
fn production_output_is_json_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Started { serve, stdout, stderr } = start(dir.path(), true);
    let mut seen = Vec::new();
    let address = loop {
        let line = stderr.recv_timeout(START_TIMEOUT).expect("serve logs where it listens");
        seen.push(line.clone());
        let event: Value = serde_json::from_str(&line).unwrap_or_else(|err| panic!("not JSON ({err}): {line}"));
        if event["fields"]["message"] == "dbguard listening" {
            break event["fields"]["address"].as_str().expect("the address field").to_owned();
        }
    };
    refused_request(&address);
    seen.extend(terminate(serve, stdout, stderr));
    assert_no_escape_codes(&seen);
    let events: Vec<Value> = seen
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("not a JSON line ({err}): {line}")))
        .collect();
    let refusal = events
        .iter()
        .find(|event| event["fields"]["message"] == "request refused")
        .unwrap_or_else(|| panic!("the refusal was logged: {seen:#?}"));
    let request_id = refusal["span"]["request_id"].as_str().unwrap_or_default();
    assert!(!request_id.is_empty() && request_id != "-", "the refusal carries its request id: {refusal}");
    assert_eq!(refusal["span"]["path"], "/api/database/health", "{refusal}");
    assert_eq!(refusal["span"]["route"], "/api/database/health", "{refusal}");
    assert!(events.iter().any(|event| event["fields"]["message"] == "shut down cleanly"), "{seen:#?}");
}
