//! The ledger workload's bookkeeping: what callers saw, what the database kept, and the
//! comparison between the two after a fault drill.
//!
//! Workers write rows keyed by an idempotency key (`w<worker>-<seq>`) and record each call's
//! [`Outcome`]; the keys of acknowledged writes go into a list; after the drill,
//! [`Ledger::audit`] counts the table's rows per key against that list. Every row has its own
//! serial id, so the table itself can hold a replayed write. Which statement a write runs decides
//! whether it can:
//!
//! - [`APPEND_SQL`] (for non-idempotent calls) is a plain insert: a write executed twice leaves
//!   two rows with one key, and the audit counts it as a duplicate.
//! - [`UPSERT_SQL`] (for idempotent calls) inserts nothing when the key is already there, which
//!   needs the unique index of [`LedgerKind::Keyed`]; a replay is then absorbed and shows only as
//!   a write that affected no row, so the audit reports no duplicate figure at all.
//!
//! Nothing here depends on the dbguard manager, so the same ledger can measure it and the plain
//! drivers it is compared with.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

/// What one call looked like to its caller.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Acknowledged: the write committed.
    Ok,
    /// Failed with an error of this class (e.g. `"connection"`, `"timeout"`, `"53300"`).
    Error(String),
    /// The connection died after the commit was sent: it may or may not have happened.
    OutcomeUnknown,
}

/// Whether the ledger table can hold two rows for one idempotency key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerKind {
    /// The key is not unique: a replayed [`APPEND_SQL`] adds a second row, which the audit
    /// reports as a duplicate. For drills whose writes are non-idempotent.
    Append,
    /// A unique index on the key: [`UPSERT_SQL`] absorbs a replay, so duplicates cannot be seen
    /// and are not reported. For drills whose writes are idempotent.
    Keyed,
}

/// Counts for one drill, and the audit of the ledger table against them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerReport {
    /// Faults injected.
    pub faults: u64,
    /// Calls made (each may have retried inside).
    pub calls: u64,
    /// Retries performed inside calls.
    pub retries: u64,
    /// Writes acknowledged to their caller.
    pub acked: u64,
    /// Acknowledged writes that affected no row: on a keyed table, a write whose key an earlier
    /// attempt had already committed (a replay the upsert absorbed).
    pub absorbed: u64,
    /// Failed calls by error class.
    pub errors: BTreeMap<String, u64>,
    /// Calls whose outcome is unknown.
    pub outcome_unknown: u64,
    /// Acknowledged keys found in the table.
    pub found: u64,
    /// Acknowledged keys missing from the table.
    pub lost: u64,
    /// Rows beyond the first for one key, or `None` when the table cannot hold such rows
    /// ([`LedgerKind::Keyed`]) and the figure could not move.
    pub duplicates: Option<u64>,
    /// Rows present whose write was not acknowledged (errors or unknown outcomes that did commit).
    pub unacked_present: u64,
}

impl LedgerReport {
    /// Counts one call and its outcome.
    pub fn record(&mut self, outcome: &Outcome) {
        self.calls += 1;
        match outcome {
            Outcome::Ok => self.acked += 1,
            Outcome::Error(class) => *self.errors.entry(class.clone()).or_default() += 1,
            Outcome::OutcomeUnknown => self.outcome_unknown += 1,
        }
    }

    /// Counts one acknowledged write and the rows it affected (0 means a replay was absorbed).
    pub fn record_ack(&mut self, rows_affected: u64) {
        self.record(&Outcome::Ok);
        if rows_affected == 0 {
            self.absorbed += 1;
        }
    }

    /// Adds another report's counts (e.g. one per worker) to this one.
    pub fn merge(&mut self, other: &LedgerReport) {
        self.faults += other.faults;
        self.calls += other.calls;
        self.retries += other.retries;
        self.acked += other.acked;
        self.absorbed += other.absorbed;
        for (class, n) in &other.errors {
            *self.errors.entry(class.clone()).or_default() += n;
        }
        self.outcome_unknown += other.outcome_unknown;
        self.found += other.found;
        self.lost += other.lost;
        self.duplicates = match (self.duplicates, other.duplicates) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
        };
        self.unacked_present += other.unacked_present;
    }

    /// Stores an audit's results.
    pub fn apply_audit(&mut self, audit: &LedgerAudit) {
        self.found = audit.found;
        self.lost = audit.lost.len() as u64;
        self.duplicates = audit.duplicates();
        self.unacked_present = audit.unacked_present;
    }

    /// Failed calls of every class.
    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Whether no acknowledged write was lost or duplicated.
    pub fn is_consistent(&self) -> bool {
        self.lost == 0 && self.duplicates.unwrap_or(0) == 0
    }

    /// One line: `faults=.. calls=.. retries=.. errors=.. acked=.. found=.. lost=..` then
    /// `duplicates=..` where the table can hold one, `absorbed=..` where it cannot, and
    /// `unknown=..` (also what `Display` prints).
    pub fn summary(&self) -> String {
        let replays = match self.duplicates {
            Some(n) => format!("duplicates={n}"),
            None => format!("absorbed={}", self.absorbed),
        };
        format!(
            "faults={} calls={} retries={} errors={} acked={} found={} lost={} {replays} unknown={}",
            self.faults,
            self.calls,
            self.retries,
            self.errors_total(),
            self.acked,
            self.found,
            self.lost,
            self.outcome_unknown,
        )
    }

    /// The error classes as `class=n` pairs, e.g. `connection=3 timeout=1`.
    pub fn error_classes(&self) -> String {
        self.errors.iter().map(|(c, n)| format!("{c}={n}")).collect::<Vec<_>>().join(" ")
    }
}

