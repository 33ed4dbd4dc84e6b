//! `dbguard-wasi`: dbguard's checks over SQLite as a WASI command.
//!
//! The same `dbguard-core` as the native host decides (configuration, error classes, retry
//! schedule, health judgement); this program only observes the database through sea-orm
//! (sync, rusqlite, bundled SQLite), reads the WASI clocks and sleeps. Results are JSON on
//! stdout; errors are JSON (`success`, `error`, `message`, `retry_count`, `last_attempt`) on
//! stderr. Exit codes: 0 healthy / ok, 1 degraded, 2 unhealthy or database error, 64 usage.

mod cli;
mod db;
mod driver;
mod error;
mod probe;
mod query;
#[cfg(test)]
mod tests;

use std::io::Write;
use std::process::ExitCode;

use dbguard_core::DbConfig;
use dbguard_core::config::vars;

use crate::cli::Command;
use crate::db::Target;
use crate::driver::Clock;
use crate::error::{EXIT_OK, HostError};

fn main() -> ExitCode {
    let clock = Clock::start();
    match run(clock) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            print_error(&err);
            ExitCode::from(err.exit_code())
        }
    }
}

fn run(clock: Clock) -> Result<u8, HostError> {
    let command = Command::parse(std::env::args_os().skip(1))?;
    if command == Command::Help {
        print_line(cli::USAGE)?;
        return Ok(EXIT_OK);
    }
    let config = DbConfig::from_vars(environment()?)?;
    let target = Target::from_config(&config)?;
    match command {
        Command::Check => {
            let outcome = probe::check(&config, &target, clock);
            print_json(&outcome.report)?;
            if let Some(err) = &outcome.error {
                print_error(err);
            }
            Ok(outcome.report.status.exit_code())
        }
        Command::Info => {
            print_json(&config.connection_info())?;
            Ok(EXIT_OK)
        }
        Command::Query { sql, max_rows } => {
            print_json(&query::run(&config, &target, clock, &sql, max_rows)?)?;
            Ok(EXIT_OK)
        }
        Command::Help => Ok(EXIT_OK),
    }
}

/// The WASI environment as UTF-8 pairs for core. Entries that are not UTF-8 are left out,
/// unless they are dbguard's own variables, which are an error rather than silently unset.
fn environment() -> Result<Vec<(String, String)>, HostError> {
    let mut pairs = Vec::new();
    for (name, value) in std::env::vars_os() {
        match (name.into_string(), value.into_string()) {
            (Ok(name), Ok(value)) => pairs.push((name, value)),
            (Ok(name), Err(_)) if vars::ALL.contains(&name.as_str()) => {
                return Err(HostError::Usage(format!("{name} is not valid UTF-8")));
            }
            _ => {}
        }
    }
    Ok(pairs)
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<(), HostError> {
    let text = serde_json::to_string(value).map_err(|err| HostError::Output(err.to_string()))?;
    print_line(&text)
}

fn print_line(text: &str) -> Result<(), HostError> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}").and_then(|()| stdout.flush()).map_err(|err| HostError::Output(err.to_string()))
}

fn print_error(err: &HostError) {
    let body = serde_json::to_string(&err.body())
        .unwrap_or_else(|_| format!("{{\"success\":false,\"message\":{:?}}}", err.to_string()));
    let mut stderr = std::io::stderr().lock();
    // Nowhere left to report a failure to write stderr.
    let _ = writeln!(stderr, "{body}");
    if matches!(err, HostError::Usage(_)) {
        let _ = writeln!(stderr, "{}", cli::USAGE);
    }
}
