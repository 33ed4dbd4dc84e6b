//! Runs a WASI preview 1 command (such as `dbguard-wasi`) in a sandbox next to a SQLite file.
//!
//! The guest sees one directory, the database's, mounted at [`GUEST_DB_DIR`] — read-only
//! unless [`WasiRunOptions::writable`] — and an environment made only of
//! [`WasiRunOptions::env`], in which a `DATABASE_URL` naming a SQLite file on the host is
//! rewritten to the same file inside the sandbox. Nothing else of the host is reachable: no
//! other files, no network, no stdin, no host environment.
//!
//! ```no_run
//! use dbguard_cli::wasi_run::{WasiRunOptions, run_wasi_module};
//!
//! let options = WasiRunOptions {
//!     env: vec![("DATABASE_URL".into(), "sqlite://data/app.db".into())],
//!     ..WasiRunOptions::default()
//! };
//! let code = run_wasi_module("dbguard-wasi.wasm", &["check".to_owned()], options)?;
//! std::process::exit(code);
//! # Ok::<(), dbguard_cli::wasi_run::WasiRunError>(())
//! ```
//!
//! Modules are compiled with Cranelift from their bytes (never loaded precompiled, which would
//! need `unsafe`). Compiling the WASI host takes over a second, so compiled code is reused twice
//! over: within a process, keyed by path, size and modification time; and across processes
//! through wasmtime's compilation cache when a [`CompileCache::Dir`] is given (the `dbguard`
//! command takes it from [`CompileCache::from_env`]). wasmtime keys a cache entry by the
//! module's bytes and the engine's compiler settings and version, so a changed module or
//! another wasmtime compiles afresh instead of loading stale code. A cache that cannot be
//! created or written never fails a run: the module is compiled without it, and a warning says
//! so once per process.
//!
//! The call blocks: the guest runs on a thread of its own, so calling this from inside an async
//! runtime is safe but holds that worker until the guest exits — use `spawn_blocking` there.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::SystemTime;

use dbguard_core::ConfigError;
use wasmtime::{Cache, CacheConfig, Config, Engine, Linker, Module, Store, Trap};
use wasmtime_wasi::p1::{self, WasiP1Ctx};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

/// Where the database's directory appears inside the sandbox.
pub const GUEST_DB_DIR: &str = "/db";

/// The most a captured stream may hold; a guest writing more traps.
pub const CAPTURE_LIMIT: usize = 16 * 1024 * 1024;

/// Turns the compile cache of `dbguard wasi run` on (`on`, the default) or off (`off`).
pub const CACHE_VAR: &str = "DBGUARD_WASI_CACHE";
/// The compile cache's directory (absolute); by default `$XDG_CACHE_HOME/dbguard/wasi`, else
/// `$HOME/.cache/dbguard/wasi`.
pub const CACHE_DIR_VAR: &str = "DBGUARD_WASI_CACHE_DIR";

/// Whether compiled modules outlive the process, and where they are kept.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub enum CompileCache {
    /// Every process compiles the module again (the library's default: a caller opts in).
    #[default]
    Off,
    /// wasmtime's compilation cache in this directory, created if missing.
    Dir(PathBuf),
    /// Asked for, but no directory could be chosen (neither variable nor a home directory):
    /// the module is compiled without a cache and a warning gives the reason.
    Unavailable(String),
}

impl CompileCache {
    /// Reads [`CACHE_VAR`] and [`CACHE_DIR_VAR`] (falling back to `XDG_CACHE_HOME` and `HOME`)
    /// from the process environment. See [`from_lookup`](Self::from_lookup).
    ///
    /// # Errors
    /// As [`from_lookup`](Self::from_lookup).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var_os(name))
    }

    /// The setting `lookup` describes, chosen like other tools choose their cache: `off` in
    /// [`CACHE_VAR`] turns it off; otherwise [`CACHE_DIR_VAR`], else `$XDG_CACHE_HOME/dbguard/wasi`,
    /// else `$HOME/.cache/dbguard/wasi`. As the XDG base directory specification says, an empty
    /// or relative `XDG_CACHE_HOME` is ignored.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the variable when [`CACHE_VAR`] is neither `on` nor
    /// `off`, or [`CACHE_DIR_VAR`] is empty or not an absolute path.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<OsString>) -> Result<Self, ConfigError> {
        if let Some(raw) = lookup(CACHE_VAR) {
            match raw.to_string_lossy().trim().to_ascii_lowercase().as_str() {
                "on" => {}
                "off" => return Ok(Self::Off),
                _ => {
                    return Err(ConfigError::Invalid {
                        variable: CACHE_VAR,
                        value: raw.to_string_lossy().into_owned(),
                        expected: "on or off".to_owned(),
                    });
                }
            }
        }
        if let Some(raw) = lookup(CACHE_DIR_VAR) {
            let dir = PathBuf::from(&raw);
            // The cache must not move with the working directory, and wasmtime refuses a
            // relative one.
            if !dir.is_absolute() {
                return Err(ConfigError::Invalid {
                    variable: CACHE_DIR_VAR,
                    value: raw.to_string_lossy().into_owned(),
                    expected: format!("an absolute directory path (to turn the cache off, set {CACHE_VAR}=off)"),
                });
            }
            return Ok(Self::Dir(dir));
        }
        let absolute = |name: &str| lookup(name).map(PathBuf::from).filter(|path| path.is_absolute());
        if let Some(xdg) = absolute("XDG_CACHE_HOME") {
            return Ok(Self::Dir(xdg.join("dbguard").join("wasi")));
        }
        if let Some(home) = absolute("HOME") {
            return Ok(Self::Dir(home.join(".cache").join("dbguard").join("wasi")));
        }
        Ok(Self::Unavailable(format!("no cache directory: set {CACHE_DIR_VAR}, XDG_CACHE_HOME or HOME")))
    }
}

