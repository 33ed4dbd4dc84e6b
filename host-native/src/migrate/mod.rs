//! Guarded schema migrations on sqlx's migrator (reversible `.up.sql` / `.down.sql` files,
//! checksums, one transaction per migration, the `_sqlx_migrations` table). dbguard adds what
//! a deploy of many instances needs around it:
//!
//! - **Retries before a migration starts.** Connecting and taking the lock are retried under
//!   the configured policy, so `migrate up` started while the database restarts waits for it.
//!   A failure inside a migration is never replayed: the error says what happened and the
//!   next `up` starts from the state the database reports.
//! - **One instance at a time.** Runners hold a lock for the whole run — a PostgreSQL session
//!   advisory lock ([`MIGRATION_LOCK_KEY`]), or a lock file beside a SQLite database — and say
//!   when they wait for another instance. Those that waited then find nothing to do.
//! - **Refusal instead of guesses.** An applied migration whose file changed, one this binary
//!   does not know, or a half-applied one stops the run before anything is applied.
//! - **Errors that point at the cause:** the file, the failing statement and its line, and
//!   whether the migration was rolled back.
//!
//! A file that starts with `-- no-transaction` (sqlx's marker, needed for `CREATE INDEX
//! CONCURRENTLY`) runs outside a transaction, as sqlx documents: if it fails part-way, what it
//! did before the failure may stay (PostgreSQL still wraps a multi-statement script in one
//! implicit transaction where it can; `CONCURRENTLY` cannot be) and no row is recorded, so the
//! error says to check the schema.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dbguard_core::migrations::{AppliedMigration, KnownMigration, MigrationState, MigrationsReport, compare};
use dbguard_core::{DatabaseType, DbConfig, Decision, ErrorClass, Idempotency, RetryState};
use sqlx::Connection as _;
use sqlx::migrate::{Migrate, MigrateError, Migrator};

use crate::classify::classify_sqlx;
use crate::clock::Clock;
use crate::pool;
use crate::secrets::Redactor;

mod status;
pub use status::MigrationCatalog;
#[cfg(feature = "sea-orm-migration")]
pub mod seaorm;

/// The PostgreSQL advisory-lock key every dbguard migration runner holds while it runs. sqlx
/// takes its own per-database lock inside it, so runners of other sqlx-based tools serialise
/// with dbguard's too.
pub const MIGRATION_LOCK_KEY: i64 = 0x6462_6775_6172_6431;

/// sqlx's table of applied migrations.
pub const MIGRATIONS_TABLE: &str = "_sqlx_migrations";

/// The migrations in a directory: `<VERSION>_<DESCRIPTION>.sql`, or reversible pairs
/// `<VERSION>_<DESCRIPTION>.up.sql` and `.down.sql`.
pub struct MigrationSet {
    directory: PathBuf,
    migrator: Migrator,
    files: BTreeMap<i64, FileNames>,
}

#[derive(Debug, Clone, Default)]
struct FileNames {
    up: Option<String>,
    down: Option<String>,
}

