//! Guarded runs of a SeaORM migrator (`sea_orm_migration::MigratorTrait`), for services whose
//! migrations are Rust code: the same lock, retries before anything runs, refusals and events
//! as the SQL-file runner, and the same `database:migrations` check ([`catalog`]).
//!
//! sea-orm-migration applies each migration in a transaction on PostgreSQL and, unless the
//! migration's `use_transaction()` says `Some(true)`, outside one on SQLite: a failure there is
//! reported as not rolled back. It keeps no checksums, so an edited migration cannot be
//! detected. Migrations must be named as `sea-orm-cli migrate generate` names them
//! (`m<YYYYMMDD>_<HHMMSS>_<name>`) and listed oldest first: the timestamp is the version
//! reports order by.

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement, Value};
use sea_orm_migration::{MigrationTrait, MigratorTrait};

use dbguard_core::migrations::{KnownMigration, MigrationState, MigrationsReport};
use dbguard_core::{DatabaseType, DbConfig, ErrorClass};

use super::status::{Table, read_applied};
use super::{
    AttemptFailure, LOCK_SQL, LockedSession, MIGRATION_LOCK_KEY, MigrationCatalog, MigrationError, MigrationEvent,
    MigrationRun, TRY_LOCK_SQL, open_locked, refuse_out_of_step, seaorm_version, sqlite_lock_file, take_file_lock,
};
use crate::classify::classify_db_err;
use crate::pool;
use crate::secrets::Redactor;

/// The catalog of `M`'s migrations, for `DbManager::watch_migrations` and
/// `DbManager::migration_status`.
pub fn catalog<M: MigratorTrait>() -> Result<MigrationCatalog, MigrationError> {
    Ok(MigrationCatalog::new(known::<M>()?, Table::SeaOrm(M::migration_table_name().to_string())))
}

fn known<M: MigratorTrait>() -> Result<Vec<KnownMigration>, MigrationError> {
    let mut known: Vec<KnownMigration> = Vec::new();
    for migration in M::migrations() {
        let name = migration.name();
        let (version, description) = seaorm_version(name).ok_or_else(|| {
            MigrationError::Source(format!(
                "migration {name:?} is not named m<YYYYMMDD>_<HHMMSS>_<name>, as `sea-orm-cli migrate generate` names them"
            ))
        })?;
        if let Some(previous) = known.last().filter(|previous| previous.version >= version) {
            return Err(MigrationError::Source(format!(
                "migration {name:?} is listed after version {}: list migrations oldest first, each once",
                previous.version
            )));
        }
        known.push(KnownMigration {
            version,
            description,
            checksum: Vec::new(),
            reversible: true,
            no_transaction: migration.use_transaction() == Some(false),
        });
    }
    Ok(known)
}

/// Applies `M`'s pending migrations, oldest first, under the migration lock.
pub async fn migrate_up<M: MigratorTrait>(
    config: &DbConfig,
    events: &mut (dyn FnMut(MigrationEvent) + Send),
) -> Result<MigrationRun, MigrationError> {
    let plan = Plan::<M>::new(config)?;
    let (session, waited_for_lock) = open_locked::<Session>(config, &plan.redactor, events).await?;
    let outcome = async {
        let report = plan.checked_report(&session.db).await?;
        let mut run = MigrationRun { versions: Vec::new(), waited_for_lock };
        for version in report.versions(MigrationState::Pending) {
            let started = std::time::Instant::now();
            // sea-orm-migration applies the first pending one in list order: this one.
            M::up(&session.db, Some(1)).await.map_err(|err| plan.explain(version, err))?;
            events(MigrationEvent::Applied { version, file: plan.name(version), elapsed: started.elapsed() });
            run.versions.push(version);
        }
        Ok(run)
    }
    .await;
    let _ = session.db.close().await;
    outcome
}

/// Reverts `M`'s newest `steps` applied migrations, newest first.
pub async fn migrate_down<M: MigratorTrait>(
    config: &DbConfig,
    steps: usize,
    events: &mut (dyn FnMut(MigrationEvent) + Send),
) -> Result<MigrationRun, MigrationError> {
    let plan = Plan::<M>::new(config)?;
    let (session, waited_for_lock) = open_locked::<Session>(config, &plan.redactor, events).await?;
    let outcome = async {
        let report = plan.checked_report(&session.db).await?;
        let mut run = MigrationRun { versions: Vec::new(), waited_for_lock };
        for version in report.versions(MigrationState::Applied).into_iter().rev().take(steps) {
            let started = std::time::Instant::now();
            // sea-orm-migration reverts the newest applied one: this one.
            M::down(&session.db, Some(1)).await.map_err(|err| plan.explain(version, err))?;
            events(MigrationEvent::Reverted { version, file: plan.name(version), elapsed: started.elapsed() });
            run.versions.push(version);
        }
        Ok(run)
    }
    .await;
    let _ = session.db.close().await;
    outcome
}