/// Where a guest's standard output or error goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Output {
    /// The runner's own stream.
    #[default]
    Inherit,
    /// A buffer returned in [`WasiRunOutput`] (at most [`CAPTURE_LIMIT`] bytes).
    Capture,
}

/// What the guest may see and where its output goes.
#[derive(Debug, Clone, Default)]
pub struct WasiRunOptions {
    /// The host directory to preopen at [`GUEST_DB_DIR`]. Defaults to the directory of the
    /// SQLite file named by `DATABASE_URL` in [`env`](Self::env); with neither, nothing is
    /// preopened. A database file outside this directory is refused.
    pub db_dir: Option<PathBuf>,
    /// Preopen the directory read-write instead of read-only.
    pub writable: bool,
    /// The guest's whole environment. `DATABASE_URL=sqlite://…` naming a host file is
    /// rewritten to `sqlite:///db/…`; other variables pass unchanged.
    pub env: Vec<(String, String)>,
    /// The guest's standard output.
    pub stdout: Output,
    /// The guest's standard error.
    pub stderr: Output,
}

/// How a guest ended, with whatever output was captured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WasiRunOutput {
    /// The guest's exit code (0 when `_start` returned normally).
    pub exit_code: i32,
    /// Standard output, when [`Output::Capture`] was asked for.
    pub stdout: Option<Vec<u8>>,
    /// Standard error, when [`Output::Capture`] was asked for.
    pub stderr: Option<Vec<u8>>,
}

/// Why a guest could not be run to its exit.
#[derive(Debug)]
pub enum WasiRunError {
    /// The module file does not exist.
    ModuleMissing {
        /// The path given.
        path: PathBuf,
    },
    /// The module file exists but cannot be read.
    ModuleUnreadable {
        /// The path given.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a WebAssembly core module this runner can compile.
    NotWasm {
        /// The path given.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The module imports something other than WASI preview 1, or has no `_start`.
    Link {
        /// The path given.
        path: PathBuf,
        /// What the linker said.
        reason: String,
    },
    /// The directory to preopen cannot be used.
    DbDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// `DATABASE_URL` names a file outside the preopened directory, which the guest could not reach.
    OutsideDbDir {
        /// The database file, as resolved on the host.
        database: PathBuf,
        /// The directory that would be preopened.
        db_dir: PathBuf,
    },
    /// An argument or environment entry the runner cannot pass on.
    InvalidInput(String),
    /// The guest trapped (or a host call it made failed fatally).
    Trap {
        /// The trap and its context.
        message: String,
    },
    /// The runner itself failed (engine setup, thread start).
    Internal(String),
}

impl WasiRunError {
    /// The exit code for a command line reporting this error (sysexits.h): 66 for a missing
    /// or unreadable module, 65 for a file that is not a usable module, 64 for bad arguments
    /// (including a database outside the directory), 70 for a trap or an internal failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::ModuleMissing { .. } | Self::ModuleUnreadable { .. } => 66,
            Self::NotWasm { .. } | Self::Link { .. } => 65,
            Self::DbDir { .. } | Self::OutsideDbDir { .. } | Self::InvalidInput(_) => 64,
            Self::Trap { .. } | Self::Internal(_) => 70,
        }
    }
}

