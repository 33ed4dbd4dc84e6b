//! `dbguard migrate up | down [N] | status [--json] | new NAME`, and the migrations step of
//! `dbguard serve`.
//!
//! Exit codes (also in the README):
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done; for `status`, every migration is applied |
//! | 1 | a migration failed (it was rolled back); for `status`, migrations are pending |
//! | 2 | refused, nothing ran: the database is out of step with the files (a changed, unknown or half-applied migration, or `down` past a migration without a down file) |
//! | 64 | bad arguments (`down 0`, a `new` name that is not `[a-z0-9_]`) |
//! | 66 | the migrations directory does not exist |
//! | 69 | the database did not answer before the retry policy gave up; nothing ran |
//! | 73 | `new` cannot write its files |
//! | 75 | the connection was lost during a migration: check `status`, then run `up` again |
//! | 78 | the configuration is invalid |

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Subcommand;
use dbguard::DbManager;
use dbguard::migrate::{self, MigrationError, MigrationEvent, MigrationRun, MigrationSet};
use dbguard_core::migrations::{MigrationState, MigrationsReport};
use dbguard_core::{DbConfig, LogFormat};

use crate::cli::{EXIT_CANTCREAT, EXIT_UNAVAILABLE};

/// EX_USAGE (sysexits.h): the command was used incorrectly.
pub const EXIT_USAGE: u8 = 64;
/// EX_NOINPUT (sysexits.h): the migrations directory does not exist.
pub const EXIT_NO_INPUT: u8 = 66;
/// EX_TEMPFAIL (sysexits.h): interrupted; running again is expected to work.
pub const EXIT_TEMPFAIL: u8 = 75;
/// A migration failed, or (for `status`) migrations are pending.
pub const EXIT_FAILED: u8 = 1;
/// Refused before anything ran, or (for `status`) the database is out of step.
pub const EXIT_REFUSED: u8 = 2;

/// `dbguard migrate …`: the directory is DBGUARD_MIGRATIONS (default `migrations/`).
#[derive(Debug, Subcommand)]
pub enum MigrateCommand {
    /// Apply every pending migration, oldest first, each in its own transaction.
    Up,
    /// Revert the newest N applied migrations with their down files (default 1).
    Down {
        /// How many to revert.
        #[arg(default_value_t = 1)]
        steps: usize,
    },
    /// List applied and pending migrations; exit 0 when all are applied, 1 with some
    /// pending, 2 when the database is out of step with the files.
    Status {
        /// Print the report as JSON (schemas/migrations-report.schema.json).
        #[arg(long)]
        json: bool,
    },
    /// Create `<timestamp>_NAME.up.sql` and `.down.sql` in the migrations directory.
    New {
        /// Lower-case letters, digits and underscores.
        name: String,
    },
}

/// Runs `command` against the configured database and directory.
pub async fn run(config: DbConfig, command: MigrateCommand) -> ExitCode {
    let directory = config.service.migrations_dir.clone();
    if let MigrateCommand::New { name } = &command {
        return new_migration(Path::new(&directory), name);
    }
    let set = match MigrationSet::load(&directory).await {
        Ok(set) => set,
        Err(err) => return fail(&err),
    };
    let mut events = event_printer(config.service.log_format);
    match command {
        MigrateCommand::Up => finish(
            migrate::migrate_up(&config, &set, &mut events).await,
            "applied",
            "nothing to apply: the database is at the newest migration",
        ),
        MigrateCommand::Down { steps: 0 } => {
            eprintln!("dbguard: migrate down needs a number of migrations above 0");
            ExitCode::from(EXIT_USAGE)
        }
        MigrateCommand::Down { steps } => finish(
            migrate::migrate_down(&config, &set, steps, &mut events).await,
            "reverted",
            "nothing to revert: no migration is applied",
        ),
        MigrateCommand::Status { json } => status(config, &set, json).await,
        MigrateCommand::New { .. } => ExitCode::SUCCESS,
    }
}

/// The migrations step of `dbguard serve`: applies pending migrations first when
/// DBGUARD_MIGRATE_ON_START is true, then watches the directory (when it exists) so that
/// health reports `database:migrations` and status lists them. `Err` is the exit code to stop
/// with.
pub async fn on_serve_start(manager: &DbManager) -> Result<(), ExitCode> {
    let config = manager.config();
    let directory = &config.service.migrations_dir;
    if config.service.migrate_on_start {
        let set = MigrationSet::load(directory).await.map_err(|err| fail(&err))?;
        let mut events = event_printer(config.service.log_format);
        let run = migrate::migrate_up(config, &set, &mut events).await.map_err(|err| fail(&err))?;
        tracing::info!(applied = run.versions.len(), directory = %directory, "migrations applied at start");
        manager.watch_migrations(Some(set.catalog()));
    } else {
        watch_if_present(manager).await;
    }
    Ok(())
}

/// Watches the configured migrations directory if it exists; a service without one has no
/// `database:migrations` check. A directory that exists and cannot be read is logged.
pub async fn watch_if_present(manager: &DbManager) {
    let directory = &manager.config().service.migrations_dir;
    match MigrationSet::load(directory).await {
        Ok(set) => manager.watch_migrations(Some(set.catalog())),
        Err(MigrationError::NoDirectory(_)) => {}
        Err(err) => tracing::warn!(error = %err, "migrations not watched"),
    }
}