impl std::fmt::Debug for MigrationSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MigrationSet")
            .field("directory", &self.directory)
            .field("versions", &self.files.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl MigrationSet {
    /// Reads every migration in `directory`.
    pub async fn load(directory: impl Into<PathBuf>) -> Result<Self, MigrationError> {
        let directory = directory.into();
        if !directory.is_dir() {
            return Err(MigrationError::NoDirectory(directory.display().to_string()));
        }
        let migrator = Migrator::new(directory.clone()).await.map_err(|err| MigrationError::Source(err.to_string()))?;
        let files = file_names(&directory)?;
        Ok(Self { directory, migrator, files })
    }

    /// The directory the migrations came from.
    pub fn directory(&self) -> &Path {
        &self.directory
    }

    /// Whether the directory holds no migration.
    pub fn is_empty(&self) -> bool {
        self.known().is_empty()
    }

    /// The migrations this binary can apply, oldest first.
    pub fn known(&self) -> Vec<KnownMigration> {
        self.migrator
            .iter()
            .filter(|migration| migration.migration_type.is_up_migration())
            .map(|migration| KnownMigration {
                version: migration.version,
                description: migration.description.to_string(),
                checksum: migration.checksum.to_vec(),
                reversible: self.files.get(&migration.version).is_some_and(|files| files.down.is_some()),
                no_transaction: migration.no_tx,
            })
            .collect()
    }

    fn up_file(&self, version: i64) -> String {
        self.files.get(&version).and_then(|files| files.up.clone()).unwrap_or_else(|| format!("version {version}"))
    }

    fn down_file(&self, version: i64) -> Option<String> {
        self.files.get(&version).and_then(|files| files.down.clone())
    }

    fn sql(&self, version: i64, up: bool) -> Option<(&str, bool)> {
        self.migrator
            .iter()
            .find(|m| m.version == version && m.migration_type.is_up_migration() == up)
            .map(|m| (m.sql.as_str(), m.no_tx))
    }
}

/// Maps versions to file names as sqlx reads them (`<VERSION>_<rest>.sql`), so errors can name
/// the file a person edits rather than the description sqlx keeps.
fn file_names(directory: &Path) -> Result<BTreeMap<i64, FileNames>, MigrationError> {
    let entries = std::fs::read_dir(directory).map_err(|err| MigrationError::Source(err.to_string()))?;
    let mut files: BTreeMap<i64, FileNames> = BTreeMap::new();
    for entry in entries {
        let name = entry.map_err(|err| MigrationError::Source(err.to_string()))?.file_name();
        let name = name.to_string_lossy().into_owned();
        let Some((prefix, rest)) = name.split_once('_') else { continue };
        let (Ok(version), true) = (prefix.parse::<i64>(), rest.ends_with(".sql")) else { continue };
        let slot = files.entry(version).or_default();
        if rest.ends_with(".down.sql") {
            slot.down = Some(name);
        } else {
            slot.up = Some(name);
        }
    }
    Ok(files)
}

/// What a running migration reports as it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrationEvent {
    /// The database did not answer; the runner tries again after `delay`.
    Retrying {
        /// The retry about to be made (1 for the first).
        attempt: u32,
        /// How long the runner waits first.
        delay: Duration,
        /// Why the last attempt failed (redacted).
        reason: String,
    },
    /// Another instance holds the migration lock; this one waits for it.
    WaitingForLock,
    /// A migration was applied.
    Applied {
        /// Its version.
        version: i64,
        /// Its file.
        file: String,
        /// How long it took.
        elapsed: Duration,
    },
    /// A migration was reverted.
    Reverted {
        /// Its version.
        version: i64,
        /// Its down file.
        file: String,
        /// How long it took.
        elapsed: Duration,
    },
}

/// What a run changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationRun {
    /// Versions applied or reverted, in the order it happened.
    pub versions: Vec<i64>,
    /// Whether the run waited for another instance's lock.
    pub waited_for_lock: bool,
}