impl fmt::Display for WasiRunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ModuleMissing { path } => write!(f, "no WebAssembly module at {}", path.display()),
            Self::ModuleUnreadable { path, source } => write!(f, "cannot read {}: {source}", path.display()),
            Self::NotWasm { path, reason } => {
                write!(f, "{} is not a WebAssembly module this runner can use: {reason}", path.display())
            }
            Self::Link { path, reason } => {
                write!(f, "{} is not a WASI preview 1 command: {reason}", path.display())
            }
            Self::DbDir { path, reason } => write!(f, "cannot preopen {}: {reason}", path.display()),
            Self::OutsideDbDir { database, db_dir } => write!(
                f,
                "the database {} is outside the preopened directory {}; the guest could not reach it",
                database.display(),
                db_dir.display()
            ),
            Self::InvalidInput(message) => f.write_str(message),
            Self::Trap { message } => write!(f, "the module trapped: {message}"),
            Self::Internal(message) => write!(f, "WASI runner: {message}"),
        }
    }
}

impl std::error::Error for WasiRunError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::ModuleUnreadable { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The variables of `vars` a guest gets by default: `DATABASE_URL`, the profile (`DBGUARD_ENV`,
/// `APP_ENV`) and the `DB_*` settings. Secrets stay out of the sandbox: no `JWT_*`, no
/// `DB_TEST_URL`, no `*_FILE` (the guest could not read those files anyway).
pub fn forwarded_env(vars: impl IntoIterator<Item = (String, String)>) -> Vec<(String, String)> {
    vars.into_iter()
        .filter(|(name, _)| {
            let dbguard =
                name == "DATABASE_URL" || name == "DBGUARD_ENV" || name == "APP_ENV" || name.starts_with("DB_");
            dbguard && !name.ends_with("_FILE") && !name.starts_with("DB_TEST_URL")
        })
        .collect()
}

/// Runs the WASI command at `path` with `args` (the module's file name is passed as argv\[0\])
/// and returns its exit code. See [`run_wasi_module_with_output`] to capture its output.
pub fn run_wasi_module(path: impl AsRef<Path>, args: &[String], options: WasiRunOptions) -> Result<i32, WasiRunError> {
    run_wasi_module_with_output(path, args, options).map(|output| output.exit_code)
}

/// Runs the WASI command at `path` with `args` and returns its exit code and the output that
/// [`WasiRunOptions::stdout`] / [`WasiRunOptions::stderr`] asked to capture. Compiled code is
/// reused within the process only; see [`run_wasi_module_cached`] to keep it on disk.
pub fn run_wasi_module_with_output(
    path: impl AsRef<Path>,
    args: &[String],
    options: WasiRunOptions,
) -> Result<WasiRunOutput, WasiRunError> {
    run_wasi_module_cached(path, args, options, &CompileCache::Off)
}

/// Like [`run_wasi_module_with_output`], with the module's compiled code taken from and stored
/// in `cache`, so that the next process running the same module skips compilation.
///
/// ```no_run
/// use dbguard_cli::wasi_run::{CompileCache, WasiRunOptions, run_wasi_module_cached};
///
/// let cache = CompileCache::from_env()?;
/// let output = run_wasi_module_cached("dbguard-wasi.wasm", &["help".to_owned()], WasiRunOptions::default(), &cache)?;
/// std::process::exit(output.exit_code);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn run_wasi_module_cached(
    path: impl AsRef<Path>,
    args: &[String],
    options: WasiRunOptions,
    cache: &CompileCache,
) -> Result<WasiRunOutput, WasiRunError> {
    let path = path.as_ref().to_path_buf();
    let sandbox = Sandbox::plan(&options)?;
    let module = load_module(&path, cache)?;
    let program = path.file_name().map_or_else(|| "module.wasm".to_owned(), |name| name.to_string_lossy().into_owned());
    let mut argv = Vec::with_capacity(args.len() + 1);
    argv.push(program);
    argv.extend(args.iter().cloned());
    // wasmtime-wasi's synchronous calls enter a tokio runtime of their own, which panics on a
    // thread that is already inside one: give the guest a plain thread.
    let runner = std::thread::Builder::new()
        .name("wasi-guest".to_owned())
        .spawn(move || run_instance(&path, &module, &argv, &sandbox, &options))
        .map_err(|err| WasiRunError::Internal(format!("cannot start the guest thread: {err}")))?;
    runner.join().unwrap_or_else(|_| Err(WasiRunError::Internal("the guest thread panicked".to_owned())))
}

/// The resolved preopen and guest environment.
#[derive(Debug)]
struct Sandbox {
    preopen: Option<PathBuf>,
    env: Vec<(String, String)>,
}

impl Sandbox {
    fn plan(options: &WasiRunOptions) -> Result<Self, WasiRunError> {
        let db_dir = match &options.db_dir {
            Some(dir) => Some(canonical_dir(dir)?),
            None => None,
        };
        let url = options.env.iter().rev().find(|(name, _)| name == "DATABASE_URL").map(|(_, value)| value.as_str());
        let database = url.and_then(SqliteFileUrl::parse);
        let (preopen, guest_url) = match database {
            None => (db_dir, None),
            Some(file) => {
                let host_path = resolve_host_path(&file.path)?;
                let dir = match db_dir {
                    Some(dir) => dir,
                    None => match host_path.parent() {
                        Some(parent) => canonical_dir(parent)?,
                        None => return Err(WasiRunError::InvalidInput("DATABASE_URL names no file".to_owned())),
                    },
                };
                let Ok(relative) = host_path.strip_prefix(&dir) else {
                    return Err(WasiRunError::OutsideDbDir { database: host_path, db_dir: dir });
                };
                let guest_url = file.guest_url(relative)?;
                (Some(dir), Some(guest_url))
            }
        };
        let mut env: Vec<(String, String)> =
            options.env.iter().filter(|(name, _)| name != "DATABASE_URL").cloned().collect();
        match (guest_url, url) {
            (Some(guest_url), _) => env.push(("DATABASE_URL".to_owned(), guest_url)),
            (None, Some(url)) => env.push(("DATABASE_URL".to_owned(), url.to_owned())),
            (None, None) => {}
        }
        Ok(Self { preopen, env })
    }
}

/// A `sqlite://` URL naming a file (not `:memory:`), split into its decoded path and the
/// query string that follows it.
#[derive(Debug)]
struct SqliteFileUrl {
    path: String,
    query: Option<String>,
}

impl SqliteFileUrl {
    /// `sqlite://relative`, `sqlite:///absolute`, `sqlite:path`; `None` for other schemes and
    /// in-memory databases, which pass to the guest unchanged.
    fn parse(url: &str) -> Option<Self> {
        let url = url.trim();
        let scheme = url.get(..7)?;
        if !scheme.eq_ignore_ascii_case("sqlite:") {
            return None;
        }
        let rest = &url[7..];
        let body = rest.strip_prefix("//").unwrap_or(rest);
        let (path, query) = match body.split_once('?') {
            Some((path, query)) => (path, Some(query.to_owned())),
            None => (body, None),
        };
        let path = percent_encoding::percent_decode_str(path).decode_utf8().ok()?.into_owned();
        let memory = path.is_empty()
            || path == ":memory:"
            || query.as_deref().is_some_and(|q| q.split('&').any(|pair| pair == "mode=memory"));
        (!memory).then_some(Self { path, query })
    }