impl fmt::Display for LedgerReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary())
    }
}

/// The table compared with the acknowledged keys.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LedgerAudit {
    /// What kind of table was audited.
    pub kind: LedgerKind,
    /// Rows in the table.
    pub rows: u64,
    /// Distinct acknowledged keys found.
    pub found: u64,
    /// Acknowledged keys not in the table (sorted).
    pub lost: Vec<String>,
    /// Keys with more than one row, each with its row count (sorted by key).
    pub duplicated: Vec<(String, u64)>,
    /// Keys acknowledged to callers more than once (sorted).
    pub acked_twice: Vec<String>,
    /// Keys present whose write was not acknowledged.
    pub unacked_present: u64,
}

impl LedgerAudit {
    /// Rows beyond the first for one key plus keys acknowledged twice; `None` for a
    /// [`LedgerKind::Keyed`] table, whose unique index makes the row part impossible.
    pub fn duplicates(&self) -> Option<u64> {
        let extra_rows: u64 = self.duplicated.iter().map(|(_, n)| n - 1).sum();
        match self.kind {
            LedgerKind::Append => Some(extra_rows + self.acked_twice.len() as u64),
            LedgerKind::Keyed if self.acked_twice.is_empty() => None,
            LedgerKind::Keyed => Some(self.acked_twice.len() as u64),
        }
    }
}

/// The `ledger` table in one database.
#[derive(Debug, Clone)]
pub struct Ledger {
    pool: PgPool,
}

/// The idempotency key of write `seq` of `worker`: `w<worker>-<seq>`.
pub fn ledger_key(worker: i32, seq: i32) -> String {
    format!("w{worker}-{seq}")
}

/// Name of the unique index that makes a table [`LedgerKind::Keyed`].
const KEY_INDEX: &str = "ledger_idempotency_key_unique";

impl Ledger {
    /// Connects a small pool of its own to `url` (the audit should not share the pool under test).
    pub async fn connect(url: &str) -> Result<Self, sqlx::Error> {
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect(url)
            .await?;
        Ok(Self { pool })
    }

    /// Uses an existing pool.
    pub fn from_pool(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Creates the table of `kind` if it does not exist: a serial id per row, the key indexed,
    /// uniquely only for [`LedgerKind::Keyed`].
    pub async fn create_table(&self, kind: LedgerKind) -> Result<(), sqlx::Error> {
        let index = match kind {
            LedgerKind::Append => {
                "CREATE INDEX IF NOT EXISTS ledger_idempotency_key ON ledger (idempotency_key)".to_owned()
            }
            LedgerKind::Keyed => format!("CREATE UNIQUE INDEX IF NOT EXISTS {KEY_INDEX} ON ledger (idempotency_key)"),
        };
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE IF NOT EXISTS ledger (
                 id bigserial PRIMARY KEY,
                 idempotency_key text NOT NULL,
                 worker int NOT NULL,
                 seq int NOT NULL,
                 written_at timestamptz NOT NULL DEFAULT now()
             );
             {index}"
        )))
        .execute(&self.pool)
        .await
        .map(|_| ())
    }

    /// Which kind the table is: keyed when its unique key index exists.
    pub async fn kind(&self) -> Result<LedgerKind, sqlx::Error> {
        let keyed: bool =
            sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL").bind(KEY_INDEX).fetch_one(&self.pool).await?;
        Ok(if keyed { LedgerKind::Keyed } else { LedgerKind::Append })
    }

    /// Runs `sql` ([`APPEND_SQL`] or [`UPSERT_SQL`]) for write `seq` of `worker` through the
    /// ledger's own pool (a baseline, and how a test replays a write by hand; drills write
    /// through the component under test with the same SQL). Returns the rows it affected.
    pub async fn write(&self, sql: &'static str, worker: i32, seq: i32) -> Result<u64, sqlx::Error> {
        let done = sqlx::query(sql).bind(ledger_key(worker, seq)).bind(worker).bind(seq).execute(&self.pool).await?;
        Ok(done.rows_affected())
    }

    /// Rows holding `key` (0 if its write never committed).
    pub async fn rows_for(&self, key: &str) -> Result<u64, sqlx::Error> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger WHERE idempotency_key = $1")
            .bind(key)
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Counts the table's rows per key and compares them with the keys acknowledged to callers.
    pub async fn audit<S: AsRef<str>>(&self, acked: &[S]) -> Result<LedgerAudit, sqlx::Error> {
        let kind = self.kind().await?;
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT idempotency_key, count(*) FROM ledger GROUP BY idempotency_key")
                .fetch_all(&self.pool)
                .await?;
        Ok(audit_rows(kind, &rows, acked))
    }
}