/// Why a migration command did not complete.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// The migrations directory does not exist.
    #[error(
        "migrations directory {0} does not exist (set DBGUARD_MIGRATIONS, or create it with `dbguard migrate new NAME`)"
    )]
    NoDirectory(String),
    /// The directory could not be read, or a file name is not a migration's.
    #[error("cannot read the migrations: {0}")]
    Source(String),
    /// The database did not answer before the retry policy gave up; nothing was applied.
    #[error("database unavailable after {retries} retries ({class}): {message}; nothing was applied")]
    Unavailable {
        /// The class of the last failure.
        class: ErrorClass,
        /// The last failure, redacted.
        message: String,
        /// Retries made.
        retries: u32,
    },
    /// A migration's SQL failed. It was rolled back when it ran in a transaction; the ones
    /// before it stay applied and the ones after it were not run.
    #[error("{file} failed{}: {message}{}; {}",
        statement.as_ref().map(|s| format!(" at {s}")).unwrap_or_default(),
        code.as_ref().map(|c| format!(" (code {c})")).unwrap_or_default(),
        if *rolled_back { "it was rolled back; earlier migrations stay applied, later ones were not run" }
        else { "it ran without a migration transaction (-- no-transaction), so what it did before the failure may stay: check the schema before running it again" })]
    Failed {
        /// The migration's version.
        version: i64,
        /// The file that failed.
        file: String,
        /// `line N: <statement>`, when the database says where.
        statement: Option<String>,
        /// The database's message.
        message: String,
        /// SQLSTATE or SQLite result code.
        code: Option<String>,
        /// Whether the migration's changes were undone.
        rolled_back: bool,
    },
    /// The connection was lost while a migration ran: the database either committed it or rolled
    /// it back, and the runner does not replay it blindly.
    #[error(
        "the connection was lost while {file} ran ({message}); it is either applied or absent: run `dbguard migrate status`, then `up` again"
    )]
    Interrupted {
        /// The migration's version.
        version: i64,
        /// The file that was running.
        file: String,
        /// What the driver said, redacted.
        message: String,
    },
    /// An applied migration's file has changed since.
    #[error(
        "{file} was applied with another checksum: the file changed after it was applied; restore it, or write a new migration"
    )]
    Changed {
        /// Its version.
        version: i64,
        /// Its file.
        file: String,
    },
    /// The database has applied a migration this binary does not ship (a rollback deploy).
    #[error(
        "the database has applied migration {version}, which is not in this binary's migrations; deploy the binary that has it, or revert it with that binary (`dbguard migrate status` lists it)"
    )]
    UnknownApplied {
        /// Its version.
        version: i64,
    },
    /// A migration started and did not finish (a failed `-- no-transaction` migration).
    #[error("migration {version} is partially applied: repair the schema, then delete its row from _sqlx_migrations")]
    Dirty {
        /// Its version.
        version: i64,
    },
    /// `down` was asked to revert a migration that has no down file.
    #[error("{file} has no down file, so it cannot be reverted")]
    NotReversible {
        /// Its version.
        version: i64,
        /// Its (up) file.
        file: String,
    },
    /// A statement of dbguard's own around the migrations failed.
    #[error("migrations table: {0}")]
    Database(String),
}

impl MigrationError {
    /// Whether the run was refused before it touched anything because the database is out of
    /// step with the files (changed, unknown, dirty, irreversible).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Self::Changed { .. } | Self::UnknownApplied { .. } | Self::Dirty { .. } | Self::NotReversible { .. }
        )
    }
}

/// Applies every pending migration, oldest first, each in its own transaction.
pub async fn migrate_up(
    config: &DbConfig,
    set: &MigrationSet,
    events: &mut (dyn FnMut(MigrationEvent) + Send),
) -> Result<MigrationRun, MigrationError> {
    let redactor = Redactor::from_config(config);
    let (mut session, waited_for_lock) = open_locked::<Session>(config, &redactor, events).await?;
    let outcome = async {
        let report = session.checked_report(set, &redactor).await?;
        let mut run = MigrationRun { versions: Vec::new(), waited_for_lock };
        for version in report.versions(MigrationState::Pending) {
            let started = std::time::Instant::now();
            if let Err(err) = session.apply_through(set, version).await {
                return Err(session.explain(set, version, true, err, &redactor).await);
            }
            events(MigrationEvent::Applied { version, file: set.up_file(version), elapsed: started.elapsed() });
            run.versions.push(version);
        }
        Ok(run)
    }
    .await;
    session.close().await;
    outcome
}

/// Reverts the newest `steps` applied migrations, newest first, each with its down file.
pub async fn migrate_down(
    config: &DbConfig,
    set: &MigrationSet,
    steps: usize,
    events: &mut (dyn FnMut(MigrationEvent) + Send),
) -> Result<MigrationRun, MigrationError> {
    let redactor = Redactor::from_config(config);
    let (mut session, waited_for_lock) = open_locked::<Session>(config, &redactor, events).await?;
    let outcome = async {
        let report = session.checked_report(set, &redactor).await?;
        let applied = report.versions(MigrationState::Applied);
        let to_revert: Vec<i64> = applied.iter().rev().take(steps).copied().collect();
        if let Some(&version) = to_revert.iter().find(|&&version| set.down_file(version).is_none()) {
            return Err(MigrationError::NotReversible { version, file: set.up_file(version) });
        }
        let mut run = MigrationRun { versions: Vec::new(), waited_for_lock };
        for (index, &version) in to_revert.iter().enumerate() {
            // sqlx reverts everything above the target: the next older applied version.
            let target = applied.iter().rev().nth(index + 1).copied().unwrap_or(i64::MIN);
            let started = std::time::Instant::now();
            if let Err(err) = session.revert_to(set, target).await {
                return Err(session.explain(set, version, false, err, &redactor).await);
            }
            let file = set.down_file(version).unwrap_or_default();
            events(MigrationEvent::Reverted { version, file, elapsed: started.elapsed() });
            run.versions.push(version);
        }
        Ok(run)
    }
    .await;
    session.close().await;
    outcome
}

