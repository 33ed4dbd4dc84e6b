//! Migration state as health and status report it: a catalog of the migrations a process knows,
//! compared with the table its migrator records them in, read through the pool.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use dbguard_core::migrations::{AppliedMigration, KnownMigration, MIGRATIONS_CHECK, MigrationsReport, compare};
use dbguard_core::{CheckResult, CheckStatus, DatabaseType, Idempotency};
use sea_orm::{ConnectionTrait, DbErr, QueryResult, Statement};

use super::{MIGRATIONS_TABLE, MigrationSet};
use crate::{DbError, DbManager};

/// How long the health probe waits for the migrations table.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// The migrations a process knows and where their migrator records the applied ones: a
/// directory's files ([`MigrationSet::catalog`]) or a SeaORM migrator
/// (`seaorm::catalog::<Migrator>()`, feature `sea-orm-migration`).
#[derive(Debug, Clone)]
pub struct MigrationCatalog {
    known: Vec<KnownMigration>,
    pub(super) table: Table,
}

/// The migrator's table and its layout.
#[derive(Debug, Clone)]
pub(super) enum Table {
    /// sqlx's `_sqlx_migrations`: version, description, checksum, success, installed_on.
    Sqlx,
    /// sea-orm-migration's table (named by the migrator): version (the migration's name) and
    /// applied_at (seconds since the epoch).
    #[cfg_attr(not(feature = "sea-orm-migration"), allow(dead_code))]
    SeaOrm(String),
}

impl MigrationCatalog {
    pub(super) fn new(known: Vec<KnownMigration>, table: Table) -> Self {
        Self { known, table }
    }

    /// The migrations, oldest first.
    pub fn known(&self) -> &[KnownMigration] {
        &self.known
    }

    /// This catalog against what the database behind `conn` has applied.
    async fn report(&self, conn: &impl ConnectionTrait, database: DatabaseType) -> Result<MigrationsReport, DbErr> {
        Ok(compare(&self.known, &read_applied(conn, database, &self.table).await?))
    }
}

impl MigrationSet {
    /// The catalog of these files, for [`DbManager::watch_migrations`] and
    /// [`DbManager::migration_status`].
    pub fn catalog(&self) -> MigrationCatalog {
        MigrationCatalog::new(self.known(), Table::Sqlx)
    }
}

impl DbManager {
    /// Applied and pending migrations of `catalog`, read through the guarded path (retried like
    /// any idempotent read). A database that has never been migrated has all of them pending.
    pub async fn migration_status(&self, catalog: &MigrationCatalog) -> Result<MigrationsReport, DbError> {
        let database = self.config().database_type();
        let catalog = Arc::new(catalog.clone());
        self.run(Idempotency::Idempotent, move |conn| {
            let catalog = catalog.clone();
            async move { catalog.report(&conn, database).await }
        })
        .await
    }

    /// Adds the `database:migrations` check to every health probe and the migrations list to
    /// [`DbManager::status`]; `None` removes both.
    pub fn watch_migrations(&self, catalog: Option<MigrationCatalog>) {
        self.inner.health.migrations.store(catalog.map(Arc::new));
        self.inner.health.mark_stale();
    }

    /// The report of the watched migrations, if any are watched and the database answers.
    pub(crate) async fn watched_migrations(&self) -> Option<MigrationsReport> {
        let catalog = self.inner.health.migrations.load_full()?;
        self.migration_status(&catalog).await.ok()
    }

    /// The `database:migrations` check for a probe over `conn`, if migrations are watched.
    pub(crate) async fn migrations_check(&self, conn: &impl ConnectionTrait) -> Option<CheckResult> {
        let catalog = self.inner.health.migrations.load_full()?;
        let database = self.config().database_type();
        let check = match tokio::time::timeout(STATUS_TIMEOUT, catalog.report(conn, database)).await {
            Ok(Ok(report)) => report.check(),
            Ok(Err(err)) => unreadable_check(self.redact(&err.to_string())),
            Err(_) => unreadable_check(format!("no answer within {} s", STATUS_TIMEOUT.as_secs())),
        };
        Some(check)
    }
}

fn unreadable_check(reason: String) -> CheckResult {
    CheckResult::new(MIGRATIONS_CHECK, CheckStatus::Fail, false)
        .with_message(format!("cannot read the migrations table: {reason}"))
}

/// The migrator's table; empty when it does not exist yet.
pub(super) async fn read_applied(
    conn: &impl ConnectionTrait,
    database: DatabaseType,
    table: &Table,
) -> Result<Vec<AppliedMigration>, DbErr> {
    let name = match table {
        Table::Sqlx => MIGRATIONS_TABLE,
        Table::SeaOrm(name) => name.as_str(),
    };
    let backend = conn.get_database_backend();
    let exists = match database {
        DatabaseType::Postgresql => format!("SELECT to_regclass('\"{name}\"') IS NOT NULL AS present"),
        DatabaseType::Sqlite => {
            format!("SELECT count(*) > 0 AS present FROM sqlite_master WHERE type = 'table' AND name = '{name}'")
        }
    };
    let present = conn
        .query_one_raw(Statement::from_string(backend, exists))
        .await?
        .map(|row| row.try_get::<bool>("", "present"))
        .transpose()?
        .unwrap_or(false);
    if !present {
        return Ok(Vec::new());
    }
    let select = match (table, database) {
        (Table::Sqlx, DatabaseType::Postgresql) => format!(
            "SELECT version, description, checksum, success, \
             to_char(installed_on AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS applied_at \
             FROM {name} ORDER BY version"
        ),
        (Table::Sqlx, DatabaseType::Sqlite) => format!(
            "SELECT version, description, checksum, success, \
             strftime('%Y-%m-%dT%H:%M:%SZ', installed_on) AS applied_at FROM {name} ORDER BY version"
        ),
        (Table::SeaOrm(_), _) => format!("SELECT version, applied_at FROM \"{name}\" ORDER BY version"),
    };
    let rows = conn.query_all_raw(Statement::from_string(backend, select)).await?;
    rows.iter()
        .map(|row| match table {
            Table::Sqlx => sqlx_row(row),
            Table::SeaOrm(_) => seaorm_row(row),
        })
        .collect()
}

fn sqlx_row(row: &QueryResult) -> Result<AppliedMigration, DbErr> {
    Ok(AppliedMigration {
        version: row.try_get("", "version")?,
        description: row.try_get("", "description")?,
        checksum: row.try_get("", "checksum")?,
        success: row.try_get("", "success")?,
        applied_at: row.try_get("", "applied_at")?,
    })
}

fn seaorm_row(row: &QueryResult) -> Result<AppliedMigration, DbErr> {
    let name: String = row.try_get("", "version")?;
    let applied_at: i64 = row.try_get("", "applied_at")?;
    // A name this binary cannot place still shows, as version 0, so that it is reported as
    // unknown rather than hidden.
    let (version, description) = super::seaorm_version(&name).unwrap_or((0, name));
    Ok(AppliedMigration {
        version,
        description,
        checksum: Vec::new(),
        success: true,
        applied_at: u64::try_from(applied_at)
            .ok()
            .map(|secs| crate::clock::rfc3339(UNIX_EPOCH + Duration::from_secs(secs))),
    })
}