    /// The same database as seen from inside the sandbox.
    fn guest_url(&self, relative: &Path) -> Result<String, WasiRunError> {
        let mut url = format!("sqlite://{GUEST_DB_DIR}");
        for part in relative.components() {
            let Component::Normal(part) = part else {
                return Err(WasiRunError::InvalidInput(format!("cannot map {} into the sandbox", relative.display())));
            };
            let part = part.to_str().ok_or_else(|| {
                WasiRunError::InvalidInput(format!("the database path {} is not UTF-8", relative.display()))
            })?;
            url.push('/');
            url.extend(percent_encoding::utf8_percent_encode(part, PATH_UNSAFE));
        }
        if let Some(query) = &self.query {
            url.push('?');
            url.push_str(query);
        }
        Ok(url)
    }
}

/// Characters that would change the meaning of a `sqlite://` URL's path.
const PATH_UNSAFE: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%').add(b'?').add(b'#').add(b' ');

/// The host path of the database, absolute, with `.` and `..` resolved and its directory's
/// symlinks followed (the file itself is kept as named, so the sandbox decides whether a link
/// may be followed).
fn resolve_host_path(path: &str) -> Result<PathBuf, WasiRunError> {
    let path = Path::new(path);
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|err| WasiRunError::Internal(format!("cannot read the current directory: {err}")))?
            .join(path)
    };
    let mut normal = PathBuf::new();
    for component in absolute.components() {
        match component {
            Component::ParentDir => {
                normal.pop();
            }
            Component::CurDir => {}
            other => normal.push(other),
        }
    }
    let canonical_parent = normal.parent().and_then(|parent| parent.canonicalize().ok());
    match (canonical_parent, normal.file_name()) {
        (Some(parent), Some(name)) => Ok(parent.join(name)),
        _ => Ok(normal),
    }
}