/// The refusal for the first migration of `report` that is out of step; `name` gives a
/// version's file (or migration) name.
fn refuse_out_of_step(report: &MigrationsReport, name: impl Fn(i64) -> String) -> Result<(), MigrationError> {
    for entry in &report.migrations {
        match entry.state {
            MigrationState::Dirty => return Err(MigrationError::Dirty { version: entry.version }),
            MigrationState::Changed => {
                return Err(MigrationError::Changed { version: entry.version, file: name(entry.version) });
            }
            MigrationState::Unknown => {
                return Err(MigrationError::UnknownApplied { version: entry.version });
            }
            MigrationState::Applied | MigrationState::Pending => {}
        }
    }
    Ok(())
}

/// sea-orm-cli's migration names, `m<YYYYMMDD>_<HHMMSS>_<name>`, as a version
/// (`YYYYMMDDHHMMSS`) and a description (`<name>` in words).
fn seaorm_version(name: &str) -> Option<(i64, String)> {
    let rest = name.strip_prefix('m')?;
    let (date, rest) = rest.split_once('_')?;
    let (time, description) = rest.split_once('_')?;
    let digits = |part: &str, len: usize| part.len() == len && part.bytes().all(|b| b.is_ascii_digit());
    if !digits(date, 8) || !digits(time, 6) || description.is_empty() {
        return None;
    }
    Some((format!("{date}{time}").parse().ok()?, description.replace('_', " ")))
}

const TRY_LOCK_SQL: &str = "SELECT pg_try_advisory_lock($1)";
const LOCK_SQL: &str = "SELECT pg_advisory_lock($1)";

/// A connection a run holds the migration lock on, for the whole run.
trait LockedSession: Sized {
    /// Opens the session.
    async fn connect(config: &DbConfig) -> Result<Self, AttemptFailure>;

    /// Takes the migration lock, waiting (and saying so) while another instance holds it;
    /// returns whether it waited.
    async fn lock(&mut self, events: &mut (dyn FnMut(MigrationEvent) + Send)) -> Result<bool, AttemptFailure>;
}

/// Why connecting or locking failed: the class decides whether to retry.
struct AttemptFailure {
    class: ErrorClass,
    message: String,
}

impl AttemptFailure {
    #[cfg(feature = "sea-orm-migration")]
    fn of_db_err(err: &sea_orm::DbErr) -> Self {
        Self { class: crate::classify::classify_db_err(err).class, message: err.to_string() }
    }

    fn of_sqlx(err: &sqlx::Error) -> Self {
        Self { class: classify_sqlx(err).class, message: err.to_string() }
    }
}

/// Connects and takes the lock, retrying failures under the configured policy (nothing has
/// run yet, so a retry is always safe). Returns the session and whether it waited.
async fn open_locked<S: LockedSession>(
    config: &DbConfig,
    redactor: &Redactor,
    events: &mut (dyn FnMut(MigrationEvent) + Send),
) -> Result<(S, bool), MigrationError> {
    let mut retry = ConnectRetry::new(config, redactor);
    loop {
        let failure = match S::connect(config).await {
            Ok(mut session) => match session.lock(events).await {
                Ok(waited) => return Ok((session, waited)),
                Err(failure) => failure,
            },
            Err(failure) => failure,
        };
        retry.after_failure(failure.class, &failure.message, events).await?;
    }
}

