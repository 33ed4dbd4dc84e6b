//! The `dbguard` command line: `serve`, `check`, `info`, `migrate`, `schemas`, `token`, `wasi run`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use dbguard::{DbManager, env};
use dbguard_http::api::{self, AppState};
use dbguard_http::auth::{Authenticator, parse_ttl};

use crate::migrate::MigrateCommand;
use crate::{logging, migrate, wasi_run};
use dbguard_core::{DbConfig, LogFormat, Profile};

/// EX_CONFIG (sysexits.h): the configuration is invalid.
pub const EXIT_CONFIG: u8 = 78;
/// EX_UNAVAILABLE (sysexits.h): a service (the database, the port) is unavailable.
pub const EXIT_UNAVAILABLE: u8 = 69;
/// EX_CANTCREAT (sysexits.h): an output file cannot be written.
pub const EXIT_CANTCREAT: u8 = 73;

/// How long shutdown waits for checked-out database connections to come back.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Database connections that survive real life: health API, checks and tokens.
///
/// Configuration comes from the environment (and `.env`): DATABASE_URL, DBGUARD_ENV,
/// DBGUARD_BIND, JWT_SECRET, … — see the README.
#[derive(Debug, Parser)]
#[command(name = "dbguard", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the HTTP health API until SIGTERM or Ctrl-C (then drain and close the pools).
    Serve {
        /// Listen address (overrides DBGUARD_BIND).
        #[arg(long)]
        bind: Option<String>,
    },
    /// Probe the database once; exit 0 healthy, 1 degraded, 2 unhealthy.
    Check {
        /// Probe even if a cached report exists (a one-shot process always probes).
        #[arg(long)]
        force: bool,
        /// Print the health report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print what dbguard connects to (never the password), as JSON.
    Info,
    /// Apply, revert, list or create schema migrations (DBGUARD_MIGRATIONS, default
    /// `migrations/`); many instances may run `up` at once, one migrates.
    Migrate {
        #[command(subcommand)]
        command: MigrateCommand,
    },
    /// Write the JSON Schemas and openapi.json.
    Schemas {
        /// Output directory.
        #[arg(long, default_value = "schemas")]
        out: PathBuf,
    },
    /// Mint an API token with the configured JWT_SECRET.
    Token {
        /// Space-separated scopes.
        #[arg(long, default_value = "db:read")]
        scope: String,
        /// Lifetime: seconds, or with s, m, h, d.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// The `sub` claim.
        #[arg(long, default_value = "cli")]
        subject: String,
    },
    /// Run WebAssembly (WASI) modules such as dbguard-wasi.wasm.
    Wasi {
        #[command(subcommand)]
        command: WasiCommand,
    },
}

#[derive(Debug, Subcommand)]
enum WasiCommand {
    /// Run a WASI preview 1 command with only the database's directory preopened, read-only
    /// unless --writable; exits with the module's exit code.
    ///
    /// DATABASE_URL and the DBGUARD_ENV / DB_* settings (from the environment and .env) are
    /// passed in, the URL rewritten to the database's path inside the sandbox (/db/…).
    ///
    /// Compiled modules are cached in DBGUARD_WASI_CACHE_DIR (default
    /// $XDG_CACHE_HOME/dbguard/wasi, else ~/.cache/dbguard/wasi), so later runs of the same
    /// module start without compiling; DBGUARD_WASI_CACHE=off turns the cache off.
    Run {
        /// The module (.wasm).
        file: PathBuf,
        /// The directory to preopen (default: the directory of DATABASE_URL's file).
        #[arg(long)]
        db_dir: Option<PathBuf>,
        /// Preopen the directory read-write. dbguard-wasi reads without it (without a lock);
        /// with it, SQLite's WASI build takes its `<database>.lock` directory, so readers and
        /// writers of the WASI build coordinate. The module itself opens the database read-only.
        #[arg(long)]
        writable: bool,
        /// Arguments for the module, after `--` (e.g. `-- check`).
        #[arg(last = true)]
        args: Vec<String>,
    },
}

impl Cli {
    /// Parses the arguments and runs the command.
    pub fn run() -> ExitCode {
        let cli = Self::parse();
        match cli.command {
            Command::Schemas { out } => {
                logging::init(LogFormat::Text);
                schemas(&out)
            }
            Command::Wasi { command } => {
                logging::init(LogFormat::Text);
                wasi(command)
            }
            command => {
                let config = match env::load_config() {
                    Ok(config) => config,
                    Err(err) => {
                        eprintln!("dbguard: configuration error: {err}");
                        return ExitCode::from(EXIT_CONFIG);
                    }
                };
                logging::init(config.service.log_format);
                for name in &config.unknown_variables {
                    tracing::warn!(variable = %name, "unknown dbguard variable ignored");
                }
                let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                    Ok(runtime) => runtime,
                    Err(err) => {
                        eprintln!("dbguard: cannot start the runtime: {err}");
                        return ExitCode::from(EXIT_UNAVAILABLE);
                    }
                };
                runtime.block_on(async move {
                    match command {
                        Command::Serve { bind } => serve(config, bind).await,
                        Command::Check { force, json } => check(config, force, json).await,
                        Command::Info => info(&config),
                        Command::Migrate { command } => migrate::run(config, command).await,
                        Command::Token { scope, ttl, subject } => token(&config, &scope, &ttl, &subject),
                        Command::Schemas { .. } => ExitCode::SUCCESS,
                        Command::Wasi { .. } => ExitCode::SUCCESS,
                    }
                })
            }
        }
    }
}

