//! The command line: `check`, `info`, `query <sql> [--max-rows N]`, `help`.

use std::ffi::OsString;

use crate::error::HostError;

/// Printed with every usage error and by `help`.
pub(crate) const USAGE: &str = "\
usage: dbguard-wasi <command>
  check                          probe the SQLite database; exit 0 healthy, 1 degraded, 2 unhealthy
  info                           connection info (never a password)
  query <sql> [--max-rows N]     run one read-only statement; N in 1..=1000, default 100
  help                           this text
configuration: DATABASE_URL=sqlite:///path/in/the/sandbox.db (and dbguard's DB_* variables)";

/// Rows returned by `query` when `--max-rows` is not given.
pub(crate) const DEFAULT_MAX_ROWS: u32 = 100;
/// The largest accepted `--max-rows`.
pub(crate) const MAX_ROWS_LIMIT: u32 = 1000;

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command {
    /// Probe the database and print a health report.
    Check,
    /// Print the connection info.
    Info,
    /// Run one read-only statement.
    Query {
        /// The statement.
        sql: String,
        /// Row cap.
        max_rows: u32,
    },
    /// Print usage.
    Help,
}

impl Command {
    /// Parses the arguments after the program name. Arguments that are not UTF-8 are usage
    /// errors, not panics.
    pub(crate) fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Self, HostError> {
        let mut args = args
            .into_iter()
            .map(|arg| arg.into_string().map_err(|bad| usage(format!("argument {bad:?} is not UTF-8"))))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter();
        let command = match args.next().as_deref() {
            None => return Err(usage("no command given")),
            Some("check") => Self::Check,
            Some("info") => Self::Info,
            Some("help" | "--help" | "-h") => Self::Help,
            Some("query") => return Self::parse_query(args),
            Some(other) => return Err(usage(format!("unknown command {other:?}"))),
        };
        match args.next() {
            None => Ok(command),
            Some(extra) => Err(usage(format!("unexpected argument {extra:?}"))),
        }
    }

    fn parse_query(args: impl Iterator<Item = String>) -> Result<Self, HostError> {
        let mut sql = None;
        let mut max_rows = None;
        let mut args = args.peekable();
        while let Some(arg) = args.next() {
            let value = if arg == "--max-rows" {
                Some(args.next().ok_or_else(|| usage("--max-rows needs a value"))?)
            } else {
                arg.strip_prefix("--max-rows=").map(str::to_owned)
            };
            match value {
                Some(value) if max_rows.is_none() => max_rows = Some(parse_max_rows(&value)?),
                Some(_) => return Err(usage("--max-rows given twice")),
                None if arg.starts_with("--") => return Err(usage(format!("unknown option {arg:?}"))),
                None if sql.is_none() => sql = Some(arg),
                None => return Err(usage("query takes one statement: quote it as a single argument")),
            }
        }
        let sql = sql.filter(|s| !s.trim().is_empty()).ok_or_else(|| usage("query needs a statement"))?;
        Ok(Self::Query { sql, max_rows: max_rows.unwrap_or(DEFAULT_MAX_ROWS) })
    }
}

fn parse_max_rows(value: &str) -> Result<u32, HostError> {
    match value.parse::<u32>() {
        Ok(n) if (1..=MAX_ROWS_LIMIT).contains(&n) => Ok(n),
        _ => Err(usage(format!(
            "--max-rows: {value:?} is not valid: expected a whole number from 1 to {MAX_ROWS_LIMIT}"
        ))),
    }
}

fn usage(message: impl Into<String>) -> HostError {
    HostError::Usage(message.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, HostError> {
        Command::parse(args.iter().map(OsString::from))
    }

    #[test]
    fn commands() {
        assert_eq!(parse(&["check"]), Ok(Command::Check));
        assert_eq!(parse(&["info"]), Ok(Command::Info));
        assert_eq!(parse(&["query", "SELECT 1"]), Ok(Command::Query { sql: "SELECT 1".into(), max_rows: 100 }));
        assert_eq!(
            parse(&["query", "--max-rows=5", "SELECT 1"]),
            Ok(Command::Query { sql: "SELECT 1".into(), max_rows: 5 })
        );
        assert_eq!(
            parse(&["query", "SELECT 1", "--max-rows", "1000"]),
            Ok(Command::Query { sql: "SELECT 1".into(), max_rows: 1000 })
        );
    }

    #[test]
    fn bad_invocations_are_usage_errors() {
        for args in [
            &[][..],
            &["nope"],
            &["check", "extra"],
            &["query"],
            &["query", "  "],
            &["query", "SELECT 1", "--max-rows", "0"],
            &["query", "SELECT 1", "--max-rows", "1001"],
            &["query", "SELECT 1", "--max-rows"],
            &["query", "SELECT 1", "SELECT 2"],
            &["query", "SELECT 1", "--limit", "3"],
        ] {
            let err = parse(args).expect_err("usage error");
            assert_eq!(err.exit_code(), 64, "{args:?}");
        }
    }
}