/// The retry schedule for connecting and taking the lock: the configured policy, as for any
/// idempotent call, since nothing has run yet.
struct ConnectRetry<'a> {
    clock: Clock,
    state: RetryState,
    redactor: &'a Redactor,
}

impl<'a> ConnectRetry<'a> {
    fn new(config: &DbConfig, redactor: &'a Redactor) -> Self {
        Self { clock: Clock::new(), state: RetryState::new(config.retry, Idempotency::Idempotent), redactor }
    }

    /// After a failed attempt: reports the retry and sleeps until it is due, or gives up.
    async fn after_failure(
        &mut self,
        class: ErrorClass,
        message: &str,
        events: &mut (dyn FnMut(MigrationEvent) + Send),
    ) -> Result<(), MigrationError> {
        let message = self.redactor.scrub(message);
        let now = self.clock.now();
        match self.state.on_failure(now, class) {
            Decision::RetryAt(deadline) => {
                events(MigrationEvent::Retrying {
                    attempt: self.state.retries(),
                    delay: deadline.saturating_duration_since(now),
                    reason: message,
                });
                self.clock.sleep_until(deadline).await;
                Ok(())
            }
            Decision::GiveUp(_) => Err(MigrationError::Unavailable { class, message, retries: self.state.retries() }),
        }
    }
}

#[cfg(any(feature = "sqlite", feature = "sea-orm-migration"))]
/// The lock file beside a SQLite database file (`<file>.migrate-lock`); none for an in-memory
/// database, which no other process can see.
fn sqlite_lock_file(config: &DbConfig) -> std::io::Result<Option<std::fs::File>> {
    match config.url.sqlite_path() {
        Some(path) if !config.url.is_sqlite_memory() => {
            pool::prepare_sqlite_file(config)?;
            std::fs::File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(format!("{path}.migrate-lock"))
                .map(Some)
        }
        _ => Ok(None),
    }
}

#[cfg(any(feature = "sqlite", feature = "sea-orm-migration"))]
/// Locks `file`, waiting on a blocking thread (and saying so) while another process holds it.
/// Returns whether it waited.
async fn take_file_lock(
    file: Option<&std::fs::File>,
    events: &mut (dyn FnMut(MigrationEvent) + Send),
) -> std::io::Result<bool> {
    let Some(file) = file else { return Ok(false) };
    match file.try_lock() {
        Ok(()) => Ok(false),
        Err(std::fs::TryLockError::WouldBlock) => {
            events(MigrationEvent::WaitingForLock);
            // A duplicate handle shares the open file description, so its lock is the file's.
            let waiting = file.try_clone()?;
            tokio::task::spawn_blocking(move || waiting.lock()).await.map_err(std::io::Error::other)??;
            Ok(true)
        }
        Err(std::fs::TryLockError::Error(err)) => Err(err),
    }
}

/// One connection that holds the migration lock for the whole run. Dropping it (or closing
/// it) releases the lock: PostgreSQL ends a session's advisory locks with the session, and the
/// SQLite lock file is unlocked when its handle closes.
enum Session {
    Postgres(sqlx::PgConnection),
    #[cfg(feature = "sqlite")]
    Sqlite {
        conn: sqlx::SqliteConnection,
        _lock: Option<std::fs::File>,
    },
}

/// Runs `$body` with `$conn` bound to the session's connection, whatever its driver.
macro_rules! with_connection {
    ($session:expr, $conn:ident => $body:expr) => {
        match $session {
            Session::Postgres($conn) => $body,
            #[cfg(feature = "sqlite")]
            Session::Sqlite { conn: $conn, .. } => $body,
        }
    };
}

impl LockedSession for Session {
    async fn connect(config: &DbConfig) -> Result<Self, AttemptFailure> {
        Self::connect_sqlx(config).await.map_err(|err| AttemptFailure::of_sqlx(&err))
    }

    async fn lock(&mut self, events: &mut (dyn FnMut(MigrationEvent) + Send)) -> Result<bool, AttemptFailure> {
        self.lock_sqlx(events).await.map_err(|err| AttemptFailure::of_sqlx(&err))
    }
}