fn canonical_dir(dir: &Path) -> Result<PathBuf, WasiRunError> {
    let canonical =
        dir.canonicalize().map_err(|err| WasiRunError::DbDir { path: dir.to_path_buf(), reason: err.to_string() })?;
    if canonical.is_dir() {
        Ok(canonical)
    } else {
        Err(WasiRunError::DbDir { path: dir.to_path_buf(), reason: "not a directory".to_owned() })
    }
}

/// An engine and the compilation cache it writes, if any. The [`Cache`] is a clone of the
/// engine's and shares its hit and miss counters, which tell what a compilation did.
#[derive(Clone)]
struct Compiler {
    engine: Engine,
    cache: Option<(PathBuf, Cache)>,
}

/// The engine for modules under `setting`: default Cranelift settings, synchronous calls, one
/// engine per setting for the life of the process (a cache's worker thread starts with it).
fn compiler(setting: &CompileCache) -> Result<Compiler, WasiRunError> {
    static COMPILERS: OnceLock<Mutex<HashMap<CompileCache, Compiler>>> = OnceLock::new();
    let mut compilers = COMPILERS.get_or_init(Mutex::default).lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(compiler) = compilers.get(setting) {
        return Ok(compiler.clone());
    }
    let cache = match setting {
        CompileCache::Off => None,
        CompileCache::Unavailable(reason) => {
            warn_uncached(reason);
            None
        }
        CompileCache::Dir(dir) => {
            let mut config = CacheConfig::new();
            config.with_directory(dir);
            match Cache::new(config).map_err(|err| format!("{err:#}")).and_then(|cache| {
                check_writable(dir)?;
                Ok(cache)
            }) {
                Ok(cache) => Some((dir.clone(), cache)),
                Err(reason) => {
                    warn_uncached(&reason);
                    None
                }
            }
        }
    };
    let mut config = Config::new();
    config.cache(cache.as_ref().map(|(_, cache)| cache.clone()));
    let engine =
        Engine::new(&config).map_err(|err| WasiRunError::Internal(format!("cannot create the engine: {err:#}")))?;
    let compiler = Compiler { engine, cache };
    compilers.insert(setting.clone(), compiler.clone());
    Ok(compiler)
}

/// Checks that compiled code can be stored below `dir` (wasmtime writes to `dir/modules/`)
/// before anything is compiled: wasmtime would only log a failed write, without a reason the
/// user sees in one place.
fn check_writable(dir: &Path) -> Result<(), String> {
    let modules = dir.join("modules");
    let probe = modules.join(format!(".dbguard-write-check-{}", std::process::id()));
    std::fs::create_dir_all(&modules)
        .and_then(|()| std::fs::write(&probe, b""))
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|err| format!("cannot write to {}: {err}", modules.display()))
}

/// Says that modules are compiled without the cache, the first time only: a run without it
/// is slower, not wrong.
fn warn_uncached(reason: &str) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!("compiling WebAssembly without the compile cache: {reason}");
    }
}

/// Identifies one version of a module file.
type ModuleKey = (PathBuf, u64, Option<SystemTime>);

/// Reads and compiles the module, or takes it from the process-wide cache.
fn load_module(path: &Path, setting: &CompileCache) -> Result<Module, WasiRunError> {
    static CACHE: OnceLock<Mutex<HashMap<ModuleKey, Module>>> = OnceLock::new();
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Err(WasiRunError::ModuleMissing { path: path.to_path_buf() });
        }
        Err(source) => return Err(WasiRunError::ModuleUnreadable { path: path.to_path_buf(), source }),
    };
    if !metadata.is_file() {
        return Err(WasiRunError::NotWasm { path: path.to_path_buf(), reason: "not a regular file".to_owned() });
    }
    let key = (path.canonicalize().unwrap_or_else(|_| path.to_path_buf()), metadata.len(), metadata.modified().ok());
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(module) = cache.lock().ok().and_then(|cache| cache.get(&key).cloned()) {
        return Ok(module);
    }
    let bytes =
        std::fs::read(path).map_err(|source| WasiRunError::ModuleUnreadable { path: path.to_path_buf(), source })?;
    check_header(path, &bytes)?;
    let compiler = compiler(setting)?;
    let before = compiler.cache.as_ref().map(|(_, cache)| (cache.cache_hits(), cache.cache_misses()));
    let module = Module::from_binary(&compiler.engine, &bytes)
        .map_err(|err| WasiRunError::NotWasm { path: path.to_path_buf(), reason: format!("{err:#}") })?;
    if let (Some((dir, cache)), Some((hits, misses))) = (&compiler.cache, before) {
        report_cache_use(path, dir, cache.cache_hits() > hits, cache.cache_misses() > misses);
    }
    if let Ok(mut cache) = cache.lock() {
        cache.retain(|(cached, ..), _| cached != &key.0);
        cache.insert(key, module.clone());
    }
    Ok(module)
}

