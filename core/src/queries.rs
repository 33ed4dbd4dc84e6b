//! Query analytics (`GET /api/database/queries`): what the database's own statistics say about
//! the workload, each finding with a one-line suggestion, and the redaction that keeps query
//! text from carrying secrets.
//!
//! The host reads the statistics (`pg_stat_statements`, `pg_stat_user_tables`, …, or SQLite's
//! `PRAGMA`s); the thresholds, suggestions and redaction live here, where they are tested
//! without a database.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::DatabaseType;

/// A statement is slow on average above this many milliseconds (PgHero's default).
pub const SLOW_MEAN_MS: f64 = 20.0;
/// A statement is judged once it has run at least this many times.
pub const SLOW_MIN_CALLS: u64 = 100;
/// Reads that find their pages in shared buffers less often than this go to disk too much.
pub const LOW_HIT_RATIO: f64 = 0.99;
/// Tables smaller than this are cheap to scan; their sequential scans are not worth an index.
pub const SEQ_SCAN_MIN_ROWS: i64 = 10_000;
/// Sessions active, or idle in a transaction, for longer than this (milliseconds) are listed.
pub const LONG_SESSION_MS: f64 = 60_000.0;
/// A SQLite file with a larger share of free pages is worth a `VACUUM`.
pub const SQLITE_FREE_SHARE: f64 = 0.25;

/// What the database's statistics say about the workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct QueryAnalytics {
    /// The engine.
    pub database_type: DatabaseType,
    /// The statements that took the most total time, from `pg_stat_statements`; `null` when
    /// the extension is not available (see `statements_note`) and on SQLite.
    pub top_statements: Option<Vec<StatementStat>>,
    /// Why `top_statements` is missing and how to get it.
    pub statements_note: Option<String>,
    /// Tables read mostly by sequential scans.
    pub sequential_scans: Vec<SequentialScanTable>,
    /// Indexes never used since the statistics were last reset (not unique, not primary keys).
    pub unused_indexes: Vec<UnusedIndex>,
    /// Share of table page reads served from shared buffers, over the whole database.
    pub cache_hit_ratio: Option<f64>,
    /// What the cache hit ratio suggests, when it is low.
    pub cache_suggestion: Option<String>,
    /// Sessions running a statement, or idle inside a transaction, for longer than a minute.
    pub long_sessions: Vec<SessionStat>,
    /// SQLite's file facts; `null` on PostgreSQL.
    pub sqlite: Option<SqliteFacts>,
}

impl QueryAnalytics {
    /// An empty report for `database_type`, to be filled by the host.
    pub fn new(database_type: DatabaseType) -> Self {
        Self {
            database_type,
            top_statements: None,
            statements_note: None,
            sequential_scans: Vec::new(),
            unused_indexes: Vec::new(),
            cache_hit_ratio: None,
            cache_suggestion: None,
            long_sessions: Vec::new(),
            sqlite: None,
        }
    }
}

/// One normalised statement of `pg_stat_statements`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StatementStat {
    /// The statement as the extension normalised it (constants as `$1`), with any literal that
    /// remains replaced by `'?'`.
    pub query: String,
    /// Times it ran.
    pub calls: u64,
    /// Total execution time, in milliseconds.
    pub total_time_ms: f64,
    /// Mean execution time, in milliseconds.
    pub mean_time_ms: f64,
    /// Rows it returned or changed, in all.
    pub rows: u64,
    /// Share of its page reads found in shared buffers; `null` when it read no page.
    pub cache_hit_ratio: Option<f64>,
    /// What to look at, if anything stands out.
    pub suggestion: Option<String>,
}

impl StatementStat {
    /// PgHero's rules: slow on average once it has run often, or reading from disk.
    pub fn suggest(&mut self) {
        self.suggestion = if self.calls >= SLOW_MIN_CALLS && self.mean_time_ms >= SLOW_MEAN_MS {
            Some(format!(
                "slow on average ({:.1} ms over {} calls): EXPLAIN ANALYZE it and look for a sequential scan or a missing index",
                self.mean_time_ms, self.calls
            ))
        } else if self.cache_hit_ratio.is_some_and(|ratio| ratio < LOW_HIT_RATIO) && self.calls >= SLOW_MIN_CALLS {
            Some("reads many pages from disk: an index would read fewer, or shared_buffers is too small".to_owned())
        } else {
            None
        };
    }
}

/// A table and how it is read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SequentialScanTable {
    /// `schema.table`.
    pub table: String,
    /// Sequential scans since the statistics were reset.
    pub sequential_scans: u64,
    /// Rows those scans read.
    pub rows_read_sequentially: u64,
    /// Index scans since the statistics were reset.
    pub index_scans: u64,
    /// Live rows now (estimated).
    pub live_rows: i64,
    /// Table size on disk, with indexes and TOAST, in bytes.
    pub size_bytes: i64,
    /// What to do about it.
    pub suggestion: Option<String>,
}