impl Session {
    async fn connect_sqlx(config: &DbConfig) -> Result<Self, sqlx::Error> {
        match config.database_type() {
            DatabaseType::Postgresql => {
                // Migrations go to a server that takes writes, chosen as the pools choose.
                let server = pool::select_server(config).await.map_err(|none| {
                    sqlx::Error::Io(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, none.cause))
                })?;
                let options = pool::pg_session_options(config, server)?;
                Ok(Self::Postgres(sqlx::PgConnection::connect_with(&options).await?))
            }
            #[cfg(not(feature = "sqlite"))]
            DatabaseType::Sqlite => Err(sqlx::Error::Configuration(pool::SQLITE_NOT_BUILT.into())),
            #[cfg(feature = "sqlite")]
            DatabaseType::Sqlite => {
                use sqlx::ConnectOptions as _;
                pool::prepare_sqlite_file(config)?;
                let options = config
                    .url
                    .expose_secret()
                    .parse::<sqlx::sqlite::SqliteConnectOptions>()?
                    .create_if_missing(true)
                    .busy_timeout(pool::SQLITE_BUSY_TIMEOUT)
                    .disable_statement_logging();
                let lock = sqlite_lock_file(config)?;
                Ok(Self::Sqlite { conn: options.connect().await?, _lock: lock })
            }
        }
    }

    /// Takes the migration lock, waiting (and saying so) while another instance holds it.
    async fn lock_sqlx(&mut self, events: &mut (dyn FnMut(MigrationEvent) + Send)) -> Result<bool, sqlx::Error> {
        match self {
            Self::Postgres(conn) => {
                let taken: bool =
                    sqlx::query_scalar(TRY_LOCK_SQL).bind(MIGRATION_LOCK_KEY).fetch_one(&mut *conn).await?;
                if taken {
                    return Ok(false);
                }
                events(MigrationEvent::WaitingForLock);
                sqlx::query(LOCK_SQL).bind(MIGRATION_LOCK_KEY).execute(&mut *conn).await?;
                Ok(true)
            }
            #[cfg(feature = "sqlite")]
            Self::Sqlite { _lock: lock, .. } => Ok(take_file_lock(lock.as_ref(), events).await?),
        }
    }

    /// The files compared with the migrator's table, or the refusal when the two are out of
    /// step.
    async fn checked_report(
        &mut self,
        set: &MigrationSet,
        redactor: &Redactor,
    ) -> Result<MigrationsReport, MigrationError> {
        let applied = self.applied().await.map_err(|err| MigrationError::Database(redactor.scrub(&err.to_string())))?;
        let report = compare(&set.known(), &applied);
        refuse_out_of_step(&report, |version| set.up_file(version))?;
        Ok(report)
    }

    /// The migrator's table, as sqlx reads it (creating it on first use).
    async fn applied(&mut self) -> Result<Vec<AppliedMigration>, MigrateError> {
        with_connection!(self, conn => applied_rows(conn).await)
    }

    /// Applies the pending migrations up to and including `version`.
    async fn apply_through(&mut self, set: &MigrationSet, version: i64) -> Result<(), MigrateError> {
        with_connection!(self, conn => set.migrator.run_direct(Some(version), conn, false).await)
    }

    /// Reverts the applied migrations above `target`.
    async fn revert_to(&mut self, set: &MigrationSet, target: i64) -> Result<(), MigrateError> {
        with_connection!(self, conn => set.migrator.undo(&mut *conn, target).await)
    }

    /// Turns a failure while migration `version` ran into an error that names its file and,
    /// where it can be found, the failing statement.
    async fn explain(
        &mut self,
        set: &MigrationSet,
        version: i64,
        up: bool,
        err: MigrateError,
        redactor: &Redactor,
    ) -> MigrationError {
        let file =
            if up { set.up_file(version) } else { set.down_file(version).unwrap_or_else(|| set.up_file(version)) };
        let (sql, no_transaction) = set.sql(version, up).unwrap_or(("", false));
        let driver_error = match &err {
            MigrateError::ExecuteMigration(driver, _) | MigrateError::Execute(driver) => driver,
            MigrateError::VersionMismatch(_) => return MigrationError::Changed { version, file },
            MigrateError::Dirty(version) => return MigrationError::Dirty { version: *version },
            other => return MigrationError::Database(redactor.scrub(&other.to_string())),
        };
        let classified = classify_sqlx(driver_error);
        if classified.class.is_connectivity() || matches!(driver_error, sqlx::Error::Io(_) | sqlx::Error::Protocol(_)) {
            return MigrationError::Interrupted { version, file, message: redactor.scrub(&driver_error.to_string()) };
        }
        let message = match driver_error {
            sqlx::Error::Database(db) => db.message().to_owned(),
            other => redactor.scrub(&other.to_string()),
        };
        // PostgreSQL says where most errors are; where it does not (and always on SQLite), the
        // statement is found by running the script again in a transaction that is rolled back.
        let reported = match driver_error {
            sqlx::Error::Database(db) => db
                .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                .and_then(|pg| match pg.position() {
                    Some(sqlx::postgres::PgErrorPosition::Original(position)) => byte_of_char(sql, position),
                    _ => None,
                })
                .and_then(|byte| statement_at(sql, byte)),
            _ => None,
        };
        let statement = match reported {
            Some(statement) => Some(statement),
            None if !no_transaction && matches!(driver_error, sqlx::Error::Database(_)) => {
                self.locate_failing_statement(sql).await
            }
            None => None,
        };
        MigrationError::Failed {
            version,
            file,
            statement,
            message,
            code: classified.code,
            rolled_back: !no_transaction,
        }
    }

    /// Runs the script's statements one by one inside a transaction that is always rolled
    /// back, and returns the first that fails, as `line N: <statement>`. Only for scripts that
    /// ran in a transaction (so the failed run left nothing), while the lock is still held.
    async fn locate_failing_statement(&mut self, sql: &str) -> Option<String> {
        with_connection!(self, conn => first_failing_statement(conn, sql).await)
    }

    async fn close(self) {
        let _ = with_connection!(self, conn => conn.close().await);
    }
}