/// What the compile cache did for one module, from wasmtime's own counters: a hit counts when
/// cached code was loaded, a miss when fresh code was stored; neither means it was compiled
/// but could not be stored.
fn report_cache_use(module: &Path, dir: &Path, hit: bool, stored: bool) {
    let (module, cache) = (module.display(), dir.display());
    if hit {
        tracing::debug!(%module, %cache, "compile cache hit: compiled code loaded from the cache");
    } else if stored {
        tracing::debug!(%module, %cache, "compile cache miss: module compiled and stored in the cache");
    } else {
        warn_uncached(&format!("cannot write to {cache}"));
    }
}

/// Rejects what is plainly not a core module before handing the bytes to the compiler.
fn check_header(path: &Path, bytes: &[u8]) -> Result<(), WasiRunError> {
    let not_wasm = |reason: &str| Err(WasiRunError::NotWasm { path: path.to_path_buf(), reason: reason.to_owned() });
    match bytes.get(..8) {
        Some([0x00, b'a', b's', b'm', 0x01, 0x00, 0x00, 0x00]) => Ok(()),
        Some([0x00, b'a', b's', b'm', _, _, 0x01, 0x00]) => {
            not_wasm("it is a WebAssembly component (WASI preview 2); this runner takes preview 1 core modules")
        }
        Some([0x00, b'a', b's', b'm', ..]) => not_wasm("unsupported WebAssembly binary version"),
        _ => not_wasm("no WebAssembly magic number (\\0asm) at the start of the file"),
    }
}

fn run_instance(
    path: &Path,
    module: &Module,
    argv: &[String],
    sandbox: &Sandbox,
    options: &WasiRunOptions,
) -> Result<WasiRunOutput, WasiRunError> {
    let mut builder = WasiCtxBuilder::new();
    builder.args(argv).envs(&sandbox.env);
    let stdout = capture(&mut builder, options.stdout, WasiCtxBuilder::stdout, WasiCtxBuilder::inherit_stdout);
    let stderr = capture(&mut builder, options.stderr, WasiCtxBuilder::stderr, WasiCtxBuilder::inherit_stderr);
    if let Some(dir) = &sandbox.preopen {
        let perms = if options.writable { FsPerms::ReadWrite } else { FsPerms::ReadOnly };
        builder
            .preopened_dir(dir, GUEST_DB_DIR, perms)
            .map_err(|err| WasiRunError::DbDir { path: dir.clone(), reason: format!("{err:#}") })?;
    }
    let engine = module.engine();
    let mut store = Store::new(engine, builder.build_p1());
    let mut linker: Linker<WasiP1Ctx> = Linker::new(engine);
    p1::add_to_linker_sync(&mut linker, |ctx| ctx)
        .map_err(|err| WasiRunError::Internal(format!("cannot link WASI: {err:#}")))?;
    let link_error = |err: wasmtime::Error| WasiRunError::Link { path: path.to_path_buf(), reason: format!("{err:#}") };
    let instance = linker.instantiate(&mut store, module).map_err(|err| classify_failure(err, link_error))?;
    let start = instance.get_typed_func::<(), ()>(&mut store, "_start").map_err(link_error)?;
    let exit_code = match start.call(&mut store, ()) {
        Ok(()) => 0,
        Err(err) => match err.downcast_ref::<I32Exit>() {
            Some(I32Exit(code)) => *code,
            None => return Err(WasiRunError::Trap { message: format!("{err:#}") }),
        },
    };
    drop(store);
    Ok(WasiRunOutput {
        exit_code,
        stdout: stdout.map(|pipe| pipe.contents().to_vec()),
        stderr: stderr.map(|pipe| pipe.contents().to_vec()),
    })
}

/// A trap during instantiation (a start function) is a trap; anything else is a link error.
fn classify_failure(err: wasmtime::Error, otherwise: impl Fn(wasmtime::Error) -> WasiRunError) -> WasiRunError {
    if err.downcast_ref::<Trap>().is_some() {
        WasiRunError::Trap { message: format!("{err:#}") }
    } else {
        otherwise(err)
    }
}