impl SequentialScanTable {
    /// Whether the table belongs in the report: scanned sequentially more often than through an
    /// index, and large enough for that to cost.
    pub fn stands_out(&self) -> bool {
        self.sequential_scans > self.index_scans && self.live_rows >= SEQ_SCAN_MIN_ROWS
    }

    /// Adds the suggestion.
    pub fn suggest(&mut self) {
        self.suggestion = self.stands_out().then(|| {
            format!(
                "{} rows read by {} sequential scans: an index on the columns its queries filter on would read a few pages instead",
                self.rows_read_sequentially, self.sequential_scans
            )
        });
    }
}

/// An index nothing has used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UnusedIndex {
    /// `schema.table`.
    pub table: String,
    /// The index.
    pub index: String,
    /// Its size on disk, in bytes.
    pub size_bytes: i64,
    /// What to do about it.
    pub suggestion: String,
}

impl UnusedIndex {
    /// An unused index with its suggestion.
    pub fn new(table: String, index: String, size_bytes: i64) -> Self {
        let suggestion = format!(
            "never used since the statistics were reset: unless a replica or a rare job needs it, DROP INDEX CONCURRENTLY {index} saves {size_bytes} bytes and its cost on every write"
        );
        Self { table, index, size_bytes, suggestion }
    }
}

/// A session that has been busy, or idle in a transaction, for long.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SessionStat {
    /// The backend's process id.
    pub pid: i32,
    /// `active` or `idle in transaction` (or `idle in transaction (aborted)`).
    pub state: String,
    /// Time since its current (or last) statement started, in milliseconds.
    pub statement_ms: f64,
    /// Time since its transaction started, in milliseconds, if one is open.
    pub transaction_ms: Option<f64>,
    /// Its statement, redacted; `null` when it is not a plain query (see [`redact_query`]).
    pub query: Option<String>,
    /// What to do about it.
    pub suggestion: String,
}

impl SessionStat {
    /// The suggestion for a session in `state`.
    pub fn suggestion_for(state: &str) -> String {
        if state.starts_with("idle in transaction") {
            "holds its locks and an old snapshot while idle: find the caller that left the transaction open; idle_in_transaction_session_timeout ends such sessions".to_owned()
        } else {
            "running for over a minute: check that this is expected; statement_timeout caps such statements".to_owned()
        }
    }
}

/// SQLite's file facts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SqliteFacts {
    /// Pages in the file.
    pub page_count: i64,
    /// Bytes per page.
    pub page_size: i64,
    /// Unused pages inside the file.
    pub freelist_count: i64,
    /// The journal mode (`wal`, `delete`, …).
    pub journal_mode: String,
    /// What to do, if anything stands out.
    pub suggestions: Vec<String>,
}

impl SqliteFacts {
    /// The facts with their suggestions.
    pub fn new(page_count: i64, page_size: i64, freelist_count: i64, journal_mode: String) -> Self {
        let mut suggestions = Vec::new();
        if page_count > 0 && freelist_count as f64 / page_count as f64 > SQLITE_FREE_SHARE {
            suggestions.push(format!(
                "{freelist_count} of {page_count} pages are free: VACUUM would give {} bytes back",
                freelist_count.saturating_mul(page_size)
            ));
        }
        if !journal_mode.eq_ignore_ascii_case("wal") && !journal_mode.eq_ignore_ascii_case("memory") {
            suggestions.push(format!("journal mode {journal_mode}: WAL lets readers run while one connection writes"));
        }
        Self { page_count, page_size, freelist_count, journal_mode, suggestions }
    }
}

/// The suggestion for a database-wide cache hit ratio, when it is low.
pub fn cache_suggestion(ratio: Option<f64>) -> Option<String> {
    ratio.filter(|ratio| *ratio < LOW_HIT_RATIO).map(|ratio| {
        format!(
            "{:.1} % of table reads come from shared buffers: the working set is larger than shared_buffers, or large scans push it out",
            ratio * 100.0
        )
    })
}

/// Statement kinds whose text may be shown: queries and data changes. Utility statements
/// (`ALTER ROLE … PASSWORD '…'`, `CREATE USER`, `COPY`, `SET`) are left out whole, because
/// `pg_stat_statements` keeps them verbatim.
const SHOWN_KINDS: &[&str] = &["select", "insert", "update", "delete", "with", "merge", "values", "table"];

/// `text` fit to show: `None` unless it is a query or a data change, and with every string
/// literal (`'…'`, `E'…'`, `$tag$…$tag$`) replaced by `'?'`, so that a constant the extension
/// did not normalise cannot show a secret. Identifiers in double quotes are kept.
pub fn redact_query(text: &str) -> Option<String> {
    let first_word: String = text
        .trim_start_matches(|c: char| c.is_whitespace() || c == '(')
        .chars()
        .take_while(char::is_ascii_alphabetic)
        .collect::<String>()
        .to_ascii_lowercase();
    if !SHOWN_KINDS.contains(&first_word.as_str()) {
        return None;
    }
    Some(replace_literals(text))
}