async fn applied_rows<C: Migrate + ?Sized>(conn: &mut C) -> Result<Vec<AppliedMigration>, MigrateError> {
    conn.ensure_migrations_table(MIGRATIONS_TABLE).await?;
    let dirty = conn.dirty_version(MIGRATIONS_TABLE).await?;
    let rows = conn.list_applied_migrations(MIGRATIONS_TABLE).await?;
    Ok(rows
        .into_iter()
        .map(|row| AppliedMigration {
            version: row.version,
            description: String::new(),
            checksum: row.checksum.into_owned(),
            success: Some(row.version) != dirty,
            applied_at: None,
        })
        .collect())
}

async fn first_failing_statement<C>(conn: &mut C, sql: &str) -> Option<String>
where
    C: sqlx::Connection,
    for<'t> &'t mut <C::Database as sqlx::Database>::Connection: sqlx::Executor<'t, Database = C::Database>,
{
    let mut transaction = conn.begin().await.ok()?;
    let mut found = None;
    for (offset, statement) in split_statements(sql) {
        let attempt = sqlx::raw_sql(sqlx::AssertSqlSafe(statement.to_owned())).execute(&mut *transaction).await;
        if attempt.is_err() {
            found = statement_at(sql, offset);
            break;
        }
    }
    let _ = transaction.rollback().await;
    found
}

/// The byte offset of the 1-based character `position` (PostgreSQL counts characters).
fn byte_of_char(sql: &str, position: usize) -> Option<usize> {
    sql.char_indices().nth(position.checked_sub(1)?).map(|(byte, _)| byte)
}

/// `line N: <statement>` for the statement around byte `offset` of `sql`.
fn statement_at(sql: &str, offset: usize) -> Option<String> {
    if offset >= sql.len() {
        return None;
    }
    let start =
        split_statements(sql).into_iter().map(|(start, _)| start).take_while(|&start| start <= offset).last()?;
    let (_, statement) = split_statements(sql).into_iter().find(|&(begin, _)| begin == start)?;
    let line = sql[..start].matches('\n').count() + 1;
    let one_line = statement.split_whitespace().collect::<Vec<_>>().join(" ");
    Some(format!("line {line}: {one_line}"))
}

