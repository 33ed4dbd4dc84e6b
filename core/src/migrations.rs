//! Schema migrations as dbguard reports them: which migrations this binary knows, which the
//! database has applied, and the health check that compares the two.
//!
//! The host reads both lists (files on disk, the migrator's table in the database) and hands
//! them to [`compare`]; nothing here touches either.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::health::{CheckResult, CheckStatus};

/// The name of the migrations health check.
pub const MIGRATIONS_CHECK: &str = "database:migrations";

/// Where one migration stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MigrationState {
    /// Known to this binary and applied with the same checksum.
    Applied,
    /// Known to this binary, not applied yet.
    Pending,
    /// Applied, but the file now has another checksum: someone edited an applied migration.
    Changed,
    /// Applied by a binary that knew a migration this one does not (a rollback deploy).
    Unknown,
    /// Started and not finished: a non-transactional migration failed part-way and needs a
    /// person to repair the schema and the migrator's table.
    Dirty,
}

impl MigrationState {
    /// Whether this state stops `migrate up` (and fails the health check).
    pub const fn is_out_of_step(self) -> bool {
        matches!(self, Self::Changed | Self::Unknown | Self::Dirty)
    }
}

/// A migration the binary ships (a file pair in the migrations directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownMigration {
    /// The version (the file name's numeric prefix).
    pub version: i64,
    /// The rest of the file name, in words.
    pub description: String,
    /// The migrator's checksum of the up script.
    pub checksum: Vec<u8>,
    /// Whether a down script exists.
    pub reversible: bool,
    /// Whether the file opts out of the per-migration transaction (`-- no-transaction`).
    pub no_transaction: bool,
}

/// A row of the migrator's table in the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedMigration {
    /// The version.
    pub version: i64,
    /// The description recorded when it was applied.
    pub description: String,
    /// The checksum recorded when it was applied.
    pub checksum: Vec<u8>,
    /// `false` when the migration started and did not finish.
    pub success: bool,
    /// When it was applied, RFC 3339, if the database says.
    pub applied_at: Option<String>,
}

/// One line of a [`MigrationsReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct MigrationEntry {
    /// The version.
    pub version: i64,
    /// What it does, from its file name (or from the database for an unknown one).
    pub description: String,
    /// Where it stands.
    pub state: MigrationState,
    /// When it was applied, RFC 3339; `null` for pending ones.
    #[schemars(extend("format" = "date-time"))]
    pub applied_at: Option<String>,
    /// Whether `migrate down` can revert it (a down script exists).
    pub reversible: bool,
}

/// Known and applied migrations side by side, in version order.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub struct MigrationsReport {
    /// The newest version the database has applied, if any.
    pub current_version: Option<i64>,
    /// The newest version this binary knows, if any.
    pub latest_known_version: Option<i64>,
    /// Every migration, known or applied, oldest first.
    pub migrations: Vec<MigrationEntry>,
}

impl MigrationsReport {
    /// How many migrations are in `state`.
    pub fn count(&self, state: MigrationState) -> usize {
        self.migrations.iter().filter(|entry| entry.state == state).count()
    }

    /// Versions in `state`, oldest first.
    pub fn versions(&self, state: MigrationState) -> Vec<i64> {
        self.migrations.iter().filter(|entry| entry.state == state).map(|entry| entry.version).collect()
    }

    /// Whether anything stops `migrate up`: a changed, unknown or dirty migration.
    pub fn is_out_of_step(&self) -> bool {
        self.migrations.iter().any(|entry| entry.state.is_out_of_step())
    }

    /// The `database:migrations` check: `pass` at the newest known migration, `warn` with
    /// migrations pending, `fail` when the database is out of step with this binary. Not
    /// required: a schema one migration behind still serves traffic, and a readiness probe
    /// that failed here would stop the very deploy meant to fix it.
    pub fn check(&self) -> CheckResult {
        let pending = self.count(MigrationState::Pending);
        let out_of_step: Vec<String> = self
            .migrations
            .iter()
            .filter(|entry| entry.state.is_out_of_step())
            .map(|entry| format!("{} ({})", entry.version, state_word(entry.state)))
            .collect();
        let (status, message) = if !out_of_step.is_empty() {
            (CheckStatus::Fail, format!("database is out of step with this binary: {}", out_of_step.join(", ")))
        } else if pending > 0 {
            let versions: Vec<String> = self.versions(MigrationState::Pending).iter().map(i64::to_string).collect();
            (CheckStatus::Warn, format!("{pending} pending: {}", versions.join(", ")))
        } else {
            match self.current_version {
                Some(version) => (CheckStatus::Pass, format!("at version {version}")),
                None => (CheckStatus::Pass, "no migrations".to_owned()),
            }
        };
        CheckResult::new(MIGRATIONS_CHECK, status, false).observed(pending as f64, "pending").with_message(message)
    }
}