/// The statement of a non-idempotent ledger write: `$1` key, `$2` worker, `$3` seq. Executed
/// twice, it leaves two rows with one key.
pub const APPEND_SQL: &str = "INSERT INTO ledger (idempotency_key, worker, seq) VALUES ($1, $2, $3)";

/// The statement of an idempotent ledger write (same parameters as [`APPEND_SQL`]): a retried
/// write of a key already present inserts nothing and affects no row. Needs a
/// [`LedgerKind::Keyed`] table.
pub const UPSERT_SQL: &str = "INSERT INTO ledger (idempotency_key, worker, seq) VALUES ($1, $2, $3) \
     ON CONFLICT (idempotency_key) DO NOTHING";

/// The audit of `rows` (`(key, rows with that key)`) against the acknowledged keys.
fn audit_rows<S: AsRef<str>>(kind: LedgerKind, rows: &[(String, i64)], acked: &[S]) -> LedgerAudit {
    let present: HashSet<&str> = rows.iter().map(|(k, _)| k.as_str()).collect();
    let mut acked_set = HashSet::new();
    let mut acked_twice = Vec::new();
    for key in acked {
        if !acked_set.insert(key.as_ref()) {
            acked_twice.push(key.as_ref().to_owned());
        }
    }
    acked_twice.sort();
    let mut duplicated: Vec<(String, u64)> =
        rows.iter().filter(|(_, n)| *n > 1).map(|(k, n)| (k.clone(), u64::try_from(*n).unwrap_or(0))).collect();
    duplicated.sort();
    let mut lost: Vec<String> = acked_set.iter().filter(|k| !present.contains(*k)).map(|k| (*k).to_owned()).collect();
    lost.sort();
    LedgerAudit {
        kind,
        rows: rows.iter().map(|(_, n)| u64::try_from(*n).unwrap_or(0)).sum(),
        found: (acked_set.len() - lost.len()) as u64,
        lost,
        duplicated,
        acked_twice,
        unacked_present: present.iter().filter(|k| !acked_set.contains(*k)).count() as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(pairs: &[(&str, i64)]) -> Vec<(String, i64)> {
        pairs.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect()
    }

    #[test]
    fn report_counts_and_summary() {
        let mut r = LedgerReport::default();
        for o in [
            Outcome::Ok,
            Outcome::Error("timeout".into()),
            Outcome::Error("connection".into()),
            Outcome::Error("timeout".into()),
            Outcome::OutcomeUnknown,
        ] {
            r.record(&o);
        }
        r.record_ack(1);
        r.faults = 2;
        r.retries = 4;
        let table = rows(&[("w0-0", 1), ("w0-1", 2), ("w1-0", 1)]);
        let audit = audit_rows(LedgerKind::Append, &table, &["w0-0", "w0-1", "w9-9"]);
        assert_eq!(audit.rows, 4);
        assert_eq!(audit.found, 2);
        assert_eq!(audit.lost, vec!["w9-9".to_owned()]);
        assert_eq!(audit.duplicated, vec![("w0-1".to_owned(), 2)]);
        assert_eq!(audit.duplicates(), Some(1));
        assert_eq!(audit.unacked_present, 1);
        r.apply_audit(&audit);
        assert_eq!(r.summary(), "faults=2 calls=6 retries=4 errors=3 acked=2 found=2 lost=1 duplicates=1 unknown=1");
        assert_eq!(r.error_classes(), "connection=1 timeout=2");
        assert!(!r.is_consistent());
        let mut total = LedgerReport::default();
        total.merge(&r);
        total.merge(&r);
        assert_eq!(total.calls, 12);
        assert_eq!(total.errors["timeout"], 4);
        assert_eq!(total.duplicates, Some(2));
    }

    #[test]
    fn keyed_table_reports_absorbed_replays_not_duplicates() {
        let mut r = LedgerReport::default();
        r.record_ack(1);
        r.record_ack(0);
        let audit = audit_rows(LedgerKind::Keyed, &rows(&[("w0-0", 1), ("w0-1", 1)]), &["w0-0", "w0-1"]);
        assert_eq!(audit.duplicates(), None);
        r.apply_audit(&audit);
        assert_eq!(r.summary(), "faults=0 calls=2 retries=0 errors=0 acked=2 found=2 lost=0 absorbed=1 unknown=0");
        assert!(r.is_consistent());
    }

    #[test]
    fn a_key_acknowledged_twice_is_a_duplicate_on_either_table() {
        for kind in [LedgerKind::Append, LedgerKind::Keyed] {
            let audit = audit_rows(kind, &rows(&[("w0-0", 1)]), &["w0-0", "w0-0"]);
            assert_eq!(audit.acked_twice, vec!["w0-0".to_owned()]);
            assert_eq!(audit.duplicates(), Some(1), "{kind:?}");
        }
    }
}