/// The statements of a script with the byte offset where each begins (past leading space and
/// comments), split at semicolons outside quotes and comments. Good enough to point at a
/// statement; the database, not this, decides what the script means.
fn split_statements(sql: &str) -> Vec<(usize, &str)> {
    let bytes = sql.as_bytes();
    let mut statements = Vec::new();
    let mut start = 0;
    let mut index = 0;
    fn push<'a>(sql: &'a str, from: usize, to: usize, statements: &mut Vec<(usize, &'a str)>) {
        let text = &sql[from..to];
        let skipped = leading_noise(text);
        let body = text[skipped..].trim_end();
        if !body.is_empty() {
            statements.push((from + skipped, body));
        }
    }
    while index < bytes.len() {
        match bytes[index] {
            quote @ (b'\'' | b'"') => {
                index += 1;
                while index < bytes.len() && bytes[index] != quote {
                    index += 1;
                }
            }
            b'-' if bytes.get(index + 1) == Some(&b'-') => {
                while index < bytes.len() && bytes[index] != b'\n' {
                    index += 1;
                }
            }
            b'/' if bytes.get(index + 1) == Some(&b'*') => {
                index += 2;
                while index + 1 < bytes.len() && !(bytes[index] == b'*' && bytes[index + 1] == b'/') {
                    index += 1;
                }
                index += 1;
            }
            b';' => {
                push(sql, start, index, &mut statements);
                start = index + 1;
            }
            _ => {}
        }
        index += 1;
    }
    push(sql, start.min(sql.len()), sql.len(), &mut statements);
    statements
}

/// Bytes of whitespace and comments at the start of `text`.
fn leading_noise(text: &str) -> usize {
    let mut rest = text;
    loop {
        let trimmed = rest.trim_start();
        if let Some(comment) = trimmed.strip_prefix("--") {
            rest = comment.split_once('\n').map_or("", |(_, after)| after);
        } else if let Some(comment) = trimmed.strip_prefix("/*") {
            rest = comment.split_once("*/").map_or("", |(_, after)| after);
        } else {
            return text.len() - trimmed.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_split_outside_quotes_and_comments() {
        let sql =
            "-- header; not a statement\nCREATE TABLE a (x text DEFAULT ';');\n/* b; */ INSERT INTO a VALUES ('1');\n";
        let statements: Vec<&str> = split_statements(sql).into_iter().map(|(_, s)| s).collect();
        assert_eq!(statements, vec!["CREATE TABLE a (x text DEFAULT ';')", "INSERT INTO a VALUES ('1')"]);
    }

    #[test]
    fn sea_orm_cli_names_become_versions() {
        assert_eq!(seaorm_version("m20220101_000001_create_table"), Some((20220101000001, "create table".to_owned())));
        for name in ["create_table", "m2022_000001_x", "m20220101_0001_x", "m20220101_000001_", "mabcdefgh_000001_x"] {
            assert_eq!(seaorm_version(name), None, "{name}");
        }
    }

    #[test]
    fn a_position_names_its_statement_and_line() {
        let sql = "CREATE TABLE a (x int);\n\nINSERT INTO missing\n  VALUES (1);\nSELECT 1;";
        let position = sql.find("missing").unwrap() + 1;
        let byte = byte_of_char(sql, position).unwrap();
        assert_eq!(statement_at(sql, byte).as_deref(), Some("line 3: INSERT INTO missing VALUES (1)"));
        assert_eq!(statement_at(sql, 0).as_deref(), Some("line 1: CREATE TABLE a (x int)"));
        assert_eq!(statement_at(sql, 10_000), None);
        // Characters, not bytes: a multi-byte character before the error moves the byte offset.
        let accented = "INSERT INTO é VALUES (1);\nINSERT INTO missing VALUES (2);";
        let position = accented.chars().position(|c| c == 'm').unwrap() + 1;
        assert_eq!(
            byte_of_char(accented, position).and_then(|b| statement_at(accented, b)).as_deref(),
            Some("line 2: INSERT INTO missing VALUES (2)")
        );
    }
}