/// Sets one output stream up as asked; returns the buffer when it is captured.
fn capture(
    builder: &mut WasiCtxBuilder,
    output: Output,
    set: fn(&mut WasiCtxBuilder, MemoryOutputPipe) -> &mut WasiCtxBuilder,
    inherit: fn(&mut WasiCtxBuilder) -> &mut WasiCtxBuilder,
) -> Option<MemoryOutputPipe> {
    match output {
        Output::Inherit => {
            inherit(builder);
            None
        }
        Output::Capture => {
            let pipe = MemoryOutputPipe::new(CAPTURE_LIMIT);
            set(builder, pipe.clone());
            Some(pipe)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(url: &str, db_dir: Option<&Path>) -> WasiRunOptions {
        WasiRunOptions {
            db_dir: db_dir.map(Path::to_path_buf),
            env: vec![
                ("DATABASE_URL".to_owned(), url.to_owned()),
                ("DB_RETRY_MAX_ATTEMPTS".to_owned(), "2".to_owned()),
            ],
            ..WasiRunOptions::default()
        }
    }

    fn guest_url(sandbox: &Sandbox) -> Option<&str> {
        sandbox.env.iter().find(|(name, _)| name == "DATABASE_URL").map(|(_, value)| value.as_str())
    }

    #[test]
    fn rewrites_the_database_url_into_the_sandbox() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let root = dir.path().canonicalize()?;
        std::fs::create_dir(root.join("sub"))?;
        let url = format!("sqlite://{}/sub/../sub/my%20app.db?mode=ro", root.display());
        let sandbox = Sandbox::plan(&options(&url, None))?;
        assert_eq!(sandbox.preopen.as_deref(), Some(root.join("sub").as_path()));
        assert_eq!(guest_url(&sandbox), Some("sqlite:///db/my%20app.db?mode=ro"));
        assert!(sandbox.env.contains(&("DB_RETRY_MAX_ATTEMPTS".to_owned(), "2".to_owned())));

        let sandbox = Sandbox::plan(&options(&url, Some(&root)))?;
        assert_eq!(sandbox.preopen.as_deref(), Some(root.as_path()));
        assert_eq!(guest_url(&sandbox), Some("sqlite:///db/sub/my%20app.db?mode=ro"));
        Ok(())
    }

    #[test]
    fn refuses_a_database_outside_the_directory() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let inside = dir.path().join("inside");
        std::fs::create_dir(&inside)?;
        let url = format!("sqlite://{}/inside/../outside.db", dir.path().display());
        let err = Sandbox::plan(&options(&url, Some(&inside))).err();
        assert!(matches!(err, Some(WasiRunError::OutsideDbDir { .. })), "{err:?}");
        Ok(())
    }

    fn cache_from(vars: &[(&str, &str)]) -> Result<CompileCache, ConfigError> {
        CompileCache::from_lookup(|name| {
            vars.iter().find(|(var, _)| *var == name).map(|(_, value)| OsString::from(value))
        })
    }

    #[test]
    fn chooses_the_cache_directory_like_other_tools() {
        let dir = |path: &str| Ok(CompileCache::Dir(PathBuf::from(path)));
        let home = ("HOME", "/home/u");
        assert_eq!(cache_from(&[home]), dir("/home/u/.cache/dbguard/wasi"));
        assert_eq!(cache_from(&[home, ("XDG_CACHE_HOME", "/xdg")]), dir("/xdg/dbguard/wasi"));
        // The XDG specification: a relative or empty value is ignored.
        assert_eq!(cache_from(&[home, ("XDG_CACHE_HOME", "rel")]), dir("/home/u/.cache/dbguard/wasi"));
        assert_eq!(cache_from(&[home, ("XDG_CACHE_HOME", "")]), dir("/home/u/.cache/dbguard/wasi"));
        assert_eq!(cache_from(&[home, ("XDG_CACHE_HOME", "/xdg"), (CACHE_DIR_VAR, "/c")]), dir("/c"));
        assert_eq!(cache_from(&[home, (CACHE_VAR, " ON ")]), dir("/home/u/.cache/dbguard/wasi"));
        assert_eq!(cache_from(&[home, (CACHE_DIR_VAR, "/c"), (CACHE_VAR, "off")]), Ok(CompileCache::Off));
        assert!(matches!(cache_from(&[]), Ok(CompileCache::Unavailable(reason)) if reason.contains(CACHE_DIR_VAR)));
    }

    #[test]
    fn refuses_bad_cache_settings_by_name() {
        for (variable, value) in [(CACHE_VAR, "yes"), (CACHE_VAR, ""), (CACHE_DIR_VAR, "cache"), (CACHE_DIR_VAR, "")] {
            let err = cache_from(&[("HOME", "/home/u"), (variable, value)]).err();
            assert_eq!(err.as_ref().map(ConfigError::variable), Some(variable), "{variable}={value:?}: {err:?}");
            let message = err.map(|err| err.to_string()).unwrap_or_default();
            assert!(message.starts_with(&format!("{variable}: {value:?} is not valid: expected ")), "{message}");
        }
    }

    #[test]
    fn forwards_only_dbguard_settings() {
        let vars = [
            "DATABASE_URL",
            "DB_RETRY_BASE_DELAY",
            "DBGUARD_ENV",
            "JWT_SECRET",
            "DB_TEST_URL",
            "DATABASE_URL_FILE",
            "HOME",
        ]
        .map(|name| (name.to_owned(), "x".to_owned()));
        let names: Vec<String> = forwarded_env(vars).into_iter().map(|(name, _)| name).collect();
        assert_eq!(names, ["DATABASE_URL", "DB_RETRY_BASE_DELAY", "DBGUARD_ENV"]);
    }

    #[test]
    fn passes_memory_and_other_urls_unchanged() -> Result<(), Box<dyn std::error::Error>> {
        for url in ["sqlite::memory:", "sqlite://x.db?mode=memory", "postgres://u@h/db"] {
            let sandbox = Sandbox::plan(&options(url, None))?;
            assert_eq!(sandbox.preopen, None);
            assert_eq!(guest_url(&sandbox), Some(url));
        }
        let sandbox = Sandbox::plan(&WasiRunOptions::default())?;
        assert_eq!(sandbox.preopen, None);
        assert_eq!(guest_url(&sandbox), None);
        Ok(())
    }

    #[test]
    fn typed_errors_for_files_that_are_not_modules() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let missing = run_wasi_module(dir.path().join("none.wasm"), &[], WasiRunOptions::default());
        assert!(matches!(missing, Err(WasiRunError::ModuleMissing { .. })), "{missing:?}");
        let text = dir.path().join("text.wasm");
        std::fs::write(&text, "not wasm")?;
        let not_wasm = run_wasi_module(&text, &[], WasiRunOptions::default());
        assert!(matches!(not_wasm, Err(WasiRunError::NotWasm { .. })), "{not_wasm:?}");
        let component = dir.path().join("component.wasm");
        std::fs::write(&component, [0x00, b'a', b's', b'm', 0x0d, 0x00, 0x01, 0x00])?;
        let component = run_wasi_module(&component, &[], WasiRunOptions::default());
        assert!(matches!(component, Err(WasiRunError::NotWasm { .. })), "{component:?}");
        Ok(())
    }

    /// A hand-assembled module: `_start` calls `proc_exit(7)`, or hits `unreachable`.
    fn tiny_module(body: &[u8]) -> Vec<u8> {
        let mut module = vec![0x00, b'a', b's', b'm', 0x01, 0x00, 0x00, 0x00];
        // types: 0 = (i32) -> (), 1 = () -> ()
        module.extend([0x01, 0x08, 0x02, 0x60, 0x01, 0x7f, 0x00, 0x60, 0x00, 0x00]);
        // import wasi_snapshot_preview1.proc_exit : type 0
        let mut import = vec![0x01, 22];
        import.extend(b"wasi_snapshot_preview1");
        import.push(9);
        import.extend(b"proc_exit");
        import.extend([0x00, 0x00]);
        module.push(0x02);
        module.push(u8::try_from(import.len()).unwrap_or(0));
        module.extend(import);
        // one function of type 1, one page of memory; exported as _start and memory
        module.extend([0x03, 0x02, 0x01, 0x01]);
        module.extend([0x05, 0x03, 0x01, 0x00, 0x01]);
        module.extend([0x07, 0x13, 0x02, 0x06]);
        module.extend(b"_start");
        module.extend([0x00, 0x01, 0x06]);
        module.extend(b"memory");
        module.extend([0x02, 0x00]);
        let mut code = vec![0x00];
        code.extend(body);
        code.push(0x0b);
        module.extend([0x0a, u8::try_from(code.len() + 2).unwrap_or(0), 0x01, u8::try_from(code.len()).unwrap_or(0)]);
        module.extend(code);
        module
    }

    #[test]
    fn returns_the_exit_code_and_types_traps() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let exits = dir.path().join("exit7.wasm");
        std::fs::write(&exits, tiny_module(&[0x41, 0x07, 0x10, 0x00]))?;
        assert_eq!(run_wasi_module(&exits, &[], WasiRunOptions::default())?, 7);
        let returns = dir.path().join("return.wasm");
        std::fs::write(&returns, tiny_module(&[]))?;
        assert_eq!(run_wasi_module(&returns, &[], WasiRunOptions::default())?, 0);
        let traps = dir.path().join("trap.wasm");
        std::fs::write(&traps, tiny_module(&[0x00]))?;
        let trapped = run_wasi_module(&traps, &[], WasiRunOptions::default());
        assert!(matches!(trapped, Err(WasiRunError::Trap { .. })), "{trapped:?}");
        Ok(())
    }
}
