//! The ledger workload's bookkeeping: what callers saw, what the database kept, and the
//! comparison between the two after a fault drill.
//!
//! Workers write rows keyed by an idempotency key and record each call's [`Outcome`]; the keys of
//! acknowledged writes go into a set; after the drill, [`Ledger::audit`] checks that set against
//! the table. Nothing here depends on the dbguard manager, so the same ledger can measure it and
//! the plain drivers it is compared with.

use std::collections::{BTreeMap, HashMap, HashSet};
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
    /// Failed calls by error class.
    pub errors: BTreeMap<String, u64>,
    /// Calls whose outcome is unknown.
    pub outcome_unknown: u64,
    /// Acknowledged keys found in the table.
    pub found: u64,
    /// Acknowledged keys missing from the table.
    pub lost: u64,
    /// Extra rows for one logical write (same worker and sequence number).
    pub duplicates: u64,
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

    /// Adds another report's counts (e.g. one per worker) to this one.
    pub fn merge(&mut self, other: &LedgerReport) {
        self.faults += other.faults;
        self.calls += other.calls;
        self.retries += other.retries;
        self.acked += other.acked;
        for (class, n) in &other.errors {
            *self.errors.entry(class.clone()).or_default() += n;
        }
        self.outcome_unknown += other.outcome_unknown;
        self.found += other.found;
        self.lost += other.lost;
        self.duplicates += other.duplicates;
        self.unacked_present += other.unacked_present;
    }

    /// Stores an audit's results.
    pub fn apply_audit(&mut self, audit: &LedgerAudit) {
        self.found = audit.found;
        self.lost = audit.lost.len() as u64;
        self.duplicates = audit.duplicates;
        self.unacked_present = audit.unacked_present;
    }

    /// Failed calls of every class.
    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Whether no acknowledged write was lost or duplicated.
    pub fn is_consistent(&self) -> bool {
        self.lost == 0 && self.duplicates == 0
    }

    /// One line: `faults=.. calls=.. retries=.. errors=.. acked=.. found=.. lost=.. duplicates=..
    /// unknown=..` (also what `Display` prints).
    pub fn summary(&self) -> String {
        format!(
            "faults={} calls={} retries={} errors={} acked={} found={} lost={} duplicates={} unknown={}",
            self.faults,
            self.calls,
            self.retries,
            self.errors_total(),
            self.acked,
            self.found,
            self.lost,
            self.duplicates,
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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LedgerAudit {
    /// Rows in the table.
    pub rows: u64,
    /// Distinct acknowledged keys found.
    pub found: u64,
    /// Acknowledged keys not in the table (sorted).
    pub lost: Vec<String>,
    /// Rows beyond the first for one `(worker, seq)`, plus keys acknowledged more than once.
    pub duplicates: u64,
    /// Rows whose key was not acknowledged.
    pub unacked_present: u64,
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

    /// Creates the table if it does not exist.
    pub async fn create_table(&self) -> Result<(), sqlx::Error> {
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS ledger (
                 idempotency_key text PRIMARY KEY,
                 worker int NOT NULL,
                 seq int NOT NULL,
                 written_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .execute(&self.pool)
        .await
        .map(|_| ())
    }

    /// Writes one row through the ledger's own pool (a baseline; drills write through the
    /// component under test with the same SQL, [`INSERT_SQL`]). Returns whether it was new.
    pub async fn insert(&self, worker: i32, seq: i32) -> Result<bool, sqlx::Error> {
        let done =
            sqlx::query(INSERT_SQL).bind(ledger_key(worker, seq)).bind(worker).bind(seq).execute(&self.pool).await?;
        Ok(done.rows_affected() == 1)
    }

    /// Compares the table with the keys acknowledged to callers.
    pub async fn audit<S: AsRef<str>>(&self, acked: &[S]) -> Result<LedgerAudit, sqlx::Error> {
        let rows: Vec<(String, i32, i32)> =
            sqlx::query_as("SELECT idempotency_key, worker, seq FROM ledger").fetch_all(&self.pool).await?;
        Ok(audit_rows(&rows, acked))
    }
}

/// The statement a ledger write runs: `$1` key, `$2` worker, `$3` seq. Idempotent: a retried
/// write of the same key inserts nothing.
pub const INSERT_SQL: &str = "INSERT INTO ledger (idempotency_key, worker, seq) VALUES ($1, $2, $3) \
     ON CONFLICT (idempotency_key) DO NOTHING";

fn audit_rows<S: AsRef<str>>(rows: &[(String, i32, i32)], acked: &[S]) -> LedgerAudit {
    let present: HashSet<&str> = rows.iter().map(|(k, _, _)| k.as_str()).collect();
    let mut acked_set = HashSet::new();
    let mut duplicates = 0;
    for key in acked {
        if !acked_set.insert(key.as_ref()) {
            duplicates += 1;
        }
    }
    let mut per_write: HashMap<(i32, i32), u64> = HashMap::new();
    for (_, w, s) in rows {
        *per_write.entry((*w, *s)).or_default() += 1;
    }
    duplicates += per_write.values().map(|n| n - 1).sum::<u64>();
    let mut lost: Vec<String> = acked_set.iter().filter(|k| !present.contains(*k)).map(|k| (*k).to_owned()).collect();
    lost.sort();
    LedgerAudit {
        rows: rows.len() as u64,
        found: (acked_set.len() - lost.len()) as u64,
        lost,
        duplicates,
        unacked_present: present.iter().filter(|k| !acked_set.contains(*k)).count() as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_counts_and_summary() {
        let mut r = LedgerReport::default();
        for o in [
            Outcome::Ok,
            Outcome::Ok,
            Outcome::Error("timeout".into()),
            Outcome::Error("connection".into()),
            Outcome::Error("timeout".into()),
            Outcome::OutcomeUnknown,
        ] {
            r.record(&o);
        }
        r.faults = 2;
        r.retries = 4;
        let rows = vec![
            ("w0-0".to_owned(), 0, 0),
            ("w0-1".to_owned(), 0, 1),
            ("x-0-1".to_owned(), 0, 1),
            ("w1-0".to_owned(), 1, 0),
        ];
        let audit = audit_rows(&rows, &["w0-0", "w0-1", "w9-9"]);
        assert_eq!(audit.found, 2);
        assert_eq!(audit.lost, vec!["w9-9".to_owned()]);
        assert_eq!(audit.duplicates, 1);
        assert_eq!(audit.unacked_present, 2);
        r.apply_audit(&audit);
        assert_eq!(r.summary(), "faults=2 calls=6 retries=4 errors=3 acked=2 found=2 lost=1 duplicates=1 unknown=1");
        assert_eq!(r.error_classes(), "connection=1 timeout=2");
        assert!(!r.is_consistent());
        let mut total = LedgerReport::default();
        total.merge(&r);
        total.merge(&r);
        assert_eq!(total.calls, 12);
        assert_eq!(total.errors["timeout"], 4);
    }
}
