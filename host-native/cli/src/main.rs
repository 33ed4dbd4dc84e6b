//! The `dbguard` command: `serve`, `check`, `info`, `schemas`, `token`.

use std::process::ExitCode;

use dbguard_cli::cli;

fn main() -> ExitCode {
    init_logging();
    cli::Cli::run()
}

/// Logs to stderr, filtered by `DBGUARD_LOG` (default `info`). Secrets never reach a log line:
/// configuration types redact themselves and driver errors are scrubbed before logging.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DBGUARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}