fn state_word(state: MigrationState) -> &'static str {
    match state {
        MigrationState::Applied => "applied",
        MigrationState::Pending => "pending",
        MigrationState::Changed => "checksum changed",
        MigrationState::Unknown => "not known to this binary",
        MigrationState::Dirty => "started and not finished",
    }
}

/// Compares what the binary ships with what the database has applied.
pub fn compare(known: &[KnownMigration], applied: &[AppliedMigration]) -> MigrationsReport {
    let mut migrations: Vec<MigrationEntry> = known
        .iter()
        .map(|file| {
            let row = applied.iter().find(|row| row.version == file.version);
            let state = match row {
                None => MigrationState::Pending,
                Some(row) if !row.success => MigrationState::Dirty,
                Some(row) if row.checksum != file.checksum => MigrationState::Changed,
                Some(_) => MigrationState::Applied,
            };
            MigrationEntry {
                version: file.version,
                description: file.description.clone(),
                state,
                applied_at: row.and_then(|row| row.applied_at.clone()),
                reversible: file.reversible,
            }
        })
        .collect();
    for row in applied.iter().filter(|row| !known.iter().any(|file| file.version == row.version)) {
        migrations.push(MigrationEntry {
            version: row.version,
            description: row.description.clone(),
            state: if row.success { MigrationState::Unknown } else { MigrationState::Dirty },
            applied_at: row.applied_at.clone(),
            reversible: false,
        });
    }
    migrations.sort_by_key(|entry| entry.version);
    MigrationsReport {
        current_version: applied.iter().filter(|row| row.success).map(|row| row.version).max(),
        latest_known_version: known.iter().map(|file| file.version).max(),
        migrations,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(version: i64, checksum: u8) -> KnownMigration {
        KnownMigration {
            version,
            description: format!("step {version}"),
            checksum: vec![checksum],
            reversible: true,
            no_transaction: false,
        }
    }

    fn applied(version: i64, checksum: u8) -> AppliedMigration {
        AppliedMigration {
            version,
            description: format!("step {version}"),
            checksum: vec![checksum],
            success: true,
            applied_at: Some("2026-12-04T10:00:00Z".to_owned()),
        }
    }

    #[test]
    fn all_applied_passes_at_the_newest_version() {
        let report = compare(&[known(1, 1), known(2, 2)], &[applied(1, 1), applied(2, 2)]);
        assert_eq!(report.current_version, Some(2));
        assert_eq!(report.count(MigrationState::Applied), 2);
        let check = report.check();
        assert_eq!(check.name, MIGRATIONS_CHECK);
        assert_eq!(check.status, CheckStatus::Pass);
        assert_eq!(check.message.as_deref(), Some("at version 2"));
        assert!(!check.required);
    }

    #[test]
    fn pending_migrations_warn_and_are_listed() {
        let report = compare(&[known(1, 1), known(2, 2), known(3, 3)], &[applied(1, 1)]);
        assert_eq!(report.versions(MigrationState::Pending), vec![2, 3]);
        let check = report.check();
        assert_eq!(check.status, CheckStatus::Warn);
        assert_eq!(check.observed_value, Some(2.0));
        assert_eq!(check.message.as_deref(), Some("2 pending: 2, 3"));
    }

    #[test]
    fn an_applied_migration_this_binary_does_not_know_fails() {
        let report = compare(&[known(1, 1)], &[applied(1, 1), applied(2, 2)]);
        assert_eq!(report.versions(MigrationState::Unknown), vec![2]);
        assert_eq!(report.latest_known_version, Some(1));
        assert_eq!(report.current_version, Some(2));
        assert_eq!(report.check().status, CheckStatus::Fail);
        assert!(report.is_out_of_step());
    }

    #[test]
    fn an_edited_applied_migration_is_changed() {
        let report = compare(&[known(1, 9)], &[applied(1, 1)]);
        assert_eq!(report.versions(MigrationState::Changed), vec![1]);
        let check = report.check();
        assert_eq!(check.status, CheckStatus::Fail);
        assert!(check.message.unwrap().contains("1 (checksum changed)"));
    }

    #[test]
    fn an_unfinished_migration_is_dirty_and_not_current() {
        let mut row = applied(2, 2);
        row.success = false;
        let report = compare(&[known(1, 1), known(2, 2)], &[applied(1, 1), row]);
        assert_eq!(report.versions(MigrationState::Dirty), vec![2]);
        assert_eq!(report.current_version, Some(1));
        assert_eq!(report.check().status, CheckStatus::Fail);
    }

    #[test]
    fn nothing_known_and_nothing_applied_passes() {
        let report = compare(&[], &[]);
        assert_eq!(report.check().status, CheckStatus::Pass);
        assert_eq!(report.current_version, None);
    }

    #[test]
    fn entries_come_out_in_version_order() {
        let report = compare(&[known(3, 3), known(1, 1)], &[applied(2, 2), applied(1, 1)]);
        let versions: Vec<i64> = report.migrations.iter().map(|entry| entry.version).collect();
        assert_eq!(versions, vec![1, 2, 3]);
    }
}
