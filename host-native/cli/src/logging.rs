//! Where and how the `dbguard` command logs.

use std::io::IsTerminal;

use dbguard_core::LogFormat;

/// `info`, but PostgreSQL's NOTICE messages (sqlx logs them at info) only from `warn`: the
/// migrator's `CREATE TABLE IF NOT EXISTS` would otherwise print "already exists, skipping" on
/// every run.
pub const DEFAULT_FILTER: &str = "info,sqlx::postgres::notice=warn";

/// Logs to stderr in `format`, filtered by `DBGUARD_LOG` (default [`DEFAULT_FILTER`]). Colour only when
/// stderr is a terminal, so files and pipes get no escape codes. JSON lines carry the fields
/// of the current span (an HTTP request's `request_id`, method and path) and every event's own
/// fields (a failure's `class`).
///
/// Secrets never reach a log line: configuration types redact themselves and driver errors
/// are scrubbed before logging.
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DBGUARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second call (tests driving the CLI in one process) keeps the first subscriber.
    let _ = match format {
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(false).try_init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).try_init(),
    };
}