fn auth_or_exit(config: &DbConfig) -> Result<Authenticator, ExitCode> {
    Authenticator::from_config(&config.service.auth, config.profile).map_err(|err| {
        eprintln!("dbguard: configuration error: {err}");
        ExitCode::from(EXIT_CONFIG)
    })
}

async fn serve(config: DbConfig, bind: Option<String>) -> ExitCode {
    let auth = match auth_or_exit(&config) {
        Ok(auth) => auth,
        Err(code) => return code,
    };
    let bind = bind.unwrap_or_else(|| config.service.bind.clone());
    let profile = config.profile;
    let log_format = config.service.log_format;
    let plugin_dir = config.service.plugin_dir.clone();
    let manager = match DbManager::connect_lazy(config).await {
        Ok(manager) => manager,
        Err(err) => {
            eprintln!("dbguard: {err}");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    if let Err(code) = migrate::on_serve_start(&manager).await {
        manager.close().await;
        return code;
    }
    let state = match attach_plugins(AppState::new(manager.clone(), auth), &manager, plugin_dir).await {
        Ok(state) => state,
        Err(code) => return code,
    };
    let listener = match tokio::net::TcpListener::bind(&bind).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("dbguard: cannot listen on {bind}: {err}");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    let address = listener.local_addr().map(|a| a.to_string()).unwrap_or(bind);
    let monitor = manager.spawn_monitor();
    let info = manager.info();
    let json_logs = log_format == LogFormat::Json;
    if json_logs {
        // Everything on the output is one JSON object per line for the log collector.
        tracing::info!(%address, %profile, target = %target_line(&info), "dbguard listening");
    } else {
        println!("dbguard listening on http://{address} ({profile} profile, {})", target_line(&info));
    }
    if profile == Profile::Development && state.auth().can_mint() {
        match state.auth().mint("dbguard-serve", "db:read db:admin", Duration::from_secs(3600)) {
            Ok(token) => {
                if state.auth().is_generated() {
                    println!("JWT secret: generated for this run (set JWT_SECRET to keep tokens across restarts)");
                }
                println!("admin token (db:read db:admin, valid 1h):");
                println!("  {token}");
                println!("try:");
                println!("  curl -s -H 'Authorization: Bearer {token}' http://{address}/api/database/health");
            }
            Err(err) => eprintln!("dbguard: cannot mint a token: {err}"),
        }
    } else if !json_logs {
        println!("mint a token with: dbguard token --scope \"db:read\" --ttl 1h");
    }
    tracing::info!(%address, "serving");
    let result = api::serve(listener, state, shutdown_signal()).await;
    tracing::info!("stopped accepting; in-flight requests done; closing the pools");
    manager.drain(DRAIN_TIMEOUT).await;
    manager.close().await;
    monitor.abort();
    match result {
        Ok(()) => {
            tracing::info!("shut down cleanly");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("dbguard: server error: {err}");
            ExitCode::from(EXIT_UNAVAILABLE)
        }
    }
}

/// Starts the plugin runtime on DBGUARD_PLUGIN_DIR, if set, and serves `/api/plugins` from it.
/// Refused plugin files are logged and skipped; only an engine that cannot start is fatal.
#[cfg(feature = "plugins")]
async fn attach_plugins(state: AppState, manager: &DbManager, dir: Option<String>) -> Result<AppState, ExitCode> {
    let Some(dir) = dir else { return Ok(state) };
    match dbguard_http::plugins::PluginRuntime::start(manager.clone(), &dir).await {
        Ok(runtime) => {
            println!("plugins: {} loaded from {dir} (watching for changes)", runtime.plugins().len());
            Ok(state.with_plugins(std::sync::Arc::new(runtime)))
        }
        Err(err) => {
            eprintln!("dbguard: cannot start the plugin runtime: {err}");
            Err(ExitCode::from(EXIT_UNAVAILABLE))
        }
    }
}

/// Without the `plugins` feature DBGUARD_PLUGIN_DIR is ignored, loudly.
#[cfg(not(feature = "plugins"))]
async fn attach_plugins(state: AppState, _manager: &DbManager, dir: Option<String>) -> Result<AppState, ExitCode> {
    if dir.is_some() {
        tracing::warn!("DBGUARD_PLUGIN_DIR is set but this build has no plugin support (cargo feature `plugins`)");
    }
    Ok(state)
}

fn target_line(info: &dbguard_core::ConnectionInfo) -> String {
    match (&info.host, info.port) {
        (Some(host), Some(port)) => {
            format!("{} at {host}:{port}/{}", info.database_type, info.database.as_deref().unwrap_or_default())
        }
        _ => format!("{} at {}", info.database_type, info.database.as_deref().unwrap_or_default()),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutdown requested");
}

async fn check(config: DbConfig, _force: bool, json: bool) -> ExitCode {
    let manager = match DbManager::connect_lazy(config).await {
        Ok(manager) => manager,
        Err(err) => {
            eprintln!("dbguard: {err}");
            return ExitCode::from(2);
        }
    };
    migrate::watch_if_present(&manager).await;
    // A fresh process has no cache: this always probes.
    let report = manager.check_health(true).await;
    if json {
        match serde_json::to_string_pretty(&*report) {
            Ok(text) => println!("{text}"),
            Err(err) => eprintln!("dbguard: {err}"),
        }
    } else {
        let version = report.version.as_deref().unwrap_or("version unknown");
        // A report that is not healthy already leads with its status ("unhealthy: …").
        let word = status_word(report.status);
        let summary = match report.message.strip_prefix(word) {
            Some(rest) if rest.starts_with(": ") => report.message.clone(),
            _ => format!("{word}: {}", report.message),
        };
        println!("{summary} ({}, {version}, {:.1} ms)", report.database_type, report.response_time_ms);
    }
    manager.close().await;
    ExitCode::from(report.status.exit_code())
}

fn status_word(status: dbguard_core::HealthStatus) -> &'static str {
    match status {
        dbguard_core::HealthStatus::Healthy => "healthy",
        dbguard_core::HealthStatus::Degraded => "degraded",
        dbguard_core::HealthStatus::Unhealthy => "unhealthy",
    }
}

fn info(config: &DbConfig) -> ExitCode {
    match serde_json::to_string_pretty(&config.connection_info()) {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("dbguard: {err}");
            ExitCode::FAILURE
        }
    }
}

fn token(config: &DbConfig, scope: &str, ttl: &str, subject: &str) -> ExitCode {
    let Some(ttl) = parse_ttl(ttl) else {
        eprintln!("dbguard: --ttl {ttl:?} is not a duration; use seconds or a number with s, m, h or d (e.g. 1h)");
        return ExitCode::from(64);
    };
    if config.service.auth.secret.is_none() {
        eprintln!(
            "dbguard: configuration error: `dbguard token` needs JWT_SECRET (or JWT_SECRET_FILE); tokens for a generated secret would not verify on any running server"
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    let auth = match auth_or_exit(config) {
        Ok(auth) => auth,
        Err(code) => return code,
    };
    match auth.mint(subject, scope, ttl) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("dbguard: {err}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn schemas(out: &std::path::Path) -> ExitCode {
    let mut files: Vec<(String, String)> = dbguard_core::schema::all_schemas()
        .into_iter()
        .map(|(stem, schema)| (format!("{stem}.schema.json"), dbguard_core::schema::render(&schema)))
        .collect();
    files.extend(dbguard_http::api::openapi::extra_schemas());
    files.push(("openapi.json".to_owned(), api::openapi::render()));
    if let Err(err) = std::fs::create_dir_all(out) {
        eprintln!("dbguard: cannot create {}: {err}", out.display());
        return ExitCode::from(EXIT_CANTCREAT);
    }
    for (name, text) in files {
        let path = out.join(&name);
        if let Err(err) = std::fs::write(&path, text) {
            eprintln!("dbguard: cannot write {}: {err}", path.display());
            return ExitCode::from(EXIT_CANTCREAT);
        }
        println!("wrote {}", path.display());
    }
    ExitCode::SUCCESS
}

/// `dbguard wasi run`: needs no database connection and no runtime, only the variables to pass.
fn wasi(command: WasiCommand) -> ExitCode {
    let WasiCommand::Run { file, db_dir, writable, args } = command;
    // .env as for the other commands; having none is fine.
    let _ = dotenvy::dotenv();
    let cache = match wasi_run::CompileCache::from_env() {
        Ok(cache) => cache,
        Err(err) => {
            eprintln!("dbguard: configuration error: {err}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let env = wasi_run::forwarded_env(std::env::vars());
    let options = wasi_run::WasiRunOptions { db_dir, writable, env, ..wasi_run::WasiRunOptions::default() };
    match wasi_run::run_wasi_module_cached(&file, &args, options, &cache) {
        // An exit status beyond 0..=255 cannot be passed on as it is; it still means failure.
        Ok(output) => ExitCode::from(u8::try_from(output.exit_code).unwrap_or(1)),
        Err(err) => {
            eprintln!("dbguard: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}