fn replace_literals(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut index = 0;
    while index < chars.len() {
        let c = chars[index];
        let escaped_string = (c == 'E' || c == 'e') && chars.get(index + 1) == Some(&'\'');
        if c == '\'' || escaped_string {
            index += if escaped_string { 2 } else { 1 };
            // Skip to the closing quote: '' is a quote inside; in E'' strings \' is one too.
            while index < chars.len() {
                if escaped_string && chars[index] == '\\' {
                    index += 2;
                    continue;
                }
                if chars[index] == '\'' {
                    if chars.get(index + 1) == Some(&'\'') {
                        index += 2;
                        continue;
                    }
                    break;
                }
                index += 1;
            }
            out.push_str("'?'");
            index += 1;
        } else if c == '"' {
            // A quoted identifier: kept as it is.
            out.push(c);
            index += 1;
            while index < chars.len() {
                out.push(chars[index]);
                index += 1;
                if chars[index - 1] == '"' {
                    break;
                }
            }
        } else if c == '$'
            && let Some(tag_end) = dollar_tag_end(&chars, index)
        {
            let tag: String = chars[index..=tag_end].iter().collect();
            let body_start = tag_end + 1;
            let rest: String = chars[body_start..].iter().collect();
            match rest.find(&tag) {
                Some(offset) => index = body_start + rest[..offset].chars().count() + tag.chars().count(),
                None => index = chars.len(),
            }
            out.push_str("'?'");
        } else {
            out.push(c);
            index += 1;
        }
    }
    out
}

/// The index of the closing `$` of a dollar-quote tag (`$$` or `$name$`) starting at `start`;
/// `None` for a parameter such as `$1`.
fn dollar_tag_end(chars: &[char], start: usize) -> Option<usize> {
    let mut index = start + 1;
    while index < chars.len() {
        match chars[index] {
            '$' => return Some(index),
            c if c.is_ascii_alphabetic() || c == '_' || (c.is_ascii_digit() && index > start + 1) => index += 1,
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utility_statements_are_left_out_whole() {
        for text in [
            "ALTER ROLE app PASSWORD 'hunter2'",
            "create user x with password 'pw'",
            "SET app.key = 'secret'",
            "COPY t FROM '/etc/passwd'",
            "<insufficient privilege>",
            "",
        ] {
            assert_eq!(redact_query(text), None, "{text}");
        }
    }

    #[test]
    fn literals_are_replaced_and_parameters_kept() {
        assert_eq!(
            redact_query("SELECT * FROM t WHERE a = $1 AND b = 'it''s secret' AND c = E'x\\'y'").as_deref(),
            Some("SELECT * FROM t WHERE a = $1 AND b = '?' AND c = '?'")
        );
        assert_eq!(
            redact_query("  (select $body$ secret ; $body$, $$ two $$ FROM \"Weird 'Name'\")").as_deref(),
            Some("  (select '?', '?' FROM \"Weird 'Name'\")")
        );
        assert_eq!(
            redact_query("WITH x AS (SELECT 1) SELECT * FROM x").as_deref(),
            Some("WITH x AS (SELECT 1) SELECT * FROM x")
        );
        // An unterminated literal hides the rest rather than showing it.
        assert_eq!(redact_query("SELECT 'never closed").as_deref(), Some("SELECT '?'"));
    }

    #[test]
    fn suggestions_follow_the_thresholds() {
        let mut slow = StatementStat {
            query: "SELECT 1".into(),
            calls: SLOW_MIN_CALLS,
            total_time_ms: 5000.0,
            mean_time_ms: SLOW_MEAN_MS,
            rows: 1,
            cache_hit_ratio: Some(1.0),
            suggestion: None,
        };
        slow.suggest();
        assert!(slow.suggestion.as_deref().is_some_and(|s| s.starts_with("slow on average")));
        slow.calls = SLOW_MIN_CALLS - 1;
        slow.suggest();
        assert_eq!(slow.suggestion, None, "too few calls to judge");

        let mut table = SequentialScanTable {
            table: "public.t".into(),
            sequential_scans: 10,
            rows_read_sequentially: 200_000,
            index_scans: 0,
            live_rows: SEQ_SCAN_MIN_ROWS,
            size_bytes: 1,
            suggestion: None,
        };
        table.suggest();
        assert!(table.stands_out() && table.suggestion.is_some());
        table.live_rows = SEQ_SCAN_MIN_ROWS - 1;
        table.suggest();
        assert!(!table.stands_out() && table.suggestion.is_none(), "small tables are cheap to scan");

        assert_eq!(cache_suggestion(Some(0.999)), None);
        assert!(cache_suggestion(Some(0.5)).is_some_and(|s| s.starts_with("50.0 %")));
        let sqlite = SqliteFacts::new(100, 4096, 30, "delete".into());
        assert_eq!(sqlite.suggestions.len(), 2, "{:?}", sqlite.suggestions);
        assert!(SqliteFacts::new(100, 4096, 10, "wal".into()).suggestions.is_empty());
    }
}