/// What a run knows before it connects: the migrations, their names and how they run.
struct Plan<M> {
    migrations: Vec<Box<dyn MigrationTrait>>,
    catalog: MigrationCatalog,
    database: DatabaseType,
    redactor: Redactor,
    _migrator: std::marker::PhantomData<M>,
}

impl<M: MigratorTrait> Plan<M> {
    fn new(config: &DbConfig) -> Result<Self, MigrationError> {
        Ok(Self {
            migrations: M::migrations(),
            catalog: catalog::<M>()?,
            database: config.database_type(),
            redactor: Redactor::from_config(config),
            _migrator: std::marker::PhantomData,
        })
    }

    fn position(&self, version: i64) -> Option<usize> {
        self.catalog.known().iter().position(|known| known.version == version)
    }

    fn name(&self, version: i64) -> String {
        self.position(version)
            .map(|index| self.migrations[index].name().to_owned())
            .unwrap_or_else(|| format!("version {version}"))
    }

    /// Whether sea-orm-migration runs this migration in a transaction (its rule: as the
    /// migration says, else on PostgreSQL only).
    fn in_transaction(&self, version: i64) -> bool {
        let declared = self.position(version).and_then(|index| self.migrations[index].use_transaction());
        declared.unwrap_or(self.database == DatabaseType::Postgresql)
    }

    /// Creates the migrator's table if needed, compares, and refuses when out of step.
    async fn checked_report(&self, db: &DatabaseConnection) -> Result<MigrationsReport, MigrationError> {
        let failure = |err: DbErr| MigrationError::Database(self.redactor.scrub(&err.to_string()));
        M::install(db).await.map_err(failure)?;
        let applied = read_applied(db, self.database, &self.catalog.table).await.map_err(failure)?;
        let report = dbguard_core::migrations::compare(self.catalog.known(), &applied);
        refuse_out_of_step(&report, |version| self.name(version))?;
        Ok(report)
    }

    fn explain(&self, version: i64, err: DbErr) -> MigrationError {
        let classified = classify_db_err(&err);
        let message = self.redactor.scrub(&err.to_string());
        if classified.class.is_connectivity() {
            return MigrationError::Interrupted { version, file: self.name(version), message };
        }
        MigrationError::Failed {
            version,
            file: self.name(version),
            statement: None,
            message,
            code: classified.code,
            rolled_back: self.in_transaction(version),
        }
    }
}

/// A pool of exactly one connection, never recycled, so that every statement of the run
/// (lock, migrations, unlock) goes through the one session that holds the lock.
struct Session {
    db: DatabaseConnection,
    _lock: Option<std::fs::File>,
}

impl LockedSession for Session {
    async fn connect(config: &DbConfig) -> Result<Self, AttemptFailure> {
        let server = match config.database_type() {
            DatabaseType::Postgresql => pool::select_server(config)
                .await
                .map_err(|none| AttemptFailure { class: none.classified.class, message: none.cause })?,
            DatabaseType::Sqlite => 0,
        };
        let mut options = pool::connect_options_for(config, server, false);
        options.min_connections(1).max_connections(1).idle_timeout(None).max_lifetime(None);
        let lock = sqlite_lock_file(config)
            .map_err(|err| AttemptFailure { class: ErrorClass::from_io_kind(err.kind()), message: err.to_string() })?;
        let db = sea_orm::Database::connect(options).await.map_err(|err| AttemptFailure::of_db_err(&err))?;
        Ok(Self { db, _lock: lock })
    }

    /// Takes the lock on the session's one connection. A migration may run longer than
    /// DB_STATEMENT_TIMEOUT allows a query, so the session lifts that limit first.
    async fn lock(&mut self, events: &mut (dyn FnMut(MigrationEvent) + Send)) -> Result<bool, AttemptFailure> {
        self.lock_db(events).await.map_err(|err| AttemptFailure::of_db_err(&err))
    }
}

impl Session {
    async fn lock_db(&self, events: &mut (dyn FnMut(MigrationEvent) + Send)) -> Result<bool, DbErr> {
        if self.db.get_database_backend() != DbBackend::Postgres {
            return take_file_lock(self._lock.as_ref(), events)
                .await
                .map_err(|err| DbErr::Custom(format!("migration lock file: {err}")));
        }
        self.db.execute_unprepared("SET statement_timeout = 0").await?;
        let key = || [Value::from(MIGRATION_LOCK_KEY)];
        let taken = self
            .db
            .query_one_raw(Statement::from_sql_and_values(DbBackend::Postgres, TRY_LOCK_SQL, key()))
            .await?
            .map(|row| row.try_get_by_index::<bool>(0))
            .transpose()?
            .unwrap_or(false);
        if taken {
            return Ok(false);
        }
        events(MigrationEvent::WaitingForLock);
        self.db.execute_raw(Statement::from_sql_and_values(DbBackend::Postgres, LOCK_SQL, key())).await?;
        Ok(true)
    }
}