async fn status(config: DbConfig, set: &MigrationSet, json: bool) -> ExitCode {
    let manager = match DbManager::connect_lazy(config).await {
        Ok(manager) => manager,
        Err(err) => {
            eprintln!("dbguard: {err}");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    let report = manager.migration_status(&set.catalog()).await;
    manager.close().await;
    let report = match report {
        Ok(report) => report,
        Err(err) => {
            eprintln!("dbguard: cannot read the migrations table: {err}");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(err) => eprintln!("dbguard: {err}"),
        }
    } else {
        print_status(&report);
    }
    if report.is_out_of_step() {
        ExitCode::from(EXIT_REFUSED)
    } else if report.count(MigrationState::Pending) > 0 {
        ExitCode::from(EXIT_FAILED)
    } else {
        ExitCode::SUCCESS
    }
}

fn print_status(report: &MigrationsReport) {
    for entry in &report.migrations {
        let state = match entry.state {
            MigrationState::Applied => "applied",
            MigrationState::Pending => "pending",
            MigrationState::Changed => "CHANGED",
            MigrationState::Unknown => "UNKNOWN",
            MigrationState::Dirty => "DIRTY",
        };
        let at = entry.applied_at.as_deref().unwrap_or("-");
        println!("{:>16}  {state:<8} {at:<20}  {}", entry.version, entry.description);
    }
    let check = report.check();
    println!("{}", check.message.unwrap_or_default());
}

/// Prints what a run does as it goes: lines for people, or log records for JSON logs.
fn event_printer(format: LogFormat) -> impl FnMut(MigrationEvent) + Send {
    move |event| {
        let line = match &event {
            MigrationEvent::Retrying { attempt, delay, reason } => {
                format!("database unavailable ({reason}); retry {attempt} in {}", millis(*delay))
            }
            MigrationEvent::WaitingForLock => "waiting for another instance to finish migrating".to_owned(),
            MigrationEvent::Applied { file, elapsed, .. } => format!("applied {file} ({})", millis(*elapsed)),
            MigrationEvent::Reverted { file, elapsed, .. } => format!("reverted {file} ({})", millis(*elapsed)),
        };
        match format {
            LogFormat::Json => tracing::info!(event = %line, "migrate"),
            LogFormat::Text => println!("{line}"),
        }
    }
}

fn millis(duration: Duration) -> String {
    format!("{} ms", duration.as_millis())
}

/// Prints how a run ended: `<done> N migration(s)`, `nothing` when it changed nothing, or the
/// error.
fn finish(outcome: Result<MigrationRun, MigrationError>, done: &str, nothing: &str) -> ExitCode {
    match outcome {
        Ok(run) if run.versions.is_empty() => println!("{nothing}"),
        Ok(run) => println!("{done} {} migration(s)", run.versions.len()),
        Err(err) => return fail(&err),
    }
    ExitCode::SUCCESS
}

fn fail(err: &MigrationError) -> ExitCode {
    eprintln!("dbguard: {err}");
    ExitCode::from(exit_code(err))
}

/// The exit code for `err` (see the module's table).
pub fn exit_code(err: &MigrationError) -> u8 {
    match err {
        MigrationError::NoDirectory(_) => EXIT_NO_INPUT,
        MigrationError::Source(_) => EXIT_NO_INPUT,
        MigrationError::Unavailable { .. } | MigrationError::Database(_) => EXIT_UNAVAILABLE,
        MigrationError::Interrupted { .. } => EXIT_TEMPFAIL,
        MigrationError::Failed { .. } => EXIT_FAILED,
        refused if refused.is_refusal() => EXIT_REFUSED,
        _ => EXIT_FAILED,
    }
}

/// `migrate new NAME`: an up and a down file versioned by the UTC time, one second later than
/// an existing version if two are made in the same second.
fn new_migration(directory: &Path, name: &str) -> ExitCode {
    let valid =
        !name.is_empty() && name.bytes().all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_');
    if !valid {
        eprintln!(
            "dbguard: migration name {name:?} must be lower-case letters, digits and underscores, e.g. add_orders"
        );
        return ExitCode::from(EXIT_USAGE);
    }
    if let Err(err) = std::fs::create_dir_all(directory) {
        eprintln!("dbguard: cannot create {}: {err}", directory.display());
        return ExitCode::from(EXIT_CANTCREAT);
    }
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let stamp: String =
        dbguard_core::time::rfc3339_utc(since_epoch).chars().filter(char::is_ascii_digit).take(14).collect();
    let mut version: i64 = stamp.parse().unwrap_or(1);
    while version_exists(directory, version) {
        version += 1;
    }
    for (suffix, text) in [
        ("up", format!("-- {name}: applied by `dbguard migrate up`, in one transaction.\n")),
        ("down", format!("-- {name}: reverts the up file, applied by `dbguard migrate down`.\n")),
    ] {
        let path = directory.join(format!("{version}_{name}.{suffix}.sql"));
        let written =
            std::fs::File::create_new(&path).and_then(|mut file| std::io::Write::write_all(&mut file, text.as_bytes()));
        if let Err(err) = written {
            eprintln!("dbguard: cannot write {}: {err}", path.display());
            return ExitCode::from(EXIT_CANTCREAT);
        }
        println!("created {}", path.display());
    }
    ExitCode::SUCCESS
}

fn version_exists(directory: &Path, version: i64) -> bool {
    let prefix = format!("{version}_");
    std::fs::read_dir(directory)
        .map(|entries| entries.flatten().any(|entry| entry.file_name().to_string_lossy().starts_with(&prefix)))
        .unwrap_or(false)
}
